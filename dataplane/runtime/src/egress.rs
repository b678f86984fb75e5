//! Released frames onto the output port's wire: what fits leaves as it is (zero copy); a frame
//! longer than the port's MTU allows — a guest's TSO/GSO frame, a chained jumbo frame — is cut
//! into TCP segments by `colo_core::segment` (the guest's segment size, capped by the MTU), and
//! a chained frame that fits is copied into one mbuf. Checksums of cut frames are computed
//! anew. A released frame that is too long and not TCP cannot be cut: it is dropped and
//! counted (`tx_too_long_dropped`), as a NIC drops what exceeds its MTU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use colo_core::Frame;
use dpdk::{Mbuf, Mempool};

use crate::held::HeldFrame;
use crate::tx::Transmitter;
use crate::Shared;

/// Counters of what the egress had to do (rare events: written where they happen).
#[derive(Debug, Default)]
pub struct EgressStats {
    /// Released frames cut into segments.
    pub split: AtomicU64,
    /// Segments made from them.
    pub segments: AtomicU64,
    /// Released frames (or pieces of them) dropped: longer than the output port's MTU and
    /// not TCP, or no mbuf for a piece.
    pub too_long_dropped: AtomicU64,
}

impl EgressStats {
    /// The counters as JSON (`colo-ctl stats`, `--stats-json`).
    pub fn report(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "split": n(&self.split),
            "segments": n(&self.segments),
            "too_long_dropped": n(&self.too_long_dropped),
        })
    }
}

/// A shard's way onto the output wire.
pub struct Egress {
    pool: Mempool,
    /// The output port's MTU (the longest IP packet it sends).
    mtu: usize,
    shared: Arc<Shared>,
}

impl Egress {
    /// Frames leave through a port of `mtu`; pieces come from `pool`; counted in `shared`.
    pub fn new(pool: Mempool, mtu: u16, shared: Arc<Shared>) -> Self {
        Egress { pool, mtu: usize::from(mtu), shared }
    }

    /// Sends `frame` (released, in order) through `tx`.
    pub fn send(&self, frame: HeldFrame, tx: &mut Transmitter) {
        let stats = &self.shared.egress;
        // The MTU bounds the IP packet: the frame may add its Ethernet header and a VLAN tag.
        let l2 = if frame.bytes().get(12..14) == Some(&[0x81, 0x00]) { 18 } else { 14 };
        let max_frame = self.mtu + l2;
        if frame.sendable_as_is(max_frame) {
            tx.push(frame.into_mbuf());
            return;
        }
        let bytes = frame.bytes();
        if frame.segment_size().is_none() && bytes.len() <= max_frame {
            // A chain that fits the wire: one contiguous mbuf.
            match Mbuf::from_slice(&self.pool, bytes) {
                Ok(m) => tx.push(m),
                Err(_) => {
                    stats.too_long_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        let mss = frame.segment_size().map_or(0, usize::from);
        let mut lost = 0u64;
        let cut =
            colo_core::segment::split_tcp(bytes, mss, max_frame, |piece| match Mbuf::from_slice(&self.pool, piece) {
                Ok(m) => tx.push(m),
                Err(_) => lost += 1,
            });
        match cut {
            Ok(n) => {
                stats.split.fetch_add(1, Ordering::Relaxed);
                stats.segments.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => lost += 1,
        }
        if lost > 0 {
            stats.too_long_dropped.fetch_add(lost, Ordering::Relaxed);
        }
    }
}
