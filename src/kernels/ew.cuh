/* The element-wise activation ops as device functions (CUDA C only): the
 * SwiGLU, GELU and add kernels of ops.cu apply them, and the matmul
 * epilogues that fold those ops into a product (matmul_parts.cuh mm_post)
 * call the same functions, so a folded op gives the bits its kernel gives.
 * Their agreement with the CPU is stated in ops.cu. */
#ifndef QRUN_KERNELS_EW_CUH
#define QRUN_KERNELS_EW_CUH

#include "kernels/kcommon.cuh"

/* torch's silu, a / (1 + exp(-a)), rounded to act, times up */
__device__ __forceinline__ float qk_ew_swiglu(float gate, float up, qdtype act)
{
    const float sl = qk_round(__fdiv_rn(gate, __fadd_rn(1.0f, expf(-gate))), act);
    return qk_round(__fmul_rn(sl, up), act);
}

/* exact GELU written with erfc as cpu_gelu: (0.5 x) erfc(-x / sqrt 2) */
__device__ __forceinline__ float qk_ew_gelu(float x, qdtype act)
{
    const float rsqrt2 = (float)0.70710678118654752440;
    return qk_round(__fmul_rn(__fmul_rn(0.5f, x), erfcf(__fmul_rn(-x, rsqrt2))), act);
}

__device__ __forceinline__ float qk_ew_add(float a, float b, qdtype act)
{
    return qk_round(__fadd_rn(a, b), act);
}

#endif
