//! COLO control plane (SPEC §7): the frame-socket protocol, checkpoint coordination across
//! shards, and the frame server. No DPDK and no packet handling here.
//!
//! * [`codec`] — the `notify_dev` wire format shared with QEMU's colo-compare and Xen's frame.
//! * [`coordinator`] — sans-IO checkpoint epochs: aggregation, flush barrier, frame loss.
//! * [`frame_server`] — the listening socket (`unix:PATH` or `tcp:HOST:PORT`), one frame at a
//!   time, reconnection accepted.
//! * [`admin`] — the admin socket (JSON lines) that `colo-ctl` talks to.
#![forbid(unsafe_code)]

pub mod admin;
pub mod codec;
pub mod coordinator;
pub mod frame_server;
