/* The tiny fixture checkpoints for the engine tests (tiny_variants.h). */
#include "tiny_variants.h"

#include <check.h>
#include <stdio.h>
#include <string.h>

#include "convert.h"
#include "dtype.h"
#include "testutil.h"

const cJSON *tv_info(const cJSON *index, const char *variant)
{
    return cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(index, "variants"), variant);
}

const char *tv_str(const cJSON *index, const char *variant, const char *key)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(tv_info(index, variant), key);
    return cJSON_IsString(s) ? s->valuestring : NULL;
}

const char *tv_model_path(const cJSON *index, const char *tmp, const char *variant,
                          const char *mode)
{
    static char path[8][1024];
    static int slot;
    char *p = path[slot++ % 8];
    snprintf(p, 1024, "%s/%s.%s.qbin", tmp, variant, mode);
    if (tu_file_exists(p))
        return p;
    char in[1024];
    snprintf(in, sizeof in, "%s/tiny/%s", tu_data_dir(), variant);
    qconvert_options o;
    qconvert_options_init(&o);
    o.input_dir = in;
    o.output_path = p;
    const char *qd = tv_str(index, variant, "qbin_dtype");
    int src_dt = qd && strcmp(qd, "bfloat16") == 0 ? QDT_BF16 : QDT_F16;
    o.compute_dtype = src_dt;
    const char *sd = tv_str(index, variant, "source_dtype");
    if (strcmp(mode, "src") == 0 && sd && strcmp(sd, "float32") == 0)
        o.quant = QCONVERT_F32, o.compute_dtype = QDT_F32;
    else if (strcmp(mode, "src") == 0)
        o.quant = src_dt == QDT_BF16 ? QCONVERT_BF16 : QCONVERT_F16;
    else if (strcmp(mode, "f16") == 0)
        o.quant = QCONVERT_F16, o.compute_dtype = QDT_F16;
    else if (strcmp(mode, "bf16") == 0)
        o.quant = QCONVERT_BF16, o.compute_dtype = QDT_BF16;
    else if (strcmp(mode, "nf4") == 0)
        o.quant = QCONVERT_NF4;
    else if (strcmp(mode, "nf4_dq") == 0)
        o.quant = QCONVERT_NF4, o.double_quant = true;
    else if (strcmp(mode, "fp4") == 0)
        o.quant = QCONVERT_FP4;
    else if (strcmp(mode, "int8_t6") == 0)
        o.quant = QCONVERT_INT8, o.int8_threshold = 6.0f;
    else if (strcmp(mode, "int8_t0") == 0)
        o.quant = QCONVERT_INT8, o.int8_threshold = 0.0f;
    else
        ck_abort_msg("unknown mode %s", mode);
    qerr err = {0};
    qrun_status st = qconvert_run(&o, NULL, &err);
    ck_assert_msg(st == QRUN_OK, "convert %s %s: %s", variant, mode, err.msg);
    return p;
}
