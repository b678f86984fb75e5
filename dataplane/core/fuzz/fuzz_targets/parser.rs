//! Fuzz target: the wire parser must classify any bytes without panicking, a TCP summary's
//! payload range must lie inside the frame (SPEC §4, §11), and the common-frame fast path must
//! agree with etherparse's general walk.
#![no_main]

use colo_core::wire::{self, Class};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let class = wire::parse(data);
    assert_eq!(class, wire::parse_general(data), "the fast path disagrees with the general walk");
    if let Class::Tcp(_, seg) = class {
        let payload = wire::payload(data, &seg);
        assert!(payload.is_some(), "payload range outside the frame");
    }
});
