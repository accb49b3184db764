/* Weight bytes per decode step (traffic.h). The tensor roles come from the
 * family's plan over the file's own hparams, so the count follows the same
 * rules as the converter that wrote the file. */
#include "traffic.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qbin.h"
#include "registry.h"

/* Companion tensors qconvert writes next to a quantized weight. */
static const char *const companions[] = {".absmax", ".qabsmax", ".absmax2", ".absmax_offset",
                                         ".scb"};

static uint64_t stored_bytes(const qbin_file *f, const qbin_tensor *t)
{
    uint64_t b = t->nbytes;
    char name[QBIN_MAX_NAME + 32];
    for (size_t i = 0; i < sizeof companions / sizeof companions[0]; i++) {
        snprintf(name, sizeof name, "%s%s", t->name, companions[i]);
        const qbin_tensor *c = qbin_find(f, name);
        if (c)
            b += c->nbytes;
    }
    return b;
}

static bool hp_bool(const cJSON *hp, const char *key, bool *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, key);
    *out = cJSON_IsTrue(v);
    return cJSON_IsBool(v);
}

bool traffic_from_qbin(const char *path, traffic *t, qerr *err)
{
    memset(t, 0, sizeof *t);
    qbin_file *f = qbin_open(path, QBIN_OPEN_SKIP_CHECKSUMS, err);
    if (!f)
        return false;
    qmodel_plan plan = {0};
    bool ok = false;
    const cJSON *meta = qbin_metadata(f);
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(meta, "architecture");
    const cJSON *hp = cJSON_GetObjectItemCaseSensitive(meta, "hparams");
    const qmodel_family *fam = cJSON_IsString(arch) ? qmodel_family_by_name(arch->valuestring)
                                                    : NULL;
    qmodel_sizes sz;
    bool tie;
    if (!fam || !cJSON_IsObject(hp)) {
        qerr_set(err, QRUN_ERR_FORMAT, "metadata: no known \"architecture\" and \"hparams\"");
        goto out;
    }
    if (!qmodel_read_sizes(hp, &sz, err))
        goto out;
    if (!hp_bool(hp, "tie_word_embeddings", &tie)) {
        qerr_set(err, QRUN_ERR_FORMAT, "hparams: \"tie_word_embeddings\" missing");
        goto out;
    }
    if (!fam->plan(hp, qbin_find(f, "lm_head.weight") != NULL, &plan, err))
        goto out;
    t->n_layers = sz.n_layers;
    t->layer = calloc((size_t)sz.n_layers, sizeof *t->layer);
    if (!t->layer) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
        goto out;
    }
    for (int i = 0; i < plan.count; i++) {
        const qmodel_tensor *pt = &plan.tensors[i];
        const qbin_tensor *qt = qbin_find(f, pt->name);
        if (!qt) {
            qerr_set(err, QRUN_ERR_FORMAT, "tensor %s, which the hparams call for, is missing",
                     pt->name);
            goto out;
        }
        uint64_t b = stored_bytes(f, qt);
        int l = qmodel_layer_of(pt->name);
        switch (pt->role) {
        case QROLE_EMBED:
            if (tie) { /* the table is also the output projection */
                t->lm_head += b;
                t->output += b;
            } else {
                t->embed_row += qt->nbytes / (pt->shape[0] ? pt->shape[0] : 1);
            }
            continue;
        case QROLE_LM_HEAD:
            t->lm_head += b;
            t->output += b;
            continue;
        case QROLE_NORM:
            t->norms += b;
            break;
        case QROLE_LINEAR:
        case QROLE_BIAS:
            t->linear += b;
            break;
        }
        if (l >= 0 && l < sz.n_layers)
            t->layer[l] += b;
        else
            t->output += b; /* the final norm */
    }
    t->total = t->linear + t->norms + t->lm_head + t->embed_row;
    ok = true;
out:
    if (!ok) {
        traffic_free(t);
        if (err && !strstr(err->msg, path))
            qerr_prefix(err, "%s: ", path);
    }
    qmodel_plan_free(&plan);
    qbin_close(f);
    return ok;
}

void traffic_free(traffic *t)
{
    if (!t)
        return;
    free(t->layer);
    t->layer = NULL;
}

void traffic_split(const traffic *t, int n_gpu_layers, uint64_t *gpu, uint64_t *cpu)
{
    uint64_t g = 0, c = 0;
    for (int i = 0; i < t->n_layers; i++)
        *(i < n_gpu_layers ? &g : &c) += t->layer[i];
    *(n_gpu_layers >= t->n_layers ? &g : &c) += t->output;
    *(n_gpu_layers > 0 ? &g : &c) += t->embed_row;
    *gpu = g;
    *cpu = c;
}
