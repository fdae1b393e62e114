"""New-user probe of 2026-12-05 (a control / system-identification engineer, first day with ssmkit): silent wrong
answers in the analysis API (``ssmkit.analysis``), the LTI layers' exported state spaces and the deep Wiener models
(``ssmkit.sysid.DeepWiener``), away from the defaults: sampling times dt != 1, MIMO layers and models, DC and
Nyquist, near-integrators, float32 layers, layers after ``.double()``, ``load_state_dict`` and optimizer steps, and
non-causal (bidirectional) layers. Every number is checked against an independent reference written here: scipy's
``dlsim`` and ``solve_discrete_lyapunov``, numpy solves of C (zI - A)^{-1} B + D, closed forms, a hand-written
square-root balanced truncation, python-control (``norm``, ``frequency_response``, ``linearize``,
``input_output_response``), finite differences, DFTs and long simulations of the models' own ``forward``.

Finding (fixed):

1. *A deep Wiener model accepted non-causal layers and "simulated" with future inputs.* ``DeepWiener`` checked that
   its layer *class* has ``step`` and a state-space realisation, but ``layer_options={"bidirectional": True}`` (a
   natural copy from an S4/S5 LRA config) takes both away from the *instance*: the model built, ``forward`` ran the
   layers' anti-causal kernels, so the output at t depended on inputs after t (in one draw at d_model 2, an input impulse at
   t = 5 moved the outputs at t < 5 by 0.015 (S4D), 0.004 (S5), 0.070 (LRU)), training and the simulation metrics used
   the future, ``step`` raised only when called, and the control analysis silently covered nothing
   (``state_space()`` and ``analyze_model`` returned [], ``is_stable()`` False). Reference: causality, the
   contract of a simulation model (DESIGN.md, layer protocol rule 3). The constructor now checks the built layer's
   ``unsupported("step")`` (and ``"state_space"`` for LTI models) and raises a ``ValueError`` with the layer's
   reason (``ssmkit.sysid.wiener``).

Checked and right (tests below): every LTI layer's export (S4, S4D, DSS, DLR, S5, LRU, EMA, float32 and float64,
random D) against scipy ``dlsim`` of ``to_scipy()`` and the layer's own forward on impulses, also after optimizer
steps, ``load_state_dict`` and ``.double()`` of a used float32 layer (no stale caches); frequency response at DC,
Nyquist and beyond with dt = 0.01 against direct solves and python-control; DC gain, H2 and H∞ of first-order
near-integrators (1 - a = 1e-3 .. 1e-6) against closed forms; H∞ against a dense grid refined by a bounded scalar
search and H2 against python-control's ``norm`` and impulse-energy sums; complex banks against their real-part
impulse response; balanced truncation and Hankel singular values against a hand-written square-root algorithm (and
the 2 Σ σ bound); MIMO transmission zeros against eig(A - B D⁻¹ C); the equivalent continuous poles and time
constants of a DeepWiener (Ts = 0.02 s, ``timescale``) against Δλ/Ts of the layers' own parameters; the
linearisation of a linear MIMO DeepWiener against the DFT of its forward's impulse response, and of a nonlinear
one against finite differences, python-control's ``linearize`` and its equilibria against long simulations;
``set_discrete_poles`` against the poles it was given; ``report.slowest_modes`` (Hz, damping, τ) against closed
forms.

Noticed and left alone (design choices, reported): a float32 layer's export describes the float32 layer (Ā rounded
to float32), so near the unit circle its DC gain differs from the float64 copy's (S4D with Δ ~ 1e-6: 0.2 %, DLR
0.4 %), as the float32 forward does, except S4's, whose export is computed in float64 from the float32 weights.
``timescale`` sets DLR's decay only: its "omega" phases 2πn/M are per sample, so its initial oscillation
frequencies scale with 1/Ts; with S5 it is further scaled by ``step_rescale``. LRU's real poles keep a 1e-4 rad
rotation after ``set_discrete_poles`` (documented).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.signal
import torch

import ssmkit.layers as layers
from ssmkit.analysis import NonlinearSystem, StateSpace, analyze_model
from ssmkit.analysis.layerwise import analyze_layer
from ssmkit.analysis.report import slowest_modes
from ssmkit.sysid import DeepWiener
from ssmkit.sysid.init import set_discrete_poles

F64 = torch.float64
H = 3
LTI = {  # small variants of every layer with a realisation
    "s4": {"d_state": 6, "l_max": 32},
    "s4d": {"d_state": 6},
    "dss": {"d_state": 6},
    "dlr": {"d_state": 6},
    "s5": {"d_state": 8, "blocks": 2},
    "lru": {"d_state": 6},
    "ema": {"d_state": 3},
}


def _layer(name: str, dtype=F64, seed: int = 1, **extra):
    torch.manual_seed(seed)
    layer = layers.build(name, d_model=H, dtype=dtype, **{**LTI[name], **extra})
    with torch.no_grad():  # away from the initialisation, with a D skip of either sign
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
        layer.D.copy_(torch.randn_like(layer.D))
    return layer


def _forward_impulse(layer, length: int) -> np.ndarray:
    """(H_out, H_in, L): the layer's own forward on a unit impulse in each input channel."""
    out = np.zeros((H, H, length))
    for j in range(H):
        x = torch.zeros(1, length, H, dtype=layer.D.dtype)
        x[0, 0, j] = 1
        with torch.no_grad():
            out[:, j] = layer(x)[0][0].double().numpy().T
    return out


def _dlsim_impulse(system: StateSpace, length: int) -> np.ndarray:
    """(G·p, G·m, L): scipy's dlsim of every exported system on unit impulses, placed by channel."""
    real = system.to_real()
    G, m, p = real.nsystems, real.ninputs, real.noutputs
    out = np.zeros((G * p, G * m, length))
    for g, dlti in enumerate(real.to_scipy()):
        for j in range(m):
            u = np.zeros((length, m))
            u[0, j] = 1
            _, y, _ = scipy.signal.dlsim(dlti, u)
            out[g * p:(g + 1) * p, g * m + j] = y.reshape(length, p).T
    return out


def _direct_response(real: StateSpace, theta: np.ndarray) -> np.ndarray:
    """(G, p, m, W): C (zI - A)^{-1} B + D at z = e^{jθ} by dense solves."""
    n = real.nstates
    return np.stack([np.stack([real.C[g] @ np.linalg.solve(np.exp(1j * t) * np.eye(n) - real.A[g], real.B[g])
                               + real.D[g] for t in theta], -1) for g in range(real.nsystems)])


# ---------------------------------------------------------------------------------------------------------------------
# 1. a DeepWiener refuses non-causal (bidirectional) layers (FIXED)


@pytest.mark.parametrize("name, extra", [("s4d", {}), ("s5", {"blocks": 1}), ("lru", {})])
def test_deep_wiener_refuses_bidirectional_layers(name, extra):
    # before the fix the model built, its forward ran on future inputs, and state_space() returned [] silently
    options = {"d_state": 4, "bidirectional": True, **extra}
    with pytest.raises(ValueError, match="has no step: its output at time t depends on inputs after t"):
        DeepWiener(1, 1, d_model=2, n_layers=1, layer=name, layer_options=options, dt=0.1)
    with pytest.raises(ValueError, match="has no step"):  # time-varying models simulate one step at a time too
        DeepWiener(1, 1, d_model=2, n_layers=1, layer=name, layer_options=options, dt=0.1, time_varying=True)


def test_deep_wiener_of_causal_layers_is_causal_and_fully_analysed():
    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=2, n_layers=2, layer="s4d", layer_options={"d_state": 4}, dt=0.1)
    x = torch.zeros(1, 10, 1)
    x[0, 5] = 1
    with torch.no_grad():
        y, _ = model(x)
        y0, _ = model(torch.zeros(1, 10, 1))
    assert float((y - y0)[0, :5].abs().max()) == 0.0  # nothing before the impulse
    assert float((y - y0)[0, 5:].abs().max()) > 1e-3
    assert len(model.state_space()) == 2 and len(analyze_model(model)) == 2 and model.is_stable()


# ---------------------------------------------------------------------------------------------------------------------
# 2. exported systems against scipy's simulation and the layer's own forward


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(LTI))
def test_export_simulated_by_scipy_is_the_forward_on_impulses(name, dtype):
    layer = _layer(name, dtype)
    a, b = _forward_impulse(layer, 30), _dlsim_impulse(layer.state_space(), 30)
    assert np.abs(a - b).max() / np.abs(b).max() < (1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("name", sorted(LTI))
def test_export_follows_optimizer_steps_load_state_dict_and_double(name):
    layer = _layer(name)
    layer.state_space(), layer.kernel(8)  # fill every cache first
    h = layer.initial_state(1)
    layer.step(torch.zeros(1, H, dtype=F64), h)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    x = torch.randn(2, 16, H, dtype=F64)
    for _ in range(2):
        y, _ = layer(x)
        opt.zero_grad()
        ((y ** 2).sum() + (y[:, -1] ** 3).sum()).backward()
        opt.step()
    assert np.abs(_dlsim_impulse(layer.state_space(), 20) - _forward_impulse(layer, 20)).max() < 1e-10
    other = _layer(name, seed=7)
    layer.load_state_dict(other.state_dict())
    assert np.abs(_dlsim_impulse(layer.state_space(), 20) - _forward_impulse(other, 20)).max() < 1e-10
    # a float32 layer used, then cast and edited: the export follows the float64 weights
    used = _layer(name, torch.float32, seed=3)
    used.state_space()
    used.step(torch.zeros(1, H), used.initial_state(1))
    cast = used.double()
    with torch.no_grad():
        for p in cast.parameters():
            p.mul_(1.01)
    assert np.abs(_dlsim_impulse(cast.state_space(), 20) - _forward_impulse(cast, 20)).max() < 1e-10


# ---------------------------------------------------------------------------------------------------------------------
# 3. frequency response, DC gain, norms


@pytest.mark.parametrize("name", ["s4", "s5", "lru", "dss"])
def test_frequency_response_with_dt_at_dc_nyquist_and_beyond(name):
    dt = 0.01
    exported = _layer(name).state_space()
    system = StateSpace(exported.A, exported.B, exported.C, exported.D, dt=dt)
    omega = np.array([0.0, 1.0, 50.0, np.pi / dt, 1.5 * np.pi / dt])  # rad/s; the last one beyond Nyquist
    H_ss = system.frequency_response(omega)
    real = system.to_real()
    ref = _direct_response(real, omega * dt)
    assert np.abs(H_ss - ref).max() / np.abs(ref).max() < 1e-12
    assert np.abs(H_ss[..., 3].imag).max() < 1e-10 * np.abs(ref).max()  # a real system is real at Nyquist
    dc = np.stack([real.C[g] @ np.linalg.solve(np.eye(real.nstates) - real.A[g], real.B[g]) + real.D[g]
                   for g in range(real.nsystems)])
    assert np.abs(system.dcgain() - dc).max() < 1e-12 * np.abs(dc).max()
    assert np.abs(H_ss[..., 0] - dc).max() < 1e-12 * np.abs(dc).max()
    control = pytest.importorskip("control")
    H_c = np.stack([np.asarray(c.frequency_response(omega[:4]).complex).reshape(real.noutputs, real.ninputs, 4)
                    for c in real.to_control()])
    assert np.abs(H_ss[..., :4] - H_c).max() < 1e-12 * np.abs(H_c).max()
    assert all(c.dt == dt for c in real.to_control()) and control is not None


@pytest.mark.parametrize("eps", [1e-3, 1e-6])
def test_first_order_near_integrator_against_closed_forms(eps):
    a, b, c, d = 1 - eps, 0.3, 2.0, 0.5
    system = StateSpace([[[a]]], [[[b]]], [[[c]]], [[[d]]], dt=0.01)
    peak = c * b / (1 - a) + d  # H(1): both the DC gain and the H∞ norm (c b > 0, d > 0)
    assert system.dcgain()[0, 0, 0] == pytest.approx(peak, rel=1e-9)
    assert system.frequency_response(0.0)[0, 0, 0, 0].real == pytest.approx(peak, rel=1e-9)
    assert system.hinf_norm()[0] == pytest.approx(peak, rel=1e-9)
    assert system.hinf_norm("grid")[0] == pytest.approx(peak, rel=1e-9)
    assert system.h2_norm()[0] == pytest.approx(np.sqrt(d**2 + (c * b) ** 2 / (1 - a * a)), rel=1e-12)


@pytest.mark.parametrize("name", ["s5", "s4d", "lru"])
def test_hinf_against_a_dense_grid_refined_by_a_scalar_search(name):
    exported = _layer(name, seed=2).state_space()
    real = StateSpace(exported.A, exported.B, exported.C, exported.D, dt=0.05).to_real()
    hinf, grid = real.hinf_norm(), real.hinf_norm("grid")
    theta = np.linspace(0, np.pi, 20001)
    for g in range(min(real.nsystems, 2)):
        A, B, C, D = real.A[g], real.B[g], real.C[g], real.D[g]
        lam, V = np.linalg.eig(A)
        Bt, Ct = np.linalg.solve(V, B), C @ V
        Hs = np.einsum("pn,nm,nw->wpm", Ct, Bt, 1 / (np.exp(1j * theta)[None] - lam[:, None])) + D
        sv = np.linalg.svd(Hs, compute_uv=False)[:, 0]
        k = int(sv.argmax())

        def minus_gain(t):
            return -np.linalg.svd(C @ np.linalg.solve(np.exp(1j * t) * np.eye(len(A)) - A, B) + D, compute_uv=False)[0]

        res = scipy.optimize.minimize_scalar(minus_gain, bounds=(theta[max(k - 1, 0)], theta[min(k + 1, 20000)]),
                                             method="bounded", options={"xatol": 1e-14})
        best = max(-res.fun, sv.max())
        assert hinf[g] == pytest.approx(best, rel=1e-9)
        assert grid[g] == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("name", sorted(LTI))
def test_h2_against_impulse_energy_and_python_control(name):
    exported = _layer(name).state_space()
    real = StateSpace(exported.A, exported.B, exported.C, exported.D, dt=0.001).to_real()
    ref = []
    for g in range(real.nsystems):
        Wc = scipy.linalg.solve_discrete_lyapunov(real.A[g], real.B[g] @ real.B[g].T)
        ref.append(np.sqrt(np.trace(real.C[g] @ Wc @ real.C[g].T + real.D[g] @ real.D[g].T)))
    assert np.allclose(real.h2_norm(), ref, rtol=1e-9, atol=0)
    control = pytest.importorskip("control")
    assert np.allclose(real.h2_norm(), [control.norm(c, 2) for c in real.to_control()], rtol=1e-9, atol=0)


def test_complex_bank_against_its_real_part_impulse_response():
    rng = np.random.default_rng(0)
    G, n, m, p, dt = 2, 3, 2, 2, 0.3
    A = np.stack([np.diag(0.7 * np.exp(1j * rng.uniform(0, 3, n)))
                  + 0.1 * (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) for _ in range(G)])
    B, C, D = (rng.standard_normal(s) + 1j * rng.standard_normal(s) for s in ((G, n, m), (G, p, n), (G, p, m)))
    system = StateSpace(A, B, C, D, dt=dt)
    length = 600  # spectral radius 0.81: the tail is below 1e-50
    h = np.zeros((G, p, m, length))  # y_k = Re(C A^{k-1} B) u_0, y_0 = Re(D) u_0 for a real impulse
    for g in range(G):
        h[g, :, :, 0] = D[g].real
        X = B[g].copy()
        for k in range(1, length):
            h[g, :, :, k] = (C[g] @ X).real
            X = A[g] @ X
    assert np.allclose(system.h2_norm(), np.sqrt((h**2).sum((1, 2, 3))), rtol=1e-12, atol=0)
    assert np.abs(system.dcgain() - h.sum(-1)).max() < 1e-12 * np.abs(h.sum(-1)).max()
    theta = np.linspace(0, np.pi, 4001)
    Hf = np.einsum("gpml,lw->gpmw", h, np.exp(-1j * np.outer(np.arange(length), theta)))
    assert np.abs(system.frequency_response(theta[::400] / dt) - Hf[..., ::400]).max() < 1e-12 * np.abs(Hf).max()
    assert np.all(system.hinf_norm() >= np.linalg.norm(Hf.transpose(0, 3, 1, 2), 2, axis=(2, 3)).max(1) * (1 - 1e-12))


# ---------------------------------------------------------------------------------------------------------------------
# 4. Gramians, Hankel singular values, balanced truncation, zeros


def _balanced_truncation(A, B, C, D, r):
    """The square-root method (Laub et al. 1987) from scipy's Stein solver and Cholesky factors."""
    Lc = scipy.linalg.cholesky(scipy.linalg.solve_discrete_lyapunov(A, B @ B.T), lower=True)
    Lo = scipy.linalg.cholesky(scipy.linalg.solve_discrete_lyapunov(A.T, C.T @ C), lower=True)
    U, s, Vt = np.linalg.svd(Lo.T @ Lc)
    T = Lc @ Vt.T[:, :r] / np.sqrt(s[:r])
    Ti = (U[:, :r] / np.sqrt(s[:r])).T @ Lo.T
    return Ti @ A @ T, Ti @ B, C @ T, D, s


@pytest.mark.parametrize("name, options", [("s5", {}), ("lru", {"r_min": 0.5, "r_max": 0.95}), ("s4", {})])
def test_balanced_truncation_against_a_hand_written_square_root_algorithm(name, options):
    exported = _layer(name, seed=4, **options).state_space()
    system = StateSpace(exported.A, exported.B, exported.C, exported.D, dt=0.1)
    real = system.to_real()
    hsv = system.hsvd()
    theta = np.linspace(0, np.pi, 301)
    for order in (2, 4):
        reduced = system.balred(order)
        assert reduced.dt == 0.1 and reduced.nstates == order
        A, B, C, D = real.A[0], real.B[0], real.C[0], real.D[0]
        Ar, Br, Cr, Dr, s = _balanced_truncation(A, B, C, D, order)
        assert np.abs(hsv[0] - s).max() < 1e-10 * s[0]
        ours = _direct_response(reduced[0], theta)[0]  # (p, m, W): a similarity-invariant comparison
        ref = _direct_response(StateSpace(Ar[None], Br[None], Cr[None], Dr[None]), theta)[0]
        assert np.abs(ours - ref).max() < 1e-9 * np.abs(ref).max()
        full = _direct_response(real[0], theta)[0]
        error = np.linalg.norm((full - ref).transpose(2, 0, 1), 2, axis=(1, 2)).max()
        assert error <= 2 * s[order:].sum() * (1 + 1e-9)


@pytest.mark.parametrize("name", ["s5", "lru"])
def test_mimo_zeros_against_eig_of_a_minus_b_dinv_c(name):
    exported = _layer(name).state_space()  # D' = diag(D) + Re(C B̄): invertible here
    A, B, C, D = exported.A[0], exported.B[0], exported.C[0], exported.D[0]
    ref = np.linalg.eigvals(A - B @ np.linalg.solve(D, C))
    zeros = exported.zeros()[0]
    assert len(zeros) == len(ref)
    assert max(np.abs(ref - z).min() / max(1.0, abs(z)) for z in zeros) < 1e-10


# ---------------------------------------------------------------------------------------------------------------------
# 5. continuous-time view with a physical sampling time


def test_continuous_poles_and_time_constants_of_a_deep_wiener_in_seconds():
    Ts = 0.02
    torch.manual_seed(0)
    for name, options in [("s4d", {"d_state": 4}), ("s5", {"d_state": 4, "blocks": 1})]:
        model = DeepWiener(2, 3, d_model=4, n_layers=2, layer=name, layer_options=options, dt=Ts,
                           timescale=(0.1, 1.0), dtype=F64)
        for result, layer in zip(analyze_model(model), model.layers):
            assert result.system.dt == Ts
            if name == "s4d":
                lam = torch.complex(-torch.exp(layer.log_A_real), layer.A_imag).detach().numpy()  # (H, M)
                ref = torch.exp(layer.log_dt).detach().numpy()[:, None] * lam / Ts  # s = Δλ / Ts, (H, M)
            else:
                Lam, _, delta = layer.continuous()
                ref = (delta * Lam).detach().numpy()[None] / Ts  # (1, M)
            for g in range(ref.shape[0]):
                both = np.concatenate([ref[g], ref[g].conj()])
                got = result.poles_continuous[g]
                assert max(np.abs(both - s).min() for s in got) < 1e-9 * np.abs(both).max()
                assert max(np.abs(got - s).min() for s in both) < 1e-9 * np.abs(both).max()
            tau = -1 / ref.real  # seconds
            assert result.slowest_time_constant == pytest.approx(tau.max(), rel=1e-9)
            assert result.fastest_time_constant == pytest.approx(tau.min(), rel=1e-9)
            assert 0.2 * (1 - 1e-9) <= tau.min() and tau.max() <= 2.0 * (1 + 1e-9)  # Re λ = -1/2: τ = 2 τ_unit


def test_slowest_modes_in_hertz_against_closed_forms():
    torch.manual_seed(0)
    layer = layers.build("lru", d_model=2, d_state=4, dtype=F64)
    z = np.array([0.99 * np.exp(0.5j), 0.9 * np.exp(2.0j)])
    set_discrete_poles(layer, z)
    modes = slowest_modes(analyze_layer("lru", layer, 0.01), 2)
    for mode, zz in zip(modes, z):
        s = np.log(zz) / 0.01
        assert mode["abs_z"] == pytest.approx(abs(zz), rel=1e-12)
        assert mode["s_real"] == pytest.approx(s.real, rel=1e-9) and mode["s_imag"] == pytest.approx(s.imag, rel=1e-9)
        assert mode["frequency"] == pytest.approx(abs(s.imag) / (2 * np.pi), rel=1e-9)  # Hz, not rad/s
        assert mode["damping"] == pytest.approx(-s.real / abs(s), rel=1e-9)
        assert mode["tau"] == pytest.approx(-0.01 / np.log(abs(zz)), rel=1e-9)


@pytest.mark.parametrize("name, options", [
    ("s4d", {}), ("s4d", {"discretization": "bilinear"}),
    ("s5", {"blocks": 1, "discretization": "bilinear", "step_rescale": 2.0}), ("dlr", {}),
])
def test_set_discrete_poles_gives_the_exported_poles(name, options):
    torch.manual_seed(0)
    layer = layers.build(name, d_model=2, d_state=10, dtype=F64, **options)
    z = np.array([0.95 * np.exp(0.3j), 0.8 * np.exp(2.5j), -0.6, 0.3, 0.99999 * np.exp(0.01j)])
    set_discrete_poles(layer, z)
    poles = layer.state_space().to_real().poles()
    for g in range(poles.shape[0]):
        assert max(np.abs(poles[g] - x).min() for x in np.concatenate([z, z.conj()])) < 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# 6. whole MIMO deep Wiener models: linearisation, equilibria, python-control


def _mimo_wiener(name, options, activation, seed=1, **extra):
    torch.manual_seed(seed)
    model = DeepWiener(2, 3, d_model=3, n_layers=2, layer=name, layer_options=options, dt=0.05, dtype=F64,
                       activation=activation, **extra)
    with torch.no_grad():  # physical units far from 0 and 1
        model.u_mean.copy_(torch.tensor([1.0, -2.0]))
        model.u_std.copy_(torch.tensor([0.5, 3.0]))
        model.y_mean.copy_(torch.tensor([0.3, 0.1, -4.0]))
        model.y_std.copy_(torch.tensor([2.0, 0.1, 7.0]))
    return model


FAST = [("s4d", {"d_state": 4}, {"timescale": (0.05, 0.2)}), ("s5", {"d_state": 4, "blocks": 1}, {"timescale": (0.05, 0.2)}),
        ("lru", {"d_state": 4, "r_max": 0.8}, {}), ("ema", {"d_state": 2}, {})]


def pulse_responses(model, length: int, n_inputs: int) -> np.ndarray:
    """h (p, m, length): output j's response to a unit pulse at t = 0 on input i, less the response to zeros (the
    operating point's offset), by the model's float64 forward."""
    with torch.no_grad():
        base = model(torch.zeros(1, length, n_inputs, dtype=F64))[0][0].numpy()  # (length, p)
        h = np.zeros((base.shape[1], n_inputs, length))
        for i in range(n_inputs):
            u = torch.zeros(1, length, n_inputs, dtype=F64)
            u[0, 0, i] = 1
            h[:, i] = (model(u)[0][0].numpy() - base).T
    return h


@pytest.mark.parametrize("name, options, extra", FAST, ids=[f[0] for f in FAST])
def test_linear_mimo_wiener_linearisation_is_the_dft_of_its_forward_impulse_response(name, options, extra):
    model = _mimo_wiener(name, options, None, **extra)
    linear = NonlinearSystem(model).linearize(np.zeros(2))
    assert linear.dt == 0.05
    length = 600
    h = pulse_responses(model, length, 2)
    assert np.abs(h[..., -50:]).max() < 1e-12 * np.abs(h).max()  # decayed
    omega = np.array([0.0, 3.0, 20.0, np.pi / 0.05])
    ref = np.einsum("pml,lw->pmw", h, np.exp(-1j * np.outer(np.arange(length), omega * 0.05)))
    assert np.abs(linear.frequency_response(omega)[0] - ref).max() < 1e-10 * np.abs(ref).max()


@pytest.mark.parametrize("name, options, extra", FAST, ids=[f[0] for f in FAST])
def test_mimo_wiener_equilibrium_and_local_dc_gain_against_long_simulations(name, options, extra):
    model = _mimo_wiener(name, options, "tanh", **extra)
    with torch.no_grad():
        for skip in model.skips:
            skip.weight.mul_(0.5)
    u0 = np.array([1.3, -1.0])
    _, y_star, local = NonlinearSystem(model).operating_point(u0)
    length = 800

    def settle(u):
        with torch.no_grad():
            return model(torch.tensor(u).expand(1, length, 2).clone())[0][0, -1].numpy()

    assert np.abs(y_star[0] - settle(u0)).max() < 1e-9
    eps = 1e-5
    slope = np.stack([(settle(u0 + eps * e) - settle(u0 - eps * e)) / (2 * eps) for e in np.eye(2)], 1)  # (p, m)
    assert np.abs(local.dcgain()[0] - slope).max() < 1e-7 * np.abs(slope).max()


def test_nonlinear_system_against_python_control_linearize_and_simulation():
    control = pytest.importorskip("control")
    model = _mimo_wiener("s5", {"d_state": 4, "blocks": 1}, "tanh", seed=0)
    system = NonlinearSystem(model)
    u0 = np.array([0.4, -0.3])
    x_star, _, local = system.operating_point(u0)
    nlsys = system.to_control()
    assert nlsys.dt == 0.05
    ref = control.linearize(nlsys, x_star[0], u0)  # python-control's finite differences
    for ours, theirs in ((local.A, ref.A), (local.B, ref.B), (local.C, ref.C), (local.D, ref.D)):
        assert np.abs(ours[0] - np.asarray(theirs)).max() < 1e-5
    T = np.arange(40) * 0.05
    U = np.random.default_rng(0).standard_normal((2, 40))
    response = control.input_output_response(nlsys, T, U, X0=np.zeros(system.n_states))
    with torch.no_grad():
        y, _ = model(torch.tensor(U.T)[None])
    assert np.abs(response.outputs - y[0].numpy().T).max() < 1e-12


def test_sequence_model_in_train_mode_with_dropout_and_batch_norm_is_analysed_in_eval_mode():
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=4, n_layers=2, layer="s5", layer_options={"d_state": 4, "blocks": 1},
                          d_output=3, head="regress", pool=None, dropout=0.5, norm="batch").double()
    with torch.no_grad():
        model(torch.randn(4, 30, 2, dtype=F64))  # moves the batch-norm statistics
    system = NonlinearSystem(model)
    assert model.training  # the user's model is left as it was
    x = np.random.default_rng(0).standard_normal(system.n_states) * 0.1
    u = np.array([0.3, -0.2])
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        y, nxt = reference.step(torch.tensor(u)[None], system.model_state(x))
    assert np.abs(system.output(x, u)[0] - y[0].numpy()).max() < 1e-14
    assert np.abs(system.update(x, u)[0] - system.state_vector(nxt)[0]).max() < 1e-14
    local = system.linearize(u, x)
    n, eps = system.n_states, 1e-6
    J = np.zeros((n + 3, n + 2))
    for i in range(n + 2):
        d = np.zeros(n + 2)
        d[i] = eps
        plus = np.concatenate([system.update(x + d[:n], u + d[n:])[0], system.output(x + d[:n], u + d[n:])[0]])
        minus = np.concatenate([system.update(x - d[:n], u - d[n:])[0], system.output(x - d[:n], u - d[n:])[0]])
        J[:, i] = (plus - minus) / (2 * eps)
    assert np.abs(J - np.block([[local.A[0], local.B[0]], [local.C[0], local.D[0]]])).max() < 1e-7
