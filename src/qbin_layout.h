/* Byte layout of .qbin format version 1, shared by the reader, the writer
 * and the tests that build hostile files. docs/qbin-format.md is the
 * normative description; keep the two in step. All integers are
 * little-endian; the encoders below are explicit about it so that a
 * big-endian host still reads and writes the same bytes. */
#ifndef QRUN_QBIN_LAYOUT_H
#define QRUN_QBIN_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hash.h"

#define QBIN_MAGIC "QBIN\r\n\x1a\n" /* 8 bytes; CR LF SUB LF catch text-mode mangling */
#define QBIN_MAGIC_LEN 8
#define QBIN_VERSION 1u
#define QBIN_ENDIAN_MARK 0x01020304u /* stored LE: bytes 04 03 02 01 */
#define QBIN_HEADER_SIZE 128u        /* bytes of the fixed header */
#define QBIN_DATA_START 256u         /* writer puts the first tensor here */

/* Header field offsets. */
enum {
    QBIN_H_MAGIC = 0,
    QBIN_H_VERSION = 8,       /* u32 */
    QBIN_H_ENDIAN = 12,       /* u32 */
    QBIN_H_HEADER_SIZE = 16,  /* u32, = QBIN_HEADER_SIZE */
    QBIN_H_FLAGS = 20,        /* u32, must be 0 */
    QBIN_H_FILE_SIZE = 24,    /* u64 */
    QBIN_H_DATA_OFFSET = 32,  /* u64 */
    QBIN_H_DATA_SIZE = 40,    /* u64 */
    QBIN_H_DIR_OFFSET = 48,   /* u64 */
    QBIN_H_DIR_SIZE = 56,     /* u64 */
    QBIN_H_META_OFFSET = 64,  /* u64 */
    QBIN_H_META_SIZE = 72,    /* u64 */
    QBIN_H_TENSOR_COUNT = 80, /* u64 */
    QBIN_H_DIR_CHECKSUM = 88, /* u64, qhash of the directory bytes */
    QBIN_H_META_CHECKSUM = 96,/* u64, qhash of the metadata bytes */
    QBIN_H_RESERVED = 104,    /* 16 bytes, must be 0 */
    QBIN_H_CHECKSUM = 120,    /* u64, qhash of header bytes [0, 120) */
};

/* Directory entry: a fixed part, ndim shape words, the name, zero padding
 * to a multiple of 8 bytes. */
enum {
    QBIN_E_NAME_LEN = 0, /* u16, 1..QBIN_MAX_NAME */
    QBIN_E_DTYPE = 2,    /* u8, qdtype code */
    QBIN_E_NDIM = 3,     /* u8, 0..QBIN_MAX_DIMS */
    QBIN_E_RESERVED = 4, /* u32, must be 0 */
    QBIN_E_OFFSET = 8,   /* u64 */
    QBIN_E_NBYTES = 16,  /* u64 */
    QBIN_E_CHECKSUM = 24,/* u64 */
    QBIN_E_FIXED = 32,   /* shape follows: ndim u64 */
};
/* Smallest possible entry (ndim 0, 1-byte name, padded): bounds the count. */
#define QBIN_ENTRY_MIN 40u

static inline uint64_t qbin_entry_size(unsigned ndim, unsigned name_len)
{
    return ((uint64_t)QBIN_E_FIXED + 8u * ndim + name_len + 7u) & ~(uint64_t)7u;
}

static inline uint16_t qbin_ld16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline uint32_t qbin_ld32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t qbin_ld64(const unsigned char *p)
{
    return (uint64_t)qbin_ld32(p) | ((uint64_t)qbin_ld32(p + 4) << 32);
}

static inline void qbin_st16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static inline void qbin_st32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline void qbin_st64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Header checksum over [0, QBIN_H_CHECKSUM). */
static inline uint64_t qbin_header_hash(const unsigned char *hdr)
{
    return qhash(hdr, QBIN_H_CHECKSUM);
}

/* Strict UTF-8 for tensor names: no overlong forms, no surrogates, nothing
 * above U+10FFFF, no NUL (names are C strings). */
static inline int qbin_valid_name_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned min;
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            c = (c << 6) | (s[i + k] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

#endif
