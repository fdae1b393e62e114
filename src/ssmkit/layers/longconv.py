"""The long causal convolution of SGConv and Hyena continued from the inputs of earlier calls.

    y_t = Σ_{s≤t} K_{t-s} u_s        over the past inputs u_{-T}, ..., u_{-1} and the new ones u_0, ..., u_{L-1}

A layer that is a long convolution carries the past inputs its kernel still reaches as its state (SGConv: the last
K_len - 1, its kernel having K_len taps; Hyena: all of them, its implicit filters having unbounded support). One
convolution over [past, new] gives exactly the outputs of one pass over the whole sequence, so a sequence cut
anywhere and continued from the state equals the one-pass output (docs/design.md, rule 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops.fftconv import causal_conv


def conv_with_past(
    u: torch.Tensor, K: torch.Tensor, past: torch.Tensor | None, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The causal convolution of the new inputs continued from the past ones.

    Args:
        u: (B, L, H) the new inputs.
        K: (H, L_k) the kernel, L_k >= T + L (zero-padded by the caller beyond its support).
        past: (B, H, T) the T inputs before u, oldest first (a layer state's layout), or None for none (T = 0).
        backend: the backend of ``ssmkit.ops.causal_conv`` (``"reference"``, ``"fft"`` or ``"auto"``).

    Returns:
        y (B, L, H) the outputs at the new inputs, and the whole input [past, u] (B, T + L, H).
    """
    T = 0 if past is None else past.shape[-1]
    if past is not None:  # also when T = 0: the (empty) state stays in the graph
        u = torch.cat([past.transpose(1, 2), u], dim=1)  # (B, T+L, H)
    y = causal_conv(u, K[:, : u.shape[1]], backend=backend)  # (B, T+L, H)
    return y[:, T:], u


def fit_length(K: torch.Tensor, L: int) -> torch.Tensor:
    """K (..., L_k) cropped or zero-padded to L taps: (..., L). For a symbolic L (``torch.export`` or ``torch.compile``
    with a dynamic length) without a branch on L, so that one program serves L below and above L_k (padding by L
    zeros, then cropping); for an int L by a view or one pad (the branch-free form copies the kernel every call)."""
    if isinstance(L, torch.SymInt):
        return F.pad(K, (0, L))[..., :L]
    return K[..., :L] if K.shape[-1] >= L else F.pad(K, (0, L - K.shape[-1]))


def last_inputs(u: torch.Tensor, W: int) -> torch.Tensor:
    """The last W inputs of u (B, L, H), zeros before its start, as a state: (B, H, W), oldest first. For a symbolic
    length without a branch on L (W zeros in front, then the last W rows: a copy of u), so that ``torch.export``
    keeps one program for every length; for an int length by a slice, padded only when L < W."""
    L = u.shape[1]
    if isinstance(L, torch.SymInt):
        u = F.pad(u, (0, 0, W, 0))  # (B, W + L, H)
    elif L < W:
        u = F.pad(u, (0, 0, W - L, 0))  # (B, W, H)
    return u[:, u.shape[1] - W :].transpose(1, 2).contiguous()  # (B, H, W)
