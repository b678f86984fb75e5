//! Fuzz target: the wire parser must classify any bytes without panicking, and a TCP
//! summary's payload range must lie inside the frame (SPEC §4, §11).
#![no_main]

use colo_core::wire::{self, Class};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Class::Tcp(_, seg) = wire::parse(data) {
        let payload = wire::payload(data, &seg);
        assert!(payload.is_some(), "payload range outside the frame");
    }
});
