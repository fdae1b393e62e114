"""S4D: "On the Parameterization and Initialization of Diagonal State Space Models", arXiv 2206.11893.

A bank of H independent single-input single-output diagonal SSMs, each with N/2 complex modes that
stand for N/2 conjugate pairs (so the real-equivalent state size is N = ``d_state``):

    λ_n = -exp(a_n) + i b_n                      (Re λ < 0 by construction, §3.2)
    ZOH:      Ā = exp(Δλ),  B̄ = (exp(Δλ) - 1)/λ · B            (§3.1)
    bilinear: Ā = (1 + Δλ/2)/(1 - Δλ/2),  B̄ = Δ B/(1 - Δλ/2)
    x_t = Ā x_{t-1} + B̄ u_t,   y_t = 2 Re(Σ_n C_n x_{t,n}) + D u_t
    K_l = 2 Re Σ_n C_n B̄_n Ā_n^l,   y = K ⊛ u + D u          (eq. 5)

Initialisations (§4): ``lin`` b_n = πn; ``inv`` b_n = (N/π)(N/(2n+1) - 1); ``real`` λ_n = -(n+1);
``legs`` λ and B from the normal part of HiPPO-LegS. Re λ = -½ except for ``real``. B = 1 except
for ``legs`` (B = V*B_HiPPO with Im clipped to ±2, without the ½ that the paper's theory
suggests: we follow the official code). C ~ CN(0, 1) (real and imaginary parts each N(0, ½)),
D ~ N(0, 1), log Δ ~ U[log dt_min, log dt_max] per channel.

Choices (docs/design.md): A, B are per channel (not tied); the imaginary part is stored
untransformed; Δ is stored as log Δ; the ``real`` and ``lin`` inits keep b_0 = 0 exactly
(the official code clamps it to 1e-4, which changes nothing measurable).

Backends: ``"chunked"`` (and ``"auto"``) = the chunked scan; ``"fft"`` = kernel + FFT convolution; ``"reference"``
= the loop. ``kernel(L)`` includes D on tap 0 (y = K ⊛ u exactly). Non-finite inputs spread from the first bad step
(step, reference), from the start of its 64-step chunk (chunked scan) or over the whole sequence (FFT path).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmkit.ops._checks import COMPLEX_OF
from ssmkit.ops.discretize import bilinear, widen, zoh_log
from ssmkit.ops.hippo import s4d_eigenvalues, s4d_input_matrix
from ssmkit.ops.irregular_bank import bank_irregular_scan, bank_irregular_step
from ssmkit.layers.checks import (
    ATTUNED,
    DRAWN,
    MARKS,
    SHAPES,
    FixedOption,
    check_choice,
    check_dt_range,
    check_even_state,
    check_flag,
    check_lr,
    check_positive_int,
    parameter_dtype,
)
from ssmkit.layers.diagonal import DiagonalLTILayer
from ssmkit.layers.init import log_uniform_log_dt
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.irregular import IrregularSampling
from ssmkit.layers.protocol import complex_pairs, float32_core
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry

INITS = ("legs", "inv", "lin", "real")
DISCRETIZATIONS = ("zoh", "bilinear")


@register("s4d")
class S4D(IrregularSampling, DiagonalLTILayer):
    """Diagonal state-space layer (S4D), arXiv 2206.11893.

    Args:
        d_model: H, the number of channels (one SISO system each).
        d_state: N, the real-equivalent state size per channel (N/2 complex conjugate-pair modes); even.
        init: eigenvalue initialisation, one of
            ``"legs"`` -- diagonal (normal) part of HiPPO-LegS (S4D-LegS, the official default);
            ``"inv"`` -- inverse-law imaginary parts (S4D-Inv);
            ``"lin"`` -- linear imaginary parts πn (S4D-Lin);
            ``"real"`` -- real eigenvalues -(n+1) (S4D-Real).
        discretization: ``"zoh"`` (zero-order hold, the default) or ``"bilinear"``.
        dt_min, dt_max: range of the log-uniform initial step size Δ.
        lr: learning rate of Δ, A and B (weight decay 0); ``None`` = the global lr, ``0.0`` = frozen.
        bidirectional: add an anti-causal kernel with its own C (no ``step`` then).
        device, dtype: of the parameters (dtype real: float32 or float64).
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer)
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    init = FixedOption(DRAWN)
    discretization = FixedOption(ATTUNED)
    dt_min = FixedOption(DRAWN)
    dt_max = FixedOption(DRAWN)
    lr = FixedOption(MARKS)
    bidirectional = FixedOption(SHAPES)

    zoo = ZooEntry(
        paper="arXiv 2206.11893",
        structure="diagonal",
        parametrisation="λ = -exp(a) + i b, complex, per channel (N/2 conjugate pairs)",
        discretisation="ZOH (default) or bilinear, learned Δ per channel",
        time_varying=False,
        stable_by_construction=True,
        stability="Hurwitz: Re λ = -exp(a) < 0, so |Ā| < 1 for every Δ > 0",
        step_cost="O(H N)",
        sequence_cost="O(H N L) chunked scan; O(H N L + H L log L) kernel + FFT",
    )

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "legs",
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        lr: float | None = 1e-3,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.init = init
        self.discretization = discretization
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.lr = lr
        check_flag(bidirectional, "bidirectional")
        self.bidirectional = bidirectional
        check_positive_int(d_model, "d_model")
        check_even_state(d_state, "N/2 conjugate pairs")
        check_choice(init, INITS, "init")
        check_choice(discretization, DISCRETIZATIONS, "discretization")
        check_dt_range(dt_min, dt_max)
        check_lr(lr)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        H, M = d_model, d_state // 2
        n_out = 2 if bidirectional else 1
        register_ssm_parameter(self, "log_dt", torch.empty(H, **factory), lr)
        register_ssm_parameter(self, "log_A_real", torch.empty(H, M, **factory), lr)
        register_ssm_parameter(self, "A_imag", torch.empty(H, M, **factory), lr)
        register_ssm_parameter(self, "B", torch.empty(H, M, 2, **factory), lr)
        self.C = nn.Parameter(torch.empty(n_out, H, M, 2, **factory))
        self.D = nn.Parameter(torch.empty(H, **factory))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from the initialisation of the paper (the only re-init path)."""
        H = self.d_model
        Lambda = s4d_eigenvalues(self.init, self.d_state)  # (M,) complex128
        B = s4d_input_matrix(self.init, self.d_state)  # (M,) complex128
        self.log_dt.copy_(log_uniform_log_dt((H,), self.dt_min, self.dt_max))
        self.log_A_real.copy_(torch.log(-Lambda.real).expand(H, -1))
        self.A_imag.copy_(Lambda.imag.expand(H, -1))
        self.B.copy_(torch.view_as_real(B).expand(H, -1, -1))
        self.C.copy_(torch.randn(self.C.shape, dtype=torch.float64) * math.sqrt(0.5))
        self.D.copy_(torch.randn(H, dtype=torch.float64))

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ā (H, M), B̄ (H, M) and 2C (C, H, M), complex, M = N/2: y = Re(Σ 2C x) + D u = 2 Re(Σ C x) + D u."""
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        B = complex_pairs(self.B)  # (H, M)
        if self.discretization == "zoh":  # Λ = -exp(log_A_real) + i A_imag, Δ = exp(log_dt) (in C on the CPU)
            A_bar, B_bar = zoh_log(self.log_A_real, self.A_imag, B, self.log_dt)
        else:
            Lambda = torch.complex(-torch.exp(self.log_A_real), self.A_imag)  # (H, M)
            A_bar, B_bar = bilinear(Lambda, B, torch.exp(self.log_dt).unsqueeze(-1))
        return A_bar, B_bar, 2 * complex_pairs(self.C)  # (H, M), (H, M), (C, H, M)

    def continuous(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Λ (H, M) = -exp(a) + i b and B (H, M), complex, and Δ (H,): the continuous-time system of every channel.
        Complex128/float64 for a float32 layer (:func:`ssmkit.ops.discretize.widen`, as
        :func:`ssmkit.ops.discretize.zoh_log` forms the regular layer's Ā): e^{log Δ} and −e^a rounded to float32 put
        |Δτ Im Λ|·6e-8 into the phase of each irregular step (1.5e-3 rad at a gap of 1e5 periods with Im Λ 100,
        Δ 2.5e-3: the output 1.5e-3 off and the initial state's gradient 3e-2)."""
        self._check_parameter_dtype()
        log_A_real, A_imag, log_dt = (widen(p) for p in (self.log_A_real, self.A_imag, self.log_dt))
        return (torch.complex(-torch.exp(log_A_real), A_imag), complex_pairs(self.B).to(COMPLEX_OF[log_dt.dtype]),
                torch.exp(log_dt))

    def _forward_irregular(self, u, intervals, state, return_state: bool, backend: str):
        """The bank sampled at the gaps ``intervals`` (:mod:`ssmkit.ops.irregular_bank`): (y, final state)."""
        with float32_core(u.device.type):
            Lambda, B, dt = self.continuous()  # (H, M), (H, M), (H,)
            return bank_irregular_scan(u, Lambda, B, 2 * complex_pairs(self.C)[0], dt, intervals, self.D,
                                       self.discretization, state, return_state=return_state, backend=backend)

    def _step_irregular(self, u_t, interval, state):
        """One step after the gap ``interval`` (:func:`ssmkit.ops.irregular_bank.bank_irregular_step`)."""
        with float32_core(u_t.device.type):
            Lambda, B, dt = self.continuous()
            return bank_irregular_step(u_t, Lambda, B, 2 * complex_pairs(self.C)[0], dt, interval, state, self.D,
                                       self.discretization)

    @property
    def n_modes(self) -> int:
        """M = N/2 conjugate-pair modes per channel."""
        return self.d_state // 2

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, init={self.init!r}, "
            f"discretization={self.discretization!r}, bidirectional={self.bidirectional}"
        )
