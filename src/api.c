/* The public C API (include/qrun.h) over the internal engine (src/engine.h),
 * tokenizer, sampler, stop-string matcher and chat templates.
 *
 * Rules kept here (../shared/docs/DESIGN.md): no global mutable state, the
 * library never prints (messages go to error buffers, the session's
 * last-error text or the model's log callback), nothing is allocated per
 * token in the decode loop (the sampler, the detokenizer stream and the stop
 * matcher are created per call at most), and cancellation is an atomic flag
 * in the session polled between layers and between tokens. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_template.h"
#include "engine.h"
#include "qrun.h"
#include "sampler.h"
#include "tokenizer.h"

struct qrun_model {
    qengine *e;
};

struct qrun_session {
    qrun_model *model;
    qctx *ctx;
    int n_ctx;
    int32_t vocab;
    int32_t *tokens;       /* the context's tokens [n_ctx]; n_past of them valid */
    int n_past;
    float *logits;         /* [vocab]: logits after the last evaluated token */
    int logits_at;         /* n_past when `logits` was written; -1: none */
    bool logits_dev;       /* ... and they are still on the device (sampled there) */
    int32_t *window;       /* the sampler's penalty window, for device sampling */
    int window_cap;
    float *prompt_logits;  /* [vocab]: logits at the end of the prompt (n_sequences > 1) */
    atomic_int cancel;
    /* The sampler is kept between calls and recreated only when the sampling
     * parameters (other than the seed) change. */
    qsampler *smp;
    qsampler_params smp_params;
    char err[QERR_MSG_MAX];
};

/* ---- helpers -------------------------------------------------------------- */

static void errbuf_put(char *buf, size_t size, const char *msg)
{
    if (buf && size > 0)
        snprintf(buf, size, "%s", msg ? msg : "");
}

static void errbuf_clear(char *buf, size_t size)
{
    if (buf && size > 0)
        buf[0] = '\0';
}

static qrun_status errbuf_set(char *buf, size_t size, qrun_status st, const char *msg)
{
    errbuf_put(buf, size, msg);
    return st;
}

/* Copy a caller's parameter struct over the defaults, honouring struct_size
 * (an older caller passes a shorter struct; a newer one a longer struct whose
 * extra fields this library does not know). */
static bool copy_params(void *dst, size_t dst_size, const void *src, uint32_t src_size)
{
    if (src_size < sizeof(uint32_t))
        return false;
    size_t n = src_size < dst_size ? src_size : dst_size;
    memcpy((char *)dst + sizeof(uint32_t), (const char *)src + sizeof(uint32_t),
           n - sizeof(uint32_t));
    return true;
}

static qrun_status sess_fail(qrun_session *s, qrun_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static qrun_status sess_fail(qrun_session *s, qrun_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return st;
}

static qrun_status sess_fail_err(qrun_session *s, const qerr *e)
{
    snprintf(s->err, sizeof s->err, "%s", e->msg);
    return e->code != QRUN_OK ? e->code : QRUN_ERR_INTERNAL;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- memory ---------------------------------------------------------------- */

void qrun_free(void *p) { free(p); }

/* ---- models ---------------------------------------------------------------- */

void qrun_model_params_init(qrun_model_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->backend = QRUN_BACKEND_AUTO;
    p->n_threads = 0;
    p->gpu_layers = -1;
    p->verify_checksums = true;
}

qrun_status qrun_model_load(const char *path, const qrun_model_params *p, qrun_model **model,
                            char *errbuf, size_t errbuf_size)
{
    errbuf_clear(errbuf, errbuf_size);
    if (model)
        *model = NULL;
    if (!model)
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_model_load: model (the output pointer) is NULL");
    if (!path || !*path)
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_model_load: no model path given");
    qrun_model_params mp;
    qrun_model_params_init(&mp);
    if (p && !copy_params(&mp, sizeof mp, p, p->struct_size))
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_model_load: params.struct_size is 0 (fill the struct with "
                          "qrun_model_params_init first)");
    if (mp.n_threads < 0)
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_model_load: n_threads must be >= 0 (0 = one per core)");
    switch (mp.backend) {
    case QRUN_BACKEND_AUTO:
    case QRUN_BACKEND_CPU:
    case QRUN_BACKEND_CUDA: /* builds without CUDA: the engine says so */
        break;
    default:
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_model_load: unknown backend value");
    }
    if (mp.gpu_layers < -1)
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_model_load: gpu_layers must be >= -1 (-1 = as many as fit)");
    qrun_model *m = calloc(1, sizeof *m);
    if (!m)
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_NO_MEMORY, "out of memory");
    qengine_opts o = {
        .backend = mp.backend,
        .gpu_layers = mp.gpu_layers,
        .n_threads = mp.n_threads,
        .verify_checksums = mp.verify_checksums,
        .progress = mp.progress,
        .progress_user = mp.progress_user,
        .log = mp.log,
        .log_user = mp.log_user,
    };
    qerr err = {0};
    m->e = qengine_load(path, &o, &err);
    if (!m->e) {
        free(m);
        if (err.code == QRUN_OK)
            err.code = QRUN_ERR_INTERNAL;
        if (!err.msg[0])
            snprintf(err.msg, sizeof err.msg, "%s: loading failed", path);
        return errbuf_set(errbuf, errbuf_size, err.code, err.msg);
    }
    *model = m;
    return QRUN_OK;
}

void qrun_model_free(qrun_model *model)
{
    if (!model)
        return;
    qengine_free(model->e);
    free(model);
}

void qrun_model_get_info(const qrun_model *model, qrun_model_info *info)
{
    if (!info)
        return;
    memset(info, 0, sizeof *info);
    if (!model)
        return;
    qengine_info(model->e, info);
}

const char *qrun_model_metadata_json(const qrun_model *model)
{
    if (!model)
        return NULL;
    return qengine_metadata_json(model->e);
}

/* ---- tokens ----------------------------------------------------------------- */

qrun_status qrun_tokenize(const qrun_model *model, const char *text, size_t len, unsigned flags,
                          int32_t *ids, size_t cap, size_t *n_ids, char *errbuf,
                          size_t errbuf_size)
{
    errbuf_clear(errbuf, errbuf_size);
    if (n_ids)
        *n_ids = 0;
    if (!model || !n_ids || (!text && len > 0) || (!ids && cap > 0))
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_tokenize: NULL model, n_ids, text or ids");
    unsigned tf = 0;
    if (flags & QRUN_TOKENIZE_ADD_SPECIAL)
        tf |= TOK_ADD_SPECIAL;
    if (flags & QRUN_TOKENIZE_PARSE_SPECIAL)
        tf |= TOK_PARSE_SPECIAL;
    int32_t *out = NULL;
    size_t n = 0;
    qerr err = {0};
    qrun_status st = tok_encode(qengine_tokenizer(model->e), text ? text : "", len, tf, &out, &n,
                                &err);
    if (st != QRUN_OK)
        return errbuf_set(errbuf, errbuf_size, st, err.msg);
    if (ids && cap > 0)
        memcpy(ids, out, (n < cap ? n : cap) * sizeof *ids);
    *n_ids = n;
    free(out);
    return QRUN_OK;
}

qrun_status qrun_detokenize(const qrun_model *model, const int32_t *ids, size_t n_ids,
                            unsigned flags, char *text, size_t cap, size_t *len, char *errbuf,
                            size_t errbuf_size)
{
    errbuf_clear(errbuf, errbuf_size);
    if (len)
        *len = 0;
    if (!model || !len || (!ids && n_ids > 0) || (!text && cap > 0))
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_detokenize: NULL model, len, ids or text");
    char *out = NULL;
    size_t n = 0;
    qerr err = {0};
    static const int32_t none[1] = {0};
    qrun_status st = tok_decode(qengine_tokenizer(model->e), ids ? ids : none, n_ids,
                                (flags & QRUN_DETOKENIZE_SKIP_SPECIAL) ? TOK_SKIP_SPECIAL : 0,
                                &out, &n, &err);
    if (st != QRUN_OK)
        return errbuf_set(errbuf, errbuf_size, st, err.msg);
    if (text && cap > 0) {
        size_t c = n < cap ? n : cap;
        memcpy(text, out, c);
        if (n < cap)
            text[n] = '\0';
    }
    *len = n;
    free(out);
    return QRUN_OK;
}

const char *qrun_token_piece(const qrun_model *model, int32_t id)
{
    if (!model)
        return NULL;
    return tok_id_to_piece(qengine_tokenizer(model->e), id);
}

/* ---- chat templates ---------------------------------------------------------- */

qrun_status qrun_chat_apply(const qrun_model *model, const qrun_chat_message *messages,
                            size_t n_messages, bool add_generation_prompt, char **text,
                            char *errbuf, size_t errbuf_size)
{
    errbuf_clear(errbuf, errbuf_size);
    if (text)
        *text = NULL;
    if (!model || !text || (!messages && n_messages > 0))
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_chat_apply: NULL model, messages or text");
    chat_message *msgs = NULL;
    if (n_messages > 0) {
        msgs = calloc(n_messages, sizeof *msgs);
        if (!msgs)
            return errbuf_set(errbuf, errbuf_size, QRUN_ERR_NO_MEMORY, "out of memory");
    }
    for (size_t i = 0; i < n_messages; i++) {
        if (!messages[i].role) {
            free(msgs);
            char m[128];
            snprintf(m, sizeof m, "qrun_chat_apply: message %zu has no role", i);
            return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT, m);
        }
        msgs[i].role = messages[i].role;
        msgs[i].content = messages[i].content;
    }
    const char *bos = qengine_bos_text(model->e), *eos = qengine_eos_text(model->e);
    chat_render_opts o = {
        .messages = msgs,
        .n_messages = n_messages,
        .add_generation_prompt = add_generation_prompt,
        .bos_token = bos && *bos ? bos : NULL,
        .eos_token = eos && *eos ? eos : NULL,
    };
    qerr err = {0};
    const chat_template *t = qengine_chat_template(model->e);
    qrun_status st = t ? chat_template_render(t, &o, text, NULL, &err)
                       : chat_plain_render(&o, text, NULL, &err);
    free(msgs);
    if (st != QRUN_OK) {
        *text = NULL;
        return errbuf_set(errbuf, errbuf_size, st, err.msg);
    }
    return QRUN_OK;
}

/* ---- sessions -------------------------------------------------------------------- */

void qrun_session_params_init(qrun_session_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->n_ctx = 0;
    p->n_batch = 512;
    p->kv_type = QRUN_KV_F16;
    p->n_threads = 0;
}

qrun_status qrun_session_create(qrun_model *model, const qrun_session_params *p,
                                qrun_session **session, char *errbuf, size_t errbuf_size)
{
    errbuf_clear(errbuf, errbuf_size);
    if (session)
        *session = NULL;
    if (!model || !session)
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_session_create: NULL model or session");
    qrun_session_params sp;
    qrun_session_params_init(&sp);
    if (p && !copy_params(&sp, sizeof sp, p, p->struct_size))
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_session_create: params.struct_size is 0 (fill the struct with "
                          "qrun_session_params_init first)");
    char m[256];
    if (sp.n_ctx < 0 || sp.n_batch < 0 || sp.n_threads < 0) {
        snprintf(m, sizeof m,
                 "qrun_session_create: n_ctx (%d), n_batch (%d) and n_threads (%d) must be >= 0",
                 sp.n_ctx, sp.n_batch, sp.n_threads);
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT, m);
    }
    if (sp.kv_type != QRUN_KV_F16 && sp.kv_type != QRUN_KV_F32)
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_INVALID_ARGUMENT,
                          "qrun_session_create: unknown kv_type");
    int n_ctx = sp.n_ctx;
    if (n_ctx == 0) {
        int train = qengine_n_ctx_train(model->e);
        n_ctx = train > 0 && train < 4096 ? train : 4096;
    }
    int n_batch = sp.n_batch > 0 ? sp.n_batch : 512;
    if (n_batch > n_ctx)
        n_batch = n_ctx;

    qrun_session *s = calloc(1, sizeof *s);
    if (!s)
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_NO_MEMORY, "out of memory");
    s->model = model;
    s->vocab = qengine_vocab_size(model->e);
    s->logits_at = -1;
    atomic_init(&s->cancel, 0);
    /* The CPU engine computes in f32 (transformers' float32 run on the
     * dequantized weights, its most accurate mode); a GPU session computes
     * in the model's compute dtype, as bitsandbytes does on the GPU (a
     * partially offloaded session's CPU layers too, so both halves agree). */
    qctx_opts co = {.n_ctx = n_ctx,
                    .n_batch = n_batch,
                    .kv_type = sp.kv_type == QRUN_KV_F32 ? QDT_F32 : QDT_F16,
                    .n_threads = sp.n_threads,
                    .act_dtype = qengine_gpu_layers(model->e) > 0
                                     ? qengine_compute_dtype(model->e)
                                     : QDT_F32};
    qerr err = {0};
    s->ctx = qctx_create(model->e, &co, &err);
    if (!s->ctx) {
        free(s);
        return errbuf_set(errbuf, errbuf_size, err.code != QRUN_OK ? err.code : QRUN_ERR_INTERNAL,
                          err.msg);
    }
    s->n_ctx = qctx_n_ctx(s->ctx);
    if (qctx_device_sampling(s->ctx)) {
        s->window_cap = s->n_ctx + 1; /* what the device's window holds */
        s->window = malloc((size_t)s->window_cap * sizeof *s->window);
        if (!s->window) {
            qrun_session_free(s);
            return errbuf_set(errbuf, errbuf_size, QRUN_ERR_NO_MEMORY,
                              "out of memory allocating the session");
        }
    }
    s->tokens = malloc((size_t)s->n_ctx * sizeof *s->tokens);
    s->logits = malloc((size_t)s->vocab * sizeof *s->logits);
    s->prompt_logits = malloc((size_t)s->vocab * sizeof *s->prompt_logits);
    if (!s->tokens || !s->logits || !s->prompt_logits) {
        qrun_session_free(s);
        return errbuf_set(errbuf, errbuf_size, QRUN_ERR_NO_MEMORY,
                          "out of memory allocating the session");
    }
    *session = s;
    return QRUN_OK;
}

void qrun_session_free(qrun_session *s)
{
    if (!s)
        return;
    qsampler_free(s->smp);
    qctx_free(s->ctx);
    free(s->tokens);
    free(s->logits);
    free(s->prompt_logits);
    free(s->window);
    free(s);
}

const char *qrun_session_last_error(const qrun_session *s) { return s ? s->err : ""; }

int qrun_session_n_ctx(const qrun_session *s) { return s ? s->n_ctx : 0; }

int qrun_session_n_past(const qrun_session *s) { return s ? s->n_past : 0; }

qrun_status qrun_session_rewind(qrun_session *s, int n_keep)
{
    if (!s)
        return QRUN_ERR_INVALID_ARGUMENT;
    s->err[0] = '\0';
    if (n_keep < 0)
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT, "rewind: n_keep (%d) must be >= 0",
                         n_keep);
    if (n_keep < s->n_past)
        s->n_past = n_keep; /* keeping more than there is keeps everything */
    return QRUN_OK;
}

/* Evaluate ids at the end of the context (bounds and ids already checked). */
static qrun_status eval_raw(qrun_session *s, const int32_t *ids, int n, float *logits_all)
{
    qerr err = {0};
    s->logits_at = -1;
    s->logits_dev = false;
    qrun_status st = qctx_forward(s->ctx, ids, n, s->n_past, s->logits, logits_all, &s->cancel,
                                  &err);
    if (st != QRUN_OK) {
        if (st == QRUN_ERR_CANCELLED && !err.msg[0])
            snprintf(err.msg, sizeof err.msg, "cancelled");
        err.code = st;
        return sess_fail_err(s, &err);
    }
    memcpy(s->tokens + s->n_past, ids, (size_t)n * sizeof *ids);
    s->n_past += n;
    s->logits_at = s->n_past;
    return QRUN_OK;
}

/* Evaluate the sampled token `id` and pick the next one where the logits
 * are (all layers on the GPU): the same draw and penalty window
 * qsampler_sample would use next, so the ids are the host sampler's. The
 * logits stay on the device until something reads them (logits_to_host). */
static qrun_status eval_sample(qrun_session *s, int32_t id, int32_t *next)
{
    qerr err = {0};
    const qsampler_params *p = qsampler_get_params(s->smp);
    size_t n = 0;
    if (p->repeat_penalty != 1.0f) {
        n = qsampler_window(s->smp, s->window, (size_t)s->window_cap);
        if (n > (size_t)s->window_cap)
            n = (size_t)s->window_cap; /* cannot happen: the context bounds it */
    }
    qctx_sample cs = {
        .temperature = p->temperature, .top_k = p->top_k, .top_p = p->top_p,
        .min_p = p->min_p, .repeat_penalty = p->repeat_penalty, .recent = s->window,
        .n_recent = (int)n, .draw = qsampler_is_greedy(s->smp) ? 0 : qsampler_draw(s->smp),
    };
    s->logits_at = -1;
    s->logits_dev = false;
    qrun_status st = qctx_forward_sample(s->ctx, id, s->n_past, &cs, next, &s->cancel, &err);
    if (st != QRUN_OK) {
        if (st == QRUN_ERR_CANCELLED && !err.msg[0])
            snprintf(err.msg, sizeof err.msg, "cancelled");
        err.code = st;
        return sess_fail_err(s, &err);
    }
    s->tokens[s->n_past++] = id;
    s->logits_at = s->n_past;
    s->logits_dev = true;
    return QRUN_OK;
}

/* Bring logits left on the device by eval_sample into s->logits. */
static qrun_status logits_to_host(qrun_session *s, qerr *err)
{
    if (!s->logits_dev)
        return QRUN_OK;
    s->logits_dev = false;
    qrun_status st = qctx_last_logits(s->ctx, s->logits, err);
    if (st != QRUN_OK)
        s->logits_at = -1;
    return st;
}

static qrun_status check_ids(qrun_session *s, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->vocab)
            return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT,
                             "token %zu is %d, outside the vocabulary [0, %d)", i, (int)ids[i],
                             (int)s->vocab);
    return QRUN_OK;
}

qrun_status qrun_session_eval(qrun_session *s, const int32_t *ids, size_t n_ids,
                              float *logits_all)
{
    if (!s)
        return QRUN_ERR_INVALID_ARGUMENT;
    s->err[0] = '\0';
    atomic_store(&s->cancel, 0);
    if (n_ids == 0)
        return QRUN_OK;
    if (!ids)
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT, "eval: ids is NULL");
    if (n_ids > (size_t)(s->n_ctx - s->n_past))
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT,
                         "eval: %zu tokens do not fit: the context holds %d and has %d in it",
                         n_ids, s->n_ctx, s->n_past);
    qrun_status st = check_ids(s, ids, n_ids);
    if (st != QRUN_OK)
        return st;
    return eval_raw(s, ids, (int)n_ids, logits_all);
}

const float *qrun_session_logits(const qrun_session *s)
{
    if (!s || s->logits_at < 0 || s->logits_at != s->n_past)
        return NULL;
    if (s->logits_dev) {
        /* fetched on first use: the session's cache of its last logits */
        qerr err = {0};
        if (logits_to_host((qrun_session *)s, &err) != QRUN_OK)
            return NULL;
    }
    return s->logits;
}

void qrun_session_cancel(qrun_session *s)
{
    if (s)
        atomic_store(&s->cancel, 1);
}

/* ---- generation --------------------------------------------------------------------- */

void qrun_sampler_params_init(qrun_sampler_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->temperature = QSAMPLER_DEFAULT_TEMPERATURE;
    p->top_k = QSAMPLER_DEFAULT_TOP_K;
    p->top_p = QSAMPLER_DEFAULT_TOP_P;
    p->min_p = QSAMPLER_DEFAULT_MIN_P;
    p->repeat_penalty = QSAMPLER_DEFAULT_REPEAT_PENALTY;
    p->repeat_last_n = QSAMPLER_DEFAULT_REPEAT_LAST_N;
    p->seed = 0;
}

void qrun_generate_params_init(qrun_generate_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    qrun_sampler_params_init(&p->sampler);
    p->max_new_tokens = 256;
    p->stop = NULL;
    p->n_stop = 0;
    p->stop_at_eos = true;
    p->n_sequences = 1;
    p->tokenize_flags = QRUN_TOKENIZE_ADD_SPECIAL;
}

static bool same_sampling(const qsampler_params *a, const qsampler_params *b)
{
    return a->temperature == b->temperature && a->top_k == b->top_k && a->top_p == b->top_p &&
           a->min_p == b->min_p && a->repeat_penalty == b->repeat_penalty &&
           a->repeat_last_n == b->repeat_last_n;
}

static qrun_status read_generate_params(qrun_session *s, const qrun_generate_params *p,
                                        qrun_generate_params *gp)
{
    qrun_generate_params_init(gp);
    if (!p)
        return QRUN_OK;
    if (!copy_params(gp, sizeof *gp, p, p->struct_size))
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT,
                         "generate: params.struct_size is 0 (fill the struct with "
                         "qrun_generate_params_init first)");
    qrun_sampler_params sp;
    qrun_sampler_params_init(&sp);
    if (!copy_params(&sp, sizeof sp, &p->sampler, p->sampler.struct_size))
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT,
                         "generate: sampler.struct_size is 0 (fill the struct with "
                         "qrun_sampler_params_init first)");
    gp->sampler = sp;
    return QRUN_OK;
}

qrun_status qrun_generate(qrun_session *s, const char *prompt, const qrun_generate_params *p,
                          qrun_token_fn on_token, void *user, qrun_generate_result *result)
{
    if (result)
        memset(result, 0, sizeof *result);
    if (!s)
        return QRUN_ERR_INVALID_ARGUMENT;
    s->err[0] = '\0';
    if (!prompt)
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT, "generate: prompt is NULL");
    qrun_generate_params gp;
    qrun_status st = read_generate_params(s, p, &gp);
    if (st != QRUN_OK)
        return st;
    unsigned tf = 0;
    if (gp.tokenize_flags & QRUN_TOKENIZE_ADD_SPECIAL)
        tf |= TOK_ADD_SPECIAL;
    if (gp.tokenize_flags & QRUN_TOKENIZE_PARSE_SPECIAL)
        tf |= TOK_PARSE_SPECIAL;
    int32_t *ids = NULL;
    size_t n = 0;
    qerr err = {0};
    st = tok_encode(qengine_tokenizer(s->model->e), prompt, strlen(prompt), tf, &ids, &n, &err);
    if (st != QRUN_OK) {
        err.code = st;
        return sess_fail_err(s, &err);
    }
    st = qrun_generate_tokens(s, ids, n, &gp, on_token, user, result);
    free(ids);
    return st;
}

static bool is_eos(const int32_t *eos, int n_eos, int32_t id)
{
    for (int i = 0; i < n_eos; i++)
        if (eos[i] == id)
            return true;
    return false;
}

qrun_status qrun_generate_tokens(qrun_session *s, const int32_t *prompt_ids, size_t n_prompt,
                                 const qrun_generate_params *p, qrun_token_fn on_token,
                                 void *user, qrun_generate_result *result)
{
    qrun_generate_result res_local;
    qrun_generate_result *res = result ? result : &res_local;
    memset(res, 0, sizeof *res);
    res->stop_reason = QRUN_STOP_LENGTH;
    if (!s)
        return QRUN_ERR_INVALID_ARGUMENT;
    s->err[0] = '\0';
    atomic_store(&s->cancel, 0);

    qrun_generate_params gp;
    qrun_status st = read_generate_params(s, p, &gp);
    if (st != QRUN_OK)
        return st;
    if (!prompt_ids && n_prompt > 0)
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT, "generate: prompt_ids is NULL");
    if (n_prompt == 0)
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT,
                         "generate: the prompt is empty (no tokens to continue from)");
    if (n_prompt > (size_t)s->n_ctx)
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT, "prompt is %zu tokens, context holds %d",
                         n_prompt, s->n_ctx);
    if (gp.n_sequences < 1)
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT, "generate: n_sequences (%d) must be >= 1",
                         gp.n_sequences);
    if (gp.max_new_tokens < -1)
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT,
                         "generate: max_new_tokens (%d) must be >= 0 or -1 (until the context "
                         "is full)",
                         gp.max_new_tokens);
    if (gp.n_stop > 0 && !gp.stop)
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT, "generate: n_stop is %zu but stop is NULL",
                         gp.n_stop);
    if (gp.n_stop > 1024)
        return sess_fail(s, QRUN_ERR_INVALID_ARGUMENT, "generate: too many stop strings (%zu)",
                         gp.n_stop);
    st = check_ids(s, prompt_ids, n_prompt);
    if (st != QRUN_OK)
        return st;

    qerr err = {0};
    qsampler_params sp = {
        .temperature = gp.sampler.temperature,
        .top_k = gp.sampler.top_k,
        .top_p = gp.sampler.top_p,
        .min_p = gp.sampler.min_p,
        .repeat_penalty = gp.sampler.repeat_penalty,
        .repeat_last_n = gp.sampler.repeat_last_n,
        .seed = gp.sampler.seed,
    };
    if (qsampler_params_check(&sp, &err) != QRUN_OK)
        return sess_fail_err(s, &err);
    if (!s->smp || !same_sampling(&s->smp_params, &sp)) {
        qsampler_free(s->smp);
        s->smp = NULL;
        if (qsampler_create(&sp, s->vocab, s->n_ctx, 0, &s->smp, &err) != QRUN_OK)
            return sess_fail_err(s, &err);
        s->smp_params = sp;
    }

    /* Per-call objects: the stop matcher and the detokenizer stream. */
    qstop *stop = NULL;
    tok_stream *ts = NULL;
    if (qstop_create(gp.stop, (int)gp.n_stop, &stop, &err) != QRUN_OK)
        return sess_fail_err(s, &err);

    /* ---- the prompt: reuse the common prefix ---- */
    double t0 = now_seconds();
    int n_pr = (int)n_prompt;
    int common = 0;
    while (common < s->n_past && common < n_pr && s->tokens[common] == prompt_ids[common])
        common++;
    bool have_logits = common == n_pr && s->n_past == n_pr && s->logits_at == n_pr &&
                       logits_to_host(s, &err) == QRUN_OK;
    if (!have_logits) {
        if (common >= n_pr)
            common = n_pr - 1; /* re-evaluate the last token for its logits */
        s->n_past = common;
        st = eval_raw(s, prompt_ids + common, n_pr - common, NULL);
        if (st != QRUN_OK) {
            if (st == QRUN_ERR_CANCELLED)
                res->stop_reason = QRUN_STOP_CANCELLED;
            goto done;
        }
        res->n_prompt_tokens = n_pr - common;
    }
    if (gp.n_sequences > 1)
        memcpy(s->prompt_logits, s->logits, (size_t)s->vocab * sizeof *s->logits);
    double t1 = now_seconds();
    res->prompt_seconds = t1 - t0;

    int n_eos = 0;
    const int32_t *eos = qengine_eos_ids(s->model->e, &n_eos);
    const tok_tokenizer *tok = qengine_tokenizer(s->model->e);

    /* ---- the sequences ---- */
    for (int seq = 0; seq < gp.n_sequences; seq++) {
        if (seq > 0) {
            s->n_past = n_pr;
            memcpy(s->logits, s->prompt_logits, (size_t)s->vocab * sizeof *s->logits);
            s->logits_at = n_pr;
            s->logits_dev = false;
            qstop_reset(stop);
        }
        qsampler_reset(s->smp);
        qsampler_reseed(s->smp, gp.sampler.seed + (uint64_t)seq);
        if (qsampler_accept_many(s->smp, prompt_ids, n_prompt, &err) != QRUN_OK) {
            st = sess_fail_err(s, &err);
            goto done;
        }
        tok_stream_free(ts);
        ts = tok_stream_new(tok, TOK_SKIP_SPECIAL, &err);
        if (!ts) {
            st = sess_fail_err(s, &err);
            goto done;
        }

        qrun_stop_reason reason = QRUN_STOP_LENGTH;
        bool quiet = false; /* no more callbacks for this sequence */
        int n_gen = 0;
        /* with every layer on the GPU each step also picks the next token
         * there (eval_sample); the first one comes from the prompt's logits */
        const bool on_device = s->window != NULL;
        int32_t next = -1;
        bool have_next = false;
        for (;;) {
            if (atomic_load(&s->cancel)) {
                reason = QRUN_STOP_CANCELLED;
                st = sess_fail(s, QRUN_ERR_CANCELLED, "cancelled");
                break;
            }
            if (gp.max_new_tokens >= 0 && n_gen >= gp.max_new_tokens) {
                reason = QRUN_STOP_LENGTH;
                break;
            }
            int32_t id = -1;
            if (have_next) {
                have_next = false;
                id = next;
                if (id < 0) { /* as qsampler_sample reports it */
                    st = sess_fail(s, QRUN_ERR_INVALID_ARGUMENT,
                                   "sampler: every logit of the %d-token vocabulary is -inf or "
                                   "NaN",
                                   (int)s->vocab);
                    break;
                }
            } else if (qsampler_sample(s->smp, s->logits, &id, &err) != QRUN_OK) {
                st = sess_fail_err(s, &err);
                break;
            }
            if (gp.stop_at_eos && is_eos(eos, n_eos, id)) {
                reason = QRUN_STOP_EOS;
                break;
            }
            n_gen++;
            res->n_generated++;
            if (qsampler_accept(s->smp, id, &err) != QRUN_OK) {
                st = sess_fail_err(s, &err);
                break;
            }
            const char *piece = NULL;
            size_t plen = 0;
            if (tok_stream_push(ts, id, &piece, &plen, &err) != QRUN_OK) {
                st = sess_fail_err(s, &err);
                break;
            }
            qstop_result r;
            if (qstop_feed(stop, piece, plen, &r, &err) != QRUN_OK) {
                st = sess_fail_err(s, &err);
                break;
            }
            if (on_token && !on_token(user, seq, id, r.text, r.len)) {
                reason = QRUN_STOP_CALLBACK;
                quiet = true;
                break;
            }
            if (r.stop_index >= 0) {
                reason = QRUN_STOP_STRING;
                break;
            }
            if (gp.max_new_tokens >= 0 && n_gen >= gp.max_new_tokens) {
                reason = QRUN_STOP_LENGTH;
                break;
            }
            if (s->n_past >= s->n_ctx) {
                reason = QRUN_STOP_CONTEXT;
                break;
            }
            st = on_device ? eval_sample(s, id, &next) : eval_raw(s, &id, 1, NULL);
            if (st != QRUN_OK) {
                if (st == QRUN_ERR_CANCELLED)
                    reason = QRUN_STOP_CANCELLED;
                break;
            }
            have_next = on_device;
        }
        res->stop_reason = reason;
        if (st != QRUN_OK)
            break;
        /* Release what the detokenizer and the stop matcher held back. */
        if (!quiet && reason != QRUN_STOP_STRING) {
            const char *piece = NULL;
            size_t plen = 0;
            qstop_result r = {0};
            if (tok_stream_flush(ts, &piece, &plen, &err) != QRUN_OK ||
                qstop_feed(stop, piece, plen, &r, &err) != QRUN_OK) {
                st = sess_fail_err(s, &err);
                break;
            }
            if (r.stop_index >= 0)
                res->stop_reason = QRUN_STOP_STRING;
            if (r.len > 0 && on_token && !on_token(user, seq, -1, r.text, r.len)) {
                quiet = true;
                res->stop_reason = QRUN_STOP_CALLBACK;
            }
            if (!quiet && r.stop_index < 0) {
                qstop_flush(stop, &r);
                if (r.len > 0 && on_token)
                    on_token(user, seq, -1, r.text, r.len);
            }
        }
    }
    res->generate_seconds = now_seconds() - t1;

done:
    tok_stream_free(ts);
    qstop_free(stop);
    return st;
}
