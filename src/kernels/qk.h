/* Conventions shared by the CUDA kernels (src/kernels/, the .cu files) and their C
 * callers (src/cuda/, tests/gpu/). Every kernel family has a host-side
 * launcher declared in a C header next to it; launchers:
 *  - take device pointers (weights: a qweight whose pointers are device
 *    pointers), sizes, a cudaStream_t and a qerr *;
 *  - enqueue work on the stream and never synchronize, allocate or print, so
 *    they can be captured into a CUDA graph;
 *  - check the launch (qk_launched) and return false with QRUN_ERR_DEVICE and
 *    a message naming the kernel when anything fails.
 * Activations are f32 in device memory, row-major, rounded to the `act` dtype
 * at the points where the CPU ops (src/cpu/ops.h) round: each kernel computes
 * the same function as its CPU reference, within the bound its test states. */
#ifndef QRUN_KERNELS_QK_H
#define QRUN_KERNELS_QK_H

#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Device-side state of one forward step. Ops whose work depends on the
 * position read it from here rather than from a kernel argument, so a CUDA
 * graph captured for one decode step is valid at every position: the backend
 * rewrites this struct (a copy from pinned host memory) before each replay.
 * ids[] has room for the session's largest batch. */
typedef struct qk_step {
    int32_t p0; /* position of the step's first token */
    int32_t n;  /* tokens in the step */
    int32_t ids[]; /* their token ids */
} qk_step;

/* Check the result of a CUDA runtime call: false with QRUN_ERR_DEVICE and
 * "<what>: <cuda error name>: <text>" when e != cudaSuccess. */
bool qk_ok(cudaError_t e, const char *what, qerr *err);
/* After a kernel launch: qk_ok(cudaGetLastError(), what, err). */
bool qk_launched(const char *what, qerr *err);

#ifdef __cplusplus
}
#endif
#endif
