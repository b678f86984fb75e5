//! The runtime's clock: the TSC turned into the core's [`Timestamp`] (nanoseconds since
//! start-up). The comparator core never reads a clock; the lcores read this one per burst.

use colo_core::Timestamp;

/// TSC-based monotonic clock shared (by copy) by every lcore.
#[derive(Debug, Clone, Copy)]
pub struct TscClock {
    start: u64,
    hz: u64,
}

impl TscClock {
    /// A clock starting now. Needs the EAL (which measures the TSC frequency).
    pub fn start() -> Self {
        TscClock { start: dpdk::tsc(), hz: dpdk::tsc_hz().max(1) }
    }

    /// Nanoseconds since start.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.ticks_to_nanos(dpdk::tsc().saturating_sub(self.start)))
    }

    /// TSC ticks as nanoseconds.
    pub fn ticks_to_nanos(&self, ticks: u64) -> u64 {
        (u128::from(ticks) * 1_000_000_000 / u128::from(self.hz)) as u64
    }
}
