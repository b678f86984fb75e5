//! Datagram comparison of one flow (SPEC §5.2 UDP/ICMP/ICMPv6, §5.3 other IP protocols, and
//! §4 non-IP frames under the `compare` policy).
//!
//! Owns: the primary FIFO (datagrams in the order the primary sent them, each possibly made of
//! several original fragment frames), the secondary's unmatched datagrams, and the reorder
//! window. Two datagrams match when their protocol and compared bytes are equal: the L4
//! header and payload for UDP/ICMP (the IP payload), the IP payload for other protocols, the
//! whole frame for non-IP. The IP header is never compared (ID, TTL, DF, checksum, …).
//!
//! **Reorder window** (SPEC §5.2, default 16, `Config::datagram_window`): every datagram
//! gets a position in its side's sequence (0, 1, 2, … since the last flush). Primary
//! position *i* may match secondary position *j* only when |i − j| ≤ window. A datagram
//! becomes *unmatchable* once the other side has sent every position it could match; an
//! unmatchable datagram on one side while the other side holds unmatched datagrams is a
//! miscompare (`datagram-mismatch` / `other-mismatch`). An unmatchable datagram with nothing
//! unmatched on the other side (one side sent more) waits for `compare_timeout`. So a lone
//! differing datagram with no later traffic is caught by `timeout-primary`; a window of 0
//! gives QEMU's immediate verdict at the price of no reorder tolerance.
//!
//! Must never: release a primary frame before its datagram matched and every earlier
//! datagram of the flow was released (frames leave from the FIFO head only, or at once when
//! nothing is held ahead of them; a reassembled datagram's frames in their arrival order),
//! allocate per datagram (queues keep their capacity; fragment lists come from a bounded
//! pool), or read a clock.

use std::collections::VecDeque;

use crate::checkpoint::{hex_window, CheckpointReason};
use crate::fifo::Fifo;
use crate::out::{Out, Piece};
use crate::reasons::{DropReason, Via};
use crate::time::Timestamp;
use crate::wire::FlowKey;
use crate::{Config, Frame, Side};

/// A datagram's original frames: one, or the fragments sorted by (`at`, `dup`).
pub(crate) enum Pieces<F> {
    One(Piece<F>),
    Many(Vec<Piece<F>>),
}

/// A whole datagram, ready to compare. In field order (the flow entry's layout: see
/// `shard::Slot`): `matched` second, so an empty queue head is told by the item's first bytes.
#[repr(C)]
pub(crate) struct Item<F> {
    /// IP protocol (SPEC §5.3 compares it), or 0 for non-IP frames.
    pub(crate) proto: u8,
    matched: bool,
    /// A secondary datagram already kept by one standalone completion: the next one drops it.
    kept: bool,
    /// Compared length.
    pub(crate) total: u32,
    pub(crate) pieces: Pieces<F>,
    pos: u64,
}

impl<F: Frame> Item<F> {
    /// Its first frame's bytes from where the comparison starts (see
    /// [`crate::Shard::locate_burst`]).
    fn first_compared(&self) -> &[u8] {
        self.first_piece().and_then(|p| p.frame.bytes().get(p.data.offset as usize..)).unwrap_or_default()
    }

    fn first_piece(&self) -> Option<&Piece<F>> {
        match &self.pieces {
            Pieces::One(piece) => Some(piece),
            Pieces::Many(pieces) => pieces.first(),
        }
    }

    /// A datagram made whole by its last piece: its pieces carry their arrival times, the
    /// latest of which is when the datagram became whole ([`Item::arrived`]).
    pub(crate) fn new(proto: u8, pieces: Pieces<F>, total: u32) -> Self {
        Item { proto, pieces, total, pos: 0, matched: false, kept: false }
    }

    /// When it became whole: the compare timer starts here. Not kept apart from the pieces'
    /// own times (the latest piece completed it), so the item fits a cache line and a flow
    /// entry holds both guests' oldest datagrams in two lines (see `shard::Slot`).
    #[inline]
    pub(crate) fn arrived(&self) -> Timestamp {
        match &self.pieces {
            Pieces::One(p) => p.arrived,
            Pieces::Many(v) => latest_arrival(v),
        }
    }

    /// Restarts its compare clock at `now` (a standalone completion kept it).
    fn restart_clock(&mut self, now: Timestamp) {
        match &mut self.pieces {
            Pieces::One(p) => p.arrived = now,
            Pieces::Many(v) => v.iter_mut().for_each(|p| p.arrived = now),
        }
    }

    /// Frames in this datagram.
    pub(crate) fn frames(&self) -> usize {
        match &self.pieces {
            Pieces::One(_) => 1,
            Pieces::Many(v) => v.len(),
        }
    }

    /// Calls `f` with each compared chunk in datagram order (duplicates skipped).
    fn for_chunks(&self, mut f: impl FnMut(&[u8]) -> bool) {
        match &self.pieces {
            Pieces::One(p) => {
                f(p.data.of(p.frame.bytes()).unwrap_or(&[]));
            }
            Pieces::Many(v) => {
                for p in v.iter().filter(|p| !p.dup) {
                    if !f(p.data.of(p.frame.bytes()).unwrap_or(&[])) {
                        return;
                    }
                }
            }
        }
    }

    /// A digest of the compared bytes (the UDP checksum left out, as in the comparison), to
    /// recognise a secondary datagram equal to one a flush released.
    fn digest(&self) -> u64 {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u8(self.proto);
        h.write_u32(self.total);
        let skip = skipped(self.proto);
        let mut pos = 0usize;
        self.for_chunks(|c| {
            for (k, b) in c.iter().enumerate() {
                if !skip.contains(&(pos + k)) {
                    h.write_u8(*b);
                }
            }
            pos += c.len();
            true
        });
        h.finish()
    }

    /// The compared bytes as one buffer (diagnostics only: allocates).
    pub(crate) fn gather(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.total as usize);
        self.for_chunks(|c| {
            v.extend_from_slice(c);
            true
        });
        v
    }

    /// Byte-wise equality across differently fragmented datagrams, without copying.
    #[inline]
    fn same_as(&self, other: &Item<F>) -> bool {
        if self.proto != other.proto || self.total != other.total {
            return false;
        }
        eq_chunks(self, other)
    }

    /// The frames in arrival order (the rare table-full path only: allocates).
    pub(crate) fn into_frames(self) -> Vec<(F, u32)> {
        match self.pieces {
            Pieces::One(p) => vec![(p.frame, p.len)],
            Pieces::Many(mut v) => {
                v.sort_unstable_by_key(|p| p.seq);
                v.into_iter().map(|p| (p.frame, p.len)).collect()
            }
        }
    }

    /// Hands every frame back in arrival order.
    #[inline]
    fn release(self, out: &mut Out<'_, F>, side: Side, via: Via, reason: DropReason) {
        match self.pieces {
            Pieces::One(p) => emit(out, p, side, via, reason),
            Pieces::Many(v) => release_pieces(out, v, side, via, reason),
        }
    }

    /// Drops every frame of a held primary datagram (hard limit only: SPEC §6).
    fn drop_primary(self, out: &mut Out<'_, F>, reason: DropReason) {
        match self.pieces {
            Pieces::One(p) => out.drop_held_primary(p.frame, p.len, reason),
            Pieces::Many(mut v) => {
                v.sort_unstable_by_key(|p| p.seq);
                for p in v.drain(..) {
                    out.drop_held_primary(p.frame, p.len, reason);
                }
                out.recycle(v);
            }
        }
    }
}

/// When the last of a reassembled datagram's pieces arrived (the datagram became whole then).
#[inline(never)]
fn latest_arrival<F>(pieces: &[Piece<F>]) -> Timestamp {
    pieces.iter().map(|p| p.arrived).max().unwrap_or_default()
}

/// Hands one frame of a released datagram back.
#[inline]
fn emit<F>(out: &mut Out<'_, F>, p: Piece<F>, side: Side, via: Via, reason: DropReason) {
    match side {
        Side::Primary => out.release_held(p.frame, via, p.arrived, p.len),
        Side::Secondary => out.release_secondary_held(p.frame, p.len, reason),
    }
}

/// [`Item::release`] of a reassembled datagram: its frames in arrival order (out of line,
/// so the usual one-frame release stays small).
#[inline(never)]
fn release_pieces<F>(out: &mut Out<'_, F>, mut v: Vec<Piece<F>>, side: Side, via: Via, reason: DropReason) {
    v.sort_unstable_by_key(|p| p.seq);
    for p in v.drain(..) {
        emit(out, p, side, via, reason);
    }
    out.recycle(v);
}

/// The bytes the comparison skips (SPEC §5.2): the UDP checksum (bytes 6..8 of the UDP
/// header) is not compared, as 0 and a computed checksum are both valid for the same
/// datagram over IPv4.
fn skipped(proto: u8) -> core::ops::Range<usize> {
    if proto == crate::wire::proto::UDP {
        6..8
    } else {
        0..0
    }
}

/// Compares the chunk sequences of two items of equal total length.
#[inline]
fn eq_chunks<F: Frame>(a: &Item<F>, b: &Item<F>) -> bool {
    let (Pieces::One(pa), Pieces::One(pb)) = (&a.pieces, &b.pieces) else {
        return eq_scattered(a, b);
    };
    // The usual case, an unfragmented datagram on both sides: two slices.
    let (Some(x), Some(y)) = (pa.data.of(pa.frame.bytes()), pb.data.of(pb.frame.bytes())) else {
        return false;
    };
    x.len() == a.total as usize && eq_compared(x, y, a.proto)
}

/// Whether two datagrams' compared bytes (of protocol `proto`) are equal, [`skipped`] aside.
#[inline]
fn eq_compared(x: &[u8], y: &[u8], proto: u8) -> bool {
    if x.len() != y.len() {
        return false;
    }
    if (16..=SHORT).contains(&x.len()) {
        return eq_short(x, y, first_word_kept(proto));
    }
    let skip = skipped(proto);
    let cut = skip.start.min(x.len());
    let resume = skip.end.min(x.len());
    x.get(..cut) == y.get(..cut) && x.get(resume..) == y.get(resume..)
}

/// Datagrams of 16 up to this many compared bytes are compared eight bytes at a time in line
/// ([`eq_short`]); longer ones by the library's `memcmp`, which wins once its call pays.
const SHORT: usize = 64;

/// The bits of a datagram's first eight compared bytes (read little-endian) that are compared:
/// [`skipped`]'s bytes cleared.
fn first_word_kept(proto: u8) -> u64 {
    let skip = skipped(proto);
    debug_assert!(skip.end <= 8);
    let ones = |k: usize| if k >= 8 { u64::MAX } else { (1u64 << (8 * k)) - 1 };
    !(ones(skip.end) & !ones(skip.start))
}

/// Equality of two slices of the same length, 16 to [`SHORT`] bytes, the first word's bits
/// outside `first_kept` left out: 64-bit words XORed together, the last word overlapping the
/// one before when the length is not a multiple of eight (it starts past the first word, so
/// past the skipped bytes). A small datagram's comparison was two library calls (before and
/// after the UDP checksum), each costing more than the bytes they compared.
#[inline]
fn eq_short(x: &[u8], y: &[u8], first_kept: u64) -> bool {
    debug_assert!(x.len() == y.len() && (16..=SHORT).contains(&x.len()));
    let n = x.len();
    let word = |b: &[u8], at: usize| b.get(at..at + 8).and_then(|w| w.try_into().ok()).map_or(0, u64::from_le_bytes);
    let mut diff = (word(x, 0) ^ word(y, 0)) & first_kept;
    diff |= word(x, n - 8) ^ word(y, n - 8);
    let mut at = 8;
    while at + 8 < n {
        diff |= word(x, at) ^ word(y, at);
        at += 8;
    }
    diff == 0
}

/// [`eq_chunks`] where either side was reassembled from fragments (out of line).
#[inline(never)]
fn eq_scattered<F: Frame>(a: &Item<F>, b: &Item<F>) -> bool {
    let skip = skipped(a.proto);
    // Materialising one side's chunk list would allocate; instead iterate `b` with an
    // explicit (piece index, offset) cursor.
    let b_chunk = |i: usize| -> Option<&[u8]> {
        match &b.pieces {
            Pieces::One(p) => (i == 0).then(|| p.data.of(p.frame.bytes()).unwrap_or(&[])),
            Pieces::Many(v) => v.iter().filter(|p| !p.dup).nth(i).map(|p| p.data.of(p.frame.bytes()).unwrap_or(&[])),
        }
    };
    let (mut bi, mut boff) = (0usize, 0usize);
    let mut cur = b_chunk(0);
    let mut equal = true;
    let mut a_len = 0usize;
    let mut pos = 0usize;
    a.for_chunks(|mut chunk| {
        a_len += chunk.len();
        while !chunk.is_empty() {
            let Some(bc) = cur else {
                equal = false;
                return false;
            };
            let rest = bc.get(boff..).unwrap_or(&[]);
            if rest.is_empty() {
                bi += 1;
                boff = 0;
                cur = b_chunk(bi);
                continue;
            }
            let n = rest.len().min(chunk.len());
            let same = if pos < skip.end && skip.start < pos + n {
                // Around the ignored bytes: before them, and after them (slices, not bytes).
                let before = skip.start.saturating_sub(pos).min(n);
                let after = (skip.end - pos).min(n);
                rest.get(..before) == chunk.get(..before) && rest.get(after..n) == chunk.get(after..n)
            } else {
                rest.get(..n) == chunk.get(..n)
            };
            if !same {
                equal = false;
                return false;
            }
            pos += n;
            boff += n;
            chunk = chunk.get(n..).unwrap_or(&[]);
        }
        true
    });
    // `total`s are equal, so equal prefixes of equal length mean equal datagrams, unless a
    // frame changed under us (then lengths differ and we say "different").
    equal && a_len == a.total as usize
}

/// Whether positions `a` and `b` are at most `w` apart (a datagram's copy is looked for
/// within `datagram_window` positions of it).
#[inline(always)]
fn within_window(a: u64, b: u64, w: u64) -> bool {
    a <= b.saturating_add(w) && a.saturating_add(w) >= b
}

/// Comparison state of one datagram flow. In field order (the flow entry's layout: see
/// `shard::Slot`): positions and flags, then each guest's queue, the absorb list last.
#[repr(C)]
pub(crate) struct DatagramFlow<F> {
    /// Position of the next primary / secondary datagram.
    p_next: u64,
    s_next: u64,
    unmatched_primary: usize,
    /// `datagram-mismatch` (UDP/ICMP) or `other-mismatch` (other IP, non-IP).
    mismatch: CheckpointReason,
    diverged: bool,
    /// Reasons already requested this epoch (one request per reason and flow per epoch).
    pub(crate) requested: u16,
    /// A timeout was requested this epoch: no more compare deadlines until the flush.
    pub(crate) timed_out: bool,
    /// The flow of non-IP frames: named `non-ip` in requests instead of by its key.
    non_ip: bool,
    /// Held primary datagrams in primary order; `matched` ones wait for earlier ones. The
    /// oldest is kept inline (in the flow's table entry), as is the secondary's.
    primary: Fifo<Item<F>>,
    /// Unmatched secondary datagrams in position order.
    secondary: Fifo<Item<F>>,
    /// What the last flush released unmatched, for absorbing a lagging secondary's copies
    /// (boxed: most flows never have any, and the entry stays small). Freed by the first
    /// secondary datagram after absorbing ended or the list emptied, or by the next flush.
    absorb: Option<Box<Absorb>>,
}

/// Digests of the unmatched primary datagrams a flush released (at most [`ABSORB_MAX`], the
/// oldest): a lagging secondary's copies of them, sent before the checkpoint but arriving
/// after, are absorbed instead of compared as new output (SPEC §6).
struct Absorb {
    digests: VecDeque<u64>,
    /// Absorbing ends here (`compare_timeout` after the flush): a later equal datagram is
    /// new output, not a lagging copy.
    until: Timestamp,
}

/// Flushed datagrams remembered per flow for absorbing a lagging secondary's copies.
const ABSORB_MAX: usize = 16;

impl<F: Frame> DatagramFlow<F> {
    /// Reads what a datagram of `side` reads first (the positions; for a secondary datagram
    /// that meets no held copy, the absorb list and its own queue), and returns the other
    /// guest's oldest held bytes, what a datagram in step is compared with (see
    /// [`crate::Shard::locate_burst`]).
    pub(crate) fn warm(&self, side: Side) -> &[u8] {
        std::hint::black_box((self.p_next, self.s_next, self.unmatched_primary));
        if side == Side::Secondary && self.primary.is_empty() {
            // A secondary datagram with no copy to meet looks for a lagging one in the absorb
            // list, then queues: read the entry's line that holds both here, where its miss
            // overlaps the burst's others (a million flows with the secondary's burst first:
            // about a tenth of a pair).
            std::hint::black_box((self.absorb.is_some(), self.secondary.len()));
        }
        self.other(side).front().map(Item::first_compared).unwrap_or_default()
    }

    /// The other guest's oldest held frame, the one [`DatagramFlow::warm`] reads.
    pub(crate) fn held_front(&self, side: Side) -> Option<&F> {
        self.other(side).front().and_then(Item::first_piece).map(|p| &p.frame)
    }

    /// The other guest's queue: what a datagram of `side` is compared with.
    fn other(&self, side: Side) -> &Fifo<Item<F>> {
        match side {
            Side::Primary => &self.secondary,
            Side::Secondary => &self.primary,
        }
    }

    pub(crate) fn new(mismatch: CheckpointReason) -> Self {
        DatagramFlow {
            primary: Fifo::default(),
            secondary: Fifo::default(),
            p_next: 0,
            s_next: 0,
            unmatched_primary: 0,
            mismatch,
            diverged: false,
            requested: 0,
            timed_out: false,
            non_ip: false,
            absorb: None,
        }
    }

    /// The flow of non-IP frames, reported as `non-ip` rather than by its key.
    pub(crate) fn non_ip(mut self) -> Self {
        self.non_ip = true;
        self
    }

    pub(crate) fn request(
        &mut self,
        out: &mut Out<'_, F>,
        reason: CheckpointReason,
        key: &FlowKey,
        detail: impl FnOnce() -> String,
    ) {
        if self.non_ip {
            out.request(&mut self.requested, reason, "non-ip", detail)
        } else {
            out.request(&mut self.requested, reason, key, detail)
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.primary.is_empty() && self.secondary.is_empty()
    }

    pub(crate) fn diverged(&self) -> bool {
        self.diverged
    }

    /// Frames held per side (a reassembled datagram counts each fragment).
    pub(crate) fn held(&self) -> (usize, usize) {
        (self.primary.iter().map(Item::frames).sum(), self.secondary.iter().map(Item::frames).sum())
    }

    /// Whether primary datagram `item`, arriving now, would match the oldest held secondary
    /// datagram with no primary datagram held ahead of it, and so be released at once by
    /// [`DatagramFlow::on_primary`] (the memory budget's rare path only).
    #[cold]
    fn leaves_on_arrival(&self, item: &Item<F>, cfg: &Config) -> bool {
        let w = cfg.datagram_window as u64;
        !self.diverged
            && self.primary.is_empty()
            && self.secondary.front().is_some_and(|s| within_window(s.pos, self.p_next, w) && s.same_as(item))
    }

    /// A primary datagram whose frames are already counted as held.
    #[inline(always)]
    pub(crate) fn on_primary(&mut self, mut item: Item<F>, out: &mut Out<'_, F>, cfg: &Config, key: &FlowKey) {
        // Its frames are counted as held already: past the budget means over it now. Unless
        // it leaves at once (its copy is the oldest held secondary datagram and no primary
        // one waits ahead of it): then it takes no memory, and goes as below.
        if out.over_budget(cfg, 0, 0) && !self.leaves_on_arrival(&item, cfg) {
            // SPEC §6: only exhausted memory drops primary output, and it is counted.
            let held = out.counters.held_frames();
            self.request(out, CheckpointReason::ResourcePressure, key, || {
                format!("shard memory budget exhausted: {held} frames held (budget {})", cfg.held_frames_budget)
            });
            item.drop_primary(out, DropReason::MemoryBudget);
            return;
        }
        item.pos = self.p_next;
        self.p_next += 1;
        if !self.diverged && !self.secondary.is_empty() {
            let w = cfg.datagram_window as u64;
            let within = |s: &Item<F>| within_window(s.pos, item.pos, w);
            // In step, the copy is the oldest held secondary datagram: it is looked at first and
            // taken without a search (the secondary often sends first: a DPDK port pair brings
            // each side's bursts in turn).
            let found = if self.secondary.front().is_some_and(|s| within(s) && s.same_as(&item)) {
                Some(0)
            } else {
                // The rest in position order, up to the window's end.
                self.secondary
                    .iter()
                    .enumerate()
                    .skip(1)
                    .take_while(|(_, s)| s.pos <= item.pos.saturating_add(w))
                    .find(|(_, s)| within(s) && s.same_as(&item))
                    .map(|(i, _)| i)
            };
            if let Some(s) = found.and_then(|i| self.secondary.remove(i)) {
                s.release(out, Side::Secondary, Via::Match, DropReason::Consumed);
                if self.primary.is_empty() {
                    // Matched with nothing held ahead of it: it goes at once, as `settle`
                    // would release it, without the round trip through the queue (where a
                    // copy of it, just marked, would wait on that one-byte store). Nothing
                    // else is left to settle: no primary datagram is held. (A held secondary
                    // datagram means `max_queue_size` > 0, so the queue had room for it.)
                    return item.release(out, Side::Primary, Via::Match, DropReason::Consumed);
                }
                item.matched = true;
            }
        }
        if !item.matched {
            self.unmatched_primary += 1;
        }
        self.primary.push_back(item);
        if self.primary.len() > cfg.max_queue_size {
            let n = self.primary.len();
            self.request(out, CheckpointReason::QueueOverflow, key, || {
                format!("primary datagram queue {n} > max_queue_size {}", cfg.max_queue_size)
            });
        }
        self.settle(out, cfg, key);
    }

    /// A secondary datagram whose frames are already counted as held.
    #[inline(always)]
    pub(crate) fn on_secondary(&mut self, mut item: Item<F>, out: &mut Out<'_, F>, cfg: &Config, key: &FlowKey) {
        item.pos = self.s_next;
        self.s_next += 1;
        if !self.diverged {
            let w = cfg.datagram_window as u64;
            // Primary positions are contiguous in the FIFO: seek the window directly.
            let front = self.primary.front().map_or(self.p_next, |p| p.pos);
            let lo = item.pos.saturating_sub(w).max(front);
            let hi = item.pos.saturating_add(w);
            let mut k = lo;
            while k <= hi {
                let Some(p) = usize::try_from(k - front).ok().and_then(|i| self.primary.get_mut(i)) else { break };
                if !p.matched && p.same_as(&item) {
                    self.unmatched_primary = self.unmatched_primary.saturating_sub(1);
                    if k == front {
                        // The oldest held datagram: it goes at once, unmarked (a copy of it
                        // just marked would wait on that one-byte store), as `settle` would
                        // release it first.
                        if let Some(p) = self.primary.pop_front() {
                            p.release(out, Side::Primary, Via::Match, DropReason::Consumed);
                        }
                    } else {
                        p.matched = true;
                    }
                    // Release first, then consume: the same action order as TCP.
                    self.settle(out, cfg, key);
                    item.release(out, Side::Secondary, Via::Match, DropReason::Consumed);
                    return;
                }
                k += 1;
            }
        }
        if self.absorb.as_ref().is_some_and(|a| out.now >= a.until || a.digests.is_empty()) {
            self.absorb = None;
        }
        if let Some(absorb) = self.absorb.as_mut() {
            let digest = item.digest();
            if let Some(i) = absorb.digests.iter().position(|&d| d == digest) {
                // The secondary's copy of a datagram the last flush released: it lagged
                // behind the checkpoint. Absorbed, and it takes no position.
                absorb.digests.remove(i);
                self.s_next -= 1;
                item.release(out, Side::Secondary, Via::Match, DropReason::Consumed);
                return;
            }
        }
        if out.over_secondary_budget(cfg, 0, 0) {
            // The memory budget is kept for primary output: the secondary's datagram goes.
            self.request(out, CheckpointReason::ResourcePressure, key, || {
                format!("shard memory budget exhausted (budget {} frames)", cfg.held_frames_budget)
            });
            item.release(out, Side::Secondary, Via::Match, DropReason::MemoryBudget);
        } else if self.secondary.len() >= cfg.max_queue_size {
            let n = self.secondary.len();
            self.request(out, CheckpointReason::QueueOverflow, key, || {
                format!("secondary datagram queue {n} at max_queue_size {}", cfg.max_queue_size)
            });
            // Secondary output is never transmitted; the checkpoint resynchronises it.
            item.release(out, Side::Secondary, Via::Match, DropReason::QueueFull);
        } else {
            self.secondary.push_back(item);
        }
        self.settle(out, cfg, key);
    }

    /// Releases matched datagrams from the head, then looks for an unmatchable datagram.
    /// Always in line: a flow in step has neither to do, and the checks cost less than the
    /// call did.
    #[inline(always)]
    fn settle(&mut self, out: &mut Out<'_, F>, cfg: &Config, key: &FlowKey) {
        if self.primary.front().is_some_and(|p| p.matched) {
            self.release_matched(out);
        }
        if self.diverged || self.unmatched_primary == 0 || self.secondary.is_empty() {
            return;
        }
        self.find_unmatchable(out, cfg, key);
    }

    /// [`DatagramFlow::settle`]'s release of the matched datagrams at the head (out of line).
    #[inline(never)]
    fn release_matched(&mut self, out: &mut Out<'_, F>) {
        while self.primary.front().is_some_and(|p| p.matched) {
            if let Some(p) = self.primary.pop_front() {
                p.release(out, Side::Primary, Via::Match, DropReason::Consumed);
            }
        }
    }

    /// [`DatagramFlow::settle`]'s search for an unmatchable datagram, once both sides hold
    /// unmatched ones (out of line: rare in a flow that agrees).
    #[inline(never)]
    fn find_unmatchable(&mut self, out: &mut Out<'_, F>, cfg: &Config, key: &FlowKey) {
        let w = cfg.datagram_window as u64;
        // The FIFO head is the oldest unmatched primary (matched heads were just released).
        let p_stuck = self.primary.front().is_some_and(|p| self.s_next > p.pos.saturating_add(w));
        let s_stuck = self.secondary.front().is_some_and(|s| self.p_next > s.pos.saturating_add(w));
        if !(p_stuck || s_stuck) {
            return;
        }
        let (Some(p), Some(s)) = (self.primary.front(), self.secondary.front()) else {
            // Both queues hold unmatched datagrams here (checked above): unreachable.
            debug_assert!(false, "a stuck datagram flow without both queue heads");
            return;
        };
        self.diverged = true;
        let detail = mismatch_detail(p, s, Some(w));
        let reason = self.mismatch;
        self.request(out, reason, key, || detail);
    }

    /// The earliest per-datagram compare deadline (SPEC §6), if one is armed: the oldest held
    /// datagram's `compare_timeout`, or `reorder_grace` once both sides hold unmatched ones.
    #[inline]
    pub(crate) fn compare_deadline(
        &self,
        timeout: core::time::Duration,
        grace: core::time::Duration,
    ) -> Option<Timestamp> {
        if self.diverged || self.timed_out || self.is_empty() {
            return None;
        }
        let held = crate::timer::oldest_deadline(
            self.primary.front().map(Item::arrived),
            self.secondary.front().map(Item::arrived),
            timeout,
        );
        match (held, self.both_unmatched_since()) {
            (Some(a), Some(b)) => Some(a.min(b.saturating_add(grace))),
            (a, _) => a,
        }
    }

    /// When both sides began to hold unmatched datagrams (the later of the two oldest
    /// unmatched ones), if they do (SPEC §5.2 (c)).
    #[inline]
    fn both_unmatched_since(&self) -> Option<Timestamp> {
        if self.unmatched_primary == 0 {
            return None;
        }
        // Held secondary datagrams are all unmatched (a match consumes them at once).
        let s = self.secondary.front()?.arrived();
        let p = self.primary.iter().find(|p| !p.matched)?.arrived();
        Some(p.max(s))
    }

    /// Which timeout, if any, has expired at `now`, with a diagnostic.
    pub(crate) fn expired(
        &self,
        now: Timestamp,
        timeout: core::time::Duration,
        grace: core::time::Duration,
    ) -> Option<(CheckpointReason, String)> {
        if self.diverged || self.timed_out {
            return None;
        }
        if let Some(since) = self.both_unmatched_since().filter(|t| t.saturating_add(grace) <= now) {
            let (Some(p), Some(s)) = (self.primary.iter().find(|p| !p.matched), self.secondary.front()) else {
                return None;
            };
            let mut detail = mismatch_detail(p, s, None);
            detail.insert_str(0, &format!("both sides hold unmatched datagrams since {since}: "));
            return Some((self.mismatch, detail));
        }
        if let Some(p) = self.primary.front().filter(|p| p.arrived().saturating_add(timeout) <= now) {
            return Some((
                CheckpointReason::TimeoutPrimary,
                format!(
                    "primary datagram #{} ({} bytes, proto {}) unmatched since {}; {} primary / {} secondary \
                     datagrams held",
                    p.pos,
                    p.total,
                    p.proto,
                    p.arrived(),
                    self.primary.len(),
                    self.secondary.len()
                ),
            ));
        }
        if let Some(s) = self.secondary.front().filter(|s| s.arrived().saturating_add(timeout) <= now) {
            return Some((
                CheckpointReason::TimeoutSecondary,
                format!(
                    "secondary datagram #{} ({} bytes, proto {}) unmatched since {}; {} secondary datagrams held",
                    s.pos,
                    s.total,
                    s.proto,
                    s.arrived(),
                    self.secondary.len()
                ),
            ));
        }
        None
    }

    /// Takes the held secondary datagrams (oldest first) out of the comparison: a failover
    /// decides what becomes of them.
    pub(crate) fn take_secondary(&mut self) -> Fifo<Item<F>> {
        std::mem::take(&mut self.secondary)
    }

    /// Checkpoint completion (SPEC §6): release every held primary frame in order, drop the
    /// secondary's; both sides restart at the same position.
    ///
    /// `resync` says whether the secondary guest became a copy of the primary (a frame's
    /// `COLO_CHECKPOINT`). Otherwise (a standalone completion, a failover) no guest changed:
    /// secondary datagrams *ahead* of the primary (positions the primary has not sent yet)
    /// stay held, once, to meet the primary's copies — dropping them and restarting both sides
    /// at the secondary's position would pair every later primary datagram with the wrong
    /// secondary one (a storm of `datagram-mismatch` on flows that agree).
    pub(crate) fn flush(&mut self, out: &mut Out<'_, F>, timeout: core::time::Duration, resync: bool) {
        // One allocation, only when the flush releases unmatched datagrams (checkpoints only).
        let mut digests = VecDeque::with_capacity(self.unmatched_primary.min(ABSORB_MAX));
        while let Some(p) = self.primary.pop_front() {
            // The oldest ones: a lagging secondary sends its copies oldest first.
            if !p.matched && digests.len() < ABSORB_MAX {
                digests.push_back(p.digest());
            }
            p.release(out, Side::Primary, Via::Flush, DropReason::Flushed);
        }
        let ahead = !resync && self.s_next > self.p_next;
        // When the secondary is ahead it already sent every position the flush released: no
        // late copies of them can come, and a new datagram equal to one of them is new output.
        self.absorb = (!ahead && !digests.is_empty())
            .then(|| Box::new(Absorb { digests, until: out.now.saturating_add(timeout) }));
        let mut i = 0;
        while i < self.secondary.len() {
            let keep = ahead && self.secondary.get(i).is_some_and(|s| !s.kept && s.pos >= self.p_next);
            if keep {
                if let Some(s) = self.secondary.get_mut(i) {
                    // A fresh compare window from this completion on.
                    s.kept = true;
                    s.restart_clock(out.now);
                }
                i += 1;
            } else if let Some(s) = self.secondary.remove(i) {
                s.release(out, Side::Secondary, Via::Flush, DropReason::Flushed);
            }
        }
        if !ahead {
            let next = self.p_next.max(self.s_next);
            self.p_next = next;
            self.s_next = next;
        } else if self.secondary.is_empty() {
            // Every datagram it was ahead with was kept before: start both afresh.
            self.p_next = self.s_next;
        }
        self.unmatched_primary = 0;
        self.diverged = false;
        self.requested = 0;
        self.timed_out = false;
    }
}

/// SPEC §10 diagnostic: positions, lengths, and a hex window (±32 bytes) of both sides
/// around the first differing byte.
fn mismatch_detail<F: Frame>(p: &Item<F>, s: &Item<F>, window: Option<u64>) -> String {
    let (a, b) = (p.gather(), s.gather());
    let first = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let within = match window {
        Some(w) => format!("within the window ({w})"),
        None => "within reorder_grace".to_string(),
    };
    let mut d = format!(
        "primary datagram #{} ({} bytes, proto {}) matches no secondary datagram {within}; oldest \
         unmatched secondary #{} ({} bytes, proto {}); first difference at byte {first};",
        p.pos, p.total, p.proto, s.pos, s.total, s.proto
    );
    let at = u32::try_from(first).unwrap_or(u32::MAX);
    hex_window(&mut d, "primary", &a, 0, at);
    hex_window(&mut d, "secondary", &b, 0, at);
    d
}

#[cfg(test)]
impl<F> DatagramFlow<F> {
    /// The byte ranges a datagram flow in agreement reads and writes (positions, flags, both
    /// guests' oldest held datagrams), as addresses, for the flow entry's layout test
    /// (`shard::Slot`).
    pub(crate) fn hot_ranges(&self) -> Vec<(&'static str, usize, usize)> {
        let item = std::mem::size_of::<Option<Item<F>>>();
        vec![
            ("p_next", &self.p_next as *const u64 as usize, 8),
            ("s_next", &self.s_next as *const u64 as usize, 8),
            ("unmatched_primary", &self.unmatched_primary as *const usize as usize, 8),
            ("diverged", &self.diverged as *const bool as usize, 1),
            ("timed_out", &self.timed_out as *const bool as usize, 1),
            ("primary head", self.primary.head_addr(), item),
            ("secondary head", self.secondary.head_addr(), item),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::{ICMP, UDP};

    /// Every length around the word-wise comparison's bounds, every byte changed in turn: only
    /// the UDP checksum's bytes may differ.
    #[test]
    fn a_changed_byte_is_seen_at_every_length_but_the_udp_checksum() {
        for proto in [UDP, ICMP, 47] {
            for n in 0..=SHORT + 20 {
                let x: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
                assert!(eq_compared(&x, &x.clone(), proto), "proto {proto}, {n} bytes");
                for at in 0..n {
                    let mut y = x.clone();
                    y[at] ^= 0x40;
                    let ignored = proto == UDP && skipped(UDP).contains(&at);
                    assert_eq!(eq_compared(&x, &y, proto), ignored, "proto {proto}, {n} bytes, byte {at} changed");
                }
                assert!(!eq_compared(&x, &x[..n.saturating_sub(1)], proto) || n == 0, "{n} bytes vs one fewer");
            }
        }
    }
}
