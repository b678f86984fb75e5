//! Reading and writing classic pcap files (microsecond and nanosecond), Ethernet only.
//!
//! Owns file I/O and its error messages. Never panics on bad input: every failure becomes a
//! [`ReplayError`] with one clear line.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::{DataLink, TsResolution};

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedFrame {
    /// Capture timestamp (since the Unix epoch, or any origin).
    pub ts: Duration,
    /// The frame, from its Ethernet header.
    pub data: Vec<u8>,
}

/// A whole capture, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// Frames in file order.
    pub frames: Vec<CapturedFrame>,
    /// What was odd but not fatal while reading (e.g. a truncated last record).
    pub warnings: Vec<String>,
}

impl Capture {
    /// Appends a frame at `ts`.
    pub fn push(&mut self, ts: Duration, data: Vec<u8>) {
        self.frames.push(CapturedFrame { ts, data });
    }
}

/// What went wrong, as one line for the operator.
#[derive(Debug)]
pub enum ReplayError {
    /// The file could not be opened or read.
    Io(String, std::io::Error),
    /// The file is not a usable pcap.
    BadCapture(String, String),
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Io(path, e) => write!(f, "{path}: {e}"),
            ReplayError::BadCapture(path, why) => write!(f, "{path}: {why}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// Link types a capture may use: Ethernet as is; Linux "cooked" captures (`tcpdump -i any`,
/// SLL and SLL2) are turned into Ethernet frames carrying the same network-layer bytes.
fn link_supported(link: DataLink) -> bool {
    matches!(link, DataLink::ETHERNET | DataLink::LINUX_SLL | DataLink::LINUX_SLL2)
}

/// The frame as Ethernet: unchanged for Ethernet; for SLL/SLL2 a 14-byte Ethernet header
/// (destination zero, source from the link-layer address, the EtherType from the protocol
/// field) replaces the cooked header. A record too short for its header is kept as it is (the
/// comparator then counts it as malformed: every frame stays accounted for).
fn to_ethernet(link: DataLink, data: Vec<u8>) -> Vec<u8> {
    let (header_len, addr_at, proto_at) = match link {
        DataLink::LINUX_SLL => (16, 6, 14),
        DataLink::LINUX_SLL2 => (20, 12, 0),
        _ => return data,
    };
    let Some(header) = data.get(..header_len) else { return data };
    let mut eth = Vec::with_capacity(data.len() - header_len + 14);
    eth.extend_from_slice(&[0; 6]);
    eth.extend_from_slice(&header[addr_at..addr_at + 6]);
    eth.extend_from_slice(&header[proto_at..proto_at + 2]);
    eth.extend_from_slice(&data[header_len..]);
    eth
}

/// Reads a pcapng file: enhanced and simple packet blocks of Ethernet or Linux cooked
/// interfaces, timestamps scaled by each interface's `if_tsresol` (default microseconds).
fn read_pcapng<R: Read>(name: &str, reader: R) -> Result<Capture, ReplayError> {
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let bad = |why: String| ReplayError::BadCapture(name.to_string(), why);
    let mut ng = PcapNgReader::new(reader).map_err(|e| bad(format!("not a pcapng file ({e})")))?;
    // (link type, ticks per second) of each interface, in section order.
    let mut interfaces: Vec<(DataLink, u128)> = Vec::new();
    let mut cap = Capture::default();
    while let Some(block) = ng.next_block() {
        let block = match block {
            Ok(b) => b,
            Err(e) if is_truncation(&e) => {
                let n = cap.frames.len();
                cap.warnings
                    .push(format!("{name}: the last block is truncated and was ignored ({n} whole frames read)"));
                break;
            }
            Err(e) => return Err(bad(format!("bad block after frame {}: {e}", cap.frames.len()))),
        };
        match block {
            Block::SectionHeader(_) => interfaces.clear(),
            Block::InterfaceDescription(idb) => {
                if !link_supported(idb.linktype) {
                    return Err(bad(format!("link type {:?} is not Ethernet or Linux cooked", idb.linktype)));
                }
                let mut per_second: u128 = 1_000_000;
                for opt in &idb.options {
                    if let InterfaceDescriptionOption::IfTsResol(r) = opt {
                        let exp = u32::from(r & 0x7f).min(30);
                        per_second = if r & 0x80 == 0 { 10u128.pow(exp.min(19)) } else { 1u128 << exp };
                    }
                }
                interfaces.push((idb.linktype, per_second.max(1)));
            }
            Block::EnhancedPacket(epb) => {
                let Some(&(link, per_second)) = interfaces.get(epb.interface_id as usize) else {
                    return Err(bad(format!("packet of undeclared interface {}", epb.interface_id)));
                };
                // pcap-file hands the raw 64-bit timestamp over as nanoseconds; rescale it.
                let ticks = epb.timestamp.as_nanos();
                let nanos = ticks.saturating_mul(1_000_000_000) / per_second;
                let ts = std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
                cap.push(ts, to_ethernet(link, epb.data.into_owned()));
            }
            Block::SimplePacket(spb) => {
                let link = interfaces.first().map_or(DataLink::ETHERNET, |i| i.0);
                // No timestamp: keep file order by reusing the previous frame's time.
                let ts = cap.frames.last().map_or(std::time::Duration::ZERO, |f| f.ts);
                cap.push(ts, to_ethernet(link, spb.data.into_owned()));
            }
            _ => {}
        }
    }
    Ok(cap)
}

/// Whether a record error means the file simply ends mid-record.
fn is_truncation(e: &pcap_file::PcapError) -> bool {
    match e {
        pcap_file::PcapError::IncompleteBuffer => true,
        pcap_file::PcapError::IoError(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        _ => false,
    }
}

/// Reads a pcap (either timestamp resolution) or pcapng file of Ethernet or Linux cooked
/// frames.
pub fn read_pcap(path: &Path) -> Result<Capture, ReplayError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| ReplayError::Io(name.clone(), e))?;
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(|_| ReplayError::BadCapture(name.clone(), "too short to be a pcap file".into()))?;
    let chained = std::io::Cursor::new(magic).chain(reader);
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        return read_pcapng(&name, chained);
    }
    let mut pcap = PcapReader::new(chained)
        .map_err(|e| ReplayError::BadCapture(name.clone(), format!("not a pcap file ({e})")))?;
    let header = pcap.header();
    let link = header.datalink;
    if !link_supported(link) {
        return Err(ReplayError::BadCapture(name, format!("link type {link:?} is not Ethernet or Linux cooked")));
    }
    let mut cap = Capture::default();
    while let Some(pkt) = pcap.next_packet() {
        let pkt = match pkt {
            Ok(pkt) => pkt,
            // A capture cut off mid-record (tcpdump killed, disk full): keep what is whole.
            Err(e) if is_truncation(&e) => {
                cap.warnings.push(format!(
                    "{name}: the last record is truncated and was ignored ({} whole frames read)",
                    cap.frames.len()
                ));
                break;
            }
            Err(e) => {
                return Err(ReplayError::BadCapture(
                    name.clone(),
                    format!("bad packet record after frame {}: {e}", cap.frames.len()),
                ))
            }
        };
        cap.push(pkt.timestamp, to_ethernet(link, pkt.data.into_owned()));
    }
    Ok(cap)
}

/// Writes `capture` as an Ethernet pcap with the given timestamp resolution.
pub fn write_pcap(path: &Path, capture: &Capture, resolution: TsResolution) -> Result<(), ReplayError> {
    let name = path.display().to_string();
    let file = File::create(path).map_err(|e| ReplayError::Io(name.clone(), e))?;
    let header = PcapHeader {
        snaplen: 262_144,
        ts_resolution: resolution,
        datalink: DataLink::ETHERNET,
        ..PcapHeader::default()
    };
    let bad = |e: pcap_file::PcapError| ReplayError::BadCapture(name.clone(), e.to_string());
    let mut w = PcapWriter::with_header(BufWriter::new(file), header).map_err(bad)?;
    for f in &capture.frames {
        let len = u32::try_from(f.data.len()).unwrap_or(u32::MAX);
        w.write_packet(&PcapPacket::new(f.ts, len, &f.data))
            .map_err(|e| ReplayError::BadCapture(name.clone(), e.to_string()))?;
    }
    let mut inner = w.into_writer();
    std::io::Write::flush(&mut inner).map_err(|e| ReplayError::Io(name, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
    use pcap_file::pcapng::PcapNgWriter;
    use std::borrow::Cow;
    use std::time::Duration;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("colo-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn pcapng_with_nanosecond_interfaces_reads_with_true_timestamps() {
        let path = tmp("ns.pcapng");
        let mut w = PcapNgWriter::new(File::create(&path).unwrap()).unwrap();
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![InterfaceDescriptionOption::IfTsResol(9)],
        };
        w.write_pcapng_block(idb).unwrap();
        for (i, frame) in [b"frame one, sixty bytes or so".to_vec(), b"frame two".to_vec()].into_iter().enumerate() {
            let raw_ns = 1_700_000_000_123_456_789u64 + i as u64;
            let epb = EnhancedPacketBlock {
                interface_id: 0,
                // The raw timestamp, in the interface's units (ns here).
                timestamp: Duration::from_nanos(raw_ns),
                original_len: frame.len() as u32,
                data: Cow::Owned(frame),
                options: vec![],
            };
            w.write_pcapng_block(epb).unwrap();
        }
        drop(w);
        let cap = read_pcap(&path).unwrap();
        assert_eq!(cap.frames.len(), 2);
        assert_eq!(cap.frames[0].data, b"frame one, sixty bytes or so");
        assert_eq!(cap.frames[1].ts, Duration::from_nanos(1_700_000_000_123_456_790));
    }

    #[test]
    fn pcapng_default_resolution_is_microseconds() {
        let path = tmp("us.pcapng");
        let mut w = PcapNgWriter::new(File::create(&path).unwrap()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock { linktype: DataLink::ETHERNET, snaplen: 0, options: vec![] })
            .unwrap();
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(1_500_000),
            original_len: 3,
            data: Cow::Owned(vec![1, 2, 3]),
            options: vec![],
        };
        w.write_pcapng_block(epb).unwrap();
        drop(w);
        assert_eq!(read_pcap(&path).unwrap().frames[0].ts, Duration::from_micros(1_500_000));
    }

    #[test]
    fn a_truncated_last_record_keeps_the_whole_frames_with_a_warning() {
        let path = tmp("cut.pcap");
        let frames: Vec<CapturedFrame> =
            (0..3u8).map(|i| CapturedFrame { ts: Duration::from_millis(u64::from(i)), data: vec![i; 60] }).collect();
        write_pcap(&path, &Capture { frames, warnings: Vec::new() }, TsResolution::MicroSecond).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 20).unwrap();
        let cap = read_pcap(&path).unwrap();
        assert_eq!(cap.frames.len(), 2);
        assert_eq!(cap.warnings.len(), 1, "{:?}", cap.warnings);
        assert!(cap.warnings[0].contains("truncated"));
    }

    #[test]
    fn linux_cooked_frames_become_ethernet() {
        let path = tmp("sll.pcap");
        let header = PcapHeader { datalink: DataLink::LINUX_SLL, ..PcapHeader::default() };
        let mut w = PcapWriter::with_header(File::create(&path).unwrap(), header).unwrap();
        let mut sll = vec![0, 4, 0, 1, 0, 6, 0x52, 0x54, 0, 0, 0, 2, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&[0x45; 20]);
        w.write_packet(&PcapPacket::new(Duration::from_secs(1), sll.len() as u32, &sll)).unwrap();
        w.write_packet(&PcapPacket::new(Duration::from_secs(2), 3, &[1, 2, 3])).unwrap();
        drop(w);
        let cap = read_pcap(&path).unwrap();
        assert_eq!(cap.frames.len(), 2, "a too-short record is kept, not lost");
        let eth = &cap.frames[0].data;
        assert_eq!(&eth[6..12], &[0x52, 0x54, 0, 0, 0, 2]);
        assert_eq!(&eth[12..14], &[0x08, 0x00]);
        assert_eq!(&eth[14..], &[0x45; 20]);
        assert_eq!(cap.frames[1].data, vec![1, 2, 3]);
    }
}
