//! The lcore runtime of `colo-dataplane` (SPEC §3, §8, §9.1): port set-up, software dispatch
//! to shards, shard loops, TX, the control loop and shutdown. It owns the mbufs and the clock;
//! the comparison itself lives in `colo-core`, the checkpoint protocol in `colo-control`.
//!
//! Lcores: the main lcore runs the control loop ([`app`]); one I/O lcore receives from both
//! guest ports and dispatches by symmetric Toeplitz hash ([`io_lcore`]); one lcore per shard
//! runs the comparator ([`shard_lcore`]). Shards transmit on their own output queue when the
//! device has one per shard, else through a ring drained by the I/O lcore ([`tx`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

pub mod app;
pub mod clock;
pub mod config;
pub mod held;
pub mod io_lcore;
pub mod messages;
pub mod shard_lcore;
pub mod tx;

/// Flags shared by the control thread and the lcores (written rarely, read in loops).
#[derive(Debug, Default)]
pub struct Shared {
    /// Set by the control thread: stop receiving.
    pub stop_rx: AtomicBool,
    /// Lcores (I/O lcores with input queues) still receiving; each says it has stopped, with
    /// everything it received dispatched, by counting down.
    pub rx_running: AtomicUsize,
    /// Shards that have flushed and left their loop.
    pub shards_stopped: AtomicUsize,
    /// TSC of the last received burst (for `--exit-when-idle-ms`).
    pub last_rx_tsc: AtomicU64,
    /// Released frames the output device still had not taken [`SHUTDOWN_TX_GRACE`] into the
    /// shutdown: freed and counted instead of hanging the exit.
    pub tx_abandoned_at_shutdown: AtomicU64,
}

/// How long shutdown waits for the output device to take the last released frames.
pub const SHUTDOWN_TX_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Shared {
    /// Whether every receiving lcore has stopped and dispatched what it received.
    pub fn rx_stopped(&self) -> bool {
        self.rx_running.load(std::sync::atomic::Ordering::Acquire) == 0
    }
}
