/* qeval, the model comparison tool (tools/qeval/):
 *  - the window plan scores every token but the first exactly once, with at
 *    least ctx - stride tokens of context; the row statistics (log-sum-exp,
 *    KL divergence, quantiles, the ids fingerprint) against direct
 *    long-double sums and closed forms;
 *  - on tiny converted models: qeval's JSON (per-window NLL, KLD mean,
 *    median, p99, top-1 agreement, greedy continuations) equals the same
 *    quantities computed here through the public API, one whole window per
 *    eval; a model against itself gives KLD 0, top-1 100 %, every
 *    continuation identical;
 *  - bad inputs: empty text, text shorter than one window, different
 *    vocabularies, same vocabulary size but another tokenizer, usage errors;
 *  - the table, CSV, SVG chart and --generate (JSON, side by side, blocks).
 * With the argument "smollm2" it instead checks the f16 SmolLM2-135M file's
 * perplexity against transformers' (tests/data/ppl/, made by
 * tools/make_ppl_fixture.py) within 0.5 % per window and in total; skipped
 * (77) without models-cache/smollm2-135m-instruct. */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "convert.h"
#include "qrun.h"
#include "testutil.h"
#include "tools/qeval/qeval.h"

static char *tmp;
static char f16_path[4096], nf4_path[4096], falcon_path[4096], swapped_path[4096];
static char text_path[4096], empty_path[4096], short_path[4096];

static const char *qeval_exe(void)
{
    const char *q = getenv("QEVAL");
    return q ? q : "build/qeval";
}

/* A whole file, NUL-terminated (tu_read_file's buffer is not). */
static char *read_text(const char *path, size_t *len)
{
    size_t n = 0;
    unsigned char *raw = tu_read_file(path, &n);
    if (!raw)
        return NULL;
    char *s = malloc(n + 1);
    ck_assert_ptr_nonnull(s);
    memcpy(s, raw, n);
    s[n] = '\0';
    free(raw);
    *len = n;
    return s;
}

/* ---- running qeval ------------------------------------------------------------------ */
typedef struct result {
    int rc;
    char *out, *err;
} result;

static void result_free(result *r)
{
    free(r->out);
    free(r->err);
}

/* Run qeval with the NULL-terminated arguments; COLUMNS set to `columns`
 * (or removed when NULL). */
static result qeval(const char *columns, ...)
{
    const char *argv[64];
    int n = 0;
    argv[n++] = qeval_exe();
    va_list ap;
    va_start(ap, columns);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        ck_assert_int_lt(n, 63);
        argv[n++] = a;
    }
    va_end(ap);
    argv[n] = NULL;
    char outp[4200], errp[4200];
    snprintf(outp, sizeof outp, "%s/stdout", tmp);
    snprintf(errp, sizeof errp, "%s/stderr", tmp);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fo = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0)
            _exit(126);
        if (columns)
            setenv("COLUMNS", columns, 1);
        else
            unsetenv("COLUMNS");
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    result r = {.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status)};
    size_t len;
    r.out = read_text(outp, &len);
    r.err = read_text(errp, &len);
    ck_assert_ptr_nonnull(r.out);
    ck_assert_ptr_nonnull(r.err);
    return r;
}

/* Exit status and a piece of stderr (or stdout). */
static void expect(result r, int rc, const char *needle)
{
    ck_assert_msg(r.rc == rc, "exit %d, want %d; stderr: %s", r.rc, rc, r.err);
    if (needle)
        ck_assert_msg(strstr(r.err, needle) || strstr(r.out, needle),
                      "output does not mention '%s'; stderr: %s", needle, r.err);
}

static cJSON *parse_json(const result *r)
{
    ck_assert_msg(r->rc == 0, "qeval failed (%d): %s", r->rc, r->err);
    cJSON *j = cJSON_Parse(r->out);
    ck_assert_msg(j != NULL, "stdout is not JSON: %.300s", r->out);
    return j;
}

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(cJSON_IsNumber(v), "JSON field %s is not a number", key);
    return v->valuedouble;
}

static bool is_null(const cJSON *o, const char *key)
{
    return cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, key));
}

static const cJSON *item(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(v != NULL, "JSON field %s missing", key);
    return v;
}

/* ---- the window plan ----------------------------------------------------------------- */
/* Windows as qeval documents them: starts 0, stride, 2*stride..., at most
 * ctx tokens, the last reaching n; targets 1..n-1 each scored once, in
 * order, every one with >= ctx - stride tokens of context after the first
 * window. */
static void check_plan(const qe_window *w, int nw, int n, int ctx, int stride)
{
    ck_assert_int_ge(nw, 1);
    int next = 1; /* the next target to be scored */
    for (int i = 0; i < nw; i++) {
        ck_assert_int_eq(w[i].begin, i * stride);
        ck_assert_int_eq(w[i].end, w[i].begin + ctx < n ? w[i].begin + ctx : n);
        ck_assert_int_eq(w[i].first, next);
        ck_assert_int_lt(w[i].first, w[i].end);
        ck_assert_int_gt(w[i].first, w[i].begin);
        if (i > 0)
            ck_assert_int_ge(w[i].first - w[i].begin, ctx - stride);
        next = w[i].end;
    }
    ck_assert_int_eq(next, n);
}

START_TEST(plan_scores_every_token_once)
{
    static const int fixed[][3] = {{10, 10, 1}, {10, 10, 9}, {11, 10, 9}, {11, 10, 5},
                                   {2, 2, 1},   {1000, 7, 3}, {257, 256, 128}, {1024, 256, 128},
                                   {4096, 512, 384}, {203, 50, 17}};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        qe_window *w;
        int nw = qe_plan_windows(fixed[i][0], fixed[i][1], fixed[i][2], &w);
        check_plan(w, nw, fixed[i][0], fixed[i][1], fixed[i][2]);
        free(w);
    }
    tu_rng rng = {tu_seed()};
    for (int it = 0; it < 2000; it++) {
        int ctx = 2 + (int)(tu_next(&rng) % 300);
        int stride = 1 + (int)(tu_next(&rng) % (uint64_t)(ctx - 1));
        int n = ctx + (int)(tu_next(&rng) % 2000);
        qe_window *w;
        int nw = qe_plan_windows(n, ctx, stride, &w);
        check_plan(w, nw, n, ctx, stride);
        free(w);
    }
    qe_window *w = NULL;
    ck_assert_int_eq(qe_plan_windows(100, 10, 10, &w), -1);  /* stride == ctx */
    ck_assert_int_eq(qe_plan_windows(100, 10, 0, &w), -1);
    ck_assert_int_eq(qe_plan_windows(9, 10, 5, &w), -1);     /* shorter than a window */
    ck_assert_int_eq(qe_plan_windows(100, 1, 1, &w), -1);
    ck_assert_ptr_null(w);
}
END_TEST

/* ---- row statistics ------------------------------------------------------------------- */
static long double lse_ref(const float *z, int n)
{
    long double mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++)
        if (z[i] > mx)
            mx = z[i];
    for (int i = 0; i < n; i++)
        s += expl((long double)z[i] - mx);
    return mx + logl(s);
}

START_TEST(stats_match_direct_sums)
{
    enum { V = 1001 };
    tu_rng rng = {tu_seed()};
    float *a = malloc(V * sizeof *a), *b = malloc(V * sizeof *b);
    double *pa = malloc(V * sizeof *pa);
    for (int it = 0; it < 50; it++) {
        float shift = (float)(tu_uniform(&rng) * 200 - 100); /* large offsets: max subtraction */
        for (int i = 0; i < V; i++) {
            a[i] = shift + 3.0f * tu_normal(&rng);
            b[i] = a[i] + (float)(it % 5) * 0.05f * tu_normal(&rng); /* it%5==0: identical */
        }
        if (it % 7 == 3)
            a[it % V] = -INFINITY, b[it % V] = -INFINITY; /* a masked token */
        double la = qe_logsumexp(a, V), lb = qe_logsumexp(b, V);
        ck_assert_msg(fabs(la - (double)lse_ref(a, V)) <= 1e-12 * fabs(la) + 1e-12, "lse %.17g",
                      la);
        qe_softmax(a, la, pa, V);
        double kl = qe_kld(a, la, pa, b, lb, V);
        long double ref = 0, ra = lse_ref(a, V), rb = lse_ref(b, V);
        for (int i = 0; i < V; i++) {
            if (a[i] == -INFINITY)
                continue;
            long double lpa = a[i] - ra, lpb = b[i] - rb;
            ref += expl(lpa) * (lpa - lpb);
        }
        if (it % 5 == 0)
            ck_assert_msg(kl == 0.0, "KLD of a row with itself is %g", kl);
        else
            ck_assert_msg(kl > 0 && fabs(kl - (double)ref) <= 1e-9 * (double)ref + 1e-15,
                          "KLD %.17g, direct %.17Lg", kl, ref);
    }
    /* closed form: two outcomes with probabilities (p, 1-p) and (q, 1-q) */
    double p = 0.3, q = 0.6;
    float zp[2] = {(float)log(p), (float)log(1 - p)}, zq[2] = {(float)log(q), (float)log(1 - q)};
    double lp = qe_logsumexp(zp, 2), lq = qe_logsumexp(zq, 2), pp[2];
    qe_softmax(zp, lp, pp, 2);
    double pf = pp[0]; /* p as the f32 logits carry it */
    double qf = exp((double)zq[0] - lq);
    double want = pf * log(pf / qf) + (1 - pf) * log((1 - pf) / (1 - qf));
    ck_assert_double_eq_tol(qe_kld(zp, lp, pp, zq, lq, 2), want, 1e-12);
    /* argmax: the first on a tie; NaN and +inf logits have no distribution */
    float t[5] = {1, 3, 2, 3, -1};
    ck_assert_int_eq(qe_argmax(t, 5), 1);
    t[2] = NAN;
    ck_assert(isnan(qe_logsumexp(t, 5)));
    t[2] = INFINITY;
    ck_assert(isnan(qe_logsumexp(t, 5)));
    /* quantiles interpolate linearly between order statistics (numpy's default) */
    double v[4] = {4, 1, 3, 2};
    qe_sort(v, 4);
    ck_assert(v[0] == 1 && v[3] == 4);
    ck_assert_double_eq_tol(qe_quantile_sorted(v, 4, 0.5), 2.5, 1e-15);
    ck_assert_double_eq_tol(qe_quantile_sorted(v, 4, 0.99), 3.97, 1e-12);
    ck_assert_double_eq(qe_quantile_sorted(v, 4, 0.0), 1.0);
    ck_assert_double_eq(qe_quantile_sorted(v, 4, 1.0), 4.0);
    ck_assert_double_eq(qe_quantile_sorted(v, 1, 0.99), 1.0);
    /* the ids fingerprint (values from tools/make_ppl_fixture.py's fnv1a64) */
    int32_t ids[4] = {1, -1, 49151, 256};
    ck_assert_uint_eq(qe_ids_hash(ids, 0), 0xcbf29ce484222325ull);
    ck_assert_uint_eq(qe_ids_hash(ids, 4), 0xd19c699cfc2a4fb1ull);
    free(a);
    free(b);
    free(pa);
}
END_TEST

/* ---- tiny models: qeval against a direct computation ----------------------------------- */
typedef struct direct {
    double *win_nll[2];      /* [0] = f16 (base), [1] = nf4 */
    double nll[2];
    double *kld;             /* per scored token, nf4 against f16 */
    long n_kld, top1_same;
} direct;

static qrun_model *load(const char *path)
{
    char err[1024];
    qrun_model_params mp;
    qrun_model_params_init(&mp);
    mp.backend = QRUN_BACKEND_CPU;
    qrun_model *m = NULL;
    ck_assert_msg(qrun_model_load(path, &mp, &m, err, sizeof err) == QRUN_OK, "%s", err);
    return m;
}

static qrun_session *session(qrun_model *m, int n_ctx)
{
    char err[1024];
    qrun_session_params sp;
    qrun_session_params_init(&sp);
    sp.n_ctx = n_ctx;
    sp.kv_type = QRUN_KV_F32;
    qrun_session *s = NULL;
    ck_assert_msg(qrun_session_create(m, &sp, &s, err, sizeof err) == QRUN_OK, "%s", err);
    return s;
}

static int32_t *text_ids(qrun_model *m, size_t *n)
{
    size_t len;
    char *text = read_text(text_path, &len);
    ck_assert_ptr_nonnull(text);
    size_t cap = len + 16;
    int32_t *ids = malloc(cap * sizeof *ids);
    char err[256];
    ck_assert(qrun_tokenize(m, text, len, QRUN_TOKENIZE_ADD_SPECIAL, ids, cap, n, err,
                            sizeof err) == QRUN_OK);
    ck_assert_uint_le(*n, cap);
    free(text);
    return ids;
}

typedef struct gen_ids {
    int32_t ids[64];
    int n;
} gen_ids;

static bool on_token(void *user, int seq, int32_t token, const char *text, size_t len)
{
    (void)seq, (void)text, (void)len;
    gen_ids *g = user;
    if (token >= 0 && g->n < 64)
        g->ids[g->n++] = token;
    return true;
}

static gen_ids greedy(qrun_session *s, const int32_t *ids, int n, int len)
{
    qrun_generate_params gp;
    qrun_generate_params_init(&gp);
    gp.sampler.temperature = 0;
    gp.max_new_tokens = len;
    gp.stop_at_eos = false;
    gen_ids g = {.n = 0};
    ck_assert_msg(qrun_generate_tokens(s, ids, (size_t)n, &gp, on_token, &g, NULL) == QRUN_OK,
                  "%s", qrun_session_last_error(s));
    ck_assert_int_eq(g.n, len);
    return g;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void rel_close(double got, double want, double tol, const char *what)
{
    ck_assert_msg(fabs(got - want) <= tol * fabs(want) + 1e-12, "%s: qeval %.10g, direct %.10g",
                  what, got, want);
}

START_TEST(tiny_json_matches_direct_computation)
{
    enum { CTX = 50, STRIDE = 17, NTOK = 203, EVERY = 40, CLEN = 6 };
    result r = qeval(NULL, "--base", f16_path, "-m", nf4_path, "-m", f16_path, "-f", text_path,
                     "--ctx", "50", "--stride", "17", "--max-tokens", "203", "--cont-every", "40",
                     "--cont-len", "6", "--kv-type", "f32", "--backend", "cpu", "--json", NULL);
    cJSON *j = parse_json(&r);
    ck_assert_int_eq((int)num(j, "n_tokens"), NTOK);
    ck_assert_int_eq((int)num(j, "n_scored"), NTOK - 1);
    ck_assert_int_eq((int)num(j, "ctx"), CTX);
    ck_assert_int_eq((int)num(j, "stride"), STRIDE);
    ck_assert(cJSON_IsTrue(item(j, "bos_first"))); /* the tiny llama3 tokenizer adds BOS */

    /* The windows have the documented shape. */
    const cJSON *jw = item(j, "windows");
    int nw = cJSON_GetArraySize(jw);
    qe_window *w = calloc((size_t)nw, sizeof *w);
    for (int i = 0; i < nw; i++) {
        const cJSON *x = cJSON_GetArrayItem(jw, i);
        w[i] = (qe_window){(int)num(x, "begin"), (int)num(x, "first"), (int)num(x, "end")};
        ck_assert_int_eq((int)num(x, "n_scored"), w[i].end - w[i].first);
    }
    check_plan(w, nw, NTOK, CTX, STRIDE);

    /* Direct computation: each window in one eval, logits of every position. */
    qrun_model *m[2] = {load(f16_path), load(nf4_path)};
    qrun_session *s[2] = {session(m[0], CTX + CLEN), session(m[1], CTX + CLEN)};
    qrun_model_info info;
    qrun_model_get_info(m[0], &info);
    int V = info.vocab_size;
    size_t n_all;
    int32_t *ids = text_ids(m[0], &n_all);
    ck_assert_uint_ge(n_all, NTOK);
    char hash[32];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)qe_ids_hash(ids, NTOK));
    ck_assert_str_eq(item(j, "ids_fnv1a64")->valuestring, hash);

    direct d = {.kld = calloc(NTOK, sizeof(double))};
    float *lg[2] = {malloc((size_t)CTX * V * sizeof(float)), malloc((size_t)CTX * V * sizeof(float))};
    long same_cont = 0;
    int n_cont = 0;
    for (int k = 0; k < 2; k++)
        d.win_nll[k] = calloc((size_t)nw, sizeof(double));
    for (int i = 0; i < nw; i++) {
        int len = w[i].end - w[i].begin;
        for (int k = 0; k < 2; k++) {
            ck_assert(qrun_session_rewind(s[k], 0) == QRUN_OK);
            ck_assert(qrun_session_eval(s[k], ids + w[i].begin, (size_t)len, lg[k]) == QRUN_OK);
        }
        for (int t = w[i].first; t < w[i].end; t++) {
            const float *z[2];
            long double lse[2];
            for (int k = 0; k < 2; k++) {
                z[k] = lg[k] + (size_t)(t - 1 - w[i].begin) * V;
                lse[k] = lse_ref(z[k], V);
                double nll = (double)(lse[k] - z[k][ids[t]]);
                d.win_nll[k][i] += nll;
                d.nll[k] += nll;
            }
            long double kl = 0;
            int a0 = 0, a1 = 0;
            for (int v = 0; v < V; v++) {
                long double l0 = z[0][v] - lse[0], l1 = z[1][v] - lse[1];
                kl += expl(l0) * (l0 - l1);
                if (z[0][v] > z[0][a0])
                    a0 = v;
                if (z[1][v] > z[1][a1])
                    a1 = v;
            }
            d.kld[d.n_kld++] = (double)kl;
            d.top1_same += a0 == a1;
        }
        /* greedy continuations before every target t % EVERY == 0 of this window */
        for (int t = w[i].first; t < w[i].end; t++) {
            if (t % EVERY)
                continue;
            gen_ids g0 = greedy(s[0], ids + w[i].begin, t - w[i].begin, CLEN);
            gen_ids g1 = greedy(s[1], ids + w[i].begin, t - w[i].begin, CLEN);
            int same = 0;
            while (same < CLEN && g0.ids[same] == g1.ids[same])
                same++;
            same_cont += same;
            n_cont++;
        }
    }
    ck_assert_int_eq(n_cont, (NTOK - 1) / EVERY);
    ck_assert_int_eq((int)num(j, "n_continuations"), n_cont);

    const cJSON *models = item(j, "models");
    ck_assert_int_eq(cJSON_GetArraySize(models), 3);
    const cJSON *base = cJSON_GetArrayItem(models, 0), *nf4 = cJSON_GetArrayItem(models, 1),
                *self = cJSON_GetArrayItem(models, 2);
    ck_assert(cJSON_IsTrue(item(base, "is_base")));
    ck_assert(!cJSON_IsTrue(item(nf4, "is_base")));
    ck_assert_str_eq(item(nf4, "quant")->valuestring, "nf4");
    /* f16 KV cache off, the chunked evals of qeval and the whole-window evals
     * here give the same logits up to summation order: 1e-5 relative. */
    const cJSON *mods[2] = {base, nf4};
    for (int k = 0; k < 2; k++) {
        const cJSON *wn = item(mods[k], "window_nll_sum");
        ck_assert_int_eq(cJSON_GetArraySize(wn), nw);
        for (int i = 0; i < nw; i++)
            rel_close(cJSON_GetArrayItem(wn, i)->valuedouble, d.win_nll[k][i], 1e-5,
                      "window nll");
        rel_close(num(mods[k], "nll_sum"), d.nll[k], 1e-5, "nll sum");
        rel_close(num(mods[k], "ppl"), exp(d.nll[k] / (NTOK - 1)), 1e-5, "ppl");
        ck_assert_int_eq((int)num(mods[k], "n_scored"), NTOK - 1);
    }
    double s_kl = 0;
    for (long i = 0; i < d.n_kld; i++)
        s_kl += d.kld[i];
    qsort(d.kld, (size_t)d.n_kld, sizeof(double), cmp_d);
    rel_close(num(nf4, "kld_mean"), s_kl / d.n_kld, 1e-4, "kld mean");
    rel_close(num(nf4, "kld_median"), qe_quantile_sorted(d.kld, (size_t)d.n_kld, 0.5), 1e-4,
              "kld median");
    rel_close(num(nf4, "kld_p99"), qe_quantile_sorted(d.kld, (size_t)d.n_kld, 0.99), 1e-4,
              "kld p99");
    rel_close(num(nf4, "kld_max"), d.kld[d.n_kld - 1], 1e-4, "kld max");
    ck_assert_msg(num(nf4, "kld_mean") > 1e-3, "nf4 against f16 must differ");
    /* An argmax can flip only on a near-tie between the two evaluations. */
    double top1 = 100.0 * (double)d.top1_same / d.n_kld;
    ck_assert_msg(fabs(num(nf4, "top1_pct") - top1) <= 100.0 * 2 / d.n_kld, "top-1 %g vs %g",
                  num(nf4, "top1_pct"), top1);
    ck_assert_double_lt(num(nf4, "top1_pct"), 100.0);
    ck_assert_double_eq_tol(num(nf4, "cont_same_mean"), (double)same_cont / n_cont, 1e-12);
    rel_close(num(nf4, "ppl_delta_pct"),
              100.0 * (num(nf4, "ppl") / num(base, "ppl") - 1.0), 1e-9, "ppl delta");

    /* The same file against itself: nothing differs. */
    ck_assert_double_eq(num(self, "ppl"), num(base, "ppl"));
    ck_assert_double_eq(num(self, "kld_mean"), 0.0);
    ck_assert_double_eq(num(self, "kld_median"), 0.0);
    ck_assert_double_eq(num(self, "kld_p99"), 0.0);
    ck_assert_double_eq(num(self, "kld_max"), 0.0);
    ck_assert_double_eq(num(self, "top1_pct"), 100.0);
    ck_assert_double_eq(num(self, "cont_same_mean"), CLEN);
    ck_assert(is_null(base, "kld_mean") && is_null(base, "window_kld_mean"));

    for (int k = 0; k < 2; k++) {
        qrun_session_free(s[k]);
        qrun_model_free(m[k]);
        free(lg[k]);
        free(d.win_nll[k]);
    }
    free(d.kld);
    free(ids);
    free(w);
    cJSON_Delete(j);
    result_free(&r);
}
END_TEST

/* ---- errors ---------------------------------------------------------------------------- */
START_TEST(bad_inputs_give_clear_errors)
{
    result r = qeval(NULL, "-m", nf4_path, "-f", empty_path, NULL);
    expect(r, 1, "is empty");
    ck_assert(strstr(r.err, empty_path));
    result_free(&r);

    r = qeval(NULL, "-m", nf4_path, "-f", short_path, "--ctx", "64", NULL);
    expect(r, 1, "shorter than one window of 64 tokens");
    ck_assert(strstr(r.err, short_path) && strstr(r.err, " tokens, shorter"));
    result_free(&r);
    r = qeval(NULL, "-m", nf4_path, "-f", text_path, "--ctx", "64", "--max-tokens", "40", NULL);
    expect(r, 1, "is 40 tokens (--max-tokens), shorter than one window of 64");
    result_free(&r);

    r = qeval(NULL, "-m", nf4_path, "--base", falcon_path, "-f", text_path, "--ctx", "32", NULL);
    expect(r, 1, "vocabulary");
    ck_assert(strstr(r.err, nf4_path) && strstr(r.err, falcon_path));
    result_free(&r);

    /* Same vocabulary size, two ids swapped: the text's tokens differ. */
    r = qeval(NULL, "-m", nf4_path, "-m", swapped_path, "-f", text_path, "--ctx", "32", NULL);
    expect(r, 1, "tokenizes");
    ck_assert(strstr(r.err, swapped_path) && strstr(r.err, "differently"));
    result_free(&r);

    r = qeval(NULL, "-m", nf4_path, "-f", text_path, "--ctx", "32", "--stride", "32", NULL);
    expect(r, 2, "--stride 32 must be below --ctx 32");
    result_free(&r);
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/nope.qbin", tmp);
    r = qeval(NULL, "-m", missing, "-f", text_path, NULL);
    expect(r, 1, "nope.qbin");
    result_free(&r);
    r = qeval(NULL, "-m", nf4_path, "-f", missing, NULL);
    expect(r, 1, "nope.qbin");
    result_free(&r);
    r = qeval(NULL, "-f", text_path, NULL);
    expect(r, 2, "missing -m");
    result_free(&r);
    r = qeval(NULL, "-m", nf4_path, NULL);
    expect(r, 2, "missing -f");
    result_free(&r);
    r = qeval(NULL, "-m", nf4_path, "-f", text_path, "--frob", NULL);
    expect(r, 2, "unknown option '--frob'");
    result_free(&r);
    r = qeval(NULL, "-m", nf4_path, "-f", text_path, "--json", "--csv", NULL);
    expect(r, 2, "only one of --json and --csv");
    result_free(&r);
    r = qeval(NULL, "-m", nf4_path, "-f", text_path, "--cont-len", "0", NULL);
    expect(r, 2, "bad --cont-len");
    result_free(&r);
    r = qeval(NULL, "-m", nf4_path, "--generate", NULL);
    expect(r, 2, "--generate needs a prompt");
    result_free(&r);
    r = qeval(NULL, "-m", nf4_path, "-f", text_path, "--backend", "tpu", NULL);
    expect(r, 2, "unknown --backend 'tpu'");
    result_free(&r);
}
END_TEST

/* ---- table, CSV, chart ----------------------------------------------------------------- */
static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

START_TEST(table_csv_and_chart)
{
    char svg[4200], jf[4200], cf[4200];
    snprintf(svg, sizeof svg, "%s/chart.svg", tmp);
    snprintf(jf, sizeof jf, "%s/out.json", tmp);
    snprintf(cf, sizeof cf, "%s/out.csv", tmp);
    result r = qeval(NULL, "--base", f16_path, "-m", nf4_path, "-m", f16_path, "-f", text_path,
                     "--ctx", "40", "--max-tokens", "150", "--cont-every", "50", "--cont-len", "4",
                     "--chart", svg, "--json-file", jf, "--csv-file", cf, NULL);
    expect(r, 0, NULL);
    /* the table: a header, one row per model, the base marked */
    ck_assert_msg(strstr(r.out, "KLD mean") && strstr(r.out, "top-1 %") &&
                      strstr(r.out, "same cont"),
                  "%s", r.out);
    ck_assert(strstr(r.out, "tiny-f16.qbin (base)"));
    ck_assert_int_eq(count(r.out, "tiny-nf4.qbin"), 1);
    ck_assert(strstr(r.out, "windows: 7 of 40 tokens, stride 20"));

    size_t n;
    char *js = read_text(jf, &n);
    ck_assert_ptr_nonnull(js);
    cJSON *j = cJSON_Parse(js);
    ck_assert_ptr_nonnull(j);
    const cJSON *models = item(j, "models");
    ck_assert_int_eq(cJSON_GetArraySize(models), 3);

    /* CSV: a header and 3 rows of 17 fields; ppl equal to the JSON's */
    char *csv = read_text(cf, &n);
    ck_assert_ptr_nonnull(csv);
    ck_assert_int_eq(count(csv, "\n"), 4);
    ck_assert(strncmp(csv, "model,path,is_base,quant,", 25) == 0);
    char *line = strchr(csv, '\n') + 1;
    for (int k = 0; k < 3; k++) {
        char *end = strchr(line, '\n');
        *end = '\0';
        /* fields: the two quoted ones hold no commas here */
        int commas = count(line, ",");
        ck_assert_int_eq(commas, 16);
        char *f = line;
        for (int c = 0; c < 6; c++)
            f = strchr(f, ',') + 1;
        double ppl = strtod(f, NULL);
        rel_close(ppl, num(cJSON_GetArrayItem(models, k), "ppl"), 1e-8, "csv ppl");
        line = end + 1;
    }

    /* SVG: complete, a line per model in the perplexity panel and one per
     * model that differs from the base in the KLD panel, the labels */
    char *s = read_text(svg, &n);
    ck_assert_ptr_nonnull(s);
    ck_assert(strncmp(s, "<?xml", 5) == 0 && strstr(s, "<svg "));
    ck_assert(n > 7 && strcmp(s + n - 7, "</svg>\n") == 0);
    ck_assert_int_eq(count(s, "<polyline"), 3 + 1);
    ck_assert_int_eq(count(s, "<text"), count(s, "</text>"));
    ck_assert(strstr(s, "tiny-nf4.qbin") && strstr(s, "tiny-f16.qbin (base)"));
    ck_assert(strstr(s, "KLD 0")); /* the self comparison, not drawn on a log scale */
    free(s);
    free(csv);
    free(js);
    cJSON_Delete(j);
    result_free(&r);

    /* --csv on stdout; no base: perplexity only */
    r = qeval(NULL, "-m", nf4_path, "-f", text_path, "--ctx", "40", "--max-tokens", "100", "--csv",
              NULL);
    expect(r, 0, NULL);
    ck_assert_int_eq(count(r.out, "\n"), 2);
    result_free(&r);
    r = qeval(NULL, "-m", nf4_path, "-f", text_path, "--ctx", "40", "--max-tokens", "100", NULL);
    expect(r, 0, NULL);
    ck_assert(!strstr(r.out, "KLD"));
    result_free(&r);
}
END_TEST

/* ---- --generate ---------------------------------------------------------------------- */
/* Widest line of s, in code points. */
static int widest_line(const char *s)
{
    int best = 0, w = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\n') {
            w = 0;
            continue;
        }
        if ((*p & 0xc0) != 0x80 && ++w > best)
            best = w;
    }
    return best;
}

START_TEST(generate_modes)
{
    result a = qeval(NULL, "--generate", "--base", f16_path, "-m", nf4_path, "-m", f16_path, "-p",
                     "It is a truth", "-n", "12", "--seed", "7", "--json", NULL);
    result b = qeval(NULL, "--generate", "--base", f16_path, "-m", nf4_path, "-m", f16_path, "-p",
                     "It is a truth", "-n", "12", "--seed", "7", "--json", NULL);
    cJSON *ja = parse_json(&a), *jb = parse_json(&b);
    const cJSON *ma = item(ja, "models"), *mb = item(jb, "models");
    ck_assert_int_eq(cJSON_GetArraySize(ma), 3);
    ck_assert_int_eq((int)num(ja, "seed"), 7);
    char *ids[3];
    for (int k = 0; k < 3; k++) {
        ids[k] = cJSON_PrintUnformatted(item(cJSON_GetArrayItem(ma, k), "generated_ids"));
        char *other = cJSON_PrintUnformatted(item(cJSON_GetArrayItem(mb, k), "generated_ids"));
        ck_assert_str_eq(ids[k], other); /* same seed, same tokens */
        ck_assert_int_gt(cJSON_GetArraySize(item(cJSON_GetArrayItem(ma, k), "generated_ids")), 0);
        free(other);
    }
    ck_assert_str_eq(ids[0], ids[2]); /* the base and the same file */
    for (int k = 0; k < 3; k++)
        free(ids[k]);
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    result_free(&a);
    result_free(&b);

    /* 150 columns: three columns of (150 - 2 * 3) / 3 = 48 characters */
    result r = qeval("150", "--generate", "--base", f16_path, "-m", nf4_path, "-m", f16_path, "-p",
                     "It is a truth", "-n", "40", "--seed", "3", "--temp", "1.5", NULL);
    expect(r, 0, NULL);
    ck_assert_msg(strstr(r.out, " | ") && strstr(r.out, "-+-"), "%s", r.out);
    ck_assert_int_le(widest_line(r.out), 150);
    ck_assert_int_eq(count(r.out, "stop: "), 3);
    result_free(&r);
    /* 100 columns leave 31 per column: labelled blocks one after another */
    r = qeval("100", "--generate", "--base", f16_path, "-m", nf4_path, "-m", f16_path, "-p",
              "It is a truth", "-n", "40", "--seed", "3", NULL);
    expect(r, 0, NULL);
    ck_assert_int_eq(count(r.out, "=== "), 3);
    ck_assert(!strstr(r.out, "-+-"));
    ck_assert(strstr(r.out, "=== tiny-f16.qbin (base) [f16] ==="));
    result_free(&r);
    /* not a terminal and no COLUMNS: blocks; the chat template path works */
    r = qeval(NULL, "--generate", "-m", nf4_path, "-m", f16_path, "-p", "Hello", "-n", "5",
              "--chat", "--temp", "0", NULL);
    expect(r, 0, "=== tiny-nf4.qbin [nf4] ===");
    result_free(&r);
}
END_TEST

/* ---- help and docs --------------------------------------------------------------------- */
START_TEST(help_and_docs)
{
    result r = qeval(NULL, "--help", NULL);
    expect(r, 0, "usage: qeval");
    char doc[4200];
    snprintf(doc, sizeof doc, "%s/../../docs/quality.md", tu_data_dir());
    size_t n;
    char *d = read_text(doc, &n);
    ck_assert_msg(d != NULL, "%s missing", doc);
    /* every option of the help text is documented in docs/quality.md */
    for (const char *p = r.out; (p = strstr(p, " --")) != NULL; p += 3) {
        char flag[64];
        int k = 0;
        flag[k++] = '-';
        flag[k++] = '-';
        for (const char *q = p + 3; (*q >= 'a' && *q <= 'z') || *q == '-'; q++)
            if (k < 62)
                flag[k++] = *q;
        flag[k] = '\0';
        if (k > 3)
            ck_assert_msg(strstr(d, flag), "docs/quality.md does not document %s", flag);
    }
    free(d);
    result_free(&r);
    r = qeval(NULL, "--version", NULL);
    expect(r, 0, "qeval 0.");
    result_free(&r);
}
END_TEST

/* ---- fixtures ---------------------------------------------------------------------------- */
static void convert(const char *dir, const char *out, qconvert_quant q)
{
    qconvert_options o;
    qconvert_options_init(&o);
    o.input_dir = dir;
    o.output_path = out;
    o.quant = q;
    qerr err;
    qerr_clear(&err);
    ck_assert_msg(qconvert_run(&o, NULL, &err) == QRUN_OK, "convert %s: %s", dir, err.msg);
}

/* A copy of a tiny checkpoint whose tokenizer.json has the ids of two
 * vocabulary entries swapped: same vocabulary size, other token ids. */
static void make_swapped_checkpoint(const char *src, const char *dst)
{
    static const char *files[] = {"config.json", "generation_config.json", "model.safetensors",
                                  "tokenizer_config.json", "tokenizer.json"};
    ck_assert_int_eq(mkdir(dst, 0755), 0);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char in[8400], out[8400];
        snprintf(in, sizeof in, "%s/%s", src, files[i]);
        snprintf(out, sizeof out, "%s/%s", dst, files[i]);
        size_t n;
        char *data = read_text(in, &n);
        ck_assert_ptr_nonnull(data);
        if (!strcmp(files[i], "tokenizer.json")) {
            /* "\u0120t" (byte-level " t") is 256 and "he" 257: swap them */
            char *a = strstr(data, "\"\xc4\xa0t\": 256,"), *b = strstr(data, "\"he\": 257,");
            ck_assert_msg(a && b, "tokenizer.json of %s changed: update this test", src);
            memcpy(a + strlen("\"\xc4\xa0t\": "), "257", 3);
            memcpy(b + strlen("\"he\": "), "256", 3);
        }
        ck_assert_int_eq(tu_write_file(out, data, n), 0);
        free(data);
    }
}

static void setup(void)
{
    tmp = tu_tmpdir();
    char src[4200], dir[4200];
    snprintf(src, sizeof src, "%s", tu_data_path("tiny/llama-gqa-llama3"));
    snprintf(f16_path, sizeof f16_path, "%s/tiny-f16.qbin", tmp);
    snprintf(nf4_path, sizeof nf4_path, "%s/tiny-nf4.qbin", tmp);
    snprintf(falcon_path, sizeof falcon_path, "%s/falcon.qbin", tmp);
    snprintf(swapped_path, sizeof swapped_path, "%s/swapped.qbin", tmp);
    convert(src, f16_path, QCONVERT_F16);
    convert(src, nf4_path, QCONVERT_NF4);
    convert(tu_data_path("tiny/falcon-7b-style"), falcon_path, QCONVERT_NF4);
    snprintf(dir, sizeof dir, "%s/swapped", tmp);
    make_swapped_checkpoint(src, dir);
    convert(dir, swapped_path, QCONVERT_NF4);
    snprintf(text_path, sizeof text_path, "%s", tu_data_path("eval/pride-and-prejudice-ch1-6.txt"));
    snprintf(empty_path, sizeof empty_path, "%s/empty.txt", tmp);
    snprintf(short_path, sizeof short_path, "%s/short.txt", tmp);
    ck_assert_int_eq(tu_write_file(empty_path, "", 0), 0);
    ck_assert_int_eq(tu_write_file(short_path, "A short text.", 13), 0);
}

static void teardown(void)
{
    tu_rmtree(tmp);
    free(tmp);
}

/* ---- SmolLM2 against transformers ------------------------------------------------------- */
static const char *smollm2_dir(void) { return tu_smollm2_dir(); }

START_TEST(smollm2_f16_perplexity_matches_transformers)
{
    size_t n;
    char *fx_text = read_text(tu_data_path("ppl/smollm2-135m-instruct-f16.json"), &n);
    ck_assert_ptr_nonnull(fx_text);
    cJSON *fx = cJSON_Parse(fx_text);
    ck_assert_ptr_nonnull(fx);
    const cJSON *run = cJSON_GetArrayItem(item(fx, "runs"), 0); /* the test setting */
    ck_assert_str_eq(item(run, "name")->valuestring, "test");
    char ctx[16], stride[16], maxt[16], text[4200];
    snprintf(ctx, sizeof ctx, "%d", (int)num(run, "ctx"));
    snprintf(stride, sizeof stride, "%d", (int)num(run, "stride"));
    snprintf(maxt, sizeof maxt, "%d", (int)num(run, "max_tokens"));
    snprintf(text, sizeof text, "%s/../../%s", tu_data_dir(), item(fx, "text")->valuestring);

    char f16[4200];
    snprintf(f16, sizeof f16, "%s/smollm2-f16.qbin", tmp);
    convert(smollm2_dir(), f16, QCONVERT_F16);
    /* The model against itself: its perplexity, and a comparison that must
     * find no difference at all. */
    result r = qeval(NULL, "--base", f16, "-m", f16, "-f", text, "--ctx", ctx, "--stride", stride,
                     "--max-tokens", maxt, "--cont-every", "256", "--cont-len", "16", "--json",
                     NULL);
    cJSON *j = parse_json(&r);
    ck_assert_int_eq((int)num(j, "n_tokens"), (int)num(run, "n_tokens"));
    ck_assert_int_eq((int)num(j, "n_tokens_text"), (int)num(fx, "n_tokens_text"));
    ck_assert_str_eq(item(j, "ids_fnv1a64")->valuestring, item(run, "ids_fnv1a64")->valuestring);
    const cJSON *fw = item(run, "windows"), *jw = item(j, "windows");
    int nw = cJSON_GetArraySize(fw);
    ck_assert_int_eq(cJSON_GetArraySize(jw), nw);
    const cJSON *base = cJSON_GetArrayItem(item(j, "models"), 0),
                *self = cJSON_GetArrayItem(item(j, "models"), 1);
    const cJSON *wn = item(base, "window_nll_sum");
    double worst = 0;
    for (int i = 0; i < nw; i++) {
        const cJSON *a = cJSON_GetArrayItem(fw, i), *b = cJSON_GetArrayItem(jw, i);
        ck_assert_int_eq((int)num(a, "begin"), (int)num(b, "begin"));
        ck_assert_int_eq((int)num(a, "first"), (int)num(b, "first"));
        ck_assert_int_eq((int)num(a, "end"), (int)num(b, "end"));
        double want = num(a, "nll_sum"), got = cJSON_GetArrayItem(wn, i)->valuedouble;
        double ppl_rel = fabs(exp((got - want) / num(a, "n_scored")) - 1.0);
        worst = fmax(worst, ppl_rel);
        ck_assert_msg(ppl_rel <= 0.005, "window %d: perplexity differs by %.3g %%", i,
                      100 * ppl_rel);
    }
    double rel = fabs(num(base, "ppl") / num(run, "ppl") - 1.0);
    fprintf(stderr, "smollm2 f16: qeval ppl %.6f, transformers %.6f (%.2e relative; worst window "
                    "%.2e)\n",
            num(base, "ppl"), num(run, "ppl"), rel, worst);
    ck_assert_msg(rel <= 0.005, "perplexity %.6f vs transformers %.6f", num(base, "ppl"),
                  num(run, "ppl"));
    ck_assert_double_eq(num(self, "kld_mean"), 0.0);
    ck_assert_double_eq(num(self, "kld_p99"), 0.0);
    ck_assert_double_eq(num(self, "kld_max"), 0.0);
    ck_assert_double_eq(num(self, "top1_pct"), 100.0);
    ck_assert_int_eq((int)num(self, "n_continuations"), 3);
    ck_assert_double_eq(num(self, "cont_same_mean"), 16.0);
    cJSON_Delete(j);
    cJSON_Delete(fx);
    free(fx_text);
    result_free(&r);
}
END_TEST

int main(int argc, char **argv)
{
    Suite *s = suite_create("qeval");
    if (argc > 1 && !strcmp(argv[1], "smollm2")) {
        char st[4200];
        snprintf(st, sizeof st, "%s/model.safetensors", smollm2_dir());
        if (!tu_file_exists(st)) {
            fprintf(stderr, "SKIP: %s not found (make it with tools/fetch_smollm2.py)\n", st);
            return 77;
        }
        TCase *tc = tcase_create("smollm2");
        tcase_set_timeout(tc, 600);
        tcase_add_unchecked_fixture(tc, setup, teardown);
        tcase_add_test(tc, smollm2_f16_perplexity_matches_transformers);
        suite_add_tcase(s, tc);
        return tu_run(s);
    }
    TCase *unit = tcase_create("unit");
    tcase_add_test(unit, plan_scores_every_token_once);
    tcase_add_test(unit, stats_match_direct_sums);
    suite_add_tcase(s, unit);
    TCase *tc = tcase_create("cli");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, tiny_json_matches_direct_computation);
    tcase_add_test(tc, bad_inputs_give_clear_errors);
    tcase_add_test(tc, table_csv_and_chart);
    tcase_add_test(tc, generate_modes);
    tcase_add_test(tc, help_and_docs);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
