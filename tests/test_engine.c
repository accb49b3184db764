/* The engine against transformers: the tiny checkpoints of tests/data/tiny
 * are converted with qconvert (library) into a temporary directory and run;
 * logits are compared with the fixtures tools/make_logits_fixtures.py wrote
 * into tests/data/logits (index.json describes them). Relative error =
 * max |engine - ref| / max |ref| over the compared logits. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "convert.h"
#include "engine.h"
#include "import/safetensors.h"
#include "qbin.h"
#include "testutil.h"
#include "tiny_variants.h"

static char *g_tmp;     /* converted models, shared by all tests (created in main) */
static cJSON *g_index;  /* tests/data/logits/index.json */

static const char *const VARIANTS[] = {"llama-mha",       "llama-gqa-llama3", "llama-tied-linear",
                                       "llama-dynamic-bias", "falcon-7b-style", "falcon-40b-style",
                                       "falcon-rw-style"};
#define NVARIANTS (int)(sizeof VARIANTS / sizeof VARIANTS[0])

/* ---- helpers -------------------------------------------------------------------- */

static const cJSON *variant_info(const char *v) { return tv_info(g_index, v); }
static const char *vstr(const char *v, const char *key) { return tv_str(g_index, v, key); }
static const char *model_path(const char *variant, const char *mode)
{
    return tv_model_path(g_index, g_tmp, variant, mode);
}

static qengine *load(const char *path)
{
    qengine_opts o = {.backend = QRUN_BACKEND_CPU, .n_threads = 2, .verify_checksums = true};
    qerr err = {0};
    qengine *e = qengine_load(path, &o, &err);
    ck_assert_msg(e != NULL, "load %s: %s", path, err.msg);
    return e;
}

static qctx *context(const qengine *e, qdtype act, int n_batch, int threads)
{
    qctx_opts o = {.n_ctx = 128, .n_batch = n_batch, .kv_type = QDT_F32, .n_threads = threads,
                   .act_dtype = act};
    qerr err = {0};
    qctx *c = qctx_create(e, &o, &err);
    ck_assert_msg(c != NULL, "context: %s", err.msg);
    return c;
}

typedef struct fixture {
    st_file *f;
} fixture;

static fixture fx_open(const char *variant)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/logits/%s", tu_data_dir(), vstr(variant, "file"));
    qerr err = {0};
    fixture fx = {st_open(p, &err)};
    ck_assert_msg(fx.f != NULL, "%s: %s", p, err.msg);
    return fx;
}

/* Tensor `name` as floats (malloc'ed), *n elements; NULL when absent. */
static float *fx_f32(fixture fx, const char *name, size_t *n)
{
    const st_tensor *t = st_find(fx.f, name);
    if (!t)
        return NULL;
    size_t cnt = 1;
    for (int d = 0; d < t->ndim; d++)
        cnt *= (size_t)t->shape[d];
    float *v = malloc(cnt * sizeof *v);
    qerr err = {0};
    ck_assert_msg(st_read_f32(fx.f, t, v, &err), "%s: %s", name, err.msg);
    if (n)
        *n = cnt;
    return v;
}

static int32_t *fx_i32(fixture fx, const char *name, size_t *n)
{
    const st_tensor *t = st_find(fx.f, name);
    if (!t)
        return NULL;
    int32_t *v = malloc(t->nbytes ? t->nbytes : 4);
    qerr err = {0};
    ck_assert_msg(st_read(fx.f, t, v, &err), "%s: %s", name, err.msg);
    if (n)
        *n = (size_t)(t->nbytes / 4);
    return v;
}

static int n_prompts(const char *variant)
{
    return cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(variant_info(variant), "prompts"));
}

/* max |a - ref| / max |ref| over n values */
static double rel_err(const float *a, const float *ref, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)ref[i]);
        if (!(d <= md))
            md = d; /* NaN propagates as a failure */
        if (fabs((double)ref[i]) > mr)
            mr = fabs((double)ref[i]);
    }
    return mr > 0 ? md / mr : md;
}

/* The .qbin holds f16/bf16 values: the fixtures' f32 model has exactly our
 * weights only when the checkpoint was stored in that dtype already. */
static bool exact_weights(const char *v)
{
    /* f32 checkpoints are converted with --quant f32 for the "src" file */
    const char *sd = vstr(v, "source_dtype"), *qd = vstr(v, "qbin_dtype");
    return sd && (strcmp(sd, "float32") == 0 || (qd && strcmp(sd, qd) == 0));
}



static double hf_rel(const char *v, const char *key, int p)
{
    char k[16];
    snprintf(k, sizeof k, "p%d", p);
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(variant_info(v), key), k);
    return cJSON_IsNumber(o) ? o->valuedouble : 0.0;
}

/* All logits of a prompt, [n_ids, V] (caller frees). */
static float *run_all(qctx *c, const qengine *e, const int32_t *ids, int n)
{
    int V = qengine_vocab_size(e);
    float *all = malloc((size_t)n * (size_t)V * sizeof *all);
    qerr err = {0};
    qrun_status st = qctx_forward(c, ids, n, 0, NULL, all, NULL, &err);
    ck_assert_msg(st == QRUN_OK, "forward: %s", err.msg);
    return all;
}

/* Compare the rows `<pre>.logits` at `<pre>.logits_pos` (vocab slice [0,
 * cols)) with our all-token logits; returns the max relative error. */
static double compare_rows(fixture fx, const char *pre, const float *all, int V)
{
    char nl[128], np[128];
    snprintf(nl, sizeof nl, "%s.logits", pre);
    snprintf(np, sizeof np, "%s.logits_pos", pre);
    const st_tensor *t = st_find(fx.f, nl);
    if (!t)
        return -1;
    size_t npos;
    float *ref = fx_f32(fx, nl, NULL);
    int32_t *pos = fx_i32(fx, np, &npos);
    size_t cols = (size_t)t->shape[1];
    double worst = 0;
    for (size_t r = 0; r < npos; r++) {
        double e = rel_err(all + (size_t)pos[r] * (size_t)V, ref + r * cols, cols);
        if (!(e <= worst))
            worst = e;
    }
    free(ref);
    free(pos);
    return worst;
}

/* ---- f32 fidelity ------------------------------------------------------------------ */

START_TEST(test_f32_logits)
{
    const char *v = VARIANTS[_i];
    bool exact = exact_weights(v);
    qengine *e = load(model_path(v, "src"));
    qctx *c = context(e, QDT_F32, 64, 2);
    fixture fx = fx_open(v);
    int V = qengine_vocab_size(e);
    double worst = 0;
    for (int p = 0; p < n_prompts(v); p++) {
        char name[64], pre[16];
        snprintf(name, sizeof name, "p%d.ids", p);
        snprintf(pre, sizeof pre, "p%d", p);
        size_t n;
        int32_t *ids = fx_i32(fx, name, &n);
        float *all = run_all(c, e, ids, (int)n);
        double r = compare_rows(fx, pre, all, V);
        if (r > worst)
            worst = r;
        free(all);
        free(ids);
    }
    /* f32 source weights rounded to f16 move the logits by about what
     * transformers' own f16 model differs from f32 (index.json) */
    double bound = exact ? 1e-4 : 2e-2;
    fprintf(stderr, "f32 %-20s max rel %.3g (bound %g%s)\n", v, worst, bound,
            exact ? "" : ", f32 source weights rounded to f16 by qconvert");
    ck_assert_msg(worst <= bound, "%s: f32 logits rel err %g > %g", v, worst, bound);
    st_close(fx.f);
    qctx_free(c);
    qengine_free(e);
}
END_TEST

/* ---- f16 / bf16 activations --------------------------------------------------------- */

static void half_case(const char *v, const char *mode, qdtype act)
{
    char key[32];
    snprintf(key, sizeof key, "%s_vs_f32_max_rel", mode);
    qengine *e = load(model_path(v, mode));
    qctx *c = context(e, act, 64, 2);
    fixture fx = fx_open(v);
    int V = qengine_vocab_size(e);
    float *last = malloc((size_t)V * sizeof *last);
    double worst = 0;
    for (int p = 0; p < n_prompts(v); p++) {
        char name[64];
        snprintf(name, sizeof name, "p%d.ids", p);
        size_t n, nref;
        int32_t *ids = fx_i32(fx, name, &n);
        snprintf(name, sizeof name, "p%d.%s.logits_last", p, mode);
        float *ref = fx_f32(fx, name, &nref);
        if (!ref) {
            free(ids);
            continue;
        }
        qerr err = {0};
        ck_assert_msg(qctx_forward(c, ids, (int)n, 0, last, NULL, NULL, &err) == QRUN_OK, "%s",
                      err.msg);
        /* two implementations rounding at the same points but summing in
         * another order differ by up to what rounding itself costs: the
         * bound is 1e-2 or 3x transformers' own distance to f32 */
        double r = rel_err(last, ref, nref), b = 3 * hf_rel(v, key, p);
        if (b < 1e-2)
            b = 1e-2;
        fprintf(stderr, "%-4s %-20s p%d rel %.3g (bound %.3g)\n", mode, v, p, r, b);
        ck_assert_msg(r <= b, "%s %s p%d: rel err %g > %g", v, mode, p, r, b);
        if (r > worst)
            worst = r;
        free(ref);
        free(ids);
    }
    free(last);
    st_close(fx.f);
    qctx_free(c);
    qengine_free(e);
}

START_TEST(test_f16_logits) { half_case(VARIANTS[_i], "f16", QDT_F16); }
END_TEST
START_TEST(test_bf16_logits) { half_case(VARIANTS[_i], "bf16", QDT_BF16); }
END_TEST

/* ---- quantized weights ----------------------------------------------------------- */

static const char *const QMODES[] = {"nf4", "nf4_dq", "fp4", "int8_t6", "int8_t0"};
#define NQMODES (int)(sizeof QMODES / sizeof QMODES[0])

START_TEST(test_quant_logits)
{
    const char *v = VARIANTS[_i / NQMODES], *mode = QMODES[_i % NQMODES];
    qengine *e = load(model_path(v, mode));
    qctx *c = context(e, QDT_F32, 64, 2);
    fixture fx = fx_open(v);
    int V = qengine_vocab_size(e);
    double worst = 0;
    int compared = 0;
    for (int p = 0; p < n_prompts(v); p++) {
        char name[64], pre[32];
        snprintf(pre, sizeof pre, "p%d.%s", p, mode);
        snprintf(name, sizeof name, "%s.logits", pre);
        if (!st_find(fx.f, name))
            continue;
        snprintf(name, sizeof name, "p%d.ids", p);
        size_t n;
        int32_t *ids = fx_i32(fx, name, &n);
        float *all = run_all(c, e, ids, (int)n);
        double r = compare_rows(fx, pre, all, V);
        if (r > worst)
            worst = r;
        compared++;
        free(all);
        free(ids);
    }
    ck_assert_msg(compared > 0, "%s: no %s fixture", v, mode);
    /* same weights as the reference: only f32 summation order differs, and
     * for int8 the activation quantization (exact but discrete) */
    double bound = 1e-4;
    fprintf(stderr, "%-7s %-20s max rel %.3g (bound %g)\n", mode, v, worst, bound);
    ck_assert_msg(worst <= bound, "%s %s: rel err %g > %g", v, mode, worst, bound);
    st_close(fx.f);
    qctx_free(c);
    qengine_free(e);
}
END_TEST

/* ---- KV cache ------------------------------------------------------------------ */

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

/* Greedy generation with the cache equals transformers' generate(), and
 * token-by-token prefill equals the batched one. */
START_TEST(test_kv_cache)
{
    const char *v = VARIANTS[_i];
    qengine *e = load(model_path(v, "src"));
    qctx *c = context(e, QDT_F32, 64, 2);
    qctx *c1 = context(e, QDT_F32, 64, 2);
    fixture fx = fx_open(v);
    int V = qengine_vocab_size(e);
    size_t n;
    int32_t *ids = fx_i32(fx, "p0.ids", &n);
    float *all = run_all(c, e, ids, (int)n);
    float *row = malloc((size_t)V * sizeof *row);
    /* token by token */
    double worst = 0;
    for (size_t t = 0; t < n; t++) {
        qerr err = {0};
        ck_assert_msg(qctx_forward(c1, ids + t, 1, (int)t, row, NULL, NULL, &err) == QRUN_OK,
                      "%s", err.msg);
        double r = rel_err(row, all + t * (size_t)V, (size_t)V);
        if (r > worst)
            worst = r;
    }
    fprintf(stderr, "decode-vs-prefill %-20s max rel %.3g (bound 1e-5)\n", v, worst);
    ck_assert_msg(worst <= 1e-5, "%s: token-by-token vs batched %g", v, worst);

    /* greedy continuation with the cache (only where the fixtures' model
     * has our weights) */
    if (!exact_weights(v))
        goto done;
    size_t ng, nl = 0;
    int32_t *gen = fx_i32(fx, "p0.gen_ids", &ng);
    float *gl = fx_f32(fx, "p0.gen_logits", &nl);
    float *gap = fx_f32(fx, "p0.gen_gap", NULL);
    memcpy(row, all + (n - 1) * (size_t)V, (size_t)V * sizeof *row);
    int pos = (int)n;
    double gworst = 0;
    for (size_t s = 0; s < ng; s++) {
        int tok = argmax(row, V);
        if (gl) {
            double r = rel_err(row, gl + s * (size_t)V, (size_t)V);
            if (r > gworst)
                gworst = r;
        }
        /* only a clear winner must agree (ties within rounding may not) */
        if (gap[s] > 1e-3f)
            ck_assert_msg(tok == gen[s], "%s: step %zu: token %d, transformers %d", v, s, tok,
                          gen[s]);
        tok = gen[s]; /* follow the reference path */
        qerr err = {0};
        ck_assert_msg(qctx_forward(c, &tok, 1, pos++, row, NULL, NULL, &err) == QRUN_OK, "%s",
                      err.msg);
    }
    if (gl) {
        fprintf(stderr, "generate %-20s max rel %.3g vs transformers' cached steps\n", v, gworst);
        ck_assert_msg(gworst <= 1e-4, "%s: generate logits rel err %g", v, gworst);
    }
    free(gen);
    free(gl);
    free(gap);
done:
    free(row);
    free(all);
    free(ids);
    st_close(fx.f);
    qctx_free(c);
    qctx_free(c1);
    qengine_free(e);
}
END_TEST

/* Cached decode equals recomputing the whole sequence (no dynamic rope: a
 * dynamic-NTK model legitimately differs, see test_dynamic_rope). */
START_TEST(test_cache_vs_recompute)
{
    qengine *e = load(model_path("llama-gqa-llama3", "src"));
    qctx *c = context(e, QDT_F32, 64, 2);
    int V = qengine_vocab_size(e);
    int32_t ids[24];
    for (int i = 0; i < 24; i++)
        ids[i] = (i * 37 + 5) % V;
    float *all = run_all(c, e, ids, 24);
    float *row = malloc((size_t)V * sizeof *row);
    qerr err = {0};
    /* prefill 10, then the rest one by one, rewinding once in the middle */
    ck_assert(qctx_forward(c, ids, 10, 0, row, NULL, NULL, &err) == QRUN_OK);
    double worst = rel_err(row, all + 9 * (size_t)V, (size_t)V);
    for (int t = 10; t < 24; t++) {
        ck_assert(qctx_forward(c, ids + t, 1, t, row, NULL, NULL, &err) == QRUN_OK);
        double r = rel_err(row, all + (size_t)t * (size_t)V, (size_t)V);
        if (r > worst)
            worst = r;
    }
    /* rewind: recompute positions 15.. after different tokens were there */
    int32_t junk[3] = {1, 2, 3};
    ck_assert(qctx_forward(c, junk, 3, 15, NULL, NULL, NULL, &err) == QRUN_OK);
    ck_assert(qctx_forward(c, ids + 15, 9, 15, row, NULL, NULL, &err) == QRUN_OK);
    double r = rel_err(row, all + 23 * (size_t)V, (size_t)V);
    if (r > worst)
        worst = r;
    fprintf(stderr, "cache-vs-recompute llama-gqa-llama3 max rel %.3g (bound 1e-5)\n", worst);
    ck_assert_msg(worst <= 1e-5, "cache vs recompute %g", worst);
    /* n_batch smaller than the call: pieces give the same result */
    qctx *cs = context(e, QDT_F32, 5, 2);
    float *all5 = run_all(cs, e, ids, 24);
    double rb = rel_err(all5, all, 24 * (size_t)V);
    ck_assert_msg(rb <= 1e-5, "n_batch 5 vs 64: %g", rb);
    free(all5);
    qctx_free(cs);
    free(row);
    free(all);
    qctx_free(c);
    qengine_free(e);
}
END_TEST

/* Dynamic NTK: with the cache the base follows the growing length (as
 * transformers' generate), recomputation uses the final length. */
START_TEST(test_dynamic_rope)
{
    const char *v = "llama-dynamic-bias";
    qengine *e = load(model_path(v, "src"));
    qctx *c = context(e, QDT_F32, 64, 2);
    fixture fx = fx_open(v);
    int V = qengine_vocab_size(e);
    size_t n, ng;
    int32_t *ids = fx_i32(fx, "p1.ids", &n);
    int32_t *gen = fx_i32(fx, "p1.gen_ids", &ng);
    int32_t *genr = fx_i32(fx, "p1.gen_ids_recompute", NULL);
    float *gl = fx_f32(fx, "p1.gen_logits", NULL);
    float *glr = fx_f32(fx, "p1.gen_logits_recompute", NULL);
    ck_assert(ids && gen && genr && gl && glr);
    int32_t seq[128];
    memcpy(seq, ids, n * sizeof *ids);
    float *row = malloc((size_t)V * sizeof *row);
    qerr err = {0};
    double wc = 0, wr = 0;
    /* cached path */
    ck_assert(qctx_forward(c, seq, (int)n, 0, row, NULL, NULL, &err) == QRUN_OK);
    for (size_t s = 0; s < ng; s++) {
        double r = rel_err(row, gl + s * (size_t)V, (size_t)V);
        if (r > wc)
            wc = r;
        ck_assert(qctx_forward(c, &gen[s], 1, (int)(n + s), row, NULL, NULL, &err) == QRUN_OK);
    }
    /* full recomputation at every step */
    memcpy(seq, ids, n * sizeof *ids);
    for (size_t s = 0; s < ng; s++) {
        ck_assert(qctx_forward(c, seq, (int)(n + s), 0, row, NULL, NULL, &err) == QRUN_OK);
        double r = rel_err(row, glr + s * (size_t)V, (size_t)V);
        if (r > wr)
            wr = r;
        seq[n + s] = genr[s];
    }
    fprintf(stderr, "dynamic rope cached %.3g, recomputed %.3g (bound 1e-4)\n", wc, wr);
    ck_assert_msg(wc <= 1e-4 && wr <= 1e-4, "dynamic rope: cached %g recomputed %g", wc, wr);
    free(row);
    free(ids);
    free(gen);
    free(genr);
    free(gl);
    free(glr);
    st_close(fx.f);
    qctx_free(c);
    qengine_free(e);
}
END_TEST

/* ---- threads, cancel ---------------------------------------------------------------- */

START_TEST(test_threads_identical)
{
    const char *modes[] = {"src", "nf4", "int8_t6"};
    qengine *e = load(model_path("falcon-40b-style", modes[_i]));
    int V = qengine_vocab_size(e);
    int32_t ids[20];
    for (int i = 0; i < 20; i++)
        ids[i] = (i * 13 + 1) % V;
    qctx *c1 = context(e, QDT_F32, 64, 1), *c2 = context(e, QDT_F32, 64, 2),
         *c3 = context(e, QDT_F32, 64, 3);
    float *a = run_all(c1, e, ids, 20), *b = run_all(c2, e, ids, 20), *d = run_all(c3, e, ids, 20);
    ck_assert_msg(memcmp(a, b, 20 * (size_t)V * sizeof(float)) == 0, "1 vs 2 threads differ");
    ck_assert_msg(memcmp(a, d, 20 * (size_t)V * sizeof(float)) == 0, "1 vs 3 threads differ");
    free(a);
    free(b);
    free(d);
    qctx_free(c1);
    qctx_free(c2);
    qctx_free(c3);
    qengine_free(e);
}
END_TEST

START_TEST(test_cancel)
{
    qengine *e = load(model_path("llama-mha", "src"));
    qctx *c = context(e, QDT_F32, 64, 2);
    int32_t ids[4] = {1, 2, 3, 4};
    atomic_int flag = 1;
    qerr err = {0};
    ck_assert_int_eq(qctx_forward(c, ids, 4, 0, NULL, NULL, &flag, &err), QRUN_ERR_CANCELLED);
    atomic_store(&flag, 0);
    float *row = malloc((size_t)qengine_vocab_size(e) * sizeof *row);
    ck_assert(qctx_forward(c, ids, 4, 0, row, NULL, &flag, &err) == QRUN_OK);
    /* bad arguments */
    ck_assert_int_eq(qctx_forward(c, ids, 4, 126, row, NULL, NULL, &err),
                     QRUN_ERR_INVALID_ARGUMENT);
    int32_t bad = qengine_vocab_size(e);
    ck_assert_int_eq(qctx_forward(c, &bad, 1, 0, row, NULL, NULL, &err),
                     QRUN_ERR_INVALID_ARGUMENT);
    free(row);
    qctx_free(c);
    qengine_free(e);
}
END_TEST

/* ---- load: info and bad files ---------------------------------------------------------- */

START_TEST(test_info)
{
    qengine *e = load(model_path("llama-mha", "nf4"));
    qrun_model_info info;
    qengine_info(e, &info);
    ck_assert_str_eq(info.architecture, "llama");
    ck_assert_str_eq(info.weights, "nf4");
    ck_assert_str_eq(info.compute_dtype, "f16");
    ck_assert_int_eq(info.vocab_size, 32000);
    ck_assert(info.n_params > 0 && info.weight_bytes > 0);
    ck_assert(qengine_tokenizer(e) != NULL);
    int ne;
    const int32_t *eos = qengine_eos_ids(e, &ne);
    ck_assert(ne >= 1 && eos[0] == info.eos_id);
    qengine_free(e);
}
END_TEST

/* Rewrite a .qbin with its metadata's architecture replaced (when arch is
 * not NULL) and tensor `drop` left out (when not NULL). */
static void rewrite(const char *src, const char *dst, const char *arch, const char *drop)
{
    qerr err = {0};
    qbin_file *f = qbin_open(src, QBIN_OPEN_SKIP_CHECKSUMS, &err);
    ck_assert_msg(f, "%s", err.msg);
    cJSON *meta = cJSON_Duplicate(qbin_metadata(f), 1);
    if (arch)
        cJSON_ReplaceItemInObjectCaseSensitive(meta, "architecture", cJSON_CreateString(arch));
    qbin_writer *w = qbin_writer_open(dst, &err);
    ck_assert_msg(w, "%s", err.msg);
    for (size_t i = 0; i < qbin_tensor_count(f); i++) {
        const qbin_tensor *t = qbin_tensor_at(f, i);
        if (drop && strcmp(t->name, drop) == 0)
            continue;
        ck_assert_msg(qbin_writer_add(w, t->name, t->dtype, t->ndim, t->shape,
                                      qbin_tensor_data(f, t), t->nbytes, &err),
                      "%s", err.msg);
    }
    ck_assert_msg(qbin_writer_finish(w, meta, &err), "%s", err.msg);
    cJSON_Delete(meta);
    qbin_close(f);
}

START_TEST(test_bad_files)
{
    const char *src = model_path("falcon-7b-style", "nf4");
    char p[1024];
    qerr err = {0};
    snprintf(p, sizeof p, "%s/bad-arch.qbin", g_tmp);
    rewrite(src, p, "gpt-neox", NULL);
    ck_assert(qengine_load(p, NULL, &err) == NULL);
    ck_assert_int_eq(err.code, QRUN_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "gpt-neox"), "%s", err.msg);

    const char *victim = "transformer.h.1.mlp.dense_4h_to_h.weight";
    snprintf(p, sizeof p, "%s/missing.qbin", g_tmp);
    rewrite(src, p, NULL, victim);
    memset(&err, 0, sizeof err);
    ck_assert(qengine_load(p, NULL, &err) == NULL);
    ck_assert_int_eq(err.code, QRUN_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, victim), "%s", err.msg);

    const char *aux = "transformer.h.0.self_attention.query_key_value.weight.absmax";
    rewrite(src, p, NULL, aux);
    memset(&err, 0, sizeof err);
    ck_assert(qengine_load(p, NULL, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "query_key_value"), "%s", err.msg);

    const char *norm = "transformer.ln_f.bias";
    rewrite(src, p, NULL, norm);
    memset(&err, 0, sizeof err);
    ck_assert(qengine_load(p, NULL, &err) == NULL);
    ck_assert_msg(strstr(err.msg, norm), "%s", err.msg);

    snprintf(p, sizeof p, "%s/does-not-exist.qbin", g_tmp);
    memset(&err, 0, sizeof err);
    ck_assert(qengine_load(p, NULL, &err) == NULL);
    ck_assert_int_ne(err.code, QRUN_OK);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("engine");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_f32_logits, 0, NVARIANTS);
    tcase_add_loop_test(tc, test_f16_logits, 0, NVARIANTS);
    tcase_add_loop_test(tc, test_bf16_logits, 0, NVARIANTS);
    tcase_add_loop_test(tc, test_quant_logits, 0, NVARIANTS * NQMODES);
    tcase_add_loop_test(tc, test_kv_cache, 0, NVARIANTS);
    tcase_add_test(tc, test_cache_vs_recompute);
    tcase_add_test(tc, test_dynamic_rope);
    tcase_add_loop_test(tc, test_threads_identical, 0, 3);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_info);
    tcase_add_test(tc, test_bad_files);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/logits/index.json", tu_data_dir());
    size_t len;
    unsigned char *txt = tu_read_file(p, &len);
    if (!txt) {
        fprintf(stderr, "no fixtures at %s\n", p);
        return 77;
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
