//! A capture read through `net_pcap` (rx_pcap) and forwarded to `net_pcap` (tx_pcap) comes out
//! with the same frames, byte for byte and in order (issue 2).

use colo_suite::{read_pcap, scratch_dir, test_eal, unique, varied_frames, write_pcap};
use dpdk::{Mempool, Port, PortConfig, RxBurst, TxBatch};

#[test]
fn pcap_forwarded_through_net_pcap_is_byte_identical() {
    let eal = test_eal();
    let dir = scratch_dir("pcap-fwd");
    let input = dir.join("in.pcap");
    let output = dir.join("out.pcap");
    let frames = varied_frames(2_000, 0xfeed);
    write_pcap(&input, &frames);

    let pool = Mempool::new_pktmbuf(eal, &unique("pool"), 4095, 32, 2176).unwrap();
    let rx_id = eal.create_vdev(&unique("net_pcap_in"), &format!("rx_pcap={}", input.display())).unwrap();
    let tx_id = eal.create_vdev(&unique("net_pcap_out"), &format!("tx_pcap={}", output.display())).unwrap();
    let info = Port::info(eal, rx_id).unwrap();
    assert_eq!(info.driver, "net_pcap");
    let [rx_port, tx_port] = Port::configure_pair(eal, [rx_id, tx_id], &PortConfig::default(), &pool).unwrap();
    let mut rxq = rx_port.rx_queue(0).unwrap();
    let mut txq = tx_port.tx_queue(0).unwrap();

    let mut burst = RxBurst::new();
    let mut batch = TxBatch::new();
    let mut forwarded = 0;
    let mut idle = 0;
    // rx_pcap plays the file once, then returns nothing.
    while idle < 10_000 {
        if rxq.rx_burst(&mut burst) == 0 {
            idle += 1;
            continue;
        }
        idle = 0;
        for m in burst.by_ref() {
            if let Err(m) = batch.push(m) {
                unreachable!("batch of {} overflowed with {m:?}", batch.len());
            }
        }
        while !batch.is_empty() {
            forwarded += txq.tx_burst(&mut batch);
        }
    }
    assert_eq!(forwarded, frames.len());
    drop((rxq, txq, rx_port, tx_port));

    let out = read_pcap(&output);
    assert_eq!(out.len(), frames.len(), "every frame written");
    for (i, (got, want)) in out.iter().zip(&frames).enumerate() {
        assert!(got == want, "frame {i} differs");
    }
    assert_eq!(pool.in_use(), 0);
}
