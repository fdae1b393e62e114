"""The selective scan of Mamba-1 as Triton kernels, forward and backward, with Δ's softplus, skip and gate fused.

"Mamba: Linear-Time Sequence Modeling with Selective State Spaces", Gu & Dao, arXiv 2312.00752, §3.2 Algorithm 2
(eq. 2a-2b, with the official code's B̄ = Δ B) -- the semantics of
:func:`ssmkit.ops.selective.selective_scan_reference`, per channel h and state n:

    Δ_t = softplus(δ_t + b_Δ),   h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t,   y_t = (C_t · h_t + D u_t) ⊙ SiLU(z_t)

u, δ, z, y (B, L, H); A (H, N); B_t, C_t (B, L, G, N), one pair per group of P = H/G consecutive channels; an initial
state h_{-1} (B, H, N) and the final state h_{L-1} out, both differentiable (the official kernel has neither).

Forward kernel: one program per (batch row b, group g, block of channels of the group); the block's states (N per
channel) stay in registers for the whole sequence, tiles of T_f steps in order. Per tile it loads δ, u, z of the
block's channels and the B, C rows of its steps once, forms Δ (softplus, bias), Ā = exp(Δ A) and B̄u = Δ u B for every
step, channel and state, folds the carried state into the first step (b_0 += Ā_0 ⊙ h) and runs an associative scan
over time of the maps h -> a h + b (composed as a'(a h + b) + b'; Martin & Cundy, arXiv 1709.04057): the tile's
states, in registers. Then y_t = C_t · h_t + D u_t, times SiLU(z_t), is reduced over N and written; the (B, L, H, N)
states never reach memory. Steps past L get Δ = 0 (Ā = 1, no input): the state passes through them unchanged, so the
tile's last row is the carry. With gradients wanted, the state is written every T steps (``Tiles.chunk``, a multiple
of T_f): (B, ⌈L/T⌉, H, N) checkpoints.

Backward kernel, chunks of T steps in reverse with μ, the gradient flowing into the chunk's last state from later
steps (∂ℓ/∂h_{L-1} at first): recompute the chunk's states from its checkpoint, h_{t-1} by a scan of the steps one
back (Ā_{t-1} and B̄u_{t-1} loaded one step behind, the checkpoint entering at row 0), then Ā_t h_{t-1} and
h_t = Ā_t h_{t-1} + B̄u_t; the pre-gate output o_t = C_t · h_t + D u_t gives ∂z = g o SiLU'(z) and the gate's
g ← g SiLU(z); then the adjoint λ_t = C_t g_t + Ā_{t+1} ⊙ λ_{t+1} (with μ entering at the chunk's last row) by a
reverse associative scan, Ā_{t+1} from Δ loaded one step ahead; then

    ∂C_t = Σ_h g_t h_t,   ∂(Δu)_t = B_t · λ_t,   ∂B_t = Σ_h λ_t (Δu)_t,   Γ_t = λ_t ⊙ Ā_t h_{t-1},
    ∂Δ_t = Σ_n Γ_t A + ∂(Δu)_t u_t,   ∂A = Σ_{b,t} Γ_t Δ_t,   ∂u_t = ∂(Δu)_t Δ_t + D g_t,   ∂D = Σ_{b,t} g_t u_t,
    ∂δ_t = ∂Δ_t softplus'(δ_t + b_Δ),   ∂b_Δ = Σ_{b,t} ∂δ_t,   μ ← Ā_{t0} ⊙ λ_{t0},   ∂h_{-1} = μ after the first chunk.

(the same algorithm as ``_SelectiveScan.backward`` in ops/selective.py and ops/native/selective_scan.c). Γ is formed
from h_{t-1}, not as λ_t ⊙ (h_t - B̄u_t) (mamba-ssm's CUDA kernel's form, which needs no shifted tile): that difference
cancels where Ā_t h_{t-1} ≪ B̄u_t, and with Mamba's A_n = -n (N 16) and Δ ≈ 4 the float32 ∂A of the fast states was
wholly wrong (relative to each state's largest |∂A|: 1.0; 1.7e-3 at Δ ≈ 1.3; now ~2e-6, as the chunked path).
The sums over t stay in registers; ∂A, ∂D, ∂b_Δ are written per batch row and summed by torch (deterministic); ∂B
and ∂C, sums over the channels of a group, are summed over the block in registers and added into (B, L, G, N) by
atomics (their float32 rounding order varies run to run).

Softplus, skip and gate are fused (the bytes moved: u, δ, z, B, C read and y written, as the official kernel), not
left to PyTorch around the kernel (which would add ~3 passes over (B, L, H)). Softplus follows torch's
``F.softplus`` (threshold 20: Δ = δ above it, derivative 1), log1p(e^x) computed as log(1+e)·e/((1+e)-1).
Tile sizes (:class:`Tiles`) are first choices, not tuned on a GPU yet (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssmkit.ops.function_call import apply_function
from ssmkit.ops.opaque import kernel_op
from ssmkit.ops.selective import selective_scan_chunked
from ssmkit.ops.twice import graph_backward, wants_grad


class Tiles(NamedTuple):
    """Tile sizes and launch options of the kernels (all powers of two but ``num_stages``).

    ``chunk`` is the checkpoint interval: the forward keeps the state every ``chunk`` steps for the backward, whose
    tile height it is; the forward scans tiles of ``forward_chunk`` ≤ ``chunk`` steps.
    """

    chunk: int = 32  # the backward's tile height and the checkpoint interval (B·H·N states per chunk)
    forward_chunk: int = 8  # the forward's tile height
    block_h: int = 4  # channels per program of the forward
    backward_block_h: int = 4  # channels per program of the backward
    num_warps: int = 1  # warps per program of the forward
    backward_num_warps: int = 4
    num_stages: int = 1  # software pipelining of the chunk loops' loads (tl.range num_stages; > 1: async copies ahead)


# The defaults were chosen without a GPU, by compiling for sm_90 (Triton 3.9, N = 16, float32, every option on;
# scripts/triton_compile_check.py) and counting the SASS of one loop iteration per state element held by a thread:
# forward (T 8, 4 channels, 1 warp) 42 instructions, 64 registers, no barrier in the loop (T 32, 4 channels, 4
# warps: 55 and 16 barriers); backward (T 32, 4 channels, 4 warps) 126, 241 registers, no spill (T 32, 2 channels,
# 8 warps: 420). Static counts are not times: `ssmkit bench gpu --selective-tiles` compares tiles on a GPU. Since the
# backward forms h_{t-1} by its own scan (the probe of 2026-12-05) it needs 243 registers there (Triton 3.6: 251, was
# 245), still without a spill; the bench's tiles (T 16, 2 warps; T 64, 2 channels) compile without one too.
DEFAULT_TILES = Tiles()
FORWARD_TILE_ELEMENTS = 512  # T_f · BH · N per program of the forward at the defaults (N = 16), kept for larger N
BACKWARD_TILE_ELEMENTS = 2048  # chunk · BH · N of the backward


def fit_tiles(tiles: Tiles, NP: int) -> Tiles:
    """The default tiles shrunk for a state tile of NP > 16 (fewer channels, then shorter chunks), so that a
    program's tiles stay the size compiled and counted at N = 16; tiles given explicitly are kept as they are.

    Args:
        tiles: the tiles asked for.
        NP: the state tile, N rounded up to a power of two.
    """
    if tiles != DEFAULT_TILES:
        return tiles
    fwd, bwd = FORWARD_TILE_ELEMENTS // NP, BACKWARD_TILE_ELEMENTS // NP
    chunk = min(tiles.chunk, max(bwd, 2))
    forward_chunk = min(tiles.forward_chunk, max(fwd, 2), chunk)
    block_h = min(tiles.block_h, max(fwd // forward_chunk, 1))
    backward_block_h = min(tiles.backward_block_h, max(bwd // chunk, 1))
    return tiles._replace(chunk=chunk, forward_chunk=forward_chunk, block_h=block_h, backward_block_h=backward_block_h)


@triton.jit
def _lin(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return a2 * a1, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # torch's F.softplus (beta 1, threshold 20); log1p(e) = log(1 + e) e / ((1 + e) - 1), exact where 1 + e rounds to 1
    e = tl.exp(tl.minimum(x, 20.0))
    v = 1.0 + e
    lp = tl.where(v == 1.0, e, tl.log(v) * (e / (v - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _softplus_grad(x):
    # d softplus / dx = e / (1 + e) (1 above the threshold), as torch's softplus backward
    e = tl.exp(tl.minimum(x, 20.0))
    return tl.where(x > 20.0, 1.0, e / (1.0 + e))


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _steps(
    u_ptr, dl_ptr, B_ptr, A3, bias2, b, g, tt, live, L, H, G, h2, hm2, n2,
    N: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    # the tiles of steps tt (T, 1) where live (T, 1): u, δ + b_Δ (T, BH); Δ (T, BH), zero where not live and past the
    # block's channels (Ā = 1, B̄u = 0 there); B_t (T, 1, NP); Ā, B̄u (T, BH, NP)
    m2 = live & hm2  # (T, BH)
    off = (b * L + tt) * H + h2
    uu = tl.load(u_ptr + off, mask=m2, other=0.0)
    x = tl.load(dl_ptr + off, mask=m2, other=0.0)
    if HAS_BIAS:
        x += bias2
    if SOFTPLUS:
        dt = _softplus(x)
    else:
        dt = x
    dt = tl.where(m2, dt, 0.0)
    bc = ((b * L + tt) * G + g) * N + n2  # (T, NP)
    if N == n2.shape[1]:  # N a power of two: no mask along the states (vector loads)
        mbc = live & (n2 >= 0)
    else:
        mbc = live & (n2 < N)
    Bt = tl.load(B_ptr + bc, mask=mbc, other=0.0)[:, None, :]  # (T, 1, NP)
    dA = tl.exp(dt[:, :, None] * A3)  # (T, BH, NP)
    dBu = (dt * uu)[:, :, None] * Bt  # (T, BH, NP)
    return uu, x, dt, m2, off, bc, mbc, Bt, dA, dBu


@triton.jit
def _chunk(
    u_ptr, dl_ptr, B_ptr, C_ptr, A3, bias2, b, g, t0, L, H, G, h2, hm2, n2,
    N: tl.constexpr, T: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    # the chunk's tiles (_steps at t0 ... t0 + T - 1, steps past L not live) and C_t (T, 1, NP)
    tt = t0 + tl.arange(0, T)[:, None].to(tl.int64)  # (T, 1)
    uu, x, dt, m2, off, bc, mbc, Bt, dA, dBu = _steps(
        u_ptr, dl_ptr, B_ptr, A3, bias2, b, g, tt, tt < L, L, H, G, h2, hm2, n2, N, HAS_BIAS, SOFTPLUS
    )
    Ct = tl.load(C_ptr + bc, mask=mbc, other=0.0)[:, None, :]
    return uu, x, dt, m2, off, bc, mbc, Bt, Ct, dA, dBu


@triton.jit
def _previous_steps(
    u_ptr, dl_ptr, B_ptr, A3, bias2, b, g, t0, L, H, G, h2, hm2, n2,
    N: tl.constexpr, T: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    # Ā_{t-1}, B̄u_{t-1} (T, BH, NP) of the chunk's steps t0 + t: _steps one step back, row 0 (the step before the
    # chunk) and steps past L not live (Δ = 0)
    tt = t0 - 1 + tl.arange(0, T)[:, None].to(tl.int64)  # (T, 1)
    _, _, _, _, _, _, _, _, dA, dBu = _steps(
        u_ptr, dl_ptr, B_ptr, A3, bias2, b, g, tt, (tt >= t0) & (tt < L), L, H, G, h2, hm2, n2, N, HAS_BIAS, SOFTPLUS
    )
    return dA, dBu


@triton.jit
def _selective_fwd_kernel(
    u_ptr, dl_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, h0_ptr, y_ptr, hL_ptr, ck_ptr,
    L, H, G, P, n_chunks, n_blk,
    N: tl.constexpr, T: tl.constexpr, BH: tl.constexpr, NP: tl.constexpr, HAS_H0: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE_CK: tl.constexpr,
    CK_EVERY: tl.constexpr = 1, NUM_STAGES: tl.constexpr = 1,
):
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) // n_blk
    ch = (tl.program_id(1) % n_blk) * BH + tl.arange(0, BH)  # (BH,) channels within the group
    hh = g * P + ch  # (BH,) channels
    h2, hm2 = hh[None, :], (ch < P)[None, :]  # (1, BH)
    n2 = tl.arange(0, NP)[None, :]  # (1, NP)
    t3 = tl.arange(0, T)[:, None, None]  # (T, 1, 1)
    s_off = (hh[:, None] * N + n2)[None, :, :]  # (1, BH, NP): (h, n) of a state
    sm = hm2[:, :, None] & (n2 < N)[None, :, :]
    A3 = tl.load(A_ptr + s_off, mask=sm, other=0.0)  # (1, BH, NP)
    if HAS_H0:
        hs = tl.load(h0_ptr + b * H * N + s_off, mask=sm, other=0.0)
    else:
        hs = A3 * 0.0
    bias2 = A3  # placeholder when HAS_BIAS is False
    if HAS_BIAS:
        bias2 = tl.load(bias_ptr + h2, mask=hm2, other=0.0)  # (1, BH)
    if HAS_D:
        D2 = tl.load(D_ptr + h2, mask=hm2, other=0.0)
    for c in tl.range(0, n_chunks, num_stages=NUM_STAGES):
        t0 = c * T
        if SAVE_CK:  # the state before every CK_EVERY-th tile: checkpoint c // CK_EVERY
            n_ck = (n_chunks + CK_EVERY - 1) // CK_EVERY
            tl.store(ck_ptr + (b * n_ck + c // CK_EVERY) * H * N + s_off, hs, mask=sm & (c % CK_EVERY == 0))
        uu, x, dt, m2, off, bc, mbc, Bt, Ct, dA, dBu = _chunk(
            u_ptr, dl_ptr, B_ptr, C_ptr, A3, bias2, b, g, t0, L, H, G, h2, hm2, n2, N, T, HAS_BIAS, SOFTPLUS
        )
        dBu = tl.where(t3 == 0, dBu + dA * hs, dBu)  # the carried state enters at the first step
        _, Hs = tl.associative_scan((dA, dBu), 0, _lin)  # (T, BH, NP): h_t
        y = tl.sum(Hs * Ct, axis=2)  # (T, BH)
        if HAS_D:
            y += D2 * uu
        if HAS_Z:
            z = tl.load(z_ptr + off, mask=m2, other=0.0)
            y *= z * _sigmoid(z)
        tl.store(y_ptr + off, y, mask=m2)
        hs = tl.sum(tl.where(t3 == T - 1, Hs, 0.0), axis=0)[None, :, :]  # (1, BH, NP): the last row (Δ = 0 past L)
    tl.store(hL_ptr + b * H * N + s_off, hs, mask=sm)


@triton.jit
def _selective_bwd_kernel(
    u_ptr, dl_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, ck_ptr, gy_ptr, ghL_ptr,
    gu_ptr, gdl_ptr, gz_ptr, gB_ptr, gC_ptr, gA_ptr, gD_ptr, gbias_ptr, gh0_ptr,
    L, H, G, P, n_chunks, n_blk,
    N: tl.constexpr, T: tl.constexpr, BH: tl.constexpr, NP: tl.constexpr, HAS_GHL: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, WANT_GH0: tl.constexpr,
    NUM_STAGES: tl.constexpr = 1,
):
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) // n_blk
    ch = (tl.program_id(1) % n_blk) * BH + tl.arange(0, BH)
    hh = g * P + ch
    h2, hm2 = hh[None, :], (ch < P)[None, :]
    n2 = tl.arange(0, NP)[None, :]
    t3 = tl.arange(0, T)[:, None, None]
    t2 = tl.arange(0, T)[:, None]
    s_off = (hh[:, None] * N + n2)[None, :, :]
    sm = hm2[:, :, None] & (n2 < N)[None, :, :]
    A3 = tl.load(A_ptr + s_off, mask=sm, other=0.0)
    if HAS_GHL:
        mu = tl.load(ghL_ptr + b * H * N + s_off, mask=sm, other=0.0)  # (1, BH, NP)
    else:
        mu = A3 * 0.0
    bias2 = A3
    if HAS_BIAS:
        bias2 = tl.load(bias_ptr + h2, mask=hm2, other=0.0)
    if HAS_D:
        D2 = tl.load(D_ptr + h2, mask=hm2, other=0.0)
    gA = tl.sum(A3 * 0.0, axis=0)  # (BH, NP)
    gD = tl.sum(gA, axis=1) * 0.0  # (BH,)
    gbias = gD
    for i in tl.range(0, n_chunks, num_stages=NUM_STAGES):
        c = n_chunks - 1 - i
        t0 = c * T
        # 1. the chunk's states from its checkpoint
        hprev = tl.load(ck_ptr + (b * n_chunks + c) * H * N + s_off, mask=sm, other=0.0)
        uu, x, dt, m2, off, bc, mbc, Bt, Ct, dA, dBu = _chunk(
            u_ptr, dl_ptr, B_ptr, C_ptr, A3, bias2, b, g, t0, L, H, G, h2, hm2, n2, N, T, HAS_BIAS, SOFTPLUS
        )
        # h_{t-1} by a scan of the steps one back, the checkpoint entering at row 0; then Ā_t h_{t-1} and h_t
        dAp, dBup = _previous_steps(
            u_ptr, dl_ptr, B_ptr, A3, bias2, b, g, t0, L, H, G, h2, hm2, n2, N, T, HAS_BIAS, SOFTPLUS
        )
        _, Hp = tl.associative_scan((dAp, tl.where(t3 == 0, hprev, dBup)), 0, _lin)  # (T, BH, NP): h_{t-1}
        AH = dA * Hp  # Ā_t h_{t-1}
        Hs = AH + dBu  # (T, BH, NP): h_t
        # 2. the gate and the skip
        gy = tl.load(gy_ptr + off, mask=m2, other=0.0)  # (T, BH)
        if HAS_Z:
            z = tl.load(z_ptr + off, mask=m2, other=0.0)
            s = _sigmoid(z)
            o = tl.sum(Hs * Ct, axis=2)
            if HAS_D:
                o += D2 * uu
            tl.store(gz_ptr + off, gy * o * s * (1.0 + z * (1.0 - s)), mask=m2)
            gy = gy * z * s
        if HAS_D:
            gD += tl.sum(gy * uu, axis=0)
        # 3. the adjoint λ_t = C_t g_t + Ā_{t+1} λ_{t+1}, μ entering at the last row (Δ = 0 past L: λ passes unchanged)
        tn = t0 + 1 + t2.to(tl.int64)  # (T, 1): the next step
        mn = (t2 + 1 < T) & (tn < L) & hm2
        xn = tl.load(dl_ptr + (b * L + tn) * H + h2, mask=mn, other=0.0)
        if HAS_BIAS:
            xn += bias2
        if SOFTPLUS:
            xn = _softplus(xn)
        dAn = tl.exp(tl.where(mn, xn, 0.0)[:, :, None] * A3)  # (T, BH, NP): Ā_{t+1} (1 at the last row: unused)
        gy3 = gy[:, :, None]
        beta = Ct * gy3
        beta = tl.where(t3 == T - 1, beta + mu, beta)
        _, lam = tl.associative_scan((dAn, beta), 0, _lin, reverse=True)  # (T, BH, NP): λ_t
        # 4. the gradients
        gC = tl.sum(Hs * gy3, axis=1)  # (T, NP)
        dtu = dt * uu
        gB = tl.sum(lam * dtu[:, :, None], axis=1)
        tl.atomic_add(gB_ptr + bc, gB, mask=mbc)
        tl.atomic_add(gC_ptr + bc, gC, mask=mbc)
        gdtu = tl.sum(lam * Bt, axis=2)  # (T, BH)
        Gam = lam * AH  # λ_t ⊙ Ā_t h_{t-1} (not h_t - B̄u_t: that difference cancels when Ā_t h_{t-1} ≪ B̄u_t)
        gA += tl.sum(Gam * dt[:, :, None], axis=0)
        gdt = tl.sum(Gam * A3, axis=2) + gdtu * uu
        gu = gdtu * dt
        if HAS_D:
            gu += D2 * gy
        tl.store(gu_ptr + off, gu, mask=m2)
        if SOFTPLUS:
            gdt = gdt * _softplus_grad(x)
        gdt = tl.where(m2, gdt, 0.0)
        tl.store(gdl_ptr + off, gdt, mask=m2)
        gbias += tl.sum(gdt, axis=0)
        mu = tl.sum(tl.where(t3 == 0, dA * lam, 0.0), axis=0)[None, :, :]  # Ā_{t0} ⊙ λ_{t0}
    if WANT_GH0:
        tl.store(gh0_ptr + b * H * N + s_off, mu, mask=sm)
    s2 = hh[:, None] * N + n2  # (BH, NP)
    tl.store(gA_ptr + b * H * N + s2, gA, mask=(ch < P)[:, None] & (n2 < N))
    hm1 = ch < P
    if HAS_D:
        tl.store(gD_ptr + b * H + hh, gD, mask=hm1)
    if HAS_BIAS:
        tl.store(gbias_ptr + b * H + hh, gbias, mask=hm1)


def _forward_fake(u, delta, z, A, B, C, D, delta_bias, h0, softplus, tiles, save):
    Bsz, L, H = u.shape
    N, chunk = B.shape[3], tiles[0]
    ck = u.new_empty(Bsz, (L + chunk - 1) // chunk, H, N) if save else u.new_empty(1)
    return [torch.empty_like(u), u.new_empty(Bsz, H, N), ck]


@kernel_op("triton_selective_scan_forward", _forward_fake)
def _forward_kernel(
    u: Tensor, delta: Tensor, z: Optional[Tensor], A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
    delta_bias: Optional[Tensor], h0: Optional[Tensor], softplus: bool, tiles: list[int], save: bool,
) -> list[Tensor]:
    """The forward kernel's launch: [y (B, L, H), h_{L-1} (B, H, N), the states every ``tiles.chunk`` steps
    (B, ⌈L/chunk⌉, H, N) when ``save`` (else one element)], from u, δ, z (B, L, H), A (H, N), B, C (B, L, G, N), D,
    b_Δ (H,) and h0 (B, H, N) (z, D, b_Δ, h0 may be None), all contiguous; ``tiles`` the fields of a fitted
    :class:`Tiles`."""
    tiles = Tiles(*tiles)
    Bsz, L, H = u.shape
    G, N = B.shape[2], B.shape[3]
    P = H // G
    NP = max(triton.next_power_of_2(N), 2)
    T = tiles.forward_chunk
    BH = min(tiles.block_h, triton.next_power_of_2(P))
    n_blk = triton.cdiv(P, BH)
    y = torch.empty_like(u)
    hL = u.new_empty(Bsz, H, N)
    ck = u.new_empty(Bsz, triton.cdiv(L, tiles.chunk), H, N) if save else u.new_empty(1)  # checkpoints
    dummy = u.new_empty(1)
    opt = lambda t: dummy if t is None else t  # noqa: E731
    _selective_fwd_kernel[(Bsz, G * n_blk)](
        u, delta, opt(z), A, B, C, opt(D), opt(delta_bias), opt(h0), y, hL, ck,
        L, H, G, P, triton.cdiv(L, T), n_blk,
        N=N, T=T, BH=BH, NP=NP, HAS_H0=h0 is not None, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, SAVE_CK=save, CK_EVERY=tiles.chunk // T,
        NUM_STAGES=tiles.num_stages, num_warps=tiles.num_warps,
    )
    return [y, hL, ck]


def _backward_fake(u, delta, z, A, B, C, D, delta_bias, ck, gy, ghL, softplus, tiles, has_h0):
    Bsz, L, H = u.shape
    N = A.shape[1]
    none = u.new_empty(1)
    return [torch.empty_like(u), torch.empty_like(u), torch.empty_like(u) if z is not None else none,
            u.new_empty(H, N), torch.empty_like(B), torch.empty_like(C), u.new_empty(H) if D is not None else none,
            u.new_empty(H) if delta_bias is not None else none, u.new_empty(Bsz, H, N) if has_h0 else none]


@kernel_op("triton_selective_scan_backward", _backward_fake)
def _backward_kernel(
    u: Tensor, delta: Tensor, z: Optional[Tensor], A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
    delta_bias: Optional[Tensor], ck: Tensor, gy: Tensor, ghL: Optional[Tensor], softplus: bool, tiles: list[int],
    has_h0: bool,
) -> list[Tensor]:
    """The backward kernel's launch: [∂u, ∂δ, ∂z (B, L, H), ∂A (H, N), ∂B, ∂C (B, L, G, N), ∂D, ∂b_Δ (H,), ∂h0
    (B, H, N)] (one element for each of ∂z, ∂D, ∂b_Δ, ∂h0 not wanted), from the forward's inputs and checkpoints, ∂y
    (B, L, H) and ∂h_{L-1} (B, H, N) (None: unused), all contiguous."""
    tiles = Tiles(*tiles)
    Bsz, L, H = u.shape
    G, N = B.shape[2], B.shape[3]
    P = H // G
    NP = max(triton.next_power_of_2(N), 2)
    dummy = u.new_empty(1)
    gu, gdl = torch.empty_like(u), torch.empty_like(u)
    gz = torch.empty_like(u) if z is not None else u.new_empty(1)  # outputs never alias each other: fresh placeholders
    gB, gC = torch.zeros_like(B), torch.zeros_like(C)  # atomics add into these
    gA = u.new_empty(Bsz, H, N)
    gD = u.new_empty(Bsz, H) if D is not None else dummy
    gbias = u.new_empty(Bsz, H) if delta_bias is not None else dummy
    gh0 = u.new_empty(Bsz, H, N) if has_h0 else u.new_empty(1)
    BH = min(tiles.backward_block_h, triton.next_power_of_2(P))
    n_blk = triton.cdiv(P, BH)
    opt = lambda t: dummy if t is None else t  # noqa: E731
    _selective_bwd_kernel[(Bsz, G * n_blk)](
        u, delta, opt(z), A, B, C, opt(D), opt(delta_bias), ck, gy, opt(ghL),
        gu, gdl, gz, gB, gC, gA, gD, gbias, gh0,
        L, H, G, P, ck.shape[1], n_blk,
        N=N, T=tiles.chunk, BH=BH, NP=NP, HAS_GHL=ghL is not None, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, WANT_GH0=has_h0,
        NUM_STAGES=tiles.num_stages, num_warps=tiles.backward_num_warps,
    )
    sums = [t.sum(0) if given is not None else u.new_empty(1) for t, given in ((gD, D), (gbias, delta_bias))]
    return [gu, gdl, gz, gA.sum(0), gB, gC, *sums, gh0]


class _TritonSelectiveScan(torch.autograd.Function):
    """y (B, L, H) and h_{L-1} (B, H, N) by the forward kernel; every gradient by the backward kernel (each launch a
    custom op while torch.compile traces: :mod:`ssmkit.ops.opaque`).

    Inputs: u, δ, z (B, L, H) contiguous (z or None), A (H, N), B, C (B, L, G, N) contiguous, D, b_Δ (H,) or None,
    h0 (B, H, N) or None, softplus, tiles (:class:`Tiles`), grad (:func:`ssmkit.ops.twice.wants_grad` of the inputs
    at the call: the checkpoints are kept; ``ctx.needs_input_grad`` ignores grad mode, so a forward under
    ``torch.no_grad()`` kept them).
    """

    @staticmethod
    def forward(ctx, u, delta, z, A, B, C, D, delta_bias, h0, softplus, tiles, grad):  # type: ignore[override]
        NP = max(triton.next_power_of_2(B.shape[3]), 2)
        tiles = fit_tiles(tiles, NP)
        save = grad
        contiguous = lambda t: None if t is None else t.contiguous()  # noqa: E731
        A_c, D_c, bias_c, h0_c = (contiguous(t) for t in (A, D, delta_bias, h0))
        y, hL, ck = _forward_kernel(u, delta, z, A_c, B, C, D_c, bias_c, h0_c, softplus, list(tiles), save)
        if save:  # A, D and b_Δ contiguous (the kernels index them densely); then A, D, b_Δ, h0 as given
            ctx.save_for_backward(u, delta, z, A_c, B, C, D_c, bias_c, ck, A, D, delta_bias, h0)
        ctx.shape = (softplus, h0 is not None, tiles)
        ctx.set_materialize_grads(False)  # ghL is None when the final state is unused
        return y, hL

    @staticmethod
    def backward(ctx, gy, ghL):  # type: ignore[override]
        u, delta, z, A, B, C, D, delta_bias, ck, *given = ctx.saved_tensors
        softplus, has_h0, tiles = ctx.shape
        if torch.is_grad_enabled():  # create_graph: a double backward, through the chunked scan (ops/twice.py)
            inputs = (u, delta, z, given[0], B, C, given[1], given[2], given[3])  # as given to forward

            def chunked(u, delta, z, A, B, C, D, delta_bias, h0):
                return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, softplus, h0)

            return (*graph_backward(chunked, inputs, ctx.needs_input_grad[:9], (gy, ghL)), None, None, None)
        # the kernel's gradients (this path is not itself differentiable; autograd runs a plain backward without grad)
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        ghL = None if ghL is None else ghL.contiguous()
        gu, gdl, gz, gA, gB, gC, gD, gbias, gh0 = _backward_kernel(
            u, delta, z, A, B, C, D, delta_bias, ck, gy, ghL, softplus, list(tiles), has_h0)
        return (
            gu, gdl, gz if z is not None else None, gA, gB, gC, gD if D is not None else None,
            gbias if delta_bias is not None else None, gh0 if has_h0 else None, None, None, None,
        )


def _check_tiles(tiles: Tiles) -> None:
    """Raise ValueError unless every tile size is a power of two, forward_chunk ≤ chunk and num_stages ≥ 1."""
    if not isinstance(tiles, Tiles):
        raise ValueError(f"tiles must be a Tiles; got {type(tiles).__name__}")
    for name, v in tiles._asdict().items():
        if name != "num_stages" and (not isinstance(v, int) or v < 1 or v & (v - 1)):
            raise ValueError(f"tiles.{name} must be a power of two (a Triton tile size); got {v!r}")
    if tiles.forward_chunk > tiles.chunk:
        raise ValueError(f"tiles.forward_chunk must be <= tiles.chunk; got {tiles.forward_chunk} > {tiles.chunk}")
    if not isinstance(tiles.num_stages, int) or tiles.num_stages < 1:
        raise ValueError(f"tiles.num_stages must be an int >= 1; got {tiles.num_stages!r}")


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    state: torch.Tensor | None = None,
    return_state: bool = True,
    *,
    tiles: Tiles = DEFAULT_TILES,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The selective scan by the fused Triton kernels; equals :func:`ssmkit.ops.selective.selective_scan_reference`.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t, y_t = (C_t · h_t + D ⊙ u_t) ⊙ SiLU(z_t), Δ = softplus(δ + b_Δ)
    (arXiv 2312.00752 Algorithm 2), the states only in registers; memory: y plus B·⌈L/T⌉·H·N checkpoints when a
    gradient is needed. Every input is differentiable, the initial state and (through the final state) the last
    steps included. A double backward (``create_graph``) differentiates the chunked scan instead of the backward kernel
    (:mod:`ssmkit.ops.twice`).

    Args:
        u: (B, L, H) input, float32 or float64.
        delta: (B, L, H) step sizes δ before the bias and softplus.
        A: (H, N) state matrix.
        B: (B, L, N) input matrices shared by all channels, or (B, L, G, N), one per group of H/G channels.
        C: (B, L, N) or (B, L, G, N) output matrices, B's shape.
        D: (H,) skip, or None.
        z: (B, L, H) gate, or None.
        delta_bias: (H,) bias b_Δ added to δ, or None.
        delta_softplus: Δ = softplus(δ + b_Δ) when True, δ + b_Δ otherwise.
        state: (B, H, N) state h_{-1}, or None for zeros.
        return_state: also return the final state.
        tiles: tile sizes and launch options (:class:`Tiles`; a speed setting: the result is the same within
            rounding).

    Returns:
        y (B, L, H) and the final state h_{L-1} (B, H, N) (None when not asked for).
    """
    from ssmkit.ops.selective import _check_selective

    _check_selective(u, delta, A, B, C, D, z, delta_bias, state)
    _check_tiles(tiles)
    grouped = B.dim() == 4
    Bg = (B if grouped else B.unsqueeze(2)).contiguous()  # (B, L, G, N)
    Cg = (C if grouped else C.unsqueeze(2)).contiguous()
    grad = wants_grad(u, delta, z, A, B, C, D, delta_bias, state)
    y, h = apply_function(
        _TritonSelectiveScan,
        u.contiguous(), delta.contiguous(), None if z is None else z.contiguous(), A, Bg, Cg, D, delta_bias, state,
        bool(delta_softplus), tiles, grad,
    )
    return y, (h if return_state else None)
