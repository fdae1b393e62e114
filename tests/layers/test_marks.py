"""Optimizer marks of SSM parameters survive every way PyTorch copies or rebuilds a module, and param_groups
treats every layer alike (only Δ, A/Λ, B, P are marked)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

import ssmkit.layers as layers
from ssmkit.models import SequenceModel
from ssmkit.train import param_groups
from tests.conftest import NEEDED_AT_TINY_WIDTH, H, build_default, make_layer

NAMES = layers.available()
# Δ, A/Λ, B, P of any layer; LRU stores λ = exp(-exp(log_nu) + i exp(log_theta)) and γ = exp(log_gamma)
SSM_NAMES = {"log_dt", "log_A_real", "A_real", "A_imag", "B", "P", "A_sqrt_neg_real", "Lambda", "A_log", "dt_bias",
             "log_nu", "log_theta", "log_gamma"}
# ... and what generates the kernel of a long-convolution layer, trained with its own lr as the papers do:
# SGConv's sub-kernels, Hyena's implicit-filter FFN (weights, biases, sine frequency); GSS's Im λ is under exp.
SSM_NAMES |= {"log_A_imag", "sub_kernels", "w_in", "b_in", "w_hidden", "b_hidden", "w_out", "freq"}
SSM_NAMES |= {"logit_alpha", "logit_delta", "beta"}  # Mega's EMA: α, δ (its A) and β (its B)
# the layers with SSM parameters (an `lr` option); attention has none
SSM_LAYERS = [n for n in NAMES if "lr" in __import__("inspect").signature(layers.layer_class(n)).parameters]
# the default d_state is 64 for every layer except where the paper fixes another: Mamba-2's N per head is 128 (the
# official module), Mega's EMA dimension is 16 in every published recipe (arXiv 2209.10655)
PAPER_D_STATE = {"mamba2": 128, "ema": 16, "mega": 16}


def all_marks(layer: torch.nn.Module) -> dict[str, dict]:
    """The marks of every SSM parameter of ``layer`` and its sub-modules, by qualified name."""
    return {name: marks for name, _, marks in layers.marked_parameters(layer) if marks is not None}


def grouping(model: torch.nn.Module) -> list[tuple[float, float, list[str]]]:
    """(lr, weight decay, parameter names) of every group, names relative to the model."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
            for g in param_groups(model, lr=1e-2, weight_decay=0.1)]


def rebuilt(model: torch.nn.Module, how: str) -> torch.nn.Module:
    if how == "deepcopy":
        return copy.deepcopy(model)
    if how == "averaged_model":
        return AveragedModel(model).module
    if how == "load_state_dict_assign":
        twin = copy.deepcopy(model)
        twin.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
        return twin
    if how == "meta_and_back":
        twin = copy.deepcopy(model).to("meta").to_empty(device="cpu")
        return twin
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["deepcopy", "averaged_model", "load_state_dict_assign", "meta_and_back"])
@pytest.mark.parametrize("name", SSM_LAYERS)
def test_marks_survive_copies(name, how):
    model = SequenceModel(2, 4, 2, name, {**NEEDED_AT_TINY_WIDTH.get(name, {}), "lr": 1e-3}, 1)
    expected = grouping(model)
    assert any(lr == 1e-3 for lr, _, _ in expected)  # the SSM group exists
    assert grouping(rebuilt(model, how)) == expected


@pytest.mark.parametrize("name", SSM_LAYERS)
def test_every_layer_marks_only_its_ssm_parameters(name):
    layer = make_layer(name, lr=1e-3)
    marks = all_marks(layer)
    short = {n.rsplit(".", 1)[-1] for n in marks}
    assert marks and short <= SSM_NAMES, short - SSM_NAMES
    for mark in marks.values():
        assert mark == {"lr": 1e-3, "weight_decay": 0.0}
    frozen = make_layer(name, lr=0.0)
    assert not all_marks(frozen)
    assert set(marks) <= {n for n, _ in frozen.named_buffers()}  # lr = 0 freezes them as buffers


def test_norms_and_biases_get_no_weight_decay():
    model = SequenceModel(2, 8, 2, "s4d", {"d_state": 4}, 3)
    groups = grouping(model)
    decayed = next(names for lr, wd, names in groups if wd == 0.1)
    no_decay = next(names for lr, wd, names in groups if wd == 0.0 and lr == 1e-2)
    assert "encoder.weight" in decayed and "head.weight" in decayed and "blocks.0.layer.C" in decayed
    assert "blocks.0.layer.D" in decayed  # the layer's skip is a weight like C
    assert {"encoder.bias", "head.bias", "blocks.0.norm.weight", "blocks.0.norm.bias", "final_norm.weight"} <= set(no_decay)
    assert not any(n.endswith(".bias") for n in decayed)
    everything = param_groups(model, lr=1e-2, weight_decay=0.1, decay_norms_and_biases=True)
    assert [(g["lr"], g["weight_decay"]) for g in everything] == [(1e-2, 0.1), (1e-3, 0.0)]


@pytest.mark.parametrize("name", NAMES)
def test_default_d_state_means_the_same_everywhere(name):
    import inspect

    signature = inspect.signature(layers.layer_class(name))
    if "d_state" not in signature.parameters:
        pytest.skip(f"{name} has no d_state")
    expected = PAPER_D_STATE.get(name, 64)
    assert signature.parameters["d_state"].default == expected
    layer = build_default(name, d_model=H)
    if layer.supports("state_space"):
        assert layer.state_space().to_real().nstates == expected  # the real-equivalent state size per system


@pytest.mark.parametrize("name", NAMES)
def test_marked_parameters_are_protected_from_generic_reinitialisation(name):
    from ssmkit.layers.marks import is_protected

    layer = make_layer(name)
    for module in layer.modules():
        for param_name, _ in module.named_parameters(recurse=False):
            assert is_protected(module, param_name) == (param_name in layers.optim_marks(module))
    if name in SSM_LAYERS:
        twin = copy.deepcopy(layer)
        assert any(is_protected(m, n) for m in twin.modules() for n, _ in m.named_parameters(recurse=False))
        owner = next(m for m in twin.modules() if layers.optim_marks(m))
        assert not is_protected(owner, "D")
