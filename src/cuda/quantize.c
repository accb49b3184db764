/* The converter's GPU quantizer (see quantize.h): staging and transfers
 * around the kernels of src/kernels/quantize.h, and torch's mean for the
 * double-quant offset. */
#include "cuda/quantize.h"

#include <cuda_runtime_api.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/device.h"
#include "kernels/qk.h"
#include "kernels/quantize.h"

/* The mean below must be evaluated in single f32 operations. */
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0 && FLT_EVAL_METHOD != -1
#error "cuda/quantize.c needs FLT_EVAL_METHOD == 0"
#endif

struct cuda_quantizer {
    int device;
    int multiprocessors;
    int max_threads_per_mp;
    char name[256];
    cudaStream_t stream;
    float *d_map;              /* quant_dynamic_map on the device */
    void *d_in, *h_in;         /* source values */
    void *d_out, *h_out;       /* codes */
    float *d_stat, *h_stat;    /* absmax / absmax2 / scb */
    size_t in_cap, out_cap, stat_cap; /* bytes, bytes, floats */
};

/* ---- buffers ------------------------------------------------------------ */

/* Device and pinned host buffers of `bytes` each, replacing smaller ones. */
static bool grow_pair(void **dev, void **host, size_t *cap, size_t bytes, const char *what,
                      qerr *err)
{
    if (bytes <= *cap)
        return true;
    if (bytes < 2 * *cap) /* grow geometrically: rows of varying length */
        bytes = 2 * *cap;
    if (*dev && !qk_ok(cudaFree(*dev), "cudaFree", err))
        return false;
    if (*host && !qk_ok(cudaFreeHost(*host), "cudaFreeHost", err))
        return false;
    *dev = *host = NULL;
    *cap = 0;
    if (!qk_ok(cudaMalloc(dev, bytes), what, err) ||
        !qk_ok(cudaMallocHost(host, bytes), what, err))
        return false;
    *cap = bytes;
    return true;
}

static bool reserve(cuda_quantizer *q, size_t in_bytes, size_t out_bytes, size_t stats,
                    qerr *err)
{
    size_t stat_bytes = q->stat_cap * sizeof(float);
    bool ok = grow_pair(&q->d_in, &q->h_in, &q->in_cap, in_bytes, "GPU quantizer input buffer",
                        err) &&
              grow_pair(&q->d_out, &q->h_out, &q->out_cap, out_bytes,
                        "GPU quantizer output buffer", err) &&
              grow_pair((void **)&q->d_stat, (void **)&q->h_stat, &stat_bytes,
                        stats * sizeof(float), "GPU quantizer scale buffer", err);
    q->stat_cap = stat_bytes / sizeof(float);
    return ok;
}

static size_t dtype_size(qdtype dt) { return dt == QDT_F32 ? 4 : 2; }

static bool source_dtype_ok(qdtype dt, const char *what, qerr *err)
{
    if (dt == QDT_F32 || dt == QDT_F16 || dt == QDT_BF16)
        return true;
    qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "%s: source dtype %s (f32, f16 or bf16)", what,
             qdtype_name(dt));
    return false;
}

cuda_quantizer *cuda_quantizer_create(uint64_t elems, qerr *err)
{
    if (cuda_device_count(err) <= 0) {
        qerr_prefix(err, "GPU quantizer: ");
        return NULL;
    }
    cuda_quantizer *q = calloc(1, sizeof *q);
    if (!q) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "GPU quantizer: no memory");
        return NULL;
    }
    struct cudaDeviceProp p;
    bool ok = qk_ok(cudaSetDevice(q->device), "cudaSetDevice(0)", err) &&
              qk_ok(cudaGetDeviceProperties(&p, q->device), "cudaGetDeviceProperties", err);
    if (ok) {
        memcpy(q->name, p.name, sizeof q->name - 1);
        q->multiprocessors = p.multiProcessorCount;
        q->max_threads_per_mp = p.maxThreadsPerMultiProcessor;
        ok = qk_ok(cudaStreamCreateWithFlags(&q->stream, cudaStreamNonBlocking),
                   "cudaStreamCreate", err) &&
             qk_ok(cudaMalloc((void **)&q->d_map, sizeof quant_dynamic_map),
                   "GPU quantizer map", err) &&
             qk_ok(cudaMemcpy(q->d_map, quant_dynamic_map, sizeof quant_dynamic_map,
                              cudaMemcpyHostToDevice),
                   "GPU quantizer map upload", err);
    }
    /* f32 in; at most one byte per element out; one scale per 32 elements */
    uint64_t n = elems ? elems : 1;
    ok = ok && reserve(q, n * 4, n, n / 32 + 1, err);
    if (!ok) {
        qerr scratch;
        cuda_quantizer_free(q, &scratch); /* the first error is the one to report */
        return NULL;
    }
    return q;
}

bool cuda_quantizer_free(cuda_quantizer *q, qerr *err)
{
    if (!q)
        return true;
    /* Release everything even after a failure; report the first one. */
    bool ok = true;
    ok = qk_ok(cudaSetDevice(q->device), "cudaSetDevice", err) && ok;
    if (q->stream)
        ok = qk_ok(cudaStreamDestroy(q->stream), "cudaStreamDestroy", ok ? err : NULL) && ok;
    void *dev[] = {q->d_map, q->d_in, q->d_out, q->d_stat};
    void *host[] = {q->h_in, q->h_out, q->h_stat};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i])
            ok = qk_ok(cudaFree(dev[i]), "cudaFree", ok ? err : NULL) && ok;
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        if (host[i])
            ok = qk_ok(cudaFreeHost(host[i]), "cudaFreeHost", ok ? err : NULL) && ok;
    free(q);
    return ok;
}

const char *cuda_quantizer_device_name(const cuda_quantizer *q) { return q->name; }

/* ---- operations ---------------------------------------------------------- */

static bool upload(cuda_quantizer *q, const void *src, size_t bytes, qerr *err)
{
    memcpy(q->h_in, src, bytes);
    return qk_ok(cudaMemcpyAsync(q->d_in, q->h_in, bytes, cudaMemcpyHostToDevice, q->stream),
                 "GPU quantizer upload", err);
}

/* Queue the copies of `out_bytes` codes and `stats` floats back to the
 * pinned buffers, wait, and hand them to the caller. */
static bool download(cuda_quantizer *q, void *out, size_t out_bytes, float *stat, size_t stats,
                     qerr *err)
{
    if (!qk_ok(cudaMemcpyAsync(q->h_out, q->d_out, out_bytes, cudaMemcpyDeviceToHost, q->stream),
               "GPU quantizer download", err) ||
        !qk_ok(cudaMemcpyAsync(q->h_stat, q->d_stat, stats * sizeof(float),
                               cudaMemcpyDeviceToHost, q->stream),
               "GPU quantizer download", err) ||
        !qk_ok(cudaStreamSynchronize(q->stream), "GPU quantizer", err))
        return false;
    memcpy(out, q->h_out, out_bytes);
    memcpy(stat, q->h_stat, stats * sizeof(float));
    return true;
}

bool cuda_quantizer_4bit(cuda_quantizer *q, quant_4bit_type type, qdtype x_dt, const void *x,
                         uint64_t n, int blocksize, uint8_t *packed, float *absmax, qerr *err)
{
    if (!source_dtype_ok(x_dt, "GPU 4-bit quantizer", err))
        return false;
    if (!quant_blocksize_valid(blocksize)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "GPU 4-bit quantizer: blocksize %d", blocksize);
        return false;
    }
    if (n == 0)
        return true;
    uint64_t nb = quant_nblocks(n, blocksize);
    size_t in_bytes = (size_t)n * dtype_size(x_dt), out_bytes = (size_t)(n / 2 + (n & 1));
    return qk_ok(cudaSetDevice(q->device), "cudaSetDevice", err) &&
           reserve(q, in_bytes, out_bytes, (size_t)nb, err) && upload(q, x, in_bytes, err) &&
           qk_quantize_4bit(type, q->d_in, x_dt, n, blocksize, q->d_out, q->d_stat, q->stream,
                            err) &&
           download(q, packed, out_bytes, absmax, (size_t)nb, err);
}

float cuda_quantizer_dq_offset(const cuda_quantizer *q, const float *absmax, uint64_t nblocks)
{
    return cuda_torch_mean_f32(absmax, nblocks, q->multiprocessors, q->max_threads_per_mp);
}

bool cuda_quantizer_dq(cuda_quantizer *q, const float *absmax, uint64_t nblocks, float offset,
                       uint8_t *qabsmax, float *absmax2, qerr *err)
{
    if (nblocks == 0)
        return true;
    uint64_t ng = quant_nblocks(nblocks, QUANT_DQ_BLOCKSIZE);
    size_t in_bytes = (size_t)nblocks * sizeof(float);
    return qk_ok(cudaSetDevice(q->device), "cudaSetDevice", err) &&
           reserve(q, in_bytes, (size_t)nblocks, (size_t)ng, err) &&
           upload(q, absmax, in_bytes, err) &&
           qk_quantize_dq(q->d_in, nblocks, offset, q->d_map, q->d_out, q->d_stat, q->stream,
                          err) &&
           download(q, qabsmax, (size_t)nblocks, absmax2, (size_t)ng, err);
}

bool cuda_quantizer_int8_rows(cuda_quantizer *q, qdtype w_dt, const void *w, uint64_t rows,
                              uint64_t cols, int8_t *cb, float *scb, qerr *err)
{
    if (!source_dtype_ok(w_dt, "GPU int8 quantizer", err))
        return false;
    if (rows == 0)
        return true;
    size_t n = (size_t)(rows * cols);
    size_t in_bytes = n * dtype_size(w_dt);
    return qk_ok(cudaSetDevice(q->device), "cudaSetDevice", err) &&
           reserve(q, in_bytes ? in_bytes : 1, n ? n : 1, (size_t)rows, err) &&
           upload(q, w, in_bytes, err) &&
           qk_quantize_int8_rows(q->d_in, w_dt, rows, cols, (int8_t *)q->d_out, q->d_stat,
                                 q->stream, err) &&
           download(q, cb, n, scb, (size_t)rows, err);
}

/* ---- torch's f32 mean ----------------------------------------------------- */

/* Largest power of two <= n (n >= 1). */
static uint64_t floor_pow2(uint64_t n)
{
    uint64_t p = 1;
    while (p * 2 <= n)
        p *= 2;
    return p;
}

/* One thread's sum: its accumulators, each fed in load order, then combined
 * left to right. Vectorized: thread `t` (index in float4s) walks the float4s
 * t, t + stride, ...; the n % 4 tail elements go to the accumulator 0 of the
 * first threads of the first block. Scalar: four interleaved accumulators
 * over t, t + stride, t + 2 stride, t + 3 stride, then the same for the
 * partial last round. */
static float thread_sum(const float *x, uint64_t n, bool vec, uint64_t t, uint64_t stride,
                        unsigned lane, bool first_block)
{
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    uint64_t i = t;
    if (vec) {
        for (; i * 4 + 3 < n; i += stride)
            for (int k = 0; k < 4; k++)
                acc[k] += x[i * 4 + k];
        uint64_t tail = n - n % 4;
        if (first_block && tail + lane < n)
            acc[0] += x[tail + lane];
    } else {
        for (; i + 3 * stride < n; i += 4 * stride)
            for (int k = 0; k < 4; k++)
                acc[k] += x[i + (uint64_t)k * stride];
        for (int k = 0; k < 4 && i < n; k++, i += stride)
            acc[k] += x[i];
    }
    return ((acc[0] + acc[1]) + acc[2]) + acc[3];
}

/* A block's tree over its lanes' values v[0..width) (width a power of two):
 * halving through shared memory down to a warp, then shuffles with offsets
 * 16, 8, ..., 1; lane 0's value. Overwrites v. */
static float block_sum(float *v, uint64_t width)
{
    uint64_t w = width;
    for (; w > 32; w /= 2)
        for (uint64_t l = 0; l < w / 2; l++)
            v[l] += v[l + w / 2];
    for (uint64_t off = w / 2; off > 0; off /= 2)
        for (uint64_t l = 0; l < off; l++)
            v[l] += v[l + off];
    return v[0];
}

float cuda_torch_mean_f32(const float *x, uint64_t n, int multiprocessors,
                          int max_threads_per_multiprocessor)
{
    if (n == 0)
        return NAN;
    /* setReduceConfig for a 1-D contiguous input reduced to one output. */
    const uint64_t max_threads = 512;
    bool vec = n >= 128;
    uint64_t dim0 = vec ? n / 4 : n;
    uint64_t width = dim0 < max_threads ? floor_pow2(dim0) : max_threads; /* block is width x 1 */
    uint64_t per_thread = (n + width - 1) / width;
    uint64_t blocks = 1;
    if (per_thread >= 256) {
        /* enough work per thread: split over blocks, a global reduction */
        uint64_t per_mp = (uint64_t)(max_threads_per_multiprocessor > 0
                                         ? max_threads_per_multiprocessor : 2048) / width;
        uint64_t target = (uint64_t)(multiprocessors > 0 ? multiprocessors : 1) * per_mp;
        uint64_t lo = (per_thread + 255) / 256, hi = (per_thread + 15) / 16;
        blocks = target < lo ? lo : target > hi ? hi : target;
    }
    float lanes[512], partial[512];
    for (uint64_t l = 0; l < width; l++)
        partial[l] = 0.0f;
    float sum = 0.0f;
    for (uint64_t b = 0; b < blocks; b++) {
        for (uint64_t l = 0; l < width; l++)
            lanes[l] = thread_sum(x, n, vec, l + b * width, width * blocks, (unsigned)l, b == 0);
        float s = block_sum(lanes, width);
        if (blocks == 1)
            sum = s;
        else /* the last block gathers block results b into lane b % width, in order */
            partial[b % width] += s;
    }
    if (blocks > 1)
        sum = block_sum(partial, width);
    float factor = 1.0f / (float)n;
    return sum * factor;
}
