/* Memory bandwidth probes for qbench (tools/qbench/): a read that sums every
 * 32-bit word of a buffer and a copy, both with 16-byte accesses in
 * grid-stride loops over one pass of the data. They measure the ceiling a
 * memory-bound decode step can reach on this device.
 *
 * The sum is what makes the read honest: a kernel that skipped part of the
 * buffer would still be fast, so every caller checks the sum against the
 * host's (qbench on each run, tests/gpu/test_gpu_bench.c on random data).
 * The CPU reference is the plain loop "sum += word" modulo 2^64.
 *
 * Launchers follow src/kernels/qk.h: device pointers, work enqueued on the
 * stream, no synchronization, allocation or printing. */
#ifndef QRUN_KERNELS_BENCH_H
#define QRUN_KERNELS_BENCH_H

#include <stdint.h>

#include "kernels/qk.h"

#ifdef __cplusplus
extern "C" {
#endif

/* *sum (device memory) = the sum of the n_words 32-bit words at src, modulo
 * 2^64. src must be 16-byte aligned (cudaMalloc's are). n_blocks is the grid
 * (a few blocks per multiprocessor keep enough loads in flight); n_blocks < 1
 * is QRUN_ERR_INVALID_ARGUMENT. n_words 0 gives 0. */
bool qk_bench_read(const uint32_t *src, uint64_t n_words, int n_blocks, unsigned long long *sum,
                   cudaStream_t stream, qerr *err);

/* dst[i] = src[i] for the n_words 32-bit words; both 16-byte aligned and
 * not overlapping. */
bool qk_bench_copy(uint32_t *dst, const uint32_t *src, uint64_t n_words, int n_blocks,
                   cudaStream_t stream, qerr *err);

#ifdef __cplusplus
}
#endif
#endif
