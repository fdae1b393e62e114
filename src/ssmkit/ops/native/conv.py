"""The causal depthwise (short) convolution by the compiled C kernel (``causal_conv.c``), forward and backward, on the
CPU, optionally followed by SiLU (the short convolutions of Mamba, Mamba-2, Hawk, H3 and Hyena).

y_{t,h} = act(Σ_k w_{h,k} x_{t-W+1+k, h} + b_h), continued from the state (the last W-1 inputs) -- the semantics of
:func:`ssmkit.ops.conv.causal_conv1d_reference` (then SiLU). It works in the (B, L, H) layout and reads x through its
strides (a slice of an in-projection's output needs no copy), where ``F.conv1d`` needs two transposed copies; with the
activation fused, the pre-activation is never stored (the backward recomputes it from x).

Usable where ``native_status("causal_conv1d", dtype)`` says so (:mod:`ssmkit.ops.native.gate`). Differentiated itself
(``create_graph``), the backward is that of ``F.conv1d`` (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.gate import require_native
from ssmkit.ops.native.parallel import ptr, run_checked
from ssmkit.ops.opaque import absent_if_zero, kernel_op
from ssmkit.ops.twice import graph_backward

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of causal_conv.c: (argument types, result type)
    "cc_items": ([_i64] * 3, _i64),
    "cc_forward": ([_p, _i64, _i64, _p, _p, _p, _i64, _p, _p] + [_i64] * 7, ctypes.c_int),
    "cc_backward": ([_p, _i64, _i64, _p, _p, _p, _i64] + [_p] * 5 + [_i64] * 7, ctypes.c_int),
}
ACTIVATIONS = (None, "silu")


class _NativeConv(torch.autograd.Function):
    """y = act(causal depthwise conv(x) + b) and the final state, by the C kernel.

    Inputs: x (B, L, H) with unit channel stride, weight (H, W), bias (H,) or None, state (B, H, W-1) or None, silu
    (bool). Outputs y (B, L, H) contiguous and the state after x (B, H, W-1).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, state, silu):  # type: ignore[override]
        wt = weight.t().contiguous()  # (W, H)
        bias_c, state_c = (None if t is None else t.contiguous() for t in (bias, state))
        y, stL = _forward_kernel(x, wt, bias_c, state_c, silu)
        ctx.save_for_backward(x, wt, bias_c, state_c, weight, bias, state)  # then the inputs as given (double backward)
        ctx.silu, ctx.has_bias, ctx.has_state = silu, bias is not None, state is not None
        return y, stL

    @staticmethod
    def backward(ctx, g_y, g_st):  # type: ignore[override]
        saved = ctx.saved_tensors  # (read once: torch.utils.checkpoint unpacks each saved tensor once)
        x, wt, bias, state = saved[:4]
        if torch.is_grad_enabled():  # create_graph: a double backward, through F.conv1d (ops/twice.py)
            from ssmkit.ops.conv import causal_conv1d_torch

            def torch_path(x, weight, bias, state):
                return causal_conv1d_torch(x, weight, bias, state, True, "silu" if ctx.silu else None)

            given = (x, *saved[4:])
            return (*graph_backward(torch_path, given, ctx.needs_input_grad[:4], (g_y, g_st)), None)
        g_y = torch.zeros_like(x) if g_y is None else g_y.contiguous()
        g_st = None if g_st is None else g_st.contiguous()
        g_x, g_P, *g_state = _backward_kernel(x, wt, bias, state, ctx.silu, g_y, g_st)
        W = wt.shape[0]
        return g_x, g_P[:W].t(), (g_P[W] if ctx.has_bias else None), (g_state[0] if g_state else None), None


def _forward_fake(x, wt, bias, state, silu):
    Bsz, L, H = x.shape
    return [x.new_empty(Bsz, L, H), x.new_empty(Bsz, H, wt.shape[0] - 1)]


@kernel_op("causal_conv1d_forward", _forward_fake)
def _forward_kernel(x: Tensor, wt: Tensor, bias: Optional[Tensor], state: Optional[Tensor], silu: bool) -> list[Tensor]:
    """The C forward: [y (B, L, H) contiguous, the state after x (B, H, W-1)] from x (B, L, H) with unit channel
    stride, the taps transposed wᵀ (W, H), bias (H,) and state (B, H, W-1) contiguous or None."""
    fns = bind("causal_conv.c", x.dtype, SIGNATURES)
    Bsz, L, H = x.shape
    W = wt.shape[0]
    y = x.new_empty(Bsz, L, H)
    stL = x.new_empty(Bsz, H, W - 1)
    args = [ptr(x), x.stride(0), x.stride(1), ptr(wt), ptr(bias), ptr(state), int(silu), ptr(y), ptr(stL),
            Bsz, L, H, W]
    run_checked(fns["cc_forward"], fns["cc_items"](Bsz, L, W), args, fns["openmp"],
                "causal_conv1d native: the forward could not allocate its buffer")
    return [y, stL]


def _backward_fake(x, wt, bias, state, silu, g_y, g_st):
    Bsz, L, H = x.shape
    W = wt.shape[0]
    g_state = [x.new_empty(Bsz, H, W - 1)] if state is not None else []
    return [x.new_empty(Bsz, L, H), x.new_empty(W + 1, H), *g_state]


@kernel_op("causal_conv1d_backward", _backward_fake)
def _backward_kernel(x: Tensor, wt: Tensor, bias: Optional[Tensor], state: Optional[Tensor], silu: bool, g_y: Tensor,
                     g_st: Optional[Tensor]) -> list[Tensor]:
    """The C backward: [∂x (B, L, H), (W + 1, H): ∂w (transposed) and ∂b, then ∂state when a state was given], from the
    forward's inputs and the outputs' gradients g_y (B, L, H) and g_st (B, H, W-1) (None: unused), contiguous."""
    fns = bind("causal_conv.c", x.dtype, SIGNATURES)
    Bsz, L, H = x.shape
    W = wt.shape[0]
    g_st = absent_if_zero(g_st)
    n_items = fns["cc_items"](Bsz, L, W)
    g_x = x.new_empty(Bsz, L, H)
    g_state = x.new_empty(Bsz, H, W - 1) if state is not None else None
    g_P = x.new_zeros(n_items, W + 1, H)  # per item (a fixed summation order): ∂w (transposed) and ∂b
    args = [ptr(x), x.stride(0), x.stride(1), ptr(wt), ptr(bias), ptr(state), int(silu), ptr(g_y), ptr(g_st),
            ptr(g_x), ptr(g_state), ptr(g_P), Bsz, L, H, W]
    run_checked(fns["cc_backward"], n_items, args, fns["openmp"],
                "causal_conv1d native: the backward could not allocate its buffer")
    return [g_x, g_P.sum(0), *([] if g_state is None else [g_state])]


def conv_unchecked(x, weight, bias, state, return_state, activation):
    """:func:`causal_conv1d_native` after its checks (the smoke call enters here)."""
    if x.stride(2) != 1:
        x = x.contiguous()
    y, st = apply_function(_NativeConv, x, weight, bias, state, activation == "silu")
    return y, (st if return_state else None)


def causal_conv1d_native(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
    return_state: bool = True,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise convolution (then ``activation``) by the C kernel; equals the reference.

    y_t = act(Σ_k w_k ⊙ x_{t-W+1+k} + b), continued from ``state`` (the W-1 inputs before x, oldest first).

    Args:
        x: (B, L, H) input on the CPU, float32 or float64 (any batch and time strides; channels contiguous or copied).
        weight: (H, W) taps, ``nn.Conv1d`` order (the last one multiplies the current input).
        bias: (H,) or None.
        state: (B, H, W-1) the W-1 inputs before x, or None for zeros.
        return_state: also return the last W-1 inputs (the state after x).
        activation: None or ``"silu"`` (fused: y = SiLU(conv)).

    Returns:
        y (B, L, H) and the final state (B, H, W-1) (None when not asked for).

    Raises:
        RuntimeError: the kernel cannot run here (the reason from ``native_status``), or x is not on the CPU.
    """
    from ssmkit.ops.conv import _check, check_activation

    _check(x, weight, bias, state, step=False)
    check_activation(activation)
    require_native("causal_conv1d", "causal_conv1d", x.dtype, x.device, "x is")
    return conv_unchecked(x, weight, bias, state, return_state, activation)
