/* qeval: compare models converted from one checkpoint (f16, nf4, int8...)
 * on a text (perplexity, KL divergence against a base model, top-1
 * agreement, greedy continuations) or on a prompt (--generate).
 *
 * Shared declarations of the tool's files:
 *   main.c     options, loading, checks, dispatch
 *   windows.c  the strided window plan
 *   stats.c    log-softmax statistics of logit rows, quantiles
 *   eval.c     the evaluation loop over windows, all models in lockstep
 *   report.c   table, JSON and CSV output
 *   chart.c    the SVG chart
 *   generate.c --generate: one prompt through every model
 *   util.c     files, UTF-8, JSON strings, labels
 * Only the public API (qrun.h) is used. */
#ifndef QEVAL_H
#define QEVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../text_out.h"

#include "qrun.h"

/* ---- windows ---------------------------------------------------------------
 * Window w holds the tokens [begin, end) (positions restart at 0 in every
 * window) and scores the targets [first, end): token t is predicted from the
 * logits of position t - 1, so it sees t - begin tokens of left context. */
typedef struct qe_window {
    int begin, first, end;
} qe_window;

/* Plan the windows over n_tokens tokens: window length ctx, starts `stride`
 * apart (1 <= stride < ctx <= n_tokens). The first window scores its tokens
 * 1..ctx-1; each later window scores only the tokens past the previous
 * window's end, each with at least ctx - stride tokens of context, so every
 * token but the first is scored exactly once. Returns the number of windows
 * (*out is malloc'ed), or -1 when the arguments are out of range or memory
 * runs out. */
int qe_plan_windows(int n_tokens, int ctx, int stride, qe_window **out);

/* ---- statistics of logit rows (all in double) ------------------------------ */
/* log(sum(exp(z))) over n logits; NaN when a logit is NaN or +inf. */
double qe_logsumexp(const float *z, int n);
/* Index of the largest logit (the first one on a tie). */
int qe_argmax(const float *z, int n);
/* p[i] = exp(z[i] - lse). */
void qe_softmax(const float *z, double lse, double *p, int n);
/* KL(base || model) = sum_i pb[i] * (log pb[i] - log pm[i]) with the log-probs
 * taken from the logits: (zb[i] - lse_b) - (zm[i] - lse_m). pb = softmax(zb).
 * Terms with pb[i] == 0 contribute nothing. Clamped at 0: a true divergence
 * below the rounding error can come out as -1e-17. */
double qe_kld(const float *zb, double lse_b, const double *pb, const float *zm, double lse_m,
              int n);
/* The q-quantile (0 <= q <= 1) of n values sorted ascending, interpolating
 * linearly between the two nearest order statistics (numpy's default). */
double qe_quantile_sorted(const double *v, size_t n, double q);
/* Sort ascending (for qe_quantile_sorted). */
void qe_sort(double *v, size_t n);
/* 64-bit FNV-1a over the token ids as 4-byte little-endian integers: a short
 * fingerprint of a tokenization (tools/make_ppl_fixture.py computes the same). */
uint64_t qe_ids_hash(const int32_t *ids, size_t n);

/* ---- the run ----------------------------------------------------------------- */
typedef struct qe_options {
    const char **models;   /* -m, in order */
    int n_models;
    const char *base;      /* --base or NULL */
    const char *file;      /* -f */
    const char *prompt;    /* -p (--generate) */
    bool generate, chat, json, csv, verbose, verify, no_special;
    const char *chart;     /* --chart FILE */
    const char *json_file, *csv_file; /* --json-file, --csv-file */
    int ctx, stride, max_tokens, cont_every, cont_len, n_threads, gpu_layers;
    /* --generate */
    int n_predict, top_k;
    float temp, top_p, min_p;
    uint64_t seed;
    bool seed_given;
    qrun_backend backend;
    qrun_kv_type kv;
} qe_options;

/* One model of the run and what was measured for it. */
typedef struct qe_member {
    const char *path;
    char *label;             /* short unique name for tables and charts */
    bool is_base;
    qrun_model *model;
    qrun_session *sess;
    qrun_model_info info;
    char quant[32];          /* qe_quant_name */
    float *logits;           /* chunk_rows x vocab logits of the current chunk */

    double nll_sum;          /* -sum log p(target) over scored tokens */
    long n_scored;
    double *win_nll;         /* per window: nll sum */
    double *win_kld;         /* per window: KLD sum (models other than the base) */
    double *kld;             /* per scored token (models other than the base) */
    long n_kld;
    long top1_same;          /* scored tokens whose argmax equals the base's */
    long cont_same;          /* leading tokens equal to the base's, over all continuations */
    int n_cont;
    double eval_seconds;     /* time in qrun_session_eval */
    long eval_tokens;
    double cont_seconds;     /* time in the greedy continuations */

    /* qe_summarize: NaN where there is no base or for the base itself */
    bool compared;           /* a model measured against the base */
    double ppl, ppl_delta_pct, kld_mean, kld_median, kld_p99, kld_max, top1_pct, cont_mean;
} qe_member;

typedef struct qe_run {
    const qe_options *o;
    const char *text_path;
    size_t text_bytes;
    int32_t *ids;            /* the text's tokens (after --max-tokens) */
    int n_tokens, n_tokens_full;
    uint64_t ids_hash;
    bool bos_added;          /* the tokenizer put BOS in front of the text */
    int ctx, stride, cont_every, cont_len, chunk_rows;
    qe_window *win;
    int n_win;
    qe_member *m;            /* the base first (when there is one), then the -m models */
    int n_m;
    int base;                /* index of the base in m, or -1 */
    double seconds;
} qe_run;

/* Evaluate every window with all models in lockstep; fills the members'
 * results. Prints errors (naming the model) and returns false on failure. */
bool qe_evaluate(qe_run *r);

/* ---- output -------------------------------------------------------------------- */
/* Fill the members' summary fields (sorts their per-token KLD). */
void qe_summarize(qe_run *r);
void qe_print_table(FILE *f, const qe_run *r);
void qe_print_json(FILE *f, const qe_run *r);
void qe_print_csv(FILE *f, const qe_run *r);
/* Write the SVG chart; false (with a message) on an I/O error. */
bool qe_write_chart(const char *path, const qe_run *r);

/* --generate: run the prompt through every model; returns the exit status. */
int qe_generate(const qe_options *o);

/* ---- helpers ------------------------------------------------------------------- */
/* Whole file (or standard input for "-"), NUL-terminated; NULL + message on error. */
char *qe_read_file(const char *path, size_t *len);
/* Tokenize with a buffer that grows to fit; NULL + message naming `what`. */
int32_t *qe_tokenize(qrun_model *m, const char *what, const char *text, size_t len,
                     unsigned flags, size_t *n);
/* Print a double for JSON/CSV: %.17g when finite, null (JSON) / empty (CSV) otherwise. */
void qe_json_number(FILE *f, double v);
/* Labels for the models: file names without directories, or the whole path
 * where two file names are equal; "(base)" is added to the base's. */
bool qe_make_labels(const char **paths, const bool *is_base, int n, char **labels);
const char *qe_basename(const char *path);
double qe_now(void);
/* The weight format with its options, e.g. "nf4", "nf4+dq", "int8 t6", "f16". */
void qe_quant_name(qrun_model *m, char *buf, size_t size);
/* Load a model with the run's backend/threads/verify options; message on failure. */
qrun_model *qe_load_model(const qe_options *o, const char *path);

#endif /* QEVAL_H */
