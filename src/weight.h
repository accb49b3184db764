/* A weight matrix as the compute code sees it: a view of the tensors a
 * .qbin stores for one nn.Linear (codes or values plus their quantization
 * state), pointing into the mapped file. Nothing is copied or dequantized. */
#ifndef QRUN_WEIGHT_H
#define QRUN_WEIGHT_H

#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"
#include "qbin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qweight {
    qdtype dtype;           /* F32, F16, BF16, NF4, FP4 or I8 */
    uint64_t rows, cols;    /* out_features N, in_features K; row-major [N, K] */
    const void *data;       /* values, or codes in layout 1 (see src/quant.h) */

    /* NF4 / FP4 */
    int blocksize;
    const float *absmax;    /* [nblocks], or NULL when double-quantized */
    const uint8_t *qabsmax; /* double quantization: [nblocks] codes */
    const float *absmax2;   /*   [ceil(nblocks / 256)] group scales */
    float absmax_offset;    /*   the mean added back */
    const float *dq_map;    /*   [256] signed dynamic map */

    /* LLM.int8 */
    const float *scb;       /* [rows] row absmax */
    float int8_threshold;   /* outlier threshold; 0 = pure int8 */
} qweight;

/* The weight named `name` in `f` with its auxiliary tensors ("<name>.absmax",
 * ".qabsmax", ".absmax2", ".absmax_offset", ".scb", "quant.dynamic_map"),
 * read according to the file's "quantization" metadata. Shapes and dtypes
 * are checked; an error names the tensor. */
bool qweight_from_qbin(const qbin_file *f, const char *name, qweight *w, qerr *err);

/* What a product needs of a weight view: data and a shape, a supported
 * dtype, 4-bit blocksize and absmax (or double quantization), int8 row
 * scales and inputs few enough for exact int32 sums (the CPU and GPU
 * matmuls refuse a weight with this error). */
bool qweight_check(const qweight *w, qerr *err);

#ifdef __cplusplus
}
#endif

#endif
