/* Device memory bandwidth (bandwidth.h) with the probes of
 * src/kernels/bench.h, timed with CUDA events around each launch. One
 * allocation: its halves hold the bytes 0x01 and 0x02, so the read's sum is
 * known, and after copying the first half over the second the second half's
 * sum proves the copy wrote everything. Builds without CUDA report that
 * there is no GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bandwidth.h"
#include "qrun_config.h"

#if QRUN_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "cuda/device.h"
#include "kernels/bench.h"

#define GIB ((uint64_t)1 << 30)

bool bw_gpu_usable(char *why, size_t why_size)
{
    qerr e;
    qerr_clear(&e);
    if (cuda_device_count(&e) > 0)
        return true;
    snprintf(why, why_size, "%s", e.msg[0] ? e.msg : "no CUDA device");
    return false;
}

bool bw_gpu_meminfo(uint64_t *free_bytes, uint64_t *total_bytes, qerr *err)
{
    size_t fr = 0, tot = 0;
    if (!qk_ok(cudaSetDevice(0), "cudaSetDevice", err) ||
        !qk_ok(cudaMemGetInfo(&fr, &tot), "cudaMemGetInfo", err))
        return false;
    *free_bytes = fr;
    *total_bytes = tot;
    return true;
}

/* Sum of n 32-bit words that all hold the byte b four times, modulo 2^64. */
static uint64_t pattern_sum(uint64_t n_words, unsigned b) { return n_words * (0x01010101u * b); }

typedef struct gpu_probe {
    cudaStream_t stream;
    cudaEvent_t t0, t1;
    uint32_t *buf;
    unsigned long long *sum;
    int blocks;
} gpu_probe;

/* One timed launch: the read of n words at src (when dst is NULL, checking
 * the sum against `want`) or the copy of n words from src to dst. */
static bool timed(gpu_probe *p, uint32_t *dst, const uint32_t *src, uint64_t n, uint64_t want,
                  double *seconds, qerr *err)
{
    if (!qk_ok(cudaEventRecord(p->t0, p->stream), "cudaEventRecord", err))
        return false;
    bool ok = dst ? qk_bench_copy(dst, src, n, p->blocks, p->stream, err)
                  : qk_bench_read(src, n, p->blocks, p->sum, p->stream, err);
    float ms = 0;
    if (!ok || !qk_ok(cudaEventRecord(p->t1, p->stream), "cudaEventRecord", err) ||
        !qk_ok(cudaEventSynchronize(p->t1), "bandwidth probe", err) ||
        !qk_ok(cudaEventElapsedTime(&ms, p->t0, p->t1), "cudaEventElapsedTime", err))
        return false;
    *seconds = 1e-3 * (double)ms;
    if (dst)
        return true;
    unsigned long long got = 0;
    if (!qk_ok(cudaMemcpy(&got, p->sum, sizeof got, cudaMemcpyDeviceToHost), "reading the sum",
               err))
        return false;
    if ((uint64_t)got != want)
        return qerr_set(err, QRUN_ERR_INTERNAL,
                        "GPU bandwidth: the read kernel summed %llu, expected %llu", got,
                        (unsigned long long)want) == QRUN_OK;
    return true;
}

bool bw_gpu(uint64_t bytes, int reps, bw_result *r, qerr *err)
{
    memset(r, 0, sizeof *r);
    if (reps < 1)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "GPU bandwidth: %d repetitions", reps) ==
               QRUN_OK;
    cuda_device_info dev;
    if (!qk_ok(cudaSetDevice(0), "cudaSetDevice", err) ||
        cuda_device_query(0, &dev, err) != QRUN_OK)
        return false;
    if (bytes == 0) {
        bytes = 4 * GIB;
        if (bytes > dev.free_mem / 2)
            bytes = dev.free_mem / 2;
    }
    bytes = bytes / 32 * 32; /* two halves of whole uint4s */
    if (bytes < 4096)
        return qerr_set(err, QRUN_ERR_DEVICE, "GPU bandwidth: %llu bytes free on %s",
                        (unsigned long long)dev.free_mem, dev.name) == QRUN_OK;
    const uint64_t n = bytes / 4, half = n / 2;
    gpu_probe p = {.blocks = dev.multiprocessors * 4};
    double *rates = calloc((size_t)reps * 2, sizeof *rates);
    bool ok = rates != NULL;
    if (!ok)
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
    ok = ok && qk_ok(cudaStreamCreateWithFlags(&p.stream, cudaStreamNonBlocking),
                     "cudaStreamCreate", err) &&
         qk_ok(cudaEventCreate(&p.t0), "cudaEventCreate", err) &&
         qk_ok(cudaEventCreate(&p.t1), "cudaEventCreate", err);
    if (ok && !qk_ok(cudaMalloc((void **)&p.buf, bytes), "GPU bandwidth buffer", err)) {
        qerr_prefix(err, "%.2f GiB on %s: ", (double)bytes / (double)GIB, dev.name);
        ok = false;
    }
    ok = ok && qk_ok(cudaMalloc((void **)&p.sum, sizeof *p.sum), "cudaMalloc", err) &&
         qk_ok(cudaMemsetAsync(p.buf, 0x01, half * 4, p.stream), "cudaMemset", err) &&
         qk_ok(cudaMemsetAsync(p.buf + half, 0x02, half * 4, p.stream), "cudaMemset", err);
    double s;
    const uint64_t both = pattern_sum(half, 1) + pattern_sum(half, 2);
    /* read: the whole buffer; warm-up first */
    for (int rep = -1; ok && rep < reps; rep++)
        if ((ok = timed(&p, NULL, p.buf, 2 * half, both, &s, err)) && rep >= 0)
            rates[rep] = (double)(half * 8) / s;
    /* copy: first half over the second (bytes read + bytes written) */
    for (int rep = -1; ok && rep < reps; rep++)
        if ((ok = timed(&p, p.buf + half, p.buf, half, 0, &s, err)) && rep >= 0)
            rates[reps + rep] = (double)(half * 8) / s;
    ok = ok && timed(&p, NULL, p.buf + half, half, pattern_sum(half, 1), &s, err);
    if (ok) {
        r->measured = r->has_copy = true;
        r->buffer_bytes = half * 8;
        r->reps = reps;
        r->read = summarize(rates, reps);
        r->copy = summarize(rates + reps, reps);
        snprintf(r->device, sizeof r->device, "%s", dev.name);
        r->cache_bytes = dev.l2_bytes;
    }
    /* release everything; the first error is the one reported */
    qerr later;
    qerr *e2 = ok ? err : &later;
    bool freed = (!p.buf || qk_ok(cudaFree(p.buf), "cudaFree", e2)) &
                 (!p.sum || qk_ok(cudaFree(p.sum), "cudaFree", e2)) &
                 (!p.t0 || qk_ok(cudaEventDestroy(p.t0), "cudaEventDestroy", e2)) &
                 (!p.t1 || qk_ok(cudaEventDestroy(p.t1), "cudaEventDestroy", e2)) &
                 (!p.stream || qk_ok(cudaStreamDestroy(p.stream), "cudaStreamDestroy", e2));
    free(rates);
    return ok && freed;
}

#else /* built without CUDA */

bool bw_gpu_usable(char *why, size_t why_size)
{
    snprintf(why, why_size, "this qbench was built without CUDA");
    return false;
}

bool bw_gpu(uint64_t bytes, int reps, bw_result *r, qerr *err)
{
    (void)bytes, (void)reps;
    memset(r, 0, sizeof *r);
    return qerr_set(err, QRUN_ERR_UNSUPPORTED, "this qbench was built without CUDA") == QRUN_OK;
}

bool bw_gpu_meminfo(uint64_t *free_bytes, uint64_t *total_bytes, qerr *err)
{
    *free_bytes = *total_bytes = 0;
    return qerr_set(err, QRUN_ERR_UNSUPPORTED, "this qbench was built without CUDA") == QRUN_OK;
}

#endif
