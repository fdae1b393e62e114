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

/* The gate a = e^{la} of one element from la = log a ≤ 0: e = e^{la} (common.h's expr in float), em1 = a - 1 =
 * expm1(la), and v = 1 - a² = -expm1(2 la).
 *
 * Near 1 a float32 a is too coarse for a scan: its rounding (up to half an ulp, 3e-8) is 0.3 % of 1 - a = 1e-5, random
 * from step to step, and the state adds such errors up over its memory 1/(1 - a). So in float em1 is expm1(la) itself
 * where |la| < 1/4 (a > 0.78), by its Taylor series through la^7 (remainder below 2e-9 relative; branch-free, so the
 * loops vectorise, and no second exponential), and e - 1 elsewhere (exact for e ≥ 1/2, and no cancellation to fear
 * there); v = -em1 (2 + em1), with no cancellation at either end. In double e and v are libm's exp(la) and
 * -expm1(2 la), and em1 = e - 1 (exact for e ≥ 1/2: the same a as e). */
/* expm1(x) for |x| < 1/4 by its Taylor series through x^7, Horner's order; x a float or a vector of floats (gate_parts
 * and rglru_scan.c's gate_parts_v share it) */
#define EXPM1_TAYLOR(x)                                                                                                \
    ((x) * (1.0f + (x) * (0.5f + (x) * (1.0f / 6 + (x) * (1.0f / 24 + (x) * (1.0f / 120 + (x) * (1.0f / 720 +          \
                                                                                                  (x) * (1.0f / 5040))))))))
static inline void gate_parts(real la, real *e, real *em1, real *v) {
#ifdef SS_DOUBLE
    *e = exp(la);
    *em1 = *e - 1;
    *v = -expm1(2 * la);
#else
    const real a = expr(la);
    const real x = la;
    const real p = EXPM1_TAYLOR(x);
    const real m1 = x > -0.25f && x < 0.25f ? p : a - 1.0f; /* (log a > 0: c r < 0, a > 1) */
    *e = a;
    *em1 = m1;
    *v = -m1 * (2.0f + m1);
#endif
}

/* a_t and m_t of one element (a reset gives 0 and 1): a = e^{log a} (gate_parts' e), m = √v. */
static inline void gates(real r, real sp, real c, int reset, real *a, real *m) {
    const real la = (-c * r) * sp;
    real e, em1, v;
    gate_parts(la, &e, &em1, &v);
    *a = reset ? 0 : e;
    *m = reset ? 1 : SQRT(v);
}

#endif
