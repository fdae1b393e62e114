"""Probe of 2026-12-07: a control / system-identification engineer who knows python-control and scipy.signal checks
every number ssmkit hands out, on the real data of ../shared/data (Cascaded Tanks, Ts = 4 s; F-16 GVT, 400 Hz, one
input and three outputs), with small models (a short ``identify`` or weights set by hand, float64).

What was checked, each against python-control 0.10.2 / scipy / numpy computed here from the exported matrices:
poles, DC gain, the frequency response at several frequencies up to Nyquist (discrete, and continuous after
``to_continuous``), the H∞ norm (a dense grid of σ_max inside ssmkit's certified bracket), the H2 norm
(``control.norm(sys, 2)`` and a Stein equation solved by scipy), Hankel singular values (scipy Gramians), the balanced
truncation's error against its bound 2 Σ_{i>r} σ_i, step and impulse responses (``control.step_response`` /
``impulse_response``, whose discrete impulse is 1/Ts high), sampling back with ``control.sample_system``; the MIMO case
(F-16: a linear deep Wiener model written out by hand as one cascade, against its forward on the real force record,
``NonlinearSystem.linearize``, the MIMO norms and ``scipy.signal.dlsim`` of ``to_scipy()`` from an equilibrium); the
nonlinear model exported with ``to_control`` simulated by
``control.input_output_response`` on the real test input against the model's forward; the local DC gains of the
operating points against central differences of the static characteristic; the continuous-time export of a
one-block model integrated by scipy with each input held over its interval; the subspace and ARX pole estimates
driven by the real F-16 force through a known system. All of these agreed (to 1e-9 relative or better, the grid
H∞ to its grid's resolution). python-control's own quirks met on the way (not ssmkit's): without slycot its
``norm(sys, "inf")`` is ~1e-6 relative off and fails for a non-square MIMO system (a matmul shape error), and its
``norm(sys, 2)`` returns inf for an EMA layer's bank (poles |z| <= 0.79) with a warning about poles near the unit
circle, where ssmkit's 3.1128 equals the impulse response's energy summed by hand.

Bugs found (fixed in src/ssmkit/analysis/{statespace,reduction,layerwise,nonlinear}.py and
src/ssmkit/sysid/{wiener,workflow}.py):

1. *A model with non-finite parameters* (a diverged run, a NaN written by hand) gave numpy's bare
   ``LinAlgError: Array must not contain infs or NaNs`` from ``poles``, ``hinf_norm``, ``h2_norm``, ``hsvd``,
   ``analyze_model`` and ``write_report``, naming neither the layer, the system nor the matrix (with NaN only in C,
   the poles and ``is_stable()`` are still defined, and still answered). Now a ValueError names the matrix, the first
   such system and the
   layer (``analyze_model``); ``DeepWiener.spectral_radius`` is NaN and ``is_stable`` False for a NaN state matrix
   (instead of raising inside ``ssmkit sysid``'s results), and ``NonlinearSystem`` names the parameter (it reported
   "no convergence in 50 Newton iterations ... residual nan").
2. *A NaN or infinite frequency* gave a silent NaN response (python-control: ``inf+nanj``); it is refused, naming it.
3. *Evaluating a model on a benchmark with other outputs* (a 1-output model on F-16's 3) simulated all 73 728
   samples and then failed in the metrics with "y_pred and y_true must have one shape ... (73728, 1) and (73728,
   3)"; ``simulate_test`` / ``evaluate`` now say which sizes the model and the benchmark have, before simulating.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.signal as sig
import torch

control = pytest.importorskip("control")

from ssmkit.analysis import ContinuousWiener, NonlinearSystem, StateSpace, analyze_model  # noqa: E402
from ssmkit.sysid import from_arrays, load_benchmark  # noqa: E402
from ssmkit.sysid.init import arx_poles, subspace_poles  # noqa: E402
from ssmkit.sysid.recipes import recipe_for  # noqa: E402
from ssmkit.sysid.wiener import DeepWiener  # noqa: E402
from ssmkit.sysid.workflow import evaluate, identify, to_control  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")
F64 = torch.float64


def response(system, omega: np.ndarray) -> np.ndarray:
    """C (zI − A)⁻¹ B + D of a python-control system at z = e^{jω dt} (s = jω when dt = 0), batched numpy solves
    (python-control's own frequency_response takes ~0.3 s per 20 000 points): (W, p, m)."""
    A, B, C, D = (np.asarray(M, dtype=float) for M in (system.A, system.B, system.C, system.D))
    z = np.exp(1j * omega * system.dt) if system.dt else 1j * omega  # (W,)
    out = []
    for part in np.array_split(z, max(1, z.size // 256)):  # (w, n, n) pencils a few hundred at a time
        X = np.linalg.solve(part[:, None, None] * np.eye(A.shape[0]) - A, np.broadcast_to(B, (part.size, *B.shape)))
        out.append(C @ X + D)
    return np.concatenate(out)


def peak(system, top: float, points: int = 4001) -> float:
    """max σ_max over [0, top] rad/s: a uniform grid, then a grid 100 times finer around its largest value."""
    grid = np.linspace(0.0, top, points)
    k = int(np.argmax(sigma_max_grid(system, grid)))
    step = grid[1] - grid[0]
    fine = np.linspace(max(grid[k] - 2 * step, 0.0), min(grid[k] + 2 * step, top), 401)
    return float(sigma_max_grid(system, np.concatenate([grid, fine])).max())


def sigma_max_grid(system, omega: np.ndarray) -> np.ndarray:
    """σ_max of a python-control system's response at omega (W,), by numpy's SVD: (W,)."""
    return np.linalg.svd(response(system, omega), compute_uv=False)[:, 0]


def stein_gramians(A, B, C):
    """Wc, Wo of a discrete system by scipy's Stein solver."""
    return sla.solve_discrete_lyapunov(A, B @ B.T), sla.solve_discrete_lyapunov(A.T, C.T @ C)


def matched(a: np.ndarray, b: np.ndarray) -> float:
    """The largest distance between two pole sets paired greedily (sorting complex numbers pairs rounding badly)."""
    rest = list(b)
    worst = 0.0
    for z in a:
        k = int(np.argmin(np.abs(np.asarray(rest) - z)))
        worst = max(worst, abs(rest.pop(k) - z))
    return worst


@pytest.fixture(scope="module")
def tanks():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bench = load_benchmark("cascaded_tanks", DATA / "cascaded_tanks")
    recipe = dataclasses.replace(recipe_for(bench.name), d_model=4, n_layers=2, d_state=4, steps=40, restarts=1,
                                 validation="tail", folds=None, combine="best", first_layer_init="layer",
                                 val_every=20, patience=None, batch_size=4, window=128)
    model, _ = identify(bench, "s4d", recipe, dtype=F64)
    return bench, model


@pytest.fixture(scope="module")
def f16():
    return load_benchmark("f16", DATA / "f16gvt")


@needs_data
def test_tanks_block_exports_match_python_control(tanks):
    bench, model = tanks
    Ts = bench.dt
    assert Ts == 4.0
    w = np.array([1e-4, 1e-3, 0.01, 0.1, 0.5, 0.99 * np.pi / Ts])  # rad/s, up to just below Nyquist
    grid = np.linspace(0.0, np.pi / Ts, 4001)
    t = np.arange(120) * Ts
    for bank in model.state_space():
        assert bank.dt == Ts and not bank.is_complex
        hinf, bounds, h2, hsv = bank.hinf_norm(), bank.hinf_bounds(), bank.h2_norm(), bank.hsvd()
        for g, ref in enumerate(bank.to_control()):
            A, B, C, D = bank.A[g], bank.B[g], bank.C[g], bank.D[g]
            assert matched(bank.poles()[g], ref.poles()) < 1e-12
            assert abs(bank.dcgain()[g, 0, 0] - control.dcgain(ref)) <= 1e-12 * (1 + abs(control.dcgain(ref)))
            H = np.asarray(ref.frequency_response(w).complex).ravel()
            np.testing.assert_allclose(bank.frequency_response(w)[g, 0, 0], H, rtol=1e-10, atol=1e-12)
            dense = peak(ref, np.pi / Ts)
            assert bounds[g, 0] >= dense * (1 - 1e-6) and dense <= bounds[g, 1] * (1 + 1e-12)
            assert hinf[g] == bounds[g, 0]
            Wc, Wo = stein_gramians(A, B, C)
            assert h2[g] == pytest.approx(np.sqrt(np.trace(D @ D.T + C @ Wc @ C.T)), rel=1e-10)
            assert h2[g] == pytest.approx(float(control.norm(ref, 2)), rel=1e-10)
            want = np.sort(np.sqrt(np.abs(np.linalg.eigvals(Wc @ Wo))))[::-1]
            # the product Wc Wo loses the small values to ~√eps σ_1 (ssmkit's square-root factors do not)
            np.testing.assert_allclose(hsv[g], want, rtol=1e-8, atol=1e-7 * want[0])
            for r in (1, 2, 3):  # balanced truncation: the error on the grid within 2 Σ_{i>r} σ_i
                reduced = bank[g].balred(r).to_control()[0]
                err = np.abs(response(ref, grid) - response(reduced, grid)).max()
                assert err <= 2 * want[r:].sum() * (1 + 1e-9)
            step = np.ones((1, t.size, 1))
            np.testing.assert_allclose(bank[g].simulate(step)[0, :, 0].numpy(),
                                       np.asarray(control.step_response(ref, T=t).outputs).ravel(), rtol=1e-10,
                                       atol=1e-12)
            pulse = np.zeros((1, t.size, 1))
            pulse[0, 0, 0] = 1.0  # python-control's discrete impulse has area 1: height 1/Ts
            np.testing.assert_allclose(bank[g].simulate(pulse)[0, :, 0].numpy(),
                                       Ts * np.asarray(control.impulse_response(ref, T=t).outputs).ravel(),
                                       rtol=1e-10, atol=1e-12)
            cont = bank[g].to_continuous()
            back = control.sample_system(cont.to_control()[0], Ts, method="zoh")
            np.testing.assert_allclose(back.A, A, atol=1e-12)
            np.testing.assert_allclose(back.B, B, atol=1e-12)
            assert matched(cont.poles()[0], np.log(ref.poles().astype(complex)) / Ts) < 1e-12
            wc = np.array([1e-4, 1e-3, 0.01, 0.1, 0.5])
            Hc = np.asarray(cont.to_control()[0].frequency_response(wc).complex).ravel()
            np.testing.assert_allclose(cont.frequency_response(wc)[0, 0, 0], Hc, rtol=1e-10, atol=1e-12)
            dense_c = peak(cont.to_control()[0], 5.0)
            assert cont.hinf_norm()[0] >= dense_c * (1 - 1e-9)


def linear_cascade(model: DeepWiener, columns: np.ndarray):
    """A linear DeepWiener (no σ) by hand: v_1 = columns · input, per block η = G v, v ← η + S v, y = s_y W v.

    ``columns`` (H, k) maps k inputs into v_1; returns (A, B, C, D) of the whole cascade with the decoder's output
    scale (not its offset), each block's bank from ``layer.state_space()`` put block-diagonally."""
    H = model.d_model
    A = np.zeros((0, 0))
    B = np.zeros((0, columns.shape[1]))
    C = np.zeros((H, 0))
    D = columns
    for layer, skip in zip(model.layers, model.skips):
        bank = layer.state_space().to_real()
        a, b, c, d = (sla.block_diag(*getattr(bank, k)) for k in "ABCD")
        S = skip.weight.detach().numpy()
        n0, n = A.shape[0], a.shape[0]
        A = np.block([[A, np.zeros((n0, n))], [b @ C, a]])
        B = np.vstack([B, b @ D])
        C, D = np.hstack([(d + S) @ C, c]), (d + S) @ D
    out = model.y_std.numpy()[:, None] * model.decoder.weight.detach().numpy()
    return A, B, out @ C, out @ D


@needs_data
def test_linear_f16_model_is_the_hand_written_cascade(f16):
    torch.manual_seed(0)
    record = f16.train[0]
    Ts = f16.dt
    model = DeepWiener(1, 3, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 4}, activation=None,
                       dt=Ts, timescale=(Ts / 5, 200 * Ts), dtype=F64)
    model.set_normalisation([record.u], [record.y])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    u = record.u[:1500].to(F64)
    with torch.no_grad():
        y = model(u[None])[0][0].numpy()
    E = model.encoder.weight.detach().numpy()
    su, mu = model.u_std.numpy(), model.u_mean.numpy()
    # input 1: the deviation u - μ_u; input 2: a constant 1 carrying the encoder's bias
    whole = control.ss(*linear_cascade(model, np.hstack([E / su, model.encoder.bias.detach().numpy()[:, None]])), Ts)
    T = np.arange(u.shape[0]) * Ts
    sim = control.forced_response(whole, T, np.vstack([u[:, 0].numpy() - mu[0], np.ones(T.size)]))
    offset = model.y_mean.numpy() + model.y_std.numpy() * model.decoder.bias.detach().numpy()
    np.testing.assert_allclose(np.asarray(sim.outputs).T + offset, y, rtol=1e-10, atol=1e-10)
    # the exact linearisation (any operating point: the model is linear) is the same system from u
    plant = control.ss(*linear_cascade(model, E / su), Ts)
    local = NonlinearSystem(model).linearize([float(mu[0])])
    w = 2 * np.pi * np.array([1.0, 5.0, 20.0, 50.0, 120.0, 199.0])  # rad/s, Nyquist 200 Hz
    np.testing.assert_allclose(local.frequency_response(w)[0], np.asarray(plant.frequency_response(w).complex),
                               rtol=1e-9, atol=1e-12)
    assert matched(local.poles()[0], plant.poles()) < 1e-10
    np.testing.assert_allclose(local.dcgain()[0], control.dcgain(plant), rtol=1e-10)
    dense = peak(plant, np.pi / Ts)
    lo, hi = local.hinf_bounds()[0]
    assert lo >= dense * (1 - 1e-6) and dense <= hi * (1 + 1e-12)
    assert local.h2_norm()[0] == pytest.approx(float(control.norm(plant, 2)), rel=1e-9)
    # scipy.signal's export runs as the model too: dlsim of the small-signal model on the force's deviation (time on
    # axis 0), plus the output at the operating point, is the model's output
    (dlti,) = local.to_scipy()
    assert dlti.dt == Ts
    system = NonlinearSystem(model)
    x_eq, y_eq = system.equilibrium([float(mu[0])])
    _, y_lin, _ = sig.dlsim(dlti, u.numpy() - mu[0])  # deviations from the equilibrium: δx[0] = 0
    with torch.no_grad():
        from_eq = model(u[None], system.model_state(x_eq))[0][0].numpy()
    np.testing.assert_allclose(y_lin + y_eq, from_eq, rtol=1e-9, atol=1e-9)


@needs_data
def test_nonlinear_tanks_export_runs_as_the_model(tanks):
    bench, model = tanks
    u = bench.test[0].u.to(F64)
    with torch.no_grad():
        y = model(u[None])[0][0].numpy()
    plant = to_control(model, bench)
    assert plant.dt == bench.dt and plant.input_labels == ["pump voltage"]
    T = np.arange(u.shape[0]) * bench.dt
    out = control.input_output_response(plant, T, u.numpy().T, X0=np.zeros(plant.nstates))
    np.testing.assert_allclose(np.asarray(out.outputs).reshape(-1, 1), y, rtol=1e-10, atol=1e-10)
    system = NonlinearSystem(model)
    u0 = np.array([[2.0], [4.0], [5.5]])
    _, y_eq, local = system.operating_point(u0)
    h = 1e-5  # the local DC gain is the slope of the static characteristic
    slope = (system.static_characteristic(u0[:, 0] + h) - system.static_characteristic(u0[:, 0] - h)) / (2 * h)
    np.testing.assert_allclose(local.dcgain()[:, :, 0], slope, rtol=1e-6, atol=1e-9)
    for g, ref in enumerate(local.to_control()):
        assert abs(control.dcgain(ref) - local.dcgain()[g, 0, 0]) < 1e-12
    with torch.no_grad():  # y* is where a long constant-input simulation settles
        settled = model(torch.full((3, 3000, 1), 0.0, dtype=F64) + torch.from_numpy(u0)[:, None])[0][:, -1].numpy()
    np.testing.assert_allclose(settled, y_eq, rtol=1e-9, atol=1e-9)


@needs_data
def test_one_block_continuous_export_reproduces_the_forward(f16):
    from scipy.integrate import solve_ivp

    torch.manual_seed(1)
    Ts = f16.dt
    record = f16.train[0]
    model = DeepWiener(1, 3, d_model=3, n_layers=1, layer="s4d", layer_options={"d_state": 4}, activation="tanh",
                       dt=Ts, timescale=(Ts, 100 * Ts), dtype=F64)
    model.set_normalisation([record.u], [record.y])
    u = record.u[:80].to(F64).numpy()
    with torch.no_grad():
        y = model(torch.from_numpy(u)[None])[0][0].numpy()
    flow = ContinuousWiener(model)
    x, ys = np.zeros(flow.n_states), []
    for k in range(u.shape[0]):  # u_k held over (t_{k-1}, t_k], y read at t_k
        sol = solve_ivp(lambda _, xx: flow.derivative(xx, u[k]).ravel(), (0.0, Ts), x, method="DOP853", rtol=1e-11,
                        atol=1e-13)
        x = sol.y[:, -1]
        ys.append(flow.output(x, u[k]).ravel())
    np.testing.assert_allclose(np.array(ys), y, rtol=1e-8, atol=1e-9)


@needs_data
def test_data_driven_poles_of_a_known_system_driven_by_the_f16_force(f16):
    Ts = f16.dt
    u = f16.train[0].u[:3000].to(F64).numpy()
    modes = np.array([0.97 * np.exp(2j * np.pi * 7 * Ts), 0.9 * np.exp(2j * np.pi * 40 * Ts)])
    poles = np.concatenate([modes, modes.conj()])
    y = sig.lfilter([0.0, 0.3, -0.1, 0.05, 0.02], np.real(np.poly(poles)), u[:, 0])[:, None]
    bench = from_arrays(u, np.hstack([y, 0.5 * y]), Ts)
    assert matched(subspace_poles(bench.train, order=4), poles) < 1e-8
    assert matched(arx_poles(bench.train, order=4), poles) < 1e-8


def nan_bank():
    """Two 2-state systems, the second with a NaN in C (a diverged output weight); A finite."""
    A = np.array([[[0.9, 0.2], [-0.2, 0.9]], [[0.5, 0.0], [0.1, 0.3]]])
    B = np.array([[[1.0], [0.5]], [[1.0], [-1.0]]])
    C = np.array([[[1.0, -0.3]], [[np.nan, 1.0]]])
    D = np.array([[[0.1]], [[0.0]]])
    return A, B, C, D


def test_non_finite_matrices_are_refused_naming_the_system_and_matrix():
    A, B, C, D = nan_bank()
    bank = StateSpace(A, B, C, D, dt=0.5)
    ref = control.ss(A[0], B[0], C[0], D[0], 0.5)
    # what needs only A still answers, and the finite system's numbers are python-control's
    assert matched(bank.poles()[0], ref.poles()) < 1e-12 and bank.is_stable()
    w = np.array([0.1, 1.0, 6.0])
    H = bank.frequency_response(w)
    np.testing.assert_allclose(H[0, 0, 0], np.asarray(ref.frequency_response(w).complex).ravel(), rtol=1e-12)
    assert np.isnan(H[1]).all()  # a NaN in C makes that system's response NaN, nothing else
    assert bank[0].h2_norm()[0] == pytest.approx(float(control.norm(ref, 2)), rel=1e-10)
    for call in (bank.hinf_norm, bank.hinf_bounds, bank.h2_norm, bank.hsvd, lambda: bank.balred(1), bank.zeros,
                 lambda: bank.hinf_norm("grid"), bank.to_continuous, lambda: bank.gram("o")):
        with pytest.raises(ValueError, match=r"needs finite matrices; C of system 1 holds nan"):
            call()
    A2 = A.copy()
    A2[1, 0, 1] = np.inf
    broken = StateSpace(A2, B, np.nan_to_num(C), D, dt=0.5)
    for call in (broken.poles, broken.is_stable, lambda: broken.frequency_response(w), broken.hinf_norm):
        with pytest.raises(ValueError, match=r"A of system 1 holds inf"):
            call()
    with pytest.raises(ValueError, match=r"omega must be finite frequencies in rad/s; got nan at index 1"):
        bank.frequency_response([1.0, np.nan])
    with pytest.raises(ValueError, match=r"A of system 0 holds nan"):
        StateSpace.from_continuous(np.full((1, 1, 1), np.nan), B[:1, :1], C[:1, :, :1], D[:1]).to_discrete(0.1)


def test_a_diverged_model_is_named_in_the_analysis():
    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=2, n_layers=2, layer="s4d", layer_options={"d_state": 4}, dt=4.0, dtype=F64)
    radius = max(np.abs(np.linalg.eigvals(bank.A)).max() for bank in model.state_space())  # numpy, before
    assert model.spectral_radius() == pytest.approx(radius, rel=1e-12) and model.is_stable()
    healthy = analyze_model(model)
    assert max(r.spectral_radius for r in healthy) == pytest.approx(radius, rel=1e-12)
    with torch.no_grad():
        model.layers[1].C[0, 0] = float("nan")  # an output weight of block 1 diverged
    with pytest.raises(ValueError, match=r"the analysis of layer 'layers.1' needs finite matrices; C of system 0"):
        analyze_model(model)
    assert model.spectral_radius() == pytest.approx(radius, rel=1e-12)  # the poles are still defined
    with torch.no_grad():
        model.layers[1].log_dt[1] = float("nan")  # a step size diverged: no poles
    assert np.isnan(model.spectral_radius()) and model.is_stable() is False
    with pytest.raises(ValueError, match=r"finite parameters; layers.1.log_dt, layers.1.C hold NaN or inf"):
        NonlinearSystem(model)
    # an ensemble with the diverged member: its radius is NaN too (it reported the healthy member's 1 - 5e-3 while
    # is_stable() said False); a member without LTI blocks still counts as none
    from ssmkit.sysid.ensemble import WienerEnsemble

    healthy_member = DeepWiener(1, 1, d_model=2, n_layers=2, layer="s4d", layer_options={"d_state": 4}, dt=4.0,
                                dtype=F64)
    static = DeepWiener(1, 1, d_model=2, n_layers=1, layer="mamba", dt=4.0, dtype=F64, time_varying=True)
    assert static.state_space() == [] and np.isnan(static.spectral_radius())
    healthy_radius = max(np.abs(np.linalg.eigvals(bank.A)).max() for bank in healthy_member.state_space())
    assert WienerEnsemble([healthy_member, static]).spectral_radius() == pytest.approx(healthy_radius, rel=1e-12)
    diverged = WienerEnsemble([healthy_member, model])
    assert np.isnan(diverged.spectral_radius()) and diverged.is_stable() is False


@needs_data
def test_evaluate_says_when_the_model_does_not_fit_the_benchmark(f16):
    torch.manual_seed(0)
    kwargs = dict(d_model=2, n_layers=1, layer="s4d", layer_options={"d_state": 2}, dt=f16.dt, dtype=F64)
    wrong = DeepWiener(1, 1, **kwargs)  # one output, F-16 has three
    with pytest.raises(ValueError, match=r"the model takes 1 input\(s\) and returns 1 output\(s\); 'f16' has m = 1 "
                                         r"input\(s\) \['shaker force'\] and p = 3 output\(s\)"):
        evaluate(wrong, f16)
    model = DeepWiener(1, 3, **kwargs)
    model.set_normalisation([r.u for r in f16.train], [r.y for r in f16.train])
    scores = evaluate(model, f16)
    n = f16.n_init
    for record, entry in zip(f16.test, scores["records"]):
        with torch.no_grad():
            y = model(record.u.to(F64)[None])[0][0].numpy()
        e = y[n:] - record.y.to(F64).numpy()[n:]
        np.testing.assert_allclose(entry["rmse"], np.sqrt((e ** 2).mean(0)), rtol=1e-10)
        std = record.y.to(F64).numpy()[n:].std(0)  # population std after the window
        np.testing.assert_allclose(entry["fit"], 100 * (1 - np.sqrt((e ** 2).mean(0)) / std), rtol=1e-9)
