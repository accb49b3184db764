/* qeval's chart: a hand-written SVG (no plotting dependency) with the
 * perplexity of every window for every model and, with a base, the mean KL
 * divergence of every window on a log scale (the 4-bit and 8-bit files
 * differ by orders of magnitude). x is the token position of the middle of
 * the window's scored range. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qeval.h"

enum { MIN_W = 980, PLOT_X0 = 80, PLOT_X1 = 700, LEGEND_X = 730 };

static const char *const palette[] = {"#1b6ca8", "#d1495b", "#e09f3e", "#00798c",
                                      "#66a182", "#8d6a9f", "#6b4226", "#e76f51"};
#define BASE_COLOR "#222222"

typedef struct panel {
    double y0, y1;       /* pixel rows: top, bottom */
    double lo, hi;       /* data range (log10 values on a log panel) */
    bool log;
} panel;

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* A step of 1, 2 or 5 times a power of ten giving at most max_ticks ticks. */
static double nice_step(double span, int max_ticks)
{
    double raw = span / max_ticks;
    double p = pow(10.0, floor(log10(raw)));
    double m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

static double px_x(double x, double xmax)
{
    return PLOT_X0 + (PLOT_X1 - PLOT_X0) * (xmax > 0 ? x / xmax : 0);
}

static double px_y(const panel *p, double v)
{
    return p->y1 - (p->y1 - p->y0) * (v - p->lo) / (p->hi - p->lo);
}

static double win_x(const qe_run *r, int w)
{
    return 0.5 * (r->win[w].first + r->win[w].end);
}

static void axes(FILE *f, const panel *p, double xmax, const char *title, bool x_labels)
{
    fprintf(f, "<rect x=\"%d\" y=\"%.1f\" width=\"%d\" height=\"%.1f\" fill=\"none\" "
               "stroke=\"#888\"/>\n",
            PLOT_X0, p->y0, PLOT_X1 - PLOT_X0, p->y1 - p->y0);
    fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"14\" font-weight=\"bold\">", PLOT_X0,
            p->y0 - 8);
    xml_text(f, title);
    fputs("</text>\n", f);
    /* x ticks: token positions */
    double xs = nice_step(xmax, 8);
    for (double x = 0; x <= xmax + 1e-9; x += xs) {
        double X = px_x(x, xmax);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n",
                X, p->y0, X, p->y1);
        if (x_labels)
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\">%g"
                       "</text>\n",
                    X, p->y1 + 15, x);
    }
    /* y ticks */
    if (p->log) {
        for (double e = ceil(p->lo); e <= p->hi + 1e-9; e += 1) {
            double Y = px_y(p, e);
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n",
                    PLOT_X0, Y, PLOT_X1, Y);
            fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%g"
                       "</text>\n",
                    PLOT_X0 - 6, Y + 4, pow(10.0, e));
        }
    } else {
        double ys = nice_step(p->hi - p->lo, 6);
        for (double y = ceil(p->lo / ys) * ys; y <= p->hi + 1e-9 * ys; y += ys) {
            double Y = px_y(p, y);
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n",
                    PLOT_X0, Y, PLOT_X1, Y);
            fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%g"
                       "</text>\n",
                    PLOT_X0 - 6, Y + 4, fabs(y) < 1e-12 * ys ? 0.0 : y);
        }
    }
}

/* One model's series; points with no value (NaN: KLD 0 on a log scale) break
 * the line. */
static void series(FILE *f, const qe_run *r, const panel *p, const double *v, const char *color,
                   double width)
{
    double xmax = r->n_tokens;
    bool open = false;
    for (int w = 0; w < r->n_win; w++) {
        if (isnan(v[w])) {
            if (open)
                fputs("\"/>\n", f);
            open = false;
            continue;
        }
        if (!open)
            fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%.1f\" points=\"",
                    color, width);
        fprintf(f, "%s%.1f,%.1f", open ? " " : "", px_x(win_x(r, w), xmax), px_y(p, v[w]));
        open = true;
    }
    if (open)
        fputs("\"/>\n", f);
    if (r->n_win <= 80)
        for (int w = 0; w < r->n_win; w++)
            if (!isnan(v[w]))
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n",
                        px_x(win_x(r, w), xmax), px_y(p, v[w]), color);
}

static const char *color_of(const qe_run *r, int k)
{
    if (k == r->base)
        return BASE_COLOR;
    int i = r->base >= 0 && k > r->base ? k - 1 : k;
    return palette[i % (int)(sizeof palette / sizeof palette[0])];
}

bool qe_write_chart(const char *path, const qe_run *r)
{
    int n = r->n_win;
    bool kld_panel = r->base >= 0 && r->n_m > 1;
    double *v = malloc((size_t)n * r->n_m * sizeof *v);
    if (!v) {
        fprintf(stderr, "qeval: %s: out of memory\n", path);
        return false;
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "qeval: %s: %s\n", path, strerror(errno));
        free(v);
        return false;
    }
    int H = kld_panel ? 640 : 360;
    /* Wide enough for the longest legend entry (about 7 px per character
     * at 12 px). */
    int W = MIN_W;
    for (int k = 0; k < r->n_m; k++) {
        int need = LEGEND_X + 28 + 7 * ((int)strlen(r->m[k].label) + 20) + 10;
        if (need > W)
            W = need;
    }
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n",
            W, H, W, H);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
    fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"15\">qeval: ", PLOT_X0);
    xml_text(f, qe_basename(r->text_path));
    fprintf(f, ", %d tokens, windows of %d, stride %d</text>\n", r->n_tokens, r->ctx, r->stride);

    /* Perplexity per window. */
    double lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < r->n_m; k++)
        for (int w = 0; w < n; w++) {
            double p = exp(r->m[k].win_nll[w] / (r->win[w].end - r->win[w].first));
            v[(size_t)k * n + w] = isfinite(p) ? p : NAN;
            if (isfinite(p)) {
                lo = fmin(lo, p);
                hi = fmax(hi, p);
            }
        }
    if (!(lo <= hi))
        lo = 0, hi = 1;
    double pad = hi > lo ? 0.05 * (hi - lo) : 0.5;
    panel pp = {.y0 = 60, .y1 = 300, .lo = fmax(0.0, lo - pad), .hi = hi + pad};
    axes(f, &pp, r->n_tokens, "perplexity of each window", true);
    for (int k = r->n_m - 1; k >= 0; k--) /* the base last: drawn on top */
        series(f, r, &pp, v + (size_t)k * n, color_of(r, k), k == r->base ? 2.5 : 1.6);

    double legend_y = 70;
    if (kld_panel) {
        double klo = INFINITY, khi = -INFINITY;
        for (int k = 0; k < r->n_m; k++) {
            if (!r->m[k].compared)
                continue;
            for (int w = 0; w < n; w++) {
                double d = r->m[k].win_kld[w] / (r->win[w].end - r->win[w].first);
                v[(size_t)k * n + w] = d > 0 && isfinite(d) ? log10(d) : NAN;
                if (d > 0 && isfinite(d)) {
                    klo = fmin(klo, log10(d));
                    khi = fmax(khi, log10(d));
                }
            }
        }
        panel kp = {.y0 = 370, .y1 = 590, .log = true};
        bool any = klo <= khi;
        kp.lo = any ? floor(klo) : -6;
        kp.hi = any ? ceil(khi) : 0;
        if (kp.hi <= kp.lo)
            kp.hi = kp.lo + 1;
        axes(f, &kp, r->n_tokens, "mean KL divergence from the base, per window (nats, log scale)",
             true);
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">token "
                   "position (middle of the window's scored tokens)</text>\n",
                (PLOT_X0 + PLOT_X1) / 2, H - 12);
        if (!any)
            fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"13\" text-anchor=\"middle\">every "
                       "KL divergence is 0</text>\n",
                    (PLOT_X0 + PLOT_X1) / 2, 0.5 * (kp.y0 + kp.y1));
        for (int k = 0; k < r->n_m; k++)
            if (r->m[k].compared)
                series(f, r, &kp, v + (size_t)k * n, color_of(r, k), 1.6);
    } else {
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">token "
                   "position (middle of the window's scored tokens)</text>\n",
                (PLOT_X0 + PLOT_X1) / 2, H - 12);
    }

    /* Legend: one entry per model with its perplexity. */
    fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"13\" font-weight=\"bold\">model (PPL)"
               "</text>\n",
            LEGEND_X, legend_y - 8);
    for (int k = 0; k < r->n_m; k++) {
        double y = legend_y + 20.0 * k;
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\" "
                   "stroke-width=\"3\"/>\n",
                LEGEND_X, y + 6, LEGEND_X + 22, y + 6, color_of(r, k));
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"12\">", LEGEND_X + 28, y + 10);
        xml_text(f, r->m[k].label);
        /* A KLD of 0 has no place on a log scale: say so instead. */
        fprintf(f, " (%.3f)%s</text>\n", r->m[k].ppl,
                kld_panel && r->m[k].compared && r->m[k].kld_max == 0 ? ", KLD 0" : "");
    }
    fputs("</svg>\n", f);
    free(v);
    bool bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        fprintf(stderr, "qeval: %s: write error\n", path);
        return false;
    }
    return true;
}
