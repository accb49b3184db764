/* The engine's device copy of the weights: the tensors the GPU part of a
 * model needs, copied as stored in the .qbin (codes, absmax, values; never
 * dequantized on the host) into one device allocation, each at a 256-byte
 * aligned offset. The models bind host pointers into the mapped file
 * (src/weight.h, models/); the CUDA backend translates any such pointer
 * that falls inside an uploaded tensor to the matching device address with
 * cuda_weights_device_ptr, so nothing in models/ knows about the GPU. */
#ifndef QRUN_CUDA_WEIGHTS_H
#define QRUN_CUDA_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "qbin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cuda_weights cuda_weights;

/* Device alignment of every uploaded tensor. */
#define CUDA_WEIGHTS_ALIGN 256u

/* Selects the tensors to upload: true = this one. */
typedef bool (*cuda_weights_pick)(void *user, const qbin_tensor *t);
/* Upload progress in [0, 1]; false cancels (QRUN_ERR_CANCELLED). */
typedef bool (*cuda_weights_progress)(void *user, float fraction);

/* Device bytes the picked tensors take (each rounded up to the alignment). */
uint64_t cuda_weights_size(const qbin_file *f, cuda_weights_pick pick, void *user);

/* Copy the picked tensors of `f` to device `device` through two pinned
 * staging buffers (host copy into one while the other is in flight). The
 * file must stay open while the result is used (lookups compare against its
 * mapping). QRUN_ERR_DEVICE names the allocation and the free memory when
 * the device cannot hold them. */
cuda_weights *cuda_weights_upload(const qbin_file *f, int device, cuda_weights_pick pick,
                                  void *user, cuda_weights_progress progress, void *progress_user,
                                  qerr *err);
void cuda_weights_free(cuda_weights *w);

/* The device address of host pointer `host` (into the file's mapping), or
 * NULL when it is not inside an uploaded tensor. NULL for NULL. */
const void *cuda_weights_device_ptr(const cuda_weights *w, const void *host);

int cuda_weights_device(const cuda_weights *w);
uint64_t cuda_weights_bytes(const cuda_weights *w); /* device bytes allocated */
size_t cuda_weights_count(const cuda_weights *w);   /* tensors uploaded */

#ifdef __cplusplus
}
#endif
#endif
