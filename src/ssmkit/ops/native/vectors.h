/* Vectors of the target's width for the kernels that write their inner loops with them (included after common.h).
 *
 * LANES: a vector's lanes; vec_t / vec_u: an aligned / unaligned vector of LANES reals (GCC >= 12 and clang vector
 * extensions; HAVE_VEC is 0 on other compilers, whose kernels take their scalar loops); transpose_sum (below).
 */
#ifndef SSMKIT_NATIVE_VECTORS_H
#define SSMKIT_NATIVE_VECTORS_H

#include "common.h"

/* Vectors are VBYTES wide (common.h). With 64-byte vectors on a CPU without AVX-512 each vector took two registers, the
 * selective scan's adjoint working set no longer fitted the 16 of AVX2, and gcc spilled it: its backward ran 8x slower than on
 * AVX-512 on a Zen 3 VM (1.37 s against 0.17 s at B 8, L 4 096, H 512, N 16), where the forward ran 4.7x slower. */
#ifdef SS_DOUBLE
#define SS_REAL_BYTES 8
#else
#define SS_REAL_BYTES 4
#endif
#define LANES (VBYTES / (int64_t)sizeof(real)) /* a vector's lanes */

/* Vectors of LANES values (GCC >= 12 and clang: vector extensions and __builtin_shufflevector; HAVE_VEC is 0 on
 * other compilers, which take the scalar loops). transpose_sum(v) returns s with s[i] = Σ_j v[i][j], the lane sums of
 * the LANES vectors v[0..LANES) all at once, by a transposing tree: log2 LANES levels, at each of which pairs of
 * vectors exchange halves of their lane blocks and add (LANES - 1 vector additions in all; v is overwritten). A
 * compiler sums one vector's lanes in lane order without -ffast-math, a chain of LANES dependent scalar additions:
 * per state and step, for ∂B and ∂C, that was a sixth of the selective backward. */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
typedef real vec_t __attribute__((vector_size(VBYTES)));
typedef real vec_u __attribute__((vector_size(VBYTES), aligned(sizeof(real)))); /* an unaligned load or store */
#define PAIR(a, b, lo, hi) (__builtin_shufflevector(a, b, lo) + __builtin_shufflevector(a, b, hi))
#if VBYTES / SS_REAL_BYTES == 4
#define LEVEL1 0, 1, 4, 5
#define LEVEL1H 2, 3, 6, 7
#define LEVEL2 0, 4, 2, 6
#define LEVEL2H 1, 5, 3, 7
static inline vec_t transpose_sum(vec_t *v) {
    for (int k = 0; k < 2; k++) v[k] = PAIR(v[k], v[k + 2], LEVEL1, LEVEL1H);
    return PAIR(v[0], v[1], LEVEL2, LEVEL2H);
}
#elif VBYTES / SS_REAL_BYTES == 8
#define LEVEL1 0, 1, 2, 3, 8, 9, 10, 11
#define LEVEL1H 4, 5, 6, 7, 12, 13, 14, 15
#define LEVEL2 0, 1, 8, 9, 4, 5, 12, 13
#define LEVEL2H 2, 3, 10, 11, 6, 7, 14, 15
#define LEVEL3 0, 8, 2, 10, 4, 12, 6, 14
#define LEVEL3H 1, 9, 3, 11, 5, 13, 7, 15
static inline vec_t transpose_sum(vec_t *v) {
    for (int k = 0; k < 4; k++) v[k] = PAIR(v[k], v[k + 4], LEVEL1, LEVEL1H);
    for (int k = 0; k < 2; k++) v[k] = PAIR(v[k], v[k + 2], LEVEL2, LEVEL2H);
    return PAIR(v[0], v[1], LEVEL3, LEVEL3H);
}
#else
#define LEVEL1 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define LEVEL1H 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LEVEL2 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define LEVEL2H 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define LEVEL3 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define LEVEL3H 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define LEVEL4 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define LEVEL4H 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
static inline vec_t transpose_sum(vec_t *v) {
    for (int k = 0; k < 8; k++) v[k] = PAIR(v[k], v[k + 8], LEVEL1, LEVEL1H);
    for (int k = 0; k < 4; k++) v[k] = PAIR(v[k], v[k + 4], LEVEL2, LEVEL2H);
    for (int k = 0; k < 2; k++) v[k] = PAIR(v[k], v[k + 2], LEVEL3, LEVEL3H);
    return PAIR(v[0], v[1], LEVEL4, LEVEL4H);
}
#endif
#define HAVE_VEC 1
#else
#define HAVE_VEC 0
#endif

#endif
