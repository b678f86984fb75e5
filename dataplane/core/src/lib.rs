//! Sans-IO COLO comparator core (SPEC §4–§6): frames and `now` go in, actions come out.
//!
//! This crate owns the comparison logic and must never read a clock, touch DPDK, or use `unsafe`.
#![forbid(unsafe_code)]
