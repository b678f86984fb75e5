//! `colo-dataplane` with a test COLO frame on its frame socket and `colo-ctl` on its admin
//! socket (issue 6): handshake, one DO_CHECKPOINT per epoch however many shards ask, held
//! primary frames leave only after COLO_CHECKPOINT, equal traffic asks nothing, bad input and
//! reconnection do not disturb the dataplane.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use colo_core::fixtures::{Conn, TcpFrame};
use colo_core::{rss, wire};
use colo_suite::{dataplane_command, read_pcap, scratch_dir, workspace_bin, write_pcap, ChildGuard};

/// `n` flows of three 10-byte segments; the secondary sends 3+7 splits. Flows listed in
/// `diverge` get one flipped byte on the secondary.
fn flows(addrs: &[[u8; 4]], diverge: &[usize]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut p, mut s) = (Vec::new(), Vec::new());
    for (f, a) in addrs.iter().enumerate() {
        let conn = Conn {
            template: TcpFrame { dst: (*a).into(), dport: 40000 + f as u16, ..TcpFrame::default() },
            ..Conn::default()
        };
        for k in 0..3u32 {
            let payload: Vec<u8> = (0..10).map(|i| (f as u32 + k * 10 + i) as u8).collect();
            let mut sec = payload.clone();
            if k == 1 && diverge.contains(&f) {
                sec[5] ^= 0x55;
            }
            p.push(conn.data(k * 10, &payload));
            s.push(conn.data(k * 10, &sec[..3]));
            s.push(conn.data(k * 10 + 3, &sec[3..]));
        }
    }
    (p, s)
}

/// Client addresses whose flows land on shard 0 and shard 1 of 2 (as the dispatcher hashes).
fn addrs_on_both_shards(per_shard: usize) -> Vec<[u8; 4]> {
    let mut by_shard: [Vec<[u8; 4]>; 2] = [Vec::new(), Vec::new()];
    for i in 1..=250u8 {
        let a = [10, 9, 0, i];
        let frame = TcpFrame { dst: a.into(), ..TcpFrame::default() }.build();
        let key = *wire::parse(&frame).key().unwrap();
        let shard = rss::shard_for_hash(rss::shard_hash(&key), 2);
        if by_shard[shard].len() < per_shard {
            by_shard[shard].push(a);
        }
    }
    by_shard.concat()
}

struct Frame {
    s: UnixStream,
}

impl Frame {
    fn connect(path: &Path) -> Frame {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Frame { s },
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("frame socket {} never appeared: {e}", path.display()),
            }
        }
    }
    fn send(&mut self, msg: &str) {
        let mut v = (msg.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(msg.as_bytes());
        self.s.write_all(&v).unwrap();
    }
    /// The next message, or None if nothing arrives within `wait`.
    fn recv(&mut self, wait: Duration) -> Option<String> {
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut len = [0u8; 4];
        match self.s.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return None,
            Err(e) => panic!("frame read: {e}"),
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        self.s.read_exact(&mut body).unwrap();
        Some(String::from_utf8(body).unwrap())
    }
}

fn ctl(admin: &Path, args: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new(workspace_bin("colo-ctl"))
            .arg("--socket")
            .arg(admin)
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&out.stderr);
        // The dataplane may still be starting.
        assert!(err.contains("cannot reach") && Instant::now() < deadline, "colo-ctl {args:?}: {err}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `colo-ctl stats --json` until `cond` holds (or fails after 20 s).
fn wait_stats(admin: &Path, what: &str, cond: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = ctl(admin, &["stats", "--json"]);
        if cond(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {}", v["total"]);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(dir: &Path, primary: &[Vec<u8>], secondary: &[Vec<u8>]) -> ChildGuard {
    write_pcap(&dir.join("primary.pcap"), primary);
    write_pcap(&dir.join("secondary.pcap"), secondary);
    let mut cmd = dataplane_command(dir, 2);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2", "--shards", "2"]);
    cmd.arg("--frame").arg(format!("unix:{}", dir.join("frame.sock").display()));
    cmd.arg("--admin").arg(dir.join("admin.sock"));
    cmd.arg("--stats-json").arg(dir.join("stats.json"));
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    ChildGuard::new(cmd.spawn().unwrap())
}

fn finish(dir: &Path, child: ChildGuard) -> (serde_json::Value, Vec<Vec<u8>>) {
    ctl(&dir.join("admin.sock"), &["shutdown"]);
    let out = child.wait_with_output();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stats = serde_json::from_str(&std::fs::read_to_string(dir.join("stats.json")).unwrap()).unwrap();
    (stats, read_pcap(&dir.join("out.pcap")))
}

#[test]
fn divergence_on_two_shards_gives_one_do_checkpoint_and_output_waits_for_the_frame() {
    let dir = scratch_dir("frame-diverge");
    let addrs = addrs_on_both_shards(3);
    // One divergent flow on each shard.
    let (primary, secondary) = flows(&addrs, &[0, 3]);
    let child = start(&dir, &primary, &secondary);
    let admin = dir.join("admin.sock");

    // Garbage and a 4 GiB length prefix close that connection; the dataplane keeps going.
    let mut bad = Frame::connect(&dir.join("frame.sock"));
    bad.s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    assert_eq!(bad.s.read(&mut [0u8; 8]).unwrap_or(0), 0, "closed");

    let mut frame = Frame::connect(&dir.join("frame.sock"));
    frame.send("COLO_USERSPACE_PROXY_INIT");
    assert_eq!(frame.recv(Duration::from_secs(5)).as_deref(), Some("COLO_COMPARE_GET_XEN_INIT"));

    let n = primary.len() as u64;
    let v = wait_stats(&admin, "both shards to request", |v| {
        v["total"]["primary_in"] == n
            && v["total"]["secondary_in"] == secondary.len() as u64
            && v["shards"].as_array().unwrap().iter().all(|s| s["checkpoint_requests"]["tcp-payload-mismatch"] == 1)
    });
    assert_eq!(frame.recv(Duration::from_secs(5)).as_deref(), Some("DO_CHECKPOINT"));
    assert_eq!(frame.recv(Duration::from_millis(500)), None, "exactly one DO_CHECKPOINT");
    assert_eq!(v["coordinator"]["do_checkpoint_sent"], 1);
    assert_eq!(v["coordinator"]["requests_by_reason"]["tcp-payload-mismatch"], 2);
    // The divergent segments and everything after them in their flows are held.
    let held = v["total"]["held_primary_frames"].as_u64().unwrap();
    assert_eq!(held, 4, "{}", v["total"]);
    assert_eq!(v["total"]["released_total"], n - held);
    // `flows` lists the two diverged flows first, each holding its last two segments.
    let flows = ctl(&admin, &["flows"]);
    let rows = flows["flows"].as_array().unwrap();
    assert_eq!(rows.len(), addrs.len(), "{flows}");
    for row in &rows[..2] {
        assert_eq!(row["held_primary"], 2, "{row}");
        assert_eq!(row["diverged"], true, "{row}");
        assert_eq!(row["head"], "diverged, awaiting checkpoint", "{row}");
    }
    assert_ne!(rows[0]["shard"], rows[1]["shard"], "one per shard: {flows}");
    assert!(rows[2..].iter().all(|r| r["held_primary"] == 0 && r["diverged"] == false));

    // The frame drops and comes back: it is told again, nothing is lost.
    drop(frame);
    let mut frame = Frame::connect(&dir.join("frame.sock"));
    assert_eq!(frame.recv(Duration::from_secs(5)).as_deref(), Some("DO_CHECKPOINT"));
    frame.send("COLO_CHECKPOINT");
    let v = wait_stats(&admin, "the flush", |v| v["coordinator"]["checkpoints_completed"] == 1);
    assert_eq!(v["total"]["held_primary_frames"], 0);
    assert_eq!(v["total"]["released"]["flush"], held);
    assert_eq!(frame.recv(Duration::from_millis(300)), None, "no new request after the flush");

    let (stats, out) = finish(&dir, child);
    assert_eq!(stats["total"]["accounting"], "ok");
    assert_eq!(colo_suite::assert_same_per_flow(&out, &primary), stats["total"]["released_parts"]);
    assert_eq!(stats["coordinator"]["do_checkpoint_sent"], 2, "one epoch, resent once on reconnect");
}

#[test]
fn identical_traffic_never_asks_for_a_checkpoint() {
    let dir = scratch_dir("frame-equal");
    let (primary, secondary) = flows(&addrs_on_both_shards(4), &[]);
    let child = start(&dir, &primary, &secondary);
    let admin = dir.join("admin.sock");
    let mut frame = Frame::connect(&dir.join("frame.sock"));
    frame.send("COLO_USERSPACE_PROXY_INIT");
    assert_eq!(frame.recv(Duration::from_secs(5)).as_deref(), Some("COLO_COMPARE_GET_XEN_INIT"));
    let v = wait_stats(&admin, "all frames", |v| v["total"]["released_total"] == primary.len() as u64);
    assert_eq!(v["total"]["released"]["match"], primary.len() as u64);
    assert_eq!(frame.recv(Duration::from_millis(500)), None, "no DO_CHECKPOINT");
    // A periodic checkpoint from the frame is harmless.
    frame.send("COLO_CHECKPOINT");
    wait_stats(&admin, "the periodic checkpoint", |v| v["coordinator"]["checkpoints_completed"] == 1);
    let prom = std::process::Command::new(workspace_bin("colo-ctl"))
        .arg("--socket")
        .arg(&admin)
        .args(["stats", "--prometheus"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&prom.stdout);
    assert!(text.contains(&format!("colo_total_primary_in {}", primary.len())), "{text}");
    // DPDK's own telemetry client shows the same counters under /colo/stats.
    let prefix = std::fs::read_dir(dir.join("dpdk")).unwrap().next().unwrap().unwrap().file_name();
    let mut tel = std::process::Command::new("python3")
        .arg("/usr/bin/dpdk-telemetry.py")
        .arg("-f")
        .arg(&prefix)
        .env("RUNTIME_DIRECTORY", &dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tel.stdin.take().unwrap().write_all(b"/colo/stats\n").unwrap();
    let tel = tel.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&tel.stdout);
    let json_line = text.lines().find(|l| l.contains("/colo/stats")).unwrap_or_else(|| panic!("telemetry: {text}"));
    let json: serde_json::Value = serde_json::from_str(json_line.trim_start_matches("--> ")).unwrap();
    assert_eq!(json["/colo/stats"]["primary_in"], primary.len() as u64, "{json}");
    assert_eq!(json["/colo/stats"]["released_match"], primary.len() as u64, "{json}");
    let (stats, out) = finish(&dir, child);
    assert_eq!(stats["coordinator"]["do_checkpoint_sent"], 0);
    assert_eq!(colo_suite::assert_same_per_flow(&out, &primary), stats["total"]["released_parts"]);
}

#[test]
fn admin_failover_to_primary_releases_held_output_without_a_frame() {
    let dir = scratch_dir("frame-failover");
    let (primary, secondary) = flows(&addrs_on_both_shards(2), &[1]);
    let child = start(&dir, &primary, &secondary);
    let admin = dir.join("admin.sock");
    let v = wait_stats(&admin, "the request", |v| v["total"]["held_primary_frames"].as_u64() > Some(0));
    assert_eq!(v["coordinator"]["do_checkpoint_sent"], 0, "no frame connected");
    assert_eq!(ctl(&admin, &["set", "compare_timeout_ms=60000"])["ok"], true);
    assert_eq!(ctl(&admin, &["set", "frame_timeout_ms=60000"])["ok"], true);
    let bad = std::process::Command::new(workspace_bin("colo-ctl"))
        .arg("--socket")
        .arg(&admin)
        .args(["set", "colour=blue"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown setting"));
    ctl(&admin, &["failover", "primary"]);
    let v = wait_stats(&admin, "the failover flush", |v| v["total"]["held_primary_frames"] == 0);
    assert_eq!(v["coordinator"]["failovers"], 1);
    let (stats, out) = finish(&dir, child);
    assert_eq!(stats["total"]["accounting"], "ok");
    assert_eq!(colo_suite::assert_same_per_flow(&out, &primary), stats["total"]["released_parts"]);
}

/// `failover secondary` (SPEC §6): after it, the secondary's frames are what reaches the
/// output, uncompared, and the primary's are dropped and counted.
#[test]
fn admin_failover_to_secondary_forwards_the_secondary() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir("frame-failover-secondary");
    let (primary, mut secondary) = flows(&addrs_on_both_shards(2), &[]);
    // Mark the secondary's frames so the output shows whose they are: a different TTL.
    for f in &mut secondary {
        f[22] = 33;
    }
    write_pcap(&dir.join("primary.pcap"), &primary);
    write_pcap(&dir.join("secondary.pcap"), &secondary);
    let mut eal = colo_suite::dataplane_eal_args(&dir, 4);
    for a in &mut eal {
        if a.starts_with("--vdev=net_pcap0") || a.starts_with("--vdev=net_pcap1") {
            a.push_str(",infinite_rx=1");
        }
    }
    let mut cmd = std::process::Command::new(workspace_bin("colo-dataplane"));
    cmd.args(eal).arg("--").env("RUNTIME_DIRECTORY", &dir).stdin(std::process::Stdio::null());
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2", "--shards", "2"]);
    cmd.args(["--checkpoint-mode", "standalone", "--socket-mode", "0660"]);
    cmd.arg("--admin").arg(dir.join("admin.sock")).arg("--stats-json").arg(dir.join("stats.json"));
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = ChildGuard::new(cmd.spawn().unwrap());
    let admin = dir.join("admin.sock");
    wait_stats(&admin, "traffic", |v| v["total"]["primary_in"].as_u64() > Some(1000));
    let mode = std::fs::metadata(&admin).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "--socket-mode applies");
    ctl(&admin, &["failover", "secondary"]);
    wait_stats(&admin, "forwarded secondary frames", |v| v["total"]["secondary_forwarded"].as_u64() > Some(1000));
    let (stats, out) = finish(&dir, child);
    let total = &stats["total"];
    assert_eq!(total["accounting"], "ok", "{total}");
    assert!(total["primary_dropped"]["failed-over"].as_u64() > Some(0), "{total}");
    let from_secondary = out.iter().filter(|f| f[22] == 33).count();
    assert_eq!(from_secondary as u64, total["secondary_forwarded"].as_u64().unwrap(), "{total}");
    // Nothing of the primary's leaves after the switch: within each flow, once a secondary
    // frame is out, only secondary frames follow. (Across shards the output interleaves.)
    let mut switched = std::collections::HashSet::new();
    for f in &out {
        let flow = colo_suite::flow_of(f);
        if f[22] == 33 {
            switched.insert(flow);
        } else {
            assert!(!switched.contains(&flow), "a primary frame of {flow} after its secondary took over");
        }
    }
}

#[test]
fn a_half_message_from_a_vanishing_frame_does_not_disturb_the_dataplane() {
    let dir = scratch_dir("frame-half");
    let (primary, secondary) = flows(&addrs_on_both_shards(2), &[0]);
    let child = start(&dir, &primary, &secondary);
    {
        let mut half = Frame::connect(&dir.join("frame.sock"));
        half.s.write_all(&[0, 0, 0, 15, b'C', b'O', b'L']).unwrap();
    }
    let mut frame = Frame::connect(&dir.join("frame.sock"));
    frame.send("COLO_USERSPACE_PROXY_INIT");
    assert_eq!(frame.recv(Duration::from_secs(5)).as_deref(), Some("COLO_COMPARE_GET_XEN_INIT"));
    assert_eq!(frame.recv(Duration::from_secs(5)).as_deref(), Some("DO_CHECKPOINT"));
    frame.send("COLO_CHECKPOINT");
    wait_stats(&dir.join("admin.sock"), "the flush", |v| {
        v["total"]["held_primary_frames"] == 0 && v["coordinator"]["checkpoints_completed"] == 1
    });
    let (stats, out) = finish(&dir, child);
    assert_eq!(stats["total"]["accounting"], "ok");
    assert_eq!(colo_suite::assert_same_per_flow(&out, &primary), stats["total"]["released_parts"]);
}

/// No frame connected when a checkpoint is needed (SPEC §7): hold, then after
/// `--frame-timeout-ms` fail over to the primary (the default `on_frame_loss`).
#[test]
fn without_a_frame_the_dataplane_fails_over_to_the_primary_after_frame_timeout() {
    let dir = scratch_dir("frame-loss");
    let (primary, secondary) = flows(&addrs_on_both_shards(2), &[2]);
    write_pcap(&dir.join("primary.pcap"), &primary);
    write_pcap(&dir.join("secondary.pcap"), &secondary);
    let mut cmd = dataplane_command(&dir, 2);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2", "--shards", "2"]);
    cmd.arg("--frame").arg(format!("unix:{}", dir.join("frame.sock").display()));
    cmd.args(["--frame-timeout-ms", "400"]);
    cmd.arg("--admin").arg(dir.join("admin.sock")).arg("--stats-json").arg(dir.join("stats.json"));
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = ChildGuard::new(cmd.spawn().unwrap());
    let v = wait_stats(&dir.join("admin.sock"), "the automatic failover", |v| v["coordinator"]["failovers"] == 1);
    assert_eq!(v["coordinator"]["do_checkpoint_sent"], 0);
    let v = wait_stats(&dir.join("admin.sock"), "the flush", |v| v["total"]["held_primary_frames"] == 0);
    assert!(v["total"]["released"]["flush"].as_u64() > Some(0), "{}", v["total"]);
    let (stats, out) = finish(&dir, child);
    assert_eq!(stats["total"]["accounting"], "ok");
    assert_eq!(colo_suite::assert_same_per_flow(&out, &primary), stats["total"]["released_parts"]);
}
