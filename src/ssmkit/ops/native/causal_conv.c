/* The causal depthwise (short) convolution with a carried state, optionally followed by SiLU, on the CPU, forward and
 * backward, in the (B, L, H) layout (no transposes).
 *
 *     y_{t,h} = act(Σ_{k=0}^{W-1} w_{h,k} e_{t+k, h} + b_h),   e = [state (W-1 inputs, oldest first), x_0 .. x_{L-1}]
 *
 * (taps in nn.Conv1d order: w_{h,W-1} multiplies x_t; act = SiLU or the identity); the final state is the last W-1
 * entries of e. x is read through its batch and time strides (its channels contiguous), so a slice of a projection's
 * output needs no copy. Work items are (batch row, block of VEC channels). The backward recomputes the pre-activation,
 * g_pre = g_y ⊙ act'(pre), then ∂e_p = Σ_k w_k g_pre[p-k] (+ the final state's gradient for p ≥ L), ∂x_s = ∂e_{s+W-1},
 * ∂state_j = ∂e_j, ∂w_k = Σ_{b,t} g_pre[t] e_{t+k}, ∂b = Σ_{b,t} g_pre[t]; ∂w and ∂b go to per-thread partials.
 *
 * Compiled twice, as float and as double (common.h: the type and the exp of SiLU's logistic).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define VEC 64

/* Number of items for (B, H). */
int64_t SUFFIX(cc_items)(int64_t Bsz, int64_t H) { return Bsz * ((H + VEC - 1) / VEC); }

/* The item's state as W-1 rows of VEC values (zeros beyond w, or all zeros without a state): the rows p < W-1 of e. */
static inline void state_rows(real *restrict rows, const real *st, int64_t b, int64_t c0, int64_t w, int64_t H, int64_t W) {
    for (int64_t p = 0; p < W - 1; p++)
        for (int64_t c = 0; c < VEC; c++) rows[p * VEC + c] = (st && c < w) ? st[(b * H + c0 + c) * (W - 1) + p] : 0;
}

/* Row p of e for the item's channels: a row of the state block, or x's row p - (W-1). */
static inline const real *erow(const real *rows, const real *x, int64_t xb, int64_t xt, int64_t b, int64_t c0, int64_t W,
                               int64_t p) {
    return p < W - 1 ? rows + p * VEC : x + b * xb + (p - (W - 1)) * xt + c0;
}

/* Forward over items [item0, item1) on the calling thread: y (B, L, H) contiguous, the final state stL (B, H, W-1) when not NULL.
 * wt (W, H) the taps transposed; bias (H,), state (B, H, W-1) or NULL; silu: apply SiLU. Returns 0, or 1 when out of
 * memory. */
static int forward_range(const real *x, int64_t xb, int64_t xt, const real *wt, const real *bias, const real *state,
                         int64_t silu, real *y, real *stL, int64_t Bsz, int64_t L, int64_t H, int64_t W, int64_t item0,
                         int64_t item1) {
    (void)Bsz;
    const int64_t nblk = (H + VEC - 1) / VEC;
    real *rows = malloc(sizeof(real) * (W > 1 ? W - 1 : 1) * VEC);
    if (!rows) return 1;
    real acc[VEC];
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        state_rows(rows, state, b, c0, w, H, W);
        for (int64_t t = 0; t < L; t++) {
            for (int64_t c = 0; c < w; c++) acc[c] = bias ? bias[c0 + c] : 0;
            for (int64_t k = 0; k < W; k++) {
                const real *restrict wk = wt + k * H + c0, *restrict e = erow(rows, x, xb, xt, b, c0, W, t + k);
#pragma omp simd
                for (int64_t c = 0; c < w; c++) acc[c] += wk[c] * e[c];
            }
            real *restrict out = y + (b * L + t) * H + c0;
            if (silu) {
#pragma omp simd
                for (int64_t c = 0; c < w; c++) out[c] = acc[c] / (1 + expr(-acc[c]));
            } else {
                for (int64_t c = 0; c < w; c++) out[c] = acc[c];
            }
        }
        if (stL)
            for (int64_t j = 0; j < W - 1; j++) {
                const real *e = erow(rows, x, xb, xt, b, c0, W, L + j);
                for (int64_t c = 0; c < w; c++) stL[(b * H + c0 + c) * (W - 1) + j] = e[c];
            }
    }
    free(rows);
    return 0;
}

/* Backward over items [item0, item1) on the calling thread: from gy (B, L, H) contiguous and gstL (B, H, W-1) or NULL, writes gx (B, L, H)
 * contiguous and gst0 (B, H, W-1) when not NULL, and adds into this thread's partials gP (W + 1, H): ∂w (transposed,
 * rows 0..W-1) and ∂b (row W). gpre is a scratch buffer of L × VEC values. Returns 0, or 1 when out of memory. */
static int backward_range(const real *x, int64_t xb, int64_t xt, const real *wt, const real *bias, const real *state,
                          int64_t silu, const real *gy, const real *gstL, real *gx, real *gst0, real *gP, real *gpre,
                          int64_t Bsz, int64_t L, int64_t H, int64_t W, int64_t item0, int64_t item1) {
    (void)Bsz;
    const int64_t nblk = (H + VEC - 1) / VEC;
    real *rows = malloc(sizeof(real) * (W > 1 ? W - 1 : 1) * VEC);
    if (!rows) return 1;
    real acc[VEC], ge[VEC];
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        state_rows(rows, state, b, c0, w, H, W);
        real *restrict gbias = gP + W * H + c0;
        /* 1. g_pre = g_y ⊙ act'(pre), the pre-activation recomputed; ∂b */
        for (int64_t t = 0; t < L; t++) {
            const real *restrict g = gy + (b * L + t) * H + c0;
            real *restrict gp = gpre + t * VEC;
            if (silu) {
                for (int64_t c = 0; c < w; c++) acc[c] = bias ? bias[c0 + c] : 0;
                for (int64_t k = 0; k < W; k++) {
                    const real *restrict wk = wt + k * H + c0, *restrict e = erow(rows, x, xb, xt, b, c0, W, t + k);
#pragma omp simd
                    for (int64_t c = 0; c < w; c++) acc[c] += wk[c] * e[c];
                }
#pragma omp simd
                for (int64_t c = 0; c < w; c++) {
                    real s = 1 / (1 + expr(-acc[c]));
                    gp[c] = g[c] * s * (1 + acc[c] * (1 - s)); /* SiLU'(a) = σ(a) (1 + a (1 - σ(a))) */
                }
            } else {
                for (int64_t c = 0; c < w; c++) gp[c] = g[c];
            }
#pragma omp simd
            for (int64_t c = 0; c < w; c++) gbias[c] += gp[c];
        }
        /* 2. ∂w_k = Σ_t g_pre[t] e_{t+k} */
        for (int64_t k = 0; k < W; k++) {
            real *restrict gw = gP + k * H + c0;
            for (int64_t t = 0; t < L; t++) {
                const real *restrict e = erow(rows, x, xb, xt, b, c0, W, t + k), *restrict gp = gpre + t * VEC;
#pragma omp simd
                for (int64_t c = 0; c < w; c++) gw[c] += gp[c] * e[c];
            }
        }
        /* 3. ∂e_p = Σ_k w_k g_pre[p-k] (+ ∂ final state): ∂x and ∂state */
        for (int64_t p = 0; p < L + W - 1; p++) {
            if (gstL && p >= L) {
                for (int64_t c = 0; c < w; c++) ge[c] = gstL[(b * H + c0 + c) * (W - 1) + (p - L)];
            } else {
                for (int64_t c = 0; c < w; c++) ge[c] = 0;
            }
            for (int64_t k = 0; k < W; k++) {
                const int64_t t = p - k;
                if (t < 0 || t >= L) continue;
                const real *restrict wk = wt + k * H + c0, *restrict gp = gpre + t * VEC;
#pragma omp simd
                for (int64_t c = 0; c < w; c++) ge[c] += wk[c] * gp[c];
            }
            if (p >= W - 1) {
                memcpy(gx + (b * L + p - (W - 1)) * H + c0, ge, sizeof(real) * w);
            } else if (gst0) {
                for (int64_t c = 0; c < w; c++) gst0[(b * H + c0 + c) * (W - 1) + p] = ge[c];
            }
        }
    }
    free(rows);
    return 0;
}

/* The entries: forward_range and backward_range over the items [item0, item1) on nthreads threads, one item at a
 * time; thread i adds into the partials gP + i·(W+1)·H and uses the scratch gpre + i·L·VEC. Return 0, or 1 when out of
 * memory. */
int SUFFIX(cc_forward)(const real *x, int64_t xb, int64_t xt, const real *wt, const real *bias, const real *state,
                       int64_t silu, real *y, real *stL, int64_t Bsz, int64_t L, int64_t H, int64_t W, int64_t item0,
                       int64_t item1, int64_t nthreads) {
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++)
        failed |= forward_range(x, xb, xt, wt, bias, state, silu, y, stL, Bsz, L, H, W, item, item + 1);
    return failed;
}

int SUFFIX(cc_backward)(const real *x, int64_t xb, int64_t xt, const real *wt, const real *bias, const real *state,
                        int64_t silu, const real *gy, const real *gstL, real *gx, real *gst0, real *gP, real *gpre,
                        int64_t Bsz, int64_t L, int64_t H, int64_t W, int64_t item0, int64_t item1, int64_t nthreads) {
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++) {
        const int64_t p = thread_index();
        failed |= backward_range(x, xb, xt, wt, bias, state, silu, gy, gstL, gx, gst0, gP + p * (W + 1) * H,
                                 gpre + p * L * VEC, Bsz, L, H, W, item, item + 1);
    }
    return failed;
}
