//! `colo-replay`: runs the shard code over a primary and a secondary capture (SPEC §9.2).
//!
//! Owns the virtual clock (capture timestamps, merged by time with the primary first on ties),
//! software dispatch to N shards with the same symmetric Toeplitz hash as the runtime, the
//! simulated COLO frame (a checkpoint request completes `checkpoint_latency` later, and
//! requests arriving meanwhile join it, as SPEC §7 aggregates them), the JSON report and the
//! `--explain` trace. It never reads the wall clock: results depend only on the captures.
//!
//! [`synth`] generates capture pairs in code for tests and golden files.
#![forbid(unsafe_code)]

pub mod capture;
pub mod synth;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use colo_core::wire::{self, Class};
use colo_core::{Action, Config, Counters, Frame, Mode, NonIpPolicy, Shard, Side, Timestamp};
use serde::Serialize;

pub use capture::{read_pcap, write_pcap, Capture, CapturedFrame, ReplayError};
pub use pcap_file::TsResolution;

/// A frame fed to the shards: remembers its side and its 0-based index in its capture.
#[derive(Clone, Debug)]
pub struct ReplayFrame {
    /// Which capture.
    pub side: Side,
    /// Position in that capture.
    pub index: usize,
    /// Bytes.
    pub data: Vec<u8>,
}

impl Frame for ReplayFrame {
    fn bytes(&self) -> &[u8] {
        &self.data
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

/// Replay settings (the CLI flags).
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of shards (software Toeplitz dispatch).
    pub shards: usize,
    /// `compare_timeout`.
    pub compare_timeout: Duration,
    /// Compare or proxy mode.
    pub mode: Mode,
    /// Virtual delay between a checkpoint request and its completion.
    pub checkpoint_latency: Duration,
    /// Trace this flow (`tcp 10.0.0.2:80 > 10.0.0.1:40000`, either direction).
    pub explain: Option<String>,
    /// Non-IP and malformed frames: passthrough (default) or whole-frame compare (SPEC §4).
    pub non_ip_policy: NonIpPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            shards: 1,
            compare_timeout: Duration::from_millis(3000),
            mode: Mode::Compare,
            checkpoint_latency: Duration::ZERO,
            explain: None,
            non_ip_policy: NonIpPolicy::Passthrough,
        }
    }
}

/// One released frame in output order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Released {
    /// 0-based index in the primary capture.
    pub index: usize,
    /// `match`, `retransmission`, `flush`, `passthrough`.
    pub via: &'static str,
}

/// One checkpoint request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointEntry {
    /// Virtual time of the request, µs since the first frame of either capture.
    pub t_us: u64,
    /// SPEC §6 reason.
    pub reason: &'static str,
    /// `tcp 10.0.0.2:80 > 10.0.0.1:40000`.
    pub flow: String,
    /// Positions and hex window.
    pub detail: String,
}

/// The SPEC §9.2 report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Frames in the primary capture.
    pub primary_frames: usize,
    /// Frames in the secondary capture.
    pub secondary_frames: usize,
    /// Released primary frames in output order.
    pub released: Vec<Released>,
    /// Checkpoint requests in order.
    pub checkpoints: Vec<CheckpointEntry>,
    /// Primary drops by reason.
    pub primary_dropped: BTreeMap<&'static str, u64>,
    /// Secondary drops by reason (consumed and flushed frames are not drops).
    pub secondary_dropped: BTreeMap<&'static str, u64>,
    /// Primary frames still held after virtual time passed every timeout.
    pub held_at_end: u64,
    /// Summed shard counters (SPEC §10).
    pub counters: serde_json::Value,
}

/// Everything a replay produces.
pub struct Outcome {
    /// The report.
    pub report: Report,
    /// Released frames with their virtual release time (origin = first capture timestamp).
    pub output: Capture,
    /// `--explain` lines.
    pub explain: Vec<String>,
    /// Summed counters.
    pub counters: Counters,
    /// Checkpoint completions simulated.
    pub checkpoints_completed: u64,
}

struct Run<'a> {
    shards: Vec<Shard<ReplayFrame>>,
    opts: &'a Options,
    origin: Duration,
    /// Virtual now: never goes backwards, even if a capture's timestamps do.
    current: Timestamp,
    pending_completion: Option<Timestamp>,
    completions: u64,
    released: Vec<Released>,
    output: Capture,
    checkpoints: Vec<CheckpointEntry>,
    explain: Vec<String>,
    explain_indices: std::collections::HashSet<usize>,
    /// Secondary frames of the explained flow (their fate is traced too).
    explain_secondary: std::collections::HashSet<usize>,
    /// The explained flow's key, once an unfragmented frame of it showed its ports.
    explain_key: Option<wire::FlowKey>,
}

impl Run<'_> {
    /// A released frame into the output capture; `skip`: only its payload from there on (the
    /// bytes before it left as a part).
    fn release(&mut self, frame: ReplayFrame, via: colo_core::Via, skip: Option<u32>) {
        // Released secondary frames only exist after a failover, which replay never commands.
        let now = self.current;
        if frame.side == Side::Primary {
            if self.explain_indices.contains(&frame.index) {
                let rest = if skip.is_some() { " (its rest)" } else { "" };
                self.explain.push(format!(
                    "  t={}us released primary #{}{rest} via {}",
                    now.as_micros(),
                    frame.index,
                    via.as_str()
                ));
            }
            self.released.push(Released { index: frame.index, via: via.as_str() });
        }
        let at = self.origin + Duration::from_nanos(now.as_nanos());
        match skip.map(|skip| colo_core::segment::rest(&frame.data, skip as usize)) {
            Some(Ok(rest)) => {
                if let Some(data) = rest {
                    self.output.push(at, data);
                }
            }
            // Only TCP segments are released in parts: anything else leaves whole.
            None | Some(Err(_)) => self.output.push(at, frame.data),
        }
    }

    fn drain(&mut self, shard: usize) {
        while let Some(action) = self.shards.get_mut(shard).and_then(Shard::poll_action) {
            match action {
                Action::Release { frame, via } => self.release(frame, via, None),
                Action::ReleaseRest { frame, via, skip } => self.release(frame, via, Some(skip)),
                Action::ReleasePart { bytes, via } => {
                    let now = self.current;
                    // Parsed only while a flow is explained.
                    let explained =
                        self.explain_key.is_some_and(|k| matches!(wire::parse(&bytes), Class::Tcp(key, _) if key == k));
                    if explained {
                        self.explain.push(format!(
                            "  t={}us released a verified part ({} bytes) via {} ahead of its segment",
                            now.as_micros(),
                            bytes.len(),
                            via.as_str()
                        ));
                    }
                    self.output.push(self.origin + Duration::from_nanos(now.as_nanos()), bytes.into_vec());
                }
                Action::Drop { side, frame, reason } => {
                    let traced = match side {
                        Side::Primary => self.explain_indices.contains(&frame.index),
                        Side::Secondary => self.explain_secondary.contains(&frame.index),
                    };
                    if traced {
                        let what = match reason {
                            colo_core::DropReason::Consumed => "consumed (compared, or nothing to compare)".to_string(),
                            colo_core::DropReason::Flushed => "flushed by the checkpoint".to_string(),
                            r => format!("dropped ({})", r.as_str()),
                        };
                        self.explain.push(format!(
                            "  t={}us {} #{} {what}",
                            self.current.as_micros(),
                            side.as_str(),
                            frame.index
                        ));
                    }
                }
                Action::Checkpoint(req) => {
                    if self.opts.explain.as_deref().is_some_and(|e| flow_matches(&req.flow, e)) {
                        self.explain.push(format!(
                            "  t={}us CHECKPOINT {}: {}",
                            req.now.as_micros(),
                            req.reason,
                            req.detail
                        ));
                    }
                    if self.pending_completion.is_none() {
                        self.pending_completion = Some(req.now.saturating_add(self.opts.checkpoint_latency));
                    }
                    self.checkpoints.push(CheckpointEntry {
                        t_us: req.now.as_micros(),
                        reason: req.reason.as_str(),
                        flow: req.flow,
                        detail: req.detail,
                    });
                }
            }
        }
    }
}

/// `flow` (a key's display) is the flow named by `wanted`, in either direction.
fn flow_matches(flow: &str, wanted: &str) -> bool {
    let wanted = wanted.trim();
    if flow == wanted {
        return true;
    }
    // Reverse "proto [vlan v] a > b" into "proto [vlan v] b > a".
    match flow.split_once(" > ") {
        Some((left, right)) => match left.rsplit_once(' ') {
            Some((prefix, src)) => format!("{prefix} {right} > {src}") == wanted,
            None => false,
        },
        None => false,
    }
}

/// Whether a frame of class `class` and flow `key` belongs to the explained flow. IP fragments
/// after the first carry no ports: a fragment belongs to it when protocol, VLANs and addresses
/// agree (it may then be another flow's between the same hosts).
fn explains(class: &Class, key: &wire::FlowKey, wanted: &str) -> bool {
    match class {
        Class::Fragment(..) => flow_matches(&without_ports(&key.to_string()), &without_ports(wanted)),
        _ => flow_matches(&key.to_string(), wanted),
    }
}

/// A flow string with its ports left out (`tcp 10.0.0.2 > 10.0.0.1`).
fn without_ports(flow: &str) -> String {
    let strip = |tok: &str| -> String {
        match tok.rsplit_once(':') {
            Some((addr, port))
                if !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && (addr.ends_with(']') || !addr.contains(':')) =>
            {
                addr.trim_start_matches('[').trim_end_matches(']').to_string()
            }
            _ => tok.to_string(),
        }
    };
    flow.trim().split(' ').map(strip).collect::<Vec<_>>().join(" ")
}

fn flags_str(seg: &wire::TcpSegment) -> String {
    let mut s = String::new();
    for (on, c) in [(seg.syn, 'S'), (seg.fin, 'F'), (seg.rst, 'R'), (seg.ack_flag, '.')] {
        if on {
            s.push(c);
        }
    }
    s
}

impl Run<'_> {
    /// `--explain`: a frame of the explained flow arrives.
    fn explain_arrival(&mut self, side: Side, index: usize, shard: usize, class: &Class, t: Timestamp) {
        match side {
            Side::Primary => self.explain_indices.insert(index),
            Side::Secondary => self.explain_secondary.insert(index),
        };
        let what = match class {
            Class::Tcp(_, seg) => {
                format!("seq={} ack={} len={} flags={}", seg.seq, seg.ack, seg.payload_len, flags_str(seg))
            }
            Class::Datagram(_, span) | Class::OtherIp(_, span) => format!("datagram, {} bytes compared", span.len),
            Class::Fragment(_, f) => {
                format!("fragment id={} offset={} len={} more={}", f.id, f.offset, f.data.len, f.more)
            }
            Class::NonIp(_) | Class::Malformed(_) => String::new(),
        };
        self.explain.push(format!("t={}us {} #{} shard {} {what}", t.as_micros(), side.as_str(), index, shard));
    }

    /// `--explain`: the explained flow's state after one of its frames (a fragment's key has
    /// no ports: the connection's key, once an unfragmented frame showed it, is used).
    fn explain_state(&mut self, shard: usize, class: &Class, key: wire::FlowKey) {
        if !matches!(class, Class::Fragment(..)) {
            self.explain_key = Some(key);
        }
        let key = self.explain_key.unwrap_or(key);
        let Some(st) = self.shards.get(shard).and_then(|s| s.flow_status(&key)) else { return };
        let rel = match (st.compared, st.base) {
            (Some(c), Some(b)) => format!(" (stream +{})", c.wrapping_sub(b)),
            _ => String::new(),
        };
        let mut line = format!(
            "  state: compared={}{rel} secondary_ack={} held primary/secondary={}/{}",
            st.compared.map_or("-".into(), |c| c.to_string()),
            st.secondary_ack.map_or("-".into(), |a| a.to_string()),
            st.held_primary,
            st.held_secondary
        );
        if let Some(h) = st.head {
            let _ = write!(line, ", oldest primary held: {}", h.as_str());
        }
        if st.closed {
            line.push_str(", closed");
        }
        self.explain.push(line);
    }

    /// Runs completions and deadlines due at or before `until`, in time order.
    fn advance_to(&mut self, until: Timestamp) {
        // Each iteration either completes a checkpoint or runs due timers; a shard's
        // re-armed timers are strictly later, so this terminates. The cap is a safety net.
        for _ in 0..10_000_000u32 {
            let deadline = self.shards.iter().filter_map(|s| s.next_deadline()).min();
            let next = match (self.pending_completion, deadline) {
                (Some(c), Some(d)) => c.min(d),
                (c, d) => match c.or(d) {
                    Some(t) => t,
                    None => return,
                },
            };
            if next > until {
                return;
            }
            self.current = self.current.max(next);
            let now = self.current;
            if self.pending_completion.is_some_and(|c| c <= now) {
                self.pending_completion = None;
                self.completions += 1;
                if !self.explain_indices.is_empty() {
                    self.explain.push(format!("  t={}us checkpoint completed (flush)", now.as_micros()));
                }
                for i in 0..self.shards.len() {
                    if let Some(s) = self.shards.get_mut(i) {
                        s.checkpoint_done(now);
                    }
                    self.drain(i);
                }
            } else {
                for i in 0..self.shards.len() {
                    let due = self.shards.get(i).and_then(|s| s.next_deadline()).is_some_and(|d| d <= now);
                    if due {
                        if let Some(s) = self.shards.get_mut(i) {
                            s.handle_timeout(now);
                        }
                        self.drain(i);
                    }
                }
            }
        }
    }
}

/// Picks a frame's shard exactly as the runtime's software dispatch does.
pub use colo_core::rss::shard_of;

/// Replays two captures through `opts.shards` shards with a virtual clock.
pub fn replay(primary: &Capture, secondary: &Capture, opts: &Options) -> Outcome {
    let cfg = Config {
        mode: opts.mode,
        non_ip_policy: opts.non_ip_policy,
        ..Config::default().with_compare_timeout(opts.compare_timeout)
    };
    let n = opts.shards.max(1);
    let origin = primary.frames.iter().chain(&secondary.frames).map(|f| f.ts).min().unwrap_or_default();
    let mut run = Run {
        shards: (0..n).map(|_| Shard::new(cfg.clone())).collect(),
        opts,
        origin,
        current: Timestamp::default(),
        pending_completion: None,
        completions: 0,
        released: Vec::new(),
        output: Capture::default(),
        checkpoints: Vec::new(),
        explain: Vec::new(),
        explain_indices: Default::default(),
        explain_secondary: Default::default(),
        explain_key: None,
    };
    let to_ts =
        |d: Duration| Timestamp::from_nanos(u64::try_from(d.saturating_sub(origin).as_nanos()).unwrap_or(u64::MAX));
    // Merge, not sort: each capture keeps its own order even if its timestamps go backwards.
    let (mut pi, mut si) = (0usize, 0usize);
    loop {
        let p = primary.frames.get(pi);
        let s = secondary.frames.get(si);
        let (side, index, frame) = match (p, s) {
            (Some(p), Some(s)) if p.ts <= s.ts => (Side::Primary, pi, p),
            (Some(_), Some(s)) => (Side::Secondary, si, s),
            (Some(p), None) => (Side::Primary, pi, p),
            (None, Some(s)) => (Side::Secondary, si, s),
            (None, None) => break,
        };
        match side {
            Side::Primary => pi += 1,
            Side::Secondary => si += 1,
        }
        let t = to_ts(frame.ts).max(run.current);
        run.advance_to(t);
        run.current = t;
        // The runtime's dispatch, and its parse travelling with the frame (SPEC §8).
        let (shard, class) = colo_core::rss::dispatch(&frame.data, n);
        // The explained flow's frames: what arrives, then the flow's state after it.
        let explained = opts.explain.as_deref().and_then(|wanted| {
            let class = wire::parse(&frame.data);
            class.key().copied().filter(|key| explains(&class, key, wanted)).map(|key| (class, key))
        });
        if let Some((class, _)) = &explained {
            run.explain_arrival(side, index, shard, class, t);
        }
        if let Some(s) = run.shards.get_mut(shard) {
            let f = ReplayFrame { side, index, data: frame.data.clone() };
            match class {
                Some(class) => s.handle_parsed(side, f, class, t),
                None => s.handle(side, f, t),
            }
        }
        run.drain(shard);
        if let Some((class, key)) = explained {
            run.explain_state(shard, &class, key);
        }
    }
    // End of input: virtual time passes every timeout (SPEC §9.2).
    run.advance_to(Timestamp::from_nanos(u64::MAX));

    let mut counters = Counters::default();
    for s in &run.shards {
        counters.merge(s.counters());
    }
    let dropped = |side: Side| {
        colo_core::DropReason::ALL
            .into_iter()
            .filter(|r| !matches!(r, colo_core::DropReason::Consumed | colo_core::DropReason::Flushed))
            .filter_map(|r| {
                let n = counters.dropped(side, r);
                (n > 0).then_some((r.as_str(), n))
            })
            .collect::<BTreeMap<_, _>>()
    };
    let report = Report {
        primary_frames: primary.frames.len(),
        secondary_frames: secondary.frames.len(),
        released: run.released,
        checkpoints: run.checkpoints,
        primary_dropped: dropped(Side::Primary),
        secondary_dropped: dropped(Side::Secondary),
        held_at_end: counters.held_primary_frames,
        counters: counters_json(&counters, run.completions),
    };
    Outcome { report, output: run.output, explain: run.explain, counters, checkpoints_completed: run.completions }
}

/// The SPEC §10 counters as JSON, in the schema every report uses ([`Counters::to_json`]);
/// `checkpoints_completed` counts the replay's completions (each shard counts each one).
pub fn counters_json(c: &Counters, completions: u64) -> serde_json::Value {
    let mut v = c.to_json();
    v["checkpoints_completed"] = completions.into();
    v
}

/// The short human summary `colo-replay` prints.
pub fn summary(o: &Outcome) -> String {
    let r = &o.report;
    let mut by_via: BTreeMap<&str, usize> = BTreeMap::new();
    for rel in &r.released {
        *by_via.entry(rel.via).or_default() += 1;
    }
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &r.checkpoints {
        *by_reason.entry(c.reason).or_default() += 1;
    }
    let mut s = format!(
        "primary {} frames, secondary {} frames\nreleased {} ({})\ncheckpoint requests {} ({}), completed {}\nheld at end {}\n",
        r.primary_frames,
        r.secondary_frames,
        r.released.len(),
        join(&by_via),
        r.checkpoints.len(),
        join(&by_reason),
        o.checkpoints_completed,
        r.held_at_end
    );
    if !r.primary_dropped.is_empty() || !r.secondary_dropped.is_empty() {
        let _ = writeln!(s, "dropped primary {} secondary {}", join(&r.primary_dropped), join(&r.secondary_dropped));
    }
    s
}

fn join<V: std::fmt::Display>(m: &BTreeMap<&str, V>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}
