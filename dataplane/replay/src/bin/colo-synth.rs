//! `colo-synth DIR`: writes synthetic primary/secondary capture pairs into DIR, for trying
//! `colo-replay` and `colo-dataplane` without guests: every scenario of `colo_replay::synth`
//! (TCP, datagrams, fragments, VLAN, IPv6)
//! as `NAME.primary.pcap` / `NAME.secondary.pcap`, plus `demo.*.pcap` — resegmented TCP
//! flows, UDP datagrams and one TCP flow whose secondary diverges — used by `ci/demo`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use colo_core::fixtures::{Conn, TcpFrame};
use colo_replay::{synth, write_pcap, Capture, TsResolution};

fn udp(client: Ipv4Addr, sport: u16, payload: &[u8], ip_id: u16, ttl: u8) -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2, 0x08, 0x00];
    let total = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&ip_id.to_be_bytes());
    f.extend_from_slice(&[0x40, 0, ttl, 17, 0, 0, 10, 0, 0, 2]);
    f.extend_from_slice(&client.octets());
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The demo pair: 6 TCP flows sent as 10-byte segments by the primary and 3+7 by the
/// secondary (different IP IDs and TTLs), 4 UDP flows, and flow 7 whose secondary differs in
/// one byte of its second segment.
fn demo() -> (Capture, Capture) {
    let (mut p, mut s) = (Capture::default(), Capture::default());
    let mut t = synth::T0;
    let mut tick = || {
        t += Duration::from_micros(100);
        t
    };
    for flow in 0..7u16 {
        let conn = |ip_id: u16, ttl: u8| Conn {
            template: TcpFrame {
                dst: Ipv4Addr::new(10, 0, 1, flow as u8 + 1),
                dport: 40000 + flow,
                ip_id,
                ttl,
                ..TcpFrame::default()
            },
            ..Conn::default()
        };
        let (cp, cs) = (conn(100 + flow, 64), conn(900 + flow, 63));
        for k in 0..4u32 {
            let payload: Vec<u8> = (0..10).map(|i| b'a' + ((flow as u32 + k * 10 + i) % 26) as u8).collect();
            let mut sec = payload.clone();
            if flow == 6 && k == 1 {
                sec[4] = b'#';
            }
            p.push(tick(), cp.data(k * 10, &payload));
            s.push(tick(), cs.data(k * 10, &sec[..3]));
            s.push(tick(), cs.data(k * 10 + 3, &sec[3..]));
        }
    }
    for flow in 0..4u16 {
        let client = Ipv4Addr::new(10, 0, 2, flow as u8 + 1);
        for k in 0..3u16 {
            let payload = format!("answer {flow}.{k}");
            p.push(tick(), udp(client, 5000 + flow, payload.as_bytes(), k, 64));
            s.push(tick(), udp(client, 5000 + flow, payload.as_bytes(), 1000 + k, 63));
        }
    }
    (p, s)
}

fn main() {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: colo-synth DIR   (writes NAME.primary.pcap / NAME.secondary.pcap pairs)");
        std::process::exit(2);
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("colo-synth: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let mut written = 0;
    let every = synth::all().into_iter().chain(synth::datagram_pairs()).chain(synth::second_round_pairs());
    for pair in every.chain([synth::proxy_mode(), synth::port_reuse_proxy_mode()]) {
        if let Err(e) = synth::write_pair(&dir, &pair, TsResolution::MicroSecond) {
            eprintln!("colo-synth: {e}");
            std::process::exit(1);
        }
        written += 1;
    }
    let (p, s) = demo();
    for (name, cap) in [("demo.primary.pcap", &p), ("demo.secondary.pcap", &s)] {
        if let Err(e) = write_pcap(&dir.join(name), cap, TsResolution::MicroSecond) {
            eprintln!("colo-synth: {e}");
            std::process::exit(1);
        }
    }
    println!("colo-synth: wrote {} capture pairs to {}", written + 1, dir.display());
}
