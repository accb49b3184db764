/* The GPU quantizer (src/kernels/quantize.cu, src/cuda/quantize.c):
 *  - on the inputs of every bitsandbytes fixture (tests/data/bnb, made by
 *    the real bitsandbytes CUDA kernels): packed codes, absmax, the
 *    double-quant offset, qabsmax and absmax2, SCB and int8 codes are
 *    bit-identical, with no allowance at all;
 *  - on fresh random inputs (odd sizes, every blocksize and source dtype,
 *    zero blocks and rows, subnormals), through the launchers with poisoned
 *    outputs, against the CPU quantizer src/quant.c: absmax, absmax2 and SCB
 *    identical; a code may differ only where the CPU's scaled value lies
 *    within QUANT_GPU_RCP_ULPS (2) f32 ulps of a decision boundary (the GPU
 *    multiplies by a reciprocal with < 1 ulp error, the CPU divides), and
 *    such codes stay rare (<= 1e-3 of all);
 *  - qconvert --device cuda on a tiny model: a file that loads, equal to the
 *    CPU conversion but for such codes, whose weights dequantize within the
 *    conversion tests' bound of the source.
 * Exits 77 (skip) without a usable GPU. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <cuda_runtime_api.h>
#include <float.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bnb_inputs.h"
#include "convert.h"
#include "cuda/device.h"
#include "cuda/quantize.h"
#include "dtype.h"
#include "import/hf_checkpoint.h"
#include "import/safetensors.h"
#include "kernels/quantize.h"
#include "qbin.h"
#include "qrun.h"
#include "quant.h"
#include "testutil.h"

extern char **environ;

/* Codes allowed to differ from the CPU's (each also near a boundary). */
#define MAX_DIFF_FRACTION 1e-3

static bool quick(void)
{
    const char *q = getenv("QRUN_TEST_QUICK");
    return q && *q && strcmp(q, "0") != 0;
}

static int same_bits(float a, float b) { return memcmp(&a, &b, 4) == 0; }

static float round_dtype(qdtype t, float v)
{
    if (t == QDT_F16)
        return qf16_to_f32(qf32_to_f16(v));
    if (t == QDT_BF16)
        return qbf16_to_f32(qf32_to_bf16(v));
    return v;
}

/* Host buffer of n values (already representable in dt) stored as dt. */
static void *pack(qdtype dt, const float *x, uint64_t n)
{
    if (dt == QDT_F32) {
        float *p = malloc(n * 4 + 4);
        memcpy(p, x, n * 4);
        return p;
    }
    uint16_t *h = malloc(n * 2 + 2);
    for (uint64_t i = 0; i < n; i++)
        h[i] = dt == QDT_F16 ? qf32_to_f16(x[i]) : qf32_to_bf16(x[i]);
    return h;
}

static uint8_t nibble(const uint8_t *p, uint64_t i) { return (p[i / 2] >> (i & 1 ? 0 : 4)) & 15; }

static void cuda_check(cudaError_t e, const char *what)
{
    ck_assert_msg(e == cudaSuccess, "%s: %s", what, cudaGetErrorString(e));
}

/* ---- bitsandbytes fixtures -------------------------------------------------- */

static cJSON *cases;
static st_file *st4, *st8;
static cuda_quantizer *gq;

static void open_quantizer(void)
{
    qerr err;
    qerr_clear(&err);
    gq = cuda_quantizer_create(1u << 20, &err);
    ck_assert_msg(gq != NULL, "%s", err.msg);
}

static void close_quantizer(void)
{
    qerr err;
    qerr_clear(&err);
    ck_assert_msg(cuda_quantizer_free(gq, &err), "%s", err.msg);
    gq = NULL;
}

static void load_fixtures(void)
{
    qerr err;
    size_t n;
    char *text = (char *)tu_read_file(tu_data_path("bnb/cases.json"), &n);
    ck_assert_msg(text != NULL, "missing bnb/cases.json");
    cases = cJSON_ParseWithLength(text, n);
    free(text);
    ck_assert(cases != NULL);
    st4 = st_open(tu_data_path("bnb/bnb4.safetensors"), &err);
    ck_assert_msg(st4 != NULL, "%s", err.msg);
    st8 = st_open(tu_data_path("bnb/bnb8.safetensors"), &err);
    ck_assert_msg(st8 != NULL, "%s", err.msg);
    open_quantizer();
}

static void unload_fixtures(void)
{
    close_quantizer();
    cJSON_Delete(cases);
    st_close(st4);
    st_close(st8);
}

static uint64_t st_numel(const st_tensor *t)
{
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* Fixture tensor `name` as raw bytes (count elements) or as f32. */
static void *fixture_raw(st_file *f, const char *name, uint64_t *count)
{
    const st_tensor *t = st_find(f, name);
    ck_assert_msg(t != NULL, "fixture tensor %s missing", name);
    void *buf = malloc(t->nbytes ? t->nbytes : 1);
    qerr err;
    ck_assert_msg(st_read(f, t, buf, &err), "%s", err.msg);
    *count = st_numel(t);
    return buf;
}

static float *fixture_f32(st_file *f, const char *name, uint64_t *count)
{
    const st_tensor *t = st_find(f, name);
    ck_assert_msg(t != NULL, "fixture tensor %s missing", name);
    float *buf = malloc((st_numel(t) ? st_numel(t) : 1) * sizeof *buf);
    qerr err;
    ck_assert_msg(st_read_f32(f, t, buf, &err), "%s", err.msg);
    *count = st_numel(t);
    return buf;
}

static qdtype case_dtype(const cJSON *c)
{
    return (qdtype)qdtype_from_name(cJSON_GetObjectItem(c, "dtype")->valuestring);
}

static uint64_t shape_dim(const cJSON *c, int i)
{
    return (uint64_t)cJSON_GetArrayItem(cJSON_GetObjectItem(c, "shape"), i)->valuedouble;
}

static uint64_t case_numel(const cJSON *c)
{
    uint64_t n = 1;
    const cJSON *d;
    cJSON_ArrayForEach(d, cJSON_GetObjectItem(c, "shape")) n *= (uint64_t)d->valuedouble;
    return n;
}

/* The exact input bitsandbytes quantized: stored (real weights) or
 * regenerated with tests/bnb_inputs.c; values of the case's dtype. */
static float *case_input(const cJSON *c, uint64_t n)
{
    const cJSON *in = cJSON_GetObjectItem(c, "input");
    if (cJSON_IsString(in)) {
        const char *name = in->valuestring;
        if (strncmp(name, "bnb4:", 5) == 0)
            name += 5;
        uint64_t cnt;
        float *x = fixture_f32(st4, name, &cnt);
        ck_assert_uint_eq(cnt, n);
        return x;
    }
    float *x = malloc(n * sizeof *x);
    const cJSON *zero = cJSON_GetObjectItem(c, "zero");
    uint64_t z0 = zero ? (uint64_t)cJSON_GetArrayItem(zero, 0)->valuedouble : 0;
    uint64_t z1 = zero ? (uint64_t)cJSON_GetArrayItem(zero, 1)->valuedouble : 0;
    bnb_gen_values((uint64_t)cJSON_GetObjectItem(c, "seed")->valuedouble, n, case_dtype(c), z0,
                   z1, x);
    const cJSON *zr = cJSON_GetObjectItem(c, "zero_row");
    if (cJSON_IsNumber(zr))
        memset(x + (uint64_t)zr->valuedouble * shape_dim(c, 1), 0, shape_dim(c, 1) * sizeof *x);
    return x;
}

/* Every 4-bit case (nf4 and fp4; f32, f16 and bf16 sources; blocksizes 32
 * to 4096; partial, straddling and all-zero blocks; two real weights), and
 * its double quantization: bit for bit, the padding nibble included. */
START_TEST(bnb_4bit_and_double_quant_exact)
{
    int ncase = 0, dtypes_seen = 0;
    uint64_t codes = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(cases, "four_bit"))
    {
        uint64_t n = case_numel(c);
        int bs = (int)cJSON_GetObjectItem(c, "blocksize")->valuedouble;
        qdtype dt = case_dtype(c);
        dtypes_seen |= 1 << dt;
        float *x = case_input(c, n);
        void *src = pack(dt, x, n);
        uint64_t nb = quant_nblocks(n, bs), ng = quant_nblocks(nb, QUANT_DQ_BLOCKSIZE);
        const cJSON *key;
        cJSON_ArrayForEach(key, cJSON_GetObjectItem(c, "keys"))
        {
            const char *k = key->valuestring;
            quant_4bit_type qt = strstr(k, ".nf4") ? QUANT_NF4 : QUANT_FP4;
            char name[256];
            uint64_t cnt;
            snprintf(name, sizeof name, "%s.packed", k);
            uint8_t *ref = fixture_raw(st4, name, &cnt);
            ck_assert_uint_eq(cnt, (n + 1) / 2);
            snprintf(name, sizeof name, "%s.absmax", k);
            float *ref_absmax = fixture_f32(st4, name, &cnt);
            ck_assert_uint_eq(cnt, nb);
            snprintf(name, sizeof name, "%s.qabsmax", k);
            uint8_t *ref_q = fixture_raw(st4, name, &cnt);
            ck_assert_uint_eq(cnt, nb);
            snprintf(name, sizeof name, "%s.absmax2", k);
            float *ref_a2 = fixture_f32(st4, name, &cnt);
            ck_assert_uint_eq(cnt, ng);
            snprintf(name, sizeof name, "%s.offset", k);
            float *ref_off = fixture_f32(st4, name, &cnt);

            uint8_t *packed = malloc((n + 1) / 2);
            float *absmax = malloc(nb * sizeof *absmax);
            memset(packed, 0xA5, (n + 1) / 2);
            for (uint64_t b = 0; b < nb; b++)
                absmax[b] = NAN;
            qerr err;
            ck_assert_msg(cuda_quantizer_4bit(gq, qt, dt, src, n, bs, packed, absmax, &err), "%s",
                          err.msg);
            /* first differences by plain loops, then one assertion each
             * (Check records every passing assertion) */
            uint64_t b = 0, i = 0;
            while (b < nb && same_bits(absmax[b], ref_absmax[b]))
                b++;
            ck_assert_msg(b == nb, "%s: absmax[%llu] %a, bnb %a", k, (unsigned long long)b,
                          b < nb ? absmax[b] : 0.0f, b < nb ? ref_absmax[b] : 0.0f);
            while (i < n + (n & 1) && nibble(packed, i) == nibble(ref, i))
                i++;
            ck_assert_msg(i == n + (n & 1),
                          "%s: code %llu (x = %a, scaled exactly %a) is %u, bnb %u", k,
                          (unsigned long long)i, i < n ? x[i] : 0.0f,
                          i < n ? x[i] / ref_absmax[i / bs] : 0.0f, nibble(packed, i),
                          nibble(ref, i));

            /* Double quantization from bitsandbytes' absmax (= ours). */
            float off = cuda_quantizer_dq_offset(gq, ref_absmax, nb);
            ck_assert_msg(same_bits(off, ref_off[0]), "%s: offset %a, bnb %a", k, off, ref_off[0]);
            uint8_t *q = malloc(nb);
            float *a2 = malloc(ng * sizeof *a2);
            memset(q, 0xA5, nb);
            for (uint64_t g = 0; g < ng; g++)
                a2[g] = NAN;
            ck_assert_msg(cuda_quantizer_dq(gq, ref_absmax, nb, off, q, a2, &err), "%s", err.msg);
            for (uint64_t g = 0; g < ng; g++)
                ck_assert_msg(same_bits(a2[g], ref_a2[g]), "%s: absmax2[%llu] %a, bnb %a", k,
                              (unsigned long long)g, a2[g], ref_a2[g]);
            for (uint64_t b = 0; b < nb; b++)
                ck_assert_msg(q[b] == ref_q[b], "%s: qabsmax[%llu] %u, bnb %u", k,
                              (unsigned long long)b, q[b], ref_q[b]);
            codes += n + nb;
            ncase++;
            free(q);
            free(a2);
            free(packed);
            free(absmax);
            free(ref);
            free(ref_absmax);
            free(ref_q);
            free(ref_a2);
            free(ref_off);
        }
        free(src);
        free(x);
    }
    ck_assert_int_ge(ncase, 30);
    ck_assert_int_eq(dtypes_seen, (1 << QDT_F32) | (1 << QDT_F16) | (1 << QDT_BF16));
    fprintf(stderr, "bnb 4-bit: %d cases, %llu codes, all bit-identical\n", ncase,
            (unsigned long long)codes);
}
END_TEST

/* LLM.int8 weights (f16, bf16 and f32 sources, odd K, zero rows, two real
 * weights): SCB and every code bit for bit. */
START_TEST(bnb_int8_exact)
{
    int ncase = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(cases, "int8_weights"))
    {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        uint64_t rows = shape_dim(c, 0), cols = shape_dim(c, 1);
        qdtype dt = case_dtype(c);
        float *w = case_input(c, rows * cols);
        void *src = pack(dt, w, rows * cols); /* the kernel makes the f16 copy */
        char key[256];
        uint64_t cnt;
        snprintf(key, sizeof key, "%s.cb", name);
        int8_t *ref_cb = fixture_raw(st8, key, &cnt);
        ck_assert_uint_eq(cnt, rows * cols);
        snprintf(key, sizeof key, "%s.scb", name);
        float *ref_scb = fixture_f32(st8, key, &cnt);
        ck_assert_uint_eq(cnt, rows);

        int8_t *cb = malloc(rows * cols);
        float *scb = malloc(rows * sizeof *scb);
        memset(cb, 0x5A, rows * cols);
        for (uint64_t r = 0; r < rows; r++)
            scb[r] = NAN;
        qerr err;
        ck_assert_msg(cuda_quantizer_int8_rows(gq, dt, src, rows, cols, cb, scb, &err), "%s",
                      err.msg);
        for (uint64_t r = 0; r < rows; r++) {
            ck_assert_msg(same_bits(scb[r], ref_scb[r]), "%s: SCB[%llu] %a, bnb %a", name,
                          (unsigned long long)r, scb[r], ref_scb[r]);
            for (uint64_t j = 0; j < cols; j++)
                ck_assert_msg(cb[r * cols + j] == ref_cb[r * cols + j], "%s: CB[%llu,%llu] %d, bnb %d",
                              name, (unsigned long long)r, (unsigned long long)j, cb[r * cols + j],
                              ref_cb[r * cols + j]);
        }
        free(cb);
        free(scb);
        free(ref_cb);
        free(ref_scb);
        free(src);
        free(w);
        ncase++;
    }
    ck_assert_int_ge(ncase, 5);
}
END_TEST

/* ---- fresh random inputs vs the CPU quantizer ------------------------------ */

/* Values of a weight-like tensor in dtype dt: normal with per-block scales
 * over 2^-20..2^6, a zero stretch, exact code points of a power-of-two
 * block, and (f32 only) subnormals whose flush to zero the GPU shares with
 * bitsandbytes. */
static void random_weights(tu_rng *r, qdtype dt, float *x, uint64_t n, int bs)
{
    float scale = 1.0f;
    for (uint64_t i = 0; i < n; i++) {
        if (i % (uint64_t)bs == 0)
            scale = ldexpf(1.0f, (int)(tu_next(r) % 27) - 20);
        x[i] = round_dtype(dt, tu_normal(r) * scale);
    }
    if (n > 3 * (uint64_t)bs) /* one all-zero block and a zero run across a boundary */
        memset(x + bs, 0, (size_t)(bs + bs / 2) * sizeof *x);
    if (n > 5 * (uint64_t)bs) { /* a block of exact values: s is exact, hits thresholds */
        float *b = x + 4 * (uint64_t)bs;
        for (int i = 0; i < bs; i++)
            b[i] = round_dtype(dt, (i & 1 ? quant_nf4_lut[i % 16] : quant_fp4_lut[i % 16]) * 0.5f);
        b[0] = 0.5f;
    }
    if (dt == QDT_F32 && n > 7 * (uint64_t)bs) {
        float *b = x + 6 * (uint64_t)bs;
        b[1] = -0x1p-140f;
        b[2] = 0x1p-130f;
    }
}

static uint8_t *dev_alloc(size_t bytes, unsigned char poison)
{
    void *p = NULL;
    cuda_check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
    cuda_check(cudaMemset(p, poison, bytes ? bytes : 1), "cudaMemset");
    return p;
}

START_TEST(four_bit_random_vs_cpu)
{
    tu_rng r = {tu_seed() ^ 0x4b17};
    static const uint64_t sizes_full[] = {1, 63, 65, 4544 * 3 + 1, 71 * 4544, 262147};
    static const uint64_t sizes_quick[] = {1, 65, 4097 * 2 + 1};
    const uint64_t *sizes = quick() ? sizes_quick : sizes_full;
    int nsizes = quick() ? 3 : 6;
    static const qdtype dts[] = {QDT_F32, QDT_F16, QDT_BF16};
    uint64_t total = 0, diffs = 0;
    cudaStream_t s;
    cuda_check(cudaStreamCreate(&s), "cudaStreamCreate");
    for (int si = 0; si < nsizes; si++)
        for (int bs = 32; bs <= 4096; bs *= 2)
            for (int d = 0; d < 3; d++)
                for (int t = 0; t < 2; t++) {
                    uint64_t n = sizes[si];
                    if (quick() && bs != 32 && bs != 256 && bs != 4096)
                        continue;
                    quant_4bit_type qt = t ? QUANT_FP4 : QUANT_NF4;
                    uint64_t nb = quant_nblocks(n, bs), nbytes = (n + 1) / 2;
                    float *x = malloc(n * sizeof *x);
                    random_weights(&r, dts[d], x, n, bs);
                    void *h = pack(dts[d], x, n);
                    size_t esz = dts[d] == QDT_F32 ? 4 : 2;
                    uint8_t *dx = dev_alloc(n * esz, 0);
                    cuda_check(cudaMemcpy(dx, h, n * esz, cudaMemcpyHostToDevice), "upload");
                    uint8_t *dp = dev_alloc(nbytes, 0xFF);       /* codes 15|15 */
                    float *da = (float *)dev_alloc(nb * 4, 0xFF); /* NaN */
                    qerr err;
                    ck_assert_msg(qk_quantize_4bit(qt, dx, dts[d], n, bs, dp, da, s, &err), "%s",
                                  err.msg);
                    cuda_check(cudaStreamSynchronize(s), "qk_quantize_4bit");
                    uint8_t *gp = malloc(nbytes), *cp = malloc(nbytes);
                    float *ga = malloc(nb * 4), *ca = malloc(nb * 4);
                    cuda_check(cudaMemcpy(gp, dp, nbytes, cudaMemcpyDeviceToHost), "download");
                    cuda_check(cudaMemcpy(ga, da, nb * 4, cudaMemcpyDeviceToHost), "download");
                    /* The GPU, like bitsandbytes, flushes subnormal inputs to
                     * zero; the CPU reference gets them flushed. */
                    for (uint64_t i = 0; i < n; i++)
                        if (x[i] != 0.0f && fabsf(x[i]) < FLT_MIN)
                            x[i] = 0.0f;
                    quant_4bit_quantize(qt, x, n, bs, cp, ca);
                    for (uint64_t b = 0; b < nb; b++)
                        ck_assert_msg(same_bits(ga[b], ca[b]),
                                      "n %llu bs %d %s: absmax[%llu] %a, CPU %a",
                                      (unsigned long long)n, bs, qdtype_name(dts[d]),
                                      (unsigned long long)b, ga[b], ca[b]);
                    for (uint64_t i = 0; i < n + (n & 1); i++) {
                        uint8_t g = nibble(gp, i), c = nibble(cp, i);
                        if (g == c)
                            continue;
                        ck_assert_msg(i < n, "padding nibble %u, CPU %u", g, c);
                        float sc = x[i] / ca[i / bs];
                        ck_assert_msg(quant_4bit_near_threshold(qt, sc, QUANT_GPU_RCP_ULPS),
                                      "%s n %llu bs %d %s: element %llu = %a (scaled %a): code "
                                      "%u, CPU %u",
                                      qt == QUANT_NF4 ? "nf4" : "fp4", (unsigned long long)n, bs,
                                      qdtype_name(dts[d]), (unsigned long long)i, x[i], sc, g, c);
                        diffs++;
                    }
                    total += n;
                    cuda_check(cudaFree(dx), "cudaFree");
                    cuda_check(cudaFree(dp), "cudaFree");
                    cuda_check(cudaFree(da), "cudaFree");
                    free(gp);
                    free(cp);
                    free(ga);
                    free(ca);
                    free(h);
                    free(x);
                }
    cuda_check(cudaStreamDestroy(s), "cudaStreamDestroy");
    fprintf(stderr, "4-bit vs CPU: %llu codes, %llu near-threshold differences\n",
            (unsigned long long)total, (unsigned long long)diffs);
    ck_assert_msg((double)diffs <= MAX_DIFF_FRACTION * (double)total, "%llu of %llu differ",
                  (unsigned long long)diffs, (unsigned long long)total);
}
END_TEST

START_TEST(double_quant_random_vs_cpu)
{
    tu_rng r = {tu_seed() ^ 0xd0d0};
    static const uint64_t sizes[] = {1, 255, 257, 4097, 70001};
    int nsizes = quick() ? 3 : 5;
    uint64_t total = 0, diffs = 0;
    float *map_d = NULL;
    cuda_check(cudaMalloc((void **)&map_d, sizeof quant_dynamic_map), "cudaMalloc");
    cuda_check(cudaMemcpy(map_d, quant_dynamic_map, sizeof quant_dynamic_map,
                          cudaMemcpyHostToDevice),
               "upload");
    for (int si = 0; si < nsizes; si++) {
        uint64_t nb = sizes[si], ng = quant_nblocks(nb, QUANT_DQ_BLOCKSIZE);
        float *a = malloc(nb * 4);
        for (uint64_t i = 0; i < nb; i++) /* absmax-like: positive, a few outliers */
            a[i] = fabsf(tu_normal(&r)) * (tu_next(&r) % 50 == 0 ? 8.0f : 0.5f) + 0x1p-10f;
        float off = quant_dq_offset(a, nb);
        float *da = (float *)dev_alloc(nb * 4, 0);
        cuda_check(cudaMemcpy(da, a, nb * 4, cudaMemcpyHostToDevice), "upload");
        uint8_t *dq = dev_alloc(nb, 0xFF);
        float *d2 = (float *)dev_alloc(ng * 4, 0xFF);
        qerr err;
        ck_assert_msg(qk_quantize_dq(da, nb, off, map_d, dq, d2, 0, &err), "%s", err.msg);
        cuda_check(cudaDeviceSynchronize(), "qk_quantize_dq");
        uint8_t *gq8 = malloc(nb), *cq8 = malloc(nb);
        float *g2 = malloc(ng * 4), *c2 = malloc(ng * 4);
        cuda_check(cudaMemcpy(gq8, dq, nb, cudaMemcpyDeviceToHost), "download");
        cuda_check(cudaMemcpy(g2, d2, ng * 4, cudaMemcpyDeviceToHost), "download");
        quant_dq_quantize(a, nb, off, quant_dynamic_map, cq8, c2);
        for (uint64_t g = 0; g < ng; g++)
            ck_assert_msg(same_bits(g2[g], c2[g]), "nb %llu: absmax2[%llu] %a, CPU %a",
                          (unsigned long long)nb, (unsigned long long)g, g2[g], c2[g]);
        for (uint64_t b = 0; b < nb; b++) {
            if (gq8[b] == cq8[b])
                continue;
            float sc = (a[b] - off) / c2[b / QUANT_DQ_BLOCKSIZE];
            ck_assert_msg(quant_dq_near_midpoint(sc, quant_dynamic_map, QUANT_GPU_RCP_ULPS),
                          "nb %llu: qabsmax[%llu] %u, CPU %u (scaled %a)", (unsigned long long)nb,
                          (unsigned long long)b, gq8[b], cq8[b], sc);
            diffs++;
        }
        total += nb;
        cuda_check(cudaFree(da), "cudaFree");
        cuda_check(cudaFree(dq), "cudaFree");
        cuda_check(cudaFree(d2), "cudaFree");
        free(gq8);
        free(cq8);
        free(g2);
        free(c2);
        free(a);
    }
    cuda_check(cudaFree(map_d), "cudaFree");
    ck_assert_msg((double)diffs <= MAX_DIFF_FRACTION * (double)total + 1, "%llu of %llu differ",
                  (unsigned long long)diffs, (unsigned long long)total);
}
END_TEST

/* torch's mean order: against an f64 mean, within the error of an f32
 * summation over positive values of at most ~300 additions deep (each
 * thread sums <= 256 values, then trees of <= 9 + 9 levels): 2^-24 * 300
 * relative, here 3e-5. Sizes cover the scalar path, the float4 path with
 * its tail and the split over thread blocks (n / 512 >= 256). */
START_TEST(torch_mean_order)
{
    tu_rng r = {tu_seed() ^ 0x3ea7};
    static const uint64_t sizes[] = {1, 2, 77, 127, 128, 131, 2049, 131071, 900001, 3000001};
    int nsizes = quick() ? 6 : 10;
    for (int si = 0; si < nsizes; si++) {
        uint64_t n = sizes[si];
        float *a = malloc(n * 4);
        double exact = 0.0;
        for (uint64_t i = 0; i < n; i++) {
            a[i] = fabsf(tu_normal(&r)) + 0.01f;
            exact += a[i];
        }
        exact /= (double)n;
        float m = cuda_torch_mean_f32(a, n, 132, 2048);
        ck_assert_msg(fabs((double)m - exact) <= 3e-5 * exact, "n %llu: mean %a, exact %a",
                      (unsigned long long)n, m, exact);
        free(a);
    }
}
END_TEST

START_TEST(int8_random_vs_cpu)
{
    tu_rng r = {tu_seed() ^ 0x1e8};
    static const uint64_t shapes[][2] = {{1, 1}, {37, 515}, {71, 4544}, {3, 70001}, {300, 256}};
    int nshapes = quick() ? 3 : 5;
    static const qdtype dts[] = {QDT_F16, QDT_BF16, QDT_F32};
    uint64_t total = 0, diffs = 0;
    for (int si = 0; si < nshapes; si++)
        for (int d = 0; d < 3; d++) {
            uint64_t rows = shapes[si][0], cols = shapes[si][1], n = rows * cols;
            float *w = malloc(n * 4), *w16 = malloc(n * 4);
            for (uint64_t i = 0; i < n; i++)
                w[i] = round_dtype(dts[d], tu_normal(&r) * (i % 97 == 0 ? 4.0f : 0.05f));
            if (rows > 2)
                memset(w + cols, 0, cols * 4); /* a zero row */
            for (uint64_t i = 0; i < n; i++)
                w16[i] = qf16_to_f32(qf32_to_f16(w[i]));
            void *h = pack(dts[d], w, n);
            size_t esz = dts[d] == QDT_F32 ? 4 : 2;
            uint8_t *dw = dev_alloc(n * esz, 0);
            cuda_check(cudaMemcpy(dw, h, n * esz, cudaMemcpyHostToDevice), "upload");
            int8_t *dcb = (int8_t *)dev_alloc(n, 0x7F);
            float *dscb = (float *)dev_alloc(rows * 4, 0xFF);
            qerr err;
            ck_assert_msg(qk_quantize_int8_rows(dw, dts[d], rows, cols, dcb, dscb, 0, &err), "%s",
                          err.msg);
            cuda_check(cudaDeviceSynchronize(), "qk_quantize_int8_rows");
            int8_t *gcb = malloc(n), *ccb = malloc(n);
            float *gs = malloc(rows * 4), *cs = malloc(rows * 4);
            cuda_check(cudaMemcpy(gcb, dcb, n, cudaMemcpyDeviceToHost), "download");
            cuda_check(cudaMemcpy(gs, dscb, rows * 4, cudaMemcpyDeviceToHost), "download");
            quant_int8_quantize_rows(w16, rows, cols, ccb, cs);
            for (uint64_t row = 0; row < rows; row++) {
                ck_assert_msg(same_bits(gs[row], cs[row]), "%llux%llu %s: SCB[%llu] %a, CPU %a",
                              (unsigned long long)rows, (unsigned long long)cols,
                              qdtype_name(dts[d]), (unsigned long long)row, gs[row], cs[row]);
                for (uint64_t j = 0; j < cols; j++) {
                    uint64_t i = row * cols + j;
                    if (gcb[i] == ccb[i])
                        continue;
                    float v = w16[i] * (127.0f / cs[row]);
                    ck_assert_msg(quant_int8_near_half(v, QUANT_GPU_RCP_ULPS) &&
                                      abs(gcb[i] - ccb[i]) == 1,
                                  "CB[%llu,%llu] %d, CPU %d (scaled %a)", (unsigned long long)row,
                                  (unsigned long long)j, gcb[i], ccb[i], v);
                    diffs++;
                }
            }
            total += n;
            cuda_check(cudaFree(dw), "cudaFree");
            cuda_check(cudaFree(dcb), "cudaFree");
            cuda_check(cudaFree(dscb), "cudaFree");
            free(gcb);
            free(ccb);
            free(gs);
            free(cs);
            free(h);
            free(w);
            free(w16);
        }
    fprintf(stderr, "int8 vs CPU: %llu codes, %llu near-half differences\n",
            (unsigned long long)total, (unsigned long long)diffs);
    ck_assert_msg((double)diffs <= MAX_DIFF_FRACTION * (double)total, "%llu of %llu differ",
                  (unsigned long long)diffs, (unsigned long long)total);
}
END_TEST

/* Bad arguments are refused with a message, not launched. */
START_TEST(launchers_refuse_bad_arguments)
{
    qerr err;
    qerr_clear(&err);
    float *d = (float *)dev_alloc(64, 0);
    ck_assert(!qk_quantize_4bit(QUANT_NF4, d, QDT_F32, 8, 48, (uint8_t *)d, d, 0, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_INVALID_ARGUMENT);
    qerr_clear(&err);
    ck_assert(!qk_quantize_int8_rows(d, QDT_I8, 1, 4, (int8_t *)d, d, 0, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_INVALID_ARGUMENT);
    cuda_check(cudaFree(d), "cudaFree");
}
END_TEST

/* ---- qconvert --device cuda ---------------------------------------------- */

static char *tmp;

static void make_tmp(void) { tmp = tu_tmpdir(); }
static void remove_tmp(void)
{
    tu_rmtree(tmp);
    free(tmp);
}

static void run_qconvert(const char *dir, const char *out, const char *quant, bool dq)
{
    const char *exe = getenv("QCONVERT");
    ck_assert_msg(exe != NULL, "QCONVERT not set");
    char *argv[12];
    int a = 0;
    argv[a++] = (char *)exe;
    argv[a++] = (char *)dir;
    argv[a++] = "-o";
    argv[a++] = (char *)out;
    argv[a++] = "--quant";
    argv[a++] = (char *)quant;
    argv[a++] = "--device";
    argv[a++] = "cuda";
    if (dq)
        argv[a++] = "--double-quant";
    argv[a++] = "--quiet";
    argv[a] = NULL;
    pid_t pid;
    ck_assert_int_eq(posix_spawn(&pid, exe, NULL, NULL, argv, environ), 0);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "qconvert --device cuda failed");
}

static float rounded(qdtype t, float v) { return t == QDT_F32 ? v : round_dtype(t, v); }

/* Compare the GPU conversion `gpu` of `dir` with the CPU conversion `cpu`
 * tensor by tensor; quantized weights are checked against the source. */
static void compare_conversions(const char *dir, const char *gpu, const char *cpu, bool dq,
                                uint64_t *ncodes, uint64_t *ndiff)
{
    qerr err;
    qbin_file *fg = qbin_open(gpu, 0, &err);
    ck_assert_msg(fg != NULL, "%s", err.msg);
    qbin_file *fc = qbin_open(cpu, 0, &err);
    ck_assert_msg(fc != NULL, "%s", err.msg);
    hf_checkpoint *ck = hf_open(dir, &err);
    ck_assert_msg(ck != NULL, "%s", err.msg);
    ck_assert_uint_eq(qbin_tensor_count(fg), qbin_tensor_count(fc));
    qdtype compute = (qdtype)qdtype_from_name(
        cJSON_GetObjectItem(qbin_metadata(fg), "compute_dtype")->valuestring);
    for (size_t i = 0; i < qbin_tensor_count(fc); i++) {
        const qbin_tensor *tc = qbin_tensor_at(fc, i);
        const qbin_tensor *tg = qbin_find(fg, tc->name);
        ck_assert_msg(tg && tg->dtype == tc->dtype && tg->nbytes == tc->nbytes, "%s", tc->name);
        ck_assert_msg(qbin_verify_tensor(fg, tg, &err), "%s", err.msg);
        const uint8_t *g = qbin_tensor_data(fg, tg), *c = qbin_tensor_data(fc, tc);
        bool codes4 = tc->dtype == QDT_NF4 || tc->dtype == QDT_FP4;
        bool doubleq = strstr(tc->name, ".qabsmax") || strstr(tc->name, ".absmax2") ||
                       strstr(tc->name, ".absmax_offset");
        if (!codes4 && tc->dtype != QDT_I8 && !doubleq) {
            /* kept tensors, absmax and SCB: byte for byte */
            ck_assert_msg(memcmp(g, c, tc->nbytes) == 0, "%s differs", tc->name);
            continue;
        }
        if (doubleq)
            continue; /* checked through the dequantized weights below */
        uint64_t n = 1;
        for (int d = 0; d < tc->ndim; d++)
            n *= tc->shape[d];
        const st_tensor *st = hf_find(ck, tc->name);
        ck_assert_ptr_nonnull(st);
        float *v = malloc(n * 4);
        ck_assert_msg(hf_read_f32(ck, st, v, &err), "%s", err.msg);
        for (uint64_t j = 0; j < n; j++)
            v[j] = rounded(compute, v[j]);
        char aux[300];
        if (tc->dtype == QDT_I8) {
            uint64_t cols = tc->shape[1];
            snprintf(aux, sizeof aux, "%s.scb", tc->name);
            const float *scb = qbin_tensor_data(fc, qbin_find(fc, aux));
            for (uint64_t j = 0; j < n; j++) {
                if (g[j] == c[j])
                    continue;
                float w16 = qf16_to_f32(qf32_to_f16(v[j]));
                float sc = w16 * (127.0f / scb[j / cols]);
                ck_assert_msg(quant_int8_near_half(sc, QUANT_GPU_RCP_ULPS) &&
                                  abs((int8_t)g[j] - (int8_t)c[j]) == 1,
                              "%s[%llu]: %d, CPU %d", tc->name, (unsigned long long)j,
                              (int8_t)g[j], (int8_t)c[j]);
                (*ndiff)++;
            }
            *ncodes += n;
            free(v);
            continue;
        }
        quant_4bit_type qt = tc->dtype == QDT_NF4 ? QUANT_NF4 : QUANT_FP4;
        int bs = (int)cJSON_GetObjectItem(cJSON_GetObjectItem(qbin_metadata(fg), "quantization"),
                                          "blocksize")
                     ->valuedouble;
        uint64_t nb = quant_nblocks(n, bs);
        float *absmax = malloc(nb * 4);
        uint8_t *packed = malloc((n + 1) / 2);
        quant_4bit_quantize(qt, v, n, bs, packed, absmax); /* absmax: as on the GPU */
        for (uint64_t j = 0; j < n + (n & 1); j++) {
            if (nibble(g, j) == nibble(c, j))
                continue;
            ck_assert_msg(j < n, "%s: padding nibble differs", tc->name);
            ck_assert_msg(quant_4bit_near_threshold(qt, v[j] / absmax[j / bs], QUANT_GPU_RCP_ULPS),
                          "%s[%llu]: code %u, CPU %u", tc->name, (unsigned long long)j,
                          nibble(g, j), nibble(c, j));
            (*ndiff)++;
        }
        *ncodes += n;
        /* The GPU file's weights, through its own (nested) absmax, within
         * the conversion tests' bound of the source: one code gap (<= 0.34
         * of the absmax, half of it per side) plus the absmax's error. */
        float *rec = absmax;
        if (dq) {
            rec = malloc(nb * 4);
            snprintf(aux, sizeof aux, "%s.qabsmax", tc->name);
            const uint8_t *qa = qbin_tensor_data(fg, qbin_find(fg, aux));
            snprintf(aux, sizeof aux, "%s.absmax2", tc->name);
            const float *a2 = qbin_tensor_data(fg, qbin_find(fg, aux));
            snprintf(aux, sizeof aux, "%s.absmax_offset", tc->name);
            float off;
            memcpy(&off, qbin_tensor_data(fg, qbin_find(fg, aux)), 4);
            quant_dq_dequantize(qa, a2, off, qbin_tensor_data(fg, qbin_find(fg, "quant.dynamic_map")),
                                0, nb, rec);
        }
        float *deq = malloc(n * 4);
        quant_4bit_dequantize(qt, g, rec, 0, n, bs, deq);
        for (uint64_t j = 0; j < n; j++) {
            float scale = fmaxf(rec[j / bs], absmax[j / bs]);
            float tol = scale * 0.17f + fabsf(rec[j / bs] - absmax[j / bs]) + 1e-7f;
            ck_assert_msg(fabsf(deq[j] - v[j]) <= tol, "%s[%llu]: %g vs source %g", tc->name,
                          (unsigned long long)j, deq[j], v[j]);
        }
        if (rec != absmax)
            free(rec);
        free(deq);
        free(packed);
        free(absmax);
        free(v);
    }
    hf_close(ck);
    qbin_close(fg);
    qbin_close(fc);
}

START_TEST(qconvert_device_cuda)
{
    static const struct {
        const char *variant, *quant;
        qconvert_quant q;
        bool dq;
    } runs[] = {
        {"llama-mha", "nf4", QCONVERT_NF4, false},
        {"llama-gqa-llama3", "fp4", QCONVERT_FP4, true},
        {"falcon-7b-style", "int8", QCONVERT_INT8, false},
    };
    uint64_t codes = 0, diffs = 0;
    for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++) {
        char dir[4096], gpu[4096], cpu[4096];
        snprintf(dir, sizeof dir, "%s/tiny/%s", tu_data_dir(), runs[k].variant);
        snprintf(gpu, sizeof gpu, "%s/%s-gpu.qbin", tmp, runs[k].variant);
        snprintf(cpu, sizeof cpu, "%s/%s-cpu.qbin", tmp, runs[k].variant);
        run_qconvert(dir, gpu, runs[k].quant, runs[k].dq);

        qconvert_options o;
        qconvert_options_init(&o);
        ck_assert_int_eq(o.device, QCONVERT_DEVICE_CPU);
        o.input_dir = dir;
        o.output_path = cpu;
        o.quant = runs[k].q;
        o.double_quant = runs[k].dq;
        qconvert_stats st;
        qerr err;
        qerr_clear(&err);
        ck_assert_msg(qconvert_run(&o, &st, &err) == QRUN_OK, "%s", err.msg);
        ck_assert_int_eq(st.device, QCONVERT_DEVICE_CPU);
        compare_conversions(dir, gpu, cpu, runs[k].dq, &codes, &diffs);

        qrun_model_params mp;
        qrun_model_params_init(&mp);
        mp.backend = QRUN_BACKEND_CPU;
        mp.n_threads = 2;
        qrun_model *m = NULL;
        char eb[512];
        ck_assert_msg(qrun_model_load(gpu, &mp, &m, eb, sizeof eb) == QRUN_OK && m, "load %s: %s",
                      gpu, eb);
        qrun_model_free(m);
    }
    /* The library with device cuda reports the GPU it used. */
    char dir[4096], out[4096];
    snprintf(dir, sizeof dir, "%s/tiny/llama-mha", tu_data_dir());
    snprintf(out, sizeof out, "%s/lib-gpu.qbin", tmp);
    qconvert_options o;
    qconvert_options_init(&o);
    o.input_dir = dir;
    o.output_path = out;
    o.device = QCONVERT_DEVICE_CUDA;
    qconvert_stats st;
    qerr err;
    qerr_clear(&err);
    ck_assert_msg(qconvert_run(&o, &st, &err) == QRUN_OK, "%s", err.msg);
    ck_assert_int_eq(st.device, QCONVERT_DEVICE_CUDA);
    ck_assert(st.device_name[0] != '\0' && strcmp(st.device_name, "cpu") != 0);
    fprintf(stderr, "qconvert --device cuda on %s: %llu codes, %llu near-threshold differences\n",
            st.device_name, (unsigned long long)codes, (unsigned long long)diffs);
    ck_assert_msg((double)diffs <= MAX_DIFF_FRACTION * (double)codes + 2, "%llu of %llu differ",
                  (unsigned long long)diffs, (unsigned long long)codes);
}
END_TEST

/* CUDA must not be initialized in the process that Check forks tests
 * from, so the probe runs in a child of its own. */
static bool gpu_usable(void)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(cuda_device_count(NULL) > 0 ? 0 : 1);
    int status;
    return pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
           WEXITSTATUS(status) == 0;
}

int main(void)
{
    if (!gpu_usable())
        return 77;
    Suite *s = suite_create("gpu_quantize");
    TCase *fx = tcase_create("bitsandbytes");
    tcase_add_checked_fixture(fx, load_fixtures, unload_fixtures);
    tcase_set_timeout(fx, 300);
    tcase_add_test(fx, bnb_4bit_and_double_quant_exact);
    tcase_add_test(fx, bnb_int8_exact);
    suite_add_tcase(s, fx);

    TCase *rnd = tcase_create("random");
    tcase_set_timeout(rnd, 300);
    tcase_add_test(rnd, four_bit_random_vs_cpu);
    tcase_add_test(rnd, double_quant_random_vs_cpu);
    tcase_add_test(rnd, torch_mean_order);
    tcase_add_test(rnd, int8_random_vs_cpu);
    tcase_add_test(rnd, launchers_refuse_bad_arguments);
    suite_add_tcase(s, rnd);

    TCase *cv = tcase_create("qconvert");
    tcase_add_checked_fixture(cv, make_tmp, remove_tmp);
    tcase_set_timeout(cv, 300);
    tcase_add_test(cv, qconvert_device_cuda);
    suite_add_tcase(s, cv);
    return tu_run(s);
}
