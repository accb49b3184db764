/* GPU placement for the engine (src/engine.c): which decoder layers fit on
 * the device next to a planned session, the upload of their tensors
 * (src/cuda/weights.h), and the check that a new session's GPU part fits.
 * Compiled only with CUDA. */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/device.h"
#include "cuda/weights.h"
#include "engine_priv.h"
#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/qk.h"
#include "kernels/sample.h"

static double mib(uint64_t b) { return (double)b / 1048576.0; }

static uint64_t align256(uint64_t v) { return (v + 255u) / 256u * 256u; }

static bool in_tensor(const qengine *e, const qbin_tensor *t, const void *p)
{
    const char *b = qbin_tensor_data(e->file, t);
    return p && (const char *)p >= b && (const char *)p < b + t->nbytes;
}

enum { CLASS_SKIP = -1, CLASS_SHARED = -2, CLASS_OUTPUT = -3 };

/* Where a tensor is needed: a layer index, CLASS_OUTPUT (final norm and
 * lm_head: on the GPU only with every layer), CLASS_SHARED (embedding,
 * dynamic map: with any GPU layer) or CLASS_SKIP (tokenizer bytes). A tied
 * lm_head is the embedding table, which counts as shared. */
static int tensor_class(const qengine *e, const qbin_tensor *t)
{
    if (e->tok_tensor && strcmp(t->name, e->tok_tensor) == 0)
        return CLASS_SKIP;
    if (!in_tensor(e, t, e->io.embed)) {
        const qbk_linear *h = &e->io.lm_head;
        const void *out[] = {e->io.final_norm.w, e->io.final_norm.b, h->w.data, h->w.absmax,
                             h->w.qabsmax, h->w.absmax2, h->w.scb, h->bias};
        for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
            if (in_tensor(e, t, out[i]))
                return CLASS_OUTPUT;
    }
    int l = qmodel_layer_of(t->name);
    return l >= 0 && l < e->sizes.n_layers ? l : CLASS_SHARED;
}

typedef struct gpu_pick {
    const qengine *e;
    int n_gpu;
} gpu_pick;

static bool pick_tensor(void *user, const qbin_tensor *t)
{
    const gpu_pick *u = user;
    int c = tensor_class(u->e, t);
    if (c == CLASS_SKIP)
        return false;
    if (c == CLASS_OUTPUT)
        return u->n_gpu == u->e->sizes.n_layers;
    return c == CLASS_SHARED || c < u->n_gpu;
}

/* The largest Linear's rows and columns among those on the GPU (the
 * matmul workspace is sized for them). */
void engine_gpu_linear_max(const qengine *e, bool output, uint64_t *rows, uint64_t *cols)
{
    const qmodel_sizes *s = &e->sizes;
    const uint64_t H = (uint64_t)s->hidden, Q = (uint64_t)s->n_heads * (uint64_t)s->head_dim,
                   F = (uint64_t)s->ffn;
    uint64_t r = H > Q ? H : Q, c = H > Q ? H : Q;
    if (F > r)
        r = F;
    if (F > c)
        c = F;
    if ((uint64_t)s->qkv_fused > r)
        r = (uint64_t)s->qkv_fused;
    if (output && (uint64_t)s->vocab > r)
        r = (uint64_t)s->vocab;
    *rows = r;
    *cols = c;
}

/* Device bytes of a session's GPU part. */
typedef struct gpu_mem {
    uint64_t kv, act, work;
} gpu_mem;

static gpu_mem session_mem(const qengine *e, int n_ctx, int n_batch, qdtype kv_type,
                           qdtype compute, int n_gpu)
{
    const qmodel_sizes *s = &e->sizes;
    const bool out = n_gpu == s->n_layers;
    const uint64_t H = (uint64_t)s->hidden, D = (uint64_t)s->head_dim,
                   Q = (uint64_t)s->n_heads * D, KV = (uint64_t)s->n_kv_heads * D,
                   F = (uint64_t)s->ffn, V = (uint64_t)s->vocab;
    const uint64_t lg = n_batch < 16 ? (uint64_t)n_batch : 16;
    gpu_mem m;
    m.kv = (uint64_t)n_gpu * 2u * KV * (uint64_t)n_ctx * (kv_type == QDT_F16 ? 2u : 4u);
    const uint64_t rows_w = (3 + (e->io.uses_xn2 ? 1 : 0)) * H + 2 * Q + 2 * KV +
                            (uint64_t)s->qkv_fused + (1 + (e->io.uses_ff_b ? 1 : 0)) * F;
    m.act = (uint64_t)n_batch * rows_w * 4u + (out ? lg * (H + V) * 4u : 0);
    uint64_t rows, cols;
    engine_gpu_linear_max(e, out, &rows, &cols);
    m.work = qk_matmul_workspace_size(n_batch, rows, cols, compute) +
             qk_attention_scratch_size(n_batch, s->n_heads, n_ctx, s->head_dim) +
             (1u << 20); /* step state, rotary/ALiBi tables, buffer rounding */
    if (out) /* sampling on the device: its scratch and the penalty window */
        m.work += qk_sample_scratch_size(s->vocab) + ((uint64_t)n_ctx + 1) * 4u;
    return m;
}

static bool upload_progress(void *user, float f)
{
    return qengine_progress(user, 0.9f + 0.1f * f);
}

bool engine_gpu_load(qengine *e, qerr *err)
{
    const qengine_opts *o = &e->opts;
    const bool forced = o->backend == QRUN_BACKEND_CUDA;
    if (o->backend == QRUN_BACKEND_CPU)
        return true;
    if (o->gpu_layers == 0) {
        if (forced)
            qengine_log(e, QRUN_LOG_INFO, "0 GPU layers requested: running on the CPU");
        return true;
    }
    qerr derr;
    qerr_clear(&derr);
    cuda_device_info dev;
    int nd = cuda_device_count(&derr);
    if (nd > 0 && cuda_device_query(0, &dev, &derr) != QRUN_OK)
        nd = 0;
    if (nd <= 0) {
        if (!forced) {
            qengine_log(e, QRUN_LOG_WARN, "no usable GPU (%s): running on the CPU", derr.msg);
            return true;
        }
        return qerr_set(err, QRUN_ERR_DEVICE, "the CUDA backend needs a GPU: %s", derr.msg) ==
               QRUN_OK;
    }
    snprintf(e->gpu_name, sizeof e->gpu_name, "%s", dev.name);

    /* bytes per layer, shared (embedding) and output (final norm, lm_head) */
    const int L = e->sizes.n_layers;
    uint64_t *cum = calloc((size_t)L + 1, sizeof *cum); /* cum[g]: layers [0, g) */
    if (!cum)
        return qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory") == QRUN_OK;
    uint64_t shared = 0, out = 0;
    size_t nt = qbin_tensor_count(e->file);
    for (size_t i = 0; i < nt; i++) {
        const qbin_tensor *t = qbin_tensor_at(e->file, i);
        int c = tensor_class(e, t);
        uint64_t b = align256(t->nbytes);
        if (c == CLASS_SHARED)
            shared += b;
        else if (c == CLASS_OUTPUT)
            out += b;
        else if (c >= 0)
            cum[c + 1] += b;
    }
    for (int l = 0; l < L; l++)
        cum[l + 1] += cum[l];

    /* what a session will need: KV for min(trained, 4096) positions, the
     * API's default batch, f16 KV, activations in the compute dtype */
    const int plan_ctx = e->n_ctx_train < 4096 ? e->n_ctx_train : 4096;
    const int plan_batch = plan_ctx < 512 ? plan_ctx : 512;
    const uint64_t margin = (256u << 20) + (uint64_t)dev.total_mem / 100u;
    uint64_t avail = dev.free_mem > margin ? dev.free_mem - margin : 0;
    if (o->gpu_mem_limit && o->gpu_mem_limit < avail)
        avail = o->gpu_mem_limit;
    int fit = 0;
    uint64_t need1 = 0; /* what one layer would need */
    for (int g = L; g >= 1; g--) {
        gpu_mem m = session_mem(e, plan_ctx, plan_batch, QDT_F16, e->model_dtype, g);
        uint64_t need = shared + cum[g] + (g == L ? out : 0) + m.kv + m.act + m.work;
        if (g == 1)
            need1 = need;
        if (need <= avail) {
            fit = g;
            break;
        }
    }
    int g;
    if (o->gpu_layers < 0) {
        g = fit;
        if (g == 0) {
            char why[512];
            snprintf(why, sizeof why,
                     "%s has %.0f MiB usable, one layer with a %d-position session needs %.1f MiB",
                     e->gpu_name, mib(avail), plan_ctx, mib(need1));
            free(cum);
            if (!forced) {
                qengine_log(e, QRUN_LOG_WARN, "no usable GPU (%s): running on the CPU", why);
                return true;
            }
            return qerr_set(err, QRUN_ERR_DEVICE, "not even one layer fits on the GPU: %s; try "
                            "--backend cpu", why) == QRUN_OK;
        }
    } else {
        g = o->gpu_layers < L ? o->gpu_layers : L;
        uint64_t need = shared + cum[g] + (g == L ? out : 0);
        if (need > avail) {
            char hint[64];
            if (fit > 0)
                snprintf(hint, sizeof hint, "try --gpu-layers %d", fit);
            else
                snprintf(hint, sizeof hint, "try --backend cpu");
            qerr_set(err, QRUN_ERR_DEVICE,
                     "need %.1f MiB for the weights of %d GPU layers, %.1f MiB usable on %s "
                     "(%.1f MiB free); %s",
                     mib(need), g, mib(avail), e->gpu_name, mib(dev.free_mem), hint);
            free(cum);
            return false;
        }
    }
    free(cum);
    gpu_pick pick = {e, g};
    e->dev = cuda_weights_upload(e->file, 0, pick_tensor, &pick, upload_progress, e, err);
    if (!e->dev) {
        if (err && err->code == QRUN_ERR_DEVICE)
            qerr_prefix(err, "uploading %d layers: ", g);
        return false;
    }
    e->n_gpu = g;
    e->backend_name = g == L ? "cuda" : "cuda+cpu";
    qengine_log(e, QRUN_LOG_INFO,
                "GPU %s (compute %d.%d): %d of %d layers%s, %.1f MiB of weights on the device "
                "(%.0f MiB were free)",
                e->gpu_name, dev.cc_major, dev.cc_minor, g, L,
                g == L ? " and the output" : " (the rest on the CPU)",
                mib(cuda_weights_bytes(e->dev)), mib(dev.free_mem));
    return true;
}

/* The device memory a GPU part will take must be free before anything is
 * allocated, so the error can say what and how much. */
bool engine_gpu_session_fits(const qengine *e, int n_ctx, int n_batch, qdtype kv_type,
                             qdtype act, qerr *err)
{
    gpu_mem m = session_mem(e, n_ctx, n_batch, kv_type, act, e->n_gpu);
    size_t fr = 0, tot = 0;
    if (!qk_ok(cudaSetDevice(cuda_weights_device(e->dev)), "session: cudaSetDevice", err) ||
        !qk_ok(cudaMemGetInfo(&fr, &tot), "session: cudaMemGetInfo", err))
        return false;
    uint64_t need = m.kv + m.act + m.work;
    if (need > (uint64_t)fr)
        return qerr_set(err, QRUN_ERR_DEVICE,
                        "context: the session needs %.1f MiB on %s (KV cache %.1f MiB for %d "
                        "positions x %d layers, activations %.1f MiB, workspace %.1f MiB) but "
                        "%.1f MiB are free; use a smaller context or fewer GPU layers",
                        mib(need), e->gpu_name, mib(m.kv), n_ctx, e->n_gpu, mib(m.act),
                        mib(m.work), mib((uint64_t)fr)) == QRUN_OK;
    qengine_log(e, QRUN_LOG_INFO,
                "session on %s: KV cache %.1f MiB (%d positions x %d layers, %s), activations "
                "%.1f MiB, workspace %.1f MiB",
                e->gpu_name, mib(m.kv), n_ctx, e->n_gpu, qdtype_name(kv_type), mib(m.act),
                mib(m.work));
    return true;
}
