//! `colo-replay`: runs the shard code over a primary and a secondary capture (SPEC §9.2).
#![forbid(unsafe_code)]
