#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mempool.h>
#include "shim.h"

int colo_rte_errno(void) { return rte_errno; }

void colo_rte_errno_reset(void) { rte_errno = 0; }

unsigned int colo_mempool_avail_count(const struct rte_mempool *mp)
{
	/* What the backing store holds (rte_mempool_ops_get_count, which is not exported). */
	unsigned int count = rte_mempool_get_ops(mp->ops_index)->get_count(mp);
	unsigned int lcore_id;

	if (mp->cache_size != 0) {
		RTE_LCORE_FOREACH(lcore_id)
			count += mp->local_cache[lcore_id].len;
	}
	return count > mp->size ? mp->size : count;
}
