/* Hand-written C for what bindgen cannot reach: macros and thread-locals. */
#ifndef COLO_DPDK_SHIM_H
#define COLO_DPDK_SHIM_H

/* rte_errno is a per-lcore thread-local behind a macro; binding the TLS symbol directly links
 * but crashes when read, so it is read and written through these functions. */
int colo_rte_errno(void);
void colo_rte_errno_reset(void);

#endif
