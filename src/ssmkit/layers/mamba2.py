"""Mamba-2: "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space
Duality", Dao & Gu, arXiv 2405.21060 (§7, Figure 6: the Mamba-2 block).

The mixer, with E = expand·d_model inner channels in E/P heads of P = ``headdim`` channels and G = ``ngroups``:

    [z, x', B', C', δ] = W_in u                                  (one projection; z, x' ∈ R^E, B', C' ∈ R^{G·N}, δ ∈ R^{E/P})
    [x, B, C] = SiLU(conv_4([x', B', C']))                       (causal depthwise conv, width d_conv)
    Δ = softplus(δ + dt_bias),  A = -exp(A_log)                  (one Δ and one A per head)
    H_t = exp(Δ_t A) H_{t-1} + Δ_t x_t B_tᵀ,  y_t = H_t C_t + D x_t   (the SSD scan, ssmkit.ops.ssd, per head)
    out = W_out(RMSNorm_G(y ⊙ SiLU(z)) · w)                      (gated RMSNorm over G groups of E/G channels)

Defaults and inits follow the official ``Mamba2`` module (state-spaces/mamba, read at e9594ce; see
docs/design.md): d_state 128, d_conv 4, expand 2, headdim 64, ngroups 1; A ~ U[1, 16] per head stored as
A_log = log(-A); Δ₀ = exp(U[log dt_min, log dt_max]) clamped below at dt_init_floor, dt_bias = softplus⁻¹(Δ₀);
D = 1; w = 1; eps 1e-5; no bias on the projections, a bias on the conv (both switchable); the projections and
the conv keep PyTorch's default inits. ``norm_before_gate=True`` gives RMSNorm_G(y)·w ⊙ SiLU(z);
``rmsnorm=False`` gives y ⊙ SiLU(z). Not offered: ``dt_limit`` (the official default (0, ∞) clamps nothing),
``d_ssm`` < E (the extra gated MLP) and variable-length packing.

Departures from the official module: a forward given a state continues from it (the official prefill ignores the
cache and rescans from zero; only its one-token ``step`` reads it), so chunked calls equal one pass; D carries
weight decay like every layer's skip (docs/design.md). The state is ``Mamba2State(conv, ssm)``: the conv's last
d_conv - 1 inputs (B, E + 2GN, d_conv - 1) and the SSM state (B, E/P, P, N).

Backends: ``"chunked"`` runs :func:`ssmkit.ops.ssd.ssd_chunked`, ``"native"`` the C kernel
:func:`ssmkit.ops.native.ssd_native` (CPU), ``"reference"`` the step-by-step :func:`ssmkit.ops.ssd.ssd_reference`;
``"auto"`` takes the C kernel on the CPU where it runs, else the chunked path (the Triton kernel on CUDA for a call
without a gradient: :func:`ssmkit.ops.ssd.ssd`). Under autocast the projections run in bf16/fp16 and everything between them
(conv, SSD scan, gated norm) in the parameters' dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.layers.checks import (
    ATTUNED,
    DRAWN,
    MARKS,
    SHAPES,
    AssignableOption,
    FixedOption,
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
from ssmkit.layers.zoo import ZooEntry
from ssmkit.layers.shortconv import ShortConv
from ssmkit.layers.state import TensorSpec, exportable_state
from ssmkit.ops.gated_norm import gated_rmsnorm
from ssmkit.ops.rows import apply_linear, apply_split_linear, plain_module
from ssmkit.ops.ssd import ssd, ssd_step


@exportable_state
class Mamba2State(NamedTuple):
    """The state of a Mamba-2 layer: the short conv's input history and the SSD state of every head.

    Attributes:
        conv: (B, E + 2GN, d_conv - 1) the last d_conv - 1 inputs of the conv, oldest first.
        ssm: (B, E/P, P, N) the state H of every head.
    """

    conv: torch.Tensor
    ssm: torch.Tensor


class GatedRMSNorm(nn.RMSNorm):
    """Grouped RMSNorm with a SiLU gate: RMSNorm_G(y ⊙ SiLU(z)) · w, or RMSNorm_G(y) · w ⊙ SiLU(z) before the gate.

    RMSNorm_G(v) divides each of G groups of E/G channels by √(mean of its squares + eps) (arXiv 2405.21060 §7;
    the grouping keeps the norm local to a tensor-parallel shard). A subclass of ``nn.RMSNorm``, so optimizer
    grouping treats its weight as a norm weight (no weight decay).

    Args:
        channels: E, the channels normalised.
        groups: G, dividing E.
        norm_before_gate: normalise y first, then gate (False: gate, then normalise -- the official default).
        eps: added to the mean square.
        device, dtype: of the weight w (initialised to 1).
    """

    # fixed at construction (checks.FixedOption), as nn.RMSNorm's own options
    channels = FixedOption(SHAPES)
    groups = FixedOption(SHAPES)
    norm_before_gate = FixedOption(ATTUNED)
    normalized_shape = FixedOption(SHAPES)
    eps = FixedOption(ATTUNED)
    elementwise_affine = FixedOption(SHAPES)

    def __init__(
        self,
        channels: int,
        groups: int,
        norm_before_gate: bool,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, eps=eps, elementwise_affine=True, device=device, dtype=dtype)
        self.channels = channels
        self.groups = groups
        self.norm_before_gate = norm_before_gate

    def forward(
        self, y: torch.Tensor, z: torch.Tensor, x: torch.Tensor | None = None, D: torch.Tensor | None = None
    ) -> torch.Tensor:
        """y, z (..., E) -> (..., E) gated and normalised; with x (..., E) and D (E,), of y + D ⊙ x (the mixer's skip).

        By :func:`ssmkit.ops.gated_norm.gated_rmsnorm`: the C kernel on the CPU where it runs (one pass over each row),
        else PyTorch ops; both scale each group by a power of two before squaring (see there), so groups beyond
        float32's square root are normalised too."""
        return gated_rmsnorm(y, z, self.weight, self.groups, self.eps, self.norm_before_gate, x, D)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}, norm_before_gate={self.norm_before_gate}, eps={self.eps}"


def _unfilled(module: nn.Module, device: torch.device | str | None) -> nn.Module:
    """``module`` (built on the meta device, so its constructor drew no random numbers) moved to ``device``,
    uninitialised: the owner's ``reset_parameters`` draws every value, in one order, whatever the device."""
    return module.to_empty(device=device if device is not None else torch.empty(0).device)


@register("mamba2")
class Mamba2(IrregularSampling, SequenceLayer):
    """Mamba-2 mixer (SSD with a scalar decay per head, gates, short conv and projections), arXiv 2405.21060.

    Args:
        d_model: H, the input and output channels.
        d_state: N, the state size per head (the length of B_t and C_t).
        d_conv: taps of the causal depthwise conv over [x, B, C].
        expand: E = expand·d_model inner channels.
        headdim: P, channels per head; must divide E (E/P heads).
        ngroups: G, groups of heads sharing B and C (and the groups of the gated RMSNorm); must divide E/P.
        A_init_range: (low, high) of the uniform draw of -A per head, 0 < low <= high (a tuple, or a list as JSON
            and YAML configurations hold it).
        dt_min, dt_max: range of the log-uniform initial Δ.
        dt_init_floor: smallest initial Δ (Δ₀ is clamped to at least this).
        chunk_size: T, the steps per chunk of the chunked SSD algorithm (speed only; results equal within rounding).
            64, not the official 256 (a tile size of its CUDA kernels): on the CPU 64 runs a Mamba-2 layer 1.5x
            faster, forward and forward+backward, with a quarter of the decay masks' memory; the Triton kernel runs
            any chunk as a tile of at most 64. The one option that may be assigned after construction
            (``layer.chunk_size = 128``, checked as here); every other is fixed (``AttributeError``).
        rmsnorm: apply the gated RMSNorm (False: out = W_out(y ⊙ SiLU(z))).
        norm_before_gate: RMSNorm_G(y)·w ⊙ SiLU(z) instead of RMSNorm_G(y ⊙ SiLU(z))·w.
        D_has_hdim: one skip D per channel (E values) instead of one per head.
        bias: biases on the in and out projections.
        conv_bias: a bias on the conv.
        lr: learning rate of A_log and dt_bias (weight decay 0); None = the global lr (the official setting),
            0.0 = frozen.
        device, dtype: of the parameters (float32 or float64).
    """

    # the constructor options and the sizes derived from them (nheads, d_inner), fixed at construction
    # (checks.FixedOption: assigned later, each was ignored, half-applied or broke the layer); chunk_size alone
    # stays assignable (checks.AssignableOption): speed only, read by each forward and by nothing cached
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    d_conv = FixedOption(SHAPES)
    expand = FixedOption(SHAPES)
    headdim = FixedOption(SHAPES)
    ngroups = FixedOption(SHAPES)
    A_init_range = FixedOption(DRAWN)
    dt_min = FixedOption(DRAWN)
    dt_max = FixedOption(DRAWN)
    dt_init_floor = FixedOption(DRAWN)
    chunk_size = AssignableOption(check_positive_int)
    rmsnorm = FixedOption(SHAPES)
    norm_before_gate = FixedOption(ATTUNED)
    D_has_hdim = FixedOption(SHAPES)
    bias = FixedOption(SHAPES)
    conv_bias = FixedOption(SHAPES)
    lr = FixedOption(MARKS)
    nheads = FixedOption(SHAPES)
    d_inner = FixedOption(SHAPES)

    capabilities = Capabilities(kernel=False, state_space=False, step=True)
    missing = {
        "kernel": "Δ, B and C depend on the input (a selective SSM), so no fixed convolution kernel exists",
        "state_space": "Δ, B and C depend on the input (a selective SSM), so it has no linear time-invariant realisation",
    }
    backends = ("reference", "chunked", "native")
    block_defaults = BlockDefaults(activation=None, mixer_out=None)
    zoo = ZooEntry(
        paper="arXiv 2405.21060",
        structure="scalar",
        parametrisation="A = -exp(A_log) per head (Ā_t = exp(Δ_t A) I); Δ_t, B_t, C_t from the input",
        discretisation="ZOH for A, Euler (Δ_t B_t) for B",
        time_varying=True,
        stable_by_construction=True,
        stability="exp(Δ_t A) ∈ (0, 1) for every input (A < 0, Δ_t = softplus(·) > 0)",
        step_cost="O(E N + H E) (SSM update and projections)",
        sequence_cost="O(L E N + L E T) chunked SSD, chunk T; + O(L H E) projections",
    )

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 64,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        D_has_hdim: bool = False,
        bias: bool = False,
        conv_bias: bool = True,
        lr: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.headdim = headdim
        self.ngroups = ngroups
        # a list (a pair read from JSON or YAML) kept as a tuple; assigned once (a FixedOption), checked below
        self.A_init_range = tuple(A_init_range) if isinstance(A_init_range, list) else A_init_range
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.dt_init_floor = dt_init_floor
        self.chunk_size = chunk_size
        self.rmsnorm = rmsnorm
        self.norm_before_gate = norm_before_gate
        self.D_has_hdim = D_has_hdim
        self.bias = bias
        self.conv_bias = conv_bias
        self.lr = lr
        for name in ("d_model", "d_state", "d_conv", "expand", "headdim", "ngroups"):  # chunk_size: checked when set
            check_positive_int(getattr(self, name), name)
        for name in ("rmsnorm", "norm_before_gate", "D_has_hdim", "bias", "conv_bias"):
            check_flag(getattr(self, name), name)
        check_dt_range(dt_min, dt_max)
        if isinstance(dt_init_floor, bool) or not isinstance(dt_init_floor, (int, float)) or not (
            math.isfinite(dt_init_floor) and dt_init_floor >= 0
        ):
            raise ValueError(f"dt_init_floor must be a finite float >= 0; got {dt_init_floor!r}")
        if not (
            isinstance(A_init_range, (tuple, list)) and len(A_init_range) == 2  # a list: the pair read from JSON or YAML
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in A_init_range)
            and 0 < A_init_range[0] <= A_init_range[1]
        ):
            raise ValueError(f"A_init_range must be a tuple or list (low, high) with 0 < low <= high; got {A_init_range!r}")
        check_lr(lr)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        E = expand * d_model
        if E % headdim:
            raise ValueError(
                f"headdim must divide expand·d_model = {expand}·{d_model} = {E} (the inner channels split into "
                f"heads); got headdim={headdim}"
            )
        self.nheads = E // headdim
        if self.nheads % ngroups:
            raise ValueError(f"ngroups must divide the {self.nheads} heads (expand·d_model/headdim); got ngroups={ngroups}")
        self.d_inner = E
        G, N, nh = ngroups, d_state, self.nheads
        meta = {"device": "meta", "dtype": factory["dtype"]}
        self.in_proj = _unfilled(nn.Linear(d_model, 2 * E + 2 * G * N + nh, bias=bias, **meta), device)
        self.conv = _unfilled(ShortConv(E + 2 * G * N, d_conv, bias=conv_bias, **meta), device)
        register_ssm_parameter(self, "dt_bias", torch.empty(nh, **factory), lr)
        register_ssm_parameter(self, "A_log", torch.empty(nh, **factory), lr)
        self.D = nn.Parameter(torch.empty(E if D_has_hdim else nh, **factory))
        # no norm: a sub-module slot holding None, not a plain None attribute
        self.register_module("norm", GatedRMSNorm(E, G, norm_before_gate, **factory) if rmsnorm else None)
        self.out_proj = _unfilled(nn.Linear(E, d_model, bias=bias, **meta), device)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from the official initialisation (the only re-init path)."""
        self.in_proj.reset_parameters()
        self.conv.reset_parameters()
        nh = self.nheads
        low, high = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand(nh, dtype=torch.float64) * (high - low) + low).clamp(min=self.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(Δ₀)
        A = torch.empty(nh, dtype=torch.float64).uniform_(*self.A_init_range)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)
        if self.norm is not None:
            self.norm.reset_parameters()
        self.out_proj.reset_parameters()

    def state_spec(self) -> Mamba2State:
        """Mamba2State(conv (E + 2GN, d_conv - 1), ssm (E/P, P, N)) in the parameters' dtype."""
        return Mamba2State(
            self.conv.state_spec(),
            TensorSpec((self.nheads, self.headdim, self.d_state), self.A_log.dtype),
        )

    # ------------------------------------------------------------------------------------------------------------

    def _split(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., 2E + 2GN + E/P) -> z (..., E), [x', B', C'] (..., E + 2GN), δ (..., E/P)."""
        E = self.d_inner
        return zxbcdt.split([E, E + 2 * self.ngroups * self.d_state, self.nheads], dim=-1)

    def _gate_and_norm(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y (..., E/P, P) + D x, then the gated RMSNorm (or the bare gate) with z (..., E): (..., E). With the norm,
        the skip goes into it (one pass over each row by the C kernel, ssmkit.ops.gated_norm).

        x is (..., E), the conv's output as split, not the scan's (..., E/P, P) view flattened back: torch 2.11 gave
        that flatten of a transposed conv output (a dynamic-L export) the stride min(L, 2L), and its elementwise ops'
        stride guards on it failed the export (GPU versions check of 2026-12-05)."""
        if self.norm is not None:
            D = self.D if self.D_has_hdim else self.D.unsqueeze(-1).expand(self.nheads, self.headdim).reshape(-1)  # (E,)
            return self.norm(y.flatten(-2), z, x, D)
        D = self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D.unsqueeze(-1)  # (E/P, P) or (E/P, 1)
        y = (y + D * x.unflatten(-1, (self.nheads, self.headdim))).flatten(-2)  # (..., E)
        return y * F.silu(z)

    def _forward(self, x, state, return_state):
        return self._run(x, state, return_state, self._backend())

    def _forward_irregular(self, u, intervals, state, return_state, backend):
        """The sequence at the gaps ``intervals`` (:mod:`ssmkit.layers.irregular`): every step's Δ_t times its gap
        τ_t, H_t = exp(τ_t Δ_t A) H_{t-1} + τ_t Δ_t x_t B_tᵀ (the SSD discretisation with the elapsed time; the short
        convolution stays a convolution over samples)."""
        return self._run(u, state, return_state, backend, intervals)

    def _run(self, x, state, return_state, backend, intervals=None):
        """The forward (module docstring), with each step's Δ scaled by its gap where ``intervals`` (B, L) is given."""
        dtype = self.A_log.dtype
        Bsz, L, _ = x.shape
        E = self.d_inner
        pieces = apply_split_linear(self.in_proj, x.to(dtype), (E, E + 2 * self.ngroups * self.d_state, self.nheads))
        with float32_core(x.device.type):  # z (B, L, E), [x', B', C'] (B, L, E + 2GN), δ (B, L, E/P); bf16 in autocast
            z, xBC, dt = (t.to(dtype) for t in pieces)
            xBC, conv_state = self.conv(xBC, None if state is None else state.conv, return_state, activation="silu")
            x_flat, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
            xs = x_flat.unflatten(-1, (self.nheads, self.headdim))  # (B, L, E/P, P)
            dt = F.softplus(dt + self.dt_bias)  # (B, L, E/P)
            if intervals is not None:
                dt = dt * intervals[..., None].to(dtype)  # Δ_t τ_t
            A = -torch.exp(self.A_log)  # (E/P,)
            y, ssm_state = ssd(
                xs, dt, A,
                B.unflatten(-1, (self.ngroups, self.d_state)),  # (B, L, G, N)
                C.unflatten(-1, (self.ngroups, self.d_state)),  # (B, L, G, N)
                None if state is None else state.ssm,
                chunk_size=self.chunk_size,
                backend=backend,  # "auto": the C kernel on the CPU, Triton on CUDA without a gradient, else chunked (ops.ssd)
            )  # (B, L, E/P, P), (B, E/P, P, N)
            y = self._gate_and_norm(y, x_flat, z)  # (B, L, E)
        out = apply_linear(self.out_proj, y).to(x.dtype)  # (B, L, H)
        return out, (Mamba2State(conv_state, ssm_state) if return_state else None)

    def _step(self, x_t, state):
        """The fused C step (:mod:`ssmkit.ops.native.mamba2_step`) where it runs, nothing records a gradient
        (generation), nothing traces (torch.compile, torch.func: the kernel is a plain C call) and the conv and norm it
        stands in for are plain (no subclass, no hooks), else the step in PyTorch ops."""
        fusable = plain_module(self.conv, ShortConv) and (self.norm is None or plain_module(self.norm, GatedRMSNorm))
        if fusable and fused_step_runs(self, "mamba2_step", x_t, state, self.A_log):
            return self._step_native(x_t, state)
        return self._step_torch(x_t, state)

    def _step_native(self, x_t, state):
        """One step by the C kernel between the projections (no gradients)."""
        from ssmkit.ops.native.mamba2_step import mamba2_step_native

        dtype = self.A_log.dtype
        zxbcdt = self.in_proj(x_t.to(dtype)).to(dtype)  # (B, 2E + 2GN + E/P); bf16 under autocast, cast back
        norm = self.norm
        y, conv_state, ssm_state = mamba2_step_native(
            zxbcdt, state.conv, self.conv.weight, self.conv.bias, self.dt_bias, self.A_log, self.D,
            None if norm is None else norm.weight, 0.0 if norm is None else norm.eps,
            self.norm_before_gate if norm is None else norm.norm_before_gate, state.ssm, self.ngroups,
        )  # (B, E), (B, E + 2GN, d_conv - 1), (B, E/P, P, N)
        return self.out_proj(y).to(x_t.dtype), Mamba2State(conv_state, ssm_state)

    def _step_irregular(self, u_t, interval, state):
        """One step after the gap ``interval`` (B,): Δ_t τ_t as in :meth:`_forward_irregular`."""
        return self._step_torch(u_t, state, interval)

    def _step_torch(self, x_t, state, interval=None):
        """One step in PyTorch ops (the reference of the fused step, and the step that records gradients); with
        ``interval`` (B,), Δ times the gap."""
        dtype = self.A_log.dtype
        zxbcdt = self.in_proj(x_t.to(dtype))  # (B, 2E + 2GN + E/P)
        with float32_core(x_t.device.type):
            z, xBC, dt = self._split(zxbcdt.to(dtype))
            xBC, conv_state = self.conv.step(xBC, state.conv)  # (B, E + 2GN)
            x_flat, B, C = F.silu(xBC).split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state],
                                             -1)
            xs = x_flat.unflatten(-1, (self.nheads, self.headdim))  # (B, E/P, P)
            dt = F.softplus(dt + self.dt_bias)  # (B, E/P)
            if interval is not None:
                dt = dt * interval[:, None].to(dtype)  # Δ_t τ_t
            y, ssm_state = ssd_step(
                xs, dt, -torch.exp(self.A_log),
                B.unflatten(-1, (self.ngroups, self.d_state)),  # (B, G, N)
                C.unflatten(-1, (self.ngroups, self.d_state)),  # (B, G, N)
                state.ssm,
            )  # (B, E/P, P), (B, E/P, P, N)
            y = self._gate_and_norm(y, x_flat, z)  # (B, E)
        return self.out_proj(y).to(x_t.dtype), Mamba2State(conv_state, ssm_state)

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"headdim={self.headdim}, ngroups={self.ngroups}, nheads={self.nheads}, chunk_size={self.chunk_size}, "
            f"rmsnorm={self.rmsnorm}, norm_before_gate={self.norm_before_gate}, D_has_hdim={self.D_has_hdim}"
        )
