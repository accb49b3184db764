/* qk_matmul (src/kernels/matmul*.cu) against qmatmul + qmatmul_round, the
 * CPU reference, on fresh random weights quantized on the host with
 * src/quant.c: nf4 and fp4 (f32 absmax and double-quantized), LLM.int8 with
 * threshold 6 (outlier columns injected, one value that rounds to exactly
 * 6.0 in f16, one just below) and threshold 0, f16/bf16/f32 weights; every
 * compute dtype; m in {1, 3, 8} (fused GEMV) and {9, 77} (dequantize + cuBLAS,
 * int32 GEMM); shapes with odd cols (67 x 131: blocks start at odd offsets and
 * straddle rows), cols a multiple of 32 but not of the blocksize (blocks
 * straddle rows in the vector path), blocksizes 64, 128 and 4096, a
 * several-tile row (4160 cols), and 4544 x 4544; biases in f32/f16/bf16 or
 * none; round_to f32, f16 or bf16; x misaligned by one float in some cases.
 * Outputs are poisoned with NaN before each run, so an unwritten element
 * fails, and each output must be a value of round_to.
 *
 * Bounds, per row r of y, relative to max_n |ref[r, n]|:
 *  - The dequantized weights are exact on both sides (same W_T values), x is
 *    the same, so before round_to only the f32 summation differs: lanes,
 *    shuffle tree and FMAs here, 16 lanes without FMA on the CPU. Rounding
 *    errors of K-term sums of random terms are ~ sqrt(K) ulps of the
 *    partial sums, about 2^-24 · sqrt(K) / 8 of the row's max |y| (one
 *    standard deviation; the CPU's sequential sum on its large-m path
 *    dominates): the bound 1e-5 · max(1, sqrt(K / 1024)) is ~20 of those;
 *    the largest seen on an H100 was 4e-6 at K = 4160 and 4544 (the test
 *    prints it). f16/bf16 products are exact in f32, so this
 *    holds for every compute dtype on the GEMV path and for f32 compute in
 *    cuBLAS (CUBLAS_COMPUTE_32F, no TF32: FFMA). With f16/bf16 inputs cuBLAS
 *    runs on tensor cores, whose f32 accumulation truncates instead of
 *    rounding: up to ~K/16 one-ulp steps of the running sum, biased, so
 *    1e-4 there; the same for the 4-bit GEMV with f16/bf16 compute, which
 *    uses tensor cores when m >= 4, cols % 32 == 0 and x is 16-byte
 *    aligned.
 *  - round_to f16/bf16 rounds two values that differ by that much: they can
 *    land on adjacent values, one ulp of the output apart, <= 2^-10 (f16) or
 *    2^-7 (bf16) of the row's max |y|; the bound adds that.
 *  - int8: the int32 product is exact on both sides (integer sums do not
 *    depend on order; |acc| <= K·127² < 2^31), the activation quantizer and
 *    the assembly repeat the CPU's f32 operations one by one without FMA
 *    contraction, and outlier columns are summed in the same ascending
 *    order: the output must equal the CPU's bit for bit.
 * Element-wise ops folded into the products (qk_mm_post's gelu and add)
 * must give the bits of the products followed by the ops' own kernels. A captured CUDA graph replayed with new x must give the same
 * answers, and
 * bad arguments (workspace too small, m = 0, bad dtypes) are refused.
 * QRUN_TEST_QUICK=1 (compute-sanitizer) keeps two small shapes, m 1 and 9,
 * and skips 4544 x 4544. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/matmul.h"
#include "cuda/device.h"
#include "dtype.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "quant.h"
#include "testutil.h"

static tu_rng rng;
static uint64_t seed;
static cudaStream_t stream;
static qk_blas *blas;
static int quick;
static int many_outliers; /* make_x: int8 outlier columns to inject (0: a few) */

#define CUDA_OK(call)                                                                         \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        ck_assert_msg(e_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));            \
    } while (0)

/* Largest call of the suite: the workspace covers it (f32 is the widest
 * compute dtype, so its plan covers f16/bf16 too). */
#define MAX_M 77
#define BIG 4544

static void setup(void)
{
    seed = tu_seed();
    rng.s = seed;
    /* a blocking stream: it waits for the legacy-stream copies and memsets */
    CUDA_OK(cudaStreamCreate(&stream));
    qerr err = {0};
    uint64_t nk = quick ? 1024 : BIG;
    size_t ws = qk_matmul_workspace_size(MAX_M, quick ? nk : 10241, nk, QDT_F32);
    blas = qk_blas_create(stream, ws, &err);
    ck_assert_msg(blas != NULL, "qk_blas_create(%zu): %s", ws, err.msg);
}

static void teardown(void)
{
    qk_blas_free(blas);
    blas = NULL;
    cudaStreamDestroy(stream);
}

/* ---- weights ---------------------------------------------------------------- */

typedef struct wkind {
    const char *name;
    qdtype dtype;
    int dq;          /* 4-bit: double-quantized absmax */
    float threshold; /* int8 */
} wkind;

static const wkind K_NF4 = {"nf4", QDT_NF4, 0, 0}, K_FP4 = {"fp4", QDT_FP4, 0, 0},
                   K_NF4DQ = {"nf4+dq", QDT_NF4, 1, 0}, K_FP4DQ = {"fp4+dq", QDT_FP4, 1, 0},
                   K_I8T6 = {"int8 t6", QDT_I8, 0, 6.0f}, K_I8T0 = {"int8 t0", QDT_I8, 0, 0.0f},
                   K_F16 = {"f16", QDT_F16, 0, 0}, K_BF16 = {"bf16", QDT_BF16, 0, 0},
                   K_F32 = {"f32", QDT_F32, 0, 0};

#define TW_BUFS 8
/* One weight as a host qweight (the reference's) and a device qweight. */
typedef struct tweight {
    const wkind *kind;
    qweight h, d;
    void *hb[TW_BUFS], *db[TW_BUFS];
    int nh, nd;
} tweight;

static void *hkeep(tweight *t, size_t bytes)
{
    ck_assert_int_lt(t->nh, TW_BUFS);
    void *p = malloc(bytes ? bytes : 1);
    ck_assert_ptr_nonnull(p);
    return t->hb[t->nh++] = p;
}

static void *dput(tweight *t, const void *h, size_t bytes)
{
    ck_assert_int_lt(t->nd, TW_BUFS);
    void *d = NULL;
    CUDA_OK(cudaMalloc(&d, bytes));
    CUDA_OK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return t->db[t->nd++] = d;
}

static void tw_free(tweight *t)
{
    for (int i = 0; i < t->nh; i++)
        free(t->hb[i]);
    for (int i = 0; i < t->nd; i++)
        cudaFree(t->db[i]);
    t->nh = t->nd = 0;
}

/* Random N x K weight of `kind`; bs: 4-bit blocksize. Block 1 (4-bit) or
 * row 1 (int8) is all zero: absmax 0 (NF4 dequantizes it to -0.0), SCB 0. */
static void tw_build(tweight *t, const wkind *kind, uint64_t N, uint64_t K, int bs)
{
    memset(t, 0, sizeof *t);
    t->kind = kind;
    const uint64_t n = N * K;
    float *w = malloc(n * sizeof *w);
    ck_assert_ptr_nonnull(w);
    for (uint64_t i = 0; i < n; i++)
        w[i] = tu_normal(&rng) * 0.5f;
    qweight *h = &t->h, *d = &t->d;
    h->dtype = kind->dtype;
    h->rows = N;
    h->cols = K;
    switch (kind->dtype) {
    case QDT_NF4:
    case QDT_FP4: {
        if (n >= 2 * (uint64_t)bs)
            memset(w + bs, 0, (size_t)bs * sizeof *w);
        uint64_t nb = quant_nblocks(n, bs), nb2 = (nb + 255) / 256;
        uint8_t *codes = hkeep(t, (n + 1) / 2);
        float *absmax = hkeep(t, nb * sizeof(float));
        quant_4bit_quantize(kind->dtype == QDT_NF4 ? QUANT_NF4 : QUANT_FP4, w, n, bs, codes,
                            absmax);
        h->data = codes;
        h->blocksize = bs;
        *d = *h;
        d->data = dput(t, codes, (n + 1) / 2);
        if (!kind->dq) {
            h->absmax = absmax;
            d->absmax = dput(t, absmax, nb * sizeof(float));
        } else {
            float off = quant_dq_offset(absmax, nb);
            uint8_t *q = hkeep(t, nb);
            float *a2 = hkeep(t, nb2 * sizeof(float));
            quant_dq_quantize(absmax, nb, off, quant_dynamic_map, q, a2);
            h->qabsmax = q;
            h->absmax2 = a2;
            h->absmax_offset = off;
            h->dq_map = quant_dynamic_map;
            d->qabsmax = dput(t, q, nb);
            d->absmax2 = dput(t, a2, nb2 * sizeof(float));
            d->absmax_offset = off;
            d->dq_map = dput(t, quant_dynamic_map, 256 * sizeof(float));
        }
        break;
    }
    case QDT_I8: {
        if (N >= 2)
            memset(w + K, 0, K * sizeof *w);
        qmatmul_round(QDT_F16, w, n); /* bitsandbytes quantizes the f16 weight */
        int8_t *cb = hkeep(t, n);
        float *scb = hkeep(t, N * sizeof(float));
        quant_int8_quantize_rows(w, N, K, cb, scb);
        h->data = cb;
        h->scb = scb;
        h->int8_threshold = kind->threshold;
        *d = *h;
        d->data = dput(t, cb, n);
        d->scb = dput(t, scb, N * sizeof(float));
        break;
    }
    case QDT_F16:
    case QDT_BF16: {
        uint16_t *v = hkeep(t, n * 2);
        for (uint64_t i = 0; i < n; i++)
            v[i] = kind->dtype == QDT_F16 ? qf32_to_f16(w[i]) : qf32_to_bf16(w[i]);
        h->data = v;
        *d = *h;
        d->data = dput(t, v, n * 2);
        break;
    }
    default: {
        float *v = hkeep(t, n * sizeof(float));
        memcpy(v, w, n * sizeof(float));
        h->data = v;
        *d = *h;
        d->data = dput(t, v, n * sizeof(float));
        break;
    }
    }
    free(w);
}

/* ---- one product --------------------------------------------------------------- */

/* Largest error seen before any output rounding (round_to f32 cases), by
 * arithmetic (0: ordered f32 FMAs, 1: tensor cores) and compute dtype. */
static double worst_seen[2][3];

static const char *dn(qdtype t) { return qdtype_name(t); }

static int is_value_of(qdtype t, float v)
{
    if (t == QDT_F16)
        return qf16_to_f32(qf32_to_f16(v)) == v;
    if (t == QDT_BF16)
        return qbf16_to_f32(qf32_to_bf16(v)) == v;
    return 1;
}

/* Random x [m, K]: T values for a float weight (the engine's activations);
 * for int8 t>0 a few outlier columns, a value that rounds to exactly 6.0 in
 * f16 (an outlier) and one just below (not one). */
static float *make_x(const tweight *t, qdtype T, int m, int variant)
{
    const uint64_t K = t->h.cols, n = (uint64_t)m * K;
    float *x = malloc(n * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (uint64_t i = 0; i < n; i++)
        x[i] = tu_normal(&rng);
    if (t->h.dtype == QDT_I8) {
        if (t->kind->threshold > 0.0f && many_outliers) {
            /* at least many_outliers distinct columns, each in one random row */
            for (int j = 0; j < many_outliers; j++) {
                uint64_t col = (uint64_t)j * K / (uint64_t)many_outliers;
                uint64_t i = (uint64_t)(tu_uniform(&rng) * m) * K + col;
                x[i] = (j % 2 ? -6.5f : 9.0f) * (1.0f + (float)tu_uniform(&rng));
            }
        } else if (t->kind->threshold > 0.0f) {
            int cols = 1 + variant % 3;
            for (int j = 0; j < cols; j++) {
                uint64_t i = (uint64_t)(tu_uniform(&rng) * (double)n);
                x[i] = (tu_uniform(&rng) < 0.5 ? -6.0f : 6.0f) * (1.0f + (float)tu_uniform(&rng));
            }
            x[(uint64_t)(tu_uniform(&rng) * (double)n)] = 5.9990234375f; /* f16: 6.0 */
            x[(uint64_t)(tu_uniform(&rng) * (double)n)] = -5.99f;       /* f16: below 6 */
        }
    } else {
        qmatmul_round(T, x, n);
    }
    return x;
}

typedef struct call {
    qdtype T, bias_dt, round_to;
    int m, has_bias, misalign;
} call;

static call pick_call(qdtype T, int m, int variant)
{
    call c;
    c.T = T;
    c.m = m;
    c.has_bias = variant % 4 != 0;
    c.bias_dt = variant % 4 == 1 ? QDT_F32 : variant % 4 == 2 ? QDT_F16 : QDT_BF16;
    int r = (variant / 4) % 3;
    c.round_to = r == 0 ? T : r == 1 ? QDT_F32 : (T == QDT_F16 ? QDT_BF16 : QDT_F16);
    c.misalign = variant % 5 == 4;
    return c;
}

/* Device buffers of one call, reusable by a graph replay. */
typedef struct dcall {
    float *xbuf, *x, *y;
    void *bias;
} dcall;

static void *make_bias(qdtype dt, uint64_t N)
{
    size_t es = dt == QDT_F32 ? 4 : 2;
    unsigned char *b = malloc(N * es);
    ck_assert_ptr_nonnull(b);
    for (uint64_t i = 0; i < N; i++) {
        float v = tu_normal(&rng);
        if (dt == QDT_F32) {
            memcpy(b + 4 * i, &v, 4);
        } else {
            uint16_t h = dt == QDT_F16 ? qf32_to_f16(v) : qf32_to_bf16(v);
            memcpy(b + 2 * i, &h, 2);
        }
    }
    return b;
}

static void ref_product(const tweight *t, const float *x, const call *c, const void *bias,
                        float *yref)
{
    qerr err = {0};
    size_t ss = qmatmul_scratch_size(&t->h, (uint64_t)c->m);
    void *scratch = ss ? malloc(ss) : NULL;
    ck_assert_msg(qmatmul(&t->h, x, (uint64_t)c->m, c->T, c->bias_dt,
                          c->has_bias ? bias : NULL, yref, scratch, ss, NULL, &err),
                  "qmatmul: %s", err.msg);
    free(scratch);
    qmatmul_round(c->round_to, yref, (size_t)c->m * t->h.rows);
}

/* got vs ref under the bounds of the header comment. */
static void check_result(const tweight *t, const call *c, const float *got, const float *ref,
                         const char *where)
{
    const uint64_t N = t->h.rows, K = t->h.cols;
    const int exact = t->h.dtype == QDT_I8;
    const int path = c->m > QK_GEMV_MAX_M;
    const int q4 = t->h.dtype == QDT_NF4 || t->h.dtype == QDT_FP4;
    /* tensor cores: cuBLAS with T inputs, and the 4-bit GEMV for T inputs
     * when m >= 4, cols % 32 == 0 and x is aligned (matmul_gemv_mma.cu) */
    const int tensor = c->T != QDT_F32 && !exact &&
                       (path || (q4 && c->m >= 4 && K % 32 == 0 && !c->misalign));
    const double pre = tensor ? 1e-4 : 1e-5 * fmax(1.0, sqrt((double)K / 1024.0));
    const double ulp = c->round_to == QDT_F16 ? 0x1p-10 : c->round_to == QDT_BF16 ? 0x1p-7 : 0.0;
    const double bound = pre + ulp;
    for (int r = 0; r < c->m; r++) {
        double mref = 0, merr = 0;
        for (uint64_t j = 0; j < N; j++) {
            float g = got[(uint64_t)r * N + j], f = ref[(uint64_t)r * N + j];
            ck_assert_msg(!isnan(g) && !isnan(f),
                          "%s %s: y[%d, %llu] = %g (ref %g): unwritten or NaN (T %s m %d "
                          "%llux%llu bs %d seed %llu)",
                          where, t->kind->name, r, (unsigned long long)j, g, f, dn(c->T), c->m,
                          (unsigned long long)N, (unsigned long long)K, t->h.blocksize,
                          (unsigned long long)seed);
            ck_assert_msg(is_value_of(c->round_to, g), "%s %s: y[%d, %llu] = %.9g is not a %s",
                          where, t->kind->name, r, (unsigned long long)j, g, dn(c->round_to));
            if (exact)
                ck_assert_msg(g == f,
                              "%s %s: y[%d, %llu] = %.9g, CPU %.9g (T %s m %d %llux%llu bias %s "
                              "round_to %s seed %llu)",
                              where, t->kind->name, r, (unsigned long long)j, g, f, dn(c->T),
                              c->m, (unsigned long long)N, (unsigned long long)K,
                              c->has_bias ? dn(c->bias_dt) : "none", dn(c->round_to),
                              (unsigned long long)seed);
            mref = fmax(mref, fabs((double)f));
            merr = fmax(merr, fabs((double)g - (double)f));
        }
        double rel = mref > 0 ? merr / mref : merr;
        if (c->round_to == QDT_F32 && !exact && rel > worst_seen[tensor][c->T])
            worst_seen[tensor][c->T] = rel;
        ck_assert_msg(rel <= bound,
                      "%s %s: row %d: relative error %.3g > %.3g (T %s m %d %llux%llu bs %d bias "
                      "%s round_to %s%s seed %llu)",
                      where, t->kind->name, r, rel, bound, dn(c->T), c->m,
                      (unsigned long long)N, (unsigned long long)K, t->h.blocksize,
                      c->has_bias ? dn(c->bias_dt) : "none", dn(c->round_to),
                      c->misalign ? " x+1" : "", (unsigned long long)seed);
    }
}

/* One product on both sides and the comparison. */
static void run_case(const tweight *t, qdtype T, int m, int variant)
{
    const uint64_t N = t->h.rows, K = t->h.cols, n = (uint64_t)m * K;
    call c = pick_call(T, m, variant);
    float *x = make_x(t, T, m, variant);
    void *bias = make_bias(c.bias_dt, N);
    float *yref = malloc((size_t)m * N * sizeof(float)), *got = malloc((size_t)m * N * sizeof(float));
    ck_assert(yref && got);
    ref_product(t, x, &c, bias, yref);

    float *dxbuf = NULL, *dy = NULL;
    void *dbias = NULL;
    CUDA_OK(cudaMalloc((void **)&dxbuf, (n + 1) * sizeof(float)));
    CUDA_OK(cudaMalloc((void **)&dy, (size_t)m * N * sizeof(float)));
    CUDA_OK(cudaMalloc(&dbias, N * 4));
    float *dx = dxbuf + (c.misalign ? 1 : 0);
    CUDA_OK(cudaMemcpy(dx, x, n * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dbias, bias, N * (c.bias_dt == QDT_F32 ? 4 : 2), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(dy, 0xff, (size_t)m * N * sizeof(float))); /* NaN */
    qerr err = {0};
    ck_assert_msg(qk_matmul(blas, &t->d, dx, m, T, c.bias_dt, c.has_bias ? dbias : NULL,
                            c.round_to, dy, &err),
                  "qk_matmul %s T %s m %d: %s", t->kind->name, dn(T), m, err.msg);
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaMemcpy(got, dy, (size_t)m * N * sizeof(float), cudaMemcpyDeviceToHost));
    check_result(t, &c, got, yref, "direct");
    cudaFree(dxbuf);
    cudaFree(dy);
    cudaFree(dbias);
    free(x);
    free(bias);
    free(yref);
    free(got);
}

static const qdtype computes[3] = {QDT_F32, QDT_F16, QDT_BF16};

typedef struct shape {
    uint64_t N, K;
    int bs;
} shape;

/* 67x131: odd cols, blocks begin at odd offsets (scalar paths); 96x96 with
 * bs 64: cols % 32 == 0 (vector paths) but blocks straddle rows; 40x192
 * with bs 128 likewise; 130x1000 bs 128: cols % 32 != 0, % 8 == 0 (f16
 * vectors, 4-bit scalar); 33x4160 bs 4096: rows span several x tiles, a
 * block spans rows. */
static const shape shapes[] = {
    {67, 131, 64}, {96, 96, 64}, {40, 192, 128}, {130, 1000, 128}, {33, 4160, 4096},
};

static void run_kind(const wkind *kind)
{
    static const int ms_full[] = {1, 3, 4, 8, 9, 77}, ms_quick[] = {1, 9};
    const int *ms = quick ? ms_quick : ms_full;
    int nm = quick ? 2 : 6, ns = quick ? 2 : (int)(sizeof shapes / sizeof shapes[0]);
    int variant = 0;
    for (int s = 0; s < ns; s++) {
        tweight t;
        tw_build(&t, kind, shapes[s].N, shapes[s].K, shapes[s].bs);
        for (int ti = 0; ti < 3; ti++)
            for (int mi = 0; mi < nm; mi++)
                run_case(&t, computes[ti], ms[mi], variant++);
        tw_free(&t);
    }
}

static void print_worst(const char *what)
{
    printf("gpu_matmul %s: largest error before rounding (f32 outputs), relative to max|y| per "
           "row: cuda cores f32 %.2g f16 %.2g bf16 %.2g; tensor cores f32 %.2g f16 %.2g bf16 "
           "%.2g\n",
           what, worst_seen[0][0], worst_seen[0][1], worst_seen[0][2], worst_seen[1][0],
           worst_seen[1][1], worst_seen[1][2]);
    fflush(stdout);
}

START_TEST(fourbit_matches_cpu)
{
    run_kind(&K_NF4);
    run_kind(&K_FP4);
    run_kind(&K_NF4DQ);
    run_kind(&K_FP4DQ);
    print_worst("4-bit");
}
END_TEST

/* run_case for each compute dtype (variants variant0 ..) with a workspace
 * of t's own size: quick mode's fixture sizes it for 1024 x 1024. */
static void run_own_workspace(const tweight *t, int m, int variant0)
{
    qk_blas *fixture = blas;
    qerr err = {0};
    const size_t ws = qk_matmul_workspace_size(m, t->h.rows, t->h.cols, QDT_F32);
    blas = qk_blas_create(stream, ws, &err);
    ck_assert_msg(blas != NULL, "qk_blas_create(%zu): %s", ws, err.msg);
    for (int ti = 0; ti < 3; ti++)
        run_case(t, computes[ti], m, variant0 + ti);
    qk_blas_free(blas);
    blas = fixture;
}

START_TEST(int8_matches_cpu_bitwise)
{
    run_kind(&K_I8T6);
    run_kind(&K_I8T0);
    /* each of the m <= 4 GEMV's kernel shapes (automatic above) */
    for (int v = 0; v < 3; v++) {
        qk_blas_set_i8_shape(blas, v);
        run_kind(&K_I8T6);
    }
    qk_blas_set_i8_shape(blas, -1);
}
END_TEST

/* int8 with more outlier columns than the decode GEMV keeps in its list
 * (256: it walks its bit set instead) and with fewer, spread over every
 * bit word; K past the m = 4 GEMV's one activation tile (8192), where a
 * separate kernel quantizes x; and more rows than one wave of blocks. */
START_TEST(int8_many_outliers_bitwise)
{
    static const struct {
        uint64_t N, K;
        int outliers, m;
    } cases[] = {
        {33, 4160, 300, 1}, {33, 4160, 300, 4}, {70, 4160, 255, 1}, {70, 4160, 257, 3},
        {17, 8256, 40, 4},  {17, 8256, 40, 1},  {29, 4160, 700, 9},
        /* the GEMV after the separate quantizer (K past the tile, m > 4),
         * with its staged list and past it */
        {33, 8256, 300, 4}, {40, 4160, 200, 6}, {40, 4160, 300, 7},
        /* more block-rows than one wave of blocks (an H100 holds 528 of
         * the m = 1 kernel's, 16 rows each): blocks take several */
        {12000, 4096, 40, 1}, {9000, 4160, 300, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tweight t;
        tw_build(&t, &K_I8T6, cases[i].N, cases[i].K, 64);
        many_outliers = cases[i].outliers;
        run_own_workspace(&t, cases[i].m, 3 * (int)i);
        many_outliers = 0;
        tw_free(&t);
    }
}
END_TEST

/* Decode GEMVs of more blocks than one wave (on an H100 396 of the m = 1
 * 4-bit kernel's, 16 rows each): later waves' blocks start as earlier ones
 * finish, after the kernel before has long completed. */
START_TEST(gemv_many_rows_match_cpu)
{
    static const struct {
        const wkind *kind;
        uint64_t N;
        int m;
    } cases[] = {
        {&K_NF4, 12000, 1}, {&K_NF4DQ, 9000, 1}, {&K_FP4, 9000, 2}, {&K_F16, 12000, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tweight t;
        tw_build(&t, cases[i].kind, cases[i].N, 4096, 64);
        run_own_workspace(&t, cases[i].m, 3 * (int)i);
        tw_free(&t);
    }
    print_worst("many rows");
}
END_TEST

START_TEST(plain_matches_cpu)
{
    run_kind(&K_F16);
    run_kind(&K_BF16);
    run_kind(&K_F32);
    print_worst("f16/bf16/f32");
}
END_TEST

/* 4544 x 4544 (Falcon-7B's hidden size), a few kinds and paths; prefill
 * (m = 9) dequantizes weights in tiles (matmul.cu tile_plan) of at most
 * `tile` MiB (0: the default, 64): f32 4544 x 4544 splits its columns in
 * two, 10241 x 4544 its rows in three, and with 4 MiB both split. */
START_TEST(large_shape_matches_cpu)
{
    if (quick)
        return;
    static const struct {
        const wkind *kind;
        qdtype T;
        int m;
        uint64_t N;
        size_t tile;
    } cases[] = {
        {&K_NF4, QDT_BF16, 1, BIG, 0},    {&K_NF4DQ, QDT_F16, 9, BIG, 4},
        {&K_FP4, QDT_F32, 3, BIG, 0},     {&K_FP4, QDT_F32, 9, BIG, 0},
        {&K_NF4, QDT_BF16, 9, 10241, 0},  {&K_NF4, QDT_F16, 9, 10241, 4},
        {&K_I8T6, QDT_F16, 1, BIG, 0},    {&K_I8T6, QDT_BF16, 9, BIG, 0},
        {&K_F16, QDT_F16, 9, BIG, 0},     {&K_BF16, QDT_F32, 9, BIG, 4},
        {&K_BF16, QDT_BF16, 1, BIG, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tweight t;
        tw_build(&t, cases[i].kind, cases[i].N, BIG, 64);
        qk_blas_set_tile_bytes(blas, cases[i].tile ? cases[i].tile << 20 : SIZE_MAX);
        run_case(&t, cases[i].T, cases[i].m, (int)i);
        tw_free(&t);
    }
    qk_blas_set_tile_bytes(blas, SIZE_MAX);
    print_worst("with 4544 cols");
}
END_TEST

/* qk_matmul_multi: three products of one x (q/k/v shapes: different rows,
 * same cols) equal three qk_matmul calls bit for bit, whether they share
 * one launch (the tensor-core 4-bit GEMV at m >= 4, or the CUDA-core GEMV
 * for 4-bit at m < 4 or with f32 compute and for f16/bf16 weights) or not
 * (m 9, mixed kinds);
 * int8 products of one x share one activation quantization (different
 * thresholds do not). */
START_TEST(multi_equals_separate)
{
    static const struct {
        const wkind *k0, *k1;
        qdtype T;
        int m;
    } cases[] = {
        {&K_NF4, &K_NF4, QDT_F16, 1}, {&K_NF4DQ, &K_NF4DQ, QDT_BF16, 4},
        {&K_FP4, &K_FP4, QDT_F16, 8}, {&K_NF4, &K_NF4, QDT_F16, 9},
        {&K_NF4, &K_NF4, QDT_F32, 1}, {&K_F16, &K_F16, QDT_F16, 1},
        {&K_NF4, &K_NF4DQ, QDT_F16, 1}, {&K_BF16, &K_BF16, QDT_BF16, 4},
        {&K_I8T6, &K_I8T6, QDT_F16, 1}, {&K_I8T6, &K_I8T6, QDT_BF16, 5},
        {&K_I8T6, &K_I8T0, QDT_F16, 2},
    };
    /* K % 128 == 64: the last column step is half full */
    const uint64_t K = quick ? 960 : 4160, Ns[3] = {96, 40, 200};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        tweight t[3];
        const qweight *ws[3];
        float *ys[3], *yref[3];
        const void *biases[3];
        qdtype bias_dts[3] = {QDT_F32, QDT_F16, QDT_BF16};
        void *db[3];
        const int m = cases[ci].m;
        const qdtype T = cases[ci].T;
        for (int j = 0; j < 3; j++) {
            tw_build(&t[j], j == 2 ? cases[ci].k1 : cases[ci].k0, Ns[j], K, 64);
            ws[j] = &t[j].d;
            void *hb = make_bias(bias_dts[j], Ns[j]);
            CUDA_OK(cudaMalloc(&db[j], Ns[j] * 4));
            CUDA_OK(cudaMemcpy(db[j], hb, Ns[j] * 4, cudaMemcpyHostToDevice));
            free(hb);
            biases[j] = j == 1 ? NULL : db[j];
            CUDA_OK(cudaMalloc((void **)&ys[j], (size_t)m * Ns[j] * 4));
            CUDA_OK(cudaMalloc((void **)&yref[j], (size_t)m * Ns[j] * 4));
            CUDA_OK(cudaMemset(ys[j], 0xff, (size_t)m * Ns[j] * 4));
        }
        float *x = make_x(&t[0], T, m, (int)ci), *dx;
        CUDA_OK(cudaMalloc((void **)&dx, (size_t)m * K * 4));
        CUDA_OK(cudaMemcpy(dx, x, (size_t)m * K * 4, cudaMemcpyHostToDevice));
        qerr err = {0};
        for (int j = 0; j < 3; j++)
            ck_assert_msg(qk_matmul(blas, ws[j], dx, m, T, bias_dts[j], biases[j], T, yref[j],
                                    &err),
                          "qk_matmul: %s", err.msg);
        ck_assert_msg(qk_matmul_multi(blas, ws, 3, dx, m, T, bias_dts, biases, T, NULL, ys, &err),
                      "qk_matmul_multi: %s", err.msg);
        CUDA_OK(cudaStreamSynchronize(stream));
        for (int j = 0; j < 3; j++) {
            size_t ny = (size_t)m * Ns[j];
            float *a = malloc(ny * 4), *b = malloc(ny * 4);
            CUDA_OK(cudaMemcpy(a, yref[j], ny * 4, cudaMemcpyDeviceToHost));
            CUDA_OK(cudaMemcpy(b, ys[j], ny * 4, cudaMemcpyDeviceToHost));
            ck_assert_msg(memcmp(a, b, ny * 4) == 0,
                          "case %zu product %d: multi differs from a single call (%s, T %s, m %d)",
                          ci, j, t[j].kind->name, dn(T), m);
            free(a);
            free(b);
            cudaFree(ys[j]);
            cudaFree(yref[j]);
            cudaFree(db[j]);
            tw_free(&t[j]);
        }
        cudaFree(dx);
        free(x);
    }
}
END_TEST

/* ---- element-wise ops folded into products ------------------------------- */

static float *dev_copy(const float *h, size_t n)
{
    float *d = NULL;
    CUDA_OK(cudaMalloc((void **)&d, n * 4));
    CUDA_OK(cudaMemcpy(d, h, n * 4, cudaMemcpyHostToDevice));
    return d;
}

static float *dev_poisoned(size_t n)
{
    float *d = NULL;
    CUDA_OK(cudaMalloc((void **)&d, n * 4));
    CUDA_OK(cudaMemset(d, 0xff, n * 4)); /* NaN */
    return d;
}

static void expect_same_bits(const float *da, const float *db, size_t n, const char *what,
                             size_t ci)
{
    CUDA_OK(cudaStreamSynchronize(stream));
    float *a = malloc(n * 4), *b = malloc(n * 4);
    ck_assert(a && b);
    CUDA_OK(cudaMemcpy(a, da, n * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(b, db, n * 4, cudaMemcpyDeviceToHost));
    size_t bad = 0;
    while (bad < n && memcmp(a + bad, b + bad, 4) == 0)
        bad++;
    ck_assert_msg(bad == n, "case %zu: %s: element %zu is %.9g, separate ops give %.9g", ci,
                  what, bad, bad < n ? b[bad] : 0.0f, bad < n ? a[bad] : 0.0f);
    free(a);
    free(b);
}

/* qk_matmul_multi with posts gives the bits of each product followed by
 * qk_gelu and then qk_add, on every path that writes outputs: the 4-bit
 * CUDA-core and tensor-core GEMVs, f16 weights, the int8 GEMV with the
 * quantizer fused in (m <= 4) and after it (m 5), the byte-wise GEMVs
 * (cols 131), and prefill (m 13: cuBLAS + bias_round, also where f32
 * needs no rounding or bias, the int32 GEMM + i8_finish). Two products of
 * one x as falcon's q/k/v + h_to_4h: the first without ops, the second
 * with gelu, a bias in some cases and add in every other case; then one
 * product with add alone (falcon's MLP output plus its attention output). */
START_TEST(post_ops_fold_bitwise)
{
    static const struct {
        const wkind *k;
        qdtype T;
        int m, odd_cols, bias;
    } cases[] = {
        {&K_NF4, QDT_F16, 1, 0, 1},    {&K_NF4, QDT_F16, 4, 0, 1},  {&K_NF4DQ, QDT_BF16, 13, 0, 1},
        {&K_F16, QDT_F16, 2, 0, 0},    {&K_I8T6, QDT_F16, 1, 0, 1}, {&K_I8T6, QDT_F16, 5, 0, 0},
        {&K_I8T6, QDT_BF16, 13, 0, 1}, {&K_I8T6, QDT_F16, 1, 1, 1}, {&K_NF4, QDT_F32, 2, 1, 0},
        {&K_I8T0, QDT_F32, 3, 0, 1},
        /* f32 prefill without a bias: cuBLAS' output needs no epilogue but the ops */
        {&K_F32, QDT_F32, 13, 0, 0},   {&K_NF4, QDT_F32, 13, 0, 0},
    };
    const uint64_t Ns[2] = {67, 200};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int m = cases[ci].m;
        const qdtype T = cases[ci].T;
        const uint64_t K = cases[ci].odd_cols ? 131 : quick ? 960 : 4160;
        const bool with_add = ci % 2 == 0;
        tweight t[2];
        const qweight *ws[2];
        float *ref[2], *got[2];
        for (int j = 0; j < 2; j++) {
            tw_build(&t[j], cases[ci].k, Ns[j], K, 64);
            ws[j] = &t[j].d;
            ref[j] = dev_poisoned((size_t)m * Ns[j]);
            got[j] = dev_poisoned((size_t)m * Ns[j]);
        }
        const size_t n1 = (size_t)m * Ns[1];
        void *hb = make_bias(QDT_F16, Ns[1]);
        void *db = NULL;
        CUDA_OK(cudaMalloc(&db, Ns[1] * 2));
        CUDA_OK(cudaMemcpy(db, hb, Ns[1] * 2, cudaMemcpyHostToDevice));
        free(hb);
        float *hadd = malloc(n1 * 4);
        ck_assert_ptr_nonnull(hadd);
        for (size_t i = 0; i < n1; i++)
            hadd[i] = tu_normal(&rng) * 4.0f;
        qmatmul_round(T, hadd, n1); /* a residual stream of act values */
        float *dadd = dev_copy(hadd, n1), *one = dev_poisoned(n1);
        float *x = make_x(&t[0], T, m, (int)ci), *dx = dev_copy(x, (size_t)m * K);
        const qdtype bias_dts[2] = {QDT_F32, QDT_F16};
        const void *biases[2] = {NULL, cases[ci].bias ? db : NULL};
        qerr err = {0};
        for (int j = 0; j < 2; j++)
            ck_assert_msg(
                qk_matmul(blas, ws[j], dx, m, T, bias_dts[j], biases[j], T, ref[j], &err),
                "qk_matmul: %s", err.msg);
        ck_assert(qk_gelu(ref[1], ref[1], n1, T, stream, &err));
        if (with_add)
            ck_assert(qk_add(ref[1], ref[1], dadd, n1, T, stream, &err));
        const qk_mm_post posts[2] = {{false, NULL}, {true, with_add ? dadd : NULL}};
        ck_assert_msg(qk_matmul_multi(blas, ws, 2, dx, m, T, bias_dts, biases, T, posts, got, &err),
                      "qk_matmul_multi: %s", err.msg);
        expect_same_bits(ref[0], got[0], (size_t)m * Ns[0], "the product without ops", ci);
        expect_same_bits(ref[1], got[1], n1, with_add ? "gelu + add" : "gelu", ci);
        ck_assert(qk_matmul(blas, ws[1], dx, m, T, bias_dts[1], biases[1], T, ref[1], &err));
        ck_assert(qk_add(ref[1], ref[1], dadd, n1, T, stream, &err));
        const qk_mm_post add_only = {false, dadd};
        ck_assert_msg(qk_matmul_multi(blas, &ws[1], 1, dx, m, T, &bias_dts[1], &biases[1], T,
                                      &add_only, &one, &err),
                      "qk_matmul_multi: %s", err.msg);
        expect_same_bits(ref[1], one, n1, "one product + add", ci);
        for (int j = 0; j < 2; j++) {
            cudaFree(ref[j]);
            cudaFree(got[j]);
            tw_free(&t[j]);
        }
        cudaFree(db);
        cudaFree(dadd);
        cudaFree(one);
        cudaFree(dx);
        free(hadd);
        free(x);
    }
}
END_TEST

/* Prefill tiles are written on a side stream into workspace slots while
 * the main stream multiplies (matmul.cu tiled_gemm): products of
 * different tile sizes, int8 products (which use the same bytes on the main
 * stream) and decode products enqueued back to back give, bit for bit, what
 * each gives alone with the device idle before and after it. 1 MiB tiles:
 * several row and column tiles per weight. */
START_TEST(tile_slots_interleave_safely)
{
    const int m = 17;
    const uint64_t K = quick ? 1024 : 2048;
    static const struct {
        const wkind *kind;
        uint64_t N;
        int m;
    } ws[] = {{&K_NF4, 700, 17}, {&K_NF4DQ, 300, 17}, {&K_I8T6, 90, 17},
              {&K_FP4, 40, 17},  {&K_NF4, 700, 1},   {&K_BF16, 500, 17}};
    enum { NW = sizeof ws / sizeof ws[0], ROUNDS = 3 };
    tweight t[NW];
    for (int i = 0; i < NW; i++)
        tw_build(&t[i], ws[i].kind, ws[i].N, K, 64);
    qk_blas_set_tile_bytes(blas, 1 << 20);
    float *x = make_x(&t[0], QDT_F16, m, 0), *dx, *dy[ROUNDS][NW];
    CUDA_OK(cudaMalloc((void **)&dx, (size_t)m * K * 4));
    CUDA_OK(cudaMemcpy(dx, x, (size_t)m * K * 4, cudaMemcpyHostToDevice));
    for (int r = 0; r < ROUNDS; r++)
        for (int i = 0; i < NW; i++)
            CUDA_OK(cudaMalloc((void **)&dy[r][i], (size_t)ws[i].m * ws[i].N * 4));
    qerr err = {0};
    /* round 0 alone, each product followed by a synchronization */
    for (int i = 0; i < NW; i++) {
        ck_assert_msg(qk_matmul(blas, &t[i].d, dx, ws[i].m, QDT_F16, QDT_F32, NULL, QDT_F16,
                                dy[0][i], &err),
                      "%s", err.msg);
        CUDA_OK(cudaStreamSynchronize(stream));
    }
    /* rounds 1.. back to back, in a different order each time */
    for (int r = 1; r < ROUNDS; r++)
        for (int n = 0; n < NW; n++) {
            const int i = r == 1 ? n : NW - 1 - n;
            ck_assert_msg(qk_matmul(blas, &t[i].d, dx, ws[i].m, QDT_F16, QDT_F32, NULL,
                                    QDT_F16, dy[r][i], &err),
                          "%s", err.msg);
        }
    CUDA_OK(cudaStreamSynchronize(stream));
    for (int i = 0; i < NW; i++) {
        const size_t n = (size_t)ws[i].m * ws[i].N;
        float *a = malloc(n * 4), *b = malloc(n * 4);
        CUDA_OK(cudaMemcpy(a, dy[0][i], n * 4, cudaMemcpyDeviceToHost));
        for (int r = 1; r < ROUNDS; r++) {
            CUDA_OK(cudaMemcpy(b, dy[r][i], n * 4, cudaMemcpyDeviceToHost));
            ck_assert_msg(memcmp(a, b, n * 4) == 0,
                          "%s %llu x %llu, m %d: round %d differs from the product alone",
                          t[i].kind->name, (unsigned long long)ws[i].N, (unsigned long long)K,
                          ws[i].m, r);
        }
        free(a);
        free(b);
    }
    qk_blas_set_tile_bytes(blas, SIZE_MAX);
    for (int r = 0; r < ROUNDS; r++)
        for (int i = 0; i < NW; i++)
            cudaFree(dy[r][i]);
    for (int i = 0; i < NW; i++)
        tw_free(&t[i]);
    free(x);
    cudaFree(dx);
}
END_TEST

/* qk_matmul captured into a graph (no allocation or synchronization inside;
 * cuBLAS on its preset workspace), replayed twice with new x. */
START_TEST(graph_replay_matches_cpu)
{
    static const struct {
        const wkind *kind;
        qdtype T;
        int m;
        uint64_t N, K;
        int bs;
    } cases[] = {
        {&K_NF4, QDT_BF16, 1, 96, 256, 64}, {&K_NF4DQ, QDT_F16, 77, 67, 131, 64},
        {&K_I8T6, QDT_F16, 9, 40, 192, 64}, {&K_I8T6, QDT_BF16, 3, 40, 192, 64},
        {&K_F16, QDT_F16, 9, 50, 64, 64},
    };
    enum { NC = sizeof cases / sizeof cases[0] };
    tweight t[NC];
    call c[NC];
    dcall d[NC];
    void *hbias[NC];
    for (int i = 0; i < NC; i++) {
        tw_build(&t[i], cases[i].kind, cases[i].N, cases[i].K, cases[i].bs);
        c[i] = pick_call(cases[i].T, cases[i].m, 1); /* f32 bias, round_to T */
        uint64_t n = (uint64_t)c[i].m * cases[i].K;
        CUDA_OK(cudaMalloc((void **)&d[i].xbuf, n * sizeof(float)));
        d[i].x = d[i].xbuf;
        CUDA_OK(cudaMalloc((void **)&d[i].y, (size_t)c[i].m * cases[i].N * sizeof(float)));
        hbias[i] = make_bias(c[i].bias_dt, cases[i].N);
        CUDA_OK(cudaMalloc(&d[i].bias, cases[i].N * 4));
        CUDA_OK(cudaMemcpy(d[i].bias, hbias[i], cases[i].N * 4, cudaMemcpyHostToDevice));
    }
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    int ok = 1;
    qerr err = {0};
    for (int i = 0; i < NC && ok; i++)
        ok = qk_matmul(blas, &t[i].d, d[i].x, c[i].m, c[i].T, c[i].bias_dt, d[i].bias,
                       c[i].round_to, d[i].y, &err);
    cudaError_t ce = cudaStreamEndCapture(stream, &graph);
    ck_assert_msg(ok, "qk_matmul under capture: %s", err.msg);
    ck_assert_msg(ce == cudaSuccess, "capture: %s", cudaGetErrorString(ce));
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    for (int rep = 0; rep < 2; rep++) {
        float *x[NC], *ref[NC];
        for (int i = 0; i < NC; i++) {
            uint64_t n = (uint64_t)c[i].m * cases[i].K, ny = (uint64_t)c[i].m * cases[i].N;
            x[i] = make_x(&t[i], c[i].T, c[i].m, rep);
            ref[i] = malloc(ny * sizeof(float));
            ref_product(&t[i], x[i], &c[i], hbias[i], ref[i]);
            CUDA_OK(cudaMemcpy(d[i].x, x[i], n * sizeof(float), cudaMemcpyHostToDevice));
            CUDA_OK(cudaMemset(d[i].y, 0xff, ny * sizeof(float)));
        }
        CUDA_OK(cudaGraphLaunch(exec, stream));
        CUDA_OK(cudaStreamSynchronize(stream));
        for (int i = 0; i < NC; i++) {
            uint64_t ny = (uint64_t)c[i].m * cases[i].N;
            float *got = malloc(ny * sizeof(float));
            CUDA_OK(cudaMemcpy(got, d[i].y, ny * sizeof(float), cudaMemcpyDeviceToHost));
            check_result(&t[i], &c[i], got, ref[i], "graph");
            free(got);
            free(x[i]);
            free(ref[i]);
        }
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    for (int i = 0; i < NC; i++) {
        cudaFree(d[i].xbuf);
        cudaFree(d[i].y);
        cudaFree(d[i].bias);
        free(hbias[i]);
        tw_free(&t[i]);
    }
}
END_TEST

START_TEST(bad_arguments_refused)
{
    qerr err = {0};
    ck_assert_ptr_null(qk_blas_create(stream, 0, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_uint_eq(qk_matmul_workspace_size(0, 10, 10, QDT_F32), SIZE_MAX);
    ck_assert_uint_eq(qk_matmul_workspace_size(4, 10, 10, QDT_I8), SIZE_MAX);
    /* workspace sized for m <= 8 refuses m = 77 */
    qk_blas *small = qk_blas_create(stream, qk_matmul_workspace_size(8, 64, 64, QDT_F16), &err);
    ck_assert_msg(small != NULL, "%s", err.msg);
    tweight t;
    tw_build(&t, &K_NF4, 64, 64, 64);
    float *dx = NULL, *dy = NULL;
    CUDA_OK(cudaMalloc((void **)&dx, 77 * 64 * sizeof(float)));
    CUDA_OK(cudaMalloc((void **)&dy, 77 * 64 * sizeof(float)));
    CUDA_OK(cudaMemset(dx, 0, 77 * 64 * sizeof(float)));
    err.code = QRUN_OK;
    ck_assert(!qk_matmul(small, &t.d, dx, 77, QDT_F16, QDT_F32, NULL, QDT_F32, dy, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_INVALID_ARGUMENT);
    ck_assert(qk_matmul(small, &t.d, dx, 8, QDT_F16, QDT_F32, NULL, QDT_F32, dy, &err));
    ck_assert(!qk_matmul(small, &t.d, dx, 0, QDT_F16, QDT_F32, NULL, QDT_F32, dy, &err));
    ck_assert(!qk_matmul(small, &t.d, dx, 1, QDT_I8, QDT_F32, NULL, QDT_F32, dy, &err));
    ck_assert(!qk_matmul(small, &t.d, dx, 1, QDT_F16, QDT_F32, NULL, QDT_NF4, dy, &err));
    qweight bad = t.d;
    bad.blocksize = 48;
    ck_assert(!qk_matmul(small, &bad, dx, 1, QDT_F16, QDT_F32, NULL, QDT_F32, dy, &err));
    bad = t.d;
    bad.absmax = NULL;
    ck_assert(!qk_matmul(small, &bad, dx, 1, QDT_F16, QDT_F32, NULL, QDT_F32, dy, &err));
    bad.dtype = QDT_I8; /* no scb */
    ck_assert(!qk_matmul(small, &bad, dx, 1, QDT_F16, QDT_F32, NULL, QDT_F32, dy, &err));
    /* a folded add may not read an output of the same call */
    const qweight *one = &t.d;
    const qdtype f32 = QDT_F32;
    const void *no_bias = NULL;
    qk_mm_post post = {false, dy + 64};
    err.code = QRUN_OK;
    ck_assert(!qk_matmul_multi(small, &one, 1, dx, 2, QDT_F16, &f32, &no_bias, QDT_F32, &post,
                               &dy, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(err.msg, "overlaps output") != NULL, "%s", err.msg);
    post.add = dy + 128; /* just past m = 2 rows of 64 */
    ck_assert_msg(qk_matmul_multi(small, &one, 1, dx, 2, QDT_F16, &f32, &no_bias, QDT_F32, &post,
                                  &dy, &err),
                  "%s", err.msg);
    CUDA_OK(cudaStreamSynchronize(stream));
    cudaFree(dx);
    cudaFree(dy);
    tw_free(&t);
    qk_blas_free(small);
}
END_TEST

int main(void)
{
    if (cuda_device_count(NULL) <= 0)
        return 77;
    const char *q = getenv("QRUN_TEST_QUICK");
    quick = q && atoi(q) != 0;
    Suite *s = suite_create("gpu_matmul");
    TCase *tc = tcase_create("matmul");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, fourbit_matches_cpu);
    tcase_add_test(tc, int8_matches_cpu_bitwise);
    tcase_add_test(tc, int8_many_outliers_bitwise);
    tcase_add_test(tc, gemv_many_rows_match_cpu);
    tcase_add_test(tc, plain_matches_cpu);
    tcase_add_test(tc, large_shape_matches_cpu);
    tcase_add_test(tc, graph_replay_matches_cpu);
    tcase_add_test(tc, multi_equals_separate);
    tcase_add_test(tc, post_ops_fold_bitwise);
    tcase_add_test(tc, tile_slots_interleave_safely);
    tcase_add_test(tc, bad_arguments_refused);
    suite_add_tcase(s, tc);
    /* The CUDA driver is initialized above and a forked child cannot use
     * it, so the tests run in this process. */
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
