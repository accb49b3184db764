/* Timing of qk_matmul (src/kernels/matmul*.cu) on LLM-sized weights: for
 * nf4, nf4 with double quantization, int8 (threshold 6) and f16 weights,
 * decode (m = 1, 4, 8: fused GEMV; reported as GB/s of weight bytes read,
 * against a device-to-device copy of the same bytes) and prefill (m = 16
 * and 512: dequantize + cuBLAS; TFLOP/s). Weights are random codes and
 * scales (no quantization pass needed to time the kernels); correctness is
 * tests/gpu/test_gpu_matmul.c's job.
 *
 *   matmul_gpu_bench [-i iterations] [-c f16|bf16|f32] [-k nf4|nf4+dq|int8|f16]
 *                    [-m 1|4|8|16|512]   (one m only)
 *                    [-s NxK]...         (these shapes instead of the 7B ones)
 *                    [-o columns]        (int8: x has this many outlier columns,
 *                                         |x| >= 6, spread over K; default none)
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/device.h"
#include "dtype.h"
#include "kernels/matmul.h"
#include "quant.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd32(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 32);
}
static float frand(void) { return (float)rnd32() / 4294967296.0f * 2.0f - 1.0f; }

#define CHECK(call)                                                                           \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e_));                       \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

static void *dev_random(size_t bytes)
{
    unsigned char *h = malloc(bytes);
    if (!h) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < bytes; i++)
        h[i] = (unsigned char)rnd32();
    void *d = NULL;
    CHECK(cudaMalloc(&d, bytes));
    CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

static float *dev_floats(size_t n, float lo, float hi)
{
    float *h = malloc(n * sizeof *h);
    if (!h) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        h[i] = lo + (hi - lo) * (0.5f + 0.5f * frand());
    float *d = NULL;
    CHECK(cudaMalloc((void **)&d, n * sizeof *d));
    CHECK(cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

typedef struct bweight {
    const char *name;
    qweight w;
    void *bufs[4];
    size_t bytes; /* what a decode step reads: codes + scales */
} bweight;

static void make(bweight *b, const char *kind, uint64_t N, uint64_t K)
{
    memset(b, 0, sizeof *b);
    b->name = kind;
    qweight *w = &b->w;
    w->rows = N;
    w->cols = K;
    uint64_t n = N * K, nb = quant_nblocks(n, 64);
    if (!strcmp(kind, "nf4") || !strcmp(kind, "nf4+dq")) {
        w->dtype = QDT_NF4;
        w->blocksize = 64;
        w->data = b->bufs[0] = dev_random(n / 2);
        b->bytes = n / 2;
        if (!strcmp(kind, "nf4")) {
            w->absmax = b->bufs[1] = dev_floats(nb, 0.01f, 0.1f);
            b->bytes += nb * 4;
        } else {
            w->qabsmax = b->bufs[1] = dev_random(nb);
            w->absmax2 = b->bufs[2] = dev_floats((nb + 255) / 256, 0.01f, 0.02f);
            w->dq_map = b->bufs[3] = dev_floats(256, -1.0f, 1.0f);
            w->absmax_offset = 0.05f;
            b->bytes += nb + (nb + 255) / 256 * 4;
        }
    } else if (!strcmp(kind, "int8")) {
        w->dtype = QDT_I8;
        w->data = b->bufs[0] = dev_random(n);
        w->scb = b->bufs[1] = dev_floats(N, 0.5f, 2.0f);
        w->int8_threshold = 6.0f;
        b->bytes = n + N * 4;
    } else {
        w->dtype = QDT_F16;
        uint16_t *h = malloc(n * 2);
        for (uint64_t i = 0; i < n; i++)
            h[i] = qf32_to_f16(frand() * 0.05f);
        void *d = NULL;
        CHECK(cudaMalloc(&d, n * 2));
        CHECK(cudaMemcpy(d, h, n * 2, cudaMemcpyHostToDevice));
        free(h);
        w->data = b->bufs[0] = d;
        b->bytes = n * 2;
    }
}

static void release(bweight *b)
{
    for (int i = 0; i < 4; i++)
        if (b->bufs[i])
            cudaFree(b->bufs[i]);
}

/* Seconds per call, averaged over `iters` after 3 warm-up calls. */
static double time_matmul(qk_blas *bl, cudaStream_t s, const qweight *w, const float *x, int m,
                          qdtype T, float *y, int iters)
{
    qerr err = {0};
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    for (int i = 0; i < 3 + iters; i++) {
        if (i == 3)
            CHECK(cudaEventRecord(a, s));
        if (!qk_matmul(bl, w, x, m, T, QDT_F32, NULL, T, y, &err)) {
            fprintf(stderr, "qk_matmul: %s\n", err.msg);
            exit(1);
        }
    }
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms * 1e-3 / iters;
}

/* Device-to-device copy of `bytes` (read + write), as the bandwidth yardstick:
 * returns the read rate, bytes / time, halved for the write. */
static double copy_gbps(cudaStream_t s, size_t bytes, int iters)
{
    void *src = NULL, *dst = NULL;
    CHECK(cudaMalloc(&src, bytes));
    CHECK(cudaMalloc(&dst, bytes));
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
    CHECK(cudaEventRecord(a, s));
    for (int i = 0; i < iters; i++)
        CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaFree(src);
    cudaFree(dst);
    return 2.0 * (double)bytes * iters / (ms * 1e-3) / 1e9;
}

int main(int argc, char **argv)
{
    int iters = 50, only_m = 0;
    const char *only = NULL;
    /* the products of llama-2-7b and falcon-7b, or those given with -s */
    struct {
        uint64_t N, K;
    } shapes[16] = {{4096, 4096},  {11008, 4096}, {4096, 11008},
                    {4672, 4544}, {4544, 4544},  {18176, 4544}, {4544, 18176}};
    size_t nshapes = 7, given = 0;
    int outliers = 0;
    qdtype T = QDT_F16;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-i") && i + 1 < argc) {
            iters = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "-k") && i + 1 < argc) {
            only = argv[++i];
            if (strcmp(only, "nf4") && strcmp(only, "nf4+dq") && strcmp(only, "int8") &&
                strcmp(only, "f16")) {
                fprintf(stderr, "-k: unknown weight kind '%s' (nf4, nf4+dq, int8, f16)\n", only);
                return 2;
            }
        } else if (!strcmp(argv[i], "-m") && i + 1 < argc) {
            only_m = atoi(argv[++i]);
            if (only_m != 1 && only_m != 4 && only_m != 8 && only_m != 16 && only_m != 512) {
                fprintf(stderr, "-m: one of 1, 4, 8, 16, 512\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "-c") && i + 1 < argc) {
            int t = qdtype_from_name(argv[++i]);
            if (t != QDT_F16 && t != QDT_BF16 && t != QDT_F32) {
                fprintf(stderr, "-c: f16, bf16 or f32\n");
                return 2;
            }
            T = (qdtype)t;
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
            outliers = atoi(argv[++i]);
            if (outliers < 0 || outliers > 4096) {
                fprintf(stderr, "-o: 0 to 4096 outlier columns\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "-s") && i + 1 < argc) {
            unsigned long long n = 0, k = 0;
            char tail = 0;
            if (sscanf(argv[++i], "%llux%llu%c", &n, &k, &tail) != 2 || !n || !k ||
                k % 64 || n > 18176 || k > 18176 || given == 16) {
                fprintf(stderr, "-s: NxK with N, K <= 18176 and K a multiple of 64 (at most 16)\n");
                return 2;
            }
            shapes[given].N = n, shapes[given].K = k;
            nshapes = ++given;
        } else {
            fprintf(stderr, "usage: matmul_gpu_bench [-i iterations] [-c f16|bf16|f32] [-k nf4|nf4+dq|int8|f16] [-m 1|4|8|16|512] [-s NxK]... [-o columns]\n");
            return 2;
        }
    }
    if (iters < 1)
        iters = 1;
    qerr err = {0};
    if (cuda_device_count(&err) <= 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    cuda_device_info info;
    if (cuda_device_query(0, &info, &err) != QRUN_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    static const char *kinds[] = {"nf4", "nf4+dq", "int8", "f16"};
    static const int ms[] = {1, 4, 8, 16, 512};
    const int max_m = 512;
    cudaStream_t s;
    int greatest = 0;
    CHECK(cudaDeviceGetStreamPriorityRange(NULL, &greatest));
    /* the highest priority, as the CUDA backend's stream (the prefill
     * tiles' side stream yields to it) */
    CHECK(cudaStreamCreateWithPriority(&s, cudaStreamDefault, greatest));
    qk_blas *bl = qk_blas_create(s, qk_matmul_workspace_size(max_m, 18176, 18176, T), &err);
    if (!bl) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    float *x = dev_floats((size_t)max_m * 18176, -1.0f, 1.0f);
    float *y = NULL;
    CHECK(cudaMalloc((void **)&y, (size_t)max_m * 18176 * sizeof(float)));
    printf("%s, compute %s, %d iterations; copy bandwidth (read side) %.0f GB/s\n", info.name,
           qdtype_name(T), iters, copy_gbps(s, (size_t)256 << 20, 20));
    printf("%-7s %6s %6s | decode us (GB/s of weight)                  | prefill us (TFLOP/s)\n",
           "weight", "N", "K");
    printf("%-7s %6s %6s | m=1                m=4        m=8          | m=16          m=512\n", "",
           "", "");
    for (size_t si = 0; si < nshapes; si++) {
        for (size_t ki = 0; ki < sizeof kinds / sizeof kinds[0]; ki++) {
            if (only && strcmp(only, kinds[ki]))
                continue;
            bweight b;
            make(&b, kinds[ki], shapes[si].N, shapes[si].K);
            /* x as m rows of K: column j * K / outliers of every row gets 8.0
             * (an int8 outlier), for this shape only */
            const uint64_t K = shapes[si].K;
            const int cols = b.w.dtype == QDT_I8 && (uint64_t)outliers <= K ? outliers : 0;
            for (int r = 0; r < (only_m ? only_m : max_m) && cols; r++)
                for (int j = 0; j < cols; j++)
                    CHECK(cudaMemcpy(x + (uint64_t)r * K + (uint64_t)j * K / (uint64_t)cols,
                                     &(float){8.0f}, sizeof(float), cudaMemcpyHostToDevice));
            printf("%-7s %6llu %6llu |", b.name, (unsigned long long)shapes[si].N,
                   (unsigned long long)shapes[si].K);
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
                int m = ms[mi];
                if (only_m && m != only_m) {
                    printf(m <= QK_GEMV_MAX_M ? " %14s" : " | %15s", "-");
                    continue;
                }
                double t = time_matmul(bl, s, &b.w, x, m, T, y, iters);
                if (m <= QK_GEMV_MAX_M)
                    printf(" %7.1f (%4.0f)", t * 1e6, (double)b.bytes / t / 1e9);
                else
                    printf(" | %7.1f (%5.1f)", t * 1e6,
                           2.0 * m * (double)shapes[si].N * (double)shapes[si].K / t / 1e12);
            }
            printf(cols ? " (%d outlier columns)\n" : "\n", cols);
            fflush(stdout);
            release(&b);
            if (cols) { /* back to values in (-1, 1) */
                cudaFree(x);
                x = dev_floats((size_t)max_m * 18176, -1.0f, 1.0f);
            }
        }
    }
    qk_blas_free(bl);
    cudaFree(x);
    cudaFree(y);
    cudaStreamDestroy(s);
    return 0;
}
