//! `colo-replay` on generated captures: each scenario's verdict (SPEC §5.1, §6), the report
//! shape (SPEC §9.2), pcap round trips (µs and ns), sharding, latency, errors, `--explain`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use colo_replay::synth::{self, Pair};
use colo_replay::{read_pcap, replay, write_pcap, Options};
use pcap_file::TsResolution;

fn check(pair: &Pair, opts: &Options) {
    let out = replay(&pair.primary, &pair.secondary, opts);
    let r = &out.report;
    let reasons: Vec<&str> = r.checkpoints.iter().map(|c| c.reason).collect();
    assert_eq!(reasons, pair.expect_checkpoints, "{}: {:#?}", pair.name, r.checkpoints);
    let n = pair.primary.frames.len();
    let mut indices: Vec<usize> = r.released.iter().map(|x| x.index).collect();
    if pair.expect_all_matched {
        assert_eq!(indices, (0..n).collect::<Vec<_>>(), "{}: released in primary order", pair.name);
        assert!(r.released.iter().all(|x| x.via == "match"), "{}: {:?}", pair.name, r.released);
    } else {
        indices.sort_unstable();
        assert_eq!(indices, (0..n).collect::<Vec<_>>(), "{}: everything released once", pair.name);
        assert!(r.released.iter().any(|x| x.via == "flush"), "{}", pair.name);
    }
    assert_eq!(r.held_at_end, 0, "{}", pair.name);
    assert!(r.primary_dropped.is_empty() && r.secondary_dropped.is_empty(), "{}", pair.name);
    out.counters.check_accounting().expect("accounting");
    for c in &r.checkpoints {
        assert_eq!(c.flow, "tcp 10.0.0.2:80 > 10.0.0.1:40000");
    }
}

#[test]
fn every_scenario_gives_the_spec_verdict() {
    for pair in synth::all() {
        for shards in [1, 3] {
            check(&pair, &Options { shards, ..Options::default() });
        }
    }
}

#[test]
fn payload_divergence_holds_the_segment_until_the_flush() {
    let pair = synth::payload_divergence();
    let out = replay(&pair.primary, &pair.secondary, &Options::default());
    let r = &out.report;
    // Frame 2 holds byte 50 (segments: 0..40 in frame 1, 40.. in frame 2).
    let f2 = r.released.iter().find(|x| x.index == 2).expect("released");
    assert_eq!(f2.via, "flush");
    assert_eq!(r.released.iter().find(|x| x.index == 1).map(|x| x.via), Some("match"));
    let c = &r.checkpoints[0];
    assert_eq!(c.t_us, 2_300, "the secondary's segment arrives at 2.3 ms");
    assert!(c.detail.contains("stream +50"), "{}", c.detail);
}

#[test]
fn timeouts_fire_at_the_exact_virtual_time() {
    let pair = synth::secondary_silent();
    let out = replay(&pair.primary, &pair.secondary, &Options::default());
    // The first data segment arrived at 1 ms; compare_timeout is 3000 ms.
    assert_eq!(out.report.checkpoints[0].t_us, 3_001_000);
    let pair = synth::ack_lag();
    let out = replay(
        &pair.primary,
        &pair.secondary,
        &Options { compare_timeout: Duration::from_millis(100), ..Options::default() },
    );
    assert_eq!(out.report.checkpoints[0].reason, "ack-lag-timeout");
    assert_eq!(out.report.checkpoints[0].t_us, 102_000);
}

#[test]
fn checkpoint_latency_delays_the_flush() {
    let pair = synth::payload_divergence();
    let out = replay(
        &pair.primary,
        &pair.secondary,
        &Options { checkpoint_latency: Duration::from_millis(50), ..Options::default() },
    );
    let flushed: Vec<_> = out.report.released.iter().filter(|x| x.via == "flush").collect();
    assert!(!flushed.is_empty());
    assert_eq!(out.checkpoints_completed, 1);
    // The flushed frames carry the completion's virtual time in the output capture.
    let last = out.output.frames.last().expect("output");
    assert_eq!(last.ts, synth::T0 + Duration::from_micros(52_300));
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("colo-replay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir.join(name)
}

#[test]
fn pcap_round_trip_micro_and_nano() {
    let pair = synth::resegmented_3_7_vs_10();
    for (res, tag) in [(TsResolution::MicroSecond, "us"), (TsResolution::NanoSecond, "ns")] {
        let path = tmp(&format!("rt-{tag}.pcap"));
        write_pcap(&path, &pair.primary, res).expect("write");
        let back = read_pcap(&path).expect("read");
        assert_eq!(back, pair.primary, "{tag}");
    }
}

#[test]
fn cli_writes_report_and_output() {
    let pair = synth::payload_divergence();
    let p = tmp("cli-p.pcap");
    let s = tmp("cli-s.pcap");
    write_pcap(&p, &pair.primary, TsResolution::NanoSecond).expect("write");
    write_pcap(&s, &pair.secondary, TsResolution::MicroSecond).expect("write");
    let report = tmp("cli-report.json");
    let out = tmp("cli-out.pcap");
    let res = Command::new(env!("CARGO_BIN_EXE_colo-replay"))
        .args(["--primary", p.to_str().unwrap_or_default()])
        .args(["--secondary", s.to_str().unwrap_or_default()])
        .args(["--report", report.to_str().unwrap_or_default()])
        .args(["--out", out.to_str().unwrap_or_default()])
        .args(["--shards", "2", "--compare-timeout-ms", "3000", "--mode", "compare"])
        .args(["--explain", "tcp 10.0.0.1:40000 > 10.0.0.2:80"])
        .output()
        .expect("run colo-replay");
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(stdout.contains("tcp-payload-mismatch"), "{stdout}");
    assert!(stdout.contains("CHECKPOINT") && stdout.contains("via flush"), "{stdout}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    let keys: Vec<&str> = json.as_object().expect("object").keys().map(|k| k.as_str()).collect();
    for k in [
        "primary_frames",
        "secondary_frames",
        "released",
        "checkpoints",
        "primary_dropped",
        "secondary_dropped",
        "held_at_end",
    ] {
        assert!(keys.contains(&k), "missing {k}");
    }
    assert_eq!(json["primary_frames"], 4);
    assert_eq!(json["released"][0], serde_json::json!({"index": 0, "via": "match"}));
    let ck = &json["checkpoints"][0];
    assert_eq!(ck["reason"], "tcp-payload-mismatch");
    assert_eq!(ck["flow"], "tcp 10.0.0.2:80 > 10.0.0.1:40000");
    assert!(ck["t_us"].is_u64() && ck["detail"].is_string());
    assert_eq!(json["held_at_end"], 0);
    let released = read_pcap(&out).expect("out pcap");
    assert_eq!(released.frames.len(), 4);
    for (f, orig) in released.frames.iter().zip(&pair.primary.frames) {
        assert_eq!(f.data, orig.data, "released bytes are the primary's, unmodified");
    }
}

#[test]
fn cli_errors_are_one_line_and_nonzero() {
    let bin = env!("CARGO_BIN_EXE_colo-replay");
    let res = Command::new(bin)
        .args(["--primary", "/nonexistent/p.pcap", "--secondary", "/nonexistent/s.pcap"])
        .output()
        .expect("run");
    assert_eq!(res.status.code(), Some(2));
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/p.pcap"));

    let bad = tmp("bad.pcap");
    std::fs::write(&bad, b"definitely not a capture").expect("write");
    let res = Command::new(bin)
        .args(["--primary", bad.to_str().unwrap_or_default()])
        .args(["--secondary", bad.to_str().unwrap_or_default()])
        .output()
        .expect("run");
    assert_eq!(res.status.code(), Some(2));
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not a pcap"), "{err}");
}

#[test]
fn sharding_keeps_each_flow_in_order() {
    let pair = synth::many_flows(24);
    let flow_of = |i: usize| match colo_core::wire::parse(&pair.primary.frames[i].data) {
        colo_core::wire::Class::Tcp(k, _) => k.to_string(),
        other => panic!("{other:?}"),
    };
    let mut used = std::collections::BTreeSet::new();
    for f in &pair.primary.frames {
        used.insert(colo_replay::shard_of(&f.data, 4));
    }
    assert!(used.len() > 1, "24 client addresses should spread over 4 shards");
    let out = replay(&pair.primary, &pair.secondary, &Options { shards: 4, ..Options::default() });
    assert!(out.report.checkpoints.is_empty(), "{:?}", out.report.checkpoints);
    assert_eq!(out.report.released.len(), pair.primary.frames.len());
    let mut last: std::collections::HashMap<String, usize> = Default::default();
    for r in &out.report.released {
        assert_eq!(r.via, "match");
        let prev = last.insert(flow_of(r.index), r.index);
        assert!(prev.is_none_or(|p| p < r.index), "flow reordered at {}", r.index);
    }
}

#[test]
fn proxy_mode_learns_the_offset() {
    let pair = synth::proxy_mode();
    let proxy = Options { mode: colo_core::Mode::Proxy, ..Options::default() };
    check(&pair, &proxy);
    // The same capture in compare mode cannot match (sequence spaces differ).
    let out = replay(&pair.primary, &pair.secondary, &Options::default());
    assert!(!out.report.checkpoints.is_empty());
}

#[test]
fn golden_pairs_written_to_disk_replay_the_same() {
    let dir = tmp("golden");
    std::fs::create_dir_all(&dir).expect("dir");
    for pair in synth::all() {
        let (p, s) = synth::write_pair(&dir, &pair, TsResolution::NanoSecond).expect("write pair");
        let from_disk = replay(&read_pcap(&p).expect("p"), &read_pcap(&s).expect("s"), &Options::default());
        let in_memory = replay(&pair.primary, &pair.secondary, &Options::default());
        assert_eq!(from_disk.report.released, in_memory.report.released, "{}", pair.name);
        assert_eq!(from_disk.report.checkpoints, in_memory.report.checkpoints, "{}", pair.name);
    }
}

#[test]
fn explain_traces_a_datagram_flow_decision_by_decision() {
    let pair = synth::udp_one_byte_differs();
    let opts = Options { explain: Some("udp 10.0.0.1:40000 > 10.0.0.2:53".into()), ..Options::default() };
    let out = replay(&pair.primary, &pair.secondary, &opts);
    let text = out.explain.join("\n");
    assert!(text.contains("primary #0 shard 0 datagram, 48 bytes compared"), "{text}");
    assert!(text.contains("secondary #0 consumed"), "{text}");
    assert!(text.contains("released primary #0 via match"), "{text}");
    assert!(text.contains("CHECKPOINT datagram-mismatch"), "{text}");
    assert!(text.contains("released primary #3 via flush"), "{text}");
    assert!(text.contains("secondary #3 flushed by the checkpoint"), "{text}");
}
