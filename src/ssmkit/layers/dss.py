"""DSS: "Diagonal State Spaces are as Effective as Structured State Spaces", arXiv 2203.14343.

A bank of H SISO diagonal SSMs sharing M complex modes λ_n (no conjugate pairing: the output is the real part, with
no factor 2, so the real-equivalent state size is ``d_state`` = 2M). With separate steps for the real and imaginary
parts, z_n := Δ_re Re λ_n + i Δ_im Im λ_n (and 1/λ uses the raw λ):

    DSS-exp (§3.2, Re λ = -exp(·)):   K_l = Re Σ_n W_n (e^{z_n} - 1)/λ_n · e^{l z_n}
    DSS-softmax (§3.2, Prop. 1):      K_l = Re Σ_n W_n (1/λ_n) e^{l z_n} (e^{z_n} - 1)/(e^{L_max z_n} - 1)
    y = K ⊛ u + D u

Both are the diagonal recurrence x_t = e^{z} x_{t-1} + u_t, y_t = Re(Σ_n W̃_n x_{t,n}) + D u_t with W̃ the factor in
front of e^{l z}, which gives the step and the state-space views exactly. e^{z} - 1 is evaluated as z·φ(z) with
φ(z) = (e^z - 1)/z by its series near 0 (the direct difference loses every digit as Δ → 0: at Δ = 1e-6 a float32
kernel was 0.5-6 % off the float64 one; with φ it stays at float32 rounding). A float32 layer forms Δ, z and both
factors in double and rounds e^z and W̃ once (:meth:`DSS.discrete`): at fast poles (|Im z| ~ 10³) a float32 z put
|Im z|·6e-8 into the phase of e^z (∂log Δ was 2.7e-4 off its float64 value, now 1e-7).

Initialisation: λ = the eigenvalues with positive imaginary part of the skew part of HiPPO-LegS(2M), minus ½
(shared by all channels); W real and imaginary parts each N(0, 1); D ~ N(0, 1); log Δ ~ U[log dt_min, log dt_max]
per channel, the same draw for the real and imaginary steps.

Choices (docs/design.md): the softmax normalisation length is fixed at ``l_max`` (the official code normalises by
the length of each input; the two agree when L = l_max). With it fixed the layer is a genuine LTI system, so step,
chunked forward and any length L work; a mode with Re(z) > 0 makes the recurrent state grow like e^{t Re z}, which
stays finite while l_max·Re(z) < 88 (float32). The official 1/(λ(e^{L z} - 1)) is regularised as
conj(x)/(|x|² + 1e-7); we keep that, evaluated without forming |x|² when |x| > 1 (it overflows float32 at
l_max·Re(z) > 44). W is trained like S4D's C and S4's C̃ (global lr and weight decay; the official
DSS gives it lr 1e-3 and no decay), so that swapping the layer name compares like with like.

Non-finite inputs spread from the first bad step (step, reference), from the start of its 64-step chunk (chunked
scan) or over the whole sequence (FFT path).
"""

from __future__ import annotations

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
    check_even_state,
    check_flag,
    check_length,
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
from ssmkit.ops._checks import COMPLEX_OF
from ssmkit.ops.discretize import exp_phi, widen
from ssmkit.ops.hippo import dss_eigenvalues
from ssmkit.ops.irregular_bank import bank_irregular_scan, bank_irregular_step

VERSIONS = ("exp", "softmax")
_SOFTMAX_EPS = 1e-7  # the official regulariser of 1/(λ(e^{L z} - 1))


def _regularised_reciprocal(x: torch.Tensor) -> torch.Tensor:
    """conj(x)/(|x|² + 1e-7) elementwise, without forming |x|² where it would overflow.

    For |x| > 1 it is evaluated as (conj(x)/|x|)/(|x| + 1e-7/|x|), the same number: a growing DSS-softmax mode has
    |x| ~ e^{L Re z}, whose square overflows once L·Re(z) > 354 (double; a float32 layer forms this factor in double
    too, see ``discrete``), which made its W̃ (and its whole part of the kernel) exactly 0 while the state itself
    stays finite up to L·Re(z) < 709. Each branch sees only inputs where it is finite, so the unused one gives no NaN
    gradient.
    """
    s = x.abs()
    big = s > 1
    s_big = torch.where(big, s, torch.ones_like(s))
    x_big = torch.where(big, x, torch.ones_like(x))
    s_small = torch.where(big, torch.zeros_like(s), s)
    x_small = torch.where(big, torch.zeros_like(x), x)
    large = (x_big.conj() / s_big) / (s_big + _SOFTMAX_EPS / s_big)
    return torch.where(big, large, x_small.conj() / (s_small**2 + _SOFTMAX_EPS))


@register("dss")
class DSS(IrregularSampling, DiagonalLTILayer):
    """Diagonal state space layer (DSS), arXiv 2203.14343.

    Args:
        d_model: H, the number of channels (one SISO system each).
        d_state: real-equivalent state size N = 2M for M complex modes (the paper's N counts complex modes: its
            N = 64 is ``d_state=128``); even. The default 64 matches S4 and S4D.
        version: ``"exp"`` -- Re λ = -exp(·), plain ZOH kernel (DSS-exp); ``"softmax"`` -- λ free, kernel
            normalised over the length ``l_max`` (DSS-softmax; needs ``l_max``).
        l_max: normalisation length of DSS-softmax (ignored by DSS-exp).
        dt_min, dt_max: range of the log-uniform initial step size Δ.
        separate_dt: separate steps for the real and imaginary parts of λ (the paper's default).
        lr: learning rate of Δ and λ (weight decay 0); ``None`` = the global lr, ``0.0`` = frozen.
        bidirectional: add an anti-causal kernel with its own W (no ``step`` then).
        device, dtype: of the parameters (dtype real: float32 or float64).

    Parameters: ``log_dt`` (H, 2) (log Δ of Re λ, then of Im λ) or (H, 1) (one Δ); ``log_A_real`` (M,) =
    log(-Re λ) for DSS-exp, ``A_real`` (M,) = Re λ for DSS-softmax (it may turn positive); ``A_imag`` (M,); ``W``
    (C, H, M, 2) (complex as a real pair); ``D`` (H,).
    """

    zoo = ZooEntry(
        paper="arXiv 2203.14343",
        structure="diagonal",
        parametrisation="λ complex, shared by the channels; exp: Re λ = -exp(·); softmax: Re λ free",
        discretisation="ZOH-like e^{Δλ}, separate Δ for Re and Im (kernel normalised by the softmax over l_max)",
        time_varying=False,
        stable_by_construction=False,
        stability="exp (default): Hurwitz, Re λ = -exp(·) < 0; softmax: Re λ is unconstrained (growing modes allowed)",
        step_cost="O(H N)",
        sequence_cost="O(H N L) chunked scan; O(H N L + H L log L) kernel + FFT",
    )

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer); l_max: DSS-softmax's kernel is normalised over it (the step's cache too)
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    version = FixedOption(ATTUNED)
    l_max = FixedOption("the kernel is normalised over")
    dt_min = FixedOption(DRAWN)
    dt_max = FixedOption(DRAWN)
    separate_dt = FixedOption(SHAPES)
    lr = FixedOption(MARKS)
    bidirectional = FixedOption(SHAPES)

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        version: str = "exp",
        l_max: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        separate_dt: bool = True,
        lr: float | None = 1e-3,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.version = version
        self.l_max = l_max
        self.dt_min = dt_min
        self.dt_max = dt_max
        check_flag(separate_dt, "separate_dt")
        self.separate_dt = separate_dt
        self.lr = lr
        check_flag(bidirectional, "bidirectional")
        self.bidirectional = bidirectional
        check_positive_int(d_model, "d_model")
        check_even_state(d_state, "2 x the number of complex modes")
        check_choice(version, VERSIONS, "version")
        if version == "softmax" and l_max is None:
            raise ValueError("version='softmax' normalises the kernel over l_max: give l_max (an int >= 1)")
        if l_max is not None:  # checked for DSS-exp too, which ignores it: a bad value is a mistake either way
            check_length(l_max, "l_max")
        check_dt_range(dt_min, dt_max)
        check_lr(lr)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        H, M = d_model, d_state // 2
        register_ssm_parameter(self, "log_dt", torch.empty(H, 2 if separate_dt else 1, **factory), lr)
        real_name = "log_A_real" if version == "exp" else "A_real"
        register_ssm_parameter(self, real_name, torch.empty(M, **factory), lr)
        register_ssm_parameter(self, "A_imag", torch.empty(M, **factory), lr)
        self.W = nn.Parameter(torch.empty(2 if bidirectional else 1, H, M, 2, **factory))
        self.D = nn.Parameter(torch.empty(H, **factory))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from the initialisation of the paper (the only re-init path)."""
        Lambda = dss_eigenvalues(self.d_state // 2)  # (M,) complex128
        if self.version == "exp":
            self.log_A_real.copy_(torch.log(-Lambda.real))
        else:
            self.A_real.copy_(Lambda.real)
        self.A_imag.copy_(Lambda.imag)
        log_dt = log_uniform_log_dt((self.d_model, 1), self.dt_min, self.dt_max)  # one draw for re and im
        self.log_dt.copy_(log_dt.expand_as(self.log_dt))
        self.W.copy_(torch.randn(self.W.shape, dtype=torch.float64))
        self.D.copy_(torch.randn(self.d_model, dtype=torch.float64))

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ā = e^{z} (H, M), B̄ = 1 (H, M), and W̃ (C, H, M), all complex.

        DSS-exp: W̃ = W (e^z - 1)/λ = W φ(z) (z/λ); DSS-softmax: W̃ = W (e^z - 1) conj(x)/(|x|² + 1e-7) with
        x = λ (e^{L z} - 1) = λ L z φ(L z), L = l_max; φ(z) = (e^z - 1)/z evaluated stably near 0.

        For a float32 layer Δ = e^{log Δ}, z = Δλ and everything read from z are formed in double and Ā and W̃ rounded
        once (:func:`ssmkit.ops.discretize.widen`, as S5 and the zero-order hold): e^z turns an absolute error of z
        into a relative one of Ā, and a float32 Δ or z is off by |Im z|·6e-8 (10³ at fast poles). Re λ = -e^a and
        λ itself stay in single precision: their rounding moves z by |z|·6e-8 relative, as Ā's own rounding.
        """
        _, A_bar, _, W_tilde = self._exponentials()
        dtype = COMPLEX_OF[self.W.dtype]
        if A_bar.dtype != dtype:  # rounded once to the layer's precision
            A_bar, W_tilde = A_bar.to(dtype), W_tilde.to(dtype)
        return A_bar, torch.ones_like(A_bar), W_tilde

    def _exponentials(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """z, e^z, φ(z) (H, M) and W̃ (C, H, M) in Δ's precision (double for a float32 layer), from one e^z: what
        :meth:`discrete` and the irregular path (:meth:`_irregular_system`) read."""
        self._check_parameter_dtype()  # float32/float64 only, as forward: a clear ValueError for .half() weights
        Lambda, z = self._eigenvalues()
        A_bar, phi_z = exp_phi(z)  # (H, M) each: e^z, φ(z) (one C call on the CPU)
        W = complex_pairs(self.W)  # (C, H, M)
        if self.version == "exp":
            W_tilde = W * phi_z * (z / Lambda)  # (C, H, M): W (e^z - 1)/λ
        else:
            A_bar_minus_1 = z * phi_z  # (H, M): e^z - 1 without cancellation
            W_tilde = W * A_bar_minus_1 * self._softmax_factor(Lambda, z)  # (C, H, M)
        return z, A_bar, phi_z, W_tilde

    def _eigenvalues(self) -> tuple[torch.Tensor, torch.Tensor]:
        """λ (M,) and z (H, M) = Δ_re Re λ + i Δ_im Im λ (Δ and z in double for a float32 layer)."""
        re = -torch.exp(self.log_A_real) if self.version == "exp" else self.A_real  # (M,)
        parts = torch.stack([re, self.A_imag], -1)  # (M, 2): Re λ, Im λ
        # Δ of Re λ and of Im λ (float64 for a float32 layer), contiguous: the product below must have pairs of stride
        # 1 for view_as_complex whatever log Δ's layout (no op where it is contiguous already). One product of
        # (H, 1, 2) steps and (M, 2) parts, not two products of slices and torch.complex: tests/perf counts the ops.
        dt = torch.exp(widen(self.log_dt)).contiguous()  # (H, 2) or (H, 1)
        return torch.view_as_complex(parts), torch.view_as_complex(dt[:, None] * parts)  # (M,), (H, M)

    def _softmax_factor(self, Lambda: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """DSS-softmax's normalisation 1/(λ (e^{L z} − 1)), regularised (:func:`_regularised_reciprocal`), L = l_max."""
        Lz = self.l_max * z  # (H, M)
        return _regularised_reciprocal(Lambda * Lz * exp_phi(Lz)[1])  # x = λ (e^{L z} - 1)

    def continuous(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer as H SISO continuous-time systems in nominal time (a sampling period is 1) in the coordinates of
        its state, whose zero-order hold over a unit step is the layer's recurrence x_t = e^z x_{t-1} + u_t (read out
        by W̃, :meth:`discrete`): eigenvalues z (H, M), input vectors B = z/(e^z − 1) = 1/φ(z) (H, M) (so that the
        ZOH's (e^z − 1) B/z is 1) and steps Δ = 1 (H,). In double for a float32 layer (as :meth:`discrete` forms z)."""
        return self._irregular_system()[:3]

    def _irregular_system(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`continuous`'s z, 1/φ(z), Δ = 1 and the causal output W̃ (H, M) of :meth:`discrete` (rounded as
        there), from one e^z."""
        z, _, phi_z, W_tilde = self._exponentials()
        ones = torch.ones(z.shape[0], dtype=z.real.dtype, device=z.device)  # (H,)
        return z, 1 / phi_z, ones, W_tilde[0].to(COMPLEX_OF[self.W.dtype])

    def _forward_irregular(self, u, intervals, state, return_state: bool, backend: str):
        """The bank sampled at the gaps ``intervals`` (:mod:`ssmkit.ops.irregular_bank`), in the layer's own state
        coordinates (x_t = e^{τ z} x_{t-1} + (e^{τ z} − 1)/(e^z − 1) u_t, read out by W̃): (y, final state)."""
        with float32_core(u.device.type):
            z, B, dt, W_tilde = self._irregular_system()  # (H, M), (H, M), (H,), (H, M)
            return bank_irregular_scan(u, z, B, W_tilde, dt, intervals, self.D, "zoh", state,
                                       return_state=return_state, backend=backend)

    def _step_irregular(self, u_t, interval, state):
        """One step after the gap ``interval`` (:func:`ssmkit.ops.irregular_bank.bank_irregular_step`)."""
        with float32_core(u_t.device.type):
            z, B, dt, W_tilde = self._irregular_system()
            return bank_irregular_step(u_t, z, B, W_tilde, dt, interval, state, self.D, "zoh")

    @property
    def n_modes(self) -> int:
        """M = d_state / 2 complex modes per channel."""
        return self.d_state // 2

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, version={self.version!r}, "
            f"l_max={self.l_max}, bidirectional={self.bidirectional}"
        )
