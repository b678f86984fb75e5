//! Shared helpers for the property tests: an indexed frame type and a driver that drains
//! actions and checks the accounting invariant after every call.
#![allow(dead_code)]

use colo_core::{Action, CheckpointRequest, DropReason, Frame, Shard, Side, Timestamp, Via};

/// A frame that remembers its position in its side's input.
#[derive(Clone, Debug)]
pub struct Indexed {
    pub side: Side,
    pub index: usize,
    pub data: Vec<u8>,
}

impl Frame for Indexed {
    fn bytes(&self) -> &[u8] {
        &self.data
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

#[derive(Default, Debug)]
pub struct Log {
    /// Primary frames released (a frame whose first bytes left as parts counts when its rest
    /// leaves), in order.
    pub released: Vec<(usize, Via)>,
    /// What reached the clients' wire, in order: released frames, parts, rests (each rest
    /// built as the egress builds it, in one piece).
    pub wire: Vec<Vec<u8>>,
    /// Parts released ahead of their segments' rests.
    pub parts: usize,
    pub dropped: Vec<(Side, usize, DropReason)>,
    pub requests: Vec<CheckpointRequest>,
}

pub fn drain(shard: &mut Shard<Indexed>, log: &mut Log) {
    log.record(std::iter::from_fn(|| shard.poll_action()));
    if let Err(e) = shard.counters().check_accounting() {
        panic!("accounting invariant broken: {e}");
    }
}

impl Log {
    /// Writes down `actions`, in order.
    pub fn record(&mut self, actions: impl IntoIterator<Item = Action<Indexed>>) {
        let log = self;
        for a in actions {
            match a {
                Action::Release { frame, via } => {
                    log.released.push((frame.index, via));
                    log.wire.push(frame.data);
                }
                Action::ReleaseRest { frame, via, skip } => {
                    log.released.push((frame.index, via));
                    let rest = colo_core::segment::rest(&frame.data, skip as usize).expect("a rest is a TCP segment");
                    log.wire.extend(rest);
                }
                Action::ReleasePart { bytes, .. } => {
                    log.parts += 1;
                    log.wire.push(bytes.into_vec());
                }
                Action::Drop { side, frame, reason } => log.dropped.push((side, frame.index, reason)),
                Action::Checkpoint(r) => log.requests.push(*r),
            }
        }
    }
}

pub fn feed(shard: &mut Shard<Indexed>, log: &mut Log, f: Indexed, now: Timestamp) {
    shard.handle(f.side, f, now);
    drain(shard, log);
}

/// Cases per property: `PROPTEST_CASES` or `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
