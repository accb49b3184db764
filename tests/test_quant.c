/* Quantization numerics (src/quant.c) against the test vectors of
 * shared/docs/bnb-format.md section 7 (produced by bitsandbytes' CUDA kernels)
 * and property tests on fresh random inputs. Constants here are re-typed from
 * the doc as f32 bit patterns, independently of the literals in quant.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "quant.h"
#include "testutil.h"

/* ---- helpers ----------------------------------------------------------------- */

static float fb(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t bf(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float next_up(float f) { return nextafterf(f, INFINITY); }
static float next_dn(float f) { return nextafterf(f, -INFINITY); }

static float step_ulps(float f, int k)
{
    for (; k > 0; k--)
        f = next_up(f);
    for (; k < 0; k++)
        f = next_dn(f);
    return f;
}

static unsigned nibble(const uint8_t *packed, uint64_t i)
{
    return (i & 1) ? (packed[i >> 1] & 15u) : (unsigned)(packed[i >> 1] >> 4);
}

static void hex_to_bytes(const char *hex, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        ck_assert(sscanf(hex + 2 * i, "%2x", &v) == 1);
        out[i] = (uint8_t)v;
    }
}

static const int all_bs[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
#define N_BS ((int)(sizeof all_bs / sizeof all_bs[0]))

/* Doc tables (bnb-format.md sections 1.1, 1.3, 2) as f32 bits. */
static const uint32_t doc_nf4_lut[16] = {
    0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
    0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000};
static const uint32_t doc_nf4_thr[15] = {
    0xbf591cd9, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec, 0xbe0d38bc, 0xbd3a7871, 0x3d22faff,
    0x3df64863, 0x3e5067e0, 0x3e9582d4, 0x3ec753f9, 0x3f006d03, 0x3f248daf, 0x3f5c89d9};
/* magnitude by rank, and the rank -> bits mapping */
static const uint32_t doc_fp4_rank_val[8] = {0x00000000, 0x3baaaaab, 0x3e2aaaab, 0x3e800000,
                                             0x3eaaaaab, 0x3f000000, 0x3f2aaaab, 0x3f800000};
static const unsigned doc_fp4_rank_bits[8] = {0, 1, 6, 7, 4, 5, 2, 3};
static const uint32_t doc_fp4_thr[7] = {0x3b2aaab9, 0x3db00000, 0x3e555555, 0x3e955555,
                                        0x3ed55556, 0x3f155550, 0x3f555555};

/* Reference codes straight from the doc's rule (strict '>' counts). */
static unsigned ref_nf4(float s)
{
    unsigned c = 0;
    for (int k = 0; k < 15; k++)
        if (s > fb(doc_nf4_thr[k]))
            c++;
    return c;
}

static unsigned ref_fp4(float s)
{
    unsigned r = 0;
    for (int k = 0; k < 7; k++)
        if (fabsf(s) > fb(doc_fp4_thr[k]))
            r++;
    return doc_fp4_rank_bits[r] | (s < 0.0f ? 8u : 0u);
}

static unsigned ref_code(quant_4bit_type t, float s) { return t == QUANT_NF4 ? ref_nf4(s) : ref_fp4(s); }
static const float *lut_of(quant_4bit_type t) { return t == QUANT_NF4 ? quant_nf4_lut : quant_fp4_lut; }

/* Largest gap between adjacent code values (sorted). */
static float max_gap(const float *v, int n)
{
    float s[256];
    memcpy(s, v, (size_t)n * sizeof *s);
    for (int i = 1; i < n; i++) /* insertion sort */
        for (int j = i; j > 0 && s[j] < s[j - 1]; j--) {
            float t = s[j];
            s[j] = s[j - 1];
            s[j - 1] = t;
        }
    float g = 0;
    for (int i = 1; i < n; i++)
        g = fmaxf(g, s[i] - s[i - 1]);
    return g;
}

/* Random input of a kind chosen per call: normal, heavy-tailed, f16- or
 * bf16-rounded (the sources the converter sees), with some exact zeros. */
static void fill_random(tu_rng *r, float *x, uint64_t n)
{
    unsigned kind = (unsigned)(tu_next(r) % 4);
    float scale = (float)exp(tu_uniform(r) * 12.0 - 8.0);
    for (uint64_t i = 0; i < n; i++) {
        float v = tu_normal(r) * scale;
        if (kind == 1)
            v = v * v * v;
        if (kind == 2)
            v = qf16_to_f32(qf32_to_f16(v));
        if (kind == 3)
            v = qbf16_to_f32(qf32_to_bf16(v));
        if (tu_next(r) % 97 == 0)
            v = 0.0f;
        x[i] = v;
    }
}

/* ---- code books and per-value codes ------------------------------------------ */

START_TEST(lut_bits)
{
    for (int c = 0; c < 16; c++) {
        ck_assert_msg(bf(quant_nf4_lut[c]) == doc_nf4_lut[c], "nf4 code %d: %08x", c,
                      bf(quant_nf4_lut[c]));
        uint32_t want = doc_fp4_rank_val[0];
        for (int r = 0; r < 8; r++)
            if (doc_fp4_rank_bits[r] == (unsigned)(c & 7))
                want = doc_fp4_rank_val[r];
        if (c & 8)
            want |= 0x80000000u; /* code 8 is -0.0 */
        ck_assert_msg(bf(quant_fp4_lut[c]) == want, "fp4 code %d: %08x", c, bf(quant_fp4_lut[c]));
    }
    ck_assert(signbit(quant_fp4_lut[8]) && quant_fp4_lut[8] == 0.0f);
    ck_assert(!signbit(quant_nf4_lut[7]));
}
END_TEST

START_TEST(nf4_thresholds)
{
    for (int k = 0; k < 15; k++) {
        float t = fb(doc_nf4_thr[k]);
        /* strict '>': exactly on the threshold takes the lower code */
        ck_assert_msg(quant_nf4_code(t) == k, "t%d", k);
        ck_assert_msg(quant_nf4_code(next_up(t)) == k + 1, "t%d+", k);
        ck_assert_msg(quant_nf4_code(next_dn(t)) == k, "t%d-", k);
    }
    /* The four thresholds that are not the f32 midpoint (doc 1.3): the
     * midpoint itself still codes like the CUDA literal says. */
    ck_assert_uint_eq(quant_nf4_code(fb(0xbf591cd8)), 1); /* midpoint above t0 */
    ck_assert_uint_eq(quant_nf4_code(fb(0x3df64862)), 8);
    ck_assert_uint_eq(quant_nf4_code(fb(0x3f006d04)), 13);
    ck_assert_uint_eq(quant_nf4_code(fb(0x3f5c89da)), 15);
    for (int c = 0; c < 16; c++)
        ck_assert_uint_eq(quant_nf4_code(quant_nf4_lut[c]), c);
    ck_assert_uint_eq(quant_nf4_code(NAN), 0);
    ck_assert_uint_eq(quant_nf4_code(-NAN), 0);
    ck_assert_uint_eq(quant_nf4_code(0.0f), 7);
    ck_assert_uint_eq(quant_nf4_code(-0.0f), 7);
    ck_assert_uint_eq(quant_nf4_code(INFINITY), 15);
    ck_assert_uint_eq(quant_nf4_code(-INFINITY), 0);
    ck_assert_uint_eq(quant_nf4_code(1.5f), 15);
    ck_assert_uint_eq(quant_nf4_code(-1.5f), 0);
}
END_TEST

START_TEST(fp4_thresholds)
{
    for (int k = 0; k < 7; k++) {
        float t = fb(doc_fp4_thr[k]);
        ck_assert_msg(quant_fp4_code(t) == doc_fp4_rank_bits[k], "T%d", k);
        ck_assert_msg(quant_fp4_code(next_up(t)) == doc_fp4_rank_bits[k + 1], "T%d+", k);
        ck_assert_msg(quant_fp4_code(-t) == (8 | doc_fp4_rank_bits[k]), "-T%d", k);
        ck_assert_msg(quant_fp4_code(-next_up(t)) == (8 | doc_fp4_rank_bits[k + 1]), "-T%d+", k);
    }
    /* T5 is ~6 ulp below the midpoint: values in between already go up. */
    ck_assert_uint_eq(quant_fp4_code(fb(0x3f155553)), doc_fp4_rank_bits[6]);
    for (int c = 0; c < 16; c++)
        ck_assert_uint_eq(quant_fp4_code(quant_fp4_lut[c]), c == 8 ? 0 : c);
    /* sign: -0.0 and NaN have sign 0, tiny negatives keep it (TV5) */
    ck_assert_uint_eq(quant_fp4_code(-0.0f), 0);
    ck_assert_uint_eq(quant_fp4_code(NAN), 0);
    ck_assert_uint_eq(quant_fp4_code(-NAN), 0);
    ck_assert_uint_eq(quant_fp4_code(-0x1p-100f), 8);
    ck_assert_uint_eq(quant_fp4_code(-2e-4f), 8);
    ck_assert_uint_eq(quant_fp4_code(INFINITY), 3);
    ck_assert_uint_eq(quant_fp4_code(-INFINITY), 11);
}
END_TEST

START_TEST(codes_match_rule_random_floats)
{
    tu_rng r = {tu_seed()};
    for (int i = 0; i < 500000; i++) {
        float s;
        if (i & 1) {
            s = (float)(tu_uniform(&r) * 2.2 - 1.1);
        } else { /* a few ulps around a random threshold */
            int k = (int)(tu_next(&r) % 22);
            float t = k < 15 ? fb(doc_nf4_thr[k]) : fb(doc_fp4_thr[k - 15]);
            if (tu_next(&r) & 1)
                t = -t;
            s = step_ulps(t, (int)(tu_next(&r) % 9) - 4);
        }
        ck_assert_msg(quant_nf4_code(s) == ref_nf4(s), "nf4 %08x", bf(s));
        ck_assert_msg(quant_fp4_code(s) == ref_fp4(s), "fp4 %08x", bf(s));
    }
}
END_TEST

START_TEST(blocksizes)
{
    for (int b = 0; b < 8192; b++) {
        bool want = false;
        for (int i = 0; i < N_BS; i++)
            want |= all_bs[i] == b;
        ck_assert_msg(quant_blocksize_valid(b) == want, "%d", b);
    }
    ck_assert(!quant_blocksize_valid(-64));
    ck_assert(!quant_blocksize_valid(8192));
    ck_assert(quant_nblocks(0, 64) == 0);
    ck_assert(quant_nblocks(1, 64) == 1);
    ck_assert(quant_nblocks(64, 64) == 1);
    ck_assert(quant_nblocks(65, 64) == 2);
    ck_assert(quant_nblocks(120, 64) == 2);
    ck_assert(quant_nblocks(UINT64_MAX, 64) == (UINT64_MAX >> 6) + 1);
}
END_TEST

/* ---- test vectors (bnb-format.md section 7) ----------------------------------- */

static void quant_and_check(quant_4bit_type t, const float *x, uint64_t n, int bs,
                            const uint8_t *want, const float *want_absmax)
{
    uint8_t packed[256];
    float absmax[8];
    uint64_t nbytes = (n + 1) / 2, nb = quant_nblocks(n, bs);
    memset(packed, 0xee, sizeof packed);
    quant_4bit_quantize(t, x, n, bs, packed, absmax);
    for (uint64_t j = 0; j < nbytes; j++)
        ck_assert_msg(packed[j] == want[j], "%s byte %llu: %02x want %02x",
                      t == QUANT_NF4 ? "nf4" : "fp4", (unsigned long long)j, packed[j], want[j]);
    ck_assert_uint_eq(packed[nbytes], 0xee); /* nothing written past the end */
    for (uint64_t b = 0; b < nb; b++)
        ck_assert_msg(bf(absmax[b]) == bf(want_absmax[b]), "absmax %llu", (unsigned long long)b);
}

START_TEST(tv1_bf16_one_block)
{
    const float head[8] = {0.5f, -0.5f, 0.25f, -0.125f, 0.0625f, 0.30078125f, -0.30078125f,
                           0.10009765625f};
    float x[64] = {0};
    memcpy(x, head, sizeof head);
    for (int i = 0; i < 8; i++) /* they are bf16 values */
        ck_assert(qbf16_to_f32(qf32_to_bf16(x[i])) == x[i]);
    const float am = 0.5f;
    uint8_t want[32];

    memset(want, 0x77, sizeof want);
    hex_to_bytes("f0c49d29", want, 4);
    quant_and_check(QUANT_NF4, x, 64, 64, want, &am);
    const float nf4_deq[8] = {0.5f, -0.5f, 0.22035491466522217f, -0.14222069084644318f,
                              0.08046510070562363f, 0.28130850195884705f, -0.26253652572631836f,
                              0.08046510070562363f};
    uint8_t packed[32];
    float absmax[1], out[64];
    quant_4bit_quantize(QUANT_NF4, x, 64, 64, packed, absmax);
    quant_4bit_dequantize(QUANT_NF4, packed, absmax, 0, 64, 64, out);
    for (int i = 0; i < 8; i++)
        ck_assert_msg(bf(out[i]) == bf(nf4_deq[i]), "nf4 deq %d", i);
    for (int i = 8; i < 64; i++)
        ck_assert(bf(out[i]) == 0);

    memset(want, 0x00, sizeof want);
    hex_to_bytes("3b5f62a6", want, 4);
    quant_and_check(QUANT_FP4, x, 64, 64, want, &am);
    const float fp4_deq[8] = {0.5f, -0.5f, 0.25f, -0.125f, 0.0833333358168602f,
                              0.3333333432674408f, -0.3333333432674408f, 0.0833333358168602f};
    quant_4bit_quantize(QUANT_FP4, x, 64, 64, packed, absmax);
    quant_4bit_dequantize(QUANT_FP4, packed, absmax, 0, 64, 64, out);
    for (int i = 0; i < 8; i++)
        ck_assert_msg(bf(out[i]) == bf(fp4_deq[i]), "fp4 deq %d", i);
}
END_TEST

START_TEST(tv2_odd_length)
{
    const float x[5] = {0.1f, -0.2f, 0.3f, -0.4f, 0.8f};
    const float am = 0.800000011920929f;
    ck_assert(am == 0.8f);
    uint8_t want[3];
    hex_to_bytes("94b2f7", want, 3);
    quant_and_check(QUANT_NF4, x, 5, 64, want, &am);
    hex_to_bytes("6f4d30", want, 3);
    quant_and_check(QUANT_FP4, x, 5, 64, want, &am);
}
END_TEST

START_TEST(tv3_layout)
{
    float x[128] = {0};
    x[0] = 1.0f;
    x[1] = -1.0f;
    x[64 + 62] = 0.5f;
    x[64 + 63] = 0.25f;
    const float am[2] = {1.0f, 0.5f};
    uint8_t want[64];
    memset(want, 0x77, sizeof want);
    want[0] = 0xf0;
    want[63] = 0xfc;
    quant_and_check(QUANT_NF4, x, 128, 64, want, am);
}
END_TEST

START_TEST(tv4_zero_block)
{
    float x[64] = {0};
    uint8_t want[32];
    const float am = 0.0f;
    memset(want, 0, sizeof want);
    quant_and_check(QUANT_NF4, x, 64, 64, want, &am);
    quant_and_check(QUANT_FP4, x, 64, 64, want, &am);

    uint8_t packed[32];
    float absmax[1], out[64];
    quant_4bit_quantize(QUANT_NF4, x, 64, 64, packed, absmax);
    quant_4bit_dequantize(QUANT_NF4, packed, absmax, 0, 64, 64, out);
    for (int i = 0; i < 64; i++) {
        ck_assert(out[i] == 0.0f && signbit(out[i])); /* -1 * 0 = -0.0 */
        ck_assert_uint_eq(qf32_to_f16(out[i]), 0x8000);
    }
    quant_4bit_quantize(QUANT_FP4, x, 64, 64, packed, absmax);
    quant_4bit_dequantize(QUANT_FP4, packed, absmax, 0, 64, 64, out);
    for (int i = 0; i < 64; i++)
        ck_assert_uint_eq(bf(out[i]), 0);

    /* odd all-zero tensor: the padding nibble is code 0 as well (0/0 = NaN) */
    uint8_t want3[3] = {0, 0, 0};
    quant_and_check(QUANT_NF4, x, 5, 64, want3, &am);
}
END_TEST

START_TEST(tv5_fp4_signs)
{
    float x[64] = {0};
    x[0] = qf16_to_f32(qf32_to_f16(-1e-4f));
    x[1] = 0.5f;
    x[2] = 0.0f;
    x[3] = -0.0f;
    uint8_t want[32] = {0x83};
    const float am = 0.5f;
    quant_and_check(QUANT_FP4, x, 64, 64, want, &am);
    uint8_t packed[32];
    float absmax[1], out[4];
    quant_4bit_quantize(QUANT_FP4, x, 64, 64, packed, absmax);
    quant_4bit_dequantize(QUANT_FP4, packed, absmax, 0, 4, 64, out);
    const uint16_t want16[4] = {0x8000, 0x3800, 0x0000, 0x0000};
    for (int i = 0; i < 4; i++)
        ck_assert_uint_eq(qf32_to_f16(out[i]), want16[i]);
}
END_TEST

START_TEST(tv6_thresholds)
{
    static const uint16_t in16[64] = {
        0x0000, 0x3c00, 0xbc00, 0x3800, 0xb800, 0x3400, 0xb400, 0x2e66, 0xae66, 0x291f, 0x2918,
        0xa9d3, 0xa9e3, 0x3ae5, 0x3ae3, 0x399a, 0x38cd, 0x3803, 0x3803, 0x363d, 0x363a, 0x34ac,
        0x34ac, 0x3284, 0x3283, 0x2fb3, 0x2fb1, 0xb06a, 0xb06a, 0xb382, 0xb383, 0xb56f, 0xb570,
        0xb75c, 0xb75c, 0xb8e3, 0xb8e3, 0xbac9, 0xbac9, 0x1953, 0x1988, 0x2d7f, 0x2d81, 0x32aa,
        0x32ab, 0x34ab, 0x34aa, 0x36aa, 0x36ab, 0x38ab, 0x38ab, 0x3aab, 0x3aab, 0x9953, 0x9988,
        0xad7f, 0xad81, 0x34cd, 0xb4cd, 0x3a66, 0xba66, 0x3b9a, 0xbb9a, 0x1419};
    float x[64];
    for (int i = 0; i < 64; i++)
        x[i] = qf16_to_f32(in16[i]);
    const float am = 1.0f;
    uint8_t want[32];
    hex_to_bytes("7f0c2a4868876feedcccbaaa9985544433311007788aaaaccddee7766b4e1f07", want, 32);
    quant_and_check(QUANT_NF4, x, 64, 64, want, &am);
    hex_to_bytes("03b5d7f6e119933225544446666eeffccddaabb01166747452233899e4c2a3b0", want, 32);
    quant_and_check(QUANT_FP4, x, 64, 64, want, &am);
    /* the doc's worked examples */
    ck_assert_uint_eq(quant_nf4_code(qf16_to_f32(0x2918)), 8);
    ck_assert_uint_eq(quant_nf4_code(qf16_to_f32(0xa9d3)), 7);
}
END_TEST

START_TEST(tv7_nested_two_roundings)
{
    const float a2 = fb(0x3cda1400), off = fb(0x3d56f600);
    ck_assert_uint_eq(bf(quant_dynamic_map[206]), 0x3ea2cccc);
    ck_assert_uint_eq(bf(quant_dynamic_map[76]), 0xbd84cccd);
    ck_assert_uint_eq(bf(quant_dynamic_map[178]), 0x3d84cccd);

    uint8_t q[512] = {0};
    float absmax2[2] = {0.0f, a2}; /* block 256+ uses group 1 */
    q[300] = 206;
    q[301] = 76;
    float out[2];
    quant_dq_dequantize(q, absmax2, off, quant_dynamic_map, 300, 2, out);
    ck_assert_msg(bf(out[0]) == 0x3d79a1c8, "got %08x", bf(out[0]));
    ck_assert_msg(bf(out[1]) == 0x3d4fe3f4, "got %08x", bf(out[1]));
    /* the single-rounding (FMA) result is different, so the test can tell */
    ck_assert_uint_eq(bf(fmaf(quant_dynamic_map[206], a2, off)), 0x3d79a1c7);
}
END_TEST

START_TEST(tv8_int8_row)
{
    const float w[8] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 63.5f, 64.5f};
    const int8_t want[8] = {127, 0, 2, 2, 0, -2, 64, 64};
    int8_t cb[8];
    float scb;
    quant_int8_quantize_rows(w, 1, 8, cb, &scb);
    ck_assert_uint_eq(bf(scb), bf(127.0f));
    for (int i = 0; i < 8; i++)
        ck_assert_msg(cb[i] == want[i], "col %d: %d", i, cb[i]);
    float deq[8];
    quant_int8_dequantize_rows(cb, &scb, 1, 8, deq);
    for (int i = 0; i < 8; i++) {
        float p = (float)want[i] * 127.0f;
        ck_assert_uint_eq(bf(deq[i]), bf(p * fb(0x3c010204)));
    }
}
END_TEST

/* ---- dynamic map -------------------------------------------------------------- */

START_TEST(dynamic_map_table)
{
    /* bnb-format.md 3.1, torch 2.11 table, indices 128..255 */
    static const uint32_t doc[128] = {
        0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
        0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
        0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
        0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
        0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
        0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
        0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
        0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
        0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
        0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
        0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
        0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
        0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
        0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
        0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
        0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000};
    const float *m = quant_dynamic_map;
    for (int i = 0; i < 128; i++)
        ck_assert_msg(bf(m[128 + i]) == doc[i], "map[%d] = %08x", 128 + i, bf(m[128 + i]));
    ck_assert_uint_eq(bf(m[127]), 0);
    for (int j = 1; j <= 127; j++)
        ck_assert_msg(bf(m[127 - j]) == (bf(m[127 + j]) ^ 0x80000000u), "map[%d]", 127 - j);
    ck_assert_uint_eq(bf(m[0]), bf(-0.99296874f));
    for (int i = 1; i < 256; i++)
        ck_assert(m[i] > m[i - 1]);
    /* decade counts of the positive half */
    int dec[8] = {0};
    for (int i = 128; i < 255; i++) {
        int d = (int)floor(log10((double)m[i])) + 7; /* 5.5e-7 -> 0, 0.1.. -> 6 */
        ck_assert(d >= 0 && d < 7);
        dec[d]++;
    }
    const int want[7] = {1, 2, 4, 8, 16, 32, 64};
    for (int d = 0; d < 7; d++)
        ck_assert_msg(dec[d] == want[d], "decade %d: %d", d, dec[d]);
}
END_TEST

/* ---- 4-bit properties ----------------------------------------------------------- */

/* Quantize fresh random tensors of awkward sizes with every blocksize and check
 * absmax, every code (against the doc rule on the exactly divided value), the
 * padding nibble, the round-trip error and range dequantization. */
static void check_4bit_random(quant_4bit_type t, int bs, uint64_t n, tu_rng *r)
{
    float *x = malloc(n * sizeof *x), *out = malloc(n * sizeof *out);
    uint64_t nb = quant_nblocks(n, bs), nbytes = (n + 1) / 2;
    uint8_t *packed = malloc(nbytes + 1);
    float *absmax = malloc(nb * sizeof *absmax);
    ck_assert(x && out && packed && absmax);
    fill_random(r, x, n);
    /* an all-zero block, a NaN and an infinity-free block somewhere */
    if (nb > 2) {
        uint64_t zb = tu_next(r) % nb;
        for (uint64_t i = zb * bs; i < n && i < (zb + 1) * (uint64_t)bs; i++)
            x[i] = (tu_next(r) & 1) ? 0.0f : -0.0f;
        x[tu_next(r) % n] = NAN;
    }
    packed[nbytes] = 0xa5;
    quant_4bit_quantize(t, x, n, bs, packed, absmax);
    ck_assert_uint_eq(packed[nbytes], 0xa5);

    const float *lut = lut_of(t);
    float half_gap = 0.5f * max_gap(lut, 16);
    for (uint64_t b = 0; b < nb; b++) {
        uint64_t s0 = b * bs, s1 = s0 + bs < n ? s0 + bs : n;
        float m = 0.0f;
        for (uint64_t i = s0; i < s1; i++)
            if (!isnan(x[i]))
                m = fmaxf(m, fabsf(x[i]));
        ck_assert_msg(bf(absmax[b]) == bf(m), "bs %d n %llu block %llu", bs,
                      (unsigned long long)n, (unsigned long long)b);
        for (uint64_t i = s0; i < s1; i++) {
            unsigned c = nibble(packed, i);
            float s = x[i] / m;
            unsigned want = (m == 0.0f || isnan(x[i])) ? 0 : ref_code(t, s);
            ck_assert_msg(c == want, "bs %d i %llu x %a code %u want %u", bs,
                          (unsigned long long)i, x[i], c, want);
        }
    }
    if (n & 1) { /* padding nibble = code of 0.0 under the last block's absmax */
        float m = absmax[nb - 1];
        unsigned want = m == 0.0f ? 0 : (t == QUANT_NF4 ? 7 : 0);
        ck_assert_uint_eq(nibble(packed, n), want);
    }

    quant_4bit_dequantize(t, packed, absmax, 0, n, bs, out);
    for (uint64_t i = 0; i < n; i++) {
        float a = absmax[i / bs];
        ck_assert(bf(out[i]) == bf(lut[nibble(packed, i)] * a));
        if (isnan(x[i]))
            continue;
        /* thresholds are midpoints up to a few ulp, so the error is within
         * half the largest code gap (plus the rounding of the product) */
        ck_assert_msg(fabsf(out[i] - x[i]) <= (half_gap + 1e-6f) * a, "bs %d i %llu: %a -> %a",
                      bs, (unsigned long long)i, x[i], out[i]);
    }
    /* arbitrary ranges, including odd starts and block-straddling ones */
    for (int k = 0; k < 20; k++) {
        uint64_t first = tu_next(r) % n, count = tu_next(r) % (n - first + 1);
        float *part = malloc((count ? count : 1) * sizeof *part);
        quant_4bit_dequantize(t, packed, absmax, first, count, bs, part);
        ck_assert(count == 0 || memcmp(part, out + first, count * sizeof *part) == 0);
        free(part);
    }
    free(x);
    free(out);
    free(packed);
    free(absmax);
}

START_TEST(prop_4bit_random)
{
    tu_rng r = {tu_seed() + 1};
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < N_BS; k++)
            for (int rep = 0; rep < 4; rep++) {
                int bs = all_bs[k];
                uint64_t n = 1 + tu_next(&r) % (uint64_t)(bs * 9);
                if (rep == 0)
                    n |= 1; /* odd */
                if (rep == 1)
                    n = (uint64_t)bs * (1 + tu_next(&r) % 5); /* whole blocks */
                check_4bit_random((quant_4bit_type)t, bs, n, &r);
            }
}
END_TEST

START_TEST(rows_straddle_blocks)
{
    /* [3, 40] with bs 64: 2 blocks, block 0 = row 0 and the first 24 of row 1 */
    float x[120];
    tu_rng r = {tu_seed() + 2};
    for (int i = 0; i < 120; i++)
        x[i] = tu_normal(&r) * 0.1f;
    x[40 + 5] = 3.0f;   /* row 1, in block 0 */
    x[40 + 30] = -2.0f; /* row 1, in block 1 */
    uint8_t packed[60];
    float absmax[2];
    quant_4bit_quantize(QUANT_NF4, x, 120, 64, packed, absmax);
    ck_assert(absmax[0] == 3.0f);
    ck_assert(absmax[1] == 2.0f);
    ck_assert_uint_eq(nibble(packed, 45), 15);
    ck_assert_uint_eq(nibble(packed, 70), 0);
}
END_TEST

START_TEST(pack_roundtrip)
{
    /* Inputs that are exactly the code values (absmax 1 per block) give
     * back each chosen code, so packing order is checked nibble by nibble. */
    tu_rng r = {tu_seed() + 3};
    for (int t = 0; t < 2; t++) {
        const float *lut = lut_of((quant_4bit_type)t);
        enum { N = 64 * 7 + 33 };
        float x[N], out[N];
        unsigned codes[N];
        for (int i = 0; i < N; i++) {
            codes[i] = (unsigned)(tu_next(&r) % 16);
            if (t == QUANT_FP4 && codes[i] == 8)
                codes[i] = 0; /* -0.0 codes as +0.0 */
            x[i] = lut[codes[i]];
        }
        for (int b = 0; b * 64 < N; b++)
            x[b * 64 + 1] = (b & 1) ? -1.0f : 1.0f; /* absmax exactly 1 */
        for (int b = 0; b * 64 < N; b++)
            codes[b * 64 + 1] = t == QUANT_NF4 ? ((b & 1) ? 0 : 15) : ((b & 1) ? 11 : 3);
        uint8_t packed[(N + 1) / 2];
        float absmax[8];
        quant_4bit_quantize((quant_4bit_type)t, x, N, 64, packed, absmax);
        for (int i = 0; i < N; i++)
            ck_assert_msg(nibble(packed, (uint64_t)i) == codes[i], "t %d i %d", t, i);
        for (int j = 0; j < N / 2; j++)
            ck_assert(packed[j] == (uint8_t)(codes[2 * j] << 4 | codes[2 * j + 1]));
        quant_4bit_dequantize((quant_4bit_type)t, packed, absmax, 0, N, 64, out);
        for (int i = 0; i < N; i++)
            ck_assert(bf(out[i]) == bf(x[i]));
    }
}
END_TEST

START_TEST(nan_and_inf_inputs)
{
    float x[64];
    for (int i = 0; i < 64; i++)
        x[i] = 0.01f * (float)(i - 32);
    x[3] = NAN;
    x[4] = -NAN;
    uint8_t packed[32];
    float absmax[1];
    quant_4bit_quantize(QUANT_NF4, x, 64, 64, packed, absmax);
    ck_assert(absmax[0] == fabsf(x[0])); /* NaN does not become the absmax */
    ck_assert_uint_eq(nibble(packed, 3), 0);
    ck_assert_uint_eq(nibble(packed, 4), 0);
    ck_assert_uint_eq(nibble(packed, 0), 0); /* -0.32 -> -1 */
    quant_4bit_quantize(QUANT_FP4, x, 64, 64, packed, absmax);
    ck_assert_uint_eq(nibble(packed, 3), 0);
    ck_assert_uint_eq(nibble(packed, 4), 0);
    /* an infinity: absmax inf, finite values scale to +-0, inf/inf = NaN */
    x[3] = 0.5f;
    x[4] = -INFINITY;
    quant_4bit_quantize(QUANT_NF4, x, 64, 64, packed, absmax);
    ck_assert(isinf(absmax[0]));
    ck_assert_uint_eq(nibble(packed, 4), 0);
    ck_assert_uint_eq(nibble(packed, 3), 7);
}
END_TEST

/* ---- double quantization ------------------------------------------------------- */

/* Nearest map index by brute force: smallest distance to a value, with the
 * decision made on f32 midpoints and exact ties going to the even index. */
static unsigned ref_dq_code(float s, const float *m)
{
    if (isnan(s))
        return 0;
    unsigned k = 0;
    while (k < 255) {
        float mid = (m[k] + m[k + 1]) * 0.5f;
        if (s > mid || (s == mid && (k & 1)))
            k++;
        else
            break;
    }
    return k;
}

START_TEST(dq_code_rule)
{
    const float *m = quant_dynamic_map;
    for (int k = 0; k < 255; k++) {
        float mid = (m[k] + m[k + 1]) * 0.5f;
        unsigned even = (k & 1) ? (unsigned)k + 1 : (unsigned)k;
        ck_assert_msg(quant_dq_code(mid, m) == even, "tie at %d", k);
        ck_assert_uint_eq(quant_dq_code(next_up(mid), m), k + 1);
        ck_assert_uint_eq(quant_dq_code(next_dn(mid), m), k);
    }
    for (int k = 0; k < 256; k++)
        ck_assert_uint_eq(quant_dq_code(m[k], m), k);
    ck_assert_uint_eq(quant_dq_code(NAN, m), 0);
    ck_assert_uint_eq(quant_dq_code(-2.0f, m), 0);
    ck_assert_uint_eq(quant_dq_code(2.0f, m), 255);
    ck_assert_uint_eq(quant_dq_code(0.0f, m), 127);
    ck_assert_uint_eq(quant_dq_code(-0.0f, m), 127);
    tu_rng r = {tu_seed() + 4};
    for (int i = 0; i < 200000; i++) {
        float s = (float)(tu_uniform(&r) * 2.0 - 1.0);
        if (i & 1)
            s *= (float)pow(10.0, -7.0 * tu_uniform(&r));
        ck_assert_msg(quant_dq_code(s, m) == ref_dq_code(s, m), "%a", s);
    }
}
END_TEST

START_TEST(dq_random_roundtrip)
{
    tu_rng r = {tu_seed() + 5};
    const float *m = quant_dynamic_map;
    float half_gap = 0.5f * max_gap(m, 256);
    for (int rep = 0; rep < 20; rep++) {
        uint64_t nb = 1 + tu_next(&r) % 2000;
        if (rep == 0)
            nb = 512;
        float *a = malloc(nb * sizeof *a), *back = malloc(nb * sizeof *back);
        uint8_t *q = malloc(nb);
        float *a2 = malloc(quant_nblocks(nb, 256) * sizeof *a2);
        for (uint64_t i = 0; i < nb; i++)
            a[i] = (float)exp(tu_normal(&r) - 3.0);
        if (nb > 300) /* a group of equal values: every C = -offset */
            for (uint64_t i = 256; i < 512 && i < nb; i++)
                a[i] = 0.0f;
        float off = quant_dq_offset(a, nb);
        long double sum = 0;
        for (uint64_t i = 0; i < nb; i++)
            sum += a[i];
        ck_assert(fabsl((long double)off - sum / nb) <= fabsl(sum / nb) * 0x1p-23L);
        quant_dq_quantize(a, nb, off, m, q, a2);
        for (uint64_t g = 0; g * 256 < nb; g++) {
            float mx = 0;
            for (uint64_t i = g * 256; i < nb && i < (g + 1) * 256; i++)
                mx = fmaxf(mx, fabsf(a[i] - off));
            ck_assert(bf(a2[g]) == bf(mx));
        }
        for (uint64_t i = 0; i < nb; i++) {
            float g2 = a2[i / 256];
            float c = a[i] - off;
            unsigned want = ref_dq_code(c / g2, m);
            ck_assert_msg(q[i] == want, "block %llu: %u want %u", (unsigned long long)i, q[i], want);
        }
        quant_dq_dequantize(q, a2, off, m, 0, nb, back);
        for (uint64_t i = 0; i < nb; i++) {
            float g2 = a2[i / 256];
            float p = m[q[i]] * g2;
            ck_assert(bf(back[i]) == bf(p + off));
            ck_assert(fabsf(back[i] - a[i]) <= (half_gap + 1e-6f) * g2 + 2e-7f * fabsf(a[i]) +
                                                   1e-7f * fabsf(off));
        }
        uint64_t first = tu_next(&r) % nb, count = nb - first;
        quant_dq_dequantize(q, a2, off, m, first, count, back);
        for (uint64_t i = 0; i < count; i++)
            ck_assert(bf(back[i]) == bf(m[q[first + i]] * a2[(first + i) / 256] + off));
        free(a);
        free(back);
        free(q);
        free(a2);
    }
    ck_assert(quant_dq_offset(NULL, 0) == 0.0f);
}
END_TEST

START_TEST(dq_zero_group)
{
    float a[10];
    for (int i = 0; i < 10; i++)
        a[i] = 0.25f;
    uint8_t q[10];
    float a2[1], back[10];
    float off = quant_dq_offset(a, 10);
    ck_assert(off == 0.25f);
    quant_dq_quantize(a, 10, off, quant_dynamic_map, q, a2);
    ck_assert(a2[0] == 0.0f);
    for (int i = 0; i < 10; i++)
        ck_assert_uint_eq(q[i], 0); /* 0/0 = NaN -> index 0, as on the GPU */
    quant_dq_dequantize(q, a2, off, quant_dynamic_map, 0, 10, back);
    for (int i = 0; i < 10; i++)
        ck_assert(back[i] == 0.25f);
}
END_TEST

/* ---- int8 ------------------------------------------------------------------------ */

START_TEST(int8_random_rows)
{
    tu_rng r = {tu_seed() + 6};
    for (int rep = 0; rep < 10; rep++) {
        uint64_t rows = 1 + tu_next(&r) % 17, cols = 1 + tu_next(&r) % 333;
        uint64_t n = rows * cols;
        float *w = malloc(n * sizeof *w), *back = malloc(n * sizeof *back);
        float *scb = malloc(rows * sizeof *scb);
        int8_t *cb = malloc(n);
        float sc = (float)exp(tu_uniform(&r) * 10 - 7);
        for (uint64_t i = 0; i < n; i++)
            w[i] = qf16_to_f32(qf32_to_f16(tu_normal(&r) * sc));
        uint64_t zr = tu_next(&r) % rows; /* an all-zero row */
        for (uint64_t c = 0; c < cols; c++)
            w[zr * cols + c] = 0.0f;
        quant_int8_quantize_rows(w, rows, cols, cb, scb);
        quant_int8_dequantize_rows(cb, scb, rows, cols, back);
        for (uint64_t i = 0; i < rows; i++) {
            float mx = 0;
            for (uint64_t c = 0; c < cols; c++)
                mx = fmaxf(mx, fabsf(w[i * cols + c]));
            ck_assert(bf(scb[i]) == bf(mx));
            float scale = 127.0f / mx;
            for (uint64_t c = 0; c < cols; c++) {
                float v = w[i * cols + c] * scale;
                int want = mx == 0.0f ? 0 : (int)nearbyintf(v);
                ck_assert_msg(cb[i * cols + c] == want, "r %llu c %llu v %a: %d want %d",
                              (unsigned long long)i, (unsigned long long)c, v, cb[i * cols + c],
                              want);
                float p = (float)cb[i * cols + c] * mx;
                ck_assert(bf(back[i * cols + c]) == bf(p * fb(0x3c010204)));
                ck_assert(fabsf(back[i * cols + c] - w[i * cols + c]) <= mx * (0.5f / 127 + 1e-6f));
            }
        }
        free(w);
        free(back);
        free(scb);
        free(cb);
    }
}
END_TEST

START_TEST(int8_half_even_and_zero)
{
    /* every half from -126.5 to 126.5 with scb = 127 (scale exactly 1) */
    float w[256];
    int8_t cb[256];
    float scb;
    for (int i = 0; i < 254; i++)
        w[i] = (float)(i - 127) + 0.5f; /* -126.5 .. 126.5 */
    w[254] = 127.0f;
    w[255] = -127.0f;
    quant_int8_quantize_rows(w, 1, 256, cb, &scb);
    ck_assert(scb == 127.0f);
    ck_assert(cb[254] == 127 && cb[255] == -127);
    for (int i = 0; i < 254; i++) {
        float h = w[i];
        int lo = (int)floorf(h), want = (lo & 1) ? lo + 1 : lo;
        ck_assert_msg(cb[i] == want, "%g -> %d", h, cb[i]);
    }
    float z[5] = {0, -0.0f, 0, 0, 0};
    int8_t zc[5] = {1, 1, 1, 1, 1};
    quant_int8_quantize_rows(z, 1, 5, zc, &scb);
    ck_assert(scb == 0.0f);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(zc[i], 0);
}
END_TEST

/* ---- fixture-comparison rules ---------------------------------------------------- */

START_TEST(near_threshold_rule)
{
    for (int t = 0; t < 2; t++) {
        const uint32_t *thr = t == QUANT_NF4 ? doc_nf4_thr : doc_fp4_thr;
        int nt = t == QUANT_NF4 ? 15 : 7;
        for (int k = 0; k < nt; k++)
            for (int sgn = 0; sgn < (t == QUANT_FP4 ? 2 : 1); sgn++) {
                float th = fb(thr[k] ^ (sgn ? 0x80000000u : 0));
                for (int d = -QUANT_GPU_RCP_ULPS; d <= QUANT_GPU_RCP_ULPS; d++)
                    ck_assert_msg(quant_4bit_near_threshold((quant_4bit_type)t, step_ulps(th, d), QUANT_GPU_RCP_ULPS),
                                  "t %d k %d d %d", t, k, d);
                ck_assert(!quant_4bit_near_threshold((quant_4bit_type)t,
                                                     step_ulps(th, QUANT_GPU_RCP_ULPS + 1), QUANT_GPU_RCP_ULPS));
                ck_assert(!quant_4bit_near_threshold((quant_4bit_type)t,
                                                     step_ulps(th, -QUANT_GPU_RCP_ULPS - 1), QUANT_GPU_RCP_ULPS));
            }
        const float *lut = lut_of((quant_4bit_type)t);
        for (int c = 0; c < 16; c++)
            ck_assert(!quant_4bit_near_threshold((quant_4bit_type)t, lut[c], QUANT_GPU_RCP_ULPS));
        ck_assert(!quant_4bit_near_threshold((quant_4bit_type)t, NAN, QUANT_GPU_RCP_ULPS));
    }
    /* NF4 has no threshold at 0; FP4's sign of a subnormal is lost to ftz */
    ck_assert(!quant_4bit_near_threshold(QUANT_NF4, -0x1p-130f, QUANT_GPU_RCP_ULPS));
    ck_assert(quant_4bit_near_threshold(QUANT_FP4, -0x1p-130f, QUANT_GPU_RCP_ULPS));
    ck_assert(!quant_4bit_near_threshold(QUANT_FP4, -0x1p-120f, QUANT_GPU_RCP_ULPS));
    ck_assert(!quant_4bit_near_threshold(QUANT_FP4, -0.0f, QUANT_GPU_RCP_ULPS));
}
END_TEST

START_TEST(near_midpoint_and_half_rule)
{
    const float *m = quant_dynamic_map;
    for (int k = 0; k < 255; k++) {
        float mid = (m[k] + m[k + 1]) * 0.5f;
        for (int d = -QUANT_GPU_RCP_ULPS; d <= QUANT_GPU_RCP_ULPS; d++)
            ck_assert(quant_dq_near_midpoint(step_ulps(mid, d), m, QUANT_GPU_RCP_ULPS));
        ck_assert(!quant_dq_near_midpoint(step_ulps(mid, QUANT_GPU_RCP_ULPS + 1), m, QUANT_GPU_RCP_ULPS));
        ck_assert(!quant_dq_near_midpoint(step_ulps(mid, -QUANT_GPU_RCP_ULPS - 1), m, QUANT_GPU_RCP_ULPS));
    }
    for (int k = 0; k < 256; k++)
        ck_assert(!quant_dq_near_midpoint(m[k], m, QUANT_GPU_RCP_ULPS));
    ck_assert(!quant_dq_near_midpoint(NAN, m, QUANT_GPU_RCP_ULPS));

    for (int n = -128; n <= 127; n++) {
        float h = (float)n + 0.5f;
        for (int d = -QUANT_GPU_RCP_ULPS; d <= QUANT_GPU_RCP_ULPS; d++)
            ck_assert_msg(quant_int8_near_half(step_ulps(h, d), QUANT_GPU_RCP_ULPS), "%g %d", h, d);
        ck_assert(!quant_int8_near_half(step_ulps(h, QUANT_GPU_RCP_ULPS + 1), QUANT_GPU_RCP_ULPS));
        ck_assert(!quant_int8_near_half(step_ulps(h, -QUANT_GPU_RCP_ULPS - 1), QUANT_GPU_RCP_ULPS));
        ck_assert(!quant_int8_near_half((float)n, QUANT_GPU_RCP_ULPS));
    }
    ck_assert(!quant_int8_near_half(NAN, QUANT_GPU_RCP_ULPS));
}
END_TEST

/* The rule must explain every difference a GPU-style quantizer can make: scale
 * with the other faithful neighbour of 1/a (what rcp.approx may return), and
 * every code that then differs must be flagged as near. Inputs are aimed at
 * the boundaries so that differences really happen. */
static float other_neighbour_rcp(float a)
{
    float inv = 1.0f / a;
    double ex = 1.0 / (double)a;
    return (double)inv > ex ? next_dn(inv) : next_up(inv);
}

START_TEST(near_rule_covers_gpu_reciprocal)
{
    tu_rng r = {tu_seed() + 7};
    long diff4 = 0, diffdq = 0, diff8 = 0;
    for (int i = 0; i < 400000; i++) {
        float a = (float)exp(tu_normal(&r) * 2.0);
        float inv = (i & 1) ? other_neighbour_rcp(a) : 1.0f / a;
        quant_4bit_type t = (quant_4bit_type)(i & 2 ? QUANT_FP4 : QUANT_NF4);
        int k = (int)(tu_next(&r) % (t == QUANT_NF4 ? 15 : 7));
        float th = t == QUANT_NF4 ? fb(doc_nf4_thr[k]) : fb(doc_fp4_thr[k]);
        float x = step_ulps(th * a, (int)(tu_next(&r) % 7) - 3);
        float s_cpu = x / a, s_gpu = x * inv;
        unsigned c_cpu = t == QUANT_NF4 ? quant_nf4_code(s_cpu) : quant_fp4_code(s_cpu);
        unsigned c_gpu = ref_code(t, s_gpu);
        if (c_cpu != c_gpu) {
            diff4++;
            ck_assert_msg(quant_4bit_near_threshold(t, s_cpu, QUANT_GPU_RCP_ULPS), "x %a a %a", x, a);
        }

        /* double quant: s = C / absmax2 aimed at a map midpoint */
        int j = (int)(tu_next(&r) % 255);
        float mid = (quant_dynamic_map[j] + quant_dynamic_map[j + 1]) * 0.5f;
        float c = step_ulps(mid * a, (int)(tu_next(&r) % 7) - 3);
        float q_cpu = c / a;
        if (quant_dq_code(q_cpu, quant_dynamic_map) != quant_dq_code(c * inv, quant_dynamic_map)) {
            diffdq++;
            ck_assert_msg(quant_dq_near_midpoint(q_cpu, quant_dynamic_map, QUANT_GPU_RCP_ULPS), "c %a a %a", c, a);
        }

        /* int8: scale = f32(127 * rcp(scb)), v = w * scale. f16 pairs with
         * scb = 127 j 2^e and w = odd j 2^(e-1) have 127 w / scb = odd / 2
         * exactly, the cases where the two scales can round differently. */
        int jm = 8 + (int)(tu_next(&r) % 9), e = (int)(tu_next(&r) % 19) - 14;
        int odd = 2 * (int)(tu_next(&r) % 128) + 1;
        if (odd * jm >= 2048 || odd > 2 * 127)
            odd = 127;
        float scb = ldexpf(127.0f * (float)jm, e);
        float w = ldexpf((float)(odd * jm), e - 1) * ((tu_next(&r) & 1) ? -1.0f : 1.0f);
        ck_assert(qf16_to_f32(qf32_to_f16(scb)) == scb && qf16_to_f32(qf32_to_f16(w)) == w);
        float sc_cpu = 127.0f / scb;
        float sc_gpu = 127.0f * ((i & 1) ? other_neighbour_rcp(scb) : 1.0f / scb);
        float v_cpu = w * sc_cpu, v_gpu = w * sc_gpu;
        if (nearbyintf(v_cpu) != nearbyintf(v_gpu)) {
            diff8++;
            ck_assert_msg(quant_int8_near_half(v_cpu, QUANT_GPU_RCP_ULPS), "w %a scb %a", w, scb);
        }
    }
    /* the situation the rule exists for does occur in this sample */
    ck_assert(diff4 > 0 && diffdq > 0 && diff8 > 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("quant");
    TCase *tv = tcase_create("vectors");
    tcase_add_test(tv, lut_bits);
    tcase_add_test(tv, nf4_thresholds);
    tcase_add_test(tv, fp4_thresholds);
    tcase_add_test(tv, blocksizes);
    tcase_add_test(tv, tv1_bf16_one_block);
    tcase_add_test(tv, tv2_odd_length);
    tcase_add_test(tv, tv3_layout);
    tcase_add_test(tv, tv4_zero_block);
    tcase_add_test(tv, tv5_fp4_signs);
    tcase_add_test(tv, tv6_thresholds);
    tcase_add_test(tv, tv7_nested_two_roundings);
    tcase_add_test(tv, tv8_int8_row);
    tcase_add_test(tv, dynamic_map_table);
    suite_add_tcase(s, tv);

    TCase *pr = tcase_create("properties");
    tcase_add_test(pr, codes_match_rule_random_floats);
    tcase_add_test(pr, prop_4bit_random);
    tcase_add_test(pr, rows_straddle_blocks);
    tcase_add_test(pr, pack_roundtrip);
    tcase_add_test(pr, nan_and_inf_inputs);
    tcase_add_test(pr, dq_code_rule);
    tcase_add_test(pr, dq_random_roundtrip);
    tcase_add_test(pr, dq_zero_group);
    tcase_add_test(pr, int8_random_rows);
    tcase_add_test(pr, int8_half_even_and_zero);
    tcase_add_test(pr, near_threshold_rule);
    tcase_add_test(pr, near_midpoint_and_half_rule);
    tcase_add_test(pr, near_rule_covers_gpu_reciprocal);
    suite_add_tcase(s, pr);
    return tu_run(s);
}
