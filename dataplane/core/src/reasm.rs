//! IPv4/IPv6 fragment reassembly, per side, with bounded memory (SPEC §4, §11).
//!
//! Owns the partial datagrams of one shard: their original fragment frames (held, counted in
//! the held gauges), coverage, and their reassembly deadline. It never copies payload: a
//! completed datagram is handed to [`crate::datagram`] as the list of its fragments, which
//! compares them in place, so the two guests may fragment the same datagram differently.
//!
//! Rules, as Linux since CVE-2018-5391 and RFC 5722: an exact duplicate fragment (same
//! offset, length and bytes) is harmless (held and released with the datagram, not compared
//! twice); any other overlap, a non-final fragment whose length is not a multiple of 8, a
//! total length that changes, or more than `max_fragments_per_datagram` fragments *poisons*
//! the datagram: it will never be compared. A poisoned **secondary** datagram's frames are
//! dropped at once (`reassembly-failed`). A poisoned **primary** datagram's frames are never
//! released unverified and never lost: they stay held until its reassembly deadline asks for
//! a checkpoint (`fragment-timeout`) whose flush releases them (`flush`), in their order.
//!
//! Bounds (per side): `max_reassembly_datagrams` partials and `max_reassembly_bytes` of held
//! fragment frames. Beyond them the shard requests `resource-pressure` and parks primary
//! fragments in its bounded overflow FIFO (released by the flush), drops the secondary's.
//!
//! After a checkpoint flush a partial becomes a *tombstone* until its deadline: later
//! fragments of a datagram whose start the flush released pass through (primary) or are
//! dropped as flushed (secondary), since the secondary's state now already includes it.
//!
//! Must never: release a primary fragment except via a completed datagram (compared by the
//! datagram module), a flush, or a tombstone; grow without bound; read a clock.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::checkpoint::CheckpointReason;
use crate::datagram::{Item, Pieces};
use crate::out::{Out, Piece};
use crate::reasons::{DropReason, Via};
use crate::time::Timestamp;
use crate::timer::{DeadlineQueue, TimerKind};
use crate::wire::{self, FlowKey, Fragment};
use crate::{Config, Frame, Side};

/// Identity of one datagram being reassembled on one side (RFC 791 / RFC 8200: addresses,
/// protocol, identification; plus VLANs and the side).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragId {
    side: Side,
    vlans: [Option<u16>; 2],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    id: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// Will never be compared (overlap, bad length, too many fragments).
    Poisoned,
    /// The deadline fired (a request was made); still collecting, released by the flush.
    Expired,
    /// A flush released (or dropped) its frames; later fragments pass through.
    Tombstone,
}

struct Partial<F> {
    id: FragId,
    key: FlowKey,
    /// Sorted by (`at`, `dup`).
    pieces: Vec<Piece<F>>,
    total: Option<u32>,
    covered: u32,
    bytes: u64,
    next_seq: u32,
    state: State,
    deadline: Timestamp,
}

struct Slot<F> {
    generation: u32,
    partial: Option<Partial<F>>,
}

/// What became of a fragment.
pub(crate) enum Fed<F> {
    /// Held, dropped or released already; nothing more to do.
    Done,
    /// It completed its datagram: compare this (its flow key now has ports).
    Complete(FlowKey, Item<F>),
    /// No room (the caller requests `resource-pressure` and parks or drops it).
    Full(F),
}

/// One shard's reassembly table (both sides).
pub(crate) struct Reassembly<F> {
    map: HashMap<FragId, u32, ahash::RandomState>,
    slots: Vec<Slot<F>>,
    free: Vec<u32>,
    partials: [usize; 2],
    bytes: [u64; 2],
    tombstones: usize,
}

fn side_idx(side: Side) -> usize {
    match side {
        Side::Primary => 0,
        Side::Secondary => 1,
    }
}

impl<F: Frame> Reassembly<F> {
    pub(crate) fn new() -> Self {
        Reassembly {
            map: HashMap::with_hasher(ahash::RandomState::new()),
            slots: Vec::new(),
            free: Vec::new(),
            partials: [0; 2],
            bytes: [0; 2],
            tombstones: 0,
        }
    }

    /// Partial datagrams (and tombstones) of both sides.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a timer entry is still the live deadline of its partial.
    pub(crate) fn is_live(&self, at: Timestamp, slot: u32, generation: u32) -> bool {
        self.slots
            .get(slot as usize)
            .is_some_and(|s| s.generation == generation && s.partial.as_ref().is_some_and(|p| p.deadline == at))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_fragment(
        &mut self,
        side: Side,
        frame: F,
        key: FlowKey,
        frag: Fragment,
        out: &mut Out<'_, F>,
        cfg: &Config,
        timers: &mut DeadlineQueue,
    ) -> Fed<F> {
        let id = FragId { side, vlans: key.vlans, src: key.src, dst: key.dst, proto: key.proto, id: frag.id };
        let len = frame.bytes().len() as u32;
        let Some(slot) = self.slot_for(id, key, len, out.now, cfg, timers) else { return Fed::Full(frame) };
        let Some(p) = self.slots.get_mut(slot as usize).and_then(|s| s.partial.as_mut()) else {
            return Fed::Full(frame);
        };
        match (p.state, side) {
            (State::Tombstone, Side::Primary) => {
                out.release_now(frame, Via::Passthrough);
                return Fed::Done;
            }
            (State::Tombstone, Side::Secondary) => {
                out.drop_new(Side::Secondary, frame, DropReason::Flushed);
                return Fed::Done;
            }
            (State::Poisoned, Side::Secondary) => {
                out.drop_new(Side::Secondary, frame, DropReason::ReassemblyFailed);
                return Fed::Done;
            }
            _ => {}
        }
        let si = side_idx(side);
        if self.bytes[si].saturating_add(u64::from(len)) > cfg.max_reassembly_bytes as u64
            || p.pieces.len() >= cfg.max_fragments_per_datagram.saturating_mul(2)
        {
            // Even a poisoned primary datagram keeps at most twice the fragment limit; the
            // rest goes the table-full way.
            return Fed::Full(frame);
        }
        let verdict = if p.state == State::Poisoned { Verdict::Add(true) } else { classify(p, &frame, &frag, cfg) };
        out.hold(side, len);
        self.bytes[si] += u64::from(len);
        p.bytes += u64::from(len);
        let piece = Piece {
            frame,
            arrived: out.now,
            len,
            data: frag.data,
            at: frag.offset,
            seq: p.next_seq,
            dup: !matches!(verdict, Verdict::Add(false)),
        };
        p.next_seq = p.next_seq.wrapping_add(1);
        if p.pieces.capacity() == 0 {
            p.pieces = out.take_pieces();
        }
        let pos = p.pieces.partition_point(|q| (q.at, q.dup) <= (piece.at, piece.dup));
        let added = if piece.dup { 0 } else { piece.data.len };
        p.pieces.insert(pos, piece);
        match verdict {
            Verdict::Add(_) => {
                p.covered += added;
                if !frag.more && p.state != State::Poisoned {
                    p.total = Some(frag.offset + frag.data.len);
                }
            }
            Verdict::Poison => {
                out.counters.reassembly_failed += 1;
                p.state = State::Poisoned;
                if side == Side::Secondary {
                    let pieces = std::mem::take(&mut p.pieces);
                    self.bytes[si] = self.bytes[si].saturating_sub(p.bytes);
                    p.bytes = 0;
                    drop_pieces(out, pieces, DropReason::ReassemblyFailed);
                }
                return Fed::Done;
            }
        }
        if p.state == State::Poisoned || p.total != Some(p.covered) {
            return Fed::Done;
        }
        self.complete(slot, si, out)
    }

    /// The partial datagram `id` belongs to, made if new; `None` when its side's bounds leave
    /// no room (a tombstone is evicted first if one can be).
    fn slot_for(
        &mut self,
        id: FragId,
        key: FlowKey,
        len: u32,
        now: Timestamp,
        cfg: &Config,
        timers: &mut DeadlineQueue,
    ) -> Option<u32> {
        if let Some(&s) = self.map.get(&id) {
            return Some(s);
        }
        let si = side_idx(id.side);
        let full = |r: &Self| {
            r.partials[si] >= cfg.max_reassembly_datagrams
                || r.bytes[si].saturating_add(u64::from(len)) > cfg.max_reassembly_bytes as u64
        };
        if full(self) && self.tombstones > 0 {
            self.evict_tombstone(id.side);
        }
        if full(self) {
            return None;
        }
        Some(self.insert(id, key, now, cfg, timers))
    }

    /// Hands over a datagram its fragments now cover (no overlaps were admitted, so covering
    /// `total` bytes means no gaps), with its flow key's ports read from the first fragment.
    fn complete(&mut self, slot: u32, si: usize, out: &mut Out<'_, F>) -> Fed<F> {
        let Some(p) = self.take(slot) else {
            // The caller just added a fragment to this slot's partial datagram: unreachable.
            debug_assert!(false, "a completed datagram's slot is empty");
            return Fed::Done;
        };
        self.bytes[si] = self.bytes[si].saturating_sub(p.bytes);
        out.counters.reassembled += 1;
        let first = p.pieces.iter().find(|q| !q.dup && q.at == 0);
        let head = first.and_then(|q| q.data.of(q.frame.bytes())).unwrap_or(&[]);
        let (src_port, dst_port) = wire::l4_ports(p.key.proto, head);
        let key = FlowKey { src_port, dst_port, ..p.key };
        let total = p.covered;
        Fed::Complete(key, Item::new(key.proto, Pieces::Many(p.pieces), total))
    }

    fn insert(&mut self, id: FragId, key: FlowKey, now: Timestamp, cfg: &Config, timers: &mut DeadlineQueue) -> u32 {
        let deadline = now.saturating_add(cfg.reassembly_timeout);
        let partial = Partial {
            id,
            key: FlowKey { src_port: 0, dst_port: 0, ..key },
            pieces: Vec::new(),
            total: None,
            covered: 0,
            bytes: 0,
            next_seq: 0,
            state: State::Open,
            deadline,
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot { generation: 0, partial: None });
                (self.slots.len() - 1) as u32
            }
        };
        let mut generation = 0;
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.partial = Some(partial);
            generation = s.generation;
        }
        self.map.insert(id, slot);
        self.partials[side_idx(id.side)] += 1;
        timers.push(deadline, slot, generation, TimerKind::Reassembly);
        slot
    }

    fn take(&mut self, slot: u32) -> Option<Partial<F>> {
        let s = self.slots.get_mut(slot as usize)?;
        let p = s.partial.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        self.map.remove(&p.id);
        let si = side_idx(p.id.side);
        self.partials[si] = self.partials[si].saturating_sub(1);
        if p.state == State::Tombstone {
            self.tombstones = self.tombstones.saturating_sub(1);
        }
        Some(p)
    }

    /// Frees room held only by a tombstone (they hold no frames). A scan, but only when the
    /// table is full and tombstones exist.
    fn evict_tombstone(&mut self, side: Side) {
        let victim = self
            .slots
            .iter()
            .position(|s| s.partial.as_ref().is_some_and(|p| p.state == State::Tombstone && p.id.side == side));
        if let Some(v) = victim {
            self.take(v as u32);
        }
    }

    /// A reassembly deadline fired (the entry is live).
    pub(crate) fn expire(&mut self, slot: u32, out: &mut Out<'_, F>, shard_requested: &mut u16) {
        let Some(p) = self.slots.get_mut(slot as usize).and_then(|s| s.partial.as_mut()) else { return };
        let (side, state) = (p.id.side, p.state);
        let detail = || {
            let got: u32 = p.covered;
            format!(
                "{} datagram id {:#x}: {} fragments, {} of {} bytes after {:?}",
                side.as_str(),
                p.id.id,
                p.pieces.len(),
                got,
                p.total.map_or("?".to_string(), |t| t.to_string()),
                state
            )
        };
        match (state, side) {
            (State::Tombstone, _) | (State::Poisoned, Side::Secondary) => {
                self.take(slot);
            }
            (State::Expired, _) => {}
            (_, Side::Primary) => {
                let key = p.key;
                let d = detail();
                p.state = State::Expired;
                out.request(shard_requested, CheckpointReason::FragmentTimeout, key, || d);
            }
            (_, Side::Secondary) => {
                let key = p.key;
                let d = detail();
                if let Some(p) = self.take(slot) {
                    self.bytes[1] = self.bytes[1].saturating_sub(p.bytes);
                    drop_pieces(out, p.pieces, DropReason::ReassemblyFailed);
                }
                out.request(shard_requested, CheckpointReason::FragmentTimeout, key, || d);
            }
        }
    }

    /// Checkpoint completion: release every held primary fragment (each datagram in arrival
    /// order), drop the secondary's; partials become tombstones until a fresh deadline.
    pub(crate) fn flush(&mut self, out: &mut Out<'_, F>, cfg: &Config, timers: &mut DeadlineQueue) {
        for slot in 0..self.slots.len() {
            let Some(s) = self.slots.get_mut(slot) else { continue };
            let generation = s.generation;
            let Some(p) = s.partial.as_mut() else { continue };
            if p.state == State::Tombstone {
                continue;
            }
            let mut pieces = std::mem::take(&mut p.pieces);
            pieces.sort_unstable_by_key(|q| q.seq);
            let si = side_idx(p.id.side);
            self.bytes[si] = self.bytes[si].saturating_sub(p.bytes);
            p.bytes = 0;
            p.state = State::Tombstone;
            p.deadline = out.now.saturating_add(cfg.reassembly_timeout);
            timers.push(p.deadline, slot as u32, generation, TimerKind::Reassembly);
            self.tombstones += 1;
            match p.id.side {
                Side::Primary => {
                    for q in pieces.drain(..) {
                        out.release_held(q.frame, Via::Flush, q.arrived, q.len);
                    }
                    out.recycle(pieces);
                }
                Side::Secondary => drop_pieces(out, pieces, DropReason::Flushed),
            }
        }
    }
}

fn drop_pieces<F>(out: &mut Out<'_, F>, mut pieces: Vec<Piece<F>>, reason: DropReason) {
    pieces.sort_unstable_by_key(|q| q.seq);
    for q in pieces.drain(..) {
        out.release_secondary_held(q.frame, q.len, reason);
    }
    out.recycle(pieces);
}

enum Verdict {
    /// Add it; `true` = an exact duplicate (kept, not compared).
    Add(bool),
    Poison,
}

/// Linux/RFC 5722 rules for one new fragment of an open datagram.
fn classify<F: Frame>(p: &Partial<F>, frame: &F, frag: &Fragment, cfg: &Config) -> Verdict {
    let (start, len) = (frag.offset, frag.data.len);
    let end = start + len;
    if p.pieces.len() >= cfg.max_fragments_per_datagram {
        return Verdict::Poison;
    }
    if frag.more && len % 8 != 0 {
        return Verdict::Poison;
    }
    if !frag.more {
        let high = p.pieces.iter().filter(|q| !q.dup).map(|q| q.at + q.data.len).max().unwrap_or(0);
        if p.total.is_some_and(|t| t != end) || high > end {
            return Verdict::Poison;
        }
    } else if p.total.is_some_and(|t| end > t) {
        return Verdict::Poison;
    }
    if len == 0 {
        return Verdict::Add(true);
    }
    for q in p.pieces.iter().filter(|q| !q.dup && q.data.len > 0) {
        let (qs, qe) = (q.at, q.at + q.data.len);
        if qs < end && start < qe {
            let same = qs == start
                && qe == end
                && q.data.of(q.frame.bytes()).is_some_and(|a| frag.data.of(frame.bytes()) == Some(a));
            return if same { Verdict::Add(true) } else { Verdict::Poison };
        }
    }
    Verdict::Add(false)
}
