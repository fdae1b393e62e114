"""The dual-encoder (two-tower) pieces of pair classification, as in the Long Range Arena's retrieval task (Tay et
al. 2021, arXiv 2011.04006; the LRA code's ``classifier_head_dual`` with the NLI interaction).

Each document of a pair is encoded separately by the same layers and pooled to one vector; the classifier then sees

    a, b = pool(encoder(x_a)), pool(encoder(x_b))          (B, H) each, one shared encoder
    f = [a, b, a ⊙ b, a − b]                               (B, 4H)
    logits = W_2 GELU(W_1 f + c_1) + c_2                    W_1: 4H → H, W_2: H → C

This is the head of the S4 repository's retrieval decoder (state-spaces/s4 ``src/tasks/decoders.py``, ``nli: true``,
``activation: gelu``, intermediate width H); the original LRA head uses two ReLU layers (H, H/2) instead.
Padding is excluded from the mean (:func:`masked_mean`), as S4's ``use_lengths`` does; the
original LRA code averages over every position.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ssmkit.layers.checks import check_positive_int


def pair_features(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The LRA matching features [a, b, a ⊙ b, a − b] of two pooled encodings.

    Args:
        a: (B, H) the first document's encoding.
        b: (B, H) the second document's encoding.

    Returns:
        (B, 4H).
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"a and b must be two (B, H) encodings of one shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.cat([a, b, a * b, a - b], dim=-1)


def masked_mean(h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The mean over time of ``h`` at the positions ``keep`` marks (all positions when ``keep`` is None).

    Args:
        h: (B, L, H) per-step features.
        keep: (B, L) bool, True at the positions to average (a sequence with none gives zeros), or None.

    Returns:
        (B, H).
    """
    if keep is None:
        return h.mean(dim=1)
    if keep.shape != h.shape[:2]:
        raise ValueError(f"keep must be (B, L) = {tuple(h.shape[:2])}; got {tuple(keep.shape)}")
    weight = keep.to(h.dtype)[..., None]  # (B, L, 1)
    return (h * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


def masked_last(h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The features at the last position ``keep`` marks (the last position when ``keep`` is None; the first
    position for a sequence with none).

    Args:
        h: (B, L, H) per-step features.
        keep: (B, L) bool, or None.

    Returns:
        (B, H).
    """
    if keep is None:
        return h[:, -1]
    if keep.shape != h.shape[:2]:
        raise ValueError(f"keep must be (B, L) = {tuple(h.shape[:2])}; got {tuple(keep.shape)}")
    positions = torch.arange(h.shape[1], device=h.device)  # (L,)
    last = torch.where(keep, positions, torch.zeros_like(positions)).amax(dim=1)  # (B,)
    return h[torch.arange(h.shape[0], device=h.device), last]


class DualEncoderHead(nn.Module):
    """The classifier of a dual encoder: logits = W_2 GELU(W_1 [a, b, a ⊙ b, a − b]) (module docstring).

    Args:
        d_model: width H of each pooled encoding (and of the hidden layer).
        d_output: classes C.
        device, dtype: of the parameters.
    """

    def __init__(self, d_model: int, d_output: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_positive_int(d_model, "d_model")
        check_positive_int(d_output, "d_output")
        self.hidden = nn.Linear(4 * d_model, d_model, device=device, dtype=dtype)
        self.out = nn.Linear(d_model, d_output, device=device, dtype=dtype)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b (B, H) pooled encodings -> (B, C) logits."""
        return self.out(F.gelu(self.hidden(pair_features(a, b))))
