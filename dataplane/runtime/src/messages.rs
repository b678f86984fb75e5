//! What travels between the control thread and the shard lcores: bounded lock-free queues
//! (crossbeam `ArrayQueue`), never a lock on the packet path (SPEC §8).

use colo_core::{CheckpointRequest, Counters, Side};

/// Control thread → one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardCommand {
    /// Checkpoint `epoch` completed: release held primary frames, drop held secondary frames,
    /// reset secondary state, then report [`ShardEvent::Flushed`].
    Flush {
        /// The epoch being completed.
        epoch: u64,
        /// The secondary guest's state was replaced by the primary's (a frame's
        /// `COLO_CHECKPOINT`): proxy-mode offsets reset to 0. False for standalone mode's
        /// completions, which change no guest (SPEC §3).
        resync: bool,
    },
    /// Stop comparing; forward this side's frames from now on.
    Failover(Side),
    /// Input has stopped: handle what is queued, flush, report [`ShardEvent::Stopped`], exit.
    Stop,
    /// Report up to `limit` flows, most held frames first, as [`ShardEvent::Flows`].
    ReportFlows {
        /// Matches the answer to the admin request.
        request: u64,
        /// Most flows to report.
        limit: usize,
    },
    /// New `compare_timeout` for what is held from now on.
    SetCompareTimeout(std::time::Duration),
    /// New `max_queue_size`.
    SetMaxQueueSize(usize),
}

/// One flow in a `flows` answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlowRow {
    /// The shard that owns it.
    pub shard: usize,
    /// `tcp 10.0.0.2:80 > 10.0.0.1:40000`.
    pub flow: String,
    /// Primary frames held.
    pub held_primary: usize,
    /// Secondary frames held.
    pub held_secondary: usize,
    /// Why the oldest primary frame waits, if one does.
    pub head: Option<&'static str>,
    /// A mismatch was found; waiting for the checkpoint.
    pub diverged: bool,
    /// Both FINs or a RST pair compared.
    pub closed: bool,
    /// First stream position.
    pub base: Option<u32>,
    /// Verified-equal frontier.
    pub compared: Option<u32>,
    /// Highest ACK the secondary sent.
    pub secondary_ack: Option<u32>,
}

/// A shard → the control thread.
#[derive(Debug, Clone)]
pub enum ShardEvent {
    /// The shard wants a checkpoint.
    Request {
        /// Which shard.
        shard: usize,
        /// The request (reason, flow, diagnostic).
        request: CheckpointRequest,
    },
    /// The shard finished flushing `epoch`.
    Flushed {
        /// Which shard.
        shard: usize,
        /// The epoch.
        epoch: u64,
    },
    /// Answer to [`ShardCommand::ReportFlows`].
    Flows {
        /// Which shard.
        shard: usize,
        /// The admin request it answers.
        request: u64,
        /// Its fullest flows.
        flows: Vec<FlowRow>,
    },
    /// The shard flushed its last frames and is leaving its loop.
    Stopped {
        /// Which shard.
        shard: usize,
        /// Its final counters.
        counters: Box<Counters>,
    },
}

/// Capacity of each shard's command queue.
pub const COMMAND_QUEUE: usize = 64;
/// Capacity of the shared event queue (requests are aggregated per flow and epoch in the shard,
/// so this is rarely more than a handful deep).
pub const EVENT_QUEUE: usize = 4096;
