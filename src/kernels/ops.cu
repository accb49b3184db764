/* The memory-bound element-wise ops on the GPU: embedding lookup, SwiGLU,
 * GELU, residual add and the fused-qkv split (the norms are in norm.cu, the
 * rotary embedding in rope.cu). Each thread moves float4s where the sizes
 * and pointers allow (a scalar path otherwise), in grid-stride loops over one
 * pass of the data.
 *
 * Agreement with the CPU (src/cpu/ops.c, src/cpu/backend.c):
 *  - embed, add, qkv_split: bit for bit (the same conversions, one f32 add).
 *  - swiglu: silu uses CUDA's expf (max 2 ulps) where the CPU has glibc's
 *    (within an ulp of exact); the rest is the CPU's arithmetic. silu then
 *    differs by at most ~4 f32 ulps and the f32 output by ~5; an f16/bf16
 *    output is equal except where the f32 value is that close to a rounding
 *    boundary (one act ulp of silu then, two of the output).
 *  - gelu: erfcf on both sides (CUDA's max 4 ulps, glibc's a few), so the f32
 *    output differs by at most ~10 f32 ulps (relative to it; erfc keeps the
 *    tail accurate, see cpu_gelu) and an f16/bf16 output by at most one act
 *    ulp, rarely.
 * The _rn intrinsics stop the compiler from fusing a multiply and an add that
 * the CPU rounds separately. */
#include <stdint.h>

#include "kernels/ew.cuh"
#include "kernels/kcommon.cuh"
#include "kernels/ops.h"

#define EW_THREADS 256
/* a grid-stride loop covers the rest: enough blocks to fill any current GPU */
#define EW_MAX_BLOCKS 4096u
#define MAX_GRID_Y 65535

static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
static inline bool aligned8(const void *p) { return ((uintptr_t)p & 7u) == 0; }

static unsigned ew_blocks(uint64_t units)
{
    uint64_t b = (units + EW_THREADS - 1) / EW_THREADS;
    return b < EW_MAX_BLOCKS ? (unsigned)(b ? b : 1) : EW_MAX_BLOCKS;
}

/* ---- embedding ---------------------------------------------------------- */

/* Four consecutive elements of an f32/f16/bf16 array starting at i (i % 4 ==
 * 0, the array 16-byte aligned for f32, 8-byte for 16-bit types), exactly. */
__device__ static void load4(const void *p, qdtype dt, uint64_t i, float *o)
{
    if (dt == QDT_F32) {
        float4 q = *reinterpret_cast<const float4 *>((const float *)p + i);
        o[0] = q.x, o[1] = q.y, o[2] = q.z, o[3] = q.w;
        return;
    }
    uint2 u = *reinterpret_cast<const uint2 *>((const uint16_t *)p + i);
    const uint32_t w[2] = {u.x, u.y};
    for (int k = 0; k < 2; k++) {
        const uint16_t lo = (uint16_t)(w[k] & 0xffffu), hi = (uint16_t)(w[k] >> 16);
        if (dt == QDT_F16) {
            o[2 * k] = __half2float(__ushort_as_half(lo));
            o[2 * k + 1] = __half2float(__ushort_as_half(hi));
        } else {
            o[2 * k] = __uint_as_float((uint32_t)lo << 16);
            o[2 * k + 1] = __uint_as_float((uint32_t)hi << 16);
        }
    }
}

/* Rows over blockIdx.y, each row's V-wide units over x. */
template <int V>
__global__ void embed_kernel(const void *table, qdtype dt, int dim, const qk_step *step, int n,
                             bool do_round, qdtype act, float *out)
{
    const int units = dim / V; /* V == 4 only when dim % 4 == 0 */
    for (int r = blockIdx.y; r < n; r += gridDim.y) {
        const uint64_t src = (uint64_t)step->ids[r] * (uint64_t)dim;
        float *o = out + (size_t)r * (size_t)dim;
        for (int u = blockIdx.x * blockDim.x + threadIdx.x; u < units;
             u += gridDim.x * blockDim.x) {
            float e[V];
            if (V == 4)
                load4(table, dt, src + (uint64_t)u * 4, e);
            else
                e[0] = qk_load(table, dt, src + (uint64_t)u);
#pragma unroll
            for (int k = 0; k < V; k++)
                e[k] = do_round ? qk_round(e[k], act) : e[k];
            if (V == 4)
                *reinterpret_cast<float4 *>(o + (size_t)u * 4) = make_float4(e[0], e[1], e[2], e[3]);
            else
                o[u] = e[0];
        }
    }
}

extern "C" bool qk_embed(const void *table, qdtype table_dt, int dim, const qk_step *step, int n,
                         qdtype act, float *out, cudaStream_t s, qerr *err)
{
    if (dim <= 0 || n < 0 ||
        (table_dt != QDT_F32 && table_dt != QDT_F16 && table_dt != QDT_BF16)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qk_embed: %d rows of %d, table dtype %s", n,
                 dim, qdtype_name(table_dt));
        return false;
    }
    if (n == 0)
        return true;
    /* as the CPU backend's embed op: an f32 run keeps the table's values, and
     * a table already in the act dtype needs no rounding */
    const bool do_round = act != QDT_F32 && table_dt != act;
    const bool vec = dim % 4 == 0 && aligned16(out) &&
                     (table_dt == QDT_F32 ? aligned16(table) : aligned8(table));
    const int units = vec ? dim / 4 : dim;
    dim3 grid(ew_blocks((uint64_t)units), n < MAX_GRID_Y ? (unsigned)n : MAX_GRID_Y);
    if (vec)
        embed_kernel<4><<<grid, EW_THREADS, 0, s>>>(table, table_dt, dim, step, n, do_round, act, out);
    else
        embed_kernel<1><<<grid, EW_THREADS, 0, s>>>(table, table_dt, dim, step, n, do_round, act, out);
    return qk_launched("qk_embed", err);
}

/* ---- SwiGLU, GELU, add -------------------------------------------------- */

enum ew_op { EW_SWIGLU, EW_GELU, EW_ADD };

template <int OP>
__device__ __forceinline__ float ew_apply(float a, float b, qdtype act)
{
    if (OP == EW_SWIGLU)
        return qk_ew_swiglu(a, b, act);
    if (OP == EW_GELU)
        return qk_ew_gelu(a, act);
    return qk_ew_add(a, b, act);
}

/* out[i] = f(a[i], b[i]) for i < n; the first n_vec * 4 as float4s. out may
 * alias a or b: each element is read and then written by one thread. */
template <int OP>
__global__ void ew_kernel(float *out, const float *a, const float *b, size_t n, size_t n_vec,
                          qdtype act)
{
    qk_wait_prior(); /* a programmatic dependent: the kernel before is done */
    qk_launch_dependents();
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (size_t u = tid; u < n_vec; u += stride) {
        float4 x = reinterpret_cast<const float4 *>(a)[u];
        float4 y = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (OP != EW_GELU)
            y = reinterpret_cast<const float4 *>(b)[u];
        reinterpret_cast<float4 *>(out)[u] =
            make_float4(ew_apply<OP>(x.x, y.x, act), ew_apply<OP>(x.y, y.y, act),
                        ew_apply<OP>(x.z, y.z, act), ew_apply<OP>(x.w, y.w, act));
    }
    for (size_t i = n_vec * 4 + tid; i < n; i += stride)
        out[i] = ew_apply<OP>(a[i], OP != EW_GELU ? b[i] : 0.0f, act);
}

template <int OP>
static bool ew_launch(const char *what, float *out, const float *a, const float *b, size_t n,
                      qdtype act, cudaStream_t s, qerr *err)
{
    if (n == 0)
        return true;
    const bool vec = aligned16(out) && aligned16(a) && (OP == EW_GELU || aligned16(b));
    const size_t n_vec = vec ? n / 4 : 0;
    /* sized by the vectors: the scalar tail then has at most 3 elements */
    qk_launch_pdl(ew_kernel<OP>, ew_blocks(vec ? n_vec : n), EW_THREADS, 0, s, out, a, b, n, n_vec,
                  act);
    return qk_launched(what, err);
}

extern "C" bool qk_swiglu(float *out, const float *gate, const float *up, size_t n, qdtype act,
                          cudaStream_t s, qerr *err)
{
    return ew_launch<EW_SWIGLU>("qk_swiglu", out, gate, up, n, act, s, err);
}

extern "C" bool qk_gelu(float *out, const float *x, size_t n, qdtype act, cudaStream_t s,
                        qerr *err)
{
    return ew_launch<EW_GELU>("qk_gelu", out, x, NULL, n, act, s, err);
}

extern "C" bool qk_add(float *out, const float *a, const float *b, size_t n, qdtype act,
                       cudaStream_t s, qerr *err)
{
    return ew_launch<EW_ADD>("qk_add", out, a, b, n, act, s, err);
}

/* ---- fused qkv split ---------------------------------------------------- */

/* Head slot `slot` of a fused row (Hq + 2 Hkv slots of D values) goes to
 * head *head of q (0), k (1) or v (2); the qbk_qkv_layout mappings of
 * cpu_qkv_split. */
__device__ __forceinline__ int qkv_target(int layout, int slot, int hq, int hkv, int *head)
{
    if (layout == 0) { /* grouped: Hkv groups of [Hq/Hkv q heads, k, v] */
        const int per_group = hq / hkv, g = slot / (per_group + 2), r = slot - g * (per_group + 2);
        *head = r < per_group ? g * per_group + r : g;
        return r < per_group ? 0 : r - per_group + 1;
    }
    if (layout == 1) { /* multi-query: Hq q heads, Hkv k heads, Hkv v heads */
        if (slot < hq) {
            *head = slot;
            return 0;
        }
        const int r = (slot - hq) / hkv;
        *head = slot - hq - r * hkv;
        return r + 1;
    }
    /* interleaved: per head h, q_h, k_h, v_h */
    *head = slot / 3;
    return slot - *head * 3;
}

/* Tokens over blockIdx.y, each fused row's V-wide units over x. */
template <int V>
__global__ void qkv_split_kernel(int layout, const float *qkv, int n, int hq, int hkv, int d,
                                 float *q, float *k, float *v)
{
    qk_wait_prior(); /* a programmatic dependent: the kernel before is done */
    qk_launch_dependents();
    const int slots = hq + 2 * hkv, per_slot = d / V, units = slots * per_slot;
    for (int t = blockIdx.y; t < n; t += gridDim.y) {
        const float *src = qkv + (size_t)t * (size_t)slots * (size_t)d;
        for (int u = blockIdx.x * blockDim.x + threadIdx.x; u < units;
             u += gridDim.x * blockDim.x) {
            const int slot = u / per_slot, e = (u - slot * per_slot) * V;
            int head;
            const int which = qkv_target(layout, slot, hq, hkv, &head);
            float *base = which == 0 ? q : which == 1 ? k : v;
            const int heads = which == 0 ? hq : hkv;
            float *dst = base + ((size_t)t * (size_t)heads + (size_t)head) * (size_t)d + e;
            const float *from = src + (size_t)slot * (size_t)d + e;
            if (V == 4)
                *reinterpret_cast<float4 *>(dst) = *reinterpret_cast<const float4 *>(from);
            else
                *dst = *from;
        }
    }
}

extern "C" bool qk_qkv_split(int layout, const float *qkv, int n, int n_heads, int n_kv_heads,
                             int head_dim, float *q, float *k, float *v, cudaStream_t s,
                             qerr *err)
{
    if (layout < 0 || layout > 2 || n < 0 || head_dim <= 0 || n_heads <= 0 || n_kv_heads <= 0 ||
        n_heads % n_kv_heads != 0 || (layout == 2 && n_kv_heads != n_heads)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                 "qk_qkv_split: layout %d with %d q heads, %d kv heads of %d", layout, n_heads,
                 n_kv_heads, head_dim);
        return false;
    }
    if (n == 0)
        return true;
    const bool vec = head_dim % 4 == 0 && aligned16(qkv) && aligned16(q) && aligned16(k) &&
                     aligned16(v);
    const int V = vec ? 4 : 1;
    const uint64_t units = (uint64_t)(n_heads + 2 * n_kv_heads) * (uint64_t)(head_dim / V);
    dim3 grid(ew_blocks(units), n < MAX_GRID_Y ? (unsigned)n : MAX_GRID_Y);
    qk_launch_pdl(vec ? qkv_split_kernel<4> : qkv_split_kernel<1>, grid, EW_THREADS, 0, s, layout,
                  qkv, n, n_heads, n_kv_heads, head_dim, q, k, v);
    return qk_launched("qk_qkv_split", err);
}
