"""A deep Wiener model on irregularly sampled data: ``DeepWiener(u, intervals=)`` and ``step(u_t, s, interval=)``
against each other, against the regular model (unit gaps), and against blocks composed by hand from the layers'
own irregular forwards; refused for layers without an irregular-sampling form."""

from __future__ import annotations

import pytest
import torch

from ssmkit.sysid.wiener import DeepWiener
from tests.conftest import DEVICE, rel_err


def _model(layer: str, seed: int = 0) -> DeepWiener:
    torch.manual_seed(seed)
    options = {"s5": {"d_state": 4, "blocks": 1}, "s4d": {"d_state": 4},
               "liquid_s4": {"d_state": 4, "l_max": 16}}[layer]
    return DeepWiener(2, 1, d_model=3, n_layers=2, layer=layer, layer_options=options, dt=0.5,
                      time_varying=layer == "liquid_s4", device=DEVICE, dtype=torch.float64)


def _data(B: int = 2, L: int = 11, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, L, 2, generator=g, dtype=torch.float64).to(DEVICE)
    tau = (0.1 + 2.5 * torch.rand(B, L, generator=g, dtype=torch.float64)).to(DEVICE)
    return u, tau


@pytest.mark.parametrize("layer", ["s5", "s4d"])
def test_forward_with_intervals_equals_its_step_loop_and_the_hand_composed_blocks(layer):
    model = _model(layer)
    u, tau = _data()
    y, states = model(u, intervals=tau)
    s, ys = model.initial_state(u.shape[0]), []
    for t in range(u.shape[1]):
        y_t, s = model.step(u[:, t], s, interval=tau[:, t])
        ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), y) < 1e-12
    for a, b in zip(states, s):
        assert rel_err(a, b) < 1e-12
    x = model.encoder((u - model.u_mean) / model.u_std)  # the blocks by hand: σ(layer(x, intervals)) + skip(x)
    for block_layer, skip, sigma in zip(model.layers, model.skips, model._sigmas()):
        x = sigma(block_layer(x, intervals=tau)[0]) + skip(x)
    assert rel_err(model.saturate(model.decoder(x) * model.y_std + model.y_mean), y) < 1e-12
    assert rel_err(model(u, intervals=torch.ones_like(tau))[0], model(u)[0]) < 1e-12
    assert (model(u)[0] - y).abs().max() > 1e-4


def test_a_model_of_layers_without_intervals_refuses_them():
    model = _model("liquid_s4")  # S4 takes intervals; Liquid-S4 does not (its liquid terms read past gaps)
    u, tau = _data()
    with pytest.raises(ValueError, match="LiquidS4 does not take sampling intervals"):
        model(u, intervals=tau)
    with pytest.raises(ValueError, match="LiquidS4 does not take sampling intervals"):
        model.step(u[:, 0], model.initial_state(2), interval=tau[:, 0])
