/* qk_matmul: the entry points of matmul.h. Chooses the path from the shape
 * and m alone (so a captured graph replays the same launches):
 *  - int8: quantize the activations, then the dp4a GEMV (m <= 8) or, per
 *    chunk of weight rows, the exact int32 product (cuBLAS int8 GEMM where
 *    cols % 4 == 0, else a dp4a tiled kernel) and the output assembly;
 *  - m <= QK_GEMV_MAX_M: the fused dequantize-GEMV;
 *  - else: x converted to T (exact: the engine's activations are already
 *    T values), weight rows dequantized to T in chunks of at most
 *    MM_CHUNK_BYTES (f32/f16/bf16 weights stored in T are used in place),
 *    cublasGemmEx with f32 accumulation (CUBLAS_COMPUTE_32F in the default
 *    math mode: no TF32), then bias + round_to in one small kernel.
 *
 * Workspace layout (offsets from plan_for, 256-byte aligned):
 *   [cuBLAS workspace | x in T, or the int8 activations | int8 row scales,
 *    outlier flags, outlier list and count | chunk: dequantized rows, or
 *    the int32 products of a row chunk]. */
#include <cublas_v2.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/matmul_parts.cuh"
#include "quant.h"

/* cuBLAS' own workspace: set explicitly so that a GEMM captured into a graph
 * never allocates. 32 MiB is what cuBLAS asks for on Hopper. */
#define MM_BLAS_WS ((size_t)32 << 20)
/* Upper bound of one chunk of dequantized rows (or int32 products). 16 MiB
 * (to keep the chunk in the H100's L2 for cuBLAS) measured slower: nf4
 * pp512 11.6k tok/s against 17.2k with 64 MiB (docs/perf.md). */
#define MM_CHUNK_BYTES ((size_t)64 << 20)
/* Shapes past this many elements in one buffer are refused (no overflow). */
#define MM_MAX_ELEMS ((uint64_t)1 << 46)

struct qk_blas {
    cublasHandle_t h;
    cudaStream_t stream;
    unsigned char *ws;
    size_t ws_bytes;
};

namespace {

bool blas_ok(cublasStatus_t st, const char *what, qerr *err)
{
    if (st == CUBLAS_STATUS_SUCCESS)
        return true;
    qerr_set(err, QRUN_ERR_DEVICE, "%s: cuBLAS %s", what, cublasGetStatusName(st));
    return false;
}

struct mm_plan {
    size_t act, sca, flags, ocols, nout, chunk, total;
};

size_t align256(size_t v) { return (v + 255) & ~(size_t)255; }
uint64_t umax(uint64_t a, uint64_t b) { return a > b ? a : b; }
uint64_t umin(uint64_t a, uint64_t b) { return a < b ? a : b; }
size_t elt_size(qdtype T) { return T == QDT_F32 ? 4 : 2; }

/* Rows of a dequantized chunk: as many as fit MM_CHUNK_BYTES, at least 1. */
uint64_t dq_chunk_rows(uint64_t N, uint64_t K, qdtype T)
{
    return umax(1, umin(N, MM_CHUNK_BYTES / elt_size(T) / K));
}
/* Rows of an int32 product chunk for m activation rows. */
uint64_t i8_chunk_rows(uint64_t N, uint64_t m)
{
    return umax(1, umin(N, MM_CHUNK_BYTES / 4 / m));
}

/* The layout for m rows with an N x K weight. Every region size is a
 * nondecreasing function of (m, N, K), so the plan of the workspace's
 * maxima covers every smaller call; the chunk bounds the row counts above:
 * rows·K <= max(K, min(N·K, CHUNK/e)), and rows rounded up to 4 (ldc) times
 * m <= max(m, min(N·m, CHUNK/4)) + 3m. */
bool plan_for(uint64_t m, uint64_t N, uint64_t K, qdtype T, mm_plan *p)
{
    if (m == 0 || N == 0 || K == 0 || m > MM_MAX_ELEMS / K || N > MM_MAX_ELEMS / K ||
        N > MM_MAX_ELEMS / m)
        return false;
    const uint64_t e = elt_size(T);
    uint64_t act = m * K * e;
    uint64_t dq = umax(K, umin(N * K, MM_CHUNK_BYTES / e)) * e;
    uint64_t i8 = (umax(m, umin(N * m, MM_CHUNK_BYTES / 4)) + 3 * m) * 4;
    size_t off = align256(MM_BLAS_WS);
    p->act = off;
    off += align256(act);
    p->sca = off;
    off += align256(m * sizeof(float));
    p->flags = off;
    off += align256(K * sizeof(unsigned));
    p->ocols = off;
    off += align256(K * sizeof(unsigned));
    p->nout = off;
    off += align256(sizeof(unsigned));
    p->chunk = off;
    off += align256(umax(dq, i8));
    p->total = off;
    return true;
}

bool float_type(qdtype t) { return t == QDT_F32 || t == QDT_F16 || t == QDT_BF16; }

bool check_args(const qk_blas *b, const qweight *w, const float *x, int m, qdtype compute,
                qdtype bias_dt, const void *bias, qdtype round_to, const float *y, qerr *err)
{
    if (!b || !w || !w->data || !x || !y || m < 1 || w->rows == 0 || w->cols == 0 ||
        w->rows > INT32_MAX || w->cols > INT32_MAX) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: missing operand or bad shape");
        return false;
    }
    if (!float_type(compute) || !float_type(round_to) || (bias && !float_type(bias_dt))) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                 "matmul: compute, bias and output dtypes must be f32, f16 or bf16");
        return false;
    }
    return qweight_check(w, err);
}

mm_weight make_weight(const qweight *w)
{
    mm_weight mw;
    memset(&mw, 0, sizeof mw);
    mw.dtype = w->dtype;
    mw.N = w->rows;
    mw.K = w->cols;
    mw.data = w->data;
    if (qdtype_is_4bit(w->dtype)) {
        while ((1 << mw.bs_shift) < w->blocksize)
            mw.bs_shift++;
        mw.absmax = w->absmax;
        mw.qabsmax = w->qabsmax;
        mw.absmax2 = w->absmax2;
        mw.dq_map = w->dq_map;
        mw.absmax_offset = w->absmax_offset;
        memcpy(mw.lut, w->dtype == QDT_NF4 ? quant_nf4_lut : quant_fp4_lut, sizeof mw.lut);
    }
    mw.scb = w->scb;
    mw.threshold = w->int8_threshold;
    return mw;
}

cudaDataType blas_type(qdtype T)
{
    return T == QDT_F16 ? CUDA_R_16F : T == QDT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

/* y[:, n0 .. n0+nc) = x_T · A_Tᵀ, A = nc rows of K values in T. */
bool gemm_rows(qk_blas *b, const void *A, const void *xT, qdtype T, uint64_t nc, int m,
               uint64_t K, float *y, uint64_t N, qerr *err)
{
    const float one = 1.0f, zero = 0.0f;
    cudaDataType dt = blas_type(T);
    return blas_ok(cublasGemmEx(b->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)nc, m, (int)K, &one, A, dt,
                                (int)K, xT, dt, (int)K, &zero, y, CUDA_R_32F, (int)N,
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "matmul: cublasGemmEx", err);
}

bool float_prefill(qk_blas *b, const qweight *w, const mm_weight &mw, const float *x, int m,
                   qdtype T, const mm_epi &e, float *y, const mm_plan &p, qerr *err)
{
    const uint64_t N = w->rows, K = w->cols;
    const void *xT = x;
    if (T != QDT_F32) {
        xT = b->ws + p.act;
        if (!mm_convert_x(x, (uint64_t)m * K, T, b->ws + p.act, b->stream, err))
            return false;
    }
    if ((qdtype)w->dtype == T) { /* stored in T already: no copy */
        if (!gemm_rows(b, w->data, xT, T, N, m, K, y, N, err))
            return false;
    } else {
        const uint64_t rows = dq_chunk_rows(N, K, T);
        void *chunk = b->ws + p.chunk;
        for (uint64_t n0 = 0; n0 < N; n0 += rows) {
            uint64_t nc = umin(rows, N - n0);
            if (!mm_dequant(mw, T, n0 * K, nc * K, chunk, b->stream, err) ||
                !gemm_rows(b, chunk, xT, T, nc, m, K, y + n0, N, err))
                return false;
        }
    }
    if (e.bias || e.round_to != QDT_F32)
        return mm_bias_round(y, m, N, e, b->stream, err);
    return true;
}

bool int8_prefill(qk_blas *b, const mm_weight &mw, const float *x, int m, const mm_i8acts &a,
                  qdtype T, const mm_epi &e, float *y, const mm_plan &p, qerr *err)
{
    const uint64_t N = mw.N, K = mw.K;
    const uint64_t rows = i8_chunk_rows(N, (uint64_t)m);
    int32_t *acc = (int32_t *)(b->ws + p.chunk);
    /* cuBLAS' int8 GEMM wants 4-byte aligned rows; it may still decline a
     * shape (NOT_SUPPORTED, nothing enqueued): then the dp4a kernel. */
    bool blas = K % 4 == 0 && (uintptr_t)mw.data % 4 == 0;
    for (uint64_t n0 = 0; n0 < N; n0 += rows) {
        const uint64_t nc = umin(rows, N - n0), ldc = (nc + 3) & ~(uint64_t)3;
        if (blas) {
            const int32_t one = 1, zero = 0;
            cublasStatus_t st = cublasGemmEx(
                b->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)nc, m, (int)K, &one,
                (const int8_t *)mw.data + n0 * K, CUDA_R_8I, (int)K, a.ca, CUDA_R_8I, (int)K,
                &zero, acc, CUDA_R_32I, (int)ldc, CUBLAS_COMPUTE_32I, CUBLAS_GEMM_DEFAULT);
            if (st == CUBLAS_STATUS_NOT_SUPPORTED)
                blas = false;
            else if (!blas_ok(st, "matmul: int8 cublasGemmEx", err))
                return false;
        }
        if (!blas && !mm_i8_gemm(mw, n0, nc, m, a.ca, acc, ldc, b->stream, err))
            return false;
        if (!mm_i8_finish(mw, n0, nc, m, acc, ldc, x, a, T, e, y, b->stream, err))
            return false;
    }
    return true;
}

} /* namespace */

size_t qk_matmul_workspace_size(int max_m, uint64_t max_n, uint64_t max_k, qdtype compute)
{
    mm_plan p;
    if (max_m < 1 || !float_type(compute) || !plan_for((uint64_t)max_m, max_n, max_k, compute, &p))
        return SIZE_MAX; /* cannot be allocated: qk_blas_create then fails */
    return p.total;
}

qk_blas *qk_blas_create(cudaStream_t stream, size_t workspace_bytes, qerr *err)
{
    if (workspace_bytes < MM_BLAS_WS || workspace_bytes == SIZE_MAX) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: workspace of %zu bytes is too small",
                 workspace_bytes);
        return NULL;
    }
    qk_blas *b = (qk_blas *)calloc(1, sizeof *b);
    if (!b) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "matmul: out of host memory");
        return NULL;
    }
    b->stream = stream;
    b->ws_bytes = workspace_bytes;
    cudaError_t ce = cudaMalloc((void **)&b->ws, workspace_bytes);
    if (ce != cudaSuccess) {
        qerr_set(err, QRUN_ERR_DEVICE, "matmul: cudaMalloc of a %zu-byte workspace: %s",
                 workspace_bytes, cudaGetErrorString(ce));
        b->ws = NULL;
        qk_blas_free(b);
        return NULL;
    }
    cublasStatus_t st = cublasCreate(&b->h);
    if (st != CUBLAS_STATUS_SUCCESS) {
        b->h = NULL;
        blas_ok(st, "matmul: cublasCreate", err);
        qk_blas_free(b);
        return NULL;
    }
    if (!blas_ok(cublasSetStream(b->h, stream), "matmul: cublasSetStream", err) ||
        !blas_ok(cublasSetWorkspace(b->h, b->ws, MM_BLAS_WS), "matmul: cublasSetWorkspace", err) ||
        !blas_ok(cublasSetMathMode(b->h, CUBLAS_DEFAULT_MATH), "matmul: cublasSetMathMode",
                 err)) {
        qk_blas_free(b);
        return NULL;
    }
    return b;
}

void qk_blas_free(qk_blas *b)
{
    if (!b)
        return;
    if (b->h)
        cublasDestroy(b->h);
    if (b->ws)
        cudaFree(b->ws);
    free(b);
}

bool qk_matmul(qk_blas *b, const qweight *w, const float *x, int m, qdtype compute,
               qdtype bias_dt, const void *bias, qdtype round_to, float *y, qerr *err)
{
    if (!check_args(b, w, x, m, compute, bias_dt, bias, round_to, y, err))
        return false;
    mm_plan p;
    if (!plan_for((uint64_t)m, w->rows, w->cols, compute, &p) || p.total > b->ws_bytes) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                 "matmul: %d x %llu x %llu needs more workspace than the %zu bytes given", m,
                 (unsigned long long)w->rows, (unsigned long long)w->cols, b->ws_bytes);
        return false;
    }
    const mm_weight mw = make_weight(w);
    mm_epi e;
    e.bias_dt = bias_dt;
    e.bias = bias;
    e.round_to = round_to;
    if (w->dtype == QDT_I8) {
        mm_i8acts a;
        a.ca = (int8_t *)(b->ws + p.act);
        a.sca = (float *)(b->ws + p.sca);
        a.flags = (unsigned *)(b->ws + p.flags);
        a.ocols = (unsigned *)(b->ws + p.ocols);
        a.nout = (unsigned *)(b->ws + p.nout);
        if (!mm_i8_quantize(mw, x, m, a, b->stream, err))
            return false;
        if (m <= QK_GEMV_MAX_M)
            return mm_i8_gemv(mw, x, m, a, compute, e, y, b->stream, err);
        return int8_prefill(b, mw, x, m, a, compute, e, y, p, err);
    }
    if (m <= QK_GEMV_MAX_M)
        return mm_gemv(mw, x, m, compute, e, y, b->stream, err);
    return float_prefill(b, w, mw, x, m, compute, e, y, p, err);
}

bool qk_matmul_multi(qk_blas *b, const qweight *const *ws, int count, const float *x, int m,
                     qdtype compute, const qdtype *bias_dts, const void *const *biases,
                     qdtype round_to, float *const *ys, qerr *err)
{
    if (count < 1 || count > 3) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: %d products in one call", count);
        return false;
    }
    mm_weight mw[3];
    mm_epi e[3];
    bool gemv = m >= 1 && m <= QK_GEMV_MAX_M; /* int8 has its own path */
    for (int j = 0; j < count; j++) {
        gemv = gemv && ws[j]->dtype != QDT_I8;
        if (!check_args(b, ws[j], x, m, compute, bias_dts[j], biases[j], round_to, ys[j], err))
            return false;
        mw[j] = make_weight(ws[j]);
        e[j].bias_dt = bias_dts[j];
        e[j].bias = biases[j];
        e[j].round_to = round_to;
    }
    if (gemv)
        return mm_gemv_multi(mw, e, ys, count, x, m, compute, b->stream, err);
    /* LLM.int8 decode of one x: its quantization (scales, outlier columns)
     * depends on x and the threshold only, so it is done once for all */
    bool i8 = m >= 1 && m <= QK_GEMV_MAX_M;
    for (int j = 0; j < count; j++)
        i8 = i8 && mw[j].dtype == QDT_I8 && mw[j].K == mw[0].K &&
             mw[j].threshold == mw[0].threshold;
    if (i8) {
        mm_plan p;
        if (!plan_for((uint64_t)m, mw[0].N, mw[0].K, compute, &p) || p.total > b->ws_bytes) {
            qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: workspace too small");
            return false;
        }
        mm_i8acts a;
        a.ca = (int8_t *)(b->ws + p.act);
        a.sca = (float *)(b->ws + p.sca);
        a.flags = (unsigned *)(b->ws + p.flags);
        a.ocols = (unsigned *)(b->ws + p.ocols);
        a.nout = (unsigned *)(b->ws + p.nout);
        if (!mm_i8_quantize(mw[0], x, m, a, b->stream, err))
            return false;
        for (int j = 0; j < count; j++)
            if (!mm_i8_gemv(mw[j], x, m, a, compute, e[j], ys[j], b->stream, err))
                return false;
        return true;
    }
    for (int j = 0; j < count; j++)
        if (!qk_matmul(b, ws[j], x, m, compute, bias_dts[j], biases[j], round_to, ys[j], err))
            return false;
    return true;
}
