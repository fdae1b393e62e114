/* The diagonal LTI SSM over a sequence on the CPU, forward and backward, one pass over time per block of channels.
 *
 * Diagonal state space, recurrent view (Gu, Gupta, Goel, Ré, arXiv 2206.11893 §2), complex state:
 *
 *     x_t = Ā ⊙ x_{t-1} + B̄ u_t,     y_t = Re(Σ_n C_n x_{t,n}) + D u_t
 *
 * with u, y (B, L, H) real; Ā, B̄, C given as real and imaginary parts, each transposed to (N, H); D (H,) or NULL;
 * x (B, H, N) complex, interleaved (re, im) as torch stores complex tensors. The skip is fused.
 *
 * Work is split into items (b, block of up to VEC channels). An item keeps its N × VEC complex states in local
 * arrays and reads u once, so the (B, L, H, N) states are never written; time runs in chunks of T steps (u, y and the
 * gradients of a chunk in small row buffers), mode-major inside a chunk (MB modes at a time, their states in
 * registers).
 *
 * The backward needs no states. With w = C B̄ and the adjoints (PyTorch's convention for complex gradients:
 * ∂ℓ/∂Re + i ∂ℓ/∂Im; ā = conj(Ā))
 *
 *     μ_t = g_t + ā μ_{t+1},   ν_t = μ_{t+1} + ā ν_{t+1}     (μ_L = ν_L = 0; ν_t = Σ_{s>t} (s-t) ā^{s-t-1} g_s)
 *
 * run backwards over time, the gradients of y_t = Re(w Σ_{s≤t} Ā^{t-s} u_s) + D u_t are
 *
 *     ∂B̄ = conj(C) P,   ∂C = conj(B̄) P,   ∂Ā = conj(w) Q,   P = Σ_{b,t} u_t μ_t,   Q = Σ_{b,t} u_t ν_t,
 *     ∂u_t = Re Σ_n conj(w) μ_t + D g_t,   ∂D = Σ_{b,t} g_t u_t
 *
 * (∂C: Σ_t g_t conj(x_t) = conj(B̄) Σ_s u_s Σ_{t≥s} ā^{t-s} g_t; ∂Ā: d/dĀ of Ā^k is k Ā^{k-1}; so one pass of two
 * recurrences and three accumulations per mode and step, where recomputing the states and the adjoint λ = conj(C) μ
 * took twice as many operations and a buffer of states per chunk). An initial state x_{-1} adds
 * ∂C += conj(x_{-1}) ā μ_0, ∂Ā += conj(C x_{-1}) ν_{-1}, ∂x_{-1} = conj(C) ā μ_0 (ν_{-1} = μ_0 + ā ν_0); a gradient G
 * on the final state x_{L-1} is a second, seeded pair μ'_{L-1} = G, μ'_{t-1} = ā μ'_t, ν'_{t-1} = μ'_t + ā ν'_t, run
 * only when G is given: ∂B̄ += Σ u_t μ'_t, ∂Ā += conj(B̄) Σ u_t ν'_t + conj(x_{-1}) ν'_{-1}, ∂u_t += Re(conj(B̄) μ'_t),
 * ∂x_{-1} += μ'_{-1}. ∂Ā, ∂B̄, ∂C, ∂D sum over batch and time: an item writes its batch row's partial sums for its
 * channels (each written once, so the buffer needs no zeroing), and ds_sum_partials adds the rows in order.
 *
 * Real modes (Ā, B̄, C real) have their own entries (dsr_*, at the end of the file): the same passes, one part per value.
 *
 * Every entry takes rev: run the scan backwards in time, step t reading and writing memory row L - 1 - t (the rows of
 * a chunk -H apart), so that the anti-causal half of a two-sided layer needs no flipped copies of u and y.
 *
 * Compiled twice: as float and with -DSS_DOUBLE as double.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Channels per item: one vector of the target (common.h's VBYTES: 16 floats with AVX-512, 8 with AVX2). The item's
 * parameters (6 N VEC) and states (2 N VEC) stay in L1 for N ≤ 64. Modes advanced together: MB in the forward
 * (independent recurrences hide the FMA latency; each keeps 6 vectors live), MBB in the backward (12 each), sized to
 * the registers: 32 with AVX-512, 16 with AVX2. With 16 floats per vector on AVX2 (two registers each) the blocks
 * spilled: S4D's kernel ran ~7x the cycles of the AVX-512 build on a Zen 3 VM. */
#define VEC (VBYTES / (int)sizeof(real))
#if VBYTES == 64
#define MB 4
#define MBB 2
#else /* measured on AVX2 (Zen 3, S4D at B 8, L 4 096, H 128, N 64, one thread): forward MB = 2, 3, 4: 34-38, 29-34,
       * 26-27 ms (gcc keeps C in memory operands); backward MBB = 1, 2: 143-158, 148-178 ms */
#define MB 4
#define MBB 1
#endif

/* VEC channels as one value (GCC/clang vector extension: one register of the target), so a mode's state and
 * accumulators live in registers across time steps. */
typedef real vreal __attribute__((vector_size(VBYTES)));
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
 * beyond w; consecutive rows rs values apart (H, or -H for reversed time). */
static inline void load_rows(real *dst, const real *src, int64_t nt, int64_t rs, int64_t w) {
    if (w == VEC) {
        for (int64_t i = 0; i < nt; i++) vstore(dst + i * VEC, vload(src + i * rs));
        return;
    }
    for (int64_t i = 0; i < nt; i++)
        for (int64_t c = 0; c < VEC; c++) dst[i * VEC + c] = c < w ? src[i * rs + c] : 0;
}

/* The inverse of load_rows: w columns of each of the nt rows of src (nt, VEC) into dst (rows rs apart). */
static inline void store_rows(real *dst, const real *src, int64_t nt, int64_t rs, int64_t w) {
    if (w == VEC) {
        for (int64_t i = 0; i < nt; i++) vstore(dst + i * rs, vload(src + i * VEC));
        return;
    }
    for (int64_t i = 0; i < nt; i++) memcpy(dst + i * rs, src + i * VEC, sizeof(real) * w);
}

/* The memory row of step t of batch row b: t, or L - 1 - t when the scan runs backwards in time (rev). The rows of
 * a chunk are then rs = -H apart. */
static inline int64_t row_at(int64_t b, int64_t L, int64_t t, int64_t rev) { return b * L + (rev ? L - 1 - t : t); }

/* A backward chunk's rows of u and of the output gradient g for the item's channels (src pointers at the chunk's first
 * row and the item's first column) into ub and gb (nt, VEC), and the skip's part of the chunk: ∂u = D g into gub;
 * returns the chunk's Σ_t g u (its part of ∂D), a local sum kept in a register (accumulated through a pointer
 * instead, EMA's backward measured 10-20 % slower in three of four alternating runs). */
static inline vreal chunk_rows_and_skip(real *ub, real *gb, real *gub, vreal Dv, const real *u_rows,
                                        const real *g_rows, int64_t nt, int64_t rs, int64_t w) {
    load_rows(ub, u_rows, nt, rs, w);
    load_rows(gb, g_rows, nt, rs, w);
    vreal s = {0};
    for (int64_t i = 0; i < nt; i++) {
        const vreal g_ = vload(gb + i * VEC);
        vstore(gub + i * VEC, Dv * g_);
        s += g_ * vload(ub + i * VEC);
    }
    return s;
}

/* Move count consecutive (NP, VEC) blocks of sums, from block first of adj, into the double totals tot and zero them.
 * A sum over time runs in real within a chunk (≤ T terms) and in double over the chunks: one real running sum over
 * all L steps drifts by ~L·eps when its terms share a sign and a size (a constant input; S4D's ∂log Δ 2.5e-2 and
 * EMA's ∂α 0.40 off at L = 16 384, where the chunked path's blocked sums were 5e-4 and 8e-4). */
static inline void bank_sums(real *adj, double *tot, int64_t S, int first, int count) {
    real *src = adj + first * S;
    for (int64_t j = 0; j < count * S; j++) tot[j] += src[j], src[j] = 0;
}

/* The chunk's part of ∂D (a vector of VEC sums) added to the double total gD. */
static inline void bank_skip(double *gD, vreal chunk) {
    for (int c = 0; c < VEC; c++) gD[c] += chunk[c];
}

/* Copy the item's columns of an (N, H) array into an (NP, VEC) block, NP = N rounded up to the modes advanced together
 * (zeros beyond w and beyond N: a padded mode has Ā = B̄ = C = 0 and adds nothing). */
static void gather(real *dst, const real *src, int64_t N, int64_t NP, int64_t H, int64_t c0, int64_t w) {
    for (int64_t n = 0; n < NP; n++)
        for (int64_t c = 0; c < VEC; c++) dst[n * VEC + c] = (c < w && n < N) ? src[n * H + c0 + c] : 0;
}

/* Forward over items [item0, item1) on the calling thread: y (B, L, H); the final state xL (B, H, N, 2) when not
 * NULL; x0 (B, H, N, 2) or NULL for zeros. Time runs in chunks of T steps; inside a chunk the loop is mode-major (for
 * each n, all T steps), so a mode's parameters and state stay in registers and only u and y are read and written per
 * step. From a zero state the scan runs on x̃ = x / B̄ (x̃_t = Ā x̃_{t-1} + u_t, y_t = Re Σ_n w x̃_t, w = C B̄; x = B̄ x̃
 * at the end): 6 operations per mode and step instead of 8. Returns 0, or 1 when out of memory. */
static int forward_range(const real *u, const real *ar, const real *ai, const real *br, const real *bi, const real *cr,
                         const real *ci, const real *D, const real *x0, real *y, real *xL, int64_t Bsz,
                         int64_t L, int64_t H, int64_t N, int64_t T, int64_t rev, int64_t item0, int64_t item1) {
    (void)Bsz;
    const int64_t NP = (N + MB - 1) / MB * MB, S = NP * VEC, nblk = (H + VEC - 1) / VEC, nc = (L + T - 1) / T;
    const int64_t rs = rev ? -H : H;
    real *buf = malloc(sizeof(real) * (8 * S + 2 * T * VEC));
    if (!buf) return 1;
    real *Ar = buf, *Ai = buf + S, *Br = buf + 2 * S, *Bi = buf + 3 * S, *Cr = buf + 4 * S, *Ci = buf + 5 * S;
    real *xr = buf + 6 * S, *xi = buf + 7 * S, *ub = buf + 8 * S, *yb = ub + T * VEC; /* (T, VEC) u and y of a chunk */
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        gather(Ar, ar, N, NP, H, c0, w), gather(Ai, ai, N, NP, H, c0, w), gather(Br, br, N, NP, H, c0, w);
        gather(Bi, bi, N, NP, H, c0, w), gather(Cr, cr, N, NP, H, c0, w), gather(Ci, ci, N, NP, H, c0, w);
        vreal Dv = {0};
        for (int64_t c = 0; c < w && D; c++) Dv[c] = D[c0 + c];
        if (!x0)
            for (int64_t o = 0; o < S; o++) { /* C ← w = C B̄ for the scan of x̃ */
                const real r = Cr[o] * Br[o] - Ci[o] * Bi[o], im = Cr[o] * Bi[o] + Ci[o] * Br[o];
                Cr[o] = r, Ci[o] = im;
            }
        for (int64_t n = 0; n < NP; n++)
            for (int64_t c = 0; c < VEC; c++) {
                const real *s = x0 && c < w && n < N ? x0 + ((b * H + c0 + c) * N + n) * 2 : NULL;
                xr[n * VEC + c] = s ? s[0] : 0;
                xi[n * VEC + c] = s ? s[1] : 0;
            }
        for (int64_t k = 0; k < nc; k++) {
            const int64_t t0 = k * T, nt = (t0 + T < L ? t0 + T : L) - t0;
            load_rows(ub, u + row_at(b, L, t0, rev) * H + c0, nt, rs, w);
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
                /* Each sum is written as an accumulation, x + a·b - c·d, which gcc contracts into two FMAs, and the
                 * output sums the modes into two accumulators (Y[m % 2]; the chain of 2 MB/2 FMAs stays shorter than a
                 * step's work): 6 operations per mode and step from a zero state, where products first and a tree of
                 * sums took 8. */
                for (int64_t i = 0; i < nt && x0; i++) {
                    const vreal uu = vload(ub + i * VEC);
                    vreal Y[2] = {vload(yb + i * VEC), {0}};
                    #pragma GCC unroll 8
                    for (int m = 0; m < MB; m++) {
                        const vreal nr = b_r[m] * uu + a_r[m] * pr[m] - a_i[m] * pi[m];
                        const vreal ni = b_i[m] * uu + a_r[m] * pi[m] + a_i[m] * pr[m];
                        pr[m] = nr, pi[m] = ni;
                        Y[m % 2] = Y[m % 2] + c_r[m] * nr - c_i[m] * ni;
                    }
                    vstore(yb + i * VEC, Y[0] + Y[1]);
                }
                for (int64_t i = 0; i < nt && !x0; i++) { /* x̃: B̄ = 1, C = w */
                    const vreal uu = vload(ub + i * VEC);
                    vreal Y[2] = {vload(yb + i * VEC), {0}};
                    #pragma GCC unroll 8
                    for (int m = 0; m < MB; m++) {
                        const vreal nr = uu + a_r[m] * pr[m] - a_i[m] * pi[m];
                        const vreal ni = a_r[m] * pi[m] + a_i[m] * pr[m];
                        pr[m] = nr, pi[m] = ni;
                        Y[m % 2] = Y[m % 2] + c_r[m] * nr - c_i[m] * ni;
                    }
                    vstore(yb + i * VEC, Y[0] + Y[1]);
                }
                #pragma GCC unroll 8
                for (int m = 0; m < MB; m++) vstore(xr + (n0 + m) * VEC, pr[m]), vstore(xi + (n0 + m) * VEC, pi[m]);
            }
            store_rows(y + row_at(b, L, t0, rev) * H + c0, yb, nt, rs, w);
        }
        if (xL)
            for (int64_t n = 0; n < N; n++)
                for (int64_t c = 0; c < w; c++) {
                    real *d = xL + ((b * H + c0 + c) * N + n) * 2;
                    const real pr = xr[n * VEC + c], pi = xi[n * VEC + c], b_r = Br[n * VEC + c], b_i = Bi[n * VEC + c];
                    if (x0)
                        d[0] = pr, d[1] = pi;
                    else /* x = B̄ x̃ */
                        d[0] = b_r * pr - b_i * pi, d[1] = b_r * pi + b_i * pr;
                }
    }
    free(buf);
    return 0;
}

/* The per-mode vectors of one adjoint pair (μ, ν) and its sums (P, Q), real and imaginary parts: 8 (NP, VEC) blocks. */
enum { MR, MI, NR, NI, PR, PI, QR, QI, NADJ };

/* Steps [i0 - nt + 1 .. i0] of the chunk, backwards, for the modes [n0, n0 + MBB) of the pair at adj: ν ← μ + ā ν,
 * μ ← g + ā μ (g = the chunk's gb; none when gb is NULL: the seeded pair, whose μ starts at G and which adds before it
 * advances), P += u μ, Q += u ν, and ∂u += Re(conj(v) μ) into gub (v = w for the g-driven pair, B̄ for the seeded). */
static inline void adjoint_steps(real *adj, int64_t S, int64_t n0, const real *Ar, const real *Ai, const real *Vr,
                                 const real *Vi, const real *ub, const real *gb, real *gub, int64_t nt) {
    vreal a_r[MBB], a_i[MBB], v_r[MBB], v_i[MBB], mr[MBB], mi[MBB], nr[MBB], ni[MBB], pr[MBB], pi[MBB], qr[MBB], qi[MBB];
    #pragma GCC unroll 8
    for (int m = 0; m < MBB; m++) {
        const int64_t o = (n0 + m) * VEC;
        a_r[m] = vload(Ar + o), a_i[m] = vload(Ai + o), v_r[m] = vload(Vr + o), v_i[m] = vload(Vi + o);
        mr[m] = vload(adj + MR * S + o), mi[m] = vload(adj + MI * S + o), nr[m] = vload(adj + NR * S + o);
        ni[m] = vload(adj + NI * S + o), pr[m] = vload(adj + PR * S + o), pi[m] = vload(adj + PI * S + o);
        qr[m] = vload(adj + QR * S + o), qi[m] = vload(adj + QI * S + o);
    }
    /* Two loops rather than a test inside one: with the test in the loop, gcc shared the products of both branches
     * and formed g + ā μ as a product and two adds instead of two FMAs. ∂u accumulates mode by mode (two FMAs each)
     * rather than as products and a sum: 28 vector operations per step for MBB = 2 modes, where the first form took
     * 36. */
    if (gb) {
        for (int64_t i = nt - 1; i >= 0; i--) {
            const vreal uu = vload(ub + i * VEC), gg = vload(gb + i * VEC);
            vreal G = vload(gub + i * VEC);
            #pragma GCC unroll 8
            for (int m = 0; m < MBB; m++) {
                const vreal n_r = mr[m] + a_r[m] * nr[m] + a_i[m] * ni[m], n_i = mi[m] + a_r[m] * ni[m] - a_i[m] * nr[m];
                const vreal m_r = gg + a_r[m] * mr[m] + a_i[m] * mi[m], m_i = a_r[m] * mi[m] - a_i[m] * mr[m];
                nr[m] = n_r, ni[m] = n_i, mr[m] = m_r, mi[m] = m_i;
                pr[m] += uu * m_r, pi[m] += uu * m_i, qr[m] += uu * n_r, qi[m] += uu * n_i;
                G = G + v_r[m] * m_r + v_i[m] * m_i;
            }
            vstore(gub + i * VEC, G);
        }
    } else {
        for (int64_t i = nt - 1; i >= 0; i--) {
            const vreal uu = vload(ub + i * VEC);
            vreal G = vload(gub + i * VEC);
            #pragma GCC unroll 8
            for (int m = 0; m < MBB; m++) {
                pr[m] += uu * mr[m], pi[m] += uu * mi[m], qr[m] += uu * nr[m], qi[m] += uu * ni[m];
                G = G + v_r[m] * mr[m] + v_i[m] * mi[m];
                const vreal n_r = mr[m] + a_r[m] * nr[m] + a_i[m] * ni[m], n_i = mi[m] + a_r[m] * ni[m] - a_i[m] * nr[m];
                const vreal m_r = a_r[m] * mr[m] + a_i[m] * mi[m], m_i = a_r[m] * mi[m] - a_i[m] * mr[m];
                nr[m] = n_r, ni[m] = n_i, mr[m] = m_r, mi[m] = m_i;
            }
            vstore(gub + i * VEC, G);
        }
    }
    #pragma GCC unroll 8
    for (int m = 0; m < MBB; m++) {
        const int64_t o = (n0 + m) * VEC;
        vstore(adj + MR * S + o, mr[m]), vstore(adj + MI * S + o, mi[m]), vstore(adj + NR * S + o, nr[m]);
        vstore(adj + NI * S + o, ni[m]), vstore(adj + PR * S + o, pr[m]), vstore(adj + PI * S + o, pi[m]);
        vstore(adj + QR * S + o, qr[m]), vstore(adj + QI * S + o, qi[m]);
    }
}

/* Backward over items [item0, item1) on the calling thread, from the output gradient gy (B, L, H), the final-state
 * gradient gxL (B, H, N, 2) or NULL and the initial state x0 (B, H, N, 2) or NULL. Writes gu (B, L, H) and gx0
 * (B, H, N, 2) (when not NULL) for its channels, and its batch row's partial sums g (7, N, H) for its channels: ∂Ā
 * re/im, ∂B̄ re/im, ∂C re/im, then ∂D in row 6 (its first H values; the rest of row 6 is left unwritten).
 * Mode-major inside each chunk, as the forward. Returns 0, or 1 when out of memory. */
static int backward_range(const real *u, const real *ar, const real *ai, const real *br, const real *bi, const real *cr,
                          const real *ci, const real *D, const real *x0, const real *gy, const real *gxL, real *gu,
                          real *gx0, real *g, int64_t Bsz, int64_t L, int64_t H, int64_t N, int64_t T, int64_t rev,
                          int64_t item0, int64_t item1) {
    (void)Bsz;
    const int64_t NP = (N + MB - 1) / MB * MB, S = NP * VEC, nblk = (H + VEC - 1) / VEC, nc = (L + T - 1) / T;
    const int64_t rs = rev ? -H : H;
    real *buf = malloc(sizeof(real) * ((8 + 2 * NADJ) * S + 3 * T * VEC));
    if (!buf) return 1;
    real *Ar = buf, *Ai = buf + S, *Br = buf + 2 * S, *Bi = buf + 3 * S, *Cr = buf + 4 * S, *Ci = buf + 5 * S;
    real *Wr = buf + 6 * S, *Wi = buf + 7 * S;             /* w = C B̄ */
    real *adj = buf + 8 * S, *seed = adj + NADJ * S;       /* the g-driven pair and the seeded pair (when gxL) */
    real *ub = seed + NADJ * S, *gb = ub + T * VEC, *gub = gb + T * VEC; /* (T, VEC): u, g and ∂u of a chunk */
    double *tot = malloc(sizeof(double) * 8 * S); /* P, Q (re, im) of the pair, then of the seeded pair: bank_sums */
    if (!tot) return free(buf), 1;
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        gather(Ar, ar, N, NP, H, c0, w), gather(Ai, ai, N, NP, H, c0, w), gather(Br, br, N, NP, H, c0, w);
        gather(Bi, bi, N, NP, H, c0, w), gather(Cr, cr, N, NP, H, c0, w), gather(Ci, ci, N, NP, H, c0, w);
        for (int64_t o = 0; o < S; o++) Wr[o] = Cr[o] * Br[o] - Ci[o] * Bi[o], Wi[o] = Cr[o] * Bi[o] + Ci[o] * Br[o];
        memset(adj, 0, sizeof(real) * 2 * NADJ * S);
        if (gxL)
            for (int64_t n = 0; n < N; n++)
                for (int64_t c = 0; c < w; c++) {
                    const real *s = gxL + ((b * H + c0 + c) * N + n) * 2;
                    seed[MR * S + n * VEC + c] = s[0], seed[MI * S + n * VEC + c] = s[1];
                }
        vreal Dv = {0};
        double gD[VEC] = {0};
        for (int64_t c = 0; c < w && D; c++) Dv[c] = D[c0 + c];
        memset(tot, 0, sizeof(double) * 8 * S);
        for (int64_t k = nc - 1; k >= 0; k--) {
            const int64_t t0 = k * T, nt = (t0 + T < L ? t0 + T : L) - t0;
            bank_skip(gD, chunk_rows_and_skip(ub, gb, gub, Dv, u + row_at(b, L, t0, rev) * H + c0, gy + row_at(b, L, t0, rev) * H + c0, nt, rs, w));
            for (int64_t n0 = 0; n0 < NP; n0 += MBB) adjoint_steps(adj, S, n0, Ar, Ai, Wr, Wi, ub, gb, gub, nt);
            bank_sums(adj, tot, S, PR, 4);
            if (gxL) {
                for (int64_t n0 = 0; n0 < NP; n0 += MBB) adjoint_steps(seed, S, n0, Ar, Ai, Br, Bi, ub, NULL, gub, nt);
                bank_sums(seed, tot + 4 * S, S, PR, 4);
            }
            store_rows(gu + row_at(b, L, t0, rev) * H + c0, gub, nt, rs, w);
        }
        /* the sums into the parameters' gradients, and the initial state's terms (scalar: once per item) */
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < w; c++) {
                const int64_t o = n * VEC + c, h = (n * H) + c0 + c;
                const real a_r = Ar[o], a_i = Ai[o], b_r = Br[o], b_i = Bi[o], c_r = Cr[o], c_i = Ci[o];
                const real w_r = Wr[o], w_i = Wi[o];
                const real *A = adj;
                const real P_r = (real)tot[o], P_i = (real)tot[S + o], Q_r = (real)tot[2 * S + o];
                const real Q_i = (real)tot[3 * S + o];
                real gA_r = w_r * Q_r + w_i * Q_i, gA_i = w_r * Q_i - w_i * Q_r;       /* conj(w) Q */
                real gB_r = c_r * P_r + c_i * P_i, gB_i = c_r * P_i - c_i * P_r;       /* conj(C) P */
                real gC_r = b_r * P_r + b_i * P_i, gC_i = b_r * P_i - b_i * P_r;       /* conj(B̄) P */
                real gx_r = 0, gx_i = 0;
                const real *s0 = x0 ? x0 + ((b * H + c0 + c) * N + n) * 2 : NULL;
                if (s0) {
                    const real m_r = A[MR * S + o], m_i = A[MI * S + o], n_r = A[NR * S + o], n_i = A[NI * S + o];
                    const real e_r = a_r * m_r + a_i * m_i, e_i = a_r * m_i - a_i * m_r; /* ā μ_0 */
                    const real v_r = m_r + a_r * n_r + a_i * n_i, v_i = m_i + a_r * n_i - a_i * n_r; /* ν_{-1} */
                    const real x_r = s0[0], x_i = s0[1];
                    gC_r += x_r * e_r + x_i * e_i, gC_i += x_r * e_i - x_i * e_r;    /* conj(x_{-1}) ā μ_0 */
                    gx_r = c_r * e_r + c_i * e_i, gx_i = c_r * e_i - c_i * e_r;       /* conj(C) ā μ_0 */
                    const real k_r = c_r * x_r - c_i * x_i, k_i = c_r * x_i + c_i * x_r; /* C x_{-1} */
                    gA_r += k_r * v_r + k_i * v_i, gA_i += k_r * v_i - k_i * v_r;
                }
                if (gxL) {
                    const real *Sd = seed;
                    const real p_r = (real)tot[4 * S + o], p_i = (real)tot[5 * S + o], q_r = (real)tot[6 * S + o];
                    const real q_i = (real)tot[7 * S + o];
                    gB_r += p_r, gB_i += p_i;
                    gA_r += b_r * q_r + b_i * q_i, gA_i += b_r * q_i - b_i * q_r;     /* conj(B̄) Q' */
                    if (s0) {
                        const real x_r = s0[0], x_i = s0[1], v_r = Sd[NR * S + o], v_i = Sd[NI * S + o];
                        gA_r += x_r * v_r + x_i * v_i, gA_i += x_r * v_i - x_i * v_r; /* conj(x_{-1}) ν'_{-1} */
                        gx_r += Sd[MR * S + o], gx_i += Sd[MI * S + o];                /* μ'_{-1} */
                    }
                }
                g[h] = gA_r, g[N * H + h] = gA_i, g[2 * N * H + h] = gB_r, g[3 * N * H + h] = gB_i;
                g[4 * N * H + h] = gC_r, g[5 * N * H + h] = gC_i;
                if (gx0) {
                    real *d = gx0 + ((b * H + c0 + c) * N + n) * 2;
                    d[0] = gx_r, d[1] = gx_i;
                }
            }
        for (int64_t c = 0; c < w; c++) g[6 * N * H + c0 + c] = (real)gD[c];
    }
    free(buf), free(tot);
    return 0;
}

/* The entries: forward_range and backward_range over the items [item0, item1) on nthreads threads, one item at a
 * time; the items of batch row b write the partials g + b·7·N·H (disjoint channels; per row, not per thread, so
 * the sum of ds_sum_partials has a fixed order whatever the scheduling). Return 0, or 1 when out of memory. */
int SUFFIX(ds_forward)(const real *u, const real *ar, const real *ai, const real *br, const real *bi, const real *cr,
                       const real *ci, const real *D, const real *x0, real *y, real *xL, int64_t Bsz,
                       int64_t L, int64_t H, int64_t N, int64_t T, int64_t rev, int64_t item0, int64_t item1,
                       int64_t nthreads) {
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++)
        failed |= forward_range(u, ar, ai, br, bi, cr, ci, D, x0, y, xL, Bsz, L, H, N, T, rev, item, item + 1);
    return failed;
}

int SUFFIX(ds_backward)(const real *u, const real *ar, const real *ai, const real *br, const real *bi, const real *cr,
                        const real *ci, const real *D, const real *x0, const real *gy, const real *gxL, real *gu,
                        real *gx0, real *g, int64_t Bsz, int64_t L, int64_t H, int64_t N, int64_t T, int64_t rev,
                        int64_t item0, int64_t item1, int64_t nthreads) {
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++)
        failed |= backward_range(u, ar, ai, br, bi, cr, ci, D, x0, gy, gxL, gu, gx0, g + (item / ((H + VEC - 1) / VEC)) * 7 * N * H,
                                 Bsz, L, H, N, T, rev, item, item + 1);
    return failed;
}

/* out = Σ_b g[b] (b in order) over the first `used` entries of each row of `row` values (the rest of out set to 0),
 * on the calling thread: a few hundred thousand additions, where torch's zero fill and sum over the batch were two
 * parallel ops, each waiting for a worker beside a busy process (issue 16). */
static void sum_partials(const real *g, real *out, int64_t Bsz, int64_t row, int64_t used) {
    for (int64_t r = 0; r < used; r++) out[r] = g[r];
    for (int64_t b = 1; b < Bsz; b++) {
        const real *gb = g + b * row;
        for (int64_t r = 0; r < used; r++) out[r] += gb[r];
    }
    for (int64_t r = used; r < row; r++) out[r] = 0;
}

/* out (7, N, H) = Σ_b g[b] over the entries the complex backward's items wrote (rows 0-5, and the first H values of
 * row 6). */
void SUFFIX(ds_sum_partials)(const real *g, real *out, int64_t Bsz, int64_t H, int64_t N) {
    sum_partials(g, out, Bsz, 7 * N * H, 6 * N * H + H);
}

/* ------------------------------------------------------------------------------------------------------------------
 * Real modes (Ā, B̄, C real: Mega's EMA), the same passes with one part per value:
 *
 *     x_t = Ā x_{t-1} + B̄ u_t,   y_t = Σ_n C_n x_{t,n} + D u_t;   from a zero state x̃_t = Ā x̃_{t-1} + u_t, y_t = Σ w x̃_t
 *     μ_t = g_t + Ā μ_{t+1},  ν_t = μ_{t+1} + Ā ν_{t+1};  ∂B̄ = C P, ∂C = B̄ P, ∂Ā = w Q, ∂u_t = Σ_n w μ_t + D g_t
 *
 * (the complex formulas with every imaginary part 0): 2 operations per mode and step forward from a zero state (a
 * complex mode takes 6) and 5 backward (14). x (B, H, N), x0, xL and their gradients real; the partial sums (4, N, H)
 * per batch row: ∂Ā, ∂B̄, ∂C, then ∂D in row 3's first H values. Modes advanced together: MBR forward (3 vectors
 * live each), MBBR backward (6 each). */
#if VBYTES == 64
#define MBR 8
#define MBBR 4
#else
#define MBR 4
#define MBBR 2
#endif

static int forward_range_real(const real *u, const real *a, const real *bb, const real *cc, const real *D,
                              const real *x0, real *y, real *xL, int64_t L, int64_t H, int64_t N, int64_t T,
                              int64_t rev, int64_t item0, int64_t item1) {
    const int64_t NP = (N + MBR - 1) / MBR * MBR, S = NP * VEC, nblk = (H + VEC - 1) / VEC, nc = (L + T - 1) / T;
    const int64_t rs = rev ? -H : H;
    real *buf = malloc(sizeof(real) * (4 * S + 2 * T * VEC));
    if (!buf) return 1;
    real *Av = buf, *Bv = buf + S, *Cv = buf + 2 * S, *X = buf + 3 * S, *ub = buf + 4 * S, *yb = ub + T * VEC;
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        gather(Av, a, N, NP, H, c0, w), gather(Bv, bb, N, NP, H, c0, w), gather(Cv, cc, N, NP, H, c0, w);
        vreal Dv = {0};
        for (int64_t c = 0; c < w && D; c++) Dv[c] = D[c0 + c];
        if (!x0)
            for (int64_t o = 0; o < S; o++) Cv[o] *= Bv[o]; /* C ← w = C B̄ for the scan of x̃ */
        for (int64_t n = 0; n < NP; n++)
            for (int64_t c = 0; c < VEC; c++)
                X[n * VEC + c] = x0 && c < w && n < N ? x0[(b * H + c0 + c) * N + n] : 0;
        for (int64_t k = 0; k < nc; k++) {
            const int64_t t0 = k * T, nt = (t0 + T < L ? t0 + T : L) - t0;
            load_rows(ub, u + row_at(b, L, t0, rev) * H + c0, nt, rs, w);
            for (int64_t i = 0; i < nt; i++) vstore(yb + i * VEC, Dv * vload(ub + i * VEC));
            for (int64_t n0 = 0; n0 < NP; n0 += MBR) {
                vreal p[MBR], a_[MBR], b_[MBR], c_[MBR];
                #pragma GCC unroll 8
                for (int m = 0; m < MBR; m++) {
                    const int64_t o = (n0 + m) * VEC;
                    p[m] = vload(X + o), a_[m] = vload(Av + o), b_[m] = vload(Bv + o), c_[m] = vload(Cv + o);
                }
                for (int64_t i = 0; i < nt && x0; i++) {
                    const vreal uu = vload(ub + i * VEC);
                    vreal Y[2] = {vload(yb + i * VEC), {0}};
                    #pragma GCC unroll 8
                    for (int m = 0; m < MBR; m++) {
                        p[m] = b_[m] * uu + a_[m] * p[m];
                        Y[m % 2] = Y[m % 2] + c_[m] * p[m];
                    }
                    vstore(yb + i * VEC, Y[0] + Y[1]);
                }
                for (int64_t i = 0; i < nt && !x0; i++) { /* x̃: B̄ = 1, C = w */
                    const vreal uu = vload(ub + i * VEC);
                    vreal Y[2] = {vload(yb + i * VEC), {0}};
                    #pragma GCC unroll 8
                    for (int m = 0; m < MBR; m++) {
                        p[m] = uu + a_[m] * p[m];
                        Y[m % 2] = Y[m % 2] + c_[m] * p[m];
                    }
                    vstore(yb + i * VEC, Y[0] + Y[1]);
                }
                #pragma GCC unroll 8
                for (int m = 0; m < MBR; m++) vstore(X + (n0 + m) * VEC, p[m]);
            }
            store_rows(y + row_at(b, L, t0, rev) * H + c0, yb, nt, rs, w);
        }
        if (xL)
            for (int64_t n = 0; n < N; n++)
                for (int64_t c = 0; c < w; c++) /* x = B̄ x̃ from a zero state */
                    xL[(b * H + c0 + c) * N + n] = x0 ? X[n * VEC + c] : Bv[n * VEC + c] * X[n * VEC + c];
    }
    free(buf);
    return 0;
}

/* The per-mode vectors of one real adjoint pair (μ, ν) and its sums (P, Q): 4 (NP, VEC) blocks. */
enum { RM, RN, RP, RQ, NADJR };

/* adjoint_steps for real modes: ν ← μ + Ā ν, μ ← g + Ā μ (none when gb is NULL: the seeded pair adds before it
 * advances), P += u μ, Q += u ν, ∂u += v μ into gub (v = w for the g-driven pair, B̄ for the seeded). */
static inline void adjoint_steps_real(real *adj, int64_t S, int64_t n0, const real *Av, const real *Vv, const real *ub,
                                      const real *gb, real *gub, int64_t nt) {
    vreal a_[MBBR], v_[MBBR], mu[MBBR], nu[MBBR], P[MBBR], Q[MBBR];
    #pragma GCC unroll 8
    for (int m = 0; m < MBBR; m++) {
        const int64_t o = (n0 + m) * VEC;
        a_[m] = vload(Av + o), v_[m] = vload(Vv + o), mu[m] = vload(adj + RM * S + o), nu[m] = vload(adj + RN * S + o);
        P[m] = vload(adj + RP * S + o), Q[m] = vload(adj + RQ * S + o);
    }
    if (gb) {
        for (int64_t i = nt - 1; i >= 0; i--) {
            const vreal uu = vload(ub + i * VEC), gg = vload(gb + i * VEC);
            vreal G = vload(gub + i * VEC);
            #pragma GCC unroll 8
            for (int m = 0; m < MBBR; m++) {
                nu[m] = mu[m] + a_[m] * nu[m];
                mu[m] = gg + a_[m] * mu[m];
                P[m] += uu * mu[m], Q[m] += uu * nu[m];
                G = G + v_[m] * mu[m];
            }
            vstore(gub + i * VEC, G);
        }
    } else {
        for (int64_t i = nt - 1; i >= 0; i--) {
            const vreal uu = vload(ub + i * VEC);
            vreal G = vload(gub + i * VEC);
            #pragma GCC unroll 8
            for (int m = 0; m < MBBR; m++) {
                P[m] += uu * mu[m], Q[m] += uu * nu[m];
                G = G + v_[m] * mu[m];
                nu[m] = mu[m] + a_[m] * nu[m];
                mu[m] = a_[m] * mu[m];
            }
            vstore(gub + i * VEC, G);
        }
    }
    #pragma GCC unroll 8
    for (int m = 0; m < MBBR; m++) {
        const int64_t o = (n0 + m) * VEC;
        vstore(adj + RM * S + o, mu[m]), vstore(adj + RN * S + o, nu[m]);
        vstore(adj + RP * S + o, P[m]), vstore(adj + RQ * S + o, Q[m]);
    }
}

static int backward_range_real(const real *u, const real *a, const real *bb, const real *cc, const real *D,
                               const real *x0, const real *gy, const real *gxL, real *gu, real *gx0, real *g,
                               int64_t L, int64_t H, int64_t N, int64_t T, int64_t rev, int64_t item0, int64_t item1) {
    const int64_t NP = (N + MBBR - 1) / MBBR * MBBR, S = NP * VEC, nblk = (H + VEC - 1) / VEC, nc = (L + T - 1) / T;
    const int64_t rs = rev ? -H : H;
    real *buf = malloc(sizeof(real) * ((4 + 2 * NADJR) * S + 3 * T * VEC));
    if (!buf) return 1;
    real *Av = buf, *Bv = buf + S, *Cv = buf + 2 * S, *Wv = buf + 3 * S; /* w = C B̄ */
    real *adj = buf + 4 * S, *seed = adj + NADJR * S;
    real *ub = seed + NADJR * S, *gb = ub + T * VEC, *gub = gb + T * VEC;
    double *tot = malloc(sizeof(double) * 4 * S); /* P, Q of the pair, then of the seeded pair: bank_sums */
    if (!tot) return free(buf), 1;
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        gather(Av, a, N, NP, H, c0, w), gather(Bv, bb, N, NP, H, c0, w), gather(Cv, cc, N, NP, H, c0, w);
        for (int64_t o = 0; o < S; o++) Wv[o] = Cv[o] * Bv[o];
        memset(adj, 0, sizeof(real) * 2 * NADJR * S);
        if (gxL)
            for (int64_t n = 0; n < N; n++)
                for (int64_t c = 0; c < w; c++) seed[RM * S + n * VEC + c] = gxL[(b * H + c0 + c) * N + n];
        vreal Dv = {0};
        double gD[VEC] = {0};
        for (int64_t c = 0; c < w && D; c++) Dv[c] = D[c0 + c];
        memset(tot, 0, sizeof(double) * 4 * S);
        for (int64_t k = nc - 1; k >= 0; k--) {
            const int64_t t0 = k * T, nt = (t0 + T < L ? t0 + T : L) - t0;
            bank_skip(gD, chunk_rows_and_skip(ub, gb, gub, Dv, u + row_at(b, L, t0, rev) * H + c0, gy + row_at(b, L, t0, rev) * H + c0, nt, rs, w));
            for (int64_t n0 = 0; n0 < NP; n0 += MBBR) adjoint_steps_real(adj, S, n0, Av, Wv, ub, gb, gub, nt);
            bank_sums(adj, tot, S, RP, 2);
            if (gxL) {
                for (int64_t n0 = 0; n0 < NP; n0 += MBBR) adjoint_steps_real(seed, S, n0, Av, Bv, ub, NULL, gub, nt);
                bank_sums(seed, tot + 2 * S, S, RP, 2);
            }
            store_rows(gu + row_at(b, L, t0, rev) * H + c0, gub, nt, rs, w);
        }
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < w; c++) {
                const int64_t o = n * VEC + c, h = n * H + c0 + c;
                const real a_ = Av[o], b_ = Bv[o], c_ = Cv[o], P = (real)tot[o], Q = (real)tot[S + o];
                real gA = Wv[o] * Q, gB = c_ * P, gC = b_ * P, gx = 0;
                const real *s0 = x0 ? x0 + (b * H + c0 + c) * N + n : NULL;
                if (s0) {
                    const real mu0 = adj[RM * S + o], e = a_ * mu0, nu_ = mu0 + a_ * adj[RN * S + o]; /* Ā μ_0, ν_{-1} */
                    gC += *s0 * e, gx = c_ * e, gA += c_ * *s0 * nu_;
                }
                if (gxL) {
                    gB += (real)tot[2 * S + o], gA += b_ * (real)tot[3 * S + o];
                    if (s0) gA += *s0 * seed[RN * S + o], gx += seed[RM * S + o]; /* ν'_{-1}, μ'_{-1} */
                }
                g[h] = gA, g[N * H + h] = gB, g[2 * N * H + h] = gC;
                if (gx0) gx0[(b * H + c0 + c) * N + n] = gx;
            }
        for (int64_t c = 0; c < w; c++) g[3 * N * H + c0 + c] = (real)gD[c];
    }
    free(buf), free(tot);
    return 0;
}

/* The real entries, as ds_forward, ds_backward and ds_sum_partials (partials (4, N, H) per batch row). */
int SUFFIX(dsr_forward)(const real *u, const real *a, const real *bb, const real *cc, const real *D, const real *x0,
                        real *y, real *xL, int64_t Bsz, int64_t L, int64_t H, int64_t N, int64_t T, int64_t rev,
                        int64_t item0, int64_t item1, int64_t nthreads) {
    (void)Bsz;
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++)
        failed |= forward_range_real(u, a, bb, cc, D, x0, y, xL, L, H, N, T, rev, item, item + 1);
    return failed;
}

int SUFFIX(dsr_backward)(const real *u, const real *a, const real *bb, const real *cc, const real *D, const real *x0,
                         const real *gy, const real *gxL, real *gu, real *gx0, real *g, int64_t Bsz, int64_t L,
                         int64_t H, int64_t N, int64_t T, int64_t rev, int64_t item0, int64_t item1,
                         int64_t nthreads) {
    (void)Bsz;
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t item = item0; item < item1; item++)
        failed |= backward_range_real(u, a, bb, cc, D, x0, gy, gxL, gu, gx0, g + (item / ((H + VEC - 1) / VEC)) * 4 * N * H,
                                      L, H, N, T, rev, item, item + 1);
    return failed;
}

void SUFFIX(dsr_sum_partials)(const real *g, real *out, int64_t Bsz, int64_t H, int64_t N) {
    sum_partials(g, out, Bsz, 4 * N * H, 3 * N * H + H);
}
