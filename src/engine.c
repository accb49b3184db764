/* The inference engine: loading a .qbin into a bound model (family graph +
 * tokenizer + chat template) and running sessions over a backend.
 *
 * The engine owns what every family shares: the embedding lookup, the split
 * of a call into n_batch pieces, and the final norm + output projection for
 * the rows whose logits are asked for. The decoder blocks are the family's
 * `forward` (models/), written on the backend interface (src/backend.h). */
#include "engine.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "chat_template.h"
#include "cpu/matmul.h"
#include "qbin.h"
#include "registry.h"

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
    qengine_opts opts;
};

struct qctx {
    const qengine *e;
    const qbackend_ops *ops;
    qbackend *be;
    qbk_kv *kv;
    qbk_buf *x, *xn, *xn2, *q, *k, *v, *qkv, *attn, *ff_a, *ff_b, *tmp;
    qbk_buf *lg_in, *logits; /* final norm input and logits, lg_rows rows */
    int n_ctx, n_batch, lg_rows;
};

/* ---- logging ------------------------------------------------------------------ */

void qengine_log(const qengine *e, qrun_log_level level, const char *fmt, ...)
{
    if (!e || !e->opts.log)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    e->opts.log(e->opts.log_user, level, buf);
}

/* ---- load ----------------------------------------------------------------------- */

static const cJSON *obj_get(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return cJSON_IsNull(v) ? NULL : v;
}

static bool id_value(const cJSON *v, int32_t *out)
{
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 2147483647.0 ||
        (double)(int32_t)v->valuedouble != v->valuedouble)
        return false;
    *out = (int32_t)v->valuedouble;
    return true;
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

static bool progress(const qengine *e, float f)
{
    return !e->opts.progress || e->opts.progress(e->opts.progress_user, f);
}

/* Tokenizer, special ids and chat template from the "tokenizer" metadata. */
static bool load_tokenizer(qengine *e, const cJSON *meta, qerr *err)
{
    const cJSON *tk = obj_get(meta, "tokenizer");
    const cJSON *hp = obj_get(meta, "hparams");
    const cJSON *kind = obj_get(tk, "kind"), *tensor = obj_get(tk, "tensor");
    if (!cJSON_IsString(kind) || !cJSON_IsString(tensor))
        return qerr_set(err, QRUN_ERR_FORMAT,
                        "metadata: \"tokenizer.kind\" and \"tokenizer.tensor\" must be strings") ==
               QRUN_OK;
    int k = tok_kind_from_name(kind->valuestring);
    if (k < 0)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED, "metadata: tokenizer kind \"%.32s\" is not "
                        "supported (sentencepiece, bpe)", kind->valuestring) == QRUN_OK;
    const qbin_tensor *t = qbin_find(e->file, tensor->valuestring);
    if (!t)
        return qerr_set(err, QRUN_ERR_NOT_FOUND, "tokenizer tensor %.200s is missing",
                        tensor->valuestring) == QRUN_OK;
    if (t->dtype != QDT_U8 || t->ndim != 1)
        return qerr_set(err, QRUN_ERR_FORMAT, "tokenizer tensor %.200s: expected 1-D u8",
                        tensor->valuestring) == QRUN_OK;
    e->tok = tok_load((tok_kind)k, qbin_tensor_data(e->file, t), (size_t)t->nbytes, err);
    if (!e->tok) {
        qerr_prefix(err, "tokenizer (%s): ", tensor->valuestring);
        return false;
    }

    /* special ids: the tokenizer metadata (generation_config / config), else
     * hparams, else what the tokenizer itself says */
    tok_special sp = tok_get_special(e->tok);
    int32_t id;
    const cJSON *bos = obj_get(tk, "bos_token_id");
    if (!bos)
        bos = obj_get(hp, "bos_token_id");
    if (bos && id_value(bos, &id))
        sp.bos = id;
    const cJSON *pad = obj_get(tk, "pad_token_id");
    if (pad && id_value(pad, &id))
        sp.pad = id;
    const cJSON *eos = obj_get(tk, "eos_token_id");
    if (!eos)
        eos = obj_get(hp, "eos_token_id");
    int n_eos = cJSON_IsArray(eos) ? cJSON_GetArraySize(eos) : 1;
    e->eos = calloc((size_t)(n_eos > 0 ? n_eos : 1), sizeof *e->eos);
    if (!e->eos)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory") == QRUN_OK;
    if (cJSON_IsArray(eos)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, eos) if (id_value(it, &id)) e->eos[e->n_eos++] = id;
    } else if (eos && id_value(eos, &id))
        e->eos[e->n_eos++] = id;
    else if (sp.eos >= 0)
        e->eos[e->n_eos++] = sp.eos;
    if (e->n_eos > 0)
        sp.eos = e->eos[0];
    tok_set_special(e->tok, &sp);
    e->bos = sp.bos;
    const cJSON *ab = obj_get(tk, "add_bos_token");
    if (cJSON_IsBool(ab))
        tok_set_add_bos(e->tok, cJSON_IsTrue(ab));

    const cJSON *bt = obj_get(tk, "bos_token"), *et = obj_get(tk, "eos_token");
    e->bos_text = cJSON_IsString(bt) ? bt->valuestring : NULL;
    e->eos_text = cJSON_IsString(et) ? et->valuestring : NULL;
    if (!e->bos_text && sp.bos >= 0)
        e->bos_text = tok_id_to_piece(e->tok, sp.bos);
    if (!e->eos_text && sp.eos >= 0)
        e->eos_text = tok_id_to_piece(e->tok, sp.eos);
    if (!e->bos_text)
        e->bos_text = "";
    if (!e->eos_text)
        e->eos_text = "";

    const cJSON *ct = obj_get(tk, "chat_template");
    if (cJSON_IsString(ct)) {
        qerr terr;
        qerr_clear(&terr);
        if (chat_template_compile(ct->valuestring, strlen(ct->valuestring), &e->tmpl, &terr) !=
            QRUN_OK) {
            /* a template qrun cannot run is not a reason to refuse the model */
            qengine_log(e, QRUN_LOG_WARN, "chat template ignored: %s", terr.msg);
            e->tmpl = NULL;
        }
    }
    return true;
}

static void count_params(qengine *e, const char *tok_tensor)
{
    size_t n = qbin_tensor_count(e->file);
    for (size_t i = 0; i < n; i++) {
        const qbin_tensor *t = qbin_tensor_at(e->file, i);
        if (tok_tensor && strcmp(t->name, tok_tensor) == 0)
            continue;
        e->weight_bytes += t->nbytes;
        if (t->dtype == QDT_I8)
            e->int8 = true;
        /* quantization companions are not parameters */
        if (has_suffix(t->name, ".absmax") || has_suffix(t->name, ".qabsmax") ||
            has_suffix(t->name, ".absmax2") || has_suffix(t->name, ".absmax_offset") ||
            has_suffix(t->name, ".scb") || strcmp(t->name, "quant.dynamic_map") == 0)
            continue;
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++)
            numel *= t->shape[d];
        e->n_params += numel;
    }
}

qengine *qengine_load(const char *path, const qengine_opts *o, qerr *err)
{
    qengine_opts defaults = {0};
    if (!o)
        o = &defaults;
    if (!path) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qengine_load: NULL path");
        return NULL;
    }
    if (o->backend == QRUN_BACKEND_CUDA) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED, "%s: the CUDA backend is not available in this build",
                 path);
        return NULL;
    }
    qengine *e = calloc(1, sizeof *e);
    if (!e) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    e->opts = *o;
    e->bos = -1;
    /* checksums are verified below tensor by tensor, so progress can be reported */
    e->file = qbin_open(path, QBIN_OPEN_SKIP_CHECKSUMS, err);
    if (!e->file)
        goto fail;
    const cJSON *meta = qbin_metadata(e->file);
    size_t nt = qbin_tensor_count(e->file);
    if (o->verify_checksums) {
        for (size_t i = 0; i < nt; i++) {
            if (!qbin_verify_tensor(e->file, qbin_tensor_at(e->file, i), err))
                goto fail_named;
            if (!progress(e, 0.9f * (float)(i + 1) / (float)nt)) {
                qerr_set(err, QRUN_ERR_CANCELLED, "loading cancelled");
                goto fail_named;
            }
        }
    } else if (!progress(e, 0.0f)) {
        qerr_set(err, QRUN_ERR_CANCELLED, "loading cancelled");
        goto fail_named;
    }

    const cJSON *arch = obj_get(meta, "architecture");
    if (!cJSON_IsString(arch)) {
        qerr_set(err, QRUN_ERR_FORMAT, "metadata: \"architecture\" missing or not a string");
        goto fail_named;
    }
    e->family = qmodel_family_by_name(arch->valuestring);
    if (!e->family || !e->family->bind) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED,
                 "metadata: architecture \"%.64s\" is not supported (llama, falcon)",
                 arch->valuestring);
        goto fail_named;
    }
    const cJSON *hp = obj_get(meta, "hparams");
    if (!cJSON_IsObject(hp)) {
        qerr_set(err, QRUN_ERR_FORMAT, "metadata: \"hparams\" missing or not an object");
        goto fail_named;
    }
    const cJSON *cd = obj_get(meta, "compute_dtype");
    if (cJSON_IsString(cd) && strcmp(cd->valuestring, "f16") == 0)
        e->model_dtype = QDT_F16;
    else if (cJSON_IsString(cd) && strcmp(cd->valuestring, "bf16") == 0)
        e->model_dtype = QDT_BF16;
    else if (cJSON_IsString(cd) && strcmp(cd->valuestring, "f32") == 0)
        e->model_dtype = QDT_F32;
    else {
        qerr_set(err, QRUN_ERR_FORMAT,
                 "metadata: \"compute_dtype\" must be \"f16\", \"bf16\" or \"f32\"");
        goto fail_named;
    }
    e->compute_name = cd->valuestring;
    const cJSON *wq = obj_get(obj_get(meta, "quantization"), "weights");
    e->weights = cJSON_IsString(wq) ? wq->valuestring : "unknown";
    if (!qmodel_read_sizes(hp, &e->sizes, err))
        goto fail_named;
    const cJSON *mp = obj_get(hp, "max_position_embeddings");
    if (!cJSON_IsNumber(mp) || !(mp->valuedouble >= 1)) {
        qerr_set(err, QRUN_ERR_FORMAT, "hparams: \"max_position_embeddings\" missing or not a "
                 "positive integer");
        goto fail_named;
    }
    e->n_ctx_train = mp->valuedouble > 0x7fffffff ? 0x7fffffff : (int)mp->valuedouble;
    e->model = e->family->bind(e->file, hp, &e->io, err);
    if (!e->model)
        goto fail_named;
    if (!load_tokenizer(e, meta, err))
        goto fail_named;
    const cJSON *tt = obj_get(obj_get(meta, "tokenizer"), "tensor");
    count_params(e, cJSON_IsString(tt) ? tt->valuestring : NULL);
    if (!progress(e, 1.0f)) {
        qerr_set(err, QRUN_ERR_CANCELLED, "loading cancelled");
        goto fail_named;
    }
    qengine_log(e, QRUN_LOG_INFO, "loaded %s: %s, %d layers, weights %s, compute %s", path,
                e->family->name, e->sizes.n_layers, e->weights, e->compute_name);
    return e;
fail_named:
    if (err && !strstr(err->msg, path))
        qerr_prefix(err, "%s: ", path);
fail:
    qengine_free(e);
    return NULL;
}

void qengine_free(qengine *e)
{
    if (!e)
        return;
    if (e->model)
        e->family->unbind(e->model);
    tok_free(e->tok);
    chat_template_free(e->tmpl);
    free(e->eos);
    qbin_close(e->file);
    free(e);
}

const cJSON *qengine_metadata(const qengine *e) { return qbin_metadata(e->file); }
const char *qengine_metadata_json(const qengine *e) { return qbin_metadata_text(e->file); }
const tok_tokenizer *qengine_tokenizer(const qengine *e) { return e->tok; }
int32_t qengine_vocab_size(const qengine *e) { return e->sizes.vocab; }
int32_t qengine_n_ctx_train(const qengine *e) { return e->n_ctx_train; }
const struct chat_template *qengine_chat_template(const qengine *e) { return e->tmpl; }
const char *qengine_bos_text(const qengine *e) { return e->bos_text; }
const char *qengine_eos_text(const qengine *e) { return e->eos_text; }

const int32_t *qengine_eos_ids(const qengine *e, int *n)
{
    if (n)
        *n = e->n_eos;
    return e->eos;
}

void qengine_info(const qengine *e, qrun_model_info *info)
{
    memset(info, 0, sizeof *info);
    info->architecture = e->family->name;
    info->weights = e->weights;
    info->compute_dtype = e->compute_name;
    info->backend = "cpu";
    info->vocab_size = e->sizes.vocab;
    info->n_ctx_train = e->n_ctx_train;
    info->n_layers = e->sizes.n_layers;
    info->n_params = e->n_params;
    info->weight_bytes = e->weight_bytes;
    info->bos_id = e->bos;
    info->eos_id = e->n_eos > 0 ? e->eos[0] : -1;
    info->has_chat_template = e->tmpl != NULL;
}

/* ---- sessions ---------------------------------------------------------------------- */

void qctx_free(qctx *c)
{
    if (!c)
        return;
    const qbackend_ops *B = c->ops;
    qbk_buf *bufs[] = {c->x,    c->xn,   c->xn2,  c->q,   c->k,     c->v,     c->qkv,
                       c->attn, c->ff_a, c->ff_b, c->tmp, c->lg_in, c->logits};
    if (c->be) {
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            if (bufs[i])
                B->buf_free(c->be, bufs[i]);
        if (c->kv)
            B->kv_free(c->be, c->kv);
        B->destroy(c->be);
    }
    free(c);
}

int qctx_n_ctx(const qctx *c) { return c->n_ctx; }

qctx *qctx_create(const qengine *e, const qctx_opts *o, qerr *err)
{
    qctx_opts defaults = {0};
    if (!o)
        o = &defaults;
    if (!e) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qctx_create: NULL model");
        return NULL;
    }
    int n_ctx = o->n_ctx > 0 ? o->n_ctx : e->n_ctx_train;
    int n_batch = o->n_batch > 0 ? o->n_batch : 256;
    if (n_batch > n_ctx)
        n_batch = n_ctx;
    if (n_ctx <= 0 || o->n_ctx < 0 || o->n_batch < 0) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "context: n_ctx %d / n_batch %d out of range",
                 o->n_ctx, o->n_batch);
        return NULL;
    }
    if (o->kv_type != QDT_F16 && o->kv_type != QDT_F32) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "context: the KV cache type must be f16 or f32");
        return NULL;
    }
    qdtype act = o->act_dtype;
    if (act != QDT_F32 && act != QDT_F16 && act != QDT_BF16) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                 "context: act_dtype must be f32, f16 or bf16 (got %s)", qdtype_name(act));
        return NULL;
    }
    qctx *c = calloc(1, sizeof *c);
    if (!c) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    c->e = e;
    c->ops = &qbackend_cpu;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    const qmodel_sizes *s = &e->sizes;
    const int Q = s->n_heads * s->head_dim, KV = s->n_kv_heads * s->head_dim;
    int max_k = s->hidden;
    if (Q > max_k)
        max_k = Q;
    if (s->ffn > max_k)
        max_k = s->ffn;
    qbackend_config cfg = {
        .n_threads = o->n_threads > 0 ? o->n_threads : e->opts.n_threads,
        .max_rows = n_batch,
        .act = act,
        .compute = act,
    };
    if (e->int8) {
        /* the largest input width any Linear has, at the largest row count */
        qweight probe = {.dtype = QDT_I8, .rows = 1, .cols = (uint64_t)max_k};
        cfg.matmul_scratch = qmatmul_scratch_size(&probe, (uint64_t)n_batch);
        if (cfg.matmul_scratch == SIZE_MAX) {
            qerr_set(err, QRUN_ERR_NO_MEMORY, "context: int8 scratch size overflows");
            goto fail;
        }
    }
    const qbackend_ops *B = c->ops;
    c->be = B->create(&cfg, err);
    if (!c->be)
        goto fail;
    c->lg_rows = n_batch < 16 ? n_batch : 16;
    /* activations of one piece; widths per qmodel_run */
    if (!(c->x = B->buf_alloc(c->be, n_batch, s->hidden, err)) ||
        !(c->xn = B->buf_alloc(c->be, n_batch, s->hidden, err)) ||
        !(c->xn2 = B->buf_alloc(c->be, n_batch, s->hidden, err)) ||
        !(c->tmp = B->buf_alloc(c->be, n_batch, s->hidden, err)) ||
        !(c->q = B->buf_alloc(c->be, n_batch, Q, err)) ||
        !(c->attn = B->buf_alloc(c->be, n_batch, Q, err)) ||
        !(c->k = B->buf_alloc(c->be, n_batch, KV, err)) ||
        !(c->v = B->buf_alloc(c->be, n_batch, KV, err)) ||
        (s->qkv_fused && !(c->qkv = B->buf_alloc(c->be, n_batch, s->qkv_fused, err))) ||
        !(c->ff_a = B->buf_alloc(c->be, n_batch, s->ffn, err)) ||
        !(c->ff_b = B->buf_alloc(c->be, n_batch, s->ffn, err)) ||
        !(c->lg_in = B->buf_alloc(c->be, c->lg_rows, s->hidden, err)) ||
        !(c->logits = B->buf_alloc(c->be, c->lg_rows, s->vocab, err)))
        goto fail;
    c->kv = B->kv_alloc(c->be, s->n_layers, s->n_kv_heads, n_ctx, s->head_dim, o->kv_type, err);
    if (!c->kv)
        goto fail;
    return c;
fail:
    qctx_free(c);
    return NULL;
}

/* Final norm + lm_head of n rows of x starting at `row` into host memory. */
static bool output_rows(qctx *c, int row, int n, float *host, qerr *err)
{
    const qbackend_ops *B = c->ops;
    const qengine *e = c->e;
    B->copy_rows(c->be, c->x, row, c->lg_in, 0, n);
    B->norm(c->be, &e->io.final_norm, c->lg_in, n, c->lg_in);
    if (!B->matmul(c->be, &e->io.lm_head, c->lg_in, n, c->logits, err))
        return false;
    B->to_host(c->be, c->logits, n, host);
    return true;
}

qrun_status qctx_forward(qctx *c, const int32_t *ids, int n, int n_past, float *logits_last,
                         float *logits_all, const atomic_int *cancel, qerr *err)
{
    if (!c || !ids || n <= 0 || n_past < 0)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "forward: bad arguments (n %d, n_past %d)",
                        n, n_past);
    if (n > c->n_ctx - n_past)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "forward: %d tokens after %d do not fit the context of %d", n, n_past,
                        c->n_ctx);
    const qengine *e = c->e;
    const int V = e->sizes.vocab;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                            "forward: token id %d at index %d is outside the vocabulary [0, %d)",
                            ids[i], i, V);
    const qbackend_ops *B = c->ops;
    qmodel_run run = {
        .ops = B, .be = c->be, .kv = c->kv, .x = c->x, .xn = c->xn, .xn2 = c->xn2, .q = c->q,
        .k = c->k, .v = c->v, .qkv = c->qkv, .attn = c->attn, .ff_a = c->ff_a, .ff_b = c->ff_b,
        .tmp = c->tmp, .cancel = cancel,
        /* one rotary length for the whole call, as transformers' one forward
         * over the same tokens: only dynamic NTK depends on it */
        .seq_len = (int64_t)n_past + n,
    };
    for (int off = 0; off < n; off += c->n_batch) {
        int m = n - off < c->n_batch ? n - off : c->n_batch;
        B->embed(c->be, e->io.embed, e->io.embed_dt, e->sizes.hidden, ids + off, m, c->x);
        run.n = m;
        run.p0 = n_past + off;
        qrun_status st = e->family->forward(e->model, &run, err);
        if (st != QRUN_OK)
            return st;
        if (cancel && atomic_load(cancel))
            return qerr_set(err, QRUN_ERR_CANCELLED, "cancelled");
        if (logits_all)
            for (int r = 0; r < m; r += c->lg_rows) {
                int k = m - r < c->lg_rows ? m - r : c->lg_rows;
                if (!output_rows(c, r, k, logits_all + (size_t)(off + r) * (size_t)V, err))
                    return err ? err->code : QRUN_ERR_INTERNAL;
            }
        if (logits_last && off + m == n) {
            if (logits_all)
                memcpy(logits_last, logits_all + (size_t)(n - 1) * (size_t)V,
                       (size_t)V * sizeof(float));
            else if (!output_rows(c, m - 1, 1, logits_last, err))
                return err ? err->code : QRUN_ERR_INTERNAL;
        }
    }
    return QRUN_OK;
}
