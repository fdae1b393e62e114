"""Linear maps of tall inputs by blocks of rows: y_k = x W_kᵀ + b_k for the row slices W_k of one weight.

A sequence layer's projections are GEMMs of B·L rows (32 768 at the Mamba benchmark's B 8, L 4 096) by a few hundred
columns. Whole, each writes its (B·L, N) output through memory once it no longer fits the caches; by blocks of
:data:`ROW_BLOCK` rows the output block is written while still in L2 and the next op reads it warm. The backward is
written out:

    ∂x = Σ_k g_k W_k   (by the same row blocks, accumulated in place: no sum of separate gradients),
    ∂W_k = g_kᵀ x,   ∂b_k = Σ_rows g_k

so a weight split into pieces (Mamba's in-projection into x and z) gets one input gradient and one weight gradient
with no zero fill and no accumulation of slices. Every value is the same dot product as ``F.linear``'s, so the two
agree to the last bit in float32 with MKL (tested to rounding, in float64 against autograd through ``F.linear``).

The blocked path runs on the CPU, eagerly, for float32/float64 inputs of more than two blocks of rows, outside
autocast and forward-mode AD; otherwise (GPU, torch.compile, torch.func transforms, autocast, short inputs) the call
is ``F.linear``. :func:`apply_linear` also leaves a projection to its module when the module is not a plain
``nn.Linear`` or has hooks (a LoRA wrapper, a quantised linear, an activation probe), so those are never bypassed.
Differentiated itself (``create_graph``), the backward goes through ``F.linear`` (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.ops.backend import autocast_enabled, tracing
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.opaque import exporting
from ssmkit.ops.twice import graph_backward

ROW_BLOCK = 2048  # rows per GEMM call; the Mamba block and the S4D Block, alone and beside a busy process
# (docs/design.md, "Projections by row blocks"; 512 until 2026-12-04)


def mm_rows(a: torch.Tensor, b: torch.Tensor, block: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b for a tall ``a`` (M, K) and a narrow ``b`` (K, N) as one GEMM per block of ``block`` rows, into ``out``
    (M, N) when given (it must not overlap the inputs). Short ``a`` (≤ 2 blocks) is one GEMM, and so is every ``a``
    while torch.compile or a torch.func transform traces (functionalised, each block's ``out=`` became a GEMM plus a
    scatter into the output, and Inductor's copies made a compiled LRU layer 1.3x slower than eager)."""
    M = a.shape[0]
    if out is None:
        if M <= 2 * block or tracing():
            return a @ b
        out = a.new_empty(M, b.shape[1])
    for i in range(0, M, block):
        _mm_into(out[i:i + block], a[i:i + block], b, None)
    return out


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """out = a @ b (+ bias, broadcast over the rows): one GEMM call writing into ``out``."""
    if bias is None:
        return torch.mm(a, b, out=out)
    return torch.addmm(bias, a, b, out=out)


def _blocked(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the row-blocked path applies to ``x @ weightᵀ`` (see the module docstring)."""
    if tracing() or exporting():  # tracing(): forward-mode AD too
        return False  # checked first: a comparison of symbolic sizes below would add a guard to the traced graph
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and x.dim() >= 2
        and not autocast_enabled("cpu")
        and x.numel() > 2 * ROW_BLOCK * x.shape[-1]
    )


class _SplitLinear(torch.autograd.Function):
    """Inputs: x (M, K) contiguous, the weight (ΣN_k, K), the bias (ΣN_k,) or None, and the sizes N_k. Outputs: one
    (M, N_k) tensor per piece. No forward derivative: under forward-mode AD the pieces are ``F.linear``'s
    (:func:`_blocked` is False there)."""

    @staticmethod
    def forward(ctx, x, weight, bias, sizes):  # type: ignore[override]
        outs, start = [], 0
        for n in sizes:
            W, b = weight[start:start + n], None if bias is None else bias[start:start + n]
            out = x.new_empty(x.shape[0], n)
            for i in range(0, x.shape[0], ROW_BLOCK):
                _mm_into(out[i:i + ROW_BLOCK], x[i:i + ROW_BLOCK], W.mT, b)
            outs.append(out)
            start += n
        ctx.save_for_backward(x, weight, bias)
        ctx.sizes = sizes
        ctx.set_materialize_grads(False)  # an unused piece's gradient arrives as None: its GEMMs are skipped
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors
        sizes = ctx.sizes
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph: a double backward, through F.linear
            path = lambda x_, w_, b_: _split_linear_torch(x_, w_, b_, sizes)  # noqa: E731
            return (*graph_backward(path, (x, weight, bias), (need_x, need_w, need_b), grads), None)
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        pieces = [(g.reshape(x.shape[0], n), s, n) for g, s, n in zip(grads, starts, sizes) if g is not None]
        g_x = g_w = g_b = None
        if need_x and pieces:
            g_x = x.new_empty(x.shape)
            for i in range(0, x.shape[0], ROW_BLOCK):
                rows = g_x[i:i + ROW_BLOCK]
                for k, (g, s, n) in enumerate(pieces):
                    if k == 0:
                        torch.mm(g[i:i + ROW_BLOCK], weight[s:s + n], out=rows)
                    else:
                        rows.addmm_(g[i:i + ROW_BLOCK], weight[s:s + n])
        elif need_x:
            g_x = torch.zeros_like(x)
        if need_w:
            g_w = weight.new_zeros(weight.shape) if len(pieces) < len(sizes) else weight.new_empty(weight.shape)
            for g, s, n in pieces:
                torch.mm(g.mT, x, out=g_w[s:s + n])
        if need_b and bias is not None:
            g_b = bias.new_zeros(bias.shape) if len(pieces) < len(sizes) else bias.new_empty(bias.shape)
            for g, s, n in pieces:
                torch.sum(g, dim=0, out=g_b[s:s + n])
        return g_x, g_w, g_b, None


def _split_linear_torch(x, weight, bias, sizes):
    """The pieces of :class:`_SplitLinear` by ``F.linear`` (differentiable tensor ops)."""
    ws = weight.split(list(sizes))
    bs = [None] * len(sizes) if bias is None else bias.split(list(sizes))
    return tuple(F.linear(x, w, b) for w, b in zip(ws, bs))


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """(x W_1ᵀ + b_1, x W_2ᵀ + b_2, ...) for the consecutive row slices W_k (N_k, K) of ``weight`` (ΣN_k, K) and the
    matching slices of ``bias``: each piece comes out contiguous, (..., N_k). By row blocks where that pays (see the
    module docstring), else by ``F.linear`` per piece.

    Raises:
        ValueError: ``sizes`` do not add up to the weight's rows.
    """
    sizes = tuple(int(n) for n in sizes)
    if sum(sizes) != weight.shape[0] or any(n <= 0 for n in sizes):
        raise ValueError(f"split_linear: sizes {sizes} must be positive and add up to the weight's {weight.shape[0]} "
                         "rows")
    if not _blocked(x, weight):
        return _split_linear_torch(x, weight, bias, sizes)
    lead = x.shape[:-1]
    outs = apply_function(_SplitLinear, x.reshape(-1, x.shape[-1]).contiguous(), weight, bias, sizes)
    return tuple(o.view(*lead, n) for o, n in zip(outs, sizes))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` = x Wᵀ + b, by row blocks where that pays (see the module docstring)."""
    return split_linear(x, weight, bias, (weight.shape[0],))[0]


class _LinearGLU(torch.autograd.Function):
    """Inputs: x (M, K) contiguous, the weight (2N, K) and the bias (2N,) or None. Output: y (M, N) = a ⊙ σ(g) with
    [a, g] = x Wᵀ + b (the halves), block by block: one GEMM per block forms both halves into one (M, 2N) tensor,
    kept for the backward. No forward derivative: under forward-mode AD the call is ``F.glu(F.linear(...))``."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        M, N = x.shape[0], weight.shape[0] // 2
        ag_all, y = x.new_empty(M, 2 * N), x.new_empty(M, N)
        for i in range(0, M, ROW_BLOCK):
            ag = ag_all[i:i + ROW_BLOCK]
            _mm_into(ag, x[i:i + ROW_BLOCK], weight.mT, bias)
            torch.sigmoid(ag[:, N:], out=y[i:i + ROW_BLOCK]).mul_(ag[:, :N])  # y = a ⊙ σ(g), the block in cache
        ctx.save_for_backward(x, weight, bias, ag_all)
        return y

    @staticmethod
    def backward(ctx, g_y):  # type: ignore[override]
        x, weight, bias, ag_all = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph: a double backward, through F.linear and F.glu
            path = lambda x_, w_, b_: (F.glu(F.linear(x_, w_, b_), dim=-1),)  # noqa: E731
            return tuple(graph_backward(path, (x, weight, bias), (need_x, need_w, need_b), (g_y,)))
        M, N = x.shape[0], weight.shape[0] // 2
        g_x = x.new_empty(x.shape) if need_x else None
        g_w = weight.new_zeros(weight.shape) if need_w else None
        g_b = bias.new_zeros(bias.shape) if need_b and bias is not None else None
        R = min(ROW_BLOCK, M)
        s_buf, d_buf = x.new_empty(R, N), x.new_empty(R, 2 * N)
        for i in range(0, M, ROW_BLOCK):
            rows = slice(i, i + ROW_BLOCK)
            n = min(ROW_BLOCK, M - i)
            s, d, ag = s_buf[:n], d_buf[:n], ag_all[rows]
            da, dg = d[:, :N], d[:, N:]
            torch.sigmoid(ag[:, N:], out=s)
            torch.mul(g_y[rows], s, out=da)  # ∂a = ∂y ⊙ σ(g)
            torch.sub(1, s, out=dg).mul_(ag[:, :N]).mul_(da)  # ∂g = ∂y ⊙ a ⊙ σ(g) (1 - σ(g))
            if need_x:
                torch.mm(d, weight, out=g_x[rows])  # ∂x = [∂a, ∂g] W: one GEMM for both halves
            if need_w:
                g_w.addmm_(d.mT, x[rows])  # ∂W += [∂a, ∂g]ᵀ x
            if g_b is not None:
                g_b += d.sum(0)
        return g_x, g_w, g_b


def linear_glu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.glu(F.linear(x, weight, bias), dim=-1)`` = a ⊙ σ(g) with [a, g] = x Wᵀ + b (Dauphin et al., arXiv
    1612.08083), by row blocks where that pays: the gate is formed on each block while it is in cache, and the
    backward forms ∂a, ∂g and the three GEMMs block by block (torch's CPU ``glu`` and ``glu_backward`` took 48 of the
    S4D block's 267 ms per forward+backward at B 8, L 4 096, H 128 on one thread). Both halves come from one GEMM per
    block, and the backward's ∂x and ∂W from one GEMM each per block on [∂a, ∂g]."""
    if weight.shape[0] % 2:
        raise ValueError(f"linear_glu: the weight needs an even number of rows (two halves); got {weight.shape[0]}")
    if not _blocked(x, weight):
        return F.glu(F.linear(x, weight, bias), dim=-1)
    lead = x.shape[:-1]
    y = apply_function(_LinearGLU, x.reshape(-1, x.shape[-1]).contiguous(), weight, bias)
    return y.view(*lead, weight.shape[0] // 2)


def hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` runs hooks: its own forward/backward (pre-)hooks or any global module hook."""
    from torch.nn.modules import module as torch_module

    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        or torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
        or torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks
    )


def weight_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype a linear-like module computes in and its device: its ``weight``'s, or, where ``weight`` is a method
    (``torch.ao`` dynamically quantised linears: int8 weights, float32 activations), float32 on the quantised weight's
    device (before, reading ``.weight.dtype`` there raised "'function' object has no attribute 'dtype'")."""
    weight = module.weight
    if callable(weight) and not isinstance(weight, torch.Tensor):
        weight = weight()
        return (torch.float32 if weight.is_quantized else weight.dtype), weight.device
    return weight.dtype, weight.device


def plain_linear(module: nn.Module) -> bool:
    """Whether calling ``module`` is exactly ``F.linear`` with its weight and bias: a plain ``nn.Linear`` (not a
    subclass or wrapper) without hooks."""
    return plain_module(module, nn.Linear)


def plain_module(module: nn.Module, cls: type) -> bool:
    """Whether ``module`` is exactly a ``cls`` (not a subclass or wrapper) without hooks and with its class's own
    ``forward``: a fused kernel may then stand in for its call. A ``forward`` set on the instance (accelerate's
    ``add_hook_to_module``, an activation-steering patch: ``module.forward = ...``) is what calling the module runs,
    so such a module is called (before, forward's fused projections bypassed it while ``step`` ran it, silently)."""
    return type(module) is cls and not hooked(module) and "forward" not in module.__dict__


def apply_module(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for an output projection that is an ``nn.Linear``, an ``nn.Sequential`` of modules or anything
    else: plain linears (in a sequential without hooks of its own, too) go by :func:`linear`, everything else is
    called."""
    if plain_module(module, nn.Sequential):
        if len(module) == 2 and plain_linear(module[0]) and plain_module(module[1], nn.GLU) and module[1].dim == -1:
            return linear_glu(x, module[0].weight, module[0].bias)  # Linear H→2H + GLU, fused by row blocks
        for m in module:
            x = apply_linear(m, x)
        return x
    return apply_linear(module, x)


def apply_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a projection: by :func:`linear` when the module is a plain ``nn.Linear`` without hooks,
    else by calling the module (a LoRA wrapper, a quantised linear or a hook sees its call)."""
    if plain_linear(module):
        return linear(x, module.weight, module.bias)
    return module(x)


def apply_split_linear(module: nn.Module, x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """``module(x).split(sizes, -1)`` for a projection: by :func:`split_linear` (contiguous pieces) when the module is
    a plain ``nn.Linear`` without hooks, else by calling the module and splitting its output."""
    if plain_linear(module):
        return split_linear(x, module.weight, module.bias, sizes)
    return module(x).split(list(sizes), dim=-1)
