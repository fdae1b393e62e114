"""The three views of a diagonal LTI SSM for the layers: scan (any backend), kernel, and one recurrent step.

A bank of H single-input single-output systems with M diagonal modes each (arXiv 2206.11893 §2):

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,    y_t = Re(Σ_n C_n x_{t,n})

Layers with conjugate-pair modes (S4D) pass 2·C; layers with plain complex modes (DSS) pass C. The choice
between the scan's paths (loop, chunked GEMMs, kernel + FFT convolution) is :func:`ssmkit.ops.scan.ssm_scan`'s
own dispatch; :func:`diagonal_ssm` is a thin wrapper over it, kept for the layers' current call sites.
"""

from __future__ import annotations

import torch

from ssmkit.ops.backend import dispatch
from ssmkit.ops.fftconv import bidirectional_conv
from ssmkit.ops.kernels import vandermonde
from ssmkit.ops.scan import ssm_scan


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


def diagonal_ssm(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the diagonal SSM over a sequence, from ``state`` (zeros if None): :func:`ssmkit.ops.scan.ssm_scan`.

    y_t = Re(Σ_n C_n x_{t,n}) + D u_t (arXiv 2206.11893 §2). Backends: those of ``ssm_scan`` (``"reference"``,
    ``"chunked"``, ``"fft"``; ``"auto"`` -> ``"chunked"``).

    Args:
        u: (B, L, H) real input.
        A_bar, B_bar, C: (H, M) complex (or all real).
        state: (B, H, M) state x_{-1} before the first input, or None.
        D: (H,) real skip (u's dtype), or None for none.
        return_state: whether to compute the final state (else None in its place).
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        y (B, L, H) including the skip D u, and the final state x_{L-1} (B, H, M) (or None).
    """
    return ssm_scan(u, A_bar, B_bar, C, state, D, return_state=return_state, backend=backend)


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


def diagonal_ssm_step(
    u_t: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step x_t = Ā ⊙ x_{t-1} + B̄ u_t, y_t = Re(Σ_n C_n x_{t,n}), in O(H·M).

    Args:
        u_t: (B, H) real input.
        A_bar, B_bar, C: (H, M) complex (or all real).
        state: (B, H, M) x_{t-1}.

    Returns:
        y_t (B, H) real (no skip term) and x_t (B, H, M).
    """
    x = A_bar * state + B_bar * u_t.unsqueeze(-1)  # (B, H, M)
    y = (C * x).sum(-1)  # (B, H)
    return (y.real if y.is_complex() else y), x
