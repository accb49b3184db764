/* qeval's results as a table (stdout), JSON or CSV. */
#include <math.h>
#include <string.h>

#include "qeval.h"

void qe_summarize(qe_run *r)
{
    double base_ppl = r->base >= 0 ? exp(r->m[r->base].nll_sum / r->m[r->base].n_scored) : NAN;
    for (int k = 0; k < r->n_m; k++) {
        qe_member *m = &r->m[k];
        m->ppl = exp(m->nll_sum / (double)m->n_scored);
        m->compared = r->base >= 0 && k != r->base;
        m->ppl_delta_pct = m->kld_mean = m->kld_median = m->kld_p99 = m->kld_max = NAN;
        m->top1_pct = m->cont_mean = NAN;
        if (!m->compared)
            continue;
        m->ppl_delta_pct = 100.0 * (m->ppl / base_ppl - 1.0);
        double s = 0;
        for (long i = 0; i < m->n_kld; i++)
            s += m->kld[i];
        qe_sort(m->kld, (size_t)m->n_kld);
        m->kld_mean = s / (double)m->n_kld;
        m->kld_median = qe_quantile_sorted(m->kld, (size_t)m->n_kld, 0.5);
        m->kld_p99 = qe_quantile_sorted(m->kld, (size_t)m->n_kld, 0.99);
        m->kld_max = m->kld[m->n_kld - 1];
        m->top1_pct = 100.0 * (double)m->top1_same / (double)m->n_kld;
        if (m->n_cont > 0)
            m->cont_mean = (double)m->cont_same / m->n_cont;
    }
}

static int n_cont(const qe_run *r)
{
    for (int k = 0; k < r->n_m; k++)
        if (r->m[k].compared)
            return r->m[k].n_cont;
    return 0;
}

/* ---- table ------------------------------------------------------------------------ */
static void cell(FILE *f, int width, const char *fmt, double v)
{
    if (isnan(v))
        fprintf(f, " %*s", width, "-");
    else
        fprintf(f, fmt, width, v);
}

void qe_print_table(FILE *f, const qe_run *r)
{
    fprintf(f, "text: %s, %d tokens%s%s\n", r->text_path, r->n_tokens,
            r->bos_added ? " (BOS first)" : "",
            r->n_tokens < r->n_tokens_full ? " (--max-tokens)" : "");
    fprintf(f, "windows: %d of %d tokens, stride %d; %d tokens scored, each with >= %d tokens "
               "of context (the first window: from its start)\n",
            r->n_win, r->ctx, r->stride, r->n_tokens - 1, r->ctx - r->stride);
    if (r->base >= 0 && r->cont_every > 0)
        fprintf(f, "greedy continuations: %d of %d tokens (one every %d tokens)\n", n_cont(r),
                r->cont_len, r->cont_every);
    fputc('\n', f);

    int lw = 5;
    for (int k = 0; k < r->n_m; k++) {
        int l = (int)strlen(r->m[k].label);
        if (l > lw)
            lw = l;
    }
    bool cmp = r->base >= 0;
    fprintf(f, "%-*s %-8s %9s %10s", lw, "model", "weights", "size MiB", "PPL");
    if (cmp) {
        fprintf(f, " %8s %10s %10s %10s %7s", "PPL +%", "KLD mean", "KLD median", "KLD p99",
                "top-1 %");
        if (r->cont_every > 0)
            fprintf(f, " %10s", "same cont");
    }
    fputc('\n', f);
    for (int k = 0; k < r->n_m; k++) {
        const qe_member *m = &r->m[k];
        fprintf(f, "%-*s %-8s %9.1f", lw, m->label, m->quant,
                (double)m->info.weight_bytes / (1024.0 * 1024.0));
        cell(f, 10, " %*.4f", m->ppl);
        if (cmp) {
            cell(f, 8, " %+*.2f", m->ppl_delta_pct);
            cell(f, 10, " %*.4g", m->kld_mean);
            cell(f, 10, " %*.4g", m->kld_median);
            cell(f, 10, " %*.4g", m->kld_p99);
            cell(f, 7, " %*.2f", m->top1_pct);
            if (r->cont_every > 0)
                cell(f, 10, " %*.2f", m->cont_mean);
        }
        fputc('\n', f);
    }
    if (cmp) {
        fprintf(f, "\nPPL +%%: perplexity relative to the base's; KLD: KL(base || model) in nats "
                   "per token;\ntop-1 %%: tokens whose most likely next token is the base's");
        if (r->cont_every > 0)
            fprintf(f, ";\nsame cont: mean number of leading greedy tokens equal to the base's "
                       "(of %d)",
                    r->cont_len);
        fputs(".\n", f);
    }
}

/* ---- JSON ------------------------------------------------------------------------- */
static void json_key_num(FILE *f, const char *key, double v)
{
    fprintf(f, ",\"%s\":", key);
    qe_json_number(f, v);
}

static void json_key_str(FILE *f, const char *key, const char *s)
{
    fprintf(f, ",\"%s\":", key);
    text_json_string(f, s, strlen(s));
}

void qe_print_json(FILE *f, const qe_run *r)
{
    fprintf(f, "{\"text\":");
    text_json_string(f, r->text_path, strlen(r->text_path));
    fprintf(f, ",\"text_bytes\":%zu,\"n_tokens\":%d,\"n_tokens_text\":%d", r->text_bytes,
            r->n_tokens, r->n_tokens_full);
    fprintf(f, ",\"ids_fnv1a64\":\"%016llx\",\"bos_first\":%s", (unsigned long long)r->ids_hash,
            r->bos_added ? "true" : "false");
    fprintf(f, ",\"ctx\":%d,\"stride\":%d,\"n_windows\":%d,\"n_scored\":%d", r->ctx, r->stride,
            r->n_win, r->n_tokens - 1);
    fprintf(f, ",\"cont_every\":%d,\"cont_len\":%d,\"n_continuations\":%d",
            r->base >= 0 ? r->cont_every : 0, r->cont_len, n_cont(r));
    fprintf(f, ",\"base\":");
    if (r->base >= 0)
        text_json_string(f, r->m[r->base].path, strlen(r->m[r->base].path));
    else
        fputs("null", f);
    json_key_num(f, "seconds", r->seconds);
    fprintf(f, ",\"windows\":[");
    for (int w = 0; w < r->n_win; w++)
        fprintf(f, "%s{\"begin\":%d,\"first\":%d,\"end\":%d,\"n_scored\":%d}", w ? "," : "",
                r->win[w].begin, r->win[w].first, r->win[w].end, r->win[w].end - r->win[w].first);
    fprintf(f, "],\"models\":[");
    for (int k = 0; k < r->n_m; k++) {
        const qe_member *m = &r->m[k];
        fprintf(f, "%s{\"path\":", k ? "," : "");
        text_json_string(f, m->path, strlen(m->path));
        json_key_str(f, "label", m->label);
        fprintf(f, ",\"is_base\":%s", m->is_base ? "true" : "false");
        json_key_str(f, "architecture", m->info.architecture);
        json_key_str(f, "weights", m->info.weights);
        json_key_str(f, "quant", m->quant);
        json_key_str(f, "compute_dtype", m->info.compute_dtype);
        json_key_str(f, "backend", m->info.backend);
        fprintf(f, ",\"vocab_size\":%d,\"weight_bytes\":%llu,\"n_scored\":%ld", m->info.vocab_size,
                (unsigned long long)m->info.weight_bytes, m->n_scored);
        json_key_num(f, "nll_sum", m->nll_sum);
        json_key_num(f, "ppl", m->ppl);
        json_key_num(f, "ppl_delta_pct", m->ppl_delta_pct);
        json_key_num(f, "kld_mean", m->kld_mean);
        json_key_num(f, "kld_median", m->kld_median);
        json_key_num(f, "kld_p99", m->kld_p99);
        json_key_num(f, "kld_max", m->kld_max);
        json_key_num(f, "top1_pct", m->top1_pct);
        json_key_num(f, "cont_same_mean", m->cont_mean);
        fprintf(f, ",\"n_continuations\":%d,\"eval_tokens\":%ld", m->n_cont, m->eval_tokens);
        json_key_num(f, "eval_seconds", m->eval_seconds);
        json_key_num(f, "cont_seconds", m->cont_seconds);
        fprintf(f, ",\"window_nll_sum\":[");
        for (int w = 0; w < r->n_win; w++) {
            fputs(w ? "," : "", f);
            qe_json_number(f, m->win_nll[w]);
        }
        fprintf(f, "],\"window_ppl\":[");
        for (int w = 0; w < r->n_win; w++) {
            fputs(w ? "," : "", f);
            qe_json_number(f, exp(m->win_nll[w] / (r->win[w].end - r->win[w].first)));
        }
        fprintf(f, "],\"window_kld_mean\":");
        if (m->compared) {
            fputc('[', f);
            for (int w = 0; w < r->n_win; w++) {
                fputs(w ? "," : "", f);
                qe_json_number(f, m->win_kld[w] / (r->win[w].end - r->win[w].first));
            }
            fputc(']', f);
        } else {
            fputs("null", f);
        }
        fputc('}', f);
    }
    fprintf(f, "]}\n");
}

/* ---- CSV -------------------------------------------------------------------------- */
static void csv_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void csv_num(FILE *f, double v)
{
    fputc(',', f);
    if (isfinite(v))
        fprintf(f, "%.9g", v);
}

void qe_print_csv(FILE *f, const qe_run *r)
{
    fprintf(f, "model,path,is_base,quant,weight_bytes,n_scored,ppl,ppl_delta_pct,kld_mean,"
               "kld_median,kld_p99,kld_max,top1_pct,cont_same_mean,cont_len,n_continuations,"
               "eval_tokens_per_s\n");
    for (int k = 0; k < r->n_m; k++) {
        const qe_member *m = &r->m[k];
        csv_string(f, m->label);
        fputc(',', f);
        csv_string(f, m->path);
        fprintf(f, ",%d,\"%s\",%llu,%ld", m->is_base, m->quant,
                (unsigned long long)m->info.weight_bytes, m->n_scored);
        csv_num(f, m->ppl);
        csv_num(f, m->ppl_delta_pct);
        csv_num(f, m->kld_mean);
        csv_num(f, m->kld_median);
        csv_num(f, m->kld_p99);
        csv_num(f, m->kld_max);
        csv_num(f, m->top1_pct);
        csv_num(f, m->cont_mean);
        fprintf(f, ",%d,%d", r->cont_len, m->n_cont);
        csv_num(f, m->eval_seconds > 0 ? (double)m->eval_tokens / m->eval_seconds : NAN);
        fputc('\n', f);
    }
}
