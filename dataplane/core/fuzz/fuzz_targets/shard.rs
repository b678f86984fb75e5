//! Fuzz target: a whole shard fed an arbitrary sequence of frames, time steps, timeouts and
//! checkpoint completions (SPEC §11). Checks: no panic, the accounting invariant after every
//! call, bounded queues and flow table.
//!
//! Input format, repeated: one control byte `c`, then for frame records a big-endian u16
//! length and that many bytes.
//!   c % 8 == 0..=4 → primary frame (0..=2) / secondary frame (3..=4)
//!   c % 8 == 5     → advance time by (c >> 3) ms
//!   c % 8 == 6     → handle_timeout
//!   c % 8 == 7     → checkpoint_done (standalone_completion when c >> 3 is odd)
//! An odd first byte selects proxy mode (offsets, port pairing, kept state).
#![no_main]

use colo_core::{Config, Mode, Shard, Side, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = Config {
        max_queue_size: 8,
        held_frames_budget: 64,
        max_flows: 4,
        mode: if data.first().is_some_and(|b| b % 2 == 1) { Mode::Proxy } else { Mode::Compare },
        ..Config::default().with_compare_timeout(core::time::Duration::from_millis(5))
    };
    let mut shard: Shard<Vec<u8>> = Shard::new(cfg);
    let mut now = 0u64;
    let mut rest = data;
    while let Some((&c, tail)) = rest.split_first() {
        rest = tail;
        let t = Timestamp::from_millis(now);
        match c % 8 {
            k @ 0..=4 => {
                let Some((len, tail)) = rest.split_first_chunk::<2>() else { break };
                let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
                let (frame, tail) = tail.split_at(len);
                rest = tail;
                let side = if k <= 2 { Side::Primary } else { Side::Secondary };
                shard.handle(side, frame.to_vec(), t);
            }
            5 => now += u64::from(c >> 3),
            6 => shard.handle_timeout(t),
            _ if (c >> 3) % 2 == 1 => shard.standalone_completion(t),
            _ => shard.checkpoint_done(t),
        }
        while shard.poll_action().is_some() {}
        let counters = shard.counters();
        if let Err(e) = counters.check_accounting() {
            panic!("{e}");
        }
        assert!(shard.flow_count() <= 4);
        // Queues per flow, plus guest-opened SYNs parked for pairing (proxy mode).
        assert!(counters.held_secondary_frames <= 4 * 8 + 256);
        // The shard's memory budget (reassembly partials are bounded on their own).
        assert!(counters.held_primary_frames <= 64 + 2 * 64 * 1024);
        assert!(shard.timer_entries() <= 16 * 4 + 1100);
    }
});
