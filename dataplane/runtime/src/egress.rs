//! Released frames onto the output port's wire: what fits leaves as it is (zero copy); a frame
//! longer than the port's MTU allows — a guest's TSO/GSO frame, a chained jumbo frame — is cut
//! into TCP segments by `colo_core::segment` (the guest's segment size, capped by the MTU and
//! by what one mbuf holds), and a chained frame that fits is copied into one mbuf. Checksums of
//! cut frames are computed anew. A released frame that is too long and not TCP cannot be cut:
//! it is dropped and counted (`too_long_dropped`), as a NIC drops what exceeds its MTU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use colo_core::Frame;
use dpdk::{Mbuf, Mempool};

use crate::held::HeldFrame;
use crate::tx::Transmitter;
use crate::Shared;

/// The smallest segment payload we cut to, whatever the guest asked for (Linux's minimum
/// MSS): a hostile `gso_size` of 1 would otherwise turn one 64 KiB frame into 65,000 mbufs.
const MIN_SEGMENT: usize = 88;

/// Counters of what the egress had to do (rare events: written where they happen).
#[derive(Debug, Default)]
pub struct EgressStats {
    /// Released frames cut into segments.
    pub split: AtomicU64,
    /// Segments made from them and sent.
    pub segments: AtomicU64,
    /// Released frames dropped: longer than the output port's MTU and not TCP.
    pub too_long_dropped: AtomicU64,
    /// Copies or segments that found no mbuf in the pool (each a frame, or a piece of one the
    /// client's TCP then asks for again).
    pub no_mbuf_dropped: AtomicU64,
}

impl EgressStats {
    /// The counters as JSON (`colo-ctl stats`, `--stats-json`).
    pub fn report(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "split": n(&self.split),
            "segments": n(&self.segments),
            "too_long_dropped": n(&self.too_long_dropped),
            "no_mbuf_dropped": n(&self.no_mbuf_dropped),
        })
    }
}

/// A shard's way onto the output wire.
pub struct Egress {
    pool: Mempool,
    /// The output port's MTU (the longest IP packet it sends).
    mtu: usize,
    /// The longest frame one mbuf of the pool holds.
    buffer: usize,
    shared: Arc<Shared>,
    /// Where each cut piece is built before its copy into an mbuf (reused).
    scratch: Vec<u8>,
}

/// Length of the Ethernet header with its VLAN tags (802.1Q, 802.1ad; at most two).
fn l2_len(frame: &[u8]) -> usize {
    let mut len = 14;
    while len < 22 && matches!(frame.get(len - 2..len), Some([0x81, 0x00] | [0x88, 0xA8])) {
        len += 4;
    }
    len
}

impl Egress {
    /// Frames leave through a port of `mtu`; copies and pieces come from `pool`, whose mbufs
    /// hold frames of up to `buffer` bytes; counted in `shared`.
    pub fn new(pool: Mempool, mtu: u16, buffer: usize, shared: Arc<Shared>) -> Self {
        Egress { pool, mtu: usize::from(mtu), buffer, shared, scratch: Vec::new() }
    }

    /// Sends `frame` (released, in order) through `tx`.
    pub fn send(&mut self, frame: HeldFrame, tx: &mut Transmitter) {
        // The MTU bounds the IP packet: the frame adds its Ethernet header and VLAN tags.
        let max_frame = self.mtu + l2_len(frame.bytes());
        if frame.sendable_as_is(max_frame) {
            tx.push(frame.into_mbuf());
            return;
        }
        self.cut_or_copy(frame.bytes(), 0, frame.segment_size(), tx);
    }

    /// Sends what is left of `frame` after its first `skip` payload bytes left as a part
    /// (`colo_core::Action::ReleaseRest`): cut from there, in the guest's segment size.
    pub fn send_rest(&mut self, frame: HeldFrame, skip: u32, tx: &mut Transmitter) {
        self.cut_or_copy(frame.bytes(), skip as usize, frame.segment_size(), tx);
    }

    /// Sends a frame the comparator built (`colo_core::Action::ReleasePart`): copied into an
    /// mbuf, or cut to the MTU when longer (a part of a TSO frame).
    pub fn send_bytes(&mut self, bytes: &[u8], tx: &mut Transmitter) {
        self.cut_or_copy(bytes, 0, None, tx);
    }

    /// Cuts `bytes` (a TCP frame, its payload from `skip` on) into segments of the guest's
    /// `segment_size` when it asked for segmentation, or when the frame is too long for the
    /// port or one mbuf (or any rest); copies anything else that fits into one mbuf.
    fn cut_or_copy(&mut self, bytes: &[u8], skip: usize, segment_size: Option<u16>, tx: &mut Transmitter) {
        let stats = &self.shared.egress;
        let max_frame = self.mtu + l2_len(bytes);
        let fits = bytes.len() <= max_frame.min(self.buffer);
        if segment_size.is_some() || !fits || skip > 0 {
            let mss = segment_size.map_or(0, |s| usize::from(s).max(MIN_SEGMENT));
            let mut sent = 0u64;
            let mut lost = 0u64;
            let pool = &self.pool;
            let cut = colo_core::segment::split_tcp_from(
                bytes,
                skip,
                mss,
                max_frame.min(self.buffer),
                &mut self.scratch,
                |piece| match Mbuf::from_slice(pool, piece) {
                    Ok(m) => {
                        tx.push(m);
                        sent += 1;
                    }
                    Err(_) => lost += 1,
                },
            );
            match cut {
                Ok(_) => {
                    stats.split.fetch_add(1, Ordering::Relaxed);
                    stats.segments.fetch_add(sent, Ordering::Relaxed);
                    stats.no_mbuf_dropped.fetch_add(lost, Ordering::Relaxed);
                    return;
                }
                Err(_) if !fits => {
                    stats.too_long_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Flagged for segmentation but not TCP (a UDP GSO frame) and short enough; a
                // rest is always TCP (the comparator cuts only TCP segments).
                Err(_) => {}
            }
        }
        // A chain (or a frame flagged for segmentation that needs none) that fits one mbuf.
        match Mbuf::from_slice(&self.pool, bytes) {
            Ok(m) => tx.push(m),
            Err(_) => {
                stats.no_mbuf_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::l2_len;

    #[test]
    fn the_ethernet_header_counts_its_vlan_tags() {
        let mut f = vec![0u8; 64];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(l2_len(&f), 14);
        f[12..14].copy_from_slice(&[0x81, 0x00]);
        f[16..18].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(l2_len(&f), 18);
        f[12..14].copy_from_slice(&[0x88, 0xA8]);
        f[16..18].copy_from_slice(&[0x81, 0x00]);
        f[20..22].copy_from_slice(&[0x86, 0xDD]);
        assert_eq!(l2_len(&f), 22);
    }
}
