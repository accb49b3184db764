/* Bytes of weights a batch-1 decode step must read, from a .qbin's tensor
 * table: the floor of ../shared/docs/perf-targets.md. Every Linear weight is
 * read once per token with its quantization state (codes + absmax, or
 * qabsmax + absmax2 + offset, or int8 codes + SCB) and its bias; every norm;
 * the output projection (the embedding table itself when tied). Of the
 * embedding only the token's row is read. The 1 KiB dynamic map and the
 * tokenizer bytes are not counted, nor the KV cache (which grows with the
 * context: a few MB at the short contexts qbench decodes at). */
#ifndef QBENCH_TRAFFIC_H
#define QBENCH_TRAFFIC_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"

typedef struct traffic {
    uint64_t total;      /* bytes per token, everything below */
    uint64_t linear;     /* Linear weights, their quantization state and biases */
    uint64_t norms;      /* norm weights and biases, the final norm included */
    uint64_t lm_head;    /* the output projection */
    uint64_t embed_row;  /* one row of an untied embedding table */
    int n_layers;
    uint64_t *layer;     /* [n_layers]: bytes of decoder block i */
    uint64_t output;     /* final norm + lm_head: read where the logits are computed */
} traffic;

/* Read the tensor table and metadata of `path` (checksums not verified: the
 * load does that). Errors name the file. */
bool traffic_from_qbin(const char *path, traffic *t, qerr *err);
void traffic_free(traffic *t);

/* Split the bytes between a GPU running blocks [0, n_gpu_layers) and the
 * CPU running the rest, as the engine does (docs/gpu.md): the output runs on
 * the GPU only when every block does; the embedding lookup with block 0. */
void traffic_split(const traffic *t, int n_gpu_layers, uint64_t *gpu, uint64_t *cpu);

#endif
