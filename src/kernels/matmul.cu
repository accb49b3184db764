/* qk_matmul: the entry points of matmul.h. Chooses the path from the shape
 * and m alone (so a captured graph replays the same launches):
 *  - int8: quantize the activations, then the dp4a GEMV (m <= 8) or, per
 *    chunk of weight rows, the exact int32 product (cuBLASLt int8 GEMM where
 *    cols % 4 == 0 and it has an algorithm, else a dp4a tiled kernel) and
 *    the output assembly;
 *  - m <= QK_GEMV_MAX_M: the fused dequantize-GEMV;
 *  - else: x converted to T (exact: the engine's activations are already
 *    T values), the weight dequantized to T in tiles of at most
 *    MM_TILE_BYTES (tile_plan; f32/f16/bf16 weights stored in T are used
 *    in place), a cuBLASLt GEMM per tile with f32 accumulation (no TF32;
 *    column tiles add to y; cuda/blas_lt.h), then bias + round_to in one
 *    small kernel. The tiles are written on a side stream into MM_SLOTS
 *    slots taken in turn, so that writing one overlaps the work before it
 *    (tiled_gemm).
 *
 * Workspace layout (offsets from plan_for, 256-byte aligned; the GEMMs
 * themselves take none):
 *   [x in T, or the int8 activations | int8 row scales,
 *    outlier flags, outlier list and count | chunk: the int32 products of a
 *    row chunk, or at the workspace's end the tile slots]. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/blas_lt.h"
#include "kernels/matmul_parts.cuh"
#include "quant.h"

/* Upper bound of one chunk of int32 products (int8 prefill). */
#define MM_CHUNK_BYTES ((size_t)64 << 20)
/* Prefill tiles of dequantized weight: at most MM_TILE_BYTES, at most
 * MM_TILE_ROWS rows, in MM_SLOTS slots. Smaller tiles split more weights
 * along K, each split adding a GEMM and a pass over y: 16-48 MiB measured
 * slower than 64 on an H100 even where a tile would stay in its L2; 5120
 * rows slower than 8192. One slot: a second one, so that a tile is written
 * while the GEMM of the one before runs, made 7B prefill 1-2% faster on an
 * H100 for 64 MiB more device memory, and a third under 1% more
 * (docs/perf.md); with one slot the dequantization still overlaps the
 * attention and norms before each product. */
#define MM_TILE_BYTES ((size_t)64 << 20)
#define MM_TILE_ROWS 8192
#define MM_SLOTS 1
/* Shapes past this many elements in one buffer are refused (no overflow). */
#define MM_MAX_ELEMS ((uint64_t)1 << 46)

/* A prefill tile slot: the workspace bytes its last tile took, and the
 * events of that tile. */
struct mm_slot {
    size_t lo, hi;
    cudaEvent_t read; /* recorded after the GEMM that read the slot */
    cudaEvent_t ready; /* recorded on the side stream after it was written */
};

struct qk_blas {
    blas_lt *lt;
    cudaStream_t stream;
    unsigned char *ws;
    size_t ws_bytes;
    size_t tile_bytes; /* dequantization tile budget (prefill) */
    /* Prefill dequantizes tiles on `side` into MM_SLOTS slots at the end
     * of the workspace, taken in turn, while `stream` multiplies: a tile
     * waits only for the readers of the bytes it overwrites, so, since the
     * host enqueues ahead of the device, it is often written while the
     * attention and norms before its own product run (and, with several
     * slots, while the GEMM of the tile before runs). */
    cudaStream_t side;
    mm_slot slot[MM_SLOTS];
    int next;        /* the slot of the next tile */
    bool after_all;  /* tiles wait for all earlier main-stream work (main_wrote) */
    cudaEvent_t now; /* the main stream's position, for after_all */
    size_t front_hi; /* the highest end of any call's regions before its chunk */
    int i8_slots[QK_GEMV_MAX_M][MM_I8_SHAPES]; /* mm_i8_plan, or a forced shape's table */
    int i8_plan[QK_GEMV_MAX_M][MM_I8_SHAPES];  /* mm_i8_plan */
};

namespace {

struct mm_plan {
    size_t act, sca, flags, ocols, nout, chunk, total;
};

size_t align256(size_t v) { return (v + 255) & ~(size_t)255; }
uint64_t umax(uint64_t a, uint64_t b) { return a > b ? a : b; }
uint64_t umin(uint64_t a, uint64_t b) { return a < b ? a : b; }
size_t elt_size(qdtype T) { return T == QDT_F32 ? 4 : 2; }

/* A tile of dequantized weight: nc rows x kc cols. */
struct mm_tile {
    uint64_t nc, kc;
};

/* The dequantization tiles of an N x K weight within `budget` bytes: the
 * whole weight when it fits, else N split evenly into parts of at most
 * MM_TILE_ROWS rows and, where such a part of full rows does not fit, K
 * split evenly into parts that do. Both are multiples of 64 (but the last
 * part) so that the tiles' corners in x and y stay 16-byte aligned: cuBLAS
 * runs misaligned operands several times slower (docs/perf.md). */
mm_tile tile_plan(uint64_t N, uint64_t K, qdtype T, size_t budget)
{
    const uint64_t cap = umax(1, budget / elt_size(T)); /* elements */
    if (N * K <= cap)
        return {N, K};
    const uint64_t rows = MM_TILE_ROWS;
    uint64_t parts = (N + rows - 1) / rows;
    uint64_t nc = umin(N, ((N + parts - 1) / parts + 63) & ~(uint64_t)63);
    if (nc * K <= cap)
        return {nc, K};
    uint64_t kmax = (cap / nc) & ~(uint64_t)63;
    if (kmax == 0) { /* a budget under 64 rows of 64: narrower tiles */
        nc = umax(1, umin(nc, cap / 64));
        return {nc, umax(1, umin(K, cap / nc))};
    }
    parts = (K + kmax - 1) / kmax;
    return {nc, ((K + parts - 1) / parts + 63) & ~(uint64_t)63};
}

/* Rows of an int32 product chunk for m activation rows. */
uint64_t i8_chunk_rows(uint64_t N, uint64_t m)
{
    return umax(1, umin(N, MM_CHUNK_BYTES / 4 / m));
}

/* The layout for m rows with an N x K weight. Every region size is a
 * nondecreasing function of (m, N, K), so the plan of the workspace's
 * maxima covers every smaller call; the chunk region holds MM_SLOTS tiles
 * of at most min(N·K, TILE/e) values (tile_plan), or int32 products of rows
 * rounded up to 4 (ldc) times m <= max(m, min(N·m, CHUNK/4)) + 3m. */
bool plan_for(uint64_t m, uint64_t N, uint64_t K, qdtype T, mm_plan *p)
{
    if (m == 0 || N == 0 || K == 0 || m > MM_MAX_ELEMS / K || N > MM_MAX_ELEMS / K ||
        N > MM_MAX_ELEMS / m)
        return false;
    const uint64_t e = elt_size(T);
    uint64_t act = m * K * e;
    uint64_t dq = umin(N * K, umax(1, MM_TILE_BYTES / e)) * e;
    uint64_t i8 = (umax(m, umin(N * m, MM_CHUNK_BYTES / 4)) + 3 * m) * 4;
    size_t off = 0;
    p->act = off;
    off += align256(act);
    p->sca = off;
    off += align256(m * sizeof(float));
    p->flags = off;
    off += align256(K * sizeof(unsigned));
    p->ocols = off;
    off += align256(K * sizeof(unsigned));
    p->nout = off;
    off += align256(sizeof(unsigned));
    p->chunk = off;
    off += align256(umax(MM_SLOTS * align256(dq), i8));
    p->total = off;
    return true;
}

bool float_type(qdtype t) { return t == QDT_F32 || t == QDT_F16 || t == QDT_BF16; }

bool check_args(const qk_blas *b, const qweight *w, const float *x, int m, qdtype compute,
                qdtype bias_dt, const void *bias, qdtype round_to, const float *y, qerr *err)
{
    if (!b || !w || !w->data || !x || !y || m < 1 || w->rows == 0 || w->cols == 0 ||
        w->rows > INT32_MAX || w->cols > INT32_MAX) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: missing operand or bad shape");
        return false;
    }
    if (!float_type(compute) || !float_type(round_to) || (bias && !float_type(bias_dt))) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                 "matmul: compute, bias and output dtypes must be f32, f16 or bf16");
        return false;
    }
    return qweight_check(w, err);
}

mm_weight make_weight(const qweight *w)
{
    mm_weight mw;
    memset(&mw, 0, sizeof mw);
    mw.dtype = w->dtype;
    mw.N = w->rows;
    mw.K = w->cols;
    mw.data = w->data;
    if (qdtype_is_4bit(w->dtype)) {
        while ((1 << mw.bs_shift) < w->blocksize)
            mw.bs_shift++;
        mw.absmax = w->absmax;
        mw.qabsmax = w->qabsmax;
        mw.absmax2 = w->absmax2;
        mw.dq_map = w->dq_map;
        mw.absmax_offset = w->absmax_offset;
        memcpy(mw.lut, w->dtype == QDT_NF4 ? quant_nf4_lut : quant_fp4_lut, sizeof mw.lut);
    }
    mw.scb = w->scb;
    mw.threshold = w->int8_threshold;
    return mw;
}

cudaDataType blas_type(qdtype T)
{
    return T == QDT_F16 ? CUDA_R_16F : T == QDT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

/* y[:, n0 .. n0+nc) (+)= x_T[:, k0 .. k0+kc) · Aᵀ, A = nc rows of kc values
 * in T (xT points at column k0 of x, rows ldx apart); accumulate: add to y's
 * f32 sums of the earlier column tiles. */
bool gemm_tile(qk_blas *b, const void *A, const void *xT, qdtype T, uint64_t nc, int m,
               uint64_t kc, uint64_t ldx, bool accumulate, float *y, uint64_t N, qerr *err)
{
    bool declined;
    if (!blas_lt_gemm(b->lt, blas_type(T), A, kc, xT, ldx, y, N, nc, (uint64_t)m, kc, accumulate,
                      b->stream, &declined, err))
        return false;
    if (declined)
        qerr_set(err, QRUN_ERR_DEVICE, "matmul: cuBLASLt has no algorithm for %llu x %d x %llu",
                 (unsigned long long)nc, m, (unsigned long long)kc);
    return !declined;
}

bool capturing(const qk_blas *b, bool *yes, qerr *err)
{
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (!qk_ok(cudaStreamIsCapturing(b->stream, &cs), "matmul: cudaStreamIsCapturing", err))
        return false;
    *yes = cs != cudaStreamCaptureStatusNone;
    return true;
}

/* The tiles of a weight in order: row-major over (row part, column part). */
struct tile_iter {
    mm_tile t;
    uint64_t N, K, parts_k, count;
    void at(uint64_t i, uint64_t *n0, uint64_t *nc, uint64_t *k0, uint64_t *kc) const
    {
        *n0 = i / parts_k * t.nc, *k0 = i % parts_k * t.kc;
        *nc = umin(t.nc, N - *n0), *kc = umin(t.kc, K - *k0);
    }
};

tile_iter tiles_of(const qk_blas *b, uint64_t N, uint64_t K, qdtype T)
{
    tile_iter it;
    it.t = tile_plan(N, K, T, b->tile_bytes);
    it.N = N, it.K = K, it.parts_k = (K + it.t.kc - 1) / it.t.kc;
    it.count = (N + it.t.nc - 1) / it.t.nc * it.parts_k;
    return it;
}

/* Where the tile slots end: the workspace's end rounded down to 256 bytes
 * (plan totals are multiples of 256, so a plan that fits still does). */
size_t slots_end(const qk_blas *b) { return b->ws_bytes & ~(size_t)255; }

/* Enqueue tile i of `it` on the side stream into the next slot (slot
 * size `sz` from the end of the workspace), after the readers of every slot
 * whose last bytes it overlaps; *j: the slot. */
bool side_dequant(qk_blas *b, const mm_weight &mw, qdtype T, const tile_iter &it, uint64_t i,
                  size_t sz, int *j, qerr *err)
{
    const int ns = MM_SLOTS, s = b->next;
    b->next = (s + 1) % ns;
    const size_t lo = slots_end(b) - (size_t)(ns - s) * sz, hi = lo + sz;
    /* The slots are taken in turn, so after the last reader of this slot
     * only the other slots' last tiles were read: wait for those too where
     * their bytes overlap (a different tile size), or where these bytes
     * reach below the end of some call's x / int8 regions (a tight
     * workspace). */
    for (int k = 0; k < ns; k++)
        if ((k == s || (lo < b->slot[k].hi && b->slot[k].lo < hi) || lo < b->front_hi) &&
            !qk_ok(cudaStreamWaitEvent(b->side, b->slot[k].read, 0),
                   "matmul: cudaStreamWaitEvent", err))
            return false;
    if (b->after_all &&
        (!qk_ok(cudaEventRecord(b->now, b->stream), "matmul: cudaEventRecord", err) ||
         !qk_ok(cudaStreamWaitEvent(b->side, b->now, 0), "matmul: cudaStreamWaitEvent", err)))
        return false;
    b->slot[s].lo = lo, b->slot[s].hi = hi;
    uint64_t n0, nc, k0, kc;
    it.at(i, &n0, &nc, &k0, &kc);
    *j = s;
    return mm_dequant(mw, T, n0, nc, k0, kc, b->ws + lo, b->side, err) &&
           qk_ok(cudaEventRecord(b->slot[s].ready, b->side), "matmul: cudaEventRecord", err);
}

/* The main stream wrote workspace bytes [lo, hi) (int8 products, tiles
 * in a capture): tiles written there later wait for that work. A capture
 * cannot record events for the side stream, and its graph may be replayed
 * at any later point of the main stream: from then on every tile waits for
 * all the main stream's work enqueued before it. */
bool main_wrote(qk_blas *b, size_t lo, size_t hi, qerr *err)
{
    bool cap;
    if (!capturing(b, &cap, err))
        return false;
    if (cap) {
        b->after_all = true;
        return true;
    }
    for (int k = 0; k < MM_SLOTS; k++) {
        b->slot[k].lo = umin(b->slot[k].lo, lo), b->slot[k].hi = umax(b->slot[k].hi, hi);
        if (!qk_ok(cudaEventRecord(b->slot[k].read, b->stream), "matmul: cudaEventRecord", err))
            return false;
    }
    return true;
}

/* The weight's tiles dequantized and multiplied in turn: tile i is
 * written on the side stream up to MM_SLOTS - 1 tiles ahead of the GEMM
 * of tile i, and after the GEMMs that read its slot before (their events
 * are recorded before it is enqueued). In a graph capture (which would need
 * the side stream joined to it) the tiles take turns on the captured stream
 * instead. */
bool tiled_gemm(qk_blas *b, const mm_weight &mw, const void *xT, int m, qdtype T, float *y,
                qerr *err)
{
    const uint64_t N = mw.N, K = mw.K;
    const tile_iter it = tiles_of(b, N, K, T);
    const size_t xe = elt_size(T), sz = align256(it.t.nc * it.t.kc * xe);
    bool cap;
    if (!capturing(b, &cap, err))
        return false;
    const bool piped = !cap;
    int js[MM_SLOTS] = {0}; /* js[i % MM_SLOTS]: the slot of tile i */
    uint64_t queued = 0; /* tiles enqueued on the side stream */
    for (uint64_t i = 0; i < it.count; i++) {
        for (; piped && queued < it.count && queued < i + MM_SLOTS; queued++)
            if (!side_dequant(b, mw, T, it, queued, sz, &js[queued % MM_SLOTS], err))
                return false;
        uint64_t n0, nc, k0, kc;
        it.at(i, &n0, &nc, &k0, &kc);
        const int j = js[i % MM_SLOTS];
        void *tile = b->ws + (piped ? b->slot[j].lo : slots_end(b) - sz);
        if (piped) {
            if (!qk_ok(cudaStreamWaitEvent(b->stream, b->slot[j].ready, 0),
                       "matmul: cudaStreamWaitEvent", err))
                return false;
        } else if (!mm_dequant(mw, T, n0, nc, k0, kc, tile, b->stream, err)) {
            return false;
        }
        if (!gemm_tile(b, tile, (const char *)xT + k0 * xe, T, nc, m, kc, K, k0 > 0, y + n0, N,
                       err))
            return false;
        if (piped && !qk_ok(cudaEventRecord(b->slot[j].read, b->stream), "matmul: cudaEventRecord",
                            err))
            return false;
    }
    /* in a capture the main stream wrote the last slot's bytes */
    return piped || main_wrote(b, slots_end(b) - sz, slots_end(b), err);
}

bool float_prefill(qk_blas *b, const qweight *w, const mm_weight &mw, const float *x, int m,
                   qdtype T, const mm_epi &e, float *y, const mm_plan &p, qerr *err)
{
    const uint64_t N = w->rows, K = w->cols;
    const void *xT = x;
    if (T != QDT_F32) {
        xT = b->ws + p.act;
        if (!mm_convert_x(x, (uint64_t)m * K, T, b->ws + p.act, b->stream, err))
            return false;
    }
    if ((qdtype)w->dtype == T) { /* stored in T already: no copy */
        if (!gemm_tile(b, w->data, xT, T, N, m, K, K, false, y, N, err))
            return false;
    } else if (!tiled_gemm(b, mw, xT, m, T, y, err)) {
        return false;
    }
    if (e.bias || e.round_to != QDT_F32 || e.gelu || e.add)
        return mm_bias_round(y, m, N, e, b->stream, err);
    return true;
}

bool int8_prefill(qk_blas *b, const mm_weight &mw, const float *x, int m, const mm_i8acts &a,
                  qdtype T, const mm_epi &e, float *y, const mm_plan &p, qerr *err)
{
    const uint64_t N = mw.N, K = mw.K;
    const uint64_t rows = i8_chunk_rows(N, (uint64_t)m);
    int32_t *acc = (int32_t *)(b->ws + p.chunk);
    /* cuBLAS' int8 GEMM wants 4-byte aligned rows; it may still decline a
     * shape (NOT_SUPPORTED, nothing enqueued): then the dp4a kernel. */
    bool blas = K % 4 == 0 && (uintptr_t)mw.data % 4 == 0;
    for (uint64_t n0 = 0; n0 < N; n0 += rows) {
        const uint64_t nc = umin(rows, N - n0), ldc = (nc + 3) & ~(uint64_t)3;
        if (blas) {
            bool declined;
            if (!blas_lt_gemm(b->lt, CUDA_R_8I, (const int8_t *)mw.data + n0 * K, K, a.ca, K, acc,
                              ldc, nc, (uint64_t)m, K, false, b->stream, &declined, err))
                return false;
            blas = !declined;
        }
        if (!blas && !mm_i8_gemm(mw, n0, nc, m, a.ca, acc, ldc, b->stream, err))
            return false;
        if (!mm_i8_finish(mw, n0, nc, m, acc, ldc, x, a, T, e, y, b->stream, err))
            return false;
    }
    return main_wrote(b, p.chunk, p.total, err);
}

} /* namespace */

size_t qk_matmul_workspace_size(int max_m, uint64_t max_n, uint64_t max_k, qdtype compute)
{
    mm_plan p;
    if (max_m < 1 || !float_type(compute) || !plan_for((uint64_t)max_m, max_n, max_k, compute, &p))
        return SIZE_MAX; /* cannot be allocated: qk_blas_create then fails */
    return p.total;
}

qk_blas *qk_blas_create(cudaStream_t stream, size_t workspace_bytes, qerr *err)
{
    if (workspace_bytes == 0 || workspace_bytes == SIZE_MAX) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: workspace of %zu bytes is too small",
                 workspace_bytes);
        return NULL;
    }
    qk_blas *b = (qk_blas *)calloc(1, sizeof *b);
    if (!b) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "matmul: out of host memory");
        return NULL;
    }
    b->stream = stream;
    b->ws_bytes = workspace_bytes;
    b->tile_bytes = MM_TILE_BYTES;
    cudaError_t ce = cudaMalloc((void **)&b->ws, workspace_bytes);
    if (ce != cudaSuccess) {
        qerr_set(err, QRUN_ERR_DEVICE, "matmul: cudaMalloc of a %zu-byte workspace: %s",
                 workspace_bytes, cudaGetErrorString(ce));
        b->ws = NULL;
        qk_blas_free(b);
        return NULL;
    }
    b->lt = blas_lt_create(err);
    if (!b->lt) {
        qk_blas_free(b);
        return NULL;
    }
    int dev = 0, sms = 0;
    if (!qk_ok(cudaGetDevice(&dev), "matmul: cudaGetDevice", err) ||
        !qk_ok(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
               "matmul: multiprocessor count", err) ||
        !mm_i8_plan(sms, b->i8_plan, err)) {
        qk_blas_free(b);
        return NULL;
    }
    qk_blas_set_i8_shape(b, -1);
    if (!qk_ok(cudaStreamCreateWithFlags(&b->side, cudaStreamNonBlocking),
               "matmul: cudaStreamCreate", err)) {
        b->side = NULL;
        qk_blas_free(b);
        return NULL;
    }
    if (!qk_ok(cudaEventCreateWithFlags(&b->now, cudaEventDisableTiming),
               "matmul: cudaEventCreate", err)) {
        b->now = NULL;
        qk_blas_free(b);
        return NULL;
    }
    for (int j = 0; j < MM_SLOTS; j++)
        if (!qk_ok(cudaEventCreateWithFlags(&b->slot[j].ready, cudaEventDisableTiming),
                   "matmul: cudaEventCreate", err) ||
            !qk_ok(cudaEventCreateWithFlags(&b->slot[j].read, cudaEventDisableTiming),
                   "matmul: cudaEventCreate", err)) {
            qk_blas_free(b);
            return NULL;
        }
    return b;
}

void qk_blas_set_tile_bytes(qk_blas *b, size_t bytes)
{
    b->tile_bytes = umax(1, umin(bytes, MM_TILE_BYTES));
}

void qk_blas_set_i8_shape(qk_blas *b, int shape)
{
    /* mm_i8_gemv takes, of the shapes whose blocks fit at once, the one with
     * the fewest steps per warp, and shape 0 where none fits: a table where
     * only `shape` fits forces it */
    for (int m = 0; m < QK_GEMV_MAX_M; m++)
        for (int v = 0; v < MM_I8_SHAPES; v++)
            b->i8_slots[m][v] = shape < 0 || shape >= MM_I8_SHAPES ? b->i8_plan[m][v]
                                : v == shape                      ? INT_MAX
                                                                  : 0;
}

void qk_blas_free(qk_blas *b)
{
    if (!b)
        return;
    blas_lt_free(b->lt);
    for (int j = 0; j < MM_SLOTS; j++) {
        if (b->slot[j].ready)
            cudaEventDestroy(b->slot[j].ready);
        if (b->slot[j].read)
            cudaEventDestroy(b->slot[j].read);
    }
    if (b->now)
        cudaEventDestroy(b->now);
    if (b->side)
        cudaStreamDestroy(b->side);
    if (b->ws)
        cudaFree(b->ws);
    free(b);
}

namespace {

mm_epi epi_of(qdtype bias_dt, const void *bias, qdtype round_to, const qk_mm_post *post)
{
    mm_epi e;
    e.bias_dt = bias_dt;
    e.bias = bias;
    e.round_to = round_to;
    e.gelu = post && post->gelu;
    e.add = post ? post->add : NULL;
    return e;
}

/* The workspace plan of an m-row product of w's shape (errors when the
 * workspace is too small), noting how far the front part reaches. */
bool plan_checked(qk_blas *b, int m, uint64_t N, uint64_t K, qdtype compute, mm_plan *p,
                  qerr *err)
{
    if (!plan_for((uint64_t)m, N, K, compute, p) || p->total > b->ws_bytes) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                 "matmul: %d x %llu x %llu needs more workspace than the %zu bytes given", m,
                 (unsigned long long)N, (unsigned long long)K, b->ws_bytes);
        return false;
    }
    b->front_hi = umax(b->front_hi, p->chunk);
    return true;
}

mm_i8acts acts_of(const qk_blas *b, const mm_plan &p)
{
    mm_i8acts a;
    a.ca = (int8_t *)(b->ws + p.act);
    a.sca = (float *)(b->ws + p.sca);
    a.flags = (unsigned *)(b->ws + p.flags);
    a.ocols = (unsigned *)(b->ws + p.ocols);
    a.nout = (unsigned *)(b->ws + p.nout);
    return a;
}

/* qk_matmul with its epilogue in e (arguments checked). */
bool matmul_one(qk_blas *b, const qweight *w, const float *x, int m, qdtype compute,
                const mm_epi &e, float *y, qerr *err)
{
    mm_plan p;
    if (!plan_checked(b, m, w->rows, w->cols, compute, &p, err))
        return false;
    const mm_weight mw = make_weight(w);
    if (w->dtype == QDT_I8) {
        const mm_i8acts a = acts_of(b, p);
        const bool fused = m <= QK_GEMV_MAX_M && mm_i8_fused(mw, x, m);
        if (!fused && !mm_i8_quantize(mw, x, m, a, b->stream, err))
            return false;
        if (m <= QK_GEMV_MAX_M)
            return mm_i8_gemv(&mw, &e, &y, 1, x, m, a, compute, b->i8_slots, b->stream, err);
        return int8_prefill(b, mw, x, m, a, compute, e, y, p, err);
    }
    if (m <= QK_GEMV_MAX_M)
        return mm_gemv(mw, x, m, compute, e, y, b->stream, err);
    return float_prefill(b, w, mw, x, m, compute, e, y, p, err);
}

} /* namespace */

bool qk_matmul(qk_blas *b, const qweight *w, const float *x, int m, qdtype compute,
               qdtype bias_dt, const void *bias, qdtype round_to, float *y, qerr *err)
{
    if (!check_args(b, w, x, m, compute, bias_dt, bias, round_to, y, err))
        return false;
    return matmul_one(b, w, x, m, compute, epi_of(bias_dt, bias, round_to, NULL), y, err);
}

bool qk_matmul_multi(qk_blas *b, const qweight *const *ws, int count, const float *x, int m,
                     qdtype compute, const qdtype *bias_dts, const void *const *biases,
                     qdtype round_to, const qk_mm_post *posts, float *const *ys, qerr *err)
{
    if (count < 1 || count > 3) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: %d products in one call", count);
        return false;
    }
    mm_weight mw[3];
    mm_epi e[3];
    bool gemv = m >= 1 && m <= QK_GEMV_MAX_M; /* int8 has its own path */
    for (int j = 0; j < count; j++) {
        gemv = gemv && ws[j]->dtype != QDT_I8;
        if (!check_args(b, ws[j], x, m, compute, bias_dts[j], biases[j], round_to, ys[j], err))
            return false;
        mw[j] = make_weight(ws[j]);
        e[j] = epi_of(bias_dts[j], biases[j], round_to, posts ? &posts[j] : NULL);
    }
    /* prefill writes y before its epilogue reads add, and the products of
     * one launch write their ys while others read: an add overlapping any
     * output would read written values */
    for (int j = 0; j < count; j++)
        for (int k = 0; e[j].add && k < count; k++) {
            const uintptr_t a0 = (uintptr_t)e[j].add, y0 = (uintptr_t)ys[k];
            const uint64_t na = (uint64_t)m * mw[j].N * 4, ny = (uint64_t)m * mw[k].N * 4;
            if (a0 < y0 + ny && y0 < a0 + na) {
                qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                         "matmul: product %d's add operand overlaps output %d", j, k);
                return false;
            }
        }
    if (gemv)
        return mm_gemv_multi(mw, e, ys, count, x, m, compute, b->stream, err);
    /* LLM.int8 decode of one x: its quantization (scales, outlier columns)
     * depends on x and the threshold only, so it is done once for all */
    bool i8 = m >= 1 && m <= QK_GEMV_MAX_M;
    for (int j = 0; j < count; j++)
        i8 = i8 && mw[j].dtype == QDT_I8 && mw[j].K == mw[0].K &&
             mw[j].threshold == mw[0].threshold;
    if (i8) {
        mm_plan p;
        if (!plan_checked(b, m, mw[0].N, mw[0].K, compute, &p, err))
            return false;
        const mm_i8acts a = acts_of(b, p);
        bool all_fused = true; /* the GEMVs that do not quantize x themselves read `a` */
        for (int j = 0; j < count; j++)
            all_fused = all_fused && mm_i8_fused(mw[j], x, m);
        if (!all_fused && !mm_i8_quantize(mw[0], x, m, a, b->stream, err))
            return false;
        return mm_i8_gemv(mw, e, ys, count, x, m, a, compute, b->i8_slots, b->stream, err);
    }
    for (int j = 0; j < count; j++)
        if (!matmul_one(b, ws[j], x, m, compute, e[j], ys[j], err))
            return false;
    return true;
}
