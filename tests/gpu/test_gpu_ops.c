/* GPU element-wise ops (src/kernels/ops.cu, norm.cu, rope.cu) against their
 * CPU references (src/cpu/ops.c, and src/cpu/backend.c for the embedding's
 * rounding and the qkv split) on fresh random inputs: every act dtype, sizes
 * that are not multiples of the vector width or block size, row counts up to
 * 512, 71 heads, outputs poisoned with NaN before each run, in-place calls,
 * misaligned pointers (the scalar paths), and a captured CUDA graph replayed
 * at two positions.
 *
 * Bounds (derived in the kernels' header comments):
 *  - embed, add, qkv_split: bit for bit.
 *  - RMSNorm / LayerNorm: the statistics are f32 sums in another order than
 *    the CPU's, within g = (dim/8 + 80) * 2^-24 of each other relatively
 *    (mean(|x|) for LayerNorm's mean). An f32 output may differ by
 *    2g * (|x| + mean|x|) * rstd * |w| (+ 4 ulps; the 2 covers the mean's
 *    and rstd's differences adding up); an f16/bf16 output is equal
 *    except where that f32 difference straddles a rounding boundary: those
 *    "flips" may be off by two act ulps (plus the f32 bound) and must be
 *    rare (at most 1% + 2 of the elements; about 0.1% expected for f16 at
 *    dim 8192, random rounding would give ~50%).
 *  - rotary: double sincos on both sides, so equal except for rare f32 ties:
 *    flips of 3 act ulps of |a| + |b| plus one of the result, <= 0.1% + 2.
 *  - SwiGLU: CUDA's expf (2 ulps) vs glibc's: f32 within 8 ulps; f16/bf16
 *    equal but for flips of two act ulps, <= 0.5% + 2.
 *  - GELU: erfcf on both sides (4 + ~3 ulps): f32 within 16 ulps; f16/bf16
 *    flips of one act ulp, <= 1% + 2.
 * QRUN_TEST_QUICK=1 (compute-sanitizer) drops the largest sizes. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "cuda/device.h"
#include "dtype.h"
#include "kernels/attention.h"
#include "kernels/ops.h"
#include "testutil.h"

static tu_rng rng;
static cudaStream_t stream;
static int quick;

static const qdtype acts[3] = {QDT_F32, QDT_F16, QDT_BF16};

#define CUDA_OK(call)                                                                         \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        ck_assert_msg(e_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));            \
    } while (0)

/* A launcher call that must succeed; `err` names what failed. */
#define LAUNCH_OK(call)                                                                       \
    do {                                                                                      \
        qerr err = {0};                                                                       \
        ck_assert_msg((call), "%s: %s", #call, err.msg);                                      \
    } while (0)

static void setup(void)
{
    rng.s = tu_seed();
    /* a blocking stream: it waits for the legacy-stream memsets and copies
     * that fill the buffers */
    CUDA_OK(cudaStreamCreate(&stream));
}

static void teardown(void)
{
    cudaStreamDestroy(stream);
}

/* ---- host and device buffers -------------------------------------------- */

static void *hmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

static float *frand(size_t n, float scale, float offset)
{
    float *p = hmalloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = tu_normal(&rng) * scale + offset;
    return p;
}

static int irand(int lo, int hi) /* [lo, hi] */
{
    return lo + (int)(tu_uniform(&rng) * (double)(hi - lo + 1));
}

/* A device buffer filled with 0xff bytes: NaN as f32, so an element a kernel
 * fails to write cannot pass a comparison. */
static void *dpoison(size_t bytes)
{
    void *d = NULL;
    CUDA_OK(cudaMalloc(&d, bytes ? bytes : 1));
    CUDA_OK(cudaMemset(d, 0xff, bytes ? bytes : 1));
    return d;
}

static void *dcopy(const void *h, size_t bytes)
{
    void *d = dpoison(bytes);
    CUDA_OK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

static void fetch(void *h, const void *d, size_t bytes)
{
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
}

/* A device qk_step at p0 with n ids. */
static qk_step *dstep(int p0, int n, const int32_t *ids)
{
    size_t bytes = sizeof(qk_step) + (size_t)(n > 0 ? n : 1) * sizeof(int32_t);
    qk_step *h = hmalloc(bytes);
    memset(h, 0, bytes);
    h->p0 = p0;
    h->n = n;
    if (ids)
        memcpy(h->ids, ids, (size_t)n * sizeof *ids);
    qk_step *d = dcopy(h, bytes);
    free(h);
    return d;
}

/* values as a [n] f32/f16/bf16 array (the bits the CPU and GPU both read) */
static void *as_dtype(const float *v, size_t n, qdtype dt)
{
    if (dt == QDT_F32) {
        float *p = hmalloc(n * 4);
        memcpy(p, v, n * 4);
        return p;
    }
    uint16_t *p = hmalloc(n * 2);
    for (size_t i = 0; i < n; i++)
        p[i] = dt == QDT_F16 ? qf32_to_f16(v[i]) : qf32_to_bf16(v[i]);
    return p;
}

static size_t dt_size(qdtype dt) { return dt == QDT_F32 ? 4 : 2; }

/* ---- comparisons -------------------------------------------------------- */

/* One unit in the last place of a value of magnitude |r| in `act` (f16's
 * subnormal spacing below its smallest normal). */
static double ulp_act(double r, qdtype act)
{
    int mant = act == QDT_BF16 ? 7 : act == QDT_F16 ? 10 : 23;
    int min_exp = act == QDT_F16 ? -14 : -126;
    int e = min_exp;
    if (r != 0 && isfinite(r)) {
        frexp(fabs(r), &e);
        e -= 1; /* |r| in [2^e, 2^(e+1)) */
        if (e < min_exp)
            e = min_exp;
    }
    return ldexp(1.0, e - mant);
}

/* One assertion for the whole array: Check records every passing assertion,
 * which costs far more than the comparison. */
static void check_bitwise(const char *what, const float *got, const float *ref, size_t n)
{
    size_t i = 0;
    while (i < n && memcmp(&got[i], &ref[i], 4) == 0)
        i++;
    ck_assert_msg(i == n, "%s: element %zu of %zu: got %.9g, want %.9g", what, i, n,
                  i < n ? (double)got[i] : 0.0, i < n ? (double)ref[i] : 0.0);
}

/* |got - ref| <= tol[i] everywhere (tol NULL: 0), except for at most
 * max_flips elements that may go up to tol[i] + flip[i]. */
static void check_close(const char *what, const float *got, const float *ref, size_t n,
                        const double *tol, const double *flip, size_t max_flips)
{
    size_t flips = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)ref[i]);
        double t = tol ? tol[i] : 0.0;
        if (e <= t)
            continue; /* NaN fails both tests */
        ck_assert_msg(e <= t + flip[i], "%s: element %zu of %zu: got %.9g, want %.9g (bound %.3g)",
                      what, i, n, (double)got[i], (double)ref[i], t + flip[i]);
        flips++;
    }
    ck_assert_msg(flips <= max_flips, "%s: %zu of %zu elements beyond the f32 bound (at most %zu)",
                  what, flips, n, max_flips);
}

/* ---- embedding ---------------------------------------------------------- */

START_TEST(embed_matches_cpu)
{
    const int V = 97, n = 7;
    const int dims[] = {333, 576, 4544};
    for (int di = 0; di < 3; di++)
        for (int tdi = 0; tdi < 3; tdi++)
            for (int ai = 0; ai < 3; ai++)
                for (int mis = 0; mis < 2; mis++) {
                    const int dim = dims[di];
                    const qdtype tdt = acts[tdi], act = acts[ai];
                    /* mis: the table starts one element into its buffer, so
                     * the vector path's alignment does not hold */
                    const size_t rows_el = (size_t)V * (size_t)dim + (size_t)mis;
                    float *vals = frand(rows_el, 1.5f, 0.0f);
                    void *table = as_dtype(vals, rows_el, tdt);
                    int32_t ids[7];
                    for (int i = 0; i < n; i++)
                        ids[i] = irand(0, V - 1);
                    ids[n - 1] = V - 1; /* the last row is read too */
                    const char *tab = (const char *)table + (size_t)mis * dt_size(tdt);
                    float *ref = hmalloc((size_t)n * dim * 4), *got = hmalloc((size_t)n * dim * 4);
                    cpu_embed(tab, tdt, dim, ids, n, ref);
                    /* src/cpu/backend.c cpu_embed_op: rounded to act only when
                     * the table's dtype is another one */
                    if (act != QDT_F32 && tdt != act)
                        for (size_t i = 0; i < (size_t)n * dim; i++)
                            ref[i] = cpu_round_act(ref[i], act);
                    char *dtab = dcopy(table, rows_el * dt_size(tdt));
                    qk_step *st = dstep(11, n, ids);
                    float *dout = dpoison((size_t)n * dim * 4);
                    LAUNCH_OK(qk_embed(dtab + (size_t)mis * dt_size(tdt), tdt, dim, st, n, act,
                                       dout, stream, &err));
                    fetch(got, dout, (size_t)n * dim * 4);
                    char what[96];
                    snprintf(what, sizeof what, "embed dim %d table %s act %s%s", dim,
                             qdtype_name(tdt), qdtype_name(act), mis ? " misaligned" : "");
                    check_bitwise(what, got, ref, (size_t)n * dim);
                    cudaFree(dtab);
                    cudaFree(st);
                    cudaFree(dout);
                    free(vals);
                    free(table);
                    free(ref);
                    free(got);
                }
}
END_TEST

/* ---- norms -------------------------------------------------------------- */

typedef struct norm_case {
    int rows, dim;
} norm_case;

static const norm_case norm_cases[] = {
    {1, 8192}, {7, 333}, {5, 4544}, {64, 576}, {3, 2048}, {3, 9001}, {512, 576}, {512, 8192},
};

static int n_norm_cases(void) { return quick ? 6 : (int)(sizeof norm_cases / sizeof *norm_cases); }

/* Tolerances of one norm call (see the file comment). */
static void norm_bounds(const float *x, int rows, int dim, const float *w, const float *ref,
                        bool layer, float eps, qdtype act, double *tol, double *flip)
{
    const double g2 = 2.0 * ((double)dim / 8.0 + 80.0) * 0x1p-24;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        double mean = 0, mean_abs = 0, ss = 0;
        for (int i = 0; i < dim; i++) {
            mean += xr[i];
            mean_abs += fabs(xr[i]);
        }
        mean /= dim;
        mean_abs /= dim;
        for (int i = 0; i < dim; i++) {
            double d = layer ? xr[i] - mean : xr[i];
            ss += d * d;
        }
        const double rstd = 1.0 / sqrt(ss / dim + eps);
        for (int i = 0; i < dim; i++) {
            size_t k = (size_t)r * dim + i;
            double f32b = g2 * (fabs(xr[i]) + (layer ? mean_abs : 0.0)) * rstd * fabs(w[i]) +
                          4.0 * 0x1p-24 * fabs(ref[k]);
            if (act == QDT_F32) {
                tol[k] = f32b;
                flip[k] = 0;
            } else {
                tol[k] = 0;
                flip[k] = f32b + 2.0 * ulp_act(ref[k], act);
            }
        }
    }
}

static void run_norm(bool layer, const norm_case *c, qdtype w_dt, qdtype act, bool in_place)
{
    const int rows = c->rows, dim = c->dim;
    /* the largest case (512 x 8192) only with the dtype pairs models use:
     * weights in the act dtype, or f32 weights under bf16 */
    if ((size_t)rows * dim > (1u << 20) && w_dt != act && !(w_dt == QDT_F32 && act == QDT_BF16))
        return;
    const size_t n = (size_t)rows * dim;
    const float eps = layer ? 1e-5f : 1e-6f;
    /* LayerNorm rows get a mean far from 0: the two-pass variance matters */
    float *x = frand(n, 2.0f, layer ? 4.0f : 0.0f);
    float *wv = frand((size_t)dim, 0.1f, 1.0f), *bv = frand((size_t)dim, 0.1f, 0.0f);
    void *w = as_dtype(wv, (size_t)dim, w_dt), *b = as_dtype(bv, (size_t)dim, w_dt);
    /* the values the kernels see, for the bounds */
    for (int i = 0; i < dim; i++)
        wv[i] = w_dt == QDT_F32 ? wv[i] : w_dt == QDT_F16 ? qf16_to_f32(((uint16_t *)w)[i])
                                                          : qbf16_to_f32(((uint16_t *)w)[i]);
    float *ref = hmalloc(n * 4), *got = hmalloc(n * 4);
    if (layer)
        cpu_layernorm(NULL, x, ref, rows, dim, w, b, w_dt, eps, act);
    else
        cpu_rmsnorm(NULL, x, ref, rows, dim, w, w_dt, eps, act);

    float *dx = dcopy(x, n * 4);
    float *dy = in_place ? dx : dpoison(n * 4);
    void *dw = dcopy(w, (size_t)dim * dt_size(w_dt)), *db = dcopy(b, (size_t)dim * dt_size(w_dt));
    if (layer)
        LAUNCH_OK(qk_layernorm(dx, dy, rows, dim, dw, db, w_dt, eps, act, stream, &err));
    else
        LAUNCH_OK(qk_rmsnorm(dx, dy, rows, dim, dw, w_dt, eps, act, stream, &err));
    fetch(got, dy, n * 4);

    double *tol = hmalloc(n * sizeof *tol), *flip = hmalloc(n * sizeof *flip);
    norm_bounds(x, rows, dim, wv, ref, layer, eps, act, tol, flip);
    char what[128];
    snprintf(what, sizeof what, "%s %dx%d w %s act %s%s", layer ? "layernorm" : "rmsnorm", rows,
             dim, qdtype_name(w_dt), qdtype_name(act), in_place ? " in place" : "");
    check_close(what, got, ref, n, tol, flip, act == QDT_F32 ? 0 : n / 100 + 2);

    cudaFree(dx);
    if (!in_place)
        cudaFree(dy);
    cudaFree(dw);
    cudaFree(db);
    free(x);
    free(wv);
    free(bv);
    free(w);
    free(b);
    free(ref);
    free(got);
    free(tol);
    free(flip);
}

START_TEST(rmsnorm_matches_cpu)
{
    int k = 0;
    for (int ci = 0; ci < n_norm_cases(); ci++)
        for (int wi = 0; wi < 3; wi++)
            for (int ai = 0; ai < 3; ai++)
                run_norm(false, &norm_cases[ci], acts[wi], acts[ai], (k++ % 2) == 1);
}
END_TEST

START_TEST(layernorm_matches_cpu)
{
    int k = 0;
    for (int ci = 0; ci < n_norm_cases(); ci++)
        for (int wi = 0; wi < 3; wi++)
            for (int ai = 0; ai < 3; ai++)
                run_norm(true, &norm_cases[ci], acts[wi], acts[ai], (k++ % 2) == 0);
}
END_TEST

/* qk_add_rmsnorm / qk_add_layernorm equal qk_add followed by the norm, bit
 * for bit (the same operations in one launch), for the new residual x and
 * for y; y may be the addend itself (Falcon's parallel blocks). */
static void run_add_norm(bool layer, const norm_case *c, qdtype act, bool y_is_t)
{
    const int rows = c->rows, dim = c->dim;
    const size_t n = (size_t)rows * dim;
    const float eps = layer ? 1e-5f : 1e-6f;
    float *x = frand(n, 2.0f, 0.0f), *t = frand(n, 1.0f, 0.5f);
    float *wv = frand((size_t)dim, 0.1f, 1.0f), *bv = frand((size_t)dim, 0.1f, 0.0f);
    void *w = as_dtype(wv, (size_t)dim, act), *b = as_dtype(bv, (size_t)dim, act);
    void *dw = dcopy(w, (size_t)dim * dt_size(act)), *db = dcopy(b, (size_t)dim * dt_size(act));
    /* the sequence */
    float *sx = dcopy(x, n * 4), *st = dcopy(t, n * 4), *sy = dpoison(n * 4);
    LAUNCH_OK(qk_add(sx, sx, st, n, act, stream, &err));
    if (layer)
        LAUNCH_OK(qk_layernorm(sx, sy, rows, dim, dw, db, act, eps, act, stream, &err));
    else
        LAUNCH_OK(qk_rmsnorm(sx, sy, rows, dim, dw, act, eps, act, stream, &err));
    /* the fused launch */
    float *fx = dcopy(x, n * 4), *ft = dcopy(t, n * 4), *fy = y_is_t ? ft : dpoison(n * 4);
    if (layer)
        LAUNCH_OK(qk_add_layernorm(fx, ft, fy, rows, dim, dw, db, act, eps, act, stream, &err));
    else
        LAUNCH_OK(qk_add_rmsnorm(fx, ft, fy, rows, dim, dw, act, eps, act, stream, &err));
    float *a = hmalloc(n * 4), *bb = hmalloc(n * 4);
    char what[128];
    snprintf(what, sizeof what, "add+%s %dx%d act %s%s: residual", layer ? "layernorm" : "rmsnorm",
             rows, dim, qdtype_name(act), y_is_t ? " (y = t)" : "");
    fetch(a, sx, n * 4);
    fetch(bb, fx, n * 4);
    check_bitwise(what, bb, a, n);
    snprintf(what, sizeof what, "add+%s %dx%d act %s%s: output", layer ? "layernorm" : "rmsnorm",
             rows, dim, qdtype_name(act), y_is_t ? " (y = t)" : "");
    fetch(a, sy, n * 4);
    fetch(bb, fy, n * 4);
    check_bitwise(what, bb, a, n);
    cudaFree(sx);
    cudaFree(st);
    cudaFree(sy);
    cudaFree(fx);
    cudaFree(ft);
    if (!y_is_t)
        cudaFree(fy);
    cudaFree(dw);
    cudaFree(db);
    free(x);
    free(t);
    free(wv);
    free(bv);
    free(w);
    free(b);
    free(a);
    free(bb);
}

START_TEST(add_norm_equals_add_then_norm)
{
    int k = 0;
    for (int ci = 0; ci < n_norm_cases(); ci++)
        for (int ai = 0; ai < 3; ai++, k++) {
            run_add_norm(false, &norm_cases[ci], acts[ai], k % 2 == 1);
            run_add_norm(true, &norm_cases[ci], acts[ai], k % 2 == 0);
        }
}
END_TEST

/* ---- rotary ------------------------------------------------------------- */

static qrope make_rope(qrope_type type, int head_dim)
{
    qrope_params p = {.type = type, .theta = 10000.0, .head_dim = head_dim};
    if (type == QROPE_LINEAR)
        p.factor = 2.0;
    if (type == QROPE_DYNAMIC) {
        p.factor = 2.0;
        p.max_position_embeddings = 2048;
    }
    if (type == QROPE_LLAMA3) {
        p.theta = 500000.0;
        p.factor = 8.0;
        p.low_freq_factor = 1.0;
        p.high_freq_factor = 4.0;
        p.original_max_position_embeddings = 8192;
    }
    qrope r;
    qerr err = {0};
    ck_assert_msg(qrope_init(&r, &p, &err) == QRUN_OK, "qrope_init: %s", err.msg);
    return r;
}

static void run_rope(qrope_type type, int head_dim, int n_heads, int ld, int n_tokens, int p0,
                     qdtype act)
{
    const qrope r = make_rope(type, head_dim);
    const int half = head_dim / 2;
    const int64_t seq_len = (int64_t)p0 + n_tokens;
    if (type == QROPE_DYNAMIC)
        ck_assert(seq_len > r.p.max_position_embeddings); /* the rescaled base */
    float inv[CPU_MAX_HEAD_DIM / 2];
    qrope_inv_freq(&r, seq_len, inv);

    const size_t n = (size_t)n_tokens * ld;
    float *x = frand(n, 1.0f, 0.0f), *ref = hmalloc(n * 4), *got = hmalloc(n * 4);
    memcpy(ref, x, n * 4);
    int32_t *pos = hmalloc((size_t)n_tokens * sizeof *pos);
    for (int t = 0; t < n_tokens; t++)
        pos[t] = p0 + t;
    cpu_rope(NULL, &r, seq_len, ref, ld, n_tokens, n_heads, pos, act);

    float *dx = dcopy(x, n * 4), *dinv = dcopy(inv, (size_t)half * 4);
    qk_step *st = dstep(p0, n_tokens, NULL);
    LAUNCH_OK(qk_rope(dinv, r.attention_scaling, head_dim, dx, ld, n_tokens, n_heads, st, act,
                      stream, &err));
    fetch(got, dx, n * 4);

    /* columns past the heads must be untouched (ref keeps them, bitwise) */
    double *flip = hmalloc(n * sizeof *flip);
    for (size_t k = 0; k < n; k++) {
        size_t col = k % (size_t)ld;
        if (col >= (size_t)n_heads * head_dim) {
            flip[k] = 0;
            continue;
        }
        size_t in_head = col % (size_t)head_dim, partner = in_head < (size_t)half ? k + half : k - half;
        flip[k] = 3.0 * ulp_act(fabs(x[k]) + fabs(x[partner]), act) + ulp_act(ref[k], act);
    }
    char what[128];
    snprintf(what, sizeof what, "rope type %d D %d heads %d ld %d tokens %d p0 %d act %s",
             (int)type, head_dim, n_heads, ld, n_tokens, p0, qdtype_name(act));
    check_close(what, got, ref, n, NULL, flip, n / 1000 + 2);
    /* and the rotation happened: with p0 > 0 every angle is nonzero */
    ck_assert_msg(memcmp(got, x, n * 4) != 0, "%s: x unchanged", what);

    cudaFree(dx);
    cudaFree(dinv);
    cudaFree(st);
    free(x);
    free(ref);
    free(got);
    free(pos);
    free(flip);
}

START_TEST(rope_matches_cpu)
{
    const qrope_type types[] = {QROPE_DEFAULT, QROPE_LINEAR, QROPE_DYNAMIC, QROPE_LLAMA3};
    /* p0 per type: dynamic past max_position (2048), llama3 past the
     * original context (8192), default far out (large angles) */
    const int p0s[] = {70000, 5, 3000, 9000};
    for (int ti = 0; ti < 4; ti++)
        for (int ai = 0; ai < 3; ai++) {
            const qrope_type t = types[ti];
            const qdtype act = acts[ai];
            /* Falcon-7B's q: 71 heads of 64 in a fused row (q, k, v) */
            run_rope(t, 64, 71, 73 * 64, quick ? 3 : 37, p0s[ti], act);
            /* decode, a row of exactly the heads */
            run_rope(t, 128, quick ? 4 : 32, (quick ? 4 : 32) * 128, 1, p0s[ti] + 17, act);
            /* head_dim 80 (half 40) with an odd row stride: the scalar path */
            run_rope(t, 80, 5, 5 * 80 + 3, quick ? 2 : 9, p0s[ti] + 1, act);
            /* head_dim 80 with the float4 path */
            run_rope(t, 80, 5, 6 * 80, 4, p0s[ti] + 2, act);
        }
}
END_TEST

/* qk_rope_store equals qk_rope on q, qk_rope on k and qk_kv_store, bit for
 * bit: q, k and both caches (f16 and f32), at the token positions only. */
static void run_rope_store(int head_dim, int hq, int hkv, int n_tokens, int p0, qdtype act,
                           qdtype kv_dt, bool odd_ld)
{
    const qrope r = make_rope(QROPE_DEFAULT, head_dim);
    const int half = head_dim / 2, n_ctx = p0 + n_tokens + 5;
    float inv[CPU_MAX_HEAD_DIM / 2];
    qrope_inv_freq(&r, p0 + n_tokens, inv);
    const int ld_q = hq * head_dim + (odd_ld ? 3 : 0), ld_k = hkv * head_dim + (odd_ld ? 1 : 0);
    const size_t nq = (size_t)n_tokens * ld_q, nk = (size_t)n_tokens * ld_k;
    float *q = frand(nq, 1.0f, 0.0f), *k = frand(nk, 1.0f, 0.0f), *v = frand(nk, 1.0f, 0.0f);
    float *dinv = dcopy(inv, (size_t)half * 4);
    qk_step *st = dstep(p0, n_tokens, NULL);
    const size_t cache = (size_t)hkv * n_ctx * head_dim * dt_size(kv_dt);
    qk_kv_layer a = {dpoison(cache), dpoison(cache), kv_dt, hkv, n_ctx, head_dim};
    qk_kv_layer b = {dpoison(cache), dpoison(cache), kv_dt, hkv, n_ctx, head_dim};
    CUDA_OK(cudaMemset(a.k, 0, cache));
    CUDA_OK(cudaMemset(a.v, 0, cache));
    CUDA_OK(cudaMemset(b.k, 0, cache));
    CUDA_OK(cudaMemset(b.v, 0, cache));
    float *aq = dcopy(q, nq * 4), *ak = dcopy(k, nk * 4), *av = dcopy(v, nk * 4);
    float *bq = dcopy(q, nq * 4), *bk = dcopy(k, nk * 4), *bv = dcopy(v, nk * 4);
    LAUNCH_OK(qk_rope(dinv, r.attention_scaling, head_dim, aq, ld_q, n_tokens, hq, st, act,
                      stream, &err));
    LAUNCH_OK(qk_rope(dinv, r.attention_scaling, head_dim, ak, ld_k, n_tokens, hkv, st, act,
                      stream, &err));
    LAUNCH_OK(qk_kv_store(&a, st, n_tokens, ak, ld_k, av, ld_k, stream, &err));
    LAUNCH_OK(qk_rope_store(dinv, r.attention_scaling, head_dim, bq, ld_q, hq, bk, ld_k, bv, ld_k,
                            n_tokens, st, act, &b, stream, &err));
    char what[160];
    snprintf(what, sizeof what, "rope_store D %d heads %d/%d tokens %d p0 %d act %s kv %s%s",
             head_dim, hq, hkv, n_tokens, p0, qdtype_name(act), qdtype_name(kv_dt),
             odd_ld ? " odd strides" : "");
    float *ha = hmalloc(nq * 4), *hb = hmalloc(nq * 4);
    fetch(ha, aq, nq * 4);
    fetch(hb, bq, nq * 4);
    check_bitwise(what, hb, ha, nq);
    fetch(ha, ak, nk * 4);
    fetch(hb, bk, nk * 4);
    check_bitwise(what, hb, ha, nk);
    unsigned char *ca = hmalloc(cache), *cb = hmalloc(cache);
    fetch(ca, a.k, cache);
    fetch(cb, b.k, cache);
    ck_assert_msg(memcmp(ca, cb, cache) == 0, "%s: K caches differ", what);
    fetch(ca, a.v, cache);
    fetch(cb, b.v, cache);
    ck_assert_msg(memcmp(ca, cb, cache) == 0, "%s: V caches differ", what);
    void *bufs[] = {a.k, a.v, b.k, b.v, aq, ak, av, bq, bk, bv, dinv, st};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        cudaFree(bufs[i]);
    free(q);
    free(k);
    free(v);
    free(ha);
    free(hb);
    free(ca);
    free(cb);
}

START_TEST(rope_store_equals_rope_and_store)
{
    for (int ai = 0; ai < 3; ai++) {
        /* decode of Llama-2-7B (MHA), of a GQA model, of Falcon-7B (MQA, 71 heads) */
        run_rope_store(128, 32, 32, 1, 300, acts[ai], QDT_F16, false);
        run_rope_store(128, 32, 8, 1, 17, acts[ai], QDT_F32, false);
        run_rope_store(64, 71, 1, 1, 1000, acts[ai], QDT_F16, false);
        /* a few prompt tokens; scalar path with odd strides and head_dim 80 */
        run_rope_store(64, 8, 2, quick ? 3 : 37, 5, acts[ai], QDT_F16, false);
        run_rope_store(80, 5, 5, 4, 9, acts[ai], QDT_F16, true);
    }
}
END_TEST

/* ---- SwiGLU, GELU, add -------------------------------------------------- */

enum ew_kind { EW_SWIGLU, EW_GELU, EW_ADD };

/* alias: 0 separate output, 1 out == first input, 2 out == second input,
 * 3 separate but every pointer one float off 16-byte alignment */
static void run_ew(enum ew_kind kind, size_t n, qdtype act, int alias)
{
    const int off = alias == 3 ? 1 : 0;
    float *a = frand(n + off, 3.0f, 0.0f), *b = frand(n + off, 2.0f, 0.5f);
    float *ref = hmalloc(n * 4), *got = hmalloc(n * 4);
    if (kind == EW_SWIGLU)
        cpu_swiglu(NULL, ref, a + off, b + off, n, act);
    else if (kind == EW_GELU)
        cpu_gelu(NULL, ref, a + off, n, act);
    else
        cpu_add(NULL, ref, a + off, b + off, n, act);

    float *da = dcopy(a, (n + off) * 4), *db = dcopy(b, (n + off) * 4);
    float *dout = alias == 1 ? da : alias == 2 ? db : dpoison((n + off) * 4);
    qerr err = {0};
    bool ok;
    if (kind == EW_SWIGLU)
        ok = qk_swiglu(dout + off, da + off, db + off, n, act, stream, &err);
    else if (kind == EW_GELU)
        ok = qk_gelu(dout + off, da + off, n, act, stream, &err);
    else
        ok = qk_add(dout + off, da + off, db + off, n, act, stream, &err);
    ck_assert_msg(ok, "launch: %s", err.msg);
    fetch(got, dout + off, n * 4);

    const char *names[] = {"swiglu", "gelu", "add"};
    char what[96];
    snprintf(what, sizeof what, "%s n %zu act %s alias %d", names[kind], n, qdtype_name(act), alias);
    if (kind == EW_ADD) {
        check_bitwise(what, got, ref, n);
    } else {
        /* f32: 8 (swiglu) or 16 (gelu) ulps; 16-bit acts: rare flips */
        double *tol = hmalloc(n * sizeof *tol), *flip = hmalloc(n * sizeof *flip);
        const double f32_ulps = kind == EW_SWIGLU ? 8.0 : 16.0;
        for (size_t i = 0; i < n; i++) {
            double f32b = f32_ulps * 0x1p-23 * fabs(ref[i]) + 1e-30;
            tol[i] = act == QDT_F32 ? f32b : 0.0;
            flip[i] = act == QDT_F32 ? 0.0 : f32b + (kind == EW_SWIGLU ? 2.0 : 1.0) * ulp_act(ref[i], act);
        }
        size_t max_flips = act == QDT_F32 ? 0 : kind == EW_SWIGLU ? n / 200 + 2 : n / 100 + 2;
        check_close(what, got, ref, n, tol, flip, max_flips);
        free(tol);
        free(flip);
    }
    cudaFree(da);
    cudaFree(db);
    if (alias == 0 || alias == 3)
        cudaFree(dout);
    free(a);
    free(b);
    free(ref);
    free(got);
}

static void run_ew_all(enum ew_kind kind)
{
    const size_t sizes[] = {1, 3, 333, 4544 * 7 + 3, 14336 * 64 + 1};
    const int n_sizes = quick ? 4 : 5;
    for (int si = 0; si < n_sizes; si++)
        for (int ai = 0; ai < 3; ai++)
            for (int alias = 0; alias < 4; alias++) {
                if (kind == EW_GELU && alias == 2)
                    continue; /* one input */
                if (si == 4 && alias >= 2)
                    continue; /* the largest size: separate and in place only */
                run_ew(kind, sizes[si], acts[ai], alias);
            }
}

START_TEST(swiglu_matches_cpu) { run_ew_all(EW_SWIGLU); }
END_TEST

START_TEST(gelu_matches_cpu) { run_ew_all(EW_GELU); }
END_TEST

START_TEST(add_matches_cpu) { run_ew_all(EW_ADD); }
END_TEST

/* ---- qkv split ---------------------------------------------------------- */

/* cpu_qkv_split (src/cpu/backend.c) element by element: the fused row's
 * head slots in the order the layout stores them. */
static void qkv_split_ref(int layout, const float *qkv, int n, int hq, int hkv, int d, float *q,
                          float *k, float *v)
{
    const int slots = hq + 2 * hkv, pg = hq / hkv;
    for (int t = 0; t < n; t++) {
        const float *src = qkv + (size_t)t * slots * d;
        float *qt = q + (size_t)t * hq * d, *kt = k + (size_t)t * hkv * d, *vt = v + (size_t)t * hkv * d;
        for (int e = 0; e < d; e++) {
            if (layout == 0) {
                for (int g = 0; g < hkv; g++) {
                    for (int j = 0; j < pg; j++)
                        qt[(g * pg + j) * d + e] = src[(g * (pg + 2) + j) * d + e];
                    kt[g * d + e] = src[(g * (pg + 2) + pg) * d + e];
                    vt[g * d + e] = src[(g * (pg + 2) + pg + 1) * d + e];
                }
            } else if (layout == 1) {
                for (int h = 0; h < hq; h++)
                    qt[h * d + e] = src[h * d + e];
                for (int g = 0; g < hkv; g++) {
                    kt[g * d + e] = src[(hq + g) * d + e];
                    vt[g * d + e] = src[(hq + hkv + g) * d + e];
                }
            } else {
                for (int h = 0; h < hq; h++) {
                    qt[h * d + e] = src[(3 * h) * d + e];
                    kt[h * d + e] = src[(3 * h + 1) * d + e];
                    vt[h * d + e] = src[(3 * h + 2) * d + e];
                }
            }
        }
    }
}

static void run_qkv(int layout, int n, int hq, int hkv, int d)
{
    const size_t nf = (size_t)n * (hq + 2 * hkv) * d, nq = (size_t)n * hq * d, nk = (size_t)n * hkv * d;
    float *qkv = frand(nf, 1.0f, 0.0f);
    float *rq = hmalloc(nq * 4), *rk = hmalloc(nk * 4), *rv = hmalloc(nk * 4);
    float *gq = hmalloc(nq * 4), *gk = hmalloc(nk * 4), *gv = hmalloc(nk * 4);
    qkv_split_ref(layout, qkv, n, hq, hkv, d, rq, rk, rv);
    float *dqkv = dcopy(qkv, nf * 4), *dq = dpoison(nq * 4), *dk = dpoison(nk * 4), *dv = dpoison(nk * 4);
    LAUNCH_OK(qk_qkv_split(layout, dqkv, n, hq, hkv, d, dq, dk, dv, stream, &err));
    fetch(gq, dq, nq * 4);
    fetch(gk, dk, nk * 4);
    fetch(gv, dv, nk * 4);
    char what[96];
    snprintf(what, sizeof what, "qkv layout %d n %d Hq %d Hkv %d D %d: q", layout, n, hq, hkv, d);
    check_bitwise(what, gq, rq, nq);
    what[strlen(what) - 1] = 'k';
    check_bitwise(what, gk, rk, nk);
    what[strlen(what) - 1] = 'v';
    check_bitwise(what, gv, rv, nk);
    cudaFree(dqkv);
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    free(qkv);
    free(rq);
    free(rk);
    free(rv);
    free(gq);
    free(gk);
    free(gv);
}

START_TEST(qkv_split_matches_cpu)
{
    run_qkv(0, 9, 12, 4, 80);                      /* grouped, float4 */
    run_qkv(0, 3, 6, 2, 66);                       /* grouped, scalar */
    run_qkv(0, 2, 8, 8, 64);                       /* grouped with one q head a group */
    run_qkv(1, 5, 71, 1, 64);                      /* Falcon-7B multi-query */
    run_qkv(1, 4, 8, 2, 33);                       /* multi-query with 2 kv heads, scalar */
    run_qkv(2, 3, 5, 5, 80);                       /* interleaved */
    run_qkv(2, 2, 7, 7, 66);                       /* interleaved, scalar */
    if (!quick)
        run_qkv(0, 513, 128, 8, 64);               /* Falcon-40B-like grouped, a long prefill */
}
END_TEST

/* ---- argument checks and graph capture ---------------------------------- */

START_TEST(bad_sizes_refused)
{
    qerr err = {0};
    float *d = dpoison(4096);
    qk_step *st = dstep(0, 1, NULL);
    ck_assert(!qk_rmsnorm(d, d, 1, 0, d, QDT_F32, 1e-5f, QDT_F32, stream, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_INVALID_ARGUMENT);
    ck_assert(!qk_rope(d, 1.0f, 63, d, 63, 1, 1, st, QDT_F32, stream, &err));
    ck_assert(!qk_rope(d, 1.0f, 64, d, 100, 1, 2, st, QDT_F32, stream, &err)); /* ld < heads */
    ck_assert(!qk_qkv_split(2, d, 1, 4, 2, 8, d, d, d, stream, &err)); /* interleaved, Hkv != Hq */
    ck_assert(!qk_qkv_split(0, d, 1, 5, 2, 8, d, d, d, stream, &err)); /* 5 % 2 */
    ck_assert(!qk_embed(d, QDT_I8, 4, st, 1, QDT_F32, d, stream, &err));
    /* zero work enqueues nothing and succeeds */
    ck_assert(qk_rmsnorm(d, d, 0, 64, d, QDT_F32, 1e-5f, QDT_F32, stream, &err));
    ck_assert(qk_add(d, d, d, 0, QDT_F32, stream, &err));
    ck_assert(qk_embed(d, QDT_F32, 4, st, 0, QDT_F32, d, stream, &err));
    CUDA_OK(cudaStreamSynchronize(stream));
    cudaFree(d);
    cudaFree(st);
}
END_TEST

/* One captured graph of embed + RMSNorm + rope replayed for two steps: the
 * positions and ids come from the device step, rewritten between replays as
 * the backend does. */
START_TEST(graph_replay_reads_step)
{
    const int V = 50, dim = 4 * 64, heads = 4, n = 3;
    const qrope r = make_rope(QROPE_DEFAULT, 64);
    float *table = frand((size_t)V * dim, 1.0f, 0.0f), *w = frand(dim, 0.1f, 1.0f);
    float *dtab = dcopy(table, (size_t)V * dim * 4), *dw = dcopy(w, (size_t)dim * 4);
    float *dinv = dcopy(r.inv_freq, 32 * 4), *dx = dpoison((size_t)n * dim * 4);
    qk_step *st = dstep(0, n, NULL);
    const qdtype act = QDT_BF16;

    cudaGraph_t graph;
    cudaGraphExec_t exec;
    qerr err = {0};
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    bool ok = qk_embed(dtab, QDT_F32, dim, st, n, act, dx, stream, &err) &&
              qk_rmsnorm(dx, dx, n, dim, dw, QDT_F32, 1e-6f, act, stream, &err) &&
              qk_rope(dinv, 1.0f, 64, dx, dim, n, heads, st, act, stream, &err);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    ck_assert_msg(ok, "capture: %s", err.msg);
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

    const int p0s[2] = {7, 1234};
    for (int rep = 0; rep < 2; rep++) {
        size_t bytes = sizeof(qk_step) + n * sizeof(int32_t);
        qk_step *h = hmalloc(bytes);
        h->p0 = p0s[rep];
        h->n = n;
        for (int i = 0; i < n; i++)
            h->ids[i] = irand(0, V - 1);
        CUDA_OK(cudaMemcpyAsync(st, h, bytes, cudaMemcpyHostToDevice, stream));
        CUDA_OK(cudaMemsetAsync(dx, 0xff, (size_t)n * dim * 4, stream));
        CUDA_OK(cudaGraphLaunch(exec, stream));

        float *ref = hmalloc((size_t)n * dim * 4), *got = hmalloc((size_t)n * dim * 4);
        int32_t pos[3];
        cpu_embed(table, QDT_F32, dim, h->ids, n, ref);
        for (int i = 0; i < n * dim; i++)
            ref[i] = cpu_round_act(ref[i], act);
        cpu_rmsnorm(NULL, ref, ref, n, dim, w, QDT_F32, 1e-6f, act);
        for (int t = 0; t < n; t++)
            pos[t] = h->p0 + t;
        cpu_rope(NULL, &r, h->p0 + n, ref, dim, n, heads, pos, act);
        fetch(got, dx, (size_t)n * dim * 4);
        /* bf16 throughout: equal but for rare flips of the norm (two ulps,
         * then through rope: a few) */
        double *flip = hmalloc((size_t)n * dim * sizeof *flip);
        for (int i = 0; i < n * dim; i++)
            flip[i] = 8.0 * ulp_act(fabs(ref[i]) + 1.0, act);
        char what[64];
        snprintf(what, sizeof what, "graph replay p0 %d", h->p0);
        check_close(what, got, ref, (size_t)n * dim, NULL, flip, 4);
        free(h);
        free(ref);
        free(got);
        free(flip);
    }
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
    cudaFree(dtab);
    cudaFree(dw);
    cudaFree(dinv);
    cudaFree(dx);
    cudaFree(st);
    free(table);
    free(w);
}
END_TEST

int main(void)
{
    if (cuda_device_count(NULL) <= 0)
        return 77;
    const char *q = getenv("QRUN_TEST_QUICK");
    quick = q && atoi(q) != 0;
    Suite *s = suite_create("gpu_ops");
    TCase *tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, embed_matches_cpu);
    tcase_add_test(tc, rmsnorm_matches_cpu);
    tcase_add_test(tc, layernorm_matches_cpu);
    tcase_add_test(tc, rope_matches_cpu);
    tcase_add_test(tc, add_norm_equals_add_then_norm);
    tcase_add_test(tc, rope_store_equals_rope_and_store);
    tcase_add_test(tc, swiglu_matches_cpu);
    tcase_add_test(tc, gelu_matches_cpu);
    tcase_add_test(tc, add_matches_cpu);
    tcase_add_test(tc, qkv_split_matches_cpu);
    tcase_add_test(tc, bad_sizes_refused);
    tcase_add_test(tc, graph_replay_reads_step);
    suite_add_tcase(s, tc);
    /* The CUDA driver is initialized above and a forked child cannot use
     * it, so the tests run in this process (no per-test timeout then). */
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
