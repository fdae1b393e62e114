"""Irregularly sampled sequences for continuous-time layers: ``forward(x, state, intervals=)`` and
``step(x_t, state, interval=)`` (S5 arXiv 2208.04933, S4D arXiv 2206.11893, DSS arXiv 2203.14343, LRU arXiv
2303.06349, Mega's EMA arXiv 2209.10655, DLR arXiv 2212.00768, Mamba arXiv 2312.00752, Mamba-2 arXiv 2405.21060,
RG-LRU arXiv 2402.19427).

``intervals`` (B, L) > 0 is the time from the previous sample to each sample in nominal sampling periods (the first
from the state's instant). Each step is discretised with its own gap τ_t. The LTI layers: x_t = Ā_t x_{t-1} + B̄_t u_t
with, under ZOH, Ā_t = exp(Δ τ_t Λ) and B̄_t = (Ā_t − 1)/Λ · B (bilinear alike), the exact samples of the layer's
continuous-time system with the input held over each gap (:mod:`ssmkit.ops.irregular` for a MIMO system, S5 and LRU;
:mod:`ssmkit.ops.irregular_bank` for a SISO bank, S4D, DSS, EMA and DLR). The layers defined in discrete time (DSS's
recurrence, LRU, EMA, DLR) are read as the unit-step ZOH of the system with eigenvalues z = log λ (principal branch),
Ā_t = λ^{τ_t}, B̄_t = (λ^{τ_t} − 1)/(λ − 1) · B̄ (:mod:`ssmkit.ops.irregular_discrete`). The selective layers: each
step's Δ_t times τ_t in their own discretisation, exp(τ_t Δ_t A) and τ_t Δ_t B_t; RG-LRU's gate a_t the same way,
a_t^{τ_t} with its input (a_t^{τ_t} − 1)/(a_t − 1) √(1 − a_t²) (its own forward and step, which also take segment
resets). All ones is the regular layer. This mixin does the argument handling.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ssmkit.layers.registry import available, layer_class
from ssmkit.ops.irregular import check_intervals


def require_intervals(layer: torch.nn.Module) -> None:
    """Raise ``ValueError`` unless ``layer`` takes sampling intervals (declares ``takes_intervals``), naming it and the
    registered layers that do (what a Block, a SequenceModel or a DeepWiener handed intervals checks per layer).

    Args:
        layer: a sequence layer.
    """
    if not getattr(layer, "takes_intervals", False):
        takers = [name for name in available() if layer_class(name).takes_intervals]
        raise ValueError(f"{type(layer).__name__} does not take sampling intervals (it has no irregular-sampling "
                         f"form); the layers that do: {takers}")


class IrregularSampling:
    """Mixin (before the layer's base class) giving a causal continuous-time layer the ``intervals`` of
    :mod:`ssmkit.layers.irregular`. The layer implements ``_forward_irregular(u, intervals, state, return_state,
    backend)`` and ``_step_irregular(u_t, interval, state)`` on inputs already in its parameters' dtype, each entering
    ``float32_core`` around its SSM core itself (a mixer's projections stay under autocast, as in its regular forward),
    and holds ``D`` (its skip, whose dtype is the parameters')."""

    takes_intervals: ClassVar[bool] = True

    def forward(
        self, x: torch.Tensor, state=None, return_state: bool = True, *, intervals: torch.Tensor | None = None
    ):
        """Run the layer over a whole sequence, regularly sampled or at irregular times.

        Args:
            x: (B, L, H) real input, H = ``d_model``.
            state: the state before the first input, or None for zeros (must be None when bidirectional).
            return_state: compute and return the final state.
            intervals: None (regular sampling), or (B, L) real > 0: the time from the previous sample to each sample
                in nominal sampling periods, the first from the state's instant (module docstring). Causal layers
                only; under the backends ``"reference"``, ``"chunked"`` and ``"native"`` (no ``"fft"``: the sampled
                system is time-varying).

        Returns:
            y (B, L, H) in x's dtype, and the final state (None when not asked for, or when bidirectional).
        """
        if intervals is None:
            return super().forward(x, state, return_state)
        require_intervals(self)  # a subclass may declare takes_intervals False (Liquid-S4 under S4)
        self._check_forward(x, state)
        if self.bidirectional:
            raise ValueError(f"{type(self).__name__}(bidirectional=True) takes no intervals: its anti-causal part has "
                             "no defined sampling times; build the layer with bidirectional=False for irregularly "
                             "sampled sequences")
        check_intervals(intervals, tuple(x.shape[:2]), x.device)
        y, h = self._forward_irregular(x.to(self.D.dtype), intervals, state, bool(return_state), self._backend())
        return y.to(x.dtype), h

    def step(self, x_t: torch.Tensor, state, *, interval: torch.Tensor | None = None):
        """One recurrent step, regularly sampled or after an ``interval``.

        Args:
            x_t: (B, H) real input at one time step.
            state: the current state (from ``initial_state``, ``step`` or ``forward``).
            interval: None (one nominal sampling period), or (B,) real > 0: the time since the previous sample in
                nominal sampling periods (as ``forward``'s ``intervals``).

        Returns:
            y_t (B, H) in x_t's dtype, and the next state.
        """
        if interval is None:
            return super().step(x_t, state)
        require_intervals(self)
        self._check_step(x_t, state)
        check_intervals(interval, tuple(x_t.shape[:1]), x_t.device, "interval")
        y, h = self._step_irregular(x_t.to(self.D.dtype), interval, state)
        return y.to(x_t.dtype), h
