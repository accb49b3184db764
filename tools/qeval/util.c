/* Small helpers of qeval: files, tokenizing, UTF-8, JSON text, labels. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "qeval.h"

double qe_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

char *qe_read_file(const char *path, size_t *len)
{
    bool is_stdin = !strcmp(path, "-");
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "qeval: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t n = 0, cap = 1 << 16;
    char *p = malloc(cap);
    bool oom = !p;
    while (!oom) {
        if (n + 1 >= cap) {
            char *q = realloc(p, cap * 2);
            if (!q) {
                oom = true;
                break;
            }
            p = q;
            cap *= 2;
        }
        size_t r = fread(p + n, 1, cap - 1 - n, f);
        n += r;
        if (r == 0)
            break;
    }
    bool bad = ferror(f);
    if (!is_stdin)
        fclose(f);
    if (oom || bad) {
        fprintf(stderr, "qeval: %s: %s\n", path, oom ? "out of memory" : "read error");
        free(p);
        return NULL;
    }
    p[n] = '\0';
    *len = n;
    return p;
}

int32_t *qe_tokenize(qrun_model *m, const char *what, const char *text, size_t len,
                     unsigned flags, size_t *n)
{
    char err[1024];
    size_t cap = len + 16;
    for (;;) {
        int32_t *ids = malloc(cap * sizeof *ids);
        if (!ids) {
            fprintf(stderr, "qeval: out of memory\n");
            return NULL;
        }
        qrun_status st = qrun_tokenize(m, text, len, flags, ids, cap, n, err, sizeof err);
        if (st != QRUN_OK) {
            fprintf(stderr, "qeval: %s: %s\n", what, err);
            free(ids);
            return NULL;
        }
        if (*n <= cap)
            return ids;
        free(ids);
        cap = *n;
    }
}

void qe_json_number(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.17g", v);
    else
        fputs("null", f);
}

const char *qe_basename(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

bool qe_make_labels(const char **paths, const bool *is_base, int n, char **labels)
{
    for (int i = 0; i < n; i++) {
        const char *name = qe_basename(paths[i]);
        /* Two different paths with one file name would read alike: use paths. */
        for (int j = 0; j < n; j++)
            if (j != i && strcmp(paths[i], paths[j]) && !strcmp(name, qe_basename(paths[j])))
                name = paths[i];
        size_t len = strlen(name) + 8;
        labels[i] = malloc(len);
        if (!labels[i])
            return false;
        snprintf(labels[i], len, "%s%s", name, is_base[i] ? " (base)" : "");
    }
    return true;
}

qrun_model *qe_load_model(const qe_options *o, const char *path)
{
    qrun_model_params mp;
    qrun_model_params_init(&mp);
    mp.backend = o->backend;
    mp.n_threads = o->n_threads;
    mp.gpu_layers = o->gpu_layers;
    mp.verify_checksums = o->verify;
    char err[2048];
    qrun_model *m = NULL;
    qrun_status st = qrun_model_load(path, &mp, &m, err, sizeof err);
    if (st != QRUN_OK) {
        fprintf(stderr, "qeval: %s\n", err[0] ? err : qrun_status_string(st));
        if (o->backend == QRUN_BACKEND_CUDA &&
            (st == QRUN_ERR_UNSUPPORTED || st == QRUN_ERR_DEVICE))
            fprintf(stderr, "qeval: try --backend auto or --backend cpu\n");
        return NULL;
    }
    return m;
}

void qe_quant_name(qrun_model *m, char *buf, size_t size)
{
    qrun_model_info info;
    qrun_model_get_info(m, &info);
    snprintf(buf, size, "%s", info.weights);
    /* The weights string does not tell double quantization or the LLM.int8
     * threshold apart: the file's metadata does. */
    cJSON *j = cJSON_Parse(qrun_model_metadata_json(m));
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "quantization");
    const cJSON *dq = cJSON_GetObjectItemCaseSensitive(q, "double_quant");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(q, "blocksize");
    const cJSON *thr = cJSON_GetObjectItemCaseSensitive(q, "int8_threshold");
    size_t n = strlen(buf);
    if (cJSON_IsTrue(dq) && n < size)
        n += (size_t)snprintf(buf + n, size - n, "+dq");
    if (cJSON_IsNumber(bs) && bs->valuedouble != 64 && n < size)
        n += (size_t)snprintf(buf + n, size - n, "/%g", bs->valuedouble);
    if (cJSON_IsNumber(thr) && n < size)
        snprintf(buf + n, size - n, " t%g", thr->valuedouble);
    cJSON_Delete(j);
}
