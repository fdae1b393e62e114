"""SGConv (arXiv 2210.09298): the kernel's length and multiscale decay structure against a float64 construction by
hand, the frozen normaliser, bidirectional symmetry, causality by gradient, the finite window state."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from tests.conftest import DEVICE, H, make_layer, rel_err


def upsample_linear(w: np.ndarray, r: int) -> np.ndarray:
    """Linear interpolation by an integer factor r with half-pixel centres (align_corners=False), by hand:
    output j samples the input at x = (j + ½)/r - ½, clamped to [0, d - 1]."""
    d = w.shape[-1]
    x = np.clip((np.arange(d * r) + 0.5) / r - 0.5, 0, d - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, d - 1)
    frac = x - lo
    return w[..., lo] * (1 - frac) + w[..., hi] * frac


def kernel_by_hand(layer) -> np.ndarray:
    """K (C, H, K_len) from the sub-kernels in float64: concat_i decay^{-i} Upsample_{r_i}(w_i), normalised by the
    L2 norm of each channel's full kernel, D on the causal tap 0."""
    w = layer.sub_kernels.detach().double().cpu().numpy()  # (S, C, H, d)
    decay = np.linspace(layer.decay_min, layer.decay_max, layer.d_model)[:, None]  # (H, 1)
    parts = [upsample_linear(w[i], 2 ** (i - 1) if i > 1 else 1) * decay ** (-i) for i in range(w.shape[0])]
    K = np.concatenate(parts, axis=-1)
    K = K / np.linalg.norm(K, axis=-1, keepdims=True)
    K[0, :, 0] += layer.D.detach().double().cpu().numpy()
    return K


@pytest.mark.parametrize("opts", [{"l_max": 100, "kernel_dim": 8}, {"l_max": 64, "kernel_dim": 4, "decay_min": 1.5,
                                                                      "decay_max": 3.0}])
def test_kernel_equals_the_construction_by_hand(opts):
    layer = make_layer("sgconv", opts)
    S = 1 + int(np.ceil(np.log2(opts["l_max"] / opts["kernel_dim"])))
    assert layer.n_scales == S and layer.kernel_length == opts["kernel_dim"] * 2 ** (S - 1) >= opts["l_max"]
    K = layer.kernel(layer.kernel_length + 5)
    assert K.shape == (H, layer.kernel_length + 5)
    assert torch.equal(K[:, layer.kernel_length:], torch.zeros(H, 5, dtype=K.dtype, device=K.device))  # FIR
    assert rel_err(K[:, : layer.kernel_length], torch.from_numpy(kernel_by_hand(layer)[0])) < 1e-13


def test_scale_norms_decay_by_alpha():
    # Constant sub-kernels upsample exactly (linear interpolation of a constant), so the segment of scale i (d·r_i taps)
    # has norm α^i √r_i times that of scale 0, with α = 1/decay per channel: the multiscale decay of eq. 2.
    layer = make_layer("sgconv", {"l_max": 512, "kernel_dim": 16, "decay_min": 2.0, "decay_max": 3.0})
    with torch.no_grad():
        layer.sub_kernels.copy_(torch.ones_like(layer.sub_kernels))
        layer.reset_kernel_norm()
        K = layer.kernel(layer.kernel_length)  # (H, K_len)
        K[:, 0] -= layer.D
    assert layer.n_scales == 6
    bounds = [0, 16] + [16 * 2**i for i in range(1, layer.n_scales)]
    norms = torch.stack([K[:, a:b].norm(dim=-1) for a, b in zip(bounds[:-1], bounds[1:])], dim=-1)  # (H, S)
    alpha = 1 / torch.tensor([2.0, 2.5, 3.0], dtype=torch.float64)
    for i in range(1, layer.n_scales):
        expected = alpha**i * (2 ** max(i - 1, 0)) ** 0.5
        assert rel_err(norms[:, i] / norms[:, 0], expected) < 1e-13
    assert rel_err((K * K).sum(-1), torch.ones(H, dtype=K.dtype)) < 1e-13  # unit L2 norm per channel


def test_normaliser_is_frozen_at_initialisation_and_travels_with_the_state_dict():
    layer = make_layer("sgconv")
    norm0 = layer.kernel_norm.clone()
    x = torch.randn(2, 40, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        layer.sub_kernels.mul_(3.0)  # a training update: the normaliser stays (as the official code after step 1)
        y, _ = layer(x)
    assert torch.equal(layer.kernel_norm, norm0)  # forward writes no buffer
    assert "kernel_norm" in layer.state_dict()
    twin = make_layer("sgconv", seed=9)
    twin.load_state_dict(layer.state_dict())
    assert torch.equal(twin(x)[0], y) and torch.equal(copy.deepcopy(layer)(x)[0], y)
    layer.reset_kernel_norm()  # renormalise from the current sub-kernels: the scale drops out
    assert rel_err(layer.kernel_norm, 3 * norm0) < 1e-14


def test_bidirectional_with_equal_sub_kernels_is_symmetric():
    # Both kernels are built the same way from their own sub-kernels: with the two sets equal (and D = 0) the response
    # to an impulse at m is mirror-symmetric about m - ½ (the anti-causal tap 0 acts at lag -1): y[m+j] = y[m-1-j].
    layer = make_layer("sgconv", {"l_max": 16, "kernel_dim": 4}, bidirectional=True)
    with torch.no_grad():
        layer.sub_kernels[:, 1] = layer.sub_kernels[:, 0]
        layer.reset_kernel_norm()
        layer.D.zero_()
    assert torch.equal(layer.kernel_norm[0], layer.kernel_norm[1])
    m, L = 20, 40
    x = torch.zeros(1, L, H, device=DEVICE, dtype=torch.float64)
    x[0, m] = 1.0
    y, _ = layer(x)
    assert float(y[0, m:].detach().abs().max()) > 0
    assert rel_err(y[0, m:], y[0, :m].flip(0)) < 1e-13
    K = layer.kernel(L)
    assert torch.equal(K[0], K[1])


@pytest.mark.parametrize("backend", ["reference", "fft"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_causality_by_gradient(bidirectional, backend):
    layer = make_layer("sgconv", bidirectional=bidirectional)
    x = torch.randn(1, 24, H, device=DEVICE, dtype=torch.float64, requires_grad=True)
    with ops.use_backend(backend):
        y, _ = layer(x)
    for t in (0, 9, 22):
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        future, past = float(g[0, t + 1:].abs().max()), float(g[0, : t + 1].abs().max())
        assert past > 0
        if bidirectional:
            assert future > 0
        elif backend == "reference":
            assert future == 0.0  # ∂y_t/∂x_s = 0 for s > t exactly
        else:
            assert future < 1e-14 * past  # the FFT mixes all times by rounding only


def test_window_state_is_the_last_inputs():
    layer = make_layer("sgconv", {"l_max": 8, "kernel_dim": 4})  # K_len = 8: the state is the last 7 inputs
    x = torch.randn(2, 20, H, device=DEVICE, dtype=torch.float64)
    _, h = layer(x)
    assert h.shape == (2, H, 7) and torch.equal(h, x[:, -7:].transpose(1, 2))
    _, h_short = layer(x[:, :3])
    assert torch.equal(h_short[:, :, :4], torch.zeros(2, H, 4, dtype=x.dtype, device=DEVICE))
    assert torch.equal(h_short[:, :, 4:], x[:, :3].transpose(1, 2))


def test_options_are_validated():
    for bad in ({"l_max": 0}, {"kernel_dim": 0}, {"decay_min": 0.0}, {"decay_max": float("nan")}):
        with pytest.raises(ValueError, match="l_max|kernel_dim|decay_m"):
            layers.build("sgconv", d_model=H, **bad)
    assert layers.build("sgconv", d_model=H, l_max=10, kernel_dim=64).n_scales == 1  # l_max <= d: one scale


@pytest.mark.parametrize("d", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("factor", [1, 2, 4, 16])
def test_upsampling_matrix_is_linear_interpolation(d, factor):
    # the kernel upsamples by a fixed matrix (deterministic on CUDA, where interpolate's backward is not): the same
    # values as F.interpolate(mode="linear", align_corners=False), float64, to rounding; its rows hold weights summing
    # to one per output tap
    from ssmkit.layers.sgconv import interpolation_matrix, upsampling_matrix

    w = torch.randn(2, 3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d * 100 + factor))
    want = torch.nn.functional.interpolate(w, scale_factor=float(factor), mode="linear")
    M = interpolation_matrix(d, factor)
    assert M.shape == (d, d * factor) and M.dtype == torch.float64
    assert torch.equal(upsampling_matrix(d, factor, w.float()), M.float())  # the cached copy, in the tensor's dtype
    assert torch.allclose(M.sum(0), torch.ones(d * factor, dtype=torch.float64), rtol=0, atol=0)
    assert rel_err(w @ M, want) < 1e-15


def test_the_kernel_trains_under_deterministic_algorithms():
    # torch.use_deterministic_algorithms(True): the backward through the kernel's upsampling runs (on CUDA
    # F.interpolate's backward raised) and gives the gradient twice the same
    layer = make_layer("sgconv", {"l_max": 32, "kernel_dim": 4})
    x = torch.randn(2, 40, H, device=DEVICE, dtype=torch.float64)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            layer.zero_grad(set_to_none=True)
            layer(x)[0].square().sum().backward()
            grads.append(layer.sub_kernels.grad.clone())
    finally:
        torch.use_deterministic_algorithms(before)
    assert grads[0].abs().max() > 0 and torch.equal(grads[0], grads[1])
