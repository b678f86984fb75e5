//! Property tests of SPEC §4/§5.2: a datagram fragmented differently (and reordered) on the
//! two sides never miscompares; one changed byte is always caught and its frames are never
//! released by `match`. A UDP stream with what real guests add (checksum 0 on either side,
//! link-local reports on each guest's own timers, a secondary lagging across a checkpoint)
//! never miscompares. Plus a smoke fuzz over fragments and datagrams: no panic, the
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

    #[test]
    fn udp_streams_with_real_guest_events_never_miscompare(
        n in 1usize..40,
        k in 0usize..40,
        lag in 0usize..=16,
        zero_checksum in proptest::collection::vec(any::<(bool, bool)>(), 40),
        p_link_local in proptest::collection::vec(any::<usize>(), 0..4),
        s_link_local in proptest::collection::vec(any::<usize>(), 0..4),
        order in proptest::collection::vec(any::<bool>(), 1..32),
    ) {
        // A request/answer stream (DNS-like) of `n` datagrams. Each guest's stack may send a
        // datagram with UDP checksum 0 or a computed one (SPEC §5.2); each sends IGMP reports
        // and neighbour solicitations on its own timers (SPEC §4); a checkpoint completes after
        // the primary's `k`th datagram while the secondary lags `lag` datagrams behind: those
        // arrive after the flush (SPEC §5.2) and must not shift the positions of the rest.
        let k = k.min(n);
        let datagram = |i: usize, zero: bool| {
            let mut d = IpFrame { ip_id: i as u32, ..IpFrame::udp(53, 40000, format!("answer {i} {}", "x".repeat(i)).as_bytes()) };
            if zero {
                d.payload[6] = 0;
                d.payload[7] = 0;
            }
            d.build()
        };
        let noise = |i: usize| {
            if i.is_multiple_of(2) {
                IpFrame { dst: "224.0.0.22".parse().unwrap(), ttl: 1, proto: 2, payload: vec![0x22, 0, 0, 0, 0, 0, 0, 1], ..IpFrame::default() }.build()
            } else {
                IpFrame { src: "fe80::2".parse().unwrap(), dst: "ff02::1:ff00:2".parse().unwrap(), ttl: 255, proto: 58, payload: vec![135, 0, 0, 0, 0, 0, 0, 0], ..IpFrame::default() }.build()
            }
        };
        let with_noise = |mut v: Vec<(Vec<u8>, bool)>, at: &[usize]| {
            for &a in at {
                let i = a % (v.len() + 1);
                v.insert(i, (noise(a), true));
            }
            v
        };
        let pf = with_noise((0..n).map(|i| (datagram(i, zero_checksum[i].0), false)).collect(), &p_link_local);
        let sf: Vec<Vec<u8>> = (0..n).map(|i| datagram(i, zero_checksum[i].1)).collect();
        let before = k.saturating_sub(lag);
        let s_noise: Vec<(Vec<u8>, bool)> = s_link_local.iter().map(|&a| (noise(a), true)).collect();
        let mut shard: Shard<Indexed> = Shard::new(Config::default());
        let mut log = Log::default();
        let mut t = 0u64;
        let mut step = |shard: &mut Shard<Indexed>, log: &mut Log, side: Side, index: usize, data: Vec<u8>| {
            t += 1_000;
            feed(shard, log, Indexed { side, index, data }, Timestamp::from_nanos(t));
            t
        };
        // Before the checkpoint: the primary's first k datagrams (and noise between them), the
        // secondary's first `before`.
        let p_cut = pf.iter().enumerate().filter(|(_, (_, noise))| !noise).nth(k).map_or(pf.len(), |(i, _)| i);
        let mut pi = 0;
        let mut si = 0;
        let mut ord = order.iter().copied().cycle();
        while pi < p_cut || si < before {
            if pi < p_cut && (si >= before || ord.next().unwrap_or(true)) {
                step(&mut shard, &mut log, Side::Primary, pi, pf[pi].0.clone());
                pi += 1;
            } else {
                step(&mut shard, &mut log, Side::Secondary, si, sf[si].clone());
                si += 1;
            }
        }
        let now = step(&mut shard, &mut log, Side::Secondary, 10_000, s_noise.first().map_or_else(|| noise(0), |x| x.0.clone()));
        shard.checkpoint_done(Timestamp::from_nanos(now));
        drain(&mut shard, &mut log);
        // After it: the secondary's lagging datagrams first, then both streams interleaved.
        while si < k {
            step(&mut shard, &mut log, Side::Secondary, si, sf[si].clone());
            si += 1;
        }
        let mut s_rest: Vec<(Vec<u8>, bool)> = sf[k..].iter().map(|d| (d.clone(), false)).collect();
        for (j, x) in s_noise.into_iter().enumerate().skip(1) {
            let at = s_link_local[j] % (s_rest.len() + 1);
            s_rest.insert(at, x);
        }
        let mut sj = 0;
        while pi < pf.len() || sj < s_rest.len() {
            if pi < pf.len() && (sj >= s_rest.len() || ord.next().unwrap_or(true)) {
                step(&mut shard, &mut log, Side::Primary, pi, pf[pi].0.clone());
                pi += 1;
            } else {
                step(&mut shard, &mut log, Side::Secondary, 20_000 + sj, s_rest[sj].0.clone());
                sj += 1;
            }
        }
        prop_assert!(log.requests.is_empty(), "{:?}", log.requests);
        let released: Vec<usize> = log.released.iter().map(|r| r.0).collect();
        let datagrams: Vec<usize> = released.iter().copied().filter(|&i| !pf[i].1).collect();
        prop_assert_eq!(datagrams, (0..pf.len()).filter(|&i| !pf[i].1).collect::<Vec<_>>());
        prop_assert_eq!(released.len(), pf.len(), "every primary frame left");
        for (i, via) in &log.released {
            prop_assert_eq!(*via == Via::Passthrough, pf[*i].1, "frame {} via {:?}", i, via);
        }
        let c = shard.counters();
        prop_assert_eq!(c.held_primary_frames + c.held_secondary_frames, 0);
    }
}
