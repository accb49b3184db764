/* CPU ops (src/cpu/ops.c): each op against a naive double-precision
 * reference written here on fresh random inputs with odd sizes, and against
 * fixtures that transformers itself computed (tools/make_ops_fixtures.py):
 * rotary embeddings of every rope type, RMSNorm, LayerNorm, the ALiBi tensor,
 * and whole Llama (GQA, dynamic NTK past max_position, two calls through a KV
 * cache) and Falcon (ALiBi MHA; rotary MQA) attention layers. Also: decode
 * token by token equals one batched call bitwise, and 1 vs 3 threads give
 * identical bytes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "import/safetensors.h"
#include "testutil.h"

static tu_rng rng;

static void setup(void) { rng.s = tu_seed(); }

static float *fvec(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    ck_assert_ptr_nonnull(p);
    return p;
}

static float *frand(size_t n, float scale)
{
    float *p = fvec(n);
    for (size_t i = 0; i < n; i++)
        p[i] = tu_normal(&rng) * scale;
    return p;
}

static int irand(int lo, int hi) /* [lo, hi] */
{
    return lo + (int)(tu_uniform(&rng) * (double)(hi - lo + 1));
}

/* max |got - ref| / max |ref| (DESIGN.md: tolerances relative to max |ref|) */
static double rel_err_d(const float *got, const double *ref, size_t n)
{
    double mref = 0, merr = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= merr))
            merr = e; /* NaN propagates as a failure */
        if (fabs(ref[i]) > mref)
            mref = fabs(ref[i]);
    }
    return mref > 0 ? merr / mref : merr;
}

static double rel_err_f(const float *got, const float *ref, size_t n)
{
    double *r = malloc(n * sizeof *r);
    for (size_t i = 0; i < n; i++)
        r[i] = ref[i];
    double e = rel_err_d(got, r, n);
    free(r);
    return e;
}

/* CHECK_REL(err, bound, fmt, args...): at least one argument after fmt */
#define CHECK_REL(err, bound, fmt, ...)                                                       \
    do {                                                                                      \
        double e_ = (err), b_ = (bound);                                                      \
        ck_assert_msg(e_ <= b_, fmt ": relative error %.3g > %.3g", __VA_ARGS__, e_, b_);      \
    } while (0)

/* ---- fixtures ----------------------------------------------------------- */

typedef struct fx {
    st_file *f;
} fx;

static fx fx_open(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "ops/%s", name);
    qerr err;
    fx x = {st_open(tu_data_path(rel), &err)};
    ck_assert_msg(x.f != NULL, "%s: %s", rel, err.msg);
    return x;
}

static const st_tensor *fx_t(fx x, const char *name)
{
    const st_tensor *t = st_find(x.f, name);
    ck_assert_msg(t != NULL, "fixture tensor %s missing", name);
    return t;
}

static size_t fx_numel(fx x, const char *name)
{
    const st_tensor *t = fx_t(x, name);
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return (size_t)n;
}

static float *fx_f32(fx x, const char *name, size_t *n)
{
    const st_tensor *t = fx_t(x, name);
    size_t cnt = fx_numel(x, name);
    float *p = fvec(cnt);
    qerr err;
    ck_assert_msg(st_read_f32(x.f, t, p, &err), "%s: %s", name, err.msg);
    if (n)
        *n = cnt;
    return p;
}

static void fx_raw(fx x, const char *name, const char *dtype, void *dst, size_t nbytes)
{
    const st_tensor *t = fx_t(x, name);
    ck_assert_str_eq(t->dtype_name, dtype);
    ck_assert_uint_eq(t->nbytes, nbytes);
    qerr err;
    ck_assert_msg(st_read(x.f, t, dst, &err), "%s: %s", name, err.msg);
}

/* params F64 [8]: type, theta, factor, low, high, original_max, max_pos, head_dim */
static qrope fx_rope(fx x)
{
    double v[8];
    fx_raw(x, "params", "F64", v, sizeof v);
    qrope_params p = {.type = (qrope_type)(int)v[0], .theta = v[1], .factor = v[2],
                      .low_freq_factor = v[3], .high_freq_factor = v[4],
                      .original_max_position_embeddings = (int64_t)v[5],
                      .max_position_embeddings = (int64_t)v[6], .head_dim = (int)v[7]};
    qrope r;
    qerr err;
    ck_assert_msg(qrope_init(&r, &p, &err) == QRUN_OK, "%s", err.msg);
    return r;
}

/* ---- embedding ---------------------------------------------------------- */

START_TEST(embed_all_dtypes)
{
    const int V = 37, H = 45, n = 11;
    float *tab = frand((size_t)V * H, 2.0f);
    uint16_t *t16 = malloc((size_t)V * H * 2), *tbf = malloc((size_t)V * H * 2);
    for (int i = 0; i < V * H; i++) {
        t16[i] = qf32_to_f16(tab[i]);
        tbf[i] = qf32_to_bf16(tab[i]);
    }
    int32_t ids[11];
    for (int i = 0; i < n; i++)
        ids[i] = irand(0, V - 1);
    ids[0] = V - 1;
    float *out = fvec((size_t)n * H);
    for (int d = 0; d < 3; d++) {
        qdtype dt = d == 0 ? QDT_F32 : d == 1 ? QDT_F16 : QDT_BF16;
        const void *src = d == 0 ? (const void *)tab : d == 1 ? (const void *)t16 : (const void *)tbf;
        cpu_embed(src, dt, H, ids, n, out);
        for (int t = 0; t < n; t++)
            for (int i = 0; i < H; i++) {
                size_t k = (size_t)ids[t] * H + i;
                float want = d == 0 ? tab[k] : d == 1 ? qf16_to_f32(t16[k]) : qbf16_to_f32(tbf[k]);
                ck_assert_msg(memcmp(&want, &out[t * H + i], 4) == 0, "dtype %d t %d i %d", d, t, i);
            }
    }
    /* every f16 class converts as dtype.c does (subnormals, inf, NaN) */
    static const uint16_t special[] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x7bff,
                                       0x7c00, 0xfc00, 0x7e00, 0x3c00, 0xc000, 0x8001};
    int32_t sid[12];
    for (int i = 0; i < 12; i++)
        sid[i] = i;
    float sout[12];
    cpu_embed(special, QDT_F16, 1, sid, 12, sout);
    for (int i = 0; i < 12; i++) {
        float want = qf16_to_f32(special[i]);
        ck_assert_msg(memcmp(&want, &sout[i], 4) == 0 || (isnan(want) && isnan(sout[i])),
                      "f16 %04x", special[i]);
    }
    free(tab);
    free(t16);
    free(tbf);
    free(out);
}
END_TEST

/* ---- norms -------------------------------------------------------------- */

START_TEST(norms_vs_double)
{
    static const int dims[] = {1, 7, 77, 4544};
    qthreads *pool = qthreads_create(3, NULL);
    for (size_t di = 0; di < 4; di++) {
        int dim = dims[di], rows = irand(1, 7);
        size_t n = (size_t)rows * dim;
        float *x = frand(n, 2.0f), *w = frand((size_t)dim, 1.0f), *b = frand((size_t)dim, 1.0f);
        for (size_t i = 0; i < n; i++)
            x[i] += 0.75f; /* a non-zero mean for LayerNorm */
        float *y = fvec(n);
        double *ref = malloc(n * sizeof *ref);
        const float eps = 1e-5f;
        /* RMSNorm */
        cpu_rmsnorm(pool, x, y, rows, dim, w, QDT_F32, eps, QDT_F32);
        for (int r = 0; r < rows; r++) {
            double ss = 0;
            for (int i = 0; i < dim; i++)
                ss += (double)x[r * dim + i] * x[r * dim + i];
            double rs = 1.0 / sqrt(ss / dim + (double)eps);
            for (int i = 0; i < dim; i++)
                ref[r * dim + i] = x[r * dim + i] * rs * w[i];
        }
        CHECK_REL(rel_err_d(y, ref, n), 1e-5, "rmsnorm dim %d", dim);
        /* in place, and a bf16 weight with f32 activations (product in f32) */
        uint16_t *wb = malloc((size_t)dim * 2);
        for (int i = 0; i < dim; i++)
            wb[i] = qf32_to_bf16(w[i]);
        float *x2 = fvec(n);
        memcpy(x2, x, n * 4);
        cpu_rmsnorm(NULL, x2, x2, rows, dim, wb, QDT_BF16, eps, QDT_F32);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < dim; i++)
                ref[r * dim + i] *= (double)qbf16_to_f32(wb[i]) / w[i];
        CHECK_REL(rel_err_d(x2, ref, n), 1e-5, "rmsnorm bf16 weight dim %d", dim);
        /* LayerNorm */
        cpu_layernorm(pool, x, y, rows, dim, w, b, QDT_F32, eps, QDT_F32);
        for (int r = 0; r < rows; r++) {
            double m = 0, v = 0;
            for (int i = 0; i < dim; i++)
                m += x[r * dim + i];
            m /= dim;
            for (int i = 0; i < dim; i++)
                v += (x[r * dim + i] - m) * (x[r * dim + i] - m);
            v /= dim;
            for (int i = 0; i < dim; i++)
                ref[r * dim + i] = (x[r * dim + i] - m) / sqrt(v + (double)eps) * w[i] + b[i];
        }
        CHECK_REL(rel_err_d(y, ref, n), 1e-5, "layernorm dim %d", dim);
        free(x);
        free(x2);
        free(w);
        free(wb);
        free(b);
        free(y);
        free(ref);
    }
    qthreads_free(pool);
}
END_TEST

START_TEST(norms_vs_transformers)
{
    fx x = fx_open("norms.safetensors");
    static const char *tags[] = {"f32", "bf16", "f16"};
    static const qdtype dts[] = {QDT_F32, QDT_BF16, QDT_F16};
    for (int k = 0; k < 3; k++) {
        char nm[32];
        size_t n;
        snprintf(nm, sizeof nm, "x_%s", tags[k]);
        float *in = fx_f32(x, nm, &n);
        int dim = (int)fx_t(x, nm)->shape[1], rows = (int)fx_t(x, nm)->shape[0];
        /* weights handed over in their own dtype, as the .qbin stores them */
        const st_tensor *wt = fx_t(x, (snprintf(nm, sizeof nm, "w_%s", tags[k]), nm));
        void *w = malloc(wt->nbytes);
        ck_assert(st_read(x.f, wt, w, NULL));
        const st_tensor *bt = fx_t(x, (snprintf(nm, sizeof nm, "b_%s", tags[k]), nm));
        void *b = malloc(bt->nbytes);
        ck_assert(st_read(x.f, bt, b, NULL));
        float *y = fvec(n);
        snprintf(nm, sizeof nm, "rms_%s", tags[k]);
        float *want = fx_f32(x, nm, NULL);
        cpu_rmsnorm(NULL, in, y, rows, dim, w, dts[k], 1e-5f, dts[k]);
        /* f32: per-op bound; 16-bit: HF's roundings are reproduced, so all
         * but rare ties of a last-bit difference in the f32 stage agree */
        double e = rel_err_f(y, want, n);
        CHECK_REL(e, k == 0 ? 1e-6 : 1e-2 * 0.5, "rmsnorm %s", tags[k]);
        int diff = 0;
        for (size_t i = 0; i < n; i++)
            diff += y[i] != want[i];
        ck_assert_msg(k == 0 || diff <= (int)n / 50, "rmsnorm %s: %d of %zu differ", tags[k], diff, n);
        free(want);
        snprintf(nm, sizeof nm, "ln_%s", tags[k]);
        want = fx_f32(x, nm, NULL);
        cpu_layernorm(NULL, in, y, rows, dim, w, b, dts[k], 1e-5f, dts[k]);
        e = rel_err_f(y, want, n);
        CHECK_REL(e, k == 0 ? 1e-6 : 1e-2 * 0.5, "layernorm %s", tags[k]);
        diff = 0;
        for (size_t i = 0; i < n; i++)
            diff += y[i] != want[i];
        ck_assert_msg(k == 0 || diff <= (int)n / 50, "layernorm %s: %d of %zu differ", tags[k], diff, n);
        free(want);
        free(in);
        free(w);
        free(b);
        free(y);
    }
    st_close(x.f);
}
END_TEST

/* ---- rotary ------------------------------------------------------------- */

/* The rope formulas of architectures.md in double (HF's arithmetic is f32:
 * compared loosely). */
static double ref_inv_freq(const qrope_params *p, int i, int64_t seq_len)
{
    int D = p->head_dim;
    double base = p->theta;
    if (p->type == QROPE_DYNAMIC && seq_len > p->max_position_embeddings)
        base *= pow(p->factor * (double)seq_len / (double)p->max_position_embeddings -
                        (p->factor - 1),
                    (double)D / (D - 2));
    double f = pow(base, -2.0 * i / D);
    if (p->type == QROPE_LINEAR)
        f /= p->factor;
    if (p->type == QROPE_LLAMA3) {
        double wl = 2 * 3.14159265358979323846 / f;
        double lo = (double)p->original_max_position_embeddings / p->low_freq_factor;
        double hi = (double)p->original_max_position_embeddings / p->high_freq_factor;
        if (wl > lo)
            f /= p->factor;
        else if (wl >= hi) {
            double s = ((double)p->original_max_position_embeddings / wl - p->low_freq_factor) /
                       (p->high_freq_factor - p->low_freq_factor);
            f = (1 - s) * f / p->factor + s * f;
        }
    }
    return f;
}

START_TEST(rope_vs_double)
{
    qthreads *pool = qthreads_create(3, NULL);
    static const qrope_type types[] = {QROPE_DEFAULT, QROPE_LINEAR, QROPE_DYNAMIC, QROPE_LLAMA3};
    for (int ti = 0; ti < 4; ti++) {
        qrope_params p = {.type = types[ti], .theta = ti == 3 ? 500000.0 : 10000.0,
                          .factor = 1.5 + ti, .low_freq_factor = 1, .high_freq_factor = 4,
                          .original_max_position_embeddings = 512,
                          .max_position_embeddings = 256, .head_dim = 2 * irand(2, 40)};
        qrope r;
        qerr err;
        ck_assert_msg(qrope_init(&r, &p, &err) == QRUN_OK, "%s", err.msg);
        int D = p.head_dim, half = D / 2, heads = irand(1, 9), n = irand(1, 37);
        int ld = heads * D + irand(0, 5);
        int32_t *pos = malloc((size_t)n * sizeof *pos);
        int p0 = irand(0, 600); /* past max_position (256) for dynamic */
        for (int t = 0; t < n; t++)
            pos[t] = p0 + t;
        int64_t seq_len = p0 + n;
        float inv[CPU_MAX_HEAD_DIM / 2];
        qrope_inv_freq(&r, seq_len, inv);
        double *refinv = malloc((size_t)half * sizeof *refinv);
        for (int i = 0; i < half; i++)
            refinv[i] = ref_inv_freq(&p, i, seq_len);
        CHECK_REL(rel_err_d(inv, refinv, (size_t)half), 2e-6, "inv_freq type %d", ti);
        for (int i = 0; i < half; i++)
            ck_assert_msg(fabs(inv[i] - refinv[i]) <= 2e-6 * refinv[i], "inv_freq %d: %g vs %g",
                          i, inv[i], refinv[i]);
        float *x = frand((size_t)n * ld, 1.0f), *y = fvec((size_t)n * ld);
        memcpy(y, x, (size_t)n * ld * 4);
        cpu_rope(pool, &r, seq_len, y, ld, n, heads, pos, QDT_F32);
        /* reference: rotation in double of HF's f32 angle f32(pos) * inv */
        double *ref = malloc((size_t)n * ld * sizeof *ref);
        for (int t = 0; t < n; t++)
            for (int j = 0; j < ld; j++)
                ref[(size_t)t * ld + j] = x[(size_t)t * ld + j]; /* padding untouched */
        for (int t = 0; t < n; t++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < half; i++) {
                    float ang = (float)pos[t] * inv[i];
                    double c = cos((double)ang), s = sin((double)ang);
                    size_t o = (size_t)t * ld + (size_t)h * D;
                    ref[o + i] = x[o + i] * c - (double)x[o + i + half] * s;
                    ref[o + i + half] = x[o + i + half] * c + (double)x[o + i] * s;
                }
        CHECK_REL(rel_err_d(y, ref, (size_t)n * ld), 1e-5, "rope type %d", ti);
        free(x);
        free(y);
        free(ref);
        free(refinv);
        free(pos);
    }
    qthreads_free(pool);
}
END_TEST

START_TEST(rope_params_refused)
{
    qrope r;
    qerr err;
    qrope_params p = {.type = QROPE_DEFAULT, .theta = 10000, .head_dim = 63};
    ck_assert_int_eq(qrope_init(&r, &p, &err), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "head_dim"));
    p.head_dim = 64;
    p.theta = 0;
    ck_assert_int_eq(qrope_init(&r, &p, &err), QRUN_ERR_INVALID_ARGUMENT);
    p.theta = 10000;
    p.type = QROPE_LINEAR;
    ck_assert_int_eq(qrope_init(&r, &p, &err), QRUN_ERR_INVALID_ARGUMENT);
    p.type = QROPE_LLAMA3;
    p.factor = 8;
    p.low_freq_factor = p.high_freq_factor = 2;
    p.original_max_position_embeddings = 8192;
    ck_assert_int_eq(qrope_init(&r, &p, &err), QRUN_ERR_INVALID_ARGUMENT);
    p.high_freq_factor = 4;
    ck_assert_int_eq(qrope_init(&r, &p, &err), QRUN_OK);
    p.type = QROPE_DYNAMIC;
    ck_assert_int_eq(qrope_init(&r, &p, &err), QRUN_ERR_INVALID_ARGUMENT); /* no max_position */
}
END_TEST

/* Largest difference in units of the last place of the expected value. */
static double max_ulps(const float *got, const float *want, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double u = fabs((double)got[i] - want[i]) / (nextafterf(fabsf(want[i]), INFINITY) - fabsf(want[i]));
        if (!(u <= m))
            m = u;
    }
    return m;
}

static void rope_fixture(const char *file)
{
    fx x = fx_open(file);
    qrope r = fx_rope(x);
    int D = r.p.head_dim, half = D / 2;
    size_t n;
    float *init = fx_f32(x, "inv_freq_init", &n);
    ck_assert_uint_eq(n, (size_t)half);
    /* torch's vectorized f32 pow is sometimes an ulp off the correctly
     * rounded power computed here, and the reciprocal can add one */
    ck_assert_msg(max_ulps(r.inv_freq, init, n) <= 2.0, "%s: inv_freq %g ulps", file,
                  max_ulps(r.inv_freq, init, n));
    free(init);
    int32_t ncalls;
    fx_raw(x, "n_calls", "I32", &ncalls, 4);
    for (int c = 0; c < ncalls; c++) {
        char nm[64];
        snprintf(nm, sizeof nm, "c%d_pos", c);
        size_t nt = fx_numel(x, nm);
        int32_t *pos = malloc(nt * 4);
        fx_raw(x, nm, "I32", pos, nt * 4);
        int64_t seq_len = 0;
        for (size_t t = 0; t < nt; t++)
            seq_len = pos[t] + 1 > seq_len ? pos[t] + 1 : seq_len;
        float inv[CPU_MAX_HEAD_DIM / 2];
        qrope_inv_freq(&r, seq_len, inv);
        snprintf(nm, sizeof nm, "c%d_inv_freq", c);
        float *want_inv = fx_f32(x, nm, NULL);
        ck_assert_msg(max_ulps(inv, want_inv, (size_t)half) <= 2.0, "%s call %d: inv_freq %g ulps",
                      file, c, max_ulps(inv, want_inv, (size_t)half));
        for (int k = 0; k < 2; k++) {
            const char *tag = k ? "bf16" : "f32";
            snprintf(nm, sizeof nm, "c%d_x_%s", c, tag);
            size_t nx;
            float *xx = fx_f32(x, nm, &nx);
            int heads = (int)(nx / nt / (size_t)D);
            snprintf(nm, sizeof nm, "c%d_out_%s", c, tag);
            float *want = fx_f32(x, nm, NULL);
            cpu_rope(NULL, &r, seq_len, xx, heads * D, (int)nt, heads, pos, k ? QDT_BF16 : QDT_F32);
            /* Angles use the same f32 inv_freq (equal above up to an ulp)
             * and f32 products; cos/sin differ from torch's by at most an
             * ulp. bf16: HF's four roundings are reproduced, so results
             * agree but for a rare one-ulp tie. */
            double e = rel_err_f(xx, want, nx);
            if (k == 0) {
                CHECK_REL(e, 1e-5, "%s call %d f32", file, c);
            } else {
                int diff = 0;
                for (size_t i = 0; i < nx; i++)
                    diff += xx[i] != want[i];
                ck_assert_msg(diff <= (int)(nx / 20) && e < 1e-2, "%s call %d bf16: %d of %zu differ (%g)",
                              file, c, diff, nx, e);
            }
            free(xx);
            free(want);
        }
        free(want_inv);
        free(pos);
    }
    if (r.p.type == QROPE_DYNAMIC) {
        size_t nl = fx_numel(x, "dyn_lens");
        int32_t *lens = malloc(nl * 4);
        fx_raw(x, "dyn_lens", "I32", lens, nl * 4);
        float *tab = fx_f32(x, "dyn_inv_freq", NULL);
        for (size_t l = 0; l < nl; l++) {
            float inv[CPU_MAX_HEAD_DIM / 2];
            qrope_inv_freq(&r, lens[l], inv);
            double u = max_ulps(inv, tab + l * (size_t)half, (size_t)half);
            ck_assert_msg(u <= 2.0, "dynamic seq_len %d: inv_freq %g ulps", lens[l], u);
        }
        free(lens);
        free(tab);
    }
    st_close(x.f);
}

START_TEST(rope_vs_transformers)
{
    rope_fixture("rope_default.safetensors");
    rope_fixture("rope_linear.safetensors");
    rope_fixture("rope_dynamic.safetensors");
    rope_fixture("rope_llama3.safetensors");
    rope_fixture("rope_llama3_small.safetensors");
}
END_TEST

/* ---- ALiBi -------------------------------------------------------------- */

START_TEST(alibi_vs_transformers)
{
    fx x = fx_open("alibi.safetensors");
    size_t nc = fx_numel(x, "cols");
    int32_t *cols = malloc(nc * 4);
    fx_raw(x, "cols", "I32", cols, nc * 4);
    static const int heads[] = {71, 32, 12, 5, 1};
    for (int k = 0; k < 5; k++) {
        int H = heads[k];
        char nm[32];
        snprintf(nm, sizeof nm, "alibi_%d", H);
        float *want = fx_f32(x, nm, NULL);
        float slopes[71];
        cpu_alibi_slopes(H, slopes);
        /* the slopes themselves: architectures.md's formula in double */
        int p = 1;
        while (p * 2 <= H)
            p *= 2;
        for (int h = 0; h < H; h++) {
            double base = pow(2.0, -pow(2.0, -(log2(h < p ? p : 2 * p) - 3)));
            double m = pow(base, h < p ? h + 1 : 2 * (h - p) + 1);
            ck_assert_msg(fabs(slopes[h] - m) <= 1e-6 * m, "H %d slope %d: %g vs %g", H, h, slopes[h], m);
        }
        /* the bias before the 1/sqrt(D) (head_dim 1): bitwise HF's tensor,
         * in every activation dtype */
        for (int h = 0; h < H; h++)
            for (size_t c = 0; c < nc; c++) {
                float w = want[(size_t)h * nc + c];
                for (int a = 0; a < 3; a++) {
                    qdtype act = a == 0 ? QDT_F32 : a == 1 ? QDT_BF16 : QDT_F16;
                    float got = cpu_alibi_bias(slopes[h], cols[c], 1, act);
                    ck_assert_msg(got == cpu_round_act(w, act), "H %d head %d j %d act %d: %g vs %g",
                                  H, h, cols[c], a, got, w);
                }
                /* and scaled by 1/sqrt(64) = 1/8 exactly */
                ck_assert(cpu_alibi_bias(slopes[h], cols[c], 64, QDT_F32) == w / 8);
            }
        free(want);
    }
    free(cols);
    st_close(x.f);
}
END_TEST

/* ---- attention ---------------------------------------------------------- */

static cpu_kv_layer kv_alloc(int hkv, int n_ctx, int d, qdtype dt)
{
    size_t n = (size_t)hkv * n_ctx * d, es = dt == QDT_F16 ? 2 : 4;
    cpu_kv_layer kv = {.k = calloc(n, es), .v = calloc(n, es), .dtype = dt, .n_kv_heads = hkv,
                       .n_ctx = n_ctx, .head_dim = d};
    ck_assert(kv.k && kv.v);
    return kv;
}

static void kv_free(cpu_kv_layer *kv)
{
    free(kv->k);
    free(kv->v);
}

static double kv_get(const cpu_kv_layer *kv, const void *base, int g, int j, int i)
{
    size_t o = ((size_t)g * kv->n_ctx + j) * kv->head_dim + i;
    if (kv->dtype == QDT_F16)
        return qf16_to_f32(((const uint16_t *)base)[o]);
    return ((const float *)base)[o];
}

/* Naive attention in double from whatever the cache holds. */
static void ref_attention(const cpu_attn_args *a, double *out)
{
    const cpu_kv_layer *kv = a->kv;
    int D = kv->head_dim, rep = a->n_heads / kv->n_kv_heads;
    int maxk = a->p0 + a->n_tokens;
    double *s = malloc((size_t)maxk * sizeof *s);
    for (int t = 0; t < a->n_tokens; t++)
        for (int h = 0; h < a->n_heads; h++) {
            int g = h / rep, p = a->p0 + t;
            const float *q = a->q + (size_t)t * a->ld_q + (size_t)h * D;
            double mx = -INFINITY;
            for (int j = 0; j <= p; j++) {
                double d = 0;
                for (int i = 0; i < D; i++)
                    d += q[i] * kv_get(kv, kv->k, g, j, i);
                s[j] = d / sqrt((double)D);
                if (a->alibi_slopes) /* HF's bias: bf16 slope times bf16 j, in bf16 */
                    s[j] += qbf16_to_f32(qf32_to_bf16(qbf16_to_f32(qf32_to_bf16(a->alibi_slopes[h])) *
                                                      qbf16_to_f32(qf32_to_bf16((float)j)))) /
                            sqrt((double)D);
                mx = s[j] > mx ? s[j] : mx;
            }
            double den = 0;
            for (int j = 0; j <= p; j++)
                den += (s[j] = exp(s[j] - mx));
            for (int i = 0; i < D; i++) {
                double o = 0;
                for (int j = 0; j <= p; j++)
                    o += s[j] * kv_get(kv, kv->v, g, j, i);
                out[(size_t)t * a->n_heads * D + (size_t)h * D + i] = o / den;
            }
        }
    free(s);
}

typedef struct attn_case {
    int hq, hkv, d, n, p0;
    qdtype cache;
    int alibi;
} attn_case;

static void run_attn_case(const attn_case *c, qthreads *pool3)
{
    int D = c->d, n_ctx = c->p0 + c->n + irand(0, 5);
    int kvw = c->hkv * D, qw = c->hq * D;
    cpu_kv_layer kv = kv_alloc(c->hkv, n_ctx, D, c->cache);
    /* history [0, p0) and the new tokens' k/v */
    int tot = c->p0 + c->n;
    float *k = frand((size_t)tot * kvw, 1.0f), *v = frand((size_t)tot * kvw, 1.0f);
    float *q = frand((size_t)c->n * qw, 1.0f);
    float slopes[128];
    cpu_alibi_slopes(c->hq, slopes);
    /* the history in one store, the new tokens in another */
    cpu_kv_store(pool3, &kv, 0, c->p0, k, kvw, v, kvw);
    cpu_kv_store(pool3, &kv, c->p0, c->n, k + (size_t)c->p0 * kvw, kvw, v + (size_t)c->p0 * kvw, kvw);
    /* the store wrote what it was given (f16: rounded to nearest even) */
    for (int j = 0; j < tot; j += 1 + tot / 7)
        for (int g = 0; g < c->hkv; g++) {
            float want = k[(size_t)j * kvw + g * D + D - 1];
            if (c->cache == QDT_F16)
                want = qf16_to_f32(qf32_to_f16(want));
            ck_assert(kv_get(&kv, kv.k, g, j, D - 1) == want);
        }
    float *out = fvec((size_t)c->n * qw), *out1 = fvec((size_t)c->n * qw), *out2 = fvec((size_t)c->n * qw);
    cpu_attn_args a = {.q = q, .ld_q = qw, .out = out, .ld_out = qw, .n_tokens = c->n, .p0 = c->p0,
                       .n_heads = c->hq, .kv = &kv, .alibi_slopes = c->alibi ? slopes : NULL,
                       .act = QDT_F32};
    cpu_attention(pool3, &a);
    double *ref = malloc((size_t)c->n * qw * sizeof *ref);
    ref_attention(&a, ref);
    CHECK_REL(rel_err_d(out, ref, (size_t)c->n * qw), 1e-5,
              "attention Hq %d Hkv %d D %d n %d p0 %d cache %d alibi %d", c->hq, c->hkv, D, c->n,
              c->p0, (int)c->cache, c->alibi);
    /* one thread: the same bytes */
    a.out = out1;
    cpu_attention(NULL, &a);
    ck_assert_msg(memcmp(out, out1, (size_t)c->n * qw * 4) == 0, "1 vs 3 threads differ");
    /* token-by-token decode, each token stored then attended: the same bytes */
    cpu_kv_layer kv2 = kv_alloc(c->hkv, n_ctx, D, c->cache);
    cpu_kv_store(NULL, &kv2, 0, c->p0, k, kvw, v, kvw);
    for (int t = 0; t < c->n; t++) {
        size_t o = (size_t)(c->p0 + t) * kvw;
        cpu_kv_store(NULL, &kv2, c->p0 + t, 1, k + o, kvw, v + o, kvw);
        cpu_attn_args a1 = a;
        a1.q = q + (size_t)t * qw;
        a1.out = out2 + (size_t)t * qw;
        a1.n_tokens = 1;
        a1.p0 = c->p0 + t;
        a1.kv = &kv2;
        cpu_attention(t % 2 ? pool3 : NULL, &a1);
    }
    ck_assert_msg(memcmp(out, out2, (size_t)c->n * qw * 4) == 0, "decode vs batched differ");
    kv_free(&kv);
    kv_free(&kv2);
    free(k);
    free(v);
    free(q);
    free(out);
    free(out1);
    free(out2);
    free(ref);
}

START_TEST(attention_vs_double)
{
    qthreads *pool = qthreads_create(3, NULL);
    const attn_case cases[] = {
        {71, 1, 64, irand(1, 37), irand(0, 40), QDT_F32, 0},   /* falcon-7b MQA */
        {32, 8, 64, irand(1, 37), irand(0, 40), QDT_F16, 0},   /* GQA 32/8 */
        {6, 2, 36, irand(1, 37), 300 + irand(0, 300), QDT_F32, 0}, /* several key chunks */
        {12, 12, 16, 37, 513, QDT_F16, 0},                     /* MHA, chunk 256, 3 chunks */
        {71, 71, 64, irand(1, 20), irand(0, 300), QDT_F32, 1}, /* rw-7b ALiBi */
        {5, 5, 16, irand(1, 37), irand(0, 20), QDT_F16, 1},
        {4, 1, 128, 1, 0, QDT_F32, 0},                         /* the very first token */
        {3, 3, 2, irand(1, 37), irand(0, 3000), QDT_F32, 0},   /* tiny head: 256-key chunks */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        run_attn_case(&cases[i], pool);
    qthreads_free(pool);
}
END_TEST

START_TEST(attention_output_rounding)
{
    /* act bf16: the output is the f32 result rounded to bf16 */
    int D = 64, H = 4, n = 5;
    cpu_kv_layer kv = kv_alloc(2, 16, D, QDT_F32);
    float *k = frand((size_t)n * 2 * D, 1), *v = frand((size_t)n * 2 * D, 1), *q = frand((size_t)n * H * D, 1);
    cpu_kv_store(NULL, &kv, 0, n, k, 2 * D, v, 2 * D);
    float *o32 = fvec((size_t)n * H * D), *o16 = fvec((size_t)n * H * D);
    cpu_attn_args a = {.q = q, .ld_q = H * D, .out = o32, .ld_out = H * D, .n_tokens = n, .n_heads = H,
                       .kv = &kv, .act = QDT_F32};
    cpu_attention(NULL, &a);
    a.out = o16;
    a.act = QDT_BF16;
    cpu_attention(NULL, &a);
    for (int i = 0; i < n * H * D; i++)
        ck_assert(o16[i] == qbf16_to_f32(qf32_to_bf16(o32[i])));
    kv_free(&kv);
    free(k);
    free(v);
    free(q);
    free(o32);
    free(o16);
}
END_TEST

/* Gather [n, heads*D] from per-token rows where head h sits at off + h*step. */
static float *gather_heads(const float *src, int n, int ld, int off, int step, int heads, int D)
{
    float *o = fvec((size_t)n * heads * D);
    for (int t = 0; t < n; t++)
        for (int h = 0; h < heads; h++)
            memcpy(o + ((size_t)t * heads + h) * D, src + (size_t)t * ld + off + (size_t)h * step,
                   (size_t)D * 4);
    return o;
}

START_TEST(llama_attention_vs_transformers)
{
    /* GQA 6/2, D 16, dynamic NTK (max_position 16): call 0 = positions
     * 0..11, call 1 = 12..20 through the cache (seq_len 21 > 16). */
    fx x = fx_open("llama_attn.safetensors");
    qrope r = fx_rope(x);
    int32_t dims[5];
    fx_raw(x, "dims", "I32", dims, sizeof dims);
    int hq = dims[0], hkv = dims[1], D = dims[2];
    cpu_kv_layer kv = kv_alloc(hkv, dims[3] + dims[4], D, QDT_F32);
    qthreads *pool = qthreads_create(3, NULL);
    int p0 = 0;
    for (int c = 0; c < 2; c++) {
        int n = dims[3 + c];
        char nm[16];
        float *q = fx_f32(x, (snprintf(nm, sizeof nm, "c%d_q", c), nm), NULL);
        float *k = fx_f32(x, (snprintf(nm, sizeof nm, "c%d_k", c), nm), NULL);
        float *v = fx_f32(x, (snprintf(nm, sizeof nm, "c%d_v", c), nm), NULL);
        float *want = fx_f32(x, (snprintf(nm, sizeof nm, "c%d_o", c), nm), NULL);
        int32_t pos[64];
        for (int t = 0; t < n; t++)
            pos[t] = p0 + t;
        cpu_rope(pool, &r, p0 + n, q, hq * D, n, hq, pos, QDT_F32);
        cpu_rope(pool, &r, p0 + n, k, hkv * D, n, hkv, pos, QDT_F32);
        cpu_kv_store(pool, &kv, p0, n, k, hkv * D, v, hkv * D);
        float *out = fvec((size_t)n * hq * D);
        cpu_attn_args a = {.q = q, .ld_q = hq * D, .out = out, .ld_out = hq * D, .n_tokens = n,
                           .p0 = p0, .n_heads = hq, .kv = &kv, .act = QDT_F32};
        cpu_attention(pool, &a);
        CHECK_REL(rel_err_f(out, want, (size_t)n * hq * D), 1e-5, "llama call %d", c);
        p0 += n;
        free(q);
        free(k);
        free(v);
        free(want);
        free(out);
    }
    qthreads_free(pool);
    kv_free(&kv);
    st_close(x.f);
}
END_TEST

static void falcon_fixture(const char *file, int alibi)
{
    fx x = fx_open(file);
    int32_t dims[3];
    fx_raw(x, "dims", "I32", dims, sizeof dims);
    int H = dims[0], D = dims[1], n = dims[2];
    size_t nq;
    float *qkv = fx_f32(x, "qkv", &nq);
    int ld = (int)(nq / (size_t)n);
    float *want = fx_f32(x, "o", NULL);
    float *q, *k, *v;
    int hkv;
    int32_t pos[64];
    for (int t = 0; t < n; t++)
        pos[t] = t;
    if (alibi) { /* falcon-rw: per head h the slices q_h, k_h, v_h */
        hkv = H;
        q = gather_heads(qkv, n, ld, 0, 3 * D, H, D);
        k = gather_heads(qkv, n, ld, D, 3 * D, H, D);
        v = gather_heads(qkv, n, ld, 2 * D, 3 * D, H, D);
    } else { /* falcon-7b: H query heads, then one key and one value head */
        hkv = 1;
        /* rotary in place inside the fused rows (ld = the fused width) */
        qrope_params p = {.type = QROPE_DEFAULT, .theta = 10000, .head_dim = D};
        qrope r;
        ck_assert(qrope_init(&r, &p, NULL) == QRUN_OK);
        cpu_rope(NULL, &r, n, qkv, ld, n, H, pos, QDT_F32);
        cpu_rope(NULL, &r, n, qkv + (size_t)H * D, ld, n, 1, pos, QDT_F32);
        q = gather_heads(qkv, n, ld, 0, D, H, D);
        k = gather_heads(qkv, n, ld, H * D, D, 1, D);
        v = gather_heads(qkv, n, ld, (H + 1) * D, D, 1, D);
    }
    cpu_kv_layer kv = kv_alloc(hkv, n, D, QDT_F32);
    cpu_kv_store(NULL, &kv, 0, n, k, hkv * D, v, hkv * D);
    float slopes[64];
    cpu_alibi_slopes(H, slopes);
    float *out = fvec((size_t)n * H * D);
    cpu_attn_args a = {.q = q, .ld_q = H * D, .out = out, .ld_out = H * D, .n_tokens = n,
                       .n_heads = H, .kv = &kv, .alibi_slopes = alibi ? slopes : NULL,
                       .act = QDT_F32};
    cpu_attention(NULL, &a);
    CHECK_REL(rel_err_f(out, want, (size_t)n * H * D), 1e-5, "%s", file);
    if (alibi) {
        /* the fixture does exercise the bias: without it the result moves */
        a.alibi_slopes = NULL;
        cpu_attention(NULL, &a);
        ck_assert(rel_err_f(out, want, (size_t)n * H * D) > 1e-3);
    }
    kv_free(&kv);
    free(qkv);
    free(want);
    free(q);
    free(k);
    free(v);
    free(out);
    st_close(x.f);
}

START_TEST(falcon_attention_vs_transformers)
{
    falcon_fixture("falcon_alibi_attn.safetensors", 1);
    falcon_fixture("falcon_mqa_attn.safetensors", 0);
}
END_TEST

/* ---- element-wise ------------------------------------------------------- */

START_TEST(elementwise_vs_double)
{
    qthreads *pool = qthreads_create(3, NULL);
    size_t sizes[] = {1, 37, 4544 * 3 + 5, 100003};
    for (size_t si = 0; si < 4; si++) {
        size_t n = sizes[si];
        float *a = frand(n, 3.0f), *b = frand(n, 3.0f), *y = fvec(n), *y1 = fvec(n);
        double *ref = malloc(n * sizeof *ref);
        cpu_swiglu(pool, y, a, b, n, QDT_F32);
        for (size_t i = 0; i < n; i++)
            ref[i] = a[i] / (1 + exp(-(double)a[i])) * b[i];
        CHECK_REL(rel_err_d(y, ref, n), 1e-5, "swiglu n %zu", n);
        cpu_swiglu(NULL, y1, a, b, n, QDT_F32);
        ck_assert(memcmp(y, y1, n * 4) == 0);
        cpu_gelu(pool, y, a, n, QDT_F32);
        for (size_t i = 0; i < n; i++)
            ref[i] = 0.5 * a[i] * erfc(-a[i] / sqrt(2.0)); /* = (1 + erf), no cancellation */
        CHECK_REL(rel_err_d(y, ref, n), 1e-5, "gelu n %zu", n);
        cpu_add(pool, y, a, b, n, QDT_F32);
        for (size_t i = 0; i < n; i++)
            ck_assert(y[i] == a[i] + b[i]);
        cpu_scale(pool, y, a, 0.37f, n, QDT_F32);
        for (size_t i = 0; i < n; i++)
            ck_assert(y[i] == a[i] * 0.37f);
        cpu_scale(pool, y, a, 1.0f, n, QDT_F32);
        ck_assert(memcmp(y, a, n * 4) == 0);
        /* bf16 activations: HF rounds silu, then the product */
        cpu_swiglu(pool, y, a, b, n, QDT_BF16);
        for (size_t i = 0; i < n; i++) {
            float s = qbf16_to_f32(qf32_to_bf16(a[i] / (1.0f + expf(-a[i]))));
            ck_assert(y[i] == qbf16_to_f32(qf32_to_bf16(s * b[i])));
        }
        cpu_add(pool, y, a, b, n, QDT_F16);
        for (size_t i = 0; i < n; i++)
            ck_assert(y[i] == qf16_to_f32(qf32_to_f16(a[i] + b[i])));
        /* in place */
        memcpy(y, a, n * 4);
        cpu_gelu(pool, y, y, n, QDT_BF16);
        for (size_t i = 0; i < n; i++)
            ck_assert(fabs(y[i] - ref[i]) <= 1e-5 * 3 + fabs(ref[i]) / 128);
        free(a);
        free(b);
        free(y);
        free(y1);
        free(ref);
    }
    qthreads_free(pool);
}
END_TEST

START_TEST(threads_identical)
{
    /* norms and rotary over many rows: 1 and 3 threads give the same bytes */
    qthreads *pool = qthreads_create(3, NULL);
    int rows = 37, dim = 4544;
    size_t n = (size_t)rows * dim;
    float *x = frand(n, 1), *w = frand((size_t)dim, 1), *b = frand((size_t)dim, 1);
    float *y1 = fvec(n), *y3 = fvec(n);
    cpu_rmsnorm(NULL, x, y1, rows, dim, w, QDT_F32, 1e-6f, QDT_BF16);
    cpu_rmsnorm(pool, x, y3, rows, dim, w, QDT_F32, 1e-6f, QDT_BF16);
    ck_assert(memcmp(y1, y3, n * 4) == 0);
    cpu_layernorm(NULL, x, y1, rows, dim, w, b, QDT_F32, 1e-5f, QDT_F32);
    cpu_layernorm(pool, x, y3, rows, dim, w, b, QDT_F32, 1e-5f, QDT_F32);
    ck_assert(memcmp(y1, y3, n * 4) == 0);
    qrope_params p = {.type = QROPE_DYNAMIC, .theta = 10000, .factor = 2,
                      .max_position_embeddings = 20, .head_dim = 64};
    qrope r;
    ck_assert(qrope_init(&r, &p, NULL) == QRUN_OK);
    int32_t pos[37];
    for (int t = 0; t < rows; t++)
        pos[t] = 5 + t;
    memcpy(y1, x, n * 4);
    memcpy(y3, x, n * 4);
    cpu_rope(NULL, &r, 42, y1, dim, rows, 71, pos, QDT_F32);
    cpu_rope(pool, &r, 42, y3, dim, rows, 71, pos, QDT_F32);
    ck_assert(memcmp(y1, y3, n * 4) == 0);
    free(x);
    free(w);
    free(b);
    free(y1);
    free(y3);
    qthreads_free(pool);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cpu_ops");
    TCase *tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, embed_all_dtypes);
    tcase_add_test(tc, norms_vs_double);
    tcase_add_test(tc, norms_vs_transformers);
    tcase_add_test(tc, rope_vs_double);
    tcase_add_test(tc, rope_params_refused);
    tcase_add_test(tc, rope_vs_transformers);
    tcase_add_test(tc, alibi_vs_transformers);
    tcase_add_test(tc, attention_vs_double);
    tcase_add_test(tc, attention_output_rounding);
    tcase_add_test(tc, llama_attention_vs_transformers);
    tcase_add_test(tc, falcon_attention_vs_transformers);
    tcase_add_test(tc, elementwise_vs_double);
    tcase_add_test(tc, threads_identical);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
