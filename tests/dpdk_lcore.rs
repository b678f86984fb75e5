//! Closures launched on worker lcores: results come back through `join`, and a panic is
//! reported by `join` instead of aborting the process (issue 2).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use colo_suite::test_eal;
use dpdk::{current_lcore, launch, worker_lcores, LcoreId};

#[test]
fn launched_closures_run_on_workers_and_panics_reach_join() {
    let eal = test_eal();
    let workers = worker_lcores();
    assert!(workers.len() >= 2, "the test EAL has worker lcores: {workers:?}");
    assert!(!workers.contains(&LcoreId(eal.main_lcore())));

    // A value comes back, computed on the worker.
    let h = launch(workers[0], || (current_lcore(), 6 * 7)).unwrap();
    assert_eq!(h.lcore(), workers[0]);
    assert_eq!(h.join().unwrap(), (Some(workers[0]), 42));
    assert_eq!(current_lcore(), Some(LcoreId(eal.main_lcore())), "the init thread is the main lcore");

    // A panic is caught at the lcore boundary and reported.
    let h = launch(workers[1], || -> u32 { panic!("shard exploded") }).unwrap();
    let payload = h.join().expect_err("panic reported");
    let msg = payload.downcast_ref::<&str>().copied().unwrap_or("");
    assert_eq!(msg, "shard exploded");

    // The worker is usable again afterwards, and both workers run concurrently.
    let counter = Arc::new(AtomicU32::new(0));
    let handles: Vec<_> = workers
        .iter()
        .map(|&w| {
            let c = counter.clone();
            launch(w, move || c.fetch_add(1, Ordering::SeqCst)).unwrap()
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), workers.len() as u32);

    // The main lcore is not a launch target.
    assert!(launch(LcoreId(eal.main_lcore()), || ()).is_err());
}
