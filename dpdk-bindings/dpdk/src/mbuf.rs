//! An owned packet buffer.
//!
//! [`Mbuf`] owns one `rte_mbuf` chain: it frees it on drop, can move to another thread (`Send`)
//! but is never shared (`!Sync`), and shows its bytes as a slice.

use std::ptr::NonNull;

use crate::error::{Error, Result};
use crate::mempool::Mempool;

/// An owned mbuf.
pub struct Mbuf {
    raw: NonNull<dpdk_sys::rte_mbuf>,
}

// SAFETY: an Mbuf is the only owner of its rte_mbuf; mbufs may be freed from any thread (the
// mempool is MP/MC). It is not Sync: `data_mut` hands out a unique view.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of a raw mbuf; `None` for NULL.
    ///
    /// # Safety
    /// `raw` must be NULL or a valid mbuf that nothing else owns or will free.
    #[inline]
    pub unsafe fn from_raw(raw: *mut dpdk_sys::rte_mbuf) -> Option<Mbuf> {
        NonNull::new(raw).map(|raw| Mbuf { raw })
    }

    /// Gives up ownership; the caller must free or transmit the mbuf.
    #[inline]
    pub fn into_raw(self) -> *mut dpdk_sys::rte_mbuf {
        let raw = self.raw.as_ptr();
        std::mem::forget(self);
        raw
    }

    /// A new mbuf from `pool` holding a copy of `bytes` in one segment.
    pub fn from_slice(pool: &Mempool, bytes: &[u8]) -> Result<Mbuf> {
        let mut m = pool.alloc().ok_or(Error::PoolEmpty)?;
        let len = u16::try_from(bytes.len()).map_err(|_| Error::Invalid("frame longer than 65535 bytes".into()))?;
        // SAFETY: m is a fresh mbuf we own; append returns NULL if the tailroom is too small.
        let dst = unsafe { dpdk_sys::rte_pktmbuf_append(m.raw.as_ptr(), len) };
        if dst.is_null() {
            return Err(Error::Invalid(format!("frame of {} bytes does not fit in one mbuf", bytes.len())));
        }
        m.data_mut().copy_from_slice(bytes);
        Ok(m)
    }

    #[inline]
    fn raw(&self) -> &dpdk_sys::rte_mbuf {
        // SAFETY: raw is a valid mbuf owned by self for self's lifetime.
        unsafe { self.raw.as_ref() }
    }

    /// The address of the mbuf's header (for a prefetch; reading through it needs `unsafe`).
    #[inline]
    pub fn header_addr(&self) -> *const u8 {
        self.raw.as_ptr().cast::<u8>()
    }

    /// The bytes of the first segment (the whole frame when [`Mbuf::is_contiguous`]).
    #[inline]
    pub fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's buffer (an mbuf
        // invariant maintained by DPDK); the buffer lives as long as self and is not written
        // while this shared borrow exists (writes need &mut self).
        unsafe {
            let start = (m.buf_addr as *const u8).add(usize::from(m.data_off));
            std::slice::from_raw_parts(start, usize::from(m.data_len))
        }
    }

    /// The bytes of the first segment, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (addr, off, len) = {
            let m = self.raw();
            (m.buf_addr as *mut u8, m.data_off, m.data_len)
        };
        // SAFETY: same bounds as `data`; &mut self makes this the only view. Mbufs made by this
        // layer or received from a port are direct with refcnt 1, so no other mbuf shares it.
        unsafe { std::slice::from_raw_parts_mut(addr.add(usize::from(off)), usize::from(len)) }
    }

    /// Length of the first segment.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.raw().data_len)
    }

    /// Whether the first segment is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length of the whole packet (all segments).
    #[inline]
    pub fn pkt_len(&self) -> usize {
        self.raw().pkt_len as usize
    }

    /// Whether the packet is a single segment.
    #[inline]
    pub fn is_contiguous(&self) -> bool {
        self.raw().nb_segs == 1
    }

    /// Makes a multi-segment packet contiguous (fails if it does not fit one buffer).
    pub fn linearize(&mut self) -> Result<()> {
        if self.is_contiguous() {
            return Ok(());
        }
        // SAFETY: we own the chain; linearize only rearranges its own segments.
        let ret = unsafe { dpdk_sys::rte_pktmbuf_linearize(self.raw.as_ptr()) };
        if ret < 0 {
            return Err(Error::Invalid("packet does not fit one mbuf buffer".into()));
        }
        Ok(())
    }

    /// A deep copy of the whole packet into mbufs from `pool` (a chain stays a chain; the
    /// first segment keeps the headers).
    pub fn deep_copy(&self, pool: &Mempool) -> Result<Mbuf> {
        // SAFETY: self is a valid mbuf chain we own and do not modify; the pool pointer is
        // valid for the call; the copy is a new chain that nothing else owns (or NULL).
        let raw = unsafe { dpdk_sys::rte_pktmbuf_copy(self.raw.as_ptr(), pool.as_ptr(), 0, u32::MAX) };
        // SAFETY: raw is NULL or a fresh chain owned by nobody else.
        unsafe { Mbuf::from_raw(raw) }.ok_or(Error::PoolEmpty)
    }

    /// The whole packet, every segment's bytes in order, as one contiguous copy.
    pub fn to_contiguous_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pkt_len());
        let mut seg: *const dpdk_sys::rte_mbuf = self.raw.as_ptr();
        while !seg.is_null() {
            // SAFETY: seg is self's first segment or a `next` link of the chain self owns; each
            // segment's buf_addr + data_off .. + data_len lies inside its buffer (an mbuf
            // invariant), and nothing writes the chain while &self is borrowed.
            unsafe {
                let m = &*seg;
                let start = (m.buf_addr as *const u8).add(usize::from(m.data_off));
                out.extend_from_slice(std::slice::from_raw_parts(start, usize::from(m.data_len)));
                seg = m.next;
            }
        }
        out
    }

    /// For a packet handed over for segmentation (a virtio guest's TSO/GSO frame, flagged
    /// large-receive on RX or TCP segmentation for TX), the payload size of each segment.
    #[inline]
    pub fn segment_size(&self) -> Option<u16> {
        let m = self.raw();
        if m.ol_flags & (dpdk_sys::RTE_MBUF_F_RX_LRO | dpdk_sys::RTE_MBUF_F_TX_TCP_SEG) == 0 {
            return None;
        }
        // SAFETY: the tx_offload union is plain integers; its bitfield view is always valid to
        // read, and the flags above say tso_segsz was set.
        let size = unsafe { m.__bindgen_anon_3.__bindgen_anon_1.tso_segsz() };
        u16::try_from(size).ok().filter(|&s| s > 0)
    }

    /// The port the packet arrived on.
    #[inline]
    pub fn port(&self) -> u16 {
        self.raw().port
    }

    /// The RSS hash computed by the NIC, if it set one.
    #[inline]
    pub fn rss_hash(&self) -> Option<u32> {
        let m = self.raw();
        if m.ol_flags & dpdk_sys::RTE_MBUF_F_RX_RSS_HASH == 0 {
            return None;
        }
        // SAFETY: the RX_RSS_HASH flag says the `rss` member of the hash union is the valid one;
        // reading a u32 from a Copy union has no other precondition.
        Some(unsafe { m.__bindgen_anon_2.hash.rss })
    }

    /// The reference count (1 for an mbuf nobody else shares).
    pub fn refcnt(&self) -> u16 {
        // SAFETY: the mbuf is valid; the helper only reads the counter.
        unsafe { dpdk_sys::rte_mbuf_refcnt_read(self.raw.as_ptr()) }
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own the chain; rte_pktmbuf_free returns every segment to its pool.
        unsafe { dpdk_sys::rte_pktmbuf_free(self.raw.as_ptr()) }
    }
}

impl AsRef<[u8]> for Mbuf {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.data()
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf").field("len", &self.len()).field("segs", &self.raw().nb_segs).finish()
    }
}
