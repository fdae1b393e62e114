"""The RG-LRU by the compiled C kernel (``rglru_scan.c``): its gates' elementwise algebra and the scan in one pass.

The semantics of :func:`ssmkit.ops.rglru.rglru` on its PyTorch paths (arXiv 2402.19427 §2.4): log a_t = -c r_t
softplus(-Λ), h_t = a_t h_{t-1} + √(1 - a_t²) i_t x_t, a_t = 0 and the multiplier 1 at a segment start, the square
root's derivative clipped at 1000. Forward and backward are one pass over time per (batch row, block of 64
channels), where the PyTorch path makes ~8 elementwise passes over (B, L, H) around its scan forward and ~15 backward.

Usable where ``native_status("rglru", dtype)`` says so (:mod:`ssmkit.ops.native.gate`). Under torch.compile the
kernel calls are custom ops (:mod:`ssmkit.ops.opaque`); torch.func transforms and torch.export take the PyTorch path.
Differentiated itself (``create_graph``), the backward is the PyTorch path's (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.parallel import ptr, run_parts
from ssmkit.ops.opaque import absent_if_zero, kernel_op
from ssmkit.ops.twice import graph_backward

_i64, _p = ctypes.c_int64, ctypes.c_void_p


def _signatures(real) -> dict:
    return {  # the C functions of rglru_scan.c: (argument types, result type); c is a C real
        "rg_items": ([_i64] * 2, _i64),
        "rg_forward": ([_p] * 4 + [real] + [_p] * 3 + [_i64] * 6, None),
        "rg_backward": ([_p] * 4 + [real] + [_p] * 10 + [_i64] * 6, None),
    }


SIGNATURES = {torch.float32: _signatures(ctypes.c_float), torch.float64: _signatures(ctypes.c_double)}


def _forward_fake(x, r, i, Lambda, c, h0, resets):
    return [torch.empty_like(x)]


@kernel_op("rglru_forward", _forward_fake)
def _forward_kernel(x: Tensor, r: Tensor, i: Tensor, Lambda: Tensor, c: float, h0: Optional[Tensor],
                    resets: Optional[Tensor]) -> list[Tensor]:
    """The C forward: [h (B, L, H)] from x, r, i (B, L, H), Λ (H,), h0 (B, H) or None and resets (B, L) uint8 or None,
    all contiguous."""
    fns = bind("rglru_scan.c", x.dtype, SIGNATURES[x.dtype])
    Bsz, L, H = x.shape
    h = torch.empty_like(x)
    args = [ptr(x), ptr(r), ptr(i), ptr(Lambda), c, ptr(h0), ptr(resets), ptr(h), Bsz, L, H]
    run_parts(fns["rg_forward"], fns["rg_items"](Bsz, H), args, fns["openmp"])
    return [h]


def _backward_fake(x, r, i, Lambda, c, h0, resets, h, g, g_last):
    return [torch.empty_like(x), torch.empty_like(x), torch.empty_like(x), torch.empty_like(Lambda),
            *([] if h0 is None else [torch.empty_like(h0)])]


@kernel_op("rglru_backward", _backward_fake)
def _backward_kernel(x: Tensor, r: Tensor, i: Tensor, Lambda: Tensor, c: float, h0: Optional[Tensor],
                     resets: Optional[Tensor], h: Tensor, g: Optional[Tensor], g_last: Optional[Tensor]) -> list[Tensor]:
    """The C backward: [∂x, ∂r, ∂i, ∂Λ, then ∂h0 when h0 is given] from the forward's inputs, its states h and their
    gradients g (B, L, H) and g_last (B, H) (None: zero), contiguous."""
    fns = bind("rglru_scan.c", x.dtype, SIGNATURES[x.dtype])
    Bsz, L, H = x.shape
    g_x, g_r, g_i = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    g_h0 = None if h0 is None else torch.empty_like(h0)
    g_L = x.new_empty(Bsz, H)  # per batch row (every entry written)
    args = [ptr(x), ptr(r), ptr(i), ptr(Lambda), c, ptr(h0), ptr(resets), ptr(h), ptr(g), ptr(absent_if_zero(g_last)),
            ptr(g_x), ptr(g_r), ptr(g_i), ptr(g_h0), ptr(g_L), Bsz, L, H]
    run_parts(fns["rg_backward"], fns["rg_items"](Bsz, H), args, fns["openmp"])
    return [g_x, g_r, g_i, g_L.sum(0), *([] if g_h0 is None else [g_h0])]


class _NativeRGLRU(torch.autograd.Function):
    """h (B, L, H) and h_{L-1} of the RG-LRU by the C kernel. Inputs: x, r, i (B, L, H), Λ (H,), c, h0 (B, H) or None,
    resets (B, L) uint8 or None, all contiguous and (but resets) of one dtype."""

    @staticmethod
    def forward(ctx, x, r, i, Lambda, c, h0, resets):  # type: ignore[override]
        h = _forward_kernel(x, r, i, Lambda, c, h0, resets)[0]
        ctx.save_for_backward(x, r, i, Lambda, h0, resets, h)
        ctx.c = c
        return h, h[:, -1].clone()

    @staticmethod
    def backward(ctx, g_h, g_last):  # type: ignore[override]
        x, r, i, Lambda, h0, resets, h = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a double backward, through the PyTorch path (ops/twice.py)
            from ssmkit.ops.rglru import rglru_torch

            def path(x, r, i, Lambda, h0):
                return rglru_torch(x, r, i, Lambda, ctx.c, h0, None if resets is None else resets.bool(), "chunked")

            g = graph_backward(path, (x, r, i, Lambda, h0), ctx.needs_input_grad[:4] + ctx.needs_input_grad[5:6],
                               (g_h, g_last))
            return (*g[:4], None, g[4], None)
        g_h = None if g_h is None else g_h.contiguous()
        g_last = None if g_last is None else g_last.contiguous()
        g_x, g_r, g_i, g_L, *g_h0 = _backward_kernel(x, r, i, Lambda, ctx.c, h0, resets, h, g_h, g_last)
        return g_x, g_r, g_i, g_L, None, (g_h0[0] if g_h0 else None), None


def rglru_unchecked(x, r, i, Lambda, c, h0=None, resets=None):
    """:func:`ssmkit.ops.rglru.rglru` by the kernel, after its checks (the smoke call enters here)."""
    cont = lambda t: None if t is None else t.contiguous()  # noqa: E731
    flags = None if resets is None else resets.contiguous().view(torch.uint8)
    return apply_function(_NativeRGLRU, cont(x), cont(r), cont(i), cont(Lambda), float(c), cont(h0), flags)
