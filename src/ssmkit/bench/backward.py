"""The backward half of a timed forward+backward: from fixed output gradients, the way kernel benchmarks time it.

A training step's backward starts from ∂ℓ/∂y, which the loss provides; a benchmark of a layer times the layer, so
its backward starts from a given ∂ℓ/∂y too: one random tensor per output shape, drawn once (seeded) and reused by
every call, so that no call pays for making it. The suites first timed ``y.square().mean().backward()``: the loss's
own forward and backward (pow, mean, and their backward: five elementwise passes over y) then counted in every
forward+backward time -- 9 ms of a 47 ms S4D forward+backward at B 8, L 4 096, H 128 (2 threads), the same
milliseconds added to ssmkit's time and to each peer's, which shrank every ratio (docs/benchmarks.md, 2026-12-01).
"""

from __future__ import annotations

import torch


class OutputGradients:
    """Backward from fixed gradients for the outputs of a forward, each drawn once and reused.

    The gradient for an output is drawn from N(0, 1) (complex outputs: the standard complex normal) the first time an
    output of its shape, dtype and device is seen, with a generator seeded by ``seed``, and reused afterwards.

    Args:
        seed: the seed of the draws.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._grads: dict[tuple, torch.Tensor] = {}

    def grad_for(self, output: torch.Tensor) -> torch.Tensor:
        """The fixed gradient for ``output`` (same shape, dtype and device, contiguous)."""
        key = (tuple(output.shape), output.dtype, output.device)
        if key not in self._grads:
            g = torch.Generator().manual_seed(self.seed + len(self._grads))
            self._grads[key] = torch.randn(output.shape, generator=g, dtype=output.dtype).to(output.device)
        return self._grads[key]

    def backward(self, *outputs: torch.Tensor | None) -> None:
        """Run the backward of ``outputs`` (None entries skipped, as a layer's state with ``return_state=False``)
        from their fixed gradients, accumulating into the leaves' ``.grad`` as ``Tensor.backward`` does."""
        tensors = [o for o in outputs if o is not None]
        if not tensors:
            raise ValueError("backward needs at least one output tensor; got only None")
        torch.autograd.backward(tensors, [self.grad_for(o) for o in tensors])
