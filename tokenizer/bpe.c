/* Byte-level BPE from a Hugging Face tokenizer.json (Falcon, Llama 3,
 * SmolLM2, GPT-2 style). The reference is the Rust `tokenizers` library
 * (Python package `tokenizers`); ids must equal its ids for every input.
 * Supported subset and algorithm: docs/tokenizer-bpe.md.
 *
 * Encoding of one piece of plain text (tokenizer.c has already cut out the
 * added/special tokens):
 *   1. pre-tokenization: a list of steps, each turning a list of splits
 *      (ranges of a working buffer) into a new list (regex splits with the
 *      Split behaviours, a leading space, the byte-level alphabet mapping);
 *   2. the BPE model on each final split: the whole split when
 *      ignore_merges and it is in the vocabulary, else a cache lookup, else
 *      characters -> ids then merges by rank with a binary heap.
 * Regexes are compiled with PCRE2 (UTF + UCP, JIT when available) after a
 * translation of the few Oniguruma constructs whose meaning differs. */
#define PCRE2_CODE_UNIT_WIDTH 8

#include <cjson/cJSON.h>
#include <limits.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"

#define BPE_MAX_ID (1 << 24)           /* refuse ids above this (no real vocab is near) */
#define BPE_CACHE_SLOTS (1u << 15)     /* open-addressing slots of the word cache */
#define BPE_CACHE_MAX_ENTRIES 16384    /* cleared when reached */
#define BPE_CACHE_MAX_WORD 256         /* longer words are not cached (bytes) */
#define BPE_CACHE_ARENA (4u << 20)     /* bytes of keys + ids; cleared when full */

/* ------------------------------------------------------------------ */
/* hashing                                                             */

static uint64_t hash_bytes(const char *s, size_t n)
{
    /* FNV-1a over 8-byte chunks followed by a final mix: fast enough and
     * well distributed for short words. */
    uint64_t h = 0xcbf29ce484222325ull ^ (n * 0x9e3779b97f4a7c15ull);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* ------------------------------------------------------------------ */
/* the state                                                           */

typedef enum pt_kind {
    PT_REGEX,        /* split with a regex and a behaviour */
    PT_PREFIX_SPACE, /* ByteLevel add_prefix_space */
    PT_BYTE_MAP,     /* ByteLevel: bytes -> the GPT-2 alphabet */
} pt_kind;

typedef enum split_behavior {
    SB_REMOVED,
    SB_ISOLATED,
    SB_MERGED_PREV,
    SB_MERGED_NEXT,
    SB_CONTIGUOUS,
} split_behavior;

typedef struct pt_step {
    pt_kind kind;
    pcre2_code *re;
    split_behavior behavior;
    bool invert;
} pt_step;

/* DEC_NONE: no decoder (pieces joined by spaces); DEC_CONCAT: a decoder
 * Sequence with nothing in it (pieces concatenated). */
typedef enum dec_kind { DEC_NONE, DEC_CONCAT, DEC_BYTE_LEVEL } dec_kind;

typedef struct cache_entry {
    uint64_t hash;
    uint32_t key_off, key_len; /* into the arena */
    uint32_t ids_off, n_ids;   /* int32 ids into the arena (aligned) */
} cache_entry;

typedef struct bpe_state {
    /* vocabulary: id -> token (NULL for holes), token -> id */
    int32_t vocab_size;
    char **tok;       /* model vocab by id (NULL where the model has none) */
    uint32_t *tok_len;
    int32_t *vmap;    /* open addressing: id or -1 */
    size_t vmap_cap;
    /* per-id piece (added content wins over the model token) */
    const char **piece;
    uint32_t *piece_len;
    /* added tokens: content -> id, for piece_to_id */
    int32_t *amap; /* index into t->added or -1 */
    size_t amap_cap;
    const tok_added *added;
    size_t n_added;

    /* merges: (left id, right id) -> rank, new id */
    uint64_t *mkey; /* (a << 32 | b) + 1, 0 = empty */
    uint32_t *mrank;
    int32_t *mnew;
    size_t mcap;

    bool ignore_merges, byte_fallback, fuse_unk;
    int32_t unk_id;            /* -1: none */
    char *cont_prefix, *eow_suffix; /* NULL or non-empty */
    size_t cont_prefix_len, eow_suffix_len;
    int32_t byte_ids[256];     /* <0xNN> tokens (byte_fallback), -1 when absent */

    pt_step *steps;
    size_t n_steps;

    dec_kind decoder;
    unsigned char byte_utf8[256][2]; /* GPT-2 alphabet, UTF-8 */
    unsigned char byte_utf8_len[256];
    int16_t char_byte[324];          /* code point -> byte, -1 */

    /* word cache, guarded by cache_mu */
    pthread_mutex_t cache_mu;
    cache_entry *cache;   /* BPE_CACHE_SLOTS; key_len == UINT32_MAX: empty */
    size_t cache_n;
    char *arena;
    size_t arena_used;
} bpe_state;

/* ------------------------------------------------------------------ */
/* byte-level alphabet                                                 */

static void init_byte_alphabet(bpe_state *st)
{
    int cp[256];
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        cp[b] = printable ? b : 256 + n++;
    }
    for (int i = 0; i < 324; i++)
        st->char_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int c = cp[b];
        if (c < 0x80) {
            st->byte_utf8[b][0] = (unsigned char)c;
            st->byte_utf8_len[b] = 1;
        } else {
            st->byte_utf8[b][0] = (unsigned char)(0xC0 | (c >> 6));
            st->byte_utf8[b][1] = (unsigned char)(0x80 | (c & 0x3F));
            st->byte_utf8_len[b] = 2;
        }
        st->char_byte[c] = (int16_t)b;
    }
}

/* Length of the UTF-8 sequence starting with byte c (input is valid). */
static inline size_t u8len(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c < 0xE0)
        return 2;
    if (c < 0xF0)
        return 3;
    return 4;
}

/* Decode one code point of valid UTF-8. */
static inline uint32_t u8dec(const unsigned char *s, size_t *n)
{
    size_t l = u8len(s[0]);
    *n = l;
    switch (l) {
    case 1: return s[0];
    case 2: return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    case 3: return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    default:
        return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
               ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    }
}

/* ------------------------------------------------------------------ */
/* vocabulary and merge maps                                           */

static int32_t vocab_find(const bpe_state *st, const char *s, size_t n)
{
    if (!st->vmap)
        return -1;
    size_t mask = st->vmap_cap - 1;
    for (size_t i = hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        int32_t id = st->vmap[i];
        if (id < 0)
            return -1;
        if (st->tok_len[id] == n && memcmp(st->tok[id], s, n) == 0)
            return id;
    }
}

static void vocab_insert(bpe_state *st, int32_t id)
{
    size_t mask = st->vmap_cap - 1;
    size_t i = hash_bytes(st->tok[id], st->tok_len[id]) & mask;
    while (st->vmap[i] >= 0)
        i = (i + 1) & mask;
    st->vmap[i] = id;
}

static bool merge_find(const bpe_state *st, int32_t a, int32_t b, uint32_t *rank, int32_t *nid)
{
    if (!st->mkey)
        return false;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t mask = st->mcap - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        if (st->mkey[i] == 0)
            return false;
        if (st->mkey[i] == key) {
            *rank = st->mrank[i];
            *nid = st->mnew[i];
            return true;
        }
    }
}

/* Insert or overwrite (a later duplicate pair wins, as in the reference's
 * hash map built from the merge list). */
static void merge_put(bpe_state *st, int32_t a, int32_t b, uint32_t rank, int32_t nid)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t mask = st->mcap - 1;
    size_t i = hash_u64(key) & mask;
    while (st->mkey[i] != 0 && st->mkey[i] != key)
        i = (i + 1) & mask;
    st->mkey[i] = key;
    st->mrank[i] = rank;
    st->mnew[i] = nid;
}

/* ------------------------------------------------------------------ */
/* regex translation (Oniguruma, as used by the reference -> PCRE2)    */

/* The differences that matter for tokenizer patterns:
 * - (?i) in PCRE2 UTF mode folds across the ASCII boundary (s ~ U+017F,
 *   k ~ U+212A); Oniguruma, as the reference runs it, does not: caseless
 *   ASCII letters become explicit [xX] classes and the flag is dropped;
 * - \w in PCRE2 10.42 is [\p{L}\p{N}_], in Oniguruma letters, marks,
 *   decimal digits and connector punctuation;
 * - \h is a hex digit in Oniguruma; \b/\B follow \w: refused.
 * \s, \d, \p{..} agree. */
typedef struct sbuf {
    char *v;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 64;
        while (c < b->n + n + 1)
            c *= 2;
        char *v = realloc(b->v, c);
        if (!v) {
            b->oom = true;
            return;
        }
        b->v = v;
        b->cap = c;
    }
    memcpy(b->v + b->n, s, n);
    b->n += n;
    b->v[b->n] = 0;
}
static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

#define WORD_CLASS_BODY "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"

static qrun_status translate_regex(const char *src, char **out, const char *where, qerr *err)
{
    sbuf b = {0};
    bool stack[256];
    int depth = 0;
    bool ci = false;
    size_t n = strlen(src);
    size_t i = 0;
    const char *bad = NULL;
    while (i < n && !bad) {
        char c = src[i];
        if (c == '\\') {
            if (i + 1 >= n) {
                bad = "trailing backslash";
                break;
            }
            char e = src[i + 1];
            if (e == 'w') {
                sb_puts(&b, "[" WORD_CLASS_BODY "]");
                i += 2;
            } else if (e == 'W') {
                sb_puts(&b, "[^" WORD_CLASS_BODY "]");
                i += 2;
            } else if (e == 'h' || e == 'H' || e == 'b' || e == 'B' || e == 'X' || e == 'R' ||
                       e == 'K' || e == 'G') {
                bad = "an escape whose meaning differs between Oniguruma and PCRE2 (\\h \\b \\X \\R \\K \\G)";
            } else if ((e == 'p' || e == 'P' || e == 'x' || e == 'u') && i + 2 < n && src[i + 2] == '{') {
                const char *close = strchr(src + i + 2, '}');
                if (!close) {
                    bad = "unterminated \\p{ or \\x{";
                    break;
                }
                sb_put(&b, src + i, (size_t)(close - (src + i)) + 1);
                i = (size_t)(close - src) + 1;
            } else {
                sb_put(&b, src + i, 2);
                i += 2;
            }
        } else if (c == '[') {
            /* copy a character class; \w inside becomes its body */
            size_t j = i + 1;
            sb_put(&b, "[", 1);
            if (j < n && src[j] == '^')
                sb_put(&b, src + j++, 1);
            if (j < n && src[j] == ']')
                sb_put(&b, src + j++, 1);
            bool closed = false;
            while (j < n) {
                char d = src[j];
                if (d == ']') {
                    sb_put(&b, "]", 1);
                    j++;
                    closed = true;
                    break;
                }
                if (d == '[') {
                    bad = "nested or POSIX character classes";
                    break;
                }
                if (d == '\\') {
                    if (j + 1 >= n) {
                        bad = "trailing backslash";
                        break;
                    }
                    char e = src[j + 1];
                    if (e == 'w') {
                        sb_puts(&b, WORD_CLASS_BODY);
                        j += 2;
                    } else if (e == 'W' || e == 'S' || e == 'D' || e == 'h' || e == 'H') {
                        bad = "\\W, \\S, \\D or \\h inside a character class";
                        break;
                    } else if ((e == 'p' || e == 'P' || e == 'x' || e == 'u') && j + 2 < n &&
                               src[j + 2] == '{') {
                        const char *close = strchr(src + j + 2, '}');
                        if (!close) {
                            bad = "unterminated \\p{ or \\x{";
                            break;
                        }
                        sb_put(&b, src + j, (size_t)(close - (src + j)) + 1);
                        j = (size_t)(close - src) + 1;
                    } else {
                        sb_put(&b, src + j, 2);
                        j += 2;
                    }
                    continue;
                }
                if (ci && ((d >= 'a' && d <= 'z') || (d >= 'A' && d <= 'Z'))) {
                    bad = "letters inside a character class under (?i)";
                    break;
                }
                sb_put(&b, src + j, 1);
                j++;
            }
            if (!bad && !closed)
                bad = "unterminated character class";
            i = j;
        } else if (c == '(') {
            if (depth >= 255) {
                bad = "groups nested too deeply";
                break;
            }
            if (i + 1 < n && src[i + 1] == '?') {
                /* inline flags: only i, as (?i) or (?i:...) */
                if (i + 3 < n && src[i + 2] == 'i' && src[i + 3] == ')') {
                    ci = true;
                    i += 4;
                    continue;
                }
                if (i + 3 < n && src[i + 2] == 'i' && src[i + 3] == ':') {
                    stack[depth++] = ci;
                    ci = true;
                    sb_puts(&b, "(?:");
                    i += 4;
                    continue;
                }
                char f = i + 2 < n ? src[i + 2] : 0;
                if (f == ':' || f == '=' || f == '!' || f == '>' ||
                    (f == '<' && i + 3 < n && (src[i + 3] == '=' || src[i + 3] == '!'))) {
                    stack[depth++] = ci;
                    sb_put(&b, src + i, f == '<' ? 4 : 3);
                    i += f == '<' ? 4 : 3;
                    continue;
                }
                bad = "inline flags or group kinds other than (?i) (?: (?= (?! (?<= (?<! (?>";
                break;
            }
            stack[depth++] = ci;
            sb_put(&b, "(", 1);
            i++;
        } else if (c == ')') {
            if (depth == 0) {
                bad = "unbalanced parenthesis";
                break;
            }
            ci = stack[--depth];
            sb_put(&b, ")", 1);
            i++;
        } else if (ci && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
            char cls[5] = {'[', (char)(c | 0x20), (char)(c & ~0x20), ']', 0};
            sb_puts(&b, cls);
            i++;
        } else {
            sb_put(&b, src + i, 1);
            i++;
        }
    }
    if (bad) {
        free(b.v);
        return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                        "tokenizer.json: %s: regex \"%.200s\" uses %s, which qrun does not support",
                        where, src, bad);
    }
    if (b.oom) {
        free(b.v);
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "tokenizer.json: %s: out of memory", where);
    }
    if (!b.v)
        sb_put(&b, "", 0);
    if (b.oom) {
        free(b.v);
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "tokenizer.json: %s: out of memory", where);
    }
    *out = b.v;
    return QRUN_OK;
}

static qrun_status compile_re(const char *pat, bool literal, pcre2_code **out, const char *where,
                              qerr *err)
{
    char *tr = NULL;
    const char *use = pat;
    if (!literal) {
        qrun_status s = translate_regex(pat, &tr, where, err);
        if (s != QRUN_OK)
            return s;
        use = tr;
    }
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = literal ? PCRE2_UTF | PCRE2_NO_UTF_CHECK | PCRE2_LITERAL
                            : PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)use, literal ? strlen(pat) : PCRE2_ZERO_TERMINATED,
                                   opts, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        qerr_set(err, QRUN_ERR_UNSUPPORTED,
                 "tokenizer.json: %s: regex \"%.200s\" does not compile with PCRE2 at offset %zu: %s",
                 where, pat, (size_t)eo, (const char *)msg);
        free(tr);
        return QRUN_ERR_UNSUPPORTED;
    }
    free(tr);
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* interpreter when JIT is unavailable */
    *out = re;
    return QRUN_OK;
}

/* ------------------------------------------------------------------ */
/* pre-tokenization                                                    */

typedef struct span {
    size_t off, len;
} span;

typedef struct spans {
    span *v;
    size_t n, cap;
} spans;

static bool spans_push(spans *a, size_t off, size_t len)
{
    if (len == 0)
        return true; /* empty splits are dropped, as in the reference */
    if (a->n == a->cap) {
        size_t c = a->cap ? a->cap * 2 : 64;
        span *v = realloc(a->v, c * sizeof *v);
        if (!v)
            return false;
        a->v = v;
        a->cap = c;
    }
    a->v[a->n].off = off;
    a->v[a->n].len = len;
    a->n++;
    return true;
}

typedef struct match3 {
    size_t s, e;
    bool m;
} match3;

typedef struct matches {
    match3 *v;
    size_t n, cap;
} matches;

static bool matches_push(matches *a, size_t s, size_t e, bool m)
{
    if (a->n == a->cap) {
        size_t c = a->cap ? a->cap * 2 : 64;
        match3 *v = realloc(a->v, c * sizeof *v);
        if (!v)
            return false;
        a->v = v;
        a->cap = c;
    }
    a->v[a->n].s = s;
    a->v[a->n].e = e;
    a->v[a->n].m = m;
    a->n++;
    return true;
}

/* All matches of `re` in s[0..n) as contiguous (range, is_match) pieces
 * covering the whole string, with Oniguruma's find_iter rule for empty
 * matches (an empty match right where the previous match ended is skipped
 * by advancing one character). Returns 0, or -1 (no memory), -2 (regex
 * error, e.g. match limit). */
static int find_matches(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t n,
                        matches *out)
{
    out->n = 0;
    size_t prev = 0, pos = 0;
    bool have_last = false;
    size_t last_end = 0;
    while (pos <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0)
            return -2;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms == me && have_last && last_end == me) {
            if (pos >= n)
                break;
            pos += u8len((unsigned char)s[pos]);
            continue;
        }
        if (prev != ms && !matches_push(out, prev, ms, false))
            return -1;
        if (!matches_push(out, ms, me, true))
            return -1;
        prev = me;
        have_last = true;
        last_end = me;
        pos = me;
    }
    if (prev != n && !matches_push(out, prev, n, false))
        return -1;
    return 0;
}

/* One regex step over every split. */
static int step_regex(const pt_step *stp, pcre2_match_data *md, const char *buf, const spans *in,
                      spans *out, matches *mt)
{
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        size_t base = in->v[k].off;
        int r = find_matches(stp->re, md, buf + base, in->v[k].len, mt);
        if (r)
            return r;
        if (stp->invert)
            for (size_t j = 0; j < mt->n; j++)
                mt->v[j].m = !mt->v[j].m;
        /* apply the behaviour: produce (range, removed) pieces */
        switch (stp->behavior) {
        case SB_ISOLATED:
            for (size_t j = 0; j < mt->n; j++)
                if (!spans_push(out, base + mt->v[j].s, mt->v[j].e - mt->v[j].s))
                    return -1;
            break;
        case SB_REMOVED:
            for (size_t j = 0; j < mt->n; j++)
                if (!mt->v[j].m && !spans_push(out, base + mt->v[j].s, mt->v[j].e - mt->v[j].s))
                    return -1;
            break;
        case SB_CONTIGUOUS:
        case SB_MERGED_PREV: {
            /* grow the last piece while the rule says so; pieces are kept
             * (with their empty ones) until the end of the split */
            size_t first = out->n;
            bool prev_m = false, have = false;
            size_t cs = 0, ce = 0;
            for (size_t j = 0; j < mt->n; j++) {
                bool m = mt->v[j].m;
                bool extend = stp->behavior == SB_CONTIGUOUS ? (m == prev_m) : (m && !prev_m);
                if (extend && have) {
                    ce = mt->v[j].e;
                } else {
                    if (have && !spans_push(out, base + cs, ce - cs))
                        return -1;
                    cs = mt->v[j].s;
                    ce = mt->v[j].e;
                    have = true;
                }
                prev_m = m;
            }
            if (have && !spans_push(out, base + cs, ce - cs))
                return -1;
            (void)first;
            break;
        }
        case SB_MERGED_NEXT: {
            /* walk backwards; a match joins the piece after it */
            size_t first = out->n;
            bool prev_m = false, have = false;
            size_t cs = 0, ce = 0;
            for (size_t jj = mt->n; jj-- > 0;) {
                bool m = mt->v[jj].m;
                if (m && !prev_m && have) {
                    cs = mt->v[jj].s;
                } else {
                    if (have && !spans_push(out, base + cs, ce - cs))
                        return -1;
                    cs = mt->v[jj].s;
                    ce = mt->v[jj].e;
                    have = true;
                }
                prev_m = m;
            }
            if (have && !spans_push(out, base + cs, ce - cs))
                return -1;
            /* reverse what this split added */
            for (size_t a = first, z = out->n; a + 1 < z; a++, z--) {
                span tmp = out->v[a];
                out->v[a] = out->v[z - 1];
                out->v[z - 1] = tmp;
            }
            break;
        }
        }
    }
    return 0;
}

typedef struct work {
    tok_bytes buf[2];
    spans sp[2];
    matches mt;
    pcre2_match_data *md;
    int32_t *sym_c;
    int32_t *sym_prev, *sym_next;
    uint32_t *sym_len;
    struct heap_item *heap;
    size_t sym_cap, heap_cap;
    tok_ids word_ids;
    tok_bytes key;
} work;

static void work_free(work *w)
{
    for (int i = 0; i < 2; i++) {
        free(w->buf[i].v);
        free(w->sp[i].v);
    }
    free(w->mt.v);
    if (w->md)
        pcre2_match_data_free(w->md);
    free(w->sym_c);
    free(w->sym_prev);
    free(w->sym_next);
    free(w->sym_len);
    free(w->heap);
    free(w->word_ids.v);
    free(w->key.v);
}

static bool bytes_reserve(tok_bytes *b, size_t n)
{
    if (n <= b->cap)
        return true;
    size_t c = b->cap ? b->cap : 256;
    while (c < n) {
        if (c > SIZE_MAX / 2)
            return false;
        c *= 2;
    }
    char *v = realloc(b->v, c);
    if (!v)
        return false;
    b->v = v;
    b->cap = c;
    return true;
}

/* Run the pre-tokenizer. On success *buf / *sp point at the final splits. */
static qrun_status pretokenize(const bpe_state *st, work *w, const char *text, size_t len,
                               const tok_bytes **obuf, const spans **osp, qerr *err)
{
    int cur = 0;
    /* the working buffer starts as a copy (steps may rewrite it) */
    w->buf[0].n = 0;
    if (len > SIZE_MAX / 4 || !bytes_reserve(&w->buf[0], len + 1))
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");
    memcpy(w->buf[0].v, text, len);
    w->buf[0].n = len;
    w->sp[0].n = 0;
    if (!spans_push(&w->sp[0], 0, len))
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");

    for (size_t k = 0; k < st->n_steps; k++) {
        const pt_step *stp = &st->steps[k];
        int nxt = cur ^ 1;
        if (stp->kind == PT_REGEX) {
            if (!w->md) {
                w->md = pcre2_match_data_create(8, NULL);
                if (!w->md)
                    return qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");
            }
            int r = step_regex(stp, w->md, w->buf[cur].v, &w->sp[cur], &w->sp[nxt], &w->mt);
            if (r == -1)
                return qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");
            if (r)
                return qerr_set(err, QRUN_ERR_INTERNAL,
                                "bpe encode: pre-tokenizer regex failed (PCRE2 error)");
            /* same buffer, new spans: swap spans only */
            spans t = w->sp[cur];
            w->sp[cur] = w->sp[nxt];
            w->sp[nxt] = t;
            continue;
        }
        /* rewriting steps: new buffer */
        tok_bytes *ob = &w->buf[nxt];
        const char *ib = w->buf[cur].v;
        const spans *is = &w->sp[cur];
        spans *os = &w->sp[nxt];
        ob->n = 0;
        os->n = 0;
        size_t total = 0;
        for (size_t j = 0; j < is->n; j++)
            total += is->v[j].len;
        size_t need = stp->kind == PT_PREFIX_SPACE ? total + is->n + 1 : 2 * total + 1;
        if (!bytes_reserve(ob, need))
            return qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");
        for (size_t j = 0; j < is->n; j++) {
            const unsigned char *s = (const unsigned char *)ib + is->v[j].off;
            size_t n = is->v[j].len;
            size_t start = ob->n;
            if (stp->kind == PT_PREFIX_SPACE) {
                if (s[0] != ' ')
                    ob->v[ob->n++] = ' ';
                memcpy(ob->v + ob->n, s, n);
                ob->n += n;
            } else {
                char *o = ob->v + ob->n;
                for (size_t q = 0; q < n; q++) {
                    unsigned char c = s[q];
                    o[0] = (char)st->byte_utf8[c][0];
                    if (st->byte_utf8_len[c] == 2) {
                        o[1] = (char)st->byte_utf8[c][1];
                        o += 2;
                    } else {
                        o += 1;
                    }
                }
                ob->n = (size_t)(o - ob->v);
            }
            if (!spans_push(os, start, ob->n - start))
                return qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");
        }
        cur = nxt;
    }
    *obuf = &w->buf[cur];
    *osp = &w->sp[cur];
    return QRUN_OK;
}

/* ------------------------------------------------------------------ */
/* the BPE model on one word                                           */

typedef struct heap_item {
    uint32_t rank;
    uint32_t pos;
    int32_t nid;
} heap_item;

static inline bool heap_less(const heap_item *a, const heap_item *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(heap_item *h, size_t *n, heap_item x)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&x, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static heap_item heap_pop(heap_item *h, size_t *n)
{
    heap_item top = h[0];
    heap_item x = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= m)
            break;
        size_t c = (l + 1 < m && heap_less(&h[l + 1], &h[l])) ? l + 1 : l;
        if (!heap_less(&h[c], &x))
            break;
        h[i] = h[c];
        i = c;
    }
    if (m)
        h[i] = x;
    return top;
}

static bool work_reserve_syms(work *w, size_t n)
{
    if (n <= w->sym_cap)
        return true;
    size_t c = w->sym_cap ? w->sym_cap : 64;
    while (c < n)
        c *= 2;
    int32_t *a = realloc(w->sym_c, c * sizeof *a);
    if (!a)
        return false;
    w->sym_c = a;
    int32_t *p = realloc(w->sym_prev, c * sizeof *p);
    if (!p)
        return false;
    w->sym_prev = p;
    int32_t *q = realloc(w->sym_next, c * sizeof *q);
    if (!q)
        return false;
    w->sym_next = q;
    uint32_t *l = realloc(w->sym_len, c * sizeof *l);
    if (!l)
        return false;
    w->sym_len = l;
    heap_item *h = realloc(w->heap, 2 * c * sizeof *h);
    if (!h)
        return false;
    w->heap = h;
    w->sym_cap = c;
    w->heap_cap = 2 * c;
    return true;
}

/* Characters -> symbols (unk / byte fallback as the reference does), then
 * merges by rank; appends the ids to w->word_ids. */
static qrun_status merge_word(const bpe_state *st, work *w, const char *s, size_t n, qerr *err)
{
    size_t ns = 0;
    /* each byte at most one symbol, plus byte-fallback: at most n symbols... */
    /* byte fallback emits one symbol per byte of the (prefixed) char */
    size_t maxsym = n + (st->cont_prefix_len + st->eow_suffix_len) * (n + 1) + 1;
    if (!work_reserve_syms(w, maxsym))
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");
    char tmp[64];
    int32_t unk = -1;
    uint32_t unk_len = 0;
    bool have_unk = false;
    for (size_t i = 0; i < n;) {
        size_t cl = u8len((unsigned char)s[i]);
        if (i + cl > n)
            cl = n - i;
        bool first = i == 0, last = i + cl >= n;
        const char *key = s + i;
        size_t kl = cl;
        char *heapkey = NULL;
        if ((!first && st->cont_prefix) || (last && st->eow_suffix)) {
            size_t pl = (!first && st->cont_prefix) ? st->cont_prefix_len : 0;
            size_t sl = (last && st->eow_suffix) ? st->eow_suffix_len : 0;
            kl = pl + cl + sl;
            char *k = tmp;
            if (kl > sizeof tmp) {
                heapkey = malloc(kl);
                if (!heapkey)
                    return qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");
                k = heapkey;
            }
            if (pl)
                memcpy(k, st->cont_prefix, pl);
            memcpy(k + pl, s + i, cl);
            if (sl)
                memcpy(k + pl + cl, st->eow_suffix, sl);
            key = k;
        }
        int32_t id = vocab_find(st, key, kl);
        if (id >= 0) {
            if (have_unk) {
                w->sym_c[ns] = unk;
                w->sym_len[ns++] = unk_len;
                have_unk = false;
            }
            w->sym_c[ns] = id;
            w->sym_len[ns++] = (uint32_t)cl;
        } else {
            bool done = false;
            if (st->byte_fallback) {
                bool all = true;
                for (size_t q = 0; q < kl; q++)
                    if (st->byte_ids[(unsigned char)key[q]] < 0)
                        all = false;
                if (all) {
                    for (size_t q = 0; q < kl; q++) {
                        w->sym_c[ns] = st->byte_ids[(unsigned char)key[q]];
                        w->sym_len[ns++] = 1;
                    }
                    done = true;
                }
            }
            if (!done && st->unk_id >= 0) {
                if (have_unk && st->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (have_unk) {
                        w->sym_c[ns] = unk;
                        w->sym_len[ns++] = unk_len;
                    }
                    unk = st->unk_id;
                    unk_len = (uint32_t)cl;
                    have_unk = true;
                }
            }
        }
        free(heapkey);
        i += cl;
    }
    if (have_unk) {
        w->sym_c[ns] = unk;
        w->sym_len[ns++] = unk_len;
    }
    for (size_t k = 0; k < ns; k++) {
        w->sym_prev[k] = (int32_t)k - 1;
        w->sym_next[k] = k + 1 < ns ? (int32_t)k + 1 : -1;
    }
    size_t hn = 0;
    for (size_t k = 0; k + 1 < ns; k++) {
        uint32_t rank;
        int32_t nid;
        if (merge_find(st, w->sym_c[k], w->sym_c[k + 1], &rank, &nid))
            heap_push(w->heap, &hn, (heap_item){rank, (uint32_t)k, nid});
    }
    while (hn > 0) {
        heap_item top = heap_pop(w->heap, &hn);
        size_t p = top.pos;
        if (w->sym_len[p] == 0 || w->sym_next[p] < 0)
            continue;
        size_t q = (size_t)w->sym_next[p];
        uint32_t rank;
        int32_t nid;
        if (!merge_find(st, w->sym_c[p], w->sym_c[q], &rank, &nid) || nid != top.nid)
            continue; /* stale entry */
        w->sym_c[p] = nid;
        w->sym_len[p] += w->sym_len[q];
        w->sym_next[p] = w->sym_next[q];
        w->sym_len[q] = 0;
        if (w->sym_next[q] >= 0)
            w->sym_prev[w->sym_next[q]] = (int32_t)p;
        if (hn + 2 > w->heap_cap) {
            /* cannot happen: every push follows a pop or a merge, but keep it safe */
            return qerr_set(err, QRUN_ERR_INTERNAL, "bpe encode: merge heap overflow");
        }
        if (w->sym_prev[p] >= 0) {
            size_t a = (size_t)w->sym_prev[p];
            if (merge_find(st, w->sym_c[a], w->sym_c[p], &rank, &nid))
                heap_push(w->heap, &hn, (heap_item){rank, (uint32_t)a, nid});
        }
        if (w->sym_next[p] >= 0) {
            size_t b = (size_t)w->sym_next[p];
            if (merge_find(st, w->sym_c[p], w->sym_c[b], &rank, &nid))
                heap_push(w->heap, &hn, (heap_item){rank, (uint32_t)p, nid});
        }
    }
    for (size_t k = 0; k < ns; k++)
        if (w->sym_len[k] != 0 && !tok_ids_push(&w->word_ids, w->sym_c[k]))
            return qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");
    return QRUN_OK;
}

/* ------------------------------------------------------------------ */
/* the word cache                                                      */

static bool cache_get(bpe_state *st, uint64_t h, const char *s, size_t n, tok_ids *out, bool *oom)
{
    bool hit = false;
    pthread_mutex_lock(&st->cache_mu);
    size_t mask = BPE_CACHE_SLOTS - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        cache_entry *e = &st->cache[i];
        if (e->key_len == UINT32_MAX)
            break;
        if (e->hash == h && e->key_len == n && memcmp(st->arena + e->key_off, s, n) == 0) {
            const int32_t *ids = (const int32_t *)(void *)(st->arena + e->ids_off);
            for (uint32_t k = 0; k < e->n_ids; k++)
                if (!tok_ids_push(out, ids[k])) {
                    *oom = true;
                    break;
                }
            hit = true;
            break;
        }
    }
    pthread_mutex_unlock(&st->cache_mu);
    return hit;
}

static void cache_put(bpe_state *st, uint64_t h, const char *s, size_t n, const int32_t *ids,
                      size_t n_ids)
{
    size_t key_sz = (n + 3) & ~(size_t)3;
    size_t need = key_sz + n_ids * sizeof(int32_t);
    if (need > BPE_CACHE_ARENA / 16)
        return;
    pthread_mutex_lock(&st->cache_mu);
    if (st->cache_n >= BPE_CACHE_MAX_ENTRIES || st->arena_used + need > BPE_CACHE_ARENA) {
        for (size_t i = 0; i < BPE_CACHE_SLOTS; i++)
            st->cache[i].key_len = UINT32_MAX;
        st->cache_n = 0;
        st->arena_used = 0;
    }
    size_t mask = BPE_CACHE_SLOTS - 1;
    size_t i = h & mask;
    for (;; i = (i + 1) & mask) {
        cache_entry *e = &st->cache[i];
        if (e->key_len == UINT32_MAX)
            break;
        if (e->hash == h && e->key_len == n && memcmp(st->arena + e->key_off, s, n) == 0) {
            pthread_mutex_unlock(&st->cache_mu); /* another thread put it first */
            return;
        }
    }
    cache_entry *e = &st->cache[i];
    e->hash = h;
    e->key_off = (uint32_t)st->arena_used;
    e->key_len = (uint32_t)n;
    memcpy(st->arena + st->arena_used, s, n);
    e->ids_off = (uint32_t)(st->arena_used + key_sz);
    e->n_ids = (uint32_t)n_ids;
    if (n_ids)
        memcpy(st->arena + e->ids_off, ids, n_ids * sizeof(int32_t));
    st->arena_used += need;
    st->cache_n++;
    pthread_mutex_unlock(&st->cache_mu);
}

/* ------------------------------------------------------------------ */
/* tok_impl                                                            */

static qrun_status bpe_encode(void *state, const char *text, size_t len, tok_ids *out, qerr *err)
{
    bpe_state *st = state;
    if (len == 0)
        return QRUN_OK;
    if (!text)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "bpe encode: NULL text");
    work w;
    memset(&w, 0, sizeof w);
    const tok_bytes *buf = NULL;
    const spans *sp = NULL;
    qrun_status s = pretokenize(st, &w, text, len, &buf, &sp, err);
    if (s != QRUN_OK)
        goto done;
    for (size_t k = 0; k < sp->n; k++) {
        const char *word = buf->v + sp->v[k].off;
        size_t n = sp->v[k].len;
        if (st->ignore_merges) {
            int32_t id = vocab_find(st, word, n);
            if (id >= 0) {
                if (!tok_ids_push(out, id)) {
                    s = qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");
                    goto done;
                }
                continue;
            }
        }
        bool cacheable = n < BPE_CACHE_MAX_WORD;
        uint64_t h = 0;
        if (cacheable) {
            bool oom = false;
            h = hash_bytes(word, n);
            if (cache_get(st, h, word, n, out, &oom)) {
                if (oom) {
                    s = qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");
                    goto done;
                }
                continue;
            }
        }
        w.word_ids.n = 0;
        s = merge_word(st, &w, word, n, err);
        if (s != QRUN_OK)
            goto done;
        for (size_t q = 0; q < w.word_ids.n; q++)
            if (!tok_ids_push(out, w.word_ids.v[q])) {
                s = qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe encode: out of memory");
                goto done;
            }
        if (cacheable)
            cache_put(st, h, word, n, w.word_ids.v, w.word_ids.n);
    }
done:
    work_free(&w);
    return s;
}

static qrun_status bpe_decode_piece(void *state, int32_t id, bool first, tok_bytes *out, qerr *err)
{
    bpe_state *st = state;
    if (id < 0 || id >= st->vocab_size)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "bpe decode: id %d out of range [0, %d)",
                        (int)id, (int)st->vocab_size);
    const char *p = st->piece[id];
    if (!p)
        return QRUN_OK; /* a hole in the id space: the reference skips it */
    size_t n = st->piece_len[id];
    bool ok;
    if (st->decoder == DEC_NONE) {
        /* no decoder: the reference joins the tokens with spaces */
        ok = (first || tok_bytes_append(out, " ", 1)) && tok_bytes_append(out, p, n);
    } else if (st->decoder == DEC_CONCAT) {
        ok = tok_bytes_append(out, p, n);
    } else {
        /* ByteLevel: every char must be in the alphabet, else the token's
         * own bytes (the reference's rule, applied to added tokens too) */
        unsigned char tmp[256];
        unsigned char *b = n <= sizeof tmp ? tmp : malloc(n);
        if (!b)
            return qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe decode: out of memory");
        size_t m = 0;
        bool all = true;
        for (size_t i = 0; i < n;) {
            size_t cl;
            uint32_t c = u8dec((const unsigned char *)p + i, &cl);
            if (c >= 324 || st->char_byte[c] < 0) {
                all = false;
                break;
            }
            b[m++] = (unsigned char)st->char_byte[c];
            i += cl;
        }
        ok = all ? tok_bytes_append(out, (const char *)b, m) : tok_bytes_append(out, p, n);
        if (b != tmp)
            free(b);
    }
    if (!ok)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "bpe decode: out of memory");
    return QRUN_OK;
}

static const char *bpe_id_to_piece(void *state, int32_t id)
{
    bpe_state *st = state;
    if (id < 0 || id >= st->vocab_size)
        return NULL;
    return st->piece[id];
}

static int32_t bpe_piece_to_id(void *state, const char *piece)
{
    bpe_state *st = state;
    if (!piece)
        return -1;
    size_t n = strlen(piece);
    if (st->amap) {
        size_t mask = st->amap_cap - 1;
        for (size_t i = hash_bytes(piece, n) & mask;; i = (i + 1) & mask) {
            int32_t a = st->amap[i];
            if (a < 0)
                break;
            if (strcmp(st->added[a].content, piece) == 0)
                return st->added[a].id;
        }
    }
    return vocab_find(st, piece, n);
}

static void bpe_destroy(void *state)
{
    bpe_state *st = state;
    if (!st)
        return;
    if (st->tok)
        for (int32_t i = 0; i < st->vocab_size; i++)
            free(st->tok[i]);
    free(st->tok);
    free(st->tok_len);
    free(st->vmap);
    free(st->piece);
    free(st->piece_len);
    free(st->amap);
    free(st->mkey);
    free(st->mrank);
    free(st->mnew);
    free(st->cont_prefix);
    free(st->eow_suffix);
    for (size_t i = 0; i < st->n_steps; i++)
        if (st->steps[i].re)
            pcre2_code_free(st->steps[i].re);
    free(st->steps);
    free(st->cache);
    free(st->arena);
    pthread_mutex_destroy(&st->cache_mu);
    free(st);
}

static const tok_impl bpe_impl = {
    .encode = bpe_encode,
    .decode_piece = bpe_decode_piece,
    .id_to_piece = bpe_id_to_piece,
    .piece_to_id = bpe_piece_to_id,
    .destroy = bpe_destroy,
};

/* ------------------------------------------------------------------ */
/* loading                                                             */

#define TJ "tokenizer.json: "

static const char *jtype(const cJSON *j)
{
    if (!j)
        return "missing";
    if (cJSON_IsNull(j))
        return "null";
    if (cJSON_IsBool(j))
        return "a boolean";
    if (cJSON_IsNumber(j))
        return "a number";
    if (cJSON_IsString(j))
        return "a string";
    if (cJSON_IsArray(j))
        return "an array";
    if (cJSON_IsObject(j))
        return "an object";
    return "invalid";
}

/* Optional boolean: absent or null -> def. */
static qrun_status get_bool(const cJSON *obj, const char *key, bool def, bool *out,
                            const char *path, qerr *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!j || cJSON_IsNull(j)) {
        *out = def;
        return QRUN_OK;
    }
    if (!cJSON_IsBool(j))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.%s: expected a boolean, found %s", path, key,
                        jtype(j));
    *out = cJSON_IsTrue(j);
    return QRUN_OK;
}

static qrun_status get_id(const cJSON *j, int32_t *out, const char *path, qerr *err)
{
    if (!cJSON_IsNumber(j))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s: expected an integer id, found %s", path,
                        jtype(j));
    double d = j->valuedouble;
    if (!(d >= 0) || d >= BPE_MAX_ID || d != (double)(int32_t)d)
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s: id %g is not an integer in [0, %d)", path,
                        d, BPE_MAX_ID);
    *out = (int32_t)d;
    return QRUN_OK;
}

static const char *type_of(const cJSON *obj)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static qrun_status parse_behavior(const cJSON *obj, const char *path, split_behavior def,
                                  split_behavior *out, qerr *err)
{
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(obj, "behavior");
    if (!b || cJSON_IsNull(b)) {
        *out = def;
        return QRUN_OK;
    }
    if (!cJSON_IsString(b))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.behavior: expected a string, found %s", path,
                        jtype(b));
    static const struct {
        const char *name;
        split_behavior b;
    } names[] = {{"Removed", SB_REMOVED},
                 {"Isolated", SB_ISOLATED},
                 {"MergedWithPrevious", SB_MERGED_PREV},
                 {"MergedWithNext", SB_MERGED_NEXT},
                 {"Contiguous", SB_CONTIGUOUS}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(b->valuestring, names[i].name) == 0) {
            *out = names[i].b;
            return QRUN_OK;
        }
    return qerr_set(err, QRUN_ERR_UNSUPPORTED, TJ "%s.behavior: unknown value \"%.100s\"", path,
                    b->valuestring);
}

typedef struct loader {
    bpe_state *st;
    pt_step *steps;
    size_t n, cap;
} loader;

static qrun_status add_step(loader *L, pt_kind kind, pcre2_code *re, split_behavior b, bool inv,
                            qerr *err)
{
    if (L->n == L->cap) {
        size_t c = L->cap ? L->cap * 2 : 8;
        pt_step *v = realloc(L->steps, c * sizeof *v);
        if (!v) {
            if (re)
                pcre2_code_free(re);
            return qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
        }
        L->steps = v;
        L->cap = c;
    }
    L->steps[L->n++] = (pt_step){kind, re, b, inv};
    return QRUN_OK;
}

static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static qrun_status parse_pretok(loader *L, const cJSON *j, const char *path, int depth, qerr *err)
{
    if (!j || cJSON_IsNull(j))
        return QRUN_OK;
    if (depth > 8)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED, TJ "%s: Sequence nested too deeply", path);
    if (!cJSON_IsObject(j))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s: expected an object or null, found %s", path,
                        jtype(j));
    const char *type = type_of(j);
    if (!type)
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.type: missing or not a string", path);
    qrun_status s;
    char sub[256];
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "pretokenizers");
        if (!cJSON_IsArray(arr))
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.pretokenizers: expected an array, found %s",
                            path, jtype(arr));
        int i = 0;
        for (const cJSON *e = arr->child; e; e = e->next, i++) {
            snprintf(sub, sizeof sub, "%s.pretokenizers[%d]", path, i);
            if ((s = parse_pretok(L, e, sub, depth + 1, err)) != QRUN_OK)
                return s;
        }
        return QRUN_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        bool aps, use_re, trim;
        if ((s = get_bool(j, "add_prefix_space", true, &aps, path, err)) != QRUN_OK ||
            (s = get_bool(j, "use_regex", true, &use_re, path, err)) != QRUN_OK ||
            (s = get_bool(j, "trim_offsets", true, &trim, path, err)) != QRUN_OK)
            return s;
        if (aps && (s = add_step(L, PT_PREFIX_SPACE, NULL, SB_ISOLATED, false, err)) != QRUN_OK)
            return s;
        if (use_re) {
            pcre2_code *re;
            if ((s = compile_re(GPT2_RE, false, &re, path, err)) != QRUN_OK)
                return s;
            if ((s = add_step(L, PT_REGEX, re, SB_ISOLATED, false, err)) != QRUN_OK)
                return s;
        }
        return add_step(L, PT_BYTE_MAP, NULL, SB_ISOLATED, false, err);
    }
    if (strcmp(type, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(j, "pattern");
        if (!cJSON_IsObject(pat))
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.pattern: expected an object, found %s",
                            path, jtype(pat));
        const cJSON *rx = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
        if (!(cJSON_IsString(rx) ^ cJSON_IsString(lit)))
            return qerr_set(err, QRUN_ERR_FORMAT,
                            TJ "%s.pattern: expected exactly one of \"Regex\" or \"String\"", path);
        split_behavior b;
        if (!cJSON_GetObjectItemCaseSensitive(j, "behavior"))
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.behavior: missing", path);
        if ((s = parse_behavior(j, path, SB_ISOLATED, &b, err)) != QRUN_OK)
            return s;
        bool inv;
        if ((s = get_bool(j, "invert", false, &inv, path, err)) != QRUN_OK)
            return s;
        const char *p = rx ? rx->valuestring : lit->valuestring;
        if (lit && p[0] == 0) {
            /* an empty String pattern matches nothing: the split stays whole
             * (inverted: everything is a match) */
            return inv && b == SB_REMOVED ? qerr_set(err, QRUN_ERR_UNSUPPORTED,
                                                     TJ "%s: empty inverted String pattern", path)
                                          : QRUN_OK;
        }
        pcre2_code *re;
        snprintf(sub, sizeof sub, "%s.pattern", path);
        if ((s = compile_re(p, lit != NULL, &re, sub, err)) != QRUN_OK)
            return s;
        return add_step(L, PT_REGEX, re, b, inv, err);
    }
    if (strcmp(type, "Digits") == 0) {
        bool ind;
        if ((s = get_bool(j, "individual_digits", false, &ind, path, err)) != QRUN_OK)
            return s;
        pcre2_code *re;
        if ((s = compile_re("\\p{N}", false, &re, path, err)) != QRUN_OK)
            return s;
        return add_step(L, PT_REGEX, re, ind ? SB_ISOLATED : SB_CONTIGUOUS, false, err);
    }
    if (strcmp(type, "Punctuation") == 0) {
        split_behavior b;
        if ((s = parse_behavior(j, path, SB_ISOLATED, &b, err)) != QRUN_OK)
            return s;
        pcre2_code *re;
        if ((s = compile_re("[\\p{P}!-/:-@\\[-`{-~]", false, &re, path, err)) != QRUN_OK)
            return s;
        return add_step(L, PT_REGEX, re, b, false, err);
    }
    if (strcmp(type, "WhitespaceSplit") == 0) {
        pcre2_code *re;
        if ((s = compile_re("\\s", false, &re, path, err)) != QRUN_OK)
            return s;
        return add_step(L, PT_REGEX, re, SB_REMOVED, false, err);
    }
    return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                    TJ "%s.type: pre-tokenizer \"%.100s\" is not supported (qrun supports "
                       "ByteLevel, Split, Digits, Punctuation, WhitespaceSplit and Sequence)",
                    path, type);
}

static qrun_status parse_normalizer(const cJSON *j, const char *path, int depth, qerr *err)
{
    if (!j || cJSON_IsNull(j))
        return QRUN_OK;
    if (!cJSON_IsObject(j))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s: expected an object or null, found %s", path,
                        jtype(j));
    const char *type = type_of(j);
    if (!type)
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.type: missing or not a string", path);
    if (strcmp(type, "Sequence") == 0 && depth < 8) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "normalizers");
        if (!cJSON_IsArray(arr))
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.normalizers: expected an array, found %s",
                            path, jtype(arr));
        int i = 0;
        char sub[256];
        for (const cJSON *e = arr->child; e; e = e->next, i++) {
            snprintf(sub, sizeof sub, "%s.normalizers[%d]", path, i);
            qrun_status s = parse_normalizer(e, sub, depth + 1, err);
            if (s != QRUN_OK)
                return s;
        }
        return QRUN_OK;
    }
    return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                    TJ "%s.type: normalizer \"%.100s\" is not supported (qrun supports none)", path,
                    type);
}

static int32_t added_id_of(const tok_tokenizer *t, const char *content)
{
    for (size_t i = 0; i < t->n_added; i++)
        if (strcmp(t->added[i].content, content) == 0)
            return t->added[i].id;
    return -1;
}

typedef struct ids_acc {
    int32_t *v;
    size_t n;
} ids_acc;

static qrun_status parse_template(tok_tokenizer *t, const cJSON *j, const char *path, bool *seen,
                                  qerr *err)
{
    if (*seen)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED, TJ "%s: more than one TemplateProcessing", path);
    *seen = true;
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(j, "single");
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(j, "special_tokens");
    if (!cJSON_IsArray(single))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.single: expected an array, found %s", path,
                        jtype(single));
    if (sp && !cJSON_IsObject(sp) && !cJSON_IsNull(sp))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.special_tokens: expected an object, found %s",
                        path, jtype(sp));
    ids_acc pre = {0}, suf = {0};
    bool got_seq = false;
    int i = 0;
    qrun_status s = QRUN_OK;
    char sub[256];
    for (const cJSON *e = single->child; e; e = e->next, i++) {
        snprintf(sub, sizeof sub, "%s.single[%d]", path, i);
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
        const cJSON *spt = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
        if (cJSON_IsObject(seq)) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(seq, "id");
            if (!cJSON_IsString(id) || (strcmp(id->valuestring, "A") && strcmp(id->valuestring, "a"))) {
                s = qerr_set(err, QRUN_ERR_UNSUPPORTED,
                             TJ "%s.Sequence.id: a single-sequence template must use sequence A",
                             sub);
                goto fail;
            }
            if (got_seq) {
                s = qerr_set(err, QRUN_ERR_UNSUPPORTED, TJ "%s: sequence A appears twice", sub);
                goto fail;
            }
            got_seq = true;
        } else if (cJSON_IsObject(spt)) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(spt, "id");
            if (!cJSON_IsString(name)) {
                s = qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.SpecialToken.id: expected a string", sub);
                goto fail;
            }
            const cJSON *def = sp ? cJSON_GetObjectItemCaseSensitive(sp, name->valuestring) : NULL;
            const cJSON *ids = def ? cJSON_GetObjectItemCaseSensitive(def, "ids") : NULL;
            if (!cJSON_IsArray(ids)) {
                s = qerr_set(err, QRUN_ERR_FORMAT,
                             TJ "%s.special_tokens[\"%.100s\"].ids: missing or not an array", path,
                             name->valuestring);
                goto fail;
            }
            int n = cJSON_GetArraySize(ids), k = 0;
            ids_acc *acc = got_seq ? &suf : &pre;
            int32_t *v = realloc(acc->v, (acc->n + (size_t)n + 1) * sizeof *v);
            if (!v) {
                s = qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
                goto fail;
            }
            acc->v = v;
            for (const cJSON *x = ids->child; x; x = x->next, k++) {
                char sub2[300];
                snprintf(sub2, sizeof sub2, "%s.special_tokens[\"%.60s\"].ids[%d]", path,
                         name->valuestring, k);
                int32_t id = 0;
                if ((s = get_id(x, &id, sub2, err)) != QRUN_OK)
                    goto fail;
                if (id >= t->vocab_size) {
                    s = qerr_set(err, QRUN_ERR_FORMAT, TJ "%s: id %d is not in the vocabulary",
                                 sub2, (int)id);
                    goto fail;
                }
                acc->v[acc->n++] = id;
            }
        } else {
            s = qerr_set(err, QRUN_ERR_FORMAT,
                         TJ "%s: expected {\"Sequence\": ...} or {\"SpecialToken\": ...}", sub);
            goto fail;
        }
    }
    if (!got_seq) {
        s = qerr_set(err, QRUN_ERR_UNSUPPORTED, TJ "%s.single: no sequence A in the template",
                     path);
        goto fail;
    }
    if (t->n_prefix || t->n_suffix) {
        s = qerr_set(err, QRUN_ERR_UNSUPPORTED, TJ "%s: template given twice", path);
        goto fail;
    }
    t->prefix_ids = pre.v;
    t->n_prefix = pre.n;
    t->suffix_ids = suf.v;
    t->n_suffix = suf.n;
    return QRUN_OK;
fail:
    free(pre.v);
    free(suf.v);
    return s;
}

static qrun_status parse_post(tok_tokenizer *t, const cJSON *j, const char *path, int depth,
                              bool *seen_template, qerr *err)
{
    if (!j || cJSON_IsNull(j))
        return QRUN_OK;
    if (!cJSON_IsObject(j))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s: expected an object or null, found %s", path,
                        jtype(j));
    const char *type = type_of(j);
    if (!type)
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.type: missing or not a string", path);
    if (strcmp(type, "ByteLevel") == 0)
        return QRUN_OK; /* offsets only */
    if (strcmp(type, "TemplateProcessing") == 0)
        return parse_template(t, j, path, seen_template, err);
    if (strcmp(type, "Sequence") == 0 && depth < 8) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "processors");
        if (!cJSON_IsArray(arr))
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.processors: expected an array, found %s",
                            path, jtype(arr));
        int i = 0;
        char sub[256];
        for (const cJSON *e = arr->child; e; e = e->next, i++) {
            snprintf(sub, sizeof sub, "%s.processors[%d]", path, i);
            qrun_status s = parse_post(t, e, sub, depth + 1, seen_template, err);
            if (s != QRUN_OK)
                return s;
        }
        return QRUN_OK;
    }
    return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                    TJ "%s.type: post-processor \"%.100s\" is not supported (qrun supports "
                       "ByteLevel, TemplateProcessing and Sequence)",
                    path, type);
}

static qrun_status parse_decoder(bpe_state *st, const cJSON *j, const char *path, int depth,
                                 int *n_bl, qerr *err)
{
    if (!j || cJSON_IsNull(j))
        return QRUN_OK;
    if (!cJSON_IsObject(j))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s: expected an object or null, found %s", path,
                        jtype(j));
    const char *type = type_of(j);
    if (!type)
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.type: missing or not a string", path);
    if (strcmp(type, "ByteLevel") == 0) {
        (*n_bl)++;
        st->decoder = DEC_BYTE_LEVEL;
        return QRUN_OK;
    }
    if (strcmp(type, "Sequence") == 0 && depth < 8) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "decoders");
        if (!cJSON_IsArray(arr))
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.decoders: expected an array, found %s",
                            path, jtype(arr));
        int i = 0;
        char sub[256];
        for (const cJSON *e = arr->child; e; e = e->next, i++) {
            snprintf(sub, sizeof sub, "%s.decoders[%d]", path, i);
            qrun_status s = parse_decoder(st, e, sub, depth + 1, n_bl, err);
            if (s != QRUN_OK)
                return s;
        }
        return QRUN_OK;
    }
    return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                    TJ "%s.type: decoder \"%.100s\" is not supported (qrun supports ByteLevel, "
                       "a Sequence holding it, or none)",
                    path, type);
}

static qrun_status parse_added(tok_tokenizer *t, const cJSON *arr, int32_t *max_id, qerr *err)
{
    if (!arr || cJSON_IsNull(arr))
        return QRUN_OK;
    if (!cJSON_IsArray(arr))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "added_tokens: expected an array, found %s",
                        jtype(arr));
    int n = cJSON_GetArraySize(arr);
    if (n == 0)
        return QRUN_OK;
    t->added = calloc((size_t)n, sizeof *t->added);
    if (!t->added)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
    int i = 0;
    qrun_status s;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        char path[64];
        snprintf(path, sizeof path, "added_tokens[%d]", i);
        if (!cJSON_IsObject(e))
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s: expected an object, found %s", path,
                            jtype(e));
        tok_added *a = &t->added[i];
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        char p2[96];
        snprintf(p2, sizeof p2, "%s.id", path);
        if ((s = get_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &a->id, p2, err)) != QRUN_OK)
            return s;
        if (!cJSON_IsString(content))
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.content: expected a string, found %s",
                            path, jtype(content));
        if (content->valuestring[0] == 0)
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.content: empty", path);
        if (tok_utf8_valid_prefix(content->valuestring, strlen(content->valuestring)) !=
            strlen(content->valuestring))
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.content: invalid UTF-8", path);
        bool sp;
        if ((s = get_bool(e, "special", false, &sp, path, err)) != QRUN_OK ||
            (s = get_bool(e, "lstrip", false, &a->lstrip, path, err)) != QRUN_OK ||
            (s = get_bool(e, "rstrip", false, &a->rstrip, path, err)) != QRUN_OK ||
            (s = get_bool(e, "single_word", false, &a->single_word, path, err)) != QRUN_OK ||
            (s = get_bool(e, "normalized", !sp, &a->normalized, path, err)) != QRUN_OK)
            return s;
        a->special = sp;
        for (size_t k = 0; k < t->n_added; k++) {
            if (t->added[k].id == a->id)
                return qerr_set(err, QRUN_ERR_FORMAT, TJ "%s.id: id %d used by added_tokens[%zu] too",
                                path, (int)a->id, k);
            if (strcmp(t->added[k].content, content->valuestring) == 0)
                return qerr_set(err, QRUN_ERR_FORMAT,
                                TJ "%s.content: \"%.100s\" is also added_tokens[%zu]", path,
                                content->valuestring, k);
        }
        a->content = strdup(content->valuestring);
        if (!a->content)
            return qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
        t->n_added++;
        if (a->id > *max_id)
            *max_id = a->id;
    }
    return QRUN_OK;
}

static qrun_status parse_vocab(const cJSON *vocab, int32_t *max_id, qerr *err)
{
    if (!cJSON_IsObject(vocab))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "model.vocab: expected an object, found %s",
                        jtype(vocab));
    /* first pass: range of ids */
    size_t n = 0;
    for (const cJSON *e = vocab->child; e; e = e->next, n++) {
        int32_t id = 0;
        char path[160];
        snprintf(path, sizeof path, "model.vocab[\"%.100s\"]", e->string ? e->string : "");
        qrun_status s = get_id(e, &id, path, err);
        if (s != QRUN_OK)
            return s;
        if (id > *max_id)
            *max_id = id;
    }
    return QRUN_OK;
}

static qrun_status fill_vocab(bpe_state *st, const cJSON *vocab, qerr *err)
{
    size_t n = 0;
    for (const cJSON *e = vocab->child; e; e = e->next)
        n++;
    st->vmap_cap = pow2_at_least(n * 2 + 1);
    st->vmap = malloc(st->vmap_cap * sizeof *st->vmap);
    if (!st->vmap)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
    for (size_t i = 0; i < st->vmap_cap; i++)
        st->vmap[i] = -1;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int32_t id = (int32_t)e->valuedouble; /* checked by parse_vocab */
        const char *k = e->string ? e->string : "";
        size_t kl = strlen(k);
        if (tok_utf8_valid_prefix(k, kl) != kl)
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "model.vocab: token with id %d is not valid UTF-8",
                            (int)id);
        if (st->tok[id])
            return qerr_set(err, QRUN_ERR_FORMAT,
                            TJ "model.vocab[\"%.100s\"]: id %d is also used by \"%.100s\"", k,
                            (int)id, st->tok[id]);
        if (vocab_find(st, k, kl) >= 0)
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "model.vocab: token \"%.100s\" appears twice", k);
        st->tok[id] = strdup(k);
        if (!st->tok[id])
            return qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
        st->tok_len[id] = (uint32_t)kl;
        vocab_insert(st, id);
    }
    return QRUN_OK;
}

static qrun_status parse_merges(bpe_state *st, const cJSON *merges, qerr *err)
{
    if (!merges || cJSON_IsNull(merges))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "model.merges: missing");
    if (!cJSON_IsArray(merges))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "model.merges: expected an array, found %s",
                        jtype(merges));
    size_t n = 0;
    for (const cJSON *e = merges->child; e; e = e->next)
        n++;
    st->mcap = pow2_at_least(n * 2 + 1);
    st->mkey = calloc(st->mcap, sizeof *st->mkey);
    st->mrank = malloc(st->mcap * sizeof *st->mrank);
    st->mnew = malloc(st->mcap * sizeof *st->mnew);
    if (!st->mkey || !st->mrank || !st->mnew)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
    char *buf = NULL;
    size_t bcap = 0;
    qrun_status s = QRUN_OK;
    uint32_t rank = 0;
    /* which form: all strings or all pairs (decided by the first entry) */
    bool pairs = merges->child && cJSON_IsArray(merges->child);
    for (const cJSON *e = merges->child; e; e = e->next, rank++) {
        const char *a, *b;
        size_t al, bl;
        if (pairs) {
            if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 2 || !cJSON_IsString(e->child) ||
                !cJSON_IsString(e->child->next)) {
                s = qerr_set(err, QRUN_ERR_FORMAT,
                             TJ "model.merges[%u]: expected a pair of strings", (unsigned)rank);
                break;
            }
            a = e->child->valuestring;
            b = e->child->next->valuestring;
            al = strlen(a);
            bl = strlen(b);
        } else {
            if (!cJSON_IsString(e)) {
                s = qerr_set(err, QRUN_ERR_FORMAT,
                             TJ "model.merges[%u]: expected a string \"a b\", found %s",
                             (unsigned)rank, jtype(e));
                break;
            }
            a = e->valuestring;
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                s = qerr_set(err, QRUN_ERR_FORMAT,
                             TJ "model.merges[%u]: \"%.100s\" is not two tokens separated by one space",
                             (unsigned)rank, a);
                break;
            }
            al = (size_t)(sp - a);
            b = sp + 1;
            bl = strlen(b);
        }
        int32_t ia = vocab_find(st, a, al), ib = vocab_find(st, b, bl);
        if (ia < 0 || ib < 0) {
            s = qerr_set(err, QRUN_ERR_FORMAT, TJ "model.merges[%u]: token \"%.*s\" is not in the vocabulary",
                         (unsigned)rank, (int)(ia < 0 ? (al > 100 ? 100 : al) : (bl > 100 ? 100 : bl)),
                         ia < 0 ? a : b);
            break;
        }
        size_t pl = st->cont_prefix_len;
        if (pl && (bl < pl || memcmp(b, st->cont_prefix, pl) != 0)) {
            /* the reference strips prefix-length bytes blindly; refuse instead */
            s = qerr_set(err, QRUN_ERR_FORMAT,
                         TJ "model.merges[%u]: right token \"%.100s\" lacks continuing_subword_prefix",
                         (unsigned)rank, b);
            break;
        }
        size_t ml = al + bl - pl;
        if (ml + 1 > bcap) {
            bcap = (ml + 1) * 2;
            char *nb = realloc(buf, bcap);
            if (!nb) {
                s = qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
                break;
            }
            buf = nb;
        }
        memcpy(buf, a, al);
        memcpy(buf + al, b + pl, bl - pl);
        int32_t nid = vocab_find(st, buf, ml);
        if (nid < 0) {
            s = qerr_set(err, QRUN_ERR_FORMAT,
                         TJ "model.merges[%u]: merged token \"%.*s\" is not in the vocabulary",
                         (unsigned)rank, (int)(ml > 100 ? 100 : ml), buf);
            break;
        }
        merge_put(st, ia, ib, rank, nid);
    }
    free(buf);
    return s;
}

static qrun_status get_opt_string(const cJSON *obj, const char *key, char **out, qerr *err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!j || cJSON_IsNull(j))
        return QRUN_OK;
    if (!cJSON_IsString(j))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "model.%s: expected a string or null, found %s",
                        key, jtype(j));
    if (j->valuestring[0] == 0)
        return QRUN_OK;
    *out = strdup(j->valuestring);
    if (!*out)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
    return QRUN_OK;
}

static qrun_status load_json(tok_tokenizer *t, bpe_state *st, const cJSON *root, qerr *err)
{
    qrun_status s;
    if (!cJSON_IsObject(root))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "top level: expected an object, found %s",
                        jtype(root));
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model))
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "model: expected an object, found %s",
                        jtype(model));
    const char *mtype = type_of(model);
    if (mtype && strcmp(mtype, "BPE") != 0)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                        TJ "model.type: \"%.100s\" is not supported (qrun supports BPE)", mtype);
    if (!mtype) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(model, "type");
        if (ty)
            return qerr_set(err, QRUN_ERR_FORMAT, TJ "model.type: expected a string, found %s",
                            jtype(ty));
        if (!cJSON_GetObjectItemCaseSensitive(model, "merges"))
            return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                            TJ "model: no \"type\" and no \"merges\": not a BPE model");
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) &&
        !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0.0))
        return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                        TJ "model.dropout: BPE dropout is not supported (must be null)");
    if ((s = get_bool(model, "ignore_merges", false, &st->ignore_merges, "model", err)) ||
        (s = get_bool(model, "byte_fallback", false, &st->byte_fallback, "model", err)) ||
        (s = get_bool(model, "fuse_unk", false, &st->fuse_unk, "model", err)))
        return s;
    if ((s = get_opt_string(model, "continuing_subword_prefix", &st->cont_prefix, err)) ||
        (s = get_opt_string(model, "end_of_word_suffix", &st->eow_suffix, err)))
        return s;
    st->cont_prefix_len = st->cont_prefix ? strlen(st->cont_prefix) : 0;
    st->eow_suffix_len = st->eow_suffix ? strlen(st->eow_suffix) : 0;

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    int32_t max_id = -1;
    if ((s = parse_vocab(vocab, &max_id, err)) != QRUN_OK)
        return s;
    if ((s = parse_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), &max_id, err)))
        return s;
    if (max_id < 0)
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "model.vocab: empty");
    st->vocab_size = max_id + 1;
    t->vocab_size = st->vocab_size;
    size_t vs = (size_t)st->vocab_size;
    st->tok = calloc(vs, sizeof *st->tok);
    st->tok_len = calloc(vs, sizeof *st->tok_len);
    st->piece = calloc(vs, sizeof *st->piece);
    st->piece_len = calloc(vs, sizeof *st->piece_len);
    t->is_special = calloc(vs, 1);
    if (!st->tok || !st->tok_len || !st->piece || !st->piece_len || !t->is_special)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory (%zu ids)", vs);
    if ((s = fill_vocab(st, vocab, err)) != QRUN_OK)
        return s;
    for (size_t i = 0; i < vs; i++) {
        st->piece[i] = st->tok[i];
        st->piece_len[i] = st->tok_len[i];
    }
    st->added = t->added;
    st->n_added = t->n_added;
    if (t->n_added) {
        st->amap_cap = pow2_at_least(t->n_added * 2 + 1);
        st->amap = malloc(st->amap_cap * sizeof *st->amap);
        if (!st->amap)
            return qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
        for (size_t i = 0; i < st->amap_cap; i++)
            st->amap[i] = -1;
    }
    for (size_t i = 0; i < t->n_added; i++) {
        const tok_added *a = &t->added[i];
        st->piece[a->id] = a->content;
        st->piece_len[a->id] = (uint32_t)strlen(a->content);
        if (a->special)
            t->is_special[a->id] = 1;
        size_t mask = st->amap_cap - 1;
        size_t k = hash_bytes(a->content, strlen(a->content)) & mask;
        while (st->amap[k] >= 0)
            k = (k + 1) & mask;
        st->amap[k] = (int32_t)i;
    }

    /* unk and byte fallback */
    char *unk = NULL;
    if ((s = get_opt_string(model, "unk_token", &unk, err)) != QRUN_OK)
        return s;
    st->unk_id = -1;
    if (unk) {
        st->unk_id = vocab_find(st, unk, strlen(unk));
        if (st->unk_id < 0) {
            s = qerr_set(err, QRUN_ERR_FORMAT, TJ "model.unk_token: \"%.100s\" is not in model.vocab",
                         unk);
            free(unk);
            return s;
        }
        free(unk);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        st->byte_ids[b] = vocab_find(st, name, 6);
    }

    if ((s = parse_merges(st, cJSON_GetObjectItemCaseSensitive(model, "merges"), err)) != QRUN_OK)
        return s;

    if ((s = parse_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), "normalizer",
                              0, err)) != QRUN_OK)
        return s;
    loader L = {st, NULL, 0, 0};
    s = parse_pretok(&L, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), "pre_tokenizer",
                     0, err);
    st->steps = L.steps;
    st->n_steps = L.n;
    if (s != QRUN_OK)
        return s;
    bool seen_template = false;
    if ((s = parse_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"),
                        "post_processor", 0, &seen_template, err)) != QRUN_OK)
        return s;
    int n_bl = 0;
    if ((s = parse_decoder(st, cJSON_GetObjectItemCaseSensitive(root, "decoder"), "decoder", 0,
                           &n_bl, err)) != QRUN_OK)
        return s;
    if (n_bl > 1)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED, TJ "decoder: more than one ByteLevel decoder");
    {
        const cJSON *dj = cJSON_GetObjectItemCaseSensitive(root, "decoder");
        if (dj && !cJSON_IsNull(dj) && n_bl == 0)
            st->decoder = DEC_CONCAT;
    }

    /* special ids: what tokenizer.json alone tells */
    t->special.bos = t->n_prefix ? t->prefix_ids[0] : -1;
    t->special.eos = -1;
    static const char *eos_names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>"};
    for (size_t i = 0; i < sizeof eos_names / sizeof eos_names[0] && t->special.eos < 0; i++)
        t->special.eos = added_id_of(t, eos_names[i]);
    t->special.pad = -1;
    t->special.unk = st->unk_id;
    return QRUN_OK;
}

qrun_status tok_bpe_load(tok_tokenizer *t, const void *data, size_t size, qerr *err)
{
    if (!t || (!data && size))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "tok_bpe_load: NULL argument");
    if (size == 0)
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "empty");
    if (size > (size_t)1 << 31)
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "%zu bytes: too large", size);
    cJSON *root = cJSON_ParseWithLength((const char *)data, size);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        size_t off = ep && ep >= (const char *)data && ep <= (const char *)data + size
                         ? (size_t)(ep - (const char *)data)
                         : size;
        return qerr_set(err, QRUN_ERR_FORMAT, TJ "malformed JSON near byte %zu of %zu", off, size);
    }
    bpe_state *st = calloc(1, sizeof *st);
    if (!st) {
        cJSON_Delete(root);
        return qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
    }
    pthread_mutex_init(&st->cache_mu, NULL);
    init_byte_alphabet(st);
    st->cache = malloc(BPE_CACHE_SLOTS * sizeof *st->cache);
    st->arena = malloc(BPE_CACHE_ARENA);
    qrun_status s;
    if (!st->cache || !st->arena) {
        s = qerr_set(err, QRUN_ERR_NO_MEMORY, TJ "out of memory");
    } else {
        for (size_t i = 0; i < BPE_CACHE_SLOTS; i++)
            st->cache[i].key_len = UINT32_MAX;
        s = load_json(t, st, root, err);
    }
    cJSON_Delete(root);
    if (s != QRUN_OK) {
        bpe_destroy(st);
        for (size_t i = 0; i < t->n_added; i++)
            free(t->added[i].content);
        free(t->added);
        free(t->prefix_ids);
        free(t->suffix_ids);
        free(t->is_special);
        t->added = NULL;
        t->n_added = 0;
        t->prefix_ids = t->suffix_ids = NULL;
        t->n_prefix = t->n_suffix = 0;
        t->is_special = NULL;
        t->vocab_size = 0;
        return s;
    }
    t->impl = &bpe_impl;
    t->state = st;
    return QRUN_OK;
}
