"""The shared implementation of the MIMO diagonal LTI layers (S5, LRU): one system with M complex modes driven by
all H channels.

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,   y_t = Re(C x_t) + D ⊙ u_t      (arXiv 2208.04933 eq. 2-3; arXiv 2303.06349 eq. 1)

A subclass gives the discretised matrices (:meth:`MIMODiagonalLTILayer.discrete`: Ā (M,), B̄ (M, H), C (C, H, M),
with S5's factor 2 folded into C) and holds the skip ``D`` (H,). The forward (:func:`ssmkit.ops.mimo.mimo_scan`),
the recurrent step, the kernel (H, H, L), the state (B, M) and the state-space export (G = 1, m = p = H) are here.

Bidirectional (S5's ``bidirectional=True``): a second scan runs backwards in time with the same Ā and B̄ and its
own C[1], and both scans include the current input:

    y_t = Re(C[0] x_t) + Re(C[1] z_t) + D ⊙ u_t,   z_t = Ā ⊙ z_{t+1} + B̄ u_t.

In the kernel convention of every ssmkit layer (the anti-causal kernel's tap 0 acts at lag -1) the lag-0 term of
the backward scan, Re(C[1] B̄), sits on the causal kernel's tap 0 with D.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ssmkit.layers.cache import ValueCache
from ssmkit.layers.protocol import Capabilities, SequenceLayer, float32_core
from ssmkit.layers.state import TensorSpec
from ssmkit.ops.backend import get_backend
from ssmkit.ops.mimo import MIMOStepCoefficients, mimo_kernel, mimo_scan, mimo_ssm_step, mimo_step_coefficients

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


class MIMODiagonalLTILayer(SequenceLayer):
    """One MIMO diagonal system with M complex modes shared by the H channels (see the module docstring).

    Subclasses implement :meth:`discrete` and :attr:`n_modes` and hold ``D`` (H,) and ``bidirectional``.
    ``step`` reuses the prepared matrices while the parameters keep their values (:class:`ValueCache`).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(kernel=True, state_space=True, step=True)
    backends: ClassVar[tuple[str, ...]] = ("reference", "chunked", "native")

    D: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self._step_cache: ValueCache = ValueCache(self._compute_step_coefficients)

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ā (M,), B̄ (M, H) and C (C, H, M), complex, with y = Re(C x) + D u (C = 2 if bidirectional)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement discrete()")

    @property
    def n_modes(self) -> int:
        """M, the complex modes of the system (the state is (B, M))."""
        raise NotImplementedError(f"{type(self).__name__} does not implement n_modes")

    def state_spec(self) -> TensorSpec:
        """The state x_t of the modes: (M,) complex64 (complex128 for a float64 layer)."""
        return TensorSpec((self.n_modes,), _COMPLEX[self.D.dtype])

    def state_device(self) -> torch.device:
        return self.D.device

    def _forward(self, x: torch.Tensor, state: torch.Tensor | None, return_state: bool):
        backend = self._backend()
        with float32_core(x.device.type):
            u = x.to(self.D.dtype)
            A_bar, B_bar, C = self.discrete()
            if not self.bidirectional:
                y, h = mimo_scan(u, A_bar, B_bar, C[0], state, self.D, return_state=return_state, backend=backend)
                return y.to(x.dtype), h
            y, _ = mimo_scan(u, A_bar, B_bar, C[0], None, self.D, return_state=False, backend=backend)  # (B, L, H)
            z, _ = mimo_scan(u.flip(1), A_bar, B_bar, C[1], return_state=False, backend=backend)  # reversed time
            return (y + z.flip(1)).to(x.dtype), None

    def _step_coefficients(self) -> MIMOStepCoefficients:
        """Ā, B̄, C[0] prepared for ``step``: cached while the parameters keep their values and no gradient is needed."""
        return self._step_cache.get_unless_grad(self.own_tensors(), self._compute_step_coefficients)

    def _compute_step_coefficients(self) -> MIMOStepCoefficients:
        A_bar, B_bar, C = self.discrete()
        return mimo_step_coefficients(A_bar, B_bar, C[0])

    def _step(self, x_t: torch.Tensor, state: torch.Tensor):
        with float32_core(x_t.device.type):
            u = x_t.to(self.D.dtype)
            y, h = mimo_ssm_step(u, self._step_coefficients(), state, D=self.D)  # (B, H), (B, M)
        return y.to(x_t.dtype), h

    def _kernel(self, L: int) -> torch.Tensor:
        """K_l = Re(C diag(Ā^l) B̄) + diag(D) δ_l: (H, H, L), or (2, H, H, L) when bidirectional (the backward
        scan's lag-0 term Re(C[1] B̄) on the causal tap 0, its lags 1.. as the anti-causal taps 0..)."""
        A_bar, B_bar, C = self.discrete()
        backend = "reference" if get_backend() == "reference" else "chunked"  # kernel() is not a forward: any context
        skip = torch.diag(self.D)  # (H, H)
        if not self.bidirectional:
            K = mimo_kernel(A_bar, B_bar, C[0], L, backend=backend)  # (H, H, L)
            return torch.cat([K[..., :1] + skip[..., None], K[..., 1:]], dim=-1)
        K0 = mimo_kernel(A_bar, B_bar, C[0], L, backend=backend)  # (H, H, L)
        K1 = mimo_kernel(A_bar, B_bar, C[1], L + 1, backend=backend)  # (H, H, L+1): the backward scan, lag 0..L
        K0 = torch.cat([K0[..., :1] + K1[..., :1] + skip[..., None], K0[..., 1:]], dim=-1)  # (H, H, L)
        return torch.stack([K0, K1[..., 1:]])  # (2, H, H, L)

    def _state_space(self):
        """The layer as one real MIMO system with 2M states (a 2×2 rotation block per mode), control convention."""
        from ssmkit.analysis.statespace import StateSpace

        A_bar, B_bar, C = self.discrete()
        return StateSpace.from_diagonal_mimo(A_bar, B_bar, C[0], self.D, dt=1.0, conjugate_pairs=False)
