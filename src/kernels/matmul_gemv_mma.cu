/* Decode GEMV for nf4/fp4 weights with an f16 or bf16 compute dtype, on
 * tensor cores: y[m, N] = x[m, K] · W_Tᵀ for m <= 8.
 *
 * Why: the CUDA-core kernel (matmul_gemv.cu) spends about seven instructions
 * on each weight value (nibble, code book, scale, round to T, widen to f32,
 * FMA) and cannot keep up with HBM. Here the rounded value stays packed in
 * a half2 / bfloat162 register and goes straight into mma.sync.m16n8k16,
 * which multiplies it exactly (T x T products are exact in f32) and sums in
 * f32: about four instructions per value, the MMA taking 1/8 of one.
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

/* The two T values of byte J of a code word (high nibble first: the lower
 * k) as one packed register; hi4 / lo4 and lutb as mm_q4_entry takes them. */
template <int T, int J>
__device__ __forceinline__ uint32_t mq_pair(uint32_t hi4, uint32_t lo4, uint32_t lutb, float a)
{
    const float v0 = __fmul_rn(mm_q4_entry<J>(hi4, lutb), a);
    const float v1 = __fmul_rn(mm_q4_entry<J>(lo4, lutb), a);
    if (T == QDT_F16) {
        __half2 h = __floats2half2_rn(v0, v1);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
    return *reinterpret_cast<uint32_t *>(&h);
}

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

/* Word i of the four rows' vectors feeds MMAs 2i and 2i + 1 of both tiles. */
template <int T, int I>
__device__ __forceinline__ void mq_word(const uint4 v[4], const float sc[4],
                                        const uint32_t b[16], uint32_t lut, float acc[2][4])
{
    uint32_t hi4[4], lo4[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const uint32_t w = I == 0 ? v[r].x : I == 1 ? v[r].y : I == 2 ? v[r].z : v[r].w;
        hi4[r] = mm_q4_hi4(w);
        lo4[r] = mm_q4_lo4(w);
    }
#pragma unroll
    for (int tile = 0; tile < 2; tile++) {
        const int ra = 2 * tile, rb = 2 * tile + 1; /* rows g (+16) and g + 8 (+16) */
        mq_mma<T>(acc[tile], mq_pair<T, 0>(hi4[ra], lo4[ra], lut, sc[ra]),
                  mq_pair<T, 0>(hi4[rb], lo4[rb], lut, sc[rb]),
                  mq_pair<T, 1>(hi4[ra], lo4[ra], lut, sc[ra]),
                  mq_pair<T, 1>(hi4[rb], lo4[rb], lut, sc[rb]), b[4 * I], b[4 * I + 1]);
        mq_mma<T>(acc[tile], mq_pair<T, 2>(hi4[ra], lo4[ra], lut, sc[ra]),
                  mq_pair<T, 2>(hi4[rb], lo4[rb], lut, sc[rb]),
                  mq_pair<T, 3>(hi4[ra], lo4[ra], lut, sc[ra]),
                  mq_pair<T, 3>(hi4[rb], lo4[rb], lut, sc[rb]), b[4 * I + 2], b[4 * I + 3]);
    }
}

/* The lane's four row vectors and their absmax at column col (zeros where
 * the column or the row is past the end: x is zero there too). Flat
 * indices fit in 32 bits (mm_gemv_q4_mma_fits), which halves the address
 * arithmetic. */
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
                                         uint32_t lutb, const float *dqm,
                                         float (*part)[8][32])
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
        mq_word<T, 0>(v, sc, b, lutb, acc);
        mq_word<T, 1>(v, sc, b, lutb, acc);
        mq_word<T, 2>(v, sc, b, lutb, acc);
        mq_word<T, 3>(v, sc, b, lutb, acc);
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
            y[(size_t)n * w.N + row] = qk_round(val, (qdtype)e.round_to);
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
    __shared__ __align__(256) float lut[16];
    __shared__ float dqm[256];
    __shared__ float part[W - 1][8][32];
    if (threadIdx.x < 16)
        lut[threadIdx.x] = jobs.w[0].lut[threadIdx.x];
    if (!jobs.w[0].absmax)
        for (int i = threadIdx.x; i < 256; i += W * 32)
            dqm[i] = __ldg(jobs.w[0].dq_map + i);
    __syncthreads();
    const uint32_t lutb = (uint32_t)__cvta_generic_to_shared(lut);
    const unsigned b = blockIdx.x;
    /* constant job indices keep the parameters in parameter space */
    if (b < jobs.first[1])
        mq_block<T, W>(jobs.w[0], x, m, jobs.e[0], jobs.y[0], b, lutb, dqm, part);
    else if (b < jobs.first[2])
        mq_block<T, W>(jobs.w[1], x, m, jobs.e[1], jobs.y[1], b - jobs.first[1], lutb, dqm, part);
    else
        mq_block<T, W>(jobs.w[2], x, m, jobs.e[2], jobs.y[2], b - jobs.first[2], lutb, dqm, part);
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
