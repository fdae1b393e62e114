/* Double-precision vectors and their elementary functions for the kernels that form exponentials in registers (the
 * irregularly sampled banks of ssmkit.ops.native). Included after common.h.
 *
 * vd / vi: W = VBYTES / 8 doubles / int64s (GCC >= 12 and clang vector extensions); vld / vst: unaligned load and
 * store; splat; vclamp; expm1_v (e^a − 1 and e^a, no cancellation for small |a|); sincos_v (|x| ≤ PHASE_LIMIT) and
 * sincos_libm (lane by lane, any x).
 */
#ifndef SSMKIT_NATIVE_VMATH_H
#define SSMKIT_NATIVE_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

#ifndef W
#define W (VBYTES / 8) /* lanes of a vector of doubles */
#endif

typedef double vd __attribute__((vector_size(VBYTES)));
typedef int64_t vi __attribute__((vector_size(VBYTES)));

static inline vd vld(const double *p) {
    vd v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void vst(double *p, vd v) { memcpy(p, &v, sizeof v); }
static inline vd splat(double a) { return (vd){0} + a; }
/* a clamped to [lo, hi] by compare masks and bit selects (a NaN stays NaN) */
static inline vd vclamp(vd a, double lo, double hi) {
    const vi low = a < lo, high = a > hi;
    const vi bits = (low & (vi)splat(lo)) | (high & (vi)splat(hi)) | (~(low | high) & (vi)a);
    return (vd)bits;
}

/* Rounding to an integer by the 1.5·2^52 addition (|x| < 2^51): the sum's low mantissa bits hold round(x). */
#define ROUND_MAGIC 6755399441055744.0

/* e^a − 1 for a vector a (clamped to [−700, 700]): 2^k (p + 1) − 1 = 2^k p + (2^k − 1) with k = round(a / ln 2),
 * r = a − k ln 2 (Cody-Waite, ln 2 in two parts) ∈ [−0.347, 0.347] and p = e^r − 1 by its Taylor polynomial to r^13
 * (remainder below 2e-16 relative); exact for k = 0, no cancellation for small |a|. Also returns 2^k (p + 1) = e^a in
 * *e. */
static inline vd expm1_v(vd a, vd *e) {
    a = vclamp(a, -700.0, 700.0);
    const vd big = splat(ROUND_MAGIC);
    const vd kr = a * 1.4426950408889634 + big;
    const vd k = kr - big;
    const vd r = (a - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
    vd p = splat(1.0 / 6227020800.0);
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = (p * r) * r + r;
    const vi ki = (vi)kr - (vi)big;        /* k as an integer */
    const vd two_k = (vd)((ki + 1023) << 52); /* 2^k (k ∈ [−1010, 1010]: normal) */
    *e = two_k * p + two_k;
    return two_k * p + (two_k - 1.0);
}

/* sin x and cos x for a vector x, |x| ≤ PHASE_LIMIT (below; the products lose bits beyond): q = round(2x/π), r = x − q π/2 (Cody-Waite,
 * π/2 in three parts, each product with q exact) ∈ [−π/4, π/4], sin r and cos r by their Taylor polynomials to r^15
 * and r^16 (remainders below 1e-16), then the quadrant: (sin, cos) x = (s, c), (c, −s), (−s, −c), (−c, s) for q mod 4
 * = 0, 1, 2, 3, by bit operations (no branches). */
static inline void sincos_v(vd x, vd *sin_out, vd *cos_out) {
    const vd big = splat(ROUND_MAGIC);
    const vd qr = x * 0.63661977236758134308 + big;
    const vd q = qr - big;
    const vd r = ((x - q * 1.57079632673412561417e+00) - q * 6.07710050630396597660e-11) -
                 q * 2.02226624871116645580e-21;
    const vd r2 = r * r;
    vd ps = splat(1.0 / 1307674368000.0);
    ps = ps * r2 - 1.0 / 6227020800.0;
    ps = ps * r2 + 1.0 / 39916800.0;
    ps = ps * r2 - 1.0 / 362880.0;
    ps = ps * r2 + 1.0 / 5040.0;
    ps = ps * r2 - 1.0 / 120.0;
    ps = ps * r2 + 1.0 / 6.0;
    const vd s = r - (r * r2) * ps;
    vd pc = splat(1.0 / 20922789888000.0);
    pc = pc * r2 - 1.0 / 87178291200.0;
    pc = pc * r2 + 1.0 / 479001600.0;
    pc = pc * r2 - 1.0 / 3628800.0;
    pc = pc * r2 + 1.0 / 40320.0;
    pc = pc * r2 - 1.0 / 720.0;
    pc = pc * r2 + 1.0 / 24.0;
    pc = pc * r2 - 0.5;
    const vd c = pc * r2 + 1.0;
    const vi qi = (vi)qr - (vi)big;
    const vi swap = -(qi & 1); /* all ones where q is odd */
    const vi sbits = (vi)s, cbits = (vi)c;
    const vi sin_bits = (swap & cbits) | (~swap & sbits), cos_bits = (swap & sbits) | (~swap & cbits);
    const vi sign = (vi){0} + INT64_MIN;
    *sin_out = (vd)(sin_bits ^ ((qi << 62) & sign));        /* negative for q mod 4 = 2, 3 */
    *cos_out = (vd)(cos_bits ^ (((qi + 1) << 62) & sign)); /* negative for q mod 4 = 1, 2 */
}

/* sin x and cos x lane by lane by libm (its exact range reduction), for the steps whose phases exceed sincos_v's
 * range. */
#define PHASE_LIMIT 1.6e6 /* < 2^20 π/2: sincos_v's products q · (π/2 part) stay exact */
static void sincos_libm(vd x, vd *sin_out, vd *cos_out) {
    for (int c = 0; c < W; c++) (*sin_out)[c] = sin(x[c]), (*cos_out)[c] = cos(x[c]);
}

/* ---- A diagonal mode's step after a gap of s nominal periods (the irregularly sampled kernels), z = Δλ, with the
 * rule's coefficients formed in registers:
 *     ZOH:      A = e^{s z} = e^{s Re z}(1 − 2 sin²θ) + i e^{s Re z} 2 sinθ cosθ,  aux = A − 1 without cancellation
 *     bilinear: q = 1/(1 − s z/2),  A = (1 + s z/2) q,  aux = q
 * with θ = s Im z / 2 (one sincos of the half angle). */
/* How a step forms its phases' sines and cosines: none (every Im z of the item is 0: real modes), the vector
 * polynomials, or libm's (some half phase s Im z / 2 may exceed PHASE_LIMIT). */
enum { PHASE_NONE, PHASE_VECTOR, PHASE_LIBM };

/* A step's coefficients for W modes: A = Ar + i Ai, and aux (E = A − 1 for ZOH, q for bilinear). */
typedef struct {
    vd Ar, Ai, xr, xi;
} coef_t;

/* e^a − 1 and e^a lane by lane by libm, for a step where some |a| may pass expm1_v's clamp at 700 (e^a overflows to
 * inf there, as torch's exp; e^{-745} underflows to 0). Not inlined: a vector written lane by lane in the caller is
 * kept in memory for the whole loop. */
__attribute__((noinline)) static void expm1_libm(vd a, vd *em1, vd *ea) {
    double m[W], e[W];
    for (int c = 0; c < W; c++) m[c] = expm1(a[c]), e[c] = exp(a[c]);
    *em1 = vld(m), *ea = vld(e);
}

static inline coef_t coefficients(double s, vd zr, vd zi, int bilinear, int phase, int wide) {
    coef_t c;
    if (bilinear) {
        const vd hr = 1.0 - (0.5 * s) * zr, hi = -(0.5 * s) * zi; /* 1 − s z/2 */
        const vd inv = 1.0 / (hr * hr + hi * hi);
        c.xr = hr * inv, c.xi = -hi * inv; /* q */
        const vd nr = 1.0 + (0.5 * s) * zr, ni = (0.5 * s) * zi;
        c.Ar = nr * c.xr - ni * c.xi, c.Ai = nr * c.xi + ni * c.xr;
        return c;
    }
    vd ea, sh, ch;
    const vd a = s * zr;
    vd em1 = expm1_v(a, &ea);
    if (wide) expm1_libm(a, &em1, &ea);
    if (phase == PHASE_LIBM)
        sincos_libm((0.5 * s) * zi, &sh, &ch);
    else if (phase == PHASE_VECTOR)
        sincos_v((0.5 * s) * zi, &sh, &ch);
    else
        sh = (vd){0}, ch = splat(1.0);
    const vd s2 = 2.0 * sh * sh;         /* 1 − cos θ */
    c.xr = em1 * (1.0 - s2) - s2;        /* Re(e^{sz} − 1) */
    c.xi = ea * (2.0 * sh * ch);         /* Im e^{sz} */
    c.Ar = ea * (1.0 - s2), c.Ai = c.xi; /* e^a cos θ (not 1 + Re E: a tiny e^a keeps its relative accuracy) */
    return c;
}

/* The phase kind of a step of gap s, for zimax = max |Im z| of the item; whether its |s Re z| may exceed 700, for
 * zrmax = max |Re z|. */
static inline int phase_kind(double s, double zimax) {
    return zimax == 0 ? PHASE_NONE : 0.5 * fabs(s) * zimax < PHASE_LIMIT ? PHASE_VECTOR : PHASE_LIBM;
}
static inline int wide_real(double s, double zrmax) { return !(fabs(s) * zrmax <= 700.0); /* (NaN: wide) */ }

#endif
