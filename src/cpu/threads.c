#include "cpu/threads.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

struct qthreads {
    int n;                  /* threads taking part, the caller included */
    pthread_t *workers;     /* n - 1 */
    pthread_mutex_t lock;
    pthread_cond_t start;   /* a new run (or shutdown) is posted */
    pthread_cond_t done;    /* the last worker left the run */
    unsigned long generation;
    int busy;               /* workers still inside the current run */
    int shutdown;
    /* the current run */
    qthreads_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next;
};

static void work(qthreads *p)
{
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= p->n_tasks)
            return;
        p->fn(p->ctx, t, p->n_tasks);
    }
}

static void *worker_main(void *arg)
{
    qthreads *p = arg;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->shutdown && p->generation == seen)
            pthread_cond_wait(&p->start, &p->lock);
        if (p->shutdown)
            break;
        seen = p->generation;
        pthread_mutex_unlock(&p->lock);
        work(p);
        pthread_mutex_lock(&p->lock);
        if (--p->busy == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

qthreads *qthreads_create(int n, qerr *err)
{
    if (n <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus > 0 ? (int)cpus : 1;
    }
    if (n > 1024)
        n = 1024;
    qthreads *p = calloc(1, sizeof *p);
    if (!p || (n > 1 && !(p->workers = calloc((size_t)n - 1, sizeof *p->workers)))) {
        free(p);
        qerr_set(err, QRUN_ERR_NO_MEMORY, "thread pool: out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    p->n = 1;
    for (int i = 0; i < n - 1; i++) {
        if (pthread_create(&p->workers[i], NULL, worker_main, p) != 0) {
            qerr_set(err, QRUN_ERR_INTERNAL, "thread pool: could not start thread %d of %d", i + 2,
                     n);
            qthreads_free(p);
            return NULL;
        }
        p->n++;
    }
    return p;
}

void qthreads_free(qthreads *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->shutdown = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->n - 1; i++)
        pthread_join(p->workers[i], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p->workers);
    free(p);
}

int qthreads_count(const qthreads *p) { return p ? p->n : 1; }

void qthreads_run(qthreads *p, int n_tasks, qthreads_fn fn, void *ctx)
{
    if (n_tasks <= 0)
        return;
    if (!p || p->n == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, n_tasks);
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    p->busy = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->lock);
    work(p);
    pthread_mutex_lock(&p->lock);
    while (p->busy > 0)
        pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}
