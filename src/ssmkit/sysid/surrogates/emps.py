"""An EMPS SURROGATE (simulated; not the EMPS data): the physics of the electro-mechanical positioning system with
its published parameters, in closed loop as the benchmark was measured (Janot, Gautier & Brunot 2019):

    M q̈ = g_τ·v − F_v q̇ − F_c sign(q̇) − offset            (plant: a mass with viscous and Coulomb friction)
    v_k = sat_{±10 V}( k_v (k_p (q_g,k − q_k) − (q_k − q_{k−1})/Ts) )   (position and velocity cascade, 1 kHz)

M = 95.1089 kg, F_v = 203.5034 N s/m, F_c = 20.3935 N, offset = −3.1648 N (the official simulation script's values),
k_p = 160.18, k_v = 243.45, g_τ = 35.1507 N/V (stored in DATA_EMPS.mat), Ts = 1 ms. The controller's form, P on the
position error and P on the velocity with the velocity a backward difference, is read off the data: on DATA_EMPS.mat
``vir`` matches it with 1 % relative residual (least squares gives 1.04·k_v·k_p and 1.05·k_v). The benchmark's input
is u = v (``vir``), the output y = q (``qm``). The plant is integrated with ``substeps`` semi-implicit Euler steps per
sample, the voltage held; the Coulomb force sticks the mass (q̇ = 0) when a step would reverse the velocity and the
other forces do not exceed F_c.

Closed forms (tests): a constant net force F > F_c from rest gives the terminal velocity (F − F_c)/F_v; a step of
the reference without friction (F_c = 0) settles at q = q_g − offset/(g_τ k_v k_p).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TS = 1e-3


@dataclass(frozen=True)
class EMPSParameters:
    """The published physical and controller parameters (SI units)."""

    M: float = 95.1089
    Fv: float = 203.5034
    Fc: float = 20.3935
    offset: float = -3.1648
    kp: float = 160.18
    kv: float = 243.45
    gtau: float = 35.1507
    v_max: float = 10.0


def _plant_step(q: float, v: float, force: float, p: EMPSParameters, h: float) -> tuple[float, float]:
    """One semi-implicit Euler step of M q̈ = force − F_v q̇ − F_c sign(q̇) − offset, with sticking."""
    drive = force - p.offset
    if v == 0.0 and abs(drive) <= p.Fc:
        return q, 0.0  # static friction holds
    sign = np.sign(v) if v != 0.0 else np.sign(drive)
    v_new = (v * p.M + h * (drive - p.Fc * sign)) / (p.M + h * p.Fv)  # viscous term implicit
    if v != 0.0 and np.sign(v_new) != np.sign(v) and abs(drive) <= p.Fc:
        v_new = 0.0  # the velocity reached zero and friction holds it there
    return q + h * v_new, v_new


def simulate_plant(force: np.ndarray, params: EMPSParameters = EMPSParameters(), dt: float = TS,
                   substeps: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The plant alone in open loop, from rest at q = 0.

    Args:
        force: (n,) applied force (N), held over each sample.
        params: the parameters.
        dt: the sampling time (s).
        substeps: integration steps per sample.

    Returns:
        position q (m) and velocity q̇ (m/s), (n,) each, at the sampling instants.
    """
    q = v = 0.0
    qs, vs = np.empty(len(force)), np.empty(len(force))
    for k, f in enumerate(np.asarray(force, dtype=np.float64).tolist()):
        qs[k], vs[k] = q, v
        for _ in range(substeps):
            q, v = _plant_step(q, v, f, params, dt / substeps)
    return qs, vs


def simulate(reference: np.ndarray, params: EMPSParameters = EMPSParameters(), dt: float = TS, substeps: int = 10,
             q0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The closed loop tracking a reference position, from rest at ``q0``.

    Args:
        reference: (n,) reference position q_g (m).
        params: the parameters.
        dt: the sampling time (s).
        substeps: plant integration steps per sample.
        q0: the initial position (m).

    Returns:
        the controller's voltage v (``vir``, V) and the position q (``qm``, m), (n,) each.
    """
    p = params
    q, v, q_prev = float(q0), 0.0, float(q0)
    volts, qs = np.empty(len(reference)), np.empty(len(reference))
    for k, qg in enumerate(np.asarray(reference, dtype=np.float64).tolist()):
        u = p.kv * (p.kp * (qg - q) - (q - q_prev) / dt)
        u = min(max(u, -p.v_max), p.v_max)
        volts[k], qs[k] = u, q
        q_prev = q
        for _ in range(substeps):
            q, v = _plant_step(q, v, p.gtau * u, p, dt / substeps)
    return volts, qs


def reference(n: int, low: float = 0.0, high: float = 0.2, move_s: tuple[float, float] = (0.5, 2.0),
              dwell_s: tuple[float, float] = (0.2, 1.0), dt: float = TS, seed: int = 0) -> np.ndarray:
    """A point-to-point reference like the benchmark's: moves between random positions in [low, high] along
    minimum-jerk profiles (10s³ − 15s⁴ + 6s⁵) of random durations, with random dwells, starting at ``low``.

    Args:
        n: samples.
        low, high: the position range (m).
        move_s: the range of move durations (s).
        dwell_s: the range of dwell durations (s).
        dt: the sampling time (s).
        seed: the seed.

    Returns:
        (n,) reference position (m).
    """
    rng = np.random.default_rng(seed)
    out, q = [], low
    while sum(len(p) for p in out) < n:
        target = rng.uniform(low, high)
        s = np.linspace(0.0, 1.0, max(2, int(rng.uniform(*move_s) / dt)))
        out.append(q + (target - q) * (10 * s**3 - 15 * s**4 + 6 * s**5))
        out.append(np.full(int(rng.uniform(*dwell_s) / dt), target))
        q = target
    return np.concatenate(out)[:n]
