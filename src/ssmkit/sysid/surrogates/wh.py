"""A Wiener-Hammerstein SURROGATE (simulated; not the WH 2009 data): the benchmark's structure, an LTI filter, a
static nonlinearity and a second LTI filter, with parameters chosen here (the circuit's values are not published):

    x = G₁ u,   w = f(x),   y = G₂ w            (fs = 51.2 kHz, as the benchmark)

G₁ is a 3rd-order Chebyshev type I low-pass (0.5 dB ripple, 4.4 kHz edge), G₂ a 3rd-order inverse Chebyshev (type II)
low-pass (40 dB stop band from 5 kHz), as the benchmark paper (Schoukens, Suykens & Ljung 2009) describes its
filters (values recalled, unverified); both are designed by :func:`scipy.signal.cheby1`/``cheby2`` at fs and have
DC gain 1 (G₁ because its order is odd: an even-order Chebyshev I starts at the ripple's bottom, 10^(−ripple/20)).
"Inverse Chebyshev" names the type II design: G₂ is not G₁'s inverse. f is a one-sided soft clamp standing for the
diode: f(x) = x for x ≤ 0, s·tanh(x/s) for x > 0 (s the clamp level, smooth to second order at 0). The excitation
is Gaussian noise low-passed by a 4th-order Butterworth at 10 kHz and scaled to ``rms`` (the benchmark's is filtered
Gaussian noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

FS = 51200.0


@dataclass(frozen=True)
class WHParameters:
    """The surrogate's filters and nonlinearity.

    Args:
        order: the order of both filters.
        ripple_db: G₁'s pass-band ripple (dB).
        edge_hz: G₁'s pass-band edge (Hz).
        stop_db: G₂'s stop-band attenuation (dB).
        stop_hz: G₂'s stop-band edge (Hz).
        clamp: s, the level of the soft clamp (V); None for f(x) = x (the linear limit).
    """

    order: int = 3
    ripple_db: float = 0.5
    edge_hz: float = 4400.0
    stop_db: float = 40.0
    stop_hz: float = 5000.0
    clamp: float | None = 0.3


def filters(params: WHParameters = WHParameters()) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The numerator and denominator coefficients [b, a] of G₁ (Chebyshev I) and of G₂ (inverse Chebyshev), discrete
    at fs = 51.2 kHz."""
    g1 = signal.cheby1(params.order, params.ripple_db, params.edge_hz, fs=FS)
    g2 = signal.cheby2(params.order, params.stop_db, params.stop_hz, fs=FS)
    return g1, g2


def nonlinearity(x: np.ndarray, clamp: float | None) -> np.ndarray:
    """f(x) = x for x ≤ 0, s·tanh(x/s) for x > 0 (s = ``clamp``); identity when ``clamp`` is None."""
    x = np.asarray(x, dtype=np.float64)
    if clamp is None:
        return x.copy()
    return np.where(x > 0, clamp * np.tanh(np.maximum(x, 0.0) / clamp), x)


def simulate(u: np.ndarray, params: WHParameters = WHParameters()) -> np.ndarray:
    """The surrogate's output from rest.

    Args:
        u: (n,) input (V) at 51.2 kHz.
        params: filters and nonlinearity.

    Returns:
        (n,) output (V).
    """
    (b1, a1), (b2, a2) = filters(params)
    return signal.lfilter(b2, a2, nonlinearity(signal.lfilter(b1, a1, np.asarray(u, dtype=np.float64)), params.clamp))


def excitation(n: int, rms: float = 0.5, band_hz: float = 10000.0, seed: int = 0) -> np.ndarray:
    """Gaussian noise low-passed (4th-order Butterworth at ``band_hz``) and scaled to ``rms``.

    Args:
        n: samples.
        rms: the RMS (V).
        band_hz: the cut-off (Hz).
        seed: the noise seed.

    Returns:
        (n,) input (V) at 51.2 kHz.
    """
    b, a = signal.butter(4, band_hz, fs=FS)
    u = signal.lfilter(b, a, np.random.default_rng(seed).standard_normal(n))
    return u * (rms / u.std())
