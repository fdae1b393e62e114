/* The scalar type and the elementwise functions shared by the native kernels (included by each .c file).
 *
 * Every kernel is compiled twice: as float, and with -DSS_DOUBLE as double; SUFFIX names its exported functions
 * accordingly (name_f32 / name_f64). The float functions are branch-free polynomials after range reduction, so the
 * loops that call them vectorise (libm's calls would not, without -ffast-math); the double ones are libm's.
 *
 *     expr(x)     e^x: 2^k e^r, k = round(x / ln 2), r = x - k ln 2 (ln 2 in two parts: r exact to rounding), e^r by
 *                 its degree-7 Taylor polynomial (remainder < 6e-9); x clamped to [-88, 88], below which it is 0
 *     log1pr(e)   log(1 + e) for e ≥ 0 (below)
 *     sigmoidr(x) 1 / (1 + e^-x);   softplusr(x) log(1 + e^x), or x above 20 (torch.nn.functional.softplus)
 */
#ifndef SSMKIT_NATIVE_COMMON_H
#define SSMKIT_NATIVE_COMMON_H

#include <math.h>
#include <stdint.h>

#ifdef SS_DOUBLE
typedef double real;
#define SUFFIX(name) name##_f64
static inline real expr(real x) { return exp(x); }
static inline real log1pr(real x) { return log1p(x); }
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

/* log(1 + e) for e ≥ 0. Below 1: 2 atanh(s) with s = e / (2 + e) ∈ [0, 1/3], the odd series to s^15 (remainder
 * < 5e-9; exact for tiny e: no 1 + e is formed). From 1 on: 1 + e = 2^k f with f ∈ [√½, √2), k ln 2 + 2 atanh of
 * (f - 1)/(f + 1) ∈ [-0.172, 0.172], the same series. Both are computed and one selected: no branches. */
static inline real atanh_series(float s) {
    float s2 = s * s, p = 1.0f / 15;
    p = p * s2 + 1.0f / 13, p = p * s2 + 1.0f / 11, p = p * s2 + 1.0f / 9, p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5, p = p * s2 + 1.0f / 3, p = p * s2 + 1.0f;
    return 2.0f * s * p;
}
static inline real log1pr(real e) {
    float small = atanh_series(e / (2.0f + e));
    union {
        float f;
        int32_t i;
    } m = {.f = 1.0f + e};
    int32_t k = ((m.i >> 23) & 0xff) - 127;
    m.i = (m.i & 0x007fffff) | 0x3f800000; /* f ∈ [1, 2) */
    float f = m.f > 1.41421356f ? 0.5f * m.f : m.f;
    k = m.f > 1.41421356f ? k + 1 : k;
    float large = (float)k * 0.6931471805599453f + atanh_series((f - 1.0f) / (f + 1.0f));
    return e < 1.0f ? small : large;
}
#endif

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

static inline real sigmoidr(real x) { return (real)1 / ((real)1 + expr(-x)); }
static inline real softplusr(real x) { return x > (real)20 ? x : log1pr(expr(x)); }

#endif
