"""The backward of the chunked SSD scan of Mamba-2 as a Triton kernel, from the chunk-start states the forward kept.

Dao & Gu, "Transformers are SSMs", arXiv 2405.21060 (§3, §6). Per head h, chunk of T steps, a_t = Δ_t A_h, cs_t the
running sum of a inside the chunk, 𝓛_ts = exp(cs_t - cs_s) for s ≤ t, S the state at the chunk's start (kept by the
forward) and E its end (cs_e = cs_{T-1}), the forward was

    y_t = Σ_{s≤t} (C_t·B_s) 𝓛_ts Δ_s x_s + exp(cs_t) S C_t,       E = exp(cs_e) S + Σ_s exp(cs_e - cs_s) Δ_s x_s B_sᵀ.

Given ∂y and ∂E (the next chunk's ∂S; ∂H_L for the last), with GX_ts = ∂y_t · x_s, Q_ts = (C_t·B_s) 𝓛_ts Δ_s GX_ts,
w_s = exp(cs_e - cs_s) and BdE = B ∂Eᵀ (T, P):

    ∂x_s  = Δ_s (Σ_{t≥s} (C_t·B_s) 𝓛_ts ∂y_t + w_s BdE_s)
    ∂C_t  = Σ_{s≤t} 𝓛_ts Δ_s GX_ts B_s + exp(cs_t) ∂y_t S
    ∂B_s  = Σ_{t≥s} 𝓛_ts Δ_s GX_ts C_t + w_s Δ_s ∂E x_s
    ∂S    = exp(cs_e) ∂E + Σ_t exp(cs_t) ∂y_t C_tᵀ                       (carried to the chunk before)
    ∂Δ_s  = Σ_t Q_ts / Δ_s + w_s x_s·BdE_s + A_h ∂a_s,       ∂A_h = Σ_s Δ_s ∂a_s,
    ∂a_k  = Σ_{t≥k} Σ_{s<k} Q_ts + Σ_{t≥k} exp(cs_t) ∂y_t·(S C_t) + exp(cs_e) ⟨∂E, S⟩ + Σ_{s<k} F_s

with F_s = w_s Δ_s x_s·BdE_s: a_k enters 𝓛_ts for s < k ≤ t, exp(cs_t) (the carried state's output) for t ≥ k, and
exp(cs_e) and w_s = exp(cs_e - cs_s) for s < k. Each sum is formed over exactly those terms. (As the reverse running
sum of ∂cs_t = Σ_s Q_ts - Σ_{t'} Q_{t't} + ..., the large terms of pairs s, t ≥ k -- the diagonal's first -- cancel
only up to rounding: in float32 ∂A was 3e-5 off the float64 reference at N 33, where the chunked path is 3e-7 off.)
Σ_{s<k} F_s is such a sum too: an exclusive running sum, by a scan of (total, total but the last term) pairs, not the
inclusive one minus F_k, which cancels where w_s falls steeply (F_k ≫ F_{k-1}): at Δ·|A| = 20 per step ∂A was
0.1-0.2 off in float32 and 5e-9 in float64 (10: 4e-4), now 1e-7 and 8e-16 (F_{T-1} itself is in no ∂a_k of the
chunk). Σ_{s<k} Q_ts, the row's running sum minus Q_tk, keeps that subtraction: its error, ~eps·|Q_tk| for t > k, is
eps of a term of ∂a_{k+1}'s own sum, and ∂A = Σ Δ_k ∂a_k and ∂Δ_k (Σ_t Q_tk / Δ_k) hold that term too.
Every term is linear in the head channels' contributions, so a program (batch row, head, block of channels) writes its
own partial ∂Δ, ∂A, ∂B, ∂C, summed afterwards over the blocks (and, for ∂B and ∂C, over the heads of a group); ∂x and
∂h0 are its own. The Δ and x of steps past L are zero (as in the forward), so those steps contribute nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _exclusive_sum(s1, e1, s2, e2):
    # segments (total s, sum e of all but the last term) joined: the running sum before each step is formed from the
    # terms before it only (an inclusive running sum minus the step's own term cancels when that term dominates)
    return s1 + s2, s1 + e2


@triton.jit
def _ssd_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, ck_ptr, gy_ptr, ghL_ptr,
    gx_ptr, gdt_ptr, gA_ptr, gB_ptr, gC_ptr, gh0_ptr,
    Bsz, L, H, P, G, N, R, n_chunks, n_blocks,
    T: tl.constexpr, BP: tl.constexpr, NB: tl.constexpr, HAS_GHL: tl.constexpr, WANT_GH0: tl.constexpr,
    PREC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    hd = tl.program_id(1)
    blk = tl.program_id(2)
    g = hd // R  # the head's group
    p = blk * BP + tl.arange(0, BP)  # (BP,)
    n = tl.arange(0, NB)  # (NB,)
    t = tl.arange(0, T)  # (T,)
    pm = p < P
    nm = n < N
    sm = pm[:, None] & nm[None, :]
    A_h = tl.load(A_ptr + hd)
    s_off = ((b * H + hd) * P + p[:, None]) * N + n[None, :]  # (BP, NB) in (B, H, P, N)
    if HAS_GHL:
        dE = tl.load(ghL_ptr + s_off, mask=sm, other=0.0)  # (BP, NB): ∂ of the last chunk's end state
    else:
        dE = tl.zeros((BP, NB), dtype=x_ptr.dtype.element_ty)
    causal = t[:, None] >= t[None, :]  # (T, T): s ≤ t
    last = t == T - 1
    part = (hd % R) * n_blocks + blk  # this program's slice of the ∂B, ∂C partials
    gA = tl.zeros((T,), dtype=x_ptr.dtype.element_ty)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        tt = (c * T + t).to(tl.int64)  # (T,)
        tm = tt < L
        dtv = tl.load(dt_ptr + (b * L + tt) * H + hd, mask=tm, other=0.0)  # (T,)
        cs = tl.cumsum(dtv * A_h, 0)  # (T,)
        cs_e = tl.sum(tl.where(last, cs, 0.0), axis=0)
        xp_off = ((b * L + tt[:, None]) * H + hd) * P + p[None, :]  # (T, BP)
        xpm = tm[:, None] & pm[None, :]
        xv = tl.load(x_ptr + xp_off, mask=xpm, other=0.0)  # (T, BP)
        gyv = tl.load(gy_ptr + xp_off, mask=xpm, other=0.0)  # (T, BP)
        bc_off = ((b * L + tt[:, None]) * G + g) * N + n[None, :]  # (T, NB)
        bcm = tm[:, None] & nm[None, :]
        Bv = tl.load(B_ptr + bc_off, mask=bcm, other=0.0)  # (T, NB)
        Cv = tl.load(C_ptr + bc_off, mask=bcm, other=0.0)  # (T, NB)
        S = tl.load(ck_ptr + (((b * n_chunks + c) * H + hd) * P + p[:, None]) * N + n[None, :], mask=sm,
                    other=0.0)  # (BP, NB): the state at the chunk's start
        decay = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf")))  # (T, T): 𝓛
        CB = tl.dot(Cv, tl.trans(Bv), input_precision=PREC)  # (T, T): C_t·B_s
        GX = tl.dot(gyv, tl.trans(xv), input_precision=PREC)  # (T, T): ∂y_t·x_s over this block's channels
        DG = decay * dtv[None, :] * GX  # (T, T): 𝓛_ts Δ_s GX_ts
        Q = CB * DG  # (T, T)
        w = tl.exp(cs_e - cs)  # (T,)
        BdE = tl.dot(Bv, tl.trans(dE), input_precision=PREC)  # (T, BP)
        xBdE = tl.sum(xv * BdE, axis=1)  # (T,): x_s·(∂E B_s)
        # ∂x
        gx = dtv[:, None] * (tl.dot(tl.trans(CB * decay), gyv, input_precision=PREC) + w[:, None] * BdE)
        tl.store(gx_ptr + xp_off, gx, mask=xpm)
        # ∂C, ∂B (partials of this block of channels and head)
        gyS = tl.dot(gyv, S, input_precision=PREC)  # (T, NB): ∂y_t S
        ecs = tl.exp(cs)
        gC = tl.dot(DG, Bv, input_precision=PREC) + ecs[:, None] * gyS
        gB = tl.dot(tl.trans(DG), Cv, input_precision=PREC) + (w * dtv)[:, None] * tl.dot(xv, dE, input_precision=PREC)
        part_off = (((part * Bsz + b) * L + tt[:, None]) * G + g) * N + n[None, :]
        tl.store(gC_ptr + part_off, gC, mask=bcm)
        tl.store(gB_ptr + part_off, gB, mask=bcm)
        # ∂a (each term summed over the steps it reaches, not as differences of running sums), then ∂Δ and ∂A
        F = w * dtv * xBdE  # (T,)
        Qs = tl.where(t[:, None] > t[None, :], Q, 0.0)  # s < t (𝓛_tt = 1 has no exponent)
        Qk = tl.cumsum(Qs, 1) - Qs  # (T, T): [t, k] = Σ_{s<k} Q_ts
        ga = (tl.sum(tl.where(causal, Qk, 0.0), axis=0)  # Σ_{t≥k} Σ_{s<k} Q_ts
              + tl.cumsum(ecs * tl.sum(gyS * Cv, axis=1), 0, reverse=True)  # Σ_{t≥k} exp(cs_t) ∂y_t·(S C_t)
              + tl.exp(cs_e) * tl.sum(tl.sum(dE * S, axis=1), axis=0)
              + tl.associative_scan((F, F * 0), 0, _exclusive_sum)[1])  # + Σ_{s<k} F_s, those terms only
        gdt = tl.sum(CB * decay * GX, axis=0) + w * xBdE + A_h * ga
        tl.store(gdt_ptr + ((blk * Bsz + b) * L + tt) * H + hd, gdt, mask=tm)
        gA += dtv * ga
        # ∂ of the state at the chunk's start: the previous chunk's ∂E
        dE = tl.exp(cs_e) * dE + tl.dot(tl.trans(gyv * ecs[:, None]), Cv, input_precision=PREC)
    tl.store(gA_ptr + (b * n_blocks + blk) * H + hd, tl.sum(gA, axis=0))
    if WANT_GH0:
        tl.store(gh0_ptr + s_off, dE, mask=sm)


def ssd_backward_kernel(x, dt, A, B, C, ck, gy, ghL, T: int, BP: int, want_gh0: bool, num_warps: int = 8):
    """[∂x, ∂Δ, ∂A, ∂B, ∂C, ∂h0 or None] of the SSD scan by the kernel, from the forward's contiguous inputs, its
    chunk-start states ``ck`` (B, ⌈L/T⌉, H, P, N) at chunk T, the output gradients gy (B, L, H, P) and ghL
    (B, H, P, N) or None; BP channels per program."""
    Bsz, L, H, P = x.shape
    G, N = B.shape[2:]
    NB = max(16, triton.next_power_of_2(N))
    R = H // G
    n_blocks = triton.cdiv(P, BP)
    gy = gy.contiguous()
    ghL = None if ghL is None else ghL.contiguous()
    gx = torch.empty_like(x)
    gdt = x.new_empty(n_blocks, Bsz, L, H)
    gA = x.new_empty(Bsz, n_blocks, H)
    gB = x.new_empty(R * n_blocks, Bsz, L, G, N)
    gC = x.new_empty(R * n_blocks, Bsz, L, G, N)
    gh0 = x.new_empty(Bsz, H, P, N) if want_gh0 else gx  # written only when WANT_GH0
    _ssd_bwd_kernel[(Bsz, H, n_blocks)](
        x, dt, A, B, C, ck, gy, gy if ghL is None else ghL,
        gx, gdt, gA, gB, gC, gh0,
        Bsz, L, H, P, G, N, R, triton.cdiv(L, T), n_blocks,
        T=T, BP=BP, NB=NB, HAS_GHL=ghL is not None, WANT_GH0=want_gh0,
        PREC="tf32x3" if x.dtype == torch.float32 else "ieee", num_warps=num_warps,
    )
    return [gx, gdt.sum(0), gA.sum((0, 1)), gB.sum(0), gC.sum(0), gh0 if want_gh0 else None]
