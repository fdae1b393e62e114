"""Cauchy sums over conjugate pairs of poles at imaginary points by the compiled C kernel (``cauchy_pairs.c``).

out[..., m] = Σ_n v[..., n] / (i y[m] - w[n]) + conj(v[..., n]) / (i y[m] - conj(w[n])): the Cauchy sums of S4's
kernel (arXiv 2111.00396 §3.3, Algorithm 1) as :func:`ssmkit.ops.cauchy.dplr_kernel_fast` evaluates them -- each mode
with its conjugate, at the bilinear transform's points z = i y of the roots of unity -- with one real division and 4
multiply-adds per (pair, numerator, point) where the generic kernel (:mod:`ssmkit.ops.native.cauchy`) over both poles
does two divisions and 8. The reference is the generic Cauchy op on the pairs written out
(:func:`ssmkit.ops.cauchy.cauchy_pairs_reference`).

Usable where ``native_status("cauchy_pairs", dtype)`` says so (:mod:`ssmkit.ops.native.gate`). Under torch.compile
the kernel calls are custom ops (:mod:`ssmkit.ops.opaque`). Differentiated itself (``create_graph``), the backward
is the reference's.
"""

from __future__ import annotations

import ctypes
import math

import torch
from torch import Tensor

from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.cauchy import backward_fake, forward_fake, sums_backward, sums_forward
from ssmkit.ops.opaque import kernel_op
from ssmkit.ops.twice import graph_backward

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of cauchy_pairs.c: (argument types, result type)
    "cyp_forward": ([_p] * 4 + [_i64] * 7, ctypes.c_int),
    "cyp_backward": ([_p] * 7 + [_i64] * 7, ctypes.c_int),
}


@kernel_op("cauchy_pairs_forward", forward_fake)
def _forward_kernel(v: Tensor, y: Tensor, w: Tensor) -> list[Tensor]:
    """The C sums: [out (G, S, W)] from v (G, S, M), y (G, W) real, w (G, M), contiguous."""
    return sums_forward("cauchy_pairs.c", "cyp_forward", SIGNATURES, v, y, w)


@kernel_op("cauchy_pairs_backward", backward_fake)
def _backward_kernel(v: Tensor, y: Tensor, w: Tensor, g_out: Tensor, need_v: bool, need_y: bool,
                     need_w: bool) -> list[Tensor]:
    """The C backward: the gradients of v, y and w that are asked for, in that order, from the forward's inputs and
    g_out (G, S, W) contiguous."""
    return sums_backward("cauchy_pairs.c", "cyp_backward", SIGNATURES, v, y, w, g_out, need_v, need_y, need_w)


class _NativeCauchyPairs(torch.autograd.Function):
    """out (G, S, W) of v (G, S, M), y (G, W) real, w (G, M) by the C kernel; contiguous inputs, v and w of one complex
    dtype, y of its real dtype."""

    @staticmethod
    def forward(ctx, v, y, w):  # type: ignore[override]
        (out,) = _forward_kernel(v, y, w)
        ctx.save_for_backward(v, y, w)
        return out

    @staticmethod
    def backward(ctx, g_out):  # type: ignore[override]
        v, y, w = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a double backward, through the reference's ops (ops/twice.py)
            from ssmkit.ops.cauchy import cauchy_pairs_reference

            grouped = lambda v, y, w: (cauchy_pairs_reference(v.transpose(0, 1), y, w).transpose(0, 1),)  # noqa: E731
            return tuple(graph_backward(grouped, (v, y, w), ctx.needs_input_grad, (g_out,)))
        need = list(ctx.needs_input_grad)
        grads = iter(_backward_kernel(v, y, w, g_out.resolve_conj().resolve_neg().contiguous(), *need))
        return tuple(next(grads) if n else None for n in need)


def pair_sums_unchecked(v: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """The pair sums by the C kernel after :func:`ssmkit.ops.cauchy.cauchy_pairs`' checks: v (..., H, M), y (H, W),
    w (H, M) on the CPU -> (..., H, W) (the smoke call enters here)."""
    H, M = w.shape
    lead = v.shape[:-2]
    v_g = v.resolve_conj().reshape(math.prod(lead), H, M).transpose(0, 1).contiguous()  # (H, S, M)
    # the kernel reads memory: a lazy conj() view's holds the unconjugated values, a negated view's (y = z.conj().imag,
    # contiguous at one point of one channel) the negatives, and contiguous() keeps a contiguous view as it is
    out = apply_function(_NativeCauchyPairs, v_g, y.resolve_neg().contiguous(),
                         w.resolve_conj().contiguous())  # (H, S, W)
    return out.transpose(0, 1).reshape(*lead, H, y.shape[-1])
