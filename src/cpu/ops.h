/* CPU backend: the element-wise and attention ops of a Llama/Falcon block.
 *
 * Activations are f32, row-major [tokens, features]. Every op accumulates in
 * f32. Where an op takes `act` (QDT_F32, QDT_F16 or QDT_BF16) it rounds its
 * intermediate results where Hugging Face transformers does when the model
 * runs in that dtype, so a bf16 model's activations follow HF's rounding while
 * still being stored as f32; with act = QDT_F32 no rounding happens.
 *
 * The ops neither allocate nor print. Preconditions (sizes, ids < V, p0 + n
 * <= n_ctx, ...) are the caller's: the graph builder checks them once.
 * A NULL pool runs serially; results do not depend on the thread count
 * (every output element is computed by one task in a fixed order). */
#ifndef QRUN_CPU_OPS_H
#define QRUN_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "cpu/threads.h"
#include "dtype.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest head_dim the rotary and attention ops handle (their per-task state
 * lives on the stack). */
#define CPU_MAX_HEAD_DIM 512

/* Round f32 `x` to `act` (f16/bf16, RNE) and back; identity for QDT_F32. */
float cpu_round_act(float x, qdtype act);

/* ---- embedding ---------------------------------------------------------- */
/* out[i, :] = table[ids[i], :] for a [V, dim] table of f32/f16/bf16. */
void cpu_embed(const void *table, qdtype table_dt, int dim, const int32_t *ids, int n_tokens,
               float *out);

/* ---- norms -------------------------------------------------------------- */
/* Llama RMSNorm of each row of x [n_rows, dim] into y (y may equal x):
 *   h = act(x * (1 / sqrt(mean(x^2) + eps)))    in f32, eps rounded to f32
 *   y = round_P(w * h)                           P = w_dt if w_dt == act, else f32
 * (HF: self.weight * hidden.to(input_dtype); torch promotes mixed dtypes to
 * f32). w is [dim] of f32/f16/bf16. */
void cpu_rmsnorm(qthreads *pool, const float *x, float *y, int n_rows, int dim, const void *w,
                 qdtype w_dt, float eps, qdtype act);

/* Falcon LayerNorm (nn.LayerNorm) of each row: mean and variance (biased) in
 * f32, rstd = 1 / sqrt(var + eps), y = act((x * rstd - mean * rstd) * w + b),
 * one rounding at the end as torch's CPU kernel does. w, b: [dim]. */
void cpu_layernorm(qthreads *pool, const float *x, float *y, int n_rows, int dim, const void *w,
                   const void *b, qdtype wb_dt, float eps, qdtype act);

/* ---- rotary embeddings -------------------------------------------------- */
typedef enum qrope_type {
    QROPE_NONE = 0, /* ALiBi models: no rotary */
    QROPE_DEFAULT,
    QROPE_LINEAR,
    QROPE_DYNAMIC,
    QROPE_LLAMA3,
} qrope_type;

/* The hparams "rope" object plus the two model sizes it needs. */
typedef struct qrope_params {
    qrope_type type;
    double theta;                /* rope_theta */
    double factor;               /* linear, dynamic, llama3 */
    double low_freq_factor;      /* llama3 */
    double high_freq_factor;     /* llama3 */
    int64_t original_max_position_embeddings; /* llama3 */
    int64_t max_position_embeddings;          /* dynamic: the NTK reference length */
    int head_dim;                /* even, <= CPU_MAX_HEAD_DIM */
} qrope_params;

typedef struct qrope {
    qrope_params p;
    /* inv_freq for every sequence length the type does not rescale for:
     * all of them for default/linear/llama3, seq_len <= max_position for
     * dynamic. f32, as HF's buffer. */
    float inv_freq[CPU_MAX_HEAD_DIM / 2];
    /* HF multiplies cos/sin by this; 1.0 for every type above (kept so a
     * future type with another value has its place). */
    float attention_scaling;
} qrope;

/* Validate the parameters and precompute inv_freq. QRUN_ERR_INVALID_ARGUMENT
 * (message names the field) for an odd/oversized head_dim, theta <= 0, a
 * missing factor, llama3 with high_freq_factor == low_freq_factor, ... */
qrun_status qrope_init(qrope *r, const qrope_params *p, qerr *err);

/* The head_dim/2 inverse frequencies a forward call uses whose largest
 * position + 1 is `seq_len`. Only `dynamic` depends on seq_len: as HF's
 * dynamic_rope_update, when seq_len > max_position_embeddings the base
 * becomes theta * ((factor * seq_len / max_pos) - (factor - 1))^(D/(D-2)),
 * computed in f32 as torch does with a tensor seq_len. */
void qrope_inv_freq(const qrope *r, int64_t seq_len, float *inv_freq);

/* Rotate, in place, every head of x: n_tokens rows of n_heads * head_dim
 * values, consecutive rows `ld` floats apart; token t is at position pos[t].
 * HF rotate-half: x'[i] = x[i] c_i - x[i+D/2] s_i, x'[i+D/2] = x[i+D/2] c_i +
 * x[i] s_i with angle f32(pos) * inv_freq[i] (f32), cos/sin rounded to act,
 * and each product and the sum rounded to act (q * cos + rotate_half(q) *
 * sin in act dtype). inv_freq comes from qrope_inv_freq with seq_len =
 * max(pos) + 1 of this call (pass the same seq_len for q and k). */
void cpu_rope(qthreads *pool, const qrope *r, int64_t seq_len, float *x, int ld, int n_tokens,
              int n_heads, const int32_t *pos, qdtype act);

/* ---- ALiBi -------------------------------------------------------------- */
/* Falcon/BLOOM slopes for n_heads heads (any count), f32 as transformers'
 * build_alibi_tensor computes them before its bf16 cast. */
void cpu_alibi_slopes(int n_heads, float *slopes);
/* The bias transformers' (sdpa) Falcon adds to the scaled score of key
 * position j in a head of slope `slope` (see ops.c for the derivation):
 *   act(act(bf16(bf16(slope) * bf16(j))) / f32(sqrt(head_dim))) */
float cpu_alibi_bias(float slope, int j, int head_dim, qdtype act);

/* ---- KV cache and attention -------------------------------------------- */
/* One layer's cache: K and V each [n_kv_heads][n_ctx][head_dim] of f32 or
 * f16 (round to nearest even on store). */
typedef struct cpu_kv_layer {
    void *k;
    void *v;
    qdtype dtype;
    int n_kv_heads;
    int n_ctx;
    int head_dim;
} cpu_kv_layer;

/* Store the keys and values of tokens at positions [p0, p0 + n_tokens):
 * k and v are [n_tokens, n_kv_heads * head_dim] with row strides ld_k, ld_v. */
void cpu_kv_store(qthreads *pool, const cpu_kv_layer *kv, int p0, int n_tokens, const float *k,
                  int ld_k, const float *v, int ld_v);

typedef struct cpu_attn_args {
    const float *q;       /* [n_tokens, n_heads * head_dim], row stride ld_q */
    int ld_q;
    float *out;           /* [n_tokens, n_heads * head_dim], row stride ld_out */
    int ld_out;
    int n_tokens;         /* new tokens, at positions [p0, p0 + n_tokens) */
    int p0;
    int n_heads;          /* a multiple of kv->n_kv_heads */
    const cpu_kv_layer *kv; /* already holds positions [0, p0 + n_tokens) */
    const float *alibi_slopes; /* [n_heads] (cpu_alibi_slopes) or NULL */
    qdtype act;           /* the output is rounded to act */
} cpu_attn_args;

/* Causal attention: token t (position p = p0 + t), query head h, KV head
 * g = h / (n_heads / n_kv_heads):
 *   s_j = dot(q, K[g][j]) * (1/sqrt(D)) (+ cpu_alibi_bias(m_h, j)), j <= p
 *   out = sum_j softmax(s)_j V[g][j]
 * softmax in f32 with max subtraction, computed online over key chunks at
 * fixed absolute positions, so scratch does not grow with the context and a
 * token's result does not depend on how many tokens share the call (decode
 * one at a time == one batched call, bitwise). */
void cpu_attention(qthreads *pool, const cpu_attn_args *a);

/* ---- element-wise ------------------------------------------------------- */
/* out = act(act(silu(gate)) * up), silu(x) = x / (1 + exp(-x)); out may
 * alias gate or up. n elements. */
void cpu_swiglu(qthreads *pool, float *out, const float *gate, const float *up, size_t n,
                qdtype act);
/* Exact GELU: out = act(x * 0.5 * (1 + erf(x / sqrt(2)))); in place allowed. */
void cpu_gelu(qthreads *pool, float *out, const float *x, size_t n, qdtype act);
/* out = act(a + b); out may alias a or b. */
void cpu_add(qthreads *pool, float *out, const float *a, const float *b, size_t n, qdtype act);
/* out = act(x * s) (a plain copy when s == 1 and act == f32). */
void cpu_scale(qthreads *pool, float *out, const float *x, float s, size_t n, qdtype act);

#ifdef __cplusplus
}
#endif

#endif
