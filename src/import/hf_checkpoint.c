/* A Hugging Face checkpoint directory (see hf_checkpoint.h).
 *
 * Weight files, in the order transformers looks for them:
 *   1. model.safetensors                       (one file)
 *   2. model.safetensors.index.json + shards   ({"weight_map": {tensor: shard}})
 * Anything else (pytorch_model.bin, other *.safetensors names) is refused
 * with a message that says what was found.
 *
 * With an index, the tensor table holds exactly the indexed tensors, each
 * taken from the shard the index names; tensors a shard holds that the index
 * does not list are ignored (transformers loads by the index too). Every
 * shard's header is opened and validated up front and its descriptor kept
 * open for reading. */
#include "import/hf_checkpoint.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HF_CONFIG_MAX (16u << 20)
#define HF_INDEX_MAX (64u << 20)
#define HF_TOKENIZER_MAX (64u << 20)

typedef struct hf_entry {
    const st_tensor *t;
    int shard;
} hf_entry;

struct hf_checkpoint {
    char *dir;
    cJSON *config;
    cJSON *tok_config;
    cJSON *gen_config;
    st_file **shards;
    int nshards;
    hf_entry *entries; /* sorted by name */
    int count;
};

static char *join_path(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static bool file_exists(const char *dir, const char *name)
{
    char *p = join_path(dir, name);
    struct stat st;
    bool ok = p && stat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    return ok;
}

/* Whole file into memory (NUL-terminated). NULL with QRUN_ERR_NOT_FOUND when
 * absent, other codes on errors. */
static unsigned char *read_bytes(const char *dir, const char *name, uint64_t max_size,
                                 uint64_t *size_out, qerr *err)
{
    char *path = join_path(dir, name);
    if (!path) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "%s/%s: out of memory", dir, name);
        return NULL;
    }
    unsigned char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            qerr_set(err, QRUN_ERR_NOT_FOUND, "%s: no such file", path);
        else
            qerr_set(err, QRUN_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        free(path);
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        qerr_set(err, QRUN_ERR_IO, "%s: not a regular file", path);
        goto out;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size > max_size) {
        qerr_set(err, QRUN_ERR_FORMAT, "%s: %llu bytes, larger than the limit of %llu", path,
                 (unsigned long long)size, (unsigned long long)max_size);
        goto out;
    }
    buf = malloc((size_t)size + 1);
    if (!buf) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", path);
        goto out;
    }
    uint64_t got = 0;
    while (got < size) {
        ssize_t r = pread(fd, buf + got, (size_t)(size - got), (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            qerr_set(err, QRUN_ERR_IO, "%s: read failed: %s", path,
                     r < 0 ? strerror(errno) : "file shrank while reading");
            free(buf);
            buf = NULL;
            goto out;
        }
        got += (uint64_t)r;
    }
    buf[size] = '\0';
    if (size_out)
        *size_out = size;
out:
    close(fd);
    free(path);
    return buf;
}

char *hf_read_text(const char *dir, const char *name, uint64_t max_size, qerr *err)
{
    if (!dir || !name) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "hf_read_text: NULL argument");
        return NULL;
    }
    return (char *)read_bytes(dir, name, max_size, NULL, err);
}

/* Parse a JSON file of the directory. *out = NULL when absent and !required. */
static bool load_json(const char *dir, const char *name, uint64_t max, bool required, cJSON **out,
                      qerr *err)
{
    *out = NULL;
    qerr local;
    qerr_clear(&local);
    char *text = hf_read_text(dir, name, max, &local);
    if (!text) {
        if (local.code == QRUN_ERR_NOT_FOUND) {
            if (!required)
                return true;
            return qerr_set(err, QRUN_ERR_NOT_FOUND, "%s: no %s", dir, name) == QRUN_OK;
        }
        if (err)
            *err = local;
        return false;
    }
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j)
        return qerr_set(err, QRUN_ERR_FORMAT, "%s/%s: invalid JSON", dir, name) == QRUN_OK;
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return qerr_set(err, QRUN_ERR_FORMAT, "%s/%s: not a JSON object", dir, name) == QRUN_OK;
    }
    *out = j;
    return true;
}

void hf_close(hf_checkpoint *ck)
{
    if (!ck)
        return;
    for (int i = 0; i < ck->nshards; i++)
        st_close(ck->shards[i]);
    free(ck->shards);
    free(ck->entries);
    cJSON_Delete(ck->config);
    cJSON_Delete(ck->tok_config);
    cJSON_Delete(ck->gen_config);
    free(ck->dir);
    free(ck);
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const hf_entry *)a)->t->name, ((const hf_entry *)b)->t->name);
}

static int cmp_key_entry(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const hf_entry *)elem)->t->name);
}

static int add_shard(hf_checkpoint *ck, const char *file, qerr *err)
{
    for (int i = 0; i < ck->nshards; i++) {
        const char *p = st_path(ck->shards[i]);
        const char *base = strrchr(p, '/');
        if (strcmp(base ? base + 1 : p, file) == 0)
            return i;
    }
    char *path = join_path(ck->dir, file);
    if (!path) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", ck->dir);
        return -1;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        qerr_set(err, QRUN_ERR_NOT_FOUND, "%s: shard %s named in model.safetensors.index.json is missing",
                 ck->dir, file);
        free(path);
        return -1;
    }
    st_file **grown = realloc(ck->shards, (size_t)(ck->nshards + 1) * sizeof *grown);
    if (!grown) {
        free(path);
        qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", ck->dir);
        return -1;
    }
    ck->shards = grown;
    st_file *f = st_open(path, err);
    free(path);
    if (!f)
        return -1;
    ck->shards[ck->nshards] = f;
    return ck->nshards++;
}

static bool valid_shard_name(const char *s)
{
    if (!s || !*s || strchr(s, '/') || strchr(s, '\\') || strcmp(s, ".") == 0 ||
        strcmp(s, "..") == 0)
        return false;
    return true;
}

static bool open_indexed(hf_checkpoint *ck, qerr *err)
{
    cJSON *idx = NULL;
    if (!load_json(ck->dir, "model.safetensors.index.json", HF_INDEX_MAX, true, &idx, err))
        return false;
    bool ok = true;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    int n = cJSON_IsObject(wm) ? cJSON_GetArraySize(wm) : 0;
    if (!cJSON_IsObject(wm)) {
        qerr_set(err, QRUN_ERR_FORMAT,
                 "%s/model.safetensors.index.json: missing or non-object \"weight_map\"", ck->dir);
        ok = false;
    } else if (n == 0) {
        qerr_set(err, QRUN_ERR_FORMAT, "%s/model.safetensors.index.json: empty \"weight_map\"",
                 ck->dir);
        ok = false;
    }
    if (ok && !(ck->entries = calloc((size_t)n, sizeof(hf_entry)))) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", ck->dir);
        ok = false;
    }
    const cJSON *e;
    if (ok)
        cJSON_ArrayForEach(e, wm)
        {
            if (!cJSON_IsString(e) || !valid_shard_name(e->valuestring)) {
                qerr_set(err, QRUN_ERR_FORMAT,
                         "%s/model.safetensors.index.json: tensor %s: shard must be a plain file "
                         "name",
                         ck->dir, e->string ? e->string : "?");
                ok = false;
                break;
            }
            int s = add_shard(ck, e->valuestring, err);
            if (s < 0) {
                ok = false;
                break;
            }
            const st_tensor *t = st_find(ck->shards[s], e->string);
            if (!t) {
                qerr_set(err, QRUN_ERR_NOT_FOUND,
                         "%s: tensor %s is indexed in shard %s but the shard does not hold it",
                         ck->dir, e->string, e->valuestring);
                ok = false;
                break;
            }
            ck->entries[ck->count].t = t;
            ck->entries[ck->count].shard = s;
            ck->count++;
        }
    cJSON_Delete(idx);
    if (!ok)
        return false;
    qsort(ck->entries, (size_t)ck->count, sizeof(hf_entry), cmp_entry);
    for (int i = 1; i < ck->count; i++)
        if (strcmp(ck->entries[i - 1].t->name, ck->entries[i].t->name) == 0)
            return qerr_set(err, QRUN_ERR_FORMAT,
                            "%s/model.safetensors.index.json: tensor %s listed twice", ck->dir,
                            ck->entries[i].t->name) == QRUN_OK;
    return true;
}

static bool open_single(hf_checkpoint *ck, qerr *err)
{
    char *path = join_path(ck->dir, "model.safetensors");
    if (!path)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", ck->dir) == QRUN_OK;
    st_file *f = st_open(path, err);
    free(path);
    if (!f)
        return false;
    ck->shards = malloc(sizeof *ck->shards);
    if (!ck->shards) {
        st_close(f);
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", ck->dir) == QRUN_OK;
    }
    ck->shards[0] = f;
    ck->nshards = 1;
    int n = st_count(f);
    ck->entries = calloc(n > 0 ? (size_t)n : 1, sizeof(hf_entry));
    if (!ck->entries)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", ck->dir) == QRUN_OK;
    for (int i = 0; i < n; i++) /* st_at order is already sorted by name */
        ck->entries[ck->count++] = (hf_entry){st_at(f, i), 0};
    return true;
}

hf_checkpoint *hf_open(const char *dir, qerr *err)
{
    if (!dir) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "hf_open: NULL directory");
        return NULL;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        qerr_set(err, QRUN_ERR_NOT_FOUND, "%s: not a directory", dir);
        return NULL;
    }
    hf_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->dir = strdup(dir))) {
        free(ck);
        qerr_set(err, QRUN_ERR_NO_MEMORY, "%s: out of memory", dir);
        return NULL;
    }
    /* Keep a trailing slash out of the messages and joined paths. */
    size_t dl = strlen(ck->dir);
    while (dl > 1 && ck->dir[dl - 1] == '/')
        ck->dir[--dl] = '\0';

    bool ok = load_json(ck->dir, "config.json", HF_CONFIG_MAX, true, &ck->config, err) &&
              load_json(ck->dir, "tokenizer_config.json", HF_CONFIG_MAX * 4, false,
                        &ck->tok_config, err) &&
              load_json(ck->dir, "generation_config.json", HF_CONFIG_MAX, false, &ck->gen_config,
                        err);
    if (ok) {
        if (file_exists(ck->dir, "model.safetensors"))
            ok = open_single(ck, err);
        else if (file_exists(ck->dir, "model.safetensors.index.json"))
            ok = open_indexed(ck, err);
        else {
            const char *hint = "";
            if (file_exists(ck->dir, "pytorch_model.bin") ||
                file_exists(ck->dir, "pytorch_model.bin.index.json"))
                hint = " (pytorch_model.bin checkpoints are not supported: save the model with "
                       "safe_serialization=True)";
            qerr_set(err, QRUN_ERR_NOT_FOUND,
                     "%s: no model.safetensors or model.safetensors.index.json%s", ck->dir, hint);
            ok = false;
        }
    }
    if (!ok) {
        hf_close(ck);
        return NULL;
    }
    return ck;
}

const char *hf_dir(const hf_checkpoint *ck) { return ck ? ck->dir : NULL; }
const cJSON *hf_config(const hf_checkpoint *ck) { return ck ? ck->config : NULL; }
const cJSON *hf_tokenizer_config(const hf_checkpoint *ck) { return ck ? ck->tok_config : NULL; }
const cJSON *hf_generation_config(const hf_checkpoint *ck) { return ck ? ck->gen_config : NULL; }
int hf_tensor_count(const hf_checkpoint *ck) { return ck ? ck->count : 0; }

const st_tensor *hf_tensor_at(const hf_checkpoint *ck, int i)
{
    if (!ck || i < 0 || i >= ck->count)
        return NULL;
    return ck->entries[i].t;
}

static const hf_entry *find_entry(const hf_checkpoint *ck, const char *name)
{
    if (!ck || !name || ck->count == 0)
        return NULL;
    return bsearch(name, ck->entries, (size_t)ck->count, sizeof(hf_entry), cmp_key_entry);
}

const st_tensor *hf_find(const hf_checkpoint *ck, const char *name)
{
    const hf_entry *e = find_entry(ck, name);
    return e ? e->t : NULL;
}

bool hf_read_f32(hf_checkpoint *ck, const st_tensor *t, float *dst, qerr *err)
{
    if (!ck || !t)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "hf_read_f32: NULL argument") == QRUN_OK;
    const hf_entry *e = find_entry(ck, t->name);
    if (!e || e->t != t)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "%s: tensor %s is not in this checkpoint",
                        ck->dir, t->name) == QRUN_OK;
    return st_read_f32(ck->shards[e->shard], t, dst, err);
}

bool hf_read_f32_range(hf_checkpoint *ck, const st_tensor *t, uint64_t first, uint64_t count,
                       float *dst, qerr *err)
{
    if (!ck || !t)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "hf_read_f32_range: NULL argument") ==
               QRUN_OK;
    const hf_entry *e = find_entry(ck, t->name);
    if (!e || e->t != t)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "%s: tensor %s is not in this checkpoint",
                        ck->dir, t->name) == QRUN_OK;
    return st_read_f32_range(ck->shards[e->shard], t, first, count, dst, err);
}

/* tokenizer_config.json classes whose tokenizer is the SentencePiece model
 * (a "Fast" suffix is ignored: transformers can build those from it too). */
static bool is_spm_class(const char *cls)
{
    static const char *const spm[] = {"LlamaTokenizer", "CodeLlamaTokenizer", "MistralTokenizer",
                                      "GemmaTokenizer", "T5Tokenizer"};
    if (!cls)
        return false;
    size_t n = strlen(cls);
    if (n > 4 && strcmp(cls + n - 4, "Fast") == 0)
        n -= 4;
    for (size_t i = 0; i < sizeof spm / sizeof spm[0]; i++)
        if (strlen(spm[i]) == n && strncmp(cls, spm[i], n) == 0)
            return true;
    return false;
}

bool hf_read_tokenizer(const hf_checkpoint *ck, char kind[16], unsigned char **data,
                       uint64_t *size, qerr *err)
{
    if (!ck || !kind || !data || !size)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "hf_read_tokenizer: NULL argument") ==
               QRUN_OK;
    *data = NULL;
    *size = 0;
    bool has_model = file_exists(ck->dir, "tokenizer.model");
    bool has_json = file_exists(ck->dir, "tokenizer.json");
    if (!has_model && !has_json)
        return qerr_set(err, QRUN_ERR_NOT_FOUND, "%s: no tokenizer.model or tokenizer.json",
                        ck->dir) == QRUN_OK;
    bool use_model = has_model;
    if (has_model && has_json) {
        const cJSON *cls = ck->tok_config
                               ? cJSON_GetObjectItemCaseSensitive(ck->tok_config, "tokenizer_class")
                               : NULL;
        use_model = cJSON_IsString(cls) && is_spm_class(cls->valuestring);
    }
    const char *name = use_model ? "tokenizer.model" : "tokenizer.json";
    unsigned char *buf = read_bytes(ck->dir, name, HF_TOKENIZER_MAX, size, err);
    if (!buf)
        return false;
    if (*size == 0) {
        free(buf);
        return qerr_set(err, QRUN_ERR_FORMAT, "%s/%s: empty file", ck->dir, name) == QRUN_OK;
    }
    snprintf(kind, 16, "%s", use_model ? "sentencepiece" : "bpe");
    *data = buf;
    return true;
}
