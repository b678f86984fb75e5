//! Frames through a `net_ring` port pair arrive byte-identical and in order (issue 2).

use colo_suite::{loopback_ring_port, test_eal, unique, varied_frames};
use dpdk::{Mbuf, Mempool, Port, PortConfig, Ring, RxBurst, TxBatch};

#[test]
fn ten_thousand_frames_cross_a_ring_pair_in_order() {
    let eal = test_eal();
    let a_to_b = Ring::new(eal, &unique("ab"), 1024).unwrap();
    let b_to_a = Ring::new(eal, &unique("ba"), 1024).unwrap();
    let a_id =
        Port::from_rings(eal, &unique("net_ring_a"), std::slice::from_ref(&b_to_a), std::slice::from_ref(&a_to_b))
            .unwrap();
    let b_id = Port::from_rings(eal, &unique("net_ring_b"), &[a_to_b], &[b_to_a]).unwrap();
    let pool = Mempool::new_pktmbuf(eal, &unique("pool"), 4095, 32, 2176).unwrap();
    let [a, b] = Port::configure_pair(eal, [a_id, b_id], &PortConfig::default(), &pool).unwrap();
    let mut tx = a.tx_queue(0).unwrap();
    let mut rx = b.rx_queue(0).unwrap();

    let frames = varied_frames(10_000, 0x5eed);
    let mut received: Vec<Vec<u8>> = Vec::with_capacity(frames.len());
    let mut burst = RxBurst::new();
    let mut batch = TxBatch::new();
    let mut next = 0;
    let mut idle_polls = 0;
    while received.len() < frames.len() && idle_polls < 1_000_000 {
        while next < frames.len() && !batch.is_full() {
            batch.push(Mbuf::from_slice(&pool, &frames[next]).unwrap()).unwrap();
            next += 1;
        }
        tx.tx_burst(&mut batch);
        let n = rx.rx_burst(&mut burst);
        idle_polls = if n == 0 { idle_polls + 1 } else { 0 };
        for m in burst.by_ref() {
            received.push(m.data().to_vec());
        }
    }
    assert_eq!(received.len(), frames.len(), "every frame arrives");
    for (i, (got, want)) in received.iter().zip(&frames).enumerate() {
        assert!(got == want, "frame {i} differs or is out of order ({} vs {} bytes)", got.len(), want.len());
    }
    drop(burst);
    drop(batch);
    assert_eq!(pool.in_use(), 0, "every mbuf is back in the pool");
    let stats = b.stats().unwrap();
    assert_eq!(stats.ipackets, 10_000);
}

#[test]
fn configuring_a_pair_with_the_same_port_twice_is_an_error() {
    let eal = test_eal();
    let id = loopback_ring_port(eal, "net_ring_same", 64);
    let pool = Mempool::new_pktmbuf(eal, &unique("pool"), 255, 0, 2176).unwrap();
    let err = Port::configure_pair(eal, [id, id], &PortConfig::default(), &pool).expect_err("refused");
    assert!(err.to_string().contains("twice"), "{err}");
}

#[test]
fn rss_on_a_device_without_rss_is_refused_with_a_hint() {
    let eal = test_eal();
    let id = loopback_ring_port(eal, "net_ring_rss", 64);
    let pool = Mempool::new_pktmbuf(eal, &unique("pool"), 255, 0, 2176).unwrap();
    let cfg = PortConfig { rss: Some(dpdk::RssConfig::ip_only()), ..PortConfig::default() };
    let err = Port::configure(eal, id, &cfg, &pool).expect_err("refused");
    assert!(err.to_string().contains("software dispatch"), "{err}");
}

#[test]
fn a_queue_is_claimed_once() {
    let eal = test_eal();
    let id = loopback_ring_port(eal, "net_ring_claim", 64);
    let pool = Mempool::new_pktmbuf(eal, &unique("pool"), 255, 0, 2176).unwrap();
    let port = Port::configure(eal, id, &PortConfig::default(), &pool).unwrap();
    let q = port.rx_queue(0).unwrap();
    assert!(port.rx_queue(0).is_err(), "second claim refused");
    assert!(port.rx_queue(1).is_err(), "nonexistent queue refused");
    drop(q);
    assert!(port.rx_queue(0).is_ok(), "claimable again after drop");
}
