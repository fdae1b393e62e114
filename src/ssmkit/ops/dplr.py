"""S4's diagonal-plus-low-rank (DPLR) state matrix and its bilinear discretisation, in one place.

"Efficiently Modeling Long Sequences with Structured State Spaces" (S4, Gu, Goel, Ré; arXiv 2111.00396). A
channel holds N/2 complex modes x (the kept half of N/2 conjugate pairs) of the full state x_f = [x, x̄]:

    A = diag(Λ_f) - Σ_i P_f,i P_f,i*,      Λ_f = [Λ, Λ̄],  P_f,i = [P_i, P̄_i]          (§3.1, rank r)
    Ā = (I - ΔA/2)⁻¹(I + ΔA/2),   B̄ = (I - ΔA/2)⁻¹ Δ B_f,   B_f = [B, B̄]             (bilinear, eq. 3)

Since I - ΔA/2 = (Δ/2) M with M = 2/Δ - A = diag(1/R_f) + Σ_i P_f,i P_f,i* and R = (2/Δ - Λ)⁻¹ (the
resolvent diagonal; D is the skip everywhere in ssmkit), the Woodbury identity gives

    M⁻¹ = diag(R_f) - Σ_ij (R_f P_f,i) (Y⁻¹)_ij (P_f,j* R_f),   Y_ji = δ_ji + P_f,j* R_f P_f,i   (r × r, real)
    Ā = (4/Δ) M⁻¹ - I,   B̄ = 2 M⁻¹ B_f,

and one step x' = Ā x + B̄ u = M⁻¹ v with v = (2/Δ + A) x + 2 B_f u costs O(N r) instead of O(N²). Every inner
product over the full state of conjugate-symmetric vectors is real: P_f,j* v_f = 2 Re Σ_half P̄_j v.

Small Δ (the increment form). Ā = I + O(Δ), and Ā written as (4/Δ) M⁻¹ - I holds the dynamics ΔA only as a
difference of numbers of order 1: Ā - I carries eps/(Δ|λ|) relative error, and the log Δ gradient of (4/Δ) R is
two terms ±4/Δ · R ≈ ±2 that cancel to a true value ~Δ|λ| (2e-8 relative at Δ = e^-20 in float64, 2e-4 at e^-30).
With S = (1 - ΔΛ/2)⁻¹ = (2/Δ) R and W = Σ_ij (R_f P_f,i) (Y⁻¹)_ij (P_f,j* R_f) the form

    Ā - I = Δ Ê = diag(2 S_f - 2) - (4/Δ) W = diag(Δ Λ_f S_f) - (4/Δ) W,   Ê = (I - ΔA/2)⁻¹ A,

has no such terms (W ~ Δ², so (4/Δ) W ~ Δ; at large Δ, R ≈ -1/Λ, neither), and Ā^n - I comes from Ā - I by
:func:`increment_power`. What no form removes is the rounding of the representation: a float64 Ā carries eps
absolutely, so I - Ā^L formed from Ā (not from Ā - I) is ~eps/(Δ|λ|) off in relative terms. The step keeps the
direct form M⁻¹ v: its error is the state's own rounding (eps |x| per step) either way (the increment form
x' = x + 2 M⁻¹(A x + B_f u) measured 2-4x closer on S4's log Δ gradient at Δ = e^-15 to e^-25 in float64, both
~eps/Δ relative: C_true ∝ 1/Δ times x ∝ Δ cancels in that gradient).

Dense forms (the oracles): :func:`dplr_matrix`, :func:`bilinear_dplr` (complex basis, one LU solve) and
:func:`dplr_step_reference`. Fast forms: :func:`bilinear_dplr_real` (Woodbury, real basis z = [Re x, Im x],
for state-space export and dense final states), :func:`dplr_step_coefficients` + :func:`dplr_step` (the O(N)
recurrent step), :func:`increment_power` ((I + sE)^n - I without cancellation) and :func:`small_inverse` (the r × r
inverse, shared with the Cauchy kernel's Woodbury step).
Discretisation has a single path per form, so nothing here dispatches on the backend.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ssmkit.utils import check_floating


def _check_complex(x: Tensor, name: str, letters: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a complex torch.Tensor {letters}; got {type(x).__name__}")
    if not x.is_complex():
        raise ValueError(f"{name} must be {letters} complex (complex64 or complex128); got {x.dtype}")


def _check_dplr(Lambda: Tensor, P: Tensor, B: Tensor | None = None, dt: Tensor | None = None) -> tuple[int, int]:
    """Validate Λ (H, N/2), P (r, H, N/2), B (..., H, N/2) complex of one dtype and dt (H,) real; return (H, N/2)."""
    _check_complex(Lambda, "Lambda", "(H, N/2)")
    _check_complex(P, "P", "(r, H, N/2)")
    if Lambda.dim() != 2:
        raise ValueError(f"Lambda must be (H, N/2) complex; got shape {tuple(Lambda.shape)}")
    H, M = Lambda.shape
    if P.dim() != 3 or P.shape[1:] != (H, M):
        raise ValueError(f"P must be (r, H, N/2) = (r, {H}, {M}) complex; got shape {tuple(P.shape)}")
    if P.dtype != Lambda.dtype:
        raise ValueError(f"P must have Lambda's dtype {Lambda.dtype}; got {P.dtype}")
    if B is not None:
        _check_complex(B, "B", "(H, N/2)")
        if B.dim() < 2 or B.shape[-2:] != (H, M):
            raise ValueError(
                f"B must be (H, N/2) = ({H}, {M}) like Lambda (leading dims allowed, e.g. (S, H, N/2)); "
                f"got shape {tuple(B.shape)}"
            )
        if B.dtype != Lambda.dtype:
            raise ValueError(f"B must have Lambda's dtype {Lambda.dtype}; got {B.dtype}")
    if dt is not None:
        check_floating(dt, "dt")
        if dt.shape != (H,):
            raise ValueError(f"dt must be (H,) = ({H},); got shape {tuple(dt.shape)}")
    return H, M


def small_inverse(Y: Tensor) -> Tensor:
    """Inverse of a batch of small r × r matrices: closed form for r <= 2, ``torch.linalg.inv`` otherwise.

    r = 1: 1/y; r = 2: [[d, -b], [-c, a]] / (ad - bc). No LAPACK call per matrix for the ranks of the HiPPO
    inits (1 or 2), and the closed forms batch under torch.func and torch.compile.

    Args:
        Y: (..., r, r) real or complex, invertible.

    Returns:
        (..., r, r) Y⁻¹, Y's dtype.
    """
    r = Y.shape[-1]
    if Y.dim() < 2 or Y.shape[-2] != r:
        raise ValueError(f"Y must be (..., r, r) (square in its last two dimensions); got shape {tuple(Y.shape)}")
    if r == 0:
        return Y
    if r == 1:
        return 1 / Y
    if r == 2:
        a, b, c, d = Y[..., 0, 0], Y[..., 0, 1], Y[..., 1, 0], Y[..., 1, 1]
        adj = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)  # (..., 2, 2)
        return adj / (a * d - b * c)[..., None, None]
    return torch.linalg.inv(Y)


def _full(x: Tensor) -> Tensor:
    """(..., N/2) half of a conjugate-symmetric vector -> (..., N) full vector [x, x̄]."""
    return torch.cat([x, x.conj()], dim=-1)  # (..., N)


def dplr_matrix(Lambda: Tensor, P: Tensor) -> Tensor:
    """Dense state matrix of the full conjugate-pair state: A = diag(Λ_f) - Σ_i P_f,i P_f,i* (arXiv 2111.00396 §3.1).

    Args:
        Lambda: (H, N/2) complex eigenvalues Λ, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors (r >= 0).

    Returns:
        A (H, N, N) complex, Lambda's dtype.
    """
    _check_dplr(Lambda, P)
    P_f = _full(P)  # (r, H, N)
    return torch.diag_embed(_full(Lambda)) - torch.einsum("rhn,rhm->hnm", P_f, P_f.conj())  # (H, N, N)


def bilinear_dplr(Lambda: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Dense bilinear discretisation of the full conjugate-pair DPLR system (arXiv 2111.00396 eq. 3, §3.3).

    With A = :func:`dplr_matrix` (Λ, P) and B_f = [B, B̄] (length N):
        A_bar = (I - dt A/2)⁻¹ (I + dt A/2),   B_bar = (I - dt A/2)⁻¹ dt B_f.
    This is the complex-basis form of the real system, by one LU solve per channel: the oracle of
    :func:`bilinear_dplr_real`, :func:`dplr_step` and the DPLR kernel.

    Args:
        Lambda: (H, N/2) complex eigenvalues, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors (r >= 0).
        B: (H, N/2) complex input vector, or (S, H, N/2) for S input vectors (any leading dims).
        dt: (H,) real step sizes.

    Returns:
        (A_bar, B_bar): A_bar (H, N, N) complex, B_bar (H, N) complex (with B's leading dims).
    """
    _check_dplr(Lambda, P, B, dt)
    # 1. The full N = 2·(N/2) system in the eigenbasis.
    A = dplr_matrix(Lambda, P)  # (H, N, N)
    # 2. Tustin: solve with (I - dt A/2) for both A_bar and B_bar.
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)  # (N, N)
    half = (dt[:, None, None] / 2).to(A.dtype) * A  # (H, N, N)
    left = eye - half  # (H, N, N)
    A_bar = torch.linalg.solve(left, eye + half)  # (H, N, N)
    rhs = (dt[:, None].to(A.dtype) * _full(B)).unsqueeze(-1)  # (..., H, N, 1)
    B_bar = torch.linalg.solve(left, rhs).squeeze(-1)  # (..., H, N)
    return A_bar, B_bar


def bilinear_dplr_real(
    Lambda: Tensor, P: Tensor, B: Tensor, dt: Tensor, *, minus_identity: bool = False
) -> tuple[Tensor, Tensor]:
    """Bilinear DPLR discretisation in the real basis z = [Re x, Im x] of the half state, by Woodbury.

    arXiv 2111.00396 eq. 3 without a dense solve (module docstring): with M⁻¹ = diag(R_f) - Σ_ij (R_f P_f,i)(Y⁻¹)_ij
    (P_f,j* R_f) = diag(R_f) - W,

        Ā = I + (Ā - I),   Ā - I = 2 (I - ΔA/2)⁻¹ - 2I = diag(2 S_f - 2) - (4/Δ) W,   B̄ = 2 M⁻¹ B_f,

    S = (1 - ΔΛ/2)⁻¹ = (2/Δ) R, and 2S - 2 = ΔΛS where |ΔΛ| < 1: the diagonal never as (4/Δ) R - 1, whose log Δ
    gradient cancels ±2 at small Δ, and Ā rounded once from an accurate Ā - I.
    In the basis x_f = T z, T = [[I, iI], [I, -iI]]: T⁻¹ diag(D_f) T = [[Re D, -Im D], [Im D, Re D]],
    T⁻¹(R_f P_f,i) = [Re RP_i; Im RP_i], (P_f,j* R_f) T = [2 Re P̄_j R, -2 Im P̄_j R] and T⁻¹ v_f = [Re v; Im v].
    Equals T⁻¹ Ā_c T and T⁻¹ B̄_c of :func:`bilinear_dplr`. Computed in the input precision (S4 passes complex128).

    Args:
        Lambda: (H, N/2) complex eigenvalues, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors (r >= 0).
        B: (H, N/2) complex input vector, or (S, H, N/2) for S input vectors (any leading dims).
        dt: (H,) real step sizes.
        minus_identity: return Ā - I instead of Ā: relative accuracy where Ā ≈ I (small Δ; the input of
            :func:`increment_power`, for I - Ā^L).

    Returns:
        (A_bar, B_bar): A_bar (H, N, N) real (Ā, or Ā - I), B_bar (H, N) real (with B's leading dims), Lambda's
        real dtype.
    """
    _check_dplr(Lambda, P, B, dt)
    # 1. R = (2/Δ - Λ)⁻¹, the r × r matrix Y = I + P* R P (real) and its inverse.
    # (batched products by bmm, one aten op each: einsum and matmul dispatch 6-17 per product here)
    R = 1 / (2 / dt[:, None] - Lambda)  # (H, N/2)
    RP, PR = R * P, P.conj() * R  # (r, H, N/2) each
    Y = 2 * torch.bmm(P.conj().permute(1, 0, 2), RP.permute(1, 2, 0)).real  # (H, r, r): Y[j, i] = P_j* R P_i
    Y_inv = small_inverse(torch.eye(P.shape[0], dtype=Y.dtype, device=Y.device) + Y)  # (H, r, r)
    # 2. W = (R P) Y⁻¹ (P* R) in the real basis.
    left = torch.cat([RP.real, RP.imag], dim=-1).permute(1, 2, 0)  # (H, N, r)
    right = torch.cat([2 * PR.real, -2 * PR.imag], dim=-1).permute(1, 0, 2)  # (H, r, N)
    W = torch.bmm(torch.bmm(left, Y_inv), right)  # (H, N, N)
    # 3. Ā - I = diag(2S - 2) - (4/Δ) W, S = (1 - ΔΛ/2)⁻¹, the diagonal as Δ Λ S where |ΔΛ| < 1 (exact there;
    #    its log Δ gradient, ΔΛS + ΔΛ ∂S, cancels ±2 at large Δ, where 2S - 2's has one term); then Ā = I + (Ā - I).
    z = dt[:, None] * Lambda  # (H, N/2): ΔΛ
    S = 1 / (1 - z / 2)  # (H, N/2)
    d = torch.where(z.abs() < 1, z * S, 2 * S - 2)  # (H, N/2)
    re, im = torch.diag_embed(d.real), torch.diag_embed(d.imag)  # (H, N/2, N/2)
    rot = torch.cat([torch.cat([re, -im], -1), torch.cat([im, re], -1)], -2)  # (H, N, N)
    A_bar = rot - (4 / dt)[:, None, None] * W  # (H, N, N): Ā - I
    if not minus_identity:
        A_bar = A_bar + torch.eye(A_bar.shape[-1], dtype=A_bar.dtype, device=A_bar.device)  # (H, N, N)
    # 4. B̄ = 2 M⁻¹ B_f = 2 (R B - W B_f), R B on the half state.
    RB = R * B  # (..., H, N/2)
    B_f = torch.cat([B.real, B.imag], dim=-1)  # (..., H, N)
    H, N = W.shape[0], W.shape[-1]
    WB = torch.bmm(W, B_f.reshape(-1, H, N).permute(1, 2, 0))  # (H, N, S): S = the leading dims' size
    B_bar = 2 * (torch.cat([RB.real, RB.imag], dim=-1) - WB.permute(2, 0, 1).reshape(B_f.shape))  # (..., H, N)
    return A_bar, B_bar


def increment_power(E: Tensor, n: int, scale: Tensor | None = None) -> Tensor:
    """F with (I + s E)^n = I + s F, computed from the increments (no I + sE is ever formed): arXiv 2111.00396's
    I - Ā^L at small Δ (module docstring), with Ā = I + s E.

    Binary powering on increments: (I + s F_a)(I + s F_b) = I + s (F_a + F_b + s F_a F_b), starting from F_1 = E; so
    F keeps the relative accuracy of E where s E is tiny (F ≈ n E), where Ā^n - I from a rounded Ā has eps/|sE|.
    With ``scale`` = Δ and E = Ê = (Ā - I)/Δ, F = (Ā^n - I)/Δ has no 1/Δ factor left (differentiable in Δ without
    cancelling terms of order 1).

    Args:
        E: (..., H, N, N) real or complex square matrices.
        n: power, >= 0.
        scale: (H,) real s per matrix of the last batch dimension, or None for s = 1.

    Returns:
        (..., H, N, N) F, E's dtype (0 for n = 0).
    """
    if E.dim() < 2 or E.shape[-1] != E.shape[-2]:
        raise ValueError(f"E must be (..., N, N) square; got shape {tuple(E.shape)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0; got {n!r}")
    if scale is not None and (E.dim() < 3 or scale.shape != E.shape[-3:-2]):
        raise ValueError(f"scale must be (H,) = ({E.shape[-3] if E.dim() > 2 else '?'},) for E (..., H, N, N); got "
                         f"{tuple(scale.shape)}")
    s = 1 if scale is None else scale[:, None, None].to(E.dtype)  # (H, 1, 1)
    F = None
    base = E  # (..., H, N, N): (I + s E)^(2^k) = I + s base
    while n:
        if n & 1:
            F = base if F is None else F + base + s * (F @ base)  # (..., H, N, N)
        n >>= 1
        if n:
            base = 2 * base + s * (base @ base)  # (..., H, N, N)
    return torch.zeros_like(E) if F is None else F


class DPLRStepCoefficients(NamedTuple):
    """Coefficients of the O(N) bilinear DPLR step (:func:`dplr_step`), from :func:`dplr_step_coefficients`.

    Fields (complex in Lambda's dtype unless said otherwise):
        R: (H, N/2) resolvent diagonal (2/Δ - Λ)⁻¹.
        E: (H, N/2) 2/Δ + Λ.
        P: (r, H, N/2) low-rank factors.
        RP: (r, H, N/2) R ⊙ P.
        B2: (H, N/2) 2 B.
        Y_inv: (H, r, r) real, (I + P* R P)⁻¹ over the full state.
    """

    R: Tensor
    E: Tensor
    P: Tensor
    RP: Tensor
    B2: Tensor
    Y_inv: Tensor


def dplr_step_coefficients(Lambda: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> DPLRStepCoefficients:
    """The per-channel coefficients of the O(N) bilinear DPLR step (arXiv 2111.00396 eq. 3 + Woodbury).

    R = (2/Δ - Λ)⁻¹, E = 2/Δ + Λ, R ⊙ P, 2B and Y⁻¹ = (I + P* R P)⁻¹ with Y_ji = δ_ji + 2 Re Σ_half P̄_j R P_i
    (module docstring). Computed in the input precision (S4 passes complex128).

    Args:
        Lambda: (H, N/2) complex eigenvalues, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors (r >= 0).
        B: (H, N/2) complex input vector.
        dt: (H,) real step sizes.

    Returns:
        :class:`DPLRStepCoefficients` (R, E, P, RP, B2, Y_inv) with the shapes given there.
    """
    _check_dplr(Lambda, P, B, dt)
    if B.dim() != 2:
        raise ValueError(f"B must be (H, N/2) = {tuple(Lambda.shape)} (one input vector); got shape {tuple(B.shape)}")
    R = 1 / (2 / dt[:, None] - Lambda)  # (H, N/2)
    E = 2 / dt[:, None] + Lambda  # (H, N/2)
    RP = R * P  # (r, H, N/2)
    Y = 2 * torch.einsum("jhm,ihm->hji", P.conj(), RP).real  # (H, r, r): Y[j, i] = P_j* R P_i
    Y_inv = small_inverse(torch.eye(P.shape[0], dtype=Y.dtype, device=Y.device) + Y)  # (H, r, r)
    return DPLRStepCoefficients(R=R, E=E, P=P, RP=RP, B2=2 * B, Y_inv=Y_inv)


def dplr_step(u: Tensor, x: Tensor, coeffs: DPLRStepCoefficients, C: Tensor) -> tuple[Tensor, Tensor]:
    """One bilinear DPLR step on the half state, in O(N r): x' = Ā x + B̄ u, y = C_fᵀ x'_f (arXiv 2111.00396 eq. 3).

    x' = M⁻¹ v with v = E ⊙ x - P (P* x) + 2B u and M⁻¹ v = R ⊙ v - (R ⊙ P) Y⁻¹ (P* (R ⊙ v)), every P* w over the
    full state being 2 Re Σ_half P̄ w; y = 2 Re Σ_n C_n x'_n (unconjugated output vector C over the full state).
    The skip D u is not included.

    Args:
        u: (B, H) real input (the real dtype of the coefficients).
        x: (B, H, N/2) complex half state x_{t-1}.
        coeffs: :class:`DPLRStepCoefficients` from :func:`dplr_step_coefficients`.
        C: (H, N/2) complex output vector (the true C, not S4's C̃).

    Returns:
        y (B, H) real without the skip, and the next half state x_t (B, H, N/2) complex.
    """
    R, E, P, RP, B2, Y_inv = coeffs
    if x.dim() != 3 or x.shape[1:] != R.shape:
        raise ValueError(f"x must be (B, H, N/2) = (B, {R.shape[0]}, {R.shape[1]}); got shape {tuple(x.shape)}")
    if u.shape != (x.shape[0], R.shape[0]):
        raise ValueError(f"u must be (B, H) = ({x.shape[0]}, {R.shape[0]}); got shape {tuple(u.shape)}")
    if C.shape != R.shape:
        raise ValueError(f"C must be (H, N/2) = {tuple(R.shape)}; got shape {tuple(C.shape)}")
    # 1. v = (2/Δ + A) x + 2 B u.
    P_x = 2 * torch.einsum("ihm,bhm->bih", P.conj(), x).real  # (B, r, H): P_i* x over the full state
    v = E * x - (P[None] * P_x[..., None]).sum(1) + B2 * u[..., None]  # (B, H, N/2)
    # 2. x' = M⁻¹ v by Woodbury.
    Rv = R * v  # (B, H, N/2)
    P_Rv = 2 * torch.einsum("ihm,bhm->bih", P.conj(), Rv).real  # (B, r, H)
    coef = torch.einsum("hij,bjh->bih", Y_inv, P_Rv)  # (B, r, H)
    x_new = Rv - (RP[None] * coef[..., None]).sum(1)  # (B, r, H, N/2) -> (B, H, N/2)
    # 3. y = C_fᵀ x'_f.
    y = 2 * torch.einsum("hm,bhm->bh", C, x_new).real  # (B, H)
    return y, x_new


def dplr_step_reference(u: Tensor, x: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One dense step on the full state (the oracle of :func:`dplr_step`): x' = Ā x + B̄ u, y = Re(Cᵀ x').

    arXiv 2111.00396 eq. 3 with Ā, B̄ from :func:`bilinear_dplr`; for a conjugate-symmetric x = [x_h, x̄_h] and
    C = [C_h, C̄_h], Cᵀ x' is real and equals :func:`dplr_step`'s y.

    Args:
        u: (B, H) real input.
        x: (B, H, N) complex full state x_{t-1}.
        A_bar: (H, N, N) complex.
        B_bar: (H, N) complex.
        C: (H, N) complex output vector over the full state (unconjugated).

    Returns:
        y (B, H) real (the real part of Cᵀ x'), and the next full state x_t (B, H, N) complex.
    """
    if A_bar.dim() != 3 or A_bar.shape[1] != A_bar.shape[2]:
        raise ValueError(f"A_bar must be (H, N, N); got shape {tuple(A_bar.shape)}")
    Hn, N = A_bar.shape[:2]
    if x.dim() != 3 or x.shape[1:] != (Hn, N):
        raise ValueError(f"x must be (B, H, N) = (B, {Hn}, {N}); got shape {tuple(x.shape)}")
    for name, t in (("B_bar", B_bar), ("C", C)):
        if t.shape != (Hn, N):
            raise ValueError(f"{name} must be (H, N) = ({Hn}, {N}); got shape {tuple(t.shape)}")
    if u.shape != (x.shape[0], Hn):
        raise ValueError(f"u must be (B, H) = ({x.shape[0]}, {Hn}); got shape {tuple(u.shape)}")
    x_new = torch.einsum("hnm,bhm->bhn", A_bar, x) + B_bar * u[..., None].to(B_bar.dtype)  # (B, H, N)
    y = torch.einsum("hn,bhn->bh", C, x_new).real  # (B, H)
    return y, x_new
