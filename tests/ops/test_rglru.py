"""ops.rglru and the segment-masked short convolution: the clipped square-root gradient follows recurrentgemma's rule
d√v/dv = 1/√max(4v, 1/1000²) = min(1/(2√v), 1000); the convolution with segment starts equals the segments run
separately and continues exactly from its state."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.conv import causal_conv1d, causal_conv1d_segments
from ssmkit.ops.rglru import rglru, sqrt_bounded_gradient
from tests.conftest import DEVICE, rel_err


def test_sqrt_gradient_is_clipped_at_1000():
    v = torch.tensor([0.0, 1e-12, 2.4e-7, 2.5e-7, 2.6e-7, 1e-4, 0.25, 1.0, 4.0], dtype=torch.float64,
                     device=DEVICE, requires_grad=True)
    y = sqrt_bounded_gradient(v)
    assert torch.equal(y.detach(), torch.sqrt(v.detach()))  # the forward is the plain square root
    (g,) = torch.autograd.grad(y.sum(), v)
    expected = torch.minimum(0.5 / torch.sqrt(v.detach()), torch.tensor(1000.0, dtype=torch.float64))
    assert rel_err(g, expected) < 1e-12
    assert g[0] == 1000.0 and g[1] == 1000.0 and g[-1] == 0.25  # clipped where 4v < 1e-6, exact above
    assert float(sqrt_bounded_gradient.__defaults__[0]) == 1000.0
    (g10,) = torch.autograd.grad(sqrt_bounded_gradient(v, 10.0).sum(), v)
    assert float(g10[2]) == 10.0


def test_rglru_equals_its_equations_with_resets():
    torch.manual_seed(0)
    B, L, D = 2, 23, 5
    x, r, i = torch.randn(B, L, D), torch.rand(B, L, D), torch.rand(B, L, D)
    x, r, i = x.double(), r.double(), i.double()
    Lambda = torch.randn(D, dtype=torch.float64) + 3
    h0 = torch.randn(B, D, dtype=torch.float64)
    resets = torch.rand(B, L) < 0.2
    h_ref, h = [], h0
    for t in range(L):
        a = torch.sigmoid(Lambda) ** (8 * r[:, t])
        m = torch.sqrt(1 - a**2)
        a = torch.where(resets[:, t, None], 0.0, a)
        m = torch.where(resets[:, t, None], 1.0, m)
        h = a * h + m * i[:, t] * x[:, t]
        h_ref.append(h)
    for backend in ("reference", "chunked"):
        hs, last = rglru(x, r, i, Lambda, 8.0, h0, resets, backend=backend)
        assert rel_err(hs, torch.stack(h_ref, 1)) < 1e-12 and rel_err(last, h) < 1e-12


@pytest.mark.parametrize("W", [1, 2, 4])
def test_segment_conv_equals_the_segments_run_separately(W):
    torch.manual_seed(1)
    B, L, H = 2, 20, 3
    x = torch.randn(B, L, H, dtype=torch.float64)
    weight, bias = torch.randn(H, W, dtype=torch.float64), torch.randn(H, dtype=torch.float64)
    state = torch.randn(B, H, W - 1, dtype=torch.float64)
    resets = torch.zeros(B, L, dtype=torch.bool)
    resets[0, [5, 6, 18]] = True
    resets[1, [0, 19]] = True
    y, final = causal_conv1d_segments(x, weight, bias, state, resets)
    for b in range(B):
        starts = [0] + [t for t in range(1, L) if resets[b, t]]
        for s, e in zip(starts, starts[1:] + [L]):
            y_seg, s_seg = causal_conv1d(x[b:b + 1, s:e], weight, bias, None if resets[b, s] else state[b:b + 1])
            assert rel_err(y[b:b + 1, s:e], y_seg) < 1e-14
        if W > 1:
            assert rel_err(final[b:b + 1], s_seg) < 1e-14  # the state after the last segment alone
    for k in (1, 5, 6, 7, 17, 19):
        y1, s1 = causal_conv1d_segments(x[:, :k], weight, bias, state, resets[:, :k])
        y2, s2 = causal_conv1d_segments(x[:, k:], weight, bias, s1, resets[:, k:])
        assert rel_err(torch.cat([y1, y2], 1), y) < 1e-14
        assert torch.equal(s2, final)
    none = torch.zeros(B, L, dtype=torch.bool)
    y_plain, s_plain = causal_conv1d(x, weight, bias, state)
    y_none, s_none = causal_conv1d_segments(x, weight, bias, state, none)
    assert rel_err(y_none, y_plain) < 1e-14 and torch.equal(s_none, s_plain)
    with pytest.raises(ValueError, match=r"resets must be a \(B, L\) = \(2, 20\) bool tensor"):
        causal_conv1d_segments(x, weight, bias, state, none[:, 1:])
