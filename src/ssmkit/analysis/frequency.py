"""Transfer functions of a bank of discrete-time systems, evaluated through a complex Schur form.

For system g of a bank (``ssmkit.analysis.StateSpace``) the transfer function is

    H(z) = C (zI - A)^{-1} B + D.

With the complex Schur form A = Z T Z^H (Z unitary, T upper triangular; Golub & Van Loan, Matrix
Computations, 4th ed., §7.1.3) it becomes H(z) = (C Z) (zI - T)^{-1} (Z^H B) + D, which back substitution in T
evaluates stably at any z (no inverse, no eigenvector basis: Laub, IEEE TAC 26(2), 1981). When T is diagonal
(A normal, as for every bank of diagonal SSMs) the solve is the modal sum Σ_n (C Z)_n (Z^H B)_n / (z - T_nn).

A complex bank's physical output is the real part, y = Re(C x + D u) with real u; its transfer function is
(H(z) + conj H(conj z)) / 2 (`physical_transfer`).

Letters: G systems, n states, m inputs, p outputs, W evaluation points per system.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["SchurForm", "modal_transfer", "physical_transfer", "schur_form", "schur_transfer", "triangular_transfer"]

# Memory bound (bytes) of one block of the (G, W, n, m) work array in `schur_transfer`.
_CHUNK_BYTES = 1 << 26


class SchurForm(NamedTuple):
    """The complex Schur form A = Z T Z^H of each system of a bank, with B and C in the Schur basis.

    Fields:
        T: (G, n, n) complex upper triangular.
        Bt: (G, n, m) complex, Z^H B.
        Ct: (G, p, n) complex, C Z.
        normal: (G,) bool, True where T is diagonal up to rounding (A normal): such systems use the modal sum.
    """

    T: np.ndarray
    Bt: np.ndarray
    Ct: np.ndarray
    normal: np.ndarray


def schur_form(A: np.ndarray, B: np.ndarray, C: np.ndarray) -> SchurForm:
    """Complex Schur form A = Z T Z^H of each system, and Z^H B, C Z (Golub & Van Loan §7.1.3).

    T counts as diagonal (``normal``) when max |T_ij| over i < j is at most 16 n eps ||A||_F, which every bank
    built by ``StateSpace.from_diagonal`` satisfies.

    Args:
        A: (G, n, n) state matrices (real or complex).
        B: (G, n, m) input matrices.
        C: (G, p, n) output matrices.

    Returns:
        SchurForm with T (G, n, n), Bt (G, n, m), Ct (G, p, n) complex and normal (G,) bool.
    """
    import scipy.linalg  # here, not at module top: `import ssmkit` stays free of scipy

    G, n = A.shape[0], A.shape[1]
    T = np.empty((G, n, n), np.complex128)
    Z = np.empty((G, n, n), np.complex128)
    for g in range(G):
        T[g], Z[g] = scipy.linalg.schur(A[g].astype(np.complex128), output="complex")
    Zh = Z.conj().transpose(0, 2, 1)  # (G, n, n)
    off = np.abs(np.triu(T, 1)).max((1, 2))  # (G,)
    tol = 16 * n * np.finfo(np.float64).eps * np.linalg.norm(A, axis=(1, 2))  # (G,)
    return SchurForm(T, Zh @ B, C @ Z, off <= tol)  # (G, n, n), (G, n, m), (G, p, n), (G,)


def modal_transfer(lam: np.ndarray, Bt: np.ndarray, Ct: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Σ_n Ct[:, n] Bt[n, :] / (z - λ_n): the transfer C (zI - A)^{-1} B of a diagonal (normal) system.

    Args:
        lam: (G, n) complex eigenvalues λ (the diagonal of T).
        Bt: (G, n, m) complex input matrix in the eigenbasis.
        Ct: (G, p, n) complex output matrix in the eigenbasis.
        z: (G, W) complex evaluation points of each system.

    Returns:
        (G, p, m, W) complex (no D term).
    """
    G, n = lam.shape
    p, m, W = Ct.shape[1], Bt.shape[2], z.shape[1]
    residues = (Ct[:, :, :, None] * Bt[:, None, :, :]).transpose(0, 1, 3, 2).reshape(G, p * m, n)  # (G, pm, n)
    R = 1.0 / (z[:, None, :] - lam[:, :, None])  # (G, n, W)
    return (residues @ R).reshape(G, p, m, W)  # (G, pm, W) -> (G, p, m, W)


def triangular_transfer(T: np.ndarray, Bt: np.ndarray, Ct: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Ct (zI - T)^{-1} Bt for upper triangular T, by back substitution at every z.

    Row i of (zI - T) Y = Bt reads (z - T_ii) Y_i = Bt_i + Σ_{j>i} T_ij Y_j, solved for i = n-1 down to 0.

    Args:
        T: (G, n, n) complex upper triangular.
        Bt: (G, n, m) complex.
        Ct: (G, p, n) complex.
        z: (G, W) complex evaluation points of each system.

    Returns:
        (G, p, m, W) complex (no D term).
    """
    Gt, n, m = Bt.shape
    Wc = z.shape[1]
    Y = np.empty((Gt, n, Wc, m), np.complex128)  # solution of (zI - T) Y = Bt at every z
    for i in range(n - 1, -1, -1):  # back substitution, row i: (z - T_ii) Y_i = Bt_i + Σ_{j>i} T_ij Y_j
        acc = np.broadcast_to(Bt[:, i, None, :], (Gt, Wc, m))  # (Gt, Wc, m)
        if i < n - 1:
            rest = Y[:, i + 1 :].reshape(Gt, n - 1 - i, Wc * m)  # (Gt, n-1-i, Wc*m)
            acc = acc + (T[:, i : i + 1, i + 1 :] @ rest).reshape(Gt, Wc, m)  # (Gt, 1, Wc*m) -> (Gt, Wc, m)
        Y[:, i] = acc / (z - T[:, i, i, None])[..., None]  # (Gt, Wc, m)
    H = Ct @ Y.reshape(Gt, n, Wc * m)  # (Gt, p, n) @ (Gt, n, Wc*m) -> (Gt, p, Wc*m)
    return H.reshape(Gt, -1, Wc, m).transpose(0, 1, 3, 2)  # (Gt, p, m, Wc)


def schur_transfer(schur: SchurForm, D: np.ndarray, z: np.ndarray) -> np.ndarray:
    """H(z) = (C Z) (zI - T)^{-1} (Z^H B) + D of each system g at its own points z[g] (no real part taken).

    Normal systems use `modal_transfer`, the others `triangular_transfer`; z is processed in blocks whose
    work array stays within 64 MiB. A pole on z gives inf or nan there (no warning).

    Args:
        schur: the bank's `SchurForm` (from `schur_form`).
        D: (G, p, m) feedthrough matrices.
        z: (G, W) complex evaluation points.

    Returns:
        (G, p, m, W) complex.
    """
    T, Bt, Ct, normal = schur
    G, n, m = Bt.shape
    p, W = Ct.shape[1], z.shape[1]
    out = np.empty((G, p, m, W), np.complex128)
    step = max(1, _CHUNK_BYTES // (16 * G * n * max(m, p)))
    lam = np.diagonal(T, axis1=1, axis2=2)  # (G, n)
    modal, tri = np.flatnonzero(normal), np.flatnonzero(~normal)  # (Gm,), (Gt,) system indices
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for s in range(0, W, step):
            zc = z[:, s : s + step]  # (G, Wc)
            H = np.empty((G, p, m, zc.shape[1]), np.complex128)
            if modal.size:  # normal systems: modal sum
                H[modal] = modal_transfer(lam[modal], Bt[modal], Ct[modal], zc[modal])
            if tri.size:  # the others: back substitution in T
                H[tri] = triangular_transfer(T[tri], Bt[tri], Ct[tri], zc[tri])
            out[..., s : s + step] = H + D[..., None]  # (G, p, m, Wc)
    return out


def physical_transfer(schur: SchurForm, D: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Transfer of the real-part system y = Re(C x + D u) with real u: (H(z) + conj H(conj z)) / 2.

    For a real bank this equals H(z) (then H(conj z) = conj H(z)); ``StateSpace`` calls `schur_transfer`
    directly for real banks, at half the cost.

    Args:
        schur: the bank's `SchurForm` (from `schur_form`).
        D: (G, p, m) feedthrough matrices (real or complex).
        z: (G, W) complex evaluation points.

    Returns:
        (G, p, m, W) complex.
    """
    W = z.shape[1]
    both = schur_transfer(schur, D, np.concatenate([z, z.conj()], 1))  # (G, p, m, 2W)
    return 0.5 * (both[..., :W] + both[..., W:].conj())  # (G, p, m, W)
