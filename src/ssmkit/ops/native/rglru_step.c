/* One recurrent step of the RG-LRU block (Hawk's recurrent block) between its in- and out-projections, on the CPU,
 * without gradients (generation).
 *
 * De et al., arXiv 2402.19427 §2.4 and Figure 2, per batch row, from the GELU branch g = GELU(W_y u) (activated by
 * the caller, in the dtype autocast gives it, as the block's forward does) and the recurrent branch's projection z:
 *
 *     v = Σ_k w_k window_k + b,  window = [the conv state's W - 1 inputs (zeros at a segment start), z]
 *     r = σ(W_a v + b_a),  i = σ(W_x v + b_x)          (block-diagonal: G blocks of D/G channels)
 *     h ← a h + √(1 - a²) (i v),  a = σ(Λ)^{c r}       (a = 0 and the multiplier 1 at a segment start)
 *     out = h ⊙ g
 *
 * writing out (B, D), the next conv state (B, D, W - 1) and h (B, D). The block's step in PyTorch ops is ~25 small
 * dispatched operations per token; this is one call. Work items are batch rows.
 *
 * Compiled twice, as float and with -DSS_DOUBLE as double (common.h).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "conv_step.h"
#include "rglru_gates.h"

int64_t SUFFIX(rs_items)(int64_t Bsz) { return Bsz; }

/* gp: the GELU branch, zp: the recurrent branch's projection (B, D), rows gs and zs apart; cs (B, D, W-1), cw (D, W), cb (D); Wa, Wx (G, K, K)
 * with K = D/G (y[g K + j] = Σ_i v[g K + i] W[g, i, j] + b[g K + j]), ba, bx (D); Lambda (D); h (B, D); resets (B) or
 * NULL; out (B, D), cs_out, h_out. Nonzero: a scratch buffer could not be allocated. */
int SUFFIX(rs_step)(const real *gp, int64_t gs, const real *zp, int64_t zs, const real *cs, const real *cw,
                    const real *cb, const real *Wa, const real *ba, const real *Wx, const real *bx, const real *Lambda,
                    real c, const real *h, const uint8_t *resets, real *out, real *cs_out, real *h_out, int64_t D,
                    int64_t G, int64_t W, int64_t item0, int64_t item1, int64_t nthreads) {
    const int64_t K = D / G;
    int fail = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : fail)
    for (int64_t b = item0; b < item1; b++) {
        real *v = alloc_lines(3 * D * sizeof(real)); /* the conv's output, r, i */
        if (!v) {
            fail = 1;
            continue;
        }
        real *r = v + D, *ig = r + D;
        const int reset = resets ? resets[b] != 0 : 0;
        const real *g = gp + b * gs, *z = zp + b * zs;
        const real *st = cs + b * D * (W - 1);
        real *st_out = cs_out + b * D * (W - 1);
        conv_step_row(st, z, cw, cb, v, st_out, D, W, 0, reset); /* the short convolution (no activation) */
        for (int64_t gg = 0; gg < G; gg++) { /* the block-diagonal gates */
            const real *Wag = Wa + gg * K * K, *Wxg = Wx + gg * K * K, *vg = v + gg * K;
            for (int64_t j = 0; j < K; j++) r[gg * K + j] = 0, ig[gg * K + j] = 0;
            for (int64_t i = 0; i < K; i++) {
                const real vi = vg[i];
#pragma omp simd
                for (int64_t j = 0; j < K; j++) {
                    r[gg * K + j] += vi * Wag[i * K + j];
                    ig[gg * K + j] += vi * Wxg[i * K + j];
                }
            }
        }
        for (int64_t ch = 0; ch < D; ch++) {
            const real rr = r[ch] + ba[ch], ii = ig[ch] + bx[ch];
            const real rs = sigmoid_e(rr, exp_neg_abs(rr)), is = sigmoid_e(ii, exp_neg_abs(ii));
            const real L = Lambda[ch], sp = softplus_e(-L, exp_neg_abs(L));
            real a, m;
            gates(rs, sp, c, reset, &a, &m);
            const real hn = a * h[b * D + ch] + m * (is * v[ch]);
            h_out[b * D + ch] = hn;
            out[b * D + ch] = hn * g[ch];
        }
        free(v);
    }
    return fail;
}
