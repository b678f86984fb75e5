//! Proxy mode's client-side rewriting (SPEC §3): a client frame mirrored to the secondary
//! acknowledges the *primary's* sequence space; the secondary's TCP stack expects its own.
//! This module moves the ACK number and the SACK block edges of such a frame by the
//! connection's learned offset and fixes the TCP checksum incrementally (RFC 1624).
//!
//! Owns only byte surgery on a frame the caller already parsed; it never allocates, never
//! reads a clock, and leaves every other byte (IP header, options other than SACK, payload)
//! untouched.

use crate::wire::TcpSegment;

/// What [`crate::Shard::rewrite_client_for_secondary`] did to a client frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRewrite {
    /// Not a TCP segment with an ACK: mirror it as it is.
    NotTcpAck,
    /// No comparison state for its connection (yet), or the offset is 0: mirror as it is.
    Unchanged,
    /// ACK (and SACK edges) moved into the secondary's space; checksum fixed.
    Rewritten,
    /// The connection is known but the secondary's SYN has not been seen, so the offset is
    /// unknown: the caller should hold the secondary's copy until it is (or drop it: the
    /// client retransmits).
    OffsetUnknown,
}

/// One's-complement 16-bit checksum update for a 32-bit field going from `old` to `new`
/// (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
fn checksum_update32(checksum: u16, old: u32, new: u32) -> u16 {
    let mut sum = u32::from(!checksum);
    for (o, n) in [((old >> 16) as u16, (new >> 16) as u16), (old as u16, new as u16)] {
        sum += u32::from(!o) + u32::from(n);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Subtracts `offset` (mod 2^32) from the ACK number and every SACK edge of the TCP segment
/// `seg` inside `frame`, keeping the checksum valid. Returns false (and changes nothing) if the
/// header is not where `seg` says.
pub(crate) fn shift_acks(frame: &mut [u8], seg: &TcpSegment, offset: u32) -> bool {
    let h = seg.header_offset as usize;
    let end = seg.payload_offset as usize;
    if end > frame.len() || h + 20 > end {
        return false;
    }
    // Collect the 32-bit fields to move: the ACK number, then SACK edges (option kind 5).
    let mut fields = [0usize; 9];
    let mut n = 0;
    fields[n] = h + 8;
    n += 1;
    let mut i = h + 20;
    while i < end {
        match frame[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = frame.get(i + 1) else { break };
                let len = usize::from(len);
                if len < 2 || i + len > end {
                    break; // malformed options: leave them alone
                }
                if kind == 5 && (len - 2) % 8 == 0 {
                    let mut e = i + 2;
                    while e + 4 <= i + len && n < fields.len() {
                        fields[n] = e;
                        n += 1;
                        e += 4;
                    }
                }
                i += len;
            }
        }
    }
    let Some(mut checksum) = frame.get(h + 16..h + 18).map(|c| u16::from_be_bytes([c[0], c[1]])) else {
        return false;
    };
    for &at in &fields[..n] {
        let Some(old) = read_u32(frame, at) else { return false };
        let new = old.wrapping_sub(offset);
        frame[at..at + 4].copy_from_slice(&new.to_be_bytes());
        checksum = checksum_update32(checksum, old, new);
    }
    frame[h + 16..h + 18].copy_from_slice(&checksum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{flags, TcpFrame};
    use crate::wire::{parse, Class};

    /// The TCP checksum of a frame built by the fixtures, recomputed from scratch.
    fn tcp_checksum_ok(frame: &[u8]) -> bool {
        let Class::Tcp(_, seg) = parse(frame) else { return false };
        let (h, end) = (seg.header_offset as usize, seg.payload_offset as usize + seg.payload_len as usize);
        let ip = &frame[14..34];
        let mut sum: u32 = 0;
        let mut add = |b: &[u8]| {
            for c in b.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
        };
        add(&ip[12..20]);
        add(&[0, 6]);
        add(&((end - h) as u16).to_be_bytes());
        add(&frame[h..end]);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    fn sack(blocks: &[(u32, u32)]) -> Vec<u8> {
        let mut o = vec![1, 1, 5, (2 + 8 * blocks.len()) as u8];
        for (l, r) in blocks {
            o.extend_from_slice(&l.to_be_bytes());
            o.extend_from_slice(&r.to_be_bytes());
        }
        o
    }

    #[test]
    fn ack_and_sack_edges_move_by_the_offset_and_the_checksum_stays_valid() {
        let mut f = TcpFrame {
            ack: 1_000_100,
            flags: flags::ACK,
            options: sack(&[(1_000_200, 1_000_300), (1_000_400, 1_000_500)]),
            payload: b"client bytes".to_vec(),
            ..TcpFrame::default()
        }
        .build();
        assert!(tcp_checksum_ok(&f));
        let Class::Tcp(_, seg) = parse(&f) else { panic!("tcp") };
        assert!(shift_acks(&mut f, &seg, 1_000_000));
        let Class::Tcp(_, after) = parse(&f) else { panic!("tcp") };
        assert_eq!(after.ack, 100);
        let opt = &f[seg.header_offset as usize + 20..seg.payload_offset as usize];
        assert_eq!(opt, &sack(&[(200, 300), (400, 500)])[..]);
        assert!(tcp_checksum_ok(&f), "incremental checksum equals a full recomputation");
        assert_eq!(&f[seg.payload_offset as usize..], b"client bytes");
    }

    #[test]
    fn wrapping_offsets_and_other_options_are_handled() {
        let mut o = crate::fixtures::timestamp_option(7, 9);
        o.extend(sack(&[(5, 10)]));
        let mut f = TcpFrame { ack: 3, flags: flags::ACK, options: o.clone(), ..TcpFrame::default() }.build();
        let Class::Tcp(_, seg) = parse(&f) else { panic!("tcp") };
        assert!(shift_acks(&mut f, &seg, 10));
        let Class::Tcp(_, after) = parse(&f) else { panic!("tcp") };
        assert_eq!(after.ack, 3u32.wrapping_sub(10));
        let opts = &f[seg.header_offset as usize + 20..seg.payload_offset as usize];
        assert_eq!(&opts[..12], &o[..12], "timestamps untouched");
        assert_eq!(&opts[16..20], &5u32.wrapping_sub(10).to_be_bytes());
        assert!(tcp_checksum_ok(&f));
    }

    #[test]
    fn checksum_update_matches_rfc_1624_examples() {
        // RFC 1624 section 4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000 with
        // eqn. 3 (eqn. 2 would give the wrong 0xFFFF).
        assert_eq!(checksum_update32(0xdd2f, 0x5555, 0x3285), 0x0000);
        // Changing a field and back restores the checksum.
        let c = 0x1234;
        assert_eq!(checksum_update32(checksum_update32(c, 5, 99), 99, 5), c);
    }
}
