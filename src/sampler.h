/* Token sampling and stop strings.
 *
 * qsampler picks the next token id from a logits vector [vocab] (f32). The
 * chain, in this order (docs/sampling.md is the user-facing description):
 *
 *   1. repetition penalty over the last repeat_last_n accepted tokens
 *      (logit > 0: divided by the penalty, else multiplied; each distinct
 *      token once, however often it occurs in the window);
 *   2. clean-up: NaN logits are dropped (never picked), -inf logits are
 *      dropped; if any logit is +inf, exactly the +inf tokens remain, all
 *      equally likely; nothing left → QRUN_ERR_INVALID_ARGUMENT;
 *   3. temperature <= 0: greedy, the highest logit, ties → lowest id; stop;
 *   4. top-k, 5. top-p, 6. min-p: all on UNSCALED probabilities
 *      softmax(logits) of the candidates that survived the previous step
 *      (so the candidate set does not depend on the temperature);
 *   7. temperature: probabilities of the survivors = softmax(logit / T);
 *   8. one draw from our own PRNG (xoshiro256**) picks the token: the 64-bit
 *      output d becomes U = (d >> 11) * 2^-53 (qsampler_draw_unit), u = U * W
 *      with W the sum of the survivors' weights exp((l - l_max) / T), and the
 *      token is the first survivor, in WALK ORDER, whose cumulative weight
 *      exceeds u (rounding past the end: the last one with weight > 0).
 *      Walk order: rank order (below) when top-k cut the candidates (k < their
 *      number) or top-p ran (top_p < 1 and more than one candidate left);
 *      id order otherwise (plain temperature sampling, min-p alone). Up to
 *      QSAMPLER_SORTED_WALK_MAX survivors the walk adds the weights one by one
 *      in that order; beyond, the rank-order walk is found by partitioning
 *      (same token up to the rounding of the sums).
 *
 * Ordering ties (top-k and top-p boundaries): candidates are ranked by logit,
 * descending, then by id, ascending, so among equal logits the lower ids are
 * kept. min-p keeps every token with p >= min_p * p_max (ties all kept).
 *
 * Determinism: the decision path uses only IEEE-754 double + - * / and
 * comparisons plus an exp written here (qsamp_exp), no libm call, so the
 * same seed, parameters, history and logits give the same id on every
 * platform with IEEE doubles (not x87 extended precision; this file turns off
 * FP contraction for clang; GCC in -std=c11 mode does not contract).
 *
 * Memory: qsampler_create allocates all scratch (vocab-sized candidate and
 * weight arrays, a vocab-sized flag array and the penalty window) once;
 * qsampler_sample / qsampler_filter / qsampler_accept never allocate.
 *
 * A sampler is used by one thread at a time. Several sequences from one
 * prompt: one sampler per sequence, created with the same seed and a
 * different `seq` (or qsampler_fork); each has its own RNG stream derived
 * from (seed, seq) through splitmix64.
 */
#ifndef QRUN_SAMPLER_H
#define QRUN_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct qsampler_params {
    float temperature;     /* 0.8; <= 0 → greedy (argmax, ties → lowest id) */
    int32_t top_k;         /* 40; <= 0 → off */
    float top_p;           /* 0.95; in [0, 1]; 1 → off */
    float min_p;           /* 0.05; in [0, 1]; 0 → off */
    float repeat_penalty;  /* 1.0 → off; must be > 0 */
    int32_t repeat_last_n; /* 64; 0 → off; -1 → the whole context (n_ctx) */
    uint64_t seed;         /* 0; used as given (pick an entropy seed outside) */
} qsampler_params;

#define QSAMPLER_DEFAULT_TEMPERATURE 0.8f
#define QSAMPLER_DEFAULT_TOP_K 40
#define QSAMPLER_DEFAULT_TOP_P 0.95f
#define QSAMPLER_DEFAULT_MIN_P 0.05f
#define QSAMPLER_DEFAULT_REPEAT_PENALTY 1.0f
#define QSAMPLER_DEFAULT_REPEAT_LAST_N 64

/* The largest number of survivors walked one by one in rank order (see 8.);
 * the GPU sampler (src/kernels/sample.h) uses the same bound so that both
 * add the same weights in the same order. */
#define QSAMPLER_SORTED_WALK_MAX 1024

void qsampler_params_default(qsampler_params *p);
/* QRUN_OK or QRUN_ERR_INVALID_ARGUMENT naming the bad field. */
qrun_status qsampler_params_check(const qsampler_params *p, qerr *err);

typedef struct qsampler qsampler;

/* vocab > 0. n_ctx: the context length, used only for repeat_last_n == -1
 * (the penalty window then holds the last n_ctx accepted tokens; it must be
 * > 0 in that case). seq: the sequence index selecting the RNG stream. */
qrun_status qsampler_create(const qsampler_params *p, int32_t vocab, int32_t n_ctx, uint64_t seq,
                            qsampler **out, qerr *err);
void qsampler_free(qsampler *s);

/* A new sampler with src's parameters and penalty history and the RNG stream
 * of (src's seed, seq), as if freshly created for seq and fed the same
 * tokens. */
qrun_status qsampler_fork(const qsampler *src, uint64_t seq, qsampler **out, qerr *err);

/* Forget the history and restart the RNG stream of (seed, seq). */
void qsampler_reset(qsampler *s);
/* Restart the RNG with another seed (history kept). */
void qsampler_reseed(qsampler *s, uint64_t seed);

/* Record a token of the context (prompt or generated) for the penalty.
 * sample() does not record its own choice: call accept for it. */
qrun_status qsampler_accept(qsampler *s, int32_t id, qerr *err);
qrun_status qsampler_accept_many(qsampler *s, const int32_t *ids, size_t n, qerr *err);

/* Pick the next token. On error *id = -1. A non-greedy call consumes
 * exactly one 64-bit PRNG draw; a greedy one none. */
qrun_status qsampler_sample(qsampler *s, const float *logits, int32_t *id, qerr *err);

/* Steps 1–7 without the draw: the surviving candidates and their final
 * probabilities (summing to 1). The arrays live in s and stay valid until
 * the next filter/sample call. Their order is deterministic: up to
 * QSAMPLER_SORTED_WALK_MAX survivors it is the walk order of 8., beyond
 * that unspecified. Greedy: the single argmax with p = 1. */
qrun_status qsampler_filter(qsampler *s, const float *logits, const int32_t **ids,
                            const double **probs, size_t *n, qerr *err);

/* ---- reproducing qsampler_sample elsewhere (the GPU sampler) ----------------
 * qsampler_sample(s, logits) equals the chain above run on the parameters
 * qsampler_get_params(s), the penalty window qsampler_window(s) and, unless
 * greedy, the draw qsampler_draw(s) — which consumes exactly the 64-bit PRNG
 * output that qsampler_sample would have consumed. A caller sampling
 * elsewhere takes the draw here instead of calling qsampler_sample, and
 * accepts the chosen id as usual. */

/* temperature <= 0: qsampler_sample takes no draw. */
bool qsampler_is_greedy(const qsampler *s);
/* The next 64-bit output of s's PRNG (advances it). */
uint64_t qsampler_draw(qsampler *s);
/* U in [0, 1) of step 8: (draw >> 11) * 2^-53, exact. */
double qsampler_draw_unit(uint64_t draw);
const qsampler_params *qsampler_get_params(const qsampler *s);
/* Most ids the penalty window holds (0: no penalty window). */
int32_t qsampler_window_capacity(const qsampler *s);
/* The ids of the penalty window, oldest first, repeats included: copies
 * min(length, cap) of them to ids and returns the length. The penalty
 * applies to them only when repeat_penalty != 1. */
size_t qsampler_window(const qsampler *s, int32_t *ids, size_t cap);

/* exp(x) for x <= 0 from + - * / only (bit-identical everywhere); 0 below
 * -708 and for -inf. Relative error below 1e-15. Exposed for the tests. */
double qsamp_exp(double x);

/* ---- stop strings -----------------------------------------------------------
 * A streaming matcher over the generated TEXT, byte-wise. Feed each newly
 * detokenized chunk; it hands back the bytes that are safe to emit now:
 * a suffix that could still become a stop string is held back, and so is an
 * incomplete UTF-8 sequence at the end of the text (a lead byte whose
 * continuation bytes have not arrived yet), so the emitted text never ends in
 * the middle of a character. When a stop string matches, the text before the
 * match is emitted, the stop string and everything after it are not, and
 * stop_index names it. The match is the first stop string to be COMPLETE in
 * the text (generation stops as soon as one has appeared, without waiting to
 * see whether a longer one that started earlier would complete too); at an
 * equal end the longest (earliest start) wins, then list order. Example:
 * stops {"abcd", "bc"} on "xabcd" stop at "bc" and emit "xa". At the end of
 * generation, qstop_flush hands back what was held. */
typedef struct qstop qstop;

typedef struct qstop_result {
    const char *text; /* bytes to emit; valid until the next call on the qstop */
    size_t len;
    int stop_index;   /* index of the stop string that matched, -1 if none */
} qstop_result;

/* n strings (n may be 0), each NUL-terminated and non-empty (an empty one is
 * QRUN_ERR_INVALID_ARGUMENT). The strings are copied. */
qrun_status qstop_create(const char *const *strings, int n, qstop **out, qerr *err);
void qstop_free(qstop *st);
void qstop_reset(qstop *st);
/* After a match the matcher is finished: later feeds emit nothing and report
 * the same stop_index until qstop_reset. The internal buffer grows only when
 * a chunk is longer than any before (it starts at 1 KiB + the hold). */
qrun_status qstop_feed(qstop *st, const char *chunk, size_t len, qstop_result *r, qerr *err);
/* Everything held back (also an incomplete UTF-8 tail); nothing after a
 * match. The matcher is then empty (ready for reset or more feeds). */
void qstop_flush(qstop *st, qstop_result *r);
bool qstop_stopped(const qstop *st);

#endif
