/* S4's DPLR system (arXiv 2111.00396) sampled at irregular times on the CPU, forward and backward: the bilinear step of
 * each sample's own Δ_t = Δ_h τ_{b,t} by the Woodbury form, every step's coefficients formed in registers.
 *
 * Channel h, half state x (M = N/2 modes: the kept half of the conjugate pairs), rank r ≤ 2, per step t:
 *
 *     q = 2/Δ_t,  R = (q − Λ)⁻¹,  E = q + Λ   (per mode),   Y = I + P* (R ⊙ P)   (r × r real),
 *     v = E ⊙ x − P (P* x) + 2 B u_t,   x' = R ⊙ v − (R ⊙ P) c,   c = Y⁻¹ P* (R ⊙ v),
 *     y_t = 2 Re Σ_n C_n x'_n + D u_t,
 *
 * every P_i* w over the full state being ⟨P_i, w⟩ = 2 Re Σ_n conj(P_i,n) w_n (:mod:`ssmkit.ops.irregular_dplr`'s
 * docstring). Y⁻¹ by the closed form of a 1 × 1 or 2 × 2 inverse (what S4 makes: rank 1 or 2; r = 0 is the diagonal
 * system). Two passes over the modes per step: the first forms R and R ⊙ v (kept in the output state's buffer),
 * P* (R ⊙ v) and Y; the second forms x' and, as it goes, y_t and P* x' (the next step's P* x). Two identities the
 * backward uses: c = P* x' (P* x' = P* R v − (Y − I) Y⁻¹ P* R v), and the step is (q − A) x' = (q + A) x + 2 B u
 * with A = Λ − P P*, S4's matrix (x' = (q − A)⁻¹ (...) is the Woodbury solve above).
 *
 * The backward (the adjoint of one step, by hand). PyTorch's convention: the gradient ḡ_z of a complex z is
 * ∂ℓ/∂Re z + i ∂ℓ/∂Im z, so z = a w gives ḡ_w = conj(a) ḡ_z and ḡ_a = conj(w) ḡ_z, a real f = ⟨a, w⟩ gives
 * ḡ_w = 2 ḡ_f a and ḡ_a = 2 ḡ_f w, and a real c in z = a c gives ḡ_c = Re(conj(a) ḡ_z). With g = ḡ_{x'} (from y_t:
 * 2 ḡ_y conj(C); from the next step: its ḡ_x), the forward's steps backwards:
 *
 *     x' = R ⊙ (v − P c):   ḡ_c,k = −Re Σ_n conj(R P_k,n) g_n,   ḡ_{Rv} = g (+ from c's input below)
 *     c = Y⁻¹ w, w = P* (R v):   μ = ḡ_w = Y⁻ᵀ ḡ_c,   ḡ_Y = −μ cᵀ,   ḡ_{Rv} = g + 2 Σ_k μ_k P_k =: a
 *     ḡ_v = conj(R) a =: γ   (so γ = (q − A)⁻* g: the same Woodbury solve, adjoint)
 *
 * and through R, E, Y and P (R enters R v, R P c and Y = I + ⟨P_j, R P_k⟩): ḡ_R = conj(v − P c) a, which with
 * R' = R² gives conj(R²) ḡ_R = conj(x') γ, and ḡ_E = conj(x) γ. Collected per mode n (Σ_k runs over the rank):
 *
 *     Pw = Σ_k μ_k P_k,   γ = conj(R) (g + 2 Pw),
 *     ḡ_x   = conj(E) γ + 2 Pw                     (the previous state's adjoint: the term ⟨P_j, x⟩ of v gives
 *                                                   2 ḡ_{P*x,j} P_j, ḡ_{P*x,j} = −Re Σ conj(P_j) γ, which is μ_j:
 *                                                   ⟨P_k, γ⟩ = −2 ḡ_c,k + 2 ((Y − I)ᵀ μ)_k = −2 μ_k, as Yᵀ μ = ḡ_c)
 *     ḡ_Λ  += conj(x + x') γ                       (conj(R²) ḡ_R + ḡ_E)
 *     ḡ_q  += Re Σ_n conj(x − x') γ                (dR/dq = −R², dE/dq = 1)
 *     ḡ_B  += 2 u γ,   ḡ_u = 2 Re Σ_n conj(B) γ + D ḡ_y,   ḡ_D += ḡ_y u,   ḡ_C += 2 ḡ_y conj(x')
 *     ḡ_P_j += −(⟨P_j, x⟩ + c_j) γ + 2 μ_j (x + x')
 *
 * (P_j's six terms: −⟨P_j, x⟩ γ and 2 μ_j x from v, 2 μ_j R v from w, −2 μ_j R P c and −2 c_j conj(R) Pw from Y,
 * −c_j conj(R) g from x'; with R (v − P c) = x' and conj(R) (g + 2 Pw) = γ they are the two above). Then
 * q = 2/(Δ τ): ḡ_s = −(q²/2) ḡ_q, ḡ_Δ += τ ḡ_s, ḡ_τ = Σ_h Δ ḡ_s. ⟨P_j, x⟩ and c_j = ⟨P_j, x'⟩ are the forward's
 * P* x of the step's two states. Per step two passes over the modes: the first forms g (adding 2 ḡ_y conj(C) to the
 * carried ḡ_x), R, ḡ_C and ḡ_c; μ by the closed-form r × r inverse transposed; the second forms γ, the new ḡ_x and the
 * parameters' sums.
 *
 * States: the forward under a gradient writes the state before every T-th step (a checkpoint, complex double); the
 * backward recomputes each chunk of T steps from its checkpoint into a local (T + 1) × M buffer (with each state's
 * P* x and each step's Y), then walks it back. Nothing of size (B, L, H, M) is stored.
 *
 * u, y (B, L, H) and the states x0, xL (B, H, N/2) complex (interleaved) of the build's real type, τ (B, L) and
 * Δ (H,) double; Λ, B, C given as real and imaginary parts (N/2, H) and P as (r, N/2, H) parts, double; D (H,) of the
 * real type or NULL; the checkpoints (B, ⌈L/T⌉, H, N/2) complex double. All arithmetic in double. Items are (b, block
 * of W channels), W = one vector of doubles; an item keeps its parameters, state and R in local buffers (lanes past the
 * last channel: zeros and Δ = 1, finite, and their gradients zero). The parameters' gradients are the item's sums,
 * written per batch row (summed over rows by the caller in a fixed order); ∂τ per item (summed over its row's blocks).
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
    int64_t L, H, M, r, T;                     /* T: steps per checkpoint */
} params_t;

/* An item: batch row b, channels h0 .. h0 + w − 1, its parameters' columns (M, W) (P: (r, M, W)) in its buffer. */
typedef struct {
    int64_t b, h0, w;
    double *lr, *li, *br, *bi, *cr, *ci, *pr, *pi;
    vd dt, D;
} item_t;

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

/* The item's place and parameters, in a buffer of (6 + 2r) M W + extra doubles (its first (6 + 2r) M W the
 * parameters'); NULL when it cannot be allocated (the caller frees it). */
static double *load_item(item_t *it, const params_t *P, int64_t item, int64_t extra) {
    const int64_t nblk = (P->H + W - 1) / W, M = P->M, H = P->H, MW = M * W, r = P->r;
    it->b = item / nblk, it->h0 = (item % nblk) * W;
    it->w = H - it->h0 < W ? H - it->h0 : W;
    double *buf = alloc_lines(sizeof(double) * (size_t)((6 + 2 * r) * MW + extra));
    if (buf == NULL) return NULL;
    double **dst[6] = {&it->lr, &it->li, &it->br, &it->bi, &it->cr, &it->ci};
    const double *src[6] = {P->lr, P->li, P->br, P->bi, P->cr, P->ci};
    for (int k = 0; k < 6; k++) {
        *dst[k] = buf + k * MW;
        load_cols(*dst[k], src[k], M, H, it->h0, it->w);
    }
    it->pr = buf + 6 * MW, it->pi = buf + (6 + r) * MW;
    for (int64_t j = 0; j < r; j++) {
        load_cols(it->pr + j * MW, P->pr + j * M * H, M, H, it->h0, it->w);
        load_cols(it->pi + j * MW, P->pi + j * M * H, M, H, it->h0, it->w);
    }
    for (int64_t c = 0; c < W; c++) it->dt[c] = c < it->w ? P->dt[it->h0 + c] : 1.0;
    it->D = P->D == NULL ? (vd){0} : row_of(P->D + it->h0, it->w, 0.0);
    return buf;
}

/* P_j* x over the full state, 2 Re Σ_n conj(P_j,n) x_n, for j < r. */
static inline void inner_p(const item_t *it, int64_t M, const double *xr, const double *xi, vd px[2], const int r) {
    const int64_t MW = M * W;
    for (int j = 0; j < r; j++) {
        vd acc = {0};
        for (int64_t n = 0; n < M; n++)
            acc += vld(it->pr + j * MW + n * W) * vld(xr + n * W) + vld(it->pi + j * MW + n * W) * vld(xi + n * W);
        px[j] = 2.0 * acc;
    }
}

/* One forward step from (xr, xi) into (or_, oi) (the same arrays for the forward: in place, mode by mode), q = 2/Δ_t,
 * u2 = 2 u_t; px: P* x on entry, P* x' on return; Yo (4 vectors, or NULL): Y's entries a, b, c, d ([[a, b], [c, d]]);
 * R's parts into (rr, ri). Returns Σ_n Re(C_n x'_n). */
static inline __attribute__((always_inline)) vd step_rank(const item_t *it, int64_t M, vd q, vd u2, const double *xr,
                                                          const double *xi, double *or_, double *oi, double *rr,
                                                          double *ri, vd px[2], vd *Yo, const int r) {
    const int64_t MW = M * W;
    const double *pr = it->pr, *pi = it->pi, *lr = it->lr, *li = it->li, *br = it->br, *bi = it->bi;
    const double *cr = it->cr, *ci = it->ci;
    const vd pxin[2] = {r > 0 ? px[0] : (vd){0}, r > 1 ? px[1] : (vd){0}}; /* (copied: vst may alias px) */
    vd wv[2] = {{0}, {0}}, Y[2][2] = {{{0}, {0}}, {{0}, {0}}};
    /* 1. R, R ⊙ v (into the output), P* (R ⊙ v) and P* (R ⊙ P) */
    for (int64_t n = 0; n < M; n++) {
        const vd a = vld(lr + n * W), e = vld(li + n * W), dr = q - a;
        const vd inv = 1.0 / (dr * dr + e * e), Rr = dr * inv, Ri = e * inv; /* 1/(dr − i e) */
        const vd sr = vld(xr + n * W), si = vld(xi + n * W), Er = q + a;
        vd vr = Er * sr - e * si + u2 * vld(br + n * W), vi = Er * si + e * sr + u2 * vld(bi + n * W);
        for (int j = 0; j < r; j++) vr -= vld(pr + j * MW + n * W) * pxin[j], vi -= vld(pi + j * MW + n * W) * pxin[j];
        const vd Rvr = Rr * vr - Ri * vi, Rvi = Rr * vi + Ri * vr;
        vst(or_ + n * W, Rvr), vst(oi + n * W, Rvi), vst(rr + n * W, Rr), vst(ri + n * W, Ri);
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
        const vd a = 1.0 + 2.0 * Y[0][0];
        coef[0] = 2.0 * wv[0] / a;
        if (Yo != NULL) Yo[0] = a;
    } else if (r == 2) {
        const vd a = 1.0 + 2.0 * Y[0][0], bb = 2.0 * Y[0][1], c = 2.0 * Y[1][0], d = 1.0 + 2.0 * Y[1][1];
        const vd det = 1.0 / (a * d - bb * c), w0 = 2.0 * wv[0], w1 = 2.0 * wv[1];
        coef[0] = (d * w0 - bb * w1) * det, coef[1] = (a * w1 - c * w0) * det;
        if (Yo != NULL) Yo[0] = a, Yo[1] = bb, Yo[2] = c, Yo[3] = d;
    }
    /* 3. x' = R ⊙ v − (R ⊙ P) coef, y_t and P* x' */
    vd yacc = {0}, pn[2] = {{0}, {0}};
    for (int64_t n = 0; n < M; n++) {
        const vd Rr = vld(rr + n * W), Ri = vld(ri + n * W);
        vd nr = vld(or_ + n * W), ni = vld(oi + n * W);
        for (int k = 0; k < r; k++) {
            const vd Pkr = vld(pr + k * MW + n * W), Pki = vld(pi + k * MW + n * W);
            nr -= (Rr * Pkr - Ri * Pki) * coef[k], ni -= (Rr * Pki + Ri * Pkr) * coef[k];
        }
        vst(or_ + n * W, nr), vst(oi + n * W, ni);
        yacc += vld(cr + n * W) * nr - vld(ci + n * W) * ni;
        for (int j = 0; j < r; j++) pn[j] += vld(pr + j * MW + n * W) * nr + vld(pi + j * MW + n * W) * ni;
    }
    for (int j = 0; j < r; j++) px[j] = 2.0 * pn[j];
    return yacc;
}

/* The state (xr, xi) of the item's channels to or from a (B, K, H, M) complex array at its index k (dir 1: store). */
static void move_ckpt(const item_t *it, int64_t M, int64_t H, int64_t K, int64_t k, double *xr, double *xi,
                      double *ck, int store) {
    for (int64_t c = 0; c < it->w; c++) {
        double *at = ck + (((it->b * K + k) * H + it->h0 + c) * M) * 2;
        for (int64_t n = 0; n < M; n++) {
            if (store)
                at[2 * n] = xr[n * W + c], at[2 * n + 1] = xi[n * W + c];
            else
                xr[n * W + c] = at[2 * n], xi[n * W + c] = at[2 * n + 1];
        }
    }
    if (!store)
        for (int64_t n = 0; n < M; n++)
            for (int64_t c = it->w; c < W; c++) xr[n * W + c] = xi[n * W + c] = 0.0;
}

/* The item's steps, r the rank (a constant where forward_item inlines it); ck (or NULL): the checkpoints. */
static inline __attribute__((always_inline)) int forward_rank(const real *u, const double *tau, const real *x0,
                                                              real *y, real *xL, double *ck, const params_t *P,
                                                              int64_t item, const int r) {
    const int64_t M = P->M, L = P->L, H = P->H, MW = M * W, T = P->T, K = T > 0 ? (L + T - 1) / T : 0;
    item_t it;
    double *buf = load_item(&it, P, item, 4 * MW);
    if (buf == NULL) return 1;
    double *xr = buf + (6 + 2 * r) * MW, *xi = xr + MW, *rr = xi + MW, *ri = rr + MW;
    const int64_t b = it.b, h0 = it.h0, w = it.w;
    for (int64_t n = 0; n < M; n++)
        for (int64_t c = 0; c < W; c++) {
            const int64_t at = ((b * H + h0 + c) * M + n) * 2;
            xr[n * W + c] = x0 != NULL && c < w ? (double)x0[at] : 0.0;
            xi[n * W + c] = x0 != NULL && c < w ? (double)x0[at + 1] : 0.0;
        }
    vd px[2] = {{0}, {0}}; /* P_j* x over the full state */
    inner_p(&it, M, xr, xi, px, r);
    for (int64_t t = 0; t < L; t++) {
        if (ck != NULL && t % T == 0) move_ckpt(&it, M, H, K, t / T, xr, xi, ck, 1);
        const vd q = 2.0 / ((double)tau[b * L + t] * it.dt);
        const vd uv = row_of(u + (b * L + t) * H + h0, w, 0.0);
        const vd yacc = step_rank(&it, M, q, 2.0 * uv, xr, xi, xr, xi, rr, ri, px, NULL, r);
        const vd yv = 2.0 * yacc + it.D * uv;
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

static int forward_item(const real *u, const double *tau, const real *x0, real *y, real *xL, double *ck,
                        const params_t *P, int64_t item) {
    switch (P->r) {
    case 0: return forward_rank(u, tau, x0, y, xL, ck, P, item, 0);
    case 1: return forward_rank(u, tau, x0, y, xL, ck, P, item, 1);
    default: return forward_rank(u, tau, x0, y, xL, ck, P, item, 2);
    }
}

/* The forward over items [item0, item1): y (B, L, H) and xL (B, H, M) from u, τ, the system and x0 (NULL: zeros);
 * with ck (not NULL) also the state before every T-th step, ck (B, ⌈L/T⌉, H, M) complex double. Returns nonzero when
 * an item could not allocate its buffer. r must be 0, 1 or 2 (the wrapper's check). */
int SUFFIX(id_forward)(const real *u, const double *tau, const double *lr, const double *li, const double *br,
                       const double *bi, const double *cr, const double *ci, const double *pr, const double *pi,
                       const double *dt, const real *D, const real *x0, real *y, real *xL, double *ck, int64_t L,
                       int64_t H, int64_t M, int64_t r, int64_t T, int64_t item0, int64_t item1, int64_t nthreads) {
    const params_t P = {lr, li, br, bi, cr, ci, pr, pi, dt, D, L, H, M, r, T};
    int failed = 0;
    (void)nthreads;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++) failed |= forward_item(u, tau, x0, y, xL, ck, &P, item);
    return failed;
}

/* The backward's outputs and upstream gradients. */
typedef struct {
    const real *u, *gy, *gxL; /* u, ḡ_y (B, L, H); ḡ_{x_{L-1}} (B, H, M) complex or NULL */
    const double *tau, *ck;   /* τ (B, L); the forward's checkpoints */
    real *gu, *gx0;           /* ḡ_u (B, L, H); ḡ_{x_{-1}} (B, H, M) complex or NULL */
    double *gpar, *gdd, *gtau; /* (B, 6 + 2r, M, H), (B, 2, H): ∂Δ, ∂D, and (items, L) or NULL */
} grads_t;

/* The adjoint of step t (module docstring) of the item, x = (xr, xi) and x' = (nr_, ni_) its states, pxa = P* x,
 * pxb = P* x' (= c), Yv its Y; lam (in: ḡ_x' without the output's term, out: ḡ_x), (rr, ri) scratch for R, the
 * parameters' sums g (Λ, B, C, P parts; (6 + 2r, M, W)); returns ḡ_q's lanes and adds ∂u_t's sum Σ Re(conj(B) γ) to
 * *gub. */
static inline __attribute__((always_inline)) vd adjoint_rank(const item_t *it, int64_t M, vd q, vd u2, vd gy,
                                                             const double *xr, const double *xi, const double *nr_,
                                                             const double *ni_, const vd *pxa, const vd *pxb,
                                                             const vd *Yv, double *lr_, double *li_, double *rr,
                                                             double *ri, double *g, vd *gub, const int r) {
    const int64_t MW = M * W;
    const double *pr = it->pr, *pi = it->pi, *lr = it->lr, *li = it->li, *cr = it->cr, *ci = it->ci, *br = it->br,
                 *bi = it->bi;
    double *glr = g, *gli = g + MW, *gbr = g + 2 * MW, *gbi = g + 3 * MW, *gcr = g + 4 * MW, *gci = g + 5 * MW;
    double *gpr = g + 6 * MW, *gpi = g + (6 + r) * MW;
    const vd gy2 = 2.0 * gy;
    vd gc[2] = {{0}, {0}};
    /* 1. g = ḡ_x' + 2 ḡ_y conj(C), R, ḡ_C += 2 ḡ_y conj(x'), ḡ_c = −Re Σ conj(R P) g */
    for (int64_t n = 0; n < M; n++) {
        const vd a = vld(lr + n * W), e = vld(li + n * W), dr = q - a;
        const vd inv = 1.0 / (dr * dr + e * e), Rr = dr * inv, Ri = e * inv;
        const vd gr = vld(lr_ + n * W) + gy2 * vld(cr + n * W), gi = vld(li_ + n * W) - gy2 * vld(ci + n * W);
        vst(lr_ + n * W, gr), vst(li_ + n * W, gi), vst(rr + n * W, Rr), vst(ri + n * W, Ri);
        vst(gcr + n * W, vld(gcr + n * W) + gy2 * vld(nr_ + n * W));
        vst(gci + n * W, vld(gci + n * W) - gy2 * vld(ni_ + n * W));
        for (int k = 0; k < r; k++) {
            const vd Pkr = vld(pr + k * MW + n * W), Pki = vld(pi + k * MW + n * W);
            gc[k] -= (Rr * Pkr - Ri * Pki) * gr + (Rr * Pki + Ri * Pkr) * gi;
        }
    }
    /* 2. μ = Y⁻ᵀ ḡ_c; σ_j = P_j* (x + x') */
    vd mu[2] = {{0}, {0}}, sig[2] = {{0}, {0}};
    for (int j = 0; j < r; j++) sig[j] = pxa[j] + pxb[j];
    if (r == 1) {
        mu[0] = gc[0] / Yv[0];
    } else if (r == 2) {
        const vd det = 1.0 / (Yv[0] * Yv[3] - Yv[1] * Yv[2]);
        mu[0] = (Yv[3] * gc[0] - Yv[2] * gc[1]) * det, mu[1] = (Yv[0] * gc[1] - Yv[1] * gc[0]) * det;
    }
    /* 3. γ = conj(R) (g + 2 Pw), ḡ_x = conj(E) γ + 2 Pw, and the sums */
    vd gq = {0}, gu = {0};
    for (int64_t n = 0; n < M; n++) {
        vd pwr = {0}, pwi = {0};
        for (int k = 0; k < r; k++) pwr += mu[k] * vld(pr + k * MW + n * W), pwi += mu[k] * vld(pi + k * MW + n * W);
        const vd Rr = vld(rr + n * W), Ri = vld(ri + n * W);
        const vd ar = vld(lr_ + n * W) + 2.0 * pwr, ai = vld(li_ + n * W) + 2.0 * pwi;
        const vd gvr = Rr * ar + Ri * ai, gvi = Rr * ai - Ri * ar; /* γ */
        const vd Er = q + vld(lr + n * W), Ei = vld(li + n * W);
        vst(lr_ + n * W, Er * gvr + Ei * gvi + 2.0 * pwr), vst(li_ + n * W, Er * gvi - Ei * gvr + 2.0 * pwi);
        const vd xr0 = vld(xr + n * W), xi0 = vld(xi + n * W), xr1 = vld(nr_ + n * W), xi1 = vld(ni_ + n * W);
        const vd sr = xr0 + xr1, si = xi0 + xi1;
        vst(glr + n * W, vld(glr + n * W) + sr * gvr + si * gvi); /* conj(x + x') γ */
        vst(gli + n * W, vld(gli + n * W) + sr * gvi - si * gvr);
        gq += (xr0 - xr1) * gvr + (xi0 - xi1) * gvi; /* Re conj(x − x') γ */
        vst(gbr + n * W, vld(gbr + n * W) + u2 * gvr), vst(gbi + n * W, vld(gbi + n * W) + u2 * gvi);
        gu += vld(br + n * W) * gvr + vld(bi + n * W) * gvi;
        for (int j = 0; j < r; j++) {
            const vd m2 = 2.0 * mu[j];
            vst(gpr + j * MW + n * W, vld(gpr + j * MW + n * W) - sig[j] * gvr + m2 * sr);
            vst(gpi + j * MW + n * W, vld(gpi + j * MW + n * W) - sig[j] * gvi + m2 * si);
        }
    }
    *gub += gu;
    return gq;
}

/* The backward of one item: each chunk of T steps, last first, recomputed from its checkpoint into xs ((T + 1) states,
 * with their P* x and the steps' Y), then walked back. */
static inline __attribute__((always_inline)) int backward_rank(const grads_t *G, const params_t *P, int64_t item,
                                                               const int r) {
    const int64_t M = P->M, L = P->L, H = P->H, MW = M * W, T = P->T, K = (L + T - 1) / T;
    const int64_t npar = (6 + 2 * r) * MW;
    item_t it;
    /* after the parameters: λ and R (4 MW), the sums (npar), the states ((T + 1) 2 MW), P* x ((T + 1) 2 W) and
     * Y (4 T W) */
    double *buf = load_item(&it, P, item, 4 * MW + npar + (T + 1) * 2 * MW + (T + 1) * 2 * W + 4 * T * W);
    if (buf == NULL) return 1;
    double *lr_ = buf + npar, *li_ = lr_ + MW, *rr = li_ + MW, *ri = rr + MW, *g = ri + MW, *xs = g + npar;
    vd *pxs = (vd *)(xs + (T + 1) * 2 * MW), *Ys = pxs + (T + 1) * 2; /* (64-byte lines: MW, W multiples of 8) */
    memset(g, 0, sizeof(double) * (size_t)npar);
    const int64_t b = it.b, h0 = it.h0, w = it.w;
    for (int64_t n = 0; n < M; n++)
        for (int64_t c = 0; c < W; c++) {
            const int64_t at = ((b * H + h0 + c) * M + n) * 2;
            lr_[n * W + c] = G->gxL != NULL && c < w ? (double)G->gxL[at] : 0.0;
            li_[n * W + c] = G->gxL != NULL && c < w ? (double)G->gxL[at + 1] : 0.0;
        }
    vd gdt = {0}, gD = {0};
    for (int64_t k = K - 1; k >= 0; k--) {
        const int64_t t0 = k * T, nt = L - t0 < T ? L - t0 : T;
        move_ckpt(&it, M, H, K, k, xs, xs + MW, (double *)G->ck, 0);
        inner_p(&it, M, xs, xs + MW, pxs, r);
        for (int64_t i = 0; i < nt; i++) {
            const vd q = 2.0 / (G->tau[b * L + t0 + i] * it.dt);
            const vd u2 = 2.0 * row_of(G->u + (b * L + t0 + i) * H + h0, w, 0.0);
            double *x = xs + i * 2 * MW, *xn = x + 2 * MW;
            pxs[(i + 1) * 2] = pxs[i * 2], pxs[(i + 1) * 2 + 1] = pxs[i * 2 + 1];
            step_rank(&it, M, q, u2, x, x + MW, xn, xn + MW, rr, ri, pxs + (i + 1) * 2, Ys + i * 4, r);
        }
        for (int64_t i = nt - 1; i >= 0; i--) {
            const int64_t t = t0 + i;
            const double s = G->tau[b * L + t];
            const vd q = 2.0 / (s * it.dt);
            const vd uv = row_of(G->u + (b * L + t) * H + h0, w, 0.0);
            const vd gyv = row_of(G->gy + (b * L + t) * H + h0, w, 0.0);
            const double *x = xs + i * 2 * MW, *xn = x + 2 * MW;
            vd gub = {0};
            const vd gq = adjoint_rank(&it, M, q, 2.0 * uv, gyv, x, x + MW, xn, xn + MW, pxs + i * 2,
                                       pxs + (i + 1) * 2, Ys + i * 4, lr_, li_, rr, ri, g, &gub, r);
            const vd gs = -0.5 * q * q * gq; /* ḡ_s, s = Δ τ */
            gdt += s * gs;
            gD += gyv * uv;
            const vd guv = 2.0 * gub + it.D * gyv;
            real *go = G->gu + (b * L + t) * H + h0;
            for (int64_t c = 0; c < w; c++) go[c] = (real)guv[c];
            if (G->gtau != NULL) {
                const vd gt = it.dt * gs;
                double sum = 0;
                for (int64_t c = 0; c < w; c++) sum += gt[c];
                G->gtau[item * L + t] = sum;
            }
        }
    }
    if (G->gx0 != NULL)
        for (int64_t n = 0; n < M; n++)
            for (int64_t c = 0; c < w; c++) {
                const int64_t at = ((b * H + h0 + c) * M + n) * 2;
                G->gx0[at] = (real)lr_[n * W + c], G->gx0[at + 1] = (real)li_[n * W + c];
            }
    const int64_t rows = 6 + 2 * r;
    for (int64_t q = 0; q < rows; q++)
        for (int64_t n = 0; n < M; n++)
            for (int64_t c = 0; c < w; c++) G->gpar[((b * rows + q) * M + n) * H + h0 + c] = g[(q * M + n) * W + c];
    for (int64_t c = 0; c < w; c++)
        G->gdd[(b * 2) * H + h0 + c] = gdt[c], G->gdd[(b * 2 + 1) * H + h0 + c] = gD[c];
    free(buf);
    return 0;
}

static int backward_item(const grads_t *G, const params_t *P, int64_t item) {
    switch (P->r) {
    case 0: return backward_rank(G, P, item, 0);
    case 1: return backward_rank(G, P, item, 1);
    default: return backward_rank(G, P, item, 2);
    }
}

/* The backward over items [item0, item1): from the forward's inputs (x0 only through the checkpoints ck, which the
 * forward wrote with the same T), ḡ_y (B, L, H) and ḡ_{x_{L-1}} (B, H, M) complex or NULL: ḡ_u (B, L, H), ḡ_{x_{-1}}
 * (B, H, M) complex (gx0 NULL: not asked), the parameters' sums per batch row gpar (B, 6 + 2r, M, H) double (rows
 * ∂Re Λ, ∂Im Λ, ∂Re B, ∂Im B, ∂Re C, ∂Im C, then ∂Re P_j, then ∂Im P_j), gdd (B, 2, H) double (∂Δ, ∂D) and, unless
 * NULL, gtau (items, L) double (each item's sum over its channels). Returns nonzero when an item could not allocate. */
int SUFFIX(id_backward)(const real *u, const double *tau, const double *lr, const double *li, const double *br,
                        const double *bi, const double *cr, const double *ci, const double *pr, const double *pi,
                        const double *dt, const real *D, const double *ck, const real *gy, const real *gxL, real *gu,
                        real *gx0, double *gpar, double *gdd, double *gtau, int64_t L, int64_t H, int64_t M,
                        int64_t r, int64_t T, int64_t item0, int64_t item1, int64_t nthreads) {
    const params_t P = {lr, li, br, bi, cr, ci, pr, pi, dt, D, L, H, M, r, T};
    const grads_t G = {u, gy, gxL, tau, ck, gu, gx0, gpar, gdd, gtau};
    int failed = 0;
    (void)nthreads;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++) failed |= backward_item(&G, &P, item);
    return failed;
}
