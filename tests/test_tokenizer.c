/* Tokenizer unit tests: the common layer (tokenizer.c) and the SentencePiece
 * wrapper (spm.cc) on the Llama-2 tokenizer.model of tests/data/tiny.
 * The expected ids and texts below were obtained from Python sentencepiece
 * 0.2.x (sp.encode / sp.decode); the large fixture comparison lives in
 * test_tokenizer_ref.c. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tok_impl.h"

static unsigned char *g_model;
static size_t g_model_size;
static tok_tokenizer *g_tok;

static void setup(void) {
    g_model = tu_read_file(tu_data_path("tiny/llama-mha/tokenizer.model"), &g_model_size);
    ck_assert_msg(g_model != NULL, "cannot read tiny/llama-mha/tokenizer.model");
    qerr e = {0};
    g_tok = tok_load(TOK_SENTENCEPIECE, g_model, g_model_size, &e);
    ck_assert_msg(g_tok != NULL, "load: %s", e.msg);
}

static void teardown(void) {
    tok_free(g_tok);
    free(g_model);
    g_tok = NULL;
    g_model = NULL;
}

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void check_encode(const tok_tokenizer *t, const char *text, size_t len, unsigned flags,
                         const int32_t *want, size_t n_want) {
    int32_t *ids = NULL;
    size_t n = 0;
    qerr e = {0};
    qrun_status st = tok_encode(t, text, len, flags, &ids, &n, &e);
    ck_assert_msg(st == QRUN_OK, "encode \"%s\": %s", text, e.msg);
    ck_assert_ptr_nonnull(ids);
    ck_assert_msg(n == n_want, "encode \"%s\" (flags %u): %zu ids, want %zu", text, flags, n,
                  n_want);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(ids[i] == want[i], "encode \"%s\": id %zu is %d, want %d", text, i, ids[i],
                      want[i]);
    free(ids);
}

static char *decode(const tok_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                    size_t *len) {
    char *text = NULL;
    qerr e = {0};
    qrun_status st = tok_decode(t, ids, n, flags, &text, len, &e);
    ck_assert_msg(st == QRUN_OK, "decode: %s", e.msg);
    ck_assert_ptr_nonnull(text);
    ck_assert_int_eq(text[*len], 0);
    return text;
}

static void check_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                         const char *want) {
    size_t len;
    char *text = decode(t, ids, n, flags, &len);
    ck_assert_msg(len == strlen(want) && memcmp(text, want, len) == 0,
                  "decode gave \"%s\" (%zu bytes), want \"%s\"", text, len, want);
    free(text);
}

#define ENC(text, flags, ...)                                                        \
    do {                                                                             \
        static const int32_t w_[] = {__VA_ARGS__};                                   \
        check_encode(g_tok, text, sizeof(text) - 1, flags, w_, N(w_));               \
    } while (0)
#define DEC(flags, want, ...)                                                        \
    do {                                                                             \
        static const int32_t i_[] = {__VA_ARGS__};                                   \
        check_decode(g_tok, i_, N(i_), flags, want);                                 \
    } while (0)

/* ---- basics ----------------------------------------------------------------- */

START_TEST(test_load_and_vocab) {
    ck_assert_int_eq(tok_get_kind(g_tok), TOK_SENTENCEPIECE);
    ck_assert_int_eq(tok_vocab_size(g_tok), 32000);
    tok_special s = tok_get_special(g_tok);
    ck_assert_int_eq(s.bos, 1);
    ck_assert_int_eq(s.eos, 2);
    ck_assert_int_eq(s.pad, -1);
    ck_assert_int_eq(s.unk, 0);
    ck_assert_str_eq(tok_id_to_piece(g_tok, 15043), "\xE2\x96\x81Hello");
    ck_assert_str_eq(tok_id_to_piece(g_tok, 1), "<s>");
    ck_assert_str_eq(tok_id_to_piece(g_tok, 3), "<0x00>");
    ck_assert_int_eq(tok_piece_to_id(g_tok, "\xE2\x96\x81Hello"), 15043);
    ck_assert_int_eq(tok_piece_to_id(g_tok, "</s>"), 2);
    ck_assert_int_eq(tok_piece_to_id(g_tok, "<unk>"), 0);
    ck_assert_int_eq(tok_piece_to_id(g_tok, "no such piece, surely"), -1);
    ck_assert_ptr_null(tok_id_to_piece(g_tok, -1));
    ck_assert_ptr_null(tok_id_to_piece(g_tok, 32000));
    ck_assert_int_eq(tok_kind_from_name("sentencepiece"), TOK_SENTENCEPIECE);
    ck_assert_int_eq(tok_kind_from_name("bpe"), TOK_BPE);
    ck_assert_int_eq(tok_kind_from_name("wordpiece"), -1);
    ck_assert_int_eq(tok_kind_from_name(NULL), -1);
    /* special: control tokens and unk */
    ck_assert(tok_is_special(g_tok, 0));
    ck_assert(tok_is_special(g_tok, 1));
    ck_assert(tok_is_special(g_tok, 2));
    ck_assert(!tok_is_special(g_tok, 3));
    ck_assert(!tok_is_special(g_tok, 15043));
    ck_assert(!tok_is_special(g_tok, -1));
    ck_assert(!tok_is_special(g_tok, 32000));
    /* the engine may override the special ids */
    tok_special o = s;
    o.eos = 15043;
    tok_set_special(g_tok, &o);
    ck_assert_int_eq(tok_get_special(g_tok).eos, 15043);
    ck_assert(tok_is_special(g_tok, 15043));
    tok_set_special(g_tok, &s);
    ck_assert(!tok_is_special(g_tok, 15043));
}
END_TEST

START_TEST(test_load_copies_bytes) {
    unsigned char *copy = malloc(g_model_size);
    memcpy(copy, g_model, g_model_size);
    qerr e = {0};
    tok_tokenizer *t = tok_load(TOK_SENTENCEPIECE, copy, g_model_size, &e);
    ck_assert_msg(t != NULL, "%s", e.msg);
    memset(copy, 0xAB, g_model_size);
    free(copy);
    static const int32_t want[] = {15043, 3186};
    check_encode(t, "Hello world", 11, 0, want, 2);
    tok_free(t);
    tok_free(NULL);
}
END_TEST

/* ---- encoding ---------------------------------------------------------------- */

START_TEST(test_encode_known) {
    ENC("Hello world", 0, 15043, 3186);
    ENC(" Hello", 0, 29871, 15043);
    ENC("  a  b ", 0, 259, 263, 29871, 289, 29871);
    ENC("na\xC3\xAFve caf\xC3\xA9", 0, 1055, 30085, 345, 274, 28059);
    ENC("\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9"
        "\xE3\x83\x88",
        0, 29871, 30325, 30346, 30968, 30199, 30572, 30454, 30255, 30279);
    ENC("\xF0\x9F\x98\x80 emoji \xF0\x9F\x8E\x89", 0, 29871, 243, 162, 155, 131, 953, 29877, 2397,
        29871, 243, 162, 145, 140);
    ENC("a\0b", 0, 263, 3, 29890);
    ENC("\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xD0\xBC\xD0\xB8\xD1\x80", 0, 7203, 7616,
        4157, 29927);
    /* special-token text is ordinary text unless asked */
    ENC("Hello <s> world", 0, 15043, 529, 29879, 29958, 3186);
    ENC("</s>", 0, 1533, 29879, 29958);
    /* empty input */
    int32_t *ids = NULL;
    size_t n = 7;
    qerr e = {0};
    ck_assert_int_eq(tok_encode(g_tok, "", 0, 0, &ids, &n, &e), QRUN_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_nonnull(ids);
    free(ids);
    ck_assert_int_eq(tok_encode(g_tok, NULL, 0, 0, &ids, &n, &e), QRUN_OK);
    ck_assert_uint_eq(n, 0);
    free(ids);
}
END_TEST

START_TEST(test_encode_add_bos) {
    ENC("Hello world", TOK_ADD_SPECIAL, 1, 15043, 3186);
    ENC("", TOK_ADD_SPECIAL, 1);
    tok_set_add_bos(g_tok, false);
    ENC("Hello world", TOK_ADD_SPECIAL, 15043, 3186);
    tok_set_add_bos(g_tok, true);
    ENC("Hello world", TOK_ADD_SPECIAL, 1, 15043, 3186);
}
END_TEST

START_TEST(test_encode_parse_special) {
    /* Each text segment is encoded on its own (with its dummy prefix), as
     * sentencepiece, llama.cpp and the legacy LlamaTokenizerFast do. */
    ENC("Hello <s> world", TOK_PARSE_SPECIAL, 15043, 29871, 1, 29871, 3186);
    ENC("a<s>b", TOK_PARSE_SPECIAL, 263, 1, 289);
    ENC("a</s>", TOK_PARSE_SPECIAL, 263, 2);
    ENC("<s><s>", TOK_PARSE_SPECIAL, 1, 1);
    ENC("<unk>", TOK_PARSE_SPECIAL, 0);
    ENC("<s>Hello", TOK_PARSE_SPECIAL | TOK_ADD_SPECIAL, 1, 1, 15043);
    ENC("<s", TOK_PARSE_SPECIAL, 529, 29879);
}
END_TEST

/* Splitting on added tokens with lstrip / rstrip / single_word and longest
 * match, against splits printed by Hugging Face tokenizers 0.23 for the
 * same added tokens. The tokens are injected into the SentencePiece
 * tokenizer (ids arbitrary); the text between them is encoded as usual. */
START_TEST(test_added_token_flags) {
    tok_added extra[] = {
        {.content = "<x>", .id = 100, .special = true, .lstrip = true},
        {.content = "<y>", .id = 101, .special = true, .rstrip = true},
        {.content = "ab", .id = 102, .special = true, .single_word = true},
        {.content = "<x>y", .id = 103, .special = true},
        {.content = "zz", .id = 104, .special = false},
    };
    tok_added *saved = g_tok->added;
    size_t saved_n = g_tok->n_added;
    g_tok->added = extra;
    g_tok->n_added = N(extra);
    struct {
        const char *text;
        const char *parts[4]; /* text segments; "#<id>" for a token */
    } cases[] = {
        {"a  <x> b", {"a", "#100", " b"}},
        {"c <y>  d", {"c ", "#101", "d"}},
        {"ab cab ab", {"#102", " cab ", "#102"}},
        {"ab_ ab", {"ab_ ", "#102"}},
        {"<x>yz", {"#103", "z"}},
        {"q <x>y", {"q ", "#103"}},
        {"\xC3\xA9 ab", {"\xC3\xA9 ", "#102"}},
        {"\xC3\xA9" "ab ab.", {"\xC3\xA9" "ab ", "#102", "."}},
        {"xzzy", {"x", "#104", "y"}},
    };
    for (size_t c = 0; c < N(cases); c++) {
        tok_ids want = {0};
        for (size_t p = 0; p < 4 && cases[c].parts[p]; p++) {
            const char *s = cases[c].parts[p];
            if (s[0] == '#') {
                tok_ids_push(&want, atoi(s + 1));
                continue;
            }
            g_tok->n_added = 0;
            int32_t *ids;
            size_t n;
            qerr e = {0};
            ck_assert_int_eq(tok_encode(g_tok, s, strlen(s), 0, &ids, &n, &e), QRUN_OK);
            for (size_t i = 0; i < n; i++) tok_ids_push(&want, ids[i]);
            free(ids);
            g_tok->n_added = N(extra);
        }
        check_encode(g_tok, cases[c].text, strlen(cases[c].text), TOK_PARSE_SPECIAL, want.v,
                     want.n);
        free(want.v);
    }
    /* Without TOK_PARSE_SPECIAL only the non-special added token is split. */
    {
        int32_t *a, *b;
        size_t na, nb;
        qerr e = {0};
        ck_assert_int_eq(tok_encode(g_tok, "<x>zz", 5, 0, &a, &na, &e), QRUN_OK);
        g_tok->n_added = 0;
        ck_assert_int_eq(tok_encode(g_tok, "<x>", 3, 0, &b, &nb, &e), QRUN_OK);
        g_tok->n_added = N(extra);
        ck_assert_uint_eq(na, nb + 1);
        ck_assert(memcmp(a, b, nb * sizeof *a) == 0);
        ck_assert_int_eq(a[nb], 104);
        free(a);
        free(b);
    }
    g_tok->added = saved;
    g_tok->n_added = saved_n;
}
END_TEST

START_TEST(test_encode_invalid_utf8) {
    struct {
        const char *s;
        size_t len, off;
    } bad[] = {
        {"ab\xE2\x82", 4, 2},       /* truncated */
        {"\xC0\x80", 2, 0},         /* overlong NUL */
        {"x\xE0\x80\xAF", 4, 1},    /* overlong */
        {"\xED\xA0\x80", 3, 0},     /* surrogate */
        {"abc\xF4\x90\x80\x80", 7, 3}, /* above U+10FFFF */
        {"\x80", 1, 0},             /* lone continuation */
        {"hello\xFF", 6, 5},
    };
    for (size_t i = 0; i < N(bad); i++) {
        int32_t *ids = (int32_t *)1;
        size_t n = 5;
        qerr e = {0};
        qrun_status st = tok_encode(g_tok, bad[i].s, bad[i].len, TOK_PARSE_SPECIAL, &ids, &n, &e);
        ck_assert_int_eq(st, QRUN_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_null(ids);
        char want[64];
        snprintf(want, sizeof want, "offset %zu", bad[i].off);
        ck_assert_msg(strstr(e.msg, want) != NULL, "case %zu: message \"%s\" lacks \"%s\"", i,
                      e.msg, want);
    }
}
END_TEST

START_TEST(test_utf8_valid_prefix) {
    ck_assert_uint_eq(tok_utf8_valid_prefix("", 0), 0);
    ck_assert_uint_eq(tok_utf8_valid_prefix("abc", 3), 3);
    ck_assert_uint_eq(tok_utf8_valid_prefix("a\0b", 3), 3);
    ck_assert_uint_eq(tok_utf8_valid_prefix("\x7F", 1), 1);
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xC2\x80", 2), 2);         /* U+0080 */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xC1\xBF", 2), 0);         /* overlong */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xDF\xBF", 2), 2);         /* U+07FF */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xE0\xA0\x80", 3), 3);     /* U+0800 */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xE0\x9F\xBF", 3), 0);     /* overlong */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xED\x9F\xBF", 3), 3);     /* U+D7FF */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xED\xA0\x80", 3), 0);     /* U+D800 */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xED\xBF\xBF", 3), 0);     /* U+DFFF */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xEE\x80\x80", 3), 3);     /* U+E000 */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xEF\xBF\xBF", 3), 3);     /* U+FFFF */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xF0\x8F\xBF\xBF", 4), 0); /* overlong */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xF0\x90\x80\x80", 4), 4); /* U+10000 */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xF4\x8F\xBF\xBF", 4), 4); /* U+10FFFF */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xF4\x90\x80\x80", 4), 0); /* U+110000 */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xF5\x80\x80\x80", 4), 0);
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xF8\x88\x80\x80\x80", 5), 0);
    ck_assert_uint_eq(tok_utf8_valid_prefix("ab\xF0\x9F\x98", 5), 2);   /* truncated */
    ck_assert_uint_eq(tok_utf8_valid_prefix("ab\xF0\x9F\x98\x80", 6), 6);
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xE2\x82\xAC\x80", 4), 3); /* stray continuation */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xE2\x28\xA1", 3), 0);
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xFE", 1), 0);
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xFF", 1), 0);
    /* a length shorter than the string stops there */
    ck_assert_uint_eq(tok_utf8_valid_prefix("\xE2\x82\xAC", 2), 0);
}
END_TEST

/* ---- decoding ---------------------------------------------------------------- */

START_TEST(test_decode_known) {
    DEC(0, "Hello world", 15043, 3186);
    DEC(0, "Hello", 1, 15043);              /* BOS is invisible; still "first" */
    DEC(0, "Hello Hello", 15043, 1, 15043);
    DEC(0, " \xE2\x81\x87 ", 0);            /* unk surface, not stripped */
    DEC(0, " \xE2\x81\x87 ", 29871, 0);     /* bare dummy prefix consumed */
    DEC(0, "  Hello", 29871, 29871, 15043); /* only one leading space dropped */
    DEC(0, "Hello", 29871, 10994); /* "Hello" without U+2581 */
    DEC(0, " ", 259);
    DEC(0, "   ", 259, 259);
    DEC(0, "  Hello", 3 + 0x20, 15043);     /* byte pieces are never stripped */
    DEC(0, "Hello  \xE2\x81\x87 ", 1, 15043, 2, 29871, 0);
    DEC(TOK_SKIP_SPECIAL, "Hello ", 1, 15043, 2, 29871, 0);
    {
        static const int32_t ids[] = {263, 3, 29890};
        size_t len;
        char *t = decode(g_tok, ids, 3, 0, &len);
        ck_assert_uint_eq(len, 3);
        ck_assert(memcmp(t, "a\0b", 3) == 0);
        free(t);
    }
    /* byte fallback */
    DEC(0, "\xF0\x9F\x98\x80 emoji \xF0\x9F\x8E\x89", 29871, 243, 162, 155, 131, 953, 29877,
        2397, 29871, 243, 162, 145, 140);
    DEC(0, "\xE2\x82\xAC", 0xE2 + 3, 0x82 + 3, 0xAC + 3);
    /* ill-formed bytes: one U+FFFD per byte, as sentencepiece */
    DEC(0, "\xEF\xBF\xBD", 0xE2 + 3);
    DEC(0, "\xEF\xBF\xBD\xEF\xBF\xBD", 0xE2 + 3, 0x82 + 3);
    DEC(0, "\xEF\xBF\xBD\xEF\xBF\xBD" "a", 0xE2 + 3, 0x82 + 3, 100);
    DEC(0, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", 0xED + 3, 0xA0 + 3, 0x80 + 3);
    /* a control token ends a run of byte pieces (sentencepiece decodes each
     * run on its own) unless special tokens are skipped */
    DEC(0, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", 0xE2 + 3, 2, 0x82 + 3, 0xAC + 3);
    DEC(TOK_SKIP_SPECIAL, "\xE2\x82\xAC", 0xE2 + 3, 2, 0x82 + 3, 0xAC + 3);
    /* empty */
    size_t len = 9;
    char *t = decode(g_tok, NULL, 0, 0, &len);
    ck_assert_uint_eq(len, 0);
    free(t);
}
END_TEST

START_TEST(test_decode_roundtrip) {
    static const char *texts[] = {
        "Hello world", "  a  b ", "na\xC3\xAFve caf\xC3\xA9", "\xF0\x9F\x98\x80 emoji",
        "line one\nline two\ttab", "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E", "x", "\xF0\x9F\xA7\xAC",
    };
    for (size_t i = 0; i < N(texts); i++) {
        int32_t *ids;
        size_t n, len;
        qerr e = {0};
        ck_assert_int_eq(tok_encode(g_tok, texts[i], strlen(texts[i]), TOK_ADD_SPECIAL, &ids, &n, &e),
                         QRUN_OK);
        char *t = decode(g_tok, ids, n, TOK_SKIP_SPECIAL, &len);
        ck_assert_str_eq(t, texts[i]);
        free(t);
        t = decode(g_tok, ids, n, 0, &len);
        ck_assert_str_eq(t, texts[i]);
        free(t);
        free(ids);
    }
}
END_TEST

START_TEST(test_decode_out_of_range) {
    int32_t ids[] = {15043, 32000};
    char *text = (char *)1;
    size_t len;
    qerr e = {0};
    ck_assert_int_eq(tok_decode(g_tok, ids, 2, 0, &text, &len, &e), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(text);
    ck_assert_msg(strstr(e.msg, "32000") != NULL, "%s", e.msg);
    ids[1] = -5;
    ck_assert_int_eq(tok_decode(g_tok, ids, 2, TOK_SKIP_SPECIAL, &text, &len, &e),
                     QRUN_ERR_INVALID_ARGUMENT);
    tok_stream *s = tok_stream_new(g_tok, 0, &e);
    ck_assert_ptr_nonnull(s);
    const char *chunk;
    ck_assert_int_eq(tok_stream_push(s, 1 << 30, &chunk, &len, &e), QRUN_ERR_INVALID_ARGUMENT);
    tok_stream_free(s);
}
END_TEST

/* ---- streaming ------------------------------------------------------------- */

/* Streams ids[0..n) and checks: every chunk is valid UTF-8, the
 * concatenation (with the flush) equals tok_decode. */
static void check_stream(const int32_t *ids, size_t n, unsigned flags) {
    qerr e = {0};
    size_t want_len;
    char *want = decode(g_tok, ids, n, flags, &want_len);
    tok_stream *s = tok_stream_new(g_tok, flags, &e);
    ck_assert_ptr_nonnull(s);
    tok_bytes got = {0};
    for (size_t i = 0; i < n; i++) {
        const char *c;
        size_t l;
        ck_assert_int_eq(tok_stream_push(s, ids[i], &c, &l, &e), QRUN_OK);
        ck_assert_msg(tok_utf8_valid_prefix(c, l) == l, "chunk %zu ends inside UTF-8", i);
        ck_assert_int_eq(c[l], 0);
        tok_bytes_append(&got, c, l);
        /* what was emitted so far is a prefix of the final text */
        ck_assert(got.n <= want_len && memcmp(got.v, want, got.n) == 0);
    }
    const char *c;
    size_t l;
    ck_assert_int_eq(tok_stream_flush(s, &c, &l, &e), QRUN_OK);
    ck_assert(tok_utf8_valid_prefix(c, l) == l);
    tok_bytes_append(&got, c, l);
    ck_assert_msg(got.n == want_len && memcmp(got.v, want, want_len) == 0,
                  "stream of %zu ids differs from decode", n);
    /* after a flush the stream starts over: the first-piece rule again */
    if (n) {
        tok_bytes again = {0};
        for (size_t i = 0; i < n; i++) {
            ck_assert_int_eq(tok_stream_push(s, ids[i], &c, &l, &e), QRUN_OK);
            tok_bytes_append(&again, c, l);
        }
        ck_assert_int_eq(tok_stream_flush(s, &c, &l, &e), QRUN_OK);
        tok_bytes_append(&again, c, l);
        ck_assert(again.n == want_len && memcmp(again.v, want, want_len) == 0);
        free(again.v);
    }
    free(got.v);
    free(want);
    tok_stream_free(s);
}

static void check_stream_prefixes(const int32_t *ids, size_t n) {
    for (size_t k = 0; k <= n; k++) {
        check_stream(ids, k, 0);
        check_stream(ids, k, TOK_SKIP_SPECIAL);
    }
}

START_TEST(test_stream_known) {
    static const int32_t emoji[] = {1, 29871, 243, 162, 155, 131, 953, 29877, 2397, 29871, 243, 162,
                                    145, 140, 2};
    static const int32_t cjk[] = {29871, 30325, 30346, 30968, 30199, 30572, 30454, 30255, 30279};
    static const int32_t broken[] = {0xE2 + 3, 2, 0x82 + 3, 0xAC + 3, 0xF0 + 3, 0x9F + 3, 15043,
                                     0xF0 + 3, 0x9F + 3, 0x98 + 3, 0};
    static const int32_t spaces[] = {29871, 29871, 259, 1, 15043, 0xE2 + 3};
    check_stream_prefixes(emoji, N(emoji));
    check_stream_prefixes(cjk, N(cjk));
    check_stream_prefixes(broken, N(broken));
    check_stream_prefixes(spaces, N(spaces));
    /* a chunk never ends inside the emoji: nothing comes out until it is whole */
    qerr e = {0};
    tok_stream *s = tok_stream_new(g_tok, 0, &e);
    const char *c;
    size_t l;
    static const int32_t ids[] = {243, 162, 155, 131};
    for (size_t i = 0; i < 3; i++) {
        ck_assert_int_eq(tok_stream_push(s, ids[i], &c, &l, &e), QRUN_OK);
        ck_assert_uint_eq(l, 0);
    }
    ck_assert_int_eq(tok_stream_push(s, ids[3], &c, &l, &e), QRUN_OK);
    ck_assert_uint_eq(l, 4);
    ck_assert(memcmp(c, "\xF0\x9F\x98\x80", 4) == 0);
    /* a held-back incomplete tail becomes U+FFFD per byte at the flush */
    ck_assert_int_eq(tok_stream_push(s, 0xE2 + 3, &c, &l, &e), QRUN_OK);
    ck_assert_uint_eq(l, 0);
    ck_assert_int_eq(tok_stream_push(s, 0x82 + 3, &c, &l, &e), QRUN_OK);
    ck_assert_uint_eq(l, 0);
    ck_assert_int_eq(tok_stream_flush(s, &c, &l, &e), QRUN_OK);
    ck_assert_str_eq(c, "\xEF\xBF\xBD\xEF\xBF\xBD");
    tok_stream_free(s);
}
END_TEST

START_TEST(test_stream_random) {
    uint64_t seed = tu_seed();
    tu_rng r = {seed};
    static const int32_t bytes_of_interest[] = {0xF0, 0x9F, 0x98, 0x80, 0xE2, 0x82, 0xAC, 0xED,
                                                0xA0, 0xC0, 0xC3, 0xA9, 0xF4, 0x90, 0x8F, 0xBF};
    for (int iter = 0; iter < 300; iter++) {
        int32_t ids[24];
        size_t n = (size_t)(tu_next(&r) % 24);
        for (size_t i = 0; i < n; i++) {
            double u = tu_uniform(&r);
            if (u < 0.35)
                ids[i] = (int32_t)(3 + tu_next(&r) % 256); /* any byte piece */
            else if (u < 0.55)
                ids[i] = bytes_of_interest[tu_next(&r) % N(bytes_of_interest)] + 3;
            else if (u < 0.65)
                ids[i] = (int32_t)(tu_next(&r) % 3); /* unk, bos, eos */
            else if (u < 0.7)
                ids[i] = (tu_next(&r) & 1) ? 29871 : 259;
            else
                ids[i] = (int32_t)(tu_next(&r) % 32000);
        }
        check_stream(ids, n, 0);
        check_stream(ids, n, TOK_SKIP_SPECIAL);
        if (iter < 20) check_stream_prefixes(ids, n);
    }
    /* and the encodings of texts with emoji and CJK, id by id */
    static const char *texts[] = {
        "\xF0\x9F\x98\x80\xF0\x9F\x8E\x89 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\xA7\xAC x",
        "caf\xC3\xA9 \xE2\x82\xAC 5 \xF0\x9F\x87\xBA\xF0\x9F\x87\xB8",
    };
    for (size_t i = 0; i < N(texts); i++) {
        int32_t *ids;
        size_t n;
        qerr e = {0};
        ck_assert_int_eq(tok_encode(g_tok, texts[i], strlen(texts[i]), TOK_ADD_SPECIAL, &ids, &n, &e),
                         QRUN_OK);
        check_stream_prefixes(ids, n);
        free(ids);
    }
}
END_TEST

/* ---- malformed models ---------------------------------------------------------- */

/* Loading must fail cleanly or give a tokenizer that works. */
static void try_load(const void *data, size_t size) {
    qerr e = {0};
    tok_tokenizer *t = tok_load(TOK_SENTENCEPIECE, data, size, &e);
    if (!t) {
        ck_assert_msg(e.code != QRUN_OK && e.msg[0], "NULL without an error message");
        return;
    }
    int32_t *ids;
    size_t n, len;
    static const char text[] = "Hello <s> w\xC3\xB6rld \xF0\x9F\x98\x80 12";
    if (tok_encode(t, text, sizeof text - 1, TOK_ADD_SPECIAL | TOK_PARSE_SPECIAL, &ids, &n, &e) ==
        QRUN_OK) {
        char *s;
        if (tok_decode(t, ids, n, 0, &s, &len, &e) == QRUN_OK) free(s);
        free(ids);
    }
    int32_t some[] = {0, 1, 2, 3, 100, tok_vocab_size(t) - 1};
    char *s;
    if (tok_decode(t, some, N(some), 0, &s, &len, &e) == QRUN_OK) free(s);
    tok_free(t);
}

START_TEST(test_malformed_empty_and_random) {
    qerr e = {0};
    ck_assert_ptr_null(tok_load(TOK_SENTENCEPIECE, "", 0, &e));
    ck_assert_int_eq(e.code, QRUN_ERR_FORMAT);
    ck_assert_msg(strstr(e.msg, "SentencePiece") != NULL, "%s", e.msg);
    ck_assert_ptr_null(tok_load(TOK_SENTENCEPIECE, NULL, 0, &e));
    ck_assert_ptr_null(tok_load(TOK_SENTENCEPIECE, NULL, 10, &e));
    ck_assert_int_eq(e.code, QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(tok_load((tok_kind)7, g_model, g_model_size, &e));
    ck_assert_int_eq(e.code, QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(tok_load(TOK_SENTENCEPIECE, "not a model at all", 18, &e));
    ck_assert(e.msg[0]);
    tu_rng r = {tu_seed()};
    unsigned char buf[4096];
    for (int i = 0; i < 300; i++) {
        size_t n = 1 + (size_t)(tu_next(&r) % sizeof buf);
        for (size_t k = 0; k < n; k++) buf[k] = (unsigned char)tu_next(&r);
        try_load(buf, n);
    }
}
END_TEST

START_TEST(test_malformed_truncated) {
    /* short prefixes byte by byte, then lengths spread over the file */
    for (size_t n = 0; n < 300; n++) {
        qerr e = {0};
        tok_tokenizer *t = tok_load(TOK_SENTENCEPIECE, g_model, n, &e);
        ck_assert_msg(t == NULL, "a %zu-byte prefix loaded", n);
        ck_assert(e.msg[0]);
    }
    tu_rng r = {tu_seed()};
    for (int i = 0; i < 60; i++) {
        size_t n = 300 + (size_t)(tu_next(&r) % (g_model_size - 300));
        try_load(g_model, n);
    }
    try_load(g_model, g_model_size - 1);
}
END_TEST

START_TEST(test_malformed_mangled) {
    tu_rng r = {tu_seed()};
    unsigned char *m = malloc(g_model_size);
    for (int i = 0; i < 60; i++) {
        memcpy(m, g_model, g_model_size);
        int flips = 1 + (int)(tu_next(&r) % 8);
        for (int k = 0; k < flips; k++) {
            size_t at;
            /* half of the flips in the specs at the end of the file */
            if (tu_next(&r) & 1)
                at = g_model_size - 1 - (size_t)(tu_next(&r) % 600);
            else
                at = (size_t)(tu_next(&r) % g_model_size);
            m[at] = (unsigned char)tu_next(&r);
        }
        try_load(m, g_model_size);
    }
    free(m);
}
END_TEST

/* A precompiled normalization trie pointing outside itself is refused
 * (libsentencepiece would read out of bounds). */
START_TEST(test_malformed_charsmap) {
    /* NormalizerSpec { name: "x", precompiled_charsmap: <bad> } appended
     * as a second normalizer_spec field: protobuf merges it. */
    unsigned char charsmap[4 + 1024 + 2];
    memset(charsmap, 0, sizeof charsmap);
    charsmap[0] = 0x00; /* trie size 1024 = 256 units */
    charsmap[1] = 0x04;
    /* unit 0: offset 0x3FFFFF << 10 */
    charsmap[4] = 0x00;
    charsmap[5] = 0xFC;
    charsmap[6] = 0xFF;
    charsmap[7] = 0x7F;
    unsigned char spec[3 + 4 + sizeof charsmap];
    size_t k = 0;
    spec[k++] = 0x12; /* field 2, length-delimited */
    spec[k++] = (unsigned char)(0x80 | (sizeof charsmap & 0x7F));
    spec[k++] = (unsigned char)(sizeof charsmap >> 7);
    memcpy(spec + k, charsmap, sizeof charsmap);
    k += sizeof charsmap;
    size_t total = g_model_size + 4 + k;
    unsigned char *m = malloc(total);
    memcpy(m, g_model, g_model_size);
    size_t p = g_model_size;
    m[p++] = 0x1A; /* ModelProto field 3 */
    m[p++] = (unsigned char)(0x80 | (k & 0x7F));
    m[p++] = (unsigned char)(k >> 7);
    memcpy(m + p, spec, k);
    p += k;
    qerr e = {0};
    ck_assert_ptr_null(tok_load(TOK_SENTENCEPIECE, m, p, &e));
    ck_assert_msg(strstr(e.msg, "precompiled_charsmap") != NULL, "%s", e.msg);
    free(m);
}
END_TEST

Suite *tokenizer_suite(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("spm");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_load_and_vocab);
    tcase_add_test(tc, test_load_copies_bytes);
    tcase_add_test(tc, test_encode_known);
    tcase_add_test(tc, test_encode_add_bos);
    tcase_add_test(tc, test_encode_parse_special);
    tcase_add_test(tc, test_added_token_flags);
    tcase_add_test(tc, test_encode_invalid_utf8);
    tcase_add_test(tc, test_utf8_valid_prefix);
    tcase_add_test(tc, test_decode_known);
    tcase_add_test(tc, test_decode_roundtrip);
    tcase_add_test(tc, test_decode_out_of_range);
    tcase_add_test(tc, test_stream_known);
    tcase_add_test(tc, test_stream_random);
    tcase_add_test(tc, test_malformed_empty_and_random);
    tcase_add_test(tc, test_malformed_truncated);
    tcase_add_test(tc, test_malformed_mangled);
    tcase_add_test(tc, test_malformed_charsmap);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(tokenizer_suite()); }
