/* Reader for one .safetensors file: an 8-byte little-endian header length,
 * a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}},
 * then raw little-endian tensor data. The header is validated in full
 * (offsets inside the file, sizes equal to dtype x shape, no overlaps);
 * tensor data is read on demand with pread so only one tensor at a time is
 * in memory. */
#ifndef QRUN_SAFETENSORS_H
#define QRUN_SAFETENSORS_H

#include <stdint.h>

#include "dtype.h"
#include "error.h"

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;
    char dtype_name[8];        /* as in the file: "F32", "F16", "BF16", "U8", ... */
    int dtype;                 /* qdtype, or -1 for a type qrun has no qdtype for */
    int ndim;
    uint64_t shape[ST_MAX_DIMS];
    uint64_t offset;           /* absolute offset in the file */
    uint64_t nbytes;
} st_tensor;

typedef struct st_file st_file;

st_file *st_open(const char *path, qerr *err);
void st_close(st_file *f);
const char *st_path(const st_file *f);
int st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, int i);
const st_tensor *st_find(const st_file *f, const char *name);
/* Read a tensor's raw bytes into `dst` (t->nbytes bytes). */
bool st_read(st_file *f, const st_tensor *t, void *dst, qerr *err);
/* Read a tensor and convert F32/F16/BF16 to f32 (t numel floats). */
bool st_read_f32(st_file *f, const st_tensor *t, float *dst, qerr *err);
/* Elements [first, first+count) of a F32/F16/BF16 tensor (flattened, row
 * major) converted to f32 into dst (count floats); the range must lie inside
 * the tensor. */
bool st_read_f32_range(st_file *f, const st_tensor *t, uint64_t first, uint64_t count, float *dst,
                       qerr *err);

#endif
