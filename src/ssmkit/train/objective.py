"""The loss and metric of each model head (pure torch; the trainer sums them over batches and processes).

    classify:  cross-entropy of logits (B, C) against labels (B,);       metric: accuracy
    regress:   squared error of outputs against targets of their shape;  metric: mean squared error
    lm:        cross-entropy of per-step logits (B, L, Y) against (B, L); metric: accuracy over the scored steps
               (targets equal to -100 are not scored: copying and recall tasks score only their answer steps)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def summed_loss_and_metric(head: str, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over a batch, so that batches and processes combine exactly: (loss sum, metric sum, count).

    Args:
        head: ``"classify"``, ``"regress"`` or ``"lm"``.
        out: the model output: (B, C) logits, (B, ...) regression outputs, or (B, L, Y) logits.
        y: (B,) labels, targets of ``out``'s shape, or (B, L) token targets (``-100`` = not scored).

    Returns:
        the loss summed over scored items, the metric summed likewise (correct predictions, or squared errors),
        and the number of scored items (scalars in float32, or float64 for a float64 output: a half-precision output
        is scored in float32, a float64 one is not rounded to it; the mean loss is loss_sum / count).
    """
    wide = torch.promote_types(out.dtype, torch.float32)  # float32 at least (autocast's bf16/f16 logits), float64 kept
    if head == "classify":
        if y.dim() != 1 or out.dim() != 2 or y.shape[0] != out.shape[0]:
            raise ValueError(f"classification needs logits (B, C) and labels (B,); got {tuple(out.shape)} and {tuple(y.shape)}")
        loss = F.cross_entropy(out.to(wide), y, reduction="sum")
        metric = (out.argmax(-1) == y).sum().to(wide)
        return loss, metric, torch.tensor(float(y.shape[0]), dtype=wide, device=out.device)
    if head == "regress":
        if out.shape != y.shape:
            raise ValueError(f"regression targets must have the output's shape {tuple(out.shape)}; got {tuple(y.shape)}")
        err = (out.to(wide) - y.to(wide)) ** 2
        return err.sum(), err.sum().detach(), torch.tensor(float(err.numel()), dtype=wide, device=out.device)
    if head == "lm":
        if out.dim() != 3 or y.shape != out.shape[:2]:
            raise ValueError(f"language modelling needs logits (B, L, Y) and targets (B, L); got {tuple(out.shape)} and {tuple(y.shape)}")
        flat = out.to(wide).reshape(-1, out.shape[-1])
        target = y.reshape(-1)
        loss = F.cross_entropy(flat, target, ignore_index=IGNORE, reduction="sum")
        scored = target != IGNORE
        metric = ((flat.argmax(-1) == target) & scored).sum().to(wide)
        return loss, metric, scored.sum().to(wide)
    raise ValueError(f"head must be 'classify', 'regress' or 'lm'; got {head!r}")


def scored_count(head: str, y: torch.Tensor) -> torch.Tensor:
    """The number of scored items of targets ``y``, as :func:`summed_loss_and_metric` counts them (without the
    model's output): the labels (classify), the target values (regress), the targets other than -100 (lm).

    Args:
        head: ``"classify"``, ``"regress"`` or ``"lm"``.
        y: the targets.

    Returns:
        a float64 scalar on y's device.
    """
    if head == "lm":
        return (y != IGNORE).sum().to(torch.float64)
    return torch.tensor(float(y.shape[0] if head == "classify" else y.numel()), dtype=torch.float64, device=y.device)


METRIC_NAMES = {"classify": "accuracy", "regress": "mse", "lm": "accuracy"}
