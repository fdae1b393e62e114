"""Continuous-time export of StateSpace banks and deep Wiener models (``to_continuous``, ``to_discrete``,
``from_continuous``, ``ContinuousWiener``), against independent references: scipy's ``cont2discrete`` and ``lsim``,
python-control's ``forced_response``, ``input_output_response``, ``sample`` and ``linearize``, closed forms, and the
layers' own continuous systems (``layer.continuous()``).

Output timing, as the tests below encode it. The control convention (``hold="previous"``, scipy's ``lsim(...,
interp=False)``): u_k is held over [t_k, t_{k+1}) and y_k = y(t_k) = C_c x(t_k) + D_c u_k reads the exported state
*before* u_k's interval. A layer reads the state *after* u_k's interval: with the layer's own continuous system (Λ, B,
C, D), which ``to_continuous(hold="sample")`` returns, y_k = C x(t_{k+1}) + D u_k when u_k is held over
[t_k, t_{k+1}); C x(t_k) + D u_k is off by O(1) (``test_lsim_of_the_continuous_export_is_the_layer``).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.signal
import torch

from ssmkit.analysis import StateSpace
from ssmkit.analysis.nonlinear import ContinuousWiener, NonlinearSystem
from ssmkit.layers import build
from ssmkit.layers.protocol import complex_pairs
from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.wiener import DeepWiener

F64 = torch.float64
TS = 0.25  # a sampling time other than 1, so that a missing 1/dt shows
LAYERS = [("s4d", {"d_state": 8}), ("s5", {"d_state": 16}), ("dss", {"d_state": 8}), ("dlr", {"d_state": 8}),
          ("lru", {"d_state": 8}), ("ema", {"d_state": 4})]


def _layer(name: str, options: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build(name, d_model=3, **options).double()


def _export(layer, dt: float = TS) -> StateSpace:
    """The layer's discrete system re-exported at ``dt`` seconds (a DeepWiener's ``state_space`` does the same)."""
    ss = layer.state_space()
    return StateSpace(ss.A, ss.B, ss.C, ss.D, dt=dt)


def _expected_poles(layer, system: StateSpace) -> list[np.ndarray]:
    """Per system: the layer's continuous eigenvalues Δ·Λ (nominal time), with their conjugates for a realisation
    of conjugate pairs, on the principal branch (|Im| <= π: what a sampled system can say), over ``system.dt``."""
    Lambda, _, step = (t.detach().numpy() for t in layer.continuous())
    z = Lambda * (step[:, None] if Lambda.ndim == 2 else step)  # (H, M) or (M,)
    rows = list(z) if z.ndim == 2 else [z]
    out = []
    for z_g in rows:
        modes = z_g if z_g.size == system.nstates else np.concatenate([z_g, z_g.conj()])
        wrapped = modes.real + 1j * np.angle(np.exp(1j * modes.imag))
        out.append(wrapped / system.dt)
    return out


def _assert_same_set(got: np.ndarray, want: np.ndarray, atol: float) -> None:
    assert got.shape == want.shape
    cost = np.abs(got[:, None] - want[None, :])
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    assert cost[rows, cols].max() <= atol, (np.sort_complex(got), np.sort_complex(want))


def _random_stable(rng, G=2, n=4, m=2, p=3, complex_=False) -> StateSpace:
    """G random Schur-stable systems (n even): complex A with eigenvalues of modulus 0.3-0.9, or real A similar to
    rotation blocks r [[cos θ, -sin θ], [sin θ, cos θ]] with 0 < θ < 0.9π (no eigenvalue on the negative real axis)."""
    mats = []
    for _ in range(G):
        T = rng.standard_normal((n, n)) + 2 * np.eye(n)  # (n, n) a random, invertible change of basis
        if complex_:
            A = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
            mats.append(A * 0.9 / np.abs(np.linalg.eigvals(A)).max())
            continue
        blocks = []
        for r, theta in zip(rng.uniform(0.3, 0.9, n // 2), rng.uniform(0.05, 0.9 * np.pi, n // 2)):
            blocks.append(r * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]))
        mats.append(T @ scipy.linalg.block_diag(*blocks) @ np.linalg.inv(T))

    def draw(*shape):
        return rng.standard_normal(shape) + (1j * rng.standard_normal(shape) if complex_ else 0)

    return StateSpace(np.stack(mats), draw(G, n, m), draw(G, p, n), draw(G, p, m), dt=0.1)


def _assert_systems_close(a: StateSpace, b: StateSpace, atol: float = 1e-10) -> None:
    for M, N in zip((a.A, a.B, a.C, a.D), (b.A, b.B, b.C, b.D)):
        np.testing.assert_allclose(M, N, rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------------------------------
# layers


@pytest.mark.parametrize("name,options", LAYERS, ids=[n for n, _ in LAYERS])
def test_layer_export_round_trips_through_scipy_cont2discrete(name, options):
    system = _export(_layer(name, options))
    ct = system.to_continuous()
    assert ct.is_continuous and ct.dt == 0.0 and ct.dtype == np.float64
    for g in range(system.nsystems):
        A, B, C, D, _ = scipy.signal.cont2discrete((ct.A[g], ct.B[g], ct.C[g], ct.D[g]), TS, "zoh")
        for M, N in zip((A, B, C, D), (system.A[g], system.B[g], system.C[g], system.D[g])):
            np.testing.assert_allclose(M, N, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name,options", LAYERS, ids=[n for n, _ in LAYERS])
def test_poles_are_the_layers_continuous_eigenvalues_over_dt(name, options):
    layer = _layer(name, options)
    system = _export(layer)
    poles = system.to_continuous().poles()
    for g, want in enumerate(_expected_poles(layer, system)):
        _assert_same_set(poles[g], want, atol=1e-9 / TS)
    # the other hold changes C and D only
    np.testing.assert_array_equal(system.to_continuous(hold="sample").A, system.to_continuous().A)


def test_bilinear_layer_poles_come_back_by_the_inverse_tustin_map():
    layer = _layer("s4d", {"d_state": 6, "discretization": "bilinear"})
    system = _export(layer)
    poles = system.to_continuous("bilinear").poles()
    for g, want in enumerate(_expected_poles(layer, system)):
        _assert_same_set(poles[g], want, atol=1e-9 / TS)


def test_hold_sample_gives_the_s4d_layers_own_continuous_system():
    """G(s) = Σ_n (C_n b_n/(s − z_n) + conj(C_n b_n)/(s − conj z_n)) / 2 + D with the layer's z = ΔΛ, b = ΔB and
    C = 2 C̃ (y = Re(C x) + D u), in nominal time: at Ts seconds G_Ts(jω) = G(jω Ts)."""
    layer = _layer("s4d", {"d_state": 8})
    Lambda, B, step = (t.detach().numpy() for t in layer.continuous())
    C = 2 * complex_pairs(layer.C)[0].detach().numpy()  # (H, M)
    D = layer.D.detach().numpy()  # (H,)
    z, b = Lambda * step[:, None], B * step[:, None]  # (H, M)
    omega = np.array([0.0, 0.3, 1.1, 4.0, 11.0])  # rad/s, below the Nyquist π/Ts
    s = 1j * omega * TS  # (W,)
    K = C * b  # (H, M)
    want = 0.5 * ((K[:, :, None] / (s - z[:, :, None])) + (K.conj()[:, :, None] / (s - z.conj()[:, :, None])))
    want = want.sum(1) + D[:, None]  # (H, W)
    got = _export(layer).to_continuous(hold="sample").frequency_response(omega)[:, 0, 0]  # (H, W)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,options", LAYERS, ids=[n for n, _ in LAYERS])
def test_lsim_of_the_continuous_export_is_the_layer(name, options):
    layer = _layer(name, options)
    system = _export(layer)
    L = 13
    u = torch.randn(1, L, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = layer(u)[0][0].numpy()  # (L, H)
    T = TS * np.arange(L + 1)  # one more sample: the state after the last input's interval
    U = np.concatenate([u[0].numpy(), np.zeros((1, 3))])  # (L + 1, H); the last row is never read
    m, p = system.ninputs, system.noutputs
    after = system.to_continuous()  # hold="previous": y_k = C x(t_k) + D u_k, u_k held over [t_k, t_{k+1})
    own = system.to_continuous(hold="sample")  # the layer's own (Λ, B, C, D)
    for g in range(system.nsystems):
        cols = slice(g * m, (g + 1) * m)
        rows = slice(g * p, (g + 1) * p)
        _, y_g, _ = scipy.signal.lsim(after.to_scipy()[g], U[:, cols], T, interp=False)
        np.testing.assert_allclose(y_g.reshape(L + 1, p)[:L], y[:, rows], rtol=0, atol=1e-10)
        _, _, x = scipy.signal.lsim(own.to_scipy()[g], U[:, cols], T, interp=False)  # x (L + 1, n)
        read_after = x[1:] @ own.C[g].T + U[:L, cols] @ own.D[g].T  # the state after u_k's interval
        read_before = x[:-1] @ own.C[g].T + U[:L, cols] @ own.D[g].T
        np.testing.assert_allclose(read_after, y[:, rows], rtol=0, atol=1e-10)
        assert np.abs(read_before - y[:, rows]).max() > 1e-3  # not the state before it


@pytest.mark.parametrize("name,options", [LAYERS[0], LAYERS[1]], ids=["s4d", "s5"])
def test_python_control_forced_response_of_the_continuous_system_is_the_layer(name, options):
    """python-control simulates its dt = 0 system interval by interval with the input constant over each (its
    linear interpolation is then exact): the output at each interval's start is the layer's."""
    control = pytest.importorskip("control")
    layer = _layer(name, options)
    systems = _export(layer).to_continuous().to_control()
    plant = control.append(*systems) if len(systems) > 1 else systems[0]
    assert plant.dt == 0 and control.isctime(plant, strict=True)
    u = torch.randn(1, 11, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = layer(u)[0][0].numpy()  # (L, H)
    x, outputs = np.zeros(plant.nstates), []
    for u_k in u[0].numpy():
        response = control.forced_response(plant, timepts=[0.0, TS], inputs=np.stack([u_k, u_k], 1), initial_state=x,
                                           return_states=True)
        outputs.append(response.outputs[:, 0])
        x = response.states[:, -1]
    np.testing.assert_allclose(np.array(outputs), y, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------------------------------
# round trips and closed forms


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_a_random_stable_mimo_bank_round_trips(method):
    system = _random_stable(np.random.default_rng(0))
    ct = system.to_continuous(method)
    _assert_systems_close(ct.to_discrete(system.dt, method), system)
    for g in range(system.nsystems):  # scipy's sampling of the continuous system is the bank
        sampled = scipy.signal.cont2discrete((ct.A[g], ct.B[g], ct.C[g], ct.D[g]), system.dt, method)
        for M, N in zip(sampled[:4], (system.A[g], system.B[g], system.C[g], system.D[g])):
            np.testing.assert_allclose(M, N, rtol=0, atol=1e-10)
    if method == "zoh":
        own = system.to_continuous(hold="sample")
        _assert_systems_close(own.to_discrete(system.dt, hold="sample"), system)


def test_python_control_sample_of_the_exported_continuous_system_is_the_bank():
    pytest.importorskip("control")
    system = _random_stable(np.random.default_rng(1), G=1)
    for method in ("zoh", "bilinear"):
        sampled = system.to_continuous(method).to_control()[0].sample(system.dt, method=method)
        for M, N in zip((sampled.A, sampled.B, sampled.C, sampled.D), (system.A[0], system.B[0], system.C[0],
                                                                       system.D[0])):
            np.testing.assert_allclose(M, N, rtol=0, atol=1e-10)


def test_scalar_closed_forms():
    """z = a: zoh gives a_c = ln(a)/dt, b_c = ln(a) b / ((a − 1) dt); Tustin a_c = (2/dt)(a − 1)/(a + 1),
    b_c = 2b/((a + 1) dt), c_c = 2c/(a + 1), d_c = d − c b/(a + 1)."""
    a, b, c, d, dt = 0.5, 1.5, -0.7, 0.2, 0.1
    system = StateSpace([[[a]]], [[[b]]], [[[c]]], [[[d]]], dt=dt)
    zoh = system.to_continuous()
    np.testing.assert_allclose([zoh.A[0, 0, 0], zoh.B[0, 0, 0], zoh.C[0, 0, 0], zoh.D[0, 0, 0]],
                               [np.log(a) / dt, np.log(a) * b / ((a - 1) * dt), c, d], rtol=1e-14)
    own = system.to_continuous(hold="sample")  # C A^{-1}, D − C A^{-1} B
    np.testing.assert_allclose([own.C[0, 0, 0], own.D[0, 0, 0]], [c / a, d - c * b / a], rtol=1e-14)
    tustin = system.to_continuous("bilinear")
    np.testing.assert_allclose([tustin.A[0, 0, 0], tustin.B[0, 0, 0], tustin.C[0, 0, 0], tustin.D[0, 0, 0]],
                               [2 / dt * (a - 1) / (a + 1), 2 * b / ((a + 1) * dt), 2 * c / (a + 1),
                                d - c * b / (a + 1)], rtol=1e-14)


def test_a_mode_at_the_nyquist_frequency_keeps_a_real_logarithm():
    """z = −r ± i0 (a real rotation by π; a float64 DLR's default modes): the real logarithm (log r ± iπ)/dt exists
    and is what comes back, A_c = (log r I ± π [[0, -1], [1, 0]])/dt, though logm alone gave both eigenvalues +iπ."""
    r, dt = 0.8, 0.5
    A = r * np.array([[np.cos(np.pi), -np.sin(np.pi)], [np.sin(np.pi), np.cos(np.pi)]])
    system = StateSpace(A[None], np.array([[[1.0], [0.3]]]), np.array([[[0.5, -1.0]]]), np.zeros((1, 1, 1)), dt=dt)
    ct = system.to_continuous()
    assert ct.dtype == np.float64
    np.testing.assert_allclose(np.diag(ct.A[0]), np.log(r) / dt, rtol=1e-13)
    np.testing.assert_allclose(abs(ct.A[0, 1, 0]), np.pi / dt, rtol=1e-13)
    np.testing.assert_allclose(ct.A[0, 0, 1], -ct.A[0, 1, 0], rtol=1e-13)
    sampled = scipy.signal.cont2discrete((ct.A[0], ct.B[0], ct.C[0], ct.D[0]), dt, "zoh")
    np.testing.assert_allclose(sampled[0], A, rtol=0, atol=1e-13)
    np.testing.assert_allclose(sampled[1], system.B[0], rtol=0, atol=1e-13)
    layer = build("dlr", d_model=3, d_state=8, dtype=F64)  # float64 from the start: arg λ = π exactly
    exported = _export(layer)
    assert np.isclose(np.abs(np.angle(np.linalg.eigvals(exported.A))).max(), np.pi, rtol=0, atol=1e-12)
    poles = exported.to_continuous().poles()
    for g, want in enumerate(_expected_poles(layer, exported)):
        _assert_same_set(poles[g], want, atol=1e-9 / TS)


def test_an_integrator_converts():
    """x[k+1] = x[k] + dt·k u[k] is ẋ = k u (eigenvalue z = 1, A_c = 0): the augmented logarithm needs no A_c^{-1}.
    With a stable mode beside it (a 2-state system) the round trip through scipy holds, and the DC gain is inf."""
    dt, gain = 0.2, 3.0
    integrator = StateSpace([[[1.0]]], [[[dt * gain]]], [[[1.0]]], [[[0.0]]], dt=dt).to_continuous()
    np.testing.assert_allclose([integrator.A[0, 0, 0], integrator.B[0, 0, 0]], [0.0, gain], atol=1e-14)
    np.testing.assert_allclose(integrator.to_discrete(dt).B, [[[dt * gain]]], rtol=1e-14)
    assert np.isinf(integrator.dcgain()).all()
    A = np.array([[1.0, 0.1], [0.0, 0.6]])
    system = StateSpace(A[None], np.array([[[0.3], [1.0]]]), np.array([[[1.0, -0.5]]]), np.zeros((1, 1, 1)), dt=dt)
    ct = system.to_continuous()
    _assert_same_set(ct.poles()[0], np.array([0.0, np.log(0.6) / dt]), atol=1e-12)
    sampled = scipy.signal.cont2discrete((ct.A[0], ct.B[0], ct.C[0], ct.D[0]), dt, "zoh")
    np.testing.assert_allclose(sampled[0], A, rtol=0, atol=1e-13)
    np.testing.assert_allclose(system.to_continuous("bilinear").to_discrete(dt, "bilinear").A[0], A, atol=1e-13)


# ------------------------------------------------------------------------------------------------------------------
# complex banks


def test_a_complex_bank_stays_complex_and_agrees_with_its_real_realisation():
    system = _random_stable(np.random.default_rng(3), G=2, n=3, m=1, p=2, complex_=True)
    ct = system.to_continuous()
    assert ct.is_complex and ct.is_continuous
    _assert_systems_close(ct.to_real(), system.to_real().to_continuous(), atol=1e-10)
    _assert_systems_close(ct.to_discrete(system.dt), system, atol=1e-10)
    omega = np.array([0.0, 1.0, 7.0])
    np.testing.assert_allclose(ct.frequency_response(omega), ct.to_real().frequency_response(omega), rtol=1e-10)
    np.testing.assert_allclose(ct.dcgain(), ct.to_real().dcgain(), rtol=1e-10)


def test_a_complex_bank_converts_a_negative_real_eigenvalue_that_its_real_realisation_cannot():
    """Complex mode z = −0.5: its real realisation has −0.5 twice (z and conj z), which the complex logarithm
    log 0.5 + iπ realises as a rotation at the Nyquist frequency; the real bank itself is refused."""
    A = np.array([[[-0.5, 0.2j], [0.0, 0.3 + 0.4j]]])
    system = StateSpace(A, np.array([[[1.0], [0.5j]]]), np.array([[[1.0, 1.0 - 1j]]]), np.zeros((1, 1, 1)), dt=0.5)
    ct = system.to_continuous()
    real = ct.to_real()
    sampled = scipy.signal.cont2discrete((real.A[0], real.B[0], real.C[0], real.D[0]), 0.5, "zoh")
    want = system.to_real()
    for M, N in zip(sampled[:4], (want.A[0], want.B[0], want.C[0], want.D[0])):
        np.testing.assert_allclose(M, N, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"system 0 has the eigenvalue z = -0\.5.*negative real axis"):
        system.to_real().to_continuous()


# ------------------------------------------------------------------------------------------------------------------
# refusals


def test_refusals_name_the_system_and_the_eigenvalue():
    A = np.stack([np.diag([0.9, 0.5]), np.diag([0.8, -0.5])])
    system = StateSpace(A, np.ones((2, 2, 1)), np.ones((2, 1, 2)), np.zeros((2, 1, 1)), dt=0.1)
    with pytest.raises(ValueError, match=r"to_continuous\('zoh'\): system 1 has the eigenvalue z = -0\.5 on .*negative "
                                         r"real axis"):
        system.to_continuous()
    system.to_continuous("bilinear")  # -0.5 is fine for Tustin
    delay = StateSpace(np.stack([np.diag([0.9, 0.0])]), np.ones((1, 2, 1)), np.ones((1, 1, 2)), np.zeros((1, 1, 1)))
    with pytest.raises(ValueError, match=r"system 0 has the eigenvalue z = 0, 0 to rounding \(a pure delay\)"):
        delay.to_continuous()
    A[1] = np.diag([0.8, -1.0])
    minus_one = StateSpace(A, np.ones((2, 2, 1)), np.ones((2, 1, 2)), np.zeros((2, 1, 1)), dt=0.1)
    with pytest.raises(ValueError, match=r"to_continuous\('bilinear'\): system 1 has the eigenvalue z = -1, -1 to "
                                         r"rounding"):
        minus_one.to_continuous("bilinear")
    ct = StateSpace.from_continuous(np.diag([-1.0, 4.0])[None], np.ones((1, 2, 1)), np.ones((1, 1, 2)),
                                    np.zeros((1, 1, 1)))
    with pytest.raises(ValueError, match=r"to_discrete\(dt, 'bilinear'\): system 0 has the eigenvalue s = 4 = 2/dt"):
        ct.to_discrete(0.5, "bilinear")
    ct.to_discrete(0.5)  # zoh samples any continuous system


def test_argument_and_domain_errors():
    system = _random_stable(np.random.default_rng(4), G=1)
    ct = system.to_continuous()
    with pytest.raises(ValueError, match=r"method must be one of \('zoh', 'bilinear'\); got 'foh'"):
        system.to_continuous("foh")
    with pytest.raises(ValueError, match=r"hold must be one of \('previous', 'sample'\)"):
        system.to_continuous(hold="next")
    with pytest.raises(ValueError, match=r"hold='sample' describes a zero-order hold"):
        system.to_continuous("bilinear", hold="sample")
    with pytest.raises(ValueError, match=r"continuous already \(dt = 0\)"):
        ct.to_continuous()
    with pytest.raises(ValueError, match=r"to_discrete needs a continuous-time bank; this one is sampled already"):
        system.to_discrete(0.1)
    with pytest.raises(ValueError, match=r"dt must be the sampling time in seconds, a finite number > 0; got -1"):
        ct.to_discrete(-1)
    with pytest.raises(ValueError, match=r"got 0 \(dt = 0 is python-control's continuous time: "
                                         r"StateSpace\.from_continuous"):
        StateSpace(system.A, system.B, system.C, system.D, dt=0)
    # h2_norm, gram, hsvd and balred work in continuous time (tests/analysis/test_continuous_reduction.py)
    with pytest.raises(ValueError, match=r"simulate is discrete-time only; this bank is continuous \(dt = 0\)"):
        ct.simulate(np.zeros((1, 3, 2)))


# ------------------------------------------------------------------------------------------------------------------
# the continuous bank's methods


def test_continuous_methods_follow_the_continuous_definitions():
    pytest.importorskip("control")
    system = _random_stable(np.random.default_rng(5), G=2, n=4, m=2, p=2)
    ct = system.to_continuous()
    sub = ct[1]
    assert sub.is_continuous and ct.to_real() is ct and repr(sub).endswith("dt=0.0, dtype=float64)")
    assert ct.is_stable() and np.all(ct.poles().real < 0)
    unstable = StateSpace.from_continuous(np.diag([-1.0, 0.5])[None], np.ones((1, 2, 1)), np.ones((1, 1, 2)),
                                          np.zeros((1, 1, 1)))
    assert not unstable.is_stable() and np.isinf(unstable.hinf_norm()).all()
    omega = np.array([0.0, 0.5, 3.0, 40.0])
    for g in range(2):
        A, B, C, D = ct.A[g], ct.B[g], ct.C[g], ct.D[g]
        direct = np.stack([C @ np.linalg.solve(1j * w * np.eye(4) - A, B) + D for w in omega], -1)  # (p, m, W)
        np.testing.assert_allclose(ct.frequency_response(omega)[g], direct, rtol=1e-11)
        np.testing.assert_allclose(ct.dcgain()[g], D - C @ np.linalg.solve(A, B), rtol=1e-11)
        plant = ct.to_control()[g]
        assert plant.dt == 0
        np.testing.assert_allclose(plant.frequency_response(omega).complex, direct, rtol=1e-11)
        _assert_same_set(np.sort_complex(ct.zeros()[g]), np.sort_complex(plant.zeros()), atol=1e-8)
        lti = ct.to_scipy()[g]
        assert isinstance(lti, scipy.signal.StateSpace) and lti.dt is None
    # H∞ of the continuous system: no frequency of a dense grid beats the certified upper end, the lower end is attained
    bounds = ct.hinf_bounds(1e-10)
    grid = np.concatenate([[0.0], np.logspace(-3, 3, 20001)])
    peak = np.linalg.svd(np.moveaxis(ct.frequency_response(grid), -1, 1), compute_uv=False)[..., 0].max(1)  # (G,)
    assert np.all(peak <= bounds[:, 1] * (1 + 1e-12)) and np.all(peak >= bounds[:, 0] * (1 - 1e-4))
    np.testing.assert_allclose(ct.hinf_norm("grid"), bounds[:, 0], rtol=1e-6)
    np.testing.assert_allclose(ct.hinf_norm(), bounds[:, 0], rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# deep Wiener models


def _wiener(n_layers: int, seed: int = 0, output_range=None) -> DeepWiener:
    torch.manual_seed(seed)
    model = DeepWiener(2, 1, d_model=3, n_layers=n_layers, layer="s4d", layer_options={"d_state": 4}, dt=TS,
                       output_range=output_range).double()
    with torch.no_grad():  # away from the residual-identity start and the unit normalisation: every part matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.u_mean.copy_(torch.tensor([0.5, -1.0]))
        model.u_std.copy_(torch.tensor([2.0, 0.5]))
        model.y_mean.fill_(0.7)
        model.y_std.fill_(3.0)
    return model


def _held_simulation(plant, u: np.ndarray) -> np.ndarray:
    """python-control's solve_ivp simulation of a continuous system with each u_k held over (t_{k-1}, t_k] (one call
    per interval, the input constant in it): y_k read at t_k from rest at t_{-1}."""
    import control

    x, ys = np.zeros(plant.nstates), []
    for u_k in u:
        response = control.input_output_response(plant, timepts=[0.0, TS], inputs=np.stack([u_k, u_k], 1),
                                                 initial_state=x, solve_ivp_method="DOP853",
                                                 solve_ivp_kwargs={"rtol": 1e-11, "atol": 1e-13}, return_states=True)
        x = response.states[:, -1]
        ys.append(response.outputs[:, -1])
    return np.array(ys)


def test_continuous_wiener_of_one_block_samples_to_the_model():
    control = pytest.importorskip("control")
    from ssmkit.sysid.workflow import to_control

    model = _wiener(1, output_range=(None, 0.8)).name_signals(["valve", "pump"], ["level"])  # a sensor's limit
    plant = to_control(model, continuous=True, name="tanks")
    assert plant.dt == 0 and control.isctime(plant, strict=True) and plant.name == "tanks"
    assert plant.input_labels == ["valve", "pump"] and plant.output_labels == ["level"]
    u = torch.randn(1, 20, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(u)[0][0].numpy()
    assert 0 < (y == 0.8).sum() < 10  # the limit is met now and then
    np.testing.assert_allclose(_held_simulation(plant, u[0].numpy()), y, rtol=0, atol=1e-8)


def test_stacked_blocks_differ_by_first_order_in_the_step():
    """Between blocks the discrete model holds each block's input at its value at the interval's end (a rectangle
    rule), the ODE does not: run on sample times refined R-fold (``intervals=1/R``, each input repeated), the model's
    distance to the ODE halves as R doubles (a first-order error; measured 4.6e-3, 2.3e-3, 1.2e-3: ratios 0.5007,
    0.5003), so the tolerance is that rate, not a number; at R = 1 it is 3e-4 of the output's size (~15)."""
    pytest.importorskip("control")
    model = _wiener(2, seed=1)
    plant = ContinuousWiener(model).to_control()
    L = 16
    u = torch.randn(1, L, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    reference = _held_simulation(plant, u[0].numpy())
    errors = []
    for R in (1, 2, 4):
        with torch.no_grad():
            fine = model(u.repeat_interleave(R, 1), intervals=torch.full((1, L * R), 1.0 / R, dtype=F64))[0]
        errors.append(np.abs(fine[0, R - 1::R].numpy() - reference).max())
    assert errors[0] < 1e-2 * np.abs(reference).max()
    assert 0.4 < errors[1] / errors[0] < 0.6 and 0.4 < errors[2] / errors[1] < 0.6, errors


def test_continuous_wiener_equilibrium_and_linearisation():
    """The ODE's equilibrium output is the discrete model's (the blocks keep their DC gains); its linearisation is
    python-control's finite-difference ``linearize`` of the exported system; the output matrix reads the state."""
    control = pytest.importorskip("control")
    model = _wiener(2, seed=2)
    flow = ContinuousWiener(model)
    u0 = np.array([[0.3, -0.2], [-1.0, 0.5]])
    x_star, y_star, small = flow.operating_point(u0)
    np.testing.assert_allclose(y_star, NonlinearSystem(model).equilibrium(u0)[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(flow.derivative(x_star, u0), 0.0, atol=1e-10)
    np.testing.assert_allclose(flow.output(x_star, u0), y_star, rtol=1e-12)
    assert small.is_continuous and small.nsystems == 2
    plant = flow.to_control()
    for k in range(2):
        numeric = control.linearize(plant, x_star[k], u0[k])
        for M, N in zip((small.A[k], small.B[k], small.C[k], small.D[k]), (numeric.A, numeric.B, numeric.C, numeric.D)):
            np.testing.assert_allclose(M, N, rtol=1e-5, atol=1e-6)
    # the first block is linear in its own state: its poles are the block's continuous poles
    n0 = flow.blocks[0].nstates * flow.blocks[0].nsystems
    block0 = np.concatenate(list(flow.blocks[0].poles()))
    _assert_same_set(np.linalg.eigvals(small.A[0][:n0, :n0]), block0, atol=1e-10)


def test_continuous_wiener_of_an_ensemble_is_its_members_mean():
    pytest.importorskip("control")
    ensemble = WienerEnsemble([_wiener(1, seed=5), _wiener(1, seed=6)])
    flow = ContinuousWiener(ensemble)
    single = [ContinuousWiener(member) for member in ensemble.members]
    assert flow.n_states == sum(s.n_states for s in single)
    x = np.random.default_rng(7).standard_normal(flow.n_states)
    u = np.array([0.4, -0.1])
    parts = np.split(x, [single[0].n_states])
    np.testing.assert_allclose(flow.output(x, u), np.mean([s.output(p, u) for s, p in zip(single, parts)], 0),
                               rtol=1e-13)
    rates = np.concatenate([s.derivative(p, u) for s, p in zip(single, parts)], 1)
    np.testing.assert_allclose(flow.derivative(x, u), rates, rtol=1e-13)
    u_seq = torch.randn(1, 8, 2, dtype=F64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        y = ensemble(u_seq)[0][0].numpy()
    np.testing.assert_allclose(_held_simulation(flow.to_control(), u_seq[0].numpy()), y, rtol=0, atol=1e-8)


def test_continuous_export_refuses_time_varying_blocks_and_unconvertible_ones():
    from ssmkit.sysid.workflow import to_control

    torch.manual_seed(0)
    selective = DeepWiener(1, 1, d_model=3, n_layers=2, layer="mamba", layer_options={"d_state": 4}, dt=TS,
                           time_varying=True).name_signals(["u"], ["y"])
    with pytest.raises(ValueError, match=r"ContinuousWiener needs LTI blocks: block 0 \(Mamba\) is time-varying"):
        to_control(selective, continuous=True)
    model = _wiener(2, seed=3)
    with torch.no_grad():  # block 1, channel 2: a mode so fast that |Ā| = exp(-Δ e^{10}) is 0 to rounding
        model.layers[1].log_A_real[2, 0] = 10.0
    with pytest.raises(ValueError, match=r"ContinuousWiener: block 1 \(S4D\): to_continuous\('zoh'\): system 2 has "
                                         r"the eigenvalue z = [^,]*e-\d+j?, 0 to rounding \(a pure delay\)"):
        ContinuousWiener(model)
    with pytest.raises(ValueError, match=r"continuous must be a bool; got 1"):
        to_control(_wiener(1).name_signals(["a", "b"], ["y"]), continuous=1)
