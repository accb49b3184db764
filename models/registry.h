/* Model families. Each family is one file in models/ plus one line in
 * registry.c. For conversion a family turns a Hugging Face config.json into
 * qrun's hyper-parameter object and lists the tensors the checkpoint must
 * hold, with shapes and roles; the runtime graph (later) reads the same
 * hyper-parameters back from the .qbin metadata. */
#ifndef QRUN_MODELS_REGISTRY_H
#define QRUN_MODELS_REGISTRY_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"

typedef struct cJSON cJSON;

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

typedef struct qmodel_family {
    const char *name; /* "llama", "falcon": the .qbin "architecture" */
    /* True if this family handles the config (architectures / model_type). */
    bool (*matches)(const cJSON *config);
    /* Build the "hparams" object from config.json (both config forms). */
    cJSON *(*read_config)(const cJSON *config, qerr *err);
    /* List the expected tensors for the hyper-parameters. `has_lm_head`
     * tells whether the checkpoint stores lm_head.weight (untied). */
    bool (*plan)(const cJSON *hparams, bool has_lm_head, qmodel_plan *plan, qerr *err);
} qmodel_family;

/* The planned tensor named `name`, or NULL. */
const qmodel_tensor *qmodel_plan_find(const qmodel_plan *p, const char *name);

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
