/* A Hugging Face checkpoint directory: config.json, model.safetensors or
 * model-*.safetensors with model.safetensors.index.json, tokenizer.model or
 * tokenizer.json (+ tokenizer_config.json, generation_config.json).
 * Tensors are looked up by name across shards; shards are opened lazily and
 * at most one tensor is resident at a time. */
#ifndef QRUN_HF_CHECKPOINT_H
#define QRUN_HF_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "import/safetensors.h"

typedef struct cJSON cJSON;
typedef struct hf_checkpoint hf_checkpoint;

/* Open `dir`: parse config.json (and the shard index when present), open
 * every shard's header and check that every indexed tensor exists. */
hf_checkpoint *hf_open(const char *dir, qerr *err);
void hf_close(hf_checkpoint *ck);

const char *hf_dir(const hf_checkpoint *ck);
const cJSON *hf_config(const hf_checkpoint *ck);
/* tokenizer_config.json / generation_config.json when present, else NULL. */
const cJSON *hf_tokenizer_config(const hf_checkpoint *ck);
const cJSON *hf_generation_config(const hf_checkpoint *ck);

/* All tensors over all shards, in a stable order (sorted by name). */
int hf_tensor_count(const hf_checkpoint *ck);
const st_tensor *hf_tensor_at(const hf_checkpoint *ck, int i);
const st_tensor *hf_find(const hf_checkpoint *ck, const char *name);
/* Read a tensor (converted to f32) into dst of numel floats. */
bool hf_read_f32(hf_checkpoint *ck, const st_tensor *t, float *dst, qerr *err);
/* Read elements [first, first+count) of a tensor converted to f32 (for
 * streaming conversion of large tensors slice by slice). */
bool hf_read_f32_range(hf_checkpoint *ck, const st_tensor *t, uint64_t first, uint64_t count,
                       float *dst, qerr *err);

/* Tokenizer bytes: kind is "sentencepiece" (tokenizer.model) or "bpe"
 * (tokenizer.json). The caller frees *data. tokenizer.model wins when a
 * directory has both and the config names a SentencePiece tokenizer class;
 * otherwise tokenizer.json. */
bool hf_read_tokenizer(const hf_checkpoint *ck, char kind[16], unsigned char **data,
                       uint64_t *size, qerr *err);

/* Read a whole small text/JSON file from the directory; NULL when absent. */
char *hf_read_text(const char *dir, const char *name, uint64_t max_size, qerr *err);

#endif
