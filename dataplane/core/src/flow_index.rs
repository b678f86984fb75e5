//! The flow table's index (SPEC §11): from a flow's key to the slot that holds it.
//!
//! Owns a hash table of slot numbers (4 bytes an entry, with hashbrown's control bytes one
//! more) and the keyed hash of a flow key. The keys themselves live in the shard's slots, so
//! the index of a 65,536-flow table takes about 640 KiB and stays in a core's L2 cache, where a
//! map holding whole keys took 7 MiB and missed on every lookup; the one key comparison a
//! lookup makes reads the slot the caller is about to use anyway.
//!
//! The hash is keyed per shard (`ahash::RandomState`), so a peer choosing addresses and ports
//! cannot make flows collide on purpose. It is computed once per frame and kept beside the
//! flow, so growing or removing never hashes a key again.
//!
//! Never allocates except when the table grows past the capacity it was made with.

use std::net::IpAddr;

use crate::wire::FlowKey;

/// Slot numbers by key hash. The caller supplies the key comparison (the keys are in its slots).
pub(crate) struct FlowIndex {
    table: hashbrown::HashTable<u32>,
    state: ahash::RandomState,
}

impl FlowIndex {
    /// An empty index with room for `capacity` flows before it grows.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        FlowIndex { table: hashbrown::HashTable::with_capacity(capacity), state: ahash::RandomState::new() }
    }

    /// The keyed hash of a flow key and its comparator kind (`tag`). The key is packed into
    /// 128-bit words first (two for IPv4, three for IPv6): hashing the derived way would feed
    /// every field and enum discriminant separately, several times the work.
    #[inline]
    pub(crate) fn hash(&self, key: &FlowKey, tag: u8) -> u64 {
        // VLAN ids are 12 bits: 0xffff stands for "untagged".
        let vlan = |v: Option<u16>| u128::from(v.unwrap_or(u16::MAX));
        let rest = vlan(key.vlans[0])
            | vlan(key.vlans[1]) << 16
            | u128::from(key.proto) << 32
            | u128::from(tag) << 40
            | u128::from(key.src_port) << 48
            | u128::from(key.dst_port) << 64;
        match (key.src, key.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                self.state.hash_one((u128::from(u32::from(src)) << 32 | u128::from(u32::from(dst)), rest))
            }
            (src, dst) => {
                let addr = |a: IpAddr| match a {
                    IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
                    IpAddr::V6(v6) => u128::from(v6),
                };
                self.state.hash_one((addr(src), addr(dst), rest | 1 << 80))
            }
        }
    }

    /// The slot with this hash for which `is` says yes.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        self.table.find(hash, |&slot| is(slot)).copied()
    }

    /// Records `slot` under `hash`; `hash_of` gives the hash of a slot already in the index
    /// (needed only when the table grows).
    pub(crate) fn insert(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) {
        self.table.insert_unique(hash, slot, |&s| hash_of(s));
    }

    /// Forgets `slot`, recorded under `hash`; whether it was there.
    pub(crate) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        match self.table.find_entry(hash, |&s| s == slot) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Flows recorded.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Every recorded slot, in no particular order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.table.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn key(src_port: u16) -> FlowKey {
        FlowKey {
            vlans: [None, None],
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            proto: 17,
            src_port,
            dst_port: 53,
        }
    }

    #[test]
    fn every_field_and_the_tag_change_the_hash() {
        let index = FlowIndex::with_capacity(4);
        let base = key(1000);
        let h = index.hash(&base, 1);
        let variants = [
            FlowKey { vlans: [Some(0), None], ..base },
            FlowKey { vlans: [None, Some(7)], ..base },
            FlowKey { src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)), ..base },
            FlowKey { dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)), ..base },
            FlowKey { src: IpAddr::V6(Ipv6Addr::from(u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 2))))), ..base },
            FlowKey { proto: 6, ..base },
            FlowKey { src_port: 1001, ..base },
            FlowKey { dst_port: 54, ..base },
        ];
        for v in variants {
            assert_ne!(index.hash(&v, 1), h, "{v:?}");
        }
        assert_ne!(index.hash(&base, 2), h);
        assert_eq!(index.hash(&key(1000), 1), h, "the same key hashes the same");
    }

    #[test]
    fn finds_inserts_and_removes_by_slot_through_growth() {
        let mut index = FlowIndex::with_capacity(2);
        let keys: Vec<FlowKey> = (0..1000).map(key).collect();
        let hashes: Vec<u64> = keys.iter().map(|k| index.hash(k, 0)).collect();
        for slot in 0..1000u32 {
            index.insert(hashes[slot as usize], slot, |s| hashes[s as usize]);
        }
        assert_eq!(index.len(), 1000);
        let find = |index: &FlowIndex, k: &FlowKey| index.find(index.hash(k, 0), |s| keys[s as usize] == *k);
        assert_eq!(find(&index, &keys[617]), Some(617));
        assert!(index.remove(hashes[617], 617));
        assert!(!index.remove(hashes[617], 617), "removed once");
        assert_eq!(find(&index, &keys[617]), None);
        assert_eq!(find(&index, &keys[618]), Some(618));
        assert_eq!(index.slots().count(), 999);
    }
}
