/* .qbin reader: maps a file (or takes a caller's buffer) and validates every
 * byte that anything later relies on before handing out a handle. The file
 * is treated as hostile: every count and size is bounded by the file size
 * before it sizes an allocation, and all offset arithmetic is checked. */
#include "qbin.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hash.h"
#include "qbin_layout.h"

struct qbin_file {
    char *label;
    const unsigned char *base;
    uint64_t size;
    void *map; /* non-NULL when we own an mmap of `size` bytes */
    uint32_t version;
    char *meta_text; /* NUL-terminated copy of the metadata block */
    cJSON *meta;
    size_t count;
    qbin_tensor *tensors; /* in directory order */
    char *names;          /* all names, NUL-terminated, back to back */
    size_t *by_name;      /* tensor indices sorted by name, for bsearch */
};

/* Decoded header fields; only used while validating. */
typedef struct header {
    uint64_t file_size, data_off, data_size, dir_off, dir_size, meta_off, meta_size, count;
    uint64_t dir_hash, meta_hash;
} header;

/* Every message starts with the file's label so that the caller, who may be
 * loading several files, knows which one is bad. */
static bool fail(const qbin_file *f, qerr *err, qrun_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static bool fail(const qbin_file *f, qerr *err, qrun_status code, const char *fmt, ...)
{
    char what[QERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    qerr_set(err, code, "%s: %s", f->label, what);
    return false;
}

static bool add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a > UINT64_MAX - b)
        return false;
    *out = a + b;
    return true;
}

/* ---------------- header ---------------- */

static bool check_header_ident(qbin_file *f, qerr *err)
{
    const unsigned char *h = f->base;
    if (f->size < QBIN_HEADER_SIZE)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "file is %llu bytes, shorter than the %u-byte .qbin header (truncated?)",
                    (unsigned long long)f->size, QBIN_HEADER_SIZE);
    if (memcmp(h, QBIN_MAGIC, QBIN_MAGIC_LEN) != 0)
        return fail(f, err, QRUN_ERR_FORMAT, "not a .qbin file (bad magic bytes)");
    /* Version before anything else so a newer file says so instead of
     * failing some later check whose rules changed. */
    f->version = qbin_ld32(h + QBIN_H_VERSION);
    if (f->version != QBIN_VERSION)
        return fail(f, err, QRUN_ERR_UNSUPPORTED,
                    "unsupported .qbin format version %u (this build reads version %u)",
                    f->version, QBIN_VERSION);
    uint32_t mark = qbin_ld32(h + QBIN_H_ENDIAN);
    if (mark != QBIN_ENDIAN_MARK)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "bad endianness marker 0x%08x (expected 0x%08x: little-endian)", mark,
                    QBIN_ENDIAN_MARK);
    uint64_t want = qbin_ld64(h + QBIN_H_CHECKSUM), got = qbin_header_hash(h);
    if (want != got)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "header checksum mismatch (stored 0x%016llx, computed 0x%016llx)",
                    (unsigned long long)want, (unsigned long long)got);
    uint32_t hsize = qbin_ld32(h + QBIN_H_HEADER_SIZE);
    if (hsize != QBIN_HEADER_SIZE)
        return fail(f, err, QRUN_ERR_FORMAT, "header size field is %u, expected %u", hsize,
                    QBIN_HEADER_SIZE);
    uint32_t flags = qbin_ld32(h + QBIN_H_FLAGS);
    if (flags != 0)
        return fail(f, err, QRUN_ERR_UNSUPPORTED, "unknown header flags 0x%08x", flags);
    for (unsigned i = 0; i < 16; i++)
        if (h[QBIN_H_RESERVED + i] != 0)
            return fail(f, err, QRUN_ERR_FORMAT, "reserved header byte %u is not zero",
                        QBIN_H_RESERVED + i);
    return true;
}

static void decode_header(const unsigned char *h, header *hd)
{
    hd->file_size = qbin_ld64(h + QBIN_H_FILE_SIZE);
    hd->data_off = qbin_ld64(h + QBIN_H_DATA_OFFSET);
    hd->data_size = qbin_ld64(h + QBIN_H_DATA_SIZE);
    hd->dir_off = qbin_ld64(h + QBIN_H_DIR_OFFSET);
    hd->dir_size = qbin_ld64(h + QBIN_H_DIR_SIZE);
    hd->meta_off = qbin_ld64(h + QBIN_H_META_OFFSET);
    hd->meta_size = qbin_ld64(h + QBIN_H_META_SIZE);
    hd->count = qbin_ld64(h + QBIN_H_TENSOR_COUNT);
    hd->dir_hash = qbin_ld64(h + QBIN_H_DIR_CHECKSUM);
    hd->meta_hash = qbin_ld64(h + QBIN_H_META_CHECKSUM);
}

/* The sections tile the file exactly: header | data | directory | metadata.
 * Checking the chain of sums (with overflow checks) bounds every section by
 * the real file size. */
static bool check_sections(qbin_file *f, const header *hd, qerr *err)
{
    if (hd->file_size != f->size)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "header says the file is %llu bytes but it is %llu bytes (truncated or "
                    "appended to?)",
                    (unsigned long long)hd->file_size, (unsigned long long)f->size);
    if (hd->data_off < QBIN_HEADER_SIZE || hd->data_off % QBIN_ALIGN != 0)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "data offset %llu is not a multiple of %u at or after the header",
                    (unsigned long long)hd->data_off, QBIN_ALIGN);
    uint64_t end;
    if (!add_u64(hd->data_off, hd->data_size, &end) || end != hd->dir_off)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "data region [%llu, +%llu) does not end where the directory starts (%llu)",
                    (unsigned long long)hd->data_off, (unsigned long long)hd->data_size,
                    (unsigned long long)hd->dir_off);
    if (!add_u64(hd->dir_off, hd->dir_size, &end) || end != hd->meta_off)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "directory [%llu, +%llu) does not end where the metadata starts (%llu)",
                    (unsigned long long)hd->dir_off, (unsigned long long)hd->dir_size,
                    (unsigned long long)hd->meta_off);
    if (!add_u64(hd->meta_off, hd->meta_size, &end) || end != hd->file_size)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "metadata [%llu, +%llu) does not end at the end of the file (%llu)",
                    (unsigned long long)hd->meta_off, (unsigned long long)hd->meta_size,
                    (unsigned long long)hd->file_size);
    uint64_t h = qhash(f->base + hd->dir_off, (size_t)hd->dir_size);
    if (h != hd->dir_hash)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "tensor directory checksum mismatch (stored 0x%016llx, computed 0x%016llx)",
                    (unsigned long long)hd->dir_hash, (unsigned long long)h);
    h = qhash(f->base + hd->meta_off, (size_t)hd->meta_size);
    if (h != hd->meta_hash)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "metadata checksum mismatch (stored 0x%016llx, computed 0x%016llx)",
                    (unsigned long long)hd->meta_hash, (unsigned long long)h);
    return true;
}

/* ---------------- metadata ---------------- */

static bool load_metadata(qbin_file *f, const header *hd, qerr *err)
{
    /* meta_size <= file size, which is already in memory, so this
     * allocation is bounded by what the caller handed us. */
    size_t n = (size_t)hd->meta_size;
    f->meta_text = malloc(n + 1);
    if (!f->meta_text)
        return fail(f, err, QRUN_ERR_NO_MEMORY, "out of memory for %zu bytes of metadata", n);
    memcpy(f->meta_text, f->base + hd->meta_off, n);
    f->meta_text[n] = '\0';
    if (memchr(f->meta_text, '\0', n))
        return fail(f, err, QRUN_ERR_FORMAT, "metadata contains a NUL byte");
    const char *end = NULL;
    f->meta = cJSON_ParseWithLengthOpts(f->meta_text, n, &end, 0);
    if (!f->meta) {
        size_t at = end && end >= f->meta_text ? (size_t)(end - f->meta_text) : 0;
        return fail(f, err, QRUN_ERR_FORMAT, "metadata is not valid JSON (error near byte %zu of %zu)",
                    at, n);
    }
    /* Only whitespace may follow the value: "{} junk" is corrupt. */
    for (const char *p = end; p && p < f->meta_text + n; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            return fail(f, err, QRUN_ERR_FORMAT, "metadata has trailing bytes after the JSON value "
                        "(at byte %zu of %zu)", (size_t)(p - f->meta_text), n);
    if (!cJSON_IsObject(f->meta))
        return fail(f, err, QRUN_ERR_FORMAT, "metadata is JSON but not an object");
    return true;
}

/* ---------------- directory ---------------- */

/* Parse the fixed part and the name of entry `idx` at `*pos`; advance. */
static bool parse_entry(qbin_file *f, const header *hd, size_t idx, uint64_t *pos, char **name_out,
                        qerr *err)
{
    const unsigned char *d = f->base + hd->dir_off;
    uint64_t left = hd->dir_size - *pos;
    if (left < QBIN_E_FIXED)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "tensor directory ends inside entry %zu (at byte %llu of %llu)", idx,
                    (unsigned long long)*pos, (unsigned long long)hd->dir_size);
    const unsigned char *e = d + *pos;
    unsigned name_len = qbin_ld16(e + QBIN_E_NAME_LEN);
    unsigned dtype = e[QBIN_E_DTYPE], ndim = e[QBIN_E_NDIM];
    if (name_len == 0 || name_len > QBIN_MAX_NAME)
        return fail(f, err, QRUN_ERR_FORMAT, "tensor entry %zu: name length %u is not in 1..%d",
                    idx, name_len, QBIN_MAX_NAME);
    if (ndim > QBIN_MAX_DIMS)
        return fail(f, err, QRUN_ERR_FORMAT, "tensor entry %zu: ndim %u exceeds %d", idx, ndim,
                    QBIN_MAX_DIMS);
    uint64_t esize = qbin_entry_size(ndim, name_len);
    if (left < esize)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "tensor directory ends inside entry %zu (needs %llu bytes, %llu left)", idx,
                    (unsigned long long)esize, (unsigned long long)left);
    const unsigned char *nm = e + QBIN_E_FIXED + 8u * ndim;
    if (!qbin_valid_name_utf8(nm, name_len))
        return fail(f, err, QRUN_ERR_FORMAT,
                    "tensor entry %zu: name is not valid UTF-8 without NUL bytes", idx);
    /* From here on the name is safe to print. */
    char *name = *name_out;
    memcpy(name, nm, name_len);
    name[name_len] = '\0';
    *name_out = name + name_len + 1;
    if (qbin_ld32(e + QBIN_E_RESERVED) != 0)
        return fail(f, err, QRUN_ERR_FORMAT, "tensor '%s': reserved entry field is not zero", name);
    for (const unsigned char *p = nm + name_len; p < e + esize; p++)
        if (*p)
            return fail(f, err, QRUN_ERR_FORMAT, "tensor '%s': entry padding is not zero", name);
    if (!qdtype_valid((int)dtype))
        return fail(f, err, QRUN_ERR_FORMAT, "tensor '%s': unknown dtype code %u", name, dtype);

    qbin_tensor *t = &f->tensors[idx];
    t->name = name;
    t->dtype = (qdtype)dtype;
    t->ndim = (int)ndim;
    for (unsigned k = 0; k < ndim; k++)
        t->shape[k] = qbin_ld64(e + QBIN_E_FIXED + 8u * k);
    t->offset = qbin_ld64(e + QBIN_E_OFFSET);
    t->nbytes = qbin_ld64(e + QBIN_E_NBYTES);
    t->checksum = qbin_ld64(e + QBIN_E_CHECKSUM);
    *pos += esize;
    return true;
}

static void shape_text(const qbin_tensor *t, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int k = 0; k < t->ndim && n < cap; k++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%llu", k ? ", " : "",
                              (unsigned long long)t->shape[k]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

/* Shape, size and placement of one tensor against the data region. */
static bool check_tensor(qbin_file *f, const header *hd, const qbin_tensor *t, qerr *err)
{
    char shp[128];
    shape_text(t, shp, sizeof shp);
    uint64_t numel, want, end, data_end = hd->data_off + hd->data_size;
    if (!qshape_numel(t->ndim, t->shape, &numel) || !qdtype_nbytes(t->dtype, numel, &want))
        return fail(f, err, QRUN_ERR_FORMAT, "tensor '%s': shape %s overflows 64 bits", t->name,
                    shp);
    if (t->nbytes != want)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "tensor '%s': nbytes %llu does not match %s shape %s (%llu bytes)", t->name,
                    (unsigned long long)t->nbytes, qdtype_name(t->dtype), shp,
                    (unsigned long long)want);
    if (t->offset % QBIN_ALIGN != 0)
        return fail(f, err, QRUN_ERR_FORMAT, "tensor '%s': offset %llu is not %u-byte aligned",
                    t->name, (unsigned long long)t->offset, QBIN_ALIGN);
    if (t->offset < hd->data_off || !add_u64(t->offset, t->nbytes, &end) || end > data_end)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "tensor '%s': bytes [%llu, +%llu) lie outside the data region [%llu, %llu)",
                    t->name, (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                    (unsigned long long)hd->data_off, (unsigned long long)data_end);
    return true;
}

/* Sort an index array of tensors. A private merge sort rather than qsort:
 * qsort's comparator gets no context pointer in C11, and a file-scope one
 * would race when two threads open files at once. */
static void sort_indices(const qbin_tensor *t, size_t *idx, size_t *tmp, size_t n,
                         int (*cmp)(const qbin_tensor *, const qbin_tensor *))
{
    /* Bottom-up: O(n log n), no recursion. */
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                tmp[k++] = cmp(&t[idx[j]], &t[idx[i]]) < 0 ? idx[j++] : idx[i++];
            while (i < mid)
                tmp[k++] = idx[i++];
            while (j < hi)
                tmp[k++] = idx[j++];
        }
        memcpy(idx, tmp, n * sizeof *idx);
    }
}

static int by_offset(const qbin_tensor *x, const qbin_tensor *y)
{
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static int by_name(const qbin_tensor *x, const qbin_tensor *y) { return strcmp(x->name, y->name); }

/* No two tensors share a byte, and no name appears twice. */
static bool check_overlaps_and_names(qbin_file *f, qerr *err)
{
    size_t n = f->count;
    size_t *tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!tmp)
        return fail(f, err, QRUN_ERR_NO_MEMORY, "out of memory sorting %zu tensors", n);
    for (size_t i = 0; i < n; i++)
        f->by_name[i] = i;
    sort_indices(f->tensors, f->by_name, tmp, n, by_offset);
    for (size_t i = 1; i < n; i++) {
        const qbin_tensor *a = &f->tensors[f->by_name[i - 1]], *b = &f->tensors[f->by_name[i]];
        if (a->offset + a->nbytes > b->offset) { /* no overflow: checked in check_tensor */
            free(tmp);
            return fail(f, err, QRUN_ERR_FORMAT,
                        "tensors '%s' [%llu, +%llu) and '%s' [%llu, +%llu) overlap", a->name,
                        (unsigned long long)a->offset, (unsigned long long)a->nbytes, b->name,
                        (unsigned long long)b->offset, (unsigned long long)b->nbytes);
        }
    }
    sort_indices(f->tensors, f->by_name, tmp, n, by_name);
    free(tmp);
    for (size_t i = 1; i < n; i++) {
        const char *a = f->tensors[f->by_name[i - 1]].name, *b = f->tensors[f->by_name[i]].name;
        if (strcmp(a, b) == 0)
            return fail(f, err, QRUN_ERR_FORMAT, "tensor name '%s' appears more than once", a);
    }
    return true;
}

static bool load_directory(qbin_file *f, const header *hd, qerr *err)
{
    /* Bound the count by the directory bytes before allocating for it. */
    if (hd->count > hd->dir_size / QBIN_ENTRY_MIN)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "tensor count %llu cannot fit in a %llu-byte directory (at least %u bytes "
                    "per entry)",
                    (unsigned long long)hd->count, (unsigned long long)hd->dir_size,
                    QBIN_ENTRY_MIN);
    f->count = (size_t)hd->count;
    size_t n = f->count ? f->count : 1;
    f->tensors = calloc(n, sizeof *f->tensors);
    f->by_name = calloc(n, sizeof *f->by_name);
    /* Names are shorter than their entries, so dir_size bytes hold them all
     * with their terminators (each entry has >= 7 bytes beyond its name). */
    f->names = malloc((size_t)hd->dir_size + 1);
    if (!f->tensors || !f->by_name || !f->names)
        return fail(f, err, QRUN_ERR_NO_MEMORY, "out of memory for %zu tensor entries", f->count);
    uint64_t pos = 0;
    char *names = f->names;
    for (size_t i = 0; i < f->count; i++) {
        if (!parse_entry(f, hd, i, &pos, &names, err))
            return false;
        if (!check_tensor(f, hd, &f->tensors[i], err))
            return false;
    }
    if (pos != hd->dir_size)
        return fail(f, err, QRUN_ERR_FORMAT,
                    "tensor directory has %llu unused bytes after its %zu entries",
                    (unsigned long long)(hd->dir_size - pos), f->count);
    return check_overlaps_and_names(f, err);
}

/* ---------------- open / close ---------------- */

static bool verify_one(const qbin_file *f, const qbin_tensor *t, qerr *err)
{
    uint64_t h = qhash(f->base + t->offset, (size_t)t->nbytes);
    if (h != t->checksum)
        return fail(f, err, QRUN_ERR_CHECKSUM,
                    "tensor '%s': data checksum mismatch (stored 0x%016llx, computed 0x%016llx); "
                    "the file is corrupt",
                    t->name, (unsigned long long)t->checksum, (unsigned long long)h);
    return true;
}

static bool validate(qbin_file *f, unsigned flags, qerr *err)
{
    header hd;
    if (!check_header_ident(f, err))
        return false;
    decode_header(f->base, &hd);
    if (!check_sections(f, &hd, err) || !load_metadata(f, &hd, err) ||
        !load_directory(f, &hd, err))
        return false;
    if (!(flags & QBIN_OPEN_SKIP_CHECKSUMS))
        for (size_t i = 0; i < f->count; i++)
            if (!verify_one(f, &f->tensors[i], err))
                return false;
    return true;
}

static qbin_file *new_file(const char *label, qerr *err)
{
    qbin_file *f = calloc(1, sizeof *f);
    if (f)
        f->label = strdup(label);
    if (!f || !f->label) {
        free(f);
        qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", label);
        return NULL;
    }
    return f;
}

qbin_file *qbin_open_memory(const void *data, size_t size, const char *label, unsigned flags,
                            qerr *err)
{
    qbin_file *f = new_file(label ? label : "<memory>", err);
    if (!f)
        return NULL;
    f->base = data;
    f->size = size;
    if (!data && size) {
        fail(f, err, QRUN_ERR_INVALID_ARGUMENT, "NULL buffer of %zu bytes", size);
        qbin_close(f);
        return NULL;
    }
    if (!validate(f, flags, err)) {
        qbin_close(f);
        return NULL;
    }
    return f;
}

static bool map_file(qbin_file *f, const char *path, qerr *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(f, err, errno == ENOENT ? QRUN_ERR_NOT_FOUND : QRUN_ERR_IO,
                    "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fail(f, err, QRUN_ERR_IO, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fail(f, err, QRUN_ERR_IO, "not a regular file");
    }
    if ((uint64_t)st.st_size < QBIN_HEADER_SIZE || (uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return fail(f, err, QRUN_ERR_FORMAT,
                    "file is %llu bytes, too short for the %u-byte .qbin header (truncated?)",
                    (unsigned long long)st.st_size, QBIN_HEADER_SIZE);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (m == MAP_FAILED)
        return fail(f, err, QRUN_ERR_IO, "cannot mmap %llu bytes: %s",
                    (unsigned long long)st.st_size, strerror(e));
    f->map = m;
    f->base = m;
    f->size = (uint64_t)st.st_size;
    return true;
}

qbin_file *qbin_open(const char *path, unsigned flags, qerr *err)
{
    if (!path) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qbin_open: NULL path");
        return NULL;
    }
    qbin_file *f = new_file(path, err);
    if (!f)
        return NULL;
    if (!map_file(f, path, err) || !validate(f, flags, err)) {
        qbin_close(f);
        return NULL;
    }
    return f;
}

void qbin_close(qbin_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, (size_t)f->size);
    cJSON_Delete(f->meta);
    free(f->meta_text);
    free(f->tensors);
    free(f->names);
    free(f->by_name);
    free(f->label);
    free(f);
}

/* ---------------- queries ---------------- */

uint32_t qbin_format_version(const qbin_file *f) { return f->version; }
const cJSON *qbin_metadata(const qbin_file *f) { return f->meta; }
const char *qbin_metadata_text(const qbin_file *f) { return f->meta_text; }
size_t qbin_tensor_count(const qbin_file *f) { return f->count; }

const qbin_tensor *qbin_tensor_at(const qbin_file *f, size_t i)
{
    return i < f->count ? &f->tensors[i] : NULL;
}

const qbin_tensor *qbin_find(const qbin_file *f, const char *name)
{
    if (!name)
        return NULL;
    size_t lo = 0, hi = f->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const qbin_tensor *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const void *qbin_tensor_data(const qbin_file *f, const qbin_tensor *t)
{
    return f->base + t->offset;
}

bool qbin_verify_tensor(const qbin_file *f, const qbin_tensor *t, qerr *err)
{
    return verify_one(f, t, err);
}
