"""Mamba: "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", Gu & Dao, arXiv 2312.00752.

The Mamba-1 mixer (§3.4, Figure 3), with E = ``expand`` and H_in = E·d_model inner channels:

    x, z = split(W_in u)                                   in-projection to 2 H_in (no bias by default)
    x ← SiLU(conv_W(x))                                    causal depthwise convolution, W = d_conv taps, with bias
    (δ, B_t, C_t) = W_x x                                  δ ∈ R^R (R = dt_rank), B_t, C_t ∈ R^N shared by all channels
    Δ_t = softplus(W_Δ δ + b_Δ)                            per channel
    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t x_t) B_t,  y_t = C_t · h_t + D ⊙ x_t        (S6, Algorithm 2)
    out = W_out(y ⊙ SiLU(z))

A = -exp(A_log) (H_in, N), A_log = log(1..N) for every channel (S4D-Real); D = 1; W_Δ ~ U[±R^{-½}·dt_scale]
("random") or R^{-½}·dt_scale ("constant"); b_Δ = softplus⁻¹(Δ₀), Δ₀ = exp(U[log dt_min, log dt_max]) floored at
``dt_init_floor``. B̄ = Δ B (Euler) as in the official code, not the ZOH of the paper's eq. 4.

Parameters and optimisation: A_log and b_Δ (``dt_bias``, the official ``dt_proj.bias``) are SSM parameters with
weight decay 0 and the learning rate ``lr``; the skip D is a weight like every layer's skip. Both differ from the
official module on purpose (docs/design.md, "Probe 9"): it exempts A_log and D from weight decay (``_no_weight_decay``)
and marks its Δ bias only ``_no_reinit``, so b_Δ decays there unless the trainer spares biases (Mamba-2 spares it).

The state is ``MambaState(conv, ssm)``: the last W-1 inputs of the convolution (B, H_in, W-1) and the SSM state
(B, H_in, N). Unlike the official module, ``forward`` starts from a given state and returns the final state, and
gradients flow through both. Under autocast the in- and out-projections run in bf16/fp16 and everything between
them (convolution, W_x, W_Δ, the scan, the gate) in the parameters' dtype (``float32_core``).

Backends: ``"chunked"`` = :func:`ssmkit.ops.selective.selective_scan_chunked`; ``"native"`` = the C kernel
:func:`ssmkit.ops.native.selective_scan_native` (CPU), which also forms W_Δ δ itself (``delta_proj``); ``"auto"`` =
native on the CPU where it runs, else chunked; ``"reference"`` = the loop
:func:`ssmkit.ops.selective.selective_scan_reference`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from ssmkit.layers.checks import (
    DRAWN,
    MARKS,
    SHAPES,
    FixedOption,
    check_choice,
    check_dt_range,
    check_flag,
    check_lr,
    check_positive_int,
    parameter_dtype,
)
from ssmkit.layers.irregular import IrregularSampling
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.protocol import BlockDefaults, Capabilities, SequenceLayer, float32_core, fused_step_runs
from ssmkit.layers.registry import register
from ssmkit.layers.shortconv import ShortConv
from ssmkit.layers.zoo import ZooEntry
from ssmkit.layers.state import TensorSpec, exportable_state
from ssmkit.ops.selective import selective_scan, selective_step
from ssmkit.ops.rows import apply_linear, apply_split_linear, plain_linear, plain_module

DT_INITS = ("random", "constant")


@exportable_state
class MambaState(NamedTuple):
    """The state of a :class:`Mamba` layer: ``conv`` (B, H, W-1) the last W-1 convolution inputs (H = the inner
    channels), ``ssm`` (B, H, N) the selective SSM's state."""

    conv: torch.Tensor
    ssm: torch.Tensor


def _check_positive_float(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite float > 0; got {value!r}")


@register("mamba")
class Mamba(IrregularSampling, SequenceLayer):
    """The Mamba-1 mixer (selective SSM with its projections, convolution and gate), arXiv 2312.00752.

    Args:
        d_model: channels of the input and output.
        d_state: N, the SSM state size per inner channel.
        d_conv: W, the taps of the causal depthwise convolution.
        expand: E, inner channels H_in = E·d_model.
        dt_rank: R, the rank of the Δ projection, or ``"auto"`` = ⌈d_model/16⌉.
        dt_min, dt_max: range of the log-uniform initial Δ (through the bias b_Δ).
        dt_init: initialisation of W_Δ, one of
            ``"random"`` -- uniform on ±R^{-½}·dt_scale (the official default);
            ``"constant"`` -- every entry R^{-½}·dt_scale.
        dt_scale: scale of W_Δ's initialisation.
        dt_init_floor: lower bound of the initial Δ (>= 0; 0 = no floor).
        conv_bias: learn a bias in the convolution.
        bias: learn biases in the in- and out-projections.
        lr: learning rate of A_log and the Δ bias b_Δ (weight decay 0); None = the global lr (the official
            training), 0.0 = frozen.
        device, dtype: of the parameters (float32 or float64).
    """

    capabilities = Capabilities(kernel=False, state_space=False, step=True)
    missing = {
        "kernel": "it is selective: Δ, B and C depend on the input, so it is not a convolution",
        "state_space": "it is selective (time-varying and input-dependent), so it has no LTI realisation",
    }
    backends = ("reference", "chunked", "native")
    block_defaults = BlockDefaults(activation=None, mixer_out=None)

    # the constructor options and the sizes derived from them (d_inner, rank), fixed at construction
    # (checks.FixedOption: assigned later, each was ignored, half-applied or broke the layer)
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    d_conv = FixedOption(SHAPES)
    expand = FixedOption(SHAPES)
    dt_rank = FixedOption(SHAPES)
    dt_min = FixedOption(DRAWN)
    dt_max = FixedOption(DRAWN)
    dt_init = FixedOption(DRAWN)
    dt_scale = FixedOption(DRAWN)
    dt_init_floor = FixedOption(DRAWN)
    conv_bias = FixedOption(SHAPES)
    bias = FixedOption(SHAPES)
    lr = FixedOption(MARKS)
    d_inner = FixedOption(SHAPES)
    rank = FixedOption(SHAPES)

    zoo = ZooEntry(
        paper="arXiv 2312.00752",
        structure="diagonal",
        parametrisation="A = -exp(A_log) per inner channel and state (S4D-Real init); Δ_t, B_t, C_t from the input",
        discretisation="ZOH for A, Euler (Δ_t B_t) for B",
        time_varying=True,
        stable_by_construction=True,
        stability="exp(Δ_t A) ∈ (0, 1) for every input (A < 0, Δ_t = softplus(·) > 0)",
        step_cost="O(D N + H D) (selective state update and projections)",
        sequence_cost="O(L D N) chunked selective scan; + O(L H D) projections",
    )

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        lr: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.dt_rank = dt_rank
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.dt_init = dt_init
        self.dt_scale = dt_scale
        self.dt_init_floor = dt_init_floor
        check_flag(conv_bias, "conv_bias")
        self.conv_bias = conv_bias
        check_flag(bias, "bias")
        self.bias = bias
        self.lr = lr
        check_positive_int(d_model, "d_model")
        check_positive_int(d_state, "d_state")
        check_positive_int(d_conv, "d_conv")
        check_positive_int(expand, "expand")
        if dt_rank != "auto":
            check_positive_int(dt_rank, "dt_rank (or 'auto')")
        check_dt_range(dt_min, dt_max)
        check_choice(dt_init, DT_INITS, "dt_init")
        _check_positive_float(dt_scale, "dt_scale")
        if isinstance(dt_init_floor, bool) or not isinstance(dt_init_floor, (int, float)) or not (
            math.isfinite(dt_init_floor) and dt_init_floor >= 0
        ):  # 0: no floor (Δ₀ >= dt_min > 0 already), as the official code and Mamba-2 allow
            raise ValueError(f"dt_init_floor must be a finite float >= 0; got {dt_init_floor!r}")
        check_lr(lr)
        device = torch.empty(0, device=device).device  # None -> the default device (skip_init needs a real one)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        self.d_inner = H = expand * d_model
        self.rank = R = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        # sub-modules are built without their own initialisation: reset_parameters draws every value, so a layer
        # built on "meta" and reset equals one built directly from the same seed
        self.in_proj = skip_init(nn.Linear, d_model, 2 * H, bias=bias, **factory)
        self.conv1d = skip_init(ShortConv, H, d_conv, bias=conv_bias, **factory)
        self.x_proj = skip_init(nn.Linear, H, R + 2 * d_state, bias=False, **factory)
        self.dt_proj = skip_init(nn.Linear, R, H, bias=False, **factory)
        register_ssm_parameter(self, "dt_bias", torch.empty(H, **factory), lr)  # b_Δ (the official dt_proj.bias)
        register_ssm_parameter(self, "A_log", torch.empty(H, d_state, **factory), lr)
        self.D = nn.Parameter(torch.empty(H, **factory))
        self.out_proj = skip_init(nn.Linear, H, d_model, bias=bias, **factory)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from the official initialisation (the only re-init path)."""
        self.in_proj.reset_parameters()
        self.conv1d.reset_parameters()
        self.x_proj.reset_parameters()
        std = self.rank**-0.5 * self.dt_scale
        if self.dt_init == "constant":
            self.dt_proj.weight.fill_(std)
        else:
            self.dt_proj.weight.uniform_(-std, std)
        log_dt = torch.rand(self.d_inner, dtype=torch.float64) * (math.log(self.dt_max) - math.log(self.dt_min))
        dt = torch.exp(log_dt + math.log(self.dt_min)).clamp(min=self.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(Δ₀) = Δ₀ + log(1 - e^{-Δ₀})
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float64)).expand(self.d_inner, -1))
        self.D.fill_(1.0)
        self.out_proj.reset_parameters()

    def state_spec(self) -> MambaState:
        """``MambaState(conv (H_in, W-1), ssm (H_in, N))`` in the parameters' dtype."""
        # the conv's own spec (its taps' width): one from d_conv let a replaced, wider conv1d write past the state
        # the C step was given (heap corruption)
        dtype = self.A_log.dtype
        return MambaState(self.conv1d.state_spec(), TensorSpec((self.d_inner, self.d_state), dtype))

    def _scan_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The low-rank δ (..., R), B and C (..., N), and A (H_in, N), from the convolved x (..., H_in). The channels'
        δ = W_Δ δlow is formed by the scan (``delta_proj``; the native kernel fuses it) or by :meth:`_step`."""
        R, N = self.rank, self.d_state
        delta_low, B, C = apply_linear(self.x_proj, x).split([R, N, N], dim=-1)  # (..., R), (..., N), (..., N)
        return delta_low, B, C, -torch.exp(self.A_log)

    def _in_projection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, z = split(W_in u) as one GEMM per half of ``in_proj``'s weight, by row blocks (:mod:`ssmkit.ops.rows`):
        each half comes out contiguous (the kernels read it without a copy) and the backward accumulates the input
        gradient of both halves in place instead of adding two (B, L, d_model) tensors or concatenating two
        (B, L, H_in) halves."""
        return apply_split_linear(self.in_proj, x, (self.d_inner, self.d_inner))  # (B, L, H_in) each

    def _forward(self, x: torch.Tensor, state: MambaState | None, return_state: bool) -> tuple[torch.Tensor, MambaState | None]:
        return self._run(x, state, return_state, self._backend())

    def _forward_irregular(self, u: torch.Tensor, intervals: torch.Tensor, state: MambaState | None,
                           return_state: bool, backend: str) -> tuple[torch.Tensor, MambaState | None]:
        """The sequence at the gaps ``intervals`` (:mod:`ssmkit.layers.irregular`): every step's Δ_t times its gap
        τ_t, h_t = exp(τ_t Δ_t A) h_{t-1} + τ_t Δ_t B_t u_t (Mamba's discretisation with the elapsed time; the short
        convolution stays a convolution over samples)."""
        return self._run(u, state, return_state, backend, intervals)

    def _run(self, x: torch.Tensor, state: MambaState | None, return_state: bool, backend: str,
             intervals: torch.Tensor | None = None) -> tuple[torch.Tensor, MambaState | None]:
        """The forward (module docstring), with each step's Δ scaled by its gap where ``intervals`` (B, L) is given."""
        dtype = self.A_log.dtype
        xs, z = self._in_projection(x.to(dtype))  # (B, L, H_in) each (bf16/fp16 under autocast)
        with float32_core(x.device.type):
            xs, z = xs.to(dtype), z.to(dtype)
            xc, conv_state = self.conv1d(xs, None if state is None else state.conv, return_state, activation="silu")  # (B, L, H_in)
            delta_low, B, C, A = self._scan_inputs(xc)
            bias, softplus = self.dt_bias, True  # b_Δ and the softplus inside the scan
            if intervals is not None:  # Δ_t τ_t formed here: the gap scales the step after the softplus
                delta = F.softplus(self.dt_proj(delta_low) + self.dt_bias) * intervals[..., None].to(dtype)
                delta_proj, bias, softplus = None, None, False
            elif plain_linear(self.dt_proj):  # W_Δ δlow formed inside the scan (the native kernel fuses it)
                delta, delta_proj = delta_low, self.dt_proj.weight
            else:  # a wrapped or hooked dt_proj (LoRA, an activation probe) is called, as _step calls it
                delta, delta_proj = self.dt_proj(delta_low), None
            y, ssm_state = selective_scan(
                xc, delta, A, B, C, self.D, z, bias, softplus,
                None if state is None else state.ssm, return_state, backend=backend, delta_proj=delta_proj,
            )  # (B, L, H_in)
        y = apply_linear(self.out_proj, y).to(x.dtype)  # (B, L, H)
        return y, (MambaState(conv_state, ssm_state) if return_state else None)

    def _step(self, x_t: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """The fused C step (:mod:`ssmkit.ops.native.mamba_step`) where it runs, nothing records a gradient
        (generation), nothing traces (torch.compile, torch.func: the kernel is a plain C call) and the modules it
        stands in for are plain, else the step in PyTorch ops."""
        fusable = all(plain_linear(m) for m in (self.x_proj, self.dt_proj)) and plain_module(self.conv1d, ShortConv)
        if fusable and fused_step_runs(self, "mamba_step", x_t, state, self.A_log):
            return self._step_native(x_t, state)
        return self._step_torch(x_t, state)

    def _step_native(self, x_t: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One step by the C kernel between the projections (no gradients)."""
        from ssmkit.ops.native.mamba_step import mamba_step_native

        dtype = self.A_log.dtype
        xz = self.in_proj(x_t.to(dtype)).to(dtype)  # (B, 2 H_in); bf16 under autocast, cast back
        y, conv_state, ssm_state = mamba_step_native(
            xz, state.conv, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
            self.dt_bias, self.A_log, self.D, state.ssm,
        )  # (B, H_in), (B, H_in, W - 1), (B, H_in, N)
        return self.out_proj(y).to(x_t.dtype), MambaState(conv_state, ssm_state)

    def _step_irregular(self, u_t: torch.Tensor, interval: torch.Tensor,
                        state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One step after the gap ``interval`` (B,): Δ_t τ_t as in :meth:`_forward_irregular`."""
        return self._step_torch(u_t, state, interval)

    def _step_torch(self, x_t: torch.Tensor, state: MambaState,
                    interval: torch.Tensor | None = None) -> tuple[torch.Tensor, MambaState]:
        """One step in PyTorch ops (the reference of the fused step, and the step that records gradients); with
        ``interval`` (B,), Δ times the gap."""
        dtype = self.A_log.dtype
        xs, z = self.in_proj(x_t.to(dtype)).chunk(2, dim=-1)  # (B, H_in) each
        with float32_core(x_t.device.type):
            xs, z = xs.to(dtype), z.to(dtype)
            xc, conv_state = self.conv1d.step(xs, state.conv)  # (B, H_in)
            xc = F.silu(xc)
            delta_low, B, C, A = self._scan_inputs(xc)
            delta = self.dt_proj(delta_low)  # (B, H_in): b_Δ is added inside the step
            if interval is None:
                y, ssm_state = selective_step(xc, delta, A, B, C, self.D, z, self.dt_bias, True, state.ssm)  # (B, H_in)
            else:
                delta = F.softplus(delta + self.dt_bias) * interval[:, None].to(dtype)  # (B, H_in): Δ_t τ_t
                y, ssm_state = selective_step(xc, delta, A, B, C, self.D, z, None, False, state.ssm)  # (B, H_in)
        return self.out_proj(y).to(x_t.dtype), MambaState(conv_state, ssm_state)

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"dt_rank={self.rank}, dt_init={self.dt_init!r}"
        )
