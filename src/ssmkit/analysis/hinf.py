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

Every σ_max is evaluated in discrete time on the original system (through ``StateSpace``'s Schur form), so the
Cayley map only serves the crossing test. Letters: n states, m inputs, p outputs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["cayley", "hamiltonian", "hinf_bracket", "imaginary_frequencies"]

# Relative distance of a Hamiltonian eigenvalue to the imaginary axis below which it counts as on the axis.
_AXIS_TOL = 1e-8
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


def imaginary_frequencies(H: np.ndarray, tol: float = _AXIS_TOL) -> np.ndarray:
    """The ω ≥ 0 with jω an eigenvalue of H (|Re λ| ≤ tol · max(1, |λ|)), sorted.

    Args:
        H: (2n, 2n) Hamiltonian matrix.
        tol: relative distance to the imaginary axis that counts as on it.

    Returns:
        a 1-D float64 array of the crossing frequencies (possibly empty).
    """
    lam = np.linalg.eigvals(H)  # (2n,): symmetric about both axes, so jω and -jω both appear
    on_axis = (np.abs(lam.real) <= tol * np.maximum(1.0, np.abs(lam))) & (lam.imag >= 0)
    return np.sort(lam[on_axis].imag)


def hinf_bracket(
    A: np.ndarray, B: np.ndarray, C: np.ndarray, D: np.ndarray, gain: Callable[[np.ndarray], np.ndarray],
    tol: float = 1e-10,
) -> tuple[float, float]:
    """A certified bracket [γ_lo, γ_hi] of the H∞ norm of one stable discrete-time system (module docstring).

    γ_lo is attained (σ_max at some θ); γ_hi = (1 + 2 tol) γ_lo is certified by a Hamiltonian H(γ_hi) without
    imaginary eigenvalues (up to the relative axis tolerance 1e-8 of `imaginary_frequencies`). When rounding puts
    eigenvalues on the axis at that level although no larger gain lies between them, γ_hi is widened
    geometrically until the test passes (so the bracket may exceed tol, never the certificate). The Cayley map
    loses accuracy for poles near z = -1 (A + I nearly singular), which deep SSMs rarely have.

    Args:
        A: (n, n) real Schur-stable state matrix.
        B: (n, m) input matrix.
        C: (p, n) output matrix.
        D: (p, m) feedthrough.
        gain: σ_max of the system's response at angles θ (W,) -> (W,) (the discrete-time evaluation).
        tol: relative width of the bracket, > 0.

    Returns:
        (γ_lo, γ_hi) floats.
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0; got {tol!r}")
    if not np.all(np.abs(np.linalg.eigvals(A)) < 1.0):
        raise ValueError("A must be Schur stable (every eigenvalue strictly inside the unit circle)")
    Ac, Bc, Cc, Dc = cayley(A, B, C, D)
    # 1. lower bound: θ = 0, π, the pole angles and a coarse uniform grid (all attained values)
    theta = np.concatenate([[0.0, np.pi], np.abs(np.angle(np.linalg.eigvals(A))), np.linspace(0.0, np.pi, 9)])
    values = gain(theta)  # (W,)
    lo = float(values.max())
    if lo == 0.0 and not (np.any(C) and np.any(B)) and not np.any(D):
        return 0.0, 0.0  # G ≡ 0
    lo = max(lo, np.finfo(np.float64).tiny)
    # 2. two-step iteration: test (1 + 2 tol) γ_lo; raise γ_lo at the midpoints of the crossings
    for _ in range(_MAX_ITERS):
        gamma = (1.0 + 2.0 * tol) * lo
        omega = imaginary_frequencies(hamiltonian(Ac, Bc, Cc, Dc, gamma))  # (k,)
        if omega.size == 0:
            return lo, gamma
        mid = 0.5 * (omega[:-1] + omega[1:])  # (k - 1,) midpoints of consecutive crossings
        new = float(gain(2.0 * np.arctan(np.concatenate([mid, omega]))).max())
        if new <= lo * (1.0 + tol):
            # crossings at γ but no larger gain between them: eigenvalues that rounding put on the axis next to a
            # peak. Widen the upper end until the test certifies it (the bracket is then wider than tol).
            for k in range(1, 40):
                gamma = (1.0 + 2.0 * tol * 4.0**k) * lo
                if imaginary_frequencies(hamiltonian(Ac, Bc, Cc, Dc, gamma)).size == 0:
                    return lo, gamma
            raise RuntimeError(f"the Hamiltonian test could not certify an upper bound above γ_lo = {lo:.6g}")
        lo = new
    raise RuntimeError(f"the H∞ iteration did not converge in {_MAX_ITERS} steps (last γ_lo = {lo:.6g})")
