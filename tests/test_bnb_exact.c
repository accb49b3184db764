/* Our quantizer and dequantizer against the real bitsandbytes CUDA kernels
 * (fixtures written by tools/bnb_fixtures.py on the device machine).
 *
 * The rule (issue "Foundation", point 5):
 *  - dequantization, double-quant reconstruction, absmax, absmax2 and SCB are
 *    bit-identical always;
 *  - nf4 codes from f16/bf16 inputs are identical;
 *  - elsewhere (f32 inputs, fp4, int8, nested absmax codes) a code may differ
 *    only where our scaled value lies within one f32 ulp of a decision
 *    threshold, and such cases stay rare (counted and bounded below).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnb_inputs.h"
#include "dtype.h"
#include "import/safetensors.h"
#include "quant.h"
#include "testutil.h"

/* At most this fraction of codes may differ (each difference must also pass
 * the near-threshold rule). bitsandbytes' own notes measured up to 387 per 2M
 * (2e-4) for fp4 between the two reciprocals. */
#define MAX_MISMATCH_FRACTION 1e-3

static cJSON *cases;
static st_file *st4, *st8;

static void load_fixtures(void)
{
    qerr err;
    size_t n;
    char *text = (char *)tu_read_file(tu_data_path("bnb/cases.json"), &n);
    ck_assert_msg(text != NULL, "missing %s", tu_data_path("bnb/cases.json"));
    cases = cJSON_ParseWithLength(text, n);
    free(text);
    ck_assert_msg(cases != NULL, "bnb/cases.json is not JSON");
    st4 = st_open(tu_data_path("bnb/bnb4.safetensors"), &err);
    ck_assert_msg(st4 != NULL, "%s", err.msg);
    st8 = st_open(tu_data_path("bnb/bnb8.safetensors"), &err);
    ck_assert_msg(st8 != NULL, "%s", err.msg);
}

static void unload_fixtures(void)
{
    cJSON_Delete(cases);
    st_close(st4);
    st_close(st8);
}

static uint64_t numel(const st_tensor *t)
{
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* Raw bytes of a fixture tensor; aborts the test when missing. */
static void *raw(st_file *f, const char *name, uint64_t *count)
{
    const st_tensor *t = st_find(f, name);
    ck_assert_msg(t != NULL, "fixture tensor %s missing", name);
    void *buf = malloc(t->nbytes ? t->nbytes : 1);
    qerr err;
    ck_assert_msg(st_read(f, t, buf, &err), "%s", err.msg);
    if (count)
        *count = numel(t);
    return buf;
}

static float *as_f32(st_file *f, const char *name, uint64_t *count)
{
    const st_tensor *t = st_find(f, name);
    ck_assert_msg(t != NULL, "fixture tensor %s missing", name);
    float *buf = malloc((numel(t) ? numel(t) : 1) * sizeof(float));
    qerr err;
    ck_assert_msg(st_read_f32(f, t, buf, &err), "%s", err.msg);
    if (count)
        *count = numel(t);
    return buf;
}

static qdtype dtype_of(const cJSON *c)
{
    const char *d = cJSON_GetObjectItem(c, "dtype")->valuestring;
    return (qdtype)qdtype_from_name(d);
}

static uint64_t case_numel(const cJSON *c)
{
    uint64_t n = 1;
    const cJSON *d;
    cJSON_ArrayForEach(d, cJSON_GetObjectItem(c, "shape")) n *= (uint64_t)d->valuedouble;
    return n;
}

/* The input of a 4-bit or int8-weight case: regenerated or stored. */
static float *case_input(const cJSON *c, uint64_t n)
{
    const cJSON *in = cJSON_GetObjectItem(c, "input");
    if (cJSON_IsString(in)) {
        const char *name = in->valuestring;
        if (strncmp(name, "bnb4:", 5) == 0)
            name += 5;
        uint64_t cnt;
        float *x = as_f32(st4, name, &cnt);
        ck_assert_uint_eq(cnt, n);
        return x;
    }
    float *x = malloc(n * sizeof *x);
    const cJSON *zero = cJSON_GetObjectItem(c, "zero");
    uint64_t z0 = zero ? (uint64_t)cJSON_GetArrayItem(zero, 0)->valuedouble : 0;
    uint64_t z1 = zero ? (uint64_t)cJSON_GetArrayItem(zero, 1)->valuedouble : 0;
    bnb_gen_values((uint64_t)cJSON_GetObjectItem(c, "seed")->valuedouble, n, dtype_of(c), z0, z1,
                   x);
    const cJSON *zr = cJSON_GetObjectItem(c, "zero_row");
    if (cJSON_IsNumber(zr)) {
        uint64_t cols = (uint64_t)cJSON_GetArrayItem(cJSON_GetObjectItem(c, "shape"), 1)->valuedouble;
        memset(x + (uint64_t)zr->valuedouble * cols, 0, cols * sizeof *x);
    }
    return x;
}

static uint8_t nibble(const uint8_t *p, uint64_t i) { return (p[i / 2] >> (i & 1 ? 0 : 4)) & 15; }

static float round_dtype(qdtype t, float v)
{
    if (t == QDT_F16)
        return qf16_to_f32(qf32_to_f16(v));
    if (t == QDT_BF16)
        return qbf16_to_f32(qf32_to_bf16(v));
    return v;
}

static int same_bits(float a, float b) { return memcmp(&a, &b, 4) == 0; }

/* Our dequantization of (packed, absmax), rounded to the case's dtype, equals
 * bitsandbytes' dequantized sample `<key><suffix>` bit for bit. */
static void check_dequant(const char *key, const char *suffix, quant_4bit_type qt,
                          const uint8_t *packed, const float *absmax, int bs, qdtype dt)
{
    char name[256];
    uint64_t cnt;
    snprintf(name, sizeof name, "%s%s", key, suffix);
    float *deq = as_f32(st4, name, &cnt);
    float *mine = malloc(cnt * sizeof *mine);
    quant_4bit_dequantize(qt, packed, absmax, 0, cnt, bs, mine);
    for (uint64_t i = 0; i < cnt; i++)
        ck_assert_msg(same_bits(round_dtype(dt, mine[i]), deq[i]), "%s[%llu]: %a, bnb %a", name,
                      (unsigned long long)i, round_dtype(dt, mine[i]), deq[i]);
    free(mine);
    free(deq);
}

START_TEST(dynamic_map_is_bitsandbytes)
{
    uint64_t n;
    float *m = as_f32(st4, "dynamic_map", &n);
    ck_assert_uint_eq(n, 256);
    for (int i = 0; i < 256; i++)
        ck_assert_msg(same_bits(m[i], quant_dynamic_map[i]), "map[%d] = %a, bnb %a", i,
                      quant_dynamic_map[i], m[i]);
    free(m);
}
END_TEST

/* Codes, absmax and dequantized values of every 4-bit case. */
START_TEST(four_bit_cases)
{
    int ncase = 0;
    uint64_t total = 0, diffs = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(cases, "four_bit"))
    {
        const char *cname = cJSON_GetObjectItem(c, "name")->valuestring;
        uint64_t n = case_numel(c);
        int bs = (int)cJSON_GetObjectItem(c, "blocksize")->valuedouble;
        qdtype dt = dtype_of(c);
        float *x = case_input(c, n);
        uint64_t nb = quant_nblocks(n, bs);
        const cJSON *key;
        cJSON_ArrayForEach(key, cJSON_GetObjectItem(c, "keys"))
        {
            const char *k = key->valuestring;
            quant_4bit_type qt = strstr(k, ".nf4") ? QUANT_NF4 : QUANT_FP4;
            char name[256];
            uint64_t cnt;
            snprintf(name, sizeof name, "%s.packed", k);
            uint8_t *ref = raw(st4, name, &cnt);
            ck_assert_uint_eq(cnt, (n + 1) / 2);
            snprintf(name, sizeof name, "%s.absmax", k);
            float *ref_absmax = as_f32(st4, name, &cnt);
            ck_assert_uint_eq(cnt, nb);

            uint8_t *ours = malloc((n + 1) / 2);
            float *absmax = malloc(nb * sizeof *absmax);
            quant_4bit_quantize(qt, x, n, bs, ours, absmax);
            for (uint64_t b = 0; b < nb; b++)
                ck_assert_msg(same_bits(absmax[b], ref_absmax[b]), "%s: absmax[%llu] %a, bnb %a", k,
                              (unsigned long long)b, absmax[b], ref_absmax[b]);
            uint64_t case_diffs = 0;
            for (uint64_t i = 0; i < n + (n & 1); i++) {
                uint8_t a = nibble(ours, i), r = nibble(ref, i);
                if (a == r)
                    continue;
                ck_assert_msg(i < n, "%s: padding nibble %u, bnb %u", k, a, r);
                float s = x[i] / absmax[i / bs];
                ck_assert_msg(quant_4bit_near_threshold(qt, s, QUANT_BNB_ULPS),
                              "%s: element %llu = %a scaled %a: code %u, bnb %u, not within "
                              "1 ulp of a threshold",
                              k, (unsigned long long)i, x[i], s, a, r);
                ck_assert_msg(!(qt == QUANT_NF4 && dt != QDT_F32),
                              "%s: nf4 code of a %s input differs at %llu", k, qdtype_name(dt),
                              (unsigned long long)i);
                case_diffs++;
            }
            total += n;
            diffs += case_diffs;
            if (case_diffs)
                fprintf(stderr, "%s: %llu of %llu codes within 1 ulp of a threshold differ\n", k,
                        (unsigned long long)case_diffs, (unsigned long long)n);

            /* Dequantization from bnb's own codes and absmax: exact. */
            check_dequant(k, ".deq", qt, ref, ref_absmax, bs, dt);
            free(ours);
            free(absmax);
            free(ref);
            free(ref_absmax);
            ncase++;
        }
        free(x);
        (void)cname;
    }
    ck_assert_int_ge(ncase, 30);
    ck_assert_msg((double)diffs <= MAX_MISMATCH_FRACTION * (double)total,
                  "%llu of %llu codes differ", (unsigned long long)diffs,
                  (unsigned long long)total);
    fprintf(stderr, "4-bit: %d cases, %llu codes, %llu near-threshold differences\n", ncase,
            (unsigned long long)total, (unsigned long long)diffs);
}
END_TEST

/* Double quantization of bnb's absmax: codes, group scales, reconstruction. */
START_TEST(double_quant_cases)
{
    uint64_t total = 0, diffs = 0;
    int ncase = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(cases, "four_bit"))
    {
        uint64_t n = case_numel(c);
        int bs = (int)cJSON_GetObjectItem(c, "blocksize")->valuedouble;
        qdtype dt = dtype_of(c);
        uint64_t nb = quant_nblocks(n, bs), ng = (nb + 255) / 256;
        const cJSON *key;
        cJSON_ArrayForEach(key, cJSON_GetObjectItem(c, "keys"))
        {
            const char *k = key->valuestring;
            quant_4bit_type qt = strstr(k, ".nf4") ? QUANT_NF4 : QUANT_FP4;
            char name[256];
            uint64_t cnt;
            snprintf(name, sizeof name, "%s.absmax", k);
            float *absmax = as_f32(st4, name, NULL);
            snprintf(name, sizeof name, "%s.qabsmax", k);
            uint8_t *ref_q = raw(st4, name, &cnt);
            ck_assert_uint_eq(cnt, nb);
            snprintf(name, sizeof name, "%s.absmax2", k);
            float *ref_a2 = as_f32(st4, name, &cnt);
            ck_assert_uint_eq(cnt, ng);
            snprintf(name, sizeof name, "%s.offset", k);
            float *ref_off = as_f32(st4, name, NULL);
            snprintf(name, sizeof name, "%s.absmax_dq", k);
            float *ref_rec = as_f32(st4, name, NULL);

            /* The offset is a CUDA mean whose last bits depend on the
             * reduction order: ours must be within a few ulp. */
            float off = quant_dq_offset(absmax, nb);
            ck_assert_msg(fabsf(off - ref_off[0]) <= 4 * ldexpf(1.0f, ilogbf(ref_off[0]) - 23),
                          "%s: offset %a, bnb %a", k, off, ref_off[0]);

            uint8_t *q = malloc(nb);
            float *a2 = malloc(ng * sizeof *a2);
            quant_dq_quantize(absmax, nb, ref_off[0], quant_dynamic_map, q, a2);
            for (uint64_t g = 0; g < ng; g++)
                ck_assert_msg(same_bits(a2[g], ref_a2[g]), "%s: absmax2[%llu] %a, bnb %a", k,
                              (unsigned long long)g, a2[g], ref_a2[g]);
            for (uint64_t b = 0; b < nb; b++) {
                if (q[b] == ref_q[b])
                    continue;
                float s = (absmax[b] - ref_off[0]) / a2[b / 256];
                ck_assert_msg(quant_dq_near_midpoint(s, quant_dynamic_map, QUANT_BNB_ULPS),
                              "%s: qabsmax[%llu] %u, bnb %u (scaled %a)", k,
                              (unsigned long long)b, q[b], ref_q[b], s);
                diffs++;
            }
            total += nb;

            /* Reconstruction from bnb's statistics: bit-exact. */
            float *rec = malloc(nb * sizeof *rec);
            quant_dq_dequantize(ref_q, ref_a2, ref_off[0], quant_dynamic_map, 0, nb, rec);
            for (uint64_t b = 0; b < nb; b++)
                ck_assert_msg(same_bits(rec[b], ref_rec[b]), "%s: absmax_dq[%llu] %a, bnb %a", k,
                              (unsigned long long)b, rec[b], ref_rec[b]);

            /* Dequantized weights through the nested absmax: bit-exact. */
            snprintf(name, sizeof name, "%s.packed", k);
            uint8_t *packed = raw(st4, name, NULL);
            check_dequant(k, ".deq_nested", qt, packed, rec, bs, dt);
            free(packed);
            free(rec);
            free(q);
            free(a2);
            free(absmax);
            free(ref_q);
            free(ref_a2);
            free(ref_off);
            free(ref_rec);
            ncase++;
        }
    }
    ck_assert_int_ge(ncase, 30);
    ck_assert_msg((double)diffs <= MAX_MISMATCH_FRACTION * (double)total + 1,
                  "%llu of %llu qabsmax codes differ", (unsigned long long)diffs,
                  (unsigned long long)total);
}
END_TEST

/* LLM.int8 weights: SCB exact, CB equal but for values within 1 ulp of a
 * rounding boundary; dequantization exact. */
START_TEST(int8_weight_cases)
{
    int ncase = 0;
    uint64_t total = 0, diffs = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(cases, "int8_weights"))
    {
        const char *cname = cJSON_GetObjectItem(c, "name")->valuestring;
        uint64_t rows = (uint64_t)cJSON_GetArrayItem(cJSON_GetObjectItem(c, "shape"), 0)->valuedouble;
        uint64_t cols = (uint64_t)cJSON_GetArrayItem(cJSON_GetObjectItem(c, "shape"), 1)->valuedouble;
        float *w = case_input(c, rows * cols);
        for (uint64_t i = 0; i < rows * cols; i++) /* Int8Params quantizes an f16 copy */
            w[i] = qf16_to_f32(qf32_to_f16(w[i]));
        char name[256];
        uint64_t cnt;
        snprintf(name, sizeof name, "%s.cb", cname);
        int8_t *ref_cb = raw(st8, name, &cnt);
        ck_assert_uint_eq(cnt, rows * cols);
        snprintf(name, sizeof name, "%s.scb", cname);
        float *ref_scb = as_f32(st8, name, &cnt);
        ck_assert_uint_eq(cnt, rows);

        int8_t *cb = malloc(rows * cols);
        float *scb = malloc(rows * sizeof *scb);
        quant_int8_quantize_rows(w, rows, cols, cb, scb);
        for (uint64_t r = 0; r < rows; r++) {
            ck_assert_msg(same_bits(scb[r], ref_scb[r]), "%s: SCB[%llu] %a, bnb %a", cname,
                          (unsigned long long)r, scb[r], ref_scb[r]);
            for (uint64_t j = 0; j < cols; j++) {
                uint64_t i = r * cols + j;
                if (cb[i] == ref_cb[i])
                    continue;
                float v = w[i] * (127.0f / scb[r]);
                ck_assert_msg(quant_int8_near_half(v, QUANT_BNB_ULPS) && abs(cb[i] - ref_cb[i]) == 1,
                              "%s: CB[%llu,%llu] %d, bnb %d (scaled %a)", cname,
                              (unsigned long long)r, (unsigned long long)j, cb[i], ref_cb[i], v);
                diffs++;
            }
        }
        total += rows * cols;

        /* Dequantization: f32(f32(cb * scb) * f32(1/127)), exact. */
        float *deq = malloc(rows * cols * sizeof *deq);
        quant_int8_dequantize_rows(ref_cb, ref_scb, rows, cols, deq);
        for (uint64_t i = 0; i < rows * cols; i++) {
            float want = (float)ref_cb[i] * ref_scb[i / cols];
            want = want * 0x1.020408p-7f;
            ck_assert_msg(same_bits(deq[i], want), "%s: dequant[%llu]", cname,
                          (unsigned long long)i);
        }
        free(deq);
        free(cb);
        free(scb);
        free(ref_cb);
        free(ref_scb);
        free(w);
        ncase++;
    }
    ck_assert_int_ge(ncase, 4);
    ck_assert_msg((double)diffs <= MAX_MISMATCH_FRACTION * (double)total, "%llu of %llu differ",
                  (unsigned long long)diffs, (unsigned long long)total);
    fprintf(stderr, "int8: %d cases, %llu weights, %llu near-half differences\n", ncase,
            (unsigned long long)total, (unsigned long long)diffs);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("bnb_exact");
    TCase *tc = tcase_create("fixtures");
    tcase_add_checked_fixture(tc, load_fixtures, unload_fixtures);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, dynamic_map_is_bitsandbytes);
    tcase_add_test(tc, four_bit_cases);
    tcase_add_test(tc, double_quant_cases);
    tcase_add_test(tc, int8_weight_cases);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
