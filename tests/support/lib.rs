//! Shared helpers for the integration tests: one EAL per test process (DPDK allows one init
//! per process), unique names, and pcap reading/writing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use dpdk::Eal;

/// EAL options for tests: no hugepages, no PCI, no shared config, quiet, three lcores
/// time-sliced over the available CPUs (so worker lcores exist on a 2-core machine).
pub fn test_eal_args(prefix: &str) -> Vec<String> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpu_set = if cpus >= 2 { "(0,1)" } else { "(0)" };
    vec![
        "colo-test".into(),
        "--no-huge".into(),
        "--no-pci".into(),
        "--no-shconf".into(),
        "--no-telemetry".into(),
        "-m".into(),
        "256".into(),
        "--file-prefix".into(),
        prefix.into(),
        "--log-level=lib.eal:error".into(),
        "--lcores".into(),
        format!("(0-2)@{cpu_set}"),
    ]
}

/// The process-wide test EAL, started on first use.
pub fn test_eal() -> &'static Eal {
    static EAL: OnceLock<Eal> = OnceLock::new();
    EAL.get_or_init(|| {
        let prefix = format!("colo-test-{}", std::process::id());
        // EAL makes a runtime directory even with --no-shconf; keep it out of /var/run.
        let runtime = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&runtime).expect("create EAL runtime dir");
        std::env::set_var("RUNTIME_DIRECTORY", &runtime);
        Eal::init(test_eal_args(&prefix)).unwrap_or_else(|e| panic!("EAL init failed: {e}"))
    })
}

/// A name unique within this process, for pools, rings and vdevs.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A `net_ring` port whose transmit queue loops back into its receive queue, over a ring of
/// `slots` slots (a power of two).
pub fn loopback_ring_port(eal: &Eal, name: &str, slots: u32) -> dpdk::PortId {
    let ring = dpdk::Ring::new(eal, &unique(&format!("{name}_r")), slots).expect("ring");
    dpdk::Port::from_rings(eal, &unique(name), std::slice::from_ref(&ring), std::slice::from_ref(&ring))
        .expect("ring port")
}

/// A fresh scratch directory for one test.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("colo-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes `frames` as a microsecond pcap with increasing timestamps.
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let file = std::fs::File::create(path).expect("create pcap");
    let header = PcapHeader { datalink: pcap_file::DataLink::ETHERNET, ..Default::default() };
    let mut w = PcapWriter::with_header(file, header).expect("pcap header");
    for (i, f) in frames.iter().enumerate() {
        let ts = std::time::Duration::from_micros(1_000_000 + i as u64 * 10);
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, f)).expect("pcap packet");
    }
}

/// Reads every frame of a pcap (micro- or nanosecond format).
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    use pcap_file::pcap::PcapReader;
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut r = PcapReader::new(file).expect("pcap header");
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        out.push(p.expect("pcap packet").data.into_owned());
    }
    out
}

/// `n` Ethernet frames of pseudo-random sizes in `60..=1514`, each carrying its index and a
/// pattern so reordering, truncation or corruption shows.
pub fn varied_frames(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 60 + (x % (1514 - 60 + 1)) as usize;
            let mut f = vec![0u8; len];
            f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
            f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
            f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
            f[14..22].copy_from_slice(&(i as u64).to_be_bytes());
            for (j, b) in f[22..].iter_mut().enumerate() {
                *b = (j as u8).wrapping_mul(31).wrapping_add(x as u8);
            }
            f
        })
        .collect()
}
