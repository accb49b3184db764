/* Pieces of qk_matmul shared by its files (CUDA C only):
 *  - matmul.cu          the entry points: workspace plan, cuBLAS, dispatch;
 *  - matmul_gemv.cu     decode (m <= QK_GEMV_MAX_M): fused dequantize-GEMV
 *                       for nf4/fp4 and f16/bf16/f32 weights on CUDA cores;
 *  - matmul_gemv_mma.cu the same for nf4/fp4 with an f16/bf16 compute dtype
 *                       on tensor cores (the common decode case);
 *  - matmul_int8.cu     LLM.int8: activation quantizer, GEMV, int32 GEMM
 *                       fallback and the output assembly;
 *  - matmul_dequant.cu  prefill helpers: weight tiles dequantized into the
 *                       workspace, x converted to the compute dtype, the
 *                       bias + round_to epilogue after cuBLAS.
 * Every launcher enqueues on `s`, never synchronizes, and reports a failed
 * launch as QRUN_ERR_DEVICE naming its kernel. */
#ifndef QRUN_KERNELS_MATMUL_PARTS_CUH
#define QRUN_KERNELS_MATMUL_PARTS_CUH

#include <math.h>

#include "kernels/ew.cuh"
#include "kernels/kcommon.cuh"
#include "kernels/matmul.h"

/* LLM.int8 constants (bnb-format.md §5), the same literals as src/cpu/matmul.c:
 * f32(1/127) and f32(1/16129). */
#define MM_INV127 0x1.020408p-7f
#define MM_INV16129 0x1.040c20p-14f

/* A weight as the kernels take it, by value (kernel parameter space). The
 * 4-bit code book is copied from src/quant.c's tables by the host, so the
 * device never holds a second copy of those numbers. */
struct mm_weight {
    int dtype;              /* qdtype of the stored values */
    uint64_t N, K;          /* rows (outputs), cols (inputs) */
    const void *data;
    /* nf4 / fp4 */
    int bs_shift;           /* log2(blocksize) */
    const float *absmax;    /* NULL when double-quantized: */
    const uint8_t *qabsmax;
    const float *absmax2;
    const float *dq_map;
    float absmax_offset;
    float lut[16];
    /* int8 */
    const float *scb;
    float threshold;
};

/* What happens to a finished dot product: + bias (converted to f32), then
 * rounding to round_to (src/cpu/matmul.h; qmatmul_round). */
struct mm_epi {
    int bias_dt;
    const void *bias;
    int round_to;
    /* then the element-wise ops folded in (qk_mm_post), in round_to */
    int gelu;
    const float *add; /* [m, N] */
};

/* LLM.int8 activation state in the workspace (qmatmul_int8_quantize_acts). */
struct mm_i8acts {
    int8_t *ca;          /* [m, K] */
    float *sca;          /* [m] */
    unsigned *flags;     /* [K] nonzero for outlier columns */
    unsigned *ocols;     /* [K] outlier columns, ascending */
    unsigned *nout;      /* their count */
};

/* RNE of an f32 to T, returned as f32 (T a compile-time qdtype). */
template <int T> __device__ __forceinline__ float mm_to(float v)
{
    if (T == QDT_F16)
        return __half2float(__float2half_rn(v));
    if (T == QDT_BF16)
        return __bfloat162float(__float2bfloat16_rn(v));
    return v;
}

/* The absmax of 4-bit block b: stored, or rebuilt from double quantization
 * with two roundings and never an FMA (quant_dq_dequantize). */
__device__ __forceinline__ float mm_block_absmax(const mm_weight &w, uint64_t b)
{
    if (w.absmax)
        return __ldg(w.absmax + b);
    float m = __ldg(w.dq_map + __ldg(w.qabsmax + b));
    return __fadd_rn(__fmul_rn(m, __ldg(w.absmax2 + (b >> 8))), w.absmax_offset);
}

/* Output idx = mi * N + n after the bias and round_to: the folded
 * element-wise ops, each with the function its own kernel uses (ew.cuh). */
__device__ __forceinline__ float mm_post(const mm_epi &e, float v, uint64_t idx)
{
    if (e.gelu)
        v = qk_ew_gelu(v, (qdtype)e.round_to);
    if (e.add)
        v = qk_ew_add(v, e.add[idx], (qdtype)e.round_to);
    return v;
}

/* Bias of output n as f32, 0 without one. */
__device__ __forceinline__ float mm_bias(const mm_epi &e, uint64_t n)
{
    return e.bias ? qk_load(e.bias, (qdtype)e.bias_dt, n) : 0.0f;
}

/* 4-bit code book lookups without per-value shift-and-mask: a code word w
 * gives mm_q4_hi4(w) / mm_q4_lo4(w), each byte's high / low nibble times 4
 * (two instructions per 8 codes), and the entry of byte J's nibble is one
 * byte permute away: the book lives at a 256-byte aligned shared address
 * `lutb`, whose upper three bytes the permute keeps and whose low byte it
 * replaces by the nibble's offset. */
/* The GEMV kernels' end: each warp sums its lanes' acc[r][m] (shuffles),
 * lane r*M + m keeps output (r, m)'s sum, and the KS warps (slices) sharing
 * a row group add theirs into slice 0's in slice order through part[grp]
 * (every thread of the block calls this: it has barriers when KS > 1). */
template <int KS, int ROWS, int M, typename V>
__device__ __forceinline__ V mm_slices_sum(const V (&acc)[ROWS][M], int lane, int grp, int slice,
                                           V (*part)[32])
{
    V mine = 0;
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int m = 0; m < M; m++) {
            V s = acc[r][m];
            for (int off = 16; off > 0; off >>= 1)
                s += __shfl_xor_sync(0xffffffffu, s, off);
            if (lane == r * M + m)
                mine = s;
        }
    for (int j = 1; j < KS; j++) {
        __syncthreads();
        if (slice == j)
            part[grp][lane] = mine;
        __syncthreads();
        if (slice == 0)
            mine += part[grp][lane];
    }
    return mine;
}

__device__ __forceinline__ uint32_t mm_q4_hi4(uint32_t w) { return (w >> 2) & 0x3c3c3c3cu; }
__device__ __forceinline__ uint32_t mm_q4_lo4(uint32_t w) { return (w << 2) & 0x3c3c3c3cu; }
template <int J> __device__ __forceinline__ float mm_q4_entry(uint32_t nib4, uint32_t lutb)
{
    float v;
    /* volatile: kept after the barrier that publishes the book */
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(__byte_perm(nib4, lutb, 0x7650 + J)));
    return v;
}

/* ---- launchers (host) ---------------------------------------------------- */

/* Decode GEMV for nf4/fp4/f16/bf16/f32 weights, 1 <= m <= QK_GEMV_MAX_M:
 * y[m, N] = round_to(x · W_Tᵀ + bias). */
bool mm_gemv(const mm_weight &w, const float *x, int m, qdtype T, const mm_epi &e, float *y,
             cudaStream_t s, qerr *err);

/* mm_gemv for up to 3 weights of one x (q/k/v, gate/up): one launch when
 * they share dtype, cols and double quantization and take the same fast
 * kernel, else one mm_gemv each; the same results either way. */
bool mm_gemv_multi(const mm_weight *ws, const mm_epi *es, float *const *ys, int count,
                   const float *x, int m, qdtype T, cudaStream_t s, qerr *err);

/* Whether the tensor-core 4-bit GEMV takes this weight and compute dtype
 * (nf4/fp4, T f16 or bf16, cols % 32 == 0, data and x 16-byte aligned,
 * rows x cols < 2^32), and the GEMV itself (same contract as mm_gemv; x
 * must hold T values). */
bool mm_gemv_q4_mma_fits(const mm_weight &w, qdtype T, const float *x);
bool mm_gemv_q4_mma(const mm_weight &w, const float *x, int m, qdtype T, const mm_epi &e,
                    float *y, cudaStream_t s, qerr *err);
/* Several such products of one x in one launch (count <= 3; the weights
 * share dtype, double quantization and cols, and each fits). */
bool mm_gemv_q4_mma_multi(const mm_weight *ws, const mm_epi *es, float *const *ys, int count,
                          const float *x, int m, qdtype T, cudaStream_t s, qerr *err);

/* The weight tile rows [n0, n0 + nr) x cols [k0, k0 + kr) as compute-dtype
 * values (W_T) into out, nr rows of kr (T-typed, 16-byte aligned). Not for
 * int8. */
bool mm_dequant(const mm_weight &w, qdtype T, uint64_t n0, uint64_t nr, uint64_t k0,
                uint64_t kr, void *out, cudaStream_t s, qerr *err);

/* out[i] = RNE_T(x[i]) as T values, i < count (T = F16 or BF16). */
bool mm_convert_x(const float *x, uint64_t count, qdtype T, void *out, cudaStream_t s,
                  qerr *err);

/* y[m, N] = round_to(y + bias) in place. */
bool mm_bias_round(float *y, int m, uint64_t N, const mm_epi &e, cudaStream_t s, qerr *err);

/* LLM.int8: quantize x[m, K] (threshold w.threshold) into `a`. */
bool mm_i8_quantize(const mm_weight &w, const float *x, int m, const mm_i8acts &a,
                    cudaStream_t s, qerr *err);
/* Whether mm_i8_gemv quantizes x itself for this weight, x and m (m <= 4,
 * K within one activation tile and at most 12288, 16-byte aligned rows):
 * then no mm_i8_quantize is needed before it, and `a` is not read. */
bool mm_i8_fused(const mm_weight &w, const float *x, int m);
/* The int8 GEMV's kernel shapes (MM_I8_SHAPES of them for m <= 4; m > 4
 * has shape 0 only): slots[m - 1][v] = how many blocks of shape
 * v for m rows of x run at once on the current device (sms multiprocessors);
 * mm_i8_gemv chooses its shape from them. */
#define MM_I8_SHAPES 3
bool mm_i8_plan(int sms, int slots[QK_GEMV_MAX_M][MM_I8_SHAPES], qerr *err);
/* Decode: ys[j][m, N_j] = x · ws[j]ᵀ for `count` int8 products of one x
 * with one threshold and K (m <= QK_GEMV_MAX_M), from the quantized
 * activations `a` where the GEMV does not quantize x itself; up to
 * MM_I8_JOBS of them in one launch. */
#define MM_I8_JOBS 3
bool mm_i8_gemv(const mm_weight *ws, const mm_epi *es, float *const *ys, int count,
                const float *x, int m, const mm_i8acts &a, qdtype T,
                const int slots[QK_GEMV_MAX_M][MM_I8_SHAPES], cudaStream_t s, qerr *err);
/* acc[mi * ldc + j] = Σ_k ca[mi, k] · CB[n0 + j, k] exactly, j < nc, for any
 * K (tiled dp4a; the fallback where cuBLAS' int8 GEMM does not apply). */
bool mm_i8_gemm(const mm_weight &w, uint64_t n0, uint64_t nc, int m, const int8_t *ca,
                int32_t *acc, uint64_t ldc, cudaStream_t s, qerr *err);
/* y[mi, n0 + j] from acc (as above): bitsandbytes' f16 assembly, outliers,
 * round_to. */
bool mm_i8_finish(const mm_weight &w, uint64_t n0, uint64_t nc, int m, const int32_t *acc,
                  uint64_t ldc, const float *x, const mm_i8acts &a, qdtype T, const mm_epi &e,
                  float *y, cudaStream_t s, qerr *err);

#endif
