"""Mamba-2's skip, SiLU gate and grouped RMSNorm by the compiled C kernel (``gated_norm.c``), forward and backward.

The semantics of :func:`ssmkit.ops.gated_norm.gated_rmsnorm_reference` (arXiv 2405.21060 §7): one pass over each row of
E channels, forward, and one backward (which recomputes the row's normalisation), where the PyTorch path makes ~12
elementwise passes over (B, L, E) in the forward and ~20 in the backward: at B 8, L 4 096, E 256 a Mamba-2 layer's
forward+backward spent ~100 ms of its ~365 there on the 2-core VM (docs/benchmarks.md).

Usable where ``native_status("gated_norm", dtype)`` says so (:mod:`ssmkit.ops.native.gate`). Under torch.compile the
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
from ssmkit.ops.native.parallel import ptr, run_checked
from ssmkit.ops.opaque import kernel_op
from ssmkit.ops.twice import graph_backward

_i64, _p = ctypes.c_int64, ctypes.c_void_p


def _signatures(real) -> dict:
    return {  # the C functions of gated_norm.c: (argument types, result type); eps is a C real
        "gn_items": ([_i64], _i64),
        "gn_forward": ([_p, _p, _i64, _p, _p, _i64, _p, _p, _i64, _i64, _i64, real, _i64] + [_i64] * 3, ctypes.c_int),
        "gn_backward": ([_p, _p, _i64, _p, _p, _i64] + [_p] * 6 + [_i64] * 3 + [real, _i64] + [_i64] * 3,
                        ctypes.c_int),
    }


SIGNATURES = {torch.float32: _signatures(ctypes.c_float), torch.float64: _signatures(ctypes.c_double)}


def _rows(t: Tensor, E: int) -> Tensor:
    """t (..., E) as (rows, E) with unit stride along E: a view where the leading dimensions collapse, else a copy."""
    t = t.reshape(-1, E)
    return t if t.stride(-1) == 1 else t.contiguous()


def _forward_fake(y, z, w, x, D, groups, eps, nbg):
    return [torch.empty_like(y)]


@kernel_op("gated_norm_forward", _forward_fake)
def _forward_kernel(y: Tensor, z: Tensor, w: Tensor, x: Optional[Tensor], D: Optional[Tensor], groups: int, eps: float,
                    nbg: bool) -> list[Tensor]:
    """The C forward: [out (rows, E)] from y (rows, E) contiguous, z and x (rows, E) with unit stride along E, w, D
    (E,) contiguous."""
    fns = bind("gated_norm.c", y.dtype, SIGNATURES[y.dtype])
    rows, E = y.shape
    out = torch.empty_like(y)
    args = [ptr(y), ptr(x), 0 if x is None else x.stride(0), ptr(D), ptr(z), z.stride(0), ptr(w), ptr(out), rows, E,
            groups, eps, int(nbg)]
    run_checked(fns["gn_forward"], fns["gn_items"](rows), args, fns["openmp"],
                "gated_norm native: the forward could not allocate its row buffer")
    return [out]


def _backward_fake(y, z, w, x, D, g_out, groups, eps, nbg):
    E = y.shape[1]
    return [torch.empty_like(y), torch.empty_like(y), y.new_empty(E), *([torch.empty_like(y), y.new_empty(E)]
                                                                         if x is not None else [])]


@kernel_op("gated_norm_backward", _backward_fake)
def _backward_kernel(y: Tensor, z: Tensor, w: Tensor, x: Optional[Tensor], D: Optional[Tensor], g_out: Tensor,
                     groups: int, eps: float, nbg: bool) -> list[Tensor]:
    """The C backward: [∂y, ∂z, ∂w, then ∂x and ∂D with the skip], from the forward's inputs (as there) and ∂out
    (rows, E) contiguous."""
    fns = bind("gated_norm.c", y.dtype, SIGNATURES[y.dtype])
    rows, E = y.shape
    n_items = fns["gn_items"](rows)
    g_y, g_z = torch.empty_like(y), torch.empty_like(y)
    g_x = torch.empty_like(y) if x is not None else None
    part = y.new_zeros(n_items, 2, E)  # per item: ∂w, ∂D
    args = [ptr(y), ptr(x), 0 if x is None else x.stride(0), ptr(D), ptr(z), z.stride(0), ptr(w), ptr(g_out),
            ptr(g_y), ptr(g_x), ptr(g_z), ptr(part), rows, E, groups, eps, int(nbg)]
    run_checked(fns["gn_backward"], n_items, args, fns["openmp"],
                "gated_norm native: the backward could not allocate its row buffer")
    # (two sums, not two views of one: a custom op's outputs may not alias each other)
    return [g_y, g_z, part[:, 0].sum(0), *([g_x, part[:, 1].sum(0)] if x is not None else [])]


class _NativeGatedNorm(torch.autograd.Function):
    """out (rows, E) of :func:`ssmkit.ops.gated_norm.gated_rmsnorm_reference` by the C kernel. Inputs: y (rows, E)
    contiguous, z (rows, E) with unit stride along E, w (E,), x (rows, E) or None, D (E,) or None, groups, eps,
    norm_before_gate."""

    @staticmethod
    def forward(ctx, y, z, w, x, D, groups, eps, nbg):  # type: ignore[override]
        ctx.save_for_backward(y, z, w, x, D)
        ctx.options = (groups, eps, nbg)
        return _forward_kernel(y, z, w, x, D, groups, eps, nbg)[0]

    @staticmethod
    def backward(ctx, g_out):  # type: ignore[override]
        y, z, w, x, D = ctx.saved_tensors
        groups, eps, nbg = ctx.options
        if torch.is_grad_enabled():  # create_graph: a double backward, through the PyTorch path (ops/twice.py)
            from ssmkit.ops.gated_norm import gated_rmsnorm_reference

            def path(y, z, w, x, D):
                return (gated_rmsnorm_reference(y, z, w, groups, eps, nbg, x, D),)

            return (*graph_backward(path, (y, z, w, x, D), ctx.needs_input_grad[:5], (g_out,)), None, None, None)
        g_y, g_z, g_w, *skip = _backward_kernel(y, z, w, x, D, g_out.contiguous(), groups, eps, nbg)
        return g_y, g_z, g_w, (skip[0] if skip else None), (skip[1] if skip else None), None, None, None


def gated_rmsnorm_unchecked(y, z, weight, groups, eps, norm_before_gate, x=None, D=None):
    """:func:`ssmkit.ops.gated_norm.gated_rmsnorm` by the kernel, after its checks (the smoke call enters here)."""
    E = y.shape[-1]
    out = apply_function(_NativeGatedNorm, y.reshape(-1, E).contiguous(), _rows(z, E), weight.contiguous(),
                         None if x is None else _rows(x, E), None if D is None else D.contiguous(), groups,
                         float(eps), bool(norm_before_gate))
    return out.view(y.shape)
