/* Host memory read bandwidth (bandwidth.h): every thread sums its own slice
 * of a buffer far larger than the caches, with eight independent
 * accumulators so that the loop is limited by memory, not by the adds. The
 * buffer holds 0, 1, 2, ... as 64-bit words, so the total is known. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bandwidth.h"
#include "cpu/threads.h"

typedef struct read_job {
    uint64_t *buf;
    uint64_t n_words;
    int n_tasks;
    uint64_t *sums; /* [n_tasks] */
} read_job;

static void slice(const read_job *j, int task, uint64_t *lo, uint64_t *hi)
{
    *lo = j->n_words * (uint64_t)task / (uint64_t)j->n_tasks;
    *hi = j->n_words * (uint64_t)(task + 1) / (uint64_t)j->n_tasks;
}

/* First touch by the thread that will read the slice (NUMA placement). */
static void fill_task(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    const read_job *j = ctx;
    uint64_t lo, hi;
    slice(j, task, &lo, &hi);
    for (uint64_t i = lo; i < hi; i++)
        j->buf[i] = i;
}

static void read_task(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    const read_job *j = ctx;
    uint64_t lo, hi;
    slice(j, task, &lo, &hi);
    const uint64_t *p = j->buf;
    uint64_t a[8] = {0};
    uint64_t i = lo;
    for (; i + 8 <= hi; i += 8)
        for (int k = 0; k < 8; k++)
            a[k] += p[i + k];
    for (; i < hi; i++)
        a[0] += p[i];
    j->sums[task] = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

bool bw_cpu(uint64_t bytes, int reps, int n_threads, bw_result *r, qerr *err)
{
    memset(r, 0, sizeof *r);
    if (reps < 1 || bytes < 4096)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "CPU bandwidth: %d repetitions of %llu bytes", reps,
                        (unsigned long long)bytes) == QRUN_OK;
    qthreads *pool = qthreads_create(n_threads, err);
    if (!pool)
        return false;
    read_job j = {.n_words = bytes / 8, .n_tasks = qthreads_count(pool)};
    j.buf = malloc(j.n_words * 8);
    j.sums = calloc((size_t)j.n_tasks, sizeof *j.sums);
    double *rate = calloc((size_t)reps, sizeof *rate);
    bool ok = false;
    if (!j.buf || !j.sums || !rate) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "CPU bandwidth: no memory for a %llu-byte buffer",
                 (unsigned long long)bytes);
        goto out;
    }
    qthreads_run(pool, j.n_tasks, fill_task, &j);
    /* sum of 0 .. n-1 modulo 2^64 */
    const uint64_t n = j.n_words;
    const uint64_t want = n % 2 == 0 ? (n / 2) * (n - 1) : n * ((n - 1) / 2);
    for (int rep = -1; rep < reps; rep++) { /* rep -1: warm-up */
        double t0 = now();
        qthreads_run(pool, j.n_tasks, read_task, &j);
        double dt = now() - t0;
        uint64_t got = 0;
        for (int t = 0; t < j.n_tasks; t++)
            got += j.sums[t];
        if (got != want) {
            qerr_set(err, QRUN_ERR_INTERNAL, "CPU bandwidth: read sum %llu, expected %llu",
                     (unsigned long long)got, (unsigned long long)want);
            goto out;
        }
        if (rep >= 0)
            rate[rep] = (double)(n * 8) / dt;
    }
    r->measured = true;
    r->buffer_bytes = n * 8;
    r->reps = reps;
    r->threads = j.n_tasks;
    r->read = summarize(rate, reps);
    snprintf(r->device, sizeof r->device, "host memory");
#ifdef _SC_LEVEL3_CACHE_SIZE
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    r->cache_bytes = l3 > 0 ? (uint64_t)l3 : 0;
#endif
    ok = true;
out:
    free(j.buf);
    free(j.sums);
    free(rate);
    qthreads_free(pool);
    return ok;
}
