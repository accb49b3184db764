/* Hugging Face checkpoint -> .qbin conversion (the library side of
 * qconvert). Tensors are streamed in chunks: source data is read a slice at a
 * time, converted or quantized, and written straight into the output file,
 * so peak memory does not grow with the model or tensor size. */
#ifndef QRUN_CONVERT_H
#define QRUN_CONVERT_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"

typedef enum qconvert_quant {
    QCONVERT_NF4 = 0,
    QCONVERT_FP4,
    QCONVERT_INT8,
    QCONVERT_F16,
    QCONVERT_BF16,
    QCONVERT_F32      /* unquantized f32, e.g. to check an f32 checkpoint exactly */
} qconvert_quant;

/* "nf4" -> QCONVERT_NF4 ...; -1 when unknown. */
int qconvert_quant_from_name(const char *name);
const char *qconvert_quant_name(qconvert_quant q);

/* Where nf4/fp4/int8 weights are quantized. The CPU quantizer (src/quant.c)
 * divides exactly; the CUDA one (src/cuda/quantize.h) reproduces
 * bitsandbytes' GPU kernels bit for bit, including their approximate
 * reciprocal and the torch-ordered double-quant mean. The two files differ
 * only in codes whose scaled value lies within QUANT_GPU_RCP_ULPS of a
 * decision threshold, and (double quant) in the offset's last bits and what
 * follows from it. */
typedef enum qconvert_device {
    QCONVERT_DEVICE_CPU = 0,  /* the library's default: reproduces src/quant.c */
    QCONVERT_DEVICE_AUTO,     /* CUDA when built with it and a GPU is usable, else CPU */
    QCONVERT_DEVICE_CUDA      /* CUDA or fail */
} qconvert_device;

/* "cpu", "auto", "cuda" -> QCONVERT_DEVICE_*; -1 when unknown. */
int qconvert_device_from_name(const char *name);
const char *qconvert_device_name(qconvert_device d);

typedef struct qconvert_progress {
    int index, count;        /* tensor being written, of how many */
    const char *tensor;      /* its name */
    uint64_t bytes_done;     /* source bytes processed so far */
    uint64_t bytes_total;    /* source bytes of all tensors */
} qconvert_progress;

typedef struct qconvert_options {
    const char *input_dir;
    const char *output_path;
    qconvert_quant quant;
    bool double_quant;       /* nf4/fp4 only: bnb_4bit_use_double_quant */
    int blocksize;           /* nf4/fp4; 0 means 64 */
    int compute_dtype;       /* QDT_F16, QDT_BF16 or QDT_F32; -1: from the checkpoint */
    float int8_threshold;    /* LLM.int8 outlier threshold stored in metadata */
    uint64_t chunk_bytes;    /* working-slice size; 0 means 16 MiB */
    qconvert_device device;  /* quantizer; qconvert_options_init: CPU */
    /* Called after every chunk; return false to cancel. */
    bool (*progress)(void *user, const qconvert_progress *p);
    void *user;
} qconvert_options;

void qconvert_options_init(qconvert_options *o);

typedef struct qconvert_stats {
    char architecture[32];
    char hf_architecture[64];
    int tensors;
    uint64_t params;            /* all parameters */
    uint64_t quantized_params;  /* parameters stored as nf4/fp4/int8 */
    uint64_t file_bytes;
    double seconds;
    uint64_t peak_rss_bytes;    /* of the whole process, from getrusage */
    int compute_dtype;
    qconvert_device device;     /* the quantizer used: CPU or CUDA */
    char device_name[128];      /* "cpu" or the GPU's name */
} qconvert_stats;

qrun_status qconvert_run(const qconvert_options *o, qconvert_stats *stats, qerr *err);

#endif
