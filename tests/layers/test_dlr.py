"""DLR specifics (arXiv 2212.00768): the recurrent view derived in layers/dlr.py equals the official convolution
K_l = Re Σ_n W_n e^{Λ_n l} (float64), |λ| ≤ 1 for any parameter values, the official initialisation."""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.layers import DLR
from tests.conftest import DEVICE, rel_err


def formula_kernel(layer: DLR, L: int) -> torch.Tensor:
    """K (C, H, L) by the official formula Re Σ_n W_{c,h,n} exp(Λ_n l), Λ = -a² + i b, evaluated directly."""
    Lambda = torch.complex(-layer.A_sqrt_neg_real ** 2, layer.A_imag)  # (M,)
    W = torch.complex(layer.W[..., 0], layer.W[..., 1])  # (C, H, M)
    l = torch.arange(L, dtype=layer.D.dtype, device=DEVICE)
    powers = torch.exp(Lambda[:, None] * l)  # (M, L)
    return torch.einsum("chm,ml->chl", W, powers).real  # (C, H, L)


def recurrence_loop(layer: DLR, u: torch.Tensor) -> torch.Tensor:
    """y (B, L, H) by s_t = λ s_{t-1} + u_t, y_t = Re(W s_t) + D u_t, one step at a time (the derived view)."""
    lam = torch.exp(torch.complex(-layer.A_sqrt_neg_real ** 2, layer.A_imag))  # (M,)
    W = torch.complex(layer.W[0, ..., 0], layer.W[0, ..., 1])  # (H, M)
    s = torch.zeros(u.shape[0], u.shape[2], lam.shape[0], dtype=lam.dtype, device=DEVICE)  # (B, H, M)
    ys = []
    for t in range(u.shape[1]):
        s = lam * s + u[:, t, :, None]
        ys.append((W * s).sum(-1).real + layer.D * u[:, t])
    return torch.stack(ys, 1)


@pytest.mark.parametrize("init", ["omega", "randn"])
def test_recurrent_view_equals_the_official_convolution(init):
    torch.manual_seed(0)
    layer = DLR(3, d_state=10, init=init, dt_min=1e-3, dt_max=0.3, device=DEVICE, dtype=torch.float64)
    u = torch.randn(2, 45, 3, device=DEVICE, dtype=torch.float64)
    K = formula_kernel(layer, 45)[0]  # (H, L)
    y_conv = torch.zeros_like(u)  # direct causal convolution with the formula kernel, plus D u
    for t in range(45):
        y_conv[:, t] = (K[:, : t + 1].flip(1).T * u[:, : t + 1]).sum(1) + layer.D * u[:, t]
    with torch.no_grad():
        assert rel_err(recurrence_loop(layer, u), y_conv) < 1e-12  # the derivation, independently of the library
        K_layer = layer.kernel(45)
        K[:, 0] += layer.D
        assert rel_err(K_layer, K) < 1e-12
        for backend in ("reference", "chunked", "fft"):
            with ops.use_backend(backend):
                assert rel_err(layer(u)[0], y_conv) < 1e-12, backend


def test_bidirectional_kernels_share_the_modes():
    layer = DLR(3, d_state=8, bidirectional=True, device=DEVICE, dtype=torch.float64)
    K = formula_kernel(layer, 20)  # (2, H, L)
    K[0, :, 0] += layer.D
    with torch.no_grad():
        assert rel_err(layer.kernel(20), K) < 1e-12


def test_eigenvalues_stay_in_the_unit_disc_for_any_parameters():
    torch.manual_seed(1)
    layer = DLR(3, d_state=64, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        layer.A_sqrt_neg_real.copy_(torch.randn(32, dtype=torch.float64) * 10)  # any sign, any size
        layer.A_sqrt_neg_real[:4] = torch.tensor([0.0, -0.0, 1e-30, -1e30])
        layer.A_imag.copy_(torch.randn(32, dtype=torch.float64) * 1e3)
    assert bool((layer.eigenvalues().abs() <= 1).all())
    assert float(layer.eigenvalues().detach().abs()[0]) == 1.0  # a = 0: on the unit circle, never outside
    # and after large optimiser steps that push the decay towards growth
    opt = torch.optim.SGD(layer.parameters(), lr=10.0)
    for _ in range(5):
        x = torch.randn(2, 30, 3, device=DEVICE, dtype=torch.float64)
        opt.zero_grad()
        (-layer(x)[0].square().mean()).backward()  # maximise the output energy
        opt.step()
        assert bool((layer.eigenvalues().abs() <= 1).all())
    assert bool((abs(layer.state_space().poles()) <= 1 + 1e-12).all())


def test_official_initialisation():
    torch.manual_seed(2)
    M = 512
    layer = DLR(4, d_state=2 * M, dt_min=1e-4, dt_max=1e-1, device=DEVICE, dtype=torch.float64)
    n = torch.arange(M, dtype=torch.float64)
    assert rel_err(layer.A_imag.detach(), 2 * math.pi * n / M) < 1e-15  # ω^n, the M-th roots of unity
    dt = 2 * layer.A_sqrt_neg_real.detach() ** 2  # Re Λ = -Δ/2
    assert float(dt.min()) >= 1e-4 * (1 - 1e-12) and float(dt.max()) <= 1e-1 * (1 + 1e-12)
    log_dt = torch.log(dt)  # log-uniform: mean and sd of U[log 1e-4, log 1e-1]
    width = math.log(1e3)
    assert abs(float(log_dt.mean()) - (math.log(1e-4) + width / 2)) < 4 * width / math.sqrt(12 * M)
    assert abs(float(log_dt.std()) - width / math.sqrt(12)) < 0.1 * width / math.sqrt(12)
    assert abs(float(layer.W.detach().std()) - 1 / M) < 0.05 / M  # re and im each N(0, 1/M²): W_scale = 1/N
    assert abs(float(layer.D.detach().std()) - 1) < 1.0  # N(0, 1), only 4 draws
    randn = DLR(4, d_state=2 * M, init="randn", device=DEVICE, dtype=torch.float64)
    assert float(randn.A_imag.detach().min()) >= 0 and float(randn.A_imag.detach().max()) < 2 * math.pi  # mod 2π


def test_learning_rates_and_bad_options():
    from ssmkit.layers import optim_marks

    assert optim_marks(DLR(3)) == {n: {"lr": 1e-4, "weight_decay": 0.0} for n in ("A_sqrt_neg_real", "A_imag")}
    assert optim_marks(DLR(3, lr_W=1e-4))["W"] == {"lr": 1e-4, "weight_decay": 0.0}  # the official W group
    with pytest.raises(ValueError, match="init must be one of"):
        DLR(3, init="legs")
    with pytest.raises(ValueError, match="lr_W must be a finite float >= 0"):
        DLR(3, lr_W=-1.0)
    with pytest.raises(ValueError, match="d_state must be an even int"):
        DLR(3, d_state=7)
