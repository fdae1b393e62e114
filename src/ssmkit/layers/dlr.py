"""DLR: "Simplifying and Understanding State Space Models with Diagonal Linear RNNs", Gupta, Mehta & Berant,
arXiv 2212.00768.

A bank of H SISO convolutions sharing M complex modes, with no discretisation step: the eigenvalues are learned
directly in discrete time,

    Λ_n = -a_n² + i b_n,   λ_n = e^{Λ_n}   (|λ_n| = e^{-a_n²} ≤ 1 for every real a_n, b_n)
    K_{h,l} = Re Σ_n W_{h,n} λ_n^l,   l = 0 … L-1          (the official kernel: no Δ, no factor 2, no normalisation)
    y = K ⊛ u + D u

Λ (a and b) is one vector per layer, shared by all H channels (unlike S4D/DSS); W ∈ ℂ^{H×M} is the only
per-channel SSM parameter (the input vector is all ones, so W is B∘C folded into one).

Recurrent view (derived here; the official code has only the convolution). Define the complex state s_t ∈ ℂᴹ by

    s_t = λ ⊙ s_{t-1} + 𝟙 u_t,  s_{-1} = 0,      y_t = Re(Σ_n W_{h,n} s_{t,n}) + D_h u_t.

Unrolling, s_t = Σ_{j≥0} λ^j u_{t-j}, so Re(W s_t) = Σ_j (Re Σ_n W_n λ_n^j) u_{t-j} = Σ_j K_j u_{t-j} because u
is real (Re(z u) = Re(z) u): the recurrence reproduces the kernel exactly. It is the diagonal LTI system
Ā = λ, B̄ = 1, C = W with a real-part output, so the chunked scan, the recurrent step and the state-space export of
:class:`ssmkit.layers.DiagonalLTILayer` apply unchanged. No modes are paired: the M modes are all kept and the
output is Re (not 2 Re); the real-equivalent state size is ``d_state`` = 2M (the paper's N counts complex modes,
so its N = 1024 is ``d_state=2048``).

Initialisation (the official ``DLRKernel``): ``"omega"`` -- Λ_n = -Δ_n/2 + i 2πn/M with Δ_n log-uniform in
[dt_min, dt_max] per mode (λ_n = e^{-Δ_n/2} ω^n: damped M-th roots of unity), i.e. a_n = √(Δ_n/2), b_n = 2πn/M;
``"randn"`` -- b_n ~ N(0, 1) mod 2π, a as above. W: real and imaginary parts each N(0, 1)/M; D ~ N(0, 1). Δ only
sets the initial decay (|λ| = e^{-Δ/2}); it is not a parameter.

Optimisation: Λ (a and b) trains with lr 1e-4 and no weight decay, as the official config ``dlr.yaml``. (The
official code meant a to share Λ's lr, but a quirk registers it with the global optimiser lr; its README runs set
both equal.) The official config also gives W lr 1e-4 and no weight decay: ``lr_W=1e-4`` does that; by default W
trains like every other layer's output weights (the global lr and weight decay), so swapping layer names compares
like with like.

Not carried over from the official code: ``max_kernel_length`` (a truncated kernel has no finite state), the
``version`` variants without decay or with real W, ``kernel_to_real`` other than ``"real"`` (``"prod"`` multiplies
two kernels and has no state of M modes), and several output channels (the GELU and output projection live in
:class:`ssmkit.models.Block`). ``bidirectional=True`` adds a second W sharing Λ, as the official code does; its
anti-causal kernel acts from lag -1 (the current input counted once).

Irregular sampling (``forward(..., intervals=)``, ``step(..., interval=)``; not in the paper;
:mod:`ssmkit.ops.irregular_discrete`): the recurrence s_t = λ ⊙ s_{t-1} + 𝟙 u_t is read as the unit-step zero-order
hold of ds/dt = z ⊙ s + z/(λ − 1) u with z = log λ on the principal branch, z = −a² + i arg λ (b modulo 2π into
(−π, π], :func:`ssmkit.ops.irregular_discrete.principal_angle`: the ``"omega"`` init's roots of unity above π turn
backwards, and its mode at b = π, a real negative λ, turns +π in float32 and float64 alike), so a gap of τ periods
gives s_t = λ^τ ⊙ s_{t-1} + (λ^τ − 1)/(λ − 1) u_t (τ = 1: the layer). A mode at λ = 1 exactly (a = 0 and
b ≡ 0 mod 2π: an undamped integrator) is refused with intervals
(:func:`ssmkit.ops.irregular_discrete.check_no_unit_mode`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmkit.layers.checks import (
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
from ssmkit.layers.irregular import IrregularSampling
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.protocol import complex_pairs, float32_core
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.ops.discretize import exp_phi, widen
from ssmkit.ops.irregular_bank import bank_irregular_scan, bank_irregular_step
from ssmkit.ops.irregular_discrete import check_no_unit_mode, principal_angle

INITS = ("omega", "randn")


@register("dlr")
class DLR(IrregularSampling, DiagonalLTILayer):
    """Diagonal linear RNN layer (DLR), arXiv 2212.00768: K_l = Re Σ_n W_n λ_n^l with λ_n = e^{-a_n² + i b_n}.

    Args:
        d_model: H, the number of channels (one SISO system each, all sharing the M eigenvalues).
        d_state: real-equivalent state size 2M for M complex modes (the paper's N counts complex modes: its
            N = 1024 is ``d_state=2048``); even. The default 64 matches S4, S4D and DSS.
        init: imaginary parts of Λ at initialisation, one of
            ``"omega"`` -- b_n = 2πn/M, the M-th roots of unity (the official default);
            ``"randn"`` -- b_n ~ N(0, 1) mod 2π.
        dt_min, dt_max: range of the log-uniform Δ_n that sets the initial decay Re Λ_n = -Δ_n/2.
        lr: learning rate of Λ (a and b; weight decay 0); ``None`` = the global lr, ``0.0`` = frozen.
        lr_W: learning rate of W (weight decay 0); ``None`` (default) = the global lr and weight decay, as every
            layer's C; ``1e-4`` is the official setting.
        bidirectional: add an anti-causal kernel with its own W and the same Λ (no ``step`` then).
        device, dtype: of the parameters (dtype real: float32 or float64).

    Parameters: ``A_sqrt_neg_real`` (M,) = a with Re Λ = -a²; ``A_imag`` (M,) = b; ``W`` (C, H, M, 2) (complex as a
    real pair, C = 2 when bidirectional); ``D`` (H,).
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer)
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    init = FixedOption(DRAWN)
    dt_min = FixedOption(DRAWN)
    dt_max = FixedOption(DRAWN)
    lr = FixedOption(MARKS)
    lr_W = FixedOption(MARKS)
    bidirectional = FixedOption(SHAPES)

    zoo = ZooEntry(
        paper="arXiv 2212.00768",
        structure="diagonal",
        parametrisation="λ = exp(-a² + i b), complex, shared by the channels",
        discretisation="none (discrete time)",
        time_varying=False,
        stable_by_construction=False,
        stability="|λ| = exp(-a²) ≤ 1: non-expansive, marginally stable at a = 0",
        step_cost="O(H N)",
        sequence_cost="O(H N L) chunked scan; O(H N L + H L log L) kernel + FFT",
    )

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "omega",
        dt_min: float = 1e-4,
        dt_max: float = 1e-1,
        lr: float | None = 1e-4,
        lr_W: float | None = None,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.init = init
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.lr = lr
        self.lr_W = lr_W
        check_flag(bidirectional, "bidirectional")
        self.bidirectional = bidirectional
        check_positive_int(d_model, "d_model")
        check_even_state(d_state, "2 x the number of complex modes")
        check_choice(init, INITS, "init")
        check_dt_range(dt_min, dt_max)
        check_lr(lr)
        check_lr(lr_W, "lr_W")
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        H, M = d_model, d_state // 2
        register_ssm_parameter(self, "A_sqrt_neg_real", torch.empty(M, **factory), lr)
        register_ssm_parameter(self, "A_imag", torch.empty(M, **factory), lr)
        W = torch.empty(2 if bidirectional else 1, H, M, 2, **factory)
        if lr_W is None:
            self.W = nn.Parameter(W)
        else:
            register_ssm_parameter(self, "W", W, lr_W)
        self.D = nn.Parameter(torch.empty(H, **factory))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from the official initialisation (the only re-init path)."""
        M = self.n_modes
        dt = torch.exp(log_uniform_log_dt((M,), self.dt_min, self.dt_max))  # (M,) one Δ per mode
        self.A_sqrt_neg_real.copy_(torch.sqrt(dt / 2))  # Re Λ = -a² = -Δ/2
        if self.init == "omega":
            b = 2 * math.pi * torch.arange(M, dtype=torch.float64) / M  # (M,)
        else:
            b = torch.randn(M, dtype=torch.float64)
        self.A_imag.copy_(torch.remainder(b, 2 * math.pi))
        self.W.copy_(torch.randn(self.W.shape, dtype=torch.float64) / M)  # W_scale = 1/M on re and im
        self.D.copy_(torch.randn(self.d_model, dtype=torch.float64))

    def eigenvalues(self) -> torch.Tensor:
        """λ = e^{Λ}, Λ = -a² + i b: (M,) complex, |λ| = e^{-a²} ≤ 1 whatever the parameter values."""
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        return torch.exp(torch.complex(-self.A_sqrt_neg_real.square(), self.A_imag))  # (M,)

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ā = λ (H, M) (the shared modes), B̄ = 1 (H, M) and W (C, H, M), all complex: y = Re(Σ W s) + D u."""
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        A_bar = self.eigenvalues().expand(self.d_model, -1)  # (H, M)
        return A_bar, torch.ones_like(A_bar), complex_pairs(self.W)  # (H, M), (H, M), (C, H, M)

    def continuous(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer as H SISO continuous-time systems in nominal time (a sampling period is 1) in the coordinates of
        its state, whose zero-order hold over a unit step is s_t = λ ⊙ s_{t-1} + 𝟙 u_t: eigenvalues z = log λ =
        −a² + i arg λ (H, M) on the principal branch (module docstring), input vectors z/(λ − 1) = 1/φ(z) (H, M),
        φ(z) = (e^z − 1)/z, and steps Δ = 1 (H,). Complex128/float64 for a float32 layer."""
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        a, b = widen(self.A_sqrt_neg_real), widen(self.A_imag)  # (M,) each
        z = torch.complex(-a.square(), principal_angle(b)).expand(self.d_model, -1)  # (H, M), shared modes
        return z, 1 / exp_phi(z)[1], torch.ones_like(a[:1]).expand(self.d_model)  # (H, M), (H, M), (H,)

    def _irregular_system(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`continuous` (refusing a mode at λ = 1) and the causal W (H, M)."""
        z, B, dt = self.continuous()
        check_no_unit_mode(z, type(self).__name__)
        return z, B, dt, complex_pairs(self.W)[0]

    def _forward_irregular(self, u, intervals, state, return_state: bool, backend: str):
        """The bank sampled at the gaps ``intervals`` (:mod:`ssmkit.ops.irregular_bank`), in the layer's own state
        coordinates (module docstring): (y, final state)."""
        with float32_core(u.device.type):
            z, B, dt, W = self._irregular_system()  # (H, M), (H, M), (H,), (H, M)
            return bank_irregular_scan(u, z, B, W, dt, intervals, self.D, "zoh", state, return_state=return_state,
                                       backend=backend)

    def _step_irregular(self, u_t, interval, state):
        """One step after the gap ``interval`` (:func:`ssmkit.ops.irregular_bank.bank_irregular_step`)."""
        with float32_core(u_t.device.type):
            z, B, dt, W = self._irregular_system()
            return bank_irregular_step(u_t, z, B, W, dt, interval, state, self.D, "zoh")

    @property
    def n_modes(self) -> int:
        """M = d_state / 2 complex modes (shared by all channels)."""
        return self.d_state // 2

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, init={self.init!r}, "
            f"bidirectional={self.bidirectional}"
        )
