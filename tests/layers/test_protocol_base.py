"""The base class every layer inherits (``ssmkit.layers.SequenceLayer``), checked on an unregistered toy layer:
its class defaults, the forced-backend check, step's and kernel's own checks, and the two frozen descriptions.
The registered layers go through the same code in test_protocol; these are the branches no registered layer
reaches alone (a registered layer overrides every default)."""

import dataclasses

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.layers import BlockDefaults, Capabilities, SequenceLayer, TensorSpec
from ssmkit.layers.protocol import float32_core


class Gain(SequenceLayer):
    """Unregistered toy LTI layer y_t = g ⊙ u_t with no state dynamics (a state of one zero per channel)."""

    capabilities = Capabilities(kernel=True)

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.g = torch.nn.Parameter(torch.linspace(0.5, 2.0, d_model))

    def state_spec(self):
        return TensorSpec((self.d_model,), self.g.dtype)

    def _forward(self, x, state, return_state):
        self._backend()
        return x * self.g.to(x.dtype), (torch.zeros_like(x[:, 0]) if return_state else None)

    def _step(self, x_t, state):
        return x_t * self.g.to(x_t.dtype), state

    def _kernel(self, L):
        return torch.cat([self.g[:, None], self.g.new_zeros(self.d_model, L - 1)], dim=1)


def test_the_class_defaults_of_an_unregistered_layer():
    layer = Gain(3)
    assert layer.name == "" and layer.zoo is None and layer.missing == {}
    assert layer.backends == ("reference",)
    assert SequenceLayer.capabilities == Capabilities(kernel=False, state_space=False, step=True)
    assert layer.block_defaults == BlockDefaults(activation="gelu", mixer_out="glu")
    for frozen in (Capabilities(), BlockDefaults()):  # one instance is shared by every layer class that inherits it
        with pytest.raises(dataclasses.FrozenInstanceError):
            frozen.step = False if isinstance(frozen, Capabilities) else None
        assert hash(frozen) == hash(type(frozen)())


def test_a_backend_forced_outside_the_layers_list_is_refused_by_name():
    layer = Gain(3)
    x = torch.randn(2, 4, 3)
    for allowed in ("auto", "reference"):
        with ops.use_backend(allowed):
            assert torch.allclose(layer(x)[0], x * layer.g)
    with ops.use_backend("fft"), pytest.raises(
            RuntimeError, match=r"Gain: backend 'fft' was forced with ssmkit.ops.set_backend but this layer runs under "
                                r"\('auto', 'reference'\)"):
        layer(x)


def test_step_and_kernel_check_their_own_arguments():
    layer = Gain(3)
    with pytest.raises(ValueError, match="x_t"):
        layer.step(torch.ones(2, 3, dtype=torch.long), layer.initial_state(2))
    y_t, _ = layer.step(torch.ones(1, 3), layer.initial_state(1))  # batch 1 (generation) is a batch
    assert torch.allclose(y_t, layer.g[None])
    for L in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="L must be a positive int"):
            layer.kernel(L)
    assert torch.equal(layer.kernel(1), layer.g[:, None])


def test_the_core_runs_outside_autocast_and_a_plain_block_is_untouched():
    a = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with float32_core("cpu"):
            assert not torch.is_autocast_enabled("cpu") and (a @ a).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")
    with float32_core("cpu"):
        assert not torch.is_autocast_enabled("cpu") and (a @ a).dtype == torch.float32
