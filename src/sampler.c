/* Token sampling (penalty → top-k → top-p → min-p → temperature → draw) and
 * the streaming stop-string matcher. See sampler.h and docs/sampling.md. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Bit-identical results across platforms need a*b+c to stay two roundings. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ---- exp without libm ------------------------------------------------------ */

/* 2^(j/32), j = 0..31, correctly rounded. */
static const double exp2_tab[32] = {
    0x1.0000000000000p+0, 0x1.059b0d3158574p+0, 0x1.0b5586cf9890fp+0, 0x1.11301d0125b51p+0,
    0x1.172b83c7d517bp+0, 0x1.1d4873168b9aap+0, 0x1.2387a6e756238p+0, 0x1.29e9df51fdee1p+0,
    0x1.306fe0a31b715p+0, 0x1.371a7373aa9cbp+0, 0x1.3dea64c123422p+0, 0x1.44e086061892dp+0,
    0x1.4bfdad5362a27p+0, 0x1.5342b569d4f82p+0, 0x1.5ab07dd485429p+0, 0x1.6247eb03a5585p+0,
    0x1.6a09e667f3bcdp+0, 0x1.71f75e8ec5f74p+0, 0x1.7a11473eb0187p+0, 0x1.82589994cce13p+0,
    0x1.8ace5422aa0dbp+0, 0x1.93737b0cdc5e5p+0, 0x1.9c49182a3f090p+0, 0x1.a5503b23e255dp+0,
    0x1.ae89f995ad3adp+0, 0x1.b7f76f2fb5e47p+0, 0x1.c199bdd85529cp+0, 0x1.cb720dcef9069p+0,
    0x1.d5818dcfba487p+0, 0x1.dfc97337b9b5fp+0, 0x1.ea4afa2a490dap+0, 0x1.f50765b6e4540p+0,
};

static inline double exp_neg(double x)
{
    if (!(x > -708.0)) /* also -inf and NaN */
        return 0.0;
    if (x >= 0.0)
        x = 0.0;
    /* x = (32 m + j) ln2/32 + r, |r| <= ln2/64; ln2/32 is split so that
     * k * HI is exact (HI has 32 significant bits, |k| < 2^15). */
    static const double INV = 0x1.71547652b82fep+5; /* 32 / ln2 */
    static const double HI = 0x1.62e42fee00000p-6;
    static const double LO = 0x1.a39ef35793c76p-38;
    double kd = x * INV;
    int k = -(int)(0.5 - kd); /* nearest, kd <= 0 */
    double t1 = (double)k * HI;
    double hi = x - t1;
    double t2 = (double)k * LO;
    double r = hi - t2;
    /* e^r - 1 to r^6 / 6!: truncation < 1e-17 for |r| <= 0.0109 */
    double p = 1.0 / 720.0;
    double t;
    t = p * r, p = t + 1.0 / 120.0;
    t = p * r, p = t + 1.0 / 24.0;
    t = p * r, p = t + 1.0 / 6.0;
    t = p * r, p = t + 0.5;
    t = p * r, p = t + 1.0;
    p = p * r; /* e^r - 1 */
    int j = k & 31;
    int m = (k - j) / 32; /* exact, in [-1022, 0] */
    double tj = exp2_tab[j];
    double v = p * tj;
    v = tj + v;
    /* 2^m: a normal double built from its bits. */
    uint64_t bits = (uint64_t)(m + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return v * scale;
}

double qsamp_exp(double x) { return exp_neg(x); }

/* ---- PRNG: splitmix64 to seed, xoshiro256** to draw ------------------------- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* The stream of sequence `seq`: the seed is hashed, the sequence index is
 * mixed in and hashed again, and that state seeds the four words. */
static void rng_seed(uint64_t s[4], uint64_t seed, uint64_t seq)
{
    uint64_t st = seed;
    uint64_t h = splitmix64(&st);
    st = h ^ (seq * 0xd1b54a32d192ed03ull);
    uint64_t h2 = splitmix64(&st);
    st = h2;
    for (int i = 0; i < 4; i++)
        s[i] = splitmix64(&st);
    if (!(s[0] | s[1] | s[2] | s[3])) /* the one forbidden state */
        s[0] = 1;
}

double qsampler_draw_unit(uint64_t draw) /* [0, 1), 53 bits, exact */
{
    return (double)(draw >> 11) * 0x1p-53;
}

/* ---- parameters ------------------------------------------------------------- */

void qsampler_params_default(qsampler_params *p)
{
    p->temperature = QSAMPLER_DEFAULT_TEMPERATURE;
    p->top_k = QSAMPLER_DEFAULT_TOP_K;
    p->top_p = QSAMPLER_DEFAULT_TOP_P;
    p->min_p = QSAMPLER_DEFAULT_MIN_P;
    p->repeat_penalty = QSAMPLER_DEFAULT_REPEAT_PENALTY;
    p->repeat_last_n = QSAMPLER_DEFAULT_REPEAT_LAST_N;
    p->seed = 0;
}

qrun_status qsampler_params_check(const qsampler_params *p, qerr *err)
{
    if (!p)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: params is NULL");
    if (!isfinite(p->temperature))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: temperature %g is not finite",
                        (double)p->temperature);
    if (!(p->top_p >= 0.0f && p->top_p <= 1.0f))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: top_p %g is outside [0, 1]",
                        (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: min_p %g is outside [0, 1]",
                        (double)p->min_p);
    if (!(p->repeat_penalty > 0.0f) || !isfinite(p->repeat_penalty))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "sampler: repeat_penalty %g must be finite and > 0",
                        (double)p->repeat_penalty);
    if (p->repeat_last_n < -1)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "sampler: repeat_last_n %d must be >= -1", (int)p->repeat_last_n);
    return QRUN_OK;
}

/* ---- the sampler ------------------------------------------------------------ */

typedef struct qsamp_cand {
    double w; /* exp(logit - max): top-p mass, then the final weight */
    float logit;
    int32_t id;
} qsamp_cand;

struct qsampler {
    qsampler_params p;
    int32_t vocab;
    int32_t n_ctx;
    uint64_t seq;
    uint64_t rng[4];
    qsamp_cand *cand; /* [vocab] */
    double *w;        /* [vocab] probabilities handed out by filter */
    int32_t *ids;     /* [vocab] surviving ids handed out by filter */
    uint8_t *seen;    /* [vocab] all zero between calls */
    int32_t *hist;    /* ring of the last hist_cap accepted tokens */
    int32_t hist_cap, hist_len, hist_pos;
    /* How the survivors of the last run_chain are to be walked by the draw:
     * rank_walk: rank order (else id order); partitioned: c[] is only
     * partitioned by rank (more than QSAMPLER_SORTED_WALK_MAX survivors),
     * the draw selects by partition instead of walking a sorted array. */
    bool rank_walk, partitioned;
};

static int32_t hist_capacity(const qsampler_params *p, int32_t n_ctx)
{
    if (p->repeat_last_n == -1)
        return n_ctx;
    return p->repeat_last_n;
}

qrun_status qsampler_create(const qsampler_params *p, int32_t vocab, int32_t n_ctx, uint64_t seq,
                            qsampler **out, qerr *err)
{
    if (!out)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: out is NULL");
    *out = NULL;
    qrun_status st = qsampler_params_check(p, err);
    if (st != QRUN_OK)
        return st;
    if (vocab <= 0)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: vocab size %d must be > 0",
                        (int)vocab);
    if (p->repeat_last_n == -1 && n_ctx <= 0)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "sampler: repeat_last_n -1 (whole context) needs n_ctx > 0, got %d",
                        (int)n_ctx);
    size_t v = (size_t)vocab;
    int32_t cap = hist_capacity(p, n_ctx);
    qsampler *s = calloc(1, sizeof *s);
    if (!s)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "sampler: out of memory");
    s->p = *p;
    s->vocab = vocab;
    s->n_ctx = n_ctx;
    s->seq = seq;
    s->hist_cap = cap;
    s->cand = malloc(v * sizeof *s->cand);
    s->w = malloc(v * sizeof *s->w);
    s->ids = malloc(v * sizeof *s->ids);
    s->seen = calloc(v, 1);
    s->hist = malloc((cap > 0 ? (size_t)cap : 1) * sizeof *s->hist);
    if (!s->cand || !s->w || !s->ids || !s->seen || !s->hist) {
        qsampler_free(s);
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "sampler: out of memory for vocab %d",
                        (int)vocab);
    }
    rng_seed(s->rng, p->seed, seq);
    *out = s;
    return QRUN_OK;
}

void qsampler_free(qsampler *s)
{
    if (!s)
        return;
    free(s->cand);
    free(s->w);
    free(s->ids);
    free(s->seen);
    free(s->hist);
    free(s);
}

qrun_status qsampler_fork(const qsampler *src, uint64_t seq, qsampler **out, qerr *err)
{
    if (!src)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: fork source is NULL");
    qrun_status st = qsampler_create(&src->p, src->vocab, src->n_ctx, seq, out, err);
    if (st != QRUN_OK)
        return st;
    qsampler *d = *out;
    if (src->hist_cap > 0)
        memcpy(d->hist, src->hist, (size_t)src->hist_cap * sizeof *d->hist);
    d->hist_len = src->hist_len;
    d->hist_pos = src->hist_pos;
    return QRUN_OK;
}

void qsampler_reset(qsampler *s)
{
    if (!s)
        return;
    s->hist_len = 0;
    s->hist_pos = 0;
    rng_seed(s->rng, s->p.seed, s->seq);
}

void qsampler_reseed(qsampler *s, uint64_t seed)
{
    if (!s)
        return;
    s->p.seed = seed;
    rng_seed(s->rng, seed, s->seq);
}

qrun_status qsampler_accept(qsampler *s, int32_t id, qerr *err)
{
    if (!s)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: NULL sampler");
    if (id < 0 || id >= s->vocab)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "sampler: accepted token id %d is outside [0, %d)", (int)id,
                        (int)s->vocab);
    if (s->hist_cap <= 0)
        return QRUN_OK;
    s->hist[s->hist_pos] = id;
    s->hist_pos = s->hist_pos + 1 == s->hist_cap ? 0 : s->hist_pos + 1;
    if (s->hist_len < s->hist_cap)
        s->hist_len++;
    return QRUN_OK;
}

qrun_status qsampler_accept_many(qsampler *s, const int32_t *ids, size_t n, qerr *err)
{
    if (n && !ids)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: ids is NULL");
    for (size_t i = 0; i < n; i++) {
        qrun_status st = qsampler_accept(s, ids[i], err);
        if (st != QRUN_OK)
            return st;
    }
    return QRUN_OK;
}

/* ---- what a GPU sampler needs to reproduce qsampler_sample -------------------- */

bool qsampler_is_greedy(const qsampler *s) { return !(s->p.temperature > 0.0f); }

uint64_t qsampler_draw(qsampler *s) { return xoshiro_next(s->rng); }

const qsampler_params *qsampler_get_params(const qsampler *s) { return &s->p; }

int32_t qsampler_window_capacity(const qsampler *s) { return s->hist_cap > 0 ? s->hist_cap : 0; }

size_t qsampler_window(const qsampler *s, int32_t *ids, size_t cap)
{
    /* The ring holds the last hist_len tokens ending just before hist_pos. */
    size_t len = (size_t)s->hist_len;
    size_t start = (size_t)(s->hist_len < s->hist_cap ? 0 : s->hist_pos);
    for (size_t i = 0; i < len && i < cap; i++)
        ids[i] = s->hist[(start + i) % (size_t)s->hist_cap];
    return len;
}

/* Rank order: higher logit first, then lower id. A strict total order (ids
 * are unique), so what selection and sorting keep does not depend on the
 * algorithm or the libc. */
static inline bool cand_before(const qsamp_cand *a, const qsamp_cand *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb)
{
    const qsamp_cand *a = pa, *b = pb;
    return cand_before(a, b) ? -1 : (cand_before(b, a) ? 1 : 0);
}

static int cand_cmp_id(const void *pa, const void *pb)
{
    const qsamp_cand *a = pa, *b = pb;
    return (a->id > b->id) - (a->id < b->id);
}

static inline void cand_swap(qsamp_cand *a, qsamp_cand *b)
{
    qsamp_cand t = *a;
    *a = *b;
    *b = t;
}

/* Median of c[lo], c[mid], c[hi - 1] moved to c[hi - 1] (the pivot). */
static void pivot_to_end(qsamp_cand *c, size_t lo, size_t hi)
{
    size_t mid = lo + (hi - lo) / 2, last = hi - 1;
    if (cand_before(&c[mid], &c[lo]))
        cand_swap(&c[mid], &c[lo]);
    if (cand_before(&c[last], &c[lo]))
        cand_swap(&c[last], &c[lo]);
    if (cand_before(&c[last], &c[mid]))
        cand_swap(&c[last], &c[mid]);
    cand_swap(&c[mid], &c[last]);
}

static int select_budget(size_t n)
{
    int b = 8;
    for (; n > 1; n >>= 1)
        b += 2;
    return b;
}

/* Sift c[i] down a heap whose root is the WORST candidate (rank order). */
static void heap_sift(qsamp_cand *c, size_t k, size_t i)
{
    qsamp_cand x = c[i];
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= k)
            break;
        if (l + 1 < k && cand_before(&c[l], &c[l + 1]))
            l++; /* the worse child */
        if (!cand_before(&x, &c[l]))
            break;
        c[i] = c[l];
        i = l;
    }
    c[i] = x;
}

/* Rearrange c[0..n) so that c[0..k) hold the k best candidates (in no
 * particular order; what is in c[k..n) afterwards is unspecified). Small k:
 * one pass with a heap of k; large k: quickselect (median of three, sorting
 * the rest of the range if the pivots keep being bad). */
static void select_top(qsamp_cand *c, size_t n, size_t k)
{
    if (k == 0 || k >= n)
        return;
    if (k <= 1024) {
        for (size_t i = k / 2; i-- > 0;)
            heap_sift(c, k, i);
        for (size_t i = k; i < n; i++)
            if (cand_before(&c[i], &c[0])) {
                c[0] = c[i];
                heap_sift(c, k, 0);
            }
        return;
    }
    size_t lo = 0, hi = n;
    int budget = select_budget(n);
    while (hi - lo > 1 && k > lo && k < hi) {
        if (budget-- == 0) {
            qsort(c + lo, hi - lo, sizeof *c, cand_cmp);
            return;
        }
        pivot_to_end(c, lo, hi);
        qsamp_cand pv = c[hi - 1];
        size_t store = lo;
        for (size_t i = lo; i < hi - 1; i++)
            if (cand_before(&c[i], &pv))
                cand_swap(&c[i], &c[store++]);
        cand_swap(&c[store], &c[hi - 1]);
        if (store == k || store + 1 == k)
            return;
        if (k < store)
            hi = store;
        else
            lo = store + 1;
    }
}

/* top_p_prefix sorts ranges of at most this many candidates and walks them. */
#define QSAMP_TOPP_SORT_MAX 64

/* Top-p: rearrange c[0..n) (weights in .w) so that c[0..keep) is the
 * smallest rank prefix whose mass reaches `target`; returns keep. Expected
 * O(n): partition around a pivot, keep the better side if its mass already
 * reaches what is needed, else take it whole and go on in the worse side;
 * small ranges are sorted and walked. Nothing needs the whole vocabulary
 * sorted. */
static size_t top_p_prefix(qsamp_cand *c, size_t n, double target)
{
    size_t lo = 0, hi = n;
    double need = target;
    int budget = select_budget(n);
    for (;;) {
        if (hi - lo <= QSAMP_TOPP_SORT_MAX || budget-- == 0) {
            qsort(c + lo, hi - lo, sizeof *c, cand_cmp);
            double cum = 0.0;
            for (size_t i = lo; i < hi; i++) {
                cum += c[i].w;
                if (cum >= need)
                    return i + 1;
            }
            return hi; /* rounding: everything up to hi */
        }
        pivot_to_end(c, lo, hi);
        qsamp_cand pv = c[hi - 1];
        size_t store = lo;
        double mass = 0.0;
        for (size_t i = lo; i < hi - 1; i++)
            if (cand_before(&c[i], &pv)) {
                mass += c[i].w;
                cand_swap(&c[i], &c[store++]);
            }
        cand_swap(&c[store], &c[hi - 1]);
        if (mass >= need) {
            hi = store; /* c[lo..store) is non-empty: mass > 0 or need <= 0 */
            if (hi == lo)
                return lo + 1 <= n ? lo + 1 : n; /* need <= 0: one token */
        } else if (mass + pv.w >= need) {
            return store + 1;
        } else {
            need -= mass + pv.w;
            lo = store + 1;
            if (lo >= hi)
                return hi;
        }
    }
}

static qrun_status run_chain(qsampler *s, const float *logits, size_t *n_out, bool *greedy,
                             qerr *err)
{
    const size_t v = (size_t)s->vocab;
    qsamp_cand *c = s->cand;
    const qsampler_params *p = &s->p;
    const bool penalize = p->repeat_penalty != 1.0f && s->hist_len > 0;
    const float pen = p->repeat_penalty;

    /* 1. repetition penalty: flag each distinct token of the window, apply
     * while copying (once per token, however often it repeats). */
    if (penalize)
        for (int32_t j = 0; j < s->hist_len; j++)
            s->seen[s->hist[j]] = 1;

    /* 2–4 in one pass over the logits. NaN and -inf are dropped; +inf
     * tokens, if any, are the only candidates, equally likely. */
    size_t n = 0, n_pinf = 0;
    size_t n_read = 0;    /* tokens kept by the clean-up (the heap holds only k) */
    bool id_order = true; /* c[0..n) is in id order (no heap built) */
#define QSAMP_LOAD(i)                                                                          \
    float l = logits[i];                                                                       \
    if (penalize && s->seen[i])                                                                \
        l = l > 0.0f ? l / pen : l * pen;                                                      \
    if (!(l > -INFINITY)) /* NaN or -inf */                                                    \
        continue;
    const bool greedy_mode = !(p->temperature > 0.0f);
    const size_t k = p->top_k > 0 ? (size_t)p->top_k : 0;
    if (greedy_mode) {
        /* 3. greedy: the first maximum (lowest id among ties), or the first
         * +inf; no candidate array needed. */
        float best = -INFINITY;
        int32_t best_id = -1;
        for (size_t i = 0; i < v; i++) {
            QSAMP_LOAD(i)
            if (l > best || best_id < 0) {
                best = l;
                best_id = (int32_t)i;
            }
        }
        if (best_id >= 0) {
            c[0].logit = best == INFINITY ? 0.0f : best;
            c[0].id = best_id;
            c[0].w = 1.0;
            n = 1;
        }
    } else if (k > 0 && k <= 1024 && k < v) {
        /* 4. top-k while reading: a heap of the k best seen so far, its
         * root the worst of them. */
        float floor_l = -INFINITY;
        for (size_t i = 0; i < v; i++) {
            QSAMP_LOAD(i)
            n_read++;
            if (l == INFINITY)
                n_pinf++;
            if (l < floor_l) /* cannot beat the worst of the heap */
                continue;
            qsamp_cand x = {0.0, l, (int32_t)i};
            if (n < k) {
                c[n++] = x;
                if (n == k) {
                    for (size_t h = k / 2; h-- > 0;)
                        heap_sift(c, k, h);
                    floor_l = c[0].logit;
                    id_order = false;
                }
            } else if (cand_before(&x, &c[0])) {
                c[0] = x;
                heap_sift(c, k, 0);
                floor_l = c[0].logit;
            }
        }
    } else {
        for (size_t i = 0; i < v; i++) {
            QSAMP_LOAD(i)
            if (l == INFINITY)
                n_pinf++;
            c[n].logit = l;
            c[n].id = (int32_t)i;
            n++;
        }
        n_read = n;
    }
#undef QSAMP_LOAD
    if (penalize)
        for (int32_t j = 0; j < s->hist_len; j++)
            s->seen[s->hist[j]] = 0;
    if (n == 0)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "sampler: every logit of the %d-token vocabulary is -inf or NaN",
                        (int)v);
    if (greedy_mode) {
        *n_out = 1;
        *greedy = true;
        return QRUN_OK;
    }
    *greedy = false;
    if (n_pinf) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (c[i].logit == INFINITY) {
                c[m].id = c[i].id;
                c[m++].logit = 0.0f;
            }
        n = m;
    }
    /* Candidates after the clean-up, before top-k: whether top-k cuts. */
    const size_t n_clean = n_pinf ? n_pinf : n_read;
    const bool topk_cut = k > 0 && k < n_clean;
    /* 4. top-k when it was not done while reading (k large) */
    if (k > 0 && k < n) {
        select_top(c, n, k);
        n = k;
    }
    float maxl = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (c[i].logit > maxl)
            maxl = c[i].logit;

    /* 5. top-p on the renormalised survivors of top-k */
    const bool topp_on = p->top_p < 1.0f && n > 1;
    bool rank_sorted = false; /* top_p_prefix sorted c[0..n) whole */
    if (topp_on) {
        rank_sorted = n <= QSAMP_TOPP_SORT_MAX;
        double z = 0.0;
        for (size_t i = 0; i < n; i++) {
            c[i].w = exp_neg((double)c[i].logit - (double)maxl);
            z += c[i].w;
        }
        n = top_p_prefix(c, n, (double)p->top_p * z);
    }

    /* 6. min-p: p_i >= min_p * p_max, i.e. exp(l_i - l_max) >= min_p. */
    if (p->min_p > 0.0f && n > 1) {
        const double mp = p->min_p;
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (exp_neg((double)c[i].logit - (double)maxl) >= mp)
                c[m++] = c[i];
        n = m;
    }

    /* 7. temperature: weights exp((l - l_max) / T). */
    const double t = p->temperature;
    for (size_t i = 0; i < n; i++)
        c[i].w = exp_neg(((double)c[i].logit - (double)maxl) / t);

    /* 8's walk order: rank order when top-k or top-p truncated the ranking
     * (the draw's cumulative weights then follow the ranking the filters
     * used), id order otherwise. A GPU sampler reproduces these orders
     * without simulating the heap or the partitions above. */
    s->rank_walk = topk_cut || topp_on;
    s->partitioned = false;
    if (n > 1 && s->rank_walk && !rank_sorted) {
        if (n <= QSAMPLER_SORTED_WALK_MAX)
            qsort(c, n, sizeof *c, cand_cmp);
        else
            s->partitioned = true;
    } else if (n > 1 && !s->rank_walk && !id_order) {
        qsort(c, n, sizeof *c, cand_cmp_id);
    }
    *n_out = n;
    return QRUN_OK;
}

/* The draw over more than QSAMPLER_SORTED_WALK_MAX survivors in rank order
 * without sorting them: the first rank position whose cumulative weight
 * exceeds u is where the smallest rank prefix of mass >= next_up(u) ends, so
 * top_p_prefix finds it in expected O(n); that position's candidate ends up
 * at c[keep - 1]. Only rounding (u at the very top of the total) can make
 * it a zero-weight one: then, as in the sorted walk, the last candidate in
 * rank order with weight. */
static size_t partition_pick(qsamp_cand *c, size_t n, double u)
{
    uint64_t bits;
    memcpy(&bits, &u, sizeof bits);
    bits++; /* u >= +0 and finite: the next double above */
    double above;
    memcpy(&above, &bits, sizeof above);
    size_t keep = top_p_prefix(c, n, above);
    if (c[keep - 1].w > 0.0)
        return keep - 1;
    size_t last = n;
    for (size_t i = 0; i < n; i++)
        if (c[i].w > 0.0 && (last == n || cand_before(&c[last], &c[i])))
            last = i;
    return last == n ? 0 : last;
}

static qrun_status check_call(qsampler *s, const float *logits, qerr *err)
{
    if (!s)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: NULL sampler");
    if (!logits)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: logits is NULL");
    return QRUN_OK;
}

qrun_status qsampler_sample(qsampler *s, const float *logits, int32_t *id, qerr *err)
{
    if (!id)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: id is NULL");
    *id = -1;
    qrun_status st = check_call(s, logits, err);
    if (st != QRUN_OK)
        return st;
    size_t n;
    bool greedy;
    st = run_chain(s, logits, &n, &greedy, err);
    if (st != QRUN_OK)
        return st;
    if (greedy) {
        *id = s->cand[0].id;
        return QRUN_OK;
    }
    /* 8. one draw: u in [0, W), walk the cumulative weights. */
    qsamp_cand *c = s->cand;
    double total = 0.0;
    for (size_t i = 0; i < n; i++)
        total += c[i].w;
    double u = qsampler_draw_unit(xoshiro_next(s->rng)) * total;
    if (s->partitioned) {
        *id = c[partition_pick(c, n, u)].id;
        return QRUN_OK;
    }
    double acc = 0.0;
    size_t pick = n; /* rounding fallback: the last candidate with weight */
    for (size_t i = 0; i < n; i++) {
        acc += c[i].w;
        if (u < acc) {
            pick = i;
            break;
        }
    }
    if (pick == n) {
        pick = 0;
        for (size_t i = n; i-- > 0;)
            if (c[i].w > 0.0) {
                pick = i;
                break;
            }
    }
    *id = s->cand[pick].id;
    return QRUN_OK;
}

qrun_status qsampler_filter(qsampler *s, const float *logits, const int32_t **ids,
                            const double **probs, size_t *n, qerr *err)
{
    if (!ids || !probs || !n)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "sampler: NULL output");
    *ids = NULL;
    *probs = NULL;
    *n = 0;
    qrun_status st = check_call(s, logits, err);
    if (st != QRUN_OK)
        return st;
    size_t m;
    bool greedy;
    st = run_chain(s, logits, &m, &greedy, err);
    if (st != QRUN_OK)
        return st;
    double total = 0.0;
    for (size_t i = 0; i < m; i++)
        total += s->cand[i].w;
    for (size_t i = 0; i < m; i++) {
        s->ids[i] = s->cand[i].id;
        s->w[i] = s->cand[i].w / total;
    }
    *ids = s->ids;
    *probs = s->w;
    *n = m;
    return QRUN_OK;
}

/* ---- stop strings ----------------------------------------------------------- */

#define QSTOP_INITIAL_CHUNK 1024

struct qstop {
    int n;
    char **str;     /* n copies (one allocation: str[0] points into it) */
    size_t *len;
    size_t max_len;
    size_t hold_max; /* max(max_len - 1, 3): the most bytes ever held back */
    char *buf;
    size_t cap;
    size_t hold_off, hold_len; /* held bytes, moved to buf[0] on the next feed */
    int stopped;               /* index + 1 of the matched string, 0 if none */
};

qrun_status qstop_create(const char *const *strings, int n, qstop **out, qerr *err)
{
    if (!out)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "stop strings: out is NULL");
    *out = NULL;
    if (n < 0 || (n > 0 && !strings))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "stop strings: bad list (n = %d)", n);
    size_t total = 0, max_len = 0;
    for (int i = 0; i < n; i++) {
        if (!strings[i])
            return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "stop strings: string %d is NULL",
                            i);
        size_t l = strlen(strings[i]);
        if (l == 0)
            return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "stop strings: string %d is empty",
                            i);
        if (l > ((size_t)1 << 20))
            return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                            "stop strings: string %d is longer than 1 MiB", i);
        total += l + 1;
        if (l > max_len)
            max_len = l;
    }
    qstop *st = calloc(1, sizeof *st);
    if (!st)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "stop strings: out of memory");
    st->n = n;
    st->max_len = max_len;
    st->hold_max = max_len > 4 ? max_len - 1 : 3;
    st->cap = st->hold_max + QSTOP_INITIAL_CHUNK;
    st->buf = malloc(st->cap);
    st->str = calloc(n > 0 ? (size_t)n : 1, sizeof *st->str);
    st->len = calloc(n > 0 ? (size_t)n : 1, sizeof *st->len);
    char *pool = malloc(total ? total : 1);
    if (!st->buf || !st->str || !st->len || !pool) {
        free(pool);
        qstop_free(st);
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "stop strings: out of memory");
    }
    for (int i = 0; i < n; i++) {
        size_t l = strlen(strings[i]);
        memcpy(pool, strings[i], l + 1);
        st->str[i] = pool;
        st->len[i] = l;
        pool += l + 1;
    }
    if (n == 0)
        free(pool);
    *out = st;
    return QRUN_OK;
}

void qstop_free(qstop *st)
{
    if (!st)
        return;
    if (st->str && st->n > 0)
        free(st->str[0]);
    free(st->str);
    free(st->len);
    free(st->buf);
    free(st);
}

void qstop_reset(qstop *st)
{
    if (!st)
        return;
    st->hold_off = st->hold_len = 0;
    st->stopped = 0;
}

bool qstop_stopped(const qstop *st) { return st && st->stopped; }

/* Start of an incomplete UTF-8 sequence at the end of b[0..n), or n. */
static size_t utf8_complete_end(const unsigned char *b, size_t n)
{
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        unsigned char c = b[n - back];
        if ((c & 0xc0) == 0x80)
            continue; /* continuation byte: look further back */
        size_t need = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 1;
        return back < need ? n - back : n;
    }
    return n; /* stray continuation bytes: nothing to wait for */
}

qrun_status qstop_feed(qstop *st, const char *chunk, size_t len, qstop_result *r, qerr *err)
{
    if (!st || !r || (len && !chunk))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "stop strings: NULL argument");
    r->text = st->buf;
    r->len = 0;
    r->stop_index = st->stopped - 1;
    if (st->stopped)
        return QRUN_OK;
    if (st->hold_off && st->hold_len)
        memmove(st->buf, st->buf + st->hold_off, st->hold_len);
    st->hold_off = 0;
    size_t have = st->hold_len;
    if (len > st->cap - have) {
        if (len > SIZE_MAX / 2 - have)
            return qerr_set(err, QRUN_ERR_NO_MEMORY, "stop strings: chunk too large");
        size_t ncap = st->cap * 2;
        if (ncap < have + len)
            ncap = have + len;
        char *nb = realloc(st->buf, ncap);
        if (!nb)
            return qerr_set(err, QRUN_ERR_NO_MEMORY, "stop strings: out of memory");
        st->buf = nb;
        st->cap = ncap;
    }
    if (len)
        memcpy(st->buf + have, chunk, len);
    const size_t total = have + len;
    const char *b = st->buf;
    r->text = b;

    /* The first stop string to complete: the smallest end position; at
     * equal ends the earliest start (the longest string), then list order.
     * The held bytes hold no complete match, so only ends inside the new
     * chunk are possible. */
    for (size_t end = have + 1; end <= total; end++) {
        int best = -1;
        for (int k = 0; k < st->n; k++) {
            size_t l = st->len[k];
            if (l > end || (best >= 0 && l <= st->len[best]))
                continue;
            if (b[end - 1] == st->str[k][l - 1] && memcmp(b + end - l, st->str[k], l) == 0)
                best = k;
        }
        if (best >= 0) {
            st->stopped = best + 1;
            st->hold_len = 0;
            r->len = end - st->len[best];
            r->stop_index = best;
            return QRUN_OK;
        }
    }

    /* Hold the longest suffix that is a proper prefix of some stop string:
     * the earliest position whose suffix could still grow into a match. */
    size_t emit = total;
    size_t lo = total + 1 > st->max_len ? total + 1 - st->max_len : 0;
    for (size_t i = lo; i < total && emit == total; i++) {
        size_t tail = total - i;
        for (int k = 0; k < st->n; k++)
            if (tail < st->len[k] && memcmp(b + i, st->str[k], tail) == 0) {
                emit = i;
                break;
            }
    }
    size_t u = utf8_complete_end((const unsigned char *)b, total);
    if (u < emit)
        emit = u;
    r->len = emit;
    st->hold_off = emit;
    st->hold_len = total - emit;
    return QRUN_OK;
}

void qstop_flush(qstop *st, qstop_result *r)
{
    if (!r)
        return;
    r->text = st ? st->buf : NULL;
    r->len = 0;
    r->stop_index = -1;
    if (!st)
        return;
    r->stop_index = st->stopped - 1;
    if (!st->stopped) {
        r->text = st->buf + st->hold_off;
        r->len = st->hold_len;
    }
    st->hold_off = st->hold_len = 0;
}
