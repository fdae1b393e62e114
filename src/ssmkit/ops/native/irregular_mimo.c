/* The modes of a diagonal MIMO system sampled at irregular times (S5 arXiv 2208.04933, LRU arXiv 2303.06349) on the
 * CPU, forward and backward, with every step's coefficients formed in registers.
 *
 * Mode m, step t of batch row b, with s = τ_{b,t} (the gap in nominal periods), z = Δ_m Λ_m and w the rule's input
 * factor, v = u B̃ᵀ the projected input (formed by the caller's GEMM):
 *
 *     ZOH:      A_t = e^{s z},                  b_t = (e^{s z} − 1) w            (w = 1/Λ)
 *     bilinear: A_t = (1 + s z/2) q_t,          b_t = s q_t w,  q_t = 1/(1 − s z/2)   (w = Δ)
 *     x_t = A_t x_{t-1} + b_t v_t
 *
 * v, x (B, L, M) complex of the real type (interleaved), x0 (B, M) likewise or NULL, τ (B, L) double, z and w given as
 * real and imaginary parts (M,) in double. All arithmetic is in double, also in the float build (the state is kept in
 * double and rounded only where it is stored): the coefficients as in irregular_bank.c, e^{sz} − 1 as
 * expm1(s Re z) cos(s Im z) − 2 sin²(s Im z / 2) + i e^{s Re z} sin(s Im z) from vmath.h's expm1_v and one sincos_v
 * of the half angle (no cancellation for small |s z|; libm's sin and cos, lane by lane, for a step whose half phases
 * may exceed PHASE_LIMIT).
 *
 * Items are (b, group of G = 4 vectors of W modes), W = one vector of doubles (8 with AVX-512, 4 with AVX2): the
 * group's states in registers, their coefficients formed anew at each step (never stored). With one vector per item
 * the backward ran 2x slower at B 8, L 4 096, M 32 (a quarter of each 256-byte row per item: strided streams, and one
 * dependent chain in flight); a group reads its rows' modes contiguously and keeps four independent recurrences in
 * flight. The forward writes every state x_t; the backward reads them back (x_{t-1} for ∂A_t: no recomputation) and
 * runs the adjoint backwards in time, forming each step's coefficients again:
 *
 *     λ_t = ∂x_t + conj(A_{t+1}) λ_{t+1},   ∂v_t = conj(b_t) λ_t,   ∂x0 = conj(A_0) λ_0
 *     ∂A_t = λ_t conj(x_{t-1}),   ∂b_t = λ_t conj(v_t)
 *
 * (PyTorch's convention: the gradient of a complex quantity is the conjugate Wirtinger derivative), and through the
 * coefficients, for ZOH (E = A − 1, dA/dz = s A, dA/ds = z A):
 *
 *     ∂z += s conj(A) G,   ∂s += Re(conj(z A) G),   ∂w += conj(E) ∂b,   G = ∂A + conj(w) ∂b
 *
 * and for the bilinear rule (dA/dz = s q², dA/ds = z q², db/dz = (s²/2) q² w, db/ds = q² w, db/dw = s q):
 *
 *     ∂z += s conj(q²) (∂A + (s/2) conj(w) ∂b),   ∂s += Re(conj(z q²) ∂A + conj(w q²) ∂b),   ∂w += s conj(q) ∂b.
 *
 * The sums over t of ∂z and ∂w belong to the item (written per batch row, summed over rows by the caller in a fixed
 * order); ∂τ_{b,t} is the item's sum over its modes (per item, summed over the groups of a row by the caller).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define W (VBYTES / 8) /* modes per vector of doubles */
#define G 4             /* vectors of modes per item (independent recurrences in flight; a row's modes contiguous) */

#include "vmath.h"

/* The sum of a vector's lanes by a tree of shuffles (a lane-by-lane sum went through memory). */
static inline double lane_sum(vd v) {
#if W == 8
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
#else
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1);
#endif
    return v[0] + v[1];
}

/* W complex values, interleaved (re, im, re, ...), in the real type and in double; the shuffles that split them into
 * parts and interleave parts again (GCC >= 12 and clang: __builtin_shufflevector). Setting a vector's lanes one by one
 * had gone through memory (each lane stored, the vector reloaded: a stalled store forwarding per step). */
typedef real vc __attribute__((vector_size(2 * W * sizeof(real))));
typedef double vd2 __attribute__((vector_size(2 * W * sizeof(double))));
#if W == 8
#define EVEN 0, 2, 4, 6, 8, 10, 12, 14
#define ODD 1, 3, 5, 7, 9, 11, 13, 15
#define ZIP 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15
#else
#define EVEN 0, 2, 4, 6
#define ODD 1, 3, 5, 7
#define ZIP 0, 4, 1, 5, 2, 6, 3, 7
#endif

/* w complex values at p as two vectors of doubles (zeros past w). */
static inline void load_cplx(const real *p, int64_t w, vd *re, vd *im) {
    vc a = {0};
    if (w == W)
        memcpy(&a, p, sizeof a);
    else
        memcpy(&a, p, sizeof(real) * 2 * (size_t)w);
    *re = __builtin_convertvector(__builtin_shufflevector(a, a, EVEN), vd);
    *im = __builtin_convertvector(__builtin_shufflevector(a, a, ODD), vd);
}
/* The first w lanes of re + i im stored at p (interleaved, rounded to the real type). */
static inline void store_cplx(real *p, int64_t w, vd re, vd im) {
    const vd2 both = __builtin_shufflevector(re, im, ZIP);
    const vc a = __builtin_convertvector(both, vc);
    if (w == W)
        memcpy(p, &a, sizeof a);
    else
        memcpy(p, &a, sizeof(real) * 2 * (size_t)w);
}
static inline vd load_par(const double *p, int64_t w) {
    vd v = {0};
    for (int64_t c = 0; c < w; c++) v[c] = p[c];
    return v;
}

typedef struct {
    const double *zr, *zi, *wr, *wi; /* (M,) each */
    int64_t L, M, bilinear;
} params_t;

/* An item's place: batch row b, first mode m0, and the modes of each of its G vectors (0 past the last mode). */
typedef struct {
    int64_t b, m0, w[G];
} place_t;

static inline place_t item_place(const params_t *P, int64_t item) {
    const int64_t ngroups = (P->M + G * W - 1) / (G * W);
    place_t pl;
    pl.b = item / ngroups, pl.m0 = (item % ngroups) * G * W;
    for (int k = 0; k < G; k++) {
        const int64_t left = P->M - pl.m0 - k * W;
        pl.w[k] = left < 0 ? 0 : left < W ? left : W;
    }
    return pl;
}

/* The item's parameters (zeros past its last mode, where z = 0 gives A = 1 and b = 0: finite) and the largest |Re z|
 * and |Im z| among them. */
typedef struct {
    vd zr[G], zi[G], wr[G], wi[G];
    double zrmax, zimax;
} item_params_t;

static inline void load_item_params(item_params_t *ip, const params_t *P, const place_t *pl) {
    ip->zrmax = ip->zimax = 0;
    for (int k = 0; k < G; k++) {
        const int64_t m = pl->m0 + k * W, w = pl->w[k];
        ip->zr[k] = load_par(P->zr + m, w), ip->zi[k] = load_par(P->zi + m, w);
        ip->wr[k] = load_par(P->wr + m, w), ip->wi[k] = load_par(P->wi + m, w);
        for (int64_t c = 0; c < w; c++) {
            ip->zrmax = fmax(ip->zrmax, fabs(ip->zr[k][c]));
            ip->zimax = fmax(ip->zimax, fabs(ip->zi[k][c]));
        }
    }
}

/* Number of items for (B, M): batch rows × groups of G vectors of modes. */
int64_t SUFFIX(im_items)(int64_t Bsz, int64_t M) { return Bsz * ((M + G * W - 1) / (G * W)); }

static void forward_item(const real *v, const double *tau, const real *x0, real *x, const params_t *P, int64_t item) {
    const place_t pl = item_place(P, item);
    const int64_t L = P->L, M = P->M, b = pl.b;
    const int bil = (int)P->bilinear;
    item_params_t ip;
    load_item_params(&ip, P, &pl);
    vd hr[G], hi[G];
    for (int k = 0; k < G; k++) {
        hr[k] = hi[k] = (vd){0};
        if (x0 != NULL && pl.w[k] > 0) load_cplx(x0 + (b * M + pl.m0 + k * W) * 2, pl.w[k], &hr[k], &hi[k]);
    }
    for (int64_t t = 0; t < L; t++) {
        const double s = tau[b * L + t];
        const int phase = phase_kind(s, ip.zimax), wide = wide_real(s, ip.zrmax);
        const int64_t at = ((b * L + t) * M + pl.m0) * 2;
#pragma GCC unroll 8
        for (int k = 0; k < G; k++) {
            if (pl.w[k] == 0) continue;
            const coef_t c = coefficients(s, ip.zr[k], ip.zi[k], bil, phase, wide);
            vd er = c.xr, ei = c.xi;
            if (bil) er *= s, ei *= s;
            const vd br = er * ip.wr[k] - ei * ip.wi[k], bi = er * ip.wi[k] + ei * ip.wr[k]; /* b_t */
            vd vr, vi;
            load_cplx(v + at + 2 * k * W, pl.w[k], &vr, &vi);
            const vd ur = br * vr - bi * vi, ui = br * vi + bi * vr; /* b_t v_t */
            const vd nr = c.Ar * hr[k] - c.Ai * hi[k] + ur, ni = c.Ar * hi[k] + c.Ai * hr[k] + ui;
            hr[k] = nr, hi[k] = ni;
            store_cplx(x + at + 2 * k * W, pl.w[k], nr, ni);
        }
    }
}

int SUFFIX(im_forward)(const real *v, const double *tau, const double *zr, const double *zi, const double *wr,
                       const double *wi, const real *x0, real *x, int64_t L, int64_t M, int64_t bilinear,
                       int64_t item0, int64_t item1, int64_t nthreads) {
    const params_t P = {zr, zi, wr, wi, L, M, bilinear};
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t item = item0; item < item1; item++) forward_item(v, tau, x0, x, &P, item);
    return 0;
}

/* The backward of one item. g (B, 4, M) double: the batch row's sums ∂Re z, ∂Im z, ∂Re w, ∂Im w; g_tau (n_items, L)
 * double or NULL; gx0 (B, M) or NULL. */
static void backward_item(const real *v, const double *tau, const real *x0, const real *x, const real *gx, real *gv,
                          real *gx0, double *g, double *g_tau, const params_t *P, int64_t item) {
    const place_t pl = item_place(P, item);
    const int64_t L = P->L, M = P->M, b = pl.b;
    const int bil = (int)P->bilinear;
    item_params_t ip;
    load_item_params(&ip, P, &pl);
    vd lr[G], li[G], gzr[G], gzi[G], gwr[G], gwi[G]; /* λ and the item's sums */
    for (int k = 0; k < G; k++) lr[k] = li[k] = gzr[k] = gzi[k] = gwr[k] = gwi[k] = (vd){0};
    real first[2 * G * W] = {0}; /* x_{-1} of the item's modes (zeros without x0) */
    const int64_t width = M - pl.m0 < G * W ? M - pl.m0 : G * W;
    if (x0 != NULL) memcpy(first, x0 + (b * M + pl.m0) * 2, sizeof(real) * 2 * (size_t)width);
    for (int64_t t = L - 1; t >= 0; t--) {
        const double s = tau[b * L + t];
        const int phase = phase_kind(s, ip.zimax), wide = wide_real(s, ip.zrmax);
        const int64_t at = ((b * L + t) * M + pl.m0) * 2;
        const real *prev = t > 0 ? x + at - 2 * M : first; /* x_{t-1} */
        vd gs = {0};
#pragma GCC unroll 8
        for (int k = 0; k < G; k++) {
            if (pl.w[k] == 0) continue;
            const int64_t w = pl.w[k];
            const vd zr = ip.zr[k], zi = ip.zi[k], wr = ip.wr[k], wi = ip.wi[k];
            const coef_t c = coefficients(s, zr, zi, bil, phase, wide);
            vd gr, gi, vr, vi, pr, pi;
            load_cplx(gx + at + 2 * k * W, w, &gr, &gi);
            load_cplx(v + at + 2 * k * W, w, &vr, &vi);
            load_cplx(prev + 2 * k * W, w, &pr, &pi);
            const vd l_r = lr[k] + gr, l_i = li[k] + gi; /* λ_t */
            vd er = c.xr, ei = c.xi;                     /* b_t = (er + i ei) w */
            if (bil) er *= s, ei *= s;
            const vd br = er * wr - ei * wi, bi = er * wi + ei * wr;
            store_cplx(gv + at + 2 * k * W, w, br * l_r + bi * l_i, br * l_i - bi * l_r); /* ∂v = conj(b) λ */
            const vd dAr = l_r * pr + l_i * pi, dAi = l_i * pr - l_r * pi; /* λ conj(x_{t-1}) */
            const vd dbr = l_r * vr + l_i * vi, dbi = l_i * vr - l_r * vi; /* λ conj(v) */
            gwr[k] += er * dbr + ei * dbi, gwi[k] += er * dbi - ei * dbr;   /* ∂w += conj(E or s q) ∂b */
            if (!bil) {
                const vd GAr = dAr + wr * dbr + wi * dbi, GAi = dAi + wr * dbi - wi * dbr; /* ∂A + conj(w) ∂b */
                gzr[k] += s * (c.Ar * GAr + c.Ai * GAi), gzi[k] += s * (c.Ar * GAi - c.Ai * GAr); /* s conj(A) G */
                gs += (zr * c.Ar - zi * c.Ai) * GAr + (zr * c.Ai + zi * c.Ar) * GAi; /* Re(conj(z A) G) */
            } else {
                const vd q2r = c.xr * c.xr - c.xi * c.xi, q2i = 2.0 * c.xr * c.xi; /* q² */
                const double hs = 0.5 * s;
                const vd mr = dAr + hs * (wr * dbr + wi * dbi), mi = dAi + hs * (wr * dbi - wi * dbr);
                gzr[k] += s * (q2r * mr + q2i * mi), gzi[k] += s * (q2r * mi - q2i * mr); /* s conj(q²) (…) */
                const vd zqr = zr * q2r - zi * q2i, zqi = zr * q2i + zi * q2r;
                const vd wqr = wr * q2r - wi * q2i, wqi = wr * q2i + wi * q2r;
                gs += zqr * dAr + zqi * dAi + wqr * dbr + wqi * dbi; /* Re(conj(z q²) ∂A + conj(w q²) ∂b) */
            }
            lr[k] = c.Ar * l_r + c.Ai * l_i, li[k] = c.Ar * l_i - c.Ai * l_r; /* λ ← conj(A_t) λ_t */
        }
        if (g_tau != NULL) g_tau[item * L + t] = lane_sum(gs); /* (the lanes past the last mode hold zeros) */
    }
    double *gb = g + b * 4 * M;
    for (int k = 0; k < G; k++) {
        const int64_t m = pl.m0 + k * W;
        if (gx0 != NULL && pl.w[k] > 0) store_cplx(gx0 + (b * M + m) * 2, pl.w[k], lr[k], li[k]);
        const vd sums[4] = {gzr[k], gzi[k], gwr[k], gwi[k]};
        for (int q = 0; q < 4; q++)
            for (int64_t c = 0; c < pl.w[k]; c++) gb[q * M + m + c] = sums[q][c];
    }
}

int SUFFIX(im_backward)(const real *v, const double *tau, const double *zr, const double *zi, const double *wr,
                        const double *wi, const real *x0, const real *x, const real *gx, real *gv, real *gx0,
                        double *g, double *g_tau, int64_t L, int64_t M, int64_t bilinear, int64_t item0,
                        int64_t item1, int64_t nthreads) {
    const params_t P = {zr, zi, wr, wi, L, M, bilinear};
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t item = item0; item < item1; item++)
        backward_item(v, tau, x0, x, gx, gv, gx0, g, g_tau, &P, item);
    return 0;
}
