/* bitsandbytes' CUDA quantizers on the GPU, bit for bit: blockwise NF4/FP4,
 * double quantization of the absmax, and LLM.int8 row-wise weights. The
 * formats are those of src/quant.h (layout 1); the numerics are those of
 * bitsandbytes' kernels as its library is built (--use_fast_math), see
 * ../../shared/docs/bnb-format.md sections 1-3 and 5:
 *  - a block's scale is rcp.approx.ftz(absmax) and values are multiplied by
 *    it (never divided); int8 rows scale by div.approx.ftz(127, SCB);
 *  - subnormal inputs and products flush to zero, as under -ftz=true;
 *  - codes use the CUDA threshold literals with strict '>' (4-bit), the
 *    dynamic map's binary search with its midpoint rule (double quant), and
 *    round-half-even (int8).
 * So these reproduce bitsandbytes' codes, absmax, absmax2 and SCB exactly;
 * against src/quant.c (which divides exactly) a code can differ only where
 * the scaled value is within QUANT_GPU_RCP_ULPS of a decision boundary.
 *
 * Launchers follow qk.h: device pointers, work enqueued on `s`, no
 * synchronization or allocation. */
#ifndef QRUN_KERNELS_QUANTIZE_H
#define QRUN_KERNELS_QUANTIZE_H

#include "kernels/qk.h"
#include "quant.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Blockwise 4-bit quantization of n values x (dtype x_dt: f32, f16 or bf16,
 * each converted exactly to f32) in blocks of `blocksize` (a size
 * quant_blocksize_valid accepts) over the flat array: packed gets
 * ceil(n/2) bytes (element 2j in the high nibble of byte j; an odd tail is
 * padded with the code of 0), absmax gets ceil(n/blocksize) floats. */
bool qk_quantize_4bit(quant_4bit_type type, const void *x, qdtype x_dt, uint64_t n,
                      int blocksize, uint8_t *packed, float *absmax, cudaStream_t s, qerr *err);

/* Double quantization of nblocks absmax values: C = f32(absmax - offset),
 * absmax2[g] = max |C| over group g of QUANT_DQ_BLOCKSIZE, qabsmax = the
 * index bitsandbytes' dQuantize picks in the 256-entry sorted `map` (device
 * memory) for C * rcp(absmax2). `offset` is bitsandbytes' mean of the
 * absmax (cuda_quantizer_dq_offset in src/cuda/quantize.h computes it in
 * torch's order). */
bool qk_quantize_dq(const float *absmax, uint64_t nblocks, float offset, const float *map,
                    uint8_t *qabsmax, float *absmax2, cudaStream_t s, qerr *err);

/* LLM.int8 weights w [rows, cols] (dtype w_dt), first rounded to f16 (RNE)
 * as bitsandbytes' Int8Params quantizes an f16 copy: scb[r] = max |w[r,:]|,
 * cb[r,c] = rne(w[r,c] * div.approx(127, scb[r])). */
bool qk_quantize_int8_rows(const void *w, qdtype w_dt, uint64_t rows, uint64_t cols, int8_t *cb,
                           float *scb, cudaStream_t s, qerr *err);

#ifdef __cplusplus
}
#endif

#endif
