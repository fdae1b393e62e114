/* Cauchy sums on the CPU, forward and backward: the core of S4's DPLR kernel (Gu, Goel, Ré, arXiv 2111.00396 §3.3,
 * Algorithm 1):
 *
 *     out[g, s, m] = Σ_n v[g, s, n] c[g, n, m],     c[g, n, m] = 1 / (z[g, m] - w[g, n])
 *
 * for channels g, S stacked numerators s (the products a ⊙ b of the Woodbury identity), W points m and N poles n; all
 * complex, interleaved (re, im) as torch stores them. All three inputs enter holomorphically, so (PyTorch's convention
 * for complex gradients, ∂ℓ/∂Re + i ∂ℓ/∂Im) the gradients of a real loss with out's gradient γ are
 *
 *     ∂v[s, n] = Σ_m γ[s, m] conj(c[n, m]),            ∂w[n] = Σ_s conj(v[s, n]) Σ_m γ[s, m] conj(c[n, m])²,
 *     ∂z[m] = -Σ_s γ[s, m] conj(Σ_n v[s, n] c[n, m]²).
 *
 * A work item is one channel g: it owns its rows of every output, so no partial sums are shared between threads. The
 * points run in blocks (MBLK, MBLK_B): a block's c (real and imaginary parts apart) is computed once per pole and used by
 * every numerator; the (N, W) matrix c is never stored (the PyTorch path builds and applies it in blocks of ~8 MB,
 * ~6 aten ops per block, forward and again in the backward).
 *
 * Compiled twice: as float and with -DSS_DOUBLE as double.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define MBLK 64   /* points per block in the forward: c and the numerators' sums of a block stay in L1 */
#define MBLK_B 256 /* in the backward: its per-pole sums over a block end in horizontal additions, amortised over
                    * more points (at 64 they took ~40 % of the time: 29 -> 18 ms at H 128, N 64, W 2048, S 4) */

/* c = 1 / (z - w) for a block of points (re, im apart): d = z - w, c = conj(d) / |d|². */
static inline void cauchy_row(const real *zr, const real *zi, real wr, real wi, int64_t nm, real *cr, real *ci) {
#pragma omp simd
    for (int64_t m = 0; m < nm; m++) {
        const real dr = zr[m] - wr, di = zi[m] - wi, inv = (real)1 / (dr * dr + di * di);
        cr[m] = dr * inv, ci[m] = -di * inv;
    }
}

/* The block [m0, m0 + nm) of channel g's points, deinterleaved. */
static inline void load_points(const real *z, int64_t g, int64_t W, int64_t m0, int64_t nm, real *zr, real *zi) {
    const real *src = z + (g * W + m0) * 2;
    for (int64_t m = 0; m < nm; m++) zr[m] = src[2 * m], zi[m] = src[2 * m + 1];
}

/* Forward of the channels [item0, item1) on nthreads threads: out (G, S, W) from v (G, S, N), z (G, W), w (G, N).
 * Returns 0, or 1 when out of memory. */
int SUFFIX(cy_forward)(const real *v, const real *z, const real *w, real *out, int64_t G, int64_t S, int64_t N,
                       int64_t W, int64_t item0, int64_t item1, int64_t nthreads) {
    (void)G;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        real *buf = malloc(sizeof(real) * (4 + 2 * S) * MBLK);
        failed |= !buf;
#pragma omp for schedule(dynamic, 1)
        for (int64_t g = item0; g < item1; g++) {
            if (!buf) continue;
            real *zr = buf, *zi = zr + MBLK, *cr = zi + MBLK, *ci = cr + MBLK, *acc = ci + MBLK; /* acc (S, 2, MBLK) */
            const real *vg = v + g * S * N * 2, *wg = w + g * N * 2;
            for (int64_t m0 = 0; m0 < W; m0 += MBLK) {
                const int64_t nm = W - m0 < MBLK ? W - m0 : MBLK;
                load_points(z, g, W, m0, nm, zr, zi);
                memset(acc, 0, sizeof(real) * 2 * S * MBLK);
                for (int64_t n = 0; n < N; n++) {
                    cauchy_row(zr, zi, wg[2 * n], wg[2 * n + 1], nm, cr, ci);
                    for (int64_t s = 0; s < S; s++) {
                        const real vr = vg[(s * N + n) * 2], vi = vg[(s * N + n) * 2 + 1];
                        real *ar = acc + 2 * s * MBLK, *ai = ar + MBLK;
#pragma omp simd
                        for (int64_t m = 0; m < nm; m++) ar[m] += vr * cr[m] - vi * ci[m], ai[m] += vr * ci[m] + vi * cr[m];
                    }
                }
                for (int64_t s = 0; s < S; s++) {
                    real *dst = out + ((g * S + s) * W + m0) * 2;
                    const real *ar = acc + 2 * s * MBLK, *ai = ar + MBLK;
                    for (int64_t m = 0; m < nm; m++) dst[2 * m] = ar[m], dst[2 * m + 1] = ai[m];
                }
            }
        }
        free(buf);
    }
    return failed;
}

/* Backward of the channels [item0, item1) on nthreads threads, from out's gradient gout (G, S, W): writes gv (G, S, N),
 * gz (G, W) and gw (G, N) (each may be NULL when not needed). Returns 0, or 1 when out of memory. */
int SUFFIX(cy_backward)(const real *v, const real *z, const real *w, const real *gout, real *gv, real *gz, real *gw,
                        int64_t G, int64_t S, int64_t N, int64_t W, int64_t item0, int64_t item1, int64_t nthreads) {
    (void)G;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        /* per point of a block: z, c, c² (re, im), γ (S, 2) and q = Σ_n v c² (S, 2); per (s, n): the sums of γ conj(c)
         * and of γ conj(c)² over the points (re, im) */
        real *buf = malloc(sizeof(real) * ((6 + 4 * S) * MBLK_B + 4 * S * N));
        failed |= !buf;
#pragma omp for schedule(dynamic, 1)
        for (int64_t g = item0; g < item1; g++) {
            if (!buf) continue;
            real *zr = buf, *zi = zr + MBLK_B, *cr = zi + MBLK_B, *ci = cr + MBLK_B, *c2r = ci + MBLK_B, *c2i = c2r + MBLK_B;
            real *gam = c2i + MBLK_B, *q = gam + 2 * S * MBLK_B, *sv = q + 2 * S * MBLK_B, *sw = sv + 2 * S * N;
            const real *vg = v + g * S * N * 2, *wg = w + g * N * 2;
            memset(sv, 0, sizeof(real) * 4 * S * N);
            for (int64_t m0 = 0; m0 < W; m0 += MBLK_B) {
                const int64_t nm = W - m0 < MBLK_B ? W - m0 : MBLK_B;
                load_points(z, g, W, m0, nm, zr, zi);
                for (int64_t s = 0; s < S; s++) {
                    const real *src = gout + ((g * S + s) * W + m0) * 2;
                    for (int64_t m = 0; m < nm; m++) gam[2 * s * MBLK_B + m] = src[2 * m], gam[(2 * s + 1) * MBLK_B + m] = src[2 * m + 1];
                }
                memset(q, 0, sizeof(real) * 2 * S * MBLK_B);
                for (int64_t n = 0; n < N; n++) {
                    cauchy_row(zr, zi, wg[2 * n], wg[2 * n + 1], nm, cr, ci);
#pragma omp simd
                    for (int64_t m = 0; m < nm; m++) c2r[m] = cr[m] * cr[m] - ci[m] * ci[m], c2i[m] = 2 * cr[m] * ci[m];
                    for (int64_t s = 0; s < S; s++) {
                        const real vr = vg[(s * N + n) * 2], vi = vg[(s * N + n) * 2 + 1];
                        const real *gr = gam + 2 * s * MBLK_B, *gi = gr + MBLK_B;
                        real *qr = q + 2 * s * MBLK_B, *qi = qr + MBLK_B;
                        real a_r = 0, a_i = 0, b_r = 0, b_i = 0;
#pragma omp simd reduction(+ : a_r, a_i, b_r, b_i)
                        for (int64_t m = 0; m < nm; m++) {
                            a_r += gr[m] * cr[m] + gi[m] * ci[m], a_i += gi[m] * cr[m] - gr[m] * ci[m];     /* γ conj(c) */
                            b_r += gr[m] * c2r[m] + gi[m] * c2i[m], b_i += gi[m] * c2r[m] - gr[m] * c2i[m]; /* γ conj(c²) */
                            qr[m] += vr * c2r[m] - vi * c2i[m], qi[m] += vr * c2i[m] + vi * c2r[m];         /* v c² */
                        }
                        sv[(s * N + n) * 2] += a_r, sv[(s * N + n) * 2 + 1] += a_i;
                        sw[(s * N + n) * 2] += b_r, sw[(s * N + n) * 2 + 1] += b_i;
                    }
                }
                if (gz) {
                    real *dst = gz + (g * W + m0) * 2;
                    for (int64_t m = 0; m < nm; m++) {
                        real r = 0, i = 0;
                        for (int64_t s = 0; s < S; s++) {
                            const real gr = gam[2 * s * MBLK_B + m], gi = gam[(2 * s + 1) * MBLK_B + m];
                            const real qr = q[2 * s * MBLK_B + m], qi = q[(2 * s + 1) * MBLK_B + m];
                            r -= gr * qr + gi * qi, i -= gi * qr - gr * qi; /* -γ conj(q) */
                        }
                        dst[2 * m] = r, dst[2 * m + 1] = i;
                    }
                }
            }
            if (gv) memcpy(gv + g * S * N * 2, sv, sizeof(real) * 2 * S * N);
            if (gw)
                for (int64_t n = 0; n < N; n++) {
                    real r = 0, i = 0;
                    for (int64_t s = 0; s < S; s++) { /* conj(v) Σ γ conj(c²) */
                        const real vr = vg[(s * N + n) * 2], vi = vg[(s * N + n) * 2 + 1];
                        const real br = sw[(s * N + n) * 2], bi = sw[(s * N + n) * 2 + 1];
                        r += vr * br + vi * bi, i += vr * bi - vi * br;
                    }
                    gw[(g * N + n) * 2] = r, gw[(g * N + n) * 2 + 1] = i;
                }
        }
        free(buf);
    }
    return failed;
}
