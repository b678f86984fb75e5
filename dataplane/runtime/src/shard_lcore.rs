//! One shard's lcore: the run-to-completion loop around a `colo_core::Shard` (SPEC §8).
//!
//! The [`ShardContext`] is owned by its lcore and shares nothing on the packet path: frames
//! arrive on its SPSC rings (software dispatch) or from the guest ports' RX queues it polls
//! itself (hardware RSS, or the one shard of compare mode), actions leave as transmissions,
//! frees and events on bounded lock-free queues. Loop: input bursts → compare → deadlines →
//! control commands → transmit. It allocates nothing per packet and logs nothing per packet.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use colo_core::wire::Class;
use colo_core::{Action, Counters, Frame, Shard, Side};
use crossbeam_queue::ArrayQueue;
use dpdk::{Mbuf, RxBurst, RxQueue, BURST_SIZE};

use crate::clock::TscClock;
use crate::held::HeldFrame;
use crate::messages::{FlowRow, ShardCommand, ShardEvent};
use crate::tx::Transmitter;
use crate::Shared;

/// A shard's input, chosen once at start-up (SPEC §8).
pub enum ShardInput {
    /// Software dispatch: the I/O lcore hands frames over one SPSC ring per side.
    Rings {
        /// Frames from the primary port.
        primary: rtrb::Consumer<crate::io_lcore::Dispatched>,
        /// Frames from the secondary port.
        secondary: rtrb::Consumer<crate::io_lcore::Dispatched>,
        /// Frames from the clients' port (proxy mode), to mirror to both guests.
        client: Option<rtrb::Consumer<crate::io_lcore::Dispatched>>,
    },
    /// The shard polls queue *i* of both guest ports itself (`None` once stopped): hardware
    /// RSS, or the one shard of compare mode.
    Queues {
        /// Queue *i* of the primary port.
        primary: Option<RxQueue>,
        /// Queue *i* of the secondary port.
        secondary: Option<RxQueue>,
        /// Receive burst (boxed: a large array next to the ring variant).
        burst: Box<RxBurst>,
        /// Pauses RX while the packet pool runs low.
        gate: crate::io_lcore::RxGate,
    },
}

impl ShardInput {
    /// Whether nothing received is still waiting to be handled.
    fn is_drained(&self) -> bool {
        match self {
            ShardInput::Rings { primary, secondary, client } => {
                primary.is_empty() && secondary.is_empty() && client.as_ref().is_none_or(|c| c.is_empty())
            }
            ShardInput::Queues { .. } => true,
        }
    }

    /// Stops receiving (polled queues: release them; rings: the I/O lcore stops).
    fn stop(&mut self) {
        if let ShardInput::Queues { primary, secondary, .. } = self {
            *primary = None;
            *secondary = None;
        }
    }
}

/// What a shard's polling loop carries from one round to the next.
#[derive(Debug)]
pub struct RoundState {
    stopping: bool,
    next_publish: colo_core::Timestamp,
    next_pressure_check: colo_core::Timestamp,
    round_start: u64,
}

impl RoundState {
    /// Starts the next round's load measurement now (a shard sharing its lcore with other
    /// work must not count that work as its own).
    pub fn start_round(&mut self) {
        self.round_start = dpdk::tsc();
    }
}

impl Default for RoundState {
    fn default() -> Self {
        RoundState {
            stopping: false,
            next_publish: colo_core::Timestamp::default(),
            next_pressure_check: colo_core::Timestamp::default(),
            round_start: dpdk::tsc(),
        }
    }
}

/// Everything one shard lcore owns.
pub struct ShardContext {
    /// Shard index.
    pub id: usize,
    /// The comparator.
    pub shard: Shard<HeldFrame>,
    /// Where this shard's frames come from.
    pub input: ShardInput,
    /// Where actions go: released frames to TX, requests to the control thread.
    pub out: Outlets,
    /// Commands from the control thread.
    pub commands: Arc<ArrayQueue<ShardCommand>>,
    /// The clock.
    pub clock: TscClock,
    /// Flags shared with the control thread.
    pub shared: Arc<Shared>,
    /// Latest counters for the control thread (capacity 1, overwritten): lock-free reads.
    pub published: Arc<ArrayQueue<Counters>>,
    /// The packet pool, watched for exhaustion (SPEC §6 `resource-pressure`).
    pub pool: dpdk::Mempool,
    /// Number of shards sharing the pool.
    pub shards: usize,
    /// Proxy mode: mirroring client frames to both guests.
    pub mirror: Option<Mirror>,
    /// How to wait when there is nothing to do.
    pub backoff: crate::IdleBackoff,
    /// This lcore's busy/idle cycles.
    pub load: Arc<crate::LcoreLoad>,
    /// The receive burst being handled (empty between bursts).
    pub staged: Staged,
}

/// A receive burst's frames and, at the same index, their parses. Two vectors, not one of
/// pairs: the shard borrows each parse where it was written instead of moving it out with its
/// frame. Their capacity is kept between bursts.
pub struct Staged {
    frames: Vec<HeldFrame>,
    classes: Vec<Class>,
}

impl Staged {
    /// Room for one burst.
    pub fn new() -> Self {
        Staged { frames: Vec::with_capacity(BURST_SIZE), classes: Vec::with_capacity(BURST_SIZE) }
    }

    fn len(&self) -> usize {
        self.frames.len()
    }

    fn push(&mut self, frame: HeldFrame, class: Class) {
        self.frames.push(frame);
        self.classes.push(class);
    }

    /// Stages a received frame with its parse written straight into its place
    /// ([`colo_core::wire::parse_into`]): a class returned and then copied in made the copy
    /// wait for the parse's narrower stores.
    fn push_parsing(&mut self, frame: HeldFrame) {
        self.classes.push(Class::NonIp(0));
        if let Some(class) = self.classes.last_mut() {
            colo_core::wire::parse_into(frame.bytes(), class);
        }
        self.frames.push(frame);
    }
}

impl Default for Staged {
    fn default() -> Self {
        Self::new()
    }
}

/// Proxy mode's client side of a shard (SPEC §3): every client frame goes to the primary as
/// it is and to the secondary with its ACK/SACK moved into the secondary's sequence space.
/// Copies whose connection offset is not known yet wait, in order, until it is.
pub struct Mirror {
    /// Toward the primary guest's port.
    pub to_primary: Transmitter,
    /// Toward the secondary guest's port.
    pub to_secondary: Transmitter,
    /// Secondary copies waiting for their connection's offset, each connection's in order;
    /// other connections' copies pass them.
    pub pending: VecDeque<WaitingCopy>,
    /// Copies waiting per connection (so a new copy knows in O(1) whether it must queue).
    pub waiting: std::collections::HashMap<colo_core::FlowKey, u32>,
    /// Connections whose copies stay queued in the current retry pass (reused: no
    /// allocation per pass).
    pub blocked: std::collections::HashSet<colo_core::FlowKey>,
    /// The shard's offsets epoch at the last retry, and when waiting copies are next looked
    /// at anyway (for those that waited too long).
    pub seen_epoch: u64,
    /// See `seen_epoch`.
    pub next_retry: colo_core::Timestamp,
    /// Counters, read by the control thread.
    pub stats: Arc<MirrorStats>,
}

/// Proxy-mode counters of one shard (each shard has its own: no sharing on the packet path).
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Client frames received.
    pub client_in: std::sync::atomic::AtomicU64,
    /// Copies handed to the primary's port.
    pub to_primary: std::sync::atomic::AtomicU64,
    /// Copies handed to the secondary's port.
    pub to_secondary: std::sync::atomic::AtomicU64,
    /// Secondary copies whose ACK was rewritten.
    pub rewritten: std::sync::atomic::AtomicU64,
    /// Secondary copies dropped: no mbuf for the copy, the waiting queue full, an offset
    /// still unknown after `compare_timeout`, or shutdown before it was known (the client's
    /// TCP retransmits).
    pub secondary_dropped: std::sync::atomic::AtomicU64,
}

/// A client frame's copy for the secondary whose connection's offset is not known yet.
pub struct WaitingCopy {
    copy: Mbuf,
    /// Its connection (so later copies of it keep their order) and where its fields are.
    cs: colo_core::ClientSegment,
    since: colo_core::Timestamp,
}

/// Secondary copies that may wait for an offset, per shard and per connection.
const MIRROR_PENDING_MAX: usize = 1024;
const MIRROR_PENDING_PER_CONN: u32 = 64;
/// Waiting copies are looked at when the shard learned offsets, else this often.
const MIRROR_RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl Mirror {
    /// Mirrors one client frame. After a failover only the surviving guest gets it: the
    /// failed one is gone (its port may not even take frames), and copies for it would only
    /// pile up.
    fn client_frame(
        &mut self,
        shard: &mut Shard<HeldFrame>,
        pool: &dpdk::Mempool,
        frame: HeldFrame,
        class: Option<colo_core::wire::Class>,
        now: colo_core::Timestamp,
    ) {
        // A chained client frame is read (and copied) whole: `bytes` is its contiguous copy.
        let cs = match class {
            Some(class) => shard.observe_client_parsed(frame.bytes(), &class, now),
            None => shard.observe_client(frame.bytes(), now),
        };
        let stats = &self.stats;
        stats.client_in.fetch_add(1, Ordering::Relaxed);
        match shard.failed_over() {
            Some(Side::Secondary) => {
                // Rewritten in place: the headers are in the first segment even of a chain.
                self.send_secondary_in_order(shard, frame.into_mbuf(), cs, now);
                return;
            }
            Some(Side::Primary) => {
                stats.to_primary.fetch_add(1, Ordering::Relaxed);
                self.to_primary.push(frame.into_mbuf());
                return;
            }
            None => {}
        }
        match frame.mbuf().deep_copy(pool) {
            Ok(copy) => self.send_secondary_in_order(shard, copy, cs, now),
            Err(_) => {
                stats.secondary_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stats.to_primary.fetch_add(1, Ordering::Relaxed);
        self.to_primary.push(frame.into_mbuf());
    }

    /// Sends a secondary copy, or queues it behind its connection's waiting copies.
    fn send_secondary_in_order(
        &mut self,
        shard: &Shard<HeldFrame>,
        copy: Mbuf,
        cs: Option<colo_core::ClientSegment>,
        now: colo_core::Timestamp,
    ) {
        let behind = cs.is_some_and(|c| self.waiting.contains_key(&c.conn));
        if !behind {
            if let Some(copy) = self.send_secondary(shard, copy, cs) {
                self.wait(copy, cs, now);
            }
        } else {
            self.wait(copy, cs, now);
        }
    }

    fn wait(&mut self, copy: Mbuf, cs: Option<colo_core::ClientSegment>, since: colo_core::Timestamp) {
        let room = |n: Option<&u32>| n.is_none_or(|&n| n < MIRROR_PENDING_PER_CONN);
        match cs {
            Some(cs) if self.pending.len() < MIRROR_PENDING_MAX && room(self.waiting.get(&cs.conn)) => {
                *self.waiting.entry(cs.conn).or_default() += 1;
                self.pending.push_back(WaitingCopy { copy, cs, since });
            }
            _ => {
                self.stats.secondary_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Rewrites and sends `copy` (summarised as `cs`, if TCP); gives it back if its
    /// connection's offset is unknown.
    fn send_secondary(
        &mut self,
        shard: &Shard<HeldFrame>,
        mut copy: Mbuf,
        cs: Option<colo_core::ClientSegment>,
    ) -> Option<Mbuf> {
        let rewrite = match &cs {
            Some(cs) => shard.rewrite_client_segment(copy.data_mut(), cs),
            None => colo_core::ClientRewrite::NotTcpAck,
        };
        match rewrite {
            colo_core::ClientRewrite::OffsetUnknown => Some(copy),
            r => {
                if r == colo_core::ClientRewrite::Rewritten {
                    self.stats.rewritten.fetch_add(1, Ordering::Relaxed);
                }
                self.stats.to_secondary.fetch_add(1, Ordering::Relaxed);
                self.to_secondary.push(copy);
                None
            }
        }
    }

    /// Sends waiting copies whose offset became known (after secondary SYNs or a flush), each
    /// connection's in order. A copy that waited `compare_timeout` is dropped and counted:
    /// the secondary never answered that connection's SYN, and its copies must not wait
    /// forever (the client's TCP retransmits what matters).
    fn retry(&mut self, shard: &Shard<HeldFrame>, now: colo_core::Timestamp) {
        if self.pending.is_empty() {
            return;
        }
        // Only when an offset may have become known, or now and then for copies that waited
        // too long: a queue full of copies nobody will answer costs nothing per round.
        let epoch = shard.offsets_epoch();
        if epoch == self.seen_epoch && now < self.next_retry {
            return;
        }
        self.seen_epoch = epoch;
        self.next_retry = now.saturating_add(MIRROR_RETRY_EVERY);
        let give_up = shard.config().compare_timeout;
        // One O(n) pass, rotating the queue (what stays is pushed back in its order); a
        // connection's copy never passes an earlier one of the same connection.
        self.blocked.clear();
        for _ in 0..self.pending.len() {
            let Some(w) = self.pending.pop_front() else { break };
            if self.blocked.contains(&w.cs.conn) {
                self.pending.push_back(w);
                continue;
            }
            let WaitingCopy { copy, cs, since } = w;
            match self.send_secondary(shard, copy, Some(cs)) {
                None => self.unwait(&cs.conn),
                Some(copy) if since.saturating_add(give_up) <= now => {
                    drop(copy);
                    self.unwait(&cs.conn);
                    self.stats.secondary_dropped.fetch_add(1, Ordering::Relaxed);
                }
                Some(copy) => {
                    self.blocked.insert(cs.conn);
                    self.pending.push_back(WaitingCopy { copy, cs, since });
                }
            }
        }
    }

    fn unwait(&mut self, conn: &colo_core::FlowKey) {
        if let Some(n) = self.waiting.get_mut(conn) {
            *n -= 1;
            if *n == 0 {
                self.waiting.remove(conn);
            }
        }
    }

    fn flush(&mut self) -> usize {
        self.to_primary.flush() + self.to_secondary.flush()
    }

    fn pending_tx(&self) -> usize {
        self.to_primary.pending() + self.to_secondary.pending()
    }
}

/// Below this fraction of free mbufs a shard asks for a checkpoint, whose flush returns the
/// held mbufs before RX has to drop.
pub const POOL_LOW_WATER_DIVISOR: u32 = 8;
/// Below this fraction of free mbufs RX pauses (frames wait in the device).
pub const POOL_RX_RESERVE_DIVISOR: u32 = 16;
/// How often a shard looks at the pool.
const PRESSURE_EVERY: std::time::Duration = std::time::Duration::from_millis(1);

/// How often a shard publishes its counters for `stats` (TSC ticks are converted at start).
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

impl ShardContext {
    /// Runs until told to stop; returns when every input frame has been handled, the shard
    /// flushed and every released frame handed to TX.
    pub fn run(mut self) {
        let mut state = RoundState::default();
        while !self.round(&mut state) {}
        self.shut_down(&mut std::thread::yield_now, true);
    }

    /// One polling round: publish and pool checks when due, input, timers, commands, TX.
    /// True once `Stop` came and every input is handled (then call [`ShardContext::shut_down`]).
    pub fn round(&mut self, state: &mut RoundState) -> bool {
        let now = self.clock.now();
        if now >= state.next_publish {
            // Off the per-packet path: a copy of plain integers every few milliseconds.
            self.published.force_push(self.shard.counters().clone());
            state.next_publish = now.saturating_add(PUBLISH_EVERY);
        }
        if now >= state.next_pressure_check {
            state.next_pressure_check = now.saturating_add(PRESSURE_EVERY);
            self.check_pool(now);
        }
        let mut work = self.take_input(Side::Primary, now) + self.take_input(Side::Secondary, now);
        work += self.take_client(now);
        if self.shard.next_deadline().is_some_and(|d| d <= now) {
            self.shard.handle_timeout(now);
        }
        self.apply_actions();
        while let Some(cmd) = self.commands.pop() {
            work += 1;
            state.stopping |= self.command(cmd, now);
        }
        self.out.frees.flush();
        self.out.tx.flush();
        if let Some(mirror) = &mut self.mirror {
            // Secondary SYNs (or a flush) handled above may have made offsets known.
            mirror.retry(&self.shard, now);
            mirror.flush();
        }
        self.retry_events();
        // The dispatcher has stopped before Stop is sent, so empty rings mean all input has
        // been handled.
        if state.stopping && self.input.is_drained() {
            return true;
        }
        // Timers and TX backlogs still need the loop; a back-off sleep delays them by at most
        // the configured sleep.
        self.backoff.round(work > 0 || self.out.tx.pending() > 0);
        let round_end = dpdk::tsc();
        self.load.round(round_end.saturating_sub(state.round_start), work as u64);
        state.round_start = round_end;
        false
    }

    /// Below 1/8 free mbufs, a shard holding its share of the shortage asks for
    /// `resource-pressure`: if the mbufs sit in TX backlogs (output slower than the guests) a
    /// flush would free nothing.
    fn check_pool(&mut self, now: colo_core::Timestamp) {
        let (free, size) = (self.pool.available(), self.pool.capacity());
        let held = self.shard.counters().held_frames();
        let share = u64::from(size / POOL_LOW_WATER_DIVISOR) / self.shards.max(1) as u64;
        if free < size / POOL_LOW_WATER_DIVISOR && held >= share {
            // One request per epoch at most (the core aggregates); the detail is only
            // formatted here, once a millisecond at worst.
            self.shard.resource_pressure(&format!("mbuf pool: {free} of {size} free"), now);
            self.apply_actions();
        }
    }

    /// Carries out one command of the control loop; true for `Stop`.
    fn command(&mut self, cmd: ShardCommand, now: colo_core::Timestamp) -> bool {
        match cmd {
            ShardCommand::Flush { epoch, resync } => {
                if resync {
                    self.shard.checkpoint_done(now);
                } else {
                    self.shard.standalone_completion(now);
                }
                self.apply_actions();
                // Publish before acknowledging: whoever sees the epoch complete then sees
                // counters that include the flush.
                self.published.force_push(self.shard.counters().clone());
                self.send_event(ShardEvent::Flushed { shard: self.id, epoch });
            }
            ShardCommand::Failover(side) => {
                self.shard.failover(side, now);
                self.apply_actions();
                self.published.force_push(self.shard.counters().clone());
            }
            ShardCommand::ReportFlows { request, limit } => {
                let flows = self
                    .shard
                    .flows_by_held(limit)
                    .into_iter()
                    .map(|(key, st)| FlowRow {
                        shard: self.id,
                        flow: key.to_string(),
                        held_primary: st.held_primary,
                        held_secondary: st.held_secondary,
                        head: st.head.map(|h| h.as_str()),
                        diverged: st.diverged,
                        closed: st.closed,
                        base: st.base,
                        compared: st.compared,
                        secondary_ack: st.secondary_ack,
                    })
                    .collect();
                self.send_event(ShardEvent::Flows { shard: self.id, request, flows });
            }
            ShardCommand::SetCompareTimeout(d) => self.shard.set_compare_timeout(d),
            ShardCommand::SetMaxQueueSize(n) => self.shard.set_max_queue_size(n),
            ShardCommand::Stop => {
                self.input.stop();
                return true;
            }
        }
        false
    }

    /// Shutdown, once every input is handled: as a checkpoint completion (SPEC §8), then the
    /// output drained (within a grace period) and the final counters reported.
    ///
    /// `pump` runs while it waits for the TX rings to drain (a yield on a shard lcore; the I/O
    /// work itself when the shard runs on the main lcore next to it). `wait_for_events` says
    /// whether to wait here until the `Stopped` report is queued (on the main lcore the
    /// control loop keeps calling [`ShardContext::retry_events`] instead).
    pub fn shut_down(&mut self, pump: &mut dyn FnMut(), wait_for_events: bool) {
        let now = self.clock.now();
        self.shard.flush_for_shutdown(now);
        self.apply_actions();
        self.out.frees.flush();
        let give_up = std::time::Instant::now() + crate::SHUTDOWN_TX_GRACE;
        if let Some(mirror) = &mut self.mirror {
            // After the flush every offset is 0: the waiting copies can go.
            mirror.retry(&self.shard, now);
            let stranded = mirror.pending.len() as u64;
            mirror.pending.clear();
            mirror.waiting.clear();
            mirror.stats.secondary_dropped.fetch_add(stranded, Ordering::Relaxed);
            while mirror.pending_tx() > 0 && std::time::Instant::now() < give_up {
                if mirror.flush() == 0 {
                    pump();
                }
            }
        }
        while self.out.tx.pending() > 0 {
            if self.out.tx.flush() == 0 {
                if std::time::Instant::now() >= give_up {
                    let n = self.out.tx.discard() as u64;
                    self.shared.tx_abandoned_at_shutdown.fetch_add(n, Ordering::Relaxed);
                    break;
                }
                pump();
            }
        }
        let counters = Box::new(self.shard.counters().clone());
        self.published.force_push((*counters).clone());
        self.send_event(ShardEvent::Stopped { shard: self.id, counters });
        while wait_for_events && !self.out.unsent_events.is_empty() {
            self.retry_events();
            std::thread::yield_now();
        }
        self.shared.shards_stopped.fetch_add(1, Ordering::AcqRel);
    }

    /// Mirrors up to a burst of client frames (proxy mode).
    fn take_client(&mut self, now: colo_core::Timestamp) -> usize {
        let (ShardInput::Rings { client: Some(ring), .. }, Some(mirror)) = (&mut self.input, &mut self.mirror) else {
            return 0;
        };
        let mut n = 0;
        while n < BURST_SIZE {
            let Ok((m, class)) = ring.pop() else { break };
            mirror.client_frame(&mut self.shard, &self.pool, m, class, now);
            n += 1;
        }
        n
    }

    /// Takes up to a burst of `side`'s frames and handles them: all are parsed and their
    /// flows located first, then each is handled and its actions carried out before the next
    /// ([`Outlets::handle_burst`]).
    fn take_input(&mut self, side: Side, now: colo_core::Timestamp) -> usize {
        let staged = &mut self.staged;
        match &mut self.input {
            ShardInput::Rings { primary, secondary, .. } => {
                let ring = match side {
                    Side::Primary => primary,
                    Side::Secondary => secondary,
                };
                while staged.len() < BURST_SIZE {
                    let Ok((m, class)) = ring.pop() else { break };
                    match class {
                        Some(class) => staged.push(m, class),
                        None => staged.push_parsing(m),
                    }
                }
            }
            ShardInput::Queues { primary, secondary, burst, gate } => {
                let queue = match side {
                    Side::Primary => primary,
                    Side::Secondary => secondary,
                };
                let Some(queue) = queue else { return 0 };
                if !gate.open() {
                    return 0; // back-pressure, as the I/O lcore does
                }
                let n = queue.rx_burst(burst);
                gate.took(n);
                for m in burst.by_ref() {
                    staged.push_parsing(HeldFrame::received(m));
                }
            }
        }
        let n = staged.len();
        self.out.handle_burst(&mut self.shard, self.id, side, staged, now);
        n
    }

    fn apply_actions(&mut self) {
        while let Some(action) = self.shard.poll_action() {
            self.out.apply(action, self.id);
        }
    }

    fn send_event(&mut self, ev: ShardEvent) {
        self.out.send_event(ev);
    }

    /// Queues the events the control loop's queue had no room for.
    pub fn retry_events(&mut self) {
        self.out.retry_events();
    }
}

/// A shard's outputs: its transmitter and its (never lossy) event path to the control thread.
pub struct Outlets {
    /// Released frames out.
    pub tx: Transmitter,
    /// How they fit the output port's wire.
    pub egress: crate::egress::Egress,
    /// Events to the control thread.
    pub events: Arc<ArrayQueue<ShardEvent>>,
    /// Events the queue had no room for yet (kept in order, never lost).
    pub unsent_events: VecDeque<ShardEvent>,
    /// Dropped and consumed frames' mbufs, freed a batch at a time (each round's end at the
    /// latest).
    pub frees: dpdk::FreeBatch,
}

impl Outlets {
    /// Hands a burst of `side`'s parsed frames (emptied) to the comparator
    /// ([`Shard::handle_burst`]: their flows located together, the lookups' memory reads
    /// overlapping), carrying out each frame's actions at once, so released frames leave in
    /// order and held frames never wait behind the burst.
    fn handle_burst(
        &mut self,
        shard: &mut Shard<HeldFrame>,
        id: usize,
        side: Side,
        staged: &mut Staged,
        now: colo_core::Timestamp,
    ) {
        if staged.len() == 0 {
            return; // an empty poll
        }
        // Inlined, the action is read field by field from the shard's queue, as it was written;
        // called, it was first copied out whole, and the copy's wide loads waited on the
        // narrower stores that had just written it (a store-forwarding stall).
        shard.handle_burst(
            side,
            &mut staged.frames,
            &staged.classes,
            now,
            #[inline(always)]
            |action| self.apply(action, id),
        );
        staged.classes.clear();
    }

    #[inline(always)]
    fn apply(&mut self, action: Action<HeldFrame>, shard: usize) {
        match action {
            Action::Release { frame, .. } => self.egress.send(frame, &mut self.tx),
            Action::ReleaseRest { frame, skip, .. } => self.egress.send_rest(frame, skip, &mut self.tx),
            Action::ReleasePart { bytes, .. } => self.egress.send_bytes(&bytes, &mut self.tx),
            // The shard has counted it by reason; its mbuf goes back with the round's others.
            Action::Drop { frame, .. } => self.frees.push(frame.into_mbuf()),
            Action::Checkpoint(request) => self.send_event(ShardEvent::Request { shard, request: *request }),
        }
    }

    fn send_event(&mut self, ev: ShardEvent) {
        if !self.unsent_events.is_empty() {
            self.unsent_events.push_back(ev);
        } else if let Err(ev) = self.events.push(ev) {
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
