/* qbench: prefill and decode speed of a .qbin, or of a synthetic model of a
 * published shape, next to the ceiling the hardware sets for it: the weight
 * bytes a decode step must read and the memory bandwidth measured in the
 * same run. Models run through the public API only (qrun.h), so qbench
 * measures whatever backend the library picks. docs/perf.md, "qbench",
 * describes the method. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "../cli_args.h"
#include "dtype.h"
#include "qbench.h"
#include "qrun.h"
#include "quant.h"

static const char usage_head[] =
    "usage: qbench (--shape NAME | -m MODEL.qbin) [options]\n"
    "\n"
    "Measure prefill and decode tokens/s and compare decode with its floor: the\n"
    "bytes of weights read per token against the memory bandwidth measured in\n"
    "the same run (GPU: read and copy kernels; CPU: a threaded read loop).\n"
    "\n"
    "model:\n"
    "  -m, --model FILE         a .qbin to measure\n"
    "      --shape NAME         a synthetic model of a published shape with random\n"
    "                           weights (no download); NAME is one of\n";

static const char usage_tail[] =
    "  -q, --quant TYPE         synthetic weights: nf4 (default), fp4, int8, f16, bf16\n"
    "      --double-quant       nf4/fp4: double-quantized absmax\n"
    "      --blocksize N        nf4/fp4 block size (default 64)\n"
    "      --int8-threshold T   LLM.int8 outlier threshold stored in the model\n"
    "                           (default 6.0)\n"
    "      --compute-dtype T    f16 or bf16 (default: the shape's published dtype)\n"
    "  -o, --output FILE        keep the synthetic model in FILE (default: a\n"
    "                           temporary file in $TMPDIR, else /dev/shm, deleted at\n"
    "                           exit)\n"
    "      --seed S             seed of the random weights and token ids (default 1)\n"
    "\n"
    "measurement:\n"
    "  -p, --n-prompt N         prefill test: N tokens from an empty context\n"
    "                           (default 512; 0 = skip)\n"
    "  -n, --n-gen N            decode test: N tokens one at a time (default 128;\n"
    "                           0 = skip)\n"
    "      --gen-context N      tokens in the context before the decode test\n"
    "                           (default 16)\n"
    "  -r, --reps N             timed repetitions of each test (default 5)\n"
    "      --warmup N           untimed repetitions before them (default 1)\n"
    "  -b, --batch-size N       prompt tokens per forward pass (default: all of the\n"
    "                           prefill test's)\n"
    "      --bw-reps N          repetitions of each bandwidth probe (default 10)\n"
    "      --bw-mib N           bandwidth probe buffer in MiB (default: 4096 on the\n"
    "                           GPU, at most half its free memory; 1024 on the CPU)\n"
    "\n"
    "resources:\n"
    "      --backend B          auto (default), cpu or cuda\n"
    "      --gpu-layers N|auto  layers on the GPU (default auto)\n"
    "  -t, --threads N          CPU threads (default: one per core)\n"
    "      --kv-type T          f16 (default) or f32 KV cache\n"
    "      --no-verify          do not check tensor checksums while loading (the\n"
    "                           default checks them, as qrun does)\n"
    "\n"
    "output:\n"
    "      --json               one JSON object instead of the table\n"
    "  -h, --help               this text\n"
    "      --version            print the version\n"
    "\n"
    "exit status: 0 on success, 1 on an error, 2 on a usage error\n";

typedef struct options {
    const char *model, *output;
    const synth_shape *shape;
    synth_options syn;
    int pp, tg, tg_context, reps, warmup, n_batch, bw_reps, n_threads, gpu_layers;
    uint64_t bw_bytes;
    qrun_backend backend;
    qrun_kv_type kv;
    bool verify, json;
} options;

/* ---- interrupts: the first one stops the current phase cleanly (the
 * temporary model is removed on the way out), a second one exits at once. */
static volatile sig_atomic_t g_interrupts;
static qrun_session *volatile g_session;
static char g_tmp_file[PATH_MAX], g_tmp_dir[PATH_MAX];

static void on_signal(int sig)
{
    (void)sig;
    if (++g_interrupts >= 2) {
        if (g_tmp_file[0])
            unlink(g_tmp_file);
        if (g_tmp_dir[0])
            rmdir(g_tmp_dir);
        _exit(130);
    }
    if (g_session)
        qrun_session_cancel(g_session); /* one atomic store */
}

static bool not_interrupted(void *user, float fraction)
{
    (void)user, (void)fraction;
    return !g_interrupts;
}

/* ---- command line ----------------------------------------------------------- */

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "qbench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'qbench --help'.\n");
    return 2;
}

static void print_help(void)
{
    fputs(usage_head, stdout);
    synth_print_shapes(stdout, "        ");
    fputs(usage_tail, stdout);
}

/* Parse argv into o; returns -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv, options *o)
{
    bool synth_flag = false;
    const char *synth_flag_name = "";
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
#define SYNTH_ONLY() (synth_flag = true, synth_flag_name = a)
        if (IS("-h", "--help")) {
            print_help();
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("qbench %s (library %s)\n", QRUN_VERSION_STRING, qrun_version());
            return 0;
        } else if (IS("-m", "--model")) {
            VALUE();
            o->model = v;
        } else if (!strcmp(a, "--shape")) {
            VALUE();
            if (!(o->shape = synth_shape_find(v))) {
                fprintf(stderr, "qbench: unknown --shape '%s' (", v);
                synth_print_names(stderr, false);
                fprintf(stderr, "; for tests: ");
                synth_print_names(stderr, true);
                fprintf(stderr, ")\nTry 'qbench --help'.\n");
                return 2;
            }
        } else if (IS("-q", "--quant")) {
            VALUE();
            int q = qconvert_quant_from_name(v);
            if (q < 0 || q == QCONVERT_F32)
                return usage_error("unknown --quant '%s' (nf4, fp4, int8, f16, bf16)", v);
            o->syn.quant = (qconvert_quant)q;
            SYNTH_ONLY();
        } else if (!strcmp(a, "--double-quant")) {
            o->syn.double_quant = true;
            SYNTH_ONLY();
        } else if (!strcmp(a, "--blocksize")) {
            VALUE();
            if (!cli_int(v, 1, 1 << 20, &o->syn.blocksize))
                return usage_error("bad --blocksize '%s' (32, 64, ... 4096)", v);
            SYNTH_ONLY();
        } else if (!strcmp(a, "--int8-threshold")) {
            VALUE();
            char *end;
            errno = 0;
            double t = strtod(v, &end);
            if (errno || end == v || *end || !(t >= 0.0 && t <= 65504.0))
                return usage_error("bad --int8-threshold '%s' (0 to 65504)", v);
            o->syn.int8_threshold = (float)t;
            SYNTH_ONLY();
        } else if (!strcmp(a, "--compute-dtype")) {
            VALUE();
            if (!strcmp(v, "f16"))
                o->syn.compute_dtype = QDT_F16;
            else if (!strcmp(v, "bf16"))
                o->syn.compute_dtype = QDT_BF16;
            else
                return usage_error("unknown --compute-dtype '%s' (f16, bf16)", v);
            SYNTH_ONLY();
        } else if (IS("-o", "--output")) {
            VALUE();
            o->output = v;
            SYNTH_ONLY();
        } else if (!strcmp(a, "--seed")) {
            VALUE();
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-')
                return usage_error("bad --seed '%s' (a number >= 0)", v);
            o->syn.seed = s;
        } else if (IS("-p", "--n-prompt")) {
            VALUE();
            if (!cli_int(v, 0, 1 << 20, &o->pp))
                return usage_error("bad --n-prompt '%s' (a number >= 0)", v);
        } else if (IS("-n", "--n-gen")) {
            VALUE();
            if (!cli_int(v, 0, 1 << 20, &o->tg))
                return usage_error("bad --n-gen '%s' (a number >= 0)", v);
        } else if (!strcmp(a, "--gen-context")) {
            VALUE();
            if (!cli_int(v, 1, 1 << 20, &o->tg_context))
                return usage_error("bad --gen-context '%s' (a number >= 1)", v);
        } else if (IS("-r", "--reps")) {
            VALUE();
            if (!cli_int(v, 1, 10000, &o->reps))
                return usage_error("bad --reps '%s' (1 to 10000)", v);
        } else if (!strcmp(a, "--warmup")) {
            VALUE();
            if (!cli_int(v, 0, 10000, &o->warmup))
                return usage_error("bad --warmup '%s' (0 to 10000)", v);
        } else if (IS("-b", "--batch-size")) {
            VALUE();
            if (!cli_int(v, 1, 1 << 20, &o->n_batch))
                return usage_error("bad --batch-size '%s' (a number > 0)", v);
        } else if (!strcmp(a, "--bw-reps")) {
            VALUE();
            if (!cli_int(v, 1, 10000, &o->bw_reps))
                return usage_error("bad --bw-reps '%s' (1 to 10000)", v);
        } else if (!strcmp(a, "--bw-mib")) {
            VALUE();
            int mib;
            if (!cli_int(v, 1, 1 << 24, &mib))
                return usage_error("bad --bw-mib '%s' (a number of MiB > 0)", v);
            o->bw_bytes = (uint64_t)mib << 20;
        } else if (!strcmp(a, "--backend")) {
            VALUE();
            if (!cli_backend(v, &o->backend))
                return usage_error("unknown --backend '%s' (auto, cpu, cuda)", v);
        } else if (!strcmp(a, "--gpu-layers")) {
            VALUE();
            if (!cli_gpu_layers(v, &o->gpu_layers))
                return usage_error("bad --gpu-layers '%s' (a number or auto)", v);
        } else if (IS("-t", "--threads")) {
            VALUE();
            if (!cli_int(v, 1, 4096, &o->n_threads))
                return usage_error("bad --threads '%s' (a number > 0)", v);
        } else if (!strcmp(a, "--kv-type")) {
            VALUE();
            if (!cli_kv_type(v, &o->kv))
                return usage_error("unknown --kv-type '%s' (f16, f32)", v);
        } else if (!strcmp(a, "--no-verify")) {
            o->verify = false;
        } else if (!strcmp(a, "--json")) {
            o->json = true;
        } else {
            return usage_error(a[0] == '-' ? "unknown option '%s'" : "unexpected argument '%s'",
                               a);
        }
#undef VALUE
#undef IS
#undef SYNTH_ONLY
    }
    if (!o->model && !o->shape)
        return usage_error("%s", "give a model: -m MODEL.qbin or --shape NAME");
    if (o->model && o->shape)
        return usage_error("%s", "use only one of -m and --shape");
    if (o->model && synth_flag)
        return usage_error("%s only applies to --shape (a synthetic model)", synth_flag_name);
    if (o->shape) {
        bool four = o->syn.quant == QCONVERT_NF4 || o->syn.quant == QCONVERT_FP4;
        if (o->syn.double_quant && !four)
            return usage_error("--double-quant needs --quant nf4 or fp4, not %s",
                               qconvert_quant_name(o->syn.quant));
        if (four && !quant_blocksize_valid(o->syn.blocksize)) {
            char bs[16];
            snprintf(bs, sizeof bs, "%d", o->syn.blocksize);
            return usage_error("bad --blocksize '%s' (32, 64, 128, 256, 512, 1024, 2048, 4096)",
                               bs);
        }
    }
    if (o->pp == 0 && o->tg == 0)
        return usage_error("%s", "nothing to measure: --n-prompt and --n-gen are both 0");
    return -1;
}

/* ---- the model file ----------------------------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t free_bytes(const char *dir)
{
    struct statvfs vs;
    if (statvfs(dir, &vs) != 0)
        return 0;
    return (uint64_t)vs.f_bavail * (uint64_t)vs.f_frsize;
}

/* Where a temporary synthetic model of `need` bytes goes: $TMPDIR, else
 * /dev/shm (memory: nothing waits for a disk) when it has room, else /tmp. */
static const char *tmp_root(uint64_t need)
{
    const char *t = getenv("TMPDIR");
    if (t && *t)
        return t;
    struct stat sb;
    if (stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) && access("/dev/shm", W_OK) == 0 &&
        free_bytes("/dev/shm") >= need)
        return "/dev/shm";
    return "/tmp";
}

static void remove_tmp(void)
{
    if (g_tmp_file[0] && unlink(g_tmp_file) != 0 && errno != ENOENT)
        fprintf(stderr, "qbench: removing %s: %s\n", g_tmp_file, strerror(errno));
    if (g_tmp_dir[0] && rmdir(g_tmp_dir) != 0 && errno != ENOENT)
        fprintf(stderr, "qbench: removing %s: %s\n", g_tmp_dir, strerror(errno));
    g_tmp_file[0] = g_tmp_dir[0] = '\0';
}

typedef struct gen_progress_state {
    bool tty;
    int last;
} gen_progress_state;

static bool gen_progress(void *user, uint64_t done, uint64_t total)
{
    gen_progress_state *p = user;
    int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
    if (p->tty && pct != p->last) {
        fprintf(stderr, "\rqbench: generating random weights %3d%%", pct);
        fflush(stderr);
        p->last = pct;
    }
    return !g_interrupts;
}

/* Write the synthetic model; its path goes to `path`. */
static int make_synthetic(options *o, char *path, size_t path_size, synth_stats *st)
{
    qerr err;
    qerr_clear(&err);
    uint64_t need;
    if (!synth_file_size(&o->syn, &need, &err)) {
        fprintf(stderr, "qbench: %s\n", err.msg);
        return 1;
    }
    char dir[PATH_MAX];
    if (o->output) {
        snprintf(path, path_size, "%s", o->output);
        snprintf(dir, sizeof dir, "%s", o->output);
        char *slash = strrchr(dir, '/');
        if (slash)
            *(slash == dir ? slash + 1 : slash) = '\0';
        else
            snprintf(dir, sizeof dir, ".");
    } else {
        const char *root = tmp_root(need);
        snprintf(g_tmp_dir, sizeof g_tmp_dir, "%s/qbench.XXXXXX", root);
        if (!mkdtemp(g_tmp_dir)) {
            fprintf(stderr, "qbench: cannot create a directory in %s: %s (set TMPDIR)\n", root,
                    strerror(errno));
            g_tmp_dir[0] = '\0';
            return 1;
        }
        snprintf(dir, sizeof dir, "%s", g_tmp_dir);
        int n = snprintf(path, path_size, "%s/%s-%s.qbin", g_tmp_dir, o->shape->name,
                         qconvert_quant_name(o->syn.quant));
        if (n < 0 || (size_t)n >= path_size || (size_t)n >= sizeof g_tmp_file) {
            fprintf(stderr, "qbench: the temporary directory's name is too long: %s\n", g_tmp_dir);
            return 1;
        }
        memcpy(g_tmp_file, path, (size_t)n + 1);
    }
    uint64_t avail = free_bytes(dir);
    if (avail < need) {
        fprintf(stderr,
                "qbench: %s %s needs %.2f GiB but %s has %.2f GiB free; point TMPDIR (or -o) at "
                "a larger file system\n",
                o->shape->name, qconvert_quant_name(o->syn.quant),
                (double)need / (double)(1u << 30), dir, (double)avail / (double)(1u << 30));
        return 1;
    }
    gen_progress_state ps = {.tty = isatty(STDERR_FILENO) != 0, .last = -1};
    o->syn.progress = gen_progress;
    o->syn.user = &ps;
    bool ok = synth_write(&o->syn, path, st, &err);
    if (ps.tty)
        fputc('\n', stderr);
    if (!ok || g_interrupts) {
        if (err.code == QRUN_ERR_CANCELLED || g_interrupts) {
            fprintf(stderr, "qbench: interrupted\n");
            return 130;
        }
        fprintf(stderr, "qbench: %s: %s\n", path, err.msg);
        return 1;
    }
    return 0;
}

/* Read the file once so that the load starts from a warm page cache, as
 * the synthetic model's freshly written file does. */
static int warm_page_cache(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "qbench: %s: %s\n", path, strerror(errno));
        return 1;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    size_t cap = (size_t)16 << 20;
    char *buf = malloc(cap);
    ssize_t got = 0;
    while (buf && !g_interrupts && (got = read(fd, buf, cap)) > 0)
        ;
    int rc = 0;
    if (!buf || got < 0) {
        fprintf(stderr, "qbench: %s: %s\n", path, buf ? strerror(errno) : "out of memory");
        rc = 1;
    }
    free(buf);
    close(fd);
    return g_interrupts ? 130 : rc;
}

/* ---- measurements ------------------------------------------------------------- */

/* The least free device memory seen since the baseline. */
static void vram_sample(bench_result *r, uint64_t *least_free)
{
    uint64_t fr, tot;
    qerr err;
    if (r->vram && bw_gpu_meminfo(&fr, &tot, &err) && fr < *least_free)
        *least_free = fr;
}

static uint64_t used_since(uint64_t before, uint64_t now_free)
{
    return before > now_free ? before - now_free : 0;
}

/* The metadata's quantization details (the info struct names the kind only). */
static void read_quantization(qrun_model *m, bench_result *r)
{
    cJSON *meta = cJSON_Parse(qrun_model_metadata_json(m));
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(meta, "quantization");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(q, "blocksize");
    const cJSON *dq = cJSON_GetObjectItemCaseSensitive(q, "double_quant");
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(q, "int8_threshold");
    if (cJSON_IsNumber(bs))
        r->blocksize = bs->valueint;
    r->double_quant = cJSON_IsTrue(dq);
    if ((r->has_threshold = cJSON_IsNumber(th)))
        r->int8_threshold = th->valuedouble;
    cJSON_Delete(meta);
}

static int eval_failed(qrun_session *s, const char *what)
{
    if (g_interrupts) {
        fprintf(stderr, "qbench: interrupted\n");
        return 130;
    }
    fprintf(stderr, "qbench: %s: %s\n", what, qrun_session_last_error(s));
    return 1;
}

/* Prefill: pp tokens from an empty context, one eval call (split into
 * n_batch pieces by the engine). */
static int run_prefill(const options *o, qrun_session *s, const int32_t *ids, bench_result *r,
                       uint64_t *least_free)
{
    for (int rep = -o->warmup; rep < o->reps; rep++) {
        qrun_session_rewind(s, 0);
        double t0 = now();
        if (qrun_session_eval(s, ids, (size_t)o->pp, NULL) != QRUN_OK)
            return eval_failed(s, "prefill");
        double dt = now() - t0;
        if (rep >= 0)
            r->pp_seconds[rep] = dt;
        vram_sample(r, least_free);
    }
    return 0;
}

/* Decode: tg single-token evals after tg_context tokens (not timed). Each
 * step's logits are copied to the host, as generation needs them. */
static int run_decode(const options *o, qrun_session *s, const int32_t *ids, bench_result *r,
                      uint64_t *least_free)
{
    for (int rep = -o->warmup; rep < o->reps; rep++) {
        qrun_session_rewind(s, 0);
        if (qrun_session_eval(s, ids, (size_t)o->tg_context, NULL) != QRUN_OK)
            return eval_failed(s, "decode context");
        double t0 = now();
        for (int k = 0; k < o->tg; k++)
            if (qrun_session_eval(s, ids + o->tg_context + k, 1, NULL) != QRUN_OK)
                return eval_failed(s, "decode");
        double dt = now() - t0;
        if (rep >= 0)
            r->tg_seconds[rep] = dt;
        vram_sample(r, least_free);
    }
    return 0;
}

/* Value i of the random stream `key` (splitmix64 of a counter). */
static uint64_t splitmix64(uint64_t key, uint64_t i)
{
    uint64_t z = key + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static summary rates(const double *seconds, int n, int tokens)
{
    double *v = malloc((size_t)n * sizeof *v);
    summary s = {0, 0, 0, 0};
    if (!v)
        return s;
    for (int i = 0; i < n; i++)
        v[i] = seconds[i] > 0 ? tokens / seconds[i] : 0;
    s = summarize(v, n);
    free(v);
    return s;
}

/* Bandwidth of the memory each part of the model reads, and the floor. */
static int measure_ceilings(const options *o, bench_result *r, bool gpu_probed)
{
    qerr err;
    qerr_clear(&err);
    const int g = r->info.n_gpu_layers, L = r->info.n_layers;
    traffic_split(&r->tr, g, &r->bytes_gpu, &r->bytes_cpu);
    if (g > 0 && !gpu_probed && !bw_gpu(o->bw_bytes, o->bw_reps, &r->gpu_bw, &err)) {
        fprintf(stderr, "qbench: %s\n", err.msg);
        return 1;
    }
    if (g < L && !bw_cpu(o->bw_bytes ? o->bw_bytes : (uint64_t)1 << 30, o->bw_reps, o->n_threads,
                         &r->cpu_bw, &err)) {
        fprintf(stderr, "qbench: %s\n", err.msg);
        return 1;
    }
    double t = 0;
    if (r->bytes_gpu)
        t += (double)r->bytes_gpu / r->gpu_bw.read.median;
    if (r->bytes_cpu)
        t += (double)r->bytes_cpu / r->cpu_bw.read.median;
    r->floor_tps = t > 0 ? 1.0 / t : 0;
    /* weights that stay in a cache between tokens are not read from memory */
    r->fits_cache = (r->bytes_gpu && r->bytes_gpu <= 2 * r->gpu_bw.cache_bytes) ||
                    (r->bytes_cpu && r->bytes_cpu <= 2 * r->cpu_bw.cache_bytes);
    return g_interrupts ? 130 : 0;
}

static int run(options *o)
{
    bench_result r;
    memset(&r, 0, sizeof r);
    r.shape = o->shape;
    r.seed = o->syn.seed;
    r.n_threads = o->n_threads;
    r.pp = o->pp;
    r.tg = o->tg;
    r.tg_context = o->tg_context;
    r.reps = o->reps;
    r.warmup = o->warmup;
    r.kv_type = o->kv == QRUN_KV_F32 ? "f32" : "f16";
    r.verified = o->verify;
    char path[PATH_MAX], msg[2048];
    int rc;
    qerr err;
    qerr_clear(&err);
    qrun_model *m = NULL;
    qrun_session *s = NULL;
    int32_t *ids = NULL;

    if (o->shape) {
        if ((rc = make_synthetic(o, path, sizeof path, &r.gen)) != 0)
            return rc;
        if (!o->json)
            fprintf(stderr, "qbench: %s %s written to %s in %.1f s\n", o->shape->name,
                    qconvert_quant_name(o->syn.quant), path, r.gen.seconds);
    } else {
        snprintf(path, sizeof path, "%s", o->model);
        if ((rc = warm_page_cache(path)) != 0)
            return rc;
    }
    r.path = path;
    struct stat sb;
    if (stat(path, &sb) == 0)
        r.file_bytes = (uint64_t)sb.st_size;
    if (!traffic_from_qbin(path, &r.tr, &err)) {
        fprintf(stderr, "qbench: %s\n", err.msg);
        return 1;
    }

    /* The GPU probe runs before the load, while the device is empty; its
     * free memory afterwards is the baseline of the device-memory figures. */
    char why[512];
    bool gpu = o->backend != QRUN_BACKEND_CPU && bw_gpu_usable(why, sizeof why);
    uint64_t least_free = UINT64_MAX, before = 0;
    if (gpu) {
        if (!bw_gpu(o->bw_bytes, o->bw_reps, &r.gpu_bw, &err) ||
            !bw_gpu_meminfo(&before, &r.vram_total, &err)) {
            fprintf(stderr, "qbench: %s\n", err.msg);
            rc = 1;
            goto out;
        }
        r.vram = true;
    }

    qrun_model_params mp;
    qrun_model_params_init(&mp);
    mp.backend = o->backend;
    mp.n_threads = o->n_threads;
    mp.gpu_layers = o->gpu_layers;
    mp.verify_checksums = o->verify;
    mp.progress = not_interrupted;
    double t0 = now();
    qrun_status st = qrun_model_load(path, &mp, &m, msg, sizeof msg);
    r.load_seconds = now() - t0;
    if (st != QRUN_OK) {
        rc = g_interrupts ? 130 : 1;
        fprintf(stderr, "qbench: %s\n", g_interrupts ? "interrupted" : msg);
        goto out;
    }
    qrun_model_get_info(m, &r.info);
    read_quantization(m, &r);
    if (r.info.n_gpu_layers == 0)
        r.vram = false; /* the model runs on the CPU: its memory is the RSS */
    if (r.vram) {
        uint64_t fr = 0, tot;
        if (bw_gpu_meminfo(&fr, &tot, &err)) {
            r.vram_after_load = used_since(before, fr);
            least_free = fr;
        } else {
            fprintf(stderr, "qbench: no device-memory figures: %s\n", err.msg);
            r.vram = false;
        }
    }
    if ((rc = measure_ceilings(o, &r, gpu)) != 0)
        goto out;

    qrun_session_params sp;
    qrun_session_params_init(&sp);
    const int need = o->tg_context + o->tg;
    r.n_ctx = sp.n_ctx = o->pp > need ? o->pp : need;
    r.n_batch = sp.n_batch = o->n_batch ? o->n_batch : o->pp > 0 ? o->pp : 512;
    if (r.n_batch > r.n_ctx)
        r.n_batch = sp.n_batch = r.n_ctx;
    sp.kv_type = o->kv;
    sp.n_threads = o->n_threads;
    if (qrun_session_create(m, &sp, &s, msg, sizeof msg) != QRUN_OK) {
        fprintf(stderr, "qbench: session of %d positions: %s\n", r.n_ctx, msg);
        rc = 1;
        goto out;
    }
    vram_sample(&r, &least_free);

    /* random ids: the speed of a forward pass does not depend on them */
    ids = malloc((size_t)r.n_ctx * sizeof *ids);
    r.pp_seconds = calloc((size_t)o->reps, sizeof *r.pp_seconds);
    r.tg_seconds = calloc((size_t)o->reps, sizeof *r.tg_seconds);
    if (!ids || !r.pp_seconds || !r.tg_seconds) {
        fprintf(stderr, "qbench: out of memory\n");
        rc = 1;
        goto out;
    }
    for (int i = 0; i < r.n_ctx; i++)
        ids[i] = (int32_t)(splitmix64(o->syn.seed ^ 0x5bd1e995u, (uint64_t)i) %
                           (uint64_t)r.info.vocab_size);
    g_session = s;
    if ((o->pp > 0 && (rc = run_prefill(o, s, ids, &r, &least_free)) != 0) ||
        (o->tg > 0 && (rc = run_decode(o, s, ids, &r, &least_free)) != 0)) {
        g_session = NULL;
        goto out;
    }
    g_session = NULL;
    if (o->pp > 0)
        r.pp_tps = rates(r.pp_seconds, o->reps, o->pp);
    if (o->tg > 0)
        r.tg_tps = rates(r.tg_seconds, o->reps, o->tg);
    if (r.vram)
        r.vram_peak = used_since(before, least_free);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        r.peak_rss = (uint64_t)ru.ru_maxrss * 1024u;
    if (o->json)
        report_json(&r);
    else
        report_table(&r);
    rc = 0;
out:
    qrun_session_free(s);
    qrun_model_free(m);
    free(ids);
    free(r.pp_seconds);
    free(r.tg_seconds);
    traffic_free(&r.tr);
    return rc;
}

int main(int argc, char **argv)
{
    options o = {.pp = 512, .tg = 128, .tg_context = 16, .reps = 5, .warmup = 1,
                 .bw_reps = 10, .gpu_layers = -1, .backend = QRUN_BACKEND_AUTO,
                 .kv = QRUN_KV_F16, .verify = true};
    synth_options_init(&o.syn);
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;
    o.syn.shape = o.shape;
    o.syn.n_threads = o.n_threads;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    rc = run(&o);
    remove_tmp();
    return rc;
}
