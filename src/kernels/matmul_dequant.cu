/* Prefill helpers around cuBLAS (matmul.cu): weight tiles dequantized to
 * the compute dtype T into the workspace (the W_T values of src/cpu/matmul.h,
 * exactly), x converted to T, and the bias + round_to epilogue and the
 * element-wise ops folded after it (mm_post). */
#include "kernels/matmul_parts.cuh"

namespace {

constexpr int DQ_PER = 8; /* values per thread: one 16-byte store in f16/bf16 */

/* Flat element f of the weight as W_T (lut in shared memory for 4-bit;
 * *cur_b / *a cache the block's absmax between calls). */
template <int T>
__device__ __forceinline__ float dq_value(const mm_weight &w, const float *lut, uint64_t f,
                                          uint64_t *cur_b, float *a)
{
    if (w.dtype == QDT_NF4 || w.dtype == QDT_FP4) {
        unsigned byte = __ldg((const uint8_t *)w.data + (f >> 1));
        unsigned c = (f & 1) ? byte & 15u : byte >> 4;
        uint64_t b = f >> w.bs_shift;
        if (b != *cur_b) {
            *cur_b = b;
            *a = mm_block_absmax(w, b);
        }
        return mm_to<T>(__fmul_rn(lut[c], *a));
    }
    return mm_to<T>(qk_load(w.data, (qdtype)w.dtype, f));
}

/* Eight values from one aligned load (vec: f is a multiple of 8 and the
 * data aligned for it): 4 bytes of codes under one absmax (blocks are
 * multiples of 8 long), 16 bytes of f16/bf16, or 32 of f32. */
template <int T>
__device__ __forceinline__ void dq_eight(const mm_weight &w, const float *lut, uint64_t f,
                                         float v[DQ_PER])
{
    if (w.dtype == QDT_NF4 || w.dtype == QDT_FP4) {
        uint32_t c = __ldg(reinterpret_cast<const uint32_t *>((const uint8_t *)w.data + f / 2));
        float a = mm_block_absmax(w, f >> w.bs_shift);
#pragma unroll
        for (int j = 0; j < 4; j++) { /* byte j: values 2j (high nibble) and 2j+1 */
            v[2 * j] = mm_to<T>(__fmul_rn(lut[(c >> (8 * j + 4)) & 15u], a));
            v[2 * j + 1] = mm_to<T>(__fmul_rn(lut[(c >> (8 * j)) & 15u], a));
        }
    } else if (w.dtype == QDT_F32) {
        const float4 *p = reinterpret_cast<const float4 *>((const float *)w.data + f);
        float4 a = __ldg(p), b = __ldg(p + 1);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z,
        v[7] = b.w;
#pragma unroll
        for (int j = 0; j < DQ_PER; j++)
            v[j] = mm_to<T>(v[j]);
    } else {
        uint4 q = __ldg(reinterpret_cast<const uint4 *>((const uint16_t *)w.data + f));
        const uint32_t u[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (w.dtype == QDT_F16) {
                float2 h = __half22float2(*reinterpret_cast<const __half2 *>(&u[j]));
                v[2 * j] = h.x, v[2 * j + 1] = h.y;
            } else {
                v[2 * j] = __uint_as_float(u[j] << 16);
                v[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
            }
            v[2 * j] = mm_to<T>(v[2 * j]);
            v[2 * j + 1] = mm_to<T>(v[2 * j + 1]);
        }
    }
}

/* Groups of DQ_PER values per thread, their loads issued first (2 and 8
 * measured the same on an H100, docs/perf.md). */
constexpr int DQ_ITEMS = 4;
constexpr int DQ_THREADS = 256;

/* Tile geometry: groups of DQ_PER values, gpr per row, item i of the tile
 * in row i / gpr (a multiply and a shift: magic = ceil(2^shift / gpr),
 * exact for i < 2^30). */
struct dq_tile {
    uint64_t n0, k0;
    uint32_t kr, groups, gpr;
    uint64_t magic;
    int shift;
    int vec;  /* every group starts at a flat index that is a multiple of 8, data aligned */
    int ovec; /* every group's output is 16-byte aligned (kr % 8 == 0) */
};

/* Store n values of v (T values) at o, with one 16-byte store when full. */
template <int T>
__device__ __forceinline__ void dq_store(const float v[DQ_PER], int n, bool full, void *out,
                                         uint64_t e0)
{
    if constexpr (T == QDT_F32) {
        float *o = (float *)out + e0;
        if (full) {
            reinterpret_cast<float4 *>(o)[0] = make_float4(v[0], v[1], v[2], v[3]);
            reinterpret_cast<float4 *>(o)[1] = make_float4(v[4], v[5], v[6], v[7]);
        } else {
            for (int j = 0; j < n; j++)
                o[j] = v[j];
        }
    } else {
        /* v already holds T values: the conversion to 16 bits is exact */
        uint16_t h[DQ_PER];
#pragma unroll
        for (int j = 0; j < DQ_PER; j++)
            h[j] = T == QDT_F16 ? __half_as_ushort(__float2half_rn(v[j]))
                                : __bfloat16_as_ushort(__float2bfloat16_rn(v[j]));
        uint16_t *o = (uint16_t *)out + e0;
        if (full) {
            uint4 p;
            p.x = h[0] | (unsigned)h[1] << 16, p.y = h[2] | (unsigned)h[3] << 16;
            p.z = h[4] | (unsigned)h[5] << 16, p.w = h[6] | (unsigned)h[7] << 16;
            *reinterpret_cast<uint4 *>(o) = p;
        } else {
            for (int j = 0; j < n; j++)
                o[j] = h[j];
        }
    }
}

/* The tile W[n0 + r, k0 + c], r < nr, c < kr, into out[r * kr + c]. Item i
 * (a group of 8 values) of block b is b * DQ_ITEMS * DQ_THREADS + j *
 * DQ_THREADS + thread, so every store instruction of a warp writes 512
 * consecutive bytes; the 4-bit codes of all items are loaded before any is
 * decoded (memory-level parallelism: 16 bytes of codes per thread). */
template <int T>
__global__ void __launch_bounds__(DQ_THREADS)
    dequant_tile(mm_weight w, dq_tile t, void *out)
{
    __shared__ float lut[16];
    if (threadIdx.x < 16)
        lut[threadIdx.x] = w.lut[threadIdx.x];
    __syncthreads();
    const bool q4 = w.dtype == QDT_NF4 || w.dtype == QDT_FP4;
    uint32_t item[DQ_ITEMS], c[DQ_ITEMS];
    uint64_t f[DQ_ITEMS], e0[DQ_ITEMS];
    uint32_t code[DQ_ITEMS];
    float a[DQ_ITEMS];
#pragma unroll
    for (int j = 0; j < DQ_ITEMS; j++) {
        item[j] = (blockIdx.x * DQ_ITEMS + j) * DQ_THREADS + threadIdx.x;
        const uint32_t r = (uint32_t)(((uint64_t)item[j] * t.magic) >> t.shift);
        c[j] = (item[j] - r * t.gpr) * DQ_PER;
        f[j] = (t.n0 + r) * w.K + t.k0 + c[j];
        e0[j] = (uint64_t)r * t.kr + c[j];
        if (q4 && t.vec && item[j] < t.groups) {
            /* streaming loads (evict first): the codes are read once */
            code[j] = __ldcs(reinterpret_cast<const uint32_t *>((const uint8_t *)w.data + f[j] / 2));
            a[j] = mm_block_absmax(w, f[j] >> w.bs_shift);
        }
    }
#pragma unroll
    for (int j = 0; j < DQ_ITEMS; j++) {
        if (item[j] >= t.groups)
            break;
        const int n = (int)min((uint32_t)DQ_PER, t.kr - c[j]);
        float v[DQ_PER];
        if (q4 && t.vec) {
#pragma unroll
            for (int b = 0; b < 4; b++) { /* byte b: values 2b (high nibble) and 2b+1 */
                v[2 * b] = mm_to<T>(__fmul_rn(lut[(code[j] >> (8 * b + 4)) & 15u], a[j]));
                v[2 * b + 1] = mm_to<T>(__fmul_rn(lut[(code[j] >> (8 * b)) & 15u], a[j]));
            }
        } else if (t.vec && n == DQ_PER) {
            dq_eight<T>(w, lut, f[j], v);
        } else {
            uint64_t cur_b = UINT64_MAX;
            float av = 0.0f;
#pragma unroll
            for (int i = 0; i < DQ_PER; i++)
                v[i] = i < n ? dq_value<T>(w, lut, f[j] + i, &cur_b, &av) : 0.0f;
        }
        dq_store<T>(v, n, t.ovec && n == DQ_PER, out, e0[j]);
    }
}

__global__ void convert_x(const float *__restrict__ x, uint64_t count, int T, void *out)
{
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count)
        return;
    if (T == QDT_F16)
        ((__half *)out)[i] = __float2half_rn(x[i]);
    else
        ((__nv_bfloat16 *)out)[i] = __float2bfloat16_rn(x[i]);
}

__global__ void bias_round(float *y, uint64_t count, uint64_t N, mm_epi e)
{
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count)
        return;
    float v = y[i];
    if (e.bias)
        v = __fadd_rn(v, mm_bias(e, i % N));
    y[i] = mm_post(e, qk_round(v, (qdtype)e.round_to), i);
}

} /* namespace */

bool mm_dequant(const mm_weight &w, qdtype T, uint64_t n0, uint64_t nr, uint64_t k0,
                uint64_t kr, void *out, cudaStream_t s, qerr *err)
{
    const uint64_t gpr = (kr + DQ_PER - 1) / DQ_PER, groups = nr * gpr;
    if (nr == 0 || kr == 0 || groups >= ((uint64_t)1 << 30)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: dequantization tile of %llu x %llu",
                 (unsigned long long)nr, (unsigned long long)kr);
        return false;
    }
    const bool q4 = w.dtype == QDT_NF4 || w.dtype == QDT_FP4;
    dq_tile t;
    t.n0 = n0, t.k0 = k0;
    t.kr = (uint32_t)kr, t.groups = (uint32_t)groups, t.gpr = (uint32_t)gpr;
    int l = 0;
    while (((uint64_t)1 << l) < gpr)
        l++;
    t.shift = 32 + l;
    t.magic = (((uint64_t)1 << t.shift) + gpr - 1) / gpr;
    /* 4-bit vectors also need kr % 8 == 0: a group never runs past the row */
    t.vec = w.K % DQ_PER == 0 && k0 % DQ_PER == 0 && (!q4 || kr % DQ_PER == 0) &&
            (uintptr_t)w.data % (q4 ? 4 : 16) == 0;
    t.ovec = kr % DQ_PER == 0;
    const unsigned blocks = qk_div_up(groups, (uint64_t)DQ_ITEMS * DQ_THREADS);
    if (T == QDT_F16)
        dequant_tile<QDT_F16><<<blocks, DQ_THREADS, 0, s>>>(w, t, out);
    else if (T == QDT_BF16)
        dequant_tile<QDT_BF16><<<blocks, DQ_THREADS, 0, s>>>(w, t, out);
    else
        dequant_tile<QDT_F32><<<blocks, DQ_THREADS, 0, s>>>(w, t, out);
    return qk_launched("matmul: dequant_tile", err);
}

bool mm_convert_x(const float *x, uint64_t count, qdtype T, void *out, cudaStream_t s, qerr *err)
{
    convert_x<<<qk_div_up(count, 256), 256, 0, s>>>(x, count, T, out);
    return qk_launched("matmul: convert_x", err);
}

bool mm_bias_round(float *y, int m, uint64_t N, const mm_epi &e, cudaStream_t s, qerr *err)
{
    uint64_t count = (uint64_t)m * N;
    bias_round<<<qk_div_up(count, 256), 256, 0, s>>>(y, count, N, e);
    return qk_launched("matmul: bias_round", err);
}
