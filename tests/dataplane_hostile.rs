//! `colo-dataplane` under careless or hostile use of its control plane (SPEC §11): values out
//! of range on the admin socket, a second instance started with the same socket paths, an
//! unusable `--stats-json` path, a broken configuration file; admin bursts, a silent secondary,
//! fragment and SYN floods. Each must be a clear refusal or a bounded, counted response, never
//! a panic, a takeover, a lost primary frame or an error found only at exit.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use colo_core::fixtures::Conn;
use colo_suite::{dataplane_command, scratch_dir, workspace_bin, write_pcap, ChildGuard};

fn colo_ctl(admin: &Path, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(workspace_bin("colo-ctl")).arg("--socket").arg(admin).args(args).output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects to a frame link on `port`, waiting for it to listen: the dataplane binds its admin
/// socket before the frame link, so the admin socket appearing does not mean the port is open.
fn connect_frame(port: u16) -> std::net::TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("the frame link on port {port}: {e}"),
        }
    }
}

/// A dataplane on endless pcap input (identical sides), admin socket `dir/admin.sock`.
fn start(dir: &Path) -> ChildGuard {
    let c = Conn::default();
    let frames: Vec<Vec<u8>> = (0..50u32).map(|k| c.data(k * 10, &[k as u8; 10])).collect();
    write_pcap(&dir.join("primary.pcap"), &frames);
    write_pcap(&dir.join("secondary.pcap"), &frames);
    let mut cmd = dataplane_command(dir, 1);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2"]);
    cmd.args(["--checkpoint-mode", "standalone", "--admin"]).arg(dir.join("admin.sock"));
    cmd.arg("--stats-json").arg(dir.join("stats.json"));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = ChildGuard::new(cmd.spawn().unwrap());
    wait_for(&dir.join("admin.sock"));
    child
}

#[test]
fn out_of_range_settings_are_refused_and_the_dataplane_keeps_running() {
    let dir = scratch_dir("hostile-set");
    let dp = start(&dir);
    let admin = dir.join("admin.sock");
    for (kv, what) in [
        ("frame_timeout_ms=18446744073709551615", "between 100 and 3600000"),
        ("frame_timeout_ms=1", "between 100 and 3600000"),
        ("compare_timeout_ms=0", "between 1 and 3600000"),
        ("compare_timeout_ms=99999999999999", "between 1 and 3600000"),
        ("max_queue_size=99999999999", "between 1 and 16777216"),
        ("max_queue_size=-3", "whole number"),
        ("no_such_key=1", "unknown setting"),
    ] {
        let (_, v, err) = colo_ctl(&admin, &["set", kv]);
        let said = format!("{v} {err}");
        assert!(said.contains(what), "set {kv}: {said}");
    }
    // In range: accepted.
    let (ok, v, err) = colo_ctl(&admin, &["set", "frame_timeout_ms=250"]);
    assert!(ok && v["ok"] == true, "{v} {err}");
    // Still alive and answering, then a clean exit.
    let (ok, v, _) = colo_ctl(&admin, &["stats", "--json"]);
    assert!(ok && v["ok"] == true, "{v}");
    // Per-lcore load (busy share, cycles per frame): the shard compared the 100 frames.
    let lcores = v["lcores"].as_array().cloned().unwrap_or_default();
    let shard = lcores.iter().find(|l| l["role"] == "shard 0").unwrap_or_else(|| panic!("{}", v["lcores"]));
    assert!(shard["frames"].as_u64() >= Some(100), "{shard}");
    assert!(shard["busy_percent"].as_f64().is_some_and(|p| (0.0..=100.0).contains(&p)), "{shard}");
    assert!(shard["cycles_per_frame"].as_u64() > Some(0), "{shard}");
    // The packet pool: the LIFO driver, its size, what is taken from it.
    let mbufs = &v["mbufs"];
    assert_eq!(mbufs["driver"], "stack", "{mbufs}");
    let size = mbufs["size"].as_u64().unwrap_or_else(|| panic!("no pool size: {mbufs}"));
    assert!(size > 0 && mbufs["in_use"].as_u64().is_some_and(|n| n <= size), "{mbufs}");
    colo_ctl(&admin, &["shutdown"]);
    let out = dp.wait_with_output();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_second_instance_with_the_same_socket_is_refused_and_the_first_keeps_it() {
    let dir = scratch_dir("hostile-second");
    let first = start(&dir);
    let other = scratch_dir("hostile-second-b");
    let c = Conn::default();
    write_pcap(&other.join("primary.pcap"), &[c.data(0, b"x")]);
    write_pcap(&other.join("secondary.pcap"), &[c.data(0, b"x")]);
    let mut cmd = dataplane_command(&other, 1);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2"]);
    cmd.args(["--checkpoint-mode", "standalone", "--admin"]).arg(dir.join("admin.sock"));
    let run = colo_suite::collect_run(&other, cmd);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("in use by a running process"), "{}", run.stderr);
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    // The first instance still owns and answers its socket.
    let (ok, v, _) = colo_ctl(&dir.join("admin.sock"), &["stats", "--json"]);
    assert!(ok && v["ok"] == true, "{v}");
    colo_ctl(&dir.join("admin.sock"), &["shutdown"]);
    assert_eq!(first.wait_with_output().status.code(), Some(0));
}

#[test]
fn an_unusable_stats_json_path_and_a_broken_config_fail_at_once_in_one_line() {
    let dir = scratch_dir("hostile-paths");
    let dp = workspace_bin("colo-dataplane");
    let t = Instant::now();
    let out = Command::new(&dp)
        .args(["--no-huge", "--", "--primary", "p", "--secondary", "s", "--output", "o", "--stats-json"])
        .arg(dir.join("no-such-dir/stats.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot write --stats-json"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "refused before any run");

    std::fs::write(dir.join("bad.toml"), "shards = 2\nmode = \"proxy\"\nprimary = [unclosed\n").unwrap();
    let out = Command::new(&dp).args(["--no-huge", "--", "--config"]).arg(dir.join("bad.toml")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad config file") && err.contains("line 3"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

fn frame_msg(text: &str) -> Vec<u8> {
    let mut v = (text.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(text.as_bytes());
    v
}

fn read_frame_msg(s: &mut std::net::TcpStream) -> Option<String> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

#[test]
fn a_second_tcp_peer_cannot_take_the_frame_link_over_and_release_held_output() {
    use std::io::Write;
    let dir = scratch_dir("hostile-takeover");
    let c = Conn::default();
    write_pcap(&dir.join("primary.pcap"), &[c.data(0, b"abcdef")]);
    write_pcap(&dir.join("secondary.pcap"), &[c.data(0, b"abXdef")]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = dataplane_command(&dir, 1);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2"]);
    cmd.args(["--frame", &format!("tcp:127.0.0.1:{port}"), "--admin"]).arg(dir.join("admin.sock"));
    cmd.arg("--stats-json").arg(dir.join("stats.json"));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let dp = ChildGuard::new(cmd.spawn().unwrap());
    wait_for(&dir.join("admin.sock"));
    let mut frame = connect_frame(port);
    frame.write_all(&frame_msg("COLO_USERSPACE_PROXY_INIT")).unwrap();
    assert_eq!(read_frame_msg(&mut frame).as_deref(), Some("COLO_COMPARE_GET_XEN_INIT"));
    assert_eq!(read_frame_msg(&mut frame).as_deref(), Some("DO_CHECKPOINT"), "the divergence asks");
    // Another local user connects and claims the checkpoint is done.
    let mut intruder = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = intruder.write_all(&frame_msg("COLO_USERSPACE_PROXY_INIT"));
    let _ = intruder.write_all(&frame_msg("COLO_CHECKPOINT"));
    std::thread::sleep(Duration::from_millis(500));
    let (_, v, _) = colo_ctl(&dir.join("admin.sock"), &["stats", "--json"]);
    assert_eq!(v["coordinator"]["checkpoints_completed"], 0, "{v}");
    assert_eq!(v["total"]["held_primary_frames"], 1, "the unverified frame is still held: {}", v["total"]);
    // The real frame completes it.
    frame.write_all(&frame_msg("COLO_CHECKPOINT")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v, _) = colo_ctl(&dir.join("admin.sock"), &["stats", "--json"]);
        if v["coordinator"]["checkpoints_completed"] == 1 {
            assert_eq!(v["total"]["held_primary_frames"], 0, "{}", v["total"]);
            break;
        }
        assert!(Instant::now() < deadline, "the real frame's checkpoint never completed: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    colo_ctl(&dir.join("admin.sock"), &["shutdown"]);
    assert_eq!(dp.wait_with_output().status.code(), Some(0));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn admin_floods_and_idle_admin_clients_neither_grow_memory_nor_lock_out_the_frame_or_colo_ctl() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let dir = scratch_dir("hostile-admin");
    let c = Conn::default();
    let frames: Vec<Vec<u8>> = (0..50u32).map(|k| c.data(k * 10, &[k as u8; 10])).collect();
    write_pcap(&dir.join("primary.pcap"), &frames);
    write_pcap(&dir.join("secondary.pcap"), &frames);
    let mut cmd = dataplane_command(&dir, 1);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2"]);
    cmd.arg("--frame").arg(format!("unix:{}", dir.join("frame.sock").display()));
    cmd.arg("--admin").arg(dir.join("admin.sock"));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let dp = ChildGuard::new(cmd.spawn().unwrap());
    let admin = dir.join("admin.sock");
    wait_for(&admin);
    let (ok, _, _) = colo_ctl(&admin, &["stats", "--json"]);
    assert!(ok);
    let rss_before = rss_kib(dp.id());

    // 16 clients each write 4,352 stats requests in one burst and never read an answer.
    let burst: String = "{\"cmd\":\"stats\"}\n".repeat(4352);
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let mut s = UnixStream::connect(&admin).unwrap();
            let burst = burst.clone();
            std::thread::spawn(move || {
                let _ = s.write_all(burst.as_bytes());
                std::thread::sleep(Duration::from_secs(3));
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile the COLO frame connects: its handshake is answered at once.
    let mut frame = UnixStream::connect(dir.join("frame.sock")).unwrap();
    let t = Instant::now();
    frame.write_all(&frame_msg("COLO_USERSPACE_PROXY_INIT")).unwrap();
    let mut len = [0u8; 4];
    frame.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Read::read_exact(&mut frame, &mut len).unwrap();
    let answered = t.elapsed();
    assert!(answered < Duration::from_millis(100), "frame handshake took {answered:?} behind the admin flood");
    std::thread::sleep(Duration::from_millis(700));
    let rss_during = rss_kib(dp.id());
    eprintln!(
        "frame handshake answered in {answered:?}; RSS {rss_before} KiB before, {rss_during} KiB during the flood"
    );
    assert!(
        rss_during < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB under the admin flood"
    );
    for w in writers {
        let _ = w.join();
    }
    // 16 connections that say nothing: colo-ctl still gets in (a quiet client makes room).
    let idle: Vec<UnixStream> = (0..16).map(|_| UnixStream::connect(&admin).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(1200));
    let (ok, v, err) = colo_ctl(&admin, &["stats", "--json"]);
    assert!(ok && v["ok"] == true, "colo-ctl locked out: {v} {err}");
    drop(idle);
    colo_ctl(&admin, &["shutdown"]);
    let out = dp.wait_with_output();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_silent_secondary_and_a_fragment_flood_with_a_slow_frame_drop_no_primary_frame_while_the_pool_has_room() {
    use colo_core::fixtures::IpFrame;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let dir = scratch_dir("hostile-budget");
    let c = Conn::default();
    // One TCP flow far past max_queue_size (1024) and a flood of datagrams whose first
    // fragment never gets its rest; the secondary says nothing.
    let mut primary: Vec<Vec<u8>> = (0..20_000u32).map(|k| c.data(k * 100, &[k as u8; 100])).collect();
    for id in 0..30_000u32 {
        primary.push(IpFrame { ip_id: id, ..IpFrame::udp(53, 4000, &[7u8; 200]) }.fragment(0, 96));
    }
    let total = primary.len() as u64;
    write_pcap(&dir.join("primary.pcap"), &primary);
    write_pcap(&dir.join("secondary.pcap"), &[]);
    let mut cmd = dataplane_command(&dir, 1);
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2"]);
    cmd.arg("--frame").arg(format!("unix:{}", dir.join("frame.sock").display()));
    cmd.arg("--admin").arg(dir.join("admin.sock")).arg("--stats-json").arg(dir.join("stats.json"));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let dp = ChildGuard::new(cmd.spawn().unwrap());
    wait_for(&dir.join("frame.sock"));
    // A slow COLO frame: every DO_CHECKPOINT is completed 100 ms later.
    let mut frame = UnixStream::connect(dir.join("frame.sock")).unwrap();
    frame.write_all(&frame_msg("COLO_USERSPACE_PROXY_INIT")).unwrap();
    let frame_thread = std::thread::spawn(move || {
        use std::io::Read;
        frame.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        loop {
            let mut len = [0u8; 4];
            if frame.read_exact(&mut len).is_err() {
                return;
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            if frame.read_exact(&mut body).is_err() {
                return;
            }
            if body == b"DO_CHECKPOINT" {
                std::thread::sleep(Duration::from_millis(100));
                if frame.write_all(&frame_msg("COLO_CHECKPOINT")).is_err() {
                    return;
                }
            }
        }
    });
    let admin = dir.join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v, _) = colo_ctl(&admin, &["stats", "--json"]);
        let released: u64 =
            v["total"]["released"].as_object().map_or(0, |m| m.values().filter_map(|x| x.as_u64()).sum());
        if released == total {
            break;
        }
        assert!(Instant::now() < deadline, "released {released} of {total}: {}", v["total"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    colo_ctl(&admin, &["shutdown"]);
    let out = dp.wait_with_output();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = frame_thread.join();
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("stats.json")).unwrap()).unwrap();
    let t = &stats["total"];
    assert_eq!(t["accounting"], "ok", "{t}");
    let dropped: u64 = t["primary_dropped"].as_object().map_or(0, |m| m.values().filter_map(|x| x.as_u64()).sum());
    assert_eq!(dropped, 0, "{t}");
    assert!(stats["coordinator"]["checkpoints_completed"].as_u64() >= Some(1), "{}", stats["coordinator"]);
}

/// A SYN flood both guests answer (B) and one only the primary answers (C), interleaved with
/// established UDP flows, through the real binary: established frames all leave, in order,
/// matched; the flood is held to the new-flow budget (B) or to the young one-sided flows'
/// share of memory (C), its refused frames dropped and counted on both sides alike, no
/// checkpoint requested. (Throughput under a flood is measured by `benches/flood-bench`.)
#[test]
fn a_syn_flood_is_held_to_the_new_flow_budget_while_established_flows_all_match() {
    use colo_core::fixtures::{flags, IpFrame, TcpFrame};
    use colo_suite::{assert_same_per_flow, run_dataplane};
    let established: Vec<Vec<u8>> = (0..20_000u32)
        .map(|i| {
            let dst = std::net::Ipv4Addr::new(10, 1, 0, (i % 100) as u8);
            IpFrame { dst: dst.into(), ..IpFrame::udp(53, 5000, &i.to_be_bytes()) }.build()
        })
        .collect();
    let syn_ack = |i: u32, isn: u32| {
        let dst = std::net::Ipv4Addr::new(10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        TcpFrame { dst, dport: 1024, seq: isn, ack: i + 1, flags: flags::SYN | flags::ACK, ..TcpFrame::default() }
            .build()
    };
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 2, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.resize(60, 0);
        f
    };
    for primary_only in [false, true] {
        let (mut p, mut s) = (Vec::new(), Vec::new());
        for (i, e) in established.iter().enumerate() {
            p.push(e.clone());
            s.push(e.clone());
            if i < 1000 {
                continue; // the established flows are established before the flood begins
            }
            p.push(syn_ack(i as u32, 7 * i as u32));
            s.push(if primary_only { arp.clone() } else { syn_ack(i as u32, 11 * i as u32 + 3) });
        }
        let dir = scratch_dir(&format!("hostile-syn-flood-{primary_only}"));
        // B: a rate budget of one flow a second after a burst of 100 (so what is refused does
        // not depend on how fast this machine runs the test); C: no rate budget, only the
        // one-sided flows' share of memory.
        // A compare timeout longer than any run: the one-sided flows C admits hold their
        // SYN-ACKs until the end, however slowly a busy machine runs this.
        let budget: &[&str] = if primary_only {
            &["--new-flows-per-sec", "0", "--compare-timeout-ms", "60000"]
        } else {
            &["--new-flows-per-sec", "1", "--new-flow-burst", "100", "--compare-timeout-ms", "60000"]
        };
        let run = run_dataplane(&dir, &p, &s, 1, budget);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let t = &run.stats["total"];
        assert_eq!(t["accounting"], "ok", "{t}");
        // Every established frame left, each flow in order.
        let out_established: Vec<Vec<u8>> =
            run.output.iter().filter(|f| colo_suite::flow_of(f).contains("proto: 17")).cloned().collect();
        assert_same_per_flow(&out_established, &established);
        let refused = t["primary_dropped"]["new-flow-budget"].as_u64().unwrap_or(0);
        assert!(refused >= 15_000, "most of the 19,000 flood flows refused: {t}");
        if !primary_only {
            // Both guests' copies of a refused flow share its fate (a token that accrued
            // between the two copies may admit a few late ones: one a second).
            let secondary = t["secondary_dropped"]["new-flow-budget"].as_u64().unwrap_or(0);
            assert!(secondary + 20 >= refused && secondary <= refused + 20, "{t}");
        }
        let requests: u64 =
            t["checkpoint_requests"].as_object().map_or(0, |m| m.values().filter_map(|x| x.as_u64()).sum());
        assert_eq!(requests, 0, "{t}");
        // Nothing else was lost: what was not refused left.
        assert_eq!(run.output.len() as u64 + refused, p.len() as u64, "{t}");
    }
}
