/* The CPU implementation of src/backend.h: buffers are f32 host arrays, the
 * ops map onto src/cpu/ops.h and qmatmul (src/cpu/matmul.h), run on the
 * session's thread pool. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "cpu/threads.h"

struct qbackend {
    qthreads *pool;
    qdtype act, compute;
    int max_rows;
    void *scratch; /* qmatmul's int8 activation scratch */
    size_t scratch_size;
};

struct qbk_buf {
    float *data;
    int rows, cols;
};

struct qbk_kv {
    cpu_kv_layer *layers;
    int n_layers;
    void *mem;
};

static void cpu_destroy(qbackend *be)
{
    if (!be)
        return;
    qthreads_free(be->pool);
    free(be->scratch);
    free(be);
}

static qbackend *cpu_create(const qbackend_config *cfg, qerr *err)
{
    if (!cfg || cfg->max_rows <= 0 ||
        (cfg->act != QDT_F32 && cfg->act != QDT_F16 && cfg->act != QDT_BF16) ||
        (cfg->compute != QDT_F32 && cfg->compute != QDT_F16 && cfg->compute != QDT_BF16)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "cpu backend: bad configuration");
        return NULL;
    }
    qbackend *be = calloc(1, sizeof *be);
    if (!be) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "cpu backend: out of memory");
        return NULL;
    }
    be->act = cfg->act;
    be->compute = cfg->compute;
    be->max_rows = cfg->max_rows;
    be->pool = qthreads_create(cfg->n_threads, err);
    if (!be->pool) {
        free(be);
        return NULL;
    }
    if (cfg->matmul_scratch) {
        be->scratch = malloc(cfg->matmul_scratch);
        if (!be->scratch) {
            cpu_destroy(be);
            qerr_set(err, QRUN_ERR_NO_MEMORY, "cpu backend: out of memory (%zu bytes of scratch)",
                     cfg->matmul_scratch);
            return NULL;
        }
        be->scratch_size = cfg->matmul_scratch;
    }
    return be;
}

static qbk_buf *cpu_buf_alloc(qbackend *be, int rows, int cols, qerr *err)
{
    (void)be;
    if (rows <= 0 || cols <= 0) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "cpu backend: empty buffer %dx%d", rows, cols);
        return NULL;
    }
    qbk_buf *b = calloc(1, sizeof *b);
    size_t n = (size_t)rows * (size_t)cols;
    if (b && n / (size_t)cols == (size_t)rows && n <= SIZE_MAX / sizeof(float))
        b->data = calloc(n, sizeof(float));
    if (!b || !b->data) {
        free(b);
        qerr_set(err, QRUN_ERR_NO_MEMORY, "cpu backend: out of memory (buffer %dx%d)", rows, cols);
        return NULL;
    }
    b->rows = rows;
    b->cols = cols;
    return b;
}

static void cpu_buf_free(qbackend *be, qbk_buf *b)
{
    (void)be;
    if (b) {
        free(b->data);
        free(b);
    }
}

static qbk_kv *cpu_kv_alloc(qbackend *be, int n_layers, int n_kv_heads, int n_ctx, int head_dim,
                            qdtype dt, qerr *err)
{
    (void)be;
    if (n_layers <= 0 || n_kv_heads <= 0 || n_ctx <= 0 || head_dim <= 0 ||
        (dt != QDT_F16 && dt != QDT_F32)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "cpu backend: bad KV cache parameters");
        return NULL;
    }
    size_t es = dt == QDT_F16 ? 2 : 4;
    /* one layer's K (or V): n_kv_heads * n_ctx * head_dim elements */
    uint64_t per = (uint64_t)n_kv_heads * (uint64_t)n_ctx * (uint64_t)head_dim * es;
    uint64_t total = per * 2u * (uint64_t)n_layers;
    if (per / es / (uint64_t)head_dim / (uint64_t)n_ctx != (uint64_t)n_kv_heads ||
        total / 2u / (uint64_t)n_layers != per || total > (uint64_t)SIZE_MAX) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "KV cache size overflows");
        return NULL;
    }
    qbk_kv *kv = calloc(1, sizeof *kv);
    if (kv) {
        kv->layers = calloc((size_t)n_layers, sizeof *kv->layers);
        kv->mem = malloc((size_t)total);
    }
    if (!kv || !kv->layers || !kv->mem) {
        if (kv) {
            free(kv->layers);
            free(kv->mem);
        }
        free(kv);
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory for the KV cache (%llu bytes)",
                 (unsigned long long)total);
        return NULL;
    }
    kv->n_layers = n_layers;
    for (int l = 0; l < n_layers; l++) {
        cpu_kv_layer *c = &kv->layers[l];
        c->k = (char *)kv->mem + (size_t)per * (size_t)(2 * l);
        c->v = (char *)kv->mem + (size_t)per * (size_t)(2 * l + 1);
        c->dtype = dt;
        c->n_kv_heads = n_kv_heads;
        c->n_ctx = n_ctx;
        c->head_dim = head_dim;
    }
    return kv;
}

static void cpu_kv_free(qbackend *be, qbk_kv *kv)
{
    (void)be;
    if (kv) {
        free(kv->layers);
        free(kv->mem);
        free(kv);
    }
}

static void cpu_embed_op(qbackend *be, const void *table, qdtype table_dt, int dim,
                         const int32_t *ids, int n, qbk_buf *out)
{
    cpu_embed(table, table_dt, dim, ids, n, out->data);
    /* an f32 activation run of a bf16 table keeps the values; rounding to act
     * matters only if the table is wider than act */
    if (be->act != QDT_F32 && table_dt != be->act)
        qmatmul_round(be->act, out->data, (size_t)n * (size_t)dim);
}

static bool cpu_matmul(qbackend *be, const qbk_linear *l, const qbk_buf *x, int n, qbk_buf *y,
                       qerr *err)
{
    if (!qmatmul(&l->w, x->data, (uint64_t)n, be->compute, l->bias_dt, l->bias, y->data,
                 be->scratch, be->scratch_size, be->pool, err))
        return false;
    /* torch's Linear returns its input dtype: the f32 sum is rounded once */
    qmatmul_round(be->act, y->data, (size_t)n * (size_t)l->w.rows);
    return true;
}

static void cpu_norm(qbackend *be, const qbk_norm *nm, const qbk_buf *x, int n, qbk_buf *y)
{
    if (nm->kind == QBK_RMSNORM)
        cpu_rmsnorm(be->pool, x->data, y->data, n, x->cols, nm->w, nm->dt, nm->eps, be->act);
    else
        cpu_layernorm(be->pool, x->data, y->data, n, x->cols, nm->w, nm->b, nm->dt, nm->eps,
                      be->act);
}

static void cpu_qkv_split(qbackend *be, qbk_qkv_layout layout, const qbk_buf *qkv, int n,
                          int n_heads, int n_kv_heads, int head_dim, qbk_buf *q, qbk_buf *k,
                          qbk_buf *v)
{
    (void)be;
    const size_t D = (size_t)head_dim, hsz = D * sizeof(float);
    const int per_group = n_heads / n_kv_heads;
    for (int t = 0; t < n; t++) {
        const float *src = qkv->data + (size_t)t * (size_t)qkv->cols;
        float *qd = q->data + (size_t)t * (size_t)q->cols;
        float *kd = k->data + (size_t)t * (size_t)k->cols;
        float *vd = v->data + (size_t)t * (size_t)v->cols;
        switch (layout) {
        case QBK_QKV_GROUPED:
            for (int g = 0; g < n_kv_heads; g++) {
                const float *gs = src + (size_t)g * (size_t)(per_group + 2) * D;
                memcpy(qd + (size_t)g * (size_t)per_group * D, gs, (size_t)per_group * hsz);
                memcpy(kd + (size_t)g * D, gs + (size_t)per_group * D, hsz);
                memcpy(vd + (size_t)g * D, gs + (size_t)(per_group + 1) * D, hsz);
            }
            break;
        case QBK_QKV_MULTI_QUERY:
            memcpy(qd, src, (size_t)n_heads * hsz);
            memcpy(kd, src + (size_t)n_heads * D, (size_t)n_kv_heads * hsz);
            memcpy(vd, src + (size_t)(n_heads + n_kv_heads) * D, (size_t)n_kv_heads * hsz);
            break;
        case QBK_QKV_INTERLEAVED:
            for (int h = 0; h < n_heads; h++) {
                const float *hs = src + (size_t)h * 3u * D;
                memcpy(qd + (size_t)h * D, hs, hsz);
                memcpy(kd + (size_t)h * D, hs + D, hsz);
                memcpy(vd + (size_t)h * D, hs + 2u * D, hsz);
            }
            break;
        }
    }
}

static void cpu_rope_op(qbackend *be, const qrope *r, int64_t seq_len, qbk_buf *x, int n,
                        int n_heads, int p0)
{
    /* positions on the stack in pieces: ops need an array, the graph has
     * consecutive positions */
    int32_t pos[256];
    for (int t0 = 0; t0 < n; t0 += 256) {
        int m = n - t0 < 256 ? n - t0 : 256;
        for (int i = 0; i < m; i++)
            pos[i] = p0 + t0 + i;
        cpu_rope(be->pool, r, seq_len, x->data + (size_t)t0 * (size_t)x->cols, x->cols, m,
                 n_heads, pos, be->act);
    }
}

static void cpu_kv_store_op(qbackend *be, qbk_kv *kv, int layer, int p0, int n, const qbk_buf *k,
                            const qbk_buf *v)
{
    cpu_kv_store(be->pool, &kv->layers[layer], p0, n, k->data, k->cols, v->data, v->cols);
}

static void cpu_attention_op(qbackend *be, qbk_kv *kv, int layer, const qbk_buf *q, int n, int p0,
                             int n_heads, const float *alibi_slopes, qbk_buf *out)
{
    cpu_attn_args a = {
        .q = q->data, .ld_q = q->cols, .out = out->data, .ld_out = out->cols, .n_tokens = n,
        .p0 = p0, .n_heads = n_heads, .kv = &kv->layers[layer], .alibi_slopes = alibi_slopes,
        .act = be->act,
    };
    cpu_attention(be->pool, &a);
}

static void cpu_swiglu_op(qbackend *be, const qbk_buf *gate, const qbk_buf *up, int n,
                          qbk_buf *out)
{
    cpu_swiglu(be->pool, out->data, gate->data, up->data, (size_t)n * (size_t)out->cols, be->act);
}

static void cpu_gelu_op(qbackend *be, qbk_buf *x, int n)
{
    cpu_gelu(be->pool, x->data, x->data, (size_t)n * (size_t)x->cols, be->act);
}

static void cpu_add_op(qbackend *be, const qbk_buf *a, const qbk_buf *b, int n, qbk_buf *out)
{
    cpu_add(be->pool, out->data, a->data, b->data, (size_t)n * (size_t)out->cols, be->act);
}

static void cpu_copy_rows(qbackend *be, const qbk_buf *src, int src_row, qbk_buf *dst,
                          int dst_row, int n)
{
    (void)be;
    memmove(dst->data + (size_t)dst_row * (size_t)dst->cols,
            src->data + (size_t)src_row * (size_t)src->cols,
            (size_t)n * (size_t)src->cols * sizeof(float));
}

static bool cpu_to_host(qbackend *be, const qbk_buf *b, int n, float *host, qerr *err)
{
    (void)be, (void)err;
    memcpy(host, b->data, (size_t)n * (size_t)b->cols * sizeof(float));
    return true;
}

static bool cpu_from_host(qbackend *be, const float *host, int n, qbk_buf *b, qerr *err)
{
    (void)be, (void)err;
    memcpy(b->data, host, (size_t)n * (size_t)b->cols * sizeof(float));
    return true;
}

const qbackend_ops qbackend_cpu = {
    .name = "cpu",
    .create = cpu_create,
    .destroy = cpu_destroy,
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .kv_alloc = cpu_kv_alloc,
    .kv_free = cpu_kv_free,
    .embed = cpu_embed_op,
    .matmul = cpu_matmul,
    .norm = cpu_norm,
    .qkv_split = cpu_qkv_split,
    .rope = cpu_rope_op,
    .kv_store = cpu_kv_store_op,
    .attention = cpu_attention_op,
    .swiglu = cpu_swiglu_op,
    .gelu = cpu_gelu_op,
    .add = cpu_add_op,
    .copy_rows = cpu_copy_rows,
    .to_host = cpu_to_host,
    .from_host = cpu_from_host,
    /* synchronous: no begin_step, sync or graphs */
};
