//! Software prefetch: asks the CPU to start reading the cache lines a byte range spans, and
//! returns at once.
//!
//! The comparator core reads each frame's compared bytes once, from memory the NIC (or the
//! other guest) wrote: out of the cache. A plain read of those lines ahead of time waits for
//! them like any load and holds up the instructions behind it; a prefetch instruction only
//! starts the transfer, so the memory reads overlap the work on the frames before. DPDK's
//! `rte_prefetch0` is the same instruction. Stable Rust offers it only as an `x86_64`
//! intrinsic with a `target_feature`, which a caller without that attribute must call in
//! `unsafe`; the core forbids `unsafe`, so the call lives here.
//!
//! Owns nothing. Must never: read or write memory (a prefetch is a hint: it changes no
//! program state and never faults, whatever the address), or ask for a line twice.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

/// Bytes in a cache line (x86_64).
pub const LINE: usize = 64;

/// Starts reading into the cache (all levels) every line that `[start, start + len)` spans.
///
/// The range is only an address range: it may point anywhere, even to memory already freed
/// (a prefetch reads nothing the program can see). A no-op where there is no prefetch
/// instruction to give.
#[inline]
pub fn range(start: *const u8, len: usize) {
    for line in lines(start as usize, len) {
        one_line(line as *const u8);
    }
}

/// [`range`] over a slice's bytes, at most the first `max` of them.
#[inline]
pub fn bytes(bytes: &[u8], max: usize) {
    range(bytes.as_ptr(), bytes.len().min(max));
}

/// The start of each line `[start, start + len)` spans (a range that starts inside a line
/// spans that line too: 30 bytes may span two lines).
#[inline]
fn lines(start: usize, len: usize) -> impl Iterator<Item = usize> {
    let first = start & !(LINE - 1);
    let count = match len {
        0 => 0,
        _ => (start.saturating_add(len - 1) - first) / LINE + 1,
    };
    (0..count).map(move |i| first.wrapping_add(i * LINE))
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
#[inline(always)]
fn one_line(at: *const u8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: `_mm_prefetch` is a safe function for any address (it never dereferences it,
    // and the instruction never faults); calling it is `unsafe` only because it is declared
    // with `#[target_feature(enable = "sse")]`, and this function is compiled only where the
    // build enables `sse` (every x86_64 CPU has it: it is part of the architecture's baseline).
    unsafe { _mm_prefetch::<_MM_HINT_T0>(at.cast::<i8>()) }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
#[inline(always)]
fn one_line(_at: *const u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_spans_the_lines_it_touches() {
        let count = |start, len| lines(start, len).count();
        assert_eq!(count(0, 0), 0);
        assert_eq!(count(0, 1), 1);
        assert_eq!(count(0, 64), 1);
        assert_eq!(count(0, 65), 2);
        // 30 bytes across a boundary: two lines, the first one from its start.
        assert_eq!(lines(50, 30).collect::<Vec<_>>(), vec![0, 64]);
        // A full-size frame's payload from byte 54 of a line-aligned buffer.
        assert_eq!(count(4096 + 54, 1460), 24);
        assert_eq!(lines(4096 + 54, 1460).last(), Some(4096 + 23 * 64));
        // The end of the address space: no line past it.
        assert_eq!(lines(usize::MAX - 10, 1000).collect::<Vec<_>>(), vec![usize::MAX & !(LINE - 1)]);
    }

    #[test]
    fn any_address_may_be_prefetched() {
        // No read happens: null, dangling, the end of the address space, and a freed
        // buffer are all fine (a read of any of them, where a prefetch should be, would
        // bring this test down).
        range(std::ptr::null(), 4096);
        range(usize::MAX as *const u8, 1);
        range((usize::MAX - 100) as *const u8, 1000);
        let freed = vec![1u8; 3000];
        let (at, len) = (freed.as_ptr(), freed.len());
        drop(freed);
        range(at, len);
        bytes(&[1, 2, 3], 2048);
        bytes(&[], 2048);
    }
}
