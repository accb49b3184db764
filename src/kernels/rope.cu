/* Rotary embeddings on the GPU: cpu_rope (src/cpu/ops.c) in place, one block
 * per token, positions read from the device qk_step so a captured graph is
 * valid at every position.
 *
 * cos/sin: the CPU takes libm's double cos/sin of the f32 angle and rounds
 * them to f32. Here the same double functions (CUDA's sincos, within 2 double
 * ulps) are rounded to f32, so the f32 values are the CPU's except where the
 * exact value lies within ~2^-51 (relative) of a midpoint between two floats:
 * then they may differ by one f32 ulp (never seen in the test's values). The
 * double evaluation is per (token, frequency) only, head_dim/2 per token
 * shared by all heads, so its cost does not matter next to the memory
 * traffic. f32 sincosf (2 ulps) would make most angles differ by an ulp.
 * Everything after that is the CPU's arithmetic with its rounding points (the
 * _rn intrinsics keep the compiler from fusing what the CPU rounds twice). */
#include <stdint.h>

#include "kernels/attention.h"
#include "kernels/kcommon.cuh"
#include "kernels/ops.h"

/* cpu/ops.h CPU_MAX_HEAD_DIM: the CPU's limit, kept here without including
 * the CPU header in device code */
#define ROPE_MAX_HEAD_DIM 512
#define ROPE_THREADS 256
#define ROPE_MAX_BLOCKS 4096

/* V: values of each half-head a thread rotates at once (4: float4 loads,
 * when half-heads and rows keep them 16-byte aligned). */
/* Rotate the V pairs (x1[k], x1[k + half]) at frequencies i .. i+V-1 in
 * place, cs / sn the token's act-rounded cos and sin; the new values are
 * left in y1, y2 as well (for the KV cache). */
template <int V>
__device__ __forceinline__ void rope_pairs(float *x1, int half, int i, const float *cs,
                                           const float *sn, qdtype act, float (&y1)[V],
                                           float (&y2)[V])
{
    float *x2 = x1 + half;
    float a[V], b[V];
    if (V == 4) {
        float4 qa = *reinterpret_cast<const float4 *>(x1);
        float4 qb = *reinterpret_cast<const float4 *>(x2);
        a[0] = qa.x, a[1] = qa.y, a[2] = qa.z, a[3] = qa.w;
        b[0] = qb.x, b[1] = qb.y, b[2] = qb.z, b[3] = qb.w;
    } else {
        a[0] = x1[0];
        b[0] = x2[0];
    }
#pragma unroll
    for (int k = 0; k < V; k++) {
        const float c = cs[i + k], s = sn[i + k];
        /* q * cos + rotate_half(q) * sin, each product and the sum rounded
         * to act */
        y1[k] = qk_round(__fadd_rn(qk_round(__fmul_rn(a[k], c), act),
                                   qk_round(__fmul_rn(-b[k], s), act)),
                         act);
        y2[k] = qk_round(__fadd_rn(qk_round(__fmul_rn(b[k], c), act),
                                   qk_round(__fmul_rn(a[k], s), act)),
                         act);
    }
    if (V == 4) {
        *reinterpret_cast<float4 *>(x1) = make_float4(y1[0], y1[1], y1[2], y1[3]);
        *reinterpret_cast<float4 *>(x2) = make_float4(y2[0], y2[1], y2[2], y2[3]);
    } else {
        x1[0] = y1[0];
        x2[0] = y2[0];
    }
}

/* The token's cos / sin table (act-rounded, times scaling) in shared memory. */
__device__ __forceinline__ void rope_table(const float *inv_freq, float scaling, int half,
                                           float pf, qdtype act, float *cs, float *sn)
{
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float ang = __fmul_rn(pf, inv_freq[i]);
        double sd, cd;
        sincos((double)ang, &sd, &cd);
        cs[i] = qk_round(__fmul_rn((float)cd, scaling), act);
        sn[i] = qk_round(__fmul_rn((float)sd, scaling), act);
    }
}

template <int V>
__global__ void rope_kernel(const float *inv_freq, float scaling, int head_dim, float *x, int ld,
                            int n_tokens, int n_heads, const qk_step *step, qdtype act)
{
    qk_wait_prior(); /* a programmatic dependent: the kernel before is done */
    qk_launch_dependents();
    __shared__ float cs[ROPE_MAX_HEAD_DIM / 2], sn[ROPE_MAX_HEAD_DIM / 2];
    const int half = head_dim / 2, per_head = half / V, items = n_heads * per_head;
    const int p0 = step->p0;
    for (int t = blockIdx.x; t < n_tokens; t += gridDim.x) {
        __syncthreads(); /* the previous token's readers of cs/sn are done */
        rope_table(inv_freq, scaling, half, (float)(p0 + t), act, cs, sn);
        __syncthreads();
        float *row = x + (size_t)t * (size_t)ld;
        for (int j = threadIdx.x; j < items; j += blockDim.x) {
            const int h = j / per_head, i = (j - h * per_head) * V;
            float y1[V], y2[V];
            rope_pairs<V>(row + (size_t)h * (size_t)head_dim + i, half, i, cs, sn, act, y1, y2);
        }
    }
}

__device__ __forceinline__ void kv_put(__half *p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void kv_put(float *p, float x) { *p = x; }

/* rope_kernel on q (Hq heads) and k (Hkv heads) of each token, then the
 * rotated k and the v rows stored into the cache (layout and conversion of
 * qk_kv_store) at the token's position: one launch instead of three. Block
 * (x, y) takes head y (q heads first, then the k/v heads) of tokens x,
 * x + gridDim.x, ...: a decode step's single token still spreads over
 * Hq + Hkv blocks (one block for all heads took ~13 us on an H100, a
 * tenth of a Llama layer). Each block computes the token's cos/sin table
 * itself (head_dim / 2 double sincos, one per thread). */
template <int V, typename KT>
__global__ void rope_store_kernel(const float *inv_freq, float scaling, int head_dim, float *q,
                                  int ld_q, int n_heads, float *k, int ld_k, const float *v,
                                  int ld_v, int n_kv_heads, int n_tokens, const qk_step *step,
                                  qdtype act, KT *kc, KT *vc, int n_ctx)
{
    qk_wait_prior(); /* a programmatic dependent: the kernel before is done */
    qk_launch_dependents();
    __shared__ float cs[ROPE_MAX_HEAD_DIM / 2], sn[ROPE_MAX_HEAD_DIM / 2];
    const int half = head_dim / 2, per_head = half / V;
    const int h = (int)blockIdx.y;
    const int p0 = step->p0;
    for (int t = blockIdx.x; t < n_tokens; t += gridDim.x) {
        const int pos = p0 + t;
        const bool in_cache = pos >= 0 && pos < n_ctx; /* as kv_store_kernel */
        __syncthreads();
        rope_table(inv_freq, scaling, half, (float)pos, act, cs, sn);
        __syncthreads();
        float y1[V], y2[V];
        if (h < n_heads) {
            float *row = q + (size_t)t * (size_t)ld_q + (size_t)h * (size_t)head_dim;
            for (int j = threadIdx.x; j < per_head; j += blockDim.x)
                rope_pairs<V>(row + j * V, half, j * V, cs, sn, act, y1, y2);
            continue;
        }
        const int g = h - n_heads;
        float *row = k + (size_t)t * (size_t)ld_k + (size_t)g * (size_t)head_dim;
        const size_t at = ((size_t)g * (size_t)n_ctx + (size_t)pos) * (size_t)head_dim;
        for (int j = threadIdx.x; j < per_head; j += blockDim.x) {
            const int i = j * V;
            rope_pairs<V>(row + i, half, i, cs, sn, act, y1, y2);
            if (in_cache) {
#pragma unroll
                for (int e = 0; e < V; e++) {
                    kv_put(kc + at + i + e, y1[e]);
                    kv_put(kc + at + half + i + e, y2[e]);
                }
            }
        }
        if (!in_cache)
            continue;
        const float *vr = v + (size_t)t * (size_t)ld_v + (size_t)g * (size_t)head_dim;
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
            kv_put(vc + at + d, vr[d]);
    }
}

extern "C" bool qk_rope(const float *inv_freq, float scaling, int head_dim, float *x, int ld,
                        int n_tokens, int n_heads, const qk_step *step, qdtype act,
                        cudaStream_t s, qerr *err)
{
    if (head_dim < 2 || head_dim % 2 != 0 || head_dim > ROPE_MAX_HEAD_DIM || n_tokens < 0 ||
        n_heads < 0 || (int64_t)n_heads * head_dim > ld) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                 "qk_rope: head_dim %d (even, <= %d), %d heads, row stride %d", head_dim,
                 ROPE_MAX_HEAD_DIM, n_heads, ld);
        return false;
    }
    if (n_tokens == 0 || n_heads == 0)
        return true;
    const int half = head_dim / 2;
    const bool vec = half % 4 == 0 && ld % 4 == 0 && ((uintptr_t)x & 15u) == 0;
    const unsigned blocks = n_tokens < ROPE_MAX_BLOCKS ? (unsigned)n_tokens : ROPE_MAX_BLOCKS;
    qk_launch_pdl(vec ? rope_kernel<4> : rope_kernel<1>, blocks, ROPE_THREADS, 0, s, inv_freq,
                  scaling, head_dim, x, ld, n_tokens, n_heads, step, act);
    return qk_launched("qk_rope", err);
}

extern "C" bool qk_rope_store(const float *inv_freq, float scaling, int head_dim, float *q,
                              int ld_q, int n_heads, float *k, int ld_k, const float *v,
                              int ld_v, int n_tokens, const qk_step *step, qdtype act,
                              const qk_kv_layer *kv, cudaStream_t s, qerr *err)
{
    const int hkv = kv->n_kv_heads;
    if (head_dim < 2 || head_dim % 2 != 0 || head_dim > ROPE_MAX_HEAD_DIM || n_tokens < 0 ||
        n_heads < 0 || hkv < 0 || (int64_t)n_heads * head_dim > ld_q ||
        (int64_t)hkv * head_dim > ld_k || (int64_t)hkv * head_dim > ld_v ||
        kv->head_dim != head_dim || (kv->dtype != QDT_F16 && kv->dtype != QDT_F32)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                 "qk_rope_store: head_dim %d (even, <= %d, cache %d), %d + %d heads, row "
                 "strides %d, %d, %d",
                 head_dim, ROPE_MAX_HEAD_DIM, kv->head_dim, n_heads, hkv, ld_q, ld_k, ld_v);
        return false;
    }
    if (n_tokens == 0 || n_heads + hkv == 0)
        return true;
    const int half = head_dim / 2;
    const bool vec = half % 4 == 0 && ld_q % 4 == 0 && ld_k % 4 == 0 &&
                     ((uintptr_t)q & 15u) == 0 && ((uintptr_t)k & 15u) == 0;
    if (n_heads + hkv > 65535) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qk_rope_store: %d + %d heads (at most 65535)",
                 n_heads, hkv);
        return false;
    }
    /* per token, one block per head: half-head threads, rounded up to a warp */
    const dim3 grid(n_tokens < ROPE_MAX_BLOCKS ? (unsigned)n_tokens : ROPE_MAX_BLOCKS,
                    (unsigned)(n_heads + hkv));
    const unsigned threads = (unsigned)((half + 31) / 32 * 32);
#define ROPE_STORE(VV, KT)                                                                     \
    qk_launch_pdl(rope_store_kernel<VV, KT>, grid, threads, 0, s, inv_freq, scaling, head_dim, \
                  q, ld_q, n_heads, k, ld_k, v, ld_v, hkv, n_tokens, step, act, (KT *)kv->k,    \
                  (KT *)kv->v, kv->n_ctx)
    if (kv->dtype == QDT_F16) {
        if (vec)
            ROPE_STORE(4, __half);
        else
            ROPE_STORE(1, __half);
    } else {
        if (vec)
            ROPE_STORE(4, float);
        else
            ROPE_STORE(1, float);
    }
#undef ROPE_STORE
    return qk_launched("qk_rope_store", err);
}
