/* The diagonal LTI SSM over a sequence on the CPU, forward and backward, one pass over time per block of channels.
 *
 * Diagonal state space, recurrent view (Gu, Gupta, Goel, Ré, arXiv 2206.11893 §2), complex state:
 *
 *     x_t = Ā ⊙ x_{t-1} + B̄ u_t,     y_t = Re(Σ_n C_n x_{t,n}) + D u_t
 *
 * with u, y (B, L, H) real; Ā, B̄, C given as real and imaginary parts, each transposed to (N, H); D (H,) or NULL;
 * x (B, H, N) complex, interleaved (re, im) as torch stores complex tensors. The skip is fused.
 *
 * Work is split into items (b, block of up to VEC channels); a caller thread runs items [item0, item1). An item
 * keeps its N × VEC complex states in local arrays and reads u once, so the (B, L, H, N) states are never written;
 * time runs in chunks of T steps, mode-major inside a chunk (MB modes at a time, their states in registers).
 * The forward stores the states at chunk starts (every T steps) when asked; the backward recomputes each chunk's
 * states from them and runs the adjoint (PyTorch's convention for complex gradients: ∂ℓ/∂Re + i ∂ℓ/∂Im)
 *
 *     λ_t = conj(C) g_t + conj(Ā) ⊙ λ_{t+1},   ∂Ā = Σ_{b,t} λ_t conj(x_{t-1}),   ∂B̄ = Σ_{b,t} λ_t u_t,
 *     ∂C = Σ_{b,t} g_t conj(x_t),   ∂u_t = Re Σ_n conj(B̄) λ_t + D g_t,   ∂D = Σ_{b,t} g_t u_t,
 *     ∂x_{-1} = conj(Ā) ⊙ λ_0
 *
 * backwards through each chunk. ∂Ā, ∂B̄, ∂C, ∂D sum over batch and time, so each caller thread adds into its own
 * partial buffers (the caller sums them).
 *
 * Compiled twice: as float and with -DSS_DOUBLE as double.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define VEC 16 /* channels per item: the item's parameters (6 N VEC) and states (2 N VEC) stay in L1 for N ≤ 64 */
#define MB 4   /* modes advanced together in the forward: independent recurrences hide the FMA latency */
#define MBB 2  /* in the backward (its accumulators take more registers) */

/* VEC channels as one value (GCC/clang vector extension: one AVX-512 register for float, two AVX2 registers, ...),
 * so a mode's state and accumulators live in registers across time steps. */
typedef real vreal __attribute__((vector_size(VEC * sizeof(real))));
static inline vreal vload(const real *p) {
    vreal v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void vstore(real *p, vreal v) { memcpy(p, &v, sizeof v); }

/* Number of items for (B, H): the caller splits [0, n) among its threads. */
int64_t SUFFIX(ds_items)(int64_t Bsz, int64_t H) { return Bsz * ((H + VEC - 1) / VEC); }

typedef struct {
    const real *ar, *ai, *br, *bi, *cr, *ci; /* (N, H) each */
    const real *D;                           /* (H,) or NULL */
    int64_t L, H, N, T;
} params_t;

/* Rows [0, nt) of a (·, H) array from src (the item's first column), w ≤ VEC columns each, into dst (nt, VEC), zeros
 * beyond w. */
static inline void load_rows(real *dst, const real *src, int64_t nt, int64_t H, int64_t w) {
    if (w == VEC) {
        for (int64_t i = 0; i < nt; i++) vstore(dst + i * VEC, vload(src + i * H));
        return;
    }
    for (int64_t i = 0; i < nt; i++)
        for (int64_t c = 0; c < VEC; c++) dst[i * VEC + c] = c < w ? src[i * H + c] : 0;
}

/* The inverse of load_rows: w columns of each of the nt rows of src (nt, VEC) into dst (·, H). */
static inline void store_rows(real *dst, const real *src, int64_t nt, int64_t H, int64_t w) {
    if (w == VEC) {
        for (int64_t i = 0; i < nt; i++) vstore(dst + i * H, vload(src + i * VEC));
        return;
    }
    for (int64_t i = 0; i < nt; i++) memcpy(dst + i * H, src + i * VEC, sizeof(real) * w);
}

/* Copy the item's columns of an (N, H) array into an (NP, VEC) block, NP = N rounded up to MB (zeros beyond w and
 * beyond N: a padded mode has Ā = B̄ = C = 0 and adds nothing). */
static void gather(real *dst, const real *src, int64_t N, int64_t H, int64_t c0, int64_t w) {
    const int64_t NP = (N + MB - 1) / MB * MB;
    for (int64_t n = 0; n < NP; n++)
        for (int64_t c = 0; c < VEC; c++) dst[n * VEC + c] = (c < w && n < N) ? src[n * H + c0 + c] : 0;
}

/* Forward over items [item0, item1) on the calling thread: y (B, L, H); the final state xL (B, H, N, 2) and the chunk-start states
 * ckpt (B, ceil(L/T), 2, N, H) when not NULL; x0 (B, H, N, 2) or NULL for zeros. Time runs in chunks of T steps;
 * inside a chunk the loop is mode-major (for each n, all T steps), so a mode's parameters and state stay in
 * registers and only u and y are read and written per step. Returns 0, or 1 when out of memory. */
static int forward_range(const real *u, const real *ar, const real *ai, const real *br, const real *bi, const real *cr,
                         const real *ci, const real *D, const real *x0, real *y, real *xL, real *ckpt, int64_t Bsz,
                         int64_t L, int64_t H, int64_t N, int64_t T, int64_t item0, int64_t item1) {
    (void)Bsz;
    const int64_t NP = (N + MB - 1) / MB * MB, S = NP * VEC, nblk = (H + VEC - 1) / VEC, nc = (L + T - 1) / T;
    real *buf = malloc(sizeof(real) * (8 * S + 2 * T * VEC));
    if (!buf) return 1;
    real *Ar = buf, *Ai = buf + S, *Br = buf + 2 * S, *Bi = buf + 3 * S, *Cr = buf + 4 * S, *Ci = buf + 5 * S;
    real *xr = buf + 6 * S, *xi = buf + 7 * S, *ub = buf + 8 * S, *yb = ub + T * VEC; /* (T, VEC) u and y of a chunk */
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        gather(Ar, ar, N, H, c0, w), gather(Ai, ai, N, H, c0, w), gather(Br, br, N, H, c0, w);
        gather(Bi, bi, N, H, c0, w), gather(Cr, cr, N, H, c0, w), gather(Ci, ci, N, H, c0, w);
        vreal Dv = {0};
        for (int64_t c = 0; c < w && D; c++) Dv[c] = D[c0 + c];
        for (int64_t n = 0; n < NP; n++)
            for (int64_t c = 0; c < VEC; c++) {
                const real *s = x0 && c < w && n < N ? x0 + ((b * H + c0 + c) * N + n) * 2 : NULL;
                xr[n * VEC + c] = s ? s[0] : 0;
                xi[n * VEC + c] = s ? s[1] : 0;
            }
        for (int64_t k = 0; k < nc; k++) {
            const int64_t t0 = k * T, nt = (t0 + T < L ? t0 + T : L) - t0;
            if (ckpt) {
                real *dst = ckpt + (b * nc + k) * 2 * N * H + c0;
                for (int64_t n = 0; n < N; n++) {
                    memcpy(dst + n * H, xr + n * VEC, sizeof(real) * w);
                    memcpy(dst + (N + n) * H, xi + n * VEC, sizeof(real) * w);
                }
            }
            load_rows(ub, u + (b * L + t0) * H + c0, nt, H, w);
            for (int64_t i = 0; i < nt; i++) vstore(yb + i * VEC, Dv * vload(ub + i * VEC));
            for (int64_t n0 = 0; n0 < NP; n0 += MB) {
                vreal pr[MB], pi[MB], a_r[MB], a_i[MB], b_r[MB], b_i[MB], c_r[MB], c_i[MB];
                #pragma GCC unroll 8
                for (int m = 0; m < MB; m++) {
                    const int64_t o = (n0 + m) * VEC;
                    pr[m] = vload(xr + o), pi[m] = vload(xi + o);
                    a_r[m] = vload(Ar + o), a_i[m] = vload(Ai + o), b_r[m] = vload(Br + o), b_i[m] = vload(Bi + o);
                    c_r[m] = vload(Cr + o), c_i[m] = vload(Ci + o);
                }
                for (int64_t i = 0; i < nt; i++) {
                    const vreal uu = vload(ub + i * VEC);
                    vreal ym[MB];
                    #pragma GCC unroll 8
                    for (int m = 0; m < MB; m++) {
                        vreal nr = a_r[m] * pr[m] - a_i[m] * pi[m] + b_r[m] * uu;
                        vreal ni = a_r[m] * pi[m] + a_i[m] * pr[m] + b_i[m] * uu;
                        pr[m] = nr, pi[m] = ni;
                        ym[m] = c_r[m] * nr - c_i[m] * ni;
                    }
                    vstore(yb + i * VEC, vload(yb + i * VEC) + ((ym[0] + ym[1]) + (ym[2] + ym[3])));
                }
                #pragma GCC unroll 8
                for (int m = 0; m < MB; m++) vstore(xr + (n0 + m) * VEC, pr[m]), vstore(xi + (n0 + m) * VEC, pi[m]);
            }
            store_rows(y + (b * L + t0) * H + c0, yb, nt, H, w);
        }
        if (xL)
            for (int64_t n = 0; n < N; n++)
                for (int64_t c = 0; c < w; c++) {
                    real *d = xL + ((b * H + c0 + c) * N + n) * 2;
                    d[0] = xr[n * VEC + c], d[1] = xi[n * VEC + c];
                }
    }
    free(buf);
    return 0;
}

/* Backward over items [item0, item1) on the calling thread, from the chunk-start states ckpt (B, ceil(L/T), 2, N, H), the output gradient
 * gy (B, L, H) and the final-state gradient gxL (B, H, N, 2) or NULL. Writes gu (B, L, H) and gx0 (B, H, N, 2) (when
 * not NULL) for its channels, and adds into this thread's partials g (7, N, H): ∂Ā re/im, ∂B̄ re/im, ∂C re/im,
 * then ∂D in row 6 (its first H values). Mode-major inside each chunk, as the forward. Returns 0, or 1 when out of
 * memory. */
static int backward_range(const real *u, const real *ar, const real *ai, const real *br, const real *bi, const real *cr,
                          const real *ci, const real *D, const real *ckpt, const real *gy, const real *gxL, real *gu,
                          real *gx0, real *g, int64_t Bsz, int64_t L, int64_t H, int64_t N, int64_t T, int64_t item0,
                          int64_t item1) {
    (void)Bsz;
    const int64_t NP = (N + MB - 1) / MB * MB, S = NP * VEC, nblk = (H + VEC - 1) / VEC, nc = (L + T - 1) / T;
    real *buf = malloc(sizeof(real) * (14 * S + 2 * (T + 1) * S + 3 * T * VEC));
    if (!buf) return 1;
    real *Ar = buf, *Ai = buf + S, *Br = buf + 2 * S, *Bi = buf + 3 * S, *Cr = buf + 4 * S, *Ci = buf + 5 * S;
    real *lr = buf + 6 * S, *li = buf + 7 * S;  /* the adjoint carried in: conj(Ā) λ_{t+1} */
    real *G = buf + 8 * S;                      /* this item's ∂Ā, ∂B̄, ∂C (re, im): 6 (N, VEC) blocks */
    real *hr = buf + 14 * S, *hi = hr + (T + 1) * S; /* hr[i] = the state before step t0 + i, (T+1, N, VEC) */
    real *ub = hi + (T + 1) * S, *gb = ub + T * VEC, *gub = gb + T * VEC; /* (T, VEC): u, g and ∂u of a chunk */
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        gather(Ar, ar, N, H, c0, w), gather(Ai, ai, N, H, c0, w), gather(Br, br, N, H, c0, w);
        gather(Bi, bi, N, H, c0, w), gather(Cr, cr, N, H, c0, w), gather(Ci, ci, N, H, c0, w);
        memset(G, 0, sizeof(real) * 6 * S);
        vreal Dv = {0}, gD = {0};
        for (int64_t c = 0; c < w && D; c++) Dv[c] = D[c0 + c];
        for (int64_t n = 0; n < NP; n++)
            for (int64_t c = 0; c < VEC; c++) {
                const real *s = gxL && c < w && n < N ? gxL + ((b * H + c0 + c) * N + n) * 2 : NULL;
                lr[n * VEC + c] = s ? s[0] : 0;
                li[n * VEC + c] = s ? s[1] : 0;
            }
        for (int64_t k = nc - 1; k >= 0; k--) {
            const int64_t t0 = k * T, nt = (t0 + T < L ? t0 + T : L) - t0;
            const real *src = ckpt + (b * nc + k) * 2 * N * H + c0;
            load_rows(ub, u + (b * L + t0) * H + c0, nt, H, w);
            load_rows(gb, gy + (b * L + t0) * H + c0, nt, H, w);
            for (int64_t i = 0; i < nt; i++) {
                const vreal g_ = vload(gb + i * VEC);
                vstore(gub + i * VEC, Dv * g_);
                gD += g_ * vload(ub + i * VEC);
            }
            /* 1. the chunk's states, from its start (MB modes at a time, as the forward) */
            for (int64_t n = 0; n < NP; n++)
                for (int64_t c = 0; c < VEC; c++) {
                    int ok = c < w && n < N;
                    hr[n * VEC + c] = ok ? src[n * H + c] : 0;
                    hi[n * VEC + c] = ok ? src[(N + n) * H + c] : 0;
                }
            for (int64_t n0 = 0; n0 < NP; n0 += MB) {
                vreal pr[MB], pi[MB], a_r[MB], a_i[MB], b_r[MB], b_i[MB];
                #pragma GCC unroll 8
                for (int m = 0; m < MB; m++) {
                    const int64_t o = (n0 + m) * VEC;
                    pr[m] = vload(hr + o), pi[m] = vload(hi + o);
                    a_r[m] = vload(Ar + o), a_i[m] = vload(Ai + o), b_r[m] = vload(Br + o), b_i[m] = vload(Bi + o);
                }
                for (int64_t i = 0; i < nt; i++) {
                    const vreal uu = vload(ub + i * VEC);
                    #pragma GCC unroll 8
                    for (int m = 0; m < MB; m++) {
                        const int64_t o = (i + 1) * S + (n0 + m) * VEC;
                        vreal nr = a_r[m] * pr[m] - a_i[m] * pi[m] + b_r[m] * uu;
                        vreal ni = a_r[m] * pi[m] + a_i[m] * pr[m] + b_i[m] * uu;
                        pr[m] = nr, pi[m] = ni;
                        vstore(hr + o, nr), vstore(hi + o, ni);
                    }
                }
            }
            /* 2. the adjoint backwards through the chunk, and the gradients (MBB modes at a time) */
            for (int64_t n0 = 0; n0 < NP; n0 += MBB) {
                vreal a_r[MBB], a_i[MBB], b_r[MBB], b_i[MBB], c_r[MBB], c_i[MBB], l_r[MBB], l_i[MBB];
                vreal gar[MBB], gai[MBB], gbr[MBB], gbi[MBB], gcr[MBB], gci[MBB];
                #pragma GCC unroll 8
                for (int m = 0; m < MBB; m++) {
                    const int64_t o = (n0 + m) * VEC;
                    a_r[m] = vload(Ar + o), a_i[m] = vload(Ai + o), b_r[m] = vload(Br + o), b_i[m] = vload(Bi + o);
                    c_r[m] = vload(Cr + o), c_i[m] = vload(Ci + o), l_r[m] = vload(lr + o), l_i[m] = vload(li + o);
                    gar[m] = vload(G + o), gai[m] = vload(G + S + o), gbr[m] = vload(G + 2 * S + o);
                    gbi[m] = vload(G + 3 * S + o), gcr[m] = vload(G + 4 * S + o), gci[m] = vload(G + 5 * S + o);
                }
                for (int64_t i = nt - 1; i >= 0; i--) {
                    const vreal uu = vload(ub + i * VEC), gg = vload(gb + i * VEC);
                    vreal gum[MBB];
                    #pragma GCC unroll 8
                    for (int m = 0; m < MBB; m++) {
                        const int64_t o1 = (i + 1) * S + (n0 + m) * VEC, o0 = i * S + (n0 + m) * VEC;
                        const vreal xr = vload(hr + o1), xi = vload(hi + o1), qr = vload(hr + o0), qi = vload(hi + o0);
                        vreal mr = c_r[m] * gg + l_r[m], mi = l_i[m] - c_i[m] * gg; /* λ_t = conj(C) g_t + carry */
                        gcr[m] += gg * xr, gci[m] -= gg * xi;                        /* g conj(x_t) */
                        gbr[m] += mr * uu, gbi[m] += mi * uu;                        /* λ u */
                        gar[m] += mr * qr + mi * qi;                                 /* λ conj(x_{t-1}) */
                        gai[m] += mi * qr - mr * qi;
                        gum[m] = b_r[m] * mr + b_i[m] * mi;                          /* Re conj(B̄) λ */
                        l_r[m] = a_r[m] * mr + a_i[m] * mi;                          /* conj(Ā) λ_t */
                        l_i[m] = a_r[m] * mi - a_i[m] * mr;
                    }
                    vstore(gub + i * VEC, vload(gub + i * VEC) + (gum[0] + gum[1]));
                }
                #pragma GCC unroll 8
                for (int m = 0; m < MBB; m++) {
                    const int64_t o = (n0 + m) * VEC;
                    vstore(lr + o, l_r[m]), vstore(li + o, l_i[m]);
                    vstore(G + o, gar[m]), vstore(G + S + o, gai[m]), vstore(G + 2 * S + o, gbr[m]);
                    vstore(G + 3 * S + o, gbi[m]), vstore(G + 4 * S + o, gcr[m]), vstore(G + 5 * S + o, gci[m]);
                }
            }
            store_rows(gu + (b * L + t0) * H + c0, gub, nt, H, w);
        }
        if (gx0)
            for (int64_t n = 0; n < N; n++)
                for (int64_t c = 0; c < w; c++) {
                    real *d = gx0 + ((b * H + c0 + c) * N + n) * 2;
                    d[0] = lr[n * VEC + c], d[1] = li[n * VEC + c];
                }
        for (int64_t r = 0; r < 6; r++)
            for (int64_t n = 0; n < N; n++)
                for (int64_t c = 0; c < w; c++) g[(r * N + n) * H + c0 + c] += G[r * S + n * VEC + c];
        for (int64_t c = 0; c < w; c++) g[6 * N * H + c0 + c] += gD[c];
    }
    free(buf);
    return 0;
}

/* The entries: forward_range and backward_range over the items [item0, item1) on nthreads threads, one item at a
 * time; thread i adds into the partials g + i·7·N·H. Return 0, or 1 when out of memory. */
int SUFFIX(ds_forward)(const real *u, const real *ar, const real *ai, const real *br, const real *bi, const real *cr,
                       const real *ci, const real *D, const real *x0, real *y, real *xL, real *ckpt, int64_t Bsz,
                       int64_t L, int64_t H, int64_t N, int64_t T, int64_t item0, int64_t item1, int64_t nthreads) {
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++)
        failed |= forward_range(u, ar, ai, br, bi, cr, ci, D, x0, y, xL, ckpt, Bsz, L, H, N, T, item, item + 1);
    return failed;
}

int SUFFIX(ds_backward)(const real *u, const real *ar, const real *ai, const real *br, const real *bi, const real *cr,
                        const real *ci, const real *D, const real *ckpt, const real *gy, const real *gxL, real *gu,
                        real *gx0, real *g, int64_t Bsz, int64_t L, int64_t H, int64_t N, int64_t T, int64_t item0,
                        int64_t item1, int64_t nthreads) {
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++)
        failed |= backward_range(u, ar, ai, br, bi, cr, ci, D, ckpt, gy, gxL, gu, gx0, g + thread_index() * 7 * N * H,
                                 Bsz, L, H, N, T, item, item + 1);
    return failed;
}
