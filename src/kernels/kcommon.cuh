/* Device helpers shared by the kernels (CUDA C only). */
#ifndef QRUN_KERNELS_KCOMMON_CUH
#define QRUN_KERNELS_KCOMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "kernels/qk.h"

/* Round f32 to the act dtype and back (RNE, as src/cpu/ops.c cpu_round_act):
 * QDT_F32 leaves x. */
__device__ __forceinline__ float qk_round(float x, qdtype act)
{
    if (act == QDT_F16)
        return __half2float(__float2half_rn(x));
    if (act == QDT_BF16)
        return __bfloat162float(__float2bfloat16_rn(x));
    return x;
}

/* Load element i of an f32/f16/bf16 array as f32 (exact). */
__device__ __forceinline__ float qk_load(const void *p, qdtype dt, uint64_t i)
{
    if (dt == QDT_F16)
        return __half2float(((const __half *)p)[i]);
    if (dt == QDT_BF16)
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return ((const float *)p)[i];
}

static inline unsigned qk_div_up(uint64_t a, uint64_t b) { return (unsigned)((a + b - 1) / b); }

#endif
