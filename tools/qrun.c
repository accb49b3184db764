/* qrun: run a .qbin model from the command line: stream a continuation,
 * chat, tokenize, or print one JSON object. Uses only the public API. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "cli_args.h"
#include "qrun.h"
#include "text_out.h"

static const char usage_text[] =
    "usage: qrun -m MODEL.qbin [-p PROMPT | -f FILE | --chat] [options]\n"
    "\n"
    "Run a model converted by qconvert. With -p or -f the continuation of the\n"
    "prompt is streamed to stdout (the prompt itself is not printed).\n"
    "\n"
    "input:\n"
    "  -m, --model FILE         the .qbin model (required)\n"
    "  -p, --prompt TEXT        the prompt\n"
    "  -f, --file FILE          read the prompt from FILE (- = standard input)\n"
    "      --chat               interactive multi-turn chat on stdin with the model's\n"
    "                           chat template (or a plain User:/Assistant: format);\n"
    "                           /exit or end of input quits, Ctrl-C stops a reply\n"
    "      --system TEXT        system message for --chat\n"
    "      --parse-special      treat special-token text in the prompt (\"<|im_start|>\")\n"
    "                           as those tokens\n"
    "      --no-special         do not add BOS / the tokenizer's template tokens\n"
    "      --truncate           keep the end of a prompt longer than the context\n"
    "                           instead of failing\n"
    "\n"
    "generation:\n"
    "  -n, --n-predict N        tokens to generate (default 256; -1 = until the\n"
    "                           context is full)\n"
    "      --temp T             temperature (default 0.8; 0 = greedy)\n"
    "      --top-k N            top-k (default 40; 0 = off)\n"
    "      --top-p P            top-p (default 0.95; 1 = off)\n"
    "      --min-p P            min-p (default 0.05; 0 = off)\n"
    "      --repeat-penalty R   repetition penalty (default 1.0 = off)\n"
    "      --repeat-last-n N    tokens the penalty looks back over (default 64;\n"
    "                           0 = off, -1 = whole context)\n"
    "      --seed S             random seed (default: different every run)\n"
    "      --stop TEXT          stop when TEXT is generated (not printed); repeatable\n"
    "      --n-sequences N      N independent continuations of the prompt\n"
    "      --ignore-eos         keep generating after the end-of-text token\n"
    "\n"
    "resources:\n"
    "  -c, --ctx-size N         context length (default: the model's, at most 4096)\n"
    "  -b, --batch-size N       prompt tokens per forward pass (default 512)\n"
    "  -t, --threads N          CPU threads (default: one per core)\n"
    "      --backend B          auto (default: the GPU when one is usable), cpu or\n"
    "                           cuda\n"
    "      --gpu-layers N|auto  decoder layers on the GPU, the rest on the CPU\n"
    "                           (default auto: as many as fit)\n"
    "      --kv-type T          f16 (default) or f32 KV cache\n"
    "      --no-verify          skip checking tensor checksums when loading\n"
    "\n"
    "output:\n"
    "      --tokenize           print the prompt's token ids as a JSON array and exit\n"
    "      --json               print one JSON object (prompt ids, generated ids,\n"
    "                           text, stop reason, timings) instead of streaming\n"
    "  -v, --verbose            model info and timings on stderr: load time, prompt\n"
    "                           and generation tokens/s, peak memory, seed\n"
    "  -h, --help               this text\n"
    "      --version            print the version\n"
    "\n"
    "exit status: 0 on success, 1 on an error, 2 on a usage error\n";

typedef struct options {
    const char *model, *prompt, *file, *system;
    bool chat, parse_special, no_special, truncate, tokenize, json, verbose, verify, ignore_eos;
    int n_predict, top_k, repeat_last_n, n_ctx, n_batch, n_threads, gpu_layers, n_seq;
    float temp, top_p, min_p, repeat_penalty;
    uint64_t seed;
    bool seed_given;
    qrun_backend backend;
    qrun_kv_type kv;
    const char **stop;
    size_t n_stop;
} options;

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "qrun: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'qrun --help'.\n");
    return 2;
}

/* ---- growable text buffers ------------------------------------------------ */
typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static bool buf_add(buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return false;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return true;
}



static void json_ids(FILE *f, const int32_t *ids, size_t n)
{
    fputc('[', f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, i ? ",%d" : "%d", ids[i]);
    fputc(']', f);
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

/* ---- Ctrl-C: the first cancels the running reply, a second one exits ---- */
static qrun_session *volatile g_session;
static volatile sig_atomic_t g_interrupts;

static void on_sigint(int sig)
{
    (void)sig;
    if (++g_interrupts >= 2 || !g_session)
        _exit(130);
    qrun_session_cancel(g_session); /* one atomic store: safe here */
}

/* ---- generation output ---------------------------------------------------- */
typedef struct gen_out {
    const options *o;
    int n_seq;
    buf *text;          /* per sequence (json / chat) */
    int32_t **ids;      /* per sequence (json) */
    size_t *n_ids, *cap_ids;
    bool stream;        /* print as it comes */
    int last_seq;
} gen_out;

static bool on_token(void *user, int seq, int32_t token, const char *text, size_t len)
{
    gen_out *g = user;
    if (seq < 0 || seq >= g->n_seq)
        return true;
    if (g->stream) {
        if (g->n_seq > 1 && seq != g->last_seq) {
            printf("%s--- sequence %d ---\n", seq ? "\n" : "", seq + 1);
            g->last_seq = seq;
        }
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    if (g->text && !buf_add(&g->text[seq], text, len))
        return false;
    if (g->ids && token >= 0) {
        if (g->n_ids[seq] == g->cap_ids[seq]) {
            size_t cap = g->cap_ids[seq] ? g->cap_ids[seq] * 2 : 64;
            int32_t *p = realloc(g->ids[seq], cap * sizeof *p);
            if (!p)
                return false;
            g->ids[seq] = p;
            g->cap_ids[seq] = cap;
        }
        g->ids[seq][g->n_ids[seq]++] = token;
    }
    return true;
}

/* Library messages: warnings always (such as AUTO falling back to the CPU),
 * information (GPU layers, device memory) with -v. */
static void on_log(void *user, qrun_log_level level, const char *message)
{
    const options *o = user;
    if (level <= QRUN_LOG_WARN || (o->verbose && level == QRUN_LOG_INFO))
        fprintf(stderr, "qrun: %s\n", message);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void fill_generate_params(const options *o, qrun_generate_params *gp)
{
    qrun_generate_params_init(gp);
    gp->sampler.temperature = o->temp;
    gp->sampler.top_k = o->top_k;
    gp->sampler.top_p = o->top_p;
    gp->sampler.min_p = o->min_p;
    gp->sampler.repeat_penalty = o->repeat_penalty;
    gp->sampler.repeat_last_n = o->repeat_last_n;
    gp->sampler.seed = o->seed;
    gp->max_new_tokens = o->n_predict;
    gp->stop = o->stop;
    gp->n_stop = o->n_stop;
    gp->stop_at_eos = !o->ignore_eos;
    gp->n_sequences = o->n_seq;
}

/* Tokenize with a buffer that grows to fit. */
static int32_t *tokenize(qrun_model *m, const char *text, size_t len, unsigned flags, size_t *n)
{
    char err[1024];
    size_t cap = len + 16;
    for (;;) {
        int32_t *ids = malloc(cap * sizeof *ids);
        if (!ids) {
            fprintf(stderr, "qrun: out of memory\n");
            return NULL;
        }
        qrun_status st = qrun_tokenize(m, text, len, flags, ids, cap, n, err, sizeof err);
        if (st != QRUN_OK) {
            fprintf(stderr, "qrun: prompt: %s\n", err);
            free(ids);
            return NULL;
        }
        if (*n <= cap)
            return ids;
        free(ids);
        cap = *n;
    }
}

static char *read_file(const char *path, size_t *len)
{
    bool is_stdin = !strcmp(path, "-");
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "qrun: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    buf b = {0};
    char chunk[65536];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (!buf_add(&b, chunk, r)) {
            if (!is_stdin)
                fclose(f);
            free(b.p);
            fprintf(stderr, "qrun: %s: out of memory\n", path);
            return NULL;
        }
    bool bad = ferror(f);
    if (!is_stdin)
        fclose(f);
    if (bad) {
        fprintf(stderr, "qrun: %s: read error\n", path);
        free(b.p);
        return NULL;
    }
    if (!b.p)
        b.p = calloc(1, 1);
    *len = b.n;
    return b.p;
}

static void print_stats(const options *o, double load_s, const qrun_generate_result *r,
                        size_t n_prompt)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double p_tps = r->prompt_seconds > 0 ? r->n_prompt_tokens / r->prompt_seconds : 0;
    double g_tps = r->generate_seconds > 0 ? r->n_generated / r->generate_seconds : 0;
    fprintf(stderr, "\nqrun: load %.2f s | prompt %d tokens (+%zu cached), %.2f s, %.1f tok/s | generated %d tokens, "
                    "%.2f s, %.1f tok/s | stop: %s | peak RSS %.1f MiB | seed %llu\n",
            load_s, r->n_prompt_tokens,
            n_prompt > (size_t)r->n_prompt_tokens ? n_prompt - (size_t)r->n_prompt_tokens : 0,
            r->prompt_seconds, p_tps, r->n_generated,
            r->generate_seconds, g_tps, stop_name(r->stop_reason), (double)ru.ru_maxrss / 1024.0,
            (unsigned long long)o->seed);
}

/* ---- one prompt ------------------------------------------------------------ */
static int run_prompt(const options *o, qrun_model *m, qrun_session *s, const char *text,
                      size_t len, double load_s)
{
    unsigned flags = (o->no_special ? 0 : QRUN_TOKENIZE_ADD_SPECIAL) |
                     (o->parse_special ? QRUN_TOKENIZE_PARSE_SPECIAL : 0);
    size_t n = 0;
    int32_t *ids = tokenize(m, text, len, flags, &n);
    if (!ids)
        return 1;
    if (o->tokenize) {
        json_ids(stdout, ids, n);
        fputc('\n', stdout);
        free(ids);
        return 0;
    }
    int n_ctx = qrun_session_n_ctx(s);
    int32_t *prompt = ids;
    if (n == 0) {
        fprintf(stderr, "qrun: the prompt is empty\n");
        free(ids);
        return 1;
    }
    if (n >= (size_t)n_ctx) {
        if (!o->truncate) {
            fprintf(stderr,
                    "qrun: the prompt is %zu tokens but the context holds %d (use -c to enlarge "
                    "it or --truncate to keep the prompt's end)\n",
                    n, n_ctx);
            free(ids);
            return 1;
        }
        /* Keep the end, leaving room for the reply (half the context at most). */
        int room = o->n_predict > 0 && o->n_predict < n_ctx / 2 ? o->n_predict : n_ctx / 2;
        size_t keep = (size_t)(n_ctx - (room > 0 ? room : 1));
        if (keep < 1)
            keep = 1;
        /* A BOS the tokenizer added stays in front of the kept tail. */
        qrun_model_info mi;
        qrun_model_get_info(m, &mi);
        if (keep > 1 && !o->no_special && mi.bos_id >= 0 && ids[0] == mi.bos_id) {
            memmove(ids + 1, ids + (n - (keep - 1)), (keep - 1) * sizeof *ids);
            prompt = ids;
        } else {
            prompt = ids + (n - keep);
        }
        if (o->verbose)
            fprintf(stderr, "qrun: prompt truncated from %zu to %zu tokens (its end)\n", n, keep);
        n = keep;
    }

    qrun_generate_params gp;
    fill_generate_params(o, &gp);
    gen_out g = {.o = o, .n_seq = o->n_seq, .stream = !o->json, .last_seq = -1};
    if (o->json) {
        g.text = calloc((size_t)o->n_seq, sizeof *g.text);
        g.ids = calloc((size_t)o->n_seq, sizeof *g.ids);
        g.n_ids = calloc((size_t)o->n_seq, sizeof *g.n_ids);
        g.cap_ids = calloc((size_t)o->n_seq, sizeof *g.cap_ids);
        if (!g.text || !g.ids || !g.n_ids || !g.cap_ids) {
            fprintf(stderr, "qrun: out of memory\n");
            return 1;
        }
    }
    g_session = s;
    qrun_generate_result r = {0};
    qrun_status st = qrun_generate_tokens(s, prompt, n, &gp, on_token, &g, &r);
    g_session = NULL;
    int rc = 0;
    if (st == QRUN_ERR_CANCELLED) {
        fprintf(stderr, "\nqrun: interrupted\n");
        rc = 130;
    } else if (st != QRUN_OK) {
        fprintf(stderr, "\nqrun: %s\n", qrun_session_last_error(s));
        rc = 1;
    }
    if (o->json && rc == 0) {
        printf("{\"prompt_ids\":");
        json_ids(stdout, prompt, n);
        printf(",\"generated_ids\":");
        json_ids(stdout, g.ids[0], g.n_ids[0]);
        printf(",\"text\":");
        text_json_string(stdout, g.text[0].p ? g.text[0].p : "", g.text[0].n);
        printf(",\"stop_reason\":\"%s\"", stop_name(r.stop_reason));
        if (o->n_seq > 1) {
            printf(",\"sequences\":[");
            for (int i = 0; i < o->n_seq; i++) {
                printf("%s{\"generated_ids\":", i ? "," : "");
                json_ids(stdout, g.ids[i], g.n_ids[i]);
                printf(",\"text\":");
                text_json_string(stdout, g.text[i].p ? g.text[i].p : "", g.text[i].n);
                printf("}");
            }
            printf("]");
        }
        printf(",\"seed\":%llu,\"timings\":{\"load_seconds\":%.6f,\"prompt_tokens\":%d,"
               "\"prompt_seconds\":%.6f,\"generated_tokens\":%d,\"generate_seconds\":%.6f}}\n",
               (unsigned long long)o->seed, load_s, r.n_prompt_tokens, r.prompt_seconds,
               r.n_generated, r.generate_seconds);
    } else if (rc == 0) {
        fputc('\n', stdout);
    }
    if (o->verbose && (rc == 0 || rc == 130))
        print_stats(o, load_s, &r, n);
    if (g.text) {
        for (int i = 0; i < o->n_seq; i++) {
            free(g.text[i].p);
            free(g.ids[i]);
        }
        free(g.text);
        free(g.ids);
        free(g.n_ids);
        free(g.cap_ids);
    }
    free(ids);
    return rc;
}

/* ---- chat -------------------------------------------------------------------- */
static int run_chat(const options *o, qrun_model *m, qrun_session *s, double load_s)
{
    size_t cap = 16, n_msgs = 0;
    qrun_chat_message *msgs = malloc(cap * sizeof *msgs);
    char **owned = malloc(cap * sizeof *owned); /* contents we allocated */
    if (!msgs || !owned)
        return 1;
    if (o->system) {
        msgs[n_msgs] = (qrun_chat_message){"system", o->system};
        owned[n_msgs++] = NULL;
    }
    bool tty = isatty(STDIN_FILENO);
    char *line = NULL;
    size_t line_cap = 0;
    int rc = 0;
    for (;;) {
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        ssize_t got = getline(&line, &line_cap, stdin);
        if (got < 0)
            break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
            line[--got] = '\0';
        if (strcmp(line, "/exit") == 0 || strcmp(line, "/quit") == 0)
            break;
        if (got == 0)
            continue;
        if (n_msgs + 2 > cap) {
            cap *= 2;
            qrun_chat_message *nm = realloc(msgs, cap * sizeof *msgs);
            if (!nm)
                return 1;
            msgs = nm;
            char **no = realloc(owned, cap * sizeof *owned);
            if (!no)
                return 1;
            owned = no;
        }
        owned[n_msgs] = strdup(line);
        msgs[n_msgs] = (qrun_chat_message){"user", owned[n_msgs]};
        n_msgs++;

        char err[1024], *text = NULL;
        if (qrun_chat_apply(m, msgs, n_msgs, true, &text, err, sizeof err) != QRUN_OK) {
            fprintf(stderr, "qrun: chat template: %s\n", err);
            rc = 1;
            break;
        }
        size_t n = 0;
        /* The template writes the special tokens as text: parse them, add none. */
        int32_t *ids = tokenize(m, text, strlen(text), QRUN_TOKENIZE_PARSE_SPECIAL, &n);
        qrun_free(text);
        if (!ids) {
            rc = 1;
            break;
        }
        if (n >= (size_t)qrun_session_n_ctx(s)) {
            fprintf(stderr, "qrun: the conversation (%zu tokens) no longer fits the context of "
                            "%d tokens; use -c to enlarge it\n",
                    n, qrun_session_n_ctx(s));
            free(ids);
            rc = 1;
            break;
        }
        qrun_generate_params gp;
        fill_generate_params(o, &gp);
        gp.n_sequences = 1;
        buf reply = {0};
        gen_out g = {.o = o, .n_seq = 1, .text = &reply, .stream = true, .last_seq = 0};
        g_interrupts = 0;
        g_session = s;
        qrun_generate_result r = {0};
        qrun_status st = qrun_generate_tokens(s, ids, n, &gp, on_token, &g, &r);
        g_session = NULL;
        free(ids);
        fputc('\n', stdout);
        if (st == QRUN_ERR_CANCELLED)
            fprintf(stderr, "qrun: reply stopped (Ctrl-C again to quit)\n");
        if (st != QRUN_OK && st != QRUN_ERR_CANCELLED) {
            fprintf(stderr, "qrun: %s\n", qrun_session_last_error(s));
            free(reply.p);
            rc = 1;
            break;
        }
        if (o->verbose)
            print_stats(o, load_s, &r, n);
        owned[n_msgs] = reply.p ? reply.p : strdup("");
        msgs[n_msgs] = (qrun_chat_message){"assistant", owned[n_msgs]};
        n_msgs++;
    }
    free(line);
    for (size_t i = 0; i < n_msgs; i++)
        free(owned[i]);
    free(owned);
    free(msgs);
    return rc;
}

static int run(int argc, char **argv, const char **stops)
{
    options o = {.n_predict = 256, .top_k = 40, .repeat_last_n = 64, .n_batch = 512, .n_seq = 1,
                 .temp = 0.8f, .top_p = 0.95f, .min_p = 0.05f, .repeat_penalty = 1.0f,
                 .backend = QRUN_BACKEND_AUTO, .kv = QRUN_KV_F16, .gpu_layers = -1,
                 .verify = true};
    o.stop = stops;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define VALUE()                                                                                     \
    do {                                                                                            \
        if (!v)                                                                                     \
            return usage_error("option %s needs a value", a);                                      \
        i++;                                                                                        \
    } while (0)
#define IS(s, l) (!strcmp(a, s) || !strcmp(a, l))
        if (IS("-h", "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("qrun %s (library %s)\n", QRUN_VERSION_STRING, qrun_version());
            return 0;
        } else if (IS("-m", "--model")) {
            VALUE();
            o.model = v;
        } else if (IS("-p", "--prompt")) {
            VALUE();
            o.prompt = v;
        } else if (IS("-f", "--file")) {
            VALUE();
            o.file = v;
        } else if (!strcmp(a, "--system")) {
            VALUE();
            o.system = v;
        } else if (IS("-n", "--n-predict")) {
            VALUE();
            if (!cli_int(v, -1, INT_MAX, &o.n_predict))
                return usage_error("bad --n-predict '%s' (a number >= -1)", v);
        } else if (!strcmp(a, "--temp")) {
            VALUE();
            if (!cli_float(v, 0.0f, 100.0f, &o.temp))
                return usage_error("bad --temp '%s' (0 to 100)", v);
        } else if (!strcmp(a, "--top-k")) {
            VALUE();
            if (!cli_int(v, 0, INT_MAX, &o.top_k))
                return usage_error("bad --top-k '%s' (a number >= 0)", v);
        } else if (!strcmp(a, "--top-p")) {
            VALUE();
            if (!cli_float(v, 0.0f, 1.0f, &o.top_p))
                return usage_error("bad --top-p '%s' (0 to 1)", v);
        } else if (!strcmp(a, "--min-p")) {
            VALUE();
            if (!cli_float(v, 0.0f, 1.0f, &o.min_p))
                return usage_error("bad --min-p '%s' (0 to 1)", v);
        } else if (!strcmp(a, "--repeat-penalty")) {
            VALUE();
            if (!cli_float(v, 0.0f, 100.0f, &o.repeat_penalty) || o.repeat_penalty <= 0.0f)
                return usage_error("bad --repeat-penalty '%s' (a number > 0)", v);
        } else if (!strcmp(a, "--repeat-last-n")) {
            VALUE();
            if (!cli_int(v, -1, INT_MAX, &o.repeat_last_n))
                return usage_error("bad --repeat-last-n '%s' (a number >= -1)", v);
        } else if (!strcmp(a, "--seed")) {
            VALUE();
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-')
                return usage_error("bad --seed '%s' (a number >= 0)", v);
            o.seed = s;
            o.seed_given = true;
        } else if (!strcmp(a, "--stop")) {
            VALUE();
            if (!*v)
                return usage_error("%s", "--stop needs a non-empty text");
            stops[o.n_stop++] = v;
        } else if (!strcmp(a, "--n-sequences")) {
            VALUE();
            if (!cli_int(v, 1, 1024, &o.n_seq))
                return usage_error("bad --n-sequences '%s' (1 to 1024)", v);
        } else if (IS("-c", "--ctx-size")) {
            VALUE();
            if (!cli_int(v, 1, 1 << 24, &o.n_ctx))
                return usage_error("bad --ctx-size '%s' (a number > 0)", v);
        } else if (IS("-b", "--batch-size")) {
            VALUE();
            if (!cli_int(v, 1, 1 << 20, &o.n_batch))
                return usage_error("bad --batch-size '%s' (a number > 0)", v);
        } else if (IS("-t", "--threads")) {
            VALUE();
            if (!cli_int(v, 1, 4096, &o.n_threads))
                return usage_error("bad --threads '%s' (a number > 0)", v);
        } else if (!strcmp(a, "--backend")) {
            VALUE();
            if (!cli_backend(v, &o.backend))
                return usage_error("unknown --backend '%s' (auto, cpu, cuda)", v);
        } else if (!strcmp(a, "--gpu-layers")) {
            VALUE();
            if (!cli_gpu_layers(v, &o.gpu_layers))
                return usage_error("bad --gpu-layers '%s' (a number or auto)", v);
        } else if (!strcmp(a, "--kv-type")) {
            VALUE();
            if (!cli_kv_type(v, &o.kv))
                return usage_error("unknown --kv-type '%s' (f16, f32)", v);
        } else if (!strcmp(a, "--chat")) {
            o.chat = true;
        } else if (!strcmp(a, "--parse-special")) {
            o.parse_special = true;
        } else if (!strcmp(a, "--no-special")) {
            o.no_special = true;
        } else if (!strcmp(a, "--truncate")) {
            o.truncate = true;
        } else if (!strcmp(a, "--tokenize")) {
            o.tokenize = true;
        } else if (!strcmp(a, "--json")) {
            o.json = true;
        } else if (!strcmp(a, "--ignore-eos")) {
            o.ignore_eos = true;
        } else if (!strcmp(a, "--no-verify")) {
            o.verify = false;
        } else if (IS("-v", "--verbose")) {
            o.verbose = true;
        } else {
            return usage_error(a[0] == '-' ? "unknown option '%s'" : "unexpected argument '%s'",
                               a);
        }
#undef VALUE
#undef IS
    }
    if (!o.model)
        return usage_error("%s", "missing -m MODEL.qbin");
    int inputs = (o.prompt != NULL) + (o.file != NULL) + o.chat;
    if (inputs == 0)
        return usage_error("%s", "give a prompt (-p or -f) or --chat");
    if (inputs > 1)
        return usage_error("%s", "use only one of -p, -f and --chat");
    if (o.chat && (o.json || o.tokenize))
        return usage_error("%s", "--chat does not combine with --json or --tokenize");
    if (!o.seed_given) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^
                     ((uint64_t)getpid() << 32);
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 33;
        o.seed = x & 0xffffffffu; /* short enough to retype, exact in any JSON reader */
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);

    double t0 = now();
    qrun_model_params mp;
    qrun_model_params_init(&mp);
    mp.backend = o.backend;
    mp.n_threads = o.n_threads;
    mp.gpu_layers = o.gpu_layers;
    mp.verify_checksums = o.verify;
    mp.log = on_log;
    mp.log_user = &o;
    char err[2048];
    qrun_model *m = NULL;
    qrun_status lst = qrun_model_load(o.model, &mp, &m, err, sizeof err);
    if (lst != QRUN_OK) {
        fprintf(stderr, "qrun: %s\n", err[0] ? err : qrun_status_string(lst));
        if (o.backend == QRUN_BACKEND_CUDA &&
            (lst == QRUN_ERR_UNSUPPORTED || lst == QRUN_ERR_DEVICE))
            fprintf(stderr, "qrun: try --backend auto or --backend cpu\n");
        return 1;
    }
    double load_s = now() - t0;
    if (o.verbose) {
        qrun_model_info mi;
        qrun_model_get_info(m, &mi);
        char gpu[512] = "";
        if (mi.n_gpu_layers > 0)
            snprintf(gpu, sizeof gpu, " (%s: %d of %d layers, %.1f MiB of weights on the GPU)",
                     mi.gpu_name, mi.n_gpu_layers, mi.n_layers,
                     (double)mi.gpu_weight_bytes / 1048576.0);
        fprintf(stderr,
                "qrun: %s: %s, %llu parameters, weights %s, compute %s, backend %s%s, vocab %d, "
                "trained context %d, loaded in %.2f s\n",
                o.model, mi.architecture, (unsigned long long)mi.n_params, mi.weights,
                mi.compute_dtype, mi.backend, gpu, mi.vocab_size, mi.n_ctx_train, load_s);
    }

    int rc;
    size_t len = 0;
    char *file_text = NULL;
    if (o.file && !(file_text = read_file(o.file, &len))) {
        qrun_model_free(m);
        return 1;
    }
    if (o.tokenize) {
        const char *text = file_text ? file_text : o.prompt;
        rc = run_prompt(&o, m, NULL, text, file_text ? len : strlen(text), load_s);
    } else {
        qrun_session_params sp;
        qrun_session_params_init(&sp);
        sp.n_ctx = o.n_ctx;
        sp.n_batch = o.n_batch;
        sp.kv_type = o.kv;
        sp.n_threads = o.n_threads;
        qrun_session *s = NULL;
        if (qrun_session_create(m, &sp, &s, err, sizeof err) != QRUN_OK) {
            fprintf(stderr, "qrun: %s\n", err);
            qrun_model_free(m);
            free(file_text);
            return 1;
        }
        if (o.chat)
            rc = run_chat(&o, m, s, load_s);
        else if (file_text)
            rc = run_prompt(&o, m, s, file_text, len, load_s);
        else
            rc = run_prompt(&o, m, s, o.prompt, strlen(o.prompt), load_s);
        qrun_session_free(s);
    }
    free(file_text);
    qrun_model_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    /* Every --stop value, at most one per argument. */
    const char **stops = calloc((size_t)argc + 1, sizeof *stops);
    if (!stops) {
        fprintf(stderr, "qrun: out of memory\n");
        return 1;
    }
    int rc = run(argc, argv, stops);
    free(stops);
    return rc;
}
