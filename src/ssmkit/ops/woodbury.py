"""The Woodbury step of S4's DPLR kernel (arXiv 2111.00396 §3.2, Algorithm 1 step 2), and its one-node fast form.

From the Cauchy sums r[a, b] = Σ_n a_n b_n / (z - λ_n) over the inputs a ∈ {B_s (s < S), P_i (i < R)} and the
outputs b ∈ {C̃_c (c < C), Q_j = conj P_j (j < R)} (:func:`ssmkit.ops.cauchy.dplr_kernel_fast`), with one factor f per
evaluation point (2/(1 + ω)):

    k[s, c] = f · (r[s, c] - Σ_i r[S+i, c] W[i, s]),   W[i, s] = Σ_j (Y⁻¹)_ij r[s, C+j],   Y_ji = δ_ji + r[S+i, C+j].

:func:`woodbury_reference` is this formula in differentiable tensor ops (the oracle, and the path under torch.func,
torch.compile and torch.export). :func:`woodbury` computes the same in one autograd node whose backward writes the
gradient of r into one buffer, laid out as the Cauchy kernel's output: autograd through the reference's slices of r
zero-filled an r-sized buffer per slice and copied the result into the Cauchy backward's layout, ~30 % of the time of
S4's kernel forward+backward at H 128, N 64, L 4 096 (issue 16: fewer, larger operations). The backward, by
PyTorch's convention g_x = Σ conj(∂out/∂x) g_out (every map here is holomorphic), with g = conj(f) g_k and
Z[c, j] = Σ_i r[S+i, c] (Y⁻¹)_ij:

    g_r[s, c] = g[s, c],   g_r[s, C+j] = -Σ_c g[s, c] conj Z[c, j],   g_r[S+i, b] = -Σ_s conj W[i, s] g_r[s, b]

(the last over both column blocks b; with dY⁻¹ = -Y⁻¹ dY Y⁻¹: ∂k[s, c]/∂r[S+b, C+a] = f Z[c, a] W[b, s]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmkit.ops.backend import tracing
from ssmkit.ops.dplr import small_inverse
from ssmkit.ops.function_call import apply_function


def _check(r: Tensor, S: int, n_out: int, f: Tensor) -> None:
    if not isinstance(r, Tensor) or not r.is_complex() or r.dim() != 4:
        raise ValueError(f"r must be (S+R, C+R, H, W) complex; got {getattr(r, 'shape', type(r).__name__)}")
    R = r.shape[0] - S
    if not 1 <= S <= r.shape[0] or not 1 <= n_out <= r.shape[1] or r.shape[1] - n_out != R:
        raise ValueError(f"r must be (S+R, C+R, H, W) with S = {S}, C = {n_out} and R >= 0; got {tuple(r.shape)}")
    if not isinstance(f, Tensor) or f.dtype != r.dtype or f.shape != r.shape[-1:]:
        raise ValueError(f"f must be (W,) = ({r.shape[-1]},) {r.dtype}; got {getattr(f, 'shape', f)}")


def _y_inverse(r: Tensor, S: int, n_out: int) -> Tensor:
    """Y⁻¹ (R, R, H, W), Y_ji = δ_ji + r[S+i, C+j]: the closed forms for R = 1, 2 (:func:`small_inverse`)."""
    R = r.shape[0] - S
    if R == 1:
        return (1 + r[S:, n_out:]).reciprocal()  # (1, 1, H, W)
    Y = torch.eye(R, dtype=r.dtype, device=r.device)[:, :, None, None] + r[S:, n_out:].transpose(0, 1)  # (R, R, H, W)
    return small_inverse(Y.permute(2, 3, 0, 1)).permute(2, 3, 0, 1)  # (H, W, R, R) -> (R, R, H, W)


def _right(Y_inv: Tensor, r: Tensor, S: int, n_out: int) -> Tensor:
    """W[i, s] = Σ_j (Y⁻¹)_ij r[s, C+j]: (R, S, H, W)."""
    if Y_inv.shape[0] == 1:
        return (Y_inv[0, 0] * r[:S, n_out]).unsqueeze(0)  # (1, S, H, W)
    return (Y_inv[:, None] * r[None, :S, n_out:]).sum(2)  # (R, 1, R, H, W) * (1, S, R, H, W) -> (R, S, H, W)


def _corrected(r: Tensor, S: int, n_out: int, f: Tensor) -> Tensor:
    """The module docstring's k from r (checked by the caller), in tensor ops: the forward of both forms."""
    k = r[:S, :n_out]  # (S, C, H, W)
    if r.shape[0] == S:
        return k * f
    W = _right(_y_inverse(r, S, n_out), r, S, n_out)  # (R, S, H, W)
    if W.shape[0] == 1:
        return (k - r[S, :n_out][None] * W[0][:, None]) * f  # (S, C, H, W)
    return (k - (r[S:, None, :n_out] * W[:, :, None]).sum(0)) * f  # (R, S, C, H, W) -> (S, C, H, W)


def woodbury_reference(r: Tensor, S: int, n_out: int, f: Tensor) -> Tensor:
    """k[s, c] = f · (C̃_cᵀ (z - A)⁻¹ B_s) from the Cauchy sums (module docstring), in differentiable tensor ops.

    Args:
        r: (S+R, C+R, H, W) complex Cauchy sums, r[a, b] = Σ_n a_n b_n / (z - λ_n) (any strides).
        S: number of input vectors B_s.
        n_out: number of output vectors C̃_c.
        f: (W,) complex factor per evaluation point, r's dtype.

    Returns:
        (S, C, H, W) complex.
    """
    _check(r, S, n_out, f)
    return _corrected(r, S, n_out, f)


class _Woodbury(torch.autograd.Function):
    """:func:`woodbury_reference` as one node; the backward of the module docstring, into one buffer. It has no
    forward derivative: under forward-mode AD (``tracing()`` is True there) :func:`woodbury` runs the reference's
    tensor ops instead."""

    @staticmethod
    def forward(ctx, r: Tensor, S: int, n_out: int, f: Tensor) -> Tensor:  # type: ignore[override]
        ctx.S, ctx.n_out = S, n_out
        ctx.save_for_backward(r, f)
        return _corrected(r, S, n_out, f)  # (S, C, H, W)

    @staticmethod
    def backward(ctx, g_k: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        r, f = ctx.saved_tensors
        S, C = ctx.S, ctx.n_out
        n_in, n_o, H, n_w = r.shape
        R = n_in - S
        # the gradient in the memory layout of the Cauchy kernel's output (H, S+R, C+R, W), seen as r's shape
        g_r = torch.empty(H, n_in, n_o, n_w, dtype=r.dtype, device=r.device).permute(1, 2, 0, 3)
        g = g_k * f.conj()  # (S, C, H, W)
        Y_inv = _y_inverse(r, S, C)  # (R, R, H, W)
        W = _right(Y_inv, r, S, C)  # (R, S, H, W)
        if R == 1:
            Z = Y_inv[0, 0] * r[S, :C]  # (C, H, W): Z[c, 0]
            g_V = (g * Z.conj()).sum(1, keepdim=True).neg_()  # (S, C, H, W) -> (S, 1, H, W)
        else:
            Z = (r[S:, :C, None] * Y_inv[:, None]).sum(0)  # (R, C, 1, H, W) * (R, 1, R, H, W) -> (C, R, H, W)
            g_V = (g[:, :, None] * Z.conj()[None]).sum(1).neg_()  # (S, C, R, H, W) -> (S, R, H, W)
        g_r[:S, :C], g_r[:S, C:] = g, g_V
        # create_graph: read the top rows from their own tensor (a read of g_r would be saved by the product and then
        # invalidated by the write of the bottom rows)
        top = torch.cat([g, g_V], dim=1) if torch.is_grad_enabled() else g_r[:S]  # (S, C+R, H, W)
        g_r[S:] = -(W.conj()[:, :, None] * top[None]).sum(1)  # (R, S, C+R, H, W) -> (R, C+R, H, W)
        return g_r, None, None, None


def woodbury(r: Tensor, S: int, n_out: int, f: Tensor) -> Tensor:
    """:func:`woodbury_reference`'s result by one autograd node (eagerly; the reference's ops under torch.func,
    torch.compile, torch.export and forward-mode AD, and when r has no rank part). Same arguments and result."""
    _check(r, S, n_out, f)
    if r.shape[0] == S or tracing() or f.requires_grad:
        return _corrected(r, S, n_out, f)
    return apply_function(_Woodbury, r, S, n_out, f)
