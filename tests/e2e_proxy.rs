//! End to end with real kernel TCP stacks (SPEC §2 tests/, §3 proxy mode): a client, a primary
//! and a secondary "guest" in three network namespaces, each joined to the root namespace by a
//! veth pair; `colo-dataplane --mode proxy` runs on the root-side ends with `net_af_packet`.
//! Both guests run the same server and answer the client's download; the client must get every
//! byte right through the proxy, with the secondary's TCP stack driven by the rewritten ACKs.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use colo_suite::{scratch_dir, workspace_bin, ChildGuard};

fn sh(cmd: &str) -> Result<String, String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Three namespaces and their veth pairs, removed on drop.
struct Topology {
    tag: String,
}

impl Topology {
    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.tag)
    }
    fn veth(&self, role: &str) -> String {
        format!("{}v{role}", self.tag)
    }

    fn build() -> Result<Topology, String> {
        let t = Topology { tag: format!("co{}", std::process::id() % 100_000) };
        // (role, address, MAC): both guests look exactly alike to the client.
        let hosts = [
            ("cl", "10.77.0.1", "02:00:00:00:00:01"),
            ("pr", "10.77.0.2", "02:00:00:00:00:02"),
            ("se", "10.77.0.2", "02:00:00:00:00:02"),
        ];
        for (role, addr, mac) in hosts {
            let (ns, veth) = (t.ns(role), t.veth(role));
            sh(&format!("ip netns add {ns}"))?;
            sh(&format!("ip link add {veth} type veth peer name eth0 netns {ns}"))?;
            sh(&format!("sysctl -qw net.ipv6.conf.{veth}.disable_ipv6=1"))?;
            sh(&format!("ip link set {veth} up && ethtool -K {veth} gro off tx off >/dev/null 2>&1 || true"))?;
            let x = format!("ip netns exec {ns}");
            sh(&format!("{x} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 net.ipv4.tcp_timestamps=0"))?;
            sh(&format!(
                "{x} ip link set lo up && {x} ip link set eth0 address {mac} && {x} ip addr add {addr}/24 dev eth0"
            ))?;
            sh(&format!(
                "{x} ip link set eth0 up && {x} ethtool -K eth0 tx off tso off gso off gro off >/dev/null 2>&1 || true"
            ))?;
        }
        let x = |role: &str| format!("ip netns exec {}", t.ns(role));
        sh(&format!("{} ip neigh add 10.77.0.2 lladdr 02:00:00:00:00:02 dev eth0 nud permanent", x("cl")))?;
        for g in ["pr", "se"] {
            sh(&format!("{} ip neigh add 10.77.0.1 lladdr 02:00:00:00:00:01 dev eth0 nud permanent", x(g)))?;
        }
        Ok(t)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for role in ["cl", "pr", "se"] {
            let _ = sh(&format!("ip link del {} 2>/dev/null; ip netns del {}", self.veth(role), self.ns(role)));
        }
    }
}

/// A server that sends `size` deterministic bytes to each of `conns` connections, then exits.
const SERVER: &str = r#"
import socket, sys
size, conns = int(sys.argv[1]), int(sys.argv[2])
data = bytes((i * 7 + i // 251) & 0xff for i in range(size))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(4)
for _ in range(conns):
    c, _ = s.accept(); c.recv(64); c.sendall(data); c.close()
"#;

const CLIENT: &str = r#"
import socket, sys, hashlib
size = int(sys.argv[1])
c = socket.create_connection(("10.77.0.2", 8080), timeout=30)
c.sendall(b"GET\n")
got = bytearray()
while True:
    b = c.recv(65536)
    if not b: break
    got += b
want = bytes((i * 7 + i // 251) & 0xff for i in range(size))
print(len(got), got == want)
"#;

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_kernel_tcp_download_through_the_proxy_arrives_intact() {
    if sh("id -u").map(|u| u.trim() != "0").unwrap_or(true) || sh("ip netns list").is_err() {
        eprintln!("needs root and network namespaces; skipped");
        return;
    }
    let topo = Topology::build().expect("namespaces");
    let dir = scratch_dir("e2e-proxy");
    const SIZE: usize = 1_000_000;
    let mut eal: Vec<String> =
        colo_suite::dataplane_eal_args(&dir, 4).into_iter().filter(|a| !a.starts_with("--vdev")).collect();
    for (i, role) in ["pr", "se", "cl"].iter().enumerate() {
        eal.push(format!("--vdev=net_af_packet{i},iface={},framecnt=2048", topo.veth(role)));
    }
    let mut cmd = Command::new(workspace_bin("colo-dataplane"));
    cmd.args(eal).arg("--").env("RUNTIME_DIRECTORY", &dir).stdin(Stdio::null());
    cmd.args(["--primary", "net_af_packet0", "--secondary", "net_af_packet1"]);
    cmd.args(["--output", "net_af_packet2", "--client", "net_af_packet2", "--mode", "proxy", "--shards", "1"]);
    cmd.args(["--checkpoint-mode", "standalone", "--admin"]).arg(dir.join("admin.sock"));
    cmd.arg("--stats-json").arg(dir.join("stats.json"));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let dataplane = ChildGuard::new(cmd.spawn().unwrap());
    wait_for(&dir.join("admin.sock"));

    let server = |role: &str| {
        ChildGuard::new(
            Command::new("ip")
                .args(["netns", "exec", &topo.ns(role), "python3", "-c", SERVER, &SIZE.to_string(), "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    let (primary, secondary) = (server("pr"), server("se"));
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.ns("cl"), "python3", "-c", CLIENT, &SIZE.to_string()])
        .output()
        .unwrap();
    let client_says = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let client_err = String::from_utf8_lossy(&out.stderr).into_owned();

    let _ =
        Command::new(workspace_bin("colo-ctl")).arg("--socket").arg(dir.join("admin.sock")).arg("shutdown").output();
    let dp = dataplane.wait_with_output();
    let mut stats = String::new();
    let _ = std::fs::File::open(dir.join("stats.json")).and_then(|mut f| f.read_to_string(&mut stats));
    drop((primary, secondary));
    assert_eq!(
        client_says,
        format!("{SIZE} True"),
        "client: {client_err}\ndataplane: {}\nstats: {stats}",
        String::from_utf8_lossy(&dp.stderr)
    );
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["total"]["accounting"], "ok", "{}", stats["total"]);
    assert!(stats["proxy"]["rewritten"].as_u64() > Some(0), "{}", stats["proxy"]);
    assert!(stats["total"]["released"]["match"].as_u64() > Some(100), "{}", stats["total"]);
    eprintln!(
        "checkpoints: {}, released: {}",
        stats["coordinator"]["checkpoints_completed"], stats["total"]["released"]
    );
}
