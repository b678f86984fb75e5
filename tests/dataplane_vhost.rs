//! `colo-dataplane` with vhost-user guest ports (`net_vhost`, the dataplane as the backend, as
//! OVS-DPDK is for VMs), driven by `dpdk-testpmd` on `virtio_user` ports standing in for the
//! two guests: frames flow in from both, the accounting holds, and a guest that goes away and
//! comes back on the same socket is served again without restarting the dataplane.
//!
//! testpmd's txonly generator drops on full rings independently per port, so the two streams
//! are not identical: this test checks the ports and their lifecycle, not the verdicts (which
//! standalone checkpoints resolve). Needs root (2 MB hugepages, reserved here if too few are
//! free: vhost-user shares guest memory through them; both processes run `--in-memory`, so no
//! hugepage file outlives them); fails when it cannot run, unless `COLO_SKIP_E2E=1` says to
//! skip.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use colo_suite::{hugepages, scratch_dir, workspace_bin, ChildGuard};

fn runnable() -> bool {
    if std::env::var("COLO_SKIP_E2E").is_ok_and(|v| v == "1") {
        eprintln!("COLO_SKIP_E2E=1: skipped");
        return false;
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    assert!(root, "needs root for hugepages (COLO_SKIP_E2E=1 skips)");
    true
}

fn stats(admin: &Path) -> serde_json::Value {
    let out = Command::new(workspace_bin("colo-ctl"))
        .args(["--socket"])
        .arg(admin)
        .args(["stats", "--json"])
        .output()
        .expect("run colo-ctl");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Two virtio_user "guests" sending for `secs` seconds, then going away.
fn guests(dir: &Path, run: u32, secs: u64) {
    let mut g = Command::new("dpdk-testpmd");
    g.args([
        "--in-memory",
        "--single-file-segments",
        "-m",
        "128",
        "--no-pci",
        "-l",
        "0-1",
        "--log-level=lib.eal:error",
    ])
    .arg(format!("--file-prefix=colo-vh-guest-{}-{run}", std::process::id()))
    .arg(format!("--vdev=net_virtio_user0,path={}", dir.join("p.sock").display()))
    .arg(format!("--vdev=net_virtio_user1,path={}", dir.join("s.sock").display()))
    .args(["--", "--forward-mode=txonly", "--txpkts=64", "--total-num-mbufs=4096", "-a", "--nb-cores=1"])
    // Without a period testpmd reads stdin for "press enter" and stops at once on EOF.
    .args(["--stats-period", "1"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = ChildGuard::new(g.spawn().expect("dpdk-testpmd (ci/setup installs it)"));
    std::thread::sleep(Duration::from_secs(secs));
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if Command::new("kill").args(["-0", &child.id().to_string()]).status().is_ok_and(|s| !s.success()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.wait_with_output();
}

#[test]
fn vhost_user_guests_are_served_and_served_again_after_they_reconnect() {
    if !runnable() {
        return;
    }
    hugepages(256);
    let dir = scratch_dir("vhost");
    let admin = dir.join("admin.sock");
    let mut cmd = Command::new(workspace_bin("colo-dataplane"));
    cmd.args(["--in-memory", "--single-file-segments", "-m", "256", "--no-pci", "--log-level=lib.eal:error"])
        .arg(format!("--file-prefix=colo-vh-dp-{}", std::process::id()))
        .args(["--lcores", "(0-1)@(0,1)"])
        .arg(format!("--vdev=net_vhost0,iface={},queues=1", dir.join("p.sock").display()))
        .arg(format!("--vdev=net_vhost1,iface={},queues=1", dir.join("s.sock").display()))
        .arg("--vdev=net_null0")
        .args(["--", "--primary", "net_vhost0", "--secondary", "net_vhost1", "--output", "net_null0"])
        .args(["--checkpoint-mode", "standalone", "--admin"])
        .arg(&admin)
        .env("RUNTIME_DIRECTORY", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe: nobody reads a pipe while the test runs, and a dataplane whose
        // log fills one blocks in the write (and with it the vhost-user replies to the guests).
        .stderr(std::fs::File::create(dir.join("dataplane.log")).expect("log file"));
    let dp = ChildGuard::new(cmd.spawn().expect("start colo-dataplane"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(admin.exists() && dir.join("s.sock").exists()) {
        assert!(Instant::now() < deadline, "the dataplane did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut seen = Vec::new();
    for run in 0..2 {
        guests(&dir, run, 3);
        let t = stats(&admin)["total"].clone();
        assert_eq!(t["accounting"], "ok", "{t}");
        seen.push((t["primary_in"].as_u64().unwrap_or(0), t["secondary_in"].as_u64().unwrap_or(0)));
    }
    // The first guests' frames arrived on both ports, and after they went away and came back
    // on the same sockets, the second guests' frames did too (tens of thousands a second).
    assert!(seen[0].0 > 10_000 && seen[0].1 > 10_000, "{seen:?}");
    assert!(seen[1].0 > seen[0].0 + 10_000 && seen[1].1 > seen[0].1 + 10_000, "{seen:?}");
    let _ = Command::new(workspace_bin("colo-ctl")).arg("--socket").arg(&admin).arg("shutdown").output();
    let out = dp.wait_with_output();
    let log = std::fs::read_to_string(dir.join("dataplane.log")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{log}");
}
