/* Model family registry, tensor plans, config.json helpers shared by the
 * family files, and the checkpoint-against-plan check. The hparams schema is
 * documented in docs/model-metadata.md. */
#include "registry.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "families.h"
#include "import/hf_checkpoint.h"
#include "qbin.h"

/* Adding a family: one file in models/ and one line here. */
static const qmodel_family *const families[] = {
    &qmodel_llama,
    &qmodel_falcon,
};
#define NFAMILIES (sizeof families / sizeof families[0])

static const char supported_text[] =
    "LlamaForCausalLM, MistralForCausalLM (sliding_window null), FalconForCausalLM, "
    "RWForCausalLM";

/* ---- plans ---------------------------------------------------------------- */

bool qmodel_plan_add(qmodel_plan *p, qmodel_role role, int ndim, uint64_t d0, uint64_t d1,
                     qerr *err, const char *fmt, ...)
{
    if (!p || !fmt || ndim < 1 || ndim > 2)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qmodel_plan_add: bad argument") ==
               QRUN_OK;
    if (p->count == p->capacity) {
        int cap = p->capacity ? p->capacity * 2 : 64;
        qmodel_tensor *t = realloc(p->tensors, (size_t)cap * sizeof *t);
        if (!t)
            return qerr_set(err, QRUN_ERR_NO_MEMORY, "tensor plan: out of memory") == QRUN_OK;
        p->tensors = t;
        p->capacity = cap;
    }
    qmodel_tensor *t = &p->tensors[p->count];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof t->name)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED, "tensor plan: name too long (%d bytes)", n) ==
               QRUN_OK;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 0;
    t->role = role;
    p->count++;
    return true;
}

/* Format a module path ("model.layers.3.mlp.up_proj") into out, which
 * holds QMODEL_NAME_MAX bytes; false with an error when it does not fit. */
static bool module_name(char *out, qerr *err, const char *fmt, va_list ap)
{
    int n = vsnprintf(out, QMODEL_NAME_MAX, fmt, ap);
    if (n < 0 || n >= QMODEL_NAME_MAX)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED, "tensor name too long (%d bytes)", n) ==
               QRUN_OK;
    return true;
}

bool qmodel_plan_add_linear(qmodel_plan *p, bool bias, uint64_t out, uint64_t in, qerr *err,
                            const char *fmt, ...)
{
    char module[QMODEL_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    bool named = module_name(module, err, fmt, ap);
    va_end(ap);
    if (!named)
        return false;
    if (!qmodel_plan_add(p, QROLE_LINEAR, 2, out, in, err, "%s.weight", module))
        return false;
    return !bias || qmodel_plan_add(p, QROLE_BIAS, 1, out, 0, err, "%s.bias", module);
}

void qmodel_plan_free(qmodel_plan *p)
{
    if (!p)
        return;
    free(p->tensors);
    p->tensors = NULL;
    p->count = p->capacity = 0;
}

const qmodel_tensor *qmodel_plan_find(const qmodel_plan *p, const char *name)
{
    if (!p || !name)
        return NULL;
    for (int i = 0; i < p->count; i++)
        if (strcmp(p->tensors[i].name, name) == 0)
            return &p->tensors[i];
    return NULL;
}

/* ---- registry ------------------------------------------------------------- */

const qmodel_family *qmodel_family_by_name(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < NFAMILIES; i++)
        if (strcmp(families[i]->name, name) == 0)
            return families[i];
    return NULL;
}

const qmodel_family *qmodel_family_for_config(const cJSON *config, qerr *err)
{
    if (!cJSON_IsObject(config)) {
        qerr_set(err, QRUN_ERR_FORMAT, "config.json: not a JSON object");
        return NULL;
    }
    for (size_t i = 0; i < NFAMILIES; i++)
        if (families[i]->matches(config))
            return families[i];
    /* Name what the config says. */
    char found[512] = "";
    size_t len = 0;
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(config, "architectures");
    const cJSON *a;
    if (cJSON_IsArray(arch))
        cJSON_ArrayForEach(a, arch) if (cJSON_IsString(a) && len < sizeof found - 1)
        {
            int n = snprintf(found + len, sizeof found - len, "%s\"%s\"", len ? ", " : "",
                             a->valuestring);
            if (n > 0)
                len += (size_t)n < sizeof found - len ? (size_t)n : sizeof found - len - 1;
        }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(config, "model_type");
    if (len == 0 && !cJSON_IsString(mt)) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED,
                 "config.json: no \"architectures\" or \"model_type\"; supported: %s",
                 supported_text);
        return NULL;
    }
    qerr_set(err, QRUN_ERR_UNSUPPORTED,
             "config.json: unsupported architecture %s (model_type \"%s\"); supported: %s",
             len ? found : "(none listed)", cJSON_IsString(mt) ? mt->valuestring : "",
             supported_text);
    return NULL;
}

const char *qmodel_config_dtype(const cJSON *config)
{
    const cJSON *d = qcfg_get(config, "dtype");
    if (!cJSON_IsString(d))
        d = qcfg_get(config, "torch_dtype");
    return cJSON_IsString(d) ? d->valuestring : NULL;
}

/* ---- config.json readers ---------------------------------------------------- */

const cJSON *qcfg_get(const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

bool qcfg_has(const cJSON *cfg, const char *key) { return qcfg_get(cfg, key) != NULL; }

bool qcfg_int(const cJSON *cfg, const char *key, bool required, int64_t def, int64_t min,
              int64_t *out, qerr *err)
{
    const cJSON *v = qcfg_get(cfg, key);
    if (!v) {
        if (required)
            return qerr_set(err, QRUN_ERR_NOT_FOUND, "config.json: required field \"%s\" is missing",
                            key) == QRUN_OK;
        *out = def;
        return true;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= (double)min && d <= 2147483647.0) || floor(d) != d) {
        if (cJSON_IsNumber(v))
            return qerr_set(err, QRUN_ERR_FORMAT,
                            "config.json: \"%s\" must be an integer >= %lld (got %g)", key,
                            (long long)min, d) == QRUN_OK;
        return qerr_set(err, QRUN_ERR_FORMAT, "config.json: \"%s\" must be an integer >= %lld", key,
                        (long long)min) == QRUN_OK;
    }
    *out = (int64_t)d;
    return true;
}

bool qcfg_num(const cJSON *cfg, const char *key, bool required, double def, bool positive,
              double *out, qerr *err)
{
    const cJSON *v = qcfg_get(cfg, key);
    if (!v) {
        if (required)
            return qerr_set(err, QRUN_ERR_NOT_FOUND, "config.json: required field \"%s\" is missing",
                            key) == QRUN_OK;
        *out = def;
        return true;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || (positive && !(v->valuedouble > 0)))
        return qerr_set(err, QRUN_ERR_FORMAT, "config.json: \"%s\" must be a %snumber", key,
                        positive ? "positive " : "") == QRUN_OK;
    *out = v->valuedouble;
    return true;
}

bool qcfg_bool(const cJSON *cfg, const char *key, bool def, bool *out, qerr *err)
{
    const cJSON *v = qcfg_get(cfg, key);
    if (!v) {
        *out = def;
        return true;
    }
    if (!cJSON_IsBool(v))
        return qerr_set(err, QRUN_ERR_FORMAT, "config.json: \"%s\" must be true or false", key) ==
               QRUN_OK;
    *out = cJSON_IsTrue(v);
    return true;
}

bool qcfg_str(const cJSON *cfg, const char *key, const char *def, const char **out, qerr *err)
{
    const cJSON *v = qcfg_get(cfg, key);
    if (!v) {
        *out = def;
        return true;
    }
    if (!cJSON_IsString(v) || !v->valuestring)
        return qerr_set(err, QRUN_ERR_FORMAT, "config.json: \"%s\" must be a string", key) ==
               QRUN_OK;
    *out = v->valuestring;
    return true;
}

bool qcfg_has_architecture(const cJSON *cfg, const char *name)
{
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(cfg, "architectures");
    const cJSON *a;
    if (!cJSON_IsArray(arch))
        return false;
    cJSON_ArrayForEach(a, arch) if (cJSON_IsString(a) && strcmp(a->valuestring, name) == 0) return true;
    return false;
}

bool qcfg_model_type_is(const cJSON *cfg, const char *name)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(cfg, "model_type");
    return cJSON_IsString(mt) && strcmp(mt->valuestring, name) == 0;
}

bool qhp_set_num(cJSON *hp, const char *key, double v)
{
    return cJSON_AddNumberToObject(hp, key, v) != NULL;
}
bool qhp_set_bool(cJSON *hp, const char *key, bool v)
{
    return cJSON_AddBoolToObject(hp, key, v) != NULL;
}
bool qhp_set_str(cJSON *hp, const char *key, const char *v)
{
    return cJSON_AddStringToObject(hp, key, v) != NULL;
}

/* Rope settings. transformers (modeling_rope_utils.py) takes the parameters
 * from `rope_scaling` when that is a non-empty object, else from
 * `rope_parameters`; the kind is `rope_type`, else `type`, else "default";
 * theta is the dict's `rope_theta`, else the top-level `rope_theta`, else
 * 10000; llama3's original_max_position_embeddings is the top-level field
 * when present, else the dict's, else max_position_embeddings. */
cJSON *qmodel_read_rope(const cJSON *cfg, int64_t max_pos, int64_t head_dim, qerr *err)
{
    const char *src = "rope_scaling";
    const cJSON *params = qcfg_get(cfg, "rope_scaling");
    if (params && !cJSON_IsObject(params)) {
        qerr_set(err, QRUN_ERR_FORMAT, "config.json: \"rope_scaling\" must be an object or null");
        return NULL;
    }
    if (!params || cJSON_GetArraySize(params) == 0) {
        src = "rope_parameters";
        params = qcfg_get(cfg, "rope_parameters");
        if (params && !cJSON_IsObject(params)) {
            qerr_set(err, QRUN_ERR_FORMAT,
                     "config.json: \"rope_parameters\" must be an object or null");
            return NULL;
        }
    }
    char field[64];
    const char *type = "default";
    const char *type_key = "rope_type";
    if (params) {
        const cJSON *t = qcfg_get(params, "rope_type");
        if (!t) {
            t = qcfg_get(params, "type");
            type_key = "type";
        }
        if (t) {
            if (!cJSON_IsString(t)) {
                qerr_set(err, QRUN_ERR_FORMAT, "config.json: \"%s.%s\" must be a string", src,
                         type_key);
                return NULL;
            }
            type = t->valuestring;
        }
    }
    /* theta */
    double theta = 10000.0;
    const cJSON *th = params ? qcfg_get(params, "rope_theta") : NULL;
    if (th)
        snprintf(field, sizeof field, "%s.rope_theta", src);
    else {
        th = qcfg_get(cfg, "rope_theta");
        snprintf(field, sizeof field, "rope_theta");
    }
    if (th) {
        if (!cJSON_IsNumber(th) || !(th->valuedouble > 0) || !isfinite(th->valuedouble)) {
            qerr_set(err, QRUN_ERR_FORMAT, "config.json: \"%s\" must be a positive number", field);
            return NULL;
        }
        theta = th->valuedouble;
    }
    /* partial rotary embeddings are not part of these families */
    const cJSON *prf = params ? qcfg_get(params, "partial_rotary_factor") : NULL;
    if (!prf)
        prf = qcfg_get(cfg, "partial_rotary_factor");
    if (prf && !(cJSON_IsNumber(prf) && prf->valuedouble == 1.0)) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED,
                 "config.json: \"partial_rotary_factor\" other than 1 is not supported");
        return NULL;
    }
    if (head_dim % 2 != 0) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED,
                 "config.json: rotary embeddings need an even head_dim (got %lld)",
                 (long long)head_dim);
        return NULL;
    }

    bool is_default = strcmp(type, "default") == 0, is_linear = strcmp(type, "linear") == 0,
         is_dynamic = strcmp(type, "dynamic") == 0, is_llama3 = strcmp(type, "llama3") == 0;
    if (!is_default && !is_linear && !is_dynamic && !is_llama3) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED,
                 "config.json: \"%s.%s\" \"%.64s\" is not supported (supported: default, linear, "
                 "dynamic, llama3)",
                 src, type_key, type);
        return NULL;
    }
    cJSON *rope = cJSON_CreateObject();
    if (!rope || !qhp_set_str(rope, "type", type) || !qhp_set_num(rope, "theta", theta))
        goto oom;
    if (is_default)
        return rope;

    /* factor (and llama3's band factors): numbers > 0 inside the dict */
    const char *keys[3] = {"factor", "low_freq_factor", "high_freq_factor"};
    int nkeys = is_llama3 ? 3 : 1;
    for (int k = 0; k < nkeys; k++) {
        const cJSON *v = qcfg_get(params, keys[k]);
        if (!v) {
            qerr_set(err, QRUN_ERR_NOT_FOUND,
                     "config.json: rope type \"%s\" needs \"%s.%s\", which is missing", type, src,
                     keys[k]);
            cJSON_Delete(rope);
            return NULL;
        }
        if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || !isfinite(v->valuedouble)) {
            qerr_set(err, QRUN_ERR_FORMAT, "config.json: \"%s.%s\" must be a positive number", src,
                     keys[k]);
            cJSON_Delete(rope);
            return NULL;
        }
        if (!qhp_set_num(rope, keys[k], v->valuedouble))
            goto oom;
    }
    if (is_dynamic) {
        /* dynamic NTK scales relative to max_position_embeddings */
        if (!qhp_set_num(rope, "original_max_position_embeddings", (double)max_pos))
            goto oom;
    } else if (is_llama3) {
        int64_t orig = max_pos;
        const cJSON *top = qcfg_get(cfg, "original_max_position_embeddings");
        qerr e2;
        if (top) {
            if (!qcfg_int(cfg, "original_max_position_embeddings", true, 0, 1, &orig, err)) {
                cJSON_Delete(rope);
                return NULL;
            }
        } else if (qcfg_get(params, "original_max_position_embeddings")) {
            if (!qcfg_int(params, "original_max_position_embeddings", true, 0, 1, &orig, &e2)) {
                qerr_set(err, QRUN_ERR_FORMAT,
                         "config.json: \"%s.original_max_position_embeddings\" must be a positive "
                         "integer",
                         src);
                cJSON_Delete(rope);
                return NULL;
            }
        }
        if (!qhp_set_num(rope, "original_max_position_embeddings", (double)orig))
            goto oom;
    }
    return rope;
oom:
    cJSON_Delete(rope);
    qerr_set(err, QRUN_ERR_NO_MEMORY, "config.json: out of memory");
    return NULL;
}

static bool token_id_ok(const cJSON *v)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 2147483647.0 &&
           floor(v->valuedouble) == v->valuedouble;
}

bool qmodel_add_common(cJSON *hp, const cJSON *cfg, const char *family, const char *arch,
                       qerr *err)
{
    if (!qhp_set_str(hp, "architecture", family) || !qhp_set_str(hp, "source_architecture", arch))
        goto oom;
    const char *dtype_key = qcfg_has(cfg, "dtype") ? "dtype" : "torch_dtype";
    const cJSON *dt = qcfg_get(cfg, dtype_key);
    if (dt) {
        if (!cJSON_IsString(dt))
            return qerr_set(err, QRUN_ERR_FORMAT, "config.json: \"%s\" must be a string",
                            dtype_key) == QRUN_OK;
        const char *s = dt->valuestring;
        if (strcmp(s, "float32") && strcmp(s, "float16") && strcmp(s, "bfloat16"))
            return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                            "config.json: \"%s\" \"%.32s\" is not supported (float32, float16, "
                            "bfloat16)",
                            dtype_key, s) == QRUN_OK;
        if (!qhp_set_str(hp, "source_dtype", s))
            goto oom;
    }
    static const char *const ids[] = {"bos_token_id", "eos_token_id"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = qcfg_get(cfg, ids[i]);
        if (!v)
            continue;
        bool ok = token_id_ok(v);
        if (!ok && cJSON_IsArray(v) && i == 1) { /* eos may be a list */
            const cJSON *e;
            ok = cJSON_GetArraySize(v) > 0;
            cJSON_ArrayForEach(e, v) ok = ok && token_id_ok(e);
        }
        if (!ok)
            return qerr_set(err, QRUN_ERR_FORMAT,
                            "config.json: \"%s\" must be a non-negative integer%s", ids[i],
                            i == 1 ? " or a list of them" : "") == QRUN_OK;
        cJSON *copy = cJSON_Duplicate(v, 1);
        if (!copy || !cJSON_AddItemToObject(hp, ids[i], copy)) {
            cJSON_Delete(copy);
            goto oom;
        }
    }
    return true;
oom:
    return qerr_set(err, QRUN_ERR_NO_MEMORY, "config.json: out of memory") == QRUN_OK;
}

/* ---- hparams readers -------------------------------------------------------- */

cJSON *qmodel_hparams_oom(cJSON *hp, qerr *err)
{
    cJSON_Delete(hp);
    qerr_set(err, QRUN_ERR_NO_MEMORY, "config.json: out of memory");
    return NULL;
}

cJSON *qmodel_new_hparams(const cJSON *cfg, const char *family, const char *arch,
                          const qmodel_core *c, cJSON *rope, qerr *err)
{
    cJSON *hp = cJSON_CreateObject();
    if (!hp) {
        cJSON_Delete(rope);
        return qmodel_hparams_oom(NULL, err);
    }
    if (!qmodel_add_common(hp, cfg, family, arch, err)) {
        cJSON_Delete(rope);
        cJSON_Delete(hp);
        return NULL;
    }
    bool ok = qhp_set_num(hp, "vocab_size", (double)c->vocab) &&
              qhp_set_num(hp, "hidden_size", (double)c->hidden) &&
              qhp_set_num(hp, "n_layers", (double)c->layers) &&
              qhp_set_num(hp, "n_heads", (double)c->heads) &&
              qhp_set_num(hp, "n_kv_heads", (double)c->kv_heads) &&
              qhp_set_num(hp, "head_dim", (double)c->head_dim) &&
              qhp_set_num(hp, "ffn_hidden_size", (double)c->ffn) &&
              qhp_set_num(hp, "max_position_embeddings", (double)c->max_pos) &&
              qhp_set_str(hp, "norm", c->norm) && qhp_set_num(hp, "norm_eps", c->norm_eps) &&
              qhp_set_str(hp, "norm_layout", c->norm_layout) &&
              qhp_set_str(hp, "activation", c->activation) && qhp_set_str(hp, "mlp", c->mlp) &&
              qhp_set_bool(hp, "tie_word_embeddings", c->tie) &&
              qhp_set_bool(hp, "alibi", c->alibi) &&
              qhp_set_bool(hp, "attention_bias", c->attention_bias) &&
              qhp_set_bool(hp, "mlp_bias", c->mlp_bias) &&
              qhp_set_str(hp, "qkv_layout", c->qkv_layout);
    if (!ok || !cJSON_AddItemToObject(hp, "rope", rope)) {
        cJSON_Delete(rope);
        return qmodel_hparams_oom(hp, err);
    }
    return hp;
}

bool qmodel_read_dims(const cJSON *hp, qmodel_dims *d, qerr *err)
{
    return qhp_u64(hp, "vocab_size", &d->vocab, err) && qhp_u64(hp, "hidden_size", &d->hidden, err) &&
           qhp_u64(hp, "n_layers", &d->layers, err) && qhp_u64(hp, "n_heads", &d->heads, err) &&
           qhp_u64(hp, "n_kv_heads", &d->kv_heads, err) &&
           qhp_u64(hp, "head_dim", &d->head_dim, err) &&
           qhp_u64(hp, "ffn_hidden_size", &d->ffn, err) &&
           qhp_bool(hp, "tie_word_embeddings", &d->tie, err);
}

bool qhp_u64(const cJSON *hp, const char *key, uint64_t *out, qerr *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > 9007199254740992.0 ||
        floor(v->valuedouble) != v->valuedouble)
        return qerr_set(err, QRUN_ERR_FORMAT, "hparams: \"%s\" missing or not a non-negative integer",
                        key) == QRUN_OK;
    *out = (uint64_t)v->valuedouble;
    return true;
}

bool qhp_bool(const cJSON *hp, const char *key, bool *out, qerr *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, key);
    if (!cJSON_IsBool(v))
        return qerr_set(err, QRUN_ERR_FORMAT, "hparams: \"%s\" missing or not a boolean", key) ==
               QRUN_OK;
    *out = cJSON_IsTrue(v);
    return true;
}

const char *qhp_str(const cJSON *hp, const char *key, qerr *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, key);
    if (!cJSON_IsString(v)) {
        qerr_set(err, QRUN_ERR_FORMAT, "hparams: \"%s\" missing or not a string", key);
        return NULL;
    }
    return v->valuestring;
}

/* ---- checkpoint against plan ------------------------------------------------ */

static void shape_text(char *buf, size_t n, int ndim, const uint64_t *shape)
{
    size_t len = 0;
    buf[0] = '\0';
    len += (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%llu", i ? ", " : "",
                                (unsigned long long)shape[i]);
    if (len < n)
        snprintf(buf + len, n - len, "]");
}

bool qmodel_check_checkpoint(const qmodel_plan *plan, const hf_checkpoint *ck, qerr *err)
{
    if (!plan || !ck)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qmodel_check_checkpoint: NULL argument") ==
               QRUN_OK;
    for (int i = 0; i < plan->count; i++) {
        const qmodel_tensor *p = &plan->tensors[i];
        const st_tensor *t = hf_find(ck, p->name);
        if (!t)
            return qerr_set(err, QRUN_ERR_NOT_FOUND, "%s: tensor %s is missing from the checkpoint",
                            hf_dir(ck), p->name) == QRUN_OK;
        bool same = t->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++)
            same = t->shape[d] == p->shape[d];
        if (!same) {
            char want[96], got[192];
            shape_text(want, sizeof want, p->ndim, p->shape);
            shape_text(got, sizeof got, t->ndim, t->shape);
            return qerr_set(err, QRUN_ERR_FORMAT,
                            "%s: tensor %s: expected shape %s (from config.json), found %s",
                            hf_dir(ck), p->name, want, got) == QRUN_OK;
        }
        if (t->dtype != QDT_F32 && t->dtype != QDT_F16 && t->dtype != QDT_BF16)
            return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                            "%s: tensor %s: dtype %s is not supported (F32, F16 or BF16)",
                            hf_dir(ck), p->name, t->dtype_name) == QRUN_OK;
    }
    return true;
}

bool qmodel_is_harmless_extra(const char *name)
{
    static const char *const suffixes[] = {
        "rotary_emb.inv_freq",   /* older Llama/Falcon checkpoints saved the buffer */
        "attn.masked_bias",      /* GPT-2 style mask buffers */
        "attn.bias",
        "attention.masked_bias",
    };
    if (!name)
        return false;
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t m = strlen(suffixes[i]);
        if (n >= m && strcmp(name + n - m, suffixes[i]) == 0 && (n == m || name[n - m - 1] == '.'))
            return true;
    }
    return false;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int qmodel_unplanned_tensors(const qmodel_plan *plan, const hf_checkpoint *ck, const char **names,
                             int max)
{
    if (!plan || !ck)
        return 0;
    const char **sorted = malloc((size_t)(plan->count ? plan->count : 1) * sizeof *sorted);
    if (!sorted)
        return -1;
    for (int i = 0; i < plan->count; i++)
        sorted[i] = plan->tensors[i].name;
    qsort(sorted, (size_t)plan->count, sizeof *sorted, cmp_str_ptr);
    int n = 0;
    for (int i = 0; i < hf_tensor_count(ck); i++) {
        const char *name = hf_tensor_at(ck, i)->name;
        if (bsearch(&name, sorted, (size_t)plan->count, sizeof *sorted, cmp_str_ptr) ||
            qmodel_is_harmless_extra(name))
            continue;
        if (names && n < max)
            names[n] = name;
        n++;
    }
    free(sorted);
    return n;
}

/* ---- runtime binding helpers ------------------------------------------------ */

bool qhp_float(const cJSON *hp, const char *key, float *out, qerr *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return qerr_set(err, QRUN_ERR_FORMAT, "hparams: \"%s\" missing or not a number", key) ==
               QRUN_OK;
    /* HF adds eps as a Python float to an f32 tensor: the f32 value counts */
    *out = (float)v->valuedouble;
    return true;
}

bool qmodel_read_sizes(const cJSON *hp, qmodel_sizes *s, qerr *err)
{
    qmodel_dims d;
    if (!qmodel_read_dims(hp, &d, err))
        return false;
    const char *layout = qhp_str(hp, "qkv_layout", err);
    if (!layout)
        return false;
    const uint64_t v[7] = {d.vocab, d.hidden, d.layers, d.heads, d.kv_heads, d.head_dim, d.ffn};
    static const char *const names[7] = {"vocab_size", "hidden_size", "n_layers", "n_heads",
                                         "n_kv_heads", "head_dim", "ffn_hidden_size"};
    for (int i = 0; i < 7; i++)
        if (v[i] == 0 || v[i] > (1u << 24))
            return qerr_set(err, QRUN_ERR_UNSUPPORTED, "hparams: \"%s\" %llu is out of range",
                            names[i], (unsigned long long)v[i]) == QRUN_OK;
    if (d.heads % d.kv_heads != 0)
        return qerr_set(err, QRUN_ERR_FORMAT, "hparams: n_heads %llu is not a multiple of "
                        "n_kv_heads %llu", (unsigned long long)d.heads,
                        (unsigned long long)d.kv_heads) == QRUN_OK;
    if (d.head_dim > CPU_MAX_HEAD_DIM)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED, "hparams: head_dim %llu exceeds %d",
                        (unsigned long long)d.head_dim, CPU_MAX_HEAD_DIM) == QRUN_OK;
    if ((d.heads + 2 * d.kv_heads) * d.head_dim > (1u << 30) || d.heads * d.head_dim > (1u << 30))
        return qerr_set(err, QRUN_ERR_UNSUPPORTED, "hparams: attention width out of range") ==
               QRUN_OK;
    s->vocab = (int)d.vocab;
    s->hidden = (int)d.hidden;
    s->n_layers = (int)d.layers;
    s->n_heads = (int)d.heads;
    s->n_kv_heads = (int)d.kv_heads;
    s->head_dim = (int)d.head_dim;
    s->ffn = (int)d.ffn;
    s->qkv_fused = strcmp(layout, "separate") == 0
                       ? 0
                       : (int)((d.heads + 2 * d.kv_heads) * d.head_dim);
    return true;
}

static bool is_float_dt(qdtype t) { return t == QDT_F32 || t == QDT_F16 || t == QDT_BF16; }

static bool bind_values_v(const qbin_file *f, const void **data, qdtype *dt, uint64_t rows,
                          uint64_t cols, qerr *err, const char *name)
{
    const qbin_tensor *t = qbin_find(f, name);
    if (!t)
        return qerr_set(err, QRUN_ERR_NOT_FOUND, "tensor %s is missing from the model file",
                        name) == QRUN_OK;
    int nd = cols ? 2 : 1;
    if (t->ndim != nd || t->shape[0] != rows || (nd == 2 && t->shape[1] != cols)) {
        char want[64], got[96];
        shape_text(want, sizeof want, nd, (const uint64_t[2]){rows, cols});
        shape_text(got, sizeof got, t->ndim > 2 ? 2 : t->ndim, t->shape);
        return qerr_set(err, QRUN_ERR_FORMAT, "tensor %s: expected shape %s, found %s%s", name,
                        want, got, t->ndim > 2 ? " (and more dimensions)" : "") == QRUN_OK;
    }
    if (!is_float_dt(t->dtype))
        return qerr_set(err, QRUN_ERR_FORMAT, "tensor %s: dtype %s (expected f32, f16 or bf16)",
                        name, qdtype_name(t->dtype)) == QRUN_OK;
    *data = qbin_tensor_data(f, t);
    *dt = t->dtype;
    return true;
}

bool qmodel_bind_values(const qbin_file *f, const void **data, qdtype *dt, uint64_t rows,
                        uint64_t cols, qerr *err, const char *fmt, ...)
{
    char name[QMODEL_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof name)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED, "tensor name too long") == QRUN_OK;
    return bind_values_v(f, data, dt, rows, cols, err, name);
}

bool qmodel_bind_linear(const qbin_file *f, qbk_linear *l, bool bias, uint64_t rows,
                        uint64_t cols, qerr *err, const char *fmt, ...)
{
    char module[QMODEL_NAME_MAX], name[QMODEL_NAME_MAX + 8];
    va_list ap;
    va_start(ap, fmt);
    bool named = module_name(module, err, fmt, ap);
    va_end(ap);
    if (!named)
        return false;
    memset(l, 0, sizeof *l);
    snprintf(name, sizeof name, "%s.weight", module);
    if (!qbin_find(f, name))
        return qerr_set(err, QRUN_ERR_NOT_FOUND, "tensor %s is missing from the model file",
                        name) == QRUN_OK;
    if (!qweight_from_qbin(f, name, &l->w, err))
        return false;
    if (l->w.rows != rows || l->w.cols != cols)
        return qerr_set(err, QRUN_ERR_FORMAT, "tensor %s: expected shape [%llu, %llu], found "
                        "[%llu, %llu]", name, (unsigned long long)rows, (unsigned long long)cols,
                        (unsigned long long)l->w.rows, (unsigned long long)l->w.cols) == QRUN_OK;
    l->bias_dt = QDT_F32;
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", module);
        if (!bind_values_v(f, &l->bias, &l->bias_dt, rows, 0, err, name))
            return false;
    }
    return true;
}

bool qmodel_bind_norm(const qbin_file *f, qbk_norm *nm, qbk_norm_kind kind, float eps,
                      uint64_t dim, qerr *err, const char *fmt, ...)
{
    char module[QMODEL_NAME_MAX], name[QMODEL_NAME_MAX + 8];
    va_list ap;
    va_start(ap, fmt);
    bool named = module_name(module, err, fmt, ap);
    va_end(ap);
    if (!named)
        return false;
    memset(nm, 0, sizeof *nm);
    nm->kind = kind;
    nm->eps = eps;
    snprintf(name, sizeof name, "%s.weight", module);
    if (!bind_values_v(f, &nm->w, &nm->dt, dim, 0, err, name))
        return false;
    if (kind == QBK_LAYERNORM) {
        qdtype bdt;
        snprintf(name, sizeof name, "%s.bias", module);
        if (!bind_values_v(f, &nm->b, &bdt, dim, 0, err, name))
            return false;
        if (bdt != nm->dt)
            return qerr_set(err, QRUN_ERR_FORMAT, "tensor %s: dtype %s differs from the weight's "
                            "%s", name, qdtype_name(bdt), qdtype_name(nm->dt)) == QRUN_OK;
    }
    return true;
}

static double rope_num(const cJSON *rope, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rope, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0.0;
}

bool qmodel_read_qrope(const cJSON *hp, qrope *r, qerr *err)
{
    const cJSON *rope = cJSON_GetObjectItemCaseSensitive(hp, "rope");
    uint64_t head_dim = 0, max_pos = 0;
    if (!qhp_u64(hp, "head_dim", &head_dim, err) ||
        !qhp_u64(hp, "max_position_embeddings", &max_pos, err))
        return false;
    const char *type = rope ? qhp_str(rope, "type", err) : NULL;
    if (!type)
        return qerr_set(err, QRUN_ERR_FORMAT, "hparams: \"rope.type\" missing") == QRUN_OK;
    qrope_params p = {0};
    if (strcmp(type, "none") == 0)
        p.type = QROPE_NONE;
    else if (strcmp(type, "default") == 0)
        p.type = QROPE_DEFAULT;
    else if (strcmp(type, "linear") == 0)
        p.type = QROPE_LINEAR;
    else if (strcmp(type, "dynamic") == 0)
        p.type = QROPE_DYNAMIC;
    else if (strcmp(type, "llama3") == 0)
        p.type = QROPE_LLAMA3;
    else
        return qerr_set(err, QRUN_ERR_UNSUPPORTED, "hparams: rope type \"%.32s\" is not "
                        "supported", type) == QRUN_OK;
    p.theta = rope_num(rope, "theta");
    p.factor = rope_num(rope, "factor");
    p.low_freq_factor = rope_num(rope, "low_freq_factor");
    p.high_freq_factor = rope_num(rope, "high_freq_factor");
    p.original_max_position_embeddings = (int64_t)rope_num(rope, "original_max_position_embeddings");
    p.max_position_embeddings = (int64_t)max_pos;
    p.head_dim = (int)head_dim;
    qerr e2;
    if (qrope_init(r, &p, &e2) != QRUN_OK)
        return qerr_set(err, QRUN_ERR_FORMAT, "hparams: %s", e2.msg) == QRUN_OK;
    return true;
}

int qmodel_layer_of(const char *name)
{
    for (const char *p = strchr(name, '.'); p; p = strchr(p + 1, '.')) {
        const char *q = p + 1;
        long v = 0;
        while (*q >= '0' && *q <= '9' && v < 100000000L)
            v = v * 10 + (*q++ - '0');
        if (q > p + 1 && *q == '.')
            return (int)v;
    }
    return -1;
}
