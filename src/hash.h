/* A fast 64-bit non-cryptographic hash for tensor checksums in .qbin files.
 * Our own design (documented in docs/qbin-format.md); streaming so that the
 * converter can hash tensor data as it writes it. */
#ifndef QRUN_HASH_H
#define QRUN_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct qhash_state {
    uint64_t lane[4];
    uint64_t total;
    unsigned char buf[32];
    unsigned buffered;
} qhash_state;

void qhash_init(qhash_state *s);
void qhash_update(qhash_state *s, const void *data, size_t len);
uint64_t qhash_final(const qhash_state *s);
uint64_t qhash(const void *data, size_t len);

#endif
