"""HiPPO transition matrices and their normal-plus-low-rank (NPLR) forms, plus the S4D and DSS inits.

Implements, in float64 / complex128 on the CPU (cast by the caller; also inside a ``torch.device("meta")`` or
``torch.device("cuda")`` block, whose default device would otherwise reach the factory calls and, through the caches,
every later build in the process):
- the HiPPO matrices of "HiPPO: Recurrent Memory with Optimal Polynomial Projections" (arXiv 2008.07669) and
  "How to Train Your HiPPO: State Space Models with Generalized Orthogonal Basis Projections" (arXiv 2206.12037),
  in the layout of the official state-spaces/s4 code (LegT halved, FouT with a dead state at index 1);
- their NPLR decomposition A = V (Λ - P̃P̃*) V* of "Efficiently Modeling Long Sequences with Structured State
  Spaces" (S4, arXiv 2111.00396, Thm. 1 / §3.3);
- the diagonal inits of "On the Parameterization and Initialization of Diagonal State Space Models" (S4D,
  arXiv 2206.11893, §4) and "Diagonal State Spaces are as Effective as Structured State Spaces" (DSS,
  arXiv 2203.14343, §3).

Sign convention: the kept half of every conjugate pair has Im λ <= 0 (as the official S4 code), for both
`nplr` and `s4d_eigenvalues`; `dss_eigenvalues` keeps the Im λ > 0 half, as the DSS paper does.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

MEASURES = ("legs", "legt", "lagt", "fout")
S4D_INITS = ("lin", "inv", "real", "legs")

_F64 = torch.float64
_C128 = torch.complex128
# Real part of every NPLR eigenvalue: A + sum_i P_i P_i^T = _REAL_PART * I + skew.
_REAL_PART = {"legs": -0.5, "legt": 0.0, "lagt": 0.0, "fout": 0.0}
# An eigenvector entry smaller than this (vectors have unit norm) is treated as zero by the phase convention.
_PHASE_TOL = 1e-9


def _on_cpu(function):
    """Run ``function`` with the CPU as the default device: a constant of this module is a CPU tensor whatever device
    a ``with torch.device(...)`` block around the caller names (a meta build would otherwise cache meta tensors, and
    every later layer of that size would fail with "Cannot copy out of meta tensor")."""

    @functools.wraps(function)
    def on_cpu(*args, **kwargs):
        with torch.device("cpu"):
            return function(*args, **kwargs)

    return on_cpu


class NPLR(NamedTuple):
    """Half (one member per conjugate pair) of the NPLR form of a HiPPO matrix; see :func:`nplr`."""

    Lambda: Tensor  # (N/2,) complex
    P: Tensor  # (r, N/2) complex
    B: Tensor  # (N/2,) complex
    V: Tensor  # (N, N/2) complex


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}; got {measure!r}")


def _check_N(N: int, name: str = "N", even: bool = False, why: str = "") -> None:
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"{name} must be an int >= 1; got {N!r}")
    if even and N % 2:
        raise ValueError(f"{name} must be even{why}; got {N}")


@_on_cpu
def transition(measure: str, N: int) -> tuple[Tensor, Tensor]:
    """The HiPPO state matrix A and input vector B of a measure (continuous time, dx/dt = A x + B u).

    With R_n = sqrt(2n+1) (arXiv 2008.07669 Thms. 1-2, layout of the official code):
      legs: A_nk = -R_n R_k (n > k), -(n+1) (n = k), 0 (n < k);  B_n = R_n.
      legt: A_nk = -1/2 R_n R_k (1 if n >= k else (-1)^(n-k));  B_n = 1/2 R_n.  (Halved as in the official code;
            2206.12037 states it without the 1/2, which equals rescaling dt and B.)
      lagt: A = 1/2 I - (lower-triangular ones, diagonal included), so diag A = -1/2;  B = 1 (beta = 1).
      fout: B_0 = 1, B_2k = sqrt(2), odd entries 0; A = J - B B^T with J[2k, 2k+1] = -pi k, J[2k+1, 2k] = pi k
            (k = 1..N/2-1). Index 1 is a dead state (its row, column and B entry are 0). Needs even N.

    Args:
        measure: one of ``MEASURES``: "legs", "legt", "lagt", "fout".
        N: state size (even for "fout").

    Returns:
        A (N, N) float64 and B (N,) float64.
    """
    _check_measure(measure)
    _check_N(N, even=measure == "fout", why=" for measure 'fout' (cosine/sine pairs)")
    n = torch.arange(N, dtype=_F64)
    R = torch.sqrt(2 * n + 1)
    RR = R[:, None] * R[None, :]  # (N, N)
    if measure == "legs":
        A = -torch.tril(RR, -1) - torch.diag(n + 1)
        B = R.clone()
    elif measure == "legt":
        diff = n[:, None] - n[None, :]  # (N, N): n - k
        sign = torch.where((diff >= 0) | (diff % 2 == 0), 1.0, -1.0).to(_F64)
        A = -0.5 * RR * sign
        B = 0.5 * R
    elif measure == "lagt":
        A = 0.5 * torch.eye(N, dtype=_F64) - torch.tril(torch.ones(N, N, dtype=_F64))
        B = torch.ones(N, dtype=_F64)
    else:  # fout
        B = torch.zeros(N, dtype=_F64)
        B[0] = 1.0
        B[2::2] = math.sqrt(2.0)
        k = torch.arange(1, N // 2)
        J = torch.zeros(N, N, dtype=_F64)
        J[2 * k, 2 * k + 1] = -math.pi * k.to(_F64)
        J[2 * k + 1, 2 * k] = math.pi * k.to(_F64)
        A = J - torch.outer(B, B)
    return A, B


@_on_cpu
def rank_correction(measure: str, N: int) -> Tensor:
    """The low-rank term P with A + sum_i P_i P_i^T normal (arXiv 2111.00396 Thm. 1; 2206.12037 for LegT/FouT).

    legs (r=1): P_n = sqrt(n + 1/2), A + PP^T = -1/2 I + skew.
    legt (r=2): P_0 = sqrt(2n+1)/sqrt(2) on odd n (0 on even n), P_1 = the same on even n; A + sum PP^T is skew.
    lagt (r=1): P = (1/sqrt(2)) * 1; A + PP^T is skew.
    fout (r=1): P = B; A + PP^T is skew (with a double zero eigenvalue).

    Args:
        measure: one of ``MEASURES``.
        N: state size (even for "fout").

    Returns:
        P (r, N) float64.
    """
    _check_measure(measure)
    _check_N(N, even=measure == "fout", why=" for measure 'fout' (cosine/sine pairs)")
    n = torch.arange(N, dtype=_F64)
    if measure == "legs":
        return torch.sqrt(n + 0.5)[None, :]  # (1, N)
    if measure == "legt":
        half_R = torch.sqrt(2 * n + 1) / math.sqrt(2.0)
        odd = (n % 2 == 1).to(_F64)
        return torch.stack([half_R * odd, half_R * (1 - odd)])  # (2, N)
    if measure == "lagt":
        return torch.full((1, N), 1 / math.sqrt(2.0), dtype=_F64)
    return transition("fout", N)[1][None, :]  # (1, N)


def _fix_phase(V: Tensor) -> Tensor:
    """Rotate each column of V (N, M) complex so that its first nonzero entry is real and positive."""
    nonzero = (V.abs() > _PHASE_TOL).to(torch.int8)  # (N, M)
    first = nonzero.argmax(dim=0)  # (M,): argmax returns the first maximal index
    pivot = V[first, torch.arange(V.shape[1])]  # (M,)
    return V * (pivot.abs() / pivot)[None, :]  # (N, M)


@_on_cpu
def nplr(measure: str, N: int, B_clip: float | None = 2.0) -> NPLR:
    """Normal-plus-low-rank form of a HiPPO matrix, keeping one member of each conjugate eigenvalue pair.

    S4 (arXiv 2111.00396, Thm. 1): with P from :func:`rank_correction`, S = A + sum_i P_i P_i^T = c I + K with
    K real skew (c = -1/2 for legs, 0 otherwise). K is diagonalised as eigh(-i K) (Hermitian), K V = i w V, and the
    N/2 eigenvalues with w < 0 are kept: Lambda = c + i w (Im Lambda <= 0, most negative first); B̃ = V* B,
    P̃_i = V* P_i, and Im B̃ is clipped to [-B_clip, B_clip] (the official default 2.0; None = no clip).

    Phase convention: each column of V is rotated so that its first nonzero entry is real and positive. LAPACK's
    zheevd already returns a real first entry (the official clip depends on this phase); fixing the sign as well
    only flips signs of (B̃, P̃) pairs, which the symmetric clip and random C do not see.
    FouT: K has a double zero eigenvalue (span{e_0, e_1}); the kept zero mode is (e_0 + i e_1)/sqrt(2).

    Identity (holds to ~1e-13 in float64, tested): with Lambda_f = [Lambda, conj Lambda], V_f = [V, conj V]
    (N x N, unitary), P̃_f = V_f* P = [P̃, conj P̃] and, for B_clip=None, B̃_f = V_f* B = [B̃, conj B̃]:
        A = V_f (diag(Lambda_f) - sum_i P̃_f,i P̃_f,i*) V_f*,   B = 2 Re(V B̃),   P_i = 2 Re(V P̃_i).
    With the clip, B̃ no longer reproduces B (11 of 32 entries are clipped for legs at N = 64).

    The float64 eigendecomposition costs O(N³) (23-107 s at N = 2048-4096 on 2 CPU cores): it is computed once
    per (measure, N, B_clip) in a process and cached; every call returns fresh copies.

    Args:
        measure: one of ``MEASURES``.
        N: state size, even (N/2 conjugate pairs).
        B_clip: bound on |Im B̃| (> 0), or None for no clip.

    Returns:
        NPLR(Lambda (N/2,) complex, P (r, N/2) complex, B (N/2,) complex, V (N, N/2) complex), all complex128.
    """
    _check_measure(measure)
    _check_N(N, even=True, why=" for nplr (N/2 conjugate pairs)")
    if B_clip is not None and not B_clip > 0:
        raise ValueError(f"B_clip must be a positive float or None; got {B_clip!r}")
    return NPLR(*(t.clone() for t in _nplr_cached(measure, N, None if B_clip is None else float(B_clip))))


@functools.lru_cache(maxsize=32)
def _nplr_cached(measure: str, N: int, B_clip: float | None) -> NPLR:
    """:func:`nplr` for validated arguments, cached (callers must not modify the result: nplr hands out copies)."""
    A, B = transition(measure, N)
    P = rank_correction(measure, N)  # (r, N)
    c = _REAL_PART[measure]
    K = A + P.T @ P - c * torch.eye(N, dtype=_F64)  # (N, N) real skew
    # 1. Diagonalise the Hermitian -iK; eigenvalues ascend, so the first N/2 have w <= 0.
    w, V = torch.linalg.eigh(-1j * K.to(_C128))  # (N,), (N, N)
    w, V = w[: N // 2].clone(), V[:, : N // 2].clone()  # (N/2,), (N, N/2)
    # 2. FouT's double zero eigenvalue: a basis whose conjugate completes it.
    if measure == "fout":
        w[-1] = 0.0
        V[:, -1] = 0.0
        V[0, -1] = 1 / math.sqrt(2.0)
        V[1, -1] = 1j / math.sqrt(2.0)
    elif not w[-1] < 0:
        raise RuntimeError(f"nplr({measure!r}, {N}): unexpected zero eigenvalue {float(w[-1])}")
    # 3. Phase convention, then project B and P.
    V = _fix_phase(V)
    Lambda = c + 1j * w.to(_F64)  # (N/2,)
    B_t = V.conj().T @ B.to(_C128)  # (N/2,)
    P_t = P.to(_C128) @ V.conj()  # (r, N) @ (N, N/2) -> (r, N/2)
    if B_clip is not None:
        B_t = torch.complex(B_t.real, B_t.imag.clamp(-B_clip, B_clip))
    return NPLR(Lambda.to(_C128), P_t, B_t, V)


@_on_cpu
def s4d_eigenvalues(init: str, N: int) -> Tensor:
    """Diagonal S4D init eigenvalues, one per conjugate pair, with Im lambda <= 0 (arXiv 2206.11893 §4).

    For n = 0..N/2-1, N = d_state (the real state size, NOT the number of modes):
      lin:  lambda_n = -1/2 - i pi n
      inv:  lambda_n = -1/2 - i (N/pi)(N/(2n+1) - 1)
      real: lambda_n = -(n+1)   (imaginary part 0)
      legs: lambda = nplr("legs", N).Lambda   (exactly, -1/2 + i w with w < 0, largest |w| first)
    The paper writes the imaginary parts with a + sign; the conjugate-symmetric model is the same either way
    (2 Re and a complex normal C), and the - sign pairs with the B̃ of "legs".

    Args:
        init: one of ``S4D_INITS``: "lin", "inv", "real", "legs".
        N: d_state, even.

    Returns:
        Lambda (N/2,) complex128.
    """
    if init not in S4D_INITS:
        raise ValueError(f"init must be one of {S4D_INITS}; got {init!r}")
    _check_N(N, even=True, why=" (d_state holds N/2 conjugate pairs)")
    if init == "legs":
        return nplr("legs", N).Lambda
    n = torch.arange(N // 2, dtype=_F64)
    if init == "real":
        return torch.complex(-(n + 1), torch.zeros_like(n))
    if init == "lin":
        imag = math.pi * n
    else:  # inv
        imag = (N / math.pi) * (N / (2 * n + 1) - 1)
    return torch.complex(torch.full_like(n, -0.5), -imag)


@_on_cpu
def s4d_input_matrix(init: str, N: int) -> Tensor:
    """S4D init input vector B, one entry per conjugate pair (arXiv 2206.11893 §4).

    B = 1 for "lin", "inv", "real"; for "legs" B = nplr("legs", N).B = V* B_HiPPO with Im clipped to +-2.
    The S4D paper's kernel matches the DPLR kernel with 1/2 V* B; the official code deliberately drops the 1/2
    and so does this function (it only rescales C).

    Args:
        init: one of ``S4D_INITS``.
        N: d_state, even.

    Returns:
        B (N/2,) complex128.
    """
    if init not in S4D_INITS:
        raise ValueError(f"init must be one of {S4D_INITS}; got {init!r}")
    _check_N(N, even=True, why=" (d_state holds N/2 conjugate pairs)")
    if init == "legs":
        return nplr("legs", N).B
    return torch.ones(N // 2, dtype=_C128)


@_on_cpu
def dss_eigenvalues(N_modes: int) -> Tensor:
    """DSS init: the Im > 0 eigenvalues of the skew part of HiPPO-LegS(2 N_modes), minus 1/2 (arXiv 2203.14343 §3).

    lambda = -1/2 + i w for the eigenvalues i w (w > 0) of (A - A^T)/2, A = LegS(2 N_modes), largest w first;
    this equals conj(nplr("legs", 2 N_modes).Lambda). DSS's N counts complex modes, so N_modes = d_state / 2.

    Computed once per N_modes in a process (an O(N³) eigendecomposition) and cached; each call returns a copy.

    Args:
        N_modes: number of complex modes (DSS's N).

    Returns:
        Lambda (M,) complex128, M = N_modes.
    """
    _check_N(N_modes, name="N_modes")
    return _dss_eigenvalues_cached(N_modes).clone()


@functools.lru_cache(maxsize=32)
def _dss_eigenvalues_cached(N_modes: int) -> Tensor:
    A, _ = transition("legs", 2 * N_modes)
    K = 0.5 * (A - A.T)  # (2N, 2N) real skew
    w = torch.linalg.eigvalsh(-1j * K.to(_C128))  # (2N,) ascending; K has eigenvalues i w
    w = w.flip(0)[:N_modes]  # (N,) the positive half, largest first
    return torch.complex(torch.full_like(w, -0.5), w)


@_on_cpu
def s5_eigen(P: int, blocks: int, conj_sym: bool = True) -> tuple[Tensor, Tensor]:
    """S5's init: eigenvalues and eigenvectors of the normal part of HiPPO-LegS, block-diagonal with J blocks.

    S5 (arXiv 2208.04933 §4.3 and App. B.1.1): the normal part S = A_LegS + P Pᵀ (P_n = √(n + ½)) of a block of
    size P/J is diagonalised, S = V Λ V*, with Re Λ = -½ and V unitary (:func:`nplr` with no clip); the J blocks
    repeat it on the block diagonal. With ``conj_sym`` one eigenvalue of each conjugate pair is kept (the
    Im λ < 0 half, as the official code keeps the first half of an ascending eigh), so there are M = P/2 modes and
    V is (P, P/2); without it all P eigenvalues are kept, M = P, V is (P, P). B̃ = V* B and C̃ = C V.

    Args:
        P: the state size of the full (un-halved) system: P/J must be an even int.
        blocks: J, the number of blocks.
        conj_sym: keep one eigenvalue per conjugate pair.

    Returns:
        Lambda (M,) complex128 and V (P, M) complex128 (block-diagonal).
    """
    _check_N(blocks, name="blocks")
    if isinstance(P, bool) or not isinstance(P, int) or P < 2 or P % (2 * blocks):
        raise ValueError(f"P must be a positive multiple of 2·blocks = {2 * blocks} (even blocks of P/J); got {P!r}")
    size = P // blocks
    Lambda, _, _, V = nplr("legs", size, B_clip=None)  # (size/2,), (size, size/2)
    if not conj_sym:
        Lambda, V = torch.cat([Lambda, Lambda.conj()]), torch.cat([V, V.conj()], dim=1)  # (size,), (size, size)
    Lambda = Lambda.repeat(blocks)  # (M,)
    V = torch.block_diag(*([V] * blocks))  # (P, M)
    return Lambda, V
