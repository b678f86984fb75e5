//! Property tests of SPEC §4–§5.1 with what real guests do around equal streams, interleaved at
//! random: segments that arrive as IP fragments (cut anywhere after the TCP header, fragments
//! in any order), link-local control traffic with randomised timers (neighbour solicitations,
//! MLDv2 reports behind a hop-by-hop header, IGMPv3 reports) sent by each guest at its own
//! moments, headers that differ between the guests (timestamps, window), streams that end with
//! a FIN, a RST or not at all, and port reuse: the client reconnects from the same port (a
//! challenge ACK, then a SYN-ACK with a new ISN, whichever guest's comes first).
//!
//! Whatever the interleaving: no checkpoint request, every primary TCP frame released in the
//! order the primary sent it (by `match`), link-local frames passed through at once, nothing
//! left held.

mod common;

use std::net::IpAddr;

use colo_core::fixtures::{timestamp_option, Conn, IpFrame, TcpFrame};
use colo_core::{CheckpointReason, Config, Shard, Side, Timestamp, Via};
use common::{cases, drain, feed, Indexed, Log};
use proptest::prelude::*;

/// How one guest sends one phase (one incarnation) of the connection.
#[derive(Debug, Clone)]
struct Plan {
    /// Segment boundaries (stream offsets).
    cuts: Vec<usize>,
    /// Neighbour swaps of whole segments (arrival order).
    swaps: Vec<(usize, usize)>,
    /// Per segment: fragment it if `x % 3 == 0`, cut at `x`, fragments rotated by `x`.
    frag: Vec<usize>,
    /// Link-local frames: (where in the frame list, which kind).
    link_local: Vec<(usize, u8)>,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        proptest::collection::vec(any::<usize>(), 0..8),
        proptest::collection::vec((any::<usize>(), any::<usize>()), 0..4),
        proptest::collection::vec(any::<usize>(), 0..8),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
    )
        .prop_map(|(cuts, swaps, frag, link_local)| Plan { cuts, swaps, frag, link_local })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    Fin,
    Rst,
}

#[derive(Debug, Clone)]
struct Scenario {
    data: Vec<u8>,
    end: End,
    p: Plan,
    s: Plan,
    /// Port reuse: a second incarnation with this data, primary ISN, and whether both guests
    /// answer the client's new SYN with a challenge ACK first.
    reuse: Option<(Vec<u8>, u32, bool)>,
    p2: Plan,
    s2: Plan,
    isn: u32,
    /// Interleaving: true = take the next primary frame.
    order: Vec<bool>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec(any::<u8>(), 1..3000),
        prop_oneof![Just(End::Open), Just(End::Fin), Just(End::Rst)],
        plan(),
        plan(),
        proptest::option::of((proptest::collection::vec(any::<u8>(), 1..1500), any::<u32>(), any::<bool>())),
        plan(),
        plan(),
        any::<u32>(),
        proptest::collection::vec(any::<bool>(), 0..64),
    )
        .prop_map(|(data, end, p, s, reuse, p2, s2, isn, order)| Scenario {
            data,
            end,
            p,
            s,
            reuse,
            p2,
            s2,
            isn,
            order,
        })
}

fn cut(len: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % len.max(1)).filter(|c| *c > 0).collect();
    points.extend([0, len]);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
}

/// A link-local frame a guest's kernel sends on its own timer (SPEC §4: non-IP policy).
fn link_local(kind: u8, seed: usize) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = ("fe80::5054:ff:fe00:2".parse().unwrap(), "ff02::1:ff00:2".parse().unwrap());
    match kind % 3 {
        // Neighbour solicitation (hop limit 255).
        0 => IpFrame { src, dst, ttl: 255, proto: 58, payload: vec![135, 0, 0, 0, 0, 0, 0, 0], ..IpFrame::default() }
            .build(),
        // MLDv2 report behind a hop-by-hop header with a router alert, as Linux sends it.
        1 => {
            let mut payload = vec![58, 0, 5, 2, 0, 0, 1, 0];
            payload.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0]);
            payload.extend_from_slice(&"ff02::1:ff00:2".parse::<std::net::Ipv6Addr>().unwrap().octets());
            IpFrame { src, dst: "ff02::16".parse().unwrap(), ttl: 1, proto: 0, payload, ..IpFrame::default() }.build()
        }
        // IGMPv3 report (the guests' timers differ, so does the checksum's position in time).
        _ => IpFrame {
            dst: "224.0.0.22".parse().unwrap(),
            ttl: 1,
            proto: 2,
            ip_id: seed as u32,
            payload: vec![0x22, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0, 239, 1, 1, 1],
            ..IpFrame::default()
        }
        .build(),
    }
}

/// What a primary frame is, for the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A TCP frame; with the stream bytes `[start, end)` of phase one it carries, if any.
    Tcp(Option<(usize, usize)>),
    LinkLocal,
}

impl Kind {
    fn is_tcp(self) -> bool {
        matches!(self, Kind::Tcp(_))
    }
    fn carries(self, k: usize) -> bool {
        matches!(self, Kind::Tcp(Some((a, b))) if a <= k && k < b)
    }
}

/// One guest's frames for one incarnation: `seq_conn` places the data in sequence space,
/// `syn_conn` gives its SYN-ACK (its own ISN); headers carry this guest's TSval and window.
fn phase(data: &[u8], plan: &Plan, seq_conn: &Conn, syn_conn: &Conn, tsval: u32, ip_id: &mut u32, end: End) -> Frames {
    let mut segs = cut(data.len(), &plan.cuts);
    for &(a, d) in &plan.swaps {
        if segs.len() > 1 {
            let i = a % segs.len();
            let j = (i + 1 + d % 3).min(segs.len() - 1);
            segs.swap(i, j);
        }
    }
    let with_ts = |t: TcpFrame, k: u32| TcpFrame {
        options: timestamp_option(tsval + k, 1),
        window: 500 + (tsval % 7) as u16,
        ..t
    };
    let mut frames = vec![(
        with_ts(TcpFrame { seq: syn_conn.isn, ack: syn_conn.ack, flags: 0x12, ..syn_conn.template.clone() }, 0).build(),
        Kind::Tcp(None),
    )];
    for (n, &(o, l)) in segs.iter().enumerate() {
        let t = with_ts(seq_conn.data_segment(o as u32, &data[o..o + l], seq_conn.ack), n as u32);
        let x = plan.frag.get(n).copied().unwrap_or(1);
        let ip_len = 32 + l; // TCP header with the timestamp option, then the payload
        if x % 3 != 0 || ip_len < 48 {
            frames.push((t.build(), Kind::Tcp(Some((o, o + l)))));
            continue;
        }
        // Cut after the TCP header (real stacks never split it), on an 8-byte boundary.
        let at = 32 + (x / 3) % (ip_len - 32);
        *ip_id += 1;
        let ip = IpFrame { ip_id: *ip_id, ..t.to_ip(IpAddr::V4(t.src), IpAddr::V4(t.dst), &[]) };
        let cuts = [at, 32 + (x / 5) % (ip_len - 32)];
        // Each fragment's share of the stream: its IP payload bytes past the TCP header.
        let mut frags: Vec<(Vec<u8>, Kind)> = ip
            .fragment_ranges(&cuts)
            .into_iter()
            .map(|(fo, fl)| {
                let (a, b) = (fo.max(32) - 32, (fo + fl).max(32) - 32);
                (ip.fragment(fo, fl), Kind::Tcp((a < b).then_some((o + a, o + b))))
            })
            .collect();
        let k = frags.len();
        frags.rotate_left((x / 7) % k);
        frames.extend(frags);
    }
    let len = data.len() as u32;
    match end {
        End::Open => {}
        End::Fin => frames.push((
            with_ts(
                TcpFrame { flags: 0x11, seq: seq_conn.seq(len), ack: seq_conn.ack, ..seq_conn.template.clone() },
                99,
            )
            .build(),
            Kind::Tcp(None),
        )),
        End::Rst => frames.push((seq_conn.rst(len), Kind::Tcp(None))),
    }
    for &(at, kind) in &plan.link_local {
        // Never before the SYN-ACK: that is the connection's first frame either way.
        let i = 1 + at % frames.len();
        frames.insert(i, (link_local(kind, at), Kind::LinkLocal));
    }
    frames
}

/// Both guests' frames: phase one, then (port reuse) phase two.
/// One guest's frames, each with what it is.
type Frames = Vec<(Vec<u8>, Kind)>;

/// `s_data` is what the secondary sends in phase one (the primary sends `sc.data`).
fn build(sc: &Scenario, s_data: &[u8]) -> (Frames, Frames, [usize; 2]) {
    let p = Conn { isn: sc.isn, ..Conn::default() };
    // Compare mode: the secondary's SYN-ACK has its own ISN; its other segments are already
    // in the primary's sequence space.
    let s_syn = Conn { isn: sc.isn ^ 0x5a5a_5a5a, ..Conn::default() };
    let (mut pid, mut sid) = (0, 1000);
    let mut pf = phase(&sc.data, &sc.p, &p, &p, 10, &mut pid, sc.end);
    let mut sf = phase(s_data, &sc.s, &p, &s_syn, 70_000, &mut sid, sc.end);
    let split = [pf.len(), sf.len()];
    if let Some((data, isn2, challenge)) = &sc.reuse {
        if *challenge && sc.end == End::Open {
            // The client's new SYN hit the old, never-closed connection: both guests answer
            // with a challenge ACK at their snd_nxt (RFC 5961), the client resets it.
            let ack = p.pure_ack(sc.data.len() as u32, p.ack);
            pf.push((ack.clone(), Kind::Tcp(None)));
            sf.push((ack, Kind::Tcp(None)));
        }
        let p2 = Conn { isn: *isn2, ack: p.ack.wrapping_add(7777), ..Conn::default() };
        let s2 = Conn { isn: isn2 ^ 0x0f0f_0f0f, ..p2.clone() };
        // Stream ranges are phase one's: phase two's frames carry none of those bytes.
        let two = phase(data, &sc.p2, &p2, &p2, 20, &mut pid, End::Open);
        pf.extend(two.into_iter().map(|(f, k)| (f, if k.is_tcp() { Kind::Tcp(None) } else { k })));
        sf.extend(phase(data, &sc.s2, &p2, &s2, 90_000, &mut sid, End::Open));
    }
    (pf, sf, split)
}

fn run(pf: &[(Vec<u8>, Kind)], sf: &[(Vec<u8>, Kind)], order: &[bool], split: [usize; 2]) -> (Shard<Indexed>, Log) {
    let mut shard = Shard::new(Config::default());
    let mut log = Log::default();
    let mut t = 0u64;
    let mut order = order.iter().copied().cycle();
    // Phase two starts once each guest sent phase one (the client rebooted in between);
    // the secondary's phase-two frames may come before the primary's.
    let phases = [(0..split[0], 0..split[1]), (split[0]..pf.len(), split[1]..sf.len())];
    for (mut pr, mut sr) in phases {
        loop {
            let primary = match (!pr.is_empty(), !sr.is_empty()) {
                (false, false) => break,
                (a, b) => a && (!b || order.next().unwrap_or(true)),
            };
            t += 1_000;
            let (side, index, frames) =
                if primary { (Side::Primary, pr.next(), pf) } else { (Side::Secondary, sr.next(), sf) };
            if let Some(index) = index {
                let data = frames[index].0.clone();
                feed(&mut shard, &mut log, Indexed { side, index, data }, Timestamp::from_nanos(t));
            }
        }
    }
    (shard, log)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn real_guest_events_around_equal_streams_never_miscompare(sc in scenario()) {
        let (pf, sf, split) = build(&sc, &sc.data);
        let (shard, log) = run(&pf, &sf, &sc.order, split);
        prop_assert!(log.requests.is_empty(), "requests: {:?}", log.requests);
        let tcp: Vec<usize> = log.released.iter().filter(|(i, _)| pf[*i].1.is_tcp()).map(|r| r.0).collect();
        let expected: Vec<usize> = (0..pf.len()).filter(|&i| pf[i].1.is_tcp()).collect();
        prop_assert_eq!(tcp, expected, "TCP frames leave in the primary's order");
        for (i, via) in &log.released {
            let want_passthrough = pf[*i].1 == Kind::LinkLocal;
            prop_assert_eq!(*via == Via::Passthrough, want_passthrough, "frame {} via {:?}", i, via);
            prop_assert!(matches!(via, Via::Match | Via::Retransmission | Via::Passthrough));
        }
        let c = shard.counters();
        prop_assert_eq!((c.held_primary_frames, c.held_secondary_frames), (0, 0));
        prop_assert_eq!(c.reassembly_partials, 0);
    }

    #[test]
    fn one_changed_byte_among_real_guest_events_is_caught_and_only_flushed(
        sc in scenario(),
        at in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let k = at % sc.data.len();
        let mut changed = sc.data.clone();
        changed[k] ^= flip;
        let (pf, sf, split) = build(&sc, &changed);
        let (mut shard, mut log) = run(&pf, &sf, &sc.order, split);
        prop_assert!(
            log.requests.iter().any(|r| r.reason == CheckpointReason::TcpPayloadMismatch),
            "no mismatch request: {:?}", log.requests
        );
        for (i, via) in &log.released {
            prop_assert!(!pf[*i].1.carries(k), "frame {} holding the changed byte left via {:?}", i, via);
        }
        // The checkpoint's flush lets every held primary frame go, in order, none lost.
        shard.checkpoint_done(Timestamp::from_nanos(u64::MAX / 2));
        drain(&mut shard, &mut log);
        let mut all: Vec<usize> = log.released.iter().map(|r| r.0).collect();
        all.sort_unstable();
        prop_assert_eq!(all, (0..pf.len()).collect::<Vec<_>>());
    }
}
