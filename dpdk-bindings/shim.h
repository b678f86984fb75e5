/* Hand-written C for what bindgen cannot reach: macros and thread-locals. */
#ifndef COLO_DPDK_SHIM_H
#define COLO_DPDK_SHIM_H

/* rte_errno is a per-lcore thread-local behind a macro; binding the TLS symbol directly links
 * but crashes when read, so it is read and written through these functions. */
int colo_rte_errno(void);
void colo_rte_errno_reset(void);

/* rte_mempool_avail_count adds up the caches of all RTE_MAX_LCORE (128) lcore ids, a cache
 * line each, 8 KiB apart; the RX gate and the pressure check count hundreds of times a second,
 * and those walks took 1.4 % of a busy single lcore's samples. Only EAL lcores have caches in
 * this process (it registers no other thread; DPDK's own control threads have no lcore id), so
 * adding up theirs gives the same count, the same way (racy reads of other lcores' cache
 * lengths, as DPDK's own count makes). */
struct rte_mempool;
unsigned int colo_mempool_avail_count(const struct rte_mempool *mp);

#endif
