/* Hugging Face checkpoint -> .qbin, streamed slice by slice.
 *
 * Numerics follow what transformers + bitsandbytes do when a model is loaded
 * with load_in_4bit / load_in_8bit and dtype = the compute dtype:
 *  - every tensor is first rounded to the compute dtype (the model dtype);
 *  - nn.Linear weights are then quantized: nf4/fp4 over the flattened weight
 *    in blocks, or LLM.int8 row-wise after a further rounding to f16 (bnb's
 *    Int8Params always quantizes an f16 copy);
 *  - embeddings, lm_head, norms and biases stay in the compute dtype.
 */
#include "convert.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "dtype.h"
#include "import/hf_checkpoint.h"
#include "qbin.h"
#include "qrun_config.h"
#include "quant.h"
#include "registry.h"
#if QRUN_HAVE_CUDA
#include "cuda/device.h"
#include "cuda/quantize.h"
#endif

#define DEFAULT_CHUNK_BYTES (16u << 20)

static const char *const quant_names[] = {"nf4", "fp4", "int8", "f16", "bf16", "f32"};

int qconvert_quant_from_name(const char *name)
{
    for (int i = 0; name && i < 6; i++)
        if (strcmp(name, quant_names[i]) == 0)
            return i;
    return -1;
}

const char *qconvert_quant_name(qconvert_quant q)
{
    return (unsigned)q < 6 ? quant_names[q] : "?";
}

static const char *const device_names[] = {"cpu", "auto", "cuda"};

int qconvert_device_from_name(const char *name)
{
    for (int i = 0; name && i < 3; i++)
        if (strcmp(name, device_names[i]) == 0)
            return i;
    return -1;
}

const char *qconvert_device_name(qconvert_device d)
{
    return (unsigned)d < 3 ? device_names[d] : "?";
}

void qconvert_options_init(qconvert_options *o)
{
    memset(o, 0, sizeof *o);
    o->quant = QCONVERT_NF4;
    o->blocksize = 64;
    o->compute_dtype = -1;
    o->int8_threshold = 6.0f;
}

struct cuda_quantizer; /* src/cuda/quantize.h, in CUDA builds */

/* State shared by the per-tensor writers. */
typedef struct conv {
    const qconvert_options *o;
    hf_checkpoint *ck;
    qbin_writer *w;
    qdtype compute;
    uint64_t chunk_elems;     /* slice size in elements (multiple of 2*4096) */
    float *src;               /* chunk_elems f32 */
    unsigned char *dst;       /* chunk_elems * 2 bytes */
    struct cuda_quantizer *gq; /* the GPU quantizer, or NULL: quantize on the CPU */
    qconvert_progress prog;
    qerr *err;
} conv;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static bool report(conv *c, uint64_t src_bytes)
{
    c->prog.bytes_done += src_bytes;
    if (c->o->progress && !c->o->progress(c->o->user, &c->prog)) {
        qerr_set(c->err, QRUN_ERR_CANCELLED, "conversion cancelled");
        return false;
    }
    return true;
}

/* Round f32 values to `t` (f16/bf16) in place, keeping them as f32. */
static void round_to(qdtype t, float *x, uint64_t n)
{
    if (t == QDT_F16)
        for (uint64_t i = 0; i < n; i++)
            x[i] = qf16_to_f32(qf32_to_f16(x[i]));
    else if (t == QDT_BF16)
        for (uint64_t i = 0; i < n; i++)
            x[i] = qbf16_to_f32(qf32_to_bf16(x[i]));
}

/* Store f32 values as `t` (f16, bf16 or f32) little-endian. */
static void store_as(qdtype t, const float *x, uint64_t n, unsigned char *out)
{
    if (t == QDT_F32) {
        memcpy(out, x, n * 4);
        return;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint16_t h = t == QDT_F16 ? qf32_to_f16(x[i]) : qf32_to_bf16(x[i]);
        memcpy(out + 2 * i, &h, 2);
    }
}

static uint64_t numel_of(const qmodel_tensor *pt)
{
    uint64_t n = 1;
    for (int i = 0; i < pt->ndim; i++)
        n *= pt->shape[i];
    return n;
}

static bool read_slice(conv *c, const st_tensor *st, uint64_t first, uint64_t count)
{
    if (!hf_read_f32_range(c->ck, st, first, count, c->src, c->err))
        return false;
    return true;
}

static bool add_small(conv *c, const char *base, const char *suffix, qdtype dt, int ndim,
                      const uint64_t *shape, const void *data, uint64_t nbytes)
{
    char name[QBIN_MAX_NAME + 1];
    int len = snprintf(name, sizeof name, "%s%s", base, suffix);
    if (len < 0 || len > QBIN_MAX_NAME) {
        qerr_set(c->err, QRUN_ERR_UNSUPPORTED, "tensor name too long: %s%s", base, suffix);
        return false;
    }
    return qbin_writer_add(c->w, name, dt, ndim, shape, data, nbytes, c->err);
}

/* A tensor kept as 16-bit floats (compute dtype, or the f16/bf16 "quant"). */
static bool write_plain(conv *c, const qmodel_tensor *pt, const st_tensor *st, qdtype out)
{
    uint64_t n = numel_of(pt);
    if (!qbin_writer_begin(c->w, pt->name, out, pt->ndim, pt->shape, c->err))
        return false;
    uint64_t item = st->nbytes / (n ? n : 1);
    for (uint64_t first = 0; first < n; first += c->chunk_elems) {
        uint64_t cnt = n - first < c->chunk_elems ? n - first : c->chunk_elems;
        if (!read_slice(c, st, first, cnt))
            return false;
        round_to(c->compute, c->src, cnt); /* the model is loaded in the compute dtype */
        store_as(out, c->src, cnt, c->dst);
        if (!qbin_writer_write(c->w, c->dst, cnt * (out == QDT_F32 ? 4 : 2), c->err) ||
            !report(c, cnt * item))
            return false;
    }
    return qbin_writer_end(c->w, c->err);
}

/* ---- the quantizer: CPU (src/quant.c) or GPU (src/cuda/quantize.h) ---- */

/* nf4/fp4 codes of the slice c->src[0..cnt) into c->dst, absmax into `absmax`. */
static bool quantize_4bit_slice(conv *c, quant_4bit_type qt, uint64_t cnt, float *absmax)
{
#if QRUN_HAVE_CUDA
    if (c->gq)
        return cuda_quantizer_4bit(c->gq, qt, QDT_F32, c->src, cnt, c->o->blocksize, c->dst,
                                   absmax, c->err);
#endif
    quant_4bit_quantize(qt, c->src, cnt, c->o->blocksize, c->dst, absmax);
    return true;
}

/* Double quantization of a whole tensor's absmax. bitsandbytes' offset is
 * torch's CUDA mean, whose last bits depend on its summation order: the GPU
 * path reproduces that order, the CPU path keeps quant_dq_offset (an f64
 * sum), which the CPU reference files and fixtures are defined with. */
static bool double_quantize(conv *c, const float *absmax, uint64_t nb, float *offset,
                            uint8_t *qabsmax, float *absmax2)
{
#if QRUN_HAVE_CUDA
    if (c->gq) {
        *offset = cuda_quantizer_dq_offset(c->gq, absmax, nb);
        return cuda_quantizer_dq(c->gq, absmax, nb, *offset, qabsmax, absmax2, c->err);
    }
#else
    (void)c;
#endif
    *offset = quant_dq_offset(absmax, nb);
    quant_dq_quantize(absmax, nb, *offset, quant_dynamic_map, qabsmax, absmax2);
    return true;
}

/* LLM.int8 codes of rows x cols f16-valued floats. */
static bool quantize_int8_slice(conv *c, const float *w, uint64_t rows, uint64_t cols, int8_t *cb,
                                float *scb)
{
#if QRUN_HAVE_CUDA
    if (c->gq)
        return cuda_quantizer_int8_rows(c->gq, QDT_F32, w, rows, cols, cb, scb, c->err);
#else
    (void)c;
#endif
    quant_int8_quantize_rows(w, rows, cols, cb, scb);
    return true;
}

/* Resolve o->device: a GPU quantizer in c->gq for CUDA, none for the CPU.
 * auto takes the GPU only when this build has CUDA, the weights are
 * quantized and a device is usable (falling back to the CPU otherwise);
 * cuda fails with a message saying why when there is no usable GPU. */
static qrun_status open_quantizer(conv *c, qconvert_stats *stats, qerr *err)
{
    const qconvert_options *o = c->o;
    bool quantizes = o->quant == QCONVERT_NF4 || o->quant == QCONVERT_FP4 ||
                     o->quant == QCONVERT_INT8;
    stats->device = QCONVERT_DEVICE_CPU;
    snprintf(stats->device_name, sizeof stats->device_name, "cpu");
    if (o->device == QCONVERT_DEVICE_CPU)
        return QRUN_OK;
#if QRUN_HAVE_CUDA
    qerr probe;
    qerr_clear(&probe);
    bool have_gpu = cuda_device_count(&probe) > 0;
    if (o->device == QCONVERT_DEVICE_CUDA && !have_gpu)
        return qerr_set(err, QRUN_ERR_DEVICE, "--device cuda: %s", probe.msg);
    if (!have_gpu || !quantizes)
        return QRUN_OK; /* nothing to quantize: no need for a GPU context */
    c->gq = cuda_quantizer_create(c->chunk_elems, o->device == QCONVERT_DEVICE_CUDA ? err : &probe);
    if (!c->gq) {
        if (o->device == QCONVERT_DEVICE_AUTO)
            return QRUN_OK;
        qerr_prefix(err, "--device cuda: ");
        return err ? err->code : QRUN_ERR_DEVICE;
    }
    stats->device = QCONVERT_DEVICE_CUDA;
    snprintf(stats->device_name, sizeof stats->device_name, "%s",
             cuda_quantizer_device_name(c->gq));
    return QRUN_OK;
#else
    (void)quantizes;
    if (o->device == QCONVERT_DEVICE_CUDA)
        return qerr_set(err, QRUN_ERR_UNSUPPORTED,
                        "--device cuda: this qrun was built without CUDA support");
    return QRUN_OK;
#endif
}

/* Release the GPU quantizer; false (err set) if CUDA reports a failure. */
static bool close_quantizer(conv *c, qerr *err)
{
#if QRUN_HAVE_CUDA
    struct cuda_quantizer *gq = c->gq;
    c->gq = NULL;
    return cuda_quantizer_free(gq, err);
#else
    (void)c;
    (void)err;
    return true;
#endif
}

static bool write_4bit(conv *c, const qmodel_tensor *pt, const st_tensor *st)
{
    const qconvert_options *o = c->o;
    quant_4bit_type qt = o->quant == QCONVERT_NF4 ? QUANT_NF4 : QUANT_FP4;
    uint64_t n = numel_of(pt);
    uint64_t nb = quant_nblocks(n, o->blocksize);
    float *absmax = malloc((nb ? nb : 1) * sizeof *absmax);
    if (!absmax) {
        qerr_set(c->err, QRUN_ERR_NO_MEMORY, "%s: no memory for %llu absmax values", pt->name,
                 (unsigned long long)nb);
        return false;
    }
    bool ok = qbin_writer_begin(c->w, pt->name, o->quant == QCONVERT_NF4 ? QDT_NF4 : QDT_FP4,
                                pt->ndim, pt->shape, c->err);
    uint64_t item = st->nbytes / (n ? n : 1);
    /* chunk_elems is a multiple of every blocksize, so slices hold whole
     * blocks and whole bytes; only the last slice can end mid-block. */
    for (uint64_t first = 0; ok && first < n; first += c->chunk_elems) {
        uint64_t cnt = n - first < c->chunk_elems ? n - first : c->chunk_elems;
        ok = read_slice(c, st, first, cnt);
        if (!ok)
            break;
        round_to(c->compute, c->src, cnt);
        ok = quantize_4bit_slice(c, qt, cnt, absmax + first / o->blocksize);
        ok = ok && qbin_writer_write(c->w, c->dst, cnt / 2 + (cnt & 1), c->err) &&
             report(c, cnt * item);
    }
    ok = ok && qbin_writer_end(c->w, c->err);
    if (ok && !o->double_quant) {
        uint64_t shape[1] = {nb};
        ok = add_small(c, pt->name, ".absmax", QDT_F32, 1, shape, absmax, nb * 4);
    } else if (ok) {
        uint64_t ng = (nb + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
        uint8_t *q = malloc(nb ? nb : 1);
        float *a2 = malloc((ng ? ng : 1) * sizeof *a2);
        if (!q || !a2) {
            ok = false;
            qerr_set(c->err, QRUN_ERR_NO_MEMORY, "%s: no memory for double quantization", pt->name);
        } else {
            float offset;
            ok = double_quantize(c, absmax, nb, &offset, q, a2);
            uint64_t s_nb[1] = {nb}, s_ng[1] = {ng}, s_one[1] = {1};
            ok = ok && add_small(c, pt->name, ".qabsmax", QDT_U8, 1, s_nb, q, nb) &&
                 add_small(c, pt->name, ".absmax2", QDT_F32, 1, s_ng, a2, ng * 4) &&
                 add_small(c, pt->name, ".absmax_offset", QDT_F32, 1, s_one, &offset, 4);
        }
        free(q);
        free(a2);
    }
    free(absmax);
    return ok;
}

static bool write_int8(conv *c, const qmodel_tensor *pt, const st_tensor *st)
{
    if (pt->ndim != 2) {
        qerr_set(c->err, QRUN_ERR_INTERNAL, "%s: int8 needs a 2-D weight", pt->name);
        return false;
    }
    uint64_t rows = pt->shape[0], cols = pt->shape[1];
    float *scb = malloc((rows ? rows : 1) * sizeof *scb);
    if (!scb) {
        qerr_set(c->err, QRUN_ERR_NO_MEMORY, "%s: no memory for %llu row scales", pt->name,
                 (unsigned long long)rows);
        return false;
    }
    bool ok = qbin_writer_begin(c->w, pt->name, QDT_I8, 2, pt->shape, c->err);
    uint64_t item = st->nbytes / ((rows * cols) != 0 ? rows * cols : 1);
    uint64_t rows_per = cols ? c->chunk_elems / cols : rows;
    if (rows_per == 0) /* a row longer than a slice: the buffers grow for it */
        rows_per = 1;
    float *src = c->src;
    unsigned char *dst = c->dst;
    if (rows_per * cols > c->chunk_elems) {
        src = malloc(cols * sizeof *src);
        dst = malloc(cols);
        if (!src || !dst) {
            ok = false;
            qerr_set(c->err, QRUN_ERR_NO_MEMORY, "%s: no memory for a row of %llu", pt->name,
                     (unsigned long long)cols);
        }
    }
    for (uint64_t r = 0; ok && r < rows; r += rows_per) {
        uint64_t nr = rows - r < rows_per ? rows - r : rows_per;
        ok = hf_read_f32_range(c->ck, st, r * cols, nr * cols, src, c->err);
        if (!ok)
            break;
        round_to(c->compute, src, nr * cols); /* model dtype */
        round_to(QDT_F16, src, nr * cols);    /* Int8Params quantizes an f16 copy */
        ok = quantize_int8_slice(c, src, nr, cols, (int8_t *)dst, scb + r);
        ok = ok && qbin_writer_write(c->w, dst, nr * cols, c->err) && report(c, nr * cols * item);
    }
    if (src != c->src) {
        free(src);
        free(dst);
    }
    ok = ok && qbin_writer_end(c->w, c->err);
    uint64_t shape[1] = {rows};
    ok = ok && add_small(c, pt->name, ".scb", QDT_F32, 1, shape, scb, rows * 4);
    free(scb);
    return ok;
}

static bool write_tensor(conv *c, const qmodel_tensor *pt)
{
    const st_tensor *st = hf_find(c->ck, pt->name);
    if (!st) {
        qerr_set(c->err, QRUN_ERR_NOT_FOUND, "%s: checkpoint has no tensor %s",
                 hf_dir(c->ck), pt->name);
        return false;
    }
    if (pt->role == QROLE_LINEAR) {
        switch (c->o->quant) {
        case QCONVERT_NF4:
        case QCONVERT_FP4: return write_4bit(c, pt, st);
        case QCONVERT_INT8: return write_int8(c, pt, st);
        case QCONVERT_F16: return write_plain(c, pt, st, QDT_F16);
        case QCONVERT_BF16: return write_plain(c, pt, st, QDT_BF16);
        case QCONVERT_F32: return write_plain(c, pt, st, QDT_F32);
        }
    }
    return write_plain(c, pt, st, c->compute);
}

/* ---------------- metadata ---------------- */

static void copy_id(cJSON *dst, const char *key, const cJSON *a, const cJSON *b)
{
    const cJSON *v = a ? cJSON_GetObjectItemCaseSensitive(a, key) : NULL;
    if (!v || cJSON_IsNull(v))
        v = b ? cJSON_GetObjectItemCaseSensitive(b, key) : NULL;
    if (v && (cJSON_IsNumber(v) || cJSON_IsArray(v)))
        cJSON_AddItemToObject(dst, key, cJSON_Duplicate(v, 1));
}

/* Special-token text from tokenizer_config.json ("<s>" or {"content": "<s>"}). */
static void copy_token_text(cJSON *dst, const char *key, const cJSON *tc)
{
    const cJSON *v = tc ? cJSON_GetObjectItemCaseSensitive(tc, key) : NULL;
    if (v && cJSON_IsObject(v))
        v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (v && cJSON_IsString(v))
        cJSON_AddStringToObject(dst, key, v->valuestring);
}

static cJSON *tokenizer_meta(hf_checkpoint *ck, const char *kind, const char *tensor_name,
                             qerr *err)
{
    const cJSON *cfg = hf_config(ck), *gen = hf_generation_config(ck),
                *tc = hf_tokenizer_config(ck);
    cJSON *t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "kind", kind);
    cJSON_AddStringToObject(t, "tensor", tensor_name);
    copy_id(t, "bos_token_id", gen, cfg);
    copy_id(t, "eos_token_id", gen, cfg);
    copy_id(t, "pad_token_id", gen, cfg);
    copy_token_text(t, "bos_token", tc);
    copy_token_text(t, "eos_token", tc);
    copy_token_text(t, "unk_token", tc);
    copy_token_text(t, "pad_token", tc);
    const cJSON *add_bos = tc ? cJSON_GetObjectItemCaseSensitive(tc, "add_bos_token") : NULL;
    if (cJSON_IsBool(add_bos))
        cJSON_AddBoolToObject(t, "add_bos_token", cJSON_IsTrue(add_bos));
    const cJSON *ct = tc ? cJSON_GetObjectItemCaseSensitive(tc, "chat_template") : NULL;
    if (cJSON_IsString(ct)) {
        cJSON_AddStringToObject(t, "chat_template", ct->valuestring);
    } else {
        qerr e2;
        char *jinja = hf_read_text(hf_dir(ck), "chat_template.jinja", 1u << 20, &e2);
        if (jinja) {
            cJSON_AddStringToObject(t, "chat_template", jinja);
            free(jinja);
        }
    }
    (void)err;
    return t;
}

static int pick_compute_dtype(const qconvert_options *o, const cJSON *config)
{
    if (o->compute_dtype >= 0)
        return o->compute_dtype;
    if (o->quant == QCONVERT_F16)
        return QDT_F16;
    if (o->quant == QCONVERT_BF16)
        return QDT_BF16;
    if (o->quant == QCONVERT_F32)
        return QDT_F32;
    const char *d = qmodel_config_dtype(config);
    if (d && strcmp(d, "bfloat16") == 0)
        return QDT_BF16;
    return QDT_F16; /* float16, float32 or unspecified */
}

static cJSON *quant_meta(const qconvert_options *o)
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

static qrun_status check_options(const qconvert_options *o, qerr *err)
{
    if (!o->input_dir || !o->output_path)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "input directory and output path needed");
    if ((unsigned)o->quant > QCONVERT_F32)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "unknown quantization %d", (int)o->quant);
    if ((unsigned)o->device > QCONVERT_DEVICE_CUDA)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "unknown quantization device %d",
                        (int)o->device);
    bool four = o->quant == QCONVERT_NF4 || o->quant == QCONVERT_FP4;
    if (four && !quant_blocksize_valid(o->blocksize))
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "blocksize %d: must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096",
                        o->blocksize);
    if (o->double_quant && !four)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "double quantization applies to nf4 and fp4 only");
    if (o->compute_dtype >= 0 && o->compute_dtype != QDT_F16 && o->compute_dtype != QDT_BF16 &&
        o->compute_dtype != QDT_F32)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "compute dtype must be f16, bf16 or f32");
    if (!(o->int8_threshold >= 0.0f) || o->int8_threshold > 65504.0f)
        return qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                        "int8 threshold %g: must be between 0 and 65504", o->int8_threshold);
    return QRUN_OK;
}

/* A config.json that parses and names a known architecture; when the file
 * is missing or unreadable, hf_open reports that with its own message. */
static bool check_architecture(const char *dir, qerr *err)
{
    qerr e2;
    char *text = hf_read_text(dir, "config.json", 1u << 24, &e2);
    if (!text)
        return true;
    cJSON *config = cJSON_Parse(text);
    free(text);
    bool ok = !config || qmodel_family_for_config(config, err) != NULL;
    cJSON_Delete(config);
    if (!ok)
        qerr_prefix(err, "%s/", dir);
    return ok;
}

static uint64_t peak_rss(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (uint64_t)ru.ru_maxrss * 1024u; /* Linux reports KiB */
}

qrun_status qconvert_run(const qconvert_options *o, qconvert_stats *stats, qerr *err)
{
    qconvert_stats local;
    if (!stats)
        stats = &local;
    memset(stats, 0, sizeof *stats);
    qrun_status st = check_options(o, err);
    if (st != QRUN_OK)
        return st;
    double t0 = now_seconds();

    conv c = {.o = o, .err = err};
    qmodel_plan plan = {0};
    cJSON *meta = NULL;
    unsigned char *tok = NULL;
    bool ok = false;

    /* The architecture is checked before the weights are looked at, so an
     * unsupported model is named as such whatever else is wrong with it. */
    if (!check_architecture(o->input_dir, err))
        return err ? err->code : QRUN_ERR_UNSUPPORTED;
    c.ck = hf_open(o->input_dir, err);
    if (!c.ck)
        return err ? err->code : QRUN_ERR_IO;
    const cJSON *config = hf_config(c.ck);
    const qmodel_family *fam = qmodel_family_for_config(config, err);
    if (!fam)
        goto out;
    cJSON *hp = fam->read_config(config, err);
    if (!hp)
        goto out;
    meta = cJSON_CreateObject();
    cJSON_AddStringToObject(meta, "architecture", fam->name);
    cJSON_AddItemToObject(meta, "hparams", hp);
    if (!fam->plan(hp, hf_find(c.ck, "lm_head.weight") != NULL, &plan, err) ||
        !qmodel_check_checkpoint(&plan, c.ck, err))
        goto out;

    char tok_kind[16];
    uint64_t tok_size = 0;
    if (!hf_read_tokenizer(c.ck, tok_kind, &tok, &tok_size, err))
        goto out;
    const char *tok_tensor =
        strcmp(tok_kind, "sentencepiece") == 0 ? "tokenizer.model" : "tokenizer.json";

    c.compute = (qdtype)pick_compute_dtype(o, config);
    cJSON_AddItemToObject(meta, "quantization", quant_meta(o));
    cJSON_AddStringToObject(meta, "compute_dtype", qdtype_name(c.compute));
    cJSON *tm = tokenizer_meta(c.ck, tok_kind, tok_tensor, err);
    cJSON_AddItemToObject(meta, "tokenizer", tm);
    cJSON *prov = cJSON_CreateObject();
    cJSON_AddStringToObject(prov, "source", o->input_dir);
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(config, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    const char *hf_arch = cJSON_IsString(a0) ? a0->valuestring : "";
    cJSON_AddStringToObject(prov, "hf_architecture", hf_arch);
    const char *sdt = qmodel_config_dtype(config);
    cJSON_AddStringToObject(prov, "source_dtype", sdt ? sdt : "unknown");
    cJSON_AddStringToObject(prov, "converter", "qconvert " QRUN_VERSION_STRING);
    cJSON_AddItemToObject(meta, "provenance", prov);

    /* Working slices: a multiple of 2 * 4096 elements so that every slice
     * holds whole quantization blocks and whole bytes of packed codes. */
    uint64_t chunk_bytes = o->chunk_bytes ? o->chunk_bytes : DEFAULT_CHUNK_BYTES;
    c.chunk_elems = chunk_bytes / 4 / 8192 * 8192;
    if (c.chunk_elems == 0)
        c.chunk_elems = 8192;
    c.src = malloc(c.chunk_elems * sizeof *c.src);
    c.dst = malloc(c.chunk_elems * 4); /* f32 output at most */
    if (!c.src || !c.dst) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "no memory for %llu-element working buffers",
                 (unsigned long long)c.chunk_elems);
        goto out;
    }

    if (open_quantizer(&c, stats, err) != QRUN_OK)
        goto out;

    c.prog.count = plan.count;
    for (int i = 0; i < plan.count; i++) {
        const st_tensor *s = hf_find(c.ck, plan.tensors[i].name);
        c.prog.bytes_total += s ? s->nbytes : 0;
    }

    c.w = qbin_writer_open(o->output_path, err);
    if (!c.w)
        goto out;
    for (int i = 0; i < plan.count; i++) {
        const qmodel_tensor *pt = &plan.tensors[i];
        c.prog.index = i;
        c.prog.tensor = pt->name;
        if (!write_tensor(&c, pt)) {
            qerr_prefix(err, "%s: ", pt->name);
            goto out;
        }
        uint64_t n = numel_of(pt);
        stats->params += n;
        if (pt->role == QROLE_LINEAR && o->quant <= QCONVERT_INT8)
            stats->quantized_params += n;
    }
    /* Done with the GPU before the file is finished, so that a failure to
     * release it still leaves no output behind. */
    if (!close_quantizer(&c, err))
        goto out;
    if (o->double_quant) {
        uint64_t shape[1] = {256};
        if (!qbin_writer_add(c.w, "quant.dynamic_map", QDT_F32, 1, shape, quant_dynamic_map,
                             sizeof quant_dynamic_map, err))
            goto out;
    }
    uint64_t tshape[1] = {tok_size};
    if (!qbin_writer_add(c.w, tok_tensor, QDT_U8, 1, tshape, tok, tok_size, err))
        goto out;
    qbin_writer *w = c.w;
    c.w = NULL; /* finish frees the writer whatever happens */
    if (!qbin_writer_finish(w, meta, err))
        goto out;
    ok = true;

    struct stat sb;
    if (stat(o->output_path, &sb) == 0)
        stats->file_bytes = (uint64_t)sb.st_size;
    snprintf(stats->architecture, sizeof stats->architecture, "%s", fam->name);
    snprintf(stats->hf_architecture, sizeof stats->hf_architecture, "%s", hf_arch);
    stats->tensors = plan.count;
    stats->compute_dtype = c.compute;

out:
    if (c.gq) {
        qerr first_error_stays;
        close_quantizer(&c, &first_error_stays);
    }
    if (c.w)
        qbin_writer_abort(c.w);
    free(c.src);
    free(c.dst);
    free(tok);
    cJSON_Delete(meta);
    qmodel_plan_free(&plan);
    hf_close(c.ck);
    stats->seconds = now_seconds() - t0;
    stats->peak_rss_bytes = peak_rss();
    if (ok)
        return QRUN_OK;
    return err && err->code != QRUN_OK ? err->code : QRUN_ERR_INTERNAL;
}
