/* The RG-LRU's gate algebra for one element (arXiv 2402.19427 §2.4), shared by rglru_scan.c and rglru_step.c
 * (included after common.h): a = e^{log a} with log a = -c r softplus(-Λ), and the input multiplier √(1 - a²). */
#ifndef SSMKIT_NATIVE_RGLRU_GATES_H
#define SSMKIT_NATIVE_RGLRU_GATES_H

#include "common.h"

#ifdef SS_DOUBLE
#define SQRT sqrt
#else
#define SQRT sqrtf /* (sqrt of a float went through double in the forward's vector loop) */
#endif
/* 1 - a² = -expm1(2 log a) from log a ≤ 0 and a = e^{log a}: by -expm1 where 2 log a > -1/2 (a > 0.78: 1 - a² would
 * lose bits to cancellation there), else 1 - a² itself (≥ 0.39: no cancellation). In float, expm1 near 0 is its Taylor
 * series through x^8 (relative error below 2e-8 for |x| < 1/2): branch-free, so the loops vectorise, and no second
 * exponential. */
static inline real one_minus_a2(real la, real a) {
#ifdef SS_DOUBLE
    return -expm1(2 * la);
#else
    const real x = 2 * la;
    const real p = x * (1.0f + x * (0.5f + x * (1.0f / 6 + x * (1.0f / 24 + x * (1.0f / 120 + x * (1.0f / 720 +
                   x * (1.0f / 5040 + x * (1.0f / 40320))))))));
    return x > -0.5f ? -p : 1.0f - a * a;
#endif
}

/* a_t and m_t of one element (a reset gives 0 and 1). */
static inline void gates(real r, real sp, real c, int reset, real *a, real *m) {
    const real la = (-c * r) * sp;
    const real e = expr(la);
    const real v = one_minus_a2(la, e);
    *a = reset ? 0 : e;
    *m = reset ? 1 : SQRT(v);
}

#endif
