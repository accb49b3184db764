/* Token sampling on the GPU: the chain of src/sampler.h (penalty, clean-up,
 * greedy, top-k, top-p, min-p, temperature, one draw) on a device logits
 * vector, so that only the chosen id needs to cross to the host.
 *
 * Given the same logits, parameters, penalty window and draw, qk_sample
 * picks the id qsampler_sample picks (src/sampler.c is the reference):
 *  - greedy, the clean-up, top-k, min-p and the candidates' weights are
 *    computed exactly as there (float penalty, double exp from + - * / only,
 *    no fused multiply-adds), so they agree bit for bit;
 *  - the draw's walk (step 8 of sampler.h) adds the weights one by one in the
 *    same order as the host when at most QSAMPLER_SORTED_WALK_MAX tokens
 *    survive, and the top-p cut's running sum likewise when top-k leaves at
 *    most 64 tokens; only the top-p total is summed in another order (the
 *    host sums it in the order of its heap).
 * Elsewhere the sums are added in another order (blocks in parallel), so
 * the ids can differ only when u = U * W (or the top-p target top_p * Z)
 * lies within the rounding of those sums of a cumulative boundary: a
 * relative distance of about n * 2^-53 for n summed weights, below 1e-11
 * for any vocabulary under 2^31 tokens. tests/gpu/test_gpu_sample.c checks
 * every disagreement it finds against that bound.
 *
 * The result is deterministic: no floating-point atomics, fixed summation
 * orders. All work is enqueued on the stream (no sync, no allocation; the
 * caller provides the scratch), so a fixed vocab and parameters can be
 * captured in a CUDA graph; the draw and n_recent are kernel arguments of
 * the capture (update them per replay, or capture per call). */
#ifndef QRUN_KERNELS_SAMPLE_H
#define QRUN_KERNELS_SAMPLE_H

#include <stddef.h>

#include "kernels/qk.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The parameters of qsampler_params that act on one call (top_k <= 0: off,
 * top_p 1: off, min_p 0: off, repeat_penalty 1: off, temperature <= 0:
 * greedy). Ranges as qsampler_params_check requires. */
typedef struct qk_sample_params {
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p;
    float repeat_penalty;
} qk_sample_params;

/* Bytes of device scratch qk_sample needs for this vocabulary (0 when
 * vocab <= 0 or the size query of the device sort fails). */
size_t qk_sample_scratch_size(int vocab);

/* Pick one token id from logits [vocab] (device f32, not modified).
 * recent: device ids of the penalty window (repeats allowed: each distinct
 * id is penalized once; ids outside [0, vocab) are ignored), n_recent of
 * them (0: no penalty). draw: the 64-bit PRNG output qsampler_draw gives for
 * this token (ignored when greedy). scratch: device memory of at least
 * qk_sample_scratch_size(vocab) bytes, 256-byte aligned. out_id: device
 * int32, set to the id, or to -1 when every logit is NaN or -inf (the
 * host reports that as qsampler_sample does). */
bool qk_sample(const float *logits, int vocab, const qk_sample_params *p, const int32_t *recent,
               int n_recent, uint64_t draw, void *scratch, size_t scratch_size, int32_t *out_id,
               cudaStream_t s, qerr *err);

#ifdef __cplusplus
}
#endif
#endif
