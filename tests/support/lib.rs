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

/// Path of a workspace binary next to the test executable. It is (re)built once per test
/// process, so a test never runs a stale binary (a no-op when it is up to date).
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--bin", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name} failed");
        built.push(name.to_string());
    }
    assert!(bin.exists(), "{} not found", bin.display());
    bin
}

/// What a `colo-dataplane` run over pcap vdevs produced.
#[derive(Debug)]
pub struct DataplaneRun {
    /// Exit status code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Frames of the output pcap, in file order.
    pub output: Vec<Vec<u8>>,
    /// `--stats-json` contents (Null if missing).
    pub stats: serde_json::Value,
}

/// EAL options for a `colo-dataplane` child process with `lcores` lcores time-sliced on the
/// available CPUs; run it with `RUNTIME_DIRECTORY` set to `dir` so its runtime files (and its
/// telemetry socket, `dir/dpdk/<prefix>/`) stay private.
pub fn dataplane_eal_args(dir: &Path, lcores: usize) -> Vec<String> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpu_set = if cpus >= 2 { "(0,1)" } else { "(0)" };
    vec![
        "--no-huge".into(),
        "--no-pci".into(),
        "--no-shconf".into(),
        "-m".into(),
        "512".into(),
        "--file-prefix".into(),
        format!("colo-dp-{}-{}", std::process::id(), unique("")),
        "--log-level=lib.eal:error".into(),
        "--log-level=lib.telemetry:error".into(),
        "--lcores".into(),
        format!("(0-{})@{cpu_set}", lcores - 1),
        format!("--vdev=net_pcap0,rx_pcap={}", dir.join("primary.pcap").display()),
        format!("--vdev=net_pcap1,rx_pcap={}", dir.join("secondary.pcap").display()),
        format!("--vdev=net_pcap2,tx_pcap={}", dir.join("out.pcap").display()),
    ]
}

/// A `colo-dataplane` command on the net_pcap vdevs of `dir` (`net_pcap0` primary input,
/// `net_pcap1` secondary input, `net_pcap2` output), with enough lcores for `shards` and the
/// EAL options already followed by `--`.
pub fn dataplane_command(dir: &Path, shards: usize) -> std::process::Command {
    dataplane_command_with(dir, dataplane_eal_args(dir, shards + 2))
}

/// [`dataplane_command`] with these EAL options instead.
pub fn dataplane_command_with(dir: &Path, eal: Vec<String>) -> std::process::Command {
    let mut cmd = std::process::Command::new(workspace_bin("colo-dataplane"));
    cmd.args(eal).arg("--").env("RUNTIME_DIRECTORY", dir).stdin(std::process::Stdio::null());
    cmd
}

/// Runs `cmd` and collects what it wrote into `dir`.
pub fn collect_run(dir: &Path, mut cmd: std::process::Command) -> DataplaneRun {
    let out = cmd.output().expect("run colo-dataplane");
    let output = if dir.join("out.pcap").exists() { read_pcap(&dir.join("out.pcap")) } else { Vec::new() };
    let stats = std::fs::read_to_string(dir.join("stats.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    DataplaneRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        output,
        stats,
    }
}

/// Writes the two captures into `dir`, runs `colo-dataplane` on net_pcap vdevs in standalone
/// checkpoint mode until its inputs are idle, and collects what it wrote.
pub fn run_dataplane(
    dir: &Path,
    primary: &[Vec<u8>],
    secondary: &[Vec<u8>],
    shards: usize,
    extra: &[&str],
) -> DataplaneRun {
    run_dataplane_with(dir, primary, secondary, shards, dataplane_eal_args(dir, shards + 2), extra)
}

/// [`run_dataplane`] with these EAL options (which must include [`dataplane_eal_args`]'s vdevs).
pub fn run_dataplane_with(
    dir: &Path,
    primary: &[Vec<u8>],
    secondary: &[Vec<u8>],
    shards: usize,
    eal: Vec<String>,
    extra: &[&str],
) -> DataplaneRun {
    write_pcap(&dir.join("primary.pcap"), primary);
    write_pcap(&dir.join("secondary.pcap"), secondary);
    let mut cmd = dataplane_command_with(dir, eal);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2"])
        .args(["--shards", &shards.to_string(), "--checkpoint-mode", "standalone", "--exit-when-idle-ms", "300"])
        .arg("--stats-json")
        .arg(dir.join("stats.json"))
        .args(extra);
    collect_run(dir, cmd)
}

/// The flow a frame belongs to, as the comparator keys it ("none" for non-IP/malformed).
pub fn flow_of(frame: &[u8]) -> String {
    match colo_core::wire::parse(frame).key() {
        Some(k) => format!("{k:?}"),
        None => "none".into(),
    }
}

/// Every flow's frames in `output` are exactly that flow's frames in `expected`, in order
/// (flows may interleave differently: they run on different shards), except that a TCP
/// segment may leave in consecutive pieces carrying its payload in order from its sequence
/// number on: a held segment's verified first bytes released as a part while the secondary
/// stalls inside it, then its rest (`Action::ReleasePart`, counted as `released_parts`). A
/// loaded machine can stall a secondary that long. Returns the number of extra frames such
/// splits produced, for the caller to hold against `released_parts`.
pub fn assert_same_per_flow(output: &[Vec<u8>], expected: &[Vec<u8>]) -> u64 {
    use std::collections::HashMap;
    let group = |frames: &[Vec<u8>]| {
        let mut m: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for f in frames {
            m.entry(flow_of(f)).or_default().push(f.clone());
        }
        m
    };
    let tcp = |frame: &[u8]| match colo_core::wire::parse(frame) {
        colo_core::wire::Class::Tcp(_, seg) => {
            let at = seg.payload_offset as usize;
            Some((seg.seq, frame[at..at + seg.payload_len as usize].to_vec()))
        }
        _ => None,
    };
    let (got, want) = (group(output), group(expected));
    assert_eq!(got.len(), want.len(), "flows in output");
    let mut extra = 0u64;
    for (flow, frames) in &want {
        let mut pieces = got.get(flow).map(|g| g.iter()).unwrap_or_default();
        for (i, frame) in frames.iter().enumerate() {
            let first = pieces.next().unwrap_or_else(|| panic!("flow {flow}: frame {i} missing"));
            if first == frame {
                continue;
            }
            let split = tcp(frame).zip(tcp(first)).filter(|((seq, _), (at, part))| at == seq && !part.is_empty());
            let Some(((seq, payload), (_, mut carried))) = split else {
                panic!("flow {flow} differs or is reordered at frame {i}");
            };
            while carried.len() < payload.len() {
                let next = pieces.next().and_then(|f| tcp(f));
                let Some((at, more)) = next.filter(|(at, _)| *at == seq.wrapping_add(carried.len() as u32)) else {
                    panic!("flow {flow}: frame {i} split into pieces that do not follow on");
                };
                assert!(!more.is_empty(), "flow {flow}: an empty piece of frame {i} at {at}");
                carried.extend_from_slice(&more);
                extra += 1;
            }
            assert_eq!(carried, payload, "flow {flow}: frame {i}'s pieces carry other bytes");
        }
        assert!(pieces.next().is_none(), "flow {flow}: frames past the expected ones");
    }
    assert_eq!(output.len() as u64, expected.len() as u64 + extra, "frame count");
    extra
}

/// A child process that is killed if the test fails before waiting for it (a panicking test
/// must not leave a busy-polling dataplane behind).
pub struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: std::process::Child) -> Self {
        ChildGuard(Some(child))
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for the child and collects its output.
    pub fn wait_with_output(mut self) -> std::process::Output {
        self.0.take().expect("child").wait_with_output().expect("wait for child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// At least `pages` free 2 MB hugepages and hugetlbfs mounted.
pub fn hugepages(pages: u64) {
    let free = |name: &str| -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let (total, have) = (free("HugePages_Total:"), free("HugePages_Free:"));
    if have < pages {
        let knob = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
        std::fs::write(knob, (total + pages - have).to_string()).expect("reserve hugepages");
    }
    assert!(free("HugePages_Free:") >= pages, "could not reserve {pages} hugepages");
    let mounted = std::fs::read_to_string("/proc/mounts").unwrap_or_default().contains("hugetlbfs");
    if !mounted {
        std::fs::create_dir_all("/dev/hugepages").expect("mount point");
        let ok = std::process::Command::new("mount").args(["-t", "hugetlbfs", "none", "/dev/hugepages"]).status();
        assert!(ok.is_ok_and(|s| s.success()), "cannot mount hugetlbfs");
    }
}

/// Runs `cmd` with `sh -c`: its standard output, or why it failed.
pub fn sh(cmd: &str) -> Result<String, String> {
    let out = std::process::Command::new("sh").arg("-c").arg(cmd).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether an end-to-end test (root, network namespaces) may run: false when `COLO_SKIP_E2E=1`
/// says to skip; panics with the reason (a failure, not a silent pass) when it cannot run.
pub fn e2e_runnable() -> bool {
    if std::env::var("COLO_SKIP_E2E").is_ok_and(|v| v == "1") {
        eprintln!("COLO_SKIP_E2E=1: skipped");
        return false;
    }
    let root = sh("id -u").is_ok_and(|u| u.trim() == "0");
    assert!(root && sh("ip netns list").is_ok(), "needs root and network namespaces (COLO_SKIP_E2E=1 skips)");
    true
}

/// The checkpoint requests in a statistics snapshot, all reasons together.
pub fn requests(stats: &serde_json::Value) -> u64 {
    stats["total"]["checkpoint_requests"].as_object().map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum())
}
