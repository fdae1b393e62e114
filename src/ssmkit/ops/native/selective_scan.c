/* The selective scan of Mamba on the CPU, forward and backward, one pass over time per block of channels.
 *
 * "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", Gu & Dao, arXiv 2312.00752, Algorithm 2:
 *
 *     h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t,     y_t = C_t · h_t          (per channel c and state n)
 *
 * with Δ (already softplus'ed), u, y (B, L, H); A transposed to (N, H); B_t, C_t
 * (B, L, G, N), one pair per group of P = H/G consecutive channels; h (B, H, N). The skip D·u, the gate and Δ's
 * softplus stay in PyTorch (ssmkit/ops/native/selective.py); this file is the O(B·L·H·N) core.
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
 * backwards through the chunk. ∂B, ∂C and ∂A sum over channels (and batch), so each caller thread adds into its
 * own slice of partial buffers (thread index `part`), which the caller sums.
 *
 * Compiled twice: as float (exp by range reduction and a degree-7 polynomial, ~1 ulp; see expr) and with
 * -DSS_DOUBLE as double (libm's exp).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef SS_DOUBLE
typedef double real;
#define SUFFIX(name) name##_f64
static inline real expr(real x) { return exp(x); }
#else
typedef float real;
#define SUFFIX(name) name##_f32
/* e^x = 2^k · e^r with k = round(x / ln 2) and r = x - k ln 2 ∈ [-ln2/2, ln2/2] (Cody-Waite: ln 2 in two parts, so r
 * is exact to float32 rounding); e^r = Σ_{i≤7} r^i / i!, remainder < 6e-9. x is clamped to [-88, 88]: below, the
 * result is 0 (k = -127 gives the bit pattern of 0.0); no branches, so the loops vectorise. */
static inline real expr(real x) {
    x = x < -88.0f ? -88.0f : x;
    x = x > 88.0f ? 88.0f : x;
    int32_t k = (int32_t)(x * 1.4426950408889634f + 128.5f) - 128; /* round: truncation of a positive number */
    float kf = (float)k;
    float r = x - kf * 0.693145751953125f;   /* ln 2, high part (exact product for |k| < 2^8) */
    r = r - kf * 1.428606765330187e-06f;     /* ln 2, low part */
    float p = 1.9841269841269841e-04f;       /* 1/7! */
    p = p * r + 1.3888888888888889e-03f;     /* 1/6! */
    p = p * r + 8.3333333333333333e-03f;     /* 1/5! */
    p = p * r + 4.1666666666666667e-02f;     /* 1/4! */
    p = p * r + 1.6666666666666667e-01f;     /* 1/3! */
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t i;
        float f;
    } s = {.i = (k + 127) << 23}; /* 2^k */
    return p * s.f;
}
#endif

#define VEC 64 /* channels per item: the state of abar item is N × VEC values */

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

/* One step of the recurrence for one item: h ← Ā ⊙ h + (Δu) B_t, returns nothing; y (VEC) ← C_t · h. */
static inline void step_forward(real *restrict h, const real *restrict d, const real *restrict x,
                                const real *restrict At, const real *restrict Bt, const real *restrict Ct,
                                real *restrict y, int64_t N, int64_t H, int64_t c0, int64_t w) {
    for (int64_t c = 0; c < w; c++) y[c] = 0;
    for (int64_t n = 0; n < N; n++) {
        const real Bn = Bt[n], Cn = Ct[n];
        const real *restrict An = At + n * H + c0;
        real *restrict hn = h + n * VEC;
#pragma omp simd
        for (int64_t c = 0; c < w; c++) {
            real hv = expr(d[c] * An[c]) * hn[c] + x[c] * Bn;
            hn[c] = hv;
            y[c] += Cn * hv;
        }
    }
}

/* Forward over items [item0, item1): y (B, L, H); the final state hL (B, H, N) and the chunk-start states
 * ckpt (B, ceil(L/T), N, H) when not NULL; h0 (B, H, N) or NULL for zeros. */
void SUFFIX(ss_forward)(const real *u, const real *dt, const real *At, const real *Bm, const real *Cm,
                        const real *h0, real *y, real *hL, real *ckpt, int64_t Bsz, int64_t L, int64_t H,
                        int64_t G, int64_t N, int64_t T, int64_t item0, int64_t item1) {
    (void)Bsz;
    int64_t nc = (L + T - 1) / T;
    real *h = malloc(sizeof(real) * N * VEC);
    real d[VEC], x[VEC], yv[VEC];
    for (int64_t item = item0; item < item1; item++) {
        item_t it = item_of(item, H, G);
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < VEC; c++)
                h[n * VEC + c] = (h0 && c < it.w) ? h0[(it.b * H + it.c0 + c) * N + n] : 0;
        for (int64_t t = 0; t < L; t++) {
            if (ckpt && t % T == 0) {
                real *dst = ckpt + (it.b * nc + t / T) * N * H + it.c0;
                for (int64_t n = 0; n < N; n++) memcpy(dst + n * H, h + n * VEC, sizeof(real) * it.w);
            }
            int64_t row = (it.b * L + t) * H + it.c0;
            const real *bc = Bm + ((it.b * L + t) * G + it.g) * N, *cc = Cm + ((it.b * L + t) * G + it.g) * N;
            for (int64_t c = 0; c < it.w; c++) {
                d[c] = dt[row + c];
                x[c] = d[c] * u[row + c];
            }
            step_forward(h, d, x, At, bc, cc, yv, N, H, it.c0, it.w);
            memcpy(y + row, yv, sizeof(real) * it.w);
        }
        if (hL)
            for (int64_t n = 0; n < N; n++)
                for (int64_t c = 0; c < it.w; c++) hL[(it.b * H + it.c0 + c) * N + n] = h[n * VEC + c];
    }
    free(h);
}

/* Backward over items [item0, item1), from the forward's chunk-start states ckpt (B, ceil(L/T), N, H) and the
 * output gradient gy (B, L, H) and final-state gradient ghL (B, H, N) or NULL. Writes gdt, gu (B, L, H) and
 * gh0 (B, H, N) (when not NULL) for its channels, and adds into this thread's partials gB, gC (B, L, G, N) and
 * gA (N, H). Returns 0, or 1 when out of memory. */
int SUFFIX(ss_backward)(const real *u, const real *dt, const real *At, const real *Bm, const real *Cm,
                        const real *ckpt, const real *gy, const real *ghL, real *gdt, real *gu, real *gh0,
                        real *gB, real *gC, real *gA, int64_t Bsz, int64_t L, int64_t H, int64_t G, int64_t N,
                        int64_t T, int64_t item0, int64_t item1) {
    (void)Bsz;
    int64_t nc = (L + T - 1) / T, S = N * VEC;
    real *hs = malloc(sizeof(real) * (T + 1) * S);  /* hs[i] = the state before step t0 + i of the chunk */
    real *ab = malloc(sizeof(real) * T * S);        /* ab[i] = Ā of step t0 + i */
    real *lam = malloc(sizeof(real) * S);           /* the adjoint carried in: Ā_{t+1} ⊙ λ_{t+1} */
    real *gAl = malloc(sizeof(real) * S);
    if (!hs || !ab || !lam || !gAl) {
        free(hs), free(ab), free(lam), free(gAl);
        return 1;
    }
    real d[VEC], x[VEC], uu[VEC], g[VEC], gdtu[VEC], gdA[VEC];
    for (int64_t item = item0; item < item1; item++) {
        item_t it = item_of(item, H, G);
        const int64_t w = it.w;
        memset(gAl, 0, sizeof(real) * S);
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < VEC; c++)
                lam[n * VEC + c] = (ghL && c < w) ? ghL[(it.b * H + it.c0 + c) * N + n] : 0;
        for (int64_t k = nc - 1; k >= 0; k--) {
            int64_t t0 = k * T, t1 = t0 + T < L ? t0 + T : L;
            /* 1. the chunk's states, from its start */
            const real *src = ckpt + (it.b * nc + k) * N * H + it.c0;
            for (int64_t n = 0; n < N; n++) memcpy(hs + n * VEC, src + n * H, sizeof(real) * w);
            for (int64_t t = t0; t < t1; t++) {
                int64_t i = t - t0, row = (it.b * L + t) * H + it.c0;
                const real *bc = Bm + ((it.b * L + t) * G + it.g) * N;
                for (int64_t c = 0; c < w; c++) {
                    d[c] = dt[row + c];
                    x[c] = d[c] * u[row + c];
                }
                for (int64_t n = 0; n < N; n++) {
                    const real Bn = bc[n];
                    const real *restrict An = At + n * H + it.c0;
                    const real *restrict hp = hs + i * S + n * VEC;
                    real *restrict hn = hs + (i + 1) * S + n * VEC, *restrict abar = ab + i * S + n * VEC;
#pragma omp simd
                    for (int64_t c = 0; c < w; c++) {
                        real a = expr(d[c] * An[c]);
                        abar[c] = a;
                        hn[c] = a * hp[c] + x[c] * Bn;
                    }
                }
            }
            /* 2. the adjoint backwards through the chunk, and the gradients */
            for (int64_t t = t1 - 1; t >= t0; t--) {
                int64_t i = t - t0, row = (it.b * L + t) * H + it.c0;
                int64_t bcrow = ((it.b * L + t) * G + it.g) * N;
                const real *bc = Bm + bcrow, *cc = Cm + bcrow;
                real *gBt = gB + bcrow, *gCt = gC + bcrow;
                for (int64_t c = 0; c < w; c++) {
                    d[c] = dt[row + c];
                    uu[c] = u[row + c];
                    x[c] = d[c] * uu[c];
                    g[c] = gy[row + c];
                    gdtu[c] = 0;
                    gdA[c] = 0;
                }
                for (int64_t n = 0; n < N; n++) {
                    const real Bn = bc[n], Cn = cc[n];
                    const real *restrict An = At + n * H + it.c0;
                    const real *restrict hn = hs + (i + 1) * S + n * VEC, *restrict hp = hs + i * S + n * VEC;
                    const real *restrict abar = ab + i * S + n * VEC;
                    real *restrict ln = lam + n * VEC, *restrict gan = gAl + n * VEC;
                    real sC = 0, sB = 0;
#pragma omp simd reduction(+ : sC, sB)
                    for (int64_t c = 0; c < w; c++) {
                        real l = ln[c] + Cn * g[c]; /* λ_t */
                        sC += g[c] * hn[c];
                        sB += l * x[c];
                        gdtu[c] += Bn * l;
                        real Gam = l * abar[c] * hp[c];
                        gdA[c] += Gam * An[c];
                        gan[c] += Gam * d[c];
                        ln[c] = abar[c] * l; /* the carry into step t-1 */
                    }
                    gCt[n] += sC;
                    gBt[n] += sB;
                }
                for (int64_t c = 0; c < w; c++) {
                    gdt[row + c] = gdA[c] + gdtu[c] * uu[c]; /* Σ_n Γ A + ∂(Δu) u */
                    gu[row + c] = gdtu[c] * d[c];
                }
            }
        }
        if (gh0)
            for (int64_t n = 0; n < N; n++)
                for (int64_t c = 0; c < w; c++) gh0[(it.b * H + it.c0 + c) * N + n] = lam[n * VEC + c];
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < w; c++) gA[n * H + it.c0 + c] += gAl[n * VEC + c];
    }
    free(hs), free(ab), free(lam), free(gAl);
    return 0;
}
