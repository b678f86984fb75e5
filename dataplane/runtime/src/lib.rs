//! The lcore runtime of `colo-dataplane` (SPEC §3, §8): port set-up, dispatch to shards, shard
//! loops and TX. It owns the mbufs and the clock; the comparison itself lives in `colo-core`.
//!
//! Still to come (issue 5): the shard loop and the `colo-dataplane` binary.
