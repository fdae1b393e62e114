"""A certified H-infinity norm of discrete-time systems: the bilinear (Cayley) map and the Hamiltonian test.

For a stable discrete-time system G(z) = C (zI - A)^{-1} B + D,

    ||G||_∞ = sup_{θ ∈ [0, π]} σ_max(G(e^{jθ})).

1. Cayley map (bilinear transform with unit scale; Zhou, Doyle & Glover, Robust and Optimal Control, 1996, §21):
   z = (1 + s)/(1 - s) maps the imaginary axis s = jω onto the unit circle, θ = 2 arctan ω (ω = ∞ ↔ z = -1),
   so G_c(s) := G((1 + s)/(1 - s)) has the same H∞ norm. With F = (A + I)^{-1}, G_c has the realisation

       A_c = F (A - I),   B_c = √2 F B,   C_c = √2 C F,   D_c = D - C F B

   (A + I is invertible for a stable A; A_c is Hurwitz exactly when A is Schur).
2. Hamiltonian test (Zhou, Doyle & Glover, Lemma 4.7; Boyd, Balakrishnan & Kabamba, MCSS 2, 1989): for γ > σ_max(D_c)
   and R = γ² I - D_cᵀ D_c, γ is a singular value of G_c(jω) exactly when jω is an eigenvalue of

       H(γ) = [[A_c + B_c R⁻¹ D_cᵀ C_c,            B_c R⁻¹ B_cᵀ                 ],
               [-C_cᵀ (I + D_c R⁻¹ D_cᵀ) C_c,    -(A_c + B_c R⁻¹ D_cᵀ C_c)ᵀ     ]],

   so ||G||_∞ < γ exactly when H(γ) has no eigenvalue on the imaginary axis.
3. Two-step iteration (Bruinsma & Steinbuch, Systems & Control Letters 14, 1990): from a lower bound γ_lo (σ_max at
   θ = 0, π and the pole angles, all attained), test γ = (1 + 2 tol) γ_lo; if H(γ) has imaginary eigenvalues
   jω_1 < ... < jω_k, σ_max at the midpoints of consecutive ω_i raises γ_lo (quadratic convergence); if none, the
   norm lies in [γ_lo, γ] and the loop stops. The result is a certified bracket, not a sampled lower bound.
4. Finite precision: H(γ) is balanced (`balance`) before its eigenvalues are computed, and an eigenvalue counts as
   on the axis within `axis_tolerance(A)` = min(1e-10, ρ/16) (ρ: the nearest pole's relative distance to the axis in
   the s-plane), checked against the gain at the frequencies of every eigenvalue within 1e-6 of the axis. Near the
   stability boundary the crossing pair above a resonance peak leaves the axis only as √(γ/γ* - 1), so there the
   certified γ_hi is widened (relative width about 2e-4 at 1 - |λ| = 1e-8, 3e-3 at 1e-9 and 1e-10).

Every σ_max is evaluated in discrete time on the original system (through ``StateSpace``'s Schur form), so the
Cayley map only serves the crossing test. Letters: n states, m inputs, p outputs.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import numpy as np

__all__ = ["axis_tolerance", "balance", "cayley", "hamiltonian", "hinf_bracket", "imaginary_frequencies"]

# Relative distance of a Hamiltonian eigenvalue to the imaginary axis below which it counts as on the axis
# (`imaginary_frequencies`' default).
_AXIS_TOL = 1e-8
# The certificate's axis tolerance, at most (`axis_tolerance` lowers it for poles closer to the axis), and the band
# whose eigenvalues' frequencies are checked by evaluating the gain.
_CERT_TOL = 1e-10
_CHECK_BAND = 1e-6
# The axis tolerance is at most this fraction of the nearest continuous-time pole's relative distance to the axis.
_POLE_FRACTION = 1.0 / 16.0
# Iterations of the two-step loop before giving up (it converges quadratically: 3-6 are typical).
_MAX_ITERS = 60


def cayley(A: np.ndarray, B: np.ndarray, C: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, ...]:
    """The continuous-time system G_c(s) = G((1 + s)/(1 - s)) of a discrete-time one (module docstring, step 1).

    Args:
        A: (n, n) real state matrix with no eigenvalue at -1.
        B: (n, m) input matrix.
        C: (p, n) output matrix.
        D: (p, m) feedthrough.

    Returns:
        A_c (n, n), B_c (n, m), C_c (p, n), D_c (p, m).
    """
    n = A.shape[0]
    I = np.eye(n)
    F_A = np.linalg.solve(A + I, A - I)  # (n, n): F (A - I)
    F_B = np.linalg.solve(A + I, B)  # (n, m): F B
    C_F = np.linalg.solve((A + I).T, C.T).T  # (p, n): C F
    return F_A, np.sqrt(2.0) * F_B, np.sqrt(2.0) * C_F, D - C @ F_B


def hamiltonian(Ac: np.ndarray, Bc: np.ndarray, Cc: np.ndarray, Dc: np.ndarray, gamma: float) -> np.ndarray:
    """The Hamiltonian matrix H(γ) of a continuous-time system (module docstring, step 2), for γ > σ_max(D_c).

    Args:
        Ac: (n, n) state matrix.
        Bc: (n, m) input matrix.
        Cc: (p, n) output matrix.
        Dc: (p, m) feedthrough.
        gamma: the level γ.

    Returns:
        (2n, 2n) real.
    """
    m = Bc.shape[1]
    R = gamma**2 * np.eye(m) - Dc.T @ Dc  # (m, m), positive definite for γ > σ_max(D_c)
    Ri_DT_C = np.linalg.solve(R, Dc.T @ Cc)  # (m, n): R⁻¹ D_cᵀ C_c
    Ri_BT = np.linalg.solve(R, Bc.T)  # (m, n): R⁻¹ B_cᵀ
    E = Ac + Bc @ Ri_DT_C  # (n, n)
    # C_cᵀ (I + D_c R⁻¹ D_cᵀ) C_c = C_cᵀ C_c + (D_cᵀ C_c)ᵀ R⁻¹ (D_cᵀ C_c)
    Q = Cc.T @ Cc + (Dc.T @ Cc).T @ Ri_DT_C  # (n, n)
    return np.block([[E, Bc @ Ri_BT], [-Q, -E.T]])  # (2n, 2n)


def balance(H: np.ndarray) -> np.ndarray:
    """H(γ) after the similarity diag(a I, I / a) that gives its two off-diagonal blocks equal Frobenius norms.

    With H = [[E, G], [-Q, -Eᵀ]] (G = B_c R⁻¹ B_cᵀ ~ ‖B‖² / γ², Q ~ ‖C‖²), the result is [[E, a² G], [-Q / a², -Eᵀ]],
    a² = (‖Q‖ / ‖G‖)^½: the same eigenvalues, still Hamiltonian. Near a lightly damped pole the crossing pair's
    distance to the axis is set by the product of the two blocks, so rounding errors of size eps·‖H‖ move it by far
    less once neither block dominates ‖H‖ (at 1 - |λ| = 1e-9: about 1e-12 instead of 4e-9).

    Args:
        H: (2n, 2n) Hamiltonian matrix.

    Returns:
        (2n, 2n) float64, a new array.
    """
    n = H.shape[0] // 2
    top, bottom = np.linalg.norm(H[:n, n:]), np.linalg.norm(H[n:, :n])
    out = np.array(H, dtype=np.float64)
    if top > 0.0 and bottom > 0.0:
        a2 = np.sqrt(bottom / top)
        out[:n, n:] *= a2
        out[n:, :n] /= a2
    return out


def check_tolerance(tol: object) -> None:
    """Raise ``ValueError`` unless ``tol`` (a bracket's relative width) is a finite real number > 0 (not a bool)."""
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0 (the bracket's relative width); got {tol!r}")


def axis_tolerance(A: np.ndarray) -> float:
    """The relative axis tolerance of the crossing test for a discrete-time state matrix A.

    min(1e-10, ρ / 16), with ρ = min_i |Re s_i| / max(1, |s_i|) over the Cayley images s_i = (z_i - 1) / (z_i + 1)
    of A's eigenvalues z_i (Re s_i = (|z_i|² - 1) / |z_i + 1|²). The Hamiltonian's eigenvalues tend to ±s_i as γ
    grows, so a tolerance above ρ would count a pole near the unit circle as a crossing at every level and no γ
    could be certified (1 - |z| = 1e-9 gives ρ ≈ 5e-10).

    Args:
        A: (n, n) real Schur-stable state matrix.

    Returns:
        a float in [0, 1e-10].
    """
    return _axis_tolerance_of(np.linalg.eigvals(A))


def _axis_tolerance_of(z: np.ndarray) -> float:
    """`axis_tolerance` from A's eigenvalues z (n,)."""
    s = (z - 1.0) / (z + 1.0)  # (n,)
    rho = float(np.min(np.abs(s.real) / np.maximum(1.0, np.abs(s))))
    return min(_CERT_TOL, _POLE_FRACTION * rho)


def imaginary_frequencies(H: np.ndarray, tol: float = _AXIS_TOL) -> np.ndarray:
    """The ω ≥ 0 with jω an eigenvalue of H (|Re λ| ≤ tol · max(1, |λ|)), sorted.

    Args:
        H: (2n, 2n) Hamiltonian matrix.
        tol: relative distance to the imaginary axis that counts as on it.

    Returns:
        a 1-D float64 array of the crossing frequencies (possibly empty).
    """
    return _on_axis(np.linalg.eigvals(H), tol)  # eigenvalues symmetric about both axes: jω and -jω both appear


def _on_axis(lam: np.ndarray, tol: float) -> np.ndarray:
    """Sorted ω ≥ 0 of the eigenvalues lam (2n,) with |Re λ| ≤ tol · max(1, |λ|)."""
    keep = (np.abs(lam.real) <= tol * np.maximum(1.0, np.abs(lam))) & (lam.imag >= 0)
    return np.sort(lam[keep].imag)


def hinf_bracket(
    A: np.ndarray, B: np.ndarray, C: np.ndarray, D: np.ndarray, gain: Callable[[np.ndarray], np.ndarray],
    tol: float = 1e-10,
) -> tuple[float, float]:
    """A certified bracket [γ_lo, γ_hi] of the H∞ norm of one stable discrete-time system (module docstring).

    γ_lo is attained (σ_max at some θ); γ_hi = (1 + 2 tol) γ_lo is certified by a balanced Hamiltonian H(γ_hi)
    without imaginary eigenvalues (relative axis tolerance `axis_tolerance(A)`), and by the gain, at most
    γ_lo (1 + tol), at the frequencies of (and between) its eigenvalues within 1e-6 of the axis, which rounding may
    have moved off it. When eigenvalues lie within the tolerance although no larger gain lies between them (a pole
    near the unit circle puts the crossing pair just above its peak within √(γ/γ* - 1) times its own distance of the
    axis), γ_hi is widened to (1 + 2 tol 4^k) γ_lo, k = 1, 2, ..., until the test passes (so the bracket may exceed
    tol, never the certificate). Both ends carry the gain evaluation's rounding, relative ~eps / (1 - |λ|) at a
    resonance. The Cayley map loses accuracy for poles near z = -1 (A + I nearly singular), which deep SSMs rarely
    have.

    Args:
        A: (n, n) real Schur-stable state matrix.
        B: (n, m) input matrix.
        C: (p, n) output matrix.
        D: (p, m) feedthrough.
        gain: σ_max of the system's response at angles θ (W,) -> (W,) (the discrete-time evaluation).
        tol: relative width of the bracket, > 0.

    Returns:
        (γ_lo, γ_hi) floats; (0, 0) for G ≡ 0 (D = 0 and C Aᵏ B = 0 for k < n).
    """
    check_tolerance(tol)
    poles = np.linalg.eigvals(A)  # (n,)
    if not np.all(np.abs(poles) < 1.0):
        raise ValueError("A must be Schur stable (every eigenvalue strictly inside the unit circle)")
    Ac, Bc, Cc, Dc = cayley(A, B, C, D)
    axis_tol = _axis_tolerance_of(poles)

    def certified(lo: float, gamma: float) -> tuple[bool, float]:
        # (no eigenvalue of H(γ) within axis_tol of the axis, and no gain above γ_lo (1 + tol) at the frequencies of,
        # and between, those within the wider check band -- which rounding may have moved off the axis; that gain)
        # far from 1, H(γ) of G as H(1) of G/γ (C_c/γ, D_c/γ): the same eigenvalues (similar through diag(γ I, I/γ))
        # without γ² under- or overflowing (a norm below 1e-154 made R = γ² I - D_cᵀ D_c exactly 0: "Singular matrix")
        scale = 1.0 if 1e-100 < gamma < 1e100 else gamma
        lam = np.linalg.eigvals(balance(hamiltonian(Ac, Bc, Cc / scale, Dc / scale, gamma / scale)))  # (2n,)
        near = _on_axis(lam, _CHECK_BAND)  # (k,)
        best = float(gain(2.0 * np.arctan(np.concatenate([near, _mid(near)]))).max()) if near.size else 0.0
        return best <= lo * (1.0 + tol) and _on_axis(lam, axis_tol).size == 0, best

    # 1. lower bound: θ = 0, π, the pole angles and a coarse uniform grid (all attained values)
    theta = np.concatenate([[0.0, np.pi], np.abs(np.angle(poles)), np.linspace(0.0, np.pi, 9)])
    values = gain(theta)  # (W,)
    lo = float(values.max())
    if lo == 0.0 and _is_zero(A, B, C, D):
        return 0.0, 0.0  # G ≡ 0 (also with B, C ≠ 0: C Aᵏ B = 0 for the reachable modes none of C observes)
    if lo == 0.0:
        # G ≢ 0 vanishes at every sample: each entry of G(e^{iθ}) is a ratio of polynomials in z of degree <= n, so it
        # has at most n zeros on the circle, and n + 2 other angles in (0, π) find a nonzero gain (the iteration
        # from the smallest float scaled C/γ past the largest one)
        k = A.shape[0] + 2
        lo = float(gain((np.arange(k) + 0.5) * np.pi / k).max())  # (k,) midpoints of k equal parts of [0, π]
    lo = max(lo, np.finfo(np.float64).tiny)
    # 2. two-step iteration: test (1 + 2 tol) γ_lo; raise γ_lo at the midpoints of the crossings
    for _ in range(_MAX_ITERS):
        gamma = (1.0 + 2.0 * tol) * lo
        ok, new = certified(lo, gamma)
        if ok:
            return lo, gamma
        if new <= lo * (1.0 + tol):
            # crossings at γ but no larger gain between them: eigenvalues that rounding put on the axis next to a
            # peak. Widen the upper end until the test certifies it (the bracket is then wider than tol).
            for k in range(1, 40):
                gamma = (1.0 + 2.0 * tol * 4.0**k) * lo
                ok, new = certified(lo, gamma)
                if ok:
                    return lo, gamma
                if new > lo * (1.0 + tol):
                    break  # a larger gain found after all: continue the iteration from it
            else:
                raise RuntimeError(f"the Hamiltonian test could not certify an upper bound above γ_lo = {lo:.6g}")
        lo = new
    raise RuntimeError(f"the H∞ iteration did not converge in {_MAX_ITERS} steps (last γ_lo = {lo:.6g})")


def _is_zero(A: np.ndarray, B: np.ndarray, C: np.ndarray, D: np.ndarray) -> bool:
    """Whether G(z) = C (zI - A)^{-1} B + D is identically 0: D = 0 and C Aᵏ B = 0 for k < n, exactly (by
    Cayley-Hamilton every Markov parameter C Aᵏ B is then 0)."""
    if np.any(D):
        return False
    AkB = B  # (n, m)
    for _ in range(A.shape[0]):
        if np.any(C @ AkB):
            return False
        AkB = A @ AkB
    return True


def _mid(omega: np.ndarray) -> np.ndarray:
    """(k - 1,) midpoints of consecutive sorted crossing frequencies (k,)."""
    return 0.5 * (omega[:-1] + omega[1:])
