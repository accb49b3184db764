/* Token ids and decodes against the reference libraries (Python sentencepiece
 * and tokenizers), from the fixtures tools/make_tokenizer_fixtures.py wrote
 * into tests/data/tokenizer/<name>.expected.json; see that script for what
 * each recorded field means. Also: truncated, bit-flipped and semantically
 * broken tokenizer files must be refused with a message, or load and then
 * never crash (Check runs each test in its own process). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "testutil.h"
#include "tokenizer.h"

static const char *const FIXTURES[] = {"llama2-spm", "smollm2", "falcon-style", "llama3-style",
                                       "gpt2-tiny"};
#define NFIX ((int)(sizeof FIXTURES / sizeof FIXTURES[0]))

/* Mismatches printed per test before only counting. */
#define MAX_REPORTS 12

/* ------------------------------------------------------------------------- */
/* fixture loading */

typedef struct bstr {
    char *p;
    size_t n;
} bstr;
typedef struct idv {
    int32_t *v;
    size_t n;
} idv;
typedef struct slice {
    size_t a, b;
    bstr text;
} slice;
typedef struct refcase {
    bstr text;
    idv ids, ids_add, ids_parse, ids_parse_add;
    bstr decode_plain, decode, decode_skip;
    slice *slices;
    size_t nslices;
} refcase;
typedef struct fixture {
    const char *name;
    char *tok_rel;
    tok_kind kind;
    cJSON *root; /* kept for "meta" */
    refcase *cases;
    size_t ncases;
} fixture;

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* A string value: a JSON string, or {"hex": "..."} for text holding NUL. */
static bstr get_bstr(const cJSON *v, const char *what)
{
    bstr r = {0};
    if (cJSON_IsString(v)) {
        r.n = strlen(v->valuestring);
        r.p = malloc(r.n + 1);
        ck_assert(r.p);
        memcpy(r.p, v->valuestring, r.n + 1);
        return r;
    }
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(v, "hex");
    ck_assert_msg(cJSON_IsString(h), "fixture: %s is neither a string nor {\"hex\"}", what);
    size_t hn = strlen(h->valuestring);
    ck_assert_msg(hn % 2 == 0, "fixture: odd hex length in %s", what);
    r.n = hn / 2;
    r.p = malloc(r.n + 1);
    ck_assert(r.p);
    for (size_t i = 0; i < r.n; i++) {
        int hi = hexval(h->valuestring[2 * i]), lo = hexval(h->valuestring[2 * i + 1]);
        ck_assert_msg(hi >= 0 && lo >= 0, "fixture: bad hex in %s", what);
        r.p[i] = (char)(hi * 16 + lo);
    }
    r.p[r.n] = 0;
    return r;
}

static bstr dup_bstr(bstr s)
{
    bstr r = {malloc(s.n + 1), s.n};
    ck_assert(r.p);
    memcpy(r.p, s.p, s.n);
    r.p[s.n] = 0;
    return r;
}

static idv get_ids(const cJSON *v, const char *what)
{
    idv r = {0};
    ck_assert_msg(cJSON_IsArray(v), "fixture: %s is not an array", what);
    int n = cJSON_GetArraySize(v);
    r.n = (size_t)n;
    r.v = malloc(sizeof(int32_t) * (r.n ? r.n : 1));
    ck_assert(r.v);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        ck_assert_msg(cJSON_IsNumber(e), "fixture: non-number in %s", what);
        r.v[i++] = (int32_t)e->valuedouble;
    }
    return r;
}

static idv dup_ids(idv s)
{
    idv r = {malloc(sizeof(int32_t) * (s.n ? s.n : 1)), s.n};
    ck_assert(r.v);
    if (s.n)
        memcpy(r.v, s.v, sizeof(int32_t) * s.n);
    return r;
}

/* Field `key` of case `c`, or NULL when left out (then it equals its default). */
static const cJSON *field(const cJSON *c, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(c, key);
}

static fixture *fixture_load(int i)
{
    char rel[256];
    snprintf(rel, sizeof rel, "tokenizer/%s.expected.json", FIXTURES[i]);
    size_t size = 0;
    unsigned char *data = tu_read_file(tu_data_path(rel), &size);
    ck_assert_msg(data, "cannot read %s (run tools/make_tokenizer_fixtures.py)", rel);
    cJSON *root = cJSON_ParseWithLength((const char *)data, size);
    free(data);
    ck_assert_msg(root, "%s: not JSON", rel);

    fixture *f = calloc(1, sizeof *f);
    ck_assert(f);
    f->name = FIXTURES[i];
    f->root = root;
    const cJSON *tk = cJSON_GetObjectItemCaseSensitive(root, "tokenizer");
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(root, "kind");
    ck_assert(cJSON_IsString(tk) && cJSON_IsString(kind));
    f->tok_rel = strdup(tk->valuestring);
    int k = tok_kind_from_name(kind->valuestring);
    ck_assert_msg(k >= 0, "tok_kind_from_name(\"%s\") = %d", kind->valuestring, k);
    f->kind = (tok_kind)k;

    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    ck_assert(cJSON_IsArray(cases));
    f->ncases = (size_t)cJSON_GetArraySize(cases);
    f->cases = calloc(f->ncases ? f->ncases : 1, sizeof *f->cases);
    ck_assert(f->cases);
    size_t j = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        refcase *r = &f->cases[j++];
        const cJSON *v;
        r->text = get_bstr(field(c, "text"), "text");
        r->ids = get_ids(field(c, "ids"), "ids");
        r->ids_add = (v = field(c, "ids_add")) ? get_ids(v, "ids_add") : dup_ids(r->ids);
        r->ids_parse = (v = field(c, "ids_parse")) ? get_ids(v, "ids_parse") : dup_ids(r->ids);
        r->ids_parse_add = (v = field(c, "ids_parse_add")) ? get_ids(v, "ids_parse_add")
                                                           : dup_ids(r->ids_add);
        r->decode_plain = (v = field(c, "decode_plain")) ? get_bstr(v, "decode_plain")
                                                         : dup_bstr(r->text);
        r->decode = (v = field(c, "decode")) ? get_bstr(v, "decode") : dup_bstr(r->decode_plain);
        r->decode_skip = (v = field(c, "decode_skip")) ? get_bstr(v, "decode_skip")
                                                       : dup_bstr(r->decode);
        const cJSON *sl = field(c, "slices");
        if (sl) {
            ck_assert(cJSON_IsArray(sl));
            r->nslices = (size_t)cJSON_GetArraySize(sl);
            r->slices = calloc(r->nslices, sizeof *r->slices);
            ck_assert(r->slices);
            size_t m = 0;
            const cJSON *s;
            cJSON_ArrayForEach(s, sl)
            {
                ck_assert(cJSON_IsArray(s) && cJSON_GetArraySize(s) == 3);
                r->slices[m].a = (size_t)cJSON_GetArrayItem(s, 0)->valuedouble;
                r->slices[m].b = (size_t)cJSON_GetArrayItem(s, 1)->valuedouble;
                r->slices[m].text = get_bstr(cJSON_GetArrayItem(s, 2), "slice");
                ck_assert(r->slices[m].a <= r->slices[m].b &&
                          r->slices[m].b <= r->ids_parse_add.n);
                m++;
            }
        }
    }
    return f;
}

static void fixture_free(fixture *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->ncases; i++) {
        refcase *r = &f->cases[i];
        free(r->text.p);
        free(r->ids.v);
        free(r->ids_add.v);
        free(r->ids_parse.v);
        free(r->ids_parse_add.v);
        free(r->decode_plain.p);
        free(r->decode.p);
        free(r->decode_skip.p);
        for (size_t m = 0; m < r->nslices; m++)
            free(r->slices[m].text.p);
        free(r->slices);
    }
    free(f->cases);
    free(f->tok_rel);
    cJSON_Delete(f->root);
    free(f);
}

static tok_tokenizer *load_tok(const fixture *f)
{
    size_t size = 0;
    unsigned char *data = tu_read_file(tu_data_path(f->tok_rel), &size);
    ck_assert_msg(data, "cannot read %s", f->tok_rel);
    qerr err = {0};
    tok_tokenizer *t = tok_load(f->kind, data, size, &err);
    free(data);
    ck_assert_msg(t, "%s: tok_load(%s) failed: %s", f->name, f->tok_rel, err.msg);
    ck_assert_int_eq(tok_get_kind(t), f->kind);
    return t;
}

/* ------------------------------------------------------------------------- */
/* reporting */

/* Printable, escaped and shortened copy of some bytes (static buffers). */
static const char *show(const char *p, size_t n)
{
    static char bufs[4][400];
    static int slot;
    char *b = bufs[slot++ & 3];
    size_t o = 0;
    for (size_t i = 0; i < n && o < sizeof bufs[0] - 12; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\n')
            o += (size_t)sprintf(b + o, "\\n");
        else if (c == '\r')
            o += (size_t)sprintf(b + o, "\\r");
        else if (c == '\t')
            o += (size_t)sprintf(b + o, "\\t");
        else if (c == '"' || c == '\\')
            o += (size_t)sprintf(b + o, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            o += (size_t)sprintf(b + o, "\\x%02x", c);
        else
            b[o++] = (char)c;
        if (o > 160 && i + 1 < n) {
            o += (size_t)sprintf(b + o, "...(%zu bytes)", n);
            break;
        }
    }
    b[o] = 0;
    return b;
}

/* ids[from .. from+8) as text. */
static const char *show_ids(const int32_t *v, size_t n, size_t from)
{
    static char bufs[4][200];
    static int slot;
    char *b = bufs[slot++ & 3];
    size_t o = 0;
    size_t start = from > 2 ? from - 2 : 0;
    o += (size_t)sprintf(b + o, "%s[", start ? "..." : "");
    for (size_t i = start; i < n && i < start + 8; i++)
        o += (size_t)sprintf(b + o, "%s%s%d", i > start ? "," : "", i == from ? "*" : "", v[i]);
    sprintf(b + o, "]%s (n=%zu)", start + 8 < n ? "..." : "", n);
    return b;
}

typedef struct report {
    const char *fixture;
    const char *test;
    int failures;
    char first[1200];
} report;

static void report_fail(report *r, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void report_fail(report *r, const char *fmt, ...)
{
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (r->failures == 0)
        snprintf(r->first, sizeof r->first, "%s", msg);
    if (r->failures < MAX_REPORTS)
        fprintf(stderr, "[%s %s] %s\n", r->fixture, r->test, msg);
    r->failures++;
}

static void report_finish(const report *r, size_t checks)
{
    if (r->failures > MAX_REPORTS)
        fprintf(stderr, "[%s %s] ... %d mismatches in all\n", r->fixture, r->test, r->failures);
    ck_assert_msg(r->failures == 0, "%s %s: %d of %zu checks differ from the reference; first: %s",
                  r->fixture, r->test, r->failures, checks, r->first);
}

/* Compare ids; on a difference report the first differing position. */
static void cmp_ids(report *r, const refcase *c, const char *variant, const int32_t *got,
                    size_t ngot, const idv *want)
{
    size_t n = ngot < want->n ? ngot : want->n;
    size_t pos = 0;
    while (pos < n && got[pos] == want->v[pos])
        pos++;
    if (pos == n && ngot == want->n)
        return;
    report_fail(r, "%s: text \"%s\": first difference at position %zu: ours %s, expected %s",
                variant, show(c->text.p, c->text.n), pos, show_ids(got, ngot, pos),
                show_ids(want->v, want->n, pos));
}

static void cmp_text(report *r, const refcase *c, const char *what, const char *got, size_t ngot,
                     const bstr *want)
{
    if (ngot == want->n && memcmp(got, want->p, ngot) == 0)
        return;
    size_t pos = 0;
    while (pos < ngot && pos < want->n && got[pos] == want->p[pos])
        pos++;
    report_fail(r, "%s: text \"%s\": byte %zu differs: ours \"%s\", expected \"%s\"", what,
                show(c->text.p, c->text.n), pos, show(got, ngot), show(want->p, want->n));
}

/* ------------------------------------------------------------------------- */
/* reference tests */

START_TEST(ref_encode)
{
    fixture *f = fixture_load(_i);
    tok_tokenizer *t = load_tok(f);
    report r = {f->name, "encode", 0, {0}};
    static const struct {
        const char *name;
        unsigned flags;
    } variants[] = {{"ids (flags 0)", 0},
                    {"ids_add (TOK_ADD_SPECIAL)", TOK_ADD_SPECIAL},
                    {"ids_parse (TOK_PARSE_SPECIAL)", TOK_PARSE_SPECIAL},
                    {"ids_parse_add (TOK_PARSE_SPECIAL|TOK_ADD_SPECIAL)",
                     TOK_PARSE_SPECIAL | TOK_ADD_SPECIAL}};
    size_t checks = 0;
    for (size_t i = 0; i < f->ncases; i++) {
        const refcase *c = &f->cases[i];
        const idv *want[4] = {&c->ids, &c->ids_add, &c->ids_parse, &c->ids_parse_add};
        for (int v = 0; v < 4; v++) {
            int32_t *ids = NULL;
            size_t n = 0;
            qerr err = {0};
            qrun_status st = tok_encode(t, c->text.p, c->text.n, variants[v].flags, &ids, &n, &err);
            checks++;
            if (st != QRUN_OK) {
                report_fail(&r, "%s: text \"%s\": tok_encode failed (%d): %s", variants[v].name,
                            show(c->text.p, c->text.n), (int)st, err.msg);
                continue;
            }
            cmp_ids(&r, c, variants[v].name, ids, n, want[v]);
            free(ids);
        }
    }
    tok_free(t);
    fixture_free(f);
    report_finish(&r, checks);
}
END_TEST

static qrun_status decode_ids(const tok_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                              char **text, size_t *len, qerr *err)
{
    *text = NULL;
    *len = 0;
    qrun_status st = tok_decode(t, ids, n, flags, text, len, err);
    if (st == QRUN_OK)
        ck_assert_msg(*text && (*text)[*len] == 0, "tok_decode: result not NUL-terminated");
    return st;
}

static void check_decode(report *r, const tok_tokenizer *t, const refcase *c, const char *what,
                         const int32_t *ids, size_t n, unsigned flags, const bstr *want,
                         size_t *checks)
{
    char *text = NULL;
    size_t len = 0;
    qerr err = {0};
    (*checks)++;
    qrun_status st = decode_ids(t, ids, n, flags, &text, &len, &err);
    if (st != QRUN_OK) {
        report_fail(r, "%s: text \"%s\": tok_decode failed (%d): %s", what,
                    show(c->text.p, c->text.n), (int)st, err.msg);
        return;
    }
    cmp_text(r, c, what, text, len, want);
    free(text);
}

START_TEST(ref_decode)
{
    fixture *f = fixture_load(_i);
    tok_tokenizer *t = load_tok(f);
    report r = {f->name, "decode", 0, {0}};
    size_t checks = 0;
    for (size_t i = 0; i < f->ncases; i++) {
        const refcase *c = &f->cases[i];
        /* reference ids -> reference text */
        check_decode(&r, t, c, "decode_plain (decode of ids)", c->ids.v, c->ids.n, 0,
                     &c->decode_plain, &checks);
        check_decode(&r, t, c, "decode (ids_parse_add, flags 0)", c->ids_parse_add.v,
                     c->ids_parse_add.n, 0, &c->decode, &checks);
        check_decode(&r, t, c, "decode_skip (ids_parse_add, TOK_SKIP_SPECIAL)",
                     c->ids_parse_add.v, c->ids_parse_add.n, TOK_SKIP_SPECIAL, &c->decode_skip,
                     &checks);
        for (size_t m = 0; m < c->nslices; m++) {
            char what[96];
            snprintf(what, sizeof what, "slice [%zu:%zu] of ids_parse_add (U+FFFD)",
                     c->slices[m].a, c->slices[m].b);
            check_decode(&r, t, c, what, c->ids_parse_add.v + c->slices[m].a,
                         c->slices[m].b - c->slices[m].a, 0, &c->slices[m].text, &checks);
        }
        /* our ids -> reference text: decode(encode(x)) */
        int32_t *ids = NULL;
        size_t n = 0;
        qerr err = {0};
        if (tok_encode(t, c->text.p, c->text.n, 0, &ids, &n, &err) == QRUN_OK) {
            check_decode(&r, t, c, "decode(encode(text, 0))", ids, n, 0, &c->decode_plain,
                         &checks);
            free(ids);
        } else {
            report_fail(&r, "text \"%s\": tok_encode failed: %s", show(c->text.p, c->text.n),
                        err.msg);
        }
        ids = NULL;
        if (tok_encode(t, c->text.p, c->text.n, TOK_PARSE_SPECIAL | TOK_ADD_SPECIAL, &ids, &n,
                       &err) == QRUN_OK) {
            check_decode(&r, t, c, "decode(encode(text, PARSE|ADD), SKIP)", ids, n,
                         TOK_SKIP_SPECIAL, &c->decode_skip, &checks);
            free(ids);
        } else {
            report_fail(&r, "text \"%s\": tok_encode(PARSE|ADD) failed: %s",
                        show(c->text.p, c->text.n), err.msg);
        }
    }
    tok_free(t);
    fixture_free(f);
    report_finish(&r, checks);
}
END_TEST

/* Push ids one at a time; the chunks (each valid UTF-8) joined with the flush
 * must equal tok_decode of all ids and the reference text. */
static void check_stream(report *r, const tok_tokenizer *t, const refcase *c, const char *what,
                         const int32_t *ids, size_t n, unsigned flags, const bstr *want,
                         size_t *checks)
{
    (*checks)++;
    qerr err = {0};
    tok_stream *s = tok_stream_new(t, flags, &err);
    if (!s) {
        report_fail(r, "%s: tok_stream_new failed: %s", what, err.msg);
        return;
    }
    size_t cap = 64, len = 0;
    char *all = malloc(cap);
    ck_assert(all);
    bool ok = true;
    for (size_t i = 0; i <= n && ok; i++) {
        const char *chunk = NULL;
        size_t cl = 0;
        qrun_status st = i < n ? tok_stream_push(s, ids[i], &chunk, &cl, &err)
                               : tok_stream_flush(s, &chunk, &cl, &err);
        if (st != QRUN_OK) {
            report_fail(r, "%s: text \"%s\": tok_stream_%s failed at id %zu: %s", what,
                        show(c->text.p, c->text.n), i < n ? "push" : "flush", i, err.msg);
            ok = false;
            break;
        }
        if (cl && !chunk) {
            report_fail(r, "%s: NULL chunk with length %zu", what, cl);
            ok = false;
            break;
        }
        if (cl && tok_utf8_valid_prefix(chunk, cl) != cl) {
            report_fail(r, "%s: text \"%s\": chunk after id %zu (\"%s\") is not valid UTF-8",
                        what, show(c->text.p, c->text.n), i, show(chunk, cl));
            ok = false;
        }
        while (len + cl + 1 > cap) {
            cap *= 2;
            all = realloc(all, cap);
            ck_assert(all);
        }
        if (cl)
            memcpy(all + len, chunk, cl);
        len += cl;
    }
    tok_stream_free(s);
    if (ok) {
        char *dec = NULL;
        size_t dl = 0;
        if (decode_ids(t, ids, n, flags, &dec, &dl, &err) == QRUN_OK) {
            if (dl != len || memcmp(dec, all, len) != 0)
                report_fail(r, "%s: text \"%s\": stream \"%s\" != tok_decode \"%s\"", what,
                            show(c->text.p, c->text.n), show(all, len), show(dec, dl));
            free(dec);
        }
        cmp_text(r, c, what, all, len, want);
    }
    free(all);
}

START_TEST(ref_stream)
{
    fixture *f = fixture_load(_i);
    tok_tokenizer *t = load_tok(f);
    report r = {f->name, "stream", 0, {0}};
    size_t checks = 0;
    for (size_t i = 0; i < f->ncases; i++) {
        const refcase *c = &f->cases[i];
        check_stream(&r, t, c, "stream(ids)", c->ids.v, c->ids.n, 0, &c->decode_plain, &checks);
        check_stream(&r, t, c, "stream(ids_parse_add)", c->ids_parse_add.v, c->ids_parse_add.n,
                     0, &c->decode, &checks);
        check_stream(&r, t, c, "stream(ids_parse_add, SKIP)", c->ids_parse_add.v,
                     c->ids_parse_add.n, TOK_SKIP_SPECIAL, &c->decode_skip, &checks);
        for (size_t m = 0; m < c->nslices; m++)
            check_stream(&r, t, c, "stream(slice)", c->ids_parse_add.v + c->slices[m].a,
                         c->slices[m].b - c->slices[m].a, 0, &c->slices[m].text, &checks);
    }
    tok_free(t);
    fixture_free(f);
    report_finish(&r, checks);
}
END_TEST

/* Special tokens and pieces agree with the fixture's meta. */
START_TEST(ref_specials)
{
    fixture *f = fixture_load(_i);
    tok_tokenizer *t = load_tok(f);
    report r = {f->name, "specials", 0, {0}};
    size_t checks = 0;
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(f->root, "meta");
    int32_t nv = tok_vocab_size(t);
    tok_special sp = tok_get_special(t);
    if (f->kind == TOK_SENTENCEPIECE) {
        int bos = cJSON_GetObjectItemCaseSensitive(meta, "bos")->valueint;
        int eos = cJSON_GetObjectItemCaseSensitive(meta, "eos")->valueint;
        int unk = cJSON_GetObjectItemCaseSensitive(meta, "unk")->valueint;
        checks += 4;
        if (sp.bos != bos || sp.eos != eos || sp.unk != unk)
            report_fail(&r, "special ids bos %d eos %d unk %d, expected %d %d %d", sp.bos,
                        sp.eos, sp.unk, bos, eos, unk);
        if (!tok_is_special(t, bos) || !tok_is_special(t, eos))
            report_fail(&r, "bos/eos not tok_is_special");
        const cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(meta, "special_texts"))
        {
            checks++;
            int32_t id = tok_piece_to_id(t, s->valuestring);
            if (id < 0)
                report_fail(&r, "tok_piece_to_id(\"%s\") = %d", s->valuestring, id);
        }
    } else {
        const cJSON *a;
        cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(meta, "added_tokens"))
        {
            int id = cJSON_GetArrayItem(a, 0)->valueint;
            const char *content = cJSON_GetArrayItem(a, 1)->valuestring;
            bool special = cJSON_IsTrue(cJSON_GetArrayItem(a, 2));
            checks++;
            if (id >= nv)
                report_fail(&r, "added token %d \"%s\" >= tok_vocab_size %d", id, content, nv);
            if (tok_piece_to_id(t, content) != id)
                report_fail(&r, "tok_piece_to_id(\"%s\") = %d, expected %d", content,
                            tok_piece_to_id(t, content), id);
            const char *p = tok_id_to_piece(t, id);
            if (!p || strcmp(p, content) != 0)
                report_fail(&r, "tok_id_to_piece(%d) = \"%s\", expected \"%s\"", id,
                            p ? p : "(null)", content);
            if (tok_is_special(t, id) != special)
                report_fail(&r, "tok_is_special(%d \"%s\") = %d, expected %d", id, content,
                            tok_is_special(t, id), special);
        }
    }
    /* every id's piece maps back to the id (ids are unique pieces) */
    for (int32_t id = 0; id < nv; id++) {
        const char *p = tok_id_to_piece(t, id);
        checks++;
        if (!p) {
            report_fail(&r, "tok_id_to_piece(%d) = NULL below tok_vocab_size %d", id, nv);
            continue;
        }
        int32_t back = tok_piece_to_id(t, p);
        if (back != id)
            report_fail(&r, "tok_piece_to_id(tok_id_to_piece(%d) = \"%s\") = %d", id,
                        show(p, strlen(p)), back);
    }
    ck_assert_ptr_null(tok_id_to_piece(t, nv));
    ck_assert_ptr_null(tok_id_to_piece(t, -1));
    ck_assert_int_eq(tok_piece_to_id(t, "this piece is not in any vocabulary \x01"), -1);
    /* an id out of range is an error, in decode and in streams */
    int32_t bad[2] = {0, nv};
    char *text = NULL;
    size_t len = 0;
    qerr err = {0};
    ck_assert_int_ne(tok_decode(t, bad, 2, 0, &text, &len, &err), QRUN_OK);
    ck_assert_msg(err.msg[0], "no message for an out-of-range id");
    bad[1] = -1;
    ck_assert_int_ne(tok_decode(t, bad, 2, 0, &text, &len, &err), QRUN_OK);
    tok_stream *s = tok_stream_new(t, 0, &err);
    ck_assert(s);
    const char *chunk;
    size_t cl;
    ck_assert_int_ne(tok_stream_push(s, nv, &chunk, &cl, &err), QRUN_OK);
    tok_stream_free(s);
    tok_free(t);
    fixture_free(f);
    report_finish(&r, checks);
}
END_TEST

/* Invalid UTF-8 input is refused with QRUN_ERR_INVALID_ARGUMENT. */
START_TEST(ref_invalid_utf8)
{
    fixture *f = fixture_load(_i);
    tok_tokenizer *t = load_tok(f);
    static const char *const bad[] = {
        "\xff", "abc\x80", "\xc3", "x\xc3(", "\xe2\x82", "\xf0\x9f\x98", "\xc0\xaf",
        "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf8\x88\x80\x80\x80", "ok \xfe ok",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (unsigned flags = 0; flags < 4; flags++) {
            int32_t *ids = NULL;
            size_t n = 0;
            qerr err = {0};
            qrun_status st = tok_encode(t, bad[i], strlen(bad[i]), flags, &ids, &n, &err);
            ck_assert_msg(st == QRUN_ERR_INVALID_ARGUMENT,
                          "%s: tok_encode(\"%s\", %u) = %d, expected QRUN_ERR_INVALID_ARGUMENT",
                          f->name, show(bad[i], strlen(bad[i])), flags, (int)st);
            ck_assert_msg(err.msg[0], "%s: no message for invalid UTF-8", f->name);
            if (st == QRUN_OK)
                free(ids);
        }
    }
    /* an embedded NUL is valid UTF-8 (the corpus has one); length, not strlen, rules */
    int32_t *ids = NULL;
    size_t n = 0;
    qerr err = {0};
    ck_assert_int_eq(tok_encode(t, "a\0b", 3, 0, &ids, &n, &err), QRUN_OK);
    ck_assert_uint_ge(n, 2);
    free(ids);
    tok_free(t);
    fixture_free(f);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* malformed tokenizer files */

static const char *const PROBES[] = {
    "", " ", "Hello world", "<s>Hello</s> <|endoftext|> >>TITLE<< <|begin_of_text|>",
    "1234567890 3.14159", "  \t\n\r\n  x  ", "你好，世界！ こんにちは 안녕하세요",
    "👨‍👩‍👧‍👦 🇺🇸 e\xcc\x81", "def f(x):\n    return x\n", "don't I'M they'll",
};

/* A tokenizer that loaded from broken bytes must still behave: encode,
 * decode and stream must not crash, and results must be in range. */
static void exercise(tok_tokenizer *t, const char *what)
{
    int32_t nv = tok_vocab_size(t);
    for (size_t p = 0; p < sizeof PROBES / sizeof PROBES[0]; p++) {
        for (unsigned flags = 0; flags < 4; flags++) {
            int32_t *ids = NULL;
            size_t n = 0;
            qerr err = {0};
            qrun_status st = tok_encode(t, PROBES[p], strlen(PROBES[p]), flags, &ids, &n, &err);
            if (st != QRUN_OK) {
                ck_assert_msg(err.msg[0], "%s: tok_encode failed without a message", what);
                continue;
            }
            for (size_t i = 0; i < n; i++)
                ck_assert_msg(ids[i] >= 0 && ids[i] < nv, "%s: id %d out of [0, %d)", what,
                              ids[i], nv);
            for (unsigned df = 0; df < 2; df++) {
                char *text = NULL;
                size_t len = 0;
                if (tok_decode(t, ids, n, df, &text, &len, &err) == QRUN_OK)
                    free(text);
                tok_stream *s = tok_stream_new(t, df, &err);
                if (s) {
                    const char *c;
                    size_t cl;
                    for (size_t i = 0; i < n; i++)
                        if (tok_stream_push(s, ids[i], &c, &cl, &err) != QRUN_OK)
                            break;
                    tok_stream_flush(s, &c, &cl, &err);
                    tok_stream_free(s);
                }
            }
            free(ids);
        }
    }
    /* decode every id once (256 at a time; past 70000, only the last few,
     * in case a broken file claims a huge vocabulary) */
    int32_t buf[256];
    for (int32_t id = 0; id < nv;) {
        size_t n = 0;
        if (id == 70000 && nv > 70256)
            id = nv - 256;
        while (n < 256 && id < nv)
            buf[n++] = id++;
        char *text = NULL;
        size_t len = 0;
        qerr err = {0};
        if (tok_decode(t, buf, n, 0, &text, &len, &err) == QRUN_OK)
            free(text);
    }
    tok_get_special(t);
    tok_id_to_piece(t, 0);
}

/* Load broken bytes: NULL with a message, or a tokenizer that behaves.
 * Returns whether it loaded. */
static bool try_load(tok_kind kind, const unsigned char *data, size_t size, const char *what)
{
    qerr err = {0};
    tok_tokenizer *t = tok_load(kind, data, size, &err);
    if (!t) {
        ck_assert_msg(err.msg[0], "%s: tok_load returned NULL without a message", what);
        return false;
    }
    exercise(t, what);
    tok_free(t);
    return true;
}

/* How many broken copies to try: about 24 MB of loading per test, at least
 * 12 and at most 160 (the SmolLM2 file is 2 MB, the tiny ones 17 kB). */
static size_t n_variants(size_t size)
{
    size_t n = (24u << 20) / (size ? size : 1);
    return n < 12 ? 12 : n > 160 ? 160 : n;
}

START_TEST(malformed_truncated)
{
    fixture *f = fixture_load(_i);
    size_t size = 0;
    unsigned char *data = tu_read_file(tu_data_path(f->tok_rel), &size);
    ck_assert(data);
    size_t nv = n_variants(size);
    tu_rng rng = {tu_seed() ^ (uint64_t)_i};
    char what[160];
    size_t loaded = 0;
    /* lengths: 0..8, a few near the end, the rest spread (with jitter) */
    for (size_t v = 0; v < nv + 12; v++) {
        size_t len;
        if (v < 9)
            len = v;
        else if (v < 12)
            len = size - 1 - (v - 9) * 7 % size;
        else
            len = (size_t)((double)size * ((double)(v - 12) + tu_uniform(&rng)) / (double)nv);
        if (len >= size)
            len = size - 1;
        unsigned char *copy = malloc(len ? len : 1);
        ck_assert(copy);
        memcpy(copy, data, len);
        snprintf(what, sizeof what, "%s truncated to %zu of %zu bytes (seed %llu)", f->tok_rel,
                 len, size, (unsigned long long)tu_seed());
        loaded += try_load(f->kind, copy, len, what);
        free(copy);
    }
    fprintf(stderr, "[%s truncated] %zu of %zu truncated copies loaded\n", f->name, loaded,
            nv + 12);
    /* A truncated tokenizer.json is never valid JSON unless only trailing
     * whitespace went; most truncations must be refused. */
    if (f->kind == TOK_BPE)
        ck_assert_msg(loaded <= 3, "%s: %zu truncated copies loaded", f->tok_rel, loaded);
    free(data);
    fixture_free(f);
}
END_TEST

START_TEST(malformed_flipped)
{
    fixture *f = fixture_load(_i);
    size_t size = 0;
    unsigned char *data = tu_read_file(tu_data_path(f->tok_rel), &size);
    ck_assert(data);
    size_t nv = n_variants(size);
    tu_rng rng = {tu_seed() * 31 + (uint64_t)_i};
    unsigned char *copy = malloc(size);
    ck_assert(copy);
    char what[200];
    size_t loaded = 0;
    for (size_t v = 0; v < nv; v++) {
        memcpy(copy, data, size);
        /* 1, 2, 4 or 8 random bytes: flipped bits, or set to a structural
         * character (JSON) / a small varint byte (protobuf) */
        int nflip = 1 << (v % 4);
        size_t first = 0;
        for (int k = 0; k < nflip; k++) {
            size_t pos = (size_t)(tu_next(&rng) % size);
            if (k == 0)
                first = pos;
            uint64_t r = tu_next(&rng);
            static const char structural[] = "{}[]\",:0-9\\ \x01\x80\xff";
            if (r & 1)
                copy[pos] ^= (unsigned char)(1u << ((r >> 1) % 8));
            else
                copy[pos] = (unsigned char)structural[(r >> 1) % (sizeof structural - 1)];
        }
        snprintf(what, sizeof what, "%s with %d bytes changed (first at %zu; seed %llu, #%zu)",
                 f->tok_rel, nflip, first, (unsigned long long)tu_seed(), v);
        loaded += try_load(f->kind, copy, size, what);
    }
    fprintf(stderr, "[%s flipped] %zu of %zu changed copies loaded\n", f->name, loaded, nv);
    free(copy);
    free(data);
    fixture_free(f);
}
END_TEST

/* tokenizer.json edits that keep the JSON valid but break its meaning. */
typedef enum { MUST_FAIL, MAY_LOAD } expect;

static cJSON *path_get(cJSON *root, const char *a, const char *b)
{
    cJSON *x = cJSON_GetObjectItemCaseSensitive(root, a);
    return b && x ? cJSON_GetObjectItemCaseSensitive(x, b) : x;
}

static void set_item(cJSON *obj, const char *key, cJSON *val)
{
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, val);
    else
        cJSON_AddItemToObject(obj, key, val);
}

/* Apply edit k to a parsed tokenizer.json; returns its description, or NULL
 * when k is past the last edit. */
static const char *edit_json(cJSON *root, int k, expect *ex)
{
    cJSON *model = path_get(root, "model", NULL);
    cJSON *vocab = path_get(root, "model", "vocab");
    cJSON *merges = path_get(root, "model", "merges");
    cJSON *added = path_get(root, "added_tokens", NULL);
    *ex = MAY_LOAD;
    switch (k) {
    case 0:
        *ex = MUST_FAIL;
        set_item(model, "type", cJSON_CreateString("WordPiece"));
        return "model.type WordPiece";
    case 1:
        *ex = MUST_FAIL;
        cJSON_DeleteItemFromObjectCaseSensitive(model, "vocab");
        return "no model.vocab";
    case 2:
        *ex = MUST_FAIL;
        cJSON_DeleteItemFromObjectCaseSensitive(root, "model");
        return "no model";
    case 3:
        cJSON_DeleteItemFromObjectCaseSensitive(model, "merges");
        return "no model.merges";
    case 4:
        *ex = MUST_FAIL;
        set_item(model, "vocab", cJSON_CreateString("vocab"));
        return "model.vocab a string";
    case 5:
        set_item(model, "merges", cJSON_CreateNumber(7));
        *ex = MUST_FAIL;
        return "model.merges a number";
    case 6:
        if (vocab && vocab->child)
            cJSON_SetNumberValue(vocab->child, -5);
        return "a vocab id -5";
    case 7:
        if (vocab && vocab->child)
            cJSON_SetNumberValue(vocab->child, 2147483647.0);
        return "a vocab id 2^31-1";
    case 8:
        if (vocab && vocab->child)
            cJSON_SetNumberValue(vocab->child, 1e300);
        return "a vocab id 1e300";
    case 9:
        if (vocab && vocab->child)
            cJSON_SetNumberValue(vocab->child, 2.5);
        return "a vocab id 2.5";
    case 10:
        if (vocab && vocab->child && vocab->child->next)
            cJSON_SetNumberValue(vocab->child->next, vocab->child->valuedouble);
        return "two vocab entries with the same id";
    case 11:
        if (merges)
            cJSON_AddItemToArray(merges, cJSON_CreateString("notatoken alsonot"));
        return "a merge of unknown tokens";
    case 12:
        if (merges)
            cJSON_InsertItemInArray(merges, 0, cJSON_CreateString("nospace"));
        return "a merge without a space";
    case 13:
        if (merges)
            cJSON_InsertItemInArray(merges, 0, cJSON_CreateNumber(3));
        return "a merge that is a number";
    case 14:
        if (merges)
            cJSON_InsertItemInArray(merges, 0, cJSON_CreateString("a b c"));
        return "a merge of three parts";
    case 15:
        if (added && added->child)
            set_item(added->child, "id", cJSON_CreateNumber(1 << 30));
        return "an added token id 2^30";
    case 16:
        if (added && added->child)
            set_item(added->child, "id", cJSON_CreateNumber(-1));
        return "an added token id -1";
    case 17:
        if (added && added->child)
            set_item(added->child, "content", cJSON_CreateString(""));
        return "an added token with empty content";
    case 18:
        if (added && added->child)
            cJSON_DeleteItemFromObjectCaseSensitive(added->child, "content");
        return "an added token without content";
    case 19:
        set_item(root, "added_tokens", cJSON_CreateString("x"));
        return "added_tokens a string";
    case 20:
        set_item(root, "pre_tokenizer",
                 cJSON_Parse("{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(unclosed\"},"
                             "\"behavior\":\"Isolated\",\"invert\":false}"));
        *ex = MUST_FAIL;
        return "a Split pre-tokenizer with an invalid regex";
    case 21:
        set_item(root, "pre_tokenizer", cJSON_Parse("{\"type\":\"NoSuchPreTokenizer\"}"));
        *ex = MUST_FAIL;
        return "an unknown pre_tokenizer type";
    case 22:
        set_item(root, "normalizer", cJSON_Parse("{\"type\":\"NoSuchNormalizer\"}"));
        *ex = MUST_FAIL;
        return "an unknown normalizer type";
    case 23:
        set_item(root, "decoder", cJSON_Parse("{\"type\":\"NoSuchDecoder\"}"));
        *ex = MUST_FAIL;
        return "an unknown decoder type";
    case 24:
        set_item(root, "post_processor",
                 cJSON_Parse("{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
                             "{\"id\":\"<nope>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\","
                             "\"type_id\":0}}],\"pair\":[],\"special_tokens\":{}}"));
        return "a template naming an unknown special token";
    case 25:
        set_item(root, "post_processor",
                 cJSON_Parse("{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
                             "{\"id\":\"<x>\",\"type_id\":0}}],\"pair\":[],\"special_tokens\":"
                             "{\"<x>\":{\"id\":\"<x>\",\"ids\":[999999999],\"tokens\":[\"<x>\"]}}}"));
        return "a template special token with an id out of range";
    case 26:
        set_item(root, "pre_tokenizer", cJSON_Parse("{\"type\":\"Sequence\",\"pretokenizers\":7}"));
        *ex = MUST_FAIL;
        return "a Sequence pre-tokenizer whose list is a number";
    case 27:
        set_item(model, "byte_fallback", cJSON_CreateTrue());
        return "byte_fallback true";
    case 28:
        set_item(model, "dropout", cJSON_CreateNumber(0.5));
        return "dropout 0.5";
    case 29:
        set_item(model, "vocab", cJSON_CreateObject());
        set_item(model, "merges", cJSON_CreateArray());
        return "an empty vocabulary";
    case 30:
        if (merges && merges->child)
            cJSON_DeleteItemFromArray(merges, 0);
        return "the first merge removed";
    default:
        return NULL;
    }
}

START_TEST(malformed_json_edits)
{
    fixture *f = fixture_load(_i);
    if (f->kind != TOK_BPE) {
        fixture_free(f);
        return;
    }
    size_t size = 0;
    unsigned char *data = tu_read_file(tu_data_path(f->tok_rel), &size);
    ck_assert(data);
    char what[200];
    for (int k = 0;; k++) {
        cJSON *root = cJSON_ParseWithLength((const char *)data, size);
        ck_assert(root);
        expect ex;
        const char *desc = edit_json(root, k, &ex);
        if (!desc) {
            cJSON_Delete(root);
            break;
        }
        char *text = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        ck_assert(text);
        snprintf(what, sizeof what, "%s edited: %s", f->tok_rel, desc);
        bool loaded = try_load(f->kind, (const unsigned char *)text, strlen(text), what);
        ck_assert_msg(!(loaded && ex == MUST_FAIL), "%s: loaded, but must be refused", what);
        free(text);
    }
    /* not JSON objects at all */
    static const char *const junk[] = {"", "null", "[]", "7", "\"tokenizer\"", "{}", "{\"model\":null}",
                                       "{\"model\":{\"type\":\"BPE\"}}", "\xef\xbb\xbf{"};
    for (size_t j = 0; j < sizeof junk / sizeof junk[0]; j++) {
        snprintf(what, sizeof what, "tokenizer.json \"%s\"", show(junk[j], strlen(junk[j])));
        ck_assert_msg(!try_load(TOK_BPE, (const unsigned char *)junk[j], strlen(junk[j]), what),
                      "%s: loaded", what);
    }
    /* a tokenizer.json given as a SentencePiece model, and the reverse */
    snprintf(what, sizeof what, "%s loaded as sentencepiece", f->tok_rel);
    try_load(TOK_SENTENCEPIECE, data, size, what);
    size_t msize = 0;
    unsigned char *model = tu_read_file(tu_data_path("tiny/llama-mha/tokenizer.model"), &msize);
    ck_assert(model);
    ck_assert_msg(!try_load(TOK_BPE, model, msize, "tokenizer.model loaded as bpe"),
                  "tokenizer.model loaded as bpe");
    free(model);
    free(data);
    fixture_free(f);
}
END_TEST

START_TEST(malformed_bad_arguments)
{
    qerr err = {0};
    ck_assert_ptr_null(tok_load((tok_kind)7, "{}", 2, &err));
    ck_assert_msg(err.msg[0], "no message for an unknown kind");
    ck_assert_ptr_null(tok_load(TOK_BPE, NULL, 0, &err));
    ck_assert_ptr_null(tok_load(TOK_SENTENCEPIECE, NULL, 0, &err));
    ck_assert_ptr_null(tok_load(TOK_SENTENCEPIECE, "", 0, &err));
    ck_assert_int_eq(tok_kind_from_name("sentencepiece"), TOK_SENTENCEPIECE);
    ck_assert_int_eq(tok_kind_from_name("bpe"), TOK_BPE);
    ck_assert_int_eq(tok_kind_from_name("wordpiece"), -1);
    tok_free(NULL);
    tok_stream_free(NULL);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("tokenizer_ref");
    TCase *tc = tcase_create("reference");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, ref_encode, 0, NFIX);
    tcase_add_loop_test(tc, ref_decode, 0, NFIX);
    tcase_add_loop_test(tc, ref_stream, 0, NFIX);
    tcase_add_loop_test(tc, ref_specials, 0, NFIX);
    tcase_add_loop_test(tc, ref_invalid_utf8, 0, NFIX);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("malformed");
    tcase_set_timeout(tm, 120);
    tcase_add_loop_test(tm, malformed_truncated, 0, NFIX);
    tcase_add_loop_test(tm, malformed_flipped, 0, NFIX);
    tcase_add_loop_test(tm, malformed_json_edits, 0, NFIX);
    tcase_add_test(tm, malformed_bad_arguments);
    suite_add_tcase(s, tm);
    return s;
}

int main(void) { return tu_run(suite()); }
