/* Matrix products with stored weights on the GPU: y[m, N] = x[m, K] · Wᵀ
 * (+ bias), the function qmatmul computes on the CPU (src/cpu/matmul.h, its
 * numerics comment is the contract), followed by rounding to `round_to`
 * (qmatmul_round; QDT_F32: none) as the backends' matmul op does.
 *
 *  - decode (m <= QK_GEMV_MAX_M): fused dequantize-GEMV kernels that read the
 *    packed weight once for all m rows: nf4/fp4 (absmax f32 or double-
 *    quantized), int8 (LLM.int8 with outlier columns, threshold 0 included)
 *    and f16/bf16/f32 weights;
 *  - prefill (larger m): the weight is dequantized (to the compute dtype) in
 *    tiles into the workspace and multiplied with cuBLASLt (f32
 *    accumulation); f16/bf16 weights go to cuBLASLt directly. int8 uses the
 *    exact int32 product (integer arithmetic is exact, so the int8 part
 *    equals the CPU's bit for bit) plus the outlier columns.
 * Launches depend only on the shapes and m, so they are graph-capturable. */
#ifndef QRUN_KERNELS_MATMUL_H
#define QRUN_KERNELS_MATMUL_H

#include <stddef.h>

#include "kernels/qk.h"
#include "weight.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QK_GEMV_MAX_M 8

/* cuBLASLt handle and workspace of one stream (one per backend session). */
typedef struct qk_blas qk_blas;

/* Workspace bytes qk_matmul needs for products of up to max_m rows with any
 * weight of at most max_n rows and max_k columns, in compute dtype
 * `compute` (dequantized tiles, x converted for cuBLASLt, int8 activations). */
size_t qk_matmul_workspace_size(int max_m, uint64_t max_n, uint64_t max_k, qdtype compute);

/* Create the cuBLASLt handle for `stream` with `workspace_bytes` of device
 * workspace (qk_matmul_workspace_size). NULL with an error (QRUN_ERR_DEVICE,
 * naming cuBLASLt or the allocation and its size) on failure. */
qk_blas *qk_blas_create(cudaStream_t stream, size_t workspace_bytes, qerr *err);
void qk_blas_free(qk_blas *b);

/* Prefill dequantizes weights in tiles of at most this many bytes (default
 * and maximum: what the workspace was sized for); tests lower it to reach
 * the tiled paths with small weights. */
void qk_blas_set_tile_bytes(qk_blas *b, size_t bytes);

/* The int8 decode GEMV (m <= 4) picks one of three kernel shapes per
 * product from the weight's shape and the device; tests force shape 0, 1
 * or 2 with this to check each (any other value: automatic, the default). */
void qk_blas_set_i8_shape(qk_blas *b, int shape);

/* y[m, w->rows] = round_to(x[m, w->cols] · Wᵀ + bias). w's pointers (data,
 * absmax, qabsmax, absmax2, dq_map, scb) and bias are device pointers; x and
 * y are device f32, must not overlap. compute: QDT_F32, QDT_F16 or QDT_BF16
 * (the dtype weights are dequantized to, as qmatmul). bias: NULL or w->rows
 * values of bias_dt. m in [1, the max_m of the workspace]. */
bool qk_matmul(qk_blas *b, const qweight *w, const float *x, int m, qdtype compute,
               qdtype bias_dt, const void *bias, qdtype round_to, float *y, qerr *err);

/* Element-wise ops folded into a product's epilogue: applied to each
 * output after the bias and round_to, in round_to, with the functions the
 * ops' own kernels use (kernels/ops.h), so the bits are those of the
 * product followed by qk_gelu and then qk_add. Saves their launches and
 * passes over y in decode. */
typedef struct qk_mm_post {
    bool gelu;        /* y = gelu(y) */
    const float *add; /* NULL, or y = y + add: device f32 [m, rows], overlapping no output of the
                         call (refused: QRUN_ERR_INVALID_ARGUMENT) */
} qk_mm_post;

/* ys[i] = qk_matmul(ws[i], x), then posts[i] (posts NULL: none), for
 * i < count (<= 3) with one input x: one GEMV launch when m <=
 * QK_GEMV_MAX_M and every weight takes the same GEMV kernel with the same
 * storage and cols (q/k/v, gate/up), one shared activation quantization
 * for int8, else one qk_matmul each. Same results as separate calls. */
bool qk_matmul_multi(qk_blas *b, const qweight *const *ws, int count, const float *x, int m,
                     qdtype compute, const qdtype *bias_dts, const void *const *biases,
                     qdtype round_to, const qk_mm_post *posts, float *const *ys, qerr *err);

#ifdef __cplusplus
}
#endif
#endif
