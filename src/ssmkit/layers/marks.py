"""Optimizer marks of SSM parameters, kept on the module that owns them, keyed by parameter name.

The papers train the SSM parameters (Δ, A/Λ, B, P) with their own learning rate (0.001) and no weight decay
(arXiv 2111.00396 App. D; arXiv 2206.11893). A layer declares this where it creates the parameter
(:func:`register_ssm_parameter`) and :func:`ssmkit.train.param_groups` reads it back.

The marks live in a plain dict on the owning module (``module._ssm_marks[name]``), not as attributes of the
``Parameter`` object: ``copy.deepcopy``, ``torch.optim.swa_utils.AveragedModel``, ``load_state_dict(assign=True)``
and ``.to("meta")`` / ``.to_empty()`` all replace or re-create the ``Parameter`` objects (dropping any attribute set
on them) but keep the module's ``__dict__``.
"""

from __future__ import annotations

from typing import Iterator, TypedDict

import torch
from torch import nn

_ATTR = "_ssm_marks"


class OptimMarks(TypedDict, total=False):
    """The optimizer settings of one SSM parameter: ``lr`` (absent = the global lr) and ``weight_decay``."""

    lr: float
    weight_decay: float


def register_ssm_parameter(
    module: nn.Module,
    name: str,
    value: torch.Tensor,
    lr: float | None,
    weight_decay: float = 0.0,
) -> None:
    """Register ``value`` on ``module`` under ``name`` as an SSM parameter with optimizer marks.

    ``lr=None`` keeps the global learning rate; ``lr=0.0`` freezes the tensor (it becomes a buffer, saved in the
    state dict, not trained). Otherwise the marks ``{"lr": lr, "weight_decay": weight_decay}`` (``lr`` omitted
    when None) are stored on ``module`` under ``name`` and read by :func:`ssmkit.train.param_groups`; marked
    parameters are also protected from generic re-initialisation (the layer's ``reset_parameters`` is the only
    re-init path; see :func:`is_protected`).

    Args:
        module: the module that owns the parameter.
        name: attribute name of the parameter on ``module``.
        value: the initial tensor (any shape).
        lr: learning rate of the parameter, None for the global one, 0.0 to freeze it.
        weight_decay: weight decay of the parameter (the papers use 0).
    """
    if lr == 0.0:
        module.register_buffer(name, value)
        return
    module.register_parameter(name, nn.Parameter(value))
    marks: OptimMarks = {"weight_decay": float(weight_decay)}
    if lr is not None:
        marks["lr"] = float(lr)
    module.__dict__.setdefault(_ATTR, {})[name] = marks


def optim_marks(module: nn.Module) -> dict[str, OptimMarks]:
    """The marks of ``module``'s own SSM parameters, keyed by parameter name (empty when it has none)."""
    return dict(module.__dict__.get(_ATTR, {}))


def _own_parameters(module: nn.Module) -> Iterator[tuple[str, str, nn.Parameter]]:
    """(name relative to ``module``, the tensor name on ``module`` it stands for, parameter) of ``module``'s own
    parameters, then of those ``torch.nn.utils.parametrize`` moved off it: a tensor ``t`` reparametrised on ``module``
    (``weight_norm``, ``orthogonal``, a user's constraint, even the identity) is held as
    ``parametrizations.t.original`` (or ``original0``, ``original1``, ...) and stands for ``t``. (A parametrization's
    own learnable parameters, ``parametrizations.t.0.*``, stand for nothing on ``module``.)"""
    for name, param in module.named_parameters(recurse=False):
        yield name, name, param
    reparametrised = module._modules.get("parametrizations")
    if reparametrised is None:
        return
    for tensor, holder in reparametrised.named_children():
        for name, param in holder.named_parameters(recurse=False):  # original, or original0, original1, ...
            yield f"parametrizations.{tensor}.{name}", tensor, param


def marked_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, OptimMarks | None]]:
    """Every parameter of ``model`` (each once) with its qualified name and its marks (None when unmarked).

    A marked tensor reparametrised with ``torch.nn.utils.parametrize`` keeps its marks on the parameters that now
    hold it (``parametrizations.<name>.original``, or ``original0``, ``original1``, ... for ``weight_norm``'s g and
    v): before, they left the marked tensor's name and took the global learning rate and weight decay, silently."""
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        marks = module.__dict__.get(_ATTR, {})
        for name, tensor, param in _own_parameters(module):
            if id(param) in seen:
                continue
            seen.add(id(param))
            yield (f"{prefix}.{name}" if prefix else name), param, marks.get(tensor)


def is_protected(module: nn.Module, name: str) -> bool:
    """Whether ``module``'s parameter ``name`` is an SSM parameter that generic initialisers must leave alone."""
    return name in module.__dict__.get(_ATTR, {})
