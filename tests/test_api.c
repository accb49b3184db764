/* The public C API (include/qrun.h) on tiny converted models: loading and its
 * errors, tokens, chat templates, sessions (eval bounds, logits), and
 * generation (greedy = step-by-step argmax, seeds, several sequences, stop
 * strings, lengths, prefix reuse, cancellation, callbacks, context limits). */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "convert.h"
#include "dtype.h"
#include "qrun.h"
#include "testutil.h"

static char *g_tmp;

/* Convert tests/data/tiny/<variant> (or an absolute directory) once. */
static const char *convert_dir(const char *in, const char *name)
{
    static char paths[8][1024];
    static int slot;
    char *p = paths[slot++ % 8];
    snprintf(p, 1024, "%s/%s.qbin", g_tmp, name);
    if (tu_file_exists(p))
        return p;
    qconvert_options o;
    qconvert_options_init(&o);
    o.input_dir = in;
    o.output_path = p;
    o.quant = QCONVERT_F16;
    o.compute_dtype = QDT_F16;
    qerr err = {0};
    qrun_status st = qconvert_run(&o, NULL, &err);
    ck_assert_msg(st == QRUN_OK, "convert %s: %s", in, err.msg);
    return p;
}

static const char *model_path(const char *variant)
{
    char in[1024];
    snprintf(in, sizeof in, "%s/tiny/%s", tu_data_dir(), variant);
    return convert_dir(in, variant);
}

static qrun_model *load(const char *variant)
{
    qrun_model_params mp;
    qrun_model_params_init(&mp);
    mp.n_threads = 2;
    /* the CPU engine's numerics, also on a GPU machine (the GPU engine
     * computes in f16/bf16: tests/gpu/test_gpu_engine.c covers it) */
    mp.backend = QRUN_BACKEND_CPU;
    qrun_model *m = NULL;
    char eb[512];
    qrun_status st = qrun_model_load(model_path(variant), &mp, &m, eb, sizeof eb);
    ck_assert_msg(st == QRUN_OK && m, "load %s: %s", variant, eb);
    return m;
}

static qrun_session *session(qrun_model *m, int n_ctx)
{
    qrun_session_params sp;
    qrun_session_params_init(&sp);
    sp.n_ctx = n_ctx;
    sp.kv_type = QRUN_KV_F32;
    qrun_session *s = NULL;
    char eb[512];
    qrun_status st = qrun_session_create(m, &sp, &s, eb, sizeof eb);
    ck_assert_msg(st == QRUN_OK && s, "session: %s", eb);
    return s;
}

static size_t tokenize(qrun_model *m, const char *text, int32_t *ids, size_t cap)
{
    size_t n = 0;
    char eb[256];
    qrun_status st = qrun_tokenize(m, text, strlen(text), QRUN_TOKENIZE_ADD_SPECIAL, ids, cap,
                                   &n, eb, sizeof eb);
    ck_assert_msg(st == QRUN_OK, "tokenize: %s", eb);
    ck_assert(n <= cap);
    return n;
}

/* What a generation produced, gathered by the callback. */
#define MAXTOK 1024
typedef struct collect {
    int32_t ids[8][MAXTOK];
    int n[8];
    char text[8][8192];
    size_t len[8];
    int stop_after; /* return false after this many tokens (0: never) */
    int calls;
} collect;

static bool on_tok(void *user, int seq, int32_t token, const char *text, size_t len)
{
    collect *c = user;
    ck_assert(seq >= 0 && seq < 8);
    if (token >= 0 && c->n[seq] < MAXTOK)
        c->ids[seq][c->n[seq]++] = token;
    ck_assert(c->len[seq] + len < sizeof c->text[seq]);
    memcpy(c->text[seq] + c->len[seq], text, len);
    c->len[seq] += len;
    c->text[seq][c->len[seq]] = '\0';
    c->calls++;
    return !(c->stop_after > 0 && c->n[seq] >= c->stop_after);
}

static qrun_generate_params greedy(int max_new)
{
    qrun_generate_params gp;
    qrun_generate_params_init(&gp);
    gp.sampler.temperature = 0;
    gp.max_new_tokens = max_new;
    gp.stop_at_eos = false;
    return gp;
}

static int32_t argmax(const float *v, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

/* ---- models ------------------------------------------------------------------------ */

START_TEST(defaults)
{
    qrun_model_params mp;
    qrun_model_params_init(&mp);
    ck_assert_uint_eq(mp.struct_size, sizeof mp);
    ck_assert(mp.verify_checksums);
    ck_assert_int_eq(mp.gpu_layers, -1);
    ck_assert_int_eq(mp.backend, QRUN_BACKEND_AUTO);
    qrun_session_params sp;
    qrun_session_params_init(&sp);
    ck_assert_int_eq(sp.n_ctx, 0);
    ck_assert_int_eq(sp.n_batch, 512);
    ck_assert_int_eq(sp.kv_type, QRUN_KV_F16);
    qrun_generate_params gp;
    qrun_generate_params_init(&gp);
    ck_assert_float_eq(gp.sampler.temperature, 0.8f);
    ck_assert_int_eq(gp.sampler.top_k, 40);
    ck_assert_float_eq(gp.sampler.top_p, 0.95f);
    ck_assert_float_eq(gp.sampler.min_p, 0.05f);
    ck_assert_float_eq(gp.sampler.repeat_penalty, 1.0f);
    ck_assert_int_eq(gp.sampler.repeat_last_n, 64);
    ck_assert_int_eq(gp.max_new_tokens, 256);
    ck_assert(gp.stop_at_eos);
    ck_assert_int_eq(gp.n_sequences, 1);
    ck_assert_uint_eq(gp.tokenize_flags, QRUN_TOKENIZE_ADD_SPECIAL);
    ck_assert_str_eq(qrun_version(), QRUN_VERSION_STRING);
}
END_TEST

START_TEST(load_errors)
{
    char eb[512];
    qrun_model *m = (qrun_model *)1;
    char missing[1024];
    snprintf(missing, sizeof missing, "%s/does-not-exist.qbin", g_tmp);
    qrun_status st = qrun_model_load(missing, NULL, &m, eb, sizeof eb);
    ck_assert_msg(st == QRUN_ERR_NOT_FOUND || st == QRUN_ERR_IO, "status %d", st);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(eb, "does-not-exist.qbin") != NULL, "message: %s", eb);

    /* A truncated copy of a real model and a file of garbage. */
    size_t size = 0;
    unsigned char *bytes = tu_read_file(model_path("llama-gqa-llama3"), &size);
    ck_assert_ptr_nonnull(bytes);
    char bad[1024];
    snprintf(bad, sizeof bad, "%s/truncated.qbin", g_tmp);
    ck_assert_int_eq(tu_write_file(bad, bytes, size / 2), 0);
    st = qrun_model_load(bad, NULL, &m, eb, sizeof eb);
    ck_assert_int_ne(st, QRUN_OK);
    ck_assert_ptr_null(m);
    ck_assert_msg(eb[0] != '\0', "no message for a truncated file");
    memset(bytes, 'x', size < 4096 ? size : 4096);
    snprintf(bad, sizeof bad, "%s/garbage.qbin", g_tmp);
    ck_assert_int_eq(tu_write_file(bad, bytes, size), 0);
    st = qrun_model_load(bad, NULL, &m, eb, sizeof eb);
    ck_assert_int_eq(st, QRUN_ERR_FORMAT);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(eb, "garbage.qbin") != NULL, "message: %s", eb);
    free(bytes);

    /* NULL error buffer is fine. */
    st = qrun_model_load(missing, NULL, &m, NULL, 0);
    ck_assert_int_ne(st, QRUN_OK);
    st = qrun_model_load(NULL, NULL, &m, eb, sizeof eb);
    ck_assert_int_eq(st, QRUN_ERR_INVALID_ARGUMENT);
    st = qrun_model_load(missing, NULL, NULL, eb, sizeof eb);
    ck_assert_int_eq(st, QRUN_ERR_INVALID_ARGUMENT);

    /* CUDA: unsupported in a build without it, a device error without a
     * GPU, else the GPU engine. */
    qrun_model_params mp;
    qrun_model_params_init(&mp);
    mp.backend = QRUN_BACKEND_CUDA;
    st = qrun_model_load(model_path("llama-gqa-llama3"), &mp, &m, eb, sizeof eb);
    if (st == QRUN_OK) {
        qrun_model_info in;
        qrun_model_get_info(m, &in);
        ck_assert_str_eq(in.backend, "cuda");
        ck_assert_int_eq(in.n_gpu_layers, in.n_layers);
        qrun_model_free(m);
        m = NULL;
    } else {
        ck_assert_msg(st == QRUN_ERR_UNSUPPORTED || st == QRUN_ERR_DEVICE, "status %d", st);
        ck_assert_ptr_null(m);
        ck_assert_msg(strstr(eb, "CUDA") != NULL, "message: %s", eb);
    }
    mp.backend = QRUN_BACKEND_AUTO;
    mp.gpu_layers = -2;
    st = qrun_model_load(model_path("llama-gqa-llama3"), &mp, &m, eb, sizeof eb);
    ck_assert_int_eq(st, QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(eb, "gpu_layers") != NULL, "message: %s", eb);

    /* Uninitialised params. */
    memset(&mp, 0, sizeof mp);
    st = qrun_model_load(model_path("llama-gqa-llama3"), &mp, &m, eb, sizeof eb);
    ck_assert_int_eq(st, QRUN_ERR_INVALID_ARGUMENT);

    /* NULL-safe helpers. */
    qrun_model_free(NULL);
    qrun_session_free(NULL);
    qrun_free(NULL);
    ck_assert_str_eq(qrun_session_last_error(NULL), "");
    ck_assert_ptr_null(qrun_session_logits(NULL));
    ck_assert_ptr_null(qrun_token_piece(NULL, 0));
    ck_assert_ptr_null(qrun_model_metadata_json(NULL));
    qrun_session_cancel(NULL);
    ck_assert_int_eq(qrun_session_n_past(NULL), 0);
    ck_assert_ptr_nonnull(qrun_status_string(QRUN_ERR_CANCELLED));
}
END_TEST

START_TEST(info)
{
    qrun_model *m = load("llama-gqa-llama3");
    qrun_model_info in;
    qrun_model_get_info(m, &in);
    ck_assert_str_eq(in.architecture, "llama");
    ck_assert_str_eq(in.backend, "cpu");
    ck_assert_int_eq(in.vocab_size, 505);
    ck_assert_int_eq(in.n_ctx_train, 2048);
    ck_assert_int_eq(in.n_layers, 2);
    ck_assert_int_eq(in.bos_id, 500);
    ck_assert_int_eq(in.eos_id, 501);
    ck_assert(!in.has_chat_template);
    const char *js = qrun_model_metadata_json(m);
    ck_assert_ptr_nonnull(js);
    ck_assert_int_eq(js[0], '{');
    qrun_model_free(m);
}
END_TEST

/* ---- tokens ------------------------------------------------------------------------- */

static void roundtrip(const char *variant)
{
    qrun_model *m = load(variant);
    const char *text = "Hello world, this is qrun. Caf\xc3\xa9 \xe2\x82\xac 42!";
    char eb[256];
    size_t need = 0;
    /* cap 0: only the count. */
    ck_assert_int_eq(qrun_tokenize(m, text, strlen(text), QRUN_TOKENIZE_ADD_SPECIAL, NULL, 0,
                                   &need, eb, sizeof eb),
                     QRUN_OK);
    ck_assert_uint_gt(need, 2);
    int32_t ids[256], few[3] = {-7, -7, -7};
    size_t n = 0;
    ck_assert_int_eq(qrun_tokenize(m, text, strlen(text), QRUN_TOKENIZE_ADD_SPECIAL, few, 2, &n,
                                   eb, sizeof eb),
                     QRUN_OK);
    ck_assert_uint_eq(n, need);
    ck_assert_int_eq(few[2], -7); /* nothing written past cap */
    n = tokenize(m, text, ids, 256);
    ck_assert_uint_eq(n, need);
    ck_assert_int_eq(few[0], ids[0]);
    ck_assert_int_eq(few[1], ids[1]);

    char out[512];
    size_t len = 0;
    ck_assert_int_eq(qrun_detokenize(m, ids, n, QRUN_DETOKENIZE_SKIP_SPECIAL, out, sizeof out,
                                     &len, eb, sizeof eb),
                     QRUN_OK);
    ck_assert_uint_eq(len, strlen(text));
    ck_assert_str_eq(out, text);
    /* Too small: length reported, nothing written past cap. */
    char small[8];
    memset(small, '#', sizeof small);
    ck_assert_int_eq(qrun_detokenize(m, ids, n, QRUN_DETOKENIZE_SKIP_SPECIAL, small, 4, &len, eb,
                                     sizeof eb),
                     QRUN_OK);
    ck_assert_uint_eq(len, strlen(text));
    ck_assert_int_eq(small[4], '#');
    ck_assert_int_eq(qrun_detokenize(m, ids, n, 0, NULL, 0, &len, eb, sizeof eb), QRUN_OK);
    ck_assert_uint_gt(len, 0);

    /* Invalid UTF-8 names the offset. */
    ck_assert_int_eq(qrun_tokenize(m, "ab\xff", 3, 0, ids, 256, &n, eb, sizeof eb),
                     QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strchr(eb, '2') != NULL, "message: %s", eb);
    /* Out-of-range ids. */
    int32_t badid = 1 << 30;
    ck_assert_int_ne(qrun_detokenize(m, &badid, 1, 0, out, sizeof out, &len, eb, sizeof eb),
                     QRUN_OK);
    ck_assert_ptr_null(qrun_token_piece(m, -1));
    ck_assert_ptr_null(qrun_token_piece(m, 1 << 30));
    ck_assert_ptr_nonnull(qrun_token_piece(m, ids[1]));
    /* NULL arguments. */
    ck_assert_int_eq(qrun_tokenize(NULL, "a", 1, 0, ids, 256, &n, eb, sizeof eb),
                     QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(qrun_tokenize(m, "a", 1, 0, ids, 256, NULL, NULL, 0),
                     QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(qrun_detokenize(m, NULL, 3, 0, out, sizeof out, &len, eb, sizeof eb),
                     QRUN_ERR_INVALID_ARGUMENT);
    /* Empty text. */
    ck_assert_int_eq(qrun_tokenize(m, NULL, 0, 0, NULL, 0, &n, eb, sizeof eb), QRUN_OK);
    ck_assert_uint_eq(n, 0);
    qrun_model_free(m);
}

START_TEST(tokenize_bpe) { roundtrip("llama-gqa-llama3"); }
END_TEST
START_TEST(tokenize_spm) { roundtrip("llama-mha"); }
END_TEST

/* ---- chat ------------------------------------------------------------------------------ */

START_TEST(chat_plain)
{
    qrun_model *m = load("llama-gqa-llama3");
    qrun_chat_message msgs[] = {{"system", "Be brief."}, {"user", "Hi"}};
    char *text = NULL;
    char eb[256];
    ck_assert_int_eq(qrun_chat_apply(m, msgs, 2, true, &text, eb, sizeof eb), QRUN_OK);
    ck_assert_str_eq(text, "System: Be brief.\nUser: Hi\nAssistant:");
    qrun_free(text);
    ck_assert_int_eq(qrun_chat_apply(m, msgs, 2, false, &text, eb, sizeof eb), QRUN_OK);
    ck_assert_str_eq(text, "System: Be brief.\nUser: Hi\n");
    qrun_free(text);
    ck_assert_int_eq(qrun_chat_apply(m, NULL, 1, false, &text, eb, sizeof eb),
                     QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(text);
    qrun_model_free(m);
}
END_TEST

START_TEST(chat_template)
{
    /* The tiny checkpoint plus a chat_template.jinja, converted. */
    char dir[1024], src[4096], dst[4096];
    snprintf(dir, sizeof dir, "%s/tmpl-src", g_tmp);
    if (!tu_file_exists(dir)) {
        ck_assert_int_eq(mkdir(dir, 0755), 0);
        static const char *const files[] = {"config.json", "generation_config.json",
                                            "model.safetensors", "tokenizer.json",
                                            "tokenizer_config.json"};
        for (int i = 0; i < 5; i++) {
            snprintf(src, sizeof src, "%s/tiny/llama-gqa-llama3/%s", tu_data_dir(), files[i]);
            snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
            size_t n = 0;
            unsigned char *b = tu_read_file(src, &n);
            ck_assert_ptr_nonnull(b);
            ck_assert_int_eq(tu_write_file(dst, b, n), 0);
            free(b);
        }
        const char *tmpl =
            "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ "
            "eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
        snprintf(dst, sizeof dst, "%s/chat_template.jinja", dir);
        ck_assert_int_eq(tu_write_file(dst, tmpl, strlen(tmpl)), 0);
    }
    const char *path = convert_dir(dir, "with-template");
    qrun_model *m = NULL;
    char eb[512];
    ck_assert_msg(qrun_model_load(path, NULL, &m, eb, sizeof eb) == QRUN_OK, "%s", eb);
    qrun_model_info in;
    qrun_model_get_info(m, &in);
    ck_assert(in.has_chat_template);
    qrun_chat_message msgs[] = {{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
    char *text = NULL;
    ck_assert_msg(qrun_chat_apply(m, msgs, 3, true, &text, eb, sizeof eb) == QRUN_OK, "%s", eb);
    ck_assert_str_eq(text, "<|begin_of_text|><|user|>Hi<|end_of_text|><|assistant|>Hello"
                           "<|end_of_text|><|user|>Bye<|end_of_text|><|assistant|>");
    qrun_free(text);
    qrun_model_free(m);
}
END_TEST

/* ---- sessions --------------------------------------------------------------------------- */

START_TEST(session_basics)
{
    qrun_model *m = load("llama-mha");
    qrun_session *s = session(m, 0);
    ck_assert_int_eq(qrun_session_n_ctx(s), 128); /* min(n_ctx_train = 128, 4096) */
    ck_assert_int_eq(qrun_session_n_past(s), 0);
    ck_assert_ptr_null(qrun_session_logits(s));
    ck_assert_str_eq(qrun_session_last_error(s), "");

    int32_t ids[200];
    for (int i = 0; i < 200; i++)
        ids[i] = 100 + i;
    ck_assert_int_eq(qrun_session_eval(s, ids, 129, NULL), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(qrun_session_last_error(s), "128") != NULL, "message: %s",
                  qrun_session_last_error(s));
    ck_assert_int_eq(qrun_session_n_past(s), 0);
    ck_assert_int_eq(qrun_session_eval(s, ids, 100, NULL), QRUN_OK);
    ck_assert_str_eq(qrun_session_last_error(s), "");
    ck_assert_int_eq(qrun_session_n_past(s), 100);
    ck_assert_ptr_nonnull(qrun_session_logits(s));
    ck_assert_int_eq(qrun_session_eval(s, ids, 29, NULL), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(qrun_session_last_error(s), "100") != NULL, "message: %s",
                  qrun_session_last_error(s));
    ck_assert_int_eq(qrun_session_eval(s, ids, 28, NULL), QRUN_OK);
    ck_assert_int_eq(qrun_session_n_past(s), 128);
    int32_t bad = 32000;
    ck_assert_int_eq(qrun_session_rewind(s, 500), QRUN_OK);
    ck_assert_int_eq(qrun_session_n_past(s), 128);
    ck_assert_ptr_nonnull(qrun_session_logits(s));
    ck_assert_int_eq(qrun_session_rewind(s, 10), QRUN_OK);
    ck_assert_int_eq(qrun_session_n_past(s), 10);
    ck_assert_ptr_null(qrun_session_logits(s));
    ck_assert_int_eq(qrun_session_eval(s, &bad, 1, NULL), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(qrun_session_last_error(s), "32000") != NULL, "message: %s",
                  qrun_session_last_error(s));
    ck_assert_int_eq(qrun_session_eval(s, NULL, 1, NULL), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(qrun_session_rewind(s, -1), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(qrun_session_rewind(s, 0), QRUN_OK);
    ck_assert_int_eq(qrun_session_n_past(s), 0);
    ck_assert_int_eq(qrun_session_eval(NULL, ids, 1, NULL), QRUN_ERR_INVALID_ARGUMENT);

    /* Session creation errors. */
    qrun_session_params sp;
    qrun_session_params_init(&sp);
    sp.n_ctx = -5;
    qrun_session *s2 = (qrun_session *)1;
    char eb[256];
    ck_assert_int_eq(qrun_session_create(m, &sp, &s2, eb, sizeof eb), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(s2);
    ck_assert_int_eq(qrun_session_create(NULL, NULL, &s2, eb, sizeof eb),
                     QRUN_ERR_INVALID_ARGUMENT);
    qrun_session_free(s);
    qrun_model_free(m);
}
END_TEST

START_TEST(logits_two_sessions)
{
    qrun_model *m = load("llama-gqa-llama3");
    qrun_session *a = session(m, 256), *b = session(m, 256);
    int32_t ids[64];
    size_t n = tokenize(m, "The quick brown fox jumps over the lazy dog", ids, 64);
    ck_assert_int_eq(qrun_session_eval(a, ids, n, NULL), QRUN_OK);
    ck_assert_int_eq(qrun_session_eval(b, ids, n, NULL), QRUN_OK);
    const float *la = qrun_session_logits(a), *lb = qrun_session_logits(b);
    ck_assert(memcmp(la, lb, 505 * sizeof *la) == 0);
    /* logits_all: its last row is the kept logits (up to the rounding of a
     * different matrix shape). */
    qrun_session *c = session(m, 256);
    float *all = malloc(n * 505 * sizeof *all);
    ck_assert_int_eq(qrun_session_eval(c, ids, n, all), QRUN_OK);
    const float *lc = qrun_session_logits(c);
    float md = 0, mx = 0;
    for (int i = 0; i < 505; i++) {
        md = fmaxf(md, fabsf(lc[i] - all[(n - 1) * 505 + i]));
        md = fmaxf(md, fabsf(lc[i] - la[i]));
        mx = fmaxf(mx, fabsf(la[i]));
    }
    ck_assert_msg(md <= 1e-4f * mx, "logits_all differs by %g (max %g)", md, mx);
    qrun_session_free(c);
    for (int i = 0; i < 505; i++)
        ck_assert(isfinite(la[i]));
    free(all);
    qrun_session_free(a);
    qrun_session_free(b);
    qrun_model_free(m);
}
END_TEST

/* ---- generation ---------------------------------------------------------------------------- */

START_TEST(greedy_is_argmax)
{
    qrun_model *m = load("llama-gqa-llama3");
    qrun_session *s = session(m, 256);
    qrun_generate_params gp = greedy(24);
    static collect c1, c2;
    memset(&c1, 0, sizeof c1);
    memset(&c2, 0, sizeof c2);
    qrun_generate_result r;
    ck_assert_int_eq(qrun_generate(s, "Once upon a time", &gp, on_tok, &c1, &r), QRUN_OK);
    ck_assert_int_eq(r.stop_reason, QRUN_STOP_LENGTH);
    ck_assert_int_eq(r.n_generated, 24);
    ck_assert_int_eq(c1.n[0], 24);
    int32_t ids[64];
    size_t n = tokenize(m, "Once upon a time", ids, 64);
    ck_assert_int_eq(r.n_prompt_tokens, (int)n);
    /* The context holds the prompt and the evaluated generated tokens. */
    ck_assert_int_eq(qrun_session_n_past(s), (int)n + 23);

    /* Deterministic in a fresh session. */
    qrun_session *s2 = session(m, 256);
    ck_assert_int_eq(qrun_generate(s2, "Once upon a time", &gp, on_tok, &c2, &r), QRUN_OK);
    ck_assert_int_eq(c2.n[0], 24);
    ck_assert(memcmp(c1.ids[0], c2.ids[0], 24 * sizeof(int32_t)) == 0);
    ck_assert_str_eq(c1.text[0], c2.text[0]);

    /* Step-by-step argmax of eval's logits. */
    qrun_session *s3 = session(m, 256);
    ck_assert_int_eq(qrun_session_eval(s3, ids, n, NULL), QRUN_OK);
    for (int i = 0; i < 24; i++) {
        int32_t t = argmax(qrun_session_logits(s3), 505);
        ck_assert_msg(t == c1.ids[0][i], "step %d: argmax %d, generated %d", i, t, c1.ids[0][i]);
        ck_assert_int_eq(qrun_session_eval(s3, &t, 1, NULL), QRUN_OK);
    }
    /* The streamed text is the detokenized ids. */
    char text[8192];
    size_t len = 0;
    char eb[256];
    ck_assert_int_eq(qrun_detokenize(m, c1.ids[0], 24, QRUN_DETOKENIZE_SKIP_SPECIAL, text,
                                     sizeof text, &len, eb, sizeof eb),
                     QRUN_OK);
    ck_assert_str_eq(text, c1.text[0]);
    qrun_session_free(s);
    qrun_session_free(s2);
    qrun_session_free(s3);
    qrun_model_free(m);
}
END_TEST

START_TEST(seeds_and_sequences)
{
    qrun_model *m = load("llama-gqa-llama3");
    qrun_session *s = session(m, 512);
    qrun_generate_params gp;
    qrun_generate_params_init(&gp);
    gp.sampler.temperature = 1.0f;
    gp.sampler.top_k = 0;
    gp.sampler.top_p = 1.0f;
    gp.sampler.min_p = 0;
    gp.sampler.seed = 1234;
    gp.max_new_tokens = 20;
    gp.stop_at_eos = false;
    static collect a, b, multi, single;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&multi, 0, sizeof multi);
    qrun_generate_result r;
    ck_assert_int_eq(qrun_generate(s, "Hello", &gp, on_tok, &a, &r), QRUN_OK);
    ck_assert_int_eq(qrun_generate(s, "Hello", &gp, on_tok, &b, &r), QRUN_OK);
    ck_assert_int_eq(a.n[0], 20);
    ck_assert(memcmp(a.ids[0], b.ids[0], 20 * sizeof(int32_t)) == 0);

    /* Three sequences: sequence i is what seed + i gives alone. */
    gp.n_sequences = 3;
    ck_assert_int_eq(qrun_generate(s, "Hello", &gp, on_tok, &multi, &r), QRUN_OK);
    ck_assert_int_eq(r.n_generated, 60);
    int32_t ids[16];
    size_t n = tokenize(m, "Hello", ids, 16);
    ck_assert_int_eq(qrun_session_n_past(s), (int)n + 19);
    ck_assert(memcmp(multi.ids[0], a.ids[0], 20 * sizeof(int32_t)) == 0);
    gp.n_sequences = 1;
    for (int i = 1; i < 3; i++) {
        memset(&single, 0, sizeof single);
        gp.sampler.seed = 1234 + (uint64_t)i;
        ck_assert_int_eq(qrun_generate(s, "Hello", &gp, on_tok, &single, &r), QRUN_OK);
        ck_assert_int_eq(multi.n[i], 20);
        ck_assert_msg(memcmp(multi.ids[i], single.ids[0], 20 * sizeof(int32_t)) == 0,
                      "sequence %d differs from seed + %d", i, i);
    }
    ck_assert(memcmp(multi.ids[0], multi.ids[1], 20 * sizeof(int32_t)) != 0);
    qrun_session_free(s);
    qrun_model_free(m);
}
END_TEST

START_TEST(stop_strings)
{
    qrun_model *m = load("llama-gqa-llama3");
    qrun_session *s = session(m, 512);
    qrun_generate_params gp = greedy(60);
    static collect full, cut;
    memset(&full, 0, sizeof full);
    memset(&cut, 0, sizeof cut);
    qrun_generate_result r;
    ck_assert_int_eq(qrun_generate(s, "The weather today", &gp, on_tok, &full, &r), QRUN_OK);
    const char *t = full.text[0];
    size_t len = full.len[0];
    ck_assert_msg(len >= 12, "greedy text too short: '%s'", t);
    /* A stop string from the middle, on character boundaries. */
    size_t a = len / 2, e;
    while (a > 0 && ((unsigned char)t[a] & 0xC0) == 0x80)
        a--;
    e = a + 3;
    while (e < len && ((unsigned char)t[e] & 0xC0) == 0x80)
        e++;
    char stop[32];
    ck_assert(e - a < sizeof stop);
    memcpy(stop, t + a, e - a);
    stop[e - a] = '\0';
    size_t first = (size_t)(strstr(t, stop) - t);
    const char *stops[] = {"\x01never\x01", stop};
    gp.stop = stops;
    gp.n_stop = 2;
    ck_assert_int_eq(qrun_generate(s, "The weather today", &gp, on_tok, &cut, &r), QRUN_OK);
    ck_assert_int_eq(r.stop_reason, QRUN_STOP_STRING);
    ck_assert_uint_eq(cut.len[0], first);
    ck_assert(memcmp(cut.text[0], t, first) == 0);
    ck_assert_int_lt(r.n_generated, 60);
    /* An empty stop string is an error. */
    const char *empty[] = {""};
    gp.stop = empty;
    gp.n_stop = 1;
    ck_assert_int_eq(qrun_generate(s, "x", &gp, NULL, NULL, &r), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_str_ne(qrun_session_last_error(s), "");
    qrun_session_free(s);
    qrun_model_free(m);
}
END_TEST

START_TEST(lengths_and_context)
{
    qrun_model *m = load("llama-mha");
    qrun_session *s = session(m, 0); /* 128 positions */
    qrun_generate_params gp = greedy(5);
    qrun_generate_result r;
    static collect c;
    memset(&c, 0, sizeof c);
    ck_assert_int_eq(qrun_generate(s, "Hello there", &gp, on_tok, &c, &r), QRUN_OK);
    ck_assert_int_eq(r.stop_reason, QRUN_STOP_LENGTH);
    ck_assert_int_eq(r.n_generated, 5);
    ck_assert_int_eq(c.n[0], 5);
    ck_assert_int_ge(r.prompt_seconds, 0.0);
    ck_assert_int_ge(r.generate_seconds, 0.0);

    gp.max_new_tokens = 0;
    ck_assert_int_eq(qrun_generate(s, "Hello there", &gp, on_tok, &c, &r), QRUN_OK);
    ck_assert_int_eq(r.n_generated, 0);
    ck_assert_int_eq(r.stop_reason, QRUN_STOP_LENGTH);

    /* Until the context is full. */
    int32_t ids[256];
    for (int i = 0; i < 256; i++)
        ids[i] = 200 + i;
    gp.max_new_tokens = -1;
    ck_assert_int_eq(qrun_generate_tokens(s, ids, 10, &gp, NULL, NULL, &r), QRUN_OK);
    ck_assert_int_eq(r.stop_reason, QRUN_STOP_CONTEXT);
    ck_assert_int_eq(r.n_generated, 128 - 10 + 1);
    ck_assert_int_eq(qrun_session_n_past(s), 128);

    /* A prompt longer than the context. */
    ck_assert_int_eq(qrun_generate_tokens(s, ids, 200, &gp, NULL, NULL, &r),
                     QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(qrun_session_last_error(s), "prompt is 200 tokens, context holds 128"),
                  "message: %s", qrun_session_last_error(s));
    /* Exactly the context: one token is generated. */
    gp.max_new_tokens = 10;
    ck_assert_int_eq(qrun_generate_tokens(s, ids, 128, &gp, NULL, NULL, &r), QRUN_OK);
    ck_assert_int_eq(r.stop_reason, QRUN_STOP_CONTEXT);
    ck_assert_int_eq(r.n_generated, 1);
    /* Bad arguments. */
    ck_assert_int_eq(qrun_generate_tokens(s, ids, 0, &gp, NULL, NULL, &r),
                     QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(qrun_generate(s, NULL, &gp, NULL, NULL, &r), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(qrun_generate(NULL, "x", &gp, NULL, NULL, &r), QRUN_ERR_INVALID_ARGUMENT);
    gp.n_sequences = 0;
    ck_assert_int_eq(qrun_generate(s, "x", &gp, NULL, NULL, &r), QRUN_ERR_INVALID_ARGUMENT);
    gp.n_sequences = 1;
    gp.sampler.top_p = 2.0f;
    gp.sampler.temperature = 0.7f;
    ck_assert_int_eq(qrun_generate(s, "x", &gp, NULL, NULL, &r), QRUN_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(qrun_session_last_error(s), "top_p") != NULL, "message: %s",
                  qrun_session_last_error(s));
    /* NULL params = defaults, NULL result and callback are fine. */
    ck_assert_int_eq(qrun_generate(s, "Hi", NULL, NULL, NULL, NULL), QRUN_OK);
    qrun_session_free(s);
    qrun_model_free(m);
}
END_TEST

START_TEST(prefix_reuse)
{
    qrun_model *m = load("llama-gqa-llama3");
    qrun_session *s = session(m, 512), *f = session(m, 512);
    qrun_generate_params gp = greedy(16);
    static collect c1, c2, c3;
    memset(&c1, 0, sizeof c1);
    memset(&c2, 0, sizeof c2);
    memset(&c3, 0, sizeof c3);
    qrun_generate_result r;
    const char *p1 = "In a small village by the sea there lived";
    const char *p2 = "In a small village by the sea there lived an old fisherman who";
    int32_t ids[128];
    size_t n2 = tokenize(m, p2, ids, 128);
    ck_assert_int_eq(qrun_generate(s, p1, &gp, on_tok, &c1, &r), QRUN_OK);
    ck_assert_int_eq(qrun_generate(s, p2, &gp, on_tok, &c2, &r), QRUN_OK);
    ck_assert_int_lt(r.n_prompt_tokens, (int)n2);
    ck_assert_int_gt(r.n_prompt_tokens, 0);
    ck_assert_int_eq(qrun_generate(f, p2, &gp, on_tok, &c3, &r), QRUN_OK);
    ck_assert_int_eq(r.n_prompt_tokens, (int)n2);
    ck_assert_int_eq(c2.n[0], c3.n[0]);
    ck_assert(memcmp(c2.ids[0], c3.ids[0], (size_t)c2.n[0] * sizeof(int32_t)) == 0);
    ck_assert_str_eq(c2.text[0], c3.text[0]);
    /* The same prompt again: only its last token is evaluated. */
    memset(&c3, 0, sizeof c3);
    ck_assert_int_eq(qrun_generate(s, p2, &gp, on_tok, &c3, &r), QRUN_OK);
    ck_assert_int_eq(r.n_prompt_tokens, 1);
    ck_assert(memcmp(c2.ids[0], c3.ids[0], (size_t)c2.n[0] * sizeof(int32_t)) == 0);
    /* Logits after prefix reuse equal a fresh evaluation. */
    qrun_session *g = session(m, 512);
    ck_assert_int_eq(qrun_session_rewind(s, 5), QRUN_OK);
    ck_assert_int_eq(qrun_session_eval(s, ids + 5, n2 - 5, NULL), QRUN_OK);
    ck_assert_int_eq(qrun_session_eval(g, ids, n2, NULL), QRUN_OK);
    const float *ls = qrun_session_logits(s), *lg = qrun_session_logits(g);
    float md = 0, mx = 0;
    for (int i = 0; i < 505; i++) {
        md = fmaxf(md, fabsf(ls[i] - lg[i]));
        mx = fmaxf(mx, fabsf(lg[i]));
    }
    ck_assert_msg(md <= 1e-4f * mx, "logits differ by %g (max %g)", md, mx);
    qrun_session_free(s);
    qrun_session_free(f);
    qrun_session_free(g);
    qrun_model_free(m);
}
END_TEST

/* Cancellation: the callback waits, after a few tokens, until another thread
 * has called qrun_session_cancel; the generation must then end at once. */
typedef struct cancel_state {
    qrun_session *s;
    atomic_int tokens;
    atomic_int cancelled;
} cancel_state;

static void pause_us(long us)
{
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

static void *canceller(void *arg)
{
    cancel_state *cs = arg;
    while (atomic_load(&cs->tokens) < 3)
        pause_us(200);
    qrun_session_cancel(cs->s);
    atomic_store(&cs->cancelled, 1);
    return NULL;
}

static bool cancel_cb(void *user, int seq, int32_t token, const char *text, size_t len)
{
    (void)seq, (void)token, (void)text, (void)len;
    cancel_state *cs = user;
    if (atomic_fetch_add(&cs->tokens, 1) + 1 == 3)
        while (!atomic_load(&cs->cancelled))
            pause_us(200);
    return true;
}

START_TEST(cancel_from_thread)
{
    qrun_model *m = load("llama-gqa-llama3");
    qrun_session *s = session(m, 2048);
    cancel_state cs = {.s = s};
    atomic_init(&cs.tokens, 0);
    atomic_init(&cs.cancelled, 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, canceller, &cs), 0);
    qrun_generate_params gp;
    qrun_generate_params_init(&gp);
    gp.max_new_tokens = -1;
    gp.stop_at_eos = false;
    qrun_generate_result r;
    qrun_status st = qrun_generate(s, "Tell me a long story", &gp, cancel_cb, &cs, &r);
    pthread_join(th, NULL);
    ck_assert_int_eq(st, QRUN_ERR_CANCELLED);
    ck_assert_int_eq(r.stop_reason, QRUN_STOP_CANCELLED);
    ck_assert_int_le(r.n_generated, 4);
    ck_assert_int_eq(atomic_load(&cs.tokens), r.n_generated);
    ck_assert_str_ne(qrun_session_last_error(s), "");
    /* The flag is cleared by the next call. */
    gp.max_new_tokens = 4;
    ck_assert_int_eq(qrun_generate(s, "Again", &gp, NULL, NULL, &r), QRUN_OK);
    ck_assert_int_eq(r.n_generated, 4);
    qrun_session_free(s);
    qrun_model_free(m);
}
END_TEST

START_TEST(callback_stop)
{
    qrun_model *m = load("llama-gqa-llama3");
    qrun_session *s = session(m, 256);
    qrun_generate_params gp = greedy(50);
    gp.n_sequences = 2;
    static collect c;
    memset(&c, 0, sizeof c);
    c.stop_after = 3;
    qrun_generate_result r;
    ck_assert_int_eq(qrun_generate(s, "Stop me", &gp, on_tok, &c, &r), QRUN_OK);
    ck_assert_int_eq(r.stop_reason, QRUN_STOP_CALLBACK);
    ck_assert_int_eq(c.n[0], 3);
    ck_assert_int_eq(c.n[1], 3);
    ck_assert_int_eq(r.n_generated, 6);
    /* Greedy sequences are identical. */
    ck_assert(memcmp(c.ids[0], c.ids[1], 3 * sizeof(int32_t)) == 0);
    qrun_session_free(s);
    qrun_model_free(m);
}
END_TEST

START_TEST(eos_stops)
{
    /* Sample hot until some seed draws EOS (id 501); the same seed without
     * stop_at_eos emits it (as empty text) and goes on. */
    qrun_model *m = load("llama-gqa-llama3");
    qrun_session *s = session(m, 512);
    qrun_generate_params gp;
    qrun_generate_params_init(&gp);
    gp.sampler.temperature = 3.0f;
    gp.sampler.top_k = 0;
    gp.sampler.top_p = 1.0f;
    gp.sampler.min_p = 0;
    gp.max_new_tokens = 300;
    static collect c, d;
    qrun_generate_result r;
    int found = 0;
    for (uint64_t seed = 1; seed <= 40 && !found; seed++) {
        memset(&c, 0, sizeof c);
        gp.sampler.seed = seed;
        gp.stop_at_eos = true;
        ck_assert_int_eq(qrun_generate(s, "Hi", &gp, on_tok, &c, &r), QRUN_OK);
        for (int i = 0; i < c.n[0]; i++)
            ck_assert_int_ne(c.ids[0][i], 501);
        if (r.stop_reason != QRUN_STOP_EOS) {
            ck_assert_int_eq(r.stop_reason, QRUN_STOP_LENGTH);
            continue;
        }
        found = 1;
        ck_assert_int_lt(r.n_generated, 300);
        memset(&d, 0, sizeof d);
        gp.stop_at_eos = false;
        ck_assert_int_eq(qrun_generate(s, "Hi", &gp, on_tok, &d, &r), QRUN_OK);
        ck_assert_int_eq(r.stop_reason, QRUN_STOP_LENGTH);
        ck_assert_int_gt(d.n[0], c.n[0]);
        ck_assert(memcmp(c.ids[0], d.ids[0], (size_t)c.n[0] * sizeof(int32_t)) == 0);
        ck_assert_int_eq(d.ids[0][c.n[0]], 501);
    }
    ck_assert_msg(found, "no seed drew EOS");
    qrun_session_free(s);
    qrun_model_free(m);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("api");
    TCase *tc = tcase_create("api");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, load_errors);
    tcase_add_test(tc, info);
    tcase_add_test(tc, tokenize_bpe);
    tcase_add_test(tc, tokenize_spm);
    tcase_add_test(tc, chat_plain);
    tcase_add_test(tc, chat_template);
    tcase_add_test(tc, session_basics);
    tcase_add_test(tc, logits_two_sessions);
    tcase_add_test(tc, greedy_is_argmax);
    tcase_add_test(tc, seeds_and_sequences);
    tcase_add_test(tc, stop_strings);
    tcase_add_test(tc, lengths_and_context);
    tcase_add_test(tc, prefix_reuse);
    tcase_add_test(tc, cancel_from_thread);
    tcase_add_test(tc, callback_stop);
    tcase_add_test(tc, eos_stops);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/tiny/llama-gqa-llama3/config.json", tu_data_dir());
    if (!tu_file_exists(probe)) {
        fprintf(stderr, "skipping: %s absent\n", probe);
        return 77;
    }
    g_tmp = tu_tmpdir();
    if (!g_tmp)
        return 1;
    int rc = tu_run(suite());
    tu_rmtree(g_tmp);
    free(g_tmp);
    return rc;
}
