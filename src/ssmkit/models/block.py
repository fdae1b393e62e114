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
from torch.nn import functional as F

from ssmkit.layers.checks import check_choice
from ssmkit.layers.protocol import SequenceLayer
from ssmkit.layers.irregular import require_intervals
from ssmkit.layers.state import State
from ssmkit.models.dropout import Dropout
from ssmkit.ops.backend import autocast_enabled
from ssmkit.ops.rows import apply_module
from ssmkit.utils import check_padding_mask, padding_lengths

NORMS = ("layer", "batch", "rms", None)
ACTIVATIONS = ("auto", "gelu", "silu", "relu", "tanh", None)
MIXER_OUTS = ("auto", "glu", "linear", None)


class _BatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channel axis of (B, L, H) or (B, H) inputs (``Block.norm(x)`` takes either)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)  # (B, L, H) via (B, H, L)
        return super().forward(x)


NORM_EPS = 1e-5  # ε of the block's LayerNorm and RMSNorm (Mamba's reference models, S4's LayerNorm, torch's LayerNorm)


def make_norm(norm: str | None, H: int, device, dtype) -> nn.Module:
    """The normalisation module named ``norm`` (one of ``NORMS``) over H channels (identity for None).

    ``"layer"``: (x - mean(x)) / √(var(x) + ε) · w + b; ``"rms"``: x / √(mean(x²) + ε) · w; both over the channels
    with ε = ``NORM_EPS`` = 1e-5 in every dtype. ``"batch"``: BatchNorm over the channels (torch's ε = 1e-5).
    """
    if norm == "layer":
        return nn.LayerNorm(H, eps=NORM_EPS, device=device, dtype=dtype)
    if norm == "rms":  # torch's default ε (None) is the dtype's machine ε: 1.2e-7 in float32, 2.2e-16 in float64
        return nn.RMSNorm(H, eps=NORM_EPS, device=device, dtype=dtype)
    if norm == "batch":
        return _BatchNorm(H, device=device, dtype=dtype)
    return nn.Identity()


def _batch_statistics(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``bn`` normalises by the batch's statistics (training mode, or no running statistics), as torch's
    ``_BatchNorm.forward`` decides."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def sync_group(bn: nn.modules.batchnorm._BatchNorm):
    """The process group whose statistics a ``SyncBatchNorm`` takes, or None (no sum across processes): another
    batch norm, torch.distributed not initialised, or a group of one process.

    Args:
        bn: the batch norm.
    """
    import torch.distributed as dist

    if not isinstance(bn, nn.SyncBatchNorm) or not dist.is_available() or not dist.is_initialized():
        return None
    group = bn.process_group if bn.process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _summed(t: torch.Tensor, group) -> torch.Tensor:
    """Σ of t over the processes of ``group`` (differentiable: the gradient of each process's t is the sum of the
    gradients), or t itself for no group."""
    if group is None:
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t, group=group)


def masked_batch_norm(
    bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, mask: torch.Tensor, group=None
) -> torch.Tensor:
    """``bn`` with batch statistics over the positions of x (B, L, H) where ``mask`` (B, L) is True, on every process
    of ``group``: (B, L, H).

    With n = Σ mask, per channel h (the sums over every process of ``group``):

        μ_h = Σ_{mask} x_h / n,   σ²_h = Σ_{mask} (x_h - μ_h)² / n,   y_h = (x_h - μ_h) / √(σ²_h + ε) · w_h + b_h

    at every position (at the padding y is finite and unspecified), and in training mode with running statistics
    running_mean ← (1 - m) running_mean + m μ, running_var ← (1 - m) running_var + m σ² n / (n - 1), with m the
    momentum (1 / num_batches_tracked, which counts this batch, for momentum None): what ``bn`` does to a batch of
    the n positions alone (of every process's batch together, as ``SyncBatchNorm``). The sums over the processes are
    two differentiable all-reduces (the counts with Σ x, then Σ (x - μ)²), so each process's gradient is that of the
    loss summed over the processes, as torch's ``SyncBatchNorm`` gives. With n < 2 (torch's batch norm refuses a batch
    of one value per channel) the running statistics are left as they are, and n = 0 normalises by μ = 0, σ² = 0.

    Args:
        bn: the batch norm (its affine weights, ε, momentum and running statistics).
        x: (B, L, H) the sequence.
        mask: (B, L) bool, True at the positions counted.
        group: the process group to take the statistics over (:func:`sync_group`), or None for this process's batch.
    """
    xs = x.to(torch.promote_types(x.dtype, torch.float32))  # (B, L, H): statistics in float32 at least (autocast)
    w = mask[..., None].to(xs.dtype)  # (B, L, 1)
    sums = _summed(torch.cat([w.sum().reshape(1), (xs * w).sum(dim=(0, 1))]), group)  # (1 + H,): n, Σ x
    n = sums[0]  # () the positions counted
    mean = sums[1:] / n.clamp_min(1.0)  # (H,)
    xc = xs - mean  # (B, L, H)
    var = _summed((xc * xc * w).sum(dim=(0, 1)), group) / n.clamp_min(1.0)  # (H,) biased
    y = xc * torch.rsqrt(var + bn.eps)  # (B, L, H)
    if bn.weight is not None:
        y = y * bn.weight + bn.bias
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            momentum = bn.momentum
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
                if momentum is None:  # a cumulative average (torch's rule)
                    momentum = 1.0 / float(bn.num_batches_tracked)
            momentum = 0.0 if momentum is None else momentum
            counted = n >= 2  # () torch refuses fewer values per channel; skip the update instead of a sync
            unbiased = var * n / (n - 1.0).clamp_min(1.0)  # (H,)
            for running, batch in ((bn.running_mean, mean), (bn.running_var, unbiased)):
                running.copy_(torch.where(counted, (1 - momentum) * running + momentum * batch, running))
    return y.to(x.dtype)


def _make_activation(activation: str | None) -> nn.Module:
    return {"gelu": nn.GELU(), "silu": nn.SiLU(), "relu": nn.ReLU(), "tanh": nn.Tanh(), None: nn.Identity()}[activation]


class Block(nn.Module):
    """Residual block: norm -> layer -> activation -> output projection -> dropout -> + input.

    Args:
        layer: the sequence-mixing layer (its ``d_model`` sets the width H).
        norm: ``"layer"`` (LayerNorm), ``"batch"`` (BatchNorm over channels; ``step`` only in eval mode, where it
            is a fixed affine map), ``"rms"`` (RMSNorm x / √(mean(x²) + ε) · w) or None; ε = 1e-5 for all three
            (Mamba's reference models use RMSNorm with ε = 1e-5; torch's default ε for RMSNorm would be the dtype's
            machine ε).
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
        self, x: torch.Tensor, state: State | None = None, return_state: bool = True, mask: torch.Tensor | None = None,
        intervals: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State | None]:
        """x (B, L, H) -> (y (B, L, H), final state of the layer, or None when ``return_state`` is False).

        y = x + dropout(out(σ(layer(norm(x))))) with ``prenorm``, else norm(x + dropout(out(σ(layer(x))))), σ the
        activation and out the output projection. Everything but the layer acts position by position. Any real x is
        computed in the parameters' dtype and answered in x's (as the layers; autocast aside).

        Args:
            x: (B, L, H) the block's input.
            state: the layer's initial state (from ``initial_state``, ``step`` or ``forward``), or None: from rest.
            return_state: compute and return the layer's final state.
            mask: (B, L) bool, or None: True at each sequence's positions, False at its right padding. A bidirectional
                layer then gives, at the positions, exactly what it gives the unpadded sequence
                (``SequenceModel(pad_id=...)`` and ``SequenceModel.forward(..., lengths=)`` pass it): a convolution (a layer with a ``kernel``) reads zeros at the
                padding, which add nothing; a layer that declares ``takes_mask`` (Mega) gets the mask
                (``layer(z, mask=mask)``: its EMA reads zeros there, its attention skips the padded keys; a
                ``ValueError`` if the padding does not trail); any other bidirectional layer runs each item's unpadded
                prefix, one call per distinct length (padding must trail too). A causal layer ignores the mask (its
                outputs at the positions do not read the padding after them; its state is the one after the padding,
                as without a mask). A batch norm that takes batch statistics (training mode) takes them over the
                positions only (see ``_normalize``). The outputs at the padding are unspecified.
            intervals: (B, L) real > 0, or None (regular sampling): the time from the previous sample to each sample
                in nominal sampling periods, handed to a layer that declares ``takes_intervals`` (S5, S4D, DSS,
                LRU, EMA, DLR, Mamba, Mamba-2, RG-LRU: :mod:`ssmkit.layers.irregular`); a ``ValueError`` for any other
                layer.

        Returns:
            y: (B, L, H) in x's dtype; and the layer's final state (None when ``return_state`` is False).
        """
        if mask is not None:
            check_padding_mask(mask, x)
        if intervals is not None:
            require_intervals(self.layer)
        x, dtype = self._as_parameter_dtype(x)
        z = self._normalize(x, mask) if self.prenorm else x
        if intervals is not None:
            z, state = self.layer(z, state, return_state=return_state, intervals=intervals)
        elif mask is not None and state is None and self.layer.bidirectional:  # (a state: the layer refuses it)
            z, state = self._bidirectional_without_padding(z, mask)
        else:
            z, state = self.layer(z, state, return_state=return_state)
        y = x + self.dropout(apply_module(self.out, self.activation(z)))  # (B, L, H); linears by row blocks
        return (y if self.prenorm else self._normalize(y, mask)).to(dtype), state

    def _bidirectional_without_padding(self, z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The bidirectional layer's output (B, L, H) of z (B, L, H), at each item's positions (``mask`` (B, L), True
        there) as for the unpadded sequence alone (see ``forward``)."""
        if self.layer.supports("kernel"):  # y = K ⊛ u, no bias: a zero input at the padding contributes exactly 0
            return self.layer(torch.where(mask[..., None], z, 0.0), return_state=False)[0], None
        if self.layer.takes_mask:  # the layer masks the padding itself (Mega: EMA input, keys)
            return self.layer(z, return_state=False, mask=mask)[0], None
        # any other bidirectional layer (one of the user's): each item's prefix of length n, alone, grouped by
        # length. The lengths are data (one synchronisation); only right padding has a prefix to run.
        B, L = mask.shape
        lengths_list, right_padded = padding_lengths(mask)
        if not right_padded:
            raise ValueError(f"{type(self.layer).__name__}(bidirectional=True) with padding runs each item's unpadded "
                             "prefix: the padding must trail every sequence (right padding); got padding before a "
                             "position of the sequence")
        distinct = sorted(set(lengths_list))
        if distinct == [L]:  # no padding in this batch
            return self.layer(z, return_state=False)[0], None
        pieces, order = [], []
        for n in distinct:
            rows = [i for i, m in enumerate(lengths_list) if m == n]
            if n == 0:  # items of padding only have no sequence to run
                pieces.append(z.new_zeros(len(rows), L, z.shape[2]))  # (b, L, H)
            else:
                y_n = self.layer(z[torch.tensor(rows, device=z.device), :n], return_state=False)[0]  # (b, n, H)
                pieces.append(F.pad(y_n, (0, 0, 0, L - n)))  # (b, L, H)
            order += rows
        where = [0] * B  # item i's row in the concatenated pieces
        for row, i in enumerate(order):
            where[i] = row
        return torch.cat(pieces).index_select(0, torch.tensor(where, device=z.device)), None  # (B, L, H)

    def _normalize(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The norm of a sequence (B, L, H). A plain batch norm put in the place of ``_BatchNorm`` takes channels on
        axis 1, so (B, L, H) goes through (B, H, L): ``nn.SyncBatchNorm.convert_sync_batchnorm`` (distributed training)
        replaces every batch norm by a plain ``SyncBatchNorm``, which dropped ``_BatchNorm``'s own transpose and
        normalised over time instead of channels (an error, or a silent wrong answer when L = H).

        ``mask`` (B, L) bool, or None: a batch norm that takes batch statistics (training mode, or no running
        statistics) takes them over the positions where it is True (:func:`masked_batch_norm`), as over a batch of
        the unpadded sequences; a ``SyncBatchNorm`` over several processes takes them over every process's positions
        where it is True (its own all-reduces; torch's module counted the padding). A ``SyncBatchNorm`` over several
        processes on the CPU, which torch's module refuses ("expected input tensor to be on GPU"), takes this path too,
        every position counted. Without a mask, or in eval mode, the norm runs as it is."""
        if isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            if _batch_statistics(self.norm):
                group = sync_group(self.norm)
                if mask is None and group is not None and x.device.type == "cpu":
                    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, L)
                if mask is not None:
                    return masked_batch_norm(self.norm, x, mask, group)
            if not isinstance(self.norm, _BatchNorm):
                return self.norm(x.transpose(1, 2)).transpose(1, 2)  # (B, L, H) via (B, H, L)
        return self.norm(x)

    def _as_parameter_dtype(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        """(x in the parameters' dtype outside autocast, x's dtype): a float64 input into a float32 block failed in
        its norm with "mixed dtype". On the meta device (no autocast there: asking failed with "unknown device type
        for autocast") the layer's own check says to initialise first."""
        if (not isinstance(x, torch.Tensor) or not x.is_floating_point()
                or autocast_enabled(x.device.type)):
            return x, getattr(x, "dtype", None)  # the layer's checks name a bad input
        for p in self.parameters():
            return x.to(p.dtype), x.dtype
        return x, x.dtype

    def step(
        self, x_t: torch.Tensor, state: State, interval: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """x_t (B, H) -> (y_t (B, H), next state): one recurrent step of the block.

        Args:
            x_t: (B, H) the block's input at one time step.
            state: the layer's state (from ``initial_state``, ``step`` or ``forward``).
            interval: (B,) real > 0, or None: the time since the previous sample in nominal sampling periods, for a
                layer that declares ``takes_intervals`` (as ``forward``'s ``intervals``).

        Returns:
            y_t: (B, H) in x_t's dtype; and the layer's next state.
        """
        if self.norm_name == "batch" and self.training:
            raise RuntimeError("Block(norm='batch').step needs eval mode: in training mode BatchNorm uses batch statistics")
        if interval is not None:
            require_intervals(self.layer)
        x_t, dtype = self._as_parameter_dtype(x_t)
        z = self.norm(x_t) if self.prenorm else x_t
        z, state = self.layer.step(z, state) if interval is None else self.layer.step(z, state, interval=interval)
        y = x_t + self.dropout(self.out(self.activation(z)))  # (B, H)
        return (y if self.prenorm else self.norm(y)).to(dtype), state

    def extra_repr(self) -> str:
        # the layer, activation, output projection and dropout print as the block's children
        return f"d_model={self.d_model}, norm={self.norm_name!r}, prenorm={self.prenorm}"

    def initial_state(self, batch_size: int) -> State:
        """The layer's zero state for ``batch_size`` sequences."""
        return self.layer.initial_state(batch_size)
