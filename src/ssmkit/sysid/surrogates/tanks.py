"""A two-tank SURROGATE of Cascaded Tanks (simulated; not the rig's data): the benchmark's physics (Torricelli
outflows, the upper tank feeding the lower, overflow) with coefficients chosen here (the rig's are not published):

    ẋ₁ = k₄ u − k₁ √x₁            (upper tank, fed by the pump voltage u)
    ẋ₂ = k₂ √x₁ − k₃ √x₂          (lower tank, fed by the upper one)
    y = x₂                        (Ts = 4 s, as the benchmark)

Overflow: a tank level never exceeds its height; a full upper tank overflows at its net inflow rate and the
fraction ``spill`` of that flow falls into the lower tank; the water above the lower tank's height is lost. Levels are in the
sensor's volts. Integration: RK4 with ``substeps`` steps per sample, u held over the sample (a step that overshoots
h₁ spills the excess at once), levels floored at 0. The default coefficients give a time constant of about 100 s (25 samples) per tank near 5 V and
overflow of the upper tank for inputs above about 7 V.

Closed forms (tests): below overflow, a constant u settles at x₁ = (k₄u/k₁)², x₂ = (k₂/k₃)² x₁; with the upper
tank overflowing, x₁ = h₁ and x₂ = ((k₂√h₁ + spill·(k₄u − k₁√h₁))/k₃)².
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TS = 4.0


@dataclass(frozen=True)
class TanksParameters:
    """The surrogate's coefficients.

    Args:
        k1, k2, k3, k4: the flow coefficients (see the module docstring).
        h1, h2: the tanks' heights (V).
        spill: the fraction of the upper tank's overflow that falls into the lower tank.
    """

    k1: float = 0.045
    k2: float = 0.045
    k3: float = 0.045
    k4: float = 0.02
    h1: float = 10.0
    h2: float = 10.0
    spill: float = 0.5


def steady_state(u: float, params: TanksParameters = TanksParameters()) -> tuple[float, float]:
    """The levels (x₁, x₂) at rest under a constant input u (overflow included).

    Args:
        u: the pump voltage (V), >= 0.
        params: the coefficients.
    """
    p = params
    x1 = (p.k4 * u / p.k1) ** 2
    inflow2 = p.k2 * math.sqrt(min(x1, p.h1))
    if x1 > p.h1:
        x1 = p.h1
        inflow2 += p.spill * (p.k4 * u - p.k1 * math.sqrt(p.h1))
    return x1, min((inflow2 / p.k3) ** 2, p.h2)


def simulate(u: np.ndarray, params: TanksParameters = TanksParameters(), x0: tuple[float, float] | None = None,
             dt: float = TS, substeps: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Simulate the two tanks.

    Args:
        u: (n,) pump voltage (V).
        params: the coefficients.
        x0: the initial levels; None starts at rest for the first input (``steady_state(u[0])``).
        dt: the sampling time (s).
        substeps: RK4 steps per sample.

    Returns:
        x₁ and x₂ (n,) at the sampling instants (x₂ is the output y).
    """
    p = params
    u = np.asarray(u, dtype=np.float64).ravel()
    x1, x2 = steady_state(float(u[0]), p) if x0 is None else (float(x0[0]), float(x0[1]))
    h = dt / substeps

    def rate(a, b, uk):
        s1 = math.sqrt(min(max(a, 0.0), p.h1))
        net = p.k4 * uk - p.k1 * s1
        spilled = net if a >= p.h1 and net > 0 else 0.0  # a full upper tank overflows at the net inflow rate
        return net - spilled, p.k2 * s1 + p.spill * spilled - p.k3 * math.sqrt(max(b, 0.0))

    out1, out2 = np.empty_like(u), np.empty_like(u)
    for k, uk in enumerate(u.tolist()):
        out1[k], out2[k] = x1, x2
        for _ in range(substeps):
            d1, e1 = rate(x1, x2, uk)
            d2, e2 = rate(x1 + 0.5 * h * d1, x2 + 0.5 * h * e1, uk)
            d3, e3 = rate(x1 + 0.5 * h * d2, x2 + 0.5 * h * e2, uk)
            d4, e4 = rate(x1 + h * d3, x2 + h * e3, uk)
            x1 += h / 6.0 * (d1 + 2 * d2 + 2 * d3 + d4)
            x2 += h / 6.0 * (e1 + 2 * e2 + 2 * e3 + e4)
            if x1 > p.h1:
                x2 += p.spill * (x1 - p.h1)
                x1 = p.h1
            x1, x2 = max(x1, 0.0), min(max(x2, 0.0), p.h2)
    return out1, out2


def excitation(n: int, mean: float = 5.0, amplitude: float = 3.0, periods_per_record: float = 4.0, lines: int = 8,
               seed: int = 0) -> np.ndarray:
    """A slow random-phase multisine, harmonics 1 … ``lines`` of a base of ``periods_per_record`` cycles per record,
    scaled to ±``amplitude`` around ``mean`` and clipped at 0.

    Args:
        n: samples.
        mean: the mean pump voltage (V).
        amplitude: the peak deviation (V).
        periods_per_record: cycles of the lowest line over the record.
        lines: harmonics of the lowest line excited.
        seed: the phases' seed.

    Returns:
        (n,) pump voltage (V).
    """
    t = np.arange(n) / n
    phases = 2 * np.pi * np.random.default_rng(seed).random(lines)
    u = sum(np.cos(2 * np.pi * periods_per_record * (k + 1) * t + phases[k]) for k in range(lines))
    return np.clip(mean + amplitude * u / np.abs(u).max(), 0.0, None)
