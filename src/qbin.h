/* The .qbin model file: reader and streaming writer. This is the only code
 * that knows the byte layout (docs/qbin-format.md). The reader validates
 * every length, offset, shape, count and checksum before anything uses it. */
#ifndef QRUN_QBIN_H
#define QRUN_QBIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"

#define QBIN_MAX_DIMS 4
#define QBIN_ALIGN 256
#define QBIN_MAX_NAME 255

typedef struct cJSON cJSON;

typedef struct qbin_tensor {
    const char *name;           /* NUL-terminated, owned by the file */
    qdtype dtype;
    int ndim;                   /* 0..QBIN_MAX_DIMS */
    uint64_t shape[QBIN_MAX_DIMS];
    uint64_t offset;            /* from the start of the file, QBIN_ALIGN-aligned */
    uint64_t nbytes;            /* equals qdtype_nbytes(dtype, numel(shape)) */
    uint64_t checksum;          /* qhash of the nbytes data bytes */
} qbin_tensor;

/* ---------------- reader ---------------- */

typedef struct qbin_file qbin_file;

enum { QBIN_OPEN_SKIP_CHECKSUMS = 1u << 0 };

/* Map `path` and validate it completely. On failure returns NULL and `err`
 * names the file and what is wrong with it. */
qbin_file *qbin_open(const char *path, unsigned flags, qerr *err);
/* Same over a caller-owned buffer that must outlive the handle (tests). */
qbin_file *qbin_open_memory(const void *data, size_t size, const char *label, unsigned flags,
                            qerr *err);
void qbin_close(qbin_file *f);

uint32_t qbin_format_version(const qbin_file *f);
/* Parsed metadata object (owned by the file) and its raw JSON text. */
const cJSON *qbin_metadata(const qbin_file *f);
const char *qbin_metadata_text(const qbin_file *f);

size_t qbin_tensor_count(const qbin_file *f);
const qbin_tensor *qbin_tensor_at(const qbin_file *f, size_t i);
const qbin_tensor *qbin_find(const qbin_file *f, const char *name); /* NULL if absent */
const void *qbin_tensor_data(const qbin_file *f, const qbin_tensor *t);
/* Check one tensor's checksum now (used when opened with SKIP_CHECKSUMS). */
bool qbin_verify_tensor(const qbin_file *f, const qbin_tensor *t, qerr *err);

/* ---------------- writer ---------------- */

typedef struct qbin_writer qbin_writer;

/* Start writing `path`; data goes to a temporary file beside it that is
 * renamed over `path` only by a successful qbin_writer_finish(). */
qbin_writer *qbin_writer_open(const char *path, qerr *err);
/* Append one tensor's bytes (written immediately, hashed while written). */
bool qbin_writer_add(qbin_writer *w, const char *name, qdtype dtype, int ndim,
                     const uint64_t *shape, const void *data, uint64_t nbytes, qerr *err);
/* Streaming variant: begin a tensor, write its bytes in pieces, end it; the
 * pieces must add up to exactly the tensor's size. */
bool qbin_writer_begin(qbin_writer *w, const char *name, qdtype dtype, int ndim,
                       const uint64_t *shape, qerr *err);
bool qbin_writer_write(qbin_writer *w, const void *data, uint64_t nbytes, qerr *err);
bool qbin_writer_end(qbin_writer *w, qerr *err);
/* Write metadata (a JSON object, serialized by the writer) and the tensor
 * directory, flush, fsync and rename. Frees the writer in every case. */
bool qbin_writer_finish(qbin_writer *w, const cJSON *metadata, qerr *err);
/* Delete the temporary file and free the writer. */
void qbin_writer_abort(qbin_writer *w);

#endif
