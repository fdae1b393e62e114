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
