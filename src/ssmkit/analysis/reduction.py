"""Gramians, Hankel singular values, the H2 norm and balanced truncation of a bank of discrete- or continuous-time
systems.

For a Schur-stable system x[k+1] = A x[k] + B u[k], y[k] = C x[k] + D u[k] (real: a complex bank is taken through
its real realisation, `StateSpace.to_real`, whose output is the physical real part):

    controllability Gramian   Wc = Σ_k A^k B Bᵀ (Aᵀ)^k,   the solution of  A Wc Aᵀ − Wc + B Bᵀ = 0,
    observability Gramian     Wo = Σ_k (Aᵀ)^k Cᵀ C A^k,   the solution of  Aᵀ Wo A − Wo + Cᵀ C = 0,
    Hankel singular values    σ_1 ≥ σ_2 ≥ … ≥ σ_n ≥ 0,    σ_i² the eigenvalues of Wc Wo,
    H2 norm                   ‖G‖₂² = Σ_k ‖g_k‖_F² = tr(D Dᵀ + C Wc Cᵀ)   (g_0 = D, g_k = C A^{k−1} B).

For a Hurwitz-stable continuous-time system ẋ = A x + B u, y = C x + D u (a bank with dt = 0, every pole Re s < 0):

    controllability Gramian   Wc = ∫_0^∞ e^{At} B Bᵀ e^{Aᵀt} dt,   the solution of  A Wc + Wc Aᵀ + B Bᵀ = 0,
    observability Gramian     Wo = ∫_0^∞ e^{Aᵀt} Cᵀ C e^{At} dt,   the solution of  Aᵀ Wo + Wo A + Cᵀ C = 0,
    H2 norm                   ‖G‖₂² = ∫_0^∞ ‖C e^{At} B‖_F² dt = tr(C Wc Cᵀ)   when D = 0,

and the same Hankel singular values and balancing. With D ≠ 0 the impulse response holds D δ(t), of infinite
energy: the H2 norm is inf (as python-control's ``norm(sys, 2)``, which warns), not an error, like that of an
unstable system.

The Stein (discrete Lyapunov) equations are solved in the complex Schur basis A = Z T Zᴴ, one column of the
transformed solution at a time against a triangular matrix (Barraud, "A numerical algorithm to solve AᵀXA − X = Q",
IEEE TAC 22(5), 1977): O(n³) per system, batched over the bank; the continuous Lyapunov equations the same way
(Bartels & Stewart, "Solution of the matrix equation AX + XB = C", CACM 15(9), 1972). The Hankel singular values and
the balancing transformation use square-root factors of the Gramians and one SVD (Laub, Heath, Paige & Ward, IEEE
TAC 32(2), 1987), never the product Wc Wo.

Balanced truncation (Moore, IEEE TAC 26(1), 1981) keeps the r states of largest σ_i. The reduced system is stable
(Pernebo & Silverman, IEEE TAC 27(2), 1982) and ‖G − G_r‖_∞ ≤ 2 Σ_{i>r} σ_i (continuous time: Enns, CDC 1984, and
Glover, Int. J. Control 39(6), 1984; discrete time: Al-Saggaf & Franklin, IEEE TAC 32(9), 1987); D is kept, so the
error at high frequency is bounded too. In continuous time the reduced system is balanced again (its Gramians are
diag(σ_1, …, σ_r)); in discrete time it is not.

python-control 0.10 computes Gramians and balanced truncation only through slycot and has no discrete-time Hankel
singular values; these are plain NumPy/SciPy/PyTorch and work on a whole bank at once, in either time domain.

Letters: G systems of a bank, n states, m inputs, p outputs, r the reduced order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ssmkit.analysis.statespace import StateSpace

__all__ = ["balanced_truncation", "gramians", "h2_and_hankel", "h2_norm", "hankel_singular_values", "solve_lyapunov",
           "solve_stein"]

_CHUNK_ELEMENTS = 1 << 22  # complex entries per (G', n, n) temporary of the solvers (64 MiB): large banks go in parts


def solve_stein(T: np.ndarray, Q: np.ndarray, adjoint: bool) -> np.ndarray:
    """Solve Y = T Y Tᴴ + Q (``adjoint=False``) or Y = Tᴴ Y T + Q (``adjoint=True``) for upper triangular T.

    Column j of the first satisfies (I − conj(T_jj) T) Y[:, j] = Q[:, j] + T Σ_{l>j} conj(T_jl) Y[:, l] (solved
    for j = n−1 down to 0); of the second, (I − T_jj Tᴴ) Y[:, j] = Q[:, j] + Tᴴ Σ_{l<j} T_lj Y[:, l] (j = 0 up).
    Each is triangular with diagonal 1 − conj(T_jj) T_ii, non-zero when every |T_ii| < 1.

    Args:
        T: (G, n, n) complex upper triangular, every |T_ii| < 1.
        Q: (G, n, n) complex right-hand sides.
        adjoint: which of the two equations.

    Returns:
        (G, n, n) complex128 solution Y.
    """
    G, n = T.shape[0], T.shape[1]
    step = max(1, _CHUNK_ELEMENTS // max(n * n, 1))  # systems per pass: a few (G', n, n) complex temporaries
    if G > step:
        return np.concatenate([solve_stein(T[i:i + step], Q[i:i + step], adjoint) for i in range(0, G, step)])
    # column j: (I − d R) Y[:, j] = Q[:, j] + R v, R = T (Tᴴ for the adjoint), d = conj(T_jj) (T_jj)
    return _column_sweep(T, Q, adjoint, lambda R, d, eye, q, v: (eye - d * R, q + R @ v))


def _column_sweep(T: np.ndarray, Q: np.ndarray, adjoint: bool, column) -> np.ndarray:
    """The column-by-column solution Y (G, n, n) complex128 shared by :func:`solve_stein` and :func:`solve_lyapunov`:
    column j solves a triangular system (M, rhs) = ``column(R, d, I, Q[:, j], v)`` with R = T (upper) and
    d = conj(T_jj), v = Σ_{l>j} conj(T_jl) Y[:, l] (j = n−1 down to 0), or for the ``adjoint`` equation R = Tᴴ
    (lower), d = T_jj, v = Σ_{l<j} T_lj Y[:, l] (j = 0 up)."""
    G, n = T.shape[0], T.shape[1]
    Tt = torch.from_numpy(np.ascontiguousarray(T, np.complex128))  # (G, n, n)
    Qt = torch.from_numpy(np.ascontiguousarray(Q, np.complex128))  # (G, n, n)
    eye = torch.eye(n, dtype=torch.complex128)
    Th = Tt.conj().transpose(1, 2)  # (G, n, n) lower triangular
    Y = torch.zeros(G, n, n, dtype=torch.complex128)
    order = range(n) if adjoint else range(n - 1, -1, -1)
    for j in order:
        if adjoint:
            v = Y[:, :, :j] @ Tt[:, :j, j, None]  # (G, n, 1): Σ_{l<j} T_lj Y[:, l]
            M, rhs = column(Th, Tt[:, j, j, None, None], eye, Qt[:, :, j, None], v)  # (G, n, n) lower
        else:
            v = Y[:, :, j + 1:] @ Tt[:, j, j + 1:, None].conj()  # (G, n, 1): Σ_{l>j} conj(T_jl) Y[:, l]
            M, rhs = column(Tt, Tt[:, j, j, None, None].conj(), eye, Qt[:, :, j, None], v)  # (G, n, n) upper
        Y[:, :, j] = torch.linalg.solve_triangular(M, rhs, upper=not adjoint)[:, :, 0]
    return Y.numpy()


def solve_lyapunov(T: np.ndarray, Q: np.ndarray, adjoint: bool) -> np.ndarray:
    """Solve T Y + Y Tᴴ + Q = 0 (``adjoint=False``) or Tᴴ Y + Y T + Q = 0 (``adjoint=True``) for upper triangular T.

    Column j of the first satisfies (T + conj(T_jj) I) Y[:, j] = −Q[:, j] − Σ_{l>j} conj(T_jl) Y[:, l] (solved for
    j = n−1 down to 0); of the second, (Tᴴ + T_jj I) Y[:, j] = −Q[:, j] − Σ_{l<j} T_lj Y[:, l] (j = 0 up). Each is
    triangular with diagonal T_ii + conj(T_jj), non-zero when every Re T_ii < 0 (Bartels & Stewart, CACM 15(9),
    1972, with a triangular rather than quasi-triangular T).

    Args:
        T: (G, n, n) complex upper triangular, every Re T_ii < 0.
        Q: (G, n, n) complex right-hand sides.
        adjoint: which of the two equations.

    Returns:
        (G, n, n) complex128 solution Y.
    """
    G, n = T.shape[0], T.shape[1]
    step = max(1, _CHUNK_ELEMENTS // max(n * n, 1))  # systems per pass, as `solve_stein`
    if G > step:
        return np.concatenate([solve_lyapunov(T[i:i + step], Q[i:i + step], adjoint) for i in range(0, G, step)])
    # column j: (R + d I) Y[:, j] = −Q[:, j] − v, R = T (Tᴴ for the adjoint), d = conj(T_jj) (T_jj)
    return _column_sweep(T, Q, adjoint, lambda R, d, eye, q, v: (R + d * eye, -q - v))


def _real_and_stable(system: StateSpace, what: str) -> StateSpace:
    """The real realisation of ``system``; ``ValueError`` naming the systems that are not Schur stable (Hurwitz
    stable, every pole Re s < 0, for a continuous-time bank), or for a NaN or inf entry naming the system and the
    matrix (`StateSpace._require_finite`)."""
    system._require_finite(what)
    real = system.to_real()
    bad = np.flatnonzero(~real.stable_mask())
    if bad.size and real.is_continuous:
        edge = real.poles().real.max(1)  # (G,) rightmost pole's real part
        shown = ", ".join(f"{int(g)} (max Re s = {edge[g]:.6g})" for g in bad[:5]) + (" …" if bad.size > 5 else "")
        raise ValueError(f"{what} needs Hurwitz-stable systems (every pole Re s < 0) in continuous time; not stable: "
                         f"system {shown}")
    if bad.size:
        rho = np.abs(real.poles()).max(1)  # (G,)
        shown = ", ".join(f"{int(g)} (|z| = {rho[g]:.6g})" for g in bad[:5]) + (" …" if bad.size > 5 else "")
        raise ValueError(f"{what} needs Schur-stable systems (every pole |z| < 1); not stable: system {shown}")
    return real


def gramians(system: StateSpace) -> tuple[np.ndarray, np.ndarray]:
    """The controllability and observability Gramians of each system of the bank (module docstring): of the Stein
    equations for a sampled bank, of the continuous Lyapunov equations for a continuous one (dt = 0).

    Args:
        system: a bank of G stable systems, Schur (|z| < 1) or, continuous, Hurwitz (Re s < 0) (a complex bank is
            taken as its real realisation, 2n states).

    Returns:
        the controllability Gramian Wc and the observability Gramian Wo, each (G, n, n) float64, symmetric
        positive semi-definite.

    Raises:
        ValueError: a system has a pole on or outside the unit circle (continuous: with Re s >= 0); its Gramians do
            not exist. Also for a pole within rounding of that boundary where the solve meets it (a Gramian not
            finite), naming the system.
    """
    return _solve_bounded(_real_and_stable(system, "a Gramian"), "co", "a Gramian")  # type: ignore[return-value]


def _unbounded(Ws: tuple[np.ndarray, ...]) -> np.ndarray:
    """(G,) True where a computed Gramian is not finite: the Schur form of a system that `stable_mask` (eigenvalues
    by LAPACK's dgeev) calls stable has a diagonal entry on the boundary to rounding (Re T_ii = 0, or |T_ii| = 1),
    a pole within rounding of the imaginary axis or the unit circle, and the solver divided by 0 there."""
    return np.any([~np.isfinite(W).all(axis=(1, 2)) for W in Ws], axis=0)


def _solve_bounded(real: StateSpace, kinds: str, what: str) -> tuple[np.ndarray, ...]:
    """`_solve`, with ``ValueError`` naming the systems whose Gramians came out unbounded (`_unbounded`), where a NaN
    Gramian (and from it a NaN H2 norm, or numpy's "SVD did not converge" in the Hankel values) would follow."""
    Ws = _solve(real, kinds)
    bad = np.flatnonzero(_unbounded(Ws))
    if bad.size:
        edge = "the imaginary axis" if real.is_continuous else "the unit circle"
        raise ValueError(f"{what} needs stable systems; system {', '.join(str(int(g)) for g in bad[:5])} has a pole "
                         f"within rounding of {edge} (marginally stable: its Gramian is unbounded)")
    return Ws


def _solve(real: StateSpace, kinds: str) -> tuple[np.ndarray, ...]:
    """The Gramians named by ``kinds`` ("c", "o", "co") of a real, stable bank, from one Schur form per system
    (`solve_stein` for a sampled bank, `solve_lyapunov` for a continuous one)."""
    import scipy.linalg  # here, not at module top: `import ssmkit` stays free of scipy

    G, n = real.nsystems, real.nstates
    T = np.empty((G, n, n), np.complex128)
    Z = np.empty((G, n, n), np.complex128)
    for g in range(G):
        T[g], Z[g] = scipy.linalg.schur(real.A[g].astype(np.complex128), output="complex")  # A = Z T Zᴴ
    Zh = Z.conj().transpose(0, 2, 1)  # (G, n, n)
    solve = solve_lyapunov if real.is_continuous else solve_stein
    out = []
    for kind in kinds:
        if kind == "c":
            Bt = Zh @ real.B  # (G, n, m)
            Y = solve(T, Bt @ Bt.conj().transpose(0, 2, 1), adjoint=False)  # Zᴴ Wc Z
        else:
            Ct = real.C @ Z  # (G, p, n)
            Y = solve(T, Ct.conj().transpose(0, 2, 1) @ Ct, adjoint=True)  # Zᴴ Wo Z
        W = Z @ Y @ Zh
        out.append(((W + W.conj().transpose(0, 2, 1)) / 2).real)
    return tuple(out)


def _square_roots(Wc: np.ndarray, Wo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lc, Lo with Wc = Lc Lcᵀ and Wo = Lo Loᵀ, each (G, n, n): V √max(λ, 0) from eigh (rounding's negatives cut)."""
    out = []
    for W in (Wc, Wo):
        lam, V = np.linalg.eigh(W)  # (G, n), (G, n, n)
        out.append(V * np.sqrt(np.clip(lam, 0.0, None))[:, None, :])
    return out[0], out[1]


def _hankel_from(Wc: np.ndarray, Wo: np.ndarray) -> np.ndarray:
    """(G, n) singular values of Loᵀ Lc, decreasing."""
    Lc, Lo = _square_roots(Wc, Wo)
    return np.linalg.svd(Lo.transpose(0, 2, 1) @ Lc, compute_uv=False)


def _h2_from(real: StateSpace, Wc: np.ndarray) -> np.ndarray:
    """(G,) √tr(D Dᵀ + C Wc Cᵀ) of a real sampled bank; √tr(C Wc Cᵀ) of a continuous one, inf where D ≠ 0."""
    energy = np.einsum("gpn,gnk,gpk->g", real.C, Wc, real.C)  # (G,)
    feedthrough = np.einsum("gpm,gpm->g", real.D, real.D)  # (G,) ‖D‖_F²
    if real.is_continuous:
        energy = np.where(feedthrough > 0, np.inf, energy)  # D δ(t) in the impulse response
    else:
        energy = energy + feedthrough
    return np.sqrt(np.clip(energy, 0.0, None))


def hankel_singular_values(system: StateSpace) -> np.ndarray:
    """The Hankel singular values σ_1 ≥ … ≥ σ_n of each system: the singular values of Loᵀ Lc (module docstring).

    Args:
        system: a bank of G stable systems (Schur, or Hurwitz when continuous; a complex bank as its real
            realisation, 2n values).

    Returns:
        (G, n) float64, decreasing along the last axis.
    """
    return _hankel_from(*gramians(system))


def h2_norm(system: StateSpace) -> np.ndarray:
    """‖G‖₂ = √tr(D Dᵀ + C Wc Cᵀ) of each system (the root of the energy of its impulse response, g_0 = D); of a
    continuous-time system √tr(C Wc Cᵀ) = (∫_0^∞ ‖C e^{At} B‖_F² dt)^{1/2}, inf when D ≠ 0 (module docstring).

    Args:
        system: a bank of G systems (a complex bank as its physical real-part output).

    Returns:
        (G,) float64; inf for a system with a pole on or outside the unit circle (continuous: Re s >= 0, or
        D ≠ 0), or within rounding of it where the Gramian comes out unbounded.
    """
    return h2_and_hankel(system)[0]


def h2_and_hankel(system: StateSpace, hankel: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The H2 norms and (when asked) the Hankel singular values of a bank from one solve of its Gramians; systems
    that are not stable get inf and a NaN row instead of an error (the analysis of a whole model).

    Args:
        system: a bank of G systems.
        hankel: also compute the Hankel singular values.

    Returns:
        (G,) float64 H2 norms, and (G, n) float64 Hankel singular values (n of the real realisation) or None.

    Raises:
        ValueError: for a NaN or inf entry of A, B, C or D, naming the system and the matrix (its Gramian would come
            out NaN and the system be reported as unbounded).
    """
    system._require_finite("the H2 norm and Hankel singular values" if hankel else "the H2 norm")
    real = system.to_real()
    h2 = np.full(real.nsystems, np.inf)
    hsv = np.full((real.nsystems, real.nstates), np.nan) if hankel else None
    stable = np.flatnonzero(real.stable_mask())
    if stable.size:
        sub = real[stable]
        Wc, Wo = _solve(sub, "co") if hankel else (_solve(sub, "c")[0], None)  # sub is real and stable
        bounded = ~_unbounded((Wc,) if Wo is None else (Wc, Wo))  # (G',) a pole on the boundary to rounding: inf
        stable, Wc, Wo = stable[bounded], Wc[bounded], None if Wo is None else Wo[bounded]
        if stable.size:
            sub = sub[bounded]
            h2[stable] = _h2_from(sub, Wc)
            if hankel:
                hsv[stable] = _hankel_from(Wc, Wo)
    return h2, hsv


def balanced_truncation(system: StateSpace, order: int) -> StateSpace:
    """The balanced truncation of each system to ``order`` states (square-root method; module docstring).

    With Loᵀ Lc = U Σ Vᵀ: T_r = Lc V_r Σ_r^{-1/2}, T_r⁺ = Σ_r^{-1/2} U_rᵀ Loᵀ, and the reduced system is
    (T_r⁺ A T_r, T_r⁺ B, C T_r, D): the first r states of the balanced realisation (r = n gives it whole, with both
    Gramians equal to diag(σ_1, …, σ_n); a truncated continuous system is balanced with Gramians diag(σ_1, …, σ_r),
    a truncated discrete one is stable but no longer balanced). Its error is bounded by ‖G − G_r‖_∞ ≤ 2 Σ_{i>r} σ_i
    (`hankel_singular_values`) in either time domain.

    Args:
        system: a bank of G stable systems, Schur or, continuous (dt = 0), Hurwitz (a complex bank is reduced from
            its real realisation).
        order: r, 1 <= r <= n (the real realisation's n), and σ_r of every system above its rounding level
            (n·eps·σ_1): an r past a system's numerical order would divide by a zero singular value.

    Returns:
        a real StateSpace bank with A (G, r, r), B (G, r, m), C (G, p, r), the same D and dt (continuous for a
        continuous bank).

    Raises:
        ValueError: a system is not stable, ``order`` is not an int in [1, n], or exceeds a system's numerical
            order (the message names the largest order every system supports).
    """
    from ssmkit.analysis.statespace import StateSpace

    real = _real_and_stable(system, "balanced truncation")
    n = real.nstates
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= n:
        raise ValueError(f"order must be an int r with 1 <= r <= n = {n} (the real realisation's states); got {order!r}")
    r = int(order)
    Lc, Lo = _square_roots(*_solve_bounded(real, "co", "balanced truncation"))  # real and stable: checked above
    U, s, Vh = np.linalg.svd(Lo.transpose(0, 2, 1) @ Lc)  # (G, n, n), (G, n), (G, n, n)
    floor = n * np.finfo(np.float64).eps * s[:, :1]  # (G, 1) rounding level of each system
    rank = (s > floor).sum(1)  # (G,) numerical orders
    if r > rank.min():
        g = int(rank.argmin())
        if rank[g] == 0:  # σ_1 = 0: no state is both reachable and observable, G(z) = D
            raise ValueError(f"system {g} has no reachable and observable state (its Hankel singular values are all 0, "
                             "G(z) = D): balanced truncation has no order >= 1 to give it; reduce the other systems "
                             "on their own")
        raise ValueError(f"order {r} exceeds the numerical order of system {g} ({int(rank[g])}: σ_{r} = "
                         f"{s[g, r - 1]:.3g} is at the rounding level of σ_1 = {s[g, 0]:.3g}); every system of the bank "
                         f"supports order <= {int(rank.min())}")
    scale = 1.0 / np.sqrt(s[:, :r])  # (G, r)
    Tr = Lc @ Vh[:, :r, :].transpose(0, 2, 1) * scale[:, None, :]  # (G, n, r)
    Ti = scale[:, :, None] * U[:, :, :r].transpose(0, 2, 1) @ Lo.transpose(0, 2, 1)  # (G, r, n)
    mats = (Ti @ real.A @ Tr, Ti @ real.B, real.C @ Tr, real.D)
    if real.is_continuous:
        return StateSpace.from_continuous(*mats)
    return StateSpace(*mats, real.dt)
