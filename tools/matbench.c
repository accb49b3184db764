/* Micro-benchmark of the CPU matmul (src/cpu/matmul.c): decode (M = 1,
 * reported as GB/s of weight bytes and as a fraction of the measured read
 * bandwidth) and prefill (M = 128 by default, GFLOP/s) for nf4, nf4 with
 * double quantization, fp4, int8, f16 and bf16 weights.
 *
 *   matbench [-n N] [-k K] [-m M] [-t threads] [-c f32|f16|bf16] [-r seconds]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/matmul.h"
#include "cpu/threads.h"
#include "dtype.h"
#include "quant.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

/* Read bandwidth of one thread over a buffer much larger than the caches. */
static double read_bandwidth(void)
{
    size_t n = (size_t)256 << 20;
    uint64_t *b = malloc(n);
    if (!b)
        return 0;
    memset(b, 1, n);
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t i = 0; i < n / 8; i += 4) {
            s0 += b[i];
            s1 += b[i + 1];
            s2 += b[i + 2];
            s3 += b[i + 3];
        }
        double dt = now() - t0;
        volatile uint64_t sink = s0 + s1 + s2 + s3;
        (void)sink;
        if (n / dt > best)
            best = (double)n / dt;
    }
    free(b);
    return best / 1e9;
}

typedef struct wbuf {
    qweight w;
    void *data, *aux1, *aux2;
    uint64_t bytes; /* bytes read per product: codes + scales */
} wbuf;

static int make_weight(const char *kind, uint64_t N, uint64_t K, wbuf *b)
{
    memset(b, 0, sizeof *b);
    uint64_t n = N * K;
    float *src = malloc(n * sizeof *src);
    if (!src)
        return -1;
    for (uint64_t i = 0; i < n; i++)
        src[i] = frand() * 0.05f;
    qweight *w = &b->w;
    w->rows = N;
    w->cols = K;
    if (!strcmp(kind, "nf4") || !strcmp(kind, "nf4+dq") || !strcmp(kind, "fp4")) {
        w->dtype = kind[0] == 'f' ? QDT_FP4 : QDT_NF4;
        w->blocksize = 64;
        uint64_t nb = quant_nblocks(n, 64);
        uint8_t *codes = malloc(n / 2 + 1);
        float *absmax = malloc(nb * sizeof *absmax);
        quant_4bit_quantize(w->dtype == QDT_NF4 ? QUANT_NF4 : QUANT_FP4, src, n, 64, codes,
                            absmax);
        b->data = codes;
        w->data = codes;
        b->bytes = n / 2;
        if (!strcmp(kind, "nf4+dq")) {
            uint64_t ng = (nb + 255) / 256;
            uint8_t *q = malloc(nb);
            float *a2 = malloc(ng * sizeof *a2);
            w->absmax_offset = quant_dq_offset(absmax, nb);
            quant_dq_quantize(absmax, nb, w->absmax_offset, quant_dynamic_map, q, a2);
            free(absmax);
            w->qabsmax = q;
            w->absmax2 = a2;
            w->dq_map = quant_dynamic_map;
            b->aux1 = q;
            b->aux2 = a2;
            b->bytes += nb + ng * 4;
        } else {
            w->absmax = absmax;
            b->aux1 = absmax;
            b->bytes += nb * 4;
        }
    } else if (!strcmp(kind, "int8")) {
        w->dtype = QDT_I8;
        for (uint64_t i = 0; i < n; i++)
            src[i] = qf16_to_f32(qf32_to_f16(src[i]));
        int8_t *cb = malloc(n);
        float *scb = malloc(N * sizeof *scb);
        quant_int8_quantize_rows(src, N, K, cb, scb);
        w->data = cb;
        w->scb = scb;
        w->int8_threshold = 6.0f;
        b->data = cb;
        b->aux1 = scb;
        b->bytes = n + N * 4;
    } else {
        w->dtype = !strcmp(kind, "f16") ? QDT_F16 : QDT_BF16;
        uint16_t *h = malloc(n * 2);
        for (uint64_t i = 0; i < n; i++)
            h[i] = w->dtype == QDT_F16 ? qf32_to_f16(src[i]) : qf32_to_bf16(src[i]);
        w->data = h;
        b->data = h;
        b->bytes = n * 2;
    }
    free(src);
    return 0;
}

/* Seconds per call: repeat for at least `secs`, best of the calls; *cpu
 * gets the process CPU seconds per call (all threads), which a machine
 * shared with other work does not inflate. */
static double time_call(const qweight *w, const float *x, uint64_t m, qdtype t, float *y,
                        void *scratch, size_t ss, qthreads *pool, double secs, double *cpu)
{
    qerr err;
    if (!qmatmul(w, x, m, t, QDT_F32, NULL, y, scratch, ss, pool, &err)) {
        fprintf(stderr, "matmul: %s\n", err.msg);
        exit(1);
    }
    double best = 1e30, start = now(), c0 = cpu_now();
    int calls = 0;
    do {
        double t0 = now();
        qmatmul(w, x, m, t, QDT_F32, NULL, y, scratch, ss, pool, &err);
        double dt = now() - t0;
        if (dt < best)
            best = dt;
        calls++;
    } while (now() - start < secs);
    *cpu = (cpu_now() - c0) / calls;
    return best;
}

int main(int argc, char **argv)
{
    uint64_t N = 4096, K = 4096, M = 128;
    int threads[2] = {1, 2}, nthr = 2;
    qdtype compute = QDT_BF16;
    double secs = 1.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-n"))
            N = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "-k"))
            K = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "-m"))
            M = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "-t")) {
            threads[0] = atoi(argv[i + 1]);
            nthr = 1;
        } else if (!strcmp(argv[i], "-c"))
            compute = (qdtype)qdtype_from_name(argv[i + 1]);
        else if (!strcmp(argv[i], "-r"))
            secs = atof(argv[i + 1]);
        else {
            fprintf(stderr, "usage: matbench [-n N] [-k K] [-m M] [-t threads] "
                            "[-c f32|f16|bf16] [-r seconds]\n");
            return 2;
        }
    }
    double bw = read_bandwidth();
    printf("shape N=%llu K=%llu, prefill M=%llu, compute %s; one-thread read bandwidth %.2f GB/s\n",
           (unsigned long long)N, (unsigned long long)K, (unsigned long long)M,
           qdtype_name(compute), bw);
    float *x = malloc(M * K * sizeof *x), *y = malloc(M * N * sizeof *y);
    for (uint64_t i = 0; i < M * K; i++)
        x[i] = frand();
    qmatmul_round(compute, x, M * K);
    const char *kinds[] = {"nf4", "nf4+dq", "fp4", "int8", "f16", "bf16"};
    printf("%-7s %4s  %10s %9s %10s  %12s %12s\n", "weight", "thr", "decode GB/s", "of bw",
           "per cpu-s", "prefill GF/s", "per cpu-s");
    for (size_t ki = 0; ki < sizeof kinds / sizeof *kinds; ki++) {
        wbuf b;
        if (make_weight(kinds[ki], N, K, &b) != 0)
            return 1;
        size_t ss = qmatmul_scratch_size(&b.w, M);
        void *scratch = ss ? malloc(ss) : NULL;
        for (int ti = 0; ti < nthr; ti++) {
            qthreads *pool = qthreads_create(threads[ti], NULL);
            double cd, cp;
            double td = time_call(&b.w, x, 1, compute, y, scratch, ss, pool, secs, &cd);
            double tp = time_call(&b.w, x, M, compute, y, scratch, ss, pool, secs, &cp);
            double flop = 2.0 * (double)M * (double)N * (double)K;
            printf("%-7s %4d  %10.2f %8.0f%% %10.2f  %12.2f %12.2f\n", kinds[ki],
                   qthreads_count(pool), (double)b.bytes / td / 1e9,
                   100.0 * (double)b.bytes / td / 1e9 / bw, (double)b.bytes / cd / 1e9,
                   flop / tp / 1e9, flop / cp / 1e9);
            qthreads_free(pool);
        }
        free(scratch);
        free(b.data);
        free(b.aux1);
        free(b.aux2);
    }
    free(x);
    free(y);
    return 0;
}
