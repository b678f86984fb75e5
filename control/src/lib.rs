//! COLO control plane (SPEC §7): the frame-socket protocol, checkpoint aggregation across shards
//! and the admin socket. No DPDK and no packet handling here.
//!
//! Still to come (issue 6).
#![forbid(unsafe_code)]
