"""SGConv: "What Makes Convolutional Models Great on Long Sequence Modeling?", Li et al., arXiv 2210.09298.

A long convolution whose kernel is built from S short sub-kernels w_i ∈ R^d (d = ``kernel_dim``), each upsampled to
cover a window twice as long as the one before and weighted by a decay α^i (the paper's §3):

    K̃ = concat_{i=0}^{S-1} α^i · Upsample_{r_i}(w_i),   r_0 = 1, r_i = 2^{i-1} for i >= 1,   α = 1/decay
    S = 1 + ⌈log₂(l_max / d)⌉,   K = K̃ / ‖K̃‖₂ (per channel, the norm frozen at initialisation),   y = K ⊛ u + D ⊙ u

Upsampling is linear interpolation (``F.interpolate(mode="linear")``'s values, as a fixed matrix product: the CUDA
backward of interpolate has no deterministic algorithm); the kernel has K_len = d·2^{S-1} >= l_max taps
and is zero beyond them (the official code crops or zero-pads it to the input's length). w_i ~ N(0, 1), D ~ N(0, 1).
Bidirectional: a second set of sub-kernels gives an anti-causal kernel whose tap 0 acts at lag -1.

Choices (docs/design.md, "SGConv"):
- The normaliser ‖K̃‖₂ is computed in ``reset_parameters`` from the drawn sub-kernels and kept as the buffer
  ``kernel_norm`` (saved in the state dict). The official code computes it at the first forward; with no update in
  between the two are equal, and ours keeps ``forward`` pure (no buffer written: thread-safe, ``torch.compile``,
  the same model whether or not it ran before being copied). :meth:`SGConv.reset_kernel_norm` recomputes it from the
  current sub-kernels (after loading sub-kernels by hand).
- The kernel is an FIR filter of K_len taps, so the layer's exact state is finite: the last K_len - 1 inputs
  (B, H, K-1) with K = K_len. ``step`` is the exact convolution over that window (O(H·K_len) per step), and ``forward`` with a
  state convolves [window, x] (Hyena carries its past inputs the same way, all of them, its filters having unbounded
  support). No state-space export: its realisation would be a shift register of K_len - 1 states per channel.
- ``l_max`` only sets S; any input length works (the kernel is zero beyond K_len taps). l_max <= d gives S = 1.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar, Mapping

import torch
from torch import nn

from ssmkit.layers.cache import ValueCache
from ssmkit.layers.checks import MARKS, SHAPES, FixedOption, check_flag, check_lr, check_positive_int, parameter_dtype
from ssmkit.layers.longconv import conv_with_past, fit_length, last_inputs
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.protocol import Capabilities, SequenceLayer, float32_core, with_skip
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.layers.state import TensorSpec
from ssmkit.ops.backend import tracing
from ssmkit.ops.fftconv import bidirectional_conv


def _n_scales(l_max: int, kernel_dim: int) -> int:
    """S = 1 + ⌈log₂(l_max / d)⌉, at least 1: the number of sub-kernels, so that d·2^{S-1} >= l_max."""
    s = 0
    while kernel_dim * 2**s < l_max:
        s += 1
    return 1 + s


def interpolation_matrix(d: int, factor: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(d, d·factor) float64 M with w @ M = ``F.interpolate(w, scale_factor=factor, mode="linear")`` (align_corners
    False): output tap j reads x_j = (j + ½)/factor − ½ clamped to [0, d − 1], (1 − λ_j) w[⌊x_j⌋] + λ_j w[⌊x_j⌋ + 1].

    A matrix product, because interpolate's CUDA backward has no deterministic algorithm (under
    ``torch.use_deterministic_algorithms(True)`` SGConv could not train on a GPU). The weights are multiples of
    1/(2·factor): exact in every float dtype. Torch ops only, so torch.compile and torch.export trace it.

    Args:
        d: the sub-kernel length.
        factor: the upsampling factor, an int >= 1.
        device: where to build it.
    """
    j = torch.arange(d * factor, dtype=torch.float64, device=device)
    x = ((j + 0.5) / factor - 0.5).clamp(0.0, d - 1)  # (d·factor,)
    lower = x.floor()
    lam = x - lower
    rows = torch.arange(d, dtype=torch.float64, device=device)[:, None]  # (d, 1)
    return (rows == lower) * (1.0 - lam) + (rows == (lower + 1.0).clamp(max=d - 1)) * lam  # (d, d·factor)


@functools.lru_cache(maxsize=64)
def _cached_matrix(d: int, factor: int) -> torch.Tensor:
    """:func:`interpolation_matrix` on the CPU, once per (d, factor) in a process; never an inference tensor, even when
    first built inside ``torch.inference_mode`` (an SGConv constructed there): ``.to`` hands it out as it is to a
    float64 layer, whose backward saves it (every later float64 SGConv of those sizes failed to train)."""
    with torch.inference_mode(False):
        return interpolation_matrix(d, factor)


def upsampling_matrix(d: int, factor: int, like: torch.Tensor) -> torch.Tensor:
    """:func:`interpolation_matrix` in ``like``'s dtype and device: eagerly from a per-(d, factor) cache of the CPU
    float64 matrix (a constant), while compiling or exporting built in the graph (a cached tensor would be a
    constant the tracer cannot see through).

    Args:
        d: the sub-kernel length.
        factor: the upsampling factor.
        like: a tensor whose dtype and device the matrix takes.
    """
    if tracing():
        return interpolation_matrix(d, factor, like.device).to(like.dtype)
    return _cached_matrix(d, factor).to(like)


def _sgconv_kernel(sub_kernels: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """The unnormalised SGConv kernel K̃ = concat_i α^i · Upsample_{r_i}(w_i), α = 1/decay (arXiv 2210.09298).

    sub_kernels (scales, C, H, d) holds the w_i (C = 2 when bidirectional), decay (H,) the per-channel decay;
    returns K̃ (C, H, F) with F = d·2^{scales-1} taps.
    """
    S = sub_kernels.shape[0]
    parts = []
    for i in range(S):
        w = sub_kernels[i]  # (C, H, d)
        if i > 1:
            w = w @ upsampling_matrix(w.shape[-1], 2 ** (i - 1), w)  # (C, H, d·2^{i-1})
        parts.append(w * decay.unsqueeze(-1) ** (-i))  # α^i per channel
    return torch.cat(parts, dim=-1)  # (C, H, F)


@register("sgconv")
class SGConv(SequenceLayer):
    """Structured global convolution (SGConv), arXiv 2210.09298: y = K ⊛ u + D ⊙ u with a multiscale decaying kernel.

    Args:
        d_model: H, the channels (one kernel each).
        l_max: the length the kernel must cover: S = 1 + ⌈log₂(l_max / kernel_dim)⌉ scales, K_len = kernel_dim·2^{S-1}
            taps (inputs may be longer: the kernel is zero beyond K_len).
        kernel_dim: d, the taps of each sub-kernel (64 in the paper).
        decay_min, decay_max: the decay of each channel, linearly spaced from decay_min to decay_max over the
            channels (α = 1/decay; 2 in the paper, so α = ½).
        lr: learning rate of the sub-kernels (weight decay 0); None = the global lr, 0.0 = frozen.
        bidirectional: add an anti-causal kernel with its own sub-kernels (no ``step`` then).
        device, dtype: of the parameters (float32 or float64).
    """

    # the constructor options and the sizes derived from them, fixed at construction (checks.FixedOption:
    # assigned later, decay_min/decay_max moved forward off the cached step by 7-9 %, the others were ignored
    # or broke the layer)
    d_model = FixedOption(SHAPES)
    l_max = FixedOption(SHAPES)
    kernel_dim = FixedOption(SHAPES)
    decay_min = FixedOption("the frozen kernel norm was measured with")
    decay_max = FixedOption("the frozen kernel norm was measured with")
    lr = FixedOption(MARKS)
    bidirectional = FixedOption(SHAPES)
    n_scales = FixedOption(SHAPES)
    kernel_length = FixedOption(SHAPES)

    zoo = ZooEntry(
        paper='arXiv 2210.09298',
        structure='none',
        parametrisation='kernel = concatenated upsampled sub-kernels w_i weighted by decay^(-i), normalised',
        discretisation='none (kernel on the taps)',
        time_varying=False,
        stable_by_construction=True,
        stability='no recurrence: an FIR of K_len taps (no poles, bounded for any parameters)',
        step_cost='O(H K_len) (a window of K_len inputs)',
        sequence_cost='O(H L log L) FFT convolution',
    )

    capabilities: ClassVar[Capabilities] = Capabilities(kernel=True, state_space=False, step=True)
    missing: ClassVar[Mapping[str, str]] = {
        "state_space": "its kernel is an FIR filter of K_len taps; a realisation would be a shift register of "
        "K_len - 1 states per channel (use kernel(L), or step with the window state)",
    }
    backends: ClassVar[tuple[str, ...]] = ("reference", "fft")

    def __init__(
        self,
        d_model: int,
        l_max: int = 1024,
        kernel_dim: int = 64,
        decay_min: float = 2.0,
        decay_max: float = 2.0,
        lr: float | None = 1e-3,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.l_max = l_max
        self.kernel_dim = kernel_dim
        self.decay_min = decay_min
        self.decay_max = decay_max
        self.lr = lr
        check_flag(bidirectional, "bidirectional")
        self.bidirectional = bidirectional
        check_positive_int(d_model, "d_model")
        check_positive_int(l_max, "l_max")
        check_positive_int(kernel_dim, "kernel_dim")
        for name, value in (("decay_min", decay_min), ("decay_max", decay_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite float > 0 (α = 1/decay); got {value!r}")
        check_lr(lr)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        self.n_scales = _n_scales(l_max, kernel_dim)
        self.kernel_length = kernel_dim * 2 ** (self.n_scales - 1)
        n_out = 2 if bidirectional else 1
        register_ssm_parameter(self, "sub_kernels", torch.empty(self.n_scales, n_out, d_model, kernel_dim, **factory), lr)
        self.D = nn.Parameter(torch.empty(d_model, **factory))
        self.register_buffer("kernel_norm", torch.empty(n_out, d_model, **factory))
        self._step_cache: ValueCache = ValueCache()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw w_i ~ N(0, 1) and D ~ N(0, 1), and freeze the normaliser ‖K̃‖₂ of the drawn kernel (the only
        re-init path)."""
        self.sub_kernels.copy_(torch.randn(self.sub_kernels.shape, dtype=torch.float64))
        self.D.copy_(torch.randn(self.d_model, dtype=torch.float64))
        self.reset_kernel_norm()

    @torch.no_grad()
    def reset_kernel_norm(self) -> None:
        """Set ``kernel_norm`` (C, H) to the L2 norm of the current unnormalised kernel of each channel (what the
        official code measures at its first forward)."""
        self.kernel_norm.copy_(_sgconv_kernel(self.sub_kernels, self._decay()).norm(dim=-1))

    def _decay(self) -> torch.Tensor:
        """(H,) decay of each channel, linearly spaced from decay_min to decay_max."""
        w = self.sub_kernels
        return torch.linspace(self.decay_min, self.decay_max, self.d_model, dtype=w.dtype, device=w.device)

    def _full_kernel(self) -> torch.Tensor:
        """K̃/‖K̃‖₂ with D on the causal kernel's tap 0: (C, H, F)."""
        K = _sgconv_kernel(self.sub_kernels, self._decay()) / self.kernel_norm.unsqueeze(-1)  # (C, H, F)
        return with_skip(K, self.D)

    @property
    def window(self) -> int:
        """K_len - 1: the past inputs the state holds."""
        return self.kernel_length - 1

    def state_spec(self) -> TensorSpec:
        """The last K - 1 inputs (K = K_len taps), oldest first: (H, K-1) in the parameters' dtype."""
        return TensorSpec((self.d_model, self.window), self.D.dtype)

    def state_device(self) -> torch.device:
        return self.D.device

    def _forward(self, x: torch.Tensor, state: torch.Tensor | None, return_state: bool):
        backend = self._backend()
        with float32_core(x.device.type):
            u = x.to(self.D.dtype)
            L = u.shape[1]
            K = self._full_kernel()  # (C, H, F)
            if self.bidirectional:
                return bidirectional_conv(u, fit_length(K, L), backend=backend).to(x.dtype), None
            T = 0 if state is None else state.shape[-1]
            y, u_full = conv_with_past(u, fit_length(K[0], T + L), state, backend)  # (B, L, H), (B, T+L, H)
            h = last_inputs(u_full, self.window) if return_state else None
        return y.to(x.dtype), h

    def _step_taps(self) -> torch.Tensor:
        """(H, F) the causal kernel with its taps reversed (oldest input first), for ``step``."""
        return self._step_cache.get_unless_grad([self.sub_kernels, self.D, self.kernel_norm],
                                                lambda: self._full_kernel()[0].flip(-1))

    def _step(self, x_t: torch.Tensor, state: torch.Tensor):
        """y_t = Σ_{j<K_len} K_j u_{t-j} over the window [state, x_t]; the window moves by one."""
        with float32_core(x_t.device.type):
            window = torch.cat([state, x_t.to(self.D.dtype).unsqueeze(-1)], dim=-1)  # (B, H, F)
            y = (window * self._step_taps()).sum(-1)  # (B, H)
        return y.to(x_t.dtype), window[:, :, 1:]

    def _kernel(self, L: int) -> torch.Tensor:
        """K (H, L), or (2, H, L) when bidirectional, with D on tap 0: cropped or zero-padded to L."""
        K = fit_length(self._full_kernel(), L)  # (C, H, L)
        return K if self.bidirectional else K[0]

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, l_max={self.l_max}, kernel_dim={self.kernel_dim}, n_scales={self.n_scales}, "
            f"decay=({self.decay_min}, {self.decay_max}), bidirectional={self.bidirectional}",
            covered=("decay_min", "decay_max"),
        )
