/* The selective scan of Mamba on the CPU, forward and backward, one pass over time per block of channels.
 *
 * "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", Gu & Dao, arXiv 2312.00752, Algorithm 2:
 *
 *     h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t,     y_t = C_t · h_t          (per channel c and state n)
 *
 * fused with what surrounds it in Mamba: Δ_t = softplus(δ_t + b_Δ) (or δ_t + b_Δ), and out_t = (y_t + D ⊙ u_t) ⊙ SiLU(z_t)
 * (D and z optional). δ, u, z, out (B, L, H); A transposed to (N, H); B_t, C_t (B, L, G, N), one pair per group of
 * P = H/G consecutive channels; h (B, H, N); b_Δ, D (H,).
 *
 * Work is split into items (b, g, block of up to VEC channels of group g); a caller thread runs items
 * [item0, item1). An item keeps its N × VEC states in a small local array (L1/L2-resident) and reads its inputs
 * once, so the (B, L, H, N) states are never written to memory. The forward stores the states at chunk starts
 * (every T steps) when asked; the backward recomputes each chunk's states from them and runs the adjoint
 *
 *     λ_t = C_t g_t + Ā_{t+1} ⊙ λ_{t+1},   ∂C_t = Σ_c g_t h_t,   ∂(Δu)_t = Σ_n B_t λ_t,   ∂B_t = Σ_c λ_t (Δu)_t,
 *     Γ_t = λ_t ⊙ Ā_t ⊙ h_{t-1} (= ∂ℓ/∂(Δ_t A)),   ∂Δ_t = Σ_n Γ_t A + ∂(Δu)_t u_t,   ∂A = Σ_{b,t} Γ_t Δ_t,
 *     ∂u_t = ∂(Δu)_t Δ_t,   ∂h_{-1} = Ā_0 ⊙ λ_0
 *
 * backwards through the chunk, where g_t = ∂ℓ/∂out_t ⊙ SiLU(z_t) is the gradient reaching y_t; then the fused parts:
 * ∂z_t = ∂ℓ/∂out_t ⊙ (y_t + D u_t) ⊙ SiLU'(z_t) (y_t recomputed from the states), ∂u_t += D g_t, ∂D = Σ g_t u_t,
 * ∂δ_t = ∂Δ_t ⊙ σ(δ_t + b_Δ) (softplus' = the logistic σ), ∂b_Δ = Σ ∂δ_t. ∂B, ∂C, ∂A, ∂D and ∂b_Δ sum over channels
 * or batch and time, so each caller thread adds into its own partial buffers, which the caller sums.
 *
 * Compiled twice: as float (exp, log1p by range reduction and polynomials, ~1 ulp; see expr, log1p_unit) and with
 * -DSS_DOUBLE as double (libm's exp and log1p). Softplus follows torch.nn.functional.softplus: x above 20 passes as x.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define VEC 64 /* channels per item: the state of an item is N × VEC values */

#include "vectors.h"

typedef struct {
    int64_t b, g, c0, w; /* batch, group, first channel, channels in the block (≤ VEC) */
} item_t;

static inline item_t item_of(int64_t item, int64_t H, int64_t G) {
    int64_t P = H / G, nblk = (P + VEC - 1) / VEC;
    item_t it;
    it.b = item / (G * nblk);
    int64_t rem = item % (G * nblk);
    it.g = rem / nblk;
    it.c0 = it.g * P + (rem % nblk) * VEC;
    it.w = (it.g + 1) * P - it.c0;
    if (it.w > VEC) it.w = VEC;
    return it;
}

/* Number of items for (B, H, G): the caller splits [0, n) among its threads. */
int64_t SUFFIX(ss_items)(int64_t Bsz, int64_t H, int64_t G) {
    int64_t P = H / G;
    return Bsz * G * ((P + VEC - 1) / VEC);
}

/* The inputs shared by the forward and the backward (pointers may be NULL where the op has no such input). */
typedef struct {
    const real *u, *delta, *bias, *At, *Bm, *Cm, *D, *z; /* (B,L,H), (B,L,H) or (B,L,R), (H,), (N,H), (B,L,G,N) x2, (H,), (B,L,H) */
    const real *Wt;                                      /* NULL, or W_Δ transposed (R, H): δ_t = W_Δ δlow_t, δlow = delta */
    int64_t softplus, L, H, G, N, T, R;
    int le88; /* Δ_t A ≤ 0 for every input (softplus Δ ≥ 0 and A ≤ 0): exp(Δ A) by expr_le88, without the upper clamp */
} inputs_t;

/* The inputs, with le88 decided from softplus and A (N × H values, read once per call). */
static inputs_t inputs_of(const real *u, const real *delta, const real *bias, const real *Wt, int64_t R,
                          const real *At, const real *Bm, const real *Cm, const real *D, const real *z, int64_t softplus,
                          int64_t L, int64_t H, int64_t G, int64_t N, int64_t T) {
    int nonpositive = 1;
    for (int64_t i = 0; i < N * H; i++) nonpositive &= At[i] <= 0; /* false for NaN */
    const inputs_t in = {u, delta, bias, At, Bm, Cm, D, z, Wt, softplus, L, H, G, N, T, Wt ? R : 0, softplus && nonpositive};
    return in;
}

/* exp(Δ A) in the scan's inner loops, from Δ and A' = the item's gathered columns of A (gather_A). Where le88 (a
 * constant in each inlined copy) holds, A' = A log2 e and exp(Δ A) = 2^(Δ A') by exp2_le0: no range-reduction products
 * and no upper clamp, 13 operations against expr's 16 (forward 104 -> 89 ms, B 8, L 4 096, H 512, N 16, one Zen 4
 * thread). The price is one more rounding in the exponent (of A log2 e; Δ A was rounded before too): it adds at most
 * |Δ A| · 2^-24 to Ā's relative error (5.2e-6 at Δ A = -87, where Ā = 1.6e-38) and 2.2e-8 to its absolute error
 * (|x| e^x 2^-24 peaks at x = -1), under half an ulp of 1. Elsewhere A' = A and e^(Δ A') by expr. */
#define EXP_DA(le88, v) ((le88) ? exp2_le0(v) : expr(v))
#define LOG2E 1.4426950408889634

/* The item's columns of A (N, H), transposed in At, into Al (N × VEC), zeros beyond w, times log2 e when le88 (A' of
 * EXP_DA): rows of At are H apart, and at H = 512 (2 KiB) the N rows of a block fall into the same few L1 sets and
 * evict each other every step. */
static inline void gather_A(real *Al, const real *At, int64_t N, int64_t H, int64_t c0, int64_t w, int le88) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < VEC; c++) {
            const double a = c < w ? At[n * H + c0 + c] : 0;
            Al[n * VEC + c] = (real)(le88 ? a * LOG2E : a);
        }
}

/* The item's columns of W_Δ (R, H), transposed in Wt, into Wl (R × VEC), zeros beyond w (rows H apart, as gather_A). */
static inline void gather_W(real *Wl, const real *Wt, int64_t R, int64_t H, int64_t c0, int64_t w) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < VEC; c++) Wl[r * VEC + c] = c < w ? Wt[r * H + c0 + c] : 0;
}

/* Prefetch the w values of a row (its 64-byte lines): rows are H apart in memory, so the hardware prefetcher, which
 * does not cross 4 KiB pages, misses one every step or two; asking PF steps ahead hides that latency. */
#define PF 8
static inline void prefetch_row(const real *p, int64_t w) {
    for (int64_t c = 0; c < w; c += 64 / (int64_t)sizeof(real)) __builtin_prefetch(p + c);
}

/* Prefetch for writing the w values of a row: the kernels write their outputs a row of w channels at a time, rows H
 * apart, and every such store missed the caches and waited for its line (read for ownership), stalling the stores
 * behind it: asked for PF steps ahead, the backward ran 9 % faster (B 8, L 4 096, H 512, N 16, one Zen 4 thread). */
static inline void prefetch_row_w(const real *p, int64_t w) {
    for (int64_t c = 0; c < w; c += 64 / (int64_t)sizeof(real)) __builtin_prefetch(p + c, 1);
}

/* The inputs of step t + PF (forward) or t - PF (backward) of an item: δ, u and z. */
static inline void prefetch_step(const inputs_t *in, int64_t b, int64_t t, int64_t c0, int64_t w) {
    if (t < 0 || t >= in->L) return;
    const int64_t row = (b * in->L + t) * in->H + c0;
    if (!in->Wt) prefetch_row(in->delta + row, w); /* δlow's rows (R values) are consecutive: the hardware's to fetch */
    prefetch_row(in->u + row, w);
    if (in->z) prefetch_row(in->z + row, w);
}

/* Δ = softplus(δ + b) (or δ + b), and Δ u, for the w channels of one row (step bt = b·L + t); sp ← softplus'(δ + b) =
 * σ(δ + b) (or 1). With W_Δ (in->Wt), δ = W_Δ δlow_bt from the item's gathered columns Wl (R × VEC, gather_W): R
 * products per channel, where the unfused op reads a row of the (B, L, H) δ that a GEMM wrote (Mamba's dt_proj, K = R:
 * a thin GEMM that ran at a fifth of the machine's GEMM rate). The options are tested outside the loops, so that each
 * loop is one straight vectorisable body (with the tests inside, gcc left the backward's copy scalar). */
static inline void row_dt(const inputs_t *in, int64_t bt, int64_t c0, int64_t w, const real *restrict Wl,
                          real *restrict d, real *restrict uu, real *restrict x, real *restrict sp) {
    const int64_t row = bt * in->H + c0;
    const real *restrict bias = in->bias ? in->bias + c0 : NULL;
    if (in->Wt) {
        const real *restrict dl = in->delta + bt * in->R;
        if (bias)
            memcpy(d, bias, sizeof(real) * w);
        else
            memset(d, 0, sizeof(real) * w);
        for (int64_t r = 0; r < in->R; r++) {
            const real v = dl[r], *restrict Wr = Wl + r * VEC;
            for (int64_t c = 0; c < w; c++) d[c] += v * Wr[c];
        }
    } else if (bias) {
        const real *restrict dl = in->delta + row;
        for (int64_t c = 0; c < w; c++) d[c] = dl[c] + bias[c];
    } else
        memcpy(d, in->delta + row, sizeof(real) * w);
    if (in->softplus && sp)
        for (int64_t c = 0; c < w; c++) {
            const real v = d[c], e = exp_neg_abs(v);
            d[c] = softplus_e(v, e), sp[c] = sigmoid_e(v, e);
        }
    else if (in->softplus)
        for (int64_t c = 0; c < w; c++) d[c] = softplus_e(d[c], exp_neg_abs(d[c]));
    else if (sp)
        for (int64_t c = 0; c < w; c++) sp[c] = 1;
    memcpy(uu, in->u + row, sizeof(real) * w);
    for (int64_t c = 0; c < w; c++) x[c] = d[c] * uu[c];
}

#if HAVE_VEC && VBYTES == 64 && !defined(SS_DOUBLE)
#include <immintrin.h>
#define HAVE_SCALEF 1 /* AVX-512, float: the full-block loops of the le88 case use exp2_le0_v */
/* exp2_le0 for a vector, with AVX-512's vrndscaleps (k = round(y)) and vscalefps (p · 2^k): 10 operations against
 * exp2_le0's 13 (the magic-number rounding, the integer exponent and its shift and product go), on the same
 * polynomial. y below -126 gives 0 (the mask of the scaling: as exp2_le0's 0 below -126.5, no subnormals; -∞ too); NaN
 * stays NaN (the comparison is "not less than", true when unordered). Garbage above 0.5, as exp2_le0. */
static inline vec_t exp2_le0_v(vec_t y) {
    const __mmask16 keep = _mm512_cmp_ps_mask((__m512)y, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
    const __m512 k = _mm512_roundscale_ps((__m512)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vec_t f = y - (vec_t)k;
    const vec_t p = EXP2_POLY(f);
    return (vec_t)_mm512_maskz_scalef_ps(keep, (__m512)p, k);
}
#define NVF (VEC / LANES) /* vectors per block of VEC channels */

/* One step of the forward for a full block in the le88 case, in vectors: h ← Ā h + x B_t, y += C_t · h over the N
 * states (h, A' of EXP_DA: N × VEC; d, x, y: VEC), with Δ, Δu and y held in registers across the states. */
static inline void forward_step_vec(int64_t N, const real *Bt, const real *Ct, const real *Ae, real *h, const real *d,
                                    const real *x, real *y) {
    vec_t dv[NVF], xv[NVF], yv[NVF];
    for (int q = 0; q < NVF; q++)
        dv[q] = *(const vec_u *)(d + q * LANES), xv[q] = *(const vec_u *)(x + q * LANES), yv[q] = *(vec_u *)(y + q * LANES);
    for (int64_t n = 0; n < N; n++) {
        const real Bn = Bt[n], Cn = Ct[n];
        for (int q = 0; q < NVF; q++) {
            const int64_t o = n * VEC + q * LANES;
            const vec_t hv = exp2_le0_v(dv[q] * *(const vec_u *)(Ae + o)) * *(vec_u *)(h + o) + xv[q] * Bn;
            *(vec_u *)(h + o) = hv;
            yv[q] += Cn * hv;
        }
    }
    for (int q = 0; q < NVF; q++) *(vec_u *)(y + q * LANES) = yv[q];
}

/* One step of the backward's recompute for a full block in the le88 case, in vectors: ab ← Ā, hn ← Ā hp + x B_t. */
static inline void recompute_step_vec(int64_t N, const real *Bt, const real *Ae, const real *hp, real *hn, real *ab,
                                      const real *d, const real *x) {
    vec_t dv[NVF], xv[NVF];
    for (int q = 0; q < NVF; q++) dv[q] = *(const vec_u *)(d + q * LANES), xv[q] = *(const vec_u *)(x + q * LANES);
    for (int64_t n = 0; n < N; n++) {
        const real Bn = Bt[n];
        for (int q = 0; q < NVF; q++) {
            const int64_t o = n * VEC + q * LANES;
            const vec_t a = exp2_le0_v(dv[q] * *(const vec_u *)(Ae + o));
            *(vec_u *)(ab + o) = a;
            *(vec_u *)(hn + o) = a * *(const vec_u *)(hp + o) + xv[q] * Bn;
        }
    }
}
#else
#define HAVE_SCALEF 0
#endif

/* The forward of one item of w channels; h (2N × VEC) is the calling thread's buffer: the states, then A's columns
 * of the item (gather_A). Inlined three times by forward_item: with w = VEC, a constant, so the channel loops compile
 * to straight vectors with no remainder or alignment code (12 % faster than one runtime-w copy at the shape),
 * once with le88 (exp(Δ A) without its upper clamp) and once without; and with w < VEC. */
static inline __attribute__((always_inline)) void forward_item_w(const inputs_t *in, item_t it, const real *h0,
                                                                 real *out, real *hL, real *ckpt, real *h,
                                                                 const int64_t w, const int le88) {
    const int64_t c0 = it.c0, L = in->L, H = in->H, G = in->G, N = in->N, T = in->T;
    const int64_t nc = (L + T - 1) / T;
    const real *Bm = in->Bm, *Cm = in->Cm, *At = in->At, *D = in->D, *z = in->z;
    real d[VEC] ALIGNED_LINE, uu[VEC] ALIGNED_LINE, x[VEC] ALIGNED_LINE, y[VEC] ALIGNED_LINE;
    gather_A(h + N * VEC, At, N, H, c0, w, le88); /* A' of EXP_DA */
    if (in->Wt) gather_W(h + 2 * N * VEC, in->Wt, in->R, H, c0, w);
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < VEC; c++) h[n * VEC + c] = (h0 && c < w) ? h0[(it.b * H + c0 + c) * N + n] : 0;
    for (int64_t t = 0; t < L; t++) {
        if (ckpt && t % T == 0) {
            real *dst = ckpt + (it.b * nc + t / T) * N * H + c0;
            for (int64_t n = 0; n < N; n++) memcpy(dst + n * H, h + n * VEC, sizeof(real) * w);
        }
        const int64_t row = (it.b * L + t) * H + c0, bc = ((it.b * L + t) * G + it.g) * N;
        prefetch_step(in, it.b, t + PF, c0, w);
        if (t + PF < L) prefetch_row_w(out + row + PF * H, w);
        row_dt(in, it.b * L + t, c0, w, h + 2 * N * VEC, d, uu, x, NULL);
        for (int64_t c = 0; c < w; c++) y[c] = D ? D[c0 + c] * uu[c] : 0;
#if HAVE_SCALEF
        if (le88 && w == VEC) /* constants in each inlined copy */
            forward_step_vec(N, Bm + bc, Cm + bc, h + N * VEC, h, d, x, y);
        else
#endif
        for (int64_t n = 0; n < N; n++) {
            const real Bn = Bm[bc + n], Cn = Cm[bc + n];
            const real *restrict An = h + (N + n) * VEC; /* A's row n, gathered (A' of EXP_DA) */
            real *restrict hn = h + n * VEC;
#pragma omp simd
            for (int64_t c = 0; c < w; c++) {
                real hv = EXP_DA(le88, d[c] * An[c]) * hn[c] + x[c] * Bn;
                hn[c] = hv;
                y[c] += Cn * hv;
            }
        }
        if (z)
            for (int64_t c = 0; c < w; c++) {
                real zz = z[row + c];
                y[c] *= zz * sigmoid_e(zz, exp_neg_abs(zz));
            }
        memcpy(out + row, y, sizeof(real) * w);
    }
    if (hL)
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < w; c++) hL[(it.b * H + c0 + c) * N + n] = h[n * VEC + c];
}

static void forward_item(const inputs_t *in, item_t it, const real *h0, real *out, real *hL, real *ckpt, real *h) {
    if (it.w == VEC && in->le88) /* the constant width (see forward_item_w) and exp(Δ A) without its upper clamp */
        forward_item_w(in, it, h0, out, hL, ckpt, h, VEC, 1);
    else if (it.w == VEC)
        forward_item_w(in, it, h0, out, hL, ckpt, h, VEC, 0);
    else
        forward_item_w(in, it, h0, out, hL, ckpt, h, it.w, 0);
}

/* Forward over items [item0, item1) on nthreads threads: out (B, L, H); the final state hL (B, H, N) and the
 * chunk-start states ckpt (B, ceil(L/T), N, H) when not NULL; h0 (B, H, N) or NULL for zeros. delta is (B, L, H), or
 * δlow (B, L, R) when Wt (W_Δ transposed, (R, H)) is not NULL. Returns 0, or 1 when out of memory. */
int SUFFIX(ss_forward)(const real *u, const real *delta, const real *bias, int64_t softplus, const real *Wt, int64_t R,
                       const real *At, const real *Bm, const real *Cm, const real *D, const real *z, const real *h0, real *out, real *hL,
                       real *ckpt, int64_t Bsz, int64_t L, int64_t H, int64_t G, int64_t N, int64_t T, int64_t item0,
                       int64_t item1, int64_t nthreads) {
    (void)Bsz;
    const inputs_t in = inputs_of(u, delta, bias, Wt, R, At, Bm, Cm, D, z, softplus, L, H, G, N, T);
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        real *h = alloc_lines(sizeof(real) * (2 * N + in.R) * VEC); /* the states, A's columns (A' of EXP_DA), W_Δ's (gather_W) */
        failed |= !h;
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = item0; item < item1; item++)
            if (h) forward_item(&in, item_of(item, H, G), h0, out, hL, ckpt, h);
        free(h);
    }
    return failed;
}

#if HAVE_VEC
#define NV (VEC / LANES) /* vectors per block of VEC channels */
/* Vectors per pass of the adjoint: its per-channel working set (three inputs and three accumulators per vector) must
 * stay in registers -- 32 with AVX-512, one pass of the whole block; 16 with AVX2, passes of PV vectors. */
#if VBYTES == 64
#define PV NV
#else
#define PV 4
#endif

/* One step of the adjoint for a full block of VEC channels, in vectors (the scalar loop of backward_item_w does the
 * same for any width): λ, ∂A (gAl) updated in place over the N states; yv, gdtu, gdA (VEC) set to y_t, ∂(Δu)_t and
 * Σ_n Γ_t A; ∂B_t and ∂C_t (N) written to gB, gC. The channels run in passes of PV vectors; the sums over channels
 * (∂B, ∂C) are kept as one vector per state (rc, rb: N rounded up to LANES), added over the passes, and summed
 * LANES states at a time by transpose_sum. hn, hp, ab: h_t, h_{t-1}, Ā_t (N × VEC); An: A's columns of the block (N × VEC, gather_A). */
static inline void adjoint_vec(int64_t N, const real *Bt, const real *Ct, const real *An, const real *hn,
                               const real *hp, const real *ab, real *lam, real *gAl, const real *g, const real *x,
                               const real *d, real *yv, real *gdtu, real *gdA, real *gB, real *gC, vec_t *rc,
                               vec_t *rb) {
    for (int p = 0; p < NV; p += PV) {
        vec_t gv[PV], xv[PV], dv[PV], yvv[PV], gtv[PV], gav[PV];
        for (int q = 0; q < PV; q++) {
            const int64_t o = (p + q) * LANES;
            gv[q] = *(const vec_u *)(g + o), xv[q] = *(const vec_u *)(x + o), dv[q] = *(const vec_u *)(d + o);
            yvv[q] = (vec_t){0}, gtv[q] = (vec_t){0}, gav[q] = (vec_t){0};
        }
        for (int64_t n = 0; n < N; n++) {
            const real Bn = Bt[n], Cn = Ct[n];
            vec_t pc = {0}, pb = {0};
            for (int q = 0; q < PV; q++) {
                const int64_t o = n * VEC + (p + q) * LANES;
                const vec_t hv = *(const vec_u *)(hn + o), av = *(const vec_u *)(ab + o);
                const vec_t l = *(vec_u *)(lam + o) + Cn * gv[q]; /* λ_t */
                pc += gv[q] * hv;
                pb += l * xv[q];
                yvv[q] += Cn * hv; /* y_t, for the gate's gradient */
                gtv[q] += Bn * l;
                const vec_t Gam = l * av * *(const vec_u *)(hp + o);
                gav[q] += Gam * *(const vec_u *)(An + n * VEC + (p + q) * LANES);
                *(vec_u *)(gAl + o) += Gam * dv[q];
                *(vec_u *)(lam + o) = av * l; /* the carry into step t-1 */
            }
            if (p == 0)
                rc[n] = pc, rb[n] = pb;
            else
                rc[n] += pc, rb[n] += pb;
        }
        for (int q = 0; q < PV; q++) {
            const int64_t o = (p + q) * LANES;
            *(vec_u *)(yv + o) = yvv[q], *(vec_u *)(gdtu + o) = gtv[q], *(vec_u *)(gdA + o) = gav[q];
        }
    }
    for (int64_t n0 = 0; n0 < N; n0 += LANES) {
        const int64_t k = N - n0 < LANES ? N - n0 : LANES;
        for (int64_t m = k; m < LANES; m++) rc[n0 + m] = (vec_t){0}, rb[n0 + m] = (vec_t){0};
        const vec_t sc = transpose_sum(rc + n0), sb = transpose_sum(rb + n0);
        for (int64_t m = 0; m < k; m++) gC[n0 + m] = sc[m], gB[n0 + m] = sb[m];
    }
}
#endif

/* The chunk buffers of one backward thread: hs[i] = the state before step t0 + i of the chunk, ab[i] = Ā of step
 * t0 + i, rows[i] = Δ, u, Δu and softplus'(δ + b) of step t0 + i (4 × VEC, side by side: arrays a multiple of
 * 4 KiB apart would share L1 sets with hs and ab; computed once, in the recompute, and read by the adjoint), lam = the adjoint carried in (Ā_{t+1} ⊙ λ_{t+1}), gAl = the item's ∂A, Al = its columns of A and Ae = A' of EXP_DA (gather_A), sums = adjoint_vec's
 * two sums over channels (2 × NP vectors, NP = N rounded up to LANES; VBYTES-aligned, on the heap: N is the caller's). */
typedef struct {
    real *hs, *ab, *rows, *lam, *gAl, *Al, *Ae, *sums;
    real *Wl, *gWl, *gdc; /* with W_Δ: the item's columns of W_Δ (gather_W) and its ∂W_Δ (R × VEC), the chunk's ∂δ (T × VEC) */
    double *tA, *tW;      /* the sums over the chunks done of gAl (S) and gWl (R × VEC), in double */
} chunk_t;

/* With W_Δ (δ = W_Δ δlow), the item's part of ∂δlow = W_Δᵀ ∂δ at step bt from ∂δ of its w channels (gd): R sums over
 * its channels into gdl (B, L, R), written once (the caller sums the channel blocks' partials). With vectors the R sums
 * go LANES at a time through transpose_sum. With dt_grad_chunk this replaces two thin GEMMs over a (B, L, H) ∂δ that
 * no longer needs writing. */
static inline void row_dt_grad(const inputs_t *in, int64_t bt, int64_t w, const real *restrict gd,
                               const real *restrict Wl, real *restrict gdl) {
    const int64_t R = in->R;
#if HAVE_VEC
    if (w == VEC) {
        vec_t gv[NV], acc[LANES];
        for (int q = 0; q < NV; q++) gv[q] = *(const vec_u *)(gd + q * LANES);
        for (int64_t r0 = 0; r0 < R; r0 += LANES) {
            const int64_t k = R - r0 < LANES ? R - r0 : LANES;
            for (int64_t m = 0; m < LANES; m++) {
                vec_t a = {0};
                if (m < k)
                    for (int q = 0; q < NV; q++) a += gv[q] * *(const vec_u *)(Wl + (r0 + m) * VEC + q * LANES);
                acc[m] = a;
            }
            const vec_t sv = transpose_sum(acc);
            for (int64_t m = 0; m < k; m++) gdl[bt * R + r0 + m] = sv[m];
        }
        return;
    }
#endif
    for (int64_t r = 0; r < R; r++) {
        real sum = 0;
        for (int64_t c = 0; c < w; c++) sum += gd[c] * Wl[r * VEC + c];
        gdl[bt * R + r] = sum;
    }
}

/* ∂W_Δ += Σ_i ∂δ_i δlow_iᵀ over the n steps of a chunk from step bt0 (gdc: their ∂δ rows, n × VEC), into the item's gWl
 * (R × VEC). With vectors, RB rows of W_Δ at a time with their RB × (VEC / LANES) accumulators in registers for the
 * whole chunk (per step and row one broadcast and NV FMAs, no loads or stores of gWl: per step, these were R · NV
 * loads, FMAs and stores). */
#if HAVE_VEC
#define RB (NV >= 8 ? 2 : 4) /* rows per pass: 16 accumulators (AVX-512 float: 4 rows × 4 vectors) */
#endif
static inline void dt_grad_chunk(const inputs_t *in, int64_t bt0, int64_t n, int64_t w, const real *restrict gdc,
                                 real *restrict gWl) {
    const int64_t R = in->R;
    const real *restrict dl = in->delta + bt0 * R;
#if HAVE_VEC
    if (w == VEC) {
        for (int64_t r0 = 0; r0 < R; r0 += RB) {
            const int64_t k = R - r0 < RB ? R - r0 : RB;
            vec_t acc[RB][NV];
            for (int m = 0; m < RB; m++)
                for (int q = 0; q < NV; q++)
                    acc[m][q] = m < k ? *(const vec_u *)(gWl + (r0 + m) * VEC + q * LANES) : (vec_t){0};
            for (int64_t i = 0; i < n; i++) {
                vec_t gv[NV];
                for (int q = 0; q < NV; q++) gv[q] = *(const vec_u *)(gdc + i * VEC + q * LANES);
                for (int m = 0; m < RB; m++) {
                    const real v = m < k ? dl[i * R + r0 + m] : 0;
                    for (int q = 0; q < NV; q++) acc[m][q] += gv[q] * v;
                }
            }
            for (int m = 0; m < k; m++)
                for (int q = 0; q < NV; q++) *(vec_u *)(gWl + (r0 + m) * VEC + q * LANES) = acc[m][q];
        }
        return;
    }
#endif
    for (int64_t r = 0; r < R; r++)
        for (int64_t i = 0; i < n; i++) {
            const real v = dl[i * R + r];
            for (int64_t c = 0; c < w; c++) gWl[r * VEC + c] += gdc[i * VEC + c] * v;
        }
}

/* The backward of one item of w channels, adding into the item's partials gB, gC, gP; inlined three times by
 * backward_item, with the constant w = VEC (22 % faster than one runtime-w copy; with and without le88) and with
 * w < VEC. Δ, u, Δu and
 * softplus' are computed once per step, in the recompute, and kept for the adjoint (a further 6 %). */
static inline __attribute__((always_inline)) void backward_item_w(const inputs_t *in, item_t it, const real *ckpt,
                                                                  const real *gout, const real *ghL, real *gdelta,
                                                                  real *gu, real *gz, real *gh0, real *gB, real *gC,
                                                                  real *gP, chunk_t buf, const int64_t w,
                                                                  const int le88) {
    const int64_t c0 = it.c0, L = in->L, H = in->H, G = in->G, N = in->N, T = in->T;
    const int64_t nc = (L + T - 1) / T, S = N * VEC;
    const real *Bm = in->Bm, *Cm = in->Cm, *At = in->At, *D = in->D, *z = in->z;
    real *hs = buf.hs, *ab = buf.ab, *lam = buf.lam, *gAl = buf.gAl;
    real g[VEC] ALIGNED_LINE, yv[VEC] ALIGNED_LINE, gdtu[VEC] ALIGNED_LINE, gdA[VEC] ALIGNED_LINE, gDl[VEC] ALIGNED_LINE,
        gbl[VEC] ALIGNED_LINE, sz[VEC] ALIGNED_LINE;
#if HAVE_VEC
    vec_t *rc = (vec_t *)buf.sums, *rb = rc + (N + LANES - 1) / LANES * LANES; /* adjoint_vec's sums over channels */
#endif
    memset(gAl, 0, sizeof(real) * S);
    gather_A(buf.Al, At, N, H, c0, w, 0);    /* A, for ∂Δ */
    gather_A(buf.Ae, At, N, H, c0, w, le88); /* A' of EXP_DA */
    if (in->Wt) gather_W(buf.Wl, in->Wt, in->R, H, c0, w), memset(buf.gWl, 0, sizeof(real) * in->R * VEC);
    for (int64_t c = 0; c < VEC; c++) gDl[c] = 0, gbl[c] = 0;
    /* ∂A, ∂D, ∂b_Δ, ∂W_Δ sum over time: each chunk's ≤ T terms in real (gAl, gDl, gbl, gWl), the chunks' partial sums in
     * double (one float running sum over all L steps drifts by ~L·eps when the terms share a sign: 1e-4 on ∂D at
     * L = 16 384 with a constant input) */
    double tD[VEC], tb[VEC];
    for (int64_t c = 0; c < VEC; c++) tD[c] = 0, tb[c] = 0;
    for (int64_t j = 0; j < S; j++) buf.tA[j] = 0;
    for (int64_t j = 0; j < in->R * VEC; j++) buf.tW[j] = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < VEC; c++) lam[n * VEC + c] = (ghL && c < w) ? ghL[(it.b * H + c0 + c) * N + n] : 0;
    for (int64_t k = nc - 1; k >= 0; k--) {
        const int64_t t0 = k * T, t1 = t0 + T < L ? t0 + T : L;
        /* 1. the chunk's states, from its start */
        const real *src = ckpt + (it.b * nc + k) * N * H + c0;
        for (int64_t n = 0; n < N; n++) memcpy(hs + n * VEC, src + n * H, sizeof(real) * w);
        for (int64_t t = t0; t < t1; t++) {
            const int64_t i = t - t0, row = (it.b * L + t) * H + c0, bc = ((it.b * L + t) * G + it.g) * N;
            prefetch_step(in, it.b, t + PF, c0, w);
            real *restrict d = buf.rows + 4 * i * VEC, *restrict x = d + 2 * VEC; /* [Δ, u, Δu, softplus'] */
            row_dt(in, it.b * L + t, c0, w, buf.Wl, d, d + VEC, x, d + 3 * VEC);
#if HAVE_SCALEF
            if (le88 && w == VEC)
                recompute_step_vec(N, Bm + bc, buf.Ae, hs + i * S, hs + (i + 1) * S, ab + i * S, d, x);
            else
#endif
            for (int64_t n = 0; n < N; n++) {
                const real Bn = Bm[bc + n];
                const real *restrict An = buf.Ae + n * VEC;
                const real *restrict hp = hs + i * S + n * VEC;
                real *restrict hn = hs + (i + 1) * S + n * VEC, *restrict abar = ab + i * S + n * VEC;
#pragma omp simd
                for (int64_t c = 0; c < w; c++) {
                    real a = EXP_DA(le88, d[c] * An[c]);
                    abar[c] = a;
                    hn[c] = a * hp[c] + x[c] * Bn;
                }
            }
        }
        /* 2. the adjoint backwards through the chunk, and the gradients */
        for (int64_t t = t1 - 1; t >= t0; t--) {
            const int64_t i = t - t0, row = (it.b * L + t) * H + c0, bc = ((it.b * L + t) * G + it.g) * N;
            if (t - PF >= t0) prefetch_row(gout + row - PF * H, w);
            if (t - PF >= 0) { /* this step's outputs, PF steps ahead */
                prefetch_row_w(gu + row - PF * H, w);
                if (!in->Wt) prefetch_row_w(gdelta + row - PF * H, w);
                if (z) prefetch_row_w(gz + row - PF * H, w);
            }
            const real *restrict d = buf.rows + 4 * i * VEC, *restrict uu = d + VEC, *restrict x = d + 2 * VEC,
                                 *restrict sp = d + 3 * VEC; /* this step's Δ, u, Δu, softplus', from the recompute */
            for (int64_t c = 0; c < w; c++) g[c] = gout[row + c], gdtu[c] = 0, gdA[c] = 0, yv[c] = 0;
            if (z)
                for (int64_t c = 0; c < w; c++) { /* the gradient reaching y_t; σ(z) kept for SiLU' */
                    const real zz = z[row + c];
                    sz[c] = sigmoid_e(zz, exp_neg_abs(zz));
                    g[c] *= zz * sz[c];
                }
#if HAVE_VEC
            if (w == VEC) /* a constant in each inlined copy */
                adjoint_vec(N, Bm + bc, Cm + bc, buf.Al, hs + (i + 1) * S, hs + i * S, ab + i * S, lam, gAl, g, x, d,
                            yv, gdtu, gdA, gB + bc, gC + bc, rc, rb);
            else
#endif
            for (int64_t n = 0; n < N; n++) {
                const real Bn = Bm[bc + n], Cn = Cm[bc + n];
                const real *restrict An = buf.Al + n * VEC;
                const real *restrict hn = hs + (i + 1) * S + n * VEC, *restrict hp = hs + i * S + n * VEC;
                const real *restrict abar = ab + i * S + n * VEC;
                real *restrict ln = lam + n * VEC, *restrict gan = gAl + n * VEC;
                real sC = 0, sB = 0;
#pragma omp simd reduction(+ : sC, sB)
                for (int64_t c = 0; c < w; c++) {
                    real l = ln[c] + Cn * g[c]; /* λ_t */
                    sC += g[c] * hn[c];
                    sB += l * x[c];
                    yv[c] += Cn * hn[c]; /* y_t, for the gate's gradient */
                    gdtu[c] += Bn * l;
                    real Gam = l * abar[c] * hp[c];
                    gdA[c] += Gam * An[c];
                    gan[c] += Gam * d[c];
                    ln[c] = abar[c] * l; /* the carry into step t-1 */
                }
                gC[bc + n] = sC;
                gB[bc + n] = sB;
            }
            if (z)
                for (int64_t c = 0; c < w; c++) {
                    real zz = z[row + c], s = sz[c], Dc = D ? D[c0 + c] : 0;
                    gz[row + c] = gout[row + c] * (yv[c] + Dc * uu[c]) * s * (1 + zz * (1 - s)); /* SiLU' */
                }
            real *restrict gdr = in->Wt ? buf.gdc + i * VEC : gdelta + row; /* ∂δ: to memory, or on to W_Δ's gradients */
            for (int64_t c = 0; c < w; c++) {
                const real Dc = D ? D[c0 + c] : 0;
                gDl[c] += g[c] * uu[c];
                gu[row + c] = gdtu[c] * d[c] + g[c] * Dc;
                real gd = (gdA[c] + gdtu[c] * uu[c]) * sp[c]; /* ∂Δ (Σ_n Γ A + ∂(Δu) u) through softplus */
                gdr[c] = gd;
                gbl[c] += gd;
            }
            if (in->Wt) row_dt_grad(in, it.b * L + t, w, gdr, buf.Wl, gdelta);
        }
        if (in->Wt) dt_grad_chunk(in, it.b * L + t0, t1 - t0, w, buf.gdc, buf.gWl);
        /* 3. the chunk's partial sums into the double totals */
        for (int64_t j = 0; j < S; j++) buf.tA[j] += gAl[j], gAl[j] = 0;
        for (int64_t c = 0; c < VEC; c++) tD[c] += gDl[c], tb[c] += gbl[c], gDl[c] = 0, gbl[c] = 0;
        for (int64_t j = 0; j < in->R * VEC; j++) buf.tW[j] += buf.gWl[j], buf.gWl[j] = 0;
    }
    if (gh0)
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < w; c++) gh0[(it.b * H + c0 + c) * N + n] = lam[n * VEC + c];
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < w; c++) gP[n * H + c0 + c] += (real)buf.tA[n * VEC + c];
    for (int64_t c = 0; c < w; c++) gP[N * H + c0 + c] += (real)tD[c], gP[(N + 1) * H + c0 + c] += (real)tb[c];
    for (int64_t r = 0; r < in->R; r++)
        for (int64_t c = 0; c < w; c++) gP[(N + 2 + r) * H + c0 + c] += (real)buf.tW[r * VEC + c];
}

static void backward_item(const inputs_t *in, item_t it, const real *ckpt, const real *gout, const real *ghL,
                          real *gdelta, real *gu, real *gz, real *gh0, real *gB, real *gC, real *gP, chunk_t buf) {
    if (it.w == VEC && in->le88)
        backward_item_w(in, it, ckpt, gout, ghL, gdelta, gu, gz, gh0, gB, gC, gP, buf, VEC, 1);
    else if (it.w == VEC)
        backward_item_w(in, it, ckpt, gout, ghL, gdelta, gu, gz, gh0, gB, gC, gP, buf, VEC, 0);
    else
        backward_item_w(in, it, ckpt, gout, ghL, gdelta, gu, gz, gh0, gB, gC, gP, buf, it.w, 0);
}

/* Backward over items [item0, item1) on nthreads threads, from the forward's chunk-start states ckpt
 * (B, ceil(L/T), N, H), the output gradient gout (B, L, H) and the final-state gradient ghL (B, H, N) or NULL. Writes
 * gdelta, gu (B, L, H), gz (B, L, H) (when z is given) and gh0 (B, H, N) (when not NULL) for its channels, and its sums
 * into partials chosen by the item, not the thread, so that the caller's sums have a fixed order whatever the
 * scheduling: the items of channel block k (within their group) write gB, gC + k·B·L·G·N ((B, L, G, N) each; their
 * (b, g) differ, so every value is written once: the caller need not clear them), the items of batch row b add into
 * gP + b·(N+2)·H ((N + 2, H): ∂A in rows 0..N-1, ∂D in row N, ∂b_Δ in row N+1; their
 * channels differ). With W_Δ (Wt, see ss_forward) gdelta holds ∂δlow's partials instead of ∂δ: block k of group g writes
 * gdelta + (g·nblk + k)·B·L·R ((B, L, R), every value once, as gB; ∂δlow sums over all groups' channels), and gP
 * has R more rows, N+2..N+1+R: ∂W_Δ transposed (R, H).
 * Returns 0, or 1 when out of memory. */
int SUFFIX(ss_backward)(const real *u, const real *delta, const real *bias, int64_t softplus, const real *Wt, int64_t R,
                        const real *At,
                        const real *Bm, const real *Cm, const real *D, const real *z, const real *ckpt, const real *gout,
                        const real *ghL, real *gdelta, real *gu, real *gz, real *gh0, real *gB, real *gC, real *gP,
                        int64_t Bsz, int64_t L, int64_t H, int64_t G, int64_t N, int64_t T, int64_t item0,
                        int64_t item1, int64_t nthreads) {
    const inputs_t in = inputs_of(u, delta, bias, Wt, R, At, Bm, Cm, D, z, softplus, L, H, G, N, T);
    const int64_t S = N * VEC, nbc = Bsz * L * G * N, nblk = (H / G + VEC - 1) / VEC, nP = N + 2 + in.R;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        chunk_t buf = {alloc_lines(sizeof(real) * (T + 1) * S), alloc_lines(sizeof(real) * T * S),
                       alloc_lines(sizeof(real) * 4 * T * VEC), alloc_lines(sizeof(real) * S), alloc_lines(sizeof(real) * S),
                       alloc_lines(sizeof(real) * S), alloc_lines(sizeof(real) * S),
                       alloc_lines(2 * ((N + LANES - 1) / LANES * LANES) * VBYTES),
                       alloc_lines(sizeof(real) * (in.R > 0 ? in.R : 1) * VEC), alloc_lines(sizeof(real) * (in.R > 0 ? in.R : 1) * VEC),
                       alloc_lines(sizeof(real) * T * VEC), alloc_lines(sizeof(double) * S),
                       alloc_lines(sizeof(double) * (in.R > 0 ? in.R : 1) * VEC)};
        const int ok = buf.hs && buf.ab && buf.rows && buf.lam && buf.gAl && buf.Al && buf.Ae && buf.sums && buf.Wl &&
                       buf.gWl && buf.gdc && buf.tA && buf.tW;
        failed |= !ok;
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = item0; item < item1; item++)
            if (ok) {
                const item_t it = item_of(item, H, G);
                const int64_t k = item % nblk; /* the channel block within its group */
                /* ∂δlow's partial of the item's block among all G·nblk (its sum runs over every group), or ∂δ */
                real *gd = in.Wt ? gdelta + (it.g * nblk + k) * Bsz * L * in.R : gdelta;
                backward_item(&in, it, ckpt, gout, ghL, gd, gu, gz, gh0, gB + k * nbc, gC + k * nbc,
                              gP + it.b * nP * H, buf);
            }
        free(buf.hs), free(buf.ab), free(buf.rows), free(buf.lam), free(buf.gAl), free(buf.Al), free(buf.Ae);
        free(buf.sums), free(buf.Wl), free(buf.gWl), free(buf.gdc), free(buf.tA), free(buf.tW);
    }
    return failed;
}
