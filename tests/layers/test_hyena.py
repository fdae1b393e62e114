"""Hyena (arXiv 2302.10866): the layer against an independent float64 computation of its equations (numpy loops), the
implicit filters, causality by gradient, inputs beyond l_max, the growing state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from tests.conftest import DEVICE, H, make_layer, rel_err, run_steps


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def filters_by_hand(layer, L: int) -> np.ndarray:
    """h (O·H, L): exp(-|δ| t_n) · FFN([t_n, cos(2π f n/l_max), -sin(2π f n/l_max)]), t_n = n/(l_max - 1)."""
    f = layer.filter
    n = np.arange(L, dtype=np.float64)[:, None]
    bands = (f.emb_dim - 1) // 2
    freqs = np.linspace(1e-4, bands - 1, bands)
    t = n / (f.l_max - 1)
    z = np.concatenate([t, np.cos(2 * math.pi * freqs * n / f.l_max), -np.sin(2 * math.pi * freqs * n / f.l_max)], -1)
    w = np_(f.freq)
    h = np.sin(w * (z @ np_(f.w_in).T + np_(f.b_in)))
    for k in range(f.n_inner):
        h = np.sin(w * (h @ np_(f.w_hidden)[k].T + np_(f.b_hidden)[k]))
    h = h @ np_(f.w_out).T  # (L, O·H)
    return (h * np.exp(-t * np.abs(np_(f.deltas)))).T


def hyena_by_hand(layer, x: np.ndarray) -> np.ndarray:
    """The Hyena recurrence by loops: projections, short causal conv, gates in reverse order, direct convolutions."""
    Bsz, L, _ = x.shape
    N, O = layer.order, layer.order - 1
    z = x @ np_(layer.in_proj.weight).T + np_(layer.in_proj.bias)  # (B, L, (N+1)H)
    w, b = np_(layer.short_conv.weight), np_(layer.short_conv.bias)  # (C, W), (C,)
    W = w.shape[1]
    zp = np.concatenate([np.zeros((Bsz, W - 1, z.shape[-1])), z], axis=1)
    zc = np.stack([sum(w[:, k] * zp[:, t + k] for k in range(W)) + b for t in range(L)], axis=1)
    parts = [zc[..., j * H:(j + 1) * H] for j in range(N + 1)]
    gates, v = parts[:-1], parts[-1]
    h = filters_by_hand(layer, L).reshape(O, H, L)
    bias = np_(layer.filter_bias)
    for o in range(O):
        z_o = gates[N - 1 - o] * v
        conv = np.zeros_like(z_o)
        for t in range(L):
            for s in range(t + 1):
                conv[:, t] += h[o, :, t - s] * z_o[:, s]
        v = conv + bias[o] * z_o
    y = gates[0] * v
    return y @ np_(layer.out_proj.weight).T + np_(layer.out_proj.bias)


@pytest.mark.parametrize("opts,L", [({"l_max": 64, "filter_width": 8}, 23),
                                    ({"l_max": 16, "order": 3, "filter_width": 8, "emb_dim": 5, "n_inner": 1,
                                      "sine_freq": 10.0}, 40)])  # 40 > l_max: the filters extend
def test_forward_equals_the_equations_in_float64(opts, L):
    layer = make_layer("hyena", opts)
    x = torch.randn(2, L, H, device=DEVICE, dtype=torch.float64)
    expected = torch.from_numpy(hyena_by_hand(layer, np_(x)))
    for backend in ("reference", "fft"):
        with ops.use_backend(backend):
            y, _ = layer(x)
        assert rel_err(y, expected) < 1e-12, backend  # float64 throughout (the FFT adds ~1e-15)


def test_filters_follow_the_implicit_parametrisation():
    layer = make_layer("hyena", {"l_max": 32, "filter_width": 8, "order": 3})
    h = layer.filters(50)
    assert h.shape == (2, H, 50)
    assert rel_err(h.reshape(2 * H, 50), torch.from_numpy(filters_by_hand(layer, 50))) < 1e-13
    assert torch.equal(layer.filters(20), layer.filters(50)[:, :, :20])  # a filter tap does not depend on L
    # decay rates: |δ| from -ln(1e-2)/1.5 to -ln(1e-2)/0.3, the window reaching 1e-2 at 1.5 and 0.3 × l_max
    deltas = layer.filter.deltas.abs()
    assert math.isclose(float(deltas[0]), math.log(100) / 1.5) and math.isclose(float(deltas[-1]), math.log(100) / 0.3)


@pytest.mark.parametrize("backend", ["reference", "fft"])
def test_causality_by_gradient(backend):
    layer = make_layer("hyena")
    x = torch.randn(1, 24, H, device=DEVICE, dtype=torch.float64, requires_grad=True)
    with ops.use_backend(backend):
        y, _ = layer(x)
    for t in (0, 9, 22):
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        future, past = float(g[0, t + 1:].abs().max()), float(g[0, : t + 1].abs().max())
        assert past > 0
        assert future == 0.0 if backend == "reference" else future < 1e-14 * past  # FFT: rounding only


def test_state_grows_by_one_input_per_step_and_carries_every_input():
    layer = make_layer("hyena", {"l_max": 16, "order": 3, "filter_width": 8})
    x = torch.randn(2, 30, H, device=DEVICE, dtype=torch.float64)
    h = layer.initial_state(2)
    assert h.inputs.shape == (2, 2, H, 0) and h.conv.shape == (2, 4 * H, 2)
    with torch.no_grad():
        y_step, h = run_steps(layer, x, h)
        y, h_f = layer(x)
    assert h.inputs.shape == (2, 2, H, 30)
    assert rel_err(h.inputs, h_f.inputs) < 1e-12 and rel_err(y_step, y) < 1e-12
    # the last gate's long convolution sees z = x_{N-1} ⊙ v of every input so far
    _, h_half = layer(x[:, :12])
    assert rel_err(h_half.inputs, h_f.inputs[..., :12]) < 1e-12


def test_step_beyond_the_filter_cache_and_under_autograd():
    layer = make_layer("hyena", {"l_max": 4, "filter_width": 8})  # the step cache starts at l_max taps and grows
    x = torch.randn(1, 11, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, _ = layer(x)
        y_step, _ = run_steps(layer, x)
    assert rel_err(y_step, y) < 1e-12
    y_grad, _ = run_steps(layer, x)  # differentiable step: fresh filters at every step
    g = torch.autograd.grad(y_grad.sum(), layer.filter.w_out)[0]
    g_f = torch.autograd.grad(layer(x)[0].sum(), layer.filter.w_out)[0]
    assert rel_err(g, g_f) < 1e-11


def test_options_are_validated():
    for bad, match in (({"l_max": 1}, "l_max must be an int >= 2"), ({"order": 1}, "order must be an int >= 2"),
                       ({"emb_dim": 4}, "emb_dim must be an odd int >= 3"), ({"n_inner": -1}, "n_inner"),
                       ({"filter_width": 0}, "filter_width"), ({"short_width": 0}, "short_width"),
                       ({"sine_freq": math.inf}, "sine_freq")):
        with pytest.raises(ValueError, match=match):
            layers.build("hyena", d_model=H, **bad)
    layer = make_layer("hyena")
    with pytest.raises(NotImplementedError, match="not a convolution of its input"):
        layer.kernel(5)
