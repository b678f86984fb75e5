//! Steady-state benchmarks of the comparator core (SPEC §12): a shard that already knows its
//! flows, frames built before the clock starts and handed over without a copy, nothing
//! allocated in the timed loop — the per-frame cost a DPDK lcore pays, next to a `memcmp` of
//! the same bytes from the same memory. After criterion's wall-clock figures, each case is run
//! once more under `perf-event` counters and reports cycles and instructions per pair (hardware
//! counters), or task-clock nanoseconds per pair where the machine has none (a VM).
//!
//! Cases: matched 64 B UDP pairs over 10,000 flows and over 1,000,000 flows (each round in a
//! shuffled flow order); 1460 B TCP pairs in lock-step (same segmentation), over 64
//! connections. Each is fed pair by pair (`matched_pair`: the
//! secondary's copy right after the primary's frame) and in bursts of 32 primary frames then
//! their 32 secondary copies (`matched_pair_burst32`: the order a receive burst brings them,
//! handled as the runtime handles a burst: parsed, flows located together, then each frame).
//! Then `steady_udp64_10k_shards`: 1 to 4 shards fed at once, each on a thread of its own
//! (throughput against the shard count; `benches/plot-shards` draws it).
//!
//! The flow tables are on 2 MiB hugepages where the pool has room, as `colo-dataplane` puts
//! them when the EAL runs on hugepages (the million-flow case needs about 400 free pages:
//! `echo 512 > /proc/sys/vm/nr_hugepages`); each case prints where its tables were.
//! `STEADY_PAGES=small` keeps them on 4 KiB pages.
//!
//! Run: `cargo bench -p colo-core --bench steady` (`-- --quick` for a short run;
//! `STEADY_CASES=udp64_10k` for one case). Instructions per pair, the same in every run:
//! `valgrind --tool=callgrind --toggle-collect=steady::pass` on the bench binary with
//! `--bench --profile-time 1 NAME`, the count divided by the case's pairs (two passes).

use std::cell::RefCell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use colo_core::fixtures::{Conn, IpFrame, TcpFrame};
use colo_core::wire::Class;
use colo_core::{Action, Config, Frame, Shard, Side, Timestamp};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Large allocations (the flow tables) on hugepages once enabled, as in `colo-dataplane`.
#[global_allocator]
static ALLOC: huge_tables::HugeTables = huge_tables::HugeTables;

/// A prebuilt frame handed over without a copy. Compare mode never writes into a frame, so a
/// write gets an empty slice.
#[derive(Clone, Copy)]
struct Prebuilt(&'static [u8]);

impl Frame for Prebuilt {
    fn bytes(&self) -> &[u8] {
        self.0
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut []
    }
}

/// Frames that live for the whole run.
fn leak(frames: Vec<Vec<u8>>) -> Vec<Prebuilt> {
    frames.into_iter().map(|f| Prebuilt(Box::leak(f.into_boxed_slice()))).collect()
}

/// One case: primary/secondary pairs (in feeding order), and how a fresh shard is primed with
/// its flows (untimed).
struct Case {
    pairs: Vec<(Prebuilt, Prebuilt)>,
    prime: Vec<(Prebuilt, Prebuilt)>,
    /// The flow table's bound: room for every flow of the case (none is evicted).
    max_flows: usize,
    /// Whether the pairs can be fed again, from the first, to the shard that has had them all
    /// (datagrams: each is its flow's next one; TCP segments would be retransmissions).
    repeats: bool,
    /// The shard being fed, across samples, and where it is in `pairs`.
    fed: RefCell<Option<Fed>>,
}

/// A primed shard and how far it has been fed.
struct Fed {
    shard: Shard<Prebuilt>,
    /// The clock (ns), advanced 100 ns a pair or burst.
    t: u64,
    /// The next pair of the case to feed.
    next: usize,
}

impl Case {
    fn new(
        pairs: Vec<(Prebuilt, Prebuilt)>,
        prime: Vec<(Prebuilt, Prebuilt)>,
        max_flows: usize,
        repeats: bool,
    ) -> Self {
        Case { pairs, prime, max_flows, repeats, fed: RefCell::new(None) }
    }

    /// A shard with the case's flows known and matched once.
    fn primed(&self) -> Fed {
        let mut shard = Shard::new(Config { new_flows_per_sec: 0, max_flows: self.max_flows, ..Config::default() });
        let mut t = 0;
        for pair in &self.prime {
            feed(&mut shard, pair, &mut t);
        }
        Fed { shard, t, next: 0 }
    }

    /// Feeds `n` pairs (one by one, or in bursts as a DPDK lcore receives them) to the case's
    /// shard, going on where the last call stopped; only the feeding is timed. One shard
    /// serves every sample (a million-flow table takes seconds to prime: a fresh one per
    /// sample left criterion time for a few cold bursts only), unless its pairs cannot be
    /// fed again: then a fresh primed shard takes over when they run out.
    fn timed(&self, n: u64, how: Feed) -> Duration {
        let mut total = Duration::ZERO;
        let mut done = 0u64;
        let (mut classes, mut frames) = (Vec::with_capacity(BURST), Vec::with_capacity(BURST));
        let mut fed = self.fed.borrow_mut();
        while done < n {
            let fed = match fed.take() {
                Some(f) if f.next < self.pairs.len() => fed.insert(f),
                Some(f) if self.repeats => fed.insert(Fed { next: 0, ..f }),
                _ => fed.insert(self.primed()),
            };
            let take = (n - done).min((self.pairs.len() - fed.next) as u64) as usize;
            let pairs = &self.pairs[fed.next..fed.next + take];
            let start = Instant::now();
            let mut released = 0;
            match how {
                Feed::Bursts(first) => {
                    for pairs in pairs.chunks(BURST) {
                        released += feed_burst(&mut fed.shard, pairs, first, &mut fed.t, &mut classes, &mut frames);
                    }
                }
                Feed::PairByPair => {
                    for pair in pairs {
                        released += feed(&mut fed.shard, pair, &mut fed.t);
                    }
                }
            }
            total += start.elapsed();
            assert_eq!(released, take, "every primary frame released by match");
            fed.next += take;
            done += take as u64;
        }
        total
    }
}

/// Hands one pair to the shard at the next instant; returns the frames released. Never
/// inlined, like [`feed_burst`]: an instruction count (callgrind) divides by its calls.
#[inline(never)]
fn feed(shard: &mut Shard<Prebuilt>, (p, s): &(Prebuilt, Prebuilt), t: &mut u64) -> usize {
    *t += 100;
    shard.handle(Side::Primary, *p, Timestamp::from_nanos(*t));
    shard.handle(Side::Secondary, *s, Timestamp::from_nanos(*t));
    let mut released = 0;
    while let Some(a) = shard.poll_action() {
        released += usize::from(matches!(a, Action::Release { .. }));
    }
    black_box(released)
}

/// Frames a DPDK receive burst holds at most.
const BURST: usize = 32;

/// How a case's pairs are handed over.
#[derive(Clone, Copy)]
enum Feed {
    /// Each primary frame, then its secondary copy.
    PairByPair,
    /// A burst of one side's frames, then the burst of their copies from the other side, the
    /// side named first (a DPDK lcore polls its two guest ports in turn, so either guest's
    /// burst can come first).
    Bursts(Side),
}

/// Hands a burst of `first`'s frames, then the burst of the other side's copies, to the shard
/// (the order a DPDK lcore receives them in when both guests send the same frames) the way
/// the runtime does: the burst parsed, then handed over whole (`Shard::handle_burst`: its flows
/// located together, then each frame handled and its actions drained). Returns the frames released.
#[inline(never)]
fn feed_burst(
    shard: &mut Shard<Prebuilt>,
    pairs: &[(Prebuilt, Prebuilt)],
    first: Side,
    t: &mut u64,
    classes: &mut Vec<Class>,
    frames: &mut Vec<Prebuilt>,
) -> usize {
    *t += 100;
    let now = Timestamp::from_nanos(*t);
    let mut released = 0;
    let side_of = |side: Side, (p, s): &(Prebuilt, Prebuilt)| if side == Side::Primary { *p } else { *s };
    let other = if first == Side::Primary { Side::Secondary } else { Side::Primary };
    for side in [first, other] {
        classes.clear();
        frames.clear();
        // Each frame staged with its parse written in its place, as a shard lcore stages a
        // receive burst (`Staged::push_parsing`).
        for pair in pairs {
            let frame = side_of(side, pair);
            classes.push(Class::NonIp(0));
            if let Some(class) = classes.last_mut() {
                colo_core::wire::parse_into(frame.bytes(), class);
            }
            frames.push(frame);
        }
        shard
            .handle_burst(side, frames, classes, now, |a| released += usize::from(matches!(a, Action::Release { .. })));
    }
    black_box(released)
}

/// `0..n` in an order that looks random and is the same every run (xorshift-driven
/// Fisher–Yates from `seed`).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// 64 B UDP datagrams, one per flow per round, over `flows` flows; the secondary's differ in IP
/// ID and TTL only. `rounds` rounds are prepared (10,000 flows: 16 rounds, 160,000 pairs).
/// Each round visits the flows in its own shuffled order, as independent clients do: visiting
/// them in the order the shard created them walks its memory front to back, which the CPU's
/// prefetcher turns into cache hits no real traffic gets (at 10,000 flows that order made a
/// pair look 40 % cheaper). The frames are built in visiting order (a receive ring's buffers
/// are reused in order).
fn udp_case(flows: usize, rounds: u8) -> Case {
    let pair = |f: usize, round: u8| {
        let dst = std::net::Ipv4Addr::new(10, 1 + (f >> 16) as u8, (f >> 8) as u8, f as u8);
        let base = IpFrame::udp(53, 1024 + (f % 60_000) as u16, &[round; 22]);
        let data = colo_core::fixtures::udp_payload(base.src, dst.into(), 53, 1024 + (f % 60_000) as u16, &[round; 22]);
        let p = IpFrame { dst: dst.into(), payload: data.clone(), ip_id: 1, ..base.clone() }.build();
        let s = IpFrame { dst: dst.into(), payload: data, ip_id: 2, ttl: 63, ..base }.build();
        assert_eq!(p.len(), 64);
        (p, s)
    };
    let build = |rounds: std::ops::Range<u8>| {
        let order =
            |r: u8| if r == 0 { (0..flows).collect() } else { shuffled(flows, 0x9e37_79b9_7f4a_7c15 ^ u64::from(r)) };
        let (p, s): (Vec<_>, Vec<_>) = rounds.flat_map(|r| order(r).into_iter().map(move |f| pair(f, r))).unzip();
        leak(p).into_iter().zip(leak(s)).collect::<Vec<_>>()
    };
    Case::new(build(1..1 + rounds), build(0..1), 2 * flows, true)
}

/// 1460 B TCP segments in lock-step over 64 connections (round robin), 1,024 segments each
/// (65,536 pairs, 96 MB a side); the secondary's headers differ in IP ID and TTL.
fn tcp_case() -> Case {
    const CONNS: u16 = 64;
    const SEGMENTS: u32 = 1024;
    let conn = |c: u16, ip_id: u16, ttl: u8| Conn {
        template: TcpFrame { dport: 40_000 + c, ip_id, ttl, ..TcpFrame::default() },
        ..Conn::default()
    };
    let payload = |c: u16, k: u32| -> Vec<u8> { (0..1460u32).map(|i| (i * 7 + k + u32::from(c)) as u8).collect() };
    let mut prime = Vec::new();
    let mut pairs = Vec::new();
    for c in 0..CONNS {
        let (p, s) = (conn(c, 1, 64), conn(c, 2, 63));
        prime.push((p.data(0, &payload(c, 0)), s.data(0, &payload(c, 0))));
    }
    for k in 1..SEGMENTS {
        for c in 0..CONNS {
            let (p, s) = (conn(c, 1, 64), conn(c, 2, 63));
            let data = payload(c, k);
            pairs.push((p.data(k * 1460, &data), s.data(k * 1460, &data)));
        }
    }
    let zip = |v: Vec<(Vec<u8>, Vec<u8>)>| {
        let (p, s): (Vec<_>, Vec<_>) = v.into_iter().unzip();
        leak(p).into_iter().zip(leak(s)).collect::<Vec<_>>()
    };
    Case::new(zip(pairs), zip(prime), Config::default().max_flows, false)
}

/// The compared bytes (everything after the Ethernet and IPv4 headers, which differ between
/// the guests) compared with `==`, pair by pair, from the same memory: the floor a comparator
/// cannot beat.
fn memcmp(case: &Case, n: u64) -> Duration {
    let start = Instant::now();
    let mut equal = 0usize;
    for (p, s) in case.pairs.iter().cycle().take(n as usize) {
        equal += usize::from(black_box(&p.0[34..]) == black_box(&s.0[34..]));
    }
    black_box(equal);
    start.elapsed()
}

/// One pass over the case's pairs (pair by pair, or in bursts) on `fed`'s shard. Never inlined:
/// the fixed amount of work an instruction count (`valgrind --tool=callgrind
/// --toggle-collect=steady::pass`) is taken over, the same in every run.
#[inline(never)]
fn pass(case: &Case, fed: &mut Fed, burst: bool) {
    let (mut classes, mut frames) = (Vec::with_capacity(BURST), Vec::with_capacity(BURST));
    if burst {
        for pairs in case.pairs.chunks(BURST) {
            feed_burst(&mut fed.shard, pairs, Side::Primary, &mut fed.t, &mut classes, &mut frames);
        }
    } else {
        for pair in &case.pairs {
            feed(&mut fed.shard, pair, &mut fed.t);
        }
    }
}

/// Cycles and instructions (hardware counters) or task-clock ns per pair, over one pass pair
/// by pair and one in bursts.
fn counters(name: &str, case: &Case) {
    use perf_event::events::{Hardware, Software};
    use perf_event::{Builder, Group};
    let n = case.pairs.len() as u64;
    // The shard the samples fed, where its pairs can be fed again: priming is not repeated.
    let mut fed = case.fed.borrow_mut().take().filter(|_| case.repeats).unwrap_or_else(|| case.primed());
    let memory = huge_tables::stats();
    println!(
        "{name}: {} MiB on hugepages, {} allocations the pool could not take so far{}",
        memory.hugepage_bytes >> 20,
        memory.fallbacks,
        if huge_tables::enabled() { "" } else { " (STEADY_PAGES=small)" }
    );
    for (how, burst) in [("pair by pair", false), ("bursts of 32", true)] {
        if burst && !case.repeats {
            // The TCP segments would be retransmissions to the shard that has had them.
            fed = case.primed();
        }
        let hardware = Group::new().and_then(|mut g| {
            let cycles = Builder::new().group(&mut g).kind(Hardware::CPU_CYCLES).build()?;
            let instructions = Builder::new().group(&mut g).kind(Hardware::INSTRUCTIONS).build()?;
            Ok((g, cycles, instructions))
        });
        match hardware {
            Ok((mut g, cycles, instructions)) => {
                let _ = g.enable();
                pass(case, &mut fed, burst);
                let _ = g.disable();
                if let Ok(counts) = g.read() {
                    let per = |c: &perf_event::Counter| counts[c] as f64 / n as f64;
                    println!(
                        "{name}, {how}: {:.0} cycles, {:.0} instructions per pair",
                        per(&cycles),
                        per(&instructions)
                    );
                }
            }
            Err(_) => {
                let Ok(mut clock) = Builder::new().kind(Software::TASK_CLOCK).build() else {
                    println!("{name}: no perf counters on this machine");
                    return;
                };
                let _ = clock.enable();
                pass(case, &mut fed, burst);
                let _ = clock.disable();
                let ns = clock.read().unwrap_or(0);
                println!(
                    "{name}, {how}: {:.0} ns task-clock per pair (no hardware counters here)",
                    ns as f64 / n as f64
                );
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    if std::env::var("STEADY_PAGES").as_deref() != Ok("small") {
        huge_tables::enable();
    }
    // STEADY_CASES=udp64_10k,tcp builds and runs only the cases whose names contain one of the
    // words (priming a million flows takes a while, under valgrind above all).
    let only = std::env::var("STEADY_CASES").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|w| name.contains(w));
    type MakeCase = fn() -> Case;
    let cases: [(&str, MakeCase); 3] = [
        ("steady_udp64_10k_flows", || udp_case(10_000, 16)),
        ("steady_udp64_1m_flows", || udp_case(1_000_000, 2)),
        ("steady_tcp1460_64_conns", tcp_case),
    ];
    for (group, case) in cases.into_iter().filter(|(name, _)| wanted(name)) {
        let case = case();
        // Primed before criterion starts: priming inside the first timed call made criterion's
        // `--quick` mode, which sizes its samples by the wall-clock time of that call, take
        // two samples of 64 and 128 pairs at a million flows (a few bursts in all).
        case.fed.replace(Some(case.primed()));
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(1));
        g.bench_function("matched_pair", |b| b.iter_custom(|n| case.timed(n, Feed::PairByPair)));
        g.bench_function("matched_pair_burst32", |b| b.iter_custom(|n| case.timed(n, Feed::Bursts(Side::Primary))));
        g.bench_function("matched_pair_burst32_secondary_first", |b| {
            b.iter_custom(|n| case.timed(n, Feed::Bursts(Side::Secondary)))
        });
        g.bench_function("memcmp_baseline", |b| b.iter_custom(|n| memcmp(&case, n)));
        g.finish();
        counters(group, &case);
    }
    if wanted("steady_udp64_10k_shards") {
        shards(c);
    }
}

/// Throughput against the shard count: `SHARDS` shards (1 to 4), each on a thread of its own
/// with its own 10,000 flows and frames (the disjoint flow sets RSS gives each shard), fed in
/// bursts of 32 at once; one iteration is one pair per shard, so criterion's throughput is
/// the pairs all shards compare in a second together. Nothing is shared between the shards
/// but the allocator (untouched once primed), so on a machine with a CPU for each the rate
/// grows with the count; past the CPUs it can only stay level (`benches/plot-shards` draws it).
fn shards(c: &mut Criterion) {
    const SHARDS: usize = 4;
    let mut cases: Vec<Case> = (0..SHARDS).map(|_| udp_case(10_000, 16)).collect();
    for case in &cases {
        // Primed before any thread starts, so no shard primes while others are timed.
        case.fed.replace(Some(case.primed()));
    }
    let mut g = c.benchmark_group("steady_udp64_10k_shards");
    for shards in 1..=SHARDS {
        g.throughput(Throughput::Elements(shards as u64));
        g.bench_function(shards.to_string(), |b| {
            b.iter_custom(|n| {
                let start = std::sync::Barrier::new(shards);
                std::thread::scope(|scope| {
                    let running: Vec<_> = cases[..shards]
                        .iter_mut()
                        .map(|case| {
                            let start = &start;
                            scope.spawn(move || {
                                start.wait();
                                case.timed(n, Feed::Bursts(Side::Primary))
                            })
                        })
                        .collect();
                    // The slowest shard sets the time the count took.
                    running.into_iter().filter_map(|t| t.join().ok()).max().unwrap_or_default()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
