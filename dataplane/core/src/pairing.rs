//! Proxy mode's source-port pairing for guest-opened TCP connections (SPEC §3).
//!
//! When a guest opens a connection, each guest's kernel picks its own ephemeral source port
//! (Linux perturbs the choice with randomness), so the two SYNs of one logical connection
//! usually carry different 4-tuples. This module pairs a secondary SYN with the oldest primary
//! SYN to the same destination that has no counterpart yet, and remembers the secondary's port
//! as an alias of the primary's: the secondary's frames are compared (and, after a failover to
//! it, transmitted) under the primary's port, and client frames mirrored to the secondary carry
//! the secondary's port.
//!
//! Owns: the alias table (secondary key → primary port), the primary SYNs still waiting, and
//! secondary SYNs that arrived before any primary SYN to their destination (parked, bounded,
//! for at most `compare_timeout`). Never allocates per packet in steady state beyond the
//! tables' own growth, never reads a clock. Pairs in arrival order; two connections opened
//! at the same instant to the same destination may pair crosswise, which costs a checkpoint
//! (their bytes differ), never a wrong release.

use std::collections::{HashMap, VecDeque};

use crate::time::Timestamp;
use crate::wire::FlowKey;

/// Secondary SYNs that may wait for their primary counterpart, per shard.
const PARKED_MAX: usize = 256;
/// Primary ports that may wait for a secondary SYN, per destination.
const WAITING_MAX: usize = 64;

/// A connection's destination as both guests see it: the key without the source port.
fn destination(key: &FlowKey) -> FlowKey {
    FlowKey { src_port: 0, ..*key }
}

/// A secondary SYN waiting for the primary's.
pub(crate) struct Parked<F> {
    pub(crate) key: FlowKey,
    pub(crate) seg: crate::wire::TcpSegment,
    pub(crate) frame: F,
    pub(crate) arrived: Timestamp,
    pub(crate) len: u32,
}

/// See the module doc.
pub(crate) struct PortPairs<F> {
    /// The secondary's key (guest → client) → the primary's source port.
    alias: HashMap<FlowKey, u16, ahash::RandomState>,
    /// Per destination, primary ports whose SYN has not met a secondary SYN, oldest first.
    waiting: HashMap<FlowKey, VecDeque<u16>, ahash::RandomState>,
    /// Secondary SYNs seen before any primary SYN to their destination, oldest first.
    parked: VecDeque<Parked<F>>,
}

impl<F> Default for PortPairs<F> {
    fn default() -> Self {
        PortPairs { alias: HashMap::default(), waiting: HashMap::default(), parked: VecDeque::new() }
    }
}

impl<F> PortPairs<F> {
    /// The primary's port for a secondary key, if the secondary's port is an alias.
    pub(crate) fn primary_port(&self, secondary: &FlowKey) -> Option<u16> {
        if self.alias.is_empty() {
            return None;
        }
        self.alias.get(secondary).copied()
    }

    /// A primary SYN (no ACK) opened `key`: it waits for a secondary SYN. Returns the parked
    /// secondary SYN it pairs with, if one came first (from another port).
    pub(crate) fn primary_syn(
        &mut self,
        key: &FlowKey,
        now: Timestamp,
        timeout: core::time::Duration,
    ) -> Option<Parked<F>> {
        let dest = destination(key);
        // A parked SYN older than `timeout` belongs to a connection the primary never opened.
        let fresh = |p: &Parked<F>| now < p.arrived.saturating_add(timeout);
        if let Some(i) = self.parked.iter().position(|p| destination(&p.key) == dest && fresh(p)) {
            let parked = self.parked.remove(i)?;
            if parked.key.src_port != key.src_port {
                self.alias.insert(parked.key, key.src_port);
            }
            return Some(parked);
        }
        let ports = self.waiting.entry(dest).or_default();
        if !ports.contains(&key.src_port) {
            if ports.len() >= WAITING_MAX {
                ports.pop_front();
            }
            ports.push_back(key.src_port);
        }
        None
    }

    /// A secondary SYN (no ACK) on `key`, which has no connection of its own. Returns the
    /// primary port it pairs with (now an alias), or `None` if no primary SYN waits.
    pub(crate) fn secondary_syn(&mut self, key: &FlowKey) -> Option<u16> {
        let dest = destination(key);
        let ports = self.waiting.get_mut(&dest)?;
        let port = ports.pop_front()?;
        if ports.is_empty() {
            self.waiting.remove(&dest);
        }
        self.alias.insert(*key, port);
        Some(port)
    }

    /// A secondary SYN met its primary counterpart on the same port: nothing to pair.
    pub(crate) fn same_port(&mut self, key: &FlowKey) {
        let dest = destination(key);
        if let Some(ports) = self.waiting.get_mut(&dest) {
            ports.retain(|&p| p != key.src_port);
            if ports.is_empty() {
                self.waiting.remove(&dest);
            }
        }
    }

    /// Parks a secondary SYN; returns the frame it replaces (a retransmission of the same
    /// SYN takes its place, so one connection never pairs twice) or had to give up to stay
    /// bounded, if any.
    pub(crate) fn park(&mut self, parked: Parked<F>) -> Option<Parked<F>> {
        if let Some(same) = self.parked.iter_mut().find(|p| p.key == parked.key) {
            return Some(std::mem::replace(same, parked));
        }
        let evicted = if self.parked.len() >= PARKED_MAX { self.parked.pop_front() } else { None };
        self.parked.push_back(parked);
        evicted
    }

    /// The secondary opened a new connection from `secondary`: an alias its port had belongs
    /// to an old connection.
    pub(crate) fn unalias(&mut self, secondary: &FlowKey) {
        if !self.alias.is_empty() {
            self.alias.remove(secondary);
        }
    }

    /// The oldest parked SYN if it waited `timeout` by `now` (its primary never opened that
    /// connection: it is consumed, as any secondary SYN without counterpart).
    pub(crate) fn expired(&mut self, now: Timestamp, timeout: core::time::Duration) -> Option<Parked<F>> {
        if self.parked.front().is_some_and(|p| p.arrived.saturating_add(timeout) <= now) {
            return self.parked.pop_front();
        }
        None
    }

    /// A connection (primary key `key`, whose secondary used `secondary_port`) is gone.
    pub(crate) fn forget(&mut self, key: &FlowKey, secondary_port: Option<u16>) {
        self.forget_alias(key, secondary_port);
        self.same_port(key);
    }

    /// A connection starts a new incarnation on `key`: the old one's alias goes, but not the
    /// new primary SYN's place in the waiting list (it was just registered).
    pub(crate) fn forget_alias(&mut self, key: &FlowKey, secondary_port: Option<u16>) {
        if let Some(port) = secondary_port {
            self.alias.remove(&FlowKey { src_port: port, ..*key });
        }
    }

    /// A checkpoint made the secondary a copy of the primary: from now on it uses the
    /// primary's ports. Returns the parked SYNs (to be flushed).
    pub(crate) fn reset(&mut self) -> VecDeque<Parked<F>> {
        self.alias.clear();
        self.waiting.clear();
        std::mem::take(&mut self.parked)
    }

    /// Parked SYNs that a flush without resynchronisation (standalone, failover) drops.
    pub(crate) fn take_parked(&mut self) -> VecDeque<Parked<F>> {
        std::mem::take(&mut self.parked)
    }
}
