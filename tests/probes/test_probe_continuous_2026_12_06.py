"""New-user probe (2026-12-06, a control engineer with python-control and scipy.signal) of the continuous-time export:
``StateSpace.to_continuous`` / ``to_discrete``, the continuous bank's norms, Gramians and balanced truncation, and
``ContinuousWiener``, each result against an independent reference (closed forms, python-control's ``norm``, scipy's
``solve_continuous_lyapunov`` and ``freqresp``).

Found and fixed (each test below failed before its fix):

1. ``to_continuous("zoh", hold="sample")`` of a layer without a skip (D = 0) left D_c = D − C A⁻¹ B at a rounding
   residue (1e-18 .. 6e-17) instead of 0, so ``h2_norm`` (and python-control's ``norm(sys, 2)``, which tests D ≠ 0
   exactly) called the strictly proper layer's H2 norm infinite, for some systems of a bank and not others
   (``sampling.sample_hold_output`` now sets entries at the rounding level of that difference to 0).
2. ``hinf_norm`` / ``hinf_bounds`` of a continuous bank used the Tustin image at dt = 2 whatever the bank's time
   scale: a lightly damped pair at 10⁶ rad/s lay within 2e-9 of the unit circle there and the norm erred by 8e-8
   relative, outside its own "certified" bracket; a pair at 10⁻⁶ rad/s got a bracket 3e-3 wide. Each system is now
   mapped at dt = 2/ω₀, ω₀ the geometric mean of its smallest and largest |s|.
3. A zero-order-hold logarithm that failed for a far-from-normal A (S4's HiPPO matrix at some seeds) was refused as
   "the eigenvalue z = 0.038+0.163j on (or within rounding of) the negative real axis", which it is not; the refusal
   now says the logarithm is inaccurate and names the conditioning of A's eigenvector basis (and scipy's "logm result
   may be inaccurate" warning no longer precedes it).
4. A marginal system (Re s = 0 to rounding, e.g. the continuous image of an undamped rotation) that the eigenvalues
   called stable while its Schur form had Re T_ii = 0 got a NaN Gramian and H2 norm and, from ``hsvd``, numpy's "SVD
   did not converge"; now inf, or a ValueError naming the system (``reduction._solve_bounded``).

Cross-checks kept (new coverage): the Tustin export keeps the discrete H∞ norm at Ts = 1e-5 s; the continuous response
is in rad/s and is the discrete one at the warped frequency; a one-block model run with irregular ``intervals`` is its
``ContinuousWiener`` ODE integrated by scipy over each gap.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.signal
import torch

from ssmkit.analysis import StateSpace
from ssmkit.analysis.nonlinear import ContinuousWiener
from ssmkit.layers import build
from ssmkit.sysid.wiener import DeepWiener

control = pytest.importorskip("control")

DEVICE = torch.device(os.environ.get("SSMKIT_TEST_DEVICE", "cpu"))
TS = 0.05


def _layer_without_skip(name: str, options: dict, dtype: torch.dtype, seed: int):
    torch.manual_seed(seed)
    layer = build(name, d_model=3, **options).to(dtype)
    with torch.no_grad():
        layer.D.zero_()  # strictly proper: y_k = C x_k
    return layer


@pytest.mark.parametrize("name,options", [("s4d", {"d_state": 8}), ("dss", {"d_state": 8}), ("s5", {"d_state": 16}),
                                          ("lru", {"d_state": 8}), ("ema", {"d_state": 4})],
                         ids=["s4d", "dss", "s5", "lru", "ema"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_a_layer_without_a_skip_exports_d_zero_and_a_finite_h2_norm(name, options, dtype):
    """The layer's own continuous system (hold="sample") has D_c = D_paper = 0: exactly 0, and its H2 norm is
    python-control's ``norm(sys, 2)`` and √tr(C Wc Cᵀ) from scipy's Lyapunov solver (finite), for every system."""
    for seed in range(3):  # several draws: the residue was 0 for some systems and 1e-17 for others
        export = _layer_without_skip(name, options, dtype, seed).state_space()
        ct = StateSpace(export.A, export.B, export.C, export.D, dt=TS).to_continuous("zoh", hold="sample")
        assert np.all(ct.D == 0.0), np.abs(ct.D).max()
        h2 = ct.h2_norm()
        for g in range(ct.nsystems):
            A, B, C = ct.A[g], ct.B[g], ct.C[g]
            Wc = scipy.linalg.solve_continuous_lyapunov(A, -B @ B.T)
            np.testing.assert_allclose(h2[g], np.sqrt(np.trace(C @ Wc @ C.T)), rtol=1e-9)
            np.testing.assert_allclose(h2[g], control.norm(control.ss(A, B, C, ct.D[g]), p=2), rtol=1e-9)


def test_a_strictly_proper_system_with_an_ill_conditioned_a_keeps_d_zero():
    """The layer convention's C = C_p A, D = C_p B (D_paper = 0) with a far-from-normal A (eigenvector basis of
    condition 1e4, κ₁(A) up to 6e6): the cancellation D − C A⁻¹ B leaves residues up to κ₁(A) eps times the terms'
    size, above an n-eps level; hold="sample" still returns D_c = 0 exactly and C_c = C_p."""
    rng = np.random.default_rng(0)
    n, systems = 6, []
    for _ in range(4):
        Q1, Q2 = (np.linalg.qr(rng.standard_normal((n, n)))[0] for _ in range(2))
        V = Q1 @ np.diag(np.logspace(0, -4, n)) @ Q2  # (n, n) condition 1e4
        A = V @ np.diag(rng.uniform(0.3, 0.95, n)) @ np.linalg.inv(V)
        B, C_p = rng.standard_normal((n, 2)), rng.standard_normal((2, n))
        systems.append((A, B, C_p @ A, C_p @ B, C_p))
    bank = StateSpace(*(np.stack([s_[k] for s_ in systems]) for k in range(4)), dt=TS)
    ct = bank.to_continuous("zoh", hold="sample")
    assert np.all(ct.D == 0.0), np.abs(ct.D).max()
    for g, (_, _, _, _, C_p) in enumerate(systems):
        np.testing.assert_allclose(ct.C[g], C_p, rtol=0, atol=1e-8 * np.abs(C_p).max())


def test_a_genuine_small_feedthrough_is_kept_and_makes_the_h2_norm_infinite():
    """The rounding cut takes residues only: a skip of 1e-6 stays (to 1e-9 relative) and H2 stays inf, as
    python-control says; the layer's own D comes back for a skip of order 1."""
    torch.manual_seed(0)
    layer = build("s4d", d_model=2, d_state=8).double()
    for skip in (1e-6, 0.7):
        with torch.no_grad():
            layer.D.fill_(skip)
        export = layer.state_space()
        ct = StateSpace(export.A, export.B, export.C, export.D, dt=TS).to_continuous("zoh", hold="sample")
        np.testing.assert_allclose(ct.D[:, 0, 0], skip, rtol=1e-9)
        assert np.isinf(ct.h2_norm()).all()
        with pytest.warns(UserWarning, match="direct feedthrough"):  # python-control says why
            assert np.isinf(control.norm(control.ss(ct.A[0], ct.B[0], ct.C[0], ct.D[0]), p=2))


def _resonance(wn: float, zeta: float) -> tuple[np.ndarray, ...]:
    """A unit-DC-gain second-order resonance in modal form, A = [[σ, ω_d], [−ω_d, σ]], σ = −ζ ω_n: its H∞ norm is
    1 / (2 ζ √(1 − ζ²)) (ζ < 1/√2)."""
    wd, sigma = wn * np.sqrt(1 - zeta**2), -zeta * wn
    A = np.array([[sigma, wd], [-wd, sigma]])
    B = np.array([[0.0], [1.0]])
    C = np.array([[1.0, 0.0]])
    C = C / (C @ np.linalg.solve(-A, B))[0, 0]
    return A, B, C, np.zeros((1, 1))


def test_continuous_hinf_norm_and_bracket_of_resonances_at_any_frequency_scale():
    """One bank of four resonances from 10⁻⁶ to 10⁶ rad/s: each norm within 1e-9 of the closed form, inside its
    certified bracket, and the bracket no wider than 1e-8 (before: 8e-8 off and outside the bracket at 10⁶ rad/s;
    bracket 3e-3 wide at 10⁻⁶ rad/s)."""
    cases = [(1e-6, 1e-3), (1e-6, 1e-2), (1e6, 1e-3), (1e6, 1e-2)]
    mats = [_resonance(wn, zeta) for wn, zeta in cases]
    bank = StateSpace.from_continuous(*(np.stack([m[k] for m in mats]) for k in range(4)))
    exact = np.array([1 / (2 * zeta * np.sqrt(1 - zeta**2)) for _, zeta in cases])
    np.testing.assert_allclose(bank.hinf_norm(), exact, rtol=1e-9)
    np.testing.assert_allclose(bank.hinf_norm("grid"), exact, rtol=1e-9)
    bounds = bank.hinf_bounds(1e-10)
    inside = np.all(bounds[:, 0] <= exact * (1 + 1e-12)) and np.all(exact <= bounds[:, 1] * (1 + 1e-12))
    assert inside, bounds / exact[:, None]
    assert np.all(bounds[:, 1] / bounds[:, 0] - 1 <= 1e-8), bounds


def test_the_bilinear_export_keeps_the_discrete_hinf_norm_at_a_fast_sampling_time():
    """Tustin keeps the H∞ norm: a layer exported at Ts = 1e-5 s (poles up to ~3e5 rad/s) and taken to continuous
    time by ``"bilinear"`` has the discrete bank's norm, which is independent of Ts."""
    torch.manual_seed(0)
    export = build("s5", d_model=2, d_state=16).double().state_space()
    discrete = StateSpace(export.A, export.B, export.C, export.D, dt=1.0).hinf_norm()
    ct = StateSpace(export.A, export.B, export.C, export.D, dt=1e-5).to_continuous("bilinear")
    np.testing.assert_allclose(ct.hinf_norm(), discrete, rtol=1e-10)


def test_the_bilinear_export_is_the_discrete_response_at_the_warped_frequency_in_rad_per_s():
    """Units: the continuous export's ``frequency_response(ω)`` is in rad/s (scipy's ``freqresp`` of ``to_scipy()``)
    and equals the sampled layer's response at the Tustin-warped ω_d = (2/Ts) arctan(ω Ts/2), also in rad/s."""
    torch.manual_seed(1)
    export = build("dlr", d_model=2, d_state=8).double().state_space()
    ts = 0.02
    system = StateSpace(export.A, export.B, export.C, export.D, dt=ts)
    ct = system.to_continuous("bilinear")
    omega = np.array([0.1, 3.0, 40.0, 400.0, 5e3])  # rad/s, some past the Nyquist frequency π/Ts ≈ 157
    warped = (2 / ts) * np.arctan(omega * ts / 2)
    np.testing.assert_allclose(ct.frequency_response(omega), system.frequency_response(warped), rtol=1e-10)
    for g, lti in enumerate(ct.to_scipy()):
        _, response = scipy.signal.freqresp(lti, omega)
        np.testing.assert_allclose(ct.frequency_response(omega)[g, 0, 0], response, rtol=1e-8)  # scipy: via tf


def test_a_far_from_normal_matrix_is_refused_for_its_conditioning_not_a_negative_eigenvalue():
    """Eigenvalues 0.2 .. 0.9 (none near the negative axis) with off-diagonal entries of 100: the logarithm misses,
    and the refusal says so (and names the eigenvector basis's condition number), with no scipy warning first;
    the Tustin inverse converts it."""
    import warnings

    n = 8
    A = np.diag(np.linspace(0.2, 0.9, n)) + np.triu(np.full((n, n), 100.0), 1)
    system = StateSpace(A[None], np.ones((1, n, 1)), np.ones((1, 1, n)), np.zeros((1, 1, 1)), dt=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"logarithm of system 0 is inaccurate .* no eigenvalue on the negative "
                                             r"real axis: A is far from normal .*condition number") as err:
            system.to_continuous()
    assert "eigenvalue z =" not in str(err.value)
    ct = system.to_continuous("bilinear")  # as the message says (no logarithm)
    np.testing.assert_allclose(np.sort(ct.poles()[0].real), np.sort((2 / 0.1) * (np.diag(A) - 1) / (np.diag(A) + 1)),
                               rtol=1e-6)  # s = (2/dt)(z − 1)/(z + 1) of the diagonal (ill-conditioned: 1e-6)


def test_a_marginal_system_gets_no_nan_gramian_and_no_svd_failure():
    """The continuous image of an undamped discrete rotation (|z| = 1) has Re s = 0 only to rounding: LAPACK's
    eigenvalues may call it stable while its complex Schur form has Re T_ii = 0 exactly (here at θ = 1.3, 1.9, 2.4,
    2.5), where the Lyapunov solve divided by 0. Whatever the rounding, the H2 norm is a number or inf (it was NaN),
    and the Gramians and Hankel values are finite or refused with a ValueError naming the system (they were NaN, and
    ``hsvd`` raised numpy's "SVD did not converge")."""
    for theta in np.linspace(0.1, 3.1, 31):
        R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        system = StateSpace(R[None], np.array([[[1.0], [0.5]]]), np.array([[[1.0, 0.3]]]), np.zeros((1, 1, 1)), dt=0.1)
        ct = system.to_continuous()
        assert not np.isnan(ct.h2_norm()).any(), theta
        for method in (lambda: ct.gram("c"), lambda: ct.gram("o"), ct.hsvd, lambda: ct.balred(1)):
            try:
                result = method()
            except ValueError as err:
                assert "system 0" in str(err) and ("imaginary axis" in str(err) or "Re s < 0" in str(err)), str(err)
                continue
            matrices = (result.A, result.B, result.C) if isinstance(result, StateSpace) else (result,)
            assert all(np.isfinite(M).all() for M in matrices), theta


@pytest.mark.parametrize("layer,options", [("dlr", {"d_state": 4}), ("lru", {"d_state": 4}), ("s5", {"d_state": 16})],
                         ids=["dlr", "lru", "s5"])
def test_irregular_intervals_of_a_one_block_model_are_its_continuous_ode_held_over_each_gap(layer, options):
    """Two features against each other: ``model(u, intervals=)`` (each block's continuous system sampled at the
    gaps) and the ``ContinuousWiener`` ODE (from the block's export at the regular Ts) integrated by scipy's
    ``solve_ivp`` with u_k held over each gap of (t_k − t_{k−1}) = Δ_k Ts: the same outputs (DLR's modes at the
    Nyquist frequency included); the gaps matter (the regular forward differs)."""
    torch.manual_seed(0)
    model = DeepWiener(2, 1, d_model=3, n_layers=1, layer=layer, layer_options=options, dt=TS).double().to(DEVICE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    flow = ContinuousWiener(model)  # float64 on the CPU
    u = torch.randn(1, 10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gaps = torch.tensor(np.random.default_rng(0).uniform(0.3, 2.5, 10))[None]  # (1, L) in units of Ts
    with torch.no_grad():
        y = model(u.to(DEVICE), intervals=gaps.to(DEVICE))[0][0].cpu().numpy()
        regular = model(u.to(DEVICE))[0][0].cpu().numpy()
    x, ode = np.zeros(flow.n_states), []
    for u_k, gap in zip(u[0].numpy(), gaps[0].numpy()):
        solution = scipy.integrate.solve_ivp(lambda t, x_: flow.derivative(x_, u_k)[0], (0.0, gap * TS), x,
                                             method="DOP853", rtol=1e-11, atol=1e-13)
        x = solution.y[:, -1]
        ode.append(flow.output(x, u_k)[0])
    np.testing.assert_allclose(np.array(ode), y, rtol=0, atol=1e-9)
    assert np.abs(regular - y).max() > 1e-3
