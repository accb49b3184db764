/* The tiny fixture checkpoints (tests/data/tiny/<variant>) as the engine
 * tests use them: facts from tests/data/logits/index.json and the variant
 * converted to a .qbin in a given mode, once per test program. */
#ifndef QRUN_TESTS_TINY_VARIANTS_H
#define QRUN_TESTS_TINY_VARIANTS_H

#include <cjson/cJSON.h>

/* index.json's "variants"[variant] object, or NULL. */
const cJSON *tv_info(const cJSON *index, const char *variant);
/* A string field of it ("qbin_dtype", "source_dtype", "file"), or NULL. */
const char *tv_str(const cJSON *index, const char *variant, const char *key);
/* <tmp>/<variant>.<mode>.qbin, converted on first use. mode: "src" (the
 * variant's own dtype; f32 sources stay f32), "f16", "bf16", "nf4",
 * "nf4_dq", "fp4", "int8_t6" or "int8_t0". Returns one of 8 rotating
 * static buffers; a failed conversion fails the test. */
const char *tv_model_path(const cJSON *index, const char *tmp, const char *variant,
                          const char *mode);

#endif
