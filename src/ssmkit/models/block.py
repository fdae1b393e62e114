"""The residual block around a sequence layer: the deep Wiener structure.

An LTI layer followed by a static nonlinearity and a linear skip is a Wiener system; a stack of such blocks is a
deep Wiener model (Bonassi et al., arXiv 2312.06211). The block computes

    prenorm:   y = x + Dropout(Out(σ(Layer(Norm(x)))))
    postnorm:  y = Norm(x + Dropout(Out(σ(Layer(x)))))

with Out a GLU (Linear H→2H then a_1 ⊙ sigmoid(a_2), the S4 default), a Linear H→H, or nothing. By default σ and
Out are what the layer declares (``layer.block_defaults``): LTI layers get GELU and a GLU, mixers that carry their
own gates and projections (Mamba, Hawk, ...) get neither.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.layers.checks import check_choice
from ssmkit.layers.protocol import SequenceLayer
from ssmkit.layers.state import State
from ssmkit.models.dropout import Dropout
from ssmkit.ops.rows import apply_module

NORMS = ("layer", "batch", "rms", None)
ACTIVATIONS = ("auto", "gelu", "silu", "relu", "tanh", None)
MIXER_OUTS = ("auto", "glu", "linear", None)


class _BatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channel axis of (B, L, H) or (B, H) inputs (``Block.norm(x)`` takes either)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)  # (B, L, H) via (B, H, L)
        return super().forward(x)


def make_norm(norm: str | None, H: int, device, dtype) -> nn.Module:
    """The normalisation module named ``norm`` (one of ``NORMS``) over H channels (identity for None)."""
    if norm == "layer":
        return nn.LayerNorm(H, device=device, dtype=dtype)
    if norm == "rms":
        return nn.RMSNorm(H, device=device, dtype=dtype)
    if norm == "batch":
        return _BatchNorm(H, device=device, dtype=dtype)
    return nn.Identity()


def _make_activation(activation: str | None) -> nn.Module:
    return {"gelu": nn.GELU(), "silu": nn.SiLU(), "relu": nn.ReLU(), "tanh": nn.Tanh(), None: nn.Identity()}[activation]


class Block(nn.Module):
    """Residual block: norm -> layer -> activation -> output projection -> dropout -> + input.

    Args:
        layer: the sequence-mixing layer (its ``d_model`` sets the width H).
        norm: ``"layer"`` (LayerNorm), ``"batch"`` (BatchNorm over channels; ``step`` only in eval mode, where it
            is a fixed affine map), ``"rms"`` (RMSNorm) or None.
        prenorm: normalise the block input (True) or the residual sum (False).
        activation: ``"auto"`` (the layer's ``block_defaults``), ``"gelu"``, ``"silu"``, ``"relu"``, ``"tanh"`` or
            None, applied to the layer output.
        mixer_out: ``"auto"`` (the layer's ``block_defaults``), ``"glu"`` (Linear H→2H + GLU), ``"linear"``
            (Linear H→H) or None.
        dropout: dropout probability after the output projection.
        device, dtype: of the block's own parameters (norm and projection).
    """

    def __init__(
        self,
        layer: SequenceLayer,
        norm: str | None = "layer",
        prenorm: bool = True,
        activation: str | None = "auto",
        mixer_out: str | None = "auto",
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_choice(norm, NORMS, "norm")
        check_choice(activation, ACTIVATIONS, "activation")
        check_choice(mixer_out, MIXER_OUTS, "mixer_out")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        if not isinstance(prenorm, bool):  # a string "false" from a config file is truthy: post-norm would become pre-norm
            raise ValueError(f"prenorm must be True or False; got {prenorm!r}")
        defaults = layer.block_defaults
        activation = defaults.activation if activation == "auto" else activation
        mixer_out = defaults.mixer_out if mixer_out == "auto" else mixer_out
        self.layer = layer
        self.norm_name = norm
        self.prenorm = prenorm
        H = layer.d_model
        self.d_model = H
        self.norm = make_norm(norm, H, device, dtype)
        self.activation = _make_activation(activation)
        if mixer_out == "glu":
            self.out = nn.Sequential(nn.Linear(H, 2 * H, device=device, dtype=dtype), nn.GLU(dim=-1))
        elif mixer_out == "linear":
            self.out = nn.Linear(H, H, device=device, dtype=dtype)
        else:
            self.out = nn.Identity()
        self.dropout = Dropout(dropout)  # an nn.Dropout whose CPU mask is drawn in C (models/dropout.py)

    def forward(
        self, x: torch.Tensor, state: State | None = None, return_state: bool = True
    ) -> tuple[torch.Tensor, State | None]:
        """x (B, L, H) -> (y (B, L, H), final state of the layer, or None when ``return_state`` is False).

        Any real x is computed in the parameters' dtype and answered in x's (as the layers; autocast aside)."""
        x, dtype = self._as_parameter_dtype(x)
        z = self._normalize(x) if self.prenorm else x
        z, state = self.layer(z, state, return_state=return_state)
        y = x + self.dropout(apply_module(self.out, self.activation(z)))  # (B, L, H); linears by row blocks
        return (y if self.prenorm else self._normalize(y)).to(dtype), state

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The norm of a sequence (B, L, H). A plain batch norm put in the place of ``_BatchNorm`` takes channels on
        axis 1, so (B, L, H) goes through (B, H, L): ``nn.SyncBatchNorm.convert_sync_batchnorm`` (distributed training)
        replaces every batch norm by a plain ``SyncBatchNorm``, which dropped ``_BatchNorm``'s own transpose and
        normalised over time instead of channels (an error, or a silent wrong answer when L = H)."""
        if isinstance(self.norm, nn.modules.batchnorm._BatchNorm) and not isinstance(self.norm, _BatchNorm):
            return self.norm(x.transpose(1, 2)).transpose(1, 2)  # (B, L, H) via (B, H, L)
        return self.norm(x)

    def _as_parameter_dtype(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        """(x in the parameters' dtype outside autocast, x's dtype): a float64 input into a float32 block failed in
        its norm with "mixed dtype"."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or torch.is_autocast_enabled(x.device.type):
            return x, getattr(x, "dtype", None)  # the layer's checks name a bad input
        for p in self.parameters():
            return x.to(p.dtype), x.dtype
        return x, x.dtype

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x_t (B, H) -> (y_t (B, H), next state): one recurrent step of the block."""
        if self.norm_name == "batch" and self.training:
            raise RuntimeError("Block(norm='batch').step needs eval mode: in training mode BatchNorm uses batch statistics")
        x_t, dtype = self._as_parameter_dtype(x_t)
        z = self.norm(x_t) if self.prenorm else x_t
        z, state = self.layer.step(z, state)
        y = x_t + self.dropout(self.out(self.activation(z)))  # (B, H)
        return (y if self.prenorm else self.norm(y)).to(dtype), state

    def initial_state(self, batch_size: int) -> State:
        """The layer's zero state for ``batch_size`` sequences."""
        return self.layer.initial_state(batch_size)
