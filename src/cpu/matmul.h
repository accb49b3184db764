/* CPU matrix product with a stored weight: y[M,N] = x[M,K] · Wᵀ (+ bias[N])
 * for every weight dtype of src/weight.h, dequantizing on the fly.
 *
 * Numerics (the runtime's reference, ../shared/docs/bnb-format.md §5-§6):
 *  - nf4/fp4/f16/bf16/f32 weights: each weight value is first made exactly
 *    what bitsandbytes' dequantize-then-GEMM path uses,
 *        W_T = RNE_T(f32(LUT[code] · absmax))      (4-bit; the absmax of a
 *                                                    double-quantized weight
 *                                                    is rebuilt with two
 *                                                    roundings first)
 *        W_T = RNE_T(value)                        (f16/bf16/f32 weights)
 *    where T is the `compute` dtype (F32, F16 or BF16); then y = Σ x·W_T is
 *    accumulated in f32 (products and sums are separate roundings) and the
 *    bias (converted to f32) is added once at the end. x is used as given:
 *    the engine keeps activations at compute-dtype values already.
 *  - int8 (LLM.int8, §5, bitsandbytes' Linear8bitLt exactly): x is cast to
 *    f16; outlier columns (|x16| >= threshold in some row, threshold > 0)
 *    leave the int8 product; the int8 part is the exact int32 product,
 *    dequantized to an f16 value (f16 bias fused with fmaf, any other bias
 *    added in f16), converted to T; outliers add
 *    Σ RNE_T(x[:,O]) · RNE_T(dequant(CB[:,O])) in f32 and the sum is rounded
 *    to T. y holds the T-valued result as f32.
 *
 * Results do not depend on the thread count: the work is split into tiles
 * chosen from the shape alone, and each output element is summed by one
 * task in a fixed order. Small M (<= QMATMUL_SMALL_M) and larger M use
 * different kernels, so a row's result can differ in the last bits between
 * the two (f32 summation order only; both are within the 1e-5 bound). */
#ifndef QRUN_CPU_MATMUL_H
#define QRUN_CPU_MATMUL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/threads.h"
#include "dtype.h"
#include "error.h"
#include "weight.h"

/* Up to this many rows of x go through the row-streaming kernel (each weight
 * byte read once, dot products for all rows); more rows use the tiled GEMM. */
#define QMATMUL_SMALL_M 4

/* Bytes of caller-provided scratch that qmatmul needs for `m` rows of x with
 * this weight (0 except for int8, which quantizes the activations into it).
 * The engine sizes it once per session for its largest batch. */
size_t qmatmul_scratch_size(const qweight *w, uint64_t m);

/* y[m, w->rows] = x[m, w->cols] · Wᵀ (+ bias). x and y are f32 row-major and
 * must not overlap. bias: NULL, or w->rows values of bias_dtype (F32, F16 or
 * BF16). compute: QDT_F32, QDT_F16 or QDT_BF16, the model dtype: dequantized
 * weights are rounded to it, and for int8 it decides how the bias is added
 * (fused before the f16 rounding in an f16 model, as bitsandbytes does for an
 * fp16 bias; added to the f16 result otherwise). scratch: at least
 * qmatmul_scratch_size(w, m) bytes (NULL when that is 0). pool may be NULL
 * (run in the caller). Fails only on invalid arguments. */
bool qmatmul(const qweight *w, const float *x, uint64_t m, qdtype compute, qdtype bias_dtype,
             const void *bias, float *y, void *scratch, size_t scratch_size, qthreads *pool,
             qerr *err);

/* Row `row` of W dequantized as qmatmul sees it (W_T values for 4-bit and
 * plain weights; for int8 the int8-dequantized value
 * RNE_T(f32(f32(CB·SCB)·f32(1/127)))), w->cols floats. For quantized
 * embeddings. */
bool qmatmul_dequant_row(const qweight *w, uint64_t row, qdtype compute, float *out, qerr *err);

/* Round n f32 values in place to the nearest value of t (F16, BF16; RNE,
 * overflow to inf, NaN kept; F32 leaves them). Vectorizable; bitwise equal
 * to qf32_to_f16 / qf32_to_bf16 then back to f32. */
void qmatmul_round(qdtype t, float *v, size_t n);

/* LLM.int8 activation quantizer, bitsandbytes' int8_vectorwise_quant on the
 * f16 cast of x[m, k]: outlier columns (ascending, *n_outliers of them, into
 * outlier_cols[k]) when threshold > 0; sca[m] = row absmax of |x16| over
 * elements below the threshold; ca[m, k] = round_half_even(x16 · (127/sca))
 * with outlier columns zeroed (and 0 for a row with sca == 0). 127/sca is
 * the IEEE quotient where the GPU uses __fdividef, so a ca value can differ
 * from bitsandbytes' only where x16·127/sca lies within about 2 f32 ulps of
 * a half-integer (quant_int8_near_half). */
void qmatmul_int8_quantize_acts(const float *x, uint64_t m, uint64_t k, float threshold,
                                int8_t *ca, float *sca, uint32_t *outlier_cols,
                                uint32_t *n_outliers);

#endif
