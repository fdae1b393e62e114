/* Dropout on the CPU by a counter-based generator: dst[i] = src[i] · scale when the word of element i is kept, else 0.
 *
 * Element i's word is word i mod 4 of Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as
 * 1, 2, 3", SC 2011) at the counter (j mod 2^32, j div 2^32, 0, 0), j = i div 4, under the key (seed mod 2^32,
 * seed div 2^32). One round, with M0 = 0xD2511F53, M1 = 0xCD9E8D57 and the key bumped by (0x9E3779B9, 0xBB67AE85)
 * after each:
 *
 *     (hi0, lo0) = M0 · c0,  (hi1, lo1) = M1 · c2,   c ← (hi1 ⊕ c1 ⊕ k0, lo1, hi0 ⊕ c3 ⊕ k1, lo0).
 *
 * Kept iff word ≥ threshold (= round(p · 2^32): P(drop) = p to 2^-32). A word depends only on (seed, i), so the mask
 * does not depend on the thread count or the split into items, and the backward regenerates it instead of storing it
 * (the same call on the output's gradient). The reference is ssmkit/ops/philox.py, in torch integer ops.
 *
 * Compiled twice: as float and with -DSS_DOUBLE as double.
 */
#include <stdint.h>

#include "common.h"

#define ITEM 16384 /* elements per work item (a multiple of 4 * BLK) */
#define BLK 64     /* counters per block: four arrays of BLK words, each round one vectorised loop */

int64_t SUFFIX(dp_items)(int64_t n) { return (n + ITEM - 1) / ITEM; }

/* Philox4x32-10 of the counters (j0 + b, 0, 0) for b < BLK, into w (4, BLK). */
static inline void philox_block(uint64_t j0, uint32_t k0, uint32_t k1, uint32_t *w) {
    uint32_t *c0 = w, *c1 = w + BLK, *c2 = w + 2 * BLK, *c3 = w + 3 * BLK;
#pragma omp simd
    for (int b = 0; b < BLK; b++) {
        const uint64_t j = j0 + (uint64_t)b;
        c0[b] = (uint32_t)j, c1[b] = (uint32_t)(j >> 32), c2[b] = 0, c3[b] = 0;
    }
    for (int r = 0; r < 10; r++) {
#pragma omp simd
        for (int b = 0; b < BLK; b++) {
            const uint64_t p0 = (uint64_t)0xD2511F53u * c0[b], p1 = (uint64_t)0xCD9E8D57u * c2[b];
            const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[b] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3[b] ^ k1;
            c1[b] = (uint32_t)p1, c3[b] = (uint32_t)p0, c0[b] = n0, c2[b] = n2;
        }
        k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
    }
}

/* dst[i] = src[i] · scale where kept, 0 elsewhere, for the items [item0, item1) of [0, n) on nthreads threads. */
void SUFFIX(dp_apply)(const real *src, real *dst, int64_t n, int64_t seed, int64_t threshold, double scale,
                      int64_t item0, int64_t item1, int64_t nthreads) {
    const uint32_t k0 = (uint32_t)(uint64_t)seed, k1 = (uint32_t)((uint64_t)seed >> 32);
    const uint64_t thr = (uint64_t)threshold;
    const real s = (real)scale;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t item = item0; item < item1; item++) {
        uint32_t w[4 * BLK];
        const int64_t i1 = (item + 1) * ITEM < n ? (item + 1) * ITEM : n;
        for (int64_t i0 = item * ITEM; i0 < i1; i0 += 4 * BLK) {
            philox_block((uint64_t)i0 / 4, k0, k1, w);
            const int64_t m = i1 - i0 < 4 * BLK ? i1 - i0 : 4 * BLK;
#pragma omp simd
            for (int64_t q = 0; q < m; q++) { /* element i0 + q: counter b = q / 4, word q % 4 */
                const uint32_t word = w[(q & 3) * BLK + (q >> 2)];
                dst[i0 + q] = (uint64_t)word >= thr ? src[i0 + q] * s : (real)0;
            }
        }
    }
}
