//! The frame handle the shards hold: an owned mbuf. Held frames stay in their mbufs (zero
//! copy); the core gives them back in its actions to be transmitted or freed.
//!
//! A frame that arrived as a chain of segments (a virtio guest's 64 KiB TSO frame over
//! vhost-user, a jumbo frame longer than one mbuf) is copied once into one contiguous buffer
//! on receipt: the comparator reads and rewrites that copy, and the copy is what leaves (see
//! `egress`). Frames that fit one mbuf, nearly all, are never copied.

use colo_core::Frame;
use dpdk::Mbuf;

/// An mbuf as a comparator frame: two words, as the comparator keeps a held frame's handle in
/// its flow entry (what only a chain or a frame for segmentation has is behind a pointer).
#[derive(Debug)]
pub struct HeldFrame {
    mbuf: Mbuf,
    big: Option<Box<Big>>,
}

// The comparator's flow entries hold handles inline: keep it two words.
const _: () = assert!(std::mem::size_of::<HeldFrame>() == 2 * std::mem::size_of::<usize>());

/// What a chained frame, or one handed over for segmentation, has besides its mbuf.
#[derive(Debug)]
struct Big {
    /// The whole frame, when the mbuf is a chain.
    whole: Option<Box<[u8]>>,
    /// The payload size per segment a guest asked for, for a frame it handed over for
    /// segmentation (TSO/GSO).
    segment_size: Option<u16>,
}

impl HeldFrame {
    /// A frame as received from a port.
    pub fn received(mbuf: Mbuf) -> HeldFrame {
        let whole = (!mbuf.is_contiguous()).then(|| mbuf.to_contiguous_vec().into_boxed_slice());
        let segment_size = mbuf.segment_size();
        let big = (whole.is_some() || segment_size.is_some()).then(|| Box::new(Big { whole, segment_size }));
        HeldFrame { mbuf, big }
    }

    /// Whether the mbuf can be sent as it is on a port taking frames of up to `max_frame`
    /// bytes: one segment, not waiting for segmentation, short enough.
    pub fn sendable_as_is(&self, max_frame: usize) -> bool {
        self.big.is_none() && self.mbuf.len() <= max_frame
    }

    /// The payload size per segment the guest asked for, if it handed the frame over for
    /// segmentation.
    pub fn segment_size(&self) -> Option<u16> {
        self.big.as_ref().and_then(|b| b.segment_size)
    }

    /// The mbuf as received (a chain stays a chain; the contiguous copy is dropped).
    pub fn into_mbuf(self) -> Mbuf {
        self.mbuf
    }

    /// The mbuf as received, for reading the headers: the first segment holds them.
    pub fn mbuf(&self) -> &Mbuf {
        &self.mbuf
    }
}

impl Frame for HeldFrame {
    fn bytes(&self) -> &[u8] {
        match self.big.as_ref().and_then(|b| b.whole.as_deref()) {
            Some(whole) => whole,
            None => self.mbuf.data(),
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self.big.as_mut().and_then(|b| b.whole.as_deref_mut()) {
            Some(whole) => whole,
            None => self.mbuf.data_mut(),
        }
    }
    /// The mbuf's header, which holds the data's address and length: the comparator asks for
    /// a burst's held headers together before reading any.
    #[inline]
    fn prefetch(&self) {
        cache_prefetch::range(self.mbuf.header_addr(), cache_prefetch::LINE);
    }
}
