/* KV cache and causal attention on the GPU: the functions cpu_kv_store and
 * cpu_attention compute (src/cpu/ops.h), MHA/GQA/MQA, optional ALiBi.
 *
 * Positions come from the device step (qk_step): the new tokens are at
 * [step->p0, step->p0 + n). For n == 1 (decode) the launch configuration
 * depends only on kv->n_ctx and the head counts, never on the position, so
 * one captured graph serves every decode step: the work is split along the
 * key sequence into fixed chunks (blocks past the current length exit), and
 * a second kernel merges the partial softmax results in a fixed order
 * (deterministic). Batches of up to 4 tokens take the same split path when
 * the scratch was sized for them (else the tiled one); larger prefills use
 * tiles of queries against tiles of keys with an online softmax. Both are
 * f32 on CUDA cores and differ from cpu_attention only in the order of f32
 * sums (tests/gpu/test_gpu_attention.c states the bound). head_dim <= 256. */
#ifndef QRUN_KERNELS_ATTENTION_H
#define QRUN_KERNELS_ATTENTION_H

#include <stddef.h>

#include "kernels/qk.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One layer's cache in device memory: K and V each
 * [n_kv_heads][n_ctx][head_dim] of QDT_F16 or QDT_F32 (RNE on store). */
typedef struct qk_kv_layer {
    void *k, *v;
    qdtype dtype;
    int n_kv_heads, n_ctx, head_dim;
} qk_kv_layer;

/* Store k, v rows (row strides ld_k, ld_v floats) of the step's n tokens. */
bool qk_kv_store(const qk_kv_layer *kv, const qk_step *step, int n, const float *k, int ld_k,
                 const float *v, int ld_v, cudaStream_t s, qerr *err);

typedef struct qk_attn_args {
    const float *q; /* [n, n_heads * head_dim], row stride ld_q */
    int ld_q;
    float *out;     /* [n, n_heads * head_dim], row stride ld_out */
    int ld_out;
    int n;          /* new tokens (== step->n) */
    const qk_step *step;
    int n_heads;    /* a multiple of kv->n_kv_heads */
    const qk_kv_layer *kv; /* host struct holding device pointers */
    const float *alibi_slopes; /* device [n_heads] (cpu_alibi_slopes) or NULL */
    qdtype act;     /* output rounding, and the ALiBi bias rounding (cpu_alibi_bias) */
    void *scratch;  /* qk_attention_scratch_size bytes of device memory */
    size_t scratch_size;
} qk_attn_args;

/* Device scratch the split-sequence path needs (partial maxima, sums and
 * outputs) for batches of at most max_n tokens (only min(max_n, 4) count:
 * larger batches need none). Decode (n == 1) without it is refused. */
size_t qk_attention_scratch_size(int max_n, int n_heads, int n_ctx, int head_dim);

bool qk_attention(const qk_attn_args *a, cudaStream_t s, qerr *err);

#ifdef __cplusplus
}
#endif
#endif
