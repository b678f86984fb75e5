//! Wire layer (SPEC §4): turns a frame's bytes into a compact, owned summary.
//!
//! Owns: classification (TCP, datagram, fragment, other IP, non-IP, malformed), the flow key,
//! and the offsets of the compared bytes inside the frame (TCP payload, datagram L4 bytes,
//! other-IP payload, fragment data with id/offset/MF). Header parsing is delegated to
//! `etherparse`, which bounds-checks every access; this module adds the policy (what is
//! malformed, what is part of the key). It must never panic, allocate, or keep a borrow of the
//! frame: the summary is plain data so the frame can move into a queue afterwards.
//!
//! Payload lengths come from the IP length fields (`etherparse` slices the IP payload by the
//! total length / payload length), never from the frame length, so Ethernet padding is never
//! compared (SPEC §4).

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::err::{packet::SliceError, Layer};
use etherparse::{LinkExtSlice, NetSlice, SlicedPacket, TransportSlice};

/// IP protocol numbers used in keys.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// IGMP.
    pub const IGMP: u8 = 2;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// Identity of a flow as both guests send it (guest → client), SPEC §4.
///
/// MAC addresses are left out on purpose: the two guests may sit behind different virtual
/// NICs. VLAN ids are part of the key. Ports are the TCP/UDP ports; for ICMP/ICMPv6 echo
/// request and reply the echo identifier is `src_port` (as Linux conntrack keys echo by id),
/// so separate ping sessions never share a reorder window; other ICMP messages and other IP
/// protocols have ports 0. IP fragments are keyed by addresses and protocol (ports 0) until
/// reassembly gives the whole datagram its full key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Outer and inner VLAN id (802.1Q / QinQ), `None` where untagged.
    pub vlans: [Option<u16>; 2],
    /// Source address (the guest).
    pub src: IpAddr,
    /// Destination address (the client).
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (0 where none).
    pub src_port: u16,
    /// Destination port (0 where none).
    pub dst_port: u16,
}

impl FlowKey {
    /// The key of the other direction (client → guest).
    pub fn reversed(&self) -> FlowKey {
        FlowKey { src: self.dst, dst: self.src, src_port: self.dst_port, dst_port: self.src_port, ..*self }
    }
}

impl fmt::Display for FlowKey {
    /// `tcp 10.0.0.2:80 > 10.0.0.1:40000`, with `vlan 10` / `vlan 10.20` after the protocol
    /// and IPv6 addresses in brackets; the format the report and `--explain` use (SPEC §9.2).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            proto::TCP => f.write_str("tcp")?,
            proto::UDP => f.write_str("udp")?,
            proto::ICMP => f.write_str("icmp")?,
            proto::ICMPV6 => f.write_str("icmpv6")?,
            p => write!(f, "ip{p}")?,
        }
        match self.vlans {
            [Some(a), Some(b)] => write!(f, " vlan {a}.{b}")?,
            [Some(a), None] => write!(f, " vlan {a}")?,
            _ => {}
        }
        let has_ports = matches!(self.proto, proto::TCP | proto::UDP);
        let echo_id = matches!(self.proto, proto::ICMP | proto::ICMPV6) && self.src_port != 0;
        for (i, (addr, port)) in [(self.src, self.src_port), (self.dst, self.dst_port)].into_iter().enumerate() {
            f.write_str(if i == 0 { " " } else { " > " })?;
            match (addr, has_ports) {
                (IpAddr::V4(a), true) => write!(f, "{a}:{port}")?,
                (IpAddr::V6(a), true) => write!(f, "[{a}]:{port}")?,
                (a, false) => write!(f, "{a}")?,
            }
        }
        if echo_id {
            write!(f, " id {}", self.src_port)?;
        }
        Ok(())
    }
}

/// Why a frame is malformed (SPEC §4); counted per reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MalformedReason {
    /// Zero-length frame.
    Empty,
    /// Ethernet or VLAN header cut short.
    TruncatedLink,
    /// IPv4/IPv6 header cut short.
    TruncatedIpHeader,
    /// Bad IP version, IHL smaller than 20, or total length smaller than the header.
    BadIpHeader,
    /// IP total/payload length claims more bytes than the frame holds.
    IpLengthBeyondFrame,
    /// IPv4 option / IPv6 extension header chain is broken.
    BadIpExtension,
    /// TCP/UDP/ICMP header longer than the IP payload.
    TruncatedTransport,
    /// TCP data offset below 5 or beyond the segment.
    BadTcpHeader,
}

impl MalformedReason {
    /// Number of reasons (sizes the counters).
    pub const COUNT: usize = 8;
    /// Every reason, in counter order.
    pub const ALL: [MalformedReason; Self::COUNT] = [
        MalformedReason::Empty,
        MalformedReason::TruncatedLink,
        MalformedReason::TruncatedIpHeader,
        MalformedReason::BadIpHeader,
        MalformedReason::IpLengthBeyondFrame,
        MalformedReason::BadIpExtension,
        MalformedReason::TruncatedTransport,
        MalformedReason::BadTcpHeader,
    ];

    /// Stable name for counters and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            MalformedReason::Empty => "empty",
            MalformedReason::TruncatedLink => "truncated-link",
            MalformedReason::TruncatedIpHeader => "truncated-ip-header",
            MalformedReason::BadIpHeader => "bad-ip-header",
            MalformedReason::IpLengthBeyondFrame => "ip-length-beyond-frame",
            MalformedReason::BadIpExtension => "bad-ip-extension",
            MalformedReason::TruncatedTransport => "truncated-transport",
            MalformedReason::BadTcpHeader => "bad-tcp-header",
        }
    }

    fn from_slice_error(err: &SliceError) -> Self {
        match err {
            SliceError::Len(len) => match len.layer {
                Layer::Ipv4Header | Layer::Ipv6Header | Layer::IpHeader => MalformedReason::TruncatedIpHeader,
                Layer::Ipv4Packet | Layer::Ipv6Packet => MalformedReason::IpLengthBeyondFrame,
                Layer::IpAuthHeader
                | Layer::Ipv6ExtHeader
                | Layer::Ipv6HopByHopHeader
                | Layer::Ipv6DestOptionsHeader
                | Layer::Ipv6RouteHeader
                | Layer::Ipv6FragHeader => MalformedReason::BadIpExtension,
                Layer::UdpHeader
                | Layer::UdpPayload
                | Layer::TcpHeader
                | Layer::Icmpv4
                | Layer::Icmpv4Timestamp
                | Layer::Icmpv4TimestampReply
                | Layer::Icmpv6
                | Layer::Igmp => MalformedReason::TruncatedTransport,
                _ => MalformedReason::TruncatedLink,
            },
            SliceError::Ip(_) | SliceError::Ipv4(_) | SliceError::Ipv6(_) => MalformedReason::BadIpHeader,
            SliceError::Ipv4Exts(_) | SliceError::Ipv6Exts(_) => MalformedReason::BadIpExtension,
            SliceError::Tcp(_) => MalformedReason::BadTcpHeader,
            SliceError::LinuxSll(_) | SliceError::Macsec(_) => MalformedReason::TruncatedLink,
        }
    }
}

/// The fields of a TCP segment the comparator uses (SPEC §5.1). Everything else in the IP and
/// TCP headers (ID, TTL, checksums, window, urgent pointer, options) is deliberately absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number (meaningful only with `ack_flag`).
    pub ack: u32,
    /// SYN flag.
    pub syn: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
    /// ACK flag.
    pub ack_flag: bool,
    /// Offset of the TCP header inside the frame (proxy-mode rewriting needs it).
    pub header_offset: u32,
    /// Offset of the payload inside the frame.
    pub payload_offset: u32,
    /// Payload length, from the IP length fields.
    pub payload_len: u32,
}

impl TcpSegment {
    /// First stream position of the payload (SYN occupies `seq`).
    pub fn data_start(&self) -> u32 {
        self.seq.wrapping_add(u32::from(self.syn))
    }
    /// One past the last stream position this segment occupies (payload and FIN).
    pub fn end(&self) -> u32 {
        self.data_start().wrapping_add(self.payload_len).wrapping_add(u32::from(self.fin))
    }
    /// Whether the segment occupies stream positions after its SYN (payload or FIN).
    pub fn has_positions(&self) -> bool {
        self.payload_len > 0 || self.fin
    }
}

/// Where a frame's compared bytes lie: `offset..offset + len` inside the frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Offset from the start of the frame (the Ethernet header).
    pub offset: u32,
    /// Length, from the IP length fields (never the frame length, SPEC §4).
    pub len: u32,
}

impl Span {
    /// The bytes of `frame` this span covers; `None` if the frame changed since parsing.
    pub fn of<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        let start = self.offset as usize;
        frame.get(start..start.checked_add(self.len as usize)?)
    }
}

/// An IPv4 or IPv6 fragment (SPEC §4): what reassembly needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    pub id: u32,
    /// Byte offset of this fragment's data inside the reassembled IP payload.
    pub offset: u32,
    /// More fragments follow (MF).
    pub more: bool,
    /// The fragment's data: after the IPv4 header, or after the IPv6 fragment header.
    pub data: Span,
}

/// What a frame is, as far as the comparator cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A TCP segment: compared as a byte stream (SPEC §5.1).
    Tcp(FlowKey, TcpSegment),
    /// UDP, ICMP or ICMPv6 (SPEC §5.2); the span is the L4 header and payload (the IP
    /// payload after any IPv6 extension headers).
    Datagram(FlowKey, Span),
    /// An IPv4/IPv6 fragment (SPEC §4); the key has the addresses, VLANs and protocol (the
    /// IPv6 fragment header's next header), ports 0, so every fragment of a datagram has the
    /// same key and hence the same shard (SPEC §8).
    Fragment(FlowKey, Fragment),
    /// Another IP protocol (SPEC §5.3); the span is the IP payload.
    OtherIp(FlowKey, Span),
    /// Not IP (ARP, LLDP, …), with its EtherType.
    NonIp(u16),
    /// Could not be parsed.
    Malformed(MalformedReason),
}

impl Class {
    /// The flow key, for classes that have one.
    pub fn key(&self) -> Option<&FlowKey> {
        match self {
            Class::Tcp(k, _) | Class::Datagram(k, _) | Class::Fragment(k, _) | Class::OtherIp(k, _) => Some(k),
            Class::NonIp(_) | Class::Malformed(_) => None,
        }
    }
}

/// Classifies a frame starting at its Ethernet header. Never panics.
///
/// The common frame (Ethernet, at most one VLAN tag, IPv4 without options, not a fragment, UDP
/// or TCP with sound lengths) is read field by field; everything else takes etherparse's
/// general walk, [`parse_general`]. Both give the same class for every frame (a property test
/// and the parser fuzz target hold them together).
#[inline]
pub fn parse(bytes: &[u8]) -> Class {
    let mut class = Class::NonIp(0);
    parse_into(bytes, &mut class);
    class
}

/// [`parse`] into a class the caller holds (a burst's parses are written where they stay:
/// a class returned and then copied, the copy waited on the parse's stores).
#[inline]
pub fn parse_into(bytes: &[u8], class: &mut Class) {
    if parse_common(bytes, class).is_none() {
        *class = parse_general(bytes);
    }
}

/// Writes the class of the common frame; `None` (and `class` untouched) for any other.
/// Accepts only what etherparse accepts the same way: the Ethernet II header, one
/// 802.1Q/802.1ad tag at most, an IPv4 header of 20 bytes whose total length fits the frame,
/// no fragment, and a UDP header whose length is 0 (taken as "to the end") or between 8 and
/// the IP payload, or a TCP header whose data offset fits the IP payload.
#[inline]
fn parse_common(bytes: &[u8], class: &mut Class) -> Option<()> {
    let be16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| u16::from_be_bytes([x[0], x[1]]));
    let (vlans, l3) = match be16(bytes, 12)? {
        ETHERTYPE_IPV4 => ([None, None], 14),
        0x8100 | 0x88a8 | 0x9100 if be16(bytes, 16)? == ETHERTYPE_IPV4 => ([Some(be16(bytes, 14)? & 0x0fff), None], 18),
        _ => return None,
    };
    let ip: &[u8; 20] = bytes.get(l3..l3 + 20)?.try_into().ok()?;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[0] != 0x45 || total < 20 || fragment {
        return None;
    }
    let l4 = l3 + 20;
    let payload = bytes.get(l4..l3 + total)?;
    let key = |src_port, dst_port| FlowKey {
        vlans,
        src: IpAddr::V4(Ipv4Addr::from(u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]))),
        dst: IpAddr::V4(Ipv4Addr::from(u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]))),
        proto: ip[9],
        src_port,
        dst_port,
    };
    let (offset, len) = (u32::try_from(l4).ok()?, u32::try_from(payload.len()).ok()?);
    match ip[9] {
        proto::UDP => {
            let udp: &[u8; 8] = payload.get(..8)?.try_into().ok()?;
            let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
            if udp_len != 0 && (udp_len < 8 || udp_len > payload.len()) {
                return None;
            }
            let ports = (u16::from_be_bytes([udp[0], udp[1]]), u16::from_be_bytes([udp[2], udp[3]]));
            *class = Class::Datagram(key(ports.0, ports.1), Span { offset, len });
            Some(())
        }
        proto::TCP => {
            let tcp: &[u8; 20] = payload.get(..20)?.try_into().ok()?;
            let header_len = u32::from(tcp[12] >> 4) * 4;
            if header_len < 20 || header_len > len {
                return None;
            }
            let word = |at: usize| u32::from_be_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
            let seg = TcpSegment {
                seq: word(4),
                ack: word(8),
                syn: tcp[13] & 0x02 != 0,
                fin: tcp[13] & 0x01 != 0,
                rst: tcp[13] & 0x04 != 0,
                ack_flag: tcp[13] & 0x10 != 0,
                header_offset: offset,
                payload_offset: offset + header_len,
                payload_len: len - header_len,
            };
            let ports = (u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]]));
            *class = Class::Tcp(key(ports.0, ports.1), seg);
            Some(())
        }
        _ => None,
    }
}

/// [`parse`] by etherparse's general walk for every frame (public for tests and fuzzing).
#[inline(never)]
pub fn parse_general(bytes: &[u8]) -> Class {
    if bytes.is_empty() {
        return Class::Malformed(MalformedReason::Empty);
    }
    let sliced = match SlicedPacket::from_ethernet(bytes) {
        Ok(s) => s,
        Err(e) => return Class::Malformed(MalformedReason::from_slice_error(&e)),
    };
    let vlans = match vlans_of(&sliced) {
        Ok(v) => v,
        Err(class) => return class,
    };
    // For fragments: (id, byte offset, more fragments, where the fragment's data starts).
    let mut frag: Option<(u32, u32, bool, &[u8])> = None;
    let (src, dst, payload) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            if ip.payload().fragmented {
                let data = ip.payload().payload;
                frag = Some((
                    u32::from(h.identification()),
                    u32::from(h.fragments_offset().byte_offset()),
                    h.more_fragments(),
                    data,
                ));
            }
            (IpAddr::V4(Ipv4Addr::from(h.source())), IpAddr::V4(Ipv4Addr::from(h.destination())), ip.payload())
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            if ip.payload().fragmented {
                frag = ipv6_fragment(bytes, ip);
            }
            (IpAddr::V6(Ipv6Addr::from(h.source())), IpAddr::V6(Ipv6Addr::from(h.destination())), ip.payload())
        }
        Some(NetSlice::Arp(_)) => return Class::NonIp(0x0806),
        None => {
            let ether_type = match sliced.link_exts.last() {
                Some(LinkExtSlice::Vlan(v)) => v.ether_type().0,
                _ => match &sliced.link {
                    Some(etherparse::LinkSlice::Ethernet2(e)) => e.ether_type().0,
                    _ => 0,
                },
            };
            return Class::NonIp(ether_type);
        }
    };
    let mut key = FlowKey { vlans, src, dst, proto: payload.ip_number.0, src_port: 0, dst_port: 0 };
    if payload.fragmented {
        let Some((id, offset, more, data)) = frag else {
            return Class::Malformed(MalformedReason::BadIpExtension);
        };
        let Some(data) = span_in(bytes, data) else {
            return Class::Malformed(MalformedReason::IpLengthBeyondFrame);
        };
        // A fragment whose data would end past the largest IP payload cannot be reassembled.
        if offset + data.len > 65_535 {
            return Class::Malformed(MalformedReason::BadIpHeader);
        }
        return Class::Fragment(key, Fragment { id, offset, more, data });
    }
    let Some(ip_payload) = span_in(bytes, payload.payload) else {
        return Class::Malformed(MalformedReason::IpLengthBeyondFrame);
    };
    match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => tcp_class(bytes, key, tcp),
        Some(TransportSlice::Icmpv6(_)) if is_link_local_control(key.proto, payload.payload) => {
            Class::NonIp(ETHERTYPE_IPV6)
        }
        Some(TransportSlice::Udp(_)) | Some(TransportSlice::Icmpv4(_)) | Some(TransportSlice::Icmpv6(_)) => {
            (key.src_port, key.dst_port) = l4_ports(key.proto, payload.payload);
            Class::Datagram(key, ip_payload)
        }
        Some(TransportSlice::Igmp(_)) | None if is_link_local_control(key.proto, payload.payload) => {
            Class::NonIp(ETHERTYPE_IPV4)
        }
        Some(TransportSlice::Igmp(_)) | None => Class::OtherIp(key, ip_payload),
    }
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Link-local control traffic sent on randomised timers (SPEC §4): IPv6 neighbour discovery
/// (router/neighbour solicitation and advertisement, redirect: ICMPv6 133–137), MLD
/// (ICMPv6 130–132, MLDv2 report 143) and IGMP. Two identical guests send it at independent
/// moments, so it follows the non-IP policy instead of being compared as datagrams.
fn is_link_local_control(ip_proto: u8, l4: &[u8]) -> bool {
    match ip_proto {
        proto::IGMP => true,
        proto::ICMPV6 => matches!(l4.first(), Some(130..=137 | 143)),
        _ => false,
    }
}

/// Where `sub` (a sub-slice of `bytes`) lies inside `bytes`.
fn span_in(bytes: &[u8], sub: &[u8]) -> Option<Span> {
    let offset = (sub.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
    if offset.checked_add(sub.len()).is_none_or(|end| end > bytes.len()) {
        return None;
    }
    Some(Span { offset: u32::try_from(offset).ok()?, len: u32::try_from(sub.len()).ok()? })
}

/// The key's ports for an IP payload of protocol `proto` (its first bytes suffice): TCP/UDP
/// ports, the ICMP/ICMPv6 echo identifier as the source port (see [`FlowKey`]), else 0.
/// Used for unfragmented datagrams and for reassembled ones alike, so both get the same key.
pub fn l4_ports(ip_proto: u8, l4: &[u8]) -> (u16, u16) {
    let be = |i: usize| l4.get(i..i + 2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    match ip_proto {
        proto::TCP | proto::UDP => (be(0), be(2)),
        // Echo reply 0 / request 8 (ICMP), request 128 / reply 129 (ICMPv6).
        proto::ICMP if matches!(l4.first(), Some(0 | 8)) => (be(4), 0),
        proto::ICMPV6 if matches!(l4.first(), Some(128 | 129)) => (be(4), 0),
        _ => (0, 0),
    }
}

/// The TCP payload of a frame whose summary came from [`parse`] on the same bytes; empty if
/// the frame changed since (the caller then sees a mismatch, never a panic).
pub fn payload<'a>(bytes: &'a [u8], seg: &TcpSegment) -> Option<&'a [u8]> {
    let start = seg.payload_offset as usize;
    bytes.get(start..start.checked_add(seg.payload_len as usize)?)
}

/// The VLAN ids of a frame, outer first; MACsec hides what is inside (non-IP policy).
fn vlans_of(sliced: &SlicedPacket<'_>) -> Result<[Option<u16>; 2], Class> {
    let mut vlans = [None, None];
    let mut n = 0;
    for ext in &sliced.link_exts {
        match ext {
            LinkExtSlice::Vlan(v) => {
                if let Some(slot) = vlans.get_mut(n) {
                    *slot = Some(v.vlan_identifier().value());
                }
                n += 1;
            }
            LinkExtSlice::Macsec(_) => return Err(Class::NonIp(0x88e5)),
        }
    }
    Ok(vlans)
}

/// An IPv6 fragment's (id, byte offset, more fragments, data). The fragmentable part starts
/// right after the fragment header (RFC 8200 §4.5); etherparse may have walked further, so the
/// header itself is found.
fn ipv6_fragment<'a>(bytes: &'a [u8], ip: &etherparse::Ipv6Slice<'a>) -> Option<(u32, u32, bool, &'a [u8])> {
    let end = ip.payload().payload;
    let end_ptr = (end.as_ptr() as usize).wrapping_add(end.len());
    ip.extensions().clone().into_iter().find_map(|ext| match ext {
        etherparse::Ipv6ExtensionSlice::Fragment(fh) if fh.is_fragmenting_payload() => {
            let start = (fh.slice().as_ptr() as usize).wrapping_add(fh.slice().len());
            let from = start.wrapping_sub(bytes.as_ptr() as usize);
            let to = end_ptr.wrapping_sub(bytes.as_ptr() as usize);
            let data = bytes.get(from..to).unwrap_or(&[]);
            Some((fh.identification(), u32::from(fh.fragment_offset().byte_offset()), fh.more_fragments(), data))
        }
        _ => None,
    })
}

/// The comparator's summary of a TCP header (etherparse's `TcpSlice` or `TcpHeaderSlice`) with
/// where its header and payload lie.
macro_rules! segment {
    ($tcp:expr, $header_offset:expr, $payload_offset:expr, $payload_len:expr) => {
        TcpSegment {
            seq: $tcp.sequence_number(),
            ack: $tcp.acknowledgment_number(),
            syn: $tcp.syn(),
            fin: $tcp.fin(),
            rst: $tcp.rst(),
            ack_flag: $tcp.ack(),
            header_offset: $header_offset,
            payload_offset: $payload_offset,
            payload_len: $payload_len,
        }
    };
}

/// A TCP segment's class: the key gets its ports, the summary its offsets inside `bytes`.
fn tcp_class(bytes: &[u8], mut key: FlowKey, tcp: &etherparse::TcpSlice<'_>) -> Class {
    key.src_port = tcp.source_port();
    key.dst_port = tcp.destination_port();
    let data = tcp.payload();
    // The payload is a sub-slice of `bytes`; its offset is the pointer distance.
    let offset = (data.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
    let (Ok(payload_offset), Ok(payload_len)) = (u32::try_from(offset), u32::try_from(data.len())) else {
        return Class::Malformed(MalformedReason::IpLengthBeyondFrame);
    };
    if offset.checked_add(data.len()).is_none_or(|end| end > bytes.len()) {
        return Class::Malformed(MalformedReason::IpLengthBeyondFrame);
    }
    let header = (tcp.slice().as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
    let Ok(header_offset) = u32::try_from(header) else {
        return Class::Malformed(MalformedReason::IpLengthBeyondFrame);
    };
    Class::Tcp(key, segment!(tcp, header_offset, payload_offset, payload_len))
}

/// The TCP segment whose IP payload starts in `data` of `frame` (the first fragment of a
/// reassembled datagram, `total` bytes of IP payload in all), if that fragment holds the whole
/// TCP header. The offsets point into `frame`; the payload runs on into the later fragments.
pub(crate) fn tcp_in_fragment(frame: &[u8], data: Span, total: u32) -> Option<TcpSegment> {
    let tcp = etherparse::TcpHeaderSlice::from_slice(data.of(frame)?).ok()?;
    let header_len = u32::try_from(tcp.slice().len()).ok()?;
    Some(segment!(tcp, data.offset, data.offset.checked_add(header_len)?, total.checked_sub(header_len)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path's class, `None` where it leaves the frame to the general walk.
    fn common(bytes: &[u8]) -> Option<Class> {
        let mut class = Class::NonIp(0);
        parse_common(bytes, &mut class).map(|()| class)
    }

    /// Ethernet(14) + IPv4(20) + TCP(20) + "hello", with 5 bytes of Ethernet padding after it.
    const TCP4_PADDED: [u8; 64] = [
        // dst mac, src mac, type 0x0800
        0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00,
        // IPv4: ver/ihl, tos, total len 45, id, flags/frag, ttl 64, proto 6, csum
        0x45, 0, 0, 45, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, // src 10.0.0.2, dst 10.0.0.1
        10, 0, 0, 2, 10, 0, 0, 1,
        // TCP: sport 80, dport 40000, seq 1000, ack 2000, off 5, flags PSH|ACK, win, csum, urg
        0, 80, 0x9c, 0x40, 0, 0, 0x03, 0xe8, 0, 0, 0x07, 0xd0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0, // payload
        b'h', b'e', b'l', b'l', b'o', // padding
        0, 0, 0, 0, 0,
    ];

    #[test]
    fn test_parse_into_a_class_that_held_another_frame_leaves_nothing_of_it() {
        use crate::fixtures::IpFrame;
        let v4 = IpFrame::udp(53, 4000, b"answer").build();
        let v6 = IpFrame {
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            ..IpFrame::udp(53, 4001, b"answer")
        }
        .build();
        let junk = [0u8; 9];
        // Each frame parsed into a place that held each other frame's class: the common path
        // (IPv4), the general walk (IPv6) and a malformed frame overwrite it whole.
        for frame in [&v4[..], &v6[..], &junk[..]] {
            for before in [&v4[..], &v6[..], &junk[..]] {
                let mut class = parse(before);
                parse_into(frame, &mut class);
                assert_eq!(class, parse(frame));
            }
        }
        assert!(matches!(parse(&v4), Class::Datagram(k, _) if k.src.is_ipv4()));
        assert!(matches!(parse(&v6), Class::Datagram(k, _) if k.src.is_ipv6()));
        assert!(matches!(parse(&junk), Class::Malformed(_)));
    }

    #[test]
    fn test_neighbour_discovery_mld_and_igmp_follow_the_non_ip_policy() {
        use crate::fixtures::IpFrame;
        let v6 = |icmp_type: u8| {
            IpFrame {
                src: "fe80::1".parse().unwrap(),
                dst: "ff02::1".parse().unwrap(),
                proto: proto::ICMPV6,
                payload: vec![icmp_type, 0, 0, 0, 0, 0, 0, 0],
                ..IpFrame::default()
            }
            .build()
        };
        for t in [130, 131, 132, 133, 134, 135, 136, 137, 143] {
            assert_eq!(parse(&v6(t)), Class::NonIp(0x86dd), "ICMPv6 type {t}");
        }
        // An echo request is a datagram as before.
        assert!(matches!(parse(&v6(128)), Class::Datagram(..)));
        let igmp = IpFrame { proto: proto::IGMP, payload: vec![0x16, 0, 0, 0, 224, 0, 0, 22], ..IpFrame::default() };
        assert_eq!(parse(&igmp.build()), Class::NonIp(0x0800));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        /// The fast path for the common frame agrees with etherparse's general walk on every
        /// frame it accepts, and accepts every well-formed common frame: start from TCP and UDP
        /// frames (untagged, one tag, QinQ, padded), then overwrite header bytes, cut or extend.
        #[test]
        fn prop_fast_path_agrees_with_the_general_walk(
            tcp in proptest::prelude::any::<bool>(),
            vlans in proptest::collection::vec(0u16..4096, 0..3),
            options in 0usize..3,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            padding in 0usize..8,
            writes in proptest::collection::vec((0usize..80, proptest::prelude::any::<u8>()), 0..4),
            fields in proptest::collection::vec((0usize..7, -3i32..70), 0..3),
            cut in proptest::option::of(0usize..120),
        ) {
            use crate::fixtures::{IpFrame, TcpFrame};
            let mut frame = if tcp {
                let t = TcpFrame { options: vec![1; options * 4], payload: payload.clone(), padding, ..TcpFrame::default() };
                t.to_ip(std::net::IpAddr::V4(t.src), std::net::IpAddr::V4(t.dst), &vlans).build()
            } else {
                IpFrame { vlans: vlans.clone(), padding, ..IpFrame::udp(53, 4000, &payload) }.build()
            };
            if writes.is_empty() && fields.is_empty() && cut.is_none() && vlans.len() < 2 {
                proptest::prop_assert!(common(&frame).is_some(), "a common frame off the fast path");
            }
            // Length, offset and type fields set near their edges (random bytes rarely hit them).
            let l3 = 14 + 4 * vlans.len();
            for (field, v) in fields {
                let (at, width, value) = match field {
                    0 => (l3 + 2, 2, frame.len() as i32 - l3 as i32 + v / 2 - 20),
                    1 if v < 35 => (l3 + 24, 2, v / 3),
                    1 => (l3 + 24, 2, frame.len() as i32 - l3 as i32 + v - 20 - 55),
                    2 => (l3 + 32, 1, (v & 15) << 4),
                    3 => (l3, 1, 0x40 + (v & 15)),
                    4 => (l3 + 6, 2, if v < 0 { 0x2000 } else { v }),
                    5 => (l3 - 2, 2, if v < 0 { 0x86dd } else { 0x0800 + v }),
                    // The outer tag's type: 802.1Q, 802.1ad, the old QinQ 0x9100, or not a tag.
                    _ => (12, 2, [0x8100, 0x88a8, 0x9100, 0x9200][v.rem_euclid(4) as usize]),
                };
                let bytes = (value as u16).to_be_bytes();
                for (i, b) in bytes[2 - width..].iter().enumerate() {
                    if let Some(x) = frame.get_mut(at + i) {
                        *x = *b;
                    }
                }
            }
            for (at, byte) in writes {
                if let Some(b) = frame.get_mut(at) {
                    *b = byte;
                }
            }
            if let Some(len) = cut {
                frame.resize(len, 0);
            }
            if let Some(fast) = common(&frame) {
                proptest::prop_assert_eq!(fast, parse_general(&frame));
            }
        }
    }

    #[test]
    fn test_parse_tcp_ignores_padding() {
        let Class::Tcp(key, seg) = parse(&TCP4_PADDED) else {
            panic!("not tcp: {:?}", parse(&TCP4_PADDED));
        };
        assert_eq!(key.to_string(), "tcp 10.0.0.2:80 > 10.0.0.1:40000");
        assert_eq!(seg.seq, 1000);
        assert_eq!(seg.ack, 2000);
        assert!(seg.ack_flag && !seg.syn && !seg.fin && !seg.rst);
        assert_eq!(seg.payload_len, 5, "padding must not be payload (SPEC §4)");
        assert_eq!(payload(&TCP4_PADDED, &seg), Some(&b"hello"[..]));
        assert_eq!(seg.end(), 1005);
    }

    #[test]
    fn test_parse_vlan_qinq_in_key() {
        let mut f = Vec::new();
        f.extend_from_slice(&TCP4_PADDED[..12]);
        f.extend_from_slice(&[0x88, 0xa8, 0x00, 0x0a, 0x81, 0x00, 0x00, 0x14]);
        f.extend_from_slice(&TCP4_PADDED[12..]);
        let Class::Tcp(key, seg) = parse(&f) else { panic!("not tcp") };
        assert_eq!(key.vlans, [Some(10), Some(20)]);
        assert_eq!(key.to_string(), "tcp vlan 10.20 10.0.0.2:80 > 10.0.0.1:40000");
        assert_eq!(payload(&f, &seg), Some(&b"hello"[..]));
    }

    #[test]
    fn test_parse_ipv4_options() {
        let mut f = TCP4_PADDED.to_vec();
        f[14] = 0x46; // IHL 6: one word of options
        f[17] = 49;
        f.splice(34..34, [1, 1, 1, 0]); // NOP NOP NOP EOL
        let Class::Tcp(_, seg) = parse(&f) else { panic!("not tcp") };
        assert_eq!(payload(&f, &seg), Some(&b"hello"[..]));
    }

    #[test]
    fn test_parse_ipv6_with_extension() {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
        // IPv6: payload len = 8 (hop-by-hop) + 20 + 3, next header 0 (hop-by-hop)
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 31, 0, 64]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop → TCP, PadN
        f.extend_from_slice(&TCP4_PADDED[34..54]);
        f.extend_from_slice(b"abc");
        let Class::Tcp(key, seg) = parse(&f) else { panic!("not tcp: {:?}", parse(&f)) };
        assert_eq!(key.to_string(), "tcp [2001:db8::2]:80 > [2001:db8::1]:40000");
        assert_eq!(payload(&f, &seg), Some(&b"abc"[..]));
    }

    #[test]
    fn test_parse_malformed_reasons() {
        assert_eq!(parse(&[]), Class::Malformed(MalformedReason::Empty));
        assert_eq!(parse(&TCP4_PADDED[..10]), Class::Malformed(MalformedReason::TruncatedLink));
        assert_eq!(parse(&TCP4_PADDED[..20]), Class::Malformed(MalformedReason::TruncatedIpHeader));
        let mut long = TCP4_PADDED;
        long[17] = 200; // total length beyond the frame
        assert_eq!(parse(&long), Class::Malformed(MalformedReason::IpLengthBeyondFrame));
        let mut ihl = TCP4_PADDED;
        ihl[14] = 0x43; // IHL 3
        assert_eq!(parse(&ihl), Class::Malformed(MalformedReason::BadIpHeader));
        let mut doff = TCP4_PADDED;
        doff[46] = 0x30; // data offset 3
        assert_eq!(parse(&doff), Class::Malformed(MalformedReason::BadTcpHeader));
        let mut short = TCP4_PADDED;
        short[17] = 30; // IP says 10 bytes of TCP
        assert_eq!(parse(&short), Class::Malformed(MalformedReason::TruncatedTransport));
    }

    #[test]
    fn test_parse_non_ip_fragment_udp() {
        let mut arp = TCP4_PADDED;
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert!(matches!(parse(&arp), Class::NonIp(0x0806) | Class::Malformed(_)));
        let mut lldp = TCP4_PADDED;
        lldp[12] = 0x88;
        lldp[13] = 0xcc;
        assert_eq!(parse(&lldp), Class::NonIp(0x88cc));
        let mut frag = TCP4_PADDED;
        frag[20] = 0x20; // MF
        assert!(matches!(parse(&frag), Class::Fragment(k, f) if k.src_port == 0 && f.more && f.offset == 0));
        let mut udp = TCP4_PADDED;
        udp[23] = 17;
        udp[38] = 0;
        udp[39] = 25; // UDP length 25
        assert!(
            matches!(parse(&udp), Class::Datagram(k, s) if k.to_string() == "udp 10.0.0.2:80 > 10.0.0.1:40000" && s.offset == 34 && s.len == 25)
        );
    }
}
