//! Packet-buffer pools (`rte_pktmbuf_pool_create_by_ops`), in DPDK's default order or last
//! freed, first out ([`PoolOrder`]).
//!
//! A pool is freed only when its last handle drops *and* none of its mbufs is in use; otherwise
//! it is deliberately leaked (with the EAL kept alive), because a live [`Mbuf`] points into it.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::eal::Eal;
use crate::error::{Error, Result};
use crate::mbuf::Mbuf;

/// A shared handle on an mbuf pool.
#[derive(Clone)]
pub struct Mempool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    raw: NonNull<dpdk_sys::rte_mempool>,
    eal: Option<Eal>,
}

// SAFETY: DPDK mempools created with default flags are multi-producer/multi-consumer, with
// either driver used here (the default ring, or `stack`, which locks); all operations used
// here (alloc, free, counts) are thread-safe.
unsafe impl Send for PoolInner {}
// SAFETY: as above; shared references only call thread-safe mempool functions.
unsafe impl Sync for PoolInner {}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // SAFETY: raw is a live pool created by rte_pktmbuf_pool_create.
        let in_use = unsafe { dpdk_sys::rte_mempool_in_use_count(self.raw.as_ptr()) };
        if in_use == 0 {
            // SAFETY: no handle and no mbuf refers to the pool any more (ports hold a handle).
            unsafe { dpdk_sys::rte_mempool_free(self.raw.as_ptr()) };
        } else if let Some(eal) = self.eal.take() {
            // Mbufs of this pool are still alive somewhere: keep the pool and the EAL forever
            // rather than free memory they point into.
            std::mem::forget(eal);
        }
    }
}

/// The order in which a pool hands out the mbufs its lcore caches do not hold: what an
/// allocation gets once a cache has run dry and been refilled from the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolOrder {
    /// The EAL's default mempool driver (`ring_mp_mc` unless `--mbuf-pool-ops-name` says
    /// otherwise): a ring, so the mbuf freed longest ago comes out first.
    Default,
    /// The `stack` mempool driver: the mbuf freed last comes out first, while its lines and
    /// its page are likely still cached.
    Lifo,
}

impl PoolOrder {
    /// The mempool driver (`rte_mempool_ops`) that gives this order; `None` for the EAL's.
    fn ops_name(self) -> Option<&'static std::ffi::CStr> {
        match self {
            PoolOrder::Default => None,
            PoolOrder::Lifo => Some(c"stack"),
        }
    }
}

impl Mempool {
    /// Creates a packet-mbuf pool of `count` mbufs with `data_room` bytes each (headroom
    /// included; `RTE_MBUF_DEFAULT_BUF_SIZE` is 2176) and a per-lcore cache of `cache`, in
    /// the EAL's default order ([`PoolOrder::Default`]).
    pub fn new_pktmbuf(eal: &Eal, name: &str, count: u32, cache: u32, data_room: u16) -> Result<Mempool> {
        Self::new_pktmbuf_in_order(eal, name, count, cache, data_room, PoolOrder::Default)
    }

    /// [`Mempool::new_pktmbuf`] with the order its free mbufs come out in. Fails, besides
    /// where that fails, when the EAL has not loaded the driver the order needs.
    pub fn new_pktmbuf_in_order(
        eal: &Eal,
        name: &str,
        count: u32,
        cache: u32,
        data_room: u16,
        order: PoolOrder,
    ) -> Result<Mempool> {
        let cname = CString::new(name).map_err(|_| Error::Invalid(format!("pool name contains NUL: {name:?}")))?;
        // SAFETY: cname and the ops name are valid C strings for the call; EAL is initialised
        // (eal proves it).
        let raw = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create_by_ops(
                cname.as_ptr(),
                count,
                cache,
                0,
                data_room,
                dpdk_sys::SOCKET_ID_ANY,
                order.ops_name().map_or(std::ptr::null(), |n| n.as_ptr()),
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| Error::from_errno("rte_pktmbuf_pool_create_by_ops"))?;
        Ok(Mempool { inner: Arc::new(PoolInner { raw, eal: Some(eal.clone()) }) })
    }

    /// The name of the pool's mempool driver (`ring_mp_mc`, `stack`, …), read back from DPDK.
    pub fn driver(&self) -> String {
        // SAFETY: the pool is alive; its ops index was set at creation and names a registered
        // driver, whose name is a NUL-terminated array inside the static ops table.
        let name = unsafe {
            let ops = dpdk_sys::rte_mempool_get_ops((*self.as_ptr()).ops_index);
            std::ffi::CStr::from_ptr((*ops).name.as_ptr())
        };
        name.to_string_lossy().into_owned()
    }

    /// Mbufs currently taken from the pool (held by the application, a device ring or a cache
    /// flush pending).
    pub fn in_use(&self) -> u32 {
        self.capacity() - self.available()
    }

    /// Mbufs available for allocation: in the pool and in the EAL lcores' caches. What
    /// `rte_mempool_avail_count` counts, without its walk over every possible lcore id (see
    /// `colo_mempool_avail_count` in the shim).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is alive while self is; the shim only reads it.
        unsafe { dpdk_sys::colo_mempool_avail_count(self.as_ptr()) }
    }

    /// Total number of mbufs in the pool.
    pub fn capacity(&self) -> u32 {
        // SAFETY: the pool is alive while self is; `size` is set at creation and never changes.
        unsafe { (*self.as_ptr()).size }
    }

    /// Takes one empty mbuf, or `None` when the pool is exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is alive; a non-null result is a fresh mbuf we now own.
        unsafe { Mbuf::from_raw(dpdk_sys::rte_pktmbuf_alloc(self.as_ptr())) }
    }

    /// The raw pool pointer, for FFI calls such as RX queue set-up.
    pub fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.inner.raw.as_ptr()
    }
}

impl std::fmt::Debug for Mempool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mempool").field("in_use", &self.in_use()).finish()
    }
}
