/* Element types of stored tensors, their byte sizes, and exact conversions
 * between f32 and the 16-bit float formats (round to nearest even). */
#ifndef QRUN_DTYPE_H
#define QRUN_DTYPE_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qdtype {
    QDT_F32 = 0,
    QDT_F16 = 1,
    QDT_BF16 = 2,
    QDT_I8 = 3,
    QDT_U8 = 4,
    QDT_I32 = 5,
    QDT_NF4 = 6, /* bitsandbytes NF4 codes, two per byte, high nibble first */
    QDT_FP4 = 7, /* bitsandbytes FP4 codes, same packing */
    QDT_COUNT
} qdtype;

/* Lower-case name used in files and messages ("f16", "nf4"); "?" if invalid. */
const char *qdtype_name(qdtype t);
/* Parse a name; returns -1 when unknown. */
int qdtype_from_name(const char *name);
bool qdtype_valid(int t);
bool qdtype_is_4bit(qdtype t);

/* Bytes needed for `nelem` elements (4-bit types round up to whole bytes).
 * Returns false on overflow or an invalid type. */
bool qdtype_nbytes(qdtype t, uint64_t nelem, uint64_t *out);

/* Product of dims with overflow check; false on overflow. */
bool qshape_numel(int ndim, const uint64_t *shape, uint64_t *out);

float qf16_to_f32(uint16_t h);
uint16_t qf32_to_f16(float f);   /* RNE, overflow to inf, NaN stays NaN */
float qbf16_to_f32(uint16_t b);
uint16_t qf32_to_bf16(float f);  /* RNE, NaN stays NaN */

/* Convert `n` elements of a f32/f16/bf16 buffer (little-endian) to f32. */
bool qconvert_to_f32(qdtype src, const void *in, uint64_t n, float *out);

#ifdef __cplusplus
}
#endif

#endif
