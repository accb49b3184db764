/* Reader for one .safetensors file (see safetensors.h).
 *
 * Layout: u64 little-endian header length N, N bytes of JSON header, then
 * the data section. Each header entry is
 *   "name": {"dtype": "F16", "shape": [d0, d1, ...], "data_offsets": [b, e]}
 * with offsets relative to the start of the data section. Everything in the
 * header is treated as hostile until validated. */
#include "import/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u * 1024u * 1024u)
/* Largest integer a JSON number (a double in cJSON) holds exactly. */
#define ST_MAX_EXACT 9007199254740992.0

struct st_file {
    char *path;
    int fd;
    uint64_t file_size;
    uint64_t data_start;
    int count;
    st_tensor *tensors; /* sorted by name */
};

/* dtype strings of the safetensors format, with their size in bits and the
 * qdtype they map to (-1: listed, but qrun has no such type). */
static const struct {
    const char *name;
    unsigned bits;
    int qdt;
} st_dtypes[] = {
    {"F32", 32, QDT_F32},   {"F16", 16, QDT_F16},   {"BF16", 16, QDT_BF16},
    {"I8", 8, QDT_I8},      {"U8", 8, QDT_U8},      {"I32", 32, QDT_I32},
    {"F64", 64, -1},        {"I64", 64, -1},        {"U64", 64, -1},
    {"U32", 32, -1},        {"I16", 16, -1},        {"U16", 16, -1},
    {"BOOL", 8, -1},        {"F8_E4M3", 8, -1},     {"F8_E5M2", 8, -1},
    {"F8_E8M0", 8, -1},     {"F6_E2M3", 6, -1},     {"F6_E3M2", 6, -1},
    {"F4", 4, -1},          {"C64", 64, -1},
};

static int find_dtype(const char *s)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, s) == 0)
            return (int)i;
    return -1;
}

static void free_tensors(st_tensor *t, int n)
{
    if (!t)
        return;
    for (int i = 0; i < n; i++)
        free(t[i].name);
    free(t);
}

void st_close(st_file *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    free_tensors(f->tensors, f->count);
    free(f->path);
    free(f);
}

const char *st_path(const st_file *f) { return f ? f->path : NULL; }
int st_count(const st_file *f) { return f ? f->count : 0; }

const st_tensor *st_at(const st_file *f, int i)
{
    if (!f || i < 0 || i >= f->count)
        return NULL;
    return &f->tensors[i];
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_key_tensor(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const st_tensor *)elem)->name);
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    if (!f || !name || f->count == 0)
        return NULL;
    return bsearch(name, f->tensors, (size_t)f->count, sizeof(st_tensor), cmp_key_tensor);
}

/* pread exactly `n` bytes at `off`, looping over short reads and EINTR. */
static bool read_full(int fd, void *dst, uint64_t n, uint64_t off, const char *path,
                      const char *what, qerr *err)
{
    unsigned char *p = dst;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (size_t)1 << 30 : (size_t)n;
        ssize_t r = pread(fd, p, chunk, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            qerr_set(err, QRUN_ERR_IO, "%s: reading %s: %s", path, what, strerror(errno));
            return false;
        }
        if (r == 0) {
            qerr_set(err, QRUN_ERR_FORMAT, "%s: unexpected end of file reading %s", path, what);
            return false;
        }
        p += r;
        n -= (uint64_t)r;
        off += (uint64_t)r;
    }
    return true;
}

/* A JSON number that is a non-negative integer representable exactly. */
static bool json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d > ST_MAX_EXACT || floor(d) != d)
        return false;
    *out = (uint64_t)d;
    return true;
}

static bool parse_entry(st_file *f, const cJSON *e, st_tensor *t, qerr *err)
{
    const char *path = f->path, *name = t->name;
    if (!cJSON_IsObject(e))
        return qerr_set(err, QRUN_ERR_FORMAT, "%s: tensor %s: header entry is not an object",
                        path, name) == QRUN_OK;

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt) || !dt->valuestring)
        return qerr_set(err, QRUN_ERR_FORMAT, "%s: tensor %s: missing or non-string \"dtype\"", path,
                        name) == QRUN_OK;
    int di = find_dtype(dt->valuestring);
    if (di < 0)
        return qerr_set(err, QRUN_ERR_FORMAT, "%s: tensor %s: unknown dtype \"%.32s\"", path, name,
                        dt->valuestring) == QRUN_OK;
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", st_dtypes[di].name);
    t->dtype = st_dtypes[di].qdt;

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(shape))
        return qerr_set(err, QRUN_ERR_FORMAT, "%s: tensor %s: missing or non-array \"shape\"", path,
                        name) == QRUN_OK;
    int nd = cJSON_GetArraySize(shape);
    if (nd > ST_MAX_DIMS)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED, "%s: tensor %s: %d dimensions (at most %d)",
                        path, name, nd, ST_MAX_DIMS) == QRUN_OK;
    t->ndim = nd;
    int k = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, shape)
    {
        if (!json_uint(d, &t->shape[k]))
            return qerr_set(err, QRUN_ERR_FORMAT,
                            "%s: tensor %s: shape[%d] is not a non-negative integer", path, name,
                            k) == QRUN_OK;
        k++;
    }
    uint64_t numel;
    if (!qshape_numel(nd, t->shape, &numel))
        return qerr_set(err, QRUN_ERR_FORMAT, "%s: tensor %s: element count overflows", path,
                        name) == QRUN_OK;
    unsigned bits = st_dtypes[di].bits;
    if (numel > UINT64_MAX / bits)
        return qerr_set(err, QRUN_ERR_FORMAT, "%s: tensor %s: byte size overflows", path, name) ==
               QRUN_OK;
    uint64_t nbits = numel * bits;
    if (nbits % 8 != 0)
        return qerr_set(err, QRUN_ERR_FORMAT,
                        "%s: tensor %s: %llu elements of %s do not fill whole bytes", path, name,
                        (unsigned long long)numel, t->dtype_name) == QRUN_OK;
    uint64_t want = nbits / 8;

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t b = 0, en = 0;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !json_uint(cJSON_GetArrayItem(offs, 0), &b) || !json_uint(cJSON_GetArrayItem(offs, 1), &en))
        return qerr_set(err, QRUN_ERR_FORMAT,
                        "%s: tensor %s: \"data_offsets\" must be two non-negative integers", path,
                        name) == QRUN_OK;
    if (en < b)
        return qerr_set(err, QRUN_ERR_FORMAT, "%s: tensor %s: data_offsets end %llu < begin %llu",
                        path, name, (unsigned long long)en, (unsigned long long)b) == QRUN_OK;
    if (en - b != want)
        return qerr_set(err, QRUN_ERR_FORMAT,
                        "%s: tensor %s: size mismatch: data_offsets span %llu bytes but dtype %s x "
                        "shape needs %llu",
                        path, name, (unsigned long long)(en - b), t->dtype_name,
                        (unsigned long long)want) == QRUN_OK;
    uint64_t data_size = f->file_size - f->data_start;
    if (en > data_size)
        return qerr_set(err, QRUN_ERR_FORMAT,
                        "%s: tensor %s: data_offsets [%llu, %llu] out of range (data section is %llu "
                        "bytes)",
                        path, name, (unsigned long long)b, (unsigned long long)en,
                        (unsigned long long)data_size) == QRUN_OK;
    t->offset = f->data_start + b;
    t->nbytes = want;
    return true;
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static bool check_layout(st_file *f, qerr *err)
{
    if (f->count == 0)
        return true;
    /* Duplicate names (cJSON keeps both copies of a repeated key). */
    for (int i = 1; i < f->count; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return qerr_set(err, QRUN_ERR_FORMAT, "%s: tensor %s: listed twice in the header",
                            f->path, f->tensors[i].name) == QRUN_OK;
    const st_tensor **by_off = malloc((size_t)f->count * sizeof *by_off);
    if (!by_off)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", f->path) == QRUN_OK;
    for (int i = 0; i < f->count; i++)
        by_off[i] = &f->tensors[i];
    qsort(by_off, (size_t)f->count, sizeof *by_off, cmp_tensor_offset);
    bool ok = true;
    const st_tensor *prev = NULL;
    for (int i = 0; i < f->count && ok; i++) {
        const st_tensor *t = by_off[i];
        if (t->nbytes == 0)
            continue; /* empty tensors occupy no bytes */
        if (prev && t->offset < prev->offset + prev->nbytes) {
            qerr_set(err, QRUN_ERR_FORMAT, "%s: tensors %s and %s overlap in the data section",
                     f->path, prev->name, t->name);
            ok = false;
        }
        prev = t;
    }
    free(by_off);
    return ok;
}

static bool parse_header(st_file *f, const char *text, size_t len, qerr *err)
{
    /* The header must be one JSON object, optionally padded with spaces. */
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root)
        return qerr_set(err, QRUN_ERR_FORMAT, "%s: header is not valid JSON (near byte %lld)",
                        f->path, (long long)(end ? end - text : 0)) == QRUN_OK;
    bool ok = true;
    if (end)
        for (const char *p = end; p < text + len; p++)
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0') {
                ok = false;
                qerr_set(err, QRUN_ERR_FORMAT, "%s: trailing bytes after the JSON header", f->path);
                break;
            }
    if (ok && !cJSON_IsObject(root)) {
        qerr_set(err, QRUN_ERR_FORMAT, "%s: header is not a JSON object", f->path);
        ok = false;
    }
    int n = 0;
    const cJSON *e;
    if (ok)
        cJSON_ArrayForEach(e, root) if (!e->string || strcmp(e->string, "__metadata__") != 0) n++;
    if (ok && n > 0) {
        f->tensors = calloc((size_t)n, sizeof(st_tensor));
        if (!f->tensors) {
            qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory for %d tensors", f->path, n);
            ok = false;
        }
    }
    if (ok) {
        cJSON_ArrayForEach(e, root)
        {
            if (!e->string) {
                qerr_set(err, QRUN_ERR_FORMAT, "%s: header entry without a name", f->path);
                ok = false;
                break;
            }
            if (strcmp(e->string, "__metadata__") == 0)
                continue;
            st_tensor *t = &f->tensors[f->count];
            t->name = strdup(e->string);
            if (!t->name) {
                qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", f->path);
                ok = false;
                break;
            }
            f->count++;
            if (!parse_entry(f, e, t, err)) {
                ok = false;
                break;
            }
        }
    }
    cJSON_Delete(root);
    if (!ok)
        return false;
    if (f->count > 1)
        qsort(f->tensors, (size_t)f->count, sizeof(st_tensor), cmp_tensor_name);
    return check_layout(f, err);
}

st_file *st_open(const char *path, qerr *err)
{
    if (!path) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "st_open: NULL path");
        return NULL;
    }
    st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", path);
        return NULL;
    }
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        qerr_set(err, errno == ENOENT ? QRUN_ERR_NOT_FOUND : QRUN_ERR_IO, "%s: cannot open: %s",
                 path, strerror(errno));
        st_close(f);
        return NULL;
    }
    struct stat st;
    if (fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        qerr_set(err, QRUN_ERR_IO, "%s: not a regular file", path);
        st_close(f);
        return NULL;
    }
    f->file_size = (uint64_t)st.st_size;
    unsigned char lenbuf[8];
    if (f->file_size < 8) {
        qerr_set(err, QRUN_ERR_FORMAT, "%s: truncated: %llu bytes, less than the 8-byte header length",
                 path, (unsigned long long)f->file_size);
        st_close(f);
        return NULL;
    }
    if (!read_full(f->fd, lenbuf, 8, 0, path, "the header length", err)) {
        st_close(f);
        return NULL;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | lenbuf[i];
    if (hlen > ST_MAX_HEADER || hlen > f->file_size - 8) {
        qerr_set(err, QRUN_ERR_FORMAT,
                 "%s: header length %llu is invalid (file has %llu bytes after the length; limit "
                 "%u)",
                 path, (unsigned long long)hlen, (unsigned long long)(f->file_size - 8),
                 ST_MAX_HEADER);
        st_close(f);
        return NULL;
    }
    if (hlen < 2) {
        qerr_set(err, QRUN_ERR_FORMAT, "%s: header length %llu is too small for a JSON object",
                 path, (unsigned long long)hlen);
        st_close(f);
        return NULL;
    }
    f->data_start = 8 + hlen;
    char *hdr = malloc((size_t)hlen + 1);
    if (!hdr) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory for a %llu-byte header", path,
                 (unsigned long long)hlen);
        st_close(f);
        return NULL;
    }
    bool ok = read_full(f->fd, hdr, hlen, 8, path, "the header", err);
    if (ok) {
        hdr[hlen] = '\0';
        ok = parse_header(f, hdr, (size_t)hlen, err);
    }
    free(hdr);
    if (!ok) {
        st_close(f);
        return NULL;
    }
    return f;
}

bool st_read(st_file *f, const st_tensor *t, void *dst, qerr *err)
{
    if (!f || !t || (!dst && t->nbytes))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "st_read: NULL argument") == QRUN_OK;
    if (t->offset < f->data_start || t->offset > f->file_size ||
        t->nbytes > f->file_size - t->offset)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "%s: tensor %s is not in this file", f->path,
                        t->name) == QRUN_OK;
    char what[256];
    snprintf(what, sizeof what, "tensor %s", t->name);
    return read_full(f->fd, dst, t->nbytes, t->offset, f->path, what, err);
}

bool st_read_f32_range(st_file *f, const st_tensor *t, uint64_t first, uint64_t count, float *dst,
                       qerr *err)
{
    if (!f || !t || (!dst && count))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "st_read_f32: NULL argument") == QRUN_OK;
    if (t->dtype != QDT_F32 && t->dtype != QDT_F16 && t->dtype != QDT_BF16)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                        "%s: tensor %s: dtype %s cannot be read as f32 (F32, F16 or BF16 only)",
                        f->path, t->name, t->dtype_name) == QRUN_OK;
    uint64_t esize = t->dtype == QDT_F32 ? 4 : 2, numel = t->nbytes / esize;
    if (first > numel || count > numel - first)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "%s: tensor %s: elements [%llu, +%llu) are outside its %llu elements",
                        f->path, t->name, (unsigned long long)first, (unsigned long long)count,
                        (unsigned long long)numel) == QRUN_OK;
    if (t->offset < f->data_start || t->offset > f->file_size ||
        t->nbytes > f->file_size - t->offset)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "%s: tensor %s is not in this file", f->path,
                        t->name) == QRUN_OK;
    char what[256];
    snprintf(what, sizeof what, "tensor %s", t->name);
    uint64_t base = t->offset + first * esize;
    if (t->dtype == QDT_F32)
        return read_full(f->fd, dst, count * 4, base, f->path, what, err);
    /* 16-bit: read and convert in bounded chunks. */
    const uint64_t chunk = 1u << 20;
    uint16_t *buf = malloc((size_t)(count < chunk ? (count ? count : 1) : chunk) * 2);
    if (!buf)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: tensor %s: out of memory", f->path,
                        t->name) == QRUN_OK;
    bool ok = true;
    for (uint64_t i = 0; i < count && ok; i += chunk) {
        uint64_t n = count - i < chunk ? count - i : chunk;
        ok = read_full(f->fd, buf, n * 2, base + i * 2, f->path, what, err);
        if (ok && !qconvert_to_f32((qdtype)t->dtype, buf, n, dst + i)) {
            qerr_set(err, QRUN_ERR_INTERNAL, "%s: tensor %s: conversion from %s failed", f->path,
                     t->name, t->dtype_name);
            ok = false;
        }
    }
    free(buf);
    return ok;
}

bool st_read_f32(st_file *f, const st_tensor *t, float *dst, qerr *err)
{
    if (!t)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "st_read_f32: NULL argument") == QRUN_OK;
    uint64_t esize = t->dtype == QDT_F32 ? 4 : 2;
    return st_read_f32_range(f, t, 0, t->nbytes / esize, dst, err);
}
