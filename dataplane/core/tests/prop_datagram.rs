//! Property tests of SPEC §4/§5.2: a datagram fragmented differently (and reordered) on the
//! two sides never miscompares; one changed byte is always caught and its frames are never
//! released by `match`. Plus a smoke fuzz over fragments and datagrams: no panic, the
//! accounting invariant after every call, bounded memory.

mod common;

use colo_core::fixtures::IpFrame;
use colo_core::{Config, NonIpPolicy, Shard, Side, Timestamp, Via};
use common::{cases, drain, feed, Indexed, Log};
use proptest::prelude::*;

fn datagram(data: &[u8], v6: bool) -> IpFrame {
    let d = IpFrame { ip_id: 0x42, ..IpFrame::udp(53, 40000, data) };
    if v6 {
        d.v6()
    } else {
        d
    }
}

/// Fragments of `d` cut at `cuts`, in an order rotated by `rot` (empty cuts: unfragmented).
fn side_frames(d: &IpFrame, cuts: &[usize], rot: usize) -> Vec<Vec<u8>> {
    if cuts.is_empty() {
        return vec![d.build()];
    }
    let mut v = d.fragments(cuts);
    let n = v.len();
    v.rotate_left(rot % n);
    v
}

fn run(pf: Vec<Vec<u8>>, sf: Vec<Vec<u8>>, order: &[bool]) -> (Shard<Indexed>, Log) {
    let mut shard = Shard::new(Config::default());
    let mut log = Log::default();
    let mut pi = pf.into_iter().enumerate().peekable();
    let mut si = sf.into_iter().enumerate().peekable();
    let mut order = order.iter().copied().cycle();
    let mut t = 0;
    loop {
        let primary = match (pi.peek().is_some(), si.peek().is_some()) {
            (false, false) => break,
            (a, b) => a && (!b || order.next().unwrap_or(true)),
        };
        t += 1000;
        let (side, next) = if primary { (Side::Primary, pi.next()) } else { (Side::Secondary, si.next()) };
        if let Some((index, data)) = next {
            feed(&mut shard, &mut log, Indexed { side, index, data }, Timestamp::from_nanos(t));
        }
    }
    (shard, log)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn equal_datagrams_never_miscompare(
        data in proptest::collection::vec(any::<u8>(), 1..3000),
        p_cuts in proptest::collection::vec(any::<usize>(), 0..6),
        s_cuts in proptest::collection::vec(any::<usize>(), 0..6),
        rots in (any::<usize>(), any::<usize>()),
        order in proptest::collection::vec(any::<bool>(), 1..16),
        v6 in any::<bool>(),
    ) {
        let d = datagram(&data, v6);
        let pf = side_frames(&d, &p_cuts, rots.0);
        let n = pf.len();
        let sf = side_frames(&IpFrame { ip_id: 0x77, ..d.clone() }, &s_cuts, rots.1);
        let (shard, log) = run(pf, sf, &order);
        prop_assert!(log.requests.is_empty(), "{:?}", log.requests);
        prop_assert_eq!(log.released.iter().map(|r| r.0).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
        prop_assert!(log.released.iter().all(|r| r.1 == Via::Match));
        prop_assert_eq!(shard.counters().held_primary_frames + shard.counters().held_secondary_frames, 0);
    }

    #[test]
    fn a_changed_byte_is_never_released_by_match(
        data in proptest::collection::vec(any::<u8>(), 1..3000),
        p_cuts in proptest::collection::vec(any::<usize>(), 0..6),
        s_cuts in proptest::collection::vec(any::<usize>(), 0..6),
        rots in (any::<usize>(), any::<usize>()),
        order in proptest::collection::vec(any::<bool>(), 1..16),
        at in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let d = datagram(&data, false);
        let mut changed = IpFrame { ip_id: 0x77, ..d.clone() };
        // Any byte but the UDP checksum (bytes 6..8, not compared: SPEC §5.2).
        let mut k = at % changed.payload.len();
        if (6..8).contains(&k) {
            k = 8 + at % data.len();
        }
        changed.payload[k] ^= flip;
        let (mut shard, mut log) = run(side_frames(&d, &p_cuts, rots.0), side_frames(&changed, &s_cuts, rots.1), &order);
        prop_assert!(log.released.iter().all(|r| r.1 != Via::Match), "{:?}", log.released);
        shard.handle_timeout(Timestamp::from_millis(10_000));
        drain(&mut shard, &mut log);
        prop_assert!(!log.requests.is_empty());
        shard.checkpoint_done(Timestamp::from_millis(10_001));
        drain(&mut shard, &mut log);
        prop_assert_eq!(shard.counters().held_primary_frames, 0);
    }

    #[test]
    fn fragment_and_datagram_soup_never_breaks_the_shard(
        steps in proptest::collection::vec(
            (0u8..6, any::<bool>(), 0u32..6, 0usize..200, 0usize..120, any::<bool>(), any::<u8>()),
            1..150,
        ),
        compare_non_ip in any::<bool>(),
    ) {
        let cfg = Config {
            max_queue_size: 8,
            held_frames_budget: 48,
            max_flows: 4,
            max_reassembly_datagrams: 4,
            max_reassembly_bytes: 4096,
            max_fragments_per_datagram: 6,
            datagram_window: 2,
            non_ip_policy: if compare_non_ip { NonIpPolicy::Compare } else { NonIpPolicy::Passthrough },
            ..Config::default().with_compare_timeout(core::time::Duration::from_millis(5))
        };
        let mut shard: Shard<Indexed> = Shard::new(cfg);
        let mut log = Log::default();
        let mut now = 0u64;
        for (index, (op, primary, id, off, len, more, byte)) in steps.into_iter().enumerate() {
            let side = if primary { Side::Primary } else { Side::Secondary };
            let d = IpFrame { ip_id: id, ..IpFrame::udp(53, 40000 + u16::from(op), &[byte; 100]) };
            let data = match op {
                0 | 1 => d.fragment_with(off & !7, &vec![byte; len], more),
                2 => d.fragment(off, len),
                3 => d.build(),
                4 => {
                    let mut f = d.build();
                    f.truncate(len);
                    f
                }
                _ => {
                    now += (off as u64) * 100_000;
                    if more {
                        shard.handle_timeout(Timestamp::from_nanos(now));
                    } else {
                        shard.checkpoint_done(Timestamp::from_nanos(now));
                    }
                    drain(&mut shard, &mut log);
                    continue;
                }
            };
            feed(&mut shard, &mut log, Indexed { side, index, data }, Timestamp::from_nanos(now));
            let c = shard.counters();
            // The shard's memory budget (48) bounds queues and the overflow FIFO; the primary's
            // partial datagrams (4 of at most 6 fragments) are bounded on their own.
            prop_assert!(c.held_primary_frames <= 48 + 4 * 6, "{}", c.held_primary_frames);
            prop_assert!(c.held_secondary_bytes <= 4096 + 4 * 8 * 200, "{}", c.held_secondary_bytes);
            prop_assert!(shard.timer_entries() <= 4096);
        }
        shard.checkpoint_done(Timestamp::from_nanos(now + 1));
        drain(&mut shard, &mut log);
        prop_assert_eq!(shard.counters().held_primary_frames, 0);
        prop_assert_eq!(shard.counters().held_secondary_frames, 0);
    }
}
