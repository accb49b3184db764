/* f16/bf16 conversions against the compiler's own IEEE conversions, and
 * size arithmetic overflow checks. */
#include <math.h>
#include <string.h>

#include "dtype.h"
#include "testutil.h"

START_TEST(f16_roundtrip_all_halves)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = qf16_to_f32((uint16_t)h);
        _Float16 ref;
        uint16_t hh = (uint16_t)h;
        memcpy(&ref, &hh, 2);
        if (isnan(f)) {
            ck_assert(isnan((float)ref));
            continue;
        }
        ck_assert_msg((float)ref == f, "f16 %04x", h);
        ck_assert_uint_eq(qf32_to_f16(f), h);
    }
}
END_TEST

START_TEST(f16_rne_matches_compiler)
{
    tu_rng r = {tu_seed()};
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)tu_next(&r);
        if (i & 1) /* bias towards the f16 range and exact halfway points */
            u = (u & 0x8fffe000u) | 0x38000000u | (u & 0x1000u);
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f))
            continue;
        _Float16 ref = (_Float16)f;
        uint16_t rb;
        memcpy(&rb, &ref, 2);
        ck_assert_msg(qf32_to_f16(f) == rb, "f32 %08x -> %04x, want %04x", u, qf32_to_f16(f), rb);
    }
}
END_TEST

START_TEST(bf16_rne)
{
    ck_assert_uint_eq(qf32_to_bf16(1.0f), 0x3f80);
    /* 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even. */
    ck_assert_uint_eq(qf32_to_bf16(1.00390625f), 0x3f80);
    ck_assert_uint_eq(qf32_to_bf16(1.01171875f), 0x3f82);
    ck_assert_uint_eq(qf32_to_bf16(-2.5f), 0xc020);
    ck_assert(isnan(qbf16_to_f32(qf32_to_bf16(NAN))));
    ck_assert_uint_eq(qf32_to_bf16(INFINITY), 0x7f80);
    for (uint32_t b = 0; b < 65536; b++) {
        float f = qbf16_to_f32((uint16_t)b);
        if (!isnan(f))
            ck_assert_uint_eq(qf32_to_bf16(f), b);
    }
}
END_TEST

START_TEST(sizes_and_overflow)
{
    uint64_t n;
    ck_assert(qdtype_nbytes(QDT_NF4, 5, &n) && n == 3);
    ck_assert(qdtype_nbytes(QDT_F32, 7, &n) && n == 28);
    ck_assert(!qdtype_nbytes(QDT_F32, UINT64_MAX / 2, &n));
    uint64_t shape[3] = {1ull << 40, 1ull << 30, 2};
    ck_assert(!qshape_numel(3, shape, &n));
    ck_assert_int_eq(qdtype_from_name("bf16"), QDT_BF16);
    ck_assert_int_eq(qdtype_from_name("q9"), -1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dtype");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, f16_roundtrip_all_halves);
    tcase_add_test(tc, f16_rne_matches_compiler);
    tcase_add_test(tc, bf16_rne);
    tcase_add_test(tc, sizes_and_overflow);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
