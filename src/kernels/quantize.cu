/* bitsandbytes-exact quantization on the GPU (see quantize.h).
 *
 * bitsandbytes compiles its kernels with --use_fast_math, so its "1.0f / m"
 * is rcp.approx.ftz.f32, "127.0f / m" via __fdividef is div.approx.ftz.f32,
 * and every multiply, abs and max flushes subnormals (checked by compiling
 * the same expressions with that flag and reading the PTX). This project
 * builds without fast math, so the helpers below issue those exact
 * instructions through inline PTX: the results then do not depend on our
 * compiler flags, and match bitsandbytes' on every input, subnormals, zeros
 * and NaN included.
 *
 * Work split: one warp per quantization block (4-bit), per group of 256
 * (double quant), one thread block per row (int8); grid-stride loops, so
 * any size works with a bounded grid. The split does not change a result:
 * the only reduction is a max, which does not depend on its order. */
#include <float.h>

#include "kernels/kcommon.cuh"
#include "kernels/quantize.h"

/* ---- the fast-math instructions ------------------------------------------ */

__device__ __forceinline__ float fm_rcp(float a)
{
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(a));
    return r;
}

__device__ __forceinline__ float fm_div(float a, float b)
{
    float r;
    asm("div.approx.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

/* .rn: a separate rounding, never contracted with a neighbouring add (none
 * of bitsandbytes' products feeds an add either). */
__device__ __forceinline__ float fm_mul(float a, float b)
{
    float r;
    asm("mul.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

__device__ __forceinline__ float fm_add(float a, float b)
{
    float r;
    asm("add.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

__device__ __forceinline__ float fm_abs(float a)
{
    float r;
    asm("abs.ftz.f32 %0, %1;" : "=f"(r) : "f"(a));
    return r;
}

/* The non-NaN operand when one is NaN, as fmaxf. */
__device__ __forceinline__ float fm_max(float a, float b)
{
    float r;
    asm("max.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

/* Round half to even; NaN gives 0 (__float2int_rn). */
__device__ __forceinline__ int fm_rint(float a)
{
    int r;
    asm("cvt.rni.ftz.s32.f32 %0, %1;" : "=r"(r) : "f"(a));
    return r;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fm_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Exact conversions of the source element types. */
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

/* ---- 4-bit codes ---------------------------------------------------------- */

/* The float literals of bitsandbytes' dQuantizeNF4 decision tree, sorted
 * (hex floats: several are decimal midpoints whose nearest float is easy to
 * get wrong; src/quant.c has the same table with the bit patterns). */
__constant__ float nf4_thresholds[15] = {
    -0x1.b239b2p-1f, -0x1.38a4ep-1f,  -0x1.d709p-2f,  -0x1.5bd4ecp-2f, -0x1.e079d8p-3f,
    -0x1.1a7178p-3f, -0x1.74f0e2p-5f, 0x1.45f5fep-5f, 0x1.ec90c6p-4f,  0x1.a0cfcp-3f,
    0x1.2b05a8p-2f,  0x1.8ea7f2p-2f,  0x1.00da06p-1f, 0x1.491b5ep-1f,  0x1.b913b2p-1f,
};

/* dQuantizeFP4's magnitude thresholds, sorted. */
__constant__ float fp4_thresholds[7] = {
    0x1.555572p-9f, 0x1.6p-4f, 0x1.aaaaaap-3f, 0x1.2aaaaap-2f,
    0x1.aaaaacp-2f, 0x1.2aaaap-1f, 0x1.aaaaaap-1f,
};

/* The CUDA decision trees compare with strict '>' against sorted
 * thresholds, so the code is the number of thresholds below s; NaN compares
 * false everywhere and gets 0. */
__device__ __forceinline__ unsigned nf4_code(float s)
{
    unsigned c = 0;
#pragma unroll
    for (int k = 0; k < 15; k++)
        c += s > nf4_thresholds[k];
    return c;
}

__device__ __forceinline__ unsigned fp4_code(float s)
{
    float a = fm_abs(s);
    unsigned rank = 0;
#pragma unroll
    for (int k = 0; k < 7; k++)
        rank += a > fp4_thresholds[k];
    /* magnitude rank -> bits 000 001 110 111 100 101 010 011: flip bit 2
     * where bit 1 is set. The sign is (s < 0): false for -0.0 and NaN. */
    unsigned bits = rank ^ ((rank & 2u) << 1);
    return bits | ((unsigned)(s < 0.0f) << 3);
}

template <int TYPE> __device__ __forceinline__ unsigned code4(float s)
{
    return TYPE == QUANT_NF4 ? nf4_code(s) : fp4_code(s);
}

/* ---- blockwise 4-bit ------------------------------------------------------- */

template <typename T, int TYPE>
__global__ void quantize_4bit_kernel(const T *__restrict__ x, uint64_t n, int bs,
                                     uint64_t nblocks, uint8_t *__restrict__ packed,
                                     float *__restrict__ absmax)
{
    const unsigned lane = threadIdx.x & 31u;
    const uint64_t warps_per_cta = blockDim.x / 32u;
    const uint64_t stride = (uint64_t)gridDim.x * warps_per_cta;
    for (uint64_t b = blockIdx.x * warps_per_cta + threadIdx.x / 32u; b < nblocks; b += stride) {
        const uint64_t start = b * (uint64_t)bs;
        const uint64_t len = n - start < (uint64_t)bs ? n - start : (uint64_t)bs;
        const T *xb = x + start;
        /* bitsandbytes' max starts at -FLT_MAX, and a partial block's
         * zero padding takes part in it (so an all-NaN full block keeps
         * -FLT_MAX, a partial one gets 0). abs flushes subnormals. */
        float m = len < (uint64_t)bs ? 0.0f : -FLT_MAX;
        for (uint64_t i = lane; i < len; i += 32)
            m = fm_max(m, fm_abs(to_f32(xb[i])));
        m = warp_max(m);
        if (lane == 0)
            absmax[b] = m;
        /* 0 * rcp(0) = 0 * inf = NaN: an all-zero block codes to 0. */
        const float r = fm_rcp(m);
        uint8_t *pb = packed + start / 2; /* bs is even: blocks start on a byte */
        const uint64_t nbytes = (len + 1) / 2;
        for (uint64_t j = lane; j < nbytes; j += 32) {
            float v0 = to_f32(xb[2 * j]);
            float v1 = 2 * j + 1 < len ? to_f32(xb[2 * j + 1]) : 0.0f; /* padding is 0 */
            pb[j] = (uint8_t)((code4<TYPE>(fm_mul(v0, r)) << 4) | code4<TYPE>(fm_mul(v1, r)));
        }
    }
}

template <typename T>
static void launch_4bit(quant_4bit_type type, const void *x, uint64_t n, int bs, uint64_t nb,
                        uint8_t *packed, float *absmax, cudaStream_t s)
{
    const int threads = 256; /* 8 warps, 8 blocks per CTA pass */
    uint64_t ctas = (nb + 7) / 8;
    unsigned grid = (unsigned)(ctas < 65535 ? ctas : 65535);
    if (type == QUANT_NF4)
        quantize_4bit_kernel<T, QUANT_NF4>
            <<<grid, threads, 0, s>>>((const T *)x, n, bs, nb, packed, absmax);
    else
        quantize_4bit_kernel<T, QUANT_FP4>
            <<<grid, threads, 0, s>>>((const T *)x, n, bs, nb, packed, absmax);
}

extern "C" bool qk_quantize_4bit(quant_4bit_type type, const void *x, qdtype x_dt, uint64_t n,
                                 int blocksize, uint8_t *packed, float *absmax, cudaStream_t s,
                                 qerr *err)
{
    if (!quant_blocksize_valid(blocksize) || (type != QUANT_NF4 && type != QUANT_FP4)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qk_quantize_4bit: type %d, blocksize %d",
                 (int)type, blocksize);
        return false;
    }
    if (n == 0)
        return true;
    if (!x || !packed || !absmax) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qk_quantize_4bit: null pointer");
        return false;
    }
    uint64_t nb = quant_nblocks(n, blocksize);
    switch (x_dt) {
    case QDT_F32: launch_4bit<float>(type, x, n, blocksize, nb, packed, absmax, s); break;
    case QDT_F16: launch_4bit<__half>(type, x, n, blocksize, nb, packed, absmax, s); break;
    case QDT_BF16: launch_4bit<__nv_bfloat16>(type, x, n, blocksize, nb, packed, absmax, s); break;
    default:
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qk_quantize_4bit: source dtype %s",
                 qdtype_name(x_dt));
        return false;
    }
    return qk_launched("qk_quantize_4bit", err);
}

/* ---- double quantization --------------------------------------------------- */

/* bitsandbytes' dQuantize (non-stochastic) on a sorted 256-entry map: a
 * 7-step binary search over the pivots 127 +- 64 +- 32 ... +- 1 that
 * remembers the last pivot passed on each side, then a comparison with the
 * midpoint towards that side. The search always ends on an even index and
 * keeps it when s is exactly on the midpoint, which is why ties go to the
 * even index (quant.h). NaN goes left every time and ends at index 0. */
__device__ __forceinline__ unsigned dq_code(const float *map, float s)
{
    int pivot = 127, below = 0, above = 255;
    float v = map[pivot];
    for (int step = 64; step > 0; step >>= 1) {
        if (s > v) {
            below = pivot;
            pivot += step;
        } else {
            above = pivot;
            pivot -= step;
        }
        v = map[pivot];
    }
    if (s > v) {
        float mid = fm_mul(fm_add(map[above], v), 0.5f);
        return s > mid ? (unsigned)above : (unsigned)pivot;
    }
    float mid = fm_mul(fm_add(map[below], v), 0.5f);
    return s < mid ? (unsigned)below : (unsigned)pivot;
}

#define DQ_PER_LANE (QUANT_DQ_BLOCKSIZE / 32)

__global__ void quantize_dq_kernel(const float *__restrict__ absmax, uint64_t nb, float offset,
                                   const float *__restrict__ map, uint8_t *__restrict__ qabsmax,
                                   float *__restrict__ absmax2)
{
    __shared__ float code[256];
    for (int i = threadIdx.x; i < 256; i += blockDim.x)
        code[i] = map[i];
    __syncthreads();

    const unsigned lane = threadIdx.x & 31u;
    const uint64_t warps_per_cta = blockDim.x / 32u;
    const uint64_t ng = (nb + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
    const uint64_t stride = (uint64_t)gridDim.x * warps_per_cta;
    for (uint64_t g = blockIdx.x * warps_per_cta + threadIdx.x / 32u; g < ng; g += stride) {
        const uint64_t start = g * QUANT_DQ_BLOCKSIZE;
        const uint64_t len = nb - start < QUANT_DQ_BLOCKSIZE ? nb - start : QUANT_DQ_BLOCKSIZE;
        /* torch's absmax - offset: an IEEE subtraction (torch is not built
         * with fast math), then bitsandbytes' 8-bit blockwise quantizer. */
        float c[DQ_PER_LANE];
        float m = len < QUANT_DQ_BLOCKSIZE ? 0.0f : -FLT_MAX;
#pragma unroll
        for (int k = 0; k < DQ_PER_LANE; k++) {
            uint64_t i = lane + 32u * (unsigned)k;
            c[k] = i < len ? __fsub_rn(absmax[start + i], offset) : 0.0f;
            if (i < len)
                m = fm_max(m, fm_abs(c[k]));
        }
        m = warp_max(m);
        if (lane == 0)
            absmax2[g] = m;
        const float r = fm_rcp(m);
#pragma unroll
        for (int k = 0; k < DQ_PER_LANE; k++) {
            uint64_t i = lane + 32u * (unsigned)k;
            if (i < len)
                qabsmax[start + i] = (uint8_t)dq_code(code, fm_mul(c[k], r));
        }
    }
}

extern "C" bool qk_quantize_dq(const float *absmax, uint64_t nblocks, float offset,
                               const float *map, uint8_t *qabsmax, float *absmax2,
                               cudaStream_t s, qerr *err)
{
    if (nblocks == 0)
        return true;
    if (!absmax || !map || !qabsmax || !absmax2) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qk_quantize_dq: null pointer");
        return false;
    }
    uint64_t ng = (nblocks + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
    uint64_t ctas = (ng + 7) / 8;
    unsigned grid = (unsigned)(ctas < 65535 ? ctas : 65535);
    quantize_dq_kernel<<<grid, 256, 0, s>>>(absmax, nblocks, offset, map, qabsmax, absmax2);
    return qk_launched("qk_quantize_dq", err);
}

/* ---- LLM.int8 rows --------------------------------------------------------- */

/* The f16 value of a source element, as f32 (Int8Params quantizes w.half()). */
__device__ __forceinline__ float as_f16(float v) { return __half2float(__float2half_rn(v)); }
__device__ __forceinline__ float as_f16(__half v) { return __half2float(v); }
__device__ __forceinline__ float as_f16(__nv_bfloat16 v)
{
    return __half2float(__float2half_rn(__bfloat162float(v)));
}

#define INT8_THREADS 256

template <typename T>
__global__ void quantize_int8_rows_kernel(const T *__restrict__ w, uint64_t rows, uint64_t cols,
                                          int8_t *__restrict__ cb, float *__restrict__ scb)
{
    __shared__ float warp_m[INT8_THREADS / 32];
    __shared__ float row_m;
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x / 32u;
    for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T *wr = w + r * cols;
        /* kInt8VectorQuant starts each thread at half(-FLT_MIN) = -0.0 and
         * takes fmaxf with every |w|; no padding takes part. */
        float m = -0.0f;
        for (uint64_t c = threadIdx.x; c < cols; c += INT8_THREADS)
            m = fm_max(m, fm_abs(as_f16(wr[c])));
        m = warp_max(m);
        if (lane == 0)
            warp_m[warp] = m;
        __syncthreads();
        if (warp == 0) {
            m = lane < INT8_THREADS / 32 ? warp_m[lane] : warp_m[0];
            m = warp_max(m);
            if (lane == 0) {
                row_m = m;
                scb[r] = m;
            }
        }
        __syncthreads();
        const float scale = fm_div(127.0f, row_m); /* __fdividef: zero row -> inf */
        int8_t *cr = cb + r * cols;
        for (uint64_t c = threadIdx.x; c < cols; c += INT8_THREADS)
            cr[c] = (int8_t)fm_rint(fm_mul(as_f16(wr[c]), scale)); /* 0 * inf = NaN -> 0 */
        __syncthreads(); /* row_m and warp_m are rewritten for the next row */
    }
}

extern "C" bool qk_quantize_int8_rows(const void *w, qdtype w_dt, uint64_t rows, uint64_t cols,
                                      int8_t *cb, float *scb, cudaStream_t s, qerr *err)
{
    if (rows == 0)
        return true;
    if (!w || !cb || !scb) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qk_quantize_int8_rows: null pointer");
        return false;
    }
    unsigned grid = (unsigned)(rows < 65535 ? rows : 65535);
    switch (w_dt) {
    case QDT_F32:
        quantize_int8_rows_kernel<<<grid, INT8_THREADS, 0, s>>>((const float *)w, rows, cols, cb,
                                                               scb);
        break;
    case QDT_F16:
        quantize_int8_rows_kernel<<<grid, INT8_THREADS, 0, s>>>((const __half *)w, rows, cols, cb,
                                                               scb);
        break;
    case QDT_BF16:
        quantize_int8_rows_kernel<<<grid, INT8_THREADS, 0, s>>>((const __nv_bfloat16 *)w, rows,
                                                               cols, cb, scb);
        break;
    default:
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qk_quantize_int8_rows: source dtype %s",
                 qdtype_name(w_dt));
        return false;
    }
    return qk_launched("qk_quantize_int8_rows", err);
}
