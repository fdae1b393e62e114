"""PNG figures of a model's LTI layers: poles, Bode magnitude and phase, impulse and step responses, learned kernels;
and of a deep Wiener model's equilibria (static characteristic, local stability).

Each function draws one figure with one row per layer and writes it to a PNG; matplotlib is imported inside them
(``pip install matplotlib``) and used through ``matplotlib.figure.Figure``, so no global backend is set.
Channels: a SISO bank (G systems, m = p = 1) shows systems 0..K-1; a MIMO layer (G = 1) shows the diagonal
entries (output i, input i) for i < K.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ssmkit.analysis.layerwise import LayerAnalysis
from ssmkit.analysis.operating import OperatingSweep
from ssmkit.analysis.statespace import StateSpace
from ssmkit.files import save_figure

__all__ = ["channel_pairs", "impulse_response", "plot_bode", "plot_equilibria", "plot_kernels", "plot_poles",
           "plot_responses"]


def _figure(rows: int, cols: int, width: float = 5.0, height: float = 3.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * max(rows, 1)), layout="constrained")
    axes = fig.subplots(max(rows, 1), cols, squeeze=False)
    return fig, axes


def _units(dt: float, seconds: bool | None = None) -> tuple[str, str]:
    """Axis units of time and frequency: seconds and rad/s, or samples and rad/sample (``seconds`` False, or None and
    dt = 1); the report passes ``seconds`` so that a model sampled at Ts = 1 s reads seconds, as its summary does."""
    physical = dt != 1.0 if seconds is None else seconds
    return ("s", "rad/s") if physical else ("samples", "rad/sample")


def channel_pairs(system: StateSpace, channels: int) -> list[tuple[int, int, int]]:
    """The entries a plot shows, as triples of indices (system g, output i, input j): at most ``channels``.

    Args:
        system: the bank.
        channels: K, the most entries to show, >= 1.

    Returns:
        a list of index triples.
    """
    if system.nsystems > 1 or min(system.ninputs, system.noutputs) == 1:
        return [(g, 0, 0) for g in range(min(channels, system.nsystems))]
    return [(0, i, i) for i in range(min(channels, system.ninputs, system.noutputs))]


def impulse_response(system: StateSpace, length: int) -> np.ndarray:
    """h[0] = D, h[l] = C A^{l-1} B for l = 1 .. L-1 (the real part for a complex bank).

    Args:
        system: the bank (G systems, n states, m inputs, p outputs).
        length: L, >= 1.

    Returns:
        (G, p, m, L) float64.
    """
    if not (isinstance(length, int) and length >= 1):
        raise ValueError(f"length must be an int >= 1; got {length!r}")
    A, B, C, D = system.A, system.B, system.C, system.D
    out = np.empty(D.shape + (length,), dtype=A.dtype)  # (G, p, m, L)
    out[..., 0] = D
    X = B  # (G, n, m): A^{l-1} B
    for l in range(1, length):
        out[..., l] = C @ X  # (G, p, m)
        X = A @ X
    return out.real.astype(np.float64)


def plot_poles(results: Sequence[LayerAnalysis], path: str, seconds: bool | None = None) -> str:
    """The poles of every layer: discrete z with the unit circle (top row), equivalent continuous s = log(z)/dt
    (bottom row, 1/s; poles at z = 0 have no finite s and are left out).

    Args:
        results: the layers' analyses.
        path: the PNG to write.
        seconds: whether dt is in seconds (None: when dt ≠ 1; else samples).

    Returns:
        ``path``.
    """
    cols = max(len(results), 1)
    fig, axes = _figure(2, cols, 3.6, 3.4)
    t = np.linspace(0, 2 * np.pi, 400)
    for k in range(cols):
        top, bottom = axes[0, k], axes[1, k]
        if k >= len(results):
            top.set_axis_off()
            bottom.set_axis_off()
            continue
        r = results[k]
        top.plot(np.cos(t), np.sin(t), color="0.6", lw=0.8)
        z = r.poles.ravel()
        top.scatter(z.real, z.imag, s=8, marker="x", color="C3")
        top.set_aspect("equal")
        top.set_title(f"{r.name} ({r.layer})\nρ = {r.spectral_radius:.6f}", fontsize=9)
        top.set_xlabel("Re z")
        top.set_ylabel("Im z")
        s = r.poles_continuous.ravel()
        s = s[np.isfinite(s)]
        unit = "1/s" if _units(r.system.dt, seconds)[0] == "s" else "1/sample"
        bottom.scatter(s.real, s.imag, s=8, marker="x", color="C0")
        bottom.axvline(0.0, color="0.6", lw=0.8)
        bottom.set_xscale("symlog", linthresh=max(float(np.abs(s.real).min()) if s.size else 1.0, 1e-12))
        bottom.set_title(f"s = log(z)/dt, slowest τ = {r.slowest_time_constant:.4g}", fontsize=9)
        bottom.set_xlabel(f"Re s ({unit})")
        bottom.set_ylabel(f"Im s ({unit})")
    save_figure(fig, path)
    return path


def plot_bode(results: Sequence[LayerAnalysis], path: str, channels: int = 8, points: int = 400,
              seconds: bool | None = None) -> str:
    """Bode magnitude (dB) and phase (degrees) of every layer, up to the Nyquist frequency π / dt (rad/s; rad/sample
    when dt = 1).

    Args:
        results: the layers' analyses.
        path: the PNG to write.
        channels: the most channels per layer (see the module docstring; default 8).
        points: frequencies per curve (default 400), log-spaced from 1e-3 × Nyquist or, when the slowest mode is
            slower, from 0.1 / τ_slowest (so the DC plateau shows; not below 1e-7 × Nyquist) up to Nyquist.
        seconds: whether dt is in seconds (None: when dt ≠ 1; else samples).

    Returns:
        ``path``.
    """
    fig, axes = _figure(len(results), 2)
    for row, r in zip(axes, results):
        nyquist = np.pi / r.system.dt
        lowest = 1e-3 * nyquist
        if np.isfinite(r.slowest_time_constant) and r.slowest_time_constant > 0:  # a decade below the slowest corner
            lowest = min(lowest, max(0.1 / r.slowest_time_constant, 1e-7 * nyquist))
        omega = np.logspace(np.log10(lowest), np.log10(nyquist), points)  # (W,) rad/s
        H = r.system.frequency_response(omega)  # (G, p, m, W)
        for g, i, j in channel_pairs(r.system, channels):
            h = H[g, i, j]
            row[0].semilogx(omega, 20 * np.log10(np.maximum(np.abs(h), 1e-300)), lw=0.9)
            row[1].semilogx(omega, np.degrees(np.unwrap(np.angle(h))), lw=0.9)
        row[0].set_title(f"{r.name} ({r.layer}): magnitude, H∞ = {r.hinf.max():.4g}", fontsize=9)
        row[1].set_title(f"{r.name}: phase", fontsize=9)
        row[0].set_ylabel("dB")
        row[1].set_ylabel("degrees")
        for ax in row:
            ax.set_xlabel(f"ω ({_units(r.system.dt, seconds)[1]})")
            ax.grid(True, which="both", lw=0.3)
    save_figure(fig, path)
    return path


def response_length(result: LayerAnalysis, longest: int = 1024) -> int:
    """Samples that show a layer's responses: five slowest time constants, between 32 and ``longest``."""
    tau = result.slowest_time_constant / result.system.dt
    return int(np.clip(np.ceil(5 * tau) if np.isfinite(tau) else longest, 32, longest))


def plot_responses(results: Sequence[LayerAnalysis], path: str, channels: int = 8, longest: int = 1024,
                   seconds: bool | None = None) -> str:
    """Impulse and step responses of every layer (time in seconds; in samples when dt = 1).

    Args:
        results: the layers' analyses.
        path: the PNG to write.
        channels: the most channels per layer (default 8).
        longest: the longest response shown, samples (default 1024).
        seconds: whether dt is in seconds (None: when dt ≠ 1; else samples).

    Returns:
        ``path``.
    """
    fig, axes = _figure(len(results), 2)
    for row, r in zip(axes, results):
        L = response_length(r, longest)
        h = impulse_response(r.system, L)  # (G, p, m, L)
        t = np.arange(L) * r.system.dt
        for g, i, j in channel_pairs(r.system, channels):
            row[0].plot(t, h[g, i, j], lw=0.9)
            row[1].plot(t, np.cumsum(h[g, i, j]), lw=0.9)
        row[0].set_title(f"{r.name} ({r.layer}): impulse response", fontsize=9)
        row[1].set_title(f"{r.name}: step response", fontsize=9)
        for ax in row:
            ax.set_xlabel(f"t ({_units(r.system.dt, seconds)[0]})")
            ax.grid(True, lw=0.3)
    save_figure(fig, path)
    return path


def plot_kernels(kernels: Sequence[tuple[str, np.ndarray]], path: str) -> str:
    """The learned convolution kernels: one image per layer, channels × lags, on a symmetric colour scale.

    Args:
        kernels: (title, K) pairs with K (H, L) (a MIMO layer's diagonal entries).
        path: the PNG to write.

    Returns:
        ``path``.
    """
    fig, axes = _figure(len(kernels), 1, 9.0, 2.6)
    for ax, (title, K) in zip(axes[:, 0], kernels):
        v = float(np.abs(K).max()) or 1.0
        image = ax.imshow(K, aspect="auto", cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("lag (samples)")
        ax.set_ylabel("channel")
        ax.figure.colorbar(image, ax=ax)
    save_figure(fig, path)
    return path


def plot_equilibria(sweeps: Sequence[OperatingSweep], path: str, channels: int = 8) -> str:
    """A deep Wiener model's static characteristic y*(u) along each swept input, and the spectral radius of its
    linearisation at each equilibrium (one row per input; :func:`ssmkit.analysis.operating_sweeps`).

    Args:
        sweeps: the sweeps, one per input.
        path: the PNG to write.
        channels: the most outputs drawn (default 8).

    Returns:
        ``path``.
    """
    fig, axes = _figure(len(sweeps), 2)
    for row, sweep in zip(axes, sweeps):
        u = sweep.u[:, sweep.input]
        for k in range(min(channels, sweep.y.shape[1])):
            row[0].plot(u, sweep.y[:, k], marker=".", lw=0.9, label=sweep.output_label(k))
        row[0].set_title(f"equilibria along {sweep.input_label()} (others at their means): y*", fontsize=9)
        row[0].legend(fontsize=7)
        row[1].plot(u, sweep.spectral_radius, marker=".", lw=0.9)
        row[1].axhline(1.0, color="k", lw=0.6, ls="--")
        row[1].set_title("spectral radius of the linearisation there", fontsize=9)
        for ax in row:
            ax.set_xlabel(sweep.input_label())
            ax.grid(True, lw=0.3)
    save_figure(fig, path)
    return path
