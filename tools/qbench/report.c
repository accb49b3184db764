/* qbench's output (qbench.h): a table for people, or one line of JSON for
 * programs. Rates and per-token bytes are decimal (GB = 1e9 bytes, as
 * bandwidths are quoted); memory sizes are binary (GiB). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "qbench.h"

static double gib(uint64_t b) { return (double)b / (double)(1u << 30); }

/* "6.74 B", "1.96 M" */
static const char *count_text(uint64_t n, char *buf, size_t size)
{
    if (n >= 1000000000u)
        snprintf(buf, size, "%.2f B", (double)n / 1e9);
    else
        snprintf(buf, size, "%.2f M", (double)n / 1e6);
    return buf;
}

/* "3.72 GiB", "1.8 MiB" */
static const char *size_text(uint64_t b, char *buf, size_t size)
{
    if (b >= (uint64_t)1 << 30)
        snprintf(buf, size, "%.2f GiB", gib(b));
    else
        snprintf(buf, size, "%.1f MiB", (double)b / 1048576.0);
    return buf;
}

/* "2.95 TB/s", "41.3 GB/s" */
static const char *rate_text(double bps, char *buf, size_t n)
{
    if (bps >= 1e12)
        snprintf(buf, n, "%.2f TB/s", bps / 1e12);
    else
        snprintf(buf, n, "%.1f GB/s", bps / 1e9);
    return buf;
}

static const char *backend_text(const bench_result *r, char *buf, size_t n)
{
    const qrun_model_info *i = &r->info;
    if (i->n_gpu_layers > 0)
        snprintf(buf, n, "%s: %s, %d/%d layers on the GPU", i->backend, i->gpu_name,
                 i->n_gpu_layers, i->n_layers);
    else if (r->n_threads > 0)
        snprintf(buf, n, "cpu, %d threads", r->n_threads);
    else
        snprintf(buf, n, "cpu, one thread per core");
    return buf;
}

static void print_bw(const char *what, const bw_result *b)
{
    char r1[32], r2[32], r3[32];
    printf("bandwidth  %s read %s (median of %d, %s - %s)", what,
           rate_text(b->read.median, r1, sizeof r1), b->reps, rate_text(b->read.min, r2, sizeof r2),
           rate_text(b->read.max, r3, sizeof r3));
    if (b->has_copy)
        printf(", copy %s", rate_text(b->copy.median, r1, sizeof r1));
    char n[32];
    printf(" | %s buffer", size_text(b->buffer_bytes, n, sizeof n));
    if (b->threads)
        printf(", %d threads", b->threads);
    printf("\n");
}

static void print_row(const char *name, int reps, summary s, const bench_result *r, bool decode)
{
    printf("%-14s %4d %12.2f %10.2f %10.2f %9.3f", name, reps, s.median, s.min, s.max,
           s.median > 0 ? 1e3 / s.median : 0.0);
    if (decode && r->floor_tps > 0) {
        char b[32];
        printf(" %12s %10.1f %%\n", rate_text((double)r->tr.total * s.median, b, sizeof b),
               100.0 * s.median / r->floor_tps);
    } else {
        printf(" %12s %12s\n", "-", "-");
    }
}

void report_table(const bench_result *r)
{
    const qrun_model_info *i = &r->info;
    char buf[512];
    printf("qbench %s | ", QRUN_VERSION_STRING);
    if (r->shape)
        printf("%s (synthetic, random weights, seed %llu)", r->shape->name,
               (unsigned long long)r->seed);
    else
        printf("%s", r->path);
    printf(" | %s", i->weights);
    if (r->blocksize)
        printf(", blocksize %d%s", r->blocksize, r->double_quant ? ", double quant" : "");
    if (r->has_threshold)
        printf(", threshold %g", r->int8_threshold);
    printf(" | compute %s\n", i->compute_dtype);
    char n1[32], n2[32];
    printf("model      %s, %d layers, %s parameters, %s file", i->architecture, i->n_layers,
           count_text(i->n_params, n1, sizeof n1), size_text(r->file_bytes, n2, sizeof n2));
    if (r->shape)
        printf("; generated in %.1f s (not part of the load)", r->gen.seconds);
    printf("\n");
    printf("backend    %s | load %.2f s (warm page cache%s)\n", backend_text(r, buf, sizeof buf),
           r->load_seconds, r->verified ? ", checksums verified" : ", checksums not verified");
    printf("memory     ");
    if (r->vram)
        printf("GPU peak %.2f GiB (after load %.2f GiB; device %.1f GiB) | ", gib(r->vram_peak),
               gib(r->vram_after_load), gib(r->vram_total));
    printf("host peak RSS %s (mapped model pages included)\n",
           size_text(r->peak_rss, buf, sizeof buf));
    if (r->gpu_bw.measured)
        print_bw("GPU", &r->gpu_bw);
    if (r->cpu_bw.measured)
        print_bw("CPU", &r->cpu_bw);
    printf("traffic    %.3f GB of weights per token (linear %.3f, lm_head %.3f, norms %.4f)",
           (double)r->tr.total / 1e9, (double)r->tr.linear / 1e9, (double)r->tr.lm_head / 1e9,
           (double)r->tr.norms / 1e9);
    if (r->floor_tps > 0)
        printf(" -> floor %.1f tok/s", r->floor_tps);
    printf("\n");
    if (r->fits_cache)
        printf("note       the weights fit in the last-level cache: decode can beat the memory "
               "floor\n");
    printf("\n");
    printf("%-14s %4s %12s %10s %10s %9s %12s %12s\n", "test", "reps", "tok/s median", "min",
           "max", "ms/token", "weights BW", "% of floor");
    if (r->pp > 0) {
        snprintf(buf, sizeof buf, "pp%d", r->pp);
        print_row(buf, r->reps, r->pp_tps, r, false);
    }
    if (r->tg > 0) {
        snprintf(buf, sizeof buf, "tg%d @%d", r->tg, r->tg_context);
        print_row(buf, r->reps, r->tg_tps, r, true);
    }
}

/* ---- JSON ------------------------------------------------------------------ */

static cJSON *summary_json(summary s)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "median", s.median);
    cJSON_AddNumberToObject(o, "min", s.min);
    cJSON_AddNumberToObject(o, "max", s.max);
    return o;
}

static cJSON *bw_json(const bw_result *b)
{
    if (!b->measured)
        return cJSON_CreateNull();
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "device", b->device);
    cJSON_AddNumberToObject(o, "buffer_bytes", (double)b->buffer_bytes);
    cJSON_AddNumberToObject(o, "reps", b->reps);
    if (b->threads)
        cJSON_AddNumberToObject(o, "threads", b->threads);
    if (b->cache_bytes)
        cJSON_AddNumberToObject(o, "last_level_cache_bytes", (double)b->cache_bytes);
    cJSON_AddItemToObject(o, "read_bytes_per_s", summary_json(b->read));
    if (b->has_copy)
        cJSON_AddItemToObject(o, "copy_bytes_per_s", summary_json(b->copy));
    return o;
}

static cJSON *test_json(int tokens, const char *context_key, int context, const bench_result *r,
                        const double *seconds, summary tps, bool decode)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "tokens", tokens);
    if (context_key)
        cJSON_AddNumberToObject(o, context_key, context);
    cJSON_AddNumberToObject(o, "reps", r->reps);
    cJSON_AddNumberToObject(o, "warmup", r->warmup);
    cJSON_AddItemToObject(o, "tokens_per_s", summary_json(tps));
    cJSON *s = cJSON_AddArrayToObject(o, "seconds");
    for (int k = 0; k < r->reps; k++)
        cJSON_AddItemToArray(s, cJSON_CreateNumber(seconds[k]));
    if (decode) {
        cJSON_AddNumberToObject(o, "weights_bytes_per_s", (double)r->tr.total * tps.median);
        if (r->floor_tps > 0)
            cJSON_AddNumberToObject(o, "fraction_of_floor", tps.median / r->floor_tps);
        else
            cJSON_AddNullToObject(o, "fraction_of_floor");
    }
    return o;
}

void report_json(const bench_result *r)
{
    const qrun_model_info *i = &r->info;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "qbench", QRUN_VERSION_STRING);

    cJSON *m = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(m, "path", r->path);
    cJSON_AddBoolToObject(m, "synthetic", r->shape != NULL);
    if (r->shape) {
        cJSON_AddStringToObject(m, "shape", r->shape->name);
        cJSON_AddNumberToObject(m, "seed", (double)r->seed);
        cJSON_AddNumberToObject(m, "generation_seconds", r->gen.seconds);
    }
    cJSON_AddStringToObject(m, "architecture", i->architecture);
    cJSON_AddStringToObject(m, "weights", i->weights);
    if (r->blocksize) {
        cJSON_AddNumberToObject(m, "blocksize", r->blocksize);
        cJSON_AddBoolToObject(m, "double_quant", r->double_quant);
    }
    if (r->has_threshold)
        cJSON_AddNumberToObject(m, "int8_threshold", r->int8_threshold);
    cJSON_AddStringToObject(m, "compute_dtype", i->compute_dtype);
    cJSON_AddNumberToObject(m, "n_layers", i->n_layers);
    cJSON_AddNumberToObject(m, "n_params", (double)i->n_params);
    cJSON_AddNumberToObject(m, "file_bytes", (double)r->file_bytes);

    cJSON *b = cJSON_AddObjectToObject(root, "backend");
    cJSON_AddStringToObject(b, "name", i->backend);
    cJSON_AddStringToObject(b, "gpu_name", i->gpu_name ? i->gpu_name : "");
    cJSON_AddNumberToObject(b, "n_gpu_layers", i->n_gpu_layers);
    cJSON_AddNumberToObject(b, "threads", r->n_threads);
    cJSON_AddNumberToObject(b, "n_ctx", r->n_ctx);
    cJSON_AddNumberToObject(b, "n_batch", r->n_batch);
    cJSON_AddStringToObject(b, "kv_type", r->kv_type);

    cJSON_AddNumberToObject(root, "load_seconds", r->load_seconds);
    cJSON_AddBoolToObject(root, "checksums_verified", r->verified);
    cJSON *bw = cJSON_AddObjectToObject(root, "bandwidth");
    cJSON_AddItemToObject(bw, "gpu", bw_json(&r->gpu_bw));
    cJSON_AddItemToObject(bw, "cpu", bw_json(&r->cpu_bw));

    cJSON *t = cJSON_AddObjectToObject(root, "weights_bytes_per_token");
    cJSON_AddNumberToObject(t, "total", (double)r->tr.total);
    cJSON_AddNumberToObject(t, "linear", (double)r->tr.linear);
    cJSON_AddNumberToObject(t, "lm_head", (double)r->tr.lm_head);
    cJSON_AddNumberToObject(t, "norms", (double)r->tr.norms);
    cJSON_AddNumberToObject(t, "embedding_row", (double)r->tr.embed_row);
    cJSON_AddNumberToObject(t, "on_gpu", (double)r->bytes_gpu);
    cJSON_AddNumberToObject(t, "on_cpu", (double)r->bytes_cpu);
    if (r->floor_tps > 0)
        cJSON_AddNumberToObject(root, "floor_tokens_per_s", r->floor_tps);
    else
        cJSON_AddNullToObject(root, "floor_tokens_per_s");
    cJSON_AddBoolToObject(root, "weights_fit_in_cache", r->fits_cache);

    if (r->pp > 0)
        cJSON_AddItemToObject(root, "prefill",
                              test_json(r->pp, NULL, 0, r, r->pp_seconds, r->pp_tps, false));
    else
        cJSON_AddNullToObject(root, "prefill");
    if (r->tg > 0)
        cJSON_AddItemToObject(root, "decode", test_json(r->tg, "context_before", r->tg_context, r,
                                                        r->tg_seconds, r->tg_tps, true));
    else
        cJSON_AddNullToObject(root, "decode");

    cJSON *mem = cJSON_AddObjectToObject(root, "memory");
    if (r->vram) {
        cJSON *g = cJSON_AddObjectToObject(mem, "gpu");
        cJSON_AddNumberToObject(g, "total_bytes", (double)r->vram_total);
        cJSON_AddNumberToObject(g, "after_load_bytes", (double)r->vram_after_load);
        cJSON_AddNumberToObject(g, "peak_bytes", (double)r->vram_peak);
    } else {
        cJSON_AddNullToObject(mem, "gpu");
    }
    cJSON_AddNumberToObject(mem, "host_peak_rss_bytes", (double)r->peak_rss);

    char *text = cJSON_PrintUnformatted(root);
    if (text) {
        printf("%s\n", text);
        free(text);
    }
    cJSON_Delete(root);
}
