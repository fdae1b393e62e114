"""The causal depthwise convolution with state: against its loop oracle, nn.Conv1d, chunking and the step."""

import pytest
import torch

from ssmkit.layers.shortconv import ShortConv
from ssmkit.ops.conv import causal_conv1d, causal_conv1d_reference
from tests.conftest import DEVICE, rel_err


@pytest.mark.parametrize("W", [1, 2, 4])
def test_causal_conv1d_equals_the_loop_and_nn_conv1d(W):
    x = torch.randn(2, 11, 5, dtype=torch.float64, device=DEVICE)
    w = torch.randn(5, W, dtype=torch.float64, device=DEVICE)
    b = torch.randn(5, dtype=torch.float64, device=DEVICE)
    s0 = torch.randn(2, 5, W - 1, dtype=torch.float64, device=DEVICE)
    y, s = causal_conv1d(x, w, b, s0)
    y_ref, s_ref = causal_conv1d_reference(x, w, b, s0)
    assert rel_err(y, y_ref) < 1e-12 and torch.equal(s, s_ref)
    conv = torch.nn.Conv1d(5, 5, W, groups=5, padding=W - 1, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        conv.weight.copy_(w.unsqueeze(1))
        conv.bias.copy_(b)
        y_torch = conv(x.transpose(1, 2))[..., :11].transpose(1, 2)  # the official causal form: pad, then cut
    y0, _ = causal_conv1d(x, w, b)
    assert rel_err(y0, y_torch) < 1e-12


def test_chunks_and_steps_equal_one_pass():
    torch.manual_seed(0)
    conv = ShortConv(3, 4, dtype=torch.float64, device=DEVICE)
    x = torch.randn(2, 9, 3, dtype=torch.float64, device=DEVICE)
    y, s = conv(x)
    y1, s1 = conv(x[:, :2])  # shorter than the window
    y2, s2 = conv(x[:, 2:], s1)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-12 and torch.equal(s2, s)
    h = torch.zeros(2, *conv.state_spec().shape, dtype=torch.float64, device=DEVICE)
    ys = []
    for t in range(9):
        y_t, h = conv.step(x[:, t], h)
        ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), y) < 1e-12 and torch.equal(h, s)


def test_bad_inputs_raise():
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"weight must be \(H, W\)"):
        causal_conv1d(torch.randn(2, 5, 4), w)
    with pytest.raises(ValueError, match=r"state must be \(B, H, W-1\)"):
        causal_conv1d(torch.randn(2, 5, 3), w, state=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="dtype"):
        causal_conv1d(torch.randn(2, 5, 3, dtype=torch.float64), w)
