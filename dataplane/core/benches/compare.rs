//! Criterion benchmarks of the comparator core (SPEC §12), each next to a plain `memcmp` of
//! the same bytes measured in the same run: TCP same segmentation, TCP resegmented (3+7 vs 10,
//! 1460 vs 58400), a secondary a window behind, and matched 64 B UDP pairs over 10k flows.
//! Run: `cargo bench -p colo-core --bench compare`.

use std::hint::black_box;

use colo_core::fixtures::{Conn, IpFrame};
use colo_core::{Config, Shard, Side, Timestamp};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const STREAM: usize = 1460 * 256;

fn stream() -> Vec<u8> {
    (0..STREAM).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Frames of one side with the stream offset where each ends.
fn segments(conn: &Conn, data: &[u8], size: usize) -> Vec<(usize, Vec<u8>)> {
    data.chunks(size).enumerate().map(|(i, c)| (i * size + c.len(), conn.data((i * size) as u32, c))).collect()
}

/// Both sides merged by stream progress (primary first on ties), as two guests running in
/// lock-step would deliver them.
fn merge(p: &[(usize, Vec<u8>)], s: &[(usize, Vec<u8>)]) -> Vec<(Side, Vec<u8>)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(p.len() + s.len());
    while i < p.len() || j < s.len() {
        let take_p = match (p.get(i), s.get(j)) {
            (Some(a), Some(b)) => a.0 <= b.0,
            (a, _) => a.is_some(),
        };
        if take_p {
            out.push((Side::Primary, p[i].1.clone()));
            i += 1;
        } else {
            out.push((Side::Secondary, s[j].1.clone()));
            j += 1;
        }
    }
    out
}

/// Feeds the frames and drains the actions; returns the number of released frames.
fn run(frames: Vec<(Side, Vec<u8>)>) -> usize {
    let mut shard: Shard<Vec<u8>> = Shard::new(Config::default());
    let mut released = 0;
    for (t, (side, f)) in frames.into_iter().enumerate() {
        shard.handle(side, f, Timestamp::from_nanos(t as u64));
        while let Some(a) = shard.poll_action() {
            released += usize::from(matches!(a, colo_core::Action::Release { .. }));
        }
    }
    released
}

fn case(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    p: &[(usize, Vec<u8>)],
    s: &[(usize, Vec<u8>)],
) {
    let frames = merge(p, s);
    // Measure the matched path only: every primary frame must be released.
    assert_eq!(run(frames.clone()), p.len(), "{name}: not all released");
    c.bench_function(name, |b| b.iter_batched(|| frames.clone(), |f| black_box(run(f)), BatchSize::LargeInput));
}

fn bench(c: &mut Criterion) {
    let conn = Conn::default();
    let data = stream();
    let mut g = c.benchmark_group("tcp");
    g.throughput(Throughput::Bytes(STREAM as u64));

    let p1460 = segments(&conn, &data, 1460);
    case(&mut g, "same_segmentation_1460", &p1460, &p1460);
    // The secondary a whole window (256 segments) behind: long primary queue.
    let behind: Vec<(Side, Vec<u8>)> = p1460
        .iter()
        .map(|f| (Side::Primary, f.1.clone()))
        .chain(p1460.iter().map(|f| (Side::Secondary, f.1.clone())))
        .collect();
    assert_eq!(run(behind.clone()), p1460.len());
    g.bench_function("secondary_one_window_behind", |b| {
        b.iter_batched(|| behind.clone(), |f| black_box(run(f)), BatchSize::LargeInput)
    });
    let s_big = segments(&conn, &data, 1460 * 40);
    case(&mut g, "resegmented_1460_vs_58400", &p1460, &s_big);
    g.finish();

    let small = &data[..10 * 4096];
    let mut g = c.benchmark_group("tcp_small");
    g.throughput(Throughput::Bytes(small.len() as u64));
    let p37: Vec<(usize, Vec<u8>)> = (0..4096)
        .flat_map(|i| {
            let o = i * 10;
            [(o + 3, conn.data(o as u32, &small[o..o + 3])), (o + 10, conn.data(o as u32 + 3, &small[o + 3..o + 10]))]
        })
        .collect();
    let s10 = segments(&conn, small, 10);
    case(&mut g, "resegmented_3+7_vs_10", &p37, &s10);
    let other_small = small.to_vec();
    g.bench_function("memcmp_baseline", |b| b.iter(|| black_box(black_box(small) == black_box(&other_small[..]))));
    g.finish();

    let mut g = c.benchmark_group("tcp");
    g.throughput(Throughput::Bytes(STREAM as u64));
    let other = data.clone();
    g.bench_function("memcmp_baseline", |b| b.iter(|| black_box(black_box(&data[..]) == black_box(&other[..]))));
    g.finish();
}

/// Matched 64-byte UDP pairs over 10 000 flows (one datagram per flow per round, primary
/// then secondary), SPEC §12.
fn bench_udp(c: &mut Criterion) {
    const FLOWS: usize = 10_000;
    let frames: Vec<(Side, Vec<u8>)> = (0..FLOWS)
        .flat_map(|f| {
            let dst = std::net::Ipv4Addr::new(10, 1 + (f >> 16) as u8, (f >> 8) as u8, f as u8);
            let base = IpFrame::udp(53, 1024 + (f % 60_000) as u16, &[f as u8; 22]);
            let data =
                colo_core::fixtures::udp_payload(base.src, dst.into(), 53, 1024 + (f % 60_000) as u16, &[f as u8; 22]);
            let p = IpFrame { dst: dst.into(), payload: data.clone(), ip_id: 1, ..base.clone() }.build();
            let s = IpFrame { dst: dst.into(), payload: data, ip_id: 2, ttl: 63, ..base }.build();
            assert_eq!(p.len(), 64);
            [(Side::Primary, p), (Side::Secondary, s)]
        })
        .collect();
    assert_eq!(run(frames.clone()), FLOWS, "every UDP datagram matched");
    let mut g = c.benchmark_group("udp64");
    g.throughput(Throughput::Elements(FLOWS as u64));
    g.bench_function("matched_pairs_10k_flows", |b| {
        b.iter_batched(|| frames.clone(), |f| black_box(run(f)), BatchSize::LargeInput)
    });
    let bytes: Vec<u8> = frames.iter().filter(|f| f.0 == Side::Primary).flat_map(|f| f.1.clone()).collect();
    let other = bytes.clone();
    g.bench_function("memcmp_baseline", |b| b.iter(|| black_box(black_box(&bytes[..]) == black_box(&other[..]))));
    g.finish();
}

/// Hands one primary/secondary pair to the shard at the next instant (including the copy of
/// the two frames the shard takes ownership of); returns the frames released.
fn feed(shard: &mut Shard<Vec<u8>>, (p, s): &(Vec<u8>, Vec<u8>), t: &mut u64) -> usize {
    *t += 1;
    shard.handle(Side::Primary, p.clone(), Timestamp::from_nanos(*t));
    shard.handle(Side::Secondary, s.clone(), Timestamp::from_nanos(*t));
    let mut released = 0;
    while let Some(a) = shard.poll_action() {
        released += usize::from(matches!(a, colo_core::Action::Release { .. }));
    }
    released
}

/// A 64 B UDP datagram of flow `f` (client 10.x.y.z), as the primary and the secondary send
/// it (IP ID and TTL differ).
fn flow_pair(f: usize) -> (Vec<u8>, Vec<u8>) {
    let dst = std::net::Ipv4Addr::new(10, (f >> 16) as u8, (f >> 8) as u8, f as u8);
    let base = IpFrame::udp(53, 1024 + (f % 60_000) as u16, &[f as u8; 22]);
    let data = colo_core::fixtures::udp_payload(base.src, dst.into(), 53, 1024 + (f % 60_000) as u16, &[f as u8; 22]);
    let p = IpFrame { dst: dst.into(), payload: data.clone(), ..base.clone() }.build();
    let s = IpFrame { dst: dst.into(), payload: data, ip_id: 9, ttl: 63, ..base }.build();
    (p, s)
}

/// Matched 64 B UDP pairs hitting a shard that holds 1 000 000 concurrent flows (SPEC §12):
/// the flow-table lookups miss the caches. The shard is filled once; each iteration hands one
/// primary/secondary pair of a pseudo-randomly chosen existing flow (including the copy of
/// the two 64 B frames the shard takes ownership of).
fn bench_million_flows(c: &mut Criterion) {
    const FLOWS: usize = 1_000_000;
    let frames: Vec<(Vec<u8>, Vec<u8>)> = (0..FLOWS).map(flow_pair).collect();
    // The table is filled at nanosecond intervals: no new-flow budget would admit that.
    let cfg = Config { max_flows: 2 * FLOWS, new_flows_per_sec: 0, ..Config::default() };
    let mut shard: Shard<Vec<u8>> = Shard::new(cfg);
    let mut t = 0u64;
    for f in &frames {
        assert_eq!(feed(&mut shard, f, &mut t), 1);
    }
    assert_eq!(shard.flow_count(), FLOWS);
    let mut g = c.benchmark_group("udp64_1m_flows");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("matched_pair", |b| {
        b.iter(|| {
            i = (i + 7919) % FLOWS;
            black_box(feed(&mut shard, &frames[i], &mut t))
        })
    });
    g.finish();
}

/// A full flow table under a flood of new flows (SPEC §11): matched 64 B UDP pairs of 1,000
/// established flows, alone and with one new flow per pair arriving into a table that is full
/// (65,536 flows), so every new flow evicts an idle one. Before the clock-hand eviction each
/// new flow scanned the whole table.
fn bench_new_flow_flood(c: &mut Criterion) {
    const TABLE: usize = 65_536;
    let established: Vec<_> = (0..1000).map(flow_pair).collect();
    let flood: Vec<_> = (1000..1000 + 4 * TABLE).map(flow_pair).collect();
    // Eviction is measured here, so no new-flow budget; the refused case follows below.
    let cfg = Config { max_flows: TABLE, new_flows_per_sec: 0, ..Config::default() };
    let mut shard: Shard<Vec<u8>> = Shard::new(cfg.clone());
    let mut t = 0u64;
    for f in established.iter().chain(&flood[..TABLE - 1000]) {
        assert_eq!(feed(&mut shard, f, &mut t), 1);
    }
    assert_eq!(shard.flow_count(), TABLE);
    let mut g = c.benchmark_group("full_table");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("established_pair", |b| {
        b.iter(|| {
            i = (i + 7) % established.len();
            black_box(feed(&mut shard, &established[i], &mut t))
        })
    });
    let mut k = TABLE;
    g.bench_function("established_pair_plus_one_new_flow", |b| {
        b.iter(|| {
            i = (i + 7) % established.len();
            k = (k + 1) % flood.len();
            black_box(feed(&mut shard, &established[i], &mut t) + feed(&mut shard, &flood[k], &mut t))
        })
    });
    // The same flood past the new-flow budget: every new flow is refused (and its other copy
    // with it), which is what a flood costs once it exceeds `new_flows_per_sec`.
    let mut shard: Shard<Vec<u8>> = Shard::new(Config { new_flows_per_sec: 1, new_flow_burst: 1000, ..cfg });
    for f in &established {
        assert_eq!(feed(&mut shard, f, &mut t), 1);
    }
    g.bench_function("established_pair_plus_one_refused_flow", |b| {
        b.iter(|| {
            i = (i + 7) % established.len();
            k = (k + 1) % flood.len();
            black_box(feed(&mut shard, &established[i], &mut t) + feed(&mut shard, &flood[k], &mut t))
        })
    });
    g.finish();
    assert!(shard.counters().primary_dropped[colo_core::DropReason::NewFlowBudget as usize] > 0);
}

criterion_group!(benches, bench, bench_udp, bench_million_flows, bench_new_flow_flood);
criterion_main!(benches);
