/* One recurrent step of the Mamba-2 mixer between its two projections, on the CPU, without gradients (generation).
 *
 * Dao & Gu, arXiv 2405.21060 §7 (Figure 6), per batch row, from the in-projection's output [z, x', B', C', δ]
 * (E + (E + 2GN) + H values):
 *
 *     [x, B, C] = SiLU(Σ_k w_k window_k + b),  window = [the conv state's W - 1 inputs, [x', B', C']]
 *     Δ = softplus(δ + dt_bias),  a = exp(-Δ exp(A_log))                    (one per head)
 *     H ← a H + (Δ x) Bᵀ,  y = H C + D x                                    (per head; P × N state)
 *     out = RMSNorm_G((y) ⊙ SiLU(z)) · w  (or its other gate order, or y ⊙ SiLU(z) without the norm)
 *
 * writing out (B, E), the next conv state (B, E + 2GN, W - 1) (the window's last W - 1 inputs) and the next SSD state
 * (B, H, P, N). The step of ssmkit.layers.mamba2.Mamba2 in PyTorch ops is ~25 small operations per token, each
 * dispatched (~440 µs per token at B 8, E 256 on the 2-core VM); this is one call. Work items are batch rows.
 *
 * Compiled twice, as float and with -DSS_DOUBLE as double (common.h).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "conv_step.h"
#include "gated_rows.h"

int64_t SUFFIX(m2_items)(int64_t Bsz) { return Bsz; }

/* zx: the in-projection's output (B, E + C + H), rows zs apart; cs (B, C, W-1), cw (C, W), cb (C) or NULL; dtb, Alog
 * (H); D (E when dfull, else H); nw (E) or NULL (no norm: y ⊙ SiLU(z)); h (B, H, P, N); out (B, E), cs_out, h_out.
 * Nonzero: a scratch buffer could not be allocated. */
int SUFFIX(m2_step)(const real *zx, int64_t zs, const real *cs, const real *cw, const real *cb, const real *dtb,
                    const real *Alog, const real *D, int64_t dfull, const real *nw, real eps, int64_t nbg,
                    const real *h, real *out, real *cs_out, real *h_out, int64_t E, int64_t G, int64_t N, int64_t H,
                    int64_t W, int64_t item0, int64_t item1, int64_t nthreads) {
    const int64_t C = E + 2 * G * N, P = E / H, R = H / G;
    int fail = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : fail)
    for (int64_t b = item0; b < item1; b++) {
        real *u = alloc_lines((C + 4 * E) * sizeof(real)); /* the conv's output, then y, x (for the norm), v, σ */
        if (!u) {
            fail = 1;
            continue;
        }
        real *y = u + C, *xv = y + E, *v = xv + E, *sg = v + E;
        const real *z = zx + b * zs, *xbc = z + E, *dtr = xbc + C;
        const real *st = cs + b * C * (W - 1);
        real *st_out = cs_out + b * C * (W - 1);
        conv_step_row(st, xbc, cw, cb, u, st_out, C, W, 1, 0); /* the short convolution and its SiLU */
        for (int64_t hh = 0; hh < H; hh++) { /* the SSD step, per head */
            const real s = dtr[hh] + dtb[hh];
            const real dt = softplus_e(s, exp_neg_abs(s));
            const real a = expr(dt * -expr(Alog[hh]));
            const int64_t g = hh / R;
            const real *Bv = u + E + g * N, *Cv = u + E + G * N + g * N;
            for (int64_t p = 0; p < P; p++) {
                const real x = u[hh * P + p], xdt = x * dt;
                const real *hs = h + ((b * H + hh) * P + p) * N;
                real *ho = h_out + ((b * H + hh) * P + p) * N;
                real acc = 0;
#pragma omp simd reduction(+ : acc)
                for (int64_t n = 0; n < N; n++) {
                    const real hn = a * hs[n] + xdt * Bv[n];
                    ho[n] = hn;
                    acc += hn * Cv[n];
                }
                y[hh * P + p] = acc;
                xv[hh * P + p] = x;
            }
        }
        if (nw) { /* the skip inside the gated norm */
            real *Dv = v; /* D per channel (v is overwritten by forward_row's values afterwards) */
            for (int64_t c = 0; c < E; c++) Dv[c] = D[dfull ? c : c / P];
            for (int64_t c = 0; c < E; c++) y[c] += Dv[c] * xv[c];
            if (nbg)
                forward_row(y, NULL, NULL, z, nw, out + b * E, v, sg, E, G, eps, 0, 1);
            else
                forward_row(y, NULL, NULL, z, nw, out + b * E, v, sg, E, G, eps, 0, 0);
        } else {
            for (int64_t c = 0; c < E; c++) {
                const real yc = y[c] + D[dfull ? c : c / P] * xv[c];
                out[b * E + c] = yc * (z[c] * sigmoid_e(z[c], exp_neg_abs(z[c])));
            }
        }
        free(u);
    }
    return fail;
}
