//! `colo-dataplane` on net_pcap virtual devices (issue 5): equal streams from the two guests
//! leave byte-identical, each flow in primary order, with no checkpoint; a divergence is
//! caught and its frames leave only by flush; the accounting invariant holds.

use colo_core::fixtures::{Conn, TcpFrame};
use colo_suite::{assert_same_per_flow, run_dataplane, scratch_dir};

/// `flows` server connections; the primary sends each payload in 10-byte segments, the
/// secondary in 3+7-byte ones, with different IP IDs and TTLs. Returns (primary, secondary).
fn resegmented_flows(flows: u16, segments: u32) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut primary = Vec::new();
    let mut secondary = Vec::new();
    for f in 0..flows {
        let conn = |ip_id: u16, ttl: u8| Conn {
            template: TcpFrame {
                dst: std::net::Ipv4Addr::new(10, 1, (f >> 8) as u8, f as u8),
                dport: 40000 + f,
                ip_id,
                ttl,
                ..TcpFrame::default()
            },
            ..Conn::default()
        };
        let (p, s) = (conn(100 + f, 64), conn(900 + f, 63));
        for k in 0..segments {
            let payload: Vec<u8> = (0..10).map(|i| (f as u32 * 7 + k * 10 + i) as u8).collect();
            primary.push(p.data(k * 10, &payload));
            secondary.push(s.data(k * 10, &payload[..3]));
            secondary.push(s.data(k * 10 + 3, &payload[3..]));
        }
    }
    (primary, secondary)
}

fn check_equal_streams(shards: usize) {
    let dir = scratch_dir(&format!("dp-equal-{shards}"));
    let (primary, secondary) = resegmented_flows(40, 5);
    let run = run_dataplane(&dir, &primary, &secondary, shards, &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let parts = run.stats["total"]["released_parts"].as_u64().unwrap_or(0);
    assert_eq!(run.output.len() as u64, primary.len() as u64 + parts, "every primary frame released\n{}", run.stdout);
    assert_eq!(assert_same_per_flow(&run.output, &primary), parts);
    let total = &run.stats["total"];
    assert_eq!(total["accounting"], "ok", "{total}");
    assert_eq!(total["primary_in"], primary.len());
    assert_eq!(total["secondary_in"], secondary.len());
    assert_eq!(total["released"]["match"], primary.len(), "all by match: {total}");
    assert_eq!(run.stats["coordinator"]["checkpoints_completed"], 0, "no checkpoint for equal streams");
    let used = run.stats["shards"].as_array().unwrap().iter().filter(|s| s["primary_in"].as_u64() > Some(0)).count();
    assert_eq!(used, shards, "flows spread over every shard: {}", run.stats["shards"]);
}

#[test]
fn equal_resegmented_streams_one_shard() {
    check_equal_streams(1);
}

#[test]
fn equal_resegmented_streams_two_shards() {
    check_equal_streams(2);
}

#[test]
fn equal_resegmented_streams_four_shards() {
    check_equal_streams(4);
}

#[test]
fn a_payload_divergence_is_caught_and_released_only_by_flush() {
    let dir = scratch_dir("dp-diverge");
    let (primary, mut secondary) = resegmented_flows(4, 3);
    // Flip one byte in the secondary's copy of flow 0's second segment.
    let last = secondary[3].len() - 1;
    secondary[3][last] ^= 0xff;
    let run = run_dataplane(&dir, &primary, &secondary, 2, &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let total = &run.stats["total"];
    assert_eq!(total["accounting"], "ok", "{total}");
    assert!(total["checkpoint_requests"]["tcp-payload-mismatch"].as_u64() >= Some(1), "{total}");
    assert!(run.stats["coordinator"]["checkpoints_completed"].as_u64() >= Some(1));
    assert!(total["released"]["flush"].as_u64() >= Some(1), "{total}");
    // Standalone checkpoints release everything in the end, each flow in order.
    assert_eq!(assert_same_per_flow(&run.output, &primary), run.stats["total"]["released_parts"]);
}

#[test]
fn wrong_options_print_one_line_and_fail() {
    let bin = colo_suite::workspace_bin("colo-dataplane");
    let cases: &[(&[&str], &str)] = &[
        (&["--", "--primary", "a", "--secondary", "a", "--output", "o"], "same port"),
        (&["--", "--primary", "a", "--secondary", "b"], "missing --output"),
        (&["--", "--primary", "a", "--secondary", "b", "--output", "c", "--bogus"], "unexpected argument"),
        (&["--", "--primary", "a", "--secondary", "b", "--output", "c", "--mode", "proxy"], "proxy"),
    ];
    for (args, needle) in cases {
        let out = std::process::Command::new(&bin).args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn an_unknown_port_is_a_clear_error() {
    let dir = scratch_dir("dp-unknown-port");
    let (p, s) = resegmented_flows(1, 1);
    colo_suite::write_pcap(&dir.join("primary.pcap"), &p);
    colo_suite::write_pcap(&dir.join("secondary.pcap"), &s);
    let mut cmd = colo_suite::dataplane_command(&dir, 1);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_nope"]);
    cmd.args(["--checkpoint-mode", "standalone"]);
    let run = colo_suite::collect_run(&dir, cmd);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("unknown port \"net_nope\""), "{}", run.stderr);
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
}

#[test]
fn sigterm_mid_run_leaves_a_complete_pcap_and_every_primary_frame_accounted_for() {
    let dir = scratch_dir("dp-sigterm");
    let (primary, secondary) = resegmented_flows(20, 5);
    colo_suite::write_pcap(&dir.join("primary.pcap"), &primary);
    colo_suite::write_pcap(&dir.join("secondary.pcap"), &secondary);
    let mut cmd = std::process::Command::new(colo_suite::workspace_bin("colo-dataplane"));
    let mut eal = colo_suite::dataplane_eal_args(&dir, 4);
    // Replay both captures in a loop so the process is busy when the signal arrives.
    for a in &mut eal {
        if a.starts_with("--vdev=net_pcap0") || a.starts_with("--vdev=net_pcap1") {
            a.push_str(",infinite_rx=1");
        }
    }
    cmd.args(eal).arg("--").env("RUNTIME_DIRECTORY", &dir).stdin(std::process::Stdio::null());
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2", "--shards", "2"]);
    cmd.args(["--checkpoint-mode", "standalone", "--stats-json"]).arg(dir.join("stats.json"));
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = colo_suite::ChildGuard::new(cmd.spawn().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("stats.json")).unwrap()).unwrap();
    let total = &stats["total"];
    assert_eq!(total["accounting"], "ok", "{total}");
    assert_eq!(total["held_primary_frames"], 0, "shutdown flushes everything: {total}");
    let primary_in = total["primary_in"].as_u64().unwrap();
    assert!(primary_in > primary.len() as u64, "still busy when stopped: {primary_in}");
    let dropped: u64 = total["primary_dropped"].as_object().unwrap().values().filter_map(|v| v.as_u64()).sum();
    // The pcap is complete and readable: every released frame is in it, whole.
    let written = colo_suite::read_pcap(&dir.join("out.pcap"));
    assert_eq!(written.len() as u64, total["released_total"].as_u64().unwrap());
    assert_eq!(primary_in, written.len() as u64 + dropped);
    let known: std::collections::HashSet<&Vec<u8>> = primary.iter().collect();
    assert!(written.iter().all(|f| known.contains(f)), "only primary frames, unmodified");
}

/// A UDP datagram from the guest 10.0.0.2:53 to `client`.
fn udp(client: [u8; 4], sport: u16, payload: &[u8], ip_id: u16, ttl: u8) -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2, 0x08, 0x00];
    let total = 20 + 8 + payload.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&ip_id.to_be_bytes());
    f.extend_from_slice(&[0x40, 0, ttl, 17, 0, 0, 10, 0, 0, 2]);
    f.extend_from_slice(&client);
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_thousand_tcp_and_udp_flows_spread_over_shards_and_meet_their_counterparts() {
    let dir = scratch_dir("dp-1000-flows");
    let (mut primary, mut secondary) = resegmented_flows(700, 2);
    for f in 0..300u16 {
        let client = [10, 2, (f >> 8) as u8, f as u8];
        let payload: Vec<u8> = (0..32).map(|i| (i as u16 + f) as u8).collect();
        primary.push(udp(client, 5000 + f, &payload, f, 64));
        secondary.push(udp(client, 5000 + f, &payload, 1000 + f, 63));
    }
    let run = run_dataplane(&dir, &primary, &secondary, 4, &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let total = &run.stats["total"];
    assert_eq!(total["accounting"], "ok", "{total}");
    assert_eq!(total["primary_in"], primary.len());
    // A secondary stalled by a loaded machine may leave a segment's verified part first.
    assert_eq!(assert_same_per_flow(&run.output, &primary), total["released_parts"], "{total}");
    // Every segment and datagram met its secondary counterpart in the same shard: all
    // matched, and no timeout or mismatch was ever requested.
    assert_eq!(total["released"]["match"], primary.len(), "{total}");
    assert_eq!(total["checkpoint_requests"], serde_json::json!({}), "{total}");
    let shards = run.stats["shards"].as_array().unwrap();
    for (i, s) in shards.iter().enumerate() {
        let p = s["primary_in"].as_u64().unwrap();
        assert!(p > primary.len() as u64 / 10, "shard {i} got {p} of {} primary frames", primary.len());
        // Per shard: everything released by match, every secondary frame consumed by a
        // comparison — the counterparts were there.
        assert_eq!(s["released"]["match"].as_u64().unwrap(), p, "shard {i}: {s}");
        assert_eq!(s["secondary_consumed"], s["secondary_in"], "shard {i}: {s}");
        assert!(s["secondary_in"].as_u64().unwrap() >= p, "shard {i}: {s}");
    }
}

/// With no worker lcore to spare (e.g. `-l 0-1` on a 2-CPU machine and one shard), the main
/// lcore runs the I/O between control rounds; the result is the same.
#[test]
fn without_a_spare_lcore_the_main_lcore_does_the_io() {
    for shards in [1usize, 2] {
        let dir = scratch_dir(&format!("dp-local-io-{shards}"));
        let (primary, secondary) = resegmented_flows(30, 4);
        colo_suite::write_pcap(&dir.join("primary.pcap"), &primary);
        colo_suite::write_pcap(&dir.join("secondary.pcap"), &secondary);
        let mut cmd = std::process::Command::new(colo_suite::workspace_bin("colo-dataplane"));
        cmd.args(colo_suite::dataplane_eal_args(&dir, shards + 1)).arg("--").env("RUNTIME_DIRECTORY", &dir);
        cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2"]);
        cmd.args(["--shards", &shards.to_string(), "--checkpoint-mode", "standalone", "--exit-when-idle-ms", "300"]);
        cmd.arg("--stats-json").arg(dir.join("stats.json"));
        let run = colo_suite::collect_run(&dir, cmd);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert_eq!(assert_same_per_flow(&run.output, &primary), run.stats["total"]["released_parts"]);
        assert_eq!(run.stats["total"]["released"]["match"], primary.len(), "{}", run.stats["total"]);
        assert_eq!(run.stats["total"]["accounting"], "ok");
    }
}

#[test]
fn too_few_lcores_for_the_shards_is_a_clear_error() {
    let dir = scratch_dir("dp-few-lcores");
    let (primary, secondary) = resegmented_flows(1, 1);
    colo_suite::write_pcap(&dir.join("primary.pcap"), &primary);
    colo_suite::write_pcap(&dir.join("secondary.pcap"), &secondary);
    let mut cmd = std::process::Command::new(colo_suite::workspace_bin("colo-dataplane"));
    cmd.args(colo_suite::dataplane_eal_args(&dir, 2)).arg("--").env("RUNTIME_DIRECTORY", &dir);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2", "--shards", "3"]);
    let run = colo_suite::collect_run(&dir, cmd);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--lcores"), "{}", run.stderr);
}

#[test]
fn no_hugepages_without_no_huge_is_a_one_line_hint() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = meminfo.lines().find_map(|l| l.strip_prefix("HugePages_Total:")).map(str::trim);
    if total != Some("0") {
        eprintln!("this machine has hugepages ({total:?}); nothing to check");
        return;
    }
    let out = std::process::Command::new(colo_suite::workspace_bin("colo-dataplane"))
        .args(["--no-pci", "--", "--primary", "a", "--secondary", "b", "--output", "c"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("add --no-huge"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// Guest ports with RSS (net_null accepts it) get the hardware path: both configured alike
/// with the symmetric key, shard *i* polling queue *i* of both, no dispatch lcore.
#[test]
fn ports_with_rss_use_the_hardware_path() {
    let dir = scratch_dir("dp-hw-rss");
    let mut eal: Vec<String> =
        colo_suite::dataplane_eal_args(&dir, 3).into_iter().filter(|a| !a.starts_with("--vdev")).collect();
    eal.extend(["--vdev=net_null0".to_string(), "--vdev=net_null1".to_string(), "--vdev=net_null2".to_string()]);
    let mut cmd = std::process::Command::new(colo_suite::workspace_bin("colo-dataplane"));
    cmd.args(eal).arg("--").env("RUNTIME_DIRECTORY", &dir).stdin(std::process::Stdio::null());
    cmd.args(["--primary", "net_null0", "--secondary", "net_null1", "--output", "net_null2", "--shards", "2"]);
    cmd.args(["--checkpoint-mode", "standalone", "--stats-json"]).arg(dir.join("stats.json"));
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = colo_suite::ChildGuard::new(cmd.spawn().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("hardware RSS"), "{stderr}");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["total"]["accounting"], "ok", "{}", stats["total"]);
    for s in stats["shards"].as_array().unwrap() {
        assert!(s["primary_in"].as_u64() > Some(0) && s["secondary_in"].as_u64() > Some(0), "every queue polled: {s}");
    }
}

/// A silent secondary makes the primary's frames pile up in their mbufs; before the pool
/// runs dry the shard asks for a `resource-pressure` checkpoint, whose flush gives the mbufs
/// back, so nothing is lost at RX (SPEC §6, §8).
#[test]
fn a_small_pool_asks_for_a_checkpoint_instead_of_running_dry() {
    let dir = scratch_dir("dp-pressure");
    let (primary, _) = resegmented_flows(1, 3000);
    let run = run_dataplane(&dir, &primary, &[], 1, &["--mbufs", "1023", "--max-queue-size", "100000"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let total = &run.stats["total"];
    assert_eq!(total["accounting"], "ok", "{total}");
    assert!(total["checkpoint_requests"]["resource-pressure"].as_u64() >= Some(1), "{total}");
    let nombuf: u64 = run.stats["ports"].as_array().unwrap().iter().map(|p| p["rx_nombuf"].as_u64().unwrap()).sum();
    assert_eq!(nombuf, 0, "no frame lost at RX: {}", run.stats["ports"]);
    assert_eq!(run.output.len(), primary.len());
}

/// With two workers to spare, each guest port gets its own RX lcore (SPEC §8).
#[test]
fn one_rx_lcore_per_guest_port_when_lcores_allow() {
    let dir = scratch_dir("dp-two-rx");
    let (primary, secondary) = resegmented_flows(40, 4);
    colo_suite::write_pcap(&dir.join("primary.pcap"), &primary);
    colo_suite::write_pcap(&dir.join("secondary.pcap"), &secondary);
    let mut cmd = std::process::Command::new(colo_suite::workspace_bin("colo-dataplane"));
    cmd.args(colo_suite::dataplane_eal_args(&dir, 5)).arg("--").env("RUNTIME_DIRECTORY", &dir);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2", "--shards", "2"]);
    cmd.args(["--checkpoint-mode", "standalone", "--exit-when-idle-ms", "300"]);
    cmd.arg("--stats-json").arg(dir.join("stats.json"));
    let run = colo_suite::collect_run(&dir, cmd);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("io_lcores=2"), "{}", run.stderr);
    assert_eq!(assert_same_per_flow(&run.output, &primary), run.stats["total"]["released_parts"]);
    assert_eq!(run.stats["total"]["released"]["match"], primary.len(), "{}", run.stats["total"]);
    assert_eq!(run.stats["total"]["accounting"], "ok");
}

/// Control sockets are opened before any port starts: a bad --admin path is a one-line error
/// and no frame has been taken from a device (the output pcap stays empty).
#[test]
fn a_bad_admin_path_fails_before_any_traffic() {
    let dir = scratch_dir("dp-bad-admin");
    let (primary, secondary) = resegmented_flows(3, 2);
    colo_suite::write_pcap(&dir.join("primary.pcap"), &primary);
    colo_suite::write_pcap(&dir.join("secondary.pcap"), &secondary);
    std::fs::write(dir.join("not-a-socket"), b"keep me").unwrap();
    let mut cmd = colo_suite::dataplane_command(&dir, 1);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2"]);
    cmd.args(["--checkpoint-mode", "standalone", "--admin"]).arg(dir.join("not-a-socket"));
    let run = colo_suite::collect_run(&dir, cmd);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("cannot listen on --admin"), "{}", run.stderr);
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    assert!(run.output.is_empty(), "no traffic before the sockets are ready");
    assert_eq!(std::fs::read(dir.join("not-a-socket")).unwrap(), b"keep me");
}

/// Single-lcore mode (EAL `-l 0`: no worker lcore): the shard, which polls both guest ports
/// and transmits on the output itself (one shard in compare mode needs no dispatch), and the
/// control loop share the main lcore, as `dpdk-testpmd` forwards on one core. Equal streams all
/// leave by match; a divergent flow is caught and flushed; the shutdown drains TX.
#[test]
fn everything_on_one_lcore_compares_releases_and_shuts_down() {
    let dir = scratch_dir("dp-one-lcore");
    let (primary, mut secondary) = resegmented_flows(20, 4);
    let last = secondary.len() - 1;
    let at = secondary[last].len() - 1;
    secondary[last][at] ^= 0x20;
    colo_suite::write_pcap(&dir.join("primary.pcap"), &primary);
    colo_suite::write_pcap(&dir.join("secondary.pcap"), &secondary);
    let mut cmd = std::process::Command::new(colo_suite::workspace_bin("colo-dataplane"));
    cmd.args(colo_suite::dataplane_eal_args(&dir, 1))
        .arg("--")
        .env("RUNTIME_DIRECTORY", &dir)
        .stdin(std::process::Stdio::null())
        .args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2"])
        .args(["--checkpoint-mode", "standalone", "--exit-when-idle-ms", "300", "--stats-json"])
        .arg(dir.join("stats.json"));
    let run = colo_suite::collect_run(&dir, cmd);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(assert_same_per_flow(&run.output, &primary), run.stats["total"]["released_parts"]);
    let total = &run.stats["total"];
    assert_eq!(total["accounting"], "ok", "{total}");
    assert_eq!(total["checkpoint_requests"]["tcp-payload-mismatch"], 1, "{total}");
    assert!(total["released"]["flush"].as_u64() >= Some(1), "{total}");
    // The one shard polls the guest ports and transmits itself: no I/O work, no rings.
    let roles: Vec<&str> =
        run.stats["lcores"].as_array().into_iter().flatten().filter_map(|l| l["role"].as_str()).collect();
    assert_eq!(roles, ["shard 0"], "one load meter, the shard's: {}", run.stats["lcores"]);
}

/// `--idle-sleep-us` holds in single-lcore mode when the shard polls its ports itself (one
/// shard in compare mode): once the inputs are exhausted, the main lcore sleeps between polls
/// instead of spinning, so it uses a small share of a CPU (spinning or yielding would use all of
/// it).
#[test]
fn idle_sleep_lets_the_single_lcore_shard_sleep() {
    let dir = scratch_dir("dp-idle-sleep");
    let (primary, secondary) = resegmented_flows(2, 2);
    colo_suite::write_pcap(&dir.join("primary.pcap"), &primary);
    colo_suite::write_pcap(&dir.join("secondary.pcap"), &secondary);
    let mut child = std::process::Command::new(colo_suite::workspace_bin("colo-dataplane"))
        .args(colo_suite::dataplane_eal_args(&dir, 1))
        .arg("--")
        .env("RUNTIME_DIRECTORY", &dir)
        .args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2"])
        .args(["--checkpoint-mode", "standalone", "--idle-sleep-us", "2000", "--exit-when-idle-ms", "6000"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start colo-dataplane");
    // The process's CPU time (user + system, in clock ticks of 1/100 s) from /proc.
    let ticks = |pid: u32| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    // Start-up and the two short captures are long over after 3 s; then 1.5 s of idling.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let before = ticks(child.id()).expect("read the dataplane's CPU time");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let after = ticks(child.id()).expect("read the dataplane's CPU time");
    let status = child.wait().expect("wait for colo-dataplane");
    assert!(status.success(), "colo-dataplane failed: {status}");
    let used = after - before;
    assert!(used < 45, "{used} ticks of CPU in 150 while idle with --idle-sleep-us 2000: it spins");
}

/// A TCP frame's payload (untagged IPv4).
fn tcp_payload(f: &[u8]) -> &[u8] {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let data = 14 + ihl + usize::from(f[14 + ihl + 12] >> 4) * 4;
    &f[data..14 + total]
}

/// Jumbo frames, longer than one mbuf (net_pcap hands them over as chains, as vhost-user does a
/// guest's TSO frames): a primary sending 8,000-byte segments and a secondary sending the same
/// bytes in 1,448-byte ones match; the released frames are cut to the output port's MTU
/// (1,500) with valid checksums and carry the primary's stream. One changed byte in the
/// secondary's copy is still caught.
#[test]
fn jumbo_frames_are_compared_whole_and_leave_cut_to_the_output_mtu() {
    let conn = |ip_id| Conn { template: TcpFrame { ip_id, ..TcpFrame::default() }, ..Conn::default() };
    let (p, s) = (conn(100), conn(900));
    let stream: Vec<u8> = (0..40_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let primary: Vec<Vec<u8>> = stream.chunks(8000).enumerate().map(|(k, c)| p.data(k as u32 * 8000, c)).collect();
    let secondary: Vec<Vec<u8>> = stream.chunks(1448).enumerate().map(|(k, c)| s.data(k as u32 * 1448, c)).collect();
    for flip in [None, Some(20_001usize)] {
        let mut secondary = secondary.clone();
        if let Some(at) = flip {
            let (frame, off) = (at / 1448, at % 1448);
            let header = secondary[frame].len() - 1448; // a full segment: headers, then payload
            secondary[frame][header + off] ^= 0x01;
        }
        let dir = scratch_dir(&format!("dp-jumbo-{}", flip.is_some()));
        let run = run_dataplane(&dir, &primary, &secondary, 1, &[]);
        assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
        let total = &run.stats["total"];
        assert_eq!(total["accounting"], "ok", "{total}");
        assert_eq!(run.stats["egress"]["split"], primary.len(), "{}", run.stats["egress"]);
        let mut joined = Vec::new();
        for f in &run.output {
            assert!(f.len() <= 1514, "a {}-byte frame left a 1500-byte MTU port", f.len());
            assert!(colo_core::fixtures::tcp_checksum_valid(f));
            joined.extend_from_slice(tcp_payload(f));
        }
        assert_eq!(joined, stream, "the primary's stream, in order, once");
        match flip {
            None => {
                assert_eq!(total["checkpoint_requests"], serde_json::json!({}), "{total}");
                assert_eq!(total["released"]["match"], primary.len(), "{total}");
            }
            Some(_) => {
                assert_eq!(total["checkpoint_requests"]["tcp-payload-mismatch"], 1, "{total}");
                assert!(total["released"]["flush"].as_u64() >= Some(1), "{total}");
            }
        }
    }
}

/// A secondary that sent the first 5,000 bytes of the primary's 8,000-byte segment and then
/// nothing more (as one waiting for the client to acknowledge what it sent): those verified
/// bytes leave as a part, cut to the output MTU, ahead of the segment; the rest, never
/// verified, leaves only by the shutdown flush. The client's stream is whole and once.
#[test]
fn a_stalled_secondary_gets_the_verified_part_of_a_jumbo_segment_out() {
    let conn = |ip_id| Conn { template: TcpFrame { ip_id, ..TcpFrame::default() }, ..Conn::default() };
    let (p, s) = (conn(100), conn(900));
    let stream: Vec<u8> = (0..8000u32).map(|i| (i * 5 + i / 253) as u8).collect();
    let primary = vec![p.data(0, &stream)];
    let secondary: Vec<Vec<u8>> =
        stream[..5000].chunks(1448).enumerate().map(|(k, c)| s.data(k as u32 * 1448, c)).collect();
    let dir = scratch_dir("dp-part");
    let run = run_dataplane(&dir, &primary, &secondary, 1, &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let total = &run.stats["total"];
    assert_eq!(total["accounting"], "ok", "{total}");
    assert_eq!(total["released_parts"], 1, "{total}");
    assert_eq!(total["released"]["flush"], 1, "the unverified rest leaves by flush only: {total}");
    let mut joined = Vec::new();
    for f in &run.output {
        assert!(f.len() <= 1514, "a {}-byte frame left a 1500-byte MTU port", f.len());
        assert!(colo_core::fixtures::tcp_checksum_valid(f));
        let seq = u32::from_be_bytes(f[38..42].try_into().unwrap());
        assert_eq!(seq, p.seq(joined.len() as u32), "in stream order");
        joined.extend_from_slice(tcp_payload(f));
    }
    assert_eq!(joined, stream, "the primary's stream, in order, once");
}

/// A VLAN-tagged UDP datagram of the full MTU (a 1,518-byte frame) is not too long for a
/// 1,500-byte MTU port: the MTU bounds the IP packet, not the tag. It leaves as it came.
#[test]
fn a_tagged_frame_of_the_full_mtu_leaves_whole() {
    let d =
        colo_core::fixtures::IpFrame { vlans: vec![5], ..colo_core::fixtures::IpFrame::udp(53, 40000, &[0x5a; 1472]) };
    let frame = d.build();
    assert_eq!(frame.len(), 1518);
    let dir = scratch_dir("dp-tagged-mtu");
    let run = run_dataplane(&dir, std::slice::from_ref(&frame), std::slice::from_ref(&frame), 1, &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.output, vec![frame]);
    assert_eq!(run.stats["egress"]["too_long_dropped"], 0, "{}", run.stats["egress"]);
    assert_eq!(run.stats["total"]["released"]["match"], 1, "{}", run.stats["total"]);
}

/// 3,000 one-datagram flows of 64-byte frames; the secondary sends them in the opposite order,
/// so each side's frames wait for the other's until the two orders cross and the shard holds
/// about 1,500 frames of each side (more than an mbuf cache, so held mbufs come back to the
/// pool and out of it again). `diverge` changes one payload byte of one flow's secondary copy
/// (a flow whose copies meet while thousands are held).
fn crossing_datagrams(diverge: Option<u16>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let flows = 3000u16;
    let frame = |f: u16, ip_id: u16, ttl: u8, flip: u8| {
        let client = [10, 3, (f >> 8) as u8, f as u8];
        let mut payload: Vec<u8> = (0..18).map(|i| (i as u16 ^ f) as u8).collect();
        payload[7] ^= flip;
        let frame = udp(client, 7000 + f, &payload, ip_id, ttl);
        assert_eq!(frame.len(), 60);
        frame
    };
    let primary = (0..flows).map(|f| frame(f, f, 64, 0)).collect();
    let secondary = (0..flows).rev().map(|f| frame(f, !f, 63, u8::from(diverge == Some(f)))).collect();
    (primary, secondary)
}

/// Options for [`crossing_datagrams`]: up to 3,000 flows are young and one-sided at the
/// crossing (the default pool's budget admits an eighth of its 23,552 mbufs), and the crossing
/// must not be mistaken for a lost counterpart on a slow machine.
const CROSSING_OPTIONS: &[&str] = &["--mbufs", "40000", "--new-flows-per-sec", "0", "--compare-timeout-ms", "20000"];

/// Short frames held by the thousand leave byte for byte, in order, all by match, on the
/// single-lcore path (the shard polls its ports) and on the dispatch rings (two shards).
#[test]
fn short_frames_held_by_the_thousand_leave_unchanged() {
    for shards in [1usize, 2] {
        let dir = scratch_dir(&format!("dp-crossing-{shards}"));
        let (primary, secondary) = crossing_datagrams(None);
        colo_suite::write_pcap(&dir.join("primary.pcap"), &primary);
        colo_suite::write_pcap(&dir.join("secondary.pcap"), &secondary);
        // One lcore: the shard polls both ports itself; three: an I/O lcore and two shards.
        let lcores = if shards == 1 { 1 } else { shards + 1 };
        let mut cmd = std::process::Command::new(colo_suite::workspace_bin("colo-dataplane"));
        cmd.args(colo_suite::dataplane_eal_args(&dir, lcores))
            .arg("--")
            .env("RUNTIME_DIRECTORY", &dir)
            .stdin(std::process::Stdio::null())
            .args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2"])
            .args(["--shards", &shards.to_string(), "--checkpoint-mode", "standalone"])
            .args(CROSSING_OPTIONS)
            .args(["--exit-when-idle-ms", "300", "--stats-json"])
            .arg(dir.join("stats.json"));
        let run = colo_suite::collect_run(&dir, cmd);
        assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
        let total = &run.stats["total"];
        assert_eq!(total["accounting"], "ok", "{total}");
        assert_eq!(total["checkpoint_requests"], serde_json::json!({}), "{total}");
        assert_eq!(total["released"]["match"], primary.len(), "{total}");
        assert_eq!(assert_same_per_flow(&run.output, &primary), run.stats["total"]["released_parts"]);
        // Every mbuf is back in the pool once the run is over.
        assert_eq!(run.stats["mbufs"]["in_use"], 0, "{}", run.stats["mbufs"]);
        assert_eq!(run.stats["mbufs"]["size"], 40_000, "{}", run.stats["mbufs"]);
    }
}

/// A byte changed in a short frame is caught when its copies meet while thousands are held:
/// the flow's datagram is never released by match, a `datagram-mismatch` is requested, and
/// only primary frames, unmodified, leave.
#[test]
fn a_changed_byte_among_thousands_held_is_caught() {
    let dir = scratch_dir("dp-crossing-diverge");
    // Flow 1,000: the primary's copy arrives a third of the way in (about 1,000 frames held),
    // the secondary's two thirds in.
    let (primary, secondary) = crossing_datagrams(Some(1000));
    let run = run_dataplane(&dir, &primary, &secondary, 1, CROSSING_OPTIONS);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let total = &run.stats["total"];
    assert_eq!(total["accounting"], "ok", "{total}");
    assert_eq!(total["checkpoint_requests"]["datagram-mismatch"], 1, "{total}");
    assert!(total["released"]["match"].as_u64().is_some_and(|m| m < primary.len() as u64), "{total}");
    let known: std::collections::HashSet<&Vec<u8>> = primary.iter().collect();
    assert!(run.output.iter().all(|f| known.contains(f)), "only primary frames, unmodified");
}

/// With the EAL on hugepages, each shard's flow table is reserved on the hugepage pool (the
/// stats say where it went); under `--no-huge` nothing is.
#[test]
fn flow_tables_go_on_hugepages_when_the_eal_does() {
    colo_suite::hugepages(512);
    let (primary, secondary) = resegmented_flows(20, 3);
    for on_hugepages in [true, false] {
        let dir = scratch_dir(&format!("dp-tables-{on_hugepages}"));
        let shards = 2;
        let mut eal = colo_suite::dataplane_eal_args(&dir, shards + 2);
        if on_hugepages {
            eal.retain(|a| a != "--no-huge" && a != "--no-shconf");
            eal.extend(["--in-memory".into(), "--single-file-segments".into()]);
            if let Some(m) = eal.iter().position(|a| a == "-m") {
                eal[m + 1] = "256".into();
            }
        }
        let run = colo_suite::run_dataplane_with(&dir, &primary, &secondary, shards, eal, &[]);
        assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
        assert_eq!(run.stats["total"]["accounting"], "ok");
        assert_eq!(run.stats["total"]["released"]["match"], primary.len());
        let tables = &run.stats["tables"];
        assert_eq!(tables["hugepages_allowed"], on_hugepages, "{tables}");
        let peak = tables["peak_hugepage_bytes"].as_u64().unwrap_or(0);
        if on_hugepages {
            // Each shard's table: 65,536 entries of more than a cache line each.
            assert!(peak >= shards as u64 * 65_536 * 64, "{tables}");
            assert_eq!(tables["pool_refused"], 0, "{tables}");
        } else {
            assert_eq!(peak, 0, "{tables}");
        }
    }
}
