/* Loader of a weight view from a .qbin: finds the tensor and its
 * quantization companions (docs/qbin-format.md, "Tensor naming for quantized
 * weights") and checks every dtype and shape against the file's
 * "quantization" metadata before anything points at the data. The compute
 * code then trusts the view without further checks. */
#include "weight.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "quant.h"

/* Find "<name><suffix>" (suffix may be "") with the given dtype and 1-D
 * length `len`; on failure set err naming both tensors. */
static const qbin_tensor *find_aux(const qbin_file *f, const char *name, const char *suffix,
                                   qdtype dt, uint64_t len, qerr *err)
{
    char full[QBIN_MAX_NAME + 64];
    int n = snprintf(full, sizeof full, "%s%s", name, suffix);
    if (n < 0 || (size_t)n >= sizeof full) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "%s: tensor name too long", name);
        return NULL;
    }
    const qbin_tensor *t = qbin_find(f, full);
    if (!t) {
        qerr_set(err, QRUN_ERR_NOT_FOUND, "%s: missing quantization tensor %s", name, full);
        return NULL;
    }
    if (t->dtype != dt) {
        qerr_set(err, QRUN_ERR_FORMAT, "%s: tensor %s has dtype %s, expected %s", name, full,
                 qdtype_name(t->dtype), qdtype_name(dt));
        return NULL;
    }
    if (t->ndim != 1 || t->shape[0] != len) {
        qerr_set(err, QRUN_ERR_FORMAT, "%s: tensor %s must have shape [%llu]", name, full,
                 (unsigned long long)len);
        return NULL;
    }
    return t;
}

static const cJSON *get_item(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

bool qweight_from_qbin(const qbin_file *f, const char *name, qweight *w, qerr *err)
{
    memset(w, 0, sizeof *w);
    const qbin_tensor *t = qbin_find(f, name);
    if (!t) {
        qerr_set(err, QRUN_ERR_NOT_FOUND, "weight %s: no such tensor", name);
        return false;
    }
    if (t->ndim != 2 || t->shape[0] == 0 || t->shape[1] == 0) {
        qerr_set(err, QRUN_ERR_FORMAT, "weight %s: expected a non-empty 2-D tensor [out, in]",
                 name);
        return false;
    }
    w->dtype = t->dtype;
    w->rows = t->shape[0];
    w->cols = t->shape[1];
    w->data = qbin_tensor_data(f, t);

    const cJSON *q = get_item(qbin_metadata(f), "quantization");
    const char *kind = NULL;
    if (cJSON_IsObject(q)) {
        const cJSON *wk = get_item(q, "weights");
        if (cJSON_IsString(wk))
            kind = wk->valuestring;
    }

    switch (t->dtype) {
    case QDT_F32:
    case QDT_F16:
    case QDT_BF16:
        return true; /* plain values: nothing else to find */
    case QDT_NF4:
    case QDT_FP4:
    case QDT_I8:
        break;
    default:
        qerr_set(err, QRUN_ERR_FORMAT, "weight %s: dtype %s cannot be a weight", name,
                 qdtype_name(t->dtype));
        return false;
    }

    /* A quantized tensor is only meaningful with the metadata that says how
     * it was quantized; a mismatch means a damaged or foreign file. */
    const char *want = t->dtype == QDT_NF4 ? "nf4" : t->dtype == QDT_FP4 ? "fp4" : "int8";
    if (!kind || strcmp(kind, want) != 0) {
        qerr_set(err, QRUN_ERR_FORMAT,
                 "weight %s: stored as %s but metadata quantization.weights is %s", name,
                 qdtype_name(t->dtype), kind ? kind : "missing");
        return false;
    }
    const cJSON *layout = get_item(q, "layout");
    if (!cJSON_IsNumber(layout) || layout->valuedouble != 1.0) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED,
                 "weight %s: quantization.layout must be 1 (the only layout this build reads)",
                 name);
        return false;
    }

    if (t->dtype == QDT_I8) {
        const cJSON *th = get_item(q, "int8_threshold");
        if (!cJSON_IsNumber(th) || !(th->valuedouble >= 0.0) || !(th->valuedouble <= 65504.0)) {
            qerr_set(err, QRUN_ERR_FORMAT,
                     "weight %s: quantization.int8_threshold missing or out of range", name);
            return false;
        }
        w->int8_threshold = (float)th->valuedouble;
        const qbin_tensor *s = find_aux(f, name, ".scb", QDT_F32, w->rows, err);
        if (!s)
            return false;
        w->scb = qbin_tensor_data(f, s);
        return true;
    }

    const cJSON *bs = get_item(q, "blocksize");
    if (!cJSON_IsNumber(bs) || bs->valuedouble != (double)(int)bs->valuedouble ||
        !quant_blocksize_valid((int)bs->valuedouble)) {
        qerr_set(err, QRUN_ERR_FORMAT,
                 "weight %s: quantization.blocksize missing or not one of 32 ... 4096", name);
        return false;
    }
    w->blocksize = (int)bs->valuedouble;
    const cJSON *dq = get_item(q, "double_quant");
    if (dq && !cJSON_IsBool(dq)) {
        qerr_set(err, QRUN_ERR_FORMAT, "weight %s: quantization.double_quant must be a boolean",
                 name);
        return false;
    }
    /* rows * cols cannot overflow: the reader checked numel for the tensor. */
    uint64_t nb = quant_nblocks(w->rows * w->cols, w->blocksize);
    if (!cJSON_IsTrue(dq)) {
        const qbin_tensor *a = find_aux(f, name, ".absmax", QDT_F32, nb, err);
        if (!a)
            return false;
        w->absmax = qbin_tensor_data(f, a);
        return true;
    }
    const cJSON *dqbs = get_item(q, "dq_blocksize");
    if (dqbs && (!cJSON_IsNumber(dqbs) || dqbs->valuedouble != QUANT_DQ_BLOCKSIZE)) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED, "weight %s: quantization.dq_blocksize must be %d",
                 name, QUANT_DQ_BLOCKSIZE);
        return false;
    }
    uint64_t ng = (nb + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
    const qbin_tensor *qa = find_aux(f, name, ".qabsmax", QDT_U8, nb, err);
    const qbin_tensor *a2 = qa ? find_aux(f, name, ".absmax2", QDT_F32, ng, err) : NULL;
    const qbin_tensor *off = a2 ? find_aux(f, name, ".absmax_offset", QDT_F32, 1, err) : NULL;
    const qbin_tensor *map = off ? find_aux(f, "quant.dynamic_map", "", QDT_F32, 256, err) : NULL;
    if (!map) {
        qerr_prefix(err, "double-quantized ");
        return false;
    }
    w->qabsmax = qbin_tensor_data(f, qa);
    w->absmax2 = qbin_tensor_data(f, a2);
    memcpy(&w->absmax_offset, qbin_tensor_data(f, off), sizeof(float));
    w->dq_map = qbin_tensor_data(f, map);
    if (!isfinite(w->absmax_offset)) {
        qerr_set(err, QRUN_ERR_FORMAT, "weight %s: %s.absmax_offset is not finite", name, name);
        return false;
    }
    return true;
}

bool qweight_check(const qweight *w, qerr *err)
{
    if (!w || !w->data || w->rows == 0 || w->cols == 0) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: empty or missing weight");
        return false;
    }
    switch (w->dtype) {
    case QDT_F32:
    case QDT_F16:
    case QDT_BF16:
        return true;
    case QDT_NF4:
    case QDT_FP4:
        if (!quant_blocksize_valid(w->blocksize) ||
            (!w->absmax && (!w->qabsmax || !w->absmax2 || !w->dq_map))) {
            qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                     "matmul: 4-bit weight without a valid blocksize and absmax");
            return false;
        }
        return true;
    case QDT_I8:
        if (!w->scb) {
            qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: int8 weight without row scales");
            return false;
        }
        /* |acc| <= K * 127 * 127 must fit int32 for the product to be exact. */
        if (w->cols > (uint64_t)INT32_MAX / (127 * 127)) {
            qerr_set(err, QRUN_ERR_UNSUPPORTED, "matmul: int8 weight with %llu inputs is too wide",
                     (unsigned long long)w->cols);
            return false;
        }
        return true;
    default:
        qerr_set(err, QRUN_ERR_UNSUPPORTED, "matmul: weight dtype %s", qdtype_name(w->dtype));
        return false;
    }
}
