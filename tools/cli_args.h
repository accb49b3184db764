/* Option values shared by the command-line tools (qrun, qeval, qbench): each
 * returns false when the text is not a valid value, and the tool reports
 * that in its own usage error. */
#ifndef QRUN_TOOLS_CLI_ARGS_H
#define QRUN_TOOLS_CLI_ARGS_H

#include <stdbool.h>

#include "qrun.h"

/* A whole decimal integer in [lo, hi]. */
bool cli_int(const char *s, long lo, long hi, int *out);
/* A whole number (strtod syntax) in [lo, hi]; NaN is refused. */
bool cli_float(const char *s, float lo, float hi, float *out);
/* --backend: auto, cpu or cuda. */
bool cli_backend(const char *s, qrun_backend *out);
/* --gpu-layers: a number of layers (0 .. 2^20) or auto (-1). */
bool cli_gpu_layers(const char *s, int *out);
/* --kv-type: f16 or f32. */
bool cli_kv_type(const char *s, qrun_kv_type *out);

#endif
