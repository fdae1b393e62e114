"""The short causal depthwise convolution that Mamba, Mamba-2, Hawk, H3 and Hyena put before their SSM or gates,
as a module with a carried state (:func:`ssmkit.ops.conv.causal_conv1d`).

It is a building block of those layers, not a registered layer: the layer that owns it puts its state
(:meth:`ShortConv.state_spec`) beside its own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmkit.layers.checks import SHAPES, FixedOption, check_positive_int, parameter_dtype
from ssmkit.layers.state import TensorSpec
from ssmkit.ops.conv import activate, causal_conv1d, causal_conv1d_segments, causal_conv1d_step, check_activation


class ShortConv(nn.Module):
    """y_t = Σ_k w_k ⊙ x_{t-W+1+k} + b per channel (causal, depthwise), with the last W-1 inputs as its state.

    Args:
        channels: H, the channels (one filter each).
        width: W, the taps (4 in Mamba, Mamba-2 and Hawk).
        bias: learn a per-channel bias.
        device, dtype: of the parameters.

    Initialisation: that of ``nn.Conv1d(H, H, W, groups=H)`` (uniform on ±1/√W for weight and bias).
    """

    # fixed at construction (checks.FixedOption): the taps and the state are shaped by them
    channels = FixedOption(SHAPES)
    width = FixedOption(SHAPES)

    def __init__(
        self,
        channels: int,
        width: int = 4,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(channels, "channels")
        check_positive_int(width, "width")
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        self.channels = channels
        self.width = width
        self.weight = nn.Parameter(torch.empty(channels, width, **factory))
        # no bias: a parameter slot holding None (as nn.Conv1d's), not a plain None attribute
        self.register_parameter("bias", nn.Parameter(torch.empty(channels, **factory)) if bias else None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.width)  # nn.Conv1d's default: fan_in = W for a depthwise filter
        self.weight.uniform_(-bound, bound)
        if self.bias is not None:
            self.bias.uniform_(-bound, bound)

    def state_spec(self) -> TensorSpec:
        """The last W-1 inputs, oldest first: (H, W-1) in the parameters' dtype."""
        return TensorSpec((self.channels, self.width - 1), self.weight.dtype)

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor | None = None,
        return_state: bool = True,
        resets: torch.Tensor | None = None,
        activation: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, L, H) -> y (B, L, H) and the state after x (B, H, W-1); x must have the parameters' dtype.

        ``resets`` (B, L) bool marks segment starts: the filter then never reaches across one
        (:func:`ssmkit.ops.conv.causal_conv1d_segments`). ``activation`` None or ``"silu"``: applied to y (fused
        on the C kernel's path). The convolution runs on its ``"auto"`` path whatever backend the enclosing layer was
        forced to (a layer's backends name its scan's paths): the C kernel on the CPU where it runs, else
        ``F.conv1d``."""
        if resets is not None:
            check_activation(activation)  # before the work, as the other path does
            y, st = causal_conv1d_segments(x, self.weight, self.bias, state, resets, return_state)
            return activate(y, activation), st
        return causal_conv1d(x, self.weight, self.bias, state, return_state, activation=activation, backend="auto")

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (B, H) -> y_t (B, H) and the next state (B, H, W-1)."""
        return causal_conv1d_step(x_t, self.weight, self.bias, state)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, width={self.width}, bias={self.bias is not None}"
