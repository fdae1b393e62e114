"""Optimizer parameter groups from the optimizer marks that layers attach to their SSM parameters.

The papers train the SSM parameters (Δ, A/Λ, B, P) with a smaller learning rate (0.001) and no weight decay
(arXiv 2111.00396 App. D; arXiv 2206.11893); everything else uses the global settings, except that norms and
biases are kept out of weight decay (the common AdamW practice, e.g. karpathy/nanoGPT ``configure_optimizers``).
Marks are attached where the parameter is created (:func:`ssmkit.layers.register_ssm_parameter`) and kept on the
module, so they survive ``copy.deepcopy``, ``AveragedModel``, ``load_state_dict(assign=True)`` and ``.to("meta")``.
Every layer is treated alike: only Δ, A/Λ, B and P are marked; output weights (S4D's C, S4's C̃, DSS's W) and the
skip D get the global settings.
"""

from __future__ import annotations

import re

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ssmkit.layers.marks import marked_parameters

_NORMS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, _NormBase)
_REPARAMETRISED = re.compile(r"(?:^|\.)parametrizations\.([^.]+)\.original\d*$")


def _is_norm_or_bias(model: nn.Module, name: str) -> bool:
    held = _REPARAMETRISED.search(name)  # ``torch.nn.utils.parametrize``: owner.parametrizations.<leaf>.original
    if held:
        owner, leaf = name[: held.start()], held.group(1)
    else:
        owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    # a layer names the biases it keeps under other names (Mega's b_v, b_mx, b_h, μ: the paper's symbols)
    return leaf == "bias" or leaf in getattr(module, "bias_parameters", ()) or isinstance(module, _NORMS)


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, decay_norms_and_biases: bool = False, verbose: bool = False
) -> list[dict]:
    """Split ``model``'s trainable parameters into optimizer groups.

    Unmarked parameters get ``lr`` and ``weight_decay``, except norm weights and biases (parameters named ``bias``, and
    those a module lists in its ``bias_parameters``, as Mega's ``b_v``), which get no weight decay unless
    ``decay_norms_and_biases``. Marked SSM parameters get their marks (a mark without ``lr`` keeps the global
    ``lr``). Groups with equal (lr, weight decay) are merged; the first group holds the decayed parameters. Frozen
    parameters (``requires_grad`` False, e.g. by :func:`ssmkit.train.freeze_parameters`) are left out: no update and
    no weight decay.

    Args:
        model: any module.
        lr: global learning rate, > 0.
        weight_decay: global weight decay, >= 0.
        decay_norms_and_biases: also decay the weights of norm layers and every bias.
        verbose: print one line per group with its size.

    Returns:
        A list of dicts for ``torch.optim.AdamW(groups)`` (keys ``params``, ``lr``, ``weight_decay``).
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0; got {lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
    groups: dict[tuple[float, float], list[nn.Parameter]] = {(float(lr), float(weight_decay)): []}
    for name, param, marks in marked_parameters(model):
        if not param.requires_grad:
            continue
        if marks is not None:
            key = (float(marks.get("lr", lr)), float(marks.get("weight_decay", weight_decay)))
        elif not decay_norms_and_biases and _is_norm_or_bias(model, name):
            key = (float(lr), 0.0)
        else:
            key = (float(lr), float(weight_decay))
        groups.setdefault(key, []).append(param)
    result = [{"params": ps, "lr": glr, "weight_decay": gwd} for (glr, gwd), ps in groups.items() if ps]
    if verbose:
        for group in result:
            count = sum(p.numel() for p in group["params"])
            print(
                f"param group: {len(group['params'])} tensors, {count:,} parameters, "
                f"lr={group['lr']:g}, weight_decay={group['weight_decay']:g}"
            )
    return result
