"""Causal depthwise (short) convolution with a carried state: the short convolutions of Mamba, Mamba-2, Hawk,
H3 and Hyena.

    y_{t,h} = Σ_{k=0}^{W-1} w_{h,k} x_{t-W+1+k, h} + b_h        (taps in ``nn.Conv1d`` order: w_{h,W-1} acts on x_t)

The state is the last W-1 inputs (B, H, W-1), oldest first, zeros before the sequence starts; so a sequence cut
anywhere and continued from the state gives the one-pass output. The weight layout is ``nn.Conv1d(H, H, W,
groups=H).weight[:, 0]``, so a depthwise ``nn.Conv1d``'s weights copy across unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops.backend import dispatch
from ssmkit.ops.native.conv import causal_conv1d_native
from ssmkit.ops.native.gate import prefer_native
from ssmkit.utils import check_floating


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: torch.Tensor | None, step: bool) -> None:
    check_floating(x, "x_t" if step else "x")
    if step and x.dim() != 2:
        raise ValueError(f"x_t must be (B, H) (2 dimensions); got shape {tuple(x.shape)}")
    if not step and (x.dim() != 3 or x.shape[1] == 0):
        raise ValueError(f"x must be (B, L, H) with L >= 1; got shape {tuple(x.shape)}")
    H = x.shape[-1]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != H or weight.shape[1] < 1:
        found = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be (H, W) with H={H} (from x) and W >= 1; got {found}")
    for name, t in (("weight", weight), ("bias", bias), ("state", state)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}; got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}; got {t.device}")
    if bias is not None and tuple(bias.shape) != (H,):
        raise ValueError(f"bias must be (H,) = ({H},); got {tuple(bias.shape)}")
    W = weight.shape[1]
    if state is not None and tuple(state.shape) != (x.shape[0], H, W - 1):
        raise ValueError(f"state must be (B, H, W-1) = ({x.shape[0]}, {H}, {W - 1}); got {tuple(state.shape)}")


ACTIVATIONS = (None, "silu")


def check_activation(activation: object) -> None:
    """``activation`` must be one of :data:`ACTIVATIONS`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")


def activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """``activation`` (one of :data:`ACTIVATIONS`) applied to y (B, L, H): SiLU, or y itself for None."""
    check_activation(activation)
    return F.silu(y) if activation == "silu" else y


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
    return_state: bool = True,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`causal_conv1d` by one grouped ``F.conv1d`` call on the transposed input (backend ``"chunked"``)."""
    _check(x, weight, bias, state, step=False)
    check_activation(activation)
    Bsz, L, H = x.shape
    W = weight.shape[1]
    xt = x.transpose(1, 2)  # (B, H, L)
    if state is None:
        padded = F.pad(xt, (W - 1, 0))  # (B, H, W-1+L)
    else:
        padded = torch.cat([state, xt], dim=-1)  # (B, H, W-1+L)
    y = activate(F.conv1d(padded, weight.unsqueeze(1), bias, groups=H).transpose(1, 2), activation)  # (B, L, H)
    if not return_state:
        return y, None
    return y, padded[:, :, padded.shape[-1] - (W - 1):]  # (B, H, W-1)


def _reference(x, weight, bias=None, state=None, return_state=True, activation=None):
    check_activation(activation)
    y, st = causal_conv1d_reference(x, weight, bias, state)
    return activate(y, activation), (st if return_state else None)


_CONV = {"reference": _reference, "chunked": causal_conv1d_torch, "native": causal_conv1d_native}


def _auto(x: torch.Tensor) -> str:
    """``"auto"``'s path: the C kernel on the CPU where it runs (eager or compiled; not under torch.func or
    torch.export); else ``F.conv1d``."""
    return "native" if prefer_native("causal_conv1d", x) else "chunked"


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
    return_state: bool = True,
    *,
    activation: str | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise convolution of x with W taps per channel, continued from ``state``, then ``activation``.

    y_t = act(Σ_k w_k ⊙ x_{t-W+1+k} + b). Backends: ``"reference"`` -> :func:`causal_conv1d_reference` (a loop over
    time); ``"chunked"`` -> :func:`causal_conv1d_torch` (one ``F.conv1d``); ``"native"`` ->
    :func:`ssmkit.ops.native.causal_conv1d_native` (C kernel, CPU: the (B, L, H) layout, x read through its strides,
    the activation fused); ``"auto"`` -> ``"native"`` on the CPU where it runs and no torch.func transform or
    export traces, else ``"chunked"``.

    Args:
        x: (B, L, H) input.
        weight: (H, W) taps, ``nn.Conv1d`` order (the last tap multiplies the current input).
        bias: (H,) or None.
        state: (B, H, W-1) the W-1 inputs before x (oldest first), or None for zeros.
        return_state: also return the last W-1 inputs (the state after x).
        activation: None, or ``"silu"`` (Mamba's and Mamba-2's convolution is followed by SiLU).
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        y (B, L, H) and the final state (B, H, W-1) (None when not asked for).
    """
    impl = dispatch("causal_conv1d", _CONV, backend, auto=lambda: _auto(x))
    return impl(x, weight, bias, state, return_state, activation)


def causal_conv1d_step(
    x_t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of :func:`causal_conv1d`: y_t = Σ_k w_k x_{t-W+1+k} + b from the last W-1 inputs.

    Args:
        x_t: (B, H) the current input.
        weight: (H, W) taps.
        bias: (H,) or None.
        state: (B, H, W-1) the previous W-1 inputs, oldest first.

    Returns:
        y_t (B, H) and the next state (B, H, W-1).
    """
    _check(x_t, weight, bias, state, step=True)
    window = torch.cat([state, x_t.unsqueeze(-1)], dim=-1)  # (B, H, W)
    y = (window * weight).sum(-1)  # (B, H)
    if bias is not None:
        y = y + bias
    return y, window[:, :, 1:]


def causal_conv1d_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle of :func:`causal_conv1d`: the sum over taps, one time step at a time.

    Args:
        x: (B, L, H) input.
        weight: (H, W) taps (the last one multiplies the current input).
        bias: (H,) or None.
        state: (B, H, W-1) the W-1 inputs before x, or None for zeros.

    Returns:
        y (B, L, H) and the final state (B, H, W-1).
    """
    _check(x, weight, bias, state, step=False)
    Bsz, L, H = x.shape
    W = weight.shape[1]
    past = torch.zeros(Bsz, H, W - 1, dtype=x.dtype, device=x.device) if state is None else state
    history = torch.cat([past, x.transpose(1, 2)], dim=-1)  # (B, H, W-1+L)
    ys = []
    for t in range(L):
        y_t = sum(weight[:, k] * history[:, :, t + k] for k in range(W))  # (B, H)
        ys.append(y_t if bias is None else y_t + bias)
    return torch.stack(ys, dim=1), history[:, :, L:]


def causal_conv1d_segments(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    state: torch.Tensor | None,
    resets: torch.Tensor,
    return_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`causal_conv1d` that does not look across segment starts (the document mask of Griffin's Conv1D,
    arXiv 2402.19427; as recurrentgemma masks its training pass).

        y_t = Σ_{k=0}^{W-1} m_{t,k} w_{W-1-k} ⊙ x_{t-k} + b,   m_{t,k} = 1 iff no segment starts in (t-k, t]

    so each segment is convolved as if it began from a zero state. The returned state holds the last W-1 inputs with
    those before the latest segment start among them zeroed, so continuing from it equals one pass. Costs W
    shifted multiply-adds over (B, L, H) (no (B, L, H, W) tensor).

    Args:
        x: (B, L, H) input.
        weight: (H, W) taps (the last one multiplies the current input).
        bias: (H,) or None.
        state: (B, H, W-1) the W-1 inputs before x (oldest first), or None for zeros.
        resets: (B, L) bool, True at the first step of a segment.
        return_state: also return the state after x.

    Returns:
        y (B, L, H) and the final state (B, H, W-1) (None when not asked for).
    """
    _check(x, weight, bias, state, step=False)
    Bsz, L, H = x.shape
    W = weight.shape[1]
    if not isinstance(resets, torch.Tensor) or resets.dtype != torch.bool or tuple(resets.shape) != (Bsz, L):
        found = f"{tuple(resets.shape)} {resets.dtype}" if isinstance(resets, torch.Tensor) else type(resets).__name__
        raise ValueError(f"resets must be a (B, L) = ({Bsz}, {L}) bool tensor; got {found}")
    if resets.device != x.device:
        raise ValueError(f"resets must be on x's device {x.device}; got {resets.device}")
    past = x.new_zeros(Bsz, W - 1, H) if state is None else state.transpose(1, 2)  # (B, W-1, H)
    xp = torch.cat([past, x], dim=1)  # (B, W-1+L, H): x_t at W-1+t
    rp = F.pad(resets, (W - 1, 0))  # (B, W-1+L): no segment starts inside the state
    keep = torch.ones_like(resets)  # (B, L): m_{t,0} = 1
    y = xp[:, W - 1:] * weight[:, W - 1]  # (B, L, H): tap 0
    for k in range(1, W):
        keep = keep & ~rp[:, W - k: W - k + L]  # (B, L): no start at t-k+1 either
        y = y + keep[..., None] * xp[:, W - 1 - k: W - 1 - k + L] * weight[:, W - 1 - k]  # (B, L, H)
    if bias is not None:
        y = y + bias
    if not return_state:
        return y, None
    if W == 1:
        return y, x.new_zeros(Bsz, H, 0)
    # entry q of the state survives iff no segment starts in (q, L-1]
    tail = rp[:, rp.shape[1] - (W - 1):]  # (B, W-1): starts at the state's positions q
    later = torch.cat([tail[:, 1:], tail.new_zeros(Bsz, 1)], dim=1)  # (B, W-1): a start at q+1
    survive = ~later.flip(1).cummax(dim=1).values.flip(1)  # (B, W-1): no start in (q, L-1]
    return y, (xp[:, xp.shape[1] - (W - 1):] * survive[..., None]).transpose(1, 2)  # (B, H, W-1)
