/* The forward of one row of Mamba-2's output path -- the skip, the SiLU gate and the grouped RMSNorm with its
 * power-of-two group scale (gated_norm.c's comment gives the equations) -- shared by gated_norm.c and mamba2_step.c
 * (included after common.h). */
#ifndef SSMKIT_NATIVE_GATED_ROWS_H
#define SSMKIT_NATIVE_GATED_ROWS_H

#include <float.h>

#include "common.h"

#ifdef SS_DOUBLE
#define LARGEST_EXP (DBL_MAX_EXP - 1)
#define FREXP frexp
#define LDEXP ldexp
#else
#define LARGEST_EXP (FLT_MAX_EXP - 1)
#define FREXP frexpf
#define LDEXP ldexpf
#endif

/* m = 2^⌈log2 top⌉ for top ≥ 1, the exponent at most the largest finite power of two's (top = inf: that power; NaN: NaN,
 * as torch's exp2(ceil(log2(NaN)))). */
static inline real scale_of(real top) {
    if (top != top) return top;                                /* NaN */
    if (top <= (real)1) return 1;
    if (top - top != 0) return LDEXP((real)1, LARGEST_EXP);    /* inf */
    int e;
    const real f = FREXP(top, &e); /* top = f 2^e, f ∈ [0.5, 1): ⌈log2 top⌉ = e, or e - 1 when f = 0.5 */
    if (f == (real)0.5) e -= 1;
    return LDEXP((real)1, e < LARGEST_EXP ? e : LARGEST_EXP);
}

/* The rows' loops are written for the vectoriser: no branch but selects, the largest |v| and a NaN flag as reductions,
 * and the skip (hasx) and gate order (nbg) constants in each inlined copy (ROW_CASES). */

/* The group's scale m from its values v[0..K): 2^⌈log2 max|v|⌉ (scale_of), NaN when a value is NaN. */
static inline __attribute__((always_inline)) real group_scale(const real *restrict v, int64_t K) {
    real top = 0;
    int nan = 0;
#pragma omp simd reduction(max : top) reduction(| : nan)
    for (int64_t c = 0; c < K; c++) {
        const real a = v[c] < 0 ? -v[c] : v[c];
        top = a > top ? a : top;
        nan |= a != a;
    }
    return scale_of(nan ? v[0] - v[0] + (real)NAN : top);
}

/* r = 1 / √(mean((v/m)²) + eps/m²) of the group's values v[0..K) and its scale's inverse inv = 1/m. */
static inline __attribute__((always_inline)) real group_rstd(const real *restrict v, int64_t K, real inv, real eps) {
    real ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < K; c++) ss += (v[c] * inv) * (v[c] * inv);
    return 1 / sqrt(ss / K + eps * inv * inv);
}

/* v = y + D x (hasx), gated first unless nbg; σ(z) into sg. */
static inline __attribute__((always_inline)) void row_values(const real *restrict y, const real *restrict x,
                                                             const real *restrict D, const real *restrict z,
                                                             real *restrict v, real *restrict sg, int64_t E,
                                                             int hasx, int nbg) {
#pragma omp simd
    for (int64_t c = 0; c < E; c++) {
        const real s = sigmoid_e(z[c], exp_neg_abs(z[c]));
        const real u = hasx ? y[c] + D[c] * x[c] : y[c];
        sg[c] = s;
        v[c] = nbg ? u : u * (z[c] * s);
    }
}

/* One row's forward into out; v, sg: E scratch values each. */
static inline __attribute__((always_inline)) void forward_row(const real *restrict y, const real *restrict x,
                                                              const real *restrict D, const real *restrict z,
                                                              const real *restrict w, real *restrict out,
                                                              real *restrict v, real *restrict sg, int64_t E,
                                                              int64_t G, real eps, int hasx, int nbg) {
    const int64_t K = E / G;
    row_values(y, x, D, z, v, sg, E, hasx, nbg);
    for (int64_t c0 = 0; c0 < E; c0 += K) {
        const real inv = 1 / group_scale(v + c0, K);
        const real r = group_rstd(v + c0, K, inv, eps);
#pragma omp simd
        for (int64_t c = c0; c < c0 + K; c++) {
            const real o = (v[c] * inv) * r * w[c];
            out[c] = nbg ? o * (z[c] * sg[c]) : o;
        }
    }
}

#endif
