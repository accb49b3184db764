/* Quantization numerics of bitsandbytes (see ../shared/docs/bnb-format.md):
 * NF4/FP4 blockwise 4-bit with optional double quantization of the absmax,
 * and LLM.int8 row-wise int8. This file is the single CPU reference used by
 * the converter, the CPU backend and every GPU test.
 *
 * Layout (format "layout 1"): a weight of shape [N, K] is flattened row-major;
 * block b covers flat elements [b*bs, min((b+1)*bs, n)) and may straddle rows.
 * Byte j holds element 2j in its high nibble and 2j+1 in its low nibble; an
 * odd tail is padded with the code of 0.0.
 *
 * Quantizing on the CPU divides exactly (x / absmax) where bitsandbytes' CUDA
 * kernel multiplies by an approximate reciprocal, so a code can differ from
 * bitsandbytes' only where the scaled value is within one f32 ulp of a
 * decision threshold. Dequantization is bit-identical to bitsandbytes always.
 */
#ifndef QRUN_QUANT_H
#define QRUN_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum quant_4bit_type { QUANT_NF4 = 0, QUANT_FP4 = 1 } quant_4bit_type;

/* Code books in code order (index = 4-bit code). fp4 code 8 is -0.0 as in the
 * CUDA kernels. */
extern const float quant_nf4_lut[16];
extern const float quant_fp4_lut[16];

/* bitsandbytes' signed dynamic map (create_dynamic_map(signed=True)) as built
 * by torch 2.11; 256 sorted entries. Used for double quantization. */
extern const float quant_dynamic_map[256];

/* Blocksizes bitsandbytes accepts for 4-bit quantization. */
bool quant_blocksize_valid(int blocksize);

/* ceil(n / blocksize). */
uint64_t quant_nblocks(uint64_t n, int blocksize);

/* Code of one already scaled value s = x / absmax (strict '>' against the
 * CUDA threshold literals; NaN gives code 0 / sign 0). */
uint8_t quant_nf4_code(float s);
uint8_t quant_fp4_code(float s);

/* Quantize n values (f32; f16/bf16 sources converted exactly first) into
 * ceil(n/2) packed bytes and nblocks f32 absmax values. */
void quant_4bit_quantize(quant_4bit_type type, const float *x, uint64_t n, int blocksize,
                         uint8_t *packed, float *absmax);

/* Dequantize elements [first, first+count) of a packed tensor to f32:
 * out[i] = f32(LUT[code] * absmax[block]). Callers round to f16/bf16 after. */
void quant_4bit_dequantize(quant_4bit_type type, const uint8_t *packed, const float *absmax,
                           uint64_t first, uint64_t count, int blocksize, float *out);

/* Double quantization of the absmax vector (nested blocksize 256):
 * offset = mean(absmax) (f64 sum rounded to f32), then each absmax - offset is
 * scaled by its group's absmax2 and rounded to the nearest map entry (ties at
 * a midpoint go to the even index, as bitsandbytes' binary search does). */
#define QUANT_DQ_BLOCKSIZE 256
float quant_dq_offset(const float *absmax, uint64_t nblocks);
void quant_dq_quantize(const float *absmax, uint64_t nblocks, float offset, const float map[256],
                       uint8_t *qabsmax, float *absmax2);
/* absmax[b] = f32(f32(map[q[b]] * absmax2[b/256]) + offset), two roundings. */
void quant_dq_dequantize(const uint8_t *qabsmax, const float *absmax2, float offset,
                         const float map[256], uint64_t first, uint64_t count, float *absmax);
/* Index of the nearest map entry to a scaled value (exposed for tests). */
uint8_t quant_dq_code(float s, const float map[256]);

/* LLM.int8 weights: w is [rows, cols] already rounded to f16 values (held in
 * f32). scb[r] = max |w[r,:]|; cb = round_half_even(w * (127 / scb[r])). */
void quant_int8_quantize_rows(const float *w, uint64_t rows, uint64_t cols, int8_t *cb, float *scb);
/* w[r,c] = f32(f32(cb * scb[r]) * (1/127 as f32)). */
void quant_int8_dequantize_rows(const int8_t *cb, const float *scb, uint64_t rows, uint64_t cols,
                                float *w);

/* Rules for comparing our codes with bitsandbytes' (fixture tests): a code
 * may differ from bitsandbytes' only where our scaled value is within `ulps`
 * f32 ulps of a decision boundary; these say whether it is. NaN is never
 * near (it codes to 0 on both sides).
 *
 * The GPU scales by a faithfully rounded approximate reciprocal (error < 1
 * ulp), so in the worst case its scaled value sits 2 ulp from our exactly
 * divided one (x * rcp(a) vs x / a; 127 * rcp(scb) vs 127 / scb for int8):
 * QUANT_GPU_RCP_ULPS. Against the real bitsandbytes fixtures every difference
 * is within QUANT_BNB_ULPS = 1, the bound the tests enforce there. */
#define QUANT_GPU_RCP_ULPS 2
#define QUANT_BNB_ULPS 1
/* s = x / absmax near a threshold of `t` (FP4: |s| near a T_k, or s a nonzero
 * subnormal, whose sign the GPU's flush-to-zero drops). */
bool quant_4bit_near_threshold(quant_4bit_type t, float s, int ulps);
/* s = C / absmax2 near a decision midpoint f32((map[k]+map[k+1])*0.5f). */
bool quant_dq_near_midpoint(float s, const float map[256], int ulps);
/* v = w * (127 / scb) near a rounding boundary n + 0.5. */
bool quant_int8_near_half(float v, int ulps);

#ifdef __cplusplus
}
#endif

#endif
