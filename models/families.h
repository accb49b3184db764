/* Internal to models/: the family descriptors registered in registry.c and
 * the config.json / hparams helpers the family files share. Errors name
 * "config.json" and the field (the caller may prefix the directory). */
#ifndef QRUN_MODELS_FAMILIES_H
#define QRUN_MODELS_FAMILIES_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "registry.h"

/* For plan() functions, whose locals are `plan` and `err`: add a tensor, or
 * a Linear module's weight and optional bias, and return false on error. */
#define QPLAN_ADD(role, nd, a, b, ...)                                                             \
    do {                                                                                           \
        if (!qmodel_plan_add(plan, role, nd, a, b, err, __VA_ARGS__))                              \
            return false;                                                                          \
    } while (0)
#define QPLAN_LINEAR(bias, out, in, ...)                                                           \
    do {                                                                                           \
        if (!qmodel_plan_add_linear(plan, bias, out, in, err, __VA_ARGS__))                        \
            return false;                                                                          \
    } while (0)

extern const qmodel_family qmodel_llama;
extern const qmodel_family qmodel_falcon;

/* ---- config.json readers (JSON null counts as absent, as in transformers) */

/* The member `key` of `cfg`, or NULL when absent or null. */
const cJSON *qcfg_get(const cJSON *cfg, const char *key);
bool qcfg_has(const cJSON *cfg, const char *key);
/* Integer field in [min, 2^31-1]. required: error when absent; otherwise
 * *out = def when absent. */
bool qcfg_int(const cJSON *cfg, const char *key, bool required, int64_t def, int64_t min,
              int64_t *out, qerr *err);
/* Number > 0 (when positive) or any finite number. */
bool qcfg_num(const cJSON *cfg, const char *key, bool required, double def, bool positive,
              double *out, qerr *err);
bool qcfg_bool(const cJSON *cfg, const char *key, bool def, bool *out, qerr *err);
/* String field (NULL default allowed). */
bool qcfg_str(const cJSON *cfg, const char *key, const char *def, const char **out, qerr *err);
/* True when config.architectures (an array of strings) contains `name`. */
bool qcfg_has_architecture(const cJSON *cfg, const char *name);
/* config.model_type equals `name`. */
bool qcfg_model_type_is(const cJSON *cfg, const char *name);

/* Rotary settings from either config form into a new "rope" object:
 * {type, theta[, factor][, low_freq_factor, high_freq_factor]
 *  [, original_max_position_embeddings]}. max_pos is the resolved
 * max_position_embeddings; head_dim must be even. */
cJSON *qmodel_read_rope(const cJSON *cfg, int64_t max_pos, int64_t head_dim, qerr *err);

/* Fields every family writes: source_architecture, source_dtype,
 * bos/eos_token_id. `arch` is the matched architecture string. */
bool qmodel_add_common(cJSON *hp, const cJSON *cfg, const char *family, const char *arch,
                       qerr *err);

/* Add a number/bool/string to hparams; false only when out of memory. */
bool qhp_set_num(cJSON *hp, const char *key, double v);
bool qhp_set_bool(cJSON *hp, const char *key, bool v);
bool qhp_set_str(cJSON *hp, const char *key, const char *v);

/* The hyper-parameters every family has (docs/model-metadata.md). */
typedef struct qmodel_core {
    int64_t vocab, hidden, layers, heads, kv_heads, head_dim, ffn, max_pos;
    double norm_eps;
    const char *norm, *norm_layout, *activation, *mlp, *qkv_layout;
    bool tie, alibi, attention_bias, mlp_bias;
} qmodel_core;

/* A new hparams object holding the common fields (qmodel_add_common), the
 * core ones and `rope`, which it takes over (freed on failure too). NULL
 * with an error when something fails. */
cJSON *qmodel_new_hparams(const cJSON *cfg, const char *family, const char *arch,
                          const qmodel_core *c, cJSON *rope, qerr *err);
/* Free a half-built hparams object and report running out of memory. */
cJSON *qmodel_hparams_oom(cJSON *hp, qerr *err);

/* ---- hparams readers for plan() (errors name "hparams" and the key) ----- */

/* The sizes every plan needs. */
typedef struct qmodel_dims {
    uint64_t vocab, hidden, layers, heads, kv_heads, head_dim, ffn;
    bool tie;
} qmodel_dims;
bool qmodel_read_dims(const cJSON *hp, qmodel_dims *d, qerr *err);
bool qhp_u64(const cJSON *hp, const char *key, uint64_t *out, qerr *err);
bool qhp_bool(const cJSON *hp, const char *key, bool *out, qerr *err);
/* String value or NULL with an error. */
const char *qhp_str(const cJSON *hp, const char *key, qerr *err);

#endif
