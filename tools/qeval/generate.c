/* qeval --generate: one prompt, one seed, one set of sampler settings through
 * every model (loaded one at a time), printed side by side when the terminal
 * is wide enough, else one after another. */
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "qeval.h"

enum { MIN_COLUMN = 40, SEP_WIDTH = 3 };

typedef struct gen_result {
    const char *path;
    char *label;
    char weights[32];
    char *text;
    size_t len, cap;
    int32_t *ids;
    int n_ids, cap_ids;
    bool oom;
    qrun_generate_result res;
} gen_result;

static bool on_token(void *user, int seq, int32_t token, const char *text, size_t len)
{
    (void)seq;
    gen_result *g = user;
    if (len && g->len + len + 1 > g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 256;
        while (cap < g->len + len + 1)
            cap *= 2;
        char *p = realloc(g->text, cap);
        if (!p)
            return !(g->oom = true);
        g->text = p;
        g->cap = cap;
    }
    if (len) {
        memcpy(g->text + g->len, text, len);
        g->len += len;
        g->text[g->len] = '\0';
    }
    if (token >= 0) {
        if (g->n_ids == g->cap_ids) {
            int cap = g->cap_ids ? g->cap_ids * 2 : 64;
            int32_t *p = realloc(g->ids, (size_t)cap * sizeof *p);
            if (!p)
                return !(g->oom = true);
            g->ids = p;
            g->cap_ids = cap;
        }
        g->ids[g->n_ids++] = token;
    }
    return true;
}

static const char *stop_name(qrun_stop_reason r)
{
    switch (r) {
    case QRUN_STOP_EOS: return "eos";
    case QRUN_STOP_LENGTH: return "length";
    case QRUN_STOP_STRING: return "stop_string";
    case QRUN_STOP_CONTEXT: return "context_full";
    case QRUN_STOP_CALLBACK: return "callback";
    case QRUN_STOP_CANCELLED: return "cancelled";
    }
    return "unknown";
}

/* Run the prompt through one model. */
static bool generate_one(const qe_options *o, const char *prompt, size_t prompt_len, gen_result *g)
{
    qrun_model *m = qe_load_model(o, g->path);
    if (!m)
        return false;
    bool ok = false;
    qrun_session *s = NULL;
    int32_t *ids = NULL;
    char *chat = NULL;
    char err[1024];
    qe_quant_name(m, g->weights, sizeof g->weights);
    qrun_session_params sp;
    qrun_session_params_init(&sp);
    sp.kv_type = o->kv;
    sp.n_threads = o->n_threads;
    if (qrun_session_create(m, &sp, &s, err, sizeof err) != QRUN_OK) {
        fprintf(stderr, "qeval: %s: %s\n", g->path, err);
        goto done;
    }
    size_t n = 0;
    if (o->chat) {
        qrun_chat_message msg = {"user", prompt};
        if (qrun_chat_apply(m, &msg, 1, true, &chat, err, sizeof err) != QRUN_OK) {
            fprintf(stderr, "qeval: %s: chat template: %s\n", g->path, err);
            goto done;
        }
        /* The template writes its special tokens as text: parse them, add none. */
        ids = qe_tokenize(m, g->path, chat, strlen(chat), QRUN_TOKENIZE_PARSE_SPECIAL, &n);
    } else {
        ids = qe_tokenize(m, g->path, prompt, prompt_len,
                          o->no_special ? 0 : QRUN_TOKENIZE_ADD_SPECIAL, &n);
    }
    if (!ids)
        goto done;
    qrun_generate_params gp;
    qrun_generate_params_init(&gp);
    gp.sampler.temperature = o->temp;
    gp.sampler.top_k = o->top_k;
    gp.sampler.top_p = o->top_p;
    gp.sampler.min_p = o->min_p;
    gp.sampler.seed = o->seed;
    gp.max_new_tokens = o->n_predict;
    if (qrun_generate_tokens(s, ids, n, &gp, on_token, g, &g->res) != QRUN_OK) {
        fprintf(stderr, "qeval: %s: %s\n", g->path, qrun_session_last_error(s));
        goto done;
    }
    if (g->oom) {
        fprintf(stderr, "qeval: out of memory\n");
        goto done;
    }
    ok = true;
done:
    qrun_free(chat);
    free(ids);
    qrun_session_free(s);
    qrun_model_free(m);
    return ok;
}

/* ---- layout ----------------------------------------------------------------------- */
static int terminal_width(void)
{
    const char *c = getenv("COLUMNS");
    if (c && *c) {
        char *end;
        long v = strtol(c, &end, 10);
        if (!*end && v > 0 && v < 100000)
            return (int)v;
    }
    struct winsize ws;
    if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return 0; /* not a terminal: one after another */
}

/* A printable copy: invalid UTF-8 -> U+FFFD, tab -> space, other control
 * characters but newline dropped. */
static char *printable(const char *s, size_t n)
{
    char *out = malloc(n * 3 + 1), *p = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n;) {
        size_t l = text_utf8_len((const unsigned char *)s + i, n - i);
        unsigned char c = (unsigned char)s[i];
        if (l == 0) {
            memcpy(p, "\xef\xbf\xbd", 3);
            p += 3;
            i++;
        } else if (l == 1 && c == '\t') {
            *p++ = ' ';
            i++;
        } else if (l == 1 && (c < 0x20 || c == 0x7f) && c != '\n') {
            i++;
        } else {
            memcpy(p, s + i, l);
            p += l;
            i += l;
        }
    }
    *p = '\0';
    return out;
}

typedef struct line {
    const char *s;
    int bytes, width;
} line;

typedef struct lines {
    line *v;
    int n, cap;
} lines;

static bool add_line(lines *L, const char *s, int bytes, int width)
{
    if (L->n == L->cap) {
        int cap = L->cap ? L->cap * 2 : 32;
        line *v = realloc(L->v, (size_t)cap * sizeof *v);
        if (!v)
            return false;
        L->v = v;
        L->cap = cap;
    }
    L->v[L->n++] = (line){s, bytes, width};
    return true;
}

/* Word-wrap printable text at `width` characters, breaking at the last space
 * that fits (a word longer than the column is cut). Every code point counts
 * as one column: wide East Asian characters take two on most terminals and
 * then push their column out of line. */
static bool wrap(const char *text, int width, lines *L)
{
    size_t n = strlen(text);
    int *off = malloc((n + 1) * sizeof *off); /* byte offset of every code point */
    if (!off)
        return false;
    const char *p = text;
    bool ok = true;
    for (;;) {
        const char *nl = strchr(p, '\n');
        int bytes = nl ? (int)(nl - p) : (int)strlen(p);
        int ncp = 0;
        for (int b = 0; b < bytes;) {
            size_t l = text_utf8_len((const unsigned char *)p + b, (size_t)(bytes - b));
            off[ncp++] = b;
            b += l ? (int)l : 1;
        }
        off[ncp] = bytes;
        int start = 0;
        while (ok && ncp - start > width) {
            int brk = -1;
            for (int j = start + width; j > start; j--)
                if (p[off[j]] == ' ') {
                    brk = j;
                    break;
                }
            int stop = brk >= 0 ? brk : start + width;
            ok = add_line(L, p + off[start], off[stop] - off[start], stop - start);
            start = brk >= 0 ? brk + 1 : stop;
        }
        ok = ok && add_line(L, p + off[start], off[ncp] - off[start], ncp - start);
        if (!ok || !nl)
            break;
        p = nl + 1;
    }
    free(off);
    return ok;
}

static void print_padded(const char *s, int bytes, int width, int col)
{
    fwrite(s, 1, (size_t)bytes, stdout);
    for (int i = width; i < col; i++)
        fputc(' ', stdout);
}

static void footer(char *buf, size_t n, const gen_result *g)
{
    double tps = g->res.generate_seconds > 0 ? g->res.n_generated / g->res.generate_seconds : 0;
    snprintf(buf, n, "[%d tokens, stop: %s, %.1f tok/s]", g->res.n_generated,
             stop_name(g->res.stop_reason), tps);
}

static bool print_columns(gen_result *g, int k, int col)
{
    lines *L = calloc((size_t)k, sizeof *L);
    char **txt = calloc((size_t)k, sizeof *txt);
    bool ok = L && txt;
    int rows = 0;
    for (int i = 0; ok && i < k; i++) {
        ok = (txt[i] = printable(g[i].text ? g[i].text : "", g[i].len)) && wrap(txt[i], col, &L[i]);
        if (ok && L[i].n > rows)
            rows = L[i].n;
    }
    if (ok) {
        char head[256];
        for (int i = 0; i < k; i++) { /* header: the label, cut to the column */
            snprintf(head, sizeof head, "%s [%s]", g[i].label, g[i].weights);
            char *h = printable(head, strlen(head));
            lines hl = {0};
            if (!h || !wrap(h, col, &hl) || hl.n == 0) {
                free(h);
                free(hl.v);
                ok = false;
                break;
            }
            print_padded(hl.v[0].s, hl.v[0].bytes, hl.v[0].width, i + 1 < k ? col : 0);
            fputs(i + 1 < k ? " | " : "\n", stdout);
            free(h);
            free(hl.v);
        }
        for (int i = 0; ok && i < k; i++) {
            for (int c = 0; c < col; c++)
                fputc('-', stdout);
            fputs(i + 1 < k ? "-+-" : "\n", stdout);
        }
        for (int r = 0; ok && r <= rows; r++) {
            for (int i = 0; i < k; i++) {
                char foot[128];
                if (r < L[i].n) {
                    const line *ln = &L[i].v[r];
                    print_padded(ln->s, ln->bytes, ln->width, i + 1 < k ? col : 0);
                } else if (r == rows) {
                    footer(foot, sizeof foot, &g[i]);
                    int fl = (int)strlen(foot) < col ? (int)strlen(foot) : col;
                    print_padded(foot, fl, fl, i + 1 < k ? col : 0);
                } else {
                    print_padded("", 0, 0, i + 1 < k ? col : 0);
                }
                fputs(i + 1 < k ? " | " : "\n", stdout);
            }
        }
    }
    for (int i = 0; i < k; i++) {
        if (L)
            free(L[i].v);
        if (txt)
            free(txt[i]);
    }
    free(L);
    free(txt);
    if (!ok)
        fprintf(stderr, "qeval: out of memory\n");
    return ok;
}

static void print_blocks(const gen_result *g, int k)
{
    for (int i = 0; i < k; i++) {
        char foot[128];
        footer(foot, sizeof foot, &g[i]);
        printf("%s=== %s [%s] ===\n", i ? "\n" : "", g[i].label, g[i].weights);
        if (g[i].len)
            fwrite(g[i].text, 1, g[i].len, stdout);
        printf("\n%s\n", foot);
    }
}

static void print_json(const qe_options *o, const char *prompt, size_t prompt_len,
                       const gen_result *g, int k)
{
    printf("{\"prompt\":");
    text_json_string(stdout, prompt, prompt_len);
    printf(",\"chat\":%s,\"seed\":%llu,\"temperature\":", o->chat ? "true" : "false",
           (unsigned long long)o->seed);
    qe_json_number(stdout, o->temp);
    printf(",\"top_k\":%d,\"top_p\":", o->top_k);
    qe_json_number(stdout, o->top_p);
    printf(",\"min_p\":");
    qe_json_number(stdout, o->min_p);
    printf(",\"n_predict\":%d,\"models\":[", o->n_predict);
    for (int i = 0; i < k; i++) {
        printf("%s{\"path\":", i ? "," : "");
        text_json_string(stdout, g[i].path, strlen(g[i].path));
        printf(",\"label\":");
        text_json_string(stdout, g[i].label, strlen(g[i].label));
        printf(",\"weights\":\"%s\",\"text\":", g[i].weights);
        text_json_string(stdout, g[i].text ? g[i].text : "", g[i].len);
        printf(",\"generated_ids\":[");
        for (int j = 0; j < g[i].n_ids; j++)
            printf(j ? ",%d" : "%d", g[i].ids[j]);
        printf("],\"stop_reason\":\"%s\",\"prompt_tokens\":%d,\"generate_seconds\":",
               stop_name(g[i].res.stop_reason), g[i].res.n_prompt_tokens);
        qe_json_number(stdout, g[i].res.generate_seconds);
        printf("}");
    }
    printf("]}\n");
}

int qe_generate(const qe_options *o)
{
    char *file_text = NULL;
    size_t prompt_len = 0;
    const char *prompt = o->prompt;
    if (o->file) {
        if (!(file_text = qe_read_file(o->file, &prompt_len)))
            return 1;
        prompt = file_text;
    } else {
        prompt_len = strlen(prompt);
    }
    int k = o->n_models + (o->base != NULL);
    gen_result *g = calloc((size_t)k, sizeof *g);
    const char **paths = calloc((size_t)k, sizeof *paths);
    bool *is_base = calloc((size_t)k, sizeof *is_base);
    char **labels = calloc((size_t)k, sizeof *labels);
    int rc = 1;
    if (!g || !paths || !is_base || !labels) {
        fprintf(stderr, "qeval: out of memory\n");
        goto done;
    }
    int j = 0;
    if (o->base) {
        is_base[j] = true;
        paths[j++] = o->base;
    }
    for (int i = 0; i < o->n_models; i++)
        paths[j++] = o->models[i];
    if (!qe_make_labels(paths, is_base, k, labels)) {
        fprintf(stderr, "qeval: out of memory\n");
        goto done;
    }
    for (int i = 0; i < k; i++) {
        g[i].path = paths[i];
        g[i].label = labels[i];
        if (o->verbose)
            fprintf(stderr, "qeval: generating with %s\n", paths[i]);
        if (!generate_one(o, prompt, prompt_len, &g[i]))
            goto done;
    }
    if (o->json) {
        print_json(o, prompt, prompt_len, g, k);
    } else {
        printf("seed %llu, temperature %g, top-k %d, top-p %g, min-p %g, up to %d tokens%s\n\n",
               (unsigned long long)o->seed, o->temp, o->top_k, o->top_p, o->min_p, o->n_predict,
               o->chat ? ", chat template" : "");
        int width = terminal_width();
        int col = k > 1 ? (width - SEP_WIDTH * (k - 1)) / k : 0;
        if (k > 1 && col >= MIN_COLUMN) {
            if (!print_columns(g, k, col))
                goto done;
        } else {
            print_blocks(g, k);
        }
    }
    rc = 0;
done:
    for (int i = 0; g && i < k; i++) {
        free(g[i].text);
        free(g[i].ids);
    }
    for (int i = 0; labels && i < k; i++)
        free(labels[i]);
    free(labels);
    free(is_base);
    free(paths);
    free(g);
    free(file_text);
    return rc;
}
