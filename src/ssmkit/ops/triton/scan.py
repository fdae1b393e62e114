"""The diagonal LTI scan fused with its output contraction, as Triton kernels (forward and backward).

Diagonal LTI SSM, recurrent view (Gu, Gupta, Goel, Ré, arXiv 2206.11893, §2), complex modes (conjugate pairs are
folded into C by the caller, as the layers do: pass 2·C):

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,    y_t = Re(Σ_n C_n x_{t,n}) + D u_t

The sequence is cut into chunks of T steps and the chunks into groups of G consecutive chunks, one group per program
and block of channels, so that the grid (B, H/BH, L/(G·T)) fills the GPU even at batch 1 (:func:`plan_groups`).
The forward is three passes:
    (A) every group's end state from zero (all groups but the last, in parallel): per chunk the reduction
        s = Σ_t Ā^{T-1-t} B̄ u_t and x ← Ā^T x + s, by a table of Ā^{T-1-t} B̄ (no scan, u read once);
    (B) the carry across groups, x_g = Ā^{G·T} x_{g-1} + S_g (Ā^{G·T} in float64, rounded once), by
        :func:`ssmkit.ops.recurrence.linear_recurrence_chunked` over the L/(G·T) groups: every group's start state;
    (C) every group again from its start state, its chunks in order, the block's states in registers between chunks.
        Per chunk: (1) load the chunk's inputs u_t of the block's channels and form B̄ u_t for every step, channel
        and mode; (2) the chunk's states from zero by an associative scan over t of the maps x -> a x + b, composed
        as a'(a x + b) + b' (Martin & Cundy, arXiv 1709.04057), plus the carried state's free response
        Ā^{t+1} x_prev (a power table); (3) y_t = Σ_n Re(C_n x_{t,n}) + D u_t, reduced in registers and written:
        the (B, L, H, N) states never reach memory; (4) x_prev ← the chunk's last state; with gradients wanted,
        x_prev is also written as the chunk's checkpoint (B, L/T, H, N).
With one group (G ≥ L/T) (A) and (B) are skipped and (C) is one sequential walk per row and block of channels.

Backward (adjoint of the recurrence, in PyTorch's convention for complex gradients, ḡ = ∂ℒ/∂Re + i ∂ℒ/∂Im):
λ_t = conj(Ā) λ_{t+1} + conj(C) dy_t with λ_{L-1} ∋ the final state's gradient, and

    du_t = Re Σ_n conj(B̄_n) λ_{t,n} + D dy_t,   dB̄ = Σ u_t λ_t,   dĀ = Σ conj(x_{t-1}) λ_t,   dC = Σ dy_t conj(x_t),
    dx_{-1} = conj(Ā) λ_0.

Again three passes over groups: (A) every group's gradient into the state before it from its own dy_t alone (the last
group's also from the final state's gradient), per chunk in reverse μ ← conj(Σ_t Ā^{t+1} C dy_t) + conj(Ā^r) μ;
(B) the reverse carry μ_{g-1} = conj(Ā^{G·T}) μ_g + M_g; (C) every group's chunks in reverse from its μ: each
chunk recomputes its states from its checkpoint (step 2 again), and its λ_t (and λ_{t+1}, for dĀ without shifting a
tile) by reverse associative scans plus the carried gradient μ (what flows into the chunk's last state from later
steps) times conj(Ā)^k. The sums over t stay in registers; the sums over b and groups are one torch reduction of a
(B, L/(G·T), 6, H, N) buffer (deterministic: no atomics).

Power tables Ā^k (k ≤ T) are built in float64 and rounded once (:func:`ssmkit.ops.chunked.wide_powers`), as in
the chunked path. Tile sizes and the programs per SM are first choices, not tuned on a GPU yet (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from ssmkit.ops._checks import check_chunk_size, check_params, check_skip
from ssmkit.ops.chunked import ssm_scan_chunked, wide_int_power, wide_powers
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.opaque import kernel_op
from ssmkit.ops.recurrence import linear_recurrence_chunked
from ssmkit.ops.twice import graph_backward, wants_grad

DEFAULT_CHUNK = 32  # T: steps per chunk (the scan's tile height)
DEFAULT_BLOCK_H = 2  # BH: channels per program of the forward
BACKWARD_BLOCK_H = 1  # channels per program of the backward (it holds about twice the forward's tiles)
NUM_WARPS = 8
# Compiled for sm_90 (Triton 3.9, 32 complex modes, T = 32, float32), registers per thread: forward 2 channels
# 224 with 4 warps, 128 with 8; backward 2 channels 255 + spills with 4 or 8 warps, 1 channel 255 + 32 B of
# spills with 4 warps, 146 and none with 8. Hence 8 warps, 2 and 1 channels (not timed on a GPU yet).
# A program's four scanned (T, BH, NP) tiles at those defaults: 2 048 elements. Triton 3.6 (the GPU sessions'
# version) stages an associative scan's operands in shared memory, 4·T·BH·NP elements: 32 KB in float32 at the
# defaults, but 256 KB in float64 at 128 complex modes (d_state 256), over the 227 KB of an H100/H200, where 3.9
# keeps them in registers and spills. ``fit_tiles`` keeps T·BH·NP at this size for larger states.
TILE_ELEMENTS = DEFAULT_CHUNK * DEFAULT_BLOCK_H * 32
MIN_CHUNK = 2
# Programs the grid aims at per streaming multiprocessor when it cuts the chunks into groups (``plan_groups``): a few
# per SM, so that one waiting on memory leaves others to run. A first choice, not measured yet; without CUDA (the
# interpreter) the SM count is taken as ``DEFAULT_SMS`` (an H100/H200's 132).
PROGRAMS_PER_SM = 4
DEFAULT_SMS = 132
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def padded_modes(N: int) -> int:
    """NP, the kernels' state tile: N complex modes rounded up to a power of two, at least 2."""
    return max(triton.next_power_of_2(N), 2)


def fit_tiles(NP: int, chunk_size: int | None = None, block_h: int | None = None) -> tuple[int, int]:
    """The tiles of a call, chunk length T and channels per program BH, for a state tile of NP complex modes (N rounded
    up to a power of two).

    Tiles given are kept as they are. The defaults (T 32, BH 2) are kept up to NP = 32 (S4D's d_state 64) and
    shrunk above it, the forward's channels first, then the chunk (down to ``MIN_CHUNK``), so that T·BH·NP stays at
    ``TILE_ELEMENTS``: NP 64 gives T 32 and BH 1, NP 128 T 16, NP 256 T 8. Measured compiling for sm_90 through the
    launchers (``scripts/triton_launch_check.py``): with the defaults at NP 128, float64, Triton 3.6 needed 256 KB of
    shared memory (the launch would raise ``OutOfResources``) and 3.9 spilled 1.4-1.8 KB per thread (3.9-8.7 KB at
    NP 256).

    Args:
        NP: the padded state size, a power of two >= 2.
        chunk_size: T asked for, or None for the fitted default.
        block_h: the forward's BH asked for, or None for the fitted default.

    Returns:
        T and BH, as a pair of ints.
    """
    BH = DEFAULT_BLOCK_H if block_h is None else block_h
    T = DEFAULT_CHUNK if chunk_size is None else chunk_size
    if block_h is None:
        BH = max(1, min(BH, TILE_ELEMENTS // (T * NP)))
    if chunk_size is None:
        T = max(MIN_CHUNK, min(T, TILE_ELEMENTS // (BH * NP)))
    return T, BH


def plan_groups(Bsz: int, H: int, BH: int, n_chunks: int, device: torch.device, chunks_per_program: int | None) -> int:
    """G, the chunks one program walks in order, so that the grid (B, ⌈H/BH⌉, ⌈n_chunks/G⌉) has about
    ``PROGRAMS_PER_SM`` programs per streaming multiprocessor of ``device``.

    Rows and blocks of channels alone (B·⌈H/BH⌉ programs: 64 at B 1, H 128) left an H200 nearly idle (the first GPU
    run, docs/benchmarks.md): the chunks are then cut into as many groups as make up the difference, at most one per
    chunk. Enough rows and channels give one group (G = n_chunks): no carry pass.

    Args:
        Bsz, H, BH, n_chunks: the batch, channels, channels per program and chunks of the call.
        device: where the kernels run (its SM count; ``DEFAULT_SMS`` off CUDA).
        chunks_per_program: G asked for (kept, at most n_chunks), or None to plan it.

    Returns:
        G, an int in [1, n_chunks].
    """
    if chunks_per_program is not None:
        return min(chunks_per_program, n_chunks)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else DEFAULT_SMS
    groups = min(n_chunks, triton.cdiv(sms * PROGRAMS_PER_SM, Bsz * triton.cdiv(H, BH)))
    return triton.cdiv(n_chunks, groups)


@triton.jit
def _combine(ar, ai, br, bi, cr, ci, dr, di):
    # (a, b) then (c, d): x -> c (a x + b) + d = (c a) x + (c b + d), complex numbers as (re, im) pairs
    return cr * ar - ci * ai, cr * ai + ci * ar, cr * br - ci * bi + dr, cr * bi + ci * br + di


@triton.jit
def _chunk_states(uu, ar, ai, br, bi, pr1, pi1, xr, xi):
    # uu (T, BH, 1) inputs; ar.. (1, BH, NP) Ā and B̄; pr1, pi1 (T, BH, NP) Ā^{t+1}; xr, xi (1, BH, NP) x_prev
    zero = pr1 * 0
    _, _, sr, si = tl.associative_scan((ar + zero, ai + zero, br * uu, bi * uu), 0, _combine)
    return sr + pr1 * xr - pi1 * xi, si + pr1 * xi + pi1 * xr  # (T, BH, NP): x_t of the chunk


@triton.jit
def _group_ends_kernel(
    u_ptr, coef_ptr, pw_ptr, s_ptr,
    L, H, G,
    T: tl.constexpr, BH: tl.constexpr, NP: tl.constexpr,
):
    # pass (A) of the forward: group g's end state from zero, S_g (B, n_groups - 1, H, NP, 2); every group here is
    # full (G chunks of T steps), the last group (possibly short) is never needed
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(2)
    t = tl.arange(0, T)[:, None, None]  # (T, 1, 1)
    h = (tl.program_id(1) * BH + tl.arange(0, BH))[None, :, None]  # (1, BH, 1)
    n = tl.arange(0, NP)[None, None, :]  # (1, 1, NP)
    hm = h < H
    hnm = hm & (n < NP)
    HN = H * NP
    br = tl.load(coef_ptr + 2 * HN + h * NP + n, mask=hnm, other=0.0)
    bi = tl.load(coef_ptr + 3 * HN + h * NP + n, mask=hnm, other=0.0)
    pbase = pw_ptr + h * (T + 1) * NP + n
    PWI = H * (T + 1) * NP
    qr = tl.load(pbase + (T - 1 - t) * NP, mask=hnm, other=0.0)  # (T, BH, NP): Ā^{T-1-t}
    qi = tl.load(pbase + PWI + (T - 1 - t) * NP, mask=hnm, other=0.0)
    er = qr * br - qi * bi  # Ā^{T-1-t} B̄: u_t's share of the chunk's end state
    ei = qr * bi + qi * br
    aTr = tl.load(pbase + T * NP, mask=hnm, other=0.0)  # (1, BH, NP): Ā^T
    aTi = tl.load(pbase + PWI + T * NP, mask=hnm, other=0.0)
    xr = aTr * 0
    xi = aTr * 0
    row = u_ptr + b * L * H
    for c in range(g * G, g * G + G):
        tt = (c * T + t).to(tl.int64)  # (T, 1, 1)
        uu = tl.load(row + tt * H + h, mask=(tt < L) & hm, other=0.0)  # (T, BH, 1)
        sr = tl.sum(er * uu, axis=0)[None, :, :]  # (1, BH, NP)
        si = tl.sum(ei * uu, axis=0)[None, :, :]
        xr, xi = aTr * xr - aTi * xi + sr, aTr * xi + aTi * xr + si
    s_off = (((b * (tl.num_programs(2)) + g) * H + h) * NP + n) * 2
    tl.store(s_ptr + s_off, xr, mask=hnm)
    tl.store(s_ptr + s_off + 1, xi, mask=hnm)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, y_ptr, coef_ptr, pw_ptr, d_ptr, x0_ptr, xL_ptr, ck_ptr,
    L, H, n_chunks, G,
    T: tl.constexpr, BH: tl.constexpr, NP: tl.constexpr,
    HAS_X0: tl.constexpr, HAS_D: tl.constexpr, SAVE_CK: tl.constexpr,
):
    # pass (C) of the forward: group g's chunks in order from its start state x0 (B, n_groups, H, NP, 2); its end
    # state to xL (B, n_groups, H, NP, 2)
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(2)
    t = tl.arange(0, T)[:, None, None]  # (T, 1, 1)
    h = (tl.program_id(1) * BH + tl.arange(0, BH))[None, :, None]  # (1, BH, 1)
    n = tl.arange(0, NP)[None, None, :]  # (1, 1, NP)
    hm = h < H
    hnm = hm & (n < NP)  # (1, BH, NP)
    HN = H * NP
    ar = tl.load(coef_ptr + h * NP + n, mask=hnm, other=0.0)
    ai = tl.load(coef_ptr + HN + h * NP + n, mask=hnm, other=0.0)
    br = tl.load(coef_ptr + 2 * HN + h * NP + n, mask=hnm, other=0.0)
    bi = tl.load(coef_ptr + 3 * HN + h * NP + n, mask=hnm, other=0.0)
    cr = tl.load(coef_ptr + 4 * HN + h * NP + n, mask=hnm, other=0.0)
    ci = tl.load(coef_ptr + 5 * HN + h * NP + n, mask=hnm, other=0.0)
    pbase = pw_ptr + h * (T + 1) * NP + n
    PWI = H * (T + 1) * NP
    pr1 = tl.load(pbase + (t + 1) * NP, mask=hnm, other=0.0)  # (T, BH, NP): Ā^{t+1}
    pi1 = tl.load(pbase + PWI + (t + 1) * NP, mask=hnm, other=0.0)
    s_off = (((b * tl.num_programs(2) + g) * H + h) * NP + n) * 2  # (1, BH, NP): (b, g, h, n, re/im) of a state
    if HAS_X0:
        xr = tl.load(x0_ptr + s_off, mask=hnm, other=0.0)
        xi = tl.load(x0_ptr + s_off + 1, mask=hnm, other=0.0)
    else:
        xr = ar * 0
        xi = ar * 0
    t2 = tl.arange(0, T)[:, None]  # (T, 1)
    h2 = tl.program_id(1) * BH + tl.arange(0, BH)[None, :]  # (1, BH)
    if HAS_D:
        dd = tl.load(d_ptr + h2, mask=h2 < H, other=0.0)  # (1, BH)
    row = u_ptr + b * L * H
    yrow = y_ptr + b * L * H
    for c in range(g * G, tl.minimum(g * G + G, n_chunks)):
        t0 = c * T
        tt = (t0 + t).to(tl.int64)  # (T, 1, 1)
        uu = tl.load(row + tt * H + h, mask=(tt < L) & hm, other=0.0)  # (T, BH, 1)
        if SAVE_CK:
            ck = ck_ptr + (((b * n_chunks + c) * H + h) * NP + n) * 2
            tl.store(ck, xr, mask=hnm)
            tl.store(ck + 1, xi, mask=hnm)
        Xr, Xi = _chunk_states(uu, ar, ai, br, bi, pr1, pi1, xr, xi)  # (T, BH, NP)
        yv = tl.sum(cr * Xr - ci * Xi, axis=2)  # (T, BH)
        if HAS_D:
            yv += dd * tl.sum(uu, axis=2)
        tt2 = (t0 + t2).to(tl.int64)
        tl.store(yrow + tt2 * H + h2, yv, mask=(tt2 < L) & (h2 < H))
        last = tl.minimum(L - t0, T) - 1  # the chunk's last real step
        xr = tl.sum(tl.where(t == last, Xr, 0.0), axis=0)[None, :, :]  # (1, BH, NP)
        xi = tl.sum(tl.where(t == last, Xi, 0.0), axis=0)[None, :, :]
    tl.store(xL_ptr + s_off, xr, mask=hnm)
    tl.store(xL_ptr + s_off + 1, xi, mask=hnm)


@triton.jit
def _group_adjoints_kernel(
    dy_ptr, coef_ptr, pw_ptr, gxL_ptr, m_ptr,
    L, H, n_chunks, G,
    T: tl.constexpr, BH: tl.constexpr, NP: tl.constexpr,
):
    # pass (A) of the backward: M_g, the gradient into the state before group g (g = 1 .. n_groups - 1) from the
    # group's own dy_t, and for the last group also from the final state's; (B, n_groups - 1, H, NP, 2)
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(2) + 1
    last_group = tl.num_programs(2)  # n_groups - 1
    t = tl.arange(0, T)[:, None, None]  # (T, 1, 1)
    h = (tl.program_id(1) * BH + tl.arange(0, BH))[None, :, None]  # (1, BH, 1)
    n = tl.arange(0, NP)[None, None, :]  # (1, 1, NP)
    hm = h < H
    hnm = hm & (n < NP)
    HN = H * NP
    cr = tl.load(coef_ptr + 4 * HN + h * NP + n, mask=hnm, other=0.0)
    ci = tl.load(coef_ptr + 5 * HN + h * NP + n, mask=hnm, other=0.0)
    pbase = pw_ptr + h * (T + 1) * NP + n
    PWI = H * (T + 1) * NP
    pr1 = tl.load(pbase + (t + 1) * NP, mask=hnm, other=0.0)  # (T, BH, NP): Ā^{t+1}
    pi1 = tl.load(pbase + PWI + (t + 1) * NP, mask=hnm, other=0.0)
    fr = pr1 * cr - pi1 * ci  # Ā^{t+1} C: dy_t's share of the gradient into the state before the chunk (conj.)
    fi = pr1 * ci + pi1 * cr
    s_off = ((b * H + h) * NP + n) * 2
    mr = tl.load(gxL_ptr + s_off, mask=hnm, other=0.0)  # (1, BH, NP): μ, the final state's gradient in the last group
    mi = tl.load(gxL_ptr + s_off + 1, mask=hnm, other=0.0)
    mr = tl.where(g == last_group, mr, 0.0)
    mi = tl.where(g == last_group, mi, 0.0)
    dyrow = dy_ptr + b * L * H
    c_hi = tl.minimum(g * G + G, n_chunks)
    for i in range(0, c_hi - g * G):
        c = c_hi - 1 - i
        r = tl.minimum(L - c * T, T)  # real steps in this chunk
        tt = (c * T + t).to(tl.int64)
        dyv = tl.load(dyrow + tt * H + h, mask=(t < r) & hm, other=0.0)  # (T, BH, 1)
        qr = tl.load(pbase + r * NP, mask=hnm, other=0.0)  # (1, BH, NP): Ā^r
        qi = tl.load(pbase + PWI + r * NP, mask=hnm, other=0.0)
        # μ ← conj(Ā^r) μ + conj(Σ_t Ā^{t+1} C dy_t)
        mr, mi = (
            qr * mr + qi * mi + tl.sum(fr * dyv, axis=0)[None, :, :],
            qr * mi - qi * mr - tl.sum(fi * dyv, axis=0)[None, :, :],
        )
    m_off = (((b * last_group + g - 1) * H + h) * NP + n) * 2
    tl.store(m_ptr + m_off, mr, mask=hnm)
    tl.store(m_ptr + m_off + 1, mi, mask=hnm)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dy_ptr, coef_ptr, pw_ptr, d_ptr, ck_ptr, mu_ptr, gu_ptr, gpar_ptr, gx0_ptr,
    L, H, n_chunks, G,
    T: tl.constexpr, BH: tl.constexpr, NP: tl.constexpr, HAS_D: tl.constexpr,
):
    # pass (C) of the backward: group g's chunks in reverse from μ_g (B, n_groups, H, NP, 2), the gradient into the
    # group's last state from later steps; the parameters' gradients summed over the group's steps to
    # gpar (B, n_groups, 6, H, NP), the gradient into the state before the group to gx0 (B, n_groups, H, NP, 2)
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(2)
    t = tl.arange(0, T)[:, None, None]  # (T, 1, 1)
    h = (tl.program_id(1) * BH + tl.arange(0, BH))[None, :, None]  # (1, BH, 1)
    n = tl.arange(0, NP)[None, None, :]  # (1, 1, NP)
    hm = h < H
    hnm = hm & (n < NP)
    HN = H * NP
    ar = tl.load(coef_ptr + h * NP + n, mask=hnm, other=0.0)
    ai = tl.load(coef_ptr + HN + h * NP + n, mask=hnm, other=0.0)
    br = tl.load(coef_ptr + 2 * HN + h * NP + n, mask=hnm, other=0.0)
    bi = tl.load(coef_ptr + 3 * HN + h * NP + n, mask=hnm, other=0.0)
    cr = tl.load(coef_ptr + 4 * HN + h * NP + n, mask=hnm, other=0.0)
    ci = tl.load(coef_ptr + 5 * HN + h * NP + n, mask=hnm, other=0.0)
    pbase = pw_ptr + h * (T + 1) * NP + n
    PWI = H * (T + 1) * NP
    pr1 = tl.load(pbase + (t + 1) * NP, mask=hnm, other=0.0)  # (T, BH, NP): Ā^{t+1}
    pi1 = tl.load(pbase + PWI + (t + 1) * NP, mask=hnm, other=0.0)
    s_off = (((b * tl.num_programs(2) + g) * H + h) * NP + n) * 2
    mr = tl.load(mu_ptr + s_off, mask=hnm, other=0.0)  # (1, BH, NP): μ, the gradient into the chunk's last state
    mi = tl.load(mu_ptr + s_off + 1, mask=hnm, other=0.0)
    zero2 = tl.sum(ar * 0, axis=0)  # (BH, NP)
    gAr = zero2
    gAi = zero2
    gBr = zero2
    gBi = zero2
    gCr = zero2
    gCi = zero2
    t2 = tl.arange(0, T)[:, None]  # (T, 1)
    h2 = tl.program_id(1) * BH + tl.arange(0, BH)[None, :]  # (1, BH)
    if HAS_D:
        dd = tl.load(d_ptr + h2, mask=h2 < H, other=0.0)  # (1, BH)
    row = u_ptr + b * L * H
    dyrow = dy_ptr + b * L * H
    gurow = gu_ptr + b * L * H
    c_hi = tl.minimum(g * G + G, n_chunks)
    for i in range(0, c_hi - g * G):
        c = c_hi - 1 - i
        t0 = c * T
        r = tl.minimum(L - t0, T)  # real steps in this chunk
        tt = (t0 + t).to(tl.int64)
        uu = tl.load(row + tt * H + h, mask=(tt < L) & hm, other=0.0)  # (T, BH, 1)
        ck = ck_ptr + (((b * n_chunks + c) * H + h) * NP + n) * 2
        xr = tl.load(ck, mask=hnm, other=0.0)  # (1, BH, NP): the state before the chunk
        xi = tl.load(ck + 1, mask=hnm, other=0.0)
        Xr, Xi = _chunk_states(uu, ar, ai, br, bi, pr1, pi1, xr, xi)  # (T, BH, NP): x_t
        dyv = tl.load(dyrow + tt * H + h, mask=(t < r) & hm, other=0.0)  # (T, BH, 1): dy_t
        dys = tl.load(dyrow + (tt + 1) * H + h, mask=(t + 1 < r) & hm, other=0.0)  # dy_{t+1} inside the chunk
        zero = pr1 * 0
        # λ_t = Σ_{s≥t} conj(Ā)^{s-t} conj(C) dy_s (reverse scan) + conj(Ā)^{r-1-t} μ
        _, _, lr, li = tl.associative_scan((ar + zero, zero - ai, cr * dyv, -ci * dyv), 0, _combine, reverse=True)
        k = r - 1 - t
        qr = tl.load(pbase + k * NP, mask=(k >= 0) & hnm, other=0.0)
        qi = -tl.load(pbase + PWI + k * NP, mask=(k >= 0) & hnm, other=0.0)
        lr += qr * mr - qi * mi
        li += qr * mi + qi * mr
        # λ_{t+1} for t ≤ r-2 (zero at t = r-1: that product belongs to the next chunk's first step)
        _, _, nr, ni = tl.associative_scan((ar + zero, zero - ai, cr * dys, -ci * dys), 0, _combine, reverse=True)
        k = r - 2 - t
        qr = tl.load(pbase + k * NP, mask=(k >= 0) & hnm, other=0.0)
        qi = -tl.load(pbase + PWI + k * NP, mask=(k >= 0) & hnm, other=0.0)
        nr += qr * mr - qi * mi
        ni += qr * mi + qi * mr
        # du_t = Re Σ_n conj(B̄_n) λ_{t,n} + D dy_t
        gu = tl.sum(br * lr + bi * li, axis=2)  # (T, BH)
        if HAS_D:
            gu += dd * tl.sum(dyv, axis=2)
        tt2 = (t0 + t2).to(tl.int64)
        tl.store(gurow + tt2 * H + h2, gu, mask=(t2 < r) & (h2 < H))
        gBr += tl.sum(uu * lr, axis=0)
        gBi += tl.sum(uu * li, axis=0)
        gCr += tl.sum(dyv * Xr, axis=0)
        gCi -= tl.sum(dyv * Xi, axis=0)
        l0r = tl.sum(tl.where(t == 0, lr, 0.0), axis=0)  # (BH, NP): λ at the chunk's first step
        l0i = tl.sum(tl.where(t == 0, li, 0.0), axis=0)
        x0r = tl.sum(xr, axis=0)  # (BH, NP)
        x0i = tl.sum(xi, axis=0)
        # dĀ += conj(x_{t0-1}) λ_{t0} + Σ_t conj(x_t) λ_{t+1}
        gAr += x0r * l0r + x0i * l0i + tl.sum(Xr * nr + Xi * ni, axis=0)
        gAi += x0r * l0i - x0i * l0r + tl.sum(Xr * ni - Xi * nr, axis=0)
        # μ for the previous chunk: conj(Ā) λ_{t0}
        mr = ar * l0r[None, :, :] + ai * l0i[None, :, :]
        mi = ar * l0i[None, :, :] - ai * l0r[None, :, :]
    tl.store(gx0_ptr + s_off, mr, mask=hnm)
    tl.store(gx0_ptr + s_off + 1, mi, mask=hnm)
    h2c = tl.program_id(1) * BH + tl.arange(0, BH)[:, None]  # (BH, 1)
    n2 = tl.arange(0, NP)[None, :]  # (1, NP)
    m2 = (h2c < H) & (n2 < NP)
    gp = gpar_ptr + (b * tl.num_programs(2) + g) * 6 * HN + h2c * NP + n2
    tl.store(gp, gAr, mask=m2)
    tl.store(gp + HN, gAi, mask=m2)
    tl.store(gp + 2 * HN, gBr, mask=m2)
    tl.store(gp + 3 * HN, gBi, mask=m2)
    tl.store(gp + 4 * HN, gCr, mask=m2)
    tl.store(gp + 5 * HN, gCi, mask=m2)


def _tables(
    A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, T: int, NP: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """coef (6, H, NP) = [Re Ā, Im Ā, Re B̄, Im B̄, Re C, Im C] and pw (2, H, T+1, NP) = Re, Im of Ā^k, zero-padded."""
    N = A_bar.shape[1]
    coef = torch.stack([A_bar.real, A_bar.imag, B_bar.real, B_bar.imag, C.real, C.imag])  # (6, H, N)
    powers = wide_powers(A_bar, T + 1).transpose(1, 2)  # (H, T+1, N)
    pw = torch.stack([powers.real, powers.imag])  # (2, H, T+1, N)
    return F.pad(coef, (0, NP - N)).contiguous(), F.pad(pw, (0, NP - N)).contiguous()


def _real_state(x: torch.Tensor, NP: int) -> torch.Tensor:
    """(B, H, N) complex -> (B, H, NP, 2) real, zero-padded, contiguous."""
    return F.pad(torch.view_as_real(x), (0, 0, 0, NP - x.shape[-1])).contiguous()


def _complex_state(x: torch.Tensor, N: int) -> torch.Tensor:
    """(..., NP, 2) real -> (..., N) complex."""
    return torch.view_as_complex(x[..., :N, :].contiguous())


def _group_power(coef: Tensor, steps: int) -> Tensor:
    """Ā^steps (H, NP) complex, from coef's Re Ā and Im Ā, raised in float64 and rounded once (the carry across
    groups; as the chunked path's Ā^T)."""
    return wide_int_power(torch.complex(coef[0], coef[1]), steps)


def _group_starts(S: Tensor, coef: Tensor, x0: Optional[Tensor], steps: int) -> Tensor:
    """Pass (B) of the forward: every group's start state (B, n_groups, H, NP, 2), from the end states from zero of
    all groups but the last, S (B, n_groups - 1, H, NP, 2), and x_{-1} (B, H, NP, 2) or None:
    x_g = Ā^{steps} x_{g-1} + S_g, the group's steps = G·T."""
    first = torch.zeros_like(S[:, 0]) if x0 is None else x0
    h, _ = linear_recurrence_chunked(
        _group_power(coef, steps), torch.view_as_complex(S), torch.view_as_complex(first)
    )  # (B, n_groups - 1, H, NP): the states after groups 0 .. n_groups - 2
    return torch.cat([first[:, None], torch.view_as_real(h)], 1).contiguous()


def _group_adjoints(M: Tensor, coef: Tensor, gxL: Tensor, steps: int) -> Tensor:
    """Pass (B) of the backward: μ_g, the gradient into every group's last state from later steps
    (B, n_groups, H, NP, 2), from M (B, n_groups - 1, H, NP, 2), the gradient into the state before group g
    (g = 1 .. n_groups - 1) from that group alone (the last group's with the final state's gradient gxL):
    μ_{n-1} = gxL, μ_{n-2} = M_{n-1}, μ_{g-1} = conj(Ā^{steps}) μ_g + M_g (every group but the last is full)."""
    rev, _ = linear_recurrence_chunked(
        _group_power(coef, steps).conj(), torch.view_as_complex(M).flip(1)
    )  # (B, n_groups - 1, H, NP): μ_{n-2}, μ_{n-3}, ..., μ_0
    return torch.cat([torch.view_as_real(rev).flip(1), gxL[:, None]], 1).contiguous()


def _forward_fake(u, coef, pw, D, x0, T, BH, G, save):
    Bsz, L, H = u.shape
    NP = coef.shape[2]
    ck = u.new_empty(Bsz, (L + T - 1) // T, H, NP, 2) if save else u.new_empty(1)
    return [torch.empty_like(u), u.new_empty(Bsz, H, NP, 2), ck]


@kernel_op("triton_ssm_scan_forward", _forward_fake)
def _forward_kernel(
    u: Tensor, coef: Tensor, pw: Tensor, D: Optional[Tensor], x0: Optional[Tensor], T: int, BH: int, G: int,
    save: bool,
) -> list[Tensor]:
    """The forward's launches: [y (B, L, H), x_{L-1} (B, H, NP, 2), the chunk checkpoints (B, ⌈L/T⌉, H, NP, 2)
    when ``save`` (else one element)], from u (B, L, H), coef (6, H, NP), pw (2, H, T+1, NP), D (H,) and x0
    (B, H, NP, 2) or None, all contiguous, in groups of G chunks (passes A, B, C of the module's docstring)."""
    Bsz, L, H = u.shape
    NP = coef.shape[2]
    n_chunks = triton.cdiv(L, T)
    n_groups = triton.cdiv(n_chunks, G)
    rows = (Bsz, triton.cdiv(H, BH))
    if n_groups > 1:
        S = u.new_empty(Bsz, n_groups - 1, H, NP, 2)
        _group_ends_kernel[(*rows, n_groups - 1)](u, coef, pw, S, L, H, G, T=T, BH=BH, NP=NP, num_warps=NUM_WARPS)
        x0 = _group_starts(S, coef, x0, G * T)
    y = torch.empty_like(u)  # (B, L, H)
    xL = u.new_empty(Bsz, n_groups, H, NP, 2)
    ck = u.new_empty(Bsz, n_chunks, H, NP, 2) if save else u.new_empty(1)  # chunk checkpoints
    dummy = u.new_empty(1)
    _scan_fwd_kernel[(*rows, n_groups)](
        u, y, coef, pw, dummy if D is None else D, dummy if x0 is None else x0, xL, ck, L, H, n_chunks, G,
        T=T, BH=BH, NP=NP, HAS_X0=x0 is not None, HAS_D=D is not None, SAVE_CK=save, num_warps=NUM_WARPS,
    )
    return [y, xL[:, -1], ck]


def _backward_fake(u, gy, coef, pw, D, ck, gxL, T, BH, G):
    Bsz, L, H = u.shape
    NP = coef.shape[2]
    return [torch.empty_like(u), u.new_empty(6, H, NP), u.new_empty(Bsz, H, NP, 2)]


@kernel_op("triton_ssm_scan_backward", _backward_fake)
def _backward_kernel(
    u: Tensor, gy: Tensor, coef: Tensor, pw: Tensor, D: Optional[Tensor], ck: Tensor, gxL: Tensor, T: int, BH: int,
    G: int,
) -> list[Tensor]:
    """The backward's launches: [∂u (B, L, H), the parameters' gradients (6, H, NP) (Re, Im of ∂Ā, ∂B̄, ∂C, summed
    over the batch), ∂x_{-1} (B, H, NP, 2)], from the forward's u, coef, pw, D and checkpoints, ∂y (B, L, H) and
    ∂x_{L-1} (B, H, NP, 2), all contiguous, in groups of G chunks (passes A, B, C of the module's docstring)."""
    Bsz, L, H = u.shape
    NP = coef.shape[2]
    n_chunks = ck.shape[1]
    n_groups = triton.cdiv(n_chunks, G)
    rows = (Bsz, triton.cdiv(H, BH))
    mu = gxL
    if n_groups > 1:
        M = u.new_empty(Bsz, n_groups - 1, H, NP, 2)
        _group_adjoints_kernel[(*rows, n_groups - 1)](
            gy, coef, pw, gxL, M, L, H, n_chunks, G, T=T, BH=BH, NP=NP, num_warps=NUM_WARPS
        )
        mu = _group_adjoints(M, coef, gxL, G * T)
    gu = torch.empty_like(u)
    gpar = u.new_empty(Bsz, n_groups, 6, H, NP)
    gx0 = u.new_empty(Bsz, n_groups, H, NP, 2)
    _scan_bwd_kernel[(*rows, n_groups)](
        u, gy, coef, pw, u.new_empty(1) if D is None else D, ck, mu, gu, gpar, gx0, L, H, n_chunks, G,
        T=T, BH=BH, NP=NP, HAS_D=D is not None, num_warps=NUM_WARPS,
    )
    return [gu, gpar.sum((0, 1)), gx0[:, 0]]


class _FusedScan(torch.autograd.Function):
    """y, x_L of the diagonal scan by the forward kernel; gradients of u, Ā, B̄, C, x_{-1}, D by the backward kernel
    (each launch a custom op while torch.compile traces: :mod:`ssmkit.ops.opaque`). The chunk checkpoints are kept
    when ``grad``, :func:`ssmkit.ops.twice.wants_grad` of the inputs at the call (not ``ctx.needs_input_grad``, which
    ignores grad mode: under ``torch.no_grad()`` they were kept for nothing)."""

    @staticmethod
    def forward(ctx, u, A_bar, B_bar, C, state, D, T, BH, G, matmul, grad):  # type: ignore[override]
        N = A_bar.shape[1]
        if matmul:  # the chunk products on tensor cores (ssmkit.ops.triton.scan_mm); its modes padded to >= 16
            from ssmkit.ops.triton import scan_mm

            NP = scan_mm.mm_modes(N)
        else:
            NP = padded_modes(N)
        coef, pw = _tables(A_bar, B_bar, C, T, NP)
        originals = (u, A_bar, B_bar, C, state, D)
        u = u.contiguous()
        save = grad
        x0 = _real_state(state, NP) if state is not None else None
        d = D.contiguous() if D is not None else None
        Bsz, L, H = u.shape
        n_chunks = triton.cdiv(L, T)
        if matmul:
            kt, v, w = scan_mm._mm_tables(A_bar, B_bar, C, T, NP)
            G_f = scan_mm.plan_mm_groups(Bsz, H, n_chunks, u.device, G)
            y, xL, ck = scan_mm._forward_mm_kernel(u, coef, pw, kt, v, w, d, x0, T, G_f, save)
        else:
            y, xL, ck = _forward_kernel(u, coef, pw, d, x0, T, BH, plan_groups(Bsz, H, BH, n_chunks, u.device, G), save)
        BHb = min(BH, BACKWARD_BLOCK_H)
        # the matmul form's backward needs whole chunks, and its tables fit the shared memory up to 32 modes (compiled
        # for sm_90: 116-144 KB at NP 32, over 227 KB at NP 64 and T 32); else the scan form's backward
        mm_backward = matmul and L % T == 0 and NP <= scan_mm.MM_BACKWARD_MODES
        if save:
            ctx.save_for_backward(u, coef, pw, ck, d, *originals, *((kt, v, w) if mm_backward else ()))
        if mm_backward:
            G_b = scan_mm.plan_mm_groups(Bsz, H, n_chunks, u.device, G)
        else:
            G_b = plan_groups(Bsz, H, BHb, n_chunks, u.device, G)
        ctx.shape = (N, NP, BHb, T, G_b, state is not None, mm_backward, G)
        return y, _complex_state(xL, N)

    @staticmethod
    def backward(ctx, gy, gxL):  # type: ignore[override]
        u, coef, pw, ck, d, *rest = ctx.saved_tensors
        originals, tables = rest[:6], rest[6:]
        if torch.is_grad_enabled():  # create_graph: a double backward, through the chunked scan (ops/twice.py)
            grads = graph_backward(ssm_scan_chunked, originals, ctx.needs_input_grad[:6], (gy, gxL))
            return (*grads, None, None, None, None, None)
        N, NP, BH, T, G, has_state, mm_backward, G_asked = ctx.shape
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        gxL = u.new_zeros(u.shape[0], u.shape[2], NP, 2) if gxL is None else _real_state(gxL, NP)
        gu = None
        if mm_backward:
            from triton.runtime.errors import OutOfResources

            from ssmkit.ops.triton.scan_mm import _backward_mm_kernel

            try:
                gu, gpar, gx0 = _backward_mm_kernel(u, gy, coef, pw, *tables, d, ck, gxL, T, G)
            except OutOfResources:  # raised before anything runs (another Triton may stage more): the scan form
                G = plan_groups(u.shape[0], u.shape[2], BH, ck.shape[1], u.device, G_asked)
        if gu is None:
            gu, gpar, gx0 = _backward_kernel(u, gy, coef, pw, d, ck, gxL, T, BH, G)
        g = gpar[:, :, :N]  # (6, H, N)
        gA, gB, gC = (torch.complex(g[2 * i], g[2 * i + 1]) for i in range(3))  # (H, N) each
        gstate = _complex_state(gx0, N) if has_state else None
        gD = (gy * u).sum((0, 1)) if d is not None else None
        return gu, gA, gB, gC, gstate, gD, None, None, None, None, None


def ssm_scan_triton(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
    chunk_size: int | None = None,
    block_h: int | None = None,
    chunks_per_program: int | None = None,
    intra_chunk: str = "scan",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Diagonal SSM by the fused Triton kernels; equals :func:`ssmkit.ops.scan.ssm_scan_reference`.

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,  y_t = Re(Σ_n C_n x_{t,n}) + D u_t  (arXiv 2206.11893 §2), the states only in
    registers; memory: y plus B·⌈L/T⌉·H·N checkpoints when a gradient is needed. Real parameters run as complex
    ones with zero imaginary parts (their gradients are the real parts).

    Args:
        u: (B, L, H) real input, float32 or float64.
        A_bar: (H, N) complex (or real) discrete state matrix (diagonal).
        B_bar: (H, N) complex (or real) discrete input matrix.
        C: (H, N) complex (or real) output matrix; pass 2·C for conjugate-pair halves.
        state: (B, H, N) state x_{-1} in A_bar's dtype, or None for zeros.
        D: (H,) real skip, or None.
        return_state: whether to return the final state (else None in its place).
        chunk_size: T, steps per chunk (a power of two; the tile height of the in-chunk scan), or None: 32, less
            for more than 32 complex modes (:func:`fit_tiles`).
        block_h: channels per program of the forward (a power of two), or None: 2, 1 for more than 32 complex
            modes (:func:`fit_tiles`); the backward takes at most ``BACKWARD_BLOCK_H`` of them.
        chunks_per_program: G, the chunks one program walks in order (a positive int; the grid has ⌈L/(G·T)⌉
            programs along the sequence, tied by a carry pass when more than one), or None to fill the device
            (:func:`plan_groups`).
        intra_chunk: the forward's work inside a chunk: ``"scan"`` (an associative scan over the chunk's steps, on
            the CUDA cores) or ``"matmul"`` (Toeplitz and state products by ``tl.dot``, on tensor cores:
            :mod:`ssmkit.ops.triton.scan_mm`; chunks of at least 16 steps, default 32, modes padded to 16; one
            channel per program, so ``block_h`` does not apply). The backward is the same for both.

    Returns:
        y (B, L, H) real in u's dtype, and the final state x_{L-1} (B, H, N) in A_bar's dtype (or None).
    """
    check_params(u, state, A_bar=A_bar, B_bar=B_bar, C=C)
    check_skip(D, u)
    if intra_chunk not in ("scan", "matmul"):
        raise ValueError(f"intra_chunk must be 'scan' or 'matmul'; got {intra_chunk!r}")
    if intra_chunk == "matmul" and block_h is not None:
        raise ValueError("block_h applies to intra_chunk='scan' only (the matmul form runs one channel per program)")
    if chunks_per_program is not None and (
        not isinstance(chunks_per_program, int) or isinstance(chunks_per_program, bool) or chunks_per_program < 1
    ):
        raise ValueError(f"chunks_per_program must be a positive int or None; got {chunks_per_program!r}")
    for name, v in (("chunk_size", chunk_size), ("block_h", block_h)):
        if v is None:
            continue
        if name == "chunk_size":
            check_chunk_size(v)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two (a Triton tile size); got {v!r}")
    if intra_chunk == "matmul":
        from ssmkit.ops.triton.scan_mm import MM_CHUNK, MIN_DOT, mm_modes

        if chunk_size is not None and chunk_size < MIN_DOT:
            raise ValueError(
                f"intra_chunk='matmul' needs chunk_size >= 16 (tl.dot's smallest dimension); got {chunk_size}"
            )

        T_fit, _ = fit_tiles(mm_modes(A_bar.shape[1]), chunk_size)  # the backward's tiles bound the chunk
        chunk_size = chunk_size if chunk_size is not None else max(MIN_DOT, min(MM_CHUNK, T_fit))
        block_h = DEFAULT_BLOCK_H
    else:
        chunk_size, block_h = fit_tiles(padded_modes(A_bar.shape[1]), chunk_size, block_h)
    is_complex = A_bar.is_complex()
    cdtype = _COMPLEX[u.dtype]
    A_c, B_c, C_c = (p.to(cdtype) for p in (A_bar, B_bar, C))  # real parameters: zero imaginary parts
    x0 = state.to(cdtype) if state is not None else None
    grad = wants_grad(u, A_bar, B_bar, C, state, D)
    y, xL = apply_function(_FusedScan, u, A_c, B_c, C_c, x0, D, chunk_size, block_h, chunks_per_program,
                            intra_chunk == "matmul", grad)
    if not return_state:
        return y, None
    return y, (xL if is_complex else xL.real)
