/* The inference engine behind the public API: a loaded model (weights bound
 * from the .qbin, tokenizer, hyper-parameters) and per-session compute
 * contexts (KV cache, scratch, thread pool) that run the decoder. src/api.c
 * wraps this in qrun.h; the model graphs live in models/ and reach the
 * compute through src/backend.h. */
#ifndef QRUN_ENGINE_H
#define QRUN_ENGINE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"
#include "qrun.h"
#include "tokenizer.h"

typedef struct cJSON cJSON;
typedef struct qengine qengine;   /* a loaded model; immutable after load */
typedef struct qctx qctx;         /* one session's compute state */

typedef struct qengine_opts {
    /* CPU: everything on the CPU. CUDA: decoder layers [0, g) on the GPU
     * (docs/gpu.md); QRUN_ERR_DEVICE when there is no usable GPU or the
     * layers do not fit. AUTO: CUDA when a usable GPU is there and at least
     * one layer fits, else the CPU (with a WARN log). Builds without CUDA:
     * AUTO is the CPU and CUDA is QRUN_ERR_UNSUPPORTED. */
    qrun_backend backend;
    /* Layers on the GPU: -1 = as many as fit in free device memory after
     * reserving a session (KV cache for min(trained context, 4096)
     * positions, activations, workspace) and a margin; N = min(N, layers);
     * 0 = none (the CPU engine). Ignored for the CPU backend. */
    int gpu_layers;
    /* Device bytes the planner may use (0: the free memory); tests use it to
     * force a partial offload or an impossible fit. */
    uint64_t gpu_mem_limit;
    int n_threads;               /* default thread count for contexts */
    bool verify_checksums;
    qrun_progress_fn progress;   /* fraction of tensors bound/verified */
    void *progress_user;
    qrun_log_fn log;
    void *log_user;
} qengine_opts;

/* Map the file, validate it, bind every tensor the family's graph needs
 * (errors name the tensor), load the tokenizer from its embedded bytes
 * (special ids overridden from the metadata), and compile the chat template
 * when there is one. */
qengine *qengine_load(const char *path, const qengine_opts *o, qerr *err);
void qengine_free(qengine *e);

const cJSON *qengine_metadata(const qengine *e);
const char *qengine_metadata_json(const qengine *e);
const tok_tokenizer *qengine_tokenizer(const qengine *e);
int32_t qengine_vocab_size(const qengine *e);     /* logits per token */
int32_t qengine_n_ctx_train(const qengine *e);
/* EOS ids (several for some models); n set to the count. */
const int32_t *qengine_eos_ids(const qengine *e, int *n);
/* Decoder layers [0, n) run on the GPU (0: the CPU engine). */
int qengine_gpu_layers(const qengine *e);
/* The model's compute dtype (metadata compute_dtype): the activation dtype
 * a GPU session uses by default. */
qdtype qengine_compute_dtype(const qengine *e);
/* Fill the public info struct (strings owned by the engine). */
void qengine_info(const qengine *e, qrun_model_info *info);
/* The compiled chat template, or NULL when the model has none. */
const struct chat_template *qengine_chat_template(const qengine *e);
/* bos/eos token text for templates ("" when unknown). */
const char *qengine_bos_text(const qengine *e);
const char *qengine_eos_text(const qengine *e);
/* Log through the model's callback (no-op without one). */
void qengine_log(const qengine *e, qrun_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

typedef struct qctx_opts {
    int n_ctx;            /* positions the KV cache holds; 0: the trained context */
    int n_batch;          /* most tokens per forward pass; 0: 256 (at most n_ctx) */
    qdtype kv_type;       /* QDT_F16 or QDT_F32 */
    int n_threads;        /* 0: the engine's default */
    /* Activation precision (added after the first version; 0 = QDT_F32).
     * QDT_F32: activations stay f32 and weights are dequantized to their
     * exact f32 values (transformers running the model in float32 on the
     * dequantized weights; the most accurate, the CPU default). QDT_F16 /
     * QDT_BF16: activations and dequantized weights are rounded where
     * transformers rounds when the model runs in that dtype (what a
     * bitsandbytes model with that compute dtype computes). */
    qdtype act_dtype;
    /* GPU sessions replay a captured CUDA graph for single-token steps when
     * every layer is on the GPU; true runs every step eagerly (tests compare
     * the two; the environment variable QRUN_CUDA_GRAPHS=0 does the same). */
    bool no_cuda_graphs;
} qctx_opts;

/* Allocate everything a session needs once: KV cache for n_ctx positions,
 * activation scratch for n_batch tokens, the thread pool. Nothing is
 * allocated later in the forward pass. With GPU layers the session has a
 * CUDA part (layers [0, g), their KV cache in device memory) and, when
 * g < n_layers, a CPU part for the rest; both use act_dtype. Device memory
 * that does not fit is QRUN_ERR_DEVICE with the numbers. */
qctx *qctx_create(const qengine *e, const qctx_opts *o, qerr *err);
void qctx_free(qctx *c);
int qctx_n_ctx(const qctx *c);
/* Single-token steps this session ran by replaying its CUDA graph. */
int qctx_graph_replays(const qctx *c);

/* ---- sampling on the device ----------------------------------------------
 * With every layer on the GPU the next token can be picked where the logits
 * are (src/kernels/sample.h picks what qsampler_sample picks from the same
 * logits), so only its id crosses to the host. The environment variable
 * QRUN_GPU_SAMPLING=0 turns this off for sessions created afterwards. */
bool qctx_device_sampling(const qctx *c);
int qctx_device_samples(const qctx *c); /* ids picked so (tests) */

/* One draw's parameters, as qsampler_sample would use them: the sampler's
 * settings, its penalty window (qsampler_window, oldest first) and, unless
 * greedy, the PRNG output qsampler_draw returns for this token. */
typedef struct qctx_sample {
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p;
    float repeat_penalty;
    const int32_t *recent;
    int n_recent; /* at most n_ctx + 1 */
    uint64_t draw;
} qctx_sample;

/* qctx_forward of one token `id` at n_past (CUDA graph included), then the
 * next token picked on the device from its logits into *next (-1 when every
 * logit is -inf or NaN). The logits stay on the device: qctx_last_logits
 * copies them (valid until the next forward). */
qrun_status qctx_forward_sample(qctx *c, int32_t id, int n_past, const qctx_sample *s,
                                int32_t *next, const atomic_int *cancel, qerr *err);
qrun_status qctx_last_logits(qctx *c, float *logits, qerr *err);

/* Run tokens `ids` at positions [n_past, n_past + n) (n_past + n <= n_ctx;
 * any n: split internally into n_batch pieces). Writes the logits of the
 * last token into logits_last (vocab floats) when not NULL, and of every
 * token into logits_all (n x vocab) when not NULL. KV entries at positions
 * >= n_past are overwritten, so rewinding is just calling with a smaller
 * n_past. `cancel` (may be NULL) is polled between layers: when it becomes
 * non-zero the call returns QRUN_ERR_CANCELLED. */
qrun_status qctx_forward(qctx *c, const int32_t *ids, int n, int n_past, float *logits_last,
                         float *logits_all, const atomic_int *cancel, qerr *err);

#endif
