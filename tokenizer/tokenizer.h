/* Tokenizers: one C interface over SentencePiece models (tokenizer.model,
 * through libsentencepiece) and byte-level BPE from a Hugging Face
 * tokenizer.json. Ids must be exactly those of the reference libraries
 * (Python sentencepiece / tokenizers); see docs/tokenizers.md. */
#ifndef QRUN_TOKENIZER_H
#define QRUN_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tok_tokenizer tok_tokenizer;

typedef enum tok_kind { TOK_SENTENCEPIECE = 0, TOK_BPE = 1 } tok_kind;

/* Load from the bytes embedded in a .qbin ("sentencepiece": a serialized
 * ModelProto; "bpe": tokenizer.json text). The bytes are copied. Malformed
 * or unsupported input (a tokenizer.json feature qrun does not implement)
 * returns NULL with an error naming what is wrong. */
tok_tokenizer *tok_load(tok_kind kind, const void *data, size_t size, qerr *err);
/* "sentencepiece" / "bpe" -> kind; -1 when unknown. */
int tok_kind_from_name(const char *name);
void tok_free(tok_tokenizer *t);

tok_kind tok_get_kind(const tok_tokenizer *t);
/* Number of ids (the largest id + 1, added tokens included). */
int32_t tok_vocab_size(const tok_tokenizer *t);

/* Encoding flags. */
enum {
    /* Add what the tokenizer adds by default for a single sequence: BOS for
     * SentencePiece models (unless tok_set_add_bos(false)), the
     * post_processor's template for tokenizer.json (e.g. <|begin_of_text|>). */
    TOK_ADD_SPECIAL = 1u << 0,
    /* Recognise special-token text in the input ("<|im_start|>", "<s>")
     * and emit its id, as transformers' tokenizers do by default. Without
     * it special-token text is encoded as ordinary text (llama.cpp's
     * default). Added tokens that are not special are always matched, as
     * both references do. */
    TOK_PARSE_SPECIAL = 1u << 1,
};

/* Encode `len` bytes of UTF-8 text. *ids is malloc'ed (free() it); *n_ids
 * is set. Invalid UTF-8 is an error (QRUN_ERR_INVALID_ARGUMENT) naming the
 * byte offset. */
qrun_status tok_encode(const tok_tokenizer *t, const char *text, size_t len, unsigned flags,
                       int32_t **ids, size_t *n_ids, qerr *err);

/* Decoding flags. */
enum { TOK_SKIP_SPECIAL = 1u << 0 }; /* leave out special tokens (BOS, EOS, ...) */

/* Decode ids to text as the reference library's decode() does (SentencePiece:
 * the leading space of the first piece removed; BPE: the ByteLevel decoder).
 * *text is malloc'ed and NUL-terminated; *len excludes the NUL. Bytes that
 * do not form valid UTF-8 become U+FFFD, as in the references. An id out of
 * range is an error. */
qrun_status tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n_ids, unsigned flags,
                       char **text, size_t *len, qerr *err);

/* The raw vocabulary string of an id (SentencePiece piece with U+2581 for
 * spaces; BPE token in byte-level alphabet), or NULL when out of range. */
const char *tok_id_to_piece(const tok_tokenizer *t, int32_t id);
/* Id of a raw piece, or -1. */
int32_t tok_piece_to_id(const tok_tokenizer *t, const char *piece);

/* Special ids (-1 when the tokenizer has none). Loaded from the tokenizer
 * itself; the engine may override them from the .qbin metadata. */
typedef struct tok_special {
    int32_t bos, eos, pad, unk;
} tok_special;
tok_special tok_get_special(const tok_tokenizer *t);
void tok_set_special(tok_tokenizer *t, const tok_special *s);
/* SentencePiece: whether TOK_ADD_SPECIAL adds BOS (default true, as
 * LlamaTokenizer's add_bos_token). Ignored for BPE (its post_processor rules). */
void tok_set_add_bos(tok_tokenizer *t, bool add_bos);
/* Whether an id is a special/control token (BOS, EOS, added special tokens). */
bool tok_is_special(const tok_tokenizer *t, int32_t id);

/* Incremental detokenization for streaming: push ids one at a time and get
 * the text they complete. The concatenation of everything a stream returns
 * equals tok_decode() of all ids pushed; no chunk ends inside a UTF-8
 * sequence (bytes are held back until the sequence completes), and the
 * SentencePiece leading-space rule is applied once, at the start. */
typedef struct tok_stream tok_stream;
tok_stream *tok_stream_new(const tok_tokenizer *t, unsigned decode_flags, qerr *err);
void tok_stream_free(tok_stream *s);
/* Push one id; *text points to the newly completed text (valid until the
 * next call; may be empty) and *len is its length. */
qrun_status tok_stream_push(tok_stream *s, int32_t id, const char **text, size_t *len, qerr *err);
/* End of stream: whatever is held back (an incomplete UTF-8 tail becomes
 * U+FFFD, as tok_decode would give). */
qrun_status tok_stream_flush(tok_stream *s, const char **text, size_t *len, qerr *err);

/* Validate UTF-8; returns the offset of the first invalid byte or `len`. */
size_t tok_utf8_valid_prefix(const char *s, size_t len);

#ifdef __cplusplus
}
#endif
#endif
