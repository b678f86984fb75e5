//! Capture pairs generated in code: the golden scenarios of SPEC §5.1/§6 for `colo-replay`'s
//! tests and, later, the DPDK integration tests (write them with [`crate::write_pcap`]).
//!
//! Owns only frame/timeline construction (via `colo_core::fixtures`); it never runs the
//! comparator. Each [`Pair`] states the verdict SPEC requires.

use std::time::Duration;

use colo_core::fixtures::{flags, timestamp_option, TcpFrame};

use std::path::{Path, PathBuf};

use crate::capture::{write_pcap, Capture, ReplayError};
use pcap_file::TsResolution;

/// A primary/secondary capture pair and the verdict it must produce.
#[derive(Clone, Debug)]
pub struct Pair {
    /// Scenario name (also a good file stem).
    pub name: &'static str,
    /// What the primary guest sent.
    pub primary: Capture,
    /// What the secondary guest sent.
    pub secondary: Capture,
    /// Expected checkpoint reasons, in order (SPEC §6 strings).
    pub expect_checkpoints: Vec<&'static str>,
    /// Whether every primary frame must be released via `match`/`retransmission`.
    pub expect_all_matched: bool,
}

/// Capture time origin: 2024-01-01T00:00:00Z, so timestamps look like a real capture.
pub const T0: Duration = Duration::from_secs(1_704_067_200);

/// Primary frame `i` is captured at `T0 + i ms`; the secondary's at `+ 300 µs` (it runs a
/// little behind, as a secondary does).
pub fn primary_at(i: usize) -> Duration {
    T0 + Duration::from_millis(i as u64)
}

/// See [`primary_at`].
pub fn secondary_at(i: usize) -> Duration {
    primary_at(i) + Duration::from_micros(300)
}

/// A server-side connection: guest 10.0.0.2:80 answering client 10.0.0.1:40000.
#[derive(Clone, Debug)]
pub struct Server {
    /// Header template.
    pub template: TcpFrame,
    /// The guest's ISN.
    pub isn: u32,
    /// Client ISN + 1 (the ACK the guest sends after the handshake).
    pub client_next: u32,
}

impl Server {
    /// The primary's view.
    pub fn primary() -> Self {
        Server { template: TcpFrame::default(), isn: 1_000_000, client_next: 5001 }
    }
    /// The secondary's: same flow, its own ISN (compare mode leaves SYN-ACKs unrewritten).
    pub fn secondary() -> Self {
        Server { isn: 3_333_333, ..Self::primary() }
    }
    /// SYN-ACK.
    pub fn syn_ack(&self) -> TcpFrame {
        TcpFrame {
            seq: self.isn,
            ack: self.client_next,
            flags: flags::SYN | flags::ACK,
            options: vec![2, 4, 0x05, 0xb4],
            ..self.template.clone()
        }
    }
    /// Data at stream offset `off`, numbered in the *primary's* sequence space (compare mode:
    /// the secondary's data arrives already rewritten).
    pub fn data(&self, off: usize, payload: &[u8]) -> TcpFrame {
        TcpFrame {
            seq: Self::primary().isn.wrapping_add(1).wrapping_add(off as u32),
            ack: self.client_next,
            flags: flags::ACK | flags::PSH,
            payload: payload.to_vec(),
            ..self.template.clone()
        }
    }
    /// FIN after `len` stream bytes.
    pub fn fin(&self, len: usize) -> TcpFrame {
        TcpFrame { flags: flags::ACK | flags::FIN, payload: Vec::new(), ..self.data(len, &[]) }
    }
}

/// The HTTP-ish response both guests send.
pub fn body() -> Vec<u8> {
    let mut b = b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n".to_vec();
    b.extend((0..64u8).map(|i| b'a' + i % 26));
    b
}

fn capture(frames: Vec<TcpFrame>, at: fn(usize) -> Duration) -> Capture {
    let mut c = Capture::default();
    for (i, f) in frames.into_iter().enumerate() {
        c.push(at(i), f.build());
    }
    c
}

fn segments(s: &Server, body: &[u8], cuts: &[usize]) -> Vec<TcpFrame> {
    let mut points = vec![0];
    points.extend_from_slice(cuts);
    points.push(body.len());
    points.windows(2).map(|w| s.data(w[0], &body[w[0]..w[1]])).collect()
}

fn conversation(s: &Server, body: &[u8], cuts: &[usize]) -> Vec<TcpFrame> {
    let mut v = vec![s.syn_ack()];
    v.extend(segments(s, body, cuts));
    v.push(s.fin(body.len()));
    v
}

fn pair(
    name: &'static str,
    primary: Vec<TcpFrame>,
    secondary: Vec<TcpFrame>,
    expect_checkpoints: Vec<&'static str>,
) -> Pair {
    let expect_all_matched = expect_checkpoints.is_empty();
    Pair {
        name,
        primary: capture(primary, primary_at),
        secondary: capture(secondary, secondary_at),
        expect_checkpoints,
        expect_all_matched,
    }
}

/// Both guests send the same bytes in the same segments.
pub fn identical() -> Pair {
    let b = body();
    pair(
        "identical",
        conversation(&Server::primary(), &b, &[40]),
        conversation(&Server::secondary(), &b, &[40]),
        vec![],
    )
}

/// The primary sends 3+7 bytes where the secondary sent 10 (and the rest likewise).
pub fn resegmented_3_7_vs_10() -> Pair {
    let b = body();
    pair(
        "reseg-3+7-vs-10",
        conversation(&Server::primary(), &b, &[3, 10]),
        conversation(&Server::secondary(), &b, &[10]),
        vec![],
    )
}

/// The primary sends 10 bytes where the secondary sent 3+7.
pub fn resegmented_10_vs_3_7() -> Pair {
    let b = body();
    pair(
        "reseg-10-vs-3+7",
        conversation(&Server::primary(), &b, &[10]),
        conversation(&Server::secondary(), &b, &[3, 10]),
        vec![],
    )
}

/// Only IP ID, TTL, IP checksum and TCP checksum differ.
pub fn ip_header_only() -> Pair {
    let b = body();
    let mut sec = conversation(&Server::secondary(), &b, &[40]);
    for (i, f) in sec.iter_mut().enumerate() {
        f.ip_id = 0x4000 + i as u16;
        f.ttl = 63;
    }
    let mut p = pair("ip-header-only", conversation(&Server::primary(), &b, &[40]), sec, vec![]);
    // Corrupt one secondary TCP checksum: the comparator must not look at it.
    if let Some(f) = p.secondary.frames.get_mut(1) {
        if let Some(byte) = f.data.get_mut(14 + 20 + 16) {
            *byte ^= 0xff;
        }
    }
    p
}

/// TCP timestamp options (and window) differ on every segment.
pub fn tcp_timestamps() -> Pair {
    let b = body();
    let mut prim = conversation(&Server::primary(), &b, &[40]);
    let mut sec = conversation(&Server::secondary(), &b, &[40]);
    for (i, f) in prim.iter_mut().enumerate().skip(1) {
        f.options = timestamp_option(100 + i as u32, 7);
    }
    for (i, f) in sec.iter_mut().enumerate().skip(1) {
        f.options = timestamp_option(90_000 + i as u32, 7);
        f.window = 1024;
    }
    pair("tcp-timestamps", prim, sec, vec![])
}

/// One payload byte differs in the second segment.
pub fn payload_divergence() -> Pair {
    let b = body();
    let mut other = b.clone();
    other[50] ^= 0x20;
    pair(
        "payload-divergence",
        conversation(&Server::primary(), &b, &[40]),
        conversation(&Server::secondary(), &other, &[40]),
        vec!["tcp-payload-mismatch"],
    )
}

/// The secondary answers the handshake and then stays silent.
pub fn secondary_silent() -> Pair {
    let b = body();
    pair(
        "secondary-silent",
        conversation(&Server::primary(), &b, &[40]),
        vec![Server::secondary().syn_ack()],
        vec!["timeout-primary"],
    )
}

/// The secondary sends the same bytes but never acknowledges the client's second request
/// (its ACK stays behind the primary's).
pub fn ack_lag() -> Pair {
    let b = body();
    let mut prim = conversation(&Server::primary(), &b, &[40]);
    let mut sec = conversation(&Server::secondary(), &b, &[40]);
    // After the first segment the primary has received 20 more client bytes; the
    // secondary has not.
    for f in prim.iter_mut().skip(2) {
        f.ack += 20;
    }
    for f in sec.iter_mut().skip(2) {
        f.ack = Server::primary().client_next;
    }
    pair("ack-lag", prim, sec, vec!["ack-lag-timeout"])
}

/// `flows` identical connections (client ports 40000.., clients 10.0.1.x) interleaved
/// segment by segment: exercises sharding and per-flow ordering.
pub fn many_flows(flows: u16) -> Pair {
    let b = body();
    let mut p_frames = Vec::new();
    let mut s_frames = Vec::new();
    let convs: Vec<(Vec<TcpFrame>, Vec<TcpFrame>)> = (0..flows)
        .map(|i| {
            let retarget = |mut s: Server| {
                s.template.dport = 40000 + i;
                s.template.dst = std::net::Ipv4Addr::new(10, 0, 1, (i % 250) as u8 + 1);
                s
            };
            (
                conversation(&retarget(Server::primary()), &b, &[7, 40]),
                conversation(&retarget(Server::secondary()), &b, &[20, 60]),
            )
        })
        .collect();
    let longest = convs.iter().map(|c| c.0.len().max(c.1.len())).max().unwrap_or(0);
    for k in 0..longest {
        for (p, s) in &convs {
            p_frames.extend(p.get(k).cloned());
            s_frames.extend(s.get(k).cloned());
        }
    }
    pair("many-flows", p_frames, s_frames, vec![])
}

/// Proxy mode (SPEC §3): the secondary's data uses *its own* sequence space (nothing
/// rewrote it); the comparator learns the offset from the SYN-ACK pair. Expect no checkpoint
/// with `Mode::Proxy` (not part of [`all`], whose pairs are compare-mode captures).
pub fn proxy_mode() -> Pair {
    let b = body();
    let s = Server::secondary();
    let mut sec = vec![s.syn_ack()];
    for f in segments(&s, &b, &[30]).into_iter().chain([s.fin(b.len())]) {
        let off = f.seq.wrapping_sub(Server::primary().isn);
        sec.push(TcpFrame { seq: s.isn.wrapping_add(off), ..f });
    }
    pair("proxy-mode", conversation(&Server::primary(), &b, &[40]), sec, vec![])
}

/// Every compare-mode scenario.
pub fn all() -> Vec<Pair> {
    vec![
        identical(),
        resegmented_3_7_vs_10(),
        resegmented_10_vs_3_7(),
        ip_header_only(),
        tcp_timestamps(),
        payload_divergence(),
        secondary_silent(),
        ack_lag(),
        many_flows(8),
    ]
}

/// Writes `pair` as `DIR/NAME.primary.pcap` and `DIR/NAME.secondary.pcap` (golden files for
/// the DPDK net_pcap tests) and returns both paths.
pub fn write_pair(dir: &Path, pair: &Pair, resolution: TsResolution) -> Result<(PathBuf, PathBuf), ReplayError> {
    let p = dir.join(format!("{}.primary.pcap", pair.name));
    let s = dir.join(format!("{}.secondary.pcap", pair.name));
    write_pcap(&p, &pair.primary, resolution)?;
    write_pcap(&s, &pair.secondary, resolution)?;
    Ok((p, s))
}
