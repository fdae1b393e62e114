/* The FFT convolution's passes around torch's FFTs on the CPU, block by block (ssmkit/ops/fftblocks.py): S4's
 * convolutional view y = irfft(rfft(u) · rfft(k))[:L] and its adjoint (Gu, Goel, Ré, arXiv 2111.00396 §3.3), for the
 * rows of one block (b batch rows × h channels):
 *
 *     sp_load   buf[i, c, t] = x[i, t, c], t < L          the time-major input into the zero-padded channel-major
 *                                                         buffer the FFT reads (its tail t ≥ L is never written)
 *     sp_store  y[i, t, c] = buf[i, c, t], t < L          the inverse FFT's first L samples back, time-major
 *     sp_grad   acc[c, f] += Σ_i conj(U[i, c, f]) dY[i, c, f]   (∂k's spectrum, when need_k)
 *               dY[i, c, f] ← conj(K[c, f]) dY[i, c, f]         (∂u's spectrum, in place, when need_u)
 *
 * x and y are read and written through their strides (a block is a view of (B, L, H)); buf is (b, c, n) contiguous;
 * U, dY are (b, c, F) and K, acc (c, F) contiguous complex, interleaved (re, im) as torch stores them. The transposes go
 * by tiles (TT steps × TC channels) so that both sides' cache lines are used whole; torch's strided copy_ took 3-4x the
 * time at (4, 4 096, 128) float32. sp_grad is one pass over dY where the PyTorch ops made three (a conjugate copy, the
 * product, the sum) and a fourth for the product with conj(k̂); its items are (channel, block of frequencies), so each
 * item owns its rows of acc and no partial sums are shared between threads.
 *
 * Compiled twice: as float and with -DSS_DOUBLE as double.
 */
#include <stdint.h>

#include "common.h"

#define TT 64  /* time steps per tile */
#define TC 16  /* channels per tile: 64 bytes of float32 on the time-major side */
#define FBLK 1024 /* frequencies per sp_grad item */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Items of sp_load: (batch row, tile of TC channels). */
int64_t SUFFIX(sp_load_items)(int64_t b, int64_t c) { return b * ((c + TC - 1) / TC); }

/* buf (b, c, n) ← x's block (b, L, c) with strides (sb, st, sc), first L entries of each row. */
void SUFFIX(sp_load)(const real *x, int64_t sb, int64_t st, int64_t sc, int64_t L, int64_t c, real *buf, int64_t n,
                     int64_t item0, int64_t item1, int64_t nthreads) {
    const int64_t tiles = (c + TC - 1) / TC;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t item = item0; item < item1; item++) {
        const int64_t i = item / tiles, c0 = (item % tiles) * TC, c1 = min64(c0 + TC, c);
        for (int64_t t0 = 0; t0 < L; t0 += TT) {
            const int64_t t1 = min64(t0 + TT, L);
            for (int64_t ch = c0; ch < c1; ch++) {
                const real *src = x + i * sb + ch * sc;
                real *dst = buf + (i * c + ch) * n;
                for (int64_t t = t0; t < t1; t++) dst[t] = src[t * st];
            }
        }
    }
}

/* Items of sp_store: (batch row, tile of TT steps). */
int64_t SUFFIX(sp_store_items)(int64_t b, int64_t L) { return b * ((L + TT - 1) / TT); }

/* y's block (b, L, c) with strides (sb, st, sc) ← buf (b, c, n)'s first L entries of each row. */
void SUFFIX(sp_store)(const real *buf, int64_t n, int64_t L, int64_t c, real *y, int64_t sb, int64_t st, int64_t sc,
                      int64_t item0, int64_t item1, int64_t nthreads) {
    const int64_t tiles = (L + TT - 1) / TT;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t item = item0; item < item1; item++) {
        const int64_t i = item / tiles, t0 = (item % tiles) * TT, t1 = min64(t0 + TT, L);
        for (int64_t c0 = 0; c0 < c; c0 += TC) {
            const int64_t c1 = min64(c0 + TC, c);
            for (int64_t t = t0; t < t1; t++) {
                real *dst = y + i * sb + t * st;
                const real *src = buf + i * c * n + t;
                for (int64_t ch = c0; ch < c1; ch++) dst[ch * sc] = src[ch * n];
            }
        }
    }
}

/* Items of sp_grad: (channel, block of FBLK frequencies). */
int64_t SUFFIX(sp_grad_items)(int64_t c, int64_t F) { return c * ((F + FBLK - 1) / FBLK); }

/* acc (c, F) += Σ_i conj(U) dY (need_k); dY (b, c, F) ← conj(K) dY (need_u); complex interleaved. */
void SUFFIX(sp_grad)(const real *U, real *dY, const real *K, real *acc, int64_t b, int64_t c, int64_t F,
                     int64_t need_u, int64_t need_k, int64_t item0, int64_t item1, int64_t nthreads) {
    const int64_t blocks = (F + FBLK - 1) / FBLK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t item = item0; item < item1; item++) {
        const int64_t ch = item / blocks, f0 = (item % blocks) * FBLK, f1 = min64(f0 + FBLK, F);
        real *restrict a = acc ? acc + ch * F * 2 : 0;
        const real *restrict k = K ? K + ch * F * 2 : 0;
        for (int64_t i = 0; i < b; i++) {
            const real *restrict u = U ? U + (i * c + ch) * F * 2 : 0;
            real *restrict d = dY + (i * c + ch) * F * 2;
            if (need_k) {
#pragma omp simd
                for (int64_t f = f0; f < f1; f++) {
                    const real ur = u[2 * f], ui = u[2 * f + 1], dr = d[2 * f], di = d[2 * f + 1];
                    a[2 * f] += ur * dr + ui * di, a[2 * f + 1] += ur * di - ui * dr;
                }
            }
            if (need_u) {
#pragma omp simd
                for (int64_t f = f0; f < f1; f++) {
                    const real kr = k[2 * f], ki = k[2 * f + 1], dr = d[2 * f], di = d[2 * f + 1];
                    d[2 * f] = kr * dr + ki * di, d[2 * f + 1] = kr * di - ki * dr;
                }
            }
        }
    }
}
