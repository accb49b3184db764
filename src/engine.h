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
    qrun_backend backend;        /* AUTO/CPU (CUDA later) */
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
} qctx_opts;

/* Allocate everything a session needs once: KV cache for n_ctx positions,
 * activation scratch for n_batch tokens, the thread pool. Nothing is
 * allocated later in the forward pass. */
qctx *qctx_create(const qengine *e, const qctx_opts *o, qerr *err);
void qctx_free(qctx *c);
int qctx_n_ctx(const qctx *c);

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
