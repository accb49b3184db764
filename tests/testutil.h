/* Helpers shared by the test programs. */
#ifndef QRUN_TESTUTIL_H
#define QRUN_TESTUTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

/* Directory of committed fixtures (QRUN_TEST_DATA, set by meson). */
const char *tu_data_dir(void);
/* The SmolLM2-135M-Instruct checkpoint directory: QRUN_SMOLLM2_DIR when the
 * caller sets it, else meson's default (QRUN_SMOLLM2_DEFAULT, the source
 * tree's models-cache/), else models-cache/ relative to the working dir. */
const char *tu_smollm2_dir(void);
/* Path under the fixture directory; returns a static buffer per call slot. */
const char *tu_data_path(const char *rel);
/* A fresh temporary directory (removed by tu_rmtree). Caller frees. */
char *tu_tmpdir(void);
void tu_rmtree(const char *path);
/* Whole file into memory (NULL if unreadable); *size set. Caller frees. */
unsigned char *tu_read_file(const char *path, size_t *size);
int tu_write_file(const char *path, const void *data, size_t size);
int tu_file_exists(const char *path);

/* Deterministic random numbers (splitmix64) for reproducible "fresh" inputs;
 * the seed comes from QRUN_TEST_SEED or the clock and is printed on failure. */
typedef struct tu_rng { uint64_t s; } tu_rng;
uint64_t tu_seed(void);
uint64_t tu_next(tu_rng *r);
double tu_uniform(tu_rng *r);            /* [0, 1) */
float tu_normal(tu_rng *r);              /* standard normal */

/* Run a suite and return the process exit status (0 when all passed). */
int tu_run(Suite *s);



/* Write a .safetensors file from `n` tensors (raw little-endian data). */
typedef struct tu_st_tensor {
    const char *name;
    const char *dtype; /* "F32", "F16", "BF16", "I8", "U8", "F64", ... */
    int ndim;
    uint64_t shape[4];
    const void *data; /* NULL: nbytes zero bytes */
    uint64_t nbytes;
} tu_st_tensor;
int tu_write_safetensors(const char *path, const tu_st_tensor *t, int n);

#endif
