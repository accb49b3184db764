/* Decode GEMV (m <= QK_GEMV_MAX_M rows of x): fused dequantize + dot
 * products, the weight read once from memory for all m rows.
 *
 * Fast path (cols a multiple of the values in 16 bytes, data 16-byte
 * aligned; every real model shape):
 *  - a block owns GV_GROUPS * GV_ROWS consecutive weight rows; each group
 *    of GV_ROWS rows is shared by KS warps (2 where a tile holds at least 4
 *    warp steps, else 1), warp j taking every KS-th
 *    32-vector slice of the columns (more warps in flight than
 *    rows / GV_ROWS alone would give; their sums are added in a fixed
 *    order at the end). Lane l reads 16-byte vectors of each of the rows
 *    (E values per vector), the next vectors loaded before the current ones
 *    are used;
 *  - x is staged in shared memory in tiles of KT columns for all m rows,
 *    padded by 16 bytes every E floats so that the lanes' float4 reads (one
 *    per row of x, feeding GV_ROWS weight rows) hit distinct banks;
 *  - 4-bit: the 16-entry code book sits in shared memory (16 words in 16
 *    banks, so any lookups of a warp are conflict-free), every value is
 *    RNE_T(f32(LUT[code] * absmax)) exactly as the CPU rounds it, and a
 *    vector of 32 codes never crosses a block (blocks are >= 32 and aligned
 *    in the flattened tensor), so it needs one absmax;
 *  - each lane sums in f32 (FMA), the warp reduces by shuffles, and the lane
 *    owning an output adds the bias and rounds to round_to.
 * Any other shape (odd cols, blocks that start mid-row at odd offsets,
 * unaligned data) takes a simple warp-per-row kernel reading bytes.
 * The sums differ from the CPU's only in order (bound in the test). */
#include <string.h>

#include "kernels/matmul_parts.cuh"

namespace {

constexpr int GV_ROWS = 4;   /* weight rows per warp: an x value read from shared memory feeds 4 */
constexpr int GV_GROUPS = 4; /* row groups per block (fast kernel) */
constexpr int GV_MAX_THREADS = GV_GROUPS * 2 * 32;
constexpr int GA_WARPS = 4; /* warps (= rows) per block of the any-shape kernel */
constexpr int GA_THREADS = GA_WARPS * 32;
constexpr int Q4 = QDT_NF4; /* storage tag shared by nf4 and fp4 (the LUT differs only) */

/* Geometry of a fast kernel for storage WD with M rows of x. */
template <int WD, int M> struct gv_geom {
    static constexpr int E = WD == Q4 ? 32 : WD == QDT_F32 ? 4 : 8; /* values per 16 bytes */
    static constexpr int STEP = 32 * E;                               /* columns per warp load */
    /* 16-byte rows of 4-value vectors read by 8 lanes at a stride of E
     * floats: without padding E >= 8 strides share banks. */
    static constexpr bool PAD = E >= 8;
    /* Tile width: about 24-37 KiB of shared memory whatever M. */
    static constexpr int KT = WD == Q4 ? (M == 1 ? 8192 : M == 2 ? 4096 : M <= 4 ? 2048 : 1024)
                                       : (M == 1 ? 4096 : M == 2 ? 2048 : M <= 4 ? 1024 : 512);
    static constexpr int XS = KT + (PAD ? 4 * (KT / E) : 0); /* padded floats per x row */
    /* Warps per row group (KS in the header comment): 2 where each then
     * still gets at least two warp steps per tile (so that it has vectors
     * in flight between the tile's barriers), else 1. */
    static constexpr int KS = KT / STEP >= 4 ? 2 : 1;
    static constexpr int THREADS = GV_GROUPS * KS * 32;
    static constexpr size_t SMEM = sizeof(float) * (size_t)M * XS;
    __device__ static int pad(int k) { return PAD ? k + 4 * (k / E) : k; }
};

__device__ __forceinline__ uint32_t word_of(const uint4 &v, int i)
{
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* a, b = RNE_T(a), RNE_T(b): one packed conversion for the pair. */
template <int T> __device__ __forceinline__ void round_pair(float &a, float &b)
{
    if (T == QDT_F16) {
        float2 f = __half22float2(__floats2half2_rn(a, b));
        a = f.x, b = f.y;
    } else if (T == QDT_BF16) {
        float2 f = __bfloat1622float2(__floats2bfloat162_rn(a, b));
        a = f.x, b = f.y;
    }
}

/* Values 4g..4g+3 of a 16-byte vector as W_T (rt: the rounding of plain
 * weights, QDT_F32 for none). Byte j of the vector holds value 2j in its
 * high nibble; little-endian words hold bytes 4i..4i+3. */
template <int WD, int T, int G>
__device__ __forceinline__ void gv_decode(const uint4 &v, float sc, uint32_t lutb, int rt,
                                          float out[4])
{
    if (WD == Q4) {
        constexpr int J = 2 * (G & 1); /* the group's two bytes: J and J + 1 */
        const uint32_t w = word_of(v, G >> 1);
        const uint32_t hi4 = mm_q4_hi4(w), lo4 = mm_q4_lo4(w);
        out[0] = __fmul_rn(mm_q4_entry<J>(hi4, lutb), sc);
        out[1] = __fmul_rn(mm_q4_entry<J>(lo4, lutb), sc);
        out[2] = __fmul_rn(mm_q4_entry<J + 1>(hi4, lutb), sc);
        out[3] = __fmul_rn(mm_q4_entry<J + 1>(lo4, lutb), sc);
        round_pair<T>(out[0], out[1]);
        round_pair<T>(out[2], out[3]);
    } else if (WD == QDT_F32) {
        out[0] = qk_round(__uint_as_float(v.x), (qdtype)rt);
        out[1] = qk_round(__uint_as_float(v.y), (qdtype)rt);
        out[2] = qk_round(__uint_as_float(v.z), (qdtype)rt);
        out[3] = qk_round(__uint_as_float(v.w), (qdtype)rt);
    } else {
        uint32_t lo = word_of(v, 2 * G), hi = word_of(v, 2 * G + 1);
        if (WD == QDT_F16) {
            float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&lo));
            float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&hi));
            out[0] = a.x, out[1] = a.y, out[2] = b.x, out[3] = b.y;
        } else {
            out[0] = __uint_as_float(lo << 16), out[1] = __uint_as_float(lo & 0xffff0000u);
            out[2] = __uint_as_float(hi << 16), out[3] = __uint_as_float(hi & 0xffff0000u);
        }
        for (int i = 0; i < 4; i++)
            out[i] = qk_round(out[i], (qdtype)rt);
    }
}

/* Copy x[:, k0 .. k0+kt) into the padded tile (kt a multiple of 4). */
template <int WD, int M>
__device__ __forceinline__ void gv_stage_x(const float *__restrict__ x, uint64_t K, uint64_t k0,
                                           int kt, bool x_vec, float *xs)
{
    using G = gv_geom<WD, M>;
#pragma unroll
    for (int m = 0; m < M; m++)
        for (int k = 4 * threadIdx.x; k < kt; k += 4 * G::THREADS) {
            const float *src = x + (uint64_t)m * K + k0 + k;
            float4 v = x_vec ? __ldg(reinterpret_cast<const float4 *>(src))
                             : make_float4(__ldg(src), __ldg(src + 1), __ldg(src + 2),
                                           __ldg(src + 3));
            *reinterpret_cast<float4 *>(xs + m * G::XS + G::pad(k)) = v;
        }
}

/* Each warp's rows at tile column kk: 16-byte vectors and (4-bit) scales.
 * With double quantization sc[0] gets the rows' qabsmax bytes, packed
 * (byte r for row r; the other sc are unused), and gv_scales finishes the
 * scales when the vectors are used: the map lookup depends on the byte,
 * and waiting for it here would stall the warp for a memory round trip at
 * every prefetch. Packed, the bytes of the current and next vectors take
 * two registers instead of eight, which keeps the 80-register decode
 * kernel from spilling. */
template <int WD, int DQ>
__device__ __forceinline__ void gv_load(const mm_weight &w, uint64_t row0, uint64_t col,
                                        uint4 v[GV_ROWS], float sc[GV_ROWS])
{
    constexpr int ESZ = WD == QDT_F32 ? 4 : 2; /* bytes per value; 4-bit handled apart */
    const bool dq = WD == Q4 && (DQ == 2 ? !w.absmax : DQ == 1);
    uint32_t qbytes = 0;
    for (int r = 0; r < GV_ROWS; r++) {
        uint64_t row = row0 + r;
        v[r] = make_uint4(0, 0, 0, 0);
        sc[r] = 0.0f;
        if (row < w.N) {
            uint64_t f = row * w.K + col;
            const unsigned char *p = (const unsigned char *)w.data;
            if (WD == Q4) {
                v[r] = __ldg(reinterpret_cast<const uint4 *>(p + (f >> 1)));
                uint64_t b = f >> w.bs_shift;
                if (dq)
                    qbytes |= (uint32_t)__ldg(w.qabsmax + b) << (8 * r);
                else
                    sc[r] = __ldg(w.absmax + b);
            } else {
                v[r] = __ldg(reinterpret_cast<const uint4 *>(p + f * ESZ));
            }
        }
    }
    if (dq)
        sc[0] = __uint_as_float(qbytes);
}

/* The 4-bit scales of vectors gv_load brought for column col: as loaded,
 * or rebuilt from double quantization as mm_block_absmax does (the map in
 * shared memory; absmax2, one per 256 blocks, is an L1 hit). */
template <int WD, int DQ>
__device__ __forceinline__ void gv_scales(const mm_weight &w, const float *dqm, uint64_t row0,
                                          uint64_t col, const float sc[GV_ROWS],
                                          float out[GV_ROWS])
{
    const bool dq = WD == Q4 && (DQ == 2 ? !w.absmax : DQ == 1);
#pragma unroll
    for (int r = 0; r < GV_ROWS; r++) {
        out[r] = sc[r];
        if (dq && row0 + r < w.N) {
            const uint64_t b = ((row0 + r) * w.K + col) >> w.bs_shift;
            const uint32_t q = (__float_as_uint(sc[0]) >> (8 * r)) & 255u;
            out[r] = __fadd_rn(__fmul_rn(dqm[q], __ldg(w.absmax2 + (b >> 8))), w.absmax_offset);
        }
    }
}

/* acc[r][m] += the dot products of the current vectors with x, 4 values
 * (group G) at a time; recursion unrolls the groups with G a constant. */
template <int WD, int M, int T, int G>
__device__ __forceinline__ void gv_groups(const uint4 cur[GV_ROWS], const float csc[GV_ROWS],
                                          uint32_t lutb, int rt, const float *xp,
                                          float acc[GV_ROWS][M])
{
    if constexpr (G < gv_geom<WD, M>::E / 4) {
        float wv[GV_ROWS][4];
#pragma unroll
        for (int r = 0; r < GV_ROWS; r++)
            gv_decode<WD, T, G>(cur[r], csc[r], lutb, rt, wv[r]);
#pragma unroll
        for (int m = 0; m < M; m++) {
            float4 xv = *reinterpret_cast<const float4 *>(xp + m * gv_geom<WD, M>::XS + 4 * G);
#pragma unroll
            for (int r = 0; r < GV_ROWS; r++) {
                float a = acc[r][m];
                a = fmaf(wv[r][0], xv.x, a);
                a = fmaf(wv[r][1], xv.y, a);
                a = fmaf(wv[r][2], xv.z, a);
                a = fmaf(wv[r][3], xv.w, a);
                acc[r][m] = a;
            }
        }
        gv_groups<WD, M, T, G + 1>(cur, csc, lutb, rt, xp, acc);
    }
}

/* Block `blk` of one weight's product (the tables lut and dqm are written
 * by the kernel before; the first barrier below publishes them). */
template <int WD, int M, int T, int DQ>
__device__ __forceinline__ void gv_block(const mm_weight &w, const float *__restrict__ x,
                                         int x_vec, int rt, const mm_epi &e,
                                         float *__restrict__ y, unsigned blk, float *xs,
                                         uint32_t lutb, const float *dqm,
                                         float (*part)[32])
{
    using G = gv_geom<WD, M>;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp % GV_GROUPS, slice = warp / GV_GROUPS;
    const uint64_t N = w.N, K = w.K;
    const uint64_t row0 = ((uint64_t)blk * GV_GROUPS + grp) * GV_ROWS;
    const bool active = row0 < N; /* idle warps still help stage x */
    float acc[GV_ROWS][M];
    for (int r = 0; r < GV_ROWS; r++)
        for (int m = 0; m < M; m++)
            acc[r][m] = 0.0f;

    for (uint64_t k0 = 0; k0 < K; k0 += G::KT) {
        const int kt = (int)min((uint64_t)G::KT, K - k0);
        int kk = lane * G::E + slice * G::STEP;
        uint4 cur[GV_ROWS];
        float csc[GV_ROWS];
        if (active && kk < kt) /* the weights do not wait for x */
            gv_load<WD, DQ>(w, row0, k0 + kk, cur, csc);
        __syncthreads(); /* the previous tile is consumed (and the tables written) */
        qk_wait_prior(); /* x comes from the kernel before */
        gv_stage_x<WD, M>(x, K, k0, kt, x_vec != 0, xs);
        __syncthreads();
        if (!active)
            continue;
        for (; kk < kt; kk += G::KS * G::STEP) {
            uint4 nxt[GV_ROWS];
            float nsc[GV_ROWS];
            const bool more = kk + G::KS * G::STEP < kt;
            if (more) /* keep the next vectors in flight while these are used */
                gv_load<WD, DQ>(w, row0, k0 + kk + G::KS * G::STEP, nxt, nsc);
            const float *xp = xs + G::pad(kk);
            float scale[GV_ROWS];
            gv_scales<WD, DQ>(w, dqm, row0, k0 + kk, csc, scale);
            gv_groups<WD, M, T, 0>(cur, scale, lutb, rt, xp, acc);
            if (more) {
#pragma unroll
                for (int r = 0; r < GV_ROWS; r++)
                    cur[r] = nxt[r], csc[r] = nsc[r];
            }
        }
    }
    /* Lane r*M + m owns output (row0 + r, m): slice 0 adds the other slices'
     * sums in slice order, then the bias, and stores. */
    const float mine = mm_slices_sum<G::KS>(acc, lane, grp, slice, part);
    const int r = lane / M, m = lane % M;
    if (slice == 0 && active && r < GV_ROWS && row0 + r < N) {
        uint64_t row = row0 + r, at = (uint64_t)m * N + row;
        float v = e.bias ? __fadd_rn(mine, mm_bias(e, row)) : mine;
        y[at] = mm_post(e, qk_round(v, (qdtype)e.round_to), at);
    }
}

/* Up to GV_MAX_JOBS products of one x in one launch (as mq_jobs in
 * matmul_gemv_mma.cu): job j owns blocks [first[j], first[j + 1]); the jobs
 * share dtype, K and, for 4-bit, double quantization or not. */
constexpr int GV_MAX_JOBS = 3;
struct gv_jobs {
    mm_weight w[GV_MAX_JOBS];
    mm_epi e[GV_MAX_JOBS];
    float *y[GV_MAX_JOBS];
    unsigned first[GV_MAX_JOBS + 1];
};

template <int WD, int M, int T, int DQ>
__global__ void __launch_bounds__(GV_MAX_THREADS, M == 1 ? 3 : 2)
    gemv_fast(const __grid_constant__ gv_jobs jobs, const float *__restrict__ x, int x_vec,
              int rt)
{
    using G = gv_geom<WD, M>;
    qk_launch_dependents(); /* the norm or rope after it may be scheduled */
    extern __shared__ float4 gv_smem[];
    float *xs = reinterpret_cast<float *>(gv_smem);
    __shared__ __align__(256) float lut[16]; /* aligned for mm_q4_entry */
    __shared__ float dqm[WD == Q4 ? 256 : 1]; /* double quantization's map */
    __shared__ float part[GV_GROUPS][32];      /* the other k-slices' sums */
    if (WD == Q4 && threadIdx.x < 16)
        lut[threadIdx.x] = jobs.w[0].lut[threadIdx.x];
    if (WD == Q4 && !jobs.w[0].absmax)
        for (int i = threadIdx.x; i < 256; i += G::THREADS)
            dqm[i] = __ldg(jobs.w[0].dq_map + i);
    const unsigned b = blockIdx.x;
    const uint32_t lutb = (uint32_t)__cvta_generic_to_shared(lut);
    /* constant job indices keep the parameters in parameter space */
    if (b < jobs.first[1])
        gv_block<WD, M, T, DQ>(jobs.w[0], x, x_vec, rt, jobs.e[0], jobs.y[0], b, xs, lutb, dqm, part);
    else if (b < jobs.first[2])
        gv_block<WD, M, T, DQ>(jobs.w[1], x, x_vec, rt, jobs.e[1], jobs.y[1], b - jobs.first[1], xs,
                           lutb, dqm, part);
    else
        gv_block<WD, M, T, DQ>(jobs.w[2], x, x_vec, rt, jobs.e[2], jobs.y[2], b - jobs.first[2], xs,
                           lutb, dqm, part);
}

/* Any shape: a warp per weight row, lane l takes columns l, l+32, ...
 * (byte loads, x read through L1). m and T are run-time values here. */
__global__ void __launch_bounds__(GA_THREADS)
    gemv_any(mm_weight w, const float *__restrict__ x, int m, int T, int rt, mm_epi e,
             float *__restrict__ y)
{
    __shared__ float lut[16];
    if (threadIdx.x < 16)
        lut[threadIdx.x] = w.lut[threadIdx.x];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const uint64_t N = w.N, K = w.K;
    const uint64_t row = (uint64_t)blockIdx.x * GA_WARPS + (threadIdx.x >> 5);
    if (row >= N)
        return;
    const bool q4 = w.dtype == QDT_NF4 || w.dtype == QDT_FP4;
    const uint8_t *codes = (const uint8_t *)w.data;
    float acc[QK_GEMV_MAX_M];
#pragma unroll
    for (int i = 0; i < QK_GEMV_MAX_M; i++)
        acc[i] = 0.0f;
    uint64_t cur_b = UINT64_MAX;
    float a = 0.0f;
    for (uint64_t k = lane; k < K; k += 32) {
        const uint64_t f = row * K + k;
        float wv;
        if (q4) {
            unsigned byte = __ldg(codes + (f >> 1));
            unsigned c = (f & 1) ? byte & 15u : byte >> 4;
            uint64_t b = f >> w.bs_shift;
            if (b != cur_b) {
                cur_b = b;
                a = mm_block_absmax(w, b);
            }
            wv = qk_round(__fmul_rn(lut[c], a), (qdtype)T);
        } else {
            wv = qk_round(qk_load(w.data, (qdtype)w.dtype, f), (qdtype)rt);
        }
#pragma unroll
        for (int i = 0; i < QK_GEMV_MAX_M; i++)
            if (i < m)
                acc[i] = fmaf(wv, __ldg(x + (uint64_t)i * K + k), acc[i]);
    }
#pragma unroll
    for (int i = 0; i < QK_GEMV_MAX_M; i++) {
        float s = acc[i];
        for (int off = 16; off > 0; off >>= 1)
            s += __shfl_xor_sync(0xffffffffu, s, off);
        acc[i] = s;
    }
    float mine = 0.0f;
#pragma unroll
    for (int i = 0; i < QK_GEMV_MAX_M; i++)
        if (lane == i)
            mine = acc[i];
    if (lane < m) {
        const uint64_t at = (uint64_t)lane * N + row;
        float v = e.bias ? __fadd_rn(mine, mm_bias(e, row)) : mine;
        y[at] = mm_post(e, qk_round(v, (qdtype)e.round_to), at);
    }
}

typedef cudaError_t (*gv_launch_fn)(const gv_jobs &, const float *, bool, int, cudaStream_t);

template <int WD, int M, int T>
cudaError_t gv_launch(const gv_jobs &jobs, const float *x, bool x_vec, int rt, cudaStream_t s)
{
    using G = gv_geom<WD, M>;
    const unsigned blocks = jobs.first[GV_MAX_JOBS];
    /* 4-bit decode (m = 1) is compiled apart with and without double
     * quantization: the scale logic of the other costs registers and stack
     * in the 80-register kernel (llama-2-7b nf4 decode 274.6 -> 260.3 tok/s
     * on an H100 with one kernel for both). Other shapes decide at run time. */
    void (*k)(gv_jobs, const float *, int, int) = gemv_fast<WD, M, T, 2>;
    if constexpr (WD == Q4 && M == 1)
        k = jobs.w[0].absmax ? gemv_fast<WD, M, T, 0> : gemv_fast<WD, M, T, 1>;
    /* a programmatic dependent: its blocks start, and load their first
     * weight vectors, while the norm or activation before it finishes */
    return qk_launch_pdl(k, blocks, G::THREADS, G::SMEM, s, jobs, x, x_vec ? 1 : 0, rt);
}

#define GV_M_ROW(WD, T)                                                                          \
    {                                                                                            \
        gv_launch<WD, 1, T>, gv_launch<WD, 2, T>, gv_launch<WD, 3, T>, gv_launch<WD, 4, T>,      \
            gv_launch<WD, 5, T>, gv_launch<WD, 6, T>, gv_launch<WD, 7, T>, gv_launch<WD, 8, T>   \
    }
/* 4-bit: compute dtype as a template argument (it shapes the inner loop). */
const gv_launch_fn gv_q4[3][QK_GEMV_MAX_M] = {GV_M_ROW(Q4, QDT_F32), GV_M_ROW(Q4, QDT_F16),
                                              GV_M_ROW(Q4, QDT_BF16)};
/* Plain weights: the rounding (rare) is a run-time argument. */
const gv_launch_fn gv_plain[3][QK_GEMV_MAX_M] = {GV_M_ROW(QDT_F32, QDT_F32),
                                                 GV_M_ROW(QDT_F16, QDT_F32),
                                                 GV_M_ROW(QDT_BF16, QDT_F32)};

} /* namespace */

/* Plain weights are rounded to T only where T is narrower than the storage
 * (f32 -> f16/bf16, f16 <-> bf16); else the values are exact. */
static int plain_rounding(const mm_weight &w, qdtype T)
{
    return (T == QDT_F32 || (int)T == w.dtype) ? QDT_F32 : T;
}

static bool fast_fits(const mm_weight &w)
{
    const bool q4 = w.dtype == QDT_NF4 || w.dtype == QDT_FP4;
    const int per_vec = q4 ? 32 : w.dtype == QDT_F32 ? 4 : 8;
    return w.K % (uint64_t)per_vec == 0 && (uintptr_t)w.data % 16 == 0;
}

/* One gemv_fast launch over `count` jobs (all fast_fits, same kind). */
static bool fast_launch(const mm_weight *ws, const mm_epi *es, float *const *ys, int count,
                        const float *x, int m, qdtype T, cudaStream_t s, qerr *err)
{
    gv_jobs jobs;
    memset(&jobs, 0, sizeof jobs);
    unsigned first = 0;
    for (int j = 0; j < GV_MAX_JOBS; j++) {
        jobs.first[j] = first;
        if (j < count) {
            jobs.w[j] = ws[j];
            jobs.e[j] = es[j];
            jobs.y[j] = ys[j];
            first += qk_div_up(ws[j].N, (uint64_t)GV_GROUPS * GV_ROWS);
        }
    }
    jobs.first[GV_MAX_JOBS] = first;
    const mm_weight &w = ws[0];
    const bool q4 = w.dtype == QDT_NF4 || w.dtype == QDT_FP4;
    const bool x_vec = (uintptr_t)x % 16 == 0;
    gv_launch_fn fn = q4 ? gv_q4[T][m - 1]
                         : gv_plain[w.dtype == QDT_F32 ? 0 : w.dtype == QDT_F16 ? 1 : 2][m - 1];
    return qk_ok(fn(jobs, x, x_vec, plain_rounding(w, T), s), "matmul: gemv_fast", err);
}

/* The tensor-core 4-bit kernel for m >= 4 only: at m = 1 it is slower than
 * the CUDA-core kernel (H100, llama-2-7b nf4 decode: 211 against 263 tok/s
 * with its shared-memory code book, 241 against 275 with the register
 * book, whose byte permutes fill the integer pipe), at m = 4 and 8 it is
 * 1.2-2.4x faster (docs/perf.md). */
static bool mma_takes(const mm_weight &w, int m, qdtype T, const float *x)
{
    return m >= 4 && mm_gemv_q4_mma_fits(w, T, x);
}

bool mm_gemv(const mm_weight &w, const float *x, int m, qdtype T, const mm_epi &e, float *y,
             cudaStream_t s, qerr *err)
{
    if (mma_takes(w, m, T, x))
        return mm_gemv_q4_mma(w, x, m, T, e, y, s, err);
    if (fast_fits(w))
        return fast_launch(&w, &e, &y, 1, x, m, T, s, err);
    unsigned blocks = qk_div_up(w.N, GA_WARPS);
    gemv_any<<<blocks, GA_THREADS, 0, s>>>(w, x, m, T, plain_rounding(w, T), e, y);
    return qk_launched("matmul: gemv_any", err);
}

bool mm_gemv_multi(const mm_weight *ws, const mm_epi *es, float *const *ys, int count,
                   const float *x, int m, qdtype T, cudaStream_t s, qerr *err)
{
    /* one launch only where each product would take that kernel alone */
    bool same = count >= 1 && count <= GV_MAX_JOBS, all_mma = true, no_mma = true, fast = true;
    for (int j = 0; same && j < count; j++) {
        same = ws[j].dtype == ws[0].dtype && ws[j].K == ws[0].K && !ws[j].absmax == !ws[0].absmax;
        const bool mma = mma_takes(ws[j], m, T, x);
        all_mma = all_mma && mma;
        no_mma = no_mma && !mma;
        fast = fast && fast_fits(ws[j]);
    }
    if (same && all_mma)
        return mm_gemv_q4_mma_multi(ws, es, ys, count, x, m, T, s, err);
    if (same && no_mma && fast)
        return fast_launch(ws, es, ys, count, x, m, T, s, err);
    for (int j = 0; j < count; j++)
        if (!mm_gemv(ws[j], x, m, T, es[j], ys[j], s, err))
            return false;
    return true;
}
