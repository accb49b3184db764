/* Statistics of logit rows for qeval, computed in double: the logits are
 * f32, but sums over a 50k-150k vocabulary lose digits in f32, and a KL
 * divergence of 1e-5 is a difference of nearly equal numbers. */
#include <math.h>
#include <stdlib.h>

#include "qeval.h"

double qe_logsumexp(const float *z, int n)
{
    double mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (isnan(z[i]) || z[i] == INFINITY)
            return NAN;
        if (z[i] > mx)
            mx = z[i];
    }
    if (mx == -INFINITY)
        return NAN; /* no finite logit: no distribution */
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += exp((double)z[i] - mx);
    return mx + log(s);
}

int qe_argmax(const float *z, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (z[i] > z[best])
            best = i;
    return best;
}

void qe_softmax(const float *z, double lse, double *p, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = exp((double)z[i] - lse);
}

double qe_kld(const float *zb, double lse_b, const double *pb, const float *zm, double lse_m,
              int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++) {
        if (pb[i] == 0.0)
            continue; /* 0 * log 0 = 0; also skips -inf base logits */
        s += pb[i] * (((double)zb[i] - lse_b) - ((double)zm[i] - lse_m));
    }
    return s > 0.0 ? s : 0.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void qe_sort(double *v, size_t n)
{
    if (n > 1)
        qsort(v, n, sizeof *v, cmp_double);
}

double qe_quantile_sorted(const double *v, size_t n, double q)
{
    if (n == 0)
        return NAN;
    double pos = q * (double)(n - 1);
    size_t lo = (size_t)floor(pos);
    if (lo >= n - 1)
        return v[n - 1];
    double frac = pos - (double)lo;
    if (frac == 0.0)
        return v[lo]; /* exact order statistic (also when a neighbour is inf) */
    return v[lo] + (v[lo + 1] - v[lo]) * frac;
}

uint64_t qe_ids_hash(const int32_t *ids, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)ids[i];
        for (int b = 0; b < 4; b++) {
            h ^= (u >> (8 * b)) & 0xffu;
            h *= 0x100000001b3ull;
        }
    }
    return h;
}
