/* What src/engine.c and src/engine_gpu.c share (not part of engine.h's
 * interface): the loaded model's state and the GPU placement functions. */
#ifndef QRUN_ENGINE_PRIV_H
#define QRUN_ENGINE_PRIV_H

#include "engine.h"
#include "qbin.h"
#include "qrun_config.h"
#include "registry.h"

typedef struct chat_template chat_template;
typedef struct cuda_weights cuda_weights;

struct qengine {
    qbin_file *file;
    const qmodel_family *family;
    void *model; /* the family's bound graph */
    qmodel_io io;
    qmodel_sizes sizes;
    int n_ctx_train;
    qdtype model_dtype; /* metadata compute_dtype */
    const char *weights, *compute_name;
    bool int8; /* some weight is LLM.int8: sessions need matmul scratch */
    tok_tokenizer *tok;
    chat_template *tmpl;
    int32_t *eos;
    int n_eos;
    int32_t bos;
    const char *bos_text, *eos_text;
    uint64_t n_params, weight_bytes;
    const char *tok_tensor; /* the tokenizer's bytes (never uploaded) */
    qengine_opts opts;

    /* GPU part: layers [0, n_gpu) (0: none); with all of them, the final
     * norm and lm_head run there too. */
    int n_gpu;
    cuda_weights *dev;
    char gpu_name[256];
    const char *backend_name; /* "cpu", "cuda", "cuda+cpu" */
};

/* The load's progress callback (true: go on). */
bool qengine_progress(const qengine *e, float f);

#if QRUN_HAVE_CUDA
/* Decide how many decoder layers go to the GPU (opts.backend, gpu_layers,
 * free memory against a planned session) and upload their tensors: sets
 * n_gpu, dev, gpu_name and backend_name. Without a usable GPU under AUTO it
 * logs a warning and leaves the model on the CPU. */
bool engine_gpu_load(qengine *e, qerr *err);
/* Whether a session's GPU part (KV cache, activations, workspaces) fits in
 * the device's free memory; logs its sizes, or says what is missing. */
bool engine_gpu_session_fits(const qengine *e, int n_ctx, int n_batch, qdtype kv_type,
                             qdtype act, qerr *err);
/* The largest rows and cols of a Linear on the GPU (the lm_head's too when
 * `output`), which size the matmul workspace. */
void engine_gpu_linear_max(const qengine *e, bool output, uint64_t *rows, uint64_t *cols);
#endif

#endif
