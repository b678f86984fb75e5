//! Ownership rules of the safe layer: RX bursts free what was not taken, mbufs free on drop,
//! the EAL starts once per process (issue 2).

use colo_suite::{loopback_ring_port, test_eal, test_eal_args, unique, varied_frames};
use dpdk::{Eal, Error, FreeBatch, Mbuf, Mempool, PoolOrder, Port, PortConfig, RxBurst, TxBatch, BURST_SIZE};

#[test]
fn a_half_consumed_rx_burst_returns_every_mbuf_to_the_pool() {
    let eal = test_eal();
    let pool = Mempool::new_pktmbuf(eal, &unique("pool"), 127, 0, 2176).unwrap();
    let id = loopback_ring_port(eal, "net_ring_loop", 256);
    let port = Port::configure(eal, id, &PortConfig::default(), &pool).unwrap();
    let (mut rxq, mut txq) = (port.rx_queue(0).unwrap(), port.tx_queue(0).unwrap());

    let frames = varied_frames(BURST_SIZE, 7);
    let mut batch = TxBatch::new();
    for f in &frames {
        batch.push(Mbuf::from_slice(&pool, f).unwrap()).unwrap();
    }
    assert_eq!(pool.in_use(), BURST_SIZE as u32);
    assert_eq!(txq.tx_burst(&mut batch), BURST_SIZE);

    let mut burst = RxBurst::new();
    assert_eq!(rxq.rx_burst(&mut burst), BURST_SIZE);
    let taken: Vec<Mbuf> = burst.by_ref().take(BURST_SIZE / 2).collect();
    assert_eq!(taken[0].data(), &frames[0][..]);
    assert_eq!(burst.remaining(), BURST_SIZE / 2);
    drop(burst);
    assert_eq!(pool.in_use(), (BURST_SIZE / 2) as u32, "untaken mbufs freed with the burst");
    drop(taken);
    assert_eq!(pool.in_use(), 0, "taken mbufs freed on drop");
}

#[test]
fn refilling_a_burst_frees_the_previous_leftovers() {
    let eal = test_eal();
    let pool = Mempool::new_pktmbuf(eal, &unique("pool"), 127, 0, 2176).unwrap();
    let id = loopback_ring_port(eal, "net_ring_refill", 256);
    let port = Port::configure(eal, id, &PortConfig::default(), &pool).unwrap();
    let (mut rxq, mut txq) = (port.rx_queue(0).unwrap(), port.tx_queue(0).unwrap());
    let mut batch = TxBatch::new();
    for f in varied_frames(8, 3) {
        batch.push(Mbuf::from_slice(&pool, &f).unwrap()).unwrap();
    }
    txq.tx_burst(&mut batch);
    let mut burst = RxBurst::new();
    assert_eq!(rxq.rx_burst(&mut burst), 8);
    let one = burst.next();
    assert_eq!(rxq.rx_burst(&mut burst), 0);
    assert_eq!(pool.in_use(), 1, "only the taken mbuf is still out");
    drop(one);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn a_full_tx_batch_gives_the_mbuf_back_and_unsent_stay_in_order() {
    let eal = test_eal();
    let pool = Mempool::new_pktmbuf(eal, &unique("pool"), 127, 0, 2176).unwrap();
    // A ring of 16 slots accepts at most 15 frames: the rest must stay in the batch.
    let id = loopback_ring_port(eal, "net_ring_small", 16);
    let port = Port::configure(eal, id, &PortConfig::default(), &pool).unwrap();
    let mut txq = port.tx_queue(0).unwrap();
    let frames = varied_frames(BURST_SIZE + 1, 11);
    let mut batch = TxBatch::new();
    for f in &frames[..BURST_SIZE] {
        batch.push(Mbuf::from_slice(&pool, f).unwrap()).unwrap();
    }
    let extra = Mbuf::from_slice(&pool, &frames[BURST_SIZE]).unwrap();
    let back = batch.push(extra).expect_err("batch full");
    assert_eq!(back.data(), &frames[BURST_SIZE][..]);
    drop(back);
    let sent = txq.tx_burst(&mut batch);
    assert!(sent < BURST_SIZE, "the small ring cannot take all");
    assert_eq!(batch.len(), BURST_SIZE - sent);
    let first_unsent = batch.pop_front().unwrap();
    assert_eq!(first_unsent.data(), &frames[sent][..], "unsent keep their order");
}

#[test]
fn a_free_batch_returns_its_mbufs_when_full_on_flush_and_on_drop() {
    let eal = test_eal();
    let pool = Mempool::new_pktmbuf(eal, &unique("pool"), 127, 0, 2176).unwrap();
    let mut mbufs: Vec<Mbuf> = (0..BURST_SIZE + 5).map(|_| pool.alloc().unwrap()).collect();
    let mut frees = FreeBatch::new();
    for m in mbufs.drain(..BURST_SIZE) {
        frees.push(m);
    }
    assert_eq!(pool.in_use(), (BURST_SIZE + 5) as u32, "a full batch still holds its mbufs");
    for m in mbufs.drain(..) {
        frees.push(m);
    }
    assert_eq!(pool.in_use(), 5, "the full batch was freed to take the next one");
    frees.flush();
    assert_eq!(pool.in_use(), 0);
    frees.flush();
    frees.push(pool.alloc().unwrap());
    drop(frees);
    assert_eq!(pool.in_use(), 0, "freed on drop");
}

#[test]
fn mbuf_from_slice_round_trips_and_refuses_oversize() {
    let eal = test_eal();
    let pool = Mempool::new_pktmbuf(eal, &unique("pool"), 63, 0, 2176).unwrap();
    let m = Mbuf::from_slice(&pool, b"hello, dpdk").unwrap();
    assert_eq!(m.data(), b"hello, dpdk");
    assert!(m.is_contiguous());
    assert_eq!(m.refcnt(), 1);
    assert!(Mbuf::from_slice(&pool, &[0u8; 4000]).is_err());
    // An empty pool is a plain error value (the packet path allocates nothing for it).
    let all: Vec<Mbuf> = std::iter::from_fn(|| pool.alloc()).collect();
    assert_eq!(all.len() + 1, pool.capacity() as usize);
    assert_eq!(Mbuf::from_slice(&pool, b"no room").unwrap_err(), Error::PoolEmpty);
    drop(all);
    drop(m);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn second_eal_init_is_an_error_not_undefined_behaviour() {
    let _eal = test_eal();
    let err = Eal::init(test_eal_args("colo-second")).expect_err("refused");
    assert_eq!(err, Error::AlreadyInitialized);
}

#[test]
fn an_unknown_port_name_is_a_clear_error() {
    let eal = test_eal();
    let err = Port::lookup(eal, "net_nonexistent9").expect_err("unknown");
    assert!(err.to_string().contains("unknown port"), "{err}");
}

/// The pool's free count includes what sits in the lcores' caches: mbufs allocated on a
/// worker lcore leave the rest of its cache's refill there, and mbufs freed on it go to its
/// cache (flushed only past 1.5 × its size); the count, read on the worker or from another
/// thread, still finds every one of them.
#[test]
fn free_mbufs_in_a_worker_lcores_cache_are_counted() {
    let eal = test_eal();
    let pool = Mempool::new_pktmbuf(eal, &unique("cached"), 1023, 64, 2176).unwrap();
    let capacity = pool.capacity();
    let worker = dpdk::worker_lcores()[0];
    let on_worker = pool.clone();
    let (seen, kept) = dpdk::launch(worker, move || {
        let mut taken: Vec<Mbuf> = (0..100).map(|_| on_worker.alloc().unwrap()).collect();
        let while_taken = (on_worker.available(), on_worker.in_use());
        let kept = taken.split_off(50);
        drop(taken); // 50 into this lcore's cache
        ((while_taken, on_worker.available()), kept)
    })
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(seen, ((capacity - 100, 100), capacity - 50), "counted on the worker");
    assert_eq!((pool.available(), pool.in_use()), (capacity - 50, 50), "counted from another thread");
    drop(kept);
    assert_eq!(pool.in_use(), 0);
}

/// A LIFO pool (the `stack` driver) hands out the mbuf freed last even with no lcore cache in
/// front of it; the default ring hands out the one freed longest ago. The dataplane's pool
/// relies on the first (a refill after a cache ran dry gets mbufs still warm).
#[test]
fn a_lifo_pool_hands_out_the_mbuf_freed_last() {
    let eal = test_eal();
    let lifo = Mempool::new_pktmbuf_in_order(eal, &unique("lifo"), 63, 0, 2176, PoolOrder::Lifo).unwrap();
    let ring = Mempool::new_pktmbuf(eal, &unique("ring"), 63, 0, 2176).unwrap();
    assert_eq!((lifo.driver().as_str(), ring.driver().as_str()), ("stack", "ring_mp_mc"));
    let freed_last_comes_back = |pool: &Mempool| {
        let taken: Vec<Mbuf> = (0..3).map(|_| pool.alloc().unwrap()).collect();
        let last = taken[2].data().as_ptr();
        drop(taken); // freed in order: the third last
        let next = pool.alloc().unwrap();
        next.data().as_ptr() == last
    };
    assert!(freed_last_comes_back(&lifo));
    assert!(!freed_last_comes_back(&ring));
    assert_eq!((lifo.in_use(), ring.in_use()), (0, 0));
}
