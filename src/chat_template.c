/* A sandboxed interpreter for the Jinja2 subset of Hugging Face chat
 * templates. Layout of this file:
 *   arena            bump allocator with a byte limit (compile and render)
 *   values           undefined/none/bool/int/float/str/list/dict/namespace/...
 *   lexer            template text -> tokens, with Jinja's whitespace control
 *                    (trim_blocks, lstrip_blocks, {%- -%}, {%+ +%})
 *   parser           tokens -> AST (expressions and statements)
 *   interpreter      AST -> text, under the limits of chat_limits
 *   public API
 * Semantics follow Jinja2 3.1 in an ImmutableSandboxedEnvironment as
 * transformers configures it; docs/chat-templates.md lists the subset. */
#include "chat_template.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ arena */

typedef struct ablock {
    struct ablock *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
} ablock;

typedef struct arena {
    ablock *head;
    size_t total, limit;
    bool oom;       /* a request was refused (limit or malloc) */
    bool limit_hit; /* ... because of the limit */
} arena;

#define ARENA_BLOCK ((size_t)64 << 10)

static void *aalloc(arena *a, size_t n)
{
    if (n > SIZE_MAX - 32) {
        a->oom = a->limit_hit = true;
        return NULL;
    }
    n = (n + 15) & ~(size_t)15;
    if (n == 0)
        n = 16;
    if (a->head && a->head->cap - a->head->used >= n) {
        void *p = a->head->data + a->head->used;
        a->head->used += n;
        return p;
    }
    size_t cap = n > ARENA_BLOCK / 4 ? n : ARENA_BLOCK;
    if (a->total + cap > a->limit || a->total + cap < a->total) {
        a->oom = a->limit_hit = true;
        return NULL;
    }
    ablock *b = malloc(sizeof *b + cap);
    if (!b) {
        a->oom = true;
        return NULL;
    }
    b->cap = cap;
    b->used = n;
    a->total += cap;
    if (cap > ARENA_BLOCK && a->head) { /* big one-off: keep the current block open */
        b->next = a->head->next;
        a->head->next = b;
    } else {
        b->next = a->head;
        a->head = b;
    }
    return b->data;
}

static void arena_free(arena *a)
{
    ablock *b = a->head;
    while (b) {
        ablock *n = b->next;
        free(b);
        b = n;
    }
    a->head = NULL;
    a->total = 0;
}

static char *astrndup(arena *a, const char *s, size_t n)
{
    char *p = aalloc(a, n + 1);
    if (!p)
        return NULL;
    if (n)
        memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ----------------------------------------------------------------- values */

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_LOOP, V_FUNC, V_MACRO };

typedef struct node node;
typedef struct value value;
typedef struct vlist vlist;
typedef struct vdict vdict;
typedef struct loopst loopst;

struct value {
    int t;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        vlist *l;
        vdict *d;
        loopst *lp;
        int fn;
        const node *m;  /* V_MACRO */
        const node *un; /* V_UNDEF: the expression that produced it (or NULL) */
    } u;
};

struct vlist {
    size_t n;
    value *v;
    bool tuple;
};

struct vdict { /* insertion-ordered; namespaces use it mutably */
    size_t n, cap;
    value *k, *v;
};

struct loopst {
    int64_t idx, len;
    const vlist *items;
};

enum { F_RANGE, F_NAMESPACE, F_DICT, F_RAISE, F_STRFTIME, F_COUNT };
static const char *const func_names[F_COUNT] = {"range", "namespace", "dict", "raise_exception",
                                                "strftime_now"};

static value v_undef(const node *why)
{
    value v = {.t = V_UNDEF};
    v.u.un = why;
    return v;
}
static value v_none(void) { return (value){.t = V_NONE}; }
static value v_bool(bool b)
{
    value v = {.t = V_BOOL};
    v.u.b = b;
    return v;
}
static value v_int(int64_t i)
{
    value v = {.t = V_INT};
    v.u.i = i;
    return v;
}
static value v_float(double f)
{
    value v = {.t = V_FLOAT};
    v.u.f = f;
    return v;
}
static value v_str(const char *p, size_t n)
{
    value v = {.t = V_STR};
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}
static value v_cstr(const char *p) { return v_str(p, strlen(p)); }

static bool is_num(const value *v) { return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL; }
static double num_f(const value *v)
{
    return v->t == V_FLOAT ? v->u.f : v->t == V_INT ? (double)v->u.i : (double)v->u.b;
}
static bool is_intlike(const value *v) { return v->t == V_INT || v->t == V_BOOL; }
static int64_t int_of(const value *v) { return v->t == V_INT ? v->u.i : (int64_t)v->u.b; }

static const char *type_name(const value *v)
{
    switch (v->t) {
    case V_UNDEF: return "undefined";
    case V_NONE: return "none";
    case V_BOOL: return "bool";
    case V_INT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return "string";
    case V_LIST: return v->u.l->tuple ? "tuple" : "list";
    case V_DICT: return "dict";
    case V_NS: return "namespace";
    case V_LOOP: return "loop";
    case V_FUNC: return "function";
    default: return "macro";
    }
}

static bool truthy(const value *v)
{
    switch (v->t) {
    case V_UNDEF:
    case V_NONE: return false;
    case V_BOOL: return v->u.b;
    case V_INT: return v->u.i != 0;
    case V_FLOAT: return v->u.f != 0.0;
    case V_STR: return v->u.s.n > 0;
    case V_LIST: return v->u.l->n > 0;
    case V_DICT: return v->u.d->n > 0;
    default: return true;
    }
}

/* ------------------------------------------------------------------ UTF-8 */

/* Length of the UTF-8 sequence at s[0..n) (invalid bytes count as one). */
static size_t u8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (k > n)
        return 1;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 1;
    return k;
}

static uint32_t u8_decode(const unsigned char *s, size_t k)
{
    if (k == 1)
        return s[0];
    uint32_t c = s[0] & (0x7F >> k);
    for (size_t i = 1; i < k; i++)
        c = (c << 6) | (s[i] & 0x3F);
    return c;
}

static size_t u8_encode(uint32_t c, char *o)
{
    if (c >= 0xD800 && c <= 0xDFFF)
        c = 0xFFFD;
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xC0 | (c >> 6));
        o[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | (c >> 12));
        o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    if (c > 0x10FFFF)
        c = 0xFFFD;
    if (c < 0x10000)
        return u8_encode(c, o);
    o[0] = (char)(0xF0 | (c >> 18));
    o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

static bool py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Python's str.isspace() on the code point starting at s[i], and its length. */
static bool space_at(const char *s, size_t n, size_t i, size_t *k)
{
    *k = u8_len((const unsigned char *)s + i, n - i);
    return py_space(u8_decode((const unsigned char *)s + i, *k));
}

/* Code point before byte offset `end` (>= start): its start offset. */
static size_t u8_prev(const char *s, size_t start, size_t end)
{
    size_t i = end - 1;
    while (i > start && ((unsigned char)s[i] & 0xC0) == 0x80 && end - i < 4)
        i--;
    size_t k = u8_len((const unsigned char *)s + i, end - i);
    return i + k == end ? i : end - 1;
}

static size_t u8_count(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; c++)
        i += u8_len((const unsigned char *)s + i, n - i);
    return c;
}

/* --------------------------------------------------------- string builder */

typedef struct sbuf {
    char *p;
    size_t n, cap, limit;
    bool over; /* limit exceeded or malloc failed */
    bool nomem;
} sbuf;

static bool sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->over)
        return false;
    if (n > b->limit - b->n || b->n + n > b->limit) {
        b->over = true;
        return false;
    }
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1)
            c = c > SIZE_MAX / 2 ? SIZE_MAX : c * 2;
        char *q = realloc(b->p, c);
        if (!q) {
            b->over = b->nomem = true;
            return false;
        }
        b->p = q;
        b->cap = c;
    }
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return true;
}
static bool sb_puts(sbuf *b, const char *s) { return sb_put(b, s, strlen(s)); }
static bool sb_putc(sbuf *b, char c) { return sb_put(b, &c, 1); }

/* Python's repr() of a float. */
static void fmt_float(double d, char *buf, size_t cap)
{
    if (isnan(d)) {
        snprintf(buf, cap, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(buf, cap, d < 0 ? "-inf" : "inf");
        return;
    }
    if (d == 0) {
        snprintf(buf, cap, signbit(d) ? "-0.0" : "0.0");
        return;
    }
    char tmp[64];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    bool neg = tmp[0] == '-';
    char dig[32];
    int nd = 0;
    const char *q = tmp + neg;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9' && nd < 31)
            dig[nd++] = *q;
    while (nd > 1 && dig[nd - 1] == '0')
        nd--;
    dig[nd] = '\0';
    int ex = *q == 'e' ? atoi(q + 1) : 0;
    char out[64];
    size_t o = 0;
    if (neg)
        out[o++] = '-';
    if (ex >= -4 && ex < 16) {
        if (ex >= 0) {
            for (int i = 0; i <= ex; i++)
                out[o++] = i < nd ? dig[i] : '0';
            out[o++] = '.';
            if (nd > ex + 1)
                for (int i = ex + 1; i < nd; i++)
                    out[o++] = dig[i];
            else
                out[o++] = '0';
        } else {
            out[o++] = '0';
            out[o++] = '.';
            for (int i = 0; i < -ex - 1; i++)
                out[o++] = '0';
            for (int i = 0; i < nd; i++)
                out[o++] = dig[i];
        }
        out[o] = '\0';
    } else {
        out[o++] = dig[0];
        if (nd > 1) {
            out[o++] = '.';
            for (int i = 1; i < nd; i++)
                out[o++] = dig[i];
        }
        out[o] = '\0';
        snprintf(out + o, sizeof out - o, "e%c%02d", ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
    }
    snprintf(buf, cap, "%s", out);
}

static void sb_repr_str(sbuf *b, const char *s, size_t n)
{
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = (sq && !dq) ? '"' : '\'';
    sb_putc(b, q);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[8];
        if (c == '\\' || c == (unsigned char)q) {
            e[0] = '\\';
            e[1] = (char)c;
            sb_put(b, e, 2);
        } else if (c == '\n')
            sb_puts(b, "\\n");
        else if (c == '\r')
            sb_puts(b, "\\r");
        else if (c == '\t')
            sb_puts(b, "\\t");
        else if (c < 0x20 || c == 0x7F) {
            snprintf(e, sizeof e, "\\x%02x", c);
            sb_puts(b, e);
        } else
            sb_putc(b, (char)c);
    }
    sb_putc(b, q);
}

static void sb_str(sbuf *b, const value *v, bool repr);

static void sb_repr_dict(sbuf *b, const vdict *d)
{
    sb_putc(b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i)
            sb_puts(b, ", ");
        sb_str(b, &d->k[i], true);
        sb_puts(b, ": ");
        sb_str(b, &d->v[i], true);
    }
    sb_putc(b, '}');
}

/* Python str() (repr=false) or repr() (repr=true) of a value. */
static void sb_str(sbuf *b, const value *v, bool repr)
{
    char t[64];
    if (b->over)
        return;
    switch (v->t) {
    case V_UNDEF: sb_puts(b, repr ? "Undefined" : ""); break;
    case V_NONE: sb_puts(b, "None"); break;
    case V_BOOL: sb_puts(b, v->u.b ? "True" : "False"); break;
    case V_INT:
        snprintf(t, sizeof t, "%lld", (long long)v->u.i);
        sb_puts(b, t);
        break;
    case V_FLOAT:
        fmt_float(v->u.f, t, sizeof t);
        sb_puts(b, t);
        break;
    case V_STR:
        if (repr)
            sb_repr_str(b, v->u.s.p, v->u.s.n);
        else
            sb_put(b, v->u.s.p, v->u.s.n);
        break;
    case V_LIST: {
        const vlist *l = v->u.l;
        sb_putc(b, l->tuple ? '(' : '[');
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                sb_puts(b, ", ");
            sb_str(b, &l->v[i], true);
        }
        if (l->tuple && l->n == 1)
            sb_putc(b, ',');
        sb_putc(b, l->tuple ? ')' : ']');
        break;
    }
    case V_DICT: sb_repr_dict(b, v->u.d); break;
    case V_NS:
        sb_puts(b, "<Namespace ");
        sb_repr_dict(b, v->u.d);
        sb_putc(b, '>');
        break;
    case V_LOOP:
        snprintf(t, sizeof t, "<LoopContext %lld/%lld>", (long long)v->u.lp->idx + 1,
                 (long long)v->u.lp->len);
        sb_puts(b, t);
        break;
    case V_FUNC:
        sb_puts(b, "<function ");
        sb_puts(b, func_names[v->u.fn]);
        sb_putc(b, '>');
        break;
    default: sb_puts(b, "<Macro>"); break;
    }
}

/* ------------------------------------------------------------------ lexer */

enum { TK_EOF, TK_DATA, TK_VBEGIN, TK_VEND, TK_BBEGIN, TK_BEND, TK_NAME, TK_STR, TK_INT, TK_FLOAT, TK_OP };

typedef struct tok {
    int t;
    size_t pos;
    const char *s; /* NAME/OP: source text; DATA/STR: decoded text (arena) */
    size_t n;
    int64_t i;
    double f;
} tok;

/* Parser state (the lexer fills toks). */
typedef struct parser {
    const char *src;
    size_t len;
    arena *a;
    qerr *err;
    tok *toks;
    size_t ntok, cap;
    size_t i;
    int depth;
    bool failed;
} parser;

#define MAX_PARSE_DEPTH 200

static void pos_to_lc(const char *src, size_t len, size_t pos, int *line, int *col)
{
    int l = 1, c = 1;
    if (pos > len)
        pos = len;
    for (size_t i = 0; i < pos; i++) {
        if (src[i] == '\n') {
            l++;
            c = 1;
        } else if (((unsigned char)src[i] & 0xC0) != 0x80)
            c++;
    }
    *line = l;
    *col = c;
}

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static bool perr(parser *p, qrun_status code, size_t pos, const char *fmt, ...)
{
    if (p->failed)
        return false;
    p->failed = true;
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int l, c;
    pos_to_lc(p->src, p->len, pos, &l, &c);
    qerr_set(p->err, code, "chat template line %d, column %d: %s", l, c, msg);
    return false;
}

static bool p_oom(parser *p)
{
    p->failed = true;
    qerr_set(p->err, QRUN_ERR_NO_MEMORY, "chat template: out of memory while compiling");
    return false;
}

static tok *push_tok(parser *p, int t, size_t pos)
{
    if (p->ntok == p->cap) {
        size_t c = p->cap ? p->cap * 2 : 256;
        tok *nt = realloc(p->toks, c * sizeof *nt);
        if (!nt) {
            p_oom(p);
            return NULL;
        }
        p->toks = nt;
        p->cap = c;
    }
    tok *k = &p->toks[p->ntok++];
    memset(k, 0, sizeof *k);
    k->t = t;
    k->pos = pos;
    return k;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
static bool is_name0(char c) { return isalpha((unsigned char)c) || c == '_'; }
static bool is_name1(char c) { return isalnum((unsigned char)c) || c == '_'; }

static bool push_data(parser *p, size_t from, size_t to)
{
    if (to <= from)
        return true;
    tok *k = push_tok(p, TK_DATA, from);
    if (!k)
        return false;
    k->s = p->src + from;
    k->n = to - from;
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A string literal starting at s[*pos] (a quote); Python escape rules. */
static bool lex_string(parser *p, size_t *pos)
{
    const char *s = p->src;
    size_t start = *pos, i = start + 1;
    char q = s[start];
    while (i < p->len && s[i] != q) {
        if (s[i] == '\\')
            i++;
        i++;
    }
    if (i >= p->len)
        return perr(p, QRUN_ERR_FORMAT, start, "unterminated string literal");
    size_t end = i; /* closing quote */
    char *o = aalloc(p->a, end - start + 1);
    if (!o)
        return p_oom(p);
    size_t n = 0;
    for (size_t j = start + 1; j < end;) {
        char c = s[j];
        if (c != '\\') {
            o[n++] = c;
            j++;
            continue;
        }
        char e = s[j + 1];
        j += 2;
        uint32_t cp;
        int want = 0;
        switch (e) {
        case '\n': continue;
        case '\\': o[n++] = '\\'; continue;
        case '\'': o[n++] = '\''; continue;
        case '"': o[n++] = '"'; continue;
        case 'a': o[n++] = '\a'; continue;
        case 'b': o[n++] = '\b'; continue;
        case 'f': o[n++] = '\f'; continue;
        case 'n': o[n++] = '\n'; continue;
        case 'r': o[n++] = '\r'; continue;
        case 't': o[n++] = '\t'; continue;
        case 'v': o[n++] = '\v'; continue;
        case 'x': want = 2; break;
        case 'u': want = 4; break;
        case 'U': want = 8; break;
        case 'N': return perr(p, QRUN_ERR_UNSUPPORTED, j - 2, "\\N{...} escapes are not supported");
        default:
            if (e >= '0' && e <= '7') {
                cp = (uint32_t)(e - '0');
                for (int d = 0; d < 2 && j < end && s[j] >= '0' && s[j] <= '7'; d++, j++)
                    cp = cp * 8 + (uint32_t)(s[j] - '0');
                n += u8_encode(cp, o + n);
                continue;
            }
            o[n++] = '\\';
            o[n++] = e;
            continue;
        }
        cp = 0;
        for (int d = 0; d < want; d++, j++) {
            int h = j < end ? hexval(s[j]) : -1;
            if (h < 0)
                return perr(p, QRUN_ERR_FORMAT, j, "truncated \\%c escape in string literal", e);
            cp = cp * 16 + (uint32_t)h;
        }
        n += u8_encode(cp, o + n); /* at most 4 bytes for >= 4 source bytes */
    }
    o[n] = '\0';
    tok *k = push_tok(p, TK_STR, start);
    if (!k)
        return false;
    k->s = o;
    k->n = n;
    *pos = end + 1;
    return true;
}

static bool lex_number(parser *p, size_t *pos)
{
    const char *s = p->src;
    size_t i = *pos, start = i;
    char buf[128];
    size_t bn = 0;
    bool isf = false;
#define DIGITS()                                                                                   \
    while (i < p->len && (isdigit((unsigned char)s[i]) || (s[i] == '_' && i + 1 < p->len &&       \
                                                           isdigit((unsigned char)s[i + 1])))) {  \
        if (s[i] != '_' && bn < sizeof buf - 1)                                                    \
            buf[bn++] = s[i];                                                                      \
        i++;                                                                                       \
    }
    DIGITS();
    if (i + 1 < p->len && s[i] == '.' && isdigit((unsigned char)s[i + 1])) {
        isf = true;
        buf[bn++] = s[i++];
        DIGITS();
    }
    if (i < p->len && (s[i] == 'e' || s[i] == 'E')) {
        size_t j = i + 1;
        if (j < p->len && (s[j] == '+' || s[j] == '-'))
            j++;
        if (j < p->len && isdigit((unsigned char)s[j])) {
            isf = true;
            for (size_t m = i; m < j && bn < sizeof buf - 1; m++)
                buf[bn++] = s[m];
            i = j;
            DIGITS();
        }
    }
#undef DIGITS
    buf[bn] = '\0';
    tok *k = push_tok(p, isf ? TK_FLOAT : TK_INT, start);
    if (!k)
        return false;
    if (isf)
        k->f = strtod(buf, NULL);
    else {
        unsigned long long v = 0;
        for (size_t m = 0; m < bn; m++) {
            if (v > (ULLONG_MAX - 9) / 10 || v * 10 + (unsigned)(buf[m] - '0') > (unsigned long long)INT64_MAX)
                return perr(p, QRUN_ERR_UNSUPPORTED, start, "integer literal larger than 64 bits");
            v = v * 10 + (unsigned)(buf[m] - '0');
        }
        k->i = (int64_t)v;
    }
    *pos = i;
    return true;
}

static const char *const ops2[] = {"//", "**", "==", "!=", ">=", "<=", NULL};
static const char ops1[] = "+-/*%~[](){}><=.:|,;";

/* Expression tokens of one {{ }} or {% %} tag, starting at *pos (after the
 * opening delimiter and its sign); stops after the end delimiter, applying
 * its whitespace control. */
static bool lex_tag(parser *p, size_t *pos, bool block, bool *line_starting)
{
    const char *s = p->src;
    size_t i = *pos;
    int depth = 0;
    for (;;) {
        while (i < p->len && is_ws(s[i]))
            i++;
        if (i >= p->len)
            return perr(p, QRUN_ERR_FORMAT, *pos - 2, "unterminated %s tag", block ? "{% %}" : "{{ }}");
        if (depth == 0) {
            const char *e = block ? "%}" : "}}";
            char sign = 0;
            size_t j = i;
            if ((s[j] == '-' || (block && s[j] == '+')) && j + 2 < p->len + 0 && strncmp(s + j + 1, e, 2) == 0) {
                sign = s[j];
                j++;
            }
            if (j + 1 < p->len && strncmp(s + j, e, 2) == 0) {
                if (!push_tok(p, block ? TK_BEND : TK_VEND, i))
                    return false;
                j += 2;
                if (sign == '-')
                    while (j < p->len && is_ws(s[j]))
                        j++;
                else if (block && sign == 0 && j < p->len && s[j] == '\n')
                    j++;
                *line_starting = s[j - 1] == '\n';
                *pos = j;
                return true;
            }
        }
        char c = s[i];
        if (c == '\'' || c == '"') {
            if (!lex_string(p, &i))
                return false;
        } else if (isdigit((unsigned char)c)) {
            if (!lex_number(p, &i))
                return false;
        } else if (is_name0(c)) {
            size_t st = i;
            while (i < p->len && is_name1(s[i]))
                i++;
            tok *k = push_tok(p, TK_NAME, st);
            if (!k)
                return false;
            k->s = s + st;
            k->n = i - st;
        } else {
            size_t n = 0;
            for (int m = 0; ops2[m]; m++)
                if (i + 1 < p->len && strncmp(s + i, ops2[m], 2) == 0)
                    n = 2;
            if (!n && c && strchr(ops1, c))
                n = 1;
            if (!n)
                return perr(p, QRUN_ERR_FORMAT, i, "unexpected character '%c' in tag",
                            isprint((unsigned char)c) ? c : '?');
            if (c == '(' || c == '[' || c == '{')
                depth++;
            else if ((c == ')' || c == ']' || c == '}') && depth > 0)
                depth--;
            tok *k = push_tok(p, TK_OP, i);
            if (!k)
                return false;
            k->s = s + i;
            k->n = n;
            i += n;
        }
    }
}

static bool all_ws(const char *s, size_t a, size_t b)
{
    for (size_t i = a; i < b; i++)
        if (!is_ws(s[i]))
            return false;
    return true;
}

/* Text before a tag at s[from..to): apply the tag's sign or lstrip_blocks. */
static size_t strip_before(parser *p, size_t from, size_t to, char sign, bool lstrip_ok, bool line_starting)
{
    const char *s = p->src;
    if (sign == '-') {
        while (to > from && is_ws(s[to - 1]))
            to--;
        return to;
    }
    if (sign == '+' || !lstrip_ok)
        return to;
    size_t l = to;
    while (l > from && s[l - 1] != '\n')
        l--;
    bool nl = l > from;
    if ((nl || line_starting) && l < to && all_ws(s, l, to))
        return l;
    return to;
}

static bool lex(parser *p)
{
    const char *s = p->src;
    size_t n = p->len, pos = 0;
    bool line_starting = true;
    while (pos < n) {
        size_t k = pos;
        while (k + 1 < n && !(s[k] == '{' && (s[k + 1] == '{' || s[k + 1] == '%' || s[k + 1] == '#')))
            k++;
        if (k + 1 >= n) {
            if (!push_data(p, pos, n))
                return false;
            break;
        }
        char kind = s[k + 1];
        size_t t = k + 2;
        char sign = 0;
        if (t < n && (s[t] == '-' || s[t] == '+')) {
            sign = s[t];
            t++;
        }
        /* {% raw %} ... {% endraw %} */
        bool raw = false;
        size_t raw_body = 0;
        if (kind == '%') {
            size_t j = t;
            while (j < n && is_ws(s[j]))
                j++;
            if (j + 3 <= n && strncmp(s + j, "raw", 3) == 0 && (j + 3 == n || !is_name1(s[j + 3]))) {
                j += 3;
                while (j < n && is_ws(s[j]))
                    j++;
                if (j + 2 < n && s[j] == '-' && strncmp(s + j + 1, "%}", 2) == 0) {
                    j += 3;
                    while (j < n && is_ws(s[j]))
                        j++;
                    raw = true;
                } else if (j + 1 < n && strncmp(s + j, "%}", 2) == 0) {
                    j += 2;
                    raw = true;
                }
                raw_body = j;
            }
        }
        size_t tend = strip_before(p, pos, k, sign, kind != '{', line_starting);
        if (!push_data(p, pos, tend))
            return false;
        if (raw) {
            /* find {%(-|+)? endraw (-%}|+%}|%}) */
            size_t j = raw_body, found = SIZE_MAX, after = 0;
            char esign = 0;
            for (; j + 1 < n; j++) {
                if (s[j] != '{' || s[j + 1] != '%')
                    continue;
                size_t m = j + 2;
                char sg = 0;
                if (m < n && (s[m] == '-' || s[m] == '+'))
                    sg = s[m++];
                while (m < n && is_ws(s[m]))
                    m++;
                if (m + 6 > n || strncmp(s + m, "endraw", 6) != 0)
                    continue;
                m += 6;
                while (m < n && is_ws(s[m]))
                    m++;
                char cs = 0;
                if (m < n && (s[m] == '-' || s[m] == '+'))
                    cs = s[m++];
                if (m + 2 > n || strncmp(s + m, "%}", 2) != 0)
                    continue;
                m += 2;
                if (cs == '-')
                    while (m < n && is_ws(s[m]))
                        m++;
                else if (cs == 0 && m < n && s[m] == '\n')
                    m++;
                found = j;
                after = m;
                esign = sg;
                break;
            }
            if (found == SIZE_MAX)
                return perr(p, QRUN_ERR_FORMAT, k, "missing {%% endraw %%}");
            size_t be = strip_before(p, raw_body, found, esign, true, false);
            if (!push_data(p, raw_body, be))
                return false;
            line_starting = s[after - 1] == '\n';
            pos = after;
            continue;
        }
        if (kind == '#') {
            size_t j = t, after = 0;
            bool ok = false;
            for (; j + 1 < n; j++) {
                if ((s[j] == '-' || s[j] == '+') && j + 2 < n && s[j + 1] == '#' && s[j + 2] == '}') {
                    after = j + 3;
                    if (s[j] == '-')
                        while (after < n && is_ws(s[after]))
                            after++;
                    ok = true;
                    break;
                }
                if (s[j] == '#' && s[j + 1] == '}') {
                    after = j + 2;
                    if (after < n && s[after] == '\n')
                        after++;
                    ok = true;
                    break;
                }
            }
            if (!ok)
                return perr(p, QRUN_ERR_FORMAT, k, "unterminated comment {# ... #}");
            line_starting = s[after - 1] == '\n';
            pos = after;
            continue;
        }
        if (!push_tok(p, kind == '{' ? TK_VBEGIN : TK_BBEGIN, k))
            return false;
        pos = t;
        if (!lex_tag(p, &pos, kind == '%', &line_starting))
            return false;
    }
    return push_tok(p, TK_EOF, n) != NULL;
}

/* ----------------------------------------------------------------- parser */

enum {
    /* expressions */
    N_CONST, N_NAME, N_ATTR, N_ITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_NEG, N_POS, N_NOT,
    N_BIN, N_AND, N_OR, N_CMP, N_COND, N_LIST, N_TUPLE, N_DICT, N_CONCAT,
    /* statements */
    S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_BREAK, S_CONTINUE, S_BLOCK, S_FILTERBLOCK
};

/* binary and comparison operators */
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN };

typedef struct nlist {
    node **v;
    size_t n, cap;
} nlist;

struct node {
    int kind;
    size_t pos;
    int op;
    bool neg;        /* N_TEST: is not */
    value cv;        /* N_CONST */
    const char *name; /* N_NAME, N_ATTR, N_FILTER, N_TEST, S_MACRO name, S_SET ns attr */
    node *a, *b, *c;
    nlist args;      /* call/filter/test args, list/tuple/dict-key items, compare operands, macro defaults */
    nlist kwargs;    /* keyword argument values, dict values */
    const char **knames; /* keyword names; for/set targets; macro params */
    size_t nknames;
    int *ops;        /* N_CMP */
    nlist body, orelse;
};

static const tok *cur(parser *p) { return &p->toks[p->i]; }
static const tok *peek(parser *p, size_t k)
{
    size_t j = p->i + k;
    return j < p->ntok ? &p->toks[j] : &p->toks[p->ntok - 1];
}
static bool tok_is(const tok *t, int type, const char *s)
{
    return t->t == type && (!s || (t->n == strlen(s) && memcmp(t->s, s, t->n) == 0));
}
static bool is_op(parser *p, const char *s) { return tok_is(cur(p), TK_OP, s); }
static bool is_kw(parser *p, const char *s) { return tok_is(cur(p), TK_NAME, s); }

static const char *tok_desc(const tok *t, char *buf, size_t cap)
{
    switch (t->t) {
    case TK_EOF: return "end of template";
    case TK_DATA: return "template text";
    case TK_VBEGIN: return "'{{'";
    case TK_VEND: return "'}}'";
    case TK_BBEGIN: return "'{%'";
    case TK_BEND: return "'%}'";
    case TK_STR: return "a string";
    case TK_INT:
    case TK_FLOAT: return "a number";
    default: snprintf(buf, cap, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s); return buf;
    }
}

static bool unexpected(parser *p, const char *wanted)
{
    char b[64];
    return perr(p, QRUN_ERR_FORMAT, cur(p)->pos, "expected %s, found %s", wanted, tok_desc(cur(p), b, sizeof b));
}

static bool expect_op(parser *p, const char *s)
{
    if (!is_op(p, s)) {
        char w[16];
        snprintf(w, sizeof w, "'%s'", s);
        return unexpected(p, w);
    }
    p->i++;
    return true;
}

static node *mk(parser *p, int kind, size_t pos)
{
    node *n = aalloc(p->a, sizeof *n);
    if (!n) {
        p_oom(p);
        return NULL;
    }
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->pos = pos;
    return n;
}

static bool nl_push(parser *p, nlist *l, node *n)
{
    if (!n)
        return false;
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 4;
        node **v = aalloc(p->a, c * sizeof *v);
        if (!v)
            return p_oom(p);
        if (l->n)
            memcpy(v, l->v, l->n * sizeof *v);
        l->v = v;
        l->cap = c;
    }
    l->v[l->n++] = n;
    return true;
}

static bool names_push(parser *p, node *n, const char *s, size_t len)
{
    /* knames grows by copying; lists are short */
    const char **v = aalloc(p->a, (n->nknames + 1) * sizeof *v);
    char *c = astrndup(p->a, s, len);
    if (!v || !c)
        return p_oom(p);
    if (n->nknames)
        memcpy(v, n->knames, n->nknames * sizeof *v);
    v[n->nknames++] = c;
    n->knames = v;
    return true;
}

static node *parse_expr(parser *p, bool condexpr);
static node *parse_or(parser *p);
static node *parse_unary(parser *p, bool with_filter);

static bool enter(parser *p)
{
    if (++p->depth > MAX_PARSE_DEPTH)
        return perr(p, QRUN_ERR_FORMAT, cur(p)->pos, "template nested too deeply (more than %d levels)", MAX_PARSE_DEPTH);
    return true;
}

/* ( args ) after the '(' has been seen; fills n->args, n->kwargs, n->knames */
static bool parse_call_args(parser *p, node *n)
{
    if (!expect_op(p, "("))
        return false;
    while (!is_op(p, ")")) {
        if (n->args.n + n->kwargs.n > 0 && !expect_op(p, ","))
            return false;
        if (is_op(p, ")"))
            break;
        if (is_op(p, "*") || is_op(p, "**"))
            return perr(p, QRUN_ERR_UNSUPPORTED, cur(p)->pos, "*args and **kwargs in calls are not supported");
        if (cur(p)->t == TK_NAME && tok_is(peek(p, 1), TK_OP, "=")) {
            const tok *nm = cur(p);
            p->i += 2;
            if (!names_push(p, n, nm->s, nm->n) || !nl_push(p, &n->kwargs, parse_expr(p, true)))
                return false;
        } else {
            if (n->kwargs.n)
                return perr(p, QRUN_ERR_FORMAT, cur(p)->pos, "positional argument after keyword argument");
            if (!nl_push(p, &n->args, parse_expr(p, true)))
                return false;
        }
    }
    p->i++;
    return true;
}

static node *parse_primary(parser *p)
{
    const tok *t = cur(p);
    node *n;
    if (t->t == TK_NAME) {
        p->i++;
        if (tok_is(t, TK_NAME, "true") || tok_is(t, TK_NAME, "True") || tok_is(t, TK_NAME, "false") ||
            tok_is(t, TK_NAME, "False")) {
            if (!(n = mk(p, N_CONST, t->pos)))
                return NULL;
            n->cv = v_bool(t->s[0] == 't' || t->s[0] == 'T');
            return n;
        }
        if (tok_is(t, TK_NAME, "none") || tok_is(t, TK_NAME, "None")) {
            if (!(n = mk(p, N_CONST, t->pos)))
                return NULL;
            n->cv = v_none();
            return n;
        }
        if (!(n = mk(p, N_NAME, t->pos)) || !(n->name = astrndup(p->a, t->s, t->n)))
            return n ? (p_oom(p), NULL) : NULL;
        return n;
    }
    if (t->t == TK_STR) {
        /* adjacent literals concatenate */
        size_t total = 0, j = p->i;
        while (p->toks[j].t == TK_STR)
            total += p->toks[j++].n;
        char *buf = aalloc(p->a, total + 1);
        if (!buf)
            return p_oom(p), NULL;
        size_t o = 0;
        while (cur(p)->t == TK_STR) {
            memcpy(buf + o, cur(p)->s, cur(p)->n);
            o += cur(p)->n;
            p->i++;
        }
        buf[o] = '\0';
        if (!(n = mk(p, N_CONST, t->pos)))
            return NULL;
        n->cv = v_str(buf, o);
        return n;
    }
    if (t->t == TK_INT || t->t == TK_FLOAT) {
        p->i++;
        if (!(n = mk(p, N_CONST, t->pos)))
            return NULL;
        n->cv = t->t == TK_INT ? v_int(t->i) : v_float(t->f);
        return n;
    }
    if (tok_is(t, TK_OP, "(")) {
        p->i++;
        if (is_op(p, ")")) {
            p->i++;
            return mk(p, N_TUPLE, t->pos);
        }
        node *e = parse_expr(p, true);
        if (!e)
            return NULL;
        if (is_op(p, ",")) {
            node *tu = mk(p, N_TUPLE, t->pos);
            if (!tu || !nl_push(p, &tu->args, e))
                return NULL;
            while (is_op(p, ",")) {
                p->i++;
                if (is_op(p, ")"))
                    break;
                if (!nl_push(p, &tu->args, parse_expr(p, true)))
                    return NULL;
            }
            e = tu;
        }
        if (!expect_op(p, ")"))
            return NULL;
        return e;
    }
    if (tok_is(t, TK_OP, "[")) {
        p->i++;
        if (!(n = mk(p, N_LIST, t->pos)))
            return NULL;
        while (!is_op(p, "]")) {
            if (n->args.n && !expect_op(p, ","))
                return NULL;
            if (is_op(p, "]"))
                break;
            if (!nl_push(p, &n->args, parse_expr(p, true)))
                return NULL;
        }
        p->i++;
        return n;
    }
    if (tok_is(t, TK_OP, "{")) {
        p->i++;
        if (!(n = mk(p, N_DICT, t->pos)))
            return NULL;
        while (!is_op(p, "}")) {
            if (n->args.n && !expect_op(p, ","))
                return NULL;
            if (is_op(p, "}"))
                break;
            if (!nl_push(p, &n->args, parse_expr(p, true)) || !expect_op(p, ":") ||
                !nl_push(p, &n->kwargs, parse_expr(p, true)))
                return NULL;
        }
        p->i++;
        return n;
    }
    unexpected(p, "an expression");
    return NULL;
}

/* [ ... ] subscript or slice; the '[' is current */
static node *parse_subscript(parser *p, node *obj)
{
    size_t pos = cur(p)->pos;
    p->i++;
    node *parts[3] = {NULL, NULL, NULL};
    int k = 0;
    bool slice = false;
    for (;;) {
        if (is_op(p, ":")) {
            slice = true;
            if (++k > 2)
                return unexpected(p, "']'"), NULL;
            p->i++;
            continue;
        }
        if (is_op(p, "]"))
            break;
        if (parts[k])
            return unexpected(p, "']' or ':'"), NULL;
        if (!(parts[k] = parse_expr(p, true)))
            return NULL;
    }
    p->i++;
    if (!slice && !parts[0])
        return perr(p, QRUN_ERR_FORMAT, pos, "empty subscript"), NULL;
    node *n = mk(p, slice ? N_SLICE : N_ITEM, pos);
    if (!n)
        return NULL;
    n->a = obj;
    if (slice) {
        n->args.v = aalloc(p->a, 3 * sizeof(node *));
        if (!n->args.v)
            return p_oom(p), NULL;
        for (int m = 0; m < 3; m++)
            n->args.v[m] = parts[m];
        n->args.n = n->args.cap = 3;
    } else
        n->b = parts[0];
    return n;
}

static node *parse_postfix(parser *p, node *n)
{
    while (n) {
        if (is_op(p, ".")) {
            size_t pos = cur(p)->pos;
            p->i++;
            const tok *t = cur(p);
            if (t->t == TK_NAME) {
                p->i++;
                node *a = mk(p, N_ATTR, pos);
                if (!a || !(a->name = astrndup(p->a, t->s, t->n)))
                    return a ? (p_oom(p), NULL) : NULL;
                a->a = n;
                n = a;
            } else if (t->t == TK_INT) {
                p->i++;
                node *it = mk(p, N_ITEM, pos), *k = mk(p, N_CONST, t->pos);
                if (!it || !k)
                    return NULL;
                k->cv = v_int(t->i);
                it->a = n;
                it->b = k;
                n = it;
            } else
                return unexpected(p, "an attribute name"), NULL;
        } else if (is_op(p, "[")) {
            n = parse_subscript(p, n);
        } else if (is_op(p, "(")) {
            node *c = mk(p, N_CALL, n->pos);
            if (!c)
                return NULL;
            c->a = n;
            if (!parse_call_args(p, c))
                return NULL;
            n = c;
        } else
            break;
    }
    return n;
}

static node *parse_filter_expr(parser *p, node *n)
{
    while (n) {
        if (is_op(p, "|")) {
            p->i++;
            const tok *t = cur(p);
            if (t->t != TK_NAME)
                return unexpected(p, "a filter name"), NULL;
            p->i++;
            node *f = mk(p, N_FILTER, t->pos);
            if (!f || !(f->name = astrndup(p->a, t->s, t->n)))
                return f ? (p_oom(p), NULL) : NULL;
            f->a = n;
            if (is_op(p, "(") && !parse_call_args(p, f))
                return NULL;
            n = f;
        } else if (is_kw(p, "is")) {
            p->i++;
            bool neg = false;
            if (is_kw(p, "not")) {
                neg = true;
                p->i++;
            }
            const tok *t = cur(p);
            if (t->t != TK_NAME)
                return unexpected(p, "a test name"), NULL;
            p->i++;
            node *f = mk(p, N_TEST, t->pos);
            if (!f || !(f->name = astrndup(p->a, t->s, t->n)))
                return f ? (p_oom(p), NULL) : NULL;
            f->a = n;
            f->neg = neg;
            const tok *c = cur(p);
            if (is_op(p, "(")) {
                if (!parse_call_args(p, f))
                    return NULL;
            } else if ((c->t == TK_NAME || c->t == TK_STR || c->t == TK_INT || c->t == TK_FLOAT ||
                        is_op(p, "[") || is_op(p, "{")) &&
                       !is_kw(p, "else") && !is_kw(p, "or") && !is_kw(p, "and")) {
                if (is_kw(p, "is"))
                    return perr(p, QRUN_ERR_FORMAT, c->pos, "cannot chain tests with 'is'"), NULL;
                node *arg = parse_postfix(p, parse_primary(p));
                if (!nl_push(p, &f->args, arg))
                    return NULL;
            }
            n = f;
        } else if (is_op(p, "(")) {
            node *c = mk(p, N_CALL, n->pos);
            if (!c)
                return NULL;
            c->a = n;
            if (!parse_call_args(p, c))
                return NULL;
            n = c;
        } else
            break;
    }
    return n;
}

static node *parse_unary(parser *p, bool with_filter)
{
    if (!enter(p))
        return NULL;
    node *n;
    size_t pos = cur(p)->pos;
    if (is_op(p, "-") || is_op(p, "+")) {
        int k = is_op(p, "-") ? N_NEG : N_POS;
        p->i++;
        n = mk(p, k, pos);
        if (n && !(n->a = parse_unary(p, false)))
            n = NULL;
    } else
        n = parse_primary(p);
    n = parse_postfix(p, n);
    if (with_filter)
        n = parse_filter_expr(p, n);
    p->depth--;
    return n;
}

static node *mk_bin(parser *p, int op, size_t pos, node *a, node *b)
{
    if (!a || !b)
        return NULL;
    node *n = mk(p, N_BIN, pos);
    if (!n)
        return NULL;
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

static node *parse_pow(parser *p)
{
    node *n = parse_unary(p, true);
    while (n && is_op(p, "**")) {
        size_t pos = cur(p)->pos;
        p->i++;
        n = mk_bin(p, OP_POW, pos, n, parse_unary(p, true));
    }
    return n;
}

static node *parse_math2(parser *p)
{
    node *n = parse_pow(p);
    for (;;) {
        int op = is_op(p, "*") ? OP_MUL : is_op(p, "/") ? OP_DIV : is_op(p, "//") ? OP_FLOORDIV : is_op(p, "%") ? OP_MOD : -1;
        if (!n || op < 0)
            return n;
        size_t pos = cur(p)->pos;
        p->i++;
        n = mk_bin(p, op, pos, n, parse_pow(p));
    }
}

static node *parse_concat(parser *p)
{
    node *n = parse_math2(p);
    if (!n || !is_op(p, "~"))
        return n;
    node *c = mk(p, N_CONCAT, cur(p)->pos);
    if (!c || !nl_push(p, &c->args, n))
        return NULL;
    while (is_op(p, "~")) {
        p->i++;
        if (!nl_push(p, &c->args, parse_math2(p)))
            return NULL;
    }
    return c;
}

static node *parse_math1(parser *p)
{
    node *n = parse_concat(p);
    while (n && (is_op(p, "+") || is_op(p, "-"))) {
        int op = is_op(p, "+") ? OP_ADD : OP_SUB;
        size_t pos = cur(p)->pos;
        p->i++;
        n = mk_bin(p, op, pos, n, parse_concat(p));
    }
    return n;
}

static node *parse_compare(parser *p)
{
    node *first = parse_math1(p);
    if (!first)
        return NULL;
    node *c = NULL;
    size_t nops = 0;
    for (;;) {
        int op = is_op(p, "==") ? OP_EQ : is_op(p, "!=") ? OP_NE : is_op(p, "<") ? OP_LT : is_op(p, "<=") ? OP_LE
               : is_op(p, ">") ? OP_GT : is_op(p, ">=") ? OP_GE : is_kw(p, "in") ? OP_IN : -1;
        size_t pos = cur(p)->pos;
        if (op < 0 && is_kw(p, "not") && tok_is(peek(p, 1), TK_NAME, "in")) {
            op = OP_NOTIN;
            p->i++;
        }
        if (op < 0)
            break;
        p->i++;
        if (!c) {
            if (!(c = mk(p, N_CMP, pos)))
                return NULL;
            c->a = first;
        }
        int *ops = aalloc(p->a, (nops + 1) * sizeof *ops);
        if (!ops)
            return p_oom(p), NULL;
        if (nops)
            memcpy(ops, c->ops, nops * sizeof *ops);
        ops[nops++] = op;
        c->ops = ops;
        if (!nl_push(p, &c->args, parse_math1(p)))
            return NULL;
    }
    return c ? c : first;
}

static node *parse_not(parser *p)
{
    if (is_kw(p, "not")) {
        size_t pos = cur(p)->pos;
        p->i++;
        if (!enter(p))
            return NULL;
        node *n = mk(p, N_NOT, pos);
        if (n && !(n->a = parse_not(p)))
            n = NULL;
        p->depth--;
        return n;
    }
    return parse_compare(p);
}

/* A left-associative chain "x KW y KW z" of one keyword operator. */
static node *parse_kw_chain(parser *p, const char *kw, int kind, node *(*operand)(parser *))
{
    node *n = operand(p);
    while (n && is_kw(p, kw)) {
        node *op = mk(p, kind, cur(p)->pos);
        p->i++;
        if (!op)
            return NULL;
        op->a = n;
        if (!(op->b = operand(p)))
            return NULL;
        n = op;
    }
    return n;
}

static node *parse_and(parser *p) { return parse_kw_chain(p, "and", N_AND, parse_not); }

static node *parse_or(parser *p) { return parse_kw_chain(p, "or", N_OR, parse_and); }

static node *parse_expr(parser *p, bool condexpr)
{
    if (!enter(p))
        return NULL;
    node *n = parse_or(p);
    while (condexpr && n && is_kw(p, "if")) {
        node *c = mk(p, N_COND, cur(p)->pos);
        p->i++;
        if (!c)
            return NULL;
        c->b = n; /* value if true */
        if (!(c->a = parse_or(p)))
            return NULL;
        if (is_kw(p, "else")) {
            p->i++;
            if (!(c->c = parse_expr(p, true)))
                return NULL;
        }
        n = c;
    }
    p->depth--;
    return n;
}

/* expression, or a bare tuple "a, b" */
static node *parse_tuple(parser *p, bool condexpr)
{
    size_t pos = cur(p)->pos;
    node *n = parse_expr(p, condexpr);
    if (!n || !is_op(p, ","))
        return n;
    node *t = mk(p, N_TUPLE, pos);
    if (!t || !nl_push(p, &t->args, n))
        return NULL;
    while (is_op(p, ",")) {
        p->i++;
        if (cur(p)->t == TK_BEND || cur(p)->t == TK_VEND)
            break;
        if (!nl_push(p, &t->args, parse_expr(p, condexpr)))
            return NULL;
    }
    return t;
}

/* ---- statements */

static bool parse_body(parser *p, nlist *body, const char *const *ends, const char **which, size_t open_pos,
                       const char *open_name);

static bool expect_bend(parser *p)
{
    if (cur(p)->t != TK_BEND)
        return unexpected(p, "'%}'");
    p->i++;
    return true;
}

/* target names: a | a, b | (a, b) */
static bool parse_targets(parser *p, node *n)
{
    bool paren = is_op(p, "(");
    if (paren)
        p->i++;
    for (;;) {
        const tok *t = cur(p);
        if (t->t != TK_NAME)
            return unexpected(p, "a variable name");
        p->i++;
        if (!names_push(p, n, t->s, t->n))
            return false;
        if (!is_op(p, ","))
            break;
        p->i++;
    }
    if (paren && !expect_op(p, ")"))
        return false;
    return true;
}

static const char *const END_IF[] = {"elif", "else", "endif", NULL};
static const char *const END_FOR[] = {"else", "endfor", NULL};
static const char *const END_FOR2[] = {"endfor", NULL};
static const char *const END_SET[] = {"endset", NULL};
static const char *const END_MACRO[] = {"endmacro", NULL};
static const char *const END_GEN[] = {"endgeneration", NULL};
static const char *const END_FILTER[] = {"endfilter", NULL};

static node *parse_if(parser *p, size_t pos)
{
    node *n = mk(p, S_IF, pos);
    if (!n || !(n->a = parse_tuple(p, false)) || !expect_bend(p))
        return NULL;
    const char *which;
    if (!parse_body(p, &n->body, END_IF, &which, pos, "if"))
        return NULL;
    if (strcmp(which, "elif") == 0) {
        size_t epos = p->toks[p->i - 1].pos;
        node *e = parse_if(p, epos);
        if (!nl_push(p, &n->orelse, e))
            return NULL;
        return n;
    }
    if (strcmp(which, "else") == 0) {
        if (!expect_bend(p) || !parse_body(p, &n->orelse, END_IF + 2, &which, pos, "if"))
            return NULL;
    }
    return expect_bend(p) ? n : NULL;
}

static node *parse_stmt(parser *p)
{
    size_t pos = cur(p)->pos; /* the '{%' */
    p->i++;
    const tok *t = cur(p);
    if (t->t != TK_NAME)
        return unexpected(p, "a statement name"), NULL;
    p->i++;
    node *n;
    const char *which;
    if (tok_is(t, TK_NAME, "if"))
        return parse_if(p, pos);
    if (tok_is(t, TK_NAME, "for")) {
        if (!(n = mk(p, S_FOR, pos)) || !parse_targets(p, n))
            return NULL;
        if (!is_kw(p, "in"))
            return unexpected(p, "'in'"), NULL;
        p->i++;
        if (!(n->a = parse_tuple(p, false)))
            return NULL;
        if (is_kw(p, "if")) {
            p->i++;
            if (!(n->b = parse_expr(p, true)))
                return NULL;
        }
        if (is_kw(p, "recursive"))
            return perr(p, QRUN_ERR_UNSUPPORTED, cur(p)->pos, "recursive for loops are not supported"), NULL;
        if (!expect_bend(p) || !parse_body(p, &n->body, END_FOR, &which, pos, "for"))
            return NULL;
        if (strcmp(which, "else") == 0 &&
            (!expect_bend(p) || !parse_body(p, &n->orelse, END_FOR2, &which, pos, "for")))
            return NULL;
        return expect_bend(p) ? n : NULL;
    }
    if (tok_is(t, TK_NAME, "set")) {
        if (!(n = mk(p, S_SET, pos)))
            return NULL;
        if (cur(p)->t == TK_NAME && tok_is(peek(p, 1), TK_OP, ".")) {
            /* namespace attribute: ns.attr = expr */
            const tok *ns = cur(p), *at = peek(p, 2);
            if (at->t != TK_NAME) {
                p->i += 2;
                return unexpected(p, "an attribute name"), NULL;
            }
            if (!names_push(p, n, ns->s, ns->n) || !(n->name = astrndup(p->a, at->s, at->n)))
                return p_oom(p), NULL;
            p->i += 3;
        } else if (!parse_targets(p, n))
            return NULL;
        if (is_op(p, "=")) {
            p->i++;
            if (!(n->a = parse_tuple(p, true)))
                return NULL;
            return expect_bend(p) ? n : NULL;
        }
        if (n->name || n->nknames != 1)
            return unexpected(p, "'='"), NULL;
        n->kind = S_SETBLOCK;
        if (is_op(p, "|")) { /* {% set x | filter %}: a chain whose innermost subject is NULL */
            node *f = parse_filter_expr(p, mk(p, N_CONST, cur(p)->pos));
            if (!f)
                return NULL;
            node *in = f;
            while (in->a && in->a->kind != N_CONST)
                in = in->a;
            in->a = NULL;
            n->b = f;
        }
        if (!expect_bend(p) || !parse_body(p, &n->body, END_SET, &which, pos, "set"))
            return NULL;
        return expect_bend(p) ? n : NULL;
    }
    if (tok_is(t, TK_NAME, "macro")) {
        if (!(n = mk(p, S_MACRO, pos)))
            return NULL;
        const tok *nm = cur(p);
        if (nm->t != TK_NAME)
            return unexpected(p, "a macro name"), NULL;
        p->i++;
        if (!(n->name = astrndup(p->a, nm->s, nm->n)))
            return p_oom(p), NULL;
        if (!expect_op(p, "("))
            return NULL;
        while (!is_op(p, ")")) {
            if (n->nknames && !expect_op(p, ","))
                return NULL;
            const tok *a = cur(p);
            if (a->t != TK_NAME)
                return unexpected(p, "a parameter name"), NULL;
            p->i++;
            if (!names_push(p, n, a->s, a->n))
                return NULL;
            node *def = NULL;
            if (is_op(p, "=")) {
                p->i++;
                if (!(def = parse_expr(p, true)))
                    return NULL;
            }
            /* args holds one default (or a NULL-valued placeholder) per parameter */
            if (n->args.n == n->args.cap) {
                size_t c = n->args.cap ? n->args.cap * 2 : 4;
                node **v = aalloc(p->a, c * sizeof *v);
                if (!v)
                    return p_oom(p), NULL;
                if (n->args.n)
                    memcpy(v, n->args.v, n->args.n * sizeof *v);
                n->args.v = v;
                n->args.cap = c;
            }
            n->args.v[n->args.n++] = def;
        }
        p->i++;
        if (!expect_bend(p) || !parse_body(p, &n->body, END_MACRO, &which, pos, "macro"))
            return NULL;
        if (cur(p)->t == TK_NAME) /* {% endmacro name %} */
            p->i++;
        return expect_bend(p) ? n : NULL;
    }
    if (tok_is(t, TK_NAME, "break") || tok_is(t, TK_NAME, "continue")) {
        if (!(n = mk(p, t->s[0] == 'b' ? S_BREAK : S_CONTINUE, pos)))
            return NULL;
        return expect_bend(p) ? n : NULL;
    }
    if (tok_is(t, TK_NAME, "generation")) { /* transformers' assistant-mask tag */
        if (!(n = mk(p, S_BLOCK, pos)) || !expect_bend(p) ||
            !parse_body(p, &n->body, END_GEN, &which, pos, "generation"))
            return NULL;
        return expect_bend(p) ? n : NULL;
    }
    if (tok_is(t, TK_NAME, "filter")) {
        if (!(n = mk(p, S_FILTERBLOCK, pos)))
            return NULL;
        p->i--; /* re-read the filter name through parse_filter_expr: fake a '|' */
        const tok *fn = peek(p, 1);
        p->i++;
        if (fn->t != TK_NAME)
            return unexpected(p, "a filter name"), NULL;
        node *f = mk(p, N_FILTER, fn->pos);
        if (!f || !(f->name = astrndup(p->a, fn->s, fn->n)))
            return f ? (p_oom(p), NULL) : NULL;
        p->i++;
        if (is_op(p, "(") && !parse_call_args(p, f))
            return NULL;
        if (!(f = parse_filter_expr(p, f)))
            return NULL;
        n->b = f;
        if (!expect_bend(p) || !parse_body(p, &n->body, END_FILTER, &which, pos, "filter"))
            return NULL;
        return expect_bend(p) ? n : NULL;
    }
    static const char *const refused[] = {"include", "import", "from", "extends", "block", "call", "with",
                                          "autoescape", "do", "trans", "pluralize", NULL};
    for (int i = 0; refused[i]; i++)
        if (tok_is(t, TK_NAME, refused[i]))
            return perr(p, QRUN_ERR_UNSUPPORTED, t->pos, "the {%% %s %%} tag is not supported", refused[i]), NULL;
    return perr(p, QRUN_ERR_FORMAT, t->pos, "unknown tag '%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s), NULL;
}

/* Statements until a {% <one of ends> %} (its name is consumed, *which set;
 * the parser stands after the name) or, with ends == NULL, the end. */
static bool parse_body(parser *p, nlist *body, const char *const *ends, const char **which, size_t open_pos,
                       const char *open_name)
{
    if (!enter(p))
        return false;
    for (;;) {
        const tok *t = cur(p);
        if (t->t == TK_EOF) {
            if (!ends)
                break;
            return perr(p, QRUN_ERR_FORMAT, open_pos, "{%% %s %%} is never closed (expected {%% %s %%})", open_name,
                        ends[0] && ends[1] ? ends[1] : ends[0]);
        }
        if (t->t == TK_DATA) {
            node *n = mk(p, S_TEXT, t->pos);
            if (!n)
                return false;
            n->cv = v_str(t->s, t->n);
            if (!nl_push(p, body, n))
                return false;
            p->i++;
            continue;
        }
        if (t->t == TK_VBEGIN) {
            node *n = mk(p, S_OUT, t->pos);
            p->i++;
            if (!n || !(n->a = parse_tuple(p, true)))
                return false;
            if (cur(p)->t != TK_VEND)
                return unexpected(p, "'}}'");
            p->i++;
            if (!nl_push(p, body, n))
                return false;
            continue;
        }
        if (t->t == TK_BBEGIN) {
            const tok *nm = peek(p, 1);
            if (nm->t == TK_NAME) {
                bool matched = false;
                for (int i = 0; ends && ends[i]; i++)
                    if (tok_is(nm, TK_NAME, ends[i])) {
                        *which = ends[i];
                        matched = true;
                    }
                if (matched) {
                    p->i += 2;
                    break;
                }
                static const char *const closers[] = {"endif", "endfor", "endset", "endmacro", "endgeneration",
                                                      "endfilter", "elif", "else", "endraw", NULL};
                for (int i = 0; closers[i]; i++)
                    if (tok_is(nm, TK_NAME, closers[i]))
                        return open_name ? perr(p, QRUN_ERR_FORMAT, nm->pos, "unexpected {%% %s %%} inside {%% %s %%}",
                                                closers[i], open_name)
                                         : perr(p, QRUN_ERR_FORMAT, nm->pos, "unexpected {%% %s %%}", closers[i]);
            }
            if (!nl_push(p, body, parse_stmt(p)))
                return false;
            continue;
        }
        char b[64];
        return perr(p, QRUN_ERR_FORMAT, t->pos, "unexpected %s", tok_desc(t, b, sizeof b));
    }
    p->depth--;
    return true;
}

/* ------------------------------------------------------------ interpreter */

struct chat_template {
    arena a;
    char *src;
    size_t len;
    nlist body;
};

typedef struct scope {
    struct scope *parent;
    size_t n, cap;
    const char **names;
    value *vals;
} scope;

typedef struct rctx {
    const chat_template *t;
    arena a;
    qerr *err;
    sbuf out;
    uint64_t steps, max_steps;
    int depth, max_depth;
    int loop_depth;
    const struct tm *now;
    scope *root;
    bool failed;
} rctx;

enum { X_OK, X_BREAK, X_CONT, X_ERR };

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static bool rerr(rctx *r, const node *at, qrun_status code, const char *fmt, ...)
{
    if (r->failed)
        return false;
    r->failed = true;
    char msg[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (at) {
        int l, c;
        pos_to_lc(r->t->src, r->t->len, at->pos, &l, &c);
        qerr_set(r->err, code, "chat template line %d, column %d: %s", l, c, msg);
    } else
        qerr_set(r->err, code, "chat template: %s", msg);
    return false;
}

static bool r_oom(rctx *r, const node *at)
{
    if (!r->a.limit_hit)
        return rerr(r, at, QRUN_ERR_NO_MEMORY, "out of memory");
    return rerr(r, at, QRUN_ERR_FORMAT, "render needs more than its memory limit of %zu bytes", r->a.limit);
}

static void *ralloc(rctx *r, const node *at, size_t n)
{
    void *p = aalloc(&r->a, n);
    if (!p)
        r_oom(r, at);
    return p;
}

static bool step(rctx *r, const node *at)
{
    if (++r->steps > r->max_steps)
        return rerr(r, at, QRUN_ERR_FORMAT, "template ran more than %llu steps (loop or recursion limit)",
                    (unsigned long long)r->max_steps);
    return true;
}

static bool undef_err(rctx *r, const node *at, const value *v)
{
    const node *w = v->u.un;
    if (w && w->kind == N_NAME)
        return rerr(r, at, QRUN_ERR_FORMAT, "'%s' is undefined", w->name);
    if (w && w->kind == N_ATTR)
        return rerr(r, at, QRUN_ERR_FORMAT, "attribute '%s' is undefined", w->name);
    return rerr(r, at, QRUN_ERR_FORMAT, "use of an undefined value");
}

/* ---- scopes */

static value *lookup(scope *s, const char *name)
{
    for (; s; s = s->parent)
        for (size_t i = s->n; i-- > 0;)
            if (strcmp(s->names[i], name) == 0)
                return &s->vals[i];
    return NULL;
}

static bool scope_set(rctx *r, const node *at, scope *s, const char *name, value v)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->names[i], name) == 0) {
            s->vals[i] = v;
            return true;
        }
    if (s->n == s->cap) {
        size_t c = s->cap ? s->cap * 2 : 8;
        const char **nn = ralloc(r, at, c * sizeof *nn);
        value *nv = ralloc(r, at, c * sizeof *nv);
        if (!nn || !nv)
            return false;
        if (s->n) {
            memcpy(nn, s->names, s->n * sizeof *nn);
            memcpy(nv, s->vals, s->n * sizeof *nv);
        }
        s->names = nn;
        s->vals = nv;
        s->cap = c;
    }
    s->names[s->n] = name;
    s->vals[s->n++] = v;
    return true;
}

/* ---- containers */

static vlist *mk_list(rctx *r, const node *at, size_t n)
{
    vlist *l = ralloc(r, at, sizeof *l);
    if (!l)
        return NULL;
    l->n = n;
    l->tuple = false;
    l->v = n ? ralloc(r, at, n * sizeof(value)) : NULL;
    if (n && !l->v)
        return NULL;
    return l;
}

static value v_list(vlist *l)
{
    value v = {.t = V_LIST};
    v.u.l = l;
    return v;
}

static vdict *mk_dict(rctx *r, const node *at)
{
    vdict *d = ralloc(r, at, sizeof *d);
    if (d)
        memset(d, 0, sizeof *d);
    return d;
}

static bool veq(const value *a, const value *b);

static value *dict_find(const vdict *d, const value *k)
{
    for (size_t i = 0; i < d->n; i++)
        if (veq(&d->k[i], k))
            return &d->v[i];
    return NULL;
}

static value *dict_find_s(const vdict *d, const char *k, size_t kn)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == V_STR && d->k[i].u.s.n == kn && memcmp(d->k[i].u.s.p, k, kn) == 0)
            return &d->v[i];
    return NULL;
}

static bool dict_set(rctx *r, const node *at, vdict *d, value k, value v)
{
    value *e = dict_find(d, &k);
    if (e) {
        *e = v;
        return true;
    }
    if (d->n == d->cap) {
        size_t c = d->cap ? d->cap * 2 : 8;
        value *nk = ralloc(r, at, c * sizeof *nk), *nv = ralloc(r, at, c * sizeof *nv);
        if (!nk || !nv)
            return false;
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof *nk);
            memcpy(nv, d->v, d->n * sizeof *nv);
        }
        d->k = nk;
        d->v = nv;
        d->cap = c;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
    return true;
}

/* ---- strings */

static bool str_of(rctx *r, const node *at, const value *v, value *out)
{
    if (v->t == V_STR) {
        *out = *v;
        return true;
    }
    sbuf b = {.limit = r->a.limit};
    sb_str(&b, v, false);
    if (b.over) {
        free(b.p);
        return r_oom(r, at);
    }
    char *p = b.n ? astrndup(&r->a, b.p, b.n) : "";
    size_t n = b.n;
    free(b.p);
    if (!p)
        return r_oom(r, at);
    *out = v_str(p, n);
    return true;
}

static bool sb_to_value(rctx *r, const node *at, sbuf *b, value *out)
{
    if (b->over) {
        free(b->p);
        return r_oom(r, at);
    }
    char *p = astrndup(&r->a, b->p ? b->p : "", b->n);
    size_t n = b->n;
    free(b->p);
    if (!p)
        return r_oom(r, at);
    *out = v_str(p, n);
    return true;
}

/* Byte offsets of the code points of s (n+1 entries, last = len). */
static size_t *cp_offsets(rctx *r, const node *at, const char *s, size_t len, size_t *count)
{
    size_t n = u8_count(s, len);
    size_t *o = ralloc(r, at, (n + 1) * sizeof *o);
    if (!o)
        return NULL;
    size_t i = 0, k = 0;
    while (i < len) {
        o[k++] = i;
        i += u8_len((const unsigned char *)s + i, len - i);
    }
    o[k] = len;
    *count = n;
    return o;
}

/* ---- comparison and equality */

static bool veq(const value *a, const value *b)
{
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b))
            return int_of(a) == int_of(b);
        return num_f(a) == num_f(b);
    }
    if (a->t != b->t)
        return false;
    switch (a->t) {
    case V_UNDEF:
    case V_NONE: return true;
    case V_STR: return a->u.s.n == b->u.s.n && memcmp(a->u.s.p, b->u.s.p, a->u.s.n) == 0;
    case V_LIST:
        if (a->u.l->n != b->u.l->n || a->u.l->tuple != b->u.l->tuple)
            return false;
        for (size_t i = 0; i < a->u.l->n; i++)
            if (!veq(&a->u.l->v[i], &b->u.l->v[i]))
                return false;
        return true;
    case V_DICT:
        if (a->u.d->n != b->u.d->n)
            return false;
        for (size_t i = 0; i < a->u.d->n; i++) {
            const value *o = dict_find(b->u.d, &a->u.d->k[i]);
            if (!o || !veq(&a->u.d->v[i], o))
                return false;
        }
        return true;
    case V_NS: return a->u.d == b->u.d;
    case V_LOOP: return a->u.lp == b->u.lp;
    case V_FUNC: return a->u.fn == b->u.fn;
    case V_MACRO: return a->u.m == b->u.m;
    default: return false;
    }
}

/* <0, 0, >0; false when the types do not order */
static bool vcmp(const value *a, const value *b, int *res)
{
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) {
            int64_t x = int_of(a), y = int_of(b);
            *res = (x > y) - (x < y);
        } else {
            double x = num_f(a), y = num_f(b);
            if (isnan(x) || isnan(y)) {
                *res = 2; /* unordered: every comparison false except != */
                return true;
            }
            *res = (x > y) - (x < y);
        }
        return true;
    }
    if (a->t == V_STR && b->t == V_STR) {
        size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        int c = n ? memcmp(a->u.s.p, b->u.s.p, n) : 0;
        *res = c ? (c > 0 ? 1 : -1) : (a->u.s.n > b->u.s.n) - (a->u.s.n < b->u.s.n);
        return true;
    }
    if (a->t == V_LIST && b->t == V_LIST) {
        size_t n = a->u.l->n < b->u.l->n ? a->u.l->n : b->u.l->n;
        for (size_t i = 0; i < n; i++) {
            if (veq(&a->u.l->v[i], &b->u.l->v[i]))
                continue;
            return vcmp(&a->u.l->v[i], &b->u.l->v[i], res);
        }
        *res = (a->u.l->n > b->u.l->n) - (a->u.l->n < b->u.l->n);
        return true;
    }
    return false;
}

static bool contains(rctx *r, const node *at, const value *item, const value *c, bool *res)
{
    switch (c->t) {
    case V_UNDEF: *res = false; return true;
    case V_STR:
        if (item->t != V_STR)
            return rerr(r, at, QRUN_ERR_FORMAT, "'in <string>' requires a string on the left, not %s", type_name(item));
        if (item->u.s.n == 0) {
            *res = true;
            return true;
        }
        *res = false;
        for (size_t i = 0; i + item->u.s.n <= c->u.s.n; i++)
            if (memcmp(c->u.s.p + i, item->u.s.p, item->u.s.n) == 0) {
                *res = true;
                break;
            }
        return true;
    case V_LIST:
        *res = false;
        r->steps += c->u.l->n / 16;
        if (!step(r, at))
            return false;
        for (size_t i = 0; i < c->u.l->n && !*res; i++)
            *res = veq(&c->u.l->v[i], item);
        return true;
    case V_DICT:
    case V_NS: *res = dict_find(c->u.d, item) != NULL; return true;
    default: return rerr(r, at, QRUN_ERR_FORMAT, "argument of type '%s' is not iterable", type_name(c));
    }
}

/* The items a for loop or filter iterates over. */
static bool iter_of(rctx *r, const node *at, const value *v, const vlist **out)
{
    static const vlist empty = {0, NULL, false};
    switch (v->t) {
    case V_UNDEF: *out = &empty; return true;
    case V_LIST: *out = v->u.l; return true;
    case V_DICT: {
        vlist *l = mk_list(r, at, v->u.d->n);
        if (!l)
            return false;
        for (size_t i = 0; i < v->u.d->n; i++)
            l->v[i] = v->u.d->k[i];
        *out = l;
        return true;
    }
    case V_STR: {
        size_t n, *o = cp_offsets(r, at, v->u.s.p, v->u.s.n, &n);
        vlist *l = o ? mk_list(r, at, n) : NULL;
        if (!l)
            return false;
        for (size_t i = 0; i < n; i++)
            l->v[i] = v_str(v->u.s.p + o[i], o[i + 1] - o[i]);
        *out = l;
        return true;
    }
    default: return rerr(r, at, QRUN_ERR_FORMAT, "'%s' object is not iterable", type_name(v));
    }
}

/* ---- attribute and item access */

static bool loop_attr(rctx *r, const node *at, const loopst *lp, const char *name, value *out)
{
    (void)r;
    (void)at;
    int64_t i = lp->idx, n = lp->len;
    if (!strcmp(name, "index"))
        *out = v_int(i + 1);
    else if (!strcmp(name, "index0"))
        *out = v_int(i);
    else if (!strcmp(name, "revindex"))
        *out = v_int(n - i);
    else if (!strcmp(name, "revindex0"))
        *out = v_int(n - i - 1);
    else if (!strcmp(name, "first"))
        *out = v_bool(i == 0);
    else if (!strcmp(name, "last"))
        *out = v_bool(i == n - 1);
    else if (!strcmp(name, "length"))
        *out = v_int(n);
    else if (!strcmp(name, "depth"))
        *out = v_int(1);
    else if (!strcmp(name, "depth0"))
        *out = v_int(0);
    else if (!strcmp(name, "previtem"))
        *out = i > 0 ? lp->items->v[i - 1] : v_undef(at);
    else if (!strcmp(name, "nextitem"))
        *out = i + 1 < n ? lp->items->v[i + 1] : v_undef(at);
    else
        *out = v_undef(at);
    return true;
}

static bool get_attr(rctx *r, const node *at, const value *obj, const char *name, value *out)
{
    switch (obj->t) {
    case V_UNDEF: return undef_err(r, at, obj);
    case V_DICT:
    case V_NS: {
        const value *v = dict_find_s(obj->u.d, name, strlen(name));
        *out = v ? *v : v_undef(at);
        return true;
    }
    case V_LOOP: return loop_attr(r, at, obj->u.lp, name, out);
    default: *out = v_undef(at); return true;
    }
}

static bool get_item(rctx *r, const node *at, const value *obj, const value *key, value *out)
{
    switch (obj->t) {
    case V_UNDEF: return undef_err(r, at, obj);
    case V_LIST:
        if (is_intlike(key)) {
            int64_t i = int_of(key), n = (int64_t)obj->u.l->n;
            if (i < 0)
                i += n;
            *out = i >= 0 && i < n ? obj->u.l->v[i] : v_undef(at);
        } else
            *out = v_undef(at);
        return true;
    case V_STR:
        if (is_intlike(key)) {
            size_t n, *o = cp_offsets(r, at, obj->u.s.p, obj->u.s.n, &n);
            if (!o)
                return false;
            int64_t i = int_of(key);
            if (i < 0)
                i += (int64_t)n;
            *out = i >= 0 && i < (int64_t)n ? v_str(obj->u.s.p + o[i], o[i + 1] - o[i]) : v_undef(at);
        } else
            *out = v_undef(at);
        return true;
    case V_DICT:
    case V_NS: {
        const value *v = dict_find(obj->u.d, key);
        *out = v ? *v : v_undef(at);
        return true;
    }
    case V_LOOP:
        if (key->t == V_STR) {
            char nm[32];
            snprintf(nm, sizeof nm, "%.*s", (int)(key->u.s.n < 31 ? key->u.s.n : 31), key->u.s.p);
            return loop_attr(r, at, obj->u.lp, nm, out);
        }
        *out = v_undef(at);
        return true;
    default: *out = v_undef(at); return true;
    }
}

static bool slice_index(rctx *r, const node *at, const value *v, int64_t *out, bool *given)
{
    *given = false;
    if (v->t == V_UNDEF)
        return undef_err(r, at, v);
    if (v->t == V_NONE)
        return true;
    if (!is_intlike(v))
        return rerr(r, at, QRUN_ERR_FORMAT, "slice indices must be integers or none, not %s", type_name(v));
    *out = int_of(v);
    *given = true;
    return true;
}

static bool do_slice(rctx *r, const node *at, const value *obj, const value *lo, const value *hi, const value *st,
                     value *out)
{
    if (obj->t == V_UNDEF)
        return undef_err(r, at, obj);
    if (obj->t != V_LIST && obj->t != V_STR)
        return rerr(r, at, QRUN_ERR_FORMAT, "'%s' object cannot be sliced", type_name(obj));
    int64_t a = 0, b = 0, s = 1;
    bool ga, gb, gs;
    if (!slice_index(r, at, lo, &a, &ga) || !slice_index(r, at, hi, &b, &gb) || !slice_index(r, at, st, &s, &gs))
        return false;
    if (s == 0)
        return rerr(r, at, QRUN_ERR_FORMAT, "slice step cannot be zero");
    size_t len, *off = NULL;
    if (obj->t == V_LIST)
        len = obj->u.l->n;
    else if (!(off = cp_offsets(r, at, obj->u.s.p, obj->u.s.n, &len)))
        return false;
    int64_t n = (int64_t)len;
    /* Python's slice.indices() */
    if (!ga)
        a = s > 0 ? 0 : n - 1;
    else {
        if (a < 0)
            a += n;
        if (a < 0)
            a = s > 0 ? 0 : -1;
        if (a >= n)
            a = s > 0 ? n : n - 1;
    }
    if (!gb)
        b = s > 0 ? n : -1;
    else {
        if (b < 0)
            b += n;
        if (b < 0)
            b = s > 0 ? 0 : -1;
        if (b >= n)
            b = s > 0 ? n : n - 1;
    }
    int64_t cnt = 0;
    if (s > 0 && b > a)
        cnt = (b - a + s - 1) / s;
    else if (s < 0 && a > b)
        cnt = (a - b + (-s) - 1) / (-s);
    if (obj->t == V_LIST) {
        vlist *l = mk_list(r, at, (size_t)cnt);
        if (!l)
            return false;
        for (int64_t i = 0; i < cnt; i++)
            l->v[i] = obj->u.l->v[a + i * s];
        l->tuple = obj->u.l->tuple;
        *out = v_list(l);
        return true;
    }
    if (s == 1) {
        *out = v_str(obj->u.s.p + off[a], off[a + cnt] - off[a]);
        return true;
    }
    char *p = ralloc(r, at, obj->u.s.n + 1);
    if (!p)
        return false;
    size_t o = 0;
    for (int64_t i = 0; i < cnt; i++) {
        int64_t k = a + i * s;
        memcpy(p + o, obj->u.s.p + off[k], off[k + 1] - off[k]);
        o += off[k + 1] - off[k];
    }
    p[o] = '\0';
    *out = v_str(p, o);
    return true;
}

/* ---- arithmetic */

static bool arith(rctx *r, const node *at, int op, const value *a, const value *b, value *out)
{
    static const char *const opname[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (a->t == V_UNDEF)
        return undef_err(r, at, a);
    if (b->t == V_UNDEF)
        return undef_err(r, at, b);
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b) && op != OP_DIV) {
            int64_t x = int_of(a), y = int_of(b), z = 0;
            bool ovf = false;
            switch (op) {
            case OP_ADD: ovf = __builtin_add_overflow(x, y, &z); break;
            case OP_SUB: ovf = __builtin_sub_overflow(x, y, &z); break;
            case OP_MUL: ovf = __builtin_mul_overflow(x, y, &z); break;
            case OP_FLOORDIV:
            case OP_MOD:
                if (y == 0)
                    return rerr(r, at, QRUN_ERR_FORMAT, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1) {
                    ovf = op == OP_FLOORDIV;
                    z = 0;
                    break;
                }
                z = op == OP_FLOORDIV ? x / y : x % y;
                if (op == OP_FLOORDIV && (x % y != 0) && ((x < 0) != (y < 0)))
                    z--;
                if (op == OP_MOD && z != 0 && ((z < 0) != (y < 0)))
                    z += y;
                break;
            case OP_POW:
                if (y < 0) {
                    *out = v_float(pow((double)x, (double)y));
                    return true;
                }
                if (x == 0 || x == 1)
                    z = (x == 0 && y > 0) ? 0 : 1;
                else if (x == -1)
                    z = (y % 2) ? -1 : 1;
                else { /* |x| >= 2 overflows within 64 steps */
                    z = 1;
                    for (int64_t i = 0; i < y && !ovf; i++)
                        ovf = __builtin_mul_overflow(z, x, &z);
                }
                break;
            }
            if (ovf)
                return rerr(r, at, QRUN_ERR_UNSUPPORTED, "integer overflow in '%s' (64-bit integers only)", opname[op]);
            *out = v_int(z);
            return true;
        }
        double x = num_f(a), y = num_f(b), z = 0;
        switch (op) {
        case OP_ADD: z = x + y; break;
        case OP_SUB: z = x - y; break;
        case OP_MUL: z = x * y; break;
        case OP_DIV:
        case OP_FLOORDIV:
        case OP_MOD:
            if (y == 0)
                return rerr(r, at, QRUN_ERR_FORMAT, "division by zero");
            if (op == OP_DIV)
                z = x / y;
            else if (op == OP_FLOORDIV)
                z = floor(x / y);
            else {
                z = fmod(x, y);
                if (z != 0 && ((z < 0) != (y < 0)))
                    z += y;
            }
            break;
        case OP_POW: z = pow(x, y); break;
        }
        *out = v_float(z);
        return true;
    }
    if (op == OP_ADD && a->t == V_STR && b->t == V_STR) {
        size_t n = a->u.s.n + b->u.s.n;
        char *p = ralloc(r, at, n + 1);
        if (!p)
            return false;
        memcpy(p, a->u.s.p, a->u.s.n);
        memcpy(p + a->u.s.n, b->u.s.p, b->u.s.n);
        p[n] = '\0';
        *out = v_str(p, n);
        return true;
    }
    if (op == OP_ADD && a->t == V_LIST && b->t == V_LIST) {
        vlist *l = mk_list(r, at, a->u.l->n + b->u.l->n);
        if (!l)
            return false;
        for (size_t i = 0; i < a->u.l->n; i++)
            l->v[i] = a->u.l->v[i];
        for (size_t i = 0; i < b->u.l->n; i++)
            l->v[a->u.l->n + i] = b->u.l->v[i];
        l->tuple = a->u.l->tuple && b->u.l->tuple;
        *out = v_list(l);
        return true;
    }
    if (op == OP_MUL && ((a->t == V_STR || a->t == V_LIST) && is_intlike(b))) {
        const value *seq = a;
        int64_t k = int_of(b);
        if (k < 0)
            k = 0;
        size_t unit = seq->t == V_STR ? seq->u.s.n : seq->u.l->n * sizeof(value);
        if (unit && (uint64_t)k > (r->a.limit / unit) + 1)
            return rerr(r, at, QRUN_ERR_FORMAT, "repetition result exceeds the memory limit of %zu bytes", r->a.limit);
        if (seq->t == V_STR) {
            size_t n = seq->u.s.n * (size_t)k;
            char *p = ralloc(r, at, n + 1);
            if (!p)
                return false;
            for (int64_t i = 0; i < k; i++)
                memcpy(p + (size_t)i * seq->u.s.n, seq->u.s.p, seq->u.s.n);
            p[n] = '\0';
            *out = v_str(p, n);
        } else {
            vlist *l = mk_list(r, at, seq->u.l->n * (size_t)k);
            if (!l)
                return false;
            for (size_t i = 0; i < l->n; i++)
                l->v[i] = seq->u.l->v[i % seq->u.l->n];
            *out = v_list(l);
        }
        return true;
    }
    if (op == OP_MUL && is_intlike(a) && (b->t == V_STR || b->t == V_LIST))
        return arith(r, at, op, b, a, out);
    if (op == OP_MOD && a->t == V_STR)
        return rerr(r, at, QRUN_ERR_UNSUPPORTED, "printf-style string formatting with '%%' is not supported");
    return rerr(r, at, QRUN_ERR_FORMAT, "unsupported operand types for %s: '%s' and '%s'", opname[op], type_name(a),
                type_name(b));
}

/* ---- JSON (transformers' tojson: json.dumps, non-ASCII kept by default) */

typedef struct jsonopts {
    const char *indent; /* NULL: one line */
    const char *item_sep, *key_sep;
    bool sort_keys, ensure_ascii;
} jsonopts;

static void json_str(sbuf *b, const char *s, size_t n, bool ensure_ascii)
{
    sb_putc(b, '"');
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        char e[16];
        if (c == '"' || c == '\\') {
            e[0] = '\\';
            e[1] = (char)c;
            sb_put(b, e, 2);
        } else if (c == '\n')
            sb_puts(b, "\\n");
        else if (c == '\r')
            sb_puts(b, "\\r");
        else if (c == '\t')
            sb_puts(b, "\\t");
        else if (c == '\b')
            sb_puts(b, "\\b");
        else if (c == '\f')
            sb_puts(b, "\\f");
        else if (c < 0x20) {
            snprintf(e, sizeof e, "\\u%04x", c);
            sb_puts(b, e);
        } else if (c >= 0x80 && ensure_ascii) {
            size_t k = u8_len((const unsigned char *)s + i, n - i);
            uint32_t cp = u8_decode((const unsigned char *)s + i, k);
            if (k == 1)
                cp = 0xFFFD;
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(e, sizeof e, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else
                snprintf(e, sizeof e, "\\u%04x", cp);
            sb_puts(b, e);
            i += k;
            continue;
        } else
            sb_putc(b, (char)c);
        i++;
    }
    sb_putc(b, '"');
}

static void json_nl(sbuf *b, const jsonopts *o, int level)
{
    sb_putc(b, '\n');
    for (int i = 0; i < level; i++)
        sb_puts(b, o->indent);
}

static bool json_val(rctx *r, const node *at, sbuf *b, const value *v, const jsonopts *o, int level)
{
    char t[64];
    if (level > 200)
        return rerr(r, at, QRUN_ERR_FORMAT, "tojson: value nested too deeply");
    switch (v->t) {
    case V_NONE: sb_puts(b, "null"); return true;
    case V_BOOL: sb_puts(b, v->u.b ? "true" : "false"); return true;
    case V_INT:
        snprintf(t, sizeof t, "%lld", (long long)v->u.i);
        sb_puts(b, t);
        return true;
    case V_FLOAT:
        if (isnan(v->u.f))
            sb_puts(b, "NaN");
        else if (isinf(v->u.f))
            sb_puts(b, v->u.f < 0 ? "-Infinity" : "Infinity");
        else {
            fmt_float(v->u.f, t, sizeof t);
            sb_puts(b, t);
        }
        return true;
    case V_STR: json_str(b, v->u.s.p, v->u.s.n, o->ensure_ascii); return true;
    case V_LIST:
        if (v->u.l->n == 0) {
            sb_puts(b, "[]");
            return true;
        }
        sb_putc(b, '[');
        for (size_t i = 0; i < v->u.l->n; i++) {
            if (i)
                sb_puts(b, o->item_sep);
            if (o->indent)
                json_nl(b, o, level + 1);
            if (!json_val(r, at, b, &v->u.l->v[i], o, level + 1))
                return false;
        }
        if (o->indent)
            json_nl(b, o, level);
        sb_putc(b, ']');
        return true;
    case V_DICT: {
        const vdict *d = v->u.d;
        if (d->n == 0) {
            sb_puts(b, "{}");
            return true;
        }
        size_t *ord = ralloc(r, at, d->n * sizeof *ord);
        if (!ord)
            return false;
        for (size_t i = 0; i < d->n; i++)
            ord[i] = i;
        if (o->sort_keys) /* insertion sort by key string; keys must be strings */
            for (size_t i = 1; i < d->n; i++) {
                size_t x = ord[i], j = i;
                while (j > 0) {
                    int c;
                    if (!vcmp(&d->k[ord[j - 1]], &d->k[x], &c))
                        return rerr(r, at, QRUN_ERR_FORMAT, "tojson: cannot sort keys of mixed types");
                    if (c <= 0)
                        break;
                    ord[j] = ord[j - 1];
                    j--;
                }
                ord[j] = x;
            }
        sb_putc(b, '{');
        for (size_t i = 0; i < d->n; i++) {
            const value *k = &d->k[ord[i]];
            if (i)
                sb_puts(b, o->item_sep);
            if (o->indent)
                json_nl(b, o, level + 1);
            if (k->t == V_STR)
                json_str(b, k->u.s.p, k->u.s.n, o->ensure_ascii);
            else if (k->t == V_INT || k->t == V_FLOAT || k->t == V_BOOL || k->t == V_NONE) {
                sbuf kb = {.limit = 64};
                if (!json_val(r, at, &kb, k, o, level + 1)) {
                    free(kb.p);
                    return false;
                }
                json_str(b, kb.p ? kb.p : "", kb.n, false);
                free(kb.p);
            } else
                return rerr(r, at, QRUN_ERR_FORMAT, "tojson: keys must be str, int, float, bool or None");
            sb_puts(b, o->key_sep);
            if (!json_val(r, at, b, &d->v[ord[i]], o, level + 1))
                return false;
        }
        if (o->indent)
            json_nl(b, o, level);
        sb_putc(b, '}');
        return true;
    }
    default: return rerr(r, at, QRUN_ERR_FORMAT, "tojson: object of type %s is not JSON serializable", type_name(v));
    }
}

/* ---- calls: arguments */

typedef struct cargs {
    const value *pos;
    size_t npos;
    const char *const *kn;
    const value *kw;
    size_t nkw;
} cargs;

/* argument `idx` (positional) or `name` (keyword), or NULL */
static const value *arg(const cargs *a, size_t idx, const char *name)
{
    if (idx < a->npos)
        return &a->pos[idx];
    for (size_t i = 0; name && i < a->nkw; i++)
        if (strcmp(a->kn[i], name) == 0)
            return &a->kw[i];
    return NULL;
}

static bool want_str(rctx *r, const node *at, const value *v, const char *what, value *out)
{
    if (!v || v->t != V_STR)
        return rerr(r, at, QRUN_ERR_FORMAT, "%s must be a string, not %s", what, v ? type_name(v) : "missing");
    *out = *v;
    return true;
}

/* ---- string helpers shared by filters and methods */

/* strip: which 1 = left, 2 = right, 3 = both; chars NULL = whitespace */
static value str_strip(const value *s, int which, const value *chars)
{
    const char *p = s->u.s.p;
    size_t a = 0, b = s->u.s.n, k;
    for (;;) {
        if (!(which & 1) || a >= b)
            break;
        bool hit;
        if (chars) {
            k = u8_len((const unsigned char *)p + a, b - a);
            hit = false;
            for (size_t j = 0; j < chars->u.s.n;) {
                size_t kk = u8_len((const unsigned char *)chars->u.s.p + j, chars->u.s.n - j);
                if (kk == k && memcmp(chars->u.s.p + j, p + a, k) == 0)
                    hit = true;
                j += kk;
            }
        } else
            hit = space_at(p, b, a, &k);
        if (!hit)
            break;
        a += k;
    }
    while ((which & 2) && b > a) {
        size_t st = u8_prev(p, a, b);
        bool hit;
        if (chars) {
            hit = false;
            for (size_t j = 0; j < chars->u.s.n;) {
                size_t kk = u8_len((const unsigned char *)chars->u.s.p + j, chars->u.s.n - j);
                if (kk == b - st && memcmp(chars->u.s.p + j, p + st, kk) == 0)
                    hit = true;
                j += kk;
            }
        } else
            hit = space_at(p, b, st, &k);
        if (!hit)
            break;
        b = st;
    }
    return v_str(p + a, b - a);
}

/* mode 0 lower, 1 upper, 2 capitalize, 3 Jinja's |title (words begin after
 * whitespace or -({[<), 4 Python's str.title() (after any non-letter);
 * ASCII letters only */
static bool str_case(rctx *r, const node *at, const value *s, int mode, value *out)
{
    char *p = ralloc(r, at, s->u.s.n + 1);
    if (!p)
        return false;
    bool word_start = true;
    for (size_t i = 0; i < s->u.s.n; i++) {
        unsigned char c = (unsigned char)s->u.s.p[i];
        if (mode == 0 || (mode == 2 && i > 0) || (mode >= 3 && !word_start))
            c = (unsigned char)tolower(c);
        else if (mode == 1 || (mode == 2 && i == 0) || (mode >= 3 && word_start))
            c = (unsigned char)toupper(c);
        if (mode == 3)
            word_start = is_ws((char)c) || (c >= 0x1C && c <= 0x1F) || strchr("-({[<", c) != NULL;
        else if (mode == 4)
            word_start = !isalpha(c) && c < 0x80;
        p[i] = (char)c;
    }
    p[s->u.s.n] = '\0';
    *out = v_str(p, s->u.s.n);
    return true;
}

static bool str_replace(rctx *r, const node *at, const value *s, const value *old, const value *nw, int64_t count,
                        value *out)
{
    sbuf b = {.limit = r->a.limit};
    size_t i = 0, done = 0;
    if (old->u.s.n == 0) {
        /* Python inserts `new` before every code point and at the end */
        while (i <= s->u.s.n) {
            if (count < 0 || (int64_t)done < count) {
                sb_put(&b, nw->u.s.p, nw->u.s.n);
                done++;
            }
            if (i == s->u.s.n)
                break;
            size_t k = u8_len((const unsigned char *)s->u.s.p + i, s->u.s.n - i);
            sb_put(&b, s->u.s.p + i, k);
            i += k;
        }
        return sb_to_value(r, at, &b, out);
    }
    while (i < s->u.s.n) {
        if ((count < 0 || (int64_t)done < count) && i + old->u.s.n <= s->u.s.n &&
            memcmp(s->u.s.p + i, old->u.s.p, old->u.s.n) == 0) {
            sb_put(&b, nw->u.s.p, nw->u.s.n);
            i += old->u.s.n;
            done++;
        } else
            sb_putc(&b, s->u.s.p[i++]);
    }
    return sb_to_value(r, at, &b, out);
}

static bool str_split(rctx *r, const node *at, const value *s, const value *sep, int64_t maxsplit, value *out)
{
    size_t cap = 8, n = 0;
    value *items = ralloc(r, at, cap * sizeof *items);
    if (!items)
        return false;
    const char *p = s->u.s.p;
    size_t len = s->u.s.n, i = 0;
#define PUSH(ptr, l)                                                                                               \
    do {                                                                                                           \
        if (n == cap) {                                                                                            \
            value *ni = ralloc(r, at, 2 * cap * sizeof *ni);                                                       \
            if (!ni)                                                                                               \
                return false;                                                                                      \
            memcpy(ni, items, n * sizeof *ni);                                                                     \
            items = ni;                                                                                            \
            cap *= 2;                                                                                              \
        }                                                                                                          \
        items[n++] = v_str((ptr), (l));                                                                            \
    } while (0)
    if (!sep || sep->t == V_NONE) {
        size_t k;
        for (;;) {
            while (i < len && space_at(p, len, i, &k))
                i += k;
            if (i >= len)
                break;
            if (maxsplit >= 0 && (int64_t)n >= maxsplit) {
                size_t e = len;
                while (e > i) { /* rstrip the remainder */
                    size_t st = u8_prev(p, i, e);
                    if (!space_at(p, e, st, &k))
                        break;
                    e = st;
                }
                PUSH(p + i, e - i);
                break;
            }
            size_t st = i;
            while (i < len && !space_at(p, len, i, &k))
                i += k;
            PUSH(p + st, i - st);
        }
    } else {
        if (sep->t != V_STR)
            return rerr(r, at, QRUN_ERR_FORMAT, "split separator must be a string");
        if (sep->u.s.n == 0)
            return rerr(r, at, QRUN_ERR_FORMAT, "empty separator");
        size_t st = 0;
        while (i + sep->u.s.n <= len) {
            if ((maxsplit < 0 || (int64_t)n < maxsplit) && memcmp(p + i, sep->u.s.p, sep->u.s.n) == 0) {
                PUSH(p + st, i - st);
                i += sep->u.s.n;
                st = i;
            } else
                i++;
        }
        PUSH(p + st, len - st);
    }
#undef PUSH
    vlist *l = ralloc(r, at, sizeof *l);
    if (!l)
        return false;
    l->n = n;
    l->v = items;
    l->tuple = false;
    *out = v_list(l);
    return true;
}

static bool str_affix(rctx *r, const node *at, const value *s, const value *x, bool start, bool *res)
{
    const vlist one = {1, (value *)x, false};
    const vlist *alts = x && x->t == V_LIST ? x->u.l : &one;
    *res = false;
    for (size_t i = 0; i < alts->n; i++) {
        const value *a = &alts->v[i];
        if (a->t != V_STR)
            return rerr(r, at, QRUN_ERR_FORMAT, "%s argument must be a string or tuple of strings",
                        start ? "startswith" : "endswith");
        if (a->u.s.n <= s->u.s.n &&
            memcmp(s->u.s.p + (start ? 0 : s->u.s.n - a->u.s.n), a->u.s.p, a->u.s.n) == 0)
            *res = true;
    }
    return true;
}

static bool do_join(rctx *r, const node *at, const value *seq, const value *sep, const char *attr, value *out)
{
    const vlist *l;
    if (!iter_of(r, at, seq, &l))
        return false;
    sbuf b = {.limit = r->a.limit};
    for (size_t i = 0; i < l->n; i++) {
        if (i && sep)
            sb_put(&b, sep->u.s.p, sep->u.s.n);
        value it = l->v[i];
        if (attr && !get_attr(r, at, &l->v[i], attr, &it)) {
            free(b.p);
            return false;
        }
        sb_str(&b, &it, false);
    }
    return sb_to_value(r, at, &b, out);
}

/* ---- tests */

static bool apply_test(rctx *r, const node *at, const char *name, const value *v, const cargs *a, bool *res);

static bool apply_filter(rctx *r, const node *at, const char *name, const value *in, const cargs *a, value *out);

static bool test_arg(rctx *r, const node *at, const char *name, const cargs *a, const value **x)
{
    *x = arg(a, 0, NULL);
    if (!*x)
        return rerr(r, at, QRUN_ERR_FORMAT, "test '%s' needs an argument", name);
    return true;
}

static bool apply_test(rctx *r, const node *at, const char *name, const value *v, const cargs *a, bool *res)
{
    const value *x;
    int c;
    if (!strcmp(name, "defined"))
        *res = v->t != V_UNDEF;
    else if (!strcmp(name, "undefined"))
        *res = v->t == V_UNDEF;
    else if (!strcmp(name, "none"))
        *res = v->t == V_NONE;
    else if (!strcmp(name, "boolean"))
        *res = v->t == V_BOOL;
    else if (!strcmp(name, "true"))
        *res = v->t == V_BOOL && v->u.b;
    else if (!strcmp(name, "false"))
        *res = v->t == V_BOOL && !v->u.b;
    else if (!strcmp(name, "integer"))
        *res = v->t == V_INT;
    else if (!strcmp(name, "float"))
        *res = v->t == V_FLOAT;
    else if (!strcmp(name, "number"))
        *res = is_num(v);
    else if (!strcmp(name, "string"))
        *res = v->t == V_STR;
    else if (!strcmp(name, "mapping"))
        *res = v->t == V_DICT;
    else if (!strcmp(name, "sequence"))
        *res = v->t == V_STR || v->t == V_LIST || v->t == V_DICT;
    else if (!strcmp(name, "iterable"))
        *res = v->t == V_STR || v->t == V_LIST || v->t == V_DICT || v->t == V_UNDEF;
    else if (!strcmp(name, "callable"))
        *res = v->t == V_FUNC || v->t == V_MACRO;
    else if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        value s, t;
        if (!str_of(r, at, v, &s) || !str_case(r, at, &s, name[0] == 'u', &t))
            return false;
        bool cased = false;
        for (size_t i = 0; i < s.u.s.n; i++)
            cased |= isalpha((unsigned char)s.u.s.p[i]) != 0;
        *res = cased && veq(&s, &t);
    } else if (!strcmp(name, "even") || !strcmp(name, "odd")) {
        if (!is_intlike(v))
            return rerr(r, at, QRUN_ERR_FORMAT, "test '%s' needs an integer, not %s", name, type_name(v));
        *res = (int_of(v) % 2 == 0) == (name[0] == 'e');
    } else if (!strcmp(name, "divisibleby")) {
        if (!test_arg(r, at, name, a, &x))
            return false;
        if (!is_intlike(v) || !is_intlike(x) || int_of(x) == 0)
            return rerr(r, at, QRUN_ERR_FORMAT, "divisibleby needs integers (and a non-zero divisor)");
        *res = int_of(v) % int_of(x) == 0;
    } else if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==") || !strcmp(name, "sameas")) {
        if (!test_arg(r, at, name, a, &x))
            return false;
        *res = veq(v, x);
    } else if (!strcmp(name, "ne") || !strcmp(name, "!=")) {
        if (!test_arg(r, at, name, a, &x))
            return false;
        *res = !veq(v, x);
    } else if (!strcmp(name, "lt") || !strcmp(name, "lessthan") || !strcmp(name, "<") || !strcmp(name, "le") ||
               !strcmp(name, "<=") || !strcmp(name, "gt") || !strcmp(name, "greaterthan") || !strcmp(name, ">") ||
               !strcmp(name, "ge") || !strcmp(name, ">=")) {
        if (!test_arg(r, at, name, a, &x))
            return false;
        if (!vcmp(v, x, &c))
            return rerr(r, at, QRUN_ERR_FORMAT, "cannot compare %s with %s", type_name(v), type_name(x));
        bool lt = name[0] == 'l' || name[0] == '<';
        bool eq = !strcmp(name, "le") || !strcmp(name, "<=") || !strcmp(name, "ge") || !strcmp(name, ">=");
        *res = c != 2 && (lt ? (c < 0 || (eq && c == 0)) : (c > 0 || (eq && c == 0)));
    } else if (!strcmp(name, "in")) {
        if (!test_arg(r, at, name, a, &x))
            return false;
        return contains(r, at, v, x, res);
    } else
        return rerr(r, at, QRUN_ERR_UNSUPPORTED, "unknown test '%s'", name);
    return true;
}

/* ---- filters */

static bool do_select(rctx *r, const node *at, const value *in, const cargs *a, bool attr_form, bool keep, value *out)
{
    const vlist *l;
    if (!iter_of(r, at, in, &l))
        return false;
    vlist *res = mk_list(r, at, l->n);
    if (!res)
        return false;
    res->n = 0;
    size_t first = 0;
    const char *attr = NULL;
    char attrbuf[128];
    if (attr_form) {
        const value *an = arg(a, 0, NULL);
        value s = v_str("", 0);
        if (!want_str(r, at, an, "attribute name", &s))
            return false;
        snprintf(attrbuf, sizeof attrbuf, "%.*s", (int)(s.u.s.n > 127 ? 127 : s.u.s.n), s.u.s.p);
        attr = attrbuf;
        first = 1;
    }
    const value *tn = arg(a, first, NULL);
    char tname[64] = "";
    if (tn) {
        if (tn->t != V_STR)
            return rerr(r, at, QRUN_ERR_FORMAT, "test name must be a string");
        snprintf(tname, sizeof tname, "%.*s", (int)(tn->u.s.n > 63 ? 63 : tn->u.s.n), tn->u.s.p);
    }
    cargs ta = {a->npos > first + 1 ? a->pos + first + 1 : NULL, a->npos > first + 1 ? a->npos - first - 1 : 0, NULL,
                NULL, 0};
    for (size_t i = 0; i < l->n; i++) {
        value it = l->v[i];
        if (attr && !get_attr(r, at, &l->v[i], attr, &it))
            return false;
        bool t;
        if (tn) {
            if (!apply_test(r, at, tname, &it, &ta, &t))
                return false;
        } else
            t = truthy(&it);
        if (t == keep)
            res->v[res->n++] = l->v[i];
    }
    *out = v_list(res);
    return true;
}

static bool apply_filter(rctx *r, const node *at, const char *name, const value *in, const cargs *a, value *out)
{
    value s = v_str("", 0), x = s;
    const value *p0 = arg(a, 0, NULL);
    if (!strcmp(name, "trim") || !strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") ||
        !strcmp(name, "title") || !strcmp(name, "string") || !strcmp(name, "safe") || !strcmp(name, "e") ||
        !strcmp(name, "escape") || !strcmp(name, "forceescape")) {
        if (!strcmp(name, "string") || !strcmp(name, "safe"))
            return str_of(r, at, in, out);
        if (!str_of(r, at, in, &s))
            return false;
        if (!strcmp(name, "trim")) {
            const value *ch = arg(a, 0, "chars");
            if (ch && ch->t != V_NONE && !want_str(r, at, ch, "trim chars", &x))
                return false;
            *out = str_strip(&s, 3, ch && ch->t == V_STR ? ch : NULL);
            return true;
        }
        if (name[0] == 'e' || name[0] == 'f') {
            sbuf b = {.limit = r->a.limit};
            for (size_t i = 0; i < s.u.s.n; i++) {
                char c = s.u.s.p[i];
                if (c == '&')
                    sb_puts(&b, "&amp;");
                else if (c == '<')
                    sb_puts(&b, "&lt;");
                else if (c == '>')
                    sb_puts(&b, "&gt;");
                else if (c == '"')
                    sb_puts(&b, "&#34;");
                else if (c == '\'')
                    sb_puts(&b, "&#39;");
                else
                    sb_putc(&b, c);
            }
            return sb_to_value(r, at, &b, out);
        }
        int mode = name[0] == 'l' ? 0 : name[0] == 'u' ? 1 : name[0] == 'c' ? 2 : 3;
        return str_case(r, at, &s, mode, out);
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        switch (in->t) {
        case V_UNDEF: *out = v_int(0); return true;
        case V_STR: *out = v_int((int64_t)u8_count(in->u.s.p, in->u.s.n)); return true;
        case V_LIST: *out = v_int((int64_t)in->u.l->n); return true;
        case V_DICT: *out = v_int((int64_t)in->u.d->n); return true;
        default: return rerr(r, at, QRUN_ERR_FORMAT, "object of type '%s' has no length", type_name(in));
        }
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        const value *dv = arg(a, 0, "default_value"), *bo = arg(a, 1, "boolean");
        bool use = in->t == V_UNDEF || (bo && truthy(bo) && !truthy(in));
        *out = use ? (dv ? *dv : v_str("", 0)) : *in;
        return true;
    }
    if (!strcmp(name, "join")) {
        const value *sep = arg(a, 0, "d"), *at_ = arg(a, 1, "attribute");
        value sv = v_str("", 0);
        if (sep && !str_of(r, at, sep, &sv))
            return false;
        char attr[128];
        if (at_) {
            if (at_->t != V_STR)
                return rerr(r, at, QRUN_ERR_FORMAT, "join attribute must be a string");
            snprintf(attr, sizeof attr, "%.*s", (int)(at_->u.s.n > 127 ? 127 : at_->u.s.n), at_->u.s.p);
        }
        return do_join(r, at, in, &sv, at_ ? attr : NULL, out);
    }
    if (!strcmp(name, "tojson")) {
        /* transformers: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) */
        const value *ea = arg(a, 0, "ensure_ascii"), *ind = arg(a, 1, "indent"), *sep = arg(a, 2, "separators"),
                    *sk = arg(a, 3, "sort_keys");
        char indent[64];
        jsonopts o = {NULL, ", ", ": ", sk && truthy(sk), ea && truthy(ea)};
        if (ind && ind->t != V_NONE) {
            if (is_intlike(ind)) {
                int64_t k = int_of(ind);
                if (k < 0)
                    k = 0;
                if (k > 63)
                    return rerr(r, at, QRUN_ERR_UNSUPPORTED, "tojson indent above 63 is not supported");
                memset(indent, ' ', (size_t)k);
                indent[k] = '\0';
            } else if (ind->t == V_STR)
                snprintf(indent, sizeof indent, "%.*s", (int)(ind->u.s.n > 63 ? 63 : ind->u.s.n), ind->u.s.p);
            else
                return rerr(r, at, QRUN_ERR_FORMAT, "tojson indent must be an integer or string");
            o.indent = indent;
            o.item_sep = ",";
        }
        char isep[32], ksep[32];
        if (sep && sep->t != V_NONE) {
            if (sep->t != V_LIST || sep->u.l->n != 2 || sep->u.l->v[0].t != V_STR || sep->u.l->v[1].t != V_STR)
                return rerr(r, at, QRUN_ERR_FORMAT, "tojson separators must be a pair of strings");
            snprintf(isep, sizeof isep, "%.*s", (int)(sep->u.l->v[0].u.s.n > 31 ? 31 : sep->u.l->v[0].u.s.n),
                     sep->u.l->v[0].u.s.p);
            snprintf(ksep, sizeof ksep, "%.*s", (int)(sep->u.l->v[1].u.s.n > 31 ? 31 : sep->u.l->v[1].u.s.n),
                     sep->u.l->v[1].u.s.p);
            o.item_sep = isep;
            o.key_sep = ksep;
        }
        sbuf b = {.limit = r->a.limit};
        if (!json_val(r, at, &b, in, &o, 0)) {
            free(b.p);
            return false;
        }
        return sb_to_value(r, at, &b, out);
    }
    if (!strcmp(name, "list")) {
        const vlist *l;
        if (!iter_of(r, at, in, &l))
            return false;
        vlist *c = mk_list(r, at, l->n);
        if (!c)
            return false;
        for (size_t i = 0; i < l->n; i++)
            c->v[i] = l->v[i];
        *out = v_list(c);
        return true;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        const vlist *l;
        if (!iter_of(r, at, in, &l))
            return false;
        *out = l->n == 0 ? v_undef(at) : l->v[name[0] == 'f' ? 0 : l->n - 1];
        return true;
    }
    if (!strcmp(name, "reverse")) {
        const vlist *l;
        if (!iter_of(r, at, in, &l))
            return false;
        if (in->t == V_STR) {
            char *p = ralloc(r, at, in->u.s.n + 1);
            if (!p)
                return false;
            size_t o = 0;
            for (size_t i = l->n; i-- > 0;) {
                memcpy(p + o, l->v[i].u.s.p, l->v[i].u.s.n);
                o += l->v[i].u.s.n;
            }
            p[o] = '\0';
            *out = v_str(p, o);
            return true;
        }
        vlist *c = mk_list(r, at, l->n);
        if (!c)
            return false;
        for (size_t i = 0; i < l->n; i++)
            c->v[i] = l->v[l->n - 1 - i];
        *out = v_list(c);
        return true;
    }
    if (!strcmp(name, "replace")) {
        const value *o = arg(a, 0, "old"), *n = arg(a, 1, "new"), *c = arg(a, 2, "count");
        value os = v_str("", 0), ns = os;
        if (!str_of(r, at, in, &s) || !o || !n || !str_of(r, at, o, &os) || !str_of(r, at, n, &ns)) {
            if (!r->failed)
                rerr(r, at, QRUN_ERR_FORMAT, "replace needs two arguments");
            return false;
        }
        if (c && !is_intlike(c) && c->t != V_NONE)
            return rerr(r, at, QRUN_ERR_FORMAT, "replace count must be an integer");
        return str_replace(r, at, &s, &os, &ns, c && is_intlike(c) ? int_of(c) : -1, out);
    }
    if (!strcmp(name, "items")) {
        if (in->t == V_UNDEF) {
            *out = v_list(mk_list(r, at, 0));
            return out->u.l != NULL;
        }
        if (in->t != V_DICT)
            return rerr(r, at, QRUN_ERR_FORMAT, "items filter needs a mapping, not %s", type_name(in));
        vlist *l = mk_list(r, at, in->u.d->n);
        if (!l)
            return false;
        for (size_t i = 0; i < in->u.d->n; i++) {
            vlist *t = mk_list(r, at, 2);
            if (!t)
                return false;
            t->tuple = true;
            t->v[0] = in->u.d->k[i];
            t->v[1] = in->u.d->v[i];
            l->v[i] = v_list(t);
        }
        *out = v_list(l);
        return true;
    }
    if (!strcmp(name, "int") || !strcmp(name, "float")) {
        bool isint = name[0] == 'i';
        const value *dv = arg(a, 0, "default");
        value def = dv ? *dv : isint ? v_int(0) : v_float(0.0);
        if (in->t == V_INT || in->t == V_BOOL)
            *out = isint ? v_int(int_of(in)) : v_float((double)int_of(in));
        else if (in->t == V_FLOAT) {
            if (isint && !(in->u.f > -9.2e18 && in->u.f < 9.2e18))
                *out = def;
            else
                *out = isint ? v_int((int64_t)in->u.f) : *in;
        } else if (in->t == V_STR) {
            char buf[64];
            value t = str_strip(in, 3, NULL);
            if (t.u.s.n == 0 || t.u.s.n >= sizeof buf) {
                *out = def;
                return true;
            }
            memcpy(buf, t.u.s.p, t.u.s.n);
            buf[t.u.s.n] = '\0';
            char *end;
            if (isint) {
                long long v = strtoll(buf, &end, 10);
                if (*end) { /* jinja's int falls back to float parsing */
                    double d = strtod(buf, &end);
                    *out = *end || !(d > -9.2e18 && d < 9.2e18) ? def : v_int((int64_t)d);
                } else
                    *out = v_int(v);
            } else {
                double d = strtod(buf, &end);
                *out = *end ? def : v_float(d);
            }
        } else
            *out = def;
        return true;
    }
    if (!strcmp(name, "abs")) {
        if (in->t == V_INT) {
            if (in->u.i == INT64_MIN)
                return rerr(r, at, QRUN_ERR_UNSUPPORTED, "integer overflow in abs");
            *out = v_int(in->u.i < 0 ? -in->u.i : in->u.i);
        } else if (in->t == V_FLOAT)
            *out = v_float(fabs(in->u.f));
        else if (in->t == V_BOOL)
            *out = v_int(in->u.b);
        else
            return rerr(r, at, QRUN_ERR_FORMAT, "bad operand type for abs: %s", type_name(in));
        return true;
    }
    if (!strcmp(name, "round")) {
        const value *pr = arg(a, 0, "precision"), *me = arg(a, 1, "method");
        if (!is_num(in))
            return rerr(r, at, QRUN_ERR_FORMAT, "round needs a number, not %s", type_name(in));
        int64_t k = pr && is_intlike(pr) ? int_of(pr) : 0;
        if (k < -15 || k > 15)
            return rerr(r, at, QRUN_ERR_UNSUPPORTED, "round precision out of range");
        double m = pow(10.0, (double)k), v = num_f(in) * m;
        const char *md = me && me->t == V_STR ? me->u.s.p : "common";
        double rv = !strncmp(md, "floor", 5) ? floor(v) : !strncmp(md, "ceil", 4) ? ceil(v) : round(v);
        *out = v_float(rv / m);
        return true;
    }
    if (!strcmp(name, "map")) {
        const vlist *l;
        if (!iter_of(r, at, in, &l))
            return false;
        vlist *res = mk_list(r, at, l->n);
        if (!res)
            return false;
        const value *an = arg(a, a->npos + 1, "attribute"), *dv = arg(a, a->npos + 1, "default");
        char nm[128];
        if (an) {
            if (an->t != V_STR)
                return rerr(r, at, QRUN_ERR_FORMAT, "map attribute must be a string");
            snprintf(nm, sizeof nm, "%.*s", (int)(an->u.s.n > 127 ? 127 : an->u.s.n), an->u.s.p);
        } else {
            if (!p0 || p0->t != V_STR)
                return rerr(r, at, QRUN_ERR_FORMAT, "map needs a filter name or attribute=");
            snprintf(nm, sizeof nm, "%.*s", (int)(p0->u.s.n > 127 ? 127 : p0->u.s.n), p0->u.s.p);
        }
        cargs fa = {a->npos > 1 ? a->pos + 1 : NULL, a->npos > 1 ? a->npos - 1 : 0, NULL, NULL, 0};
        for (size_t i = 0; i < l->n; i++) {
            if (an) {
                if (!get_attr(r, at, &l->v[i], nm, &res->v[i]))
                    return false;
                if (res->v[i].t == V_UNDEF && dv)
                    res->v[i] = *dv;
            } else if (!apply_filter(r, at, nm, &l->v[i], &fa, &res->v[i]))
                return false;
        }
        *out = v_list(res);
        return true;
    }
    if (!strcmp(name, "select") || !strcmp(name, "reject"))
        return do_select(r, at, in, a, false, name[0] == 's', out);
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr"))
        return do_select(r, at, in, a, true, name[0] == 's', out);
    if (!strcmp(name, "attr")) {
        if (!want_str(r, at, p0, "attribute name", &s))
            return false;
        char nm[128];
        snprintf(nm, sizeof nm, "%.*s", (int)(s.u.s.n > 127 ? 127 : s.u.s.n), s.u.s.p);
        return get_attr(r, at, in, nm, out);
    }
    if (!strcmp(name, "indent")) {
        const value *w = arg(a, 0, "width"), *fi = arg(a, 1, "first"), *bl = arg(a, 2, "blank");
        value pad = v_str("    ", 4);
        char padb[64];
        if (w && is_intlike(w)) {
            int64_t k = int_of(w);
            if (k < 0)
                k = 0;
            if (k > 63)
                return rerr(r, at, QRUN_ERR_UNSUPPORTED, "indent width above 63 is not supported");
            memset(padb, ' ', (size_t)k);
            pad = v_str(padb, (size_t)k);
        } else if (w && w->t == V_STR)
            pad = *w;
        if (!str_of(r, at, in, &s))
            return false;
        sbuf b = {.limit = r->a.limit};
        bool first = fi && truthy(fi), blank = bl && truthy(bl);
        size_t i = 0, line = 0;
        while (i <= s.u.s.n) {
            size_t e = i;
            while (e < s.u.s.n && s.u.s.p[e] != '\n')
                e++;
            bool empty = all_ws(s.u.s.p, i, e);
            if ((line > 0 || first) && (blank || !empty))
                sb_put(&b, pad.u.s.p, pad.u.s.n);
            sb_put(&b, s.u.s.p + i, e - i);
            if (e >= s.u.s.n)
                break;
            sb_putc(&b, '\n');
            i = e + 1;
            line++;
        }
        return sb_to_value(r, at, &b, out);
    }
    if (!strcmp(name, "unique")) {
        const vlist *l;
        if (!iter_of(r, at, in, &l))
            return false;
        vlist *res = mk_list(r, at, l->n);
        if (!res)
            return false;
        res->n = 0;
        for (size_t i = 0; i < l->n; i++) {
            r->steps += res->n / 16;
            if (!step(r, at))
                return false;
            bool seen = false;
            for (size_t j = 0; j < res->n && !seen; j++)
                seen = veq(&res->v[j], &l->v[i]);
            if (!seen)
                res->v[res->n++] = l->v[i];
        }
        *out = v_list(res);
        return true;
    }
    return rerr(r, at, QRUN_ERR_UNSUPPORTED, "unknown filter '%s'", name);
}

/* ---- methods ("abc".strip(), message.get('x'), ...) */

static bool call_method(rctx *r, const node *at, const value *obj, const char *m, const cargs *a, value *out)
{
    const value *p0 = arg(a, 0, NULL), *p1 = arg(a, 1, NULL);
    value s = v_str("", 0);
    bool b;
    if (obj->t == V_UNDEF)
        return undef_err(r, at, obj);
    if (obj->t == V_STR) {
        if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
            if (p0 && p0->t != V_NONE && !want_str(r, at, p0, "strip argument", &s))
                return false;
            *out = str_strip(obj, m[0] == 'l' ? 1 : m[0] == 'r' ? 2 : 3, p0 && p0->t == V_STR ? p0 : NULL);
            return true;
        }
        if (!strcmp(m, "upper") || !strcmp(m, "lower") || !strcmp(m, "capitalize") || !strcmp(m, "title"))
            return str_case(r, at, obj, m[0] == 'l' ? 0 : m[0] == 'u' ? 1 : m[0] == 'c' ? 2 : 4, out);
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            if (!p0)
                return rerr(r, at, QRUN_ERR_FORMAT, "%s needs an argument", m);
            if (!str_affix(r, at, obj, p0, m[0] == 's', &b))
                return false;
            *out = v_bool(b);
            return true;
        }
        if (!strcmp(m, "split")) {
            const value *sep = arg(a, 0, "sep"), *ms = arg(a, 1, "maxsplit");
            return str_split(r, at, obj, sep, ms && is_intlike(ms) ? int_of(ms) : -1, out);
        }
        if (!strcmp(m, "replace")) {
            value o = v_str("", 0), n = o;
            if (!want_str(r, at, p0, "replace argument", &o) || !want_str(r, at, p1, "replace argument", &n))
                return false;
            const value *c = arg(a, 2, "count");
            return str_replace(r, at, obj, &o, &n, c && is_intlike(c) ? int_of(c) : -1, out);
        }
        if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "count")) {
            if (!want_str(r, at, p0, "argument", &s))
                return false;
            int64_t found = -1, cnt = 0;
            for (size_t i = 0; i + s.u.s.n <= obj->u.s.n; i++)
                if (memcmp(obj->u.s.p + i, s.u.s.p, s.u.s.n) == 0) {
                    if (found < 0 || m[0] == 'r')
                        found = (int64_t)u8_count(obj->u.s.p, i);
                    cnt++;
                    if (m[0] == 'c' && s.u.s.n)
                        i += s.u.s.n - 1;
                }
            if (m[0] == 'c' && s.u.s.n == 0)
                cnt = (int64_t)u8_count(obj->u.s.p, obj->u.s.n) + 1;
            *out = v_int(m[0] == 'c' ? cnt : found);
            return true;
        }
        if (!strcmp(m, "join")) {
            if (!p0)
                return rerr(r, at, QRUN_ERR_FORMAT, "join needs an argument");
            const vlist *l;
            if (!iter_of(r, at, p0, &l))
                return false;
            for (size_t i = 0; i < l->n; i++)
                if (l->v[i].t != V_STR)
                    return rerr(r, at, QRUN_ERR_FORMAT, "join: sequence item %zu is %s, not a string", i,
                                type_name(&l->v[i]));
            return do_join(r, at, p0, obj, NULL, out);
        }
        if (!strcmp(m, "isdigit") || !strcmp(m, "isalpha") || !strcmp(m, "isalnum") || !strcmp(m, "isspace") ||
            !strcmp(m, "islower") || !strcmp(m, "isupper")) {
            bool ok = obj->u.s.n > 0, cased = false;
            for (size_t i = 0; i < obj->u.s.n && ok; i++) {
                unsigned char c = (unsigned char)obj->u.s.p[i];
                if (!strcmp(m, "isdigit"))
                    ok = isdigit(c);
                else if (!strcmp(m, "isalpha"))
                    ok = isalpha(c);
                else if (!strcmp(m, "isalnum"))
                    ok = isalnum(c);
                else if (!strcmp(m, "isspace"))
                    ok = is_ws((char)c) || (c >= 0x1C && c <= 0x1F);
                else if (!strcmp(m, "islower")) {
                    ok = !isupper(c);
                    cased |= islower(c) != 0;
                } else {
                    ok = !islower(c);
                    cased |= isupper(c) != 0;
                }
            }
            if (m[2] == 'l' || m[2] == 'u')
                ok = ok && cased;
            *out = v_bool(ok);
            return true;
        }
        if (!strcmp(m, "format"))
            return rerr(r, at, QRUN_ERR_UNSUPPORTED, "str.format() is not supported");
    } else if (obj->t == V_DICT || obj->t == V_NS) {
        const vdict *d = obj->u.d;
        if (!strcmp(m, "get")) {
            if (!p0)
                return rerr(r, at, QRUN_ERR_FORMAT, "get needs a key");
            const value *v = dict_find(d, p0);
            *out = v ? *v : p1 ? *p1 : v_none();
            return true;
        }
        if (obj->t == V_DICT && (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values"))) {
            if (m[0] == 'i')
                return apply_filter(r, at, "items", obj, a, out);
            vlist *l = mk_list(r, at, d->n);
            if (!l)
                return false;
            for (size_t i = 0; i < d->n; i++)
                l->v[i] = m[0] == 'k' ? d->k[i] : d->v[i];
            *out = v_list(l);
            return true;
        }
        if (!strcmp(m, "update") || !strcmp(m, "pop") || !strcmp(m, "setdefault") || !strcmp(m, "popitem") ||
            !strcmp(m, "clear"))
            return rerr(r, at, QRUN_ERR_FORMAT, "the sandbox forbids modifying a mapping (.%s)", m);
    } else if (obj->t == V_LIST) {
        if (!strcmp(m, "append") || !strcmp(m, "extend") || !strcmp(m, "pop") || !strcmp(m, "insert") ||
            !strcmp(m, "remove") || !strcmp(m, "clear") || !strcmp(m, "sort") || !strcmp(m, "reverse"))
            return rerr(r, at, QRUN_ERR_FORMAT, "the sandbox forbids modifying a list (.%s)", m);
        if (!strcmp(m, "index") || !strcmp(m, "count")) {
            if (!p0)
                return rerr(r, at, QRUN_ERR_FORMAT, "%s needs an argument", m);
            int64_t cnt = 0, idx = -1;
            for (size_t i = 0; i < obj->u.l->n; i++)
                if (veq(&obj->u.l->v[i], p0)) {
                    if (idx < 0)
                        idx = (int64_t)i;
                    cnt++;
                }
            if (m[0] == 'i' && idx < 0)
                return rerr(r, at, QRUN_ERR_FORMAT, "list.index(x): x not in list");
            *out = v_int(m[0] == 'i' ? idx : cnt);
            return true;
        }
    } else if (obj->t == V_LOOP && !strcmp(m, "cycle")) {
        if (a->npos == 0)
            return rerr(r, at, QRUN_ERR_FORMAT, "loop.cycle needs at least one argument");
        *out = a->pos[obj->u.lp->idx % (int64_t)a->npos];
        return true;
    }
    return rerr(r, at, QRUN_ERR_UNSUPPORTED, "unknown method '%s' on %s", m, type_name(obj));
}

/* ---- global functions */

#define MAX_RANGE 100000 /* as Jinja's sandbox */

static bool call_builtin(rctx *r, const node *at, int fn, const cargs *a, value *out)
{
    switch (fn) {
    case F_RANGE: {
        int64_t v[3] = {0, 0, 1};
        if (a->npos < 1 || a->npos > 3 || a->nkw)
            return rerr(r, at, QRUN_ERR_FORMAT, "range takes 1 to 3 integer arguments");
        for (size_t i = 0; i < a->npos; i++)
            if (!is_intlike(&a->pos[i]))
                return rerr(r, at, QRUN_ERR_FORMAT, "range arguments must be integers, not %s", type_name(&a->pos[i]));
        if (a->npos == 1)
            v[1] = int_of(&a->pos[0]);
        else
            for (size_t i = 0; i < a->npos; i++)
                v[i] = int_of(&a->pos[i]);
        if (v[2] == 0)
            return rerr(r, at, QRUN_ERR_FORMAT, "range step must not be zero");
        double cnt = v[2] > 0 ? ceil(((double)v[1] - (double)v[0]) / (double)v[2])
                              : ceil(((double)v[0] - (double)v[1]) / (double)-v[2]);
        if (cnt < 0)
            cnt = 0;
        if (cnt > MAX_RANGE)
            return rerr(r, at, QRUN_ERR_FORMAT, "range too big: %.0f items (the sandbox allows %d)", cnt, MAX_RANGE);
        vlist *l = mk_list(r, at, (size_t)cnt);
        if (!l)
            return false;
        for (size_t i = 0; i < l->n; i++)
            l->v[i] = v_int(v[0] + (int64_t)i * v[2]);
        *out = v_list(l);
        return true;
    }
    case F_NAMESPACE:
    case F_DICT: {
        vdict *d = mk_dict(r, at);
        if (!d)
            return false;
        if (a->npos > 1)
            return rerr(r, at, QRUN_ERR_FORMAT, "%s takes at most one positional argument", func_names[fn]);
        if (a->npos == 1) {
            if (a->pos[0].t != V_DICT && a->pos[0].t != V_NS)
                return rerr(r, at, QRUN_ERR_UNSUPPORTED, "%s(x) supports only a mapping x", func_names[fn]);
            for (size_t i = 0; i < a->pos[0].u.d->n; i++)
                if (!dict_set(r, at, d, a->pos[0].u.d->k[i], a->pos[0].u.d->v[i]))
                    return false;
        }
        for (size_t i = 0; i < a->nkw; i++) {
            if (fn == F_NAMESPACE && a->kn[i][0] == '_')
                return rerr(r, at, QRUN_ERR_FORMAT, "namespaces cannot hold underscore-prefixed attributes ('%s')",
                            a->kn[i]);
            if (!dict_set(r, at, d, v_cstr(a->kn[i]), a->kw[i]))
                return false;
        }
        out->t = fn == F_NAMESPACE ? V_NS : V_DICT;
        out->u.d = d;
        return true;
    }
    case F_RAISE: {
        value s = v_str("", 0);
        const value *m = arg(a, 0, "message");
        if (m && !str_of(r, at, m, &s))
            return false;
        int l, c;
        pos_to_lc(r->t->src, r->t->len, at->pos, &l, &c);
        r->failed = true;
        qerr_set(r->err, QRUN_ERR_INVALID_ARGUMENT, "chat template raised an exception (line %d, column %d): %.*s", l,
                 c, (int)(s.u.s.n > 900 ? 900 : s.u.s.n), s.u.s.p);
        return false;
    }
    case F_STRFTIME: {
        value f = v_str("", 0);
        if (!want_str(r, at, arg(a, 0, "format"), "strftime_now format", &f))
            return false;
        if (f.u.s.n > 200)
            return rerr(r, at, QRUN_ERR_UNSUPPORTED, "strftime_now format longer than 200 bytes");
        char fmt[256], buf[512];
        memcpy(fmt, f.u.s.p, f.u.s.n);
        fmt[f.u.s.n] = '\0';
        struct tm tmv;
        if (r->now)
            tmv = *r->now;
        else {
            time_t now = time(NULL);
            if (!localtime_r(&now, &tmv))
                return rerr(r, at, QRUN_ERR_INTERNAL, "cannot read the local time");
        }
        size_t n = fmt[0] ? strftime(buf, sizeof buf, fmt, &tmv) : 0;
        char *p = astrndup(&r->a, buf, n);
        if (!p)
            return r_oom(r, at);
        *out = v_str(p, n);
        return true;
    }
    }
    return rerr(r, at, QRUN_ERR_INTERNAL, "bad builtin");
}

/* ---- evaluation */

static bool eval(rctx *r, scope *sc, const node *n, value *out);
static int exec_body(rctx *r, scope *sc, const nlist *body);

static bool eval_args(rctx *r, scope *sc, const node *n, cargs *a)
{
    value *pos = n->args.n ? ralloc(r, n, n->args.n * sizeof *pos) : NULL;
    value *kw = n->kwargs.n ? ralloc(r, n, n->kwargs.n * sizeof *kw) : NULL;
    if ((n->args.n && !pos) || (n->kwargs.n && !kw))
        return false;
    for (size_t i = 0; i < n->args.n; i++)
        if (!eval(r, sc, n->args.v[i], &pos[i]))
            return false;
    for (size_t i = 0; i < n->kwargs.n; i++)
        if (!eval(r, sc, n->kwargs.v[i], &kw[i]))
            return false;
    a->pos = pos;
    a->npos = n->args.n;
    a->kn = n->knames;
    a->kw = kw;
    a->nkw = n->kwargs.n;
    return true;
}

/* Output written by `body` since `mark`, removed from the output and returned. */
static bool capture(rctx *r, const node *at, size_t mark, value *out)
{
    size_t n = r->out.n - mark;
    char *p = astrndup(&r->a, r->out.p ? r->out.p + mark : "", n);
    if (!p)
        return r_oom(r, at);
    r->out.n = mark;
    if (r->out.p)
        r->out.p[mark] = '\0';
    *out = v_str(p, n);
    return true;
}

static bool call_macro(rctx *r, const node *at, const node *m, const cargs *a, value *out)
{
    if (r->depth >= r->max_depth)
        return rerr(r, at, QRUN_ERR_FORMAT, "macro calls nested deeper than %d", r->max_depth);
    if (!step(r, at))
        return false;
    if (a->npos > m->nknames)
        return rerr(r, at, QRUN_ERR_FORMAT, "macro '%s' takes at most %zu arguments", m->name, m->nknames);
    scope *ms = ralloc(r, at, sizeof *ms);
    if (!ms)
        return false;
    memset(ms, 0, sizeof *ms);
    ms->parent = r->root;
    for (size_t i = 0; i < a->nkw; i++) {
        bool known = false;
        for (size_t j = 0; j < m->nknames; j++)
            known |= strcmp(a->kn[i], m->knames[j]) == 0;
        if (!known)
            return rerr(r, at, QRUN_ERR_FORMAT, "macro '%s' has no parameter '%s'", m->name, a->kn[i]);
    }
    for (size_t j = 0; j < m->nknames; j++) {
        const value *v = arg(a, j, m->knames[j]);
        value dv;
        if (!v) {
            if (m->args.v[j]) {
                if (!eval(r, ms, m->args.v[j], &dv))
                    return false;
            } else
                dv = v_undef(NULL);
            v = &dv;
        }
        if (!scope_set(r, at, ms, m->knames[j], *v))
            return false;
    }
    size_t mark = r->out.n;
    int saved_loops = r->loop_depth;
    r->loop_depth = 0;
    r->depth++;
    int x = exec_body(r, ms, &m->body);
    r->depth--;
    r->loop_depth = saved_loops;
    if (x == X_ERR)
        return false;
    return capture(r, at, mark, out);
}

static bool eval_call(rctx *r, scope *sc, const node *n, value *out)
{
    cargs a;
    if (n->a->kind == N_ATTR) {
        value obj;
        if (!eval(r, sc, n->a->a, &obj))
            return false;
        if (obj.t == V_DICT || obj.t == V_NS) { /* a stored macro: ns.fn() */
            const value *v = dict_find_s(obj.u.d, n->a->name, strlen(n->a->name));
            if (v && (v->t == V_MACRO || v->t == V_FUNC)) {
                if (!eval_args(r, sc, n, &a))
                    return false;
                return v->t == V_MACRO ? call_macro(r, n, v->u.m, &a, out) : call_builtin(r, n, v->u.fn, &a, out);
            }
        }
        if (!eval_args(r, sc, n, &a))
            return false;
        return call_method(r, n, &obj, n->a->name, &a, out);
    }
    value f;
    if (!eval(r, sc, n->a, &f))
        return false;
    if (f.t == V_UNDEF)
        return undef_err(r, n, &f);
    if (f.t != V_FUNC && f.t != V_MACRO)
        return rerr(r, n, QRUN_ERR_FORMAT, "'%s' object is not callable", type_name(&f));
    if (!eval_args(r, sc, n, &a))
        return false;
    return f.t == V_MACRO ? call_macro(r, n, f.u.m, &a, out) : call_builtin(r, n, f.u.fn, &a, out);
}

/* filter chain on a captured subject ({% set x | f %}, {% filter f %}) */
static bool apply_chain(rctx *r, scope *sc, const node *f, const value *subject, value *out)
{
    if (!f) {
        *out = *subject;
        return true;
    }
    value in;
    if (!apply_chain(r, sc, f->a, subject, &in))
        return false;
    if (f->kind != N_FILTER)
        return rerr(r, f, QRUN_ERR_UNSUPPORTED, "only filters may follow a block");
    cargs a;
    return eval_args(r, sc, f, &a) && apply_filter(r, f, f->name, &in, &a, out);
}

static bool eval(rctx *r, scope *sc, const node *n, value *out)
{
    value a, b;
    switch (n->kind) {
    case N_CONST: *out = n->cv; return true;
    case N_NAME: {
        const value *v = lookup(sc, n->name);
        if (v) {
            *out = *v;
            return true;
        }
        for (int i = 0; i < F_COUNT; i++)
            if (!strcmp(n->name, func_names[i])) {
                out->t = V_FUNC;
                out->u.fn = i;
                return true;
            }
        *out = v_undef(n);
        return true;
    }
    case N_ATTR: return eval(r, sc, n->a, &a) && get_attr(r, n, &a, n->name, out);
    case N_ITEM: return eval(r, sc, n->a, &a) && eval(r, sc, n->b, &b) && get_item(r, n, &a, &b, out);
    case N_SLICE: {
        value parts[3] = {v_none(), v_none(), v_none()};
        if (!eval(r, sc, n->a, &a))
            return false;
        for (int i = 0; i < 3; i++)
            if (n->args.v[i] && !eval(r, sc, n->args.v[i], &parts[i]))
                return false;
        return do_slice(r, n, &a, &parts[0], &parts[1], &parts[2], out);
    }
    case N_CALL: return eval_call(r, sc, n, out);
    case N_FILTER: {
        cargs ca;
        return eval(r, sc, n->a, &a) && eval_args(r, sc, n, &ca) && apply_filter(r, n, n->name, &a, &ca, out);
    }
    case N_TEST: {
        cargs ca;
        bool res;
        if (!eval(r, sc, n->a, &a) || !eval_args(r, sc, n, &ca) || !apply_test(r, n, n->name, &a, &ca, &res))
            return false;
        *out = v_bool(res != n->neg);
        return true;
    }
    case N_NEG:
    case N_POS:
        if (!eval(r, sc, n->a, &a))
            return false;
        if (a.t == V_UNDEF)
            return undef_err(r, n, &a);
        if (!is_num(&a))
            return rerr(r, n, QRUN_ERR_FORMAT, "bad operand type for unary %c: %s", n->kind == N_NEG ? '-' : '+',
                        type_name(&a));
        if (n->kind == N_POS)
            *out = a.t == V_BOOL ? v_int(a.u.b) : a;
        else if (a.t == V_FLOAT)
            *out = v_float(-a.u.f);
        else if (int_of(&a) == INT64_MIN)
            return rerr(r, n, QRUN_ERR_UNSUPPORTED, "integer overflow in unary -");
        else
            *out = v_int(-int_of(&a));
        return true;
    case N_NOT:
        if (!eval(r, sc, n->a, &a))
            return false;
        *out = v_bool(!truthy(&a));
        return true;
    case N_BIN: return eval(r, sc, n->a, &a) && eval(r, sc, n->b, &b) && arith(r, n, n->op, &a, &b, out);
    case N_AND:
    case N_OR:
        if (!eval(r, sc, n->a, &a))
            return false;
        if (truthy(&a) == (n->kind == N_OR)) {
            *out = a;
            return true;
        }
        return eval(r, sc, n->b, out);
    case N_CMP: {
        if (!eval(r, sc, n->a, &a))
            return false;
        for (size_t i = 0; i < n->args.n; i++) {
            if (!eval(r, sc, n->args.v[i], &b))
                return false;
            bool res;
            int op = n->ops[i], c;
            if (op == OP_EQ)
                res = veq(&a, &b);
            else if (op == OP_NE)
                res = !veq(&a, &b);
            else if (op == OP_IN || op == OP_NOTIN) {
                if (!contains(r, n, &a, &b, &res))
                    return false;
                res = res != (op == OP_NOTIN);
            } else {
                if (a.t == V_UNDEF)
                    return undef_err(r, n, &a);
                if (b.t == V_UNDEF)
                    return undef_err(r, n, &b);
                if (!vcmp(&a, &b, &c))
                    return rerr(r, n, QRUN_ERR_FORMAT, "cannot order %s and %s", type_name(&a), type_name(&b));
                res = c != 2 && (op == OP_LT ? c < 0 : op == OP_LE ? c <= 0 : op == OP_GT ? c > 0 : c >= 0);
            }
            if (!res) {
                *out = v_bool(false);
                return true;
            }
            a = b;
        }
        *out = v_bool(true);
        return true;
    }
    case N_COND:
        if (!eval(r, sc, n->a, &a))
            return false;
        if (truthy(&a))
            return eval(r, sc, n->b, out);
        if (n->c)
            return eval(r, sc, n->c, out);
        *out = v_undef(n);
        return true;
    case N_LIST:
    case N_TUPLE: {
        vlist *l = mk_list(r, n, n->args.n);
        if (!l)
            return false;
        l->tuple = n->kind == N_TUPLE;
        for (size_t i = 0; i < n->args.n; i++)
            if (!eval(r, sc, n->args.v[i], &l->v[i]))
                return false;
        *out = v_list(l);
        return true;
    }
    case N_DICT: {
        vdict *d = mk_dict(r, n);
        if (!d)
            return false;
        for (size_t i = 0; i < n->args.n; i++) {
            if (!eval(r, sc, n->args.v[i], &a) || !eval(r, sc, n->kwargs.v[i], &b))
                return false;
            if (a.t == V_LIST && !a.u.l->tuple)
                return rerr(r, n, QRUN_ERR_FORMAT, "unhashable type: 'list'");
            if (a.t == V_DICT || a.t == V_NS)
                return rerr(r, n, QRUN_ERR_FORMAT, "unhashable type: 'dict'");
            if (!dict_set(r, n, d, a, b))
                return false;
        }
        out->t = V_DICT;
        out->u.d = d;
        return true;
    }
    case N_CONCAT: {
        sbuf sb = {.limit = r->a.limit};
        for (size_t i = 0; i < n->args.n; i++) {
            if (!eval(r, sc, n->args.v[i], &a)) {
                free(sb.p);
                return false;
            }
            sb_str(&sb, &a, false);
        }
        return sb_to_value(r, n, &sb, out);
    }
    default: return rerr(r, n, QRUN_ERR_INTERNAL, "bad expression node %d", n->kind);
    }
}

/* ---- statements */

static bool emit(rctx *r, const node *at, const char *s, size_t n)
{
    if (sb_put(&r->out, s, n))
        return true;
    if (r->out.nomem)
        return rerr(r, at, QRUN_ERR_NO_MEMORY, "out of memory");
    return rerr(r, at, QRUN_ERR_FORMAT, "rendered text exceeds its limit of %zu bytes", r->out.limit);
}

static bool assign(rctx *r, scope *sc, const node *s, const value *v)
{
    if (s->nknames == 1)
        return scope_set(r, s, sc, s->knames[0], *v);
    const vlist *l;
    if (v->t != V_LIST && v->t != V_STR && v->t != V_DICT)
        return rerr(r, s, QRUN_ERR_FORMAT, "cannot unpack %s into %zu names", type_name(v), s->nknames);
    if (!iter_of(r, s, v, &l))
        return false;
    if (l->n != s->nknames)
        return rerr(r, s, QRUN_ERR_FORMAT, "cannot unpack %zu values into %zu names", l->n, s->nknames);
    for (size_t i = 0; i < l->n; i++)
        if (!scope_set(r, s, sc, s->knames[i], l->v[i]))
            return false;
    return true;
}

static int exec_for(rctx *r, scope *sc, const node *s)
{
    value it;
    const vlist *items;
    if (!eval(r, sc, s->a, &it) || !iter_of(r, s, &it, &items))
        return X_ERR;
    scope *ls = ralloc(r, s, sizeof *ls);
    if (!ls)
        return X_ERR;
    memset(ls, 0, sizeof *ls);
    ls->parent = sc;
    if (s->b) { /* {% for x in xs if cond %}: filter first, as Jinja does */
        vlist *f = mk_list(r, s, items->n);
        if (!f)
            return X_ERR;
        f->n = 0;
        for (size_t i = 0; i < items->n; i++) {
            value c;
            ls->n = 0;
            if (!step(r, s) || !assign(r, ls, s, &items->v[i]) || !eval(r, ls, s->b, &c))
                return X_ERR;
            if (truthy(&c))
                f->v[f->n++] = items->v[i];
        }
        items = f;
    }
    if (items->n == 0)
        return exec_body(r, sc, &s->orelse);
    loopst *lp = ralloc(r, s, sizeof *lp);
    if (!lp)
        return X_ERR;
    lp->len = (int64_t)items->n;
    lp->items = items;
    value lv = {.t = V_LOOP};
    lv.u.lp = lp;
    r->loop_depth++;
    for (size_t i = 0; i < items->n; i++) {
        lp->idx = (int64_t)i;
        ls->n = 0;
        if (!step(r, s) || !assign(r, ls, s, &items->v[i]) || !scope_set(r, s, ls, "loop", lv)) {
            r->loop_depth--;
            return X_ERR;
        }
        int x = exec_body(r, ls, &s->body);
        if (x == X_ERR) {
            r->loop_depth--;
            return X_ERR;
        }
        if (x == X_BREAK)
            break;
    }
    r->loop_depth--;
    return X_OK;
}

static int exec_stmt(rctx *r, scope *sc, const node *s)
{
    value v, w;
    if (!step(r, s))
        return X_ERR;
    switch (s->kind) {
    case S_TEXT: return emit(r, s, s->cv.u.s.p, s->cv.u.s.n) ? X_OK : X_ERR;
    case S_OUT:
        if (!eval(r, sc, s->a, &v))
            return X_ERR;
        if (v.t == V_STR)
            return emit(r, s, v.u.s.p, v.u.s.n) ? X_OK : X_ERR;
        if (v.t == V_UNDEF)
            return X_OK;
        return str_of(r, s, &v, &w) && emit(r, s, w.u.s.p, w.u.s.n) ? X_OK : X_ERR;
    case S_IF:
        if (!eval(r, sc, s->a, &v))
            return X_ERR;
        return exec_body(r, sc, truthy(&v) ? &s->body : &s->orelse);
    case S_FOR: return exec_for(r, sc, s);
    case S_SET:
        if (!eval(r, sc, s->a, &v))
            return X_ERR;
        if (s->name) {
            const value *ns = lookup(sc, s->knames[0]);
            if (!ns || ns->t != V_NS)
                return rerr(r, s, QRUN_ERR_FORMAT, "cannot assign attribute '%s' on '%s': not a namespace()", s->name,
                            s->knames[0])
                           ? X_OK
                           : X_ERR;
            if (s->name[0] == '_')
                return rerr(r, s, QRUN_ERR_FORMAT, "namespaces cannot hold underscore-prefixed attributes") ? X_OK
                                                                                                            : X_ERR;
            return dict_set(r, s, ns->u.d, v_cstr(s->name), v) ? X_OK : X_ERR;
        }
        return assign(r, sc, s, &v) ? X_OK : X_ERR;
    case S_SETBLOCK:
    case S_FILTERBLOCK: {
        size_t mark = r->out.n;
        int x = exec_body(r, sc, &s->body);
        if (x == X_ERR || !capture(r, s, mark, &v))
            return X_ERR;
        if (x != X_OK)
            return rerr(r, s, QRUN_ERR_UNSUPPORTED, "break/continue out of a block") ? X_OK : X_ERR;
        if (s->b && !apply_chain(r, sc, s->b, &v, &w))
            return X_ERR;
        if (!s->b)
            w = v;
        if (s->kind == S_SETBLOCK)
            return scope_set(r, s, sc, s->knames[0], w) ? X_OK : X_ERR;
        if (w.t != V_STR && !str_of(r, s, &w, &w))
            return X_ERR;
        return emit(r, s, w.u.s.p, w.u.s.n) ? X_OK : X_ERR;
    }
    case S_MACRO:
        v.t = V_MACRO;
        v.u.m = s;
        return scope_set(r, s, sc, s->name, v) ? X_OK : X_ERR;
    case S_BREAK:
    case S_CONTINUE:
        if (r->loop_depth == 0)
            return rerr(r, s, QRUN_ERR_FORMAT, "{%% %s %%} outside a loop", s->kind == S_BREAK ? "break" : "continue")
                       ? X_OK
                       : X_ERR;
        return s->kind == S_BREAK ? X_BREAK : X_CONT;
    case S_BLOCK: return exec_body(r, sc, &s->body);
    default: return rerr(r, s, QRUN_ERR_INTERNAL, "bad statement node %d", s->kind) ? X_OK : X_ERR;
    }
}

static int exec_body(rctx *r, scope *sc, const nlist *body)
{
    for (size_t i = 0; i < body->n; i++) {
        int x = exec_stmt(r, sc, body->v[i]);
        if (x != X_OK)
            return x;
    }
    return X_OK;
}

/* ------------------------------------------------------------- public API */

qrun_status chat_template_compile(const char *src, size_t len, chat_template **out, qerr *err)
{
    if (!out || (!src && len))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "chat_template_compile: NULL argument");
    *out = NULL;
    if (len > ((size_t)64 << 20))
        return qerr_set(err, QRUN_ERR_FORMAT, "chat template of %zu bytes is larger than the 64 MiB limit", len);
    chat_template *t = calloc(1, sizeof *t);
    if (!t)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "chat template: out of memory");
    t->a.limit = 64 * len + ((size_t)16 << 20);
    /* Jinja: \r\n and \r become \n; one trailing newline is dropped */
    t->src = aalloc(&t->a, len + 1);
    if (!t->src) {
        chat_template_free(t);
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "chat template: out of memory");
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            t->src[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else
            t->src[n++] = src[i];
    }
    if (n && t->src[n - 1] == '\n')
        n--;
    t->src[n] = '\0';
    t->len = n;
    parser p = {.src = t->src, .len = n, .a = &t->a, .err = err};
    bool ok = lex(&p);
    if (ok) {
        const char *which = NULL;
        ok = parse_body(&p, &t->body, NULL, &which, 0, NULL);
    }
    free(p.toks);
    if (!ok || p.failed) {
        if (!p.failed)
            qerr_set(err, QRUN_ERR_INTERNAL, "chat template: compile failed");
        chat_template_free(t);
        return err ? err->code : QRUN_ERR_FORMAT;
    }
    *out = t;
    return QRUN_OK;
}

void chat_template_free(chat_template *t)
{
    if (!t)
        return;
    arena_free(&t->a);
    free(t);
}

static qrun_status finish_err(rctx *r, qerr *err)
{
    if (!r->failed)
        qerr_set(err, QRUN_ERR_INTERNAL, "chat template: render failed without a message");
    return err ? err->code : QRUN_ERR_FORMAT;
}

qrun_status chat_template_render(const chat_template *t, const chat_render_opts *o, char **out, size_t *out_len,
                                 qerr *err)
{
    if (!t || !o || !out || (o->n_messages && !o->messages) || (o->n_vars && !o->vars))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "chat_template_render: NULL argument");
    *out = NULL;
    if (out_len)
        *out_len = 0;
    qerr local;
    if (!err)
        err = &local;
    rctx r = {0};
    r.t = t;
    r.err = err;
    r.a.limit = o->limits.max_memory ? o->limits.max_memory : CHAT_DEFAULT_MAX_MEMORY;
    r.out.limit = o->limits.max_output ? o->limits.max_output : CHAT_DEFAULT_MAX_OUTPUT;
    r.max_steps = o->limits.max_steps ? o->limits.max_steps : CHAT_DEFAULT_MAX_STEPS;
    r.max_depth = o->limits.max_depth > 0 ? o->limits.max_depth : CHAT_DEFAULT_MAX_DEPTH;
    r.now = o->now;
    qrun_status st = QRUN_OK;

    scope *root = ralloc(&r, NULL, sizeof *root);
    vlist *msgs = root ? mk_list(&r, NULL, o->n_messages) : NULL;
    if (!msgs) {
        st = finish_err(&r, err);
        goto done;
    }
    memset(root, 0, sizeof *root);
    r.root = root;
    for (size_t i = 0; i < o->n_messages; i++) {
        const chat_message *m = &o->messages[i];
        vdict *d = mk_dict(&r, NULL);
        if (!m->role) {
            st = qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "chat_template_render: message %zu has no role", i);
            goto done;
        }
        if (!d || !dict_set(&r, NULL, d, v_cstr("role"), v_cstr(m->role)) ||
            !dict_set(&r, NULL, d, v_cstr("content"), m->content ? v_cstr(m->content) : v_none())) {
            st = finish_err(&r, err);
            goto done;
        }
        msgs->v[i].t = V_DICT;
        msgs->v[i].u.d = d;
    }
    bool ok = scope_set(&r, NULL, root, "messages", v_list(msgs)) &&
              scope_set(&r, NULL, root, "add_generation_prompt", v_bool(o->add_generation_prompt)) &&
              scope_set(&r, NULL, root, "tools", v_none()) && scope_set(&r, NULL, root, "documents", v_none());
    if (ok && o->bos_token)
        ok = scope_set(&r, NULL, root, "bos_token", v_cstr(o->bos_token));
    if (ok && o->eos_token)
        ok = scope_set(&r, NULL, root, "eos_token", v_cstr(o->eos_token));
    for (size_t i = 0; ok && i < o->n_vars; i++) {
        const chat_var *v = &o->vars[i];
        if (!v->name || !v->value || !strcmp(v->name, "messages") || !strcmp(v->name, "add_generation_prompt")) {
            st = qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "chat_template_render: bad extra variable %zu (%s)", i,
                          v->name ? v->name : "no name");
            goto done;
        }
        ok = scope_set(&r, NULL, root, v->name, v_cstr(v->value));
    }
    if (!ok || exec_body(&r, root, &t->body) != X_OK) {
        st = finish_err(&r, err);
        goto done;
    }
    if (!r.out.p && !sb_put(&r.out, "", 0)) {
        st = qerr_set(err, QRUN_ERR_NO_MEMORY, "chat template: out of memory");
        goto done;
    }
    *out = r.out.p;
    if (out_len)
        *out_len = r.out.n;
    r.out.p = NULL;
done:
    free(r.out.p);
    arena_free(&r.a);
    return st;
}

qrun_status chat_plain_render(const chat_render_opts *o, char **out, size_t *out_len, qerr *err)
{
    if (!o || !out || (o->n_messages && !o->messages))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "chat_plain_render: NULL argument");
    *out = NULL;
    sbuf b = {.limit = o->limits.max_output ? o->limits.max_output : CHAT_DEFAULT_MAX_OUTPUT};
    sb_put(&b, "", 0);
    for (size_t i = 0; i < o->n_messages; i++) {
        const chat_message *m = &o->messages[i];
        if (!m->role || !m->role[0]) {
            free(b.p);
            return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "chat_plain_render: message %zu has no role", i);
        }
        sb_putc(&b, (char)toupper((unsigned char)m->role[0]));
        sb_puts(&b, m->role + 1);
        sb_puts(&b, ": ");
        if (m->content)
            sb_puts(&b, m->content);
        sb_putc(&b, '\n');
    }
    if (o->add_generation_prompt)
        sb_puts(&b, "Assistant:");
    if (b.over) {
        free(b.p);
        return b.nomem ? qerr_set(err, QRUN_ERR_NO_MEMORY, "chat_plain_render: out of memory")
                       : qerr_set(err, QRUN_ERR_FORMAT, "chat_plain_render: output exceeds %zu bytes", b.limit);
    }
    *out = b.p;
    if (out_len)
        *out_len = b.n;
    return QRUN_OK;
}
