/* One recurrent step of the Mamba mixer between its in- and out-projections, on the CPU, without gradients
 * (generation).
 *
 * Gu & Dao, arXiv 2312.00752 (Algorithm 2 and Figure 3), per batch row, from the in-projection's output [x', z]
 * (2 H values):
 *
 *     x = SiLU(Σ_k w_k window_k + b),  window = [the conv state's W - 1 inputs, x']
 *     [δlow, B, C] = W_x x,   Δ = softplus(W_Δ δlow + b_Δ)                  (x_proj: R + 2N rows; dt_proj: H × R)
 *     h ← exp(Δ A) ⊙ h + (Δ x) B,   y = (C · h + D ⊙ x) ⊙ SiLU(z),   A = -exp(A_log)
 *
 * writing y (B, H), the next conv state (B, H, W - 1) and the next state (B, H, N). The layer's step in PyTorch ops is
 * ~25 small dispatched operations per token; this is one call. Work items are batch rows.
 *
 * Compiled twice, as float and with -DSS_DOUBLE as double (common.h).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "conv_step.h"

int64_t SUFFIX(ms_items)(int64_t Bsz) { return Bsz; }

/* xz: the in-projection's output (B, 2H), rows xzs apart; cs (B, H, W-1), cw (H, W), cb (H) or NULL; Wx (R + 2N, H),
 * Wdt (H, R), dtb (H), Alog (H, N), D (H) or NULL; h (B, H, N); y (B, H), cs_out, h_out. Nonzero: a scratch buffer
 * could not be allocated. */
int SUFFIX(ms_step)(const real *xz, int64_t xzs, const real *cs, const real *cw, const real *cb, const real *Wx,
                    const real *Wdt, const real *dtb, const real *Alog, const real *D, const real *h, real *y,
                    real *cs_out, real *h_out, int64_t H, int64_t R, int64_t N, int64_t W, int64_t item0,
                    int64_t item1, int64_t nthreads) {
    const int64_t J = R + 2 * N;
    int fail = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : fail)
    for (int64_t b = item0; b < item1; b++) {
        real *u = alloc_lines((H + J) * sizeof(real)); /* the conv's output, then [δlow, B, C] */
        if (!u) {
            fail = 1;
            continue;
        }
        real *dbc = u + H;
        const real *xs = xz + b * xzs, *z = xs + H;
        const real *st = cs + b * H * (W - 1);
        real *st_out = cs_out + b * H * (W - 1);
        conv_step_row(st, xs, cw, cb, u, st_out, H, W, 1, 0); /* the short convolution and its SiLU */
        for (int64_t j = 0; j < J; j++) { /* x_proj */
            real acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int64_t c = 0; c < H; c++) acc += Wx[j * H + c] * u[c];
            dbc[j] = acc;
        }
        const real *dlow = dbc, *Bv = dbc + R, *Cv = dbc + R + N;
        for (int64_t c = 0; c < H; c++) {
            real d = 0;
            for (int64_t r = 0; r < R; r++) d += Wdt[c * R + r] * dlow[r]; /* dt_proj */
            d += dtb[c];
            const real dt = softplus_e(d, exp_neg_abs(d)), x = u[c], dx = dt * x;
            const real *hs = h + (b * H + c) * N, *Al = Alog + c * N;
            real *ho = h_out + (b * H + c) * N;
            real acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int64_t n = 0; n < N; n++) {
                /* exp(Δ A) with A = -exp(A_log) formed here: -torch.exp(A_log) per step cost ~20 µs, two exponentials
                 * per state here less */
                const real hn = expr(dt * -expr(Al[n])) * hs[n] + dx * Bv[n];
                ho[n] = hn;
                acc += hn * Cv[n];
            }
            const real yc = D ? acc + x * D[c] : acc;
            y[b * H + c] = yc * (z[c] * sigmoid_e(z[c], exp_neg_abs(z[c])));
        }
        free(u);
    }
    return fail;
}
