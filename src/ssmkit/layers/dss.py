"""DSS: "Diagonal State Spaces are as Effective as Structured State Spaces", arXiv 2203.14343.

A bank of H SISO diagonal SSMs sharing M complex modes λ_n (no conjugate pairing: the output is the
real part, with no factor 2, so the real-equivalent state size is ``d_state`` = 2M). With separate
steps for the real and imaginary parts, Δλ := Δ_re Re λ + i Δ_im Im λ (1/λ uses the raw λ):

    DSS-exp (§3.2, Re λ = -exp(·)):   K_l = Re Σ_n W_n (e^{Δλ_n} - 1)/λ_n · e^{lΔλ_n}
    DSS-softmax (§3.2, Prop. 1):      K_l = Re Σ_n W_n (1/λ_n) e^{lΔλ_n} (e^{Δλ_n} - 1)/(e^{L_max Δλ_n} - 1)
    y = K ⊛ u + D u

Both are the diagonal recurrence x_t = e^{Δλ} x_{t-1} + u_t, y_t = Re(Σ_n W̃_n x_{t,n}) + D u_t with
W̃ the factor in front of e^{lΔλ}, which gives the step and the state-space views exactly.

Initialisation: λ = the eigenvalues with positive imaginary part of the skew part of HiPPO-LegS(2M),
minus ½ (shared by all channels); W real and imaginary parts each N(0, 1); D ~ N(0, 1);
log Δ ~ U[log dt_min, log dt_max] per channel, the same draw for the real and imaginary steps.

Choices (docs/design.md): the softmax normalisation length is fixed at ``l_max`` (the official code
normalises by the length of each input; the two agree when L = l_max). With it fixed the layer is a
genuine LTI system, so step, chunked forward and any length L work; a mode with Re(Δλ) > 0 makes the
recurrent state grow like e^{t Re Δλ}, which stays finite while l_max·Re(Δλ) < 88 (float32).
The official 1/(λ(e^{LΔλ} - 1)) is regularised as conj(x)/(|x|² + 1e-7); we keep that.
"""

from __future__ import annotations


import torch
from torch import nn

from ssmkit.layers.base import (
    DiagonalLTILayer,
    check_choice,
    check_dt_range,
    check_even_state,
    check_length,
    log_uniform_log_dt,
    register,
    register_ssm_parameter,
)
from ssmkit.ops.hippo import dss_eigenvalues

VERSIONS = ("exp", "softmax")


@register("dss")
class DSS(DiagonalLTILayer):
    """Diagonal state space layer (DSS), arXiv 2203.14343.

    Args:
        d_model: H, the number of channels (one SISO system each).
        d_state: real-equivalent state size N = 2M for M complex modes (the paper's N is M:
            its default N = 64 is ``d_state=128``); even.
        version: ``"exp"`` -- Re λ = -exp(·), plain ZOH kernel (DSS-exp); ``"softmax"`` -- λ free,
            kernel normalised over the length ``l_max`` (DSS-softmax; needs ``l_max``).
        l_max: normalisation length of DSS-softmax (ignored by DSS-exp).
        dt_min, dt_max: range of the log-uniform initial step size Δ.
        separate_dt: separate steps for the real and imaginary parts of λ (the paper's default).
        lr: learning rate of Δ, λ and W (weight decay 0, as in the official code); ``None`` =
            the global lr, ``0.0`` = frozen.
        bidirectional: add an anti-causal kernel with its own W (no ``step`` then).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
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
        self.separate_dt = separate_dt
        self.lr = lr
        self.bidirectional = bidirectional
        check_length(d_model, "d_model")
        check_even_state(d_state, "2 x the number of complex modes")
        check_choice(version, VERSIONS, "version")
        if version == "softmax":
            if l_max is None:
                raise ValueError("version='softmax' normalises the kernel over l_max: give l_max (an int >= 1)")
            check_length(l_max, "l_max")
        check_dt_range(dt_min, dt_max)
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        H, M = d_model, d_state // 2
        register_ssm_parameter(self, "log_dt", torch.empty(H, 2 if separate_dt else 1, **factory), lr)
        # DSS-exp stores log(-Re λ); DSS-softmax stores Re λ itself (it may become positive).
        register_ssm_parameter(self, "Lambda_real", torch.empty(M, **factory), lr)
        register_ssm_parameter(self, "Lambda_imag", torch.empty(M, **factory), lr)
        register_ssm_parameter(self, "W", torch.empty(2 if bidirectional else 1, H, M, 2, **factory), lr)
        self.D = nn.Parameter(torch.empty(H, **factory))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from the initialisation of the paper (the only re-init path)."""
        Lambda = dss_eigenvalues(self.d_state // 2)  # (M,) complex128
        self.Lambda_real.copy_(torch.log(-Lambda.real) if self.version == "exp" else Lambda.real)
        self.Lambda_imag.copy_(Lambda.imag)
        log_dt = log_uniform_log_dt((self.d_model, 1), self.dt_min, self.dt_max)  # one draw for re and im
        self.log_dt.copy_(log_dt.expand_as(self.log_dt))
        self.W.copy_(torch.randn(self.W.shape, dtype=torch.float64))
        self.D.copy_(torch.randn(self.d_model, dtype=torch.float64))

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ā = e^{Δλ} (H, M), B̄ = 1 (H, M), and W̃ (C, H, M), all complex."""
        re = -torch.exp(self.Lambda_real) if self.version == "exp" else self.Lambda_real
        Lambda = torch.complex(re, self.Lambda_imag)  # (M,)
        dt = torch.exp(self.log_dt)  # (H, 2) or (H, 1)
        dt_re, dt_im = dt[:, :1], dt[:, -1:]  # (H, 1) each
        dtLambda = torch.complex(dt_re * re, dt_im * self.Lambda_imag)  # (H, M)
        A_bar = torch.exp(dtLambda)  # (H, M)
        W = torch.view_as_complex(self.W)  # (C, H, M)
        if self.version == "exp":
            W_tilde = W * (A_bar - 1) / Lambda  # (C, H, M)
        else:
            x = Lambda * (torch.exp(self.l_max * dtLambda) - 1)  # (H, M): λ (e^{L Δλ} - 1)
            W_tilde = W * (A_bar - 1) * x.conj() / (x.abs() ** 2 + 1e-7)  # (C, H, M)
        return A_bar, torch.ones_like(A_bar), W_tilde

    @property
    def n_modes(self) -> int:
        """M = d_state / 2 complex modes per channel."""
        return self.d_state // 2

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, version={self.version!r}, "
            f"l_max={self.l_max}, bidirectional={self.bidirectional}"
        )
