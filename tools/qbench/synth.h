/* Synthetic models for qbench: a .qbin of a published model's shape filled
 * with random weights, written directly in the form qconvert stores (same
 * tensor names, dtypes, companion tensors and metadata), so the engine loads
 * it exactly as it would load a converted checkpoint. Nothing is downloaded.
 *
 * The hyper-parameters are the published config.json values written as C
 * constants (synth_shapes.c); they go through the family's own read_config
 * and plan (models/), so the tensor list is the one qconvert would write. */
#ifndef QBENCH_SYNTH_H
#define QBENCH_SYNTH_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "convert.h"
#include "error.h"

typedef struct cJSON cJSON;

/* One model shape: its config.json fields (both families' spellings). */
typedef struct synth_shape {
    const char *name;          /* "llama-2-7b" */
    const char *description;   /* for --help */
    bool test_only;            /* a few-MB shape for tests, listed apart */
    const char *architecture;  /* config "architectures"[0] */
    const char *model_type;
    int64_t vocab, hidden, ffn, layers, heads, kv_heads, max_pos;
    double rope_theta, norm_eps;
    bool tie;                  /* tie_word_embeddings */
    const char *dtype;         /* torch_dtype: "float16", "bfloat16" */
    int bos, eos;
    /* Falcon only */
    bool new_arch, multi_query, parallel_attn, alibi, bias;
} synth_shape;

/* The shape called `name`, or NULL. */
const synth_shape *synth_shape_find(const char *name);
/* Print the shape names, comma-separated ("llama-2-7b, ..."); with
 * `test_only` the test shapes, else the published ones. */
void synth_print_names(FILE *f, bool test_only);
/* Print one line per shape (name and description) for --help. */
void synth_print_shapes(FILE *f, const char *indent);
/* The shape's config.json as a cJSON object (free with cJSON_Delete). */
cJSON *synth_config(const synth_shape *s);

typedef struct synth_options {
    const synth_shape *shape;
    qconvert_quant quant;    /* nf4, fp4, int8, f16, bf16 */
    bool double_quant;       /* nf4/fp4 */
    int blocksize;           /* nf4/fp4 */
    int compute_dtype;       /* QDT_F16 / QDT_BF16; -1: as qconvert picks it */
    float int8_threshold;    /* stored in the metadata */
    uint64_t seed;           /* same seed, same file */
    int n_threads;           /* generator threads; 0 = one per core */
    /* Called after every piece written (may be NULL); false cancels, and
     * synth_write then fails with QRUN_ERR_CANCELLED, leaving no file. */
    bool (*progress)(void *user, uint64_t bytes_done, uint64_t bytes_total);
    void *user;
} synth_options;

void synth_options_init(synth_options *o);

typedef struct synth_stats {
    double seconds;          /* generating and writing */
    uint64_t file_bytes;
    uint64_t params;         /* parameters (companion tensors excluded) */
    int tensors;             /* tensors written */
    int compute_dtype;
} synth_stats;

/* Bytes the file will take (within a few KiB), for a free-space check
 * before writing. false with err when the shape cannot be planned. */
bool synth_file_size(const synth_options *o, uint64_t *bytes, qerr *err);

/* Generate the model and write it to `path` (through a temporary file that
 * is renamed into place only when complete). */
bool synth_write(const synth_options *o, const char *path, synth_stats *st, qerr *err);

/* The tiny byte-level BPE tokenizer.json embedded in synthetic models: the
 * 256 byte tokens and "<|endoftext|>" = 256, no merges. qbench feeds random
 * ids, so the vocabulary only has to load. malloc'ed, NUL-terminated. */
char *synth_tokenizer_json(size_t *len);

#endif
