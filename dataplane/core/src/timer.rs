//! Per-shard deadline queue (SPEC §6: timeouts are per packet and exact, not a scan).
//!
//! Owns the ordering of (deadline, flow slot, generation) entries. Entries are invalidated
//! lazily: the flow table checks the slot's generation and the flow's own idea of its next
//! deadline when an entry fires. It never looks at flows itself.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::time::Timestamp;

/// Two timers per flow keep the heap at O(flows): the compare timer (short, re-armed when a
/// packet starts waiting) and the lifetime timer (idle/linger, re-armed lazily when it fires
/// early), so activity never pushes a fresh long-lived entry per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    Compare,
    Lifetime,
    /// A partial datagram's reassembly deadline; the slot is a reassembly slot.
    Reassembly,
}

#[derive(Default)]
pub(crate) struct DeadlineQueue {
    heap: BinaryHeap<Reverse<(Timestamp, u32, u32, TimerKind)>>,
}

impl DeadlineQueue {
    pub(crate) fn push(&mut self, at: Timestamp, slot: u32, generation: u32, kind: TimerKind) {
        self.heap.push(Reverse((at, slot, generation, kind)));
    }

    pub(crate) fn peek(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse((t, ..))| *t)
    }

    /// Pops the earliest entry due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Timestamp) -> Option<(Timestamp, u32, u32, TimerKind)> {
        match self.heap.peek() {
            Some(Reverse((t, ..))) if *t <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Keeps only entries `live` accepts (drops stale ones in O(n)).
    pub(crate) fn retain(&mut self, mut live: impl FnMut(Timestamp, u32, u32, TimerKind) -> bool) {
        self.heap.retain(|Reverse((t, s, g, k))| live(*t, *s, *g, *k));
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

/// The compare deadline of a connection: `timeout` after the older of its oldest held primary
/// and secondary packets (SPEC §6: per packet, measured from arrival), if any is held.
#[inline]
pub(crate) fn oldest_deadline(
    primary: Option<Timestamp>,
    secondary: Option<Timestamp>,
    timeout: core::time::Duration,
) -> Option<Timestamp> {
    let oldest = match (primary, secondary) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    oldest.map(|t| t.saturating_add(timeout))
}
