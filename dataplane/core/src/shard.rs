//! The shard (SPEC §1, §6, §8): one core's comparator, fed frames and time, polled for actions.
//!
//! Owns the flow table (bounded slots found through `flow_index`; evicts closed then idle flows,
//! never wipes), the per-shard deadline queue, checkpoint-request aggregation per epoch, the
//! counters, and the action queue. It dispatches each frame by class: TCP to [`crate::tcp`];
//! UDP/ICMP/ICMPv6 and other IP protocols to `datagram`; fragments to `reasm`, whose whole
//! datagrams then go to `datagram` — or, for a reassembled TCP segment, to its connection in
//! [`crate::tcp`]; non-IP/malformed frames to the configured [`crate::NonIpPolicy`]. New flows pass the shard's new-flow budget first (SPEC §11).
//!
//! Must never: read a clock, log or allocate on the per-packet path in steady state (queues
//! keep their capacity; only checkpoint diagnostics allocate), drop primary output silently,
//! or reorder a flow. Calls are driven in this order by the caller: any `handle*`,
//! `checkpoint_done` or `failover` call, then `poll_action` until `None` (`handle_burst`
//! hands each frame's actions to its sink itself).

use std::collections::VecDeque;

use crate::checkpoint::CheckpointReason;
use crate::counters::Counters;
use crate::datagram::{DatagramFlow, Item, Pieces};
use crate::flow_index::{FlowIndex, PackedKey};
pub use crate::out::Action;
use crate::out::{Out, Piece};
pub use crate::reasons::{DropReason, FlowStatus, HoldReason, Via};

/// The output sink over a shard's own fields at `now`. A macro rather than a method: the flow
/// table (`slots`) stays borrowable beside it.
macro_rules! out {
    ($shard:expr, $now:expr) => {
        Out { actions: &mut $shard.actions, counters: &mut $shard.counters, now: $now, pool: &mut $shard.pool }
    };
}
use crate::reasm::{Fed, Reassembly};
use crate::tcp::{SegFrames, TcpConn};
use crate::time::Timestamp;
use crate::timer::{DeadlineQueue, TimerKind};
use crate::wire::{self, Class, FlowKey, Span, TcpSegment};
use crate::{Config, Frame, NonIpPolicy, Side};

/// A client's TCP frame as proxy mode needs it (from [`Shard::observe_client`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSegment {
    /// Its connection's key in the comparator's (guest → client) direction.
    pub conn: FlowKey,
    /// Where its fields are.
    pub seg: TcpSegment,
}

/// Slots the eviction hand looks at per new flow when the table is full.
const EVICT_SCAN: usize = 64;

/// Which comparator a flow uses; part of the table key so a reassembled TCP segment (compared
/// as a datagram) never collides with its connection's stream state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Tcp,
    /// UDP/ICMP/ICMPv6: `datagram-mismatch`.
    Datagram,
    /// Other IP protocols and reassembled TCP: `other-mismatch`.
    OtherIp,
    /// The shard's one non-IP/malformed FIFO (`NonIpPolicy::Compare`): `other-mismatch`.
    NonIp,
}

/// Where [`Shard::locate_burst`] found a frame's flow: the slot that held it then and the
/// slot's generation. Only a shortcut: the handling takes the slot while its generation is
/// unchanged (removing a flow bumps it, so an earlier frame of the burst that removed the
/// flow, or removed it and made another in its place, voids the hint) and looks the flow up
/// again if not. Hints never leave the shard ([`Shard::handle_burst`] makes and uses them), so
/// a hint always belongs to the frame it is used for; a frame whose key the handling changes
/// (proxy mode moving a secondary segment to its paired connection's port) drops its hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowHint {
    /// The slot, or [`FlowHint::NO_SLOT`].
    slot: u32,
    generation: u32,
}

impl FlowHint {
    /// No hint: the handling looks the flow up itself.
    const NONE: FlowHint = FlowHint { slot: FlowHint::NO_SLOT, generation: 0 };
    /// No table has this many slots (the flow bound is far smaller).
    const NO_SLOT: u32 = u32::MAX;
}

/// Frames [`Shard::locate_burst`] hashes before it probes (a DPDK receive burst).
const LOCATE_CHUNK: usize = 32;

/// Compared bytes [`Shard::handle_burst`] prefetches at most, per frame and side: enough for
/// a full-size frame; past that the hardware prefetcher follows the comparison's sequential
/// reads.
const WARM_BYTES: usize = 2048;

/// Reads a byte on each cache line `bytes` spans: a frame's compared bytes rarely start at a
/// line boundary, so even 30 bytes can span two lines.
fn touch_lines(bytes: &[u8]) {
    // A plain stride loop: `step_by` cost twice the instructions a line (12 against 6.5).
    let mut seen = bytes.last().copied().unwrap_or(0);
    let mut at = 0;
    while let Some(b) = bytes.get(at) {
        seen ^= b;
        at += 64;
    }
    std::hint::black_box(seen);
}

/// How many frames ahead of the one being handled [`Shard::handle_burst`] asks the cache for
/// the bytes the comparison will read (the arriving frame's and the other guest's held
/// ones). A full-size segment's 23 lines, read for a whole burst at once, fill the CPU's
/// queue of outstanding reads and stall it; a few frames ahead, they arrive while the frames
/// before are handled (the steady bench's 1460 B TCP bursts: about 300 → 180 ns a pair; 2 to
/// 5 frames ahead measured alike, 8 slower, every other line only far slower).
const PREFETCH_AHEAD: usize = 3;

/// Compared bytes up to this length are read at once for the whole burst
/// ([`Shard::locate_burst`]) rather than prefetched frame by frame: a small datagram's line
/// or two (an arriving frame's came into the cache with its parse).
const SHORT_BYTES: u32 = 128;

/// Where the bytes the comparison of a frame of this class reads lie: `(offset, length)`.
/// None for the classes compared otherwise, or not at all.
#[inline]
fn compared_span(class: &Class) -> Option<(u32, u32)> {
    match class {
        Class::Tcp(_, seg) => Some((seg.payload_offset, seg.payload_len)),
        Class::Datagram(_, span) | Class::OtherIp(_, span) => Some((span.offset, span.len)),
        Class::Fragment(..) | Class::NonIp(_) | Class::Malformed(_) => None,
    }
}

/// Asks the cache for the bytes the comparison of `frame` (of class `class`) will read. A
/// hint: reads nothing.
#[inline]
fn prefetch_compared<F: Frame>(class: &Class, frame: &F) {
    if let Some((offset, len)) = compared_span(class) {
        if let Some(bytes) = frame.bytes().get(offset as usize..) {
            cache_prefetch::bytes(bytes, (len as usize).min(WARM_BYTES));
        }
    }
}

/// The flow key and kind a frame of this class is looked up by, if it has a flow of its own
/// (fragments are keyed by their reassembled datagram; non-IP frames share one flow).
fn flow_of(class: &Class) -> Option<(&FlowKey, Kind)> {
    match class {
        Class::Tcp(key, _) => Some((key, Kind::Tcp)),
        Class::Datagram(key, _) => Some((key, Kind::Datagram)),
        Class::OtherIp(key, _) => Some((key, Kind::OtherIp)),
        Class::Fragment(..) | Class::NonIp(_) | Class::Malformed(_) => None,
    }
}

/// The key of the shard's non-IP FIFO (never a real flow: protocol 0, unspecified addresses).
const NON_IP_KEY: FlowKey = FlowKey {
    vlans: [None, None],
    src: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    dst: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    proto: 0,
    src_port: 0,
    dst_port: 0,
};

/// A flow's comparison state. The TCP state (264 bytes) is boxed: inline it made every entry of
/// the table 16 bytes larger than a datagram flow's needs, and a 10,000-flow UDP pair 12 %
/// slower (measured); a TCP segment pays one pointer read on state that is five cache lines
/// anyway.
enum Conn<F> {
    Tcp(Box<TcpConn<F>>),
    Datagram(DatagramFlow<F>),
}

impl<F: Frame> Conn<F> {
    fn new(kind: Kind, cfg: &Config) -> Self {
        match kind {
            Kind::Tcp => Conn::Tcp(Box::new(TcpConn::new(cfg.mode))),
            Kind::Datagram => Conn::Datagram(DatagramFlow::new(CheckpointReason::DatagramMismatch)),
            Kind::OtherIp => Conn::Datagram(DatagramFlow::new(CheckpointReason::OtherMismatch)),
            Kind::NonIp => Conn::Datagram(DatagramFlow::new(CheckpointReason::OtherMismatch).non_ip()),
        }
    }
    fn is_empty(&self) -> bool {
        match self {
            Conn::Tcp(c) => c.is_empty(),
            Conn::Datagram(d) => d.is_empty(),
        }
    }
    fn is_closed(&self) -> bool {
        match self {
            Conn::Tcp(c) => c.is_closed(),
            Conn::Datagram(_) => false,
        }
    }
    fn closed_at(&self) -> Option<Timestamp> {
        match self {
            Conn::Tcp(c) => c.closed_at,
            Conn::Datagram(_) => None,
        }
    }
    #[inline]
    fn compare_deadline(&self, cfg: &Config) -> Option<Timestamp> {
        match self {
            Conn::Tcp(c) => c.compare_deadline(cfg.compare_timeout),
            Conn::Datagram(d) => d.compare_deadline(cfg.compare_timeout, cfg.reorder_grace),
        }
    }
    fn flush(&mut self, out: &mut Out<'_, F>, now: Timestamp, resync: bool, timeout: core::time::Duration) {
        match self {
            Conn::Tcp(c) => {
                c.flush(out, resync);
                if c.is_closed() && c.closed_at.is_none() {
                    c.closed_at = Some(now);
                }
            }
            Conn::Datagram(d) => d.flush(out, timeout, resync),
        }
    }
}

/// The deadline of a timer entry outstanding for a flow, or none: 8 bytes where
/// `Option<Timestamp>` takes 16 (the flow entry's hot lines have room for nothing more, see
/// [`Slot`]). `u64::MAX` nanoseconds is none; a deadline is armed at most one nanosecond
/// before it (584 years after the clock's start), so none is never a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Armed(u64);

impl Armed {
    const NONE: Armed = Armed(u64::MAX);

    /// The latest deadline that can be armed.
    const LAST: Timestamp = Timestamp(u64::MAX - 1);

    /// Armed at `at`, which must be at most [`Armed::LAST`].
    fn at(at: Timestamp) -> Armed {
        debug_assert!(at <= Armed::LAST);
        Armed(at.0)
    }

    fn get(self) -> Option<Timestamp> {
        (self != Armed::NONE).then_some(Timestamp(self.0))
    }
}

/// A flow's state. Field order matters (see [`Slot`]): hot fields first, the hash last.
#[repr(C)]
struct Flow<F> {
    /// The flow's key and kind, in the form a lookup compares ([`Flow::key`] unpacks it).
    packed: PackedKey,
    /// Earliest compare-timer entry outstanding for this flow (lazy invalidation).
    compare_at: Armed,
    /// Earliest lifetime-timer (idle/linger) entry outstanding.
    lifetime_at: Armed,
    last_activity: Timestamp,
    conn: Conn<F>,
    /// The index's hash of `packed`.
    hash: u64,
}

impl<F: Frame> Flow<F> {
    /// The flow's key.
    fn key(&self) -> FlowKey {
        self.packed.key()
    }

    /// Reads what handling a frame of `side` reads first (fields on the entry's cache lines
    /// and the comparison state they point to), and returns the other guest's oldest held
    /// bytes (what a frame in step is compared with), for the caller to read once the whole
    /// burst's entries are asked for (see [`Shard::locate_burst`]).
    fn warm(&self, side: Side) -> &[u8] {
        std::hint::black_box((self.compare_at, self.last_activity));
        match &self.conn {
            Conn::Tcp(c) => c.warm(side),
            Conn::Datagram(d) => d.warm(side),
        }
    }

    /// The other guest's oldest held frame, the one [`Flow::warm`] reads.
    fn held_front(&self, side: Side) -> Option<&F> {
        match &self.conn {
            Conn::Tcp(c) => c.held_front(side),
            Conn::Datagram(d) => d.held_front(side),
        }
    }

    /// How long this flow may stay idle (empty) before it goes: TCP connections outlive
    /// keepalive periods; datagram flows keep no state worth that (positions restart).
    fn idle_timeout(&self, cfg: &Config) -> core::time::Duration {
        match &self.conn {
            Conn::Tcp(c) if c.unanswered() => cfg.linger.min(cfg.conn_idle_timeout),
            Conn::Tcp(_) => cfg.conn_idle_timeout,
            Conn::Datagram(_) => cfg.datagram_idle_timeout.min(cfg.conn_idle_timeout),
        }
    }

    fn lifetime_deadline(&self, cfg: &Config) -> Timestamp {
        let d = self.last_activity.saturating_add(self.idle_timeout(cfg));
        match self.conn.closed_at() {
            Some(closed) => d.min(closed.saturating_add(cfg.linger)),
            None => d,
        }
    }

    fn removable(&self, cfg: &Config, now: Timestamp) -> bool {
        self.conn.is_empty()
            && (self.conn.closed_at().is_some_and(|c| c.saturating_add(cfg.linger) <= now)
                || self.last_activity.saturating_add(self.idle_timeout(cfg)) <= now)
    }
}

/// A flow-table entry. Cache-line aligned: 320 bytes, five whole lines, so an entry never
/// shares a line with its neighbours and its fields sit at the same place in their lines in
/// every entry (the 368-byte entry before, starting anywhere in a line, cost a million-flow
/// pair a sixth more in bursts, the steady bench).
///
/// Its fields are laid out in order (`repr(C)` here, in [`Flow`], `DatagramFlow`, `Fifo` and
/// `Item`) so that a datagram flow in agreement is handled within the first four lines: line 0
/// the generation, the guests seen and the key the lookup compares, line 1 the deadlines,
/// activity, positions and flags, lines 1 to 3 the oldest held datagram of each guest (64
/// bytes each; "none" is an item's second byte). The queues' overflow, the absorb list and
/// the hash come last. CPUs fetch lines from memory in pairs, so the common path costs two
/// such fetches a flow, not three: a third off a million-flow pair in bursts in all. What made
/// the room: deadlines kept in 8 bytes ([`Armed`]), the guests seen beside the generation, a
/// held datagram's arrival time kept once (in its piece), the queues' overflow boxed.
#[repr(C, align(64))]
struct Slot<F> {
    generation: u32,
    /// Which guests have sent a frame of the slot's flow (bit 0 primary, bit 1 secondary).
    /// Here rather than in the flow: the key's alignment leaves room beside the generation.
    seen: u8,
    /// The flow is counted among the shard's young one-sided flows (see
    /// [`Shard::one_sided`]).
    young: bool,
    flow: Option<Flow<F>>,
}

/// A frame of `side` arrived for the flow of the slot whose `seen` and `young` these are: once
/// both guests showed the flow it is no longer one of the shard's young one-sided flows
/// (`one_sided` counts those).
#[inline]
fn saw(seen: &mut u8, young: &mut bool, side: Side, one_sided: &mut usize) {
    *seen |= match side {
        Side::Primary => 1,
        Side::Secondary => 2,
    };
    if *young && *seen == 3 {
        *young = false;
        *one_sided = one_sided.saturating_sub(1);
    }
}

/// One core's comparator. See the module doc for the calling convention.
///
/// Cache-line aligned: where a shard began inside its line decided which of its fields shared
/// lines, and that moved the 1460 B TCP pair by up to a sixth between builds that differed
/// elsewhere (the steady bench, 2026-12-04); aligned, its layout is the same wherever it lives.
#[repr(align(64))]
pub struct Shard<F> {
    cfg: Config,
    index: FlowIndex,
    slots: Vec<Slot<F>>,
    free: Vec<u32>,
    timers: DeadlineQueue,
    actions: VecDeque<Action<F>>,
    counters: Counters,
    /// Primary frames of flows that found the table full: held in arrival order until the
    /// next flush (SPEC §6: never a silent drop), bounded by `max_queue_size`.
    unflowed: VecDeque<(F, Timestamp, u32)>,
    /// Shard-wide reasons requested this epoch.
    requested: u16,
    /// Partial datagrams of both sides (SPEC §4).
    reasm: Reassembly<F>,
    /// Reusable fragment lists.
    pool: Vec<Vec<Piece<F>>>,
    failed_over: Option<Side>,
    /// Proxy mode: secondary source ports paired with the primary's (guest-opened TCP).
    pairs: crate::pairing::PortPairs<F>,
    /// See [`Shard::offsets_epoch`].
    offsets_epoch: u64,
    /// The eviction clock hand (next slot to look at) and when its current sweep began.
    hand: usize,
    sweep_started: Timestamp,
    /// Flows not active since this instant (the previous sweep's start) are idle.
    idle_before: Timestamp,
    /// Slots looked at since the hand last found a victim.
    fruitless: usize,
    /// Set when an eviction scan found nothing: further inserts fail fast instead of
    /// rescanning a full table per packet, until something can have changed (a timer run,
    /// a flush, a removal).
    evict_blocked: bool,
    /// Flow creation's token bucket (SPEC §11).
    budget: NewFlowBudget,
    /// Flows created less than `compare_timeout` ago that only one guest has shown yet. A
    /// flood the other guest does not answer (its flows hold frames until they time out)
    /// would otherwise fill the memory budget and starve established flows; past
    /// [`Shard::one_sided_cap`] new flows are refused until these age or are answered.
    one_sided: usize,
    /// The young one-sided flows in creation order: (slot, generation, created).
    one_sided_fifo: VecDeque<(u32, u32, Timestamp)>,
}

/// Why no flow could be found or made for a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoFlow {
    /// The table is full and nothing is evictable, or frames wait in `unflowed`.
    TableFull,
    /// Past the new-flow budget.
    Budget,
}

/// How long a refused flow stays refused for its other frames (the other guest's copy of the
/// same frame comes within milliseconds; a client's SYN retransmission after a second finds
/// it admitted again if the budget allows).
const REFUSAL_MEMORY: core::time::Duration = core::time::Duration::from_millis(100);

/// Remembered refusals (a table of key hashes: bounded, allocation-free after its first use).
const REFUSALS: usize = 4096;

/// Entries a refusal may use: its own and the next ones.
const REFUSAL_WAYS: usize = 4;

/// The shard's new-flow budget (SPEC §11): a token bucket on flow creation. A flow costs
/// `1 s / new_flows_per_sec` of credit; credit accrues with time up to `new_flow_burst` flows.
/// Creating a flow costs several times a matched pair (table insert, eviction, timers), so a
/// flood of new flows is held to a share of the shard's time, and established flows keep the
/// rest. A frame of a refused flow is dropped and counted (`new-flow-budget`), and the other
/// guest's frames of that flow are refused for [`REFUSAL_MEMORY`] even if credit came back,
/// so both guests' frames of a flow share one fate.
struct NewFlowBudget {
    /// Credit in nanoseconds.
    credit: u64,
    /// When credit was last added.
    last: Timestamp,
    /// Recently refused flows: (key hash, when).
    refused: Box<[(u64, Timestamp)]>,
}

impl NewFlowBudget {
    fn new(cfg: &Config) -> Self {
        let mut b = NewFlowBudget { credit: 0, last: Timestamp(0), refused: Box::new([]) };
        b.credit = b.cost(cfg).saturating_mul(u64::from(cfg.new_flow_burst));
        b
    }

    fn cost(&self, cfg: &Config) -> u64 {
        1_000_000_000 / u64::from(cfg.new_flows_per_sec.max(1))
    }

    /// Gives back the credit of a flow admitted but not made (the table was full).
    fn refund(&mut self, cfg: &Config) {
        if cfg.new_flows_per_sec != 0 {
            let cap = self.cost(cfg).saturating_mul(u64::from(cfg.new_flow_burst.max(1)));
            self.credit = self.credit.saturating_add(self.cost(cfg)).min(cap);
        }
    }

    /// Whether the flow with key hash `hash` may be created at `now` (and pays for it);
    /// `room` says whether the shard has room for another young one-sided flow.
    fn admit(&mut self, hash: impl FnOnce() -> u64, now: Timestamp, cfg: &Config, room: bool) -> bool {
        let limited = cfg.new_flows_per_sec != 0;
        let cost = self.cost(cfg);
        if limited {
            let cap = cost.saturating_mul(u64::from(cfg.new_flow_burst.max(1)));
            let earned = u64::try_from(now.saturating_since(self.last).as_nanos()).unwrap_or(u64::MAX);
            self.credit = self.credit.saturating_add(earned).min(cap);
            self.last = self.last.max(now);
        }
        let paid = !limited || self.credit >= cost;
        if self.refused.is_empty() {
            // Nothing refused yet (the usual case): no refusal to look up, no key to hash.
            if room && paid {
                if limited {
                    self.credit -= cost;
                }
                return true;
            }
            self.refused = vec![(0, Timestamp(0)); REFUSALS + REFUSAL_WAYS].into_boxed_slice();
        }
        // A refusal is looked for, and stored, among REFUSAL_WAYS neighbouring entries, so
        // two flows refused together rarely push each other out.
        let hash = hash();
        let at = hash as usize % REFUSALS;
        let live = |(h, t): &(u64, Timestamp)| *h == hash && now.saturating_since(*t) < REFUSAL_MEMORY;
        let ways = self.refused.get_mut(at..at + REFUSAL_WAYS).unwrap_or_default();
        let recently = ways.iter().any(live);
        if !recently && room && paid {
            if limited {
                self.credit -= cost;
            }
            return true;
        }
        // Only a fresh refusal starts the memory: renewing it on every refused frame would keep
        // a steady flow (a media stream, a connection picked up mid-stream) refused for good.
        // It takes the oldest of its entries.
        if !recently {
            // A free entry (never used, or its refusal is old) first, else the oldest.
            let free = |(h, t): &(u64, Timestamp)| *h == 0 || now.saturating_since(*t) >= REFUSAL_MEMORY;
            let pick = match ways.iter().position(free) {
                Some(i) => Some(i),
                None => ways.iter().enumerate().min_by_key(|(_, (_, t))| *t).map(|(i, _)| i),
            };
            if let Some(e) = pick.and_then(|i| ways.get_mut(i)) {
                *e = (hash, now);
            }
        }
        false
    }
}

impl<F: Frame> Shard<F> {
    /// A shard with an empty flow table.
    pub fn new(config: Config) -> Self {
        // The whole table is reserved at once: growing it later would move every entry (a
        // copy of tens of megabytes on the lcore, and on hugepages there is no other way to
        // grow). On normal pages the untouched part costs address space only; on hugepages the
        // kernel reserves it all (24 MB at the default 65,536 flows). A capacity the allocator
        // refuses leaves the table to grow as it fills.
        let mut slots = Vec::new();
        let _ = slots.try_reserve_exact(config.max_flows);
        Shard {
            index: FlowIndex::with_capacity(config.max_flows.min(1 << 10)),
            slots,
            free: Vec::new(),
            timers: DeadlineQueue::default(),
            actions: VecDeque::with_capacity(64),
            counters: Counters::default(),
            unflowed: VecDeque::new(),
            requested: 0,
            reasm: Reassembly::new(),
            pool: Vec::new(),
            failed_over: None,
            pairs: crate::pairing::PortPairs::default(),
            offsets_epoch: 0,
            hand: 0,
            sweep_started: Timestamp(0),
            idle_before: Timestamp(0),
            fruitless: 0,
            evict_blocked: false,
            budget: NewFlowBudget::new(&config),
            one_sided: 0,
            one_sided_fifo: VecDeque::new(),
            cfg: config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Changes whenever a connection's proxy offsets may have become known (a secondary SYN,
    /// a flush, a failover): proxy mode retries waiting client copies only then.
    pub fn offsets_epoch(&self) -> u64 {
        self.offsets_epoch
    }

    /// The side whose frames are forwarded since a failover, if one happened.
    pub fn failed_over(&self) -> Option<Side> {
        self.failed_over
    }

    /// Changes `compare_timeout` (and `linger`, kept at twice it, and the reassembly timeout
    /// when it follows it) for what is held from now on; deadlines already set keep their time
    /// (the admin socket's `set`, SPEC §7).
    pub fn set_compare_timeout(&mut self, timeout: core::time::Duration) {
        // The reassembly timeout follows compare_timeout unless it was set apart.
        if self.cfg.reassembly_timeout == self.cfg.compare_timeout {
            self.cfg.reassembly_timeout = timeout;
        }
        self.cfg.compare_timeout = timeout;
        self.cfg.linger = timeout.saturating_mul(2);
    }

    /// Changes `max_queue_size`.
    pub fn set_max_queue_size(&mut self, n: usize) {
        self.cfg.max_queue_size = n.max(1);
    }

    /// Up to `limit` flows with the most held frames first (the admin socket's `flows`).
    /// Allocates: for the control path only, never per packet.
    pub fn flows_by_held(&self, limit: usize) -> Vec<(FlowKey, FlowStatus)> {
        // A bounded min-heap of the `limit` fullest flows: O(flows · log limit) time and
        // O(limit) memory, so a large table does not stall the shard's lcore for long.
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if limit == 0 {
            return Vec::new();
        }
        let mut top: BinaryHeap<Reverse<(usize, u32)>> = BinaryHeap::with_capacity(limit + 1);
        for slot in self.index.slots() {
            let Some(st) = self.status_of(slot) else { continue };
            let held = st.held_primary + st.held_secondary;
            if top.len() < limit {
                top.push(Reverse((held, slot)));
            } else if top.peek().is_some_and(|Reverse((least, _))| held > *least) {
                top.pop();
                top.push(Reverse((held, slot)));
            }
        }
        let mut out: Vec<(FlowKey, FlowStatus)> = top
            .into_iter()
            .filter_map(|Reverse((_, slot))| {
                let key = self.slots.get(slot as usize)?.flow.as_ref()?.key();
                self.status_of(slot).map(|st| (key, st))
            })
            .collect();
        out.sort_by_key(|(_, st)| Reverse(st.held_primary + st.held_secondary));
        out
    }

    /// Counters and gauges (SPEC §10).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Flows in the table.
    pub fn flow_count(&self) -> usize {
        self.index.len()
    }

    /// Entries in the deadline queue (for memory-bound checks).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// The next action, in the order they arose. Drain after every call.
    pub fn poll_action(&mut self) -> Option<Action<F>> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` should next be called. May be early (a stale entry), never late.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.timers.peek()
    }

    /// Takes one frame from `side` at `now`.
    pub fn handle(&mut self, side: Side, frame: F, now: Timestamp) {
        let class = wire::parse(frame.bytes());
        self.handle_parsed(side, frame, class, now);
    }

    /// [`Shard::handle`] for a frame whose parse travelled with it: `class` must be
    /// [`wire::parse`] of these very bytes (the runtime's dispatcher parses each frame once to
    /// pick its shard and hands the result over, SPEC §8).
    pub fn handle_parsed(&mut self, side: Side, frame: F, class: Class, now: Timestamp) {
        self.handle_located(side, frame, &class, FlowHint::NONE, now);
    }

    /// Handles a receive burst of `side`'s frames, `classes[i]` parsed from the i-th frame
    /// ([`wire::parse_into`]), the way a DPDK lcore hands them over: the flows of every 32
    /// frames are located together first (their memory reads overlap instead of each waiting
    /// for the one before, and what handling reads first is read ahead), then each frame is
    /// handled and `sink` gets its actions before the next one is handled, so released frames
    /// leave in order and held frames never wait behind the burst. While a frame is handled,
    /// the compared bytes of the frame three places behind it are on their way
    /// into the cache. Acts exactly as [`Shard::handle`] frame by frame would. Takes every
    /// frame out of `frames`; those past `classes` are parsed and handled one by one.
    pub fn handle_burst(
        &mut self,
        side: Side,
        frames: &mut Vec<F>,
        classes: &[Class],
        now: Timestamp,
        mut sink: impl FnMut(Action<F>),
    ) {
        let mut frames = frames.drain(..);
        for classes in classes.chunks(LOCATE_CHUNK) {
            let mut hints = [FlowHint::NONE; LOCATE_CHUNK];
            let mut held = [(std::ptr::null(), 0); LOCATE_CHUNK];
            let long = self.locate_burst(side, classes, &mut hints, &mut held);
            // Frame `j` of the chunk, `pending[k]` (the frames not handled yet start with the
            // one about to be handled).
            let prefetch = |j: usize, k: usize, pending: &[F]| {
                if long >> j & 1 != 0 {
                    if let (Some(frame), Some(class)) = (pending.get(k), classes.get(j)) {
                        prefetch_compared(class, frame);
                    }
                    if let Some(&(at, len)) = held.get(j) {
                        cache_prefetch::range(at, len);
                    }
                }
            };
            for j in 0..PREFETCH_AHEAD {
                prefetch(j, j, frames.as_slice());
            }
            for (i, (class, &hint)) in classes.iter().zip(&hints).enumerate() {
                prefetch(i + PREFETCH_AHEAD, PREFETCH_AHEAD, frames.as_slice());
                let Some(frame) = frames.next() else { return };
                self.handle_located(side, frame, class, hint, now);
                while let Some(action) = self.poll_action() {
                    sink(action);
                }
            }
        }
        for frame in frames {
            self.handle(side, frame, now);
            while let Some(action) = self.poll_action() {
                sink(action);
            }
        }
    }

    /// Looks up, without changing anything, the flows of (at most [`LOCATE_CHUNK`] of) a
    /// receive burst's frames into `hints`, and reads into the cache what handling each frame
    /// of `side` will read first: its flow entry, and the other guest's oldest held frame (the
    /// one a frame in step is compared with). Frames then handled with their hints
    /// ([`Shard::handle_located`]) find that memory in the cache, and the burst's lookups
    /// overlapped their memory reads, where frame by frame each lookup waits for the one
    /// before: the batched lookup of DPDK's l3fwd, for a table too big for the cache.
    ///
    /// Each step is taken for the whole burst before the next (hashes, the buckets the probes
    /// start at, index probes and entries, held frames' headers ([`Frame::prefetch`]) and
    /// buffers, their bytes), so each step's
    /// cache misses are outstanding together instead of one after the other. (Reading each
    /// probe's likely entry as a step of its own, before the probes compare keys, was tried:
    /// a few percent faster at a million flows, slower at 10,000, both within the noise.)
    /// Held bytes longer than [`SHORT_BYTES`] are not read here but left in `held` for
    /// [`Shard::handle_burst`] to prefetch a few frames ahead. Returns a mask of the frames
    /// with such bytes on either side (bit `i` for frame `i`).
    fn locate_burst(
        &self,
        side: Side,
        classes: &[Class],
        hints: &mut [FlowHint; LOCATE_CHUNK],
        held: &mut [(*const u8, usize); LOCATE_CHUNK],
    ) -> u64 {
        if self.failed_over.is_some() {
            // Frames are forwarded uncompared: no flow to find.
            return 0;
        }
        let mut keys = [None; LOCATE_CHUNK];
        let mut hashes = [0u64; LOCATE_CHUNK];
        let mut long = 0u64;
        for (i, ((packed, hash), class)) in keys.iter_mut().zip(hashes.iter_mut()).zip(classes).enumerate() {
            if let Some((key, kind)) = flow_of(class) {
                let key = PackedKey::new(key, kind as u8);
                *hash = self.index.hash(&key);
                *packed = Some(key);
            }
            long |= u64::from(compared_span(class).is_some_and(|(_, len)| len > SHORT_BYTES)) << i;
        }
        for (packed, &hash) in keys.iter().zip(&hashes) {
            if packed.is_some() {
                self.index.read_ahead(hash);
            }
        }
        let mut flows: [Option<&Flow<F>>; LOCATE_CHUNK] = [None; LOCATE_CHUNK];
        for (((hint, packed), &hash), flow) in hints.iter_mut().zip(&keys).zip(&hashes).zip(&mut flows) {
            let found = packed.as_ref().and_then(|key| self.find(hash, key));
            let slot = found.and_then(|s| Some((s, self.slots.get(s as usize)?)));
            if let Some((s, slot)) = slot {
                *hint = FlowHint { slot: s, generation: slot.generation };
                *flow = slot.flow.as_ref();
            }
        }
        // A held frame behind a handle (an mbuf) finds its bytes through the handle's header:
        // ask for every header before any is read, so those reads overlap too.
        for flow in flows.iter().flatten() {
            if let Some(frame) = flow.held_front(side) {
                frame.prefetch();
            }
        }
        let mut near: [&[u8]; LOCATE_CHUNK] = [&[]; LOCATE_CHUNK];
        for (i, ((bytes, flow), far)) in near.iter_mut().zip(&flows).zip(held.iter_mut()).enumerate() {
            if let Some(f) = flow {
                let other = f.warm(side);
                if other.len() > SHORT_BYTES as usize {
                    *far = (other.as_ptr(), other.len().min(WARM_BYTES));
                    long |= 1 << i;
                } else {
                    *bytes = other;
                }
            }
        }
        for bytes in near {
            touch_lines(bytes);
        }
        long
    }

    /// [`Shard::handle_parsed`] with the frame's flow located beforehand
    /// ([`Shard::locate_burst`]).
    ///
    /// The class is borrowed: it stays where the burst was parsed into, and only the fields
    /// handling reads are loaded (a copy of the whole class, just written, made the loads
    /// wait for the stores).
    fn handle_located(&mut self, side: Side, frame: F, class: &Class, hint: FlowHint, now: Timestamp) {
        debug_assert!(*class == wire::parse(frame.bytes()), "a class parsed from other bytes");
        match side {
            Side::Primary => self.counters.primary_in += 1,
            Side::Secondary => self.counters.secondary_in += 1,
        }
        if let Some(forwarded) = self.failed_over {
            return self.forward(side, forwarded, frame, now);
        }
        let compare_non_ip = self.cfg.non_ip_policy == NonIpPolicy::Compare;
        match class {
            Class::Tcp(key, seg) => self.handle_tcp(side, frame, key, seg, hint, now),
            Class::Datagram(key, span) => self.handle_datagram(side, frame, key, Kind::Datagram, *span, hint, now),
            Class::OtherIp(key, span) => self.handle_datagram(side, frame, key, Kind::OtherIp, *span, hint, now),
            Class::Fragment(key, frag) => self.handle_fragment(side, frame, *key, *frag, now),
            Class::Malformed(reason) => {
                self.counters.malformed[*reason as usize] += 1;
                if compare_non_ip {
                    self.handle_non_ip(side, frame, now);
                } else {
                    passthrough(&mut out!(self, now), side, frame, DropReason::Malformed);
                }
            }
            Class::NonIp(_) if compare_non_ip => self.handle_non_ip(side, frame, now),
            Class::NonIp(_) => passthrough(&mut out!(self, now), side, frame, DropReason::NonIp),
        }
    }

    /// SPEC §6 failover: the chosen side is forwarded uncompared, the other dropped.
    fn forward(&mut self, side: Side, forwarded: Side, mut frame: F, now: Timestamp) {
        if side != forwarded {
            let mut out = out!(self, now);
            return out.drop_new(side, frame, DropReason::FailedOver);
        }
        if side == Side::Primary {
            let mut out = out!(self, now);
            return out.release_now(frame, Via::Passthrough);
        }
        // Proxy mode keeps the connections the client knows alive: the secondary's segments
        // go out in the primary's sequence space and on its clock.
        if self.cfg.mode == crate::Mode::Proxy && !self.forward_secondary(&mut frame, now) {
            let mut out = out!(self, now);
            return out.drop_new(side, frame, DropReason::FailedOver);
        }
        self.counters.secondary_forwarded += 1;
        crate::out::emit(&mut self.actions, Action::Release { frame, via: Via::Passthrough });
    }

    fn handle_non_ip(&mut self, side: Side, frame: F, now: Timestamp) {
        self.counters.non_ip_compared += 1;
        let len = frame.bytes().len() as u32;
        // SPEC §4: whole-frame match (every byte, padding included).
        let span = Span { offset: 0, len };
        self.handle_datagram(side, frame, &NON_IP_KEY, Kind::NonIp, span, FlowHint::NONE, now);
    }

    /// Looks up or creates the flow; `None` when the table is full (or must not grow now).
    /// `hint` is where [`Shard::locate_burst`] found it, if it did.
    #[inline(always)]
    fn flow_slot(&mut self, key: &FlowKey, kind: Kind, hint: FlowHint, now: Timestamp) -> Result<u32, NoFlow> {
        if let Some(s) = self.slots.get(hint.slot as usize).filter(|s| s.generation == hint.generation) {
            let flow = s.flow.as_ref();
            debug_assert!(flow.is_none_or(|f| f.packed == PackedKey::new(key, kind as u8)), "a hint for another flow");
            if flow.is_some() {
                return Ok(hint.slot);
            }
        }
        self.find_or_make(PackedKey::new(key, kind as u8), kind, now)
    }

    /// [`Shard::flow_slot`] without a usable hint: look the flow up, or make it.
    #[inline(never)]
    fn find_or_make(&mut self, key: PackedKey, kind: Kind, now: Timestamp) -> Result<u32, NoFlow> {
        let hash = self.index.hash(&key);
        if let Some(slot) = self.find(hash, &key) {
            return Ok(slot);
        }
        if !self.unflowed.is_empty() {
            // While frames wait in `unflowed`, new flows join them so none overtakes them.
            return Err(NoFlow::TableFull);
        }
        if !self.admit(hash, now) {
            return Err(NoFlow::Budget);
        }
        let slot = self.insert(key, kind, hash, now);
        if slot.is_none() {
            // No flow was made: the credit it took goes back.
            self.budget.refund(&self.cfg);
        }
        slot.ok_or(NoFlow::TableFull)
    }

    /// The slot of the flow with this key and kind, if there is one.
    fn lookup(&self, key: &FlowKey, kind: Kind) -> Option<u32> {
        let key = PackedKey::new(key, kind as u8);
        self.find(self.index.hash(&key), &key)
    }

    /// [`Shard::lookup`] with the key packed and its hash known.
    fn find(&self, hash: u64, key: &PackedKey) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(hash, |s| slots.get(s as usize).and_then(|s| s.flow.as_ref()).is_some_and(|f| f.packed == *key))
    }

    /// Whether a new flow may be made now (SPEC §11): room among the young one-sided flows
    /// (aged ones leave the count first) and credit in the token bucket.
    fn admit(&mut self, hash: u64, now: Timestamp) -> bool {
        while let Some(&(slot, generation, created)) = self.one_sided_fifo.front() {
            if created.saturating_add(self.cfg.compare_timeout) > now {
                break;
            }
            self.one_sided_fifo.pop_front();
            let live = self.slots.get_mut(slot as usize).filter(|s| s.generation == generation);
            if let Some(s) = live.filter(|s| s.flow.is_some() && s.young) {
                s.young = false;
                self.one_sided = self.one_sided.saturating_sub(1);
            }
        }
        let room = self.one_sided < self.one_sided_cap();
        self.budget.admit(|| hash, now, &self.cfg, room)
    }

    /// Young one-sided flows a shard keeps at most: an eighth of the memory budget, so what
    /// they hold (usually one frame each) leaves the rest to established flows.
    fn one_sided_cap(&self) -> usize {
        (self.cfg.held_frames_budget / 8).max(64)
    }

    /// Frames of a flow the new-flow budget refused (SPEC §11): dropped and counted, never
    /// parked (parking would make every later new flow queue behind them).
    fn refuse_new_flow(&mut self, side: Side, frames: SegFrames<F>, now: Timestamp) {
        let mut out = out!(self, now);
        frames.refuse(&mut out, side, DropReason::NewFlowBudget);
    }

    /// SPEC §6: the table (or reassembly) is full. Request `resource-pressure`; park primary
    /// frames (already counted as held or not, per `held`) in arrival order until the flush,
    /// bounded by `max_queue_size`; drop the secondary's.
    fn overflow(&mut self, side: Side, frame: F, held: bool, reason: DropReason, key: &FlowKey, now: Timestamp) {
        let mut out = out!(self, now);
        let flows = self.index.len();
        let partials = self.reasm.len();
        out.request(&mut self.requested, CheckpointReason::ResourcePressure, key, || match reason {
            DropReason::ReassemblyFull => format!("reassembly table full ({partials} partial datagrams)"),
            _ => format!("flow table full ({flows} flows)"),
        });
        let len = frame.bytes().len() as u32;
        // A frame already counted as held is part of the budget already.
        let room = !out.over_budget(&self.cfg, u64::from(!held), if held { 0 } else { u64::from(len) });
        match side {
            Side::Primary if room => {
                if !held {
                    out.hold(Side::Primary, len);
                }
                self.unflowed.push_back((frame, now, len));
            }
            Side::Primary if held => out.drop_held_primary(frame, len, reason),
            Side::Secondary if held => out.release_secondary_held(frame, len, reason),
            _ => out.drop_new(side, frame, reason),
        }
    }

    fn handle_tcp(&mut self, side: Side, frame: F, key: &FlowKey, seg: &TcpSegment, hint: FlowHint, now: Timestamp) {
        // Borrowed from the burst's parse, not copied: a key moved to its paired connection
        // lives in `moved`.
        let (mut frame, mut key, mut hint) = (frame, key, hint);
        let moved: FlowKey;
        let mut paired = None;
        if self.cfg.mode == crate::Mode::Proxy {
            let guest_syn = seg.syn && !seg.ack_flag;
            match side {
                Side::Secondary => match self.pair_secondary(frame, *key, seg, now) {
                    Some((f, k)) => {
                        if k != *key {
                            // Moved to its paired connection: the hint was for the old key.
                            hint = FlowHint::NONE;
                        }
                        (frame, moved) = (f, k);
                        key = &moved;
                    }
                    None => return,
                },
                Side::Primary
                    if guest_syn
                        && self
                            .tcp_conn(key)
                            .is_none_or(|c| !c.has_primary_syn() || c.is_new_incarnation(Side::Primary, seg)) =>
                {
                    paired = self.pairs.primary_syn(key, now, self.cfg.compare_timeout);
                }
                Side::Primary => {}
            }
        }
        self.handle_tcp_conn(side, SegFrames::One(frame), key, seg, hint, now);
        if let Some(parked) = paired {
            self.unpark(parked, key.src_port, now);
        }
    }

    /// The connection state of a TCP key, if present.
    fn tcp_conn(&self, key: &FlowKey) -> Option<&TcpConn<F>> {
        let slot = self.lookup(key, Kind::Tcp)?;
        match &self.slots.get(slot as usize)?.flow.as_ref()?.conn {
            Conn::Tcp(c) => Some(c),
            Conn::Datagram(_) => None,
        }
    }

    fn tcp_conn_mut(&mut self, key: &FlowKey) -> Option<&mut TcpConn<F>> {
        let slot = self.lookup(key, Kind::Tcp)?;
        match &mut self.slots.get_mut(slot as usize)?.flow.as_mut()?.conn {
            Conn::Tcp(c) => Some(c),
            Conn::Datagram(_) => None,
        }
    }

    /// Proxy mode's port pairing for a secondary segment (see [`crate::pairing`]): moves it
    /// onto the primary's port where its connection has an alias, pairs a guest-opened SYN
    /// with a waiting primary SYN, or parks it until the primary's SYN comes (`None`).
    fn pair_secondary(
        &mut self,
        mut frame: F,
        mut key: FlowKey,
        seg: &TcpSegment,
        now: Timestamp,
    ) -> Option<(F, FlowKey)> {
        while let Some(old) = self.pairs.expired(now, self.cfg.compare_timeout) {
            let mut out = out!(self, now);
            out.release_secondary_held(old.frame, old.len, DropReason::Consumed);
        }
        let aliased = self.pairs.primary_port(&key);
        let port = if !seg.syn || seg.ack_flag {
            // Not a guest-opened SYN: follow the alias, if any.
            match aliased {
                Some(port) => port,
                None => return Some((frame, key)),
            }
        } else if self.tcp_conn(&key).is_some_and(|c| c.awaits_secondary_syn() || c.is_secondary_syn(seg.seq)) {
            // The primary's SYN on the same port waits for this one (or this repeats it).
            self.pairs.same_port(&key);
            return Some((frame, key));
        } else if let Some(port) = aliased.filter(|&p| {
            self.tcp_conn(&FlowKey { src_port: p, ..key })
                .is_some_and(|c| c.is_secondary_syn(seg.seq) || c.awaits_secondary_syn())
        }) {
            // A retransmission of an already paired SYN.
            port
        } else {
            // A new connection of the secondary: any alias of its port belongs to an old one.
            self.pairs.unalias(&key);
            match self.pairs.secondary_syn(&key) {
                Some(port) => {
                    let own = key.src_port;
                    if let Some(conn) = self.tcp_conn_mut(&FlowKey { src_port: port, ..key }) {
                        conn.secondary_port = (port != own).then_some(own);
                    }
                    if port == own {
                        return Some((frame, key));
                    }
                    port
                }
                None => {
                    let len = frame.bytes().len() as u32;
                    let mut out = out!(self, now);
                    out.hold(Side::Secondary, len);
                    let parked = crate::pairing::Parked { key, seg: *seg, frame, arrived: now, len };
                    if let Some(old) = self.pairs.park(parked) {
                        out.release_secondary_held(old.frame, old.len, DropReason::Consumed);
                    }
                    return None;
                }
            }
        };
        // The header was parsed from these very bytes, so the port is where `seg` says.
        let moved = crate::proxy::set_port(frame.bytes_mut(), seg, true, port);
        debug_assert!(moved, "a parsed TCP header must be writable");
        key.src_port = port;
        Some((frame, key))
    }

    /// A parked secondary SYN met its primary SYN (whose connection uses `primary_port`):
    /// compare it there.
    fn unpark(&mut self, parked: crate::pairing::Parked<F>, primary_port: u16, now: Timestamp) {
        let crate::pairing::Parked { key, seg, mut frame, len, .. } = parked;
        let c = &mut self.counters;
        c.held_secondary_frames = c.held_secondary_frames.saturating_sub(1);
        c.held_secondary_bytes = c.held_secondary_bytes.saturating_sub(u64::from(len));
        if key.src_port != primary_port {
            if let Some(conn) = self.tcp_conn_mut(&FlowKey { src_port: primary_port, ..key }) {
                conn.secondary_port = Some(key.src_port);
            }
            let moved = crate::proxy::set_port(frame.bytes_mut(), &seg, true, primary_port);
            debug_assert!(moved, "a parsed TCP header must be writable");
        }
        self.handle_tcp_conn(
            Side::Secondary,
            SegFrames::One(frame),
            &FlowKey { src_port: primary_port, ..key },
            &seg,
            FlowHint::NONE,
            now,
        );
    }

    fn handle_tcp_conn(
        &mut self,
        side: Side,
        frames: SegFrames<F>,
        key: &FlowKey,
        seg: &TcpSegment,
        hint: FlowHint,
        now: Timestamp,
    ) {
        if seg.syn && side == Side::Secondary {
            self.offsets_epoch += 1;
        }
        let slot = self.flow_slot(key, Kind::Tcp, hint, now);
        let mut out = out!(self, now);
        if slot == Err(NoFlow::Budget) {
            return self.refuse_new_flow(side, frames, now);
        }
        let Some(Slot { seen, young, flow: Some(flow), .. }) = slot.ok().and_then(|s| self.slots.get_mut(s as usize))
        else {
            let (frames, held) = frames.into_frames();
            for frame in frames {
                self.overflow(side, frame, held, DropReason::FlowTableFull, key, now);
            }
            return;
        };
        saw(seen, young, side, &mut self.one_sided);
        flow.last_activity = now;
        let Conn::Tcp(conn) = &mut flow.conn else {
            // The table keys TCP flows apart from datagram flows: unreachable.
            debug_assert!(false, "a TCP key mapped to a datagram flow");
            return frames.refuse(&mut out, side, DropReason::Internal);
        };
        if conn.is_new_incarnation(side, seg) {
            // The old incarnation's port alias (a paired guest-opened connection) goes too.
            self.pairs.forget_alias(key, conn.secondary_port);
            conn.reincarnate(self.cfg.mode);
        }
        match side {
            Side::Primary => conn.on_primary(frames, seg, &mut out, &self.cfg, key),
            Side::Secondary => conn.on_secondary(frames, seg, &mut out, &self.cfg, key),
        }
        if conn.is_closed() && conn.closed_at.is_none() {
            conn.closed_at = Some(now);
        }
        if let Ok(slot) = slot {
            self.reschedule(slot);
        }
    }

    /// One unfragmented datagram (UDP/ICMP, other IP, or a non-IP frame).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn handle_datagram(
        &mut self,
        side: Side,
        frame: F,
        key: &FlowKey,
        kind: Kind,
        span: Span,
        hint: FlowHint,
        now: Timestamp,
    ) {
        if side == Side::Primary && !self.unflowed.is_empty() {
            // A resource-pressure flush is pending: later datagrams queue behind the parked
            // ones so no flow is reordered.
            return self.overflow(side, frame, false, DropReason::FlowTableFull, key, now);
        }
        let len = frame.bytes().len() as u32;
        let proto = if kind == Kind::NonIp { 0 } else { key.proto };
        let slot = match self.flow_slot(key, kind, hint, now) {
            Ok(slot) => slot,
            Err(NoFlow::Budget) => return self.refuse_new_flow(side, SegFrames::One(frame), now),
            Err(NoFlow::TableFull) => return self.overflow(side, frame, false, DropReason::FlowTableFull, key, now),
        };
        out!(self, now).hold(side, len);
        // Built in one piece where it is handed over (built in two, the second copy waited on
        // the first one's stores).
        let piece = Piece { frame, arrived: now, len, data: span, at: 0, seq: 0, dup: false };
        self.feed_item(side, slot, key, Item::new(proto, Pieces::One(piece), span.len), now);
    }

    /// Gives a whole datagram (frames already counted as held) to its flow.
    #[inline(always)]
    fn feed_item(&mut self, side: Side, slot: u32, key: &FlowKey, item: Item<F>, now: Timestamp) {
        let mut out = out!(self, now);
        let d = match self.slots.get_mut(slot as usize) {
            Some(Slot { seen, young, flow: Some(f), .. }) => {
                saw(seen, young, side, &mut self.one_sided);
                f.last_activity = now;
                match &mut f.conn {
                    Conn::Datagram(d) => Some(d),
                    Conn::Tcp(_) => None,
                }
            }
            _ => None,
        };
        let Some(d) = d else {
            // The slot came from `flow_slot` with a datagram kind just now: unreachable.
            debug_assert!(false, "a datagram slot without its datagram flow");
            for (frame, len) in item.into_frames() {
                match side {
                    Side::Primary => out.drop_held_primary(frame, len, DropReason::Internal),
                    Side::Secondary => out.release_secondary_held(frame, len, DropReason::Internal),
                }
            }
            return;
        };
        match side {
            Side::Primary => d.on_primary(item, &mut out, &self.cfg, key),
            Side::Secondary => d.on_secondary(item, &mut out, &self.cfg, key),
        }
        self.reschedule(slot);
    }

    fn handle_fragment(&mut self, side: Side, frame: F, key: FlowKey, frag: wire::Fragment, now: Timestamp) {
        if side == Side::Primary && !self.unflowed.is_empty() {
            return self.overflow(side, frame, false, DropReason::ReassemblyFull, &key, now);
        }
        let mut out = out!(self, now);
        let fed = self.reasm.on_fragment(side, frame, key, frag, &mut out, &self.cfg, &mut self.timers);
        self.counters.reassembly_partials = self.reasm.len() as u64;
        match fed {
            Fed::Done => {}
            Fed::Full(frame) => self.overflow(side, frame, false, DropReason::ReassemblyFull, &key, now),
            Fed::Complete(key, item) if key.proto == wire::proto::TCP => match SegFrames::from_item(item) {
                // SPEC §4: a reassembled TCP segment is a segment of its connection.
                Ok((frames, seg)) => self.handle_tcp_fragments(side, frames, key, seg, now),
                // Its first fragment does not hold the whole TCP header: no stream position
                // can be read, so it compares as an IP datagram (bytes and all).
                Err(item) => self.feed_reassembled(side, key, Kind::OtherIp, item, now),
            },
            Fed::Complete(key, item) => {
                // SPEC §4: a reassembled datagram compares like any datagram of its protocol.
                let kind = match key.proto {
                    wire::proto::UDP | wire::proto::ICMP | wire::proto::ICMPV6 => Kind::Datagram,
                    _ => Kind::OtherIp,
                };
                self.feed_reassembled(side, key, kind, item, now);
            }
        }
    }

    /// Gives a reassembled datagram (its frames held) to its flow, or parks it if the table
    /// is full.
    fn feed_reassembled(&mut self, side: Side, key: FlowKey, kind: Kind, item: Item<F>, now: Timestamp) {
        match self.flow_slot(&key, kind, FlowHint::NONE, now) {
            Ok(slot) => self.feed_item(side, slot, &key, item, now),
            Err(NoFlow::Budget) => {
                let mut out = out!(self, now);
                for (frame, len) in item.into_frames() {
                    match side {
                        Side::Primary => out.drop_held_primary(frame, len, DropReason::NewFlowBudget),
                        Side::Secondary => out.release_secondary_held(frame, len, DropReason::NewFlowBudget),
                    }
                }
            }
            Err(NoFlow::TableFull) => {
                for (frame, _) in item.into_frames() {
                    self.overflow(side, frame, true, DropReason::FlowTableFull, &key, now);
                }
            }
        }
    }

    /// A TCP segment that arrived as IP fragments (SPEC §4): it joins its connection's stream.
    /// Proxy mode moves a secondary segment of a paired guest-opened connection onto the
    /// primary's port, as for unfragmented ones; a fragmented guest SYN (no real stack sends
    /// one: a SYN carries no data) is not paired.
    fn handle_tcp_fragments(
        &mut self,
        side: Side,
        mut frames: SegFrames<F>,
        mut key: FlowKey,
        seg: TcpSegment,
        now: Timestamp,
    ) {
        if self.cfg.mode == crate::Mode::Proxy && side == Side::Secondary {
            if let Some(port) = self.pairs.primary_port(&key) {
                let moved = frames.head_mut().is_some_and(|f| crate::proxy::set_port(f.bytes_mut(), &seg, true, port));
                debug_assert!(moved, "a parsed TCP header must be writable");
                key.src_port = port;
            }
        }
        self.handle_tcp_conn(side, frames, &key, &seg, FlowHint::NONE, now);
    }

    fn insert(&mut self, packed: PackedKey, kind: Kind, hash: u64, now: Timestamp) -> Option<u32> {
        if self.index.len() >= self.cfg.max_flows && (self.evict_blocked || !self.evict_one(now)) {
            // Only a whole fruitless sweep says nothing can go: then inserts fail fast until
            // something changes (a timer run, a flush, a removal).
            if self.fruitless >= self.slots.len() {
                self.evict_blocked = true;
            }
            return None;
        }
        let flow = Flow {
            hash,
            packed,
            conn: Conn::new(kind, &self.cfg),
            last_activity: now,
            compare_at: Armed::NONE,
            lifetime_at: Armed::NONE,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                if let Some(entry) = self.slots.get_mut(s as usize) {
                    (entry.flow, entry.seen, entry.young) = (Some(flow), 0, true);
                }
                s
            }
            None => {
                self.slots.push(Slot { generation: 0, seen: 0, young: true, flow: Some(flow) });
                u32::try_from(self.slots.len() - 1).ok()?
            }
        };
        self.index.insert(hash, slot);
        self.counters.flows += 1;
        self.one_sided += 1;
        let generation = self.slots.get(slot as usize).map_or(0, |s| s.generation);
        self.one_sided_fifo.push_back((slot, generation, now));
        Some(slot)
    }

    /// SPEC §11: evict a closed or idle flow, never one holding frames, in O(1): a clock hand
    /// looks at up to [`EVICT_SCAN`] slots from where it stopped last time and takes the first
    /// empty flow that is closed or was not active since the hand's previous sweep began
    /// (second chance: a flow active since then is passed over), else the least recently
    /// active empty flow it looked at. A flood of new flows thus costs a bounded scan per
    /// flow, not a pass over the table (which made every new flow O(table)).
    fn evict_one(&mut self, now: Timestamp) -> bool {
        let n = self.slots.len();
        let mut victim = None;
        let mut fallback: Option<(Timestamp, u32)> = None;
        for _ in 0..EVICT_SCAN.min(n) {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            if i == 0 {
                // A new sweep: flows not active since the previous one began are idle.
                self.idle_before = self.sweep_started;
                self.sweep_started = now;
            }
            let Some(f) = self.slots.get(i).and_then(|s| s.flow.as_ref()) else { continue };
            if !f.conn.is_empty() || matches!(&f.conn, Conn::Tcp(c) if c.timer_pending()) {
                continue;
            }
            if f.conn.is_closed() || f.last_activity < self.idle_before {
                victim = Some(i as u32);
                break;
            }
            if fallback.is_none_or(|(t, _)| f.last_activity < t) {
                fallback = Some((f.last_activity, i as u32));
            }
        }
        match victim.or(fallback.map(|(_, i)| i)) {
            Some(slot) => {
                self.fruitless = 0;
                self.remove(slot);
                self.counters.flows_evicted += 1;
                true
            }
            None => {
                self.fruitless = self.fruitless.saturating_add(EVICT_SCAN.min(n));
                false
            }
        }
    }

    fn remove(&mut self, slot: u32) {
        self.evict_blocked = false;
        self.fruitless = 0;
        if let Some(s) = self.slots.get_mut(slot as usize) {
            if let Some(f) = s.flow.take() {
                if let Conn::Tcp(c) = &f.conn {
                    self.pairs.forget(&f.key(), c.secondary_port);
                }
                self.index.remove(f.hash, slot);
                if s.young {
                    self.one_sided = self.one_sided.saturating_sub(1);
                }
                (s.seen, s.young) = (0, false);
                s.generation = s.generation.wrapping_add(1);
                self.free.push(slot);
                self.counters.flows = self.counters.flows.saturating_sub(1);
            }
        }
        // A removed flow can leave entries that would sit in the heap until their (long)
        // deadline; with connection churn they would pile up. Drop stale entries once they
        // outnumber live ones, so the heap stays O(flows) (amortised O(1) per removal).
        if self.timers.len() > 8 * (self.index.len() + self.reasm.len()) + 1024 {
            let (slots, reasm) = (&self.slots, &self.reasm);
            self.timers.retain(|at, slot, generation, kind| {
                if kind == TimerKind::Reassembly {
                    return reasm.is_live(at, slot, generation);
                }
                slots.get(slot as usize).is_some_and(|s| {
                    s.generation == generation
                        && s.flow.as_ref().is_some_and(|f| match kind {
                            TimerKind::Compare => f.compare_at.get() == Some(at),
                            TimerKind::Lifetime => f.lifetime_at.get() == Some(at),
                            TimerKind::Reassembly => false,
                        })
                })
            });
        }
    }

    /// Arms the flow's timers where they are earlier than what is already queued; later
    /// deadlines are picked up when the earlier entry fires (keeps the heap O(flows)).
    ///
    /// `floor` (set while running timers) keeps a re-armed entry strictly after the instant
    /// being processed, so `handle_timeout` always terminates.
    fn reschedule(&mut self, slot: u32) {
        self.reschedule_after(slot, None);
    }

    #[inline(always)]
    fn reschedule_after(&mut self, slot: u32, floor: Option<Timestamp>) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let generation = s.generation;
        let Some(flow) = s.flow.as_mut() else { return };
        let clamp = |d: Timestamp| {
            let d = match floor {
                Some(f) if d <= f => Timestamp(f.0.saturating_add(1)),
                _ => d,
            };
            d.min(Armed::LAST)
        };
        if let Some(d) = flow.conn.compare_deadline(&self.cfg) {
            let d = clamp(d);
            if flow.compare_at.get().is_none_or(|t| d < t) {
                flow.compare_at = Armed::at(d);
                self.timers.push(d, slot, generation, TimerKind::Compare);
            }
        }
        // Only empty flows can be removed; a flow holding frames is re-armed when its queues
        // drain (every call that drains them reschedules).
        if !flow.conn.is_empty() {
            return;
        }
        // A datagram flow's lifetime deadline (last activity + a fixed idle timeout) only moves
        // later, and so does a TCP connection's while it is neither closed (linger) nor
        // unanswered (the shorter idle timeout): the entry already queued fires first and
        // re-arms it.
        let only_later = match &flow.conn {
            Conn::Datagram(_) => true,
            Conn::Tcp(c) => c.closed_at.is_none() && !c.unanswered(),
        };
        if only_later && flow.lifetime_at.get().is_some() {
            return;
        }
        let d = clamp(flow.lifetime_deadline(&self.cfg));
        if flow.lifetime_at.get().is_none_or(|t| d < t) {
            flow.lifetime_at = Armed::at(d);
            self.timers.push(d, slot, generation, TimerKind::Lifetime);
        }
    }

    /// Runs every deadline due at `now`: compare timeouts (SPEC §6), reassembly timeouts,
    /// linger and idle removal.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.evict_blocked = false;
        self.fruitless = 0;
        while let Some((at, slot, generation, kind)) = self.timers.pop_due(now) {
            if kind == TimerKind::Reassembly {
                if self.reasm.is_live(at, slot, generation) {
                    let mut out = out!(self, now);
                    self.reasm.expire(slot, &mut out, &mut self.requested);
                    self.counters.reassembly_partials = self.reasm.len() as u64;
                }
                continue;
            }
            let Some(s) = self.slots.get_mut(slot as usize) else {
                continue;
            };
            if s.generation != generation {
                continue;
            }
            let Some(flow) = s.flow.as_mut() else { continue };
            let armed = match kind {
                TimerKind::Compare => &mut flow.compare_at,
                TimerKind::Lifetime | TimerKind::Reassembly => &mut flow.lifetime_at,
            };
            if armed.get() != Some(at) {
                continue;
            }
            *armed = Armed::NONE;
            if kind == TimerKind::Lifetime {
                if flow.removable(&self.cfg, now) {
                    self.remove(slot);
                } else {
                    self.reschedule_after(slot, Some(now));
                }
                continue;
            }
            let mut out = out!(self, now);
            match &mut flow.conn {
                Conn::Tcp(conn) => {
                    conn.release_verified_part(&mut out, self.cfg.compare_timeout);
                    if let Some((reason, detail)) = conn.expired(now, self.cfg.compare_timeout) {
                        conn.timed_out = true;
                        out.request(&mut conn.requested, reason, flow.packed.key(), || detail);
                    }
                }
                Conn::Datagram(d) => {
                    if let Some((reason, detail)) = d.expired(now, self.cfg.compare_timeout, self.cfg.reorder_grace) {
                        d.timed_out = true;
                        d.request(&mut out, reason, &flow.packed.key(), || detail);
                    }
                }
            }
            self.reschedule_after(slot, Some(now));
        }
    }

    /// Checkpoint completion (SPEC §6): release all held primary frames (each flow in its
    /// order), drop all held secondary frames, reset secondary state to the primary's — the
    /// secondary guest is now a copy of the primary, so proxy mode's offsets become 0.
    pub fn checkpoint_done(&mut self, now: Timestamp) {
        self.counters.checkpoints_completed += 1;
        self.flush(now, true);
    }

    /// A completion that replaced no guest state (`--checkpoint-mode standalone`, SPEC §3):
    /// released and dropped as by [`Shard::checkpoint_done`], but proxy mode's offsets stay
    /// (the secondary still has its own sequence space and clock) and secondary data beyond
    /// the primary's stays held to be compared, so comparison goes on correctly after a
    /// divergence.
    pub fn standalone_completion(&mut self, now: Timestamp) {
        self.counters.checkpoints_completed += 1;
        self.flush(now, false);
    }

    /// Shutdown (SPEC §8 SIGINT/SIGTERM): releases and drops exactly as a checkpoint
    /// completion does, but is not counted as a checkpoint.
    pub fn flush_for_shutdown(&mut self, now: Timestamp) {
        self.flush(now, true);
    }

    fn flush(&mut self, now: Timestamp, resync: bool) {
        self.offsets_epoch += 1;
        self.evict_blocked = false;
        self.fruitless = 0;
        let mut out = out!(self, now);
        // Slot order, not hash order: deterministic output for replay and tests. Flows
        // before partial datagrams before parked frames: each flow's own order is kept
        // (a datagram's fragments are either all in a flow or all still partial).
        for s in &mut self.slots {
            if let Some(flow) = &mut s.flow {
                flow.conn.flush(&mut out, now, resync, self.cfg.compare_timeout);
            }
        }
        self.reasm.flush(&mut out, &self.cfg, &mut self.timers);
        // A real checkpoint gives the secondary the primary's ports; either way its parked
        // SYNs are flushed (its kernel retransmits a SYN it still wants answered).
        let parked = if resync { self.pairs.reset() } else { self.pairs.take_parked() };
        for p in parked {
            out.release_secondary_held(p.frame, p.len, DropReason::Flushed);
        }
        while let Some((frame, arrived, len)) = self.unflowed.pop_front() {
            out.release_held(frame, Via::Flush, arrived, len);
        }
        self.counters.reassembly_partials = self.reasm.len() as u64;
        self.requested = 0;
        for slot in 0..self.slots.len() as u32 {
            self.reschedule(slot);
        }
    }

    /// Commanded failover (SPEC §6): flush, then forward `to`'s frames uncompared and drop the
    /// other side's. No guest state changes, so proxy mode's offsets stay: after a failover to
    /// the secondary its TCP output is moved into the primary's sequence space and clock for
    /// the connections the client learned from the primary, and client frames keep being
    /// rewritten on their way to it (see [`Shard::handle`]).
    pub fn failover(&mut self, to: Side, now: Timestamp) {
        self.flush(now, false);
        self.failed_over = Some(to);
        // The flush kept the secondary's data beyond what the primary sent. Failing over to the
        // secondary, that is output the client still needs: forward it (TCP in the client's
        // space) right after the primary's last frames; failing over to the primary, drop it.
        let proxy = self.cfg.mode == crate::Mode::Proxy;
        let mut out = out!(self, now);
        for s in &mut self.slots {
            match &mut s.flow {
                Some(Flow { conn: Conn::Tcp(conn), .. }) => {
                    let held = conn.take_secondary();
                    let (seq, ts) = conn.offsets().unwrap_or((0, 0));
                    for h in held {
                        if to != Side::Secondary {
                            h.frames.discard_secondary(&mut out, DropReason::Flushed);
                            continue;
                        }
                        let seg = h.seg;
                        h.frames.each(&mut out, |out, mut frame, len, head| {
                            if proxy && head && (seq, ts) != (0, 0) {
                                let moved = crate::proxy::shift_guest_output(frame.bytes_mut(), &seg, seq, ts);
                                out.counters.failover_rewritten += u64::from(moved);
                            }
                            out.forward_secondary_held(frame, len);
                        });
                    }
                }
                // Datagrams the secondary sent ahead of the primary (kept by the flush): the
                // same fate, in their order.
                Some(Flow { conn: Conn::Datagram(d), .. }) => {
                    for item in d.take_secondary() {
                        for (frame, len) in item.into_frames() {
                            match to {
                                Side::Secondary => out.forward_secondary_held(frame, len),
                                Side::Primary => out.release_secondary_held(frame, len, DropReason::Flushed),
                            }
                        }
                    }
                }
                None => {}
            }
        }
    }

    /// After a failover to the secondary in proxy mode: moves a TCP segment of the secondary
    /// into the space its client knows (sequence number and TSval; SPEC §6). Returns false if
    /// the frame could not be rewritten although its connection needs it.
    fn forward_secondary(&mut self, frame: &mut F, now: Timestamp) -> bool {
        let (mut key, seg) = match wire::parse(frame.bytes()) {
            Class::Tcp(key, seg) => (key, seg),
            // A segment sent as IP fragments: its first fragment holds the header (SPEC §4).
            Class::Fragment(key, frag) if frag.offset == 0 && key.proto == wire::proto::TCP => {
                let Some(seg) = wire::tcp_in_fragment(frame.bytes(), frag.data, frag.data.len) else { return true };
                let (src_port, dst_port) = wire::l4_ports(key.proto, frag.data.of(frame.bytes()).unwrap_or(&[]));
                (FlowKey { src_port, dst_port, ..key }, seg)
            }
            _ => return true,
        };
        if seg.syn {
            self.offsets_epoch += 1;
        }
        let alias = self.pairs.primary_port(&key);
        let aliased = alias.is_some();
        if let Some(port) = alias {
            // A guest-opened connection the client knows under the primary's port.
            if !crate::proxy::set_port(frame.bytes_mut(), &seg, true, port) {
                return false;
            }
            key.src_port = port;
        }
        let Some(slot) = self.lookup(&key, Kind::Tcp) else { return true };
        let Some(flow) = self.slots.get_mut(slot as usize).and_then(|s| s.flow.as_mut()) else { return true };
        flow.last_activity = now;
        let Conn::Tcp(conn) = &mut flow.conn else { return true };
        let (seq, ts) = conn.forward_offsets(&seg, frame.bytes(), self.cfg.mode, aliased);
        if seq == 0 && ts == 0 {
            return true;
        }
        let moved = crate::proxy::shift_guest_output(frame.bytes_mut(), &seg, seq, ts);
        self.counters.failover_rewritten += u64::from(moved);
        moved
    }

    /// The runtime reports mbuf exhaustion approaching (SPEC §6 `resource-pressure`): one
    /// shard-wide request per epoch; the flush it triggers returns the held mbufs.
    pub fn resource_pressure(&mut self, detail: &str, now: Timestamp) {
        let mut out = out!(self, now);
        out.request(&mut self.requested, CheckpointReason::ResourcePressure, "", || detail.to_string());
    }

    /// The comparison state of one flow, if present: its TCP connection, else the datagram
    /// flow with that key (a TCP key can have both when fragmented segments were seen).
    pub fn flow_status(&self, key: &FlowKey) -> Option<FlowStatus> {
        let slot = [Kind::Tcp, Kind::Datagram, Kind::OtherIp, Kind::NonIp]
            .into_iter()
            .find_map(|kind| self.lookup(key, kind))?;
        self.status_of(slot)
    }

    /// Proxy mode (SPEC §3, §5.1): a frame from the clients is about to be mirrored to both
    /// guests. Records what it says about its connection (the client's window scale and
    /// receive window, which bound what each side may normally hold); a client's SYN opens
    /// the connection's entry so its window scale is known. Call once per client frame,
    /// before [`Shard::rewrite_client_for_secondary`].
    ///
    /// Returns the frame's TCP summary for [`Shard::rewrite_client_segment`] (`None` for
    /// anything but TCP), so a client frame is parsed once however often its copy is tried.
    pub fn observe_client(&mut self, frame: &[u8], now: Timestamp) -> Option<ClientSegment> {
        self.observe_client_parsed(frame, &wire::parse(frame), now)
    }

    /// [`Shard::observe_client`] for a client frame whose parse travelled with it (`class` is
    /// [`wire::parse`] of `frame`).
    pub fn observe_client_parsed(&mut self, frame: &[u8], class: &Class, now: Timestamp) -> Option<ClientSegment> {
        let &Class::Tcp(key, seg) = class else { return None };
        // The comparator keys a connection by its guest → client direction.
        let cs = ClientSegment { conn: key.reversed(), seg };
        let (slot, created) = match self.lookup(&cs.conn, Kind::Tcp) {
            Some(slot) => (slot, false),
            None if seg.syn && !seg.ack_flag && self.failed_over.is_none() => {
                match self.flow_slot(&cs.conn, Kind::Tcp, FlowHint::NONE, now) {
                    Ok(slot) => (slot, true),
                    // Table full or past the new-flow budget: its copy is mirrored all the same.
                    Err(_) => return Some(cs),
                }
            }
            None => return Some(cs),
        };
        if let Some(flow) = self.slots.get_mut(slot as usize).and_then(|s| s.flow.as_mut()) {
            // The client's activity keeps a connection (and its offsets) alive: after a
            // failover, or while the guests are quiet, it may be the only sign of life.
            flow.last_activity = now;
            if let Conn::Tcp(conn) = &mut flow.conn {
                conn.observe_client(&seg, frame);
            }
        }
        if created {
            // A flow made here (a client's SYN nobody answers) must expire like any other;
            // an existing one's timers pick up the later activity when they fire.
            self.reschedule(slot);
        }
        Some(cs)
    }

    /// Proxy mode (SPEC §3): rewrites, in place, a client frame about to be mirrored to the
    /// secondary — its ACK number and SACK edges move from the primary's sequence space into
    /// the secondary's by the connection's learned offset, and its timestamp echo (TSecr)
    /// from the primary's clock to the secondary's; checksum fixed. Call it on the
    /// secondary's copy only; the primary's copy goes out unchanged. Reads state, changes none.
    pub fn rewrite_client_for_secondary(&self, frame: &mut [u8]) -> crate::ClientRewrite {
        match wire::parse(frame) {
            Class::Tcp(key, seg) => self.rewrite_client_segment(frame, &ClientSegment { conn: key.reversed(), seg }),
            _ => crate::ClientRewrite::NotTcpAck,
        }
    }

    /// [`Shard::rewrite_client_for_secondary`] for a frame already summarised by
    /// [`Shard::observe_client`] (the copy has the original's bytes, so its summary).
    pub fn rewrite_client_segment(&self, frame: &mut [u8], cs: &ClientSegment) -> crate::ClientRewrite {
        use crate::ClientRewrite;
        let seg = cs.seg;
        let Some(conn) = self.tcp_conn(&cs.conn) else {
            return if seg.ack_flag { ClientRewrite::Unchanged } else { ClientRewrite::NotTcpAck };
        };
        let shifted = match conn.offsets() {
            // A client's SYN (or a RST without ACK): nothing acknowledges the guest's space.
            _ if !seg.ack_flag => ClientRewrite::NotTcpAck,
            // After a failover to the secondary, a connection the client never saw from the
            // primary is the secondary's own.
            None if self.failed_over.is_some() && !conn.offset_pending() => ClientRewrite::Unchanged,
            None => return ClientRewrite::OffsetUnknown,
            Some((0, 0)) => ClientRewrite::Unchanged,
            Some((seq, ts)) if crate::proxy::shift_client(frame, &seg, seq, ts, conn.secondary_sent()) => {
                ClientRewrite::Rewritten
            }
            Some(_) => ClientRewrite::Unchanged,
        };
        // A guest-opened connection whose secondary chose another source port (every frame,
        // a RST without ACK too).
        match conn.secondary_port {
            Some(port) if crate::proxy::set_port(frame, &seg, false, port) => ClientRewrite::Rewritten,
            _ => shifted,
        }
    }

    fn status_of(&self, slot: u32) -> Option<FlowStatus> {
        let flow = self.slots.get(slot as usize)?.flow.as_ref()?;
        Some(match &flow.conn {
            Conn::Tcp(conn) => conn.status(),
            Conn::Datagram(d) => {
                let (held_primary, held_secondary) = d.held();
                FlowStatus {
                    base: None,
                    compared: None,
                    secondary_ack: None,
                    held_primary,
                    held_secondary,
                    head: (held_primary > 0).then_some(if d.diverged() {
                        HoldReason::Diverged
                    } else {
                        HoldReason::AwaitingSecondaryData
                    }),
                    diverged: d.diverged(),
                    closed: false,
                }
            }
        })
    }
}

fn passthrough<F>(out: &mut Out<'_, F>, side: Side, frame: F, secondary_reason: DropReason) {
    match side {
        Side::Primary => out.release_now(frame, Via::Passthrough),
        Side::Secondary => out.drop_new(Side::Secondary, frame, secondary_reason),
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
