"""A cache of a value computed from a layer's parameters, valid exactly while the parameters keep their values.

The recurrent step of an LTI layer needs the discrete matrices (Ā, B̄, ...), whose computation costs several
times the step's own arithmetic; generation and controllers call ``step`` thousands of times with unchanged
parameters. A cache keyed on ``Parameter._version`` or ``data_ptr`` goes stale: ``torch.optim.AdamW(fused=True)``
and edits through ``p.data`` (weight averaging, ``p.data.mul_()``) change values without bumping the version
counter. :class:`ValueCache` therefore keys on the values themselves: it keeps a copy of the tensors it was
computed from and compares them with ``torch.equal`` on every lookup (a few microseconds per small tensor).
It is used only when no gradient is needed; with autograd on, the value is recomputed, differentiably.
"""

from __future__ import annotations

from typing import Callable, Generic, Sequence, TypeVar

import torch

V = TypeVar("V")


def _same(snapshot: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor]) -> bool:
    if len(snapshot) != len(tensors):
        return False
    for old, new in zip(snapshot, tensors):  # torch.equal is False for another shape, but raises across devices
        if old.dtype != new.dtype or old.device != new.device or not torch.equal(old, new):
            return False
    return True


class ValueCache(Generic[V]):
    """Holds one value computed from a list of tensors, returned again while the tensors hold the same values.

    Thread-safe in the sense PyTorch modules need: an entry is one tuple replaced atomically, and a lookup that
    races with an update either sees the old entry (and recomputes) or the new one.
    """

    def __init__(self) -> None:
        self._entry: tuple[tuple[torch.Tensor, ...], V] | None = None

    def get(self, tensors: Sequence[torch.Tensor], compute: Callable[[], V]) -> V:
        """``compute()``, reused while every tensor of ``tensors`` equals (value, shape, dtype, device) the copy
        taken when it was computed.

        Args:
            tensors: the tensors the value depends on (the layer's parameters and buffers).
            compute: recomputes the value; called without autograd.

        Returns:
            the cached or freshly computed value.
        """
        entry = self._entry
        if entry is not None and _same(entry[0], tensors):
            return entry[1]
        with torch.no_grad():
            value = compute()
            snapshot = tuple(t.detach().clone() for t in tensors)
        self._entry = (snapshot, value)
        return value

    def clear(self) -> None:
        """Drop the cached value."""
        self._entry = None
