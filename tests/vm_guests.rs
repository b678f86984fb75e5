//! Real virtual machines: two QEMU guests (Debian's cloud kernel and a busybox initramfs built
//! by `ci/vm-image`, TCG) attach to `colo-dataplane` through vhost-user ports (`net_vhost`, the
//! dataplane as the backend), primary and secondary with the same MAC and IP, each running the
//! same server (`tests/guest`). A client in a network namespace reaches them through
//! `--mode proxy` (its port on `net_af_packet`). Nothing is switched off inside the guests:
//! their kernels run at their defaults (TCP timestamps, SACK, window scaling, autotuning, IPv6,
//! the virtio NIC's checksum offload).
//!
//! Checked: a 64 MB download (sha256), 200 round trips and 50 short connections with no
//! checkpoint; every frame the client receives has valid checksums and fits its MTU; the guests
//! shut down and boot again on the same sockets and are served again without restarting the
//! dataplane; a secondary that serves one different byte costs one checkpoint and the byte
//! never leaves. The same with TCP segmentation offload offered on the vhost ports (the guests
//! then hand over frames of up to 64 KiB).
//!
//! Needs root (hugepages, namespaces) and QEMU (`ci/setup` installs it); fails with the reason
//! when it cannot run, unless `COLO_SKIP_E2E=1` says to skip. The guests run under TCG;
//! `COLO_VM_ACCEL=kvm` uses KVM where it works.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use colo_core::checksum;
use colo_suite::{hugepages, read_pcap, requests, scratch_dir, sh, workspace_bin, ChildGuard};

const WORKLOAD: &str = include_str!("support/workload.py");
const GUEST: &str = "10.77.0.2";
const GUEST_MAC: &str = "02:00:00:00:00:02";
const CLIENT: &str = "10.77.0.1";
const MB: u64 = 1_000_000;
/// The client's MTU (the veth default), and so the largest frame it may receive.
const CLIENT_MTU: usize = 1500;

/// Whether this test may run; panics with the reason (a failure, not a silent pass) when not.
fn runnable() -> bool {
    if !colo_suite::e2e_runnable() {
        return false;
    }
    assert!(
        sh("command -v qemu-system-x86_64").is_ok(),
        "needs qemu-system-x86_64 (Debian package qemu-system-x86; ci/setup installs it)"
    );
    true
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The guest kernel and initramfs, built (or reused) by `ci/vm-image`.
fn image() -> PathBuf {
    let out = repo().join("target/vm");
    let built = Command::new(repo().join("ci/vm-image")).arg(&out).status().expect("run ci/vm-image");
    assert!(built.success(), "ci/vm-image could not build the guest image");
    out
}

/// One QEMU guest on a vhost-user socket, its console in a file.
struct Vm {
    child: ChildGuard,
    console: PathBuf,
}

impl Vm {
    /// Boots a guest on `socket`; `flip` makes its server change that byte of every download.
    fn boot(image: &Path, dir: &Path, name: &str, socket: &Path, flip: Option<u64>) -> Vm {
        let console = dir.join(format!("{name}.console"));
        let _ = std::fs::remove_file(&console);
        let mut append = format!("console=ttyS0 quiet panic=-1 colo_ip={GUEST}/24");
        if let Some(k) = flip {
            append += &format!(" colo_flip={k}");
        }
        // TCG unless told otherwise: KVM inside a VM (nested) may hang before userspace.
        let accel = std::env::var("COLO_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
        let mut q = Command::new("qemu-system-x86_64");
        q.args(["-machine", &format!("q35,accel={accel}"), "-m", "256", "-smp", "1", "-display", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initramfs.cpio"))
            .args(["-append", &append])
            // vhost-user maps guest memory into the backend: it must be shareable.
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem"])
            .arg("-chardev")
            .arg(format!("socket,id=chr,path={}", socket.display()))
            .args(["-netdev", "vhost-user,id=net,chardev=chr"])
            // vectors=0: QEMU 7.2 under TCG crashes setting up MSI-X notifiers for a vhost-user
            // NIC when the guest starts it; legacy interrupts work.
            .args(["-device", &format!("virtio-net-pci,netdev=net,mac={GUEST_MAC},vectors=0")])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.qemu.log"))).expect("log file"));
        let child = ChildGuard::new(q.spawn().expect("start qemu-system-x86_64"));
        Vm { child, console }
    }

    /// Waits until the guest's server listens (its console says so).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let said = std::fs::read_to_string(&self.console).unwrap_or_default();
            if said.contains("colo-guest: ready") {
                return;
            }
            assert!(Instant::now() < deadline, "the guest did not come up; console:\n{said}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Powers the guest off (QEMU quits on SIGTERM, closing its vhost-user connection).
    fn shut_down(self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let out = self.child.wait_with_output();
        assert!(out.status.code().is_some_and(|c| c == 0) || out.status.code().is_none(), "{out:?}");
    }
}

/// The client's namespace and its veth pair, the dataplane, and the two guests.
struct Rig {
    dir: PathBuf,
    ns: String,
    veth: String,
    image: PathBuf,
    dataplane: Option<ChildGuard>,
}

impl Rig {
    /// The client namespace and the dataplane (`vhost_args` added to both guest ports).
    fn start(test: &str, vhost_args: &str) -> Rig {
        let image = image();
        hugepages(300);
        let dir = scratch_dir(test);
        std::fs::write(dir.join("workload.py"), WORKLOAD).expect("write workload");
        let tag = format!("v{}{}", std::process::id() % 100_000, test.len());
        let rig = Rig { dir, ns: format!("{tag}cl"), veth: format!("{tag}c"), image, dataplane: None };
        let (ns, veth) = (&rig.ns, &rig.veth);
        let x = format!("ip netns exec {ns}");
        sh(&format!("ip netns add {ns} && ip link add {veth} type veth peer name eth0 netns {ns}")).unwrap();
        // The root-side end is the dataplane's wire, not a host: it must not talk itself.
        sh(&format!("sysctl -qw net.ipv6.conf.{veth}.disable_ipv6=1 && ip link set {veth} up")).unwrap();
        sh(&format!("ethtool -K {veth} gro off tx off >/dev/null 2>&1 || true")).unwrap();
        sh(&format!("{x} ip link set lo up && {x} ip link set eth0 address 02:00:00:00:00:01")).unwrap();
        sh(&format!("{x} ip addr add {CLIENT}/24 dev eth0 && {x} ip link set eth0 up")).unwrap();
        // The client's veth stands for a wire: af_packet cannot finish partial checksums.
        sh(&format!("{x} ethtool -K eth0 tx off tso off gso off gro off >/dev/null 2>&1 || true")).unwrap();

        let admin = rig.dir.join("admin.sock");
        let mut cmd = Command::new(workspace_bin("colo-dataplane"));
        cmd.args(["--in-memory", "--single-file-segments", "-m", "512", "--no-pci", "--log-level=lib.eal:error"])
            .arg(format!("--file-prefix=colo-vm-{}", std::process::id()))
            // One lcore for everything: the two TCG guests need the other CPU.
            .args(["-l", "0"])
            .arg(format!("--vdev=net_vhost0,iface={},queues=1{vhost_args}", rig.socket("p").display()))
            .arg(format!("--vdev=net_vhost1,iface={},queues=1{vhost_args}", rig.socket("s").display()))
            .arg(format!("--vdev=net_af_packet0,iface={veth},framecnt=2048"))
            .args(["--", "--primary", "net_vhost0", "--secondary", "net_vhost1"])
            .args(["--output", "net_af_packet0", "--client", "net_af_packet0", "--mode", "proxy"])
            .args(["--shards", "1", "--checkpoint-mode", "standalone", "--idle-sleep-us", "50", "--admin"])
            .arg(&admin)
            .arg("--stats-json")
            .arg(rig.dir.join("stats.json"))
            .env("RUNTIME_DIRECTORY", &rig.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(rig.dir.join("dataplane.log")).expect("log file"));
        let mut rig = rig;
        rig.dataplane = Some(ChildGuard::new(cmd.spawn().expect("start colo-dataplane")));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(admin.exists() && rig.socket("s").exists()) {
            assert!(Instant::now() < deadline, "the dataplane did not come up:\n{}", rig.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        rig
    }

    fn socket(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{role}.sock"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dataplane.log")).unwrap_or_default()
    }

    /// Boots the primary and the secondary (the secondary changing byte `flip` if given).
    fn boot(&self, secondary_flip: Option<u64>) -> [Vm; 2] {
        let p = Vm::boot(&self.image, &self.dir, "primary", &self.socket("p"), None);
        let s = Vm::boot(&self.image, &self.dir, "secondary", &self.socket("s"), secondary_flip);
        p.wait_ready();
        s.wait_ready();
        [p, s]
    }

    /// `workload.py ARGS` on the client; its output words.
    fn client(&self, args: &[&str]) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "python3"])
            .arg(self.dir.join("workload.py"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "client {args:?} failed: {said}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        said.split_whitespace().map(str::to_string).collect()
    }

    /// A download of `size` bytes: (bytes, sha256 ok, MB/s).
    fn download(&self, size: u64) -> (u64, bool, f64) {
        let w = self.client(&["download", GUEST, "8080", &size.to_string()]);
        (w[0].parse().unwrap(), w[1] == "sha256-ok", w[2].parse().unwrap())
    }

    /// `rtt`/`short` N times: the rate per second.
    fn rate(&self, what: &str, n: u32) -> f64 {
        let w = self.client(&[what, GUEST, "8080", &n.to_string()]);
        assert_eq!(w[0], n.to_string());
        w[1].parse().unwrap()
    }

    fn stats(&self) -> serde_json::Value {
        let out = Command::new(workspace_bin("colo-ctl"))
            .arg("--socket")
            .arg(self.dir.join("admin.sock"))
            .args(["stats", "--json"])
            .output()
            .expect("run colo-ctl");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("no statistics:\n{}", self.log()))
    }

    /// Captures what the client receives until the returned guard is dropped or finished.
    fn capture(&self, name: &str) -> (ChildGuard, PathBuf) {
        let path = self.dir.join(format!("{name}.pcap"));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "tcpdump", "-i", "eth0", "-s", "0", "-Q", "in", "-U", "-w"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump (ci/setup installs it)");
        std::thread::sleep(Duration::from_millis(500));
        (ChildGuard::new(child), path)
    }

    /// Stops the dataplane; its final statistics.
    fn stop(mut self) -> serde_json::Value {
        let _ = Command::new(workspace_bin("colo-ctl"))
            .arg("--socket")
            .arg(self.dir.join("admin.sock"))
            .arg("shutdown")
            .output();
        let out = self.dataplane.take().map(ChildGuard::wait_with_output);
        assert_eq!(out.and_then(|o| o.status.code()), Some(0), "{}", self.log());
        let s = std::fs::read_to_string(self.dir.join("stats.json")).unwrap_or_default();
        serde_json::from_str(&s).unwrap_or_else(|_| panic!("no final statistics:\n{}", self.log()))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.dataplane.take());
        let _ = sh(&format!("ip link del {} 2>/dev/null; ip netns del {}", self.veth, self.ns));
    }
}

/// Frames the client received that were too long for its MTU or carried a wrong IPv4, TCP or
/// UDP checksum (each with the reason), and how many IPv4 TCP/UDP frames were checked.
fn bad_frames(pcap: &Path) -> (Vec<String>, usize) {
    let (mut bad, mut checked) = (Vec::new(), 0);
    for (i, f) in read_pcap(pcap).iter().enumerate() {
        if f.len() > CLIENT_MTU + 14 {
            bad.push(format!("frame {i}: {} bytes", f.len()));
            continue;
        }
        if f.len() < 34 || f[12..14] != [0x08, 0x00] {
            continue;
        }
        let ihl = usize::from(f[14] & 0x0F) * 4;
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        if checksum::fold(checksum::add(0, &f[14..14 + ihl])) != 0xFFFF {
            bad.push(format!("frame {i}: IPv4 header checksum"));
        }
        let (proto, l4) = (f[23], &f[14 + ihl..(14 + total).min(f.len())]);
        if proto != 6 && proto != 17 {
            continue;
        }
        checked += 1;
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        let sum = checksum::fold(checksum::add(checksum::add(0, &pseudo), l4));
        let zero_udp = proto == 17 && l4.len() >= 8 && l4[6..8] == [0, 0];
        if sum != 0xFFFF && !zero_udp {
            bad.push(format!("frame {i}: {} checksum", if proto == 6 { "TCP" } else { "UDP" }));
        }
    }
    (bad, checked)
}

/// The whole acceptance run on one rig: downloads, round trips and short connections with no
/// checkpoint and only valid frames on the client's wire; both guests shut down and boot again
/// and are served again, the secondary now serving one different byte: one checkpoint, and
/// the byte never leaves.
fn guests_are_served_rebooted_and_a_difference_is_caught(test: &str, tso: bool) {
    // One rig at a time, also under plain `cargo test` (threads): two would share the CPUs,
    // the hugepages and the image build.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::start(test, if tso { ",tso=1" } else { "" });
    let t = Instant::now();
    let [p, s] = rig.boot(None);
    eprintln!("{test}: both guests up after {:?}", t.elapsed());

    let (tcpdump, pcap) = rig.capture("client");
    let size = 64 * MB;
    let (got, intact, mbs) = rig.download(size);
    assert!(got == size && intact, "download {got} of {size} bytes, intact {intact}\n{}", rig.log());
    let rtts = rig.rate("rtt", 200);
    let shorts = rig.rate("short", 50);
    std::thread::sleep(Duration::from_millis(500));
    drop(tcpdump);
    eprintln!("{test}: download {mbs} MB/s, {rtts} round trips/s, {shorts} connections/s");
    let st = rig.stats();
    assert_eq!(requests(&st), 0, "checkpoint requests {}\n{}", st["total"]["checkpoint_requests"], rig.log());
    assert_eq!(st["total"]["accounting"], "ok", "{}", st["total"]);
    assert!(st["total"]["released"]["match"].as_u64() > Some(size / 65536), "{}", st["total"]);
    let (bad, checked) = bad_frames(&pcap);
    // The capture saw the download (tcpdump may miss a few frames; the check is on those seen).
    assert!(checked as u64 > size / 3000, "only {checked} TCP/UDP frames captured");
    assert!(bad.is_empty(), "{} bad frames of {checked}, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
    assert_eq!(st["egress"]["too_long_dropped"], 0, "{}", st["egress"]);
    if tso {
        // The guests handed over frames longer than the client's MTU, and they were cut.
        assert!(st["egress"]["split"].as_u64() > Some(100), "{}", st["egress"]);
    }

    // Both guests power off and boot again on the same sockets; the dataplane keeps running.
    // The secondary now serves one different byte.
    p.shut_down();
    s.shut_down();
    let flip = 5 * MB + 12_345;
    let _guests = rig.boot(Some(flip));
    let (got, intact, _) = rig.download(16 * MB);
    assert!(got == 16 * MB && intact, "download {got} bytes, intact {intact}: the flipped byte reached the client");
    let st = rig.stats();
    assert_eq!(st["total"]["checkpoint_requests"], serde_json::json!({"tcp-payload-mismatch": 1}), "{}", st["total"]);
    rig.rate("short", 10);
    let stats = rig.stop();
    assert_eq!(requests(&stats), 1, "{}", stats["total"]["checkpoint_requests"]);
    assert_eq!(stats["total"]["accounting"], "ok", "{}", stats["total"]);
}

#[test]
fn two_qemu_guests_on_vhost_user_ports_are_compared_through_the_proxy() {
    if runnable() {
        guests_are_served_rebooted_and_a_difference_is_caught("vm-default", false);
    }
}

/// The vhost ports offer TCP segmentation offload: the guests hand over frames of up to 64 KiB
/// in chained mbufs, compared whole and cut to the client's MTU on the way out.
#[test]
fn guests_offered_tso_hand_over_64k_frames_that_leave_cut_to_the_client_mtu() {
    if runnable() {
        guests_are_served_rebooted_and_a_difference_is_caught("vm-tso", true);
    }
}
