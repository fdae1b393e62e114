"""Dropout by the compiled C code (``dropout.c``): a Philox4x32-10 mask drawn per element from (seed, index), on the CPU.

y = x ⊙ m / (1 - p) with m_i = [word_i ≥ round(p · 2^32)] (:mod:`ssmkit.ops.philox`, the reference, in torch integer
ops). torch's CPU dropout draws its mask serially from the Mersenne twister (``bernoulli_``: 25 ms for 4 M elements on
the 2-core VM, a fifth of an S4D Block's forward+backward at B 8, L 4 096, H 128); this generator is counter-based,
so the elements split over threads and vector lanes, and the backward regenerates the mask instead of storing it
(the same call on y's gradient: dx = dy ⊙ m / (1 - p)).

Usable where ``native_status("dropout", dtype)`` says so (:mod:`ssmkit.ops.native.gate`).
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.parallel import ptr, run_parts
from ssmkit.ops.philox import drop_threshold, keep_scale

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of dropout.c: (argument types, result type)
    "dp_items": ([_i64], _i64),
    "dp_apply": ([_p, _p, _i64, _i64, _i64, ctypes.c_double, _i64, _i64, _i64], None),
}


def masked_scale(x: Tensor, p: float, seed: int) -> Tensor:
    """x ⊙ m / (1 - p) (module docstring) by the C code: x float32 or float64 on the CPU (made contiguous), a new
    tensor of x's shape."""
    fns = bind("dropout.c", x.dtype, SIGNATURES)
    src = x.contiguous()
    out = torch.empty_like(src)
    n = src.numel()
    run_parts(fns["dp_apply"], fns["dp_items"](n), [ptr(src), ptr(out), n, seed, drop_threshold(p), keep_scale(p)],
              fns["openmp"])
    return out


class NativeDropout(torch.autograd.Function):
    """y = x ⊙ m / (1 - p) under ``seed``; the backward is the same masked scale of y's gradient (with history when
    differentiated itself)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float, seed: int) -> Tensor:  # type: ignore[override]
        ctx.p, ctx.seed = p, seed
        return masked_scale(x, p, seed)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph: linear in g, so the same node again
            return apply_function(NativeDropout, g, ctx.p, ctx.seed), None, None
        return masked_scale(g, ctx.p, ctx.seed), None, None
