//! Frame builders for tests, benchmarks, fuzzing and `colo-replay`'s capture generator.
//!
//! Owns nothing of the comparator: it only writes well-formed Ethernet/IPv4/TCP bytes (with
//! correct checksums) from explicit fields, so fixtures can vary exactly one header field.
//! Not used on the packet path.

use std::net::Ipv4Addr;

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

fn checksum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    for chunk in bytes.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    sum
}

fn checksum_finish(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

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
        TcpFrame {
            seq: self.seq(offset),
            ack,
            flags: flags::ACK | flags::PSH,
            payload: payload.to_vec(),
            ..self.template.clone()
        }
        .build()
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
