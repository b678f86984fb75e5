//! Fixed-size burst containers for RX and TX, so the packet path never allocates.
//!
//! [`RxBurst`] hands out the mbufs a receive call produced and frees every one the caller did
//! not take when it is refilled or dropped. [`TxBatch`] holds mbufs waiting for transmission;
//! a transmit call removes what the device accepted and leaves the rest, still owned, in order.

use crate::mbuf::Mbuf;

/// Packets per burst, as in DPDK's examples.
pub const BURST_SIZE: usize = 32;

type RawMbuf = *mut dpdk_sys::rte_mbuf;

/// Mbufs from one receive call.
pub struct RxBurst {
    pkts: [RawMbuf; BURST_SIZE],
    len: usize,
    next: usize,
}

// SAFETY: the burst exclusively owns the mbufs in pkts[next..len]; mbufs may move between
// threads (see `Mbuf`).
unsafe impl Send for RxBurst {}

impl Default for RxBurst {
    fn default() -> Self {
        Self::new()
    }
}

impl RxBurst {
    /// An empty burst.
    pub fn new() -> Self {
        RxBurst { pkts: [std::ptr::null_mut(); BURST_SIZE], len: 0, next: 0 }
    }

    /// Mbufs not yet taken.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.len - self.next
    }

    /// Frees what was not taken, then lets `fill` write up to `BURST_SIZE` mbuf pointers into
    /// the array, returning how many it wrote. Used by the queue types.
    pub(crate) fn refill(&mut self, fill: impl FnOnce(*mut RawMbuf, u16) -> u16) -> usize {
        self.free_rest();
        let n = usize::from(fill(self.pkts.as_mut_ptr(), BURST_SIZE as u16)).min(BURST_SIZE);
        self.len = n;
        self.next = 0;
        n
    }

    fn free_rest(&mut self) {
        for p in &mut self.pkts[self.next..self.len] {
            // SAFETY: each pointer in next..len was written by a receive call and is owned by
            // this burst; taking it into an Mbuf frees it once.
            drop(unsafe { Mbuf::from_raw(*p) });
            *p = std::ptr::null_mut();
        }
        self.len = 0;
        self.next = 0;
    }
}

impl Iterator for RxBurst {
    type Item = Mbuf;

    #[inline]
    fn next(&mut self) -> Option<Mbuf> {
        if self.next >= self.len {
            return None;
        }
        let p = std::mem::replace(&mut self.pkts[self.next], std::ptr::null_mut());
        self.next += 1;
        // SAFETY: p is an mbuf written by the receive call, owned by the burst until now; the
        // slot is nulled and skipped, so ownership moves exactly once.
        unsafe { Mbuf::from_raw(p) }
    }
}

impl Drop for RxBurst {
    fn drop(&mut self) {
        self.free_rest();
    }
}

/// Mbufs queued for one transmit call, in order.
pub struct TxBatch {
    pkts: [RawMbuf; BURST_SIZE],
    len: usize,
}

// SAFETY: the batch exclusively owns pkts[..len].
unsafe impl Send for TxBatch {}

impl Default for TxBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl TxBatch {
    /// An empty batch.
    pub fn new() -> Self {
        TxBatch { pkts: [std::ptr::null_mut(); BURST_SIZE], len: 0 }
    }

    /// Queued mbufs.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether no more mbufs fit.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == BURST_SIZE
    }

    /// Queues `m` at the end; gives it back when the batch is full.
    #[inline]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.is_full() {
            return Err(m);
        }
        self.pkts[self.len] = m.into_raw();
        self.len += 1;
        Ok(())
    }

    /// Takes the oldest queued mbuf back (e.g. to count and free what cannot be sent).
    pub fn pop_front(&mut self) -> Option<Mbuf> {
        if self.len == 0 {
            return None;
        }
        let p = self.pkts[0];
        self.pkts.copy_within(1..self.len, 0);
        self.len -= 1;
        self.pkts[self.len] = std::ptr::null_mut();
        // SAFETY: p was queued by push (from an owned Mbuf) and is removed from the batch.
        unsafe { Mbuf::from_raw(p) }
    }

    /// Lets `send` transmit the queued mbufs (it returns how many it took, from the front);
    /// those leave the batch, the rest move to the front in their order.
    pub(crate) fn transmit(&mut self, send: impl FnOnce(*mut RawMbuf, u16) -> u16) -> usize {
        if self.len == 0 {
            return 0;
        }
        let sent = usize::from(send(self.pkts.as_mut_ptr(), self.len as u16)).min(self.len);
        self.pkts.copy_within(sent..self.len, 0);
        self.len -= sent;
        for p in &mut self.pkts[self.len..] {
            *p = std::ptr::null_mut();
        }
        sent
    }
}

impl Drop for TxBatch {
    fn drop(&mut self) {
        while self.pop_front().is_some() {}
    }
}

/// Mbufs to free, freed together: one `rte_pktmbuf_free_bulk` call (and the pool's bulk put)
/// for a burst's worth instead of a call per mbuf. Frees what it holds when full, on
/// [`FreeBatch::flush`] and on drop.
pub struct FreeBatch {
    pkts: [RawMbuf; BURST_SIZE],
    len: usize,
}

// SAFETY: the batch exclusively owns the mbufs in pkts[..len]; mbufs may move between threads
// (see `Mbuf`).
unsafe impl Send for FreeBatch {}

impl Default for FreeBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl FreeBatch {
    /// An empty batch.
    pub fn new() -> Self {
        FreeBatch { pkts: [std::ptr::null_mut(); BURST_SIZE], len: 0 }
    }

    /// Queues `m` to be freed (freeing the batch first when it is full).
    #[inline]
    pub fn push(&mut self, m: Mbuf) {
        if self.len == BURST_SIZE {
            self.flush();
        }
        self.pkts[self.len] = m.into_raw();
        self.len += 1;
    }

    /// Frees every queued mbuf.
    pub fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: pkts[..len] are mbuf chains taken from owned `Mbuf`s by `push`, each queued
        // once; rte_pktmbuf_free_bulk frees every segment of each to its pool, and they leave
        // the batch here.
        unsafe { dpdk_sys::rte_pktmbuf_free_bulk(self.pkts.as_mut_ptr(), self.len as u32) };
        self.len = 0;
    }
}

impl Drop for FreeBatch {
    fn drop(&mut self) {
        self.flush();
    }
}
