"""Probe of the irregular-sampling paths at extreme gaps (a helper, 2026-12-06): the PyTorch paths' gradients where a
step's decay e^{Δτ Re Λ} underflows towards 0 (gaps of 1e3-1e5 periods).

Found: :func:`ssmkit.ops.irregular.zoh_exp_parts` wrote Re(e^z − 1) as expm1(x) cos y − 2 sin²(y/2) everywhere, whose
autograd derivative in y, −expm1(x) sin y − sin y, cancels to ~1e-16 absolute where the true −e^x sin y is ~1e-77;
and :func:`ssmkit.ops.irregular.irregular_discretize` formed Δτ g(z) as Δτ · (e^z − 1)/z, whose derivative in Δτ is
two terms of size 1/|z| cancelling to e^z. The gradients of the gaps and of Δ of S4D, DSS, S5 and LRU by the
``"reference"`` and ``"chunked"`` paths were then 1e-18-1e-13 where the C kernels (exact) gave 1e-77-1e-32.

References here are closed forms in numpy float64 (d/dτ of one ZOH step), independent of ssmkit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
from ssmkit.ops.irregular import irregular_discretize, zoh_exp_parts
from ssmkit.ops.irregular_bank import bank_irregular_scan
from tests.conftest import DEVICE


def test_zoh_exp_parts_derivatives_are_exact_to_their_own_size_at_fast_decay():
    x = torch.tensor([-200.0, -40.0, -1.5, -0.5, -1e-6], dtype=torch.float64, device=DEVICE, requires_grad=True)
    y = torch.tensor([3.0, -20.0, 0.7, 2.0, 1e-6], dtype=torch.float64, device=DEVICE, requires_grad=True)
    _, _, E_re = zoh_exp_parts(x, y)
    g_x, g_y = torch.autograd.grad(E_re.sum(), (x, y))
    xn, yn = x.detach().cpu().numpy(), y.detach().cpu().numpy()
    want_x, want_y = np.exp(xn) * np.cos(yn), -np.exp(xn) * np.sin(yn)  # d/dx, d/dy of e^x cos y − 1
    assert np.abs(g_x.cpu().numpy() / want_x - 1).max() < 1e-13
    assert np.abs(g_y.cpu().numpy() / want_y - 1).max() < 1e-12
    value = np.expm1(xn) * np.cos(yn) - 2 * np.sin(yn / 2) ** 2
    assert np.abs(E_re.detach().cpu().numpy() - value).max() < 1e-15


def test_irregular_discretize_gain_derivative_in_the_gap_is_e_to_the_z():
    Lam = torch.tensor([-0.5 + 20j, -2.0 + 0.3j, -1e-4 + 1j], dtype=torch.complex128, device=DEVICE)
    dt = torch.tensor([1e-3, 0.01, 0.01], dtype=torch.float64, device=DEVICE)
    tau = torch.tensor([[1e5, 2e3, 3.0]], dtype=torch.float64, device=DEVICE, requires_grad=True)
    _, gain = irregular_discretize(Lam, dt, tau[0], "zoh")  # (3 gaps, 3 modes)
    diag = torch.arange(3, device=DEVICE)
    g = gain[diag, diag]  # step i's gain of mode i: (e^{Δ_i τ_i Λ_i} − 1)/Λ_i
    w = torch.tensor([1.0 + 2.0j, -0.5 + 0.25j, 2.0 - 1.0j], dtype=torch.complex128, device=DEVICE)
    (g_tau,) = torch.autograd.grad((g * w).real.sum(), tau)
    Ln, dn, tn = Lam.cpu().numpy(), dt.cpu().numpy(), tau.detach().cpu().numpy()[0]
    want = (dn * np.exp(dn * tn * Ln) * w.cpu().numpy()).real  # d/dτ Re(w (e^{Δτ Λ} − 1)/Λ) = Re(w Δ e^{ΔτΛ})
    assert np.abs(g_tau.cpu().numpy()[0] / want - 1).max() < 1e-12


def _one_step_gradients(backend: str, tau: float):
    """d y_0/dτ_0 and d y_0/dΔ of a one-channel, one-mode bank after one step from x0 by ``backend``."""
    f64, c128 = torch.float64, torch.complex128
    Lam = torch.tensor([[-0.5 + 20.0j]], dtype=c128, device=DEVICE)
    B = torch.tensor([[0.8 - 0.3j]], dtype=c128, device=DEVICE)
    C = torch.tensor([[1.2 + 0.7j]], dtype=c128, device=DEVICE)
    x0 = torch.tensor([[[0.4 + 0.9j]]], dtype=c128, device=DEVICE)
    u = torch.tensor([[[1.5]]], dtype=f64, device=DEVICE)
    dt = torch.tensor([1.3e-3], dtype=f64, device=DEVICE, requires_grad=True)
    taus = torch.tensor([[tau]], dtype=f64, device=DEVICE, requires_grad=True)
    y, _ = bank_irregular_scan(u, Lam, B, C, dt, taus, None, "zoh", x0, backend=backend)
    g_tau, g_dt = torch.autograd.grad(y.sum(), (taus, dt))
    return float(g_tau), float(g_dt)


@pytest.mark.parametrize("backend", ["reference", "chunked", "native"])
@pytest.mark.parametrize("tau", [1e5, 3e4, 2.0])
def test_bank_gap_and_step_gradients_at_huge_gaps_match_the_closed_form(backend, tau):
    Lam, B, C, x0, u, dt = -0.5 + 20.0j, 0.8 - 0.3j, 1.2 + 0.7j, 0.4 + 0.9j, 1.5, 1.3e-3
    decay = np.exp(dt * tau * Lam)  # y = Re(C (e^z x0 + (e^z − 1)/Λ B u)), z = Δτ Λ
    want_tau = (C * dt * decay * (Lam * x0 + B * u)).real
    want_dt = (C * tau * decay * (Lam * x0 + B * u)).real
    g_tau, g_dt = _one_step_gradients(backend, tau)
    assert abs(g_tau / want_tau - 1) < 1e-10
    assert abs(g_dt / want_dt - 1) < 1e-10


@pytest.mark.parametrize("name, opts", [("s4d", {"d_state": 8}), ("s5", {"d_state": 8, "blocks": 2}),
                                        ("lru", {"d_state": 8})])
def test_layer_gradients_at_huge_gaps_agree_between_the_reference_path_and_the_default_path(name, opts):
    torch.manual_seed(0)
    layer = layers.build(name, d_model=3, device=DEVICE, dtype=torch.float64, **opts)
    x = torch.randn(2, 6, 3, dtype=torch.float64, device=DEVICE)
    tau = torch.tensor([[1e5, 1e3, 1.0, 1e5, 1e4, 2.0], [1e3] * 6], dtype=torch.float64, device=DEVICE)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = []
    for backend in ("reference", "auto"):
        t = tau.clone().requires_grad_(True)
        with layers_backend(backend):
            y, _ = layer(x, intervals=t)
        grads.append(torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype,
                                                             device=DEVICE).reshape(y.shape)).sum(),
                                         [t, *params], allow_unused=True))
    for ref, got in zip(*grads):
        if ref is None or got is None:
            assert ref is None and got is None
            continue
        assert torch.isfinite(ref).all() and torch.isfinite(got).all()
        # elementwise relative error: a gradient of size 1e-77 must not read 1e-18
        scale = torch.maximum(ref.abs(), got.abs()).clamp_min(1e-300)
        close = ((ref - got).abs() <= 1e-8 * scale) | ((ref - got).abs() <= 1e-300)
        assert bool(close.all()), float(((ref - got).abs() / scale).max())


def layers_backend(name: str):
    """The backend context of :mod:`ssmkit.ops.backend`."""
    from ssmkit.ops.backend import use_backend

    return use_backend(name)
