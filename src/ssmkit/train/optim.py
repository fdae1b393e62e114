"""Optimizer parameter groups from the ``_optim`` marks that layers attach to SSM parameters.

The papers train the SSM parameters (Δ, A/Λ, B, P; DSS also W) with a smaller learning rate
(0.001) and no weight decay (arXiv 2111.00396 App. D; notes/core-checked.md §5); everything else
uses the global settings. Marks are attached where the parameter is created
(:func:`ssmkit.layers.base.register_ssm_parameter`).
"""

from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float, verbose: bool = False) -> list[dict]:
    """Split ``model``'s trainable parameters into optimizer groups by their ``_optim`` marks.

    Unmarked parameters form the first group with ``lr`` and ``weight_decay``. Marked parameters are
    grouped by their (lr, weight_decay) marks; a mark without ``lr`` keeps the global ``lr``.

    Args:
        model: any module.
        lr: global learning rate.
        weight_decay: global weight decay.
        verbose: print one line per group with its size (STYLE.md rule 13).

    Returns:
        A list of dicts for ``torch.optim.AdamW(groups)`` (keys ``params``, ``lr``, ``weight_decay``).
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0; got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
    default: list[nn.Parameter] = []
    special: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        marks = getattr(param, "_optim", None)
        if marks is None:
            default.append(param)
            continue
        key = (float(marks.get("lr", lr)), float(marks.get("weight_decay", weight_decay)))
        special.setdefault(key, []).append(param)
    groups = [{"params": default, "lr": lr, "weight_decay": weight_decay}] if default else []
    groups += [{"params": ps, "lr": glr, "weight_decay": gwd} for (glr, gwd), ps in sorted(special.items())]
    if verbose:
        for group in groups:
            count = sum(p.numel() for p in group["params"])
            print(
                f"param group: {len(group['params'])} tensors, {count:,} parameters, "
                f"lr={group['lr']:g}, weight_decay={group['weight_decay']:g}"
            )
    return groups
