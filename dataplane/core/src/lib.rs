//! Sans-IO COLO comparator core (SPEC §4–§6): frames and `now` go in, actions come out.
//!
//! This crate owns the comparison logic and must never read a clock, touch DPDK, log on the
//! packet path, or use `unsafe`. The runtime (DPDK lcores), `colo-replay`, the property tests
//! and the benchmarks all drive the same [`Shard`] value:
//!
//! ```text
//! shard.handle(side, frame, now);          // or handle_timeout / checkpoint_done / failover
//! while let Some(action) = shard.poll_action() { /* transmit, free, or forward a request */ }
//! ```
//!
//! Module map: [`wire`] parses frames into compact summaries, [`rss`] is the software Toeplitz
//! hash used to pick a shard, [`tcp`] compares one TCP connection's byte streams, [`shard`]
//! owns the flow table, timers and actions, [`counters`] the SPEC §10 statistics and
//! [`checkpoint`] the request reasons of SPEC §6. `datagram` compares UDP/ICMP/ICMPv6, other
//! IP protocols and (under the `compare` policy) non-IP frames with a bounded reorder window;
//! `reasm` reassembles IPv4/IPv6 fragments per side with bounded memory; [`proxy`] does proxy
//! mode's byte surgery (ACK/SACK/TSecr of client frames, seq/TSval of the secondary's output
//! after a failover, ports) and `pairing` pairs guest-opened connections whose guests chose
//! different source ports. At the bottom, [`reasons`] names the outcomes (why a frame was
//! released or handed back) and `out` is the output sink the comparison modules write to; the
//! imports run one way, from `shard` down to them, with no cycle.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod checksum;
pub mod counters;
mod datagram;
mod fifo;
pub mod fixtures;
mod flow_index;
mod out;
mod pairing;
pub mod proxy;
mod reasm;
pub mod reasons;
pub mod rss;
pub mod segment;
pub mod shard;
pub mod tcp;
mod time;
mod timer;
pub mod wire;

pub use checkpoint::{CheckpointReason, CheckpointRequest};
pub use counters::{Counters, HoldTime};
pub use out::Action;
pub use proxy::ClientRewrite;
pub use reasons::{DropReason, FlowStatus, HoldReason, Via};
pub use shard::{ClientSegment, Shard};
pub use time::Timestamp;
pub use wire::{FlowKey, MalformedReason};

use core::time::Duration;

/// A frame handle the shard can hold and give back: an owned buffer, a DPDK mbuf wrapper, ….
///
/// The shard only reads the bytes; ownership returns to the caller in an [`Action`] so the
/// runtime decides whether to transmit or free it. Implementations must return the same bytes
/// on every call (the parser's offsets are reused later); if they do not, comparisons fail
/// safely (a mismatch), never a panic.
pub trait Frame {
    /// The whole frame, starting at the Ethernet header.
    fn bytes(&self) -> &[u8];
    /// The same bytes, writable: proxy mode rewrites the secondary's TCP output in place after
    /// a failover to it (SPEC §6). Only called on frames about to be forwarded.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Asks the cache for what [`Frame::bytes`] reads before the bytes themselves, and
    /// returns at once: a frame behind a handle (a DPDK mbuf, whose header holds the data's
    /// address) names that memory here. Changes nothing; the default asks for nothing.
    #[inline]
    fn prefetch(&self) {}
}

impl Frame for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl Frame for Box<[u8]> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// Which guest a frame came from (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The guest whose output reaches the clients.
    Primary,
    /// The guest whose output only proves the primary's output is reproducible.
    Secondary,
}

impl Side {
    /// `primary` / `secondary`, as used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Secondary => "secondary",
        }
    }
}

/// Where the secondary's TCP sequence numbers live (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The secondary's segments (except SYN/SYN-ACK) already use the primary's sequence space.
    Compare,
    /// The shard learns the ISN offset from the SYN pair of each connection.
    Proxy,
}

/// What happens to non-IP and malformed frames (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonIpPolicy {
    /// Release the primary's frame at once, drop the secondary's (QEMU's behaviour).
    Passthrough,
    /// Whole-frame FIFO match, one queue per shard (the runtime sends every frame without a
    /// flow key to shard 0, so that is one queue in all), with the datagram window and
    /// timeout rules; a miscompare is `other-mismatch` on flow `non-ip`. Whole frame means
    /// every byte including MAC addresses and Ethernet padding (SPEC §4 says whole frame).
    Compare,
}

/// Shard configuration. All durations are virtual: the shard compares them with the `now`
/// arguments it is given.
#[derive(Clone, Debug)]
pub struct Config {
    /// A held packet older than this is a checkpoint (`timeout-*`, `ack-lag-timeout`; SPEC §6).
    pub compare_timeout: Duration,
    /// Per-connection, per-side queue length that triggers `queue-overflow` (SPEC §6).
    pub max_queue_size: usize,
    /// The shard's memory budget in held frames, both sides and every flow together (SPEC §6,
    /// §11): a primary frame is dropped (and counted, `memory-budget`) only when holding it
    /// would pass this — memory truly exhausted — and a secondary frame is dropped first.
    /// Everything short of it is a checkpoint request. The runtime sets it from the mbuf pool.
    pub held_frames_budget: usize,
    /// The same budget in bytes of held frames.
    pub held_bytes_budget: u64,
    /// Idle connections with empty queues are removed after this (SPEC §5.1).
    pub conn_idle_timeout: Duration,
    /// Idle datagram flows (UDP, ICMP, other IP) with empty queues are removed after this
    /// (default 300 s; never more than `conn_idle_timeout`): they keep no state a later
    /// datagram needs, and a busy DNS server's flows would otherwise fill the table.
    pub datagram_idle_timeout: Duration,
    /// How long a closed connection absorbs retransmissions (SPEC §5.1, default 2 × timeout).
    pub linger: Duration,
    /// Flow-table capacity of this shard (SPEC §11).
    pub max_flows: usize,
    /// New flows this shard creates per second at most, on average (SPEC §11; default
    /// 100,000; 0 = no budget): a flood of new flows then takes a bounded share of the shard
    /// and established flows keep the rest. Frames of refused flows are dropped and counted
    /// (`new-flow-budget`), the other guest's with them.
    pub new_flows_per_sec: u32,
    /// New flows this shard may create at once above that rate (default 10,000): a burst of
    /// real connections never meets the budget.
    pub new_flow_burst: u32,
    /// Non-IP and malformed frames (SPEC §4).
    pub non_ip_policy: NonIpPolicy,
    /// Sequence-space handling of the secondary (SPEC §3).
    pub mode: Mode,
    /// Datagram reorder window (SPEC §5.2, default 16): primary datagram *i* may match
    /// secondary datagram *j* of the same flow only when |i − j| ≤ this. 0 = strict FIFO.
    pub datagram_window: usize,
    /// How long both sides may hold unmatched datagrams of one flow before that is a
    /// `datagram-mismatch` (SPEC §5.2, default 5 ms): a single differing reply (a DNS answer)
    /// is caught in milliseconds, not at `compare_timeout`.
    pub reorder_grace: Duration,
    /// Fragments one datagram may have before it is poisoned (SPEC §4; default 64).
    pub max_fragments_per_datagram: usize,
    /// Partial datagrams per side and shard (SPEC §4; default 1024).
    pub max_reassembly_datagrams: usize,
    /// Bytes of fragment frames held by partial datagrams, per side and shard (default 4 MiB).
    pub max_reassembly_bytes: usize,
    /// An incomplete datagram older than this is a `fragment-timeout` (SPEC §6); defaults to
    /// `compare_timeout` and follows it in [`Config::with_compare_timeout`].
    pub reassembly_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let compare_timeout = Duration::from_millis(3000);
        Config {
            compare_timeout,
            max_queue_size: 1024,
            held_frames_budget: 16_384,
            held_bytes_budget: 64 << 20,
            // SPEC §5.1: longer than Linux's keepalive time (7200 s), so a quiet connection
            // (and proxy mode's offsets for it) outlives the probes that keep it open.
            conn_idle_timeout: Duration::from_secs(7800),
            datagram_idle_timeout: Duration::from_secs(300),
            linger: 2 * compare_timeout,
            max_flows: 65_536,
            new_flows_per_sec: 100_000,
            new_flow_burst: 10_000,
            non_ip_policy: NonIpPolicy::Passthrough,
            mode: Mode::Compare,
            datagram_window: 16,
            reorder_grace: Duration::from_millis(5),
            max_fragments_per_datagram: 64,
            max_reassembly_datagrams: 1024,
            max_reassembly_bytes: 4 << 20,
            reassembly_timeout: compare_timeout,
        }
    }
}

impl Config {
    /// Sets `compare_timeout`, keeps `linger` at twice it (the SPEC default) and the
    /// reassembly timeout equal to it.
    pub fn with_compare_timeout(mut self, timeout: Duration) -> Self {
        self.compare_timeout = timeout;
        self.linger = timeout.saturating_mul(2);
        self.reassembly_timeout = timeout;
        self
    }
}
