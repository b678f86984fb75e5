//! "Smoke fuzz" (SPEC §11) run in the normal test suite: arbitrary and mutated frames, time
//! steps, timeouts and checkpoint completions fed to a small shard. Checks: no panic, the
//! accounting invariant after every call, and bounded memory (queues, flows).

mod common;

use colo_core::fixtures::{flags, TcpFrame};
use colo_core::{Config, Shard, Side, Timestamp};
use common::{cases, drain, feed, Indexed, Log};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Frame {
        primary: bool,
        bytes: Vec<u8>,
    },
    Tcp {
        primary: bool,
        flow: u8,
        seq: u16,
        ack: u8,
        flags: u8,
        payload: Vec<u8>,
        truncate: Option<usize>,
        flip: Option<(usize, u8)>,
    },
    /// A TCP segment sent as IPv4 fragments cut at `cut` (maybe inside the TCP header), in
    /// order or reversed, maybe with a fragment missing.
    TcpFragmented {
        primary: bool,
        flow: u8,
        seq: u16,
        flags: u8,
        payload: Vec<u8>,
        cut: usize,
        reverse: bool,
        skip: Option<usize>,
    },
    /// A client frame (proxy mode's observe + rewrite for the secondary).
    Client {
        flow: u8,
        ack: u8,
        flags: u8,
        window: u16,
        options: Vec<u8>,
    },
    Advance(u32),
    Timeout,
    CheckpointDone,
    StandaloneCompletion,
    Failover(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..96))
            .prop_map(|(primary, bytes)| Step::Frame { primary, bytes }),
        8 => (
            any::<bool>(),
            0u8..6,
            0u16..64,
            0u8..4,
            any::<u8>(),
            proptest::collection::vec(0u8..3, 0..24),
            proptest::option::weighted(0.1, 0usize..80),
            proptest::option::weighted(0.1, (0usize..80, any::<u8>())),
        )
            .prop_map(|(primary, flow, seq, ack, flags, payload, truncate, flip)| Step::Tcp {
                primary,
                flow,
                seq,
                ack,
                flags,
                payload,
                truncate,
                flip,
            }),
        2 => (
            any::<bool>(),
            0u8..6,
            0u16..64,
            any::<u8>(),
            proptest::collection::vec(0u8..3, 8..64),
            0usize..80,
            any::<bool>(),
            proptest::option::weighted(0.1, 0usize..3),
        )
            .prop_map(|(primary, flow, seq, flags, payload, cut, reverse, skip)| Step::TcpFragmented {
                primary,
                flow,
                seq,
                flags,
                payload,
                cut,
                reverse,
                skip,
            }),
        2 => (0u8..12, 0u8..4, any::<u8>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(flow, ack, flags, window, options)| Step::Client { flow, ack, flags, window, options }),
        2 => (0u32..2_000_000).prop_map(Step::Advance),
        1 => Just(Step::Timeout),
        1 => Just(Step::CheckpointDone),
        1 => Just(Step::StandaloneCompletion),
        // Rare: everything after a failover is forwarded, not compared.
        1 => (0u8..16).prop_map(|b| if b < 2 { Step::Failover(b == 0) } else { Step::Timeout }),
    ]
}

fn tcp_bytes(flow: u8, seq: u16, ack: u8, fl: u8, payload: Vec<u8>) -> Vec<u8> {
    TcpFrame {
        // Flows 6..12 are guest-opened-style: the guest port varies (port pairing).
        sport: 80 + u16::from(flow / 6) * u16::from(flow % 3),
        dport: 40000 + u16::from(flow % 6),
        seq: 1000u32.wrapping_add(u32::from(seq)),
        ack: 5000 + u32::from(ack),
        // Keep SYN rare-ish but possible; any flag combination is legal input.
        flags: fl & (flags::FIN | flags::SYN | flags::RST | flags::PSH | flags::ACK),
        payload,
        ..TcpFrame::default()
    }
    .build()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_frames_never_break_the_shard(steps in proptest::collection::vec(step(), 1..120), proxy in any::<bool>()) {
        let cfg = Config {
            max_queue_size: 8,
            held_frames_budget: 48,
            max_flows: 4,
            max_reassembly_datagrams: 4,
            max_fragments_per_datagram: 6,
            mode: if proxy { colo_core::Mode::Proxy } else { colo_core::Mode::Compare },
            ..Config::default().with_compare_timeout(core::time::Duration::from_millis(5))
        };
        let (max_flows, budget, maxq) = (cfg.max_flows, cfg.held_frames_budget, cfg.max_queue_size);
        let partial_frames = 2 * cfg.max_reassembly_datagrams * cfg.max_fragments_per_datagram;
        let mut shard: Shard<Indexed> = Shard::new(cfg);
        let mut log = Log::default();
        let mut now = 0u64;
        let mut windows_seen = false;
        for (index, s) in steps.into_iter().enumerate() {
            let t = Timestamp::from_nanos(now);
            match s {
                Step::Frame { primary, bytes } => {
                    let side = if primary { Side::Primary } else { Side::Secondary };
                    feed(&mut shard, &mut log, Indexed { side, index, data: bytes }, t);
                }
                Step::Tcp { primary, flow, seq, ack, flags, payload, truncate, flip } => {
                    let mut data = tcp_bytes(flow, seq, ack, flags, payload);
                    if let Some(n) = truncate {
                        data.truncate(n);
                    }
                    if let Some((i, x)) = flip {
                        if let Some(b) = data.get_mut(i) {
                            *b ^= x;
                        }
                    }
                    let side = if primary { Side::Primary } else { Side::Secondary };
                    feed(&mut shard, &mut log, Indexed { side, index, data }, t);
                }
                Step::TcpFragmented { primary, flow, seq, flags, payload, cut, reverse, skip } => {
                    let ip = colo_core::fixtures::IpFrame {
                        ip_id: u32::from(seq) + 7,
                        ..{
                            let t = TcpFrame {
                                sport: 80,
                                dport: 40000 + u16::from(flow % 6),
                                seq: 1000u32.wrapping_add(u32::from(seq)),
                                ack: 5000,
                                flags: flags & (flags::FIN | flags::RST | flags::PSH | flags::ACK),
                                payload,
                                ..TcpFrame::default()
                            };
                            t.to_ip(std::net::IpAddr::V4(t.src), std::net::IpAddr::V4(t.dst), &[])
                        }
                    };
                    let mut frags = ip.fragments(&[cut]);
                    if reverse {
                        frags.reverse();
                    }
                    let side = if primary { Side::Primary } else { Side::Secondary };
                    for (k, data) in frags.into_iter().enumerate() {
                        if skip != Some(k) {
                            feed(&mut shard, &mut log, Indexed { side, index: index * 16 + k, data }, t);
                        }
                    }
                }
                Step::Advance(ns) => now += u64::from(ns),
                Step::Timeout => {
                    shard.handle_timeout(t);
                    drain(&mut shard, &mut log);
                }
                Step::CheckpointDone => {
                    shard.checkpoint_done(t);
                    drain(&mut shard, &mut log);
                }
                Step::StandaloneCompletion => {
                    shard.standalone_completion(t);
                    drain(&mut shard, &mut log);
                }
                Step::Failover(to_secondary) => {
                    shard.failover(if to_secondary { Side::Secondary } else { Side::Primary }, t);
                    drain(&mut shard, &mut log);
                }
                Step::Client { flow, ack, flags: fl, window, options } => {
                    let mut data = TcpFrame {
                        src: std::net::Ipv4Addr::new(10, 0, 0, 1),
                        dst: std::net::Ipv4Addr::new(10, 0, 0, 2),
                        sport: 40000 + u16::from(flow % 6),
                        dport: 80 + u16::from(flow / 6) * u16::from(flow % 3),
                        seq: 5000,
                        ack: 1000 + u32::from(ack),
                        flags: fl,
                        window,
                        options,
                        ..TcpFrame::default()
                    }
                    .build();
                    windows_seen = true;
                    shard.observe_client(&data, t);
                    let _ = shard.rewrite_client_for_secondary(&mut data);
                    drain(&mut shard, &mut log);
                }
            }
            let c = shard.counters();
            prop_assert!(shard.flow_count() <= max_flows);
            // The shard's memory budget bounds everything held (reassembly's partials, bounded
            // on their own, may come on top).
            prop_assert!((c.held_primary_frames + c.held_secondary_frames) as usize <= budget + partial_frames);
            // Secondary queues: frames, unless a client window allows more (bytes); parked
            // guest-opened SYNs add a shard-wide bounded set.
            if !windows_seen {
                prop_assert!(c.held_secondary_frames as usize <= max_flows * maxq + 256);
            }
            // The deadline heap stays O(flows): stale entries are compacted (SPEC §11).
            prop_assert!(shard.timer_entries() <= 16 * max_flows + 1100, "{}", shard.timer_entries());
        }
        // After a final completion nothing is held.
        shard.checkpoint_done(Timestamp::from_nanos(now));
        drain(&mut shard, &mut log);
        prop_assert_eq!(shard.counters().held_primary_frames, 0);
        prop_assert_eq!(shard.counters().held_secondary_frames, 0);
    }
}
