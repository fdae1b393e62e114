/* A bank of diagonal SISO systems sampled at irregular times (S4D arXiv 2206.11893, DSS arXiv 2203.14343) on the CPU,
 * forward and backward, with every step's coefficients formed in registers.
 *
 * Channel h, mode n, step t of batch row b, with s = τ_{b,t} (the gap in nominal periods), z = Δ_h Λ_{h,n} and w the
 * rule's input vector:
 *
 *     ZOH:      A_t = e^{s z},                  b_t = (e^{s z} − 1) w            (w = B/Λ)
 *     bilinear: A_t = (1 + s z/2) q_t,          b_t = s q_t w,  q_t = 1/(1 − s z/2)   (w = Δ B)
 *     x_t = A_t x_{t-1} + b_t u_t,              y_t = Re(Σ_n C_n x_{t,n}) + D u_t
 *
 * u, y (B, L, H) in the build's real type, τ (B, L) in double; z, w, C given as real and imaginary parts (N, H) in double;
 * x (B, H, N) complex of the real type (interleaved). All arithmetic is in double, also in the float build (the
 * coefficients of a float32 layer formed in double, as ssmkit.ops.irregular_bank does, and the state kept in double):
 * e^{sz} − 1 as expm1(s Re z) cos(s Im z) − 2 sin²(s Im z / 2) + i e^{s Re z} sin(s Im z) from expm1 and one sincos of
 * the half angle (no cancellation for small |s z|), by the vector polynomials below (a step whose half phases may
 * exceed 1.6e6 takes libm's sin and cos, lane by lane, instead of the vector sincos).
 *
 * Items are (b, block of W channels), W = one vector of doubles (8 with AVX-512, 4 with AVX2); an item keeps its N × W
 * complex states in local arrays. The forward stores the state every S steps into a checkpoint buffer when a gradient
 * will be asked for. The backward runs the spans of S steps from the last: it recomputes the span's states and
 * coefficients from its checkpoint into buffers, then runs the adjoint λ_t = ∂ℓ/∂x_t (PyTorch's convention for complex
 * gradients: ∂ℓ/∂Re + i ∂ℓ/∂Im) backwards:
 *
 *     λ_t = g_t conj(C) + conj(A_{t+1}) λ_{t+1}      (λ_{L-1} = g_{x_{L-1}} + g_{L-1} conj(C))
 *     ∂A_t = λ_t conj(x_{t-1}),  ∂b_t = λ_t u_t,  ∂C += g_t conj(x_t),  ∂u_t = Re(conj(b_t) λ_t) + D g_t,
 *     ∂D += g_t u_t,  ∂x_{-1} = conj(A_0) λ_0
 *
 * and the chain rule to z, w and s (holomorphic maps: the gradient of p = f(z) is conj(f'(z)) ∂p):
 *
 *     ZOH:      ∂w += conj(E) ∂b,  ∂A' = ∂A + conj(w) ∂b,  ∂z += s conj(A) ∂A',  ∂s += Re(conj(z A) ∂A')   (E = A − 1)
 *     bilinear: ∂w += s conj(q) ∂b,  ∂z += s conj(q²) (∂A + (s/2) conj(w) ∂b),  ∂s += Re(conj(z q²) ∂A + conj(w q²) ∂b)
 *
 * (d/dz of (1 + sz/2)/(1 − sz/2) is s q², d/ds of s q is q².) ∂z, ∂w, ∂C, ∂D sum over batch and time: an item writes
 * its batch row's partial sums for its channels (written once: the buffer needs no zeroing), summed by the caller;
 * ∂s sums over channels: an item writes its own row of partials (n_items, L), summed by the caller.
 *
 * Real modes (z, w, C all real: Mega's EMA) have their own forward and backward, ib_forward_real and
 * ib_backward_real, below: a real state and adjoint, no sines (the comment there derives their gradients).
 *
 * Gap tables. The coefficients depend on the step only through s: a row whose gaps take few distinct values s_1 … s_K
 * (samples dropped from a regular grid: τ ∈ {1, 2, 3, …}) has its K coefficient sets formed once per item, by the same
 * routine, into a table (per gap: A, aux = E or q, and b = E w or s q w, each N × W; 6 N W doubles, 3 N W for real
 * modes), and each step reads entry k_t = the index of τ_{b,t} among them:
 *
 *     x_t = A[k_t] x_{t-1} + b[k_t] u_t      (the backward's recomputation as well; its adjoint reads A[k_t], aux[k_t])
 *
 * The same values as the per-step path's, bit for bit (the same expressions on the same doubles), at a table lookup
 * instead of an expm1 and a sincos per mode and step; ∂s stays per step. The caller passes the rows' distinct gaps
 * (B, L) double, the index (B, L) int32 and each row's count K (B,), 0 for a row that forms its coefficients per step
 * (the caller's rule: ssmkit.ops.native.irregular_bank), or NULL for all rows.
 *
 * Compiled twice: as float and with -DSS_DOUBLE as double (the types of u, τ, y and the states in memory).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define W (VBYTES / 8) /* channels per item: one vector of doubles */
#define S_SPAN 64       /* steps between checkpoints: the backward's span */

#include "vmath.h"

/* b_t = E w (ZOH) or s q w (bilinear). */
static inline void input_coef(const coef_t *c, double s, vd wr, vd wi, int bilinear, vd *br, vd *bi) {
    vd er = c->xr, ei = c->xi;
    if (bilinear) er *= s, ei *= s;
    *br = er * wr - ei * wi, *bi = er * wi + ei * wr;
}

/* The rows' gap tables' inputs (header comment): gaps (B, L) double, row b's distinct gaps in its first K_b entries;
 * ix (B, L) each step's entry; count (B,) K_b, 0 where the row takes the per-step path. ix NULL: every row does. */
typedef struct {
    const double *gaps;
    const int32_t *ix;
    const int64_t *count;
} gtab_t;

/* K_b when row b takes a gap table, else 0. */
static inline int64_t table_gaps(const gtab_t *G, int64_t b) { return G->ix == NULL ? 0 : G->count[b]; }

typedef struct {
    const double *zr, *zi, *wr, *wi, *cr, *ci; /* (N, H) each */
    const real *D;                             /* (H,) or NULL */
    int64_t L, H, N, bilinear;
    gtab_t G;
} params_t;

static double max_abs(const double *v, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fabs(v[i]) > m ? fabs(v[i]) : m;
    return m;
}

/* The item's parameters: 6 arrays of N vectors (its W channels; zeros beyond the last channel, where z = 0 gives A = 1
 * and b = 0: finite). */
static void load_params(double *pv, const params_t *P, int64_t h0, int64_t w) {
    const double *src[6] = {P->zr, P->zi, P->wr, P->wi, P->cr, P->ci};
    for (int k = 0; k < 6; k++)
        for (int64_t n = 0; n < P->N; n++)
            for (int64_t c = 0; c < W; c++) pv[(k * P->N + n) * W + c] = c < w ? src[k][n * P->H + h0 + c] : 0.0;
}

static inline vd load_row(const real *p, int64_t w) {
    vd v = {0};
    for (int64_t c = 0; c < w; c++) v[c] = (double)p[c];
    return v;
}
static inline void store_row(real *p, vd v, int64_t w) {
    for (int64_t c = 0; c < w; c++) p[c] = (real)v[c];
}

/* Number of items for (B, H), and the doubles of checkpoint buffer an item uses for length L and N modes. */
int64_t SUFFIX(ib_items)(int64_t Bsz, int64_t H) { return Bsz * ((H + W - 1) / W); }
int64_t SUFFIX(ib_ckpt_size)(int64_t L, int64_t N) { return ((L + S_SPAN - 1) / S_SPAN) * 2 * N * W; }

/* Load x (B, H, N) complex of the real type, the item's columns, into xr, xi (N × W doubles); zeros when x is NULL. */
static void load_state(double *xr, double *xi, const real *x, int64_t b, int64_t h0, int64_t w, const params_t *P) {
    for (int64_t n = 0; n < P->N; n++)
        for (int64_t c = 0; c < W; c++) {
            const int64_t at = ((b * P->H + h0 + c) * P->N + n) * 2;
            xr[n * W + c] = x != NULL && c < w ? (double)x[at] : 0.0;
            xi[n * W + c] = x != NULL && c < w ? (double)x[at + 1] : 0.0;
        }
}
static void store_state(real *x, const double *xr, const double *xi, int64_t b, int64_t h0, int64_t w,
                        const params_t *P) {
    for (int64_t n = 0; n < P->N; n++)
        for (int64_t c = 0; c < w; c++) {
            const int64_t at = ((b * P->H + h0 + c) * P->N + n) * 2;
            x[at] = (real)xr[n * W + c], x[at + 1] = (real)xi[n * W + c];
        }
}

/* Row b's gap table for the item's modes (pv: load_params' arrays): per distinct gap s_k, 6 sections of N × W doubles
 * A (re, im), aux (E or q: re, im), b (re, im), formed by coefficients and input_coef as the per-step path forms
 * them (header comment). */
static void build_table(double *tab, const params_t *P, const double *pv, int64_t b, int64_t K, double zimax) {
    const int64_t N = P->N, NW = N * W;
    const int bil = (int)P->bilinear;
    for (int64_t k = 0; k < K; k++) {
        const double s = P->G.gaps[b * P->L + k];
        const int phase = phase_kind(s, zimax);
        double *tk = tab + k * 6 * NW;
        for (int64_t n = 0; n < N; n++) {
            const coef_t c = coefficients(s, vld(pv + n * W), vld(pv + (N + n) * W), bil, phase, 0);
            vd br, bi;
            input_coef(&c, s, vld(pv + (2 * N + n) * W), vld(pv + (3 * N + n) * W), bil, &br, &bi);
            vst(tk + n * W, c.Ar), vst(tk + NW + n * W, c.Ai), vst(tk + 2 * NW + n * W, c.xr);
            vst(tk + 3 * NW + n * W, c.xi), vst(tk + 4 * NW + n * W, br), vst(tk + 5 * NW + n * W, bi);
        }
    }
}

/* One step of the item's N modes from the table entry tk (x in place); returns acc + Re(Σ_n C x_t) (acc = D u: the
 * per-step path's order of the sums). */
static inline vd table_step(const double *tk, vd uv, vd acc, const double *pv, double *xr, double *xi, int64_t N) {
    const int64_t NW = N * W;
    for (int64_t n = 0; n < N; n++) {
        const vd Ar = vld(tk + n * W), Ai = vld(tk + NW + n * W);
        const vd br = vld(tk + 4 * NW + n * W), bi = vld(tk + 5 * NW + n * W);
        const vd a = vld(xr + n * W), e = vld(xi + n * W);
        const vd nr = Ar * a - Ai * e + br * uv, ni = Ar * e + Ai * a + bi * uv;
        vst(xr + n * W, nr), vst(xi + n * W, ni);
        acc += vld(pv + (4 * N + n) * W) * nr - vld(pv + (5 * N + n) * W) * ni;
    }
    return acc;
}

/* The backward's recomputation of one step from the table entry tk: xn = A x_p + b u (2 N W doubles each). */
static inline void table_states(const double *tk, vd uv, const double *xp, double *xn, int64_t N) {
    const int64_t NW = N * W;
    for (int64_t n = 0; n < N; n++) {
        const vd Ar = vld(tk + n * W), Ai = vld(tk + NW + n * W);
        const vd br = vld(tk + 4 * NW + n * W), bi = vld(tk + 5 * NW + n * W);
        const vd a = vld(xp + n * W), e = vld(xp + NW + n * W);
        vst(xn + n * W, Ar * a - Ai * e + br * uv);
        vst(xn + NW + n * W, Ar * e + Ai * a + bi * uv);
    }
}

static int forward_item(const real *u, const double *tau, const real *x0, real *y, real *xL, double *ckpt,
                        const params_t *P, int64_t item) {
    const int64_t nblk = (P->H + W - 1) / W, b = item / nblk, h0 = (item % nblk) * W, N = P->N, L = P->L, H = P->H;
    const int64_t w = H - h0 < W ? H - h0 : W, K = table_gaps(&P->G, b);
    double *buf = alloc_lines(sizeof(double) * (8 + 6 * K) * N * W);
    if (buf == NULL) return 1;
    double *pv = buf, *xr = buf + 6 * N * W, *xi = buf + 7 * N * W, *tab = buf + 8 * N * W;
    load_params(pv, P, h0, w);
    load_state(xr, xi, x0, b, h0, w, P);
    const double zimax = max_abs(pv + N * W, N * W);
    const vd Dv = P->D == NULL ? (vd){0} : load_row(P->D + h0, w);
    double *ck = ckpt == NULL ? NULL : ckpt + item * (((L + S_SPAN - 1) / S_SPAN) * 2 * N * W);
    if (K > 0) build_table(tab, P, pv, b, K, zimax);
    for (int64_t t = 0; t < L; t++) {
        if (ck != NULL && t % S_SPAN == 0) {
            memcpy(ck + (t / S_SPAN) * 2 * N * W, xr, sizeof(double) * N * W);
            memcpy(ck + (t / S_SPAN) * 2 * N * W + N * W, xi, sizeof(double) * N * W);
        }
        if (K > 0) { /* the row's gap table: entry ix[t] */
            const vd uv = load_row(u + (b * L + t) * H + h0, w);
            const vd acc = table_step(tab + (int64_t)P->G.ix[b * L + t] * 6 * N * W, uv, Dv * uv, pv, xr, xi, N);
            store_row(y + (b * L + t) * H + h0, acc, w);
            continue;
        }
        const double s = (double)tau[b * L + t];
        const int phase = phase_kind(s, zimax);
        const vd uv = load_row(u + (b * L + t) * H + h0, w);
        vd acc = Dv * uv;
        for (int64_t n = 0; n < N; n++) {
            const vd zr = vld(pv + n * W), zi = vld(pv + (N + n) * W);
            const coef_t c = coefficients(s, zr, zi, (int)P->bilinear, phase, 0);
            vd br, bi;
            input_coef(&c, s, vld(pv + (2 * N + n) * W), vld(pv + (3 * N + n) * W), (int)P->bilinear, &br, &bi);
            const vd a = vld(xr + n * W), e = vld(xi + n * W);
            const vd nr = c.Ar * a - c.Ai * e + br * uv, ni = c.Ar * e + c.Ai * a + bi * uv;
            vst(xr + n * W, nr), vst(xi + n * W, ni);
            acc += vld(pv + (4 * N + n) * W) * nr - vld(pv + (5 * N + n) * W) * ni;
        }
        store_row(y + (b * L + t) * H + h0, acc, w);
    }
    if (xL != NULL) store_state(xL, xr, xi, b, h0, w, P);
    free(buf);
    return 0;
}

int SUFFIX(ib_forward)(const real *u, const double *tau, const double *zr, const double *zi, const double *wr,
                       const double *wi, const double *cr, const double *ci, const real *D, const real *x0, real *y,
                       real *xL, double *ckpt, const double *gaps, const int32_t *gix, const int64_t *gcount,
                       int64_t L, int64_t H, int64_t N, int64_t bilinear, int64_t item0, int64_t item1,
                       int64_t nthreads) {
    const params_t P = {zr, zi, wr, wi, cr, ci, D, L, H, N, bilinear, {gaps, gix, gcount}};
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++) failed |= forward_item(u, tau, x0, y, xL, ckpt, &P, item);
    return failed;
}

/* The backward of one item. g (B, 7, N, H) double: the batch row's partial sums ∂Re z, ∂Im z, ∂Re w, ∂Im w, ∂Re C,
 * ∂Im C and ∂D (row 6's first H values); g_tau (n_items, L) double or NULL. */
static int backward_item(const real *u, const double *tau, const real *gy, const real *gx,
                         const double *ckpt, real *gu, real *gx0, double *g, double *g_tau, const params_t *P,
                         int64_t item) {
    const int64_t nblk = (P->H + W - 1) / W, b = item / nblk, h0 = (item % nblk) * W, N = P->N, L = P->L, H = P->H;
    const int64_t w = H - h0 < W ? H - h0 : W, NW = N * W, bil = P->bilinear, K = table_gaps(&P->G, b);
    /* parameters 6 NW; λ 2 NW; sums ∂z, ∂w, ∂C 6 NW; the span's states (S + 1) 2 NW; the span's coefficients S 4 NW,
     * or the row's gap table K 6 NW */
    double *buf = alloc_lines(sizeof(double) * NW * (14 + 2 * (S_SPAN + 1) + (K > 0 ? 6 * K : 4 * S_SPAN)));
    if (buf == NULL) return 1;
    double *pv = buf, *lr = buf + 6 * NW, *li = buf + 7 * NW, *sums = buf + 8 * NW, *xs = buf + 14 * NW;
    double *cs = xs + 2 * (S_SPAN + 1) * NW; /* or the table */
    memset(sums, 0, sizeof(double) * 6 * NW);
    load_params(pv, P, h0, w);
    load_state(lr, li, gx, b, h0, w, P);
    const double zimax = max_abs(pv + N * W, NW);
    if (K > 0) build_table(cs, P, pv, b, K, zimax);
    const vd Dv = P->D == NULL ? (vd){0} : load_row(P->D + h0, w);
    vd gD = {0};
    const double *ck = ckpt + item * (((L + S_SPAN - 1) / S_SPAN) * 2 * NW);
    for (int64_t t0 = (L - 1) / S_SPAN * S_SPAN; t0 >= 0; t0 -= S_SPAN) {
        const int64_t nt = L - t0 < S_SPAN ? L - t0 : S_SPAN;
        /* the span's states: xs[0] = x_{t0-1} (the checkpoint), xs[i + 1] = x_{t0+i}; coefficients cs[i] = A, aux */
        memcpy(xs, ck + (t0 / S_SPAN) * 2 * NW, sizeof(double) * 2 * NW);
        for (int64_t i = 0; i < nt && K > 0; i++) /* the states from the table's A and b */
            table_states(cs + (int64_t)P->G.ix[b * L + t0 + i] * 6 * NW, load_row(u + (b * L + t0 + i) * H + h0, w),
                         xs + i * 2 * NW, xs + (i + 1) * 2 * NW, N);
        for (int64_t i = 0; i < nt && K == 0; i++) {
            const int64_t t = t0 + i;
            const double s = (double)tau[b * L + t];
            const int phase = phase_kind(s, zimax);
            const vd uv = load_row(u + (b * L + t) * H + h0, w);
            const double *xp = xs + i * 2 * NW;
            double *xn = xs + (i + 1) * 2 * NW, *cc = cs + i * 4 * NW;
            for (int64_t n = 0; n < N; n++) {
                const coef_t c = coefficients(s, vld(pv + n * W), vld(pv + (N + n) * W), (int)bil, phase, 0);
                vd br, bi;
                input_coef(&c, s, vld(pv + (2 * N + n) * W), vld(pv + (3 * N + n) * W), (int)bil, &br, &bi);
                const vd a = vld(xp + n * W), e = vld(xp + NW + n * W);
                vst(xn + n * W, c.Ar * a - c.Ai * e + br * uv);
                vst(xn + NW + n * W, c.Ar * e + c.Ai * a + bi * uv);
                vst(cc + n * W, c.Ar), vst(cc + NW + n * W, c.Ai), vst(cc + 2 * NW + n * W, c.xr);
                vst(cc + 3 * NW + n * W, c.xi);
            }
        }
        for (int64_t i = nt - 1; i >= 0; i--) {
            const int64_t t = t0 + i;
            const double s = (double)tau[b * L + t];
            const vd uv = load_row(u + (b * L + t) * H + h0, w), gv = load_row(gy + (b * L + t) * H + h0, w);
            const double *xp = xs + i * 2 * NW, *xn = xs + (i + 1) * 2 * NW;
            const double *cc = K > 0 ? cs + (int64_t)P->G.ix[b * L + t] * 6 * NW : cs + i * 4 * NW; /* A, aux */
            vd gu_v = Dv * gv, gs = {0};
            gD += gv * uv;
            for (int64_t n = 0; n < N; n++) {
                const vd zr = vld(pv + n * W), zi = vld(pv + (N + n) * W);
                const vd wr = vld(pv + (2 * N + n) * W), wi = vld(pv + (3 * N + n) * W);
                const vd cr = vld(pv + (4 * N + n) * W), ci = vld(pv + (5 * N + n) * W);
                const vd Ar = vld(cc + n * W), Ai = vld(cc + NW + n * W);
                const vd xr_ = vld(cc + 2 * NW + n * W), xi_ = vld(cc + 3 * NW + n * W); /* E or q */
                const vd pr = vld(xp + n * W), pi = vld(xp + NW + n * W);                /* x_{t-1} */
                const vd qr = vld(xn + n * W), qi = vld(xn + NW + n * W);                /* x_t */
                const vd l_r = vld(lr + n * W) + gv * cr, l_i = vld(li + n * W) - gv * ci; /* λ_t */
                double *sm = sums + n * W;
                vst(sm + 4 * NW, vld(sm + 4 * NW) + gv * qr); /* ∂C += g conj(x_t) */
                vst(sm + 5 * NW, vld(sm + 5 * NW) - gv * qi);
                const vd dAr = l_r * pr + l_i * pi, dAi = l_i * pr - l_r * pi; /* λ conj(x_{t-1}) */
                const vd dbr = l_r * uv, dbi = l_i * uv;                        /* λ u */
                vd er = xr_, ei = xi_;
                if (bil) er *= s, ei *= s; /* b = (er + i ei) w */
                gu_v += (er * wr - ei * wi) * l_r + (er * wi + ei * wr) * l_i;
                vst(sm + 2 * NW, vld(sm + 2 * NW) + er * dbr + ei * dbi); /* ∂w += conj(aux') ∂b */
                vst(sm + 3 * NW, vld(sm + 3 * NW) + er * dbi - ei * dbr);
                if (!bil) {
                    const vd gAr = dAr + wr * dbr + wi * dbi, gAi = dAi + wr * dbi - wi * dbr; /* ∂A + conj(w) ∂b */
                    vst(sm, vld(sm) + s * (Ar * gAr + Ai * gAi));                          /* s conj(A) ∂A' */
                    vst(sm + NW, vld(sm + NW) + s * (Ar * gAi - Ai * gAr));
                    gs += (zr * Ar - zi * Ai) * gAr + (zr * Ai + zi * Ar) * gAi; /* Re(conj(z A) ∂A') */
                } else {
                    const vd q2r = xr_ * xr_ - xi_ * xi_, q2i = 2.0 * xr_ * xi_; /* q² */
                    const double hs = 0.5 * s;
                    const vd mr = dAr + hs * (wr * dbr + wi * dbi), mi = dAi + hs * (wr * dbi - wi * dbr);
                    vst(sm, vld(sm) + s * (q2r * mr + q2i * mi)); /* s conj(q²) (∂A + (s/2) conj(w) ∂b) */
                    vst(sm + NW, vld(sm + NW) + s * (q2r * mi - q2i * mr));
                    const vd zqr = zr * q2r - zi * q2i, zqi = zr * q2i + zi * q2r;
                    const vd wqr = wr * q2r - wi * q2i, wqi = wr * q2i + wi * q2r;
                    gs += zqr * dAr + zqi * dAi + wqr * dbr + wqi * dbi;
                }
                vst(lr + n * W, Ar * l_r + Ai * l_i); /* λ ← conj(A_t) λ_t */
                vst(li + n * W, Ar * l_i - Ai * l_r);
            }
            store_row(gu + (b * L + t) * H + h0, gu_v, w);
            if (g_tau != NULL) {
                double tot = 0;
                for (int64_t c = 0; c < w; c++) tot += gs[c];
                g_tau[item * L + t] = tot;
            }
        }
    }
    if (gx0 != NULL) store_state(gx0, lr, li, b, h0, w, P);
    double *gb = g + b * 7 * N * H;
    for (int k = 0; k < 6; k++)
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < w; c++) gb[(k * N + n) * H + h0 + c] = sums[(k * N + n) * W + c];
    for (int64_t c = 0; c < w; c++) gb[6 * N * H + h0 + c] = gD[c];
    free(buf);
    return 0;
}

int SUFFIX(ib_backward)(const real *u, const double *tau, const double *zr, const double *zi, const double *wr,
                        const double *wi, const double *cr, const double *ci, const real *D, const real *gy,
                        const real *gx, const double *ckpt, real *gu, real *gx0, double *g, double *g_tau,
                        const double *gaps, const int32_t *gix, const int64_t *gcount, int64_t L, int64_t H, int64_t N,
                        int64_t bilinear, int64_t item0, int64_t item1, int64_t nthreads) {
    const params_t P = {zr, zi, wr, wi, cr, ci, D, L, H, N, bilinear, {gaps, gix, gcount}};
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++)
        failed |= backward_item(u, tau, gy, gx, ckpt, gu, gx0, g, g_tau, &P, item);
    return failed;
}

/* ---- Real modes: every z, w, C real (Mega's EMA: ssmkit.layers.ema), the state, the adjoint and the gradients real.
 *
 * z, w, C (N, H) double; x (B, H, N) of the real type. The coefficients in registers without sines:
 *
 *     ZOH:      A_t = e^{s z},  E_t = e^{s z} − 1 (expm1_v: both from one polynomial),  b_t = E_t w
 *               (libm's expm1 and exp, lane by lane, for a step where some |s z| may pass expm1_v's clamp at 700)
 *     bilinear: q_t = 1/(1 − s z/2),  A_t = (1 + s z/2) q_t,  b_t = s q_t w
 *     x_t = A_t x_{t-1} + b_t u_t,  y_t = Σ_n C_n x_{t,n} + D u_t
 *
 * The backward, with λ_t = ∂ℓ/∂x_t (the complex kernel's recursion without conjugates):
 *
 *     λ_t = g_t C + A_{t+1} λ_{t+1}      (λ_{L-1} = g_{x_{L-1}} + g_{L-1} C)
 *     ∂A_t = λ_t x_{t-1},  ∂b_t = λ_t u_t,  ∂C += g_t x_t,  ∂u_t = Σ_n b_t λ_t + D g_t,  ∂D += g_t u_t,
 *     ∂x_{-1} = A_0 λ_0
 *
 * and the chain rule to z, w and s:
 *
 *     ZOH (∂A/∂z = ∂E/∂z = s A, ∂A/∂s = ∂E/∂s = z A):
 *         ∂w += E ∂b,  ∂A' = ∂A + w ∂b,  ∂z += s A ∂A',  ∂s += z A ∂A'
 *     bilinear (∂A/∂z = s q², ∂(s q)/∂z = s² q²/2, ∂A/∂s = z q², ∂(s q)/∂s = q + s q² z/2 = q²):
 *         ∂w += s q ∂b,  ∂z += s q² (∂A + (s/2) w ∂b),  ∂s += q² (z ∂A + w ∂b)
 *
 * Items, checkpoints (the state every S steps: N × W doubles per span), partial sums and threads as the complex
 * kernel's; the gradients' buffer g is (B, 4, N, H): ∂z, ∂w, ∂C and ∂D (row 3's first H values).
 */
typedef struct {
    const double *z, *w, *c; /* (N, H) each */
    const real *D;           /* (H,) or NULL */
    int64_t L, H, N, bilinear;
    gtab_t G;
} rparams_t;

int64_t SUFFIX(ib_ckpt_size_real)(int64_t L, int64_t N) { return ((L + S_SPAN - 1) / S_SPAN) * N * W; }

/* The item's parameters: z, w, C as 3 arrays of N vectors (zeros beyond the last channel: A = 1, b = 0). */
static void load_params_real(double *pv, const rparams_t *P, int64_t h0, int64_t w) {
    const double *src[3] = {P->z, P->w, P->c};
    for (int k = 0; k < 3; k++)
        for (int64_t n = 0; n < P->N; n++)
            for (int64_t c = 0; c < W; c++) pv[(k * P->N + n) * W + c] = c < w ? src[k][n * P->H + h0 + c] : 0.0;
}

/* x (B, H, N) of the real type, the item's columns, into N × W doubles (zeros when x is NULL), and back. */
static void load_state_real(double *xs, const real *x, int64_t b, int64_t h0, int64_t w, const rparams_t *P) {
    for (int64_t n = 0; n < P->N; n++)
        for (int64_t c = 0; c < W; c++)
            xs[n * W + c] = x != NULL && c < w ? (double)x[(b * P->H + h0 + c) * P->N + n] : 0.0;
}
static void store_state_real(real *x, const double *xs, int64_t b, int64_t h0, int64_t w, const rparams_t *P) {
    for (int64_t n = 0; n < P->N; n++)
        for (int64_t c = 0; c < w; c++) x[(b * P->H + h0 + c) * P->N + n] = (real)xs[n * W + c];
}

/* e^a − 1 and e^a lane by lane by libm, returned by value (vmath.h's expm1_libm writes through pointers: the vectors
 * it is handed become memory in the caller's whole loop, 5-10 % on the real forward and backward). */
__attribute__((noinline)) static vd expm1_lanes(vd a) {
    for (int c = 0; c < W; c++) a[c] = expm1(a[c]);
    return a;
}
__attribute__((noinline)) static vd exp_lanes(vd a) {
    for (int c = 0; c < W; c++) a[c] = exp(a[c]);
    return a;
}

/* A and aux (E for ZOH, q for bilinear) of a step of gap s; `wide`: some |s z| of the step may pass expm1_v's clamp
 * at 700 (vmath.h's wide_real), where libm's expm1 and exp take the step (e^{sz} overflows to inf as torch's exp). */
static inline vd coefficients_real(double s, vd z, int bilinear, int wide, vd *aux) {
    if (bilinear) {
        const vd q = 1.0 / (1.0 - (0.5 * s) * z);
        *aux = q;
        return (1.0 + (0.5 * s) * z) * q;
    }
    vd A;
    vd E = expm1_v(s * z, &A);
    if (wide) E = expm1_lanes(s * z), A = exp_lanes(s * z);
    *aux = E;
    return A;
}

/* One step of the item's N modes from x (updated in place): the read-out Σ_n C x_t (two partial sums: the adds of
 * one chain wait on each other). `bilinear` a constant at each call: one copy of the loop per rule. */
static inline vd step_real(double s, vd uv, const double *pv, double *x, int64_t N, int bilinear, int wide) {
    vd acc0 = {0}, acc1 = {0};
    for (int64_t n = 0; n < N; n++) {
        vd aux;
        const vd A = coefficients_real(s, vld(pv + n * W), bilinear, wide, &aux);
        const vd b = (bilinear ? s * aux : aux) * vld(pv + (N + n) * W);
        const vd xn = A * vld(x + n * W) + b * uv;
        vst(x + n * W, xn);
        if (n & 1)
            acc1 += vld(pv + (2 * N + n) * W) * xn;
        else
            acc0 += vld(pv + (2 * N + n) * W) * xn;
    }
    return acc0 + acc1;
}

/* Row b's gap table for real modes (the complex kernel's build_table): per distinct gap, A, aux (E or q) and the input
 * coefficient b (E w or s q w), N × W doubles each, as coefficients_real and step_real form them. */
static void build_table_real(double *tab, const rparams_t *P, const double *pv, int64_t b, int64_t K, double zmax) {
    const int64_t N = P->N, NW = N * W;
    const int bil = (int)P->bilinear;
    for (int64_t k = 0; k < K; k++) {
        const double s = P->G.gaps[b * P->L + k];
        const int wide = !bil && wide_real(s, zmax);
        double *tk = tab + k * 3 * NW;
        for (int64_t n = 0; n < N; n++) {
            vd aux;
            const vd A = coefficients_real(s, vld(pv + n * W), bil, wide, &aux);
            vst(tk + n * W, A), vst(tk + NW + n * W, aux);
            vst(tk + 2 * NW + n * W, (bil ? s * aux : aux) * vld(pv + (N + n) * W));
        }
    }
}

/* step_real from the table entry tk: x_t = A x_{t-1} + b u_t in place, the read-out Σ_n C x_t (step_real's sums). */
static inline vd table_step_real(const double *tk, vd uv, const double *pv, double *x, int64_t N) {
    const int64_t NW = N * W;
    vd acc0 = {0}, acc1 = {0};
    for (int64_t n = 0; n < N; n++) {
        const vd xn = vld(tk + n * W) * vld(x + n * W) + vld(tk + 2 * NW + n * W) * uv;
        vst(x + n * W, xn);
        if (n & 1)
            acc1 += vld(pv + (2 * N + n) * W) * xn;
        else
            acc0 += vld(pv + (2 * N + n) * W) * xn;
    }
    return acc0 + acc1;
}

static int forward_item_real(const real *u, const double *tau, const real *x0, real *y, real *xL, double *ckpt,
                             const rparams_t *P, int64_t item) {
    const int64_t nblk = (P->H + W - 1) / W, b = item / nblk, h0 = (item % nblk) * W, N = P->N, L = P->L, H = P->H;
    const int64_t w = H - h0 < W ? H - h0 : W, NW = N * W, K = table_gaps(&P->G, b);
    double *buf = alloc_lines(sizeof(double) * (4 + 3 * K) * NW);
    if (buf == NULL) return 1;
    double *pv = buf, *x = buf + 3 * NW, *tab = buf + 4 * NW;
    load_params_real(pv, P, h0, w);
    load_state_real(x, x0, b, h0, w, P);
    const vd Dv = P->D == NULL ? (vd){0} : load_row(P->D + h0, w);
    const double zmax = max_abs(pv, NW);
    double *ck = ckpt == NULL ? NULL : ckpt + item * (((L + S_SPAN - 1) / S_SPAN) * NW);
    if (K > 0) build_table_real(tab, P, pv, b, K, zmax);
    for (int64_t t = 0; t < L; t++) {
        if (ck != NULL && t % S_SPAN == 0) memcpy(ck + (t / S_SPAN) * NW, x, sizeof(double) * NW);
        const double s = (double)tau[b * L + t];
        const vd uv = load_row(u + (b * L + t) * H + h0, w);
        const vd acc = K > 0 ? table_step_real(tab + (int64_t)P->G.ix[b * L + t] * 3 * NW, uv, pv, x, N)
                       : P->bilinear ? step_real(s, uv, pv, x, N, 1, 0)
                                     : step_real(s, uv, pv, x, N, 0, wide_real(s, zmax));
        store_row(y + (b * L + t) * H + h0, acc + Dv * uv, w);
    }
    if (xL != NULL) store_state_real(xL, x, b, h0, w, P);
    free(buf);
    return 0;
}

int SUFFIX(ib_forward_real)(const real *u, const double *tau, const double *z, const double *wv, const double *c,
                            const real *D, const real *x0, real *y, real *xL, double *ckpt, const double *gaps,
                            const int32_t *gix, const int64_t *gcount, int64_t L, int64_t H, int64_t N,
                            int64_t bilinear, int64_t item0, int64_t item1, int64_t nthreads) {
    const rparams_t P = {z, wv, c, D, L, H, N, bilinear, {gaps, gix, gcount}};
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++) failed |= forward_item_real(u, tau, x0, y, xL, ckpt, &P, item);
    return failed;
}

/* A span's recomputation: the states xs[i + 1] = x_{t0+i} from xs[0] = x_{t0-1}, and each step's A and aux into cs
 * (2 NW per step). */
static inline void recompute_span_real(const real *u, const double *tau, const double *pv, double *xs, double *cs,
                                       int64_t b, int64_t h0, int64_t w, int64_t t0, int64_t nt, const rparams_t *P,
                                       int bilinear) {
    const int64_t N = P->N, NW = N * W, L = P->L, H = P->H;
    const double zmax = max_abs(pv, NW);
    for (int64_t i = 0; i < nt; i++) {
        const double s = (double)tau[b * L + t0 + i];
        const int wide = !bilinear && wide_real(s, zmax);
        const vd uv = load_row(u + (b * L + t0 + i) * H + h0, w);
        const double *xp = xs + i * NW;
        double *xn = xs + (i + 1) * NW, *cc = cs + i * 2 * NW;
        for (int64_t n = 0; n < N; n++) {
            vd aux;
            const vd A = coefficients_real(s, vld(pv + n * W), bilinear, wide, &aux);
            const vd bv = (bilinear ? s * aux : aux) * vld(pv + (N + n) * W);
            vst(xn + n * W, A * vld(xp + n * W) + bv * uv);
            vst(cc + n * W, A), vst(cc + NW + n * W, aux);
        }
    }
}

/* recompute_span_real's states from the row's gap table tab (its coefficients stay in the table). */
static void table_span_real(const real *u, const double *tab, double *xs, int64_t b, int64_t h0, int64_t w, int64_t t0,
                            int64_t nt, const rparams_t *P) {
    const int64_t N = P->N, NW = N * W, L = P->L, H = P->H;
    for (int64_t i = 0; i < nt; i++) {
        const double *tk = tab + (int64_t)P->G.ix[b * L + t0 + i] * 3 * NW;
        const vd uv = load_row(u + (b * L + t0 + i) * H + h0, w);
        const double *xp = xs + i * NW;
        double *xn = xs + (i + 1) * NW;
        for (int64_t n = 0; n < N; n++)
            vst(xn + n * W, vld(tk + n * W) * vld(xp + n * W) + vld(tk + 2 * NW + n * W) * uv);
    }
}

/* The adjoint over one step t (module comment of the real modes): λ (lam) from λ_{t+1} A_{t+1} to A_t λ_t, the sums
 * ∂z, ∂w, ∂C (sums: 3 NW) updated; returns ∂u_t's mode sum in *gu_v and ∂s_t's lanes. */
static inline vd adjoint_step_real(double s, vd uv, vd gv, const double *pv, const double *xp, const double *xn,
                                   const double *cc, double *lam, double *sums, int64_t N, int bilinear, vd *gu_v) {
    const int64_t NW = N * W;
    vd gs = {0}, gu = {0};
    for (int64_t n = 0; n < N; n++) {
        const vd z = vld(pv + n * W), wv = vld(pv + (N + n) * W), c = vld(pv + (2 * N + n) * W);
        const vd A = vld(cc + n * W), aux = vld(cc + NW + n * W); /* E or q */
        const vd l = vld(lam + n * W) + gv * c;                   /* λ_t */
        double *sm = sums + n * W;
        vst(sm + 2 * NW, vld(sm + 2 * NW) + gv * vld(xn + n * W)); /* ∂C += g x_t */
        const vd dA = l * vld(xp + n * W), db = l * uv;            /* ∂A = λ x_{t-1}, ∂b = λ u */
        const vd e = bilinear ? s * aux : aux;                     /* b = e w */
        gu += (e * wv) * l;
        vst(sm + NW, vld(sm + NW) + e * db); /* ∂w += e ∂b */
        if (!bilinear) {
            const vd gA = A * (dA + wv * db); /* A ∂A' */
            vst(sm, vld(sm) + s * gA);        /* ∂z += s A ∂A' */
            gs += z * gA;                     /* ∂s += z A ∂A' */
        } else {
            const vd q2 = aux * aux;
            vst(sm, vld(sm) + (s * q2) * (dA + (0.5 * s) * wv * db)); /* s q² (∂A + (s/2) w ∂b) */
            gs += q2 * (z * dA + wv * db);                              /* q² (z ∂A + w ∂b) */
        }
        vst(lam + n * W, A * l); /* λ ← A_t λ_t */
    }
    *gu_v += gu;
    return gs;
}

/* The backward of one item. g (B, 4, N, H) double: the batch row's partial sums ∂z, ∂w, ∂C and ∂D (row 3's first H
 * values); g_tau (n_items, L) double or NULL. */
static int backward_item_real(const real *u, const double *tau, const real *gy, const real *gx, const double *ckpt,
                              real *gu, real *gx0, double *g, double *g_tau, const rparams_t *P, int64_t item) {
    const int64_t nblk = (P->H + W - 1) / W, b = item / nblk, h0 = (item % nblk) * W, N = P->N, L = P->L, H = P->H;
    const int64_t w = H - h0 < W ? H - h0 : W, NW = N * W, K = table_gaps(&P->G, b);
    const int bil = (int)P->bilinear;
    /* parameters 3 NW; λ NW; sums ∂z, ∂w, ∂C 3 NW; the span's states (S + 1) NW; the span's coefficients S 2 NW, or
     * the row's gap table K 3 NW */
    double *buf = alloc_lines(sizeof(double) * NW * (7 + (S_SPAN + 1) + (K > 0 ? 3 * K : 2 * S_SPAN)));
    if (buf == NULL) return 1;
    double *pv = buf, *lam = buf + 3 * NW, *sums = buf + 4 * NW, *xs = buf + 7 * NW, *cs = xs + (S_SPAN + 1) * NW;
    memset(sums, 0, sizeof(double) * 3 * NW);
    load_params_real(pv, P, h0, w);
    load_state_real(lam, gx, b, h0, w, P);
    if (K > 0) build_table_real(cs, P, pv, b, K, max_abs(pv, NW)); /* cs: the table */
    const vd Dv = P->D == NULL ? (vd){0} : load_row(P->D + h0, w);
    vd gD = {0};
    const double *ck = ckpt + item * (((L + S_SPAN - 1) / S_SPAN) * NW);
    for (int64_t t0 = (L - 1) / S_SPAN * S_SPAN; t0 >= 0; t0 -= S_SPAN) {
        const int64_t nt = L - t0 < S_SPAN ? L - t0 : S_SPAN;
        memcpy(xs, ck + (t0 / S_SPAN) * NW, sizeof(double) * NW);
        if (K > 0)
            table_span_real(u, cs, xs, b, h0, w, t0, nt, P);
        else if (bil)
            recompute_span_real(u, tau, pv, xs, cs, b, h0, w, t0, nt, P, 1);
        else
            recompute_span_real(u, tau, pv, xs, cs, b, h0, w, t0, nt, P, 0);
        for (int64_t i = nt - 1; i >= 0; i--) {
            const int64_t t = t0 + i;
            const double s = (double)tau[b * L + t];
            const vd uv = load_row(u + (b * L + t) * H + h0, w), gv = load_row(gy + (b * L + t) * H + h0, w);
            const double *xp = xs + i * NW, *xn = xs + (i + 1) * NW;
            const double *cc = K > 0 ? cs + (int64_t)P->G.ix[b * L + t] * 3 * NW : cs + i * 2 * NW; /* A, aux */
            vd gu_v = Dv * gv;
            gD += gv * uv;
            const vd gs = bil ? adjoint_step_real(s, uv, gv, pv, xp, xn, cc, lam, sums, N, 1, &gu_v)
                              : adjoint_step_real(s, uv, gv, pv, xp, xn, cc, lam, sums, N, 0, &gu_v);
            store_row(gu + (b * L + t) * H + h0, gu_v, w);
            if (g_tau != NULL) {
                double tot = 0;
                for (int64_t c = 0; c < w; c++) tot += gs[c];
                g_tau[item * L + t] = tot;
            }
        }
    }
    if (gx0 != NULL) store_state_real(gx0, lam, b, h0, w, P);
    double *gb = g + b * 4 * N * H;
    for (int k = 0; k < 3; k++)
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < w; c++) gb[(k * N + n) * H + h0 + c] = sums[(k * N + n) * W + c];
    for (int64_t c = 0; c < w; c++) gb[3 * N * H + h0 + c] = gD[c];
    free(buf);
    return 0;
}

int SUFFIX(ib_backward_real)(const real *u, const double *tau, const double *z, const double *wv, const double *c,
                             const real *D, const real *gy, const real *gx, const double *ckpt, real *gu, real *gx0,
                             double *g, double *g_tau, const double *gaps, const int32_t *gix, const int64_t *gcount,
                             int64_t L, int64_t H, int64_t N, int64_t bilinear, int64_t item0, int64_t item1,
                             int64_t nthreads) {
    const rparams_t P = {z, wv, c, D, L, H, N, bilinear, {gaps, gix, gcount}};
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++)
        failed |= backward_item_real(u, tau, gy, gx, ckpt, gu, gx0, g, g_tau, &P, item);
    return failed;
}
