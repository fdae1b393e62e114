/* The scalar type and the elementwise functions shared by the native kernels (included by each .c file).
 *
 * Every kernel is compiled twice: as float, and with -DSS_DOUBLE as double; SUFFIX names its exported functions
 * accordingly (name_f32 / name_f64). The float functions are branch-free polynomials after range reduction, so the
 * loops that call them vectorise (libm's calls would not, without -ffast-math); the double ones are libm's.
 *
 *     expr(x)     e^x: 2^k e^r, k = round(x / ln 2), r = x - k ln 2 (ln 2 in two parts: r exact to rounding), e^r by
 *                 its degree-6 minimax polynomial (Remez, relative error 1.9e-9; below float32's rounding: the worst
 *                 error of expr over [-87, 88] is 1.10e-7 relative against 1.00e-7 with the degree-7 Taylor
 *                 polynomial it replaced, one FMA fewer, 4-14 % less time in the scan's inner loop on Zen 3);
 *                 0 below -88 and +inf above 88
 *     expr_le88(x) the same for x ≤ 88 only (clamped below, not above: garbage beyond 88.7), for loops whose caller
 *                 guarantees it (the selective scan's exp(Δ A) with A ≤ 0 and Δ = softplus(·) ≥ 0): without the upper
 *                 clamp gcc vectorises the lower one as a mask, 35 % less time in the scan's inner loop on Zen 3
 *     exp2_le0(y) 2^y for y ≤ 0 (below), for exponents the caller has scaled by log2 e (the selective scan's Δ A)
 *     log1p_unit(e) log(1 + e) for e ∈ [0, 1] (below)
 *     softplus_e(x, e), sigmoid_e(x, e)  softplus(x) = max(x, 0) + log(1 + e) (or x above 20, as
 *                 torch.nn.functional.softplus) and σ(x), both from e = e^{-|x|} ∈ (0, 1] (one exponential for the two;
 *                 the argument of log1p stays in [0, 1], one series, where log(1 + e^x) needs both of log1p's ranges)
 */
#ifndef SSMKIT_NATIVE_COMMON_H
#define SSMKIT_NATIVE_COMMON_H

#include <math.h>
#include <stdlib.h>
#include <stdint.h>

#ifdef SS_DOUBLE
typedef double real;
#define SUFFIX(name) name##_f64
static inline real expr(real x) { return exp(x); }
static inline real expr_le88(real x) { return exp(x); }
static inline real exp2_le0(real y) { return exp2(y); }
static inline real log1p_unit(real x) { return log1p(x); }
#else
typedef float real;
#define SUFFIX(name) name##_f32
/* e^x = 2^k · e^r with k = round(x / ln 2) and r = x - k ln 2 ∈ [-ln2/2, ln2/2] (Cody-Waite: ln 2 in two parts, so r
 * is exact to float32 rounding); e^r by the degree-6 minimax polynomial above. x is clamped below at -88: the result is
 * then 0 (k = -127 gives the bit pattern of 0.0); no branches, so the loops vectorise. Above 88.7 the exponent field
 * overflows: only for x ≤ 88 (expr clamps there first). */
#define EXP_LOG2E 1.4426950408889634f
#define EXP_LN2_HI 0.693145751953125f /* ln 2, high part (exact product with k for |k| < 2^8) */
#define EXP_LN2_LO 1.428606765330187e-06f /* ln 2, low part */
/* e^r by its degree-6 minimax polynomial (relative error; module docstring), Horner's order; r a float or a vector of
 * floats (expr_le88 and rglru_scan.c's expr_v share it) */
#define EXP_POLY(r)                                                                                                    \
    ((((((1.383684576e-03f * (r) + 8.374815807e-03f) * (r) + 4.166822508e-02f) * (r) + 1.666641980e-01f) * (r) +       \
       4.999999106e-01f) * (r) + 1.0f) * (r) + 1.0f)
static inline real expr_le88(real x) {
    x = x < -88.0f ? -88.0f : x;
    int32_t k = (int32_t)(x * EXP_LOG2E + 128.5f) - 128; /* round: truncation of a positive number */
    float kf = (float)k;
    float r = x - kf * EXP_LN2_HI;
    r = r - kf * EXP_LN2_LO;
    const float p = EXP_POLY(r);
    union {
        int32_t i;
        float f;
    } s = {.i = (k + 127) << 23}; /* 2^k */
    return p * s.f;
}
/* 2^f for f ∈ [-1/2, 1/2] by its degree-6 minimax polynomial (relative error 8.9e-8 in float32, Horner's order); f a
 * float or a vector of floats (exp2_le0 and selective_scan.c's exp2_le0_v share it). */
#define EXP2_POLY(f)                                                                                                   \
    ((((((1.504174725e-04f * (f) + 1.337263850e-03f) * (f) + 9.619120508e-03f) * (f) + 5.550408736e-02f) * (f) +        \
       2.402265072e-01f) * (f) + 6.931471825e-01f) * (f) + 1.0f)
/* 2^y for y ≤ 0, clamped below at -127 (where it is 0; NaN stays NaN): 2^k 2^f with k = round(y) by the 1.5·2^23
 * addition (the sum's low mantissa bits hold k) and f = y - k ∈ [-1/2, 1/2] exact, so there is no range-reduction
 * error; 2^f by EXP2_POLY. For exp(x) of an x that is a product with a stored factor (Δ A), the factor is scaled by
 * log2 e once and this runs without the two multiplications of expr's Cody-Waite reduction: 13 operations against 16.
 * Garbage above 0.5. */
static inline real exp2_le0(real y) {
    y = y < -127.0f ? -127.0f : y;
    union {
        float f;
        int32_t i;
    } s = {.f = y + 12582912.0f}; /* 1.5·2^23 + y: rounded to an integer, k in the low mantissa bits */
    const float f = y - (s.f - 12582912.0f);
    const float p = EXP2_POLY(f);
    union {
        int32_t i;
        float f;
    } e = {.i = (s.i - 0x4B400000 + 127) << 23}; /* 2^k (0 for k = -127) */
    return p * e.f;
}
/* e^x for any x: 0 below -88, +inf above 88 (float32's largest is e^88.72, so the values between overflow a little
 * early; a clamp at 88 had returned e^88 = 1.65e38 for every larger x, where the PyTorch paths overflow to inf: the
 * SSD scan's exp(Δ A) for A > 0, found by the adversarial tests of 2026-12-05). A select, not a branch: the loops
 * still vectorise. */
static inline real expr(real x) { return x > 88.0f ? (real)INFINITY : expr_le88(x); }

/* log(1 + e) for e ∈ [0, 1]: 2 atanh(s) with s = e / (2 + e) ∈ [0, 1/3], the odd series to s^15 (remainder < 5e-9;
 * exact for tiny e: no 1 + e is formed). */
static inline real atanh_series(float s) {
    float s2 = s * s, p = 1.0f / 15;
    p = p * s2 + 1.0f / 13, p = p * s2 + 1.0f / 11, p = p * s2 + 1.0f / 9, p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5, p = p * s2 + 1.0f / 3, p = p * s2 + 1.0f;
    return 2.0f * s * p;
}
static inline real log1p_unit(real e) { return atanh_series(e / (2.0f + e)); }
#endif

/* The target's vector width in bytes: one AVX-512 register where the compiler targets it, else 32 (one AVX2 register;
 * two NEON or SSE registers). Kernels size their register blocks by it: a block sized for AVX-512's 32 registers of
 * 64 bytes spills on AVX2's 16 of 32 bytes. */
#if defined(__AVX512F__)
#define VBYTES 64
#else
#define VBYTES 32
#endif

/* A buffer of n bytes on a 64-byte boundary (a cache line, an AVX-512 vector), freed with free(), or NULL. malloc's
 * 16-byte alignment put three of every four 64-byte vector loads and stores of a kernel's working buffers across two
 * cache lines: the selective scan's backward ran 11 % faster (forward 4 %) with its buffers on lines (B 2, L 4 096,
 * H 512, N 16, one Zen 4 thread, two builds alternated in one process). */
static inline void *alloc_lines(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64); }
#define ALIGNED_LINE __attribute__((aligned(64))) /* the same for a local array */

/* Threads. Compiled with -fopenmp, a kernel entry runs its work items on `nthreads` threads of the OpenMP runtime,
 * handed out one at a time (a thread that loses its core to another process takes fewer); the partial sums an item
 * adds into belong to the item (or its batch row), not to the thread, so the results do not depend on the schedule.
 * The runtime is libgomp, found by its soname: when torch (which ships libgomp and runs its own parallel ops on it) is
 * loaded first, the kernels run on torch's thread pool instead of beside it. Without -fopenmp the pragmas are ignored
 * and an entry runs its items on the calling thread. */
#ifdef _OPENMP
#define NATIVE_OPENMP 1
#else
#define NATIVE_OPENMP 0
#endif
/* 1 when this library was compiled with OpenMP: its entries then take nthreads > 1. */
int SUFFIX(native_openmp)(void) { return NATIVE_OPENMP; }

/* e^{-|x|}, the argument of softplus_e and sigmoid_e (≤ 0: no upper clamp; NaN stays NaN). */
static inline real exp_neg_abs(real x) { return expr_le88(x < 0 ? x : -x); }
static inline real softplus_e(real x, real e) { return x > (real)20 ? x : (x > 0 ? x : (real)0) + log1p_unit(e); }
static inline real sigmoid_e(real x, real e) {
    const real s = (real)1 / ((real)1 + e);
    return x >= 0 ? s : e * s;
}

#endif
