/* The CUDA engine against the CPU engine (the reference, itself checked
 * against transformers by tests/test_engine.c), on every tiny checkpoint of
 * tests/data/tiny converted with qconvert (library) into a temporary
 * directory, and on SmolLM2-135M when QRUN_SMOLLM2_DIR holds it.
 *
 * Relative error = max |gpu - cpu| / max |cpu| over a row of logits; a case's
 * figure is the worst row. What is checked:
 *  - act f32: the prompt's logits (every position) and greedy decode steps
 *    after it, for the source weights and every quantization, within 1e-4
 *    (the bound of the CPU engine against transformers; only the order of
 *    f32 sums differs). int8 quantizes activations to integers: where an
 *    activation lands within an f32 ulp of a rounding boundary the two
 *    engines may pick neighbouring codes, so int8 gets 2e-3.
 *  - act f16 / bf16 (the GPU default): same rounding points, another
 *    summation order; each rounding can differ by one unit of the dtype, so
 *    the bound is max(1e-2, 3x transformers' own f16/bf16-vs-f32 distance
 *    from index.json), as the CPU engine against transformers.
 *  - decode == prefill on the GPU (1e-4 at f32), and pieces of n_batch 5 vs
 *    one piece;
 *  - the decode step replayed from a CUDA graph equals the eager step bit
 *    for bit (same kernels, same launches), and the graph is really used
 *    (none for dynamic-NTK rotary, whose table changes with the length);
 *  - partial offload (1 of 2 layers on the GPU) equals all-GPU within the
 *    bounds above and picks the same greedy tokens;
 *  - clear QRUN_ERR_DEVICE errors for what cannot fit, and the planner's
 *    choices (explicit N capped, a memory limit forcing a partial offload,
 *    AUTO falling back to the CPU with a warning).
 * Greedy tokens must agree except at a step where the reference's two best
 * logits are closer than the error bound allows to tell apart (reported).
 * Without a usable GPU the test is skipped (77). QRUN_TEST_QUICK=1 (under
 * compute-sanitizer) runs two variants and fewer steps. */
#include <check.h>
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "cuda/device.h"
#include "engine.h"
#include "import/safetensors.h"
#include "qrun.h"
#include "sampler.h"
#include "testutil.h"
#include "tiny_variants.h"

static char *g_tmp;
static cJSON *g_index;
static bool g_quick;

/* A measured figure: to stderr, and appended to gpu_engine-figures.txt in
 * the directory $OUT names when it is set (the GPU machine's result folder:
 * meson keeps a passing test's output only in its own log there). */
static void figure(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
static void figure(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    const char *out = getenv("OUT");
    if (!out || !*out)
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/gpu_engine-figures.txt", out);
    FILE *f = fopen(path, "a");
    if (!f)
        return;
    if (g_quick)
        fputs("quick: ", f);
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

static const char *const VARIANTS[] = {"llama-mha",       "llama-gqa-llama3", "llama-tied-linear",
                                       "llama-dynamic-bias", "falcon-7b-style", "falcon-40b-style",
                                       "falcon-rw-style"};
#define NVARIANTS (int)(sizeof VARIANTS / sizeof VARIANTS[0])
/* quick mode: one llama with GQA and one falcon with a fused qkv */
static const char *const QUICK_VARIANTS[] = {"llama-gqa-llama3", "falcon-7b-style"};

static const char *const QMODES[] = {"src", "nf4", "nf4_dq", "fp4", "int8_t6", "int8_t0"};
#define NQMODES (int)(sizeof QMODES / sizeof QMODES[0])

/* the quantizations compared at f32 (quick mode: double quant and int8) */
static int n_f32_modes(void) { return g_quick ? 2 : NQMODES; }
static const char *f32_mode(int j) { return g_quick ? (j ? "int8_t6" : "nf4_dq") : QMODES[j]; }

static const char *variant(int i)
{
    return g_quick ? QUICK_VARIANTS[i % 2] : VARIANTS[i % NVARIANTS];
}
static int n_variants(void) { return g_quick ? 2 : NVARIANTS; }

/* ---- fixtures and models ---------------------------------------------------------- */

static const cJSON *variant_info(const char *v) { return tv_info(g_index, v); }
static const char *vstr(const char *v, const char *key) { return tv_str(g_index, v, key); }
/* The variant converted in `mode`, as tests/test_engine.c converts it. */
static const char *model_path(const char *v, const char *mode)
{
    return tv_model_path(g_index, g_tmp, v, mode);
}

typedef struct log_capture {
    int warns;
    char last[512];
} log_capture;

static void on_log(void *user, qrun_log_level level, const char *msg)
{
    log_capture *l = user;
    if (l && level == QRUN_LOG_WARN) {
        l->warns++;
        snprintf(l->last, sizeof l->last, "%s", msg);
    }
}

static qengine *load_opts(const char *path, qrun_backend backend, int gpu_layers, uint64_t limit,
                          log_capture *logs, qerr *err)
{
    qengine_opts o = {.backend = backend, .gpu_layers = gpu_layers, .gpu_mem_limit = limit,
                      .n_threads = 2, .verify_checksums = true, .log = on_log, .log_user = logs};
    return qengine_load(path, &o, err);
}

static qengine *load(const char *path, qrun_backend backend, int gpu_layers)
{
    qerr err = {0};
    qengine *e = load_opts(path, backend, gpu_layers, 0, NULL, &err);
    ck_assert_msg(e != NULL, "load %s: %s", path, err.msg);
    return e;
}

static qctx *context(const qengine *e, qdtype act, int n_batch, bool no_graphs)
{
    qctx_opts o = {.n_ctx = 128, .n_batch = n_batch, .kv_type = QDT_F32, .act_dtype = act,
                   .no_cuda_graphs = no_graphs};
    qerr err = {0};
    qctx *c = qctx_create(e, &o, &err);
    ck_assert_msg(c != NULL, "context: %s", err.msg);
    return c;
}

static st_file *fx_open(const char *v)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/logits/%s", tu_data_dir(), vstr(v, "file"));
    qerr err = {0};
    st_file *f = st_open(p, &err);
    ck_assert_msg(f != NULL, "%s: %s", p, err.msg);
    return f;
}

/* Tensor `name` of int32s (malloc'ed), *n elements. */
static int32_t *fx_i32(st_file *f, const char *name, size_t *n)
{
    const st_tensor *t = st_find(f, name);
    ck_assert_msg(t != NULL, "fixture tensor %s missing", name);
    int32_t *v = malloc(t->nbytes ? t->nbytes : 4);
    qerr err = {0};
    ck_assert_msg(st_read(f, t, v, &err), "%s: %s", name, err.msg);
    *n = (size_t)(t->nbytes / 4);
    return v;
}

/* The prompt p0 of a variant's fixture (its transformers ids). */
static int32_t *prompt_ids(const char *v, size_t *n)
{
    st_file *f = fx_open(v);
    int32_t *ids = fx_i32(f, "p0.ids", n);
    st_close(f);
    return ids;
}

static double hf_rel(const char *v, const char *key)
{
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(variant_info(v), key), "p0");
    return cJSON_IsNumber(o) ? o->valuedouble : 0.0;
}

/* ---- comparisons ------------------------------------------------------------------- */

/* max |a - ref| / max |ref| over n values (NaN fails) */
static double rel_err(const float *a, const float *ref, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)ref[i]);
        if (!(d <= md))
            md = d;
        if (fabs((double)ref[i]) > mr)
            mr = fabs((double)ref[i]);
    }
    return mr > 0 ? md / mr : md;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

/* (best - second best) / max |x|: how clearly the greedy token wins */
static double top_gap(const float *x, int n)
{
    int b = argmax(x, n);
    double second = -INFINITY, mx = 0;
    for (int i = 0; i < n; i++) {
        if (i != b && x[i] > second)
            second = x[i];
        if (fabs(x[i]) > mx)
            mx = fabs(x[i]);
    }
    return mx > 0 ? ((double)x[b] - second) / mx : 0;
}

static float *poisoned(size_t n)
{
    float *p = malloc(n * sizeof *p);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

/* The logits of every prompt position and of `steps` single-token steps
 * fed `feed` (or, when feed is NULL, the greedy token of the previous row,
 * which are then stored into `chosen`): [(n + steps) x V]. */
static float *run_seq(qctx *c, const qengine *e, const int32_t *ids, int n, int steps,
                      const int32_t *feed, int32_t *chosen)
{
    const int V = qengine_vocab_size(e);
    float *all = poisoned((size_t)(n + steps) * (size_t)V);
    qerr err = {0};
    ck_assert_msg(qctx_forward(c, ids, n, 0, NULL, all, NULL, &err) == QRUN_OK, "prefill: %s",
                  err.msg);
    for (int s = 0; s < steps; s++) {
        const float *prev = all + (size_t)(n + s - 1) * (size_t)V;
        int32_t tok = feed ? feed[s] : argmax(prev, V);
        if (chosen)
            chosen[s] = tok;
        ck_assert_msg(qctx_forward(c, &tok, 1, n + s, all + (size_t)(n + s) * (size_t)V, NULL,
                                   NULL, &err) == QRUN_OK,
                      "decode step %d: %s", s, err.msg);
    }
    return all;
}

/* Worst row error of `got` against `ref`, rows x V. */
static double rows_err(const float *got, const float *ref, int rows, int V)
{
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        double e = rel_err(got + (size_t)r * (size_t)V, ref + (size_t)r * (size_t)V, (size_t)V);
        if (!(e <= worst))
            worst = e;
    }
    return worst;
}

/* Greedy sequences a (reference) and b must agree except where the
 * reference's winner is not clear at the error bound. */
static void check_greedy(const char *what, const int32_t *a, const int32_t *b, int steps,
                         const float *ref_rows, int V, double bound)
{
    for (int s = 0; s < steps; s++) {
        if (a[s] == b[s])
            continue;
        double gap = top_gap(ref_rows + (size_t)s * (size_t)V, V);
        figure("%s: greedy step %d: %d vs %d, reference top-2 gap %.3g (bound %g)\n",
                what, s, a[s], b[s], gap, bound);
        ck_assert_msg(gap <= 2 * bound, "%s: greedy step %d: token %d vs %d with a clear winner "
                      "(gap %.3g)", what, s, a[s], b[s], gap);
        return; /* the sequences part ways after a tie */
    }
}

/* ---- GPU vs CPU --------------------------------------------------------------------- */

/* The GPU engine (all layers, or gpu_layers of them) against the CPU engine
 * on `mode` of variant v with activations `act`; returns the worst row. */
static double gpu_vs_cpu(const char *v, const char *mode, qdtype act, int gpu_layers,
                         double bound)
{
    const char *path = model_path(v, mode);
    qengine *ec = load(path, QRUN_BACKEND_CPU, 0);
    qengine *eg = load(path, QRUN_BACKEND_CUDA, gpu_layers);
    int L = qengine_gpu_layers(eg);
    ck_assert_msg(L > 0, "%s %s: no layer on the GPU", v, mode);
    const int V = qengine_vocab_size(ec);
    size_t n;
    int32_t *ids = prompt_ids(v, &n);
    const int steps = g_quick ? 3 : 8;
    int32_t *chosen = malloc((size_t)steps * sizeof *chosen);
    int32_t *chosen_g = malloc((size_t)steps * sizeof *chosen_g);
    qctx *cc = context(ec, act, 64, false), *cg = context(eg, act, 64, false);
    /* the reference picks the greedy path; the GPU is fed the same tokens */
    float *ref = run_seq(cc, ec, ids, (int)n, steps, NULL, chosen);
    float *got = run_seq(cg, eg, ids, (int)n, steps, chosen, NULL);
    double worst = rows_err(got, ref, (int)n + steps, V);
    figure("%-5s %-8s %-20s gpu layers %d: max rel %.3g (bound %g)\n",
            qdtype_name(act), mode, v, L, worst, bound);
    ck_assert_msg(worst <= bound, "%s %s act %s (%d GPU layers): rel err %g > %g", v, mode,
                  qdtype_name(act), L, worst, bound);
    /* and greedy on its own */
    qctx_free(cg);
    cg = context(eg, act, 64, false);
    float *own = run_seq(cg, eg, ids, (int)n, steps, NULL, chosen_g);
    char what[128];
    snprintf(what, sizeof what, "%s %s %s", v, mode, qdtype_name(act));
    check_greedy(what, chosen, chosen_g, steps, ref + (n - 1) * (size_t)V, V, bound);
    free(own);
    free(ref);
    free(got);
    free(ids);
    free(chosen);
    free(chosen_g);
    qctx_free(cc);
    qctx_free(cg);
    qengine_free(ec);
    qengine_free(eg);
    return worst;
}

START_TEST(test_f32_vs_cpu)
{
    const char *v = variant(_i / n_f32_modes()), *mode = f32_mode(_i % n_f32_modes());
    double bound = strncmp(mode, "int8", 4) == 0 ? 2e-3 : 1e-4;
    gpu_vs_cpu(v, mode, QDT_F32, -1, bound);
}
END_TEST

static double half_bound(const char *v, const char *mode)
{
    char key[32];
    snprintf(key, sizeof key, "%s_vs_f32_max_rel", mode);
    double b = 3 * hf_rel(v, key);
    return b < 1e-2 ? 1e-2 : b;
}

START_TEST(test_half_vs_cpu)
{
    const char *v = variant(_i / 3);
    switch (_i % 3) {
    case 0: gpu_vs_cpu(v, "f16", QDT_F16, -1, half_bound(v, "f16")); break;
    case 1: gpu_vs_cpu(v, "bf16", QDT_BF16, -1, half_bound(v, "bf16")); break;
    default: {
        /* nf4 in the converted file's compute dtype (the API's GPU default) */
        const char *qd = vstr(v, "qbin_dtype");
        bool bf = qd && strcmp(qd, "bfloat16") == 0;
        gpu_vs_cpu(v, "nf4", bf ? QDT_BF16 : QDT_F16, -1, half_bound(v, bf ? "bf16" : "f16"));
    }
    }
}
END_TEST

/* ---- decode == prefill, pieces ----------------------------------------------------- */

START_TEST(test_decode_vs_prefill)
{
    const char *v = variant(_i / 2), *mode = _i % 2 ? "nf4" : "src";
    qengine *e = load(model_path(v, mode), QRUN_BACKEND_CUDA, -1);
    const int V = qengine_vocab_size(e);
    /* dynamic NTK rescales past max_position_embeddings (32 there): a
     * prefill and growing decode steps then legitimately differ */
    const int T = strcmp(v, "llama-dynamic-bias") == 0 ? 24 : 40;
    int32_t ids[40];
    for (int i = 0; i < 40; i++)
        ids[i] = (i * 37 + 5) % V;
    qctx *c = context(e, QDT_F32, 64, false), *c1 = context(e, QDT_F32, 64, false);
    float *all = run_seq(c, e, ids, T, 0, NULL, NULL);
    float *row = poisoned((size_t)V);
    double worst = 0;
    qerr err = {0};
    for (int t = 0; t < T; t++) {
        ck_assert_msg(qctx_forward(c1, ids + t, 1, t, row, NULL, NULL, &err) == QRUN_OK, "%s",
                      err.msg);
        double r = rel_err(row, all + (size_t)t * (size_t)V, (size_t)V);
        if (r > worst)
            worst = r;
    }
    /* pieces of 5 tokens (prefill kernels on partial tiles) */
    qctx *c5 = context(e, QDT_F32, 5, false);
    float *all5 = run_seq(c5, e, ids, T, 0, NULL, NULL);
    double rp = rows_err(all5, all, T, V);
    figure("gpu decode-vs-prefill %-20s %-4s max rel %.3g, n_batch 5 %.3g (bound 1e-4)\n",
            v, mode, worst, rp);
    ck_assert_msg(worst <= 1e-4, "%s: token-by-token vs batched %g", v, worst);
    ck_assert_msg(rp <= 1e-4, "%s: n_batch 5 vs 64: %g", v, rp);
    free(all5);
    free(all);
    free(row);
    qctx_free(c5);
    qctx_free(c);
    qctx_free(c1);
    qengine_free(e);
}
END_TEST

/* ---- graphs -------------------------------------------------------------------------- */

START_TEST(test_graph_equals_eager)
{
    const char *v = variant(_i / 2);
    qdtype act = _i % 2 ? QDT_F16 : QDT_F32;
    const char *mode = _i % 2 ? "nf4_dq" : "int8_t6";
    qengine *e = load(model_path(v, mode), QRUN_BACKEND_CUDA, -1);
    const int V = qengine_vocab_size(e);
    size_t n;
    int32_t *ids = prompt_ids(v, &n);
    const int steps = g_quick ? 4 : 12;
    int32_t *chosen = malloc((size_t)steps * sizeof *chosen);
    qctx *eager = context(e, act, 64, true), *graph = context(e, act, 64, false);
    float *a = run_seq(eager, e, ids, (int)n, steps, NULL, chosen);
    float *b = run_seq(graph, e, ids, (int)n, steps, chosen, NULL);
    int replays = qctx_graph_replays(graph);
    bool dynamic = strcmp(v, "llama-dynamic-bias") == 0;
    figure("graph %-20s %-7s %s: %d of %d steps replayed\n", v, mode, qdtype_name(act),
            replays, steps);
    ck_assert_int_eq(qctx_graph_replays(eager), 0);
    /* the first single-token step runs eagerly, then one is captured */
    if (dynamic)
        ck_assert_msg(replays == 0, "dynamic rope must not use a graph (%d replays)", replays);
    else
        ck_assert_msg(replays == steps - 1, "%s: %d graph replays of %d steps", v, replays,
                      steps);
    size_t bytes = (size_t)(n + (size_t)steps) * (size_t)V * sizeof(float);
    ck_assert_msg(memcmp(a, b, bytes) == 0, "%s %s: graph replay differs from eager (rel %g)", v,
                  mode, rows_err(b, a, (int)n + steps, V));
    /* a rewind and a new prompt in the same session keep using the graph */
    qerr err = {0};
    float *r1 = poisoned((size_t)V), *r2 = poisoned((size_t)V);
    int32_t tok = chosen[0];
    ck_assert(qctx_forward(eager, ids, 3, 0, NULL, NULL, NULL, &err) == QRUN_OK);
    ck_assert(qctx_forward(graph, ids, 3, 0, NULL, NULL, NULL, &err) == QRUN_OK);
    ck_assert(qctx_forward(eager, &tok, 1, 3, r1, NULL, NULL, &err) == QRUN_OK);
    ck_assert(qctx_forward(graph, &tok, 1, 3, r2, NULL, NULL, &err) == QRUN_OK);
    ck_assert_msg(memcmp(r1, r2, (size_t)V * sizeof *r1) == 0, "%s: after a rewind", v);
    if (!dynamic)
        ck_assert_int_eq(qctx_graph_replays(graph), replays + 1);
    free(r1);
    free(r2);
    free(a);
    free(b);
    free(ids);
    free(chosen);
    qctx_free(eager);
    qctx_free(graph);
    qengine_free(e);
}
END_TEST

/* ---- partial offload ------------------------------------------------------------------ */

START_TEST(test_partial_offload)
{
    const char *v = variant(_i / 2);
    bool half = _i % 2;
    const char *qd = vstr(v, "qbin_dtype");
    qdtype hdt = qd && strcmp(qd, "bfloat16") == 0 ? QDT_BF16 : QDT_F16;
    qdtype act = half ? hdt : QDT_F32;
    const char *mode = half ? "nf4" : "fp4";
    double bound = half ? half_bound(v, hdt == QDT_BF16 ? "bf16" : "f16") : 1e-4;
    const char *path = model_path(v, mode);
    qengine *full = load(path, QRUN_BACKEND_CUDA, -1), *part = load(path, QRUN_BACKEND_CUDA, 1);
    ck_assert_int_eq(qengine_gpu_layers(part), 1);
    qrun_model_info info;
    qengine_info(part, &info);
    ck_assert_str_eq(info.backend, "cuda+cpu");
    ck_assert_int_eq(info.n_gpu_layers, 1);
    qengine_info(full, &info);
    ck_assert_str_eq(info.backend, "cuda");
    ck_assert_int_eq(info.n_gpu_layers, info.n_layers);
    ck_assert(info.gpu_name[0] != '\0' && info.gpu_weight_bytes > 0);
    const int V = qengine_vocab_size(full);
    size_t n;
    int32_t *ids = prompt_ids(v, &n);
    const int steps = g_quick ? 3 : 8;
    int32_t *ga = malloc((size_t)steps * sizeof *ga), *gb = malloc((size_t)steps * sizeof *gb);
    qctx *cf = context(full, act, 64, false), *cp = context(part, act, 64, false);
    float *a = run_seq(cf, full, ids, (int)n, steps, NULL, ga);
    float *b = run_seq(cp, part, ids, (int)n, steps, ga, NULL);
    double worst = rows_err(b, a, (int)n + steps, V);
    figure("partial %-20s %-4s %s: max rel %.3g vs all-GPU (bound %g)\n", v, mode,
            qdtype_name(act), worst, bound);
    ck_assert_msg(worst <= bound, "%s: partial vs all-GPU %g > %g", v, worst, bound);
    qctx_free(cp);
    cp = context(part, act, 64, false);
    float *c = run_seq(cp, part, ids, (int)n, steps, NULL, gb);
    check_greedy("partial offload", ga, gb, steps, a + (n - 1) * (size_t)V, V, bound);
    free(c);
    free(a);
    free(b);
    free(ids);
    free(ga);
    free(gb);
    qctx_free(cf);
    qctx_free(cp);
    qengine_free(full);
    qengine_free(part);
}
END_TEST

/* ---- planning and errors -------------------------------------------------------------- */

START_TEST(test_plan_and_errors)
{
    const char *path = model_path("llama-tied-linear", "nf4");
    qerr err = {0};
    /* explicit N is capped at the layer count */
    qengine *e = load(path, QRUN_BACKEND_CUDA, 7);
    ck_assert_int_eq(qengine_gpu_layers(e), 2);
    /* a context whose KV cache no GPU holds (2^31 positions x 2 layers x
     * 32 x 2 x 4 bytes = 1 TiB): refused before allocating, with numbers */
    qctx_opts big = {.n_ctx = INT_MAX, .n_batch = 64, .kv_type = QDT_F32, .act_dtype = QDT_F32};
    ck_assert(qctx_create(e, &big, &err) == NULL);
    ck_assert_int_eq(err.code, QRUN_ERR_DEVICE);
    ck_assert_msg(strstr(err.msg, "KV cache") && strstr(err.msg, "MiB"), "%s", err.msg);
    figure("big context: %s\n", err.msg);
    qengine_free(e);

    /* 1 MiB of device memory: explicit CUDA fails clearly... */
    memset(&err, 0, sizeof err);
    ck_assert(load_opts(path, QRUN_BACKEND_CUDA, -1, 1u << 20, NULL, &err) == NULL);
    ck_assert_int_eq(err.code, QRUN_ERR_DEVICE);
    ck_assert_msg(strstr(err.msg, "MiB") && strstr(err.msg, "--backend cpu"), "%s", err.msg);
    figure("1 MiB, auto layers: %s\n", err.msg);
    memset(&err, 0, sizeof err);
    ck_assert(load_opts(path, QRUN_BACKEND_CUDA, 2, 1u << 10, NULL, &err) == NULL);
    ck_assert_int_eq(err.code, QRUN_ERR_DEVICE);
    ck_assert_msg(strstr(err.msg, "MiB") && strstr(err.msg, "2 GPU layers"), "%s", err.msg);
    figure("1 KiB, 2 layers: %s\n", err.msg);
    /* ... and AUTO runs on the CPU with a warning */
    log_capture logs = {0};
    e = load_opts(path, QRUN_BACKEND_AUTO, -1, 1u << 20, &logs, &err);
    ck_assert_msg(e != NULL, "%s", err.msg);
    ck_assert_int_eq(qengine_gpu_layers(e), 0);
    ck_assert_msg(logs.warns == 1 && strstr(logs.last, "running on the CPU"), "%d: %s",
                  logs.warns, logs.last);
    qrun_model_info info;
    qengine_info(e, &info);
    ck_assert_str_eq(info.backend, "cpu");
    qengine_free(e);

    /* the smallest limit that holds one layer holds exactly one: a partial
     * offload chosen by the planner */
    uint64_t lo = 1u << 20, hi = 1ull << 34;
    e = load_opts(path, QRUN_BACKEND_CUDA, -1, hi, NULL, &err);
    ck_assert_msg(e && qengine_gpu_layers(e) == 2, "16 GiB: %s", err.msg);
    qengine_free(e);
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        memset(&err, 0, sizeof err);
        e = load_opts(path, QRUN_BACKEND_CUDA, -1, mid, NULL, &err);
        if (e)
            hi = mid;
        else {
            ck_assert_int_eq(err.code, QRUN_ERR_DEVICE);
            lo = mid;
        }
        qengine_free(e);
    }
    e = load_opts(path, QRUN_BACKEND_CUDA, -1, hi, NULL, &err);
    ck_assert_msg(e != NULL, "%s", err.msg);
    ck_assert_int_eq(qengine_gpu_layers(e), 1);
    figure("one layer fits in %.3f MiB\n", (double)hi / 1048576.0);
    /* and it runs */
    qctx *c = context(e, QDT_F32, 16, false);
    int32_t ids[3] = {1, 2, 3};
    float *row = poisoned((size_t)qengine_vocab_size(e));
    ck_assert(qctx_forward(c, ids, 3, 0, row, NULL, NULL, &err) == QRUN_OK);
    ck_assert(isfinite(row[0]));
    free(row);
    qctx_free(c);
    qengine_free(e);
}
END_TEST

/* ---- sampling on the device -------------------------------------------------------------- */

/* The parameter sets of the sampling tests: greedy; the defaults with a
 * penalty (top-k, top-p, min-p: rank-order walk); plain temperature (id
 * order walk); top-p alone; a whole-context penalty window. */
static qsampler_params sample_params(int k, uint64_t seed)
{
    qsampler_params p;
    qsampler_params_default(&p);
    p.seed = seed;
    switch (k) {
    case 0: p.temperature = 0.0f; break;
    case 1: p.repeat_penalty = 1.3f; break;
    case 2: p.temperature = 1.5f, p.top_k = 0, p.top_p = 1.0f, p.min_p = 0.0f; break;
    case 3: p.temperature = 0.9f, p.top_k = 0, p.top_p = 0.8f, p.min_p = 0.0f; break;
    default: p.temperature = 1.1f, p.repeat_penalty = 0.8f, p.repeat_last_n = -1; break;
    }
    return p;
}
#define N_SAMPLE_PARAMS 5

/* Generation loop of src/api.c on the engine: the first token from the
 * prompt's logits on the host, then either every next one picked on the
 * device (qctx_forward_sample) or each step's logits copied and sampled on
 * the host. Returns the ids; *last gets the final step's logits. */
static void sample_run(qctx *c, const qengine *e, const qsampler_params *sp, const int32_t *ids,
                       int n, int steps, bool device, int32_t *out, float *last)
{
    const int V = qengine_vocab_size(e);
    qsampler *smp = NULL;
    qerr err = {0};
    ck_assert_msg(qsampler_create(sp, V, qctx_n_ctx(c), 0, &smp, &err) == QRUN_OK, "%s",
                  err.msg);
    ck_assert(qsampler_accept_many(smp, ids, (size_t)n, &err) == QRUN_OK);
    float *logits = poisoned((size_t)V);
    int32_t *window = malloc((size_t)(qctx_n_ctx(c) + 1) * sizeof *window);
    ck_assert(qctx_forward(c, ids, n, 0, logits, NULL, NULL, &err) == QRUN_OK);
    int32_t id;
    ck_assert_msg(qsampler_sample(smp, logits, &id, &err) == QRUN_OK, "%s", err.msg);
    for (int t = 0; t < steps; t++) {
        out[t] = id;
        ck_assert(qsampler_accept(smp, id, &err) == QRUN_OK);
        if (device) {
            size_t nw = sp->repeat_penalty != 1.0f
                            ? qsampler_window(smp, window, (size_t)qctx_n_ctx(c) + 1)
                            : 0;
            qctx_sample cs = {sp->temperature, sp->top_k, sp->top_p, sp->min_p,
                              sp->repeat_penalty, window, (int)nw,
                              qsampler_is_greedy(smp) ? 0 : qsampler_draw(smp)};
            ck_assert_msg(qctx_forward_sample(c, id, n + t, &cs, &id, NULL, &err) == QRUN_OK,
                          "step %d: %s", t, err.msg);
            ck_assert_int_ge(id, 0);
        } else {
            ck_assert_msg(qctx_forward(c, &id, 1, n + t, logits, NULL, NULL, &err) == QRUN_OK,
                          "step %d: %s", t, err.msg);
            ck_assert_msg(qsampler_sample(smp, logits, &id, &err) == QRUN_OK, "%s", err.msg);
        }
    }
    if (device)
        ck_assert_msg(qctx_last_logits(c, last, &err) == QRUN_OK, "%s", err.msg);
    else
        memcpy(last, logits, (size_t)V * sizeof *last);
    free(window);
    free(logits);
    qsampler_free(smp);
}

/* Picking the token on the device equals copying the logits and sampling
 * on the host (kernels/sample.h: the same ids barring a sum within ~1e-11 of
 * a boundary, never expected here), and the logits left there are the
 * host path's, bit for bit. */
START_TEST(test_device_sampling)
{
    const char *v = variant(_i / N_SAMPLE_PARAMS);
    const int k = _i % N_SAMPLE_PARAMS;
    const char *qd = vstr(v, "qbin_dtype");
    qdtype act = qd && strcmp(qd, "bfloat16") == 0 ? QDT_BF16 : QDT_F16;
    qengine *e = load(model_path(v, "nf4"), QRUN_BACKEND_CUDA, -1);
    const int V = qengine_vocab_size(e);
    size_t n;
    int32_t *ids = prompt_ids(v, &n);
    const int steps = g_quick ? 6 : 40;
    qctx *dev = context(e, act, 64, false);
    setenv("QRUN_GPU_SAMPLING", "0", 1);
    qctx *host = context(e, act, 64, false);
    unsetenv("QRUN_GPU_SAMPLING");
    ck_assert(qctx_device_sampling(dev) && !qctx_device_sampling(host));
    qsampler_params sp = sample_params(k, 1234 + (uint64_t)_i);
    int32_t *a = malloc((size_t)steps * sizeof *a), *b = malloc((size_t)steps * sizeof *b);
    float *la = poisoned((size_t)V), *lb = poisoned((size_t)V);
    sample_run(dev, e, &sp, ids, (int)n, steps, true, a, la);
    sample_run(host, e, &sp, ids, (int)n, steps, false, b, lb);
    int distinct = 0;
    for (int t = 0; t < steps; t++)
        distinct += t == 0 || a[t] != a[t - 1];
    figure("device sampling %-20s params %d: %d steps, %d device picks, %d token changes\n", v,
           k, steps, qctx_device_samples(dev), distinct);
    ck_assert_int_eq(qctx_device_samples(dev), steps);
    for (int t = 0; t < steps; t++)
        ck_assert_msg(a[t] == b[t], "%s params %d step %d: device %d, host %d", v, k, t, a[t],
                      b[t]);
    ck_assert_msg(memcmp(la, lb, (size_t)V * sizeof *la) == 0, "%s: last logits differ", v);
    free(a);
    free(b);
    free(la);
    free(lb);
    free(ids);
    qctx_free(dev);
    qctx_free(host);
    qengine_free(e);
}
END_TEST

typedef struct api_tokens {
    int32_t ids[128];
    int n;
} api_tokens;

static bool api_collect(void *user, int seq, int32_t token, const char *text, size_t len)
{
    (void)seq, (void)text, (void)len;
    api_tokens *t = user;
    if (token >= 0 && t->n < 128)
        t->ids[t->n++] = token;
    return true;
}

/* Through the public API: a GPU session (device sampling) generates what one
 * sampling on the host generates, and its logits afterwards are the same. */
START_TEST(test_api_generate)
{
    const char *path = model_path("falcon-40b-style", "nf4");
    qrun_model_params mp;
    qrun_model_params_init(&mp);
    mp.backend = QRUN_BACKEND_CUDA;
    qrun_model *m = NULL;
    char eb[1024];
    ck_assert_msg(qrun_model_load(path, &mp, &m, eb, sizeof eb) == QRUN_OK, "%s", eb);
    qrun_model_info info;
    qrun_model_get_info(m, &info);
    ck_assert_str_eq(info.backend, "cuda");
    qrun_session_params ps;
    qrun_session_params_init(&ps);
    ps.n_ctx = 128;
    qrun_session *sd = NULL, *sh = NULL;
    ck_assert_msg(qrun_session_create(m, &ps, &sd, eb, sizeof eb) == QRUN_OK, "%s", eb);
    setenv("QRUN_GPU_SAMPLING", "0", 1);
    ck_assert_msg(qrun_session_create(m, &ps, &sh, eb, sizeof eb) == QRUN_OK, "%s", eb);
    unsetenv("QRUN_GPU_SAMPLING");
    for (int k = 0; k < N_SAMPLE_PARAMS; k++) {
        qsampler_params sp = sample_params(k, 99 + (uint64_t)k);
        qrun_generate_params gp;
        qrun_generate_params_init(&gp);
        gp.sampler.temperature = sp.temperature;
        gp.sampler.top_k = sp.top_k;
        gp.sampler.top_p = sp.top_p;
        gp.sampler.min_p = sp.min_p;
        gp.sampler.repeat_penalty = sp.repeat_penalty;
        gp.sampler.repeat_last_n = sp.repeat_last_n;
        gp.sampler.seed = sp.seed;
        gp.max_new_tokens = g_quick ? 8 : 48;
        gp.stop_at_eos = false;
        gp.n_sequences = k == 1 ? 2 : 1;
        api_tokens td = {.n = 0}, th = {.n = 0};
        ck_assert(qrun_session_rewind(sd, 0) == QRUN_OK && qrun_session_rewind(sh, 0) == QRUN_OK);
        ck_assert_msg(qrun_generate(sd, "Once upon a time", &gp, api_collect, &td, NULL) ==
                          QRUN_OK, "%s", qrun_session_last_error(sd));
        ck_assert_msg(qrun_generate(sh, "Once upon a time", &gp, api_collect, &th, NULL) ==
                          QRUN_OK, "%s", qrun_session_last_error(sh));
        ck_assert_int_eq(td.n, th.n);
        ck_assert_msg(memcmp(td.ids, th.ids, (size_t)td.n * sizeof(int32_t)) == 0,
                      "params %d: device and host sampling generate different tokens", k);
        const float *ld = qrun_session_logits(sd), *lh = qrun_session_logits(sh);
        ck_assert(ld && lh);
        ck_assert_msg(memcmp(ld, lh, (size_t)info.vocab_size * sizeof *ld) == 0,
                      "params %d: logits after generation differ", k);
    }
    qrun_session_free(sd);
    qrun_session_free(sh);
    qrun_model_free(m);
}
END_TEST

/* ---- SmolLM2-135M ---------------------------------------------------------------------- */

static const char *smollm2_dir(void) { return tu_smollm2_dir(); }

static bool have_smollm2(void)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", smollm2_dir());
    return tu_file_exists(p);
}

/* 32 greedy tokens of the CPU engine, of all-GPU and of a 10-layer partial
 * offload agree on every fixture prompt (same act: the compute dtype). */
static void smollm2_case(qconvert_quant quant, const char *name)
{
    char out[1024];
    snprintf(out, sizeof out, "%s/smollm2-%s.qbin", g_tmp, name);
    qconvert_options o;
    qconvert_options_init(&o);
    o.input_dir = smollm2_dir();
    o.output_path = out;
    o.quant = quant;
    qerr err = {0};
    ck_assert_msg(qconvert_run(&o, NULL, &err) == QRUN_OK, "convert: %s", err.msg);
    qengine *ec = load(out, QRUN_BACKEND_CPU, 0), *eg = load(out, QRUN_BACKEND_CUDA, -1),
            *ep = load(out, QRUN_BACKEND_CUDA, 10);
    ck_assert_int_eq(qengine_gpu_layers(ep), 10);
    qdtype act = qengine_compute_dtype(ec);
    const int V = qengine_vocab_size(ec), N = 32;
    const double bound = 1e-2;
    qerr e2 = {0};
    st_file *fx = st_open(tu_data_path("logits/smollm2-135m-instruct.safetensors"), &e2);
    ck_assert_msg(fx != NULL, "%s", e2.msg);
    int np = cJSON_GetArraySize(
        cJSON_GetObjectItem(cJSON_GetObjectItem(g_index, "smollm2"), "prompts"));
    ck_assert_int_ge(np, 5);
    for (int p = 0; p < np; p++) {
        char key[32];
        snprintf(key, sizeof key, "p%d.ids", p);
        size_t n;
        int32_t *ids = fx_i32(fx, key, &n);
        int32_t tc[32], tg[32], tp[32];
        qctx *cc = context(ec, act, 64, false), *cg = context(eg, act, 64, false),
             *cp = context(ep, act, 64, false);
        float *rc = run_seq(cc, ec, ids, (int)n, N, NULL, tc);
        float *rg = run_seq(cg, eg, ids, (int)n, N, NULL, tg);
        float *rp = run_seq(cp, ep, ids, (int)n, N, NULL, tp);
        double eg_ = rel_err(rg + (n - 1) * (size_t)V, rc + (n - 1) * (size_t)V, (size_t)V);
        figure("smollm2 %s p%d: prompt-end logits rel %.3g, greedy gpu %s, partial %s\n",
                name, p, eg_, memcmp(tc, tg, sizeof tc) ? "DIFFERS" : "equal",
                memcmp(tc, tp, sizeof tc) ? "DIFFERS" : "equal");
        check_greedy("smollm2 gpu", tc, tg, N, rc + (n - 1) * (size_t)V, V, bound);
        check_greedy("smollm2 partial", tc, tp, N, rc + (n - 1) * (size_t)V, V, bound);
        free(rc);
        free(rg);
        free(rp);
        free(ids);
        qctx_free(cc);
        qctx_free(cg);
        qctx_free(cp);
    }
    st_close(fx);
    qengine_free(ec);
    qengine_free(eg);
    qengine_free(ep);
}

START_TEST(test_smollm2_f16) { smollm2_case(QCONVERT_F16, "f16"); }
END_TEST
START_TEST(test_smollm2_nf4) { smollm2_case(QCONVERT_NF4, "nf4"); }
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("gpu_engine");
    TCase *tc = tcase_create("gpu_engine");
    tcase_set_timeout(tc, 600);
    int nv = n_variants();
    tcase_add_loop_test(tc, test_f32_vs_cpu, 0, nv * n_f32_modes());
    tcase_add_loop_test(tc, test_half_vs_cpu, 0, nv * 3);
    tcase_add_loop_test(tc, test_decode_vs_prefill, 0, nv * 2);
    tcase_add_loop_test(tc, test_graph_equals_eager, 0, nv * 2);
    tcase_add_loop_test(tc, test_partial_offload, 0, nv * 2);
    tcase_add_test(tc, test_plan_and_errors);
    tcase_add_loop_test(tc, test_device_sampling, 0, (g_quick ? 1 : nv) * N_SAMPLE_PARAMS);
    tcase_add_test(tc, test_api_generate);
    if (have_smollm2() && !g_quick) {
        tcase_add_test(tc, test_smollm2_f16);
        tcase_add_test(tc, test_smollm2_nf4);
    } else {
        fprintf(stderr, "SmolLM2 part skipped: %s/model.safetensors %s\n", smollm2_dir(),
                g_quick ? "not used in quick mode" : "not found");
    }
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    qerr err = {0};
    if (cuda_device_count(&err) <= 0) {
        fprintf(stderr, "SKIP: %s\n", err.msg);
        return 77;
    }
    /* CUDA is initialized in this process now and a forked child cannot use
     * it: the tests run in this process */
    setenv("CK_FORK", "no", 1);
    const char *q = getenv("QRUN_TEST_QUICK");
    g_quick = q && strcmp(q, "1") == 0;
    char p[1024];
    snprintf(p, sizeof p, "%s/logits/index.json", tu_data_dir());
    size_t len;
    unsigned char *txt = tu_read_file(p, &len);
    if (!txt) {
        fprintf(stderr, "no fixtures at %s\n", p);
        return 1;
    }
    g_index = cJSON_ParseWithLength((const char *)txt, len);
    free(txt);
    if (!g_index)
        return 1;
    g_tmp = tu_tmpdir();
    int rc = tu_run(suite());
    tu_rmtree(g_tmp);
    free(g_tmp);
    cJSON_Delete(g_index);
    return rc;
}
