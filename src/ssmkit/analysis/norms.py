"""System norms of a bank of discrete-time systems: the largest singular value and the H-infinity norm.

For a stable discrete-time system with transfer function H(z),

    ||H||_∞ = sup_{θ ∈ [0, π]} σ_max(H(e^{jθ}))

(Zhou, Doyle & Glover, Robust and Optimal Control, 1996, §4.3; θ ∈ [0, π] suffices for a real system, whose
H(e^{-jθ}) = conj H(e^{jθ})). ``StateSpace.hinf_norm`` evaluates it through these functions.

Letters: G systems, n states, m inputs, p outputs, W evaluation points per system.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = ["hinf_norm", "sigma_max"]

# Uniform grid points on [0, pi] used by `hinf_norm` before refinement (pole angles are added to it).
_HINF_GRID = 512
# Golden-section iterations of `hinf_norm`: shrink each bracket by 0.618**80 ~ 2e-17 (to float resolution).
_HINF_ITERS = 80
# Number of grid local maxima refined per system by `hinf_norm`.
_HINF_PEAKS = 4


def sigma_max(H: np.ndarray) -> np.ndarray:
    """Largest singular value σ_max(H) of each p × m response matrix H[g, :, :, w].

    A row or column (p = 1 or m = 1) is a vector, whose σ_max is its Euclidean norm (computed as max |h| ·
    ‖h / max |h|‖, so that no square under- or overflows for |h| beyond 1e±154); otherwise an SVD.

    Args:
        H: (G, p, m, W) complex responses.

    Returns:
        (G, W) float64.
    """
    if H.ndim != 4:
        raise ValueError(f"H must be (G, p, m, W) (4 dimensions); got {tuple(H.shape)}")
    H = H.transpose(0, 3, 1, 2)  # (G, W, p, m)
    if H.shape[2] == 1 or H.shape[3] == 1:
        # a vector's norm is its σ_max; scaled by its largest entry so that |H|² cannot under- or overflow
        size = np.abs(H)  # (G, W, p, m)
        top = size.max((2, 3))  # (G, W)
        unit = np.where((top > 0.0) & (top < np.inf), top, 1.0)[..., None, None]  # (G, W, 1, 1)
        return top * np.sqrt(((size / unit) ** 2).sum((2, 3)))  # (G, W): inf stays inf, NaN NaN
    return np.linalg.svd(H, compute_uv=False)[..., 0]  # (G, W)


def hinf_norm(gain: Callable[[np.ndarray], np.ndarray], poles: np.ndarray) -> np.ndarray:
    """H-infinity norm sup_{θ ∈ [0, π]} gain(θ) of G stable systems, gain(θ) = σ_max(H(e^{jθ})).

    For a `StateSpace` call ``ss.hinf_norm()``, which gives inf to unstable systems and calls this for the rest.

    Algorithm: 1. the gain on a grid of 512 uniform angles plus, for every pole λ, the angles
    |arg λ| + k (1 - |λ|), k in {0, ±½, ±1, ±2}, folded back into [0, π] (so resonances narrower than the grid are
    sampled); 2. the 4 largest local maxima of the grid (a repeated angle counted once) are refined by
    golden-section search between their distinct grid neighbours (80 steps, to float resolution in θ); the norm is
    the largest value seen.
    The value is a lower bound, exact to float precision times the peak's conditioning when the peak lies in one
    of those brackets (seen ~1e-15 relative for 1 - |λ| = 0.1, ~1e-12 for 1e-4, ~1e-9 for 1e-6), which the pole
    angles make the case unless a peak is narrower than 1 - |λ| suggests. It is not a certified bound (that
    needs Hamiltonian-pencil bisection, Boyd-Balakrishnan / Bruinsma-Steinbuch).

    Args:
        gain: function mapping angles θ (G, W) in [0, π], one row per system, to σ_max (G, W) of that system's
            response at e^{jθ} (e.g. `sigma_max` of `ssmkit.analysis.frequency.physical_transfer`).
        poles: (G, n) complex poles of each system, all strictly inside the unit circle.

    Returns:
        (G,) float64.
    """
    if not callable(gain):
        raise TypeError(
            "gain must be a function θ (G, W) -> σ_max (G, W); got "
            f"{type(gain).__name__} (for a StateSpace, call its hinf_norm() method)"
        )
    lam = np.asarray(poles)
    if lam.ndim != 2:
        raise ValueError(f"poles must be (G, n) (2 dimensions); got {tuple(lam.shape)}")
    if lam.size and not np.all(np.abs(lam) < 1.0):
        g = int(np.flatnonzero(~np.all(np.abs(lam) < 1.0, axis=1))[0])
        raise ValueError(
            f"poles must lie strictly inside the unit circle (stable systems); got |λ| = "
            f"{np.abs(lam[g]).max():.6g} for system {g}"
        )
    Gs = lam.shape[0]
    # 1. grid: uniform angles and the neighbourhood of every pole angle, folded back into [0, π] (the gain is even
    # and 2π-periodic in θ), so the samples beside a pole near θ = 0 or π stay distinct
    width = np.maximum(1.0 - np.abs(lam), 1e-12)  # (Gs, n)
    offsets = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    near = np.abs(np.angle(lam))[..., None] + width[..., None] * offsets  # (Gs, n, 7)
    near = np.abs(np.where(near > np.pi, 2.0 * np.pi - near, near))  # (Gs, n, 7) in [0, π]
    uniform = np.broadcast_to(np.linspace(0.0, np.pi, _HINF_GRID), (Gs, _HINF_GRID))
    theta = np.sort(np.clip(np.concatenate([uniform, near.reshape(Gs, -1)], 1), 0.0, np.pi), 1)  # (Gs, Wg)
    f = gain(theta)  # (Gs, Wg)
    best = f.max(1)  # (Gs,)
    # 2. brackets around the largest local maxima, between distinct neighbouring angles: a repeated angle (repeated
    # poles, the grid's own 0 and π) counts once, so its copies cannot fill the K brackets with empty ones
    Wg = theta.shape[1]
    row = np.arange(Gs)[:, None]  # (Gs, 1)
    flat = (theta + 4.0 * row).ravel()  # (Gs·Wg,) sorted: rows 4 > π apart, so one sorted search serves all
    first = np.searchsorted(flat, flat, side="left").reshape(Gs, Wg) - Wg * row  # (Gs, Wg) first of its angle
    after = np.searchsorted(flat, flat, side="right").reshape(Gs, Wg) - Wg * row  # (Gs, Wg) past its angle
    prev, nxt = np.maximum(first - 1, 0), np.minimum(after, Wg - 1)  # (Gs, Wg) nearest distinct neighbours
    left = np.where(first > 0, np.take_along_axis(f, prev, 1), -np.inf)  # (Gs, Wg)
    right = np.where(after < Wg, np.take_along_axis(f, nxt, 1), -np.inf)  # (Gs, Wg)
    index = np.arange(Wg)[None, :]  # (1, Wg)
    score = np.where((index == first) & (f >= left) & (f >= right), f, -np.inf)  # (Gs, Wg)
    K = min(_HINF_PEAKS, Wg)
    idx = np.argsort(-score, axis=1)[:, :K]  # (Gs, K)
    lo = np.take_along_axis(theta, np.take_along_axis(prev, idx, 1), 1)  # (Gs, K)
    hi = np.take_along_axis(theta, np.take_along_axis(nxt, idx, 1), 1)  # (Gs, K)
    # 3. golden-section maximisation in every bracket at once
    r = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - r * (hi - lo), lo + r * (hi - lo)
    fc, fd = gain(c), gain(d)  # (Gs, K)
    for _ in range(_HINF_ITERS):
        keep_left = fc > fd  # the max lies in [lo, d]
        lo = np.where(keep_left, lo, c)
        hi = np.where(keep_left, d, hi)
        new = np.where(keep_left, hi - r * (hi - lo), lo + r * (hi - lo))  # (Gs, K)
        fnew = gain(new)
        c, fc, d, fd = (
            np.where(keep_left, new, d),
            np.where(keep_left, fnew, fd),
            np.where(keep_left, c, new),
            np.where(keep_left, fc, fnew),
        )
        best = np.maximum(best, np.maximum(fc, fd).max(1))
    return best
