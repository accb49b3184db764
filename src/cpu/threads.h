/* A small fork-join thread pool for the CPU backend. The calling thread
 * takes part in every run, so a pool of n threads starts n - 1 workers. */
#ifndef QRUN_CPU_THREADS_H
#define QRUN_CPU_THREADS_H

#include "error.h"

typedef struct qthreads qthreads;

/* n <= 0: one thread per online CPU. */
qthreads *qthreads_create(int n, qerr *err);
void qthreads_free(qthreads *p);
/* Threads taking part in a run (1 for a NULL pool). */
int qthreads_count(const qthreads *p);

typedef void (*qthreads_fn)(void *ctx, int task, int n_tasks);

/* Call fn(ctx, task, n_tasks) for every task in [0, n_tasks) on the pool's
 * threads and return when all have finished. Tasks are handed out one at a
 * time, so uneven tasks balance. A NULL pool runs them in the caller. Not
 * re-entrant: one run at a time per pool (a pool belongs to one session). */
void qthreads_run(qthreads *p, int n_tasks, qthreads_fn fn, void *ctx);

#endif
