//! The transmit side of a shard: released frames go out in the order the shard released them,
//! either on the shard's own TX queue or through an SPSC ring to the I/O lcore (when the output
//! device has fewer TX queues than there are shards). Nothing is ever dropped here: what the
//! device or the ring cannot take now waits in an ordered backlog.

use std::collections::VecDeque;

use dpdk::{Mbuf, TxBatch, TxQueue};

/// Where a shard's released frames go.
pub enum TxPath {
    /// The shard's own queue on the output port.
    Queue {
        /// The claimed queue.
        queue: TxQueue,
        /// Frames being sent (boxed: the array of pointers is large next to a ring handle).
        batch: Box<TxBatch>,
    },
    /// An SPSC ring drained by the I/O lcore.
    Ring(rtrb::Producer<Mbuf>),
}

/// A shard's transmitter: the path plus the ordered backlog.
pub struct Transmitter {
    path: TxPath,
    backlog: VecDeque<Mbuf>,
}

impl Transmitter {
    /// A transmitter over `path`; the backlog grows only while the device is slower than the
    /// releases (held frames are bounded by the shard's queues and the mempool).
    pub fn new(path: TxPath) -> Self {
        Transmitter { path, backlog: VecDeque::with_capacity(1024) }
    }

    /// Queues a released frame behind everything released before it.
    pub fn push(&mut self, m: Mbuf) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(m);
            return;
        }
        let refused = match &mut self.path {
            TxPath::Queue { batch, .. } => batch.push(m).err(),
            TxPath::Ring(p) => p.push(m).err().map(|rtrb::PushError::Full(m)| m),
        };
        if let Some(m) = refused {
            self.backlog.push_back(m);
        }
    }

    /// Sends what can be sent now, keeping the order; returns frames handed on.
    pub fn flush(&mut self) -> usize {
        let mut sent = 0;
        loop {
            // Move backlog into the path as far as it fits.
            match &mut self.path {
                TxPath::Queue { queue, batch } => {
                    while !batch.is_full() {
                        let Some(m) = self.backlog.pop_front() else { break };
                        if let Err(m) = batch.push(m) {
                            self.backlog.push_front(m);
                            break;
                        }
                    }
                    let n = queue.tx_burst(batch);
                    sent += n;
                    if n == 0 || (batch.is_empty() && self.backlog.is_empty()) {
                        return sent;
                    }
                }
                TxPath::Ring(p) => {
                    while let Some(m) = self.backlog.pop_front() {
                        match p.push(m) {
                            Ok(()) => sent += 1,
                            Err(rtrb::PushError::Full(m)) => {
                                self.backlog.push_front(m);
                                break;
                            }
                        }
                    }
                    return sent;
                }
            }
        }
    }

    /// Frees every frame not yet handed on (shutdown with a stuck device); returns how many.
    pub fn discard(&mut self) -> usize {
        let mut n = self.backlog.len();
        self.backlog.clear();
        if let TxPath::Queue { batch, .. } = &mut self.path {
            while batch.pop_front().is_some() {
                n += 1;
            }
        }
        n
    }

    /// Frames not yet handed to the device or the ring.
    pub fn pending(&self) -> usize {
        let in_batch = match &self.path {
            TxPath::Queue { batch, .. } => batch.len(),
            TxPath::Ring(_) => 0,
        };
        in_batch + self.backlog.len()
    }
}
