/* Option values shared by the command-line tools (cli_args.h). */
#include "cli_args.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

bool cli_int(const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

bool cli_float(const char *s, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return false;
    *out = (float)v;
    return true;
}

bool cli_backend(const char *s, qrun_backend *out)
{
    if (!strcmp(s, "auto"))
        *out = QRUN_BACKEND_AUTO;
    else if (!strcmp(s, "cpu"))
        *out = QRUN_BACKEND_CPU;
    else if (!strcmp(s, "cuda"))
        *out = QRUN_BACKEND_CUDA;
    else
        return false;
    return true;
}

bool cli_gpu_layers(const char *s, int *out)
{
    if (!strcmp(s, "auto")) {
        *out = -1;
        return true;
    }
    return cli_int(s, 0, 1 << 20, out);
}

bool cli_kv_type(const char *s, qrun_kv_type *out)
{
    if (!strcmp(s, "f16"))
        *out = QRUN_KV_F16;
    else if (!strcmp(s, "f32"))
        *out = QRUN_KV_F32;
    else
        return false;
    return true;
}
