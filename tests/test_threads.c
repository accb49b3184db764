/* The CPU thread pool: every task runs exactly once per run, runs can follow
 * each other immediately, a NULL pool runs serially, and sizes are honoured. */
#include <stdatomic.h>
#include <stdlib.h>

#include "cpu/threads.h"
#include "testutil.h"

typedef struct run_ctx {
    atomic_int *hits;
    atomic_long sum;
} run_ctx;

static void count_task(void *c, int task, int n_tasks)
{
    run_ctx *r = c;
    ck_assert_int_lt(task, n_tasks);
    atomic_fetch_add(&r->hits[task], 1);
    atomic_fetch_add(&r->sum, task);
}

START_TEST(every_task_once)
{
    static const int sizes[] = {1, 2, 3, 7, 64, 1000};
    for (int threads = 0; threads <= 5; threads++) {
        qerr err;
        qthreads *p = threads == 0 ? NULL : qthreads_create(threads, &err);
        ck_assert(threads == 0 || p != NULL);
        ck_assert_int_eq(qthreads_count(p), threads == 0 ? 1 : threads);
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
            int n = sizes[s];
            atomic_int *hits = calloc((size_t)n, sizeof *hits);
            run_ctx r = {.hits = hits};
            for (int rep = 0; rep < 50; rep++)
                qthreads_run(p, n, count_task, &r);
            for (int t = 0; t < n; t++)
                ck_assert_int_eq(atomic_load(&hits[t]), 50);
            ck_assert_int_eq(atomic_load(&r.sum), 50L * n * (n - 1) / 2);
            free(hits);
        }
        qthreads_run(p, 0, count_task, NULL); /* nothing to do: returns */
        qthreads_free(p);
    }
}
END_TEST

START_TEST(default_size_is_cpu_count)
{
    qthreads *p = qthreads_create(0, NULL);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_ge(qthreads_count(p), 1);
    qthreads_free(p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("threads");
    TCase *tc = tcase_create("pool");
    tcase_add_test(tc, every_task_once);
    tcase_add_test(tc, default_size_is_cpu_count);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
