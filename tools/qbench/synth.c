/* Writing a synthetic model (synth.h). The tensor list comes from the
 * family's plan; each planned tensor becomes what qconvert's write_tensor
 * would store for it (src/convert.c), with random contents in place of
 * quantized checkpoint values:
 *  - nf4/fp4 Linear: random code bytes; absmax uniform in [0.03, 0.07] (the
 *    block maxima of N(0, 0.02²) weights), or with double quantization
 *    random qabsmax codes, absmax2 in [0.01, 0.02], offset 0.05 and the real
 *    dynamic map, which keeps every reconstructed absmax positive;
 *  - int8 Linear: what row-wise quantization makes of N(0, 0.02²) weights:
 *    codes ~N(0, 29.5²) rounded and clipped to [-127, 127] (the row maximum
 *    of 4096 such values is about 4.3 standard deviations), SCB uniform in
 *    [0.08, 0.1] rounded to f16 values (SCB is the row maximum of an f16
 *    copy);
 *  - f16/bf16 Linear, embedding, lm_head, biases: ~N(0, 0.02²);
 *  - norm weights uniform in [0.9, 1.1] except every 512th channel (index
 *    7 mod 512), which is 10: the few systematic outlier features of real
 *    LLMs, so that LLM.int8 at threshold 6 meets a realistic handful of
 *    outlier columns (a random model would have none); norm biases
 *    ~N(0, 0.02²);
 * all in the dtype qconvert uses. Contents are a pure function of the seed,
 * the tensor's index and the element's index (a counter-based generator),
 * so the file does not depend on the thread count. */
#include "synth.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/threads.h"
#include "dtype.h"
#include "qbin.h"
#include "quant.h"
#include "registry.h"

#define CHUNK_BYTES ((uint64_t)64 << 20) /* generated, then written, per piece */
#define TASK_BYTES ((uint64_t)1 << 20)   /* one thread's share of a piece */

void synth_options_init(synth_options *o)
{
    memset(o, 0, sizeof *o);
    o->quant = QCONVERT_NF4;
    o->blocksize = 64;
    o->compute_dtype = -1;
    o->int8_threshold = 6.0f;
    o->seed = 1;
}

/* ---- random numbers: splitmix64 of a counter --------------------------------- */

#define GOLDEN 0x9e3779b97f4a7c15ull

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The 64 random bits number i of the stream `key`. */
static inline uint64_t rnd(uint64_t key, uint64_t i) { return mix64(key + (i + 1) * GOLDEN); }

/* ---- what to write ------------------------------------------------------------- */

typedef enum fill_kind {
    FILL_BYTES,   /* uniform bytes: 4-bit codes, qabsmax codes */
    FILL_INT8,    /* ~N(0, 29.5²) rounded, clipped to [-127, 127] */
    FILL_UNIFORM, /* uniform in [a, b] */
    FILL_NORMAL,  /* mean a, standard deviation b (sum of four uniforms) */
    FILL_DATA     /* the bytes at `data` */
} fill_kind;

typedef struct item {
    char name[QBIN_MAX_NAME + 1];
    qdtype dtype;
    int ndim;
    uint64_t shape[2];
    uint64_t nbytes;
    fill_kind fill;
    float a, b;
    bool f16_values;  /* FILL_UNIFORM f32 values rounded to f16 (SCB) */
    bool spikes;      /* FILL_UNIFORM: elements 7 mod 512 are 10 (outlier features) */
    bool zero_pad;    /* 4-bit codes of an odd count: the last low nibble is 0.0's code */
    uint8_t zero_code;
    const void *data; /* FILL_DATA */
    bool is_param;    /* counts as parameters (not a companion) */
} item;

typedef struct item_list {
    item *v;
    int n, cap;
} item_list;

static item *add_item(item_list *l, qerr *err, const char *base, const char *suffix, qdtype dt,
                      int ndim, uint64_t d0, uint64_t d1)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 256;
        item *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) {
            qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory listing tensors");
            return NULL;
        }
        l->v = v;
        l->cap = cap;
    }
    item *it = &l->v[l->n];
    memset(it, 0, sizeof *it);
    int len = snprintf(it->name, sizeof it->name, "%s%s", base, suffix);
    if (len < 0 || (size_t)len >= sizeof it->name) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED, "tensor name too long: %s%s", base, suffix);
        return NULL;
    }
    it->dtype = dt;
    it->ndim = ndim;
    it->shape[0] = d0;
    it->shape[1] = d1;
    uint64_t numel = ndim == 2 ? d0 * d1 : d0;
    if (!qdtype_nbytes(dt, numel, &it->nbytes)) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED, "%s%s: size overflows", base, suffix);
        return NULL;
    }
    l->n++;
    return it;
}

#define ADD(...)                                                                                   \
    do {                                                                                           \
        if (!(it = add_item(__VA_ARGS__)))                                                         \
            return false;                                                                          \
    } while (0)

/* The tensors qconvert writes for one planned Linear weight. */
static bool add_linear(item_list *l, const synth_options *o, const qmodel_tensor *pt, qerr *err)
{
    const uint64_t N = pt->shape[0], K = pt->shape[1], n = N * K;
    item *it;
    switch (o->quant) {
    case QCONVERT_NF4:
    case QCONVERT_FP4: {
        bool nf4 = o->quant == QCONVERT_NF4;
        ADD(l, err, pt->name, "", nf4 ? QDT_NF4 : QDT_FP4, 2, N, K);
        it->fill = FILL_BYTES;
        it->is_param = true;
        it->zero_pad = (n & 1) != 0;
        it->zero_code = nf4 ? quant_nf4_code(0.0f) : quant_fp4_code(0.0f);
        const uint64_t nb = quant_nblocks(n, o->blocksize);
        if (!o->double_quant) {
            ADD(l, err, pt->name, ".absmax", QDT_F32, 1, nb, 0);
            it->fill = FILL_UNIFORM, it->a = 0.03f, it->b = 0.07f;
            return true;
        }
        const uint64_t ng = (nb + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
        ADD(l, err, pt->name, ".qabsmax", QDT_U8, 1, nb, 0);
        it->fill = FILL_BYTES;
        ADD(l, err, pt->name, ".absmax2", QDT_F32, 1, ng, 0);
        it->fill = FILL_UNIFORM, it->a = 0.01f, it->b = 0.02f;
        /* |map| <= 1, so absmax = map·absmax2 + 0.05 stays in [0.03, 0.07] */
        ADD(l, err, pt->name, ".absmax_offset", QDT_F32, 1, 1, 0);
        it->fill = FILL_UNIFORM, it->a = 0.05f, it->b = 0.05f;
        return true;
    }
    case QCONVERT_INT8:
        ADD(l, err, pt->name, "", QDT_I8, 2, N, K);
        it->fill = FILL_INT8;
        it->is_param = true;
        ADD(l, err, pt->name, ".scb", QDT_F32, 1, N, 0);
        it->fill = FILL_UNIFORM, it->a = 0.08f, it->b = 0.1f, it->f16_values = true;
        return true;
    case QCONVERT_F16:
    case QCONVERT_BF16:
        ADD(l, err, pt->name, "", o->quant == QCONVERT_F16 ? QDT_F16 : QDT_BF16, 2, N, K);
        it->fill = FILL_NORMAL, it->a = 0.0f, it->b = 0.02f;
        it->is_param = true;
        return true;
    case QCONVERT_F32:
        break; /* refused by check_options */
    }
    qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "unknown quantization %d", (int)o->quant);
    return false;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The compute dtype as qconvert picks it (pick_compute_dtype). */
static qdtype compute_of(const synth_options *o)
{
    if (o->compute_dtype >= 0)
        return (qdtype)o->compute_dtype;
    if (o->quant == QCONVERT_F16)
        return QDT_F16;
    if (o->quant == QCONVERT_BF16)
        return QDT_BF16;
    return strcmp(o->shape->dtype, "bfloat16") == 0 ? QDT_BF16 : QDT_F16;
}

/* Everything that describes the file: hparams from the family's
 * read_config, the tensor list from its plan. */
typedef struct synth_model {
    const qmodel_family *fam;
    cJSON *hparams; /* owned until moved into the metadata */
    item_list items;
    char *tokenizer;
    size_t tokenizer_len;
    qdtype compute;
} synth_model;

static void model_free(synth_model *m)
{
    cJSON_Delete(m->hparams);
    free(m->items.v);
    free(m->tokenizer);
    memset(m, 0, sizeof *m);
}

static bool check_options(const synth_options *o, qerr *err)
{
    if (!o->shape)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "no shape given") == QRUN_OK;
    bool four = o->quant == QCONVERT_NF4 || o->quant == QCONVERT_FP4;
    if ((unsigned)o->quant > QCONVERT_BF16)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "quantization %s: synthetic models take nf4, fp4, int8, f16 or bf16",
                        qconvert_quant_name(o->quant)) == QRUN_OK;
    if (four && !quant_blocksize_valid(o->blocksize))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "blocksize %d: must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096",
                        o->blocksize) == QRUN_OK;
    if (o->double_quant && !four)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "double quantization applies to nf4 and fp4 only") == QRUN_OK;
    if (o->compute_dtype >= 0 && o->compute_dtype != QDT_F16 && o->compute_dtype != QDT_BF16)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "compute dtype must be f16 or bf16") ==
               QRUN_OK;
    if (!(o->int8_threshold >= 0.0f) || o->int8_threshold > 65504.0f)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "int8 threshold %g: must be between 0 and 65504", o->int8_threshold) ==
               QRUN_OK;
    return true;
}

static bool model_build(const synth_options *o, synth_model *m, qerr *err)
{
    memset(m, 0, sizeof *m);
    if (!check_options(o, err))
        return false;
    m->compute = compute_of(o);
    cJSON *config = synth_config(o->shape);
    if (!config)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory") == QRUN_OK;
    m->fam = qmodel_family_for_config(config, err);
    m->hparams = m->fam ? m->fam->read_config(config, err) : NULL;
    cJSON_Delete(config);
    if (!m->hparams) {
        qerr_prefix(err, "shape %s: ", o->shape->name);
        return false;
    }
    qmodel_plan plan = {0};
    bool ok = m->fam->plan(m->hparams, !o->shape->tie, &plan, err);
    for (int i = 0; ok && i < plan.count; i++) {
        const qmodel_tensor *pt = &plan.tensors[i];
        if (pt->role == QROLE_LINEAR) {
            ok = add_linear(&m->items, o, pt, err);
            continue;
        }
        item *it = add_item(&m->items, err, pt->name, "", m->compute, pt->ndim, pt->shape[0],
                            pt->shape[1]);
        if (!(ok = it != NULL))
            break;
        it->is_param = true;
        it->fill = FILL_NORMAL, it->a = 0.0f, it->b = 0.02f;
        if (pt->role == QROLE_NORM && ends_with(pt->name, ".weight"))
            it->fill = FILL_UNIFORM, it->a = 0.9f, it->b = 1.1f, it->spikes = true;
    }
    qmodel_plan_free(&plan);
    if (!ok)
        return false;
    item *it;
    if (o->double_quant) {
        ADD(&m->items, err, "quant.dynamic_map", "", QDT_F32, 1, 256, 0);
        it->fill = FILL_DATA;
        it->data = quant_dynamic_map;
    }
    m->tokenizer = synth_tokenizer_json(&m->tokenizer_len);
    if (!m->tokenizer)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory building the tokenizer") ==
               QRUN_OK;
    ADD(&m->items, err, "tokenizer.json", "", QDT_U8, 1, m->tokenizer_len, 0);
    it->fill = FILL_DATA;
    it->data = m->tokenizer;
    return true;
}

static uint64_t align256(uint64_t v) { return (v + 255u) / 256u * 256u; }

bool synth_file_size(const synth_options *o, uint64_t *bytes, qerr *err)
{
    synth_model m;
    if (!model_build(o, &m, err)) {
        model_free(&m);
        return false;
    }
    uint64_t total = 256 + 65536; /* header; metadata */
    for (int i = 0; i < m.items.n; i++)
        total += align256(m.items.v[i].nbytes) + 48 + strlen(m.items.v[i].name);
    model_free(&m);
    *bytes = total;
    return true;
}

/* ---- metadata (qconvert's keys, docs/qbin-format.md) ------------------------------ */

static cJSON *quant_meta(const synth_options *o)
{
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "weights", qconvert_quant_name(o->quant));
    cJSON_AddNumberToObject(q, "layout", 1);
    if (o->quant == QCONVERT_NF4 || o->quant == QCONVERT_FP4) {
        cJSON_AddNumberToObject(q, "blocksize", o->blocksize);
        cJSON_AddBoolToObject(q, "double_quant", o->double_quant);
        if (o->double_quant)
            cJSON_AddNumberToObject(q, "dq_blocksize", QUANT_DQ_BLOCKSIZE);
    }
    if (o->quant == QCONVERT_INT8)
        cJSON_AddNumberToObject(q, "int8_threshold", o->int8_threshold);
    return q;
}

/* Takes over m->hparams. */
static cJSON *metadata(const synth_options *o, synth_model *m)
{
    const synth_shape *s = o->shape;
    cJSON *meta = cJSON_CreateObject();
    cJSON_AddStringToObject(meta, "architecture", m->fam->name);
    cJSON_AddItemToObject(meta, "hparams", m->hparams);
    m->hparams = NULL;
    cJSON_AddItemToObject(meta, "quantization", quant_meta(o));
    cJSON_AddStringToObject(meta, "compute_dtype", qdtype_name(m->compute));
    cJSON *t = cJSON_AddObjectToObject(meta, "tokenizer");
    cJSON_AddStringToObject(t, "kind", "bpe");
    cJSON_AddStringToObject(t, "tensor", "tokenizer.json");
    cJSON_AddNumberToObject(t, "bos_token_id", s->bos);
    cJSON_AddNumberToObject(t, "eos_token_id", s->eos);
    cJSON *p = cJSON_AddObjectToObject(meta, "provenance");
    char src[128];
    snprintf(src, sizeof src, "qbench --shape %s (random weights, seed %llu)", s->name,
             (unsigned long long)o->seed);
    cJSON_AddStringToObject(p, "source", src);
    cJSON_AddStringToObject(p, "hf_architecture", s->architecture);
    cJSON_AddStringToObject(p, "source_dtype", s->dtype);
    cJSON_AddStringToObject(p, "converter", "qbench " QRUN_VERSION_STRING);
    return meta;
}

/* ---- generation ------------------------------------------------------------------ */

typedef struct fill_job {
    const item *it;
    uint64_t key;
    uint64_t first;   /* first unit of the piece (bytes, or elements of a float dtype) */
    uint64_t count;   /* units in the piece */
    uint64_t per_task;
    unsigned char *out;
} fill_job;

static void store_value(qdtype dt, float v, unsigned char *out)
{
    if (dt == QDT_F32) {
        memcpy(out, &v, 4);
    } else {
        uint16_t h = dt == QDT_F16 ? qf32_to_f16(v) : qf32_to_bf16(v);
        memcpy(out, &h, 2);
    }
}

/* About N(0, 1) from 64 random bits: Irwin-Hall of four 16-bit uniforms
 * (mean 2, variance 1/3), centred and scaled. */
static double irwin_hall(uint64_t x)
{
    double s = (double)(x & 0xffff) + (double)((x >> 16) & 0xffff) +
               (double)((x >> 32) & 0xffff) + (double)(x >> 48);
    return (s / 65536.0 - 2.0) * 1.7320508075688772;
}

static void fill_task(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    const fill_job *j = ctx;
    const item *it = j->it;
    uint64_t lo = (uint64_t)task * j->per_task;
    uint64_t hi = lo + j->per_task < j->count ? lo + j->per_task : j->count;
    if (it->fill == FILL_BYTES) {
        /* 8 bytes per random word; pieces and tasks start at multiples of 8 */
        for (uint64_t u = lo; u < hi; u += 8) {
            uint64_t x = rnd(j->key, (j->first + u) / 8);
            unsigned char b[8];
            memcpy(b, &x, 8);
            uint64_t n = hi - u < 8 ? hi - u : 8;
            for (uint64_t k = 0; k < n; k++)
                j->out[u + k] = b[k];
        }
        return;
    }
    if (it->fill == FILL_INT8) {
        for (uint64_t u = lo; u < hi; u++) {
            double z = irwin_hall(rnd(j->key, j->first + u)) * 29.5;
            z = z > 127.0 ? 127.0 : z < -127.0 ? -127.0 : z;
            j->out[u] = (unsigned char)(int8_t)lrint(z);
        }
        return;
    }
    const size_t es = it->dtype == QDT_F32 ? 4 : 2;
    for (uint64_t u = lo; u < hi; u++) {
        uint64_t x = rnd(j->key, j->first + u);
        float v;
        if (it->fill == FILL_UNIFORM) {
            v = it->a + (it->b - it->a) * (float)((double)(x >> 40) * (1.0 / 16777216.0));
            if (it->f16_values)
                v = qf16_to_f32(qf32_to_f16(v));
            if (it->spikes && (j->first + u) % 512 == 7)
                v = 10.0f;
        } else {
            v = it->a + it->b * (float)irwin_hall(x);
        }
        store_value(it->dtype, v, j->out + u * es);
    }
}

typedef struct write_state {
    const synth_options *o;
    qbin_writer *w;
    qthreads *pool;
    unsigned char *buf;
    uint64_t done, total;
} write_state;

static bool advance(write_state *ws, uint64_t bytes, qerr *err)
{
    ws->done += bytes;
    if (ws->o->progress && !ws->o->progress(ws->o->user, ws->done, ws->total))
        return qerr_set(err, QRUN_ERR_CANCELLED, "cancelled") == QRUN_OK;
    return true;
}

/* Generate item `index` piece by piece and hand it to the writer. */
static bool write_item(write_state *ws, const item *it, int index, qerr *err)
{
    qbin_writer *w = ws->w;
    unsigned char *buf = ws->buf;
    uint64_t shape[2] = {it->shape[0], it->shape[1]};
    if (it->fill == FILL_DATA)
        return qbin_writer_add(w, it->name, it->dtype, it->ndim, shape, it->data, it->nbytes,
                               err) &&
               advance(ws, it->nbytes, err);
    if (!qbin_writer_begin(w, it->name, it->dtype, it->ndim, shape, err))
        return false;
    const uint64_t unit = it->fill == FILL_BYTES || it->fill == FILL_INT8 ? 1
                          : it->dtype == QDT_F32                       ? 4
                                                                       : 2;
    const uint64_t units = it->nbytes / unit, chunk = CHUNK_BYTES / unit;
    fill_job j = {.it = it, .key = mix64(ws->o->seed ^ mix64((uint64_t)index + 1)),
                  .per_task = TASK_BYTES / unit, .out = buf};
    for (uint64_t first = 0; first < units; first += chunk) {
        j.first = first;
        j.count = units - first < chunk ? units - first : chunk;
        int tasks = (int)((j.count + j.per_task - 1) / j.per_task);
        qthreads_run(ws->pool, tasks, fill_task, &j);
        if (it->zero_pad && first + j.count == units) /* odd count: pad as quant.h says */
            buf[j.count - 1] = (unsigned char)((buf[j.count - 1] & 0xf0u) | it->zero_code);
        if (!qbin_writer_write(w, buf, j.count * unit, err) || !advance(ws, j.count * unit, err))
            return false;
    }
    return qbin_writer_end(w, err);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

bool synth_write(const synth_options *o, const char *path, synth_stats *st, qerr *err)
{
    double t0 = now();
    synth_stats local;
    if (!st)
        st = &local;
    memset(st, 0, sizeof *st);
    synth_model m;
    qthreads *pool = NULL;
    unsigned char *buf = NULL;
    qbin_writer *w = NULL;
    cJSON *meta = NULL;
    bool ok = false;
    if (!model_build(o, &m, err))
        goto out;
    pool = qthreads_create(o->n_threads, err);
    buf = malloc(CHUNK_BYTES);
    if (!pool || !buf) {
        if (pool)
            qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory for the generator's buffer");
        goto out;
    }
    w = qbin_writer_open(path, err);
    if (!w)
        goto out;
    write_state ws = {.o = o, .w = w, .pool = pool, .buf = buf};
    for (int i = 0; i < m.items.n; i++)
        ws.total += m.items.v[i].nbytes;
    for (int i = 0; i < m.items.n; i++) {
        const item *it = &m.items.v[i];
        if (!write_item(&ws, it, i, err)) {
            qerr_prefix(err, "%s: ", it->name);
            goto out;
        }
        if (it->is_param)
            st->params += it->ndim == 2 ? it->shape[0] * it->shape[1] : it->shape[0];
    }
    st->tensors = m.items.n;
    meta = metadata(o, &m);
    qbin_writer *finishing = w;
    w = NULL; /* finish frees the writer in every case */
    if (!qbin_writer_finish(finishing, meta, err))
        goto out;
    ok = true;
    st->compute_dtype = m.compute;
    for (int i = 0; i < m.items.n; i++)
        st->file_bytes += align256(m.items.v[i].nbytes);
out:
    if (w)
        qbin_writer_abort(w);
    cJSON_Delete(meta);
    model_free(&m);
    qthreads_free(pool);
    free(buf);
    st->seconds = now() - t0;
    return ok;
}

/* ---- the tokenizer ------------------------------------------------------------------ */

/* UTF-8 of code point cp (< 0x800 here) into out; returns the length. */
static int utf8(unsigned cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

char *synth_tokenizer_json(size_t *len)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    cJSON *eot = cJSON_CreateObject();
    cJSON_AddNumberToObject(eot, "id", 256);
    cJSON_AddStringToObject(eot, "content", "<|endoftext|>");
    cJSON_AddBoolToObject(eot, "single_word", false);
    cJSON_AddBoolToObject(eot, "lstrip", false);
    cJSON_AddBoolToObject(eot, "rstrip", false);
    cJSON_AddBoolToObject(eot, "normalized", false);
    cJSON_AddBoolToObject(eot, "special", true);
    cJSON_AddItemToArray(added, eot);
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", false);
    cJSON_AddBoolToObject(pre, "trim_offsets", true);
    cJSON_AddBoolToObject(pre, "use_regex", true);
    cJSON_AddNullToObject(root, "post_processor");
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON_AddStringToObject(dec, "type", "ByteLevel");
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddBoolToObject(model, "fuse_unk", false);
    cJSON_AddBoolToObject(model, "byte_fallback", false);
    cJSON_AddBoolToObject(model, "ignore_merges", false);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    /* the byte-level alphabet: printable bytes stand for themselves, the
     * other 68 for the code points 256, 257, ... in byte order */
    unsigned next = 256;
    for (unsigned b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        char key[4] = {0};
        utf8(printable ? b : next++, key);
        cJSON_AddNumberToObject(vocab, key, b);
    }
    cJSON_AddArrayToObject(model, "merges");
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (text && len)
        *len = strlen(text);
    return text;
}
