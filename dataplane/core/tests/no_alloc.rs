//! SPEC §2: the per-packet path allocates nothing in steady state. A counting global
//! allocator (this test binary only; the library stays `forbid(unsafe_code)`) watches a
//! warmed-up shard compare matched traffic, pure ACKs, a retransmission and timer runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use colo_core::fixtures::Conn;
use colo_core::{Config, Shard, Side, Timestamp};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is an atomic side effect that does not touch the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's (non-zero-size layout), forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout` (we forward everything).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr`/`layout` came from `System` via this allocator; forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_per_packet_path_does_not_allocate() {
    // Self-check: the counter sees allocations.
    COUNTING.store(true, Ordering::Relaxed);
    let probe = std::hint::black_box(vec![1u8; 64]);
    COUNTING.store(false, Ordering::Relaxed);
    assert!(ALLOCS.load(Ordering::Relaxed) > 0 && probe.len() == 64);

    let conn = Conn::default();
    let mut shard: Shard<Vec<u8>> = Shard::new(Config::default());
    let payload = [0x5au8; 1460];
    let round = |shard: &mut Shard<Vec<u8>>, frames: Vec<(Side, Vec<u8>)>, t: u64, count: bool| {
        COUNTING.store(count, Ordering::Relaxed);
        for (side, f) in frames {
            shard.handle(side, f, Timestamp::from_micros(t));
            while shard.poll_action().is_some() {}
        }
        shard.handle_timeout(Timestamp::from_micros(t));
        while shard.poll_action().is_some() {}
        COUNTING.store(false, Ordering::Relaxed);
    };
    let batch = |i: u32| {
        let off = i * 1460 * 4;
        let mut v = Vec::new();
        for k in 0..4 {
            v.push((Side::Primary, conn.data(off + k * 1460, &payload)));
        }
        v.push((Side::Primary, conn.pure_ack(off + 4 * 1460, conn.ack)));
        v.push((Side::Primary, conn.data(off, &payload))); // retransmission
        for k in 0..4 {
            v.push((Side::Secondary, conn.data(off + k * 1460, &payload)));
        }
        v.push((Side::Secondary, conn.pure_ack(off + 4 * 1460, conn.ack)));
        v
    };
    for i in 0..50 {
        let frames = batch(i);
        round(&mut shard, frames, u64::from(i) * 10, false);
    }
    let mut allocs = 0;
    for i in 50..1050 {
        let frames = batch(i); // built outside the counted region
        ALLOCS.store(0, Ordering::Relaxed);
        round(&mut shard, frames, u64::from(i) * 10, true);
        allocs += ALLOCS.load(Ordering::Relaxed);
    }
    assert_eq!(allocs, 0, "allocations on the steady-state packet path");
    assert_eq!(shard.counters().held_primary_frames, 0);
    assert!(shard.counters().released_total() > 5_000);
}
