/* Decode GEMV for nf4/fp4 weights with an f16 or bf16 compute dtype, on
 * tensor cores: y[m, N] = x[m, K] · W_Tᵀ for m <= 8.
 *
 * Why: the CUDA-core kernel (matmul_gemv.cu) widens every weight value to
 * f32 for an FMA. Here the rounded value stays packed in a half2 /
 * bfloat162 register and goes straight into mma.sync.m16n8k16, which
 * multiplies it exactly (T x T products are exact in f32) and sums in f32.
 * The values come from a code book in registers, not shared memory: for
 * each row vector of 32 codes (one absmax) the 16 values RNE_T(LUT[c] * a)
 * are computed once and held as two byte planes, and byte permutes look
 * up four codes at a time (about 2.7 integer instructions per value). The
 * shared-memory book it replaced cost one shared load per value and kept
 * this kernel bound on the L1/shared pipe (H100: 66-74% busy at 25-32% of
 * DRAM bandwidth); the register book is 15-20% faster at m = 4 and 8. At
 * m = 1 the integer pipe is the limit instead (49% busy at 27% of DRAM), so
 * decode keeps the CUDA-core kernel (docs/perf.md).
 *
 * Numerics: every weight value is RNE_T(f32(LUT[code] * absmax)) exactly as
 * the CPU computes it; x must hold T values (the engine's activations do;
 * the prefill path makes the same assumption) so converting it to T is
 * exact. Only the summation differs: the tensor cores' f32 accumulation
 * (which truncates) in place of ordered FMAs, the bound the test states for
 * cuBLAS' tensor-core path.
 *
 * Layout: a block owns MQ_ROWS = 32 weight rows, two m16 tiles; its W
 * warps split the columns in steps of 128 (warp j takes steps j, j + W, ...).
 * In a step lane (g = lane / 4, t = lane % 4) loads 16 bytes (32 codes) of
 * rows g, g + 8, g + 16, g + 24 at columns [32t, 32t + 32) of the step: the
 * eight rows of a group of four lanes read 64 contiguous bytes each. The
 * MMA's k index is a permutation of the columns, the same for A and B:
 * MMA s (0..7) of the step takes, in lane t's slots k = 2t, 2t+1 the columns
 * 32t + 4s + {0, 1} (byte 2s of the lane's vector) and in k = 2t+8, 2t+9 the
 * columns 32t + 4s + {2, 3} (byte 2s + 1). So no lane needs another lane's
 * codes, and the B operand (x) is the float4 x[g][32t + 4s ..] of the lane's
 * own columns, row g of x being MMA column n = g (zero for g >= m).
 * The warps' partial tiles are added in warp order through shared memory,
 * and warp 0 adds the bias and rounds as the other GEMV kernels do. */
#include <string.h>

#include "kernels/matmul_parts.cuh"

namespace {

constexpr int MQ_ROWS = 32;  /* two 16-row MMA tiles */
constexpr int MQ_STEP = 128; /* columns per warp step: 4 lanes x 32 codes */

/* Two x values as one packed T register (exact: they are T values). */
template <int T> __device__ __forceinline__ uint32_t mq_x2(float a, float b)
{
    if (T == QDT_F16) {
        __half2 h = __floats2half2_rn(a, b);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* d += A · B for one m16n8k16 tile (A row-major 16x16, B 16x8, f32 sums). */
template <int T>
__device__ __forceinline__ void mq_mma(float d[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                       uint32_t a3, uint32_t b0, uint32_t b1)
{
    if (T == QDT_F16)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* PRMT with the sign-replicating selector bit (CUDA's __byte_perm masks it
 * away): a selector nibble 8 + j gives 0xff or 0x00 by the top bit of byte j. */
__device__ __forceinline__ uint32_t mq_prmt(uint32_t a, uint32_t b, uint32_t sel)
{
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

/* The block's 16 T values RNE_T(f32(LUT[c] * a)) as two byte planes in
 * registers: lo[q] holds the low bytes of entries 4q .. 4q+3, hi[q] their
 * high bytes, so that a byte permute looks up four codes at once. 16
 * multiplies and 8 packed roundings serve the lane's 32 values of the row,
 * and the values are those of the CPU bit for bit. */
template <int T>
__device__ __forceinline__ void mq_book(const float (&lut)[16], float a, uint32_t lo[4],
                                        uint32_t hi[4])
{
#pragma unroll
    for (int q = 0; q < 4; q++) {
        const uint32_t p0 = mq_x2<T>(__fmul_rn(lut[4 * q], a), __fmul_rn(lut[4 * q + 1], a));
        const uint32_t p1 = mq_x2<T>(__fmul_rn(lut[4 * q + 2], a), __fmul_rn(lut[4 * q + 3], a));
        lo[q] = __byte_perm(p0, p1, 0x6420);
        hi[q] = __byte_perm(p0, p1, 0x7531);
    }
}

/* The T pairs of bytes 2H and 2H + 1 of code word w (w4 = w << 4) from a
 * book: selector nibble i of the low 16 bits (after >> 16H) is a code whose
 * low three bits pick a byte of planes 0-1 and of planes 2-3; its top bit,
 * spread over the byte by a sign-replicating permute, picks between them.
 * Nibble order: byte 2H holds code 4H (high nibble, the lower column) and
 * 4H + 1. */
template <int H>
__device__ __forceinline__ void mq_look(uint32_t w, uint32_t w4, const uint32_t lo[4],
                                        const uint32_t hi[4], uint32_t &p0, uint32_t &p1)
{
    const uint32_t s = (H == 0 ? w : w >> 16) & 0x7777u;
    const uint32_t m = mq_prmt(w, w4, H == 0 ? 0x9D8Cu : 0xBFAEu);
    const uint32_t l0 = mq_prmt(lo[0], lo[1], s), l1 = mq_prmt(lo[2], lo[3], s);
    const uint32_t h0 = mq_prmt(hi[0], hi[1], s), h1 = mq_prmt(hi[2], hi[3], s);
    const uint32_t l = (l0 & ~m) | (l1 & m), h = (h0 & ~m) | (h1 & m);
    /* l, h bytes: codes (4H+1, 4H, 4H+3, 4H+2); pairs low half first */
    p0 = __byte_perm(l, h, 0x4051);
    p1 = __byte_perm(l, h, 0x6273);
}

/* The four T pairs of word I of a row's vector, from the row's book. */
template <int I>
__device__ __forceinline__ void mq_pairs(const uint4 &v, const uint32_t lo[4],
                                         const uint32_t hi[4], uint32_t p[4])
{
    const uint32_t w = I == 0 ? v.x : I == 1 ? v.y : I == 2 ? v.z : v.w;
    const uint32_t w4 = w << 4;
    mq_look<0>(w, w4, lo, hi, p[0], p[1]);
    mq_look<1>(w, w4, lo, hi, p[2], p[3]);
}

/* One m16 tile of a step (rows g and g + 8 of the lane, + 16 for the second
 * tile): the two rows' books, then 8 MMAs, word I feeding MMAs 2I and
 * 2I + 1. */
template <int T>
__device__ __forceinline__ void mq_tile(const float (&lut)[16], const uint4 &va,
                                        const uint4 &vb, float sa, float sb,
                                        const uint32_t b[16], float acc[4])
{
    uint32_t loa[4], hia[4], lob[4], hib[4];
    mq_book<T>(lut, sa, loa, hia);
    mq_book<T>(lut, sb, lob, hib);
#pragma unroll
    for (int I = 0; I < 4; I++) {
        uint32_t pa[4], pb[4];
        if (I == 0) {
            mq_pairs<0>(va, loa, hia, pa);
            mq_pairs<0>(vb, lob, hib, pb);
        } else if (I == 1) {
            mq_pairs<1>(va, loa, hia, pa);
            mq_pairs<1>(vb, lob, hib, pb);
        } else if (I == 2) {
            mq_pairs<2>(va, loa, hia, pa);
            mq_pairs<2>(vb, lob, hib, pb);
        } else {
            mq_pairs<3>(va, loa, hia, pa);
            mq_pairs<3>(vb, lob, hib, pb);
        }
        mq_mma<T>(acc, pa[0], pb[0], pa[1], pb[1], b[4 * I], b[4 * I + 1]);
        mq_mma<T>(acc, pa[2], pb[2], pa[3], pb[3], b[4 * I + 2], b[4 * I + 3]);
    }
}

/* The lane's four row vectors and their absmax at column col (zeros where
 * the column or the row is past the end: x is not zero there, so the A
 * values must be). Flat indices fit in 32 bits (mm_gemv_q4_mma_fits),
 * which halves the address arithmetic. */
__device__ __forceinline__ void mq_load(const mm_weight &w, const float *dqm, uint32_t row0,
                                        uint32_t col, uint4 v[4], float sc[4])
{
    const uint32_t N = (uint32_t)w.N, K = (uint32_t)w.K;
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const uint32_t row = row0 + 8 * r;
        v[r] = make_uint4(0, 0, 0, 0);
        sc[r] = 0.0f;
        if (row < N && col < K) {
            const uint32_t f = row * K + col;
            v[r] = __ldg(reinterpret_cast<const uint4 *>((const unsigned char *)w.data + (f >> 1)));
            const uint32_t b = f >> w.bs_shift;
            sc[r] = w.absmax ? __ldg(w.absmax + b)
                             : __fadd_rn(__fmul_rn(dqm[__ldg(w.qabsmax + b)],
                                                   __ldg(w.absmax2 + (b >> 8))),
                                         w.absmax_offset);
        }
    }
}

/* W warps per block: 8, or 16 where the rows give fewer than two blocks
 * per SM (a 4096-row weight has 128 blocks): the loads in flight per SM,
 * not the instruction count, then decide the speed. */
/* The product of one weight for the block's 32 rows (row block `blk`). */
template <int T, int W>
__device__ __forceinline__ void mq_block(const mm_weight &w, const float *__restrict__ x, int m,
                                         const mm_epi &e, float *__restrict__ y, uint32_t blk,
                                         const float *dqm, float (*part)[8][32])
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const uint32_t K = (uint32_t)w.K;
    const uint32_t row0 = blk * MQ_ROWS + g;
    const uint32_t nsteps = (K + MQ_STEP - 1) / MQ_STEP;
    float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    uint32_t st = warp;
    uint4 v[4];
    float sc[4];
    if (st < nsteps)
        mq_load(w, dqm, row0, st * MQ_STEP + 32 * t, v, sc);
    for (; st < nsteps; st += W) {
        const uint32_t col = st * MQ_STEP + 32 * t;
        const uint32_t nxt = st + W;
        uint4 nv[4];
        float nsc[4];
        if (nxt < nsteps) /* the next vectors in flight while these are used */
            mq_load(w, dqm, row0, nxt * MQ_STEP + 32 * t, nv, nsc);
        /* B: x row g at the lane's columns. Columns n >= m of the product
         * are never stored, so those lanes read row 0 rather than branch; a
         * lane past the last column (K % 128 != 0) reads the last valid
         * vector, its A values being zero. */
        uint32_t b[16]; /* b[2s], b[2s+1]: MMA s's B registers */
        const float4 *xr = reinterpret_cast<const float4 *>(
            x + (size_t)(g < m ? g : 0) * K + (col < K ? col : K - 32));
#pragma unroll
        for (int s = 0; s < 8; s++) {
            const float4 xv = __ldg(xr + s);
            b[2 * s] = mq_x2<T>(xv.x, xv.y);
            b[2 * s + 1] = mq_x2<T>(xv.z, xv.w);
        }
        mq_tile<T>(w.lut, v[0], v[1], sc[0], sc[1], b, acc[0]);
        mq_tile<T>(w.lut, v[2], v[3], sc[2], sc[3], b, acc[1]);
        if (nxt < nsteps) {
#pragma unroll
            for (int r = 0; r < 4; r++)
                v[r] = nv[r], sc[r] = nsc[r];
        }
    }

    /* warps 1.. hand their tiles to warp 0, which adds them in warp order */
    if (warp > 0)
#pragma unroll
        for (int i = 0; i < 8; i++)
            part[warp - 1][i][lane] = acc[i >> 2][i & 3];
    __syncthreads();
    if (warp != 0)
        return;
    for (int j = 0; j < W - 1; j++)
#pragma unroll
        for (int i = 0; i < 8; i++)
            acc[i >> 2][i & 3] += part[j][i][lane];
    /* d[0], d[1]: row g, columns n = 2t, 2t + 1; d[2], d[3]: row g + 8 */
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const uint32_t row = row0 + 16 * (i >> 2) + 8 * ((i & 3) >> 1);
        const int n = 2 * t + (i & 1);
        if (n < m && row < w.N) {
            const float s = acc[i >> 2][i & 3];
            const float val = e.bias ? __fadd_rn(s, mm_bias(e, row)) : s;
            const uint64_t at = (uint64_t)n * w.N + row;
            y[at] = mm_post(e, qk_round(val, (qdtype)e.round_to), at);
        }
    }
}

/* Up to MQ_MAX_JOBS products of the same x in one launch (q/k/v, gate/up):
 * job j owns blocks [first[j], first[j + 1]). The jobs share the storage
 * type, double quantization or not, and K (mm_gemv_q4_mma_multi checks),
 * so the code book and the dynamic map come from job 0. */
constexpr int MQ_MAX_JOBS = 3;
struct mq_jobs {
    mm_weight w[MQ_MAX_JOBS];
    mm_epi e[MQ_MAX_JOBS];
    float *y[MQ_MAX_JOBS];
    unsigned first[MQ_MAX_JOBS + 1];
};

template <int T, int W>
__global__ void __launch_bounds__(W * 32, 16 / W)
    gemv_q4_mma(const __grid_constant__ mq_jobs jobs, const float *__restrict__ x, int m)
{
    __shared__ float dqm[256];
    __shared__ float part[W - 1][8][32];
    if (!jobs.w[0].absmax)
        for (int i = threadIdx.x; i < 256; i += W * 32)
            dqm[i] = __ldg(jobs.w[0].dq_map + i);
    __syncthreads();
    const unsigned b = blockIdx.x;
    /* constant job indices keep the parameters in parameter space */
    if (b < jobs.first[1])
        mq_block<T, W>(jobs.w[0], x, m, jobs.e[0], jobs.y[0], b, dqm, part);
    else if (b < jobs.first[2])
        mq_block<T, W>(jobs.w[1], x, m, jobs.e[1], jobs.y[1], b - jobs.first[1], dqm, part);
    else
        mq_block<T, W>(jobs.w[2], x, m, jobs.e[2], jobs.y[2], b - jobs.first[2], dqm, part);
}

bool mq_launch(const mq_jobs &jobs, const float *x, int m, qdtype T, cudaStream_t s, qerr *err)
{
    const unsigned blocks = jobs.first[MQ_MAX_JOBS];
    int dev = 0, sms = 0;
    if (!qk_ok(cudaGetDevice(&dev), "matmul: cudaGetDevice", err) ||
        !qk_ok(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
               "matmul: multiprocessor count", err))
        return false;
    const bool wide = blocks < 2u * (unsigned)sms;
    if (T == QDT_F16) {
        if (wide)
            gemv_q4_mma<QDT_F16, 16><<<blocks, 512, 0, s>>>(jobs, x, m);
        else
            gemv_q4_mma<QDT_F16, 8><<<blocks, 256, 0, s>>>(jobs, x, m);
    } else {
        if (wide)
            gemv_q4_mma<QDT_BF16, 16><<<blocks, 512, 0, s>>>(jobs, x, m);
        else
            gemv_q4_mma<QDT_BF16, 8><<<blocks, 256, 0, s>>>(jobs, x, m);
    }
    return qk_launched("matmul: gemv_q4_mma", err);
}

} /* namespace */

bool mm_gemv_q4_mma_fits(const mm_weight &w, qdtype T, const float *x)
{
    return (uintptr_t)x % 16 == 0 && (w.dtype == QDT_NF4 || w.dtype == QDT_FP4) &&
           (T == QDT_F16 || T == QDT_BF16) && w.K % 32 == 0 && (uintptr_t)w.data % 16 == 0 &&
           w.N * w.K < ((uint64_t)1 << 32);
}

bool mm_gemv_q4_mma_multi(const mm_weight *ws, const mm_epi *es, float *const *ys, int count,
                          const float *x, int m, qdtype T, cudaStream_t s, qerr *err)
{
    if (count < 1 || count > MQ_MAX_JOBS) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: %d products in one launch", count);
        return false;
    }
    for (int j = 0; j < count; j++)
        if (!mm_gemv_q4_mma_fits(ws[j], T, x) || ws[j].dtype != ws[0].dtype ||
            ws[j].K != ws[0].K || !ws[j].absmax != !ws[0].absmax) {
            qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                     "matmul: product %d does not share the launch's weight kind", j);
            return false;
        }
    mq_jobs jobs;
    memset(&jobs, 0, sizeof jobs);
    unsigned first = 0;
    for (int j = 0; j < MQ_MAX_JOBS; j++) {
        jobs.first[j] = first;
        if (j < count) {
            jobs.w[j] = ws[j];
            jobs.e[j] = es[j];
            jobs.y[j] = ys[j];
            first += qk_div_up(ws[j].N, MQ_ROWS);
        }
    }
    jobs.first[MQ_MAX_JOBS] = first;
    return mq_launch(jobs, x, m, T, s, err);
}

bool mm_gemv_q4_mma(const mm_weight &w, const float *x, int m, qdtype T, const mm_epi &e,
                    float *y, cudaStream_t s, qerr *err)
{
    return mm_gemv_q4_mma_multi(&w, &e, &y, 1, x, m, T, s, err);
}
