"""The three views of a diagonal LTI SSM: scan, FFT convolution, and one recurrent step.

A bank of H single-input single-output systems with M diagonal modes each (arXiv 2206.11893 §2):

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,    y_t = Re(Σ_n C_n x_{t,n})

Layers with conjugate-pair modes (S4D) pass 2·C; layers with plain complex modes (DSS) pass C.
The convolution view uses the kernel K_l = Re Σ_n C_n B̄_n Ā_n^l and adds the initial state's
contribution Re Σ_n C_n Ā_n^{l+1} x_{-1}. Which view runs is decided here, in one place:
backend ``"fft"`` uses the convolution; every other backend uses :func:`ssm_scan`, which itself
dispatches between its reference loop and its chunked path.
"""

from __future__ import annotations

import torch

from ssmkit.ops.backend import get_backend
from ssmkit.ops.fftconv import bidirectional_conv, causal_conv, initial_state_output
from ssmkit.ops.kernels import vandermonde
from ssmkit.ops.scan import ssm_final_state, ssm_scan


def diagonal_kernel(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """The convolution kernel K_l = Re Σ_n C_n B̄_n Ā_n^l (arXiv 2206.11893 eq. 5).

    Args:
        A_bar: (H, M) complex discrete state matrix (diagonal).
        B_bar: (H, M) complex discrete input matrix.
        C: (H, M) or (C, H, M) complex output matrix (one per output channel).
        L: kernel length.

    Returns:
        (H, L) real kernel, or (C, H, L) when C has an output-channel dimension.
    """
    return vandermonde(C * B_bar, A_bar, L)


def diagonal_ssm(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the diagonal SSM over a sequence, from ``state`` (zeros if None).

    y_t = Re(Σ_n C_n x_{t,n}) + D u_t: the skip D enters the kernel as K_0 + D (the chunked scan's
    Toeplitz diagonal, the FFT kernel's first tap), so it costs no separate pass over (B, L, H).

    Args:
        u: (B, L, H) real input.
        A_bar, B_bar, C: (H, M) complex (or all real).
        state: (B, H, M) state x_{-1} before the first input, or None.
        D: (H,) real skip (u's dtype), or None for none.

    Returns:
        y (B, L, H) including the skip D u, and the final state x_{L-1} (B, H, M).
    """
    if get_backend() != "fft":
        return ssm_scan(u, A_bar, B_bar, C, state, D=D)
    L = u.shape[1]
    K = diagonal_kernel(A_bar, B_bar, C, L)  # (H, L)
    if D is not None:
        K = torch.cat([K[:, :1] + D[:, None], K[:, 1:]], dim=1)  # (H, L): K_0 + D
    y = causal_conv(u, K)  # (B, L, H)
    if state is not None:
        y = y + initial_state_output(C, A_bar, state, L)  # (B, L, H)
    return y, ssm_final_state(u, A_bar, B_bar, state)


def diagonal_ssm_bidirectional(
    u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """Non-causal diagonal SSM: a causal kernel from C[0] plus an anti-causal one from C[1].

    Args:
        u: (B, L, H) real input.
        A_bar, B_bar: (H, M) complex.
        C: (2, H, M) complex output matrices of the forward and backward systems.

    Returns:
        y (B, L, H) = Σ_{s≤t} K0[t-s] u_s + Σ_{s>t} K1[s-t-1] u_s.
    """
    return bidirectional_conv(u, diagonal_kernel(A_bar, B_bar, C, u.shape[1]))


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
