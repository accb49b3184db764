/* .qbin writer. Tensor data is streamed to a temporary file beside the
 * target as it arrives (the converter never holds a whole model in memory);
 * the directory and metadata go after the data, the header is written last
 * at offset 0, and only a complete, fsynced file is renamed over the target.
 * A writer that hits any error is poisoned: every later call fails and
 * finish removes the temporary file. */
#include "qbin.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hash.h"
#include "qbin_layout.h"

#define WBUF_SIZE (1u << 20) /* coalesces small pieces into large writes */

typedef struct wentry {
    qbin_tensor t; /* t.name is owned (malloc) here */
} wentry;

struct qbin_writer {
    char *path, *tmp_path;
    int fd;
    bool failed;
    uint64_t pos; /* logical end of the file, including wbuf */
    unsigned char *wbuf;
    size_t wlen;
    wentry *ents;
    size_t count, cap;
    /* the tensor being streamed */
    bool open_tensor;
    uint64_t written;
    qhash_state hs;
};

static bool wfail(qbin_writer *w, qerr *err, qrun_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* Messages name the target file; the error poisons the writer. */
static bool wfail(qbin_writer *w, qerr *err, qrun_status code, const char *fmt, ...)
{
    char what[QERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    qerr_set(err, code, "%s: %s", w->path, what);
    w->failed = true;
    return false;
}

/* Usage errors (bad name, wrong size) also poison: a file missing a tensor
 * that the caller meant to write must not be finished silently. */
static bool usable(qbin_writer *w, qerr *err)
{
    if (!w) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qbin writer: NULL handle");
        return false;
    }
    if (w->failed)
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "writer already failed earlier");
    return true;
}

/* ---------------- raw output ---------------- */

static bool write_all(qbin_writer *w, const void *data, size_t n, qerr *err)
{
    const unsigned char *p = data;
    while (n) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return wfail(w, err, QRUN_ERR_IO, "write to %s failed: %s", w->tmp_path,
                         k < 0 ? strerror(errno) : "no progress");
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static bool flush_buf(qbin_writer *w, qerr *err)
{
    size_t n = w->wlen;
    w->wlen = 0;
    return n == 0 || write_all(w, w->wbuf, n, err);
}

static bool emit(qbin_writer *w, const void *data, uint64_t n, qerr *err)
{
    if (n > UINT64_MAX - w->pos || w->pos + n > (uint64_t)INT64_MAX)
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "file would exceed the maximum size");
    w->pos += n;
    if (n < WBUF_SIZE - w->wlen) {
        memcpy(w->wbuf + w->wlen, data, (size_t)n);
        w->wlen += (size_t)n;
        return true;
    }
    /* Large pieces skip the buffer: no point copying a gigabyte. */
    if (!flush_buf(w, err))
        return false;
    const unsigned char *p = data;
    while (n) {
        size_t k = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
        if (!write_all(w, p, k, err))
            return false;
        p += k;
        n -= k;
    }
    return true;
}

static bool emit_zeros(qbin_writer *w, uint64_t n, qerr *err)
{
    static const unsigned char zeros[QBIN_ALIGN];
    while (n) {
        uint64_t k = n < sizeof zeros ? n : sizeof zeros;
        if (!emit(w, zeros, k, err))
            return false;
        n -= k;
    }
    return true;
}

static bool pad_to(qbin_writer *w, uint64_t align, qerr *err)
{
    uint64_t rem = w->pos % align;
    return rem == 0 || emit_zeros(w, align - rem, err);
}

/* ---------------- open / abort ---------------- */

static void destroy(qbin_writer *w, bool remove_tmp)
{
    if (w->fd >= 0)
        close(w->fd);
    if (remove_tmp && w->tmp_path)
        unlink(w->tmp_path);
    for (size_t i = 0; i < w->count; i++)
        free((char *)w->ents[i].t.name);
    free(w->ents);
    free(w->wbuf);
    free(w->tmp_path);
    free(w->path);
    free(w);
}

qbin_writer *qbin_writer_open(const char *path, qerr *err)
{
    if (!path || !*path) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qbin writer: empty output path");
        return NULL;
    }
    qbin_writer *w = calloc(1, sizeof *w);
    size_t n = strlen(path);
    if (w) {
        w->fd = -1;
        w->path = strdup(path);
        w->tmp_path = malloc(n + sizeof ".tmp.XXXXXX");
        w->wbuf = malloc(WBUF_SIZE);
    }
    if (!w || !w->path || !w->tmp_path || !w->wbuf) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", path);
        if (w)
            destroy(w, false);
        return NULL;
    }
    memcpy(w->tmp_path, path, n);
    memcpy(w->tmp_path + n, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    w->fd = mkstemp(w->tmp_path);
    if (w->fd < 0) {
        qerr_set(err, QRUN_ERR_IO, "%s: cannot create temporary file %s: %s", path, w->tmp_path,
                 strerror(errno));
        free(w->tmp_path);
        w->tmp_path = NULL; /* nothing to unlink */
        destroy(w, false);
        return NULL;
    }
    /* mkstemp makes the file 0600; a model file is meant to be shared. */
    (void)fchmod(w->fd, 0644);
    /* The header is written last; reserve the space before the first tensor. */
    if (!emit_zeros(w, QBIN_DATA_START, err)) {
        destroy(w, true);
        return NULL;
    }
    return w;
}

void qbin_writer_abort(qbin_writer *w)
{
    if (w)
        destroy(w, true);
}

/* ---------------- tensors ---------------- */

/* A linear scan: models have a few thousand tensors at most, and this runs
 * once per tensor next to megabytes of I/O. */
static bool name_taken(const qbin_writer *w, const char *name)
{
    for (size_t i = 0; i < w->count; i++)
        if (strcmp(w->ents[i].t.name, name) == 0)
            return true;
    return false;
}

static bool check_new_tensor(qbin_writer *w, const char *name, qdtype dtype, int ndim,
                             const uint64_t *shape, uint64_t *nbytes, qerr *err)
{
    if (!name || !*name)
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "tensor name is empty");
    size_t len = strlen(name);
    if (len > QBIN_MAX_NAME)
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "tensor name '%.40s...' is %zu bytes (max %d)",
                     name, len, QBIN_MAX_NAME);
    if (!qbin_valid_name_utf8((const unsigned char *)name, len))
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "tensor name is not valid UTF-8");
    if (name_taken(w, name))
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "tensor '%s' added twice", name);
    if (!qdtype_valid((int)dtype))
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "tensor '%s': invalid dtype %d", name,
                     (int)dtype);
    if (ndim < 0 || ndim > QBIN_MAX_DIMS || (ndim > 0 && !shape))
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "tensor '%s': bad ndim %d", name, ndim);
    uint64_t numel;
    if (!qshape_numel(ndim, shape, &numel) || !qdtype_nbytes(dtype, numel, nbytes))
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "tensor '%s': shape overflows 64 bits",
                     name);
    return true;
}

bool qbin_writer_begin(qbin_writer *w, const char *name, qdtype dtype, int ndim,
                       const uint64_t *shape, qerr *err)
{
    if (!usable(w, err))
        return false;
    if (w->open_tensor)
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT,
                     "tensor '%s' begun before tensor '%s' ended", name ? name : "(null)",
                     w->ents[w->count - 1].t.name);
    uint64_t nbytes;
    if (!check_new_tensor(w, name, dtype, ndim, shape, &nbytes, err))
        return false;
    if (w->count == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        wentry *e = realloc(w->ents, cap * sizeof *e);
        if (!e)
            return wfail(w, err, QRUN_ERR_NO_MEMORY, "out of memory for tensor '%s'", name);
        w->ents = e;
        w->cap = cap;
    }
    if (!pad_to(w, QBIN_ALIGN, err))
        return false;
    qbin_tensor *t = &w->ents[w->count].t;
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name)
        return wfail(w, err, QRUN_ERR_NO_MEMORY, "out of memory for tensor '%s'", name);
    w->count++;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int k = 0; k < ndim; k++)
        t->shape[k] = shape[k];
    t->offset = w->pos;
    t->nbytes = nbytes;
    w->open_tensor = true;
    w->written = 0;
    qhash_init(&w->hs);
    return true;
}

bool qbin_writer_write(qbin_writer *w, const void *data, uint64_t nbytes, qerr *err)
{
    if (!usable(w, err))
        return false;
    if (!w->open_tensor)
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "tensor data written outside begin/end");
    qbin_tensor *t = &w->ents[w->count - 1].t;
    if (nbytes > t->nbytes - w->written)
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT,
                     "tensor '%s': %llu more bytes would exceed its size %llu (%llu written)",
                     t->name, (unsigned long long)nbytes, (unsigned long long)t->nbytes,
                     (unsigned long long)w->written);
    if (nbytes && !data)
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "tensor '%s': NULL data", t->name);
    /* Hash in bounded pieces: qhash_update takes size_t. */
    const unsigned char *p = data;
    for (uint64_t left = nbytes; left;) {
        size_t k = left > ((size_t)1 << 30) ? ((size_t)1 << 30) : (size_t)left;
        qhash_update(&w->hs, p, k);
        p += k;
        left -= k;
    }
    if (!emit(w, data, nbytes, err))
        return false;
    w->written += nbytes;
    return true;
}

bool qbin_writer_end(qbin_writer *w, qerr *err)
{
    if (!usable(w, err))
        return false;
    if (!w->open_tensor)
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "tensor end without begin");
    qbin_tensor *t = &w->ents[w->count - 1].t;
    if (w->written != t->nbytes)
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT,
                     "tensor '%s': %llu bytes written, its %s shape needs %llu", t->name,
                     (unsigned long long)w->written, qdtype_name(t->dtype),
                     (unsigned long long)t->nbytes);
    t->checksum = qhash_final(&w->hs);
    w->open_tensor = false;
    return true;
}

bool qbin_writer_add(qbin_writer *w, const char *name, qdtype dtype, int ndim,
                     const uint64_t *shape, const void *data, uint64_t nbytes, qerr *err)
{
    if (!qbin_writer_begin(w, name, dtype, ndim, shape, err))
        return false;
    qbin_tensor *t = &w->ents[w->count - 1].t;
    if (nbytes != t->nbytes)
        return wfail(w, err, QRUN_ERR_INVALID_ARGUMENT,
                     "tensor '%s': %llu bytes given, its %s shape needs %llu", name,
                     (unsigned long long)nbytes, qdtype_name(dtype),
                     (unsigned long long)t->nbytes);
    return qbin_writer_write(w, data, nbytes, err) && qbin_writer_end(w, err);
}

/* ---------------- finish ---------------- */

static bool encode_directory(qbin_writer *w, unsigned char **out, uint64_t *size, qerr *err)
{
    uint64_t total = 0;
    for (size_t i = 0; i < w->count; i++)
        total += qbin_entry_size((unsigned)w->ents[i].t.ndim, (unsigned)strlen(w->ents[i].t.name));
    unsigned char *d = calloc(total ? (size_t)total : 1, 1);
    if (!d)
        return wfail(w, err, QRUN_ERR_NO_MEMORY, "out of memory for the tensor directory");
    unsigned char *e = d;
    for (size_t i = 0; i < w->count; i++) {
        const qbin_tensor *t = &w->ents[i].t;
        size_t nl = strlen(t->name);
        qbin_st16(e + QBIN_E_NAME_LEN, (uint16_t)nl);
        e[QBIN_E_DTYPE] = (unsigned char)t->dtype;
        e[QBIN_E_NDIM] = (unsigned char)t->ndim;
        qbin_st64(e + QBIN_E_OFFSET, t->offset);
        qbin_st64(e + QBIN_E_NBYTES, t->nbytes);
        qbin_st64(e + QBIN_E_CHECKSUM, t->checksum);
        for (int k = 0; k < t->ndim; k++)
            qbin_st64(e + QBIN_E_FIXED + 8 * k, t->shape[k]);
        memcpy(e + QBIN_E_FIXED + 8 * t->ndim, t->name, nl);
        e += qbin_entry_size((unsigned)t->ndim, (unsigned)nl);
    }
    *out = d;
    *size = total;
    return true;
}

static void encode_header(unsigned char *h, const qbin_writer *w, uint64_t data_end,
                          uint64_t dir_size, uint64_t dir_hash, uint64_t meta_size,
                          uint64_t meta_hash)
{
    memset(h, 0, QBIN_HEADER_SIZE);
    memcpy(h + QBIN_H_MAGIC, QBIN_MAGIC, QBIN_MAGIC_LEN);
    qbin_st32(h + QBIN_H_VERSION, QBIN_VERSION);
    qbin_st32(h + QBIN_H_ENDIAN, QBIN_ENDIAN_MARK);
    qbin_st32(h + QBIN_H_HEADER_SIZE, QBIN_HEADER_SIZE);
    qbin_st64(h + QBIN_H_FILE_SIZE, data_end + dir_size + meta_size);
    qbin_st64(h + QBIN_H_DATA_OFFSET, QBIN_DATA_START);
    qbin_st64(h + QBIN_H_DATA_SIZE, data_end - QBIN_DATA_START);
    qbin_st64(h + QBIN_H_DIR_OFFSET, data_end);
    qbin_st64(h + QBIN_H_DIR_SIZE, dir_size);
    qbin_st64(h + QBIN_H_META_OFFSET, data_end + dir_size);
    qbin_st64(h + QBIN_H_META_SIZE, meta_size);
    qbin_st64(h + QBIN_H_TENSOR_COUNT, (uint64_t)w->count);
    qbin_st64(h + QBIN_H_DIR_CHECKSUM, dir_hash);
    qbin_st64(h + QBIN_H_META_CHECKSUM, meta_hash);
    qbin_st64(h + QBIN_H_CHECKSUM, qbin_header_hash(h));
}

static bool pwrite_all(qbin_writer *w, const void *data, size_t n, off_t at, qerr *err)
{
    const unsigned char *p = data;
    while (n) {
        ssize_t k = pwrite(w->fd, p, n, at);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return wfail(w, err, QRUN_ERR_IO, "write to %s failed: %s", w->tmp_path,
                         k < 0 ? strerror(errno) : "no progress");
        p += k;
        n -= (size_t)k;
        at += k;
    }
    return true;
}

/* Directory and metadata after the data, then the header at offset 0. */
static bool write_tail_and_header(qbin_writer *w, const char *meta, qerr *err)
{
    if (!pad_to(w, QBIN_ALIGN, err))
        return false;
    uint64_t data_end = w->pos, dir_size = 0;
    unsigned char *dir = NULL;
    if (!encode_directory(w, &dir, &dir_size, err))
        return false;
    uint64_t dir_hash = qhash(dir, (size_t)dir_size);
    bool ok = emit(w, dir, dir_size, err);
    free(dir);
    size_t meta_size = strlen(meta);
    if (!ok || !emit(w, meta, meta_size, err) || !flush_buf(w, err))
        return false;
    unsigned char h[QBIN_HEADER_SIZE];
    encode_header(h, w, data_end, dir_size, dir_hash, meta_size, qhash(meta, meta_size));
    return pwrite_all(w, h, sizeof h, 0, err);
}

/* Make the rename itself durable. Best effort: some file systems refuse
 * fsync on a directory, and by now the complete file is in place. */
static void sync_parent_dir(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return;
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash == dir)
        d = "/";
    else if (slash) {
        *slash = '\0';
        d = dir;
    }
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

static bool commit(qbin_writer *w, qerr *err)
{
    if (fsync(w->fd) != 0)
        return wfail(w, err, QRUN_ERR_IO, "fsync of %s failed: %s", w->tmp_path, strerror(errno));
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0)
        return wfail(w, err, QRUN_ERR_IO, "close of %s failed: %s", w->tmp_path, strerror(errno));
    if (rename(w->tmp_path, w->path) != 0)
        return wfail(w, err, QRUN_ERR_IO, "cannot rename %s into place: %s", w->tmp_path,
                     strerror(errno));
    sync_parent_dir(w->path);
    return true;
}

bool qbin_writer_finish(qbin_writer *w, const cJSON *metadata, qerr *err)
{
    if (!usable(w, err)) {
        if (w)
            destroy(w, true);
        return false;
    }
    char *meta = NULL;
    bool ok;
    if (w->open_tensor)
        ok = wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "tensor '%s' was begun but not ended",
                   w->ents[w->count - 1].t.name);
    else if (metadata && !cJSON_IsObject(metadata))
        ok = wfail(w, err, QRUN_ERR_INVALID_ARGUMENT, "metadata must be a JSON object");
    else if (!(meta = metadata ? cJSON_PrintUnformatted(metadata) : strdup("{}")))
        ok = wfail(w, err, QRUN_ERR_NO_MEMORY, "cannot serialize the metadata");
    else
        ok = write_tail_and_header(w, meta, err) && commit(w, err);
    /* cJSON_PrintUnformatted allocates with cJSON's hooks, which are the
     * default malloc/free unless someone installed others; use its free. */
    if (meta && metadata)
        cJSON_free(meta);
    else
        free(meta);
    destroy(w, !ok);
    return ok;
}
