"""Hyena: "Hyena Hierarchy: Towards Larger Convolutional Language Models", Poli et al., arXiv 2302.10866.

An order-N recurrence of element-wise gates and long implicit convolutions (§3.1; Algorithm 3, the forward pass):

    (x_0, x_1, ..., x_{N-1}, v) = ShortConv(W_in u)              causal depthwise, 3 taps, over (N+1)·H channels
    for o = 0, ..., N-2 with i = N-1-o  (the gates in reverse order x_{N-1}, ..., x_1, as the official code):
        z = x_i ⊙ v,    v = h_o ⊛ z + b_o ⊙ z                     h_o causal long filter, b_o per-channel filter bias
    y = W_out(x_0 ⊙ v)

Implicit filters (§3.3; Algorithm 2, the filter): with normalised time t_n = n/(l_max - 1) at tap n,

    h_o(n) = exp(-|δ_c| t_n) · FFN(PosEnc(n))_c,       c = o·H + channel
    PosEnc(n) = [t_n, cos(2π f_k n / l_max), -sin(2π f_k n / l_max)],  f_k = linspace(1e-4, bands - 1, bands)
    FFN = Linear emb_dim→F, sin(ω ⊙ ·), then n_inner × [Linear F→F, sin(ω ⊙ ·)], then Linear F→(N-1)·H without bias

one trainable frequency vector ω shared by every sine layer (init ``sine_freq``), δ linearly spaced between
log(1e-2)/1.5 and log(1e-2)/0.3 over the (N-1)·H filter channels in the official operator's channel order (frozen):
filter o of channel h takes the (h·(N-1) + o)-th value (safari ``src/models/sequence/hyena.py`` reads its filter
channels as ``(v o)``, so the stages interleave over the whole range; stored here at c = o·H + h), b_o ~ N(0, 1), the
FFN initialised as ``nn.Linear`` (trained with lr 1e-3, weight decay 0, as the official filter).

Choices (docs/design.md, "Hyena"):
- PosEnc is computed from n for any length rather than stored as a parameter of l_max rows (the official code trains
  it with lr 1e-5 and cannot run inputs longer than l_max: it crops them). So the filters extend beyond l_max, and
  l_max only sets the time scale (the decay reaches 1e-2 at 0.3 to 1.5 × l_max) and the band frequencies.
- The filters have unbounded support, so the exact state is every input each long convolution has seen: a growing
  state (``inputs``: (B, O, H, L) after L steps, O = order - 1) beside the short convolution's last two inputs.
  ``step`` is the exact convolution over it: O(t·H) work at step t (O(L²) for a whole sequence; no finite-state
  approximation), with the filters cached while the parameters keep their values. ``forward`` with a state
  convolves [past, new] by FFT, so chunked runs equal one pass.
- No ``kernel``: y is not a convolution of u (the filters act on products of input-dependent gates); the implicit
  filters themselves are :meth:`Hyena.filters`. No state space either.
"""

from __future__ import annotations

import math
from typing import ClassVar, Mapping, NamedTuple

import torch
from torch import nn
from torch.nn.utils.prune import BasePruningMethod

from ssmkit.layers.cache import ValueCache, module_tensors
from ssmkit.layers.checks import (
    ATTUNED,
    DRAWN,
    MARKS,
    SHAPES,
    FixedOption,
    check_length,
    check_lr,
    check_positive_int,
    parameter_dtype,
)
from ssmkit.layers.longconv import conv_with_past
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.protocol import BlockDefaults, Capabilities, SequenceLayer, float32_core
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.layers.shortconv import ShortConv
from ssmkit.layers.state import TensorSpec, exportable_state


class HyenaFilter(nn.Module):
    """The implicit long filters of Hyena: h(n) = exp(-|δ| t_n) · FFN(PosEnc(n)) (see the module docstring).

    Args:
        channels: the filters (O·H for a Hyena layer of order O + 1).
        l_max: the length that sets the time scale: t_n = n/(l_max - 1), bands at 2π f_k n / l_max.
        emb_dim: size of PosEnc, odd >= 3 (time plus (emb_dim - 1)/2 cosine and sine bands).
        width: F, the FFN's width (``filter_order`` in the official code, 64).
        n_inner: the FFN's inner Linear → sine layers (2).
        sine_freq: initial ω of the sine activations (1 in the official code; 10 on synthetics, 14 on the Pile).
        lr: learning rate of the FFN and ω (weight decay 0); None = the global lr, 0.0 = frozen.
        device, dtype: of the parameters.
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer)
    channels = FixedOption(SHAPES)
    l_max = FixedOption(ATTUNED)
    emb_dim = FixedOption(SHAPES)
    width = FixedOption(SHAPES)
    n_inner = FixedOption(SHAPES)
    sine_freq = FixedOption(DRAWN)

    def __init__(
        self,
        channels: int,
        l_max: int,
        emb_dim: int = 3,
        width: int = 64,
        n_inner: int = 2,
        sine_freq: float = 1.0,
        lr: float | None = 1e-3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.l_max = l_max
        self.emb_dim = emb_dim
        self.width = width
        self.n_inner = n_inner
        self.sine_freq = sine_freq
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        F = width
        register_ssm_parameter(self, "w_in", torch.empty(F, emb_dim, **factory), lr)
        register_ssm_parameter(self, "b_in", torch.empty(F, **factory), lr)
        register_ssm_parameter(self, "w_hidden", torch.empty(n_inner, F, F, **factory), lr)
        register_ssm_parameter(self, "b_hidden", torch.empty(n_inner, F, **factory), lr)
        register_ssm_parameter(self, "w_out", torch.empty(channels, F, **factory), lr)
        register_ssm_parameter(self, "freq", torch.empty(F, **factory), lr)
        self.register_buffer("deltas", torch.empty(channels, **factory))  # the modulation is frozen (official lr 0)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation (uniform on ±1/√fan_in) for the FFN, ω = ``sine_freq``, the frozen δ."""
        for weight, bias in ((self.w_in, self.b_in), (self.w_hidden, self.b_hidden), (self.w_out, None)):
            bound = 1.0 / math.sqrt(weight.shape[-1])
            weight.uniform_(-bound, bound)
            if bias is not None:
                bias.uniform_(-bound, bound)
        self.freq.fill_(self.sine_freq)
        target, fast, slow = math.log(1e-2), 0.3, 1.5
        self.deltas.copy_(torch.linspace(target / slow, target / fast, self.channels, dtype=torch.float64))

    def positional_encoding(self, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """PosEnc (L, emb_dim) and the normalised time t (L, 1) of taps 0..L-1."""
        factory = {"device": self.w_in.device, "dtype": self.w_in.dtype}
        n = torch.arange(L, **factory).unsqueeze(-1)  # (L, 1)
        t = n / (self.l_max - 1)  # (L, 1): linspace(0, 1, l_max) extended
        bands = (self.emb_dim - 1) // 2
        f = torch.linspace(1e-4, bands - 1, bands, **factory)  # (bands,)
        phase = f * (2 * math.pi * n / self.l_max)  # (L, bands)
        return torch.cat([t, torch.cos(phase), -torch.sin(phase)], dim=-1), t

    def forward(self, L: int) -> torch.Tensor:
        """The filters at taps 0..L-1: (C, L) with C = ``channels``."""
        z, t = self.positional_encoding(L)
        h = torch.sin(self.freq * (z @ self.w_in.T + self.b_in))  # (L, F)
        for k in range(self.n_inner):
            h = torch.sin(self.freq * (h @ self.w_hidden[k].T + self.b_hidden[k]))  # (L, F)
        h = h @ self.w_out.T  # (L, C)
        return (h * torch.exp(-t * self.deltas.abs())).T  # (C, L)


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook or a forward pre-hook other than ``torch.nn.utils.prune``'s (whose product the cached
    value follows through ``name_orig`` and ``name_mask``) is on ``module`` or a sub-module."""
    return any(m._forward_hooks or any(not isinstance(h, BasePruningMethod) for h in m._forward_pre_hooks.values())
               for m in module.modules())


@exportable_state
class HyenaState(NamedTuple):
    """Hyena's state: the short convolution's last inputs and every input of each long convolution so far."""

    conv: torch.Tensor
    inputs: torch.Tensor


@register("hyena")
class Hyena(SequenceLayer):
    """Hyena operator, arXiv 2302.10866: gates and implicit long convolutions (see the module docstring).

    Args:
        d_model: H, the channels.
        l_max: the time scale of the implicit filters (t_n = n/(l_max - 1)); inputs may be longer.
        order: N, the order of the recurrence (N - 1 long convolutions, N gates); 2 in the paper.
        filter_width: F, the width of the filter FFN (``filter_order``, 64).
        emb_dim: size of the positional encoding, odd >= 3 (3 in the official code, 33 on the Pile).
        n_inner: inner layers of the filter FFN (2).
        sine_freq: initial frequency ω of the sine activations (1).
        short_width: taps of the short causal depthwise convolution (3).
        lr: learning rate of the filter FFN and ω (weight decay 0); None = the global lr, 0.0 = frozen.
        device, dtype: of the parameters (float32 or float64).
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer; l_max was ignored: the filter's own l_max sets the time scale)
    d_model = FixedOption(SHAPES)
    l_max = FixedOption(ATTUNED)
    order = FixedOption(SHAPES)
    filter_width = FixedOption(SHAPES)
    emb_dim = FixedOption(SHAPES)
    n_inner = FixedOption(SHAPES)
    sine_freq = FixedOption(DRAWN)
    short_width = FixedOption(SHAPES)
    lr = FixedOption(MARKS)

    zoo = ZooEntry(
        paper='arXiv 2302.10866',
        structure='none',
        parametrisation='implicit long filters h(n) = exp(-|δ| t_n) FFN(PosEnc(n)), gated by projections of the input',
        discretisation='none (filters defined on the taps)',
        time_varying=False,
        stable_by_construction=True,
        stability='no recurrence: long filters of unbounded support (no poles, bounded for any parameters)',
        step_cost='O(order H t) at step t (each long filter over every input so far: a growing state)',
        sequence_cost='O(order H L log L) FFT convolutions',
    )

    capabilities: ClassVar[Capabilities] = Capabilities(kernel=False, state_space=False, step=True)
    missing: ClassVar[Mapping[str, str]] = {
        "kernel": "its output is not a convolution of its input (the long filters act on products of "
        "input-dependent gates); its implicit filters are Hyena.filters(L)",
        "state_space": "it is not linear time-invariant, and its implicit filters have no finite realisation",
    }
    backends: ClassVar[tuple[str, ...]] = ("reference", "fft")
    block_defaults: ClassVar[BlockDefaults] = BlockDefaults(None, None)

    def __init__(
        self,
        d_model: int,
        l_max: int = 1024,
        order: int = 2,
        filter_width: int = 64,
        emb_dim: int = 3,
        n_inner: int = 2,
        sine_freq: float = 1.0,
        short_width: int = 3,
        lr: float | None = 1e-3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.l_max = l_max
        self.order = order
        self.filter_width = filter_width
        self.emb_dim = emb_dim
        self.n_inner = n_inner
        self.sine_freq = sine_freq
        self.short_width = short_width
        self.lr = lr
        check_positive_int(d_model, "d_model")
        if isinstance(l_max, bool) or not isinstance(l_max, int) or l_max < 2:
            raise ValueError(f"l_max must be an int >= 2 (time is normalised by l_max - 1); got {l_max!r}")
        if isinstance(order, bool) or not isinstance(order, int) or order < 2:
            raise ValueError(f"order must be an int >= 2 (order - 1 long convolutions); got {order!r}")
        check_positive_int(filter_width, "filter_width")
        if isinstance(emb_dim, bool) or not isinstance(emb_dim, int) or emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be an odd int >= 3 (time, cosine and sine bands); got {emb_dim!r}")
        if isinstance(n_inner, bool) or not isinstance(n_inner, int) or n_inner < 0:
            raise ValueError(f"n_inner must be an int >= 0; got {n_inner!r}")
        if isinstance(sine_freq, bool) or not isinstance(sine_freq, (int, float)) or not math.isfinite(sine_freq):
            raise ValueError(f"sine_freq must be a finite float; got {sine_freq!r}")
        check_positive_int(short_width, "short_width")
        check_lr(lr)
        device = torch.empty(0, device=device).device  # skip_init needs a concrete device (None = the default)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        H, O = d_model, order - 1
        self.in_proj = nn.utils.skip_init(nn.Linear, H, (order + 1) * H, **factory)
        self.short_conv = nn.utils.skip_init(ShortConv, (order + 1) * H, short_width, True, **factory)
        self.filter = HyenaFilter(O * H, l_max, emb_dim, filter_width, n_inner, sine_freq, lr, **factory)
        self.filter_bias = nn.Parameter(torch.empty(O, H, **factory))
        self.out_proj = nn.utils.skip_init(nn.Linear, H, H, **factory)
        self._step_cache: ValueCache = ValueCache()
        self._step_length = 0
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every parameter: projections and short convolution as ``nn.Linear``/``nn.Conv1d``, the filter
        FFN as ``nn.Linear``, the filter bias b ~ N(0, 1), the decay rates δ in the official channel order (the
        only re-init path)."""
        self.in_proj.reset_parameters()
        self.short_conv.reset_parameters()
        self.filter.reset_parameters()
        # The official operator takes filter channel h·O + o for stage o of channel h ('c l (v o) -> c o v l'), so its
        # linspace of δ interleaves the stages; ours is stored stage-major (c = o·H + h): reorder it (O = 1: no-op).
        # Without this, an order-3 layer gave its first stage only the slowest half of the decay rates.
        O, H = self.order - 1, self.d_model
        self.filter.deltas.copy_(self.filter.deltas.reshape(H, O).T.reshape(O * H))
        self.filter_bias.copy_(torch.randn(self.filter_bias.shape, dtype=torch.float64))
        self.out_proj.reset_parameters()

    def filters(self, L: int) -> torch.Tensor:
        """The implicit long filters h_o at taps 0..L-1 (without the filter bias b_o, which acts at tap 0).

        Args:
            L: the number of taps, >= 1.

        Returns:
            (O, H, L): filter o acts in the o-th long convolution (gate x_{N-1-o}), O = order - 1, in the parameters'
            dtype, also under autocast (as ``forward`` computes them).
        """
        check_length(L)
        self._check_parameter_dtype()
        with float32_core(self.filter_bias.device.type):
            return self.filter(L).reshape(self.order - 1, self.d_model, L)  # (O, H, L)

    def state_spec(self) -> HyenaState:
        """conv: the short convolution's last inputs (channels (N+1)·H by short_width - 1); inputs: each long
        convolution's inputs so far, (O, H, L) with a growing time axis (L = 0 initially)."""
        dtype = self.filter_bias.dtype
        return HyenaState(self.short_conv.state_spec(), TensorSpec((self.order - 1, self.d_model, 0), dtype, growing=2))

    def state_device(self) -> torch.device:
        return self.filter_bias.device

    def _project_in(self, x: torch.Tensor) -> torch.Tensor:
        """W_in x in the parameters' dtype (under autocast a float32 layer's projection itself runs in autocast's dtype;
        autocast leaves float64 alone, so a float64 layer given a float32 x projects in float64 under it too)."""
        return self.in_proj(x.to(self.filter_bias.dtype)).to(self.filter_bias.dtype)

    def _forward(self, x: torch.Tensor, state: HyenaState | None, return_state: bool):
        backend = self._backend()
        H, O = self.d_model, self.order - 1
        z = self._project_in(x)  # (B, L, (N+1)H)
        with float32_core(x.device.type):
            zc, conv_h = self.short_conv(z, None if state is None else state.conv, return_state)
            *gates, v = zc.split(H, dim=-1)  # x_0..x_{N-1}, v: (B, L, H) each
            T = 0 if state is None else state.inputs.shape[-1]
            h = self.filters(T + x.shape[1])  # (O, H, T+L)
            inputs = []
            for o in range(O):
                z_o = gates[O - o] * v  # (B, L, H): x_{N-1-o} ⊙ v
                past = None if state is None else state.inputs[:, o]  # (B, H, T)
                y_o, full = conv_with_past(z_o, h[o], past, backend)  # (B, L, H), (B, T+L, H)
                v = y_o + self.filter_bias[o] * z_o
                inputs.append(full)
            y = gates[0] * v  # (B, L, H)
        y = self.out_proj(y)
        if not return_state:
            return y.to(x.dtype), None
        return y.to(x.dtype), HyenaState(conv_h, torch.stack(inputs, dim=1).transpose(2, 3).contiguous())

    def _step_filters(self, n: int) -> torch.Tensor:
        """(O, H, n) the filters for a step at position n - 1, reversed in time (tap n-1-s at column s, oldest input
        first): a view of a reversed copy cached (grown by doubling) while the filter's tensors keep their values
        (reparametrised ones by their current values), no gradient is needed and no hook is on the filter (a forward
        hook may change its output, and ``forward`` calls it every time: a cached value left the hook out of the step:
        5e-3 to 2.5e-2 from the forward)."""
        tensors = module_tensors(self.filter)
        if (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) or _hooked(self.filter):
            return self.filters(n).flip(-1)
        if n > self._step_length:
            self._step_length = max(n, 2 * self._step_length, self.l_max)
            self._step_cache.clear()
        h = self._step_cache.get(tensors, lambda: self.filters(self._step_length).flip(-1))
        # the last n columns of the reversed filters are taps n-1 .. 0 (another thread may have grown the length)
        return h[..., h.shape[-1] - n:] if h.shape[-1] >= n else self.filters(n).flip(-1)

    def _step(self, x_t: torch.Tensor, state: HyenaState):
        """One step of the recurrence, each long convolution summed over all its inputs so far: O(t·H) at step t."""
        H, O = self.d_model, self.order - 1
        z = self._project_in(x_t)  # (B, (N+1)H)
        with float32_core(x_t.device.type):
            zc, conv_h = self.short_conv.step(z, state.conv)
            *gates, v = zc.split(H, dim=-1)  # (B, H) each
            n = state.inputs.shape[-1] + 1
            h = self._step_filters(n)  # (O, H, n): tap n-1-s at column s (oldest input first)
            newest = []
            for o in range(O):
                z_o = gates[O - o] * v  # (B, H)
                # Σ_s h_{n-1-s} z_s: the inputs so far against taps n-1 .. 1, the newest input by tap 0 (the state
                # is extended once, after the loop)
                past = (state.inputs[:, o] * h[o, :, :-1]).sum(-1)
                v = past + (h[o, :, -1] + self.filter_bias[o]) * z_o
                newest.append(z_o)
            y = gates[0] * v
            inputs = torch.cat([state.inputs, torch.stack(newest, dim=1).unsqueeze(-1)], dim=-1)  # (B, O, H, n)
        return self.out_proj(y).to(x_t.dtype), HyenaState(conv_h, inputs)

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, l_max={self.l_max}, order={self.order}, filter_width={self.filter_width}"
        )
