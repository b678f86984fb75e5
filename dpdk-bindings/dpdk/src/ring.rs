//! `rte_ring` FIFO rings, used here to build `net_ring` port pairs.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::eal::Eal;
use crate::error::{Error, Result};

/// A shared handle on a DPDK ring; the ring is freed when the last handle drops. A ring given
/// to a ring port is kept for the rest of the process (the port may use it until exit).
#[derive(Clone)]
pub struct Ring {
    inner: Arc<RingInner>,
}

struct RingInner {
    raw: NonNull<dpdk_sys::rte_ring>,
    _eal: Eal,
}

// SAFETY: rte_ring is designed for use across lcores (created MP/MC here); the handle only
// frees it when the last reference goes.
unsafe impl Send for RingInner {}
// SAFETY: as above; no method mutates through a shared reference.
unsafe impl Sync for RingInner {}

impl Ring {
    /// Creates a ring of `count` slots (a power of two) for multi-producer/multi-consumer use.
    pub fn new(eal: &Eal, name: &str, count: u32) -> Result<Ring> {
        let cname = CString::new(name).map_err(|_| Error::Invalid(format!("ring name contains NUL: {name:?}")))?;
        // SAFETY: cname is valid for the call; EAL is running.
        let raw = unsafe { dpdk_sys::rte_ring_create(cname.as_ptr(), count, dpdk_sys::SOCKET_ID_ANY, 0) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::from_errno("rte_ring_create"))?;
        Ok(Ring { inner: Arc::new(RingInner { raw, _eal: eal.clone() }) })
    }

    /// The raw ring pointer.
    pub fn as_ptr(&self) -> *mut dpdk_sys::rte_ring {
        self.inner.raw.as_ptr()
    }

    /// Keeps the ring alive for the rest of the process and returns its pointer.
    pub(crate) fn keep_forever(&self) -> *mut dpdk_sys::rte_ring {
        std::mem::forget(self.clone());
        self.as_ptr()
    }
}

impl Drop for RingInner {
    fn drop(&mut self) {
        // SAFETY: the last handle is gone and rings given to ports are never dropped, so nothing
        // references the ring.
        unsafe { dpdk_sys::rte_ring_free(self.raw.as_ptr()) }
    }
}
