/* CPU backend ops: embedding, norms, rotary, ALiBi, KV cache, attention and
 * element-wise activations. See ops.h for the contract of each.
 *
 * Numerics follow Hugging Face transformers 5 op by op (the torch CPU
 * kernels they end in): each rounding HF makes in f32 or in the activation
 * dtype is made here at the same place. Inner loops are written so GCC can
 * vectorize them without -ffast-math (independent partial sums instead of a
 * single serial reduction), and the order of every sum is fixed, so a result
 * never depends on the thread count. This file relies on C11's default
 * -ffp-contract=off (no fused multiply-add where HF rounds twice). */
#include "cpu/ops.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* M_PI is not in strict C11 */
#define OPS_PI 3.14159265358979323846
#define OPS_SQRT1_2 0.70710678118654752440

/* ---- scalar conversions ------------------------------------------------- */

static inline float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* f16 -> f32 without a branch per class so loops over a row vectorize:
 * shifting the exponent/mantissa into place and scaling by 2^112 rebases
 * the exponent and turns subnormals into normals exactly; inf/NaN get the
 * all-ones exponent back. */
static inline float f16_to_f32(uint16_t h)
{
    uint32_t mag = (uint32_t)(h & 0x7fffu) << 13;
    float f = bits_to_f32(mag) * 0x1p112f;
    uint32_t u = f32_to_bits(f);
    if ((h & 0x7c00u) == 0x7c00u)
        u = mag | 0x7f800000u;
    return bits_to_f32(u | ((uint32_t)(h & 0x8000u) << 16));
}

static inline float bf16_to_f32(uint16_t b) { return bits_to_f32((uint32_t)b << 16); }

/* f32 -> nearest-even bf16 -> f32, NaN kept a NaN. */
static inline float round_bf16(float x)
{
    uint32_t u = f32_to_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return x;
    u += 0x7fffu + ((u >> 16) & 1u);
    return bits_to_f32(u & 0xffff0000u);
}

static inline float round_f16(float x) { return qf16_to_f32(qf32_to_f16(x)); }

static inline float round_act(float x, qdtype act)
{
    if (act == QDT_BF16)
        return round_bf16(x);
    if (act == QDT_F16)
        return round_f16(x);
    return x;
}

float cpu_round_act(float x, qdtype act) { return round_act(x, act); }

/* Element i of a [n] vector of f32/f16/bf16. */
static inline float load_elem(const void *p, qdtype dt, size_t i)
{
    if (dt == QDT_F16)
        return f16_to_f32(((const uint16_t *)p)[i]);
    if (dt == QDT_BF16)
        return bf16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

static void load_row(const void *p, qdtype dt, size_t first, int n, float *out)
{
    if (dt == QDT_F16) {
        const uint16_t *s = (const uint16_t *)p + first;
        for (int i = 0; i < n; i++)
            out[i] = f16_to_f32(s[i]);
    } else if (dt == QDT_BF16) {
        const uint16_t *s = (const uint16_t *)p + first;
        for (int i = 0; i < n; i++)
            out[i] = bf16_to_f32(s[i]);
    } else {
        memcpy(out, (const float *)p + first, (size_t)n * sizeof *out);
    }
}

/* ---- parallel-for over independent items -------------------------------- */

typedef void (*range_fn)(void *ctx, size_t begin, size_t end);

typedef struct range_job {
    range_fn fn;
    void *ctx;
    size_t n, per;
} range_job;

static void range_task(void *c, int task, int n_tasks)
{
    (void)n_tasks;
    const range_job *j = c;
    size_t b = (size_t)task * j->per;
    size_t e = b + j->per < j->n ? b + j->per : j->n;
    j->fn(j->ctx, b, e);
}

/* Items are independent, so how they are split changes nothing in the
 * results; `grain` keeps tiny jobs on the calling thread. */
static void parallel_for(qthreads *pool, size_t n, size_t grain, range_fn fn, void *ctx)
{
    int threads = qthreads_count(pool);
    if (n == 0)
        return;
    if (threads <= 1 || n <= grain) {
        fn(ctx, 0, n);
        return;
    }
    size_t tasks = (n + grain - 1) / grain;
    size_t cap = (size_t)threads * 4; /* a few per thread so uneven ones balance */
    if (tasks > cap)
        tasks = cap;
    range_job job = {.fn = fn, .ctx = ctx, .n = n, .per = (n + tasks - 1) / tasks};
    tasks = (n + job.per - 1) / job.per;
    qthreads_run(pool, (int)tasks, range_task, &job);
}

/* Sum of x[i]*y[i] with 8 independent partial sums (vectorizable) added in a
 * fixed order. */
static inline float dot_f32(const float *x, const float *y, int n)
{
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++)
            s[u] += x[i + u] * y[i + u];
    for (int u = 0; i < n; i++, u++)
        s[u] += x[i] * y[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static inline float sum_f32(const float *x, int n)
{
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++)
            s[u] += x[i + u];
    for (int u = 0; i < n; i++, u++)
        s[u] += x[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* ---- embedding ---------------------------------------------------------- */

void cpu_embed(const void *table, qdtype table_dt, int dim, const int32_t *ids, int n_tokens,
               float *out)
{
    for (int t = 0; t < n_tokens; t++)
        load_row(table, table_dt, (size_t)ids[t] * (size_t)dim, dim, out + (size_t)t * (size_t)dim);
}

/* ---- norms -------------------------------------------------------------- */

typedef struct norm_ctx {
    const float *x;
    float *y;
    int dim;
    const void *w, *b;
    qdtype w_dt, act;
    float eps;
} norm_ctx;

static void rmsnorm_rows(void *c, size_t r0, size_t r1)
{
    const norm_ctx *k = c;
    int dim = k->dim;
    /* torch promotes weight * hidden to f32 unless both have the same dtype */
    qdtype prod_dt = k->w_dt == k->act ? k->act : QDT_F32;
    for (size_t r = r0; r < r1; r++) {
        const float *x = k->x + r * (size_t)dim;
        float *y = k->y + r * (size_t)dim;
        float var = dot_f32(x, x, dim) / (float)dim;
        float rs = 1.0f / sqrtf(var + k->eps);
        for (int i = 0; i < dim; i++) {
            float h = round_act(x[i] * rs, k->act);
            y[i] = round_act(load_elem(k->w, k->w_dt, (size_t)i) * h, prod_dt);
        }
    }
}

void cpu_rmsnorm(qthreads *pool, const float *x, float *y, int n_rows, int dim, const void *w,
                 qdtype w_dt, float eps, qdtype act)
{
    norm_ctx c = {.x = x, .y = y, .dim = dim, .w = w, .w_dt = w_dt, .act = act, .eps = eps};
    parallel_for(pool, (size_t)n_rows, 1, rmsnorm_rows, &c);
}

static void layernorm_rows(void *c, size_t r0, size_t r1)
{
    const norm_ctx *k = c;
    int dim = k->dim;
    for (size_t r = r0; r < r1; r++) {
        const float *x = k->x + r * (size_t)dim;
        float *y = k->y + r * (size_t)dim;
        /* two passes (mean, then squared deviations) rather than E[x^2] -
         * mean^2, which cancels badly for rows with a large mean */
        float mean = sum_f32(x, dim) / (float)dim;
        float s[8] = {0};
        int i = 0;
        for (; i + 8 <= dim; i += 8)
            for (int u = 0; u < 8; u++) {
                float d = x[i + u] - mean;
                s[u] += d * d;
            }
        for (int u = 0; i < dim; i++, u++) {
            float d = x[i] - mean;
            s[u] += d * d;
        }
        float var = (((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))) / (float)dim;
        float rstd = 1.0f / sqrtf(var + k->eps);
        float shift = -mean * rstd;
        for (i = 0; i < dim; i++) {
            float v = (x[i] * rstd + shift) * load_elem(k->w, k->w_dt, (size_t)i) +
                      load_elem(k->b, k->w_dt, (size_t)i);
            y[i] = round_act(v, k->act);
        }
    }
}

void cpu_layernorm(qthreads *pool, const float *x, float *y, int n_rows, int dim, const void *w,
                   const void *b, qdtype wb_dt, float eps, qdtype act)
{
    norm_ctx c = {.x = x, .y = y, .dim = dim, .w = w, .b = b, .w_dt = wb_dt, .act = act, .eps = eps};
    parallel_for(pool, (size_t)n_rows, 1, layernorm_rows, &c);
}

/* ---- rotary embeddings -------------------------------------------------- */

/* HF: inv_freq = 1.0 / (base ** (arange(0, D, 2).float() / D)): the exponent
 * is an f32 quotient, the power an f32 (base cast to f32), then an f32
 * reciprocal. The power is evaluated in double and rounded once, which is
 * the correctly rounded f32 result; torch's vectorized powf may differ by
 * an ulp (the fixtures bound it). */
static void base_inv_freq(float base_f, int head_dim, float *inv)
{
    for (int i = 0; i < head_dim / 2; i++) {
        float e = (float)(2 * i) / (float)head_dim;
        float pw = (float)pow((double)base_f, (double)e);
        inv[i] = 1.0f / pw;
    }
}

/* transformers' _compute_llama3_parameters, op by op in f32: torch evaluates
 * `scalar / tensor` as reciprocal(tensor) * scalar and casts the Python
 * scalars (2*pi, factors, wavelength bounds) to f32 before each op. */
static void llama3_rescale(const qrope_params *p, float *inv)
{
    float factor = (float)p->factor;
    double old = (double)p->original_max_position_embeddings;
    float low_wl = (float)(old / p->low_freq_factor);
    float high_wl = (float)(old / p->high_freq_factor);
    float two_pi = (float)(2.0 * OPS_PI);
    float old_f = (float)old;
    float low_ff = (float)p->low_freq_factor;
    float span = (float)(p->high_freq_factor - p->low_freq_factor);
    for (int i = 0; i < p->head_dim / 2; i++) {
        float f = inv[i];
        float wl = (1.0f / f) * two_pi;
        float fl = wl > low_wl ? f / factor : f;
        float smooth = ((1.0f / wl) * old_f - low_ff) / span;
        float smoothed = ((1.0f - smooth) * fl) / factor + smooth * fl;
        int medium = !(wl < high_wl) && !(wl > low_wl);
        inv[i] = medium ? smoothed : fl;
    }
}

qrun_status qrope_init(qrope *r, const qrope_params *p, qerr *err)
{
    memset(r, 0, sizeof *r);
    if (p->type == QROPE_NONE) {
        r->p = *p;
        r->attention_scaling = 1.0f;
        return QRUN_OK;
    }
    if (p->type < QROPE_DEFAULT || p->type > QROPE_LLAMA3)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "rope: unknown type %d", (int)p->type);
    if (p->head_dim < 2 || p->head_dim % 2 != 0 || p->head_dim > CPU_MAX_HEAD_DIM)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "rope: head_dim %d must be even and in [2, %d]", p->head_dim,
                        CPU_MAX_HEAD_DIM);
    if (!(p->theta > 0) || !isfinite(p->theta))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "rope: theta %g must be positive",
                        p->theta);
    if (p->type != QROPE_DEFAULT && (!(p->factor > 0) || !isfinite(p->factor)))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "rope: factor %g must be positive",
                        p->factor);
    if (p->type == QROPE_DYNAMIC && p->max_position_embeddings <= 0)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "rope: dynamic scaling needs max_position_embeddings > 0");
    if (p->type == QROPE_DYNAMIC && p->head_dim == 2)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "rope: dynamic scaling needs head_dim > 2 (exponent D/(D-2))");
    if (p->type == QROPE_LLAMA3 &&
        (p->original_max_position_embeddings <= 0 || !(p->low_freq_factor > 0) ||
         !(p->high_freq_factor > 0) || p->high_freq_factor == p->low_freq_factor))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "rope: llama3 needs original_max_position_embeddings > 0 and distinct "
                        "positive low_freq_factor (%g) and high_freq_factor (%g)",
                        p->low_freq_factor, p->high_freq_factor);
    r->p = *p;
    r->attention_scaling = 1.0f; /* HF's attention_factor for all four types */
    double base = p->theta;
    if (p->type == QROPE_DYNAMIC) {
        /* At construction HF calls the NTK formula with seq_len = None ->
         * max_position_embeddings, in Python doubles: the bracket is 1 up to
         * rounding, and any rounding is kept here too. */
        double mp = (double)p->max_position_embeddings;
        base = base * pow((p->factor * mp / mp) - (p->factor - 1.0),
                          (double)p->head_dim / (double)(p->head_dim - 2));
    }
    base_inv_freq((float)base, p->head_dim, r->inv_freq);
    if (p->type == QROPE_LINEAR) {
        float factor = (float)p->factor;
        for (int i = 0; i < p->head_dim / 2; i++)
            r->inv_freq[i] /= factor;
    } else if (p->type == QROPE_LLAMA3) {
        llama3_rescale(&r->p, r->inv_freq);
    }
    return QRUN_OK;
}

/* Dynamic NTK. HF (dynamic_rope_update) recomputes inv_freq at each forward
 * whose seq_len = max(position_ids) + 1 exceeds the length it last computed
 * for, and restores the construction-time frequencies when seq_len drops
 * below max_position_embeddings. Within one generation positions only grow,
 * so that is exactly "a function of this call's seq_len", which qrun uses
 * (stateless; HF keeps a grown base for a later shorter call that is still
 * >= max_position, a caching artefact not reproduced). Keys already in the
 * cache keep the rotation they were stored with, as in HF.
 * seq_len is a torch int64 tensor there, so the formula runs in f32 tensors:
 * f32(factor) * f32(seq_len), / f32(max_pos), - f32(factor - 1), then
 * pow(., D / (D - 2)) with the exponent kept a double (torch's
 * tensor ** python-float; checked against it for seq_len 65..5000: an f32
 * exponent is off by an ulp for half of them), rounded to f32,
 * f32(theta) * ., then base ** (2i/D) in f32. */
void qrope_inv_freq(const qrope *r, int64_t seq_len, float *inv_freq)
{
    int half = r->p.head_dim / 2;
    if (r->p.type != QROPE_DYNAMIC || seq_len <= r->p.max_position_embeddings) {
        memcpy(inv_freq, r->inv_freq, (size_t)half * sizeof *inv_freq);
        return;
    }
    const qrope_params *p = &r->p;
    float t = (float)p->factor * (float)seq_len;
    t = t / (float)p->max_position_embeddings;
    t = t - (float)(p->factor - 1.0);
    t = (float)pow((double)t, (double)p->head_dim / (double)(p->head_dim - 2));
    float base = (float)p->theta * t;
    base_inv_freq(base, p->head_dim, inv_freq);
}

typedef struct rope_ctx {
    const qrope *r;
    const float *inv;
    float *x;
    int ld, n_heads;
    const int32_t *pos;
    qdtype act;
} rope_ctx;

static void rope_rows(void *c, size_t t0, size_t t1)
{
    const rope_ctx *k = c;
    int d = k->r->p.head_dim, half = d / 2;
    float cs[CPU_MAX_HEAD_DIM / 2], sn[CPU_MAX_HEAD_DIM / 2];
    float scaling = k->r->attention_scaling;
    for (size_t t = t0; t < t1; t++) {
        float pf = (float)k->pos[t];
        for (int i = 0; i < half; i++) {
            float ang = pf * k->inv[i];
            /* cos/sin of the f32 angle, correctly rounded to f32, times
             * HF's attention_scaling (1.0), then cast to the act dtype */
            cs[i] = round_act((float)cos((double)ang) * scaling, k->act);
            sn[i] = round_act((float)sin((double)ang) * scaling, k->act);
        }
        float *row = k->x + t * (size_t)k->ld;
        for (int h = 0; h < k->n_heads; h++) {
            float *x1 = row + (size_t)h * (size_t)d, *x2 = x1 + half;
            for (int i = 0; i < half; i++) {
                float a = x1[i], b = x2[i];
                float y1 = round_act(a * cs[i], k->act) + round_act(-b * sn[i], k->act);
                float y2 = round_act(b * cs[i], k->act) + round_act(a * sn[i], k->act);
                x1[i] = round_act(y1, k->act);
                x2[i] = round_act(y2, k->act);
            }
        }
    }
}

void cpu_rope(qthreads *pool, const qrope *r, int64_t seq_len, float *x, int ld, int n_tokens,
              int n_heads, const int32_t *pos, qdtype act)
{
    if (r->p.type == QROPE_NONE || n_tokens <= 0)
        return;
    float inv[CPU_MAX_HEAD_DIM / 2];
    qrope_inv_freq(r, seq_len, inv);
    rope_ctx c = {.r = r, .inv = inv, .x = x, .ld = ld, .n_heads = n_heads, .pos = pos, .act = act};
    parallel_for(pool, (size_t)n_tokens, 2, rope_rows, &c);
}

/* ---- ALiBi -------------------------------------------------------------- */

/* transformers' build_alibi_tensor: p = 2^floor(log2 n); base =
 * 2^(-2^-(log2 p - 3)) as a Python double cast to an f32 tensor; slopes =
 * torch.pow(base, 1..p) in f32; the n - p extra heads use the base of 2p
 * with odd powers 1, 3, 5, .... */
void cpu_alibi_slopes(int n_heads, float *slopes)
{
    int p = 1;
    while (p * 2 <= n_heads)
        p *= 2;
    float base = (float)pow(2.0, -pow(2.0, -(log2((double)p) - 3.0)));
    for (int h = 0; h < p && h < n_heads; h++)
        slopes[h] = (float)pow((double)base, (double)(h + 1));
    float xbase = (float)pow(2.0, -pow(2.0, -(log2((double)(2 * p)) - 3.0)));
    for (int h = p; h < n_heads; h++)
        slopes[h] = (float)pow((double)xbase, (double)(2 * (h - p) + 1));
}

/* What transformers 5 (default sdpa attention) adds for key position j:
 *  - build_alibi_tensor: slopes.bfloat16() * arange (int64). torch casts
 *    both operands to the common dtype bf16 first, so j itself is rounded to
 *    bf16 (inexact above 256), and the product is rounded to bf16; then
 *    .to(activation dtype).
 *  - FalconModel folds it into the mask: alibi / math.sqrt(D), in the
 *    activation dtype; sdpa adds that mask to q.k * (1/sqrt(D)).
 * So the bias is scaled with the scores, as architectures.md says
 * ((q.k + alibi) / sqrt(D)), but with these roundings. (The eager path in
 * transformers 5 adds alibi to the raw scores and then again through the
 * mask — counted twice; qrun follows the default sdpa path.) */
float cpu_alibi_bias(float slope, int j, int head_dim, qdtype act)
{
    float a = round_bf16(round_bf16(slope) * round_bf16((float)j));
    a = round_act(a, act);
    return round_act(a / (float)sqrt((double)head_dim), act);
}

/* ---- KV cache ----------------------------------------------------------- */

typedef struct kvs_ctx {
    const cpu_kv_layer *kv;
    int p0;
    const float *k, *v;
    int ld_k, ld_v;
} kvs_ctx;

static void store_row(void *dst, qdtype dt, size_t off, const float *src, int n)
{
    if (dt == QDT_F16) {
        uint16_t *d = (uint16_t *)dst + off;
        for (int i = 0; i < n; i++)
            d[i] = qf32_to_f16(src[i]);
    } else {
        memcpy((float *)dst + off, src, (size_t)n * sizeof *src);
    }
}

static void kv_store_rows(void *c, size_t t0, size_t t1)
{
    const kvs_ctx *s = c;
    const cpu_kv_layer *kv = s->kv;
    int d = kv->head_dim;
    for (size_t t = t0; t < t1; t++) {
        size_t pos = (size_t)s->p0 + t;
        for (int g = 0; g < kv->n_kv_heads; g++) {
            size_t off = ((size_t)g * (size_t)kv->n_ctx + pos) * (size_t)d;
            store_row(kv->k, kv->dtype, off, s->k + t * (size_t)s->ld_k + (size_t)g * (size_t)d, d);
            store_row(kv->v, kv->dtype, off, s->v + t * (size_t)s->ld_v + (size_t)g * (size_t)d, d);
        }
    }
}

void cpu_kv_store(qthreads *pool, const cpu_kv_layer *kv, int p0, int n_tokens, const float *k,
                  int ld_k, const float *v, int ld_v)
{
    kvs_ctx c = {.kv = kv, .p0 = p0, .k = k, .v = v, .ld_k = ld_k, .ld_v = ld_v};
    parallel_for(pool, (size_t)n_tokens, 16, kv_store_rows, &c);
}

/* ---- attention ---------------------------------------------------------- */

/* Keys per chunk: a chunk of K and of V (converted to f32 when the cache is
 * f16) is about 32 KB each, so it stays in L1/L2 while every query token of
 * the task's block uses it. Chunk bounds are absolute positions depending
 * only on head_dim, which keeps decode and batched results identical. */
#define ATTN_CHUNK_FLOATS 8192
#define ATTN_MAX_CHUNK 256
/* Query tokens per task: they share each loaded chunk. */
#define ATTN_QBLOCK 8

static int attn_chunk_len(int head_dim)
{
    int c = ATTN_CHUNK_FLOATS / head_dim;
    return c > ATTN_MAX_CHUNK ? ATTN_MAX_CHUNK : c;
}

typedef struct attn_ctx {
    const cpu_attn_args *a;
    int n_blocks;
    float scale;
} attn_ctx;

static void attn_task(void *c, int task, int n_tasks)
{
    (void)n_tasks;
    const attn_ctx *x = c;
    const cpu_attn_args *a = x->a;
    const cpu_kv_layer *kv = a->kv;
    const int d = kv->head_dim;
    const int h = task / x->n_blocks;
    const int t0 = (task % x->n_blocks) * ATTN_QBLOCK;
    const int t1 = t0 + ATTN_QBLOCK < a->n_tokens ? t0 + ATTN_QBLOCK : a->n_tokens;
    const int nb = t1 - t0;
    const int g = h / (a->n_heads / kv->n_kv_heads);
    const int ch = attn_chunk_len(d);
    const size_t head_off = (size_t)g * (size_t)kv->n_ctx * (size_t)d;
    const int f16 = kv->dtype == QDT_F16;
    const float slope = a->alibi_slopes ? a->alibi_slopes[h] : 0.0f;

    float kbuf[ATTN_CHUNK_FLOATS], vbuf[ATTN_CHUNK_FLOATS];
    float acc[ATTN_QBLOCK][CPU_MAX_HEAD_DIM];
    float mx[ATTN_QBLOCK], den[ATTN_QBLOCK];
    float sc[ATTN_MAX_CHUNK];

    for (int b = 0; b < nb; b++) {
        mx[b] = -INFINITY;
        den[b] = 0.0f;
        memset(acc[b], 0, (size_t)d * sizeof(float));
    }
    const int last = a->p0 + t1 - 1; /* the block's furthest visible key */
    for (int c0 = 0; c0 <= last; c0 += ch) {
        int c1 = c0 + ch < last + 1 ? c0 + ch : last + 1;
        const float *kc, *vc;
        if (f16) {
            const uint16_t *ks = (const uint16_t *)kv->k + head_off + (size_t)c0 * (size_t)d;
            const uint16_t *vs = (const uint16_t *)kv->v + head_off + (size_t)c0 * (size_t)d;
            size_t cnt = (size_t)(c1 - c0) * (size_t)d;
            for (size_t i = 0; i < cnt; i++)
                kbuf[i] = f16_to_f32(ks[i]);
            for (size_t i = 0; i < cnt; i++)
                vbuf[i] = f16_to_f32(vs[i]);
            kc = kbuf;
            vc = vbuf;
        } else {
            kc = (const float *)kv->k + head_off + (size_t)c0 * (size_t)d;
            vc = (const float *)kv->v + head_off + (size_t)c0 * (size_t)d;
        }
        for (int b = 0; b < nb; b++) {
            int p = a->p0 + t0 + b;
            if (p < c0)
                continue;
            int e = c1 < p + 1 ? c1 : p + 1;
            int m = e - c0;
            const float *q = a->q + (size_t)(t0 + b) * (size_t)a->ld_q + (size_t)h * (size_t)d;
            float cmax = -INFINITY;
            for (int j = 0; j < m; j++) {
                float s = dot_f32(q, kc + (size_t)j * (size_t)d, d) * x->scale;
                if (a->alibi_slopes)
                    s += cpu_alibi_bias(slope, c0 + j, d, a->act);
                sc[j] = s;
                cmax = s > cmax ? s : cmax;
            }
            /* online softmax: rescale what earlier chunks accumulated to the
             * new running maximum (skipped on the first chunk: nothing yet) */
            float nm = cmax > mx[b] ? cmax : mx[b];
            if (mx[b] != -INFINITY && nm != mx[b]) {
                float corr = expf(mx[b] - nm);
                den[b] *= corr;
                for (int i = 0; i < d; i++)
                    acc[b][i] *= corr;
            }
            mx[b] = nm;
            float *ac = acc[b];
            for (int j = 0; j < m; j++) {
                float w = expf(sc[j] - nm);
                den[b] += w;
                const float *vr = vc + (size_t)j * (size_t)d;
                for (int i = 0; i < d; i++)
                    ac[i] += w * vr[i];
            }
        }
    }
    for (int b = 0; b < nb; b++) {
        float *o = a->out + (size_t)(t0 + b) * (size_t)a->ld_out + (size_t)h * (size_t)d;
        float inv = 1.0f / den[b];
        for (int i = 0; i < d; i++)
            o[i] = round_act(acc[b][i] * inv, a->act);
    }
}

void cpu_attention(qthreads *pool, const cpu_attn_args *a)
{
    if (a->n_tokens <= 0)
        return;
    attn_ctx c = {.a = a, .n_blocks = (a->n_tokens + ATTN_QBLOCK - 1) / ATTN_QBLOCK};
    /* HF: scaling = head_dim ** -0.5 (a double), used by sdpa in f32 */
    c.scale = (float)(1.0 / sqrt((double)a->kv->head_dim));
    qthreads_run(pool, a->n_heads * c.n_blocks, attn_task, &c);
}

/* ---- element-wise ------------------------------------------------------- */

/* Below this many elements a job stays on the calling thread. */
#define EW_GRAIN 16384

typedef struct ew_ctx {
    float *out;
    const float *a, *b;
    float s;
    qdtype act;
} ew_ctx;

static void swiglu_range(void *c, size_t i0, size_t i1)
{
    const ew_ctx *k = c;
    for (size_t i = i0; i < i1; i++) {
        float g = k->a[i];
        /* torch's silu: x / (1 + exp(-x)), rounded to the act dtype, then
         * the product with up rounded again */
        float s = round_act(g / (1.0f + expf(-g)), k->act);
        k->out[i] = round_act(s * k->b[i], k->act);
    }
}

void cpu_swiglu(qthreads *pool, float *out, const float *gate, const float *up, size_t n,
                qdtype act)
{
    ew_ctx c = {.out = out, .a = gate, .b = up, .act = act};
    parallel_for(pool, n, EW_GRAIN, swiglu_range, &c);
}

static void gelu_range(void *c, size_t i0, size_t i1)
{
    const ew_ctx *k = c;
    for (size_t i = i0; i < i1; i++) {
        float x = k->a[i];
        /* exact GELU, x/2 * (1 + erf(x/sqrt 2)) written with erfc: torch's
         * f32 1 + erf(.) cancels for x < -2 (relative error 1e-4 and worse
         * in the tail); erfc gives the same values to an ulp elsewhere and
         * stays within ~1e-7 of torch in absolute terms there */
        k->out[i] = round_act(0.5f * x * erfcf(-x * (float)OPS_SQRT1_2), k->act);
    }
}

void cpu_gelu(qthreads *pool, float *out, const float *x, size_t n, qdtype act)
{
    ew_ctx c = {.out = out, .a = x, .act = act};
    parallel_for(pool, n, EW_GRAIN, gelu_range, &c);
}

static void add_range(void *c, size_t i0, size_t i1)
{
    const ew_ctx *k = c;
    if (k->act == QDT_F32) {
        for (size_t i = i0; i < i1; i++)
            k->out[i] = k->a[i] + k->b[i];
    } else {
        for (size_t i = i0; i < i1; i++)
            k->out[i] = round_act(k->a[i] + k->b[i], k->act);
    }
}

void cpu_add(qthreads *pool, float *out, const float *a, const float *b, size_t n, qdtype act)
{
    ew_ctx c = {.out = out, .a = a, .b = b, .act = act};
    parallel_for(pool, n, 4 * EW_GRAIN, add_range, &c);
}

static void scale_range(void *c, size_t i0, size_t i1)
{
    const ew_ctx *k = c;
    if (k->s == 1.0f && k->act == QDT_F32) {
        if (k->out != k->a)
            memmove(k->out + i0, k->a + i0, (i1 - i0) * sizeof(float));
        return;
    }
    for (size_t i = i0; i < i1; i++)
        k->out[i] = round_act(k->a[i] * k->s, k->act);
}

void cpu_scale(qthreads *pool, float *out, const float *x, float s, size_t n, qdtype act)
{
    ew_ctx c = {.out = out, .a = x, .s = s, .act = act};
    parallel_for(pool, n, 4 * EW_GRAIN, scale_range, &c);
}
