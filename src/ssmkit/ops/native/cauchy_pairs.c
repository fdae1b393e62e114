/* Cauchy sums over conjugate pairs of poles at imaginary points, forward and backward: S4's kernel as it evaluates
 * them (Gu, Goel, Ré, arXiv 2111.00396 §3.3, Algorithm 1; the bilinear transform's points z = (2/Δ)(1 - ω)/(1 + ω) of
 * the roots of unity ω are z = i y, y = (2/Δ) tan(πk/L), and the state holds each mode with its conjugate):
 *
 *     out[g, s, m] = Σ_n v/(i y - λ) + v̄/(i y - λ̄)          v = v[g, s, n], λ = w[g, n] = p + i q, y = y[g, m]
 *                  = Σ_n (α + i β y) r,   α = -2 Re(v λ̄) = -2(a p + b q),  β = 2 Re(v) = 2a   (v = a + i b)
 *                                         r = 1/D,  D = (p² + q² - y²) - 2i p y  (the pair's common denominator)
 *
 * One real division and 4 multiply-adds per (pair, numerator, point), where the generic kernel (cauchy.c) over both
 * poles of the pair does two divisions and 8. Backward, for a real loss with out's gradient γ (PyTorch's convention
 * for complex tensors: ∂ℓ/∂Re + i ∂ℓ/∂Im, so dℓ = Re(conj(γ) d out)):
 *
 *     Qr[s, n] = Σ_m Re(conj(γ) r) = Σ_m γr rr + γi ri,        Rr[s, n] = Σ_m Re(conj(γ) i y r) = Σ_m y (γi rr - γr ri)
 *     ∂a = 2 Rr - 2 p Qr,  ∂b = -2 q Qr                        (∂v = ∂a + i ∂b)
 *     T[n, m] = Σ_s conj(γ) (α + i β y),   U = -T r²           (∂ℓ/∂D = conj of U's weight: dℓ = Re(U dD))
 *     ∂p = Σ_s -2 a Qr + Σ_m Re(U (2p - 2i y)),   ∂q = Σ_s -2 b Qr + Σ_m 2q Re(U)   (∂w = ∂p + i ∂q)
 *     ∂y[m] = Σ_n Re(U (-2y - 2i p)) + Re(Σ_s conj(γ) i β r)
 *
 * A work item is one channel g: it owns its rows of every output. The points run in blocks (PBLK); the per-(s, n) sums
 * over a block end in horizontal additions, amortised over the block's points.
 *
 * Compiled twice: as float and with -DSS_DOUBLE as double.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define PBLK 256 /* points per block */

/* r = 1/D of one pair over a block of points, with y r: D = (|λ|² - y²) - 2i p y. */
static inline void pair_row(const real *y, real p, real q, int64_t nm, real *rr, real *ri, real *yr, real *yi) {
    const real l2 = p * p + q * q;
#pragma omp simd
    for (int64_t m = 0; m < nm; m++) {
        const real dr = l2 - y[m] * y[m], di = -2 * p * y[m], inv = (real)1 / (dr * dr + di * di);
        rr[m] = dr * inv, ri[m] = -di * inv, yr[m] = y[m] * rr[m], yi[m] = y[m] * ri[m];
    }
}

/* Forward of the channels [item0, item1): out (G, S, W) from v (G, S, M), y (G, W) real, w (G, M). Returns 0, or 1
 * when out of memory. */
int SUFFIX(cyp_forward)(const real *v, const real *y, const real *w, real *out, int64_t G, int64_t S, int64_t M,
                        int64_t W, int64_t item0, int64_t item1, int64_t nthreads) {
    (void)G;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        real *buf = malloc(sizeof(real) * (4 + 2 * S) * PBLK);
        failed |= !buf;
#pragma omp for schedule(dynamic, 1)
        for (int64_t g = item0; g < item1; g++) {
            if (!buf) continue;
            real *rr = buf, *ri = rr + PBLK, *yr = ri + PBLK, *yi = yr + PBLK, *acc = yi + PBLK; /* acc (S, 2, PBLK) */
            const real *vg = v + g * S * M * 2, *wg = w + g * M * 2, *yg = y + g * W;
            for (int64_t m0 = 0; m0 < W; m0 += PBLK) {
                const int64_t nm = W - m0 < PBLK ? W - m0 : PBLK;
                memset(acc, 0, sizeof(real) * 2 * S * PBLK);
                for (int64_t n = 0; n < M; n++) {
                    const real p = wg[2 * n], q = wg[2 * n + 1];
                    pair_row(yg + m0, p, q, nm, rr, ri, yr, yi);
                    for (int64_t s = 0; s < S; s++) {
                        const real a = vg[(s * M + n) * 2], b = vg[(s * M + n) * 2 + 1];
                        const real al = -2 * (a * p + b * q), be = 2 * a;
                        real *ar = acc + 2 * s * PBLK, *ai = ar + PBLK;
#pragma omp simd
                        for (int64_t m = 0; m < nm; m++) ar[m] += al * rr[m] - be * yi[m], ai[m] += al * ri[m] + be * yr[m];
                    }
                }
                for (int64_t s = 0; s < S; s++) {
                    real *dst = out + ((g * S + s) * W + m0) * 2;
                    const real *ar = acc + 2 * s * PBLK, *ai = ar + PBLK;
                    for (int64_t m = 0; m < nm; m++) dst[2 * m] = ar[m], dst[2 * m + 1] = ai[m];
                }
            }
        }
        free(buf);
    }
    return failed;
}

/* Backward of the channels [item0, item1) from out's gradient gout (G, S, W): writes gv (G, S, M), gy (G, W) and
 * gw (G, M) (each may be NULL when not needed). Returns 0, or 1 when out of memory. */
int SUFFIX(cyp_backward)(const real *v, const real *y, const real *w, const real *gout, real *gv, real *gy, real *gw,
                         int64_t G, int64_t S, int64_t M, int64_t W, int64_t item0, int64_t item1, int64_t nthreads) {
    (void)G;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        /* per point of a block: r, y r (re, im), γ (S, 2), the Σ_s sums (4), ∂y; per (s, n): Qr, Rr; per n: ∂p, ∂q */
        real *buf = malloc(sizeof(real) * ((9 + 2 * S) * PBLK + 2 * S * M + 2 * M));
        failed |= !buf;
#pragma omp for schedule(dynamic, 1)
        for (int64_t g = item0; g < item1; g++) {
            if (!buf) continue;
            real *rr = buf, *ri = rr + PBLK, *yr = ri + PBLK, *yi = yr + PBLK, *gam = yi + PBLK;
            real *agr = gam + 2 * S * PBLK, *agi = agr + PBLK, *bgr = agi + PBLK, *bgi = bgr + PBLK, *dy = bgi + PBLK;
            real *Qr = dy + PBLK, *Rr = Qr + S * M, *dp = Rr + S * M, *dq = dp + M;
            const real *vg = v + g * S * M * 2, *wg = w + g * M * 2, *yg = y + g * W;
            memset(Qr, 0, sizeof(real) * (2 * S * M + 2 * M));
            for (int64_t m0 = 0; m0 < W; m0 += PBLK) {
                const int64_t nm = W - m0 < PBLK ? W - m0 : PBLK;
                const real *yb = yg + m0;
                for (int64_t s = 0; s < S; s++) {
                    const real *src = gout + ((g * S + s) * W + m0) * 2;
                    for (int64_t m = 0; m < nm; m++) gam[2 * s * PBLK + m] = src[2 * m], gam[(2 * s + 1) * PBLK + m] = src[2 * m + 1];
                }
                memset(dy, 0, sizeof(real) * PBLK);
                for (int64_t n = 0; n < M; n++) {
                    const real p = wg[2 * n], q = wg[2 * n + 1];
                    pair_row(yb, p, q, nm, rr, ri, yr, yi);
                    memset(agr, 0, sizeof(real) * 4 * PBLK); /* Σ_s α γr, α γi, β γr, β γi per point */
                    for (int64_t s = 0; s < S; s++) {
                        const real a = vg[(s * M + n) * 2], b = vg[(s * M + n) * 2 + 1];
                        const real al = -2 * (a * p + b * q), be = 2 * a;
                        const real *gr = gam + 2 * s * PBLK, *gi = gr + PBLK;
                        real qs = 0, rs = 0;
#pragma omp simd reduction(+ : qs, rs)
                        for (int64_t m = 0; m < nm; m++) {
                            qs += gr[m] * rr[m] + gi[m] * ri[m];
                            rs += gi[m] * yr[m] - gr[m] * yi[m];
                            agr[m] += al * gr[m], agi[m] += al * gi[m], bgr[m] += be * gr[m], bgi[m] += be * gi[m];
                        }
                        Qr[s * M + n] += qs, Rr[s * M + n] += rs;
                    }
                    real sp = 0, sq = 0;
#pragma omp simd reduction(+ : sp, sq)
                    for (int64_t m = 0; m < nm; m++) {
                        /* T = Σ_s conj(γ)(α + iβy) = (Aγr + y Bγi) + i (y Bγr - Aγi); U = -T r² */
                        const real tr = agr[m] + yb[m] * bgi[m], ti = yb[m] * bgr[m] - agi[m];
                        const real r2r = rr[m] * rr[m] - ri[m] * ri[m], r2i = 2 * rr[m] * ri[m];
                        const real ur = -(tr * r2r - ti * r2i), ui = -(tr * r2i + ti * r2r);
                        sp += 2 * p * ur + 2 * yb[m] * ui; /* Re(U (2p - 2iy)) */
                        sq += 2 * q * ur;                  /* Re(U 2q) */
                        /* Re(U (-2y - 2ip)) + Re(Σ_s conj(γ) iβ r) = -2y Ur + 2p Ui + (rr Bγi - ri Bγr) */
                        dy[m] += -2 * yb[m] * ur + 2 * p * ui + rr[m] * bgi[m] - ri[m] * bgr[m];
                    }
                    dp[n] += sp, dq[n] += sq;
                }
                if (gy)
                    for (int64_t m = 0; m < nm; m++) gy[g * W + m0 + m] = dy[m];
            }
            for (int64_t n = 0; n < M; n++) {
                const real p = wg[2 * n], q = wg[2 * n + 1];
                real gp = dp[n], gq = dq[n];
                for (int64_t s = 0; s < S; s++) {
                    const real a = vg[(s * M + n) * 2], b = vg[(s * M + n) * 2 + 1], qr = Qr[s * M + n];
                    gp += -2 * a * qr, gq += -2 * b * qr;
                    if (gv) gv[(g * S + s) * M * 2 + 2 * n] = 2 * Rr[s * M + n] - 2 * p * qr,
                            gv[(g * S + s) * M * 2 + 2 * n + 1] = -2 * q * qr;
                }
                if (gw) gw[(g * M + n) * 2] = gp, gw[(g * M + n) * 2 + 1] = gq;
            }
        }
        free(buf);
    }
    return failed;
}
