/* Token sampling on the GPU: src/sampler.c's chain (see sampler.h and
 * kernels/sample.h) on a device logits vector.
 *
 * Every token gets a 64-bit rank key, (ord(logit) << idbits) | (vocab-1-id),
 * where ord maps floats to unsigned integers in the same order (-0 counted
 * as +0, NaN and -inf as 0 = dropped). Keys are unique, and a larger key is
 * exactly "ranks before" of the host (higher logit, then lower id), so every
 * rank question becomes an integer one.
 *
 * Three paths, chosen on the host from the parameters:
 *  - greedy: the largest key (one pass, atomicMax on keys: exact, no ties);
 *  - top-k with 0 < k <= FINAL_THREADS ("path K"): a radix select over the
 *    keys (12-bit digits from the top, a histogram pass per digit, usually
 *    one) finds a threshold with at least k and at most LIST_CAP keys above
 *    it; those are gathered, sorted in one block, and the block runs the
 *    rest of the chain on the top k;
 *  - anything else ("path V", top-k off or large): the keys are sorted whole
 *    (cub::DeviceRadixSort) when a rank cut is possible, top-p runs over the
 *    sorted weights (block sums, then one block finds the crossing), and
 *    min-p and the temperature weights are computed over the vocabulary.
 *    When at most QSAMPLER_SORTED_WALK_MAX tokens are left, they are handed
 *    to the same one-block finish as path K; else one block finds the draw's
 *    crossing from block sums.
 * Sizes that depend on the data (how many candidates, the top-p cut) stay on
 * the device: kernels read them from a small state struct and return early
 * when their part is not needed, so the launch sequence is fixed for a given
 * vocab and parameters.
 *
 * Exactness (the host's rounding reproduced): the penalty is float division
 * or multiplication as on the host (_rn intrinsics: nvcc must not contract);
 * dexp_neg is sampler.c's exp_neg with the same operations; differences and
 * quotients are the host's double operations. The one-block finish adds
 * weights one by one in the host's order. Sums over more candidates are
 * added per block and then across blocks, a different order from the host's
 * loop, which can move a cumulative boundary by a few ulps of the total:
 * only a draw (or a top-p target) that close to a boundary can then pick
 * another token. No floating-point atomics, so the result is deterministic. */
#define CCCL_DISABLE_NVTX /* no NVTX ranges from CUB in a library */
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <limits.h>
#include <stdint.h>

#include "kernels/kcommon.cuh"
#include "kernels/sample.h"
extern "C" {
#include "sampler.h" /* QSAMPLER_SORTED_WALK_MAX, qsampler_draw_unit */
}

typedef unsigned long long u64;

#define CHUNK_THREADS 256
#define CHUNK_PER_THREAD 8
#define CHUNK (CHUNK_THREADS * CHUNK_PER_THREAD) /* elements per block of the vocab passes */
#define FINAL_THREADS 1024 /* the one-block kernels; also path K's largest k */
#define FINAL_ITEMS 4
#define LIST_CAP (FINAL_THREADS * FINAL_ITEMS) /* keys the final block can sort */
#define RADIX_BITS 12
#define RADIX_BINS (1 << RADIX_BITS)
#define MAX_PASSES 6 /* ceil(63 / 12): keys have at most 32 + 31 bits */
#define ORD_PINF 0xff800000u /* ord(+inf): above every finite float */
#define SCRATCH_ALIGN 256

static_assert(FINAL_THREADS == QSAMPLER_SORTED_WALK_MAX,
              "the finish walks one survivor per thread, as many as the host walks in order");
static_assert(RADIX_BINS % CHUNK_THREADS == 0, "radix pick: bins per thread");

/* Written by the kernels of one call; zeroed by a memset first. */
struct samp_state {
    u64 best;                          /* largest valid key (0: none) */
    unsigned n_valid;                  /* tokens not NaN or -inf after the penalty */
    unsigned n_pinf;                   /* of those, +inf */
    unsigned blocks_done[MAX_PASSES];  /* radix passes: blocks finished */
    u64 prefix;                        /* radix select: key bits above the digit of the next pass */
    u64 thresh;                        /* path K: the list is the valid keys >= thresh */
    unsigned above;                    /* keys above the current bucket */
    unsigned rem;                      /* top-k keys still to find inside the bucket */
    unsigned done;                     /* thresh is set */
    unsigned list_n;                   /* keys appended to the list (may pass LIST_CAP) */
    unsigned keep;                     /* path V top-p: survivors in rank order */
};

/* Sizes of one call, by value to every kernel. */
struct samp_geom {
    int vocab;
    int idbits; /* bits of vocab - 1 (at least 1) */
    int nbits;  /* 32 + idbits: the key width */
    int nchunks;
};

/* What the chain decides from the counts of the first pass (see sampler.c
 * run_chain): the candidates after the clean-up, after top-k, whether top-k
 * cut and whether top-p runs, and so the walk order. */
struct samp_counts {
    bool pinf;      /* some +inf: only they remain, with logit 0 */
    unsigned n_mode; /* candidates after the clean-up */
    unsigned n1;     /* after top-k */
    bool topp;       /* top-p runs */
    bool rank;       /* the draw walks in rank order (else id order) */
};

__device__ static samp_counts counts_of(const samp_state *st, int top_k, float top_p)
{
    samp_counts c;
    const unsigned nv = st->n_valid, np = st->n_pinf;
    c.pinf = np > 0;
    c.n_mode = c.pinf ? np : nv;
    const bool cut = top_k > 0 && (unsigned)top_k < c.n_mode;
    c.n1 = cut ? (unsigned)top_k : c.n_mode;
    c.topp = top_p < 1.0f && c.n1 > 1;
    c.rank = cut || c.topp;
    return c;
}

/* ---- keys ------------------------------------------------------------------- */

__device__ __forceinline__ uint32_t ord_of(float l)
{
    const uint32_t b = __float_as_uint(l);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float float_of_ord(uint32_t o)
{
    return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

__device__ __forceinline__ int key_id(u64 key, samp_geom g)
{
    return g.vocab - 1 - (int)(key & ((1ull << g.idbits) - 1));
}

/* A candidate of the chain: not dropped; with +inf present, +inf only. */
__device__ __forceinline__ bool key_valid(u64 key, bool pinf, samp_geom g)
{
    const uint32_t o = (uint32_t)(key >> g.idbits);
    return pinf ? o == ORD_PINF : o != 0;
}

/* The logit the chain uses: +inf tokens count as 0 (sampler.c). */
__device__ __forceinline__ float key_logit(u64 key, bool pinf, samp_geom g)
{
    return pinf ? 0.0f : float_of_ord((uint32_t)(key >> g.idbits));
}

__device__ __forceinline__ float max_logit(const samp_state *st, bool pinf, samp_geom g)
{
    return key_logit(st->best, pinf, g);
}

/* ---- exp: sampler.c's exp_neg, operation for operation ---------------------- */

__constant__ double c_exp2_tab[32] = {
    0x1.0000000000000p+0, 0x1.059b0d3158574p+0, 0x1.0b5586cf9890fp+0, 0x1.11301d0125b51p+0,
    0x1.172b83c7d517bp+0, 0x1.1d4873168b9aap+0, 0x1.2387a6e756238p+0, 0x1.29e9df51fdee1p+0,
    0x1.306fe0a31b715p+0, 0x1.371a7373aa9cbp+0, 0x1.3dea64c123422p+0, 0x1.44e086061892dp+0,
    0x1.4bfdad5362a27p+0, 0x1.5342b569d4f82p+0, 0x1.5ab07dd485429p+0, 0x1.6247eb03a5585p+0,
    0x1.6a09e667f3bcdp+0, 0x1.71f75e8ec5f74p+0, 0x1.7a11473eb0187p+0, 0x1.82589994cce13p+0,
    0x1.8ace5422aa0dbp+0, 0x1.93737b0cdc5e5p+0, 0x1.9c49182a3f090p+0, 0x1.a5503b23e255dp+0,
    0x1.ae89f995ad3adp+0, 0x1.b7f76f2fb5e47p+0, 0x1.c199bdd85529cp+0, 0x1.cb720dcef9069p+0,
    0x1.d5818dcfba487p+0, 0x1.dfc97337b9b5fp+0, 0x1.ea4afa2a490dap+0, 0x1.f50765b6e4540p+0,
};

/* exp(x) for x <= 0; 0 below -708, for -inf and NaN. The polynomial
 * coefficients are 1/720, 1/120, 1/24, 1/6 rounded as the host's constant
 * expressions are. Every operation is an _rn intrinsic: a fused multiply-add
 * would round differently from the host. */
__device__ static double dexp_neg(double x)
{
    if (!(x > -708.0))
        return 0.0;
    if (x >= 0.0)
        x = 0.0;
    const double INV = 0x1.71547652b82fep+5; /* 32 / ln2 */
    const double HI = 0x1.62e42fee00000p-6;
    const double LO = 0x1.a39ef35793c76p-38;
    const double kd = __dmul_rn(x, INV);
    const int k = -(int)__dsub_rn(0.5, kd);
    const double hi = __dsub_rn(x, __dmul_rn((double)k, HI));
    const double r = __dsub_rn(hi, __dmul_rn((double)k, LO));
    double p = 0x1.6c16c16c16c17p-10;
    p = __dadd_rn(__dmul_rn(p, r), 0x1.1111111111111p-7);
    p = __dadd_rn(__dmul_rn(p, r), 0x1.5555555555555p-5);
    p = __dadd_rn(__dmul_rn(p, r), 0x1.5555555555555p-3);
    p = __dadd_rn(__dmul_rn(p, r), 0.5);
    p = __dadd_rn(__dmul_rn(p, r), 1.0);
    p = __dmul_rn(p, r);
    const int j = k & 31;
    const int m = (k - j) / 32;
    const double tj = c_exp2_tab[j];
    const double v = __dadd_rn(tj, __dmul_rn(p, tj));
    const double scale = __longlong_as_double((long long)((uint64_t)(m + 1023) << 52));
    return __dmul_rn(v, scale);
}

/* ---- block helpers ------------------------------------------------------------ */

struct op_max_u64 {
    __device__ u64 operator()(u64 a, u64 b) const { return a > b ? a : b; }
};
struct op_add_u32 {
    __device__ unsigned operator()(unsigned a, unsigned b) const { return a + b; }
};
struct op_add_f64 {
    __device__ double operator()(double a, double b) const { return __dadd_rn(a, b); }
};
struct op_min_i32 {
    __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct op_max_i32 {
    __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};

/* Reduce over the block in a fixed order (shuffles, then the warps in
 * turn): every thread gets the result. blockDim.x is a multiple of 32;
 * s_warp has 32 slots and may be reused by the next call. */
template <typename T, typename Op>
__device__ static T block_reduce(T v, Op op, T *s_warp)
{
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
    __syncthreads(); /* the previous call's readers are done with s_warp */
    if (lane == 0)
        s_warp[warp] = v;
    __syncthreads();
    T r = s_warp[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); w++)
        r = op(r, s_warp[w]);
    return r;
}

/* In the grid's last block to reach it (after every block's global writes
 * and atomics): true. The standard fence-and-count pattern. */
__device__ static bool last_block(unsigned *counter)
{
    __shared__ bool s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0)
        s_last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (s_last)
        __threadfence();
    return s_last;
}

/* Append key to the list where `want`, one atomic per warp. Every lane of
 * the warp calls it. The count goes on past LIST_CAP; the keys do not. */
__device__ static void list_append(bool want, u64 key, samp_state *st, u64 *list)
{
    const unsigned m = __ballot_sync(0xffffffffu, want);
    if (!m)
        return;
    const int lane = (int)(threadIdx.x & 31), leader = __ffs(m) - 1;
    unsigned base = 0;
    if (lane == leader)
        base = atomicAdd(&st->list_n, (unsigned)__popc(m));
    base = __shfl_sync(0xffffffffu, base, leader);
    if (want) {
        const unsigned idx = base + (unsigned)__popc(m & ((1u << lane) - 1u));
        if (idx < LIST_CAP)
            list[idx] = key;
    }
}

/* ---- penalty window ------------------------------------------------------------ */

__global__ void mark_recent_kernel(uint8_t *flags, const int32_t *recent, int n, int vocab)
{
    const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) {
        const int32_t id = recent[i];
        if (id >= 0 && id < vocab)
            flags[id] = 1; /* a repeated id writes the same flag: penalized once */
    }
}

/* ---- radix select (path K) ------------------------------------------------------ */

/* Key bits [lo, hi) of pass p. */
__device__ __forceinline__ void pass_bits(int p, samp_geom g, int *lo, int *hi)
{
    *hi = g.nbits - RADIX_BITS * p;
    *lo = *hi > RADIX_BITS ? *hi - RADIX_BITS : 0;
}

/* The last block of pass p: find the bin holding the rem-th key from the
 * top in hist (the global histogram of pass p over the current bucket) and
 * either stop (the keys from that bin up fit in the list) or narrow the
 * bucket to it for the next pass. */
__device__ static void radix_pick(int p, samp_geom g, int top_k, samp_state *st,
                                  const unsigned *hist)
{
    typedef cub::BlockScan<unsigned, CHUNK_THREADS> scan_t;
    __shared__ typename scan_t::TempStorage s_scan;
    const unsigned nv = __ldcg(&st->n_valid), np = __ldcg(&st->n_pinf);
    const bool pinf = np > 0;
    const unsigned n_mode = pinf ? np : nv;
    unsigned rem, above;
    u64 prefix;
    if (p == 0) {
        if (n_mode <= (unsigned)top_k) { /* every candidate survives top-k */
            if (threadIdx.x == 0) {
                st->thresh = n_mode == 0 ? ~0ull : (u64)(pinf ? ORD_PINF : 1u) << g.idbits;
                st->done = 1;
            }
            return;
        }
        rem = (unsigned)top_k;
        above = 0;
        prefix = 0;
    } else {
        rem = __ldcg(&st->rem);
        above = __ldcg(&st->above);
        prefix = __ldcg(&st->prefix);
    }
    int lo, hi;
    pass_bits(p, g, &lo, &hi);
    /* thread t owns PER bins, from the top down */
    const int PER = RADIX_BINS / CHUNK_THREADS;
    unsigned cnt[PER], sum = 0;
    for (int j = 0; j < PER; j++) {
        const int b = RADIX_BINS - 1 - ((int)threadIdx.x * PER + j);
        unsigned c = __ldcg(&hist[b]);
        if (p == 0 && pinf && b != (int)(ORD_PINF >> (32 - RADIX_BITS)))
            c = 0; /* +inf present: only the +inf bin counts */
        cnt[j] = c;
        sum += c;
    }
    unsigned excl;
    scan_t(s_scan).ExclusiveSum(sum, excl);
    if (excl < rem && rem <= excl + sum) { /* exactly one thread */
        unsigned a = excl;
        int j = 0;
        while (rem > a + cnt[j]) {
            a += cnt[j];
            j++;
        }
        const u64 b = (u64)(RADIX_BINS - 1 - ((int)threadIdx.x * PER + j));
        const u64 bucket = (prefix << (hi - lo)) | b;
        const unsigned total = above + a + cnt[j]; /* keys >= the bucket's first key */
        if (total <= LIST_CAP || lo == 0) {
            st->thresh = bucket << lo;
            st->done = 1;
        } else {
            st->prefix = bucket;
            st->above = above + a;
            st->rem = rem - a;
        }
    }
}

/* Read the logits once: penalty, clean-up, keys, the counts and the largest
 * key; MODE 1 (path K) also the histogram of the first radix digit, and its
 * last block picks from it. MODE 0 (greedy) writes no keys. */
template <int MODE>
__global__ void __launch_bounds__(CHUNK_THREADS)
    prep_kernel(const float *logits, const uint8_t *flags, float pen, samp_geom g, int top_k,
                u64 *keys, samp_state *st, unsigned *hist)
{
    __shared__ unsigned s_hist[MODE == 1 ? RADIX_BINS : 1];
    __shared__ u64 s_w64[32];
    __shared__ unsigned s_w32[32];
    if (MODE == 1) {
        for (int b = (int)threadIdx.x; b < RADIX_BINS; b += CHUNK_THREADS)
            s_hist[b] = 0;
        __syncthreads();
    }
    const int shift0 = g.nbits - RADIX_BITS;
    u64 best = 0;
    unsigned nv = 0, np = 0;
    const int base = (int)blockIdx.x * CHUNK;
    for (int q = 0; q < CHUNK_PER_THREAD; q++) {
        const int i = base + q * CHUNK_THREADS + (int)threadIdx.x;
        if (i >= g.vocab)
            break;
        float l = logits[i];
        if (flags && flags[i])
            l = l > 0.0f ? __fdiv_rn(l, pen) : __fmul_rn(l, pen);
        uint32_t o = 0;
        if (l > -INFINITY) { /* neither NaN nor -inf */
            if (l == 0.0f)
                l = 0.0f; /* -0 ranks as +0: the host compares them equal */
            o = ord_of(l);
            nv++;
            np += l == INFINITY;
        }
        const u64 key = ((u64)o << g.idbits) | (u64)(g.vocab - 1 - i);
        if (o && key > best)
            best = key;
        if (MODE != 0)
            keys[i] = key;
        if (MODE == 1 && o)
            atomicAdd(&s_hist[key >> shift0], 1u);
    }
    best = block_reduce(best, op_max_u64(), s_w64);
    nv = block_reduce(nv, op_add_u32(), s_w32);
    np = block_reduce(np, op_add_u32(), s_w32);
    if (threadIdx.x == 0) {
        if (best)
            atomicMax(&st->best, best);
        if (nv)
            atomicAdd(&st->n_valid, nv);
        if (np)
            atomicAdd(&st->n_pinf, np);
    }
    if (MODE == 1) {
        __syncthreads();
        for (int b = (int)threadIdx.x; b < RADIX_BINS; b += CHUNK_THREADS)
            if (s_hist[b])
                atomicAdd(&hist[b], s_hist[b]);
        if (last_block(&st->blocks_done[0]))
            radix_pick(0, g, top_k, st, hist);
    }
}

/* Radix pass p >= 1: the histogram of digit p over the keys of the current
 * bucket, then the pick in the last block. Nothing once the threshold is
 * known. */
__global__ void __launch_bounds__(CHUNK_THREADS)
    radix_pass_kernel(int p, const u64 *keys, samp_geom g, int top_k, samp_state *st,
                      unsigned *hist)
{
    if (st->done)
        return;
    __shared__ unsigned s_hist[RADIX_BINS];
    for (int b = (int)threadIdx.x; b < RADIX_BINS; b += CHUNK_THREADS)
        s_hist[b] = 0;
    __syncthreads();
    int lo, hi;
    pass_bits(p, g, &lo, &hi);
    const u64 prefix = st->prefix;
    const bool pinf = st->n_pinf > 0;
    const u64 mask = (1ull << (hi - lo)) - 1;
    const int base = (int)blockIdx.x * CHUNK;
    for (int q = 0; q < CHUNK_PER_THREAD; q++) {
        const int i = base + q * CHUNK_THREADS + (int)threadIdx.x;
        if (i >= g.vocab)
            break;
        const u64 key = keys[i];
        if (key_valid(key, pinf, g) && (key >> hi) == prefix)
            atomicAdd(&s_hist[(key >> lo) & mask], 1u);
    }
    __syncthreads();
    for (int b = (int)threadIdx.x; b < RADIX_BINS; b += CHUNK_THREADS)
        if (s_hist[b])
            atomicAdd(&hist[b], s_hist[b]);
    if (last_block(&st->blocks_done[p]))
        radix_pick(p, g, top_k, st, hist);
}

/* Path K: the keys at or above the threshold (at most LIST_CAP). */
__global__ void __launch_bounds__(CHUNK_THREADS)
    gather_kernel(const u64 *keys, samp_geom g, samp_state *st, u64 *list)
{
    const u64 thresh = st->thresh;
    const bool pinf = st->n_pinf > 0;
    const int base = (int)blockIdx.x * CHUNK;
    for (int q = 0; q < CHUNK_PER_THREAD; q++) {
        const int i = base + q * CHUNK_THREADS + (int)threadIdx.x;
        const u64 key = i < g.vocab ? keys[i] : 0;
        list_append(i < g.vocab && key >= thresh && key_valid(key, pinf, g), key, st, list);
    }
}

/* ---- path V: vocabulary-wide top-p, min-p and weights ------------------------------ */

/* Top-p weights exp(l - l_max) of the sorted candidates (rank order), zero
 * past the top-k survivors, and one sum per block. Only when more survive
 * top-k than the finish handles. */
__global__ void __launch_bounds__(CHUNK_THREADS)
    topp_weights_kernel(const u64 *sorted, samp_geom g, int top_k, float top_p,
                        const samp_state *st, double *w, double *block_sum)
{
    __shared__ double s_w[32];
    const samp_counts c = counts_of(st, top_k, top_p);
    if (c.n1 <= FINAL_THREADS)
        return;
    const double maxl = (double)max_logit(st, c.pinf, g);
    double sum = 0.0;
    const int base = (int)blockIdx.x * CHUNK;
    for (int q = 0; q < CHUNK_PER_THREAD; q++) {
        const int j = base + q * CHUNK_THREADS + (int)threadIdx.x;
        if (j >= g.vocab)
            break;
        double x = 0.0;
        if ((unsigned)j < c.n1)
            x = dexp_neg(__dsub_rn((double)key_logit(sorted[j], c.pinf, g), maxl));
        w[j] = x;
        sum = __dadd_rn(sum, x);
    }
    sum = block_reduce(sum, op_add_f64(), s_w);
    if (threadIdx.x == 0)
        block_sum[blockIdx.x] = sum;
}

/* One block (FINAL_THREADS): the first position where the running sum of
 * w[0..n) reaches scale * (the sum of block_sum) (>=; strictly exceeds when
 * `strict`). The running sum is block_sum's prefix plus a scan inside the
 * block that crosses. If that block's own scan never crosses (its sum was
 * rounded differently), its last position with weight; -1 when no block
 * crosses. Uniform across the block. */
__device__ static int find_crossing(const double *w, const double *block_sum, int nchunks, int n,
                                    double scale, bool strict)
{
    typedef cub::BlockScan<double, FINAL_THREADS> scan_t;
    __shared__ typename scan_t::TempStorage s_scan;
    __shared__ int s_i[32];
    __shared__ double s_base, s_target;
    __shared__ int s_chunk;
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int b = 0; b < nchunks; b++)
            total = __dadd_rn(total, block_sum[b]);
        const double t = __dmul_rn(scale, total);
        double acc = 0.0;
        int cb = -1;
        for (int b = 0; b < nchunks; b++) {
            const double next = __dadd_rn(acc, block_sum[b]);
            if (strict ? t < next : next >= t) {
                cb = b;
                break;
            }
            acc = next;
        }
        s_base = acc;
        s_target = t;
        s_chunk = cb;
    }
    __syncthreads();
    const int cb = s_chunk;
    if (cb < 0)
        return -1;
    static_assert(CHUNK == 2 * FINAL_THREADS, "find_crossing: two positions per thread");
    const int j0 = cb * CHUNK + 2 * (int)threadIdx.x;
    const double a = j0 < n ? w[j0] : 0.0, b = j0 + 1 < n ? w[j0 + 1] : 0.0;
    double excl;
    scan_t(s_scan).ExclusiveSum(__dadd_rn(a, b), excl);
    const double t = s_target;
    const double c1 = __dadd_rn(__dadd_rn(s_base, excl), a);
    const double c2 = __dadd_rn(c1, b);
    int hit = INT_MAX, last = -1;
    if (j0 < n && (strict ? t < c1 : c1 >= t))
        hit = j0;
    else if (j0 + 1 < n && (strict ? t < c2 : c2 >= t))
        hit = j0 + 1;
    if (j0 + 1 < n && b > 0.0)
        last = j0 + 1;
    else if (j0 < n && a > 0.0)
        last = j0;
    hit = block_reduce(hit, op_min_i32(), s_i);
    last = block_reduce(last, op_max_i32(), s_i);
    return hit != INT_MAX ? hit : (last >= 0 ? last : cb * CHUNK);
}

/* Top-p on more than FINAL_THREADS candidates: the smallest rank prefix
 * whose mass reaches top_p * Z. */
__global__ void __launch_bounds__(FINAL_THREADS)
    topp_cut_kernel(samp_geom g, int top_k, float top_p, samp_state *st, const double *w,
                    const double *block_sum)
{
    const samp_counts c = counts_of(st, top_k, top_p);
    if (c.n1 <= FINAL_THREADS)
        return;
    const int pos = find_crossing(w, block_sum, g.nchunks, g.vocab, (double)top_p, false);
    if (threadIdx.x == 0)
        st->keep = pos < 0 || (unsigned)pos >= c.n1 ? c.n1 : (unsigned)pos + 1;
}

/* Min-p and the temperature weights over the vocabulary, in walk order
 * (sorted positions in rank order, ids in id order), with one sum and the
 * last weighted position per block; the survivors' keys go to the list
 * (used when they fit the finish). With at most FINAL_THREADS candidates
 * after top-k only the list is made: every candidate, for the finish. */
__global__ void __launch_bounds__(CHUNK_THREADS)
    weights_kernel(const u64 *keys, const u64 *sorted, samp_geom g, qk_sample_params p,
                   samp_state *st, double *w, double *block_sum, int *block_last, u64 *list)
{
    __shared__ double s_d[32];
    __shared__ int s_i[32];
    const samp_counts c = counts_of(st, p.top_k, p.top_p);
    if (c.n_mode == 0)
        return;
    const int base = (int)blockIdx.x * CHUNK;
    if (c.n1 <= FINAL_THREADS) {
        for (int q = 0; q < CHUNK_PER_THREAD; q++) {
            const int i = base + q * CHUNK_THREADS + (int)threadIdx.x;
            const u64 key = i < g.vocab ? keys[i] : 0;
            list_append(i < g.vocab && key_valid(key, c.pinf, g), key, st, list);
        }
        return;
    }
    const unsigned n2 = c.topp ? st->keep : c.n1;
    const bool minp = p.min_p > 0.0f && n2 > 1;
    const double maxl = (double)max_logit(st, c.pinf, g);
    const double t = (double)p.temperature, mp = (double)p.min_p;
    double sum = 0.0;
    int last = -1;
    for (int q = 0; q < CHUNK_PER_THREAD; q++) {
        const int pos = base + q * CHUNK_THREADS + (int)threadIdx.x;
        bool in = false;
        u64 key = 0;
        if (pos < g.vocab) {
            if (c.rank) {
                key = sorted[pos];
                in = (unsigned)pos < n2;
            } else {
                key = keys[pos];
                in = key_valid(key, c.pinf, g);
            }
        }
        double x = 0.0;
        if (in) {
            const double d = __dsub_rn((double)key_logit(key, c.pinf, g), maxl);
            in = !minp || dexp_neg(d) >= mp;
            if (in) {
                x = dexp_neg(__ddiv_rn(d, t));
                if (x > 0.0)
                    last = pos;
            }
        }
        list_append(in, key, st, list);
        if (pos < g.vocab)
            w[pos] = x;
        sum = __dadd_rn(sum, x);
    }
    sum = block_reduce(sum, op_add_f64(), s_d);
    last = block_reduce(last, op_max_i32(), s_i);
    if (threadIdx.x == 0) {
        block_sum[blockIdx.x] = sum;
        block_last[blockIdx.x] = last;
    }
}

/* ---- the finish: one block, at most FINAL_THREADS candidates ------------------------ */

typedef cub::BlockRadixSort<u64, FINAL_THREADS, FINAL_ITEMS> final_sort_t;
typedef cub::BlockScan<int, FINAL_THREADS> final_scan_t;

/* The sort's storage is dead once its keys are in registers: the finish's
 * arrays share it (48 KB of static shared memory hold either, not both). */
struct final_smem {
    union {
        typename final_sort_t::TempStorage sort;
        struct {
            u64 key[FINAL_THREADS]; /* the candidates, in rank order, then walk order */
            u64 key2[FINAL_THREADS];
            double w[FINAL_THREADS];
            typename final_scan_t::TempStorage scan;
        } f;
    } u;
    int n;
};

/* Sort the list (n_list keys, at most LIST_CAP) in rank order and keep the
 * first n_take in sm.u.f.key. */
__device__ static void sort_list(final_smem &sm, const u64 *list, unsigned n_list, unsigned n_take,
                                 samp_geom g)
{
    if (n_list <= FINAL_THREADS) {
        /* Few keys (top-k's usual case): a key's rank is the number of
         * larger keys (they are unique), cheaper than the 13 passes of the
         * block sort over LIST_CAP slots. */
        const unsigned i = threadIdx.x;
        u64 mine = 0;
        if (i < n_list)
            mine = sm.u.f.key2[i] = list[i];
        __syncthreads();
        if (i < n_list) {
            unsigned r = 0;
            for (unsigned j = 0; j < n_list; j++)
                r += sm.u.f.key2[j] > mine;
            if (r < n_take)
                sm.u.f.key[r] = mine;
        }
        __syncthreads();
        return;
    }
    u64 k[FINAL_ITEMS];
    for (int j = 0; j < FINAL_ITEMS; j++) {
        const unsigned i = threadIdx.x * FINAL_ITEMS + (unsigned)j;
        k[j] = i < n_list ? list[i] : 0; /* 0 sorts last */
    }
    final_sort_t(sm.u.sort).SortDescending(k, 0, g.nbits);
    __syncthreads(); /* the sort's storage becomes the finish's arrays */
    for (int j = 0; j < FINAL_ITEMS; j++) {
        const unsigned i = threadIdx.x * FINAL_ITEMS + (unsigned)j;
        if (i < n_take)
            sm.u.f.key[i] = k[j];
    }
    __syncthreads();
}

/* w[0] + w[1] + ... + w[n-1], added one by one from the left as the host
 * adds them; the loads go ahead in batches of 8 so that the chain of adds,
 * not the shared-memory latency, sets the pace. */
__device__ static double seq_sum(const double *w, int n)
{
    double s = 0.0;
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        double v[8];
#pragma unroll
        for (int q = 0; q < 8; q++)
            v[q] = w[j + q];
#pragma unroll
        for (int q = 0; q < 8; q++)
            s = __dadd_rn(s, v[q]);
    }
    for (; j < n; j++)
        s = __dadd_rn(s, w[j]);
    return s;
}

/* The first j whose running sum w[0] + ... + w[j] (added as seq_sum adds)
 * reaches t (>=), or exceeds it when strict; -1 if none. */
__device__ static int seq_first(const double *w, int n, double t, bool strict)
{
    double s = 0.0;
    for (int j = 0; j < n; j += 8) {
        double v[8];
#pragma unroll
        for (int q = 0; q < 8; q++)
            v[q] = j + q < n ? w[j + q] : 0.0;
#pragma unroll
        for (int q = 0; q < 8; q++) {
            if (j + q >= n)
                return -1;
            s = __dadd_rn(s, v[q]);
            if (strict ? t < s : s >= t)
                return j + q;
        }
    }
    return -1;
}

/* Steps 5-8 of the chain on sm.u.f.key[0..n) in rank order, as sampler.c runs
 * them: top-p (if topp) and min-p (if minp) on exp(l - l_max), the walk
 * order, the temperature weights and the draw, the sums one by one. */
__device__ static void finish(final_smem &sm, int n, bool pinf, double maxl, bool topp, bool minp,
                              bool rank, const qk_sample_params &p, double unit, samp_geom g,
                              int32_t *out_id)
{
    const int i = (int)threadIdx.x;
    double d = 0.0;
    if (i < n)
        d = __dsub_rn((double)key_logit(sm.u.f.key[i], pinf, g), maxl);
    if (topp || minp)
        sm.u.f.w[i] = i < n ? dexp_neg(d) : 0.0;
    __syncthreads();
    if (topp) { /* 5. the smallest rank prefix with mass >= top_p * Z */
        if (i == 0) {
            const double z = seq_sum(sm.u.f.w, n);
            const int j = seq_first(sm.u.f.w, n, __dmul_rn((double)p.top_p, z), false);
            sm.n = j < 0 ? n : j + 1;
        }
        __syncthreads();
        n = sm.n;
    }
    if (minp && n > 1) { /* 6. exp(l - l_max) >= min_p, order kept */
        const int in = i < n && sm.u.f.w[i] >= (double)p.min_p;
        int pos, total;
        final_scan_t(sm.u.f.scan).ExclusiveSum(in, pos, total);
        if (in)
            sm.u.f.key2[pos] = sm.u.f.key[i];
        __syncthreads();
        if (i < total)
            sm.u.f.key[i] = sm.u.f.key2[i];
        n = total;
        __syncthreads();
    }
    if (!rank && n > 1) { /* walk order: ids ascending */
        u64 mine = 0;
        int before = 0;
        if (i < n) {
            mine = sm.u.f.key[i];
            const int id = key_id(mine, g);
            for (int j = 0; j < n; j++)
                before += key_id(sm.u.f.key[j], g) < id;
        }
        __syncthreads();
        if (i < n)
            sm.u.f.key[before] = mine;
        __syncthreads();
    }
    /* 7. temperature weights */
    if (i < n)
        sm.u.f.w[i] = dexp_neg(__ddiv_rn(
            __dsub_rn((double)key_logit(sm.u.f.key[i], pinf, g), maxl), (double)p.temperature));
    __syncthreads();
    if (i == 0) { /* 8. the draw */
        const double u = __dmul_rn(unit, seq_sum(sm.u.f.w, n));
        int pick = seq_first(sm.u.f.w, n, u, true);
        if (pick < 0) { /* rounding: the last one with weight */
            pick = 0;
            for (int j = n; j-- > 0;)
                if (sm.u.f.w[j] > 0.0) {
                    pick = j;
                    break;
                }
        }
        *out_id = key_id(sm.u.f.key[pick], g);
    }
}

/* The end of both non-greedy paths. vocab_path: path V (else K). */
__global__ void __launch_bounds__(FINAL_THREADS)
    final_kernel(bool vocab_path, const u64 *sorted, samp_geom g, qk_sample_params p, double unit,
                 const samp_state *st, const u64 *list, const double *w, const double *block_sum,
                 const int *block_last, int32_t *out_id)
{
    __shared__ final_smem sm;
    const samp_counts c = counts_of(st, p.top_k, p.top_p);
    if (c.n_mode == 0) {
        if (threadIdx.x == 0)
            *out_id = -1;
        return;
    }
    const double maxl = (double)max_logit(st, c.pinf, g);
    const unsigned n_list = st->list_n;
    if (!vocab_path || c.n1 <= FINAL_THREADS) {
        /* the list holds the top n1 (and maybe more, up to LIST_CAP) */
        sort_list(sm, list, n_list, c.n1, g);
        finish(sm, (int)c.n1, c.pinf, maxl, c.topp, p.min_p > 0.0f, c.rank, p, unit, g, out_id);
        return;
    }
    if (n_list <= FINAL_THREADS) { /* top-p and min-p done: the survivors */
        sort_list(sm, list, n_list, n_list, g);
        finish(sm, (int)n_list, c.pinf, maxl, false, false, c.rank, p, unit, g, out_id);
        return;
    }
    int pos = find_crossing(w, block_sum, g.nchunks, g.vocab, unit, true);
    if (pos < 0) { /* rounding: the last position with weight */
        pos = 0;
        for (int b = g.nchunks; b-- > 0;)
            if (block_last[b] >= 0) {
                pos = block_last[b];
                break;
            }
    }
    if (threadIdx.x == 0)
        *out_id = c.rank ? key_id(sorted[pos], g) : pos;
}

__global__ void greedy_kernel(const samp_state *st, samp_geom g, int32_t *out_id)
{
    const u64 best = st->best;
    *out_id = best ? key_id(best, g) : -1;
}

/* ---- host side ------------------------------------------------------------------ */

namespace {

struct samp_layout {
    size_t state, hist, flags, keys, sorted, w, block_sum, block_last, list, sort_temp;
    size_t sort_bytes, total;
};

size_t align_up(size_t x) { return (x + SCRATCH_ALIGN - 1) / SCRATCH_ALIGN * SCRATCH_ALIGN; }

samp_geom geom_of(int vocab)
{
    samp_geom g;
    g.vocab = vocab;
    int bits = 1;
    while (bits < 31 && ((unsigned)(vocab - 1) >> bits) != 0)
        bits++;
    g.idbits = bits;
    g.nbits = 32 + bits;
    g.nchunks = (int)qk_div_up((uint64_t)vocab, CHUNK);
    return g;
}

/* false when the sort's size query fails */
bool layout_of(samp_geom g, samp_layout *L)
{
    size_t sort_bytes = 0;
    if (cub::DeviceRadixSort::SortKeysDescending(nullptr, sort_bytes, (const u64 *)nullptr,
                                                 (u64 *)nullptr, g.vocab, 0, g.nbits,
                                                 (cudaStream_t)0) != cudaSuccess)
        return false;
    const size_t v = (size_t)g.vocab, nc = (size_t)g.nchunks;
    size_t off = 0;
    L->state = off, off += align_up(sizeof(samp_state));
    L->hist = off, off += align_up((size_t)MAX_PASSES * RADIX_BINS * sizeof(unsigned));
    L->flags = off, off += align_up(v);
    L->keys = off, off += align_up(v * sizeof(u64));
    L->sorted = off, off += align_up(v * sizeof(u64));
    L->w = off, off += align_up(v * sizeof(double));
    L->block_sum = off, off += align_up(nc * sizeof(double));
    L->block_last = off, off += align_up(nc * sizeof(int));
    L->list = off, off += align_up((size_t)LIST_CAP * sizeof(u64));
    L->sort_temp = off, off += align_up(sort_bytes);
    L->sort_bytes = sort_bytes;
    L->total = off;
    return true;
}

} // namespace

extern "C" size_t qk_sample_scratch_size(int vocab)
{
    if (vocab <= 0)
        return 0;
    samp_layout L;
    return layout_of(geom_of(vocab), &L) ? L.total : 0;
}

#define LAUNCHED(name)                                                                         \
    do {                                                                                       \
        if (!qk_launched("qk_sample: " name, err))                                             \
            return false;                                                                      \
    } while (0)

extern "C" bool qk_sample(const float *logits, int vocab, const qk_sample_params *p,
                          const int32_t *recent, int n_recent, uint64_t draw, void *scratch,
                          size_t scratch_size, int32_t *out_id, cudaStream_t s, qerr *err)
{
    if (!logits || !p || !out_id || !scratch || vocab <= 0 || n_recent < 0 ||
        (n_recent > 0 && !recent)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qk_sample: bad arguments (vocab %d)", vocab);
        return false;
    }
    if (!(p->top_p >= 0.0f && p->top_p <= 1.0f) || !(p->min_p >= 0.0f && p->min_p <= 1.0f) ||
        !(p->repeat_penalty > 0.0f) || !(p->temperature == p->temperature)) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "qk_sample: parameters out of range");
        return false;
    }
    const samp_geom g = geom_of(vocab);
    samp_layout L;
    if (!layout_of(g, &L)) {
        qerr_set(err, QRUN_ERR_DEVICE, "qk_sample: the device sort's size query failed");
        return false;
    }
    if (scratch_size < L.total || ((uintptr_t)scratch % SCRATCH_ALIGN) != 0) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                 "qk_sample: scratch of %zu bytes (256-aligned) needed, got %zu", L.total,
                 scratch_size);
        return false;
    }
    char *base = (char *)scratch;
    samp_state *st = (samp_state *)(base + L.state);
    unsigned *hist = (unsigned *)(base + L.hist);
    uint8_t *flags = (uint8_t *)(base + L.flags);
    u64 *keys = (u64 *)(base + L.keys);
    u64 *sorted = (u64 *)(base + L.sorted);
    double *w = (double *)(base + L.w);
    double *block_sum = (double *)(base + L.block_sum);
    int *block_last = (int *)(base + L.block_last);
    u64 *list = (u64 *)(base + L.list);
    const unsigned nb = (unsigned)g.nchunks;

    /* the state and the histograms are contiguous */
    if (!qk_ok(cudaMemsetAsync(st, 0, L.flags - L.state, s), "qk_sample: clear state", err))
        return false;
    const bool penalize = p->repeat_penalty != 1.0f && n_recent > 0;
    if (penalize) {
        if (!qk_ok(cudaMemsetAsync(flags, 0, (size_t)vocab, s), "qk_sample: clear flags", err))
            return false;
        mark_recent_kernel<<<qk_div_up((uint64_t)n_recent, 256), 256, 0, s>>>(flags, recent,
                                                                             n_recent, vocab);
        LAUNCHED("mark_recent");
    }
    const uint8_t *fl = penalize ? flags : nullptr;
    const float pen = p->repeat_penalty;

    if (!(p->temperature > 0.0f)) { /* greedy */
        prep_kernel<0><<<nb, CHUNK_THREADS, 0, s>>>(logits, fl, pen, g, p->top_k, keys, st, hist);
        LAUNCHED("prep");
        greedy_kernel<<<1, 1, 0, s>>>(st, g, out_id);
        LAUNCHED("greedy");
        return true;
    }
    const double unit = qsampler_draw_unit(draw);
    if (p->top_k > 0 && p->top_k <= FINAL_THREADS) { /* path K */
        prep_kernel<1><<<nb, CHUNK_THREADS, 0, s>>>(logits, fl, pen, g, p->top_k, keys, st, hist);
        LAUNCHED("prep");
        const int passes = (g.nbits + RADIX_BITS - 1) / RADIX_BITS;
        for (int pass = 1; pass < passes; pass++) {
            radix_pass_kernel<<<nb, CHUNK_THREADS, 0, s>>>(pass, keys, g, p->top_k, st,
                                                           hist + (size_t)pass * RADIX_BINS);
            LAUNCHED("radix_pass");
        }
        gather_kernel<<<nb, CHUNK_THREADS, 0, s>>>(keys, g, st, list);
        LAUNCHED("gather");
        final_kernel<<<1, FINAL_THREADS, 0, s>>>(false, sorted, g, *p, unit, st, list, w,
                                                 block_sum, block_last, out_id);
        LAUNCHED("final");
        return true;
    }
    /* path V */
    prep_kernel<2><<<nb, CHUNK_THREADS, 0, s>>>(logits, fl, pen, g, p->top_k, keys, st, hist);
    LAUNCHED("prep");
    if (p->top_k > 0 || p->top_p < 1.0f) {
        size_t bytes = L.sort_bytes;
        if (!qk_ok(cub::DeviceRadixSort::SortKeysDescending(base + L.sort_temp, bytes,
                                                            (const u64 *)keys, sorted, vocab, 0,
                                                            g.nbits, s),
                   "qk_sample: sort", err))
            return false;
        LAUNCHED("sort");
    }
    if (p->top_p < 1.0f) {
        topp_weights_kernel<<<nb, CHUNK_THREADS, 0, s>>>(sorted, g, p->top_k, p->top_p, st, w,
                                                         block_sum);
        LAUNCHED("topp_weights");
        topp_cut_kernel<<<1, FINAL_THREADS, 0, s>>>(g, p->top_k, p->top_p, st, w, block_sum);
        LAUNCHED("topp_cut");
    }
    weights_kernel<<<nb, CHUNK_THREADS, 0, s>>>(keys, sorted, g, *p, st, w, block_sum, block_last,
                                                list);
    LAUNCHED("weights");
    final_kernel<<<1, FINAL_THREADS, 0, s>>>(true, sorted, g, *p, unit, st, list, w, block_sum,
                                             block_last, out_id);
    LAUNCHED("final");
    return true;
}
