"""The views of a diagonal LTI SSM the layers use beside the scan: kernel, two-sided convolution, recurrent step.

A bank of H single-input single-output systems with M diagonal modes each (arXiv 2206.11893 §2):

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,    y_t = Re(Σ_n C_n x_{t,n})

Layers with conjugate-pair modes (S4D) pass 2·C; layers with plain complex modes (DSS) pass C. The choice
between the scan's paths (loop, chunked GEMMs, kernel + FFT convolution) is :func:`ssmkit.ops.scan.ssm_scan`'s
own dispatch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ssmkit.ops.backend import dispatch, tracing
from ssmkit.ops.fftconv import bidirectional_conv
from ssmkit.ops.kernels import vandermonde


def diagonal_kernel(
    A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, L: int, *, backend: str | None = None
) -> torch.Tensor:
    """The convolution kernel K_l = Re Σ_n C_n B̄_n Ā_n^l (arXiv 2206.11893 eq. 5).

    Backends: those of :func:`ssmkit.ops.kernels.vandermonde` (``"reference"``, ``"chunked"``; ``"auto"`` ->
    ``"chunked"``), which it calls with W = C·B̄.

    Args:
        A_bar: (H, M) complex discrete state matrix (diagonal).
        B_bar: (H, M) complex discrete input matrix.
        C: (H, M) or (C, H, M) complex output matrix (one per output channel).
        L: kernel length.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        (H, L) real kernel, or (C, H, L) when C has an output-channel dimension.
    """
    return vandermonde(C * B_bar, A_bar, L, backend=backend)


def _bidirectional_reference(u, A_bar, B_bar, C):
    return bidirectional_conv(u, vandermonde(C * B_bar, A_bar, u.shape[1], backend="reference"), backend="reference")


def _bidirectional_fft(u, A_bar, B_bar, C):
    return bidirectional_conv(u, vandermonde(C * B_bar, A_bar, u.shape[1], backend="chunked"), backend="fft")


_BIDIRECTIONAL = {"reference": _bidirectional_reference, "fft": _bidirectional_fft}


def diagonal_ssm_bidirectional(
    u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Non-causal diagonal SSM: a causal kernel from C[0] plus an anti-causal one from C[1].

    y = two-sided convolution of u with K_c,l = Re Σ_n C_c,n B̄_n Ā_n^l (arXiv 2206.11893 eq. 5; the convention
    of :func:`ssmkit.ops.fftconv.bidirectional_conv`). Backends: ``"reference"`` -> the loop kernel and the loop
    convolution; ``"fft"`` -> the power-table GEMM kernel and the FFT convolution; ``"auto"`` -> ``"fft"``;
    ``"chunked"`` and ``"triton"`` raise.

    Args:
        u: (B, L, H) real input.
        A_bar, B_bar: (H, M) complex.
        C: (2, H, M) complex output matrices of the forward and backward systems.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        y (B, L, H) = Σ_{s≤t} K0[t-s] u_s + Σ_{s>t} K1[s-t-1] u_s.
    """
    return dispatch("diagonal_ssm_bidirectional", _BIDIRECTIONAL, backend, auto="fft")(u, A_bar, B_bar, C)


class DiagonalStepCoefficients(NamedTuple):
    """The matrices of one diagonal SSM step, in the layout the step reads (from :func:`diagonal_step_coefficients`).

    Attributes:
        A_bar: (H, M) complex (or real) Ā.
        B_bar: (H, M, 2) real view of a complex B̄ (or (H, M) real).
        C_row: (H, 2M) real [Re C_1, -Im C_1, Re C_2, ...], so that Re Σ_n C_n x_n = C_row · view_as_real(x)
            (or (H, M) real C).
    """

    A_bar: torch.Tensor
    B_bar: torch.Tensor
    C_row: torch.Tensor


def diagonal_step_coefficients(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor) -> DiagonalStepCoefficients:
    """Prepare Ā, B̄, C for :func:`diagonal_ssm_step` (computed once, reused for every step).

    Args:
        A_bar, B_bar, C: (H, M) complex (or all real).

    Returns:
        :class:`DiagonalStepCoefficients`.
    """
    if not A_bar.is_complex():
        return DiagonalStepCoefficients(A_bar, B_bar, C)
    C_row = torch.view_as_real(C.conj().resolve_conj()).flatten(-2)  # (H, 2M): [Re C, -Im C] per mode
    return DiagonalStepCoefficients(A_bar, torch.view_as_real(B_bar.resolve_conj()), C_row)


def diagonal_ssm_step(
    u_t: torch.Tensor, coeffs: DiagonalStepCoefficients, state: torch.Tensor, D: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step x_t = Ā ⊙ x_{t-1} + B̄ u_t, y_t = Re(Σ_n C_n x_{t,n}) + D u_t, in O(H·M) (arXiv 2206.11893 §2).

    Four real kernels in eager mode (this is the hot loop of generation and control): Ā ⊙ x, then B̄ u added in
    place through the real view (a complex × real product has no fused kernel), Re Σ_n C_n x_n as one real
    ``vecdot`` with the prepared row (complex reductions are scalar code on CPU), and the skip as one ``addcmul``.
    Under torch.func or torch.compile the in-place add takes its functional form.

    Args:
        u_t: (B, H) real input.
        coeffs: Ā, B̄, C prepared by :func:`diagonal_step_coefficients`.
        state: (B, H, M) x_{t-1}, complex (or real), Ā's dtype.
        D: (H,) real skip, or None for none.

    Returns:
        y_t (B, H) real (with D u_t when D is given) and x_t (B, H, M).
    """
    A_bar, B_bar, C_row = coeffs
    u = u_t.unsqueeze(-1)  # (B, H, 1)
    if not A_bar.is_complex():
        x = torch.addcmul(A_bar * state, B_bar, u)  # (B, H, M)
        y = torch.linalg.vecdot(C_row, x)  # (B, H)
    else:
        if tracing():
            x = A_bar * state + torch.view_as_complex(B_bar) * u  # (B, H, M)
        else:
            x = A_bar * state  # (B, H, M): a fresh tensor, so the in-place add below is safe
            torch.view_as_real(x).addcmul_(B_bar, u.unsqueeze(-1))  # (B, H, M, 2): += B̄ u
        y = torch.linalg.vecdot(C_row, torch.view_as_real(x).flatten(-2))  # (B, H): Re Σ_n C_n x_n
    return (y if D is None else torch.addcmul(y, D, u_t)), x
