"""The first-order linear recurrence h_t = a_t ⊙ h_{t-1} + b_t by the compiled C kernel (``linear_recurrence.c``),
forward and backward, on the CPU: real or complex, a time-varying (B, L, *S) or time-invariant (*S) gate.

The semantics of :func:`ssmkit.ops.recurrence.linear_recurrence_reference` (arXiv 2303.06349 eq. 1): one pass over time
per batch row and block of channels, where the chunked PyTorch path makes ~2T + L/T passes of small ops. Its backward
is the adjoint recurrence over the stored states. Usable where ``native_status("linear_recurrence", dtype)`` says so
(:mod:`ssmkit.ops.native.gate`). Differentiated itself (``create_graph``: a gradient penalty, a Hessian-vector
product), the backward is the same adjoint written in differentiable tensor ops (:func:`adjoint_with_graph`).
"""

from __future__ import annotations

import ctypes
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmkit.ops._checks import REAL_OF
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.gate import require_native
from ssmkit.ops.native.parallel import ptr, run_parts
from ssmkit.ops.opaque import kernel_op

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of linear_recurrence.c: (argument types, result type)
    "lr_items": ([_i64] * 2, _i64),
    "lr_forward": ([_p, _i64, _p, _p, _p] + [_i64] * 7, None),
    "lr_backward": ([_p, _i64] + [_p] * 8 + [_i64] * 7, None),
}


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    return REAL_OF.get(t.dtype, t.dtype)


def recurrence_forward(a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    """Every state h (B, L, K) of h_t = a_t ⊙ h_{t-1} + b_t by the C kernel: a (B, L, K) or (K,), b (B, L, K), h0 (B, K)
    or None, all contiguous and of one dtype (real or complex)."""
    return _forward_kernel(a, b, h0)[0]


def recurrence_backward(
    a: Tensor, h0: Tensor | None, h: Tensor, g_h: Tensor | None, g_last: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The adjoint of :func:`recurrence_forward` from its states h: (∂a, ∂b, ∂h0) for the gradients g_h (B, L, K) of
    every state and g_last (B, K) of the last one (either None for zeros). ∂a has a's shape ((K,) for a time-invariant
    gate, summed over batch and time); ∂h0 is None without h0."""
    g_h = None if g_h is None else g_h.resolve_conj().contiguous()
    g_last = None if g_last is None else g_last.resolve_conj().contiguous()
    g_a, g_b, *g_h0 = _backward_kernel(a, h0, h, g_h, g_last)
    return g_a, g_b, (g_h0[0] if g_h0 else None)


def _forward_fake(a, b, h0):
    return [torch.empty_like(b)]


@kernel_op("linear_recurrence_forward", _forward_fake)
def _forward_kernel(a: Tensor, b: Tensor, h0: Optional[Tensor]) -> list[Tensor]:
    """The C forward: [h (B, L, K)] (see :func:`recurrence_forward`)."""
    fns = bind("linear_recurrence.c", _real_dtype(b), SIGNATURES)
    Bsz, L, K = b.shape
    h = torch.empty_like(b)
    args = [ptr(a), int(a.dim() == 3), ptr(b), ptr(h0), ptr(h), int(b.is_complex()), Bsz, L, K]
    run_parts(fns["lr_forward"], fns["lr_items"](Bsz, K), args, fns["openmp"])
    return [h]


def _backward_fake(a, h0, h, g_h, g_last):
    return [torch.empty_like(a), torch.empty_like(h), *([] if h0 is None else [torch.empty_like(h0)])]


@kernel_op("linear_recurrence_backward", _backward_fake)
def _backward_kernel(a: Tensor, h0: Optional[Tensor], h: Tensor, g_h: Optional[Tensor],
                     g_last: Optional[Tensor]) -> list[Tensor]:
    """The C backward: [∂a, ∂b, then ∂h0 when h0 is given] (see :func:`recurrence_backward`), g_h and g_last contiguous
    with their conjugation resolved."""
    fns = bind("linear_recurrence.c", _real_dtype(h), SIGNATURES)
    Bsz, L, K = h.shape
    varying, cplx = a.dim() == 3, h.is_complex()
    g_b = torch.empty_like(h)
    g_a = torch.empty_like(h) if varying else None
    g_h0 = torch.empty_like(h0) if h0 is not None else None
    g_A = h.new_zeros(Bsz, K * (2 if cplx else 1), dtype=_real_dtype(h))  # per batch row: an invariant gate's gradient
    args = [ptr(a), int(varying), ptr(h0), ptr(h), ptr(g_h), ptr(g_last), ptr(g_b), ptr(g_a), ptr(g_h0), ptr(g_A),
            int(cplx), Bsz, L, K]
    run_parts(fns["lr_backward"], fns["lr_items"](Bsz, K), args, fns["openmp"])
    if not varying:
        g_A = g_A.sum(0)
        g_a = torch.view_as_complex(g_A.view(K, 2)) if cplx else g_A
    return [g_a, g_b, *([] if g_h0 is None else [g_h0])]


class _NativeRecurrence(torch.autograd.Function):
    """h_t = a_t ⊙ h_{t-1} + b_t by the C kernel. Inputs: a (B, L, K) or (K,), b (B, L, K), h0 (B, K) or None, all
    contiguous and of one dtype. Outputs: h (B, L, K) and h_{L-1} (B, K)."""

    @staticmethod
    def forward(ctx, a, b, h0):  # type: ignore[override]
        h = recurrence_forward(a, b, h0)
        ctx.save_for_backward(a, h0, h)
        return h, h[:, -1].clone()

    @staticmethod
    def backward(ctx, g_h, g_last):  # type: ignore[override]
        a, h0, h = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gradients must carry their history
            return adjoint_with_graph(a, h0, h, g_h, g_last, ctx.needs_input_grad)
        return recurrence_backward(a, h0, h, g_h, g_last)


def adjoint_with_graph(
    a: torch.Tensor, h0: torch.Tensor | None, h: torch.Tensor, g_h: torch.Tensor, g_last: torch.Tensor,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(∂a, ∂b, ∂h0) of h_t = a_t ⊙ h_{t-1} + b_t in differentiable tensor ops, for a double backward.

    The adjoint λ_t = G_t + conj(a_{t+1}) λ_{t+1} (G = g_h, plus g_last at t = L-1) by the chunked scan run backwards
    in time; ∂b_t = λ_t, ∂a_t = λ_t conj(h_{t-1}) (summed over batch and time for a time-invariant a), ∂h0 =
    conj(a_0) λ_0 (PyTorch's conjugate convention). The states h are the forward's output, so the gradients depend on
    a, b and h0 through this node again: a, b (B, L, K) or a (K,), h0 (B, K) or None, g_h (B, L, K), g_last (B, K).
    """
    from ssmkit.ops.recurrence import linear_recurrence_chunked

    invariant = a.dim() == 1
    G = torch.cat([g_h[:, :-1], (g_h[:, -1] + g_last)[:, None]], dim=1)  # (B, L, K)
    a_adj = a.conj() if invariant else F.pad(a[:, 1:].conj(), (0, 0, 0, 1))  # conj(a_{t+1}), 0 at t = L-1
    lam = linear_recurrence_chunked(a_adj if invariant else a_adj.flip(1), G.flip(1))[0].flip(1)  # (B, L, K)
    g_a = g_h0 = None
    if needs[0]:
        h_first = torch.zeros_like(h[:, :1]) if h0 is None else h0[:, None]  # (B, 1, K)
        h_prev = torch.cat([h_first, h[:, :-1]], dim=1)  # (B, L, K)
        g_a = lam * h_prev.conj()
        g_a = g_a.sum((0, 1)) if invariant else g_a
    if h0 is not None and needs[2]:
        g_h0 = lam[:, 0] * (a if invariant else a[:, 0]).conj()
    return g_a, lam, g_h0


def recurrence_unchecked(a, b, h0):
    """:func:`linear_recurrence_native` after its checks (the smoke call enters here)."""
    Bsz, L = b.shape[:2]
    S = tuple(b.shape[2:])
    K = math.prod(S)
    flat = lambda t, *lead: t.resolve_conj().reshape(*lead, K).contiguous()  # noqa: E731
    a_f = flat(a, Bsz, L) if a.shape == b.shape else flat(a)
    h, h_last = apply_function(_NativeRecurrence, a_f, flat(b, Bsz, L), None if h0 is None else flat(h0, Bsz))
    return h.reshape(Bsz, L, *S), h_last.reshape(Bsz, *S)


def linear_recurrence_native(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """First-order linear recurrence by the C kernel; equals :func:`ssmkit.ops.recurrence.linear_recurrence_reference`.

    h_t = a_t ⊙ h_{t-1} + b_t (arXiv 2303.06349 eq. 1; a_t = a for a time-invariant gate).

    Args:
        a: (B, L, *S) time-varying gates, or (*S) one time-invariant gate per channel; real or complex, on the CPU.
        b: (B, L, *S) inputs, a's dtype.
        h0: (B, *S) initial state h_{-1}, or None for zeros.

    Returns:
        h (B, L, *S) every state, and h_last = h_{L-1} (B, *S).

    Raises:
        RuntimeError: the kernel cannot run here (the reason from ``native_status``), or the inputs are not on the CPU.
    """
    from ssmkit.ops.recurrence import _check_recurrence

    _check_recurrence(a, b, h0)
    require_native("linear_recurrence", "linear_recurrence", _real_dtype(b), b.device, "b is")
    return recurrence_unchecked(a, b, h0)
