/* RMSNorm and LayerNorm on the GPU: cpu_rmsnorm / cpu_layernorm
 * (src/cpu/ops.c) with one block per row, optionally preceded by the
 * residual add that feeds them (cpu_add; qk_add_rmsnorm / qk_add_layernorm),
 * which saves a launch per norm in decode.
 *
 * Each thread loads its share of the row into registers once (float4 loads
 * when the row allows them), so the row is read from memory once and written
 * once even though LayerNorm needs three passes over it (mean, squared
 * deviations, output). The statistics are f32 sums reduced across the block;
 * every other operation is the CPU's, written with the _rn intrinsics so the
 * compiler cannot fuse a multiply and an add that the CPU rounds separately.
 *
 * Summation order, the only difference from the CPU: the CPU adds the row in
 * 8 interleaved serial partial sums (dim/8 terms each, then a 3-level tree);
 * here each thread adds at most NORM_MAX_CHUNKS * 4 = 64 terms serially, then
 * a tree of log2(blockDim) <= 10 levels combines the threads. For the sum of
 * squares (non-negative terms) each order is within (longest chain + tree
 * depth) * 2^-24 of the exact sum, relatively, so the two mean squares (and
 * LayerNorm's variances) agree within (dim/8 + 77) * 2^-24 relative and
 * 1/sqrt(. + eps) within half that plus 2 ulps. LayerNorm's mean has signed
 * terms: the same factor bounds its difference relative to mean(|x|). With
 * equal statistics the outputs would be equal bit for bit; with these, an f32
 * output differs by that relative amount at most, and an f16/bf16 output is
 * equal except where the f32 value lies that close to a rounding boundary of
 * the act dtype (one act ulp then, two when RMSNorm rounds twice). */
#include <stdint.h>

#include "kernels/kcommon.cuh"
#include "kernels/ops.h"

/* A row is held as C chunks of blockDim.x * V values per block; C is a
 * template parameter so the per-thread array stays in registers. The kernels
 * are compiled for blocks of up to NORM_MAX_THREADS (at most 64 registers a
 * thread): only C = 16, rows longer than 32768 (or odd ones longer than
 * 8192), spills a little. */
#define NORM_MAX_THREADS 1024
#define NORM_MAX_CHUNKS 16

/* The sum of v over the block, returned to every thread (blockDim.x is a
 * multiple of 32). Butterfly shuffles inside each warp, then every warp
 * reduces the per-warp sums the same way, so all threads get the same bits
 * without a broadcast; the order is fixed, so results repeat run to run.
 * The first barrier lets the block call this twice with one `red`. */
__device__ static float block_sum(float v, float *red)
{
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v = __fadd_rn(v, __shfl_xor_sync(full, v, o));
    __syncthreads();
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    v = lane < n_warps ? red[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
        v = __fadd_rn(v, __shfl_xor_sync(full, v, o));
    return v;
}

/* Load this thread's chunks of the row into v, zeros past its end. Chunk c
 * of thread t starts at element (c * blockDim.x + t) * V: consecutive threads
 * read consecutive vectors, so each warp load is coalesced. */
template <int V, int C>
__device__ static void load_row(const float *xr, int dim, float (&v)[C * V])
{
#pragma unroll
    for (int c = 0; c < C; c++) {
        int i = (c * (int)blockDim.x + (int)threadIdx.x) * V;
        if (V == 4) {
            float4 q = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (i < dim) /* dim % 4 == 0 on this path: the whole vector is in */
                q = *reinterpret_cast<const float4 *>(xr + i);
            v[c * V + 0] = q.x;
            v[c * V + 1] = q.y;
            v[c * V + 2] = q.z;
            v[c * V + 3] = q.w;
        } else {
            v[c] = i < dim ? xr[i] : 0.0f;
        }
    }
}

template <int V>
__device__ static void store_vec(float *p, const float *o)
{
    if (V == 4)
        *reinterpret_cast<float4 *>(p) = make_float4(o[0], o[1], o[2], o[3]);
    else
        p[0] = o[0];
}

/* With a residual addend t (qk_add_*norm): v = act(v + t) as cpu_add, and
 * the sum written back over x, the residual stream, before the norm. */
template <int V, int C>
__device__ static void add_residual(float *xr, const float *tr, int dim, qdtype act,
                                    float (&v)[C * V])
{
    float tv[C * V];
    load_row<V, C>(tr, dim, tv);
#pragma unroll
    for (int j = 0; j < C * V; j++)
        v[j] = qk_round(__fadd_rn(v[j], tv[j]), act);
#pragma unroll
    for (int c = 0; c < C; c++) {
        int i = (c * (int)blockDim.x + (int)threadIdx.x) * V;
        if (i < dim)
            store_vec<V>(xr + i, &v[c * V]);
    }
}

/* This thread's elements of a norm parameter (weight or bias) of dtype dt,
 * as f32, in load_row's order (zeros past dim). The parameters are not
 * written by the kernel before, so the kernels load them before waiting for
 * it: their memory round trip no longer follows the row's reduction. Only
 * where they fit in registers beside the row (param_ahead); longer rows
 * load them where they are used (param_at). */
template <int V, int C> __host__ __device__ constexpr bool param_ahead() { return C * V <= 8; }

template <int V, int C>
__device__ static void load_param(const void *p, qdtype dt, int dim, float (&pv)[C * V])
{
    if constexpr (param_ahead<V, C>()) {
#pragma unroll
        for (int c = 0; c < C; c++) {
            const int i = (c * (int)blockDim.x + (int)threadIdx.x) * V;
#pragma unroll
            for (int k = 0; k < V; k++)
                pv[c * V + k] = i + k < dim ? qk_load(p, dt, (uint64_t)(i + k)) : 0.0f;
        }
    }
}

template <int V, int C>
__device__ __forceinline__ float param_at(const float (&pv)[C * V], const void *p, qdtype dt,
                                          int c, int i, int k)
{
    if constexpr (param_ahead<V, C>())
        return pv[c * V + k];
    else
        return qk_load(p, dt, (uint64_t)(i + k));
}

/* y may equal x (or t): every element is read and written by the same
 * thread. t: NULL, or the residual addend (x = act(x + t) first). */
template <int V, int C>
__global__ void __launch_bounds__(NORM_MAX_THREADS)
    rmsnorm_kernel(float *x, const float *t, float *y, int dim, const void *w, qdtype w_dt,
                   float eps, qdtype act)
{
    float wv[C * V];
    load_param<V, C>(w, w_dt, dim, wv);
    qk_wait_prior();
    qk_launch_dependents();
    __shared__ float red[32];
    const size_t row = blockIdx.x;
    float *xr = x + row * (size_t)dim;
    float *yr = y + row * (size_t)dim;
    float v[C * V];
    load_row<V, C>(xr, dim, v);
    if (t)
        add_residual<V, C>(xr, t + row * (size_t)dim, dim, act, v);
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < C * V; j++)
        ss = __fadd_rn(ss, __fmul_rn(v[j], v[j])); /* padding zeros add nothing */
    float var = __fdiv_rn(block_sum(ss, red), (float)dim);
    float rs = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    /* torch promotes weight * hidden to f32 unless both have the act dtype */
    const qdtype prod_dt = w_dt == act ? act : QDT_F32;
#pragma unroll
    for (int c = 0; c < C; c++) {
        int i = (c * (int)blockDim.x + (int)threadIdx.x) * V;
        if (i >= dim)
            continue;
        float o[V];
#pragma unroll
        for (int k = 0; k < V; k++) {
            float h = qk_round(__fmul_rn(v[c * V + k], rs), act);
            o[k] = qk_round(__fmul_rn(param_at<V, C>(wv, w, w_dt, c, i, k), h), prod_dt);
        }
        store_vec<V>(yr + i, o);
    }
}

template <int V, int C>
__global__ void __launch_bounds__(NORM_MAX_THREADS)
    layernorm_kernel(float *x, const float *t, float *y, int dim, const void *w, const void *b,
                     qdtype wb_dt, float eps, qdtype act)
{
    float wv[C * V], bv[C * V];
    load_param<V, C>(w, wb_dt, dim, wv);
    load_param<V, C>(b, wb_dt, dim, bv);
    qk_wait_prior();
    qk_launch_dependents();
    __shared__ float red[32];
    const size_t row = blockIdx.x;
    float *xr = x + row * (size_t)dim;
    float *yr = y + row * (size_t)dim;
    float v[C * V];
    load_row<V, C>(xr, dim, v);
    if (t)
        add_residual<V, C>(xr, t + row * (size_t)dim, dim, act, v);
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < C * V; j++)
        s = __fadd_rn(s, v[j]);
    const float mean = __fdiv_rn(block_sum(s, red), (float)dim);
    /* two passes, as the CPU: squared deviations from the mean */
    float s2 = 0.0f;
#pragma unroll
    for (int c = 0; c < C; c++) {
        int i = (c * (int)blockDim.x + (int)threadIdx.x) * V;
        if (i >= dim)
            continue;
#pragma unroll
        for (int k = 0; k < V; k++) {
            float d = __fsub_rn(v[c * V + k], mean);
            s2 = __fadd_rn(s2, __fmul_rn(d, d));
        }
    }
    const float var = __fdiv_rn(block_sum(s2, red), (float)dim);
    const float rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    const float shift = __fmul_rn(-mean, rstd);
#pragma unroll
    for (int c = 0; c < C; c++) {
        int i = (c * (int)blockDim.x + (int)threadIdx.x) * V;
        if (i >= dim)
            continue;
        float o[V];
#pragma unroll
        for (int k = 0; k < V; k++) {
            float t = __fadd_rn(__fmul_rn(v[c * V + k], rstd), shift);
            t = __fadd_rn(__fmul_rn(t, param_at<V, C>(wv, w, wb_dt, c, i, k)),
                          param_at<V, C>(bv, b, wb_dt, c, i, k));
            o[k] = qk_round(t, act);
        }
        store_vec<V>(yr + i, o);
    }
}

/* The launch shape of a row of `dim`: vector width, chunks per thread,
 * threads per block (a multiple of 32). */
typedef struct norm_shape {
    int v, c, threads;
} norm_shape;

static bool norm_plan(const char *what, const float *x, const float *t, const float *y,
                      int n_rows, int dim, norm_shape *sh, qerr *err)
{
    if (n_rows < 0 || dim <= 0) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "%s: %d rows of %d", what, n_rows, dim);
        return false;
    }
    bool vec = dim % 4 == 0 && ((uintptr_t)x & 15u) == 0 && ((uintptr_t)y & 15u) == 0 &&
               ((uintptr_t)t & 15u) == 0;
    sh->v = vec ? 4 : 1;
    int units = dim / sh->v + (dim % sh->v != 0);
    sh->c = 1;
    while (sh->c < NORM_MAX_CHUNKS && sh->c * NORM_MAX_THREADS < units)
        sh->c *= 2;
    if (sh->c * NORM_MAX_THREADS < units) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED, "%s: rows of %d exceed the %d values a block holds",
                 what, dim, NORM_MAX_CHUNKS * NORM_MAX_THREADS * sh->v);
        return false;
    }
    int per_chunk = (units + sh->c - 1) / sh->c;
    sh->threads = (per_chunk + 31) / 32 * 32;
    return true;
}

/* Instantiate the kernel K<V, C> for the plan's (v, c) and launch it, as a
 * programmatic dependent of the kernel before (it waits for it first). */
#define NORM_DISPATCH(K, sh, n_rows, s, ...)                                                  \
    do {                                                                                      \
        dim3 g_((unsigned)(n_rows)), b_((unsigned)(sh).threads);                              \
        switch ((sh).v * 100 + (sh).c) {                                                      \
        case 401: qk_launch_pdl(K<4, 1>, g_, b_, 0, s, __VA_ARGS__); break;                  \
        case 402: qk_launch_pdl(K<4, 2>, g_, b_, 0, s, __VA_ARGS__); break;                  \
        case 404: qk_launch_pdl(K<4, 4>, g_, b_, 0, s, __VA_ARGS__); break;                  \
        case 408: qk_launch_pdl(K<4, 8>, g_, b_, 0, s, __VA_ARGS__); break;                  \
        case 416: qk_launch_pdl(K<4, 16>, g_, b_, 0, s, __VA_ARGS__); break;                 \
        case 101: qk_launch_pdl(K<1, 1>, g_, b_, 0, s, __VA_ARGS__); break;                  \
        case 102: qk_launch_pdl(K<1, 2>, g_, b_, 0, s, __VA_ARGS__); break;                  \
        case 104: qk_launch_pdl(K<1, 4>, g_, b_, 0, s, __VA_ARGS__); break;                  \
        case 108: qk_launch_pdl(K<1, 8>, g_, b_, 0, s, __VA_ARGS__); break;                  \
        default: qk_launch_pdl(K<1, 16>, g_, b_, 0, s, __VA_ARGS__); break;                  \
        }                                                                                     \
    } while (0)

extern "C" bool qk_add_rmsnorm(float *x, const float *t, float *y, int n_rows, int dim,
                               const void *w, qdtype w_dt, float eps, qdtype act, cudaStream_t s,
                               qerr *err)
{
    norm_shape sh;
    if (!norm_plan("qk_rmsnorm", x, t, y, n_rows, dim, &sh, err))
        return false;
    if (n_rows == 0)
        return true;
    NORM_DISPATCH(rmsnorm_kernel, sh, n_rows, s, x, t, y, dim, w, w_dt, eps, act);
    return qk_launched("qk_rmsnorm", err);
}

extern "C" bool qk_add_layernorm(float *x, const float *t, float *y, int n_rows, int dim,
                                 const void *w, const void *b, qdtype wb_dt, float eps,
                                 qdtype act, cudaStream_t s, qerr *err)
{
    norm_shape sh;
    if (!norm_plan("qk_layernorm", x, t, y, n_rows, dim, &sh, err))
        return false;
    if (n_rows == 0)
        return true;
    NORM_DISPATCH(layernorm_kernel, sh, n_rows, s, x, t, y, dim, w, b, wb_dt, eps, act);
    return qk_launched("qk_layernorm", err);
}

/* Without an addend x is only read (the kernels write it back only when t
 * is given). */
extern "C" bool qk_rmsnorm(const float *x, float *y, int n_rows, int dim, const void *w,
                           qdtype w_dt, float eps, qdtype act, cudaStream_t s, qerr *err)
{
    return qk_add_rmsnorm((float *)x, NULL, y, n_rows, dim, w, w_dt, eps, act, s, err);
}

extern "C" bool qk_layernorm(const float *x, float *y, int n_rows, int dim, const void *w,
                             const void *b, qdtype wb_dt, float eps, qdtype act, cudaStream_t s,
                             qerr *err)
{
    return qk_add_layernorm((float *)x, NULL, y, n_rows, dim, w, b, wb_dt, eps, act, s, err);
}
