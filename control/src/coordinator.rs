//! Checkpoint coordination across shards (SPEC §6, §7), as a sans-IO state machine: shard
//! requests, frame messages, flush acknowledgements and `now` go in; messages for the frame and
//! commands for the shards come out.
//!
//! It owns the checkpoint *epoch*: every request between two completions collapses into one
//! `DO_CHECKPOINT`; a completion flushes every shard, and the next epoch starts only when all of
//! them have flushed (requests arriving meanwhile belong to the next epoch). It never touches a
//! socket or a clock; the frame server and the runtime drive it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::codec::{FrameMessage, DO_CHECKPOINT, GET_XEN_INIT};

/// How long a new frame connection has to send `COLO_USERSPACE_PROXY_INIT` before a pending
/// `DO_CHECKPOINT` is sent anyway.
pub const INIT_GRACE: Duration = Duration::from_secs(1);

/// Which guest's output is forwarded after a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverTarget {
    /// Keep the primary, stop comparing.
    Primary,
    /// The secondary takes over.
    Secondary,
}

/// What to do when a checkpoint is needed and no frame has been connected for `frame_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLossPolicy {
    /// Fail over to the primary (default): output flows again, uncompared.
    FailoverPrimary,
    /// Keep holding primary output until a frame connects.
    Hold,
}

/// How checkpoints are completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointMode {
    /// A COLO frame on the frame socket completes them.
    Frame,
    /// Every request completes at once (demos and tests; no fault tolerance).
    Standalone,
}

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Number of shards to flush.
    pub shards: usize,
    /// Frame or standalone.
    pub mode: CheckpointMode,
    /// How long to wait for a frame when a checkpoint is needed and none is connected.
    pub frame_timeout: Duration,
    /// What to do after `frame_timeout`.
    pub on_frame_loss: FrameLossPolicy,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            shards: 1,
            mode: CheckpointMode::Frame,
            frame_timeout: Duration::from_secs(5),
            on_frame_loss: FrameLossPolicy::FailoverPrimary,
        }
    }
}

/// A shard's request for a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRequest {
    /// The requesting shard.
    pub shard: usize,
    /// SPEC §6 reason string (`tcp-payload-mismatch`, …).
    pub reason: &'static str,
    /// The flow, as displayed in logs and reports.
    pub flow: String,
    /// Diagnostic detail (sequence positions, hex window).
    pub detail: String,
}

/// What the coordinator asks its drivers to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this message to the connected frame.
    SendToFrame(&'static str),
    /// Every shard: release held primary frames, drop held secondary frames, reset secondary
    /// state; then acknowledge with `on_shard_flushed(shard, epoch)`.
    FlushShards {
        /// The epoch being completed.
        epoch: u64,
    },
    /// Every shard: flush, then forward the target's frames uncompared.
    Failover(FailoverTarget),
}

/// Counters of the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Shard requests by reason.
    pub requests_by_reason: BTreeMap<&'static str, u64>,
    /// Shard requests collapsed into an already requested checkpoint.
    pub requests_collapsed: u64,
    /// `DO_CHECKPOINT` messages sent.
    pub do_checkpoint_sent: u64,
    /// Checkpoints completed (flushes finished by every shard).
    pub checkpoints_completed: u64,
    /// Frame connections accepted.
    pub frame_connects: u64,
    /// Unknown frame messages ignored.
    pub unknown_messages: u64,
    /// Failovers commanded (by the admin or by frame loss).
    pub failovers: u64,
    /// Request log lines left out by the rate limit (SPEC §10).
    pub log_lines_suppressed: u64,
}

/// Request log lines allowed per second; the rest are counted and reported on the next line.
pub const LOG_LINES_PER_SECOND: u32 = 20;

/// A one-second window rate limit for the per-request log line.
#[derive(Debug, Default)]
struct LogLimit {
    window_start: Duration,
    in_window: u32,
    suppressed: u64,
}

impl LogLimit {
    fn allow(&mut self, now: Duration) -> bool {
        if now >= self.window_start + Duration::from_secs(1) {
            self.window_start = now;
            self.in_window = 0;
        }
        if self.in_window < LOG_LINES_PER_SECOND {
            self.in_window += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Nothing requested.
    Idle,
    /// A checkpoint is needed; `sent` says whether the frame has been told.
    Requested { since: Duration, sent: bool },
    /// Shards are flushing epoch `epoch`; `remaining` have not acknowledged yet.
    Flushing { remaining: Vec<bool>, next_requested: Option<Duration>, flush_again: bool },
    /// Comparison has stopped; requests are counted and ignored.
    FailedOver(FailoverTarget),
}

/// The checkpoint coordinator. See the module documentation.
#[derive(Debug)]
pub struct Coordinator {
    cfg: CoordinatorConfig,
    epoch: u64,
    phase: Phase,
    frame_connected: bool,
    /// Until when a new connection's handshake is awaited before a pending request is sent
    /// (`None`: handshake seen or grace over, the frame may be told at once).
    init_grace_until: Option<Duration>,
    /// When the pending `DO_CHECKPOINT` was sent (cleared by a completion, a failover or a
    /// disconnect).
    sent_at: Option<Duration>,
    /// `frame_timeout` periods the current wait (no frame, or no answer) has lasted.
    overdue: u32,
    /// When the frame was last seen connected (or start-up), for `frame_timeout`.
    frame_lost_at: Duration,
    epoch_reasons: Vec<CheckpointRequest>,
    /// Requests that arrived during a flush: the next epoch's.
    next_reasons: Vec<CheckpointRequest>,
    outputs: VecDeque<Output>,
    stats: CoordinatorStats,
    log_limit: LogLimit,
    /// Unknown frame messages are logged under their own limit (a frame sending garbage in a
    /// loop must not fill the disk).
    unknown_limit: LogLimit,
    /// Frame connects and disconnects.
    churn_limit: LogLimit,
    /// The latest `now` seen (the time of outputs made inside a call).
    last_now: Duration,
}

impl Coordinator {
    /// A coordinator at time `now`, with no frame connected yet.
    pub fn new(cfg: CoordinatorConfig, now: Duration) -> Self {
        Coordinator {
            cfg,
            epoch: 0,
            phase: Phase::Idle,
            frame_connected: false,
            init_grace_until: None,
            sent_at: None,
            overdue: 0,
            frame_lost_at: now,
            epoch_reasons: Vec::new(),
            next_reasons: Vec::new(),
            outputs: VecDeque::new(),
            stats: CoordinatorStats::default(),
            log_limit: LogLimit::default(),
            unknown_limit: LogLimit::default(),
            churn_limit: LogLimit::default(),
            last_now: now,
        }
    }

    /// Changes `frame_timeout` (the admin socket's `set frame_timeout_ms`).
    pub fn set_frame_timeout(&mut self, timeout: Duration) {
        self.cfg.frame_timeout = timeout;
    }

    /// The current epoch (number of completed checkpoints).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Counters.
    pub fn stats(&self) -> &CoordinatorStats {
        &self.stats
    }

    /// Requests gathered in the current epoch (for logs and the admin socket).
    pub fn epoch_requests(&self) -> &[CheckpointRequest] {
        &self.epoch_reasons
    }

    /// Whether a checkpoint is requested or a flush is in progress.
    pub fn checkpoint_pending(&self) -> bool {
        matches!(self.phase, Phase::Requested { .. } | Phase::Flushing { .. })
    }

    /// The failover in force, if any.
    pub fn failed_over(&self) -> Option<FailoverTarget> {
        match self.phase {
            Phase::FailedOver(t) => Some(t),
            _ => None,
        }
    }

    /// The next output to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A shard asks for a checkpoint.
    pub fn on_request(&mut self, req: CheckpointRequest, now: Duration) {
        self.last_now = self.last_now.max(now);
        *self.stats.requests_by_reason.entry(req.reason).or_default() += 1;
        if self.log_limit.allow(now) {
            let suppressed = self.log_limit.take_suppressed();
            tracing::warn!(
                shard = req.shard,
                reason = req.reason,
                flow = %req.flow,
                detail = %req.detail,
                suppressed,
                "checkpoint requested"
            );
        } else {
            self.stats.log_lines_suppressed += 1;
        }
        match &mut self.phase {
            Phase::FailedOver(_) => {}
            Phase::Requested { .. } => {
                self.stats.requests_collapsed += 1;
                self.epoch_reasons.push(req);
            }
            Phase::Flushing { next_requested, .. } => {
                // Belongs to the next epoch: the flush in progress may already have passed
                // the requesting shard.
                if next_requested.is_some() {
                    self.stats.requests_collapsed += 1;
                } else {
                    *next_requested = Some(now);
                }
                self.next_reasons.push(req);
            }
            Phase::Idle => {
                self.epoch_reasons.push(req);
                self.request(now);
            }
        }
    }

    fn request(&mut self, now: Duration) {
        match self.cfg.mode {
            CheckpointMode::Standalone => self.start_flush(),
            CheckpointMode::Frame => {
                let sent = self.frame_ready();
                if sent {
                    self.send_do_checkpoint();
                } else if !self.frame_connected {
                    tracing::error!(
                        timeout_ms = self.cfg.frame_timeout.as_millis() as u64,
                        "checkpoint needed but no COLO frame is connected: holding primary output"
                    );
                }
                self.phase = Phase::Requested { since: now, sent };
            }
        }
    }

    fn send_do_checkpoint(&mut self) {
        self.stats.do_checkpoint_sent += 1;
        self.sent_at = Some(self.last_now);
        self.overdue = 0;
        self.outputs.push_back(Output::SendToFrame(DO_CHECKPOINT));
    }

    fn start_flush(&mut self) {
        self.sent_at = None;
        self.overdue = 0;
        self.phase =
            Phase::Flushing { remaining: vec![true; self.cfg.shards], next_requested: None, flush_again: false };
        self.outputs.push_back(Output::FlushShards { epoch: self.epoch });
    }

    fn frame_ready(&self) -> bool {
        self.frame_connected && self.init_grace_until.is_none()
    }

    /// Tells the frame about a request it has not heard of yet, once it is ready.
    fn send_pending(&mut self) {
        if !self.frame_ready() {
            return;
        }
        if let Phase::Requested { sent: sent @ false, .. } = &mut self.phase {
            *sent = true;
            self.send_do_checkpoint();
        }
    }

    /// A frame connected. A request made while no frame was there (or lost with the previous
    /// connection) is sent once the frame has said `COLO_USERSPACE_PROXY_INIT` — so our
    /// `COLO_COMPARE_GET_XEN_INIT` comes first — or after [`INIT_GRACE`] for frames that
    /// skip the handshake.
    pub fn on_frame_connected(&mut self, now: Duration) {
        self.last_now = self.last_now.max(now);
        self.frame_connected = true;
        self.init_grace_until = Some(now + INIT_GRACE);
        self.stats.frame_connects += 1;
        // Connection churn is logged under a rate limit: a peer reconnecting in a loop must
        // not fill the disk.
        if self.churn_limit.allow(now) {
            tracing::info!(suppressed = self.churn_limit.take_suppressed(), "COLO frame connected");
        } else {
            self.stats.log_lines_suppressed += 1;
        }
    }

    /// The frame disconnected, for `reason`.
    pub fn on_frame_disconnected(&mut self, now: Duration, reason: &str) {
        if self.frame_connected {
            if self.churn_limit.allow(now) {
                tracing::warn!(reason, suppressed = self.churn_limit.take_suppressed(), "COLO frame disconnected");
            } else {
                self.stats.log_lines_suppressed += 1;
            }
        }
        self.frame_connected = false;
        self.init_grace_until = None;
        self.sent_at = None;
        self.overdue = 0;
        self.frame_lost_at = now;
        if let Phase::Requested { sent, since } = &mut self.phase {
            *sent = false;
            // frame_timeout counts from the later of the request and the loss.
            *since = (*since).max(now);
        }
    }

    /// A message from the frame.
    pub fn on_frame_message(&mut self, msg: FrameMessage, now: Duration) {
        self.last_now = self.last_now.max(now);
        match msg {
            FrameMessage::ProxyInit => {
                self.outputs.push_back(Output::SendToFrame(GET_XEN_INIT));
                self.init_grace_until = None;
                self.send_pending();
            }
            FrameMessage::CheckpointDone => {
                // A frame that checkpoints is evidently ready.
                self.init_grace_until = None;
                self.on_checkpoint_done(now)
            }
            FrameMessage::Unknown(text) => {
                self.stats.unknown_messages += 1;
                if self.unknown_limit.allow(now) {
                    let suppressed = self.unknown_limit.take_suppressed();
                    // At most the first 64 characters: the message is the peer's.
                    let shown: String = text.chars().take(64).collect();
                    tracing::warn!(message = %shown, suppressed, "ignoring unknown message from the COLO frame");
                } else {
                    self.stats.log_lines_suppressed += 1;
                }
            }
        }
    }

    /// A checkpoint completed (from the frame, or `checkpoint-done` on the admin socket).
    /// Every completion flushes, requested or not: the frame also checkpoints periodically.
    pub fn on_checkpoint_done(&mut self, _now: Duration) {
        match &mut self.phase {
            Phase::FailedOver(_) => {}
            Phase::Flushing { flush_again, .. } => *flush_again = true,
            Phase::Idle | Phase::Requested { .. } => self.start_flush(),
        }
    }

    /// Shard `shard` finished flushing `epoch`.
    pub fn on_shard_flushed(&mut self, shard: usize, epoch: u64, now: Duration) {
        if epoch != self.epoch {
            return;
        }
        let Phase::Flushing { remaining, next_requested, flush_again } = &mut self.phase else { return };
        if let Some(slot) = remaining.get_mut(shard) {
            *slot = false;
        }
        if remaining.iter().any(|&r| r) {
            return;
        }
        let (next_requested, flush_again) = (*next_requested, *flush_again);
        self.epoch += 1;
        self.stats.checkpoints_completed += 1;
        tracing::info!(
            epoch = self.epoch,
            requests = self.epoch_reasons.len(),
            "checkpoint completed, all shards flushed"
        );
        self.epoch_reasons = std::mem::take(&mut self.next_reasons);
        self.phase = Phase::Idle;
        if flush_again {
            self.start_flush();
            if let Phase::Flushing { next_requested: n, .. } = &mut self.phase {
                *n = next_requested;
            }
        } else if let Some(t) = next_requested {
            self.request(now.max(t));
        }
    }

    /// The admin commands a failover (SPEC §6): shards flush, then forward `target`'s frames
    /// uncompared. Also what frame loss leads to under [`FrameLossPolicy::FailoverPrimary`].
    pub fn on_failover(&mut self, target: FailoverTarget, _now: Duration) {
        self.stats.failovers += 1;
        tracing::warn!(?target, "failover: comparison stops");
        self.phase = Phase::FailedOver(target);
        self.sent_at = None;
        self.overdue = 0;
        self.outputs.push_back(Output::Failover(target));
    }

    /// When [`Coordinator::handle_timeout`] must next be called.
    pub fn next_deadline(&self) -> Option<Duration> {
        if let (Some(t), Phase::Requested { sent: false, .. }) = (self.init_grace_until, &self.phase) {
            return Some(t);
        }
        let Phase::Requested { since, sent } = self.phase else { return None };
        // The wait started when the request had no frame to go to, or when it was sent.
        let started = match (sent, self.sent_at) {
            (true, Some(at)) => at,
            _ => since.max(self.frame_lost_at),
        };
        // Checked: a deadline past what a Duration holds is "never", not a panic.
        let wait = self.cfg.frame_timeout.checked_mul(self.overdue.saturating_add(1)).unwrap_or(Duration::MAX);
        Some(started.checked_add(wait).unwrap_or(Duration::MAX))
    }

    /// Never waits silently (SPEC §7): every `frame_timeout` a needed checkpoint stays
    /// unanswered is logged loudly. With `failover-primary`, comparison stops after one
    /// `frame_timeout` without a frame, or after [`UNANSWERED_PERIODS`] of them with a frame that
    /// was told but does not answer (a checkpoint may take a while; a dead frame must not hold
    /// the output forever).
    pub fn handle_timeout(&mut self, now: Duration) {
        self.last_now = self.last_now.max(now);
        if self.init_grace_until.is_some_and(|t| now >= t) {
            self.init_grace_until = None;
            self.send_pending();
        }
        let Some(deadline) = self.next_deadline() else { return };
        if now < deadline || self.init_grace_until.is_some() {
            return;
        }
        self.overdue = self.overdue.saturating_add(1);
        let Phase::Requested { sent, .. } = self.phase else { return };
        let waited = self.cfg.frame_timeout.checked_mul(self.overdue).unwrap_or(Duration::MAX);
        let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        let give_up =
            self.cfg.on_frame_loss == FrameLossPolicy::FailoverPrimary && (!sent || self.overdue >= UNANSWERED_PERIODS);
        if give_up {
            tracing::error!(
                waited_ms,
                told = sent,
                "no COLO frame completed a needed checkpoint: failing over to the primary"
            );
            self.on_failover(FailoverTarget::Primary, now);
        } else if sent {
            tracing::error!(waited_ms, "the COLO frame has not answered DO_CHECKPOINT: primary output is held");
        } else {
            tracing::error!(waited_ms, "checkpoint needed but no COLO frame is connected: primary output is held");
        }
    }
}

/// `frame_timeout` periods a told-but-silent frame gets before `failover-primary` applies.
pub const UNANSWERED_PERIODS: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn req(shard: usize, reason: &'static str) -> CheckpointRequest {
        CheckpointRequest { shard, reason, flow: format!("tcp flow of shard {shard}"), detail: String::new() }
    }

    fn drain(c: &mut Coordinator) -> Vec<Output> {
        std::iter::from_fn(|| c.poll_output()).collect()
    }

    fn connected(shards: usize) -> Coordinator {
        let mut c = Coordinator::new(CoordinatorConfig { shards, ..Default::default() }, ms(0));
        c.on_frame_connected(ms(0));
        c.on_frame_message(FrameMessage::ProxyInit, ms(0));
        assert_eq!(drain(&mut c), vec![Output::SendToFrame(GET_XEN_INIT)]);
        c
    }

    #[test]
    fn handshake_is_answered_before_a_pending_request() {
        let mut c = Coordinator::new(CoordinatorConfig::default(), ms(0));
        c.on_request(req(0, "tcp-payload-mismatch"), ms(1));
        c.on_frame_connected(ms(2));
        assert!(drain(&mut c).is_empty(), "waits for the handshake");
        c.on_frame_message(FrameMessage::ProxyInit, ms(3));
        assert_eq!(drain(&mut c), vec![Output::SendToFrame(GET_XEN_INIT), Output::SendToFrame(DO_CHECKPOINT)]);
    }

    #[test]
    fn a_frame_that_skips_the_handshake_is_told_after_the_grace() {
        let mut c = Coordinator::new(CoordinatorConfig::default(), ms(0));
        c.on_frame_connected(ms(10));
        c.on_request(req(0, "timeout-primary"), ms(20));
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.next_deadline(), Some(ms(10) + INIT_GRACE));
        c.handle_timeout(ms(10) + INIT_GRACE);
        assert_eq!(drain(&mut c), vec![Output::SendToFrame(DO_CHECKPOINT)]);
    }

    #[test]
    fn requests_from_several_shards_collapse_into_one_do_checkpoint() {
        let mut c = connected(3);
        c.on_request(req(0, "tcp-payload-mismatch"), ms(1));
        c.on_request(req(2, "datagram-mismatch"), ms(2));
        c.on_request(req(1, "tcp-payload-mismatch"), ms(3));
        assert_eq!(drain(&mut c), vec![Output::SendToFrame(DO_CHECKPOINT)]);
        assert_eq!(c.stats().do_checkpoint_sent, 1);
        assert_eq!(c.stats().requests_collapsed, 2);
        assert_eq!(c.stats().requests_by_reason["tcp-payload-mismatch"], 2);
        assert_eq!(c.epoch_requests().len(), 3, "every reason kept");
    }

    #[test]
    fn completion_flushes_every_shard_and_waits_for_all_before_the_next_epoch() {
        let mut c = connected(2);
        c.on_request(req(0, "tcp-payload-mismatch"), ms(1));
        drain(&mut c);
        c.on_frame_message(FrameMessage::CheckpointDone, ms(5));
        assert_eq!(drain(&mut c), vec![Output::FlushShards { epoch: 0 }]);
        // A request during the flush belongs to the next epoch: no DO_CHECKPOINT yet.
        c.on_request(req(1, "timeout-primary"), ms(6));
        c.on_shard_flushed(0, 0, ms(7));
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.epoch(), 0);
        c.on_shard_flushed(1, 0, ms(8));
        assert_eq!(c.epoch(), 1);
        assert_eq!(c.stats().checkpoints_completed, 1);
        assert_eq!(drain(&mut c), vec![Output::SendToFrame(DO_CHECKPOINT)], "next epoch's request goes out");
        assert_eq!(c.epoch_requests().len(), 1);
        assert_eq!(c.epoch_requests()[0].reason, "timeout-primary");
    }

    #[test]
    fn stale_or_unknown_flush_acks_are_ignored() {
        let mut c = connected(1);
        c.on_frame_message(FrameMessage::CheckpointDone, ms(1));
        drain(&mut c);
        c.on_shard_flushed(0, 7, ms(2));
        c.on_shard_flushed(5, 0, ms(2));
        assert_eq!(c.epoch(), 0);
        c.on_shard_flushed(0, 0, ms(3));
        assert_eq!(c.epoch(), 1);
    }

    #[test]
    fn an_unrequested_completion_still_flushes() {
        let mut c = connected(1);
        c.on_frame_message(FrameMessage::CheckpointDone, ms(1));
        assert_eq!(drain(&mut c), vec![Output::FlushShards { epoch: 0 }]);
    }

    #[test]
    fn a_completion_during_a_flush_flushes_again_afterwards() {
        let mut c = connected(1);
        c.on_checkpoint_done(ms(1));
        c.on_checkpoint_done(ms(2));
        assert_eq!(drain(&mut c), vec![Output::FlushShards { epoch: 0 }]);
        c.on_shard_flushed(0, 0, ms(3));
        assert_eq!(drain(&mut c), vec![Output::FlushShards { epoch: 1 }]);
    }

    #[test]
    fn a_request_without_a_frame_is_sent_when_one_connects() {
        let mut c = Coordinator::new(CoordinatorConfig::default(), ms(0));
        c.on_request(req(0, "tcp-fin-mismatch"), ms(10));
        assert!(drain(&mut c).is_empty());
        c.on_frame_connected(ms(20));
        c.on_frame_message(FrameMessage::ProxyInit, ms(21));
        assert_eq!(drain(&mut c), vec![Output::SendToFrame(GET_XEN_INIT), Output::SendToFrame(DO_CHECKPOINT)]);
    }

    #[test]
    fn a_frame_lost_mid_request_gets_the_request_again_on_reconnect() {
        let mut c = connected(1);
        c.on_request(req(0, "tcp-payload-mismatch"), ms(1));
        drain(&mut c);
        c.on_frame_disconnected(ms(2), "test");
        c.on_frame_connected(ms(3));
        c.handle_timeout(ms(3) + INIT_GRACE);
        assert_eq!(drain(&mut c), vec![Output::SendToFrame(DO_CHECKPOINT)]);
        c.on_checkpoint_done(ms(4));
        assert_eq!(drain(&mut c), vec![Output::FlushShards { epoch: 0 }]);
    }

    #[test]
    fn no_frame_for_frame_timeout_fails_over_to_the_primary() {
        let mut c = Coordinator::new(CoordinatorConfig::default(), ms(0));
        c.on_request(req(0, "ack-lag-timeout"), ms(100));
        assert_eq!(c.next_deadline(), Some(ms(5100)));
        c.handle_timeout(ms(5099));
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(ms(5100));
        assert_eq!(drain(&mut c), vec![Output::Failover(FailoverTarget::Primary)]);
        assert_eq!(c.failed_over(), Some(FailoverTarget::Primary));
        c.on_request(req(0, "ack-lag-timeout"), ms(6000));
        assert!(drain(&mut c).is_empty(), "no more checkpoints after failover");
    }

    #[test]
    fn a_told_frame_that_never_answers_is_failed_over_after_three_periods() {
        let mut c = connected(1);
        c.on_request(req(0, "tcp-payload-mismatch"), ms(100));
        assert_eq!(drain(&mut c), vec![Output::SendToFrame(DO_CHECKPOINT)]);
        assert_eq!(c.next_deadline(), Some(ms(5100)));
        c.handle_timeout(ms(5100));
        c.handle_timeout(ms(10_100));
        assert!(drain(&mut c).is_empty(), "still waiting, loudly");
        assert_eq!(c.next_deadline(), Some(ms(15_100)));
        c.handle_timeout(ms(15_100));
        assert_eq!(drain(&mut c), vec![Output::Failover(FailoverTarget::Primary)]);
    }

    #[test]
    fn an_answer_in_time_cancels_the_wait() {
        let mut c = connected(1);
        c.on_request(req(0, "tcp-payload-mismatch"), ms(100));
        drain(&mut c);
        c.on_checkpoint_done(ms(4000));
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn hold_policy_keeps_waiting() {
        let cfg = CoordinatorConfig { on_frame_loss: FrameLossPolicy::Hold, ..Default::default() };
        let mut c = Coordinator::new(cfg, ms(0));
        c.on_request(req(0, "queue-overflow"), ms(1));
        assert_eq!(c.next_deadline(), Some(ms(5001)), "a deadline to log at, not to give up");
        c.handle_timeout(ms(60_000));
        assert!(drain(&mut c).is_empty());
        assert!(c.checkpoint_pending());
    }

    #[test]
    fn standalone_completes_every_request_at_once() {
        let cfg = CoordinatorConfig { shards: 2, mode: CheckpointMode::Standalone, ..Default::default() };
        let mut c = Coordinator::new(cfg, ms(0));
        c.on_request(req(1, "tcp-payload-mismatch"), ms(1));
        assert_eq!(drain(&mut c), vec![Output::FlushShards { epoch: 0 }]);
        c.on_shard_flushed(0, 0, ms(2));
        c.on_shard_flushed(1, 0, ms(2));
        assert_eq!(c.stats().checkpoints_completed, 1);
        assert_eq!(c.stats().do_checkpoint_sent, 0);
    }

    #[test]
    fn request_log_lines_are_rate_limited_and_counted() {
        let mut c = connected(1);
        for i in 0..100u64 {
            c.on_request(req(0, "tcp-payload-mismatch"), ms(i));
        }
        assert_eq!(c.stats().log_lines_suppressed, 100 - u64::from(LOG_LINES_PER_SECOND));
        c.on_request(req(0, "tcp-payload-mismatch"), ms(1500));
        assert_eq!(c.stats().log_lines_suppressed, 100 - u64::from(LOG_LINES_PER_SECOND), "a new second logs again");
        assert_eq!(c.stats().requests_by_reason["tcp-payload-mismatch"], 101, "every request still counted");
    }

    #[test]
    fn unknown_messages_are_counted_and_ignored() {
        let mut c = connected(1);
        c.on_frame_message(FrameMessage::Unknown("HELLO".into()), ms(1));
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.stats().unknown_messages, 1);
        // A flood of them logs at most LOG_LINES_PER_SECOND lines a second; the rest are counted.
        for _ in 0..1000 {
            c.on_frame_message(FrameMessage::Unknown("GARBAGE".into()), Duration::from_millis(10));
        }
        assert_eq!(c.stats().unknown_messages, 1001);
        assert!(c.stats().log_lines_suppressed >= 1000 - u64::from(LOG_LINES_PER_SECOND));
    }
}
