/* Internal to tokenizer/: the per-kind implementation behind tokenizer.h.
 * tokenizer.c holds the common parts (dispatch, special-token splitting of
 * the input for TOK_PARSE_SPECIAL, streaming, UTF-8 helpers); spm.cc and
 * bpe.c fill a tok_impl each. */
#ifndef QRUN_TOK_IMPL_H
#define QRUN_TOK_IMPL_H

#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Growable arrays shared by the implementations. */
typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;
typedef struct tok_bytes {
    char *v;
    size_t n, cap;
} tok_bytes;
bool tok_ids_push(tok_ids *a, int32_t id);
bool tok_bytes_append(tok_bytes *b, const char *s, size_t n);

typedef struct tok_impl {
    /* Encode plain text (no special-token parsing, nothing added). The
     * output is appended to a growable array via tok_ids_push. */
    qrun_status (*encode)(void *state, const char *text, size_t len, tok_ids *out,
                          qerr *err);
    /* Bytes of one id as it contributes to decoded text, given whether it is
     * the first piece of the output (SentencePiece drops the leading space
     * of the first piece). Appended to a growable buffer. */
    qrun_status (*decode_piece)(void *state, int32_t id, bool first, tok_bytes *out,
                                qerr *err);
    const char *(*id_to_piece)(void *state, int32_t id);
    int32_t (*piece_to_id)(void *state, const char *piece);
    void (*destroy)(void *state);
} tok_impl;


/* A special/added token recognised in text under TOK_PARSE_SPECIAL. */
typedef struct tok_added {
    char *content;
    int32_t id;
    bool special;                  /* counts for TOK_SKIP_SPECIAL / tok_is_special */
    bool lstrip, rstrip;           /* tokenizer.json flags: eat whitespace around */
    bool single_word, normalized;
} tok_added;

/* Filled by the kind's loader; tokenizer.c owns the struct. */
struct tok_tokenizer {
    tok_kind kind;
    const tok_impl *impl;
    void *state;
    int32_t vocab_size;
    tok_special special;
    bool add_bos;                  /* SentencePiece TOK_ADD_SPECIAL */
    /* BPE post-processor template for a single sequence: ids before and
     * after the text when TOK_ADD_SPECIAL is given. */
    int32_t *prefix_ids, *suffix_ids;
    size_t n_prefix, n_suffix;
    tok_added *added;              /* tokens matched by TOK_PARSE_SPECIAL */
    size_t n_added;
    unsigned char *is_special;     /* vocab_size flags */
    /* SentencePiece with remove_extra_whitespaces: a first piece that
     * decodes to nothing (a bare U+2581) leaves the next piece "first"
     * (set by tok_spm_load; false otherwise). */
    bool spm_bos_ws_sticky;
};

/* Loaders (fill t->impl, t->state and the fields above). */
qrun_status tok_spm_load(tok_tokenizer *t, const void *data, size_t size, qerr *err);
qrun_status tok_bpe_load(tok_tokenizer *t, const void *data, size_t size, qerr *err);

#ifdef __cplusplus
}
#endif
#endif
