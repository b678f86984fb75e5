//! The run's layout (SPEC §8), decided from the configuration and what the ports and the EAL
//! offer before anything is built: hardware RSS or software dispatch, one output TX queue per
//! shard or a ring to an I/O lcore, who does the I/O work, and the mbuf pool's size.
//!
//! Pure (port capabilities in, a [`Plan`] out), so every layout is unit-tested without DPDK;
//! `app::run` only wires what the plan says.

use dpdk::PortInfo;

/// Slots of each dispatch and TX ring.
pub const RING_SLOTS: usize = 1024;
/// RX and TX descriptors per queue.
pub const DESCRIPTORS: u16 = 1024;
/// Frames a shard may hold before its mbufs would run short; sizes the pool. Proxy mode lets
/// a side run up to a client window ahead: 16,384 frames of 1448 bytes is a 23 MB window, or
/// several connections with Linux's usual few-MB windows.
pub const HELD_PER_SHARD: u32 = 16_384;

/// Mbufs needed: descriptors of every queue, the dispatch and TX rings, and the comparison
/// window of every shard (held frames stay in their mbufs).
pub fn pool_size(shards: usize) -> u32 {
    let shards = shards as u32;
    let descriptors = u32::from(DESCRIPTORS) * (2 + 1 + shards);
    let rings = RING_SLOTS as u32 * shards * 3;
    // Not rounded to 2^n - 1 (DPDK's most memory-efficient size): that could double it.
    descriptors + rings + HELD_PER_SHARD * shards
}

/// Who does the I/O work: software dispatch of the guest (and client) ports to the shards,
/// and draining the TX rings (released frames, proxy mode's mirrored client frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoWork {
    /// Nothing: hardware RSS feeds the shards and each has its own output queue.
    None,
    /// Only draining TX rings (hardware RSS feeds the shards).
    DrainOnly,
    /// One RX context per guest port (the client port with the secondary's), the first also
    /// draining TX: two workers are spare.
    PerPort,
    /// One context reads every input port and drains TX.
    Shared,
}

/// What `app::run` builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Comparator shards, one worker lcore each.
    pub shards: usize,
    /// Hardware RSS spreads both guest ports over one RX queue per shard (same key, hash types
    /// and redirection table on both); otherwise software dispatch.
    pub hw_rss: bool,
    /// The shards poll the guest ports' RX queues themselves: queue *i* of both with hardware
    /// RSS, or queue 0 of both when one shard compares (compare mode: nothing to dispatch).
    /// Otherwise frames reach the shards through the I/O work's rings.
    pub shard_polls: bool,
    /// The output port has a TX queue per shard; otherwise shards hand released frames to the
    /// I/O work through rings.
    pub per_shard_tx: bool,
    /// The I/O work's layout.
    pub io: IoWork,
    /// No worker is spare: the I/O work runs on the main lcore between control rounds (e.g.
    /// one shard on a two-CPU machine).
    pub io_on_main: bool,
    /// No worker at all (EAL `-l 0`) and one shard: the shard runs on the main lcore too,
    /// between the I/O work and the control rounds — everything on one core, as
    /// `dpdk-testpmd` forwards on one.
    pub shard_on_main: bool,
    /// Mbufs in the pool (the shards' memory budget).
    pub mbufs: u32,
}

impl Plan {
    /// Decides the layout for `shards` shards on `workers` worker lcores. `guests` are the
    /// primary's and the secondary's port capabilities, `output` the output port's.
    pub fn decide(
        shards: usize,
        proxy: bool,
        guests: [&PortInfo; 2],
        output: &PortInfo,
        workers: usize,
        mbufs: Option<u32>,
    ) -> Result<Plan, String> {
        let shard_on_main = workers == 0 && shards == 1;
        if workers < shards && !shard_on_main {
            return Err(format!(
                "{shards} shard(s) need at least {shards} worker lcores besides the main lcore (one more for a \
                 separate I/O lcore), the EAL has {workers}: pass e.g. --lcores '(0-{})@(0,1)' before --",
                shards + 1
            ));
        }
        // Proxy mode dispatches client frames in software, so the guests' frames go that way
        // too (a connection's client and guest frames must meet in one shard).
        let hw_rss = shards > 1
            && !proxy
            && guests[0].reta_size == guests[1].reta_size
            && guests
                .iter()
                .all(|i| i.rss_offloads & dpdk::sys::RTE_ETH_RSS_IP != 0 && usize::from(i.max_rx_queues) >= shards);
        // One shard in compare mode takes both guest ports and the output itself, as
        // dpdk-testpmd forwards: a dispatch and two ring hops per frame would buy nothing.
        let direct = shards == 1 && !proxy;
        let shard_polls = hw_rss || direct;
        let per_shard_tx = (shards > 1 && usize::from(output.max_tx_queues) >= shards) || direct;
        let drains = !per_shard_tx || proxy;
        let spare = workers.saturating_sub(shards);
        let io = match (shard_polls, drains) {
            (true, false) => IoWork::None,
            (true, true) => IoWork::DrainOnly,
            (false, _) if spare >= 2 => IoWork::PerPort,
            (false, _) => IoWork::Shared,
        };
        Ok(Plan {
            shards,
            hw_rss,
            shard_polls,
            per_shard_tx,
            io,
            io_on_main: spare == 0,
            shard_on_main,
            mbufs: mbufs.unwrap_or_else(|| pool_size(shards)),
        })
    }

    /// How the dispatch is described in the start-up log.
    pub fn dispatch(&self) -> &'static str {
        if self.hw_rss {
            "hardware RSS (symmetric key)"
        } else if self.shard_polls {
            "none (one shard polls both guest ports)"
        } else {
            "software (symmetric Toeplitz)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(rx: u16, tx: u16, rss: bool) -> PortInfo {
        PortInfo {
            driver: "test".into(),
            name: "test".into(),
            max_rx_queues: rx,
            max_tx_queues: tx,
            rss_offloads: if rss { dpdk::sys::RTE_ETH_RSS_IP } else { 0 },
            reta_size: if rss { 128 } else { 0 },
            hash_key_size: 40,
        }
    }

    #[test]
    fn virtual_devices_get_software_dispatch_and_a_shared_io_lcore() {
        // net_pcap: one queue each way, no RSS. Two shards on three workers: one spare.
        let pcap = port(1, 1, false);
        let p = Plan::decide(2, false, [&pcap, &pcap], &pcap, 3, None).unwrap();
        assert_eq!((p.hw_rss, p.per_shard_tx, p.io, p.io_on_main), (false, false, IoWork::Shared, false));
        assert_eq!(p.mbufs, pool_size(2));
        // Four workers: each guest port gets its own RX lcore.
        assert_eq!(Plan::decide(2, false, [&pcap, &pcap], &pcap, 4, None).unwrap().io, IoWork::PerPort);
        // One shard, one worker (a two-CPU machine), proxy mode: the main lcore does the I/O.
        let p = Plan::decide(1, true, [&pcap, &pcap], &pcap, 1, Some(5000)).unwrap();
        assert_eq!((p.io, p.io_on_main, p.mbufs), (IoWork::Shared, true, 5000));
        assert!(!p.shard_polls && !p.per_shard_tx);
    }

    #[test]
    fn one_shard_in_compare_mode_polls_the_guest_ports_and_owns_the_output() {
        let pcap = port(1, 1, false);
        for workers in [0, 1, 3] {
            let p = Plan::decide(1, false, [&pcap, &pcap], &pcap, workers, None).unwrap();
            assert_eq!((p.hw_rss, p.shard_polls, p.per_shard_tx, p.io), (false, true, true, IoWork::None), "{workers}");
        }
        assert_eq!(
            Plan::decide(1, false, [&pcap, &pcap], &pcap, 1, None).unwrap().dispatch(),
            "none (one shard polls both guest ports)"
        );
        // Two shards on devices without RSS: software dispatch.
        let p = Plan::decide(2, false, [&pcap, &pcap], &pcap, 3, None).unwrap();
        assert!(!p.shard_polls && !p.per_shard_tx);
    }

    #[test]
    fn nics_with_rss_and_queues_need_no_io_lcore_in_compare_mode() {
        let nic = port(16, 16, true);
        let p = Plan::decide(4, false, [&nic, &nic], &nic, 4, None).unwrap();
        assert_eq!((p.hw_rss, p.per_shard_tx, p.io), (true, true, IoWork::None));
        // Proxy mode: client frames are dispatched in software, the guests' with them, and
        // mirrored frames need draining.
        let p = Plan::decide(4, true, [&nic, &nic], &nic, 5, None).unwrap();
        assert_eq!((p.hw_rss, p.io), (false, IoWork::Shared));
        // One shard: nothing to spread, no RSS.
        assert!(!Plan::decide(1, false, [&nic, &nic], &nic, 2, None).unwrap().hw_rss);
    }

    #[test]
    fn rss_needs_both_guest_ports_alike_and_enough_queues() {
        let (nic, small, other_reta) =
            (port(16, 16, true), port(2, 2, true), PortInfo { reta_size: 64, ..port(16, 16, true) });
        assert!(!Plan::decide(4, false, [&nic, &small], &nic, 4, None).unwrap().hw_rss);
        assert!(!Plan::decide(4, false, [&nic, &other_reta], &nic, 4, None).unwrap().hw_rss);
        // RSS in, but an output port with one TX queue: released frames go through rings.
        let p = Plan::decide(4, false, [&nic, &nic], &port(1, 1, false), 4, None).unwrap();
        assert_eq!((p.hw_rss, p.per_shard_tx, p.io, p.io_on_main), (true, false, IoWork::DrainOnly, true));
    }

    #[test]
    fn one_shard_without_workers_runs_everything_on_the_main_lcore() {
        let pcap = port(1, 1, false);
        let p = Plan::decide(1, false, [&pcap, &pcap], &pcap, 0, None).unwrap();
        assert_eq!((p.shard_on_main, p.io), (true, IoWork::None));
        let p = Plan::decide(1, true, [&pcap, &pcap], &pcap, 0, None).unwrap();
        assert_eq!((p.shard_on_main, p.io_on_main, p.io), (true, true, IoWork::Shared));
        assert!(!Plan::decide(1, false, [&pcap, &pcap], &pcap, 1, None).unwrap().shard_on_main);
        assert!(Plan::decide(2, false, [&pcap, &pcap], &pcap, 0, None).is_err());
    }

    #[test]
    fn too_few_workers_is_a_one_line_error_that_says_what_to_pass() {
        let pcap = port(1, 1, false);
        let e = Plan::decide(3, false, [&pcap, &pcap], &pcap, 2, None).unwrap_err();
        assert!(e.contains("--lcores '(0-4)@(0,1)'") && !e.contains('\n'), "{e}");
    }
}
