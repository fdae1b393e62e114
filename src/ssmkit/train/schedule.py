"""The learning-rate schedule of the SSM papers: linear warm-up, then a cosine decay to a floor.

    factor(s) = (s + 1) / w                                    for s < w (warm-up over w steps)
    factor(s) = r + (1 - r) · ½ (1 + cos(π (s - w) / (T - w)))  for w <= s < T, and r after T

(the schedule of S4's and S5's training scripts: ``cosine_warmup`` with a floor ratio r = 0 by default). It is a
``torch.optim.lr_scheduler.LambdaLR`` whose factor is a plain object, so its state saves in a checkpoint that loads
with ``weights_only=True``.
"""

from __future__ import annotations

import math
import numbers

import torch


class WarmupCosine:
    """The factor s ↦ lr(s) / lr of the module docstring (a picklable callable of plain numbers).

    Args:
        warmup_steps: w, >= 0.
        total_steps: T, > w.
        floor: r, the final factor, in [0, 1].
    """

    def __init__(self, warmup_steps: int, total_steps: int, floor: float = 0.0) -> None:
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0; got {warmup_steps!r}")
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps <= warmup_steps:
            raise ValueError(f"total_steps must be an int > warmup_steps = {warmup_steps}; got {total_steps!r}")
        if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0.0 <= floor <= 1.0:
            # a bool passed as 1.0 and a string raised TypeError from the comparison
            raise ValueError(f"floor must be a number in [0, 1]; got {floor!r}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.floor = float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, floor: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler: linear warm-up over ``warmup_steps``, cosine decay to ``floor`` × lr at ``total_steps``.

    Args:
        optimizer: its groups' ``lr`` are the peak rates (each group keeps its own, e.g. the SSM group's).
        warmup_steps: w, >= 0.
        total_steps: T, > w (the run's planned optimizer steps; fixed so a resumed run follows the same curve).
        floor: the final factor r, in [0, 1].

    Returns:
        the scheduler (call ``step()`` after every optimizer step).
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, floor))
