/* The compute backend interface: the ops a decoder block is made of, on
 * opaque activation buffers that live wherever the backend computes (host
 * memory for the CPU, device memory for CUDA). The model graphs in models/
 * are written only as calls on this table, so a backend is one more
 * implementation of it and nothing in models/ changes.
 *
 * Buffers are 2-D, [rows, cols] of f32 values (rows = token slots, at most
 * the capacity given at allocation), row-major and contiguous; an op that
 * takes `n` works on the first n rows. Every buffer, the KV cache and the
 * scratch are allocated when a session is created; the ops never allocate.
 *
 * Numerics: activations are stored in f32. `act` (set at creation) is the
 * dtype whose values they are rounded to where transformers would round them
 * running the model in that dtype (QDT_F32: no rounding; QDT_F16/BF16: HF's
 * rounding points, see src/cpu/ops.h). `compute` is the dtype weights are
 * dequantized to before the product (src/cpu/matmul.h): QDT_F32 uses the
 * exact dequantized values. Results do not depend on the thread count.
 *
 * Asynchronous backends (CUDA): the ops only enqueue work. Ops that return
 * void record the first failure (a "sticky" error, after which further ops
 * do nothing) and the next to_host or sync reports it; ops that return bool
 * report a failure at once. Positions and token ids of the step come from
 * begin_step (device state, so a captured decode graph stays valid at every
 * position); the p0/ids arguments of the ops then only size launches. */
#ifndef QRUN_BACKEND_H
#define QRUN_BACKEND_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/ops.h" /* qrope, qrope_params */
#include "dtype.h"
#include "error.h"
#include "weight.h"

typedef struct qbackend qbackend; /* one session's compute state */
typedef struct qbk_buf qbk_buf;   /* an activation buffer */
typedef struct qbk_kv qbk_kv;     /* a KV cache, all layers */
typedef struct qbk_graph qbk_graph; /* a captured decode step (CUDA graph) */
typedef struct cuda_weights cuda_weights; /* src/cuda/weights.h */

/* A Linear layer: weight (any dtype of weight.h) and optional bias. */
typedef struct qbk_linear {
    qweight w;
    const void *bias; /* [w.rows] or NULL */
    qdtype bias_dt;
} qbk_linear;

/* Element-wise ops that follow a product (qbk_matmul_multi, qbk_matmul_post):
 * y = gelu(y) if gelu, then y = y + add if add (y's width; not y itself,
 * nor the product's input). A backend may fold them into the product's
 * epilogue; the result is that of the ops run after it. */
typedef struct qbk_post {
    bool gelu;
    const qbk_buf *add;
} qbk_post;

typedef enum qbk_norm_kind { QBK_RMSNORM = 0, QBK_LAYERNORM = 1 } qbk_norm_kind;
/* A norm's parameters: weight and (LayerNorm) bias of dtype dt, [dim]. */
typedef struct qbk_norm {
    qbk_norm_kind kind;
    const void *w, *b;
    qdtype dt;
    float eps;
} qbk_norm;

/* How the rows of a fused query_key_value output split into q, k and v
 * (docs/model-metadata.md, qkv_layout). */
typedef enum qbk_qkv_layout {
    QBK_QKV_GROUPED = 0,     /* Hkv groups of [Hq/Hkv q heads, k, v] */
    QBK_QKV_MULTI_QUERY = 1, /* Hq q heads, then k, then v (Hkv = 1) */
    QBK_QKV_INTERLEAVED = 2, /* per head h: q_h, k_h, v_h (Hkv = Hq) */
} qbk_qkv_layout;

typedef struct qbackend_config {
    int n_threads;      /* <= 0: one per CPU */
    int max_rows;       /* most tokens per op (the session's batch) */
    qdtype act;         /* activation rounding dtype */
    qdtype compute;     /* weight dequantization dtype */
    size_t matmul_scratch; /* bytes qmatmul may need (int8), 0 when none */

    /* Used by the CUDA backend (the CPU backend ignores them): */
    const cuda_weights *weights; /* the engine's device copy: every weight,
                                    bias, norm or table pointer an op gets is
                                    a host pointer into the .qbin mapping that
                                    the backend translates through it */
    uint64_t max_linear_rows;    /* the largest Linear's out and in features */
    uint64_t max_linear_cols;    /*   (lm_head included): matmul workspace */
    int n_ctx;                   /* largest KV cache (positions) it will hold */
    int n_heads, head_dim;       /* query heads and their width: attention scratch */
    int max_rope_tables;         /* distinct qrope / ALiBi tables cached (0: 4) */
    int sample_vocab;            /* > 0: scratch for `sample` over this many logits */
    int sample_window;           /*   and a penalty window of up to this many ids */
} qbackend_config;

/* The sampling parameters of one draw (src/sampler.h; top_k <= 0, top_p 1,
 * min_p 0, repeat_penalty 1: off; temperature <= 0: greedy). */
typedef struct qbk_sample_params {
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p;
    float repeat_penalty;
} qbk_sample_params;

typedef struct qbackend_ops {
    const char *name; /* "cpu", "cuda" */
    qbackend *(*create)(const qbackend_config *cfg, qerr *err);
    void (*destroy)(qbackend *be);

    qbk_buf *(*buf_alloc)(qbackend *be, int rows, int cols, qerr *err);
    void (*buf_free)(qbackend *be, qbk_buf *b);
    /* KV cache for n_layers layers of n_kv_heads x n_ctx x head_dim, f16/f32. */
    qbk_kv *(*kv_alloc)(qbackend *be, int n_layers, int n_kv_heads, int n_ctx, int head_dim,
                        qdtype dt, qerr *err);
    void (*kv_free)(qbackend *be, qbk_kv *kv);

    /* Optional (NULL: the backend takes ids and positions from the ops'
     * arguments): make {p0, n, ids} the device state of the next ops, for a
     * step of n tokens at positions [p0, p0 + n). The engine calls it before
     * each forward piece (and before each replay of a captured graph). */
    bool (*begin_step)(qbackend *be, const int32_t *ids, int n, int p0, qerr *err);

    /* out[i] = table[ids[i]] for a [V, dim] f32/f16/bf16 table; ids on the
     * host (a backend with begin_step reads the step's ids instead). */
    void (*embed)(qbackend *be, const void *table, qdtype table_dt, int dim, const int32_t *ids,
                  int n, qbk_buf *out);
    /* y[n, w.rows] = x[n, w.cols] · Wᵀ + bias, then rounded to act. x != y. */
    bool (*matmul)(qbackend *be, const qbk_linear *l, const qbk_buf *x, int n, qbk_buf *y,
                   qerr *err);
    /* y = norm(x) row-wise over dim = the buffers' width; y may equal x. */
    void (*norm)(qbackend *be, const qbk_norm *nm, const qbk_buf *x, int n, qbk_buf *y);
    /* Split a fused qkv [n, (Hq + 2 Hkv) D] into q [n, Hq D], k and v [n, Hkv D]. */
    void (*qkv_split)(qbackend *be, qbk_qkv_layout layout, const qbk_buf *qkv, int n, int n_heads,
                      int n_kv_heads, int head_dim, qbk_buf *q, qbk_buf *k, qbk_buf *v);
    /* Rotary embedding in place on the n_heads heads of x's first n rows,
     * token t at position p0 + t; seq_len as cpu_rope (dynamic NTK). */
    void (*rope)(qbackend *be, const qrope *r, int64_t seq_len, qbk_buf *x, int n, int n_heads,
                 int p0);
    /* Store k, v (n rows of Hkv D) into `layer` at positions [p0, p0 + n). */
    void (*kv_store)(qbackend *be, qbk_kv *kv, int layer, int p0, int n, const qbk_buf *k,
                     const qbk_buf *v);
    /* Causal attention of q's n rows (positions p0..) over the cache's
     * positions [0, p0 + n) of `layer`; alibi_slopes [n_heads] (host) or NULL. */
    void (*attention)(qbackend *be, qbk_kv *kv, int layer, const qbk_buf *q, int n, int p0,
                      int n_heads, const float *alibi_slopes, qbk_buf *out);
    /* out = silu(gate) * up, n rows; out may alias gate or up. */
    void (*swiglu)(qbackend *be, const qbk_buf *gate, const qbk_buf *up, int n, qbk_buf *out);
    /* x = gelu(x) (erf), n rows. */
    void (*gelu)(qbackend *be, qbk_buf *x, int n);
    /* out = a + b, n rows; out may alias a or b. */
    void (*add)(qbackend *be, const qbk_buf *a, const qbk_buf *b, int n, qbk_buf *out);
    /* dst rows [dst_row, +n) = src rows [src_row, +n) (same width). */
    void (*copy_rows)(qbackend *be, const qbk_buf *src, int src_row, qbk_buf *dst, int dst_row,
                      int n);
    /* Copy n rows of b to host memory (n x width floats). Returns when the
     * values are there; false with the error when this copy or any op before
     * it failed (the sticky error is then cleared). */
    bool (*to_host)(qbackend *be, const qbk_buf *b, int n, float *host, qerr *err);
    /* Copy n rows of host floats (n x width) into b (partial offload: the
     * hidden state passed from one backend to the next). */
    bool (*from_host)(qbackend *be, const float *host, int n, qbk_buf *b, qerr *err);

    /* ---- optional (NULL in the CPU backend) ---- */
    /* Wait for every enqueued op; report (and clear) the first error. */
    bool (*sync)(qbackend *be, qerr *err);
    /* Decode graphs: between capture_begin and capture_end the ops are
     * recorded rather than run. capture_end returns the graph, or NULL when
     * the capture failed or an op was not graph-safe (e.g. it had to upload
     * a table for this call only): the caller then runs the step eagerly.
     * A NULL return is not an error; `err` is set only for a device failure
     * that makes the backend unusable. graph_launch replays a graph (after
     * begin_step for the new position). */
    bool (*capture_begin)(qbackend *be, qerr *err);
    qbk_graph *(*capture_end)(qbackend *be, qerr *err);
    bool (*graph_launch)(qbackend *be, qbk_graph *g, qerr *err);
    void (*graph_free)(qbackend *be, qbk_graph *g);
    /* Pick the next token from row `row` of a logits buffer where it lies,
     * as qsampler_sample would from the same values (src/kernels/sample.h):
     * recent = the penalty window's ids (host, n_recent <= sample_window),
     * draw = qsampler_draw's output (ignored when greedy). Waits for the id;
     * *id is -1 when every logit is -inf or NaN. Only the id crosses to the
     * host. */
    bool (*sample)(qbackend *be, const qbk_buf *logits, int row, const qbk_sample_params *p,
                   const int32_t *recent, int n_recent, uint64_t draw, int32_t *id, qerr *err);

    /* Fused forms of op sequences, each optional (NULL: the models run the
     * sequence, see the qbk_* helpers below) and each computing exactly
     * what its sequence computes; they exist to save launches on the GPU.
     * add_norm: x = x + t, then y = norm(x) (y != x; y may be t). */
    void (*add_norm)(qbackend *be, const qbk_norm *nm, qbk_buf *x, const qbk_buf *t, int n,
                     qbk_buf *y);
    /* rope on q (n_heads) and k (n_kv_heads), then kv_store(k, v). */
    void (*rope_store)(qbackend *be, const qrope *r, int64_t seq_len, qbk_buf *q, qbk_buf *k,
                       const qbk_buf *v, int n, int n_heads, int n_kv_heads, int p0, qbk_kv *kv,
                       int layer);
    /* ys[i] = matmul(ls[i], x), then posts[i] (posts may be NULL), for
     * i < count (<= QBK_MATMUL_MAX_MULTI): the products of one input, such
     * as q/k/v or gate/up. */
    bool (*matmul_multi)(qbackend *be, const qbk_linear *const *ls, int count, const qbk_buf *x,
                         int n, const qbk_post *posts, qbk_buf *const *ys, qerr *err);
} qbackend_ops;

#define QBK_MATMUL_MAX_MULTI 3

static inline void qbk_add_norm(const qbackend_ops *B, qbackend *be, const qbk_norm *nm,
                                qbk_buf *x, const qbk_buf *t, int n, qbk_buf *y)
{
    if (B->add_norm) {
        B->add_norm(be, nm, x, t, n, y);
    } else {
        B->add(be, x, t, n, x);
        B->norm(be, nm, x, n, y);
    }
}

static inline void qbk_rope_store(const qbackend_ops *B, qbackend *be, const qrope *r,
                                  int64_t seq_len, qbk_buf *q, qbk_buf *k, const qbk_buf *v,
                                  int n, int n_heads, int n_kv_heads, int p0, qbk_kv *kv,
                                  int layer)
{
    if (B->rope_store) {
        B->rope_store(be, r, seq_len, q, k, v, n, n_heads, n_kv_heads, p0, kv, layer);
    } else {
        B->rope(be, r, seq_len, q, n, n_heads, p0);
        B->rope(be, r, seq_len, k, n, n_kv_heads, p0);
        B->kv_store(be, kv, layer, p0, n, k, v);
    }
}

static inline bool qbk_matmul_multi(const qbackend_ops *B, qbackend *be,
                                    const qbk_linear *const *ls, int count, const qbk_buf *x,
                                    int n, const qbk_post *posts, qbk_buf *const *ys, qerr *err)
{
    if (B->matmul_multi)
        return B->matmul_multi(be, ls, count, x, n, posts, ys, err);
    for (int i = 0; i < count; i++) {
        if (!B->matmul(be, ls[i], x, n, ys[i], err))
            return false;
        if (posts && posts[i].gelu)
            B->gelu(be, ys[i], n);
        if (posts && posts[i].add)
            B->add(be, ys[i], posts[i].add, n, ys[i]);
    }
    return true;
}

/* y = matmul(l, x), then post. */
static inline bool qbk_matmul_post(const qbackend_ops *B, qbackend *be, const qbk_linear *l,
                                   const qbk_buf *x, int n, qbk_post post, qbk_buf *y, qerr *err)
{
    return qbk_matmul_multi(B, be, &l, 1, x, n, &post, &y, err);
}

extern const qbackend_ops qbackend_cpu;
extern const qbackend_ops qbackend_cuda; /* only in builds with QRUN_HAVE_CUDA */

#endif
