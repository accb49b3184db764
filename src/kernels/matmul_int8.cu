/* LLM.int8 on the GPU, the function src/cpu/matmul.c computes (bitsandbytes'
 * Linear8bitLt, bnb-format.md §5), bit for bit:
 *  - the activations are quantized exactly as qmatmul_int8_quantize_acts:
 *    outlier columns (|x16| >= threshold in any row) are flagged, listed in
 *    ascending order by one block, every row gets its absmax over elements
 *    below the threshold and round_half_even(x16 · (127 / absmax)) with IEEE
 *    division and outlier columns zeroed;
 *  - the int8 product is an exact int32 sum (dp4a here, cuBLAS' int8 GEMM in
 *    matmul.cu; integer sums do not depend on their order);
 *  - the output assembly repeats the CPU's operations one by one with
 *    explicitly rounded intrinsics (nothing is contracted into an FMA except
 *    the one fmaf bitsandbytes itself uses for an f16 bias), and the outlier
 *    columns are summed in the same ascending order.
 * So the result equals qmatmul's exactly; the test checks bitwise equality. */
#include <string.h>

#include "kernels/matmul_parts.cuh"

namespace {

constexpr int I8_WARPS = 4, I8_ROWS = 4, I8_THREADS = I8_WARPS * 32;

__device__ __forceinline__ float round_f16(float v) { return __half2float(__float2half_rn(v)); }

/* ---- activation quantizer ------------------------------------------------- */

/* flags[k] |= 1 where |x16[r, k]| >= thr for a row r of this block's 64. */
__global__ void i8_flags(const float *__restrict__ x, int m, uint64_t K, float thr,
                         unsigned *flags)
{
    uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K)
        return;
    int r0 = blockIdx.y * 64, r1 = min(m, r0 + 64);
    bool any = false;
    for (int r = r0; r < r1; r++)
        any |= fabsf(round_f16(x[(uint64_t)r * K + k])) >= thr;
    if (any)
        atomicOr(flags + k, 1u);
}

/* The flagged columns in ascending order: thread t counts a contiguous span,
 * a block-wide exclusive scan gives each span its first output slot. */
__global__ void __launch_bounds__(1024)
    i8_compact(const unsigned *__restrict__ flags, uint64_t K, unsigned *ocols, unsigned *nout)
{
    __shared__ unsigned warp_sum[32];
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const uint64_t per = (K + 1023) / 1024;
    const uint64_t beg = min(K, (uint64_t)t * per), end = min(K, beg + per);
    unsigned cnt = 0;
    for (uint64_t k = beg; k < end; k++)
        cnt += flags[k] != 0;
    unsigned incl = cnt;
    for (int off = 1; off < 32; off <<= 1) {
        unsigned v = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off)
            incl += v;
    }
    if (lane == 31)
        warp_sum[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        unsigned s = warp_sum[lane];
        for (int off = 1; off < 32; off <<= 1) {
            unsigned v = __shfl_up_sync(0xffffffffu, s, off);
            if (lane >= off)
                s += v;
        }
        warp_sum[lane] = s; /* inclusive over warps */
    }
    __syncthreads();
    unsigned pos = incl - cnt + (warp ? warp_sum[warp - 1] : 0);
    for (uint64_t k = beg; k < end; k++)
        if (flags[k])
            ocols[pos++] = (unsigned)k;
    if (t == 1023)
        *nout = pos;
}

/* One block per row: sca = absmax below the threshold, then ca. */
__global__ void __launch_bounds__(256)
    i8_quant_rows(const float *__restrict__ x, uint64_t K, float thr,
                  const unsigned *__restrict__ flags, int8_t *ca, float *sca)
{
    __shared__ float wmax[8];
    const float *xr = x + (uint64_t)blockIdx.x * K;
    int8_t *cr = ca + (uint64_t)blockIdx.x * K;
    const float lim = thr > 0.0f ? thr : INFINITY;
    float amax = 0.0f;
    for (uint64_t k = threadIdx.x; k < K; k += blockDim.x) {
        float a = fabsf(round_f16(xr[k]));
        a = a < lim ? a : 0.0f; /* also NaN -> 0 */
        amax = fmaxf(amax, a);
    }
    for (int off = 16; off > 0; off >>= 1)
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    if ((threadIdx.x & 31) == 0)
        wmax[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = wmax[0];
    for (int i = 1; i < (int)(blockDim.x >> 5); i++)
        amax = fmaxf(amax, wmax[i]);
    /* amax 0: scale inf, 0 · inf = NaN -> 0, as on the CPU */
    const float scale = __fdiv_rn(127.0f, amax);
    for (uint64_t k = threadIdx.x; k < K; k += blockDim.x) {
        float v = __fmul_rn(round_f16(xr[k]), scale);
        v = v == v ? v : 0.0f;
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v; /* only outliers get here */
        cr[k] = flags[k] ? (int8_t)0 : (int8_t)__float2int_rn(v);
    }
    if (threadIdx.x == 0)
        sca[blockIdx.x] = amax;
}

/* The whole quantizer in one block for up to QK_GEMV_MAX_M rows and
 * IQ_SLABS * 1024 columns (decode, where four launches would cost more than
 * the work). Thread t owns column t of every 1024-column slab, so warp
 * loads and stores are contiguous, and it loads all its columns of a row
 * before using any (one memory round trip per row and pass):
 *  - pass 1 takes the row maxima below the threshold and a bit per slab
 *    for the thread's outlier columns (|x16| >= thr in any row);
 *  - per slab, a ballot counts each warp's outliers; one warp scans the
 *    counts in (slab, warp) order, which is ascending column order, into
 *    each warp's first slot of the outlier list;
 *  - pass 2 lists the outliers (slot: the warp's first + the flagged lanes
 *    below) and quantizes (for m = 1 from the values still in registers).
 * The earlier form, each thread walking ceil(K / 1024) contiguous columns
 * with a dependent load per step, took 9 us at K = 4096 and 30 us at
 * K = 18176 on an H100 (ncu), more than the GEMV after it. */
constexpr int IQ_THREADS = 1024, IQ_SLABS = 32;

__global__ void __launch_bounds__(IQ_THREADS)
    i8_quant_small(const float *__restrict__ x, int m, uint64_t K, float thr, unsigned *flags,
                   unsigned *ocols, unsigned *nout, int8_t *ca, float *sca)
{
    qk_wait_prior(); /* a programmatic dependent: the kernel before is done */
    qk_launch_dependents(); /* the GEMV after it may start loading weights */
    __shared__ unsigned first[IQ_SLABS][32]; /* outliers per (slab, warp), then first slots */
    __shared__ float wmax[32][QK_GEMV_MAX_M], scale[QK_GEMV_MAX_M];
    __shared__ unsigned total;
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const bool outliers = thr > 0.0f;
    const float lim = outliers ? thr : INFINITY;
    const int slabs = (int)((K + IQ_THREADS - 1) / IQ_THREADS);
    float v[IQ_SLABS];
    uint32_t fm = 0; /* bit j: column j * 1024 + t is an outlier column */
    for (int i = 0; i < m; i++) {
        const float *xr = x + (uint64_t)i * K;
#pragma unroll
        for (int j = 0; j < IQ_SLABS; j++) {
            const uint64_t k = (uint64_t)j * IQ_THREADS + t;
            v[j] = k < K ? xr[k] : 0.0f; /* past K: 0, which changes nothing */
        }
        float amax = 0.0f;
#pragma unroll
        for (int j = 0; j < IQ_SLABS; j++) {
            const float a = fabsf(round_f16(v[j]));
            if (outliers && a >= thr)
                fm |= 1u << j;
            amax = fmaxf(amax, a < lim ? a : 0.0f); /* also NaN -> 0 */
        }
        for (int off = 16; off > 0; off >>= 1)
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
        if (lane == 0)
            wmax[warp][i] = amax;
    }
#pragma unroll
    for (int j = 0; j < IQ_SLABS; j++)
        if (j < slabs) {
            const uint64_t k = (uint64_t)j * IQ_THREADS + t;
            const bool f = (fm >> j) & 1u;
            const unsigned b = __ballot_sync(0xffffffffu, f);
            if (lane == 0)
                first[j][warp] = __popc(b);
            if (k < K)
                flags[k] = f;
        }
    __syncthreads();
    if (warp == 0) { /* exclusive scan of the counts, slab by slab */
        unsigned run = 0;
        for (int j = 0; j < slabs; j++) {
            const unsigned c = first[j][lane];
            unsigned incl = c;
            for (int off = 1; off < 32; off <<= 1) {
                const unsigned u = __shfl_up_sync(0xffffffffu, incl, off);
                if (lane >= off)
                    incl += u;
            }
            first[j][lane] = run + incl - c;
            run += __shfl_sync(0xffffffffu, incl, 31);
        }
        if (lane == 0)
            total = run;
    } else if (warp == 1 && lane < m) {
        float a = 0.0f;
        for (int j = 0; j < 32; j++)
            a = fmaxf(a, wmax[j][lane]);
        sca[lane] = a;
        scale[lane] = __fdiv_rn(127.0f, a); /* 0: inf, and 0 · inf = NaN -> 0 below */
    }
    __syncthreads();
    const unsigned below = (1u << lane) - 1u;
#pragma unroll
    for (int j = 0; j < IQ_SLABS; j++)
        if (j < slabs) {
            const bool f = (fm >> j) & 1u;
            const unsigned b = __ballot_sync(0xffffffffu, f);
            if (f)
                ocols[first[j][warp] + __popc(b & below)] = (unsigned)(j * IQ_THREADS + t);
        }
    for (int i = 0; i < m; i++) {
        const float *xr = x + (uint64_t)i * K;
        if (m > 1) /* for m = 1, v still holds the row */
#pragma unroll
            for (int j = 0; j < IQ_SLABS; j++) {
                const uint64_t k = (uint64_t)j * IQ_THREADS + t;
                v[j] = k < K ? xr[k] : 0.0f;
            }
        const float sc = scale[i];
        int8_t *cr = ca + (uint64_t)i * K;
#pragma unroll
        for (int j = 0; j < IQ_SLABS; j++) {
            const uint64_t k = (uint64_t)j * IQ_THREADS + t;
            if (k < K) {
                float q = __fmul_rn(round_f16(v[j]), sc);
                q = q == q ? q : 0.0f;
                q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q; /* only outliers get here */
                cr[k] = (fm >> j) & 1u ? (int8_t)0 : (int8_t)__float2int_rn(q);
            }
        }
    }
    if (t == 0)
        *nout = total;
}

/* ---- output assembly -------------------------------------------------------- */

/* Output (mi, n) from its exact int32 product as src/cpu/matmul.c int8_task
 * has it before the outlier columns: int8_mm_dequant, the bias, in T. */
__device__ __forceinline__ float i8_base_s(const mm_weight &w, int32_t acc, float sca, uint64_t n,
                                           int T, const mm_epi &e)
{
    const float v = __fmul_rn(__fmul_rn(__int2float_rn(acc), sca), w.scb[n]);
    const float b = mm_bias(e, n);
    float y16;
    if (e.bias && T == QDT_F16) { /* bitsandbytes fuses an f16 bias */
        y16 = round_f16(__fmaf_rn(v, MM_INV16129, b));
    } else {
        y16 = round_f16(__fmul_rn(v, MM_INV16129));
        if (e.bias)
            y16 = round_f16(__fadd_rn(y16, b));
    }
    return qk_round(y16, (qdtype)T);
}

__device__ __forceinline__ float i8_base(const mm_weight &w, int32_t acc, int mi, uint64_t n,
                                         const mm_i8acts &a, int T, const mm_epi &e)
{
    return i8_base_s(w, acc, a.sca[mi], n, T, e);
}

/* Outlier column o of weight row n as T: dequant(CB[n, o]).to(T). */
__device__ __forceinline__ float i8_outlier_w(const mm_weight &w, uint64_t n, unsigned o, int T)
{
    const float cb = (float)((const int8_t *)w.data)[n * w.K + o];
    return qk_round(__fmul_rn(__fmul_rn(cb, w.scb[n]), MM_INV127), (qdtype)T);
}

/* The finished output from i8_base's yt and the outlier sum s (nout > 0:
 * addmm in T), rounded to round_to. */
__device__ __forceinline__ float i8_final(float yt, float s, unsigned nout, int T,
                                          const mm_epi &e)
{
    if (nout)
        yt = qk_round(__fadd_rn(yt, s), (qdtype)T);
    return qk_round(yt, (qdtype)e.round_to);
}

/* Output (mi, n) from its exact int32 product, as src/cpu/matmul.c int8_task
 * and then round_to (one thread, outlier columns summed in ascending order). */
__device__ float i8_output(const mm_weight &w, int32_t acc, int mi, uint64_t n,
                           const float *__restrict__ x, const mm_i8acts &a, unsigned nout, int T,
                           const mm_epi &e)
{
    const float yt = i8_base(w, acc, mi, n, a, T, e);
    const float *xr = x + (uint64_t)mi * w.K;
    float s = 0.0f; /* addmm(y, X[:, O], dequant(CB[:, O]).to(T)ᵀ), columns ascending */
    for (unsigned j = 0; j < nout; j++) {
        const unsigned o = a.ocols[j];
        s = __fadd_rn(s, __fmul_rn(qk_round(xr[o], (qdtype)T), i8_outlier_w(w, n, o, T)));
    }
    return i8_final(yt, s, nout, T, e);
}

/* ---- decode ---------------------------------------------------------------- */

/* As matmul_gemv.cu's fast kernel: a block owns G groups of I8_ROWS weight
 * rows and S warps share a group, warp j of it taking every S-th 512-byte
 * slice of the columns; for m <= 4 (AHEAD) each lane loads its first
 * vectors before x is staged and its next ones before the current ones are
 * used. For m > 4 the accumulators leave no registers for that (measured
 * slower): one warp per group, loads as used. Lane l reads 16-byte vectors
 * (16 int8 values) of the group's rows; the quantized activations are
 * staged in shared memory (lanes read consecutive 16 bytes: no bank
 * conflicts), 4 dp4a per vector and x row. The slices' int32 sums are added
 * at the end: exact in any order, so every (G, S) gives the same bits.
 *
 * The kernel is bound by latency, not by instructions: its time hardly
 * grows with the rows while the blocks fit on the GPU at once, so (G, S) is
 * chosen per product (i8_pick) to put as many warps to work as fit in one
 * wave, each with as few slices as possible. */
/* Activation columns per shared-memory tile: 32 KiB of activations for
 * m <= 4 (for m = 1 every model's x in one tile, so the weight stream never
 * drains at a tile barrier). */
__host__ __device__ constexpr int i8_kt(int m) { return m <= 4 ? 32768 / m / 16 * 16 : 4096; }

template <int M, int G, int S> struct i8_geom {
    static constexpr bool AHEAD = M <= 4;
    static constexpr int KT = i8_kt(M);
    static constexpr int THREADS = G * S * 32;
};

__device__ __forceinline__ uint32_t i8_word(const uint4 &v, int i)
{
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* The vectors of rows row0.. at column col (zero past N). */
__device__ __forceinline__ void i8_load(const int8_t *cb, uint64_t N, uint64_t K, uint64_t row0,
                                        uint64_t col, uint4 v[I8_ROWS])
{
#pragma unroll
    for (int r = 0; r < I8_ROWS; r++)
        v[r] = row0 + r < N ? __ldg(reinterpret_cast<const uint4 *>(cb + (row0 + r) * K + col))
                            : make_uint4(0, 0, 0, 0);
}

/* ---- decode with the quantizer fused in (m <= 4, K <= i8_kt(m), I8_FUSE_KMAX) -
 *
 * Each block quantizes x itself while staging it, exactly as
 * i8_quant_small does (the same operations per element, so the same
 * bits), and keeps the outlier columns as a bit set and, up to I8_OCAP of
 * them, as an ascending list: no quantizer kernel runs before the GEMV.
 * That kernel, one block between two dependents, cost ~9.5 us per product
 * on an H100 whatever its K (docs/perf.md). */
constexpr int I8_OCAP = 256;
/* Past this many columns the blocks' own quantization (several dependent
 * L2 round trips before the first dot product, the weight stream idle)
 * costs more than the separate kernel: on an H100 (docs/perf.md) fusing
 * saved 4.1 us at K 4096 and 4.4 us at 11008 but lost 4.7 us at 18176. */
constexpr uint64_t I8_FUSE_KMAX = 12288;
constexpr int I8_FUSE_WORDS = (int)(I8_FUSE_KMAX / 32);
constexpr int I8_MAX_BLOCK_ROWS = 4 * I8_ROWS; /* the shapes' G <= 4 */

template <int M, int THREADS> struct i8_fused_smem {
    static constexpr int WORDS =
        (i8_kt(M) + 31) / 32 < I8_FUSE_WORDS ? (i8_kt(M) + 31) / 32 : I8_FUSE_WORDS;
    unsigned fbits[WORDS]; /* outlier bit per column */
    unsigned wpre[WORDS];  /* outliers in the words before */
    unsigned olist[I8_OCAP]; /* the first I8_OCAP outliers, ascending */
    /* ocb[r][j]: the weight byte of the block's row r at outlier column
     * olist[j], kept as the row's vectors stream past (j < I8_OCAP) */
    int8_t ocb[I8_MAX_BLOCK_ROWS][I8_OCAP];
    float xo[M][I8_OCAP]; /* x[i, olist[j]] in the compute dtype */
    float wmax[THREADS / 32][M];
    unsigned wtot[THREADS / 32]; /* outlier count per warp's words */
    float sca[M], scale[M];
    unsigned nout;
};

/* float4s of x each thread has in flight at once: every block pays the
 * latency of one L2 read per batch before it can start its dot products. */
template <int M> struct i8_qv {
    static constexpr int V = M == 1 ? 4 : M == 2 ? 2 : 1;
};

/* The V float4s of each of x's M rows that this thread takes in the batch
 * at float4 `base` of a row (nv float4s): r[v][i] = row i's float4
 * base + v * THREADS + threadIdx.x, zero past the row. All loads are issued
 * before any is used. */
template <int M, int V, int THREADS>
__device__ __forceinline__ void i8_load_batch(const float4 *__restrict__ x4, int nv, int base,
                                              float4 (&r)[V][M])
{
#pragma unroll
    for (int v = 0; v < V; v++) {
        const int g = base + v * THREADS + (int)threadIdx.x;
#pragma unroll
        for (int i = 0; i < M; i++)
            r[v][i] = g < nv ? __ldg(x4 + (uint64_t)i * nv + g) : make_float4(0, 0, 0, 0);
    }
}

/* cs[i * KT + k] = the int8 activations of x[i, k] for k < K (K <= KT,
 * K % 16 == 0, x 16-byte aligned), and the block's outlier columns and
 * row maxima in f. Every thread of the block calls it (barriers inside). */
template <int M, int THREADS, int KT>
__device__ void i8_quantize_tile(const float *__restrict__ x, uint64_t K, float thr, int8_t *cs,
                                 i8_fused_smem<M, THREADS> &f)
{
    constexpr int V = i8_qv<M>::V;
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const bool outliers = thr > 0.0f;
    const float lim = outliers ? thr : INFINITY;
    const int nv = (int)(K / 4); /* float4s per row */
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    float amax[M];
#pragma unroll
    for (int i = 0; i < M; i++)
        amax[i] = 0.0f;
    /* Pass 1: row maxima below the threshold and the outlier bits. Lane l
     * of a warp holds columns 4(G0 + l) .. +3, so lanes 8q .. 8q + 7 make up
     * the bit word G0 / 8 + q. */
    for (int base = 0; base < nv; base += V * THREADS) {
        float4 r[V][M];
        i8_load_batch<M, V, THREADS>(x4, nv, base, r);
#pragma unroll
        for (int v = 0; v < V; v++) {
            unsigned nib = 0;
#pragma unroll
            for (int i = 0; i < M; i++) {
                const float e[4] = {r[v][i].x, r[v][i].y, r[v][i].z, r[v][i].w};
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const float a = fabsf(round_f16(e[c]));
                    nib |= (outliers && a >= thr) ? 1u << c : 0u;
                    amax[i] = fmaxf(amax[i], a < lim ? a : 0.0f); /* also NaN -> 0 */
                }
            }
            unsigned wd = nib << (4 * (lane & 7));
            if (__any_sync(0xffffffffu, nib != 0)) {
                wd |= __shfl_xor_sync(0xffffffffu, wd, 1);
                wd |= __shfl_xor_sync(0xffffffffu, wd, 2);
                wd |= __shfl_xor_sync(0xffffffffu, wd, 4);
            }
            const int g0 = base + v * THREADS + warp * 32;
            if ((lane & 7) == 0 && g0 + lane < nv)
                f.fbits[g0 / 8 + lane / 8] = wd;
        }
    }
#pragma unroll
    for (int i = 0; i < M; i++) {
        float v = amax[i];
        for (int off = 16; off > 0; off >>= 1)
            v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
        if (lane == 0)
            f.wmax[warp][i] = v;
    }
    __syncthreads();
    /* The ascending list: thread t counts the outliers of its run of words,
     * an exclusive scan over the block gives where they go. */
    const int words = (int)((K + 31) / 32), wpt = (words + THREADS - 1) / THREADS;
    const int w0 = min(t * wpt, words), w1 = min(w0 + wpt, words);
    unsigned c = 0;
    for (int wd = w0; wd < w1; wd++)
        c += __popc(f.fbits[wd]);
    unsigned incl = c;
    for (int off = 1; off < 32; off <<= 1) {
        const unsigned u = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off)
            incl += u;
    }
    if (lane == 31)
        f.wtot[warp] = incl;
    if (warp == 0 && lane < M) {
        float a = 0.0f;
        for (int j = 0; j < THREADS / 32; j++)
            a = fmaxf(a, f.wmax[j][lane]);
        f.sca[lane] = a;
        f.scale[lane] = __fdiv_rn(127.0f, a); /* 0: inf, and 0 · inf = NaN -> 0 below */
    }
    __syncthreads();
    unsigned pos = incl - c;
    for (int j = 0; j < warp; j++)
        pos += f.wtot[j];
    if (t == THREADS - 1)
        f.nout = pos + c;
    for (int wd = w0, run = (int)pos; wd < w1; wd++) {
        f.wpre[wd] = (unsigned)run;
        run += __popc(f.fbits[wd]);
    }
    for (int wd = w0; wd < w1 && pos < I8_OCAP; wd++)
        for (unsigned rest = f.fbits[wd]; rest && pos < I8_OCAP; rest &= rest - 1)
            f.olist[pos++] = (unsigned)wd * 32 + (__ffs(rest) - 1);
    /* Pass 2: x again (from L1 now), quantized four columns to a store. */
    for (int base = 0; base < nv; base += V * THREADS) {
        float4 r[V][M];
        i8_load_batch<M, V, THREADS>(x4, nv, base, r);
#pragma unroll
        for (int v = 0; v < V; v++) {
            const int g = base + v * THREADS + t;
            if (g >= nv)
                continue;
            const unsigned nib = (f.fbits[g / 8] >> (4 * (g & 7))) & 15u;
#pragma unroll
            for (int i = 0; i < M; i++) {
                const float e[4] = {r[v][i].x, r[v][i].y, r[v][i].z, r[v][i].w};
                const float sc = f.scale[i];
                unsigned packed = 0;
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    float q = __fmul_rn(round_f16(e[c]), sc);
                    q = q == q ? q : 0.0f;
                    q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q; /* only outliers get here */
                    const int qi = (nib >> c) & 1u ? 0 : __float2int_rn(q);
                    packed |= (unsigned)(qi & 0xff) << (8 * c);
                }
                *reinterpret_cast<unsigned *>(cs + i * KT + 4 * g) = packed;
            }
        }
    }
}

/* f.xo from x and f.olist (all threads; a barrier before any reads it):
 * the outputs' outlier loop then reads shared memory only. */
template <int M, int THREADS>
__device__ void i8_stage_outliers(const float *__restrict__ x, uint64_t K, int T,
                                  i8_fused_smem<M, THREADS> &f)
{
    const int n = (int)min(f.nout, (unsigned)I8_OCAP);
    for (int i = threadIdx.x; i < M * n; i += THREADS) {
        const int mi = i / n, j = i - mi * n;
        f.xo[mi][j] = qk_round(x[(uint64_t)mi * K + f.olist[j]], (qdtype)T);
    }
}

/* i8_output with the block's own quantization (i8_quantize_tile). */
template <int M, int THREADS>
__device__ float i8_output_fused(const mm_weight &w, int32_t acc, int mi, uint64_t n, int rloc,
                                 const float *__restrict__ x, const i8_fused_smem<M, THREADS> &f,
                                 int T, const mm_epi &e)
{
    const float yt = i8_base_s(w, acc, f.sca[mi], n, T, e);
    const float *xr = x + (uint64_t)mi * w.K;
    const unsigned nout = f.nout;
    float s = 0.0f; /* the outlier columns in ascending order, as i8_output */
    if (nout <= I8_OCAP) {
        /* everything from shared memory, unrolled: only the adds are a
         * chain (one dependent load pair per outlier took ~0.05 us each) */
        const float scb = w.scb[n];
        const int8_t *ob = f.ocb[rloc];
        const float *xo = f.xo[mi];
#pragma unroll 8
        for (unsigned j = 0; j < nout; j++) { /* the weight bytes from ocb: i8_outlier_w */
            const float wv = qk_round(__fmul_rn(__fmul_rn((float)ob[j], scb), MM_INV127), (qdtype)T);
            s = __fadd_rn(s, __fmul_rn(xo[j], wv));
        }
    } else {
        const int words = (int)((w.K + 31) / 32);
        for (int wd = 0; wd < words; wd++)
            for (unsigned rest = f.fbits[wd]; rest; rest &= rest - 1) {
                const unsigned o = (unsigned)wd * 32 + (__ffs(rest) - 1);
                s = __fadd_rn(s, __fmul_rn(qk_round(xr[o], (qdtype)T), i8_outlier_w(w, n, o, T)));
            }
    }
    return i8_final(yt, s, nout, T, e);
}

/* Up to MM_I8_JOBS products of one x and one threshold in one launch: job
 * j owns blocks [first[j], first[j + 1]). One launch rather than one per
 * product saves each later product its start (the blocks' x staging, or
 * quantization, and their first weight loads) and the earlier one's tail. */
struct i8_jobs {
    mm_weight w[MM_I8_JOBS];
    mm_epi e[MM_I8_JOBS];
    float *y[MM_I8_JOBS];
    unsigned first[MM_I8_JOBS + 1];
};

/* m = 1: 64 registers, so that 1024 threads of any shape fit per SM */
template <int M, int G, int S, bool FUSED = false>
__global__ void __launch_bounds__(i8_geom<M, G, S>::THREADS,
                                  M == 1 ? 1024 / i8_geom<M, G, S>::THREADS : 1)
    gemv_i8_fast(const __grid_constant__ i8_jobs jobs, const float *__restrict__ x, mm_i8acts a,
                 int T)
{
    static_assert(MM_I8_JOBS == 3, "the job choice below");
    using GEO = i8_geom<M, G, S>;
    constexpr int KT = GEO::KT, STEP = 32 * 16, SLICES = S;
    constexpr bool AHEAD = GEO::AHEAD;
    static_assert(!FUSED || AHEAD, "the fused quantizer is for m <= 4");
    qk_launch_dependents(); /* the kernel after it may be scheduled */
    extern __shared__ uint4 i8_smem[];
    __shared__ int part[G][32]; /* the other slices' sums */
    __shared__ i8_fused_smem<FUSED ? M : 1, FUSED ? GEO::THREADS : 32> fq;
    int8_t *cs = reinterpret_cast<int8_t *>(i8_smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp % G, slice = warp / G;
    /* With x quantized in the block, a block takes block-rows vb,
     * vb + gridDim.x, ... of all jobs (i8_launch makes the grid one wave):
     * x is quantized once per block, not once per block-row. */
    for (unsigned vb = blockIdx.x; vb < jobs.first[MM_I8_JOBS]; vb += gridDim.x) {
        const bool first = vb == blockIdx.x;
        const int job = vb < jobs.first[1] ? 0 : vb < jobs.first[2] ? 1 : 2;
        const mm_weight &w = jobs.w[job];
        const mm_epi &e = jobs.e[job];
        float *__restrict__ y = jobs.y[job];
        const uint64_t N = w.N, K = w.K;
        const uint64_t row0 = ((uint64_t)(vb - jobs.first[job]) * G + grp) * I8_ROWS;
        const bool active = row0 < N; /* idle warps still help stage x */
        const int8_t *cb = (const int8_t *)w.data;
        int acc[I8_ROWS][M];
        for (int r = 0; r < I8_ROWS; r++)
            for (int m = 0; m < M; m++)
                acc[r][m] = 0;
        for (uint64_t k0 = 0; k0 < K; k0 += KT) {
            const int kt = (int)min((uint64_t)KT, K - k0);
            int kk = lane * 16 + slice * STEP;
            uint4 cur[I8_ROWS];
            if (AHEAD && active && kk < kt) /* the weights do not wait for x */
                i8_load(cb, N, K, row0, k0 + kk, cur);
            __syncthreads(); /* also: the block-row before is done with fq and part */
            qk_wait_prior(); /* x, or its quantization, comes from the kernel before */
            if constexpr (FUSED) {
                if (first) /* the jobs share x and the threshold */
                    i8_quantize_tile<M, GEO::THREADS, KT>(x, K, w.threshold, cs, fq); /* K <= KT */
            } else {
                const int q = kt / 16;
                for (int i = threadIdx.x; i < M * q; i += GEO::THREADS) {
                    int m = i / q, k = 16 * (i - m * q);
                    *reinterpret_cast<uint4 *>(cs + m * KT + k) =
                        *reinterpret_cast<const uint4 *>(a.ca + (uint64_t)m * K + k0 + k);
                }
            }
            __syncthreads();
            if (!active)
                continue;
            for (; kk < kt; kk += SLICES * STEP) {
                if (!AHEAD)
                    i8_load(cb, N, K, row0, k0 + kk, cur);
                uint4 nxt[I8_ROWS];
                const bool more = AHEAD && kk + SLICES * STEP < kt;
                if (more) /* keep the next vectors in flight while these are used */
                    i8_load(cb, N, K, row0, k0 + kk + SLICES * STEP, nxt);
                if constexpr (FUSED) { /* keep this vector's outlier bytes (K <= KT: k0 = 0) */
                    const unsigned word = fq.fbits[kk >> 5], sh = kk & 16;
                    for (unsigned bits = (word >> sh) & 0xffffu; bits; bits &= bits - 1) {
                        const int b = __ffs(bits) - 1;
                        const unsigned rank =
                            fq.wpre[kk >> 5] + __popc(word & ((1u << (sh + b)) - 1u));
                        if (rank < I8_OCAP)
    #pragma unroll
                            for (int r = 0; r < I8_ROWS; r++)
                                fq.ocb[grp * I8_ROWS + r][rank] =
                                    (int8_t)(i8_word(cur[r], b >> 2) >> (8 * (b & 3)));
                    }
                }
    #pragma unroll
                for (int m = 0; m < M; m++) {
                    uint4 c = *reinterpret_cast<const uint4 *>(cs + m * KT + kk);
    #pragma unroll
                    for (int r = 0; r < I8_ROWS; r++) {
                        int s = acc[r][m];
                        s = __dp4a((int)cur[r].x, (int)c.x, s);
                        s = __dp4a((int)cur[r].y, (int)c.y, s);
                        s = __dp4a((int)cur[r].z, (int)c.z, s);
                        s = __dp4a((int)cur[r].w, (int)c.w, s);
                        acc[r][m] = s;
                    }
                }
                if (more) {
    #pragma unroll
                    for (int r = 0; r < I8_ROWS; r++)
                        cur[r] = nxt[r];
                }
            }
        }
        /* Lane r*M + m assembles output (row0 + r, m) in slice 0, after adding
         * the other slices' sums: one copy of the assembly code rather than one
         * per unrolled (r, m). */
        const int mine = mm_slices_sum<SLICES>(acc, lane, grp, slice, part);
        if constexpr (FUSED) {
            if (first) /* here, not before the loop: no registers held across it */
                i8_stage_outliers<M, GEO::THREADS>(x, K, T, fq);
            __syncthreads(); /* every slice's outlier bytes are in fq.ocb, and fq.xo */
        }
        const int r = lane / M, m = lane % M;
        if (slice == 0 && active && r < I8_ROWS && row0 + r < N) {
            const uint64_t at = (uint64_t)m * N + row0 + r;
            if constexpr (FUSED)
                y[at] = mm_post(
                    e, i8_output_fused(w, mine, m, row0 + r, grp * I8_ROWS + r, x, fq, T, e), at);
            else
                y[at] = mm_post(e, i8_output(w, mine, m, row0 + r, x, a, *a.nout, T, e), at);
        }
    }
}

/* Any cols: a warp per weight row, byte loads. */
__global__ void __launch_bounds__(I8_THREADS)
    gemv_i8_any(mm_weight w, const float *__restrict__ x, int m, mm_i8acts a, int T, mm_epi e,
                float *__restrict__ y)
{
    const int lane = threadIdx.x & 31;
    const uint64_t N = w.N, K = w.K;
    const uint64_t row = (uint64_t)blockIdx.x * I8_WARPS + (threadIdx.x >> 5);
    if (row >= N)
        return;
    const int8_t *cbr = (const int8_t *)w.data + row * K;
    int acc[QK_GEMV_MAX_M];
#pragma unroll
    for (int i = 0; i < QK_GEMV_MAX_M; i++)
        acc[i] = 0;
    for (uint64_t k = lane; k < K; k += 32) {
        int wv = cbr[k];
#pragma unroll
        for (int i = 0; i < QK_GEMV_MAX_M; i++)
            if (i < m)
                acc[i] += wv * (int)a.ca[(uint64_t)i * K + k];
    }
#pragma unroll
    for (int i = 0; i < QK_GEMV_MAX_M; i++)
        for (int off = 16; off > 0; off >>= 1)
            acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
    int mine = 0;
#pragma unroll
    for (int i = 0; i < QK_GEMV_MAX_M; i++)
        if (lane == i)
            mine = acc[i];
    if (lane < m) {
        const uint64_t at = (uint64_t)lane * N + row;
        y[at] = mm_post(e, i8_output(w, mine, lane, row, x, a, *a.nout, T, e), at);
    }
}

/* ---- prefill ------------------------------------------------------------------ */

/* Tiled int32 GEMM for any K: 64 weight rows x 64 activation rows per block,
 * 32-byte k-slices packed into words in shared memory (zero past the edges),
 * 4x4 outputs per thread, dp4a. Used where cuBLAS' int8 GEMM does not apply
 * (cols not a multiple of 4). */
constexpr int TG_N = 64, TG_M = 64, TG_K = 32, TG_W = TG_K / 4 + 1; /* words per row, padded */

__device__ __forceinline__ int pack4(const int8_t *p, uint64_t k, uint64_t K, bool row_ok)
{
    unsigned w = 0;
    for (int j = 0; j < 4; j++)
        if (row_ok && k + j < K)
            w |= (unsigned)(uint8_t)p[k + j] << (8 * j);
    return (int)w;
}

__global__ void __launch_bounds__(256)
    i8_gemm_tiled(const int8_t *__restrict__ cb, uint64_t K, uint64_t n0, uint64_t nc, int m,
                  const int8_t *__restrict__ ca, int32_t *acc, uint64_t ldc)
{
    __shared__ int ws[TG_N][TG_W];
    __shared__ int as[TG_M][TG_W];
    const int t = threadIdx.x, tx = t % 16, ty = t / 16;
    const uint64_t nb = (uint64_t)blockIdx.x * TG_N;
    const int mb = blockIdx.y * TG_M;
    int c[4][4] = {};
    for (uint64_t kb = 0; kb < K; kb += TG_K) {
        for (int i = t; i < TG_N * (TG_K / 4); i += 256) {
            int rr = i / (TG_K / 4), kw = i % (TG_K / 4);
            uint64_t n = nb + rr;
            int mi = mb + rr;
            ws[rr][kw] = pack4(cb + (n0 + (n < nc ? n : 0)) * K, kb + 4 * kw, K, n < nc);
            as[rr][kw] = pack4(ca + (uint64_t)(mi < m ? mi : 0) * K, kb + 4 * kw, K, mi < m);
        }
        __syncthreads();
#pragma unroll
        for (int kw = 0; kw < TG_K / 4; kw++) {
            int av[4], wv[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                av[i] = as[ty * 4 + i][kw], wv[i] = ws[tx * 4 + i][kw];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    c[i][j] = __dp4a(av[i], wv[j], c[i][j]);
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int mi = mb + ty * 4 + i;
            uint64_t n = nb + tx * 4 + j;
            if (mi < m && n < nc)
                acc[(uint64_t)mi * ldc + n] = c[i][j];
        }
}

/* Prefill outputs [m, nc] from the int32 products: a block takes FT_M rows
 * of x and FT_N weight rows; the outlier columns come in chunks of FT_J, their
 * x values (in T) and dequantized weights staged in shared memory once per
 * block instead of once per output (the weights are a gather across rows,
 * which per output made the whole int8 prefill crawl), and each output still
 * sums them one by one in ascending order as the CPU does. */
constexpr int FT_M = 32, FT_N = 64, FT_J = 32, FT_THREADS = 256;
constexpr int FT_TM = 2, FT_TN = 4; /* outputs per thread: 16 x 16 threads cover the tile */

__global__ void __launch_bounds__(FT_THREADS)
    i8_finish(mm_weight w, uint64_t n0, uint64_t nc, int m, const int32_t *__restrict__ acc,
              uint64_t ldc, const float *__restrict__ x, mm_i8acts a, int T, mm_epi e,
              float *__restrict__ y)
{
    __shared__ float xs[FT_M][FT_J + 1], wsh[FT_N][FT_J + 1];
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const int mb = blockIdx.y * FT_M;
    const uint64_t nb = (uint64_t)blockIdx.x * FT_N;
    const unsigned nout = *a.nout;
    float s[FT_TM][FT_TN];
    for (int i = 0; i < FT_TM; i++)
        for (int k = 0; k < FT_TN; k++)
            s[i][k] = 0.0f;
    for (unsigned j0 = 0; j0 < nout; j0 += FT_J) {
        const int jc = (int)min((unsigned)FT_J, nout - j0);
        for (int idx = tid; idx < FT_M * FT_J; idx += FT_THREADS) {
            const int i = idx / FT_J, jj = idx % FT_J;
            float v = 0.0f;
            if (mb + i < m && jj < jc)
                v = qk_round(x[(uint64_t)(mb + i) * w.K + a.ocols[j0 + jj]], (qdtype)T);
            xs[i][jj] = v;
        }
        for (int idx = tid; idx < FT_N * FT_J; idx += FT_THREADS) {
            const int r = idx / FT_J, jj = idx % FT_J;
            float v = 0.0f;
            if (nb + r < nc && jj < jc)
                v = i8_outlier_w(w, n0 + nb + r, a.ocols[j0 + jj], T);
            wsh[r][jj] = v;
        }
        __syncthreads();
        for (int jj = 0; jj < jc; jj++)
#pragma unroll
            for (int i = 0; i < FT_TM; i++)
#pragma unroll
                for (int k = 0; k < FT_TN; k++)
                    s[i][k] = __fadd_rn(s[i][k],
                                        __fmul_rn(xs[ty * FT_TM + i][jj], wsh[tx * FT_TN + k][jj]));
        __syncthreads();
    }
    for (int i = 0; i < FT_TM; i++)
        for (int k = 0; k < FT_TN; k++) {
            const int mi = mb + ty * FT_TM + i;
            const uint64_t r = nb + (uint64_t)tx * FT_TN + k;
            if (mi < m && r < nc) {
                const float yt = i8_base(w, acc[(uint64_t)mi * ldc + r], mi, n0 + r, a, T, e);
                const uint64_t at = (uint64_t)mi * w.N + n0 + r;
                y[at] = mm_post(e, i8_final(yt, s[i][k], nout, T, e), at);
            }
        }
}

/* The (G, S) shapes of the m <= 4 kernel that i8_pick chooses from, and
 * the one kernel for m > 4. */
constexpr int I8_SHAPES = MM_I8_SHAPES;
constexpr int I8_SHAPE[I8_SHAPES][2] = {{4, 2}, {4, 4}, {2, 3}};

/* Kernel shape v for m rows of x (v < I8_SHAPES; m > 4 has shape 0 only),
 * with the quantizer fused in or not (m <= 4). */
template <int M, bool F> void *i8_kernel_of(int v)
{
    if constexpr (M > 4)
        return (void *)gemv_i8_fast<M, 4, 1>;
    else
        return v == 1   ? (void *)gemv_i8_fast<M, 4, 4, F>
               : v == 2 ? (void *)gemv_i8_fast<M, 2, 3, F>
                        : (void *)gemv_i8_fast<M, 4, 2, F>;
}

void *i8_kernel_for(int m, int v, bool fused)
{
    switch (m) {
    case 1: return fused ? i8_kernel_of<1, true>(v) : i8_kernel_of<1, false>(v);
    case 2: return fused ? i8_kernel_of<2, true>(v) : i8_kernel_of<2, false>(v);
    case 3: return fused ? i8_kernel_of<3, true>(v) : i8_kernel_of<3, false>(v);
    case 4: return fused ? i8_kernel_of<4, true>(v) : i8_kernel_of<4, false>(v);
    case 5: return i8_kernel_of<5, false>(v);
    case 6: return i8_kernel_of<6, false>(v);
    case 7: return i8_kernel_of<7, false>(v);
    default: return i8_kernel_of<8, false>(v);
    }
}

int i8_threads(int m, int v) { return m > 4 ? 4 * 32 : I8_SHAPE[v][0] * I8_SHAPE[v][1] * 32; }
int i8_rows(int m, int v) { return (m > 4 ? 4 : I8_SHAPE[v][0]) * I8_ROWS; }
size_t i8_smem_bytes(int m) { return (size_t)m * i8_kt(m); }

/* The shape for an N-row, K-column product: of the shapes whose blocks all
 * fit on the GPU at once (slots[v] blocks), the one that leaves each warp
 * the fewest 512-column steps; shape 0 where none fits. */
int i8_pick(const int *slots, int m, uint64_t N, uint64_t K)
{
    if (m > 4)
        return 0;
    const uint64_t steps = qk_div_up(K, (uint64_t)512);
    int best = 0;
    uint64_t best_steps = UINT64_MAX;
    for (int v = 0; v < I8_SHAPES; v++) {
        const uint64_t blocks = qk_div_up(N, (uint64_t)i8_rows(m, v));
        const uint64_t per_warp = qk_div_up(steps, (uint64_t)I8_SHAPE[v][1]);
        if (blocks <= (uint64_t)slots[v] && per_warp < best_steps)
            best = v, best_steps = per_warp;
    }
    return best;
}

} /* namespace */

bool mm_i8_fused(const mm_weight &w, const float *x, int m)
{
    return m <= 4 && w.K <= (uint64_t)i8_kt(m) && w.K <= I8_FUSE_KMAX && w.K % 16 == 0 &&
           (uintptr_t)w.data % 16 == 0 && (uintptr_t)x % 16 == 0;
}

bool mm_i8_plan(int sms, int slots[QK_GEMV_MAX_M][MM_I8_SHAPES], qerr *err)
{
    for (int m = 1; m <= QK_GEMV_MAX_M; m++)
        for (int v = 0; v < I8_SHAPES; v++) {
            slots[m - 1][v] = 0;
            if (m > 4 && v > 0) /* m > 4 has one kernel (i8_pick takes shape 0) */
                continue;
            int per_sm = 0;
            if (!qk_ok(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                           &per_sm, (const void *)i8_kernel_for(m, v, m <= 4), i8_threads(m, v),
                           i8_smem_bytes(m)),
                       "matmul: int8 GEMV occupancy", err))
                return false;
            slots[m - 1][v] = per_sm * sms;
        }
    return true;
}

namespace {

/* A programmatic dependent of the quantizer (or of the kernel that wrote
 * x): the blocks start and load their first weight vectors while it
 * finishes. */
cudaError_t i8_launch(int v, const mm_weight *ws, const mm_epi *es, float *const *ys, int count,
                      bool fused, const float *x, const mm_i8acts &a, int T, int m, int slots,
                      cudaStream_t s)
{
    i8_jobs jobs;
    memset(&jobs, 0, sizeof jobs);
    jobs.first[0] = 0;
    for (int j = 0; j < MM_I8_JOBS; j++) {
        const int src = j < count ? j : count - 1; /* unused jobs own no blocks */
        jobs.w[j] = ws[src], jobs.e[j] = es[src], jobs.y[j] = ys[src];
        jobs.first[j + 1] =
            jobs.first[j] + (j < count ? (unsigned)qk_div_up(ws[j].N, (uint64_t)i8_rows(m, v)) : 0);
    }
    void (*k)(i8_jobs, const float *, mm_i8acts, int) =
        (void (*)(i8_jobs, const float *, mm_i8acts, int))i8_kernel_for(m, v, fused);
    /* fused: at most one wave of blocks, each taking several block-rows */
    const unsigned total = jobs.first[MM_I8_JOBS];
    const unsigned grid = fused && slots > 0 && (unsigned)slots < total ? (unsigned)slots : total;
    return qk_launch_pdl(k, grid, i8_threads(m, v), i8_smem_bytes(m), s, jobs, x, a, T);
}

/* Whether the 16-byte GEMV takes w (else gemv_i8_any). */
bool i8_fast(const mm_weight &w, const float *x, int m, const mm_i8acts &a)
{
    return mm_i8_fused(w, x, m) ||
           (w.K % 16 == 0 && (uintptr_t)w.data % 16 == 0 && (uintptr_t)a.ca % 16 == 0);
}

} /* namespace */

bool mm_i8_quantize(const mm_weight &w, const float *x, int m, const mm_i8acts &a,
                    cudaStream_t s, qerr *err)
{
    const uint64_t K = w.K;
    if (m <= QK_GEMV_MAX_M && K <= (uint64_t)IQ_SLABS * IQ_THREADS) {
        return qk_ok(qk_launch_pdl(i8_quant_small, 1, IQ_THREADS, 0, s, x, m, K, w.threshold,
                                   a.flags, a.ocols, a.nout, a.ca, a.sca),
                     "matmul: i8_quant_small", err);
    }
    if (!qk_ok(cudaMemsetAsync(a.flags, 0, K * sizeof(unsigned), s), "matmul: int8 flags", err))
        return false;
    if (w.threshold > 0.0f) {
        dim3 grid(qk_div_up(K, 256), qk_div_up((uint64_t)m, 64));
        i8_flags<<<grid, 256, 0, s>>>(x, m, K, w.threshold, a.flags);
        if (!qk_launched("matmul: i8_flags", err))
            return false;
        i8_compact<<<1, 1024, 0, s>>>(a.flags, K, a.ocols, a.nout);
        if (!qk_launched("matmul: i8_compact", err))
            return false;
    } else if (!qk_ok(cudaMemsetAsync(a.nout, 0, sizeof(unsigned), s), "matmul: int8 nout",
                      err)) {
        return false;
    }
    i8_quant_rows<<<(unsigned)m, 256, 0, s>>>(x, K, w.threshold, a.flags, a.ca, a.sca);
    return qk_launched("matmul: i8_quant_rows", err);
}

bool mm_i8_gemv(const mm_weight *ws, const mm_epi *es, float *const *ys, int count,
                const float *x, int m, const mm_i8acts &a, qdtype T,
                const int slots[QK_GEMV_MAX_M][MM_I8_SHAPES], cudaStream_t s, qerr *err)
{
    /* one launch when every product takes the 16-byte kernel the same way */
    bool one = count <= MM_I8_JOBS;
    uint64_t rows = 0;
    for (int j = 0; j < count; j++) {
        one = one && i8_fast(ws[j], x, m, a) && mm_i8_fused(ws[j], x, m) == mm_i8_fused(ws[0], x, m);
        rows += ws[j].N;
    }
    if (one) {
        const int v = i8_pick(slots[m - 1], m, rows, ws[0].K);
        return qk_ok(i8_launch(v, ws, es, ys, count, mm_i8_fused(ws[0], x, m), x, a, T, m,
                               slots[m - 1][v], s),
                     "matmul: gemv_i8_fast", err);
    }
    for (int j = 0; j < count; j++) {
        const mm_weight &w = ws[j];
        if (i8_fast(w, x, m, a)) {
            const int v = i8_pick(slots[m - 1], m, w.N, w.K);
            if (!qk_ok(i8_launch(v, &w, &es[j], &ys[j], 1, mm_i8_fused(w, x, m), x, a, T, m,
                                 slots[m - 1][v], s),
                       "matmul: gemv_i8_fast", err))
                return false;
        } else {
            gemv_i8_any<<<qk_div_up(w.N, I8_WARPS), I8_THREADS, 0, s>>>(w, x, m, a, T, es[j], ys[j]);
            if (!qk_launched("matmul: gemv_i8_any", err))
                return false;
        }
    }
    return true;
}

bool mm_i8_gemm(const mm_weight &w, uint64_t n0, uint64_t nc, int m, const int8_t *ca,
                int32_t *acc, uint64_t ldc, cudaStream_t s, qerr *err)
{
    dim3 grid(qk_div_up(nc, TG_N), qk_div_up((uint64_t)m, TG_M));
    i8_gemm_tiled<<<grid, 256, 0, s>>>((const int8_t *)w.data, w.K, n0, nc, m, ca, acc, ldc);
    return qk_launched("matmul: i8_gemm_tiled", err);
}

bool mm_i8_finish(const mm_weight &w, uint64_t n0, uint64_t nc, int m, const int32_t *acc,
                  uint64_t ldc, const float *x, const mm_i8acts &a, qdtype T, const mm_epi &e,
                  float *y, cudaStream_t s, qerr *err)
{
    const dim3 grid(qk_div_up(nc, FT_N), qk_div_up((uint64_t)m, FT_M));
    i8_finish<<<grid, FT_THREADS, 0, s>>>(w, n0, nc, m, acc, ldc, x, a, T, e, y);
    return qk_launched("matmul: i8_finish", err);
}
