"""GSS: "Long Range Language Modeling via Gated State Spaces", Mehta et al., arXiv 2206.13947.

A gated block around a bottlenecked diagonal SSM (the paper's pseudocode), with E = d_model, F = expand·E the
gate width and H_s = max(⌈E / bottleneck⌉, 2) the SSM width:

    g = GELU(W_g x)                     F wide      gate branch, no bias
    u = LayerNorm(GELU(W_d x))          H_s wide    bottleneck, no bias; the norm opens the paper's DSS
    s = SSM(u)                          H_s wide    the simplified DSS below
    y = W_o((W_u s) ⊙ g) + b_o          E wide      W_u: H_s → F without bias

The simplified DSS kernel ("GSS settings"): M complex modes λ_n = -exp(a_n) + i exp(b_n) shared by the H_s channels,
a_n, b_n ~ N(0, 1) (random A, imaginary part under exp), B = 1 and Δ = 1 frozen, C_{h,n} complex with real and
imaginary parts ~ N(0, 1), D ~ N(0, 1):

    x_t = e^{λ} ⊙ x_{t-1} + (e^{λ} - 1)/λ · u_t,    s_t = Re(Σ_n C_n x_{t,n}) + D u_t      (ZOH with Δ = 1)
    K_l = Re Σ_n C_n (e^{λ_n} - 1)/λ_n · e^{l λ_n}

It is built on :class:`ssmkit.layers.DiagonalLTILayer` (chunked scan, FFT, reference loop, step). The residual and
the outer norm belong to :class:`ssmkit.models.Block` (``BlockDefaults(None, None)``: no extra activation or GLU).

Choices (docs/design.md, "GSS"): the official S4 repository's recipe for GSS (``S4Block(gate=4, bottleneck=4,
init='diag-rand', dt_min=dt_max=1, lr 0 for dt and B, imag_transform='exp')``) cannot run: the block reads
``self.layer`` before creating it, and its bottleneck projection maps d/b → d/b on a d-wide input. We follow the
paper's pseudocode as lucidrains/gated-state-spaces-pytorch implements it, with these departures: ``d_state`` counts
real-equivalent states as everywhere in ssmkit (M = d_state/2 modes; the paper's N = 512 modes is d_state=1024,
default 64 like every layer); H_s = ⌈E/bottleneck⌉ (so any E works), but at least 2 (a LayerNorm over one channel
outputs its bias alone, which would cut the SSM off its input); Λ gets lr 1e-3 and no weight decay like every
SSM parameter here. The S4 recipe's 'diag-rand' puts Re λ = -½ instead (and draws λ per channel).
"""

from __future__ import annotations

import math
from typing import ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.layers.checks import (
    MARKS,
    SHAPES,
    FixedOption,
    check_even_state,
    check_lr,
    check_positive_int,
    parameter_dtype,
)
from ssmkit.layers.diagonal import DiagonalLTILayer
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.protocol import BlockDefaults, Capabilities, SequenceLayer, complex_pairs
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.ops.discretize import zoh


class GSSDiagonal(DiagonalLTILayer):
    """The simplified DSS of GSS: M modes λ = -exp(a) + i exp(b) shared by all channels, B = 1 and Δ = 1 frozen
    (see the module docstring). Not registered: the SSM inside :class:`GSS`.

    Args:
        d_model: H, the channels (GSS's bottleneck width H_s).
        d_state: N = 2M, the real-equivalent state size per channel (M complex modes, output the real part).
        lr: learning rate of a and b (weight decay 0); None = the global lr, 0.0 = frozen.
        device, dtype: of the parameters (float32 or float64).
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer)
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        lr: float | None = 1e-3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        check_positive_int(d_model, "d_model")
        check_even_state(d_state, "M = N/2 complex modes")
        check_lr(lr)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        H, M = d_model, d_state // 2
        register_ssm_parameter(self, "log_A_real", torch.empty(M, **factory), lr)
        register_ssm_parameter(self, "log_A_imag", torch.empty(M, **factory), lr)
        self.register_buffer("B", torch.empty(H, M, 2, **factory))  # B = 1, frozen (a buffer, never trained)
        self.C = nn.Parameter(torch.empty(1, H, M, 2, **factory))
        self.D = nn.Parameter(torch.empty(H, **factory))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """a, b ~ N(0, 1), B = 1, C real and imaginary parts ~ N(0, 1), D ~ N(0, 1) (lucidrains' reading of the paper)."""
        for name in ("log_A_real", "log_A_imag", "C", "D"):
            tensor = getattr(self, name)
            tensor.copy_(torch.randn(tensor.shape, dtype=torch.float64))
        self.B.copy_(torch.view_as_real(torch.ones(self.B.shape[:-1], dtype=torch.complex128)))

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ā = e^{λ} (H, M), B̄ = (e^{λ} - 1)/λ · B (H, M) and C (1, H, M), complex: ZOH with Δ = 1."""
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        Lambda = torch.complex(-torch.exp(self.log_A_real), torch.exp(self.log_A_imag))  # (M,)
        B = complex_pairs(self.B)  # (H, M)
        dt = torch.ones(self.d_model, 1, dtype=self.D.dtype, device=self.D.device)  # (H, 1): Δ = 1
        A_bar, B_bar = zoh(Lambda.expand_as(B), B, dt)
        return A_bar, B_bar, complex_pairs(self.C)  # (H, M), (H, M), (1, H, M)

    @property
    def n_modes(self) -> int:
        """M = N/2 complex modes per channel."""
        return self.d_state // 2

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}"


@register("gss")
class GSS(SequenceLayer):
    """Gated State Space layer (GSS), arXiv 2206.13947 (see the module docstring for the equations).

    Args:
        d_model: E, the channels in and out.
        d_state: N = 2M, the real-equivalent state size of each SSM channel (M complex modes; the paper's 512 modes
            is d_state=1024).
        expand: F = expand·E, the width of the gate branch (4 in the paper: F = 4096 for E = 1024).
        bottleneck: H_s = max(⌈E/bottleneck⌉, 2), the SSM's width (4 in the paper: H_s = 256 for E = 1024).
        lr: learning rate of λ (weight decay 0); None = the global lr, 0.0 = frozen. B and Δ are always frozen.
        device, dtype: of the parameters (float32 or float64).
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer)
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    expand = FixedOption(SHAPES)
    bottleneck = FixedOption(SHAPES)
    lr = FixedOption(MARKS)

    zoo = ZooEntry(
        paper='arXiv 2206.13947',
        structure='diagonal',
        parametrisation='simplified DSS in a gated block: λ = -exp(a) + i exp(b) shared by the SSM channels, B = 1, Δ = 1 frozen',
        discretisation='e^{λ} (Δ = 1, ZOH-like)',
        time_varying=False,
        stable_by_construction=True,
        stability="Re λ = -exp(a) < 0, so |e^λ| < 1 (the gates multiply the SSM's input and output, not its state)",
        step_cost='O(E F + H_s N) (projections dominate; H_s the bottleneck width, F the gate width)',
        sequence_cost='O(L E F + H_s N L) chunked scan',
    )

    capabilities: ClassVar[Capabilities] = Capabilities(kernel=False, state_space=False, step=True)
    missing: ClassVar[Mapping[str, str]] = {
        "kernel": "its gates make it nonlinear, so its output is not a convolution of its input (its SSM's kernel is "
        "layer.ssm.kernel(L))",
        "state_space": "its gates make it nonlinear (its SSM's realisation is layer.ssm.state_space())",
    }
    backends: ClassVar[tuple[str, ...]] = DiagonalLTILayer.backends
    block_defaults: ClassVar[BlockDefaults] = BlockDefaults(None, None)

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        expand: int = 4,
        bottleneck: int = 4,
        lr: float | None = 1e-3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.expand = expand
        self.bottleneck = bottleneck
        self.lr = lr
        check_positive_int(d_model, "d_model")
        check_positive_int(expand, "expand")
        check_positive_int(bottleneck, "bottleneck")
        device = torch.empty(0, device=device).device  # skip_init needs a concrete device (None = the default)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        E, F_, H_s = d_model, expand * d_model, max(math.ceil(d_model / bottleneck), 2)
        self.ssm = GSSDiagonal(H_s, d_state, lr, **factory)  # draws its own initialisation first
        self.gate = nn.utils.skip_init(nn.Linear, E, F_, bias=False, **factory)
        self.down = nn.utils.skip_init(nn.Linear, E, H_s, bias=False, **factory)
        self.norm = nn.LayerNorm(H_s, **factory)
        self.up = nn.utils.skip_init(nn.Linear, H_s, F_, bias=False, **factory)
        self.out = nn.utils.skip_init(nn.Linear, F_, E, **factory)
        self._reset_projections()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise the SSM (see :class:`GSSDiagonal`), then the projections as ``nn.Linear`` and the norm to the
        identity (the only re-init path; the same draws in the same order as the constructor)."""
        self.ssm.reset_parameters()
        self._reset_projections()

    def _reset_projections(self) -> None:
        for module in (self.gate, self.down, self.norm, self.up, self.out):
            module.reset_parameters()

    def state_spec(self):
        """The SSM's state: (H_s, M) complex64 (complex128 for a float64 layer)."""
        return self.ssm.state_spec()

    def state_device(self) -> torch.device:
        return self.ssm.state_device()

    def _branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gate g = GELU(W_g x) and the SSM input u = LayerNorm(GELU(W_d x)); x is cast to the parameters' dtype
        and the projections run in it, or in autocast's for float32 weights (autocast leaves float64 alone, so a float64
        layer given a float32 x under autocast projects in float64, as outside it)."""
        x = x.to(self.ssm.D.dtype)
        return F.gelu(self.gate(x)), self.norm(F.gelu(self.down(x)))

    def _forward(self, x: torch.Tensor, state: torch.Tensor | None, return_state: bool):
        self._backend()  # the SSM runs under the context's backend
        g, u = self._branches(x)
        s, h = self.ssm(u, state, return_state)  # (B, L, H_s)
        return self.out(self.up(s) * g).to(x.dtype), h

    def _step(self, x_t: torch.Tensor, state: torch.Tensor):
        g, u = self._branches(x_t)
        s, h = self.ssm.step(u, state)  # (B, H_s)
        return self.out(self.up(s) * g).to(x_t.dtype), h

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, expand={self.expand}, bottleneck={self.bottleneck}"
        )
