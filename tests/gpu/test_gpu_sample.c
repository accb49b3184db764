/* GPU sampling (src/kernels/sample.cu) against the host sampler
 * (src/sampler.c, qsampler_sample) on fresh random logits.
 *
 * For every case a qsampler A is created with a seed, fed a penalty window
 * (100 accepted ids drawn with repeats, so the ring has wrapped), and forked
 * into B (same seed, sequence and history). B's accessors give the GPU its
 * inputs: the parameters, the window ids and, unless greedy, the draw
 * (qsampler_draw), which is the 64-bit output A's qsampler_sample consumes
 * next. The GPU id must equal A's id.
 *
 * Inputs: vocab 1001, 32000, 65024, 152064; logits normal (several scales),
 * LLM-like peaked, heavily tied, nearly all equal (the radix select down to
 * the id bits), +0/-0 mixes, 97% -inf, few and many +inf, nearly all NaN,
 * all dropped (both sides must fail: GPU -1, host INVALID_ARGUMENT), and
 * huge values that the penalty overflows to +inf. Parameters: greedy (with
 * and without penalty), the defaults, top-k, top-p and min-p alone, top_k 0
 * with top_p 0.9, plain temperature, very low and very high temperatures,
 * top_k 1024 (the largest one-block k), top_k 3000 and 5000 (the sorted
 * path), top_p 0, top_k 1, penalties above and below 1.
 *
 * Bound: ids must be equal. The GPU adds large sums of weights in another
 * order than the host (kernels/sample.h), which can only matter when the
 * draw's u, or the top-p target, lies within the rounding of those sums of a
 * cumulative boundary. A disagreement is allowed only if a long-double
 * reference of the chain puts u or the target within 1e-12 (relative to the
 * total) of a boundary, and at most MAX_BOUNDARY times per run (none is
 * expected: the chance per sample is about 1e-13). The same reference must
 * agree with the host's id under the same rule (this checks the walk order
 * that both follow). GPU results must also repeat exactly, match when
 * replayed from a captured CUDA graph, and the output is poisoned before
 * every call. QRUN_TEST_QUICK=1 (compute-sanitizer) runs fewer sizes. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda/device.h"
#include "kernels/sample.h"
#include "sampler.h"
#include "testutil.h"

#define MAX_BOUNDARY 3
#define BOUNDARY_REL 1e-12
#define WINDOW_ACCEPTED 100
#define REPEAT_LAST_N 64
#define POISON_ID ((int32_t)0xabababab)

static tu_rng rng;
static int quick;
static cudaStream_t stream;

#define CUDA_OK(call)                                                                         \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        ck_assert_msg(e_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));            \
    } while (0)

static void setup(void)
{
    rng.s = tu_seed();
    CUDA_OK(cudaStreamCreate(&stream));
}

static void teardown(void) { cudaStreamDestroy(stream); }

/* ---- inputs ------------------------------------------------------------------ */

enum {
    L_NORMAL,
    L_PEAKED,
    L_TIES,
    L_EQUAL,
    L_ZEROS,
    L_MASKED,
    L_PINF_FEW,
    L_PINF_MANY,
    L_NAN_MOST,
    L_ALL_DROPPED,
    L_HUGE,
    L_KINDS
};
static const char *const kind_name[L_KINDS] = {
    "normal", "peaked", "ties", "equal", "zeros", "masked",
    "pinf-few", "pinf-many", "nan-most", "all-dropped", "huge"};

static int rand_id(int vocab) { return (int)(tu_next(&rng) % (uint64_t)vocab); }

static void fill_logits(float *l, int vocab, int kind)
{
    static const float scales[3] = {0.5f, 2.0f, 5.0f};
    const float scale = scales[tu_next(&rng) % 3];
    for (int i = 0; i < vocab; i++)
        l[i] = tu_normal(&rng) * scale;
    switch (kind) {
    case L_NORMAL:
        break;
    case L_PEAKED: /* a language model's shape: a few tokens far above the rest */
        for (int i = 0; i < vocab; i++)
            l[i] = tu_normal(&rng) * 1.5f;
        for (int j = 0; j < 20; j++)
            l[rand_id(vocab)] += 6.0f + 8.0f * (float)tu_uniform(&rng);
        break;
    case L_TIES:
        for (int i = 0; i < vocab; i++)
            l[i] = (float)(int)(tu_normal(&rng) * 6.0f) * 0.5f;
        break;
    case L_EQUAL:
        for (int i = 0; i < vocab; i++)
            l[i] = 1.25f;
        for (int j = 0; j < 10; j++)
            l[rand_id(vocab)] = 1.25f + (float)(j % 3) * 0.125f;
        break;
    case L_ZEROS:
        for (int i = 0; i < vocab; i++) {
            uint64_t r = tu_next(&rng) % 8;
            l[i] = r < 3 ? 0.0f : r < 6 ? -0.0f : (float)(r - 6) * 0.25f - 0.125f;
        }
        break;
    case L_MASKED:
        for (int i = 0; i < vocab; i++) {
            uint64_t r = tu_next(&rng) % 100;
            if (r < 97)
                l[i] = -INFINITY;
            else if (r == 97)
                l[i] = NAN;
        }
        break;
    case L_PINF_FEW:
        for (int j = 0; j < 3; j++)
            l[rand_id(vocab)] = INFINITY;
        for (int j = 0; j < 5; j++)
            l[rand_id(vocab)] = NAN;
        break;
    case L_PINF_MANY: {
        int m = vocab / 2 < 1500 ? vocab / 2 : 1500;
        for (int j = 0; j < m; j++)
            l[rand_id(vocab)] = INFINITY;
        break;
    }
    case L_NAN_MOST:
        for (int i = 0; i < vocab; i++)
            l[i] = NAN;
        for (int j = 0; j < 7; j++)
            l[rand_id(vocab)] = tu_normal(&rng);
        break;
    case L_ALL_DROPPED:
        for (int i = 0; i < vocab; i++)
            l[i] = tu_next(&rng) & 1 ? NAN : -INFINITY;
        break;
    case L_HUGE: /* |l| up to 3e38: a penalty below 1 overflows some to +inf */
        for (int i = 0; i < vocab; i++)
            l[i] = (float)(tu_uniform(&rng) * 6e38 - 3e38);
        break;
    }
}

typedef struct pset {
    const char *name;
    float t;
    int32_t k;
    float top_p, min_p, pen;
} pset;

static const pset psets[] = {
    {"greedy", 0.0f, 40, 0.95f, 0.05f, 1.0f},
    {"greedy+penalty", 0.0f, 0, 1.0f, 0.0f, 1.5f},
    {"defaults", 0.8f, 40, 0.95f, 0.05f, 1.0f},
    {"defaults+penalty", 0.8f, 40, 0.95f, 0.05f, 1.3f},
    {"top-k 40", 1.0f, 40, 1.0f, 0.0f, 1.0f},
    {"top-p 0.95", 1.0f, 0, 0.95f, 0.0f, 1.0f},
    {"min-p 0.05", 1.0f, 0, 1.0f, 0.05f, 1.0f},
    {"k0 p0.9 T0.7", 0.7f, 0, 0.9f, 0.0f, 1.0f},
    {"plain", 1.0f, 0, 1.0f, 0.0f, 1.0f},
    {"cold", 0.01f, 40, 0.95f, 0.05f, 1.0f},
    {"frozen", 1e-30f, 0, 0.9f, 0.0f, 1.0f},
    {"hot", 50.0f, 0, 0.9f, 0.0f, 1.0f},
    {"hot plain+penalty", 100.0f, 0, 1.0f, 0.0f, 1.1f},
    {"k1024", 1.2f, 1024, 0.99f, 0.01f, 1.0f},
    {"k5000", 1.0f, 5000, 1.0f, 0.0f, 1.0f},
    {"k100 p0.9 pen0.8", 0.9f, 100, 0.9f, 0.02f, 0.8f},
    {"top-p 0", 1.0f, 40, 0.0f, 0.0f, 1.0f},
    {"k1", 1.0f, 1, 1.0f, 0.0f, 1.0f},
    {"k3000 p0.5 m0.1", 1.0f, 3000, 0.5f, 0.1f, 1.2f},
};
#define N_PSETS ((int)(sizeof psets / sizeof psets[0]))

static qsampler_params params_of(const pset *ps, uint64_t seed)
{
    qsampler_params p;
    qsampler_params_default(&p);
    p.temperature = ps->t;
    p.top_k = ps->k;
    p.top_p = ps->top_p;
    p.min_p = ps->min_p;
    p.repeat_penalty = ps->pen;
    p.repeat_last_n = REPEAT_LAST_N;
    p.seed = seed;
    return p;
}

/* ---- the reference: the chain in long double, for the boundary check ---------------- */

typedef struct ref_cand {
    float l;
    int32_t id;
    double e; /* exp(l - l_max), then the temperature weight */
} ref_cand;

static int rank_cmp(const void *pa, const void *pb)
{
    const ref_cand *a = pa, *b = pb;
    if (a->l != b->l)
        return a->l > b->l ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static int id_cmp(const void *pa, const void *pb)
{
    const ref_cand *a = pa, *b = pb;
    return (a->id > b->id) - (a->id < b->id);
}

typedef struct ref_result {
    int32_t id;      /* -1: nothing survives the clean-up */
    size_t n0, n1, n_topp, n_final;
    int rank;        /* walk order */
    double dist;     /* relative distance of u or the top-p target to a boundary */
} ref_result;

/* The chain of sampler.h with the sums in long double and the walk in the
 * order the header names; exp and every decision value in double as the
 * host computes them. */
static void reference(const float *logits, int vocab, const qsampler_params *p,
                      const int32_t *win, size_t nw, uint64_t draw, ref_cand *c,
                      unsigned char *seen, ref_result *r)
{
    memset(r, 0, sizeof *r);
    r->id = -1;
    r->dist = INFINITY;
    const int pen = p->repeat_penalty != 1.0f && nw > 0;
    memset(seen, 0, (size_t)vocab);
    if (pen)
        for (size_t j = 0; j < nw; j++)
            seen[win[j]] = 1;
    size_t n = 0, npinf = 0;
    for (int i = 0; i < vocab; i++) {
        float l = logits[i];
        if (pen && seen[i])
            l = l > 0.0f ? l / p->repeat_penalty : l * p->repeat_penalty;
        if (!(l > -INFINITY))
            continue;
        npinf += l == INFINITY;
        c[n].l = l;
        c[n++].id = i;
    }
    if (npinf) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (c[i].l == INFINITY) {
                c[m] = c[i];
                c[m++].l = 0.0f;
            }
        n = m;
    }
    r->n0 = n;
    if (n == 0)
        return;
    if (!(p->temperature > 0.0f)) {
        size_t b = 0;
        for (size_t i = 1; i < n; i++)
            if (rank_cmp(&c[i], &c[b]) < 0)
                b = i;
        r->id = c[b].id;
        r->n1 = r->n_topp = r->n_final = 1;
        return;
    }
    qsort(c, n, sizeof *c, rank_cmp);
    const int cut = p->top_k > 0 && (size_t)p->top_k < n;
    if (cut)
        n = (size_t)p->top_k;
    r->n1 = n;
    const double maxl = c[0].l;
    const int topp = p->top_p < 1.0f && n > 1;
    for (size_t i = 0; i < n; i++)
        c[i].e = qsamp_exp((double)c[i].l - maxl);
    if (topp) {
        long double z = 0.0L, s = 0.0L;
        for (size_t i = 0; i < n; i++)
            z += c[i].e;
        const long double target = (long double)p->top_p * z;
        size_t keep = n;
        for (size_t i = 0; i < n; i++) {
            s += c[i].e;
            double d = (double)(fabsl(s - target) / z);
            if (d < r->dist)
                r->dist = d;
            if (keep == n && s >= target)
                keep = i + 1;
        }
        n = keep;
    }
    r->n_topp = n;
    if (p->min_p > 0.0f && n > 1) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (c[i].e >= (double)p->min_p)
                c[m++] = c[i];
        n = m;
    }
    r->n_final = n;
    r->rank = cut || topp;
    if (!r->rank)
        qsort(c, n, sizeof *c, id_cmp);
    long double total = 0.0L;
    for (size_t i = 0; i < n; i++) {
        c[i].e = qsamp_exp(((double)c[i].l - maxl) / (double)p->temperature);
        total += c[i].e;
    }
    const long double u = (long double)qsampler_draw_unit(draw) * total;
    long double acc = 0.0L;
    size_t pick = n;
    for (size_t i = 0; i < n; i++) {
        acc += c[i].e;
        double d = (double)(fabsl(acc - u) / total);
        if (d < r->dist)
            r->dist = d;
        if (pick == n && u < acc)
            pick = i;
    }
    if (pick == n)
        pick = n - 1;
    r->id = c[pick].id;
}

/* ---- one case ---------------------------------------------------------------------- */

typedef struct ctx {
    int vocab_max;
    float *logits;
    ref_cand *cand;
    unsigned char *seen;
    float *d_logits;
    int32_t *d_recent, *d_out;
    void *d_scratch;
    size_t scratch_bytes;
    int samples, boundary, failures;
} ctx;

static void ctx_init(ctx *x, int vocab_max)
{
    memset(x, 0, sizeof *x);
    x->vocab_max = vocab_max;
    x->logits = malloc((size_t)vocab_max * sizeof *x->logits);
    x->cand = malloc((size_t)vocab_max * sizeof *x->cand);
    x->seen = malloc((size_t)vocab_max);
    ck_assert(x->logits && x->cand && x->seen);
    x->scratch_bytes = qk_sample_scratch_size(vocab_max);
    ck_assert_msg(x->scratch_bytes > 0, "qk_sample_scratch_size(%d) failed", vocab_max);
    CUDA_OK(cudaMalloc((void **)&x->d_logits, (size_t)vocab_max * sizeof(float)));
    CUDA_OK(cudaMalloc((void **)&x->d_recent, REPEAT_LAST_N * sizeof(int32_t)));
    CUDA_OK(cudaMalloc((void **)&x->d_out, sizeof(int32_t)));
    CUDA_OK(cudaMalloc(&x->d_scratch, x->scratch_bytes));
}

static void ctx_free(ctx *x)
{
    cudaFree(x->d_logits);
    cudaFree(x->d_recent);
    cudaFree(x->d_out);
    cudaFree(x->d_scratch);
    free(x->logits);
    free(x->cand);
    free(x->seen);
}

static qk_sample_params kparams_of(const qsampler_params *p)
{
    qk_sample_params k = {p->temperature, p->top_k, p->top_p, p->min_p, p->repeat_penalty};
    return k;
}

/* One GPU call with a poisoned output; returns the id. */
static int32_t gpu_sample(ctx *x, int vocab, const qk_sample_params *kp, int n_recent,
                          uint64_t draw)
{
    CUDA_OK(cudaMemsetAsync(x->d_out, 0xab, sizeof(int32_t), stream));
    qerr err = {0};
    ck_assert_msg(qk_sample(x->d_logits, vocab, kp, x->d_recent, n_recent, draw, x->d_scratch,
                            x->scratch_bytes, x->d_out, stream, &err),
                  "qk_sample: %s", err.msg);
    int32_t id;
    CUDA_OK(cudaMemcpyAsync(&id, x->d_out, sizeof id, cudaMemcpyDeviceToHost, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    return id;
}

static void run_case(ctx *x, int vocab, int kind, const pset *ps, int draws)
{
    fill_logits(x->logits, vocab, kind);
    const qsampler_params sp = params_of(ps, tu_next(&rng));
    qsampler *a = NULL, *b = NULL;
    qerr e = {0};
    ck_assert_msg(qsampler_create(&sp, vocab, 0, 0, &a, &e) == QRUN_OK, "%s", e.msg);
    /* the window: repeats from a small pool, some of them top tokens */
    int32_t pool[24], accepted[WINDOW_ACCEPTED];
    for (int j = 0; j < 24; j++)
        pool[j] = rand_id(vocab);
    for (int j = 0; j < 8; j++) { /* a few of the largest logits */
        int best = rand_id(vocab);
        for (int t = 0; t < 64; t++) {
            int c = rand_id(vocab);
            if (x->logits[c] > x->logits[best])
                best = c;
        }
        pool[j] = best;
    }
    for (int j = 0; j < WINDOW_ACCEPTED; j++)
        accepted[j] = pool[tu_next(&rng) % 24];
    ck_assert(qsampler_accept_many(a, accepted, WINDOW_ACCEPTED, &e) == QRUN_OK);
    ck_assert_msg(qsampler_fork(a, 0, &b, &e) == QRUN_OK, "%s", e.msg);

    /* the GPU's inputs, from B's accessors */
    const qsampler_params *bp = qsampler_get_params(b);
    ck_assert_int_eq(qsampler_window_capacity(b), REPEAT_LAST_N);
    int32_t win[REPEAT_LAST_N];
    size_t nw = qsampler_window(b, win, REPEAT_LAST_N);
    ck_assert_uint_eq(nw, REPEAT_LAST_N);
    for (size_t j = 0; j < nw; j++) /* the last 64 accepted, oldest first */
        ck_assert_int_eq(win[j], accepted[WINDOW_ACCEPTED - REPEAT_LAST_N + j]);
    ck_assert_int_eq(qsampler_is_greedy(b), !(ps->t > 0.0f));
    const qk_sample_params kp = kparams_of(bp);
    CUDA_OK(cudaMemcpy(x->d_logits, x->logits, (size_t)vocab * sizeof(float),
                       cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(x->d_recent, win, nw * sizeof(int32_t), cudaMemcpyHostToDevice));
    /* scratch contents must not matter */
    CUDA_OK(cudaMemset(x->d_scratch, tu_next(&rng) & 1 ? 0xff : 0x5a, x->scratch_bytes));

    const int greedy = qsampler_is_greedy(b);
    for (int d = 0; d < (greedy ? 1 : draws); d++) {
        const uint64_t draw = greedy ? 0 : qsampler_draw(b);
        const int32_t gid = gpu_sample(x, vocab, &kp, (int)nw, draw);
        if (d == 0) { /* deterministic */
            int32_t again = gpu_sample(x, vocab, &kp, (int)nw, draw);
            ck_assert_msg(again == gid, "GPU repeat gave %d then %d", gid, again);
        }
        int32_t hid = -2;
        qrun_status hst = qsampler_sample(a, x->logits, &hid, &e);
        ref_result r;
        reference(x->logits, vocab, bp, win, nw, draw, x->cand, x->seen, &r);
        x->samples++;
        if (hst != QRUN_OK) {
            ck_assert_int_eq(hst, QRUN_ERR_INVALID_ARGUMENT);
            if (gid != -1 || r.id != -1) {
                x->failures++;
                fprintf(stderr, "FAIL V%d %s [%s]: host error, gpu %d, ref %d\n", vocab,
                        kind_name[kind], ps->name, gid, r.id);
            }
            continue;
        }
        const int ref_ok = r.id == hid || r.dist <= BOUNDARY_REL;
        if (gid == hid && ref_ok)
            continue;
        const int boundary = r.dist <= BOUNDARY_REL;
        if (boundary)
            x->boundary++;
        else
            x->failures++;
        fprintf(stderr,
                "%s V%d %s [%s]: host %d gpu %d ref %d (n0 %zu n1 %zu topp %zu final %zu "
                "%s order, boundary distance %.3g, draw 0x%016llx)\n",
                boundary ? "boundary" : "FAIL", vocab, kind_name[kind], ps->name, hid, gid,
                r.id, r.n0, r.n1, r.n_topp, r.n_final, r.rank ? "rank" : "id", r.dist,
                (unsigned long long)draw);
    }
    qsampler_free(a);
    qsampler_free(b);
}

START_TEST(matches_host_sampler)
{
    static const int vocabs[4] = {1001, 32000, 65024, 152064};
    const int n_vocabs = quick ? 2 : 4;
    ctx x;
    ctx_init(&x, vocabs[n_vocabs - 1]);
    for (int vi = 0; vi < n_vocabs; vi++)
        for (int kind = 0; kind < L_KINDS; kind++) {
            if (quick && vi > 0 && kind != L_PEAKED && kind != L_EQUAL && kind != L_PINF_MANY)
                continue;
            for (int pi = 0; pi < N_PSETS; pi++)
                run_case(&x, vocabs[vi], kind, &psets[pi], quick ? 1 : 3);
        }
    fprintf(stderr, "gpu_sample: %d samples, %d boundary cases, %d failures\n", x.samples,
            x.boundary, x.failures);
    const int failures = x.failures, boundary = x.boundary;
    ctx_free(&x);
    ck_assert_msg(failures == 0, "%d samples differ from the host sampler", failures);
    ck_assert_msg(boundary <= MAX_BOUNDARY, "%d boundary cases (at most %d allowed)", boundary,
                  MAX_BOUNDARY);
}
END_TEST

/* The same call captured in a CUDA graph and replayed gives the direct
 * call's id (no synchronization, allocation or host work inside). */
START_TEST(graph_replay)
{
    const int vocab = 32000;
    ctx x;
    ctx_init(&x, vocab);
    static const int which[3] = {0, 2, 7}; /* greedy, path K, path V sorted */
    for (int w = 0; w < 3; w++) {
        fill_logits(x.logits, vocab, L_PEAKED);
        CUDA_OK(cudaMemcpy(x.d_logits, x.logits, (size_t)vocab * sizeof(float),
                           cudaMemcpyHostToDevice));
        const qsampler_params sp = params_of(&psets[which[w]], 5);
        const qk_sample_params kp = kparams_of(&sp);
        const uint64_t draw = tu_next(&rng);
        const int32_t direct = gpu_sample(&x, vocab, &kp, 0, draw);
        ck_assert_int_ge(direct, 0);
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        qerr err = {0};
        bool ok = qk_sample(x.d_logits, vocab, &kp, x.d_recent, 0, draw, x.d_scratch,
                            x.scratch_bytes, x.d_out, stream, &err);
        CUDA_OK(cudaStreamEndCapture(stream, &graph));
        ck_assert_msg(ok, "captured qk_sample: %s", err.msg);
        CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
        for (int rep = 0; rep < 2; rep++) {
            CUDA_OK(cudaMemsetAsync(x.d_out, 0xab, sizeof(int32_t), stream));
            CUDA_OK(cudaGraphLaunch(exec, stream));
            int32_t id;
            CUDA_OK(cudaMemcpyAsync(&id, x.d_out, sizeof id, cudaMemcpyDeviceToHost, stream));
            CUDA_OK(cudaStreamSynchronize(stream));
            ck_assert_msg(id == direct, "%s: graph %d, direct %d", psets[which[w]].name, id,
                          direct);
        }
        CUDA_OK(cudaGraphExecDestroy(exec));
        CUDA_OK(cudaGraphDestroy(graph));
    }
    ctx_free(&x);
}
END_TEST

START_TEST(bad_arguments_refused)
{
    const int vocab = 1001;
    ctx x;
    ctx_init(&x, vocab);
    qk_sample_params kp = {0.8f, 40, 0.95f, 0.05f, 1.0f};
    CUDA_OK(cudaMemset(x.d_out, 0xab, sizeof(int32_t)));
    qerr err = {0};
    ck_assert(!qk_sample(x.d_logits, vocab, &kp, NULL, 0, 1, x.d_scratch, x.scratch_bytes - 1,
                         x.d_out, stream, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_INVALID_ARGUMENT);
    kp.top_p = 1.5f;
    ck_assert(!qk_sample(x.d_logits, vocab, &kp, NULL, 0, 1, x.d_scratch, x.scratch_bytes,
                         x.d_out, stream, &err));
    kp.top_p = 0.9f;
    ck_assert(!qk_sample(x.d_logits, 0, &kp, NULL, 0, 1, x.d_scratch, x.scratch_bytes, x.d_out,
                         stream, &err));
    ck_assert(!qk_sample(x.d_logits, vocab, &kp, NULL, 5, 1, x.d_scratch, x.scratch_bytes,
                         x.d_out, stream, &err));
    CUDA_OK(cudaStreamSynchronize(stream));
    int32_t id;
    CUDA_OK(cudaMemcpy(&id, x.d_out, sizeof id, cudaMemcpyDeviceToHost));
    ck_assert_int_eq(id, POISON_ID); /* nothing was launched */
    ck_assert_uint_eq(qk_sample_scratch_size(0), 0);
    ctx_free(&x);
}
END_TEST

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

/* Not a check: the time per call of each path, on the log. */
START_TEST(timing)
{
    if (quick)
        return;
    static const int vocabs[2] = {32000, 152064};
    static const int which[6] = {0, 2, 13, 7, 8, 14};
    ctx x;
    ctx_init(&x, vocabs[1]);
    cudaEvent_t t0, t1;
    CUDA_OK(cudaEventCreate(&t0));
    CUDA_OK(cudaEventCreate(&t1));
    for (int vi = 0; vi < 2; vi++) {
        const int vocab = vocabs[vi];
        fill_logits(x.logits, vocab, L_PEAKED);
        CUDA_OK(cudaMemcpy(x.d_logits, x.logits, (size_t)vocab * sizeof(float),
                           cudaMemcpyHostToDevice));
        for (int w = 0; w < 6; w++) {
            const pset *ps = &psets[which[w]];
            const qsampler_params sp = params_of(ps, 3);
            const qk_sample_params kp = kparams_of(&sp);
            const int iters = 200;
            qerr err = {0};
            for (int i = 0; i < iters + 10; i++) {
                if (i == 10)
                    CUDA_OK(cudaEventRecord(t0, stream));
                ck_assert(qk_sample(x.d_logits, vocab, &kp, x.d_recent, 0, tu_next(&rng),
                                    x.d_scratch, x.scratch_bytes, x.d_out, stream, &err));
            }
            CUDA_OK(cudaEventRecord(t1, stream));
            CUDA_OK(cudaEventSynchronize(t1));
            float ms = 0.0f, ms_graph = 0.0f;
            CUDA_OK(cudaEventElapsedTime(&ms, t0, t1));
            /* the same call captured once and replayed (launch costs mostly gone) */
            cudaGraph_t graph;
            cudaGraphExec_t exec;
            CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
            const bool ok = qk_sample(x.d_logits, vocab, &kp, x.d_recent, 0, tu_next(&rng),
                                      x.d_scratch, x.scratch_bytes, x.d_out, stream, &err);
            CUDA_OK(cudaStreamEndCapture(stream, &graph));
            ck_assert(ok);
            CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
            for (int i = 0; i < iters + 10; i++) {
                if (i == 10)
                    CUDA_OK(cudaEventRecord(t0, stream));
                CUDA_OK(cudaGraphLaunch(exec, stream));
            }
            CUDA_OK(cudaEventRecord(t1, stream));
            CUDA_OK(cudaEventSynchronize(t1));
            CUDA_OK(cudaEventElapsedTime(&ms_graph, t0, t1));
            CUDA_OK(cudaGraphExecDestroy(exec));
            CUDA_OK(cudaGraphDestroy(graph));
            qsampler *s = NULL;
            qerr e = {0};
            ck_assert(qsampler_create(&sp, vocab, 0, 0, &s, &e) == QRUN_OK);
            int32_t id;
            const double h0 = now_us();
            for (int i = 0; i < 20; i++)
                ck_assert(qsampler_sample(s, x.logits, &id, &e) == QRUN_OK);
            const double host_us = (now_us() - h0) / 20;
            qsampler_free(s);
            printf("gpu_sample timing: vocab %6d %-14s GPU %6.1f us/call (stream), %6.1f (graph); "
                   "host %7.1f us/call\n",
                   vocab, ps->name, 1000.0 * ms / iters, 1000.0 * ms_graph / iters, host_us);
        }
    }
    CUDA_OK(cudaEventDestroy(t0));
    CUDA_OK(cudaEventDestroy(t1));
    ctx_free(&x);
}
END_TEST

int main(void)
{
    if (cuda_device_count(NULL) <= 0)
        return 77;
    const char *q = getenv("QRUN_TEST_QUICK");
    quick = q && atoi(q) != 0;
    Suite *s = suite_create("gpu_sample");
    TCase *tc = tcase_create("sample");
    tcase_set_timeout(tc, 0);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, bad_arguments_refused);
    tcase_add_test(tc, matches_host_sampler);
    tcase_add_test(tc, graph_replay);
    tcase_add_test(tc, timing);
    suite_add_tcase(s, tc);
    /* The CUDA driver is initialized above and a forked child cannot use
     * it, so the tests run in this process (no per-test timeout then). */
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
