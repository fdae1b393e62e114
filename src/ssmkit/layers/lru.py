"""LRU: "Resurrecting Recurrent Neural Networks for Long Sequences", Orvieto et al., arXiv 2303.06349.

A linear recurrent unit: one multi-input multi-output diagonal recurrence over all H channels, in discrete time
(no discretisation), with M complex states whose output is the real part (eq. 1, §3, App. A):

    λ_j = exp(-exp(ν_j) + i exp(θ_j))                 (exponential parametrisation, §3.3: |λ_j| < 1 always)
    γ_j = sqrt(1 - |λ_j|²)                            (normalisation, §3.4; trainable, stored as log γ)
    x_t = λ ⊙ x_{t-1} + γ ⊙ (B u_t),   y_t = Re(C x_t) + D ⊙ u_t

Initialisation (App. A; minimal-LRU): |λ|² uniform on [r_min², r_max²] (λ uniform on the ring's area),
ν = log(-½ log(u (r_max² - r_min²) + r_min²)), θ = log(max_phase · u) with u ~ U[0, 1); log γ from the initial λ;
B = B_re + i B_im with B_re, B_im each N(0, 1/(2H)); C = C_re + i C_im with C_re, C_im each N(0, 1/M);
D ~ N(0, 1). Defaults r_min = 0, r_max = 1, max_phase = 6.28 (minimal-LRU; the paper tunes them per task, e.g. a ring
close to 1 and a small phase for long-range tasks).

Choices (docs/design.md): ``d_state`` = 2M, the real-equivalent size of the M complex states (the paper's and
minimal-LRU's ``d_hidden`` = M counts complex states, like DSS's N: its default d_hidden = 128 is ``d_state=256``;
64 by default here, like every ssmkit layer). Stability in floating point: the decay rate exp(ν) is floored at 1e-6
(|λ| ≤ e^{-1e-6} ≈ 1 - 1e-6, a time constant of 10⁶ steps that float32 still tells from 1): without the floor,
exp(ν) < 3e-8 rounds |λ| to exactly 1 in float32 once training pushes ν below -17.3. ν, θ, log γ and B carry their
own learning rate ``lr`` and no weight decay (minimal-LRU: the "ssm" group at half the base lr, 0.5 × 1e-3);
C and D are trained like every layer's C and D. ``bidirectional`` (an ssmkit extension, not in the paper) adds a
backward recurrence with the same λ, γ, B and its own C, as S5 does (:mod:`ssmkit.layers.mimo`).
Backends: ``"chunked"`` (and ``"auto"``) = :func:`ssmkit.ops.mimo.mimo_scan_chunked`; ``"reference"`` = the loop.

Irregular sampling (``forward(..., intervals=)``, ``step(..., interval=)``; :mod:`ssmkit.ops.irregular_discrete`):
the recurrence is read as the unit-step zero-order hold of dx/ds = z ⊙ x + z/(λ − 1) ⊙ γ B u with z = log λ on the
principal branch, z = −max(e^ν, 1e-6) + i arg λ (arg in (−π, π], its cut moved 1e-6 past π: the phase e^θ modulo
2π, :func:`ssmkit.ops.irregular_discrete.principal_angle`), so a gap of τ periods gives
x_t = λ^τ ⊙ x_{t-1} + (λ^τ − 1)/(λ − 1) ⊙ γ B u_t (τ = 1: the layer; the state keeps its coordinates).
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
    check_even_state,
    check_flag,
    check_lr,
    check_positive_int,
    parameter_dtype,
)
from ssmkit.layers.irregular import IrregularSampling
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.mimo import MIMODiagonalLTILayer
from ssmkit.layers.protocol import complex_pairs, float32_core
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.ops._checks import COMPLEX_OF
from ssmkit.ops.discretize import exp_phi, widen
from ssmkit.ops.irregular import irregular_discretize, irregular_ssm_scan, irregular_step
from ssmkit.ops.irregular_discrete import principal_angle

RATE_FLOOR = 1e-6  # smallest decay rate exp(ν): |λ| <= exp(-1e-6) < 1 in float32


@register("lru")
class LRU(IrregularSampling, MIMODiagonalLTILayer):
    """Linear recurrent unit (LRU), arXiv 2303.06349: one MIMO diagonal recurrence over all channels.

    Args:
        d_model: H, the number of channels (inputs and outputs of the one system).
        d_state: 2M, the real-equivalent state size of the M complex states (the paper's d_hidden = M); even.
        r_min, r_max: the initial ring of eigenvalue magnitudes, 0 <= r_min <= r_max <= 1, r_max > 0, r_min < 1.
        max_phase: the initial phases are uniform in [0, max_phase), > 0.
        lr: learning rate of ν, θ, log γ and B (weight decay 0); ``None`` = the global lr, ``0.0`` = frozen.
        bidirectional: add a backward recurrence with its own C (no ``step`` then; not in the paper).
        device, dtype: of the parameters (dtype real: float32 or float64).

    Parameters: ``log_nu``, ``log_theta``, ``log_gamma`` (M,) (the paper's ν, θ and log γ: λ = exp(-exp(ν) +
    i exp(θ))); ``B`` (M, H, 2) as a real pair; ``C`` (C, H, M, 2) as a real pair (C = 2 when bidirectional);
    ``D`` (H,).
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer)
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    r_min = FixedOption(DRAWN)
    r_max = FixedOption(DRAWN)
    max_phase = FixedOption(DRAWN)
    lr = FixedOption(MARKS)
    bidirectional = FixedOption(SHAPES)

    zoo = ZooEntry(
        paper='arXiv 2303.06349',
        structure='diagonal',
        parametrisation='λ = exp(-exp(ν) + i exp(θ)), one MIMO system (B (M, H), C (H, M)); γ = √(1 - |λ|²) input scaling',
        discretisation='none (discrete time)',
        time_varying=False,
        stable_by_construction=True,
        stability='Schur: |λ| = exp(-exp(ν)) < 1 for every ν (rate floored at 1e-6)',
        step_cost='O(H N)',
        sequence_cost='O(L H N) chunked MIMO scan',
    )

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 6.28,
        lr: float | None = 5e-4,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.r_min = r_min
        self.r_max = r_max
        self.max_phase = max_phase
        self.lr = lr
        check_flag(bidirectional, "bidirectional")
        self.bidirectional = bidirectional
        check_positive_int(d_model, "d_model")
        check_even_state(d_state, "2 x the number of complex states, the paper's d_hidden")
        for name, value in (("r_min", r_min), ("r_max", r_max), ("max_phase", max_phase)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite float; got {value!r}")
        if not 0 <= r_min <= r_max <= 1:
            raise ValueError(f"r_min and r_max must satisfy 0 <= r_min <= r_max <= 1; got {r_min}, {r_max}")
        if not (r_max > 0 and r_min < 1):  # |λ| = 0 needs ν = +inf (NaN gradient), |λ| = 1 needs ν = -inf and γ = 0
            raise ValueError(
                f"r_min and r_max must satisfy r_max > 0 and r_min < 1 (a ring of radius 0 or 1 has no finite ν); "
                f"got {r_min}, {r_max}"
            )
        if not max_phase > 0:
            raise ValueError(f"max_phase must be a float > 0 (radians); got {max_phase!r}")
        check_lr(lr)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        H, M = d_model, d_state // 2
        register_ssm_parameter(self, "log_nu", torch.empty(M, **factory), lr)
        register_ssm_parameter(self, "log_theta", torch.empty(M, **factory), lr)
        register_ssm_parameter(self, "log_gamma", torch.empty(M, **factory), lr)
        register_ssm_parameter(self, "B", torch.empty(M, H, 2, **factory), lr)
        self.C = nn.Parameter(torch.empty(2 if bidirectional else 1, H, M, 2, **factory))
        self.D = nn.Parameter(torch.empty(H, **factory))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from the initialisation of the paper's App. A (the only re-init path)."""
        H, M = self.d_model, self.n_modes
        u1 = torch.rand(M, dtype=torch.float64)
        u2 = torch.rand(M, dtype=torch.float64)
        log_nu = torch.log(-0.5 * torch.log(u1 * (self.r_max**2 - self.r_min**2) + self.r_min**2))  # (M,)
        log_theta = torch.log(self.max_phase * u2)  # (M,)
        modulus_sq = torch.exp(-2 * torch.exp(log_nu))  # |λ|² (M,)
        self.log_nu.copy_(log_nu)
        self.log_theta.copy_(log_theta)
        self.log_gamma.copy_(0.5 * torch.log1p(-modulus_sq))  # log sqrt(1 - |λ|²)
        self.B.copy_(torch.randn(M, H, 2, dtype=torch.float64) / math.sqrt(2 * H))
        self.C.copy_(torch.randn(self.C.shape, dtype=torch.float64) / math.sqrt(M))
        self.D.copy_(torch.randn(H, dtype=torch.float64))

    def eigenvalues(self) -> torch.Tensor:
        """λ = exp(-max(exp(ν), 1e-6) + i exp(θ)): (M,) complex, |λ| < 1 for every parameter value.

        Formed in double for a float32 layer and rounded once: a float32 phase exp(θ) is off by up to θ·6e-8, several
        roundings of λ, and a pole near 1 carries λ's error into every later state (|λ| 0.999-0.9999, θ to 6.28,
        L 8 192: the output 6.3e-5 off its float64 value and ∂θ 7.7e-4; formed in double 1.8e-5 and 1.5e-4, the error
        that rounding λ alone leaves).
        """
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        rate = torch.exp(widen(self.log_nu)).clamp(min=RATE_FLOOR)  # (M,)
        Lambda = torch.exp(torch.complex(-rate, torch.exp(widen(self.log_theta))))  # (M,)
        dtype = torch.complex64 if self.log_nu.dtype == torch.float32 else torch.complex128
        return Lambda if Lambda.dtype == dtype else Lambda.to(dtype)

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """λ (M,), γ ⊙ B (M, H) and C (C, H, M), complex: y = Re(C x) + D u."""
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        B_bar = torch.exp(self.log_gamma)[:, None] * complex_pairs(self.B)  # (M, H)
        return self.eigenvalues(), B_bar, complex_pairs(self.C)

    def continuous(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The recurrence as one continuous-time MIMO system in nominal time (a sampling period is 1) in the
        coordinates of its state, whose zero-order hold over a unit step is x_t = λ ⊙ x_{t-1} + γ ⊙ B u_t: eigenvalues
        z = log λ (M,) on the principal branch (module docstring), input matrix z/(λ − 1) ⊙ γ B = γ B/φ(z) (M, H),
        φ(z) = (e^z − 1)/z, and steps Δ = 1 (M,). Complex128/float64 for a float32 layer (as :meth:`eigenvalues`
        forms λ)."""
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        rate = torch.exp(widen(self.log_nu)).clamp(min=RATE_FLOOR)  # (M,)
        z = torch.complex(-rate, principal_angle(torch.exp(widen(self.log_theta))))  # (M,): log λ, |Im z| <= π
        gain = torch.exp(widen(self.log_gamma)) / exp_phi(z)[1]  # (M,): γ/φ(z) = γ z/(λ − 1)
        return z, gain[:, None] * widen(complex_pairs(self.B)), torch.ones_like(rate)  # (M,), (M, H), (M,)

    def _forward_irregular(self, u, intervals, state, return_state: bool, backend: str):
        """The system sampled at the gaps ``intervals`` (:mod:`ssmkit.ops.irregular`, with :meth:`continuous`'s
        z, γ B/φ(z) and Δ = 1; each step's coefficients formed in double: in registers by the C kernel of
        :func:`ssmkit.ops.irregular.irregular_ssm_scan` on the CPU, else as tensors rounded once): (y, final state)."""
        with float32_core(u.device.type):
            z, B_tilde, dt = self.continuous()  # (M,), (M, H), (M,)
            dtype = COMPLEX_OF[self.D.dtype]
            # the C kernel forms each step's coefficients in registers on the CPU; elsewhere (B, L, M) tensors
            return irregular_ssm_scan(u, z, B_tilde.to(dtype), complex_pairs(self.C)[0], dt, intervals, state, self.D,
                                      "zoh", return_state=return_state, backend=backend)

    def _step_irregular(self, u_t, interval, state):
        """One step after the gap ``interval`` (:func:`ssmkit.ops.irregular.irregular_step`)."""
        with float32_core(u_t.device.type):
            z, B_tilde, dt = self.continuous()
            A_bar, gain = irregular_discretize(z, dt, interval, "zoh")  # (B, M) each
            dtype = COMPLEX_OF[self.D.dtype]
            return irregular_step(u_t, A_bar.to(dtype), gain.to(dtype), B_tilde.to(dtype), complex_pairs(self.C)[0],
                                  state, self.D)

    @property
    def n_modes(self) -> int:
        """M = d_state / 2 complex states (the paper's d_hidden)."""
        return self.d_state // 2

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, r_min={self.r_min}, r_max={self.r_max}, "
            f"max_phase={self.max_phase}, bidirectional={self.bidirectional}"
        )
