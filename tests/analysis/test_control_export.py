"""A SISO bank exported to python-control as one block-diagonal MIMO system keeps the channel order (probe 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit.layers import build


def test_append_of_a_siso_bank_simulates_the_layer_channel_by_channel():
    control = pytest.importorskip("control")
    torch.manual_seed(0)
    layer = build("s4d", d_model=3, d_state=4).double()
    system = control.append(*layer.state_space().to_control())
    assert (system.ninputs, system.noutputs, system.nstates, system.dt) == (3, 3, 12, 1.0)
    x = torch.randn(1, 30, 3, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)[0][0].numpy()  # (L, H)
    response = control.forced_response(system, U=x[0].numpy().T)  # time last: (m, L) -> (p, L)
    np.testing.assert_allclose(response.outputs.T, y, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name,options", [("s4d", {"d_state": 4}), ("dss", {"d_state": 4}), ("dlr", {"d_state": 4}),
                                          ("s5", {"d_state": 16}), ("lru", {"d_state": 4}), ("ema", {"d_state": 4}),
                                          ("s4", {"d_state": 4})])
def test_a_layer_state_is_the_exported_systems_state(name, options):
    # the mapping the StateSpace docstring states: simulating the export from x0 = the layer's state (in the
    # realisation's basis) continues the layer's forward exactly
    torch.manual_seed(0)
    layer = build(name, d_model=3, **options).double()
    u = torch.randn(2, 30, 3, dtype=torch.float64)
    with torch.no_grad():
        _, h = layer(u[:, :12])
        y_ref, _ = layer(u[:, 12:], state=h)
    system = layer.state_space()
    shape = (2, system.nsystems, system.nstates)
    if name == "s4":
        x0 = torch.cat([h.real, h.imag], -1)
    elif h.is_complex():
        x0 = torch.view_as_real(h).reshape(shape)
    else:
        x0 = h.reshape(shape)
    assert tuple(x0.shape) == shape
    torch.testing.assert_close(system.simulate(u[:, 12:], x0=x0), y_ref, rtol=1e-12, atol=1e-12)
