/* The SSD scan of Mamba-2 on the CPU, forward and backward, one pass over time per head and block of head channels.
 *
 * Dao & Gu, "Transformers are SSMs", arXiv 2405.21060, §3 (eq. 2 with Ā_t = exp(Δ_t A) I), per head h:
 *
 *     H_t = a_t H_{t-1} + (Δ_t x_t) B_tᵀ,   a_t = exp(Δ_t A_h),   y_t = H_t C_t
 *
 * x, y (B, L, H, P); Δ (B, L, H); A (H); B_t, C_t (B, L, G, N), head h reading group h / (H/G); H_{-1} and the final
 * state (B, H, P, N). The decay is one scalar per head and step, so the recurrence is P·N multiply-adds for the update
 * and P·N for the output per step: this kernel does them directly, where the chunked algorithm (ops/ssd.py) does
 * ~T/2 more work per step in its intra-chunk products and makes many passes over chunk-sized buffers.
 *
 * Work items are (b, h, block of up to PV head channels). An item keeps its state as N rows of PV channels (row n holds
 * H[p, n] for the block's p: vectors over p, so neither the update nor y_t = Σ_n C_t[n] H[:, n] needs a reduction
 * across lanes) in a local buffer, and reads its inputs once: the (B, L, H, P, N) states are never written. The forward
 * stores the state at each chunk start (every T steps) when asked, as ckpt (B, ⌈L/T⌉, H, N, P); the backward recomputes
 * each chunk's states from it into a (T+1)-state buffer (forming ∂C_t = H_tᵀ g_t on the way) and runs the adjoint
 * backwards through the chunk, reading H_{t-1} only:
 *
 *     Λ_t = g_t C_tᵀ + a_{t+1} Λ_{t+1}  (Λ_{L-1} also takes the final state's gradient),
 *     ∂C_t = H_tᵀ g_t,   ∂(Δx)_t = Λ_t B_t,   ∂B_t = Λ_tᵀ (Δx)_t,   ∂a_t = ⟨Λ_t, H_{t-1}⟩,
 *     ∂x_t = Δ_t ∂(Δx)_t,   ∂Δ_t = x_t · ∂(Δx)_t + A a_t ∂a_t,   ∂A = Σ_{b,t} Δ_t a_t ∂a_t,   ∂H_{-1} = a_0 Λ_0
 *
 * with g_t = ∂ℓ/∂y_t. ∂B and ∂C sum over the heads of a group and the channel blocks, ∂Δ over the channel blocks and ∂A
 * over batch, time and blocks: each item writes its own slice of partial buffers, which the caller sums (a fixed order
 * whatever the scheduling).
 *
 * Compiled twice, as float (exp by common.h's expr) and with -DSS_DOUBLE as double (libm's exp).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "vectors.h"

#define PV 64 /* head channels per item: the item's state is N × PV values */

typedef struct {
    int64_t b, h, blk, p0, w, g; /* batch row, head, channel block, its first channel and width (≤ PV), group */
} item_t;

static inline item_t item_of(int64_t item, int64_t H, int64_t P, int64_t G) {
    const int64_t nblk = (P + PV - 1) / PV;
    item_t it;
    it.b = item / (H * nblk);
    it.h = (item / nblk) % H;
    it.blk = item % nblk;
    it.p0 = it.blk * PV;
    it.w = P - it.p0 < PV ? P - it.p0 : PV;
    it.g = it.h / (H / G);
    return it;
}

/* Number of items for (B, H, P): the caller splits [0, n) among its threads. */
int64_t SUFFIX(ssd_items)(int64_t Bsz, int64_t H, int64_t P) { return Bsz * H * ((P + PV - 1) / PV); }

/* The state of (b, h) in torch's (B, H, P, N) layout into rows of PV channels (s[n·PV + p]), or zeros for NULL; and
 * back. */
static void load_state(const real *src, real *s, item_t it, int64_t H, int64_t P, int64_t N) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t p = 0; p < PV; p++)
            s[n * PV + p] = (src && p < it.w) ? src[((it.b * H + it.h) * P + it.p0 + p) * N + n] : 0;
}

static void store_state(const real *s, real *dst, item_t it, int64_t H, int64_t P, int64_t N) {
    for (int64_t p = 0; p < it.w; p++)
        for (int64_t n = 0; n < N; n++) dst[((it.b * H + it.h) * P + it.p0 + p) * N + n] = s[n * PV + p];
}

#define NV (PV / LANES) /* vectors per row of PV channels */

/* One step of the recurrence from the state src into dst (N rows of PV; the same buffer, or the next state of the
 * backward's chunk buffer): dst = a src + B_t ⊗ xs; y[p] = Σ_n C_t[n] dst[n, p] when y is not NULL (the forward), and
 * ∂C_t[n] = Σ_p g[p] dst[n, p] into gCt when g is not NULL (the backward's recompute: the adjoint then reads only
 * H_{t-1}, one state of the chunk buffer per step instead of two). wfix = PV for a full block (vector code: y
 * accumulates in NV registers over the N rows; ∂C_t keeps one vector per state, summed LANES states at a time by
 * transpose_sum), else 0 (w channels, scalar loops). Inlined with constant y, g and wfix. */
static inline __attribute__((always_inline)) void step(real *dst, const real *src, real a, const real *restrict bt,
                                                       const real *restrict ct, const real *restrict xs,
                                                       real *restrict y, const real *restrict g,
                                                       real *restrict gCt, int64_t N, int64_t w, int64_t wfix) {
#if HAVE_VEC
    if (wfix == PV) {
        vec_t xv[NV], acc[NV], gv[NV];
        for (int q = 0; q < NV; q++) {
            xv[q] = *(const vec_t *)(xs + q * LANES), acc[q] = (vec_t){0};
            gv[q] = g ? *(const vec_t *)(g + q * LANES) : (vec_t){0};
        }
        for (int64_t n0 = 0; n0 < N; n0 += LANES) {
            const int64_t m = N - n0 < LANES ? N - n0 : LANES;
            vec_t rc[LANES];
            for (int64_t j = 0; j < m; j++) {
                const int64_t n = n0 + j;
                const vec_t *sn = (const vec_t *)(src + n * PV);
                vec_t *dn = (vec_t *)(dst + n * PV);
                const real bn = bt[n], cn = ct[n];
                vec_t sc = (vec_t){0};
                for (int q = 0; q < NV; q++) {
                    const vec_t v = a * sn[q] + bn * xv[q];
                    dn[q] = v;
                    if (y) acc[q] += cn * v;
                    if (g) sc += gv[q] * v;
                }
                rc[j] = sc;
            }
            if (g) {
                for (int64_t j = m; j < LANES; j++) rc[j] = (vec_t){0};
                const vec_t sc = transpose_sum(rc);
                for (int64_t j = 0; j < m; j++) gCt[n0 + j] = sc[j];
            }
        }
        if (y)
            for (int q = 0; q < NV; q++) *(vec_u *)(y + q * LANES) = acc[q];
        return;
    }
#endif
    real acc[PV] ALIGNED_LINE;
    for (int64_t p = 0; p < PV; p++) acc[p] = 0;
    for (int64_t n = 0; n < N; n++) {
        const real *sn = src + n * PV;
        real *dn = dst + n * PV;
        const real bn = bt[n], cn = ct[n];
        real sc = 0;
        for (int64_t p = 0; p < w; p++) {
            const real v = a * sn[p] + bn * xs[p];
            dn[p] = v;
            acc[p] += cn * v;
            if (g) sc += g[p] * v;
        }
        if (g) gCt[n] = sc;
    }
    if (y)
        for (int64_t p = 0; p < w; p++) y[p] = acc[p];
}

/* One step of the adjoint, backwards: with Λ (lam) holding a_{t+1} Λ_{t+1}, forms Λ_t = it + C_t ⊗ g, writes ∂B_t =
 * Λ_tᵀ xs (gBt: N values), adds Λ_t B_t into dxs and Λ_t ⊙ H_{t-1} into da (PV values, summed by the caller), and leaves
 * a_t Λ_t in lam. hp: H_{t-1} (N rows of PV). For a full block the sums over p of ∂B are kept as one vector per state
 * and summed LANES states at a time by transpose_sum (a reduction across lanes per state and step, for ∂B and ∂C, took
 * as long as the rest of the step: forward+backward 1.13x as long at B 8, L 4 096, 4 heads, P = N = 64). */
static inline __attribute__((always_inline)) void adjoint(real *restrict lam, const real *restrict hp, real a,
                                                          const real *restrict bt, const real *restrict ct,
                                                          const real *restrict xs, const real *restrict g,
                                                          real *restrict dxs, real *restrict da, real *restrict gBt,
                                                          int64_t N, int64_t w, int64_t wfix) {
#if HAVE_VEC
    if (wfix == PV) {
        vec_t xv[NV], gv[NV], dx[NV], dv[NV];
        for (int q = 0; q < NV; q++) {
            xv[q] = *(const vec_t *)(xs + q * LANES), gv[q] = *(const vec_t *)(g + q * LANES);
            dx[q] = (vec_t){0}, dv[q] = (vec_t){0};
        }
        for (int64_t n0 = 0; n0 < N; n0 += LANES) {
            const int64_t m = N - n0 < LANES ? N - n0 : LANES;
            vec_t rb[LANES];
            for (int64_t j = 0; j < m; j++) {
                const int64_t n = n0 + j;
                vec_t *ln = (vec_t *)(lam + n * PV);
                const vec_t *hpn = (const vec_t *)(hp + n * PV);
                const real bn = bt[n], cn = ct[n];
                vec_t sb = (vec_t){0};
                for (int q = 0; q < NV; q++) {
                    const vec_t l = ln[q] + cn * gv[q]; /* Λ_t */
                    sb += l * xv[q];
                    dx[q] += bn * l;
                    dv[q] += l * hpn[q];
                    ln[q] = a * l; /* a_t Λ_t: Λ_{t-1}'s carried part */
                }
                rb[j] = sb;
            }
            for (int64_t j = m; j < LANES; j++) rb[j] = (vec_t){0};
            const vec_t sb = transpose_sum(rb);
            for (int64_t j = 0; j < m; j++) gBt[n0 + j] = sb[j];
        }
        for (int q = 0; q < NV; q++) *(vec_t *)(dxs + q * LANES) = dx[q], *(vec_t *)(da + q * LANES) = dv[q];
        return;
    }
#endif
    for (int64_t p = 0; p < PV; p++) dxs[p] = 0, da[p] = 0;
    for (int64_t n = 0; n < N; n++) {
        real *ln = lam + n * PV;
        const real *hpn = hp + n * PV;
        const real bn = bt[n], cn = ct[n];
        real sb = 0;
        for (int64_t p = 0; p < w; p++) {
            const real l = ln[p] + cn * g[p];
            sb += l * xs[p];
            dxs[p] += bn * l;
            da[p] += l * hpn[p];
            ln[p] = a * l;
        }
        gBt[n] = sb;
    }
}

/* Forward of one item: y for every step, the final state into hL, and the state at each chunk start into ckpt (when
 * not NULL). s: a scratch state of N·PV values. */
static inline __attribute__((always_inline)) void forward_one(const real *x, const real *dt, const real *A,
                                                              const real *Bm, const real *Cm, const real *h0, real *y,
                                                              real *hL, real *ckpt, int64_t L, int64_t H, int64_t P,
                                                              int64_t G, int64_t N, int64_t T, item_t it, real *s,
                                                              int64_t wfix) {
    const int64_t nc = (L + T - 1) / T;
    const real Ah = A[it.h];
    real xs[PV] ALIGNED_LINE;
    load_state(h0, s, it, H, P, N);
    for (int64_t t = 0; t < L; t++) {
        if (ckpt && t % T == 0) {
            real *dst = ckpt + (((it.b * nc + t / T) * H + it.h) * N) * P + it.p0;
            for (int64_t n = 0; n < N; n++) memcpy(dst + n * P, s + n * PV, it.w * sizeof(real));
        }
        const int64_t row = it.b * L + t;
        const real d = dt[row * H + it.h], a = expr(d * Ah);
        const real *xt = x + (row * H + it.h) * P + it.p0;
        for (int64_t p = 0; p < PV; p++) xs[p] = p < it.w ? d * xt[p] : 0;
        step(s, s, a, Bm + (row * G + it.g) * N, Cm + (row * G + it.g) * N, xs, y + (row * H + it.h) * P + it.p0,
             NULL, NULL, N, it.w, wfix);
    }
    store_state(s, hL, it, H, P, N);
}

static int forward_item(const real *x, const real *dt, const real *A, const real *Bm, const real *Cm, const real *h0,
                        real *y, real *hL, real *ckpt, int64_t L, int64_t H, int64_t P, int64_t G, int64_t N,
                        int64_t T, int64_t item) {
    real *s = alloc_lines(N * PV * sizeof(real));
    if (!s) return 1;
    const item_t it = item_of(item, H, P, G);
    if (it.w == PV)
        forward_one(x, dt, A, Bm, Cm, h0, y, hL, ckpt, L, H, P, G, N, T, it, s, PV);
    else
        forward_one(x, dt, A, Bm, Cm, h0, y, hL, ckpt, L, H, P, G, N, T, it, s, 0);
    free(s);
    return 0;
}

/* The gradients' partial buffers, one slice per item (the caller sums them). */
typedef struct {
    real *gx, *gdt, *gA, *gB, *gC, *gh0; /* gdt (nblk, B, L, H); gA (B, nblk, H); gB, gC (R·nblk, B, L, G, N) */
} grads_t;

/* Backward of one item through every chunk, last first (see the file's comment). buf: (T+1)·N·PV scratch values (the
 * chunk's states, buf row k = H_{t0+k-1}), lam: N·PV (Λ). */
static inline __attribute__((always_inline)) void backward_one(const real *x, const real *dt, const real *A,
                                                               const real *Bm, const real *Cm, const real *ckpt,
                                                               const real *gy, const real *ghL, grads_t gr, int64_t Bsz,
                                                               int64_t L, int64_t H, int64_t P, int64_t G, int64_t N,
                                                               int64_t T, item_t it, real *buf, real *lam,
                                                               int64_t wfix) {
    const int64_t nc = (L + T - 1) / T, nblk = (P + PV - 1) / PV, R = H / G, S = N * PV;
    const real Ah = A[it.h];
    const int64_t part = (it.h % R) * nblk + it.blk; /* this item's slice of ∂B and ∂C */
    real *gB = gr.gB + part * Bsz * L * G * N, *gC = gr.gC + part * Bsz * L * G * N;
    real *gdt = gr.gdt + it.blk * Bsz * L * H;
    real xs[PV] ALIGNED_LINE, g[PV] ALIGNED_LINE, dxs[PV] ALIGNED_LINE, da[PV] ALIGNED_LINE;
    double gA = 0; /* ∂A's sum over all L steps, in double: a real running sum drifted by ~L·eps (its terms share a
                    * sign when |a_t| → 1: 3.1e-5 off at L = 262 144 in float32, where the chunked path was 2.5e-7) */
    load_state(ghL, lam, it, H, P, N);
    for (int64_t c = nc - 1; c >= 0; c--) {
        const int64_t t0 = c * T, t1 = t0 + T < L ? t0 + T : L;
        const real *src = ckpt + (((it.b * nc + c) * H + it.h) * N) * P + it.p0;
        for (int64_t n = 0; n < N; n++) {
            memcpy(buf + n * PV, src + n * P, it.w * sizeof(real));
            for (int64_t p = it.w; p < PV; p++) buf[n * PV + p] = 0;
        }
        for (int64_t t = t0; t < t1; t++) { /* the chunk's states again */
            const int64_t row = it.b * L + t;
            const real d = dt[row * H + it.h], a = expr(d * Ah);
            const real *xt = x + (row * H + it.h) * P + it.p0, *gt = gy + (row * H + it.h) * P + it.p0;
            real *hn = buf + (t - t0 + 1) * S;
            for (int64_t p = 0; p < PV; p++) xs[p] = p < it.w ? d * xt[p] : 0, g[p] = p < it.w ? gt[p] : 0;
            step(hn, hn - S, a, Bm + (row * G + it.g) * N, Cm + (row * G + it.g) * N, xs, NULL, g,
                 gC + (row * G + it.g) * N, N, it.w, wfix); /* and ∂C_t = H_tᵀ g_t */
        }
        for (int64_t t = t1 - 1; t >= t0; t--) {
            const int64_t row = it.b * L + t;
            const real d = dt[row * H + it.h], a = expr(d * Ah);
            const real *xt = x + (row * H + it.h) * P + it.p0, *gt = gy + (row * H + it.h) * P + it.p0;
            const real *bt = Bm + (row * G + it.g) * N, *ct = Cm + (row * G + it.g) * N;
            const real *hp = buf + (t - t0) * S; /* H_{t-1} */
            for (int64_t p = 0; p < PV; p++) xs[p] = p < it.w ? d * xt[p] : 0, g[p] = p < it.w ? gt[p] : 0;
            adjoint(lam, hp, a, bt, ct, xs, g, dxs, da, gB + (row * G + it.g) * N, N, it.w, wfix);
            real sda = 0, sdx = 0;
            real *gxt = gr.gx + (row * H + it.h) * P + it.p0;
            for (int64_t p = 0; p < it.w; p++) {
                gxt[p] = d * dxs[p];
                sdx += xt[p] * dxs[p];
                sda += da[p];
            }
            gdt[row * H + it.h] = sdx + Ah * a * sda;
            gA += d * a * sda;
        }
    }
    if (gr.gh0) store_state(lam, gr.gh0, it, H, P, N);
    gr.gA[(it.b * nblk + it.blk) * H + it.h] = (real)gA;
}

static int backward_item(const real *x, const real *dt, const real *A, const real *Bm, const real *Cm,
                         const real *ckpt, const real *gy, const real *ghL, grads_t gr, int64_t Bsz, int64_t L,
                         int64_t H, int64_t P, int64_t G, int64_t N, int64_t T, int64_t item) {
    real *buf = alloc_lines((T + 2) * N * PV * sizeof(real));
    if (!buf) return 1;
    real *lam = buf + (T + 1) * N * PV;
    const item_t it = item_of(item, H, P, G);
    if (it.w == PV)
        backward_one(x, dt, A, Bm, Cm, ckpt, gy, ghL, gr, Bsz, L, H, P, G, N, T, it, buf, lam, PV);
    else
        backward_one(x, dt, A, Bm, Cm, ckpt, gy, ghL, gr, Bsz, L, H, P, G, N, T, it, buf, lam, 0);
    free(buf);
    return 0;
}

/* The entries, over the items [item0, item1) on nthreads threads, one item at a time. Nonzero: a buffer could not be
 * allocated. x, y, gx (B, L, H, P); dt, gdt (B, L, H); A (H); Bm, Cm (B, L, G, N); h0, hL, ghL, gh0 (B, H, P, N) or
 * NULL (h0: zeros; ghL: zero gradient; gh0: not wanted; ckpt in the forward: not kept); all contiguous. */
int SUFFIX(ssd_forward)(const real *x, const real *dt, const real *A, const real *Bm, const real *Cm, const real *h0,
                        real *y, real *hL, real *ckpt, int64_t Bsz, int64_t L, int64_t H, int64_t P, int64_t G,
                        int64_t N, int64_t T, int64_t item0, int64_t item1, int64_t nthreads) {
    (void)Bsz;
    int fail = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : fail)
    for (int64_t item = item0; item < item1; item++)
        fail |= forward_item(x, dt, A, Bm, Cm, h0, y, hL, ckpt, L, H, P, G, N, T, item);
    return fail;
}

int SUFFIX(ssd_backward)(const real *x, const real *dt, const real *A, const real *Bm, const real *Cm,
                         const real *ckpt, const real *gy, const real *ghL, real *gx, real *gdt, real *gA, real *gB,
                         real *gC, real *gh0, int64_t Bsz, int64_t L, int64_t H, int64_t P, int64_t G, int64_t N,
                         int64_t T, int64_t item0, int64_t item1, int64_t nthreads) {
    const grads_t gr = {gx, gdt, gA, gB, gC, gh0};
    int fail = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : fail)
    for (int64_t item = item0; item < item1; item++)
        fail |= backward_item(x, dt, A, Bm, Cm, ckpt, gy, ghL, gr, Bsz, L, H, P, G, N, T, item);
    return fail;
}
