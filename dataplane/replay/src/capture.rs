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

/// Reads a pcap file (either timestamp resolution). pcapng is refused with a hint.
pub fn read_pcap(path: &Path) -> Result<Capture, ReplayError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| ReplayError::Io(name.clone(), e))?;
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(|_| ReplayError::BadCapture(name.clone(), "too short to be a pcap file".into()))?;
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        return Err(ReplayError::BadCapture(
            name,
            "pcapng is not supported; convert with `editcap -F pcap IN OUT`".into(),
        ));
    }
    let chained = std::io::Cursor::new(magic).chain(reader);
    let mut pcap = PcapReader::new(chained)
        .map_err(|e| ReplayError::BadCapture(name.clone(), format!("not a pcap file ({e})")))?;
    let header = pcap.header();
    if header.datalink != DataLink::ETHERNET {
        return Err(ReplayError::BadCapture(name, format!("link type {:?} is not Ethernet", header.datalink)));
    }
    let mut cap = Capture::default();
    while let Some(pkt) = pcap.next_packet() {
        let pkt = pkt.map_err(|e| {
            ReplayError::BadCapture(name.clone(), format!("bad packet record after frame {}: {e}", cap.frames.len()))
        })?;
        cap.push(pkt.timestamp, pkt.data.into_owned());
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
