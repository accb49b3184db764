#include "dtype.h"

#include <string.h>

static const char *const names[QDT_COUNT] = {
    [QDT_F32] = "f32", [QDT_F16] = "f16", [QDT_BF16] = "bf16", [QDT_I8] = "i8",
    [QDT_U8] = "u8",   [QDT_I32] = "i32", [QDT_NF4] = "nf4",   [QDT_FP4] = "fp4",
};

bool qdtype_valid(int t) { return t >= 0 && t < QDT_COUNT; }

const char *qdtype_name(qdtype t) { return qdtype_valid((int)t) ? names[t] : "?"; }

int qdtype_from_name(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < QDT_COUNT; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}

bool qdtype_is_4bit(qdtype t) { return t == QDT_NF4 || t == QDT_FP4; }

bool qdtype_nbytes(qdtype t, uint64_t nelem, uint64_t *out)
{
    uint64_t size;
    switch (t) {
    case QDT_F32: case QDT_I32: size = 4; break;
    case QDT_F16: case QDT_BF16: size = 2; break;
    case QDT_I8: case QDT_U8: size = 1; break;
    case QDT_NF4: case QDT_FP4:
        *out = nelem / 2 + (nelem & 1);
        return true;
    default: return false;
    }
    if (nelem > UINT64_MAX / size)
        return false;
    *out = nelem * size;
    return true;
}

bool qshape_numel(int ndim, const uint64_t *shape, uint64_t *out)
{
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] != 0 && n > UINT64_MAX / shape[i])
            return false;
        n *= shape[i];
    }
    *out = n;
    return true;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float qf16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) /* inf / NaN */
        return bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0)
            return bits_f32(sign);
        /* subnormal: value = man * 2^-24, exact in f32 */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t qf32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) /* NaN: keep it quiet and non-zero */
        return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x1ffu));
    if (abs >= 0x477ff000u) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (abs < 0x38800000u) { /* below the smallest normal f16: subnormal */
        /* value / 2^-24, rounded to nearest even integer */
        float a = bits_f32(abs) * 0x1p24f; /* exact: scaling by power of 2 */
        /* a < 1024; round half to even by hand */
        uint32_t i = (uint32_t)a;
        float frac = a - (float)i;
        if (frac > 0.5f || (frac == 0.5f && (i & 1u)))
            i++;
        return (uint16_t)(sign | i);
    }
    /* normal: rebias exponent, round mantissa from 23 to 10 bits */
    uint32_t mant_round = abs + 0xfffu + ((abs >> 13) & 1u);
    return (uint16_t)(sign | ((mant_round - 0x38000000u) >> 13));
}

float qbf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

uint16_t qf32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

bool qconvert_to_f32(qdtype src, const void *in, uint64_t n, float *out)
{
    const unsigned char *p = in;
    switch (src) {
    case QDT_F32:
        memcpy(out, in, n * 4);
        return true;
    case QDT_F16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = qf16_to_f32(h);
        }
        return true;
    case QDT_BF16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = qbf16_to_f32(h);
        }
        return true;
    default:
        return false;
    }
}
