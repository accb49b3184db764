/* The CUDA implementation of src/backend.h: buffers are device f32 arrays,
 * the ops enqueue the kernels of src/kernels/ on the session's one stream,
 * matrix products go through one qk_blas (cuBLAS handle + workspace).
 *
 * - Weights, biases, norm weights and the embedding table reach the ops as
 *   host pointers into the mapped .qbin (models/ bind them so); they are
 *   translated to the engine's device copy (src/cuda/weights.h).
 * - Positions and token ids live in a device qk_step that begin_step
 *   rewrites (from pinned memory) before each forward piece, so a decode
 *   step captured into a CUDA graph replays correctly at any position.
 * - Small host tables (rotary inverse frequencies, ALiBi slopes) are
 *   uploaded once per table into slots allocated at creation; dynamic-NTK
 *   rotary tables change with the sequence length and are re-uploaded when
 *   they do, which is not graph-safe: a capture in progress is abandoned.
 * - Ops returning void record the first failure (sticky) and later ops do
 *   nothing until to_host / sync / a bool op reports it.
 * Nothing is allocated after create/buf_alloc/kv_alloc. */
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/ops.h"
#include "cuda/weights.h"
#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/qk.h"
#include "kernels/sample.h"

#define ROPE_SLOT_FLOATS (CPU_MAX_HEAD_DIM / 2)

/* A small table uploaded once per host table (keyed by its host address). */
typedef struct table_slot {
    const void *key;  /* the qrope or the slopes array; NULL: free */
    float *dev;       /* device copy */
    float *pinned;    /* staging for the upload */
    float *shadow;    /* host copy of what `dev` holds (dynamic rope: compare) */
    int n;            /* floats in use */
    bool valid;
    cudaEvent_t copied; /* the last upload from `pinned` has finished */
} table_slot;

struct qbackend {
    qdtype act, compute;
    int max_rows, n_ctx, n_heads, head_dim;
    const cuda_weights *w;
    int device;
    cudaStream_t stream;
    qk_blas *blas;

    qk_step *d_step, *h_step; /* device state of the step, its pinned source */
    size_t step_bytes;
    cudaEvent_t step_copied;
    bool have_step;

    void *attn_scratch;
    size_t attn_scratch_size;

    table_slot *rope, *alibi;
    int n_slots;
    float *slot_dev;    /* one allocation for every slot's device copy */
    float *slot_pinned; /* one pinned allocation for every slot's staging */
    float *slot_shadow;
    int alibi_floats;

    /* sampling: scratch, the penalty window and the chosen id */
    void *smp_scratch;
    size_t smp_scratch_size;
    int smp_vocab, smp_window;
    int32_t *d_recent, *h_recent, *d_id, *h_id;
    cudaEvent_t recent_copied;

    bool failed; /* sticky error pending */
    qerr sticky;
    bool capturing, capture_broken;
};

struct qbk_buf {
    float *d;
    int rows, cols;
};

struct qbk_kv {
    qk_kv_layer *layers;
    int n_layers;
    void *mem;
};

struct qbk_graph {
    cudaGraphExec_t exec;
};

/* ---- errors --------------------------------------------------------------------- */

/* Record the first failure of a void op (later ones are consequences). */
static void stick(qbackend *be, const qerr *e)
{
    if (be->failed)
        return;
    be->failed = true;
    be->sticky = *e;
    if (be->sticky.code == QRUN_OK)
        be->sticky.code = QRUN_ERR_DEVICE;
}

static void stick_msg(qbackend *be, qrun_status code, const char *msg)
{
    qerr e;
    qerr_set(&e, code, "cuda backend: %s", msg);
    stick(be, &e);
}

/* Report and clear the sticky error: false when there was one. */
static bool take_sticky(qbackend *be, qerr *err)
{
    if (!be->failed)
        return true;
    if (err)
        *err = be->sticky;
    be->failed = false;
    qerr_clear(&be->sticky);
    return false;
}

/* Wrap a launcher call of a void op. */
#define RUN(be, call)                                                                              \
    do {                                                                                           \
        if ((be)->failed)                                                                          \
            return;                                                                                \
        qerr e_;                                                                                   \
        qerr_clear(&e_);                                                                           \
        if (!(call))                                                                               \
            stick((be), &e_);                                                                      \
    } while (0)

/* The device address of a host pointer into the weights; NULL stays NULL. */
static bool dev_ptr(qbackend *be, const void *host, const void **dev, const char *what, qerr *err)
{
    *dev = NULL;
    if (!host)
        return true;
    *dev = cuda_weights_device_ptr(be->w, host);
    if (*dev)
        return true;
    qerr_set(err, QRUN_ERR_INTERNAL, "cuda backend: the %s is not in the device copy of the "
             "weights (a layer not uploaded?)", what);
    return false;
}

/* ---- create / destroy ---------------------------------------------------------- */

static void cuda_destroy(qbackend *be)
{
    if (!be)
        return;
    if (be->stream)
        cudaStreamSynchronize(be->stream); /* teardown: nothing to report to */
    if (be->blas)
        qk_blas_free(be->blas);
    for (int i = 0; be->rope && be->alibi && i < 2 * be->n_slots; i++) {
        table_slot *s = i < be->n_slots ? &be->rope[i] : &be->alibi[i - be->n_slots];
        if (s->copied)
            cudaEventDestroy(s->copied);
    }
    free(be->rope);
    free(be->alibi);
    free(be->slot_shadow);
    if (be->slot_dev)
        cudaFree(be->slot_dev);
    if (be->slot_pinned)
        cudaFreeHost(be->slot_pinned);
    if (be->d_step)
        cudaFree(be->d_step);
    if (be->h_step)
        cudaFreeHost(be->h_step);
    if (be->step_copied)
        cudaEventDestroy(be->step_copied);
    if (be->attn_scratch)
        cudaFree(be->attn_scratch);
    if (be->smp_scratch)
        cudaFree(be->smp_scratch);
    if (be->d_recent)
        cudaFree(be->d_recent);
    if (be->d_id)
        cudaFree(be->d_id);
    if (be->h_recent)
        cudaFreeHost(be->h_recent);
    if (be->h_id)
        cudaFreeHost(be->h_id);
    if (be->recent_copied)
        cudaEventDestroy(be->recent_copied);
    if (be->stream)
        cudaStreamDestroy(be->stream);
    (void)cudaGetLastError();
    free(be);
}

/* cudaMalloc with a message naming what and how much. */
static bool dev_alloc(void **p, size_t bytes, const char *what, qerr *err)
{
    cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaSuccess)
        return true;
    *p = NULL;
    (void)cudaGetLastError();
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess)
        (void)cudaGetLastError();
    qerr_set(err, QRUN_ERR_DEVICE,
             "cuda backend: cudaMalloc of %.1f MiB for %s failed (%s); %.1f MiB free on the GPU",
             (double)bytes / 1048576.0, what, cudaGetErrorString(e), (double)fr / 1048576.0);
    return false;
}

static qbackend *cuda_create(const qbackend_config *cfg, qerr *err)
{
    if (!cfg || cfg->max_rows <= 0 || !cfg->weights || cfg->n_ctx <= 0 || cfg->n_heads <= 0 ||
        cfg->head_dim <= 0 || cfg->head_dim > CPU_MAX_HEAD_DIM ||
        (cfg->act != QDT_F32 && cfg->act != QDT_F16 && cfg->act != QDT_BF16) ||
        (cfg->compute != QDT_F32 && cfg->compute != QDT_F16 && cfg->compute != QDT_BF16)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "cuda backend: bad configuration");
        return NULL;
    }
    qbackend *be = calloc(1, sizeof *be);
    if (!be) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "cuda backend: out of memory");
        return NULL;
    }
    be->act = cfg->act;
    be->compute = cfg->compute;
    be->max_rows = cfg->max_rows;
    be->n_ctx = cfg->n_ctx;
    be->n_heads = cfg->n_heads;
    be->head_dim = cfg->head_dim;
    be->w = cfg->weights;
    be->device = cuda_weights_device(cfg->weights);
    be->n_slots = cfg->max_rope_tables > 0 ? cfg->max_rope_tables : 4;
    be->alibi_floats = cfg->n_heads;
    int greatest = 0;
    if (!qk_ok(cudaSetDevice(be->device), "cuda backend: cudaSetDevice", err) ||
        !qk_ok(cudaDeviceGetStreamPriorityRange(NULL, &greatest),
               "cuda backend: cudaDeviceGetStreamPriorityRange", err) ||
        /* the highest priority: the matmul side stream's prefill tiles
         * (default priority) then fill the SMs this stream leaves idle
         * instead of delaying its products (nf4 pp512 +3-4%, docs/perf.md) */
        !qk_ok(cudaStreamCreateWithPriority(&be->stream, cudaStreamNonBlocking, greatest),
               "cuda backend: cudaStreamCreate", err))
        goto fail;

    size_t ws = qk_matmul_workspace_size(cfg->max_rows, cfg->max_linear_rows, cfg->max_linear_cols,
                                         cfg->compute);
    be->blas = qk_blas_create(be->stream, ws, err);
    if (!be->blas)
        goto fail;

    be->step_bytes = sizeof(qk_step) + (size_t)cfg->max_rows * sizeof(int32_t);
    if (!dev_alloc((void **)&be->d_step, be->step_bytes, "the step state", err) ||
        !qk_ok(cudaHostAlloc((void **)&be->h_step, be->step_bytes, cudaHostAllocDefault),
               "cuda backend: pinned step buffer", err) ||
        !qk_ok(cudaEventCreateWithFlags(&be->step_copied, cudaEventDisableTiming),
               "cuda backend: event", err) ||
        !qk_ok(cudaMemsetAsync(be->d_step, 0, be->step_bytes, be->stream), "cuda backend: memset",
               err))
        goto fail;

    be->attn_scratch_size =
        qk_attention_scratch_size(cfg->max_rows, cfg->n_heads, cfg->n_ctx, cfg->head_dim);
    if (be->attn_scratch_size &&
        !dev_alloc(&be->attn_scratch, be->attn_scratch_size, "the attention scratch", err))
        goto fail;

    /* table slots: n_slots rotary tables and n_slots ALiBi tables */
    const size_t rope_f = ROPE_SLOT_FLOATS, alibi_f = (size_t)cfg->n_heads;
    const size_t all_f = (size_t)be->n_slots * (rope_f + alibi_f);
    be->rope = calloc((size_t)be->n_slots, sizeof *be->rope);
    be->alibi = calloc((size_t)be->n_slots, sizeof *be->alibi);
    be->slot_shadow = calloc(all_f, sizeof(float));
    if (!be->rope || !be->alibi || !be->slot_shadow) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "cuda backend: out of memory");
        goto fail;
    }
    if (!dev_alloc((void **)&be->slot_dev, all_f * sizeof(float), "rotary/ALiBi tables", err) ||
        !qk_ok(cudaHostAlloc((void **)&be->slot_pinned, all_f * sizeof(float),
                             cudaHostAllocDefault),
               "cuda backend: pinned table buffer", err))
        goto fail;
    size_t off = 0;
    for (int i = 0; i < 2 * be->n_slots; i++) {
        bool is_rope = i < be->n_slots;
        table_slot *s = is_rope ? &be->rope[i] : &be->alibi[i - be->n_slots];
        s->dev = be->slot_dev + off;
        s->pinned = be->slot_pinned + off;
        s->shadow = be->slot_shadow + off;
        off += is_rope ? rope_f : alibi_f;
        if (!qk_ok(cudaEventCreateWithFlags(&s->copied, cudaEventDisableTiming),
                   "cuda backend: event", err))
            goto fail;
    }
    if (cfg->sample_vocab > 0) {
        be->smp_vocab = cfg->sample_vocab;
        be->smp_window = cfg->sample_window > 0 ? cfg->sample_window : 0;
        be->smp_scratch_size = qk_sample_scratch_size(cfg->sample_vocab);
        size_t win = (size_t)(be->smp_window > 0 ? be->smp_window : 1) * sizeof(int32_t);
        if (be->smp_scratch_size == 0) {
            qerr_set(err, QRUN_ERR_DEVICE, "cuda backend: no sampling scratch size for %d logits",
                     cfg->sample_vocab);
            goto fail;
        }
        if (!dev_alloc(&be->smp_scratch, be->smp_scratch_size, "the sampling scratch", err) ||
            !dev_alloc((void **)&be->d_recent, win, "the penalty window", err) ||
            !dev_alloc((void **)&be->d_id, sizeof(int32_t), "the sampled id", err) ||
            !qk_ok(cudaHostAlloc((void **)&be->h_recent, win, cudaHostAllocDefault),
                   "cuda backend: pinned window buffer", err) ||
            !qk_ok(cudaHostAlloc((void **)&be->h_id, sizeof(int32_t), cudaHostAllocDefault),
                   "cuda backend: pinned id", err) ||
            !qk_ok(cudaEventCreateWithFlags(&be->recent_copied, cudaEventDisableTiming),
                   "cuda backend: event", err))
            goto fail;
    }
    if (!qk_ok(cudaStreamSynchronize(be->stream), "cuda backend: set-up", err))
        goto fail;
    return be;
fail:
    cuda_destroy(be);
    return NULL;
}

/* ---- buffers ---------------------------------------------------------------------- */

static qbk_buf *cuda_buf_alloc(qbackend *be, int rows, int cols, qerr *err)
{
    if (rows <= 0 || cols <= 0) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "cuda backend: empty buffer %dx%d", rows, cols);
        return NULL;
    }
    qbk_buf *b = calloc(1, sizeof *b);
    if (!b) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "cuda backend: out of memory");
        return NULL;
    }
    size_t bytes = (size_t)rows * (size_t)cols * sizeof(float);
    if (!dev_alloc((void **)&b->d, bytes, "an activation buffer", err)) {
        free(b);
        return NULL;
    }
    /* defined contents: a row never written reads as 0, not as stale data
     * (on the backend's stream, which does not wait for the default one) */
    if (!qk_ok(cudaMemsetAsync(b->d, 0, bytes, be->stream), "cuda backend: memset", err)) {
        cudaFree(b->d);
        free(b);
        return NULL;
    }
    b->rows = rows;
    b->cols = cols;
    return b;
}

static void cuda_buf_free(qbackend *be, qbk_buf *b)
{
    (void)be;
    if (b) {
        cudaFree(b->d);
        free(b);
    }
}

static qbk_kv *cuda_kv_alloc(qbackend *be, int n_layers, int n_kv_heads, int n_ctx, int head_dim,
                             qdtype dt, qerr *err)
{
    if (n_layers <= 0 || n_kv_heads <= 0 || n_ctx <= 0 || head_dim <= 0 || n_ctx > be->n_ctx ||
        (dt != QDT_F16 && dt != QDT_F32)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "cuda backend: bad KV cache parameters");
        return NULL;
    }
    uint64_t es = dt == QDT_F16 ? 2 : 4;
    uint64_t per = (uint64_t)n_kv_heads * (uint64_t)n_ctx * (uint64_t)head_dim * es;
    uint64_t total = per * 2u * (uint64_t)n_layers;
    if (total / 2u / (uint64_t)n_layers != per || total > (uint64_t)SIZE_MAX) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "KV cache size overflows");
        return NULL;
    }
    qbk_kv *kv = calloc(1, sizeof *kv);
    if (kv)
        kv->layers = calloc((size_t)n_layers, sizeof *kv->layers);
    if (!kv || !kv->layers) {
        free(kv);
        qerr_set(err, QRUN_ERR_NO_MEMORY, "cuda backend: out of memory");
        return NULL;
    }
    if (!dev_alloc(&kv->mem, (size_t)total, "the KV cache", err) ||
        !qk_ok(cudaMemsetAsync(kv->mem, 0, (size_t)total, be->stream), "cuda backend: memset",
               err)) {
        if (kv->mem)
            cudaFree(kv->mem);
        free(kv->layers);
        free(kv);
        return NULL;
    }
    kv->n_layers = n_layers;
    for (int l = 0; l < n_layers; l++) {
        qk_kv_layer *c = &kv->layers[l];
        c->k = (char *)kv->mem + (size_t)per * (size_t)(2 * l);
        c->v = (char *)kv->mem + (size_t)per * (size_t)(2 * l + 1);
        c->dtype = dt;
        c->n_kv_heads = n_kv_heads;
        c->n_ctx = n_ctx;
        c->head_dim = head_dim;
    }
    return kv;
}

static void cuda_kv_free(qbackend *be, qbk_kv *kv)
{
    (void)be;
    if (kv) {
        cudaFree(kv->mem);
        free(kv->layers);
        free(kv);
    }
}

/* ---- the step ------------------------------------------------------------------------ */

static bool cuda_begin_step(qbackend *be, const int32_t *ids, int n, int p0, qerr *err)
{
    if (!take_sticky(be, err))
        return false;
    if (n <= 0 || n > be->max_rows || p0 < 0 || !ids)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "cuda backend: step of %d tokens at %d "
                        "(at most %d)", n, p0, be->max_rows) == QRUN_OK;
    /* the previous step's copy may still be reading the pinned buffer */
    if (!qk_ok(cudaEventSynchronize(be->step_copied), "cuda backend: step", err))
        return false;
    be->h_step->p0 = p0;
    be->h_step->n = n;
    memcpy(be->h_step->ids, ids, (size_t)n * sizeof *ids);
    size_t bytes = sizeof(qk_step) + (size_t)n * sizeof(int32_t);
    if (!qk_ok(cudaMemcpyAsync(be->d_step, be->h_step, bytes, cudaMemcpyHostToDevice, be->stream),
               "cuda backend: step upload", err) ||
        !qk_ok(cudaEventRecord(be->step_copied, be->stream), "cuda backend: step", err))
        return false;
    be->have_step = true;
    return true;
}

/* ---- small tables --------------------------------------------------------------------- */

/* The slot holding `key`, or a free one claimed for it; NULL when full. */
static table_slot *slot_for(table_slot *slots, int n_slots, const void *key)
{
    for (int i = 0; i < n_slots; i++)
        if (slots[i].key == key)
            return &slots[i];
    for (int i = 0; i < n_slots; i++)
        if (!slots[i].key) {
            slots[i].key = key;
            slots[i].valid = false;
            return &slots[i];
        }
    return NULL;
}

/* Make the slot's device copy hold vals[0..n): upload when it differs from
 * what it holds. Returns the device table, or NULL (error recorded, or the
 * capture in progress marked broken: an upload is not graph-safe because a
 * replay would not repeat it). */
static const float *slot_set(qbackend *be, table_slot *s, const float *vals, int n)
{
    if (s->valid && s->n == n && memcmp(s->shadow, vals, (size_t)n * sizeof *vals) == 0)
        return s->dev;
    if (be->capturing) {
        be->capture_broken = true;
        return NULL;
    }
    qerr e;
    qerr_clear(&e);
    if (!qk_ok(cudaEventSynchronize(s->copied), "cuda backend: table upload", &e)) {
        stick(be, &e);
        return NULL;
    }
    memcpy(s->pinned, vals, (size_t)n * sizeof *vals);
    if (!qk_ok(cudaMemcpyAsync(s->dev, s->pinned, (size_t)n * sizeof *vals,
                               cudaMemcpyHostToDevice, be->stream),
               "cuda backend: table upload", &e) ||
        !qk_ok(cudaEventRecord(s->copied, be->stream), "cuda backend: table upload", &e)) {
        s->valid = false;
        stick(be, &e);
        return NULL;
    }
    memcpy(s->shadow, vals, (size_t)n * sizeof *vals);
    s->n = n;
    s->valid = true;
    return s->dev;
}

/* ---- ops ------------------------------------------------------------------------------- */

static void cuda_embed(qbackend *be, const void *table, qdtype table_dt, int dim,
                       const int32_t *ids, int n, qbk_buf *out)
{
    (void)ids; /* the step's ids (begin_step) */
    if (be->failed)
        return;
    const void *dt;
    qerr e;
    qerr_clear(&e);
    if (!be->have_step) {
        stick_msg(be, QRUN_ERR_INTERNAL, "embed before begin_step");
        return;
    }
    if (!dev_ptr(be, table, &dt, "embedding table", &e)) {
        stick(be, &e);
        return;
    }
    RUN(be, qk_embed(dt, table_dt, dim, be->d_step, n, be->act, out->d, be->stream, &e_));
}

/* l's weight and bias with device pointers. */
static bool dev_linear(qbackend *be, const qbk_linear *l, qweight *w, const void **bias,
                       qerr *err)
{
    *w = l->w;
    const void *data, *absmax, *qabsmax, *absmax2, *dq_map, *scb;
    if (!dev_ptr(be, l->w.data, &data, "weight", err) ||
        !dev_ptr(be, l->w.absmax, &absmax, "weight's absmax", err) ||
        !dev_ptr(be, l->w.qabsmax, &qabsmax, "weight's qabsmax", err) ||
        !dev_ptr(be, l->w.absmax2, &absmax2, "weight's absmax2", err) ||
        !dev_ptr(be, l->w.dq_map, &dq_map, "dynamic map", err) ||
        !dev_ptr(be, l->w.scb, &scb, "weight's row scales", err) ||
        !dev_ptr(be, l->bias, bias, "bias", err))
        return false;
    w->data = data;
    w->absmax = absmax;
    w->qabsmax = qabsmax;
    w->absmax2 = absmax2;
    w->dq_map = dq_map;
    w->scb = scb;
    return true;
}

static bool cuda_matmul(qbackend *be, const qbk_linear *l, const qbk_buf *x, int n, qbk_buf *y,
                        qerr *err)
{
    if (!take_sticky(be, err))
        return false;
    qweight w;
    const void *bias;
    if (!dev_linear(be, l, &w, &bias, err))
        return false;
    return qk_matmul(be->blas, &w, x->d, n, be->compute, l->bias_dt, bias, be->act, y->d, err);
}

static bool cuda_matmul_multi(qbackend *be, const qbk_linear *const *ls, int count,
                              const qbk_buf *x, int n, const qbk_post *posts, qbk_buf *const *ys,
                              qerr *err)
{
    if (!take_sticky(be, err))
        return false;
    if (count < 1 || count > QBK_MATMUL_MAX_MULTI)
        return qerr_set(err, QRUN_ERR_INTERNAL, "matmul_multi: %d products", count) == QRUN_OK;
    qweight w[QBK_MATMUL_MAX_MULTI];
    const qweight *wp[QBK_MATMUL_MAX_MULTI];
    const void *bias[QBK_MATMUL_MAX_MULTI];
    qdtype bias_dt[QBK_MATMUL_MAX_MULTI];
    float *y[QBK_MATMUL_MAX_MULTI];
    qk_mm_post post[QBK_MATMUL_MAX_MULTI];
    for (int i = 0; i < count; i++) {
        if (!dev_linear(be, ls[i], &w[i], &bias[i], err))
            return false;
        wp[i] = &w[i];
        bias_dt[i] = ls[i]->bias_dt;
        y[i] = ys[i]->d;
        post[i].gelu = posts && posts[i].gelu;
        post[i].add = posts && posts[i].add ? posts[i].add->d : NULL;
    }
    return qk_matmul_multi(be->blas, wp, count, x->d, n, be->compute, bias_dt, bias, be->act, post,
                           y, err);
}

/* y = norm(x), after x = x + t when t is given (the kernels write x back
 * only then). */
static void run_norm(qbackend *be, const qbk_norm *nm, float *x, const float *t, int n, int dim,
                     float *y)
{
    if (be->failed)
        return;
    const void *w, *b;
    qerr e;
    qerr_clear(&e);
    if (!dev_ptr(be, nm->w, &w, "norm weight", &e) || !dev_ptr(be, nm->b, &b, "norm bias", &e)) {
        stick(be, &e);
        return;
    }
    if (nm->kind == QBK_RMSNORM)
        RUN(be, qk_add_rmsnorm(x, t, y, n, dim, w, nm->dt, nm->eps, be->act, be->stream, &e_));
    else
        RUN(be, qk_add_layernorm(x, t, y, n, dim, w, b, nm->dt, nm->eps, be->act, be->stream,
                                 &e_));
}

static void cuda_norm(qbackend *be, const qbk_norm *nm, const qbk_buf *x, int n, qbk_buf *y)
{
    run_norm(be, nm, x->d, NULL, n, x->cols, y->d);
}

static void cuda_add_norm(qbackend *be, const qbk_norm *nm, qbk_buf *x, const qbk_buf *t, int n,
                          qbk_buf *y)
{
    run_norm(be, nm, x->d, t->d, n, x->cols, y->d);
}

static void cuda_qkv_split(qbackend *be, qbk_qkv_layout layout, const qbk_buf *qkv, int n,
                           int n_heads, int n_kv_heads, int head_dim, qbk_buf *q, qbk_buf *k,
                           qbk_buf *v)
{
    RUN(be, qk_qkv_split((int)layout, qkv->d, n, n_heads, n_kv_heads, head_dim, q->d, k->d, v->d,
                         be->stream, &e_));
}

/* The device inverse-frequency table of r for a call of length seq_len,
 * NULL when an error was recorded or the capture is being abandoned. */
static const float *rope_table_for(qbackend *be, const qrope *r, int64_t seq_len)
{
    if (be->failed)
        return NULL;
    table_slot *s = slot_for(be->rope, be->n_slots, r);
    if (!s) {
        stick_msg(be, QRUN_ERR_INTERNAL, "more rotary tables than slots");
        return NULL;
    }
    const int half = r->p.head_dim / 2;
    if (r->p.type == QROPE_DYNAMIC) {
        /* the base follows the call's length: recomputed per call, uploaded
         * when it changed, and never part of a graph (a replay would keep
         * the captured table) */
        float f[ROPE_SLOT_FLOATS];
        qrope_inv_freq(r, seq_len, f);
        if (be->capturing) {
            be->capture_broken = true;
            return NULL;
        }
        return slot_set(be, s, f, half);
    }
    return slot_set(be, s, r->inv_freq, half);
}

static void cuda_rope(qbackend *be, const qrope *r, int64_t seq_len, qbk_buf *x, int n,
                      int n_heads, int p0)
{
    (void)p0; /* positions from the step */
    const float *inv = rope_table_for(be, r, seq_len);
    if (!inv)
        return; /* error recorded or capture abandoned */
    RUN(be, qk_rope(inv, r->attention_scaling, r->p.head_dim, x->d, x->cols, n, n_heads,
                    be->d_step, be->act, be->stream, &e_));
}

static void cuda_rope_store(qbackend *be, const qrope *r, int64_t seq_len, qbk_buf *q,
                            qbk_buf *k, const qbk_buf *v, int n, int n_heads, int n_kv_heads,
                            int p0, qbk_kv *kv, int layer)
{
    (void)p0;
    if (!be->failed && (layer < 0 || layer >= kv->n_layers ||
                        kv->layers[layer].n_kv_heads != n_kv_heads)) {
        stick_msg(be, QRUN_ERR_INTERNAL, "rope_store: layer or KV heads out of range");
        return;
    }
    const float *inv = rope_table_for(be, r, seq_len);
    if (!inv)
        return;
    RUN(be, qk_rope_store(inv, r->attention_scaling, r->p.head_dim, q->d, q->cols, n_heads, k->d,
                          k->cols, v->d, v->cols, n, be->d_step, be->act, &kv->layers[layer],
                          be->stream, &e_));
}

static void cuda_kv_store(qbackend *be, qbk_kv *kv, int layer, int p0, int n, const qbk_buf *k,
                          const qbk_buf *v)
{
    (void)p0;
    if (!be->failed && (layer < 0 || layer >= kv->n_layers)) {
        stick_msg(be, QRUN_ERR_INTERNAL, "kv_store: layer out of range");
        return;
    }
    RUN(be, qk_kv_store(&kv->layers[layer], be->d_step, n, k->d, k->cols, v->d, v->cols,
                        be->stream, &e_));
}

static void cuda_attention(qbackend *be, qbk_kv *kv, int layer, const qbk_buf *q, int n, int p0,
                           int n_heads, const float *alibi_slopes, qbk_buf *out)
{
    (void)p0;
    if (be->failed)
        return;
    if (layer < 0 || layer >= kv->n_layers || n_heads > be->n_heads) {
        stick_msg(be, QRUN_ERR_INTERNAL, "attention: layer or head count out of range");
        return;
    }
    const float *slopes = NULL;
    if (alibi_slopes) {
        table_slot *s = slot_for(be->alibi, be->n_slots, alibi_slopes);
        if (!s) {
            stick_msg(be, QRUN_ERR_INTERNAL, "more ALiBi tables than slots");
            return;
        }
        if (!(slopes = slot_set(be, s, alibi_slopes, n_heads)))
            return;
    }
    qk_attn_args a = {
        .q = q->d, .ld_q = q->cols, .out = out->d, .ld_out = out->cols, .n = n,
        .step = be->d_step, .n_heads = n_heads, .kv = &kv->layers[layer],
        .alibi_slopes = slopes, .act = be->act, .scratch = be->attn_scratch,
        .scratch_size = be->attn_scratch_size,
    };
    RUN(be, qk_attention(&a, be->stream, &e_));
}

static void cuda_swiglu(qbackend *be, const qbk_buf *gate, const qbk_buf *up, int n,
                        qbk_buf *out)
{
    RUN(be, qk_swiglu(out->d, gate->d, up->d, (size_t)n * (size_t)out->cols, be->act, be->stream,
                      &e_));
}

static void cuda_gelu(qbackend *be, qbk_buf *x, int n)
{
    RUN(be, qk_gelu(x->d, x->d, (size_t)n * (size_t)x->cols, be->act, be->stream, &e_));
}

static void cuda_add(qbackend *be, const qbk_buf *a, const qbk_buf *b, int n, qbk_buf *out)
{
    RUN(be, qk_add(out->d, a->d, b->d, (size_t)n * (size_t)out->cols, be->act, be->stream, &e_));
}

static void cuda_copy_rows(qbackend *be, const qbk_buf *src, int src_row, qbk_buf *dst,
                           int dst_row, int n)
{
    /* same width: the rows are one contiguous block on both sides */
    RUN(be, qk_ok(cudaMemcpyAsync(dst->d + (size_t)dst_row * (size_t)dst->cols,
                                  src->d + (size_t)src_row * (size_t)src->cols,
                                  (size_t)n * (size_t)src->cols * sizeof(float),
                                  cudaMemcpyDeviceToDevice, be->stream),
                  "cuda backend: copy_rows", &e_));
}

static bool cuda_sync(qbackend *be, qerr *err)
{
    qerr e;
    qerr_clear(&e);
    if (!qk_ok(cudaStreamSynchronize(be->stream), "cuda backend: stream", &e))
        stick(be, &e);
    return take_sticky(be, err);
}

static bool cuda_to_host(qbackend *be, const qbk_buf *b, int n, float *host, qerr *err)
{
    if (!take_sticky(be, err))
        return false;
    if (!qk_ok(cudaMemcpyAsync(host, b->d, (size_t)n * (size_t)b->cols * sizeof(float),
                               cudaMemcpyDeviceToHost, be->stream),
               "cuda backend: copy to the host", err))
        return false;
    return cuda_sync(be, err);
}

static bool cuda_from_host(qbackend *be, const float *host, int n, qbk_buf *b, qerr *err)
{
    if (!take_sticky(be, err))
        return false;
    return qk_ok(cudaMemcpyAsync(b->d, host, (size_t)n * (size_t)b->cols * sizeof(float),
                                 cudaMemcpyHostToDevice, be->stream),
                 "cuda backend: copy to the device", err);
}

static bool cuda_sample(qbackend *be, const qbk_buf *logits, int row,
                        const qbk_sample_params *p, const int32_t *recent, int n_recent,
                        uint64_t draw, int32_t *id, qerr *err)
{
    *id = -1;
    if (!take_sticky(be, err))
        return false;
    if (be->smp_vocab <= 0 || logits->cols != be->smp_vocab || row < 0 || row >= logits->rows ||
        n_recent < 0 || n_recent > be->smp_window || (n_recent > 0 && !recent))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "cuda backend: sample: %d logits, "
                        "window %d (set up for %d, %d)", logits->cols, n_recent, be->smp_vocab,
                        be->smp_window) == QRUN_OK;
    if (n_recent > 0) {
        /* the previous window's copy may still be reading the pinned buffer */
        if (!qk_ok(cudaEventSynchronize(be->recent_copied), "cuda backend: sample", err))
            return false;
        memcpy(be->h_recent, recent, (size_t)n_recent * sizeof *recent);
        if (!qk_ok(cudaMemcpyAsync(be->d_recent, be->h_recent,
                                   (size_t)n_recent * sizeof *recent, cudaMemcpyHostToDevice,
                                   be->stream),
                   "cuda backend: penalty window upload", err) ||
            !qk_ok(cudaEventRecord(be->recent_copied, be->stream), "cuda backend: sample", err))
            return false;
    }
    qk_sample_params kp = {p->temperature, p->top_k, p->top_p, p->min_p, p->repeat_penalty};
    if (!qk_sample(logits->d + (size_t)row * (size_t)logits->cols, logits->cols, &kp,
                   be->d_recent, n_recent, draw, be->smp_scratch, be->smp_scratch_size, be->d_id,
                   be->stream, err) ||
        !qk_ok(cudaMemcpyAsync(be->h_id, be->d_id, sizeof(int32_t), cudaMemcpyDeviceToHost,
                               be->stream),
               "cuda backend: sampled id", err) ||
        !cuda_sync(be, err))
        return false;
    *id = *be->h_id;
    return true;
}

/* ---- graphs ----------------------------------------------------------------------------- */

static bool cuda_capture_begin(qbackend *be, qerr *err)
{
    if (!take_sticky(be, err))
        return false;
    if (!qk_ok(cudaStreamBeginCapture(be->stream, cudaStreamCaptureModeThreadLocal),
               "cuda backend: cudaStreamBeginCapture", err))
        return false;
    be->capturing = true;
    be->capture_broken = false;
    return true;
}

static qbk_graph *cuda_capture_end(qbackend *be, qerr *err)
{
    (void)err;
    if (!be->capturing)
        return NULL;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(be->stream, &graph);
    be->capturing = false;
    bool usable = e == cudaSuccess && graph && !be->capture_broken && !be->failed;
    /* whatever failed while recording is retried eagerly by the caller,
     * where a real error shows again */
    (void)cudaGetLastError();
    be->failed = false;
    qerr_clear(&be->sticky);
    qbk_graph *g = NULL;
    if (usable) {
        cudaGraphExec_t exec = NULL;
        if (cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess) {
            g = malloc(sizeof *g);
            if (g)
                g->exec = exec;
            else
                cudaGraphExecDestroy(exec);
        }
        (void)cudaGetLastError();
    }
    if (graph)
        cudaGraphDestroy(graph);
    return g;
}

static bool cuda_graph_launch(qbackend *be, qbk_graph *g, qerr *err)
{
    if (!take_sticky(be, err))
        return false;
    return qk_ok(cudaGraphLaunch(g->exec, be->stream), "cuda backend: cudaGraphLaunch", err);
}

static void cuda_graph_free(qbackend *be, qbk_graph *g)
{
    (void)be;
    if (g) {
        cudaGraphExecDestroy(g->exec);
        free(g);
    }
}

const qbackend_ops qbackend_cuda = {
    .name = "cuda",
    .create = cuda_create,
    .destroy = cuda_destroy,
    .buf_alloc = cuda_buf_alloc,
    .buf_free = cuda_buf_free,
    .kv_alloc = cuda_kv_alloc,
    .kv_free = cuda_kv_free,
    .begin_step = cuda_begin_step,
    .embed = cuda_embed,
    .matmul = cuda_matmul,
    .norm = cuda_norm,
    .qkv_split = cuda_qkv_split,
    .rope = cuda_rope,
    .kv_store = cuda_kv_store,
    .attention = cuda_attention,
    .swiglu = cuda_swiglu,
    .gelu = cuda_gelu,
    .add = cuda_add,
    .add_norm = cuda_add_norm,
    .rope_store = cuda_rope_store,
    .matmul_multi = cuda_matmul_multi,
    .copy_rows = cuda_copy_rows,
    .to_host = cuda_to_host,
    .from_host = cuda_from_host,
    .sync = cuda_sync,
    .capture_begin = cuda_capture_begin,
    .capture_end = cuda_capture_end,
    .graph_launch = cuda_graph_launch,
    .graph_free = cuda_graph_free,
    .sample = cuda_sample,
};
