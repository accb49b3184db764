/* qconvert: turn a Hugging Face checkpoint directory into one .qbin file,
 * quantized as bitsandbytes quantizes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "convert.h"
#include "dtype.h"

static const char usage_text[] =
    "usage: qconvert HF_DIR -o OUT.qbin [options]\n"
    "\n"
    "Convert a Hugging Face checkpoint (config.json, model.safetensors or sharded\n"
    "model-*.safetensors with model.safetensors.index.json, tokenizer.model or\n"
    "tokenizer.json) into one .qbin file. Linear layers are quantized exactly as\n"
    "bitsandbytes quantizes them; embeddings, lm_head, norms and biases stay in the\n"
    "compute dtype.\n"
    "\n"
    "options:\n"
    "  -o, --output FILE        output .qbin (written to a temporary name first)\n"
    "  -q, --quant TYPE         nf4 (default), fp4, int8, f16, bf16 or f32\n"
    "      --double-quant       nf4/fp4: quantize the absmax too\n"
    "                           (bnb_4bit_use_double_quant)\n"
    "      --blocksize N        nf4/fp4 block size: 32, 64 (default), 128, 256,\n"
    "                           512, 1024, 2048 or 4096\n"
    "      --compute-dtype T    f16, bf16 or f32 (default: the checkpoint's dtype;\n"
    "                           f16 for float32 checkpoints)\n"
    "      --int8-threshold T   LLM.int8 outlier threshold (default 6.0; 0 = none)\n"
    "      --device D           where nf4/fp4/int8 weights are quantized: auto\n"
    "                           (default: the GPU when there is one), cpu or cuda.\n"
    "                           The GPU reproduces bitsandbytes' CUDA kernels bit\n"
    "                           for bit; the CPU divides exactly and differs only\n"
    "                           in codes within an ulp of a decision threshold\n"
    "      --quiet              no progress output\n"
    "  -h, --help               this text\n"
    "      --version            print the version\n"
    "\n"
    "exit status: 0 on success, 1 when conversion fails, 2 on a usage error\n";

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "qconvert: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'qconvert --help'.\n");
    return 2;
}

typedef struct progress_state {
    int tty;
    int last_index;
    int last_percent;
} progress_state;

static bool on_progress(void *user, const qconvert_progress *p)
{
    progress_state *s = user;
    int pct = p->bytes_total ? (int)(100.0 * (double)p->bytes_done / (double)p->bytes_total) : 100;
    if (s->tty) {
        if (pct == s->last_percent && p->index == s->last_index)
            return true;
        const int width = 30;
        int fill = pct * width / 100;
        char bar[64];
        for (int i = 0; i < width; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[width] = '\0';
        fprintf(stderr, "\r[%s] %3d%% %d/%d %-48.48s", bar, pct, p->index + 1, p->count,
                p->tensor);
        fflush(stderr);
    } else if (p->index != s->last_index) {
        fprintf(stderr, "[%d/%d] %s\n", p->index + 1, p->count, p->tensor);
    }
    s->last_index = p->index;
    s->last_percent = pct;
    return true;
}

static int parse_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end)
        return -1;
    *out = (float)v;
    return 0;
}

static void human_bytes(uint64_t b, char *buf, size_t n)
{
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", v, unit[u]);
}

int main(int argc, char **argv)
{
    qconvert_options o;
    qconvert_options_init(&o);
    o.device = QCONVERT_DEVICE_AUTO; /* the library defaults to the CPU; the tool uses a GPU */
    int quiet = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VALUE()                                                                                \
    do {                                                                                            \
        if (!next)                                                                                  \
            return usage_error("option %s needs a value", a);                                      \
        i++;                                                                                        \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("qconvert %s\n", QRUN_VERSION_STRING);
            return 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            NEED_VALUE();
            o.output_path = next;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quant")) {
            NEED_VALUE();
            int q = qconvert_quant_from_name(next);
            if (q < 0)
                return usage_error("unknown quantization '%s' (nf4, fp4, int8, f16, bf16, f32)",
                                   next);
            o.quant = (qconvert_quant)q;
        } else if (!strcmp(a, "--double-quant")) {
            o.double_quant = true;
        } else if (!strcmp(a, "--blocksize")) {
            NEED_VALUE();
            char *end;
            long v = strtol(next, &end, 10);
            if (*end || end == next || v <= 0 || v > 1 << 20)
                return usage_error("bad --blocksize '%s'", next);
            o.blocksize = (int)v;
        } else if (!strcmp(a, "--compute-dtype")) {
            NEED_VALUE();
            if (!strcmp(next, "f16") || !strcmp(next, "float16"))
                o.compute_dtype = QDT_F16;
            else if (!strcmp(next, "bf16") || !strcmp(next, "bfloat16"))
                o.compute_dtype = QDT_BF16;
            else if (!strcmp(next, "f32") || !strcmp(next, "float32"))
                o.compute_dtype = QDT_F32;
            else
                return usage_error("unknown compute dtype '%s' (f16, bf16, f32)", next);
        } else if (!strcmp(a, "--int8-threshold")) {
            NEED_VALUE();
            if (parse_float(next, &o.int8_threshold) != 0)
                return usage_error("bad --int8-threshold '%s'", next);
        } else if (!strcmp(a, "--device")) {
            NEED_VALUE();
            int d = qconvert_device_from_name(next);
            if (d < 0)
                return usage_error("unknown device '%s' (auto, cpu, cuda)", next);
            o.device = (qconvert_device)d;
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option '%s'", a);
        } else if (!o.input_dir) {
            o.input_dir = a;
        } else {
            return usage_error("unexpected argument '%s'", a);
        }
#undef NEED_VALUE
    }
    if (!o.input_dir)
        return usage_error("%s", "missing HF_DIR");
    if (!o.output_path)
        return usage_error("%s", "missing -o OUT.qbin");
    if (o.double_quant && o.quant != QCONVERT_NF4 && o.quant != QCONVERT_FP4)
        return usage_error("--double-quant needs --quant nf4 or fp4, not %s",
                           qconvert_quant_name(o.quant));

    progress_state ps = {.tty = isatty(STDERR_FILENO), .last_index = -1, .last_percent = -1};
    if (!quiet) {
        o.progress = on_progress;
        o.user = &ps;
    }
    qerr err;
    qerr_clear(&err);
    qconvert_stats st;
    qrun_status rc = qconvert_run(&o, &st, &err);
    if (!quiet && ps.tty)
        fputc('\n', stderr);
    if (rc != QRUN_OK) {
        fprintf(stderr, "qconvert: %s\n", err.msg[0] ? err.msg : qrun_status_string(rc));
        return 1;
    }
    char fsize[32], rss[32];
    human_bytes(st.file_bytes, fsize, sizeof fsize);
    human_bytes(st.peak_rss_bytes, rss, sizeof rss);
    double bpw = st.params ? 8.0 * (double)st.file_bytes / (double)st.params : 0.0;
    printf("wrote %s\n", o.output_path);
    printf("  architecture    %s (%s)\n", st.architecture, st.hf_architecture);
    printf("  weights         %s%s, compute dtype %s\n", qconvert_quant_name(o.quant),
           o.double_quant ? " + double quant" : "", qdtype_name((qdtype)st.compute_dtype));
    if (st.quantized_params)
        printf("  quantized on    %s%s\n", st.device_name,
               st.device == QCONVERT_DEVICE_CUDA ? " (bitsandbytes' CUDA numerics)" : "");
    printf("  parameters      %llu (%llu quantized) in %d tensors\n",
           (unsigned long long)st.params, (unsigned long long)st.quantized_params, st.tensors);
    printf("  file size       %s, %.2f bits per parameter\n", fsize, bpw);
    printf("  time            %.2f s\n", st.seconds);
    printf("  peak RAM        %s\n", rss);
    return 0;
}
