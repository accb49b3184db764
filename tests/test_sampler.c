/* Sampler chain (greedy, temperature, top-k, top-p, min-p, penalty), seeds
 * and sequences, non-finite logits, and the stop-string matcher. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "testutil.h"

static qsampler *mk(const qsampler_params *p, int32_t vocab)
{
    qsampler *s = NULL;
    qerr e = {0};
    ck_assert_msg(qsampler_create(p, vocab, 0, 0, &s, &e) == QRUN_OK, "%s", e.msg);
    return s;
}

/* Plain softmax / temperature only: every truncation off. */
static qsampler_params plain(float t, uint64_t seed)
{
    qsampler_params p;
    qsampler_params_default(&p);
    p.temperature = t;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = seed;
    return p;
}

static int32_t sample1(qsampler *s, const float *l)
{
    int32_t id = -2;
    qerr e = {0};
    /* plain ifs in the hot paths: every ck_assert costs a write in Check */
    if (qsampler_sample(s, l, &id, &e) != QRUN_OK)
        ck_abort_msg("sample: %s", e.msg);
    return id;
}

/* Survivors of the chain as a membership mask + probabilities by id. */
static size_t survivors(qsampler *s, const float *l, int32_t vocab, int *mask, double *prob)
{
    const int32_t *ids;
    const double *pr;
    size_t n;
    qerr e = {0};
    ck_assert_msg(qsampler_filter(s, l, &ids, &pr, &n, &e) == QRUN_OK, "%s", e.msg);
    for (int32_t i = 0; i < vocab; i++) {
        mask[i] = 0;
        if (prob)
            prob[i] = 0.0;
    }
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= vocab || mask[ids[i]])
            ck_abort_msg("bad or repeated id %d", ids[i]);
        mask[ids[i]] = 1;
        if (prob)
            prob[ids[i]] = pr[i];
        sum += pr[i];
    }
    ck_assert_msg(fabs(sum - 1.0) < 1e-12, "probabilities sum to %.17g", sum);
    return n;
}

START_TEST(defaults_and_validation)
{
    qsampler_params p;
    qsampler_params_default(&p);
    ck_assert_float_eq(p.temperature, 0.8f);
    ck_assert_int_eq(p.top_k, 40);
    ck_assert_float_eq(p.top_p, 0.95f);
    ck_assert_float_eq(p.min_p, 0.05f);
    ck_assert_float_eq(p.repeat_penalty, 1.0f);
    ck_assert_int_eq(p.repeat_last_n, 64);
    qsampler *s = NULL;
    qerr e = {0};
    ck_assert_int_eq(qsampler_create(&p, 0, 0, 0, &s, &e), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(s);
    qsampler_params b = p;
    b.temperature = NAN;
    ck_assert_int_eq(qsampler_create(&b, 10, 0, 0, &s, &e), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(e.msg, "temperature"));
    b = p, b.top_p = 1.5f;
    ck_assert_int_eq(qsampler_create(&b, 10, 0, 0, &s, &e), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(e.msg, "top_p"));
    b = p, b.min_p = -0.1f;
    ck_assert_int_eq(qsampler_create(&b, 10, 0, 0, &s, &e), QRUN_ERR_INVALID_ARGUMENT);
    b = p, b.repeat_penalty = 0.0f;
    ck_assert_int_eq(qsampler_create(&b, 10, 0, 0, &s, &e), QRUN_ERR_INVALID_ARGUMENT);
    b = p, b.repeat_last_n = -2;
    ck_assert_int_eq(qsampler_create(&b, 10, 0, 0, &s, &e), QRUN_ERR_INVALID_ARGUMENT);
    b = p, b.repeat_last_n = -1;
    ck_assert_int_eq(qsampler_create(&b, 10, 0, 0, &s, &e), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(e.msg, "n_ctx"));
    ck_assert_int_eq(qsampler_create(&b, 10, 16, 0, &s, &e), QRUN_OK);
    ck_assert_int_eq(qsampler_accept(s, 10, &e), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(qsampler_accept(s, -1, &e), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(qsampler_accept(s, 9, &e), QRUN_OK);
    qsampler_free(s);
}
END_TEST

START_TEST(exp_accuracy)
{
    tu_rng r = {tu_seed()};
    double worst = 0.0;
    for (int i = 0; i < 200000; i++) {
        double x = -tu_uniform(&r) * (i & 1 ? 700.0 : 20.0);
        double got = qsamp_exp(x), want = exp(x);
        double rel = fabs(got - want) / want;
        if (rel > worst)
            worst = rel;
    }
    ck_assert_msg(worst < 2e-15, "worst relative error %g", worst);
    ck_assert(qsamp_exp(0.0) == 1.0);
    ck_assert(qsamp_exp(-INFINITY) == 0.0);
    ck_assert(qsamp_exp(-800.0) == 0.0);
}
END_TEST

START_TEST(greedy_argmax_ties_lowest)
{
    float l[8] = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f, 3.0f, -INFINITY, 1.0f};
    for (int variant = 0; variant < 2; variant++) {
        qsampler_params p;
        qsampler_params_default(&p); /* truncations on: must not matter */
        p.temperature = variant ? -1.0f : 0.0f;
        qsampler *s = mk(&p, 8);
        for (int i = 0; i < 5; i++)
            ck_assert_int_eq(sample1(s, l), 1);
        qsampler_free(s);
    }
    /* random vocabularies: the first maximum */
    tu_rng r = {tu_seed()};
    qsampler_params p = plain(0.0f, 1);
    enum { V = 5000 };
    float *x = malloc(V * sizeof *x);
    qsampler *s = mk(&p, V);
    for (int it = 0; it < 20; it++) {
        for (int i = 0; i < V; i++)
            x[i] = (float)(int)(tu_normal(&r) * 4.0f); /* many ties */
        int best = 0;
        for (int i = 1; i < V; i++)
            if (x[i] > x[best])
                best = i;
        ck_assert_int_eq(sample1(s, x), best);
    }
    qsampler_free(s);
    free(x);
}
END_TEST

/* Sample `n` times and return the chi-square statistic against `want`. */
static double chi_square(qsampler *s, const float *l, int v, const double *want, int n, int *counts)
{
    for (int i = 0; i < v; i++)
        counts[i] = 0;
    for (int i = 0; i < n; i++) {
        int32_t id = sample1(s, l);
        if (id < 0 || id >= v)
            ck_abort_msg("id %d out of range", id);
        counts[id]++;
    }
    double chi = 0.0;
    for (int i = 0; i < v; i++) {
        double e = want[i] * n;
        if (e == 0.0) {
            ck_assert_msg(counts[i] == 0, "id %d has probability 0 but came %d times", i,
                          counts[i]);
            continue;
        }
        chi += (counts[i] - e) * (counts[i] - e) / e;
    }
    return chi;
}

START_TEST(temperature_distribution)
{
    const float l[6] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f, 0.0f};
    const float temps[3] = {1.0f, 0.6f, 2.5f};
    for (int ti = 0; ti < 3; ti++) {
        double want[6], z = 0.0;
        for (int i = 0; i < 6; i++)
            z += want[i] = exp((double)l[i] / temps[ti]);
        for (int i = 0; i < 6; i++)
            want[i] /= z;
        qsampler_params p = plain(temps[ti], 1234 + (uint64_t)ti);
        qsampler *s = mk(&p, 6);
        int counts[6];
        double chi = chi_square(s, l, 6, want, 100000, counts);
        /* 5 degrees of freedom: P(chi2 > 20.5) = 0.001 */
        ck_assert_msg(chi < 20.5, "T=%g chi-square %g", (double)temps[ti], chi);
        /* and the exact probabilities of the filter */
        int mask[6];
        double prob[6];
        ck_assert_uint_eq(survivors(s, l, 6, mask, prob), 6);
        for (int i = 0; i < 6; i++)
            ck_assert_msg(fabs(prob[i] - want[i]) < 1e-6, "T=%g id %d: %g vs %g",
                          (double)temps[ti], i, prob[i], want[i]);
        qsampler_free(s);
    }
}
END_TEST

START_TEST(top_k_exact_and_ties)
{
    const float l[8] = {0.1f, 0.9f, 0.3f, 0.8f, 0.2f, 0.7f, 0.6f, 0.0f};
    qsampler_params p = plain(1.0f, 7);
    p.top_k = 3;
    qsampler *s = mk(&p, 8);
    int mask[8];
    double prob[8];
    ck_assert_uint_eq(survivors(s, l, 8, mask, prob), 3);
    ck_assert(mask[1] && mask[3] && mask[5]);
    double z = exp(0.9) + exp(0.8) + exp(0.7);
    ck_assert(fabs(prob[1] - exp(0.9) / z) < 1e-6);
    ck_assert(fabs(prob[5] - exp(0.7) / z) < 1e-6);
    /* sampling respects it, and matches the renormalised distribution */
    double want[8] = {0};
    want[1] = exp(0.9) / z, want[3] = exp(0.8) / z, want[5] = exp(0.7) / z;
    int counts[8];
    ck_assert(chi_square(s, l, 8, want, 50000, counts) < 13.8); /* 2 dof, p = 0.001 */
    qsampler_free(s);

    /* ties at the boundary: lower ids win, exactly k kept */
    const float t[6] = {1.0f, 2.0f, 2.0f, 3.0f, 2.0f, 2.0f};
    p.top_k = 3;
    s = mk(&p, 6);
    ck_assert_uint_eq(survivors(s, t, 6, mask, NULL), 3);
    ck_assert(mask[3] && mask[1] && mask[2] && !mask[4] && !mask[5]);
    qsampler_free(s);

    /* k >= vocab is a no-op; k = 1 is greedy-like */
    p.top_k = 100;
    s = mk(&p, 6);
    ck_assert_uint_eq(survivors(s, t, 6, mask, NULL), 6);
    qsampler_free(s);

    /* large random vocab against a brute-force count */
    tu_rng r = {tu_seed()};
    enum { V = 32000 };
    float *x = malloc(V * sizeof *x);
    int *m = malloc(V * sizeof *m);
    p.top_k = 40;
    s = mk(&p, V);
    for (int it = 0; it < 10; it++) {
        for (int i = 0; i < V; i++)
            x[i] = (float)(int)(tu_normal(&r) * 30.0f) / 8.0f; /* ties */
        ck_assert_uint_eq(survivors(s, x, V, m, NULL), 40);
        for (int i = 0; i < V; i++) { /* rank of i = how many rank before it */
            int before = 0;
            for (int j = 0; j < V && before < 40; j++)
                if (x[j] > x[i] || (x[j] == x[i] && j < i))
                    before++;
            if (m[i] != (before < 40))
                ck_abort_msg("id %d rank>=%d kept=%d", i, before, m[i]);
        }
    }
    qsampler_free(s);
    free(x);
    free(m);
}
END_TEST

static int cmp_desc_prob(const void *a, const void *b)
{
    const double *x = a, *y = b;
    return (x[0] < y[0]) - (x[0] > y[0]);
}

START_TEST(top_p_smallest_set)
{
    const double pr[5] = {0.5, 0.2, 0.15, 0.1, 0.05};
    float l[5];
    for (int i = 0; i < 5; i++)
        l[5 - 1 - i] = (float)log(pr[i]); /* reversed: ids 4,3,2,1,0 by rank */
    const float ps[6] = {0.3f, 0.69f, 0.71f, 0.84f, 0.86f, 0.99f};
    const size_t keep[6] = {1, 2, 3, 3, 4, 5};
    int mask[5];
    for (int i = 0; i < 6; i++) {
        qsampler_params p = plain(1.0f, 3);
        p.top_p = ps[i];
        qsampler *s = mk(&p, 5);
        ck_assert_msg(survivors(s, l, 5, mask, NULL) == keep[i], "top_p %g", (double)ps[i]);
        for (size_t j = 0; j < keep[i]; j++)
            ck_assert(mask[4 - j]);
        qsampler_free(s);
    }
    /* top_p = 0 keeps the best token only */
    qsampler_params p = plain(1.0f, 3);
    p.top_p = 0.0f;
    qsampler *s = mk(&p, 5);
    ck_assert_uint_eq(survivors(s, l, 5, mask, NULL), 1);
    ck_assert(mask[4]);
    qsampler_free(s);

    /* large vocabularies without top-k (the growing sorted prefix), flat and
     * peaked, against a full sort */
    tu_rng r = {tu_seed()};
    enum { V = 50000 };
    float *x = malloc(V * sizeof *x);
    int *m = malloc(V * sizeof *m);
    double (*ref)[2] = malloc(V * sizeof *ref);
    const float pvals[4] = {0.5f, 0.9f, 0.95f, 0.999f};
    for (int it = 0; it < 8; it++) {
        float scale = it & 1 ? 0.3f : 4.0f;
        p = plain(1.0f, 5);
        p.top_p = pvals[it & 3];
        s = mk(&p, V);
        double mx = -INFINITY;
        for (int i = 0; i < V; i++) {
            x[i] = tu_normal(&r) * scale;
            if (x[i] > mx)
                mx = x[i];
        }
        double z = 0.0;
        for (int i = 0; i < V; i++) {
            ref[i][0] = exp(x[i] - mx);
            ref[i][1] = i;
            z += ref[i][0];
        }
        qsort(ref, V, sizeof *ref, cmp_desc_prob);
        size_t want = V;
        double cum = 0.0;
        for (int i = 0; i < V; i++) {
            cum += ref[i][0];
            if (cum >= p.top_p * z) {
                want = (size_t)i + 1;
                break;
            }
        }
        size_t got = survivors(s, x, V, m, NULL);
        ck_assert_msg(got == want, "scale %g p %g: kept %zu, want %zu", (double)scale,
                      (double)p.top_p, got, want);
        for (size_t i = 0; i < want; i++)
            if (!m[(int)ref[i][1]])
                ck_abort_msg("rank %zu not kept", i);
        qsampler_free(s);
    }
    free(x);
    free(m);
    free(ref);
}
END_TEST

START_TEST(chain_order)
{
    /* probabilities 0.4 0.3 0.2 0.1 */
    float l[4];
    const double pr[4] = {0.4, 0.3, 0.2, 0.1};
    for (int i = 0; i < 4; i++)
        l[i] = (float)log(pr[i]);
    int mask[4];
    double prob[4];
    /* top-p alone at 0.5 needs 2 tokens (0.4 < 0.5 <= 0.7) ... */
    qsampler_params p = plain(1.0f, 1);
    p.top_p = 0.5f;
    qsampler *s = mk(&p, 4);
    ck_assert_uint_eq(survivors(s, l, 4, mask, NULL), 2);
    qsampler_free(s);
    /* ... but after top-k 2 the renormalised top token has 0.57 >= 0.5 */
    p.top_k = 2;
    s = mk(&p, 4);
    ck_assert_uint_eq(survivors(s, l, 4, mask, NULL), 1);
    qsampler_free(s);
    /* truncation sees unscaled probabilities: a high temperature does not
     * widen the set, it only flattens the survivors */
    p = plain(5.0f, 1);
    p.top_p = 0.65f;
    s = mk(&p, 4);
    ck_assert_uint_eq(survivors(s, l, 4, mask, prob), 2);
    double a = exp(l[0] / 5.0), b = exp(l[1] / 5.0);
    ck_assert(fabs(prob[0] - a / (a + b)) < 1e-6);
    qsampler_free(s);
    p = plain(0.05f, 1);
    p.min_p = 0.45f; /* 0.2 / 0.4 = 0.5 >= 0.45, 0.1 / 0.4 < 0.45 */
    s = mk(&p, 4);
    ck_assert_uint_eq(survivors(s, l, 4, mask, NULL), 3);
    ck_assert(!mask[3]);
    qsampler_free(s);
}
END_TEST

START_TEST(min_p_relative_to_max)
{
    const double rel[6] = {0.31, 1.0, 0.5, 0.29, 0.1, 0.3};
    float l[6];
    for (int i = 0; i < 6; i++)
        l[i] = (float)log(rel[i]) + 2.0f;
    qsampler_params p = plain(1.0f, 1);
    p.min_p = 0.3f;
    qsampler *s = mk(&p, 6);
    int mask[6];
    double prob[6];
    size_t n = survivors(s, l, 6, mask, prob);
    /* 0.3 itself sits on the boundary after float rounding: check directly */
    int want5 = exp((double)l[5] - (double)l[1]) >= (double)0.3f;
    ck_assert_uint_eq(n, 3u + (size_t)want5);
    ck_assert(mask[0] && mask[1] && mask[2] && !mask[3] && !mask[4] && mask[5] == want5);
    double z = 0.0;
    for (int i = 0; i < 6; i++)
        if (mask[i])
            z += exp(l[i]);
    ck_assert(fabs(prob[2] - exp(l[2]) / z) < 1e-6);
    qsampler_free(s);
    p.min_p = 1.0f; /* only the maximum (and exact ties of it) */
    s = mk(&p, 6);
    ck_assert_uint_eq(survivors(s, l, 6, mask, NULL), 1);
    ck_assert(mask[1]);
    qsampler_free(s);
}
END_TEST

START_TEST(repeat_penalty_math_and_window)
{
    const float l[6] = {2.0f, -2.0f, 0.0f, 1.0f, 3.0f, -0.5f};
    qsampler_params p = plain(1.0f, 1);
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 3;
    qsampler *s = mk(&p, 6);
    qerr e = {0};
    /* context 4, 0, 1, 2, 0: window (last 3) = 1, 2, 0 */
    const int32_t ctx[5] = {4, 0, 1, 2, 0};
    ck_assert_int_eq(qsampler_accept_many(s, ctx, 5, &e), QRUN_OK);
    const double pen[6] = {1.0, -4.0, 0.0, 1.0, 3.0, -0.5}; /* 0 once, not twice */
    int mask[6];
    double prob[6], z = 0.0;
    ck_assert_uint_eq(survivors(s, l, 6, mask, prob), 6);
    for (int i = 0; i < 6; i++)
        z += exp(pen[i]);
    for (int i = 0; i < 6; i++)
        ck_assert_msg(fabs(prob[i] - exp(pen[i]) / z) < 1e-7, "id %d: %g vs %g", i, prob[i],
                      exp(pen[i]) / z);
    /* greedy sees the penalty */
    qsampler_free(s);
    p.temperature = 0.0f;
    p.repeat_last_n = 5;
    s = mk(&p, 6);
    const float g[6] = {2.0f, -2.0f, 0.0f, 1.6f, 3.0f, -0.5f};
    ck_assert_int_eq(sample1(s, g), 4); /* no history yet */
    ck_assert_int_eq(qsampler_accept_many(s, ctx, 5, &e), QRUN_OK);
    ck_assert_int_eq(sample1(s, g), 3); /* 4: 3 -> 1.5 < 1.6 */
    qsampler_free(s);

    /* whole context (-1) with n_ctx 4 holds the last 4 tokens */
    p = plain(1.0f, 1);
    p.repeat_penalty = 1.5f;
    p.repeat_last_n = -1;
    ck_assert_int_eq(qsampler_create(&p, 6, 4, 0, &s, &e), QRUN_OK);
    ck_assert_int_eq(qsampler_accept_many(s, ctx, 5, &e), QRUN_OK); /* 0 1 2 0 */
    ck_assert_uint_eq(survivors(s, l, 6, mask, prob), 6);
    const double pen2[6] = {2.0 / 1.5, -3.0, 0.0, 1.0, 3.0, -0.5};
    z = 0.0;
    for (int i = 0; i < 6; i++)
        z += exp(pen2[i]);
    for (int i = 0; i < 6; i++)
        ck_assert_msg(fabs(prob[i] - exp(pen2[i]) / z) < 1e-7, "id %d", i);
    /* reset forgets the history */
    qsampler_reset(s);
    ck_assert_uint_eq(survivors(s, l, 6, mask, prob), 6);
    z = 0.0;
    for (int i = 0; i < 6; i++)
        z += exp(l[i]);
    ck_assert(fabs(prob[4] - exp(3.0) / z) < 1e-7);
    qsampler_free(s);

    /* window 0 = off, and penalty 1 = off */
    p.repeat_last_n = 0;
    p.repeat_penalty = 3.0f;
    s = mk(&p, 6);
    ck_assert_int_eq(qsampler_accept_many(s, ctx, 5, &e), QRUN_OK);
    survivors(s, l, 6, mask, prob);
    ck_assert(fabs(prob[4] - exp(3.0) / z) < 1e-7);
    qsampler_free(s);
    p.repeat_last_n = 64;
    p.repeat_penalty = 1.0f;
    s = mk(&p, 6);
    ck_assert_int_eq(qsampler_accept_many(s, ctx, 5, &e), QRUN_OK);
    survivors(s, l, 6, mask, prob);
    ck_assert(fabs(prob[4] - exp(3.0) / z) < 1e-7);
    qsampler_free(s);
}
END_TEST

static void run_seq(qsampler *s, const float *l, int32_t *out, int n)
{
    qerr e = {0};
    for (int i = 0; i < n; i++) {
        out[i] = sample1(s, l);
        ck_assert_int_eq(qsampler_accept(s, out[i], &e), QRUN_OK);
    }
}

START_TEST(seeds_and_sequences)
{
    enum { V = 1000, N = 300 };
    float *l = malloc(V * sizeof *l);
    tu_rng r = {42};
    for (int i = 0; i < V; i++)
        l[i] = tu_normal(&r);
    qsampler_params p;
    qsampler_params_default(&p);
    p.temperature = 1.5f;
    p.top_k = 200;
    p.top_p = 0.98f;
    p.min_p = 0.01f;
    p.repeat_penalty = 1.3f;
    p.seed = 0x123456789abcdefull;
    int32_t a[N], b[N], c[N], d[N];
    qerr e = {0};
    qsampler *s0, *s1, *s2;
    ck_assert_int_eq(qsampler_create(&p, V, 0, 0, &s0, &e), QRUN_OK);
    ck_assert_int_eq(qsampler_create(&p, V, 0, 0, &s1, &e), QRUN_OK);
    run_seq(s0, l, a, N);
    run_seq(s1, l, b, N);
    ck_assert_mem_eq(a, b, sizeof a); /* same seed, same inputs */
    qsampler_reset(s0);
    run_seq(s0, l, c, N);
    ck_assert_mem_eq(a, c, sizeof a); /* reset restarts stream and history */
    qsampler_reseed(s1, p.seed + 1);
    qsampler_reset(s1);
    run_seq(s1, l, d, N);
    ck_assert(memcmp(a, d, sizeof a) != 0); /* another seed */
    qsampler_free(s0);
    qsampler_free(s1);

    /* sequences: different streams; interleaving them changes nothing;
     * a fork equals a fresh sampler of that sequence fed the same tokens */
    ck_assert_int_eq(qsampler_create(&p, V, 0, 0, &s0, &e), QRUN_OK);
    ck_assert_int_eq(qsampler_create(&p, V, 0, 1, &s1, &e), QRUN_OK);
    int32_t i0[N], i1[N];
    for (int i = 0; i < N; i++) {
        i0[i] = sample1(s0, l);
        ck_assert_int_eq(qsampler_accept(s0, i0[i], &e), QRUN_OK);
        i1[i] = sample1(s1, l);
        ck_assert_int_eq(qsampler_accept(s1, i1[i], &e), QRUN_OK);
    }
    ck_assert_mem_eq(i0, a, sizeof a);
    ck_assert(memcmp(i1, a, sizeof a) != 0);
    ck_assert_int_eq(qsampler_create(&p, V, 0, 1, &s2, &e), QRUN_OK);
    run_seq(s2, l, c, N);
    ck_assert_mem_eq(i1, c, sizeof c);
    qsampler_free(s2);
    /* fork after a shared prompt */
    const int32_t prompt[3] = {5, 6, 7};
    qsampler_reset(s1);
    ck_assert_int_eq(qsampler_accept_many(s1, prompt, 3, &e), QRUN_OK);
    ck_assert_int_eq(qsampler_fork(s0, 1, &s2, &e), QRUN_OK);
    qsampler_reset(s2); /* same prompt, from s0's params */
    ck_assert_int_eq(qsampler_accept_many(s2, prompt, 3, &e), QRUN_OK);
    run_seq(s1, l, c, N);
    run_seq(s2, l, d, N);
    ck_assert_mem_eq(c, d, sizeof c);
    qsampler_free(s0);
    qsampler_free(s1);
    qsampler_free(s2);
    free(l);
}
END_TEST

/* Golden ids for a fixed seed: the PRNG, the stream derivation and the exp
 * are ours, so these must be the same on every platform and build. */
START_TEST(golden_stream)
{
    const float l[8] = {0.0f, 0.5f, 1.0f, -0.5f, 0.25f, 0.75f, -1.0f, 0.1f};
    qsampler_params p = plain(1.0f, 2024);
    qsampler *s = mk(&p, 8);
    int32_t got[24];
    for (int i = 0; i < 24; i++)
        got[i] = sample1(s, l);
    static const int32_t want[24] = {2, 5, 4, 5, 7, 7, 5, 6, 0, 6, 5, 7,
                                     2, 4, 5, 3, 5, 2, 3, 5, 7, 7, 1, 3};
    ck_assert_mem_eq(got, want, sizeof want);
    qsampler_free(s);
}
END_TEST

START_TEST(non_finite_logits)
{
    qerr e = {0};
    int32_t id = 5;
    /* NaN at the largest position is never picked */
    float l[5] = {NAN, 1.0f, 0.5f, -INFINITY, 0.9f};
    qsampler_params p = plain(0.0f, 1);
    qsampler *s = mk(&p, 5);
    ck_assert_int_eq(sample1(s, l), 1);
    qsampler_free(s);
    p = plain(3.0f, 9);
    s = mk(&p, 5);
    for (int i = 0; i < 20000; i++) {
        id = sample1(s, l);
        if (id != 1 && id != 2 && id != 4)
            ck_abort_msg("picked %d", id);
    }
    /* all -inf / NaN: an error, id -1 */
    float bad[5] = {-INFINITY, NAN, -INFINITY, NAN, -INFINITY};
    ck_assert_int_eq(qsampler_sample(s, bad, &id, &e), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(id, -1);
    ck_assert(strstr(e.msg, "-inf"));
    /* +inf: only those tokens, uniformly */
    float pinf[5] = {1.0f, INFINITY, 1e30f, INFINITY, NAN};
    int cnt[5] = {0};
    for (int i = 0; i < 20000; i++)
        cnt[sample1(s, pinf)]++;
    ck_assert(cnt[0] == 0 && cnt[2] == 0 && cnt[4] == 0);
    ck_assert_msg(abs(cnt[1] - cnt[3]) < 600, "%d vs %d", cnt[1], cnt[3]);
    qsampler_free(s);
    p = plain(0.0f, 1);
    s = mk(&p, 5);
    ck_assert_int_eq(sample1(s, pinf), 1);
    /* huge finite logits do not overflow */
    float big[5] = {3e38f, -3e38f, 2.9e38f, 0.0f, -1.0f};
    ck_assert_int_eq(sample1(s, big), 0);
    qsampler_free(s);
    p = plain(1.0f, 1);
    s = mk(&p, 5);
    ck_assert_int_eq(sample1(s, big), 0);
    ck_assert_int_eq(qsampler_sample(s, NULL, &id, &e), QRUN_ERR_INVALID_ARGUMENT);
    qsampler_free(s);
}
END_TEST

START_TEST(large_vocab_defaults)
{
    enum { V = 128256 };
    float *l = malloc(V * sizeof *l);
    tu_rng r = {tu_seed()};
    for (int i = 0; i < V; i++)
        l[i] = tu_normal(&r) * 3.0f;
    qsampler_params p;
    qsampler_params_default(&p);
    p.repeat_penalty = 1.1f;
    qsampler *s = mk(&p, V);
    qerr e = {0};
    for (int i = 0; i < 200; i++) {
        int32_t id = sample1(s, l);
        if (id < 0 || id >= V || qsampler_accept(s, id, &e) != QRUN_OK)
            ck_abort_msg("id %d: %s", id, e.msg);
        l[(i * 7919) % V] += 0.5f;
    }
    /* top-p only over the full vocabulary */
    qsampler_free(s);
    p.top_k = 0;
    s = mk(&p, V);
    for (int i = 0; i < 20; i++)
        ck_assert(sample1(s, l) < V);
    qsampler_free(s);
    free(l);
}
END_TEST

/* ---- stop strings ---- */

/* Feed `chunks` (NULL-terminated), collect the emitted text; returns the
 * stop index (-1 when none; then the flush is appended). */
static int run_stop(const char *const *stops, int n, const char *const *chunks, char *out,
                    size_t *out_len, int flush)
{
    qstop *st = NULL;
    qerr e = {0};
    ck_assert_msg(qstop_create(stops, n, &st, &e) == QRUN_OK, "%s", e.msg);
    size_t o = 0;
    int stop = -1;
    for (int i = 0; chunks[i]; i++) {
        qstop_result r;
        ck_assert_int_eq(qstop_feed(st, chunks[i], strlen(chunks[i]), &r, &e), QRUN_OK);
        memcpy(out + o, r.text, r.len);
        o += r.len;
        if (r.stop_index >= 0) {
            stop = r.stop_index;
            ck_assert(qstop_stopped(st));
        }
    }
    if (flush) {
        qstop_result r;
        qstop_flush(st, &r);
        memcpy(out + o, r.text, r.len);
        o += r.len;
    }
    out[o] = '\0';
    *out_len = o;
    qstop_free(st);
    return stop;
}

START_TEST(stop_split_across_chunks)
{
    const char *stops[] = {"</s>"};
    const char *chunks[] = {"Hello wor", "ld<", "/", "s> and more", NULL};
    char out[256];
    size_t n;
    ck_assert_int_eq(run_stop(stops, 1, chunks, out, &n, 1), 0);
    ck_assert_str_eq(out, "Hello world");

    /* the held prefix is released as soon as it cannot match any more */
    qstop *st = NULL;
    qerr e = {0};
    ck_assert_int_eq(qstop_create(stops, 1, &st, &e), QRUN_OK);
    qstop_result r;
    ck_assert_int_eq(qstop_feed(st, "ab</", 4, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 2);
    ck_assert(memcmp(r.text, "ab", 2) == 0);
    ck_assert_int_eq(qstop_feed(st, "x", 1, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 3);
    ck_assert(memcmp(r.text, "</x", 3) == 0);
    ck_assert_int_eq(r.stop_index, -1);
    qstop_free(st);
}
END_TEST

START_TEST(stop_overlapping_prefixes)
{
    const char *stops[] = {"abab", "abac"};
    char out[256];
    size_t n;
    const char *c1[] = {"xab", "a", "c", "tail", NULL};
    ck_assert_int_eq(run_stop(stops, 2, c1, out, &n, 1), 1);
    ck_assert_str_eq(out, "x");
    const char *c2[] = {"ab", "ab", "ab", NULL}; /* "abab" inside "ababab" */
    ck_assert_int_eq(run_stop(stops, 2, c2, out, &n, 1), 0);
    ck_assert_str_eq(out, "");
    const char *c3[] = {"aba", "ba", "b", NULL}; /* "ababab": match at 0 */
    ck_assert_int_eq(run_stop(stops, 2, c3, out, &n, 1), 0);
    ck_assert_str_eq(out, "");
    const char *c4[] = {"aab", "aab", "ac!", NULL}; /* a a b a a b a c ! → "abac" at 4 */
    ck_assert_int_eq(run_stop(stops, 2, c4, out, &n, 1), 1);
    ck_assert_str_eq(out, "aaba");
    const char *c5[] = {"abaXab", "aY", NULL}; /* near misses, no match */
    ck_assert_int_eq(run_stop(stops, 2, c5, out, &n, 1), -1);
    ck_assert_str_eq(out, "abaXabaY");
}
END_TEST

START_TEST(stop_several_and_start)
{
    const char *stops[] = {"\n\nUser:", "###", "STOP"};
    char out[256];
    size_t n;
    const char *c1[] = {"Answer.\n", "\nUse", "r: hi", NULL};
    ck_assert_int_eq(run_stop(stops, 3, c1, out, &n, 1), 0);
    ck_assert_str_eq(out, "Answer."); /* "\n\nUser:" starts at the first \n */
    const char *c2[] = {"a #", "# STO", "P ##", "#", NULL}; /* STOP is first */
    ck_assert_int_eq(run_stop(stops, 3, c2, out, &n, 1), 2);
    ck_assert_str_eq(out, "a ## ");
    const char *c3[] = {"###", "more", NULL}; /* match at the very start */
    ck_assert_int_eq(run_stop(stops, 3, c3, out, &n, 1), 1);
    ck_assert_str_eq(out, "");
    ck_assert_uint_eq(n, 0);
    /* the first to complete wins, wherever it starts */
    const char *s2[] = {"abcd", "bc"};
    const char *c4[] = {"xabcd", NULL};
    ck_assert_int_eq(run_stop(s2, 2, c4, out, &n, 1), 1);
    ck_assert_str_eq(out, "xa");
    const char *c4b[] = {"xab", "cd", NULL};
    ck_assert_int_eq(run_stop(s2, 2, c4b, out, &n, 1), 1);
    ck_assert_str_eq(out, "xa");
    /* equal ends: the longest; duplicates: list order */
    const char *s3[] = {"cd", "bcd", "bcd"};
    ck_assert_int_eq(run_stop(s3, 3, c4, out, &n, 1), 1);
    ck_assert_str_eq(out, "xa");
    /* after a match nothing more is emitted, flush included */
    qstop *st = NULL;
    qerr e = {0};
    ck_assert_int_eq(qstop_create(stops, 3, &st, &e), QRUN_OK);
    qstop_result r;
    ck_assert_int_eq(qstop_feed(st, "x###y", 5, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 1);
    ck_assert_int_eq(r.stop_index, 1);
    ck_assert_int_eq(qstop_feed(st, "zzz", 3, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 0);
    ck_assert_int_eq(r.stop_index, 1);
    qstop_flush(st, &r);
    ck_assert_uint_eq(r.len, 0);
    qstop_reset(st);
    ck_assert(!qstop_stopped(st));
    ck_assert_int_eq(qstop_feed(st, "ok", 2, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 2);
    qstop_free(st);
}
END_TEST

START_TEST(stop_no_match_flush_and_errors)
{
    const char *stops[] = {"<|end|>"};
    char out[256];
    size_t n;
    const char *c1[] = {"some ", "text <|en", NULL};
    ck_assert_int_eq(run_stop(stops, 1, c1, out, &n, 1), -1);
    ck_assert_str_eq(out, "some text <|en");
    ck_assert_int_eq(run_stop(stops, 1, c1, out, &n, 0), -1);
    ck_assert_str_eq(out, "some text "); /* held without the flush */
    /* no stop strings at all: everything passes */
    const char *c2[] = {"abc", "", "def", NULL};
    ck_assert_int_eq(run_stop(NULL, 0, c2, out, &n, 0), -1);
    ck_assert_str_eq(out, "abcdef");
    qstop *st = NULL;
    qerr e = {0};
    const char *bad[] = {"x", ""};
    ck_assert_int_eq(qstop_create(bad, 2, &st, &e), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(e.msg, "empty"));
    ck_assert_ptr_null(st);
    /* chunks longer than the initial buffer */
    ck_assert_int_eq(qstop_create(stops, 1, &st, &e), QRUN_OK);
    char *big = malloc(5000);
    memset(big, 'q', 5000);
    memcpy(big + 4000, "<|end|>", 7);
    qstop_result r;
    ck_assert_int_eq(qstop_feed(st, big, 5000, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 4000);
    ck_assert_int_eq(r.stop_index, 0);
    free(big);
    qstop_free(st);
}
END_TEST

START_TEST(stop_utf8_never_split)
{
    /* "é" = C3 A9, "€" = E2 82 AC, "😀" = F0 9F 98 80 */
    const char *stops[] = {"END"};
    qstop *st = NULL;
    qerr e = {0};
    ck_assert_int_eq(qstop_create(stops, 1, &st, &e), QRUN_OK);
    qstop_result r;
    ck_assert_int_eq(qstop_feed(st, "caf\xc3", 4, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 3);
    ck_assert_int_eq(qstop_feed(st, "\xa9 \xe2\x82", 4, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 3);
    ck_assert(memcmp(r.text, "\xc3\xa9 ", 3) == 0);
    ck_assert_int_eq(qstop_feed(st, "\xac\xf0\x9f", 3, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 3);
    ck_assert(memcmp(r.text, "\xe2\x82\xac", 3) == 0);
    ck_assert_int_eq(qstop_feed(st, "\x98", 1, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 0);
    ck_assert_int_eq(qstop_feed(st, "\x80" "E", 2, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 4); /* the emoji; "E" held as a prefix of END */
    ck_assert(memcmp(r.text, "\xf0\x9f\x98\x80", 4) == 0);
    /* flush releases an incomplete tail too */
    ck_assert_int_eq(qstop_feed(st, "x\xe2\x82", 3, &r, &e), QRUN_OK);
    ck_assert_uint_eq(r.len, 2);
    qstop_flush(st, &r);
    ck_assert_uint_eq(r.len, 2);
    ck_assert(memcmp(r.text, "\xe2\x82", 2) == 0);
    qstop_free(st);
    /* multi-byte stop string */
    const char *s2[] = {"\xe2\x80\x94STOP"}; /* em dash */
    char out[64];
    size_t n;
    const char *c[] = {"a\xe2", "\x80", "\x94ST", "OP", NULL};
    ck_assert_int_eq(run_stop(s2, 1, c, out, &n, 1), 0);
    ck_assert_str_eq(out, "a");
}
END_TEST

/* Randomised: the streaming result equals a one-shot search over the whole
 * text, whatever the chunking, and no emitted byte is ever retracted. */
START_TEST(stop_random_chunking)
{
    tu_rng r = {tu_seed()};
    const char *stops[] = {"aab", "abab", "ba"};
    for (int it = 0; it < 3000; it++) {
        char text[64];
        int len = 1 + (int)(tu_next(&r) % 40);
        for (int i = 0; i < len; i++)
            text[i] = "abx"[tu_next(&r) % 3];
        text[len] = '\0';
        int ns = 1 + (int)(tu_next(&r) % 3);
        /* reference: smallest end, then longest, then list order */
        int ref_pos = -1, ref_k = -1;
        for (int end = 1; end <= len && ref_k < 0; end++)
            for (int k = 0; k < ns; k++) {
                int sl = (int)strlen(stops[k]);
                if (sl <= end && strncmp(text + end - sl, stops[k], (size_t)sl) == 0 &&
                    (ref_k < 0 || sl > (int)strlen(stops[ref_k])))
                    ref_pos = end - sl, ref_k = k;
            }
        qstop *st = NULL;
        qerr e = {0};
        ck_assert_int_eq(qstop_create(stops, ns, &st, &e), QRUN_OK);
        char out[64];
        size_t o = 0;
        int got_k = -1;
        for (int i = 0; i < len && got_k < 0;) {
            int cl = 1 + (int)(tu_next(&r) % 5);
            if (cl > len - i)
                cl = len - i;
            qstop_result res;
            ck_assert_int_eq(qstop_feed(st, text + i, (size_t)cl, &res, &e), QRUN_OK);
            memcpy(out + o, res.text, res.len);
            o += res.len;
            ck_assert(memcmp(out, text, o) == 0);
            got_k = res.stop_index;
            i += cl;
        }
        if (got_k < 0) {
            qstop_result res;
            qstop_flush(st, &res);
            memcpy(out + o, res.text, res.len);
            o += res.len;
        }
        ck_assert_int_eq(got_k, ref_k);
        ck_assert_uint_eq(o, ref_pos < 0 ? (size_t)len : (size_t)ref_pos);
        ck_assert(memcmp(out, text, o) == 0);
        qstop_free(st);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("sampler");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, defaults_and_validation);
    tcase_add_test(tc, exp_accuracy);
    tcase_add_test(tc, greedy_argmax_ties_lowest);
    tcase_add_test(tc, temperature_distribution);
    tcase_add_test(tc, top_k_exact_and_ties);
    tcase_add_test(tc, top_p_smallest_set);
    tcase_add_test(tc, chain_order);
    tcase_add_test(tc, min_p_relative_to_max);
    tcase_add_test(tc, repeat_penalty_math_and_window);
    tcase_add_test(tc, seeds_and_sequences);
    tcase_add_test(tc, golden_stream);
    tcase_add_test(tc, non_finite_logits);
    tcase_add_test(tc, large_vocab_defaults);
    suite_add_tcase(s, tc);
    TCase *ts = tcase_create("stop");
    tcase_add_test(ts, stop_split_across_chunks);
    tcase_add_test(ts, stop_overlapping_prefixes);
    tcase_add_test(ts, stop_several_and_start);
    tcase_add_test(ts, stop_no_match_flush_and_errors);
    tcase_add_test(ts, stop_utf8_never_split);
    tcase_add_test(ts, stop_random_chunking);
    suite_add_tcase(s, ts);
    return tu_run(s);
}
