//! Software Toeplitz hash (SPEC §8): the same function NICs use for RSS, so software dispatch
//! (vdevs without RSS) spreads flows exactly like hardware would with the same key.
//!
//! Owns the hash, the symmetric key and the choice of hash input. Never allocates.
//!
//! **Shard-selection input: L3 addresses only.** [`shard_hash`] hashes the source and
//! destination IP addresses (as the NIC's `IPV4`/`IPV6` hash types do), not the ports and not
//! the VLAN ids. Trade-off: IP fragments after the first carry no ports, so a 4-tuple hash
//! would send a datagram's fragments to different shards and reassembly (SPEC §4) could never
//! see them together; hashing addresses only keeps every fragment with its flow and keeps the
//! software hash bit-identical to hardware RSS configured for L3 (NICs do not hash VLAN tags
//! for IP hash types). The cost is coarser balancing: all connections between one pair of
//! hosts land on one shard, and the same address pair in different VLANs shares a shard
//! (harmless: the VLAN is still part of the flow key inside the shard).
//!
//! With [`SYMMETRIC_KEY`] (0x6d5a repeated) the hash is symmetric: swapping source and
//! destination (addresses are 32-bit aligned, ports 16-bit) gives the same value, so both
//! directions of a flow meet in one shard.

use std::net::IpAddr;

use crate::wire::FlowKey;

/// The 40-byte key with 0x6d, 0x5a repeated: symmetric for address/port swaps.
pub const SYMMETRIC_KEY: [u8; 40] = {
    let mut k = [0u8; 40];
    let mut i = 0;
    while i < 40 {
        k[i] = if i % 2 == 0 { 0x6d } else { 0x5a };
        i += 1;
    }
    k
};

/// Microsoft's RSS verification key ("Verifying the RSS Hash Calculation").
pub const MICROSOFT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b,
    0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac,
    0x01, 0xfa,
];

/// Toeplitz hash of `input` under `key`. Input bits beyond `8 * key.len() - 32` are ignored
/// (the key window would run out), as in hardware.
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let mut result = 0u32;
    // `window` holds the 32 key bits aligned with the current input bit, plus look-ahead.
    let mut window: u64 = 0;
    for (i, b) in key.iter().take(8).enumerate() {
        window |= u64::from(*b) << (56 - 8 * i);
    }
    let max_bits = key.len().saturating_mul(8).saturating_sub(32);
    for (byte_idx, byte) in input.iter().enumerate() {
        let next_key_byte = byte_idx + 8;
        if byte_idx * 8 >= max_bits {
            break;
        }
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                result ^= (window >> 32) as u32;
            }
            window <<= 1;
        }
        // Refill one key byte per input byte: after 8 shifts the low byte is free.
        if let Some(k) = key.get(next_key_byte) {
            window |= u64::from(*k);
        }
    }
    result
}

/// Hash input for the L3 (addresses only) hash type: src then dst, network byte order.
/// Returns the buffer and the number of bytes used (8 for IPv4, 32 for IPv6).
pub fn l3_input(src: IpAddr, dst: IpAddr) -> ([u8; 36], usize) {
    let mut buf = [0u8; 36];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            buf[..4].copy_from_slice(&s.octets());
            buf[4..8].copy_from_slice(&d.octets());
            (buf, 8)
        }
        (s, d) => {
            buf[..16].copy_from_slice(&to_v6(s));
            buf[16..32].copy_from_slice(&to_v6(d));
            (buf, 32)
        }
    }
}

/// Hash input for the L4 hash type: src addr, dst addr, src port, dst port.
pub fn l4_input(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> ([u8; 36], usize) {
    let (mut buf, n) = l3_input(src, dst);
    buf[n..n + 2].copy_from_slice(&src_port.to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&dst_port.to_be_bytes());
    (buf, n + 4)
}

fn to_v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The hash that picks a flow's shard: symmetric Toeplitz over the L3 addresses (see the
/// module doc for why ports and VLANs are left out).
pub fn shard_hash(key: &FlowKey) -> u32 {
    let (buf, n) = l3_input(key.src, key.dst);
    toeplitz(&SYMMETRIC_KEY, buf.get(..n).unwrap_or(&[]))
}

/// Shard index as a NIC's default 128-entry redirection table would pick the queue
/// (`reta[hash % 128] = entry % shards`). `shards` of 0 is treated as 1.
pub fn shard_for_hash(hash: u32, shards: usize) -> usize {
    (hash as usize & 127) % shards.max(1)
}

/// The shard a frame belongs to — the one dispatch rule the runtime's software dispatch and
/// `colo-replay` share: symmetric Toeplitz over its L3 addresses (fragments stay with their
/// flow, both directions meet); frames without a flow key (non-IP, malformed) go to shard 0,
/// which keeps them in order. One shard takes everything without parsing.
pub fn shard_of(frame: &[u8], shards: usize) -> usize {
    dispatch(frame, shards).0
}

/// [`shard_of`], with the parse it took (none for one shard): the frame's class travels with
/// it to its shard ([`crate::Shard::handle_parsed`]), so a frame is parsed once.
pub fn dispatch(frame: &[u8], shards: usize) -> (usize, Option<crate::wire::Class>) {
    if shards <= 1 {
        return (0, None);
    }
    let class = crate::wire::parse(frame);
    let shard = class.key().map_or(0, |key| shard_for_hash(shard_hash(key), shards));
    (shard, Some(class))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse::<Ipv4Addr>().expect("literal"))
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse::<Ipv6Addr>().expect("literal"))
    }

    /// (src, src port, dst, dst port, L3 hash, L4 hash), from Microsoft's table.
    #[allow(clippy::type_complexity)]
    const V4: [(&str, u16, &str, u16, u32, u32); 5] = [
        ("66.9.149.187", 2794, "161.142.100.80", 1766, 0x323e8fc2, 0x51ccc178),
        ("199.92.111.2", 14230, "65.69.140.83", 4739, 0xd718262a, 0xc626b0ea),
        ("24.19.198.95", 12898, "12.22.207.184", 38024, 0xd2d0a5de, 0x5c2b394a),
        ("38.27.205.30", 48228, "209.142.163.6", 2217, 0x82989176, 0xafc7327f),
        ("153.39.163.191", 44251, "202.188.127.2", 1303, 0x5d1809c5, 0x10e828a2),
    ];

    #[allow(clippy::type_complexity)]
    const V6: [(&str, u16, &str, u16, u32, u32); 3] = [
        ("3ffe:2501:200:1fff::7", 2794, "3ffe:2501:200:3::1", 1766, 0x2cc18cd5, 0x40207d3d),
        ("3ffe:501:8::260:97ff:fe40:efab", 14230, "ff02::1", 4739, 0x0f0c461c, 0xdde51bbf),
        ("3ffe:1900:4545:3:200:f8ff:fe21:67cf", 44251, "fe80::200:f8ff:fe21:67cf", 38024, 0x4b61e985, 0x02d1feef),
    ];

    #[test]
    fn test_microsoft_vectors_ipv4() {
        for (s, sp, d, dp, l3, l4) in V4 {
            let (b, n) = l3_input(v4(s), v4(d));
            assert_eq!(toeplitz(&MICROSOFT_KEY, &b[..n]), l3, "{s} > {d} L3");
            let (b, n) = l4_input(v4(s), v4(d), sp, dp);
            assert_eq!(toeplitz(&MICROSOFT_KEY, &b[..n]), l4, "{s} > {d} L4");
        }
    }

    #[test]
    fn test_microsoft_vectors_ipv6() {
        for (s, sp, d, dp, l3, l4) in V6 {
            let (b, n) = l3_input(v6(s), v6(d));
            assert_eq!(toeplitz(&MICROSOFT_KEY, &b[..n]), l3, "{s} > {d} L3");
            let (b, n) = l4_input(v6(s), v6(d), sp, dp);
            assert_eq!(toeplitz(&MICROSOFT_KEY, &b[..n]), l4, "{s} > {d} L4");
        }
    }

    #[test]
    fn test_symmetric_key_is_symmetric() {
        for (s, sp, d, dp, _, _) in V4 {
            let (a, n) = l4_input(v4(s), v4(d), sp, dp);
            let (b, _) = l4_input(v4(d), v4(s), dp, sp);
            assert_eq!(toeplitz(&SYMMETRIC_KEY, &a[..n]), toeplitz(&SYMMETRIC_KEY, &b[..n]));
        }
        for (s, sp, d, dp, _, _) in V6 {
            let (a, n) = l4_input(v6(s), v6(d), sp, dp);
            let (b, _) = l4_input(v6(d), v6(s), dp, sp);
            assert_eq!(toeplitz(&SYMMETRIC_KEY, &a[..n]), toeplitz(&SYMMETRIC_KEY, &b[..n]));
            let (a, n) = l3_input(v6(s), v6(d));
            let (b, _) = l3_input(v6(d), v6(s));
            assert_eq!(toeplitz(&SYMMETRIC_KEY, &a[..n]), toeplitz(&SYMMETRIC_KEY, &b[..n]));
        }
    }

    #[test]
    fn test_shard_hash_keeps_fragments_and_both_directions_together() {
        let key = FlowKey {
            vlans: [None, None],
            src: v4("10.0.0.2"),
            dst: v4("10.0.0.1"),
            proto: 6,
            src_port: 80,
            dst_port: 40000,
        };
        let frag = FlowKey { proto: 6, src_port: 0, dst_port: 0, ..key };
        assert_eq!(shard_hash(&key), shard_hash(&frag));
        assert_eq!(shard_hash(&key), shard_hash(&key.reversed()));
        assert!(shard_for_hash(u32::MAX, 3) < 3);
        assert_eq!(shard_for_hash(7, 0), 0);
    }
}
