"""``bidirectional`` on a layer class that runs causally only: assigning True after construction turned the layer's
``step`` and state space off and left its forward causal, without a word; ``forward`` now refuses it by name. A class
runs anticausally when its constructor takes a ``bidirectional`` option, or when it declares ``anticausal = True``."""

from __future__ import annotations

import inspect

import pytest
import torch

from ssmkit.layers import SequenceLayer, TensorSpec, available, build, layer_class
from tests.conftest import NEEDED_AT_TINY_WIDTH, H, variants

CAUSAL_ONLY = [n for n in available() if "bidirectional" not in inspect.signature(layer_class(n)).parameters]
BOTH = [n for n in available() if n not in CAUSAL_ONLY]


def _build(name: str, **extra):
    return build(name, d_model=H, **{**NEEDED_AT_TINY_WIDTH.get(name, {}), **variants(name)[0], **extra})


def test_the_two_kinds_are_those_of_the_constructors():
    assert {n: layer_class(n).anticausal for n in available()} == {n: n in BOTH for n in available()}
    assert {"mamba", "mamba2", "rglru", "attention", "hyena", "liquid_s4"} <= set(CAUSAL_ONLY)  # LiquidS4: S4's child
    assert {"s4", "s4d", "mega", "lru"} <= set(BOTH)


@pytest.mark.parametrize("name", CAUSAL_ONLY)
def test_a_causal_only_layer_refuses_bidirectional_true(name):
    layer = _build(name)
    x = torch.randn(2, 6, H)
    y, _ = layer(x)
    try:
        layer.bidirectional = True
    except AttributeError as err:  # a child of a two-sided class (LiquidS4 of S4): its option is fixed at construction
        assert "fixed at construction" in str(err)
        return
    with pytest.raises(ValueError, match=rf"{type(layer).__name__} runs causally only .* set it False"):
        layer(x)
    layer.bidirectional = False  # back to the layer it was
    torch.testing.assert_close(layer(x)[0], y, rtol=0, atol=0)


@pytest.mark.parametrize("name", BOTH)
def test_a_two_sided_layer_runs_either_way(name):
    x = torch.randn(2, 6, H)
    y_causal, h = _build(name)(x)
    torch.manual_seed(0)
    two_sided = _build(name, bidirectional=True)
    y, none = two_sided(x)
    assert none is None and y.shape == y_causal.shape and torch.isfinite(y).all()
    moved = x.clone()
    moved[:, -1] += 1.0
    assert not torch.equal(two_sided(moved)[0][:, 0], y[:, 0])  # the first output reads the last input


class _Mirror(SequenceLayer):
    """y_t = w ⊙ (x_t + x_{L-1-t}) when bidirectional, else w ⊙ x_t: a user's layer that is two-sided without a
    constructor option (``anticausal = True``), assigning ``self.bidirectional`` in its ``__init__``."""

    anticausal = True

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.w = torch.nn.Parameter(torch.randn(d_model))
        self.bidirectional = True

    def state_spec(self):
        return TensorSpec((0,), self.w.dtype)

    def _forward(self, x, state, return_state):
        z = x + x.flip(1) if self.bidirectional else x
        return self.w * z, None


class _Causal(_Mirror):
    """The same with the class's default (no option in its constructor: causal only) and False assigned."""

    anticausal = False

    def __init__(self, d_model: int) -> None:
        super().__init__(d_model)
        self.bidirectional = False


def test_users_layers_assign_the_flag_in_init():
    x = torch.randn(1, 4, 3)
    mirror = _Mirror(3)
    torch.testing.assert_close(mirror(x)[0], mirror.w * (x + x.flip(1)), rtol=0, atol=0)
    causal = _Causal(3)
    torch.testing.assert_close(causal(x)[0], causal.w * x, rtol=0, atol=0)
    causal.bidirectional = True
    with pytest.raises(ValueError, match="_Causal runs causally only"):
        causal(x)
