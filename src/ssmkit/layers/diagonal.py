"""The shared implementation of the diagonal LTI layers (S4D, DSS): a bank of H SISO systems with M complex modes.

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,   y_t = Re(Σ_n C_n x_{t,n}) + D u_t      (arXiv 2206.11893 §2)

A subclass gives the discretised matrices (:meth:`DiagonalLTILayer.discrete`) and the skip ``D``; the three views
(chunked scan, kernel + FFT convolution, recurrent step), the kernel, the state and the state-space export are
here. Conjugate-pair layers (S4D) fold their factor 2 into C.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from ssmkit.layers.cache import ValueCache
from ssmkit.layers.protocol import Capabilities, SequenceLayer, float32_core, with_skip
from ssmkit.layers.state import TensorSpec
from ssmkit.ops.backend import get_backend
from ssmkit.ops.diagonal import (
    DiagonalStepCoefficients,
    diagonal_kernel,
    diagonal_ssm_bidirectional,
    diagonal_ssm_step,
    diagonal_step_coefficients,
)
from ssmkit.ops.native.diagonal import ssm_scan_native
from ssmkit.ops.scan import auto_scan_backend, ssm_scan

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def two_sided_scans(u: torch.Tensor, A: Sequence[torch.Tensor], B: Sequence[torch.Tensor], C: Sequence[torch.Tensor],
                    D: torch.Tensor, backend: str) -> torch.Tensor:
    """y_t = Σ_{s≤t} K0[t-s] u_s + Σ_{s>t} K1[s-t-1] u_s + D u_t by two scans: the causal one with (A[0], B[0], C[0])
    and the skip, and the anti-causal one, which in reversed time τ = L-1-t is the scan z of the reversed input with
    (A[1], B[1], C[1]) delayed by one step (the current input is counted once, by the causal part). The C kernel runs
    that scan backwards in time itself (``reverse``: z_t = Σ_{s≥t} K1[s-t] u_s at its own index), and z is added in
    place, y_t += z_{t+1} for t < L-1: no flipped copies. Other backends scan the flipped input and add the flipped
    result, y_t += z_{L-2-t} (a padded, flipped copy and a sum made four passes over (B, L, H); beside a busy process
    each a parallel region)."""
    y, _ = ssm_scan(u, A[0], B[0], C[0], D=D, return_state=False, backend=backend)  # (B, L, H)
    if backend == "native":
        z, _ = ssm_scan_native(u, A[1], B[1], C[1], return_state=False, reverse=True)  # (B, L, H), own indices
        y[:, :-1] += z[:, 1:]
        return y
    z, _ = ssm_scan(u.flip(1), A[1], B[1], C[1], return_state=False, backend=backend)  # (B, L, H) reversed
    y[:, :-1] += z[:, :-1].flip(1)
    return y


class DiagonalLTILayer(SequenceLayer):
    """A bank of H diagonal SISO systems with M complex modes each (see the module docstring).

    Subclasses implement :meth:`discrete` and :attr:`n_modes` and hold ``D`` (H,) and ``bidirectional``.
    ``step`` reuses the discrete matrices while the parameters keep their values (:class:`ValueCache`), so a
    recurrent step costs little more than its arithmetic.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(kernel=True, state_space=True, step=True)
    backends: ClassVar[tuple[str, ...]] = ("reference", "chunked", "fft", "native")
    complex_modes: ClassVar[bool] = True  # False: real modes (Mega's EMA), a real state of the parameters' dtype

    D: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self._step_cache: ValueCache = ValueCache(self._compute_step_coefficients)

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ā (H, M), B̄ (H, M) and C (C, H, M), complex, with y = Re(Σ C x) + D u (C = 2 if bidirectional)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement discrete()")

    @property
    def n_modes(self) -> int:
        """M, the complex modes per channel (the state is (B, H, M))."""
        raise NotImplementedError(f"{type(self).__name__} does not implement n_modes")

    def state_spec(self) -> TensorSpec:
        """The state x_{t} of every mode: (H, M) complex64 (complex128 for a float64 layer); real for real modes."""
        return TensorSpec((self.d_model, self.n_modes), _COMPLEX[self.D.dtype] if self.complex_modes else self.D.dtype)

    def state_device(self) -> torch.device:
        return self.D.device

    def _forward(self, x: torch.Tensor, state: torch.Tensor | None, return_state: bool):
        backend = self._backend()
        with float32_core(x.device.type):
            u = x.to(self.D.dtype)
            A_bar, B_bar, C = self.discrete()
            if self.bidirectional:
                return self._two_sided(u, A_bar, B_bar, C, backend, self.D).to(x.dtype), None
            y, h = ssm_scan(u, A_bar, B_bar, C[0], state, D=self.D, return_state=return_state, backend=backend)
        return y.to(x.dtype), h  # (B, L, H); the skip rides on K_0

    @staticmethod
    def _two_sided_backend(u: torch.Tensor, A_bar: torch.Tensor, backend: str) -> str:
        """The path of a two-sided call: under ``"auto"`` two C scans where the kernel takes these inputs (on the CPU,
        eager or compiled: at B 8, L 4 096, H 128 two scans took a fraction of the FFT convolution's time), else the
        backend as given (``"auto"``: the two-sided FFT convolution)."""
        if backend == "auto" and auto_scan_backend(u, False, A_bar) == "native":
            return "native"
        return backend

    @staticmethod
    def _two_sided(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, backend: str,
                   D: torch.Tensor) -> torch.Tensor:
        """y_t = Σ_{s≤t} K0[t-s] u_s + Σ_{s>t} K1[s-t-1] u_s + D u_t: by one two-sided FFT convolution, or, under
        ``"chunked"`` or ``"native"`` (and ``"auto"`` where the C kernel runs), by two scans: the anti-causal part is,
        in reversed time τ = L-1-t, the scan of the reversed input with C[1] delayed by one step (y'_τ = z_{τ-1});
        the skip rides on the causal scan."""
        backend = DiagonalLTILayer._two_sided_backend(u, A_bar, backend)
        if backend not in ("chunked", "native"):
            return diagonal_ssm_bidirectional(u, A_bar, B_bar, C, backend=backend) + D * u  # (B, L, H)
        return two_sided_scans(u, (A_bar, A_bar), (B_bar, B_bar), C, D, backend)  # the modes shared, C per side

    def _step_coefficients(self) -> DiagonalStepCoefficients:
        """Ā, B̄, C[0] prepared for ``step``: cached while the parameters keep their values and no gradient is needed."""
        return self._step_cache.get_unless_grad(self.own_tensors(), self._compute_step_coefficients)

    def _compute_step_coefficients(self) -> DiagonalStepCoefficients:
        A_bar, B_bar, C = self.discrete()
        return diagonal_step_coefficients(A_bar, B_bar, C[0])

    def _step(self, x_t: torch.Tensor, state: torch.Tensor):
        with float32_core(x_t.device.type):
            u = x_t.to(self.D.dtype)
            y, h = diagonal_ssm_step(u, self._step_coefficients(), state, D=self.D)  # (B, H), (B, H, M)
        return y.to(x_t.dtype), h

    def _kernel(self, L: int) -> torch.Tensor:
        """K_l = Re Σ_n C_n B̄_n Ā_n^l + D δ_l: (H, L), or (2, H, L) when bidirectional (the skip on the causal one)."""
        A_bar, B_bar, C = self.discrete()
        backend = "reference" if get_backend() == "reference" else "chunked"  # kernel() is not a forward: any context
        K = with_skip(diagonal_kernel(A_bar, B_bar, C, L, backend=backend), self.D)  # (C, H, L)
        return K if self.bidirectional else K[0]

    def _state_space(self):
        """The layer as H real SISO systems with 2M states (a 2×2 rotation block per mode), control convention."""
        from ssmkit.analysis.statespace import StateSpace

        A_bar, B_bar, C = self.discrete()
        return StateSpace.from_diagonal(A_bar, B_bar, C[0], self.D, dt=1.0, conjugate_pairs=False)
