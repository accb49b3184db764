/* The element-wise ops of a decoder block on the GPU: embedding lookup,
 * RMSNorm / LayerNorm, rotary embeddings, SwiGLU, GELU, residual add, the
 * fused-qkv split. Each computes what its CPU counterpart in src/cpu/ops.h
 * computes (same rounding points for `act`); see that header for the
 * formulas. Buffers are device f32 [rows, cols], row-major. Sizes a kernel
 * cannot take (odd head_dim, heads that do not divide, ...) return false
 * with QRUN_ERR_INVALID_ARGUMENT before anything is enqueued; zero rows or
 * elements enqueue nothing. The bound on each op's difference from the CPU
 * is stated in its .cu file (norm.cu, rope.cu, ops.cu). */
#ifndef QRUN_KERNELS_OPS_H
#define QRUN_KERNELS_OPS_H

#include <stddef.h>

#include "kernels/qk.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[i, :] = table[step->ids[i], :] for i < n (n == step->n at run time;
 * the launch is sized by n), table [V, dim] f32/f16/bf16 on the device; then
 * rounded to act when the table's dtype is wider (as the CPU backend's embed
 * op). */
bool qk_embed(const void *table, qdtype table_dt, int dim, const qk_step *step, int n,
              qdtype act, float *out, cudaStream_t s, qerr *err);

/* cpu_rmsnorm / cpu_layernorm on n_rows rows (y may equal x); one block per
 * row holding it in registers: rows of up to 65536 values (16384 unless dim
 * % 4 == 0 and x, y are 16-byte aligned), longer ones QRUN_ERR_UNSUPPORTED. */
bool qk_rmsnorm(const float *x, float *y, int n_rows, int dim, const void *w, qdtype w_dt,
                float eps, qdtype act, cudaStream_t s, qerr *err);
bool qk_layernorm(const float *x, float *y, int n_rows, int dim, const void *w, const void *b,
                  qdtype wb_dt, float eps, qdtype act, cudaStream_t s, qerr *err);
/* x = act(x + t) as cpu_add, then the norm of x into y, in one launch (y
 * may equal t, not x). */
bool qk_add_rmsnorm(float *x, const float *t, float *y, int n_rows, int dim, const void *w,
                    qdtype w_dt, float eps, qdtype act, cudaStream_t s, qerr *err);
bool qk_add_layernorm(float *x, const float *t, float *y, int n_rows, int dim, const void *w,
                      const void *b, qdtype wb_dt, float eps, qdtype act, cudaStream_t s,
                      qerr *err);

/* cpu_rope in place: n_tokens rows of x (row stride ld floats), n_heads heads
 * of head_dim each; token t is at position step->p0 + t. inv_freq: device
 * [head_dim / 2] f32 (qrope_inv_freq of the call's seq_len), scaling: the
 * qrope's attention_scaling. */
bool qk_rope(const float *inv_freq, float scaling, int head_dim, float *x, int ld, int n_tokens,
             int n_heads, const qk_step *step, qdtype act, cudaStream_t s, qerr *err);

/* qk_rope on q (n_heads heads, row stride ld_q) and on k (the cache's
 * n_kv_heads), then qk_kv_store of the rotated k and of v into `kv` at the
 * tokens' positions: one launch for the three steps of decode. */
struct qk_kv_layer;
bool qk_rope_store(const float *inv_freq, float scaling, int head_dim, float *q, int ld_q,
                   int n_heads, float *k, int ld_k, const float *v, int ld_v, int n_tokens,
                   const qk_step *step, qdtype act, const struct qk_kv_layer *kv, cudaStream_t s,
                   qerr *err);
/* cpu_swiglu, cpu_gelu, cpu_add over n elements (aliasing as there). */
bool qk_swiglu(float *out, const float *gate, const float *up, size_t n, qdtype act,
               cudaStream_t s, qerr *err);
bool qk_gelu(float *out, const float *x, size_t n, qdtype act, cudaStream_t s, qerr *err);
bool qk_add(float *out, const float *a, const float *b, size_t n, qdtype act, cudaStream_t s,
            qerr *err);

/* Split a fused qkv [n, (Hq + 2 Hkv) D] into q [n, Hq D], k, v [n, Hkv D].
 * layout: 0 grouped (Hkv groups of [Hq/Hkv q heads, k, v]), 1 multi-query
 * (Hq q heads, then k, then v), 2 interleaved (per head: q, k, v) — the
 * qbk_qkv_layout values of src/backend.h. */
bool qk_qkv_split(int layout, const float *qkv, int n, int n_heads, int n_kv_heads, int head_dim,
                  float *q, float *k, float *v, cudaStream_t s, qerr *err);

#ifdef __cplusplus
}
#endif
#endif
