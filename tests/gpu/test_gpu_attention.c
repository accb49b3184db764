/* GPU KV cache store and causal attention (src/kernels/attention.cu)
 * against their CPU references cpu_kv_store and cpu_attention on fresh
 * random q, k, v: f16 and f32 caches; act f32, f16, bf16; MHA, GQA (32/8,
 * 128/8, odd groups), MQA (71/1); ALiBi on and off; head_dim 36, 50 (no
 * 16-byte loads), 64, 80, 128, 256.
 *  - the store is bitwise cpu_kv_store, and cache positions it was not asked
 *    to write keep their NaN poison;
 *  - decode (n == 1, the split path) at positions 0, 1, 255, 256, 257, 1000,
 *    n_ctx - 1 of 2048- and 4096-position caches, the keys past the position
 *    still NaN (so reading one fails);
 *  - prefill (n in {2, 17, 128, 300}, p0 in {0, 5, 300}, and 96 tokens at the
 *    end of a 4096 cache): n = 2 takes the split path, and the tiled one
 *    when the scratch is left out; larger n the tiled path;
 *  - decoding each token over the cache a prefill filled gives the prefill's
 *    output;
 *  - one CUDA graph (store + attention) captured once serves every position;
 *  - bad arguments are refused with QRUN_ERR_DEVICE.
 * Outputs are NaN-poisoned before each call, and the padding columns of the
 * (odd) row strides must stay poisoned.
 *
 * Bound. Both sides compute the same f32 formula on the same cache values;
 * only the order of the f32 sums (dot products, softmax sums, the merge of
 * chunks) and expf's last-place error differ. A score's rounding is at most
 * FLT_EPSILON * S (S = max |score|, ALiBi bias included: scores near 450 at
 * long contexts have ulps of 3e-5), and a relative change e of a weight
 * moves the output by at most e * 2 max |V|; the normalizing sums add
 * relative errors far below 1e-5. So, per element,
 *   |gpu - cpu| <= 1e-5 max|ref| + (4 FLT_EPSILON S + 1e-6) max|V| + ulp_act(ref)
 * where ulp_act is 0 for act f32 and one ulp of the f16/bf16 output (the
 * rounding of two nearly equal f32 values can land on neighbours); f16/bf16
 * outputs must also be exactly representable in act. Decode vs prefill (two
 * GPU results) gets twice the bound. */
#include <cuda_runtime_api.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/ops.h"
#include "cpu/threads.h"
#include "cuda/device.h"
#include "kernels/attention.h"
#include "testutil.h"

static tu_rng rng;
static qthreads *pool;
/* What the running test saw, printed at its end so a log shows how close
 * to the bound the results come: the largest |gpu - base| / (k * tol) among
 * elements within the f32 part of the bound, and how many elements needed
 * the one-ulp allowance of an f16/bf16 output (those are expected: two
 * nearly equal f32 values rounded to neighbours). */
static double worst;
static long flips;
static struct timespec t_start;

static void setup(void)
{
    clock_gettime(CLOCK_MONOTONIC, &t_start);
    rng.s = tu_seed();
    pool = qthreads_create(0, NULL);
    ck_assert_ptr_nonnull(pool);
    worst = 0;
    flips = 0;
}

static void teardown(void) { qthreads_free(pool); }

static void report(const char *test)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double sec = (double)(t.tv_sec - t_start.tv_sec) + 1e-9 * (double)(t.tv_nsec - t_start.tv_nsec);
    fprintf(stderr, "%s: worst error / f32 bound %.3g, %ld one-ulp roundings (%.1f s)\n", test,
            worst, flips, sec);
}

static int quick(void)
{
    const char *q = getenv("QRUN_TEST_QUICK");
    return q && *q && strcmp(q, "0") != 0;
}

#define CK_CUDA(call)                                                                         \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        ck_assert_msg(e_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));            \
    } while (0)

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

static void *dmalloc(size_t n)
{
    void *p = NULL;
    CK_CUDA(cudaMalloc(&p, n ? n : 1));
    return p;
}

/* all-ones bytes: NaN as f32 and as f16 */
#define POISON 0xff

static int is_poison(const void *p, size_t n)
{
    static unsigned char ref[4096];
    if (ref[0] != POISON)
        memset(ref, POISON, sizeof ref);
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i += sizeof ref) {
        size_t m = n - i < sizeof ref ? n - i : sizeof ref;
        if (memcmp(b + i, ref, m) != 0)
            return 0;
    }
    return 1;
}

/* ---- one cache, its source rows, and the buffers of one head layout ------ */

typedef struct cfg {
    int n_heads, n_kv, d, n_ctx;
    qdtype kvdt, act;
    int alibi;
} cfg;

typedef struct actx {
    cfg c;
    int hd;          /* n_heads * d: one row of q / out */
    int kd;          /* n_kv * d: one row of k / v */
    int ld_src, ld_q, ld_out; /* odd strides; the padding is NaN */
    int max_n;
    size_t el, cache_bytes;
    void *hk, *hv;   /* CPU cache */
    cpu_kv_layer hkv;
    qk_kv_layer dkv; /* GPU cache */
    float *kall, *vall;   /* source rows of every position, [n_ctx][ld_src] */
    float *dkall, *dvall; /* the same on the device */
    float vmax;           /* max |v| of the source rows */
    float *slopes, *dslopes;
    qk_step *dstep;
    float *dq, *dout;     /* [max_n][ld_q], [max_n][ld_out] */
    void *dscratch;
    size_t scratch_size;
    int stored;           /* the caches hold positions [0, stored) */
    void *chk;            /* host copy of a GPU cache half */
} actx;

static void fill_rows(float *p, int rows, int cols, int ld, float scale)
{
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < cols; i++)
            p[(size_t)r * ld + i] = tu_normal(&rng) * scale;
        for (int i = cols; i < ld; i++)
            p[(size_t)r * ld + i] = NAN; /* stride padding: never read */
    }
}

static void set_step(actx *x, int p0, int n)
{
    qk_step s = {.p0 = p0, .n = n};
    CK_CUDA(cudaMemcpy(x->dstep, &s, sizeof s, cudaMemcpyHostToDevice));
}

static void reset_cache(actx *x)
{
    CK_CUDA(cudaMemset(x->dkv.k, POISON, x->cache_bytes));
    CK_CUDA(cudaMemset(x->dkv.v, POISON, x->cache_bytes));
    memset(x->hk, POISON, x->cache_bytes);
    memset(x->hv, POISON, x->cache_bytes);
    x->stored = 0;
}

static actx *actx_new(cfg c, int max_n)
{
    actx *x = xmalloc(sizeof *x);
    memset(x, 0, sizeof *x);
    x->c = c;
    x->hd = c.n_heads * c.d;
    x->kd = c.n_kv * c.d;
    x->ld_src = x->kd + 3;
    x->ld_q = x->hd + 5;
    x->ld_out = x->hd + 3;
    x->max_n = max_n;
    x->el = c.kvdt == QDT_F16 ? 2 : 4;
    x->cache_bytes = (size_t)c.n_kv * (size_t)c.n_ctx * (size_t)c.d * x->el;
    x->hk = xmalloc(x->cache_bytes);
    x->hv = xmalloc(x->cache_bytes);
    x->chk = xmalloc(x->cache_bytes);
    x->hkv = (cpu_kv_layer){.k = x->hk, .v = x->hv, .dtype = c.kvdt, .n_kv_heads = c.n_kv,
                            .n_ctx = c.n_ctx, .head_dim = c.d};
    x->dkv = (qk_kv_layer){.k = dmalloc(x->cache_bytes), .v = dmalloc(x->cache_bytes),
                           .dtype = c.kvdt, .n_kv_heads = c.n_kv, .n_ctx = c.n_ctx,
                           .head_dim = c.d};
    size_t src = (size_t)c.n_ctx * (size_t)x->ld_src;
    x->kall = xmalloc(src * sizeof(float));
    x->vall = xmalloc(src * sizeof(float));
    fill_rows(x->kall, c.n_ctx, x->kd, x->ld_src, 1.0f);
    fill_rows(x->vall, c.n_ctx, x->kd, x->ld_src, 1.0f);
    x->vmax = 0;
    for (int r = 0; r < c.n_ctx; r++)
        for (int i = 0; i < x->kd; i++)
            x->vmax = fmaxf(x->vmax, fabsf(x->vall[(size_t)r * x->ld_src + i]));
    x->dkall = dmalloc(src * sizeof(float));
    x->dvall = dmalloc(src * sizeof(float));
    CK_CUDA(cudaMemcpy(x->dkall, x->kall, src * sizeof(float), cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(x->dvall, x->vall, src * sizeof(float), cudaMemcpyHostToDevice));
    x->slopes = xmalloc((size_t)c.n_heads * sizeof(float));
    cpu_alibi_slopes(c.n_heads, x->slopes);
    x->dslopes = dmalloc((size_t)c.n_heads * sizeof(float));
    CK_CUDA(cudaMemcpy(x->dslopes, x->slopes, (size_t)c.n_heads * sizeof(float),
                       cudaMemcpyHostToDevice));
    x->dstep = dmalloc(sizeof(qk_step) + (size_t)max_n * sizeof(int32_t));
    x->dq = dmalloc((size_t)max_n * (size_t)x->ld_q * sizeof(float));
    x->dout = dmalloc((size_t)max_n * (size_t)x->ld_out * sizeof(float));
    /* exactly the size asked for, so memcheck sees any overrun */
    x->scratch_size = qk_attention_scratch_size(max_n, c.n_heads, c.n_ctx, c.d);
    ck_assert_uint_gt(x->scratch_size, 0);
    x->dscratch = dmalloc(x->scratch_size);
    reset_cache(x);
    return x;
}

static void actx_free(actx *x)
{
    CK_CUDA(cudaFree(x->dkv.k));
    CK_CUDA(cudaFree(x->dkv.v));
    CK_CUDA(cudaFree(x->dkall));
    CK_CUDA(cudaFree(x->dvall));
    CK_CUDA(cudaFree(x->dslopes));
    CK_CUDA(cudaFree(x->dstep));
    CK_CUDA(cudaFree(x->dq));
    CK_CUDA(cudaFree(x->dout));
    CK_CUDA(cudaFree(x->dscratch));
    free(x->hk);
    free(x->hv);
    free(x->chk);
    free(x->kall);
    free(x->vall);
    free(x->slopes);
    free(x);
}

static const char *cfg_name(const cfg *c)
{
    static char b[160];
    snprintf(b, sizeof b, "heads %d/%d d %d n_ctx %d kv %s act %s%s", c->n_heads, c->n_kv, c->d,
             c->n_ctx, qdtype_name(c->kvdt), qdtype_name(c->act), c->alibi ? " alibi" : "");
    return b;
}

/* The GPU cache equals the CPU one bitwise on [0, stored); the rest is
 * still poison. */
static void check_cache_half(actx *x, const void *dev, const void *host, const char *which)
{
    CK_CUDA(cudaMemcpy(x->chk, dev, x->cache_bytes, cudaMemcpyDeviceToHost));
    size_t row = (size_t)x->c.d * x->el;
    for (int g = 0; g < x->c.n_kv; g++) {
        size_t off = (size_t)g * (size_t)x->c.n_ctx * row;
        const char *a = (const char *)x->chk + off, *b = (const char *)host + off;
        size_t filled = (size_t)x->stored * row;
        ck_assert_msg(memcmp(a, b, filled) == 0, "%s: %s cache of kv head %d differs from CPU",
                      cfg_name(&x->c), which, g);
        ck_assert_msg(is_poison(a + filled, (size_t)(x->c.n_ctx - x->stored) * row),
                      "%s: %s cache written past position %d", cfg_name(&x->c), which,
                      x->stored - 1);
    }
}

/* Store positions [p0, p0 + n) on both sides (the source rows at those
 * positions) and, with `check`, compare the whole caches. */
static void store(actx *x, int p0, int n, bool check)
{
    ck_assert_int_eq(p0, x->stored);
    if (n <= 0)
        return;
    qerr err = {0};
    set_step(x, p0, n);
    size_t off = (size_t)p0 * (size_t)x->ld_src;
    ck_assert_msg(qk_kv_store(&x->dkv, x->dstep, n, x->dkall + off, x->ld_src, x->dvall + off,
                              x->ld_src, 0, &err),
                  "qk_kv_store: %s", err.msg);
    CK_CUDA(cudaDeviceSynchronize());
    cpu_kv_store(pool, &x->hkv, p0, n, x->kall + off, x->ld_src, x->vall + off, x->ld_src);
    x->stored = p0 + n;
    if (check) {
        check_cache_half(x, x->dkv.k, x->hk, "K");
        check_cache_half(x, x->dkv.v, x->hv, "V");
    }
}

static qk_attn_args gpu_args(actx *x, int n)
{
    return (qk_attn_args){.q = x->dq, .ld_q = x->ld_q, .out = x->dout, .ld_out = x->ld_out,
                          .n = n, .step = x->dstep, .n_heads = x->c.n_heads, .kv = &x->dkv,
                          .alibi_slopes = x->c.alibi ? x->dslopes : NULL, .act = x->c.act,
                          .scratch = x->dscratch, .scratch_size = x->scratch_size};
}

/* q rows [n][ld_q] (padding NaN) uploaded; output poisoned */
static void upload_q(actx *x, const float *q, int n)
{
    CK_CUDA(cudaMemcpy(x->dq, q, (size_t)n * (size_t)x->ld_q * sizeof(float),
                       cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemset(x->dout, POISON, (size_t)x->max_n * (size_t)x->ld_out * sizeof(float)));
}

/* Download out and check that nothing but rows [0, n) x columns [0, hd)
 * was written (rows past n + 1 are not looked at: a stray write would land
 * in row n first). */
static void download_out(actx *x, float *out, int n)
{
    int rows = n < x->max_n ? n + 1 : n;
    size_t all = (size_t)rows * (size_t)x->ld_out;
    float *buf = xmalloc(all * sizeof(float));
    CK_CUDA(cudaMemcpy(buf, x->dout, all * sizeof(float), cudaMemcpyDeviceToHost));
    for (int t = 0; t < rows; t++) {
        const float *r = buf + (size_t)t * (size_t)x->ld_out;
        if (t < n)
            ck_assert_msg(is_poison(r + x->hd, (size_t)(x->ld_out - x->hd) * sizeof(float)),
                          "%s: row %d written past its %d columns", cfg_name(&x->c), t, x->hd);
        else
            ck_assert_msg(is_poison(r, (size_t)x->ld_out * sizeof(float)),
                          "%s: row %d written, only %d tokens", cfg_name(&x->c), t, n);
    }
    memcpy(out, buf, (size_t)n * (size_t)x->ld_out * sizeof(float));
    free(buf);
}

/* GPU attention of n tokens at p0 (q already in x->dq); err when refused */
static bool run_gpu(actx *x, int p0, int n, bool with_scratch, qerr *err)
{
    set_step(x, p0, n);
    qk_attn_args a = gpu_args(x, n);
    if (!with_scratch) {
        a.scratch = NULL;
        a.scratch_size = 0;
    }
    bool ok = qk_attention(&a, 0, err);
    CK_CUDA(cudaDeviceSynchronize());
    return ok;
}

static void gpu_attention(actx *x, const float *q, int p0, int n, bool with_scratch, float *out)
{
    qerr err = {0};
    upload_q(x, q, n);
    ck_assert_msg(run_gpu(x, p0, n, with_scratch, &err), "qk_attention: %s", err.msg);
    download_out(x, out, n);
}

static void cpu_ref(actx *x, const float *q, int p0, int n, float *out)
{
    cpu_attn_args a = {.q = q, .ld_q = x->ld_q, .out = out, .ld_out = x->ld_out, .n_tokens = n,
                       .p0 = p0, .n_heads = x->c.n_heads, .kv = &x->hkv,
                       .alibi_slopes = x->c.alibi ? x->slopes : NULL, .act = x->c.act};
    cpu_attention(pool, &a);
}

/* ---- the bound ------------------------------------------------------------ */

/* max |score| (bias included) over the visible keys, in double, one task
 * per (token, head) */
typedef struct smax_ctx {
    const actx *x;
    const float *q;
    int p0;
    double *per_task;
} smax_ctx;

static void smax_task(void *c, int task, int n_tasks)
{
    (void)n_tasks;
    const smax_ctx *s = c;
    const actx *x = s->x;
    const int d = x->c.d, h = task % x->c.n_heads, t = task / x->c.n_heads;
    const int g = h / (x->c.n_heads / x->c.n_kv);
    const float *q = s->q + (size_t)t * (size_t)x->ld_q + (size_t)h * (size_t)d;
    const double scale = 1.0 / sqrt((double)d);
    double m = 0;
    for (int j = 0; j <= s->p0 + t; j++) {
        const float *k = x->kall + (size_t)j * (size_t)x->ld_src + (size_t)g * (size_t)d;
        double acc[4] = {0, 0, 0, 0}; /* independent sums: 4x the throughput */
        int i = 0;
        for (; i + 4 <= d; i += 4)
            for (int u = 0; u < 4; u++)
                acc[u] += (double)q[i + u] * k[i + u];
        for (; i < d; i++)
            acc[0] += (double)q[i] * k[i];
        double dot = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * scale;
        if (x->c.alibi)
            dot += cpu_alibi_bias(x->slopes[h], j, d, x->c.act);
        m = fmax(m, fabs(dot));
    }
    s->per_task[task] = m;
}

static double max_score(const actx *x, const float *q, int p0, int n)
{
    int tasks = n * x->c.n_heads;
    smax_ctx c = {.x = x, .q = q, .p0 = p0, .per_task = xmalloc((size_t)tasks * sizeof(double))};
    qthreads_run(pool, tasks, smax_task, &c);
    double m = 0;
    for (int i = 0; i < tasks; i++)
        m = fmax(m, c.per_task[i]);
    free(c.per_task);
    return m;
}

/* one unit in the last place of act at |x| (0 for f32) */
static double ulp_act(float x, qdtype act)
{
    if (act == QDT_F32)
        return 0;
    int e;
    frexp(fabs((double)x), &e); /* |x| in [2^(e-1), 2^e) */
    if (act == QDT_BF16)
        return ldexp(1.0, (e - 1 > -126 ? e - 1 : -126) - 7);
    return ldexp(1.0, (e - 1 > -14 ? e - 1 : -14) - 10);
}

/* |got - base| <= k * (tol + ulp_act(ulp_of)) everywhere; `ref` (the CPU
 * result) sets tol = 1e-5 max|ref| + (4 eps S + 1e-6) max|V| and the ulps */
static void check_close(const actx *x, const float *got, const float *base, const float *ref,
                        int n, double smax, double k, const char *what, int p0)
{
    double mref = 0;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < x->hd; i++)
            mref = fmax(mref, fabs(ref[(size_t)t * x->ld_out + i]));
    ck_assert_msg(mref > 0, "reference is all zero");
    double tol = 1e-5 * mref + (4.0 * FLT_EPSILON * smax + 1e-6) * x->vmax;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < x->hd; i++) {
            size_t o = (size_t)t * x->ld_out + i;
            double e = fabs((double)got[o] - (double)base[o]);
            double allowed = k * (tol + ulp_act(ref[o], x->c.act));
            if (e <= k * tol)
                worst = fmax(worst, e / (k * tol));
            else
                flips++;
            ck_assert_msg(e <= allowed,
                          "%s: %s p0 %d n %d: token %d head %d col %d: %.9g vs %.9g (err %.3g > "
                          "%.3g; max|ref| %.3g, S %.3g)",
                          cfg_name(&x->c), what, p0, n, t, i / x->c.d, i % x->c.d, got[o], base[o],
                          e, allowed, mref, smax);
            if (x->c.act != QDT_F32)
                ck_assert_msg(cpu_round_act(got[o], x->c.act) == got[o],
                              "%s: %s: output %.9g not rounded to %s", cfg_name(&x->c), what,
                              got[o], qdtype_name(x->c.act));
        }
}

/* q rows for n tokens, [n][ld_q] with NaN padding */
static float *random_q(const actx *x, int n)
{
    float *q = xmalloc((size_t)n * (size_t)x->ld_q * sizeof(float));
    fill_rows(q, n, x->hd, x->ld_q, 1.5f);
    return q;
}

/* GPU vs CPU for n tokens at p0 over the current cache; returns the GPU
 * output ([n][ld_out], caller frees) and the CPU one through *ref_out */
static float *attend_and_check(actx *x, const float *q, int p0, int n, bool with_scratch,
                               const char *what, float **ref_out, double *smax_out)
{
    size_t sz = (size_t)n * (size_t)x->ld_out * sizeof(float);
    float *got = xmalloc(sz), *ref = xmalloc(sz);
    gpu_attention(x, q, p0, n, with_scratch, got);
    cpu_ref(x, q, p0, n, ref);
    double smax = max_score(x, q, p0, n);
    check_close(x, got, ref, ref, n, smax, 1.0, what, p0);
    if (ref_out)
        *ref_out = ref;
    else
        free(ref);
    if (smax_out)
        *smax_out = smax;
    return got;
}

/* ---- configurations ----------------------------------------------------------- */

static const cfg full_cfgs[] = {
    {32, 32, 128, 2048, QDT_F16, QDT_F16, 0},  /* Llama-7B MHA */
    {32, 8, 128, 4096, QDT_F32, QDT_F32, 0},   /* GQA 32/8 */
    {32, 8, 128, 4096, QDT_F16, QDT_BF16, 1},
    {71, 1, 64, 2048, QDT_F16, QDT_BF16, 1},   /* Falcon-7B MQA */
    {71, 1, 64, 2048, QDT_F32, QDT_F32, 1},
    {128, 8, 64, 2048, QDT_F16, QDT_F16, 1},   /* Falcon-40B */
    {8, 2, 256, 2048, QDT_F16, QDT_F32, 0},    /* widest head */
    {6, 3, 80, 2048, QDT_F32, QDT_BF16, 1},    /* group of 3, 80 columns */
    {10, 5, 36, 2048, QDT_F16, QDT_F32, 0},    /* rows not 16-byte aligned */
    {12, 4, 50, 2048, QDT_F32, QDT_F16, 1},
};

static const cfg quick_cfgs[] = {
    {32, 8, 128, 512, QDT_F16, QDT_BF16, 1},
    {71, 1, 64, 512, QDT_F32, QDT_F32, 1},
    {10, 5, 36, 512, QDT_F16, QDT_F16, 0},
};

static const cfg *cfgs(int *n)
{
    if (quick()) {
        *n = (int)(sizeof quick_cfgs / sizeof quick_cfgs[0]);
        return quick_cfgs;
    }
    *n = (int)(sizeof full_cfgs / sizeof full_cfgs[0]);
    return full_cfgs;
}

#define MAX_N 320

/* ---- tests --------------------------------------------------------------------- */

/* Decode at increasing positions; the cache is filled up to each position
 * only, so every key past it is NaN. */
START_TEST(decode_positions)
{
    int nc;
    const cfg *cs = cfgs(&nc);
    for (int ci = 0; ci < nc; ci++) {
        actx *x = actx_new(cs[ci], MAX_N);
        const int n_ctx = x->c.n_ctx;
        const int pos[] = {0, 1, 255, 256, 257, 1000, n_ctx - 1};
        for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++) {
            int p = pos[i];
            if (p >= n_ctx || p < x->stored)
                continue;
            store(x, x->stored, p + 1 - x->stored, true);
            float *q = random_q(x, 1);
            free(attend_and_check(x, q, p, 1, true, "decode", NULL, NULL));
            free(q);
        }
        actx_free(x);
    }
    report(__func__);
}
END_TEST

/* Prefill with a prefix already cached; then each token decoded over that
 * cache must give the prefill's row. */
START_TEST(prefill_cases)
{
    int nc;
    const cfg *cs = cfgs(&nc);
    for (int ci = 0; ci < nc; ci++) {
        actx *x = actx_new(cs[ci], MAX_N);
        const int n_ctx = x->c.n_ctx;
        struct {
            int n, p0;
        } cases[16];
        int ncase = 0;
        const int ns[] = {2, 17, 128}, p0s[] = {0, 5, 300};
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                if (!quick() || p0s[b] != 5)
                    cases[ncase].n = ns[a], cases[ncase++].p0 = p0s[b];
        if (!quick()) {
            cases[ncase].n = 300, cases[ncase++].p0 = 0;
            cases[ncase].n = 96, cases[ncase++].p0 = n_ctx - 96; /* the whole context */
        }
        for (int i = 0; i < ncase; i++) {
            const int n = cases[i].n, p0 = cases[i].p0;
            reset_cache(x);
            store(x, 0, p0, false);
            store(x, p0, n, true); /* checks both stores */
            float *q = random_q(x, n);
            float *ref;
            double smax;
            float *pre = attend_and_check(x, q, p0, n, true, "prefill", &ref, &smax);
            if (n <= 4) /* the split path took it; the tiled one must agree */
                free(attend_and_check(x, q, p0, n, false, "prefill (tiled)", NULL, NULL));
            if (p0 == 300 || n == 96 || (quick() && n == 17)) {
                float *dec = xmalloc((size_t)n * (size_t)x->ld_out * sizeof(float));
                for (int t = 0; t < n; t++) {
                    gpu_attention(x, q + (size_t)t * (size_t)x->ld_q, p0 + t, 1, true,
                                  dec + (size_t)t * (size_t)x->ld_out);
                }
                check_close(x, dec, pre, ref, n, smax, 2.0, "decode vs prefill", p0);
                free(dec);
            }
            free(pre);
            free(ref);
            free(q);
        }
        actx_free(x);
    }
    report(__func__);
}
END_TEST

/* One graph (store one token + attention), captured at position 0, replayed
 * at every position: the step in device memory is all that changes. */
START_TEST(graph_replay)
{
    cfg c = quick() ? quick_cfgs[0] : full_cfgs[2];
    actx *x = actx_new(c, MAX_N);
    cudaStream_t s;
    CK_CUDA(cudaStreamCreate(&s));
    /* the graph stores from fixed staging rows */
    float *dk1 = dmalloc((size_t)x->ld_src * sizeof(float));
    float *dv1 = dmalloc((size_t)x->ld_src * sizeof(float));
    set_step(x, 0, 1);
    qk_attn_args a = gpu_args(x, 1);
    qerr err = {0};
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    bool ok = qk_kv_store(&x->dkv, x->dstep, 1, dk1, x->ld_src, dv1, x->ld_src, s, &err) &&
              qk_attention(&a, s, &err);
    CK_CUDA(cudaStreamEndCapture(s, &graph));
    ck_assert_msg(ok, "capture: %s", err.msg);
    CK_CUDA(cudaGraphInstantiate(&exec, graph, 0));

    const int pos[] = {0, 1, 255, 256, 257, 1000, c.n_ctx - 1};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++) {
        int p = pos[i];
        if (p >= c.n_ctx || p < x->stored)
            continue;
        store(x, x->stored, p - x->stored, false); /* all before p, outside the graph */
        size_t off = (size_t)p * (size_t)x->ld_src;
        CK_CUDA(cudaMemcpy(dk1, x->kall + off, (size_t)x->ld_src * sizeof(float),
                           cudaMemcpyHostToDevice));
        CK_CUDA(cudaMemcpy(dv1, x->vall + off, (size_t)x->ld_src * sizeof(float),
                           cudaMemcpyHostToDevice));
        float *q = random_q(x, 1);
        upload_q(x, q, 1);
        set_step(x, p, 1);
        CK_CUDA(cudaGraphLaunch(exec, s));
        CK_CUDA(cudaStreamSynchronize(s));
        /* the CPU side of the graph's store */
        cpu_kv_store(pool, &x->hkv, p, 1, x->kall + off, x->ld_src, x->vall + off, x->ld_src);
        x->stored = p + 1;
        check_cache_half(x, x->dkv.k, x->hk, "K (graph)");
        check_cache_half(x, x->dkv.v, x->hv, "V (graph)");
        size_t sz = (size_t)x->ld_out * sizeof(float);
        float *got = xmalloc(sz), *ref = xmalloc(sz);
        download_out(x, got, 1);
        cpu_ref(x, q, p, 1, ref);
        check_close(x, got, ref, ref, 1, max_score(x, q, p, 1), 1.0, "graph decode", p);
        free(got);
        free(ref);
        free(q);
    }
    CK_CUDA(cudaGraphExecDestroy(exec));
    CK_CUDA(cudaGraphDestroy(graph));
    CK_CUDA(cudaStreamDestroy(s));
    CK_CUDA(cudaFree(dk1));
    CK_CUDA(cudaFree(dv1));
    actx_free(x);
    report(__func__);
}
END_TEST

/* Arguments the kernels cannot honour are refused before any launch. */
START_TEST(bad_arguments)
{
    cfg c = {4, 2, 64, 256, QDT_F16, QDT_F32, 0};
    actx *x = actx_new(c, 8);
    store(x, 0, 10, true);
    float *q = random_q(x, 1);
    upload_q(x, q, 1);
    qerr err = {0};

    ck_assert(!run_gpu(x, 9, 1, false, &err)); /* decode without scratch */
    ck_assert_int_eq(err.code, QRUN_ERR_DEVICE);

    qk_kv_layer saved = x->dkv;
    x->dkv.head_dim = 264; /* wider than the kernels */
    x->dkv.n_ctx = 8;
    err.code = QRUN_OK;
    ck_assert(!run_gpu(x, 0, 1, true, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_DEVICE);
    x->dkv = saved;

    x->dkv.dtype = QDT_BF16; /* not a cache type */
    err.code = QRUN_OK;
    ck_assert(!run_gpu(x, 9, 1, true, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_DEVICE);
    err.code = QRUN_OK;
    ck_assert(!qk_kv_store(&x->dkv, x->dstep, 1, x->dkall, x->ld_src, x->dvall, x->ld_src, 0,
                           &err));
    ck_assert_int_eq(err.code, QRUN_ERR_DEVICE);
    x->dkv = saved;

    x->c.n_heads = 3; /* not a multiple of the 2 KV heads */
    err.code = QRUN_OK;
    ck_assert(!run_gpu(x, 9, 1, true, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_DEVICE);
    x->c.n_heads = 4;

    /* nothing was launched, nothing written */
    CK_CUDA(cudaGetLastError());
    float *out = xmalloc((size_t)x->ld_out * sizeof(float));
    download_out(x, out, 0);
    free(out);
    free(q);
    actx_free(x);
}
END_TEST

int main(void)
{
    if (cuda_device_count(NULL) <= 0)
        return 77;
    /* CUDA is initialized in this process now, and a forked child cannot
     * use it: run the tests in-process. */
    setenv("CK_FORK", "no", 1);
    Suite *s = suite_create("gpu_attention");
    TCase *tc = tcase_create("attention");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, decode_positions);
    tcase_add_test(tc, prefill_cases);
    tcase_add_test(tc, graph_replay);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
