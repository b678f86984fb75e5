//! TCP byte-stream comparison of one connection's guest → client direction (SPEC §5.1).
//!
//! Owns: the primary FIFO (frames in the order the primary sent them), the secondary's held
//! segments, and the stream state (`compared`, ACK high-water marks, SYN/FIN/RST positions).
//! Bytes are compared by sequence position, so segmentation and arrival order do not matter.
//! Frames leave only from the head of the primary FIFO, so a flow is never reordered.
//!
//! Must never: compare IP/TCP header fields other than seq/ack/flags (SPEC §5.1 "Ignored"),
//! release a primary byte that was not verified (except retransmissions wholly below
//! `compared`, which the client already saw), allocate per packet (queues reuse their
//! capacity), or read a clock.
//!
//! Only the guest → client direction passes through the comparator (both guests send the same
//! flow); its ACK numbers acknowledge client bytes, which both guests received identically, so
//! ACK numbers of the two sides are directly comparable without rewriting.

use std::collections::VecDeque;

use crate::checkpoint::{hex_window, CheckpointReason};
use crate::datagram::{Item, Pieces};
use crate::out::{Out, Piece};
use crate::reasons::{DropReason, FlowStatus, HoldReason, Via};
use crate::time::Timestamp;
use crate::wire::{payload, FlowKey, TcpSegment};
use crate::{Config, Frame, Mode, Side};

/// `a < b` in sequence space (mod 2^32, RFC 1982 style).
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a <= b` in sequence space.
pub fn seq_le(a: u32, b: u32) -> bool {
    a == b || seq_lt(a, b)
}

fn seq_max(a: Option<u32>, b: u32) -> u32 {
    match a {
        Some(a) if seq_lt(b, a) => a,
        _ => b,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SynInfo {
    isn: u32,
    ack_flag: bool,
    ack: u32,
    /// The SYN's TSval, if it carried the timestamp option (proxy mode learns the clock
    /// offset from the pair, SPEC §3).
    tsval: Option<u32>,
    /// Whether it offered window scaling (RFC 7323: scaling holds only if both SYNs do).
    window_scale: bool,
}

impl SynInfo {
    fn of(seg: &TcpSegment, bytes: &[u8]) -> Self {
        let fields = crate::proxy::TcpFields::find(bytes, seg);
        SynInfo {
            isn: seg.seq,
            ack_flag: seg.ack_flag,
            ack: seg.ack,
            tsval: fields.and_then(|f| f.timestamps(bytes)).map(|(v, _)| v),
            window_scale: fields.is_some_and(|f| f.window_scale.is_some()),
        }
    }
    /// SPEC §5.1: the counterpart has the same flags and the same ACK; ISNs differ freely.
    fn counterpart_of(&self, other: &TcpSegment) -> bool {
        self.ack_flag == other.ack_flag && (!self.ack_flag || self.ack == other.ack)
    }
}

/// The frames of one TCP segment (SPEC §4): one frame, or every IP fragment of a segment that
/// arrived fragmented. A reassembled segment is a segment of its connection like any other:
/// its payload is compared in place across its fragments (no copy), and its frames leave
/// together, in their arrival order, when the segment does.
pub(crate) enum SegFrames<F> {
    /// An unfragmented segment (not yet counted as held when it arrives).
    One(F),
    /// The fragments, sorted by (offset, duplicate) as reassembly hands them over, already
    /// counted as held by reassembly; the first one (offset 0) holds the whole TCP header.
    Fragments(Vec<Piece<F>>),
}

impl<F: Frame> SegFrames<F> {
    /// The bytes of the (first) frame from `offset` (see [`crate::Shard::locate_burst`]).
    fn bytes_from(&self, offset: u32) -> &[u8] {
        self.first().and_then(|f| f.bytes().get(offset as usize..)).unwrap_or_default()
    }

    /// The (first) frame.
    fn first(&self) -> Option<&F> {
        match self {
            SegFrames::One(frame) => Some(frame),
            SegFrames::Fragments(pieces) => pieces.first().map(|p| &p.frame),
        }
    }

    /// A reassembled TCP datagram as a segment, if its first fragment holds the whole TCP
    /// header; otherwise the item back (it is compared as a datagram, SPEC §5.3).
    pub(crate) fn from_item(item: Item<F>) -> Result<(Self, TcpSegment), Item<F>> {
        let Pieces::Many(pieces) = &item.pieces else { return Err(item) };
        let head = pieces.iter().find(|p| p.at == 0 && !p.dup);
        match head.and_then(|p| crate::wire::tcp_in_fragment(p.frame.bytes(), p.data, item.total)) {
            Some(seg) => match item.pieces {
                Pieces::Many(v) => Ok((SegFrames::Fragments(v), seg)),
                Pieces::One(_) => unreachable!("matched as Many above"),
            },
            None => Err(item),
        }
    }

    /// The frame holding the TCP header (where `TcpSegment`'s offsets point).
    pub(crate) fn head(&self) -> Option<&F> {
        match self {
            SegFrames::One(f) => Some(f),
            SegFrames::Fragments(v) => v.iter().find(|p| p.at == 0 && !p.dup).map(|p| &p.frame),
        }
    }

    /// The same, writable (proxy mode moves ports and sequence numbers in the header).
    pub(crate) fn head_mut(&mut self) -> Option<&mut F> {
        match self {
            SegFrames::One(f) => Some(f),
            SegFrames::Fragments(v) => v.iter_mut().find(|p| p.at == 0 && !p.dup).map(|p| &mut p.frame),
        }
    }

    fn head_bytes(&self) -> &[u8] {
        self.head().map_or(&[], |f| f.bytes())
    }

    /// Frames it holds (one, or its fragments).
    fn frame_count(&self) -> usize {
        match self {
            SegFrames::One(_) => 1,
            SegFrames::Fragments(v) => v.len(),
        }
    }

    /// Wire bytes of all its frames (the held-bytes gauges and queue bounds).
    pub(crate) fn wire_len(&self) -> u32 {
        match self {
            SegFrames::One(f) => f.bytes().len() as u32,
            SegFrames::Fragments(v) => v.iter().map(|p| p.len).sum(),
        }
    }

    /// The payload bytes from position `into` of the segment to the end of the frame that
    /// holds them (all of the rest for an unfragmented segment). Empty if out of range.
    #[inline]
    fn payload_run(&self, seg: &TcpSegment, into: u32) -> &[u8] {
        match self {
            SegFrames::One(f) => payload(f.bytes(), seg).and_then(|p| p.get(into as usize..)).unwrap_or(&[]),
            SegFrames::Fragments(v) => fragment_run(v, seg, into),
        }
    }

    /// How many positions from `into` on can be compared in one piece: the rest of the
    /// segment, or of the fragment holding `into` (at least 1, so the comparison always
    /// moves; a frame that changed under us shows as a difference).
    fn run_len(&self, seg: &TcpSegment, into: u32) -> u32 {
        let rest = seg.payload_len - into;
        match self {
            SegFrames::One(_) => rest,
            SegFrames::Fragments(_) => rest.min(self.payload_run(seg, into).len().max(1) as u32),
        }
    }

    /// The whole payload, for diagnostics only (a fragmented one is gathered: allocates).
    fn payload_all(&self, seg: &TcpSegment) -> std::borrow::Cow<'_, [u8]> {
        match self {
            SegFrames::One(f) => std::borrow::Cow::Borrowed(payload(f.bytes(), seg).unwrap_or(&[])),
            SegFrames::Fragments(_) => {
                let mut all = Vec::with_capacity(seg.payload_len as usize);
                while (all.len() as u32) < seg.payload_len {
                    let run = self.payload_run(seg, all.len() as u32);
                    if run.is_empty() {
                        break;
                    }
                    all.extend_from_slice(run);
                }
                all.truncate(seg.payload_len as usize);
                std::borrow::Cow::Owned(all)
            }
        }
    }

    /// Hands every frame to `f` with its length and whether it holds the header, in arrival
    /// order; a fragment list goes back to the pool.
    #[inline]
    pub(crate) fn each(self, out: &mut Out<'_, F>, mut f: impl FnMut(&mut Out<'_, F>, F, u32, bool)) {
        match self {
            SegFrames::One(frame) => {
                let len = frame.bytes().len() as u32;
                f(out, frame, len, true);
            }
            SegFrames::Fragments(v) => each_fragment(v, out, f),
        }
    }

    /// The frames in arrival order, and whether they are counted as held already (the rare
    /// table-full path only: allocates).
    pub(crate) fn into_frames(self) -> (Vec<F>, bool) {
        match self {
            SegFrames::One(f) => (vec![f], false),
            SegFrames::Fragments(mut v) => {
                v.sort_unstable_by_key(|p| p.seq);
                (v.into_iter().map(|p| p.frame).collect(), true)
            }
        }
    }

    /// Releases a held segment's frames toward the clients.
    fn release(self, out: &mut Out<'_, F>, via: Via, arrived: Timestamp) {
        self.each(out, |out, frame, len, _| out.release_held(frame, via, arrived, len));
    }

    /// Frees a held secondary segment's frames.
    pub(crate) fn discard_secondary(self, out: &mut Out<'_, F>, reason: DropReason) {
        self.each(out, |out, frame, len, _| out.release_secondary_held(frame, len, reason));
    }

    /// Counts a segment that arrives as held (its fragments were held by reassembly).
    fn hold(&self, out: &mut Out<'_, F>, side: Side) {
        if let SegFrames::One(f) = self {
            out.hold(side, f.bytes().len() as u32);
        }
    }

    /// Refuses a segment that just arrived (never queued): a fresh frame is dropped (or, for
    /// the secondary, consumed); held fragments leave the held gauges as they go.
    pub(crate) fn refuse(self, out: &mut Out<'_, F>, side: Side, reason: DropReason) {
        match (self, side) {
            (SegFrames::One(f), Side::Secondary) if reason == DropReason::Consumed => out.consume_new(f),
            (SegFrames::One(f), _) => out.drop_new(side, f, reason),
            (frags, Side::Primary) => frags.each(out, |out, frame, len, _| out.drop_held_primary(frame, len, reason)),
            (frags, Side::Secondary) => frags.discard_secondary(out, reason),
        }
    }
}

/// [`SegFrames::payload_run`] of a segment reassembled from fragments (out of line, so the
/// usual one-frame case stays small).
#[inline(never)]
fn fragment_run<'a, F: Frame>(v: &'a [Piece<F>], seg: &TcpSegment, into: u32) -> &'a [u8] {
    // Offsets inside the IP payload: the TCP header comes first.
    let at = (seg.payload_offset - seg.header_offset).saturating_add(into);
    v.iter()
        .filter(|p| !p.dup && p.at <= at && at - p.at < p.data.len)
        .find_map(|p| p.data.of(p.frame.bytes())?.get((at - p.at) as usize..))
        .unwrap_or(&[])
}

/// [`SegFrames::each`] of a segment reassembled from fragments, in arrival order (out of
/// line); the list goes back to the pool.
#[inline(never)]
fn each_fragment<F>(mut v: Vec<Piece<F>>, out: &mut Out<'_, F>, mut f: impl FnMut(&mut Out<'_, F>, F, u32, bool)) {
    v.sort_unstable_by_key(|p| p.seq);
    for p in v.drain(..) {
        let head = p.at == 0 && !p.dup;
        f(out, p.frame, p.len, head);
    }
    out.recycle(v);
}

pub(crate) struct HeldPrimary<F> {
    pub(crate) frames: SegFrames<F>,
    seg: TcpSegment,
    pub(crate) arrived: Timestamp,
    /// Wholly below `compared` on arrival: released via `retransmission` without comparing.
    retransmission: bool,
    pub(crate) len: u32,
}

impl<F: Frame> HeldPrimary<F> {
    fn via(&self) -> Via {
        if self.retransmission {
            Via::Retransmission
        } else {
            Via::Match
        }
    }

    /// Releases the segment toward the clients: what is left after its first `sent` payload
    /// bytes left as a part (only unfragmented segments are released in parts; with `sent`
    /// 0, the whole segment).
    fn release_rest(self, out: &mut Out<'_, F>, via: Via, sent: u32) {
        match self.frames {
            SegFrames::One(frame) if sent > 0 => {
                let len = frame.bytes().len() as u32;
                out.release_held_rest(frame, via, self.arrived, len, sent);
            }
            frames => frames.release(out, via, self.arrived),
        }
    }
}

/// How long a held primary segment whose first bytes are verified waits for the secondary's
/// next bytes before those first bytes leave on their own (see
/// [`TcpConn::release_verified_part`]): a little longer than a busy guest takes between two
/// segments, far shorter than a compare timeout. A quarter of `timeout` when that is shorter.
const PART_WAIT: core::time::Duration = core::time::Duration::from_millis(2);

/// A secondary segment moved into the primary's sequence space (`off` from [`TcpConn`]).
fn shifted(seg: &TcpSegment, off: u32) -> TcpSegment {
    TcpSegment { seq: seg.seq.wrapping_add(off), ..*seg }
}

fn part_wait(timeout: core::time::Duration) -> core::time::Duration {
    PART_WAIT.min(timeout / 4)
}

pub(crate) struct HeldSecondary<F> {
    pub(crate) frames: SegFrames<F>,
    pub(crate) seg: TcpSegment,
    pub(crate) arrived: Timestamp,
    pub(crate) len: u32,
    /// Already kept by one standalone completion: the next one drops it.
    kept: bool,
}

/// How far [`TcpConn::step_in_lock`] got.
enum InLock {
    /// Both segments compared equal to their ends, and nothing follows: `compared` goes here.
    Done(u32),
    /// Compared equal to here; the general loop goes on.
    Partly(u32),
}

/// What occupies a stream position on one side.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cover {
    /// Payload; `dist` = positions until the nearest end of a covering segment; `idx` = a
    /// covering segment (secondary side).
    Data {
        dist: u32,
        idx: usize,
    },
    Fin,
    Rst,
    Nothing,
}

/// What proxy mode learns from the client's own frames of a connection (SPEC §3, §5.1): how
/// much the client lets the guests send ahead, which bounds what a side may normally hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClientView {
    /// The client's SYN (or SYN-ACK) was seen: `window_scale` is known.
    syn_seen: bool,
    /// The shift its SYN offered (0 without the option).
    window_scale: u8,
    /// Largest window field of its later segments, unscaled.
    window_max: u16,
}

/// Window scale assumed for a client whose SYN was not seen (opened before we started):
/// the largest RFC 7323 allows, so an unknown window is never under-estimated; the memory
/// budget (mbuf pool) still bounds what is held.
const UNKNOWN_WINDOW_SCALE: u8 = 14;

/// Slack over the client's window before a queue counts as overflowing: frame headers,
/// retransmitted copies held next to their originals, and a window that just shrank.
fn window_slack(window: u64) -> u64 {
    window / 4 + (64 << 10)
}

/// The diagnostic of a `queue-overflow` request.
fn overflow_detail(side: Side, frames: usize, bytes: u64, window: Option<u64>, cfg: &Config) -> String {
    let max = cfg.max_queue_size;
    match window {
        Some(w) => format!(
            "{} queue {frames} frames / {bytes} bytes: over max_queue_size {max} and the client's window \
             {w} bytes + {} slack",
            side.as_str(),
            window_slack(w)
        ),
        None => format!("{} queue {frames} frames: over max_queue_size {max}", side.as_str()),
    }
}

/// Comparison state of one TCP connection (guest → client direction).
pub(crate) struct TcpConn<F> {
    pub(crate) primary: VecDeque<HeldPrimary<F>>,
    pub(crate) secondary: VecDeque<HeldSecondary<F>>,
    /// The held primary segments that can still cover positions at or above `compared` are
    /// in increasing, non-overlapping sequence order (the usual case). Lets the coverage
    /// scans stop at the first segment starting beyond the position, so a long queue (a
    /// primary far ahead of its secondary) costs O(1) per step instead of O(queue).
    p_in_order: bool,
    /// End of the last in-order primary segment pushed.
    p_tail_end: Option<u32>,
    /// First stream position (after the SYN, or the first primary segment seen mid-stream).
    base: Option<u32>,
    /// Every position before this is verified equal on both sides (SPEC §5.1).
    compared: Option<u32>,
    /// Added to secondary sequence numbers to reach the primary's space: 0 in compare mode,
    /// learned from the SYN pair in proxy mode, 0 again after a checkpoint that replaced the
    /// secondary's state (kept by standalone completions and failovers).
    offset: Option<u32>,
    /// Added to the secondary's TSval to reach the primary's clock; learned with `offset`
    /// (0 when either SYN had no timestamps) and valid whenever `offset` is.
    ts_offset: u32,
    /// Wire bytes of the held frames, per side (queue bounds follow the client's window).
    p_bytes: u64,
    s_bytes: u64,
    /// The client's side of the connection (proxy mode only).
    pub(crate) client: ClientView,
    /// Proxy mode, guest-opened: the secondary's source port when its kernel chose another
    /// than the primary's (see [`crate::pairing`]); client frames to it carry this port.
    pub(crate) secondary_port: Option<u16>,
    p_syn: Option<SynInfo>,
    s_syn: Option<SynInfo>,
    p_ack_max: Option<u32>,
    s_ack_max: Option<u32>,
    /// One past the highest position the primary sent (for the checkpoint reset).
    p_high: Option<u32>,
    /// One past the highest position the secondary sent, in its own space (proxy mode never
    /// acknowledges it beyond that).
    s_high: Option<u32>,
    p_fin: Option<u32>,
    p_rst: Option<u32>,
    /// Secondary RST sequence number, in the secondary's own space.
    s_rst_raw: Option<u32>,
    /// When the secondary reset the connection while the primary had not: a lone secondary
    /// RST is never transmitted, so it is timed here (SPEC §5.1) instead of held.
    s_rst_at: Option<Timestamp>,
    fin_done: bool,
    rst_done: bool,
    diverged: bool,
    /// Reasons already requested this epoch (one request per reason and flow per epoch).
    pub(crate) requested: u16,
    /// A timeout was requested this epoch: no more compare deadlines until the flush.
    pub(crate) timed_out: bool,
    pub(crate) closed_at: Option<Timestamp>,
    /// When the secondary's last segment with data (or SYN, FIN) arrived: a verified part
    /// waits [`PART_WAIT`] from here (a secondary that sends nothing more; its pure ACKs of
    /// client data do not count, Nagle sends those while it holds its short segment back).
    s_last_at: Timestamp,
    /// Payload bytes of the head primary segment already released as parts (see
    /// [`TcpConn::release_verified_part`]); only the head is ever released in parts.
    head_sent: u32,
}

impl<F: Frame> TcpConn<F> {
    /// Reads what a segment of `side` reads first (the stream counts), and returns the other
    /// guest's oldest held payload it is compared with (see [`crate::Shard::locate_burst`]).
    pub(crate) fn warm(&self, side: Side) -> &[u8] {
        std::hint::black_box((self.p_bytes, self.s_bytes, self.compared, self.closed_at));
        self.other_head(side).map(|(frames, offset)| frames.bytes_from(offset)).unwrap_or_default()
    }

    /// The other guest's oldest held frame, the one [`TcpConn::warm`] reads.
    pub(crate) fn held_front(&self, side: Side) -> Option<&F> {
        self.other_head(side).and_then(|(frames, _)| frames.first())
    }

    /// The other guest's oldest held segment (its frames and where its payload starts): what
    /// a segment of `side` in step is compared with.
    fn other_head(&self, side: Side) -> Option<(&SegFrames<F>, u32)> {
        match side {
            Side::Primary => self.secondary.front().map(|h| (&h.frames, h.seg.payload_offset)),
            Side::Secondary => self.primary.front().map(|h| (&h.frames, h.seg.payload_offset)),
        }
    }

    pub(crate) fn new(mode: Mode) -> Self {
        TcpConn {
            primary: VecDeque::new(),
            secondary: VecDeque::new(),
            p_in_order: true,
            p_tail_end: None,
            base: None,
            compared: None,
            offset: match mode {
                Mode::Compare => Some(0),
                Mode::Proxy => None,
            },
            ts_offset: 0,
            p_bytes: 0,
            s_bytes: 0,
            client: ClientView::default(),
            secondary_port: None,
            p_syn: None,
            s_syn: None,
            p_ack_max: None,
            s_ack_max: None,
            p_high: None,
            s_high: None,
            p_fin: None,
            p_rst: None,
            s_rst_raw: None,
            s_rst_at: None,
            fin_done: false,
            rst_done: false,
            diverged: false,
            requested: 0,
            timed_out: false,
            closed_at: None,
            s_last_at: Timestamp(0),
            head_sent: 0,
        }
    }

    /// Whether the primary's SYN of this incarnation was seen.
    pub(crate) fn has_primary_syn(&self) -> bool {
        self.p_syn.is_some()
    }

    /// Opened only by a client's SYN so far: no guest answered, no stream began. Such a flow
    /// (a scan, a flood, a closed port) goes after `linger`, not `conn_idle_timeout`.
    pub(crate) fn unanswered(&self) -> bool {
        self.p_syn.is_none() && self.s_syn.is_none() && self.compared.is_none()
    }

    /// A timer still has something to say about this connection (a lone secondary RST): it
    /// must not be evicted before.
    pub(crate) fn timer_pending(&self) -> bool {
        self.lone_secondary_rst().is_some()
    }

    /// Whether this connection's primary SYN waits for the secondary's (none seen yet).
    pub(crate) fn awaits_secondary_syn(&self) -> bool {
        self.p_syn.is_some() && self.s_syn.is_none()
    }

    /// Whether a secondary SYN with sequence number `isn` repeats the one already seen.
    pub(crate) fn is_secondary_syn(&self, isn: u32) -> bool {
        self.s_syn.is_some_and(|s| s.isn == isn)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.primary.is_empty() && self.secondary.is_empty()
    }

    /// Both FINs compared or a RST pair: the connection lingers, then goes (SPEC §5.1).
    pub(crate) fn is_closed(&self) -> bool {
        self.fin_done || self.rst_done
    }

    /// A SYN with a new ISN on an empty connection starts a new incarnation (port reuse: a
    /// client that rebooted reconnects from the same port — challenge ACK, RST, SYN again —
    /// while the old connection never closed), whichever side shows it first (SPEC §5.1).
    /// Each side's SYN is judged against that side's own earlier SYN (the two guests' ISNs
    /// always differ); a side that sent no SYN yet starts one only if the connection closed
    /// or its stream already began (a SYN never comes mid-stream).
    pub(crate) fn is_new_incarnation(&self, side: Side, seg: &TcpSegment) -> bool {
        if !seg.syn || !self.is_empty() {
            return false;
        }
        let (own, other) = match side {
            Side::Primary => (self.p_syn, self.s_syn),
            Side::Secondary => (self.s_syn, self.p_syn),
        };
        match (own, other) {
            (Some(s), _) => s.isn != seg.seq,
            // The other guest's SYN is here: this is its (late) counterpart.
            (None, Some(_)) => false,
            (None, None) => self.is_closed() || self.compared.is_some(),
        }
    }

    /// A fresh incarnation of this connection that keeps what the client told (its SYN may
    /// have come before the guests' SYN that starts the incarnation).
    pub(crate) fn reincarnate(&mut self, mode: Mode) {
        let client = self.client;
        *self = TcpConn::new(mode);
        self.client = client;
    }

    /// Proxy mode: a client frame of this connection (`seg` parsed from `bytes`) went by.
    pub(crate) fn observe_client(&mut self, seg: &TcpSegment, bytes: &[u8]) {
        if seg.syn {
            // Only a SYN's options matter here (the window scale): walk them for SYNs only.
            let Some(f) = crate::proxy::TcpFields::find(bytes, seg) else { return };
            self.client.syn_seen = true;
            self.client.window_scale = f.window_scale.unwrap_or(0).min(UNKNOWN_WINDOW_SCALE);
        } else if let Some(window) = crate::proxy::window(bytes, seg) {
            // RFC 7323 §2.2: the window field of a SYN is never scaled; later ones are.
            self.client.window_max = self.client.window_max.max(window);
        }
    }

    /// The client's receive window in bytes, once a client segment showed it (never in
    /// compare mode, where the dataplane does not see the client: the bound there is
    /// `max_queue_size` frames, as in QEMU).
    pub(crate) fn client_window(&self) -> Option<u64> {
        if self.client.window_max == 0 {
            return None;
        }
        let shift = if self.p_syn.is_some_and(|s| !s.window_scale) {
            0
        } else if !self.client.syn_seen {
            UNKNOWN_WINDOW_SCALE
        } else {
            self.client.window_scale
        };
        Some(u64::from(self.client.window_max) << shift)
    }

    /// Whether one side's queue holds more than TCP lets it run ahead (SPEC §5.1): over
    /// `max_queue_size` frames *and*, where the client's window is known, over that window
    /// (with slack) in bytes.
    fn over_window(&self, frames: usize, bytes: u64, cfg: &Config) -> bool {
        frames > cfg.max_queue_size && self.client_window().is_none_or(|w| bytes > w + window_slack(w))
    }

    /// The connection's comparison state, for `--explain` and the admin socket's `flows`.
    pub(crate) fn status(&self) -> FlowStatus {
        FlowStatus {
            base: self.base,
            compared: self.compared,
            secondary_ack: self.s_ack_max,
            // Frames, as the datagram flows count them (a fragmented segment holds several).
            held_primary: self.primary.iter().map(|h| h.frames.frame_count()).sum(),
            held_secondary: self.secondary.iter().map(|h| h.frames.frame_count()).sum(),
            head: self.primary.front().and_then(|h| self.hold_reason(h)),
            diverged: self.diverged,
            closed: self.is_closed(),
        }
    }

    pub(crate) fn on_primary(
        &mut self,
        frames: SegFrames<F>,
        seg: &TcpSegment,
        out: &mut Out<'_, F>,
        cfg: &Config,
        key: &FlowKey,
    ) {
        if seg.syn {
            if self.p_syn.is_none() {
                self.p_syn = Some(SynInfo::of(seg, frames.head_bytes()));
                if self.compared.is_none() {
                    let start = seg.seq.wrapping_add(1);
                    self.base = Some(start);
                    self.compared = Some(start);
                }
                self.learn_offset();
            }
            self.p_high = Some(seq_max(self.p_high, seg.seq.wrapping_add(1)));
        } else if self.compared.is_none() {
            // Mid-stream pickup (no SYN seen: opened before we started, or forgotten after
            // `conn_idle_timeout`), or a lone RST answering a client's SYN: the stream starts
            // at the primary's first segment that carries data, FIN or RST — never at a
            // zero-length one: a keepalive or window probe sits at snd_nxt − 1, a position
            // that is never sent again (SPEC §5.1), and starting there would leave a hole.
            if seg.has_positions() || seg.rst {
                self.base = Some(seg.seq);
                self.compared = Some(seg.seq);
            }
            // Proxy mode: a connection older than what we have seen was opened before the last
            // checkpoint (or the initial synchronisation), so the secondary has the primary's
            // sequence space: offset 0, as after every checkpoint.
            if self.offset.is_none() && self.s_syn.is_none() {
                self.offset = Some(0);
            }
        }
        if seg.ack_flag {
            self.p_ack_max = Some(seq_max(self.p_ack_max, seg.ack));
        }
        if seg.has_positions() {
            self.p_high = Some(seq_max(self.p_high, seg.end()));
        }
        if seg.fin {
            self.p_fin = Some(seg.data_start().wrapping_add(seg.payload_len));
        }
        if seg.rst {
            self.p_rst = Some(seg.seq);
        }
        let retransmission = !seg.syn && seg.has_positions() && self.compared.is_some_and(|c| seq_le(seg.end(), c));
        if let SegFrames::One(f) = &frames {
            if let Some(next) = self.primary_meets_head(seg, f.bytes()) {
                // Compared on arrival, never queued: it goes at once (counted as held and
                // released, a hold time of zero), and the secondary's copy is consumed.
                self.compared = Some(next);
                frames.hold(out, Side::Primary);
                frames.release(out, Via::Match, out.now);
                return self.consume_secondary(out);
            }
        }
        let len = frames.wire_len();
        // Fragments come held (reassembly counted them against the budget already).
        let fresh = matches!(frames, SegFrames::One(_));
        if fresh && out.over_budget(cfg, 1, u64::from(len)) {
            // SPEC §6: only exhausted memory drops primary output, and it is counted; the
            // overflow and pressure requests were made long before.
            out.budget_request(&mut self.requested, key, cfg);
            frames.refuse(out, Side::Primary, DropReason::MemoryBudget);
        } else {
            frames.hold(out, Side::Primary);
            self.p_bytes += u64::from(len);
            if self.primary.is_empty() {
                self.p_in_order = true;
                self.p_tail_end = None;
            }
            // Retransmissions wholly below `compared` never cover a position to compare, so
            // they cannot break the ordering the scans rely on.
            if seg.has_positions() && !retransmission {
                if self.p_tail_end.is_some_and(|end| !seq_le(end, seg.data_start())) {
                    self.p_in_order = false;
                }
                self.p_tail_end = Some(seg.end());
            }
            self.primary.push_back(HeldPrimary { frames, seg: *seg, arrived: out.now, retransmission, len });
            if self.over_window(self.primary.len(), self.p_bytes, cfg) {
                let (n, bytes, window) = (self.primary.len(), self.p_bytes, self.client_window());
                out.request(&mut self.requested, CheckpointReason::QueueOverflow, key, || {
                    overflow_detail(Side::Primary, n, bytes, window, cfg)
                });
            }
        }
        self.progress(out, key);
    }

    pub(crate) fn on_secondary(
        &mut self,
        frames: SegFrames<F>,
        seg: &TcpSegment,
        out: &mut Out<'_, F>,
        cfg: &Config,
        key: &FlowKey,
    ) {
        if seg.ack_flag {
            self.s_ack_max = Some(seq_max(self.s_ack_max, seg.ack));
        }
        if seg.syn && self.s_syn.is_none() {
            self.s_syn = Some(SynInfo::of(seg, frames.head_bytes()));
            self.learn_offset();
        }
        self.secondary_sent_up_to(seg);
        if seg.has_positions() {
            self.s_last_at = out.now;
        }
        if seg.rst {
            self.s_rst_raw = Some(seg.seq);
            if self.p_rst.is_none() && self.s_rst_at.is_none() {
                self.s_rst_at = Some(out.now);
            }
            // A RST against the primary's SYN or SYN-ACK: the guests disagree on the
            // connection itself, a miscompare at once (SPEC §5.1).
            if self.p_syn.is_some() && self.s_syn.is_none() && !self.diverged {
                self.diverged = true;
                out.request(&mut self.requested, CheckpointReason::TcpRstMismatch, key, || {
                    format!("secondary reset (seq {}) where the primary sent SYN/SYN-ACK", seg.seq)
                });
            }
        }
        if let SegFrames::One(f) = &frames {
            if let Some(next) = self.secondary_meets_head(seg, f.bytes()) {
                // Compared on arrival, never held: `compared` moves past it, the primary's
                // segment goes if nothing else holds it, and this frame is consumed.
                self.compared = Some(next);
                self.release_ready(out);
                return frames.refuse(out, Side::Secondary, DropReason::Consumed);
            }
        }
        let below = match (self.compared, self.offset) {
            (Some(c), Some(off)) => seq_le(seg.end().wrapping_add(off), c),
            _ => false,
        };
        if !seg.has_positions() || below {
            // Nothing left to compare (SYN, pure ACK, RST, or data below `compared`, which
            // SPEC §5.1 says is consumed silently); its flags/ACK were recorded above.
            frames.refuse(out, Side::Secondary, DropReason::Consumed);
        } else if matches!(frames, SegFrames::One(_)) && out.over_secondary_budget(cfg, 1, u64::from(frames.wire_len()))
        {
            // The memory budget is kept for primary output: the secondary's frame goes (it is
            // never transmitted; the pressure checkpoint resynchronises).
            out.budget_request(&mut self.requested, key, cfg);
            frames.refuse(out, Side::Secondary, DropReason::MemoryBudget);
        } else if self.over_window(self.secondary.len() + 1, self.s_bytes + u64::from(frames.wire_len()), cfg) {
            let (n, bytes, window) = (self.secondary.len(), self.s_bytes, self.client_window());
            out.request(&mut self.requested, CheckpointReason::QueueOverflow, key, || {
                overflow_detail(Side::Secondary, n, bytes, window, cfg)
            });
            // Dropping secondary output is safe (it is never transmitted); the checkpoint
            // just requested resynchronises the secondary.
            frames.refuse(out, Side::Secondary, DropReason::QueueFull);
        } else {
            let len = frames.wire_len();
            frames.hold(out, Side::Secondary);
            self.s_bytes += u64::from(len);
            self.secondary.push_back(HeldSecondary { frames, seg: *seg, arrived: out.now, len, kept: false });
        }
        self.progress(out, key);
    }

    /// Takes the held secondary segments (oldest first) out of the comparison: a failover
    /// decides what becomes of them.
    pub(crate) fn take_secondary(&mut self) -> VecDeque<HeldSecondary<F>> {
        self.s_bytes = 0;
        std::mem::take(&mut self.secondary)
    }

    /// `(sequence offset, TSval offset)` from the secondary's space to the primary's, once
    /// known.
    pub(crate) fn offsets(&self) -> Option<(u32, u32)> {
        self.offset.map(|o| (o, self.ts_offset))
    }

    /// One past the highest position the secondary sent, in its own space, once it sent any.
    pub(crate) fn secondary_sent(&self) -> Option<u32> {
        self.s_high
    }

    /// The secondary sent `seg` (compared, or forwarded after a failover).
    fn secondary_sent_up_to(&mut self, seg: &TcpSegment) {
        if seg.syn {
            self.s_high = Some(seq_max(self.s_high, seg.seq.wrapping_add(1)));
        }
        if seg.has_positions() {
            self.s_high = Some(seq_max(self.s_high, seg.end()));
        }
    }

    fn learn_offset(&mut self) {
        if self.offset.is_none() {
            if let (Some(p), Some(s)) = (self.p_syn, self.s_syn) {
                self.offset = Some(p.isn.wrapping_sub(s.isn));
                self.ts_offset = match (p.tsval, s.tsval) {
                    (Some(p), Some(s)) => p.wrapping_sub(s),
                    _ => 0,
                };
            }
        }
    }

    /// After a failover to the secondary (SPEC §6): a secondary segment of this connection is
    /// about to be forwarded; returns the offsets that move it into the space the client
    /// knows. A connection the client learned from the primary (the primary's SYN was seen)
    /// learns its offset from the secondary's SYN even now; a connection that starts after
    /// the failover (or a new incarnation) is the secondary's own: offset 0.
    pub(crate) fn forward_offsets(&mut self, seg: &TcpSegment, bytes: &[u8], mode: Mode, aliased: bool) -> (u32, u32) {
        self.secondary_sent_up_to(seg);
        if seg.syn && self.secondary_port.is_some() && !aliased {
            // The secondary's socket of this connection uses another port (a paired
            // guest-opened connection): this SYN is a new connection of the secondary that
            // happens to use the primary's port. The live connection is left alone.
            return (0, 0);
        }
        if seg.syn {
            let fresh = self.s_syn.is_some_and(|s| s.isn != seg.seq) || (self.p_syn.is_none() && self.s_syn.is_none());
            if fresh && self.offset.is_some() {
                // A new incarnation (port reuse) or a connection the primary never opened.
                self.reincarnate(mode);
                self.offset = Some(0);
            }
            if self.s_syn.is_none() {
                self.s_syn = Some(SynInfo::of(seg, bytes));
                self.learn_offset();
            }
        }
        if self.offset.is_none() && self.p_syn.is_none() {
            // The client never saw this connection from the primary: the secondary's own
            // space is the client's.
            self.offset = Some(0);
        }
        self.offsets().unwrap_or((0, 0))
    }

    /// Whether client frames of this connection must wait before they can be mirrored to
    /// the secondary: its offset is unknown while the client already knows the primary's
    /// SYN (the secondary's SYN has not come yet).
    pub(crate) fn offset_pending(&self) -> bool {
        self.offset.is_none() && self.p_syn.is_some()
    }

    fn progress(&mut self, out: &mut Out<'_, F>, key: &FlowKey) {
        self.advance(out, key);
        self.release_ready(out);
        self.consume_secondary(out);
    }

    fn primary_cover(&self, p: u32) -> Cover {
        let mut dist = u32::MAX;
        let mut fin = false;
        for h in &self.primary {
            let start = h.seg.data_start();
            if self.p_in_order && h.seg.has_positions() && seq_lt(p, start) {
                break;
            }
            let into = p.wrapping_sub(start);
            if into < h.seg.payload_len {
                dist = dist.min(h.frames.run_len(&h.seg, into));
            } else if h.seg.fin && start.wrapping_add(h.seg.payload_len) == p {
                fin = true;
            }
        }
        if dist != u32::MAX {
            Cover::Data { dist, idx: 0 }
        } else if fin {
            Cover::Fin
        } else if self.p_rst.is_some_and(|r| seq_le(r, p)) {
            Cover::Rst
        } else {
            Cover::Nothing
        }
    }

    fn secondary_cover(&self, p: u32, off: u32) -> Cover {
        let mut fin = false;
        for (idx, h) in self.secondary.iter().enumerate() {
            let start = h.seg.data_start().wrapping_add(off);
            let into = p.wrapping_sub(start);
            if into < h.seg.payload_len {
                return Cover::Data { dist: h.frames.run_len(&h.seg, into), idx };
            } else if h.seg.fin && start.wrapping_add(h.seg.payload_len) == p {
                fin = true;
            }
        }
        if fin {
            Cover::Fin
        } else if self.s_rst_raw.is_some_and(|r| seq_le(r.wrapping_add(off), p)) {
            Cover::Rst
        } else {
            Cover::Nothing
        }
    }

    /// Moves `compared` forward over every position both sides have, comparing bytes.
    fn advance(&mut self, out: &mut Out<'_, F>, key: &FlowKey) {
        if self.diverged {
            return;
        }
        let (Some(mut p), Some(off)) = (self.compared, self.offset) else {
            return;
        };
        if self.secondary.is_empty() && self.s_rst_raw.is_none() {
            // The secondary covers nothing (no data, no FIN, no RST): nothing can be compared
            // or found different yet. The usual case for a primary segment, which comes first.
            return;
        }
        match self.step_in_lock(p, off) {
            Some(InLock::Done(next)) => {
                self.compared = Some(next);
                return;
            }
            Some(InLock::Partly(next)) => p = next,
            None => {}
        }
        loop {
            let pc = self.primary_cover(p);
            let sc = self.secondary_cover(p, off);
            let reason = match (pc, sc) {
                (Cover::Data { dist: pd, .. }, Cover::Data { dist: sd, idx }) => {
                    let d = pd.min(sd);
                    match self.compare_chunk(p, d, idx, off) {
                        None => {
                            p = p.wrapping_add(d);
                            continue;
                        }
                        Some(detail) => {
                            self.compared = Some(p);
                            self.diverged = true;
                            out.request(&mut self.requested, CheckpointReason::TcpPayloadMismatch, key, || detail);
                            return;
                        }
                    }
                }
                (Cover::Fin, Cover::Fin) => {
                    p = p.wrapping_add(1);
                    self.fin_done = true;
                    break;
                }
                (Cover::Rst, Cover::Rst) => {
                    self.rst_done = true;
                    break;
                }
                (Cover::Fin, Cover::Data { .. }) | (Cover::Data { .. }, Cover::Fin) => CheckpointReason::TcpFinMismatch,
                (Cover::Rst, Cover::Data { .. } | Cover::Fin) | (Cover::Data { .. } | Cover::Fin, Cover::Rst) => {
                    CheckpointReason::TcpRstMismatch
                }
                _ => break,
            };
            self.compared = Some(p);
            self.diverged = true;
            let rel = self.base.map_or(0, |b| p.wrapping_sub(b));
            let name = |c: Cover| match c {
                Cover::Data { .. } => "data",
                Cover::Fin => "FIN",
                Cover::Rst => "RST",
                Cover::Nothing => "nothing",
            };
            out.request(&mut self.requested, reason, key, || {
                format!("at seq {p} (stream +{rel}): primary has {}, secondary has {}", name(pc), name(sc))
            });
            return;
        }
        self.compared = Some(p);
    }

    /// The lock-step case of [`TcpConn::advance`]'s first step, without its cover searches:
    /// one unfragmented segment held on each side, both covering `p`, their bytes equal up to
    /// where the shorter one ends. `Done` when that consumed both and nothing follows them
    /// (no FIN, no RST known), so the searches could only stop there; `None` for anything else,
    /// different bytes included (the general loop finds the difference and describes it).
    fn step_in_lock(&self, p: u32, off: u32) -> Option<InLock> {
        if self.primary.len() != 1 || self.secondary.len() != 1 {
            return None;
        }
        let (h, s) = (self.primary.front()?, self.secondary.front()?);
        let (SegFrames::One(_), SegFrames::One(_)) = (&h.frames, &s.frames) else { return None };
        let into_p = p.wrapping_sub(h.seg.data_start());
        let into_s = p.wrapping_sub(s.seg.data_start().wrapping_add(off));
        if into_p >= h.seg.payload_len || into_s >= s.seg.payload_len {
            return None;
        }
        let (rest_p, rest_s) = (h.seg.payload_len - into_p, s.seg.payload_len - into_s);
        let d = rest_p.min(rest_s);
        let a = h.frames.payload_run(&h.seg, into_p).get(..d as usize)?;
        let b = s.frames.payload_run(&s.seg, into_s).get(..d as usize)?;
        if a != b {
            return None;
        }
        let next = p.wrapping_add(d);
        let ends = rest_p == rest_s && !h.seg.fin && !s.seg.fin;
        Some(if ends && self.p_rst.is_none() && self.s_rst_raw.is_none() {
            InLock::Done(next)
        } else {
            InLock::Partly(next)
        })
    }

    /// The lock-step case of a secondary segment, decided before it is queued: it carries
    /// exactly the payload of the one held primary segment, which starts at `compared`, with
    /// the same bytes, and nothing else is pending (no SYN, FIN or RST on either side, no
    /// other segment held, no part of the primary's released). Returns the new `compared`.
    /// The general path would hold the segment, compare it, release the primary's and consume
    /// this one: the same actions, without the round trip through the queue. Not held, it is
    /// not weighed against the memory budget or the queue bound either.
    fn secondary_meets_head(&self, seg: &TcpSegment, bytes: &[u8]) -> Option<u32> {
        if !self.secondary.is_empty() || self.primary.len() != 1 || self.head_sent != 0 {
            return None;
        }
        let h = self.primary.front()?;
        let off = self.offset?;
        self.in_lock(&h.seg, &h.frames, &shifted(seg, off), bytes)
    }

    /// The lock-step case of a primary segment when the secondary sent first: it carries
    /// exactly the payload of the one held secondary segment, which starts at `compared`,
    /// with the same bytes, nothing else is pending, and the secondary has acknowledged what
    /// the segment acknowledges (nothing else would hold it). Returns the new `compared`. The
    /// general path would hold it, compare it, release it and consume the secondary's: the
    /// same actions. Never held, it is not weighed against the memory budget or the queue
    /// bound (which only ever drop a primary frame for the memory it would take).
    fn primary_meets_head(&self, seg: &TcpSegment, bytes: &[u8]) -> Option<u32> {
        if !self.primary.is_empty() || self.secondary.len() != 1 || self.head_sent != 0 {
            return None;
        }
        if self.awaits_ack(seg) {
            return None;
        }
        let s = self.secondary.front()?;
        let off = self.offset?;
        self.in_lock(&shifted(&s.seg, off), &s.frames, seg, bytes)
    }

    /// Whether primary segment `seg` acknowledges more than the secondary has (it then waits:
    /// the client must not learn of data the secondary has not taken).
    fn awaits_ack(&self, seg: &TcpSegment) -> bool {
        seg.ack_flag && !self.s_ack_max.is_some_and(|a| seq_le(seg.ack, a))
    }

    /// Whether `seg` (in `bytes`, one frame) and the held segment `held` (both in the
    /// primary's sequence space) carry the same plain payload starting at `compared`, with no
    /// SYN, FIN or RST anywhere in the connection's way; returns the position after them.
    #[inline]
    fn in_lock(&self, held: &TcpSegment, frames: &SegFrames<F>, seg: &TcpSegment, bytes: &[u8]) -> Option<u32> {
        let c = self.compared?;
        let plain = |s: &TcpSegment| !s.syn && !s.fin && !s.rst && s.payload_len > 0 && s.seq == c;
        if self.diverged || self.p_rst.is_some() || self.s_rst_raw.is_some() || !plain(seg) || !plain(held) {
            return None;
        }
        let (SegFrames::One(f), true) = (frames, held.payload_len == seg.payload_len) else { return None };
        (payload(f.bytes(), held)? == payload(bytes, seg)?).then(|| c.wrapping_add(seg.payload_len))
    }

    /// Compares `[p, p+d)` of every primary segment covering `p` with secondary segment
    /// `idx`. Checking every covering primary copy means a primary duplicate with different
    /// bytes cannot slip out unverified. Returns a diagnostic on the first difference.
    fn compare_chunk(&self, p: u32, d: u32, idx: usize, off: u32) -> Option<String> {
        let s = self.secondary.get(idx)?;
        let s_start = s.seg.data_start().wrapping_add(off);
        let s_from = p.wrapping_sub(s_start);
        let s_bytes = s.frames.payload_run(&s.seg, s_from).get(..d as usize);
        for h in &self.primary {
            let start = h.seg.data_start();
            if self.p_in_order && h.seg.has_positions() && seq_lt(p, start) {
                break;
            }
            let into = p.wrapping_sub(start);
            if into >= h.seg.payload_len {
                continue;
            }
            let p_bytes = h.frames.payload_run(&h.seg, into).get(..d as usize);
            let first_diff = match (p_bytes, s_bytes) {
                (Some(a), Some(b)) if a == b => continue,
                (Some(a), Some(b)) => a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0),
                _ => 0,
            };
            let at = p.wrapping_add(first_diff as u32);
            let rel = self.base.map_or(0, |b| at.wrapping_sub(b));
            let mut detail = format!(
                "first difference at seq {at} (stream +{rel}); primary segment seq {} len {}, \
                 secondary segment seq {} len {};",
                start, h.seg.payload_len, s_start, s.seg.payload_len
            );
            hex_window(&mut detail, "primary", &h.frames.payload_all(&h.seg), start, at);
            hex_window(&mut detail, "secondary", &s.frames.payload_all(&s.seg), s_start, at);
            return Some(detail);
        }
        None
    }

    fn hold_reason(&self, h: &HeldPrimary<F>) -> Option<HoldReason> {
        let blocked = if self.diverged { HoldReason::Diverged } else { HoldReason::AwaitingSecondaryData };
        if h.seg.syn && !self.s_syn.is_some_and(|s| s.counterpart_of(&h.seg)) {
            return Some(if self.diverged { blocked } else { HoldReason::AwaitingSynCounterpart });
        }
        if h.seg.rst && !self.rst_done {
            return Some(if self.diverged { blocked } else { HoldReason::AwaitingRst });
        }
        if h.seg.has_positions() && !self.compared.is_some_and(|c| seq_le(h.seg.end(), c)) {
            return Some(blocked);
        }
        if self.awaits_ack(&h.seg) {
            return Some(HoldReason::AwaitingAck);
        }
        None
    }

    /// Releases from the FIFO head only: a later frame never overtakes an earlier held one.
    fn release_ready(&mut self, out: &mut Out<'_, F>) {
        while let Some(h) = self.primary.front() {
            if self.hold_reason(h).is_some() {
                break;
            }
            let Some(h) = self.primary.pop_front() else {
                break;
            };
            let via = h.via();
            self.p_bytes = self.p_bytes.saturating_sub(u64::from(h.len));
            if self.head_sent == 0 {
                h.frames.release(out, via, h.arrived);
            } else {
                h.release_rest(out, via, std::mem::take(&mut self.head_sent));
            }
        }
    }

    fn consume_secondary(&mut self, out: &mut Out<'_, F>) {
        let (Some(c), Some(off)) = (self.compared, self.offset) else {
            return;
        };
        // The usual case first: the oldest segments are the compared ones (popped, not
        // removed: `VecDeque::remove` shifts, even at the front).
        while self.secondary.front().is_some_and(|h| seq_le(h.seg.end().wrapping_add(off), c)) {
            if let Some(h) = self.secondary.pop_front() {
                self.s_bytes = self.s_bytes.saturating_sub(u64::from(h.len));
                h.frames.discard_secondary(out, DropReason::Consumed);
            }
        }
        let mut i = 1;
        while i < self.secondary.len() {
            let done = self.secondary.get(i).is_some_and(|h| seq_le(h.seg.end().wrapping_add(off), c));
            if done {
                if let Some(h) = self.secondary.remove(i) {
                    self.s_bytes = self.s_bytes.saturating_sub(u64::from(h.len));
                    h.frames.discard_secondary(out, DropReason::Consumed);
                }
            } else {
                i += 1;
            }
        }
    }

    /// The earliest per-packet compare deadline (SPEC §6), if one is armed.
    #[inline]
    pub(crate) fn compare_deadline(&self, timeout: core::time::Duration) -> Option<Timestamp> {
        if self.diverged || self.timed_out {
            return None;
        }
        let queues = crate::timer::oldest_deadline(
            self.primary.front().map(|h| h.arrived),
            self.secondary.front().map(|h| h.arrived),
            timeout,
        );
        let earliest = |a: Option<Timestamp>, b: Timestamp| Some(a.map_or(b, |a| a.min(b)));
        let mut at = queues;
        if let Some(t) = self.lone_secondary_rst() {
            at = earliest(at, t.saturating_add(timeout));
        }
        if self.verified_part().is_some() {
            at = earliest(at, self.s_last_at.saturating_add(part_wait(timeout)));
        }
        at
    }

    /// The verified payload bytes of the head primary segment that have not left yet, as
    /// `(from, to)` offsets into its payload, when they may leave ahead of the rest: the
    /// secondary has sent (and matched) the segment's first bytes but not all of them, and
    /// nothing else holds the segment (no SYN or RST to pair, its ACK covered). One frame
    /// only: a segment reassembled from fragments waits whole.
    fn verified_part(&self) -> Option<(u32, u32)> {
        let (h, c) = (self.primary.front()?, self.compared?);
        // The usual answer first: `compared` is not inside the head segment's unsent bytes.
        let verified = c.wrapping_sub(h.seg.data_start());
        if !(self.head_sent < verified && verified < h.seg.payload_len) {
            return None;
        }
        if self.diverged || h.seg.syn || h.seg.rst || !matches!(h.frames, SegFrames::One(_)) {
            return None;
        }
        if self.awaits_ack(&h.seg) {
            return None;
        }
        Some((self.head_sent, verified))
    }

    /// Releases the verified first bytes of the head primary segment as a part when the
    /// secondary has sent nothing for [`PART_WAIT`]: positions below `compared` whose ACK the
    /// secondary has sent, as SPEC §5.1's release rule asks, in a frame of their own; the
    /// segment itself is still released by that rule. The
    /// secondary sent the segment's first bytes, then stopped: its TCP holds a short segment
    /// back until the client acknowledges what it sent (Nagle), or its congestion window is
    /// full — and the client can acknowledge nothing the held segment carries. Without the
    /// part the connection waits for the compare timeout (a guest offered TSO hands over
    /// 64 KiB segments, so its secondary stops inside one often). The rest stays held and
    /// leaves as [`crate::Action::ReleaseRest`].
    pub(crate) fn release_verified_part(&mut self, out: &mut Out<'_, F>, timeout: core::time::Duration) {
        let Some((from, to)) = self.verified_part() else { return };
        if self.s_last_at.saturating_add(part_wait(timeout)) > out.now {
            return;
        }
        let Some(h) = self.primary.front() else { return };
        let SegFrames::One(frame) = &h.frames else { return };
        let mut bytes = Vec::new();
        if crate::segment::cut_payload(frame.bytes(), from as usize..to as usize, &mut bytes).is_err() {
            return;
        }
        let via = h.via();
        self.head_sent = to;
        out.release_part(bytes.into_boxed_slice(), via);
    }

    /// When the secondary reset a connection the primary has not reset (yet).
    fn lone_secondary_rst(&self) -> Option<Timestamp> {
        self.s_rst_at.filter(|_| self.p_rst.is_none() && !self.rst_done)
    }

    /// Which timeout, if any, has expired at `now` (SPEC §5.1, §6), with a diagnostic.
    pub(crate) fn expired(&self, now: Timestamp, timeout: core::time::Duration) -> Option<(CheckpointReason, String)> {
        if self.diverged || self.timed_out {
            return None;
        }
        if let Some(at) = self.lone_secondary_rst().filter(|t| t.saturating_add(timeout) <= now) {
            return Some((
                CheckpointReason::TcpRstMismatch,
                format!(
                    "secondary reset the connection at {at} (seq {:?}); the primary did not within \
                     compare_timeout; compared {:?}",
                    self.s_rst_raw, self.compared
                ),
            ));
        }
        if let Some(h) = self.primary.front() {
            if h.arrived.saturating_add(timeout) <= now {
                let why = self.hold_reason(h);
                let reason = match why {
                    Some(HoldReason::AwaitingAck) => CheckpointReason::AckLagTimeout,
                    // A lone primary RST (SPEC §5.1): the secondary did not reset too.
                    Some(HoldReason::AwaitingRst) => CheckpointReason::TcpRstMismatch,
                    _ => CheckpointReason::TimeoutPrimary,
                };
                return Some((
                    reason,
                    format!(
                        "primary segment seq {} len {} ack {} held since {} ({}); compared {:?}, \
                         secondary ack {:?}, {} primary / {} secondary held",
                        h.seg.seq,
                        h.seg.payload_len,
                        h.seg.ack,
                        h.arrived,
                        why.map_or("releasable", HoldReason::as_str),
                        self.compared,
                        self.s_ack_max,
                        self.primary.len(),
                        self.secondary.len()
                    ),
                ));
            }
        }
        if let Some(h) = self.secondary.front() {
            if h.arrived.saturating_add(timeout) <= now {
                return Some((
                    CheckpointReason::TimeoutSecondary,
                    format!(
                        "secondary segment seq {} len {} held since {}; compared {:?}, {} \
                         secondary held",
                        h.seg.seq,
                        h.seg.payload_len,
                        h.arrived,
                        self.compared,
                        self.secondary.len()
                    ),
                ));
            }
        }
        None
    }

    /// Checkpoint completion (SPEC §6): release every held primary frame in order, drop the
    /// secondary's, and make the secondary's state the primary's.
    ///
    /// `resync` says whether the secondary guest really became a copy of the primary (a
    /// frame's `COLO_CHECKPOINT`): then its sequence space and clock are the primary's and the
    /// offsets become 0. Otherwise (a standalone completion, a failover) no guest changed:
    /// the offsets stay, and held secondary segments that reach past the new `compared` stay
    /// held to be compared with what the primary sends next — dropping them would leave the
    /// primary's next bytes without a counterpart (the client acknowledges them, so the
    /// secondary never sends them again) and turn one divergence into a storm.
    pub(crate) fn flush(&mut self, out: &mut Out<'_, F>, resync: bool) {
        if let Some(h) = self.primary.pop_front() {
            h.release_rest(out, Via::Flush, std::mem::take(&mut self.head_sent));
        }
        while let Some(h) = self.primary.pop_front() {
            h.frames.release(out, Via::Flush, h.arrived);
        }
        self.p_bytes = 0;
        if let Some(high) = self.p_high {
            self.compared = Some(high);
            if self.base.is_none() {
                self.base = Some(high);
            }
        }
        // Only while the primary's stream goes on: after its FIN or RST nothing would ever
        // consume what the secondary sent beyond it.
        let keep_from = match (resync, self.compared, self.offset) {
            (false, Some(c), Some(off)) if self.p_fin.is_none() && self.p_rst.is_none() => Some((c, off)),
            _ => None,
        };
        let mut i = 0;
        while i < self.secondary.len() {
            let ahead = keep_from.is_some_and(|(c, off)| {
                self.secondary.get(i).is_some_and(|h| !h.kept && seq_lt(c, h.seg.end().wrapping_add(off)))
            });
            if ahead {
                // A fresh compare window from this completion on (its old arrival would time
                // out again at once), and kept once only: if the primary never sends those
                // positions, the next completion drops it instead of keeping it forever.
                if let Some(h) = self.secondary.get_mut(i) {
                    h.arrived = out.now;
                    h.kept = true;
                }
                i += 1;
            } else if let Some(h) = self.secondary.remove(i) {
                self.s_bytes = self.s_bytes.saturating_sub(u64::from(h.len));
                h.frames.discard_secondary(out, DropReason::Flushed);
            }
        }
        self.s_ack_max = self.p_ack_max;
        if resync {
            self.offset = Some(0);
            self.ts_offset = 0;
            self.s_syn = self.p_syn;
            self.secondary_port = None;
            // The secondary is now a copy of the primary: it has sent what the primary sent.
            self.s_high = self.p_high;
        }
        let off = self.offset.unwrap_or(0);
        self.s_rst_raw = self.p_rst.map(|r| r.wrapping_sub(off));
        self.s_rst_at = None;
        self.fin_done |= self.p_fin.is_some();
        self.rst_done |= self.p_rst.is_some();
        self.diverged = false;
        self.requested = 0;
        self.timed_out = false;
    }
}
