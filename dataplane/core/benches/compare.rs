//! Criterion benchmarks of the comparator core (SPEC §12), each next to a plain `memcmp` of
//! the same bytes measured in the same run. UDP datagram pairs arrive with the datagram
//! module (issue 4). Run: `cargo bench -p colo-core`.

use std::hint::black_box;

use colo_core::fixtures::Conn;
use colo_core::{Config, Shard, Side, Timestamp};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const STREAM: usize = 1460 * 256;

fn stream() -> Vec<u8> {
    (0..STREAM).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn segments(conn: &Conn, data: &[u8], size: usize) -> Vec<Vec<u8>> {
    data.chunks(size).enumerate().map(|(i, c)| conn.data((i * size) as u32, c)).collect()
}

/// Feeds primary and secondary frames alternately (primary first) and drains the actions.
fn run(primary: Vec<Vec<u8>>, secondary: Vec<Vec<u8>>) -> usize {
    let mut shard: Shard<Vec<u8>> = Shard::new(Config::default());
    let mut released = 0;
    let mut s = secondary.into_iter();
    for (t, p) in primary.into_iter().enumerate() {
        let now = Timestamp::from_nanos(t as u64);
        shard.handle(Side::Primary, p, now);
        if let Some(f) = s.next() {
            shard.handle(Side::Secondary, f, now);
        }
        while let Some(a) = shard.poll_action() {
            released += usize::from(matches!(a, colo_core::Action::Release { .. }));
        }
    }
    for f in s {
        shard.handle(Side::Secondary, f, Timestamp::from_nanos(u64::MAX / 2));
        while let Some(a) = shard.poll_action() {
            released += usize::from(matches!(a, colo_core::Action::Release { .. }));
        }
    }
    released
}

fn bench(c: &mut Criterion) {
    let conn = Conn::default();
    let data = stream();
    let mut g = c.benchmark_group("tcp");
    g.throughput(Throughput::Bytes(STREAM as u64));

    let p1460 = segments(&conn, &data, 1460);
    g.bench_function("same_segmentation_1460", |b| {
        b.iter_batched(|| (p1460.clone(), p1460.clone()), |(p, s)| black_box(run(p, s)), BatchSize::LargeInput)
    });

    let s_big = segments(&conn, &data, 1460 * 40);
    g.bench_function("resegmented_1460_vs_58400", |b| {
        b.iter_batched(|| (p1460.clone(), s_big.clone()), |(p, s)| black_box(run(p, s)), BatchSize::LargeInput)
    });

    let small = &data[..10 * 4096];
    let p37: Vec<Vec<u8>> = (0..4096)
        .flat_map(|i| {
            let o = i * 10;
            [conn.data(o as u32, &small[o..o + 3]), conn.data(o as u32 + 3, &small[o + 3..o + 10])]
        })
        .collect();
    let s10 = segments(&conn, small, 10);
    g.bench_function("resegmented_3+7_vs_10", |b| {
        b.iter_batched(|| (p37.clone(), s10.clone()), |(p, s)| black_box(run(p, s)), BatchSize::LargeInput)
    });

    let other = data.clone();
    g.bench_function("memcmp_baseline", |b| b.iter(|| black_box(black_box(&data[..]) == black_box(&other[..]))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
