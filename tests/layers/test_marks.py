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
from tests.conftest import H, make_layer

NAMES = layers.available()
SSM_NAMES = {"log_dt", "log_A_real", "A_real", "A_imag", "B", "P", "A_sqrt_neg_real", "Lambda", "A_log", "dt_bias"}  # Δ, A/Λ, B, P of any layer
D_STATE_DEFAULT = {"mamba": 16}  # N per inner channel of a selective SSM (the paper's default); 64 otherwise


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
@pytest.mark.parametrize("name", NAMES)
def test_marks_survive_copies(name, how):
    model = SequenceModel(2, 4, 2, name, {"lr": 1e-3}, 1)
    expected = grouping(model)
    assert any(lr == 1e-3 for lr, _, _ in expected)  # the SSM group exists
    assert grouping(rebuilt(model, how)) == expected


@pytest.mark.parametrize("name", NAMES)
def test_every_layer_marks_only_its_ssm_parameters(name):
    layer = make_layer(name, lr=1e-3)
    marks = layers.optim_marks(layer)
    assert marks and set(marks) <= SSM_NAMES, set(marks) - SSM_NAMES
    for mark in marks.values():
        assert mark == {"lr": 1e-3, "weight_decay": 0.0}
    frozen = make_layer(name, lr=0.0)
    assert not layers.optim_marks(frozen)
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
    assert signature.parameters["d_state"].default == D_STATE_DEFAULT.get(name, 64)
    layer = layers.build(name, d_model=H)
    if layer.supports("state_space"):
        assert layer.state_space().to_real().nstates == D_STATE_DEFAULT.get(name, 64)  # the real-equivalent state size per system


@pytest.mark.parametrize("name", NAMES)
def test_marked_parameters_are_protected_from_generic_reinitialisation(name):
    from ssmkit.layers.marks import is_protected

    layer = make_layer(name)
    for param_name, _ in layer.named_parameters():
        assert is_protected(layer, param_name) == (param_name in layers.optim_marks(layer))
    assert not is_protected(copy.deepcopy(layer), "D") and any(
        is_protected(copy.deepcopy(layer), n) for n, _ in layer.named_parameters())
