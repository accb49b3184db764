#include "bnb_inputs.h"

#include <math.h>

static uint64_t mix(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ull;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z;
}

static uint64_t r(uint64_t key, uint64_t i) { return mix(key + (i + 1) * 0x9e3779b97f4a7c15ull); }

void bnb_gen_values(uint64_t seed, uint64_t n, qdtype dtype, uint64_t zero_begin,
                    uint64_t zero_end, float *x)
{
    uint64_t base = seed * 8;
    for (uint64_t i = 0; i < n; i++) {
        double g = 0.0;
        for (uint64_t k = 0; k < 4; k++)
            g += (double)(r(base + k, i) >> 40) * 0x1p-24;
        g -= 2.0;
        uint64_t e = r(base + 4, i);
        double scale = ldexp(1.0, -(int)((e >> 60) & 7));
        if (e % 61 == 0)
            scale *= 8.0;
        float v = (float)(g * scale);
        if (i >= zero_begin && i < zero_end)
            v = 0.0f;
        if (dtype == QDT_F16)
            v = qf16_to_f32(qf32_to_f16(v));
        else if (dtype == QDT_BF16)
            v = qbf16_to_f32(qf32_to_bf16(v));
        x[i] = v;
    }
}
