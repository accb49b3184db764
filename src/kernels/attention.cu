/* KV cache stores and causal attention on the GPU (contract: attention.h;
 * reference: cpu_kv_store and cpu_attention in src/cpu/ops.c).
 *
 * Two attention paths, both f32 math on CUDA cores:
 *  - split (decode, and batches of at most ATTN_SPLIT_MAX_N tokens): the key
 *    sequence is cut into fixed chunks of SPLIT_CHUNK positions; one block
 *    takes one chunk for up to SPLIT_MAX_HG query heads of one KV head, so
 *    grouped-query heads read each K/V row once. A block writes its partial
 *    softmax (chunk maximum, sum of weights, unnormalized output) to scratch;
 *    a merge kernel combines the chunks in ascending order. The grid depends
 *    on n_ctx and the head counts only; blocks whose chunk starts past the
 *    token's position exit at once, and the merge reads only the chunks
 *    below the position, so nothing needs to be written for them.
 *  - tiled (prefill): a block holds TILE_Q queries of one head in shared
 *    memory and walks the visible keys TILE_K at a time with an online
 *    softmax (FlashAttention's recurrence, written here from the math).
 *
 * Numerics follow the CPU: s_j = dot(q, k_j) * (1/sqrt(D)), then + the ALiBi
 * bias rounded exactly as cpu_alibi_bias (multiply and add kept separate so
 * the compiler cannot fuse them into one differently rounded FMA); softmax in
 * f32 with the maximum subtracted; out = act(acc * (1/sum)). Only the order
 * of the f32 sums differs from the CPU (see the test's bound).
 *
 * Keys past the token's position are never read into a sum: the cache there
 * holds whatever the last sequence or the allocator left (NaN included). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "kernels/attention.h"
#include "kernels/kcommon.cuh"

/* Largest head_dim the kernels handle: the split path keeps a thread's
 * 8-column slice per head in registers (D/8 <= 32 threads per key row) and
 * the tiled path's widest variant covers 256 columns. */
#define ATTN_MAX_HEAD_DIM 256

/* ---- split path constants ----------------------------------------------- */
/* Batches up to this many tokens take the split path (when the scratch has
 * room for them): with so few queries a tile of TILE_Q would sit mostly idle
 * while one block per head walks the whole context. */
#define ATTN_SPLIT_MAX_N 4
/* Keys per chunk == threads per block: in the score phase each thread owns
 * one key. 128 keeps many blocks in flight at a few thousand positions while
 * the merge stays short (n_ctx / 128 partials per head). */
#define SPLIT_CHUNK 128
#define SPLIT_THREADS SPLIT_CHUNK
#define SPLIT_WARPS (SPLIT_THREADS / 32)
/* At most this many query heads of one KV head per block: their scores are
 * per-thread registers and their 8-column accumulators 8 * HG registers. */
#define SPLIT_MAX_HG 8

/* ---- tiled path constants ----------------------------------------------- */
#define TILE_Q 64
#define TILE_K 64
#define TILE_THREADS 256 /* 16 x 16: a thread owns 4 query rows x 4 keys */
#define P_STRIDE (TILE_K + 4) /* row stride of the probability tile */

/* ---- shared device helpers ---------------------------------------------- */

__device__ __forceinline__ float bf16_round(float x)
{
    return __bfloat162float(__float2bfloat16_rn(x));
}

/* cpu_alibi_bias: act(act(bf16(bf16(slope) * bf16(j))) / f32(sqrt(D))). */
__device__ __forceinline__ float alibi_bias(float slope, int j, float sqrt_d, qdtype act)
{
    float a = bf16_round(__fmul_rn(bf16_round(slope), bf16_round((float)j)));
    a = qk_round(a, act);
    return qk_round(__fdiv_rn(a, sqrt_d), act);
}

/* The scaled score, with the bias added as a separate rounding (as the CPU
 * does: s = dot * scale; s += bias). */
__device__ __forceinline__ float scaled_score(float dot, float scale, bool alibi, float slope, int j,
                                              float sqrt_d, qdtype act)
{
    float s = __fmul_rn(dot, scale);
    if (alibi)
        s = __fadd_rn(s, alibi_bias(slope, j, sqrt_d, act));
    return s;
}

__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(float x) { return x; }

/* x[0..8) = row[d0 .. d0+8) as f32. VEC: one 16-byte load (f16) or two (f32);
 * the caller guarantees row + d0 is 16-byte aligned and d0 + 8 <= D.
 * Otherwise element loads, zero past D. */
template <typename T, bool VEC>
__device__ __forceinline__ void load8(const T *__restrict__ row, int d0, int D, float (&x)[8])
{
    if constexpr (VEC && sizeof(T) == 2) {
        uint4 u = __ldg(reinterpret_cast<const uint4 *>(row + d0));
        const __half2 *h = reinterpret_cast<const __half2 *>(&u);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 f = __half22float2(h[i]);
            x[2 * i] = f.x;
            x[2 * i + 1] = f.y;
        }
    } else if constexpr (VEC) {
        const float4 *p = reinterpret_cast<const float4 *>(row + d0);
        float4 a = __ldg(p), b = __ldg(p + 1);
        x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w;
        x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++)
            x[i] = d0 + i < D ? to_f32(row[d0 + i]) : 0.0f;
    }
}

/* ---- KV store ------------------------------------------------------------ */

__device__ __forceinline__ void store_elem(__half *p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void store_elem(float *p, float x) { *p = x; }

/* Block (t, g): token t's K and V rows of KV head g. Positions outside the
 * cache are skipped rather than written out of bounds (the engine refuses
 * them on the host; this only keeps a bad step from corrupting memory). */
template <typename T>
__global__ void kv_store_kernel(T *__restrict__ kc, T *__restrict__ vc, int n_ctx, int D,
                                const qk_step *__restrict__ step, const float *__restrict__ k,
                                int ld_k, const float *__restrict__ v, int ld_v)
{
    qk_wait_prior(); /* a programmatic dependent: the kernel before is done */
    qk_launch_dependents();
    const int t = blockIdx.x, g = blockIdx.y;
    const int pos = step->p0 + t;
    if (pos < 0 || pos >= n_ctx)
        return;
    const size_t dst = ((size_t)g * (size_t)n_ctx + (size_t)pos) * (size_t)D;
    const float *ks = k + (size_t)t * (size_t)ld_k + (size_t)g * (size_t)D;
    const float *vs = v + (size_t)t * (size_t)ld_v + (size_t)g * (size_t)D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        store_elem(kc + dst + d, ks[d]);
        store_elem(vc + dst + d, vs[d]);
    }
}

/* ---- split path ----------------------------------------------------------- */

/* Scratch layout: (m, l) pairs then the unnormalized outputs, both indexed by
 * ((t * n_heads + head) * n_chunks + chunk). */
static size_t split_ml_bytes(size_t parts) { return (parts * sizeof(float2) + 255) / 256 * 256; }

static size_t split_scratch_bytes(int n, int n_heads, int n_ctx, int head_dim)
{
    size_t parts = (size_t)n * (size_t)n_heads * qk_div_up((uint64_t)n_ctx, SPLIT_CHUNK);
    return split_ml_bytes(parts) + parts * (size_t)head_dim * sizeof(float);
}

/* Block (chunk, KV head g and head block hb, token t). T: cache element type;
 * HG: query heads per block (the group's heads hb*HG .. +HG, zero queries
 * standing in for heads past the group); VEC: 16-byte K/V loads. */
template <typename T, int HG, bool VEC>
__global__ void __launch_bounds__(SPLIT_THREADS)
    attn_split_kernel(const float *__restrict__ q, int ld_q, const qk_step *__restrict__ step,
                      int n_heads, int group, int hblocks, const T *__restrict__ kc,
                      const T *__restrict__ vc, int n_ctx, int D,
                      const float *__restrict__ slopes, qdtype act, float scale, float sqrt_d,
                      int n_chunks, float2 *__restrict__ part_ml, float *__restrict__ part_acc)
{
    qk_wait_prior(); /* a programmatic dependent: the kernel before is done */
    qk_launch_dependents();
    /* qs (the queries, score phase) and red (the per-thread output slices,
     * after the value phase) are never live together: one buffer. */
    constexpr int RED_STRIDE = HG * 8 + 1; /* odd: conflict-free columns */
    constexpr int BUF = HG * ATTN_MAX_HEAD_DIM > SPLIT_THREADS * RED_STRIDE
                            ? HG * ATTN_MAX_HEAD_DIM
                            : SPLIT_THREADS * RED_STRIDE;
    __shared__ __align__(16) float buf[BUF];
    __shared__ float ws[HG][SPLIT_CHUNK];
    __shared__ float wred[HG][SPLIT_WARPS];

    const int chunk = blockIdx.x;
    const int g = blockIdx.y / hblocks, hb = blockIdx.y % hblocks;
    const int t = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int p = step->p0 + t;
    const int c0 = chunk * SPLIT_CHUNK;
    if (c0 > p)
        return; /* past the token: the merge never reads this chunk */
    int nvalid = min(SPLIT_CHUNK, p - c0 + 1);
    nvalid = min(nvalid, n_ctx - c0);
    const int nh = min(HG, group - hb * HG); /* real heads in this block */
    const int head0 = g * group + hb * HG;
    const int D8 = (D + 7) & ~7;
    const size_t kv_head = (size_t)g * (size_t)n_ctx;

    /* queries, zero-padded to D8 columns and HG heads */
    float *qs = buf; /* [HG][D8] */
    for (int i = tid; i < HG * D8; i += SPLIT_THREADS) {
        int h = i / D8, d = i - h * D8;
        qs[i] = h < nh && d < D ? q[(size_t)t * (size_t)ld_q + (size_t)(head0 + h) * (size_t)D + d]
                                : 0.0f;
    }
    __syncthreads();

    /* scores: thread j owns key c0 + j */
    float s[HG];
    {
        const int j = tid;
        if (j < nvalid) {
            const T *krow = kc + (kv_head + (size_t)(c0 + j)) * (size_t)D;
            float acc[HG];
#pragma unroll
            for (int h = 0; h < HG; h++)
                acc[h] = 0.0f;
#pragma unroll 8 /* 8 loads in flight: a 128-column f16 row in two round trips */
            for (int d0 = 0; d0 < D; d0 += 8) {
                float x[8];
                load8<T, VEC>(krow, d0, D, x);
#pragma unroll
                for (int h = 0; h < HG; h++) {
                    const float4 *qv = reinterpret_cast<const float4 *>(qs + h * D8 + d0);
                    float4 a = qv[0], b = qv[1];
                    float r = acc[h];
                    r = fmaf(a.x, x[0], r);
                    r = fmaf(a.y, x[1], r);
                    r = fmaf(a.z, x[2], r);
                    r = fmaf(a.w, x[3], r);
                    r = fmaf(b.x, x[4], r);
                    r = fmaf(b.y, x[5], r);
                    r = fmaf(b.z, x[6], r);
                    r = fmaf(b.w, x[7], r);
                    acc[h] = r;
                }
            }
#pragma unroll
            for (int h = 0; h < HG; h++) {
                bool real = h < nh;
                float slope = slopes && real ? slopes[head0 + h] : 0.0f;
                s[h] = scaled_score(acc[h], scale, slopes != nullptr && real, slope, c0 + j,
                                    sqrt_d, act);
            }
        } else {
#pragma unroll
            for (int h = 0; h < HG; h++)
                s[h] = -INFINITY;
        }
    }

    /* chunk maximum per head (key c0 is always valid, so it is finite) */
    float m[HG];
#pragma unroll
    for (int h = 0; h < HG; h++) {
        float v = s[h];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (lane == 0)
            wred[h][warp] = v;
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < HG; h++) {
        float v = wred[h][0];
#pragma unroll
        for (int w = 1; w < SPLIT_WARPS; w++)
            v = fmaxf(v, wred[h][w]);
        m[h] = v;
    }
    __syncthreads(); /* wred is reused for the sums */

    /* weights and their sum per head (fixed order: deterministic) */
    float l[HG];
#pragma unroll
    for (int h = 0; h < HG; h++) {
        float w = tid < nvalid ? expf(s[h] - m[h]) : 0.0f;
        ws[h][tid] = w;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            w += __shfl_xor_sync(0xffffffffu, w, o);
        if (lane == 0)
            wred[h][warp] = w;
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < HG; h++) {
        float v = wred[h][0];
#pragma unroll
        for (int w = 1; w < SPLIT_WARPS; w++)
            v += wred[h][w];
        l[h] = v;
    }

    /* values: P8 threads cover one row in 8-column pieces; kslots rows are
     * in flight at once, each slot summing every kslots-th key */
    const int P8 = D8 >> 3;
    const int kslots = SPLIT_THREADS / P8;
    const int slot = tid / P8, piece = tid - slot * P8;
    float acc[HG][8];
#pragma unroll
    for (int h = 0; h < HG; h++)
#pragma unroll
        for (int i = 0; i < 8; i++)
            acc[h][i] = 0.0f;
    if (slot < kslots) {
        /* VB rows loaded before any is used (each slot walks ~16 keys of a
         * full chunk: one memory round trip per key otherwise), then added
         * in the same order as one at a time */
        constexpr int VB = 4;
        int j = slot;
        for (; j + (VB - 1) * kslots < nvalid; j += VB * kslots) {
            float x[VB][8];
#pragma unroll
            for (int u = 0; u < VB; u++)
                load8<T, VEC>(vc + (kv_head + (size_t)(c0 + j + u * kslots)) * (size_t)D,
                              piece * 8, D, x[u]);
#pragma unroll
            for (int u = 0; u < VB; u++)
#pragma unroll
                for (int h = 0; h < HG; h++) {
                    float w = ws[h][j + u * kslots];
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        acc[h][i] = fmaf(w, x[u][i], acc[h][i]);
                }
        }
        for (; j < nvalid; j += kslots) {
            float x[8];
            load8<T, VEC>(vc + (kv_head + (size_t)(c0 + j)) * (size_t)D, piece * 8, D, x);
#pragma unroll
            for (int h = 0; h < HG; h++) {
                float w = ws[h][j];
#pragma unroll
                for (int i = 0; i < 8; i++)
                    acc[h][i] = fmaf(w, x[i], acc[h][i]);
            }
        }
    }
    float *red = buf; /* [SPLIT_THREADS][RED_STRIDE]; qs is dead since the score phase */
#pragma unroll
    for (int h = 0; h < HG; h++)
#pragma unroll
        for (int i = 0; i < 8; i++)
            red[tid * RED_STRIDE + h * 8 + i] = acc[h][i];
    __syncthreads();

    const size_t part0 = ((size_t)t * (size_t)n_heads + (size_t)head0) * (size_t)n_chunks + chunk;
    for (int o = tid; o < nh * D; o += SPLIT_THREADS) {
        int h = o / D, d = o - h * D;
        int pc = d >> 3, i = d & 7;
        float sum = 0.0f;
        for (int sl = 0; sl < kslots; sl++)
            sum += red[(sl * P8 + pc) * RED_STRIDE + h * 8 + i];
        part_acc[(part0 + (size_t)h * (size_t)n_chunks) * (size_t)D + d] = sum;
    }
#pragma unroll
    for (int h = 0; h < HG; h++)
        if (tid == h && h < nh)
            part_ml[part0 + (size_t)h * (size_t)n_chunks] = make_float2(m[h], l[h]);
}

/* Block (head, t): combine the chunks [0, p / SPLIT_CHUNK] of token t, query
 * head `head`, in ascending order. Every thread recomputes each chunk's
 * rescaling expf(m_c - M) itself rather than sharing it through shared
 * memory: there are few chunks (n_ctx / 128), the partials come through L1,
 * and so n_ctx has no shared-memory limit. */
__global__ void attn_merge_kernel(const qk_step *__restrict__ step, int n_heads, int D,
                                  int n_ctx, int n_chunks, const float2 *__restrict__ part_ml,
                                  const float *__restrict__ part_acc, float *__restrict__ out,
                                  int ld_out, qdtype act)
{
    qk_wait_prior(); /* a programmatic dependent: the kernel before is done */
    qk_launch_dependents();
    const int head = blockIdx.x, t = blockIdx.y;
    const int p = min(step->p0 + t, n_ctx - 1);
    const int nc = p / SPLIT_CHUNK + 1;
    const size_t base = ((size_t)t * (size_t)n_heads + (size_t)head) * (size_t)n_chunks;

    float M = -INFINITY;
    for (int c = 0; c < nc; c++)
        M = fmaxf(M, part_ml[base + c].x);
    float L = 0.0f;
    for (int c = 0; c < nc; c++) {
        const float2 ml = part_ml[base + c];
        L += ml.y * expf(ml.x - M);
    }
    const float inv = 1.0f / L;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int c = 0; c < nc; c++)
            acc = fmaf(part_acc[(base + c) * (size_t)D + d], expf(part_ml[base + c].x - M), acc);
        out[(size_t)t * (size_t)ld_out + (size_t)head * (size_t)D + d] = qk_round(acc * inv, act);
    }
}

/* ---- tiled path ------------------------------------------------------------ */

/* Row stride (floats) of the Q and K/V tiles for NV float4 column groups per
 * thread: 64 * NV columns plus 4, so it is 4 mod 8 words and the 16-byte
 * reads of 8 consecutive rows (the K tile in the score loop) hit distinct
 * banks. Columns past D are zero. */
static __host__ __device__ constexpr int tile_stride(int nv) { return 64 * nv + 4; }

static size_t tile_smem_bytes(int nv)
{
    return ((size_t)(TILE_Q + TILE_K) * (size_t)tile_stride(nv) + (size_t)TILE_Q * P_STRIDE) *
           sizeof(float);
}

/* dst[r][0 .. 64*NV) = src row r (rows < nrows, columns < D), else 0. */
template <typename T, bool VEC, int NV>
__device__ __forceinline__ void load_tile(float *__restrict__ dst, const T *__restrict__ src,
                                          size_t ld_src, int nrows, int rows, int D)
{
    constexpr int W8 = 8 * NV; /* 8-column pieces per tile row */
    constexpr int ST = tile_stride(NV);
    for (int i = threadIdx.x; i < rows * W8; i += TILE_THREADS) {
        int r = i / W8, c = (i - r * W8) * 8;
        float x[8];
        if (r < nrows && c < D) {
            load8<T, VEC>(src + (size_t)r * ld_src, c, D, x);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++)
                x[e] = 0.0f;
        }
        float4 *o = reinterpret_cast<float4 *>(dst + r * ST + c);
        o[0] = make_float4(x[0], x[1], x[2], x[3]);
        o[1] = make_float4(x[4], x[5], x[6], x[7]);
    }
}

/* Block (query tile, head). Thread (ty, tx) = (tid / 16, tid % 16) owns query
 * rows 4ty .. 4ty+3: scores for keys tx + 16b (b < 4) of each key tile, and
 * output columns 4tx + 64k .. +3 (k < NV). The 16 threads sharing a row are
 * one half-warp, so row maxima and sums are shuffles; they keep identical
 * copies of the row's running maximum and sum. */
template <typename T, int NV, bool VEC>
__global__ void __launch_bounds__(TILE_THREADS)
    attn_tile_kernel(const float *__restrict__ q, int ld_q, float *__restrict__ out, int ld_out,
                     int n, const qk_step *__restrict__ step, int group,
                     const T *__restrict__ kc, const T *__restrict__ vc, int n_ctx, int D,
                     const float *__restrict__ slopes, qdtype act, float scale, float sqrt_d)
{
    constexpr int ST = tile_stride(NV);
    extern __shared__ float4 smem4[];
    float *qs = reinterpret_cast<float *>(smem4); /* [TILE_Q][ST] */
    float *kvs = qs + TILE_Q * ST;                /* [TILE_K][ST]: K, then V */
    float *ps = kvs + TILE_K * ST;                /* [TILE_Q][P_STRIDE] */

    const int head = blockIdx.y, q0 = blockIdx.x * TILE_Q;
    const int g = head / group;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int p0 = step->p0;
    const int nq = min(TILE_Q, n - q0);
    /* the tile's furthest visible key; rows past the batch (zero queries)
     * pretend to sit there so they never look at unstored keys */
    const int last = min(p0 + q0 + nq - 1, n_ctx - 1);
    const bool alibi = slopes != nullptr;
    const float slope = alibi ? slopes[head] : 0.0f;
    const T *kh = kc + (size_t)g * (size_t)n_ctx * (size_t)D;
    const T *vh = vc + (size_t)g * (size_t)n_ctx * (size_t)D;
    const int D4 = (D + 3) & ~3;

    load_tile<float, false, NV>(qs, q + (size_t)q0 * (size_t)ld_q + (size_t)head * (size_t)D,
                                (size_t)ld_q, nq, TILE_Q, D);

    float4 o[4][NV];
    float m[4], l[4];
    int prow[4];
#pragma unroll
    for (int a = 0; a < 4; a++) {
        m[a] = -INFINITY;
        l[a] = 0.0f;
        prow[a] = min(p0 + q0 + ty * 4 + a, last);
#pragma unroll
        for (int k = 0; k < NV; k++)
            o[a][k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }

    for (int k0 = 0; k0 <= last; k0 += TILE_K) {
        const int nk = min(TILE_K, last - k0 + 1);
        __syncthreads(); /* the previous tile's V (and at first, nothing) */
        load_tile<T, VEC, NV>(kvs, kh + (size_t)k0 * (size_t)D, (size_t)D, nk, TILE_K, D);
        __syncthreads();

        float s[4][4];
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
            for (int b = 0; b < 4; b++)
                s[a][b] = 0.0f;
        for (int d = 0; d < D4; d += 4) {
            float4 qa[4], kb[4];
#pragma unroll
            for (int a = 0; a < 4; a++)
                qa[a] = *reinterpret_cast<const float4 *>(qs + (ty * 4 + a) * ST + d);
#pragma unroll
            for (int b = 0; b < 4; b++)
                kb[b] = *reinterpret_cast<const float4 *>(kvs + (tx + 16 * b) * ST + d);
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int b = 0; b < 4; b++) {
                    float r = s[a][b];
                    r = fmaf(qa[a].x, kb[b].x, r);
                    r = fmaf(qa[a].y, kb[b].y, r);
                    r = fmaf(qa[a].z, kb[b].z, r);
                    r = fmaf(qa[a].w, kb[b].w, r);
                    s[a][b] = r;
                }
        }

        float bias[4];
#pragma unroll
        for (int b = 0; b < 4; b++)
            bias[b] = alibi && k0 + tx + 16 * b <= last
                          ? alibi_bias(slope, k0 + tx + 16 * b, sqrt_d, act)
                          : 0.0f;
#pragma unroll
        for (int a = 0; a < 4; a++) {
            float mx = -INFINITY;
#pragma unroll
            for (int b = 0; b < 4; b++) {
                int key = k0 + tx + 16 * b;
                float v = -INFINITY;
                if (key <= prow[a]) {
                    v = __fmul_rn(s[a][b], scale);
                    if (alibi)
                        v = __fadd_rn(v, bias[b]);
                }
                s[a][b] = v;
                mx = fmaxf(mx, v);
            }
#pragma unroll
            for (int off = 8; off > 0; off >>= 1)
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            /* key 0 is in the first tile and visible to every row, so the
             * running maximum is finite from then on; a fully masked later
             * tile leaves it unchanged (corr 1, weights 0) */
            const float mnew = fmaxf(m[a], mx);
            const float corr = expf(m[a] - mnew); /* 0 on the first tile */
            float rs = 0.0f;
#pragma unroll
            for (int b = 0; b < 4; b++) {
                float w = expf(s[a][b] - mnew);
                ps[(ty * 4 + a) * P_STRIDE + tx + 16 * b] = w;
                rs += w;
            }
#pragma unroll
            for (int off = 8; off > 0; off >>= 1)
                rs += __shfl_xor_sync(0xffffffffu, rs, off);
            l[a] = l[a] * corr + rs;
            m[a] = mnew;
#pragma unroll
            for (int k = 0; k < NV; k++) {
                o[a][k].x *= corr;
                o[a][k].y *= corr;
                o[a][k].z *= corr;
                o[a][k].w *= corr;
            }
        }
        __syncthreads(); /* K reads and P writes done */
        load_tile<T, VEC, NV>(kvs, vh + (size_t)k0 * (size_t)D, (size_t)D, nk, TILE_K, D);
        __syncthreads();

        /* rows of V past nk are zero and their weights 0 */
        const int nk4 = (nk + 3) & ~3;
        for (int j = 0; j < nk4; j += 4) {
            float4 pa[4];
#pragma unroll
            for (int a = 0; a < 4; a++)
                pa[a] = *reinterpret_cast<const float4 *>(ps + (ty * 4 + a) * P_STRIDE + j);
#pragma unroll
            for (int jj = 0; jj < 4; jj++) {
#pragma unroll
                for (int k = 0; k < NV; k++) {
                    float4 vv =
                        *reinterpret_cast<const float4 *>(kvs + (j + jj) * ST + 4 * tx + 64 * k);
#pragma unroll
                    for (int a = 0; a < 4; a++) {
                        float w = jj == 0 ? pa[a].x : jj == 1 ? pa[a].y : jj == 2 ? pa[a].z : pa[a].w;
                        o[a][k].x = fmaf(w, vv.x, o[a][k].x);
                        o[a][k].y = fmaf(w, vv.y, o[a][k].y);
                        o[a][k].z = fmaf(w, vv.z, o[a][k].z);
                        o[a][k].w = fmaf(w, vv.w, o[a][k].w);
                    }
                }
            }
        }
    }

#pragma unroll
    for (int a = 0; a < 4; a++) {
        const int r = ty * 4 + a;
        if (r >= nq)
            continue;
        const float inv = 1.0f / l[a];
        float *orow = out + (size_t)(q0 + r) * (size_t)ld_out + (size_t)head * (size_t)D;
#pragma unroll
        for (int k = 0; k < NV; k++) {
            const int d = 4 * tx + 64 * k;
            const float v4[4] = {o[a][k].x, o[a][k].y, o[a][k].z, o[a][k].w};
#pragma unroll
            for (int c = 0; c < 4; c++)
                if (d + c < D)
                    orow[d + c] = qk_round(v4[c] * inv, act);
        }
    }
}

/* ---- launchers --------------------------------------------------------------- */

static bool kv_ok(const qk_kv_layer *kv, const char *what, qerr *err)
{
    if (!kv || !kv->k || !kv->v || (kv->dtype != QDT_F16 && kv->dtype != QDT_F32) ||
        kv->n_kv_heads <= 0 || kv->n_ctx <= 0 || kv->head_dim <= 0) {
        qerr_set(err, QRUN_ERR_DEVICE, "%s: invalid KV cache layer", what);
        return false;
    }
    return true;
}

extern "C" bool qk_kv_store(const qk_kv_layer *kv, const qk_step *step, int n, const float *k,
                            int ld_k, const float *v, int ld_v, cudaStream_t s, qerr *err)
{
    if (!kv_ok(kv, "qk_kv_store", err))
        return false;
    if (n <= 0)
        return true;
    dim3 grid((unsigned)n, (unsigned)kv->n_kv_heads);
    unsigned threads = kv->head_dim >= 128 ? 128 : (unsigned)(kv->head_dim + 31) / 32 * 32;
    if (kv->dtype == QDT_F16)
        qk_launch_pdl(kv_store_kernel<__half>, grid, threads, 0, s, (__half *)kv->k,
                      (__half *)kv->v, kv->n_ctx, kv->head_dim, step, k, ld_k, v, ld_v);
    else
        qk_launch_pdl(kv_store_kernel<float>, grid, threads, 0, s, (float *)kv->k, (float *)kv->v,
                      kv->n_ctx, kv->head_dim, step, k, ld_k, v, ld_v);
    return qk_launched("qk_kv_store", err);
}

extern "C" size_t qk_attention_scratch_size(int max_n, int n_heads, int n_ctx, int head_dim)
{
    int n = max_n < 1 ? 1 : max_n > ATTN_SPLIT_MAX_N ? ATTN_SPLIT_MAX_N : max_n;
    if (n_heads <= 0 || n_ctx <= 0 || head_dim <= 0)
        return 0;
    return split_scratch_bytes(n, n_heads, n_ctx, head_dim);
}

/* What every kernel of one call shares. */
typedef struct attn_launch {
    const qk_attn_args *a;
    const qk_kv_layer *kv;
    int group;
    bool vec; /* K/V rows are 16-byte aligned and a multiple of 8 elements */
    float scale, sqrt_d;
} attn_launch;

template <typename T, int HG>
static void launch_split_hg(const attn_launch *L, int n_chunks, float2 *ml, float *acc,
                            cudaStream_t s)
{
    const qk_attn_args *a = L->a;
    const qk_kv_layer *kv = L->kv;
    const int hblocks = (L->group + HG - 1) / HG;
    dim3 grid((unsigned)n_chunks, (unsigned)(kv->n_kv_heads * hblocks), (unsigned)a->n);
    auto kern = L->vec ? attn_split_kernel<T, HG, true> : attn_split_kernel<T, HG, false>;
    qk_launch_pdl(kern, grid, SPLIT_THREADS, 0, s, a->q, a->ld_q, a->step, a->n_heads, L->group,
                  hblocks, (const T *)kv->k, (const T *)kv->v, kv->n_ctx, kv->head_dim,
                  a->alibi_slopes, a->act, L->scale, L->sqrt_d, n_chunks, ml, acc);
}

template <typename T>
static void launch_split_t(const attn_launch *L, int n_chunks, float2 *ml, float *acc,
                           cudaStream_t s)
{
    /* the fewest heads per block that cover min(group, 8): no padded work
     * for MHA, one read of K/V per 8 heads for large groups */
    if (L->group == 1)
        launch_split_hg<T, 1>(L, n_chunks, ml, acc, s);
    else if (L->group == 2)
        launch_split_hg<T, 2>(L, n_chunks, ml, acc, s);
    else if (L->group <= 4)
        launch_split_hg<T, 4>(L, n_chunks, ml, acc, s);
    else
        launch_split_hg<T, SPLIT_MAX_HG>(L, n_chunks, ml, acc, s);
}

static bool launch_split(const attn_launch *L, cudaStream_t s, qerr *err)
{
    const qk_attn_args *a = L->a;
    const qk_kv_layer *kv = L->kv;
    const int n_chunks = (int)qk_div_up((uint64_t)kv->n_ctx, SPLIT_CHUNK);
    const size_t parts = (size_t)a->n * (size_t)a->n_heads * (size_t)n_chunks;
    float2 *ml = (float2 *)a->scratch;
    float *acc = (float *)((char *)a->scratch + split_ml_bytes(parts));
    if (kv->dtype == QDT_F16)
        launch_split_t<__half>(L, n_chunks, ml, acc, s);
    else
        launch_split_t<float>(L, n_chunks, ml, acc, s);
    if (!qk_launched("qk_attention (split)", err))
        return false;
    dim3 grid((unsigned)a->n_heads, (unsigned)a->n);
    unsigned threads = kv->head_dim >= 128 ? 128 : (unsigned)(kv->head_dim + 31) / 32 * 32;
    qk_launch_pdl(attn_merge_kernel, grid, threads, 0, s, a->step, a->n_heads, kv->head_dim,
                  kv->n_ctx, n_chunks, ml, acc, a->out, a->ld_out, a->act);
    return qk_launched("qk_attention (merge)", err);
}

template <typename T, int NV>
static bool launch_tiled_nv(const attn_launch *L, cudaStream_t s, qerr *err)
{
    const qk_attn_args *a = L->a;
    const qk_kv_layer *kv = L->kv;
    auto kern = L->vec ? attn_tile_kernel<T, NV, true> : attn_tile_kernel<T, NV, false>;
    const size_t smem = tile_smem_bytes(NV);
    /* above 48 KB a kernel must opt in; idempotent, and not a stream
     * operation, so it is harmless inside a graph capture */
    if (!qk_ok(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
               "qk_attention (tiled): shared memory", err))
        return false;
    dim3 grid(qk_div_up((uint64_t)a->n, TILE_Q), (unsigned)a->n_heads);
    kern<<<grid, TILE_THREADS, smem, s>>>(a->q, a->ld_q, a->out, a->ld_out, a->n, a->step,
                                          L->group, (const T *)kv->k, (const T *)kv->v,
                                          kv->n_ctx, kv->head_dim, a->alibi_slopes, a->act,
                                          L->scale, L->sqrt_d);
    return qk_launched("qk_attention (tiled)", err);
}

template <typename T>
static bool launch_tiled_t(const attn_launch *L, cudaStream_t s, qerr *err)
{
    const int d = L->kv->head_dim;
    if (d <= 64)
        return launch_tiled_nv<T, 1>(L, s, err);
    if (d <= 128)
        return launch_tiled_nv<T, 2>(L, s, err);
    return launch_tiled_nv<T, 4>(L, s, err);
}

extern "C" bool qk_attention(const qk_attn_args *a, cudaStream_t s, qerr *err)
{
    if (!a || !kv_ok(a->kv, "qk_attention", err))
        return false;
    const qk_kv_layer *kv = a->kv;
    if (kv->head_dim > ATTN_MAX_HEAD_DIM || a->n_heads <= 0 || a->n_heads % kv->n_kv_heads ||
        (a->act != QDT_F32 && a->act != QDT_F16 && a->act != QDT_BF16) || !a->q || !a->out ||
        !a->step) {
        qerr_set(err, QRUN_ERR_DEVICE,
                 "qk_attention: unsupported arguments (n_heads %d, n_kv_heads %d, head_dim %d "
                 "(at most %d), act %s)",
                 a->n_heads, kv->n_kv_heads, kv->head_dim, ATTN_MAX_HEAD_DIM,
                 qdtype_name(a->act));
        return false;
    }
    if (a->n <= 0)
        return true;
    attn_launch L;
    L.a = a;
    L.kv = kv;
    L.group = a->n_heads / kv->n_kv_heads;
    L.vec = kv->head_dim % 8 == 0 && (uintptr_t)kv->k % 16 == 0 && (uintptr_t)kv->v % 16 == 0;
    /* HF: scaling = head_dim ** -0.5 as a double, used in f32 */
    L.scale = (float)(1.0 / sqrt((double)kv->head_dim));
    L.sqrt_d = (float)sqrt((double)kv->head_dim);

    if (a->n <= ATTN_SPLIT_MAX_N) {
        size_t need = split_scratch_bytes(a->n, a->n_heads, kv->n_ctx, kv->head_dim);
        bool room = a->scratch && a->scratch_size >= need && (uintptr_t)a->scratch % 16 == 0;
        if (room)
            return launch_split(&L, s, err);
        if (a->n == 1) {
            /* decode without its scratch is a sizing bug upstream */
            qerr_set(err, QRUN_ERR_DEVICE,
                     "qk_attention: decode needs %zu bytes of 16-byte aligned scratch, got %zu",
                     need, a->scratch ? a->scratch_size : (size_t)0);
            return false;
        }
        /* a small batch the scratch was not sized for: the tiled path is
         * equally exact, only slower at long contexts */
    }
    if (kv->dtype == QDT_F16)
        return launch_tiled_t<__half>(&L, s, err);
    return launch_tiled_t<float>(&L, s, err);
}
