//! The admin socket (SPEC §7): a Unix socket (mode 0600 by default) speaking JSON lines. Each
//! request is one JSON object on a line, each answer one JSON object on a line.
//!
//! Requests: `{"cmd":"stats"}`, `{"cmd":"flows"}`, `{"cmd":"checkpoint-done"}`,
//! `{"cmd":"failover","to":"primary"|"secondary"}`, `{"cmd":"set","key":K,"value":V}`,
//! `{"cmd":"shutdown"}`. Answers carry `"ok": true` and the command's data, or `"ok": false`
//! and an `"error"`. This module parses and frames; the runtime decides and answers. Lines are
//! capped, clients are bounded, and a bad line gets an error answer, never a disconnect.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::frame_server::{bind_unix, SocketPermissions};

/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// Most clients served at once.
pub const MAX_CLIENTS: usize = 16;
/// Requests of one client being handled at a time; its next lines wait (in the socket, then
/// in its line buffer) until those are answered, so a burst costs no more than this.
pub const MAX_OUTSTANDING: usize = 4;
/// Answer bytes waiting for one client before it is read no further: it must take its
/// answers before asking more.
pub const OUTPUT_BUDGET: usize = 256 * 1024;
/// A client that neither completes a request nor takes an answer for this long is closed
/// (idle or half-written connections must not lock the socket's slots).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// When every slot is taken, a client quiet for this long makes room for a new one.
pub const EVICT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A parsed admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// Counters, summed and per shard.
    Stats,
    /// Flows with the largest queues first.
    Flows,
    /// Complete the pending checkpoint as if the frame said so.
    CheckpointDone,
    /// Switch forwarding (SPEC §6).
    Failover(FailoverSide),
    /// Change a runtime setting.
    Set {
        /// Setting name.
        key: String,
        /// New value, as text.
        value: String,
    },
    /// Stop as on SIGTERM.
    Shutdown,
}

/// Target of `failover`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverSide {
    /// Keep the primary.
    Primary,
    /// Switch to the secondary.
    Secondary,
}

#[derive(Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
enum Wire {
    Stats,
    Flows,
    CheckpointDone,
    Failover { to: FailoverSide },
    Set { key: String, value: serde_json::Value },
    Shutdown,
}

/// Parses one request line.
pub fn parse_request(line: &str) -> Result<AdminRequest, String> {
    let wire: Wire = serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))?;
    Ok(match wire {
        Wire::Stats => AdminRequest::Stats,
        Wire::Flows => AdminRequest::Flows,
        Wire::CheckpointDone => AdminRequest::CheckpointDone,
        Wire::Failover { to } => AdminRequest::Failover(to),
        Wire::Set { key, value } => AdminRequest::Set {
            key,
            value: match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            },
        },
        Wire::Shutdown => AdminRequest::Shutdown,
    })
}

/// A client's connection, identified for the answer.
pub type ClientId = u64;

struct Client {
    id: ClientId,
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    closing: bool,
    /// Requests handed out by `poll` and not answered yet: a client that half-closed after
    /// sending (`socat`, `nc -N`) still gets its answers.
    outstanding: usize,
    /// Writing failed: the connection is gone.
    broken: bool,
    /// When it last completed a request or took answer bytes (or connected).
    last_progress: std::time::Instant,
}

impl Client {
    /// Whether it may be handed another request now (SPEC §11: bounded per client).
    fn may_ask(&self) -> bool {
        self.outstanding < MAX_OUTSTANDING && self.outbuf.len() < OUTPUT_BUDGET
    }
}

/// The listening admin socket and its clients.
pub struct AdminServer {
    listener: UnixListener,
    path: PathBuf,
    /// Held while the socket path is ours (a second instance is refused).
    _lock: crate::frame_server::SocketLock,
    clients: Vec<Client>,
    next_id: ClientId,
}

impl AdminServer {
    /// Listens at `path` with `perms` applied before the socket is visible.
    pub fn bind(path: &Path, perms: SocketPermissions) -> io::Result<AdminServer> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let (listener, lock) = bind_unix(path, perms)?;
        listener.set_nonblocking(true)?;
        Ok(AdminServer { listener, path: path.to_path_buf(), _lock: lock, clients: Vec::new(), next_id: 1 })
    }

    /// Accepts, reads and writes without blocking; returns complete requests (or parse
    /// errors, already answered) in arrival order.
    pub fn poll(&mut self) -> Vec<(ClientId, AdminRequest)> {
        let now = std::time::Instant::now();
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS {
                        // Full: the quietest client that owes nothing and has been quiet for a
                        // while makes room (idle connections must not lock colo-ctl out).
                        let quiet = self
                            .clients
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| c.outstanding == 0 && now.duration_since(c.last_progress) >= EVICT_AFTER)
                            .min_by_key(|(_, c)| c.last_progress)
                            .map(|(i, _)| i);
                        match quiet {
                            Some(i) => drop(self.clients.swap_remove(i)),
                            None => continue, // dropped: closes the connection
                        }
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.clients.push(Client {
                        id: self.next_id,
                        stream,
                        inbuf: Vec::new(),
                        outbuf: Vec::new(),
                        closing: false,
                        outstanding: 0,
                        broken: false,
                        last_progress: now,
                    });
                    self.next_id += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        let mut requests = Vec::new();
        for c in &mut self.clients {
            let mut buf = [0u8; 4096];
            // Bounded per poll, so one client streaming bytes cannot hold up the control loop;
            // and not at all while it has a full line waiting or its budget is used: its bytes
            // wait in the socket (back-pressure on the client).
            for _ in 0..(MAX_LINE / buf.len() + 1) {
                if !c.may_ask() || c.inbuf.contains(&b'\n') {
                    break;
                }
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        c.closing = true;
                        break;
                    }
                    Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        c.closing = true;
                        break;
                    }
                }
            }
            while c.may_ask() {
                let Some(pos) = c.inbuf.iter().position(|&b| b == b'\n') else { break };
                let line: Vec<u8> = c.inbuf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                match parse_request(&text) {
                    Ok(r) => {
                        // Only a real request is progress: garbage lines cannot keep a slot.
                        c.last_progress = now;
                        c.outstanding += 1;
                        requests.push((c.id, r));
                    }
                    Err(e) => push_line(&mut c.outbuf, &serde_json::json!({"ok": false, "error": e})),
                }
            }
            if c.inbuf.len() > MAX_LINE && !c.inbuf.contains(&b'\n') {
                c.inbuf.clear();
                push_line(&mut c.outbuf, &serde_json::json!({"ok": false, "error": "request line too long"}));
            }
        }
        self.flush();
        requests
    }

    /// Queues `answer` for client `id` (ignored if it has gone).
    pub fn answer(&mut self, id: ClientId, answer: &serde_json::Value) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
            c.outstanding = c.outstanding.saturating_sub(1);
            push_line(&mut c.outbuf, answer);
        }
        self.flush();
    }

    fn flush(&mut self) {
        let now = std::time::Instant::now();
        for c in &mut self.clients {
            while !c.outbuf.is_empty() && !c.broken {
                match c.stream.write(&c.outbuf) {
                    Ok(0) => c.broken = true,
                    Ok(n) => {
                        c.outbuf.drain(..n);
                        c.last_progress = now;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => c.broken = true,
                }
            }
        }
        // A client that closed its side still gets the answers to what it asked: it goes once
        // nothing is owed and nothing is left to write; a broken or flooded one goes at once.
        // One that neither asks nor reads for IDLE_TIMEOUT (idle, half-written, or not taking
        // its answers) goes too.
        self.clients.retain(|c| {
            let owed = c.outstanding > 0 || !c.outbuf.is_empty();
            let stalled = c.outstanding == 0 && now.duration_since(c.last_progress) >= IDLE_TIMEOUT;
            !(c.broken || stalled || (c.closing && !owed))
        });
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn push_line(out: &mut Vec<u8>, v: &serde_json::Value) {
    out.extend_from_slice(v.to_string().as_bytes());
    out.push(b'\n');
}

/// Prometheus text exposition of a stats answer: every numeric leaf becomes
/// `colo_<path> <value>`; per-shard arrays get a `shard` label.
pub fn prometheus_text(stats: &serde_json::Value) -> String {
    fn walk(prefix: &str, labels: &str, v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key: String = k.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                    walk(&format!("{prefix}_{key}"), labels, v, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(prefix, &format!("{{shard=\"{i}\"}}"), v, out);
                }
            }
            serde_json::Value::Number(n) => out.push_str(&format!("{prefix}{labels} {n}\n")),
            serde_json::Value::Bool(b) => out.push_str(&format!("{prefix}{labels} {}\n", u8::from(*b))),
            _ => {}
        }
    }
    let mut out = String::new();
    walk("colo", "", stats, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(parse_request(r#"{"cmd":"stats"}"#), Ok(AdminRequest::Stats));
        assert_eq!(parse_request(r#"{"cmd":"checkpoint-done"}"#), Ok(AdminRequest::CheckpointDone));
        assert_eq!(
            parse_request(r#"{"cmd":"failover","to":"secondary"}"#),
            Ok(AdminRequest::Failover(FailoverSide::Secondary))
        );
        assert_eq!(
            parse_request(r#"{"cmd":"set","key":"compare_timeout_ms","value":250}"#),
            Ok(AdminRequest::Set { key: "compare_timeout_ms".into(), value: "250".into() })
        );
        assert!(parse_request(r#"{"cmd":"failover","to":"tertiary"}"#).unwrap_err().contains("bad request"));
        assert!(parse_request("not json").is_err());
        assert!(parse_request(r#"{"cmd":"explode"}"#).is_err());
    }

    #[test]
    fn prometheus_text_flattens_numbers_with_shard_labels() {
        let v = serde_json::json!({"total": {"primary_in": 5, "released": {"match": 4}}, "shards": [{"primary_in": 2}, {"primary_in": 3}], "name": "x"});
        let t = prometheus_text(&v);
        assert!(t.contains("colo_total_primary_in 5\n"), "{t}");
        assert!(t.contains("colo_total_released_match 4\n"));
        assert!(t.contains("colo_shards_primary_in{shard=\"1\"} 3\n"));
        assert!(!t.contains("name"));
    }
}
