/* The memory bandwidth ceilings qbench compares a decode step with, measured
 * in the same run: on the GPU a read kernel (sum of every 32-bit word, 16-byte
 * loads) and a device-to-device copy kernel (src/kernels/bench.h), timed with
 * device events; on the CPU a multi-threaded read loop. Each repetition reads
 * the whole buffer; the figures are the median and range of the repetitions.
 * The sums are checked against the value the buffer's contents imply, so a
 * probe that skipped memory fails instead of reporting a fast number. */
#ifndef QBENCH_BANDWIDTH_H
#define QBENCH_BANDWIDTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "stats.h"

typedef struct bw_result {
    bool measured;
    uint64_t buffer_bytes;
    int reps;
    summary read;   /* bytes per second */
    summary copy;   /* GPU only: (bytes read + bytes written) per second */
    bool has_copy;
    int threads;    /* CPU: threads reading */
    uint64_t cache_bytes; /* last-level cache (CPU L3, GPU L2); 0 when unknown */
    char device[256];
} bw_result;

/* CPU: read `bytes` (rounded down to 8 per thread) with n_threads threads
 * (0 = one per core), `reps` times. */
bool bw_cpu(uint64_t bytes, int reps, int n_threads, bw_result *r, qerr *err);

/* Whether this build has CUDA and a usable device; `why` says why not. */
bool bw_gpu_usable(char *why, size_t why_size);
/* GPU (device 0): read and copy `bytes` (0: 4 GiB, or half the free device
 * memory when that is less), `reps` times each after one untimed pass. */
bool bw_gpu(uint64_t bytes, int reps, bw_result *r, qerr *err);
/* Free and total device memory of device 0 (cudaMemGetInfo). */
bool bw_gpu_meminfo(uint64_t *free_bytes, uint64_t *total_bytes, qerr *err);

#endif
