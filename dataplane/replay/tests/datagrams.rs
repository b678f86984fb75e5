//! Issue 4 acceptance through `colo-replay`: every pair of `synth::datagram_pairs()` (UDP,
//! ICMP, ICMPv6, GRE, ARP, IPv4/IPv6 fragments, TCP over IPv6/QinQ) gives the SPEC verdict
//! (§4, §5.2, §5.3, §6) with 1 and 3 shards; ARP under both non-IP policies.

use colo_core::{wire, Mode, NonIpPolicy};
use colo_replay::synth::{self, Pair};
use colo_replay::{replay, Options};

fn check(pair: &Pair, opts: &Options) -> Vec<&'static str> {
    let out = replay(&pair.primary, &pair.secondary, opts);
    let r = &out.report;
    let reasons: Vec<&'static str> = r.checkpoints.iter().map(|c| c.reason).collect();
    let n = pair.primary.frames.len();
    let mut indices: Vec<usize> = r.released.iter().map(|x| x.index).collect();
    if pair.expect_all_matched {
        assert!(reasons.is_empty(), "{}: {:#?}", pair.name, r.checkpoints);
        assert_eq!(indices, (0..n).collect::<Vec<_>>(), "{}: released in primary order", pair.name);
    } else {
        assert_eq!(reasons.first(), pair.expect_checkpoints.first(), "{}: {:#?}", pair.name, r.checkpoints);
        for want in &pair.expect_checkpoints {
            assert!(reasons.contains(want), "{}: {want} missing in {reasons:?}", pair.name);
        }
        indices.sort_unstable();
        assert_eq!(indices, (0..n).collect::<Vec<_>>(), "{}: everything released once", pair.name);
        // Held frames leave by the checkpoint's flush.
        assert_eq!(r.released.iter().any(|x| x.via == "flush"), pair.expect_flush, "{}", pair.name);
    }
    assert_eq!(r.held_at_end, 0, "{}", pair.name);
    assert!(r.primary_dropped.is_empty(), "{}: {:?}", pair.name, r.primary_dropped);
    out.counters.check_accounting().expect("accounting");
    reasons
}

/// Every pair's verdict with 1 and 3 shards; equivalent pairs release every primary frame by
/// `match` (but ARP and link-local control frames, passed through under the default policy).
fn check_verdicts(pairs: Vec<Pair>) {
    for pair in pairs {
        for shards in [1, 3] {
            let opts = Options { shards, ..Options::default() };
            check(&pair, &opts);
            let out = replay(&pair.primary, &pair.secondary, &opts);
            if pair.expect_all_matched {
                // Frames the non-IP policy covers (ARP, link-local control) pass through.
                let non_ip = |i: usize| matches!(wire::parse(&pair.primary.frames[i].data), wire::Class::NonIp(_));
                assert!(
                    out.report.released.iter().all(|x| x.via == "match" || (x.via == "passthrough" && non_ip(x.index))),
                    "{}: {:?}",
                    pair.name,
                    out.report.released
                );
            }
        }
    }
}

#[test]
fn every_datagram_scenario_gives_the_spec_verdict() {
    check_verdicts(synth::datagram_pairs());
}

#[test]
fn arp_under_both_policies() {
    let pair = synth::arp_identical();
    let pass = replay(&pair.primary, &pair.secondary, &Options::default());
    assert!(pass.report.released.iter().all(|x| x.via == "passthrough"));
    assert_eq!(pass.report.secondary_dropped.get("non-ip"), Some(&3));
    let cmp =
        replay(&pair.primary, &pair.secondary, &Options { non_ip_policy: NonIpPolicy::Compare, ..Options::default() });
    assert!(cmp.report.released.iter().all(|x| x.via == "match"), "{:?}", cmp.report.released);
    assert!(cmp.report.checkpoints.is_empty());
    // One differing ARP frame under compare: other-mismatch on flow "non-ip".
    let mut diff = pair.clone();
    for f in &mut diff.secondary.frames {
        f.data[40] ^= 1;
    }
    let out =
        replay(&diff.primary, &diff.secondary, &Options { non_ip_policy: NonIpPolicy::Compare, ..Options::default() });
    let first = out.report.checkpoints.first().expect("a request");
    assert_eq!(first.flow, "non-ip");
}

#[test]
fn garbage_fragments_are_only_flushed() {
    let pair = synth::ipv4_fragments_overlapping_garbage();
    let out = replay(&pair.primary, &pair.secondary, &Options::default());
    assert!(out.report.released.iter().all(|x| x.via == "flush"), "{:?}", out.report.released);
    assert_eq!(out.report.checkpoints[0].t_us, 3_000_000, "reassembly timeout from the first fragment");
}

#[test]
fn a_differing_fragment_is_never_released_by_match() {
    let pair = synth::ipv4_fragment_payload_differs();
    let out = replay(&pair.primary, &pair.secondary, &Options::default());
    // Datagram 2 is primary frames 4 and 5.
    for x in &out.report.released {
        if x.index == 4 || x.index == 5 {
            assert_eq!(x.via, "flush");
        }
    }
}

#[test]
fn second_round_scenarios_give_the_spec_verdict_and_a_reply_is_caught_in_milliseconds() {
    check_verdicts(synth::second_round_pairs());
    // Detection latency on the virtual clock, from the moment both sides show the evidence
    // (the later of the two guests' frames; report times are relative to the earliest frame)
    // to the request: ≤ 10 ms for a lone differing datagram and for a RST against a SYN-ACK.
    for pair in [synth::udp_single_reply_differs(), synth::rst_against_syn_ack()] {
        let out = replay(&pair.primary, &pair.secondary, &Options::default());
        let origin = pair.primary.frames[0].ts.min(pair.secondary.frames[0].ts);
        let evidence = pair.primary.frames[0].ts.max(pair.secondary.frames[0].ts) - origin;
        let first = &out.report.checkpoints[0];
        let latency_us = first.t_us.saturating_sub(evidence.as_micros() as u64);
        eprintln!("detection latency {}: {} µs ({})", pair.name, latency_us, first.reason);
        assert!(latency_us <= 10_000, "{}: flagged {latency_us} µs after the evidence", pair.name);
    }
}

#[test]
fn port_reuse_in_proxy_mode_with_the_secondary_first_is_a_new_incarnation() {
    let pair = synth::port_reuse_proxy_mode();
    for shards in [1, 3] {
        check(&pair, &Options { shards, mode: Mode::Proxy, ..Options::default() });
    }
    // Compare mode would read the secondary's own sequence space as a divergence.
    let compare = replay(&pair.primary, &pair.secondary, &Options::default());
    assert!(!compare.report.checkpoints.is_empty());
}

#[test]
fn explain_traces_a_fragmented_tcp_segment_through_its_stream() {
    // Fragments after the first carry no ports: they are traced with the flow whose protocol
    // and addresses they share, and the state line is the connection's.
    let pair = synth::tcp_segment_fragmented();
    let opts = Options { explain: Some("tcp 10.0.0.1:40000 > 10.0.0.2:80".into()), ..Options::default() };
    let text = replay(&pair.primary, &pair.secondary, &opts).explain.join("\n");
    assert!(text.contains("primary #2 shard 0 fragment id=4369 offset=0 len=1000 more=true"), "{text}");
    assert!(text.contains("primary #3 shard 0 fragment id=4369 offset=1000 len=632 more=false"), "{text}");
    assert!(
        text.contains(
            "primary #3 shard 0 fragment id=4369 offset=1000 len=632 more=false\n  state: compared=1000201 (stream \
             +200) secondary_ack=5001 held primary/secondary=2/0, oldest primary held: awaiting secondary data"
        ),
        "the reassembled segment (both its fragments) waits in the connection: {text}"
    );
    for i in 2..=3 {
        assert!(text.contains(&format!("released primary #{i} via match")), "{text}");
    }
    assert!(text.contains("compared=1002002 (stream +2001)"), "{text}");
}

#[test]
fn a_secondary_lagging_across_a_checkpoint_causes_no_follow_on_checkpoint() {
    let pair = synth::udp_lagging_secondary_across_a_checkpoint();
    for shards in [1, 3] {
        let out = replay(&pair.primary, &pair.secondary, &Options { shards, ..Options::default() });
        let flows: Vec<(&str, String)> = out.report.checkpoints.iter().map(|c| (c.reason, c.flow.clone())).collect();
        assert_eq!(flows, vec![("datagram-mismatch", "udp 10.0.0.2:54 > 10.0.0.1:40001".to_string())]);
        // The lagging stream: everything released once, after the flush by match again.
        let of_stream = |i: usize| wire::parse(&pair.primary.frames[i].data).key().is_some_and(|k| k.src_port == 53);
        let stream: Vec<_> = out.report.released.iter().filter(|r| of_stream(r.index)).collect();
        assert_eq!(stream.len(), 20);
        assert_eq!(stream.last().map(|r| r.via), Some("match"));
        assert_eq!(out.counters.secondary_dropped.iter().sum::<u64>(), 0, "absorbed, not dropped");
    }
}
