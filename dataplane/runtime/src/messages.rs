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
    },
    /// Stop comparing; forward this side's frames from now on.
    Failover(Side),
    /// Input has stopped: handle what is queued, flush, report [`ShardEvent::Stopped`], exit.
    Stop,
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
