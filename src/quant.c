/* bitsandbytes quantization numerics on the CPU; the rules are in
 * ../shared/docs/bnb-format.md (sections 1-3 and 5) and summarized in quant.h.
 *
 * Every constant below is written as a hex-float literal with its f32 bits in
 * a comment. Decimal literals would be a trap here: several CUDA thresholds are
 * printed f32 midpoints, i.e. decimals that lie almost exactly halfway between
 * two floats, and "(float)0.8614784181118011" (decimal -> double -> float)
 * rounds to the other neighbour than the CUDA literal "0.8614784181118011f".
 */
#include "quant.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* Every rounding below must be a single f32 operation. x87-style excess
 * precision (FLT_EVAL_METHOD 1 or 2) would silently break bit-exactness. */
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0 && FLT_EVAL_METHOD != -1
#error "quant.c needs FLT_EVAL_METHOD == 0 (compile with SSE/NEON floating point)"
#endif

/* ---- code books ------------------------------------------------------------ */

const float quant_nf4_lut[16] = {
    -0x1p+0f,        /* bf800000 */
    -0x1.647362p-1f, /* bf3239b1 */
    -0x1.0cd66p-1f,  /* bf066b30 */
    -0x1.94654p-2f,  /* beca32a0 */
    -0x1.23449ap-2f, /* be91a24d */
    -0x1.7a6a7ep-3f, /* be3d353f */
    -0x1.74f0e2p-4f, /* bdba7871 */
    0.0f,            /* 00000000 */
    0x1.45f5fep-4f,  /* 3da2faff */
    0x1.4995c6p-3f,  /* 3e24cae3 */
    0x1.f809bap-3f,  /* 3e7c04dd */
    0x1.5a0674p-2f,  /* 3ead033a */
    0x1.c3497p-2f,   /* 3ee1a4b8 */
    0x1.200f56p-1f,  /* 3f1007ab */
    0x1.722766p-1f,  /* 3f3913b3 */
    0x1p+0f,         /* 3f800000 */
};

/* Code order: bit 3 is the sign; code 8 is -0.0 as in the CUDA kernels (the
 * quant_map bitsandbytes saves has +0.0 there). */
const float quant_fp4_lut[16] = {
    0.0f,            /* 000: 00000000 */
    0x1.555556p-8f,  /* 001: 3baaaaab */
    0x1.555556p-1f,  /* 010: 3f2aaaab */
    0x1p+0f,         /* 011: 3f800000 */
    0x1.555556p-2f,  /* 100: 3eaaaaab */
    0x1p-1f,         /* 101: 3f000000 */
    0x1.555556p-3f,  /* 110: 3e2aaaab */
    0x1p-2f,         /* 111: 3e800000 */
    -0.0f,
    -0x1.555556p-8f,
    -0x1.555556p-1f,
    -0x1p+0f,
    -0x1.555556p-2f,
    -0x1p-1f,
    -0x1.555556p-3f,
    -0x1p-2f,
};

/* NF4 decision thresholds: the float literals of CUDA dQuantizeNF4. Four of
 * them (marked) are one ulp off the f32 midpoint of their neighbours. */
static const float nf4_thr[15] = {
    -0x1.b239b2p-1f, /* bf591cd9  0|1  (midpoint bf591cd8) */
    -0x1.38a4ep-1f,  /* bf1c5270  1|2 */
    -0x1.d709p-2f,   /* beeb8480  2|3 */
    -0x1.5bd4ecp-2f, /* beadea76  3|4 */
    -0x1.e079d8p-3f, /* be703cec  4|5 */
    -0x1.1a7178p-3f, /* be0d38bc  5|6 */
    -0x1.74f0e2p-5f, /* bd3a7871  6|7 */
    0x1.45f5fep-5f,  /* 3d22faff  7|8 */
    0x1.ec90c6p-4f,  /* 3df64863  8|9  (midpoint 3df64862) */
    0x1.a0cfcp-3f,   /* 3e5067e0  9|10 */
    0x1.2b05a8p-2f,  /* 3e9582d4 10|11 */
    0x1.8ea7f2p-2f,  /* 3ec753f9 11|12 */
    0x1.00da06p-1f,  /* 3f006d03 12|13 (midpoint 3f006d04) */
    0x1.491b5ep-1f,  /* 3f248daf 13|14 */
    0x1.b913b2p-1f,  /* 3f5c89d9 14|15 (midpoint 3f5c89da) */
};

/* FP4 magnitude thresholds T_k (CUDA dQuantizeFP4 literals; mostly not
 * midpoints, T_5 is ~6 ulp low). */
static const float fp4_thr[7] = {
    0x1.555572p-9f, /* 3b2aaab9 */
    0x1.6p-4f,      /* 3db00000 */
    0x1.aaaaaap-3f, /* 3e555555 */
    0x1.2aaaaap-2f, /* 3e955555 */
    0x1.aaaaacp-2f, /* 3ed55556 */
    0x1.2aaaap-1f,  /* 3f155550 */
    0x1.aaaaaap-1f, /* 3f555555 */
};

/* bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7,
 * total_bits=8): for i = 0..6 the 2^i f32 midpoints of adjacent points of
 * torch.linspace(0.1, 1, 2^i + 1, float32), times 10^(i-6) (an f32 multiply),
 * both signs, plus 0 and 1, sorted. Produced by evaluating that construction
 * with torch 2.15.0 (CPU) in float32; the result's little-endian bytes have
 * sha256 e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c,
 * identical to the torch 2.11 table of bnb-format.md section 3.1. Other torch
 * builds differ by up to 2 ulp in some entries, which is why loaders must use
 * a file's own nested_quant_map; this table is only for quantizing. */
const float quant_dynamic_map[256] = {
    -0x1.fc6666p-1f, -0x1.f53334p-1f, -0x1.eep-1f, -0x1.e6ccccp-1f,   /*   0 */
    -0x1.df999ap-1f, -0x1.d86666p-1f, -0x1.d13334p-1f, -0x1.cap-1f,   /*   4 */
    -0x1.c2ccccp-1f, -0x1.bb999ap-1f, -0x1.b46666p-1f, -0x1.ad3334p-1f,   /*   8 */
    -0x1.a6p-1f, -0x1.9eccccp-1f, -0x1.97999ap-1f, -0x1.906666p-1f,   /*  12 */
    -0x1.893334p-1f, -0x1.82p-1f, -0x1.7accccp-1f, -0x1.73999ap-1f,   /*  16 */
    -0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5ep-1f, -0x1.56ccccp-1f,   /*  20 */
    -0x1.4f999ap-1f, -0x1.486668p-1f, -0x1.413334p-1f, -0x1.3ap-1f,   /*  24 */
    -0x1.32ccccp-1f, -0x1.2b999ap-1f, -0x1.246668p-1f, -0x1.1d3334p-1f,   /*  28 */
    -0x1.16p-1f, -0x1.0eccccp-1f, -0x1.079998p-1f, -0x1.006666p-1f,   /*  32 */
    -0x1.f26664p-2f, -0x1.e4p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f,   /*  36 */
    -0x1.b8ccccp-2f, -0x1.aa6666p-2f, -0x1.9cp-2f, -0x1.8d9998p-2f,   /*  40 */
    -0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626666p-2f, -0x1.54p-2f,   /*  44 */
    -0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f,   /*  48 */
    -0x1.0cp-2f, -0x1.fb3332p-3f, -0x1.de6666p-3f, -0x1.c1999ap-3f,   /*  52 */
    -0x1.a4ccccp-3f, -0x1.88p-3f, -0x1.6b3334p-3f, -0x1.4e6666p-3f,   /*  56 */
    -0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.fp-4f, -0x1.b66668p-4f,   /*  60 */
    -0x1.93d70ap-4f, -0x1.8851eep-4f, -0x1.7ccccep-4f, -0x1.7147aep-4f,   /*  64 */
    -0x1.65c29p-4f, -0x1.5a3d7p-4f, -0x1.4eb854p-4f, -0x1.433334p-4f,   /*  68 */
    -0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f,   /*  72 */
    -0x1.09999ap-4f, -0x1.fc28f6p-5f, -0x1.e51ebap-5f, -0x1.ce147ap-5f,   /*  76 */
    -0x1.b70a3ep-5f, -0x1.ap-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f,   /*  80 */
    -0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c29p-5f,   /*  84 */
    -0x1.fd70a4p-6f, -0x1.cf5c2ap-6f, -0x1.a147aep-6f, -0x1.733334p-6f,   /*  88 */
    -0x1.451ebap-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c29p-7f,   /*  92 */
    -0x1.3e76c8p-7f, -0x1.2c083p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f,   /*  96 */
    -0x1.e978d4p-8f, -0x1.c49ba6p-8f, -0x1.9fbe76p-8f, -0x1.7ae148p-8f,   /* 100 */
    -0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f,   /* 104 */
    -0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f,   /* 108 */
    -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f, -0x1.3dd982p-11f,   /* 112 */
    -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,   /* 116 */
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f,   /* 120 */
    -0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0.0f,   /* 124 */
    0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f,   /* 128 */
    0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f,   /* 132 */
    0x1.19ce0ap-12f, 0x1.8fc506p-12f, 0x1.02de02p-11f, 0x1.3dd982p-11f,   /* 136 */
    0x1.78d5p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f,   /* 140 */
    0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f,   /* 144 */
    0x1.0c49bap-8f, 0x1.3126e8p-8f, 0x1.56041ap-8f, 0x1.7ae148p-8f,   /* 148 */
    0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f,   /* 152 */
    0x1.19999ap-7f, 0x1.2c083p-7f, 0x1.3e76c8p-7f, 0x1.75c29p-7f,   /* 156 */
    0x1.d1eb86p-7f, 0x1.170a3ep-6f, 0x1.451ebap-6f, 0x1.733334p-6f,   /* 160 */
    0x1.a147aep-6f, 0x1.cf5c2ap-6f, 0x1.fd70a4p-6f, 0x1.15c29p-5f,   /* 164 */
    0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f,   /* 168 */
    0x1.88f5c2p-5f, 0x1.ap-5f, 0x1.b70a3ep-5f, 0x1.ce147ap-5f,   /* 172 */
    0x1.e51ebap-5f, 0x1.fc28f6p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f,   /* 176 */
    0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f,   /* 180 */
    0x1.4eb854p-4f, 0x1.5a3d7p-4f, 0x1.65c29p-4f, 0x1.7147aep-4f,   /* 184 */
    0x1.7ccccep-4f, 0x1.8851eep-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f,   /* 188 */
    0x1.fp-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f,   /* 192 */
    0x1.6b3334p-3f, 0x1.88p-3f, 0x1.a4ccccp-3f, 0x1.c1999ap-3f,   /* 196 */
    0x1.de6666p-3f, 0x1.fb3332p-3f, 0x1.0cp-2f, 0x1.1a6668p-2f,   /* 200 */
    0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.54p-2f,   /* 204 */
    0x1.626666p-2f, 0x1.70ccccp-2f, 0x1.7f3334p-2f, 0x1.8d9998p-2f,   /* 208 */
    0x1.9cp-2f, 0x1.aa6666p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f,   /* 212 */
    0x1.d59998p-2f, 0x1.e4p-2f, 0x1.f26664p-2f, 0x1.006666p-1f,   /* 216 */
    0x1.079998p-1f, 0x1.0eccccp-1f, 0x1.16p-1f, 0x1.1d3334p-1f,   /* 220 */
    0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3ap-1f,   /* 224 */
    0x1.413334p-1f, 0x1.486668p-1f, 0x1.4f999ap-1f, 0x1.56ccccp-1f,   /* 228 */
    0x1.5ep-1f, 0x1.653334p-1f, 0x1.6c6668p-1f, 0x1.73999ap-1f,   /* 232 */
    0x1.7accccp-1f, 0x1.82p-1f, 0x1.893334p-1f, 0x1.906666p-1f,   /* 236 */
    0x1.97999ap-1f, 0x1.9eccccp-1f, 0x1.a6p-1f, 0x1.ad3334p-1f,   /* 240 */
    0x1.b46666p-1f, 0x1.bb999ap-1f, 0x1.c2ccccp-1f, 0x1.cap-1f,   /* 244 */
    0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df999ap-1f, 0x1.e6ccccp-1f,   /* 248 */
    0x1.eep-1f, 0x1.f53334p-1f, 0x1.fc6666p-1f, 0x1p+0f,   /* 252 */
};

/* ---- small helpers ---------------------------------------------------------- */

bool quant_blocksize_valid(int blocksize)
{
    return blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0;
}

uint64_t quant_nblocks(uint64_t n, int blocksize)
{
    if (blocksize <= 0)
        return 0;
    uint64_t bs = (uint64_t)blocksize;
    return n / bs + (n % bs != 0); /* no overflow for n near 2^64 */
}

/* Strict '>' counts: NaN compares false everywhere and lands on rank 0. The
 * counting form has no branches, so the block loops below vectorize. */
static inline uint8_t nf4_code(float s)
{
    unsigned c = 0;
    for (int k = 0; k < 15; k++)
        c += s > nf4_thr[k];
    return (uint8_t)c;
}

static inline uint8_t fp4_code(float s)
{
    float a = fabsf(s);
    unsigned r = 0;
    for (int k = 0; k < 7; k++)
        r += a > fp4_thr[k];
    /* rank -> magnitude bits 0,1,6,7,4,5,2,3: flip bit 2 where bit 1 is set. */
    unsigned bits = r ^ ((r & 2u) << 1);
    /* (s < 0) is false for -0.0 and NaN, as on the GPU. */
    return (uint8_t)(bits | ((unsigned)(s < 0.0f) << 3));
}

uint8_t quant_nf4_code(float s) { return nf4_code(s); }
uint8_t quant_fp4_code(float s) { return fp4_code(s); }

/* ---- 4-bit blockwise --------------------------------------------------------- */

/* Largest |x|; NaN elements are skipped, like CUDA's fmaxf. Done on the bit
 * patterns: for non-NaN floats |x| orders like its bits, and an integer max
 * reduction vectorizes where a float one (NaN, -0 semantics) does not.
 * Signed compares because SSE2 has no unsigned 32-bit ones. */
static float block_absmax(const float *x, size_t len)
{
    int32_t m = 0;
    for (size_t i = 0; i < len; i++) {
        int32_t u;
        memcpy(&u, &x[i], sizeof u);
        u &= 0x7fffffff;
        u = u > 0x7f800000 ? 0 : u; /* NaN */
        m = u > m ? u : m;
    }
    float f;
    memcpy(&f, &m, sizeof f);
    return f;
}

/* Codes of x[0..len) scaled by 1/absmax. The division is exact IEEE (see
 * quant.h); absmax == 0 gives 0/0 = NaN and so code 0 for the whole block,
 * which is what the GPU's 0 * rcp(0) = 0 * inf gives too. */
static void block_codes(quant_4bit_type type, const float *x, size_t len, float absmax,
                        uint8_t *codes)
{
    if (type == QUANT_NF4) {
        for (size_t i = 0; i < len; i++)
            codes[i] = nf4_code(x[i] / absmax);
    } else {
        for (size_t i = 0; i < len; i++)
            codes[i] = fp4_code(x[i] / absmax);
    }
}

void quant_4bit_quantize(quant_4bit_type type, const float *x, uint64_t n, int blocksize,
                         uint8_t *packed, float *absmax)
{
    uint8_t codes[4096 + 1]; /* one block of codes plus the padding nibble */
    if (!quant_blocksize_valid(blocksize))
        return; /* callers check; this only guards the buffer above */
    uint64_t nb = quant_nblocks(n, blocksize);
    for (uint64_t b = 0; b < nb; b++) {
        uint64_t start = b * (uint64_t)blocksize;
        size_t len = (size_t)(n - start < (uint64_t)blocksize ? n - start : (uint64_t)blocksize);
        float am = block_absmax(x + start, len);
        absmax[b] = am;
        block_codes(type, x + start, len, am, codes);
        if (len & 1) /* only the last block can be odd: pad with the code of 0.0 */
            codes[len] = type == QUANT_NF4 ? nf4_code(0.0f / am) : fp4_code(0.0f / am);
        /* blocksize is even, so a block starts on a byte boundary */
        uint8_t *dst = packed + start / 2;
        size_t nbytes = (len + 1) / 2;
        for (size_t j = 0; j < nbytes; j++)
            dst[j] = (uint8_t)((codes[2 * j] << 4) | codes[2 * j + 1]);
    }
}

void quant_4bit_dequantize(quant_4bit_type type, const uint8_t *packed, const float *absmax,
                           uint64_t first, uint64_t count, int blocksize, float *out)
{
    const float *lut = type == QUANT_NF4 ? quant_nf4_lut : quant_fp4_lut;
    if (blocksize <= 0)
        return;
    uint64_t bs = (uint64_t)blocksize;
    uint64_t i = first, end = first + count;
    while (i < end) {
        uint64_t b = i / bs;
        uint64_t stop = (b + 1) * bs < end ? (b + 1) * bs : end;
        float a = absmax[b];
        for (; i < stop; i++) {
            uint8_t byte = packed[i >> 1];
            unsigned c = (i & 1) ? (byte & 15u) : (unsigned)(byte >> 4);
            *out++ = lut[c] * a;
        }
    }
}

/* ---- double quantization ----------------------------------------------------- */

float quant_dq_offset(const float *absmax, uint64_t nblocks)
{
    if (nblocks == 0)
        return 0.0f;
    double sum = 0.0;
    for (uint64_t i = 0; i < nblocks; i++)
        sum += absmax[i];
    return (float)(sum / (double)nblocks);
}

static inline float dq_mid(const float map[256], int k)
{
    /* f32 sum, then an exact halving: the midpoint CUDA dQuantize computes. */
    float sum = map[k] + map[k + 1];
    return sum * 0.5f;
}

/* Number of midpoints strictly below s (mids are nondecreasing for a sorted
 * map), i.e. the nearest index with ties going down. */
static int dq_rank(float s, const float map[256])
{
    int lo = 0, hi = 255;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (s > dq_mid(map, mid))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

uint8_t quant_dq_code(float s, const float map[256])
{
    if (isnan(s))
        return 0;
    int k = dq_rank(s, map);
    /* Exactly on the midpoint between k and k+1: CUDA's 7-step binary search
     * always ends on an even pivot and keeps it on equality, so the tie goes
     * to the even index. */
    if (k < 255 && (k & 1) && s == dq_mid(map, k))
        k++;
    return (uint8_t)k;
}

void quant_dq_quantize(const float *absmax, uint64_t nblocks, float offset, const float map[256],
                       uint8_t *qabsmax, float *absmax2)
{
    float c[QUANT_DQ_BLOCKSIZE];
    uint64_t ng = quant_nblocks(nblocks, QUANT_DQ_BLOCKSIZE);
    for (uint64_t g = 0; g < ng; g++) {
        uint64_t start = g * QUANT_DQ_BLOCKSIZE;
        size_t len = (size_t)(nblocks - start < QUANT_DQ_BLOCKSIZE ? nblocks - start
                                                                   : QUANT_DQ_BLOCKSIZE);
        for (size_t i = 0; i < len; i++)
            c[i] = absmax[start + i] - offset;
        float a2 = block_absmax(c, len);
        absmax2[g] = a2;
        /* a2 == 0 gives NaN and so index 0, as on the GPU. */
        for (size_t i = 0; i < len; i++)
            qabsmax[start + i] = quant_dq_code(c[i] / a2, map);
    }
}

void quant_dq_dequantize(const uint8_t *qabsmax, const float *absmax2, float offset,
                         const float map[256], uint64_t first, uint64_t count, float *absmax)
{
    for (uint64_t i = 0; i < count; i++) {
        uint64_t b = first + i;
        /* Two roundings, never an FMA (bnb's dequantize_4bit rounds the
         * product; an FMA differs on ~5% of blocks). The volatile store makes
         * that hold whatever -ffp-contract the build uses. */
        volatile float prod = map[qabsmax[b]] * absmax2[b / QUANT_DQ_BLOCKSIZE];
        absmax[i] = prod + offset;
    }
}

/* ---- LLM.int8 rows ----------------------------------------------------------- */

void quant_int8_quantize_rows(const float *w, uint64_t rows, uint64_t cols, int8_t *cb, float *scb)
{
    /* 1.5 * 2^23: adding and subtracting it rounds |p| < 2^22 to an integer
     * with the current (round-to-nearest-even) mode, without a libm call. */
    const float rne_magic = 0x1.8p23f;
    for (uint64_t r = 0; r < rows; r++) {
        const float *wr = w + r * cols;
        int8_t *cr = cb + r * cols;
        float m = block_absmax(wr, (size_t)cols);
        scb[r] = m;
        float scale = 127.0f / m; /* exact; m == 0 gives inf and 0 * inf = NaN -> 0 */
        for (uint64_t c = 0; c < cols; c++) {
            float p = wr[c] * scale;
            int8_t q;
            if (fabsf(p) <= 127.5f)
                q = (int8_t)(int)((p + rne_magic) - rne_magic);
            else /* NaN (zero row) -> 0 like __float2int_rn; saturate the impossible rest */
                q = isnan(p) ? 0 : (p > 0.0f ? 127 : -128);
            cr[c] = q;
        }
    }
}

void quant_int8_dequantize_rows(const int8_t *cb, const float *scb, uint64_t rows, uint64_t cols,
                                float *w)
{
    const float inv127 = 0x1.020408p-7f; /* 3c010204 = f32(1/127) */
    for (uint64_t r = 0; r < rows; r++) {
        float s = scb[r];
        for (uint64_t c = 0; c < cols; c++) {
            float p = (float)cb[r * cols + c] * s;
            w[r * cols + c] = p * inv127;
        }
    }
}

/* ---- fixture comparison rules ------------------------------------------------ */

/* Position of f on the line of floats: consecutive floats differ by 1 and
 * +0 / -0 both map to 0. */
static int64_t f32_ordinal(float f)
{
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i < 0 ? -(int64_t)(i & 0x7fffffff) : (int64_t)i;
}

static bool within_ulps(float a, float b, int ulps)
{
    int64_t d = f32_ordinal(a) - f32_ordinal(b);
    return d >= -ulps && d <= ulps;
}

bool quant_4bit_near_threshold(quant_4bit_type t, float s, int ulps)
{
    if (isnan(s))
        return false;
    if (t == QUANT_NF4) {
        for (int k = 0; k < 15; k++)
            if (within_ulps(s, nf4_thr[k], ulps))
                return true;
        return false;
    }
    float a = fabsf(s);
    for (int k = 0; k < 7; k++)
        if (within_ulps(a, fp4_thr[k], ulps))
            return true;
    /* The GPU flushes a subnormal product to zero (ftz), dropping the sign
     * bit that a tiny negative value keeps here. */
    return s != 0.0f && a < FLT_MIN;
}

bool quant_dq_near_midpoint(float s, const float map[256], int ulps)
{
    if (isnan(s))
        return false;
    int k = dq_rank(s, map);
    for (int j = k - 2; j <= k + 2; j++)
        if (j >= 0 && j < 255 && within_ulps(s, dq_mid(map, j), ulps))
            return true;
    return false;
}

bool quant_int8_near_half(float v, int ulps)
{
    if (isnan(v) || fabsf(v) >= 0x1p22f)
        return false;
    return within_ulps(v, floorf(v) + 0.5f, ulps);
}
