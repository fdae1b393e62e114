"""LRU beyond the protocol suite: stability for any parameter value (also after an optimiser drives ν to -∞),
the ring initialisation, γ normalisation, init scales, a hand value, the export, options and marks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
from tests.conftest import DEVICE, H, make_layer, rel_err


def test_eigenvalues_stay_inside_the_unit_circle_after_an_optimiser_drives_nu_to_minus_infinity():
    torch.manual_seed(0)
    layer = layers.build("lru", d_model=2, d_state=4, device=DEVICE)  # tiny float32 layer
    opt = torch.optim.Adam([layer.log_nu], lr=0.1)
    for _ in range(1000):  # every step pushes ν = log(decay rate) down: |λ| = exp(-exp(ν)) toward 1
        opt.zero_grad()
        layer.log_nu.sum().backward()
        opt.step()
    assert float(layer.log_nu.detach().max()) < -90  # far below ν = -17.3, where exp(-exp(ν)) rounds to 1 in float32
    with torch.no_grad():
        lam = layer.eigenvalues()
        naive = torch.exp(torch.complex(-torch.exp(layer.log_nu), torch.exp(layer.log_theta)))  # without the floor
        assert float(naive.abs().double().max()) == 1.0  # the formula alone is marginally stable in float32
        assert float(lam.abs().double().max()) < 1.0
        assert float(lam.abs().double().max()) == pytest.approx(math.exp(-1e-6), abs=2e-7)
        assert layer.state_space().is_stable()
        y, h = layer(torch.ones(1, 2000, 2, device=DEVICE))
        assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(h).all())


def test_any_parameter_value_gives_a_stable_finite_system():
    layer = make_layer("lru", dtype=torch.float32)
    with torch.no_grad():
        for value in (-1e4, -40.0, 0.0, 5.0, 80.0):  # exp(ν) from 0 to inf (|λ| from the floor to 0)
            layer.log_nu.fill_(value)
            lam = layer.eigenvalues()
            assert bool(torch.isfinite(torch.view_as_real(lam)).all()) and float(lam.abs().max()) < 1.0


def test_init_magnitudes_fill_the_ring_and_phases_the_sector():
    torch.manual_seed(5)
    r_min, r_max, max_phase = 0.4, 0.9, 0.5
    layer = layers.build("lru", d_model=H, d_state=4000, r_min=r_min, r_max=r_max, max_phase=max_phase,
                         dtype=torch.float64)
    with torch.no_grad():
        lam = layer.eigenvalues()
    r = lam.abs()
    assert float(r.min()) >= r_min and float(r.max()) <= r_max
    phase = torch.exp(layer.log_theta.detach())
    assert float(phase.min()) >= 0 and float(phase.max()) < max_phase
    assert rel_err(lam.angle(), phase) < 1e-12  # phases below π are the angles themselves
    # |λ|² is uniform on [r_min², r_max²] (uniform on the ring's area): mean and variance of a uniform law
    r2 = (r**2).numpy()
    a, b = r_min**2, r_max**2
    assert abs(r2.mean() - (a + b) / 2) < 0.01  # 2000 draws: standard error 0.005
    assert abs(r2.var() - (b - a) ** 2 / 12) < 0.003
    # γ = sqrt(1 - |λ|²)
    assert rel_err(torch.exp(layer.log_gamma.detach()), torch.sqrt(1 - r**2)) < 1e-12


def test_init_scales_of_B_C_D():
    torch.manual_seed(6)
    Hb, d_state = 50, 400
    layer = layers.build("lru", d_model=Hb, d_state=d_state, dtype=torch.float64)
    M = d_state // 2
    B, C = layer.B.detach(), layer.C.detach()  # (M, H, 2), (1, H, M, 2)
    assert abs(float(B.var()) * 2 * Hb - 1) < 0.05  # B_re, B_im each N(0, 1/(2H)): 20000 draws
    assert abs(float(C.var()) * M - 1) < 0.05  # C_re, C_im each N(0, 1/M)
    assert abs(float(layer.D.detach().var()) - 1) < 0.5  # D ~ N(0, 1): 50 draws


def test_hand_value_one_state():
    # d_state = 2 (one complex state): λ = exp(-ν + iθ) with ν = 0.5, θ = 1; γ = 0.25; B = 1 + 2i; C = 1 - i;
    # D = 0.5. y_t = Re(C x_t) + D u_t, x_t = λ x_{t-1} + γ B u_t.
    layer = layers.build("lru", d_model=1, d_state=2, dtype=torch.float64)
    with torch.no_grad():
        layer.log_nu.fill_(math.log(0.5))
        layer.log_theta.fill_(0.0)
        layer.log_gamma.fill_(math.log(0.25))
        layer.B.copy_(torch.tensor([[[1.0, 2.0]]]))
        layer.C.copy_(torch.tensor([[[[1.0, -1.0]]]]))
        layer.D.fill_(0.5)
    lam = complex(math.exp(-0.5) * math.cos(1.0), math.exp(-0.5) * math.sin(1.0))
    u = [1.0, -2.0, 0.5]
    x, expect = 0j, []
    for u_t in u:
        x = lam * x + 0.25 * (1 + 2j) * u_t
        expect.append(((1 - 1j) * x).real + 0.5 * u_t)
    y, h = layer(torch.tensor(u, dtype=torch.float64).reshape(1, 3, 1))
    assert np.allclose(y.detach().reshape(-1).numpy(), expect, atol=1e-14)
    assert complex(h.detach()[0, 0]) == pytest.approx(x, abs=1e-14)


def test_exported_system():
    layer = make_layer("lru")
    ss = layer.state_space()
    assert (ss.nsystems, ss.nstates, ss.ninputs, ss.noutputs) == (1, layer.d_state, H, H)
    with torch.no_grad():
        lam = layer.eigenvalues().cpu().numpy()
    expect = np.concatenate([lam, lam.conj()])
    for p in ss.poles()[0]:
        assert np.abs(expect - p).min() < 1e-12


def test_options_are_validated():
    with pytest.raises(ValueError, match="d_state must be an even int"):
        layers.build("lru", d_model=H, d_state=5)
    with pytest.raises(ValueError, match="0 <= r_min <= r_max <= 1"):
        layers.build("lru", d_model=H, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="0 <= r_min <= r_max <= 1"):
        layers.build("lru", d_model=H, r_max=1.5)
    with pytest.raises(ValueError, match="max_phase must be a float > 0"):
        layers.build("lru", d_model=H, max_phase=0.0)
    with pytest.raises(ValueError, match="r_min must be a finite float"):
        layers.build("lru", d_model=H, r_min=float("nan"))


def test_marks_follow_minimal_lru():
    layer = layers.build("lru", d_model=H)
    marks = layers.optim_marks(layer)
    assert set(marks) == {"log_nu", "log_theta", "log_gamma", "B"}  # the "ssm" group; C and D are regular
    assert all(m == {"lr": 5e-4, "weight_decay": 0.0} for m in marks.values())
    assert layer.initial_state(2).shape == (2, 32) and layer.kernel(4).shape == (H, H, 4)
