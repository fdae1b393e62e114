/* The RG-LRU of Griffin and Hawk on the CPU, forward and backward, its gates' elementwise algebra fused with the scan.
 *
 * De et al., arXiv 2402.19427 §2.4, given the gates r, i ∈ (0, 1) (B, L, H), the input x (B, L, H) and Λ (H):
 *
 *     log a_t = -c r_t softplus(-Λ),   a_t = e^{log a_t},   m_t = √(1 - a_t²) = √(-expm1(2 log a_t)),
 *     h_t = a_t h_{t-1} + m_t (i_t x_t)
 *
 * with, at a segment start (resets[b, t] != 0), a_t = 0 and m_t = 1 (recurrentgemma's convention). The backward, from
 * the states h (the forward's output) and their gradients g (B, L, H) and g_last (B, H) (either may be NULL: zero):
 *
 *     λ_t = g_t + a_{t+1} λ_{t+1} (+ g_last at t = L - 1),   ∂a_t = λ_t h_{t-1},   ∂m_t = λ_t i_t x_t,
 *     ∂i_t = λ_t m_t x_t,   ∂x_t = λ_t m_t i_t,   ∂(log a_t) = a_t ∂a_t - 2 a_t² ∂m_t / √max(4 m_t², 1/G²),
 *     ∂r_t = -c softplus(-Λ) ∂(log a_t),   ∂Λ = Σ_{b,t} c r_t σ(-Λ) ∂(log a_t),   ∂h_{-1} = a_0 λ_0
 *
 * (G = 1000: the square root's derivative clipped as in recurrentgemma; at a segment start ∂a_t and ∂m_t reach
 * nothing). Work items are (batch row, block of VEC channels), one pass over time each; ∂Λ goes to one partial row per
 * batch row, which the caller sums. The PyTorch path (ops/rglru.py) makes ~8 elementwise passes over (B, L, H) in the
 * forward and ~15 in the backward around its scan.
 *
 * Compiled twice: as float (e^x by common.h's expr, expm1 near 0 by rglru_gates.h) and with -DSS_DOUBLE as double (libm's).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "rglru_gates.h"

#define VEC 64 /* channels per item */
#define MAX_SQRT_GRADIENT 1000

int64_t SUFFIX(rg_items)(int64_t Bsz, int64_t H) { return Bsz * ((H + VEC - 1) / VEC); }

void SUFFIX(rg_forward)(const real *x, const real *r, const real *i, const real *Lambda, real c, const real *h0,
                        const uint8_t *resets, real *h, int64_t Bsz, int64_t L, int64_t H, int64_t item0,
                        int64_t item1, int64_t nthreads) {
    (void)Bsz;
    const int64_t nblk = (H + VEC - 1) / VEC;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        real st[VEC], sp[VEC];
        for (int64_t k = 0; k < w; k++) {
            st[k] = h0 ? h0[b * H + c0 + k] : 0;
            sp[k] = softplus_e(-Lambda[c0 + k], exp_neg_abs(Lambda[c0 + k]));
        }
        for (int64_t t = 0; t < L; t++) {
            const int64_t o = (b * L + t) * H + c0;
            const int reset = resets ? resets[b * L + t] != 0 : 0;
            const real *restrict xt = x + o, *restrict rt = r + o, *restrict it = i + o;
            real *restrict ht = h + o;
#pragma omp simd
            for (int64_t k = 0; k < w; k++) {
                real a, m;
                gates(rt[k], sp[k], c, reset, &a, &m);
                st[k] = a * st[k] + m * (it[k] * xt[k]);
                ht[k] = st[k];
            }
        }
    }
}

void SUFFIX(rg_backward)(const real *x, const real *r, const real *i, const real *Lambda, real c, const real *h0,
                         const uint8_t *resets, const real *h, const real *g, const real *g_last, real *gx, real *gr,
                         real *gi, real *gh0, real *gL, int64_t Bsz, int64_t L, int64_t H, int64_t item0,
                         int64_t item1, int64_t nthreads) {
    (void)Bsz;
    const int64_t nblk = (H + VEC - 1) / VEC;
    const real inv_g2 = (real)1 / ((real)MAX_SQRT_GRADIENT * MAX_SQRT_GRADIENT);
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        real carry[VEC], sp[VEC], sg[VEC], acc[VEC], zeros[VEC] = {0};
        double total[VEC]; /* ∂Λ's sum over time: ≤ 64 steps in acc (real), those partial sums here (one float running
                            * sum over all L steps drifts by ~L·eps when the terms share a sign: 1.6e-4 at L = 16 384) */
        for (int64_t k = 0; k < w; k++) {
            carry[k] = g_last ? g_last[b * H + c0 + k] : 0; /* a_{t+1} λ_{t+1}; at t = L - 1 the final state's gradient */
            const real e = exp_neg_abs(Lambda[c0 + k]);
            sp[k] = softplus_e(-Lambda[c0 + k], e);
            sg[k] = sigmoid_e(-Lambda[c0 + k], e);
            acc[k] = 0, total[k] = 0;
        }
        for (int64_t t = L - 1; t >= 0; t--) {
            const int64_t o = (b * L + t) * H + c0;
            const int reset = resets ? resets[b * L + t] != 0 : 0;
            /* restrict-qualified row pointers, NULLs replaced by a row of zeros: the loop below vectorises with no
             * aliasing checks (gcc's versioned loop fell back to scalar code: 9x the forward's time) */
            const real *restrict hp = t > 0 ? h + o - H : (h0 ? h0 + b * H + c0 : zeros);
            const real *restrict gt = g ? g + o : zeros;
            const real *restrict xt = x + o, *restrict rt = r + o, *restrict it = i + o;
            real *restrict gxt = gx + o, *restrict grt = gr + o, *restrict git = gi + o;
#pragma omp simd
            for (int64_t k = 0; k < w; k++) {
                const real la = (-c * rt[k]) * sp[k];
                const real e = expr(la);
                const real v = one_minus_a2(la, e);
                const real sv = SQRT(v);
                const real m = reset ? 1 : sv;
                const real l = gt[k] + carry[k]; /* λ_t */
                const real ix = it[k] * xt[k];
                const real da = reset ? 0 : l * hp[k];
                const real dm = reset ? 0 : l * ix;
                /* d√v/dv clipped: 1/√max(4v, 1/G²) = 1/(2√v) where 4v > 1/G², else G */
                const real dmdv = 4 * v > inv_g2 ? (real)0.5 / sv : (real)MAX_SQRT_GRADIENT;
                const real dla = e * da - 2 * e * e * dm * dmdv;
                gxt[k] = l * m * it[k];
                git[k] = l * m * xt[k];
                grt[k] = (-c * sp[k]) * dla;
                acc[k] += c * rt[k] * dla;
                carry[k] = reset ? 0 : e * l;
            }
            if (t % 64 == 0)
                for (int64_t k = 0; k < w; k++) total[k] += acc[k], acc[k] = 0;
        }
        for (int64_t k = 0; k < w; k++) {
            if (gh0) gh0[b * H + c0 + k] = carry[k]; /* a_0 λ_0 */
            gL[b * H + c0 + k] = (real)total[k] * sg[k]; /* ∂Λ of this batch row: d softplus(-Λ)/dΛ = -σ(-Λ), times -c r */
        }
    }
}
