/* CPU matmul (src/cpu/matmul.c) and the weight loader (src/weight.c).
 *
 * References:
 *  - 4-bit / f16 / bf16 / f32 weights: the whole weight dequantized with
 *    src/quant.c (absmax rebuilt with quant_dq_dequantize for double quant),
 *    rounded to the compute dtype with qf32_to_f16 / qf32_to_bf16, then a
 *    double-precision matmul. Bound: |y - ref| <= 1e-5 * max|ref| (DESIGN.md,
 *    f32 paths per op); the weights themselves must be bit-identical
 *    (checked through qmatmul_dequant_row).
 *  - int8: bitsandbytes' Linear8bitLt outputs (tests/data/bnb, H100). With
 *    threshold 0 the result is bit-exact; with threshold 6 the int8 part is
 *    exact and the outlier GEMM differs only in accumulation order, so every
 *    element is within 1 ulp of the output dtype (at the output's magnitude)
 *    and at most 5% of the elements differ at all. Random int8 cases are
 *    compared bitwise with a plain scalar transcription of bnb-format.md §5.
 *  - results are bitwise identical for 1, 2 and 3 threads.
 * Inputs are fresh random numbers each run (QRUN_TEST_SEED reproduces). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "cpu/matmul.h"
#include "cpu/threads.h"
#include "dtype.h"
#include "import/safetensors.h"
#include "qbin.h"
#include "quant.h"
#include "testutil.h"
#include "weight.h"

#define REL_BOUND 1e-5

static tu_rng rng;
static qthreads *pools[4]; /* index = thread count */

static void setup(void)
{
    rng.s = tu_seed();
    for (int t = 1; t <= 3; t++) {
        pools[t] = qthreads_create(t, NULL);
        ck_assert(pools[t] != NULL);
    }
}

static void teardown(void)
{
    for (int t = 1; t <= 3; t++)
        qthreads_free(pools[t]);
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float round_ref(qdtype t, float v)
{
    if (t == QDT_F16)
        return qf16_to_f32(qf32_to_f16(v));
    if (t == QDT_BF16)
        return qbf16_to_f32(qf32_to_bf16(v));
    return v;
}

static const char *tname(qdtype t) { return qdtype_name(t); }

/* ---- a weight built in memory ---------------------------------------------- */

typedef struct tweight {
    qweight w;
    void *data;
    float *absmax, *absmax2, *scb;
    uint8_t *qabsmax;
    float *ref; /* [N*K] dequantized f32 (before rounding to the compute dtype) */
} tweight;

static void tweight_free(tweight *t)
{
    free(t->data);
    free(t->absmax);
    free(t->absmax2);
    free(t->scb);
    free(t->qabsmax);
    free(t->ref);
    memset(t, 0, sizeof *t);
}

static float *random_values(uint64_t n, float scale)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    ck_assert(v != NULL);
    for (uint64_t i = 0; i < n; i++)
        v[i] = tu_normal(&rng) * scale;
    return v;
}

/* dtype NF4/FP4 (dq: double quantization), F16/BF16/F32 or I8. */
static void tweight_make(tweight *t, qdtype dt, uint64_t N, uint64_t K, int bs, bool dq)
{
    memset(t, 0, sizeof *t);
    uint64_t n = N * K;
    float *src = random_values(n, 0.1f);
    /* A few zero stretches: all-zero blocks dequantize to -0.0 (nf4). */
    if (n > 100 && tu_next(&rng) % 2)
        memset(src + n / 3, 0, 50 * sizeof *src);
    t->w.dtype = dt;
    t->w.rows = N;
    t->w.cols = K;
    t->ref = malloc(n * sizeof *t->ref);
    if (dt == QDT_NF4 || dt == QDT_FP4) {
        quant_4bit_type qt = dt == QDT_NF4 ? QUANT_NF4 : QUANT_FP4;
        uint64_t nb = quant_nblocks(n, bs);
        t->data = malloc(n / 2 + 1);
        t->absmax = malloc(nb * sizeof(float));
        quant_4bit_quantize(qt, src, n, bs, t->data, t->absmax);
        t->w.blocksize = bs;
        t->w.data = t->data;
        if (dq) {
            uint64_t ng = (nb + 255) / 256;
            t->qabsmax = malloc(nb);
            t->absmax2 = malloc(ng * sizeof(float));
            t->w.absmax_offset = quant_dq_offset(t->absmax, nb);
            quant_dq_quantize(t->absmax, nb, t->w.absmax_offset, quant_dynamic_map, t->qabsmax,
                              t->absmax2);
            quant_dq_dequantize(t->qabsmax, t->absmax2, t->w.absmax_offset, quant_dynamic_map, 0,
                                nb, t->absmax); /* the reference absmax */
            t->w.qabsmax = t->qabsmax;
            t->w.absmax2 = t->absmax2;
            t->w.dq_map = quant_dynamic_map;
        } else {
            t->w.absmax = t->absmax;
        }
        quant_4bit_dequantize(qt, t->data, t->absmax, 0, n, bs, t->ref);
    } else if (dt == QDT_I8) {
        for (uint64_t i = 0; i < n; i++)
            src[i] = round_ref(QDT_F16, src[i]);
        t->data = malloc(n);
        t->scb = malloc(N * sizeof(float));
        quant_int8_quantize_rows(src, N, K, t->data, t->scb);
        quant_int8_dequantize_rows(t->data, t->scb, N, K, t->ref);
        t->w.data = t->data;
        t->w.scb = t->scb;
    } else {
        size_t item = dt == QDT_F32 ? 4 : 2;
        t->data = malloc(n * item);
        for (uint64_t i = 0; i < n; i++) {
            if (dt == QDT_F32) {
                ((float *)t->data)[i] = src[i];
                t->ref[i] = src[i];
            } else {
                uint16_t h = dt == QDT_F16 ? qf32_to_f16(src[i]) : qf32_to_bf16(src[i]);
                ((uint16_t *)t->data)[i] = h;
                t->ref[i] = dt == QDT_F16 ? qf16_to_f32(h) : qbf16_to_f32(h);
            }
        }
        t->w.data = t->data;
    }
    free(src);
}

/* Reference y = x · round_T(ref)ᵀ + bias in double. */
static double *ref_matmul(const tweight *t, const float *x, uint64_t M, qdtype T,
                          const float *bias)
{
    uint64_t N = t->w.rows, K = t->w.cols;
    double *y = malloc(M * N * sizeof *y);
    float *wr = malloc(K * sizeof *wr);
    for (uint64_t n = 0; n < N; n++) {
        for (uint64_t k = 0; k < K; k++)
            wr[k] = round_ref(T, t->ref[n * K + k]);
        for (uint64_t m = 0; m < M; m++) {
            double s = 0;
            for (uint64_t k = 0; k < K; k++)
                s += (double)x[m * K + k] * (double)wr[k];
            y[m * N + n] = s + (bias ? (double)bias[n] : 0.0);
        }
    }
    free(wr);
    return y;
}

/* Bias of N values in dtype bt: raw storage plus its f32 values. */
static void *make_bias(qdtype bt, uint64_t N, float *vals)
{
    void *b = malloc(N * 4);
    for (uint64_t n = 0; n < N; n++) {
        float v = tu_normal(&rng);
        if (bt == QDT_F32) {
            ((float *)b)[n] = v;
        } else {
            uint16_t h = bt == QDT_F16 ? qf32_to_f16(v) : qf32_to_bf16(v);
            ((uint16_t *)b)[n] = h;
            v = bt == QDT_F16 ? qf16_to_f32(h) : qbf16_to_f32(h);
        }
        vals[n] = v;
    }
    return b;
}

/* Run with 1, 2 and 3 threads; all must agree bitwise. Returns y (1 thread). */
static float *run_all_threads(const qweight *w, const float *x, uint64_t M, qdtype T, qdtype bt,
                              const void *bias)
{
    uint64_t N = w->rows;
    size_t ss = qmatmul_scratch_size(w, M);
    void *scratch = ss ? malloc(ss) : NULL;
    float *y[4];
    qerr err;
    for (int t = 1; t <= 3; t++) {
        y[t] = malloc(M * N * sizeof(float));
        for (uint64_t i = 0; i < M * N; i++)
            y[t][i] = NAN; /* every element must be written */
        ck_assert_msg(qmatmul(w, x, M, T, bt, bias, y[t], scratch, ss, pools[t], &err), "%s",
                      err.msg);
    }
    for (int t = 2; t <= 3; t++)
        for (uint64_t i = 0; i < M * N; i++)
            ck_assert_msg(bits(y[t][i]) == bits(y[1][i]),
                          "%s M=%llu N=%llu K=%llu: %d threads differ at %llu: %a vs %a",
                          qdtype_name(w->dtype), (unsigned long long)M, (unsigned long long)N,
                          (unsigned long long)w->cols, t, (unsigned long long)i, y[t][i],
                          y[1][i]);
    free(y[2]);
    free(y[3]);
    free(scratch);
    return y[1];
}

/* y against the double reference, and every dequantized row bit-exact. */
static void check_float_path(const tweight *t, uint64_t M, qdtype T, qdtype bt)
{
    uint64_t N = t->w.rows, K = t->w.cols;
    float *x = random_values(M * K, 1.0f);
    qmatmul_round(T, x, M * K); /* activations live at compute-dtype values */
    float *bvals = malloc(N * sizeof *bvals);
    void *bias = bt == QDT_COUNT ? NULL : make_bias(bt, N, bvals);
    float *y = run_all_threads(&t->w, x, M, T, bt, bias);
    double *ref = ref_matmul(t, x, M, T, bias ? bvals : NULL);
    double mx = 0;
    for (uint64_t i = 0; i < M * N; i++)
        mx = fmax(mx, fabs(ref[i]));
    for (uint64_t i = 0; i < M * N; i++)
        ck_assert_msg(fabs((double)y[i] - ref[i]) <= REL_BOUND * mx + 1e-30,
                      "%s bs=%d dq=%d T=%s M=%llu N=%llu K=%llu: y[%llu]=%.9g ref %.9g (max %.3g)",
                      qdtype_name(t->w.dtype), t->w.blocksize, t->w.qabsmax != NULL, tname(T),
                      (unsigned long long)M, (unsigned long long)N, (unsigned long long)K,
                      (unsigned long long)i, y[i], ref[i], mx);
    /* Dequantized rows: exactly round_T(reference value). */
    float *row = malloc(K * sizeof *row);
    for (uint64_t n = 0; n < N; n += 1 + N / 5) {
        qerr err;
        ck_assert_msg(qmatmul_dequant_row(&t->w, n, T, row, &err), "%s", err.msg);
        for (uint64_t k = 0; k < K; k++)
            ck_assert_msg(bits(row[k]) == bits(round_ref(T, t->ref[n * K + k])),
                          "%s T=%s K=%llu: row %llu col %llu: %a vs %a", qdtype_name(t->w.dtype),
                          tname(T), (unsigned long long)K, (unsigned long long)n,
                          (unsigned long long)k, row[k], round_ref(T, t->ref[n * K + k]));
    }
    free(row);
    free(x);
    free(bvals);
    free(bias);
    free(y);
    free(ref);
}

/* ---- rounding helpers ---------------------------------------------------------- */

START_TEST(round_matches_dtype_c)
{
    static const uint32_t special[] = {
        0x00000000, 0x80000000, 0x00000001, 0x33800000, 0x33800001, 0x337fffff, 0x387fc000,
        0x387fe000, 0x387ff000, 0x38800000, 0x477fe000, 0x477fefff, 0x477ff000, 0x477fffff,
        0x47800000, 0x7f7fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0x3f808000,
        0x3f818000, 0x3f801000, 0x3f803000, 0xc7fff000};
    enum { NR = 200000 };
    float *v = malloc((NR + 32) * sizeof *v), *c16 = malloc((NR + 32) * sizeof *v);
    size_t n = 0;
    for (size_t i = 0; i < sizeof special / sizeof *special; i++)
        memcpy(&v[n++], &special[i], 4);
    for (int i = 0; i < NR; i++) {
        uint32_t u = (uint32_t)tu_next(&rng);
        if (i % 2) /* bias towards the f16 range */
            u = (u & 0x80ffffffu) | ((uint32_t)(0x30 + tu_next(&rng) % 0x18) << 24);
        memcpy(&v[n++], &u, 4);
    }
    memcpy(c16, v, n * sizeof *v);
    qmatmul_round(QDT_F16, c16, n);
    for (size_t i = 0; i < n; i++) {
        float r = qf16_to_f32(qf32_to_f16(v[i]));
        if (isnan(r))
            ck_assert_msg(isnan(c16[i]), "f16 of %08x: NaN expected", bits(v[i]));
        else
            ck_assert_msg(bits(c16[i]) == bits(r), "f16 of %08x: %08x vs %08x", bits(v[i]),
                          bits(c16[i]), bits(r));
    }
    memcpy(c16, v, n * sizeof *v);
    qmatmul_round(QDT_BF16, c16, n);
    for (size_t i = 0; i < n; i++) {
        float r = qbf16_to_f32(qf32_to_bf16(v[i]));
        if (isnan(r))
            ck_assert_msg(isnan(c16[i]), "bf16 of %08x: NaN expected", bits(v[i]));
        else
            ck_assert_msg(bits(c16[i]) == bits(r), "bf16 of %08x: %08x vs %08x", bits(v[i]),
                          bits(c16[i]), bits(r));
    }
    memcpy(c16, v, n * sizeof *v);
    qmatmul_round(QDT_F32, c16, n);
    ck_assert(memcmp(c16, v, n * sizeof *v) == 0);
    free(v);
    free(c16);
}
END_TEST

/* Every f16 bit pattern through an f16 weight: the vectorized f16 -> f32
 * conversion must equal qf16_to_f32 (subnormals, inf, NaN included). */
START_TEST(f16_weight_all_patterns)
{
    qweight w = {.dtype = QDT_F16, .rows = 1, .cols = 65536};
    uint16_t *h = malloc(65536 * 2);
    for (uint32_t i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    w.data = h;
    float *row = malloc(65536 * sizeof *row);
    qerr err;
    ck_assert_msg(qmatmul_dequant_row(&w, 0, QDT_F32, row, &err), "%s", err.msg);
    for (uint32_t i = 0; i < 65536; i++) {
        float r = qf16_to_f32((uint16_t)i);
        if (isnan(r))
            ck_assert(isnan(row[i]));
        else
            ck_assert_msg(bits(row[i]) == bits(r), "f16 %04x: %08x vs %08x", i, bits(row[i]),
                          bits(r));
    }
    free(h);
    free(row);
}
END_TEST

/* ---- 4-bit and plain weights against the double reference ---------------------- */

static const uint64_t Ms[] = {1, 3, 7, 33};
static const uint64_t Ns[] = {1, 3, 7, 33};

START_TEST(fourbit_random)
{
    static const int bss[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
    static const uint64_t Ks[] = {64, 129, 200, 515, 1000, 1536};
    qdtype dt = _i % 2 ? QDT_FP4 : QDT_NF4;
    bool dq = (_i / 2) % 2;
    for (int r = 0; r < 10; r++) {
        int bs = bss[tu_next(&rng) % 8];
        uint64_t K = Ks[tu_next(&rng) % 6];
        uint64_t N = Ns[tu_next(&rng) % 4], M = Ms[tu_next(&rng) % 4];
        if (r == 0) { /* always cover the small-M kernel with a big block */
            M = 1;
            K = 515;
            bs = 4096;
        }
        tweight t;
        tweight_make(&t, dt, N, K, bs, dq);
        qdtype T = (qdtype)(r % 3); /* F32, F16, BF16 */
        qdtype bt = r % 4 == 3 ? QDT_COUNT : (qdtype)((r / 3) % 3);
        check_float_path(&t, M, T, bt);
        tweight_free(&t);
    }
}
END_TEST

/* Rows longer than a dequantization chunk, and the GEMM's edges. */
START_TEST(fourbit_long_rows)
{
    tweight t;
    tweight_make(&t, QDT_NF4, 19, 1537, 64, true);
    check_float_path(&t, 1, QDT_BF16, QDT_BF16);
    check_float_path(&t, 5, QDT_F16, QDT_F16);
    check_float_path(&t, 70, QDT_F32, QDT_F32);
    tweight_free(&t);
    tweight_make(&t, QDT_FP4, 40, 2048, 128, false);
    check_float_path(&t, 4, QDT_BF16, QDT_COUNT);
    check_float_path(&t, 65, QDT_BF16, QDT_F32);
    tweight_free(&t);
}
END_TEST

START_TEST(plain_random)
{
    static const qdtype dts[] = {QDT_F16, QDT_BF16, QDT_F32};
    static const uint64_t Ks[] = {1, 31, 64, 300, 1025};
    qdtype dt = dts[_i];
    for (int r = 0; r < 9; r++) {
        uint64_t K = Ks[tu_next(&rng) % 5];
        uint64_t N = Ns[tu_next(&rng) % 4], M = Ms[tu_next(&rng) % 4];
        tweight t;
        tweight_make(&t, dt, N, K, 0, false);
        check_float_path(&t, M, (qdtype)(r % 3), r % 2 ? QDT_COUNT : (qdtype)(r % 3));
        tweight_free(&t);
    }
}
END_TEST

/* ---- int8 ------------------------------------------------------------------------ */

/* bnb-format.md §5 transcribed as plainly as possible, scalar. x is [M,K]
 * at compute-dtype values; returns y as f32 values of T. */
static float *int8_reference(const qweight *w, const float *x, uint64_t M, qdtype T,
                             const float *bvals)
{
    uint64_t N = w->rows, K = w->cols;
    float tau = w->int8_threshold;
    const int8_t *cb = w->data;
    float *x16 = malloc(M * K * sizeof *x16), *y = malloc(M * N * sizeof *y);
    bool *out = calloc(K, 1);
    for (uint64_t i = 0; i < M * K; i++)
        x16[i] = round_ref(QDT_F16, x[i]);
    if (tau > 0)
        for (uint64_t i = 0; i < M * K; i++)
            if (fabsf(x16[i]) >= tau)
                out[i % K] = true;
    int32_t *ca = malloc(M * K * sizeof *ca);
    float *sca = malloc(M * sizeof *sca);
    for (uint64_t m = 0; m < M; m++) {
        float a = 0;
        for (uint64_t k = 0; k < K; k++) {
            float v = fabsf(x16[m * K + k]);
            if ((tau <= 0 || v < tau) && v > a)
                a = v;
        }
        sca[m] = a;
        for (uint64_t k = 0; k < K; k++) {
            float p = x16[m * K + k] * (127.0f / a);
            ca[m * K + k] = out[k] || isnan(p) ? 0 : (int32_t)nearbyintf(p);
        }
    }
    for (uint64_t m = 0; m < M; m++) {
        for (uint64_t n = 0; n < N; n++) {
            int64_t acc = 0;
            for (uint64_t k = 0; k < K; k++)
                acc += (int64_t)ca[m * K + k] * cb[n * K + k];
            float v = ((float)acc * sca[m]) * w->scb[n];
            float y16;
            /* fused only in an f16 model (bitsandbytes: an fp16 bias) */
            if (bvals && T == QDT_F16)
                y16 = round_ref(QDT_F16, fmaf(v, 0x1.040c20p-14f, bvals[n]));
            else {
                y16 = round_ref(QDT_F16, v * 0x1.040c20p-14f);
                if (bvals)
                    y16 = round_ref(QDT_F16, y16 + bvals[n]);
            }
            float yt = round_ref(T, y16);
            float s = 0;
            bool any = false;
            for (uint64_t k = 0; k < K; k++) {
                if (!out[k])
                    continue;
                any = true;
                float wv = round_ref(T, ((float)cb[n * K + k] * w->scb[n]) * 0x1.020408p-7f);
                s += round_ref(T, x[m * K + k]) * wv;
            }
            y[m * N + n] = any ? round_ref(T, yt + s) : yt;
        }
    }
    free(x16);
    free(out);
    free(ca);
    free(sca);
    return y;
}

START_TEST(int8_random_vs_transcription)
{
    static const uint64_t Ks[] = {1, 7, 64, 515, 1024};
    for (int r = 0; r < 12; r++) {
        uint64_t K = Ks[tu_next(&rng) % 5];
        uint64_t N = Ns[tu_next(&rng) % 4], M = r == 0 ? 70 : Ms[tu_next(&rng) % 4];
        tweight t;
        tweight_make(&t, QDT_I8, N, K, 0, false);
        t.w.int8_threshold = r % 3 == 0 ? 0.0f : 6.0f;
        qdtype T = (qdtype)(r % 3);
        qdtype bt = r % 4 == 3 ? QDT_COUNT : (qdtype)((r / 2) % 3);
        float *x = random_values(M * K, 2.0f);
        /* Plant outliers, one exactly at the threshold after f16 rounding. */
        if (K > 4) {
            x[tu_next(&rng) % (M * K)] = 5.999f;
            x[tu_next(&rng) % (M * K)] = -9.0f;
        }
        qmatmul_round(T, x, M * K);
        float *bvals = malloc(N * sizeof *bvals);
        void *bias = bt == QDT_COUNT ? NULL : make_bias(bt, N, bvals);
        float *y = run_all_threads(&t.w, x, M, T, bt, bias);
        float *ref = int8_reference(&t.w, x, M, T, bias ? bvals : NULL);
        for (uint64_t i = 0; i < M * N; i++)
            ck_assert_msg(bits(y[i]) == bits(ref[i]) || (y[i] == 0 && ref[i] == 0),
                          "int8 tau=%g T=%s M=%llu N=%llu K=%llu: y[%llu] %a vs %a",
                          t.w.int8_threshold, tname(T), (unsigned long long)M,
                          (unsigned long long)N, (unsigned long long)K, (unsigned long long)i,
                          y[i], ref[i]);
        free(x);
        free(bvals);
        free(bias);
        free(y);
        free(ref);
        tweight_free(&t);
    }
}
END_TEST

static st_file *bnb8;

static float *read_f32(const char *name, uint64_t *numel)
{
    const st_tensor *t = st_find(bnb8, name);
    ck_assert_msg(t != NULL, "bnb8.safetensors has no %s", name);
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    float *v = malloc((n ? n : 1) * sizeof *v);
    qerr err;
    ck_assert_msg(st_read_f32(bnb8, t, v, &err), "%s", err.msg);
    if (numel)
        *numel = n;
    return v;
}

static void open_bnb8(void)
{
    qerr err;
    bnb8 = st_open(tu_data_path("bnb/bnb8.safetensors"), &err);
    ck_assert_msg(bnb8 != NULL, "%s", err.msg);
}

static float ulp_of(qdtype t, float v)
{
    int e;
    frexpf(fabsf(v), &e); /* |v| in [2^(e-1), 2^e) */
    int mant = t == QDT_F16 ? 10 : 7, emin = t == QDT_F16 ? -14 : -126;
    int ee = e - 1 < emin ? emin : e - 1;
    return ldexpf(1.0f, ee - mant);
}

START_TEST(int8_vs_bitsandbytes)
{
    open_bnb8();
    static const struct {
        const char *name;
        qdtype T;
        float tau;
    } cases[] = {{"lin8_f16.t0", QDT_F16, 0.0f},
                 {"lin8_f16.t6", QDT_F16, 6.0f},
                 {"lin8_bf16.t0", QDT_BF16, 0.0f},
                 {"lin8_bf16.t6", QDT_BF16, 6.0f}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char base[64], nm[96];
        snprintf(base, sizeof base, "%s", cases[c].name);
        *strchr(base, '.') = '\0'; /* lin8_f16 */
        qdtype T = cases[c].T;
        uint64_t nw, nx, nb, ny;
        snprintf(nm, sizeof nm, "%s.w", base);
        float *wsrc = read_f32(nm, &nw);
        const st_tensor *wt = st_find(bnb8, nm);
        uint64_t N = wt->shape[0], K = wt->shape[1];
        snprintf(nm, sizeof nm, "%s.x", base);
        float *x = read_f32(nm, &nx);
        uint64_t M = nx / K;
        snprintf(nm, sizeof nm, "%s.bias", base);
        float *bvals = read_f32(nm, &nb);
        snprintf(nm, sizeof nm, "%s.y", cases[c].name);
        float *yb = read_f32(nm, &ny);
        ck_assert(nb == N && ny == M * N);
        /* Int8Params: the f16 copy of the weight, row-wise quantized. */
        for (uint64_t i = 0; i < nw; i++)
            wsrc[i] = round_ref(QDT_F16, wsrc[i]);
        int8_t *cb = malloc(nw);
        float *scb = malloc(N * sizeof *scb);
        quant_int8_quantize_rows(wsrc, N, K, cb, scb);
        qweight w = {.dtype = QDT_I8, .rows = N, .cols = K, .data = cb, .scb = scb,
                     .int8_threshold = cases[c].tau};
        /* The bias in its stored dtype (f16 fuses, bf16 adds in f16). */
        uint16_t *bias = malloc(N * 2);
        for (uint64_t n = 0; n < N; n++)
            bias[n] = T == QDT_F16 ? qf32_to_f16(bvals[n]) : qf32_to_bf16(bvals[n]);
        float *y = run_all_threads(&w, x, M, T, T, bias);
        int differ = 0;
        for (uint64_t i = 0; i < M * N; i++) {
            if (cases[c].tau == 0.0f) {
                ck_assert_msg(bits(y[i]) == bits(yb[i]) || (y[i] == 0 && yb[i] == 0),
                              "%s: y[%llu] = %a, bitsandbytes %a", cases[c].name,
                              (unsigned long long)i, y[i], yb[i]);
            } else {
                differ += y[i] != yb[i];
                ck_assert_msg(fabsf(y[i] - yb[i]) <= ulp_of(T, yb[i]),
                              "%s: y[%llu] = %a, bitsandbytes %a (more than 1 ulp)",
                              cases[c].name, (unsigned long long)i, y[i], yb[i]);
            }
        }
        ck_assert_msg(differ <= (int)(M * N / 20), "%s: %d of %llu outputs differ",
                      cases[c].name, differ, (unsigned long long)(M * N));
        free(wsrc);
        free(x);
        free(bvals);
        free(yb);
        free(cb);
        free(scb);
        free(bias);
        free(y);
    }
    st_close(bnb8);
}
END_TEST

START_TEST(int8_acts_vs_bitsandbytes)
{
    open_bnb8();
    static const char *names[] = {"a8_4x515", "a8_1x1024", "a8_7x256"};
    for (int c = 0; c < 3; c++) {
        for (int tau = 0; tau <= 6; tau += 6) {
            char nm[96];
            snprintf(nm, sizeof nm, "%s.input", names[c]);
            uint64_t n;
            float *x = read_f32(nm, &n);
            const st_tensor *xt = st_find(bnb8, nm);
            uint64_t M = xt->shape[0], K = xt->shape[1];
            snprintf(nm, sizeof nm, "%s.t%d.ca", names[c], tau);
            const st_tensor *cat = st_find(bnb8, nm);
            ck_assert(cat != NULL);
            int8_t *cab = malloc(n);
            qerr err;
            ck_assert_msg(st_read(bnb8, cat, cab, &err), "%s", err.msg);
            snprintf(nm, sizeof nm, "%s.t%d.sca", names[c], tau);
            float *scab = read_f32(nm, NULL);
            snprintf(nm, sizeof nm, "%s.t%d.outlier_cols", names[c], tau);
            const st_tensor *ot = st_find(bnb8, nm);
            ck_assert(ot != NULL);
            int32_t *ob = malloc(ot->nbytes + 4);
            ck_assert(st_read(bnb8, ot, ob, &err));
            uint32_t nob = (uint32_t)(ot->nbytes / 4);

            int8_t *ca = malloc(n);
            float *sca = malloc(M * sizeof *sca);
            uint32_t *oc = malloc(K * sizeof *oc), no = 12345;
            qmatmul_int8_quantize_acts(x, M, K, (float)tau, ca, sca, oc, &no);
            ck_assert_msg(no == nob, "%s t%d: %u outlier columns, bitsandbytes %u", names[c],
                          tau, no, nob);
            for (uint32_t j = 0; j < no; j++)
                ck_assert_msg(oc[j] == (uint32_t)ob[j], "%s t%d: outlier %u: %u vs %d", names[c],
                              tau, j, oc[j], ob[j]);
            for (uint64_t m = 0; m < M; m++)
                ck_assert_msg(bits(sca[m]) == bits(scab[m]), "%s t%d: sca[%llu] %a vs %a",
                              names[c], tau, (unsigned long long)m, sca[m], scab[m]);
            /* ca: identical except where the scaled value sits within the
             * GPU reciprocal's reach of a half-integer (quant.h). */
            int near = 0;
            for (uint64_t i = 0; i < n; i++) {
                if (ca[i] == cab[i])
                    continue;
                float v = round_ref(QDT_F16, x[i]) * (127.0f / sca[i / K]);
                ck_assert_msg(quant_int8_near_half(v, QUANT_GPU_RCP_ULPS) &&
                                  abs(ca[i] - cab[i]) == 1,
                              "%s t%d: ca[%llu] = %d, bitsandbytes %d", names[c], tau,
                              (unsigned long long)i, ca[i], cab[i]);
                near++;
            }
            ck_assert_msg(near <= 2, "%s t%d: %d near-half differences", names[c], tau, near);
            free(x);
            free(cab);
            free(scab);
            free(ob);
            free(ca);
            free(sca);
            free(oc);
        }
    }
    st_close(bnb8);
}
END_TEST

START_TEST(bad_arguments)
{
    tweight t;
    tweight_make(&t, QDT_I8, 3, 10, 0, false);
    float x[20] = {0}, y[6];
    qerr err;
    size_t ss = qmatmul_scratch_size(&t.w, 2);
    ck_assert(ss > 0);
    char *scratch = malloc(ss);
    ck_assert(!qmatmul(&t.w, x, 2, QDT_F16, QDT_F16, NULL, y, scratch, ss - 1, NULL, &err));
    ck_assert(strstr(err.msg, "scratch") != NULL);
    ck_assert(!qmatmul(&t.w, x, 2, QDT_I8, QDT_F16, NULL, y, scratch, ss, NULL, &err));
    ck_assert(qmatmul(&t.w, x, 2, QDT_F16, QDT_F16, NULL, y, scratch, ss, NULL, &err));
    ck_assert(!qmatmul_dequant_row(&t.w, 3, QDT_F32, y, &err));
    t.w.scb = NULL;
    ck_assert(!qmatmul(&t.w, x, 2, QDT_F16, QDT_F16, NULL, y, scratch, ss, NULL, &err));
    free(scratch);
    tweight_free(&t);
    tweight_make(&t, QDT_NF4, 3, 10, 64, false);
    ck_assert_uint_eq(qmatmul_scratch_size(&t.w, 100), 0);
    t.w.blocksize = 48;
    ck_assert(!qmatmul(&t.w, x, 2, QDT_F16, QDT_F16, NULL, y, NULL, 0, NULL, &err));
    tweight_free(&t);
}
END_TEST

/* ---- loading from a .qbin --------------------------------------------------------- */

static char *tmpdir;

static void setup_tmp(void)
{
    setup();
    tmpdir = tu_tmpdir();
    ck_assert(tmpdir != NULL);
}

static void teardown_tmp(void)
{
    teardown();
    tu_rmtree(tmpdir);
    free(tmpdir);
}

static cJSON *quant_meta(const char *kind, int bs, bool dq, double tau)
{
    cJSON *meta = cJSON_CreateObject(), *q = cJSON_AddObjectToObject(meta, "quantization");
    cJSON_AddStringToObject(q, "weights", kind);
    cJSON_AddNumberToObject(q, "layout", 1);
    if (bs) {
        cJSON_AddNumberToObject(q, "blocksize", bs);
        cJSON_AddBoolToObject(q, "double_quant", dq);
    }
    if (tau >= 0)
        cJSON_AddNumberToObject(q, "int8_threshold", tau);
    return meta;
}

/* Write the weight `t` as "W" (+ companions) into a .qbin; `skip` names a
 * companion suffix to leave out, `bad_shape` one to write one element short. */
static qbin_file *write_qbin(const tweight *t, const char *kind, const char *skip,
                             const char *bad_shape, qerr *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/w.qbin", tmpdir);
    qbin_writer *wr = qbin_writer_open(path, err);
    ck_assert(wr != NULL);
    const qweight *w = &t->w;
    uint64_t n = w->rows * w->cols, shape[2] = {w->rows, w->cols};
    uint64_t dn = 0;
    ck_assert(qdtype_nbytes(w->dtype, n, &dn));
    ck_assert(qbin_writer_add(wr, "W", w->dtype, 2, shape, w->data, dn, err));
#define AUX(suffix, dt, len, ptr, item)                                                            \
    do {                                                                                           \
        if (!skip || strcmp(skip, suffix)) {                                                       \
            uint64_t l = (len) - (bad_shape && !strcmp(bad_shape, suffix));                        \
            ck_assert(qbin_writer_add(wr, "W" suffix, dt, 1, &l, ptr, l * (item), err));           \
        }                                                                                          \
    } while (0)
    uint64_t nb = w->blocksize ? quant_nblocks(n, w->blocksize) : 0;
    bool dq = w->qabsmax != NULL;
    if (w->absmax)
        AUX(".absmax", QDT_F32, nb, w->absmax, 4);
    if (dq) {
        AUX(".qabsmax", QDT_U8, nb, w->qabsmax, 1);
        AUX(".absmax2", QDT_F32, (nb + 255) / 256, w->absmax2, 4);
        AUX(".absmax_offset", QDT_F32, 1, &w->absmax_offset, 4);
        uint64_t l = 256;
        ck_assert(qbin_writer_add(wr, "quant.dynamic_map", QDT_F32, 1, &l, quant_dynamic_map,
                                  1024, err));
    }
    if (w->scb)
        AUX(".scb", QDT_F32, w->rows, w->scb, 4);
#undef AUX
    cJSON *meta = quant_meta(kind, w->blocksize, dq, w->scb ? w->int8_threshold : -1);
    ck_assert_msg(qbin_writer_finish(wr, meta, err), "%s", err->msg);
    cJSON_Delete(meta);
    qbin_file *f = qbin_open(path, 0, err);
    ck_assert_msg(f != NULL, "%s", err->msg);
    return f;
}

START_TEST(load_small_qbin)
{
    static const struct {
        qdtype dt;
        bool dq;
        const char *kind;
    } cases[] = {{QDT_NF4, false, "nf4"}, {QDT_NF4, true, "nf4"}, {QDT_FP4, true, "fp4"},
                 {QDT_I8, false, "int8"}, {QDT_F16, false, "f16"}, {QDT_BF16, false, "bf16"}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        tweight t;
        tweight_make(&t, cases[c].dt, 7, 300, 128, cases[c].dq); /* nblocks > 1, straddling */
        t.w.int8_threshold = cases[c].dt == QDT_I8 ? 6.0f : 0.0f;
        qerr err;
        qbin_file *f = write_qbin(&t, cases[c].kind, NULL, NULL, &err);
        qweight w;
        ck_assert_msg(qweight_from_qbin(f, "W", &w, &err), "%s", err.msg);
        ck_assert_int_eq(w.dtype, cases[c].dt);
        ck_assert(w.rows == 7 && w.cols == 300);
        ck_assert_int_eq(w.blocksize, t.w.blocksize);
        ck_assert_int_eq(w.absmax != NULL, t.w.absmax != NULL);
        ck_assert_int_eq(w.qabsmax != NULL, cases[c].dq);
        ck_assert(bits(w.absmax_offset) == bits(t.w.absmax_offset));
        ck_assert(w.int8_threshold == t.w.int8_threshold);
        /* Same products from the loaded view as from the in-memory one. */
        float *x = random_values(3 * 300, 1.0f);
        size_t ss = qmatmul_scratch_size(&w, 3);
        void *scratch = ss ? malloc(ss) : NULL;
        float y1[21], y2[21];
        ck_assert(qmatmul(&w, x, 3, QDT_BF16, QDT_F32, NULL, y1, scratch, ss, NULL, &err));
        ck_assert(qmatmul(&t.w, x, 3, QDT_BF16, QDT_F32, NULL, y2, scratch, ss, NULL, &err));
        ck_assert(memcmp(y1, y2, sizeof y1) == 0);
        free(scratch);
        free(x);
        ck_assert(!qweight_from_qbin(f, "nope", &w, &err));
        ck_assert(strstr(err.msg, "nope") != NULL);
        qbin_close(f);

        /* Missing or misshapen companions are named. */
        const char *aux = cases[c].dt == QDT_I8 ? ".scb" : cases[c].dq ? ".absmax2"
                          : cases[c].dt == QDT_F16 || cases[c].dt == QDT_BF16 ? NULL
                                                                             : ".absmax";
        if (aux) {
            f = write_qbin(&t, cases[c].kind, aux, NULL, &err);
            ck_assert(!qweight_from_qbin(f, "W", &w, &err));
            ck_assert_msg(strstr(err.msg, aux) != NULL && strstr(err.msg, "W") != NULL, "%s",
                          err.msg);
            qbin_close(f);
            f = write_qbin(&t, cases[c].kind, NULL, aux, &err);
            ck_assert(!qweight_from_qbin(f, "W", &w, &err));
            ck_assert_msg(strstr(err.msg, aux) != NULL && strstr(err.msg, "shape") != NULL, "%s",
                          err.msg);
            qbin_close(f);
            /* Metadata that disagrees with the tensor's dtype. */
            f = write_qbin(&t, cases[c].dt == QDT_I8 ? "nf4" : "int8", NULL, NULL, &err);
            ck_assert(!qweight_from_qbin(f, "W", &w, &err));
            ck_assert_msg(strstr(err.msg, "W") != NULL, "%s", err.msg);
            qbin_close(f);
        }
        tweight_free(&t);
    }
}
END_TEST

/* The converter's output for a tiny Llama: every Linear weight loads, its
 * rows dequantize to exactly what quant.c gives for the source weight, and
 * a product runs. */
START_TEST(load_converted_model)
{
    static const struct {
        qconvert_quant q;
        bool dq;
    } cases[] = {{QCONVERT_NF4, false}, {QCONVERT_NF4, true}, {QCONVERT_FP4, false},
                 {QCONVERT_INT8, false}, {QCONVERT_BF16, false}};
    const char *dir = tu_data_path("tiny/llama-gqa-llama3");
    char stpath[4096];
    snprintf(stpath, sizeof stpath, "%s/model.safetensors", dir);
    qerr err;
    st_file *src = st_open(stpath, &err);
    ck_assert_msg(src != NULL, "%s", err.msg);
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char out[4096];
        snprintf(out, sizeof out, "%s/m%zu.qbin", tmpdir, c);
        qconvert_options o;
        qconvert_options_init(&o);
        o.input_dir = dir;
        o.output_path = out;
        o.quant = cases[c].q;
        o.double_quant = cases[c].dq;
        o.blocksize = 64;
        o.int8_threshold = 6.0f;
        ck_assert_msg(qconvert_run(&o, NULL, &err) == QRUN_OK, "%s", err.msg);
        qbin_file *f = qbin_open(out, 0, &err);
        ck_assert_msg(f != NULL, "%s", err.msg);
        const cJSON *cd = cJSON_GetObjectItemCaseSensitive(qbin_metadata(f), "compute_dtype");
        ck_assert(cJSON_IsString(cd));
        qdtype compute = (qdtype)qdtype_from_name(cd->valuestring);
        int loaded = 0;
        for (int i = 0; i < st_count(src); i++) {
            const st_tensor *st = st_at(src, i);
            /* nn.Linear weights: 2-D tensors of the decoder layers. */
            if (st->ndim != 2 || !strstr(st->name, "layers.") || !strstr(st->name, ".weight"))
                continue;
            qweight w;
            ck_assert_msg(qweight_from_qbin(f, st->name, &w, &err), "%s", err.msg);
            uint64_t N = st->shape[0], K = st->shape[1], n = N * K;
            ck_assert(w.rows == N && w.cols == K);
            float *v = malloc(n * sizeof *v), *ref = malloc(n * sizeof *ref);
            ck_assert(st_read_f32(src, st, v, &err));
            for (uint64_t j = 0; j < n; j++)
                v[j] = round_ref(compute, v[j]); /* the model as loaded in its dtype */
            if (cases[c].q == QCONVERT_INT8) {
                ck_assert_int_eq(w.dtype, QDT_I8);
                ck_assert(w.int8_threshold == 6.0f);
                for (uint64_t j = 0; j < n; j++)
                    v[j] = round_ref(QDT_F16, v[j]);
                int8_t *cb = malloc(n);
                float *scb = malloc(N * sizeof *scb);
                quant_int8_quantize_rows(v, N, K, cb, scb);
                ck_assert(memcmp(cb, w.data, n) == 0 && memcmp(scb, w.scb, N * 4) == 0);
                quant_int8_dequantize_rows(cb, scb, N, K, ref);
                free(cb);
                free(scb);
            } else if (cases[c].q == QCONVERT_BF16) {
                ck_assert_int_eq(w.dtype, QDT_BF16);
                memcpy(ref, v, n * sizeof *v);
                for (uint64_t j = 0; j < n; j++)
                    ref[j] = round_ref(QDT_BF16, ref[j]);
            } else {
                quant_4bit_type qt = cases[c].q == QCONVERT_NF4 ? QUANT_NF4 : QUANT_FP4;
                ck_assert_int_eq(w.dtype, qt == QUANT_NF4 ? QDT_NF4 : QDT_FP4);
                ck_assert_int_eq(w.qabsmax != NULL, cases[c].dq);
                uint64_t nb = quant_nblocks(n, 64);
                uint8_t *codes = malloc(n / 2 + 1);
                float *am = malloc(nb * sizeof *am);
                quant_4bit_quantize(qt, v, n, 64, codes, am);
                ck_assert(memcmp(codes, w.data, (n + 1) / 2) == 0);
                if (cases[c].dq)
                    quant_dq_dequantize(w.qabsmax, w.absmax2, w.absmax_offset, w.dq_map, 0, nb,
                                        am);
                quant_4bit_dequantize(qt, codes, am, 0, n, 64, ref);
                free(codes);
                free(am);
            }
            float *row = malloc(K * sizeof *row);
            for (uint64_t r = 0; r < N; r++) {
                ck_assert(qmatmul_dequant_row(&w, r, compute, row, &err));
                for (uint64_t k = 0; k < K; k++)
                    ck_assert_msg(bits(row[k]) == bits(round_ref(compute, ref[r * K + k])),
                                  "%s row %llu col %llu", st->name, (unsigned long long)r,
                                  (unsigned long long)k);
            }
            float *x = random_values(3 * K, 1.0f), *y = malloc(3 * N * sizeof *y);
            size_t ss = qmatmul_scratch_size(&w, 3);
            void *scratch = ss ? malloc(ss) : NULL;
            ck_assert_msg(qmatmul(&w, x, 3, compute, QDT_F32, NULL, y, scratch, ss, pools[2],
                                  &err),
                          "%s", err.msg);
            for (uint64_t j = 0; j < 3 * N; j++)
                ck_assert(isfinite(y[j]));
            free(scratch);
            free(x);
            free(y);
            free(row);
            free(v);
            free(ref);
            loaded++;
        }
        ck_assert_msg(loaded == 14, "%zu: %d Linear weights loaded, 14 expected", c, loaded);
        qbin_close(f);
    }
    st_close(src);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cpu_matmul");
    TCase *tc = tcase_create("numerics");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, round_matches_dtype_c);
    tcase_add_test(tc, f16_weight_all_patterns);
    tcase_add_loop_test(tc, fourbit_random, 0, 4);
    tcase_add_test(tc, fourbit_long_rows);
    tcase_add_loop_test(tc, plain_random, 0, 3);
    tcase_add_test(tc, int8_random_vs_transcription);
    tcase_add_test(tc, int8_vs_bitsandbytes);
    tcase_add_test(tc, int8_acts_vs_bitsandbytes);
    tcase_add_test(tc, bad_arguments);
    suite_add_tcase(s, tc);
    TCase *tl = tcase_create("load");
    tcase_add_checked_fixture(tl, setup_tmp, teardown_tmp);
    tcase_set_timeout(tl, 120);
    tcase_add_test(tl, load_small_qbin);
    tcase_add_test(tl, load_converted_model);
    suite_add_tcase(s, tl);
    return tu_run(s);
}
