/* qbench's measurements of one run, filled by qbench.c and printed by
 * report.c (a table, or one JSON object). */
#ifndef QBENCH_QBENCH_H
#define QBENCH_QBENCH_H

#include <stdbool.h>
#include <stdint.h>

#include "bandwidth.h"
#include "qrun.h"
#include "stats.h"
#include "synth.h"
#include "traffic.h"

typedef struct bench_result {
    /* the model */
    const char *path;
    const synth_shape *shape;  /* synthetic model, else NULL */
    synth_stats gen;           /* its generation */
    uint64_t seed;
    qrun_model_info info;      /* strings owned by the loaded model */
    int blocksize;             /* 0 when not 4-bit */
    bool double_quant;
    bool has_threshold;
    double int8_threshold;
    uint64_t file_bytes;
    /* how it ran */
    int n_threads;             /* requested; 0 = one per core */
    int n_ctx, n_batch;
    const char *kv_type;
    bool verified;             /* checksums checked while loading */
    double load_seconds;
    /* ceilings and the floor */
    bw_result gpu_bw, cpu_bw;
    traffic tr;
    uint64_t bytes_gpu, bytes_cpu; /* per token, by where they are read */
    double floor_tps;          /* 0 when no bandwidth applies */
    bool fits_cache;           /* a part's weights fit (twice) in its last-level cache */
    /* the tests */
    int pp, tg, tg_context, reps, warmup;
    double *pp_seconds, *tg_seconds; /* [reps] */
    summary pp_tps, tg_tps;
    /* memory */
    bool vram;                 /* the device-memory figures below are valid */
    uint64_t vram_total;
    uint64_t vram_after_load;  /* free before the load - free after it */
    uint64_t vram_peak;        /* free before the load - the least free seen later */
    uint64_t peak_rss;
} bench_result;

void report_table(const bench_result *r);
void report_json(const bench_result *r);

#endif
