/* Zero-order-hold discretisation of a diagonal SSM on the CPU, forward and backward, on the calling thread.
 *
 * Gu, Gupta, Goel, Ré, arXiv 2206.11893 §3: with z = Δ_h Λ_{h,m} (Λ, B (H, M) complex, Δ (H,) real)
 *
 *     Ā = e^z,     B̄ = Δ B φ(z),     φ(z) = (e^z - 1)/z
 *
 * φ by its Taylor series Σ_{k<18} z^k/(k+1)! for |z| < 1 (truncated after 1/19! ≈ 8e-18, below double's rounding),
 * else directly, with e^z - 1 = (expm1(x) cos y - 2 sin²(y/2)) + i e^x sin y (z = x + iy: no cancellation in either
 * part). The same rule as ssmkit.ops.discretize.zoh, which this equals.
 *
 * Gradients (PyTorch's convention for complex tensors, ∂ℓ/∂Re + i ∂ℓ/∂Im; for a holomorphic w = f(z) the gradient
 * of z is conj(f'(z)) times that of w): with incoming gĀ, gB̄,
 *
 *     g_z = conj(e^z) gĀ + conj(Δ B φ'(z)) gB̄,    ∂Λ = Δ g_z,    ∂B = Δ conj(φ) gB̄,
 *     ∂Δ_h = Σ_m Re(conj(Λ) g_z) + Re(conj(B φ) gB̄)
 *
 * where φ'(z) = Σ_{k≥1} k z^{k-1}/(k+1)! (|z| < 1) or (e^z - φ)/z.
 *
 * The log forms (flags): LOG_RE, Λ given as the pairs (a, b) with Λ = -e^a + i b (S4D's and S4's parameters: Re Λ < 0
 * always), its gradient as (∂a, ∂b) = (-e^a Re ∂Λ, Im ∂Λ); LOG_DT, Δ given as log Δ, its gradient Δ ∂Δ. The exponentials
 * of the parameters are then taken here too: torch's exp of a (H, M) tensor runs on its thread pool from 4 096 values.
 *
 * Why in C: the torch form is ~25 ops on (H, M) and (H, M, 18) tensors, and complex exp, expm1 and the 18-term power
 * table run on torch's thread pool already at a few thousand elements. Beside a busy process each such parallel op
 * waits for a worker the scheduler has not run yet (up to milliseconds), so S4D's forward+backward slowed down
 * beside one busy process far more than its kernel did. Here: two calls, no threads (H·M values: microseconds).
 *
 * Arithmetic in double for both builds (the inputs and outputs are `real`: float or double).
 */
#include <complex.h>

#include "common.h"

#define NTERMS 18

typedef double complex cplx;

/* c_k = 1/(k+1)!, k < NTERMS (every factorial up to 18! < 2^53 is exact in double) */
static const double c[NTERMS] = {
    1.0 / 1.0,          1.0 / 2.0,           1.0 / 6.0,            1.0 / 24.0,           1.0 / 120.0,
    1.0 / 720.0,        1.0 / 5040.0,        1.0 / 40320.0,        1.0 / 362880.0,       1.0 / 3628800.0,
    1.0 / 39916800.0,   1.0 / 479001600.0,   1.0 / 6227020800.0,   1.0 / 87178291200.0,  1.0 / 1307674368000.0,
    1.0 / 20922789888000.0, 1.0 / 355687428096000.0, 1.0 / 6402373705728000.0,
};

/* φ(z) and φ'(z) */
static void phi(cplx z, cplx ez, cplx *f, cplx *df) {
    if (cabs(z) < 1.0) {
        /* Horner: φ = Σ c_k z^k, φ' = Σ k c_k z^{k-1} */
        cplx p = c[NTERMS - 1], q = (double)(NTERMS - 1) * c[NTERMS - 1];
        for (int k = NTERMS - 2; k >= 0; k--) p = p * z + c[k];
        for (int k = NTERMS - 2; k >= 1; k--) q = q * z + (double)k * c[k];
        *f = p, *df = q;
    } else {
        const double x = creal(z), y = cimag(z), s = sin(0.5 * y);
        const cplx em1 = (expm1(x) * cos(y) - 2.0 * s * s) + I * (exp(x) * sin(y));
        *f = em1 / z;
        *df = (ez - *f) / z;
    }
}

static inline cplx load(const real *p, int64_t i) { return (double)p[2 * i] + I * (double)p[2 * i + 1]; }

enum { LOG_RE = 1, LOG_DT = 2 };

/* Λ of entry i: given, or -e^a + i b from the pair (a, b) */
static inline cplx lambda_of(const real *lam, int64_t i, int64_t flags) {
    return (flags & LOG_RE) ? -exp((double)lam[2 * i]) + I * (double)lam[2 * i + 1] : load(lam, i);
}

static inline void store(real *p, int64_t i, cplx v) { p[2 * i] = (real)creal(v), p[2 * i + 1] = (real)cimag(v); }

/* lam, b (H, M) complex interleaved (lam: the pairs (a, b) under LOG_RE), contiguous; dt (H,) (log Δ under LOG_DT)
 * -> abar, bbar (H, M) complex interleaved. */
void SUFFIX(zoh_forward)(const real *lam, const real *b, const real *dt, real *abar, real *bbar, int64_t H, int64_t M,
                         int64_t flags) {
    for (int64_t h = 0; h < H; h++) {
        const double d = (flags & LOG_DT) ? exp((double)dt[h]) : (double)dt[h];
        for (int64_t m = 0; m < M; m++) {
            const int64_t i = h * M + m;
            const cplx z = d * lambda_of(lam, i, flags), ez = cexp(z);
            cplx f, df;
            phi(z, ez, &f, &df);
            store(abar, i, ez);
            store(bbar, i, d * load(b, i) * f);
        }
    }
}

/* From the forward's inputs and the gradients ga, gb (H, M) complex of Ā and B̄ (either may be NULL: zero):
 * glam, gbin (H, M) complex and gdt (H,), each in the form its input was given (flags). */
void SUFFIX(zoh_backward)(const real *lam, const real *b, const real *dt, const real *ga, const real *gb, real *glam,
                          real *gbin, real *gdt, int64_t H, int64_t M, int64_t flags) {
    for (int64_t h = 0; h < H; h++) {
        const double d = (flags & LOG_DT) ? exp((double)dt[h]) : (double)dt[h];
        double gd = 0.0;
        for (int64_t m = 0; m < M; m++) {
            const int64_t i = h * M + m;
            const cplx l = lambda_of(lam, i, flags), bi = load(b, i), z = d * l, ez = cexp(z);
            cplx f, df;
            phi(z, ez, &f, &df);
            const cplx gA = ga ? load(ga, i) : 0.0, gB = gb ? load(gb, i) : 0.0;
            const cplx gz = conj(ez) * gA + conj(d * bi * df) * gB, gl = d * gz;
            /* ∂a = Re ∂Λ · ∂(Re Λ)/∂a = Re ∂Λ · Re Λ (Re Λ = -e^a); ∂b = Im ∂Λ */
            store(glam, i, (flags & LOG_RE) ? creal(gl) * creal(l) + I * cimag(gl) : gl);
            store(gbin, i, d * conj(f) * gB);
            gd += creal(conj(l) * gz) + creal(conj(bi * f) * gB);
        }
        gdt[h] = (real)((flags & LOG_DT) ? gd * d : gd);
    }
}

/* e^z and φ(z) of n complex values (interleaved), and their backward: g_z = conj(e^z) g_e + conj(φ'(z)) g_φ (either
 * incoming gradient may be NULL: zero). For the parametrisations that form z themselves (DSS: separate steps for the
 * real and imaginary parts; W̃ = W φ(z) z/λ). */
void SUFFIX(exp_phi_forward)(const real *z, real *ez, real *ph, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const cplx zi = load(z, i), e = cexp(zi);
        cplx f, df;
        phi(zi, e, &f, &df);
        store(ez, i, e);
        store(ph, i, f);
    }
}

void SUFFIX(exp_phi_backward)(const real *z, const real *ge, const real *gp, real *gz, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const cplx zi = load(z, i), e = cexp(zi);
        cplx f, df;
        phi(zi, e, &f, &df);
        const cplx a = ge ? conj(e) * load(ge, i) : 0.0, b = gp ? conj(df) * load(gp, i) : 0.0;
        store(gz, i, a + b);
    }
}
