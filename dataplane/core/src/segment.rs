//! Software TCP segmentation for frames too long for the output port.
//!
//! A virtio guest offered TCP segmentation offload hands over TCP frames of up to 64 KiB
//! (GSO) and leaves the cutting to the NIC. The comparator compares them as the byte streams
//! they are; what it releases must still fit the output port's MTU. [`split_tcp`] cuts such a
//! frame the way a NIC's TSO does: the same headers on every piece, the sequence number
//! advanced by the bytes before it, IPv4 identification counting up, FIN and PSH only on the
//! last piece, CWR only on the first, and every length and checksum written anew (a GSO
//! frame's TCP checksum holds only the pseudo-header sum).

use crate::checksum::{add, finish};

/// Why a frame cannot be cut into TCP segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSplittable {
    /// Not Ethernet (up to two VLAN tags) + IPv4 or IPv6 + TCP, or headers cut short.
    NotTcp,
    /// An IPv4 fragment, or IPv6 with extension headers before TCP.
    Unsupported,
    /// The headers alone leave no room for payload within the limit.
    NoRoom,
}

/// Where the headers of a TCP frame are.
struct Layout {
    /// Offset of the IP header.
    ip: usize,
    /// Offset of the TCP header.
    tcp: usize,
    /// Offset of the payload (end of the TCP header).
    payload: usize,
    /// End of the IP packet within the frame (Ethernet padding excluded).
    end: usize,
    ipv4: bool,
}

fn layout(frame: &[u8]) -> Result<Layout, NotSplittable> {
    let be16 = |at: usize| frame.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut ip = 14;
    let mut ethertype = be16(12).ok_or(NotSplittable::NotTcp)?;
    // Up to two VLAN tags (802.1Q, 802.1ad).
    while ip < 22 && (ethertype == 0x8100 || ethertype == 0x88A8) {
        ethertype = be16(ip + 2).ok_or(NotSplittable::NotTcp)?;
        ip += 4;
    }
    let (ipv4, tcp, end) = match ethertype {
        0x0800 => {
            let ihl = usize::from(frame.get(ip).ok_or(NotSplittable::NotTcp)? & 0x0F) * 4;
            let total = usize::from(be16(ip + 2).ok_or(NotSplittable::NotTcp)?);
            if frame.get(ip + 9) != Some(&6) || ihl < 20 {
                return Err(NotSplittable::NotTcp);
            }
            let frag = be16(ip + 6).ok_or(NotSplittable::NotTcp)?;
            if frag & 0x3FFF != 0 {
                return Err(NotSplittable::Unsupported);
            }
            // A GSO frame of 64 KiB may carry a total length of 0 (too long for the field).
            let end = if total == 0 { frame.len() } else { ip + total };
            (true, ip + ihl, end)
        }
        0x86DD => {
            let payload_len = usize::from(be16(ip + 4).ok_or(NotSplittable::NotTcp)?);
            match frame.get(ip + 6) {
                Some(6) => {}
                Some(0 | 43 | 44 | 60) => return Err(NotSplittable::Unsupported),
                _ => return Err(NotSplittable::NotTcp),
            }
            let end = if payload_len == 0 { frame.len() } else { ip + 40 + payload_len };
            (false, ip + 40, end)
        }
        _ => return Err(NotSplittable::NotTcp),
    };
    let offset = usize::from(frame.get(tcp + 12).ok_or(NotSplittable::NotTcp)? >> 4) * 4;
    let payload = tcp + offset;
    if offset < 20 || payload > end || end > frame.len() {
        return Err(NotSplittable::NotTcp);
    }
    Ok(Layout { ip, tcp, payload, end, ipv4 })
}

/// Cuts the TCP frame `frame` into frames of at most `max_frame` bytes, each carrying at most
/// `mss` payload bytes (0: as many as fit), and hands each to `emit` in stream order. Returns
/// how many frames were emitted. A frame that already fits is emitted once, with its lengths
/// and checksums rewritten like every piece. Each piece is built in `scratch` (reused: no
/// allocation once it has grown to a piece's size).
pub fn split_tcp(
    frame: &[u8],
    mss: usize,
    max_frame: usize,
    scratch: &mut Vec<u8>,
    emit: impl FnMut(&[u8]),
) -> Result<usize, NotSplittable> {
    split_tcp_from(frame, 0, mss, max_frame, scratch, emit)
}

/// [`split_tcp`] of the payload from byte `skip` on: the bytes before it left earlier (as a
/// part, see [`cut_payload`]). Nothing is emitted when `skip` is at or past the payload's end,
/// unless the segment carries a FIN, which then leaves in one empty piece.
pub fn split_tcp_from(
    frame: &[u8],
    skip: usize,
    mss: usize,
    max_frame: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, NotSplittable> {
    let l = layout(frame)?;
    let room = max_frame.checked_sub(l.payload).filter(|&r| r > 0).ok_or(NotSplittable::NoRoom)?;
    let step = if mss == 0 { room } else { mss.min(room) };
    let len = l.end - l.payload;
    let skip = skip.min(len);
    let fin = frame[l.tcp + 13] & 0x01 != 0;
    // A fully sent payload still owes its FIN (or, when it never had any, its one frame).
    let pieces = if skip == len && skip > 0 && !fin { 0 } else { (len - skip).div_ceil(step).max(1) };
    let ip_id = u16::from_be_bytes([frame[l.ip + 4], frame[l.ip + 5]]);
    for i in 0..pieces {
        let from = skip + i * step;
        build_piece(frame, &l, from..(from + step).min(len), ip_id.wrapping_add(i as u16), scratch);
        emit(scratch);
    }
    Ok(pieces)
}

/// What is left of `frame` after its first `skip` payload bytes left as a part, as one frame
/// of any length (how replay and tests show an `Action::ReleaseRest`; the egress cuts it to the
/// MTU instead): `None` when nothing is left to send (no payload, no FIN).
pub fn rest(frame: &[u8], skip: usize) -> Result<Option<Vec<u8>>, NotSplittable> {
    let mut out = None;
    split_tcp_from(frame, skip, 0, usize::MAX / 2, &mut Vec::new(), |f| out = Some(f.to_vec()))?;
    Ok(out)
}

/// Builds in `out` one TCP frame carrying payload bytes `range` of `frame` (a part of a held
/// segment whose first bytes are verified while the rest waits): the same headers, the
/// sequence number advanced to the part, FIN and PSH kept only if the part ends the payload,
/// CWR only if it starts it, lengths and checksums written anew. The part may be longer than
/// a port's MTU (the egress cuts it as any long frame).
pub fn cut_payload(frame: &[u8], range: std::ops::Range<usize>, out: &mut Vec<u8>) -> Result<(), NotSplittable> {
    let l = layout(frame)?;
    let len = l.end - l.payload;
    if range.start > range.end || range.end > len {
        return Err(NotSplittable::NoRoom);
    }
    let ip_id = u16::from_be_bytes([frame[l.ip + 4], frame[l.ip + 5]]);
    build_piece(frame, &l, range, ip_id, out);
    Ok(())
}

/// One piece of `frame` (laid out as `l`): its headers, payload bytes `range`, IPv4
/// identification `ip_id`; every length, flag and checksum as [`split_tcp`] writes them.
fn build_piece(frame: &[u8], l: &Layout, range: std::ops::Range<usize>, ip_id: u16, out: &mut Vec<u8>) {
    let headers = l.payload;
    let len = l.end - l.payload;
    let chunk = &frame[headers + range.start..headers + range.end];
    out.clear();
    out.extend_from_slice(&frame[..headers]);
    out.extend_from_slice(chunk);
    let l4_len = headers - l.tcp + chunk.len();
    // IP: lengths, identification, header checksum. A piece longer than the 16-bit field
    // (only a part of a 64 KiB GSO frame) carries 0, as the GSO frame did.
    if l.ipv4 {
        let total = u16::try_from(headers - l.ip + chunk.len()).unwrap_or(0);
        out[l.ip + 2..l.ip + 4].copy_from_slice(&total.to_be_bytes());
        out[l.ip + 4..l.ip + 6].copy_from_slice(&ip_id.to_be_bytes());
        out[l.ip + 10..l.ip + 12].copy_from_slice(&[0, 0]);
        let c = finish(add(0, &out[l.ip..l.tcp]));
        out[l.ip + 10..l.ip + 12].copy_from_slice(&c.to_be_bytes());
    } else {
        out[l.ip + 4..l.ip + 6].copy_from_slice(&u16::try_from(l4_len).unwrap_or(0).to_be_bytes());
    }
    // TCP: sequence number, flags, checksum over the pseudo-header.
    let seq = u32::from_be_bytes([frame[l.tcp + 4], frame[l.tcp + 5], frame[l.tcp + 6], frame[l.tcp + 7]]);
    out[l.tcp + 4..l.tcp + 8].copy_from_slice(&seq.wrapping_add(range.start as u32).to_be_bytes());
    let (fin_psh, cwr) = (0x01 | 0x08, 0x80);
    let mut f = frame[l.tcp + 13];
    if range.end < len {
        f &= !fin_psh;
    }
    if range.start > 0 {
        f &= !cwr;
    }
    out[l.tcp + 13] = f;
    out[l.tcp + 16..l.tcp + 18].copy_from_slice(&[0, 0]);
    let addrs = if l.ipv4 { &out[l.ip + 12..l.ip + 20] } else { &out[l.ip + 8..l.ip + 40] };
    let mut sum = add(0, addrs);
    sum = add(sum, &[0, 6]);
    sum = add(sum, &(l4_len as u32).to_be_bytes());
    let c = finish(add(sum, &out[l.tcp..]));
    out[l.tcp + 16..l.tcp + 18].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::fold;
    use crate::fixtures::{v6_pair, IpFrame};

    /// An IPv4 or IPv6 TCP frame (timestamps option) with `payload`; its checksum is left 0.
    fn tcp_frame(v6: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        tagged_tcp_frame(v6, &[], seq, flags, payload)
    }

    /// The same behind VLAN tags (one: 802.1Q; two: 802.1ad outside 802.1Q).
    fn tagged_tcp_frame(v6: bool, vlans: &[u16], seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut tcp = vec![0u8; 32];
        tcp[0..2].copy_from_slice(&80u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[12] = 8 << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
        tcp[20..32].copy_from_slice(&crate::fixtures::timestamp_option(7, 9));
        tcp.extend_from_slice(payload);
        let mut f = IpFrame { proto: 6, payload: tcp, vlans: vlans.to_vec(), ..IpFrame::default() };
        if v6 {
            (f.src, f.dst) = v6_pair();
        }
        f.build()
    }

    fn valid_checksums(f: &[u8]) -> bool {
        let l = layout(f).expect("layout");
        let ip_ok = !l.ipv4 || fold(add(0, &f[l.ip..l.tcp])) == 0xFFFF;
        let addrs = if l.ipv4 { &f[l.ip + 12..l.ip + 20] } else { &f[l.ip + 8..l.ip + 40] };
        let mut sum = add(0, addrs);
        sum = add(sum, &[0, 6]);
        sum = add(sum, &((l.end - l.tcp) as u32).to_be_bytes());
        ip_ok && fold(add(sum, &f[l.tcp..l.end])) == 0xFFFF
    }

    fn pieces(frame: &[u8], mss: usize, max: usize) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        split_tcp(frame, mss, max, &mut Vec::new(), |f| v.push(f.to_vec())).expect("splittable");
        v
    }

    #[test]
    fn a_gso_frame_becomes_mss_sized_segments_with_valid_checksums_in_stream_order() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let big = tcp_frame(v6, 4_000_000_000, 0x18 | 0x01 | 0x80, &payload);
            let segs = pieces(&big, 1448, 1514);
            // IPv6's longer header leaves 1428 bytes of payload in 1514.
            let step = if v6 { 1428 } else { 1448 };
            assert_eq!(segs.len(), 10_000usize.div_ceil(step));
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert!(s.len() <= 1514 && valid_checksums(s), "piece {i}");
                let l = layout(s).unwrap();
                let seq = u32::from_be_bytes(s[l.tcp + 4..l.tcp + 8].try_into().unwrap());
                assert_eq!(seq, 4_000_000_000u32.wrapping_add(joined.len() as u32));
                let last = i + 1 == segs.len();
                assert_eq!(s[l.tcp + 13] & 0x09 != 0, last, "FIN/PSH only on the last piece");
                assert_eq!(s[l.tcp + 13] & 0x80 != 0, i == 0, "CWR only on the first");
                joined.extend_from_slice(&s[l.payload..l.end]);
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn the_limit_caps_the_guest_segment_size_and_headers_that_leave_no_room_are_refused() {
        let big = tcp_frame(false, 1, 0x10, &[7u8; 5000]);
        // mss 9000 from the guest, but the port takes 1514-byte frames.
        assert!(pieces(&big, 9000, 1514).iter().all(|s| s.len() <= 1514));
        assert_eq!(split_tcp(&big, 0, 40, &mut Vec::new(), |_| {}), Err(NotSplittable::NoRoom));
        let udp = IpFrame::udp(1, 2, &[0u8; 3000]).build();
        assert_eq!(split_tcp(&udp, 0, 1514, &mut Vec::new(), |_| {}), Err(NotSplittable::NotTcp));
    }

    #[test]
    fn a_partial_checksum_left_by_the_guest_is_replaced() {
        let mut f = tcp_frame(false, 1, 0x18, b"hello");
        let l = layout(&f).unwrap();
        f[l.tcp + 16] ^= 0x5A; // what a guest's offload leaves: not the final sum
        let out = pieces(&f, 0, 1514);
        assert_eq!(out.len(), 1);
        assert!(valid_checksums(&out[0]));
    }

    proptest::proptest! {
        /// Any TCP frame cut at any segment size and MTU: pieces within the limit, valid
        /// checksums, consecutive sequence numbers, and their payloads joined are the original.
        #[test]
        fn any_cut_keeps_the_stream_and_fits_the_limit(
            v6 in proptest::bool::ANY,
            tags in 0usize..3,
            len in 0usize..20_000,
            mss in 0usize..3000,
            mtu in 600usize..9000,
            seq in proptest::num::u32::ANY,
            flags in proptest::num::u8::ANY,
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + i / 7) as u8).collect();
            let frame = tagged_tcp_frame(v6, &[10, 20][..tags], seq, flags, &payload);
            let l2 = 14 + 4 * tags;
            let segs = pieces(&frame, mss, mtu + l2);
            let mut joined = Vec::new();
            for s in &segs {
                proptest::prop_assert!(s.len() <= mtu + l2);
                proptest::prop_assert!(valid_checksums(s));
                let l = layout(s).unwrap();
                let at = u32::from_be_bytes(s[l.tcp + 4..l.tcp + 8].try_into().unwrap());
                proptest::prop_assert_eq!(at, seq.wrapping_add(joined.len() as u32));
                if mss > 0 {
                    proptest::prop_assert!(l.end - l.payload <= mss);
                }
                joined.extend_from_slice(&s[l.payload..l.end]);
            }
            proptest::prop_assert_eq!(joined, payload);
            // FIN and PSH survive on the last piece only, exactly as they were.
            let last = segs.last().unwrap();
            let l = layout(last).unwrap();
            proptest::prop_assert_eq!(last[l.tcp + 13] & 0x09, flags & 0x09);
        }

        /// A verified part cut off the front (any length), then the rest cut from where the
        /// part ended: the stream is the original, once, every piece with valid checksums;
        /// FIN and PSH only where the payload ends, CWR only where it starts.
        #[test]
        fn a_part_and_the_rest_from_it_carry_the_stream_once(
            v6 in proptest::bool::ANY,
            len in 1usize..20_000,
            part in 0usize..20_000,
            mtu in 600usize..9000,
            seq in proptest::num::u32::ANY,
            flags in proptest::num::u8::ANY,
        ) {
            let part = part % (len + 1);
            let payload: Vec<u8> = (0..len).map(|i| (i * 13 + i / 5) as u8).collect();
            let frame = tcp_frame(v6, seq, flags, &payload);
            let mut first = Vec::new();
            cut_payload(&frame, 0..part, &mut first).expect("cuttable");
            proptest::prop_assert!(valid_checksums(&first));
            let l = layout(&first).unwrap();
            proptest::prop_assert_eq!(&first[l.payload..l.end], &payload[..part]);
            proptest::prop_assert_eq!(first[l.tcp + 13] & 0x80, flags & 0x80);
            let ends = part == len;
            proptest::prop_assert_eq!(first[l.tcp + 13] & 0x09, if ends { flags & 0x09 } else { 0 });
            let mut joined = payload[..part].to_vec();
            let mut rest = Vec::new();
            split_tcp_from(&frame, part, 0, mtu + 14, &mut Vec::new(), |f| rest.push(f.to_vec())).expect("splittable");
            for s in &rest {
                proptest::prop_assert!(s.len() <= mtu + 14 && valid_checksums(s));
                let l = layout(s).unwrap();
                let at = u32::from_be_bytes(s[l.tcp + 4..l.tcp + 8].try_into().unwrap());
                proptest::prop_assert_eq!(at, seq.wrapping_add(joined.len() as u32));
                let starts = joined.is_empty();
                proptest::prop_assert_eq!(s[l.tcp + 13] & 0x80, if starts { flags & 0x80 } else { 0 });
                joined.extend_from_slice(&s[l.payload..l.end]);
            }
            proptest::prop_assert_eq!(&joined, &payload);
            // Nothing is left after a part that took everything, unless a FIN is owed.
            proptest::prop_assert_eq!(rest.is_empty(), ends && flags & 0x01 == 0);
            if let Some(last) = rest.last() {
                let l = layout(last).unwrap();
                proptest::prop_assert_eq!(last[l.tcp + 13] & 0x09, flags & 0x09);
            }
        }
    }
}
