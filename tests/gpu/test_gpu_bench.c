/* The bandwidth probes of src/kernels/bench.cu (used by qbench) against
 * their CPU reference on fresh random words: the read's sum must equal the
 * host's u64 sum exactly (integer addition, so any order gives the same
 * value; the words span the whole u32 range, so 32-bit partial sums would
 * overflow and fail), and the copy must reproduce the source exactly and
 * write nothing past its end. Word counts that are not multiples of 4 (the
 * uint4 tail), grids of 1 block (every thread loops many times, through the
 * unrolled and the remainder loop) up to several per multiprocessor, an
 * empty buffer, a sum output poisoned before each run, and the refusals of
 * bad arguments. QRUN_TEST_QUICK=1 (compute-sanitizer) drops the largest
 * size. */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/device.h"
#include "kernels/bench.h"
#include "testutil.h"

static tu_rng rng;
static cudaStream_t stream;
static int quick;

#define CUDA_OK(call)                                                                         \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        ck_assert_msg(e_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));            \
    } while (0)

static void setup(void)
{
    rng.s = tu_seed();
    CUDA_OK(cudaStreamCreate(&stream));
}

static void teardown(void) { cudaStreamDestroy(stream); }

static uint32_t *random_words(uint64_t n)
{
    uint32_t *w = malloc((n ? n : 1) * sizeof *w);
    ck_assert_ptr_nonnull(w);
    for (uint64_t i = 0; i < n; i++)
        w[i] = (uint32_t)(tu_next(&rng) >> 32);
    return w;
}

static const uint64_t sizes[] = {0, 1, 3, 4, 5, 511, 4097, 3 * 512 * 4 + 7, 1000003,
                                 (64u << 20) + 5};

START_TEST(read_sum_matches_cpu)
{
    int sms = 0;
    CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int grids[] = {1, 7, 4 * sms};
    unsigned long long *dsum;
    CUDA_OK(cudaMalloc((void **)&dsum, sizeof *dsum));
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const uint64_t n = sizes[si];
        if (quick && n > (1u << 22))
            continue;
        uint32_t *h = random_words(n);
        unsigned long long want = 0;
        for (uint64_t i = 0; i < n; i++)
            want += h[i];
        uint32_t *d;
        CUDA_OK(cudaMalloc((void **)&d, (n ? n : 1) * sizeof *d));
        CUDA_OK(cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice));
        for (size_t gi = 0; gi < sizeof grids / sizeof grids[0]; gi++) {
            /* poison: the launcher must zero the sum itself */
            unsigned long long poison = tu_next(&rng) | 1u, got = 0;
            CUDA_OK(cudaMemcpy(dsum, &poison, sizeof poison, cudaMemcpyHostToDevice));
            qerr err = {0};
            ck_assert_msg(qk_bench_read(d, n, grids[gi], dsum, stream, &err), "%s", err.msg);
            CUDA_OK(cudaStreamSynchronize(stream));
            CUDA_OK(cudaMemcpy(&got, dsum, sizeof got, cudaMemcpyDeviceToHost));
            ck_assert_msg(got == want, "n %llu, %d blocks: sum %llu, expected %llu",
                          (unsigned long long)n, grids[gi], got, want);
        }
        CUDA_OK(cudaFree(d));
        free(h);
    }
    CUDA_OK(cudaFree(dsum));
}
END_TEST

START_TEST(copy_matches_cpu)
{
    int sms = 0;
    CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int grids[] = {1, 5, 4 * sms};
    const uint64_t guard = 8; /* words after the end that must stay untouched */
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const uint64_t n = sizes[si];
        if (quick && n > (1u << 22))
            continue;
        uint32_t *h = random_words(n);
        uint32_t *out = malloc((n + guard) * sizeof *out);
        ck_assert_ptr_nonnull(out);
        uint32_t *src, *dst;
        CUDA_OK(cudaMalloc((void **)&src, (n ? n : 1) * sizeof *src));
        CUDA_OK(cudaMalloc((void **)&dst, (n + guard) * sizeof *dst));
        CUDA_OK(cudaMemcpy(src, h, n * sizeof *src, cudaMemcpyHostToDevice));
        for (size_t gi = 0; gi < sizeof grids / sizeof grids[0]; gi++) {
            CUDA_OK(cudaMemset(dst, 0xa5, (n + guard) * sizeof *dst)); /* poison */
            qerr err = {0};
            ck_assert_msg(qk_bench_copy(dst, src, n, grids[gi], stream, &err), "%s", err.msg);
            CUDA_OK(cudaStreamSynchronize(stream));
            CUDA_OK(cudaMemcpy(out, dst, (n + guard) * sizeof *out, cudaMemcpyDeviceToHost));
            /* find the first difference with a plain loop: Check records
             * every passing assertion, which over 64 Mi words took minutes */
            uint64_t bad = 0;
            while (bad < n && out[bad] == h[bad])
                bad++;
            ck_assert_msg(bad == n, "n %llu, %d blocks: word %llu is %08x, not %08x",
                          (unsigned long long)n, grids[gi], (unsigned long long)bad,
                          bad < n ? out[bad] : 0u, bad < n ? h[bad] : 0u);
            for (uint64_t i = n; i < n + guard; i++)
                ck_assert_msg(out[i] == 0xa5a5a5a5u, "n %llu: word %llu past the end written",
                              (unsigned long long)n, (unsigned long long)i);
        }
        CUDA_OK(cudaFree(src));
        CUDA_OK(cudaFree(dst));
        free(out);
        free(h);
    }
}
END_TEST

START_TEST(bad_arguments_refused)
{
    uint32_t *d;
    unsigned long long *dsum;
    CUDA_OK(cudaMalloc((void **)&d, 64 * sizeof *d));
    CUDA_OK(cudaMalloc((void **)&dsum, sizeof *dsum));
    qerr err = {0};
    ck_assert(!qk_bench_read(d, 16, 0, dsum, stream, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_INVALID_ARGUMENT);
    ck_assert(!qk_bench_read(d + 1, 16, 4, dsum, stream, &err)); /* 4-byte aligned only */
    ck_assert_int_eq(err.code, QRUN_ERR_INVALID_ARGUMENT);
    ck_assert(!qk_bench_copy(d + 32, d + 2, 8, 4, stream, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_INVALID_ARGUMENT);
    ck_assert(!qk_bench_copy(d + 32, d, 8, -1, stream, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_INVALID_ARGUMENT);
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaFree(d));
    CUDA_OK(cudaFree(dsum));
}
END_TEST

int main(void)
{
    if (cuda_device_count(NULL) <= 0)
        return 77;
    const char *q = getenv("QRUN_TEST_QUICK");
    quick = q && atoi(q) != 0;
    Suite *s = suite_create("gpu_bench");
    TCase *tc = tcase_create("bench");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, read_sum_matches_cpu);
    tcase_add_test(tc, copy_matches_cpu);
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
