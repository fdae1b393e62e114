/* The RG-LRU of Griffin and Hawk on the CPU, forward and backward, its gates' elementwise algebra fused with the scan.
 *
 * De et al., arXiv 2402.19427 §2.4, given the gates r, i ∈ (0, 1) (B, L, H), the input x (B, L, H) and Λ (H):
 *
 *     log a_t = -c r_t softplus(-Λ),   a_t = e^{log a_t},   m_t = √(1 - a_t²) = √(-expm1(2 log a_t)),
 *     h_t = a_t h_{t-1} + m_t (i_t x_t)
 *
 * with, at a segment start (resets[b, t] != 0), a_t = 0 and m_t = 1 (recurrentgemma's convention). The backward, from
 * the states h (the forward's output) and their gradients g (B, L, H) and g_last (B, H) (either may be NULL: zero):
 *
 *     λ_t = g_t + a_{t+1} λ_{t+1} (+ g_last at t = L - 1),   ∂a_t = λ_t h_{t-1},   ∂m_t = λ_t i_t x_t,
 *     ∂i_t = λ_t m_t x_t,   ∂x_t = λ_t m_t i_t,   ∂(log a_t) = a_t ∂a_t - 2 a_t² ∂m_t / √max(4 m_t², 1/G²),
 *     ∂r_t = -c softplus(-Λ) ∂(log a_t),   ∂Λ = Σ_{b,t} c r_t σ(-Λ) ∂(log a_t),   ∂h_{-1} = a_0 λ_0
 *
 * (G = 1000: the square root's derivative clipped as in recurrentgemma; at a segment start ∂a_t and ∂m_t reach
 * nothing). Work items are (batch row, block of VEC channels), one pass over time each; ∂Λ goes to one partial row per
 * batch row, which the caller sums. The PyTorch path (ops/rglru.py) makes ~8 elementwise passes over (B, L, H) in the
 * forward and ~15 in the backward around its scan.
 *
 * The two recurrences run on compensated pairs (a float value and the rounding error of its last addition, added
 * back at the next step: Fast2Sum) and, where a_t > 3/4, in increment form on e_t = a_t - 1 = expm1(log a_t)
 * (rglru_gates.h: accurate near 0, where a float32 a_t is not):
 *
 *     h_t = h_{t-1} + (e_t h_{t-1} + m_t i_t x_t),      λ_t = λ_{t+1} + (e_{t+1} λ_{t+1} + g_t)
 *
 * and directly (h_t = a_t h_{t-1} + m_t i_t x_t, the pair's error dropped) where a_t ≤ 3/4 (the memory is short, and
 * h + e h would cancel as a_t → 0), at a reset (a_t = 0: h_t = i_t x_t, λ_{t-1} = g_{t-1}; 0·inf is NaN, as on the
 * PyTorch paths) and where the increment is not finite (comp_step below). With a_t rounded to float32 and a float32
 * state, a_t's rounding near 1 (half an ulp, 3e-8, against 1 - a_t = 1e-5, random from step to step) and the state's
 * own rounding at each step both added up over the state's memory 1/(1 - a_t): with 1 - σ(Λ)^c log-uniform in [1e-5,
 * 1e-3] and r in [0.5, 1] (B 2, H 16) the forward was 3.0e-6, 3.7e-6, 4.4e-6 off a float64 loop at L = 4 096, 65 536,
 * 262 144 and the gradients up to 1.9e-6, 7.1e-6, 6.5e-6, where the chunked path is 6e-7 to 7e-7; now 6.6e-8,
 * 7.6e-8, 6.9e-8 and 1.7e-7, 3.4e-7, 1.8e-7 (tests/ops/test_rglru_native_float32_long.py).
 *
 * The float build runs whole vectors of channels (vectors.h) with the carried pairs in registers, several vectors
 * advanced together through time in an unrolled loop, so that each load and store instruction steps through memory
 * by one row per step (a stride the CPU's prefetcher follows): the per-lane loops below, one instruction stepping by
 * a vector within a row and by a row across them, ran the forward 3x slower at H ≥ 192 with the pair in two arrays
 * (Zen 4), and were what the backward had run on: B 8, L 4 096, H 256, one thread, 9.2 ms forward and 22 ms backward
 * against 9.6 and 60 ms before (13.8 and 22 against 44 and 100 in the AVX2 build). The double build, blocks of fewer
 * channels than a vector and compilers without vector extensions take the per-lane loops (in double e_t = a_t - 1,
 * exact for a_t ≥ 1/2, and the pair's error is below double's rounding).
 *
 * Compiled twice: as float (e^x by common.h's expr, expm1 near 0 by rglru_gates.h) and with -DSS_DOUBLE as double (libm's).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "rglru_gates.h"
#include "vectors.h"

#define VEC 64 /* channels per item */
#define MAX_SQRT_GRADIENT 1000

int64_t SUFFIX(rg_items)(int64_t Bsz, int64_t H) { return Bsz * ((H + VEC - 1) / VEC); }

/* The item's arrays, each at its batch row and first channel: x, r, i, h, g (L, H) rows H apart; h0, g_last, gh0 (VEC)
 * or NULL; resets (L) or NULL; sp = softplus(-Λ) (VEC). */
typedef struct {
    const real *x, *r, *i, *sp, *h0, *g, *g_last;
    const uint8_t *resets;
    real *h, *gx, *gr, *gi, *gh0;
    double *total; /* ∂Λ's sums over time (VEC) */
    real c;
    int64_t L, H;
} item_t;

/* One step of y ← a y + u on a compensated pair y = y1 + y2, from e = a (rounded) and em1 = a - 1 (accurate near 0).
 * Where em1 > -1/4 in increment form: y1 + d, d = em1 y1 + (a y2 + u), with the rounding error of that addition kept
 * in y2 (Fast2Sum; exact where |d| ≤ |y1|, as near a = 1 but where y1 is ~0). Elsewhere directly, a y1 + (a y2 + u)
 * with y2 = 0: near a = 0 y1 + d would cancel (at c = 100 the float32 kernel was 2.6e-3 off), and the memory is short.
 * Also directly where y1 + d is not finite (y1 infinite: inf - inf is NaN; or u): an infinite state stays infinite,
 * 0·inf at a reset (a = 0, em1 = -1) is NaN, as on the PyTorch paths, and y2 stays finite. */
static inline void comp_step(real *y1, real *y2, real e, real em1, real u) {
    const real tail = e * *y2 + u, d = em1 * *y1 + tail, n = *y1 + d, direct = e * *y1 + tail, err = d - (n - *y1);
    const int near = em1 > (real)-0.25 && n - n == 0; /* (n - n: 0 where n is finite, NaN where not) */
    *y1 = near ? n : direct;
    *y2 = near ? err : 0;
}

/* The forward of lanes [k0, w) of an item, one lane at a time (the loop vectorises across lanes). */
static void forward_lanes(const item_t *it_, int64_t k0, int64_t w) {
    const real c = it_->c;
    real s[VEC], s2[VEC]; /* h_t = s + s2 */
    for (int64_t k = k0; k < w; k++) s[k] = it_->h0 ? it_->h0[k] : 0, s2[k] = 0;
    for (int64_t t = 0; t < it_->L; t++) {
        const int64_t o = t * it_->H;
        const int reset = it_->resets ? it_->resets[t] != 0 : 0;
        const real *restrict xt = it_->x + o, *restrict rt = it_->r + o, *restrict it = it_->i + o, *restrict sp = it_->sp;
        real *restrict ht = it_->h + o;
#pragma omp simd
        for (int64_t k = k0; k < w; k++) {
            real e, em1, v;
            gate_parts((-c * rt[k]) * sp[k], &e, &em1, &v);
            comp_step(&s[k], &s2[k], reset ? 0 : e, reset ? -1 : em1, (reset ? 1 : SQRT(v)) * (it[k] * xt[k]));
            ht[k] = s[k];
        }
    }
}

/* The backward of lanes [k0, w) of an item, one lane at a time. */
static void backward_lanes(const item_t *it_, int64_t k0, int64_t w) {
    const real c = it_->c, inv_g2 = (real)1 / ((real)MAX_SQRT_GRADIENT * MAX_SQRT_GRADIENT);
    /* λ_{t+1} = l1 + l2 and a_{t+1}, a_{t+1} - 1 (at t = L - 1: g_last and 1, 0) */
    real l1[VEC], l2[VEC], an[VEC], en[VEC], acc[VEC], zeros[VEC] = {0};
    for (int64_t k = k0; k < w; k++) l1[k] = it_->g_last ? it_->g_last[k] : 0, l2[k] = 0, an[k] = 1, en[k] = 0, acc[k] = 0;
    for (int64_t t = it_->L - 1; t >= 0; t--) {
        const int64_t o = t * it_->H;
        const int reset = it_->resets ? it_->resets[t] != 0 : 0;
        /* restrict-qualified row pointers, NULLs replaced by a row of zeros: the loop below vectorises with no
         * aliasing checks (gcc's versioned loop fell back to scalar code: 9x the forward's time) */
        const real *restrict hp = t > 0 ? it_->h + o - it_->H : (it_->h0 ? it_->h0 : zeros);
        const real *restrict gt = it_->g ? it_->g + o : zeros;
        const real *restrict xt = it_->x + o, *restrict rt = it_->r + o, *restrict it = it_->i + o;
        const real *restrict sp = it_->sp;
        real *restrict gxt = it_->gx + o, *restrict grt = it_->gr + o, *restrict git = it_->gi + o;
#pragma omp simd
        for (int64_t k = k0; k < w; k++) {
            comp_step(&l1[k], &l2[k], an[k], en[k], gt[k]); /* λ_t = a_{t+1} λ_{t+1} + g_t */
            const real l = l1[k];
            const real la = (-c * rt[k]) * sp[k];
            real e, em1, v;
            gate_parts(la, &e, &em1, &v);
            const real sv = SQRT(v);
            const real m = reset ? 1 : sv;
            const real ix = it[k] * xt[k];
            const real da = reset ? 0 : l * hp[k];
            const real dm = reset ? 0 : l * ix;
            /* d√v/dv clipped: 1/√max(4v, 1/G²) = 1/(2√v) where 4v > 1/G², else G */
            const real dmdv = 4 * v > inv_g2 ? (real)0.5 / sv : (real)MAX_SQRT_GRADIENT;
            const real dla = e * da - 2 * e * e * dm * dmdv;
            gxt[k] = l * m * it[k];
            git[k] = l * m * xt[k];
            grt[k] = (-c * sp[k]) * dla;
            acc[k] += c * rt[k] * dla;
            an[k] = reset ? 0 : e;
            en[k] = reset ? -1 : em1;
        }
        if (t % 64 == 0)
            for (int64_t k = k0; k < w; k++) it_->total[k] += acc[k], acc[k] = 0;
    }
    if (it_->gh0)
        for (int64_t k = k0; k < w; k++) {
            comp_step(&l1[k], &l2[k], an[k], en[k], 0); /* a_0 λ_0 */
            it_->gh0[k] = l1[k] + l2[k];
        }
}

#if HAVE_VEC && !defined(SS_DOUBLE)
#define FULL_VECTORS 1
/* Vectors advanced together through time: their carried values (2 vectors each forward, 4 backward) stay in registers
 * (32 with AVX-512, 16 with AVX2). */
#if VBYTES == 64
#define GV 4
#else
#define GV 2
#endif
typedef int32_t vint_t __attribute__((vector_size(VBYTES)));
static inline vec_t vsel(vint_t m, vec_t a, vec_t b) { return (vec_t)((m & (vint_t)a) | (~m & (vint_t)b)); }
static inline vec_t vsplat(real x) { return (vec_t){0} + x; }
/* common.h's expr, lane by lane, with the same operations */
static inline vec_t expr_v(vec_t x0) {
    const vec_t x = vsel(x0 < -88.0f, vsplat(-88.0f), x0);
    const vint_t k = __builtin_convertvector(x * EXP_LOG2E + 128.5f, vint_t) - 128;
    const vec_t kf = __builtin_convertvector(k, vec_t);
    vec_t r = x - kf * EXP_LN2_HI;
    r = r - kf * EXP_LN2_LO;
    const vec_t y = EXP_POLY(r) * (vec_t)((k + 127) << 23);
    return vsel(x0 > 88.0f, vsplat((real)INFINITY), y);
}
/* rglru_gates.h's gate_parts, lane by lane */
static inline void gate_parts_v(vec_t la, vec_t *e, vec_t *em1, vec_t *v) {
    const vec_t a = expr_v(la), x = la;
    const vec_t p = EXPM1_TAYLOR(x);
    const vec_t m1 = vsel((x > -0.25f) & (x < 0.25f), p, a - 1.0f);
    *e = a;
    *em1 = m1;
    *v = -m1 * (2.0f + m1);
}
static inline vec_t sqrt_v(vec_t v) {
    vec_t s;
    for (int j = 0; j < LANES; j++) s[j] = sqrtf(v[j]);
    return s;
}
/* comp_step, lane by lane */
static inline void comp_step_v(vec_t *y1, vec_t *y2, vec_t e, vec_t em1, vec_t u) {
    const vec_t tail = e * *y2 + u, d = em1 * *y1 + tail, n = *y1 + d, direct = e * *y1 + tail, err = d - (n - *y1);
    const vint_t near = (em1 > -0.25f) & (n - n == 0);
    *y1 = vsel(near, n, direct);
    *y2 = vsel(near, err, vsplat(0));
}
/* Rows that are not on cache lines (H not a multiple of 64 bytes' reals, or a base off a line): each vector load then
 * spans two lines, and the full-vector loops prefetch the second line PF steps ahead (the CPU's prefetcher, following
 * each load instruction's stride, appears to fetch only the first): at H = 200 (B 4, L 4 096, one Zen 4 thread) the
 * float32 kernels ran 8.1 and 17.9 ms forward and backward with these prefetches, 12.1 and 25.2 ms without, and the
 * previous kernel 10.4 and 19.0 ms; on lines the prefetches cost time (5.8 and 16.1 ms against 4.6 and 12.1), so they
 * are issued only here. */
#define PF 8
static inline int split_rows(const item_t *it_) {
    const uintptr_t bases = (uintptr_t)it_->x | (uintptr_t)it_->r | (uintptr_t)it_->i | (uintptr_t)it_->h;
    return (bases | (uintptr_t)(it_->H * (int64_t)sizeof(real))) % 64 != 0;
}
#define LOAD(p) (*(const vec_u *)(p))
#define STORE(p, v) (*(vec_u *)(p) = (v))

/* The lane offset of the item's vector q of the pass from k0: k0 + q LANES, or w - LANES for the vector that would
 * pass w (it overlaps the one before it, recomputing some of its lanes: the same operations, the same values). */
static inline int64_t lane_offset(int64_t k0, int q, int64_t w) {
    return k0 + q * LANES < w - LANES ? k0 + q * LANES : w - LANES;
}

/* The forward of nq ≤ GV vectors of lanes from k0 (nq a constant where it is inlined; w ≥ LANES). The loop over the
 * vectors is unrolled: each load and store instruction then steps through memory by one row (H reals) per step, a
 * stride the CPU's prefetcher follows; rolled, one instruction stepping by LANES within a row and by a row across
 * them, the loop ran 3x slower at H ≥ 192 (Zen 4; not at H = 64, where the rows are contiguous). */
static inline __attribute__((always_inline)) void forward_vectors(const item_t *it_, int64_t k0, int64_t w,
                                                                  const int nq) {
    const real c = it_->c;
    const int split = split_rows(it_);
    vec_t s[GV], s2[GV], sp[GV];
    int64_t ko[GV];
    for (int q = 0; q < nq; q++) {
        ko[q] = lane_offset(k0, q, w);
        s[q] = it_->h0 ? LOAD(it_->h0 + ko[q]) : vsplat(0);
        s2[q] = vsplat(0);
        sp[q] = LOAD(it_->sp + ko[q]);
    }
    for (int64_t t = 0; t < it_->L; t++) {
        const int64_t o = t * it_->H;
        const int reset = it_->resets ? it_->resets[t] != 0 : 0;
#pragma GCC unroll 8
        for (int q = 0; q < nq; q++) {
            const int64_t oq = o + ko[q];
            if (split && t + PF < it_->L) {
                const int64_t pq = oq + PF * it_->H + LANES - 1;
                __builtin_prefetch(it_->x + pq), __builtin_prefetch(it_->r + pq), __builtin_prefetch(it_->i + pq);
            }
            const vec_t ix = LOAD(it_->i + oq) * LOAD(it_->x + oq);
            vec_t e, em1, v;
            if (reset) {
                e = vsplat(0), em1 = vsplat(-1), v = vsplat(1);
            } else {
                gate_parts_v((-c * LOAD(it_->r + oq)) * sp[q], &e, &em1, &v);
                v = sqrt_v(v);
            }
            comp_step_v(&s[q], &s2[q], e, em1, v * ix);
            STORE(it_->h + oq, s[q]);
        }
    }
}

/* The backward of nq ≤ GV vectors of lanes from k0, as forward_vectors. ∂Λ's sums take each lane once (an overlapping
 * vector's first lanes belong to the vector before it). */
static inline __attribute__((always_inline)) void backward_vectors(const item_t *it_, int64_t k0, int64_t w,
                                                                   const int nq) {
    const real c = it_->c, inv_g2 = (real)1 / ((real)MAX_SQRT_GRADIENT * MAX_SQRT_GRADIENT);
    const int split = split_rows(it_);
    vec_t l1[GV], l2[GV], an[GV], en[GV], acc[GV], sp[GV];
    int64_t ko[GV];
    for (int q = 0; q < nq; q++) {
        ko[q] = lane_offset(k0, q, w);
        l1[q] = it_->g_last ? LOAD(it_->g_last + ko[q]) : vsplat(0);
        l2[q] = en[q] = acc[q] = vsplat(0);
        an[q] = vsplat(1);
        sp[q] = LOAD(it_->sp + ko[q]);
    }
    for (int64_t t = it_->L - 1; t >= 0; t--) {
        const int64_t o = t * it_->H;
        const int reset = it_->resets ? it_->resets[t] != 0 : 0;
        const real *hp = t > 0 ? it_->h + o - it_->H : it_->h0; /* h_{t-1}'s row (NULL: zeros) */
#pragma GCC unroll 8
        for (int q = 0; q < nq; q++) {
            const int64_t oq = o + ko[q];
            if (split && t > PF) {
                const int64_t pq = oq - PF * it_->H + LANES - 1;
                __builtin_prefetch(it_->x + pq), __builtin_prefetch(it_->r + pq), __builtin_prefetch(it_->i + pq);
                __builtin_prefetch(it_->h + pq - it_->H);
                if (it_->g) __builtin_prefetch(it_->g + pq);
            }
            comp_step_v(&l1[q], &l2[q], an[q], en[q], it_->g ? LOAD(it_->g + oq) : vsplat(0)); /* λ_t */
            const vec_t l = l1[q];
            const vec_t xv = LOAD(it_->x + oq), iv = LOAD(it_->i + oq);
            if (reset) {
                STORE(it_->gx + oq, l * iv), STORE(it_->gi + oq, l * xv), STORE(it_->gr + oq, vsplat(0));
                an[q] = vsplat(0), en[q] = vsplat(-1);
                continue;
            }
            const vec_t rv = LOAD(it_->r + oq);
            vec_t e, em1, v;
            gate_parts_v((-c * rv) * sp[q], &e, &em1, &v);
            const vec_t sv = sqrt_v(v);
            const vec_t da = l * (hp ? LOAD(hp + ko[q]) : vsplat(0));
            const vec_t dm = l * (iv * xv);
            const vec_t dmdv = vsel(4 * v > inv_g2, 0.5f / sv, vsplat((real)MAX_SQRT_GRADIENT));
            const vec_t dla = e * da - 2 * e * e * dm * dmdv;
            STORE(it_->gx + oq, l * sv * iv);
            STORE(it_->gi + oq, l * sv * xv);
            STORE(it_->gr + oq, (-c * sp[q]) * dla);
            acc[q] += c * rv * dla;
            an[q] = e, en[q] = em1;
        }
        if (t % 64 == 0)
            for (int q = 0; q < nq; q++) {
                for (int j = 0; j < LANES; j++)
                    if (ko[q] + j >= k0 + q * LANES) it_->total[ko[q] + j] += acc[q][j];
                acc[q] = vsplat(0);
            }
    }
    if (it_->gh0)
        for (int q = 0; q < nq; q++) {
            comp_step_v(&l1[q], &l2[q], an[q], en[q], vsplat(0)); /* a_0 λ_0 */
            STORE(it_->gh0 + ko[q], l1[q] + l2[q]);
        }
}
#else
#define FULL_VECTORS 0
#endif

/* An item: passes of GV vectors (fewer in the last, whose last vector ends at w), or lanes one by one where w < LANES
 * (and in the double build). */
#if FULL_VECTORS
#define PASSES(fn)                                                                                                     \
    if (w >= LANES) {                                                                                                  \
        for (int64_t k0 = 0; k0 < w; k0 += GV * LANES) {                                                               \
            const int64_t n = (w - k0 + LANES - 1) / LANES; /* vectors left */                                       \
            if (n >= GV) fn(it_, k0, w, GV);                                                                           \
            else if (GV > 3 && n == 3) fn(it_, k0, w, GV > 3 ? 3 : 1);                                                 \
            else if (GV > 2 && n == 2) fn(it_, k0, w, GV > 2 ? 2 : 1);                                                 \
            else fn(it_, k0, w, 1);                                                                                    \
        }                                                                                                              \
        return;                                                                                                        \
    }
#else
#define PASSES(fn)
#endif
static void forward_item(const item_t *it_, int64_t w) {
    PASSES(forward_vectors)
    forward_lanes(it_, 0, w);
}

static void backward_item(const item_t *it_, int64_t w) {
    PASSES(backward_vectors)
    backward_lanes(it_, 0, w);
}

void SUFFIX(rg_forward)(const real *x, const real *r, const real *i, const real *Lambda, real c, const real *h0,
                        const uint8_t *resets, real *h, int64_t Bsz, int64_t L, int64_t H, int64_t item0,
                        int64_t item1, int64_t nthreads) {
    (void)Bsz;
    const int64_t nblk = (H + VEC - 1) / VEC;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        real sp[VEC] ALIGNED_LINE;
        for (int64_t k = 0; k < w; k++) sp[k] = softplus_e(-Lambda[c0 + k], exp_neg_abs(Lambda[c0 + k]));
        const int64_t o = b * L * H + c0;
        const item_t it_ = {.x = x + o, .r = r + o, .i = i + o, .sp = sp, .h0 = h0 ? h0 + b * H + c0 : NULL,
                            .resets = resets ? resets + b * L : NULL, .h = h + o, .c = c, .L = L, .H = H};
        /* The item's first channel of every row written once before the scan: h is usually fresh memory (the op's
         * torch.empty_like), and its pages' first-touch faults cost less taken here than inside the vector loop. The
         * op's float32 forward at B 8, L 4 096, H 256 (one Zen 4 thread, two builds alternated in one process) took
         * 1.04x the time of the previous kernel (a float32 a_t and state) with this pass, 1.11x without; where the
         * pages are present the pass costs 0.8 ms of 10. */
        for (int64_t t = 0; t < L; t++) h[o + t * H] = 0;
        forward_item(&it_, w);
    }
}

void SUFFIX(rg_backward)(const real *x, const real *r, const real *i, const real *Lambda, real c, const real *h0,
                         const uint8_t *resets, const real *h, const real *g, const real *g_last, real *gx, real *gr,
                         real *gi, real *gh0, real *gL, int64_t Bsz, int64_t L, int64_t H, int64_t item0,
                         int64_t item1, int64_t nthreads) {
    (void)Bsz;
    const int64_t nblk = (H + VEC - 1) / VEC;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / nblk, c0 = (item % nblk) * VEC, w = H - c0 < VEC ? H - c0 : VEC;
        real sp[VEC] ALIGNED_LINE, sg[VEC];
        double total[VEC]; /* ∂Λ's sum over time: ≤ 64 steps in a real sum, those partial sums here (one float running
                            * sum over all L steps drifts by ~L·eps when the terms share a sign: 1.6e-4 at L = 16 384) */
        for (int64_t k = 0; k < w; k++) {
            const real e = exp_neg_abs(Lambda[c0 + k]);
            sp[k] = softplus_e(-Lambda[c0 + k], e);
            sg[k] = sigmoid_e(-Lambda[c0 + k], e);
            total[k] = 0;
        }
        const int64_t o = b * L * H + c0;
        const item_t it_ = {.x = x + o, .r = r + o, .i = i + o, .sp = sp, .h0 = h0 ? h0 + b * H + c0 : NULL,
                            .g = g ? g + o : NULL, .g_last = g_last ? g_last + b * H + c0 : NULL,
                            .resets = resets ? resets + b * L : NULL, .h = (real *)h + o, .gx = gx + o, .gr = gr + o,
                            .gi = gi + o, .gh0 = gh0 ? gh0 + b * H + c0 : NULL, .total = total, .c = c, .L = L, .H = H};
        backward_item(&it_, w);
        for (int64_t k = 0; k < w; k++) /* ∂Λ of this batch row: d softplus(-Λ)/dΛ = -σ(-Λ), times -c r */
            gL[b * H + c0 + k] = (real)total[k] * sg[k];
    }
}
