/* Upload of the GPU part's tensors into one device allocation, and the
 * host-range -> device-address table the CUDA backend translates through.
 *
 * Copies go mapped file -> pinned staging buffer (a plain memcpy, which is
 * also where the pages are read from disk) -> device (cudaMemcpyAsync on a
 * private stream). Two staging buffers alternate: while the DMA engine
 * drains one, the CPU fills the other; an event per buffer says when it may
 * be refilled. Pinned memory is needed for the copy to be asynchronous at
 * all; pageable sources would make every cudaMemcpyAsync a blocking copy
 * through the driver's own bounce buffer. */
#include "cuda/weights.h"

#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/qk.h"

#define STAGING_BYTES (64u << 20) /* each of the two staging buffers, at most */

typedef struct range {
    const char *host; /* start of the tensor in the mapping */
    uint64_t nbytes;
    uint64_t dev_off; /* offset in the device allocation */
} range;

struct cuda_weights {
    int device;
    char *base; /* device allocation */
    uint64_t bytes;
    range *r;   /* sorted by host address */
    size_t n;
};

static uint64_t align_up(uint64_t v)
{
    return (v + CUDA_WEIGHTS_ALIGN - 1) / CUDA_WEIGHTS_ALIGN * CUDA_WEIGHTS_ALIGN;
}

uint64_t cuda_weights_size(const qbin_file *f, cuda_weights_pick pick, void *user)
{
    uint64_t total = 0;
    size_t nt = qbin_tensor_count(f);
    for (size_t i = 0; i < nt; i++) {
        const qbin_tensor *t = qbin_tensor_at(f, i);
        if (t->nbytes > 0 && pick(user, t))
            total += align_up(t->nbytes);
    }
    return total;
}

static int by_host(const void *a, const void *b)
{
    const range *x = a, *y = b;
    return x->host < y->host ? -1 : x->host > y->host;
}

static double mib(uint64_t b) { return (double)b / (1024.0 * 1024.0); }

void cuda_weights_free(cuda_weights *w)
{
    if (!w)
        return;
    if (w->base)
        cudaFree(w->base); /* freeing at teardown: an error here has no remedy */
    free(w->r);
    free(w);
}

/* Stream the table's tensors to the device. */
static bool copy_all(cuda_weights *w, cuda_weights_progress progress, void *progress_user,
                     qerr *err)
{
    uint64_t largest = 0;
    for (size_t i = 0; i < w->n; i++)
        if (w->r[i].nbytes > largest)
            largest = w->r[i].nbytes;
    size_t stage = largest < STAGING_BYTES ? (size_t)largest : STAGING_BYTES;
    if (stage == 0)
        return true;
    cudaStream_t st = NULL;
    cudaEvent_t ev[2] = {NULL, NULL};
    void *pin[2] = {NULL, NULL};
    bool ok = qk_ok(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "weights: stream", err);
    for (int b = 0; ok && b < 2; b++)
        ok = qk_ok(cudaEventCreateWithFlags(&ev[b], cudaEventDisableTiming), "weights: event",
                   err) &&
             qk_ok(cudaHostAlloc(&pin[b], stage, cudaHostAllocDefault),
                   "weights: pinned staging buffer", err);
    uint64_t done = 0;
    int b = 0;
    for (size_t i = 0; ok && i < w->n; i++) {
        const range *r = &w->r[i];
        for (uint64_t off = 0; ok && off < r->nbytes; off += stage) {
            size_t len = r->nbytes - off < stage ? (size_t)(r->nbytes - off) : stage;
            /* the copy that last used this buffer must have finished */
            ok = qk_ok(cudaEventSynchronize(ev[b]), "weights: copy to the device", err);
            if (!ok)
                break;
            memcpy(pin[b], r->host + off, len);
            ok = qk_ok(cudaMemcpyAsync(w->base + r->dev_off + off, pin[b], len,
                                       cudaMemcpyHostToDevice, st),
                       "weights: copy to the device", err) &&
                 qk_ok(cudaEventRecord(ev[b], st), "weights: event", err);
            b ^= 1;
            done += len;
        }
        if (ok && progress && !progress(progress_user, (float)((double)done / (double)w->bytes))) {
            qerr_set(err, QRUN_ERR_CANCELLED, "loading cancelled");
            ok = false;
        }
    }
    if (st) {
        /* drain what is in flight before the staging buffers go away */
        cudaError_t e = cudaStreamSynchronize(st);
        if (ok)
            ok = qk_ok(e, "weights: copy to the device", err);
        cudaStreamDestroy(st);
    }
    for (int k = 0; k < 2; k++) {
        if (pin[k])
            cudaFreeHost(pin[k]);
        if (ev[k])
            cudaEventDestroy(ev[k]);
    }
    return ok;
}

cuda_weights *cuda_weights_upload(const qbin_file *f, int device, cuda_weights_pick pick,
                                  void *user, cuda_weights_progress progress, void *progress_user,
                                  qerr *err)
{
    cuda_weights *w = calloc(1, sizeof *w);
    size_t nt = qbin_tensor_count(f);
    if (!w || !(w->r = calloc(nt ? nt : 1, sizeof *w->r))) {
        free(w);
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    w->device = device;
    for (size_t i = 0; i < nt; i++) {
        const qbin_tensor *t = qbin_tensor_at(f, i);
        if (t->nbytes == 0 || !pick(user, t))
            continue;
        range *r = &w->r[w->n++];
        r->host = qbin_tensor_data(f, t);
        r->nbytes = t->nbytes;
    }
    qsort(w->r, w->n, sizeof *w->r, by_host);
    for (size_t i = 0; i < w->n; i++) {
        w->r[i].dev_off = w->bytes;
        w->bytes += align_up(w->r[i].nbytes);
    }
    if (!qk_ok(cudaSetDevice(device), "weights: cudaSetDevice", err))
        goto fail;
    if (w->bytes > 0) {
        cudaError_t e = cudaMalloc((void **)&w->base, (size_t)w->bytes);
        if (e != cudaSuccess) {
            (void)cudaGetLastError(); /* an allocation failure is not sticky */
            w->base = NULL;
            size_t fr = 0, tot = 0;
            if (cudaMemGetInfo(&fr, &tot) != cudaSuccess)
                (void)cudaGetLastError();
            qerr_set(err, QRUN_ERR_DEVICE,
                     "cudaMalloc of %.1f MiB for the weights failed (%s): %.1f MiB of %.1f MiB "
                     "free on device %d",
                     mib(w->bytes), cudaGetErrorString(e), mib(fr), mib(tot), device);
            goto fail;
        }
    }
    if (!copy_all(w, progress, progress_user, err))
        goto fail;
    return w;
fail:
    cuda_weights_free(w);
    return NULL;
}

const void *cuda_weights_device_ptr(const cuda_weights *w, const void *host)
{
    if (!w || !host || w->n == 0)
        return NULL;
    const char *p = host;
    /* the last range starting at or before p */
    size_t lo = 0, hi = w->n;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (w->r[mid].host <= p)
            lo = mid;
        else
            hi = mid;
    }
    const range *r = &w->r[lo];
    if (p < r->host || (uint64_t)(p - r->host) >= r->nbytes)
        return NULL;
    return w->base + r->dev_off + (uint64_t)(p - r->host);
}

int cuda_weights_device(const cuda_weights *w) { return w->device; }
uint64_t cuda_weights_bytes(const cuda_weights *w) { return w->bytes; }
size_t cuda_weights_count(const cuda_weights *w) { return w->n; }
