"""Surrogate simulators against closed forms (linear limits, steady states, energy) and their determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import signal

from ssmkit.sysid.benchmarks import load_benchmark
from ssmkit.sysid.surrogates import duffing, duffing_surrogate, emps, emps_surrogate, tanks, tanks_surrogate, wh, wh_surrogate


def test_wh_filters_match_their_specification():
    (b1, a1), (b2, a2) = wh.filters()
    assert b1.sum() / a1.sum() == pytest.approx(1.0, abs=1e-12) and b2.sum() / a2.sum() == pytest.approx(1.0, abs=1e-12)
    f = np.linspace(1.0, 20000.0, 4000)
    g1 = np.abs(signal.freqz(b1, a1, worN=f, fs=wh.FS)[1])
    g2 = np.abs(signal.freqz(b2, a2, worN=f, fs=wh.FS)[1])
    passband = f <= 4400.0
    assert g1[passband].max() <= 1 + 1e-9 and g1[passband].min() >= 10 ** (-0.5 / 20) - 1e-9  # 0.5 dB ripple
    assert g2[f >= 5000.0].max() <= 10 ** (-40 / 20) + 1e-9  # 40 dB stop band


def test_wh_linear_limit_and_clamp():
    u = wh.excitation(3000, seed=1)
    (b1, a1), (b2, a2) = wh.filters()
    linear = wh.simulate(u, wh.WHParameters(clamp=None))
    assert np.allclose(linear, signal.lfilter(b2, a2, signal.lfilter(b1, a1, u)), rtol=0, atol=1e-14)
    x = np.array([-2.0, -0.1, 0.0, 1e-6, 0.3, 5.0])
    fx = wh.nonlinearity(x, 0.3)
    assert np.array_equal(fx[:3], x[:3]) and fx[3] == pytest.approx(1e-6) and fx[-1] < 0.3 and fx[4] == pytest.approx(0.3 * math.tanh(1))


def test_wh_surrogate_split_and_determinism():
    a = wh_surrogate(seed=3, n_train=500, n_test=300, n_lead=100)
    b = wh_surrogate(seed=3, n_train=500, n_test=300, n_lead=100)
    c = wh_surrogate(seed=4, n_train=500, n_test=300, n_lead=100)
    assert torch.equal(a.train[0].y, b.train[0].y) and not torch.equal(a.train[0].y, c.train[0].y)
    assert (len(a.train[0]), len(a.test[0]), a.n_init, a.unit) == (500, 300, 50, "mV")
    assert "surrogate" in a.name and "simulated" in a.title.lower() and not a.published
    u = wh.excitation(900, seed=3)  # the split cuts one record from rest
    assert np.allclose(a.test[0].y[:, 0].numpy(), wh.simulate(u)[600:])


def test_duffing_linear_limit_equals_exact_zoh_discretisation():
    p = duffing.DuffingParameters(k3=0.0)
    w0 = 2 * math.pi * p.f0
    A = np.array([[0.0, 1.0], [-w0 * w0, -2 * p.zeta * w0]])
    Ad, Bd, Cd, Dd, _ = signal.cont2discrete((A, np.array([[0.0], [w0 * w0]]), np.eye(2)[:1], np.zeros((1, 1))), 1 / duffing.FS)
    u = duffing.arrow(600, seed=5)
    x, expected = np.zeros(2), []
    for uk in u:  # y_k is the state before u_k acts (the simulator's convention)
        expected.append(x[0])
        x = Ad @ x + Bd[:, 0] * uk
    y = duffing.simulate(u, p)
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()  # RK4 error


def test_duffing_conserves_energy_without_damping():
    p = duffing.DuffingParameters(zeta=0.0, k3=2.0)
    y0, dt = 0.4, 1 / (duffing.FS * 50)  # a fine grid, so sampled turning points are the true ones to ~1e-4
    y = duffing.simulate(np.zeros(5000), p, dt=dt, substeps=1, state=(y0, 0.0))
    peaks = y[1:-1][(y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:])]
    # at a turning point ẏ = 0, so E = ω₀²(½y² + ¼k₃y⁴): E is conserved iff every peak returns to y0
    energy = lambda yy: 0.5 * yy**2 + 0.25 * p.k3 * yy**4  # noqa: E731
    assert len(peaks) > 5 and np.abs(energy(peaks) / energy(y0) - 1).max() < 1e-3
    lin = duffing.simulate(np.zeros(5000), duffing.DuffingParameters(zeta=0.0, k3=0.0), dt=dt, substeps=1, state=(y0, 0.0))
    t = np.arange(5000) * dt
    assert np.abs(lin - y0 * np.cos(2 * math.pi * p.f0 * t)).max() < 1e-6  # the linear limit: y0 cos ω₀t


def test_duffing_surrogate_records_and_determinism():
    a = duffing_surrogate(seed=1, n_period=256, n_records=2, n_arrow=300)
    b = duffing_surrogate(seed=1, n_period=256, n_records=2, n_arrow=300)
    assert [len(r) for r in a.train] == [256, 256] and [len(r) for r in a.test] == [256, 300]
    assert all(torch.equal(r.y, s.y) for r, s in zip(a.train + a.test, b.train + b.test))
    assert a.test[1].u[-50:].abs().max() > a.train[0].u.abs().max()  # the arrow extrapolates
    spectrum = np.abs(np.fft.rfft(a.train[0].u[:, 0].numpy()))
    assert spectrum[2::2].max() < 1e-9 * spectrum.max()  # odd lines only


@pytest.mark.parametrize("u", [2.0, 4.0, 6.0])
def test_tanks_steady_state_below_overflow(u):
    p = tanks.TanksParameters()
    x1, x2 = tanks.simulate(np.full(1500, u), p, x0=(0.0, 0.0))
    e1, e2 = (p.k4 * u / p.k1) ** 2, (p.k2 / p.k3) ** 2 * (p.k4 * u / p.k1) ** 2
    assert tanks.steady_state(u, p) == pytest.approx((e1, e2))
    assert x1[-1] == pytest.approx(e1, rel=1e-6) and x2[-1] == pytest.approx(e2, rel=1e-6)


def test_tanks_overflow_caps_and_spills():
    p = tanks.TanksParameters(k2=0.02, spill=0.3)  # the lower tank stays below its height
    u = 12.0
    x1, x2 = tanks.simulate(np.full(2000, u), p, x0=(0.0, 0.0))
    assert x1.max() <= p.h1 and x2.max() <= p.h2
    e2 = ((p.k2 * math.sqrt(p.h1) + p.spill * (p.k4 * u - p.k1 * math.sqrt(p.h1))) / p.k3) ** 2
    assert x1[-1] == pytest.approx(p.h1) and x2[-1] == pytest.approx(e2, rel=1e-6)
    bench = tanks_surrogate(seed=2, n=200)
    u0 = float(bench.test[0].u[0, 0])  # each record starts at rest for its first input
    assert bench.dt == 4.0 and float(bench.test[0].y[0, 0]) == pytest.approx(tanks.steady_state(u0)[1], rel=1e-12)
    assert torch.equal(bench.train[0].y, tanks_surrogate(seed=2, n=200).train[0].y)


def test_emps_plant_terminal_velocity_and_sticking():
    p = emps.EMPSParameters()
    force = 100.0
    q, v = emps.simulate_plant(np.full(9000, force), p)
    assert v[-1] == pytest.approx((force - p.offset - p.Fc) / p.Fv, rel=1e-6)
    q, v = emps.simulate_plant(np.full(200, p.offset + 0.9 * p.Fc), p)  # below the Coulomb level: no motion
    assert np.all(q == 0) and np.all(v == 0)


def test_emps_closed_loop_steady_state_error_from_offset():
    p = emps.EMPSParameters(Fc=0.0)
    volts, q = emps.simulate(np.full(3000, 0.1), p)
    assert q[-1] == pytest.approx(0.1 - p.offset / (p.gtau * p.kv * p.kp), abs=1e-10)
    assert q[-1] != pytest.approx(0.1, abs=1e-7)  # the offset is visible
    assert volts[-1] == pytest.approx(p.offset / p.gtau, rel=1e-6) and np.abs(volts).max() <= p.v_max


def test_emps_surrogate_determinism_and_load_by_name():
    a = emps_surrogate(seed=5, n=1500)
    b = emps_surrogate(seed=5, n=1500)
    assert torch.equal(a.train[0].u, b.train[0].u) and torch.equal(a.test[0].y, b.test[0].y)
    assert (a.n_init, a.unit, a.scale, a.dt) == (20, "mm", 1000.0, 1e-3)
    ref = emps.reference(1500, seed=5)
    assert ref.min() >= 0.0 and ref.max() <= 0.2
    assert float((a.train[0].y[:, 0] - torch.as_tensor(ref)).abs().max()) < 2e-3  # the loop tracks the reference
    wh_bench = load_benchmark("wh_surrogate", folder="/ignored")
    assert len(wh_bench.train[0]) == 100000 and len(wh_bench.test[0]) == 78800


def test_duffing_matches_an_ode_solver_at_large_amplitude():
    # probe 22: the module's equation ÿ + 2ζω₀ẏ + ω₀²(y + k₃y³) = ω₀²u, integrated sample by sample (u held) by
    # scipy's DOP853 at rtol 1e-10 (1e-13 changes it by < 3e-6). An arrow of peak RMS 0.5 drives |y| to 1.5, where
    # the stiffness ω₀²(1 + 3k₃y²) is 14 × the linear one: a fixed 10 RK4 steps per sample missed by 79 % of max |y|;
    # the step doubling (simulate's TOL) gets 4e-6
    from scipy.integrate import solve_ivp

    p = duffing.DuffingParameters()
    w0, dt = 2 * math.pi * p.f0, 1 / duffing.FS
    u = duffing.arrow(1500, peak_rms=0.5, seed=1)
    x, ref = np.zeros(2), []
    for uk in u:
        ref.append(x[0])
        def rhs(t, s, uk=uk):
            return [s[1], w0 * w0 * (uk - s[0] - p.k3 * s[0] ** 3) - 2 * p.zeta * w0 * s[1]]

        x = solve_ivp(rhs, (0.0, dt), x, method="DOP853", rtol=1e-10, atol=1e-12).y[:, -1]
    ref = np.array(ref)
    assert np.abs(ref).max() > 1.4  # deep in the cubic range
    assert np.abs(duffing.simulate(u, p) - ref).max() < 1e-4 * np.abs(ref).max()
    with pytest.raises(ValueError, match="substeps must be an int >= 1"):
        duffing.simulate(u, p, substeps=0)
    with pytest.warns(UserWarning, match="beyond what this dt resolves"):  # |y| ~ 20: 320 steps per sample still differ
        duffing.simulate(np.full(50, 1e4), p)


def _match_roots(got: np.ndarray, want: np.ndarray) -> float:
    """Largest distance from each wanted root to the nearest got root (and the counts must agree)."""
    assert got.size == want.size
    return float(max(np.abs(got - w).min() for w in want))


@pytest.mark.parametrize("order", [3, 4, 5])
def test_wh_filters_equal_textbook_chebyshev_designs(order):
    # probe 22: the closed forms (not scipy): Chebyshev I analog poles -sinh(v)sin θ_k + i cosh(v)cos θ_k,
    # θ_k = (2k-1)π/2n, v = asinh(1/ε)/n, ε² = 10^(rp/10) - 1, scaled to the pre-warped edge 2fs tan(πf/fs), zeros at
    # infinity; Chebyshev II ("inverse Chebyshev": G₂ is the type II filter, not G₁'s inverse) poles the reciprocals of
    # the type I form with ε² = 1/(10^(rs/10) - 1), zeros ±i/cos θ_k; both mapped by the bilinear z = (2fs+s)/(2fs-s)
    params = wh.WHParameters(order=order)
    (b1, a1), (b2, a2) = wh.filters(params)
    n, fs = order, wh.FS
    theta = (2 * np.arange(1, n + 1) - 1) * np.pi / (2 * n)

    def bilinear(s):
        return (2 * fs + s) / (2 * fs - s)

    eps = np.sqrt(10 ** (params.ripple_db / 10) - 1)
    v = np.arcsinh(1 / eps) / n
    w1 = 2 * fs * np.tan(np.pi * params.edge_hz / fs)
    poles1 = w1 * (-np.sinh(v) * np.sin(theta) + 1j * np.cosh(v) * np.cos(theta))
    assert _match_roots(np.roots(a1), bilinear(poles1)) < 1e-9
    # an n-fold root at -1 (numerical roots of a multiple root scatter by ~eps^(1/n))
    assert _match_roots(np.roots(b1), np.full(n, -1.0)) < 2e-3
    v2 = np.arcsinh(np.sqrt(10 ** (params.stop_db / 10) - 1)) / n
    w2 = 2 * fs * np.tan(np.pi * params.stop_hz / fs)
    poles2 = w2 / (-np.sinh(v2) * np.sin(theta) + 1j * np.cosh(v2) * np.cos(theta))
    finite = np.abs(np.cos(theta)) > 1e-9
    zeros2 = np.concatenate([bilinear(1j * w2 / np.cos(theta[finite])), np.full(n - finite.sum(), -1.0)])
    assert _match_roots(np.roots(a2), bilinear(poles2)) < 1e-9
    assert _match_roots(np.roots(b2), zeros2.astype(complex)) < 1e-6
    # DC gains: 1 for type II and for an odd-order type I; an even-order type I starts at the ripple's bottom
    assert b2.sum() / a2.sum() == pytest.approx(1.0, abs=1e-12)
    assert b1.sum() / a1.sum() == pytest.approx(1.0 if n % 2 else 10 ** (-params.ripple_db / 20), abs=1e-12)


def _tanks_reference(u: np.ndarray, p: tanks.TanksParameters) -> np.ndarray:
    """The module docstring's tanks, integrated sample by sample (u held) by DOP853 with the overflow as events: a full
    upper tank holds x₁ = h₁ while its net inflow is positive and sends ``spill`` of it to the lower one; a full lower
    tank holds x₂ = h₂ while its inflow exceeds its outflow."""
    from scipy.integrate import solve_ivp

    def inflow2(a, full1, uk):
        s = math.sqrt(min(max(a, 0.0), p.h1))
        return p.k2 * s + (p.spill * (p.k4 * uk - p.k1 * s) if full1 else 0.0)

    x1, x2 = tanks.steady_state(float(u[0]), p)
    out = []
    for uk in u.tolist():
        out.append((x1, x2))
        full1 = x1 >= p.h1 - 1e-12 and uk * p.k4 > p.k1 * math.sqrt(p.h1)
        full2 = x2 >= p.h2 - 1e-12 and inflow2(x1, full1, uk) > p.k3 * math.sqrt(p.h2)
        x1, x2, t = (p.h1 if full1 else x1), (p.h2 if full2 else x2), 0.0
        for _ in range(6):  # at most a few mode switches per sample
            def rhs(_, s, full1=full1, full2=full2, uk=uk):
                d1 = 0.0 if full1 else p.k4 * uk - p.k1 * math.sqrt(max(s[0], 0.0))
                return [d1, 0.0 if full2 else inflow2(s[0], full1, uk) - p.k3 * math.sqrt(max(s[1], 0.0))]

            def fills1(_, s):
                return s[0] - p.h1

            def fills2(_, s):
                return s[1] - p.h2

            def drains2(_, s, full1=full1, uk=uk):
                return inflow2(s[0], full1, uk) - p.k3 * math.sqrt(p.h2)

            fills1.terminal = fills2.terminal = drains2.terminal = True
            fills1.direction, fills2.direction, drains2.direction = 1, 1, -1
            events = ([] if full1 else [fills1]) + [drains2 if full2 else fills2]
            sol = solve_ivp(rhs, (t, tanks.TS), [x1, x2], method="DOP853", rtol=1e-11, atol=1e-13, events=events)
            (x1, x2), t = sol.y[:, -1], sol.t[-1]
            if sol.status != 1:
                break
            if not full1 and sol.t_events[0].size:
                full1, x1 = True, p.h1
            elif full2:
                full2 = False
            else:
                full2, x2 = True, p.h2
    return np.array(out)


def test_tanks_match_an_event_driven_ode_solver_through_overflow():
    # probe 22: an input that keeps both tanks at their heights about half of the time; RK4 with 8 steps per sample
    # spills the excess at the step that crosses h₁ (first order at the event): 1.3e-5 V seen, 5e-7 at 32 steps
    p = tanks.TanksParameters()
    u = tanks.excitation(300, mean=8.0, amplitude=4.0, seed=1)
    ref = _tanks_reference(u, p)
    x1, x2 = tanks.simulate(u, p)
    assert np.mean(ref[:, 0] >= p.h1 - 1e-9) > 0.3 and np.mean(ref[:, 1] >= p.h2 - 1e-9) > 0.3  # overflow exercised
    assert np.abs(x1 - ref[:, 0]).max() < 1e-9 and np.abs(x2 - ref[:, 1]).max() < 1e-4
    below = tanks.excitation(300, mean=5.0, amplitude=3.0, seed=0)  # no overflow: RK4's own error
    assert np.abs(tanks.simulate(below, p)[1] - _tanks_reference(below, p)[:, 1]).max() < 1e-9


def _emps_plant_step(q: float, v: float, force: float, p: emps.EMPSParameters, dt: float) -> tuple[float, float]:
    """M q̈ = force − F_v q̇ − F_c sign(q̇) − offset over one sample by DOP853, the sign switched at q̇ = 0 (an event),
    and the mass held once q̇ = 0 and |force − offset| ≤ F_c."""
    from scipy.integrate import solve_ivp

    drive, t = force - p.offset, 0.0
    while t < dt:
        if v == 0.0 and abs(drive) <= p.Fc:
            break
        s = np.sign(v) if v != 0.0 else np.sign(drive)
        stop = lambda _, x: x[1]  # noqa: E731
        stop.terminal, stop.direction = True, -s
        sol = solve_ivp(lambda _, x: [x[1], (drive - p.Fv * x[1] - p.Fc * s) / p.M], (t, dt), [q, v], method="DOP853",
                        rtol=1e-11, atol=1e-15, events=stop)
        (q, v), t = sol.y[:, -1], sol.t[-1]
        if sol.status == 1:
            v = 0.0
    return q, v


def test_emps_matches_an_event_driven_ode_solver():
    # probe 22: the plant with Coulomb friction (sticking included) in open loop, and the closed loop (controller at the
    # sample instants, voltage held), against DOP853 with the velocity's zero crossings as events. The plant's
    # semi-implicit Euler at 10 steps per sample is first order (4.3e-6 m open loop, 10 × less at 100 steps); in closed
    # loop the controller corrects it (4.6e-8 m)
    p = emps.EMPSParameters()
    levels = np.random.default_rng(0).uniform(-150.0, 150.0, 20)
    levels[1::2] = p.offset + np.linspace(-0.9, 0.9, 10) * p.Fc  # within the Coulomb band: the mass stops and sticks
    force = np.repeat(levels, 50)
    q, v, ref = 0.0, 0.0, []
    for f in force.tolist():
        ref.append((q, v))
        q, v = _emps_plant_step(q, v, f, p, emps.TS)
    ref = np.array(ref)
    qs, vs = emps.simulate_plant(force, p)
    assert np.mean(ref[:, 1] == 0.0) > 0.01  # the mass sticks at times
    # of 2.4e-2 m and 0.10 m/s, 17 % of the samples stuck
    assert np.abs(qs - ref[:, 0]).max() < 5e-5 and np.abs(vs - ref[:, 1]).max() < 1e-4
    target = emps.reference(1500, seed=2)
    q, v, q_prev, volts, qr = 0.0, 0.0, 0.0, [], []
    for qg in target.tolist():
        u = min(max(p.kv * (p.kp * (qg - q) - (q - q_prev) / emps.TS), -p.v_max), p.v_max)
        volts.append(u), qr.append(q)
        q_prev = q
        q, v = _emps_plant_step(q, v, p.gtau * u, p, emps.TS)
    v_sim, q_sim = emps.simulate(target, p)
    assert np.abs(q_sim - np.array(qr)).max() < 1e-6 and np.abs(v_sim - np.array(volts)).max() < 0.05
