/* CPU matmul with on-the-fly dequantization (see matmul.h for the numerics).
 *
 * Structure:
 *  - deq_range() turns a flat range of the weight (layout 1: blocks over the
 *    row-major flattening, so a range may start mid-block, mid-byte, or
 *    cross a block that straddles two rows) into compute-dtype values in a
 *    small f32 buffer. For 4-bit codes it looks up both nibbles of a byte at
 *    once in a 256-entry table of LUT pairs (one 8-byte load per byte), then
 *    scales and rounds each block piece in a vectorizable loop.
 *  - small M: every task streams a few weight rows once, dequantizing a
 *    K-chunk at a time, and takes dot products with all M rows of x in
 *    16 independent lanes (vectorizes without reassociating a reduction).
 *  - large M: every task dequantizes a 16-row x 256-deep tile of W once,
 *    transposes it and runs a 4x16 register-blocked kernel over its M-tile
 *    of x; y holds the running sums between K-tiles.
 *  - int8: activations are quantized once per call into caller scratch,
 *    then exact int32 dot products, bitsandbytes' f16 assembly, outliers.
 * The tiles depend on the shape only, and every output element is summed
 * sequentially by one task, so results are identical for any thread count.
 *
 * Hot functions are compiled twice on x86-64 GCC (baseline and x86-64-v3,
 * picked at load time) so the auto-vectorizer can use AVX2 without the
 * build needing -march flags. The project builds with -std=c11, where GCC
 * does not contract a*b+c into an FMA, so both versions round alike. */
#include "cpu/matmul.h"

#include <math.h>
#include <string.h>

#include "quant.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(QRUN_NO_CLONES)
#define QMM_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define QMM_HOT
#endif
#if defined(__GNUC__)
#define QMM_INLINE static inline __attribute__((always_inline))
#define QMM_ALIGNED __attribute__((aligned(64)))
#else
#define QMM_INLINE static inline
#define QMM_ALIGNED
#endif

#define LANES 16    /* independent accumulators of a dot product */
#define KC 512      /* k-chunk of one weight row dequantized at a time (small M) */
#define NR_SMALL 16 /* weight rows per task (small M) */
#define NT 16       /* weight rows (output columns) per GEMM tile */
#define KT 256      /* k-depth of a dequantized GEMM tile */
#define MR 4        /* x rows of the GEMM register block */
#define MT 64       /* x rows per task (large M and int8) */

/* LLM.int8 constants (bnb-format.md §5): f32(1/127) and f32(1/16129). */
#define INV127 0x1.020408p-7f
#define INV16129 0x1.040c20p-14f

/* ---- bit-level conversions that vectorize ---------------------------------- */

QMM_INLINE uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

QMM_INLINE float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Nearest bf16 value (RNE) as f32; overflow carries into inf, NaN kept. */
QMM_INLINE float round_bf16(float v)
{
    uint32_t u = f2u(v);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    return v != v ? v : u2f(r);
}

/* Nearest f16 value (RNE) as f32. Below 2^-14 (f16 subnormals) the grid is
 * a fixed 2^-24, which adding and removing 0.5f rounds to; above, the
 * mantissa is cut to 10 bits with RNE on the bits; past 65504 it is inf. */
QMM_INLINE float round_f16(float v)
{
    uint32_t u = f2u(v), s = u & 0x80000000u, a = u ^ s;
    uint32_t sub = f2u((u2f(a) + 0.5f) - 0.5f);
    uint32_t rn = (a + 0xfffu + ((a >> 13) & 1u)) & 0xffffe000u;
    /* Selections as masks: GCC will not if-convert a branch that holds a
     * float operation (it might trap), and a branch stops vectorization. */
    uint32_t big = 0u - (uint32_t)(rn > 0x477fe000u);
    rn = (rn & ~big) | (0x7f800000u & big);
    uint32_t tiny = 0u - (uint32_t)(a < 0x38800000u);
    uint32_t r = (sub & tiny) | (rn & ~tiny);
    uint32_t nan = 0u - (uint32_t)(a > 0x7f800000u);
    r = (a & nan) | (r & ~nan);
    return u2f(r | s);
}

QMM_INLINE float f16_to_f32(uint16_t h)
{
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7fffu, u = em << 13;
    uint32_t norm = u + (112u << 23);                     /* rebias the exponent */
    uint32_t sub = f2u(u2f(u + (113u << 23)) - 0x1p-14f); /* exact: m * 2^-24 */
    uint32_t tiny = 0u - (uint32_t)(em < 0x400u), inf = 0u - (uint32_t)(em >= 0x7c00u);
    norm = (norm & ~inf) | ((u + (224u << 23)) & inf);
    uint32_t r = (sub & tiny) | (norm & ~tiny);
    return u2f(r | s);
}

QMM_INLINE float bf16_to_f32(uint16_t b)
{
    return u2f((uint32_t)b << 16);
}

QMM_INLINE float round_to(qdtype t, float v)
{
    return t == QDT_BF16 ? round_bf16(v) : t == QDT_F16 ? round_f16(v) : v;
}

/* out[i] = RNE_T(out[i] * a); one loop per T so each vectorizes. */
QMM_INLINE void scale_round(float *restrict out, size_t n, float a, qdtype t)
{
    if (t == QDT_F32) {
        for (size_t i = 0; i < n; i++)
            out[i] = out[i] * a;
    } else if (t == QDT_BF16) {
        for (size_t i = 0; i < n; i++)
            out[i] = round_bf16(out[i] * a);
    } else {
        for (size_t i = 0; i < n; i++)
            out[i] = round_f16(out[i] * a);
    }
}

QMM_INLINE void round_array(float *restrict v, size_t n, qdtype t)
{
    if (t == QDT_BF16) {
        for (size_t i = 0; i < n; i++)
            v[i] = round_bf16(v[i]);
    } else if (t == QDT_F16) {
        for (size_t i = 0; i < n; i++)
            v[i] = round_f16(v[i]);
    }
}

void qmatmul_round(qdtype t, float *v, size_t n)
{
    round_array(v, n, t);
}

/* ---- the call's context ------------------------------------------------------ */

typedef struct mmctx {
    const qweight *w;
    const float *x;
    float *y;
    uint64_t M, N, K;
    qdtype T;
    qdtype bias_dt;
    const void *bias;
    uint64_t m_tiles; /* tasks are n_tile * m_tiles + m_tile */
    /* 4-bit */
    const uint8_t *codes;
    const float *lut;
    uint64_t bs;
    unsigned bs_shift; /* blocksizes are powers of two: no division per block */
    float pairs[256][2]; /* pairs[byte] = {lut[byte >> 4], lut[byte & 15]} */
    /* int8 */
    const int8_t *ca;
    const float *sca;
    const uint32_t *ocols;
    uint32_t nout;
} mmctx;

static void init_4bit(mmctx *c, const qweight *w)
{
    c->codes = w->data;
    c->lut = w->dtype == QDT_NF4 ? quant_nf4_lut : quant_fp4_lut;
    c->bs = (uint64_t)w->blocksize;
    c->bs_shift = 0;
    while ((1ull << c->bs_shift) < c->bs)
        c->bs_shift++;
    for (int b = 0; b < 256; b++) {
        c->pairs[b][0] = c->lut[b >> 4];
        c->pairs[b][1] = c->lut[b & 15];
    }
}

QMM_INLINE float block_absmax(const qweight *w, uint64_t b)
{
    if (w->absmax)
        return w->absmax[b];
    float a; /* the reference reconstruction (two roundings, never an FMA) */
    quant_dq_dequantize(w->qabsmax, w->absmax2, w->absmax_offset, w->dq_map, b, 1, &a);
    return a;
}

/* Both codes of npairs bytes as raw LUT values: one 8-byte copy per byte.
 * Kept scalar and out of line: GCC otherwise "vectorizes" it into an
 * emulated gather that is several times slower. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noinline, optimize("no-tree-vectorize")))
#endif
static void lookup_pairs(const float (*pairs)[2], const uint8_t *restrict pb, size_t npairs,
                         float *restrict o)
{
    for (size_t j = 0; j < npairs; j++)
        memcpy(o + 2 * j, pairs[pb[j]], 2 * sizeof(float));
}

/* Flat elements [f0, f0 + len) of a 4-bit weight as W_T values. */
QMM_INLINE void deq4_range(const mmctx *c, uint64_t f0, size_t len, float *restrict out)
{
    const uint8_t *p = c->codes;
    size_t i = 0;
    if (len == 0)
        return;
    if (f0 & 1) { /* odd start: the low nibble of a byte */
        out[0] = c->lut[p[f0 >> 1] & 15u];
        i = 1;
    }
    const uint8_t *pb = p + ((f0 + i) >> 1);
    size_t npairs = (len - i) / 2;
    lookup_pairs((const float(*)[2])c->pairs, pb, npairs, out + i);
    if ((len - i) & 1)
        out[len - 1] = c->lut[pb[npairs] >> 4];
    /* Scale each block piece by its absmax and round to T. */
    size_t pos = 0;
    while (pos < len) {
        uint64_t fl = f0 + pos, b = fl >> c->bs_shift;
        uint64_t left = (b + 1) * c->bs - fl;
        size_t n = left < len - pos ? (size_t)left : len - pos;
        scale_round(out + pos, n, block_absmax(c->w, b), c->T);
        pos += n;
    }
}

/* Flat elements [f0, f0 + len) of the weight as W_T values (not int8). */
QMM_INLINE void deq_range(const mmctx *c, uint64_t f0, size_t len, float *restrict out)
{
    const qweight *w = c->w;
    switch (w->dtype) {
    case QDT_NF4:
    case QDT_FP4:
        deq4_range(c, f0, len, out);
        return;
    case QDT_F32: {
        const float *restrict s = (const float *)w->data + f0;
        memcpy(out, s, len * sizeof *out);
        round_array(out, len, c->T);
        return;
    }
    case QDT_F16: {
        const uint16_t *restrict s = (const uint16_t *)w->data + f0;
        for (size_t i = 0; i < len; i++)
            out[i] = f16_to_f32(s[i]);
        if (c->T == QDT_BF16)
            round_array(out, len, c->T);
        return;
    }
    default: { /* QDT_BF16 */
        const uint16_t *restrict s = (const uint16_t *)w->data + f0;
        for (size_t i = 0; i < len; i++)
            out[i] = bf16_to_f32(s[i]);
        if (c->T == QDT_F16)
            round_array(out, len, c->T);
        return;
    }
    }
}

QMM_INLINE float bias_at(const mmctx *c, uint64_t n)
{
    if (!c->bias)
        return 0.0f;
    if (c->bias_dt == QDT_F32)
        return ((const float *)c->bias)[n];
    uint16_t h = ((const uint16_t *)c->bias)[n];
    return c->bias_dt == QDT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

/* ---- small M: stream weight rows, dot products in 16 lanes ------------------- */

/* acc[l] += Σ x[i]·w[i] over i ≡ l (mod LANES), i ascending; chunks start at
 * multiples of LANES so a lane keeps its residue across chunks. */
QMM_INLINE void dot_lanes(float *restrict acc, const float *restrict x, const float *restrict w,
                          size_t len)
{
    float a[LANES];
    for (int l = 0; l < LANES; l++)
        a[l] = acc[l];
    size_t i = 0;
    for (; i + LANES <= len; i += LANES)
        for (int l = 0; l < LANES; l++)
            a[l] += x[i + l] * w[i + l];
    for (size_t l = 0; i < len; i++, l++)
        a[l] += x[i] * w[i];
    for (int l = 0; l < LANES; l++)
        acc[l] = a[l];
}

/* Fixed pairwise reduction of the lanes. */
QMM_INLINE float reduce_lanes(const float *acc)
{
    float a[LANES];
    for (int l = 0; l < LANES; l++)
        a[l] = acc[l];
    for (int s = LANES / 2; s > 0; s /= 2)
        for (int l = 0; l < s; l++)
            a[l] += a[l + s];
    return a[0];
}

QMM_HOT static void small_task(void *vctx, int task, int n_tasks)
{
    (void)n_tasks;
    const mmctx *c = vctx;
    float wbuf[KC] QMM_ALIGNED;
    float acc[QMATMUL_SMALL_M][LANES] QMM_ALIGNED;
    uint64_t n0 = (uint64_t)task * NR_SMALL, n1 = n0 + NR_SMALL < c->N ? n0 + NR_SMALL : c->N;
    for (uint64_t n = n0; n < n1; n++) {
        memset(acc, 0, sizeof acc);
        for (uint64_t k0 = 0; k0 < c->K; k0 += KC) {
            size_t len = c->K - k0 < KC ? (size_t)(c->K - k0) : KC;
            deq_range(c, n * c->K + k0, len, wbuf);
            for (uint64_t m = 0; m < c->M; m++)
                dot_lanes(acc[m], c->x + m * c->K + k0, wbuf, len);
        }
        float b = bias_at(c, n);
        for (uint64_t m = 0; m < c->M; m++)
            c->y[m * c->N + n] = reduce_lanes(acc[m]) + b;
    }
}

/* ---- large M: tiled GEMM ------------------------------------------------------ */

/* acc[r][j] += Σ_k x_r[k] · wt[k][j], k ascending. */
QMM_INLINE void kernel_4x16(float acc[MR][NT], const float *restrict x0, const float *restrict x1,
                            const float *restrict x2, const float *restrict x3,
                            const float (*restrict wt)[NT], size_t kt)
{
    float a0[NT], a1[NT], a2[NT], a3[NT];
    for (int j = 0; j < NT; j++) {
        a0[j] = acc[0][j];
        a1[j] = acc[1][j];
        a2[j] = acc[2][j];
        a3[j] = acc[3][j];
    }
    for (size_t k = 0; k < kt; k++) {
        float b0 = x0[k], b1 = x1[k], b2 = x2[k], b3 = x3[k];
        for (int j = 0; j < NT; j++) {
            float v = wt[k][j];
            a0[j] += b0 * v;
            a1[j] += b1 * v;
            a2[j] += b2 * v;
            a3[j] += b3 * v;
        }
    }
    for (int j = 0; j < NT; j++) {
        acc[0][j] = a0[j];
        acc[1][j] = a1[j];
        acc[2][j] = a2[j];
        acc[3][j] = a3[j];
    }
}

QMM_HOT static void gemm_task(void *vctx, int task, int n_tasks)
{
    (void)n_tasks;
    const mmctx *c = vctx;
    float rows[NT][KT] QMM_ALIGNED;
    float wt[KT][NT] QMM_ALIGNED;
    float acc[MR][NT] QMM_ALIGNED;
    uint64_t nt = (uint64_t)task / c->m_tiles, mt = (uint64_t)task % c->m_tiles;
    uint64_t n0 = nt * NT, nn = c->N - n0 < NT ? c->N - n0 : NT;
    uint64_t m0 = mt * MT, m1 = m0 + MT < c->M ? m0 + MT : c->M;
    const uint64_t K = c->K, N = c->N;
    for (uint64_t k0 = 0; k0 < K; k0 += KT) {
        size_t kt = K - k0 < KT ? (size_t)(K - k0) : KT;
        for (uint64_t j = 0; j < NT; j++) {
            if (j < nn)
                deq_range(c, (n0 + j) * K + k0, kt, rows[j]);
            else
                memset(rows[j], 0, kt * sizeof(float));
        }
        for (size_t k = 0; k < kt; k++)
            for (int j = 0; j < NT; j++)
                wt[k][j] = rows[j][k];
        bool last = k0 + kt == K;
        for (uint64_t m = m0; m < m1; m += MR) {
            uint64_t mr = m1 - m < MR ? m1 - m : MR;
            if (k0 == 0) {
                memset(acc, 0, sizeof acc);
            } else {
                for (uint64_t r = 0; r < mr; r++)
                    for (uint64_t j = 0; j < nn; j++)
                        acc[r][j] = c->y[(m + r) * N + n0 + j];
            }
            /* Rows past the tile edge repeat the last row; never stored. */
            const float *xr[MR];
            for (uint64_t r = 0; r < MR; r++)
                xr[r] = c->x + (m + (r < mr ? r : mr - 1)) * K + k0;
            kernel_4x16(acc, xr[0], xr[1], xr[2], xr[3], (const float(*)[NT])wt, kt);
            for (uint64_t r = 0; r < mr; r++)
                for (uint64_t j = 0; j < nn; j++)
                    c->y[(m + r) * N + n0 + j] =
                        last ? acc[r][j] + bias_at(c, n0 + j) : acc[r][j];
        }
    }
}

/* ---- LLM.int8 ------------------------------------------------------------------ */

QMM_HOT static void quantize_acts(const float *x, uint64_t M, uint64_t K, float threshold,
                                  int8_t *ca, float *sca, uint32_t *ocols, uint32_t *nout)
{
    /* Pass 1: outlier columns, flagged in ca's first row (free until pass 3
     * writes it), then listed in ascending order. */
    uint32_t no = 0;
    if (threshold > 0.0f) {
        int8_t *restrict flag = ca;
        memset(flag, 0, K);
        for (uint64_t m = 0; m < M; m++) {
            const float *restrict xr = x + m * K;
            for (uint64_t k = 0; k < K; k++)
                flag[k] |= (int8_t)(fabsf(round_f16(xr[k])) >= threshold);
        }
        for (uint64_t k = 0; k < K; k++)
            if (flag[k])
                ocols[no++] = (uint32_t)k;
    }
    *nout = no;
    /* Pass 2/3 per row: absmax of the elements below the threshold, then
     * round_half_even(x16 * (127 / absmax)). */
    const float lim = threshold > 0.0f ? threshold : INFINITY;
    for (uint64_t m = 0; m < M; m++) {
        const float *restrict xr = x + m * K;
        int8_t *restrict cr = ca + m * K;
        float amax = 0.0f;
        for (uint64_t k = 0; k < K; k++) {
            float a = fabsf(round_f16(xr[k]));
            a = a < lim ? a : 0.0f;
            amax = amax > a ? amax : a;
        }
        sca[m] = amax;
        float scale = 127.0f / amax; /* amax 0: inf, and 0 * inf = NaN -> 0 below */
        for (uint64_t k = 0; k < K; k++) {
            float v = round_f16(xr[k]) * scale;
            v = v == v ? v : 0.0f;                         /* NaN -> 0 as __float2int_rn */
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v; /* only outliers get here */
            v = (v + 0x1.8p23f) - 0x1.8p23f;               /* RNE to an integer */
            cr[k] = (int8_t)(int32_t)v;
        }
        for (uint32_t j = 0; j < no; j++)
            cr[ocols[j]] = 0;
    }
}

void qmatmul_int8_quantize_acts(const float *x, uint64_t m, uint64_t k, float threshold,
                                int8_t *ca, float *sca, uint32_t *outlier_cols,
                                uint32_t *n_outliers)
{
    quantize_acts(x, m, k, threshold, ca, sca, outlier_cols, n_outliers);
}

QMM_INLINE int32_t dot_i8(const int8_t *restrict a, const int8_t *restrict b, uint64_t K)
{
    int32_t s = 0;
    for (uint64_t k = 0; k < K; k++)
        s += (int32_t)a[k] * (int32_t)b[k];
    return s;
}

QMM_HOT static void int8_task(void *vctx, int task, int n_tasks)
{
    (void)n_tasks;
    const mmctx *c = vctx;
    const qweight *w = c->w;
    const int8_t *cb = w->data;
    uint64_t nt = (uint64_t)task / c->m_tiles, mt = (uint64_t)task % c->m_tiles;
    uint64_t n0 = nt * NT, n1 = n0 + NT < c->N ? n0 + NT : c->N;
    uint64_t m0 = mt * MT, m1 = m0 + MT < c->M ? m0 + MT : c->M;
    const uint64_t K = c->K, N = c->N;
    /* bitsandbytes fuses the bias into int8_mm_dequant only when the bias
     * tensor is fp16, i.e. in an f16 model; in f32 and bf16 models it is
     * added to the f16 result afterwards. The model dtype is `compute`. */
    const bool fused_bias = c->bias && c->T == QDT_F16;
    for (uint64_t n = n0; n < n1; n++) {
        const int8_t *cbr = cb + n * K;
        const float scb = w->scb[n], b = bias_at(c, n);
        for (uint64_t m = m0; m < m1; m++) {
            int32_t acc = dot_i8(c->ca + m * K, cbr, K);
            /* int8_mm_dequant: f32(f32(acc * SCA) * SCB), times f32(1/16129),
             * an f16 bias fused by fmaf; the result is an f16 value. */
            float v = ((float)acc * c->sca[m]) * scb;
            float y16;
            if (fused_bias) {
                y16 = round_f16(fmaf(v, INV16129, b));
            } else {
                y16 = round_f16(v * INV16129);
                if (c->bias)
                    y16 = round_f16(y16 + b); /* out.add_(bias) in f16 storage */
            }
            float yt = round_to(c->T, y16);
            if (c->nout) {
                /* addmm(y, X[:, O], dequant(CB[:, O]).to(T)ᵀ) */
                const float *xr = c->x + m * K;
                float s = 0.0f;
                for (uint32_t j = 0; j < c->nout; j++) {
                    uint32_t o = c->ocols[j];
                    float wv = round_to(c->T, ((float)cbr[o] * scb) * INV127);
                    s += round_to(c->T, xr[o]) * wv;
                }
                yt = round_to(c->T, yt + s);
            }
            c->y[m * N + n] = yt;
        }
    }
}

/* ---- entry points ---------------------------------------------------------------- */

#define ALIGN_UP(v) (((v) + 63u) & ~(size_t)63u)

size_t qmatmul_scratch_size(const qweight *w, uint64_t m)
{
    if (!w || w->dtype != QDT_I8)
        return 0;
    uint64_t K = w->cols;
    if (m > SIZE_MAX / 8 || K > SIZE_MAX / 8 || (m && K > (SIZE_MAX / 4) / m))
        return SIZE_MAX; /* cannot be allocated; qmatmul then refuses */
    return ALIGN_UP((size_t)(m * K)) + ALIGN_UP((size_t)m * sizeof(float)) +
           ALIGN_UP((size_t)K * sizeof(uint32_t));
}

static bool float_type(qdtype t)
{
    return t == QDT_F32 || t == QDT_F16 || t == QDT_BF16;
}

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

bool qmatmul(const qweight *w, const float *x, uint64_t m, qdtype compute, qdtype bias_dtype,
             const void *bias, float *y, void *scratch, size_t scratch_size, qthreads *pool,
             qerr *err)
{
    if (!qweight_check(w, err))
        return false;
    if (!float_type(compute) || (bias && !float_type(bias_dtype))) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: compute and bias dtypes must be f32, "
                                                  "f16 or bf16");
        return false;
    }
    if (m == 0)
        return true;
    if (!x || !y) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "matmul: x and y are needed");
        return false;
    }
    mmctx *c = NULL;
    mmctx local; /* ~2 KiB: fine on the caller's stack */
    c = &local;
    memset(c, 0, offsetof(mmctx, pairs));
    c->w = w;
    c->x = x;
    c->y = y;
    c->M = m;
    c->N = w->rows;
    c->K = w->cols;
    c->T = compute;
    c->bias_dt = bias_dtype;
    c->bias = bias;
    c->ca = NULL;
    c->sca = NULL;
    c->ocols = NULL;
    c->nout = 0;
    uint64_t n_tasks;
    qthreads_fn fn;
    if (w->dtype == QDT_I8) {
        size_t need = qmatmul_scratch_size(w, m);
        if (need == SIZE_MAX || !scratch || scratch_size < need) {
            qerr_set(err, QRUN_ERR_INVALID_ARGUMENT,
                     "matmul: int8 needs %zu bytes of scratch for %llu rows, got %zu", need,
                     (unsigned long long)m, scratch ? scratch_size : 0);
            return false;
        }
        unsigned char *s = scratch;
        int8_t *ca = (int8_t *)s;
        float *sca = (float *)(s + ALIGN_UP((size_t)(m * c->K)));
        uint32_t *oc = (uint32_t *)((unsigned char *)sca + ALIGN_UP((size_t)m * sizeof(float)));
        uint32_t no = 0;
        quantize_acts(x, m, c->K, w->int8_threshold, ca, sca, oc, &no);
        c->ca = ca;
        c->sca = sca;
        c->ocols = oc;
        c->nout = no;
        c->m_tiles = ceil_div(m, MT);
        n_tasks = ceil_div(c->N, NT) * c->m_tiles;
        fn = int8_task;
    } else {
        if (qdtype_is_4bit(w->dtype))
            init_4bit(c, w);
        if (m <= QMATMUL_SMALL_M) {
            n_tasks = ceil_div(c->N, NR_SMALL);
            fn = small_task;
        } else {
            c->m_tiles = ceil_div(m, MT);
            n_tasks = ceil_div(c->N, NT) * c->m_tiles;
            fn = gemm_task;
        }
    }
    if (n_tasks > INT32_MAX) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED, "matmul: shape too large");
        return false;
    }
    qthreads_run(pool, (int)n_tasks, fn, c);
    return true;
}

bool qmatmul_dequant_row(const qweight *w, uint64_t row, qdtype compute, float *out, qerr *err)
{
    if (!qweight_check(w, err))
        return false;
    if (!float_type(compute) || !out || row >= w->rows) {
        qerr_set(err, QRUN_ERR_INVALID_ARGUMENT, "dequant row %llu: bad arguments",
                 (unsigned long long)row);
        return false;
    }
    uint64_t K = w->cols;
    if (w->dtype == QDT_I8) {
        const int8_t *cb = (const int8_t *)w->data + row * K;
        float s = w->scb[row];
        for (uint64_t k = 0; k < K; k++)
            out[k] = round_to(compute, ((float)cb[k] * s) * INV127);
        return true;
    }
    mmctx local;
    memset(&local, 0, offsetof(mmctx, pairs));
    local.w = w;
    local.T = compute;
    local.K = K;
    if (qdtype_is_4bit(w->dtype))
        init_4bit(&local, w);
    for (uint64_t k0 = 0; k0 < K; k0 += KC) {
        size_t len = K - k0 < KC ? (size_t)(K - k0) : KC;
        deq_range(&local, row * K + k0, len, out + k0);
    }
    return true;
}
