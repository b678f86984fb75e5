//! Frame builders for tests, benchmarks, fuzzing and `colo-replay`'s capture generator.
//!
//! Owns nothing of the comparator: it only writes well-formed Ethernet (802.1Q/QinQ), IPv4/IPv6
//! (fragmented or not), TCP, UDP, ICMP and ICMPv6 bytes (with
//! correct checksums) from explicit fields, so fixtures can vary exactly one header field.
//! Not used on the packet path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP flag bits.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// An IPv4/TCP frame described field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpFrame {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// Source address (the guest).
    pub src: Ipv4Addr,
    /// Destination address (the client).
    pub dst: Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Flag bits ([`flags`]).
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// IP identification.
    pub ip_id: u16,
    /// Time to live.
    pub ttl: u8,
    /// TCP options, padded to 4 bytes with NOPs.
    pub options: Vec<u8>,
    /// Payload.
    pub payload: Vec<u8>,
    /// Ethernet padding appended after the IP packet.
    pub padding: usize,
}

impl Default for TcpFrame {
    fn default() -> Self {
        TcpFrame {
            src_mac: [0x52, 0x54, 0, 0, 0, 2],
            dst_mac: [0x52, 0x54, 0, 0, 0, 1],
            vlan: None,
            src: Ipv4Addr::new(10, 0, 0, 2),
            dst: Ipv4Addr::new(10, 0, 0, 1),
            sport: 80,
            dport: 40000,
            seq: 1000,
            ack: 5000,
            flags: flags::ACK,
            window: 65535,
            ip_id: 1,
            ttl: 64,
            options: Vec::new(),
            payload: Vec::new(),
            padding: 0,
        }
    }
}

/// TCP timestamp option (kind 8) with NOP padding: 12 bytes.
pub fn timestamp_option(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

/// Whether the TCP checksum of an IPv4 frame (untagged) is valid, recomputed from scratch.
pub fn tcp_checksum_valid(frame: &[u8]) -> bool {
    let Some(ip) = frame.get(14..34) else { return false };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let Some(tcp) = frame.get(14 + ihl..14 + total) else { return false };
    let mut sum = checksum_add(0, &ip[12..20]);
    sum = checksum_add(sum, &[0, 6]);
    sum = checksum_add(sum, &(tcp.len() as u16).to_be_bytes());
    sum = checksum_add(sum, tcp);
    crate::checksum::fold(sum) == 0xffff
}

use crate::checksum::{add as checksum_add, finish as checksum_finish};

impl TcpFrame {
    /// Serialises the frame.
    pub fn build(&self) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(1);
        }
        opts.truncate(40);
        let tcp_len = 20 + opts.len() + self.payload.len();
        let total = (20 + tcp_len).min(usize::from(u16::MAX));
        let mut f = Vec::with_capacity(18 + total + self.padding);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(v) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&(v & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let ip_start = f.len();
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&(total as u16).to_be_bytes());
        f.extend_from_slice(&self.ip_id.to_be_bytes());
        f.extend_from_slice(&[0x40, 0, self.ttl, 6, 0, 0]);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        let ip_csum = checksum_finish(checksum_add(0, &f[ip_start..ip_start + 20]));
        f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_csum.to_be_bytes());
        let tcp_start = f.len();
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.push(((20 + opts.len()) / 4) as u8 * 16);
        f.push(self.flags);
        f.extend_from_slice(&self.window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&opts);
        f.extend_from_slice(&self.payload);
        let mut sum = checksum_add(0, &self.src.octets());
        sum = checksum_add(sum, &self.dst.octets());
        sum = checksum_add(sum, &[0, 6]);
        sum = checksum_add(sum, &(tcp_len as u16).to_be_bytes());
        sum = checksum_add(sum, &f[tcp_start..]);
        let csum = checksum_finish(sum);
        f[tcp_start + 16..tcp_start + 18].copy_from_slice(&csum.to_be_bytes());
        f.resize(f.len() + self.padding, 0);
        f
    }
}

/// One guest's side of a simple server connection (guest 10.0.0.2:80 → client
/// 10.0.0.1:40000), for writing fixtures as `conn.data(offset, b"..")`.
#[derive(Clone, Debug)]
pub struct Conn {
    /// Template for every frame.
    pub template: TcpFrame,
    /// The guest's ISN (the SYN-ACK's sequence number).
    pub isn: u32,
    /// The ACK number the guest sends (client ISN + 1 + client bytes).
    pub ack: u32,
}

impl Default for Conn {
    fn default() -> Self {
        Conn { template: TcpFrame::default(), isn: 1000, ack: 5001 }
    }
}

impl Conn {
    /// Stream position `offset` (0 = first byte after the SYN) as a sequence number.
    pub fn seq(&self, offset: u32) -> u32 {
        self.isn.wrapping_add(1).wrapping_add(offset)
    }
    /// The SYN-ACK.
    pub fn syn_ack(&self) -> Vec<u8> {
        TcpFrame { seq: self.isn, ack: self.ack, flags: flags::SYN | flags::ACK, ..self.template.clone() }.build()
    }
    /// A data segment at stream offset `offset`.
    pub fn data(&self, offset: u32, payload: &[u8]) -> Vec<u8> {
        self.data_ack(offset, payload, self.ack)
    }
    /// A data segment with an explicit ACK number.
    pub fn data_ack(&self, offset: u32, payload: &[u8], ack: u32) -> Vec<u8> {
        self.data_segment(offset, payload, ack).build()
    }
    /// A data segment, described (to add options or fragment it).
    pub fn data_segment(&self, offset: u32, payload: &[u8], ack: u32) -> TcpFrame {
        TcpFrame {
            seq: self.seq(offset),
            ack,
            flags: flags::ACK | flags::PSH,
            payload: payload.to_vec(),
            ..self.template.clone()
        }
    }
    /// A data segment sent as IPv4 fragments (IP id `ip_id`), cut at the IP payload offsets
    /// `cuts` (the TCP header is part of the first fragment's payload, as on the wire).
    pub fn data_fragments(&self, offset: u32, payload: &[u8], ip_id: u32, cuts: &[usize]) -> Vec<Vec<u8>> {
        let t = self.data_segment(offset, payload, self.ack);
        IpFrame { ip_id, ..t.to_ip(IpAddr::V4(t.src), IpAddr::V4(t.dst), &[]) }.fragments(cuts)
    }
    /// A pure ACK at stream offset `offset`.
    pub fn pure_ack(&self, offset: u32, ack: u32) -> Vec<u8> {
        TcpFrame { seq: self.seq(offset), ack, flags: flags::ACK, ..self.template.clone() }.build()
    }
    /// A FIN (with ACK) at stream offset `offset`.
    pub fn fin(&self, offset: u32) -> Vec<u8> {
        TcpFrame { seq: self.seq(offset), ack: self.ack, flags: flags::ACK | flags::FIN, ..self.template.clone() }
            .build()
    }
    /// A RST (with ACK) at stream offset `offset`.
    pub fn rst(&self, offset: u32) -> Vec<u8> {
        TcpFrame { seq: self.seq(offset), ack: self.ack, flags: flags::ACK | flags::RST, ..self.template.clone() }
            .build()
    }
}

/// An IP packet (IPv4 or IPv6, any protocol) in an Ethernet frame, optionally 802.1Q/QinQ
/// tagged, described field by field; [`IpFrame::fragments`] splits it like a guest would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpFrame {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// VLAN ids, outer first: one = 802.1Q, two = QinQ (0x88a8 outer, 0x8100 inner).
    pub vlans: Vec<u16>,
    /// Source address (the guest); IPv4 and IPv6 must not be mixed.
    pub src: IpAddr,
    /// Destination address (the client).
    pub dst: IpAddr,
    /// IP protocol / next header.
    pub proto: u8,
    /// IPv4 identification / IPv6 fragment identification.
    pub ip_id: u32,
    /// TTL / hop limit.
    pub ttl: u8,
    /// The IP payload (L4 header and data), unfragmented.
    pub payload: Vec<u8>,
    /// Ethernet padding after the IP packet.
    pub padding: usize,
}

impl Default for IpFrame {
    fn default() -> Self {
        IpFrame {
            src_mac: [0x52, 0x54, 0, 0, 0, 2],
            dst_mac: [0x52, 0x54, 0, 0, 0, 1],
            vlans: Vec::new(),
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            proto: 17,
            ip_id: 1,
            ttl: 64,
            payload: Vec::new(),
            padding: 0,
        }
    }
}

/// Addresses used by the IPv6 fixtures: guest 2001:db8::2, client 2001:db8::1.
pub fn v6_pair() -> (IpAddr, IpAddr) {
    (
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    )
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Checksum over the pseudo header of `src`/`dst` and `l4` (which has its checksum field 0).
fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let mut sum = checksum_add(0, &addr_bytes(src));
    sum = checksum_add(sum, &addr_bytes(dst));
    sum = checksum_add(sum, &[0, proto]);
    sum = checksum_add(sum, &(l4.len() as u32).to_be_bytes());
    checksum_finish(checksum_add(sum, l4))
}

/// UDP header + data with a correct checksum.
pub fn udp_payload(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + data.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let c = l4_checksum(src, dst, 17, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// ICMP (IPv4) echo request (`request`) or reply with identifier, sequence and data.
pub fn icmp_echo(request: bool, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![if request { 8 } else { 0 }, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = checksum_finish(checksum_add(0, &m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// ICMPv6 echo request (`request`) or reply, checksummed over the pseudo header.
pub fn icmpv6_echo(src: IpAddr, dst: IpAddr, request: bool, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![if request { 128 } else { 129 }, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = l4_checksum(src, dst, 58, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

impl IpFrame {
    /// A UDP datagram from the guest's port `sport` to the client's `dport`.
    pub fn udp(sport: u16, dport: u16, data: &[u8]) -> Self {
        let d = IpFrame::default();
        IpFrame { payload: udp_payload(d.src, d.dst, sport, dport, data), ..d }
    }

    /// The same packet over IPv6 (2001:db8::2 → 2001:db8::1), UDP checksum recomputed.
    pub fn v6(mut self) -> Self {
        let (src, dst) = v6_pair();
        if self.proto == 17 && self.payload.len() >= 8 {
            self.payload[6] = 0;
            self.payload[7] = 0;
            let c = l4_checksum(src, dst, 17, &self.payload);
            self.payload[6..8].copy_from_slice(&c.to_be_bytes());
        }
        self.src = src;
        self.dst = dst;
        self
    }

    fn link(&self, f: &mut Vec<u8>, ether_type: u16) {
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        let n = self.vlans.len();
        for (i, v) in self.vlans.iter().enumerate() {
            let tpid: u16 = if n > 1 && i == 0 { 0x88a8 } else { 0x8100 };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(v & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&ether_type.to_be_bytes());
    }

    /// One IP packet carrying `data` at fragment byte `offset` (`frag` = with fragment
    /// fields / an IPv6 fragment header, even for offset 0).
    fn packet(&self, data: &[u8], offset: usize, more: bool, frag: bool) -> Vec<u8> {
        let mut f = Vec::with_capacity(64 + data.len() + self.padding);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.link(&mut f, 0x0800);
                let ip = f.len();
                let total = (20 + data.len()).min(usize::from(u16::MAX)) as u16;
                f.extend_from_slice(&[0x45, 0]);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&(self.ip_id as u16).to_be_bytes());
                let fo = ((offset / 8) as u16 & 0x1fff) | if more { 0x2000 } else { 0 } | if frag { 0 } else { 0x4000 };
                f.extend_from_slice(&fo.to_be_bytes());
                f.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                let c = checksum_finish(checksum_add(0, &f[ip..ip + 20]));
                f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
            }
            (s, d) => {
                self.link(&mut f, 0x86dd);
                let ext = if frag { 8 } else { 0 };
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((ext + data.len()) as u16).to_be_bytes());
                f.push(if frag { 44 } else { self.proto });
                f.push(self.ttl);
                f.extend_from_slice(&addr_bytes(s));
                f.extend_from_slice(&addr_bytes(d));
                if frag {
                    f.extend_from_slice(&[self.proto, 0]);
                    f.extend_from_slice(&((offset as u16 & !7) | u16::from(more)).to_be_bytes());
                    f.extend_from_slice(&self.ip_id.to_be_bytes());
                }
            }
        }
        f.extend_from_slice(data);
        f.resize(f.len() + self.padding, 0);
        f
    }

    /// Serialises the whole packet (unfragmented).
    pub fn build(&self) -> Vec<u8> {
        self.packet(&self.payload, 0, false, false)
    }

    /// Splits the payload at the byte offsets `cuts` (rounded down to multiples of 8, as IP
    /// requires) and returns the fragments in offset order.
    pub fn fragments(&self, cuts: &[usize]) -> Vec<Vec<u8>> {
        self.fragment_ranges(cuts).into_iter().map(|(o, l)| self.fragment(o, l)).collect()
    }

    /// The `(offset, len)` pieces [`IpFrame::fragments`] would make.
    pub fn fragment_ranges(&self, cuts: &[usize]) -> Vec<(usize, usize)> {
        let len = self.payload.len();
        let mut points: Vec<usize> = cuts.iter().map(|c| (c % len.max(1)) & !7).filter(|c| *c > 0).collect();
        points.push(0);
        points.push(len);
        points.sort_unstable();
        points.dedup();
        points.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
    }

    /// One fragment carrying payload bytes `offset..offset + len` (MF set unless it ends
    /// the payload). Any offset/length is accepted, for overlap fixtures.
    pub fn fragment(&self, offset: usize, len: usize) -> Vec<u8> {
        let end = (offset + len).min(self.payload.len());
        let start = offset.min(end);
        self.packet(&self.payload[start..end], start, end < self.payload.len(), true)
    }

    /// A fragment with explicit bytes (garbage/overlap fixtures).
    pub fn fragment_with(&self, offset: usize, data: &[u8], more: bool) -> Vec<u8> {
        self.packet(data, offset, more, true)
    }
}

impl TcpFrame {
    /// TCP header + options + payload for the given addresses (IPv6 or IPv4), checksummed:
    /// the payload of an [`IpFrame`] with protocol 6 (TCP over IPv6 / QinQ fixtures).
    pub fn l4_bytes(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(1);
        }
        opts.truncate(40);
        let mut t = Vec::with_capacity(20 + opts.len() + self.payload.len());
        t.extend_from_slice(&self.sport.to_be_bytes());
        t.extend_from_slice(&self.dport.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.push(((20 + opts.len()) / 4) as u8 * 16);
        t.push(self.flags);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(&opts);
        t.extend_from_slice(&self.payload);
        let c = l4_checksum(src, dst, 6, &t);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        t
    }

    /// This segment as an [`IpFrame`] between `src` and `dst` with `vlans`.
    pub fn to_ip(&self, src: IpAddr, dst: IpAddr, vlans: &[u16]) -> IpFrame {
        IpFrame {
            src_mac: self.src_mac,
            dst_mac: self.dst_mac,
            vlans: vlans.to_vec(),
            src,
            dst,
            proto: 6,
            ip_id: u32::from(self.ip_id),
            ttl: self.ttl,
            payload: self.l4_bytes(src, dst),
            padding: self.padding,
        }
    }
}
