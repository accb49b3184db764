/* The inference engine: loading a .qbin into a bound model (family graph +
 * tokenizer + chat template) and running sessions over a backend.
 *
 * The engine owns what every family shares: the embedding lookup, the split
 * of a call into n_batch pieces, and the final norm + output projection for
 * the rows whose logits are asked for. The decoder blocks are the family's
 * `forward` (models/), written on the backend interface (src/backend.h).
 *
 * With a GPU (docs/gpu.md) the load also decides how many decoder layers go
 * to the device and uploads their tensors (src/engine_gpu.c); a session
 * is then one or two "parts", each a backend with its own KV cache and
 * buffers running a range of layers: CUDA for [0, g), the CPU for [g, L).
 * The hidden state passes from one to the next through host memory. */
#include "engine.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "chat_template.h"
#include "cpu/matmul.h"
#include "engine_priv.h"
#include "qbin.h"
#include "qrun_config.h"
#include "registry.h"
#if QRUN_HAVE_CUDA
#include "cuda/weights.h"
#endif

/* A range of layers on one backend, with its cache and buffers. */
typedef struct qpart {
    const qbackend_ops *ops;
    qbackend *be;
    qbk_kv *kv;
    qbk_buf *x, *xn, *xn2, *q, *k, *v, *qkv, *attn, *ff_a, *ff_b, *tmp;
    qbk_buf *lg_in, *logits; /* the output part only: final norm input and logits */
    int layer_begin, layer_end;
} qpart;

struct qctx {
    const qengine *e;
    qpart part[2]; /* part[0] embeds; part[n_parts - 1] computes the logits */
    int n_parts;
    float *handover; /* [n_batch, hidden] host copy of x between the parts */
    int n_ctx, n_batch, lg_rows;
    /* decode graph: one captured single-token step (all layers on the GPU) */
    bool graphs;       /* allowed for this session */
    bool graph_tried;  /* a capture was attempted (it is not retried) */
    int eager_decodes; /* single-token steps run eagerly so far */
    qbk_graph *graph;
    int graph_replays; /* steps run through the graph (tests, diagnostics) */
    /* sampling on the device (all layers on the GPU): the logits of the
     * last qctx_forward_sample stay there until qctx_last_logits */
    bool dev_sampling;
    int device_samples;
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

bool qengine_progress(const qengine *e, float f)
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
#if !QRUN_HAVE_CUDA
    if (o->backend == QRUN_BACKEND_CUDA) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED,
                 "%s: qrun was built without CUDA: use the cpu (or auto) backend", path);
        return NULL;
    }
#endif
    if (o->backend != QRUN_BACKEND_AUTO && o->backend != QRUN_BACKEND_CPU &&
        o->backend != QRUN_BACKEND_CUDA) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "%s: unknown backend %d", path, (int)o->backend);
        return NULL;
    }
    qengine *e = calloc(1, sizeof *e);
    if (!e) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    e->opts = *o;
    e->bos = -1;
    e->backend_name = "cpu";
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
            if (!qengine_progress(e, 0.9f * (float)(i + 1) / (float)nt)) {
                qerr_set(err, QRUN_ERR_CANCELLED, "loading cancelled");
                goto fail_named;
            }
        }
    } else if (!qengine_progress(e, 0.0f)) {
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
    e->tok_tensor = cJSON_IsString(tt) ? tt->valuestring : NULL;
    count_params(e, e->tok_tensor);
#if QRUN_HAVE_CUDA
    if (!engine_gpu_load(e, err))
        goto fail_named;
#endif
    if (!qengine_progress(e, 1.0f)) {
        qerr_set(err, QRUN_ERR_CANCELLED, "loading cancelled");
        goto fail_named;
    }
    qengine_log(e, QRUN_LOG_INFO, "loaded %s: %s, %d layers, weights %s, compute %s, backend %s",
                path, e->family->name, e->sizes.n_layers, e->weights, e->compute_name,
                e->backend_name);
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
#if QRUN_HAVE_CUDA
    cuda_weights_free(e->dev);
#endif
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

int qengine_gpu_layers(const qengine *e) { return e->n_gpu; }
qdtype qengine_compute_dtype(const qengine *e) { return e->model_dtype; }

void qengine_info(const qengine *e, qrun_model_info *info)
{
    memset(info, 0, sizeof *info);
    info->architecture = e->family->name;
    info->weights = e->weights;
    info->compute_dtype = e->compute_name;
    info->backend = e->backend_name;
    info->vocab_size = e->sizes.vocab;
    info->n_ctx_train = e->n_ctx_train;
    info->n_layers = e->sizes.n_layers;
    info->n_params = e->n_params;
    info->weight_bytes = e->weight_bytes;
    info->bos_id = e->bos;
    info->eos_id = e->n_eos > 0 ? e->eos[0] : -1;
    info->has_chat_template = e->tmpl != NULL;
    info->n_gpu_layers = e->n_gpu;
    info->gpu_name = e->n_gpu > 0 ? e->gpu_name : "";
#if QRUN_HAVE_CUDA
    info->gpu_weight_bytes = e->dev ? cuda_weights_bytes(e->dev) : 0;
#endif
}

/* ---- sessions ---------------------------------------------------------------------- */

static void part_free(qpart *p)
{
    const qbackend_ops *B = p->ops;
    if (!B || !p->be)
        return;
    qbk_buf *bufs[] = {p->x,    p->xn,   p->xn2,  p->q,   p->k,     p->v,     p->qkv,
                       p->attn, p->ff_a, p->ff_b, p->tmp, p->lg_in, p->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            B->buf_free(p->be, bufs[i]);
    if (p->kv)
        B->kv_free(p->be, p->kv);
    B->destroy(p->be);
    p->be = NULL;
}

void qctx_free(qctx *c)
{
    if (!c)
        return;
    if (c->graph)
        c->part[0].ops->graph_free(c->part[0].be, c->graph);
    for (int i = 0; i < 2; i++)
        part_free(&c->part[i]);
    free(c->handover);
    free(c);
}

int qctx_n_ctx(const qctx *c) { return c->n_ctx; }
int qctx_graph_replays(const qctx *c) { return c->graph_replays; }
bool qctx_device_sampling(const qctx *c) { return c->dev_sampling; }
int qctx_device_samples(const qctx *c) { return c->device_samples; }

/* Create a part's backend, its buffers (the logits ones when `output`) and
 * the KV cache of its layers. */
static bool part_init(qctx *c, qpart *p, const qbackend_ops *ops, const qbackend_config *cfg,
                      int layer_begin, int layer_end, bool output, qdtype kv_type, qerr *err)
{
    const qmodel_sizes *s = &c->e->sizes;
    const int Q = s->n_heads * s->head_dim, KV = s->n_kv_heads * s->head_dim;
    const int nb = c->n_batch;
    p->ops = ops;
    p->layer_begin = layer_begin;
    p->layer_end = layer_end;
    p->be = ops->create(cfg, err);
    if (!p->be)
        return false;
    const qbackend_ops *B = ops;
    /* activations of one piece; widths per qmodel_run */
    const qmodel_io *io = &c->e->io;
    if (!(p->x = B->buf_alloc(p->be, nb, s->hidden, err)) ||
        !(p->xn = B->buf_alloc(p->be, nb, s->hidden, err)) ||
        (io->uses_xn2 && !(p->xn2 = B->buf_alloc(p->be, nb, s->hidden, err))) ||
        !(p->tmp = B->buf_alloc(p->be, nb, s->hidden, err)) ||
        !(p->q = B->buf_alloc(p->be, nb, Q, err)) ||
        !(p->attn = B->buf_alloc(p->be, nb, Q, err)) ||
        !(p->k = B->buf_alloc(p->be, nb, KV, err)) ||
        !(p->v = B->buf_alloc(p->be, nb, KV, err)) ||
        (s->qkv_fused && !(p->qkv = B->buf_alloc(p->be, nb, s->qkv_fused, err))) ||
        !(p->ff_a = B->buf_alloc(p->be, nb, s->ffn, err)) ||
        (io->uses_ff_b && !(p->ff_b = B->buf_alloc(p->be, nb, s->ffn, err))))
        return false;
    if (output && (!(p->lg_in = B->buf_alloc(p->be, c->lg_rows, s->hidden, err)) ||
                   !(p->logits = B->buf_alloc(p->be, c->lg_rows, s->vocab, err))))
        return false;
    p->kv = B->kv_alloc(p->be, layer_end - layer_begin, s->n_kv_heads, c->n_ctx, s->head_dim,
                        kv_type, err);
    return p->kv != NULL;
}

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
#if QRUN_HAVE_CUDA
    if (e->n_gpu > 0 && !engine_gpu_session_fits(e, n_ctx, n_batch, o->kv_type, act, err))
        return NULL;
#endif
    qctx *c = calloc(1, sizeof *c);
    if (!c) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    c->e = e;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    c->lg_rows = n_batch < 16 ? n_batch : 16;
    const qmodel_sizes *s = &e->sizes;
    const int L = s->n_layers, G = e->n_gpu;
    const int Q = s->n_heads * s->head_dim;
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
        .n_ctx = n_ctx,
        .n_heads = s->n_heads,
        .head_dim = s->head_dim,
    };
    c->n_parts = G > 0 && G < L ? 2 : 1;
    if (G > 0) {
#if QRUN_HAVE_CUDA
        qbackend_config gc = cfg;
        gc.weights = e->dev;
        engine_gpu_linear_max(e, G == L, &gc.max_linear_rows, &gc.max_linear_cols);
        const char *env_s = getenv("QRUN_GPU_SAMPLING");
        c->dev_sampling = G == L && !(env_s && strcmp(env_s, "0") == 0);
        if (c->dev_sampling) {
            /* the penalty window never holds more than the context's tokens
             * and the one sampled after them */
            gc.sample_vocab = s->vocab;
            gc.sample_window = n_ctx < INT_MAX ? n_ctx + 1 : n_ctx;
        }
        if (!part_init(c, &c->part[0], &qbackend_cuda, &gc, 0, G, G == L, o->kv_type, err))
            goto fail;
        const char *env = getenv("QRUN_CUDA_GRAPHS");
        c->graphs = G == L && !o->no_cuda_graphs && !(env && strcmp(env, "0") == 0);
#endif
    }
    if (G < L) {
        if (e->int8) {
            /* the largest input width any Linear has, at the largest row count */
            qweight probe = {.dtype = QDT_I8, .rows = 1, .cols = (uint64_t)max_k};
            cfg.matmul_scratch = qmatmul_scratch_size(&probe, (uint64_t)n_batch);
            if (cfg.matmul_scratch == SIZE_MAX) {
                qerr_set(err, QRUN_ERR_NO_MEMORY, "context: int8 scratch size overflows");
                goto fail;
            }
        }
        if (!part_init(c, &c->part[c->n_parts - 1], &qbackend_cpu, &cfg, G, L, true, o->kv_type,
                       err))
            goto fail;
    }
    if (c->n_parts == 2) {
        c->handover = malloc((size_t)n_batch * (size_t)s->hidden * sizeof *c->handover);
        if (!c->handover) {
            qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
            goto fail;
        }
    }
    return c;
fail:
    qctx_free(c);
    return NULL;
}

/* The status of a failure reported through err. */
static qrun_status failed(const qerr *err)
{
    return err && err->code != QRUN_OK ? err->code : QRUN_ERR_INTERNAL;
}

/* Final norm + lm_head of n rows of the output part's x starting at `row`,
 * enqueued (the logits stay in the part's buffer). */
static bool output_enqueue(qctx *c, int row, int n, qerr *err)
{
    qpart *p = &c->part[c->n_parts - 1];
    const qbackend_ops *B = p->ops;
    const qengine *e = c->e;
    B->copy_rows(p->be, p->x, row, p->lg_in, 0, n);
    B->norm(p->be, &e->io.final_norm, p->lg_in, n, p->lg_in);
    return B->matmul(p->be, &e->io.lm_head, p->lg_in, n, p->logits, err);
}

/* ... and copied into host memory. */
static bool output_rows(qctx *c, int row, int n, float *host, qerr *err)
{
    qpart *p = &c->part[c->n_parts - 1];
    return output_enqueue(c, row, n, err) && p->ops->to_host(p->be, p->logits, n, host, err);
}

static qrun_status run_part(qctx *c, qpart *p, int m, int p0, int64_t seq_len,
                            const atomic_int *cancel, qerr *err)
{
    const qengine *e = c->e;
    qmodel_run run = {
        .ops = p->ops, .be = p->be, .kv = p->kv, .x = p->x, .xn = p->xn, .xn2 = p->xn2,
        .q = p->q, .k = p->k, .v = p->v, .qkv = p->qkv, .attn = p->attn, .ff_a = p->ff_a,
        .ff_b = p->ff_b, .tmp = p->tmp, .n = m, .p0 = p0, .seq_len = seq_len,
        .layer_begin = p->layer_begin, .layer_end = p->layer_end, .cancel = cancel,
    };
    return e->family->forward(e->model, &run, err);
}

/* Embedding and every block of one piece of m tokens at p0; the hidden
 * state ends in the output part's x. `stepped`: begin_step was already
 * called for it. */
static qrun_status run_piece(qctx *c, const int32_t *ids, int m, int p0, int64_t seq_len,
                             const atomic_int *cancel, bool stepped, qerr *err)
{
    const qengine *e = c->e;
    qpart *a = &c->part[0];
    if (!stepped && a->ops->begin_step && !a->ops->begin_step(a->be, ids, m, p0, err))
        return failed(err);
    a->ops->embed(a->be, e->io.embed, e->io.embed_dt, e->sizes.hidden, ids, m, a->x);
    qrun_status st = run_part(c, a, m, p0, seq_len, cancel, err);
    if (st != QRUN_OK || c->n_parts == 1)
        return st;
    /* partial offload: the hidden state moves to the next backend */
    qpart *b = &c->part[1];
    if (!a->ops->to_host(a->be, a->x, m, c->handover, err) ||
        (b->ops->begin_step && !b->ops->begin_step(b->be, ids, m, p0, err)) ||
        !b->ops->from_host(b->be, c->handover, m, b->x, err))
        return failed(err);
    return run_part(c, b, m, p0, seq_len, cancel, err);
}

/* A single-token step through the captured graph, its logits copied to
 * `out` (NULL: left in the device buffer). Returns with *done false (and
 * QRUN_OK) when the caller should run it eagerly: no graph yet (the first
 * single-token step always runs eagerly, so the tables the ops cache exist
 * before capturing), or a capture that failed or was abandoned (not
 * retried). */
static qrun_status decode_graph(qctx *c, int32_t id, int pos, int64_t seq_len, float *out,
                                bool *done, qerr *err)
{
    qpart *p = &c->part[0];
    const qbackend_ops *B = p->ops;
    *done = false;
    if (!c->graph) {
        if (c->graph_tried || c->eager_decodes < 1)
            return QRUN_OK;
        c->graph_tried = true;
        if (!B->begin_step(p->be, &id, 1, pos, err))
            return failed(err);
        /* recorded, not run: failures here only mean "no graph" (the eager
         * step that follows shows a real error again) */
        qerr rec;
        qerr_clear(&rec);
        if (!B->capture_begin(p->be, &rec)) {
            qengine_log(c->e, QRUN_LOG_DEBUG, "decode steps run without a CUDA graph: %s",
                        rec.msg);
            return QRUN_OK;
        }
        bool recorded = run_piece(c, &id, 1, pos, seq_len, NULL, true, &rec) == QRUN_OK &&
                        output_enqueue(c, 0, 1, &rec);
        qerr cap;
        qerr_clear(&cap);
        c->graph = B->capture_end(p->be, &cap);
        if (cap.code != QRUN_OK) {
            *err = cap;
            return cap.code;
        }
        if (c->graph && !recorded) {
            B->graph_free(p->be, c->graph);
            c->graph = NULL;
        }
        if (!c->graph) {
            qengine_log(c->e, QRUN_LOG_DEBUG, "decode steps run without a CUDA graph%s%s",
                        rec.msg[0] ? ": " : "", rec.msg);
            return QRUN_OK;
        }
    } else if (!B->begin_step(p->be, &id, 1, pos, err)) {
        return failed(err);
    }
    if (!B->graph_launch(p->be, c->graph, err) ||
        (out && !B->to_host(p->be, p->logits, 1, out, err)))
        return failed(err);
    c->graph_replays++;
    *done = true;
    return QRUN_OK;
}

/* After a failed or cancelled call: let the device finish what was
 * enqueued; a device error found there takes precedence. */
static qrun_status drain(qctx *c, qrun_status st, qerr *err)
{
    for (int i = 0; i < c->n_parts; i++) {
        qpart *p = &c->part[i];
        qerr e2;
        qerr_clear(&e2);
        if (p->ops->sync && !p->ops->sync(p->be, &e2) && st == QRUN_ERR_CANCELLED) {
            if (err)
                *err = e2;
            st = e2.code;
        }
    }
    return st;
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
    /* one rotary length for the whole call, as transformers' one forward
     * over the same tokens: only dynamic NTK depends on it */
    const int64_t seq_len = (int64_t)n_past + n;
    float *one = logits_all ? logits_all : logits_last;
    if (c->graphs && n == 1 && one) {
        if (cancel && atomic_load(cancel))
            return qerr_set(err, QRUN_ERR_CANCELLED, "cancelled");
        bool done = false;
        qrun_status st = decode_graph(c, ids[0], n_past, seq_len, one, &done, err);
        if (st != QRUN_OK)
            return drain(c, st, err);
        if (done) {
            if (logits_all && logits_last)
                memcpy(logits_last, logits_all, (size_t)V * sizeof(float));
            return QRUN_OK;
        }
    }
    qpart *out = &c->part[c->n_parts - 1];
    for (int off = 0; off < n; off += c->n_batch) {
        int m = n - off < c->n_batch ? n - off : c->n_batch;
        qrun_status st = run_piece(c, ids + off, m, n_past + off, seq_len, cancel, false, err);
        if (st == QRUN_OK && cancel && atomic_load(cancel))
            st = qerr_set(err, QRUN_ERR_CANCELLED, "cancelled");
        if (st != QRUN_OK)
            return drain(c, st, err);
        if (logits_all)
            for (int r = 0; r < m; r += c->lg_rows) {
                int k = m - r < c->lg_rows ? m - r : c->lg_rows;
                if (!output_rows(c, r, k, logits_all + (size_t)(off + r) * (size_t)V, err))
                    return drain(c, failed(err), err);
            }
        if (logits_last && off + m == n) {
            if (logits_all)
                memcpy(logits_last, logits_all + (size_t)(n - 1) * (size_t)V,
                       (size_t)V * sizeof(float));
            else if (!output_rows(c, m - 1, 1, logits_last, err))
                return drain(c, failed(err), err);
        }
    }
    /* without logits nothing waited for the device: report its errors now */
    if (out->ops->sync && !out->ops->sync(out->be, err))
        return failed(err);
    if (n == 1 && c->graphs)
        c->eager_decodes++;
    return QRUN_OK;
}

qrun_status qctx_forward_sample(qctx *c, int32_t id, int n_past, const qctx_sample *smp,
                                int32_t *next, const atomic_int *cancel, qerr *err)
{
    if (!c || !smp || !next || n_past < 0 || smp->n_recent < 0 ||
        (smp->n_recent > 0 && !smp->recent))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "forward_sample: bad arguments");
    *next = -1;
    if (!c->dev_sampling)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "forward_sample: this session cannot sample on the device");
    if (n_past >= c->n_ctx)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "forward: 1 token after %d does not fit the context of %d", n_past,
                        c->n_ctx);
    if (id < 0 || id >= c->e->sizes.vocab)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "forward: token id %d is outside the vocabulary [0, %d)", id,
                        c->e->sizes.vocab);
    if (cancel && atomic_load(cancel))
        return qerr_set(err, QRUN_ERR_CANCELLED, "cancelled");
    qpart *p = &c->part[0];
    const int64_t seq_len = (int64_t)n_past + 1;
    bool done = false;
    qrun_status st = QRUN_OK;
    if (c->graphs)
        st = decode_graph(c, id, n_past, seq_len, NULL, &done, err);
    if (st == QRUN_OK && !done) {
        st = run_piece(c, &id, 1, n_past, seq_len, cancel, false, err);
        if (st == QRUN_OK && !output_enqueue(c, 0, 1, err))
            st = failed(err);
        if (st == QRUN_OK && c->graphs)
            c->eager_decodes++;
    }
    if (st != QRUN_OK)
        return drain(c, st, err);
    qbk_sample_params kp = {smp->temperature, smp->top_k, smp->top_p, smp->min_p,
                            smp->repeat_penalty};
    if (!p->ops->sample(p->be, p->logits, 0, &kp, smp->recent, smp->n_recent, smp->draw, next,
                        err))
        return drain(c, failed(err), err);
    c->device_samples++;
    return QRUN_OK;
}

qrun_status qctx_last_logits(qctx *c, float *logits, qerr *err)
{
    if (!c || !logits || !c->dev_sampling)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "last_logits: bad arguments");
    qpart *p = &c->part[0];
    if (!p->ops->to_host(p->be, p->logits, 1, logits, err))
        return failed(err);
    return QRUN_OK;
}
