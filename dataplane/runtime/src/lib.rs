//! The lcore runtime of `colo-dataplane` (SPEC §3, §8, §9.1): port set-up, software dispatch
//! to shards, shard loops, TX, the control loop and shutdown. It owns the mbufs and the clock;
//! the comparison itself lives in `colo-core`, the checkpoint protocol in `colo-control`.
//!
//! Lcores: the main lcore runs the control loop ([`app`]); one I/O lcore receives from both
//! guest ports and dispatches by symmetric Toeplitz hash ([`io_lcore`]) unless the shards poll
//! the ports themselves (hardware RSS, or one shard in compare mode); one lcore per shard runs
//! the comparator ([`shard_lcore`]). Shards transmit on their own output queue when the device
//! has one per shard (or there is one shard in compare mode), else through a ring drained by
//! the I/O lcore ([`tx`]). The layout is decided by [`plan`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

pub mod app;
pub mod clock;
pub mod config;
pub mod egress;
pub mod held;
pub mod io_lcore;
pub mod messages;
pub mod plan;
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
    /// Each receiving lcore's TSC of its last received burst (for `--exit-when-idle-ms`): one
    /// cache line per lcore, written only by it; registered at start-up, read by the control
    /// thread (no line is written by several lcores on the packet path).
    pub rx_stamps: std::sync::Mutex<Vec<std::sync::Arc<RxStamp>>>,
    /// Every polling lcore's load meter with its role (registered at start-up).
    pub loads: std::sync::Mutex<Vec<(String, std::sync::Arc<LcoreLoad>)>>,
    /// Released frames the output device still had not taken [`SHUTDOWN_TX_GRACE`] into the
    /// shutdown: freed and counted instead of hanging the exit.
    pub tx_abandoned_at_shutdown: AtomicU64,
    /// What the shards' egress had to cut or drop for the output port's MTU.
    pub egress: egress::EgressStats,
}

/// One polling lcore's busy and idle cycles (TSC ticks) and the frames it moved, alone on its
/// cache line and written only by it (as OVS-DPDK's `pmd-perf-show`): a round that moved
/// anything is busy, one that found nothing (including its back-off) idle.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct LcoreLoad {
    /// Ticks spent in rounds that moved frames.
    pub busy: AtomicU64,
    /// Ticks spent in rounds that found nothing.
    pub idle: AtomicU64,
    /// Frames moved (received, handed on, or compared).
    pub frames: AtomicU64,
}

impl LcoreLoad {
    /// Adds one polling round that took `ticks` and moved `frames`.
    pub fn round(&self, ticks: u64, frames: u64) {
        let (slot, r) = (if frames > 0 { &self.busy } else { &self.idle }, Ordering::Relaxed);
        // Written only by its lcore: load + store, no read-modify-write bus lock.
        slot.store(slot.load(r).wrapping_add(ticks), r);
        if frames > 0 {
            self.frames.store(self.frames.load(r).wrapping_add(frames), r);
        }
    }

    /// `{role, busy_percent, cycles_per_frame, frames}` for the statistics.
    pub fn report(&self, role: &str) -> serde_json::Value {
        let (busy, idle, frames) =
            (self.busy.load(Ordering::Relaxed), self.idle.load(Ordering::Relaxed), self.frames.load(Ordering::Relaxed));
        let total = busy + idle;
        serde_json::json!({
            "role": role,
            "busy_percent": if total == 0 { 0.0 } else { (busy as f64 * 1000.0 / total as f64).round() / 10.0 },
            "cycles_per_frame": busy.checked_div(frames).unwrap_or(0),
            "frames": frames,
        })
    }
}

/// One receiving lcore's last-RX TSC, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct RxStamp(pub AtomicU64);

impl Shared {
    /// A stamp for a new receiving lcore, starting now.
    pub fn rx_stamp(&self) -> std::sync::Arc<RxStamp> {
        let stamp = std::sync::Arc::new(RxStamp(AtomicU64::new(dpdk::tsc())));
        if let Ok(mut v) = self.rx_stamps.lock() {
            v.push(stamp.clone());
        }
        stamp
    }

    /// A load meter for a new polling lcore playing `role`.
    pub fn load_meter(&self, role: String) -> std::sync::Arc<LcoreLoad> {
        let load = std::sync::Arc::new(LcoreLoad::default());
        if let Ok(mut v) = self.loads.lock() {
            v.push((role, load.clone()));
        }
        load
    }

    /// Every lcore's load, for the statistics.
    pub fn load_report(&self) -> serde_json::Value {
        let loads = self.loads.lock().map(|v| v.iter().map(|(role, l)| l.report(role)).collect::<Vec<_>>());
        serde_json::Value::Array(loads.unwrap_or_default())
    }

    /// The TSC of the latest burst any lcore received (start-up if none).
    pub fn last_rx_tsc(&self) -> u64 {
        let stamps = self.rx_stamps.lock().map(|v| v.iter().map(|s| s.0.load(Ordering::Relaxed)).max());
        stamps.ok().flatten().unwrap_or(0)
    }
}

/// How a polling lcore waits when it finds nothing to do (`--idle-sleep-us`): spin, give its
/// CPU away now and then (`yield`), or — opted in, in the spirit of OVS-DPDK's
/// `pmd-sleep-max` — sleep between polls after a quiet spell, so guests sharing a small
/// machine's CPUs are not starved by busy polling.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdleBackoff {
    sleep: Option<std::time::Duration>,
    quiet_rounds: u32,
}

impl IdleBackoff {
    /// Quiet rounds before sleeping (with a sleep set) or yielding (without).
    const SLEEP_AFTER: u32 = 64;
    const YIELD_AFTER: u32 = 64;

    /// A back-off that sleeps `sleep` between quiet polls, or only spins and yields (`None`).
    pub fn new(sleep: Option<std::time::Duration>) -> Self {
        IdleBackoff { sleep, quiet_rounds: 0 }
    }

    /// Called once per polling round with whether the round moved anything.
    pub fn round(&mut self, worked: bool) {
        if worked {
            self.quiet_rounds = 0;
            return;
        }
        self.quiet_rounds = self.quiet_rounds.saturating_add(1);
        match self.sleep {
            Some(d) if self.quiet_rounds > Self::SLEEP_AFTER => std::thread::sleep(d),
            _ if self.quiet_rounds > Self::YIELD_AFTER => std::thread::yield_now(),
            _ => std::hint::spin_loop(),
        }
    }
}

/// How long shutdown waits for the output device to take the last released frames.
pub const SHUTDOWN_TX_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Shared {
    /// Whether every receiving lcore has stopped and dispatched what it received.
    pub fn rx_stopped(&self) -> bool {
        self.rx_running.load(std::sync::atomic::Ordering::Acquire) == 0
    }
}
