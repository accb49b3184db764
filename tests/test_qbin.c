/* .qbin reader, writer and checksum: round trips of every dtype, the
 * writer's temp-file discipline, and a reader that rejects truncated,
 * corrupt and hostile files with a message instead of crashing. Hostile
 * files are valid files with bytes edited (tests know the layout through
 * qbin_layout.h); the header and section checksums are recomputed after an
 * edit so that the deeper check is the one that must fire. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hash.h"
#include "qbin.h"
#include "qbin_layout.h"
#include "testutil.h"

/* ---------------- helpers ---------------- */

typedef struct spec {
    const char *name;
    qdtype dtype;
    int ndim;
    uint64_t shape[QBIN_MAX_DIMS];
} spec;

/* Every dtype, 0-d, empty, odd-sized 4-bit, 4-d. */
static const spec many_specs[] = {
    {"tok_embeddings.weight", QDT_F16, 2, {17, 8}},
    {"norm.weight", QDT_F32, 1, {8}},
    {"bf.weight", QDT_BF16, 3, {2, 3, 5}},
    {"layers.0.attn.q.weight", QDT_NF4, 2, {7, 9}},     /* 63 codes: odd */
    {"layers.0.attn.q.weight.absmax", QDT_F32, 1, {1}},
    {"layers.0.mlp.up.weight", QDT_FP4, 4, {1, 3, 1, 5}}, /* 15 codes */
    {"layers.0.mlp.up.weight.qabsmax", QDT_U8, 1, {3}},
    {"layers.1.mlp.down.weight", QDT_I8, 2, {4, 33}},
    {"layers.1.mlp.down.weight.scb", QDT_F32, 1, {4}},
    {"scalar.i32", QDT_I32, 0, {0}},
    {"empty.f32", QDT_F32, 2, {0, 5}},
    {"nf4.one", QDT_NF4, 1, {1}},
    {"quant.dynamic_map", QDT_F32, 1, {256}},
    {"tokenizer.model", QDT_U8, 1, {1000}},
    {"unicode.\xc3\xa9\xe2\x82\xac", QDT_U8, 1, {3}},
    {"big.f32", QDT_F32, 2, {700, 701}}, /* > the writer's 1 MiB buffer */
};
#define N_MANY (sizeof many_specs / sizeof many_specs[0])

/* Small file for hostile edits: equal-length names so one can be renamed
 * to another in place. */
static const spec small_specs[] = {
    {"t.aa", QDT_F32, 2, {4, 8}},
    {"t.bb", QDT_NF4, 2, {3, 5}},
    {"t.cc", QDT_I32, 0, {0}},
    {"t.dd", QDT_U8, 1, {300}},
};
#define N_SMALL (sizeof small_specs / sizeof small_specs[0])

static uint64_t spec_nbytes(const spec *s)
{
    uint64_t n, b;
    ck_assert(qshape_numel(s->ndim, s->shape, &n));
    ck_assert(qdtype_nbytes(s->dtype, n, &b));
    return b;
}

static unsigned char *random_bytes(tu_rng *r, uint64_t n)
{
    unsigned char *p = malloc(n ? (size_t)n : 1);
    ck_assert_ptr_nonnull(p);
    for (uint64_t i = 0; i < n; i++)
        p[i] = (unsigned char)tu_next(r);
    return p;
}

static cJSON *sample_metadata(void)
{
    cJSON *m = cJSON_Parse(
        "{\"architecture\":\"llama\",\"hparams\":{\"n_layer\":2,\"rope_theta\":10000.5},"
        "\"quantization\":{\"layout\":1,\"default\":{\"type\":\"nf4\",\"blocksize\":64,"
        "\"double_quant\":true}},\"compute_dtype\":\"f16\","
        "\"tokenizer\":{\"kind\":\"spm\",\"bos\":1,\"eos\":2,\"chat_template\":\"\\u00e9 {{x}}\"},"
        "\"provenance\":{\"source\":\"unit test\"}}");
    ck_assert_ptr_nonnull(m);
    return m;
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    ck_assert_ptr_nonnull(p);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

/* Write `specs` with contents data[i]; one-shot adds, or streamed in random
 * pieces when `rng` is given. */
static void write_file(const char *path, const spec *specs, size_t n, unsigned char **data,
                       const cJSON *meta, tu_rng *stream_rng)
{
    qerr err = {0};
    qbin_writer *w = qbin_writer_open(path, &err);
    ck_assert_msg(w != NULL, "%s", err.msg);
    for (size_t i = 0; i < n; i++) {
        const spec *s = &specs[i];
        uint64_t nb = spec_nbytes(s);
        if (!stream_rng) {
            ck_assert_msg(qbin_writer_add(w, s->name, s->dtype, s->ndim, s->shape, data[i], nb,
                                          &err),
                          "%s", err.msg);
            continue;
        }
        ck_assert_msg(qbin_writer_begin(w, s->name, s->dtype, s->ndim, s->shape, &err), "%s",
                      err.msg);
        for (uint64_t at = 0; at < nb;) {
            uint64_t k = tu_next(stream_rng) % 97;
            if (k > nb - at)
                k = nb - at;
            ck_assert_msg(qbin_writer_write(w, data[i] + at, k, &err), "%s", err.msg);
            at += k;
        }
        ck_assert_msg(qbin_writer_end(w, &err), "%s", err.msg);
    }
    ck_assert_msg(qbin_writer_finish(w, meta, &err), "%s", err.msg);
}

static unsigned char **make_data(const spec *specs, size_t n, tu_rng *r)
{
    unsigned char **d = calloc(n, sizeof *d);
    ck_assert_ptr_nonnull(d);
    for (size_t i = 0; i < n; i++)
        d[i] = random_bytes(r, spec_nbytes(&specs[i]));
    return d;
}

static void free_data(unsigned char **d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(d[i]);
    free(d);
}

/* A valid small file in memory (exact-size heap copy, so ASan sees any
 * read past its end). */
static unsigned char *small_file(size_t *size)
{
    char *dir = tu_tmpdir();
    ck_assert_ptr_nonnull(dir);
    char *path = join(dir, "small.qbin");
    tu_rng r = {tu_seed()};
    unsigned char **data = make_data(small_specs, N_SMALL, &r);
    cJSON *meta = sample_metadata();
    write_file(path, small_specs, N_SMALL, data, meta, NULL);
    unsigned char *buf = tu_read_file(path, size);
    ck_assert_ptr_nonnull(buf);
    cJSON_Delete(meta);
    free_data(data, N_SMALL);
    free(path);
    tu_rmtree(dir);
    free(dir);
    return buf;
}

/* Recompute the directory, metadata and header checksums after an edit.
 * Only valid while the section fields themselves are in range. */
static void refix(unsigned char *b, size_t size)
{
    uint64_t doff = qbin_ld64(b + QBIN_H_DIR_OFFSET), dsz = qbin_ld64(b + QBIN_H_DIR_SIZE);
    uint64_t moff = qbin_ld64(b + QBIN_H_META_OFFSET), msz = qbin_ld64(b + QBIN_H_META_SIZE);
    if (doff <= size && dsz <= size - doff)
        qbin_st64(b + QBIN_H_DIR_CHECKSUM, qhash(b + doff, (size_t)dsz));
    if (moff <= size && msz <= size - moff)
        qbin_st64(b + QBIN_H_META_CHECKSUM, qhash(b + moff, (size_t)msz));
    qbin_st64(b + QBIN_H_CHECKSUM, qbin_header_hash(b));
}

/* Start of directory entry i. */
static unsigned char *entry(unsigned char *b, size_t i)
{
    unsigned char *e = b + qbin_ld64(b + QBIN_H_DIR_OFFSET);
    for (size_t k = 0; k < i; k++)
        e += qbin_entry_size(e[QBIN_E_NDIM], qbin_ld16(e + QBIN_E_NAME_LEN));
    return e;
}

/* Replace the metadata (the last section) with `text` of any length. */
static unsigned char *with_metadata(const unsigned char *b, size_t size, const char *text,
                                    size_t tlen, size_t *out_size)
{
    uint64_t moff = qbin_ld64(b + QBIN_H_META_OFFSET);
    ck_assert(moff <= size);
    size_t n = (size_t)moff + tlen;
    unsigned char *c = malloc(n);
    ck_assert_ptr_nonnull(c);
    memcpy(c, b, (size_t)moff);
    memcpy(c + moff, text, tlen);
    qbin_st64(c + QBIN_H_META_SIZE, tlen);
    qbin_st64(c + QBIN_H_FILE_SIZE, n);
    refix(c, n);
    *out_size = n;
    return c;
}

/* Open must fail with `code` and a message naming the file and holding
 * `needle` (when not NULL). */
static void expect_reject(const unsigned char *b, size_t size, qrun_status code,
                          const char *needle)
{
    unsigned char *copy = malloc(size ? size : 1);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, b, size);
    qerr err = {0};
    qbin_file *f = qbin_open_memory(copy, size, "hostile.qbin", 0, &err);
    ck_assert_msg(f == NULL, "hostile file accepted (expected: %s)", needle ? needle : "?");
    ck_assert_msg(err.code == code, "code %d, want %d: %s", err.code, code, err.msg);
    ck_assert_msg(strstr(err.msg, "hostile.qbin") != NULL, "message does not name the file: %s",
                  err.msg);
    if (needle)
        ck_assert_msg(strstr(err.msg, needle) != NULL, "message lacks '%s': %s", needle, err.msg);
    free(copy);
}

/* Touch everything an accepted file exposes (for fuzzing). */
static unsigned touch_all(const qbin_file *f)
{
    unsigned sum = 0;
    for (size_t i = 0; i < qbin_tensor_count(f); i++) {
        const qbin_tensor *t = qbin_tensor_at(f, i);
        const unsigned char *p = qbin_tensor_data(f, t);
        for (uint64_t k = 0; k < t->nbytes; k++)
            sum += p[k];
        sum += (unsigned)strlen(t->name);
        ck_assert_ptr_eq(qbin_find(f, t->name), t);
    }
    sum += (unsigned)strlen(qbin_metadata_text(f));
    return sum;
}

/* ---------------- hash ---------------- */

START_TEST(hash_streaming_equals_oneshot)
{
    tu_rng r = {tu_seed()};
    unsigned char *buf = random_bytes(&r, 5000);
    for (int iter = 0; iter < 3000; iter++) {
        size_t len = (size_t)(tu_next(&r) % 5000);
        uint64_t want = qhash(buf, len);
        qhash_state s;
        qhash_init(&s);
        for (size_t at = 0; at < len;) {
            size_t k = (size_t)(tu_next(&r) % (iter & 1 ? 70 : 7));
            if (k > len - at)
                k = len - at;
            qhash_update(&s, buf + at, k);
            at += k;
        }
        ck_assert_msg(qhash_final(&s) == want, "len %zu", len);
        /* final does not consume the state */
        ck_assert(qhash_final(&s) == want);
    }
    free(buf);
}
END_TEST

/* Pinned values: the algorithm is part of the file format
 * (docs/qbin-format.md lists the same vectors). */
START_TEST(hash_known_answers)
{
    unsigned char seq[256];
    for (int i = 0; i < 256; i++)
        seq[i] = (unsigned char)i;
    ck_assert_uint_eq(qhash("", 0), 0x95e05e02d9315beaull);
    ck_assert_uint_eq(qhash("a", 1), 0xc35a617638d2ad9dull);
    ck_assert_uint_eq(qhash("qrun", 4), 0x7687a61f4c3d44a1ull);
    ck_assert_uint_eq(qhash(seq, 31), 0x52da491acd84446dull);
    ck_assert_uint_eq(qhash(seq, 32), 0xf09463bd676d1ee2ull);
    ck_assert_uint_eq(qhash(seq, 256), 0xcb0ee55021d3f8daull);
}
END_TEST

/* Every single-bit flip changes the hash, and on average about half the
 * output bits (a broken mixer shows up as a mean far from 32). */
START_TEST(hash_bit_flips)
{
    tu_rng r = {tu_seed()};
    static const size_t lens[] = {1, 7, 8, 31, 32, 33, 64, 100, 1000};
    double total = 0;
    long flips = 0;
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        size_t len = lens[li];
        unsigned char *b = random_bytes(&r, len);
        uint64_t h0 = qhash(b, len);
        for (size_t bit = 0; bit < len * 8; bit++) {
            b[bit / 8] ^= (unsigned char)(1u << (bit % 8));
            uint64_t h1 = qhash(b, len);
            b[bit / 8] ^= (unsigned char)(1u << (bit % 8));
            ck_assert_msg(h1 != h0, "len %zu bit %zu", len, bit);
            total += __builtin_popcountll(h0 ^ h1);
            flips++;
        }
        free(b);
    }
    double mean = total / (double)flips;
    ck_assert_msg(mean > 31.0 && mean < 33.0, "mean flipped output bits %.3f", mean);
    /* Zero-padding of the tail must not make lengths collide. */
    unsigned char z[64] = {0};
    for (size_t a = 0; a < 64; a++)
        for (size_t b = a + 1; b <= 64; b++)
            ck_assert_msg(qhash(z, a) != qhash(z, b), "zeros %zu vs %zu", a, b);
}
END_TEST

/* ---------------- round trips ---------------- */

static void check_contents(const qbin_file *f, const spec *specs, size_t n, unsigned char **data)
{
    ck_assert_uint_eq(qbin_format_version(f), 1);
    ck_assert_uint_eq(qbin_tensor_count(f), n);
    ck_assert_ptr_null(qbin_tensor_at(f, n));
    for (size_t i = 0; i < n; i++) {
        const spec *s = &specs[i];
        const qbin_tensor *t = qbin_tensor_at(f, i);
        ck_assert_ptr_nonnull(t);
        ck_assert_str_eq(t->name, s->name);
        ck_assert_ptr_eq(qbin_find(f, s->name), t);
        ck_assert_int_eq(t->dtype, s->dtype);
        ck_assert_int_eq(t->ndim, s->ndim);
        for (int k = 0; k < s->ndim; k++)
            ck_assert_uint_eq(t->shape[k], s->shape[k]);
        ck_assert_uint_eq(t->nbytes, spec_nbytes(s));
        ck_assert_msg(t->offset % QBIN_ALIGN == 0, "%s at %llu", t->name,
                      (unsigned long long)t->offset);
        const unsigned char *p = qbin_tensor_data(f, t);
        ck_assert_msg(((uintptr_t)p - (uintptr_t)qbin_tensor_data(f, qbin_tensor_at(f, 0)))
                              % QBIN_ALIGN == 0, "data pointer alignment");
        ck_assert_msg(t->nbytes == 0 || memcmp(p, data[i], (size_t)t->nbytes) == 0, "%s data",
                      t->name);
        ck_assert_uint_eq(t->checksum, qhash(data[i], (size_t)t->nbytes));
        ck_assert(qbin_verify_tensor(f, t, NULL));
    }
    ck_assert_ptr_null(qbin_find(f, "missing"));
    ck_assert_ptr_null(qbin_find(f, ""));
    ck_assert_ptr_null(qbin_find(f, "t"));
}

START_TEST(roundtrip_every_dtype)
{
    char *dir = tu_tmpdir();
    char *path = join(dir, "m.qbin");
    tu_rng r = {tu_seed()};
    unsigned char **data = make_data(many_specs, N_MANY, &r);
    cJSON *meta = sample_metadata();
    write_file(path, many_specs, N_MANY, data, meta, NULL);

    qerr err = {0};
    qbin_file *f = qbin_open(path, 0, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    /* mmap is page-aligned, so file offsets aligned to 256 give aligned
     * pointers. */
    ck_assert((uintptr_t)qbin_tensor_data(f, qbin_tensor_at(f, 0)) % QBIN_ALIGN == 0);
    check_contents(f, many_specs, N_MANY, data);
    ck_assert(cJSON_Compare(qbin_metadata(f), meta, 1));
    cJSON *again = cJSON_Parse(qbin_metadata_text(f));
    ck_assert(cJSON_Compare(again, meta, 1));
    cJSON_Delete(again);
    ck_assert_str_eq(cJSON_GetObjectItem(qbin_metadata(f), "architecture")->valuestring, "llama");
    qbin_close(f);

    /* The same bytes through the memory path. */
    size_t size;
    unsigned char *buf = tu_read_file(path, &size);
    f = qbin_open_memory(buf, size, "mem", 0, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    check_contents(f, many_specs, N_MANY, data);
    qbin_close(f);
    free(buf);

    cJSON_Delete(meta);
    free_data(data, N_MANY);
    free(path);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

START_TEST(roundtrip_random_files)
{
    char *dir = tu_tmpdir();
    char *path = join(dir, "r.qbin");
    tu_rng r = {tu_seed()};
    for (int iter = 0; iter < 20; iter++) {
        size_t n = (size_t)(tu_next(&r) % 40);
        spec *specs = calloc(n ? n : 1, sizeof *specs);
        char (*names)[32] = calloc(n ? n : 1, sizeof *names);
        for (size_t i = 0; i < n; i++) {
            snprintf(names[i], sizeof names[i], "x%zu.%llu", i,
                     (unsigned long long)(tu_next(&r) % 1000));
            specs[i].name = names[i];
            specs[i].dtype = (qdtype)(tu_next(&r) % QDT_COUNT);
            specs[i].ndim = (int)(tu_next(&r) % 5);
            for (int k = 0; k < specs[i].ndim; k++)
                specs[i].shape[k] = tu_next(&r) % 9;
        }
        unsigned char **data = make_data(specs, n, &r);
        cJSON *meta = cJSON_CreateObject();
        cJSON_AddNumberToObject(meta, "iter", iter);
        write_file(path, specs, n, data, iter % 3 ? meta : NULL, NULL);
        qerr err = {0};
        qbin_file *f = qbin_open(path, 0, &err);
        ck_assert_msg(f != NULL, "%s", err.msg);
        check_contents(f, specs, n, data);
        if (iter % 3)
            ck_assert(cJSON_Compare(qbin_metadata(f), meta, 1));
        else
            ck_assert_str_eq(qbin_metadata_text(f), "{}");
        qbin_close(f);
        cJSON_Delete(meta);
        free_data(data, n);
        free(specs);
        free(names);
    }
    free(path);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

START_TEST(streaming_equals_oneshot)
{
    char *dir = tu_tmpdir();
    char *p1 = join(dir, "a.qbin"), *p2 = join(dir, "b.qbin");
    tu_rng r = {tu_seed()};
    unsigned char **data = make_data(many_specs, N_MANY, &r);
    cJSON *meta = sample_metadata();
    write_file(p1, many_specs, N_MANY, data, meta, NULL);
    write_file(p2, many_specs, N_MANY, data, meta, &r);
    size_t s1, s2;
    unsigned char *b1 = tu_read_file(p1, &s1), *b2 = tu_read_file(p2, &s2);
    ck_assert_uint_eq(s1, s2);
    ck_assert(memcmp(b1, b2, s1) == 0);
    /* Sanity of the layout itself: header, then data from byte 256. */
    ck_assert(memcmp(b1, QBIN_MAGIC, QBIN_MAGIC_LEN) == 0);
    ck_assert_uint_eq(qbin_ld64(b1 + QBIN_H_DATA_OFFSET), 256);
    ck_assert_uint_eq(qbin_ld64(b1 + QBIN_H_FILE_SIZE), s1);
    free(b1);
    free(b2);
    cJSON_Delete(meta);
    free_data(data, N_MANY);
    free(p1);
    free(p2);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

/* ---------------- writer ---------------- */

START_TEST(writer_temp_file_discipline)
{
    char *dir = tu_tmpdir();
    char *path = join(dir, "out.qbin");
    qerr err = {0};
    uint64_t shape[1] = {4};
    float v[4] = {1, 2, 3, 4};

    /* finish: only the target remains */
    qbin_writer *w = qbin_writer_open(path, &err);
    ck_assert_msg(w != NULL, "%s", err.msg);
    ck_assert_int_eq(dir_entries(dir), 1); /* the temp file */
    ck_assert(!tu_file_exists(path));
    ck_assert(qbin_writer_add(w, "v", QDT_F32, 1, shape, v, sizeof v, &err));
    ck_assert(qbin_writer_finish(w, NULL, &err));
    ck_assert(tu_file_exists(path));
    ck_assert_int_eq(dir_entries(dir), 1);
    unlink(path);

    /* abort: nothing remains */
    w = qbin_writer_open(path, &err);
    ck_assert(qbin_writer_add(w, "v", QDT_F32, 1, shape, v, sizeof v, &err));
    qbin_writer_abort(w);
    ck_assert_int_eq(dir_entries(dir), 0);

    /* failed finish (metadata not an object): nothing at the target */
    w = qbin_writer_open(path, &err);
    ck_assert(qbin_writer_add(w, "v", QDT_F32, 1, shape, v, sizeof v, &err));
    cJSON *arr = cJSON_CreateArray();
    ck_assert(!qbin_writer_finish(w, arr, &err));
    ck_assert_msg(strstr(err.msg, "object") && strstr(err.msg, path), "%s", err.msg);
    cJSON_Delete(arr);
    ck_assert(!tu_file_exists(path));
    ck_assert_int_eq(dir_entries(dir), 0);

    /* failed finish (tensor begun, not ended) */
    w = qbin_writer_open(path, &err);
    ck_assert(qbin_writer_begin(w, "v", QDT_F32, 1, shape, &err));
    ck_assert(qbin_writer_write(w, v, 8, &err));
    ck_assert(!qbin_writer_finish(w, NULL, &err));
    ck_assert_msg(strstr(err.msg, "'v'"), "%s", err.msg);
    ck_assert_int_eq(dir_entries(dir), 0);

    /* failed finish after an earlier usage error poisoned the writer */
    w = qbin_writer_open(path, &err);
    ck_assert(!qbin_writer_add(w, "v", QDT_F32, 1, shape, v, 3, &err));
    ck_assert(!qbin_writer_finish(w, NULL, &err));
    ck_assert_int_eq(dir_entries(dir), 0);

    /* unwritable location */
    char *bad = join(dir, "no/such/dir/x.qbin");
    ck_assert_ptr_null(qbin_writer_open(bad, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_IO);
    ck_assert_msg(strstr(err.msg, bad), "%s", err.msg);
    free(bad);

    free(path);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

/* Each misuse fails with a message; afterwards the writer refuses to
 * finish, and no file appears. */
static void misuse(const char *dir, int which)
{
    char *path = join(dir, "bad.qbin");
    qerr err = {0};
    qbin_writer *w = qbin_writer_open(path, &err);
    ck_assert_ptr_nonnull(w);
    uint64_t s2[2] = {3, 5}, huge[2] = {UINT64_MAX / 2, 3};
    unsigned char buf[64] = {0};
    char long_name[QBIN_MAX_NAME + 2];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    bool ok = true;
    const char *needle = NULL;
    switch (which) {
    case 0: ok = qbin_writer_add(w, "", QDT_U8, 1, s2, buf, 3, &err), needle = "empty"; break;
    case 1: ok = qbin_writer_add(w, long_name, QDT_U8, 1, s2, buf, 3, &err), needle = "max"; break;
    case 2:
        ck_assert(qbin_writer_add(w, "a", QDT_U8, 1, s2, buf, 3, &err));
        ok = qbin_writer_add(w, "a", QDT_U8, 1, s2, buf, 3, &err), needle = "twice";
        break;
    case 3: ok = qbin_writer_add(w, "bad\xff", QDT_U8, 1, s2, buf, 3, &err), needle = "UTF-8"; break;
    case 4: ok = qbin_writer_add(w, "a", (qdtype)42, 1, s2, buf, 3, &err), needle = "dtype"; break;
    case 5: ok = qbin_writer_add(w, "a", QDT_U8, 5, s2, buf, 3, &err), needle = "ndim"; break;
    case 6: ok = qbin_writer_add(w, "a", QDT_F32, 2, s2, buf, 59, &err), needle = "needs 60"; break;
    case 7: ok = qbin_writer_add(w, "a", QDT_F32, 2, huge, buf, 8, &err), needle = "overflow"; break;
    case 8:
        ck_assert(qbin_writer_begin(w, "a", QDT_NF4, 2, s2, &err)); /* 8 bytes */
        ck_assert(qbin_writer_write(w, buf, 5, &err));
        ok = qbin_writer_write(w, buf, 4, &err), needle = "exceed";
        break;
    case 9:
        ck_assert(qbin_writer_begin(w, "a", QDT_NF4, 2, s2, &err));
        ck_assert(qbin_writer_write(w, buf, 7, &err));
        ok = qbin_writer_end(w, &err), needle = "7 bytes written";
        break;
    case 10: ok = qbin_writer_write(w, buf, 1, &err), needle = "outside"; break;
    case 11: ok = qbin_writer_end(w, &err), needle = "without begin"; break;
    case 12:
        ck_assert(qbin_writer_begin(w, "a", QDT_U8, 1, s2, &err));
        ok = qbin_writer_begin(w, "b", QDT_U8, 1, s2, &err), needle = "before";
        break;
    }
    ck_assert_msg(!ok, "misuse %d accepted", which);
    ck_assert_msg(strstr(err.msg, needle) && strstr(err.msg, path), "misuse %d: %s", which,
                  err.msg);
    /* poisoned */
    ck_assert(!qbin_writer_add(w, "zz", QDT_U8, 1, s2, buf, 3, &err));
    ck_assert(!qbin_writer_finish(w, NULL, &err));
    ck_assert(!tu_file_exists(path));
    ck_assert_int_eq(dir_entries(dir), 0);
    free(path);
}

START_TEST(writer_rejects_misuse)
{
    char *dir = tu_tmpdir();
    for (int i = 0; i <= 12; i++)
        misuse(dir, i);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

START_TEST(writer_accepts_max_name)
{
    char *dir = tu_tmpdir();
    char *path = join(dir, "n.qbin");
    char name[QBIN_MAX_NAME + 1];
    memset(name, 'k', QBIN_MAX_NAME);
    name[QBIN_MAX_NAME] = '\0';
    qerr err = {0};
    qbin_writer *w = qbin_writer_open(path, &err);
    unsigned char b = 7;
    ck_assert_msg(qbin_writer_add(w, name, QDT_U8, 0, NULL, &b, 1, &err), "%s", err.msg);
    ck_assert_msg(qbin_writer_finish(w, NULL, &err), "%s", err.msg);
    qbin_file *f = qbin_open(path, 0, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_ptr_nonnull(qbin_find(f, name));
    qbin_close(f);
    free(path);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

/* ---------------- rejection ---------------- */

START_TEST(reject_truncations)
{
    size_t size;
    unsigned char *b = small_file(&size);
    qerr err = {0};
    qbin_file *f = qbin_open_memory(b, size, "ok", 0, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    qbin_close(f);

    /* every section boundary and its neighbours */
    size_t cuts[64], nc = 0;
    uint64_t bounds[] = {0, 8, 12, 16, 24, 120, QBIN_HEADER_SIZE, QBIN_DATA_START,
                         qbin_ld64(b + QBIN_H_DIR_OFFSET), qbin_ld64(b + QBIN_H_META_OFFSET),
                         size};
    for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++)
        for (int d = -1; d <= 1; d++)
            if (bounds[i] + (uint64_t)d < size && (d >= 0 || bounds[i] > 0))
                cuts[nc++] = (size_t)(bounds[i] + (uint64_t)d);
    for (size_t i = 0; i < N_SMALL; i++) {
        const unsigned char *e = entry(b, i);
        cuts[nc++] = (size_t)qbin_ld64(e + QBIN_E_OFFSET);
        cuts[nc++] = (size_t)(qbin_ld64(e + QBIN_E_OFFSET) + qbin_ld64(e + QBIN_E_NBYTES));
        cuts[nc++] = (size_t)(e - b) + 1;
    }
    for (size_t i = 0; i < nc; i++)
        expect_reject(b, cuts[i], QRUN_ERR_FORMAT, NULL);
    tu_rng r = {tu_seed()};
    for (int i = 0; i < 1000; i++)
        expect_reject(b, (size_t)(tu_next(&r) % size), QRUN_ERR_FORMAT, NULL);
    expect_reject(b, 0, QRUN_ERR_FORMAT, "shorter");
    expect_reject(b, size - 1, QRUN_ERR_FORMAT, "truncated");

    /* the mmap path, including an empty file */
    char *dir = tu_tmpdir();
    char *path = join(dir, "cut.qbin");
    size_t mcuts[] = {0, 100, QBIN_DATA_START + 10, size - 1};
    for (size_t i = 0; i < 4; i++) {
        ck_assert_int_eq(tu_write_file(path, b, mcuts[i]), 0);
        ck_assert_ptr_null(qbin_open(path, 0, &err));
        ck_assert_int_eq(err.code, QRUN_ERR_FORMAT);
        ck_assert_msg(strstr(err.msg, path), "%s", err.msg);
    }
    /* appended garbage is as wrong as missing bytes */
    unsigned char *longer = malloc(size + 5);
    memcpy(longer, b, size);
    memset(longer + size, 0, 5);
    expect_reject(longer, size + 5, QRUN_ERR_FORMAT, "appended");
    free(longer);
    free(path);
    tu_rmtree(dir);
    free(dir);
    free(b);
}
END_TEST

START_TEST(reject_header_fields)
{
    size_t size;
    unsigned char *b = small_file(&size);
    unsigned char *c = malloc(size);

    memcpy(c, b, size), c[1] = 'X';
    expect_reject(c, size, QRUN_ERR_FORMAT, "magic");
    memcpy(c, b, size), c[4] = '\n'; /* text-mode CRLF -> LF damage */
    expect_reject(c, size, QRUN_ERR_FORMAT, "magic");

    memcpy(c, b, size), qbin_st32(c + QBIN_H_VERSION, 2), refix(c, size);
    expect_reject(c, size, QRUN_ERR_UNSUPPORTED, "version 2");
    memcpy(c, b, size), qbin_st32(c + QBIN_H_VERSION, 0), refix(c, size);
    expect_reject(c, size, QRUN_ERR_UNSUPPORTED, "version 0");
    /* a future version is named even if its header checksum rules changed */
    memcpy(c, b, size), qbin_st32(c + QBIN_H_VERSION, 7);
    expect_reject(c, size, QRUN_ERR_UNSUPPORTED, "version 7");

    memcpy(c, b, size), qbin_st32(c + QBIN_H_ENDIAN, 0x04030201u), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "endianness");

    /* any changed header byte without a new checksum */
    for (unsigned off = QBIN_H_HEADER_SIZE; off < QBIN_H_CHECKSUM + 8; off++) {
        memcpy(c, b, size), c[off] ^= 0x10;
        expect_reject(c, size, QRUN_ERR_FORMAT, "header checksum");
    }
    memcpy(c, b, size), qbin_st32(c + QBIN_H_HEADER_SIZE, 64), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "header size");
    memcpy(c, b, size), qbin_st32(c + QBIN_H_FLAGS, 1), refix(c, size);
    expect_reject(c, size, QRUN_ERR_UNSUPPORTED, "flags");
    memcpy(c, b, size), c[QBIN_H_RESERVED + 3] = 1, refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "reserved");

    /* section fields that do not tile the file */
    memcpy(c, b, size), qbin_st64(c + QBIN_H_DATA_OFFSET, 512), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "data region");
    memcpy(c, b, size), qbin_st64(c + QBIN_H_DATA_OFFSET, 0), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "data offset");
    memcpy(c, b, size), qbin_st64(c + QBIN_H_DATA_OFFSET, 300), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "data offset");
    memcpy(c, b, size), qbin_st64(c + QBIN_H_DATA_SIZE, UINT64_MAX - 100), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "data region");
    memcpy(c, b, size), qbin_st64(c + QBIN_H_DIR_SIZE, UINT64_MAX), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "directory");
    memcpy(c, b, size), qbin_st64(c + QBIN_H_META_SIZE, qbin_ld64(b + QBIN_H_META_SIZE) + 1),
        refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "metadata");
    memcpy(c, b, size), qbin_st64(c + QBIN_H_FILE_SIZE, UINT64_MAX), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "header says");

    /* section checksums */
    uint64_t doff = qbin_ld64(b + QBIN_H_DIR_OFFSET), moff = qbin_ld64(b + QBIN_H_META_OFFSET);
    memcpy(c, b, size), c[doff + 20] ^= 1;
    expect_reject(c, size, QRUN_ERR_FORMAT, "directory checksum");
    memcpy(c, b, size), c[moff + 3] ^= 1;
    expect_reject(c, size, QRUN_ERR_FORMAT, "metadata checksum");

    /* absurd tensor count: must be refused before any allocation for it */
    memcpy(c, b, size), qbin_st64(c + QBIN_H_TENSOR_COUNT, (uint64_t)1 << 60), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "1152921504606846976");
    memcpy(c, b, size), qbin_st64(c + QBIN_H_TENSOR_COUNT, UINT64_MAX), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "cannot fit");
    memcpy(c, b, size), qbin_st64(c + QBIN_H_TENSOR_COUNT, N_SMALL + 1), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "entry 4");
    memcpy(c, b, size), qbin_st64(c + QBIN_H_TENSOR_COUNT, N_SMALL - 1), refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, "unused");
    free(c);
    free(b);
}
END_TEST

START_TEST(reject_metadata)
{
    size_t size, n;
    unsigned char *b = small_file(&size), *c;
    static const struct {
        const char *text;
        const char *needle;
    } cases[] = {
        {"not json", "not valid JSON"},
        {"", "not valid JSON"},
        {"{\"a\":", "not valid JSON"},
        {"[1,2,3]", "not an object"},
        {"\"str\"", "not an object"},
        {"42", "not an object"},
        {"{} {}", "trailing"},
        {"{}x", "trailing"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        c = with_metadata(b, size, cases[i].text, strlen(cases[i].text), &n);
        expect_reject(c, n, QRUN_ERR_FORMAT, cases[i].needle);
        free(c);
    }
    c = with_metadata(b, size, "{}\0", 3, &n);
    expect_reject(c, n, QRUN_ERR_FORMAT, "NUL");
    free(c);
    /* Not NUL-terminated in memory and followed by nothing: accepted, and
     * whitespace after the object is fine. ASan checks the parser stays in
     * bounds. */
    c = with_metadata(b, size, "{\"k\":[1,2]}\n ", 13, &n);
    qerr err = {0};
    qbin_file *f = qbin_open_memory(c, n, "ws", 0, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(qbin_metadata(f), "k")), 2);
    qbin_close(f);
    free(c);
    free(b);
}
END_TEST

/* Edit entry `i` of a copy of b, refix, expect rejection. */
typedef void (*edit_fn)(unsigned char *c, unsigned char *e, uint64_t arg);

static void edit_reject(const unsigned char *b, size_t size, size_t i, edit_fn fn, uint64_t arg,
                        const char *needle)
{
    unsigned char *c = malloc(size);
    memcpy(c, b, size);
    fn(c, entry(c, i), arg);
    refix(c, size);
    expect_reject(c, size, QRUN_ERR_FORMAT, needle);
    free(c);
}

static void set_offset(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)c;
    qbin_st64(e + QBIN_E_OFFSET, v);
}
static void add_offset(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)c;
    qbin_st64(e + QBIN_E_OFFSET, qbin_ld64(e + QBIN_E_OFFSET) + v);
}
static void set_nbytes(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)c;
    qbin_st64(e + QBIN_E_NBYTES, v);
}
static void set_dtype(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)c;
    e[QBIN_E_DTYPE] = (unsigned char)v;
}
static void set_ndim(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)c;
    e[QBIN_E_NDIM] = (unsigned char)v;
}
static void set_name_len(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)c;
    qbin_st16(e + QBIN_E_NAME_LEN, (uint16_t)v);
}
static void set_reserved(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)c;
    qbin_st32(e + QBIN_E_RESERVED, (uint32_t)v);
}
static void set_dim0(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)c;
    qbin_st64(e + QBIN_E_FIXED, v);
}
/* shape [v] (1-d f32) with a consistent nbytes, so only placement is left */
static void huge_consistent(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)c;
    qbin_st64(e + QBIN_E_FIXED, v);
    qbin_st64(e + QBIN_E_FIXED + 8, 1);
    qbin_st64(e + QBIN_E_NBYTES, v * 4);
}
/* the name byte at index v */
static void name_byte(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)c;
    e[QBIN_E_FIXED + 8 * e[QBIN_E_NDIM] + (v >> 8)] = (unsigned char)v;
}
/* copy entry 0's offset (overlap) */
static void offset_of_first(unsigned char *c, unsigned char *e, uint64_t v)
{
    qbin_st64(e + QBIN_E_OFFSET, qbin_ld64(entry(c, 0) + QBIN_E_OFFSET) + v);
}
/* copy entry 0's name (same length by construction) */
static void name_of_first(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)v;
    unsigned char *e0 = entry(c, 0);
    memcpy(e + QBIN_E_FIXED + 8 * e[QBIN_E_NDIM], e0 + QBIN_E_FIXED + 8 * e0[QBIN_E_NDIM], 4);
}
/* non-zero padding after the name of entry 0 (ndim 2, name 4: 52 -> 56) */
static void dirty_padding(unsigned char *c, unsigned char *e, uint64_t v)
{
    (void)c, (void)v;
    e[QBIN_E_FIXED + 16 + 4 + 1] = 1;
}

START_TEST(reject_directory_entries)
{
    size_t size;
    unsigned char *b = small_file(&size);
    uint64_t data_end = qbin_ld64(b + QBIN_H_DIR_OFFSET);
    /* entry 0 "t.aa" f32 [4,8] (128 bytes); 1 "t.bb" nf4 [3,5] (8); 2 "t.cc"
     * i32 [] (4); 3 "t.dd" u8 [300] */
    edit_reject(b, size, 3, set_offset, data_end, "outside the data region");
    edit_reject(b, size, 3, set_offset, data_end - 256, "outside the data region");
    edit_reject(b, size, 0, set_offset, 0, "outside the data region");
    edit_reject(b, size, 0, set_offset, UINT64_MAX - 255, "outside the data region");
    edit_reject(b, size, 0, set_offset, (UINT64_MAX / 256) * 256, "outside the data region");
    edit_reject(b, size, 0, add_offset, 1, "aligned");
    edit_reject(b, size, 0, add_offset, 128, "aligned");
    edit_reject(b, size, 1, offset_of_first, 0, "overlap");
    edit_reject(b, size, 2, offset_of_first, 0, "overlap");
    edit_reject(b, size, 3, offset_of_first, 0, "overlap");
    edit_reject(b, size, 1, name_of_first, 0, "more than once");
    edit_reject(b, size, 2, name_of_first, 0, "'t.aa' appears");
    edit_reject(b, size, 0, set_nbytes, 127, "nbytes 127");
    edit_reject(b, size, 0, set_nbytes, 129, "shape [4, 8]");
    edit_reject(b, size, 1, set_nbytes, 7, "'t.bb'");
    edit_reject(b, size, 0, set_dtype, QDT_COUNT, "dtype code 8");
    edit_reject(b, size, 0, set_dtype, 255, "dtype");
    edit_reject(b, size, 0, set_dtype, QDT_F16, "nbytes 128"); /* f16 [4,8] = 64 */
    edit_reject(b, size, 0, set_ndim, 5, "ndim 5");
    edit_reject(b, size, 0, set_ndim, 255, "ndim");
    edit_reject(b, size, 0, set_name_len, 0, "name length 0");
    edit_reject(b, size, 0, set_name_len, 256, "name length 256");
    edit_reject(b, size, 3, set_name_len, 255, "ends inside entry 3");
    edit_reject(b, size, 0, set_reserved, 1, "reserved");
    edit_reject(b, size, 0, dirty_padding, 0, "padding");
    edit_reject(b, size, 0, set_dim0, (uint64_t)1 << 62, "overflows"); /* 2^62*8*4 */
    edit_reject(b, size, 0, set_dim0, UINT64_MAX, "overflows");
    edit_reject(b, size, 0, set_dim0, 5, "does not match");
    edit_reject(b, size, 0, huge_consistent, (uint64_t)1 << 40, "outside the data region");
    edit_reject(b, size, 0, huge_consistent, (uint64_t)1 << 61, "outside the data region");
    edit_reject(b, size, 0, name_byte, (0u << 8) | 0x00, "UTF-8");       /* NUL */
    edit_reject(b, size, 0, name_byte, (1u << 8) | 0xff, "UTF-8");       /* invalid */
    edit_reject(b, size, 0, name_byte, (3u << 8) | 0xc3, "UTF-8");       /* cut sequence */
    free(b);
}
END_TEST

START_TEST(checksum_names_tensor)
{
    size_t size;
    unsigned char *b = small_file(&size);
    unsigned char *e3 = entry(b, 3);
    uint64_t off = qbin_ld64(e3 + QBIN_E_OFFSET);
    b[off + 123] ^= 0x04;
    expect_reject(b, size, QRUN_ERR_CHECKSUM, "'t.dd'");

    qerr err = {0};
    qbin_file *f = qbin_open_memory(b, size, "skip", QBIN_OPEN_SKIP_CHECKSUMS, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    for (size_t i = 0; i < 3; i++)
        ck_assert_msg(qbin_verify_tensor(f, qbin_tensor_at(f, i), &err), "%s", err.msg);
    ck_assert(!qbin_verify_tensor(f, qbin_find(f, "t.dd"), &err));
    ck_assert_int_eq(err.code, QRUN_ERR_CHECKSUM);
    ck_assert_msg(strstr(err.msg, "skip") && strstr(err.msg, "'t.dd'"), "%s", err.msg);
    qbin_close(f);

    /* A flip in alignment padding between tensors is not tensor data. */
    b[off + 123] ^= 0x04;
    b[qbin_ld64(entry(b, 0) + QBIN_E_OFFSET) + 128 + 5] ^= 1;
    f = qbin_open_memory(b, size, "pad", 0, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    qbin_close(f);
    free(b);
}
END_TEST

START_TEST(open_errors)
{
    qerr err = {0};
    ck_assert_ptr_null(qbin_open("/nonexistent/dir/model.qbin", 0, &err));
    ck_assert_int_eq(err.code, QRUN_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "/nonexistent/dir/model.qbin"), "%s", err.msg);
    char *dir = tu_tmpdir();
    ck_assert_ptr_null(qbin_open(dir, 0, &err));
    ck_assert_msg(strstr(err.msg, dir), "%s", err.msg);
    ck_assert_ptr_null(qbin_open_memory(NULL, 0, NULL, 0, &err));
    ck_assert_msg(strstr(err.msg, "<memory>"), "%s", err.msg);
    qbin_close(NULL);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

/* ---------------- fuzz ---------------- */

static void fuzz_one(const unsigned char *b, size_t size, tu_rng *r, bool fix, unsigned *accepted)
{
    unsigned char *c = malloc(size);
    memcpy(c, b, size);
    int flips = 1 + (int)(tu_next(r) % 4);
    uint64_t dir_off = qbin_ld64(b + QBIN_H_DIR_OFFSET);
    for (int k = 0; k < flips; k++) {
        size_t at;
        if (fix) /* structure only: header fields, directory, metadata */
            at = tu_next(r) & 1 ? (size_t)(tu_next(r) % QBIN_H_CHECKSUM)
                                : (size_t)(dir_off + tu_next(r) % (size - dir_off));
        else
            at = (size_t)(tu_next(r) % size);
        if (tu_next(r) & 1)
            c[at] ^= (unsigned char)(1u << (tu_next(r) % 8));
        else
            c[at] = (unsigned char)tu_next(r);
    }
    if (fix)
        refix(c, size);
    qerr err = {0};
    qbin_file *f = qbin_open_memory(c, size, "fuzz", 0, &err);
    if (f) {
        (void)touch_all(f);
        qbin_close(f);
        ++*accepted;
    } else {
        ck_assert_msg(err.code != QRUN_OK && strncmp(err.msg, "fuzz: ", 6) == 0, "%s", err.msg);
    }
    free(c);
}

START_TEST(fuzz_byte_flips)
{
    size_t size;
    unsigned char *b = small_file(&size);
    tu_rng r = {tu_seed()};
    unsigned accepted_raw = 0, accepted_fixed = 0;
    for (int i = 0; i < 3000; i++)
        fuzz_one(b, size, &r, false, &accepted_raw);
    for (int i = 0; i < 3000; i++)
        fuzz_one(b, size, &r, true, &accepted_fixed);
    /* Flips in inter-tensor padding are harmless; anything else is caught by
     * a checksum. With fixed checksums some edits (e.g. metadata string
     * contents) are legitimately accepted. */
    ck_assert_msg(accepted_raw < 3000 / 2, "accepted %u corrupt files", accepted_raw);
    free(b);
}
END_TEST

static Suite *qbin_suite(void)
{
    Suite *s = suite_create("qbin");
    TCase *tc = tcase_create("qbin");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, hash_streaming_equals_oneshot);
    tcase_add_test(tc, hash_known_answers);
    tcase_add_test(tc, hash_bit_flips);
    tcase_add_test(tc, roundtrip_every_dtype);
    tcase_add_test(tc, roundtrip_random_files);
    tcase_add_test(tc, streaming_equals_oneshot);
    tcase_add_test(tc, writer_temp_file_discipline);
    tcase_add_test(tc, writer_rejects_misuse);
    tcase_add_test(tc, writer_accepts_max_name);
    tcase_add_test(tc, reject_truncations);
    tcase_add_test(tc, reject_header_fields);
    tcase_add_test(tc, reject_metadata);
    tcase_add_test(tc, reject_directory_entries);
    tcase_add_test(tc, checksum_names_tensor);
    tcase_add_test(tc, open_errors);
    tcase_add_test(tc, fuzz_byte_flips);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(qbin_suite()); }
