"""Every layer refuses a non-bool for a True/False option (registry-driven: a new layer is checked when it registers).

A truthy stand-in switched the option silently: ``bidirectional="no"`` (a string from a config file) built a
bidirectional layer, ``bias=None`` a layer without biases (docs/design.md, "Constructor options, fuzzed")."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import ssmkit.layers as layers
from tests.conftest import H, variants

FLAGS = [
    (name, option)
    for name in layers.available()
    for option, p in inspect.signature(layers.layer_class(name).__init__).parameters.items()
    if isinstance(variants(name)[0].get(option, p.default), bool)
]


def test_the_flags_are_found():
    found = {name for name, _ in FLAGS}
    assert {"s4d", "s4", "s5", "dss", "mamba", "mamba2", "attention"} <= found  # bidirectional, conj_sym, bias, ...


@pytest.mark.parametrize("name,option", FLAGS, ids=[f"{n}-{o}" for n, o in FLAGS])
def test_a_flag_must_be_a_bool(name, option):
    for bad in ("no", "False", 0, 1, 2, None, 1.0):
        with pytest.raises(ValueError, match=rf"^{option} must be True or False; got {bad!r}$".replace("(", r"\(")):
            layers.build(name, d_model=H, dtype=torch.float64, **{**variants(name)[0], option: bad})
    default = inspect.signature(layers.layer_class(name).__init__).parameters[option].default
    layers.build(name, d_model=H, dtype=torch.float64, **{**variants(name)[0], option: default})  # the default builds


@pytest.mark.parametrize("bad", ["x", True, 0.0, -1.0, math.inf, math.nan])
def test_s4_b_clip_is_a_finite_positive_float_or_none(bad):
    with pytest.raises(ValueError, match=r"B_clip must be a finite float > 0, or None for no clip; got "):
        layers.build("s4", d_model=H, d_state=8, l_max=16, B_clip=bad)


def test_attention_rotary_base_is_finite():
    with pytest.raises(ValueError, match=r"rotary_base must be a finite float > 1; got inf"):
        layers.build("attention", d_model=4, n_heads=2, rotary_base=math.inf)


@pytest.mark.parametrize("bad", ["nonsense", -1, 0, 2.5, math.nan, True])
def test_dss_exp_checks_the_l_max_it_ignores(bad):
    with pytest.raises(ValueError, match=r"l_max must be a positive int; got "):
        layers.build("dss", d_model=H, d_state=8, version="exp", l_max=bad)
