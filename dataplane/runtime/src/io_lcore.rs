//! The I/O lcore of software dispatch (SPEC §8): receives from the primary and secondary
//! ports, hashes each frame with the symmetric Toeplitz hash to its shard, hands it over an
//! SPSC ring, and — when the output device has fewer TX queues than shards — drains the
//! shards' TX rings onto the output port.
//!
//! A full shard ring never drops a frame: the lcore waits (still draining TX, so a shard
//! blocked on its TX ring can progress), and the NIC's own RX queue absorbs or counts the rest.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use colo_core::Frame;
use dpdk::{Mbuf, RxBurst, RxQueue, TxBatch, TxQueue};

use crate::held::HeldFrame;
use crate::Shared;

pub use colo_core::rss::shard_of;

/// A frame on its way to its shard, with the parse that chose the shard (none with one shard:
/// nothing was parsed), so the shard does not parse it again.
pub type Dispatched = (HeldFrame, Option<colo_core::wire::Class>);

/// The output side drained by this lcore.
pub struct TxDrain {
    /// The output queue.
    pub queue: TxQueue,
    /// Frames being sent.
    pub batch: TxBatch,
    /// One ring per shard.
    pub rings: Vec<rtrb::Consumer<Mbuf>>,
    /// Next ring to look at (round robin).
    pub next: usize,
}

impl TxDrain {
    /// Moves released frames from the shards' rings to the device; returns frames sent. A
    /// shard's frames stay in its ring order, so no flow is reordered.
    pub fn drain(&mut self) -> usize {
        let mut sent = 0;
        for _ in 0..self.rings.len() {
            let ring = &mut self.rings[self.next];
            while !self.batch.is_full() {
                let Ok(m) = ring.pop() else { break };
                if let Err(m) = self.batch.push(m) {
                    unreachable!("batch checked not full: {m:?}");
                }
            }
            sent += self.queue.tx_burst(&mut self.batch);
            if !self.batch.is_empty() {
                // The device is full: keep the rest (in order) for the next round, and do not
                // move on to another ring before this batch is out.
                return sent;
            }
            self.next = (self.next + 1) % self.rings.len();
        }
        sent
    }

    /// Frees everything still waiting (shutdown with a stuck device); returns how many.
    pub fn discard(&mut self) -> usize {
        let mut n = 0;
        while self.batch.pop_front().is_some() {
            n += 1;
        }
        for ring in &mut self.rings {
            while ring.pop().is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Whether nothing is waiting anywhere.
    pub fn is_idle(&self) -> bool {
        self.batch.is_empty() && self.rings.iter().all(|r| r.is_empty())
    }
}

/// Where a received frame comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The primary guest's port.
    Primary,
    /// The secondary guest's port.
    Secondary,
    /// The clients' port (proxy mode): frames to mirror to both guests.
    Client,
}

impl Source {
    fn index(self) -> usize {
        match self {
            Source::Primary => 0,
            Source::Secondary => 1,
            Source::Client => 2,
        }
    }
}

/// Everything the I/O lcore owns.
pub struct IoContext {
    /// Input queues with what they carry.
    pub inputs: Vec<(Source, RxQueue)>,
    /// Per source (primary, secondary, client), one producer per shard.
    pub to_shards: [Vec<rtrb::Producer<Dispatched>>; 3],
    /// TX draining: the output port when shards do not own output queues, and in proxy mode
    /// the mirrored client frames toward each guest port.
    pub txs: Vec<TxDrain>,
    /// Flags shared with the control thread.
    pub shared: Arc<Shared>,
    /// Number of shards.
    pub shards: usize,
    /// Pauses RX while the packet pool runs low.
    pub gate: RxGate,
    /// How to wait when there is nothing to move.
    pub backoff: crate::IdleBackoff,
    /// This lcore's busy/idle cycles.
    pub load: Arc<crate::LcoreLoad>,
}

/// RX back-pressure on a low packet pool (SPEC §6, §8): below a reserve of free mbufs, frames
/// stay in the device (where a NIC counts what it cannot keep) rather than being taken and
/// lost; the shards' `resource-pressure` checkpoint frees the held mbufs and RX resumes.
/// Counting free mbufs walks every lcore's cache, so it is not done per burst: a count gives a
/// budget (free minus reserve) that received frames use up, and only an exhausted budget is
/// counted again — conservative, since frees in between are not credited.
pub struct RxGate {
    pool: dpdk::Mempool,
    reserve: u32,
    budget: u32,
    /// This lcore's last-RX stamp (its own cache line).
    stamp: Arc<crate::RxStamp>,
}

impl RxGate {
    /// A gate on `pool` closing below `capacity / divisor` free mbufs; received bursts are
    /// stamped in `stamp`.
    pub fn new(pool: dpdk::Mempool, divisor: u32, stamp: Arc<crate::RxStamp>) -> Self {
        let reserve = pool.capacity() / divisor.max(1);
        RxGate { pool, reserve, budget: 0, stamp }
    }

    /// Whether RX may take a burst now.
    pub fn open(&mut self) -> bool {
        if self.budget == 0 {
            self.budget = self.pool.available().saturating_sub(self.reserve);
        }
        self.budget > 0
    }

    /// RX took `n` frames (one mbuf each).
    pub fn took(&mut self, n: usize) {
        self.budget = self.budget.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        if n > 0 {
            self.stamp.0.store(dpdk::tsc(), Ordering::Relaxed);
        }
    }
}

impl IoContext {
    /// Runs until the control thread stops RX, then keeps draining TX until every shard has
    /// stopped and nothing is left to send.
    pub fn run(mut self) {
        let mut burst = RxBurst::new();
        let mut round_start = dpdk::tsc();
        while !self.shared.stop_rx.load(Ordering::Acquire) {
            let moved = self.poll(&mut burst);
            self.backoff.round(moved > 0);
            let round_end = dpdk::tsc();
            self.load.round(round_end.saturating_sub(round_start), moved as u64);
            round_start = round_end;
        }
        drop(burst);
        self.stop_rx();
        if self.txs.is_empty() {
            return; // a receive-only lcore is done once its input is dispatched
        }
        self.finish_tx();
    }

    /// After RX stopped: drains TX until every shard has stopped and nothing is left, giving
    /// a stuck output device [`crate::SHUTDOWN_TX_GRACE`] after the last shard stopped.
    pub fn finish_tx(&mut self) {
        let mut give_up: Option<std::time::Instant> = None;
        while !self.finished() {
            if self.drain_tx() == 0 {
                if self.shared.shards_stopped.load(Ordering::Acquire) == self.shards {
                    let t = *give_up.get_or_insert_with(|| std::time::Instant::now() + crate::SHUTDOWN_TX_GRACE);
                    if std::time::Instant::now() >= t {
                        let n = self.txs.iter_mut().map(TxDrain::discard).sum::<usize>() as u64;
                        self.shared.tx_abandoned_at_shutdown.fetch_add(n, Ordering::Relaxed);
                        return;
                    }
                }
                std::thread::yield_now();
            }
        }
    }

    /// One round: a burst from each input dispatched to the shards, then TX drained. Returns
    /// the frames moved.
    pub fn poll(&mut self, burst: &mut RxBurst) -> usize {
        let mut work = 0;
        // Back-pressure (SPEC §6, §8): the shards have asked for a resource-pressure
        // checkpoint by now; its flush frees the held mbufs and RX resumes.
        for i in 0..self.inputs.len() {
            if !self.gate.open() {
                break;
            }
            let (source, queue) = &mut self.inputs[i];
            let source = *source;
            let n = queue.rx_burst(burst);
            self.gate.took(n);
            work += n;
            for m in burst.by_ref() {
                let m = HeldFrame::received(m);
                let (shard, class) = colo_core::rss::dispatch(m.bytes(), self.shards);
                let mut m = (m, class);
                loop {
                    let producer = &mut self.to_shards[source.index()][shard];
                    match producer.push(m) {
                        Ok(()) => break,
                        Err(rtrb::PushError::Full(back)) => {
                            m = back;
                            for tx in &mut self.txs {
                                tx.drain();
                            }
                            std::hint::spin_loop();
                        }
                    }
                }
            }
        }
        work + self.drain_tx()
    }

    /// Releases the input queues and tells the control thread RX has stopped; everything
    /// received has been handed to the shards by then.
    pub fn stop_rx(&mut self) {
        if !self.inputs.is_empty() {
            drop(std::mem::take(&mut self.inputs));
            self.shared.rx_running.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Moves released frames to the output device (if this lcore owns TX).
    pub fn drain_tx(&mut self) -> usize {
        self.txs.iter_mut().map(TxDrain::drain).sum()
    }

    /// Whether every shard has stopped and nothing is left to transmit.
    pub fn finished(&self) -> bool {
        self.shared.shards_stopped.load(Ordering::Acquire) == self.shards && self.txs.iter().all(TxDrain::is_idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&32u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[38..40].copy_from_slice(&12u16.to_be_bytes());
        f
    }

    #[test]
    fn both_directions_of_a_flow_meet_in_one_shard_and_flows_spread() {
        let mut used = std::collections::HashSet::new();
        for i in 0..200u8 {
            let a = [10, 0, i, 1];
            let b = [192, 168, 1, i.wrapping_mul(7)];
            let fwd = shard_of(&udp(a, b, 1000 + u16::from(i), 53), 4);
            let rev = shard_of(&udp(b, a, 53, 1000 + u16::from(i)), 4);
            assert_eq!(fwd, rev, "flow {i}");
            assert!(fwd < 4);
            used.insert(fwd);
        }
        assert_eq!(used.len(), 4, "200 flows use every shard");
    }

    #[test]
    fn frames_without_a_flow_go_to_shard_zero() {
        assert_eq!(shard_of(&[0u8; 3], 4), 0);
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(shard_of(&arp, 4), 0);
    }
}
