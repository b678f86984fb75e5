//! Errors of the safe layer: every failing DPDK call becomes an [`Error`] naming the operation
//! and DPDK's own explanation, never a panic.

use std::ffi::CStr;
use std::fmt;

/// Result of the safe layer.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong in a DPDK call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `Eal::init` was called a second time in this process (DPDK allows one init per process).
    AlreadyInitialized,
    /// A DPDK call failed with an errno-style code.
    Dpdk {
        /// The DPDK function or step that failed.
        op: &'static str,
        /// The positive errno value.
        code: i32,
        /// DPDK's text for `code`.
        message: String,
    },
    /// The caller asked for something the device or the layer cannot do.
    Invalid(String),
    /// The mempool had no mbuf to give (a plain value: this happens on the packet path, under
    /// pressure, where nothing should be allocated).
    PoolEmpty,
}

impl Error {
    /// Builds an error from a DPDK return code (negative errno) or, when that is not negative,
    /// from `rte_errno`.
    pub(crate) fn from_code(op: &'static str, ret: i32) -> Self {
        let code = if ret < 0 { -ret } else { last_errno() };
        Error::Dpdk { op, code, message: strerror(code) }
    }

    /// Builds an error from `rte_errno` (for calls that return NULL or -1).
    pub(crate) fn from_errno(op: &'static str) -> Self {
        let code = last_errno();
        Error::Dpdk { op, code, message: strerror(code) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AlreadyInitialized => {
                write!(f, "DPDK EAL is already initialised in this process (one init per process)")
            }
            Error::Dpdk { op, code, message } => write!(f, "{op} failed: {message} (errno {code})"),
            Error::Invalid(what) => f.write_str(what),
            Error::PoolEmpty => f.write_str("mempool exhausted"),
        }
    }
}

impl std::error::Error for Error {}

/// The calling thread's `rte_errno`.
pub(crate) fn last_errno() -> i32 {
    // SAFETY: the shim reads the thread-local rte_errno of the calling thread; no other effect.
    unsafe { dpdk_sys::colo_rte_errno() }
}

pub(crate) fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string
    // that stays valid until the next call on this thread; it is copied at once.
    unsafe {
        let p = dpdk_sys::rte_strerror(code);
        if p.is_null() {
            return format!("errno {code}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
