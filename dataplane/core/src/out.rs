//! The shard's output sink (SPEC §6, §10): what the comparison modules hand back while they
//! run — releases, drops, checkpoint requests — and the held-frame accounting and memory
//! budget those imply. Borrowed from the shard's fields for one call; owns nothing.
//!
//! Must never: emit a primary frame without counting it (released, dropped by reason), or a
//! request twice for one reason and flow in an epoch.

use std::collections::VecDeque;

use crate::checkpoint::{CheckpointReason, CheckpointRequest};
use crate::counters::Counters;
use crate::reasons::{DropReason, Via};
use crate::time::Timestamp;
use crate::wire::{FlowKey, Span};
use crate::{Config, Side};

/// What the caller must do next. Frames come back by ownership so the runtime can transmit or
/// free them (DPDK mbufs).
#[derive(Debug)]
pub enum Action<F> {
    /// Transmit this frame to the clients, unmodified.
    Release {
        /// The primary's frame (or the secondary's after a failover to it).
        frame: F,
        /// Why it may go.
        via: Via,
    },
    /// Transmit this frame's TCP segment from payload byte `skip` on: the bytes before it
    /// left earlier as a [`Action::ReleasePart`]. Counted as the frame's release.
    ReleaseRest {
        /// The primary's frame, as it arrived.
        frame: F,
        /// Why it may go.
        via: Via,
        /// Payload bytes already sent.
        skip: u32,
    },
    /// Transmit these bytes: a TCP frame the comparator built from the verified first bytes
    /// of a held primary segment whose rest still waits for the secondary (which, holding a
    /// short segment back until the client acknowledges what it sent, would otherwise never
    /// send that rest). The segment stays held; its rest leaves as [`Action::ReleaseRest`].
    ReleasePart {
        /// The whole frame: headers, lengths and checksums written for the part. It may be
        /// longer than the output port's MTU (a part of a guest's TSO frame).
        bytes: Box<[u8]>,
        /// Why it may go.
        via: Via,
    },
    /// Do not transmit; free the frame.
    Drop {
        /// Which guest sent it.
        side: Side,
        /// The frame.
        frame: F,
        /// Why.
        reason: DropReason,
    },
    /// Ask the control thread for a checkpoint. Boxed: requests are rare and carry two
    /// strings, and inline they would make every release and drop 64 bytes instead of 24.
    Checkpoint(Box<CheckpointRequest>),
}

/// Appends `action` to the shard's action queue, built in place.
///
/// `VecDeque::push_back` may grow the queue, a call; an action built before it therefore went
/// to the stack field by field (tag, side, reason: single bytes) and was then copied into the
/// queue 16 bytes at a time. A load that spans several narrower stores still in flight cannot
/// take their data from the store buffer and waits until they reach the cache: a sampling
/// profile of the steady bench put 7 % of a 64 B pair's time on that one copy (two actions a
/// pair). Checked first, room in the queue makes the growth path dead on the common path, so
/// the compiler writes the action straight into its slot; the rare growth is out of line.
#[inline(always)]
pub(crate) fn emit<F>(actions: &mut VecDeque<Action<F>>, action: Action<F>) {
    if actions.len() < actions.capacity() {
        actions.push_back(action);
    } else {
        emit_growing(actions, action);
    }
}

#[inline(never)]
#[cold]
fn emit_growing<F>(actions: &mut VecDeque<Action<F>>, action: Action<F>) {
    actions.push_back(action);
}

/// One original frame of a datagram and where its compared bytes lie.
pub(crate) struct Piece<F> {
    pub(crate) frame: F,
    pub(crate) arrived: Timestamp,
    /// Frame length (for the held-bytes gauges).
    pub(crate) len: u32,
    /// The compared bytes inside the frame.
    pub(crate) data: Span,
    /// Offset of `data` inside the datagram (0 for an unfragmented datagram).
    pub(crate) at: u32,
    /// Arrival order among the datagram's fragments (release order).
    pub(crate) seq: u32,
    /// An exact duplicate of another fragment (same place, same bytes): released with the
    /// datagram, skipped when comparing.
    pub(crate) dup: bool,
}

/// The shard's output side, borrowed by the comparison modules while they run.
pub(crate) struct Out<'a, F> {
    pub(crate) actions: &'a mut VecDeque<Action<F>>,
    pub(crate) counters: &'a mut Counters,
    pub(crate) now: Timestamp,
    /// Emptied fragment lists, reused so reassembly does not allocate per datagram.
    pub(crate) pool: &'a mut Vec<Vec<Piece<F>>>,
}

/// Fragment lists kept for reuse (bounds the pool's memory).
const POOL_MAX: usize = 256;

impl<F> Out<'_, F> {
    pub(crate) fn take_pieces(&mut self) -> Vec<Piece<F>> {
        self.pool.pop().unwrap_or_default()
    }

    pub(crate) fn recycle(&mut self, mut v: Vec<Piece<F>>) {
        v.clear();
        if self.pool.len() < POOL_MAX && v.capacity() > 0 && v.capacity() <= 256 {
            self.pool.push(v);
        }
    }

    pub(crate) fn drop_held_primary(&mut self, frame: F, len: u32, reason: DropReason) {
        let c = &mut *self.counters;
        c.held_primary_frames = c.held_primary_frames.saturating_sub(1);
        c.held_primary_bytes = c.held_primary_bytes.saturating_sub(u64::from(len));
        c.primary_dropped[reason as usize] += 1;
        emit(self.actions, Action::Drop { side: Side::Primary, frame, reason });
    }

    /// Whether holding `frames` more frames of `bytes` would pass the shard's memory budget
    /// (SPEC §6: the only reason to drop primary output).
    pub(crate) fn over_budget(&self, cfg: &Config, frames: u64, bytes: u64) -> bool {
        self.over_eighths(cfg, frames, bytes, 8)
    }

    /// The same for a secondary frame, which is refused at 7/8 of the budget: the last
    /// eighth is kept for primary output, so secondary frames go first.
    pub(crate) fn over_secondary_budget(&self, cfg: &Config, frames: u64, bytes: u64) -> bool {
        self.over_eighths(cfg, frames, bytes, 7)
    }

    /// Whether holding `frames` more frames of `bytes` passes `eighths`/8 of the budget.
    fn over_eighths(&self, cfg: &Config, frames: u64, bytes: u64, eighths: u64) -> bool {
        let c = &*self.counters;
        (c.held_frames() + frames) * 8 > cfg.held_frames_budget as u64 * eighths
            || (c.held_primary_bytes + c.held_secondary_bytes + bytes) * 8 > cfg.held_bytes_budget * eighths
    }

    /// A frame hit the memory budget: one shard-wide `resource-pressure` request per flow and
    /// epoch (its flush returns the held frames), with the figures.
    pub(crate) fn budget_request(&mut self, requested: &mut u16, key: &FlowKey, cfg: &Config) {
        let c = &*self.counters;
        let (frames, bytes) = (c.held_frames(), c.held_primary_bytes + c.held_secondary_bytes);
        self.request(requested, CheckpointReason::ResourcePressure, key, || {
            format!(
                "shard memory budget exhausted: {frames} frames / {bytes} bytes held (budget {} / {})",
                cfg.held_frames_budget, cfg.held_bytes_budget
            )
        });
    }

    pub(crate) fn hold(&mut self, side: Side, len: u32) {
        let c = &mut *self.counters;
        match side {
            Side::Primary => {
                c.held_primary_frames += 1;
                c.held_primary_bytes += u64::from(len);
            }
            Side::Secondary => {
                c.held_secondary_frames += 1;
                c.held_secondary_bytes += u64::from(len);
            }
        }
    }

    #[inline]
    pub(crate) fn release_held(&mut self, frame: F, via: Via, arrived: Timestamp, len: u32) {
        let c = &mut *self.counters;
        c.held_primary_frames = c.held_primary_frames.saturating_sub(1);
        c.held_primary_bytes = c.held_primary_bytes.saturating_sub(u64::from(len));
        c.released[via as usize] += 1;
        c.hold_time.record_ns(self.now.as_nanos().saturating_sub(arrived.as_nanos()));
        emit(self.actions, Action::Release { frame, via });
    }

    /// The rest of a held segment whose first `skip` payload bytes left as a part.
    pub(crate) fn release_held_rest(&mut self, frame: F, via: Via, arrived: Timestamp, len: u32, skip: u32) {
        let c = &mut *self.counters;
        c.held_primary_frames = c.held_primary_frames.saturating_sub(1);
        c.held_primary_bytes = c.held_primary_bytes.saturating_sub(u64::from(len));
        c.released[via as usize] += 1;
        c.hold_time.record_ns(self.now.as_nanos().saturating_sub(arrived.as_nanos()));
        emit(self.actions, Action::ReleaseRest { frame, via, skip });
    }

    /// A verified part of a held segment (see [`Action::ReleasePart`]).
    pub(crate) fn release_part(&mut self, bytes: Box<[u8]>, via: Via) {
        self.counters.released_parts += 1;
        emit(self.actions, Action::ReleasePart { bytes, via });
    }

    pub(crate) fn release_now(&mut self, frame: F, via: Via) {
        self.counters.released[via as usize] += 1;
        emit(self.actions, Action::Release { frame, via });
    }

    #[inline]
    pub(crate) fn release_secondary_held(&mut self, frame: F, len: u32, reason: DropReason) {
        let c = &mut *self.counters;
        c.held_secondary_frames = c.held_secondary_frames.saturating_sub(1);
        c.held_secondary_bytes = c.held_secondary_bytes.saturating_sub(u64::from(len));
        self.count_secondary(reason);
        emit(self.actions, Action::Drop { side: Side::Secondary, frame, reason });
    }

    /// After a failover to the secondary: one of its held frames goes to the clients.
    pub(crate) fn forward_secondary_held(&mut self, frame: F, len: u32) {
        let c = &mut *self.counters;
        c.held_secondary_frames = c.held_secondary_frames.saturating_sub(1);
        c.held_secondary_bytes = c.held_secondary_bytes.saturating_sub(u64::from(len));
        c.secondary_forwarded += 1;
        emit(self.actions, Action::Release { frame, via: Via::Passthrough });
    }

    pub(crate) fn consume_new(&mut self, frame: F) {
        self.count_secondary(DropReason::Consumed);
        emit(self.actions, Action::Drop { side: Side::Secondary, frame, reason: DropReason::Consumed });
    }

    fn count_secondary(&mut self, reason: DropReason) {
        let c = &mut *self.counters;
        match reason {
            DropReason::Consumed => c.secondary_consumed += 1,
            DropReason::Flushed => c.secondary_flushed += 1,
            r => c.secondary_dropped[r as usize] += 1,
        }
    }

    pub(crate) fn drop_new(&mut self, side: Side, frame: F, reason: DropReason) {
        match side {
            Side::Primary => self.counters.primary_dropped[reason as usize] += 1,
            Side::Secondary => self.count_secondary(reason),
        }
        emit(self.actions, Action::Drop { side, frame, reason });
    }

    /// Emits a checkpoint request for `flow` (a key, a name such as `non-ip`, or "" for the
    /// whole shard) unless `requested` — the flow's or the shard's bits — shows this reason
    /// was already requested in the current epoch. The flow's name and the detail are only
    /// built when the request is made.
    pub(crate) fn request(
        &mut self,
        requested: &mut u16,
        reason: CheckpointReason,
        flow: impl std::fmt::Display,
        detail: impl FnOnce() -> String,
    ) {
        if *requested & reason.bit() != 0 {
            return;
        }
        *requested |= reason.bit();
        self.counters.checkpoint_requests[reason as usize] += 1;
        emit(
            self.actions,
            Action::Checkpoint(Box::new(CheckpointRequest {
                reason,
                flow: flow.to_string(),
                detail: detail(),
                now: self.now,
            })),
        );
    }
}
