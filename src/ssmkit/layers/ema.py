"""Mega's multi-dimensional damped EMA: "Mega: Moving Average Equipped Gated Attention", arXiv 2209.10655, §2.2 and §3.1.

A bank of H single-input single-output real diagonal SSMs, each with N real modes (N = ``d_state``, the paper's
EMA dimension h; 16 in every published recipe). Per channel d and mode n (eq. 2-3):

    h_t = α ⊙ β ⊙ u_t + (1 - α ⊙ δ) ⊙ h_{t-1}
    y_t = Σ_n γ_n h_{t,n} / √N + ω ⊙ u_t

that is Ā = 1 - αδ, B̄ = αβ, C = γ/√N, D = ω, and the kernel K_l = Σ_n (γ_n/√N) α_n β_n (1 - α_n δ_n)^l (+ ω at
l = 0). α and δ are sigmoids of unconstrained parameters (the official code; the stored tensors carry the transform
in their names). Initialisation (official ``MultiHeadEMA``): both logits ~ N(0, 0.2²); β = +1, -1, +1, ... over n
plus N(0, 0.02²) noise; γ ~ N(0, 1) per (channel, mode); ω ~ N(0, 1) per channel.

The official layer ends in SiLU(y + ω u); here the layer is the linear map only (the static nonlinearity lives in
the Block, docs/design.md), and :class:`ssmkit.layers.Mega` applies the SiLU itself.

Views and backends (real modes through the shared diagonal machinery): ``"native"`` (and ``"auto"`` on the CPU where
the C kernel builds) = the C kernel's real-mode scan; ``"chunked"`` (``"auto"`` elsewhere) = the chunked scan;
``"fft"`` = kernel + FFT convolution; ``"reference"`` = the loop. The kernel is the Vandermonde product of
:func:`ssmkit.ops.vandermonde` (power tables built in float64 by products; the official code forms
exp(l·log(1 - αδ)) in float32 -- the same numbers up to rounding). ``bidirectional=True`` adds a second set of
α, δ, β, γ (as the official code) for an anti-causal kernel whose tap 0 acts at lag -1 (the current input is
counted once, by the causal kernel; the official code counts it in both directions). ω is shared.
The official ``truncation`` (a kernel shorter than L) is not offered.

Irregular sampling (``forward(..., intervals=)``, ``step(..., interval=)``; :mod:`ssmkit.ops.irregular_discrete`):
h_t = q ⊙ h_{t-1} + αβ u_t with q = 1 − αδ ∈ (0, 1) is the unit-step zero-order hold of dh/ds = z h + z/(q − 1) αβ u,
z = log q real (no branch to choose: q > 0), so a gap of τ periods gives h_t = q^τ ⊙ h_{t-1} + (1 − q^τ) β/δ ⊙ u_t
(τ = 1: αβ; a long gap forgets the state and holds the input at its steady state β/δ). z is formed without
cancellation (:func:`log_q`): log1p(−αδ) where αδ < ½, αδ from logsigmoid(a) + logsigmoid(d); elsewhere
log(1 − σ(a)σ(d)) = log(e^{−a} + e^{−d} + e^{−a−d}) − softplus(−a) − softplus(−d).

The layer samples its modes from z and w = −β/δ (the hold's B/Λ; 1/δ = 1 + e^{−d}) as Ā_t = e^{τz} = q^τ and
B̄_t = (e^{τz} − 1) w (:func:`ssmkit.ops.irregular.real_zoh_coefficients`), not from the input vector B = z w of
:meth:`EMA.continuous`: the form B̄ = (e^{τz} − 1) B/Λ differentiates w = B/Λ through B and through Λ into two terms of size |w ∂w/z| that cancel to
round-off (1e-16 of their size), where the true ∂z, Σ_t τ_t q^{τ_t} (…), is 1e-87 at τ = 1e3. e^x − 1 is expm1(x)
with the derivatives of e^x (autograd's derivative of expm1, (e^x − 1) + 1, is 0 where e^x < 1e-16: the gaps'
gradient at long gaps). The scans: a loop
(``"reference"``); chunks of coefficients and the chunked recurrence, each chunk under an activation checkpoint
(``"chunked"``, and ``"auto"`` off the CPU: :func:`ssmkit.ops.irregular_bank.real_zoh_scan`); the C kernel of :mod:`ssmkit.ops.irregular_bank` in its real variant,
handed z and w themselves (``"native"``, and ``"auto"`` on the CPU where it runs:
:func:`ssmkit.ops.native.irregular_bank.bank_ratio_unchecked`). Every coefficient is formed in double for a float32
layer and rounded once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.layers.checks import MARKS, SHAPES, FixedOption, check_flag, check_lr, check_positive_int, parameter_dtype
from ssmkit.layers.diagonal import DiagonalLTILayer, two_sided_scans
from ssmkit.layers.irregular import IrregularSampling
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.protocol import float32_core, with_skip
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.ops.backend import dispatch, get_backend
from ssmkit.ops.discretize import widen
from ssmkit.ops.fftconv import bidirectional_conv
from ssmkit.ops.irregular import real_zoh_coefficients
from ssmkit.ops.irregular_bank import real_zoh_scan
from ssmkit.ops.kernels import vandermonde
from ssmkit.ops.native.gate import prefer_native
from ssmkit.ops.native.irregular_bank import bank_ratio_unchecked

LOG_HALF = -math.log(2.0)  # log αδ below it: q = 1 − αδ > ½, z by log1p (log_q)


def log_q(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """z = log q = log(1 − σ(a)σ(d)) to the accuracy its arguments allow wherever q lies in (0, 1), its derivatives
    too: where αδ < ½ (q near 1, z ≈ −αδ), log1p(−e^s) with s = log α + log δ = logsigmoid(a) + logsigmoid(d) (the
    difference form below leaves z = −5e-14 at a = −30 as 1e-14 of noise, of either sign, and autograd's σ' = σ(1 − σ)
    loses 1 − α where α → 1); elsewhere (q ≤ ½, a, d ≥ 0) log(e^{−a} + e^{−d} + e^{−a−d}) − softplus(−a) − softplus(−d),
    free of the cancellation of 1 − σσ near q = 0.

    Args:
        a: logits of α (any shape).
        d: logits of δ (a's shape).

    Returns:
        z, a's shape, real and ≤ 0.
    """
    s = F.logsigmoid(a) + F.logsigmoid(d)  # log αδ
    near_one = s < LOG_HALF
    small = torch.log1p(-torch.exp(torch.where(near_one, s, torch.full_like(s, -1.0))))  # (−1: a finite derivative)
    return torch.where(near_one, small, torch.logsumexp(torch.stack([-a, -d, -a - d]), dim=0) - F.softplus(-a)
                       - F.softplus(-d))


def _step(u_t, tau_t, h, z, w, C, D):
    """One step of the sampled modes: h (B, H, N) after the gaps tau_t (B,), the read-out (B, H) and the skip."""
    A_bar, B_bar = real_zoh_coefficients(z, w, tau_t)  # (B, H, N) each, in z's dtype
    h = A_bar.to(h.dtype) * h + B_bar.to(h.dtype) * u_t[..., None]
    return (h * C).sum(-1) + D * u_t, h


def _zeros_if_none(h, u, z):
    """The state h (B, H, N), or zeros of u's dtype for None."""
    return u.new_zeros(u.shape[0], *z.shape) if h is None else h


def _scan_reference(u, z, w, C, D, intervals, h):
    """The sampled modes by a plain loop over time from h (B, H, N) or zeros (None): (y (B, L, H), h_{L-1})."""
    h = _zeros_if_none(h, u, z)
    ys = []
    for u_t, tau_t in zip(u.unbind(1), intervals.unbind(1)):
        y_t, h = _step(u_t, tau_t, h, z, w, C, D)
        ys.append(y_t)
    return torch.stack(ys, dim=1), h


def _scan_chunked(u, z, w, C, D, intervals, h, recurrence_backend: str = "chunked"):
    """The sampled modes chunk by chunk (:func:`ssmkit.ops.irregular_bank.real_zoh_scan`: each chunk under an
    activation checkpoint when autograd records), T = 64 steps where autograd records, 16 otherwise (the bank's
    choice, :func:`ssmkit.ops.irregular_bank.bank_irregular_scan_chunked`), from h (B, H, N) or zeros (None)."""
    T = 64 if torch.is_grad_enabled() else 16
    return real_zoh_scan(u, intervals, z, w, C, D, _zeros_if_none(h, u, z), T, recurrence_backend)


def _scan_native(u, z, w, C, D, intervals, h):
    """The bank's C kernel from z and w where it runs (u on the CPU, the kernel built and checked, nothing tracing:
    :func:`ssmkit.ops.native.gate.prefer_native`), else the chunks with the recurrence's own choice; from h (B, H, N)
    or zeros (None)."""
    if prefer_native("bank_irregular", u):
        return bank_ratio_unchecked(u, z, w, C, intervals, D, h, True)
    return _scan_chunked(u, z, w, C, D, intervals, h, "auto")


_SCANS = {"reference": _scan_reference, "chunked": _scan_chunked, "native": _scan_native}


@register("ema")
class EMA(IrregularSampling, DiagonalLTILayer):
    """Multi-dimensional damped exponential moving average (Mega's EMA), arXiv 2209.10655 eq. 2-3.

    Args:
        d_model: H, the number of channels (one SISO system each).
        d_state: N, the EMA dimension per channel (real modes; 16 in the paper's recipes, 2 in the official class).
        lr: learning rate of α, δ and β (weight decay 0, as every SSM parameter here; Mega's fairseq optimiser
            decays them with the rest); ``None`` = the global lr (as Mega trains), ``0.0`` = frozen.
        bidirectional: add an anti-causal EMA with its own α, δ, β, γ (no ``step`` then).
        device, dtype: of the parameters (float32 or float64).
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer)
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    lr = FixedOption(MARKS)
    bidirectional = FixedOption(SHAPES)

    zoo = ZooEntry(
        paper='arXiv 2209.10655',
        structure='diagonal',
        parametrisation='Ā = 1 - α ⊙ δ, B̄ = α ⊙ β, α, δ = sigmoid(·), real, N modes per channel (damped EMA)',
        discretisation='none (discrete time)',
        time_varying=False,
        stable_by_construction=True,
        stability='0 < 1 - αδ < 1 for every parameter value (α, δ ∈ (0, 1))',
        step_cost='O(H N)',
        sequence_cost='O(H N L) chunked scan; O(H N L + H L log L) kernel + FFT',
    )

    complex_modes = False
    backends = ("reference", "chunked", "fft", "native")

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        lr: float | None = None,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.lr = lr
        check_flag(bidirectional, "bidirectional")
        self.bidirectional = bidirectional
        check_positive_int(d_model, "d_model")
        check_positive_int(d_state, "d_state")
        check_lr(lr)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        shape = (2 if bidirectional else 1, d_model, d_state)  # (C, H, N): one row per direction
        register_ssm_parameter(self, "logit_alpha", torch.empty(shape, **factory), lr)  # α = σ(logit_alpha)
        register_ssm_parameter(self, "logit_delta", torch.empty(shape, **factory), lr)  # δ = σ(logit_delta)
        register_ssm_parameter(self, "beta", torch.empty(shape, **factory), lr)
        self.gamma = nn.Parameter(torch.empty(shape, **factory))
        self.D = nn.Parameter(torch.empty(d_model, **factory))  # ω, the paper's residual weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from the official initialisation (the only re-init path)."""
        shape = self.gamma.shape
        self.logit_alpha.copy_(torch.randn(shape, dtype=torch.float64) * 0.2)
        self.logit_delta.copy_(torch.randn(shape, dtype=torch.float64) * 0.2)
        signs = 1.0 - 2.0 * (torch.arange(self.d_state) % 2).to(torch.float64)  # +1, -1, +1, ...
        self.beta.copy_(signs + torch.randn(shape, dtype=torch.float64) * 0.02)
        self.gamma.copy_(torch.randn(shape, dtype=torch.float64))
        self.D.copy_(torch.randn(self.d_model, dtype=torch.float64))

    def directions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ā = 1 - αδ, B̄ = αβ and C = γ/√N of each direction: three (C, H, N) real tensors (C = 2 if bidirectional)."""
        alpha = torch.sigmoid(self.logit_alpha)  # (C, H, N)
        delta = torch.sigmoid(self.logit_delta)  # (C, H, N)
        return 1.0 - alpha * delta, alpha * self.beta, self.gamma / math.sqrt(self.d_state)

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ā (H, N), B̄ (H, N) and C (1, H, N) of the causal EMA, real."""
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        A_bar, B_bar, C = self.directions()
        return A_bar[0], B_bar[0], C[:1]

    def continuous(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The causal EMA as H SISO continuous-time systems in nominal time (a sampling period is 1), whose
        zero-order hold over a unit step is h_t = q h_{t-1} + αβ u_t (q = 1 − αδ): eigenvalues z = log q (H, N) and
        input vectors z/(q − 1) αβ = −z β/δ (H, N), both real values as complex (the bank's form), and steps Δ = 1
        (H,). z by the cancellation-free form of the module docstring; in double for a float32 layer. (The layer's
        own irregular sampling takes z and w = −β/δ apart: module docstring.)"""
        z, w, _ = self._irregular_modes()
        zeros = torch.zeros_like(z)
        return torch.complex(z, zeros), torch.complex(z * w, zeros), torch.ones_like(z[:, 0])  # (H, N), (H, N), (H,)

    def _irregular_modes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z = log q and w = −β/δ (H, N) real, in double for a float32 layer, and the read-out γ/√N (H, N) in the
        layer's dtype (module docstring)."""
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        a, d = widen(self.logit_alpha[0]), widen(self.logit_delta[0])  # (H, N) each
        w = -widen(self.beta[0]) * (1 + torch.exp(-d))  # (H, N): −β/δ, 1/δ = 1 + e^{−d}
        return log_q(a, d), w, self.gamma[0] / math.sqrt(self.d_state)

    def _forward_irregular(self, u, intervals, state, return_state: bool, backend: str):
        """The modes sampled at the gaps ``intervals`` (module docstring) by the backend's scan: (y, final state
        (B, H, N) real, or None)."""
        scan = dispatch("EMA irregular scan", _SCANS, backend, auto="native")
        with float32_core(u.device.type):
            z, w, C = self._irregular_modes()
            h0 = None if state is None else state.to(self.D.dtype)  # (B, H, N)
            y, h = scan(u, z, w, C, self.D, intervals, h0)
            return y, (h if return_state else None)

    def _step_irregular(self, u_t, interval, state):
        """One step after the gap ``interval`` (module docstring), real modes: (y_t (B, H), state (B, H, N))."""
        with float32_core(u_t.device.type):
            z, w, C = self._irregular_modes()
            return _step(u_t, interval, state.to(self.D.dtype), z, w, C, self.D)

    @property
    def n_modes(self) -> int:
        """N real modes per channel."""
        return self.d_state

    def _kernels(self, L: int, backend: str) -> torch.Tensor:
        """K_c,l = Σ_n C_c,n B̄_c,n Ā_c,n^l for each direction c, without the skip: (C, H, L)."""
        A_bar, B_bar, C = self.directions()
        n_dir, H, N = A_bar.shape
        K = vandermonde((C * B_bar).reshape(n_dir * H, N), A_bar.reshape(n_dir * H, N), L, backend=backend)  # (C·H, L)
        return K.reshape(n_dir, H, L)

    def _two_sided(self, u, A_bar, B_bar, C, backend, D):  # type: ignore[override]
        """y_t = Σ_{s≤t} K0[t-s] u_s + Σ_{s>t} K1[s-t-1] u_s + D u_t, each direction with its own Ā, B̄, C: one
        two-sided convolution (``reference``: loop kernel and loop convolution; ``fft``, and ``auto`` where the C
        kernel does not run), or two scans (``chunked``, ``native``, ``auto`` where the C kernel runs), the
        anti-causal one on the reversed input, delayed by one step."""
        backend = self._two_sided_backend(u, A_bar, backend)
        if backend not in ("chunked", "native"):
            kernel_backend = "reference" if backend == "reference" else "chunked"
            conv_backend = "reference" if backend == "reference" else "fft"
            return bidirectional_conv(u, self._kernels(u.shape[1], kernel_backend), backend=conv_backend) + D * u
        return two_sided_scans(u, *self.directions(), D, backend)  # each direction its own Ā, B̄, C

    def _kernel(self, L: int) -> torch.Tensor:
        """K_l = Σ_n (γ_n/√N) α_n β_n (1 - α_n δ_n)^l + ω δ_l: (H, L), or (2, H, L) when bidirectional."""
        backend = "reference" if get_backend() == "reference" else "chunked"  # kernel() is not a forward: any context
        K = with_skip(self._kernels(L, backend), self.D)  # (C, H, L)
        return K if self.bidirectional else K[0]

    def _state_space(self):
        """The layer as H real SISO systems with N states each (diagonal Ā), control convention:
        A = diag(Ā), B = B̄, C' = C Ā, D' = ω + Σ_n C_n B̄_n."""
        from ssmkit.analysis.statespace import StateSpace

        A_bar, B_bar, C = (t.detach().double().cpu() for t in self.discrete())
        C = C[0]
        return StateSpace(
            torch.diag_embed(A_bar).numpy(),  # (H, N, N)
            B_bar.unsqueeze(-1).numpy(),  # (H, N, 1)
            (C * A_bar).unsqueeze(-2).numpy(),  # (H, 1, N)
            (self.D.detach().double().cpu() + (C * B_bar).sum(-1)).reshape(-1, 1, 1).numpy(),  # (H, 1, 1)
            dt=1.0,
        )

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, bidirectional={self.bidirectional}"
        )
