//! The comparator's vocabulary of outcomes (SPEC §9.2, §10): why a primary frame was released,
//! why a frame was handed back untransmitted, why one is still held, and a flow's state as
//! reports show it. A leaf: the counters, the output sink and
//! every comparison module name these; it names nothing of theirs.
//!
//! Must never: change a reason's string (reports, counters and operators' dashboards use it)
//! or its counter order without updating `ALL`.

/// Why a primary frame was released (SPEC §9.2 `via`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// Every position verified against the secondary (and the ACK rule holds).
    Match,
    /// Wholly below `compared` when it arrived: the client already saw those bytes.
    Retransmission,
    /// Released by a checkpoint completion or failover.
    Flush,
    /// Not compared (non-IP, malformed, not-yet-compared classes, after failover).
    Passthrough,
}

impl Via {
    /// Every value, in counter order.
    pub const ALL: [Via; 4] = [Via::Match, Via::Retransmission, Via::Flush, Via::Passthrough];

    /// `match`, `retransmission`, `flush`, `passthrough`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Match => "match",
            Via::Retransmission => "retransmission",
            Via::Flush => "flush",
            Via::Passthrough => "passthrough",
        }
    }
}

/// Why a frame is handed back without being transmitted.
///
/// `Consumed` and `Flushed` are the normal ends of secondary frames and are counted as
/// `secondary_consumed` / `secondary_flushed`, not as drops; every other reason is a drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Secondary frame fully compared (or carrying nothing to compare).
    Consumed,
    /// Secondary frame discarded by a checkpoint flush.
    Flushed,
    /// Secondary non-IP frame under the passthrough policy.
    NonIp,
    /// Secondary malformed frame under the passthrough policy.
    Malformed,
    /// Secondary frame beyond `max_queue_size` (a checkpoint was requested).
    QueueFull,
    /// Primary frame past the shard's memory budget (memory truly exhausted, SPEC §6); a
    /// secondary frame dropped to keep that budget for the primary's.
    MemoryBudget,
    /// Flow table full and nothing evictable (a `resource-pressure` request was made).
    FlowTableFull,
    /// A frame of a new flow past the shard's new-flow budget (SPEC §11: a flood of new
    /// flows must not starve established ones); the other guest's frame of that flow goes
    /// the same way, so the guests stay alike.
    NewFlowBudget,
    /// Frame of the side no longer forwarded after a failover.
    FailedOver,
    /// Fragment beyond the reassembly bounds (a `resource-pressure` request was made); for
    /// the primary only when the overflow FIFO is full too (memory truly exhausted).
    ReassemblyFull,
    /// Secondary fragment of a datagram that cannot be reassembled (conflicting overlap,
    /// bad length, too many fragments, reassembly timeout).
    ReassemblyFailed,
    /// A branch the shard's own invariants rule out was taken (a bug): the frame is counted
    /// here, never lost silently (SPEC §10); debug builds and the fuzzers stop on it.
    Internal,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 12;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Consumed,
        DropReason::Flushed,
        DropReason::NonIp,
        DropReason::Malformed,
        DropReason::QueueFull,
        DropReason::MemoryBudget,
        DropReason::FlowTableFull,
        DropReason::NewFlowBudget,
        DropReason::FailedOver,
        DropReason::ReassemblyFull,
        DropReason::ReassemblyFailed,
        DropReason::Internal,
    ];

    /// Stable name for counters and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Consumed => "consumed",
            DropReason::Flushed => "flushed",
            DropReason::NonIp => "non-ip",
            DropReason::Malformed => "malformed",
            DropReason::QueueFull => "queue-full",
            DropReason::MemoryBudget => "memory-budget",
            DropReason::FlowTableFull => "flow-table-full",
            DropReason::NewFlowBudget => "new-flow-budget",
            DropReason::FailedOver => "failed-over",
            DropReason::ReassemblyFull => "reassembly-full",
            DropReason::ReassemblyFailed => "reassembly-failed",
            DropReason::Internal => "internal-error",
        }
    }
}

/// Why the head of a primary FIFO is still held (for `--explain` and timeout reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldReason {
    /// Some of its positions are not yet verified against the secondary.
    AwaitingSecondaryData,
    /// Its ACK is ahead of the highest ACK the secondary sent (output commit, SPEC §5.1).
    AwaitingAck,
    /// A SYN/SYN-ACK whose secondary counterpart (same flags, same ACK) was not seen.
    AwaitingSynCounterpart,
    /// A RST the secondary has not matched yet.
    AwaitingRst,
    /// The flow diverged; everything waits for the checkpoint flush.
    Diverged,
}

impl HoldReason {
    /// Short name for `--explain`.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::AwaitingSecondaryData => "awaiting secondary data",
            HoldReason::AwaitingAck => "awaiting secondary ack",
            HoldReason::AwaitingSynCounterpart => "awaiting secondary syn",
            HoldReason::AwaitingRst => "awaiting secondary rst",
            HoldReason::Diverged => "diverged, awaiting checkpoint",
        }
    }
}

/// A flow's comparison state, for `--explain` and the admin socket's `flows`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowStatus {
    /// First stream position.
    pub base: Option<u32>,
    /// Verified-equal frontier (absolute sequence number).
    pub compared: Option<u32>,
    /// Highest ACK the secondary sent.
    pub secondary_ack: Option<u32>,
    /// Primary frames held.
    pub held_primary: usize,
    /// Secondary frames held.
    pub held_secondary: usize,
    /// Why the oldest primary frame is held.
    pub head: Option<HoldReason>,
    /// A mismatch was requested; waiting for the checkpoint.
    pub diverged: bool,
    /// Both FINs compared or a RST pair.
    pub closed: bool,
}
