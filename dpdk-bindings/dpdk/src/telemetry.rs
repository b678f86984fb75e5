//! DPDK telemetry commands (`dpdk-telemetry.py`): register a command whose answer is a
//! dictionary of unsigned counters produced by a Rust closure.
//!
//! DPDK calls a plain C function pointer with the command string; one trampoline serves every
//! command by looking the closure up in a process-wide registry. The closure runs on DPDK's
//! telemetry thread, so it must be `Send + Sync` and should only read a snapshot.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

type Producer = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync + 'static>;

fn registry() -> &'static Mutex<HashMap<String, Producer>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Producer>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Longest dictionary key telemetry accepts (RTE_TEL_MAX_STRING_LEN is 128, with the NUL).
const MAX_KEY: usize = 63;

extern "C" fn trampoline(cmd: *const c_char, _params: *const c_char, d: *mut dpdk_sys::rte_tel_data) -> c_int {
    if cmd.is_null() || d.is_null() {
        return -1;
    }
    // SAFETY: telemetry passes the registered command as a NUL-terminated string valid for
    // the duration of the call.
    let cmd = unsafe { CStr::from_ptr(cmd) }.to_string_lossy().into_owned();
    // A panic must not unwind into C: catch it and report an error to the client.
    let entries = std::panic::catch_unwind(|| {
        let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.get(&cmd).map(|f| f())
    });
    let Ok(Some(entries)) = entries else { return -1 };
    // SAFETY: d is the response object telemetry handed us for this call.
    if unsafe { dpdk_sys::rte_tel_data_start_dict(d) } != 0 {
        return -1;
    }
    for (key, value) in entries {
        let key: String = key.chars().take(MAX_KEY).collect();
        let Ok(ckey) = CString::new(key) else { continue };
        // SAFETY: d is a dict being filled; ckey is a valid C string for the call (copied).
        // Telemetry caps the number of entries and returns an error past it, which we ignore.
        unsafe { dpdk_sys::rte_tel_data_add_dict_u64(d, ckey.as_ptr(), value) };
    }
    0
}

/// Registers `command` (e.g. `/colo/stats`; must start with `/`) answering `producer()`'s
/// counters as a dictionary. Call after [`crate::Eal::init`], before clients ask.
pub fn register_counters<F>(command: &str, help: &str, producer: F) -> Result<()>
where
    F: Fn() -> Vec<(String, u64)> + Send + Sync + 'static,
{
    if !command.starts_with('/') {
        return Err(Error::Invalid(format!("telemetry command {command:?} must start with '/'")));
    }
    let ccmd = CString::new(command).map_err(|_| Error::Invalid("telemetry command contains NUL".into()))?;
    let chelp = CString::new(help).map_err(|_| Error::Invalid("telemetry help contains NUL".into()))?;
    registry().lock().unwrap_or_else(|e| e.into_inner()).insert(command.to_string(), Box::new(producer));
    // Telemetry keeps the pointers: leak the two small strings for the life of the process.
    let (ccmd, chelp) = (ccmd.into_raw(), chelp.into_raw());
    // SAFETY: both strings live forever; the trampoline has the telemetry_cb signature.
    let ret = unsafe { dpdk_sys::rte_telemetry_register_cmd(ccmd, Some(trampoline), chelp) };
    if ret < 0 {
        return Err(Error::from_code("rte_telemetry_register_cmd", ret));
    }
    Ok(())
}
