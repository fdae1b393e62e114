/* S4's DPLR system (arXiv 2111.00396) sampled at irregular times on the CPU, forward only (no gradient): the bilinear
 * step of each sample's own Δ_t = Δ_h τ_{b,t} by the Woodbury form, every step's coefficients formed in registers.
 *
 * Channel h, half state x (N/2 modes: the kept half of the conjugate pairs), rank r ≤ 2, per step t:
 *
 *     q = 2/Δ_t,  R = (q − Λ)⁻¹,  E = q + Λ   (per mode),   Y = I + P* (R ⊙ P)   (r × r real),
 *     v = E ⊙ x − P (P* x) + 2 B u_t,   x' = R ⊙ v − (R ⊙ P) Y⁻¹ P* (R ⊙ v),
 *     y_t = 2 Re Σ_n C_n x'_n + D u_t,
 *
 * every P_i* w over the full state being 2 Re Σ_n conj(P_i,n) w_n (:mod:`ssmkit.ops.irregular_dplr`'s docstring).
 * Y⁻¹ by the closed form of a 1 × 1 or 2 × 2 inverse (what S4 makes: rank 1 or 2; r = 0 is the diagonal system).
 * Two passes over the modes per step: the first forms R and R ⊙ v (kept in the state's buffer), P* (R ⊙ v) and Y; the
 * second forms x' and, as it goes, y_t and P* x' (the next step's P* x).
 *
 * u, y (B, L, H) and the states x0, xL (B, H, N/2) complex (interleaved) of the build's real type, τ (B, L) and
 * Δ (H,) double; Λ, B, C given as real and imaginary parts (N/2, H) and P as (r, N/2, H) parts, double; D (H,) of the
 * real type or NULL. All arithmetic in double. Items are (b, block of W channels), W = one vector of doubles; an item
 * keeps its parameters, state and R in local buffers (lanes past the last channel: zeros and Δ = 1, finite).
 *
 * Compiled twice: as float and with -DSS_DOUBLE as double (the types of u, y, D and the states in memory).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define W (VBYTES / 8) /* channels per item: one vector of doubles */

#include "vmath.h"

typedef struct {
    const double *lr, *li, *br, *bi, *cr, *ci; /* (M, H) each */
    const double *pr, *pi;                     /* (r, M, H) each */
    const double *dt;                          /* (H,) */
    const real *D;                             /* (H,) or NULL */
    int64_t L, H, M, r;
} params_t;

/* Number of items for (B, H). */
int64_t SUFFIX(id_items)(int64_t Bsz, int64_t H) { return Bsz * ((H + W - 1) / W); }

/* One (M, H) array's item columns into M vectors (zeros past the last channel). */
static void load_cols(double *dst, const double *src, int64_t M, int64_t H, int64_t h0, int64_t w) {
    for (int64_t n = 0; n < M; n++)
        for (int64_t c = 0; c < W; c++) dst[n * W + c] = c < w ? src[n * H + h0 + c] : 0.0;
}

static inline vd row_of(const real *p, int64_t w, double fill) {
    vd v;
    for (int64_t c = 0; c < W; c++) v[c] = c < w ? (double)p[c] : fill;
    return v;
}

/* The item's steps, r the rank (a constant where forward_rank inlines it). */
static inline __attribute__((always_inline)) int forward_rank(const real *u, const double *tau, const real *x0,
                                                              real *y, real *xL, const params_t *P, int64_t item,
                                                              const int r) {
    const int64_t nblk = (P->H + W - 1) / W, b = item / nblk, h0 = (item % nblk) * W, M = P->M, L = P->L, H = P->H;
    const int64_t w = H - h0 < W ? H - h0 : W, MW = M * W;
    double *buf = alloc_lines(sizeof(double) * (10 + 2 * r) * MW);
    if (buf == NULL) return 1;
    double *lr = buf, *li = buf + MW, *br = buf + 2 * MW, *bi = buf + 3 * MW, *cr = buf + 4 * MW, *ci = buf + 5 * MW;
    double *xr = buf + 6 * MW, *xi = buf + 7 * MW, *rr = buf + 8 * MW, *ri = buf + 9 * MW;
    double *pr = buf + 10 * MW, *pi = buf + (10 + r) * MW; /* (r, M, W) */
    const double *src[6] = {P->lr, P->li, P->br, P->bi, P->cr, P->ci};
    for (int k = 0; k < 6; k++) load_cols(buf + k * MW, src[k], M, H, h0, w);
    for (int j = 0; j < r; j++) {
        load_cols(pr + j * MW, P->pr + j * M * H, M, H, h0, w);
        load_cols(pi + j * MW, P->pi + j * M * H, M, H, h0, w);
    }
    for (int64_t n = 0; n < M; n++)
        for (int64_t c = 0; c < W; c++) {
            const int64_t at = ((b * H + h0 + c) * M + n) * 2;
            xr[n * W + c] = x0 != NULL && c < w ? (double)x0[at] : 0.0;
            xi[n * W + c] = x0 != NULL && c < w ? (double)x0[at + 1] : 0.0;
        }
    vd dtv;
    for (int64_t c = 0; c < W; c++) dtv[c] = c < w ? P->dt[h0 + c] : 1.0;
    const vd Dv = P->D == NULL ? (vd){0} : row_of(P->D + h0, w, 0.0);
    vd px[2] = {{0}, {0}}; /* P_j* x over the full state */
    for (int j = 0; j < r; j++) {
        vd acc = {0};
        for (int64_t n = 0; n < M; n++)
            acc += vld(pr + j * MW + n * W) * vld(xr + n * W) + vld(pi + j * MW + n * W) * vld(xi + n * W);
        px[j] = 2.0 * acc;
    }
    for (int64_t t = 0; t < L; t++) {
        const vd q = 2.0 / ((double)tau[b * L + t] * dtv);
        const vd uv = row_of(u + (b * L + t) * H + h0, w, 0.0), u2 = 2.0 * uv;
        vd wv[2] = {{0}, {0}}, Y[2][2] = {{{0}, {0}}, {{0}, {0}}};
        /* 1. R, R ⊙ v (into x), P* (R ⊙ v) and P* (R ⊙ P) */
        for (int64_t n = 0; n < M; n++) {
            const vd a = vld(lr + n * W), e = vld(li + n * W), dr = q - a;
            const vd inv = 1.0 / (dr * dr + e * e), Rr = dr * inv, Ri = e * inv; /* 1/(dr − i e) */
            const vd sr = vld(xr + n * W), si = vld(xi + n * W), Er = q + a;
            vd vr = Er * sr - e * si + u2 * vld(br + n * W), vi = Er * si + e * sr + u2 * vld(bi + n * W);
            for (int j = 0; j < r; j++) vr -= vld(pr + j * MW + n * W) * px[j], vi -= vld(pi + j * MW + n * W) * px[j];
            const vd Rvr = Rr * vr - Ri * vi, Rvi = Rr * vi + Ri * vr;
            vst(xr + n * W, Rvr), vst(xi + n * W, Rvi), vst(rr + n * W, Rr), vst(ri + n * W, Ri);
            for (int k = 0; k < r; k++) {
                const vd Pkr = vld(pr + k * MW + n * W), Pki = vld(pi + k * MW + n * W);
                const vd RPr = Rr * Pkr - Ri * Pki, RPi = Rr * Pki + Ri * Pkr;
                wv[k] += Pkr * Rvr + Pki * Rvi;
                for (int j = 0; j < r; j++) Y[j][k] += vld(pr + j * MW + n * W) * RPr + vld(pi + j * MW + n * W) * RPi;
            }
        }
        /* 2. coef = Y⁻¹ P* (R ⊙ v), Y = I + 2 Re(...) */
        vd coef[2] = {{0}, {0}};
        if (r == 1) {
            coef[0] = 2.0 * wv[0] / (1.0 + 2.0 * Y[0][0]);
        } else if (r == 2) {
            const vd a = 1.0 + 2.0 * Y[0][0], bb = 2.0 * Y[0][1], c = 2.0 * Y[1][0], d = 1.0 + 2.0 * Y[1][1];
            const vd det = 1.0 / (a * d - bb * c), w0 = 2.0 * wv[0], w1 = 2.0 * wv[1];
            coef[0] = (d * w0 - bb * w1) * det, coef[1] = (a * w1 - c * w0) * det;
        }
        /* 3. x' = R ⊙ v − (R ⊙ P) coef, y_t and P* x' */
        vd yacc = {0}, pn[2] = {{0}, {0}};
        for (int64_t n = 0; n < M; n++) {
            const vd Rr = vld(rr + n * W), Ri = vld(ri + n * W);
            vd nr = vld(xr + n * W), ni = vld(xi + n * W);
            for (int k = 0; k < r; k++) {
                const vd Pkr = vld(pr + k * MW + n * W), Pki = vld(pi + k * MW + n * W);
                nr -= (Rr * Pkr - Ri * Pki) * coef[k], ni -= (Rr * Pki + Ri * Pkr) * coef[k];
            }
            vst(xr + n * W, nr), vst(xi + n * W, ni);
            yacc += vld(cr + n * W) * nr - vld(ci + n * W) * ni;
            for (int j = 0; j < r; j++) pn[j] += vld(pr + j * MW + n * W) * nr + vld(pi + j * MW + n * W) * ni;
        }
        for (int j = 0; j < r; j++) px[j] = 2.0 * pn[j];
        const vd yv = 2.0 * yacc + Dv * uv;
        real *yo = y + (b * L + t) * H + h0;
        for (int64_t c = 0; c < w; c++) yo[c] = (real)yv[c];
    }
    for (int64_t n = 0; n < M; n++)
        for (int64_t c = 0; c < w; c++) {
            const int64_t at = ((b * H + h0 + c) * M + n) * 2;
            xL[at] = (real)xr[n * W + c], xL[at + 1] = (real)xi[n * W + c];
        }
    free(buf);
    return 0;
}

static int forward_item(const real *u, const double *tau, const real *x0, real *y, real *xL, const params_t *P,
                        int64_t item) {
    switch (P->r) {
    case 0: return forward_rank(u, tau, x0, y, xL, P, item, 0);
    case 1: return forward_rank(u, tau, x0, y, xL, P, item, 1);
    default: return forward_rank(u, tau, x0, y, xL, P, item, 2);
    }
}

/* The forward over items [item0, item1): y (B, L, H) and xL (B, H, M) from u, τ, the system and x0 (NULL: zeros).
 * Returns nonzero when an item could not allocate its buffer. r must be 0, 1 or 2 (the wrapper's check). */
int SUFFIX(id_forward)(const real *u, const double *tau, const double *lr, const double *li, const double *br,
                       const double *bi, const double *cr, const double *ci, const double *pr, const double *pi,
                       const double *dt, const real *D, const real *x0, real *y, real *xL, int64_t L, int64_t H,
                       int64_t M, int64_t r, int64_t item0, int64_t item1, int64_t nthreads) {
    const params_t P = {lr, li, br, bi, cr, ci, pr, pi, dt, D, L, H, M, r};
    int failed = 0;
    (void)nthreads;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++) failed |= forward_item(u, tau, x0, y, xL, &P, item);
    return failed;
}
