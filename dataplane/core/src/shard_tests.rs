//! Rule-by-rule fixtures for SPEC §5.1 and §6: each test feeds hand-built frames to a shard
//! and checks the actions, the reason strings and the accounting invariant.

use core::time::Duration;

use super::*;
use crate::checkpoint::CheckpointRequest;
use crate::fixtures::{flags, timestamp_option, Conn, TcpFrame};
use crate::Mode;

/// Result of one call, simplified for assertions.
#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Rel(Vec<u8>, Via),
    /// A segment's rest, after `skip` payload bytes left as a part.
    Rest(Vec<u8>, Via, u32),
    Part(Vec<u8>, Via),
    Drop(Side, DropReason),
    Ckpt(&'static str),
}

struct H {
    shard: Shard<Vec<u8>>,
    requests: Vec<CheckpointRequest>,
}

impl H {
    fn new() -> Self {
        Self::with(Config::default())
    }
    fn with(cfg: Config) -> Self {
        H { shard: Shard::new(cfg), requests: Vec::new() }
    }
    fn drain(&mut self) -> Vec<Ev> {
        let mut v = Vec::new();
        while let Some(a) = self.shard.poll_action() {
            v.push(match a {
                Action::Release { frame, via } => Ev::Rel(frame, via),
                Action::ReleaseRest { frame, via, skip } => Ev::Rest(frame, via, skip),
                Action::ReleasePart { bytes, via } => Ev::Part(bytes.into_vec(), via),
                Action::Drop { side, reason, .. } => Ev::Drop(side, reason),
                Action::Checkpoint(r) => {
                    let s = r.reason.as_str();
                    self.requests.push(*r);
                    Ev::Ckpt(s)
                }
            });
        }
        self.shard.counters().check_accounting().expect("accounting");
        v
    }
    fn p(&mut self, f: &[u8], ms: u64) -> Vec<Ev> {
        self.shard.handle(Side::Primary, f.to_vec(), Timestamp::from_millis(ms));
        self.drain()
    }
    fn s(&mut self, f: &[u8], ms: u64) -> Vec<Ev> {
        self.shard.handle(Side::Secondary, f.to_vec(), Timestamp::from_millis(ms));
        self.drain()
    }
    fn tick(&mut self, ms: u64) -> Vec<Ev> {
        self.shard.handle_timeout(Timestamp::from_millis(ms));
        self.drain()
    }
    fn done(&mut self, ms: u64) -> Vec<Ev> {
        self.shard.checkpoint_done(Timestamp::from_millis(ms));
        self.drain()
    }
    fn released(evs: &[Ev]) -> Vec<(&[u8], Via)> {
        evs.iter()
            .filter_map(|e| match e {
                Ev::Rel(f, v) => Some((f.as_slice(), *v)),
                _ => None,
            })
            .collect()
    }
    fn ckpts(evs: &[Ev]) -> Vec<&'static str> {
        evs.iter()
            .filter_map(|e| match e {
                Ev::Ckpt(s) => Some(*s),
                _ => None,
            })
            .collect()
    }
}

const CONSUMED: Ev = Ev::Drop(Side::Secondary, DropReason::Consumed);

fn conns() -> (Conn, Conn) {
    let p = Conn::default();
    // The secondary guest picked another ISN; compare mode: its SYN-ACK is not rewritten,
    // its other segments are already in the primary's space.
    let s = Conn { isn: 777_777, ..Conn::default() };
    (p, s)
}

#[test]
fn test_identical_stream_released_via_match_in_order() {
    let (pc, sc) = conns();
    let mut h = H::new();
    assert!(h.p(&pc.syn_ack(), 0).is_empty());
    assert_eq!(h.s(&sc.syn_ack(), 1), vec![CONSUMED, Ev::Rel(pc.syn_ack(), Via::Match)]);
    let a = pc.data(0, b"hello ");
    let b = pc.data(6, b"world");
    assert!(h.p(&a, 2).is_empty());
    assert!(h.p(&b, 3).is_empty());
    assert_eq!(h.s(&a, 4), vec![Ev::Rel(a.clone(), Via::Match), CONSUMED]);
    assert_eq!(h.s(&b, 5), vec![Ev::Rel(b.clone(), Via::Match), CONSUMED]);
    assert_eq!(h.shard.counters().held_primary_frames, 0);
    assert!(h.requests.is_empty());
}

#[test]
fn test_resegmented_3_7_vs_10_and_reverse() {
    let (pc, _) = conns();
    let data = b"0123456789";
    for primary_split in [true, false] {
        let mut h = H::new();
        let split = vec![pc.data(0, &data[..3]), pc.data(3, &data[3..])];
        let whole = vec![pc.data(0, data)];
        let (prim, sec) = if primary_split { (split, whole) } else { (whole, split) };
        let mut evs = Vec::new();
        for f in &prim {
            evs.extend(h.p(f, 1));
        }
        for f in &sec {
            evs.extend(h.s(f, 2));
        }
        let rel = H::released(&evs);
        assert_eq!(rel.len(), prim.len());
        for (r, f) in rel.iter().zip(&prim) {
            assert_eq!((r.0, r.1), (f.as_slice(), Via::Match));
        }
        assert!(H::ckpts(&evs).is_empty());
        assert_eq!(h.shard.counters().secondary_consumed, sec.len() as u64);
    }
}

#[test]
fn test_out_of_order_arrival_both_sides() {
    let (pc, _) = conns();
    let a = pc.data(0, b"aaaa");
    let b = pc.data(4, b"bbbb");
    let mut h = H::new();
    assert!(h.p(&b, 1).is_empty()); // mid-stream pickup would start at b: send a first below
    let mut h2 = H::new();
    assert!(h2.p(&a, 1).is_empty());
    assert!(h2.p(&b, 1).is_empty());
    assert!(h2.s(&b, 2).is_empty(), "secondary b waits for the gap");
    let evs = h2.s(&a, 3);
    assert_eq!(H::released(&evs), vec![(a.as_slice(), Via::Match), (b.as_slice(), Via::Match)]);
    // Primary out of order: b is held behind the missing a even though b matched.
    let mut h3 = H::new();
    assert!(h3.p(&pc.syn_ack(), 0).is_empty());
    h3.s(&pc.syn_ack(), 0);
    assert!(h3.p(&b, 1).is_empty());
    assert!(h3.s(&a, 2).is_empty());
    assert!(h3.s(&b, 2).is_empty());
    let evs = h3.p(&a, 3);
    assert_eq!(
        H::released(&evs),
        vec![(b.as_slice(), Via::Match), (a.as_slice(), Via::Match)],
        "primary order is arrival order"
    );
}

#[test]
fn test_ignored_header_fields() {
    let (pc, _) = conns();
    let prim = TcpFrame {
        seq: pc.seq(0),
        ack: pc.ack,
        flags: flags::ACK | flags::PSH,
        payload: b"same bytes".to_vec(),
        ..TcpFrame::default()
    };
    let sec = TcpFrame {
        ip_id: 999,
        ttl: 3,
        window: 12,
        options: timestamp_option(42, 43),
        padding: 6,
        flags: flags::ACK,
        ..prim.clone()
    };
    let mut h = H::new();
    let mut p2 = prim.clone();
    p2.options = timestamp_option(1, 2);
    h.p(&p2.build(), 0);
    let evs = h.s(&sec.build(), 1);
    assert_eq!(H::released(&evs), vec![(p2.build().as_slice(), Via::Match)]);
}

#[test]
fn test_payload_mismatch_requests_and_holds_until_flush() {
    let (pc, _) = conns();
    let mut h = H::new();
    let a = pc.data(0, b"0123456789");
    h.p(&a, 0);
    let evs = h.s(&pc.data(0, b"0123X56789"), 1);
    assert_eq!(H::ckpts(&evs), vec!["tcp-payload-mismatch"]);
    assert!(H::released(&evs).is_empty());
    let r = &h.requests[0];
    assert_eq!(r.flow, "tcp 10.0.0.2:80 > 10.0.0.1:40000");
    assert!(r.detail.contains("stream +4"), "{}", r.detail);
    assert!(r.detail.contains("|34") && r.detail.contains("|58"), "{}", r.detail);
    // Diverged: further identical data is held too, and no second request this epoch.
    let b = pc.data(10, b"more");
    h.p(&b, 2);
    assert!(H::released(&h.s(&b, 3)).is_empty());
    assert_eq!(h.shard.flow_status(&flow_key()).map(|s| s.head), Some(Some(HoldReason::Diverged)));
    let evs = h.done(4);
    assert_eq!(H::released(&evs), vec![(a.as_slice(), Via::Flush), (b.as_slice(), Via::Flush)]);
    // After the flush the secondary state equals the primary's: comparison resumes.
    let c = pc.data(14, b"next");
    h.p(&c, 5);
    assert_eq!(H::released(&h.s(&c, 6)), vec![(c.as_slice(), Via::Match)]);
    assert_eq!(h.shard.counters().checkpoints_completed, 1);
}

fn flow_key() -> FlowKey {
    match wire::parse(&Conn::default().data(0, b"x")) {
        Class::Tcp(k, _) => k,
        other => panic!("{other:?}"),
    }
}

#[test]
fn test_ack_rule_holds_then_releases_or_times_out() {
    let (pc, _) = conns();
    let mut h = H::new();
    let a = pc.data_ack(0, b"abc", 6000);
    h.p(&a, 0);
    // The secondary sends the same bytes but has not yet acknowledged client byte 6000.
    let evs = h.s(&pc.data_ack(0, b"abc", 5500), 1);
    assert!(H::released(&evs).is_empty());
    assert_eq!(h.shard.flow_status(&flow_key()).and_then(|s| s.head), Some(HoldReason::AwaitingAck));
    let evs = h.s(&pc.pure_ack(3, 6000), 2);
    assert_eq!(H::released(&evs), vec![(a.as_slice(), Via::Match)]);

    // Pure ACKs follow the same rule, and time out as ack-lag.
    let ack = pc.pure_ack(3, 7000);
    assert!(H::released(&h.p(&ack, 10)).is_empty());
    assert!(h.tick(3009).is_empty());
    assert_eq!(H::ckpts(&h.tick(3010)), vec!["ack-lag-timeout"]);
    assert_eq!(H::released(&h.done(3011)), vec![(ack.as_slice(), Via::Flush)]);
}

#[test]
fn test_retransmission_and_straddle() {
    let (pc, _) = conns();
    let mut h = H::new();
    let a = pc.data(0, b"abcdef");
    h.p(&a, 0);
    h.s(&a, 0);
    // Wholly below compared: released without comparing.
    let re = pc.data(0, b"abc");
    assert_eq!(H::released(&h.p(&re, 1)), vec![(re.as_slice(), Via::Retransmission)]);
    // Secondary data below compared is consumed silently.
    assert_eq!(h.s(&pc.data(2, b"cd"), 1), vec![CONSUMED]);
    // Straddling: the new part is compared.
    let st = pc.data(4, b"efGH");
    assert!(h.p(&st, 2).is_empty());
    let evs = h.s(&pc.data(6, b"GX"), 3);
    assert_eq!(H::ckpts(&evs), vec!["tcp-payload-mismatch"]);
    assert!(H::released(&evs).is_empty());
}

#[test]
fn test_syn_ack_released_once_counterpart_seen() {
    let (pc, sc) = conns();
    let mut h = H::new();
    assert!(h.p(&pc.syn_ack(), 0).is_empty());
    assert_eq!(h.shard.flow_status(&flow_key()).and_then(|s| s.head), Some(HoldReason::AwaitingSynCounterpart));
    // A counterpart with a different ACK is not a counterpart.
    let other = Conn { ack: 1234, ..sc.clone() };
    assert!(H::released(&h.s(&other.syn_ack(), 1)).is_empty());
    assert_eq!(H::ckpts(&h.tick(3000)), vec!["timeout-primary"]);

    let mut h = H::new();
    h.s(&sc.syn_ack(), 0); // secondary first is fine too
    assert_eq!(H::released(&h.p(&pc.syn_ack(), 1)), vec![(pc.syn_ack().as_slice(), Via::Match)]);
}

#[test]
fn test_proxy_mode_learns_offset_from_syn_pair() {
    let (pc, sc) = conns();
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    h.p(&pc.syn_ack(), 0);
    h.s(&sc.syn_ack(), 0);
    let a = pc.data(0, b"xyz");
    h.p(&a, 1);
    let evs = h.s(&sc.data(0, b"xyz"), 2);
    assert_eq!(H::released(&evs), vec![(a.as_slice(), Via::Match)]);
}

#[test]
fn test_fin_compared_as_position() {
    let (pc, _) = conns();
    let mut h = H::new();
    let a = pc.data(0, b"bye");
    let fin = pc.fin(3);
    h.p(&a, 0);
    h.p(&fin, 0);
    let evs = h.s(&a, 1);
    assert_eq!(H::released(&evs), vec![(a.as_slice(), Via::Match)]);
    let evs = h.s(&fin, 2);
    assert_eq!(H::released(&evs), vec![(fin.as_slice(), Via::Match)]);
    assert!(h.shard.flow_status(&flow_key()).is_some_and(|s| s.closed));
    // Linger, then removal.
    h.tick(2 + 6000);
    assert_eq!(h.shard.flow_count(), 0);

    // FIN where the other side has data.
    let mut h = H::new();
    h.p(&fin, 0);
    let evs = h.s(&pc.data(3, b"more"), 1);
    assert_eq!(H::ckpts(&evs), vec!["tcp-fin-mismatch"]);
    let mut h = H::new();
    h.p(&a, 0);
    h.p(&fin, 0);
    h.s(&a, 1);
    let evs = h.s(&pc.data(3, b"more"), 2);
    assert_eq!(H::ckpts(&evs), vec!["tcp-fin-mismatch"]);
    assert!(H::released(&evs).is_empty());
}

#[test]
fn test_data_and_fin_in_one_segment_in_lock_step() {
    let (pc, _) = conns();
    let last = |payload: &[u8]| {
        let seg = pc.data_segment(0, payload, pc.ack);
        TcpFrame { flags: seg.flags | flags::FIN, ..seg }.build()
    };
    let closing = last(b"bye");
    let mut h = H::new();
    h.p(&closing, 0);
    let evs = h.s(&closing, 1);
    assert_eq!(H::released(&evs), vec![(closing.as_slice(), Via::Match)]);
    assert!(H::ckpts(&evs).is_empty());
    assert!(h.shard.flow_status(&flow_key()).is_some_and(|s| s.closed));

    // The same bytes with the FIN on its own segment on the secondary: released once it comes.
    let mut h = H::new();
    h.p(&closing, 0);
    assert!(H::released(&h.s(&pc.data(0, b"bye"), 1)).is_empty());
    let evs = h.s(&pc.fin(3), 2);
    assert_eq!(H::released(&evs), vec![(closing.as_slice(), Via::Match)]);

    // Data and FIN on the primary, data and more data on the secondary: a FIN mismatch.
    let mut h = H::new();
    h.p(&closing, 0);
    let evs = h.s(&pc.data(0, b"bye now"), 1);
    assert_eq!(H::ckpts(&evs), vec!["tcp-fin-mismatch"]);
    assert!(H::released(&evs).is_empty());
}

#[test]
fn test_rst_pair_and_rst_mismatch() {
    let (pc, _) = conns();
    let mut h = H::new();
    let a = pc.data(0, b"ab");
    let rst = pc.rst(2);
    h.p(&a, 0);
    h.p(&rst, 0);
    assert_eq!(H::released(&h.s(&a, 1)), vec![(a.as_slice(), Via::Match)]);
    assert_eq!(h.shard.flow_status(&flow_key()).and_then(|s| s.head), Some(HoldReason::AwaitingRst));
    assert_eq!(H::released(&h.s(&rst, 2)), vec![(rst.as_slice(), Via::Match)]);
    assert!(h.shard.flow_status(&flow_key()).is_some_and(|s| s.closed));

    // RST on the secondary where the primary has data.
    let mut h = H::new();
    h.p(&a, 0);
    h.p(&pc.data(2, b"cd"), 0);
    h.s(&a, 1);
    let evs = h.s(&pc.rst(2), 2);
    assert_eq!(H::ckpts(&evs), vec!["tcp-rst-mismatch"]);

    // A lone RST answering a SYN (no stream yet) is released once both sides reset.
    let mut h = H::new();
    let r = pc.rst(0);
    h.s(&r, 0);
    assert_eq!(H::released(&h.p(&r, 1)), vec![(r.as_slice(), Via::Match)]);
}

#[test]
fn test_timeouts_primary_and_secondary_are_exact() {
    let (pc, _) = conns();
    let mut h = H::new();
    h.p(&pc.data(0, b"alone"), 100);
    assert_eq!(h.shard.next_deadline(), Some(Timestamp::from_millis(3100)));
    assert!(h.tick(3099).is_empty());
    assert_eq!(H::ckpts(&h.tick(3100)), vec!["timeout-primary"]);
    assert!(h.tick(9000).is_empty(), "one timeout request per flow per epoch");

    let mut h = H::new();
    h.p(&pc.data(0, b"x"), 0);
    h.s(&pc.data(0, b"x"), 0);
    h.s(&pc.data(1, b"ahead"), 50);
    assert!(h.tick(3049).is_empty());
    assert_eq!(H::ckpts(&h.tick(3050)), vec!["timeout-secondary"]);
}

#[test]
fn test_queue_overflow_requests_never_drops_primary() {
    let (pc, _) = conns();
    let mut h = H::with(Config { max_queue_size: 4, held_frames_budget: 16, ..Config::default() });
    let mut evs = Vec::new();
    for i in 0..8u32 {
        evs.extend(h.p(&pc.data(i, b"z"), 0));
    }
    assert_eq!(H::ckpts(&evs), vec!["queue-overflow"]);
    assert_eq!(h.shard.counters().held_primary_frames, 8);
    assert_eq!(H::released(&h.done(1)).len(), 8);
    // A queue far past max_queue_size is still held while the shard's memory budget lasts:
    // the per-flow bound asks for a checkpoint, never drops.
    let mut evs = Vec::new();
    for i in 8..24u32 {
        evs.extend(h.p(&pc.data(i, b"z"), 2));
    }
    assert_eq!(h.shard.counters().held_primary_frames, 16);
    assert_eq!(h.shard.counters().primary_dropped.iter().sum::<u64>(), 0);
    // Past the budget the frame is dropped and counted (memory exhausted, SPEC §6), with a
    // resource-pressure request.
    for i in 24..30u32 {
        evs.extend(h.p(&pc.data(i, b"z"), 2));
    }
    assert_eq!(h.shard.counters().dropped(Side::Primary, DropReason::MemoryBudget), 6);
    assert_eq!(H::ckpts(&evs), vec!["queue-overflow", "resource-pressure"]);
}

/// A segment that matches the other guest's one held segment on arrival is compared at once
/// and never held, so the memory budget does not refuse it: with the shard's budget spent on
/// another connection's frames, a matched pair still goes through, in either order (where a
/// queued secondary segment would be refused at 7/8 of the budget, and a queued primary
/// segment past the whole budget would be dropped).
#[test]
fn test_a_segment_matched_on_arrival_is_not_weighed_against_the_memory_budget() {
    let (pc, _) = conns();
    let other = Conn { template: TcpFrame { dport: 40001, ..TcpFrame::default() }, ..Conn::default() };
    let a = pc.data(0, b"hello");

    // Primary first: 3 frames of the other connection and this one held, 4 of 4.
    let mut h = H::with(Config { held_frames_budget: 4, ..Config::default() });
    for i in 0..3u32 {
        assert!(h.p(&other.data(i, b"z"), 0).is_empty());
    }
    assert!(h.p(&a, 1).is_empty());
    assert_eq!(h.shard.counters().held_frames(), 4);
    assert_eq!(h.s(&a, 2), vec![Ev::Rel(a.clone(), Via::Match), CONSUMED]);
    assert_eq!(h.shard.counters().held_frames(), 3);

    // Secondary first: its segment held, then the other connection takes the rest of the
    // budget; the primary's copy, past the budget had it been queued, goes at once.
    let mut h = H::with(Config { held_frames_budget: 4, ..Config::default() });
    assert!(h.s(&a, 0).is_empty());
    for i in 0..3u32 {
        assert!(h.p(&other.data(i, b"z"), 1).is_empty());
    }
    assert_eq!(h.shard.counters().held_frames(), 4);
    assert_eq!(h.p(&a, 2), vec![Ev::Rel(a.clone(), Via::Match), CONSUMED]);
    assert_eq!(h.shard.counters().held_frames(), 3);
    assert_eq!(h.shard.counters().primary_dropped.iter().sum::<u64>(), 0);
    assert!(h.requests.is_empty());

    // A primary segment that has to wait is still weighed: held up to the budget, dropped
    // past it (SPEC §6).
    assert!(h.p(&pc.data(5, b"world"), 3).is_empty());
    let evs = h.p(&pc.data(10, b"!"), 4);
    assert_eq!(evs, vec![Ev::Ckpt("resource-pressure"), Ev::Drop(Side::Primary, DropReason::MemoryBudget)]);
}
#[test]
fn test_flow_table_full_resource_pressure_and_eviction() {
    let (pc, _) = conns();
    let other = Conn { template: TcpFrame { dport: 40001, ..TcpFrame::default() }, ..Conn::default() };
    let mut h = H::with(Config { max_flows: 1, ..Config::default() });
    let a = pc.data(0, b"a");
    h.p(&a, 0);
    let b = other.data(0, b"b");
    let evs = h.p(&b, 1);
    assert_eq!(H::ckpts(&evs), vec!["resource-pressure"]);
    assert_eq!(h.shard.counters().held_primary_frames, 2);
    assert_eq!(H::released(&h.done(2)), vec![(a.as_slice(), Via::Flush), (b.as_slice(), Via::Flush)]);
    // The first flow is now empty: it can be evicted for a new one.
    let c = other.data(1, b"c");
    h.p(&c, 3);
    assert_eq!(h.shard.counters().flows_evicted, 1);
    assert_eq!(H::released(&h.s(&c, 4)), vec![(c.as_slice(), Via::Match)]);
}

#[test]
fn test_idle_flow_removed() {
    let (pc, _) = conns();
    let mut h = H::new();
    let a = pc.data(0, b"a");
    h.p(&a, 0);
    h.s(&a, 0);
    assert_eq!(h.shard.flow_count(), 1);
    // SPEC §5.1: 7800 s by default, beyond Linux's 7200 s keepalive time.
    h.tick(7_200_000);
    assert_eq!(h.shard.flow_count(), 1);
    h.tick(7_799_999);
    assert_eq!(h.shard.flow_count(), 1);
    h.tick(7_800_000);
    assert_eq!(h.shard.flow_count(), 0);
    assert_eq!(h.shard.counters().flows, 0);
}

#[test]
fn test_requests_aggregate_per_reason_flow_epoch() {
    let (pc, _) = conns();
    let mut h = H::with(Config { max_queue_size: 1, ..Config::default() });
    h.p(&pc.data(0, b"a"), 0);
    let mut evs = h.s(&pc.data(0, b"b"), 0);
    for i in 1..5 {
        evs.extend(h.p(&pc.data(i, b"a"), 0));
    }
    assert_eq!(H::ckpts(&evs), vec!["tcp-payload-mismatch", "queue-overflow"]);
    h.done(1);
    h.p(&pc.data(5, b"a"), 2);
    assert_eq!(H::ckpts(&h.s(&pc.data(5, b"c"), 2)), vec!["tcp-payload-mismatch"]);
}

#[test]
fn test_sequence_wraparound() {
    let pc = Conn { isn: u32::MAX - 3, ..Conn::default() };
    let mut h = H::new();
    h.p(&pc.syn_ack(), 0);
    h.s(&Conn { isn: 5, ..pc.clone() }.syn_ack(), 0);
    let a = pc.data(0, b"wrap around");
    h.p(&a, 1);
    let evs = h.s(&pc.data(0, b"wrap "), 2);
    assert!(H::released(&evs).is_empty());
    let evs = h.s(&pc.data(5, b"around"), 3);
    assert_eq!(H::released(&evs), vec![(a.as_slice(), Via::Match)]);
}

#[test]
fn test_non_ip_and_malformed_passthrough() {
    let mut h = H::new();
    let mut arp = vec![0xff; 12];
    arp.extend_from_slice(&[0x88, 0xcc, 1, 2, 3]);
    assert_eq!(h.p(&arp, 0), vec![Ev::Rel(arp.clone(), Via::Passthrough)]);
    assert_eq!(h.s(&arp, 0), vec![Ev::Drop(Side::Secondary, DropReason::NonIp)]);
    let bad = vec![0u8; 20];
    assert_eq!(h.p(&bad, 0).len(), 1);
    assert_eq!(h.s(&[], 0), vec![Ev::Drop(Side::Secondary, DropReason::Malformed)]);
    let c = h.shard.counters();
    assert_eq!(c.released_via(Via::Passthrough), 2);
    assert_eq!(c.malformed_count(crate::MalformedReason::Empty), 1);
}

#[test]
fn test_failover_to_primary_forwards_uncompared() {
    let (pc, _) = conns();
    let mut h = H::new();
    let a = pc.data(0, b"held");
    h.p(&a, 0);
    h.shard.failover(Side::Primary, Timestamp::from_millis(1));
    assert_eq!(H::released(&h.drain()), vec![(a.as_slice(), Via::Flush)]);
    let b = pc.data(4, b"free");
    assert_eq!(H::released(&h.p(&b, 2)), vec![(b.as_slice(), Via::Passthrough)]);
    assert_eq!(h.s(&b, 2), vec![Ev::Drop(Side::Secondary, DropReason::FailedOver)]);
}

#[test]
fn test_timer_heap_stays_small_in_steady_state() {
    let (pc, _) = conns();
    let mut h = H::with(Config::default().with_compare_timeout(Duration::from_millis(100)));
    for i in 0..10_000u32 {
        let f = pc.data(i, b"q");
        h.p(&f, u64::from(i));
        h.s(&f, u64::from(i));
        h.tick(u64::from(i));
    }
    assert!(h.shard.timer_entries() <= 4, "{}", h.shard.timer_entries());
}

#[test]
fn test_matched_frame_never_overtakes_an_earlier_held_one() {
    let (pc, _) = conns();
    let mut h = H::new();
    // Frame a acknowledges client data the secondary has not acknowledged yet; frame b
    // (later, same flow) carries an older ACK. Both are verified, but b must wait for a.
    let a = pc.data_ack(0, b"aa", 6000);
    let b = pc.data_ack(2, b"bb", 5001);
    h.p(&a, 0);
    h.p(&b, 0);
    assert!(H::released(&h.s(&pc.data_ack(0, b"aabb", 5001), 1)).is_empty());
    let evs = h.s(&pc.pure_ack(4, 6000), 2);
    assert_eq!(H::released(&evs), vec![(a.as_slice(), Via::Match), (b.as_slice(), Via::Match)]);
}

#[test]
fn test_vlan_is_part_of_the_flow() {
    let (pc, _) = conns();
    let tagged = |vlan| Conn { template: TcpFrame { vlan: Some(vlan), ..TcpFrame::default() }, ..pc.clone() };
    let mut h = H::new();
    h.p(&tagged(10).data(0, b"v"), 0);
    assert!(H::released(&h.s(&tagged(20).data(0, b"v"), 1)).is_empty());
    assert_eq!(h.shard.flow_count(), 2);
    let evs = h.s(&tagged(10).data(0, b"v"), 2);
    assert_eq!(H::released(&evs).len(), 1);
    assert_eq!(h.requests.len(), 0, "different VLANs are different flows, not a mismatch");
}

#[test]
fn test_ipv6_tcp_flow_compares() {
    // Ethernet + IPv6 + TCP "v6!" built by hand (checksums are ignored anyway).
    let build = |ttl: u8| {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 23, 6, ttl]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0, 80, 0x9c, 0x40, 0, 0, 0x03, 0xe8, 0, 0, 0x13, 0x89, 0x50, 0x18]);
        f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(b"v6!");
        f
    };
    let mut h = H::new();
    h.p(&build(64), 0);
    let evs = h.s(&build(1), 1);
    assert_eq!(H::released(&evs), vec![(build(64).as_slice(), Via::Match)]);
    assert_eq!(h.shard.counters().released_via(Via::Match), 1, "hop limit is ignored");
}

#[test]
fn test_timer_heap_bounded_under_connection_churn() {
    let mut h = H::with(Config::default().with_compare_timeout(Duration::from_millis(10)));
    for i in 0..5_000u32 {
        let c = Conn { template: TcpFrame { sport: (i % 60_000) as u16, ..TcpFrame::default() }, ..Conn::default() };
        let t = u64::from(i);
        for f in [c.data(0, b"x"), c.fin(1)] {
            h.p(&f, t);
            h.s(&f, t);
        }
        h.tick(t);
    }
    assert!(h.shard.flow_count() <= 30, "lingering flows: {}", h.shard.flow_count());
    assert!(h.shard.timer_entries() <= 8 * h.shard.flow_count() + 1024 + 1, "{}", h.shard.timer_entries());
}

#[test]
fn test_failover_to_secondary_forwards_secondary_and_keeps_accounting() {
    let (pc, _) = conns();
    let mut h = H::new();
    h.s(&pc.data(0, b"s-held"), 0);
    h.shard.failover(Side::Secondary, Timestamp::from_millis(1));
    assert_eq!(h.drain(), vec![Ev::Drop(Side::Secondary, DropReason::Flushed)]);
    let f = pc.data(6, b"fwd");
    assert_eq!(h.s(&f, 2), vec![Ev::Rel(f.clone(), Via::Passthrough)]);
    assert_eq!(h.p(&f, 2), vec![Ev::Drop(Side::Primary, DropReason::FailedOver)]);
    assert_eq!(h.shard.counters().secondary_forwarded, 1);
}

#[test]
fn test_port_reuse_starts_a_new_incarnation() {
    let (pc, sc) = conns();
    let mut h = H::new();
    for f in [pc.syn_ack(), pc.data(0, b"old"), pc.fin(3)] {
        h.p(&f, 0);
    }
    h.s(&sc.syn_ack(), 0);
    h.s(&pc.data(0, b"old"), 0);
    h.s(&pc.fin(3), 0);
    assert_eq!(h.shard.counters().released_via(Via::Match), 3);
    // Same 4-tuple, new ISNs, before the linger expired.
    let p2 = Conn { isn: 50_000, ..pc.clone() };
    let s2 = Conn { isn: 90_000, ..sc.clone() };
    h.p(&p2.syn_ack(), 10);
    h.s(&s2.syn_ack(), 11);
    let d = p2.data(0, b"new");
    h.p(&d, 12);
    assert_eq!(H::released(&h.s(&d, 13)), vec![(d.as_slice(), Via::Match)]);
    assert!(h.requests.is_empty(), "{:?}", h.requests);
}

#[test]
fn test_runtime_resource_pressure_is_one_request_per_epoch() {
    let mut h = H::new();
    h.shard.resource_pressure("mempool 95% used", Timestamp::from_millis(1));
    h.shard.resource_pressure("mempool 96% used", Timestamp::from_millis(2));
    assert_eq!(H::ckpts(&h.drain()), vec!["resource-pressure"]);
    assert_eq!(h.requests[0].flow, "");
    h.done(3);
    h.shard.resource_pressure("again", Timestamp::from_millis(4));
    assert_eq!(H::ckpts(&h.drain()), vec!["resource-pressure"]);
}

#[test]
fn test_flows_by_held_lists_the_fullest_flows_first() {
    let mut h = H::new();
    let a = Conn::default();
    let b = Conn { template: TcpFrame { dport: 40001, ..TcpFrame::default() }, ..Conn::default() };
    h.p(&a.data(0, b"aaaa"), 1);
    h.p(&b.data(0, b"bbbb"), 1);
    h.p(&b.data(4, b"cccc"), 2);
    let flows = h.shard.flows_by_held(10);
    assert_eq!(flows.len(), 2);
    assert_eq!(flows[0].0.to_string(), "tcp 10.0.0.2:80 > 10.0.0.1:40001");
    assert_eq!(flows[0].1.held_primary, 2);
    assert_eq!(flows[1].1.held_primary, 1);
    assert_eq!(h.shard.flows_by_held(1).len(), 1);
}

#[test]
fn test_a_shorter_compare_timeout_applies_to_what_is_held_next() {
    let mut h = H::new();
    h.shard.set_compare_timeout(Duration::from_millis(100));
    let c = Conn::default();
    h.p(&c.data(0, b"silent secondary"), 10);
    assert_eq!(h.tick(109), vec![]);
    assert_eq!(h.tick(110), vec![Ev::Ckpt("timeout-primary")]);
    assert_eq!(h.shard.config().reassembly_timeout, Duration::from_millis(100), "follows compare_timeout");
    h.shard.set_max_queue_size(2);
    assert_eq!(h.shard.config().max_queue_size, 2);
}

// ---- Issue 4: datagrams (SPEC §5.2), other IP (§5.3), non-IP (§4), fragments (§4) ----

use crate::fixtures::{icmp_echo, icmpv6_echo, v6_pair, IpFrame};
use crate::NonIpPolicy;

fn udp(data: &[u8]) -> IpFrame {
    IpFrame::udp(53, 40000, data)
}

fn rels(evs: &[Ev]) -> Vec<(Vec<u8>, Via)> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Rel(f, v) => Some((f.clone(), *v)),
            _ => None,
        })
        .collect()
}

#[test]
fn test_udp_identical_matches_ignoring_ip_header_and_padding() {
    let mut h = H::new();
    let p = IpFrame { ip_id: 7, ttl: 64, ..udp(b"answer") }.build();
    let s = IpFrame { ip_id: 9000, ttl: 3, padding: 12, ..udp(b"answer") }.build();
    assert_eq!(h.p(&p, 1), vec![]);
    assert_eq!(h.s(&s, 2), vec![Ev::Rel(p.clone(), Via::Match), CONSUMED]);
    assert_eq!(h.shard.counters().held_primary_frames, 0);
    let key = match wire::parse(&p) {
        Class::Datagram(k, _) => k,
        c => panic!("{c:?}"),
    };
    assert_eq!(key.to_string(), "udp 10.0.0.2:53 > 10.0.0.1:40000");
}

#[test]
fn test_udp_one_byte_differs_is_datagram_mismatch_with_hex_window() {
    // Window 0: strict FIFO, the verdict is immediate.
    let mut h = H::with(Config { datagram_window: 0, ..Config::default() });
    let p = udp(b"answer-1").build();
    h.p(&p, 1);
    let evs = h.s(&udp(b"answer-2").build(), 2);
    assert_eq!(H::ckpts(&evs), vec!["datagram-mismatch"]);
    let r = &h.requests[0];
    assert_eq!(r.flow, "udp 10.0.0.2:53 > 10.0.0.1:40000");
    // The UDP checksum (byte 7) differs before the data does: the L4 header is compared.
    assert!(r.detail.contains("first difference at byte 7"), "{}", r.detail);
    assert!(r.detail.contains("primary[0..16]=") && r.detail.contains("secondary[0..16]="), "{}", r.detail);
    assert!(H::released(&evs).is_empty());
    let evs = h.done(3);
    assert_eq!(rels(&evs), vec![(p, Via::Flush)]);
    assert!(evs.contains(&Ev::Drop(Side::Secondary, DropReason::Flushed)));
}

#[test]
fn test_udp_reorder_within_window_releases_in_primary_order() {
    let mut h = H::new();
    let ps: Vec<Vec<u8>> = (0..5u8).map(|i| udp(&[i; 10]).build()).collect();
    // Secondary sends 2, 0, 1, 4, 3 interleaved with the primary.
    h.p(&ps[0], 1);
    h.s(&ps[2], 2);
    h.p(&ps[1], 3);
    let evs = h.s(&ps[0], 4);
    assert_eq!(rels(&evs), vec![(ps[0].clone(), Via::Match)]);
    h.p(&ps[2], 5);
    let evs = h.s(&ps[1], 6);
    assert_eq!(rels(&evs), vec![(ps[1].clone(), Via::Match), (ps[2].clone(), Via::Match)]);
    h.s(&ps[4], 7);
    h.p(&ps[3], 8);
    h.p(&ps[4], 9);
    let evs = h.s(&ps[3], 10);
    assert_eq!(rels(&evs), vec![(ps[3].clone(), Via::Match), (ps[4].clone(), Via::Match)]);
    assert!(h.requests.is_empty());
}

#[test]
fn test_a_datagram_whose_copy_came_first_leaves_at_once_after_the_copy_is_consumed() {
    // A queue of one: the datagram never waits in the primary queue, so no overflow either.
    let mut h = H::with(Config { max_queue_size: 1, ..Config::default() });
    let ds: Vec<Vec<u8>> = (0..3u8).map(|i| udp(&[i; 10]).build()).collect();
    for (i, d) in ds.iter().enumerate() {
        let t = 2 * i as u64;
        assert!(H::released(&h.s(d, t + 1)).is_empty());
        assert_eq!(h.shard.counters().held_secondary_frames, 1);
        let evs = h.p(d, t + 2);
        // The copy is consumed first, then the datagram leaves (the order TCP uses).
        assert_eq!(evs, vec![Ev::Drop(Side::Secondary, DropReason::Consumed), Ev::Rel(d.clone(), Via::Match)]);
        let c = h.shard.counters();
        assert_eq!((c.held_primary_frames, c.held_secondary_frames), (0, 0));
    }
    assert!(h.requests.is_empty());
}

#[test]
fn test_udp_reorder_beyond_window_is_datagram_mismatch() {
    let mut h = H::with(Config { datagram_window: 2, ..Config::default() });
    let ps: Vec<Vec<u8>> = (0..6u8).map(|i| udp(&[i; 10]).build()).collect();
    for p in &ps {
        h.p(p, 1);
    }
    // Secondary datagram 5 first: 5 positions away from its counterpart (> 2), and every
    // primary it could match (0..=2) is there and differs: a miscompare at once.
    let evs = h.s(&ps[5], 2);
    assert_eq!(H::ckpts(&evs), vec!["datagram-mismatch"]);
    // Within the window (distance 2) it would have waited.
    let mut h = H::with(Config { datagram_window: 2, ..Config::default() });
    for p in &ps[..3] {
        h.p(p, 1);
    }
    assert_eq!(H::ckpts(&h.s(&ps[2], 2)), Vec::<&str>::new());
    assert!(h
        .shard
        .flow_status(&match wire::parse(&ps[0]) {
            Class::Datagram(k, _) => k,
            _ => unreachable!(),
        })
        .is_some_and(|s| !s.diverged && s.held_primary == 3));
}

#[test]
fn test_udp_secondary_silent_is_timeout_primary_exactly() {
    let mut h = H::new();
    h.p(&udp(b"x").build(), 10);
    assert_eq!(h.shard.next_deadline(), Some(Timestamp::from_millis(3010)));
    assert_eq!(H::ckpts(&h.tick(3009)), Vec::<&str>::new());
    assert_eq!(H::ckpts(&h.tick(3010)), vec!["timeout-primary"]);
    let mut h = H::new();
    h.s(&udp(b"x").build(), 10);
    assert_eq!(H::ckpts(&h.tick(3010)), vec!["timeout-secondary"]);
}

/// A primary datagram whose copy is the oldest held secondary datagram, with no primary one
/// waiting ahead of it, leaves at once and takes no memory: the memory budget does not drop
/// it. One that has to wait is still dropped past the budget (SPEC §6).
#[test]
fn test_a_datagram_matched_on_arrival_is_not_dropped_for_the_memory_budget() {
    let mut h = H::with(Config { held_frames_budget: 4, ..Config::default() });
    let a = udp(b"ping").build();
    assert!(h.s(&a, 0).is_empty());
    for i in 0..3u8 {
        assert!(h.p(&udp_to(7, &[i]), 1).is_empty());
    }
    assert_eq!(h.shard.counters().held_frames(), 4);
    assert_eq!(h.p(&a, 2), vec![CONSUMED, Ev::Rel(a.clone(), Via::Match)]);
    assert_eq!(h.shard.counters().held_frames(), 3);
    assert!(h.requests.is_empty());

    assert!(h.p(&udp_to(7, b"w"), 3).is_empty());
    let evs = h.p(&udp_to(7, b"x"), 4);
    assert_eq!(evs, vec![Ev::Ckpt("resource-pressure"), Ev::Drop(Side::Primary, DropReason::MemoryBudget)]);
    // A held copy that does not match is no reason to let a primary datagram past the budget.
    let mut h = H::with(Config { held_frames_budget: 4, ..Config::default() });
    assert!(h.s(&udp(b"pong").build(), 0).is_empty());
    for i in 0..3u8 {
        assert!(h.p(&udp_to(7, &[i]), 1).is_empty());
    }
    let evs = h.p(&udp(b"PONG").build(), 2);
    assert_eq!(evs, vec![Ev::Ckpt("resource-pressure"), Ev::Drop(Side::Primary, DropReason::MemoryBudget)]);
}

#[test]
fn test_udp_queue_overflow_requests_and_never_drops_primary() {
    let mut h = H::with(Config { max_queue_size: 2, held_frames_budget: 8, ..Config::default() });
    let mut ck = Vec::new();
    for i in 0..3u8 {
        ck.extend(H::ckpts(&h.p(&udp(&[i]).build(), 1)));
    }
    assert_eq!(ck, vec!["queue-overflow"]);
    assert_eq!(h.shard.counters().held_primary_frames, 3);
    assert_eq!(rels(&h.done(2)).len(), 3);
}

#[test]
fn test_icmp_echo_keyed_by_id_and_compared() {
    let mut h = H::new();
    let echo =
        |id: u16, data: &[u8]| IpFrame { proto: 1, payload: icmp_echo(false, id, 1, data), ..IpFrame::default() };
    let p = echo(7, b"ping").build();
    let key = wire::parse(&p).key().copied().expect("key");
    assert_eq!(key.to_string(), "icmp 10.0.0.2 > 10.0.0.1 id 7");
    h.p(&p, 1);
    // Another session's reply does not disturb this one.
    h.p(&echo(8, b"pong").build(), 1);
    let evs = h.s(&IpFrame { ip_id: 99, ..echo(7, b"ping") }.build(), 2);
    assert_eq!(rels(&evs), vec![(p, Via::Match)]);
    let mut h = H::with(Config { datagram_window: 0, ..Config::default() });
    h.p(&echo(7, b"ping").build(), 1);
    assert_eq!(H::ckpts(&h.s(&echo(7, b"pinG").build(), 2)), vec!["datagram-mismatch"]);
}

#[test]
fn test_icmpv6_echo_over_ipv6_and_qinq() {
    let (src, dst) = v6_pair();
    let mut h = H::new();
    let f = |ttl: u8| IpFrame {
        src,
        dst,
        proto: 58,
        ttl,
        vlans: vec![10, 20],
        payload: icmpv6_echo(src, dst, false, 3, 1, b"v6"),
        ..IpFrame::default()
    };
    let p = f(64).build();
    let key = wire::parse(&p).key().copied().expect("key");
    assert_eq!(key.to_string(), "icmpv6 vlan 10.20 2001:db8::2 > 2001:db8::1 id 3");
    h.p(&p, 1);
    assert_eq!(rels(&h.s(&f(1).build(), 2)), vec![(p, Via::Match)]);
    // A different VLAN is a different flow: no match.
    let mut other = f(64);
    other.vlans = vec![10, 21];
    h.p(&f(64).build(), 3);
    assert!(rels(&h.s(&other.build(), 4)).is_empty());
}

#[test]
fn test_other_ip_compares_payload_not_ip_header() {
    let gre = |id: u32, ttl: u8, data: &[u8]| IpFrame {
        proto: 47,
        ip_id: id,
        ttl,
        payload: data.to_vec(),
        ..IpFrame::default()
    };
    let mut h = H::with(Config { datagram_window: 0, ..Config::default() });
    let p = gre(1, 64, b"\x00\x00\x08\x00inner").build();
    h.p(&p, 1);
    assert_eq!(rels(&h.s(&gre(4242, 60, b"\x00\x00\x08\x00inner").build(), 2)), vec![(p, Via::Match)]);
    h.p(&gre(2, 64, b"\x00\x00\x08\x00inner").build(), 3);
    let evs = h.s(&gre(2, 64, b"\x00\x00\x08\x00innex").build(), 4);
    assert_eq!(H::ckpts(&evs), vec!["other-mismatch"]);
    assert_eq!(h.requests[0].flow, "ip47 10.0.0.2 > 10.0.0.1");
}

#[test]
fn test_non_ip_compare_policy() {
    let mut arp = IpFrame::default().build();
    arp[12] = 0x08;
    arp[13] = 0x06;
    let mut h = H::with(Config { non_ip_policy: NonIpPolicy::Compare, datagram_window: 0, ..Config::default() });
    assert_eq!(h.p(&arp, 1), vec![]);
    assert_eq!(rels(&h.s(&arp, 2)), vec![(arp.clone(), Via::Match)]);
    assert_eq!(h.shard.counters().non_ip_compared, 2);
    let mut other = arp.clone();
    other[30] ^= 1;
    h.p(&arp, 3);
    assert_eq!(H::ckpts(&h.s(&other, 4)), vec!["other-mismatch"]);
    assert_eq!(h.requests[0].flow, "non-ip");
    // Malformed frames go the same way.
    let mut h = H::with(Config { non_ip_policy: NonIpPolicy::Compare, ..Config::default() });
    h.p(&[1, 2, 3], 1);
    assert_eq!(rels(&h.s(&[1, 2, 3], 2)), vec![(vec![1, 2, 3], Via::Match)]);
    // Passthrough (default) is unchanged.
    let mut h = H::new();
    assert_eq!(rels(&h.p(&arp, 1)), vec![(arp.clone(), Via::Passthrough)]);
}

fn big_udp(n: usize, seed: u8) -> IpFrame {
    let data: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect();
    IpFrame { ip_id: 0x1234, ..udp(&data) }
}

#[test]
fn test_fragments_split_differently_match_and_release_in_primary_order() {
    let mut h = H::new();
    let d = big_udp(1000, 1);
    let pf = d.fragments(&[400, 800]);
    let sf = IpFrame { ip_id: 0x9999, ..d.clone() }.fragments(&[96, 504, 704]);
    assert_eq!(pf.len(), 3);
    // Primary fragments arrive out of order: 2, 0, 1.
    for (i, k) in [2usize, 0, 1].into_iter().enumerate() {
        assert_eq!(h.p(&pf[k], i as u64), vec![]);
    }
    let mut evs = Vec::new();
    for (i, f) in sf.iter().enumerate().rev() {
        evs.extend(h.s(f, 10 + i as u64));
    }
    assert_eq!(rels(&evs), vec![(pf[2].clone(), Via::Match), (pf[0].clone(), Via::Match), (pf[1].clone(), Via::Match)]);
    assert!(h.requests.is_empty());
    assert_eq!(h.shard.counters().reassembled, 2);
    assert_eq!(h.shard.counters().held_primary_bytes, 0);
}

#[test]
fn test_fragment_payload_differs_is_caught_before_release() {
    let mut h = H::with(Config { datagram_window: 0, ..Config::default() });
    let d = big_udp(600, 1);
    let mut changed = d.clone();
    changed.payload[450] ^= 0x40;
    for f in d.fragments(&[296]) {
        h.p(&f, 1);
    }
    let mut evs = Vec::new();
    for f in changed.fragments(&[200, 400]) {
        evs.extend(h.s(&f, 2));
    }
    assert_eq!(H::ckpts(&evs), vec!["datagram-mismatch"]);
    assert!(rels(&evs).is_empty());
    assert!(h.requests[0].detail.contains("first difference at byte 450"), "{}", h.requests[0].detail);
    assert_eq!(rels(&h.done(3)).len(), 2);
}

#[test]
fn test_fragment_missing_is_fragment_timeout_then_flush() {
    let mut h = H::new();
    let d = big_udp(600, 1);
    let pf = d.fragments(&[296]);
    h.p(&pf[0], 5);
    assert_eq!(H::ckpts(&h.tick(3004)), Vec::<&str>::new());
    assert_eq!(H::ckpts(&h.tick(3005)), vec!["fragment-timeout"]);
    assert_eq!(h.shard.counters().held_primary_frames, 1);
    assert_eq!(rels(&h.done(3006)), vec![(pf[0].clone(), Via::Flush)]);
    // The rest of that datagram passes through after the flush (tombstone).
    assert_eq!(rels(&h.p(&pf[1], 3007)), vec![(pf[1].clone(), Via::Passthrough)]);
    // A secondary partial that never completes: dropped at its deadline, also a request.
    let mut h = H::new();
    h.s(&d.fragments(&[296])[0], 0);
    let evs = h.tick(3000);
    assert_eq!(H::ckpts(&evs), vec!["fragment-timeout"]);
    assert!(evs.contains(&Ev::Drop(Side::Secondary, DropReason::ReassemblyFailed)));
}

#[test]
fn test_overlapping_fragments_poison_the_datagram() {
    let d = big_udp(64, 1);
    // Primary: conflicting overlap; frames held (never released unverified), then the
    // fragment-timeout checkpoint flushes them in their order.
    let mut h = H::new();
    let a = d.fragment(0, 32);
    let b = d.fragment_with(16, &[0xee; 48], false);
    assert_eq!(h.p(&a, 0), vec![]);
    assert_eq!(h.p(&b, 1), vec![]);
    assert_eq!(h.shard.counters().reassembly_failed, 1);
    assert_eq!(H::ckpts(&h.tick(3000)), vec!["fragment-timeout"]);
    assert_eq!(rels(&h.done(3001)), vec![(a.clone(), Via::Flush), (b.clone(), Via::Flush)]);
    // Secondary: dropped at once, later fragments too.
    let mut h = H::new();
    h.s(&a, 0);
    assert!(h.s(&b, 1).contains(&Ev::Drop(Side::Secondary, DropReason::ReassemblyFailed)));
    assert_eq!(h.s(&d.fragment(32, 32), 2), vec![Ev::Drop(Side::Secondary, DropReason::ReassemblyFailed)]);
    assert_eq!(h.shard.counters().held_secondary_frames, 0);
    // An exact duplicate is harmless: released with its datagram, in arrival order.
    let mut h = H::new();
    h.p(&a, 0);
    h.p(&a, 1);
    h.p(&d.fragment(32, 40), 2);
    let evs = h.s(&d.build(), 3);
    assert_eq!(rels(&evs).len(), 3);
    assert!(h.requests.is_empty());
}

#[test]
fn test_ipv6_fragments_and_reassembled_udp_key() {
    let mut h = H::new();
    let d = big_udp(900, 3).v6();
    let pf = d.fragments(&[448]);
    let key = wire::parse(&pf[1]).key().copied().expect("key");
    assert_eq!((key.proto, key.src_port), (17, 0));
    for f in &pf {
        h.p(f, 1);
    }
    // The secondary sends the same datagram unfragmented: still equal.
    let evs = h.s(&d.build(), 2);
    assert_eq!(rels(&evs).len(), 2);
    let st = h.shard.flows_by_held(10);
    assert!(st.iter().any(|(k, _)| k.to_string() == "udp [2001:db8::2]:53 > [2001:db8::1]:40000"), "{st:?}");
}

#[test]
fn test_fragment_flood_memory_is_bounded() {
    let cfg = Config { max_reassembly_datagrams: 8, max_queue_size: 16, held_frames_budget: 32, ..Config::default() };
    let mut h = H::with(cfg);
    let mut max_bytes = 0;
    for i in 0..500u32 {
        let f = IpFrame { ip_id: i, ..big_udp(64, 1) }.fragment(0, 32);
        h.p(&f, u64::from(i));
        h.s(&f, u64::from(i));
        max_bytes = max_bytes.max(h.shard.counters().held_primary_bytes + h.shard.counters().held_secondary_bytes);
    }
    // The shard's memory budget (32 frames of 80 bytes) bounds partials and parked frames.
    assert!(max_bytes <= 32 * 80, "{max_bytes}");
    assert!(h.shard.counters().requests(CheckpointReason::ResourcePressure) >= 1);
    assert!(h.shard.counters().dropped(Side::Primary, DropReason::ReassemblyFull) > 0);
    h.done(1000);
    assert_eq!(h.shard.counters().held_primary_frames, 0);
}

#[test]
fn test_failover_and_accounting_with_datagrams() {
    let mut h = H::new();
    h.p(&udp(b"a").build(), 1);
    h.p(&big_udp(600, 1).fragments(&[296])[0], 1);
    h.s(&udp(b"b").build(), 1);
    h.shard.failover(Side::Primary, Timestamp::from_millis(2));
    let evs = h.drain();
    assert_eq!(rels(&evs).len(), 2);
    assert_eq!(rels(&h.p(&udp(b"c").build(), 3)), vec![(udp(b"c").build(), Via::Passthrough)]);
}

#[test]
fn test_tcp_over_qinq_and_ipv6_resegmented() {
    let (src, dst) = v6_pair();
    let c = Conn::default();
    let seg = |off: u32, data: &[u8], vlans: &[u16], v6: bool| {
        let t =
            TcpFrame { seq: c.seq(off), ack: c.ack, flags: flags::ACK, payload: data.to_vec(), ..c.template.clone() };
        let (s, d) = if v6 { (src, dst) } else { (std::net::IpAddr::V4(t.src), std::net::IpAddr::V4(t.dst)) };
        t.to_ip(s, d, vlans).build()
    };
    for (vlans, v6) in [(&[100u16, 200][..], false), (&[][..], true), (&[7][..], true)] {
        let mut h = H::new();
        h.p(&seg(0, b"abc", vlans, v6), 1);
        h.p(&seg(3, b"defghij", vlans, v6), 1);
        let evs = h.s(&seg(0, b"abcdefghij", vlans, v6), 2);
        assert_eq!(rels(&evs).len(), 2, "{vlans:?} {v6}");
        assert!(h.requests.is_empty());
    }
}

#[test]
fn test_shutdown_flush_releases_like_a_checkpoint_but_is_not_counted_as_one() {
    let mut h = H::new();
    let c = Conn::default();
    h.p(&c.data(0, b"held"), 1);
    h.shard.flush_for_shutdown(Timestamp::from_millis(2));
    let ev = h.drain();
    assert_eq!(ev, vec![Ev::Rel(c.data(0, b"held"), Via::Flush)]);
    assert_eq!(h.shard.counters().checkpoints_completed, 0);
}

#[test]
fn test_proxy_mode_rewrites_the_client_ack_for_the_secondary_once_the_offset_is_known() {
    use crate::ClientRewrite;
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    let primary = Conn::default(); // ISN 1000
    let secondary = Conn { isn: 7000, ..Conn::default() };
    let client_ack = |ack: u32| ProxyPair::client(ack, 0, 502, flags::ACK);
    // No connection yet: mirrored as it is.
    let mut f = client_ack(1001);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), ClientRewrite::Unchanged);
    h.p(&primary.syn_ack(), 1);
    let mut f = client_ack(1001);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), ClientRewrite::OffsetUnknown);
    h.s(&secondary.syn_ack(), 2);
    let mut f = client_ack(1001);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), ClientRewrite::Rewritten);
    let Class::Tcp(_, seg) = wire::parse(&f) else { panic!("tcp") };
    assert_eq!(seg.ack, 7001, "acknowledges the secondary's SYN-ACK");
    // A checkpoint gives the secondary the primary's TCP state: offset 0 from then on.
    h.done(3);
    let mut f = client_ack(1011);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), ClientRewrite::Unchanged);
    assert_eq!(f, client_ack(1011));
}

#[test]
fn test_compare_mode_never_rewrites_client_frames() {
    let mut h = H::new();
    let c = Conn::default();
    h.p(&c.syn_ack(), 1);
    let mut f = TcpFrame {
        src: std::net::Ipv4Addr::new(10, 0, 0, 1),
        dst: std::net::Ipv4Addr::new(10, 0, 0, 2),
        sport: 40000,
        dport: 80,
        ack: 1001,
        ..TcpFrame::default()
    }
    .build();
    let before = f.clone();
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Unchanged);
    assert_eq!(f, before);
}

#[test]
fn test_proxy_mode_connection_seen_mid_stream_has_offset_zero() {
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    let c = Conn::default();
    // No SYN on either side: the secondary is a checkpointed copy, same sequence space.
    assert_eq!(h.p(&c.data(0, b"abc"), 1), vec![]);
    assert_eq!(
        h.s(&c.data(0, b"abc"), 2),
        vec![Ev::Rel(c.data(0, b"abc"), Via::Match), Ev::Drop(Side::Secondary, DropReason::Consumed)]
    );
}

/// Proxy-mode fixtures: a primary (ISN 1000, TSval clock at 50 000) and a secondary (ISN 7000,
/// TSval clock at 90 000) answering the same client SYN, and client frames of that connection.
struct ProxyPair {
    primary: Conn,
    secondary: Conn,
}

impl ProxyPair {
    const P_TS: u32 = 50_000;
    const S_TS: u32 = 90_000;
    fn new() -> Self {
        let with_ts = |isn: u32, ts: u32| {
            let mut o = timestamp_option(ts, 777);
            o.extend([1, 3, 3, 7]); // window scale 7
            Conn { isn, template: TcpFrame { options: o, ..TcpFrame::default() }, ..Conn::default() }
        };
        ProxyPair { primary: with_ts(1000, Self::P_TS), secondary: with_ts(7000, Self::S_TS) }
    }
    /// A client frame (10.0.0.1:40000 → 10.0.0.2:80) with the given ACK, TSecr, window and
    /// flags.
    fn client(ack: u32, tsecr: u32, window: u16, flags: u8) -> Vec<u8> {
        let mut options = timestamp_option(777, tsecr);
        if flags & flags::SYN != 0 {
            options.extend([1, 3, 3, 7]);
        }
        TcpFrame {
            src: std::net::Ipv4Addr::new(10, 0, 0, 1),
            dst: std::net::Ipv4Addr::new(10, 0, 0, 2),
            sport: 40000,
            dport: 80,
            seq: 5001,
            ack,
            flags,
            window,
            options,
            ..TcpFrame::default()
        }
        .build()
    }
    /// `h` after the client's SYN and both SYN-ACKs.
    fn opened(&self) -> H {
        let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
        h.shard.observe_client(&Self::client(0, 0, 64_240, flags::SYN), Timestamp::from_millis(0));
        h.p(&self.primary.syn_ack(), 1);
        h.s(&self.secondary.syn_ack(), 2);
        h
    }
}

fn ack_and_tsecr(f: &[u8]) -> (u32, Option<u32>) {
    let Class::Tcp(_, seg) = wire::parse(f) else { panic!("tcp") };
    (seg.ack, crate::proxy::timestamps(f, &seg).map(|(_, e)| e))
}

#[test]
fn test_proxy_mode_moves_the_client_tsecr_onto_the_secondary_clock() {
    let pair = ProxyPair::new();
    let h = pair.opened();
    // The client's handshake ACK echoes the primary's SYN-ACK TSval; the secondary must see
    // its own (Linux drops a handshake ACK whose TSecr it never sent: TSEcrRejected).
    let mut f = ProxyPair::client(1001, ProxyPair::P_TS, 502, flags::ACK);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Rewritten);
    assert_eq!(ack_and_tsecr(&f), (7001, Some(ProxyPair::S_TS)));
    assert!(crate::fixtures::tcp_checksum_valid(&f));
    // Later echoes move by the same clock offset.
    let mut f = ProxyPair::client(1001, ProxyPair::P_TS + 40, 502, flags::ACK);
    h.shard.rewrite_client_for_secondary(&mut f);
    assert_eq!(ack_and_tsecr(&f), (7001, Some(ProxyPair::S_TS + 40)));
    // An ACK of bytes the secondary has not sent (a flush released the primary's ahead of it)
    // is capped at what it sent: Linux would ignore it, and every later one.
    let mut f = ProxyPair::client(1101, ProxyPair::P_TS + 40, 502, flags::ACK);
    h.shard.rewrite_client_for_secondary(&mut f);
    assert_eq!(ack_and_tsecr(&f), (7001, Some(ProxyPair::S_TS + 40)));
    assert!(crate::fixtures::tcp_checksum_valid(&f));
}

#[test]
fn test_proxy_mode_guest_opened_connection_rewrites_the_client_syn_ack() {
    // The guests open the connection: their SYNs carry the clocks, the client's SYN-ACK
    // echoes the primary's.
    let pair = ProxyPair::new();
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    let syn = |c: &Conn| TcpFrame { seq: c.isn, ack: 0, flags: flags::SYN, ..c.template.clone() }.build();
    h.p(&syn(&pair.primary), 1);
    h.s(&syn(&pair.secondary), 2);
    let mut f = ProxyPair::client(1001, ProxyPair::P_TS, 64_240, flags::SYN | flags::ACK);
    h.shard.observe_client(&f, Timestamp::from_millis(3));
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Rewritten);
    assert_eq!(ack_and_tsecr(&f), (7001, Some(ProxyPair::S_TS)));
    assert!(crate::fixtures::tcp_checksum_valid(&f));
}

#[test]
fn test_standalone_completion_keeps_offsets_and_compares_on_after_a_divergence() {
    let pair = ProxyPair::new();
    let (p, s) = (&pair.primary, &pair.secondary);
    let mut h = pair.opened();
    assert_eq!(H::ckpts(&h.p(&p.data(0, b"abcdef"), 3)), Vec::<&str>::new());
    // One differing byte, and the secondary's segment reaches past what the primary sent.
    let ev = h.s(&s.data(0, b"abXdefghij"), 4);
    assert_eq!(H::ckpts(&ev), vec!["tcp-payload-mismatch"]);
    h.shard.standalone_completion(Timestamp::from_millis(5));
    let ev = h.drain();
    assert_eq!(H::released(&ev), vec![(p.data(0, b"abcdef").as_slice(), Via::Flush)]);
    // The secondary's "ghij" was kept: the primary's next bytes compare against it.
    let ev = h.p(&p.data(6, b"ghij"), 6);
    assert_eq!(H::released(&ev), vec![(p.data(6, b"ghij").as_slice(), Via::Match)]);
    // More data on both sides: compared in the learned spaces, no new checkpoint.
    h.p(&p.data(10, b"klm"), 7);
    let ev = h.s(&s.data(10, b"klm"), 8);
    assert_eq!(H::released(&ev), vec![(p.data(10, b"klm").as_slice(), Via::Match)]);
    assert_eq!(h.tick(60_000), vec![]);
    assert_eq!(h.shard.counters().checkpoint_requests.iter().sum::<u64>(), 1);
    // Client frames still go to the secondary in its own space and clock.
    let mut f = ProxyPair::client(1014, ProxyPair::P_TS + 9, 502, flags::ACK);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Rewritten);
    assert_eq!(ack_and_tsecr(&f), (7014, Some(ProxyPair::S_TS + 9)));
}

#[test]
fn test_a_real_checkpoint_resets_offsets_and_drops_all_secondary_data() {
    let pair = ProxyPair::new();
    let mut h = pair.opened();
    h.p(&pair.primary.data(0, b"abc"), 3);
    h.s(&pair.secondary.data(0, b"abXdef"), 4);
    let ev = h.done(5);
    assert!(ev.contains(&Ev::Drop(Side::Secondary, DropReason::Flushed)));
    assert_eq!(h.shard.counters().held_secondary_frames, 0);
    let mut f = ProxyPair::client(1004, ProxyPair::P_TS, 502, flags::ACK);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Unchanged);
}

#[test]
fn test_proxy_queue_bound_follows_the_client_window() {
    let pair = ProxyPair::new();
    let cfg = Config { mode: Mode::Proxy, max_queue_size: 8, ..Config::default() };
    let mut h = H::with(cfg);
    h.shard.observe_client(&ProxyPair::client(0, 0, 64_240, flags::SYN), Timestamp::from_millis(0));
    h.p(&pair.primary.syn_ack(), 1);
    h.s(&pair.secondary.syn_ack(), 2);
    // Window field 100 with scale 7: 12 800 bytes; the bound is that plus a quarter plus 64 KiB.
    h.shard.observe_client(&ProxyPair::client(1001, ProxyPair::P_TS, 100, flags::ACK), Timestamp::from_millis(3));
    let payload = [7u8; 1000];
    let mut n = 0u32;
    // 60 primary segments of 1000 bytes (about 64 KB of frames) run ahead of a silent
    // secondary: more than max_queue_size frames, yet within the window's bound.
    while n < 60 {
        let ev = h.p(&pair.primary.data(n * 1000, &payload), 10 + u64::from(n));
        assert_eq!(H::ckpts(&ev), Vec::<&str>::new(), "segment {n}");
        n += 1;
    }
    // Past the bound: queue-overflow (and never a drop of primary output here).
    let mut overflow = false;
    while n < 100 && !overflow {
        overflow = H::ckpts(&h.p(&pair.primary.data(n * 1000, &payload), 10 + u64::from(n))) == ["queue-overflow"];
        n += 1;
    }
    assert!(overflow && n > 70, "overflow after {n} segments");
    assert_eq!(h.shard.counters().primary_dropped.iter().sum::<u64>(), 0);
}

#[test]
fn test_compare_mode_queue_bound_is_max_queue_size() {
    let mut h = H::with(Config { max_queue_size: 8, ..Config::default() });
    let c = Conn::default();
    let mut reasons = Vec::new();
    for n in 0..9u32 {
        reasons.extend(H::ckpts(&h.p(&c.data(n * 10, &[1; 10]), u64::from(n))));
    }
    assert_eq!(reasons, vec!["queue-overflow"]);
}

#[test]
fn test_failover_to_the_secondary_moves_its_output_into_the_primary_space() {
    let pair = ProxyPair::new();
    let (p, s) = (&pair.primary, &pair.secondary);
    let mut h = pair.opened();
    h.p(&p.data(0, b"abc"), 3);
    h.s(&s.data(0, b"abc"), 4);
    h.shard.failover(Side::Secondary, Timestamp::from_millis(5));
    h.drain();
    // The secondary's next segment (its space, its clock) leaves as the primary would send it.
    let options = timestamp_option(ProxyPair::S_TS + 20, 777);
    let t = TcpFrame {
        seq: s.seq(3),
        ack: s.ack,
        flags: flags::ACK,
        payload: b"def".to_vec(),
        options,
        ..s.template.clone()
    };
    let seg = t.build();
    let ev = h.s(&seg, 6);
    let [Ev::Rel(out, Via::Passthrough)] = ev.as_slice() else { panic!("{ev:?}") };
    let Class::Tcp(_, o) = wire::parse(out) else { panic!("tcp") };
    assert_eq!(o.seq, p.seq(3), "the primary's sequence space");
    assert_eq!(crate::proxy::timestamps(out, &o), Some((ProxyPair::P_TS + 20, 777)), "the primary's clock");
    assert_eq!(wire::payload(out, &o), Some(&b"def"[..]));
    assert!(crate::fixtures::tcp_checksum_valid(out));
    assert_eq!(h.shard.counters().failover_rewritten, 1);
    // The primary's frames are dropped now.
    assert_eq!(h.p(&p.data(3, b"def"), 7), vec![Ev::Drop(Side::Primary, DropReason::FailedOver)]);
    // Client frames keep being rewritten for the secondary.
    let mut f = ProxyPair::client(1007, ProxyPair::P_TS + 20, 502, flags::ACK);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Rewritten);
    assert_eq!(ack_and_tsecr(&f), (7007, Some(ProxyPair::S_TS + 20)));
    // A connection opened after the failover is the secondary's own: nothing moves.
    let other = Conn { template: TcpFrame { dport: 40001, ..s.template.clone() }, ..s.clone() };
    let ev = h.s(&other.syn_ack(), 9);
    assert_eq!(ev, vec![Ev::Rel(other.syn_ack(), Via::Passthrough)]);
    let ev = h.s(&other.data(0, b"new"), 10);
    assert_eq!(ev, vec![Ev::Rel(other.data(0, b"new"), Via::Passthrough)]);
    // Port reuse of the old 4-tuple after the failover: a new incarnation, nothing moves.
    let reborn = Conn { isn: 123_456, ..s.clone() };
    assert_eq!(h.s(&reborn.syn_ack(), 11), vec![Ev::Rel(reborn.syn_ack(), Via::Passthrough)]);
    assert_eq!(h.s(&reborn.data(0, b"x"), 12), vec![Ev::Rel(reborn.data(0, b"x"), Via::Passthrough)]);
}

#[test]
fn test_failover_to_the_secondary_forwards_what_it_sent_ahead_of_the_primary() {
    let pair = ProxyPair::new();
    let (p, s) = (&pair.primary, &pair.secondary);
    let mut h = pair.opened();
    h.p(&p.data(0, b"abc"), 3);
    // The secondary ran ahead: "abcdef" while the primary sent "abc" and then died.
    let ev = h.s(&s.data(0, b"abcdef"), 4);
    assert_eq!(H::released(&ev), vec![(p.data(0, b"abc").as_slice(), Via::Match)]);
    h.shard.failover(Side::Secondary, Timestamp::from_millis(5));
    let ev = h.drain();
    let released: Vec<_> = H::released(&ev);
    assert_eq!(released.len(), 1, "{ev:?}");
    let Class::Tcp(_, seg) = wire::parse(released[0].0) else { panic!("tcp") };
    assert_eq!(seg.seq, p.seq(0), "moved into the primary's space");
    assert_eq!(wire::payload(released[0].0, &seg), Some(&b"abcdef"[..]));
    assert!(crate::fixtures::tcp_checksum_valid(released[0].0));
    assert_eq!(h.shard.counters().held_secondary_frames, 0);
}

/// A guest-opened connection from guest port `port` (ISN `isn`) to the client's port 9090.
fn guest_opened(port: u16, isn: u32) -> Conn {
    Conn { isn, ack: 0, template: TcpFrame { sport: port, dport: 9090, ..TcpFrame::default() } }
}

fn guest_syn(c: &Conn) -> Vec<u8> {
    TcpFrame { seq: c.isn, ack: 0, flags: flags::SYN, ..c.template.clone() }.build()
}

/// The client's frame to guest port `port` acknowledging `ack`.
fn client_to(port: u16, ack: u32, flags: u8) -> Vec<u8> {
    TcpFrame {
        src: std::net::Ipv4Addr::new(10, 0, 0, 1),
        dst: std::net::Ipv4Addr::new(10, 0, 0, 2),
        sport: 9090,
        dport: port,
        seq: 300,
        ack,
        flags,
        ..TcpFrame::default()
    }
    .build()
}

fn ports_of(f: &[u8]) -> (u16, u16) {
    let Class::Tcp(key, _) = wire::parse(f) else { panic!("tcp") };
    (key.src_port, key.dst_port)
}

#[test]
fn test_guest_opened_connections_pair_the_secondary_port_with_the_primary_port() {
    for secondary_first in [false, true] {
        let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
        let (p, s) = (guest_opened(40_000, 1000), guest_opened(50_000, 7000));
        let released = if secondary_first {
            assert_eq!(h.s(&guest_syn(&s), 1), vec![], "parked until the primary's SYN");
            h.p(&guest_syn(&p), 2)
        } else {
            assert_eq!(h.p(&guest_syn(&p), 1), vec![], "held until the secondary's SYN");
            h.s(&guest_syn(&s), 2)
        };
        assert_eq!(H::released(&released), vec![(guest_syn(&p).as_slice(), Via::Match)], "first {secondary_first}");
        // The client answers the primary's port; the secondary's copy goes to its own port, in
        // its own sequence space.
        let mut f = client_to(40_000, 1001, flags::SYN | flags::ACK);
        assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Rewritten);
        assert_eq!(ports_of(&f), (9090, 50_000));
        assert_eq!(ack_and_tsecr(&f).0, 7001);
        assert!(crate::fixtures::tcp_checksum_valid(&f));
        // Data on the two ports compares as one connection.
        let (p, s) = (Conn { ack: 301, ..p }, Conn { ack: 301, ..s });
        assert_eq!(h.p(&p.data(0, b"hello"), 3), vec![]);
        let ev = h.s(&s.data(0, b"hello"), 4);
        assert_eq!(H::released(&ev), vec![(p.data(0, b"hello").as_slice(), Via::Match)]);
        assert_eq!(h.tick(60_000), vec![]);
        assert_eq!(h.shard.counters().checkpoint_requests.iter().sum::<u64>(), 0);
        assert_eq!(h.shard.flow_count(), 1, "one connection, not two");
    }
}

#[test]
fn test_same_ports_need_no_pairing_and_a_real_checkpoint_forgets_aliases() {
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    let (p, s) = (guest_opened(40_000, 1000), guest_opened(40_000, 7000));
    h.p(&guest_syn(&p), 1);
    h.s(&guest_syn(&s), 2);
    let mut f = client_to(40_000, 1001, flags::SYN | flags::ACK);
    h.shard.rewrite_client_for_secondary(&mut f);
    assert_eq!(ports_of(&f), (9090, 40_000));
    // A second connection pairs 40001 with 50001; a checkpoint then makes the secondary the
    // primary's copy (its sockets use the primary's ports): the alias goes.
    let (p2, s2) = (guest_opened(40_001, 2000), guest_opened(50_001, 9000));
    h.p(&guest_syn(&p2), 3);
    h.s(&guest_syn(&s2), 4);
    let mut f = client_to(40_001, 2001, flags::SYN | flags::ACK);
    h.shard.rewrite_client_for_secondary(&mut f);
    assert_eq!(ports_of(&f), (9090, 50_001));
    h.done(5);
    let mut f = client_to(40_001, 2001, flags::ACK);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Unchanged);
    assert_eq!(ports_of(&f), (9090, 40_001));
}

#[test]
fn test_standalone_completion_of_a_timeout_does_not_time_out_again_at_once() {
    let pair = ProxyPair::new();
    let (p, s) = (&pair.primary, &pair.secondary);
    let mut h = pair.opened();
    // A hole on the secondary's side: its segment at 0 was lost, the one at 3 is held.
    h.p(&p.data(0, b"abc"), 10);
    h.s(&s.data(3, b"def"), 10);
    assert_eq!(H::ckpts(&h.tick(3_010)), vec!["timeout-primary"]);
    h.shard.standalone_completion(Timestamp::from_millis(3_011));
    h.drain();
    // The kept secondary segment starts a fresh window: no request right after the
    // completion, and it still matches the primary's next bytes.
    assert_eq!(h.tick(3_012), vec![]);
    let ev = h.p(&p.data(3, b"def"), 3_013);
    assert_eq!(H::released(&ev), vec![(p.data(3, b"def").as_slice(), Via::Match)]);
    assert_eq!(h.tick(60_000), vec![]);
}

#[test]
fn test_standalone_completion_keeps_secondary_data_once_and_never_after_the_primary_fin() {
    let pair = ProxyPair::new();
    let (p, s) = (&pair.primary, &pair.secondary);
    // The secondary's stream goes on where the primary's ended with a FIN: nothing would
    // ever consume its tail, so the completion drops it.
    let mut h = pair.opened();
    h.p(&p.data(0, b"ab"), 3);
    h.p(&p.fin(2), 3);
    assert_eq!(H::ckpts(&h.s(&s.data(0, b"abcd"), 4)), vec!["tcp-fin-mismatch"]);
    h.shard.standalone_completion(Timestamp::from_millis(5));
    h.drain();
    assert_eq!(h.shard.counters().held_secondary_frames, 0);
    // Data the primary never sends is kept by one completion, dropped by the next.
    let mut h = pair.opened();
    h.p(&p.data(0, b"ab"), 3);
    assert_eq!(H::ckpts(&h.s(&s.data(0, b"aXcdef"), 4)), vec!["tcp-payload-mismatch"]);
    h.shard.standalone_completion(Timestamp::from_millis(5));
    h.drain();
    assert_eq!(h.shard.counters().held_secondary_frames, 1);
    assert_eq!(H::ckpts(&h.tick(3_005)), vec!["timeout-secondary"]);
    h.shard.standalone_completion(Timestamp::from_millis(3_006));
    h.drain();
    assert_eq!(h.shard.counters().held_secondary_frames, 0);
    assert_eq!(h.tick(60_000), vec![]);
}

#[test]
fn test_a_retransmitted_parked_syn_pairs_once() {
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    let s = guest_opened(50_000, 7000);
    h.s(&guest_syn(&s), 1);
    assert_eq!(h.s(&guest_syn(&s), 2), vec![CONSUMED], "the retransmission replaces the parked copy");
    let p = guest_opened(40_000, 1000);
    assert_eq!(H::released(&h.p(&guest_syn(&p), 3)), vec![(guest_syn(&p).as_slice(), Via::Match)]);
    // A second primary connection to the same destination finds no secondary SYN waiting.
    let p2 = guest_opened(40_002, 3000);
    assert_eq!(h.p(&guest_syn(&p2), 4), vec![], "held: its secondary SYN has not come");
    let mut f = client_to(40_002, 3001, flags::SYN | flags::ACK);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::OffsetUnknown);
}

#[test]
fn test_a_client_rst_without_ack_reaches_the_secondary_port() {
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    h.p(&guest_syn(&guest_opened(40_000, 1000)), 1);
    h.s(&guest_syn(&guest_opened(50_000, 7000)), 2);
    let mut f = client_to(40_000, 0, flags::RST);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Rewritten);
    assert_eq!(ports_of(&f), (9090, 50_000));
    assert!(crate::fixtures::tcp_checksum_valid(&f));
}

#[test]
fn test_a_flow_opened_by_an_unanswered_client_syn_expires() {
    let cfg = Config { mode: Mode::Proxy, conn_idle_timeout: Duration::from_secs(10), ..Config::default() };
    let mut h = H::with(cfg);
    h.shard.observe_client(&ProxyPair::client(0, 0, 64_240, flags::SYN), Timestamp::from_millis(0));
    assert_eq!(h.shard.flow_count(), 1);
    h.tick(10_001);
    assert_eq!(h.shard.flow_count(), 0);
}

#[test]
fn test_after_a_failover_client_frames_wait_for_the_secondary_syn_ack_of_a_half_open_connection() {
    let pair = ProxyPair::new();
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    h.shard.observe_client(&ProxyPair::client(0, 0, 64_240, flags::SYN), Timestamp::from_millis(0));
    h.p(&pair.primary.syn_ack(), 1);
    // The primary dies before the secondary answered: its SYN-ACK leaves with the flush.
    h.shard.failover(Side::Secondary, Timestamp::from_millis(2));
    assert_eq!(H::released(&h.drain()), vec![(pair.primary.syn_ack().as_slice(), Via::Flush)]);
    let mut f = ProxyPair::client(1001, ProxyPair::P_TS, 502, flags::ACK);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::OffsetUnknown);
    // The secondary's SYN-ACK (which the client must not see: it already has the primary's)
    // teaches the offsets; it is forwarded in the primary's space.
    let ev = h.s(&pair.secondary.syn_ack(), 3);
    let [Ev::Rel(out, Via::Passthrough)] = ev.as_slice() else { panic!("{ev:?}") };
    let Class::Tcp(_, seg) = wire::parse(out) else { panic!("tcp") };
    assert_eq!(seg.seq, pair.primary.isn);
    let mut f = ProxyPair::client(1001, ProxyPair::P_TS, 502, flags::ACK);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Rewritten);
    assert_eq!(ack_and_tsecr(&f), (7001, Some(ProxyPair::S_TS)));
}

#[test]
fn test_a_full_table_evicts_the_least_recently_active_empty_flow() {
    let mut h = H::with(Config { max_flows: 3, ..Config::default() });
    let flow = |port: u16| Conn { template: TcpFrame { dport: port, ..TcpFrame::default() }, ..Conn::default() };
    let (a, b, c, d) = (flow(40001), flow(40002), flow(40003), flow(40004));
    for (k, conn) in [&a, &b, &c].into_iter().enumerate() {
        let f = conn.data(0, b"x");
        h.p(&f, k as u64 + 1);
        h.s(&f, k as u64 + 1);
    }
    // A is active again; B is now the least recently active.
    h.p(&a.data(1, b"y"), 10);
    h.s(&a.data(1, b"y"), 10);
    let f = d.data(0, b"z");
    h.p(&f, 11);
    assert_eq!(h.shard.counters().flows_evicted, 1);
    let key = |c: &Conn| *wire::parse(&c.data(0, b"x")).key().unwrap();
    assert!(h.shard.flow_status(&key(&b)).is_none(), "B was evicted");
    for kept in [&a, &c, &d] {
        assert!(h.shard.flow_status(&key(kept)).is_some());
    }
}

#[test]
fn test_udp_checksum_zero_on_one_side_matches_a_computed_one() {
    let mut h = H::new();
    let p = udp(b"same payload").build();
    let mut s = p.clone();
    // The secondary's stack left the (optional, IPv4) UDP checksum at 0.
    s[14 + 20 + 6] = 0;
    s[14 + 20 + 7] = 0;
    assert_ne!(p, s);
    assert_eq!(h.p(&p, 1), vec![]);
    assert_eq!(h.s(&s, 2), vec![Ev::Rel(p.clone(), Via::Match), CONSUMED]);
    // The payload still counts: a changed byte is not hidden by the checksum rule.
    let mut h = H::with(Config { datagram_window: 0, ..Config::default() });
    let mut s2 = s.clone();
    let last = s2.len() - 1;
    s2[last] ^= 1;
    h.p(&p, 1);
    assert_eq!(H::ckpts(&h.s(&s2, 2)), vec!["datagram-mismatch"]);
}

#[test]
fn test_a_keepalive_on_a_forgotten_connection_does_not_start_the_stream() {
    // A connection the table forgot (idle past conn_idle_timeout): both guests send a
    // keepalive at snd_nxt − 1 (zero length), then real data at snd_nxt.
    let mut h = H::new();
    let c = Conn::default();
    let keepalive = c.pure_ack(99, c.ack);
    assert_eq!(h.p(&keepalive, 1), vec![], "held until the secondary's keepalive shows its ACK");
    assert_eq!(h.s(&keepalive, 2), vec![CONSUMED, Ev::Rel(keepalive.clone(), Via::Match)]);
    // The answer arrives: compared from its own position, not from the probe's.
    assert_eq!(h.p(&c.data(100, b"answer"), 3), vec![]);
    let ev = h.s(&c.data(100, b"answer"), 4);
    assert_eq!(H::released(&ev), vec![(c.data(100, b"answer").as_slice(), Via::Match)]);
    assert_eq!(h.tick(60_000), vec![]);
}

#[test]
fn test_a_lone_rst_on_either_side_is_a_rst_mismatch_after_compare_timeout() {
    // Compare mode: the secondary's segments are already in the primary's space.
    let (pc, _) = conns();
    let sc = pc.clone();
    // The secondary alone resets: its RST is never transmitted, but the divergence is caught.
    let mut h = H::new();
    h.p(&pc.data(0, b"ab"), 1);
    h.s(&sc.data(0, b"ab"), 1);
    assert_eq!(h.s(&sc.rst(2), 10), vec![CONSUMED]);
    assert_eq!(h.tick(3_009), vec![]);
    assert_eq!(H::ckpts(&h.tick(3_010)), vec!["tcp-rst-mismatch"]);
    // The primary alone resets: its RST is held, then the same reason.
    let mut h = H::new();
    h.p(&pc.data(0, b"ab"), 1);
    h.s(&sc.data(0, b"ab"), 1);
    assert_eq!(h.p(&pc.rst(2), 10), vec![]);
    assert_eq!(H::ckpts(&h.tick(3_010)), vec!["tcp-rst-mismatch"]);
    // Both reset: released, nothing requested.
    let mut h = H::new();
    h.p(&pc.data(0, b"ab"), 1);
    h.s(&sc.data(0, b"ab"), 1);
    h.s(&sc.rst(2), 10);
    assert_eq!(H::released(&h.p(&pc.rst(2), 11)), vec![(pc.rst(2).as_slice(), Via::Match)]);
    assert_eq!(h.tick(60_000), vec![]);
}

#[test]
fn test_a_rst_against_the_primary_syn_ack_is_a_mismatch_at_once() {
    let (pc, sc) = conns();
    let mut h = H::new();
    assert_eq!(h.p(&pc.syn_ack(), 1), vec![]);
    let ev = h.s(&sc.rst(0), 2);
    assert_eq!(H::ckpts(&ev), vec!["tcp-rst-mismatch"]);
    assert!(h.requests.last().is_some_and(|r| r.detail.contains("SYN")));
}

#[test]
fn test_a_single_differing_reply_is_caught_after_reorder_grace_not_compare_timeout() {
    // A DNS answer: the two guests send different replies and nothing after.
    let mut h = H::new();
    assert_eq!(h.p(&udp(b"answer 10.0.0.7").build(), 100), vec![]);
    assert_eq!(h.s(&udp(b"answer 10.0.0.8").build(), 101), vec![]);
    assert_eq!(h.tick(105), vec![], "the secondary's answer has waited 4 ms only");
    assert_eq!(H::ckpts(&h.tick(106)), vec!["datagram-mismatch"]);
    assert!(h.requests.last().is_some_and(|r| r.detail.contains("first difference at byte")));
    // Reordering that resolves within the grace is no mismatch.
    let mut h = H::new();
    h.p(&udp(b"one").build(), 100);
    h.s(&udp(b"two").build(), 101);
    h.p(&udp(b"two").build(), 102);
    h.s(&udp(b"one").build(), 103);
    assert_eq!(h.tick(60_000), vec![]);
    assert_eq!(h.shard.counters().checkpoint_requests.iter().sum::<u64>(), 0);
}

#[test]
fn test_port_reuse_is_a_new_incarnation_whichever_syn_ack_comes_first() {
    for secondary_first in [false, true] {
        let mut h = H::new();
        let (p, s) = conns();
        // The old connection: data compared, never closed (the client rebooted).
        h.p(&p.syn_ack(), 1);
        h.s(&s.syn_ack(), 1);
        h.p(&p.data(0, b"old"), 2);
        h.s(&p.data(0, b"old"), 2);
        assert_eq!(h.shard.counters().held_primary_frames, 0);
        // The client reconnects from the same port: new ISNs on both guests.
        let (p2, s2) = (Conn { isn: 50_000, ack: 9001, ..p.clone() }, Conn { isn: 90_000, ack: 9001, ..s.clone() });
        let released = if secondary_first {
            assert_eq!(h.s(&s2.syn_ack(), 10), vec![CONSUMED]);
            h.p(&p2.syn_ack(), 11)
        } else {
            assert_eq!(h.p(&p2.syn_ack(), 10), vec![]);
            h.s(&s2.syn_ack(), 11)
        };
        assert_eq!(H::released(&released), vec![(p2.syn_ack().as_slice(), Via::Match)], "first {secondary_first}");
        h.p(&p2.data(0, b"new"), 12);
        let ev = h.s(&p2.data(0, b"new"), 13);
        assert_eq!(H::released(&ev), vec![(p2.data(0, b"new").as_slice(), Via::Match)]);
        assert_eq!(h.tick(60_000), vec![]);
    }
}

#[test]
fn test_a_lagging_secondary_datagram_released_by_the_flush_is_absorbed() {
    let mut h = H::new();
    // The primary answered twice; the checkpoint (for whatever reason) flushes both before the
    // lagging secondary's answers arrive.
    h.p(&udp(b"r1").build(), 1);
    h.p(&udp(b"r2").build(), 2);
    assert_eq!(rels(&h.done(3)).len(), 2);
    // The secondary's copies, sent before the checkpoint, arrive after it: absorbed.
    assert_eq!(h.s(&udp(b"r1").build(), 4), vec![CONSUMED]);
    assert_eq!(h.s(&udp(b"r2").build(), 5), vec![CONSUMED]);
    // New traffic lines up on both sides as before: no follow-on checkpoint.
    h.p(&udp(b"r3").build(), 6);
    assert_eq!(rels(&h.s(&udp(b"r3").build(), 7)), vec![(udp(b"r3").build(), Via::Match)]);
    assert_eq!(h.tick(60_000), vec![]);
    assert_eq!(h.shard.counters().checkpoint_requests.iter().sum::<u64>(), 0);
}

#[test]
fn test_idle_datagram_flows_go_sooner_than_tcp_connections() {
    let mut h = H::new();
    let (pc, _) = conns();
    h.p(&pc.data(0, b"a"), 0);
    h.s(&pc.data(0, b"a"), 0);
    h.p(&udp(b"q").build(), 0);
    h.s(&udp(b"q").build(), 0);
    assert_eq!(h.shard.flow_count(), 2);
    h.tick(300_000);
    assert_eq!(h.shard.flow_count(), 1, "the datagram flow went after 300 s, the connection stays");
}

#[test]
fn test_a_late_secondary_syn_ack_after_a_standalone_flush_teaches_the_offset() {
    let pair = ProxyPair::new();
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    h.shard.observe_client(&ProxyPair::client(0, 0, 64_240, flags::SYN), Timestamp::from_millis(0));
    h.p(&pair.primary.syn_ack(), 1);
    // Another flow's checkpoint completes (standalone) before the secondary answered.
    h.shard.standalone_completion(Timestamp::from_millis(2));
    assert_eq!(H::released(&h.drain()), vec![(pair.primary.syn_ack().as_slice(), Via::Flush)]);
    // The secondary's SYN-ACK is the counterpart, not a new incarnation.
    h.s(&pair.secondary.syn_ack(), 3);
    let mut f = ProxyPair::client(1001, ProxyPair::P_TS, 502, flags::ACK);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Rewritten);
    assert_eq!(ack_and_tsecr(&f), (7001, Some(ProxyPair::S_TS)));
    h.p(&pair.primary.data(0, b"hi"), 4);
    let ev = h.s(&pair.secondary.data(0, b"hi"), 5);
    assert_eq!(H::released(&ev), vec![(pair.primary.data(0, b"hi").as_slice(), Via::Match)]);
}

#[test]
fn test_a_flow_opened_only_by_a_client_syn_goes_after_linger() {
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    h.shard.observe_client(&ProxyPair::client(0, 0, 64_240, flags::SYN), Timestamp::from_millis(0));
    assert_eq!(h.shard.flow_count(), 1);
    h.tick(6_000);
    assert_eq!(h.shard.flow_count(), 0, "nobody answered: gone after linger (2 x compare_timeout)");
}

#[test]
fn test_absorbing_keeps_the_oldest_flushed_datagrams_and_ends_after_compare_timeout() {
    let mut h = H::new();
    for i in 0..20u8 {
        h.p(&udp(&[i]).build(), 1);
    }
    h.done(2);
    // The lagging secondary's oldest copies are absorbed.
    assert_eq!(h.s(&udp(&[0]).build(), 3), vec![CONSUMED]);
    assert_eq!(h.s(&udp(&[1]).build(), 3), vec![CONSUMED]);
    // compare_timeout after the flush an equal datagram is new output again: held.
    assert_eq!(h.s(&udp(&[2]).build(), 3_003), vec![]);
    assert_eq!(h.shard.counters().held_secondary_frames, 1);
}

#[test]
fn test_a_primary_reusing_a_port_for_a_new_guest_opened_connection_still_pairs() {
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    // Round 1: primary port 40000, secondary port 50000; closed by RSTs on both sides.
    let (p, s) = (guest_opened(40_000, 1000), guest_opened(50_000, 7000));
    h.p(&guest_syn(&p), 1);
    h.s(&guest_syn(&s), 2);
    let (p1, s1) = (Conn { ack: 301, ..p.clone() }, Conn { ack: 301, ..s.clone() });
    h.p(&p1.rst(0), 3);
    h.s(&s1.rst(0), 4);
    // Round 2: the primary's kernel picks 40000 again (the secondary 50001) while the old
    // connection still lingers: a new incarnation that must pair as the first did.
    let (p2, s2) = (guest_opened(40_000, 90_000), guest_opened(50_001, 70_000));
    assert_eq!(h.p(&guest_syn(&p2), 10), vec![], "held until the secondary's SYN");
    let ev = h.s(&guest_syn(&s2), 11);
    assert_eq!(H::released(&ev), vec![(guest_syn(&p2).as_slice(), Via::Match)]);
    let mut f = client_to(40_000, 90_001, flags::SYN | flags::ACK);
    assert_eq!(h.shard.rewrite_client_for_secondary(&mut f), crate::ClientRewrite::Rewritten);
    assert_eq!(ports_of(&f), (9090, 50_001));
    assert_eq!(ack_and_tsecr(&f).0, 70_001);
}

// ---- SPEC §4: a TCP segment that arrives as IP fragments is a segment of its connection ----

/// A data segment with a timestamp option (the two guests' clocks and windows differ, as real
/// stacks' do), fragmented at `cuts` of its IP payload, or whole when `cuts` is empty.
fn ts_segment(
    c: &Conn,
    offset: u32,
    payload: &[u8],
    tsval: u32,
    window: u16,
    ip_id: u32,
    cuts: &[usize],
) -> Vec<Vec<u8>> {
    let t = TcpFrame { options: timestamp_option(tsval, 77), window, ..c.data_segment(offset, payload, c.ack) };
    if cuts.is_empty() {
        return vec![t.build()];
    }
    let ip = t.to_ip(std::net::IpAddr::V4(t.src), std::net::IpAddr::V4(t.dst), &[]);
    crate::fixtures::IpFrame { ip_id, ..ip }.fragments(cuts)
}

fn bytes_of(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn test_fragmented_tcp_segment_joins_its_stream_and_leaves_in_flow_order() {
    let (pc, sc) = conns();
    let mut h = H::new();
    h.p(&pc.syn_ack(), 0);
    h.s(&sc.syn_ack(), 0);
    let (a, b, c) = (bytes_of(100, 1), bytes_of(1400, 2), bytes_of(50, 3));
    let pa = ts_segment(&pc, 0, &a, 500, 501, 0, &[]);
    // The primary's middle segment arrives as three fragments, the last one first.
    let pb = ts_segment(&pc, 100, &b, 501, 501, 0x4242, &[520, 1024]);
    assert_eq!(pb.len(), 3);
    let pc_ = ts_segment(&pc, 1500, &c, 502, 501, 0, &[]);
    let mut evs = h.p(&pa[0], 1);
    for k in [2usize, 0, 1] {
        evs.extend(h.p(&pb[k], 2));
    }
    evs.extend(h.p(&pc_[0], 3));
    assert!(rels(&evs).is_empty(), "nothing leaves before the secondary shows the bytes");
    // The secondary sends the same bytes with other headers (TSval, window), fragmented
    // elsewhere, and re-segmented: the first 300 bytes whole, the rest as two fragments.
    let all: Vec<u8> = [a.as_slice(), &b, &c].concat();
    let mut evs = Vec::new();
    for f in ts_segment(&pc, 0, &all[..300], 90_000, 7, 0, &[]) {
        evs.extend(h.s(&f, 4));
    }
    for f in ts_segment(&pc, 300, &all[300..], 90_001, 7, 0x777, &[200]) {
        evs.extend(h.s(&f, 5));
    }
    let expected: Vec<(Vec<u8>, Via)> =
        [&pa[0], &pb[2], &pb[0], &pb[1], &pc_[0]].into_iter().map(|f| (f.clone(), Via::Match)).collect();
    assert_eq!(rels(&evs), expected);
    assert!(h.requests.is_empty(), "{:?}", h.requests);
    let counters = h.shard.counters();
    assert_eq!(counters.reassembled, 2);
    assert_eq!((counters.held_primary_frames, counters.held_secondary_frames), (0, 0));
    assert_eq!(h.shard.flow_count(), 1, "one connection, no datagram flow beside it");
}

#[test]
fn test_fragmented_tcp_segment_with_a_changed_byte_is_caught_before_any_fragment_leaves() {
    let (pc, sc) = conns();
    let mut h = H::new();
    h.p(&pc.syn_ack(), 0);
    h.s(&sc.syn_ack(), 0);
    let (a, b) = (bytes_of(100, 1), bytes_of(1400, 2));
    let pa = pc.data(0, &a);
    let pb = ts_segment(&pc, 100, &b, 501, 501, 0x4242, &[520, 1024]);
    let after = pc.data(1500, b"tail");
    h.p(&pa, 1);
    for f in &pb {
        h.p(f, 2);
    }
    h.p(&after, 3);
    let mut changed = b.clone();
    changed[900] ^= 0x01; // in the primary's second fragment
    let mut evs = h.s(&pc.data(0, &a), 4);
    for f in ts_segment(&pc, 100, &changed, 9, 7, 0x999, &[296]) {
        evs.extend(h.s(&f, 5));
    }
    evs.extend(h.s(&pc.data(1500, b"tail"), 6));
    assert_eq!(H::ckpts(&evs), vec!["tcp-payload-mismatch"]);
    assert_eq!(rels(&evs), vec![(pa.clone(), Via::Match)], "only the verified segment before it leaves");
    let detail = &h.requests[0].detail;
    assert!(detail.contains(&format!("first difference at seq {}", pc.seq(1000))), "{detail}");
    // The flush releases the held fragments in their order, then the segment after them.
    let flushed: Vec<Vec<u8>> = rels(&h.done(7)).into_iter().map(|(f, _)| f).collect();
    assert_eq!(flushed, vec![pb[0].clone(), pb[1].clone(), pb[2].clone(), after]);
}

#[test]
fn test_tcp_fragments_whose_first_fragment_cuts_the_header_compare_as_a_datagram() {
    // A first fragment of 8 bytes holds only part of the TCP header (RFC 1858's tiny
    // fragments: no real stack sends them): no stream position can be read, so the datagram
    // is compared whole as IP protocol 6 and released by its own match.
    let (pc, _) = conns();
    let mut h = H::new();
    let pb = ts_segment(&pc, 0, &bytes_of(64, 9), 1, 1, 0x55, &[8]);
    assert_eq!(pb.len(), 2);
    for f in &pb {
        h.p(f, 1);
    }
    let mut evs = Vec::new();
    for f in &pb {
        evs.extend(h.s(f, 2));
    }
    assert_eq!(rels(&evs), vec![(pb[0].clone(), Via::Match), (pb[1].clone(), Via::Match)]);
    assert!(h.requests.is_empty());
}

#[test]
fn test_proxy_mode_fragmented_secondary_segment_compares_in_its_own_sequence_space() {
    // Proxy mode: the secondary's segment is in its own space (another ISN); the offset
    // learned from the SYN pair applies to a fragmented segment as to any other.
    let (pc, sc) = conns();
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    h.p(&pc.syn_ack(), 0);
    h.s(&sc.syn_ack(), 0);
    let data = bytes_of(1200, 4);
    let p = pc.data(0, &data);
    h.p(&p, 1);
    let mut evs = Vec::new();
    for f in ts_segment(&sc, 0, &data, 3, 3, 0x31, &[400, 800]) {
        evs.extend(h.s(&f, 2));
    }
    assert_eq!(rels(&evs), vec![(p, Via::Match)]);
    assert!(h.requests.is_empty());
}

#[test]
fn test_failover_forwards_a_held_fragmented_secondary_segment_with_its_header_moved() {
    // The secondary ran ahead with a fragmented segment; failing over to it forwards all of
    // its fragments (in arrival order), the header moved into the primary's space.
    let (pc, sc) = conns();
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    h.p(&pc.syn_ack(), 0);
    h.s(&sc.syn_ack(), 0);
    let data = bytes_of(1000, 5);
    let frags = ts_segment(&sc, 0, &data, 3, 3, 0x32, &[504]);
    for f in &frags {
        assert!(rels(&h.s(f, 1)).is_empty());
    }
    h.shard.failover(Side::Secondary, Timestamp::from_millis(2));
    let out: Vec<Vec<u8>> = rels(&h.drain()).into_iter().map(|(f, _)| f).collect();
    assert_eq!(out.len(), 2);
    assert_eq!(out[1], frags[1], "a later fragment carries no header: unchanged");
    let crate::wire::Class::Fragment(_, first) = crate::wire::parse(&out[0]) else { panic!("a fragment") };
    let seg = crate::wire::tcp_in_fragment(&out[0], first.data, 1032).expect("header in the first fragment");
    assert_eq!(seg.seq, pc.seq(0), "moved into the sequence space the client knows");
    assert_eq!(h.shard.counters().failover_rewritten, 1);
}

#[test]
fn test_after_failover_a_new_fragmented_secondary_segment_is_moved_in_its_first_fragment() {
    let (pc, sc) = conns();
    let mut h = H::with(Config { mode: Mode::Proxy, ..Config::default() });
    h.p(&pc.syn_ack(), 0);
    h.s(&sc.syn_ack(), 0);
    h.shard.failover(Side::Secondary, Timestamp::from_millis(1));
    h.drain();
    let frags = ts_segment(&sc, 0, &bytes_of(1000, 6), 3, 3, 0x33, &[504]);
    let out: Vec<Vec<u8>> = frags.iter().flat_map(|f| rels(&h.s(f, 2))).map(|(f, _)| f).collect();
    assert_eq!(out.len(), 2);
    assert_eq!(out[1], frags[1]);
    let crate::wire::Class::Fragment(_, first) = crate::wire::parse(&out[0]) else { panic!("a fragment") };
    let seg = crate::wire::tcp_in_fragment(&out[0], first.data, first.data.len).expect("header");
    assert_eq!(seg.seq, pc.seq(0));
}

// ---- SPEC §11: the new-flow budget ----

fn udp_to(client: u8, data: &[u8]) -> Vec<u8> {
    IpFrame { dst: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 0, client)), ..udp(data) }.build()
}

#[test]
fn test_new_flows_past_the_budget_are_refused_on_both_sides_and_established_ones_go_on() {
    let cfg = Config { new_flows_per_sec: 1000, new_flow_burst: 10, ..Config::default() };
    let mut h = H::with(cfg);
    // An established flow.
    let est = udp_to(200, b"established");
    h.p(&est, 0);
    assert_eq!(rels(&h.s(&est, 0)), vec![(est.clone(), Via::Match)]);
    // A burst of new flows at one instant: 9 more fit the burst (10 with the established one),
    // the rest are refused — the primary's copy dropped and counted, never parked.
    let mut refused = Vec::new();
    for c in 0..30u8 {
        let f = udp_to(c, b"flood");
        let evs = h.p(&f, 0);
        if evs == vec![Ev::Drop(Side::Primary, DropReason::NewFlowBudget)] {
            refused.push(f);
        } else {
            assert!(evs.is_empty(), "{evs:?}");
        }
    }
    assert_eq!(refused.len(), 21);
    assert_eq!(h.shard.counters().primary_dropped[DropReason::NewFlowBudget as usize], 21);
    // 5 ms later the budget has earned 5 flows, but the secondary's copies of refused flows
    // share their fate (else each would wait alone for `timeout-secondary`).
    for f in &refused {
        assert_eq!(h.s(f, 5), vec![Ev::Drop(Side::Secondary, DropReason::NewFlowBudget)]);
    }
    // The established flow is not a new flow: it goes on matching.
    let more = udp_to(200, b"still here");
    h.p(&more, 6);
    assert_eq!(rels(&h.s(&more, 6)), vec![(more.clone(), Via::Match)]);
    // A brand-new flow is admitted from the earned credit; a refused one again once its
    // refusal is old (a client's retransmission a second later).
    let fresh = udp_to(250, b"fresh");
    assert!(h.p(&fresh, 7).is_empty());
    assert_eq!(rels(&h.s(&fresh, 7)), vec![(fresh.clone(), Via::Match)]);
    assert!(h.p(&refused[0], 1200).is_empty());
    assert_eq!(rels(&h.s(&refused[0], 1200)), vec![(refused[0].clone(), Via::Match)]);
    assert!(h.requests.is_empty(), "{:?}", h.requests);
}

#[test]
fn test_a_budget_of_zero_creates_every_flow() {
    let mut h = H::with(Config { new_flows_per_sec: 0, new_flow_burst: 0, ..Config::default() });
    for c in 0..=255u8 {
        let f = udp_to(c, b"x");
        h.p(&f, 0);
        assert_eq!(rels(&h.s(&f, 0)).len(), 1);
    }
    assert_eq!(h.shard.flow_count(), 256);
}

#[test]
fn test_a_standalone_completion_keeps_secondary_datagrams_ahead_of_the_primary() {
    // The secondary runs 3 datagrams ahead of the primary on a flow that agrees; a standalone
    // completion (another flow's checkpoint) changes no guest: the primary's copies of those
    // 3 must still meet them, and later datagrams stay paired (no mismatch storm).
    let d = |i: u8| udp(&[i; 20]).build();
    for resync in [false, true] {
        let mut h = H::new();
        h.p(&d(0), 0);
        for i in 0..4 {
            h.s(&d(i), 1);
        }
        let evs = if resync {
            h.done(2)
        } else {
            h.shard.standalone_completion(Timestamp::from_millis(2));
            h.drain()
        };
        assert_eq!(rels(&evs), vec![], "datagram 0 matched before the completion");
        let dropped = evs.iter().filter(|e| **e == Ev::Drop(Side::Secondary, DropReason::Flushed)).count();
        let mut later = Vec::new();
        for i in 1..10 {
            later.extend(h.p(&d(i), 3 + u64::from(i)));
            if i >= 4 {
                later.extend(h.s(&d(i), 3 + u64::from(i)));
            }
        }
        if resync {
            // A real checkpoint replaced the secondary: what it sent ahead is gone with it, and
            // both sides restart together.
            assert_eq!(dropped, 3);
        } else {
            assert_eq!(dropped, 0, "kept: {evs:?}");
            assert_eq!(rels(&later).len(), 9, "{later:?}");
            assert!(rels(&later).iter().all(|(_, via)| *via == Via::Match));
        }
        assert!(H::ckpts(&later).is_empty(), "resync {resync}: {:?}", h.requests);
    }
}

#[test]
fn test_a_one_sided_flood_holds_at_most_an_eighth_of_the_memory_budget() {
    // A flood only the primary answers (its flows hold a frame each until they time out)
    // may not fill the memory budget: past budget / 8 young one-sided flows, new flows are
    // refused until some are answered or age past compare_timeout.
    let cfg = Config { held_frames_budget: 1024, new_flows_per_sec: 0, ..Config::default() };
    let mut h = H::with(cfg);
    let est = udp_to(250, b"established");
    h.p(&est, 0);
    h.s(&est, 0);
    let flood = |i: u16| {
        let dst = std::net::Ipv4Addr::new(10, 50, (i >> 8) as u8, i as u8);
        IpFrame { dst: std::net::IpAddr::V4(dst), ..udp(b"one-sided") }.build()
    };
    let mut refused = 0;
    for i in 0..500u16 {
        let evs = h.p(&flood(i), 1);
        refused += usize::from(evs == vec![Ev::Drop(Side::Primary, DropReason::NewFlowBudget)]);
    }
    assert_eq!(refused, 500 - 128, "1024 / 8 one-sided flows at most");
    assert_eq!(h.shard.counters().held_primary_frames, 128);
    // Established traffic is untouched.
    let more = udp_to(250, b"more");
    h.p(&more, 2);
    assert_eq!(rels(&h.s(&more, 2)), vec![(more.clone(), Via::Match)]);
    // The secondary answers ten of them: room for ten new flows (but not for the refused
    // ones' other copies: those share their fate).
    for i in 0..10u16 {
        assert_eq!(rels(&h.s(&flood(i), 3)).len(), 1);
    }
    let admitted = (600..620u16).filter(|&i| h.p(&flood(i), 4).is_empty()).count();
    assert_eq!(admitted, 10);
    // Past compare_timeout the one-sided ones time out (a checkpoint, whose flush releases
    // them) and age out of the count: new flows are admitted again.
    let evs = h.tick(3005);
    assert!(H::ckpts(&evs).contains(&"timeout-primary"), "{evs:?}");
    h.done(3006);
    assert!(h.p(&flood(700), 3007).is_empty(), "admitted again");
}

#[test]
fn test_a_refused_flow_that_keeps_sending_is_admitted_once_its_refusal_is_old() {
    // A steady flow refused once must not stay refused because its own frames renew the
    // refusal: 20 ms apart, it is admitted after REFUSAL_MEMORY (100 ms) from the first one.
    let mut h = H::with(Config { new_flows_per_sec: 1000, new_flow_burst: 1, ..Config::default() });
    let first = udp_to(1, b"takes the only token");
    h.p(&first, 0);
    h.s(&first, 0);
    let stream = |i: u8| udp_to(2, &[i; 8]);
    let mut refused_until = None;
    for i in 0..10u8 {
        let t = 20 * u64::from(i);
        let evs = h.p(&stream(i), t);
        if evs == vec![Ev::Drop(Side::Primary, DropReason::NewFlowBudget)] {
            h.s(&stream(i), t);
            continue;
        }
        refused_until.get_or_insert(t);
        assert_eq!(rels(&h.s(&stream(i), t)), vec![(stream(i), Via::Match)]);
    }
    assert_eq!(refused_until, Some(100), "refused from 0 ms, admitted at 100 ms");
}

#[test]
fn test_failover_forwards_or_drops_secondary_datagrams_kept_ahead() {
    let d = |i: u8| udp(&[i; 20]).build();
    for to in [Side::Secondary, Side::Primary] {
        let mut h = H::new();
        h.p(&d(0), 0);
        for i in 0..4 {
            h.s(&d(i), 1);
        }
        h.shard.failover(to, Timestamp::from_millis(2));
        let evs = h.drain();
        let forwarded: Vec<Vec<u8>> = rels(&evs).into_iter().map(|(f, _)| f).collect();
        match to {
            Side::Secondary => assert_eq!(forwarded, vec![d(1), d(2), d(3)], "the output the client still needs"),
            Side::Primary => {
                assert!(forwarded.is_empty());
                assert_eq!(evs.iter().filter(|e| **e == Ev::Drop(Side::Secondary, DropReason::Flushed)).count(), 3);
            }
        }
        assert_eq!(h.shard.counters().held_secondary_frames, 0);
        assert!(H::ckpts(&h.tick(10_000)).is_empty(), "nothing left to time out");
    }
}

#[test]
fn test_a_secondary_ahead_at_a_standalone_completion_absorbs_nothing() {
    // The primary's A is flushed unmatched while the secondary, ahead, already sent B (instead
    // of A) and C. A later A from both (a heartbeat) is new output on both sides: it must match,
    // not be swallowed as a late copy of the flushed one.
    let (a, b, c) = (udp(b"heartbeat").build(), udp(b"other one").build(), udp(b"third one").build());
    let mut h = H::new();
    h.p(&a, 0);
    h.s(&b, 0);
    h.s(&c, 0);
    h.shard.standalone_completion(Timestamp::from_millis(1));
    h.drain();
    h.p(&c, 2);
    let mut evs = h.s(&a, 3);
    evs.extend(h.p(&a, 3));
    assert_eq!(rels(&evs), vec![(a.clone(), Via::Match)], "{:?}", h.requests);
    assert!(H::ckpts(&h.tick(10_000)).is_empty(), "{:?}", h.requests);
}

#[test]
fn test_a_flow_the_full_table_could_not_take_costs_no_new_flow_credit() {
    // Burst of 5 at a rate of 1 a second: four flows fill a 4-flow table (each holding its
    // frame); a fifth finds the table full (parked for the flush) and must give its credit
    // back, so that after the flush one more new flow still fits the burst.
    let cfg = Config { max_flows: 4, new_flows_per_sec: 1, new_flow_burst: 5, ..Config::default() };
    let mut h = H::with(cfg);
    for c in 0..4 {
        assert!(h.p(&udp_to(c, b"held"), 0).is_empty());
    }
    assert_eq!(H::ckpts(&h.p(&udp_to(9, b"no room"), 0)), vec!["resource-pressure"]);
    h.done(0);
    assert!(h.p(&udp_to(10, b"after the flush"), 0).is_empty(), "admitted on the credit given back");
    assert_eq!(h.shard.counters().primary_dropped[DropReason::NewFlowBudget as usize], 0);
}

/// Parts: a secondary that sent a primary segment's first bytes and then waits for the
/// client's acknowledgement (Nagle holds its short segment; its window is full) gets those
/// verified bytes out, so the client acknowledges them and the secondary sends the rest.
mod verified_parts {
    use super::*;
    use crate::fixtures::tcp_checksum_valid;

    /// Sequence number, flags and payload of a TCP frame built by the fixtures (IPv4, no VLAN).
    fn seq_flags_payload(f: &[u8]) -> (u32, u8, Vec<u8>) {
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let tcp = 14 + ihl;
        let off = usize::from(f[tcp + 12] >> 4) * 4;
        let seq = u32::from_be_bytes(f[tcp + 4..tcp + 8].try_into().unwrap());
        (seq, f[tcp + 13], f[tcp + off..14 + total].to_vec())
    }

    /// A connection both guests opened (SYN-ACKs at 0 and 1 ms), and the 3000 bytes its
    /// primary sends next.
    fn opened() -> (H, Conn, Vec<u8>) {
        let (pc, sc) = conns();
        let mut h = H::new();
        h.p(&pc.syn_ack(), 0);
        h.s(&sc.syn_ack(), 1);
        (h, pc, (0..3000u32).map(|i| (i * 7 + i / 11) as u8).collect())
    }

    /// Primary: one 3000-byte segment; secondary: its first 2000 bytes, at 3 ms.
    fn stalled() -> (H, Conn, Vec<u8>, Vec<u8>) {
        let (mut h, pc, data) = opened();
        let whole = pc.data(0, &data);
        assert!(h.p(&whole, 2).is_empty());
        assert_eq!(h.s(&pc.data(0, &data[..2000]), 3), vec![CONSUMED]);
        (h, pc, data, whole)
    }

    fn parts(evs: &[Ev]) -> Vec<(&[u8], Via)> {
        evs.iter()
            .filter_map(|e| match e {
                Ev::Part(b, v) => Some((b.as_slice(), *v)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_verified_first_bytes_leave_once_the_secondary_stalls_and_the_rest_follows_it() {
        let (mut h, pc, data, whole) = stalled();
        // Still within the wait: the secondary may be on its way.
        assert!(h.tick(4).is_empty());
        let evs = h.tick(6);
        let part = parts(&evs);
        assert_eq!(part.len(), 1, "{evs:?}");
        let (bytes, via) = part[0];
        assert_eq!(via, Via::Match);
        assert!(tcp_checksum_valid(bytes));
        let (seq, flags, payload) = seq_flags_payload(bytes);
        assert_eq!((seq, payload.as_slice()), (pc.seq(0), &data[..2000]));
        assert_eq!(flags & crate::fixtures::flags::PSH, 0, "PSH stays with the segment's end");
        assert_eq!(h.shard.counters().released_parts, 1);
        assert_eq!(h.shard.counters().held_primary_frames, 1);
        // Sent is sent: no second part of the same bytes, nor a timeout for a while.
        assert!(h.tick(30).is_empty());
        // The client acknowledged the part; the secondary sends the rest.
        let evs = h.s(&pc.data(2000, &data[2000..]), 40);
        assert_eq!(evs, vec![Ev::Rest(whole.clone(), Via::Match, 2000), CONSUMED]);
        let rest = crate::segment::rest(&whole, 2000).unwrap().expect("1000 bytes left");
        assert!(tcp_checksum_valid(&rest));
        let (seq, flags, payload) = seq_flags_payload(&rest);
        assert_eq!((seq, payload.as_slice()), (pc.seq(2000), &data[2000..]));
        assert_ne!(flags & crate::fixtures::flags::PSH, 0);
        assert!(h.requests.is_empty());
        let c = h.shard.counters();
        assert_eq!((c.held_primary_frames, c.released_via(Via::Match)), (0, 2));
    }

    #[test]
    fn pure_acks_from_the_stalled_secondary_do_not_put_its_part_off() {
        // The client uploads while the secondary holds its short segment back: the secondary
        // acknowledges the upload with pure ACKs, and sends no data.
        let (mut h, pc, _, _) = stalled();
        for (t, acked) in [(4u64, 100u32), (5, 200)] {
            h.p(&pc.pure_ack(3000, pc.ack + acked), t);
            h.s(&pc.pure_ack(2000, pc.ack + acked), t);
        }
        assert_eq!(parts(&h.tick(6)).len(), 1);
        assert!(h.requests.is_empty());
    }

    #[test]
    fn a_secondary_that_keeps_sending_gets_no_parts() {
        let (mut h, pc, data) = opened();
        let whole = pc.data(0, &data);
        h.p(&whole, 2);
        let mut evs = Vec::new();
        for (i, at) in [(0usize, 3u64), (1000, 4), (2000, 5)] {
            evs.extend(h.tick(at));
            evs.extend(h.s(&pc.data(i as u32, &data[i..i + 1000]), at));
        }
        assert!(parts(&evs).is_empty(), "{evs:?}");
        assert_eq!(H::released(&evs), vec![(whole.as_slice(), Via::Match)]);
        assert_eq!(h.shard.counters().released_parts, 0);
    }

    #[test]
    fn a_difference_after_the_part_holds_the_rest_until_the_checkpoint() {
        let (mut h, pc, data, whole) = stalled();
        assert_eq!(parts(&h.tick(6)).len(), 1);
        let mut other = data[2000..].to_vec();
        other[500] ^= 0x20;
        let evs = h.s(&pc.data(2000, &other), 40);
        assert_eq!(H::ckpts(&evs), vec!["tcp-payload-mismatch"]);
        assert!(!evs.iter().any(|e| matches!(e, Ev::Rel(..) | Ev::Rest(..) | Ev::Part(..))), "{evs:?}");
        assert!(parts(&h.tick(100)).is_empty(), "nothing past the difference leaves as a part");
        let evs = h.done(200);
        assert!(evs.contains(&Ev::Rest(whole, Via::Flush, 2000)), "{evs:?}");
    }

    #[test]
    fn a_difference_in_the_first_bytes_leaves_nothing() {
        let (mut h, pc, data) = opened();
        h.p(&pc.data(0, &data), 2);
        let mut other = data[..2000].to_vec();
        other[1999] ^= 1;
        assert_eq!(H::ckpts(&h.s(&pc.data(0, &other), 3)), vec!["tcp-payload-mismatch"]);
        for t in [6, 50, 500] {
            assert!(parts(&h.tick(t)).is_empty());
        }
        assert_eq!(h.shard.counters().released_parts, 0);
    }

    #[test]
    fn a_segment_awaiting_the_secondary_ack_leaves_no_part() {
        // The primary acknowledged client data the secondary has not: the primary's segment
        // is held for that (ack-lag), whatever its bytes.
        let (mut h, pc, data) = opened();
        h.p(&pc.data_ack(0, &data, pc.ack + 10), 2);
        h.s(&pc.data(0, &data[..2000]), 3);
        assert!(parts(&h.tick(10)).is_empty());
    }
}

/// The flow entry's layout (see `Slot`): five whole cache lines, and everything a datagram
/// flow in agreement touches — both guests' oldest held datagrams included — within the first
/// four, so a million-flow table costs two pairs of lines fetched from memory a flow instead
/// of three. A field added or moved must keep this, or measure what it costs.
#[test]
fn a_datagram_flow_in_agreement_is_handled_within_its_entrys_first_four_lines() {
    assert_eq!(std::mem::size_of::<Slot<Box<[u8]>>>(), 320);
    assert_eq!(std::mem::align_of::<Slot<Box<[u8]>>>(), 64);
    let mut shard: Shard<Box<[u8]>> = Shard::new(Config::default());
    let frame = crate::fixtures::IpFrame::udp(53, 1024, &[1; 22]).build().into_boxed_slice();
    shard.handle(Side::Primary, frame, Timestamp::from_nanos(1));
    let slot = shard.slots.iter().find(|s| s.flow.is_some()).expect("the flow has a slot");
    let base = slot as *const Slot<Box<[u8]>> as usize;
    let flow = slot.flow.as_ref().expect("the flow");
    let mut hot = vec![
        ("generation", &slot.generation as *const u32 as usize, 4),
        ("packed", &flow.packed as *const PackedKey as usize, std::mem::size_of::<PackedKey>()),
        ("compare_at", &flow.compare_at as *const Armed as usize, 8),
        ("lifetime_at", &flow.lifetime_at as *const Armed as usize, 8),
        ("last_activity", &flow.last_activity as *const Timestamp as usize, 8),
        ("seen", &slot.seen as *const u8 as usize, 1),
        ("young", &slot.young as *const bool as usize, 1),
    ];
    let super::Conn::Datagram(d) = &flow.conn else { panic!("a UDP flow is a datagram flow") };
    hot.extend(d.hot_ranges());
    for (name, at, len) in hot {
        let (start, end) = (at - base, at - base + len);
        assert!(end <= 256, "{name} at bytes {start}..{end} of the entry, past its first four lines");
    }
}

/// Deadlines are kept in 8 bytes with `u64::MAX` as "none" (`Armed`): a timeout so long that
/// the deadline saturates must still arm (one nanosecond earlier), once, and never fire or
/// read as unarmed (which would push a fresh timer entry per frame).
#[test]
fn deadlines_that_saturate_the_clock_arm_once_and_never_fire() {
    let forever = Duration::MAX;
    let cfg = Config {
        compare_timeout: forever,
        conn_idle_timeout: forever,
        datagram_idle_timeout: forever,
        linger: forever,
        ..Config::default()
    };
    let mut shard: Shard<Vec<u8>> = Shard::new(cfg);
    let frame = |n: u8| IpFrame::udp(53, 40000, &[n; 18]).build();
    // Primary datagrams held without their copies: a compare deadline at the clock's end.
    for n in 0..50u8 {
        shard.handle(Side::Primary, frame(n), Timestamp::from_nanos(1 + u64::from(n)));
    }
    assert!(shard.poll_action().is_none(), "nothing leaves before its copy");
    assert!(shard.timer_entries() <= 2, "{} timer entries for one flow", shard.timer_entries());
    shard.handle_timeout(Timestamp(u64::MAX - 2));
    assert!(shard.poll_action().is_none(), "no timeout can have expired");
    let mut released = 0;
    for n in 0..50u8 {
        shard.handle(Side::Secondary, frame(n), Timestamp::from_nanos(100 + u64::from(n)));
        while let Some(a) = shard.poll_action() {
            released += usize::from(matches!(a, Action::Release { via: Via::Match, .. }));
        }
    }
    assert_eq!(released, 50);
    assert!(shard.timer_entries() <= 3, "{} timer entries for one flow", shard.timer_entries());
    assert_eq!(shard.flow_count(), 1, "the idle flow is kept: its lifetime never ends");
}

/// A frame that counts how often it was asked to prefetch.
#[derive(Debug)]
struct Watched {
    bytes: Vec<u8>,
    prefetched: std::rc::Rc<std::cell::Cell<u32>>,
}

impl Frame for Watched {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    fn prefetch(&self) {
        self.prefetched.set(self.prefetched.get() + 1);
    }
}

#[test]
fn test_a_burst_asks_the_frames_it_is_compared_with_to_prefetch() {
    let watched = |bytes: Vec<u8>| {
        let count = std::rc::Rc::new(std::cell::Cell::new(0));
        (Watched { bytes, prefetched: count.clone() }, count)
    };
    let mut shard: Shard<Watched> = Shard::new(Config::default());
    let now = Timestamp::from_millis(1);
    let mut sink = Vec::new();
    // Held on the primary side: a datagram, and a segment of a connection past its handshake.
    let (pc, sc) = conns();
    let (syn_ack, _) = watched(pc.syn_ack());
    shard.handle(Side::Primary, syn_ack, now);
    let mut burst = vec![watched(sc.syn_ack()).0];
    let classes: Vec<_> = burst.iter().map(|f| wire::parse(&f.bytes)).collect();
    shard.handle_burst(Side::Secondary, &mut burst, &classes, now, |a| sink.push(a));
    let (datagram, datagram_count) = watched(udp(b"answer").build());
    let (segment, segment_count) = watched(pc.data(0, b"hello"));
    let (later, later_count) = watched(pc.data(5, b"world"));
    for f in [datagram, segment, later] {
        shard.handle(Side::Primary, f, now);
    }
    // Handling them one by one asks nothing of the held frames.
    assert_eq!((datagram_count.get(), segment_count.get(), later_count.get()), (0, 0, 0));

    // The secondary's burst meets the oldest held frame of each flow, and a new flow.
    let copies = [udp(b"answer").build(), pc.data(0, b"hello"), udp_to(7, b"new")];
    let (mut burst, counts): (Vec<_>, Vec<_>) = copies.into_iter().map(watched).unzip();
    let classes: Vec<_> = burst.iter().map(|f| wire::parse(&f.bytes)).collect();
    shard.handle_burst(Side::Secondary, &mut burst, &classes, now, |a| sink.push(a));
    assert_eq!((datagram_count.get(), segment_count.get()), (1, 1), "the held frames the burst is compared with");
    assert_eq!(later_count.get(), 0, "not at the head of its queue");
    assert!(counts.iter().all(|c| c.get() == 0), "the burst's own frames are not held");
    let matched = sink.iter().filter(|a| matches!(a, Action::Release { via: Via::Match, .. })).count();
    assert_eq!(matched, 3, "the SYN-ACK, the datagram and the first segment");
}
