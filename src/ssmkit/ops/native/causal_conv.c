/* The causal depthwise (short) convolution with a carried state, optionally followed by SiLU, on the CPU, forward and
 * backward, in the (B, L, H) layout (no transposes).
 *
 *     y_{t,h} = act(Σ_{k=0}^{W-1} w_{h,k} e_{t+k, h} + b_h),   e = [state (W-1 inputs, oldest first), x_0 .. x_{L-1}]
 *
 * (taps in nn.Conv1d order: w_{h,W-1} multiplies x_t; act = SiLU or the identity); the final state is the last W-1
 * entries of e. x is read through its batch and time strides (its channels contiguous), so a slice of a projection's
 * output needs no copy. The backward recomputes the pre-activation, g_pre = g_y ⊙ act'(pre), then
 * ∂e_p = Σ_k w_k g_pre[p-k] (+ the final state's gradient for p ≥ L), ∂x_s = ∂e_{s+W-1}, ∂state_j = ∂e_j,
 * ∂w_k = Σ_{b,t} g_pre[t] e_{t+k}, ∂b = Σ_{b,t} g_pre[t]; ∂w and ∂b go to per-thread partials.
 *
 * Work items are (batch row, block of TB time steps) over all channels: nothing carries over time but the W-1 rows
 * before a block, so an item reads and writes whole rows, contiguous, in time order (an item of one channel block
 * over all L, the first layout, read rows H apart and ran 2-3x slower on memory latency). The backward recomputes the
 * W-1 rows of g_pre after its block that its ∂x needs.
 *
 * Compiled twice, as float and as double (common.h: the type and the exp of SiLU's logistic).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define TB_MIN 64 /* time steps per item (at least W-1, so that the first item holds every state row) */

static inline int64_t block_of(int64_t W) { return W - 1 > TB_MIN ? W - 1 : TB_MIN; }

/* Number of items for (B, L, W). */
int64_t SUFFIX(cc_items)(int64_t Bsz, int64_t L, int64_t W) { return Bsz * ((L + block_of(W) - 1) / block_of(W)); }

/* The state of batch row b transposed into W-1 rows of H values (zeros without a state): the rows p < W-1 of e. */
static void state_rows(real *restrict rows, const real *st, int64_t b, int64_t H, int64_t W) {
    for (int64_t p = 0; p < W - 1; p++)
        for (int64_t c = 0; c < H; c++) rows[p * H + c] = st ? st[(b * H + c) * (W - 1) + p] : 0;
}

/* Row p of e (H values): a row of the transposed state, or x's row p - (W-1). */
static inline const real *erow(const real *rows, const real *x, int64_t xb, int64_t xt, int64_t b, int64_t H, int64_t W,
                               int64_t p) {
    return p < W - 1 ? rows + p * H : x + b * xb + (p - (W - 1)) * xt;
}

/* acc = b + Σ_k w_k e_{t+k} over the H channels (the pre-activation of step t). With W = 4 (Mamba's and H3's width)
 * the four taps are summed in registers in one pass over the row, in the same order; tap by tap, each tap loaded and
 * stored the sum again, and the kernels ran at their loads and stores. */
static inline void pre_row(real *restrict acc, const real *rows, const real *x, int64_t xb, int64_t xt, const real *wt,
                           const real *bias, int64_t b, int64_t t, int64_t H, int64_t W) {
    if (W == 4) {
        const real *restrict e0 = erow(rows, x, xb, xt, b, H, W, t), *restrict e1 = erow(rows, x, xb, xt, b, H, W, t + 1);
        const real *restrict e2 = erow(rows, x, xb, xt, b, H, W, t + 2), *restrict e3 = erow(rows, x, xb, xt, b, H, W, t + 3);
        const real *restrict w0 = wt, *restrict w1 = wt + H, *restrict w2 = wt + 2 * H, *restrict w3 = wt + 3 * H;
        if (bias) {
#pragma omp simd
            for (int64_t c = 0; c < H; c++) acc[c] = bias[c] + w0[c] * e0[c] + w1[c] * e1[c] + w2[c] * e2[c] + w3[c] * e3[c];
        } else {
#pragma omp simd
            for (int64_t c = 0; c < H; c++) acc[c] = w0[c] * e0[c] + w1[c] * e1[c] + w2[c] * e2[c] + w3[c] * e3[c];
        }
        return;
    }
    for (int64_t c = 0; c < H; c++) acc[c] = bias ? bias[c] : 0;
    for (int64_t k = 0; k < W; k++) {
        const real *restrict wk = wt + k * H, *restrict e = erow(rows, x, xb, xt, b, H, W, t + k);
#pragma omp simd
        for (int64_t c = 0; c < H; c++) acc[c] += wk[c] * e[c];
    }
}

/* Forward of the items [item0, item1) on nthreads threads: y (B, L, H) contiguous; the final state stL (B, H, W-1)
 * when not NULL (by the item that ends at L). wt (W, H) the taps transposed; bias (H,), state (B, H, W-1) or NULL;
 * silu: apply SiLU. Returns 0, or 1 when out of memory. */
int SUFFIX(cc_forward)(const real *x, int64_t xb, int64_t xt, const real *wt, const real *bias, const real *state,
                       int64_t silu, real *y, real *stL, int64_t Bsz, int64_t L, int64_t H, int64_t W, int64_t item0,
                       int64_t item1, int64_t nthreads) {
    (void)Bsz;
    const int64_t TB = block_of(W), nb = (L + TB - 1) / TB;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        real *rows = malloc(sizeof(real) * W * H); /* W-1 state rows, then one row of pre-activations */
        failed |= !rows;
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = item0; item < item1; item++) {
            if (!rows) continue;
            const int64_t b = item / nb, t0 = (item % nb) * TB, t1 = t0 + TB < L ? t0 + TB : L;
            real *restrict acc = rows + (W - 1) * H;
            if (t0 < W - 1) state_rows(rows, state, b, H, W); /* only rows p < W-1 read it (stL too: then L < W-1) */
            for (int64_t t = t0; t < t1; t++) {
                pre_row(acc, rows, x, xb, xt, wt, bias, b, t, H, W);
                real *restrict out = y + (b * L + t) * H;
                if (silu) {
#pragma omp simd
                    for (int64_t c = 0; c < H; c++) out[c] = acc[c] / (1 + expr(-acc[c]));
                } else {
                    memcpy(out, acc, sizeof(real) * H);
                }
            }
            if (stL && t1 == L)
                for (int64_t j = 0; j < W - 1; j++) {
                    const real *e = erow(rows, x, xb, xt, b, H, W, L + j);
                    for (int64_t c = 0; c < H; c++) stL[(b * H + c) * (W - 1) + j] = e[c];
                }
        }
        free(rows);
    }
    return failed;
}

/* Backward of the items [item0, item1) on nthreads threads: from gy (B, L, H) contiguous and gstL (B, H, W-1) or NULL,
 * writes gx (B, L, H) contiguous and gst0 (B, H, W-1) when not NULL (by the first item of each row), and adds into the
 * item's own partials, gP + item·(W+1)·H, (W + 1, H): ∂w (transposed, rows 0..W-1) and ∂b (row W) (per item, not per
 * thread: the caller's sum over items then has a fixed order, so the result does not depend on the scheduling).
 * Returns 0, or 1 when out of memory. */
int SUFFIX(cc_backward)(const real *x, int64_t xb, int64_t xt, const real *wt, const real *bias, const real *state,
                        int64_t silu, const real *gy, const real *gstL, real *gx, real *gst0, real *gP, int64_t Bsz,
                        int64_t L, int64_t H, int64_t W, int64_t item0, int64_t item1, int64_t nthreads) {
    (void)Bsz;
    const int64_t TB = block_of(W), nb = (L + TB - 1) / TB;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        /* W-1 state rows, one row of ∂e, and g_pre for the TB + W - 1 steps from the item's first */
        real *rows = malloc(sizeof(real) * (W + TB + W - 1) * H);
        failed |= !rows;
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = item0; item < item1; item++) {
            if (!rows) continue;
            const int64_t b = item / nb, t0 = (item % nb) * TB, t1 = t0 + TB < L ? t0 + TB : L;
            const int64_t t2 = t1 + W - 1 < L ? t1 + W - 1 : L; /* g_pre is needed on [t0, t2) */
            real *restrict gw = gP + item * (W + 1) * H, *restrict gbias = gw + W * H; /* the item's own partials */
            real *restrict ge = rows + (W - 1) * H, *restrict gpre = ge + H;
            if (t0 < W - 1) state_rows(rows, state, b, H, W);
            /* 1. g_pre = g_y ⊙ act'(pre), the pre-activation recomputed */
            for (int64_t t = t0; t < t2; t++) {
                const real *restrict g = gy + (b * L + t) * H;
                real *restrict gp = gpre + (t - t0) * H;
                if (silu) {
                    pre_row(gp, rows, x, xb, xt, wt, bias, b, t, H, W);
#pragma omp simd
                    for (int64_t c = 0; c < H; c++) {
                        const real a = gp[c], s = 1 / (1 + expr(-a));
                        gp[c] = g[c] * s * (1 + a * (1 - s)); /* SiLU'(a) = σ(a) (1 + a (1 - σ(a))) */
                    }
                } else {
                    memcpy(gp, g, sizeof(real) * H);
                }
            }
            /* 2. ∂b and ∂w_k = Σ_t g_pre[t] e_{t+k} over the item's own steps */
            int64_t t = t0;
            if (W == 4) /* two steps at a time, the five sums in one pass over the row (their shared rows loaded once) */
                for (; t + 1 < t1; t += 2) {
                    const real *restrict ga = gpre + (t - t0) * H, *restrict gb = ga + H;
                    const real *restrict e0 = erow(rows, x, xb, xt, b, H, W, t), *restrict e1 = erow(rows, x, xb, xt, b, H, W, t + 1);
                    const real *restrict e2 = erow(rows, x, xb, xt, b, H, W, t + 2), *restrict e3 = erow(rows, x, xb, xt, b, H, W, t + 3);
                    const real *restrict e4 = erow(rows, x, xb, xt, b, H, W, t + 4);
                    real *restrict gw0 = gw, *restrict gw1 = gw + H, *restrict gw2 = gw + 2 * H, *restrict gw3 = gw + 3 * H;
#pragma omp simd
                    for (int64_t c = 0; c < H; c++) {
                        gbias[c] += ga[c] + gb[c];
                        gw0[c] += ga[c] * e0[c] + gb[c] * e1[c];
                        gw1[c] += ga[c] * e1[c] + gb[c] * e2[c];
                        gw2[c] += ga[c] * e2[c] + gb[c] * e3[c];
                        gw3[c] += ga[c] * e3[c] + gb[c] * e4[c];
                    }
                }
            for (; t < t1; t++) {
                const real *restrict gp = gpre + (t - t0) * H;
#pragma omp simd
                for (int64_t c = 0; c < H; c++) gbias[c] += gp[c];
                for (int64_t k = 0; k < W; k++) {
                    const real *restrict e = erow(rows, x, xb, xt, b, H, W, t + k);
                    real *restrict gwk = gw + k * H;
#pragma omp simd
                    for (int64_t c = 0; c < H; c++) gwk[c] += gp[c] * e[c];
                }
            }
            /* 3. ∂e_p = Σ_k w_k g_pre[p-k] (+ ∂ final state for p ≥ L): ∂x_s for the item's steps s (p = s + W - 1),
             *    and ∂state (p < W - 1) by the first item */
            const int64_t p0 = t0 == 0 ? 0 : t0 + W - 1;
            for (int64_t p = p0; p < t1 + W - 1; p++) {
                if (W == 4 && p - 3 >= t0 && p < t2 && p < L) { /* every tap inside the item, no final state: to gx in one pass */
                    const real *restrict g0 = gpre + (p - t0) * H, *restrict g1 = g0 - H, *restrict g2 = g0 - 2 * H;
                    const real *restrict g3 = g0 - 3 * H;
                    const real *restrict w0 = wt, *restrict w1 = wt + H, *restrict w2 = wt + 2 * H, *restrict w3 = wt + 3 * H;
                    real *restrict out = gx + (b * L + p - (W - 1)) * H;
#pragma omp simd
                    for (int64_t c = 0; c < H; c++) out[c] = w0[c] * g0[c] + w1[c] * g1[c] + w2[c] * g2[c] + w3[c] * g3[c];
                    continue;
                }
                for (int64_t c = 0; c < H; c++) ge[c] = (gstL && p >= L) ? gstL[(b * H + c) * (W - 1) + (p - L)] : 0;
                for (int64_t k = 0; k < W; k++) {
                    const int64_t t = p - k;
                    if (t < t0 || t >= t2) continue; /* t < t0 only for p < t0 + W - 1, when t0 = 0: t < 0 */
                    const real *restrict wk = wt + k * H, *restrict gp = gpre + (t - t0) * H;
#pragma omp simd
                    for (int64_t c = 0; c < H; c++) ge[c] += wk[c] * gp[c];
                }
                if (p >= W - 1) {
                    memcpy(gx + (b * L + p - (W - 1)) * H, ge, sizeof(real) * H);
                } else if (gst0) {
                    for (int64_t c = 0; c < H; c++) gst0[(b * H + c) * (W - 1) + p] = ge[c];
                }
            }
        }
        free(rows);
    }
    return failed;
}
