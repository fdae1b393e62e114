"""The loss and metric of each model head (pure torch; the trainer sums them over batches and processes).

    classify:  cross-entropy of logits (B, C) against labels (B,);       metric: accuracy
    regress:   squared error of outputs against targets of their shape;  metric: mean squared error
    lm:        cross-entropy of per-step logits (B, L, Y) against (B, L); metric: accuracy over the scored steps
               (targets equal to -100 are not scored: copying and recall tasks score only their answer steps)

With ``lengths`` (B,) (right-padded sequences: steps t >= lengths[b] are padding), the per-step objectives score the
steps t < lengths[b] only: an ``lm`` target there counts as -100, a per-step regression error (outputs (B, L, ...))
as absent (neither summed nor counted, whatever the target holds there, NaN included). A pooled output (B, C) or
(B, d_output) has one target per sequence; ``lengths`` changes nothing there (the model's pooling skipped the padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.utils import length_mask

IGNORE = -100


def _within(lengths: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor | None:
    """The (B, L) bool mask t < lengths[b] of a per-step output (B, L, ...) (None for no lengths or a pooled output)."""
    if lengths is None or out.dim() < 3:
        return None
    if lengths.shape != out.shape[:1]:
        raise ValueError(f"lengths must be (B,) = ({out.shape[0]},), one per sequence of the output "
                         f"{tuple(out.shape)}; got {tuple(lengths.shape)}")
    return length_mask(lengths.to(out.device), out.shape[1])  # (B, L)


def summed_loss_and_metric(
    head: str, out: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over a batch, so that batches and processes combine exactly: (loss sum, metric sum, count).

    Args:
        head: ``"classify"``, ``"regress"`` or ``"lm"``.
        out: the model output: (B, C) logits, (B, ...) regression outputs, or (B, L, Y) logits.
        y: (B,) labels, targets of ``out``'s shape, or (B, L) token targets (``-100`` = not scored).
        lengths: (B,) integer lengths of right-padded sequences, or None: per-step outputs are scored at the steps
            t < lengths[b] only (module docstring).

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
        diff = out.to(wide) - y.to(wide)
        within = _within(lengths, out)
        if within is None:
            err = diff ** 2
            return err.sum(), err.sum().detach(), torch.tensor(float(err.numel()), dtype=wide, device=out.device)
        within = within.reshape(*within.shape, *([1] * (out.dim() - 2)))  # (B, L, 1, ...)
        err = torch.where(within, diff, 0.0) ** 2  # where before the square: a NaN target at the padding gets no
        # gradient (a NaN times the where's zero would be one)
        count = within.sum().to(wide) * float(out[0, 0].numel())  # scored steps × values a step
        return err.sum(), err.sum().detach(), count
    if head == "lm":
        if out.dim() != 3 or y.shape != out.shape[:2]:
            raise ValueError(f"language modelling needs logits (B, L, Y) and targets (B, L); got {tuple(out.shape)} and {tuple(y.shape)}")
        flat = out.to(wide).reshape(-1, out.shape[-1])
        within = _within(lengths, out)
        target = (y if within is None else torch.where(within, y, IGNORE)).reshape(-1)
        loss = F.cross_entropy(flat, target, ignore_index=IGNORE, reduction="sum")
        scored = target != IGNORE
        metric = ((flat.argmax(-1) == target) & scored).sum().to(wide)
        return loss, metric, scored.sum().to(wide)
    raise ValueError(f"head must be 'classify', 'regress' or 'lm'; got {head!r}")


def scored_count(head: str, y: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The number of scored items of targets ``y``, as :func:`summed_loss_and_metric` counts them (without the
    model's output): the labels (classify), the target values (regress), the targets other than -100 (lm); with
    ``lengths``, those of per-step targets ((B, L) for lm, (B, L, ...) for regress) at steps t < lengths[b] only.

    Args:
        head: ``"classify"``, ``"regress"`` or ``"lm"``.
        y: the targets.
        lengths: (B,) integer lengths of right-padded sequences, or None.

    Returns:
        a float64 scalar on y's device.
    """
    per_step = (head == "lm" and y.dim() == 2) or (head == "regress" and y.dim() >= 3)
    within = None
    if lengths is not None and per_step:
        within = length_mask(lengths.to(y.device), y.shape[1])  # (B, L)
    if head == "lm":
        scored = y != IGNORE
        return (scored if within is None else scored & within).sum().to(torch.float64)
    if within is not None:
        return within.sum().to(torch.float64) * float(y[0, 0].numel())
    return torch.tensor(float(y.shape[0] if head == "classify" else y.numel()), dtype=torch.float64, device=y.device)


METRIC_NAMES = {"classify": "accuracy", "regress": "mse", "lm": "accuracy"}
