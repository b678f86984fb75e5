//! Checkpoint requests (SPEC §6): the reasons and the diagnostic a request carries (SPEC §10).
//!
//! Owns the reason strings (exactly those of SPEC §6) and the formatting of diagnostics. It
//! never decides *when* to request: that is the comparison modules' job. Diagnostics allocate,
//! which is fine because they are built only when a request is made, not per packet.

use core::fmt::Write as _;

use crate::time::Timestamp;

/// Why a checkpoint is requested (SPEC §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckpointReason {
    /// Bytes at the same TCP sequence position differ.
    TcpPayloadMismatch,
    /// One side ends its stream (FIN) where the other has data or FIN elsewhere.
    TcpFinMismatch,
    /// One side resets where the other has data or FIN.
    TcpRstMismatch,
    /// UDP/ICMP datagrams differ (issue 4).
    DatagramMismatch,
    /// Other IP protocols differ (issue 4).
    OtherMismatch,
    /// A primary segment was held only by the ACK rule for `compare_timeout`.
    AckLagTimeout,
    /// A primary packet stayed unmatched for `compare_timeout`.
    TimeoutPrimary,
    /// A secondary packet stayed unmatched for `compare_timeout`.
    TimeoutSecondary,
    /// A per-connection queue passed `max_queue_size`.
    QueueOverflow,
    /// Flow table (or mbufs) near exhaustion.
    ResourcePressure,
    /// Reassembly did not complete in time (issue 4).
    FragmentTimeout,
}

impl CheckpointReason {
    /// Number of reasons (sizes the counters).
    pub const COUNT: usize = 11;
    /// Every reason, in counter order.
    pub const ALL: [CheckpointReason; Self::COUNT] = [
        CheckpointReason::TcpPayloadMismatch,
        CheckpointReason::TcpFinMismatch,
        CheckpointReason::TcpRstMismatch,
        CheckpointReason::DatagramMismatch,
        CheckpointReason::OtherMismatch,
        CheckpointReason::AckLagTimeout,
        CheckpointReason::TimeoutPrimary,
        CheckpointReason::TimeoutSecondary,
        CheckpointReason::QueueOverflow,
        CheckpointReason::ResourcePressure,
        CheckpointReason::FragmentTimeout,
    ];

    /// The SPEC §6 string, used in requests, logs, counters and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointReason::TcpPayloadMismatch => "tcp-payload-mismatch",
            CheckpointReason::TcpFinMismatch => "tcp-fin-mismatch",
            CheckpointReason::TcpRstMismatch => "tcp-rst-mismatch",
            CheckpointReason::DatagramMismatch => "datagram-mismatch",
            CheckpointReason::OtherMismatch => "other-mismatch",
            CheckpointReason::AckLagTimeout => "ack-lag-timeout",
            CheckpointReason::TimeoutPrimary => "timeout-primary",
            CheckpointReason::TimeoutSecondary => "timeout-secondary",
            CheckpointReason::QueueOverflow => "queue-overflow",
            CheckpointReason::ResourcePressure => "resource-pressure",
            CheckpointReason::FragmentTimeout => "fragment-timeout",
        }
    }

    /// Parses a SPEC §6 string.
    pub fn from_str_opt(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl core::fmt::Display for CheckpointReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A shard's request for a checkpoint. At most one per reason and flow per epoch (an epoch
/// ends at `checkpoint_done`), so a diverged flow does not flood the control thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRequest {
    /// Why.
    pub reason: CheckpointReason,
    /// The flow, formatted like `tcp 10.0.0.2:80 > 10.0.0.1:40000` (empty for shard-wide).
    pub flow: String,
    /// Sequence positions and, for mismatches, a hex window (±32 bytes) of both sides.
    pub detail: String,
    /// When the shard noticed.
    pub now: Timestamp,
}

/// Radius of the hex window around the first differing byte (SPEC §10).
pub const HEX_WINDOW: usize = 32;

/// Appends `name[a..b]=hex` for the window of `bytes` (which start at stream offset
/// `bytes_start`) around stream offset `center`, marking the centre byte with `|`.
pub(crate) fn hex_window(out: &mut String, name: &str, bytes: &[u8], bytes_start: u32, center: u32) {
    let rel = center.wrapping_sub(bytes_start) as usize;
    let lo = rel.saturating_sub(HEX_WINDOW).min(bytes.len());
    let hi = rel.saturating_add(HEX_WINDOW).min(bytes.len());
    let _ = write!(out, " {name}[{}..{}]=", bytes_start.wrapping_add(lo as u32), bytes_start.wrapping_add(hi as u32));
    for (i, b) in bytes.get(lo..hi).unwrap_or(&[]).iter().enumerate() {
        if lo + i == rel {
            out.push('|');
        }
        let _ = write!(out, "{b:02x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_reason_strings_are_spec_strings() {
        let all: Vec<&str> = CheckpointReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            all,
            [
                "tcp-payload-mismatch",
                "tcp-fin-mismatch",
                "tcp-rst-mismatch",
                "datagram-mismatch",
                "other-mismatch",
                "ack-lag-timeout",
                "timeout-primary",
                "timeout-secondary",
                "queue-overflow",
                "resource-pressure",
                "fragment-timeout"
            ]
        );
        for r in CheckpointReason::ALL {
            assert_eq!(CheckpointReason::from_str_opt(r.as_str()), Some(r));
        }
    }

    #[test]
    fn test_hex_window_marks_centre() {
        let mut s = String::new();
        hex_window(&mut s, "primary", b"\x00\x01\x02\x03", 100, 102);
        assert_eq!(s, " primary[100..104]=0001|0203");
        let mut s = String::new();
        hex_window(&mut s, "p", &[0xaa; 100], 0, 50);
        assert_eq!(s.matches("aa").count(), 64);
    }
}
