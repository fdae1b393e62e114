"""An exponential moving average of a model's weights (Polyak averaging), used to validate and keep averaged weights
instead of the last iterate.

    average = WeightAverage(model, beta=0.99)
    for step in ...:
        optimizer.step(); average.update(model)     # θ̄_t = β_t θ̄_{t-1} + (1 - β_t) θ_t
    average.module(...)                             # a copy of the model that holds θ̄

The rate warms up, β_t = min(β, 1 - 1/t) at the t-th update: the first 1/(1 - β) updates give the plain mean of the
iterates seen so far (θ̄_1 = θ_1, the initial weights get no weight), later ones the exponential average with horizon
~1/(1 - β) steps. Floating-point parameters and buffers are averaged; other buffers (integer counters) are copied;
a tensor held under several names (tied weights) is folded in once, and so is every element of tensors that share
memory (a buffer that is a view of another, two views of one storage, overlapping or not).
Polyak & Juditsky 1992 (averaging of stochastic-approximation iterates); the warm-up is the running mean.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """The exponential moving average of ``model``'s weights.

    Args:
        model: the trained module (its structure is copied; the average starts at the first :meth:`update`).
        beta: β in [0, 1), the decay of the average (0: the last iterate).
    """

    def __init__(self, model: nn.Module, beta: float):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
            raise ValueError(f"beta must be a number in [0, 1); got {beta!r}")
        self.beta = float(beta)
        self.updates = 0
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)

    def rate(self) -> float:
        """β_t of the next update: min(β, 1 - 1/t) with t the update's number (1-based)."""
        t = self.updates + 1
        return min(self.beta, 1.0 - 1.0 / t)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average.

        A tensor held under several names (tied weights: ``state_dict`` lists a shared parameter once per name) is
        folded in once; folding it once per name would give it the rate β_t^k for k names. Tensors that share
        memory otherwise (a buffer that is a view of another, two views of one storage: an overlap folded once per
        view would get β_t² θ̄ + (1 - β_t²) θ) get their new values computed from the average before the update,
        all of them, and then written: every element is folded exactly once and the aliasing is kept.

        Args:
            model: the module being trained (the same structure as the one given to the constructor).
        """
        beta = self.rate()
        mine = self.module.state_dict()
        groups: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # storage -> its (average, model) tensors
        for name, value in model.state_dict().items():
            target = mine[name]
            storage = (target.device, target.untyped_storage().data_ptr()) if target.numel() else (name,)
            groups.setdefault(storage, []).append((target, value.detach()))
        for pairs in groups.values():
            if len(pairs) == 1:  # memory of its own: folded in place
                target, value = pairs[0]
                if target.is_floating_point() or target.is_complex():
                    target.mul_(beta).add_(value, alpha=1.0 - beta)
                else:
                    target.copy_(value)
                continue
            # 1. every new value from the average as it was (a view's write must not feed another view's fold)
            new = [target.mul(beta).add_(value, alpha=1.0 - beta)
                   if target.is_floating_point() or target.is_complex() else value for target, value in pairs]
            for (target, _), value in zip(pairs, new):  # 2. then write: shared elements get the same value twice
                target.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A copy of the averaged weights (a ``state_dict`` of the model)."""
        return copy.deepcopy(self.module.state_dict())
