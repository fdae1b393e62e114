"""S5: "Simplified State Space Layers for Sequence Modeling", Smith, Warrington, Linderman, arXiv 2208.04933.

One multi-input multi-output diagonal SSM shared by all H channels (§3), with P states (M = P/2 complex modes that
stand for conjugate pairs, so the real-equivalent state size is P = ``d_state``):

    Λ = Λ_re + i Λ_im (diagonal),  B̃ = V⁻¹ B (M, H),  C̃ = C V (H, M),  Δ (M,) one step per state
    ZOH:      Λ̄ = exp(ΛΔ),  B̄ = Λ⁻¹(Λ̄ − 1) B̃                              (eq. 6)
    bilinear: Λ̄ = (1 − ΔΛ/2)⁻¹(1 + ΔΛ/2),  B̄ = (1 − ΔΛ/2)⁻¹ Δ B̃
    x_t = Λ̄ ⊙ x_{t-1} + B̄ u_t,   y_t = 2 Re(C̃ x_t) + D ⊙ u_t             (eq. 2-3, conjugate symmetry §3.2)

Initialisation (§4.3, App. B.1.1; details checked against the official code): Λ and V are the eigenvalues and
eigenvectors of the normal part of HiPPO-LegS on blocks of size P/J, repeated on the block diagonal J times
(Re Λ = -½; the Im Λ < 0 half of each conjugate pair is kept); V⁻¹ = V* (V is unitary). B (P, H) real is a
truncated normal with variance 1/P (JAX ``lecun_normal`` counts the state axis as fan-in), B̃ = V* B. C init:
``"trunc_standard_normal"`` (default) each row of the complex C (H, P) truncated-normal with variance 1/P for its
real and its imaginary part, C̃ = C V; ``"lecun_normal"`` the same with variance 1/(P·H); ``"complex_normal"`` C̃
itself with real and imaginary parts N(0, ½) (no V). D ~ N(0, 1); log Δ ~ U[log dt_min, log dt_max] per mode.

Options: ``clip_eigs`` clips Re Λ at -1e-4 in every forward (Λ stays in the left half-plane, Re Λ̄ < 1);
``step_rescale`` multiplies every Δ (run a layer trained at one sampling rate at another: a signal sampled twice as
densely takes ``step_rescale=0.5``; build a second layer with the option and ``load_state_dict`` the first one's
weights); ``bidirectional`` adds a backward scan with the same Λ̄, B̄ and its own C̃ (both scans include the current
input, as the official code; see :mod:`ssmkit.layers.mimo`); ``conj_sym=False`` keeps all the eigenvalues of the
blocks (M = P/2 complex modes again, from blocks of size P/(2J), output Re(C̃ x)).

Choices (docs/design.md): ``d_state`` = P, the real-equivalent state size (the official ``ssm_size_base``; 64 by
default like every ssmkit layer, where the official code defaults to 256 with J = 8); Λ, B̃ and Δ carry their own
learning rate ``lr`` (the official ``ssm_lr``, 1e-3) and no weight decay; C̃ and D are trained like every layer's C
and D (global lr and weight decay, as the official "standard" optimiser setting).
Backends: ``"chunked"`` (and ``"auto"``) = :func:`ssmkit.ops.mimo.mimo_scan_chunked`; ``"reference"`` = the loop.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmkit.layers.checks import (
    ATTUNED,
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
from ssmkit.layers.init import lecun_normal, log_uniform_log_dt
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.mimo import MIMODiagonalLTILayer
from ssmkit.layers.irregular import IrregularSampling
from ssmkit.layers.protocol import complex_pairs, float32_core
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.ops.discretize import bilinear, widen, zoh
from ssmkit.ops.hippo import s5_eigen
from ssmkit.ops.irregular import irregular_discretize, irregular_ssm_scan, irregular_step

C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")
DISCRETIZATIONS = ("zoh", "bilinear")
_CLIP = -1e-4  # the official bound on Re Λ with clip_eigs


@register("s5")
class S5(IrregularSampling, MIMODiagonalLTILayer):
    """Simplified state space layer (S5), arXiv 2208.04933: one MIMO diagonal SSM over all channels.

    Args:
        d_model: H, the number of channels (inputs and outputs of the one system).
        d_state: P, the real-equivalent state size (M = P/2 complex modes); a multiple of 2·blocks
            (of 4·blocks with ``conj_sym=False``).
        blocks: J, the number of HiPPO-LegS blocks of the initial Λ and V (the official default 8).
        discretization: ``"zoh"`` (zero-order hold, the default) or ``"bilinear"``.
        C_init: ``"trunc_standard_normal"`` (default), ``"lecun_normal"`` or ``"complex_normal"`` (module docstring).
        dt_min, dt_max: range of the log-uniform initial step sizes Δ (one per mode).
        conj_sym: keep one mode per conjugate pair (output 2 Re(C̃ x), the default) or all eigenvalues (Re(C̃ x)).
        clip_eigs: clip Re Λ at -1e-4 in the forward.
        step_rescale: factor on every Δ (evaluate at another sampling rate), > 0.
        lr: learning rate of Λ, B̃ and Δ (weight decay 0); ``None`` = the global lr, ``0.0`` = frozen.
        bidirectional: add a backward scan with its own C̃ (no ``step`` then).
        device, dtype: of the parameters (dtype real: float32 or float64).

    Parameters: ``A_real`` = Re Λ, ``A_imag`` = Im Λ, ``log_dt`` (M,); ``B`` (M, H, 2) = B̃ as a real pair;
    ``C`` (C, H, M, 2) = C̃ as a real pair (C = 2 when bidirectional); ``D`` (H,).
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer); for another sampling rate, build a layer with that step_rescale and
    # load_state_dict the weights
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    blocks = FixedOption(DRAWN)
    discretization = FixedOption(ATTUNED)
    C_init = FixedOption(DRAWN)
    dt_min = FixedOption(DRAWN)
    dt_max = FixedOption(DRAWN)
    conj_sym = FixedOption(ATTUNED)
    clip_eigs = FixedOption(ATTUNED)
    step_rescale = FixedOption(ATTUNED)
    lr = FixedOption(MARKS)
    bidirectional = FixedOption(SHAPES)

    zoo = ZooEntry(
        paper='arXiv 2208.04933',
        structure='diagonal',
        parametrisation='Λ complex diagonal, one MIMO system shared by the H channels (B̃ (M, H), C̃ (H, M)); Re Λ stored as is',
        discretisation='ZOH (default) or bilinear, learned Δ per state',
        time_varying=False,
        stable_by_construction=False,
        stability='Hurwitz only with clip_eigs=True (Re Λ ≤ -1e-4); by default Re Λ is unconstrained',
        step_cost='O(H N)',
        sequence_cost='O(L H N) chunked MIMO scan',
    )

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        blocks: int = 8,
        discretization: str = "zoh",
        C_init: str = "trunc_standard_normal",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        conj_sym: bool = True,
        clip_eigs: bool = False,
        step_rescale: float = 1.0,
        lr: float | None = 1e-3,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.blocks = blocks
        self.discretization = discretization
        self.C_init = C_init
        self.dt_min = dt_min
        self.dt_max = dt_max
        check_flag(conj_sym, "conj_sym")
        self.conj_sym = conj_sym
        check_flag(clip_eigs, "clip_eigs")
        self.clip_eigs = clip_eigs
        self.step_rescale = step_rescale
        self.lr = lr
        check_flag(bidirectional, "bidirectional")
        self.bidirectional = bidirectional
        check_positive_int(d_model, "d_model")
        check_positive_int(blocks, "blocks")
        multiple = 2 * blocks if conj_sym else 4 * blocks
        if isinstance(d_state, bool) or not isinstance(d_state, int) or d_state < 1 or d_state % multiple:
            raise ValueError(
                f"d_state must be a positive multiple of {multiple} ({'2' if conj_sym else '4'}·blocks with "
                f"blocks={blocks}, conj_sym={conj_sym}: even HiPPO blocks); got {d_state!r}"
            )
        check_choice(discretization, DISCRETIZATIONS, "discretization")
        check_choice(C_init, C_INITS, "C_init")
        check_dt_range(dt_min, dt_max)
        if isinstance(step_rescale, bool) or not isinstance(step_rescale, (int, float)) or not (
            math.isfinite(step_rescale) and step_rescale > 0
        ):
            raise ValueError(f"step_rescale must be a finite float > 0; got {step_rescale!r}")
        check_lr(lr)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        H, M = d_model, d_state // 2
        register_ssm_parameter(self, "A_real", torch.empty(M, **factory), lr)
        register_ssm_parameter(self, "A_imag", torch.empty(M, **factory), lr)
        register_ssm_parameter(self, "B", torch.empty(M, H, 2, **factory), lr)
        register_ssm_parameter(self, "log_dt", torch.empty(M, **factory), lr)
        self.C = nn.Parameter(torch.empty(2 if bidirectional else 1, H, M, 2, **factory))
        self.D = nn.Parameter(torch.empty(H, **factory))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from the initialisation of the paper and the official code (the only re-init path)."""
        H, M = self.d_model, self.n_modes
        P = 2 * M if self.conj_sym else M  # the official (un-halved) P that B and C are drawn with
        Lambda, V = s5_eigen(P, self.blocks, self.conj_sym)  # (M,), (P, M)
        self.A_real.copy_(Lambda.real)
        self.A_imag.copy_(Lambda.imag)
        B_tilde = V.conj().T @ lecun_normal((P, H), fan_in=P).to(V.dtype)  # (M, P) @ (P, H) -> (M, H)
        self.B.copy_(torch.view_as_real(B_tilde))
        for c in range(self.C.shape[0]):
            if self.C_init == "complex_normal":
                self.C[c].copy_(torch.randn(H, M, 2, dtype=torch.float64) * math.sqrt(0.5))
                continue
            fan_in = P if self.C_init == "trunc_standard_normal" else P * H
            C = torch.view_as_complex(lecun_normal((H, P, 2), fan_in=fan_in))  # (H, P)
            self.C[c].copy_(torch.view_as_real(C @ V))  # (H, M)
        self.D.copy_(torch.randn(H, dtype=torch.float64))
        self.log_dt.copy_(log_uniform_log_dt((M,), self.dt_min, self.dt_max))

    def continuous(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Λ (M,) complex (Re clipped at -1e-4 with ``clip_eigs``), B̃ (M, H) complex and Δ (M,) (with ``step_rescale``)."""
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        return self._continuous(lambda t: t)

    def _continuous(self, cast) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Λ (M,), B̃ (M, H), Δ (M,) as :meth:`continuous`, each parameter read through ``cast`` first."""
        re = self.A_real.clamp(max=_CLIP) if self.clip_eigs else self.A_real
        Lambda = torch.complex(cast(re), cast(self.A_imag))  # (M,)
        return Lambda, cast(complex_pairs(self.B)), self.step_rescale * torch.exp(cast(self.log_dt))

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Λ̄ (M,), B̄ (M, H) and the output matrices (C, H, M), complex: 2C̃ with ``conj_sym`` (y = 2 Re(C̃ x) + D u).

        Λ̄ = f(ΔΛ), B̄ = Δ g(ΔΛ) B̃ with f, g the rule's (module docstring), formed in double for a float32 layer and
        rounded once: e^{ΔΛ} turns an absolute error of ΔΛ into a relative one of Λ̄, and a float32 Δ or ΔΛ is off by
        |Im ΔΛ|·6e-8 (the zero-order hold of :mod:`ssmkit.ops.discretize` does the same).
        """
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        Lambda, B_tilde, dt = self._continuous(widen)  # (M,), (M, H), (M,): complex128 / float64 for a float32 layer
        rule = zoh if self.discretization == "zoh" else bilinear
        # One row of M systems with a unit step: z = ΔΛ and B = Δ give the rules' Ā = f(ΔΛ), B̄ = Δ·g(ΔΛ) exactly.
        # (A column (M, 1) with dt (M, 1) is the same math, but inductor's backward of it viewed a complex gradient
        # of stride (1, M) as real and failed: torch.compile of an S5 training step with zoh.)
        z, step_gain = (dt * Lambda)[None, :], dt.to(Lambda.dtype)[None, :]  # (1, M) each
        A_bar, gain = rule(z, step_gain, torch.ones_like(dt[:1, None]))  # (1, M) each: B̃ = 1
        A_bar, B_bar = A_bar[0], gain[0, :, None] * B_tilde  # (M,), (M, H)
        C = complex_pairs(self.C)  # (C, H, M)
        if A_bar.dtype != C.dtype:  # rounded once to the layer's precision
            A_bar, B_bar = A_bar.to(C.dtype), B_bar.to(C.dtype)
        return A_bar, B_bar, (2 * C if self.conj_sym else C)  # (M,), (M, H), (C, H, M)

    def _forward_irregular(self, u, intervals, state, return_state: bool, backend: str):
        """The system sampled at the gaps ``intervals`` (:mod:`ssmkit.ops.irregular`; a constant gap c equals
        ``step_rescale`` times c): (y, final state)."""
        with float32_core(u.device.type):
            Lambda, B_tilde, dt = self.continuous()  # (M,), (M, H), (M,)
            # the C kernel forms each step's coefficients in registers on the CPU; elsewhere (B, L, M) tensors
            return irregular_ssm_scan(u, Lambda, B_tilde, self._output_matrix(), dt, intervals, state, self.D,
                                      self.discretization, return_state=return_state, backend=backend)

    def _step_irregular(self, u_t, interval, state):
        """One step after the gap ``interval`` (:func:`ssmkit.ops.irregular.irregular_step`)."""
        with float32_core(u_t.device.type):
            Lambda, B_tilde, dt = self.continuous()
            A_bar, gain = irregular_discretize(Lambda, dt, interval, self.discretization)  # (B, M) each
            return irregular_step(u_t, A_bar, gain, B_tilde, self._output_matrix(), state, self.D)

    def _output_matrix(self) -> torch.Tensor:
        """The causal output matrix (H, M): 2C̃ with ``conj_sym`` (y = 2 Re(C̃ x) + D u), else C̃."""
        C = complex_pairs(self.C)[0]  # (H, M)
        return 2 * C if self.conj_sym else C

    @property
    def n_modes(self) -> int:
        """M = d_state / 2 complex modes."""
        return self.d_state // 2

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, blocks={self.blocks}, "
            f"discretization={self.discretization!r}, conj_sym={self.conj_sym}, bidirectional={self.bidirectional}"
        )
