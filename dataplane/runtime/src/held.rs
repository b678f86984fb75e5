//! The frame handle the shards hold: an owned mbuf. Held frames stay in their mbufs (zero
//! copy); the core gives them back in its actions to be transmitted or freed.

use colo_core::Frame;
use dpdk::Mbuf;

/// An mbuf as a comparator frame.
#[derive(Debug)]
pub struct HeldFrame(pub Mbuf);

impl Frame for HeldFrame {
    /// The first segment. Ports are set up without scatter and the pool's buffers hold a
    /// whole standard frame, so that is the whole frame; a longer (chained) frame shows only
    /// its first segment, whose IP length then exceeds the bytes and it is classified
    /// malformed (passed through on the primary, never compared wrongly).
    fn bytes(&self) -> &[u8] {
        self.0.data()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.0.data_mut()
    }
}
