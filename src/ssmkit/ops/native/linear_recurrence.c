/* The first-order linear recurrence h_t = a_t ⊙ h_{t-1} + b_t on the CPU, forward and backward, real or complex
 * (interleaved re/im, as torch stores complex tensors), with a time-varying gate a (B, L, K) or a time-invariant one
 * (K); b, h (B, L, K); h0 (B, K) or NULL. (LRU, arXiv 2303.06349 eq. 1: the modes of S5/LRU, the RG-LRU's scan.)
 *
 * Work items are (batch row, block of VEC channels); one pass over time each. The backward is the adjoint recurrence
 * (PyTorch's convention for complex gradients):
 *
 *     λ_t = g_t + conj(a_{t+1}) ⊙ λ_{t+1} (λ_{L-1} also takes the final state's gradient),   ∂b_t = λ_t,
 *     ∂a_t = λ_t ⊙ conj(h_{t-1}) (time-varying; summed over b and t into per-thread partials when time-invariant),
 *     ∂h_{-1} = conj(a_0) ⊙ λ_0.
 *
 * The running state h and adjoint λ are carried in double in both builds (loaded and stored as `real`): a float32
 * running state rounds every step and the errors add up over the mode's memory 1/(1 - |a|), so S5's states at
 * |a| = 0.9987 were 1.5e-5 off their values from the same float32 a and b (the chunked scan, which carries in double
 * every 64 steps, 3.7e-6; a double one, 1 rounding). For a time-invariant gate ∂a = Σ_{b,t} λ_t conj(h_{t-1}) is summed
 * in double too. Cost, float build, B 8, L 4 096, 32 complex channels, one thread: forward 0.35 -> 0.65 ms, backward
 * 0.55 -> 1.0 ms (~1 % of S5's or LRU's forward+backward at d_model 128).
 *
 * Compiled twice, as float and as double (common.h).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define VEC 32

/* Number of items for (B, K). */
int64_t SUFFIX(lr_items)(int64_t Bsz, int64_t K) { return Bsz * ((K + VEC - 1) / VEC); }

/* Forward over items [item0, item1): h (B, L, K) (complex: interleaved pairs, K complex channels). wfix = VEC when
 * every item is a full block, else 0; inlined by forward_item with constant wfix, varying and cplx, so that the
 * channel loops of a full block are straight vector code with no branches inside (see forward_item). */
static inline __attribute__((always_inline)) void forward_range(const real *a, int64_t varying, const real *b,
                                                                const real *h0, real *h, int64_t cplx, int64_t Bsz,
                                                                int64_t L, int64_t K, int64_t item0, int64_t item1,
                                                                int64_t wfix) {
    (void)Bsz;
    const int64_t nblk = (K + VEC - 1) / VEC, z = cplx ? 2 : 1; /* reals per channel */
    double hr[VEC], hi[VEC]; /* the running state, in double (file comment) */
    for (int64_t item = item0; item < item1; item++) {
        const int64_t bb = item / nblk, c0 = (item % nblk) * VEC, w = wfix ? wfix : (K - c0 < VEC ? K - c0 : VEC);
        for (int64_t c = 0; c < w; c++) {
            hr[c] = h0 ? h0[(bb * K + c0 + c) * z] : 0;
            hi[c] = (h0 && cplx) ? h0[(bb * K + c0 + c) * z + 1] : 0;
        }
        for (int64_t t = 0; t < L; t++) {
            const int64_t row = (bb * L + t) * K + c0;
            const real *restrict at = a + (varying ? row : c0) * z, *restrict bt = b + row * z;
            real *restrict ht = h + row * z;
            if (cplx) {
#pragma omp simd
                for (int64_t c = 0; c < w; c++) {
                    double ar = at[2 * c], ai = at[2 * c + 1];
                    double nr = ar * hr[c] - ai * hi[c] + (double)bt[2 * c];
                    double ni = ar * hi[c] + ai * hr[c] + (double)bt[2 * c + 1];
                    hr[c] = nr, hi[c] = ni;
                    ht[2 * c] = (real)nr, ht[2 * c + 1] = (real)ni;
                }
            } else {
#pragma omp simd
                for (int64_t c = 0; c < w; c++) {
                    hr[c] = (double)at[c] * hr[c] + (double)bt[c];
                    ht[c] = (real)hr[c];
                }
            }
        }
    }
}

/* Backward over items [item0, item1): from the states h (B, L, K), g (B, L, K) and glast (B, K) or NULL (either of g,
 * glast may be NULL for zero), writes gb (B, L, K), ga (B, L, K) when time-varying, gh0 (B, K) when not NULL; a
 * time-invariant ∂a is added into this thread's partial gA (K). */
static inline __attribute__((always_inline)) void backward_range(const real *a, int64_t varying, const real *h0,
                                                                 const real *h, const real *g, const real *glast,
                                                                 real *gb, real *ga, real *gh0, real *gA, int64_t cplx,
                                                                 int64_t Bsz, int64_t L, int64_t K, int64_t item0,
                                                                 int64_t item1, int64_t wfix) {
    (void)Bsz;
    const int64_t nblk = (K + VEC - 1) / VEC, z = cplx ? 2 : 1;
    /* the adjoint λ and a time-invariant ∂a's sum over b and t in double (file comment) */
    double lr[VEC], li[VEC], tr[VEC], ti[VEC];
    const real zeros[2 * VEC] = {0};
    for (int64_t item = item0; item < item1; item++) {
        const int64_t bb = item / nblk, c0 = (item % nblk) * VEC, w = wfix ? wfix : (K - c0 < VEC ? K - c0 : VEC);
        for (int64_t c = 0; c < w; c++) {
            lr[c] = glast ? glast[(bb * K + c0 + c) * z] : 0;
            li[c] = (glast && cplx) ? glast[(bb * K + c0 + c) * z + 1] : 0;
            tr[c] = 0, ti[c] = 0;
        }
        for (int64_t t = L - 1; t >= 0; t--) {
            const int64_t row = (bb * L + t) * K + c0;
            const real *restrict at = a + (varying ? row : c0) * z;
            const real *restrict gt = g ? g + row * z : zeros;
            /* h_{t-1}: the previous row, or h0 (zeros) at t = 0 */
            const real *restrict hp = t > 0 ? h + (row - K) * z : (h0 ? h0 + (bb * K + c0) * z : zeros);
            real *restrict gbt = gb + row * z, *restrict gat = varying ? ga + row * z : NULL;
            if (cplx) {
#pragma omp simd
                for (int64_t c = 0; c < w; c++) {
                    double mr = lr[c] + gt[2 * c], mi = li[c] + gt[2 * c + 1]; /* λ_t */
                    double pr = hp[2 * c], pi = hp[2 * c + 1];
                    gbt[2 * c] = (real)mr, gbt[2 * c + 1] = (real)mi;
                    double dar = mr * pr + mi * pi, dai = mi * pr - mr * pi; /* λ conj(h_{t-1}) */
                    if (varying) /* ∂a_t, or the time-invariant sum */
                        gat[2 * c] = (real)dar, gat[2 * c + 1] = (real)dai;
                    else
                        tr[c] += dar, ti[c] += dai;
                    double ar = at[2 * c], ai = at[2 * c + 1];
                    lr[c] = ar * mr + ai * mi; /* conj(a_t) λ_t */
                    li[c] = ar * mi - ai * mr;
                }
            } else {
#pragma omp simd
                for (int64_t c = 0; c < w; c++) {
                    double m = lr[c] + gt[c];
                    gbt[c] = (real)m;
                    if (varying)
                        gat[c] = (real)(m * hp[c]); /* ∂a_t, or the time-invariant sum */
                    else
                        tr[c] += m * hp[c];
                    lr[c] = at[c] * m;
                }
            }
        }
        for (int64_t c = 0; c < w; c++) {
            if (gh0) {
                gh0[(bb * K + c0 + c) * z] = (real)lr[c];
                if (cplx) gh0[(bb * K + c0 + c) * z + 1] = (real)li[c];
            }
            if (!varying) {
                gA[(c0 + c) * z] += (real)tr[c];
                if (cplx) gA[(c0 + c) * z + 1] += (real)ti[c];
            }
        }
    }
}

/* One item by the copy of forward_range or backward_range for its case: a full block with varying and cplx as
 * constants, or the generic copy for a partial block. (The constant copies make the RG-LRU's and S5/LRU's scans
 * vector code without per-element branches on varying and cplx.) CALL(V, C, W) runs the copy. */
#define BY_CASE(CALL)                                                                                                  \
    do {                                                                                                               \
        if (K - (item % ((K + VEC - 1) / VEC)) * VEC < VEC)                                                            \
            CALL(varying, cplx, 0);                                                                                    \
        else if (cplx)                                                                                                 \
            varying ? CALL(1, 1, VEC) : CALL(0, 1, VEC);                                                               \
        else                                                                                                           \
            varying ? CALL(1, 0, VEC) : CALL(0, 0, VEC);                                                               \
    } while (0)

static void forward_item(const real *a, int64_t varying, const real *b, const real *h0, real *h, int64_t cplx,
                         int64_t Bsz, int64_t L, int64_t K, int64_t item) {
#define FWD(V, C, W) forward_range(a, V, b, h0, h, C, Bsz, L, K, item, item + 1, W)
    BY_CASE(FWD);
#undef FWD
}

static void backward_item(const real *a, int64_t varying, const real *h0, const real *h, const real *g,
                          const real *glast, real *gb, real *ga, real *gh0, real *gA, int64_t cplx, int64_t Bsz,
                          int64_t L, int64_t K, int64_t item) {
#define BWD(V, C, W) backward_range(a, V, h0, h, g, glast, gb, ga, gh0, gA, C, Bsz, L, K, item, item + 1, W)
    BY_CASE(BWD);
#undef BWD
}

/* The entries: forward_item and backward_item over the items [item0, item1) on nthreads threads, one item at a
 * time; the items of batch row b add into the partial gA + b·K·z (z = 2 reals per complex channel; disjoint channels;
 * per row, not per thread, so the caller's sum has a fixed order whatever the scheduling). */
void SUFFIX(lr_forward)(const real *a, int64_t varying, const real *b, const real *h0, real *h, int64_t cplx,
                        int64_t Bsz, int64_t L, int64_t K, int64_t item0, int64_t item1, int64_t nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t item = item0; item < item1; item++) forward_item(a, varying, b, h0, h, cplx, Bsz, L, K, item);
}

void SUFFIX(lr_backward)(const real *a, int64_t varying, const real *h0, const real *h, const real *g,
                         const real *glast, real *gb, real *ga, real *gh0, real *gA, int64_t cplx, int64_t Bsz,
                         int64_t L, int64_t K, int64_t item0, int64_t item1, int64_t nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t item = item0; item < item1; item++)
        backward_item(a, varying, h0, h, g, glast, gb, ga, gh0, gA + (item / ((K + VEC - 1) / VEC)) * K * (cplx ? 2 : 1),
                      cplx, Bsz, L, K, item);
}
