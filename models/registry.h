/* Model families. Each family is one file in models/ plus one line in
 * registry.c. For conversion a family turns a Hugging Face config.json into
 * qrun's hyper-parameter object and lists the tensors the checkpoint must
 * hold, with shapes and roles; the runtime graph (later) reads the same
 * hyper-parameters back from the .qbin metadata. */
#ifndef QRUN_MODELS_REGISTRY_H
#define QRUN_MODELS_REGISTRY_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "error.h"

typedef struct cJSON cJSON;
typedef struct qbin_file qbin_file;

/* What a tensor is, which decides how the converter stores it. */
typedef enum qmodel_role {
    QROLE_LINEAR = 0, /* nn.Linear weight [out, in]: quantized (nf4/fp4/int8) */
    QROLE_EMBED,      /* token embedding: kept in the compute dtype */
    QROLE_LM_HEAD,    /* output projection: kept (bitsandbytes skips it) */
    QROLE_NORM,       /* norm weight or bias: kept */
    QROLE_BIAS        /* linear bias: kept */
} qmodel_role;

#define QMODEL_NAME_MAX 160

typedef struct qmodel_tensor {
    char name[QMODEL_NAME_MAX];   /* Hugging Face name, also used in the .qbin */
    int ndim;
    uint64_t shape[2];
    qmodel_role role;
} qmodel_tensor;

typedef struct qmodel_plan {
    qmodel_tensor *tensors;
    int count;
    int capacity;
} qmodel_plan;

bool qmodel_plan_add(qmodel_plan *p, qmodel_role role, int ndim, uint64_t d0, uint64_t d1,
                     qerr *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 7, 8)))
#endif
    ;
/* An nn.Linear module: "<module>.weight" [out, in] and, when `bias`,
 * "<module>.bias" [out]; `fmt` formats the module path. */
bool qmodel_plan_add_linear(qmodel_plan *p, bool bias, uint64_t out, uint64_t in, qerr *err,
                            const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 6, 7)))
#endif
    ;
void qmodel_plan_free(qmodel_plan *p);

/* ---- runtime graph ---------------------------------------------------------
 * A family binds its tensors from an opened .qbin into a private struct and
 * runs its decoder blocks as calls on the backend interface (src/backend.h).
 * The engine owns what every family shares: the embedding lookup before the
 * blocks and the final norm + output projection after them, which `bind`
 * describes in qmodel_io. */

/* Sizes the engine needs to allocate a session (from the hparams). */
typedef struct qmodel_sizes {
    int vocab, hidden, n_layers, n_heads, n_kv_heads, head_dim, ffn;
    int qkv_fused; /* width of a fused query_key_value output, 0 when separate */
} qmodel_sizes;

/* Bound by `bind` for the engine. lm_head is the embedding table when tied.
 * uses_xn2 / uses_ff_b: whether `forward` uses those buffers (qmodel_run);
 * the engine allocates them only then. */
typedef struct qmodel_io {
    const void *embed;   /* [vocab, hidden] */
    qdtype embed_dt;
    qbk_norm final_norm;
    qbk_linear lm_head;
    bool uses_xn2, uses_ff_b;
} qmodel_io;

/* One forward piece: tokens at positions [p0, p0 + n) whose hidden states
 * (the embeddings, or the output of block layer_begin - 1) are in x;
 * `forward` runs blocks [layer_begin, layer_end) and leaves the last one's
 * output there. A session split over two backends (partial GPU offload)
 * runs one range on each. kv holds the range's layers only: block i uses
 * cache layer i - layer_begin. Buffers hold the session's n_batch rows: x,
 * xn, xn2, attn, tmp [.., hidden]; q [.., Hq·D]; k, v [.., Hkv·D]; qkv
 * [.., qkv_fused] (NULL when 0); ff_a, ff_b [.., ffn]; xn2 and ff_b are NULL
 * unless bind asked for them (qmodel_io). */
typedef struct qmodel_run {
    const qbackend_ops *ops;
    qbackend *be;
    qbk_kv *kv;
    qbk_buf *x, *xn, *xn2, *q, *k, *v, *qkv, *attn, *ff_a, *ff_b, *tmp;
    int n, p0;
    int layer_begin, layer_end; /* 0 <= begin <= end <= n_layers */
    int64_t seq_len;          /* rotary seq_len: the largest position of the call + 1 */
    const atomic_int *cancel; /* polled between blocks (may be NULL) */
} qmodel_run;

typedef struct qmodel_family {
    const char *name; /* "llama", "falcon": the .qbin "architecture" */
    /* True if this family handles the config (architectures / model_type). */
    bool (*matches)(const cJSON *config);
    /* Build the "hparams" object from config.json (both config forms). */
    cJSON *(*read_config)(const cJSON *config, qerr *err);
    /* List the expected tensors for the hyper-parameters. `has_lm_head`
     * tells whether the checkpoint stores lm_head.weight (untied). */
    bool (*plan)(const cJSON *hparams, bool has_lm_head, qmodel_plan *plan, qerr *err);

    /* Runtime: look up and check every tensor the graph needs in `f` (errors
     * name the tensor), fill `io`, and return the family's bound model (freed
     * with unbind). The views point into the mapped file. */
    void *(*bind)(const qbin_file *f, const cJSON *hparams, qmodel_io *io, qerr *err);
    void (*unbind)(void *model);
    /* Run decoder blocks [r->layer_begin, r->layer_end) over r->x.
     * QRUN_ERR_CANCELLED when r->cancel is set (checked before every block). */
    qrun_status (*forward)(const void *model, const qmodel_run *r, qerr *err);
} qmodel_family;

/* ---- binding helpers for the families' bind() (errors name the tensor) -- */

/* The sizes from hparams (checked to be positive and to fit an int). */
bool qmodel_read_sizes(const cJSON *hp, qmodel_sizes *s, qerr *err);
/* A Linear "<module>.weight" [rows, cols] (+ "<module>.bias" [rows] when bias). */
bool qmodel_bind_linear(const qbin_file *f, qbk_linear *l, bool bias, uint64_t rows,
                        uint64_t cols, qerr *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 7, 8)))
#endif
    ;
/* A float tensor (f32/f16/bf16) of the given shape (cols 0: 1-D [rows]). */
bool qmodel_bind_values(const qbin_file *f, const void **data, qdtype *dt, uint64_t rows,
                        uint64_t cols, qerr *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 7, 8)))
#endif
    ;
/* A norm "<module>.weight" (+ ".bias" for LayerNorm) of width dim. */
bool qmodel_bind_norm(const qbin_file *f, qbk_norm *nm, qbk_norm_kind kind, float eps,
                      uint64_t dim, qerr *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 7, 8)))
#endif
    ;
/* The hparams "rope" object as a ready qrope (type "none" -> QROPE_NONE). */
bool qmodel_read_qrope(const cJSON *hp, qrope *r, qerr *err);
/* hparams number as float (norm_eps). */
bool qhp_float(const cJSON *hp, const char *key, float *out, qerr *err);

/* The planned tensor named `name`, or NULL. */
const qmodel_tensor *qmodel_plan_find(const qmodel_plan *p, const char *name);

/* The decoder block a tensor name belongs to: the first ".<digits>."
 * component (model.layers.12.…, transformer.h.3.…); -1 when there is none.
 * The engine places tensors on the GPU by it, and qbench counts bytes. */
int qmodel_layer_of(const char *name);

/* The source weights' dtype string from config.json: "dtype" (transformers
 * 5) or else "torch_dtype" (older), e.g. "bfloat16"; NULL when neither is a
 * string. read_config validates it and stores it as hparams.source_dtype. */
const char *qmodel_config_dtype(const cJSON *config);

typedef struct hf_checkpoint hf_checkpoint;

/* Check a checkpoint against a plan: every planned tensor present with
 * exactly the planned shape and a F32/F16/BF16 dtype. The error names the
 * tensor, the expected and found shape or the dtype. Tensors the plan does
 * not list are ignored here (see qmodel_unplanned_tensors). */
bool qmodel_check_checkpoint(const qmodel_plan *plan, const hf_checkpoint *ck, qerr *err);
/* Tensors not in the plan and not known to be harmless (rotary inv_freq
 * buffers, attention mask buffers): returns how many there are and stores up
 * to `max` of their names (owned by `ck`) in `names` (may be NULL). */
int qmodel_unplanned_tensors(const qmodel_plan *plan, const hf_checkpoint *ck, const char **names,
                             int max);
/* Non-parameter buffers some checkpoints store (…rotary_emb.inv_freq, …). */
bool qmodel_is_harmless_extra(const char *name);

/* The family for a config, or NULL with an error naming the architecture. */
const qmodel_family *qmodel_family_for_config(const cJSON *config, qerr *err);
/* The family by .qbin architecture name, or NULL. */
const qmodel_family *qmodel_family_by_name(const char *name);

#endif
