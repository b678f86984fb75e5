//! Property test of the burst lookup (`Shard::handle_burst`, as the runtime hands over each
//! receive burst: flows located first, then each frame handled): it changes nothing but speed.
//! Two shards get the same calls at the same instants, one frame by frame (`Shard::handle`),
//! the other in bursts; their actions and counters must be identical.
//!
//! The frames are chosen to make hints go stale inside a burst: a table of four flows for
//! eight keys (new flows evict idle ones, or find the table full), UDP and TCP on the same
//! ports, connections that close and reopen, proxy mode's guest-opened connections (the
//! secondary's segments move to the primary's port), fragments and non-IP frames (no hint),
//! checkpoints, timers and a failover between bursts; bursts longer than the lookup's chunk of
//! 32 frames. (The hints a lookup makes never leave the shard: a caller cannot hand a frame
//! another frame's hint. A debug assertion checks every hint used against the frame's key.)

mod common;

use std::time::Duration;

use colo_core::fixtures::{flags, Conn, IpFrame, TcpFrame};
use colo_core::{Config, Mode, NonIpPolicy, Shard, Side, Timestamp};
use common::{cases, drain, Indexed, Log};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    /// One guest's receive burst: (flow, frame kind) per frame.
    Burst { secondary: bool, frames: Vec<(u8, u8)> },
    /// The timers run.
    Tick,
    /// A checkpoint completes.
    Done,
}

/// How the bursts are handed over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Feeding {
    /// Frame by frame (`Shard::handle`): the reference.
    OneByOne,
    /// Whole bursts (`Shard::handle_burst`), as the runtime does.
    Located,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (any::<bool>(), proptest::collection::vec((0u8..8, 0u8..12), 1..72))
            .prop_map(|(secondary, frames)| Step::Burst { secondary, frames }),
        1 => Just(Step::Tick),
        1 => Just(Step::Done),
    ]
}

/// Frame kind `what` of flow `flow` as `side` sends it.
fn frame(flow: u8, what: u8, side: Side) -> Vec<u8> {
    let f = u16::from(flow);
    let server = Conn {
        template: TcpFrame { sport: 80, dport: 50_000 + f, ..TcpFrame::default() },
        isn: 1000 + u32::from(flow),
        ack: 5001,
    };
    // A connection the guest opens: the two guests pick their own source ports.
    let own_port = match side {
        Side::Primary => 40_000 + f,
        Side::Secondary => 41_000 + f,
    };
    let client = Conn { template: TcpFrame { sport: own_port, dport: 443, ..TcpFrame::default() }, isn: 7000, ack: 0 };
    let udp = |data: &[u8]| IpFrame::udp(53, 50_000 + f, data);
    match what {
        0 => udp(&[flow; 20]).build(),
        1 => udp(&[!flow; 20]).build(),
        2 => server.syn_ack(),
        3 => server.data(0, b"hello"),
        4 => server.data(5, b"world"),
        5 => server.fin(10),
        6 => server.rst(10),
        7 => TcpFrame { seq: 7000, ack: 0, flags: flags::SYN, ..client.template.clone() }.build(),
        8 => client.data(0, b"GET /"),
        9 => vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, flow, 0x08, 0x06, 0, 1],
        w => IpFrame { ip_id: u32::from(flow), ..udp(&[flow; 64]) }.fragments(&[16])[usize::from(w - 10) % 2].clone(),
    }
}

fn config(proxy: bool) -> Config {
    Config {
        mode: if proxy { Mode::Proxy } else { Mode::Compare },
        max_flows: 4,
        compare_timeout: Duration::from_millis(10),
        datagram_idle_timeout: Duration::from_millis(5),
        conn_idle_timeout: Duration::from_millis(40),
        linger: Duration::from_millis(5),
        new_flows_per_sec: 0,
        non_ip_policy: NonIpPolicy::Compare,
        ..Config::default()
    }
}

/// Runs `steps` (each `gap` ms after the one before) on a shard, fed as `feeding` says, failing
/// over before step `failover.0` if asked; returns what it did, and its counters.
fn run(steps: &[(Step, u8)], proxy: bool, failover: Option<(usize, bool)>, feeding: Feeding) -> (Log, String) {
    let mut shard = Shard::new(config(proxy));
    let mut log = Log::default();
    let mut next = [0usize; 2];
    let mut t = 0u64;
    for (i, (step, gap)) in steps.iter().enumerate() {
        t += u64::from(*gap) * 1_000_000;
        let now = Timestamp::from_nanos(t);
        if let Some((_, secondary)) = failover.filter(|&(at, _)| at == i) {
            shard.failover(if secondary { Side::Secondary } else { Side::Primary }, now);
            drain(&mut shard, &mut log);
        }
        match step {
            Step::Burst { secondary, frames } => {
                let side = if *secondary { Side::Secondary } else { Side::Primary };
                let mut burst: Vec<Indexed> = frames
                    .iter()
                    .map(|&(flow, what)| {
                        next[side as usize] += 1;
                        Indexed { side, index: next[side as usize], data: frame(flow, what, side) }
                    })
                    .collect();
                if feeding == Feeding::OneByOne {
                    for f in burst {
                        shard.handle(side, f, now);
                        drain(&mut shard, &mut log);
                    }
                } else {
                    let classes: Vec<_> = burst.iter().map(|f| colo_core::wire::parse(&f.data)).collect();
                    let mut actions = Vec::new();
                    shard.handle_burst(side, &mut burst, &classes, now, |a| actions.push(a));
                    log.record(actions);
                    drain(&mut shard, &mut log);
                }
            }
            Step::Tick => {
                shard.handle_timeout(now);
                drain(&mut shard, &mut log);
            }
            Step::Done => {
                shard.checkpoint_done(now);
                drain(&mut shard, &mut log);
            }
        }
    }
    (log, format!("{:?}", shard.counters()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn bursts_located_first_act_exactly_as_frames_one_by_one(
        steps in proptest::collection::vec((step(), 0u8..8), 1..24),
        proxy in any::<bool>(),
        failover in proptest::option::weighted(0.2, (0usize..24, any::<bool>())),
    ) {
        let (one_by_one, counters) = run(&steps, proxy, failover, Feeding::OneByOne);
        let (located, located_counters) = run(&steps, proxy, failover, Feeding::Located);
        prop_assert_eq!(&located.released, &one_by_one.released);
        prop_assert_eq!(&located.dropped, &one_by_one.dropped);
        prop_assert_eq!(&located.wire, &one_by_one.wire);
        prop_assert_eq!(format!("{:?}", located.requests), format!("{:?}", one_by_one.requests));
        prop_assert_eq!(&located_counters, &counters);
    }
}
