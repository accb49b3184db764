/* The strided window plan of qeval (see qe_plan_windows in qeval.h). */
#include <stdlib.h>

#include "qeval.h"

int qe_plan_windows(int n_tokens, int ctx, int stride, qe_window **out)
{
    *out = NULL;
    /* stride == ctx would leave the first token of every later window with
     * no context, so it could not be scored: stride must stay below ctx. */
    if (ctx < 2 || stride < 1 || stride >= ctx || n_tokens < ctx)
        return -1;
    /* Window starts are 0, stride, 2*stride, ... up to the one that reaches
     * the last token; at most this many. */
    int cap = (n_tokens - ctx + stride - 1) / stride + 1;
    qe_window *w = malloc((size_t)cap * sizeof *w);
    if (!w)
        return -1;
    int n = 0, prev_end = 0;
    for (int begin = 0;; begin += stride) {
        int end = begin + ctx < n_tokens ? begin + ctx : n_tokens;
        /* Token 0 has nothing before it; later windows start scoring where
         * the previous one stopped. */
        int first = prev_end > begin + 1 ? prev_end : begin + 1;
        w[n++] = (qe_window){.begin = begin, .first = first, .end = end};
        if (end == n_tokens)
            break;
        prev_end = end;
    }
    *out = w;
    return n;
}
