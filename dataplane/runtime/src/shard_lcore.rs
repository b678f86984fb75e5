//! One shard's lcore: the run-to-completion loop around a `colo_core::Shard` (SPEC §8).
//!
//! The [`ShardContext`] is owned by its lcore and shares nothing on the packet path: frames
//! arrive on its SPSC rings (software dispatch), actions leave as transmissions, frees and
//! events on bounded lock-free queues. Loop: input bursts → compare → deadlines → control
//! commands → transmit. It allocates nothing per packet and logs nothing per packet.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use colo_core::{Action, Counters, Shard, Side};
use crossbeam_queue::ArrayQueue;
use dpdk::{Mbuf, BURST_SIZE};

use crate::clock::TscClock;
use crate::held::HeldFrame;
use crate::messages::{ShardCommand, ShardEvent};
use crate::tx::Transmitter;
use crate::Shared;

/// Everything one shard lcore owns.
pub struct ShardContext {
    /// Shard index.
    pub id: usize,
    /// The comparator.
    pub shard: Shard<HeldFrame>,
    /// Frames from the primary port, dispatched to this shard.
    pub primary_in: rtrb::Consumer<Mbuf>,
    /// Frames from the secondary port, dispatched to this shard.
    pub secondary_in: rtrb::Consumer<Mbuf>,
    /// Released frames out.
    pub tx: Transmitter,
    /// Commands from the control thread.
    pub commands: Arc<ArrayQueue<ShardCommand>>,
    /// Events to the control thread.
    pub events: Arc<ArrayQueue<ShardEvent>>,
    /// Events the queue had no room for yet (kept in order, never lost).
    pub unsent_events: VecDeque<ShardEvent>,
    /// The clock.
    pub clock: TscClock,
    /// Flags shared with the control thread.
    pub shared: Arc<Shared>,
    /// Latest counters for the control thread (capacity 1, overwritten): lock-free reads.
    pub published: Arc<ArrayQueue<Counters>>,
}

/// How often a shard publishes its counters for `stats` (TSC ticks are converted at start).
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

impl ShardContext {
    /// Runs until told to stop; returns when every input frame has been handled, the shard
    /// flushed and every released frame handed to TX.
    pub fn run(mut self) {
        let mut stopping = false;
        let mut next_publish = colo_core::Timestamp::default();
        loop {
            let now = self.clock.now();
            if now >= next_publish {
                // Off the per-packet path: a copy of plain integers every few milliseconds.
                self.published.force_push(self.shard.counters().clone());
                next_publish = now.saturating_add(PUBLISH_EVERY);
            }
            let mut work = self.take_input(Side::Primary, now) + self.take_input(Side::Secondary, now);
            if self.shard.next_deadline().is_some_and(|d| d <= now) {
                self.shard.handle_timeout(now);
            }
            self.apply_actions();
            while let Some(cmd) = self.commands.pop() {
                work += 1;
                match cmd {
                    ShardCommand::Flush { epoch } => {
                        self.shard.checkpoint_done(now);
                        self.apply_actions();
                        // Publish before acknowledging: whoever sees the epoch complete then
                        // sees counters that include the flush.
                        self.published.force_push(self.shard.counters().clone());
                        self.send_event(ShardEvent::Flushed { shard: self.id, epoch });
                    }
                    ShardCommand::Failover(side) => {
                        self.shard.failover(side, now);
                        self.apply_actions();
                        self.published.force_push(self.shard.counters().clone());
                    }
                    ShardCommand::Stop => stopping = true,
                }
            }
            self.tx.flush();
            self.retry_events();
            // The dispatcher has stopped before Stop is sent, so empty rings mean all input
            // has been handled.
            if stopping && self.primary_in.is_empty() && self.secondary_in.is_empty() {
                break;
            }
            if work == 0 {
                std::hint::spin_loop();
            }
        }
        // Shut down as on a checkpoint completion (SPEC §8): release everything held.
        let now = self.clock.now();
        self.shard.checkpoint_done(now);
        self.apply_actions();
        while self.tx.pending() > 0 {
            if self.tx.flush() == 0 {
                std::thread::yield_now();
            }
        }
        let counters = Box::new(self.shard.counters().clone());
        self.published.force_push((*counters).clone());
        self.send_event(ShardEvent::Stopped { shard: self.id, counters });
        while !self.unsent_events.is_empty() {
            self.retry_events();
            std::thread::yield_now();
        }
        self.shared.shards_stopped.fetch_add(1, Ordering::AcqRel);
    }

    fn take_input(&mut self, side: Side, now: colo_core::Timestamp) -> usize {
        let ring = match side {
            Side::Primary => &mut self.primary_in,
            Side::Secondary => &mut self.secondary_in,
        };
        let mut n = 0;
        while n < BURST_SIZE {
            let Ok(m) = ring.pop() else { break };
            self.shard.handle(side, HeldFrame(m), now);
            n += 1;
            // Drain after every frame: released frames leave in order, and held frames never
            // wait behind a burst.
            while let Some(action) = self.shard.poll_action() {
                apply(action, self.id, &mut self.tx, &self.events, &mut self.unsent_events);
            }
        }
        n
    }

    fn apply_actions(&mut self) {
        while let Some(action) = self.shard.poll_action() {
            apply(action, self.id, &mut self.tx, &self.events, &mut self.unsent_events);
        }
    }

    fn send_event(&mut self, ev: ShardEvent) {
        if self.unsent_events.is_empty() {
            if let Err(ev) = self.events.push(ev) {
                self.unsent_events.push_back(ev);
            }
        } else {
            self.unsent_events.push_back(ev);
        }
    }

    fn retry_events(&mut self) {
        while let Some(ev) = self.unsent_events.pop_front() {
            if let Err(ev) = self.events.push(ev) {
                self.unsent_events.push_front(ev);
                break;
            }
        }
    }
}

fn apply(
    action: Action<HeldFrame>,
    shard: usize,
    tx: &mut Transmitter,
    events: &ArrayQueue<ShardEvent>,
    unsent: &mut VecDeque<ShardEvent>,
) {
    match action {
        Action::Release { frame, .. } => tx.push(frame.0),
        // Dropping the handle frees the mbuf; the shard has counted it by reason.
        Action::Drop { frame, .. } => drop(frame),
        Action::Checkpoint(request) => {
            let ev = ShardEvent::Request { shard, request };
            if !unsent.is_empty() {
                unsent.push_back(ev);
            } else if let Err(ev) = events.push(ev) {
                unsent.push_back(ev);
            }
        }
    }
}
