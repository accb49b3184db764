/* Inputs of the generated bitsandbytes fixture cases, reproduced bit for bit
 * from tools/bnb_fixtures.py's counter-based generator (see its comment). */
#ifndef QRUN_BNB_INPUTS_H
#define QRUN_BNB_INPUTS_H

#include <stdint.h>

#include "dtype.h"

/* Fill x[0..n) with case `seed`'s values already rounded to `dtype`
 * (f32, f16 or bf16; held as f32), with [zero_begin, zero_end) zeroed. */
void bnb_gen_values(uint64_t seed, uint64_t n, qdtype dtype, uint64_t zero_begin,
                    uint64_t zero_end, float *x);

#endif
