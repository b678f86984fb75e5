//! Capture pairs generated in code: the golden scenarios of SPEC §5.1/§6 for `colo-replay`'s
//! tests and, later, the DPDK integration tests (write them with [`crate::write_pcap`]).
//!
//! Owns only frame/timeline construction (via `colo_core::fixtures`); it never runs the
//! comparator. Each [`Pair`] states the verdict SPEC requires.

use std::time::Duration;

use colo_core::fixtures::{flags, icmp_echo, icmpv6_echo, timestamp_option, v6_pair, IpFrame, TcpFrame};

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
    /// Whether primary frames are still held when the first request is made, so that some
    /// leave by the checkpoint's flush (divergent pairs; not where one side's lone action is
    /// timed after everything already matched).
    pub expect_flush: bool,
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
        expect_flush: !expect_all_matched,
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

fn raw(frames: Vec<Vec<u8>>, at: fn(usize) -> Duration) -> Capture {
    let mut c = Capture::default();
    for (i, f) in frames.into_iter().enumerate() {
        c.push(at(i), f);
    }
    c
}

fn raw_pair(name: &'static str, p: Vec<Vec<u8>>, s: Vec<Vec<u8>>, expect_checkpoints: Vec<&'static str>) -> Pair {
    let expect_all_matched = expect_checkpoints.is_empty();
    Pair {
        name,
        primary: raw(p, primary_at),
        secondary: raw(s, secondary_at),
        expect_flush: !expect_all_matched,
        expect_checkpoints,
        expect_all_matched,
    }
}

/// Datagram `i` of a 20-datagram UDP exchange (guest 10.0.0.2:53 → client 10.0.0.1:40000).
fn udp_msg(i: usize, ip_id: u32, ttl: u8) -> IpFrame {
    let data: Vec<u8> = (0..40).map(|k| (i * 7 + k) as u8).collect();
    IpFrame { ip_id, ttl, ..IpFrame::udp(53, 40000, &data) }
}

fn udp_stream(n: usize, secondary: bool) -> Vec<IpFrame> {
    (0..n).map(|i| if secondary { udp_msg(i, 0x5000 + i as u32, 63) } else { udp_msg(i, 100 + i as u32, 64) }).collect()
}

fn built(v: Vec<IpFrame>) -> Vec<Vec<u8>> {
    v.iter().map(IpFrame::build).collect()
}

/// UDP: same datagrams, different IP ID/TTL.
pub fn udp_identical() -> Pair {
    raw_pair("udp-identical", built(udp_stream(20, false)), built(udp_stream(20, true)), vec![])
}

/// UDP: datagram 3 differs in one byte; found once the window (16) has passed it.
pub fn udp_one_byte_differs() -> Pair {
    let mut s = udp_stream(20, true);
    s[3].payload[20] ^= 1;
    raw_pair("udp-one-byte-differs", built(udp_stream(20, false)), built(s), vec!["datagram-mismatch"])
}

/// UDP: the secondary swaps neighbours (within the window).
pub fn udp_reordered_within_window() -> Pair {
    let mut s = udp_stream(20, true);
    for k in (0..20).step_by(2) {
        s.swap(k, k + 1);
    }
    raw_pair("udp-reordered-within-window", built(udp_stream(20, false)), built(s), vec![])
}

/// UDP: the secondary sends the last datagram first (20 positions early: beyond the window).
pub fn udp_reordered_beyond_window() -> Pair {
    let mut s = udp_stream(21, true);
    let last = s.remove(20);
    s.insert(0, last);
    raw_pair("udp-reordered-beyond-window", built(udp_stream(21, false)), built(s), vec!["datagram-mismatch"])
}

/// UDP: the secondary sends nothing.
pub fn udp_secondary_silent() -> Pair {
    raw_pair("udp-secondary-silent", built(udp_stream(3, false)), vec![], vec!["timeout-primary"])
}

fn echo(seq: u16, data: &[u8], ip_id: u32) -> Vec<u8> {
    IpFrame { proto: 1, ip_id, payload: icmp_echo(false, 0x77, seq, data), ..IpFrame::default() }.build()
}

/// ICMP echo replies, identical but for the IP header.
pub fn icmp_echo_identical() -> Pair {
    let p = (0..4).map(|i| echo(i, b"abcdefgh", u32::from(i))).collect();
    let s = (0..4).map(|i| echo(i, b"abcdefgh", 900 + u32::from(i))).collect();
    raw_pair("icmp-echo-identical", p, s, vec![])
}

/// ICMP echo replies; the secondary's carry different data (every one differs).
pub fn icmp_echo_differs() -> Pair {
    let p = (0..20).map(|i| echo(i, b"abcdefgh", 1)).collect();
    let s = (0..20).map(|i| echo(i, b"abcdefgX", 1)).collect();
    raw_pair("icmp-echo-differs", p, s, vec!["datagram-mismatch"])
}

/// ICMPv6 echo replies over IPv6, different hop limits.
pub fn icmpv6_echo_identical() -> Pair {
    let (src, dst) = v6_pair();
    let f = |i: u16, ttl: u8| {
        IpFrame { src, dst, proto: 58, ttl, payload: icmpv6_echo(src, dst, false, 9, i, b"six"), ..IpFrame::default() }
            .build()
    };
    raw_pair("icmpv6-echo", (0..4).map(|i| f(i, 64)).collect(), (0..4).map(|i| f(i, 1)).collect(), vec![])
}

fn gre(i: usize, ip_id: u32, ttl: u8, tail: u8) -> Vec<u8> {
    let mut payload = vec![0, 0, 0x08, 0x00];
    payload.extend((0..32).map(|k| (i + k) as u8));
    payload.push(tail);
    IpFrame { proto: 47, ip_id, ttl, payload, ..IpFrame::default() }.build()
}

/// GRE: only IP ID and TTL differ (QEMU would checkpoint; SPEC §5.3 says we must not).
pub fn gre_ip_header_only() -> Pair {
    let p = (0..4).map(|i| gre(i, i as u32, 64, 0)).collect();
    let s = (0..4).map(|i| gre(i, 0x4000 + i as u32, 60, 0)).collect();
    raw_pair("gre-ip-header-only", p, s, vec![])
}

/// GRE: every secondary payload differs in its last byte.
pub fn gre_payload_differs() -> Pair {
    let p = (0..20).map(|i| gre(i, 1, 64, 0)).collect();
    let s = (0..20).map(|i| gre(i, 1, 64, 1)).collect();
    raw_pair("gre-payload-differs", p, s, vec!["other-mismatch"])
}

/// ARP replies, identical: released via `passthrough` under the default policy, via
/// `match` under `--non-ip-policy compare`.
pub fn arp_identical() -> Pair {
    let arp = |i: u8| {
        let mut f = vec![0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2];
        f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 2, 10, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 10, 0, 0, i]);
        f.resize(60, 0);
        f
    };
    raw_pair("arp-identical", (1..4).map(arp).collect(), (1..4).map(arp).collect(), vec![])
}

fn big(ip_id: u32, n: usize) -> IpFrame {
    let data: Vec<u8> = (0..n).map(|k| (k * 13 + ip_id as usize * 31) as u8).collect();
    IpFrame { ip_id, ..IpFrame::udp(5000, 40000, &data) }
}

/// IPv4 fragments, same split on both sides.
pub fn ipv4_fragments_identical() -> Pair {
    let p = big(7, 3000).fragments(&[1480, 2960]);
    let s = IpFrame { ip_id: 99, ..big(7, 3000) }.fragments(&[1480, 2960]);
    raw_pair("ipv4-fragments-identical", p, s, vec![])
}

/// IPv4 fragments, split differently (the secondary also sends them in reverse order).
pub fn ipv4_fragments_split_differently() -> Pair {
    let p = big(7, 3000).fragments(&[1480, 2960]);
    let mut s = IpFrame { ip_id: 99, ..big(7, 3000) }.fragments(&[1000, 2000]);
    s.reverse();
    raw_pair("ipv4-fragments-split-differently", p, s, vec![])
}

/// IPv4 fragments: one payload byte of the secondary's second fragment differs (window 16:
/// 20 datagrams so the window passes it).
pub fn ipv4_fragment_payload_differs() -> Pair {
    let mut p = Vec::new();
    let mut s = Vec::new();
    for i in 0..20u32 {
        let d = big(i, 2000);
        p.extend(d.fragments(&[1480]));
        let mut e = IpFrame { ip_id: 500 + i, ..d };
        if i == 2 {
            e.payload[1600] ^= 0x10;
        }
        s.extend(e.fragments(&[1000]));
    }
    raw_pair("ipv4-fragment-payload-differs", p, s, vec!["datagram-mismatch"])
}

/// IPv4 fragments: the secondary's last fragment never comes.
pub fn ipv4_fragment_missing() -> Pair {
    let p = big(7, 3000).fragments(&[1480, 2960]);
    let mut s = IpFrame { ip_id: 99, ..big(7, 3000) }.fragments(&[1480, 2960]);
    s.pop();
    // The secondary's partial datagram times out first (its reassembly deadline); that
    // checkpoint's flush releases the primary's complete, unmatched datagram.
    raw_pair("ipv4-fragment-missing", p, s, vec!["fragment-timeout"])
}

/// IPv4: the primary sends overlapping, conflicting garbage fragments (and so does the
/// secondary); never released before the `fragment-timeout` checkpoint flushes them.
pub fn ipv4_fragments_overlapping_garbage() -> Pair {
    let d = big(7, 100);
    let frames = vec![d.fragment(0, 64), d.fragment_with(32, &[0xee; 76], false)];
    raw_pair("ipv4-fragments-overlapping-garbage", frames.clone(), frames, vec!["fragment-timeout"])
}

/// IPv6 fragments, split differently.
pub fn ipv6_fragments() -> Pair {
    let p = big(7, 3000).v6().fragments(&[1232, 2464]);
    let s = IpFrame { ip_id: 8, ..big(7, 3000).v6() }.fragments(&[1000]);
    raw_pair("ipv6-fragments", p, s, vec![])
}

fn tcp_over(vlans: &[u16], v6: bool, secondary: bool) -> Vec<Vec<u8>> {
    let server = if secondary { Server::secondary() } else { Server::primary() };
    let b = body();
    let cuts: &[usize] = if secondary { &[10] } else { &[3, 10] };
    let frames = conversation(&server, &b, cuts);
    let (src, dst) = if v6 {
        v6_pair()
    } else {
        (std::net::IpAddr::V4(server.template.src), std::net::IpAddr::V4(server.template.dst))
    };
    frames.iter().map(|f| f.to_ip(src, dst, vlans).build()).collect()
}

/// TCP over IPv6, resegmented 3+7 vs 10.
pub fn tcp_ipv6_resegmented() -> Pair {
    raw_pair("tcp-ipv6-resegmented", tcp_over(&[], true, false), tcp_over(&[], true, true), vec![])
}

/// TCP over QinQ (VLAN 100.200), resegmented.
pub fn tcp_qinq_resegmented() -> Pair {
    raw_pair("tcp-qinq-resegmented", tcp_over(&[100, 200], false, false), tcp_over(&[100, 200], false, true), vec![])
}

/// Issue 4 scenarios (datagrams, other IP, non-IP, fragments, VLAN/IPv6), compare mode with
/// the default configuration (`arp-identical` expects `match` only under
/// `--non-ip-policy compare`).
pub fn datagram_pairs() -> Vec<Pair> {
    vec![
        udp_identical(),
        udp_one_byte_differs(),
        udp_reordered_within_window(),
        udp_reordered_beyond_window(),
        udp_secondary_silent(),
        icmp_echo_identical(),
        icmp_echo_differs(),
        icmpv6_echo_identical(),
        gre_ip_header_only(),
        gre_payload_differs(),
        arp_identical(),
        ipv4_fragments_identical(),
        ipv4_fragments_split_differently(),
        ipv4_fragment_payload_differs(),
        ipv4_fragment_missing(),
        ipv4_fragments_overlapping_garbage(),
        ipv6_fragments(),
        tcp_ipv6_resegmented(),
        tcp_qinq_resegmented(),
    ]
}

/// A connection the flow table forgot (idle past `conn_idle_timeout`): both guests send a
/// Linux keepalive at snd_nxt − 1 (zero length), then answer at snd_nxt. Nothing differs.
pub fn keepalive_after_idle() -> Pair {
    let (p, s) = (Server::primary(), Server::secondary());
    let probe = |srv: &Server| TcpFrame { flags: flags::ACK, payload: Vec::new(), ..srv.data(99, &[]) };
    pair(
        "keepalive-after-idle",
        vec![probe(&p), p.data(100, b"answer after idle")],
        vec![probe(&s), s.data(100, b"answer after idle")],
        vec![],
    )
}

/// Port reuse: the client rebooted and reconnects from the same port while the old
/// connection never closed; the secondary's new SYN-ACK arrives before the primary's.
pub fn port_reuse_secondary_first() -> Pair {
    let (p, s) = (Server::primary(), Server::secondary());
    let again = |srv: &Server, isn: u32| Server { isn, client_next: 777_001, ..srv.clone() };
    let (p2, s2) = (again(&p, 2_000_000), again(&s, 4_000_000));
    let p2_data = TcpFrame { seq: p2.isn.wrapping_add(1), ..p2.data(0, b"new incarnation") };
    let s2_data = TcpFrame { seq: p2.isn.wrapping_add(1), ..s2.data(0, b"new incarnation") };
    let mut primary = Capture::default();
    let mut secondary = Capture::default();
    for (i, (a, b)) in [(p.syn_ack(), s.syn_ack()), (p.data(0, b"old"), s.data(0, b"old"))].into_iter().enumerate() {
        primary.push(primary_at(i), a.build());
        secondary.push(secondary_at(i), b.build());
    }
    // The secondary's new SYN-ACK comes 5 ms before the primary's.
    secondary.push(primary_at(10), s2.syn_ack().build());
    primary.push(primary_at(15), p2.syn_ack().build());
    primary.push(primary_at(16), p2_data.build());
    secondary.push(secondary_at(16), s2_data.build());
    Pair {
        name: "port-reuse-secondary-first",
        primary,
        secondary,
        expect_checkpoints: vec![],
        expect_all_matched: true,
        expect_flush: false,
    }
}

/// UDP: the secondary's stack leaves the (optional, IPv4) UDP checksum at 0.
pub fn udp_checksum_zero() -> Pair {
    let s: Vec<Vec<u8>> = built(udp_stream(20, true))
        .into_iter()
        .map(|mut f| {
            f[14 + 20 + 6] = 0;
            f[14 + 20 + 7] = 0;
            f
        })
        .collect();
    raw_pair("udp-checksum-zero", built(udp_stream(20, false)), s, vec![])
}

/// UDP: a single differing reply (a DNS answer) and no later traffic: caught after
/// `reorder_grace`, not at `compare_timeout`.
pub fn udp_single_reply_differs() -> Pair {
    let mut s = udp_stream(1, true);
    s[0].payload[20] ^= 1;
    raw_pair("udp-single-reply-differs", built(udp_stream(1, false)), built(s), vec!["datagram-mismatch"])
}

/// The primary answers a client's SYN with a SYN-ACK, the secondary resets it (its service
/// is down): a miscompare at once, not at `compare_timeout`.
pub fn rst_against_syn_ack() -> Pair {
    let (p, s) = (Server::primary(), Server::secondary());
    let rst = TcpFrame { seq: 0, ack: s.client_next, flags: flags::RST | flags::ACK, ..s.template.clone() };
    pair("rst-against-syn-ack", vec![p.syn_ack()], vec![rst], vec!["tcp-rst-mismatch"])
}

/// A segment of `srv`'s stream as IPv4 fragments cut at `cuts` (IP payload offsets after the
/// TCP header), its header carrying this guest's `tsval`.
fn fragmented(srv: &Server, off: usize, payload: &[u8], tsval: u32, ip_id: u32, cuts: &[usize]) -> Vec<Vec<u8>> {
    let t = TcpFrame { options: timestamp_option(tsval, 1), ..srv.data(off, payload) };
    let (src, dst) = (std::net::IpAddr::V4(t.src), std::net::IpAddr::V4(t.dst));
    IpFrame { ip_id, ..t.to_ip(src, dst, &[]) }.fragments(cuts)
}

/// A 2,000-byte response whose middle segment (1,600 bytes) left each guest as IPv4 fragments
/// (a guest whose path MTU is below its segment, or a tunnel): split in two on the primary,
/// in three elsewhere on the secondary, with each guest's own TSval. `flip` changes one
/// byte in the secondary's last fragment.
fn tcp_fragmented_pair(name: &'static str, flip: bool, expect: Vec<&'static str>) -> Pair {
    let (p, s) = (Server::primary(), Server::secondary());
    let body: Vec<u8> = (0..2000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut s_body = body.clone();
    if flip {
        s_body[1700] ^= 0x20;
    }
    let frames = |srv: &Server, body: &[u8], tsval: u32, ip_id: u32, cuts: &[usize]| {
        let mut v = vec![srv.syn_ack().build(), srv.data(0, &body[..200]).build()];
        v.extend(fragmented(srv, 200, &body[200..1800], tsval, ip_id, cuts));
        v.push(srv.data(1800, &body[1800..]).build());
        v.push(srv.fin(body.len()).build());
        v
    };
    let primary = frames(&p, &body, 100, 0x1111, &[1000]);
    let secondary = frames(&s, &s_body, 900_000, 0x2222, &[504, 1104]);
    Pair {
        name,
        primary: raw(primary, primary_at),
        secondary: raw(secondary, secondary_at),
        expect_all_matched: expect.is_empty(),
        expect_flush: !expect.is_empty(),
        expect_checkpoints: expect,
    }
}

/// A TCP segment that arrives as IPv4 fragments on both sides, fragmented differently: a
/// segment of its connection, compared by stream position (SPEC §4).
pub fn tcp_segment_fragmented() -> Pair {
    tcp_fragmented_pair("tcp-segment-fragmented", false, vec![])
}

/// The same with one byte changed inside the secondary's fragments: caught before any of the
/// primary's fragments leaves.
pub fn tcp_fragment_differs() -> Pair {
    tcp_fragmented_pair("tcp-fragment-differs", true, vec!["tcp-payload-mismatch"])
}

/// Link-local control traffic (neighbour solicitation, MLDv2 report behind a hop-by-hop
/// router alert, IGMPv3 report) sent by each guest on its own random timers, in the middle of
/// an identical TCP conversation: the non-IP policy passes the primary's through and drops
/// the secondary's; nothing is compared, no checkpoint (SPEC §4).
pub fn link_local_at_different_moments() -> Pair {
    let (p, s) = (Server::primary(), Server::secondary());
    let (lsrc, lall) = ("fe80::5054:ff:fe00:2".parse().unwrap(), "ff02::1:ff00:2".parse().unwrap());
    let ns = IpFrame {
        src: lsrc,
        dst: lall,
        ttl: 255,
        proto: 58,
        payload: vec![135, 0, 0, 0, 0, 0, 0, 0],
        ..IpFrame::default()
    };
    let mut mld_payload = vec![58, 0, 5, 2, 0, 0, 1, 0, 143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0];
    mld_payload.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2]);
    let mld = IpFrame {
        src: lsrc,
        dst: "ff02::16".parse().unwrap(),
        ttl: 1,
        proto: 0,
        payload: mld_payload,
        ..IpFrame::default()
    };
    let igmp = IpFrame {
        dst: "224.0.0.22".parse().unwrap(),
        ttl: 1,
        proto: 2,
        payload: vec![0x22, 0, 0xf9, 0xfd, 0, 0, 0, 1, 4, 0, 0, 0, 239, 1, 1, 1],
        ..IpFrame::default()
    };
    let b = body();
    let conversation = |srv: &Server| -> Vec<Vec<u8>> {
        segments(srv, &b, &[20, 60]).into_iter().chain([srv.fin(b.len())]).map(|f| f.build()).collect()
    };
    let mut primary = vec![p.syn_ack().build(), ns.build()];
    primary.extend(conversation(&p));
    primary.insert(3, mld.build());
    let mut secondary = vec![s.syn_ack().build()];
    secondary.extend(conversation(&s));
    secondary.extend([igmp.build(), mld.build(), ns.build()]);
    raw_pair("link-local-at-different-moments", primary, secondary, vec![])
}

/// The secondary resets a connection the primary keeps (its service crashed): a lone RST is
/// never transmitted, so it is timed: `tcp-rst-mismatch` at `compare_timeout` even if the
/// primary sends nothing more (SPEC §5.1).
pub fn secondary_rst_alone() -> Pair {
    let (p, s) = (Server::primary(), Server::secondary());
    let rst = TcpFrame { flags: flags::RST | flags::ACK, payload: Vec::new(), ..s.data(5, &[]) };
    // Both primary frames matched before the lone RST's compare_timeout: nothing to flush.
    let pair = pair(
        "secondary-rst-alone",
        vec![p.syn_ack(), p.data(0, b"hello")],
        vec![s.syn_ack(), s.data(0, b"hello"), rst],
        vec!["tcp-rst-mismatch"],
    );
    Pair { expect_flush: false, ..pair }
}

/// Proxy mode (SPEC §3, §5.1): port reuse while the old connection never closed, the
/// secondary's new SYN-ACK first; each guest numbers its stream in its own space. Replay
/// with `Mode::Proxy` (not part of [`second_round_pairs`], which are compare-mode captures).
pub fn port_reuse_proxy_mode() -> Pair {
    let (p, s) = (Server::primary(), Server::secondary());
    // Proxy mode: the secondary's data is in its own space (nothing rewrote it).
    let own = |srv: &Server, f: TcpFrame| {
        let off = f.seq.wrapping_sub(Server::primary().isn);
        TcpFrame { seq: srv.isn.wrapping_add(off), ..f }
    };
    let again = |srv: &Server, isn: u32| Server { isn, client_next: 777_001, ..srv.clone() };
    let (p2, s2) = (again(&p, 2_000_000), again(&s, 4_000_000));
    let mut primary = Capture::default();
    let mut secondary = Capture::default();
    let old = [(p.syn_ack(), s.syn_ack()), (p.data(0, b"old"), own(&s, s.data(0, b"old")))];
    for (i, (a, b)) in old.into_iter().enumerate() {
        primary.push(primary_at(i), a.build());
        secondary.push(secondary_at(i), b.build());
    }
    // The client's new SYN meets the open connection: both guests send a challenge ACK.
    let challenge = |srv: &Server| TcpFrame { flags: flags::ACK, payload: Vec::new(), ..srv.data(3, &[]) };
    primary.push(primary_at(8), challenge(&p).build());
    secondary.push(secondary_at(8), own(&s, challenge(&s)).build());
    secondary.push(primary_at(10), s2.syn_ack().build());
    primary.push(primary_at(15), p2.syn_ack().build());
    let data = |srv: &Server| TcpFrame { seq: srv.isn.wrapping_add(1), ..srv.data(0, b"new incarnation") };
    primary.push(primary_at(16), data(&p2).build());
    secondary.push(secondary_at(16), data(&s2).build());
    Pair {
        name: "port-reuse-proxy-mode",
        primary,
        secondary,
        expect_checkpoints: vec![],
        expect_all_matched: true,
        expect_flush: false,
    }
}

/// A 50 datagrams/s UDP stream (guest port 53 → client 40000) whose secondary runs 30 ms
/// behind the primary, while another flow (port 54) diverges at 100 ms: the checkpoint's flush
/// releases the stream's held datagrams, and the secondary's copies of them, sent before the
/// checkpoint but arriving after it, are absorbed — the stream keeps matching and asks for no
/// checkpoint of its own (SPEC §5.2, §6). One request: the other flow's `datagram-mismatch`.
pub fn udp_lagging_secondary_across_a_checkpoint() -> Pair {
    let (mut primary, mut secondary) = (Capture::default(), Capture::default());
    for i in 0..20usize {
        let at = T0 + Duration::from_millis(20 * i as u64);
        primary.push(at, udp_msg(i, 100 + i as u32, 64).build());
        secondary.push(at + Duration::from_millis(30), udp_msg(i, 0x5000 + i as u32, 63).build());
    }
    let other = |data: &[u8], ttl: u8| IpFrame { ttl, ..IpFrame::udp(54, 40001, data) }.build();
    primary.push(T0 + Duration::from_millis(100), other(b"the primary's answer", 64));
    secondary.push(T0 + Duration::from_millis(101), other(b"the secondary's one!", 63));
    primary.frames.sort_by_key(|f| f.ts);
    secondary.frames.sort_by_key(|f| f.ts);
    Pair {
        name: "udp-lagging-secondary-across-a-checkpoint",
        primary,
        secondary,
        expect_checkpoints: vec!["datagram-mismatch"],
        expect_all_matched: false,
        expect_flush: true,
    }
}

/// What real guests do that the first comparator round got wrong (SPEC §4–§6): keepalives
/// after idle, port reuse seen first on the secondary, UDP checksum 0, one differing reply,
/// a RST against a SYN-ACK or alone, TCP segments as IP fragments, link-local reports, a
/// secondary lagging across a checkpoint.
pub fn second_round_pairs() -> Vec<Pair> {
    vec![
        keepalive_after_idle(),
        port_reuse_secondary_first(),
        udp_checksum_zero(),
        udp_single_reply_differs(),
        rst_against_syn_ack(),
        secondary_rst_alone(),
        tcp_segment_fragmented(),
        tcp_fragment_differs(),
        link_local_at_different_moments(),
        udp_lagging_secondary_across_a_checkpoint(),
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
