"""The diagonal LTI scan with its chunk products on tensor cores (``tl.dot``), as Triton kernels (forward, backward).

Diagonal LTI SSM (Gu, Gupta, Goel, Ré, arXiv 2206.11893, §2), complex modes, conjugate pairs folded into C by the
caller:

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,    y_t = Re(Σ_n C_n x_{t,n}) + D u_t

in the chunked matrix form of the SSD algorithm (Dao & Gu, arXiv 2405.21060, §6) for a time-invariant diagonal Ā,
as :mod:`ssmkit.ops.chunked` does with PyTorch GEMMs. For a chunk of T steps starting at t0, with x_prev the state
before it:

    y_{t0+t} = Σ_{s≤t} K_{t-s} u_{t0+s} + Re Σ_n W_{t,n} x_prev,n + D u_{t0+t},   K_k = Re Σ_n C_n B̄_n Ā_n^k,
                                                                                 W_{t,n} = C_n Ā_n^{t+1}
    x_next = Ā^T ⊙ x_prev + Σ_s V_{n,s} u_{t0+s},                                V_{n,s} = Ā_n^{T-1-s} B̄_n

One program per (batch row, channel, group of G chunks: the grid and the carry across groups are those of
:mod:`ssmkit.ops.triton.scan`, passes A and B). It walks its group in blocks of CB chunks; per block, with the
block's inputs as a T × CB matrix U (column j: chunk c0 + j):
    (1) Y = Toeplitz(K) U, a (T × T) · (T × CB) product;
    (2) S = V U', (NP × T) · (T × CB) products (real and imaginary parts), U' = U shifted one chunk right (column j
        holds chunk c0 + j - 1, column 0 zero): S's column j is the input part of the chunk before c0 + j;
    (3) the states before the block's chunks by an associative scan over its CB columns of x -> Ā^T x + S_j, with
        the state carried into the block put into column 0 (x_prev of chunk c0);
    (4) Y += Re(W X) by two (T × NP) · (NP × CB) products, + D u; Y written; with gradients wanted, X written as the
        chunks' checkpoints (those the backward kernel of :mod:`ssmkit.ops.triton.scan` reads);
    (5) the state carried to the next block: Ā^T x_{c0+CB-1} + V u_{c0+CB-1}.
The (B, L, H, N) states never reach memory; per element of u there are about 2T + 8·NP multiply-adds, all in
``tl.dot`` (float32 as "tf32x3": three TF32 tensor-core products, about float32's accuracy; float64 "ieee"),
against ~log2(T) complex combines per mode on the CUDA cores for the associative-scan form. The final state (the
last chunk may be short) is formed in PyTorch from the last chunk's start state and inputs.

Backward (:func:`_backward_mm_kernel`, whole chunks and NP <= ``MM_BACKWARD_MODES``; else the scan form's kernel
on the same checkpoints): per block in reverse, each chunk's μ (the gradient into its last state from later steps)
by a reverse scan over the block's columns, then du = Toeplitz(K)ᵀ dy + Re(Vᴴ μ) + D dy and the parameters'
gradients from per-chunk products summed in registers and the within-chunk cross-correlation of u and dy; the
adjoint sequence λ_t is never formed (formulas in the function's docstring).

Products need every dot dimension >= 16: T >= 16, CB >= 16 and NP >= 16 (fewer modes are zero-padded). One channel
per program: u's loads are strided by H (neighbouring channels' programs read the same sectors, from L2). Written and
tested without a GPU (Triton's interpreter; compiled for sm_90 by scripts/triton_compile_check.py): not yet timed.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssmkit.ops.chunked import wide_powers
from ssmkit.ops.opaque import kernel_op
from ssmkit.ops.triton import scan as _scan
from ssmkit.ops.triton.scan import _combine, _group_ends_kernel, _group_starts

MM_CHUNK = 32  # T of the matmul form
MM_BLOCK = 16  # CB: chunks per block (the products' N dimension)
MIN_DOT = 16  # tl.dot's smallest dimension
MM_BACKWARD_MODES = 32  # the matmul backward's largest NP (its tables' shared memory; larger NP: the scan form's)
NUM_WARPS = 8  # warps per program of the matmul form: no spill at T 32, NP 32 for sm_90 (4 warps: 16 B); not timed
_PRECISION = {torch.float32: "tf32x3", torch.float64: "ieee"}


def mm_modes(N: int) -> int:
    """NP of the matmul form: N complex modes rounded up to a power of two, at least 16 (tl.dot's smallest K)."""
    return max(triton.next_power_of_2(N), MIN_DOT)


def _mm_tables(A_bar: Tensor, B_bar: Tensor, C: Tensor, T: int, NP: int) -> tuple[Tensor, Tensor, Tensor]:
    """The per-channel matrices of the matmul form, built in double precision and rounded once to u's dtype.

    Args:
        A_bar, B_bar, C: (H, N) complex.
        T: the chunk length.
        NP: the padded modes (zero rows and columns beyond N).

    Returns:
        kt (H, T) K_k = Re Σ_n C_n B̄_n Ā_n^k; v (2, H, NP, T) Re, Im of Ā^{T-1-s} B̄; w (2, H, T, NP) Re, Im of
        C Ā^{t+1}; all contiguous, in the real dtype of A_bar.
    """
    H, N = A_bar.shape
    real = A_bar.real.dtype
    P = wide_powers(A_bar.to(torch.complex128), T + 1)  # (H, N, T+1): Ā^k, k = 0..T
    Bw, Cw = B_bar.to(torch.complex128), C.to(torch.complex128)
    kt = torch.einsum("hn,hnk->hk", Cw * Bw, P[..., :T]).real  # (H, T)
    v = Bw[:, :, None] * P[..., :T].flip(-1)  # (H, N, T): Ā^{T-1-s} B̄
    w = (Cw[:, :, None] * P[..., 1:]).transpose(1, 2)  # (H, T, N): C Ā^{t+1}
    pad = NP - N
    v = torch.nn.functional.pad(torch.stack([v.real, v.imag]), (0, 0, 0, pad))  # (2, H, NP, T)
    w = torch.nn.functional.pad(torch.stack([w.real, w.imag]), (0, pad))  # (2, H, T, NP)
    return kt.to(real).contiguous(), v.to(real).contiguous(), w.to(real).contiguous()


@triton.jit
def _scan_mm_fwd_kernel(
    u_ptr, y_ptr, kt_ptr, v_ptr, w_ptr, pw_ptr, d_ptr, x0_ptr, xp_ptr, ck_ptr,
    L, H, n_chunks, G,
    T: tl.constexpr, CB: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, SAVE_CK: tl.constexpr, PREC: tl.constexpr,
):
    # pass (C) in the matmul form: group g's chunks from its start state x0 (B, n_groups, H, NP, 2); the state
    # before the group's last chunk to xp (B, n_groups, H, NP, 2)
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    g = tl.program_id(2)
    n_groups = tl.num_programs(2)
    t = tl.arange(0, T)[:, None]  # (T, 1)
    s = tl.arange(0, T)[None, :]  # (1, T)
    nc = tl.arange(0, NP)[:, None]  # (NP, 1): modes down a column
    nr = tl.arange(0, NP)[None, :]  # (1, NP): modes along a row
    j = tl.arange(0, CB)[None, :]  # (1, CB): chunks of a block
    toep = tl.load(kt_ptr + h * T + (t - s), mask=t >= s, other=0.0)  # (T, T): K_{t-s}
    HNT = H * NP * T
    vr = tl.load(v_ptr + (h * NP + nc) * T + s)  # (NP, T)
    vi = tl.load(v_ptr + HNT + (h * NP + nc) * T + s)
    wr = tl.load(w_ptr + (h * T + t) * NP + nr)  # (T, NP)
    wi = tl.load(w_ptr + HNT + (h * T + t) * NP + nr)
    PWI = H * (T + 1) * NP
    aTr = tl.load(pw_ptr + (h * (T + 1) + T) * NP + nc)  # (NP, 1): Ā^T
    aTi = tl.load(pw_ptr + PWI + (h * (T + 1) + T) * NP + nc)
    s_off = (((b * n_groups + g) * H + h) * NP + nc) * 2  # (NP, 1)
    xr = tl.load(x0_ptr + s_off)  # (NP, 1): the state carried into the block
    xi = tl.load(x0_ptr + s_off + 1)
    if HAS_D:
        dd = tl.load(d_ptr + h)
    row = u_ptr + b * L * H + h
    yrow = y_ptr + b * L * H + h
    c_lo = g * G
    c_hi = tl.minimum(c_lo + G, n_chunks)
    lastr = xr * 0
    lasti = xi * 0
    zero = (aTr + j) * 0.0  # (NP, CB)
    for c0 in range(c_lo, c_hi, CB):
        cj = c0 + j  # (1, CB)
        tt = (cj * T + t).to(tl.int64)  # (T, CB)
        U = tl.load(row + tt * H, mask=(tt < L) & (cj < c_hi), other=0.0)  # (T, CB)
        ts = tt - T  # the chunk before
        Us = tl.load(row + ts * H, mask=(j >= 1) & (ts < L) & (cj < c_hi), other=0.0)  # (T, CB): U shifted right
        Y = tl.dot(toep, U, input_precision=PREC)  # (T, CB): inside each chunk
        Sr = tl.dot(vr, Us, input_precision=PREC) + tl.where(j == 0, xr, 0.0)  # (NP, CB); column 0: x carried in
        Si = tl.dot(vi, Us, input_precision=PREC) + tl.where(j == 0, xi, 0.0)
        _, _, Xr, Xi = tl.associative_scan((aTr + zero, aTi + zero, Sr, Si), 1, _combine)  # (NP, CB): x_prev
        Y += tl.dot(wr, Xr, input_precision=PREC) - tl.dot(wi, Xi, input_precision=PREC)
        if HAS_D:
            Y += dd * U
        tl.store(yrow + tt * H, Y, mask=(tt < L) & (cj < c_hi))
        if SAVE_CK:
            ck = ck_ptr + (((b * n_chunks + cj) * H + h) * NP + nc) * 2  # (NP, CB)
            tl.store(ck, Xr, mask=cj < c_hi)
            tl.store(ck + 1, Xi, mask=cj < c_hi)
        jl = tl.minimum(c_hi - 1 - c0, CB - 1)  # the block's last real chunk
        lastr = tl.sum(tl.where(j == jl, Xr, 0.0), axis=1)[:, None]  # (NP, 1)
        lasti = tl.sum(tl.where(j == jl, Xi, 0.0), axis=1)[:, None]
        ul = tl.sum(tl.where(j == CB - 1, U, 0.0), axis=1)[None, :]  # (1, T): the block's last chunk's inputs
        # the state after the block's last chunk (used only when the block was full): Ā^T x + V u
        xr = aTr * lastr - aTi * lasti + tl.sum(vr * ul, axis=1)[:, None]
        xi = aTr * lasti + aTi * lastr + tl.sum(vi * ul, axis=1)[:, None]
    tl.store(xp_ptr + s_off, lastr)
    tl.store(xp_ptr + s_off + 1, lasti)


def _forward_mm_fake(u, coef, pw, kt, v, w, D, x0, T, G, save):
    return _scan._forward_fake(u, coef, pw, D, x0, T, 1, G, save)  # the scan form's outputs


@kernel_op("triton_ssm_scan_mm_forward", _forward_mm_fake)
def _forward_mm_kernel(
    u: Tensor, coef: Tensor, pw: Tensor, kt: Tensor, v: Tensor, w: Tensor, D: Optional[Tensor], x0: Optional[Tensor],
    T: int, G: int, save: bool,
) -> list[Tensor]:
    """The matmul form's launches: [y (B, L, H), x_{L-1} (B, H, NP, 2), the chunk checkpoints (B, ⌈L/T⌉, H, NP, 2)
    when ``save`` (else one element)], from u (B, L, H), the scan module's coef (6, H, NP) and pw (2, H, T+1, NP),
    :func:`_mm_tables`' kt, v, w, D (H,) and x0 (B, H, NP, 2) or None, all contiguous, in groups of G chunks (a
    multiple of the block, or all chunks)."""
    Bsz, L, H = u.shape
    NP = coef.shape[2]
    n_chunks = triton.cdiv(L, T)
    n_groups = triton.cdiv(n_chunks, G)
    if n_groups > 1:  # passes A and B of ssmkit.ops.triton.scan: every group's start state
        S = u.new_empty(Bsz, n_groups - 1, H, NP, 2)
        _group_ends_kernel[(Bsz, H, n_groups - 1)](
            u, coef, pw, S, L, H, G, T=T, BH=1, NP=NP, num_warps=_scan.NUM_WARPS
        )
        starts = _group_starts(S, coef, x0, G * T)
    else:
        starts = x0 if x0 is not None else u.new_zeros(Bsz, H, NP, 2)
    y = torch.empty_like(u)
    xp = u.new_empty(Bsz, n_groups, H, NP, 2)
    ck = u.new_empty(Bsz, n_chunks, H, NP, 2) if save else u.new_empty(1)
    dummy = u.new_empty(1)
    _scan_mm_fwd_kernel[(Bsz, H, n_groups)](
        u, y, kt, v, w, pw, dummy if D is None else D, starts, xp, ck, L, H, n_chunks, G,
        T=T, CB=MM_BLOCK, NP=NP, HAS_D=D is not None, SAVE_CK=save, PREC=_PRECISION[u.dtype], num_warps=NUM_WARPS,
    )
    # the final state from the last chunk's start state and its r real steps: Ā^r x + Σ_{s<r} Ā^{r-1-s} B̄ u_s
    r = L - (n_chunks - 1) * T
    power = torch.complex(pw[0], pw[1])  # (H, T+1, NP)
    Bc = torch.complex(coef[2], coef[3])  # (H, NP)
    x_prev = torch.view_as_complex(xp[:, -1])  # (B, H, NP)
    u_last = u[:, L - r:].to(Bc.dtype)  # (B, r, H)
    x_end = power[:, r] * x_prev + torch.einsum("brh,hrn->bhn", u_last, power[:, :r].flip(1) * Bc[:, None])
    return [y, torch.view_as_real(x_end).contiguous(), ck]


def plan_mm_groups(Bsz: int, H: int, n_chunks: int, device: torch.device, chunks_per_program: int | None) -> int:
    """G for the matmul form: :func:`ssmkit.ops.triton.scan.plan_groups` at one channel per program, rounded up to a
    multiple of the block (every block but the group's last is full), or all chunks."""
    from ssmkit.ops.triton.scan import plan_groups

    G = plan_groups(Bsz, H, 1, n_chunks, device, chunks_per_program)
    return n_chunks if G >= n_chunks else min(n_chunks, triton.cdiv(G, MM_BLOCK) * MM_BLOCK)


@triton.jit
def _scan_mm_bwd_kernel(
    u_ptr, dy_ptr, kt_ptr, v_ptr, w_ptr, pw_ptr, d_ptr, ck_ptr, mu_ptr, gu_ptr, acc_ptr, q_ptr, gx0_ptr,
    L, H, n_chunks, G,
    T: tl.constexpr, CB: tl.constexpr, NP: tl.constexpr, HAS_D: tl.constexpr, PREC: tl.constexpr,
):
    # the backward in the matmul form, group g's chunks (all full) in blocks of CB, in reverse, from μ_g
    # (B, n_groups, H, NP, 2); writes ∂u, per program the sums A1..A5 (B, n_groups, H, 10, NP), the products
    # Q = Σ dy uᵀ (B, n_groups, H, T, T) and the gradient into the state before the group (B, n_groups, H, NP, 2)
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    g = tl.program_id(2)
    n_groups = tl.num_programs(2)
    t = tl.arange(0, T)[:, None]  # (T, 1)
    s = tl.arange(0, T)[None, :]  # (1, T)
    nc = tl.arange(0, NP)[:, None]  # (NP, 1)
    nr = tl.arange(0, NP)[None, :]  # (1, NP)
    j = tl.arange(0, CB)[None, :]  # (1, CB)
    toep_t = tl.load(kt_ptr + h * T + (s - t), mask=s >= t, other=0.0)  # (T, T): K_{s-t}, the transposed Toeplitz
    HNT = H * NP * T
    vtr = tl.load(v_ptr + (h * NP + nr) * T + t)  # (T, NP): Vᵀ
    vti = tl.load(v_ptr + HNT + (h * NP + nr) * T + t)
    wtr = tl.load(w_ptr + (h * T + s) * NP + nc)  # (NP, T): Wᵀ, W = C Ā^{t+1}
    wti = tl.load(w_ptr + HNT + (h * T + s) * NP + nc)
    PWI = H * (T + 1) * NP
    pb = pw_ptr + h * (T + 1) * NP + nc  # (NP, 1): Ā^k at pb + k·NP
    p1r = tl.load(pb + (s + 1) * NP)  # (NP, T): Ā^{t+1}
    p1i = tl.load(pb + PWI + (s + 1) * NP)
    p2r = tl.load(pb + (T - 1 - s) * NP)  # Ā^{T-1-t}
    p2i = tl.load(pb + PWI + (T - 1 - s) * NP)
    p3r = (s + 1) * tl.load(pb + s * NP)  # (t+1) Ā^t
    p3i = (s + 1) * tl.load(pb + PWI + s * NP)
    p4r = (T - 1 - s) * tl.load(pb + (T - 2 - s) * NP, mask=s <= T - 2, other=0.0)  # (T-1-t) Ā^{T-2-t}
    p4i = (T - 1 - s) * tl.load(pb + PWI + (T - 2 - s) * NP, mask=s <= T - 2, other=0.0)
    aTr = tl.load(pb + T * NP)  # (NP, 1): Ā^T
    aTi = tl.load(pb + PWI + T * NP)
    s_off = (((b * n_groups + g) * H + h) * NP + nc) * 2  # (NP, 1)
    mr = tl.load(mu_ptr + s_off)  # (NP, 1): μ into the group's last state
    mi = tl.load(mu_ptr + s_off + 1)
    if HAS_D:
        dd = tl.load(d_ptr + h)
    row = u_ptr + b * L * H + h
    dyrow = dy_ptr + b * L * H + h
    gurow = gu_ptr + b * L * H + h
    zero = (aTr + j) * 0.0  # (NP, CB)
    a1r = tl.sum(zero, axis=1)[:, None]  # (NP, 1) accumulators
    a1i = a1r
    a2r = a1r
    a2i = a1r
    a3r = a1r
    a3i = a1r
    a4r = a1r
    a4i = a1r
    a5r = a1r
    a5i = a1r
    qacc = tl.zeros((T, T), dtype=u_ptr.dtype.element_ty)
    c_lo = g * G
    c_hi = tl.minimum(c_lo + G, n_chunks)
    n_blocks = tl.cdiv(c_hi - c_lo, CB)
    for k in range(0, n_blocks):
        c0 = c_lo + (n_blocks - 1 - k) * CB
        cj = c0 + j  # (1, CB)
        tt = (cj * T + t).to(tl.int64)  # (T, CB)
        live = cj < c_hi
        U = tl.load(row + tt * H, mask=live, other=0.0)  # (T, CB)
        DY = tl.load(dyrow + tt * H, mask=live, other=0.0)
        jl = tl.minimum(c_hi - 1 - c0, CB - 1)  # the block's last real chunk
        # the next chunk's dy, inside the block (the last real chunk's next is in the carried μ)
        DYn = tl.load(dyrow + (tt + T) * H, mask=j < jl, other=0.0)
        ck = ck_ptr + (((b * n_chunks + cj) * H + h) * NP + nc) * 2  # (NP, CB)
        Xr = tl.load(ck, mask=live, other=0.0)  # the states before the chunks
        Xi = tl.load(ck + 1, mask=live, other=0.0)
        # μ of each chunk: conj(Ā^T) μ_{next} + conj(Σ_s W_s dy_s of the next chunk); the carried μ at column jl
        Br = tl.dot(wtr, DYn, input_precision=PREC) + tl.where(j == jl, mr, 0.0)
        Bi = -tl.dot(wti, DYn, input_precision=PREC) + tl.where(j == jl, mi, 0.0)
        _, _, Mr, Mi = tl.associative_scan((aTr + zero, zero - aTi, Br, Bi), 1, _combine, reverse=True)
        GU = tl.dot(toep_t, DY, input_precision=PREC) + tl.dot(vtr, Mr, input_precision=PREC)
        GU += tl.dot(vti, Mi, input_precision=PREC)
        if HAS_D:
            GU += dd * DY
        tl.store(gurow + tt * H, GU, mask=live)
        z1r = tl.dot(p1r, DY, input_precision=PREC)  # (NP, CB): Σ_t Ā^{t+1} dy_t
        z1i = tl.dot(p1i, DY, input_precision=PREC)
        a1r += tl.sum(Xr * z1r - Xi * z1i, axis=1)[:, None]  # Σ conj(x_prev · z1)
        a1i -= tl.sum(Xr * z1i + Xi * z1r, axis=1)[:, None]
        z2r = tl.dot(p2r, U, input_precision=PREC)  # Σ_t Ā^{T-1-t} u_t
        z2i = tl.dot(p2i, U, input_precision=PREC)
        a2r += tl.sum(Mr * z2r + Mi * z2i, axis=1)[:, None]  # Σ μ · conj(z2)
        a2i += tl.sum(Mi * z2r - Mr * z2i, axis=1)[:, None]
        z3r = tl.dot(p3r, DY, input_precision=PREC)  # Σ_t (t+1) Ā^t dy_t
        z3i = tl.dot(p3i, DY, input_precision=PREC)
        a3r += tl.sum(Xr * z3r - Xi * z3i, axis=1)[:, None]
        a3i -= tl.sum(Xr * z3i + Xi * z3r, axis=1)[:, None]
        a4r += tl.sum(Xr * Mr + Xi * Mi, axis=1)[:, None]  # Σ conj(x_prev) μ
        a4i += tl.sum(Xr * Mi - Xi * Mr, axis=1)[:, None]
        z4r = tl.dot(p4r, U, input_precision=PREC)  # Σ_t (T-1-t) Ā^{T-2-t} u_t
        z4i = tl.dot(p4i, U, input_precision=PREC)
        a5r += tl.sum(Mr * z4r + Mi * z4i, axis=1)[:, None]
        a5i += tl.sum(Mi * z4r - Mr * z4i, axis=1)[:, None]
        qacc += tl.dot(DY, tl.trans(U), input_precision=PREC)  # (T, T): Σ dy_t u_s
        # μ into the state before the block: conj(Ā^T) μ_{c0} + conj(Σ_s W_s dy_s of chunk c0)
        m0r = tl.sum(tl.where(j == 0, Mr, 0.0), axis=1)[:, None]
        m0i = tl.sum(tl.where(j == 0, Mi, 0.0), axis=1)[:, None]
        dy0 = tl.sum(tl.where(j == 0, DY, 0.0), axis=1)[None, :]  # (1, T)
        mr = aTr * m0r + aTi * m0i + tl.sum(wtr * dy0, axis=1)[:, None]
        mi = aTr * m0i - aTi * m0r - tl.sum(wti * dy0, axis=1)[:, None]
    tl.store(gx0_ptr + s_off, mr)
    tl.store(gx0_ptr + s_off + 1, mi)
    acc = acc_ptr + (((b * n_groups + g) * H + h) * 10) * NP + nc  # (NP, 1)
    tl.store(acc, a1r)
    tl.store(acc + NP, a1i)
    tl.store(acc + 2 * NP, a2r)
    tl.store(acc + 3 * NP, a2i)
    tl.store(acc + 4 * NP, a3r)
    tl.store(acc + 5 * NP, a3i)
    tl.store(acc + 6 * NP, a4r)
    tl.store(acc + 7 * NP, a4i)
    tl.store(acc + 8 * NP, a5r)
    tl.store(acc + 9 * NP, a5i)
    tl.store(q_ptr + (((b * n_groups + g) * H + h) * T + t) * T + s, qacc)


def _backward_mm_fake(u, gy, coef, pw, kt, v, w, D, ck, gxL, T, G):
    return _scan._backward_fake(u, gy, coef, pw, D, ck, gxL, T, 1, G)  # the scan form's outputs


@kernel_op("triton_ssm_scan_mm_backward", _backward_mm_fake)
def _backward_mm_kernel(
    u: Tensor, gy: Tensor, coef: Tensor, pw: Tensor, kt: Tensor, v: Tensor, w: Tensor, D: Optional[Tensor], ck: Tensor,
    gxL: Tensor, T: int, G: int,
) -> list[Tensor]:
    """The matmul form's backward (L a multiple of T): [∂u (B, L, H), the parameters' gradients (6, H, NP) (Re, Im of
    ∂Ā, ∂B̄, ∂C), ∂x_{-1} (B, H, NP, 2)], in the layout of the scan form's backward kernel.

    Per chunk with x_prev its start state and μ the gradient into its last state from later steps (the adjoint
    λ_t = Σ_{q≥t} conj(Ā^{q-t} C) dy_q + conj(Ā^{T-1-t}) μ expanded and summed over t):
        du = Toeplitz(K)ᵀ dy + Re(V^H μ) + D dy,
        ∂C = Σ conj(x_prev) conj(Σ_t Ā^{t+1} dy_t) + conj(B̄) Σ_k conj(Ā^k) R_k,
        ∂B̄ = Σ μ conj(Σ_t Ā^{T-1-t} u_t) + conj(C) Σ_k conj(Ā^k) R_k,
        ∂Ā = conj(C) Σ conj(x_prev) conj(Σ_t (t+1) Ā^t dy_t) + T conj(Ā^{T-1}) Σ conj(x_prev) μ
             + conj(B̄ C) Σ_{k≥1} k conj(Ā^{k-1}) R_k + conj(B̄) Σ μ conj(Σ_t (T-1-t) Ā^{T-2-t} u_t),
    R_k = Σ_t u_t dy_{t+k} within chunks, summed over chunks and rows (from the kernel's Q = Σ dy uᵀ)."""
    from ssmkit.ops.triton.scan import _group_adjoints, _group_adjoints_kernel

    Bsz, L, H = u.shape
    NP = coef.shape[2]
    n_chunks = ck.shape[1]
    n_groups = triton.cdiv(n_chunks, G)
    mu = gxL
    if n_groups > 1:
        M = u.new_empty(Bsz, n_groups - 1, H, NP, 2)
        _group_adjoints_kernel[(Bsz, H, n_groups - 1)](
            gy, coef, pw, gxL, M, L, H, n_chunks, G, T=T, BH=1, NP=NP, num_warps=_scan.NUM_WARPS
        )
        mu = _group_adjoints(M, coef, gxL, G * T)
    gu = torch.empty_like(u)
    acc = u.new_empty(Bsz, n_groups, H, 10, NP)
    q = u.new_empty(Bsz, n_groups, H, T, T)
    gx0 = u.new_empty(Bsz, n_groups, H, NP, 2)
    _scan_mm_bwd_kernel[(Bsz, H, n_groups)](
        u, gy, kt, v, w, pw, u.new_empty(1) if D is None else D, ck, mu, gu, acc, q, gx0, L, H, n_chunks, G,
        T=T, CB=MM_BLOCK, NP=NP, HAS_D=D is not None, PREC=_PRECISION[u.dtype], num_warps=NUM_WARPS,
    )
    a = acc.sum((0, 1))  # (H, 10, NP)
    A1, A2, A3, A4, A5 = (torch.complex(a[:, 2 * i], a[:, 2 * i + 1]) for i in range(5))  # (H, NP) each
    Q = q.sum((0, 1))  # (H, T, T): Σ dy_t u_s
    k = torch.arange(T, device=u.device)
    rows = k[:, None] + k[None, :]  # (k, s) -> t = s + k
    valid = rows < T
    R = (Q.flatten(1)[:, torch.where(valid, rows * T + k[None, :], 0)] * valid).sum(-1)  # (H, T): R_k
    P = torch.complex(pw[0], pw[1])  # (H, T+1, NP): Ā^k
    Bc, Cc = torch.complex(coef[2], coef[3]), torch.complex(coef[4], coef[5])  # (H, NP)
    Rc = R.to(P.dtype)
    sum_R = torch.einsum("hkn,hk->hn", P[:, :T].conj(), Rc)  # Σ_k conj(Ā^k) R_k
    # Σ_{k≥1} k conj(Ā^{k-1}) R_k
    sum_kR = torch.einsum("hkn,hk->hn", P[:, : T - 1].conj(), Rc[:, 1:] * k[1:].to(Rc.dtype))
    gC = A1 + Bc.conj() * sum_R
    gB = A2 + Cc.conj() * sum_R
    gA = Cc.conj() * A3 + T * P[:, T - 1].conj() * A4 + (Bc * Cc).conj() * sum_kR + Bc.conj() * A5
    gpar = torch.stack([gA.real, gA.imag, gB.real, gB.imag, gC.real, gC.imag])  # (6, H, NP)
    return [gu, gpar, gx0[:, 0]]
