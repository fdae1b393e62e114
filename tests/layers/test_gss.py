"""GSS (arXiv 2206.13947): the layer against an independent float64 computation of its equations (numpy, the SSM as a
complex recurrence), the GSS settings (shared random λ, frozen B = 1 as a buffer, Δ = 1), the widths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import erf

import ssmkit.layers as layers
import ssmkit.ops as ops
from tests.conftest import DEVICE, H, make_layer, rel_err


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def gss_by_hand(layer, x: np.ndarray) -> np.ndarray:
    """g = GELU(W_g x), u = LayerNorm(GELU(W_d x)), s = Re(C x_t) + D u with x_t = e^λ x_{t-1} + (e^λ - 1)/λ u_t,
    y = W_o((W_u s) ⊙ g) + b_o."""
    g = gelu(x @ np_(layer.gate.weight).T)
    a = gelu(x @ np_(layer.down.weight).T)
    mean, var = a.mean(-1, keepdims=True), a.var(-1, keepdims=True)
    u = (a - mean) / np.sqrt(var + layer.norm.eps) * np_(layer.norm.weight) + np_(layer.norm.bias)
    ssm = layer.ssm
    lam = -np.exp(np_(ssm.log_A_real)) + 1j * np.exp(np_(ssm.log_A_imag))  # (M,) shared by the channels
    C = np_(ssm.C)[0, ..., 0] + 1j * np_(ssm.C)[0, ..., 1]  # (H_s, M)
    D = np_(ssm.D)
    state = np.zeros(u.shape[:1] + C.shape, dtype=np.complex128)  # (B, H_s, M)
    s = np.zeros_like(u)
    for t in range(u.shape[1]):
        state = np.exp(lam) * state + (np.exp(lam) - 1) / lam * u[:, t, :, None]  # B = 1, Δ = 1
        s[:, t] = (C * state).sum(-1).real + D * u[:, t]
    return ((s @ np_(layer.up.weight).T) * g) @ np_(layer.out.weight).T + np_(layer.out.bias)


@pytest.mark.parametrize("opts", [{"d_state": 8, "bottleneck": 1}, {"d_state": 6, "expand": 2, "bottleneck": 2}])
def test_forward_equals_the_equations_in_float64(opts):
    layer = make_layer("gss", opts)
    x = torch.randn(2, 33, H, device=DEVICE, dtype=torch.float64)
    expected = torch.from_numpy(gss_by_hand(layer, np_(x)))
    for backend in ("reference", "chunked", "fft"):
        with ops.use_backend(backend):
            y, _ = layer(x)
        assert rel_err(y, expected) < 1e-12, backend


def test_gss_settings():
    layer = make_layer("gss", {"d_state": 8, "bottleneck": 1}, lr=1e-3)
    ssm = layer.ssm
    params, buffers = dict(ssm.named_parameters()), dict(ssm.named_buffers())
    assert "B" in buffers and "B" not in params  # frozen B: a buffer, never trained
    assert torch.equal(buffers["B"], torch.view_as_real(torch.ones(H, 4, dtype=torch.complex128, device=DEVICE)))
    assert set(layers.optim_marks(ssm)) == {"log_A_real", "log_A_imag"}  # only λ is an SSM parameter
    A_bar, B_bar, _ = ssm.discrete()
    assert torch.equal(A_bar, A_bar[:1].expand_as(A_bar))  # λ shared by the channels
    lam = torch.complex(-torch.exp(ssm.log_A_real), torch.exp(ssm.log_A_imag))
    assert rel_err(A_bar[0], torch.exp(lam)) < 1e-15  # Δ = 1
    assert rel_err(B_bar[0], torch.expm1(lam) / lam) < 1e-14
    assert bool((lam.imag > 0).all()) and bool((lam.real < 0).all())


def test_widths_follow_expand_and_bottleneck():
    layer = layers.build("gss", d_model=1024, device="meta")  # the paper's E = 1024: F = 4096, H_s = 256
    assert layer.gate.weight.shape == (4096, 1024) and layer.down.weight.shape == (256, 1024)
    assert layer.up.weight.shape == (4096, 256) and layer.out.weight.shape == (1024, 4096)
    assert layers.build("gss", d_model=6, device="meta").ssm.d_model == 2  # ⌈6/4⌉
    assert layers.build("gss", d_model=3, device="meta").ssm.d_model == 2  # at least 2 (LayerNorm of one channel)
    for bad in ({"expand": 0}, {"bottleneck": 0}, {"d_state": 5}):
        with pytest.raises(ValueError, match="expand|bottleneck|d_state"):
            layers.build("gss", d_model=H, **bad)


def test_the_inner_ssm_exports_its_kernel_and_realisation():
    layer = make_layer("gss")
    with pytest.raises(NotImplementedError, match="nonlinear"):
        layer.kernel(5)
    K = layer.ssm.kernel(12)  # the linear part is an ordinary diagonal LTI layer
    assert K.shape == (layer.ssm.d_model, 12)
    ss = layer.ssm.state_space()
    assert ss.nsystems == layer.ssm.d_model
