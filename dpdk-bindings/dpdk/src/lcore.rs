//! Running closures on EAL worker lcores.
//!
//! [`launch`] starts a `'static + Send` closure on a worker lcore; a panic inside it is caught
//! at the lcore boundary (unwinding into C would abort the process) and handed to
//! [`JoinHandle::join`] like `std::thread::JoinHandle` does.

use std::any::Any;
use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// An EAL lcore id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LcoreId(pub u32);

type Outcome<T> = std::thread::Result<T>;
type Slot<T> = Arc<Mutex<Option<Outcome<T>>>>;

/// Serialises launches: rte_eal_remote_launch on one worker from two threads would race.
static LAUNCH: Mutex<()> = Mutex::new(());

struct Task<F, T> {
    f: F,
    slot: Slot<T>,
}

/// The lcore the calling thread runs as, or `None` for a thread EAL does not know.
pub fn current_lcore() -> Option<LcoreId> {
    // SAFETY: reads the calling thread's per-lcore variable; valid on any thread.
    let id = unsafe { dpdk_sys::rte_lcore_id() };
    (id != dpdk_sys::LCORE_ID_ANY).then_some(LcoreId(id))
}

/// The worker lcores (all enabled lcores but the main one), in id order.
pub fn worker_lcores() -> Vec<LcoreId> {
    let mut out = Vec::new();
    let mut i = u32::MAX; // rte_get_next_lcore(-1, …) starts from the first lcore
    loop {
        // SAFETY: iterates EAL's lcore table; skip_main=1, wrap=0 ends at RTE_MAX_LCORE.
        i = unsafe { dpdk_sys::rte_get_next_lcore(i, 1, 0) };
        if i >= dpdk_sys::RTE_MAX_LCORE {
            break;
        }
        out.push(LcoreId(i));
    }
    out
}

extern "C" fn trampoline<F, T>(arg: *mut c_void) -> c_int
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // SAFETY: arg is the Box<Task> leaked by `launch` for exactly this one call.
    let task = unsafe { Box::from_raw(arg.cast::<Task<F, T>>()) };
    let Task { f, slot } = *task;
    let outcome = catch_unwind(AssertUnwindSafe(f));
    let failed = outcome.is_err();
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    c_int::from(failed)
}

/// Runs `f` on worker lcore `lcore`. Fails if the lcore is the main one, unknown, or busy.
pub fn launch<F, T>(lcore: LcoreId, f: F) -> Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if !worker_lcores().contains(&lcore) {
        return Err(Error::Invalid(format!("lcore {} is not an EAL worker lcore", lcore.0)));
    }
    let slot: Slot<T> = Arc::new(Mutex::new(None));
    let task = Box::into_raw(Box::new(Task { f, slot: slot.clone() }));
    let _serial = LAUNCH.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the trampoline matches lcore_function_t and takes back the Box exactly once if
    // the launch succeeds; F and T are Send + 'static so the closure may run on another thread
    // for as long as it likes.
    let ret = unsafe { dpdk_sys::rte_eal_remote_launch(Some(trampoline::<F, T>), task.cast(), lcore.0) };
    if ret != 0 {
        // SAFETY: the launch failed, so the trampoline will never run; reclaim the task.
        drop(unsafe { Box::from_raw(task) });
        return Err(Error::from_code("rte_eal_remote_launch", ret));
    }
    Ok(JoinHandle { lcore, slot })
}

/// Waits for a launched closure.
pub struct JoinHandle<T> {
    lcore: LcoreId,
    slot: Slot<T>,
}

impl<T> JoinHandle<T> {
    /// The lcore the closure runs on.
    pub fn lcore(&self) -> LcoreId {
        self.lcore
    }

    /// Whether the closure has returned (or panicked).
    pub fn is_finished(&self) -> bool {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Waits for the closure; `Err` carries the panic payload if it panicked.
    pub fn join(self) -> std::result::Result<T, Box<dyn Any + Send + 'static>> {
        // SAFETY: waits until the worker is back in WAIT state; a plain spin on EAL's state.
        unsafe { dpdk_sys::rte_eal_wait_lcore(self.lcore.0) };
        let outcome = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        outcome.unwrap_or_else(|| Err(Box::new("lcore finished without a result")))
    }
}
