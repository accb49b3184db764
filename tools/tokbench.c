/* tokbench: single-threaded tokenizer throughput.
 *
 *   tokbench TOKENIZER_FILE [--kind sentencepiece|bpe] [-f TEXT_FILE] [--size MB] [--reps N]
 *            [--flags N]
 *
 * Builds a text of --size MB (10^6 bytes, default 1) by repeating TEXT_FILE
 * (default /usr/share/common-licenses/GPL-3), cut at a line end; encodes it
 * --reps times (default 5) and reports the median time as MB/s and tokens/s,
 * and the same for decoding the ids. The first run also checks that
 * decode(encode(text)) == text. --kind defaults to "bpe" for files that start
 * with '{' and "sentencepiece" otherwise. --flags are tok_encode flags
 * (1 = TOK_ADD_SPECIAL, 2 = TOK_PARSE_SPECIAL; default 0). Exit status 1 on
 * any error or a round-trip difference. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer.h"

static void usage(void)
{
    fprintf(stderr, "usage: tokbench TOKENIZER_FILE [--kind sentencepiece|bpe] [-f TEXT_FILE] "
                    "[--size MB] [--reps N] [--flags N]\n");
    exit(2);
}

static char *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "tokbench: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf)
            break;
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap)
            break;
        cap *= 2;
        char *nb = realloc(buf, cap);
        if (!nb) {
            free(buf);
            buf = NULL;
        }
        buf = nb;
    }
    if (!buf || ferror(f)) {
        fprintf(stderr, "tokbench: %s: read failed\n", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *size = n;
    return buf;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv)
{
    const char *tok_path = NULL, *text_path = "/usr/share/common-licenses/GPL-3";
    const char *kind_name = NULL;
    double size_mb = 1.0;
    int reps = 5;
    unsigned flags = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--kind") && v)
            kind_name = v, i++;
        else if (!strcmp(a, "-f") && v)
            text_path = v, i++;
        else if (!strcmp(a, "--size") && v)
            size_mb = atof(v), i++;
        else if (!strcmp(a, "--reps") && v)
            reps = atoi(v), i++;
        else if (!strcmp(a, "--flags") && v)
            flags = (unsigned)strtoul(v, NULL, 0), i++;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            usage();
        else if (a[0] == '-' || tok_path)
            usage();
        else
            tok_path = a;
    }
    if (!tok_path || size_mb <= 0 || reps < 1 || reps > 1000)
        usage();

    size_t tok_size = 0, src_size = 0;
    char *tok_bytes = read_all(tok_path, &tok_size);
    char *src = read_all(text_path, &src_size);
    if (!tok_bytes || !src)
        return 1;
    if (src_size == 0) {
        fprintf(stderr, "tokbench: %s is empty\n", text_path);
        return 1;
    }
    size_t bad = tok_utf8_valid_prefix(src, src_size);
    if (bad != src_size) {
        fprintf(stderr, "tokbench: %s: invalid UTF-8 at byte %zu\n", text_path, bad);
        return 1;
    }

    int kind;
    if (kind_name) {
        kind = tok_kind_from_name(kind_name);
        if (kind < 0) {
            fprintf(stderr, "tokbench: unknown kind \"%s\"\n", kind_name);
            return 2;
        }
    } else {
        size_t i = 0;
        while (i < tok_size && strchr(" \t\r\n", tok_bytes[i]))
            i++;
        kind = i < tok_size && tok_bytes[i] == '{' ? TOK_BPE : TOK_SENTENCEPIECE;
    }

    /* the text: whole copies of the source, then a prefix ending at a line
     * end (or at a UTF-8 boundary) */
    size_t want = (size_t)(size_mb * 1e6);
    char *text = malloc(want + 1);
    if (!text)
        return 1;
    size_t len = 0;
    while (len < want) {
        size_t n = src_size < want - len ? src_size : want - len;
        memcpy(text + len, src, n);
        len += n;
    }
    text[len] = 0;
    size_t cut = len;
    while (cut > 0 && text[cut - 1] != '\n' && len - cut < 4096)
        cut--;
    if (cut == 0 || text[cut - 1] != '\n') {
        cut = len;
        while (cut > 0 && ((unsigned char)text[cut] & 0xc0) == 0x80)
            cut--;
    }
    len = cut;
    text[len] = 0;

    qerr err = {0};
    double t0 = now();
    tok_tokenizer *t = tok_load((tok_kind)kind, tok_bytes, tok_size, &err);
    double t_load = now() - t0;
    if (!t) {
        fprintf(stderr, "tokbench: %s: %s\n", tok_path, err.msg);
        return 1;
    }

    double *enc_s = calloc((size_t)reps, sizeof(double));
    double *dec_s = calloc((size_t)reps, sizeof(double));
    size_t n_ids = 0;
    int status = 0;
    for (int r = 0; r < reps && enc_s && dec_s; r++) {
        int32_t *ids = NULL;
        size_t n = 0;
        t0 = now();
        qrun_status st = tok_encode(t, text, len, flags, &ids, &n, &err);
        enc_s[r] = now() - t0;
        if (st != QRUN_OK) {
            fprintf(stderr, "tokbench: encode: %s\n", err.msg);
            status = 1;
            break;
        }
        n_ids = n;
        char *out = NULL;
        size_t out_len = 0;
        t0 = now();
        st = tok_decode(t, ids, n, 0, &out, &out_len, &err);
        dec_s[r] = now() - t0;
        if (st != QRUN_OK) {
            fprintf(stderr, "tokbench: decode: %s\n", err.msg);
            free(ids);
            status = 1;
            break;
        }
        if (r == 0) {
            if (out_len != len || memcmp(out, text, len) != 0) {
                size_t p = 0;
                while (p < len && p < out_len && out[p] == text[p])
                    p++;
                fprintf(stderr,
                        "tokbench: decode(encode(text)) != text: first difference at byte %zu "
                        "(%zu vs %zu bytes)\n",
                        p, out_len, len);
                status = 1;
            } else {
                printf("round trip: decode(encode(text)) == text\n");
            }
        }
        free(out);
        free(ids);
    }
    if (status == 0 && enc_s && dec_s) {
        double me = median(enc_s, reps), md = median(dec_s, reps);
        double mb = (double)len / 1e6;
        printf("tokenizer: %s (%s, vocab %d, loaded in %.1f ms)\n", tok_path,
               kind == TOK_BPE ? "bpe" : "sentencepiece", tok_vocab_size(t), t_load * 1e3);
        printf("text: %s repeated to %zu bytes, %zu tokens (%.2f bytes/token), flags %u\n",
               text_path, len, n_ids, n_ids ? (double)len / (double)n_ids : 0.0, flags);
        printf("encode: median %.3f s of %d: %.2f MB/s, %.0f tokens/s\n", me, reps, mb / me,
               (double)n_ids / me);
        printf("decode: median %.3f s of %d: %.2f MB/s, %.0f tokens/s\n", md, reps, mb / md,
               (double)n_ids / md);
    }
    free(enc_s);
    free(dec_s);
    tok_free(t);
    free(text);
    free(src);
    free(tok_bytes);
    return status;
}
