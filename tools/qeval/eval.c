/* The evaluation loop of qeval: every window is run through all models in
 * lockstep, chunk by chunk, so only one chunk of logits per model is held
 * (chunk_rows x vocab floats) and the base's distribution is computed once
 * per token for all comparisons. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qeval.h"

static bool eval_timed(qe_member *m, const int32_t *ids, int n, float *logits)
{
    if (n <= 0)
        return true;
    double t0 = qe_now();
    qrun_status st = qrun_session_eval(m->sess, ids, (size_t)n, logits);
    m->eval_seconds += qe_now() - t0;
    m->eval_tokens += n;
    if (st != QRUN_OK) {
        fprintf(stderr, "qeval: %s: %s\n", m->path, qrun_session_last_error(m->sess));
        return false;
    }
    return true;
}

/* ---- greedy continuations ------------------------------------------------------ */
typedef struct capture {
    int32_t *ids;
    int n, cap;
} capture;

static bool on_token(void *user, int seq, int32_t token, const char *text, size_t len)
{
    (void)seq, (void)text, (void)len;
    capture *c = user;
    if (token >= 0 && c->n < c->cap)
        c->ids[c->n++] = token;
    return true;
}

/* Greedy continuation of ids[0..n) by one model, cont_len tokens (EOS is an
 * ordinary token here, so every model produces the same number). */
static bool continue_greedy(qe_member *m, const int32_t *ids, int n, int cont_len, capture *c)
{
    qrun_generate_params gp;
    qrun_generate_params_init(&gp);
    gp.sampler.temperature = 0.0f;
    gp.sampler.repeat_penalty = 1.0f;
    gp.max_new_tokens = cont_len;
    gp.stop_at_eos = false;
    c->n = 0;
    double t0 = qe_now();
    qrun_status st = qrun_generate_tokens(m->sess, ids, (size_t)n, &gp, on_token, c, NULL);
    m->cont_seconds += qe_now() - t0;
    if (st != QRUN_OK) {
        fprintf(stderr, "qeval: %s: greedy continuation: %s\n", m->path,
                qrun_session_last_error(m->sess));
        return false;
    }
    return true;
}

static bool continuations(qe_run *r, const qe_window *w, capture *caps)
{
    const int32_t *ctx_ids = r->ids + w->begin;
    /* Continue before every target t with t % cont_every == 0: the models
     * see the window's text up to t and write cont_len tokens in its place. */
    int t = (w->first + r->cont_every - 1) / r->cont_every * r->cont_every;
    for (; t < w->end; t += r->cont_every) {
        for (int k = 0; k < r->n_m; k++)
            if (!continue_greedy(&r->m[k], ctx_ids, t - w->begin, r->cont_len, &caps[k]))
                return false;
        const capture *b = &caps[r->base];
        for (int k = 0; k < r->n_m; k++) {
            if (k == r->base)
                continue;
            int same = 0;
            while (same < b->n && same < caps[k].n && caps[k].ids[same] == b->ids[same])
                same++;
            r->m[k].cont_same += same;
            r->m[k].n_cont++;
        }
    }
    return true;
}

/* ---- scoring one chunk of rows --------------------------------------------------- */
static bool score_rows(qe_run *r, int w, int p0, int rows, double *pb)
{
    int V = r->m[0].info.vocab_size;
    for (int i = 0; i < rows; i++) {
        int t = p0 + i + 1; /* the target: row i is the prediction after position p0 + i */
        int32_t target = r->ids[t];
        const float *zb = NULL;
        double lse_b = 0;
        int top_b = -1;
        if (r->base >= 0) {
            zb = r->m[r->base].logits + (size_t)i * V;
            lse_b = qe_logsumexp(zb, V);
            if (isfinite(lse_b)) {
                qe_softmax(zb, lse_b, pb, V);
                top_b = qe_argmax(zb, V);
            }
        }
        for (int k = 0; k < r->n_m; k++) {
            qe_member *m = &r->m[k];
            const float *z = m->logits + (size_t)i * V;
            double lse = k == r->base ? lse_b : qe_logsumexp(z, V);
            if (!isfinite(lse)) {
                fprintf(stderr,
                        "qeval: %s: the logits predicting token %d of the text are not finite "
                        "(NaN or infinite)\n",
                        m->path, t);
                return false;
            }
            double nll = lse - (double)z[target];
            m->nll_sum += nll;
            m->win_nll[w] += nll;
            m->n_scored++;
            if (r->base >= 0 && k != r->base) {
                double kl = qe_kld(zb, lse_b, pb, z, lse, V);
                m->kld[m->n_kld++] = kl;
                m->win_kld[w] += kl;
                if (qe_argmax(z, V) == top_b)
                    m->top1_same++;
            }
        }
    }
    return true;
}

static void progress(const qe_run *r, int w, double t0)
{
    if (r->o->verbose) {
        const qe_window *win = &r->win[w];
        int n = win->end - win->first;
        fprintf(stderr, "qeval: window %d/%d [%d, %d) scored %d:", w + 1, r->n_win, win->begin,
                win->end, n);
        for (int k = 0; k < r->n_m; k++) {
            const qe_member *m = &r->m[k];
            fprintf(stderr, " %s ppl %.4f", m->label, exp(m->win_nll[w] / n));
            if (r->base >= 0 && k != r->base)
                fprintf(stderr, " kld %.3g", m->win_kld[w] / n);
            fputc(k + 1 < r->n_m ? ';' : '\n', stderr);
        }
    } else if (isatty(STDERR_FILENO)) {
        fprintf(stderr, "\rqeval: window %d/%d, %.0f s", w + 1, r->n_win, qe_now() - t0);
        if (w + 1 == r->n_win)
            fputc('\n', stderr);
        fflush(stderr);
    }
}

bool qe_evaluate(qe_run *r)
{
    int V = r->m[0].info.vocab_size;
    int CH = r->chunk_rows;
    long n_scored = r->n_tokens - 1;
    bool ok = false;
    double *pb = NULL;
    capture *caps = calloc((size_t)r->n_m, sizeof *caps);
    if (!caps)
        goto oom;
    if (r->base >= 0 && !(pb = malloc((size_t)V * sizeof *pb)))
        goto oom;
    for (int k = 0; k < r->n_m; k++) {
        qe_member *m = &r->m[k];
        m->logits = malloc((size_t)CH * V * sizeof *m->logits);
        m->win_nll = calloc((size_t)r->n_win, sizeof *m->win_nll);
        m->win_kld = calloc((size_t)r->n_win, sizeof *m->win_kld);
        if (!m->logits || !m->win_nll || !m->win_kld)
            goto oom;
        if (r->base >= 0 && k != r->base && !(m->kld = malloc((size_t)n_scored * sizeof *m->kld)))
            goto oom;
        if (r->base >= 0 && r->cont_every > 0) {
            caps[k].cap = r->cont_len;
            if (!(caps[k].ids = malloc((size_t)r->cont_len * sizeof *caps[k].ids)))
                goto oom;
        }
    }

    double t0 = qe_now();
    for (int w = 0; w < r->n_win; w++) {
        const qe_window *win = &r->win[w];
        /* Every window starts a fresh context at position 0; the tokens before
         * the first target are context only (no logits needed). */
        for (int k = 0; k < r->n_m; k++) {
            qe_member *m = &r->m[k];
            if (qrun_session_rewind(m->sess, 0) != QRUN_OK) {
                fprintf(stderr, "qeval: %s: %s\n", m->path, qrun_session_last_error(m->sess));
                goto done;
            }
            if (!eval_timed(m, r->ids + win->begin, win->first - 1 - win->begin, NULL))
                goto done;
        }
        /* Positions first-1 .. end-2 predict the targets first .. end-1. */
        for (int p0 = win->first - 1; p0 < win->end - 1; p0 += CH) {
            int rows = win->end - 1 - p0 < CH ? win->end - 1 - p0 : CH;
            for (int k = 0; k < r->n_m; k++)
                if (!eval_timed(&r->m[k], r->ids + p0, rows, r->m[k].logits))
                    goto done;
            if (!score_rows(r, w, p0, rows, pb))
                goto done;
        }
        if (r->base >= 0 && r->cont_every > 0 && !continuations(r, win, caps))
            goto done;
        progress(r, w, t0);
    }
    r->seconds = qe_now() - t0;
    ok = true;
    goto done;
oom:
    fprintf(stderr, "qeval: out of memory (logits of %d rows x %d tokens for %d models)\n", CH, V,
            r->n_m);
done:
    for (int k = 0; caps && k < r->n_m; k++)
        free(caps[k].ids);
    free(caps);
    free(pb);
    for (int k = 0; k < r->n_m; k++) {
        free(r->m[k].logits);
        r->m[k].logits = NULL;
    }
    return ok;
}
