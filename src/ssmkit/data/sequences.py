"""Compactly stored real-valued sequences (images as pixels, audio as int16 samples), converted to float per item,
and the seeded train / validation split shared by the file loaders."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class ScaledSequences(Dataset):
    """Sequences stored as integers and returned as ``x * scale + shift`` in float32, one item at a time.

    Keeps 200,000 Path-X images (3.3 GB as uint8) or Speech Commands (int16) in memory at a quarter or half of
    their float32 size. ``tensors`` gives the stored pair ``x, y`` as for a ``TensorDataset``.

    Args:
        x: (B, L, H) integer tensor (uint8 pixels, int16 audio samples).
        y: (B,) int64 labels.
        scale: scalar, (H,) per channel or (L, H) per step and channel multiplier.
        shift: scalar, (H,) or (L, H) offset, like ``scale``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, scale, shift):
        if x.dim() != 3 or y.shape != x.shape[:1]:
            raise ValueError(f"x must be (B, L, H) and y (B,); got {tuple(x.shape)} and {tuple(y.shape)}")
        self.x, self.y = x, y.long()
        self.scale = torch.as_tensor(scale, dtype=torch.float32)
        self.shift = torch.as_tensor(shift, dtype=torch.float32)

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored pair ``x, y`` (integers, not yet scaled)."""
        return self.x, self.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i].float() * self.scale + self.shift, self.y[i]

    def subset(self, index: torch.Tensor) -> "ScaledSequences":
        """The items at ``index`` (same scale and shift).

        Args:
            index: (B,) int64 item numbers.
        """
        return ScaledSequences(self.x[index], self.y[index], self.scale, self.shift)


def split_off(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into ``n − n_val`` training and ``n_val`` validation items.

    The same items as S4's ``split_train_val``, ``torch.utils.data.random_split(train, (n − n_val, n_val),
    generator=torch.Generator().manual_seed(seed))``: a ``randperm(n)`` whose first n − n_val entries train and
    the rest validate (so MNIST's 6,000 and CIFAR-10's 5,000 validation images with seed 42 are S4's).

    Args:
        n: items in the original training set.
        n_val: items moved to the validation split.
        seed: the seed of the permutation.

    Returns:
        train (B,) and val (B,) int64 item numbers, each sorted.
    """
    if not 0 < n_val < n:
        raise ValueError(f"need 0 < n_val < {n} (the training items); got n_val={n_val}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n - n_val].sort().values, perm[n - n_val:].sort().values
