/* Mamba-2's output path on the CPU, forward and backward, one pass over each row: the skip, the SiLU gate and the
 * grouped RMSNorm (arXiv 2405.21060 §7, Figure 6),
 *
 *     v = (y + D ⊙ x) ⊙ SiLU(z)                         (gate first: the official default)
 *     s_g = v_g / m_g,   n_g = s_g / √(mean(s_g²) + eps / m_g²)  (= v_g / √(mean(v_g²) + eps)),   out = n ⊙ w
 *
 * or, norm before gate, v = y + D ⊙ x and out = n ⊙ w ⊙ SiLU(z). Each group g of K = E/G channels is first scaled by
 * m_g = 2^⌈log2 max(max|v_g|, 1)⌉ (the largest finite power of two at most), exactly as ssmkit.layers.mamba2.GatedRMSNorm
 * does (its squares stay ≤ ~4, so a group beyond ~1.8e19 is normalised in float32 too; a power of two scales exactly,
 * and mean(v²/m²) + eps/m² is mean(v²) + eps over m²). y, out (rows, E) contiguous; x and z (rows, E) with row strides
 * xs and zs (views into the projections' outputs); D, w (E); x and D may be NULL (no skip).
 *
 * Backward, with ∂n = ∂out ⊙ w (⊙ SiLU(z) before the gate) and r = 1/√(mean(s²) + eps/m²) of s = v/m:
 *
 *     ∂s = r (∂n - n mean(∂n ⊙ n)),   ∂v = ∂s / m,   ∂w = Σ_rows ∂out ⊙ n (⊙ SiLU(z)),
 *     ∂y = ∂v ⊙ SiLU(z) (gate first; else ∂v),   ∂z = ∂v ⊙ (y + D x) ⊙ SiLU'(z) (gate first; else ∂out ⊙ n w SiLU'(z)),
 *     ∂x = D ⊙ ∂y,   ∂D = Σ_rows ∂y ⊙ x,   SiLU'(z) = σ(z) (1 + z (1 - σ(z)))
 *
 * (m is a constant of the value: the gradient at fixed m is the exact one). Work items are blocks of RB rows; ∂w and ∂D
 * are summed per item into partial rows (2, E) that the caller sums (a fixed order whatever the scheduling).
 *
 * Compiled twice, as float (σ by common.h's exponential) and with -DSS_DOUBLE as double (libm's exp).
 */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gated_rows.h"

#define RB 64 /* rows per item */

int64_t SUFFIX(gn_items)(int64_t rows) { return (rows + RB - 1) / RB; }

/* One row's backward: ∂y (gy), ∂x (gx, when hasx), ∂z (gz); adds ∂w and ∂D into pw, pD. v, sg: E scratch values. */
static inline __attribute__((always_inline)) void backward_row(
    const real *restrict y, const real *restrict x, const real *restrict D, const real *restrict z,
    const real *restrict w, const real *restrict go, real *restrict gy, real *restrict gx, real *restrict gz,
    real *restrict pw, real *restrict pD, real *restrict v, real *restrict sg, int64_t E, int64_t G, real eps, int hasx,
    int nbg) {
    const int64_t K = E / G;
    row_values(y, x, D, z, v, sg, E, hasx, nbg);
    for (int64_t c0 = 0; c0 < E; c0 += K) {
        const real inv = 1 / group_scale(v + c0, K);
        const real r = group_rstd(v + c0, K, inv, eps);
        real dot = 0; /* Σ ∂n ⊙ n */
#pragma omp simd reduction(+ : dot)
        for (int64_t c = c0; c < c0 + K; c++) {
            const real n = v[c] * inv * r, sz = z[c] * sg[c];
            const real gn = nbg ? go[c] * w[c] * sz : go[c] * w[c]; /* ∂n */
            if (nbg) gz[c] = go[c] * n * w[c] * sg[c] * (1 + z[c] * (1 - sg[c]));
            pw[c] += nbg ? go[c] * n * sz : go[c] * n;
            gy[c] = gn; /* ∂n for now */
            dot += gn * n;
        }
        dot /= K;
#pragma omp simd
        for (int64_t c = c0; c < c0 + K; c++) {
            const real n = v[c] * inv * r;
            const real gv = r * (gy[c] - n * dot) * inv; /* ∂v */
            real gb = gv;                               /* ∂(y + D x) */
            if (!nbg) {
                const real base = hasx ? y[c] + D[c] * x[c] : y[c];
                gz[c] = gv * base * sg[c] * (1 + z[c] * (1 - sg[c]));
                gb = gv * (z[c] * sg[c]);
            }
            gy[c] = gb;
            if (hasx) {
                gx[c] = D[c] * gb;
                pD[c] += gb * x[c];
            }
        }
    }
}

/* CALL(hasx, nbg) with both as constants. */
#define ROW_CASES(CALL)                                                                                                \
    do {                                                                                                               \
        if (x && nbg) {                                                                                                \
            CALL(1, 1);                                                                                                \
        } else if (x) {                                                                                                \
            CALL(1, 0);                                                                                                \
        } else if (nbg) {                                                                                              \
            CALL(0, 1);                                                                                                \
        } else {                                                                                                       \
            CALL(0, 0);                                                                                                \
        }                                                                                                              \
    } while (0)

static void forward_rows(const real *y, const real *x, int64_t xs, const real *D, const real *z, int64_t zs,
                         const real *w, real *out, real *v, int64_t r0, int64_t r1, int64_t E, int64_t G, real eps,
                         int64_t nbg) {
#define FWD(HX, NB)                                                                                                    \
    for (int64_t r = r0; r < r1; r++)                                                                                  \
    forward_row(y + r * E, HX ? x + r * xs : NULL, D, z + r * zs, w, out + r * E, v, v + E, E, G, eps, HX, NB)
    ROW_CASES(FWD);
#undef FWD
}

static void backward_rows(const real *y, const real *x, int64_t xs, const real *D, const real *z, int64_t zs,
                          const real *w, const real *go, real *gy, real *gx, real *gz, real *pw, real *pD, real *v,
                          int64_t r0, int64_t r1, int64_t E, int64_t G, real eps, int64_t nbg) {
#define BWD(HX, NB)                                                                                                    \
    for (int64_t r = r0; r < r1; r++)                                                                                  \
    backward_row(y + r * E, HX ? x + r * xs : NULL, D, z + r * zs, w, go + r * E, gy + r * E, HX ? gx + r * E : NULL, \
                 gz + r * E, pw, pD, v, v + E, E, G, eps, HX, NB)
    ROW_CASES(BWD);
#undef BWD
}

/* The entries, over the items [item0, item1) (blocks of RB rows) on nthreads threads. Nonzero: a scratch buffer could
 * not be allocated. */
int SUFFIX(gn_forward)(const real *y, const real *x, int64_t xs, const real *D, const real *z, int64_t zs,
                       const real *w, real *out, int64_t rows, int64_t E, int64_t G, real eps, int64_t nbg,
                       int64_t item0, int64_t item1, int64_t nthreads) {
    int fail = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : fail)
    for (int64_t item = item0; item < item1; item++) {
        real *v = alloc_lines(2 * E * sizeof(real));
        if (!v) {
            fail = 1;
            continue;
        }
        const int64_t r1 = (item + 1) * RB < rows ? (item + 1) * RB : rows;
        forward_rows(y, x, xs, D, z, zs, w, out, v, item * RB, r1, E, G, eps, nbg);
        free(v);
    }
    return fail;
}

int SUFFIX(gn_backward)(const real *y, const real *x, int64_t xs, const real *D, const real *z, int64_t zs,
                        const real *w, const real *go, real *gy, real *gx, real *gz, real *part, int64_t rows,
                        int64_t E, int64_t G, real eps, int64_t nbg, int64_t item0, int64_t item1, int64_t nthreads) {
    int fail = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : fail)
    for (int64_t item = item0; item < item1; item++) {
        real *v = alloc_lines(2 * E * sizeof(real));
        if (!v) {
            fail = 1;
            continue;
        }
        real *pw = part + item * 2 * E, *pD = pw + E; /* this item's partial sums, zeroed by the caller */
        const int64_t r1 = (item + 1) * RB < rows ? (item + 1) * RB : rows;
        backward_rows(y, x, xs, D, z, zs, w, go, gy, gx, gz, pw, pD, v, item * RB, r1, E, G, eps, nbg);
        free(v);
    }
    return fail;
}
