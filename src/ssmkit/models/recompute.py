"""Activation checkpointing of a residual block: keep its input, recompute its activations in the backward.

``torch.utils.checkpoint.checkpoint`` (non-reentrant; Chen et al., "Training Deep Nets with Sublinear Memory Cost",
arXiv 1604.06174) runs the block's forward without keeping what its backward needs and runs it again inside the
backward. The recomputation must give what the forward gave, and must leave no trace of its own:
- *the random draws* (dropout): the checkpoint restores torch's generators (CPU, and the inputs' CUDA devices) to
  their state at the forward for the recomputation and puts them back after it, so the masks are the forward's and
  the stream the next step draws from is unchanged;
- *the backend*: forced backends are per thread and a CUDA backward recomputes on PyTorch's device thread, so both
  passes run under the backend in force at the call (:func:`ssmkit.ops.checkpoint_contexts`);
- *the batch norms' running statistics*, which a training-mode forward updates: the recomputation would update them
  a second time (the momentum applied twice, ``num_batches_tracked`` counted twice). They are saved when the
  recomputation starts and written back when it ends.
"""

from __future__ import annotations

from typing import ContextManager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ssmkit.layers.state import State
from ssmkit.ops.backend import checkpoint_contexts

__all__ = ["checkpointed_block"]


class _Recomputation:
    """The recomputation's context: ``inner`` (the backend) entered, and every batch norm's buffers in ``module`` put
    back on exit as they were on entry. It can be entered again (each backward after ``retain_graph=True``
    recomputes)."""

    def __init__(self, module: nn.Module, inner: ContextManager[None]) -> None:
        self._norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        self._inner = inner
        self._saved: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def __enter__(self) -> None:
        self._saved.append([(b, b.clone()) for m in self._norms
                            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None])
        self._inner.__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            self._inner.__exit__(*exc)
        finally:
            with torch.no_grad():
                for buffer, value in self._saved.pop():
                    buffer.copy_(value)


def checkpointed_block(
    block: nn.Module, x: torch.Tensor, state: State | None, return_state: bool, mask: torch.Tensor | None,
    intervals: torch.Tensor | None = None,
) -> tuple[torch.Tensor, State | None]:
    """``block(x, state, return_state=return_state, mask=mask, intervals=intervals)`` under a non-reentrant activation
    checkpoint
    (inside torch.func transforms, which refuse the checkpoint's saved-tensor hooks, the block runs without one).

    Args:
        block: a :class:`ssmkit.models.Block` (or any module with that call).
        x: (B, L, H) the block's input.
        state: the layer's initial state, or None.
        return_state: compute and return the layer's final state.
        mask: (B, L) bool positions of right-padded sequences, or None.
        intervals: (B, L) sampling intervals for a layer that takes them, or None.

    Returns:
        what the block returns: (y (B, L, H), the final state or None).
    """
    if torch._C._are_functorch_transforms_active():  # torch.func (grad, vjp, jacrev, vmap) refuses the saved-tensor
        # hooks the checkpoint is made of ("don't yet support saved tensor hooks"): the block runs as without it
        return block(x, state, return_state=return_state, mask=mask, intervals=intervals)
    if torch.compiler.is_compiling():  # dynamo takes the checkpoint as one of its own operators, without context_fn
        return checkpoint(block, x, state, return_state, mask, intervals, use_reentrant=False)
    forward_context, recompute_context = checkpoint_contexts()

    def contexts() -> tuple[ContextManager[None], ContextManager[None]]:
        return forward_context, _Recomputation(block, recompute_context)

    def run(x: torch.Tensor, state: State | None, mask: torch.Tensor | None,
            intervals: torch.Tensor | None) -> tuple[torch.Tensor, State | None]:
        return block(x, state, return_state=return_state, mask=mask, intervals=intervals)

    return checkpoint(run, x, state, mask, intervals, use_reentrant=False, context_fn=contexts)
