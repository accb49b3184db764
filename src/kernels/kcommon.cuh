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

/* Programmatic dependent launch (Hopper): a kernel that the next one may
 * depend on lets it be scheduled early with qk_launch_dependents; a kernel
 * launched as a programmatic dependent (qk_launch_pdl) calls qk_wait_prior
 * before it reads anything the kernels before it wrote, or writes anything
 * they read. Both are no-ops without such a launch and before sm_90. */
__device__ __forceinline__ void qk_launch_dependents()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void qk_wait_prior()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* kern<<<blocks, threads, smem, s>>>(args...) as a programmatic dependent of
 * the stream's previous kernel where the current device has them (compute
 * capability 9.0 on; older GPUs get a plain launch). The attribute query is
 * a table lookup: no state is kept between launches. */
template <typename... P, typename... A>
static inline cudaError_t qk_launch_pdl(void (*kern)(P...), dim3 grid, dim3 block, size_t smem,
                                        cudaStream_t s, A &&...args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    int dev = 0, major = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (e != cudaSuccess)
        return e;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = major >= 9 ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kern, static_cast<A &&>(args)...);
}

static inline unsigned qk_div_up(uint64_t a, uint64_t b) { return (unsigned)((a + b - 1) / b); }

#endif
