/* Chat templates: fixtures rendered by transformers (tests/data/chat, from
 * tools/make_chat_fixtures.py), single-feature cases, hostile templates and
 * a mutation fuzz of the real templates. */
#include "chat_template.h"
#include "testutil.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static cJSON *load_json(const char *rel)
{
    size_t n = 0;
    unsigned char *text = tu_read_file(tu_data_path(rel), &n);
    ck_assert_msg(text != NULL, "cannot read %s", tu_data_path(rel));
    cJSON *j = cJSON_ParseWithLength((const char *)text, n);
    free(text);
    ck_assert_msg(j != NULL, "cannot parse %s", rel);
    return j;
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* the fixtures' pinned strftime_now clock: 2024-07-26 13:05:09, a Friday */
static struct tm fixed_now(void)
{
    struct tm t;
    memset(&t, 0, sizeof t);
    t.tm_year = 2024 - 1900;
    t.tm_mon = 6;
    t.tm_mday = 26;
    t.tm_hour = 13;
    t.tm_min = 5;
    t.tm_sec = 9;
    t.tm_wday = 5;
    t.tm_yday = 207;
    return t;
}

/* messages of a JSON array of {role, content} */
static chat_message *messages_of(const cJSON *arr, size_t *n)
{
    *n = (size_t)cJSON_GetArraySize(arr);
    chat_message *m = calloc(*n ? *n : 1, sizeof *m);
    ck_assert_ptr_nonnull(m);
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
    {
        m[i].role = jstr(e, "role");
        m[i].content = jstr(e, "content"); /* null -> NULL */
        i++;
    }
    return m;
}

/* Render src; returns status, *out malloc'ed on success. */
static qrun_status render_src(const char *src, const chat_render_opts *o, char **out, qerr *err)
{
    chat_template *t = NULL;
    qrun_status st = chat_template_compile(src, strlen(src), &t, err);
    if (st != QRUN_OK)
        return st;
    st = chat_template_render(t, o, out, NULL, err);
    chat_template_free(t);
    return st;
}

/* Compare to an expected {output} or {error:{type,message}} case. */
static int check_case(const char *label, const char *src, const chat_render_opts *o, const cJSON *c)
{
    char *out = NULL;
    qerr err;
    qerr_clear(&err);
    qrun_status st = render_src(src, o, &out, &err);
    const char *want = jstr(c, "output");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(c, "error");
    int ok = 1;
    if (want) {
        if (st != QRUN_OK) {
            fprintf(stderr, "FAIL %s: error %d: %s\n", label, (int)st, err.msg);
            ok = 0;
        } else if (strcmp(out, want) != 0) {
            fprintf(stderr, "FAIL %s:\n--- want ---\n%s\n--- got ---\n%s\n---\n", label, want, out);
            ok = 0;
        }
    } else {
        const char *type = jstr(e, "type"), *msg = jstr(e, "message");
        if (st == QRUN_OK) {
            fprintf(stderr, "FAIL %s: expected %s (%s), rendered:\n%s\n", label, type, msg, out);
            ok = 0;
        } else if (type && !strcmp(type, "TemplateError") && msg &&
                   (st != QRUN_ERR_INVALID_ARGUMENT || !strstr(err.msg, msg))) {
            fprintf(stderr, "FAIL %s: expected raise_exception(%s), got %d: %s\n", label, msg, (int)st, err.msg);
            ok = 0;
        }
    }
    free(out);
    return ok;
}

START_TEST(test_fixtures)
{
    cJSON *tj = load_json("chat/templates.json"), *ej = load_json("chat/expected.json");
    const cJSON *templates = cJSON_GetObjectItemCaseSensitive(tj, "templates");
    const cJSON *convs = cJSON_GetObjectItemCaseSensitive(tj, "conversations");
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(ej, "cases");
    ck_assert(cJSON_IsArray(templates) && cJSON_IsObject(convs) && cJSON_IsArray(cases));
    struct tm now = fixed_now();
    int total = 0, passed = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, templates)
    {
        const char *name = jstr(t, "name"), *src = jstr(t, "template");
        int tn = 0, tp = 0;
        const cJSON *c;
        cJSON_ArrayForEach(c, cases)
        {
            if (strcmp(jstr(c, "template"), name) != 0)
                continue;
            size_t nm;
            chat_message *msgs = messages_of(cJSON_GetObjectItemCaseSensitive(convs, jstr(c, "conversation")), &nm);
            chat_render_opts o;
            memset(&o, 0, sizeof o);
            o.messages = msgs;
            o.n_messages = nm;
            o.add_generation_prompt = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt"));
            o.bos_token = jstr(t, "bos_token");
            o.eos_token = jstr(t, "eos_token");
            o.now = &now;
            char label[256];
            snprintf(label, sizeof label, "%s/%s/agp=%d", name, jstr(c, "conversation"), o.add_generation_prompt);
            tn++;
            tp += check_case(label, src, &o, c);
            free(msgs);
        }
        printf("chat fixtures: %-22s %d/%d\n", name, tp, tn);
        ck_assert_msg(tn > 0, "no cases for %s", name);
        total += tn;
        passed += tp;
    }
    printf("chat fixtures: %d/%d passed\n", passed, total);
    ck_assert_int_eq(passed, total);
    cJSON_Delete(tj);
    cJSON_Delete(ej);
}
END_TEST

START_TEST(test_units)
{
    cJSON *uj = load_json("chat/units.json");
    size_t nm;
    chat_message *msgs = messages_of(cJSON_GetObjectItemCaseSensitive(uj, "messages"), &nm);
    const chat_var vars[] = {{"name", "World"}};
    chat_render_opts o;
    memset(&o, 0, sizeof o);
    o.messages = msgs;
    o.n_messages = nm;
    o.add_generation_prompt = true;
    o.bos_token = "<s>";
    o.eos_token = "</s>";
    o.vars = vars;
    o.n_vars = 1;
    int total = 0, passed = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(uj, "cases"))
    {
        char label[96];
        snprintf(label, sizeof label, "unit %d: %.60s", total, jstr(c, "template"));
        total++;
        passed += check_case(label, jstr(c, "template"), &o, c);
    }
    printf("chat units: %d/%d passed\n", passed, total);
    ck_assert_int_eq(passed, total);
    free(msgs);
    cJSON_Delete(uj);
}
END_TEST

static const chat_message two_msgs[] = {{"user", "Hello"}, {"assistant", NULL}};

START_TEST(test_api)
{
    chat_render_opts o;
    memset(&o, 0, sizeof o);
    o.messages = two_msgs;
    o.n_messages = 2;
    char *out = NULL;
    size_t n = 0;
    qerr err;
    /* plain fallback */
    ck_assert_int_eq(chat_plain_render(&o, &out, &n, &err), QRUN_OK);
    ck_assert_str_eq(out, "User: Hello\nAssistant: \n");
    ck_assert_uint_eq(n, strlen(out));
    free(out);
    o.add_generation_prompt = true;
    o.n_messages = 1;
    ck_assert_int_eq(chat_plain_render(&o, &out, NULL, &err), QRUN_OK);
    ck_assert_str_eq(out, "User: Hello\nAssistant:");
    free(out);
    /* content NULL is none; bos undefined when NULL; extra variables */
    o.n_messages = 2;
    const chat_var vars[] = {{"unk_token", "<unk>"}};
    o.vars = vars;
    o.n_vars = 1;
    ck_assert_int_eq(render_src("{{ messages[1].content is none }} {{ bos_token is defined }} {{ unk_token }}", &o,
                                &out, &err),
                     QRUN_OK);
    ck_assert_str_eq(out, "True False <unk>");
    free(out);
    /* empty template, empty output */
    ck_assert_int_eq(render_src("", &o, &out, &err), QRUN_OK);
    ck_assert_str_eq(out, "");
    free(out);
    /* compiled templates are reusable */
    chat_template *t;
    ck_assert_int_eq(chat_template_compile("{{ messages|length }}", 21, &t, &err), QRUN_OK);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(chat_template_render(t, &o, &out, NULL, &err), QRUN_OK);
        ck_assert_str_eq(out, "2");
        free(out);
    }
    chat_template_free(t);
    chat_template_free(NULL);
    /* strftime_now takes the caller's clock */
    struct tm now = fixed_now();
    o.now = &now;
    ck_assert_int_eq(render_src("{{ strftime_now('%d %b %Y') }}", &o, &out, &err), QRUN_OK);
    ck_assert_str_eq(out, "26 Jul 2024");
    free(out);
    /* argument errors */
    ck_assert_int_eq(chat_template_compile(NULL, 3, &t, &err), QRUN_ERR_INVALID_ARGUMENT);
    const chat_var bad[] = {{"messages", "x"}};
    o.vars = bad;
    ck_assert_int_eq(render_src("x", &o, &out, &err), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(out);
}
END_TEST

static size_t put(char *dst, const char *s)
{
    size_t n = strlen(s);
    memcpy(dst, s, n);
    return n;
}

/* an error whose message contains `needle` (and a line/column when `pos`) */
static void expect_error(const char *src, const char *needle, const chat_limits *lim)
{
    chat_render_opts o;
    memset(&o, 0, sizeof o);
    o.messages = two_msgs;
    o.n_messages = 2;
    if (lim)
        o.limits = *lim;
    char *out = NULL;
    qerr err;
    qerr_clear(&err);
    qrun_status st = render_src(src, &o, &out, &err);
    ck_assert_msg(st != QRUN_OK, "expected an error for %.80s, rendered %.80s", src, out ? out : "");
    ck_assert_ptr_null(out);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "error for %.80s is '%s', wanted '%s'", src, err.msg, needle);
}

START_TEST(test_errors)
{
    expect_error("{{ raise_exception('bad roles') }}", "raised an exception (line 1, column 4): bad roles", NULL);
    expect_error("a\n  {% if x %}", "line 2, column 3: {% if %} is never closed", NULL);
    expect_error("{{ 1 + }}", "line 1, column 8: expected an expression", NULL);
    expect_error("{{ x", "unterminated {{ }} tag", NULL);
    expect_error("{% if x", "unterminated {% %} tag", NULL);
    expect_error("{# open", "unterminated comment", NULL);
    expect_error("{{ 'abc }}", "unterminated string", NULL);
    expect_error("{% endfor %}", "unexpected {% endfor %}", NULL);
    expect_error("{% for x in y %}{% endif %}", "unexpected {% endif %} inside {% for %}", NULL);
    expect_error("{% include 'x' %}", "{% include %} tag is not supported", NULL);
    expect_error("{% frobnicate %}", "unknown tag 'frobnicate'", NULL);
    expect_error("{{ x | frob }}", "unknown filter 'frob'", NULL);
    expect_error("{{ x is frob }}", "unknown test 'frob'", NULL);
    expect_error("{{ 'a'.frob() }}", "unknown method 'frob' on string", NULL);
    expect_error("{{ nope.attr }}", "'nope' is undefined", NULL);
    expect_error("{{ nope() }}", "'nope' is undefined", NULL);
    expect_error("{{ 'a' + 1 }}", "unsupported operand types for +: 'string' and 'int'", NULL);
    expect_error("{{ messages[1].content + 'x' }}", "unsupported operand types", NULL);
    expect_error("{{ 1 // 0 }}", "division or modulo by zero", NULL);
    expect_error("{{ 9223372036854775807 + 1 }}", "integer overflow", NULL);
    expect_error("{{ '%s' % 1 }}", "not supported", NULL);
    expect_error("{% set x.y = 1 %}", "not a namespace", NULL);
    expect_error("{% break %}", "outside a loop", NULL);
    expect_error("{{ [].append(1) }}", "forbids modifying a list", NULL);
    expect_error("{{ namespace(_x=1) }}", "underscore", NULL);
}
END_TEST

START_TEST(test_hostile)
{
    chat_limits small = {.max_output = 1 << 20, .max_memory = 32 << 20, .max_steps = 200000, .max_depth = 32};
    expect_error("{% for i in range(1000000000) %}x{% endfor %}", "range too big", NULL);
    expect_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps", &small);
    expect_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps", NULL);
    expect_error("{{ 'x' * 1000000000000 }}", "memory limit", NULL);
    expect_error("{{ 'abcdefgh' * 100000000 }}", "memory limit", &small);
    expect_error("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "exceeds its limit", &small);
    expect_error("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
                 "memory limit", &small);
    expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nested deeper", NULL);
    expect_error("{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(0) }}", "nested deeper", &small);
    expect_error("{{ [1] * 100000000000 }}", "memory limit", NULL);
    expect_error("{{ 2 ** 100 }}", "overflow", NULL);
    /* deep nesting: parentheses, lists, blocks, not-chains */
    size_t deep = 100000;
    char *s = malloc(12 * deep + 16);
    if (!s)
        ck_abort_msg("out of memory");
    const char *shapes[][2] = {{"(", ")"}, {"[", "]"}, {"{% if 1 %}", "{% endif %}"}, {"not ", ""}, {"-", ""}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        size_t o = 0;
        int block = shapes[k][0][0] == '{';
        if (!block)
            o += put(s + o, "{{ ");
        size_t reps = block ? deep / 10 : deep;
        for (size_t i = 0; i < reps; i++)
            o += put(s + o, shapes[k][0]);
        s[o++] = '1';
        for (size_t i = 0; i < reps; i++)
            o += put(s + o, shapes[k][1]);
        if (!block)
            o += put(s + o, " }}");
        s[o] = '\0';
        expect_error(s, "nested too deeply", NULL);
    }
    free(s);
    /* a template of only openers */
    expect_error("{{{{{{{{{{{{{{{{{{{{{{{{", "", NULL);
    expect_error("{%%%%%%%%%%%%%%%", "", NULL);
    expect_error("{{ '\\", "unterminated string", NULL);
    expect_error("{{ '\\x4' }}", "truncated", NULL);
}
END_TEST

/* Random byte mutations of the real templates must never crash. */
START_TEST(test_fuzz)
{
    cJSON *tj = load_json("chat/templates.json");
    const cJSON *templates = cJSON_GetObjectItemCaseSensitive(tj, "templates");
    uint64_t seed = tu_seed();
    tu_rng rng = {seed};
    static const char *const pieces[] = {"{{", "}}", "{%", "%}", "{#", "#}", "-", "+", "'", "\"", "\\", "(", ")",
                                         "[", "]", "{", "}", "|", ".", ",", ":", "~", "*", "**", "//", " if ",
                                         " else ", " for ", " in ", "endif", "endfor", " not ", "\n", "\xff",
                                         "\xe2\x82", "loop.", "messages", "ns.", "range(99999)", "0", "-1", "1e9"};
    const chat_message msgs[] = {{"system", "s"}, {"user", "u\n\xc3\xa9"}, {"assistant", "a"}, {"user", NULL}};
    chat_limits lim = {.max_output = 1 << 16, .max_memory = 16 << 20, .max_steps = 20000, .max_depth = 16};
    struct tm now = fixed_now();
    int n_ok = 0, n_err = 0;
    const char *env = getenv("QRUN_CHAT_FUZZ_ROUNDS");
    const int rounds = env ? atoi(env) : 4000;
    int n_templates = cJSON_GetArraySize(templates);
    char *buf = malloc(1 << 16);
    ck_assert_ptr_nonnull(buf);
    for (int it = 0; it < rounds; it++) {
        const char *src = jstr(cJSON_GetArrayItem(templates, (int)(tu_next(&rng) % (uint64_t)n_templates)), "template");
        size_t n = strlen(src);
        if (n > (1 << 15))
            n = 1 << 15;
        memcpy(buf, src, n);
        int muts = 1 + (int)(tu_next(&rng) % ((it & 1) ? 2 : 8));
        for (int m = 0; m < muts; m++) {
            size_t at = n ? (size_t)(tu_next(&rng) % n) : 0;
            switch (tu_next(&rng) % 4) {
            case 0: /* flip a byte */
                if (n)
                    buf[at] = (char)(tu_next(&rng) & 0xFF);
                break;
            case 1: /* delete a run */
                if (n) {
                    size_t k = 1 + (size_t)(tu_next(&rng) % 8);
                    if (at + k > n)
                        k = n - at;
                    memmove(buf + at, buf + at + k, n - at - k);
                    n -= k;
                }
                break;
            default: { /* insert a piece */
                const char *p = pieces[tu_next(&rng) % (sizeof pieces / sizeof pieces[0])];
                size_t k = strlen(p);
                if (n + k < (1 << 16) - 1) {
                    memmove(buf + at + k, buf + at, n - at);
                    memcpy(buf + at, p, k);
                    n += k;
                }
            }
            }
        }
        chat_template *t = NULL;
        qerr err;
        if (chat_template_compile(buf, n, &t, &err) != QRUN_OK) {
            ck_assert_msg(err.msg[0] != '\0', "compile error without a message");
            n_err++;
            continue;
        }
        chat_render_opts o;
        memset(&o, 0, sizeof o);
        o.messages = msgs;
        o.n_messages = 1 + (size_t)(tu_next(&rng) % 4);
        o.add_generation_prompt = tu_next(&rng) & 1;
        o.bos_token = "<s>";
        o.eos_token = "</s>";
        o.now = &now;
        o.limits = lim;
        char *out = NULL;
        if (chat_template_render(t, &o, &out, NULL, &err) == QRUN_OK) {
            ck_assert_ptr_nonnull(out);
            n_ok++;
        } else {
            ck_assert_msg(err.msg[0] != '\0', "render error without a message");
            ck_assert_ptr_null(out);
            n_err++;
        }
        free(out);
        chat_template_free(t);
    }
    free(buf);
    printf("chat fuzz: %d rounds (seed %llu): %d rendered, %d errors\n", rounds, (unsigned long long)seed, n_ok,
           n_err);
    cJSON_Delete(tj);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("chat_template");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fixtures);
    tcase_add_test(tc, test_units);
    tcase_add_test(tc, test_api);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_hostile);
    tcase_add_test(tc, test_fuzz);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
