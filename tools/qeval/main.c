/* qeval: compare .qbin files of one model (f16 against nf4, fp4, int8...):
 * perplexity over a text, KL divergence, top-1 agreement and greedy
 * continuations against a base model, or one prompt through every model
 * side by side (--generate). Uses only the public API. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../cli_args.h"
#include "qeval.h"

static const char usage_text[] =
    "usage: qeval -m MODEL.qbin [-m MODEL.qbin ...] [--base BASE.qbin] -f TEXT [options]\n"
    "       qeval --generate -m MODEL.qbin [-m ...] [--base BASE.qbin] -p PROMPT [options]\n"
    "\n"
    "Compare files converted from one checkpoint (its f16 file against nf4, fp4,\n"
    "int8...). Every model must have the same vocabulary and tokenize the text\n"
    "the same way. All models are loaded at once and run window by window.\n"
    "\n"
    "For each model: the perplexity of the text. With --base also, against the\n"
    "base at every scored token: the KL divergence KL(base || model) of the\n"
    "next-token distributions (mean, median, 99th percentile), how often the\n"
    "most likely token is the base's (top-1 %), and the mean number of leading\n"
    "tokens of greedy continuations that equal the base's.\n"
    "\n"
    "Windows: the text is tokenized once (with BOS when the tokenizer adds one)\n"
    "and cut into windows of --ctx tokens starting --stride tokens apart; each\n"
    "window is a fresh context. The first window scores all its tokens, each\n"
    "later one only the tokens past the previous window's end, so every token\n"
    "but the first is scored exactly once, with at least ctx - stride tokens of\n"
    "context (transformers' strided perplexity).\n"
    "\n"
    "models and text:\n"
    "  -m, --model FILE       a model to evaluate; repeatable\n"
    "      --base FILE        the reference model (usually the f16 or bf16 file)\n"
    "  -f, --file FILE        the text (UTF-8; - = standard input); with --generate\n"
    "                         the prompt\n"
    "      --max-tokens N     use only the first N tokens of the text\n"
    "      --no-special       do not add BOS / the tokenizer's template tokens\n"
    "\n"
    "windows and continuations:\n"
    "  -c, --ctx N            window length in tokens (default: the smallest trained\n"
    "                         context of the models, at most 2048)\n"
    "      --stride N         tokens between window starts (default ctx/2; 1 to ctx-1)\n"
    "      --cont-every N     with --base: a greedy continuation every N tokens of the\n"
    "                         text (default 1024; 0 = none)\n"
    "      --cont-len N       tokens per greedy continuation (default 32)\n"
    "\n"
    "output (default: a table on stdout):\n"
    "      --json             one JSON object with everything, per window too\n"
    "      --csv              one CSV row per model\n"
    "      --chart FILE.svg   an SVG chart of the perplexity and the mean KL\n"
    "                         divergence of every window\n"
    "  -v, --verbose          model info and per-window results on stderr\n"
    "\n"
    "generation (--generate: the same prompt, seed and settings through each model,\n"
    "side by side when the terminal has room for columns of 40 characters, else\n"
    "one after another; COLUMNS overrides the terminal's width):\n"
    "      --generate         generate instead of evaluating a text\n"
    "  -p, --prompt TEXT      the prompt\n"
    "      --chat             send the prompt as a user message in the model's chat\n"
    "                         template\n"
    "  -n, --n-predict N      tokens to generate (default 128)\n"
    "      --temp T           temperature (default 0.8; 0 = greedy)\n"
    "      --top-k N          top-k (default 40; 0 = off)\n"
    "      --top-p P          top-p (default 0.95; 1 = off)\n"
    "      --min-p P          min-p (default 0.05; 0 = off)\n"
    "      --seed S           random seed (default: a new one, printed)\n"
    "\n"
    "resources:\n"
    "  -t, --threads N        CPU threads (default: one per core)\n"
    "      --backend B        auto (default), cpu or cuda\n"
    "      --gpu-layers N|auto  layers of each model on the GPU (default auto: as\n"
    "                         many as fit)\n"
    "      --kv-type T        f16 (default) or f32 KV cache\n"
    "      --no-verify        skip checking tensor checksums when loading\n"
    "  -h, --help             this text\n"
    "      --version          print the version\n"
    "\n"
    "exit status: 0 on success, 1 on an error, 2 on a usage error\n";

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "qeval: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'qeval --help'.\n");
    return 2;
}

/* ---- evaluation ------------------------------------------------------------------- */
static void free_run(qe_run *r)
{
    for (int k = 0; k < r->n_m; k++) {
        qe_member *m = &r->m[k];
        qrun_session_free(m->sess);
        qrun_model_free(m->model);
        free(m->label);
        free(m->win_nll);
        free(m->win_kld);
        free(m->kld);
    }
    free(r->m);
    free(r->win);
    free(r->ids);
}

/* Same vocabulary and the same token ids for the text, or a message naming
 * the files. */
static bool same_tokenizer(const qe_run *r, const char *text, size_t len, unsigned flags)
{
    const qe_member *a = &r->m[0];
    for (int k = 1; k < r->n_m; k++) {
        const qe_member *b = &r->m[k];
        if (b->info.vocab_size != a->info.vocab_size) {
            fprintf(stderr,
                    "qeval: %s has a vocabulary of %d tokens but %s has %d: the models must "
                    "share a tokenizer (convert them from the same checkpoint)\n",
                    b->path, b->info.vocab_size, a->path, a->info.vocab_size);
            return false;
        }
        size_t n = 0;
        int32_t *ids = qe_tokenize(b->model, b->path, text, len, flags, &n);
        if (!ids)
            return false;
        size_t i = 0;
        while (i < n && i < (size_t)r->n_tokens_full && ids[i] == r->ids[i])
            i++;
        free(ids);
        if (i < n || n != (size_t)r->n_tokens_full) {
            fprintf(stderr,
                    "qeval: %s tokenizes %s differently from %s (%zu tokens against %d; first "
                    "difference at token %zu): the models must share a tokenizer\n",
                    b->path, r->text_path, a->path, n, r->n_tokens_full, i);
            return false;
        }
    }
    return true;
}

static bool write_report(const char *path, const qe_run *r,
                         void (*print)(FILE *, const qe_run *))
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "qeval: %s: %s\n", path, strerror(errno));
        return false;
    }
    print(f, r);
    bool bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        fprintf(stderr, "qeval: %s: write error\n", path);
        return false;
    }
    return true;
}

static int run_eval(const qe_options *o)
{
    qe_run r = {.o = o, .text_path = o->file, .base = -1, .cont_len = o->cont_len,
                .cont_every = o->cont_every};
    int rc = 1;
    char *text = qe_read_file(o->file, &r.text_bytes);
    if (!text)
        return 1;
    if (r.text_bytes == 0) {
        fprintf(stderr, "qeval: %s is empty: give a text to evaluate\n", o->file);
        free(text);
        return 1;
    }

    /* The models: the base first. */
    r.n_m = o->n_models + (o->base != NULL);
    r.m = calloc((size_t)r.n_m, sizeof *r.m);
    const char **paths = calloc((size_t)r.n_m, sizeof *paths);
    bool *is_base = calloc((size_t)r.n_m, sizeof *is_base);
    char **labels = calloc((size_t)r.n_m, sizeof *labels);
    if (!r.m || !paths || !is_base || !labels) {
        fprintf(stderr, "qeval: out of memory\n");
        goto done;
    }
    int k = 0;
    if (o->base) {
        r.base = 0;
        paths[k] = o->base;
        is_base[k++] = true;
    }
    for (int i = 0; i < o->n_models; i++)
        paths[k++] = o->models[i];
    if (!qe_make_labels(paths, is_base, r.n_m, labels)) {
        fprintf(stderr, "qeval: out of memory\n");
        goto done;
    }
    for (k = 0; k < r.n_m; k++) {
        qe_member *m = &r.m[k];
        m->path = paths[k];
        m->is_base = is_base[k];
        m->label = labels[k];
        labels[k] = NULL;
        double t0 = qe_now();
        if (!(m->model = qe_load_model(o, m->path)))
            goto done;
        qrun_model_get_info(m->model, &m->info);
        qe_quant_name(m->model, m->quant, sizeof m->quant);
        if (o->verbose)
            fprintf(stderr,
                    "qeval: %s: %s, weights %s, compute %s, backend %s, vocab %d, trained "
                    "context %d, %.1f MiB of weights, loaded in %.2f s\n",
                    m->path, m->info.architecture, m->quant, m->info.compute_dtype,
                    m->info.backend, m->info.vocab_size, m->info.n_ctx_train,
                    (double)m->info.weight_bytes / 1048576.0, qe_now() - t0);
    }

    /* The text's tokens, the same for every model. */
    unsigned flags = o->no_special ? 0 : QRUN_TOKENIZE_ADD_SPECIAL;
    size_t n = 0;
    r.ids = qe_tokenize(r.m[0].model, o->file, text, r.text_bytes, flags, &n);
    if (!r.ids)
        goto done;
    if (n > INT_MAX / 2) {
        fprintf(stderr, "qeval: %s: %zu tokens is too long a text\n", o->file, n);
        goto done;
    }
    r.n_tokens_full = (int)n;
    if (!same_tokenizer(&r, text, r.text_bytes, flags))
        goto done;
    r.n_tokens = o->max_tokens > 0 && o->max_tokens < r.n_tokens_full ? o->max_tokens
                                                                       : r.n_tokens_full;
    r.bos_added = (flags & QRUN_TOKENIZE_ADD_SPECIAL) && r.m[0].info.bos_id >= 0 &&
                  r.n_tokens > 0 && r.ids[0] == r.m[0].info.bos_id;
    r.ids_hash = qe_ids_hash(r.ids, (size_t)r.n_tokens);

    /* Windows. */
    r.ctx = o->ctx;
    if (r.ctx == 0) {
        r.ctx = 2048;
        for (k = 0; k < r.n_m; k++)
            if (r.m[k].info.n_ctx_train > 1 && r.m[k].info.n_ctx_train < r.ctx)
                r.ctx = r.m[k].info.n_ctx_train;
    }
    r.stride = o->stride > 0 ? o->stride : r.ctx / 2;
    if (r.stride >= r.ctx) {
        fprintf(stderr, "qeval: --stride %d must be below the window length %d (--ctx)\n",
                r.stride, r.ctx);
        rc = 2;
        goto done;
    }
    if (r.n_tokens < r.ctx) {
        fprintf(stderr,
                "qeval: %s is %d tokens%s, shorter than one window of %d tokens: use a longer "
                "text or a smaller --ctx\n",
                o->file, r.n_tokens, r.n_tokens < r.n_tokens_full ? " (--max-tokens)" : "",
                r.ctx);
        goto done;
    }
    for (k = 0; k < r.n_m; k++)
        if (r.m[k].info.n_ctx_train > 0 && r.ctx > r.m[k].info.n_ctx_train)
            fprintf(stderr, "qeval: warning: windows of %d tokens are longer than the %d tokens "
                            "%s was trained on\n",
                    r.ctx, r.m[k].info.n_ctx_train, r.m[k].path);
    r.n_win = qe_plan_windows(r.n_tokens, r.ctx, r.stride, &r.win);
    if (r.n_win < 0) {
        fprintf(stderr, "qeval: out of memory\n");
        goto done;
    }
    if (r.base < 0)
        r.cont_every = 0;

    /* Sessions: a window plus room for a continuation. One chunk of logits
     * per model stays under 256 MiB in all. */
    int V = r.m[0].info.vocab_size;
    long budget = (256L << 20) / ((long)r.n_m * V * (long)sizeof(float));
    r.chunk_rows = budget < 16 ? 16 : budget > 512 ? 512 : (int)budget;
    if (r.chunk_rows > r.ctx)
        r.chunk_rows = r.ctx;
    for (k = 0; k < r.n_m; k++) {
        qrun_session_params sp;
        qrun_session_params_init(&sp);
        sp.n_ctx = r.ctx + (r.cont_every > 0 ? r.cont_len : 0);
        sp.kv_type = o->kv;
        sp.n_threads = o->n_threads;
        char err[1024];
        if (qrun_session_create(r.m[k].model, &sp, &r.m[k].sess, err, sizeof err) != QRUN_OK) {
            fprintf(stderr, "qeval: %s: %s\n", r.m[k].path, err);
            goto done;
        }
    }
    if (o->verbose)
        fprintf(stderr, "qeval: %s: %d tokens, %d windows of %d (stride %d), %d logit rows per "
                        "chunk\n",
                o->file, r.n_tokens, r.n_win, r.ctx, r.stride, r.chunk_rows);

    if (!qe_evaluate(&r))
        goto done;
    qe_summarize(&r);
    if (o->json)
        qe_print_json(stdout, &r);
    else if (o->csv)
        qe_print_csv(stdout, &r);
    else
        qe_print_table(stdout, &r);
    fflush(stdout);
    if (o->json_file && !write_report(o->json_file, &r, qe_print_json))
        goto done;
    if (o->csv_file && !write_report(o->csv_file, &r, qe_print_csv))
        goto done;
    if (o->chart && !qe_write_chart(o->chart, &r))
        goto done;
    if (o->verbose)
        fprintf(stderr, "qeval: evaluated in %.1f s\n", r.seconds);
    rc = 0;
done:
    for (k = 0; labels && k < r.n_m; k++)
        free(labels[k]);
    free(labels);
    free(paths);
    free(is_base);
    free_run(&r);
    free(text);
    return rc;
}

/* ---- options ---------------------------------------------------------------------- */
static int run(int argc, char **argv, const char **models)
{
    qe_options o = {.models = models, .cont_every = 1024, .cont_len = 32, .n_predict = 128,
                    .top_k = 40, .temp = 0.8f, .top_p = 0.95f, .min_p = 0.05f,
                    .backend = QRUN_BACKEND_AUTO, .kv = QRUN_KV_F16, .verify = true,
                    .gpu_layers = -1};
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
            printf("qeval %s (library %s)\n", QRUN_VERSION_STRING, qrun_version());
            return 0;
        } else if (IS("-m", "--model")) {
            VALUE();
            models[o.n_models++] = v;
        } else if (!strcmp(a, "--base")) {
            VALUE();
            if (o.base)
                return usage_error("%s", "--base given twice");
            o.base = v;
        } else if (IS("-f", "--file")) {
            VALUE();
            o.file = v;
        } else if (IS("-p", "--prompt")) {
            VALUE();
            o.prompt = v;
        } else if (!strcmp(a, "--max-tokens")) {
            VALUE();
            if (!cli_int(v, 2, INT_MAX, &o.max_tokens))
                return usage_error("bad --max-tokens '%s' (a number >= 2)", v);
        } else if (IS("-c", "--ctx")) {
            VALUE();
            if (!cli_int(v, 2, 1 << 24, &o.ctx))
                return usage_error("bad --ctx '%s' (a number >= 2)", v);
        } else if (!strcmp(a, "--stride")) {
            VALUE();
            if (!cli_int(v, 1, 1 << 24, &o.stride))
                return usage_error("bad --stride '%s' (a number >= 1)", v);
        } else if (!strcmp(a, "--cont-every")) {
            VALUE();
            if (!cli_int(v, 0, INT_MAX, &o.cont_every))
                return usage_error("bad --cont-every '%s' (a number >= 0)", v);
        } else if (!strcmp(a, "--cont-len")) {
            VALUE();
            if (!cli_int(v, 1, 1 << 16, &o.cont_len))
                return usage_error("bad --cont-len '%s' (1 to 65536)", v);
        } else if (!strcmp(a, "--json-file")) {
            VALUE();
            o.json_file = v;
        } else if (!strcmp(a, "--csv-file")) {
            VALUE();
            o.csv_file = v;
        } else if (!strcmp(a, "--chart")) {
            VALUE();
            o.chart = v;
        } else if (IS("-n", "--n-predict")) {
            VALUE();
            if (!cli_int(v, 1, 1 << 20, &o.n_predict))
                return usage_error("bad --n-predict '%s' (a number > 0)", v);
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
        } else if (!strcmp(a, "--seed")) {
            VALUE();
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-')
                return usage_error("bad --seed '%s' (a number >= 0)", v);
            o.seed = s;
            o.seed_given = true;
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
        } else if (!strcmp(a, "--generate")) {
            o.generate = true;
        } else if (!strcmp(a, "--chat")) {
            o.chat = true;
        } else if (!strcmp(a, "--json")) {
            o.json = true;
        } else if (!strcmp(a, "--csv")) {
            o.csv = true;
        } else if (!strcmp(a, "--no-special")) {
            o.no_special = true;
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
    if (o.n_models == 0)
        return usage_error("%s", "missing -m MODEL.qbin (one or more)");
    if (o.json && o.csv)
        return usage_error("%s", "use only one of --json and --csv");
    if (o.generate) {
        if (!o.prompt == !o.file)
            return usage_error("%s", "--generate needs a prompt: -p TEXT or -f FILE");
        if (o.csv || o.chart || o.json_file || o.csv_file)
            return usage_error("%s", "--generate does not combine with --csv, --chart, "
                                     "--json-file or --csv-file");
        if (!o.seed_given) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t x = ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^
                         ((uint64_t)getpid() << 32);
            x ^= x >> 33;
            x *= 0xff51afd7ed558ccdull;
            x ^= x >> 33;
            o.seed = x & 0xffffffffu;
        }
        return qe_generate(&o);
    }
    if (!o.file)
        return usage_error("%s", "missing -f TEXT (the text to evaluate)");
    if (o.prompt || o.chat)
        return usage_error("%s", "-p and --chat belong to --generate");
    if (o.ctx && o.stride >= o.ctx) {
        char msg[96];
        snprintf(msg, sizeof msg, "--stride %d must be below --ctx %d", o.stride, o.ctx);
        return usage_error("%s (every token is scored once, with context)", msg);
    }
    return run_eval(&o);
}

int main(int argc, char **argv)
{
    const char **models = calloc((size_t)argc + 1, sizeof *models);
    if (!models) {
        fprintf(stderr, "qeval: out of memory\n");
        return 1;
    }
    int rc = run(argc, argv, models);
    free(models);
    return rc;
}
