"""RG-LRU and the Hawk recurrent block: De et al., "Griffin: Mixing Gated Linear Recurrences with Local Attention for
Efficient Language Models", arXiv 2402.19427 (§2.4 the RG-LRU, §2.2 / Fig. 2 the recurrent block).

The recurrent block (a mixer: it carries its own gate and output projection) maps u (B, L, H) to

    g = GeLU(W_y u)                          gate branch (tanh-approximate GeLU, as recurrentgemma)
    x = Conv1D_4(W_x u)                      short causal depthwise convolution, width 4, with bias
    r_t = σ(W_a x_t + b_a),  i_t = σ(W_i x_t + b_i)        gates, block-diagonal (one block per head)
    a_t = a^{c r_t},  a = σ(Λ),  c = 8
    h_t = a_t ⊙ h_{t-1} + √(1 - a_t²) ⊙ (i_t ⊙ x_t)       (the scan: ops.recurrence.linear_recurrence)
    y = W_out (g ⊙ h)

with W_y, W_x: H → D and W_out: D → H (D = ``lru_width``, H by default). √ has recurrentgemma's clipped backward:
d√v/dv = min(1/(2√v), 1000) (:func:`ssmkit.ops.rglru.sqrt_bounded_gradient`).

Initialisation (recurrentgemma): W_x, W_y ~ N(0, 1/H), W_out ~ N(0, ``out_init_scale``/D), the gate blocks
~ N(0, 1/block width), Conv1D taps ~ N(0, 0.01/4), every bias 0. Λ: ``"ring"`` (default, recurrentgemma's code and
released checkpoints) a² ~ U[a_min², a_max²] = U[0.9², 0.999²]; ``"paper"`` (arXiv 2402.19427 §2.4 text) a^c ~
U[a_min, a_max], a much slower initial decay. Λ is the paper's (a = σ(Λ)); recurrentgemma stores -Λ.

Segment resets: ``forward(x, state, return_state, resets)`` with ``resets`` (B, L) bool, True at the first step of a
segment (recurrentgemma's ``segment_pos == 0``). At a segment start the RG-LRU drops its state and does not normalise
the input (a_t = 0, multiplier 1: h_t = i_t ⊙ x_t, recurrentgemma's convention) and the convolution does not reach
across it (recurrentgemma's document mask). So a packed sequence gives what its segments give when run separately,
each with ``resets[:, 0] = True``. Without ``resets`` nothing resets: the state carries on, so chunks continue each
other exactly; to reproduce a recurrentgemma training pass (which counts the first token as a segment start) pass
``resets`` with ``resets[:, 0] = True``. ``step(x_t, state, reset)`` takes the same flag per sequence, (B,) bool.

State (:class:`RGLRUState`): ``conv`` (B, D, 3) the last three convolution inputs, oldest first, with those before
the latest segment start zeroed (so a chunk boundary within three steps of a reset continues exactly: recurrentgemma
keeps them and would let the next step see across the reset); ``h`` (B, D) the RG-LRU state, in the parameters'
dtype (float32, float64 for a float64 layer), also under autocast, where only W_x, W_y and W_out run in bf16/fp16.

Irregular sampling (``forward(..., intervals=)``, ``step(..., interval=)``; not in the paper; as Mamba's,
docs/design.md): each step's recurrence is read as the unit-step zero-order hold of its own gate,
dh/ds = log a_t h + log a_t/(a_t − 1) √(1 − a_t²) i_t x_t, so a gap of τ_t periods gives

    h_t = a_t^{τ_t} h_{t-1} + (a_t^{τ_t} − 1)/(a_t − 1) √(1 − a_t²) i_t x_t

(:func:`ssmkit.ops.irregular_discrete.rglru_irregular`; τ = 1: the layer). The decay is exact in the elapsed time and
the input is held over the gap, as LRU's with intervals; the gates and the short convolution stay functions of the
samples (they have no time constant to scale). Segment resets keep their meaning (a_t = 0, input i_t x_t).
"""

from __future__ import annotations

import math
from typing import ClassVar, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.layers.checks import (
    ATTUNED,
    DRAWN,
    MARKS,
    SHAPES,
    FixedOption,
    check_choice,
    check_lr,
    check_positive_int,
    parameter_dtype,
)
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.protocol import BlockDefaults, Capabilities, SequenceLayer, float32_core, fused_step_runs
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.layers.shortconv import ShortConv
from ssmkit.layers.state import TensorSpec, exportable_state
from ssmkit.ops.irregular import check_intervals
from ssmkit.ops.irregular_discrete import rglru_irregular, rglru_irregular_step
from ssmkit.ops.rows import apply_linear, plain_module
from ssmkit.ops.rglru import rglru, rglru_step

INITS = ("ring", "paper")


@exportable_state
class RGLRUState(NamedTuple):
    """The state of :class:`RGLRU`: ``conv`` (B, D, W-1) short-convolution inputs and ``h`` (B, D) the RG-LRU state."""

    conv: torch.Tensor
    h: torch.Tensor


class BlockDiagonalLinear(nn.Module):
    """y = x W + b with W block-diagonal: the D channels split into G blocks of D/G, each with its own dense map.

    The RG-LRU's gates (recurrentgemma ``BlockDiagonalLinear``): one block per head. Weights N(0, 1/(D/G)), bias 0.

    Args:
        width: D, the input and output channels.
        n_blocks: G, a divisor of D.
        device, dtype: of the parameters.
    """

    # fixed at construction (checks.FixedOption)
    width = FixedOption(SHAPES)
    n_blocks = FixedOption(SHAPES)

    def __init__(self, width: int, n_blocks: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.width = width
        self.n_blocks = n_blocks
        block = width // n_blocks
        self.weight = nn.Parameter(torch.empty(n_blocks, block, block, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(n_blocks, block, device=device, dtype=dtype))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        block = self.width // self.n_blocks
        self.weight.copy_(torch.randn(self.weight.shape, dtype=torch.float64) / math.sqrt(block))
        self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D)."""
        xb = x.unflatten(-1, (self.n_blocks, -1))  # (..., G, D/G)
        y = torch.einsum("...gi,gij->...gj", xb, self.weight) + self.bias  # (..., G, D/G)
        return y.flatten(-2)  # (..., D)

    def extra_repr(self) -> str:
        return f"width={self.width}, n_blocks={self.n_blocks}"


def _check_positive_float(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite float > 0; got {value!r}")


@register("rglru")
class RGLRU(SequenceLayer):
    """The Hawk recurrent block around the RG-LRU (arXiv 2402.19427): see the module docstring for the equations.

    Args:
        d_model: H, the input and output channels.
        lru_width: D, the channels of the RG-LRU (None = H, recurrentgemma's default).
        n_heads: blocks of the block-diagonal gates; must divide D (recurrentgemma uses the model's heads).
        conv_width: taps of the short convolution (4).
        c: the constant of a_t = a^{c r_t} (8).
        init: initialisation of Λ, one of
            ``"ring"`` -- a² ~ U[a_min², a_max²] (recurrentgemma's code; the default);
            ``"paper"`` -- a^c ~ U[a_min, a_max] (the paper's §2.4 text).
        a_min, a_max: the range of that draw, 0 < a_min <= a_max < 1 (0.9, 0.999).
        out_init_scale: the variance of W_out times D (recurrentgemma's ``final_w_init_variance_scale``).
        lr: learning rate of Λ (weight decay 0); ``None`` = the global lr, ``0.0`` = frozen.
        device, dtype: of the parameters (dtype real: float32 or float64).

    Parameters: ``in_x`` and ``in_gate`` (``nn.Linear`` H → D: W_x and W_y), ``conv`` (:class:`ShortConv`),
    ``gate_a`` and ``gate_x`` (:class:`BlockDiagonalLinear`: W_a, W_i), ``Lambda`` (D,), ``out`` (``nn.Linear`` D → H).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(kernel=False, state_space=False, step=True)
    missing: ClassVar[Mapping[str, str]] = {
        "kernel": "its gates depend on the input (a_t = a^{c r_t(x)}), so it is not a convolution",
        "state_space": "it is input-dependent (time-varying gates), so it has no LTI realisation",
    }
    backends: ClassVar[tuple[str, ...]] = ("reference", "chunked", "native")
    block_defaults: ClassVar[BlockDefaults] = BlockDefaults(activation=None, mixer_out=None)
    # intervals (module docstring), declared here and not by the IrregularSampling mixin: its forward and step have
    # no segment resets, which this layer's take beside the intervals
    takes_intervals: ClassVar[bool] = True

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer)
    d_model = FixedOption(SHAPES)
    lru_width = FixedOption(SHAPES)
    n_heads = FixedOption(SHAPES)
    conv_width = FixedOption(SHAPES)
    c = FixedOption(ATTUNED)
    init = FixedOption(DRAWN)
    a_min = FixedOption(DRAWN)
    a_max = FixedOption(DRAWN)
    out_init_scale = FixedOption(DRAWN)
    lr = FixedOption(MARKS)

    zoo = ZooEntry(
        paper="arXiv 2402.19427",
        structure="diagonal",
        parametrisation="a_t = σ(Λ)^{c r_t}, real, gated by r_t(x) and i_t(x); input scaled by √(1 - a_t²)",
        discretisation="none (discrete time)",
        time_varying=True,
        stable_by_construction=True,
        stability="0 < a_t < 1 for every input (σ(Λ) ∈ (0, 1), c r_t > 0)",
        step_cost="O(H D + D² / heads) (gates and projections; D = lru_width)",
        sequence_cost="O(L (H D + D² / heads)) chunked linear recurrence",
    )

    def __init__(
        self,
        d_model: int,
        lru_width: int | None = None,
        n_heads: int = 1,
        conv_width: int = 4,
        c: float = 8.0,
        init: str = "ring",
        a_min: float = 0.9,
        a_max: float = 0.999,
        out_init_scale: float = 1.0,
        lr: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.lru_width = lru_width if lru_width is not None else d_model
        self.n_heads = n_heads
        self.conv_width = conv_width
        self.c = c
        self.init = init
        self.a_min = a_min
        self.a_max = a_max
        self.out_init_scale = out_init_scale
        self.lr = lr
        check_positive_int(d_model, "d_model")
        check_positive_int(self.lru_width, "lru_width")
        check_positive_int(n_heads, "n_heads")
        if self.lru_width % n_heads:
            raise ValueError(f"n_heads must divide lru_width = {self.lru_width}; got n_heads={n_heads}")
        check_positive_int(conv_width, "conv_width")
        _check_positive_float(c, "c")
        check_choice(init, INITS, "init")
        for name, value in (("a_min", a_min), ("a_max", a_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"{name} must be a float in (0, 1); got {value!r}")
        if a_min > a_max:
            raise ValueError(f"a_min and a_max must satisfy 0 < a_min <= a_max < 1; got {a_min}, {a_max}")
        _check_positive_float(out_init_scale, "out_init_scale")
        check_lr(lr)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        D = self.lru_width
        # built on the meta device, then given memory: their own inits draw nothing (reset_parameters draws
        # everything). Not fork_rng, which saves torch's global generator and restores it after their draws: another
        # thread's draws in between were undone, its next numbers repeated.
        meta, target = {**factory, "device": "meta"}, torch.empty(0, device=device).device
        self.in_x = nn.Linear(d_model, D, **meta).to_empty(device=target)
        self.in_gate = nn.Linear(d_model, D, **meta).to_empty(device=target)
        self.conv = ShortConv(D, conv_width, bias=True, **meta).to_empty(device=target)
        self.out = nn.Linear(D, d_model, **meta).to_empty(device=target)
        self.gate_a = BlockDiagonalLinear(D, n_heads, **factory)
        self.gate_x = BlockDiagonalLinear(D, n_heads, **factory)
        register_ssm_parameter(self, "Lambda", torch.empty(D, **factory), lr)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from recurrentgemma's initialisation (the only re-init path)."""
        H, D = self.d_model, self.lru_width

        def normal(tensor: torch.Tensor, variance: float) -> None:
            tensor.copy_(torch.randn(tensor.shape, dtype=torch.float64) * math.sqrt(variance))

        normal(self.in_x.weight, 1.0 / H)
        normal(self.in_gate.weight, 1.0 / H)
        normal(self.conv.weight, 0.01 / self.conv_width)
        normal(self.out.weight, self.out_init_scale / D)
        for bias in (self.in_x.bias, self.in_gate.bias, self.conv.bias, self.out.bias):
            bias.zero_()
        self.gate_a.reset_parameters()
        self.gate_x.reset_parameters()
        u = torch.rand(D, dtype=torch.float64)
        if self.init == "ring":  # a² ~ U[a_min², a_max²]
            a = torch.sqrt(self.a_min**2 + u * (self.a_max**2 - self.a_min**2))
        else:  # a^c ~ U[a_min, a_max]
            a = (self.a_min + u * (self.a_max - self.a_min)) ** (1.0 / self.c)
        self.Lambda.copy_(torch.log(a) - torch.log1p(-a))  # σ(Λ) = a

    def state_spec(self) -> RGLRUState:
        """``conv`` (D, W-1) and ``h`` (D,), both in the parameters' dtype (float32 under autocast too)."""
        # the conv's own spec (its taps' width): one from conv_width let a replaced, wider conv write past the state
        # the C step was given (a segmentation fault)
        return RGLRUState(self.conv.state_spec(), TensorSpec((self.lru_width,), self.Lambda.dtype))

    # ------------------------------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        state: RGLRUState | None = None,
        return_state: bool = True,
        resets: torch.Tensor | None = None,
        *,
        intervals: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RGLRUState | None]:
        """Run the block over a whole sequence (the protocol's ``forward``, plus segment starts and sampling times).

        Args:
            x: (B, L, H) real input, H = ``d_model``.
            state: the state before x (:class:`RGLRUState`), or None for zeros.
            return_state: compute and return the final state.
            resets: (B, L) bool, True at the first step of a segment (state and convolution do not reach across
                it), or None for no resets.
            intervals: None (regular sampling), or (B, L) real > 0: the time from the previous sample to each sample
                in nominal sampling periods, the first from the state's instant (module docstring).

        Returns:
            y (B, L, H) in x's dtype, and the final state (None when not asked for).
        """
        self._check_forward(x, state)
        if resets is not None:
            _check_resets(resets, tuple(x.shape[:2]), x.device, "resets", "(B, L)")
        if intervals is not None:
            check_intervals(intervals, tuple(x.shape[:2]), x.device)
        return self._forward(x, state, bool(return_state), resets, intervals)

    def step(
        self, x_t: torch.Tensor, state: RGLRUState, reset: torch.Tensor | None = None, *,
        interval: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RGLRUState]:
        """One recurrent step (the protocol's ``step``, plus a segment start per sequence and the gap before it).

        Args:
            x_t: (B, H) real input at one time step.
            state: the current state (:class:`RGLRUState`).
            reset: (B,) bool, True for the sequences that start a segment at this step, or None.
            interval: None (one nominal sampling period), or (B,) real > 0: the time since the previous sample in
                nominal sampling periods (as ``forward``'s ``intervals``).

        Returns:
            y_t (B, H) in x_t's dtype, and the next state.
        """
        self._check_step(x_t, state)
        if reset is not None:
            _check_resets(reset, (x_t.shape[0],), x_t.device, "reset", "(B,)")
        if interval is not None:
            check_intervals(interval, tuple(x_t.shape[:1]), x_t.device, "interval")
            return self._step_torch(x_t, state, reset, interval)
        return self._step(x_t, state, reset)

    def _gates(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r = σ(W_a v + b_a), i = σ(W_i v + b_i): (..., D) each."""
        return torch.sigmoid(self.gate_a(v)), torch.sigmoid(self.gate_x(v))

    def _forward(self, x: torch.Tensor, state: RGLRUState | None, return_state: bool,
                 resets: torch.Tensor | None = None,
                 intervals: torch.Tensor | None = None) -> tuple[torch.Tensor, RGLRUState | None]:
        backend = self._backend()  # auto: the C kernel (gates and scan in one pass) on the CPU where it runs
        dtype = self.Lambda.dtype
        u = x.to(dtype)
        g = F.gelu(apply_linear(self.in_gate, u), approximate="tanh")  # (B, L, D): bf16 under autocast
        z = apply_linear(self.in_x, u)  # (B, L, D); both by row blocks (ops/rows.py)
        conv0, h0 = (None, None) if state is None else state
        with float32_core(x.device.type):
            v, conv_last = self.conv(z.to(dtype), conv0, return_state, resets)  # (B, L, D)
            r, i = self._gates(v)  # (B, L, D) each
            if intervals is None:
                h, h_last = rglru(v, r, i, self.Lambda, self.c, h0, resets, backend=backend)  # (B, L, D), (B, D)
            else:  # each gate held over its gap (module docstring)
                h, h_last = rglru_irregular(v, r, i, self.Lambda, self.c, intervals, h0, resets, backend=backend)
        y = apply_linear(self.out, h * g)  # (B, L, H)
        return y.to(x.dtype), (RGLRUState(conv_last, h_last) if return_state else None)

    def _step(self, x_t: torch.Tensor, state: RGLRUState,
              reset: torch.Tensor | None = None) -> tuple[torch.Tensor, RGLRUState]:
        """The fused C step (:mod:`ssmkit.ops.native.rglru_step`) where it runs, nothing records a gradient
        (generation), nothing traces (torch.compile, torch.func: the kernel is a plain C call) and the conv and gates
        it stands in for are plain, else the step in PyTorch ops."""
        fusable = plain_module(self.conv, ShortConv) and all(
            plain_module(m, BlockDiagonalLinear) for m in (self.gate_a, self.gate_x)
        )
        if fusable and fused_step_runs(self, "rglru_step", x_t, state, self.Lambda):
            return self._step_native(x_t, state, reset)
        return self._step_torch(x_t, state, reset)

    def _step_native(self, x_t: torch.Tensor, state: RGLRUState,
                     reset: torch.Tensor | None = None) -> tuple[torch.Tensor, RGLRUState]:
        """One step by the C kernel between the projections (no gradients)."""
        from ssmkit.ops.native.rglru_step import rglru_step_native

        dtype = self.Lambda.dtype
        u = x_t.to(dtype)
        g = F.gelu(self.in_gate(u), approximate="tanh")  # (B, D): in bf16 under autocast, as the forward's
        z = self.in_x(u).to(dtype)  # (B, D)
        out, conv1, h = rglru_step_native(
            g.to(dtype), z, state.conv, self.conv.weight, self.conv.bias, self.gate_a.weight, self.gate_a.bias,
            self.gate_x.weight, self.gate_x.bias, self.Lambda, self.c, state.h, reset,
        )  # (B, D), (B, D, W - 1), (B, D)
        return self.out(out).to(x_t.dtype), RGLRUState(conv1, h)  # (out: h ⊙ g in the parameters' dtype)

    def _step_torch(self, x_t: torch.Tensor, state: RGLRUState, reset: torch.Tensor | None = None,
                    interval: torch.Tensor | None = None) -> tuple[torch.Tensor, RGLRUState]:
        """One step in PyTorch ops (the reference of the fused step, the step that records gradients, and the step
        after a gap ``interval`` (B,))."""
        dtype = self.Lambda.dtype
        u = x_t.to(dtype)
        g = F.gelu(self.in_gate(u), approximate="tanh")  # (B, D)
        z = self.in_x(u)  # (B, D)
        conv0, h0 = state
        with float32_core(x_t.device.type):
            if reset is not None:
                conv0 = conv0 * ~reset[:, None, None]  # (B, D, W-1): the past of a new segment is zero
            v, conv1 = self.conv.step(z.to(dtype), conv0)  # (B, D)
            r, i = self._gates(v)  # (B, D) each
            if interval is None:
                h = rglru_step(v, r, i, self.Lambda, self.c, h0, reset)  # (B, D)
            else:
                h = rglru_irregular_step(v, r, i, self.Lambda, self.c, interval, h0, reset)  # (B, D)
        y = self.out(h * g)  # (B, H)
        return y.to(x_t.dtype), RGLRUState(conv1, h)

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, lru_width={self.lru_width}, n_heads={self.n_heads}, "
            f"conv_width={self.conv_width}, init={self.init!r}"
        )


def _check_resets(resets: object, shape: tuple[int, ...], device: torch.device, name: str, letters: str) -> None:
    """Raise ``ValueError`` unless ``resets`` is a bool tensor of ``shape`` on ``device``."""
    if not isinstance(resets, torch.Tensor) or resets.dtype != torch.bool or tuple(resets.shape) != shape:
        found = f"{tuple(resets.shape)} {resets.dtype}" if isinstance(resets, torch.Tensor) else type(resets).__name__
        raise ValueError(f"{name} must be a {letters} = {shape} bool tensor (True at a segment start); got {found}")
    if resets.device != device:
        raise ValueError(f"{name} must be on the input's device {device}; got {resets.device}")
