"""S4: "Efficiently Modeling Long Sequences with Structured State Spaces", arXiv 2111.00396.

A bank of H single-input single-output state-space models with a diagonal-plus-low-rank (DPLR) state matrix,
initialised from HiPPO ("How to Train Your HiPPO", arXiv 2206.12037, for the LegT/LagT/FouT inits). Each channel
holds N/2 complex modes x (the kept half of N/2 conjugate pairs; N = ``d_state``) of the full state x_f = [x, x̄]:

    A = diag(Λ_f) - Σ_i P_f,i P_f,i*         Λ_f = [Λ, Λ̄], P_f,i = [P_i, P̄_i]   (§3.1, rank r = 1 or 2)
    Ā = (I - ΔA/2)⁻¹(I + ΔA/2),  B̄ = (I - ΔA/2)⁻¹ Δ B_f                          (bilinear, eq. 3)
    x_l = Ā x_{l-1} + B̄ u_l,     y_l = C_trueᵀ x_f,l + D u_l = 2 Re Σ_n C_n x_l,n + D u_l
    K_l = C_trueᵀ Ā^l B̄,         y = K ⊛ u + D ⊙ u                                  (eq. 4-5)

The kernel is computed by Algorithm 1 (Cauchy sums + Woodbury + inverse FFT, :func:`ssmkit.ops.cauchy.dplr_kernel`)
from the trainable C̃ = (I - Ā^{L_k})ᵀ C_true, where L_k is the length C̃ is attuned to (``l_max``, see below)
(unconjugated transpose: the convention y = Cᵀx; the paper's (I - Ā^L)*C belongs to its y = C*x convention).
``step`` runs the exact bilinear recurrence in O(N) per channel (R = (2/Δ - Λ)⁻¹, E = 2/Δ + Λ):

    v = E⊙x - P(P*x) + 2B u,    x' = R⊙v - (R⊙P)(I + P*(R⊙P))⁻¹ P*(R⊙v),    y = 2 Re Σ C_true x' + D u

with every P*v over the full state equal to 2 Re Σ_half P̄ v. It does NOT diagonalise Ā (the official default,
which drifts away from the convolution), so step == forward to rounding (float32 1e-5, float64 1e-10).
An initial state s (= x_{-1}) adds C_trueᵀ Ā^{l+1} s_f to y_l, computed as an extra kernel input
B_s = (1/Δ)(I + ΔA/2)s (so that B̄_s = Ā s); the final state comes from the dense recurrence (chunked GEMMs,
:func:`ssmkit.ops.dense.dense_final_state`) in the real basis z = [Re x, Im x] of the half state. With the
"reference" backend the forward is the step loop (the oracle).

Choices and departures (each one documented in docs/design.md):
- Init (``init``): NPLR of the HiPPO matrix, Λ = the kept eigenvalues (Im λ <= 0), P̃ = V*P, B̃ = V*B with
  Im B̃ clipped to ±``B_clip`` (official default 2.0, phase convention: first eigenvector entry real; the clip
  changes 11 of 32 entries for LegS at N = 64). No ½ on B: the full conjugate-pair DPLR system is the HiPPO system
  in a unitary basis, so B̃ = V*B reproduces it (the ½ question concerns only S4D's diagonal approximation).
- LegT, LagT and FouT have Re λ = 0 after the NPLR; as the official ``inv_transform`` does, -Re λ is clamped to at
  least 1e-4 at init (FouT would otherwise give 0/0 at ω = 1).
- Λ is stored as ``log_A_real`` = log(-Re λ) and ``A_imag`` (so Re λ < 0 always); Δ as ``log_dt`` (the official
  class default; its layer config uses softplus instead). Complex parameters are stored as real (..., 2) views.
- ``n_ssm`` = 1 (official config) ties Λ, P, B across channels (channel h uses copy h mod n_ssm); Δ, C̃ and D are
  per channel. Δ, Λ, P, B carry the optimiser marks (lr ``lr``, weight decay 0); C̃ and D are plain parameters.
- C ~ CN(0, 1) (real and imaginary parts N(0, ½)) is converted once, in ``reset_parameters``, to the trainable
  C̃ = (I - Ā^{l_max})ᵀ C (float64): C̃ is attuned to ``l_max``, a fixed constructor option. An input longer than
  ``l_max`` uses C̃ attuned to L_k = l_max·2^k >= L, computed functionally in each call by the doubling
  C̃_{2K} = (I + Ā^K)ᵀ C̃_K (dense float64 products, differentiable): ``forward`` never writes to a parameter, so a
  layer is safe to call from several threads and at several lengths within one autograd graph. (The official code
  rewrites C̃ in place instead, which races between threads and corrupts gradients across lengths.) Inputs longer
  than ``l_max`` cost the O(H N³ log(L/l_max)) doubling on every call: set ``l_max`` to the longest length you use.
  ``step`` and ``state_space`` recover C_true by solving (I - Ā^{l_max})ᵀ C_true = C̃ (dense, float64).
- Precision: the kernel is computed in float64/complex128 for every layer dtype and then cast. With Re λ ≈ -1e-4
  (LegT/LagT/FouT) the Woodbury step cancels large Cauchy sums: a complex64 kernel is off by up to ~3e-4 relative
  (LegS: ~1e-6), which breaks step == forward at 1e-5. The real-basis Ā, B̄ (for the final state) and C_true are
  formed in float64. ``step`` computes in float64 and rounds the state once per step to the layer's complex dtype
  (a float32 step drifts by 6e-6 relative over 4096 LegS steps and 7e-5 for LagT; 2e-7 and 1e-6 this way).
  Under autocast the SSM core runs in the parameters' dtype and y is cast back to x's dtype.
- ``step`` caches its coefficients while the parameters keep their values (compared by value, so fused optimizers
  and ``.data`` edits are seen: :class:`ssmkit.layers.cache.ValueCache`) and no gradient is needed; with grad
  enabled it recomputes them each call (a dense float64 solve), so run generation under ``torch.no_grad()``.
- ``forward`` without a gradient (``torch.no_grad()``, or frozen parameters) keeps, in the same way, what it computes
  from the parameters alone for the last input length: the kernel and the final state's tables (the real-basis
  dense Ā's powers). Repeated evaluation at one length (validation, simulation, serving) then dispatches 99 aten
  ops instead of 273 at B 8, H 128, N 64, L 4 096, in 44 % less time. A compiled forward without a gradient reads
  the same cache through the run-time op of :mod:`ssmkit.layers.cache` (for a dynamic length: the plan's shapes by
  ``_plan_structure``). With a gradient, and under torch.func or torch.export, everything is recomputed each call,
  differentiably. Under torch.compile the final state's chunk length is that of the attuned length L_k (eagerly:
  of L) and a traced Ā^L takes L as a value (:func:`ssmkit.ops.dense.matrix_power_bits`), so a dynamic length
  compiles one graph per L_k, with or without the final state and a gradient.
- Backends: ``"fft"`` (and ``"auto"``) = DPLR kernel + FFT convolution; ``"reference"`` = the step loop.
- Non-finite inputs: the FFT convolution spreads a NaN/inf at any time step over the whole output (t = 0 on).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ssmkit.layers.cache import ValueCache
from ssmkit.layers.checks import (
    DRAWN,
    MARKS,
    SHAPES,
    FixedOption,
    check_choice,
    check_dt_range,
    check_even_state,
    check_flag,
    check_length,
    check_lr,
    check_positive_int,
    parameter_dtype,
)
from ssmkit.layers.init import log_uniform_log_dt
from ssmkit.layers.irregular import IrregularSampling
from ssmkit.layers.longconv import fit_length
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.protocol import Capabilities, SequenceLayer, complex_pairs, float32_core, with_skip
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.layers.state import TensorSpec
from ssmkit.ops.backend import get_backend
from ssmkit.ops.cauchy import dplr_kernel
from ssmkit.ops.dense import DenseStateTables, chunk_length, dense_state_tables, dense_final_state_tabled
from ssmkit.ops.dplr import (
    DPLRStepCoefficients,
    bilinear_dplr_real,
    dplr_step,
    dplr_step_coefficients,
    increment_power,
)
from ssmkit.ops.fftconv import bidirectional_conv, causal_conv
from ssmkit.ops.irregular_dplr import dplr_irregular_coefficients, dplr_irregular_scan, dplr_irregular_step
from ssmkit.ops.hippo import nplr

INITS = ("legs", "legt", "lagt", "fout")
RANK = {"legs": 1, "legt": 2, "lagt": 1, "fout": 1}
_MIN_NEG_REAL = 1e-4  # -Re λ >= 1e-4 at init, as the official inv_transform
_F64, _C128 = torch.float64, torch.complex128


class _ConvPlan(NamedTuple):
    """What S4's convolution view computes from the parameters alone, for one input length (``S4._plan``).

    Fields: Λ (H, N/2), P (r, H, N/2) complex128 and Δ (H,) float64 (for an initial state's kernel input); C̃ attuned
    to L_k (C, H, N/2) complex128 and L_k; the kernel without the skip K (C, H, L) in the layer's dtype; the final
    state's tables (real basis, the layer's dtype; None when no final state is asked for).
    """

    Lambda: Tensor
    P: Tensor
    dt: Tensor
    C_t: Tensor
    L_k: int
    K: Tensor
    tables: DenseStateTables | None


def _crop(K: Tensor, L: int) -> Tensor:
    """The first L <= L_k taps of K (..., L_k): (..., L), by :func:`ssmkit.layers.longconv.fit_length`; under
    torch.compile by its branch-free form (L zeros appended, then the first L taps): the view ``K[..., :L]`` is
    contiguous exactly when L = L_k, and AOT autograd's contiguity check made that a guard (a second graph for the
    octave's last length)."""
    if torch.compiler.is_compiling():
        return F.pad(K, (0, L))[..., :L]  # (..., L)
    return fit_length(K, L)  # (..., L)


def _to_real_row(C: Tensor) -> Tensor:
    """An output vector C (..., N/2) complex as the real row c with C_fᵀ x_f = c · [Re x, Im x]: [2 Re C, -2 Im C]."""
    return torch.cat([2 * C.real, -2 * C.imag], dim=-1)  # (..., N)


def _from_real_row(c: Tensor) -> Tensor:
    """Inverse of :func:`_to_real_row`: c (..., N) real -> C (..., N/2) complex."""
    M = c.shape[-1] // 2
    return torch.complex(c[..., :M], -c[..., M:]) / 2  # (..., N/2)


@register("s4")
class S4(IrregularSampling, SequenceLayer):
    """Structured state-space layer with a DPLR state matrix (S4), arXiv 2111.00396.

    Args:
        d_model: H, the number of channels (one SISO system each).
        d_state: N, the real-equivalent state size per channel (N/2 conjugate-pair modes); even, >= 2.
        l_max: the length C̃ is attuned to (inputs up to l_max are cheapest; longer ones cost a doubling per call).
        init: HiPPO matrix of the initialisation, one of
            ``"legs"`` -- scaled Legendre (rank-1 correction, Re λ = -½; the paper's default);
            ``"legt"`` -- translated Legendre (rank-2 correction, Re λ clamped to -1e-4);
            ``"lagt"`` -- translated Laguerre (rank 1, Re λ clamped to -1e-4);
            ``"fout"`` -- translated Fourier (rank 1, Re λ clamped to -1e-4).
        dt_min, dt_max: range of the log-uniform initial step size Δ (per channel).
        n_ssm: number of independent copies of (Λ, P, B) shared over the channels; 1 = tied (official config),
            None = one per channel; must divide d_model.
        lr: learning rate of Δ, Λ, P, B (weight decay 0); ``None`` = the global lr, ``0.0`` = frozen.
        bidirectional: add an anti-causal kernel with its own C̃ (no ``step``, no state, no state space then).
        B_clip: bound on |Im B̃| at init (official 2.0), or None for no clip.
        device, dtype: of the parameters (dtype real: float32 or float64).
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later they were ignored or broke
    # the layer); l_max: C̃ stores (I - Ā^{l_max})ᵀ C, so another l_max would read the trained C̃ as another C
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    l_max = FixedOption("C̃ is attuned to")
    init = FixedOption(DRAWN)
    dt_min = FixedOption(DRAWN)
    dt_max = FixedOption(DRAWN)
    n_ssm = FixedOption(SHAPES)
    lr = FixedOption(MARKS)
    bidirectional = FixedOption(SHAPES)
    B_clip = FixedOption(DRAWN)
    capabilities: ClassVar[Capabilities] = Capabilities(kernel=True, state_space=True, step=True)
    backends: ClassVar[tuple[str, ...]] = ("reference", "fft")
    zoo = ZooEntry(
        paper="arXiv 2111.00396",
        structure="DPLR",
        parametrisation="A = diag(Λ) - P P*, Re Λ = -exp(a), HiPPO init (NPLR)",
        discretisation="bilinear, learned Δ per channel",
        time_varying=False,
        stable_by_construction=True,
        stability="Hurwitz: the Hermitian part diag(Re Λ) - P P* is negative definite; bilinear keeps it Schur",
        step_cost="O(H N) (Woodbury step)",
        sequence_cost="O(H N (L + log L) + H L log L) Cauchy kernel + FFT",
    )

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        l_max: int = 1024,
        init: str = "legs",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        n_ssm: int | None = 1,
        lr: float | None = 1e-3,
        bidirectional: bool = False,
        B_clip: float | None = 2.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.l_max = l_max
        self.init = init
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.n_ssm = n_ssm
        self.lr = lr
        check_flag(bidirectional, "bidirectional")
        self.bidirectional = bidirectional
        self.B_clip = B_clip
        check_positive_int(d_model, "d_model")
        check_even_state(d_state, "N/2 conjugate pairs")
        check_length(l_max, "l_max")
        check_choice(init, INITS, "init")
        check_dt_range(dt_min, dt_max)
        if n_ssm is not None and (isinstance(n_ssm, bool) or not isinstance(n_ssm, int) or n_ssm < 1):
            raise ValueError(f"n_ssm must be a positive int dividing d_model, or None; got {n_ssm!r}")
        if n_ssm is not None and d_model % n_ssm:
            raise ValueError(f"d_model must be divisible by n_ssm; got d_model={d_model}, n_ssm={n_ssm}")
        check_lr(lr)
        if B_clip is not None and (isinstance(B_clip, bool) or not isinstance(B_clip, (int, float))
                                   or not 0 < B_clip < math.inf):
            raise ValueError(f"B_clip must be a finite float > 0, or None for no clip; got {B_clip!r}")
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        H, M, G, r = d_model, d_state // 2, n_ssm or d_model, RANK[init]
        register_ssm_parameter(self, "log_dt", torch.empty(H, **factory), lr)
        register_ssm_parameter(self, "log_A_real", torch.empty(G, M, **factory), lr)
        register_ssm_parameter(self, "A_imag", torch.empty(G, M, **factory), lr)
        register_ssm_parameter(self, "P", torch.empty(r, G, M, 2, **factory), lr)
        register_ssm_parameter(self, "B", torch.empty(G, M, 2, **factory), lr)
        self.C_tilde = nn.Parameter(torch.empty(2 if bidirectional else 1, H, M, 2, **factory))
        self.D = nn.Parameter(torch.empty(H, **factory))
        self._step_cache: ValueCache = ValueCache(self._compute_step_coefficients)
        self._plan_cache: ValueCache = ValueCache(self._plan, self._plan_structure)
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------------------------
    # Parameters

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from the paper's initialisation (the only re-init path)."""
        H, M = self.d_model, self.d_state // 2
        G = self.log_A_real.shape[0]
        init = nplr(self.init, self.d_state, self.B_clip)  # Lambda (M,), P (r, M), B (M,), complex128
        neg_real = (-init.Lambda.real).clamp(min=_MIN_NEG_REAL)  # (M,)
        self.log_A_real.copy_(torch.log(neg_real).expand(G, M))
        self.A_imag.copy_(init.Lambda.imag.expand(G, M))
        self.P.copy_(torch.view_as_real(init.P)[:, None].expand(-1, G, M, 2))
        self.B.copy_(torch.view_as_real(init.B).expand(G, M, 2))
        log_dt = log_uniform_log_dt((H,), self.dt_min, self.dt_max)
        self.log_dt.copy_(log_dt)
        self.D.copy_(torch.randn(H, dtype=_F64))
        C = torch.randn(self.C_tilde.shape[:-1], dtype=_C128).to(self.D.device)  # (C, H, N/2): CN(0, 1)
        F = self._power_increment()  # (H, N, N): Ā^L - I
        c = _to_real_row(C)  # (C, H, N)
        self.C_tilde.copy_(torch.view_as_real(_from_real_row(-torch.einsum("hmn,chm->chn", F, c))))  # (I - Ā^L)ᵀ C
        self._step_cache.clear()
        self._plan_cache.clear()

    def _ssm(self, real: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(Λ (H, N/2), P (r, H, N/2), B (H, N/2)) complex and Δ (H,) real in precision ``real``, differentiable."""
        H, G = self.d_model, self.log_A_real.shape[0]
        Lambda = torch.complex(-torch.exp(self.log_A_real.to(real)), self.A_imag.to(real))  # (G, M)
        P = complex_pairs(self.P.to(real))  # (r, G, M)
        B = complex_pairs(self.B.to(real))  # (G, M)
        rep = H // G  # channel h uses copy h mod G
        return Lambda.repeat(rep, 1), P.repeat(1, rep, 1), B.repeat(rep, 1), torch.exp(self.log_dt.to(real))

    def _real_system(self) -> tuple[Tensor, Tensor]:
        """Ā (H, N, N) and B̄ (H, N) in float64 in the real basis z = [Re x, Im x] of the half state
        (:func:`ssmkit.ops.dplr.bilinear_dplr_real`)."""
        Lambda, P, B, dt = self._ssm(_F64)
        return bilinear_dplr_real(Lambda, P, B, dt)

    def _C_tilde(self) -> Tensor:
        """C̃ (C, H, N/2) complex128."""
        return complex_pairs(self.C_tilde.to(_F64))

    def _power_increment(self) -> Tensor:
        """Ā^{l_max} - I (H, N, N) in float64 and the real basis, from the increment Ā - I
        (:func:`ssmkit.ops.dplr.increment_power`): a float64 Ā ≈ I + ΔÊ powered loses eps/(l_max Δ |λ|) of it at small
        Δ (S4 probe of 2026-12-05: FouT's solve below was singular at log Δ = -30)."""
        Lambda, P, B, dt = self._ssm(_F64)
        A_inc, _ = bilinear_dplr_real(Lambda, P, B, dt, minus_identity=True)  # (H, N, N): Ā - I
        return increment_power(A_inc, self.l_max)  # (H, N, N)

    def _C_true(self) -> Tensor:
        """C_true (C, H, N/2) complex128, solving (I - Ā^{l_max})ᵀ C_true = C̃ (in the real basis, float64), with
        I - Ā^{l_max} from the increments (:meth:`_power_increment`)."""
        F = self._power_increment()  # (H, N, N): Ā^{l_max} - I
        c_t = _to_real_row(self._C_tilde())  # (C, H, N)
        return _from_real_row(torch.linalg.solve(-F.mT, c_t.unsqueeze(-1)).squeeze(-1))  # (C, H, N/2)

    def _attuned_length(self, L: int) -> int:
        """L_k = l_max·2^k >= L, k >= 0 smallest (by comparisons: for a symbolic L, guards l_max·2^{k-1} < L <= L_k)."""
        L_k = self.l_max
        while L_k < L:
            L_k *= 2
        return L_k

    def _attuned_C_tilde(self, L: int, A_bar: Tensor | None = None) -> tuple[Tensor, int]:
        """C̃ attuned to L_k = l_max·2^k >= L (k >= 0 smallest), computed functionally: (C, H, N/2) complex128 and L_k.

        C̃_{2K} = (I + Ā^K)ᵀ C̃_K (arXiv 2111.00396 §3.3: the generating function of length 2K from that of length K),
        in the real basis and float64; differentiable, and the stored parameter is never written. ``A_bar``: the
        real-basis Ā (H, N, N) if the caller has it (else it is computed when needed).
        """
        C_t = self._C_tilde()  # (C, H, N/2)
        L_k = self.l_max
        if L <= L_k:
            return C_t, L_k
        if A_bar is None:
            A_bar, _ = self._real_system()
        A_pow = torch.linalg.matrix_power(A_bar, L_k)  # (H, N, N): Ā^{L_k}
        c = _to_real_row(C_t)  # (C, H, N)
        while L_k < L:
            c = c + torch.einsum("hmn,chm->chn", A_pow, c)  # (I + Ā^{L_k})ᵀ C̃: (C, H, N)
            L_k *= 2
            if L_k < L:
                A_pow = A_pow @ A_pow  # (H, N, N): Ā^{2 L_k}
        return _from_real_row(c), L_k

    # ------------------------------------------------------------------------------------------------------------
    # Kernel and forward

    def _kernel(self, L: int) -> Tensor:
        """K_l = C_trueᵀ Ā^l B̄ + D δ_l, l < L (arXiv 2111.00396 Alg. 1), computed in float64 at the attuned length
        L_k >= L and truncated; (H, L) or (2, H, L) in the layer's dtype (see ``SequenceLayer.kernel``)."""
        Lambda, P, B, dt = self._ssm(_F64)
        C_t, L_k = self._attuned_C_tilde(L)
        backend = "reference" if get_backend() == "reference" else "fft"  # kernel() is not a forward: any context
        K = dplr_kernel(Lambda, P, B[None], C_t, dt, L_k, backend=backend)[0, :, :, :L]  # (C, H, L)
        K = with_skip(K, self.D.to(K.dtype)).to(self.D.dtype)  # (C, H, L): D on the causal tap 0
        return K if self.bidirectional else K[0]

    def _state_input(self, s: Tensor, Lambda: Tensor, P: Tensor, dt: Tensor) -> Tensor:
        """B_s = (1/Δ)(I + ΔA/2) s on the half state: s/Δ + ½(Λ⊙s - Σ_i P_i 2Re Σ_n P̄_i,n s_n). (B, H, N/2)."""
        P_s = 2 * torch.einsum("ihm,bhm->bih", P.conj(), s).real  # (B, r, H)
        low_rank = (P[None] * P_s[..., None]).sum(1)  # (B, r, H, N/2) -> (B, H, N/2)
        return s / dt[:, None] + 0.5 * (Lambda * s - low_rank)  # (B, H, N/2)

    def _forward(self, x: Tensor, state: Tensor | None, return_state: bool) -> tuple[Tensor, Tensor | None]:
        backend = self._backend()
        with float32_core(x.device.type):
            u = x.to(self.D.dtype)  # (B, L, H)
            if backend == "reference" and not self.bidirectional:  # the oracle; a two-sided layer has no
                return self._forward_by_steps(u, state, x.dtype, return_state)  # recurrence: its reference is the dense kernel
            y, h, _ = self._convolve(u, state, return_state, "reference" if backend == "reference" else "fft")
        return y.to(x.dtype), h

    def _convolve(
        self, u: Tensor, state: Tensor | None, return_state: bool, fft: str
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """The convolution view: y = K ⊛ u + D u (+ the initial state's output), the final state, and K.

        Args:
            u: (B, L, H) input in the parameters' dtype.
            state: (B, H, N/2) complex x_{-1}, or None for zeros.
            return_state: also compute the final state (else None).
            fft: backend of the kernel and the convolutions (``"fft"`` or ``"reference"``).

        Returns:
            y (B, L, H) in u's dtype, the final state (B, H, N/2) or None, and the kernel without the skip
            (C, H, L) in u's dtype (what a subclass reads its tap K_0 = C_trueᵀ B̄ from).
        """
        real = self.D.dtype
        L = u.shape[1]
        key = (L, fft, return_state, state is not None, self._state_chunk(L) if return_state else 0)  # dtype and
        # device: the cache compares the parameters'
        # under torch.func and torch.export (and with a gradient) the plan is computed here, differentiably; a
        # compiled no-gradient forward reads it through the run-time cache op (layers/cache.py), as eager does
        plan = self._plan_cache.get_unless_grad(self.own_tensors(), lambda: self._plan(*key), key)
        K = plan.K  # (C, H, L)
        if self.bidirectional:
            return bidirectional_conv(u, K, backend=fft) + self.D * u, None, K
        y = causal_conv(u, K[0], backend=fft) + self.D * u  # (B, L, H)
        if state is not None:  # the initial state's output C_trueᵀ Ā^{l+1} s, as the kernel of the input B_s
            B_s = self._state_input(state.to(_C128), plan.Lambda, plan.P, plan.dt)  # (B, H, N/2)
            K_s = dplr_kernel(plan.Lambda, plan.P, B_s, plan.C_t, plan.dt, plan.L_k, backend=fft)  # (B, C, H, L_k)
            y = y + _crop(K_s[:, 0], L).to(real).transpose(1, 2)  # (B, H, L) -> (B, L, H)
        if not return_state:
            return y, None, K
        z0 = None if state is None else torch.cat([state.real, state.imag], dim=-1).to(real)  # (B, H, N)
        bound = self._attuned_length(L) if torch.compiler.is_compiling() else None  # (a chunk count of L_k if traced)
        z = dense_final_state_tabled(u, plan.tables, z0, bound)  # (B, H, N); tables formed in float64, then rounded
        M = self.d_state // 2
        return y, torch.complex(z[..., :M], z[..., M:]), K  # (B, H, N/2)

    def _state_chunk(self, L: int) -> int:
        """The chunk length T of the final state's tables for inputs of length L: eagerly the power of two nearest √L
        (:func:`ssmkit.ops.dense.chunk_length`); under torch.compile that of the attuned length L_k, so that a dynamic
        L keeps one graph per L_k (T ≈ √L chosen from L itself specialised L: one graph per length)."""
        if torch.compiler.is_compiling():
            return chunk_length(self._attuned_length(L))
        return chunk_length(L)

    def _plan(self, L: int, fft: str, return_state: bool, initial_state: bool, chunk: int) -> _ConvPlan:
        """What the convolution view needs from the parameters alone for inputs of length L (differentiable).

        Args:
            L: the input length.
            fft: backend of the kernel (``"fft"`` or ``"reference"``).
            return_state: also form the final state's tables.
            initial_state: the tables include Ā^L (for an initial state's term).
            chunk: the tables' chunk length T (``_state_chunk``; 0 without a final state).
        """
        Lambda, P, B, dt = self._ssm(_F64)
        needs_real = return_state or L > self.l_max  # the real-basis Ā (and B̄), formed once for both uses
        A_z, B_z = bilinear_dplr_real(Lambda, P, B, dt) if needs_real else (None, None)  # float64
        C_t, L_k = self._attuned_C_tilde(L, A_z)
        # cropped by _crop, not [..., :L]: a slice of the whole L_k taps made torch.export and AOT guard L != L_k
        K = _crop(dplr_kernel(Lambda, P, B[None], C_t, dt, L_k, backend=fft)[0], L).to(self.D.dtype)  # (C, H, L)
        tables = None
        if return_state:  # traced under torch.compile (with a gradient): Ā^L by L's bits, L a value in the graph
            bound = L_k if torch.compiler.is_compiling() else None
            tables = dense_state_tables(A_z, B_z, L, self.D.dtype, initial_state, chunk, bound)
        return _ConvPlan(Lambda, P, dt, C_t, L_k, K, tables)

    def _plan_structure(
        self, L: int, fft: str, return_state: bool, initial_state: bool, chunk: int
    ) -> _ConvPlan:
        """The plan's structure for a compiled forward (``layers.cache``: traced in the graph and run by the op's fake
        implementation; L symbolic for a dynamic length): empty tensors of its shapes, L_k by comparisons (guards),
        as ``_plan`` computes them. The final state's tables have
        shapes of N and the chunk length T alone (T chosen from L_k under torch.compile, ``_state_chunk``); Ā^L is
        a value."""
        H, M, r, C, N = self.d_model, self.d_state // 2, self.P.shape[0], self.C_tilde.shape[0], self.d_state
        L_k = self._attuned_length(L)
        dev, real = self.D.device, self.D.dtype
        tables = None
        if return_state:
            A_L = torch.empty(H, N, N, dtype=real, device=dev) if initial_state else None
            tables = DenseStateTables(torch.empty(H, N, chunk, dtype=real, device=dev),
                                      torch.empty(H, N, N, dtype=real, device=dev), A_L, L)
        return _ConvPlan(torch.empty(H, M, dtype=_C128, device=dev), torch.empty(r, H, M, dtype=_C128, device=dev),
                         torch.empty(H, dtype=_F64, device=dev), torch.empty(C, H, M, dtype=_C128, device=dev), L_k,
                         torch.empty(C, H, L, dtype=real, device=dev), tables)

    # ------------------------------------------------------------------------------------------------------------
    # Recurrence

    def _step_coefficients(self) -> tuple[DPLRStepCoefficients, Tensor]:
        """The O(N) step's coefficients (:func:`ssmkit.ops.dplr.dplr_step_coefficients`) and C_true (H, N/2), complex128;
        cached while the parameters keep their values and no gradient is needed (recomputed, differentiably, when one
        is)."""
        return self._step_cache.get_unless_grad(self.own_tensors(), self._compute_step_coefficients)

    def _compute_step_coefficients(self) -> tuple[DPLRStepCoefficients, Tensor]:
        Lambda, P, B, dt = self._ssm(_F64)
        return dplr_step_coefficients(Lambda, P, B, dt), self._C_true()[0]

    def _recur(self, u: Tensor, x: Tensor, coeffs: tuple[DPLRStepCoefficients, Tensor]) -> tuple[Tensor, Tensor]:
        """One bilinear DPLR step in float64: u (B, H) real, x (B, H, N/2) complex -> y (B, H) with the skip, x'."""
        y, x_new = dplr_step(u, x, coeffs[0], coeffs[1])  # (B, H), (B, H, N/2)
        return y + self.D.to(_F64) * u, x_new

    def _step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        # In float64 whatever the layer's dtype: the state is rounded once per step (a float32 step accumulates
        # 6e-6 relative error in the state over 4096 LegS steps, 7e-5 for LagT; 2e-7 and 1e-6 in float64).
        with float32_core(x_t.device.type):
            y, h = self._recur(x_t.to(_F64), state.to(_C128), self._step_coefficients())
        return y.to(x_t.dtype), h.to(state.dtype)

    def _forward_by_steps(
        self, u: Tensor, state: Tensor | None, out_dtype: torch.dtype, return_state: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The oracle forward of the "reference" backend: the O(N) step over the sequence (as ``step``)."""
        h = self.initial_state(u.shape[0]) if state is None else state
        coeffs = self._step_coefficients()
        ys = []
        for t in range(u.shape[1]):
            y_t, h_t = self._recur(u[:, t].to(_F64), h.to(_C128), coeffs)
            h = h_t.to(h.dtype)
            ys.append(y_t)
        return torch.stack(ys, dim=1).to(out_dtype), (h if return_state else None)  # (B, L, H)

    # ------------------------------------------------------------------------------------------------------------
    # Irregular sampling (ssmkit.layers.irregular)

    def _irregular_system(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Λ (H, N/2), P (r, H, N/2), B (H, N/2), C_true (H, N/2) complex128 and Δ (H,) float64 of the sampled
        system; C_true as ``step`` gets it (cached without a gradient, :meth:`_step_coefficients`)."""
        Lambda, P, B, dt = self._ssm(_F64)
        return Lambda, P, B, self._step_coefficients()[1], dt

    def _state_dtype(self) -> torch.dtype:
        """The state's complex dtype: complex128 for a float64 layer, complex64 otherwise (``state_spec``)."""
        return _C128 if self.D.dtype == _F64 else torch.complex64

    def _forward_irregular(
        self, u: Tensor, intervals: Tensor, state: Tensor | None, return_state: bool, backend: str
    ) -> tuple[Tensor, Tensor | None]:
        """The bilinear DPLR recurrence with each step's own Δ_t = Δ τ_t (:mod:`ssmkit.ops.irregular_dplr`), in
        float64 as ``step`` (the state rounded once, at the end, to the layer's complex dtype): (y, final state)."""
        with float32_core(u.device.type):
            Lambda, P, B, C, dt = self._irregular_system()
            x0 = None if state is None else state.to(_C128)
            y, h = dplr_irregular_scan(u.to(_F64), Lambda, P, B, C, dt, intervals.to(_F64), self.D.to(_F64), x0,
                                       return_state=return_state, backend=backend)
        return y.to(u.dtype), (None if h is None else h.to(self._state_dtype()))

    def _step_irregular(self, u_t: Tensor, interval: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One bilinear DPLR step of Δ_t = Δ τ (:func:`ssmkit.ops.irregular_dplr.dplr_irregular_step`), in float64
        as ``step``."""
        with float32_core(u_t.device.type):
            Lambda, P, B, C, dt = self._irregular_system()
            coeffs = dplr_irregular_coefficients(Lambda, P, dt, interval.to(_F64))  # (B, H, N/2), ...
            u = u_t.to(_F64)
            y, h = dplr_irregular_step(u, state.to(_C128), coeffs, P, B, C)
        return (y + self.D.to(_F64) * u).to(u_t.dtype), h.to(state.dtype)

    def state_spec(self) -> TensorSpec:
        """The kept half x of the conjugate-pair state: (H, N/2) complex64 (complex128 for a float64 layer)."""
        return TensorSpec((self.d_model, self.d_state // 2), self._state_dtype())

    def state_device(self) -> torch.device:
        return self.D.device

    # ------------------------------------------------------------------------------------------------------------
    # Analysis

    def _state_space(self):  # -> ssmkit.analysis.StateSpace
        """The layer as H real SISO systems with N states (basis z = [Re x, Im x]), control convention.

        Returns a ``StateSpace`` with A (H, N, N), B (H, N, 1), C (H, 1, N), D (H, 1, 1), dt = 1 (one sample).
        Ā, B̄ in the real basis z = [Re x, Im x] (see ``_real_system``), output row [2 Re C_true, -2 Im C_true],
        mapped by ``StateSpace.from_ssm`` (A = Ā, B = B̄, C' = CĀ, D' = D + CB̄). Computed in float64.
        """
        from ssmkit.analysis.statespace import StateSpace

        A_z, B_z = self._real_system()
        C_z = _to_real_row(self._C_true()[0])  # (H, N)
        D = self.D.to(_F64)
        return StateSpace.from_ssm(A_z, B_z[..., None], C_z[:, None, :], D[:, None, None], dt=1.0)

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, l_max={self.l_max}, init={self.init!r}, "
            f"n_ssm={self.n_ssm}, bidirectional={self.bidirectional}"
        )
