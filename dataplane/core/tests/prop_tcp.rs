//! Property tests of SPEC §5.1: segmentation, arrival order and duplication never matter for
//! equal streams; a single changed byte is always caught and never released by `match`.

mod common;

use colo_core::fixtures::Conn;
use colo_core::wire::{self, Class};
use colo_core::{CheckpointReason, Config, Shard, Side, Timestamp, Via};
use common::{cases, drain, feed, Indexed, Log};
use proptest::prelude::*;

/// A stream cut into segments: (stream offset, length).
fn cut(len: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % len.max(1)).filter(|c| *c > 0).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
}

/// Applies a bounded reorder (swap neighbours within `window`) and duplications.
fn shuffle<T: Clone>(items: Vec<T>, swaps: &[(usize, usize)], dups: &[usize]) -> Vec<T> {
    let mut v = items;
    for &(a, d) in swaps {
        if v.len() < 2 {
            break;
        }
        let i = a % v.len();
        let j = (i + 1 + d % 4).min(v.len() - 1);
        v.swap(i, j);
    }
    for &d in dups {
        if !v.is_empty() {
            let i = d % v.len();
            let item = v[i].clone();
            v.insert((i + 1 + d % 3).min(v.len()), item);
        }
    }
    v
}

#[derive(Debug, Clone)]
struct Scenario {
    data: Vec<u8>,
    p_cuts: Vec<usize>,
    s_cuts: Vec<usize>,
    p_swaps: Vec<(usize, usize)>,
    s_swaps: Vec<(usize, usize)>,
    p_dups: Vec<usize>,
    s_dups: Vec<usize>,
    /// Interleaving: true = take the next primary frame.
    order: Vec<bool>,
    fin: bool,
    /// The primary's ISN: any value, often near 2^32 so streams cross the wrap.
    isn: u32,
    /// Zero-length probes both guests send (keepalives, window probes): (where in the frame
    /// list, at which stream position).
    probes: Vec<(usize, usize)>,
    /// Steps after which both guests pause for 3 ms and the shard's deadlines run: a stall
    /// mid-segment releases the verified part of the primary's segment.
    stalls: Vec<usize>,
}

impl Scenario {
    /// The same stream sent alike by both guests (cut, reordered and repeated the same way),
    /// their frames in pairs, either guest's first: a segment then meets its copy held alone,
    /// and the shard compares it on arrival.
    fn in_lock_step(mut self) -> Scenario {
        self.s_cuts = self.p_cuts.clone();
        self.s_swaps = self.p_swaps.clone();
        self.s_dups = self.p_dups.clone();
        self.order = self.order.iter().flat_map(|&primary_first| [primary_first, !primary_first]).collect();
        self
    }
}

/// Half the scenarios in lock step ([`Scenario::in_lock_step`]), half with each guest's
/// stream cut and ordered independently.
fn scenario() -> impl Strategy<Value = Scenario> {
    (independent_scenario(), any::<bool>()).prop_map(|(sc, lock_step)| if lock_step { sc.in_lock_step() } else { sc })
}

fn independent_scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec(any::<u8>(), 1..1500),
        proptest::collection::vec(any::<usize>(), 0..12),
        proptest::collection::vec(any::<usize>(), 0..12),
        proptest::collection::vec((any::<usize>(), any::<usize>()), 0..6),
        proptest::collection::vec((any::<usize>(), any::<usize>()), 0..6),
        proptest::collection::vec(any::<usize>(), 0..3),
        proptest::collection::vec(any::<usize>(), 0..3),
        proptest::collection::vec(any::<bool>(), 0..64),
        (any::<bool>(), prop_oneof![any::<u32>(), (u32::MAX - 2000)..=u32::MAX]),
        (
            proptest::collection::vec((any::<usize>(), any::<usize>()), 0..4),
            proptest::collection::vec(0usize..40, 0..6),
        ),
    )
        .prop_map(
            |(data, p_cuts, s_cuts, p_swaps, s_swaps, p_dups, s_dups, order, (fin, isn), (probes, stalls))| Scenario {
                data,
                p_cuts,
                s_cuts,
                p_swaps,
                s_swaps,
                p_dups,
                s_dups,
                order,
                fin,
                isn,
                probes,
                stalls,
            },
        )
}

/// Primary frames, secondary frames, and the primary's data segments (offset, len).
type Frames = (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<(usize, usize)>);

/// Builds both sides' frame lists. The SYN-ACK comes first on each side (a guest never
/// sends data before it); data segments follow in shuffled order; FIN last.
fn frames(sc: &Scenario, secondary_data: &[u8]) -> Frames {
    let p = Conn { isn: sc.isn, ..Conn::default() };
    let s_syn = Conn { isn: 0xdead_beef, ..Conn::default() };
    let build = |conn: &Conn, bytes: &[u8], segs: Vec<(usize, usize)>| -> Vec<Vec<u8>> {
        segs.iter().map(|&(o, l)| conn.data(o as u32, &bytes[o..o + l])).collect()
    };
    let p_segs = shuffle(cut(sc.data.len(), &sc.p_cuts), &sc.p_swaps, &sc.p_dups);
    let s_segs = shuffle(cut(sc.data.len(), &sc.s_cuts), &sc.s_swaps, &sc.s_dups);
    let mut pf = vec![p.syn_ack()];
    pf.extend(build(&p, &sc.data, p_segs.clone()));
    // Compare mode: secondary data is already in the primary's sequence space.
    let mut sf = vec![s_syn.syn_ack()];
    sf.extend(build(&p, secondary_data, s_segs));
    if sc.fin {
        pf.push(p.fin(sc.data.len() as u32));
        sf.push(p.fin(sc.data.len() as u32));
    }
    (pf, sf, p_segs)
}

fn run(sc: &Scenario, pf: Vec<Vec<u8>>, sf: Vec<Vec<u8>>) -> (Shard<Indexed>, Log, u64) {
    let mut shard = Shard::new(Config::default());
    let mut log = Log::default();
    let mut pi = pf.into_iter().enumerate().peekable();
    let mut si = sf.into_iter().enumerate().peekable();
    let mut t = 0u64;
    let mut order = sc.order.iter().copied().cycle();
    let mut step = 0;
    loop {
        let take_primary = match (pi.peek().is_some(), si.peek().is_some()) {
            (false, false) => break,
            (true, false) => true,
            (false, true) => false,
            (true, true) => sc.order.is_empty() || order.next().unwrap_or(true),
        };
        t += 1_000;
        let (side, next) = if take_primary { (Side::Primary, pi.next()) } else { (Side::Secondary, si.next()) };
        if let Some((index, data)) = next {
            feed(&mut shard, &mut log, Indexed { side, index, data }, Timestamp::from_nanos(t));
        }
        if sc.stalls.contains(&step) {
            t += 3_000_000;
            shard.handle_timeout(Timestamp::from_nanos(t));
            drain(&mut shard, &mut log);
        }
        step += 1;
    }
    (shard, log, t)
}

/// Stream positions (offsets from the first byte after the SYN) and bytes of every payload
/// that reached the wire, frames and parts alike.
fn wire_bytes(log: &Log, isn: u32) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    for f in &log.wire {
        let Class::Tcp(_, seg) = wire::parse(f) else { panic!("a released frame that is not TCP") };
        let at = seg.seq.wrapping_sub(isn.wrapping_add(1)) as usize;
        let payload = wire::payload(f, &seg).expect("its payload");
        out.extend(payload.iter().enumerate().map(|(i, &b)| (at + i, b)));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn equal_streams_release_everything_in_order(sc in scenario()) {
        let (mut pf, mut sf, _) = frames(&sc, &sc.data);
        // Both guests also send zero-length probes at stream positions (keepalives at
        // snd_nxt − 1, window probes): pure ACKs that must never break the comparison.
        let conn = Conn { isn: sc.isn, ..Conn::default() };
        for &(at, pos) in &sc.probes {
            let probe = conn.pure_ack((pos % sc.data.len()) as u32, conn.ack);
            pf.insert(1 + at % pf.len(), probe.clone());
            sf.insert(1 + (at / 7) % sf.len(), probe);
        }
        let n = pf.len();
        let (shard, log, _) = run(&sc, pf, sf);
        prop_assert!(log.requests.is_empty(), "requests: {:?}", log.requests);
        let order: Vec<usize> = log.released.iter().map(|r| r.0).collect();
        prop_assert_eq!(order, (0..n).collect::<Vec<_>>());
        prop_assert!(log
            .released
            .iter()
            .all(|(_, via)| matches!(via, Via::Match | Via::Retransmission)));
        prop_assert_eq!(shard.counters().held_primary_frames, 0);
        prop_assert_eq!(shard.counters().held_secondary_frames, 0);
        // On the wire (parts included): the stream's bytes where they belong, all of them.
        let mut seen = vec![false; sc.data.len()];
        for (at, b) in wire_bytes(&log, sc.isn) {
            prop_assert_eq!(sc.data.get(at), Some(&b), "byte at stream +{}", at);
            seen[at] = true;
        }
        prop_assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn one_changed_byte_is_caught_and_only_flushed(sc in scenario(), at in any::<usize>(), flip in 1u8..=255) {
        let k = at % sc.data.len();
        let mut changed = sc.data.clone();
        changed[k] ^= flip;
        let (pf, sf, p_segs) = frames(&sc, &changed);
        let n = pf.len();
        let (mut shard, mut log, t) = run(&sc, pf, sf);
        prop_assert!(
            log.requests.iter().any(|r| r.reason == CheckpointReason::TcpPayloadMismatch),
            "no mismatch request: {:?}", log.requests
        );
        // Primary frame i (i >= 1) carries segment p_segs[i - 1].
        let holds_k = |i: usize| {
            i >= 1 && p_segs.get(i - 1).is_some_and(|&(o, l)| o <= k && k < o + l)
        };
        for (i, via) in &log.released {
            prop_assert!(!holds_k(*i), "frame {i} holding the changed byte released via {via:?}");
        }
        // Nor did a part of one carry it: what left before the checkpoint stops short of it.
        prop_assert!(wire_bytes(&log, sc.isn).iter().all(|&(at, _)| at != k), "{} parts", log.parts);
        shard.checkpoint_done(Timestamp::from_nanos(t + 1));
        drain(&mut shard, &mut log);
        let mut order: Vec<usize> = log.released.iter().map(|r| r.0).collect();
        let flushed: Vec<usize> = log
            .released
            .iter()
            .filter(|r| r.1 == Via::Flush)
            .map(|r| r.0)
            .collect();
        for i in (1..n).filter(|i| holds_k(*i)) {
            prop_assert!(flushed.contains(&i));
        }
        order.sort_unstable();
        prop_assert_eq!(order, (0..n).collect::<Vec<_>>());
    }
}
