//! Large allocations on the kernel's hugetlb pool: the comparator's flow tables on 2 MiB pages.
//!
//! A flow table is read at random: with a million flows, nearly every frame's entry (and its
//! index bucket) sits on a 4 KiB page the TLB does not hold, and the page walk comes on top of
//! the cache miss. DPDK keeps its own tables in hugepage memory for that reason. The comparator
//! core allocates with `Vec` and knows nothing of pages, so the choice is made here, in the
//! process's global allocator: [`HugeTables`] serves an allocation of [`MIN_BYTES`] or more
//! from an anonymous `MAP_HUGETLB` mapping once [`enable`] was called, and everything else
//! (and everything before `enable`) from the system allocator.
//!
//! Owns: the addresses of the mappings it made (a fixed table of [`MAX_MAPPINGS`]), and the
//! counters [`stats`] reads.
//!
//! Must never: fail an allocation the system allocator would have served (an exhausted pool
//! or a full mapping table fall back to the system allocator, counted); map with `MAP_NORESERVE` (a hugetlb page missing at fault time is a `SIGBUS`;
//! without it the kernel reserves every page at `mmap` and says no there); hand a mapping to
//! the system allocator or a system block to `munmap`; allocate (it runs inside `alloc`).
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The hugepage size the mappings use (the pool `/proc/sys/vm/nr_hugepages` sizes).
pub const PAGE: usize = 2 << 20;
/// Allocations from this size up go to the pool: a flow table of 10,000 entries and up. (At
/// most a third of a mapping is rounding.)
pub const MIN_BYTES: usize = 2 * PAGE;
/// How many mappings can be live at once; more are served by the system allocator.
pub const MAX_MAPPINGS: usize = 256;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Start addresses of live mappings (0: a free entry).
static MAPPINGS: [AtomicUsize; MAX_MAPPINGS] = [const { AtomicUsize::new(0) }; MAX_MAPPINGS];
static MAPPED_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);
static COPIES: AtomicU64 = AtomicU64::new(0);

/// The global allocator: `#[global_allocator] static A: HugeTables = HugeTables;`.
pub struct HugeTables;

/// What the allocator has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes on hugepages now (mappings rounded up to whole pages).
    pub hugepage_bytes: usize,
    /// The most there have been at once.
    pub peak_hugepage_bytes: usize,
    /// Large allocations served by the system allocator after [`enable`] (no page left in the
    /// pool, or the mapping table full).
    pub fallbacks: u64,
    /// Resizes of a mapping (each a new block and a copy: hugetlb mappings cannot grow).
    pub copies: u64,
}

/// From now on, allocations of [`MIN_BYTES`] or more are tried on hugepages first.
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// The counters.
pub fn stats() -> Stats {
    Stats {
        hugepage_bytes: MAPPED_BYTES.load(Ordering::Relaxed),
        peak_hugepage_bytes: PEAK_BYTES.load(Ordering::Relaxed),
        fallbacks: FALLBACKS.load(Ordering::Relaxed),
        copies: COPIES.load(Ordering::Relaxed),
    }
}

/// `size` rounded up to whole hugepages.
fn mapped_len(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

/// Whether an allocation of `layout` should be tried on hugepages.
fn wanted(layout: Layout) -> bool {
    layout.size() >= MIN_BYTES && layout.align() <= PAGE && enabled()
}

/// The table entry holding `ptr`, if it is one of our mappings.
fn entry_of(ptr: *mut u8) -> Option<&'static AtomicUsize> {
    let addr = ptr as usize;
    MAPPINGS.iter().find(|e| e.load(Ordering::Acquire) == addr)
}

/// Maps `size` bytes of hugepages and records the mapping; null when the pool (or the table)
/// cannot take it.
fn map(size: usize) -> *mut u8 {
    let len = mapped_len(size);
    // SAFETY: an anonymous private mapping at an address the kernel chooses; no existing memory
    // is affected. Without MAP_NORESERVE the kernel reserves every page now, so later faults
    // on it cannot fail.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let addr = p as usize;
    if MAPPINGS.iter().any(|e| e.compare_exchange(0, addr, Ordering::AcqRel, Ordering::Relaxed).is_ok()) {
        let now = MAPPED_BYTES.fetch_add(len, Ordering::Relaxed) + len;
        PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
        return p.cast();
    }
    // The table is full: give the mapping back.
    // SAFETY: `p` is the mapping of `len` bytes made above, not handed out to anyone.
    unsafe { libc::munmap(p, len) };
    std::ptr::null_mut()
}

/// A mapping for `layout` if it belongs on the pool and the pool has room (a refusal is
/// counted); null otherwise.
fn from_pool(layout: Layout) -> *mut u8 {
    if !wanted(layout) {
        return std::ptr::null_mut();
    }
    let p = map(layout.size());
    if p.is_null() {
        FALLBACKS.fetch_add(1, Ordering::Relaxed);
    }
    p
}

/// Unmaps our mapping at `entry` of an allocation of `size` bytes.
fn unmap(entry: &AtomicUsize, size: usize) {
    let addr = entry.swap(0, Ordering::AcqRel);
    let len = mapped_len(size);
    MAPPED_BYTES.fetch_sub(len, Ordering::Relaxed);
    // SAFETY: `addr` is a mapping of `len` bytes this allocator made (it was in the table) and
    // its owner has given it back.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

// SAFETY: every block handed out is either the system allocator's (and goes back to it) or a
// fresh mapping of at least the requested size, aligned to a hugepage (so to any alignment up
// to `PAGE`, the only ones sent there), recorded until it is unmapped; the two are told apart
// by the record, never by guessing.
unsafe impl GlobalAlloc for HugeTables {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = from_pool(layout);
        if !p.is_null() {
            return p;
        }
        // SAFETY: forwarded with the caller's layout (non-zero size, as `alloc` requires).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // A fresh anonymous mapping reads as zeros.
        let p = from_pool(layout);
        if !p.is_null() {
            return p;
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= MIN_BYTES {
            if let Some(entry) = entry_of(ptr) {
                unmap(entry, layout.size());
                return;
            }
        }
        // SAFETY: not one of our mappings, so the system allocator's block with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let ours = layout.size() >= MIN_BYTES && entry_of(ptr).is_some();
        if !ours {
            let q = Layout::from_size_align(new_size, layout.align()).map_or(std::ptr::null_mut(), from_pool);
            if q.is_null() {
                // SAFETY: the system allocator's block, resized by it.
                return unsafe { System.realloc(ptr, layout, new_size) };
            }
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe { std::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size)) };
            // SAFETY: the system allocator's block with its layout, no longer used.
            unsafe { System.dealloc(ptr, layout) };
            return q;
        }
        // One of our mappings: hugetlb mappings cannot be resized (`mremap` refuses to grow
        // them), so a new block and a copy. Tables that must not stall on growth are sized
        // once (the comparator reserves its flow table's full capacity up front).
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: a valid non-zero layout (realloc's contract gives a non-zero new size).
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            COPIES.fetch_add(1, Ordering::Relaxed);
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe { std::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size)) };
            // SAFETY: the old block with its layout, no longer used.
            unsafe { self.dealloc(ptr, layout) };
        }
        q
    }
}
