"""Discretisation of continuous-time diagonal and DPLR state-space models.

Implements the zero-order-hold and bilinear (Tustin) rules of "On the Parameterization and Initialization of
Diagonal State Space Models" (S4D, arXiv 2206.11893, §3) and "Efficiently Modeling Long Sequences with
Structured State Spaces" (S4, arXiv 2111.00396, eq. 3). The continuous system dx/dt = A x + B u becomes
x_k = A_bar x_{k-1} + B_bar u_k with step size dt.

Discretisation is elementwise (or one small solve per channel) with a single code path, so it does not dispatch
on :func:`ssmkit.ops.get_backend`; :func:`zoh_reference` is the direct formula that the tests compare against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssmkit.utils import check_floating

# phi(z) = (exp(z) - 1)/z is evaluated by its Taylor series for |z| < _SERIES_RADIUS. Degree 17 truncates
# at |z| = 1 after 1/19! ~ 8e-18 (below float64 eps), and the direct formula loses at most ~e*eps for |z| >= 1.
_SERIES_RADIUS = 1.0
_SERIES_COEFFS = [1.0 / math.factorial(k + 1) for k in range(18)]  # coefficient of z^k


def _check_complex(x: Tensor, name: str, letters: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a complex torch.Tensor {letters}; got {type(x).__name__}")
    if not x.is_complex():
        raise ValueError(f"{name} must be {letters} complex (complex64 or complex128); got {x.dtype}")


def _check_diagonal(Lambda: Tensor, B: Tensor, dt: Tensor) -> None:
    _check_complex(Lambda, "Lambda", "(H, N)")
    _check_complex(B, "B", "(H, N)")
    check_floating(dt, "dt")
    if Lambda.dim() != 2:
        raise ValueError(f"Lambda must be (H, N) complex; got shape {tuple(Lambda.shape)}")
    H, N = Lambda.shape
    if B.shape != Lambda.shape:
        raise ValueError(f"B must be (H, N) = ({H}, {N}) like Lambda; got shape {tuple(B.shape)}")
    if dt.shape != (H, 1):
        raise ValueError(f"dt must be (H, 1) = ({H}, 1) (broadcast along N only); got shape {tuple(dt.shape)}")


def _expm1_over_z(z: Tensor) -> Tensor:
    """phi(z) = (exp(z) - 1)/z elementwise, accurate (values and gradients) near z = 0."""
    small = z.abs() < _SERIES_RADIUS
    # Each branch only sees inputs where it is accurate and finite, so the unused branch gives no NaN gradient.
    z_series = torch.where(small, z, torch.zeros_like(z))
    z_direct = torch.where(small, torch.ones_like(z), z)
    series = torch.full_like(z, _SERIES_COEFFS[-1])
    for c in reversed(_SERIES_COEFFS[:-1]):  # Horner
        series = series * z_series + c
    direct = torch.expm1(z_direct) / z_direct
    return torch.where(small, series, direct)


def zoh(Lambda: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order-hold discretisation of a diagonal SSM (arXiv 2206.11893 §3).

    A_bar = exp(dt Lambda),  B_bar = (A_bar - 1)/Lambda * B = dt * B * (exp(z) - 1)/z with z = dt Lambda,
    the last form evaluated by a series for |z| < 1, so Lambda -> 0 gives B_bar -> dt B (values and gradients).

    Args:
        Lambda: (H, N) complex continuous-time eigenvalues.
        B: (H, N) complex input vector.
        dt: (H, 1) real step sizes, broadcast along N only.

    Returns:
        (A_bar, B_bar): each (H, N) complex.
    """
    _check_diagonal(Lambda, B, dt)
    z = dt * Lambda  # (H, N)
    return torch.exp(z), dt * B * _expm1_over_z(z)


def zoh_reference(Lambda: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold by the direct formula A_bar = exp(dt Lambda), B_bar = (A_bar - 1)/Lambda * B.

    Same equation and arguments as :func:`zoh`; loses accuracy as |dt Lambda| -> 0 and is NaN at Lambda = 0.

    Args:
        Lambda: (H, N) complex continuous-time eigenvalues.
        B: (H, N) complex input vector.
        dt: (H, 1) real step sizes, broadcast along N only.

    Returns:
        (A_bar, B_bar): each (H, N) complex.
    """
    _check_diagonal(Lambda, B, dt)
    A_bar = torch.exp(dt * Lambda)  # (H, N)
    return A_bar, (A_bar - 1) / Lambda * B


def bilinear(Lambda: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear (Tustin) discretisation of a diagonal SSM (arXiv 2111.00396 eq. 3, 2206.11893 §3).

    A_bar = (1 + dt Lambda/2)/(1 - dt Lambda/2),  B_bar = dt B/(1 - dt Lambda/2).

    Args:
        Lambda: (H, N) complex continuous-time eigenvalues.
        B: (H, N) complex input vector.
        dt: (H, 1) real step sizes, broadcast along N only.

    Returns:
        (A_bar, B_bar): each (H, N) complex.
    """
    _check_diagonal(Lambda, B, dt)
    half = dt * Lambda / 2  # (H, N)
    return (1 + half) / (1 - half), dt * B / (1 - half)


def bilinear_dplr(Lambda: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Dense bilinear discretisation of the full conjugate-pair DPLR system (arXiv 2111.00396 eq. 3, §3.3).

    With Lambda_f = [Lambda, conj Lambda], P_f = [P, conj P], B_f = [B, conj B] (length N) and
    A = diag(Lambda_f) - sum_i P_f,i P_f,i*:
        A_bar = (I - dt A/2)^-1 (I + dt A/2),   B_bar = (I - dt A/2)^-1 dt B_f.
    This is the (complex-basis form of the) real system; used for state-space export and as a test oracle.

    Args:
        Lambda: (H, N/2) complex eigenvalues, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors (r >= 0).
        B: (H, N/2) complex input vector.
        dt: (H,) real step sizes.

    Returns:
        (A_bar, B_bar): A_bar (H, N, N) complex, B_bar (H, N) complex.
    """
    _check_complex(Lambda, "Lambda", "(H, N/2)")
    _check_complex(P, "P", "(r, H, N/2)")
    _check_complex(B, "B", "(H, N/2)")
    check_floating(dt, "dt")
    if Lambda.dim() != 2:
        raise ValueError(f"Lambda must be (H, N/2) complex; got shape {tuple(Lambda.shape)}")
    H, M = Lambda.shape
    if P.dim() != 3 or P.shape[1:] != (H, M):
        raise ValueError(f"P must be (r, H, N/2) = (r, {H}, {M}) complex; got shape {tuple(P.shape)}")
    if B.shape != (H, M):
        raise ValueError(f"B must be (H, N/2) = ({H}, {M}) like Lambda; got shape {tuple(B.shape)}")
    if dt.shape != (H,):
        raise ValueError(f"dt must be (H,) = ({H},); got shape {tuple(dt.shape)}")
    # 1. The full N = 2M system in the eigenbasis.
    Lambda_f = torch.cat([Lambda, Lambda.conj()], dim=-1)  # (H, N)
    P_f = torch.cat([P, P.conj()], dim=-1)  # (r, H, N)
    B_f = torch.cat([B, B.conj()], dim=-1)  # (H, N)
    A = torch.diag_embed(Lambda_f) - torch.einsum("rhn,rhm->hnm", P_f, P_f.conj())  # (H, N, N)
    # 2. Tustin: solve with (I - dt A/2) for both A_bar and B_bar.
    eye = torch.eye(2 * M, dtype=A.dtype, device=A.device)  # (N, N)
    half = dt[:, None, None] / 2 * A  # (H, N, N)
    left = eye - half  # (H, N, N)
    A_bar = torch.linalg.solve(left, eye + half)  # (H, N, N)
    B_bar = torch.linalg.solve(left, (dt[:, None] * B_f).unsqueeze(-1)).squeeze(-1)  # (H, N, 1) -> (H, N)
    return A_bar, B_bar
