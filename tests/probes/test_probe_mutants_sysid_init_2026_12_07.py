"""Mutation probe (2026-12-07) of sysid/init, analysis/operating, analysis/zoo and the Duffing and Cascaded Tanks
surrogates (sysid/surrogates/duffing.py, tanks.py): the mutants that the modules' own tests let survive. Each test
names the mutants it kills (ids of the round's table in the report) and checks the code against an independent
reference: the closed-form free response of a damped linear oscillator, the Torricelli equations integrated by
scipy's DOP853.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import solve_ivp

from ssmkit.sysid.surrogates import duffing, tanks


# ------------------------------------------------------------------------------------------------------------------
# surrogates/duffing.py


def test_duffing_one_record_starts_from_the_given_velocity():
    """Kills D15 (the one-record path started from ẏ = 0 whatever ``state`` said; the batched path read it).

    k₃ = 0 and u = 0 from (y, ẏ) = (0, v₀): the free response y(t) = v₀/ω_d e^{−ζω₀t} sin(ω_d t), ω_d = ω₀√(1 − ζ²)."""
    p = duffing.DuffingParameters(k3=0.0, zeta=0.05)
    w0 = 2 * math.pi * p.f0
    wd = w0 * math.sqrt(1 - p.zeta ** 2)
    v0, n = 3.0, 200
    t = np.arange(n) / duffing.FS
    ref = v0 / wd * np.exp(-p.zeta * w0 * t) * np.sin(wd * t)
    for u in (np.zeros(n), np.zeros((2, n))):
        y = duffing.simulate(u, p, state=(0.0, v0))
        assert y.shape == u.shape
        assert np.abs(y - ref).max() < 1e-6 * np.abs(ref).max()


# ------------------------------------------------------------------------------------------------------------------
# surrogates/tanks.py


def _torricelli(u: np.ndarray, p: tanks.TanksParameters, x0: tuple[float, float], dt: float) -> np.ndarray:
    """ẋ₁ = k₄u − k₁√x₁, ẋ₂ = k₂√x₁ − k₃√x₂ (below overflow), u held over each sample: DOP853 at rtol 1e-11."""
    out, state = [x0], list(x0)
    for uk in u[:-1]:
        def rhs(_, x, uk=uk):
            return [p.k4 * uk - p.k1 * math.sqrt(max(x[0], 0.0)),
                    p.k2 * math.sqrt(max(x[0], 0.0)) - p.k3 * math.sqrt(max(x[1], 0.0))]
        state = list(solve_ivp(rhs, (0.0, dt), state, method="DOP853", rtol=1e-11, atol=1e-13).y[:, -1])
        out.append(tuple(state))
    return np.array(out)


def test_tanks_integrate_over_the_given_sampling_time():
    """Kills T17 (the RK4 step h = Ts/substeps with the benchmark's Ts = 4 s instead of the ``dt`` asked for: at
    dt = 1 s each sample integrated 4 s). The levels at every sample against DOP853 (below overflow)."""
    p = tanks.TanksParameters()
    u = tanks.excitation(200, mean=5.0, amplitude=3.0, seed=4)
    x1, x2 = tanks.simulate(u, p, x0=(1.0, 2.0), dt=1.0)
    ref = _torricelli(u, p, (1.0, 2.0), 1.0)
    assert ref.max() < min(p.h1, p.h2) - 1.0  # no overflow: the ODE alone
    assert np.abs(x1 - ref[:, 0]).max() < 1e-9 and np.abs(x2 - ref[:, 1]).max() < 1e-9
