//! The flow table's index (SPEC §11): from a flow's key to the slot that holds it.
//!
//! Owns a hash table of slot numbers (one 8-byte word a bucket: the slot number and 32 bits of
//! the hash; at least twice the buckets as flows), the packed form of a flow key (`PackedKey`,
//! what is hashed and compared) and the keyed hash of it. The keys themselves live in the
//! shard's slots, so the index of a 65,536-flow table takes 1 MiB and stays in a core's L2
//! cache, where a map holding whole keys took 7 MiB and missed on every lookup; the one key
//! comparison a lookup makes reads the slot the caller is about to use anyway.
//!
//! The hash is keyed per shard (`ahash::RandomState`), so a peer choosing addresses and ports
//! cannot make flows collide on purpose. It is computed once per frame and kept beside the
//! flow, so growing or removing never hashes a key again.
//!
//! Never allocates except when the table grows past the capacity it was made with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::FlowKey;

/// Set in a packed key's last word when the addresses take a word each (IPv6).
const V6: u128 = 1 << 80;
/// Set (with [`V6`]) when the source / destination address is IPv4 all the same.
const SRC_V4: u128 = 1 << 81;
const DST_V4: u128 = 1 << 82;

/// A flow key and its comparator kind (`tag`) packed into three 128-bit words: what the index
/// hashes and what a lookup compares. Two IPv4 addresses share the first word; IPv6 ones take
/// a word each. As large as the key (48 bytes), so a flow keeps its key in this form and a
/// lookup compares three words instead of the key's fields (addresses as enums, VLANs as
/// options): 17 instructions fewer a 64 B UDP pair in bursts (callgrind, the steady bench).
#[derive(Clone, Copy, Debug, Eq)]
pub(crate) struct PackedKey([u128; 3]);

/// Word by word, in line: the derived comparison of the array called the library's `memcmp`
/// for its 48 bytes (32 instructions a 64 B UDP pair in bursts).
impl PartialEq for PackedKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        let [a0, a1, a2] = self.0;
        let [b0, b1, b2] = other.0;
        ((a0 ^ b0) | (a1 ^ b1) | (a2 ^ b2)) == 0
    }
}

impl PackedKey {
    #[inline]
    pub(crate) fn new(key: &FlowKey, tag: u8) -> Self {
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
                PackedKey([u128::from(u32::from(src)) << 32 | u128::from(u32::from(dst)), 0, rest])
            }
            (src, dst) => {
                let addr = |a: IpAddr| match a {
                    IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
                    IpAddr::V6(v6) => u128::from(v6),
                };
                let families = (u128::from(src.is_ipv4()) * SRC_V4) | (u128::from(dst.is_ipv4()) * DST_V4);
                PackedKey([addr(src), addr(dst), rest | V6 | families])
            }
        }
    }

    /// The key back (for reports and the cold paths that need its fields).
    pub(crate) fn key(&self) -> FlowKey {
        let [w0, w1, rest] = self.0;
        let vlan = |v: u128| Some(v as u16).filter(|&v| v != u16::MAX);
        let (src, dst) = if rest & V6 == 0 {
            (IpAddr::V4(Ipv4Addr::from((w0 >> 32) as u32)), IpAddr::V4(Ipv4Addr::from(w0 as u32)))
        } else {
            let addr = |w: u128, v4: bool| {
                let v6 = Ipv6Addr::from(w);
                match v6.to_ipv4_mapped() {
                    Some(a) if v4 => IpAddr::V4(a),
                    _ => IpAddr::V6(v6),
                }
            };
            (addr(w0, rest & SRC_V4 != 0), addr(w1, rest & DST_V4 != 0))
        };
        FlowKey {
            vlans: [vlan(rest), vlan(rest >> 16)],
            src,
            dst,
            proto: (rest >> 32) as u8,
            src_port: (rest >> 48) as u16,
            dst_port: (rest >> 64) as u16,
        }
    }
}

/// Slot numbers by key hash, in open addressing with linear probing. The caller supplies the
/// key comparison (the keys are in its slots).
///
/// Each bucket is one word: the hash's low 32 bits (its tag) above the slot number, so a probe
/// reads the slot only when the whole tag matches, and the bucket a key starts at (`tag &
/// mask`) can be read ahead on its own ([`FlowIndex::read_ahead`]), the step hashbrown (which
/// held the index before) offers no way to take. At most half the buckets are used, so a
/// lookup almost always ends within the cache line it starts on; removal shifts later entries
/// back (no tombstones), so a long-lived table does not slow down.
pub(crate) struct FlowIndex {
    buckets: Vec<u64>,
    /// `buckets.len() - 1` (a power of two less one).
    mask: usize,
    len: usize,
    state: ahash::RandomState,
}

/// A free bucket (no slot is numbered `u32::MAX`).
const EMPTY: u64 = u64::MAX;

impl FlowIndex {
    /// An empty index with room for `capacity` flows before it grows.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let buckets = capacity.saturating_mul(2).next_power_of_two().max(16);
        FlowIndex { buckets: vec![EMPTY; buckets], mask: buckets - 1, len: 0, state: ahash::RandomState::new() }
    }

    /// The keyed hash of a packed key: two words for IPv4, three for IPv6.
    #[inline]
    pub(crate) fn hash(&self, key: &PackedKey) -> u64 {
        let [addrs, v6_dst, rest] = key.0;
        if rest & V6 == 0 {
            self.state.hash_one((addrs, rest))
        } else {
            self.state.hash_one((addrs, v6_dst, rest))
        }
    }

    /// The bucket a probe for `hash` starts at.
    #[inline]
    fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask
    }

    /// Reads the bucket a lookup of `hash` starts at, so that the lookup finds it in the cache
    /// (the burst lookup reads ahead for every frame before it probes for any). The bucket's
    /// value goes to `black_box`, not a reference to it: a reference reads nothing, and the
    /// first version of this step, written that way, read no bucket at all.
    #[inline]
    pub(crate) fn read_ahead(&self, hash: u64) {
        std::hint::black_box(self.buckets.get(self.home(hash as u32)).copied());
    }

    /// The slot with this hash for which `is` says yes.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = hash as u32;
        let mut at = self.home(tag);
        // Half the buckets at least are free: a probe ends long before this bound.
        for _ in 0..self.buckets.len() {
            let entry = self.buckets.get(at).copied().unwrap_or(EMPTY);
            if entry == EMPTY {
                return None;
            }
            if (entry >> 32) as u32 == tag && is(entry as u32) {
                return Some(entry as u32);
            }
            at = (at + 1) & self.mask;
        }
        None
    }

    /// Records `slot` under `hash`.
    pub(crate) fn insert(&mut self, hash: u64, slot: u32) {
        debug_assert!(slot != u32::MAX, "slot number reserved for free buckets");
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow();
        }
        self.place(hash, slot);
        self.len += 1;
    }

    /// Puts an entry in the first free bucket of its probe.
    fn place(&mut self, hash: u64, slot: u32) {
        let tag = hash as u32;
        let mut at = self.home(tag);
        while self.buckets.get(at).is_some_and(|&e| e != EMPTY) {
            at = (at + 1) & self.mask;
        }
        if let Some(bucket) = self.buckets.get_mut(at) {
            *bucket = u64::from(tag) << 32 | u64::from(slot);
        }
    }

    /// Twice the buckets, every entry placed again. Its tag is all a bucket's place depends on
    /// (the index stays far below 2^32 buckets), so no key is hashed again.
    #[cold]
    fn grow(&mut self) {
        let size = self.buckets.len() * 2;
        debug_assert!(size <= 1 << 32, "the tag decides the bucket");
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; size]);
        self.mask = size - 1;
        for entry in old.into_iter().filter(|&e| e != EMPTY) {
            self.place(entry >> 32, entry as u32);
        }
    }

    /// Forgets `slot`, recorded under `hash`; whether it was there.
    pub(crate) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let tag = hash as u32;
        let wanted = u64::from(tag) << 32 | u64::from(slot);
        let mut at = self.home(tag);
        let mut hole = loop {
            match self.buckets.get(at).copied() {
                Some(e) if e == wanted => break at,
                Some(e) if e != EMPTY => at = (at + 1) & self.mask,
                _ => return false,
            }
        };
        // Shift back every later entry of the run whose probe passes the hole, so no probe
        // meets a free bucket before its entry.
        let mut next = (hole + 1) & self.mask;
        while let Some(entry) = self.buckets.get(next).copied().filter(|&e| e != EMPTY) {
            let home = self.home((entry >> 32) as u32);
            if next.wrapping_sub(home) & self.mask >= next.wrapping_sub(hole) & self.mask {
                if let Some(b) = self.buckets.get_mut(hole) {
                    *b = entry;
                }
                hole = next;
            }
            next = (next + 1) & self.mask;
        }
        if let Some(b) = self.buckets.get_mut(hole) {
            *b = EMPTY;
        }
        self.len -= 1;
        true
    }

    /// Flows recorded.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every recorded slot, in no particular order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.buckets.iter().filter(|&&e| e != EMPTY).map(|&e| e as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let hash = |k: &FlowKey, tag| index.hash(&PackedKey::new(k, tag));
        let h = hash(&base, 1);
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
            assert_ne!(hash(&v, 1), h, "{v:?}");
            assert_ne!(PackedKey::new(&v, 1), PackedKey::new(&base, 1), "{v:?}");
        }
        assert_ne!(hash(&base, 2), h);
        assert_eq!(hash(&key(1000), 1), h, "the same key hashes the same");
    }

    #[test]
    fn finds_inserts_and_removes_by_slot_through_growth() {
        let mut index = FlowIndex::with_capacity(2);
        let keys: Vec<FlowKey> = (0..1000).map(key).collect();
        let hashes: Vec<u64> = keys.iter().map(|k| index.hash(&PackedKey::new(k, 0))).collect();
        for slot in 0..1000u32 {
            index.insert(hashes[slot as usize], slot);
        }
        assert_eq!(index.len(), 1000);
        let find =
            |index: &FlowIndex, k: &FlowKey| index.find(index.hash(&PackedKey::new(k, 0)), |s| keys[s as usize] == *k);
        assert_eq!(find(&index, &keys[617]), Some(617));
        assert!(index.remove(hashes[617], 617));
        assert!(!index.remove(hashes[617], 617), "removed once");
        assert_eq!(find(&index, &keys[617]), None);
        assert_eq!(find(&index, &keys[618]), Some(618));
        assert_eq!(index.slots().count(), 999);
    }

    /// Insertions and removals in any order, with hashes crowded onto a few buckets (the
    /// runs wrap around the table's end): every recorded slot stays findable, a removed one
    /// is gone, and the index never grows past twice its flows.
    #[test]
    fn crowded_runs_survive_removal_in_any_order() {
        use std::collections::HashMap;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..200 {
            let mut index = FlowIndex::with_capacity(4);
            let mut live: HashMap<u32, u64> = HashMap::new();
            let mut gone: Vec<(u32, u64)> = Vec::new();
            for slot in 0..(40 + round % 50) as u32 {
                // Homes crowd at the table's last buckets and at bucket 0, and many entries
                // share a whole tag (the bits above 32 are not in it).
                let hash =
                    ((next() % 4) << 40) | ((next() % 3) << 32) | ((u64::from(u32::MAX) - next() % 6) * (next() % 2));
                index.insert(hash, slot);
                live.insert(slot, hash);
                if next() % 3 == 0 {
                    let victim = *live.keys().nth(next() as usize % live.len()).unwrap();
                    let h = live.remove(&victim).unwrap();
                    assert!(index.remove(h, victim));
                    gone.push((victim, h));
                }
                for (&s, &h) in &live {
                    assert_eq!(index.find(h, |x| x == s), Some(s), "round {round}: slot {s} lost");
                }
                for &(s, h) in &gone {
                    assert_eq!(index.find(h, |x| x == s), None, "round {round}: slot {s} still found");
                    assert!(!index.remove(h, s));
                }
                assert_eq!(index.len(), live.len());
                assert_eq!(index.slots().count(), live.len());
                assert!(index.buckets.len() <= (4 * live.len()).max(16).next_power_of_two());
            }
        }
    }

    #[test]
    fn a_packed_key_unpacks_to_the_same_key() {
        let v6 = |s: &str| IpAddr::V6(s.parse().unwrap());
        let v4 = |s: &str| IpAddr::V4(s.parse().unwrap());
        let keys = [
            key(1000),
            FlowKey { vlans: [Some(10), Some(4094)], proto: 6, src_port: 65535, dst_port: 0, ..key(7) },
            FlowKey { src: v6("2001:db8::2"), dst: v6("2001:db8::1"), ..key(53) },
            // IPv4-mapped IPv6 addresses stay IPv6; mixed families stay mixed.
            FlowKey { src: v6("::ffff:10.0.0.2"), dst: v6("::ffff:10.0.0.1"), ..key(53) },
            FlowKey { src: v4("10.0.0.2"), dst: v6("::ffff:10.0.0.1"), ..key(53) },
            FlowKey { src: v6("::"), dst: v4("0.0.0.0"), ..key(53) },
        ];
        for k in keys {
            for tag in [0, 1, 255] {
                assert_eq!(PackedKey::new(&k, tag).key(), k, "tag {tag}");
            }
        }
        let mapped = PackedKey::new(&keys[3], 0);
        assert_ne!(mapped, PackedKey::new(&key(53), 0), "an IPv4-mapped IPv6 key is not its IPv4 key");
        assert_ne!(mapped, PackedKey::new(&keys[4], 0));
    }
}
