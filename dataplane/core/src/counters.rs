//! Shard statistics (SPEC §10) and the accounting invariant.
//!
//! Owns plain counters and gauges updated by the shard on the packet path (no allocation, no
//! atomics: the runtime copies them out or reads them at quiescent points). It never decides
//! anything; it only records.

use core::time::Duration;

use crate::checkpoint::CheckpointReason;
use crate::reasons::{DropReason, Via};
use crate::wire::MalformedReason;
use crate::Side;

/// Hold-time statistics of released primary frames: a log2 histogram over nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldTime {
    /// Released frames measured.
    pub count: u64,
    /// Sum of hold times, ns.
    pub sum_ns: u64,
    /// Longest hold time, ns.
    pub max_ns: u64,
    /// `buckets[i]` counts hold times in `[2^(i-1), 2^i)` ns (`buckets[0]`: 0 ns).
    pub buckets: [u64; 64],
}

impl Default for HoldTime {
    fn default() -> Self {
        HoldTime { count: 0, sum_ns: 0, max_ns: 0, buckets: [0; 64] }
    }
}

impl HoldTime {
    #[cfg(test)]
    fn record(&mut self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// One release held `ns` nanoseconds (plain integers: a `Duration` round trip divides and
    /// multiplies by 10^9 on every release).
    #[inline]
    pub(crate) fn record_ns(&mut self, ns: u64) {
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
        let idx = (64 - ns.leading_zeros() as usize).min(63);
        self.buckets[idx] += 1;
    }

    /// The non-empty buckets as `{"below_us": upper bound, "frames": count}`, shortest first
    /// (bucket 0, a hold of 0 ns, has the bound 0.001 µs).
    pub fn histogram(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| serde_json::json!({"below_us": (1u128 << i) as f64 / 1000.0, "frames": n}))
            .collect();
        serde_json::Value::Array(rows)
    }

    /// Upper bound of the bucket holding quantile `q` (0.0..=1.0), e.g. p50, p99.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let target = ((self.count as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                let upper = if i == 0 { 0 } else { 1u64 << i.min(63) };
                return Duration::from_nanos(upper.min(self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }
}

/// Per-shard counters and gauges (SPEC §10).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames handed to `handle`, primary side.
    pub primary_in: u64,
    /// Frames handed to `handle`, secondary side.
    pub secondary_in: u64,
    /// Primary frames released, indexed by [`Via`] (`Via::ALL` order).
    pub released: [u64; 4],
    /// Verified parts of held primary segments released ahead of their rest (a secondary
    /// stalled mid-segment, waiting for the client's acknowledgement of what it sent; see
    /// [`crate::Action::ReleasePart`]). Not frames: the segment stays held and is counted
    /// in `released` when its rest leaves.
    pub released_parts: u64,
    /// Secondary frames consumed after comparison (or carrying nothing to compare).
    pub secondary_consumed: u64,
    /// Secondary frames dropped by a checkpoint flush.
    pub secondary_flushed: u64,
    /// Secondary frames forwarded after a failover to the secondary.
    pub secondary_forwarded: u64,
    /// Of those, TCP segments moved into the primary's sequence space and clock (proxy mode,
    /// connections the client learned from the primary; SPEC §6).
    pub failover_rewritten: u64,
    /// Primary frames dropped, indexed by [`DropReason`] (`DropReason::ALL` order).
    pub primary_dropped: [u64; DropReason::COUNT],
    /// Secondary frames dropped (other than consumed/flushed), by [`DropReason`].
    pub secondary_dropped: [u64; DropReason::COUNT],
    /// Malformed frames by [`MalformedReason`] (both sides).
    pub malformed: [u64; MalformedReason::COUNT],
    /// Non-IP and malformed frames (both sides) compared under `NonIpPolicy::Compare`.
    pub non_ip_compared: u64,
    /// Datagrams reassembled from fragments (both sides).
    pub reassembled: u64,
    /// Datagrams whose fragments could not be reassembled (conflicting overlap, bad length,
    /// too many fragments), both sides (SPEC §4).
    pub reassembly_failed: u64,
    /// Gauge: partial datagrams (and post-flush tombstones) in the reassembly table.
    pub reassembly_partials: u64,
    /// Gauge: primary frames held.
    pub held_primary_frames: u64,
    /// Gauge: bytes of primary frames held.
    pub held_primary_bytes: u64,
    /// Gauge: secondary frames held.
    pub held_secondary_frames: u64,
    /// Gauge: bytes of secondary frames held.
    pub held_secondary_bytes: u64,
    /// Gauge: flows in the table.
    pub flows: u64,
    /// Flows evicted to make room (closed or idle, never with held frames).
    pub flows_evicted: u64,
    /// Checkpoint requests by reason (`CheckpointReason::ALL` order).
    pub checkpoint_requests: [u64; CheckpointReason::COUNT],
    /// `checkpoint_done` calls.
    pub checkpoints_completed: u64,
    /// Hold time of released primary frames.
    pub hold_time: HoldTime,
}

impl Counters {
    /// Primary frames released by `via`.
    pub fn released_via(&self, via: Via) -> u64 {
        self.released[via as usize]
    }
    /// All primary frames released.
    pub fn released_total(&self) -> u64 {
        self.released.iter().sum()
    }
    /// Frames held now, both guests'.
    pub fn held_frames(&self) -> u64 {
        self.held_primary_frames + self.held_secondary_frames
    }
    /// Frames of `side` dropped for `reason`.
    pub fn dropped(&self, side: Side, reason: DropReason) -> u64 {
        match side {
            Side::Primary => self.primary_dropped[reason as usize],
            Side::Secondary => self.secondary_dropped[reason as usize],
        }
    }
    /// Checkpoint requests for `reason`.
    pub fn requests(&self, reason: CheckpointReason) -> u64 {
        self.checkpoint_requests[reason as usize]
    }
    /// Malformed frames for `reason`.
    pub fn malformed_count(&self, reason: MalformedReason) -> u64 {
        self.malformed[reason as usize]
    }

    /// The accounting invariant of SPEC §10: primary in = released + held + dropped, and
    /// secondary in = consumed + flushed + forwarded + held + dropped. Holds after every
    /// call into the shard once its actions are drained (frames in the action queue count as
    /// released/dropped already).
    pub fn check_accounting(&self) -> Result<(), String> {
        let p_drop: u64 = self.primary_dropped.iter().sum();
        let p_out = self.released_total() + self.held_primary_frames + p_drop;
        let s_drop: u64 = self.secondary_dropped.iter().sum();
        let s_out = self.secondary_consumed
            + self.secondary_flushed
            + self.secondary_forwarded
            + self.held_secondary_frames
            + s_drop;
        if p_out != self.primary_in {
            return Err(format!(
                "primary: in {} != released {} + held {} + dropped {}",
                self.primary_in,
                self.released_total(),
                self.held_primary_frames,
                p_drop
            ));
        }
        if s_out != self.secondary_in {
            return Err(format!(
                "secondary: in {} != consumed {} + flushed {} + forwarded {} + held {} + dropped {}",
                self.secondary_in,
                self.secondary_consumed,
                self.secondary_flushed,
                self.secondary_forwarded,
                self.held_secondary_frames,
                s_drop
            ));
        }
        Ok(())
    }

    /// The statistics schema every report uses (`--stats-json`, `colo-ctl stats`, colo-replay's
    /// report): stable names from the reasons' `as_str`, zero drop and request counts left
    /// out, and the accounting check's verdict.
    pub fn to_json(&self) -> serde_json::Value {
        let named =
            |pairs: &mut dyn Iterator<Item = (&'static str, u64)>| -> serde_json::Map<String, serde_json::Value> {
                pairs.filter(|(_, n)| *n > 0).map(|(k, n)| (k.to_string(), n.into())).collect()
            };
        let dropped = |side: Side| {
            named(
                &mut DropReason::ALL
                    .into_iter()
                    .filter(|r| !matches!(r, DropReason::Consumed | DropReason::Flushed))
                    .map(|r| (r.as_str(), self.dropped(side, r))),
            )
        };
        let released: serde_json::Map<_, _> =
            Via::ALL.iter().map(|v| (v.as_str().to_string(), self.released_via(*v).into())).collect();
        serde_json::json!({
            "primary_in": self.primary_in,
            "secondary_in": self.secondary_in,
            "released": released,
            "released_total": self.released_total(),
            "released_parts": self.released_parts,
            "secondary_consumed": self.secondary_consumed,
            "secondary_flushed": self.secondary_flushed,
            "secondary_forwarded": self.secondary_forwarded,
            "failover_rewritten": self.failover_rewritten,
            "primary_dropped": dropped(Side::Primary),
            "secondary_dropped": dropped(Side::Secondary),
            "malformed": named(&mut MalformedReason::ALL.into_iter().map(|r| (r.as_str(), self.malformed_count(r)))),
            "held_primary_frames": self.held_primary_frames,
            "held_primary_bytes": self.held_primary_bytes,
            "held_secondary_frames": self.held_secondary_frames,
            "held_secondary_bytes": self.held_secondary_bytes,
            "flows": self.flows,
            "flows_evicted": self.flows_evicted,
            "reassembled": self.reassembled,
            "reassembly_failed": self.reassembly_failed,
            "checkpoint_requests": named(&mut CheckpointReason::ALL.into_iter().map(|r| (r.as_str(), self.requests(r)))),
            "checkpoints_completed": self.checkpoints_completed,
            "hold_time_us": {
                "p50": self.hold_time.quantile(0.5).as_micros() as u64,
                "p99": self.hold_time.quantile(0.99).as_micros() as u64,
                "max": self.hold_time.max_ns / 1_000,
                "histogram": self.hold_time.histogram(),
            },
            "accounting": match self.check_accounting() { Ok(()) => "ok".to_string(), Err(e) => e },
        })
    }

    /// Adds another shard's counters (the control thread's sum). Gauges add too.
    pub fn merge(&mut self, o: &Counters) {
        self.primary_in += o.primary_in;
        self.secondary_in += o.secondary_in;
        for (a, b) in self.released.iter_mut().zip(o.released) {
            *a += b;
        }
        self.released_parts += o.released_parts;
        self.secondary_consumed += o.secondary_consumed;
        self.secondary_flushed += o.secondary_flushed;
        self.secondary_forwarded += o.secondary_forwarded;
        self.failover_rewritten += o.failover_rewritten;
        for (a, b) in self.primary_dropped.iter_mut().zip(o.primary_dropped) {
            *a += b;
        }
        for (a, b) in self.secondary_dropped.iter_mut().zip(o.secondary_dropped) {
            *a += b;
        }
        for (a, b) in self.malformed.iter_mut().zip(o.malformed) {
            *a += b;
        }
        self.non_ip_compared += o.non_ip_compared;
        self.reassembled += o.reassembled;
        self.reassembly_failed += o.reassembly_failed;
        self.reassembly_partials += o.reassembly_partials;
        self.held_primary_frames += o.held_primary_frames;
        self.held_primary_bytes += o.held_primary_bytes;
        self.held_secondary_frames += o.held_secondary_frames;
        self.held_secondary_bytes += o.held_secondary_bytes;
        self.flows += o.flows;
        self.flows_evicted += o.flows_evicted;
        for (a, b) in self.checkpoint_requests.iter_mut().zip(o.checkpoint_requests) {
            *a += b;
        }
        self.checkpoints_completed += o.checkpoints_completed;
        let h = &mut self.hold_time;
        h.count += o.hold_time.count;
        h.sum_ns = h.sum_ns.saturating_add(o.hold_time.sum_ns);
        h.max_ns = h.max_ns.max(o.hold_time.max_ns);
        for (a, b) in h.buckets.iter_mut().zip(o.hold_time.buckets) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod hold_time_tests {
    use super::*;

    #[test]
    fn the_histogram_lists_each_non_empty_power_of_two_bucket_with_its_upper_bound() {
        let mut h = HoldTime::default();
        for ns in [0u64, 1500, 1500, 5_000_000] {
            h.record(Duration::from_nanos(ns));
        }
        assert_eq!(
            h.histogram(),
            serde_json::json!([
                {"below_us": 0.001, "frames": 1},
                {"below_us": 2.048, "frames": 2},
                {"below_us": 8388.608, "frames": 1},
            ])
        );
        assert_eq!(h.quantile(0.5), Duration::from_nanos(2048));
    }
}
