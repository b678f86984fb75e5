//! The runtime's clock: the TSC turned into the core's [`Timestamp`] (nanoseconds since
//! start-up). The comparator core never reads a clock; the lcores read this one every round.

use colo_core::Timestamp;

/// Fraction bits of [`TscClock`]'s nanoseconds-per-tick factor.
const SCALE_BITS: u32 = 32;

/// TSC-based monotonic clock shared (by copy) by every lcore.
///
/// Ticks become nanoseconds by a multiplication by a fixed-point factor (nanoseconds per
/// tick, 32 fraction bits) worked out once, not by a 128-bit division each read: the division
/// is a library call of tens of cycles, and every lcore reads the clock every polling round.
/// The factor is rounded down, so a reading is late by less than a nanosecond for every 2^32
/// ticks (about 20 µs a day at 1 GHz, 60 µs at 3 GHz), where every deadline the clock serves
/// is in milliseconds; the reading never goes backwards.
#[derive(Debug, Clone, Copy)]
pub struct TscClock {
    start: u64,
    /// Nanoseconds per tick, times 2^[`SCALE_BITS`].
    ns_per_tick: u64,
}

impl TscClock {
    /// A clock starting now. Needs the EAL (which measures the TSC frequency).
    pub fn start() -> Self {
        Self::at(dpdk::tsc(), dpdk::tsc_hz())
    }

    /// A clock whose zero is tick `start` of a counter running at `hz`.
    fn at(start: u64, hz: u64) -> Self {
        // At most 10^9 · 2^32 < 2^62 (hz ≥ 1): fits.
        let ns_per_tick = ((1_000_000_000u128 << SCALE_BITS) / u128::from(hz.max(1))) as u64;
        TscClock { start, ns_per_tick }
    }

    /// Nanoseconds since start.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.ticks_to_nanos(dpdk::tsc().saturating_sub(self.start)))
    }

    /// TSC ticks as nanoseconds.
    pub fn ticks_to_nanos(&self, ticks: u64) -> u64 {
        // < 2^64 · 2^62: no overflow in 128 bits; past u64 nanoseconds (584 years) it saturates.
        u64::try_from((u128::from(ticks) * u128::from(self.ns_per_tick)) >> SCALE_BITS).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(ticks: u64, hz: u64) -> u128 {
        u128::from(ticks) * 1_000_000_000 / u128::from(hz)
    }

    #[test]
    fn ticks_read_as_the_exact_nanoseconds_less_a_nanosecond_per_2_pow_32_ticks() {
        let a_day = 86_400u64;
        for hz in [1_000_000u64, 999_999_937, 1_000_000_000, 2_596_144_000, 3_700_000_000, 5_000_000_001] {
            let clock = TscClock::at(0, hz);
            for ticks in [0, 1, 7, hz - 1, hz, hz + 1, hz * 60 + 12_345, hz * a_day, hz * a_day * 365] {
                let (got, want) = (u128::from(clock.ticks_to_nanos(ticks)), exact(ticks, hz));
                // Never ahead of the exact reading, and behind by less than a nanosecond per
                // 2^32 ticks (the factor's rounding) plus one for each of the two floors.
                assert!(got <= want, "{hz} Hz, {ticks} ticks: {got} ns, exact {want}");
                let bound = u128::from(ticks >> SCALE_BITS) + 2;
                assert!(want - got <= bound, "{hz} Hz, {ticks} ticks: {got} ns, exact {want}");
                // Which, for a day of ticks at these rates, is tens of microseconds at most.
                if ticks == hz * a_day {
                    assert!(want - got < 120_000, "{hz} Hz: {} ns late after a day", want - got);
                }
            }
        }
    }

    #[test]
    fn readings_never_go_backwards_and_saturate_at_the_end() {
        let clock = TscClock::at(0, 2_596_144_000);
        let mut last = 0;
        for ticks in (0..100_000u64).map(|i| i * 37).chain([u64::MAX / 2, u64::MAX - 1, u64::MAX]) {
            let ns = clock.ticks_to_nanos(ticks);
            assert!(ns >= last, "{ticks} ticks read {ns} after {last}");
            last = ns;
        }
        // A 1 Hz counter's u64::MAX ticks are far past u64 nanoseconds: saturated, not wrapped.
        assert_eq!(TscClock::at(0, 1).ticks_to_nanos(u64::MAX), u64::MAX);
    }
}
