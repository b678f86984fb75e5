//! The Environment Abstraction Layer: started once per process, cleaned up when the last
//! handle to it goes away.
//!
//! Everything that lives in DPDK memory (mempools, ports) keeps an [`Eal`] clone, so
//! `rte_eal_cleanup` cannot run while any of it is alive.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// Set by the first `Eal::init` of the process; DPDK refuses a second init even after cleanup.
static STARTED: AtomicBool = AtomicBool::new(false);

/// A handle on the running EAL. Cheap to clone; the EAL is cleaned up when the last clone drops.
#[derive(Clone)]
pub struct Eal {
    _guard: Arc<EalGuard>,
}

struct EalGuard;

impl Drop for EalGuard {
    fn drop(&mut self) {
        // Waiting for every worker from a worker would wait for itself forever: only the
        // main lcore cleans up; elsewhere the EAL is left for process exit.
        // SAFETY: plain reads of EAL's lcore configuration.
        let (me, main) = unsafe { (dpdk_sys::rte_lcore_id(), dpdk_sys::rte_get_main_lcore()) };
        if me != main {
            return;
        }
        // SAFETY: the last handle is gone, so no mempool or port of ours is alive (each holds a
        // handle); workers are waited for first so none runs on freed memory.
        unsafe {
            dpdk_sys::rte_eal_mp_wait_lcore();
            dpdk_sys::rte_eal_cleanup();
        }
    }
}

impl Eal {
    /// Starts the EAL with `args` (argv\[0\] first, EAL options only, e.g.
    /// `["app", "--no-huge", "--no-pci", "-m", "256"]`).
    ///
    /// The calling thread becomes the main lcore. A second call in the same process returns
    /// [`Error::AlreadyInitialized`].
    pub fn init<I, S>(args: I) -> Result<Eal>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyInitialized);
        }
        let mut owned = Vec::new();
        for a in args {
            let c = CString::new(a.as_ref())
                .map_err(|_| Error::Invalid(format!("EAL argument contains a NUL byte: {:?}", a.as_ref())))?;
            owned.push(c);
        }
        if owned.is_empty() {
            owned.push(CString::new("colo").expect("no NUL"));
        }
        // EAL keeps pointers into argv (e.g. for --vdev devargs and the program name) for the
        // life of the process, so the strings are leaked on purpose: one small allocation once.
        let argv: &'static mut [*mut std::os::raw::c_char] =
            Box::leak(owned.into_iter().map(CString::into_raw).collect::<Vec<_>>().into_boxed_slice());
        let argc = i32::try_from(argv.len()).map_err(|_| Error::Invalid("too many EAL arguments".into()))?;
        // SAFETY: argv holds argc valid NUL-terminated strings that live for the rest of the
        // process; STARTED guarantees this is the only call.
        let ret = unsafe { dpdk_sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            return Err(Error::from_errno("rte_eal_init"));
        }
        Ok(Eal { _guard: Arc::new(EalGuard) })
    }

    /// Whether `Eal::init` has been called in this process (successfully or not).
    pub fn started() -> bool {
        STARTED.load(Ordering::SeqCst)
    }

    /// Number of lcores EAL knows (main included).
    pub fn lcore_count(&self) -> u32 {
        // SAFETY: reads EAL's configuration, valid after init (self proves init succeeded).
        unsafe { dpdk_sys::rte_lcore_count() }
    }

    /// The main lcore's id.
    pub fn main_lcore(&self) -> u32 {
        // SAFETY: reads EAL's configuration, valid after init.
        unsafe { dpdk_sys::rte_get_main_lcore() }
    }

    /// Creates a virtual device after start-up (`rte_vdev_init`), e.g.
    /// `create_vdev("net_pcap0", "rx_pcap=in.pcap,tx_pcap=out.pcap")`, and returns its port.
    pub fn create_vdev(&self, name: &str, args: &str) -> Result<crate::PortId> {
        let cname = CString::new(name).map_err(|_| Error::Invalid(format!("vdev name contains NUL: {name:?}")))?;
        let cargs = CString::new(args).map_err(|_| Error::Invalid(format!("vdev args contain NUL: {args:?}")))?;
        // SAFETY: both strings are valid for the call; the vdev bus copies what it keeps.
        let ret = unsafe { dpdk_sys::rte_vdev_init(cname.as_ptr(), cargs.as_ptr()) };
        if ret < 0 {
            return Err(Error::from_code("rte_vdev_init", ret));
        }
        crate::Port::lookup(self, name)
    }

    /// Number of ethdev ports available.
    pub fn port_count(&self) -> u16 {
        // SAFETY: iterates ethdev's port table, valid after init.
        unsafe { dpdk_sys::rte_eth_dev_count_avail() }
    }
}

// The guard holds no pointers; EAL's own state is process-global and thread-safe to query.
impl std::fmt::Debug for Eal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Eal")
    }
}
