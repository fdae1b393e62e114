"""Liquid-S4 in real arithmetic, for the ONNX exports: S4's LTI core driven by the liquid input.

Liquid-S4 (arXiv 2209.12951, as built causally in :mod:`ssmkit.layers.liquid`) is S4 with a static polynomial of the
P latest inputs added (s_t = Σ_{p=2}^{P} β^{p-1} f(u_t ... u_{t-p+1})):

    KB:  x_k = Ā x_{k-1} + B̄ (u_k + s_k),   y_k = C_trueᵀ x_k + D u_k
    PB:  x_k = Ā x_{k-1} + B̄ u_k,           y_k = C_trueᵀ x_k + D u_k + K_0 s_k,   K_0 = C_trueᵀ B̄

With S4's exported realisation (control convention: D' = D + C_trueᵀ B̄), y is the realisation's output for the input
u + s less D s (KB), or for u plus K_0 s (PB). The realisation runs as `RealLTIStep` / `RealLTISequence` (its dense
real basis [Re x, Im x]); the liquid input is :func:`ssmkit.layers.liquid.liquid_input`, real already. The state is
``LiquidS4State(z, inputs)``: z (B, H, N) the core's state in that basis, inputs (B, H, P-1) the last P-1 inputs.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ssmkit.layers.liquid import LiquidS4State, liquid_input, liquid_input_step

__all__ = ["RealLiquidS4"]


class RealLiquidS4(nn.Module):
    """A Liquid-S4 layer in real arithmetic: its step and (with a `RealLTISequence` core) its whole sequence.

    Args:
        layer: the :class:`ssmkit.layers.LiquidS4` to convert (read once; not kept).
        make_core: ``make_core(system, dtype)`` -> the core's real module (`RealLTIStep` or `RealLTISequence`).
        dtype: real dtype of the buffers and the state.
    """

    # causal (Liquid-S4 has no bidirectional form): a Block given a padding mask (SequenceModel.forward(..., lengths=)
    # or a pad_id) runs it as it is; without the attribute the Block's check failed the export of such a model
    bidirectional = False

    def __init__(self, layer: nn.Module, make_core: Callable, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        with torch.no_grad():
            system = layer._state_space()  # S4's realisation of the core (LiquidS4 declares no state_space: not LTI)
            beta = layer._beta()  # (H,) float64
        self.core = make_core(system, dtype)
        self.d_model, self.kind = layer.d_model, layer.liquid_kernel
        self.degree, self.contraction = layer.liquid_degree, layer.liquid_contract
        self.dtype = dtype
        D = layer.D.detach().to(torch.float64)  # (H,)
        feedthrough = torch.tensor(system.D[:, 0, 0].copy(), dtype=torch.float64, device=D.device)  # (H,) D + K_0
        # KB: y = core(u + s) - D s; PB: y = core(u) + K_0 s
        self.register_buffer("s_gain", (-D if self.kind == "kb" else feedthrough - D).to(dtype))  # (H,)
        self.register_buffer("beta", beta.to(device=D.device, dtype=dtype))  # (H,)

    def state_shape(self) -> LiquidS4State:
        """The parts' shapes for one sequence: the core's (H, N) and the inputs' (H, P-1)."""
        return LiquidS4State(self.core.state_shape(), (self.d_model, self.degree - 1))

    def state_spec(self) -> LiquidS4State:
        """The state as a layer describes it (`ssmkit.layers.TensorSpec` per part)."""
        from ssmkit.layers.state import TensorSpec

        return LiquidS4State(*(TensorSpec(shape, self.dtype) for shape in self.state_shape()))

    def state_device(self) -> torch.device:
        return self.beta.device

    def initial_state(self, batch_size: int) -> LiquidS4State:
        """Zeros: the core's state and the P-1 inputs before the sequence."""
        return LiquidS4State(*(torch.zeros((batch_size,) + shape, dtype=self.dtype, device=self.beta.device)
                               for shape in self.state_shape()))

    def forward(
        self, x: torch.Tensor, state: LiquidS4State | None = None, return_state: bool = True
    ) -> tuple[torch.Tensor, LiquidS4State | None]:
        """x (B, L, H) -> y (B, L, H) and the final state (module docstring), from ``state`` (None: zeros)."""
        u = x.to(self.dtype)
        start = state if state is not None else self.initial_state(x.shape[0])
        s, past = liquid_input(u, start.inputs.to(self.dtype), self.beta, self.degree, self.contraction)
        y, z = self.core(u + s if self.kind == "kb" else u, start.ssm, return_state)
        y = y.to(self.dtype) + self.s_gain * s
        return y.to(x.dtype), (LiquidS4State(z, past) if return_state else None)

    def step(self, x_t: torch.Tensor, state: LiquidS4State) -> tuple[torch.Tensor, LiquidS4State]:
        """One step: x_t (B, H) -> y_t (B, H) and the next state."""
        u = x_t.to(self.dtype)
        s, past = liquid_input_step(u, state.inputs.to(self.dtype), self.beta, self.degree, self.contraction)
        y, z = self.core.step(u + s if self.kind == "kb" else u, state.ssm)
        return (y.to(self.dtype) + self.s_gain * s).to(x_t.dtype), LiquidS4State(z, past)
