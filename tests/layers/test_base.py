"""SequenceLayer's input and state checks, including tuple states (e.g. conv state + SSM state)."""

import pytest
import torch

from ssmkit.layers.base import SequenceLayer


class TwoStateDelay(SequenceLayer):
    """Unregistered toy layer y_t = u_{t-1} + s_t with a tuple state (last input, running sum s)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    def initial_state(self, batch_size):
        z = torch.zeros(batch_size, self.d_model, dtype=torch.float64)
        return (z, z.clone())

    def _step(self, x_t, state):
        last, total = state
        total = total + x_t
        return last + total, (x_t, total)

    def _forward(self, x, state):
        state = self.initial_state(x.shape[0]) if state is None else state
        ys = []
        for x_t in x.unbind(1):
            y_t, state = self._step(x_t, state)
            ys.append(y_t)
        return torch.stack(ys, 1), state


def test_tuple_state_roundtrip_and_errors():
    layer = TwoStateDelay(3)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    y, h = layer(x)
    y2, _ = layer(x[:, 2:], layer(x[:, :2])[1])
    assert torch.allclose(y[:, 2:], y2)
    expected = torch.cat([torch.zeros(2, 1, 3, dtype=torch.float64), x[:, :-1]], 1) + x.cumsum(1)
    assert torch.allclose(y, expected)
    with pytest.raises(ValueError, match=r"state must be a tuple of 2 states \(as initial_state\(2\)\); got Tensor"):
        layer(x, h[0])
    with pytest.raises(ValueError, match=r"state\[1\] must be \(2, 3\) torch.float64"):
        layer(x, (h[0], h[1][:, :2]))
    with pytest.raises(ValueError, match=r"got a tuple of 1"):
        layer.step(x[:, 0], (h[0],))
