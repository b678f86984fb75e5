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

/// The same for a 16-bit field.
fn checksum_update16(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sets the source (`source` true) or destination port of the TCP segment `seg` inside
/// `frame`, keeping its checksum valid (proxy mode's port pairing, see [`crate::pairing`]).
/// Returns false (and changes nothing) if the header is not where `seg` says.
pub(crate) fn set_port(frame: &mut [u8], seg: &TcpSegment, source: bool, port: u16) -> bool {
    let h = seg.header_offset as usize;
    let at = if source { h } else { h + 2 };
    if h + 18 > frame.len() {
        return false;
    }
    let old = u16::from_be_bytes([frame[at], frame[at + 1]]);
    let checksum = u16::from_be_bytes([frame[h + 16], frame[h + 17]]);
    frame[at..at + 2].copy_from_slice(&port.to_be_bytes());
    frame[h + 16..h + 18].copy_from_slice(&checksum_update16(checksum, old, port).to_be_bytes());
    true
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Where the fields proxy mode reads and rewrites sit in one TCP header, found in a single
/// walk over its options. Offsets are from the start of the frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFields {
    /// Offsets of SACK block edges (at most four blocks).
    sack: [usize; 8],
    sack_edges: usize,
    /// Offset of the timestamp option's TSval (TSecr follows at +4), if present.
    timestamps: Option<usize>,
    /// The window-scale option's shift, if present (meaningful on SYNs only).
    pub window_scale: Option<u8>,
    /// The 16-bit window field, unscaled.
    pub window: u16,
}

impl TcpFields {
    /// Walks the header of `seg` inside `frame`; `None` if the header is not where `seg` says.
    /// Malformed options end the walk: what was found before them is kept.
    pub fn find(frame: &[u8], seg: &TcpSegment) -> Option<TcpFields> {
        let h = seg.header_offset as usize;
        let end = seg.payload_offset as usize;
        if end > frame.len() || h + 20 > end {
            return None;
        }
        let mut f = TcpFields { window: window(frame, seg)?, ..TcpFields::default() };
        let mut i = h + 20;
        while i < end {
            match frame[i] {
                0 => break,
                1 => i += 1,
                kind => {
                    let Some(&len) = frame.get(i + 1) else { break };
                    let len = usize::from(len);
                    if len < 2 || i + len > end {
                        break;
                    }
                    match (kind, len) {
                        (3, 3) => f.window_scale = Some(frame[i + 2]),
                        (8, 10) => f.timestamps = Some(i + 2),
                        (5, _) if (len - 2) % 8 == 0 => {
                            let mut e = i + 2;
                            while e + 4 <= i + len && f.sack_edges < f.sack.len() {
                                f.sack[f.sack_edges] = e;
                                f.sack_edges += 1;
                                e += 4;
                            }
                        }
                        _ => {}
                    }
                    i += len;
                }
            }
        }
        Some(f)
    }

    /// `(TSval, TSecr)` of the timestamp option, if the segment carries one.
    pub fn timestamps(&self, frame: &[u8]) -> Option<(u32, u32)> {
        let at = self.timestamps?;
        Some((read_u32(frame, at)?, read_u32(frame, at + 4)?))
    }
}

/// The (unscaled) window field of the TCP segment `seg` inside `frame`.
pub fn window(frame: &[u8], seg: &TcpSegment) -> Option<u16> {
    let h = seg.header_offset as usize;
    frame.get(h + 14..h + 16).map(|w| u16::from_be_bytes([w[0], w[1]]))
}

/// `(TSval, TSecr)` of a segment's timestamp option (RFC 7323), if it has one.
pub fn timestamps(frame: &[u8], seg: &TcpSegment) -> Option<(u32, u32)> {
    TcpFields::find(frame, seg)?.timestamps(frame)
}

/// Moves the 32-bit fields at `fields` by `delta` (mod 2^32: `wrapping_add`), keeping the TCP
/// checksum of the segment whose header starts at `h` valid (RFC 1624). Changes nothing and
/// returns false if any field is outside the frame.
fn shift_fields(frame: &mut [u8], h: usize, fields: &[(usize, u32)]) -> bool {
    let Some(mut checksum) = frame.get(h + 16..h + 18).map(|c| u16::from_be_bytes([c[0], c[1]])) else {
        return false;
    };
    if fields.iter().any(|&(at, _)| at + 4 > frame.len()) {
        return false;
    }
    for &(at, delta) in fields {
        let Some(old) = read_u32(frame, at) else { return false };
        let new = old.wrapping_add(delta);
        frame[at..at + 4].copy_from_slice(&new.to_be_bytes());
        checksum = checksum_update32(checksum, old, new);
    }
    frame[h + 16..h + 18].copy_from_slice(&checksum.to_be_bytes());
    true
}

/// A client frame on its way to the secondary (SPEC §3): subtracts `seq_offset` from the ACK
/// number and every SACK edge (they acknowledge the guest's sequence space) and `ts_offset`
/// from the timestamp echo (TSecr echoes the guest's clock), keeping the checksum valid.
/// Returns false (and changes nothing) if the header is not where `seg` says.
pub(crate) fn shift_client(
    frame: &mut [u8],
    seg: &TcpSegment,
    seq_offset: u32,
    ts_offset: u32,
    ack_cap: Option<u32>,
) -> bool {
    let Some(f) = TcpFields::find(frame, seg) else { return false };
    let h = seg.header_offset as usize;
    let mut fields = [(0usize, 0u32); 10];
    let mut n = 0;
    if seg.ack_flag {
        let mut delta = seq_offset.wrapping_neg();
        // Never acknowledge bytes the secondary has not sent (`ack_cap`, its space): a
        // checkpoint flush can release primary bytes ahead of it, and Linux ignores an ACK of
        // unsent data — every later one too, until it has sent that far, which a small window
        // may not allow: the secondary would stall. Capped, the ACK takes what it has sent.
        let ack = seg.ack.wrapping_sub(seq_offset);
        if let Some(cap) = ack_cap.filter(|&cap| crate::tcp::seq_lt(cap, ack)) {
            delta = delta.wrapping_sub(ack.wrapping_sub(cap));
        }
        fields[n] = (h + 8, delta);
        n += 1;
    }
    for &at in &f.sack[..f.sack_edges] {
        fields[n] = (at, seq_offset.wrapping_neg());
        n += 1;
    }
    // A TSecr of 0 means "no echo" (RFC 7323 §3.2, e.g. on a SYN): left alone.
    if let Some(at) = f.timestamps.filter(|&at| read_u32(frame, at + 4).is_some_and(|e| e != 0)) {
        fields[n] = (at + 4, ts_offset.wrapping_neg());
        n += 1;
    }
    shift_fields(frame, h, &fields[..n])
}

/// A secondary frame leaving for the clients after a failover to the secondary (SPEC §6): adds
/// `seq_offset` to its sequence number and `ts_offset` to its TSval, so the client sees the
/// primary's sequence space and clock. The ACK number, SACK blocks and TSecr describe the
/// client's own bytes and clock, which both guests share, and stay as they are.
pub(crate) fn shift_guest_output(frame: &mut [u8], seg: &TcpSegment, seq_offset: u32, ts_offset: u32) -> bool {
    let Some(f) = TcpFields::find(frame, seg) else { return false };
    let h = seg.header_offset as usize;
    let mut fields = [(h + 4, seq_offset), (0, 0)];
    let n = match f.timestamps {
        Some(at) => {
            fields[1] = (at, ts_offset);
            2
        }
        None => 1,
    };
    shift_fields(frame, h, &fields[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{flags, TcpFrame};
    use crate::wire::{parse, Class};

    fn tcp_checksum_ok(frame: &[u8]) -> bool {
        crate::fixtures::tcp_checksum_valid(frame)
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
        assert!(shift_client(&mut f, &seg, 1_000_000, 0, None));
        let Class::Tcp(_, after) = parse(&f) else { panic!("tcp") };
        assert_eq!(after.ack, 100);
        let opt = &f[seg.header_offset as usize + 20..seg.payload_offset as usize];
        assert_eq!(opt, &sack(&[(200, 300), (400, 500)])[..]);
        assert!(tcp_checksum_ok(&f), "incremental checksum equals a full recomputation");
        assert_eq!(&f[seg.payload_offset as usize..], b"client bytes");
    }

    #[test]
    fn an_ack_beyond_what_the_secondary_sent_is_capped_at_it() {
        for (cap, expected) in [(Some(60), 60), (Some(100), 100), (Some(250), 100), (None, 100)] {
            let mut f = TcpFrame { ack: 1_000_100, flags: flags::ACK, ..TcpFrame::default() }.build();
            let Class::Tcp(_, seg) = parse(&f) else { panic!("tcp") };
            assert!(shift_client(&mut f, &seg, 1_000_000, 0, cap));
            let Class::Tcp(_, after) = parse(&f) else { panic!("tcp") };
            assert_eq!(after.ack, expected, "cap {cap:?}");
            assert!(tcp_checksum_ok(&f));
        }
        // Across the wrap of the sequence space too.
        let mut f = TcpFrame { ack: 5, flags: flags::ACK, ..TcpFrame::default() }.build();
        let Class::Tcp(_, seg) = parse(&f) else { panic!("tcp") };
        assert!(shift_client(&mut f, &seg, 10, 0, Some(u32::MAX - 20)));
        let Class::Tcp(_, after) = parse(&f) else { panic!("tcp") };
        assert_eq!(after.ack, u32::MAX - 20);
        assert!(tcp_checksum_ok(&f));
    }

    #[test]
    fn wrapping_offsets_and_other_options_are_handled() {
        let mut o = crate::fixtures::timestamp_option(7, 9);
        o.extend(sack(&[(5, 10)]));
        let mut f = TcpFrame { ack: 3, flags: flags::ACK, options: o.clone(), ..TcpFrame::default() }.build();
        let Class::Tcp(_, seg) = parse(&f) else { panic!("tcp") };
        assert!(shift_client(&mut f, &seg, 10, 0, None));
        let Class::Tcp(_, after) = parse(&f) else { panic!("tcp") };
        assert_eq!(after.ack, 3u32.wrapping_sub(10));
        let opts = &f[seg.header_offset as usize + 20..seg.payload_offset as usize];
        assert_eq!(&opts[..12], &o[..12], "timestamps untouched");
        assert_eq!(&opts[16..20], &5u32.wrapping_sub(10).to_be_bytes());
        assert!(tcp_checksum_ok(&f));
    }

    #[test]
    fn tsecr_moves_by_the_clock_offset_and_guest_output_moves_into_the_primary_space() {
        let mut o = crate::fixtures::timestamp_option(700, 9_000);
        o.extend(sack(&[(5_000, 6_000)]));
        let built = TcpFrame { seq: 40, ack: 5_000, flags: flags::ACK, options: o, ..TcpFrame::default() }.build();
        let mut f = built.clone();
        let Class::Tcp(_, seg) = parse(&f) else { panic!("tcp") };
        assert!(shift_client(&mut f, &seg, 1_000, 8_000, None));
        let Class::Tcp(_, after) = parse(&f) else { panic!("tcp") };
        assert_eq!((after.seq, after.ack), (40, 4_000), "only the ACK moves, not the client's own seq");
        assert_eq!(timestamps(&f, &after), Some((700, 1_000)), "TSval is the client's, TSecr echoes the guest");
        assert!(tcp_checksum_ok(&f));

        // The secondary's output after a failover: seq and TSval move, ACK/SACK/TSecr (the
        // client's space and clock) stay.
        let mut g = built.clone();
        assert!(shift_guest_output(&mut g, &seg, 1_000, 8_000));
        let Class::Tcp(_, out) = parse(&g) else { panic!("tcp") };
        assert_eq!((out.seq, out.ack), (1_040, 5_000));
        assert_eq!(timestamps(&g, &out), Some((8_700, 9_000)));
        let opts = &g[seg.header_offset as usize + 20..seg.payload_offset as usize];
        assert_eq!(&opts[12..24], &sack(&[(5_000, 6_000)])[..], "SACK blocks untouched");
        assert!(tcp_checksum_ok(&g));
    }

    #[test]
    fn a_zero_tsecr_is_no_echo_and_stays_zero() {
        let mut f =
            TcpFrame { flags: flags::ACK, options: crate::fixtures::timestamp_option(5, 0), ..TcpFrame::default() }
                .build();
        let Class::Tcp(_, seg) = parse(&f) else { panic!("tcp") };
        assert!(shift_client(&mut f, &seg, 0, 77, None));
        assert_eq!(timestamps(&f, &seg), Some((5, 0)));
        assert!(tcp_checksum_ok(&f));
    }

    #[test]
    fn window_scale_and_window_are_read() {
        let f =
            TcpFrame { flags: flags::SYN, window: 64_240, options: vec![3, 3, 7, 1], ..TcpFrame::default() }.build();
        let Class::Tcp(_, seg) = parse(&f) else { panic!("tcp") };
        let fields = TcpFields::find(&f, &seg).expect("fields");
        assert_eq!((fields.window_scale, fields.window), (Some(7), 64_240));
    }

    #[test]
    fn ports_change_with_a_valid_checksum() {
        let mut f = TcpFrame { payload: b"abc".to_vec(), ..TcpFrame::default() }.build();
        let Class::Tcp(_, seg) = parse(&f) else { panic!("tcp") };
        assert!(set_port(&mut f, &seg, true, 51_234));
        assert!(set_port(&mut f, &seg, false, 443));
        let Class::Tcp(key, _) = parse(&f) else { panic!("tcp") };
        assert_eq!((key.src_port, key.dst_port), (51_234, 443));
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
