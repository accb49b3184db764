/* The GPU quantizer qconvert uses when a GPU is there: host slices in, host
 * results out, through the bitsandbytes-exact kernels of
 * src/kernels/quantize.h. What it produces is what bitsandbytes' CUDA path
 * (quantize_4bit with or without compress_statistics, Int8Params) produces
 * for the same values, bit for bit; src/quant.c's CPU quantizer differs from
 * it only at near-threshold codes (see quant.h).
 *
 * One quantizer works on device 0 with its own stream, device buffers and
 * pinned staging buffers, which grow when a call needs more. Calls
 * synchronize before they return. Not thread-safe. Every failure is a
 * QRUN_ERR_DEVICE (or QRUN_ERR_NO_MEMORY) with a message naming the step. */
#ifndef QRUN_CUDA_QUANTIZE_H
#define QRUN_CUDA_QUANTIZE_H

#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"
#include "quant.h"

typedef struct cuda_quantizer cuda_quantizer;

/* A quantizer on device 0 whose buffers start with room for `elems`
 * elements per call (f32 input). NULL with `err` set when there is no
 * usable GPU or an allocation fails. */
cuda_quantizer *cuda_quantizer_create(uint64_t elems, qerr *err);
/* Release everything; false with `err` set if the CUDA runtime reports an
 * error while doing so (the quantizer is freed either way). NULL is fine. */
bool cuda_quantizer_free(cuda_quantizer *q, qerr *err);
/* "NVIDIA H100 80GB HBM3" etc. */
const char *cuda_quantizer_device_name(const cuda_quantizer *q);

/* Blockwise 4-bit quantization of n host values x (dtype x_dt: f32, f16 or
 * bf16) as qk_quantize_4bit: ceil(n/2) bytes into packed and
 * ceil(n/blocksize) floats into absmax (host memory). */
bool cuda_quantizer_4bit(cuda_quantizer *q, quant_4bit_type type, qdtype x_dt, const void *x,
                         uint64_t n, int blocksize, uint8_t *packed, float *absmax, qerr *err);

/* bitsandbytes' double-quant offset, absmax.mean() on the GPU: torch's f32
 * CUDA mean reduction in its summation order for this device (see
 * cuda_torch_mean_f32). */
float cuda_quantizer_dq_offset(const cuda_quantizer *q, const float *absmax, uint64_t nblocks);

/* Double quantization of nblocks host absmax values with that offset, as
 * qk_quantize_dq with quant_dynamic_map: nblocks codes into qabsmax and
 * ceil(nblocks/256) floats into absmax2 (host memory). */
bool cuda_quantizer_dq(cuda_quantizer *q, const float *absmax, uint64_t nblocks, float offset,
                       uint8_t *qabsmax, float *absmax2, qerr *err);

/* LLM.int8 weights: rows x cols host values w (dtype w_dt) as
 * qk_quantize_int8_rows: rows*cols codes into cb, rows floats into scb. */
bool cuda_quantizer_int8_rows(cuda_quantizer *q, qdtype w_dt, const void *w, uint64_t rows,
                              uint64_t cols, int8_t *cb, float *scb, qerr *err);

/* torch.Tensor.mean() of a contiguous f32 CUDA tensor of n elements,
 * reproduced on the host: the sums of torch's reduction kernel (Reduce.cuh:
 * float4-vectorized per-thread accumulators for n >= 128, a shared-memory
 * and warp-shuffle tree, a split over thread blocks for large n, whose
 * count depends on the device's multiprocessors and threads per
 * multiprocessor) in their order, then sum * f32(1/n). The order follows
 * torch 2.11-2.15 (bitsandbytes' fixtures were made with 2.11). */
float cuda_torch_mean_f32(const float *x, uint64_t n, int multiprocessors,
                          int max_threads_per_multiprocessor);

#endif
