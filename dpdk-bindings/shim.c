#include <rte_errno.h>
#include "shim.h"

int colo_rte_errno(void) { return rte_errno; }

void colo_rte_errno_reset(void) { rte_errno = 0; }
