//! Proxy mode (SPEC §3) on net_pcap vdevs: client frames are mirrored to both guests — to the
//! primary unchanged, to the secondary with the ACK moved into the secondary's sequence space
//! (learned from the SYN-ACK pair) — and the guests' answers, in different sequence spaces,
//! compare equal and are released.

use colo_core::fixtures::{flags, Conn, TcpFrame};
use colo_core::wire::{self, Class};
use colo_suite::{collect_run, read_pcap, scratch_dir, workspace_bin, write_pcap, DataplaneRun};

fn client(seq: u32, ack: u32, fl: u8, payload: &[u8]) -> Vec<u8> {
    TcpFrame {
        src_mac: [0x52, 0x54, 0, 0, 0, 1],
        dst_mac: [0x52, 0x54, 0, 0, 0, 2],
        src: std::net::Ipv4Addr::new(10, 0, 0, 1),
        dst: std::net::Ipv4Addr::new(10, 0, 0, 2),
        sport: 40000,
        dport: 80,
        seq,
        ack,
        flags: fl,
        payload: payload.to_vec(),
        ..TcpFrame::default()
    }
    .build()
}

fn tcp_ack(frame: &[u8]) -> Option<u32> {
    match wire::parse(frame) {
        Class::Tcp(_, seg) => Some(seg.ack),
        _ => None,
    }
}

/// Runs `colo-dataplane --mode proxy` (standalone checkpoints, `shards` shards) on net_pcap
/// ports fed with the primary's, the secondary's and the clients' frames; what each guest was
/// sent is in `to-primary.pcap` / `to-secondary.pcap` of `dir`, the released frames in
/// `out.pcap`.
fn run_proxy(dir: &std::path::Path, [primary, secondary, clients]: [&[Vec<u8>]; 3], shards: usize) -> DataplaneRun {
    write_pcap(&dir.join("primary.pcap"), primary);
    write_pcap(&dir.join("secondary.pcap"), secondary);
    write_pcap(&dir.join("client.pcap"), clients);
    let mut eal: Vec<String> =
        colo_suite::dataplane_eal_args(dir, shards + 2).into_iter().filter(|a| !a.starts_with("--vdev")).collect();
    let d = |f: &str| dir.join(f).display().to_string();
    eal.push(format!("--vdev=net_pcap0,rx_pcap={},tx_pcap={}", d("primary.pcap"), d("to-primary.pcap")));
    eal.push(format!("--vdev=net_pcap1,rx_pcap={},tx_pcap={}", d("secondary.pcap"), d("to-secondary.pcap")));
    eal.push(format!("--vdev=net_pcap2,tx_pcap={}", d("out.pcap")));
    eal.push(format!("--vdev=net_pcap3,rx_pcap={}", d("client.pcap")));
    let mut cmd = std::process::Command::new(workspace_bin("colo-dataplane"));
    cmd.args(eal).arg("--").env("RUNTIME_DIRECTORY", dir).stdin(std::process::Stdio::null());
    cmd.args(["--primary", "net_pcap0", "--secondary", "net_pcap1", "--output", "net_pcap2", "--client", "net_pcap3"]);
    cmd.args(["--mode", "proxy", "--shards", &shards.to_string(), "--checkpoint-mode", "standalone"]);
    cmd.args(["--exit-when-idle-ms", "300", "--stats-json"]).arg(dir.join("stats.json"));
    collect_run(dir, cmd)
}

#[test]
fn client_frames_are_mirrored_with_the_secondary_ack_rewritten_and_answers_compare_equal() {
    let dir = scratch_dir("dp-proxy");
    // The guests answer a client-opened connection with different ISNs (1000 and 7000).
    let p = Conn { isn: 1000, ack: 5001, ..Conn::default() };
    let s = Conn { isn: 7000, ack: 5001, ..Conn::default() };
    let primary = vec![p.syn_ack(), p.data_ack(0, b"0123456789", 5005)];
    let secondary = vec![s.syn_ack(), s.data_ack(0, b"0123456789", 5005)];
    // Non-TCP filler first, so the guests' SYN-ACKs are handled before the client's ACKs
    // (on a wire the client cannot acknowledge what it has not received yet).
    let mut from_client: Vec<Vec<u8>> = (0..256u16)
        .map(|i| {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1, 0x88, 0xb5]);
            f.extend_from_slice(&i.to_be_bytes());
            f.resize(60, 0);
            f
        })
        .collect();
    from_client.extend([
        client(5000, 0, flags::SYN, b""),
        client(5001, 1001, flags::ACK, b""),
        client(5001, 1001, flags::ACK | flags::PSH, b"GET "),
        client(5005, 1011, flags::ACK, b""),
    ]);
    let run = run_proxy(&dir, [&primary, &secondary, &from_client], 2);
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    // The guests' answers compared equal across sequence spaces and left unmodified.
    assert_eq!(run.output, primary);
    assert_eq!(run.stats["total"]["released"]["match"], 2, "{}", run.stats["total"]);
    assert_eq!(run.stats["total"]["accounting"], "ok");
    assert_eq!(run.stats["coordinator"]["checkpoints_completed"], 0);

    // The primary gets every client frame as it is, each flow in order (flows on different
    // shards may interleave differently).
    let to_primary = read_pcap(&dir.join("to-primary.pcap"));
    colo_suite::assert_same_per_flow(&to_primary, &from_client);
    // The secondary gets them too: non-TCP frames unchanged, the TCP segments in order with
    // their ACKs moved by 7000 - 1000.
    let to_secondary = read_pcap(&dir.join("to-secondary.pcap"));
    assert_eq!(to_secondary.len(), from_client.len());
    let (tcp, other): (Vec<_>, Vec<_>) = to_secondary.iter().partition(|f| tcp_ack(f).is_some());
    let other: Vec<Vec<u8>> = other.into_iter().cloned().collect();
    assert_eq!(other, from_client[..256], "non-TCP frames unchanged, in order");
    let acks: Vec<Option<u32>> = tcp.iter().map(|f| tcp_ack(f)).collect();
    assert_eq!(acks, vec![Some(0), Some(7001), Some(7001), Some(7011)]);
    assert_eq!(run.stats["proxy"]["rewritten"], 3, "{}", run.stats["proxy"]);
    assert_eq!(run.stats["proxy"]["secondary_dropped"], 0);
}

/// A client frame longer than one mbuf (a 3,000-byte UDP datagram on a jumbo-frame client
/// port; net_pcap hands it over as a chain) reaches both guests whole: the primary gets it as
/// it came, the secondary a deep copy, not its first 2,048 bytes.
#[test]
fn a_client_jumbo_frame_is_mirrored_whole_to_both_guests() {
    let dir = scratch_dir("dp-proxy-jumbo");
    let datagram = colo_core::fixtures::IpFrame {
        src: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
        dst: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
        ..colo_core::fixtures::IpFrame::udp(40000, 53, &[0x6b; 2958])
    }
    .build();
    assert_eq!(datagram.len(), 3000);
    let filler = |i: u8| {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 2, 0x88, 0xb5, i]);
        f.resize(60, 0);
        f
    };
    let run = run_proxy(&dir, [&[filler(1)], &[filler(1)], std::slice::from_ref(&datagram)], 1);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(read_pcap(&dir.join("to-primary.pcap")), vec![datagram.clone()]);
    assert_eq!(read_pcap(&dir.join("to-secondary.pcap")), vec![datagram]);
    assert_eq!(run.stats["proxy"]["secondary_dropped"], 0, "{}", run.stats["proxy"]);
}
