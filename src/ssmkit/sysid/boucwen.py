"""The Bouc-Wen hysteretic benchmark (Noël & Schoukens, Workshop on Nonlinear System Identification Benchmarks 2016):
a faithful simulator of the published equations, the benchmark's multisine recipe and its official test protocol.

    m ÿ + c ẏ + k y + z = u
    ż = α ẏ - β (γ |ẏ| |z|^(ν-1) z + δ ẏ |z|^ν)

with m = 2 kg, c = 10 N s/m, k = 5·10⁴ N/m, α = 5·10⁴ N/m, β = 10³ m⁻¹, γ = 0.8, δ = -1.1, ν = 1 (linear mode
35.59 Hz, damping 1.12 %); input u is a force (N), output y the displacement (m).

As the benchmark's example script does: the system is integrated at 15 kHz (20 × the 750 Hz working rate) by the
Newmark average-acceleration scheme (a = 1/2, b = 1/4, and the trapezoidal rule (c = 1/2) for z) with a
Newton-Raphson correction of (ÿ, z) at every step, from zero initial conditions; the output is low-pass filtered
and decimated by 30th-order FIR filters in factors 2·2·5 back to 750 Hz. A multisine experiment simulates one
extra period at the end and drops it (the filter's edge), so its first period carries the transient.

The official test sets are fixed files (noiseless, 750 Hz): the multisine (8 192 samples, one steady-state period)
and the sine sweep (153 000 samples from rest). :func:`simulate` reproduces them from their inputs: the periodic
multisine input is interpolated to 15 kHz exactly (it is band-limited), the sweep by a polyphase FIR (±40 samples,
Kaiser β = 12: ≤ 1.5e-6 of the amplitude up to 300 Hz; scipy's default filter left 1e-3, a 0.06 % error in the output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import signal

FS = 750.0  # the benchmark's working sampling rate (Hz)
UPSAMPLE = 20  # integration at 15 kHz


@dataclass(frozen=True)
class BoucWenParameters:
    """The benchmark's physical parameters (SI units), Table 1 of the benchmark document."""

    m: float = 2.0
    c: float = 10.0
    k: float = 5e4
    alpha: float = 5e4
    beta: float = 1e3
    gamma: float = 0.8
    delta: float = -1.1
    nu: float = 1.0


def _z_rate(p: BoucWenParameters, v: float, z: float) -> tuple[float, float, float]:
    """ż = f(ẏ, z) and its partial derivatives ∂f/∂ẏ, ∂f/∂z."""
    az = abs(z)
    av = abs(v)
    sv = 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)
    sz = 1.0 if z > 0 else (-1.0 if z < 0 else 0.0)
    if p.nu == 1.0:
        f = p.alpha * v - p.beta * (p.gamma * av * z + p.delta * v * az)
        df_dv = p.alpha - p.beta * (p.gamma * sv * z + p.delta * az)
        df_dz = -p.beta * (p.gamma * av + p.delta * v * sz)
        return f, df_dv, df_dz
    zn1 = az ** (p.nu - 1.0) if az > 0 else 0.0
    f = p.alpha * v - p.beta * (p.gamma * av * zn1 * z + p.delta * v * az ** p.nu)
    df_dv = p.alpha - p.beta * (p.gamma * sv * zn1 * z + p.delta * az ** p.nu)
    df_dz = -p.beta * (p.gamma * av * p.nu * zn1 + p.delta * v * p.nu * zn1 * sz)
    return f, df_dv, df_dz


def integrate_newmark(u: np.ndarray, h: float, params: BoucWenParameters = BoucWenParameters(),
                      tol: float = 1e-12, max_iter: int = 20) -> np.ndarray:
    """Integrate the Bouc-Wen equations at the input's rate by Newmark (a = 1/2, b = 1/4; c = 1/2 for z) with
    Newton-Raphson on (ÿ, z) at each step, from y = ẏ = z = 0.

    Args:
        u: (n,) force samples at the integration rate (N).
        h: the integration step (s).
        params: the physical parameters.
        tol: Newton stopping tolerance on the scaled residuals.
        max_iter: Newton iterations per step at most.

    Returns:
        (n,) displacement y (m) at the same instants.
    """
    p = params
    a, b, cz = 0.5, 0.25, 0.5
    uu = np.asarray(u, dtype=np.float64).tolist()
    out = [0.0] * len(uu)
    y = v = z = 0.0
    acc = (uu[0] - p.c * v - p.k * y - z) / p.m if uu else 0.0
    zdot = _z_rate(p, v, z)[0]
    j11 = p.m + p.c * a * h + p.k * b * h * h
    for n in range(1, len(uu)):
        u1 = uu[n]
        y_pred = y + h * v + h * h * (0.5 - b) * acc
        v_pred = v + h * (1.0 - a) * acc
        acc1, z1 = acc, z  # Newton from the previous values
        for _ in range(max_iter):
            v1 = v_pred + a * h * acc1
            y1 = y_pred + b * h * h * acc1
            f, df_dv, df_dz = _z_rate(p, v1, z1)
            r1 = p.m * acc1 + p.c * v1 + p.k * y1 + z1 - u1
            r2 = z1 - z - h * ((1.0 - cz) * zdot + cz * f)
            j21 = -h * cz * df_dv * a * h
            j22 = 1.0 - h * cz * df_dz
            det = j11 * j22 - j21  # j12 = 1
            d_acc = (r1 * j22 - r2) / det
            d_z = (j11 * r2 - j21 * r1) / det
            acc1 -= d_acc
            z1 -= d_z
            if abs(d_acc) * h * h <= tol * 1e-3 and abs(d_z) <= tol * max(1.0, abs(z1)):
                break
        v1 = v_pred + a * h * acc1
        y1 = y_pred + b * h * h * acc1
        y, v, acc, z = y1, v1, acc1, z1
        zdot = _z_rate(p, v, z)[0]
        out[n] = y
    return np.asarray(out)


def decimate(y: np.ndarray, factor: int = UPSAMPLE) -> np.ndarray:
    """Low-pass filter and decimate by 30th-order FIR filters, one per prime factor of ``factor`` (2·2·5 for 20).

    Args:
        y: (n,) signal at the integration rate.
        factor: the total decimation.

    Returns:
        (n / factor,) signal at the working rate.
    """
    out = np.asarray(y, dtype=np.float64)
    for q in _prime_factors(factor):
        out = signal.decimate(out, q, n=30, ftype="fir", zero_phase=True)
    return out


def _prime_factors(n: int) -> list[int]:
    factors, d = [], 2
    while n > 1:
        while n % d == 0:
            factors.append(d)
            n //= d
        d += 1
    return factors


def _interpolator() -> np.ndarray:
    """The 20× interpolation FIR of :func:`simulate`: ±40 input samples, cut-off at the input's Nyquist frequency,
    Kaiser β = 12 (pure tones at 750 Hz are interpolated to ≤ 1.5e-6 of their amplitude up to 300 Hz)."""
    return signal.firwin(2 * UPSAMPLE * 40 + 1, 1.0 / UPSAMPLE, window=("kaiser", 12.0))


def simulate(u: np.ndarray, periodic: bool, params: BoucWenParameters = BoucWenParameters(),
             periods: int = 2) -> np.ndarray:
    """The benchmark's response to a 750 Hz input record, as the official test files were made.

    A periodic input (one period of a multisine) is interpolated to 15 kHz exactly (band-limited, by FFT), run for
    ``periods`` + 1 periods from rest, decimated, and the last full steady-state period before the dropped edge
    period is returned. A non-periodic input (the sine sweep) is interpolated by a polyphase FIR (``_interpolator``:
    ≤ 1.5e-6 of the amplitude for content below 300 Hz) and run once from rest.

    Args:
        u: (n,) input force at 750 Hz (N).
        periodic: whether ``u`` is one period of a periodic input.
        params: the physical parameters.
        periods: steady-state periods simulated before the returned one is taken (periodic input only), >= 1.

    Returns:
        (n,) displacement at 750 Hz (m).
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    n = u.shape[0]
    h = 1.0 / (FS * UPSAMPLE)
    if periodic:
        fine = signal.resample(u, n * UPSAMPLE)  # exact for a band-limited periodic signal
        y = decimate(integrate_newmark(np.tile(fine, periods + 1), h, params))
        return y[(periods - 1) * n: periods * n]
    fine = signal.resample_poly(u, UPSAMPLE, 1, window=_interpolator())
    return decimate(integrate_newmark(fine, h, params))[:n]


def multisine(periods: int, n: int = 8192, fmin: float = 5.0, fmax: float = 150.0, rms: float = 50.0,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random-phase multisine as the benchmark's example script makes it: every line of the 15 kHz period
    between ⌊fmin/f₀⌋ and ⌈fmax/f₀⌉ (f₀ = 750 / n Hz), unit amplitude, uniform random phases, scaled to ``rms``.

    Args:
        periods: periods P (each n samples at 750 Hz).
        n: samples per period at 750 Hz.
        fmin, fmax: the excited band (Hz).
        rms: the RMS force (N).
        seed: the seed of the phases.

    Returns:
        u at 15 kHz (P·n·20,) and at 750 Hz (P·n,).
    """
    n_fine = n * UPSAMPLE
    f0 = FS * UPSAMPLE / n_fine
    lines = np.arange(1, math.ceil(fmax / f0) + 1)
    lines = lines[lines >= math.floor(fmin / f0)]
    spectrum = np.zeros(n_fine, dtype=np.complex128)
    spectrum[lines] = np.exp(2j * np.pi * np.random.default_rng(seed).random(lines.size))
    period = 2.0 * np.real(np.fft.ifft(spectrum))
    period *= rms / period.std()
    fine = np.tile(period, periods)
    return fine, fine[::UPSAMPLE].copy()


def sine_sweep(n: int = 153000, amplitude: float = 40.0, f_start: float = 18.0, rate: float = 1.0 / 6.0) -> tuple[np.ndarray, np.ndarray]:
    """The official sine-sweep test input, u(t) = A sin(2π (f₀ t + r t² / 2)) with A = 40 N, f₀ = 18 Hz and
    r = 10 Hz/min (18 → 52 Hz over 204 s); these values reproduce the official ``uval_sinesweep`` to 1e-9 N.

    Args:
        n: samples at 750 Hz (153 000 in the benchmark).
        amplitude: A (N).
        f_start: f₀ (Hz).
        rate: r (Hz/s).

    Returns:
        u at 15 kHz (20·n,) and at 750 Hz (n,).
    """
    t = np.arange(n * UPSAMPLE) / (FS * UPSAMPLE)
    fine = amplitude * np.sin(2.0 * np.pi * (f_start * t + 0.5 * rate * t * t))
    return fine, fine[::UPSAMPLE].copy()


def training_record(periods: int = 5, seed: int = 0, noise_rms: float = 0.0,
                    params: BoucWenParameters = BoucWenParameters()) -> tuple[np.ndarray, np.ndarray]:
    """One training record by the benchmark's recipe: a ``periods``-period multisine (5–150 Hz, 50 N RMS, 8 192
    samples per period) plus one extra period, simulated from rest at 15 kHz, decimated, the extra period dropped;
    optional output noise (the benchmark adds band-limited 0–375 Hz noise of 8·10⁻⁶ m RMS: white at 750 Hz).

    Args:
        periods: P kept periods (the first carries the transient from rest).
        seed: the multisine phases' seed (the noise uses seed + 1).
        noise_rms: RMS of the output noise (m); 0 for noiseless data.
        params: the physical parameters.

    Returns:
        u (P·8192,) in N and y (P·8192,) in m, at 750 Hz.
    """
    fine, coarse = multisine(periods + 1, seed=seed)
    y = decimate(integrate_newmark(fine, 1.0 / (FS * UPSAMPLE), params))
    n = periods * 8192
    y = y[:n]
    if noise_rms > 0:
        y = y + noise_rms * np.random.default_rng(seed + 1).standard_normal(n)
    return coarse[:n], y
