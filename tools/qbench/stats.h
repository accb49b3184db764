/* Summary of repeated measurements: median and range. */
#ifndef QBENCH_STATS_H
#define QBENCH_STATS_H

typedef struct summary {
    double median, min, max;
    int n;
} summary;

/* Summarize n >= 1 values (the array is sorted in place); the median of an
 * even count is the mean of the two middle values. */
summary summarize(double *v, int n);

#endif
