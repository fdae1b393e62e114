"""A Duffing-oscillator SURROGATE of Silverbox (simulated; not the Silverbox data): Silverbox's structure, a
second-order LTI system with a cubic stiffness in feedback, with parameters chosen here (the circuit's are not
published), written with a unit static gain:

    ÿ + 2ζω₀ ẏ + ω₀² (y + k₃ y³) = ω₀² u          (fs = 610.35 Hz, as Silverbox)

Defaults: f₀ = ω₀/2π = 60 Hz, ζ = 0.05, k₃ = 2 V⁻². The input is held constant between samples (zero-order hold) and
the equation is integrated by classic RK4 from rest, with ``substeps`` steps per sample doubled until two successive
step counts agree to ``TOL`` (relative to the largest |y|): the stiffness ω₀²(1 + 3k₃y²) grows with the amplitude, and
a fixed 10 steps per sample, accurate to 1e-5 at the default amplitude, missed the ODE's solution (scipy's DOP853 at
rtol 1e-13) by 44 % on an arrow of peak RMS 0.4 (``duffing_surrogate(rms=0.2)``'s). Excitations as Silverbox's:
odd random-phase multisines (training) and an "arrow" of low-passed Gaussian noise whose amplitude grows linearly,
its end beyond the training amplitude (test).

Checks (tests): k₃ = 0 gives the linear frequency response ω₀²/(ω₀² − ω² + 2iζω₀ω); ζ = 0 and u = 0 conserve the
energy E = ½ẏ² + ω₀²(½y² + ¼k₃y⁴).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import signal

FS = 610.35
TOL = 1e-4  # agreement of successive step counts (relative to max |y|) at which simulate stops refining
MAX_DOUBLINGS = 5  # at most 32 × substeps steps per sample


@dataclass(frozen=True)
class DuffingParameters:
    """The surrogate's coefficients.

    Args:
        f0: the linear natural frequency ω₀/2π (Hz).
        zeta: the damping ratio ζ.
        k3: the cubic stiffness coefficient k₃ (V⁻²); 0 is the linear limit.
    """

    f0: float = 60.0
    zeta: float = 0.05
    k3: float = 2.0


def simulate(u: np.ndarray, params: DuffingParameters = DuffingParameters(), dt: float = 1.0 / FS, substeps: int = 10,
             state: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Integrate the oscillator over one or several records at once (RK4, zero-order-hold input).

    The record is integrated with ``substeps``, 2·``substeps``, 4·``substeps``, ... RK4 steps per sample until two
    successive results differ by at most ``TOL`` · max |y| (at most ``MAX_DOUBLINGS`` doublings; a warning if not
    reached); the finer one is returned, its error about a fifteenth of that difference (RK4 is fourth order). A
    step count at which RK4 is unstable (y not finite) is refined like any other: the oscillator itself is stable.

    Args:
        u: (L,) or (B, L) inputs (V), B records simulated together.
        params: the coefficients.
        dt: the sampling time (s).
        substeps: the fewest RK4 steps per sample, an int >= 1.
        state: the initial (y, ẏ).

    Returns:
        y at the sampling instants, the shape of ``u`` (the first sample is the initial y).
    """
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"substeps must be an int >= 1 (RK4 steps per sample); got {substeps!r}")
    coarse = _rk4(u, params, dt, substeps, state)
    for _ in range(MAX_DOUBLINGS):
        substeps *= 2
        fine = _rk4(u, params, dt, substeps, state)  # a non-finite result compares False: refine further
        if np.max(np.abs(fine - coarse), initial=0.0) <= TOL * max(np.max(np.abs(fine), initial=0.0), 1e-300):
            return fine
        coarse = fine
    warnings.warn(f"duffing.simulate: {substeps} RK4 steps per sample still change y by more than {TOL} of its "
                  "largest value (or y is not finite): the amplitude is beyond what this dt resolves", stacklevel=2)
    return fine


def _rk4(u: np.ndarray, params: DuffingParameters, dt: float, substeps: int, state: tuple[float, float]) -> np.ndarray:
    """RK4 with a fixed ``substeps`` steps per sample (:func:`simulate`'s arguments)."""
    one = np.ndim(u) == 1
    u = np.atleast_2d(np.asarray(u, dtype=np.float64))  # (B, L)
    w2, c, k3 = (2.0 * math.pi * params.f0) ** 2, 4.0 * math.pi * params.f0 * params.zeta, params.k3
    h = dt / substeps
    if one:  # python floats: several times faster than numpy scalars
        y, v = float(state[0]), float(state[1])
        uu = u[0].tolist()
    else:
        y, v = np.full(u.shape[0], float(state[0])), np.full(u.shape[0], float(state[1]))
        uu = u.T
    out = []
    for uk in uu:
        out.append(y)
        for _ in range(substeps):
            a1 = w2 * (uk - y - k3 * y * y * y) - c * v
            y2, v2 = y + 0.5 * h * v, v + 0.5 * h * a1
            a2 = w2 * (uk - y2 - k3 * y2 * y2 * y2) - c * v2
            y3, v3 = y + 0.5 * h * v2, v + 0.5 * h * a2
            a3 = w2 * (uk - y3 - k3 * y3 * y3 * y3) - c * v3
            y4, v4 = y + h * v3, v + h * a3
            a4 = w2 * (uk - y4 - k3 * y4 * y4 * y4) - c * v4
            y = y + h / 6.0 * (v + 2.0 * v2 + 2.0 * v3 + v4)
            v = v + h / 6.0 * (a1 + 2.0 * a2 + 2.0 * a3 + a4)
    return np.asarray(out) if one else np.stack(out, axis=1)


def odd_multisine(n: int, records: int = 1, fmax: float = 200.0, rms: float = 0.1, seed: int = 0) -> np.ndarray:
    """Odd random-phase multisines (every odd line f₀(2k+1) below ``fmax``, f₀ = fs/n, unit amplitude, uniform
    phases), one period each, scaled to ``rms``.

    Args:
        n: samples per period (>= 4, and fs / n <= fmax: at least one line is excited).
        records: independent realisations.
        fmax: the highest excited frequency (Hz).
        rms: the RMS (V).
        seed: the phases' seed.

    Returns:
        (B, L) inputs (V), B = ``records``, L = ``n``.
    """
    lines = np.arange(1, n // 2, 2)
    lines = lines[lines * FS / n <= fmax]
    if lines.size == 0:  # an empty spectrum was scaled by its zero RMS: all NaN
        raise ValueError(f"no odd line f0 (2k + 1) with f0 = fs / n = {FS / n:.6g} Hz lies below the Nyquist frequency "
                         f"and fmax = {fmax} Hz: use n >= 4 and fmax >= fs / n; got n = {n}")
    rng = np.random.default_rng(seed)
    spectrum = np.zeros((records, n // 2 + 1), dtype=np.complex128)
    spectrum[:, lines] = np.exp(2j * np.pi * rng.random((records, lines.size)))
    u = np.fft.irfft(spectrum, n, axis=1)
    return u * (rms / u.std(axis=1, keepdims=True))


def arrow(n: int, peak_rms: float = 0.2, band_hz: float = 200.0, seed: int = 0) -> np.ndarray:
    """Low-passed Gaussian noise (4th-order Butterworth at ``band_hz``) whose amplitude grows linearly from 0 to
    ``peak_rms`` (the Silverbox "arrow" test).

    Args:
        n: samples (>= 2).
        peak_rms: the local RMS at the end (V).
        band_hz: the cut-off (Hz).
        seed: the noise seed.

    Returns:
        (n,) input (V).
    """
    if n < 2:  # one sample's noise has no spread to normalise by (it gave NaN)
        raise ValueError(f"an arrow needs n >= 2 samples (its amplitude grows from 0 to peak_rms); got n = {n}")
    b, a = signal.butter(4, band_hz, fs=FS)
    noise = signal.lfilter(b, a, np.random.default_rng(seed).standard_normal(n))
    return noise / noise.std() * peak_rms * np.linspace(0.0, 1.0, n)
