"""The Real-Gated Linear Recurrent Unit (RG-LRU) of Griffin and Hawk: De et al., "Griffin: Mixing Gated Linear
Recurrences with Local Attention for Efficient Language Models", arXiv 2402.19427 §2.4.

    r_t = σ(W_a x_t + b_a)                 recurrence gate
    i_t = σ(W_x x_t + b_x)                 input gate
    a_t = a^{c r_t},  a = σ(Λ),  c = 8     (log a_t = -c r_t softplus(-Λ))
    h_t = a_t ⊙ h_{t-1} + √(1 - a_t²) ⊙ (i_t ⊙ x_t)

At a segment start (a reset) the recurrence forgets the past and the input is not normalised: a_t = 0 and the
multiplier √(1 - a_t²) is replaced by 1 (recurrentgemma's convention), so h_t = i_t ⊙ x_t.

The square root has a clipped backward (recurrentgemma, needed for bfloat16 training): d√v/dv = 1/(2√v) is
replaced by 1/√max(4v, 1/1000²), i.e. it never exceeds 1000 (reached where 1 - a_t² < 2.5e-7).

The gates are computed by the layer (they are linear maps); this file holds the elementwise part and the scan: in
PyTorch ops around :func:`ssmkit.ops.recurrence.linear_recurrence` (:func:`rglru_torch`), or in one C kernel on the
CPU (:mod:`ssmkit.ops.native.rglru`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssmkit.ops.function_call import apply_function, jvp_twin
from ssmkit.ops.recurrence import linear_recurrence

MAX_SQRT_GRADIENT = 1000.0  # recurrentgemma's bound on the derivative of the square root


class _SqrtBoundedGradient(torch.autograd.Function):
    """√v with the backward g / √max(4v, 1/G²): the true derivative 1/(2√v), clipped at G.

    Forward-mode AD: :class:`_SqrtBoundedGradientJvp`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(v, max_grad):  # type: ignore[override]
        return torch.sqrt(v)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        v, max_grad = inputs
        ctx.save_for_backward(v)
        ctx.max_grad = max_grad

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (v,) = ctx.saved_tensors
        return grad / torch.sqrt(torch.clamp(4.0 * v, min=1.0 / ctx.max_grad**2)), None


@jvp_twin(_SqrtBoundedGradient)
class _SqrtBoundedGradientJvp(_SqrtBoundedGradient):
    """:class:`_SqrtBoundedGradient` with its forward derivative, called under forward-mode AD (``ops.function_call``):
    the same clipped derivative, v̇ / √max(4v, 1/G²), so that forward and reverse mode give one Jacobian (``jacfwd`` =
    ``jacrev``); it differs from the true derivative 1/(2√v) only where that exceeds G."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _SqrtBoundedGradient.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def jvp(ctx, v_dot, _max_grad):  # type: ignore[override]
        (v,) = ctx.saved_tensors
        return v_dot / torch.sqrt(torch.clamp(4.0 * v, min=1.0 / ctx.max_grad**2))


def sqrt_bounded_gradient(v: torch.Tensor, max_grad: float = MAX_SQRT_GRADIENT) -> torch.Tensor:
    """√v whose derivative is clipped: d/dv = 1/√max(4v, 1/max_grad²) = min(1/(2√v), max_grad).

    The RG-LRU's input normalisation √(1 - a_t²) (arXiv 2402.19427 §2.4) with recurrentgemma's clipped backward.

    Args:
        v: (B, L, H) values >= 0 (any shape).
        max_grad: the largest derivative, G (1000 in recurrentgemma).

    Returns:
        (B, L, H) √v, v's shape and dtype.
    """
    return apply_function(_SqrtBoundedGradient, v, float(max_grad))


def _check_rglru(x, r, i, Lambda, h0, resets) -> None:
    """Raise ``ValueError`` unless x, r, i are (B, L, H) real tensors of one dtype with L >= 1 (as the reference path
    requires), Λ is (H,), h0 is (B, H) or None and resets a (B, L) bool tensor or None."""
    for name, t in (("x", x), ("r", r), ("i", i), ("Lambda", Lambda)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            found = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a real floating-point tensor; got {found}")
    if x.dim() != 3 or x.shape[1] == 0:
        raise ValueError(f"x must be (B, L, H) with L >= 1; got shape {tuple(x.shape)}")
    for name, t in (("r", r), ("i", i)):
        if t.shape != x.shape:
            raise ValueError(f"{name} must have x's shape (B, L, H) = {tuple(x.shape)}; got {tuple(t.shape)}")
    Bsz, L, H = x.shape
    if Lambda.shape != (H,):
        raise ValueError(f"Lambda must be (H,) = ({H},) (from x); got {tuple(Lambda.shape)}")
    if h0 is not None and (not isinstance(h0, torch.Tensor) or h0.shape != (Bsz, H)):
        found = tuple(h0.shape) if isinstance(h0, torch.Tensor) else type(h0).__name__
        raise ValueError(f"h0 must be (B, H) = {(Bsz, H)}; got {found}")
    if resets is not None and (not isinstance(resets, torch.Tensor) or resets.dtype != torch.bool
                               or resets.shape != (Bsz, L)):
        found = f"{resets.dtype} {tuple(resets.shape)}" if isinstance(resets, torch.Tensor) else type(resets).__name__
        raise ValueError(f"resets must be a bool tensor (B, L) = {(Bsz, L)}; got {found}")


def rglru_torch(
    x: torch.Tensor,
    r: torch.Tensor,
    i: torch.Tensor,
    Lambda: torch.Tensor,
    c: float = 8.0,
    h0: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rglru` in PyTorch ops around :func:`ssmkit.ops.recurrence.linear_recurrence` (with ``backend``): the
    elementwise gate algebra, then the scan. Arguments and returns as :func:`rglru`."""
    log_a = -c * r * F.softplus(-Lambda)  # (B, L, H): log a^{c r_t} = c r_t log σ(Λ)
    multiplier = sqrt_bounded_gradient(-torch.expm1(2 * log_a))  # (B, L, H): √(1 - a_t²)
    if resets is not None:
        keep = ~resets[..., None]  # (B, L, 1)
        log_a = log_a + torch.where(keep, 0.0, -math.inf).to(log_a.dtype)  # (B, L, H): log a_t = -inf, a_t = 0 there
        multiplier = torch.where(keep, multiplier, torch.ones_like(multiplier))  # (B, L, H): 1 there
    b = multiplier * (i * x)  # (B, L, H)
    a = torch.exp(log_a)  # (B, L, H)
    # with the logs the chunked scan forms its chunk products as exp(Σ log a_t): a float32 product of gates near 1
    # drifts (ops/recurrence.py, the note above _gate_logs)
    return linear_recurrence(a, b, h0, backend=backend, log_a=log_a)  # (B, L, H), (B, H)


def _fused(x, r, i, Lambda, h0, resets, forced: bool) -> bool:
    """Whether this call takes the C kernel of ``rglru_scan.c``: forced by the ``"native"`` backend (raising where it
    cannot run), or chosen by ``"auto"`` (:func:`prefer_native`, the tensors of one dtype on one device)."""
    from ssmkit.ops.native.gate import prefer_native, require_native

    same = all(t.dtype == x.dtype and t.device == x.device for t in (r, i, Lambda, *([h0] if h0 is not None else [])))
    if not forced:
        return same and prefer_native("rglru", x)
    require_native("rglru", "rglru", x.dtype, x.device, "x is")
    if not same:
        raise RuntimeError("rglru: backend 'native' takes x, r, i, Lambda and h0 in one dtype on one device")
    return True


def rglru(
    x: torch.Tensor,
    r: torch.Tensor,
    i: torch.Tensor,
    Lambda: torch.Tensor,
    c: float = 8.0,
    h0: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The RG-LRU recurrence over a sequence, given its gates (arXiv 2402.19427 §2.4, eqs. 1-4).

    h_t = a_t ⊙ h_{t-1} + √(1 - a_t²) ⊙ i_t ⊙ x_t with log a_t = -c r_t softplus(-Λ); at a reset a_t = 0 and the
    multiplier is 1. 1 - a_t² is formed as -expm1(2 log a_t) (no cancellation as a_t → 1).

    Backends: ``"native"`` (and ``"auto"`` on the CPU where its smoke call passed, for tensors of one dtype, when
    nothing traces) runs the C kernel ``rglru_scan.c`` (:mod:`ssmkit.ops.native.rglru`: the gate algebra and the scan
    in one pass, forward and backward); ``"reference"`` and ``"chunked"`` (and ``"auto"`` elsewhere) run
    :func:`rglru_torch`, PyTorch ops around :func:`ssmkit.ops.recurrence.linear_recurrence` on that backend.

    Args:
        x: (B, L, H) input of the RG-LRU (after the short convolution).
        r: (B, L, H) recurrence gate in (0, 1), x's dtype.
        i: (B, L, H) input gate in (0, 1), x's dtype.
        Lambda: (H,) Λ, with a = σ(Λ), x's dtype.
        c: the constant c of a_t = a^{c r_t} (8 in the paper).
        h0: (B, H) state before x, or None for zeros.
        resets: (B, L) bool, True where a segment starts (the state before it is dropped), or None for none.
        backend: ``"reference"``, ``"chunked"``, ``"native"`` or ``"auto"``, or None for the context's.

    Returns:
        h (B, L, H) every state, and the last one (B, H).
    """
    from ssmkit.ops.backend import get_backend

    _check_rglru(x, r, i, Lambda, h0, resets)
    name = get_backend() if backend is None else backend
    if name in ("native", "auto") and _fused(x, r, i, Lambda, h0, resets, forced=name == "native"):
        from ssmkit.ops.native.rglru import rglru_unchecked

        return rglru_unchecked(x, r, i, Lambda, c, h0, resets)
    return rglru_torch(x, r, i, Lambda, c, h0, resets, backend)


def rglru_step(
    x_t: torch.Tensor,
    r_t: torch.Tensor,
    i_t: torch.Tensor,
    Lambda: torch.Tensor,
    c: float,
    h: torch.Tensor,
    reset: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step of :func:`rglru`: h_t = a_t ⊙ h_{t-1} + √(1 - a_t²) ⊙ i_t ⊙ x_t (a_t = 0, multiplier 1 at a reset).

    Args:
        x_t: (B, H) input at one time step.
        r_t: (B, H) recurrence gate.
        i_t: (B, H) input gate.
        Lambda: (H,) Λ, with a = σ(Λ).
        c: the constant c of a_t = a^{c r_t}.
        h: (B, H) state h_{t-1}.
        reset: (B,) bool, True where this step starts a segment, or None.

    Returns:
        (B, H) h_t.
    """
    log_a = -c * r_t * F.softplus(-Lambda)  # (B, H)
    a = torch.exp(log_a)  # (B, H)
    multiplier = sqrt_bounded_gradient(-torch.expm1(2 * log_a))  # (B, H)
    if reset is not None:
        keep = ~reset[:, None]  # (B, 1)
        a = a * keep
        multiplier = torch.where(keep, multiplier, torch.ones_like(multiplier))
    return a * h + multiplier * (i_t * x_t)  # (B, H)
