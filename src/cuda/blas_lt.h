/* The GEMMs of the prefill path, through cuBLASLt.
 *
 * Why cuBLASLt and not cublasGemmEx: a cublas handle reserves its own
 * workspace pool when it is created (67 MB on an H100, on top of any
 * workspace given with cublasSetWorkspace), while a cuBLASLt handle takes
 * ~2 MB and uses exactly the workspace of each call. The products here ask
 * for algorithms that need no workspace at all: on Hopper cuBLASLt picks the
 * same kernels for the prefill shapes with or without one (docs/perf.md).
 *
 * The heuristic query costs tens of microseconds, so its answer (and the
 * layouts) are kept per shape and operand alignment in a small cache. */
#ifndef QRUN_CUDA_BLAS_LT_H
#define QRUN_CUDA_BLAS_LT_H

#include <stdbool.h>
#include <stdint.h>

#include <cuda_runtime_api.h>
#include <library_types.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct blas_lt blas_lt;

blas_lt *blas_lt_create(qerr *err);
void blas_lt_free(blas_lt *lt);

/* C[:, j] (+)= sum_k A[i, k] · B[k, j] for i < rows, j < m, k < depth, all
 * column-major as cuBLAS sees them: A is `rows` rows of `depth` values,
 * lda apart (the weight, row-major); B is m columns of `depth` values, ldb
 * apart (x); C is m columns of `rows` outputs, ldc apart. `ab` is the type of
 * A and B: CUDA_R_16F, CUDA_R_16BF or CUDA_R_32F give f32 C with f32
 * accumulation (no TF32); CUDA_R_8I gives exact int32 C. accumulate adds to
 * C (float types only). On a shape no algorithm takes, *declined is set and
 * nothing is enqueued (the caller has another way); false with err on
 * failure. */
bool blas_lt_gemm(blas_lt *lt, cudaDataType ab, const void *A, uint64_t lda, const void *B,
                  uint64_t ldb, void *C, uint64_t ldc, uint64_t rows, uint64_t m, uint64_t depth,
                  bool accumulate, cudaStream_t stream, bool *declined, qerr *err);

#ifdef __cplusplus
}
#endif

#endif
