/* The common layer of the tokenizers: loading and dispatch by kind,
 * special-token splitting of the input (TOK_PARSE_SPECIAL), what
 * TOK_ADD_SPECIAL adds, decoding and streaming detokenization (one engine
 * for both, so a stream always equals tok_decode), and UTF-8 helpers.
 * See docs/tokenizers.md. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"

/* ---- growable arrays ------------------------------------------------------ */

bool tok_ids_push(tok_ids *a, int32_t id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        if (cap < a->cap || cap > SIZE_MAX / sizeof *a->v) return false;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return false;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return true;
}

bool tok_bytes_append(tok_bytes *b, const char *s, size_t n) {
    if (n > SIZE_MAX - 1 - b->n) return false;
    if (b->n + n + 1 > b->cap) { /* keep room for a terminating NUL */
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) {
            if (cap > SIZE_MAX / 2) {
                cap = b->n + n + 1;
                break;
            }
            cap *= 2;
        }
        char *v = realloc(b->v, cap);
        if (!v) return false;
        b->v = v;
        b->cap = cap;
    }
    if (n) memcpy(b->v + b->n, s, n);
    b->n += n;
    return true;
}

/* ---- UTF-8 ------------------------------------------------------------------ */

/* Classifies the sequence at s[0..n) (n >= 1). Returns 1 for a complete,
 * well-formed character of *len bytes; 0 when the n bytes are a proper
 * prefix of a well-formed character (more bytes needed; *len = n); -1 when
 * ill-formed, *len being the maximal subpart (the longest prefix of a
 * well-formed sequence, at least 1 byte) that one U+FFFD replaces under the
 * Unicode "maximal subpart" practice (Rust's from_utf8_lossy). Strict: no
 * overlongs, no surrogates, nothing above U+10FFFF. */
static int utf8_next(const unsigned char *s, size_t n, size_t *len) {
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
        *len = 1;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c == 0xE0) {
        need = 2;
        lo = 0xA0;
    } else if (c == 0xED) {
        need = 2;
        hi = 0x9F;
    } else if (c >= 0xE1 && c <= 0xEF) {
        need = 2;
    } else if (c == 0xF0) {
        need = 3;
        lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
        need = 3;
    } else if (c == 0xF4) {
        need = 3;
        hi = 0x8F;
    } else {
        *len = 1;
        return -1;
    }
    for (size_t k = 1; k <= need; k++) {
        if (k >= n) {
            *len = n;
            return 0;
        }
        unsigned b = s[k];
        if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) {
            *len = k;
            return -1;
        }
    }
    *len = need + 1;
    return 1;
}

size_t tok_utf8_valid_prefix(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    if (!s) return 0;
    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t l;
        if (utf8_next(p + i, len - i, &l) != 1) return i;
        i += l;
    }
    return len;
}

/* Decodes the code point of a well-formed character. */
static uint32_t utf8_cp(const unsigned char *s, size_t l) {
    switch (l) {
    case 1: return s[0];
    case 2: return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    case 3: return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    default:
        return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
               ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    }
}

/* ---- loading ------------------------------------------------------------------ */

int tok_kind_from_name(const char *name) {
    if (!name) return -1;
    if (strcmp(name, "sentencepiece") == 0) return TOK_SENTENCEPIECE;
    if (strcmp(name, "bpe") == 0) return TOK_BPE;
    return -1;
}

tok_tokenizer *tok_load(tok_kind kind, const void *data, size_t size, qerr *err) {
    if (!data && size) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "tok_load: NULL data");
        return NULL;
    }
    if (kind != TOK_SENTENCEPIECE && kind != TOK_BPE) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "tok_load: unknown tokenizer kind %d", (int)kind);
        return NULL;
    }
    if (size == SIZE_MAX) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "tok_load: size overflow");
        return NULL;
    }
    tok_tokenizer *t = calloc(1, sizeof *t);
    /* The loaders get a private, NUL-terminated copy that lives only for the
     * call: they copy whatever they keep. */
    char *copy = malloc(size + 1);
    if (!t || !copy) {
        free(t);
        free(copy);
        qerr_set(err, QRUN_ERR_NO_MEMORY, "tok_load: out of memory (%zu bytes)", size);
        return NULL;
    }
    if (size) memcpy(copy, data, size);
    copy[size] = 0;
    t->kind = kind;
    t->special.bos = t->special.eos = t->special.pad = t->special.unk = -1;
    qrun_status st = kind == TOK_SENTENCEPIECE ? tok_spm_load(t, copy, size, err)
                                               : tok_bpe_load(t, copy, size, err);
    free(copy);
    if (st == QRUN_OK && (!t->impl || t->vocab_size <= 0 || !t->is_special)) {
        qerr_set(err, QRUN_ERR_INTERNAL, "tokenizer loader left the tokenizer incomplete");
        st = QRUN_ERR_INTERNAL;
    }
    if (st != QRUN_OK) {
        tok_free(t);
        return NULL;
    }
    return t;
}

void tok_free(tok_tokenizer *t) {
    if (!t) return;
    if (t->impl && t->impl->destroy && t->state) t->impl->destroy(t->state);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->prefix_ids);
    free(t->suffix_ids);
    free(t->is_special);
    free(t);
}

tok_kind tok_get_kind(const tok_tokenizer *t) { return t->kind; }
int32_t tok_vocab_size(const tok_tokenizer *t) { return t ? t->vocab_size : 0; }

const char *tok_id_to_piece(const tok_tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->vocab_size) return NULL;
    return t->impl->id_to_piece(t->state, id);
}

int32_t tok_piece_to_id(const tok_tokenizer *t, const char *piece) {
    if (!t || !piece) return -1;
    return t->impl->piece_to_id(t->state, piece);
}

tok_special tok_get_special(const tok_tokenizer *t) { return t->special; }

void tok_set_special(tok_tokenizer *t, const tok_special *s) {
    if (t && s) t->special = *s;
}

void tok_set_add_bos(tok_tokenizer *t, bool add_bos) {
    if (t) t->add_bos = add_bos;
}

bool tok_is_special(const tok_tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->vocab_size) return false;
    return t->is_special[id] || id == t->special.bos || id == t->special.eos;
}

/* ---- special-token splitting (TOK_PARSE_SPECIAL) ------------------------------------ */

/* Unicode White_Space (what \s matches in the regex crate that Hugging Face
 * tokenizers uses for lstrip/rstrip). */
static bool is_space_cp(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* \w of the regex crate: Alphabetic, marks, decimal numbers, connector
 * punctuation, joiners. Non-ASCII through PCRE2's Unicode properties. */
static bool is_word_char(const unsigned char *s, size_t l) {
    if (l == 1) {
        unsigned c = s[0];
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_';
    }
    static const char pat[] = "^[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                   &ec, &eo, NULL);
    if (!re) return false;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    bool r = false;
    if (md) r = pcre2_match(re, (PCRE2_SPTR)s, l, 0, PCRE2_NO_UTF_CHECK, md, NULL) >= 0;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return r;
}

/* The character ending just before `end` (text[b..end) is valid UTF-8). */
static size_t utf8_prev_start(const char *text, size_t b, size_t end) {
    size_t i = end - 1;
    while (i > b && ((unsigned char)text[i] & 0xC0) == 0x80) i--;
    return i;
}

typedef struct seg {
    size_t b, e;
    int32_t id; /* -1: text to encode */
} seg;
typedef struct segs {
    seg *v;
    size_t n, cap;
} segs;

static bool segs_push(segs *s, size_t b, size_t e, int32_t id) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        if (cap > SIZE_MAX / sizeof *s->v) return false;
        seg *v = realloc(s->v, cap * sizeof *v);
        if (!v) return false;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (seg){b, e, id};
    return true;
}

typedef struct matcher {
    const tok_tokenizer *t;
    /* Added tokens usable in this pass, grouped by first byte, longest first. */
    size_t *order, *lens; /* lens[k]: length of added[order[k]] */
    size_t start[257];
} matcher;

static bool matcher_init(matcher *m, const tok_tokenizer *t, bool normalized, bool parse_special) {
    memset(m, 0, sizeof *m);
    m->t = t;
    size_t n = 0, count[256] = {0};
    m->order = malloc((t->n_added + 1) * sizeof *m->order);
    m->lens = malloc((t->n_added + 1) * sizeof *m->lens);
    if (!m->order || !m->lens) return false;
    for (size_t i = 0; i < t->n_added; i++) {
        const tok_added *a = &t->added[i];
        if (!a->content || !a->content[0] || a->normalized != normalized) continue;
        if (a->special && !parse_special) continue; /* as encode_special_tokens */
        count[(unsigned char)a->content[0]]++;
        n++;
    }
    /* Bucket by first byte, then order each bucket by length (longest first). */
    size_t k = 0;
    for (unsigned c = 0; c < 256; c++) {
        m->start[c] = k;
        k += count[c];
        count[c] = m->start[c];
    }
    m->start[256] = n;
    for (size_t i = 0; i < t->n_added; i++) {
        const tok_added *a = &t->added[i];
        if (!a->content || !a->content[0] || a->normalized != normalized) continue;
        if (a->special && !parse_special) continue;
        size_t at = count[(unsigned char)a->content[0]]++, l = strlen(a->content);
        size_t lo = m->start[(unsigned char)a->content[0]];
        while (at > lo && m->lens[at - 1] < l) {
            m->order[at] = m->order[at - 1];
            m->lens[at] = m->lens[at - 1];
            at--;
        }
        m->order[at] = i;
        m->lens[at] = l;
    }
    return true;
}

static void matcher_free(matcher *m) {
    free(m->order);
    free(m->lens);
}

/* Leftmost-longest match of an added token in text[from..e). */
static bool matcher_find(const matcher *m, const char *text, size_t from, size_t e, size_t *ms,
                         size_t *me, size_t *which) {
    for (size_t p = from; p < e; p++) {
        unsigned c = (unsigned char)text[p];
        for (size_t k = m->start[c]; k < m->start[c + 1]; k++) {
            const tok_added *a = &m->t->added[m->order[k]];
            size_t l = m->lens[k];
            if (l <= e - p && memcmp(text + p, a->content, l) == 0) {
                *ms = p;
                *me = p + l;
                *which = m->order[k];
                return true;
            }
        }
    }
    return false;
}

/* Splits text[b..e) on the matcher's tokens like AddedVocabulary::find_matches
 * of Hugging Face tokenizers: non-overlapping leftmost-longest matches;
 * single_word tokens only between non-word characters; lstrip/rstrip eat the
 * whitespace around the token into it. */
static bool split_added(const matcher *m, const char *text, size_t b, size_t e, segs *out) {
    size_t start_offset = b, pos = b;
    size_t ms, me, which;
    const unsigned char *u = (const unsigned char *)text;
    while (pos < e && matcher_find(m, text, pos, e, &ms, &me, &which)) {
        const tok_added *a = &m->t->added[which];
        size_t start = ms, stop = me;
        pos = me;
        if (a->single_word) {
            bool start_space = true, stop_space = true;
            if (start > b) {
                size_t cs = utf8_prev_start(text, b, start);
                start_space = !is_word_char(u + cs, start - cs);
            }
            if (stop < e) {
                size_t l;
                if (utf8_next(u + stop, e - stop, &l) != 1) l = 1;
                stop_space = !is_word_char(u + stop, l);
            }
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > b) {
                size_t cs = utf8_prev_start(text, b, ns);
                size_t l;
                if (utf8_next(u + cs, ns - cs, &l) != 1 || !is_space_cp(utf8_cp(u + cs, l))) break;
                ns = cs;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < e) {
                size_t l;
                if (utf8_next(u + stop, e - stop, &l) != 1 || !is_space_cp(utf8_cp(u + stop, l)))
                    break;
                stop += l;
            }
        }
        if (start_offset < start && !segs_push(out, start_offset, start, -1)) return false;
        if (!segs_push(out, start, stop, a->id)) return false;
        start_offset = stop;
    }
    if (start_offset < e && !segs_push(out, start_offset, e, -1)) return false;
    return true;
}

qrun_status tok_encode(const tok_tokenizer *t, const char *text, size_t len, unsigned flags,
                       int32_t **ids, size_t *n_ids, qerr *err) {
    if (!t || !ids || !n_ids || (!text && len))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "tok_encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    size_t bad = tok_utf8_valid_prefix(text, len);
    if (bad != len)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "tok_encode: invalid UTF-8 at byte offset %zu (byte 0x%02X)", bad,
                        (unsigned)(unsigned char)text[bad]);

    qrun_status st = QRUN_OK;
    tok_ids out = {0};
    segs s1 = {0}, s2 = {0};
    matcher m1 = {0}, m2 = {0};
    bool oom = false;

    if (flags & TOK_ADD_SPECIAL) {
        if (t->kind == TOK_SENTENCEPIECE && t->add_bos && t->special.bos >= 0)
            oom |= !tok_ids_push(&out, t->special.bos);
        for (size_t i = 0; i < t->n_prefix; i++) oom |= !tok_ids_push(&out, t->prefix_ids[i]);
    }

    bool parse = (flags & TOK_PARSE_SPECIAL) != 0;
    if (!oom && (!matcher_init(&m1, t, false, parse) || !matcher_init(&m2, t, true, parse)))
        oom = true;
    /* Pass 1: tokens matched on the raw text; pass 2: the "normalized"
     * ones inside what is left (qrun's byte-level tokenizers have no
     * normalizer, so normalized text is the raw text). */
    if (!oom && len > 0) oom = !split_added(&m1, text, 0, len, &s1);
    for (size_t i = 0; !oom && i < s1.n; i++) {
        if (s1.v[i].id >= 0)
            oom = !segs_push(&s2, s1.v[i].b, s1.v[i].e, s1.v[i].id);
        else
            oom = !split_added(&m2, text, s1.v[i].b, s1.v[i].e, &s2);
    }
    for (size_t i = 0; !oom && st == QRUN_OK && i < s2.n; i++) {
        const seg *g = &s2.v[i];
        if (g->id >= 0)
            oom = !tok_ids_push(&out, g->id);
        else if (g->e > g->b)
            st = t->impl->encode(t->state, text + g->b, g->e - g->b, &out, err);
    }
    if (!oom && st == QRUN_OK && (flags & TOK_ADD_SPECIAL))
        for (size_t i = 0; i < t->n_suffix; i++) oom |= !tok_ids_push(&out, t->suffix_ids[i]);

    matcher_free(&m1);
    matcher_free(&m2);
    free(s1.v);
    free(s2.v);
    if (oom && st == QRUN_OK) st = qerr_set(err, QRUN_ERR_NO_MEMORY, "tok_encode: out of memory");
    if (st != QRUN_OK) {
        free(out.v);
        return st;
    }
    if (!out.v) out.v = malloc(sizeof *out.v); /* never NULL on success */
    if (!out.v) return qerr_set(err, QRUN_ERR_NO_MEMORY, "tok_encode: out of memory");
    *ids = out.v;
    *n_ids = out.n;
    return QRUN_OK;
}

/* ---- decoding and streaming ------------------------------------------------------ */

/* One engine for tok_decode and tok_stream: pieces go into `pending`;
 * complete characters move to the output; an incomplete character waits for
 * the next piece. Ill-formed bytes become U+FFFD the way the reference
 * does it:
 *   - SentencePiece (DecodeIds): one U+FFFD per ill-formed byte, and a run
 *     of byte pieces ends at any other piece (a control token included), so
 *     an incomplete character before it is ill-formed;
 *   - byte-level BPE (tokenizers' ByteLevel decoder, from_utf8_lossy over
 *     all the bytes): one U+FFFD per maximal subpart. */
typedef struct dec_engine {
    const tok_tokenizer *t;
    unsigned flags;
    bool first;         /* the next piece is the first of the output */
    bool any;           /* something was output (or is pending) */
    tok_bytes pending;  /* bytes not yet output */
    tok_bytes scratch;
} dec_engine;

static const char k_repl[] = "\xEF\xBF\xBD";

static void dec_reset(dec_engine *d) {
    d->first = true;
    d->any = false;
    d->pending.n = 0;
}

/* Moves what is decidable from pending to out; with `final`, everything. */
static bool dec_drain(dec_engine *d, tok_bytes *out, bool final) {
    const unsigned char *p = (const unsigned char *)d->pending.v;
    size_t n = d->pending.n, i = 0, run = 0; /* run: well-formed bytes not yet copied */
    bool per_byte = d->t->kind == TOK_SENTENCEPIECE;
    while (i + run < n) {
        size_t j = i + run, l;
        if (p[j] < 0x80) {
            run++;
            continue;
        }
        int r = utf8_next(p + j, n - j, &l);
        if (r == 1) {
            run += l;
            continue;
        }
        if (r == 0 && !final) break;
        if (run && !tok_bytes_append(out, (const char *)p + i, run)) return false;
        if (!tok_bytes_append(out, k_repl, 3)) return false;
        i = j + (per_byte ? 1 : l);
        run = 0;
    }
    if (run && !tok_bytes_append(out, (const char *)p + i, run)) return false;
    i += run;
    if (i) {
        memmove(d->pending.v, d->pending.v + i, n - i);
        d->pending.n = n - i;
    }
    return true;
}

static qrun_status dec_push(dec_engine *d, int32_t id, tok_bytes *out, qerr *err) {
    const tok_tokenizer *t = d->t;
    if (id < 0 || id >= t->vocab_size)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "decode: token id %ld out of range [0, %ld)",
                        (long)id, (long)t->vocab_size);
    if ((d->flags & TOK_SKIP_SPECIAL) && tok_is_special(t, id)) return QRUN_OK;
    size_t before = d->pending.n;
    bool first = d->first && !d->any;
    qrun_status st = t->impl->decode_piece(t->state, id, first, &d->pending, err);
    if (st != QRUN_OK) return st;
    size_t got = d->pending.n - before;
    if (got) {
        d->any = true;
        d->first = false;
    } else if (first && !t->spm_bos_ws_sticky) {
        /* A piece that gave nothing only because its leading space was the
         * dummy prefix ends the "first" state (SentencePiece's bos_ws_seen). */
        d->scratch.n = 0;
        st = t->impl->decode_piece(t->state, id, false, &d->scratch, err);
        if (st != QRUN_OK) return st;
        if (d->scratch.n) d->first = false;
    }
    if (!got && t->kind == TOK_SENTENCEPIECE) {
        /* A piece that is not a byte ends the byte run: what is incomplete
         * is ill-formed. */
        if (!dec_drain(d, out, true)) goto oom;
        return QRUN_OK;
    }
    if (!dec_drain(d, out, false)) goto oom;
    return QRUN_OK;
oom:
    return qerr_set(err, QRUN_ERR_NO_MEMORY, "decode: out of memory");
}

qrun_status tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n_ids, unsigned flags,
                       char **text, size_t *len, qerr *err) {
    if (!t || !text || (!ids && n_ids))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "tok_decode: NULL argument");
    *text = NULL;
    if (len) *len = 0;
    dec_engine d = {.t = t, .flags = flags};
    dec_reset(&d);
    tok_bytes out = {0};
    qrun_status st = QRUN_OK;
    for (size_t i = 0; i < n_ids && st == QRUN_OK; i++) {
        st = dec_push(&d, ids[i], &out, err);
        if (st != QRUN_OK) qerr_prefix(err, "id %zu of %zu: ", i, n_ids);
    }
    if (st == QRUN_OK && (!dec_drain(&d, &out, true) || !tok_bytes_append(&out, "", 0)))
        st = qerr_set(err, QRUN_ERR_NO_MEMORY, "tok_decode: out of memory");
    free(d.pending.v);
    free(d.scratch.v);
    if (st != QRUN_OK) {
        free(out.v);
        return st;
    }
    out.v[out.n] = 0;
    *text = out.v;
    if (len) *len = out.n;
    return QRUN_OK;
}

struct tok_stream {
    dec_engine d;
    tok_bytes out; /* the text returned by the last call */
};

tok_stream *tok_stream_new(const tok_tokenizer *t, unsigned decode_flags, qerr *err) {
    if (!t) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "tok_stream_new: NULL tokenizer");
        return NULL;
    }
    tok_stream *s = calloc(1, sizeof *s);
    if (!s || !tok_bytes_append(&s->out, "", 0)) {
        free(s);
        qerr_set(err, QRUN_ERR_NO_MEMORY, "tok_stream_new: out of memory");
        return NULL;
    }
    s->d.t = t;
    s->d.flags = decode_flags;
    dec_reset(&s->d);
    return s;
}

void tok_stream_free(tok_stream *s) {
    if (!s) return;
    free(s->d.pending.v);
    free(s->d.scratch.v);
    free(s->out.v);
    free(s);
}

qrun_status tok_stream_push(tok_stream *s, int32_t id, const char **text, size_t *len, qerr *err) {
    if (!s || !text || !len)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "tok_stream_push: NULL argument");
    s->out.n = 0;
    qrun_status st = dec_push(&s->d, id, &s->out, err);
    s->out.v[s->out.n] = 0;
    *text = s->out.v;
    *len = s->out.n;
    return st;
}

qrun_status tok_stream_flush(tok_stream *s, const char **text, size_t *len, qerr *err) {
    if (!s || !text || !len)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "tok_stream_flush: NULL argument");
    s->out.n = 0;
    bool ok = dec_drain(&s->d, &s->out, true);
    s->out.v[s->out.n] = 0;
    *text = s->out.v;
    *len = s->out.n;
    dec_reset(&s->d); /* a later push starts a new sequence */
    if (!ok) return qerr_set(err, QRUN_ERR_NO_MEMORY, "tok_stream_flush: out of memory");
    return QRUN_OK;
}
