//! A thin safe layer over `dpdk-sys` (DPDK 22.11): EAL, mempools, mbufs, ports, rings and lcore
//! launch.
//!
//! Owns the rules that make DPDK usable from safe Rust: the EAL starts once per process; a
//! mempool is freed only when none of its mbufs is alive; an [`Mbuf`] is owned (freed on drop,
//! `Send` but not `Sync`); RX bursts free what the caller did not take; TX takes ownership and
//! hands back what the device did not accept. Nothing COLO-specific lives here, and nothing on
//! the per-packet path allocates.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod burst;
mod eal;
mod error;
mod lcore;
mod mbuf;
mod mempool;
mod port;
mod ring;
pub mod telemetry;

pub use burst::{FreeBatch, RxBurst, TxBatch, BURST_SIZE};
pub use eal::Eal;
pub use error::{Error, Result};
pub use lcore::{current_lcore, launch, worker_lcores, JoinHandle, LcoreId};
pub use mbuf::Mbuf;
pub use mempool::{Mempool, PoolOrder};
pub use port::{
    LinkStatus, Port, PortConfig, PortId, PortInfo, PortStats, RssConfig, RxQueue, TxQueue, SYMMETRIC_RSS_KEY,
};
pub use ring::Ring;

pub use dpdk_sys as sys;

/// Reads the TSC (`rte_rdtsc`). On x86_64 the instruction itself, inline: `rte_rdtsc` is a
/// C inline function, which the bindings can only reach through an out-of-line wrapper (a
/// call on every read, a few times per lcore round).
#[inline]
pub fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_rdtsc` executes the rdtsc instruction, which every x86_64 CPU has; it reads
    // the time-stamp counter and touches no memory (an intrinsic, hence `unsafe`).
    unsafe {
        std::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: rte_rdtsc only reads the CPU's cycle counter; it touches no memory.
    unsafe {
        dpdk_sys::rte_rdtsc()
    }
}

/// TSC ticks per second as measured by EAL (0 before [`Eal::init`]).
pub fn tsc_hz() -> u64 {
    // SAFETY: a plain read of a value EAL computed at init; safe to call at any time.
    unsafe { dpdk_sys::rte_get_tsc_hz() }
}
