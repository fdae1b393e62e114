"""Diagonal SSM convolution kernels: the Vandermonde product K_l = Re Σ_n W_n Ā_n^l.

Implements the kernel of a diagonal state-space model from "On the Parameterization and Initialization
of Diagonal State Space Models" (S4D, Gu, Gupta, Goel, Ré; arXiv 2206.11893, §3: K = (C ∘ B̄) · V_L(Ā),
V_L the Vandermonde matrix of the powers Ā^l). Callers fold the product C·B̄ (and the factor 2 of a
conjugate pair) into the weights W.

Two paths, same signature:
- ``vandermonde_reference``: a loop over l with repeated products (the test oracle).
- the fast path of ``vandermonde``: a two-level power table and one batched real GEMM. Write
  l = q·T + r with T ≈ √L; then Ā^l = Ā^{qT} · Ā^r and
  K[h, q·T + r] = Re Σ_n (W Ā^{qT})[h, q, n] · (Ā^r)[h, n, r],
  a (Q × N) @ (N × T) product per channel. Complex operands go through the real/imag split
  Re(XY) = X_re Y_re − X_im Y_im, one GEMM over 2N. The tables Ā^r (r < T) and Ā^{qT} (q < Q) are
  built by repeated doubling in float64/complex128, whatever the input precision, so the only
  float32 rounding is in the GEMM. Nothing of size (…, H, N, L) is ever allocated
  (REFERENCE.md §6.1: 22 ms against 370 ms for a complex ``exp`` over (H, N, L)).
"""

from __future__ import annotations

import math

import torch

from ssmkit.ops.backend import get_backend, unavailable
from ssmkit.ops.powers import power_table

_REAL = (torch.float32, torch.float64)
_COMPLEX = (torch.complex64, torch.complex128)


def _check_vandermonde_args(W: torch.Tensor, A_bar: torch.Tensor, L: int) -> None:
    """Raise ``ValueError`` unless W (..., H, N) and A_bar (H, N) share one float/complex dtype and L >= 1."""
    for name, x in (("W", W), ("A_bar", A_bar)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dtype not in _REAL + _COMPLEX:
            raise ValueError(
                f"{name} must be float32, float64, complex64 or complex128; got {x.dtype}"
            )
    if A_bar.dim() != 2:
        raise ValueError(f"A_bar must be (H, N) (2 dimensions); got shape {tuple(A_bar.shape)}")
    if W.dim() < 2 or tuple(W.shape[-2:]) != tuple(A_bar.shape):
        H, N = A_bar.shape
        raise ValueError(
            f"W must be (..., H, N) = (..., {H}, {N}) to match A_bar; got shape {tuple(W.shape)}"
        )
    if W.dtype != A_bar.dtype:
        raise ValueError(f"W and A_bar must have the same dtype; got W {W.dtype} and A_bar {A_bar.dtype}")
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be an int >= 1; got {L!r}")


def vandermonde_reference(W: torch.Tensor, A_bar: torch.Tensor, L: int) -> torch.Tensor:
    """Diagonal SSM kernel by a loop over l (the oracle): K_l = Re Σ_n W_n Ā_n^l.

    arXiv 2206.11893 §3 (kernel K = (C ∘ B̄)·V_L(Ā) of a diagonal SSM). Powers are formed by repeated
    multiplication in the input precision; Re is the identity for real inputs.

    Args:
        W: (..., H, N) weights, real or complex (e.g. 2·C·B̄ for conjugate pairs); leading batch dims
            allowed.
        A_bar: (H, N) discrete diagonal state matrix Ā, same dtype as W.
        L: kernel length, >= 1.

    Returns:
        (..., H, L) real kernel (float32 for float32/complex64 inputs, float64 otherwise).
    """
    _check_vandermonde_args(W, A_bar, L)
    power = torch.ones_like(A_bar)  # (H, N): Ā^0
    taps = []
    for _ in range(L):
        tap = (W * power).sum(-1)  # (..., H)
        taps.append(tap.real if tap.is_complex() else tap)
        power = power * A_bar  # (H, N): Ā^{l+1}
    return torch.stack(taps, dim=-1)  # (..., H, L)


def _block_size(L: int, batch: int) -> int:
    """Inner block T of the split l = q·T + r.

    The cost is ≈ H·N·(T + batch·L/T) elementwise work (the Ā^r table and the left factor) plus a GEMM
    of fixed size, so T ≈ √(batch·L); rounded up to a multiple of 8 for the GEMM and at most L.
    Measured on 2 CPU cores (H=128, N=32): T = √L is best for one kernel; for batch 8, T ≈ 2–3·√L.
    """
    T = math.isqrt(batch * L - 1) + 1 if batch * L > 1 else 1  # ceil(√(batch·L))
    T = T if T <= 8 else 8 * math.ceil(T / 8)
    return min(T, L)


def vandermonde_gemm(W: torch.Tensor, A_bar: torch.Tensor, L: int) -> torch.Tensor:
    """Diagonal SSM kernel by a two-level power table and one batched GEMM: K_l = Re Σ_n W_n Ā_n^l.

    arXiv 2206.11893 §3. With l = q·T + r, K[h, qT + r] = Re Σ_n (W Ā^{qT})[h, q, n] (Ā^r)[h, n, r]
    (the GEMM-built kernel of REFERENCE.md §6.1). Same signature and result as :func:`vandermonde_reference`.
    The gradient with respect to A_bar is that of the formula everywhere (also at Ā = 0: no logarithm
    is taken).

    Args:
        W: (..., H, N) weights, real or complex; leading batch dims allowed.
        A_bar: (H, N) discrete diagonal state matrix Ā, same dtype as W.
        L: kernel length, >= 1.

    Returns:
        (..., H, L) real kernel (float32 for float32/complex64 inputs, float64 otherwise).
    """
    _check_vandermonde_args(W, A_bar, L)
    H, N = A_bar.shape
    batch = W.shape[:-2]
    Bt = math.prod(batch)  # number of weight sets sharing A_bar
    T = _block_size(L, max(Bt, 1))
    Q = -(-L // T)  # ceil(L / T)

    # 1. Power tables in double precision: Ā^r (r < T) and Ā^{qT} (q < Q).
    wide = torch.complex128 if A_bar.is_complex() else torch.float64
    A_wide = A_bar.to(wide)  # (H, N)
    inner = power_table(A_wide, T)  # (H, N, T): Ā^r
    A_T = inner[..., -1] * A_wide  # (H, N): Ā^T
    outer = power_table(A_T, Q).to(A_bar.dtype)  # (H, N, Q): Ā^{qT}
    inner = inner.to(A_bar.dtype)

    # 2. Left factor X[h, b, q, n] = W[b, h, n] Ā[h, n]^{qT}, batch folded into the GEMM rows.
    W_h = W.reshape(Bt, H, N).transpose(0, 1)  # (H, Bt, N)
    X = W_h.unsqueeze(2) * outer.transpose(1, 2).unsqueeze(1)  # (H, Bt, Q, N)

    # 3. One batched GEMM over the channels; complex operands split as Re(XY) = X_re Y_re − X_im Y_im.
    if X.is_complex():
        X = torch.cat([X.real, -X.imag], dim=-1)  # (H, Bt, Q, 2N)
        Y = torch.cat([inner.real, inner.imag], dim=-2)  # (H, 2N, T)
    else:
        Y = inner  # (H, N, T)
    K = torch.bmm(X.reshape(H, Bt * Q, X.shape[-1]), Y)  # (H, Bt·Q, T)

    # 4. Unfold l = q·T + r and drop the padding beyond L.
    K = K.reshape(H, Bt, Q * T)[..., :L]  # (H, Bt, L)
    return K.transpose(0, 1).reshape(*batch, H, L)  # (..., H, L)


def vandermonde(W: torch.Tensor, A_bar: torch.Tensor, L: int) -> torch.Tensor:
    """Diagonal SSM convolution kernel K_l = Re Σ_n W_n Ā_n^l, l = 0..L−1 (arXiv 2206.11893 §3).

    For S4D with conjugate pairs pass W = 2·C·B̄ (C (H, N) complex, B̄ (H, N) complex) to get
    K_l = 2 Re Σ_n C_n B̄_n Ā_n^l; for a state contribution pass W of shape (B, H, N).

    Backends (``ssmkit.ops.set_backend``):
        ``"reference"`` -- :func:`vandermonde_reference` (loop over l);
        ``"auto"``, ``"chunked"``, ``"fft"`` -- :func:`vandermonde_gemm` (power table + GEMM; the same
        matmul-shaped path on every device);
        ``"triton"`` -- raises ``RuntimeError`` (no Triton kernel; the GEMM path already runs on GPU).

    Args:
        W: (..., H, N) weights, real or complex (float32/64, complex64/128); leading batch dims allowed.
        A_bar: (H, N) discrete diagonal state matrix Ā, same dtype as W.
        L: kernel length, >= 1.

    Returns:
        (..., H, L) real kernel (float32 for float32/complex64 inputs, float64 otherwise).
    """
    backend = get_backend()
    if backend == "reference":
        return vandermonde_reference(W, A_bar, L)
    if backend == "triton":
        raise unavailable(
            "vandermonde", backend, "it has no Triton kernel; use 'auto' (a GEMM that runs on GPU)"
        )
    return vandermonde_gemm(W, A_bar, L)
