"""Exact conversions between a sampled LTI system and its continuous-time one (:meth:`ssmkit.analysis.StateSpace.
to_continuous` and ``to_discrete``), the inverses of scipy's ``cont2discrete``:

    zero-order hold:  [[A, B], [0, I]] = exp(dt [[A_c, B_c], [0, 0]])            (A = e^{A_c dt}, B = ∫ e^{A_c s} ds B_c)
    bilinear (Tustin, scipy's α = 1/2):  A = (I − dt A_c/2)⁻¹ (I + dt A_c/2),  with F = (A + I)⁻¹:
                      A_c = (2/dt)(A − I) F,  B_c = (2/dt) F B,  C_c = 2 C F,  D_c = D − C F B

Tustin with frequency prewarping (python-control's ``sample(..., "bilinear", prewarp_frequency=ω)``): the same map
over the warped step T_w = 2 tan(ω dt/2)/ω in place of dt (`prewarped_step`), so that H_d(e^{jω dt}) = H_c(jω)
exactly at ω (the plain map matches s = jω only at ω → 0; it sends jω' to e^{jω dt} with ω' = (2/dt) tan(ω dt/2)).

The zero-order hold's inverse is the principal matrix logarithm of the augmented matrix (an eigenvalue 1, an
integrator, is fine), computed as 2 logm(sqrtm(·)) and checked by expm (module functions below).
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

METHODS = ("zoh", "bilinear")  # the sampling rules of `StateSpace.to_continuous` and `to_discrete`
HOLDS = ("previous", "sample")  # which input acts over the interval before sample k (`to_continuous`)
# A logarithm is accepted when exp(dt [[A_c, B_c], [0, 0]]) gives [[A, B], [0, I]] back to this relative 1-norm error.
_LOG_RESIDUAL = 1e-8


def _check_sampling_rule(method: object, hold: object) -> None:
    """Raise ``ValueError`` unless ``method`` is in :data:`METHODS` and ``hold`` in :data:`HOLDS` (``"sample"`` only
    with ``"zoh"``: the Tustin map holds no input)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if hold not in HOLDS:
        raise ValueError(f"hold must be one of {HOLDS} (the input over the interval before sample k: u[k-1] held from "
                         f"its sample, or u[k] ending at sample k); got {hold!r}")
    if hold == "sample" and method != "zoh":
        raise ValueError(f"hold='sample' describes a zero-order hold (method='zoh'); the {method} map has no hold: "
                         f"use hold='previous'")


def prewarped_step(dt: float, method: str, frequency: object) -> float:
    """The step of the Tustin map: ``dt``, or with ``frequency`` = ω (rad/s) prewarped, T_w = 2 tan(ω dt/2)/ω, the
    step at which s = jω and z = e^{jω dt} correspond exactly (python-control's ``prewarp_frequency``).

    Args:
        dt: the sampling time in seconds, > 0.
        method: the sampling rule (prewarping applies to ``"bilinear"`` only).
        frequency: None, or the frequency ω in rad/s to match, 0 < ω < π/dt (below the Nyquist frequency).

    Returns:
        the step in seconds.

    Raises:
        ValueError: for a frequency with another method than ``"bilinear"``, not a finite real number, or outside
            (0, π/dt).
    """
    if frequency is None:
        return dt
    if method != "bilinear":
        raise ValueError(f"prewarp_frequency is a Tustin ('bilinear') option; method={method!r} has no frequency "
                         f"warping to correct")
    ok = isinstance(frequency, numbers.Real) and not isinstance(frequency, bool)
    if not (ok and math.isfinite(float(frequency)) and 0.0 < float(frequency) < math.pi / dt):
        raise ValueError(f"prewarp_frequency must be a frequency in rad/s in (0, π/dt) = (0, {math.pi / dt:.6g}) "
                         f"(below the Nyquist frequency of dt = {dt:.6g} s); got {frequency!r}")
    w = float(frequency)
    return 2.0 * math.tan(w * dt / 2.0) / w


def _number(z: complex) -> str:
    """An eigenvalue for a message: its real value when it is real, else ``a+bj`` (6 and 3 significant digits)."""
    z = complex(z)
    return f"{z.real:.6g}" if z.imag == 0 else f"{z.real:.6g}{z.imag:+.3g}j"


def _near_singular(M: np.ndarray) -> float:
    """|λ| below which an eigenvalue of M (n, n) counts as 0: 100 n eps ‖M‖₁ (rounding of a computed spectrum)."""
    return 100 * M.shape[0] * np.finfo(np.float64).eps * max(1.0, float(np.linalg.norm(M, 1)))


def _on_negative_axis(z: complex) -> bool:
    """Whether z lies on the negative real axis to within √eps of its modulus in Im z (where a real matrix's principal
    logarithm turns complex, or its computation meets the branch cut)."""
    return z.real < 0 and abs(z.imag) <= np.sqrt(np.finfo(np.float64).eps) * abs(z)


def _inaccurate_logarithm(A: np.ndarray, g: int, residual: float) -> str:
    """The refusal for a zero-order-hold logarithm that missed with no eigenvalue on the negative real axis: the
    eigenvalues are ill-conditioned (a far from normal A, as S4's HiPPO-based matrix: its eigenvector basis has
    κ₂ ~ 1e9 at N = 64), so the computed logarithm does not reproduce A; named with κ₂ of that basis."""
    kappa = np.linalg.cond(np.linalg.eig(A)[1])
    return (f"to_continuous('zoh'): the logarithm of system {g} is inaccurate (exp(logm) misses [[A, B], [0, I]] by "
            f"{residual:.2g} relative) with no eigenvalue on the negative real axis: A is far from normal (its "
            f"eigenvector basis has condition number {kappa:.2g}), so its matrix logarithm cannot be computed to "
            f"1e-8; method='bilinear' converts it (no logarithm)")


def zoh_logarithm(A: np.ndarray, B: np.ndarray, dt: float, g: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The continuous (A_c, B_c) whose zero-order hold over dt is (A, B): the principal matrix logarithm

        [[A_c, B_c], [0, 0]] = logm([[A, B], [0, I]]) / dt,

    since exp(dt [[A_c, B_c], [0, 0]]) = [[e^{A_c dt}, ∫_0^dt e^{A_c τ} dτ B_c], [0, I]] (Van Loan, IEEE TAC 23(3),
    1978; the inverse of scipy's ``cont2discrete(..., "zoh")``). The augmented form needs no A^{-1} and so holds at an
    eigenvalue 1 (an integrator: A_c singular). The principal logarithm, computed as 2 log Φ^{1/2} (scipy's ``sqrtm``,
    then ``logm``: inverse scaling and squaring, Al-Mohy & Higham, SIAM J. Sci. Comput. 34(4), 2012), gives
    eigenvalues s = log(z)/dt with |Im s| dt <= π: a mode above the Nyquist frequency comes back aliased, one at it
    (a conjugate pair z = −r ± i0) as ±iπ/dt + log(r)/dt. A real A gives a real result (its real part is kept and
    checked) unless an eigenvalue lies on the negative real axis, where the principal logarithm is complex.

    Args:
        A: (n, n) discrete state matrix (real or complex).
        B: (n, m) discrete input matrix.
        dt: the sampling time, > 0.
        g: the system's index in its bank, for the error.

    Returns:
        A_c (n, n) and B_c (n, m), real for real A and B.

    Raises:
        ValueError: for an eigenvalue 0 (to rounding; no logarithm: a pure delay), or when the logarithm does not
            reproduce [[A, B], [0, I]] to 1e-8: a real A with an eigenvalue on the negative real axis, which no real
            continuous system samples to (naming the system and the eigenvalue), or, with none there, an A so far
            from normal that its logarithm is inaccurate (naming the condition number of its eigenvector basis).
    """
    import scipy.linalg

    n, m = B.shape
    z = np.linalg.eigvals(A)  # (n,)
    worst = int(np.argmin(np.abs(z)))
    if abs(z[worst]) <= _near_singular(A):
        raise ValueError(f"to_continuous('zoh'): system {g} has the eigenvalue z = {_number(z[worst])}, 0 to rounding "
                         f"(a pure delay): no continuous system samples to it (its logarithm does not exist)")
    Phi = np.zeros((n + m, n + m), dtype=np.result_type(A, B))  # [[A, B], [0, I]]
    Phi[:n, :n], Phi[:n, n:], Phi[n:, n:] = A, B, np.eye(m)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        # scipy's "logm result may be inaccurate" is not passed on: the expm residual below decides, and a refusal
        # says why (the warning, e.g. "approximate err = 2e+58" for S4's eigenvalue on the negative axis, came first)
        warnings.simplefilter("ignore", RuntimeWarning)
        # log Φ = 2 log Φ^{1/2}: the principal square root (in real arithmetic for a real Φ) halves every argument, so
        # the logarithm meets no eigenvalue near its branch cut; a conjugate pair at the Nyquist frequency
        # (z = −r ± i0, a real rotation by π: DLR's default modes) then keeps a real logarithm, ±iπ + log r, where
        # logm alone (complex Schur form) gave both eigenvalues +iπ
        log_phi = 2 * scipy.linalg.logm(scipy.linalg.sqrtm(Phi))  # (n + m, n + m)
    if not np.iscomplexobj(Phi):
        log_phi = np.real(log_phi)  # a real Φ's principal logarithm is real; logm may leave rounding in Im
    residual = np.linalg.norm(scipy.linalg.expm(log_phi) - Phi, 1) / np.linalg.norm(Phi, 1)
    if not residual <= _LOG_RESIDUAL:
        if np.iscomplexobj(Phi):
            raise ValueError(f"to_continuous('zoh'): the logarithm of system {g} is inaccurate (exp(logm) misses "
                             f"[[A, B], [0, I]] by {residual:.2g} relative); eigenvalues {np.round(z, 6)}")
        worst = int(np.argmax(np.abs(np.angle(z))))  # the eigenvalue nearest the negative real axis
        if not _on_negative_axis(z[worst]):
            raise ValueError(_inaccurate_logarithm(A, g, residual))
        raise ValueError(f"to_continuous('zoh'): system {g} has the eigenvalue z = {_number(z[worst])} on (or within "
                         f"rounding of) the negative real axis: its principal logarithm is complex, so no real "
                         f"continuous system samples to it by a zero-order hold (exp(logm) misses by "
                         f"{residual:.2g}); method='bilinear' converts it")
    return log_phi[:n, :n] / dt, log_phi[:n, n:] / dt


def sample_hold_output(A: np.ndarray, B: np.ndarray, C: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The output map of `StateSpace.to_continuous`' ``hold="sample"``: y[k] = C_c x(t_k) + D_c u[k] with x(t_k) the
    state after u[k]'s interval, x(t_k) = A ξ[k] + B u[k], so

        C_c = C A^{-1},   D_c = D − C A^{-1} B,

    and entries of D_c at the rounding level of that difference set to 0: |D_c| <= 4 (n + κ₁(A)) eps (|D| +
    |C A^{-1}| |B|) elementwise (the error of a backward-stable solve, κ₁ the 1-norm condition number; measured at
    most κ₁/30). A layer without a skip (D_paper = 0) exports D = C_paper B̄, and its own continuous system then has
    D_c = 0 exactly rather than a residue of 1e-17, which would make its continuous H2 norm infinite (a feedthrough
    puts D δ(t) in the impulse response; python-control's ``norm(sys, 2)`` tests D ≠ 0 exactly, too).

    Args:
        A: (n, n) discrete state matrix, invertible (no eigenvalue 0: `zoh_logarithm` refuses those first).
        B: (n, m) discrete input matrix.
        C: (p, n) discrete output matrix.
        D: (p, m) discrete feedthrough.

    Returns:
        C_c (p, n) and D_c (p, m).
    """
    n = A.shape[0]
    C_Ainv = np.linalg.solve(A.T, C.T).T  # (p, n): C A^{-1}
    D_c = D - C_Ainv @ B  # (p, m)
    level = 4 * (n + np.linalg.cond(A, 1)) * np.finfo(np.float64).eps * (np.abs(D) + np.abs(C_Ainv) @ np.abs(B))
    return C_Ainv, np.where(np.abs(D_c) <= level, 0.0, D_c).astype(D_c.dtype, copy=False)


def tustin_inverse(A: np.ndarray, B: np.ndarray, C: np.ndarray, D: np.ndarray, dt: float,
                   g: int = 0) -> tuple[np.ndarray, ...]:
    """The continuous system whose Tustin (bilinear) discretisation over dt is (A, B, C, D), the inverse of scipy's
    ``cont2discrete(..., "bilinear")`` (its generalised bilinear transform with α = 1/2). With P = I − (dt/2) A_c that
    map is A = P^{-1}(I + (dt/2) A_c), B = dt P^{-1} B_c,
    C = C_c P^{-1}, D = D_c + ½ C_c B; since I + (dt/2) A_c = 2I − P, A = 2P^{-1} − I, so P = 2 (A + I)^{-1} and, with
    F = (A + I)^{-1},

        A_c = (2/dt) (A − I) F,   B_c = (2/dt) F B,   C_c = 2 C F,   D_c = D − C F B

    (s = (2/dt)(z − 1)/(z + 1) on the eigenvalues).

    Args:
        A: (n, n) discrete state matrix (real or complex).
        B: (n, m) discrete input matrix.
        C: (p, n) discrete output matrix.
        D: (p, m) discrete feedthrough.
        dt: the sampling time, > 0.
        g: the system's index in its bank, for the error.

    Returns:
        A_c (n, n), B_c (n, m), C_c (p, n), D_c (p, m).

    Raises:
        ValueError: for an eigenvalue z = −1 (to rounding), which the map sends to s = ∞, naming the system.
    """
    n = A.shape[0]
    z = np.linalg.eigvals(A)  # (n,)
    worst = int(np.argmin(np.abs(z + 1)))
    A_plus_I = A + np.eye(n)  # (n, n)
    if abs(z[worst] + 1) <= _near_singular(A_plus_I):
        raise ValueError(f"to_continuous('bilinear'): system {g} has the eigenvalue z = {_number(z[worst])}, -1 to "
                         f"rounding: the Tustin map s = (2/dt)(z - 1)/(z + 1) sends it to infinity, so no continuous "
                         f"system samples to it (method='zoh' converts it)")
    F_B = np.linalg.solve(A_plus_I, np.concatenate([np.eye(n), B], axis=1))  # (n, n + m): [F, F B]
    F, FB = F_B[:, :n], F_B[:, n:]
    CF = np.linalg.solve(A_plus_I.T, C.T).T  # (p, n): C F
    return (2 / dt) * (A - np.eye(n)) @ F, (2 / dt) * FB, 2 * CF, D - CF @ B


def zoh_sample(A_c: np.ndarray, B_c: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """The zero-order hold of ẋ = A_c x + B_c u over dt: [[A, B], [0, I]] = exp(dt [[A_c, B_c], [0, 0]])
    (Van Loan, IEEE TAC 23(3), 1978; scipy's ``cont2discrete(..., "zoh")``).

    Args:
        A_c: (n, n) continuous state matrix (real or complex).
        B_c: (n, m) continuous input matrix.
        dt: the sampling time, > 0.

    Returns:
        A (n, n) and B (n, m).
    """
    import scipy.linalg

    n, m = B_c.shape
    M = np.zeros((n + m, n + m), dtype=np.result_type(A_c, B_c))  # [[A_c, B_c], [0, 0]]
    M[:n, :n], M[:n, n:] = A_c, B_c
    E = scipy.linalg.expm(dt * M)  # (n + m, n + m)
    return E[:n, :n], E[:n, n:]


def tustin_sample(A_c: np.ndarray, B_c: np.ndarray, C_c: np.ndarray, D_c: np.ndarray, dt: float,
                  g: int = 0) -> tuple[np.ndarray, ...]:
    """The Tustin (bilinear) discretisation over dt, as scipy's ``cont2discrete(..., "bilinear")``: with
    P = I − (dt/2) A_c, A = P^{-1}(I + (dt/2) A_c), B = dt P^{-1} B_c, C = C_c P^{-1}, D = D_c + ½ C_c B.

    Args:
        A_c: (n, n) continuous state matrix (real or complex).
        B_c: (n, m) continuous input matrix.
        C_c: (p, n) continuous output matrix.
        D_c: (p, m) continuous feedthrough.
        dt: the sampling time, > 0.
        g: the system's index in its bank, for the error.

    Returns:
        A (n, n), B (n, m), C (p, n), D (p, m).

    Raises:
        ValueError: for an eigenvalue s = 2/dt (to rounding), which the map sends to z = ∞, naming the system.
    """
    n = A_c.shape[0]
    P = np.eye(n) - (dt / 2) * A_c  # (n, n)
    s = np.linalg.eigvals(A_c)  # (n,)
    worst = int(np.argmin(np.abs(1 - (dt / 2) * s)))
    if abs(1 - (dt / 2) * s[worst]) <= _near_singular(P):
        raise ValueError(f"to_discrete(dt, 'bilinear'): system {g} has the eigenvalue s = {_number(s[worst])} = 2/dt: "
                         f"the Tustin map z = (1 + s dt/2)/(1 - s dt/2) sends it to infinity (choose another dt)")
    X = np.linalg.solve(P, np.concatenate([np.eye(n) + (dt / 2) * A_c, dt * B_c], axis=1))  # (n, n + m)
    A, B = X[:, :n], X[:, n:]
    C = np.linalg.solve(P.T, C_c.T).T  # (p, n): C_c P^{-1}
    return A, B, C, D_c + 0.5 * C_c @ B
