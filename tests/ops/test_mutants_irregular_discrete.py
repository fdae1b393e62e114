"""ssmkit.ops.irregular_discrete under mutation: tests that kill the mutants the other tests let live (each test's
docstring names them), against numpy closed forms, Taylor series and a float64 loop.

The mutants: D12 (a value that cannot be read outside a functorch transform is skipped instead of raised), D18 (the
hold ratio as exp(log(−num) − log(−den)): equal values, NaN gradients at log a = 0), D31 (the scan backends without
the argument checks), D34 (√ instead of the clipped-gradient √ of the RG-LRU's normalisation) and D35 (the chunked
recurrence not given the gates' logs: float32 chunk products of gates near 1 biased low)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
from ssmkit.ops.irregular_discrete import check_no_unit_mode, hold_ratio, rglru_irregular
from ssmkit.ops.rglru import MAX_SQRT_GRADIENT
from tests.conftest import DEVICE, runnable_backends

BACKENDS = ("auto", *runnable_backends(layers.layer_class("rglru")))  # the op's: reference, chunked, native


def _ratio_derivatives(log_a: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """∂/∂log a and ∂/∂τ of r = (e^{τl} − 1)/(e^l − 1): the quotient rule where |l| > 1e-3, the Taylor series
    r = τ + τ(τ − 1)/2 l + τ(τ − 1)(2τ − 1)/12 l² + O(l³) near l = 0, 0 at l = −inf."""
    d_l, d_tau = np.zeros_like(log_a), np.zeros_like(log_a)
    big = np.isfinite(log_a) & (np.abs(log_a) > 1e-3)
    lb, tb = log_a[big], tau[big]
    d_l[big] = (tb * np.exp(tb * lb) * np.expm1(lb) - np.expm1(tb * lb) * np.exp(lb)) / np.expm1(lb) ** 2
    d_tau[big] = lb * np.exp(tb * lb) / np.expm1(lb)
    small = np.abs(log_a) <= 1e-3
    ls, ts = log_a[small], tau[small]
    d_l[small] = ts * (ts - 1) / 2 + ts * (ts - 1) * (2 * ts - 1) / 6 * ls
    d_tau[small] = 1 + (2 * ts - 1) / 2 * ls + (6 * ts ** 2 - 6 * ts + 1) / 12 * ls ** 2
    return d_l, d_tau


def test_hold_ratio_gradients_are_the_closed_forms_with_their_limits():
    """Kills D18 (NaN gradients at log a = 0) and checks the derivatives at the two limits: τ(τ − 1)/2 and 1 at
    log a = 0, 0 and 0 at log a = −inf, the quotient rule elsewhere."""
    log_a = -np.concatenate([[0.0, 1e-7, 1e-4], np.logspace(-2, np.log10(40), 12), [np.inf]])  # (16,)
    tau = np.linspace(0.1, 3.0, log_a.size)
    want_l, want_tau = _ratio_derivatives(log_a, tau)
    la = torch.tensor(log_a, device=DEVICE, requires_grad=True)
    ta = torch.tensor(tau, device=DEVICE, requires_grad=True)
    g_l, g_tau = (g.cpu().numpy() for g in torch.autograd.grad(hold_ratio(la, ta).sum(), [la, ta]))
    assert np.isfinite(g_l).all() and np.isfinite(g_tau).all()
    # autograd's quotient rule near l = 0 cancels to ~eps/|l| (1e-9 at l = −1e-7); the limits themselves are exact
    np.testing.assert_allclose(g_l, want_l, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(g_tau, want_tau, rtol=1e-8, atol=1e-12)
    assert g_l[0] == tau[0] * (tau[0] - 1) / 2 and g_tau[0] == 1.0 and g_l[-1] == 0.0 and g_tau[-1] == 0.0


def test_a_log_eigenvalue_that_cannot_be_read_outside_a_transform_is_not_skipped():
    """Kills D12: outside torch.func transforms a tensor whose values cannot be read (a meta tensor) raises, as the
    check cannot be made; only vmap's batched values are skipped (the docstring's contract)."""
    with pytest.raises(RuntimeError, match="meta"):
        check_no_unit_mode(torch.zeros(3, dtype=torch.complex64, device="meta"), "X")

    def f(z):
        check_no_unit_mode(z, "X")
        return z.real.sum()

    out = torch.vmap(f)(torch.zeros(2, 3, dtype=torch.complex64))  # batched values: not checked, no error
    assert torch.equal(out, torch.zeros(2))


def test_every_backend_refuses_malformed_gates():
    """Kills D31: the chunked and native paths check their arguments as the reference loop does (Λ of the wrong
    length would broadcast silently over the channels otherwise)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64).to(DEVICE)
    r, i = torch.sigmoid(x), torch.sigmoid(-x)
    tau = torch.ones(2, 5, dtype=torch.float64, device=DEVICE)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"Lambda must be \(H,\) = \(3,\)"):
            rglru_irregular(x, r, i, torch.ones(1, dtype=torch.float64, device=DEVICE), 8.0, tau, backend=backend)
        with pytest.raises(ValueError, match="r must have x's shape"):
            rglru_irregular(x, r[:, :, :1], i, torch.ones(3, dtype=torch.float64, device=DEVICE), 8.0, tau,
                            backend=backend)


def test_the_normalisation_gradient_is_clipped_for_a_gate_near_one():
    """Kills D34: d√v/dv = min(1/(2√v), G), G = 1000 (recurrentgemma), in ∂h/∂r of one step h = √(1 − a²) ·
    (a^τ − 1)/(a − 1) · i x at a gap τ, log a = −c r softplus(−Λ); channel 0 has 1 − a² ≈ 1.6e-8 (clipped: 1/(2√v)
    ≈ 3.9e3), channel 1 a gate far from 1. The reference: numpy in float64, the hold ratio's slope by its series."""
    c, lam, r, i, x, tau = 8.0, np.array([20.0, 2.0]), np.array([0.5, 0.7]), np.array([0.6, 0.4]), \
        np.array([1.3, -0.8]), 2.5
    sp = np.log1p(np.exp(-lam))
    log_a = -c * r * sp
    v = -np.expm1(2 * log_a)
    ratio = np.expm1(tau * log_a) / np.expm1(log_a)
    d_ratio, _ = _ratio_derivatives(log_a, np.full(2, tau))
    d_sqrt = np.minimum(1 / (2 * np.sqrt(v)), MAX_SQRT_GRADIENT)
    d_log_a = d_sqrt * (-2 * np.exp(2 * log_a)) * ratio + np.sqrt(v) * d_ratio
    want = d_log_a * (-c * sp) * i * x  # ∂h/∂r
    assert 1 / (2 * np.sqrt(v[0])) > 3 * MAX_SQRT_GRADIENT  # the clip is active in channel 0
    for backend in BACKENDS:
        rt = torch.tensor(r, device=DEVICE).view(1, 1, 2).requires_grad_()
        h, _ = rglru_irregular(torch.tensor(x, device=DEVICE).view(1, 1, 2), rt, torch.tensor(i, device=DEVICE).view(1, 1, 2),
                               torch.tensor(lam, device=DEVICE), c, torch.full((1, 1), tau, dtype=torch.float64,
                                                                               device=DEVICE), backend=backend)
        got = torch.autograd.grad(h.sum(), rt)[0].view(2).cpu().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=backend)


def test_float32_gates_near_one_over_long_gaps_follow_a_float64_loop():
    """Kills D35: the chunked recurrence takes the chunk products as exp(Σ log a_t^τ) from the logs the RG-LRU forms
    (a float32 product of gates near 1 loses each factor's second-order term: ~1e-5 of the output at L = 4 096);
    σ(Λ) in [0.99999, 0.999999], gaps U[0.2, 3], against a float64 loop on the same float32 inputs."""
    g = np.random.default_rng(0)
    Bn, L, H = 1, 4096, 8
    sig = np.linspace(0.99999, 0.999999, H)
    lam = np.log(sig / (1 - sig))
    x = g.standard_normal((Bn, L, H))
    r, i = 1 / (1 + np.exp(-g.standard_normal((Bn, L, H)))), 1 / (1 + np.exp(-g.standard_normal((Bn, L, H))))
    tau = g.uniform(0.2, 3.0, (Bn, L))
    args = [torch.tensor(a, dtype=torch.float32, device=DEVICE) for a in (x, r, i, lam, tau)]
    x64, r64, i64, lam64, tau64 = (a.double().cpu().numpy() for a in args)  # the float32 inputs, exactly
    log_a = -8.0 * r64 * np.log1p(np.exp(-lam64))
    decay = np.exp(log_a * tau64[..., None])
    b = np.expm1(log_a * tau64[..., None]) / np.expm1(log_a) * np.sqrt(-np.expm1(2 * log_a)) * i64 * x64
    want, s = np.empty_like(x64), np.zeros((Bn, H))
    for t in range(L):
        s = decay[:, t] * s + b[:, t]
        want[:, t] = s
    h, _ = rglru_irregular(*args[:4], 8.0, args[4], backend="chunked")
    err = np.abs(h.double().cpu().numpy() - want).max() / np.abs(want).max()
    assert err < 2e-6, err  # 5e-7 with the logs; 9.5e-6 with the float32 products


@pytest.mark.parametrize("backend", ["reference", "chunked", "native"])
def test_rglru_irregular_refuses_intervals_of_another_shape(backend):
    """Reported by the probe: an (L,) tensor of intervals broadcast over the batch on the scan paths (the reference
    loop indexed [:, t] and failed); every backend now asks for (B, L) and for values > 0."""
    B, L, H = 2, 5, 3
    g = torch.Generator().manual_seed(0)
    x, r, i = (torch.rand(B, L, H, generator=g) for _ in range(3))
    lam = torch.randn(H, generator=g)
    for bad, match in ((torch.ones(L), r"shape \(2, 5\); got shape \(5,\)"), (-torch.ones(B, L), "finite and > 0")):
        with pytest.raises(ValueError, match=match):
            rglru_irregular(x, r, i, lam, 8.0, bad, backend=backend)
