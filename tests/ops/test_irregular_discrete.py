"""ssmkit.ops.irregular_discrete: the branch of the logarithm, the hold ratio and the RG-LRU (arXiv 2402.19427) at
irregular times, against hand values, numpy closed forms and the regular RG-LRU op."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.ops.irregular_discrete import (
    BRANCH_CUT,
    check_no_unit_mode,
    hold_ratio,
    principal_angle,
    rglru_irregular,
    rglru_irregular_reference,
    rglru_irregular_step,
)
from ssmkit.ops.rglru import rglru
from tests.conftest import DEVICE, rel_err, runnable_backends

B, L, H = 2, 13, 3
BACKENDS = ("auto", *runnable_backends(layers.layer_class("rglru")))  # the op's: reference, chunked, native


def _randn(*shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)


def _gaps(*shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.05 + 2.95 * torch.rand(*shape, generator=g, dtype=torch.float64)).to(DEVICE)


def test_principal_angle_by_hand_and_its_derivative_is_one():
    phase = torch.tensor([0.0, 1.0, -1.0, math.pi, -math.pi, 1.5 * math.pi, -1.5 * math.pi, 7.0, 3 * math.pi,
                          -40.0], dtype=torch.float64, device=DEVICE, requires_grad=True)
    want = [0.0, 1.0, -1.0, math.pi, math.pi, -0.5 * math.pi, 0.5 * math.pi, 7.0 - 2 * math.pi, math.pi,
            -40.0 + 6 * 2 * math.pi]
    got = principal_angle(phase)
    assert np.abs(got.detach().cpu().numpy() - want).max() < 1e-14
    assert torch.equal(torch.autograd.grad(got.sum(), phase)[0], torch.ones_like(phase))
    # π in single precision (π + 8.7e-8) and double (π − 1.2e-16) both read +π: one continuous system for both
    for dtype in (torch.float32, torch.float64):
        assert abs(principal_angle(torch.tensor(math.pi, dtype=dtype)).item() - math.pi) < 1e-7
    assert principal_angle(torch.tensor(BRANCH_CUT + 1e-9, dtype=torch.float64)).item() < -3.14


def test_hold_ratio_is_the_closed_form_with_its_limits():
    """(a^τ − 1)/(a − 1) for log a from −50 to −1e-12, and its limits τ at log a = 0 and 1 at log a = −inf."""
    log_a = -np.concatenate([np.logspace(-12, np.log10(50), 30), [0.0, np.inf]])  # (32,)
    tau = np.linspace(0.05, 3.0, 32)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = np.expm1(tau * log_a) / np.expm1(log_a)
    want[-2], want[-1] = tau[-2], 1.0
    got = hold_ratio(torch.tensor(log_a, device=DEVICE), torch.tensor(tau, device=DEVICE)).cpu().numpy()
    assert np.abs(got - want).max() < 1e-14 * np.abs(want).max()


def test_a_mode_at_one_is_refused():
    check_no_unit_mode(torch.tensor([-1e-300 + 0j, 1e-300j], dtype=torch.complex128, device=DEVICE), "X")  # tiny: fine
    with pytest.raises(ValueError, match="X has a mode with eigenvalue exactly 1"):
        check_no_unit_mode(torch.tensor([-1.0 + 2j, 0j], device=DEVICE), "X")


def _gates(dtype=torch.float64, length: int = L):
    x = _randn(B, length, H, seed=1, dtype=dtype)
    r = torch.sigmoid(_randn(B, length, H, seed=2, dtype=dtype))
    i = torch.sigmoid(_randn(B, length, H, seed=3, dtype=dtype))
    Lambda = (torch.tensor([2.0, 4.0, 7.0], dtype=torch.float64) + 0.1 * _randn(H, seed=4).cpu()).to(DEVICE, dtype)
    return x, r, i, Lambda


def test_rglru_irregular_is_the_per_step_closed_form_in_numpy():
    """h_t = a^τ h + (a^τ − 1)/(a − 1) √(1 − a²) i x with a = σ(Λ)^{c r_t}, from a state, with a reset."""
    x, r, i, Lambda = _gates()
    tau, h0 = _gaps(B, L, seed=5), _randn(B, H, seed=6)
    resets = torch.zeros(B, L, dtype=torch.bool, device=DEVICE)
    resets[0, 6] = True
    h, h_last = rglru_irregular(x, r, i, Lambda, 8.0, tau, h0, resets, backend="reference")
    xs, rs, is_, lam, taus, hs = (t.cpu().numpy() for t in (x, r, i, Lambda, tau, h0))
    state = hs.copy()
    for t in range(L):
        a = (1 / (1 + np.exp(-lam))) ** (8.0 * rs[:, t])  # (B, H)
        decay = a ** taus[:, t, None]
        gain = (1 - decay) / (1 - a) * np.sqrt(1 - a ** 2)
        start = resets[:, t, None].cpu().numpy()
        state = np.where(start, 0.0, decay) * state + np.where(start, 1.0, gain) * is_[:, t] * xs[:, t]
        assert np.abs(h[:, t].cpu().numpy() - state).max() < 1e-14
    assert torch.equal(h_last, h[:, -1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rglru_irregular_backends_equal_the_loop_and_unit_gaps_the_regular_op(dtype):
    x, r, i, Lambda = _gates(dtype, length=150)  # several chunks of the chunked recurrence
    tau, h0 = _gaps(B, 150, seed=7).to(dtype), _randn(B, H, seed=8, dtype=dtype)
    resets = torch.zeros(B, 150, dtype=torch.bool, device=DEVICE)
    resets[1, 70] = True
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    ref = rglru_irregular_reference(x, r, i, Lambda, 8.0, tau, h0, resets)
    for backend in BACKENDS:
        got = rglru_irregular(x, r, i, Lambda, 8.0, tau, h0, resets, backend=backend)
        assert rel_err(got[0], ref[0]) < tol and rel_err(got[1], ref[1]) < tol, backend
        ones = torch.ones_like(tau)
        unit = rglru_irregular(x, r, i, Lambda, 8.0, ones, h0, resets, backend=backend)
        regular = rglru(x, r, i, Lambda, 8.0, h0, resets, backend="reference")
        assert rel_err(unit[0], regular[0]) < tol and rel_err(unit[1], regular[1]) < tol, backend
    h = h0
    for t in range(150):
        h = rglru_irregular_step(x[:, t], r[:, t], i[:, t], Lambda, 8.0, tau[:, t], h, resets[:, t])
        assert rel_err(h, ref[0][:, t]) < tol


def test_rglru_irregular_gradients_equal_the_loops_and_a_central_difference_in_a_gap():
    x, r, i, Lambda = (t.requires_grad_() for t in _gates(length=9))
    tau, h0 = _gaps(B, 9, seed=9).requires_grad_(), _randn(B, H, seed=10).requires_grad_()
    w = _randn(B, 9, H, seed=11)
    inputs = [x, r, i, Lambda, tau, h0]

    def loss(backend, t=tau):
        h, h_last = rglru_irregular(x, r, i, Lambda, 8.0, t, h0, backend=backend)
        return (h * w).sum() + h_last.square().sum()

    want = torch.autograd.grad(loss("reference"), inputs)
    for backend in BACKENDS:
        for g, g_ref in zip(torch.autograd.grad(loss(backend), inputs), want):
            assert rel_err(g, g_ref) < 1e-11, backend
    eps, bump = 1e-6, torch.zeros_like(tau)
    bump[1, 4] = eps
    with torch.no_grad():
        fd = (loss("chunked", tau + bump) - loss("chunked", tau - bump)).item() / (2 * eps)
    assert abs(want[4][1, 4].item() - fd) < 1e-7 * max(1.0, abs(fd))


def test_rglru_irregular_refuses_fft():
    x, r, i, Lambda = _gates()
    with pytest.raises(RuntimeError, match="'fft' was forced.*only the backends"):
        with ops.use_backend("fft"):
            rglru_irregular(x, r, i, Lambda, 8.0, _gaps(B, L, seed=12))
