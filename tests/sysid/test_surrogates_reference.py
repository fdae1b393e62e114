"""The EMPS and Duffing surrogates against closed forms, published values and their documented laws (the lead's
mutation round over sysid/surrogates/emps and duffing; docs/design.md): the first step from rest, sticking when
the drive equals the Coulomb force, the published parameters (Janot, Gautier & Brunot 2019; REFERENCE.md, notes),
the point-to-point reference's shape, and the defaults."""

import warnings

import numpy as np
import pytest
from scipy import signal, stats

from ssmkit.sysid.surrogates import duffing, emps
from tests.conftest import signature_defaults



# --- EMPS ----------------------------------------------------------------------------------------------------------

def test_emps_parameters_are_the_published_ones():
    """M, F_v, F_c, offset (IDIM estimates), k_p, k_v, g_τ (DATA_EMPS.mat) and the ±10 V saturation."""
    p = emps.EMPSParameters()
    assert (p.M, p.Fv, p.Fc, p.offset, p.kp, p.kv, p.gtau, p.v_max) == (
        95.1089, 203.5034, 20.3935, -3.1648, 160.18, 243.45, 35.1507, 10.0)
    assert emps.TS == 1e-3
    with pytest.raises(AttributeError):
        p.M = 1.0  # frozen


def test_emps_first_step_from_rest_is_the_semi_implicit_euler_step():
    """From rest with |F − offset| > F_c, one step of h gives v = h (F − offset − F_c sign(F − offset)) / (M + h F_v)
    (friction opposes the motion that starts), q = h v."""
    p = emps.EMPSParameters()
    for force in (150.0, -150.0):
        q, v = emps.simulate_plant(np.array([force, 0.0]), p, dt=1e-3, substeps=1)
        drive = force - p.offset
        want = 1e-3 * (drive - p.Fc * np.sign(drive)) / (p.M + 1e-3 * p.Fv)
        assert (q[0], v[0]) == (0.0, 0.0)
        assert v[1] == pytest.approx(want, rel=1e-14) and q[1] == pytest.approx(1e-3 * want, rel=1e-14)


def test_emps_stops_and_sticks_when_the_drive_equals_the_coulomb_force():
    """Pushed, then driven by exactly −F_c (no offset): the mass decelerates at 2 F_c, stops, and static friction
    holds it at v = 0 exactly from then on (|drive| <= F_c)."""
    p = emps.EMPSParameters(offset=0.0)
    force = np.concatenate([np.full(200, 200.0), np.full(3000, -p.Fc)])
    q, v = emps.simulate_plant(force, p)
    assert v[200] > 0.0
    stopped = int(np.argmax(v[200:] == 0.0)) + 200
    assert stopped > 200 and np.all(v[stopped:] == 0.0) and np.all(q[stopped:] == q[stopped])
    assert np.all(v[200:stopped] > 0.0)  # no reversal on the way


def test_emps_default_substeps_and_step():
    assert signature_defaults(emps.simulate_plant)["substeps"] == 10 and signature_defaults(emps.simulate)["substeps"] == 10
    assert signature_defaults(emps.simulate)["dt"] == emps.TS and signature_defaults(emps.simulate)["q0"] == 0.0
    force = np.linspace(0.0, 120.0, 50)
    assert all(np.array_equal(a, b) for a, b in zip(emps.simulate_plant(force),
                                                   emps.simulate_plant(force, substeps=10, dt=1e-3)))


def _runs(x: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of equal consecutive values (to 1e-12: a move's last sample q + (target − q)·1
    is the target to rounding)."""
    edges = np.flatnonzero(np.abs(np.diff(x)) > 1e-12) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(x)]])
    return list(zip(starts.tolist(), (ends - starts).tolist()))


def test_emps_reference_is_minimum_jerk_moves_and_dwells():
    """Starts at ``low``; stays in [low, high]; plateaus (dwells) of 0.2-1 s; moves between them of 0.5-2 s whose
    per-sample step never exceeds the minimum-jerk peak speed 1.875 Δ/T (so no jump); the default seed is 0."""
    n, low, high = 100_000, 0.05, 0.2
    ref = emps.reference(n, low=low, high=high, seed=4)
    assert ref.shape == (n,) and ref[0] == low and low <= ref.min() and ref.max() <= high
    assert np.abs(np.diff(ref)).max() <= 1.875 * (high - low) / 500 + 1e-12
    runs = [r for r in _runs(ref) if r[1] > 1]
    plateaus = runs[:-1]  # the last one may be cut at n
    assert len(plateaus) >= 8
    # a plateau is the dwell plus the move's last sample (its target), so 200 .. 1001 samples
    dwells = [length for _, length in plateaus[1:]]
    assert all(200 <= d <= 1001 for d in dwells) and min(dwells) < 300 and max(dwells) > 900  # both ends reached
    moves = [b[0] - (a[0] + a[1]) for a, b in zip(runs, runs[1:])]
    assert all(498 <= m <= 1999 for m in moves)  # 0.5 s .. 2 s, less the two ends inside the plateaus
    assert min(moves) < 650 and max(moves) > 1850
    assert np.array_equal(emps.reference(5000), emps.reference(5000, seed=0))


def test_emps_reference_moves_of_under_two_samples_are_jumps():
    """A move shorter than two samples is two samples (start, target): the reference is then a staircase."""
    ref = emps.reference(20_000, move_s=(1e-4, 1.5e-3), seed=1)
    runs = _runs(ref)
    assert len(runs) > 10 and all(length >= 200 for _, length in runs[1:-1])  # the first run is the start alone


# --- Duffing -------------------------------------------------------------------------------------------------------

def _rk4_loop(u, f0=60.0, zeta=0.05, k3=2.0, dt=1.0 / 610.35, substeps=10, y=0.0, v=0.0):
    """Classic RK4 of ÿ + 2ζω₀ẏ + ω₀²(y + k₃y³) = ω₀²u with u held over each sample, ``substeps`` steps per sample;
    y at the sampling instants."""
    w2, c, h = (2 * np.pi * f0) ** 2, 4 * np.pi * f0 * zeta, dt / substeps

    def acc(yy, vv, uk):
        return w2 * (uk - yy - k3 * yy ** 3) - c * vv

    out = []
    for uk in u:
        out.append(y)
        for _ in range(substeps):
            a1 = acc(y, v, uk)
            a2 = acc(y + h / 2 * v, v + h / 2 * a1, uk)
            a3 = acc(y + h / 2 * (v + h / 2 * a1), v + h / 2 * a2, uk)
            a4 = acc(y + h * (v + h / 2 * a2), v + h * a3, uk)
            y, v = (y + h / 6 * (v + 2 * (v + h / 2 * a1) + 2 * (v + h / 2 * a2) + (v + h * a3)),
                    v + h / 6 * (a1 + 2 * a2 + 2 * a3 + a4))
    return np.array(out)


def test_duffing_parameters_and_defaults_are_the_documented_ones():
    p = duffing.DuffingParameters()
    assert (p.f0, p.zeta, p.k3) == (60.0, 0.05, 2.0) and duffing.FS == 610.35
    assert duffing.TOL == 1e-4 and 2 ** duffing.MAX_DOUBLINGS == 32  # "at most 32 × substeps steps per sample"
    assert signature_defaults(duffing.simulate) == {"params": p, "dt": 1.0 / 610.35, "substeps": 10, "state": (0.0, 0.0)}
    assert signature_defaults(duffing.odd_multisine) == {"records": 1, "fmax": 200.0, "rms": 0.1, "seed": 0}
    assert signature_defaults(duffing.arrow) == {"peak_rms": 0.2, "band_hz": 200.0, "seed": 0}
    with pytest.raises(AttributeError):
        p.k3 = 0.0


def test_duffing_refines_until_two_step_counts_agree_to_tol():
    """simulate is RK4 at the first of 10, 20, 40, ... steps per sample whose y agrees with the previous count's to
    TOL · max |y| (here 160: a large amplitude), with no warning."""
    u = duffing.odd_multisine(600, rms=0.6)[0]
    counts = [10 * 2 ** k for k in range(6)]
    ys = [_rk4_loop(u, substeps=s) for s in counts]
    k = next(k for k in range(1, 6) if np.abs(ys[k] - ys[k - 1]).max() <= 1e-4 * np.abs(ys[k]).max())
    assert counts[k] == 160
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = duffing.simulate(u)
    np.testing.assert_allclose(got, ys[k], rtol=0, atol=1e-8)  # 1e-10 seen: the same steps in another order
    assert np.abs(got - ys[k - 1]).max() > 1e-6  # not the count before (2.6e-5 of max |y| apart)


def test_duffing_an_unstable_step_count_is_refined_not_returned():
    """Linear (k₃ = 0) with ω₀·dt = 6.4: RK4 blows up at 1 and 2 steps per sample (ω₀h > 2.8) and is stable from 4;
    8 and 16 agree to TOL of max |y| (a 1 000 V operating point with a 1 V kick), so the result is the 16-step one,
    with no warning. A record no count up to 32 × resolves warns with that count."""
    params = duffing.DuffingParameters(k3=0.0)
    dt = 6.4 / (2 * np.pi * 60.0)
    u = np.full(600, 1000.0)
    u[0] = 1001.0
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.all(np.isfinite(_rk4_loop(u, k3=0.0, dt=dt, substeps=2, y=1000.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = duffing.simulate(u, params, dt, substeps=1, state=(1000.0, 0.0))
    np.testing.assert_allclose(y, _rk4_loop(u, k3=0.0, dt=dt, substeps=16, y=1000.0), rtol=0, atol=1e-8)
    kick = np.zeros(600)
    kick[0] = 1e-3  # the same system at an amplitude of 1e-3: the tolerance is relative, 64 steps are needed
    np.testing.assert_allclose(duffing.simulate(kick, params, dt, substeps=2),
                               _rk4_loop(kick, k3=0.0, dt=dt, substeps=64), rtol=0, atol=1e-13)
    with pytest.warns(UserWarning, match="duffing.simulate: 32 RK4 steps per sample still change y") as caught:
        duffing.simulate(np.full(20, 1e4), substeps=1)
    assert caught[0].filename == __file__  # reported at the caller's line
    with pytest.raises(ValueError, match="substeps must be an int >= 1"):
        duffing.simulate(u, substeps=0)


def test_duffing_batched_records_start_from_the_given_state():
    """(B, L) records are simulated together from state (y₀, ẏ₀), as each alone."""
    u = duffing.odd_multisine(200, records=2, rms=0.05, seed=3)
    both = duffing.simulate(u, state=(0.02, -1.5))
    assert both.shape == (2, 200) and both[0, 0] == 0.02
    for row in range(2):
        np.testing.assert_allclose(both[row], _rk4_loop(u[row], y=0.02, v=-1.5, substeps=20), rtol=0, atol=1e-12)


def test_odd_multisine_excites_exactly_the_odd_lines_up_to_fmax():
    """Every odd line f₀(2k+1) ≤ fmax (f₀ = fs/n; a line at fmax included), equal amplitudes, uniform phases, nothing
    else; each record at the RMS asked, with its own phases."""
    n = 1000
    fmax = 41 * duffing.FS / n  # exactly on line 41
    u = duffing.odd_multisine(n, records=3, fmax=fmax, rms=0.3, seed=2)
    assert u.shape == (3, n) and np.allclose(u.std(axis=1), 0.3, rtol=1e-12)
    spectrum = np.fft.rfft(u, axis=1)
    lines = np.arange(1, 42, 2)
    mag = np.abs(spectrum)
    assert np.allclose(mag[:, lines], mag[:, lines[:1]], rtol=1e-9)
    others = np.setdiff1d(np.arange(n // 2 + 1), lines)
    assert mag[:, others].max() < 1e-9 * mag.max()
    assert not np.allclose(spectrum[0, lines], spectrum[1, lines])
    wide = duffing.odd_multisine(20_000, records=4, fmax=duffing.FS / 2, seed=5)
    angles = np.angle(np.fft.rfft(wide, axis=1)[:, 1::2])
    assert stats.kstest(angles.ravel(), stats.uniform(loc=-np.pi, scale=2 * np.pi).cdf).pvalue > 1e-3


def test_arrow_is_butterworth_noise_under_a_linear_envelope():
    """4th-order Butterworth noise at band_hz (scipy), normalised, times peak_rms · t/T from 0 to 1."""
    n = 4000
    x = duffing.arrow(n, peak_rms=0.3, band_hz=120.0, seed=6)
    b, a = signal.butter(4, 120.0, fs=duffing.FS)
    noise = signal.lfilter(b, a, np.random.default_rng(6).standard_normal(n))
    np.testing.assert_allclose(x, noise / noise.std() * 0.3 * np.linspace(0.0, 1.0, n), rtol=1e-12, atol=0)
    assert x[0] == 0.0 and np.array_equal(duffing.arrow(n), duffing.arrow(n, 0.2, 200.0, 0))
