/* Bandwidth probes (bench.h): one pass over a buffer with 16-byte loads,
 * BENCH_UNROLL of them issued before the first is used, so each thread keeps
 * several requests in flight as a memory-bound matmul must. The words left
 * over after the last whole uint4 (n_words % 4 of them) are done by the
 * first threads of block 0.
 *
 * Agreement with the CPU reference (a sequential u64 sum of the words): exact.
 * Integer addition modulo 2^64 is associative, so the order of the per-thread,
 * per-warp and per-block partial sums cannot change the result. */
#include <stdint.h>

#include "kernels/bench.h"

#define BENCH_THREADS 512
#define BENCH_UNROLL 4

__device__ __forceinline__ unsigned long long sum_words(uint4 a)
{
    return (unsigned long long)a.x + a.y + a.z + a.w;
}

__global__ void __launch_bounds__(BENCH_THREADS)
    bench_read_kernel(const uint4 *__restrict__ v, uint64_t n_vec,
                      const uint32_t *__restrict__ tail, unsigned n_tail,
                      unsigned long long *sum)
{
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long acc = 0;
    for (; i + (BENCH_UNROLL - 1) * stride < n_vec; i += BENCH_UNROLL * stride) {
        uint4 a[BENCH_UNROLL];
#pragma unroll
        for (int u = 0; u < BENCH_UNROLL; u++)
            a[u] = v[i + u * stride];
#pragma unroll
        for (int u = 0; u < BENCH_UNROLL; u++)
            acc += sum_words(a[u]);
    }
    for (; i < n_vec; i += stride)
        acc += sum_words(v[i]);
    if (blockIdx.x == 0 && threadIdx.x < n_tail)
        acc += tail[threadIdx.x];

    /* block total: warp shuffles, then the first warp over the warp totals */
    __shared__ unsigned long long part[BENCH_THREADS / 32];
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    for (int off = 16; off > 0; off >>= 1)
        acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0)
        part[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < (blockDim.x >> 5) ? part[lane] : 0;
        for (int off = 16; off > 0; off >>= 1)
            acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (lane == 0)
            atomicAdd(sum, acc);
    }
}

__global__ void __launch_bounds__(BENCH_THREADS)
    bench_copy_kernel(uint4 *__restrict__ dst, const uint4 *__restrict__ src, uint64_t n_vec,
                      uint32_t *__restrict__ dst_tail, const uint32_t *__restrict__ src_tail,
                      unsigned n_tail)
{
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + (BENCH_UNROLL - 1) * stride < n_vec; i += BENCH_UNROLL * stride) {
        uint4 a[BENCH_UNROLL];
#pragma unroll
        for (int u = 0; u < BENCH_UNROLL; u++)
            a[u] = src[i + u * stride];
#pragma unroll
        for (int u = 0; u < BENCH_UNROLL; u++)
            dst[i + u * stride] = a[u];
    }
    for (; i < n_vec; i += stride)
        dst[i] = src[i];
    if (blockIdx.x == 0 && threadIdx.x < n_tail)
        dst_tail[threadIdx.x] = src_tail[threadIdx.x];
}

static bool bench_args(const void *a, const void *b, int n_blocks, const char *what, qerr *err)
{
    if (n_blocks < 1) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "%s: n_blocks %d must be >= 1", what, n_blocks);
        return false;
    }
    if (((uintptr_t)a & 15u) || ((uintptr_t)b & 15u)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "%s: buffers must be 16-byte aligned", what);
        return false;
    }
    return true;
}

extern "C" bool qk_bench_read(const uint32_t *src, uint64_t n_words, int n_blocks,
                              unsigned long long *sum, cudaStream_t stream, qerr *err)
{
    if (!bench_args(src, NULL, n_blocks, "bench read", err))
        return false;
    if (!qk_ok(cudaMemsetAsync(sum, 0, sizeof *sum, stream), "bench read: zeroing the sum", err))
        return false;
    const uint64_t n_vec = n_words / 4;
    const unsigned n_tail = (unsigned)(n_words % 4);
    bench_read_kernel<<<n_blocks, BENCH_THREADS, 0, stream>>>(
        reinterpret_cast<const uint4 *>(src), n_vec, src + n_vec * 4, n_tail, sum);
    return qk_launched("bench read kernel", err);
}

extern "C" bool qk_bench_copy(uint32_t *dst, const uint32_t *src, uint64_t n_words, int n_blocks,
                              cudaStream_t stream, qerr *err)
{
    if (!bench_args(dst, src, n_blocks, "bench copy", err))
        return false;
    const uint64_t n_vec = n_words / 4;
    const unsigned n_tail = (unsigned)(n_words % 4);
    bench_copy_kernel<<<n_blocks, BENCH_THREADS, 0, stream>>>(
        reinterpret_cast<uint4 *>(dst), reinterpret_cast<const uint4 *>(src), n_vec,
        dst + n_vec * 4, src + n_vec * 4, n_tail);
    return qk_launched("bench copy kernel", err);
}
