/* CUDA device discovery for backend selection (host side, C). */
#ifndef QRUN_CUDA_DEVICE_H
#define QRUN_CUDA_DEVICE_H

#include <stddef.h>

#include "error.h"

typedef struct cuda_device_info {
    int index;
    char name[256];
    int cc_major, cc_minor;
    int multiprocessors;
    size_t total_mem, free_mem;
    size_t l2_bytes;
} cuda_device_info;

/* Number of usable CUDA devices; 0 with `err` explaining why (no driver, no
 * device, driver too old) when there are none. */
int cuda_device_count(qerr *err);
/* Properties of device `index`. */
qrun_status cuda_device_query(int index, cuda_device_info *info, qerr *err);

#endif
