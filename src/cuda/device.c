#include "cuda/device.h"

#include <cuda_runtime.h>
#include <string.h>

int cuda_device_count(qerr *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        qerr_set(err, QRUN_ERR_DEVICE, "no usable CUDA device: %s (%s)", cudaGetErrorString(e),
                 cudaGetErrorName(e));
        (void)cudaGetLastError(); /* clear the sticky-free error state */
        return 0;
    }
    if (n == 0)
        qerr_set(err, QRUN_ERR_DEVICE, "no CUDA device found");
    return n;
}

qrun_status cuda_device_query(int index, cuda_device_info *info, qerr *err)
{
    struct cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, index);
    if (e != cudaSuccess)
        return qerr_set(err, QRUN_ERR_DEVICE, "CUDA device %d: cudaGetDeviceProperties: %s", index,
                        cudaGetErrorString(e));
    memset(info, 0, sizeof *info);
    info->index = index;
    memcpy(info->name, p.name, sizeof info->name - 1);
    info->cc_major = p.major;
    info->cc_minor = p.minor;
    info->multiprocessors = p.multiProcessorCount;
    info->total_mem = p.totalGlobalMem;
    info->l2_bytes = (size_t)p.l2CacheSize;
    e = cudaSetDevice(index);
    if (e == cudaSuccess)
        e = cudaMemGetInfo(&info->free_mem, &info->total_mem);
    if (e != cudaSuccess)
        return qerr_set(err, QRUN_ERR_DEVICE, "CUDA device %d: %s", index, cudaGetErrorString(e));
    return QRUN_OK;
}
