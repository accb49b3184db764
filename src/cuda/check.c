/* CUDA error checking for the kernels' launchers and the CUDA backend. */
#include <cuda_runtime_api.h>

#include "kernels/qk.h"

bool qk_ok(cudaError_t e, const char *what, qerr *err)
{
    if (e == cudaSuccess)
        return true;
    qerr_set(err, QRUN_ERR_DEVICE, "%s: %s: %s", what, cudaGetErrorName(e), cudaGetErrorString(e));
    return false;
}

bool qk_launched(const char *what, qerr *err) { return qk_ok(cudaGetLastError(), what, err); }
