/* One step of the short causal depthwise convolution for one batch row, shared by the mixers' fused steps
 * (mamba_step.c, mamba2_step.c, rglru_step.c; included after common.h):
 *
 *     out[c] = act(Σ_{k<W-1} w[c, k] st[c, k] + w[c, W-1] x[c] + b[c]),   st_out[c] = [st[c, 1:], x[c]]
 *
 * st, st_out (C, W-1): the last W - 1 inputs, oldest first (zeros in place of st where reset); w (C, W); b (C) or NULL;
 * act = SiLU when silu, else the identity. Sums in the order of causal_conv1d_step (the taps, then the bias).
 */
#ifndef SSMKIT_NATIVE_CONV_STEP_H
#define SSMKIT_NATIVE_CONV_STEP_H

#include "common.h"

static inline void conv_step_row(const real *st, const real *x, const real *w, const real *b, real *out, real *st_out,
                                 int64_t C, int64_t W, int silu, int reset) {
    for (int64_t c = 0; c < C; c++) {
        real acc = 0;
        for (int64_t k = 0; k < W - 1; k++) acc += (reset ? 0 : st[c * (W - 1) + k]) * w[c * W + k];
        acc += x[c] * w[c * W + W - 1];
        if (b) acc += b[c];
        out[c] = silu ? acc * sigmoid_e(acc, exp_neg_abs(acc)) : acc;
        for (int64_t k = 0; k + 1 < W - 1; k++) st_out[c * (W - 1) + k] = reset ? 0 : st[c * (W - 1) + k + 1];
        if (W > 1) st_out[c * (W - 1) + W - 2] = x[c];
    }
}

#endif
