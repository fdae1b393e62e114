"""Philox4x32-10 and the dropout mask drawn from it, in torch integer ops: the reference of ``native/dropout.c``.

Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a counter
c = (c0, c1, c2, c3) and a key k = (k0, k1) of 32-bit words; ten rounds of

    (hi0, lo0) = M0 · c0,   (hi1, lo1) = M1 · c2,   c ← (hi1 ⊕ c1 ⊕ k0, lo1, hi0 ⊕ c3 ⊕ k1, lo0),
    k ← (k0 + W0, k1 + W1) mod 2^32,

M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85 (hi, lo: the halves of the 64-bit product). The
paper's known-answer vectors are in tests/ops/test_dropout.py.

The dropout mask of n elements under a 63-bit seed: element i takes word i mod 4 of the block at the counter
(j mod 2^32, j div 2^32, 0, 0), j = i div 4, under the key (seed mod 2^32, seed div 2^32), and is kept iff that word
is ≥ round(p · 2^32). Words are held in int64 tensors; an int64 product wraps as the unsigned one does, so its low 64
bits are the unsigned product's.
"""

from __future__ import annotations

import torch
from torch import Tensor

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_LOW = 0xFFFFFFFF


def philox4x32(counter: Tensor, key: tuple[int, int], rounds: int = 10) -> Tensor:
    """Philox4x32 of each counter: (..., 4) int64 words in [0, 2^32) -> (..., 4) int64 words.

    Args:
        counter: (..., 4) int64, each entry in [0, 2^32).
        key: (k0, k1), each in [0, 2^32).
        rounds: 10 for Philox4x32-10.
    """
    if counter.dtype != torch.int64 or counter.shape[-1:] != (4,):
        raise ValueError(f"counter must be (..., 4) int64; got {tuple(counter.shape)} {counter.dtype}")
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key
    for _ in range(rounds):
        p0, p1 = c0 * M0, c2 * M1  # the low 64 bits of the unsigned 32 x 32 products
        c0, c1, c2, c3 = ((p1 >> 32) & _LOW) ^ c1 ^ k0, p1 & _LOW, ((p0 >> 32) & _LOW) ^ c3 ^ k1, p0 & _LOW
        k0, k1 = (k0 + W0) & _LOW, (k1 + W1) & _LOW
    return torch.stack([c0, c1, c2, c3], dim=-1)


def drop_threshold(p: float) -> int:
    """round(p · 2^32): a word below it drops its element, so P(drop) = p to within 2^-33."""
    return min(1 << 32, round(p * (1 << 32)))


def keep_scale(p: float) -> float:
    """1/(1 - p), the scale of a kept element; 0 for p = 1 (nothing is kept)."""
    return 1.0 / (1.0 - p) if p < 1 else 0.0


def keep_mask(n: int, seed: int, p: float, device: torch.device | str = "cpu") -> Tensor:
    """The dropout mask of n elements (module docstring): (n,) bool, True where kept.

    Args:
        n: number of elements.
        seed: in [0, 2^63).
        p: drop probability in [0, 1].
        device: where the mask is drawn (the same bits on every device).

    Returns:
        (n,) bool, True where kept.
    """
    j = torch.arange((n + 3) // 4, dtype=torch.int64, device=device)  # one counter per 4 elements
    zeros = torch.zeros_like(j)
    words = philox4x32(torch.stack([j & _LOW, j >> 32, zeros, zeros], dim=-1), (seed & _LOW, (seed >> 32) & _LOW))
    return words.reshape(-1)[:n] >= drop_threshold(p)


def dropout_reference(x: Tensor, p: float, seed: int) -> Tensor:
    """x ⊙ mask / (1 - p) with :func:`keep_mask` over x's elements in row-major order (0 where dropped)."""
    keep = keep_mask(x.numel(), seed, p, x.device).reshape(x.shape)
    return torch.where(keep, x * keep_scale(p), torch.zeros((), dtype=x.dtype, device=x.device))
