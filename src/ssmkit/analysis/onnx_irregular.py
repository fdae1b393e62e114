"""The LTI layers in real arithmetic at irregular sampling times, for the ONNX exports' ``intervals=True``.

A layer that takes intervals (:mod:`ssmkit.layers.irregular`) samples its continuous-time system at each step's own
gap τ (in nominal sampling periods). Its exported regular realisation (``layer.state_space()``, :mod:`ssmkit.analysis.
onnx_export`) holds only the samples at τ = 1, so the graphs built here hold the continuous-time parameters instead,
and form every step's coefficients from the gap in real arithmetic (ONNX has no complex tensors):

- **Modal and diagonal layers** (S4D arXiv 2206.11893, DSS arXiv 2203.14343, DLR arXiv 2212.00768, S5 arXiv
  2208.04933, LRU arXiv 2303.06349, Mega's EMA arXiv 2209.10655): `RealIrregularModes`. Per group g (a channel of a
  bank, or the one MIMO system) and mode k, μ = Δ Λ (the log-eigenvalue per nominal period: Δ the layer's step, Λ its
  continuous eigenvalue; z = log λ for the layers defined in discrete time, Δ = 1), and the gap τ:

      ZOH:      Ā_τ = e^{τμ} = e^{τ Re μ} (cos τ Im μ + i sin τ Im μ),   B̄_τ = (e^{τμ} − 1) W,   W = B/Λ
      bilinear: Ā_τ = (1 + τμ/2)/(1 − τμ/2),                           B̄_τ = τ/(1 − τμ/2) W,   W = Δ B
      x_t = Ā_τ ⊙ x_{t-1} + B̄_τ u_t,   y_t = Re(C x_t) + D u_t

  (the layer's own rule, as :func:`ssmkit.ops.irregular.irregular_discretize` and
  :mod:`ssmkit.ops.irregular_bank` form them; τ = 1 gives the layer's Ā and B̄, which the constructor checks). The
  coefficients are formed in the graph's dtype, but for a float32 graph the phase τ Im μ is formed in float64 and
  reduced modulo 2π before its cosine and sine, and e^{τμ} − 1 without cancellation (`modal_coefficients`). The
  recurrence uses only products and sums of them (no division by a decay), so gaps of any size are exact: a huge gap
  underflows e^{τ Re μ} to 0.
- **S4** (arXiv 2111.00396, the DPLR A = Λ − P P*): `RealIrregularDPLR`, the bilinear step with its own
  Δ_t = Δ τ by the Woodbury form of :mod:`ssmkit.ops.irregular_dplr` (the r × r inverse in closed form, r ≤ 2),
  in float64 as S4's step, the state kept in float64 across a sequence and rounded once at the end (as S4's forward).

The whole sequence is an ONNX ``Scan`` over time whose body is that step (:func:`ssmkit.ops.symbolic.scan`), so a
step graph run over a record is the sequence graph, op for op. The regular graph's chunked GEMMs do not carry over:
the time-varying Ā_t breaks their Toeplitz structure. A chunked form of the diagonal recurrence (the two-level scan of
:mod:`ssmkit.ops.recurrence` in real-imaginary pairs) materialised the (B, L, G, M) coefficients and ran 2-7x slower
than this Scan in onnxruntime (one thread, S4D at H 64, N 64, L 4096, both forming the coefficients in float64:
870 ms against 383 ms at B 1, 10 s against 1.5 s at B 8), its element-wise passes over tensors of that size costing
more than the Scan's ~23 µs a step on tensors that stay in cache. Measured (onnxruntime 1.32, one thread, L 4096,
one block): the sequence graph with intervals takes 0.1-0.2 s at B 1 (S4D H 64 N 64: 216 ms, the regular graph 6.6 ms
and the PyTorch layer with intervals 21 ms; S4D H 16 N 16: 98 ms against 1.3 ms) and 22x the regular graph at B 8 (S5
H 64 N 64: 5.5x); one step of the step graph costs what the regular one does (35 against 35 µs, S4D H 16 N 16).

The states are those of the regular graphs (`RealLTIStep`'s layout: (B, G, M, 2) modal, (B, G, n) diagonal, S4's
(B, H, N) in the basis [Re x, Im x]), so `ssmkit.analysis.onnx_state` maps a ``forward`` state onto either graph.
A zero or negative gap is not refused inside a graph (a graph cannot raise): `OnnxExport.feed` checks the gaps
before a run.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ssmkit.analysis.onnx_export import RealState
from ssmkit.ops.irregular import zoh_exp_parts
from ssmkit.ops.irregular_discrete import check_no_unit_mode
from ssmkit.ops.symbolic import scan, symbolic_length

__all__ = ["ContinuousModes", "RealIrregularDPLR", "RealIrregularModes", "continuous_modes", "dplr_step",
           "irregular_model", "modal_coefficients", "modal_step", "require_irregular_export"]

_F64 = torch.float64


class ContinuousModes(NamedTuple):
    """A modal or diagonal layer's continuous-time system per group, in the coordinates of its state (module
    docstring).

    Fields:
        mu: (G, M) complex128, μ = Δ Λ: the log-eigenvalue of each mode per nominal sampling period.
        W: (G, M, m) complex128, the input weights: B̄_τ = E(τ) W (E = e^{τμ} − 1 under ZOH, τ/(1 − τμ/2) bilinear).
        C: (G, p, M) complex128, the output matrix: y = Re(C x) + D u.
        D: (G, p, m) float64, the skip.
        rule: ``"zoh"`` or ``"bilinear"``.
        real: whether the modes and the state are real (Mega's EMA).
    """

    mu: torch.Tensor
    W: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    rule: str
    real: bool


def require_irregular_export(model: nn.Module) -> None:
    """Raise ``ValueError`` unless every sequence layer of ``model`` takes sampling intervals and is causal: what an
    export with ``intervals=True`` needs (the layer named, and the layers that do take them).

    Args:
        model: a SequenceModel, a DeepWiener or a WienerEnsemble.
    """
    from ssmkit.analysis.onnx_export import _outer_layers
    from ssmkit.layers.irregular import require_intervals

    layers = _outer_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no sequence layer: nothing to export with intervals")
    for name, layer in layers:
        try:
            require_intervals(layer)
        except ValueError as err:
            raise ValueError(f"intervals=True: layer {name!r}: {err}") from None
        if getattr(layer, "bidirectional", False):
            raise ValueError(f"intervals=True: layer {name!r} ({type(layer).__name__}) is bidirectional, which takes no "
                             "intervals (no step either)")


def continuous_modes(layer: nn.Module) -> ContinuousModes:
    """The continuous-time modes of a diagonal (bank) or MIMO diagonal layer, from its ``continuous()`` (Λ, B, Δ),
    ``discrete()`` (the output C) and ``D``, checked against its sampled realisation: the samples at τ = 1 must be
    the layer's own Ā and B̄ (to 1e-5 relative), else ``NotImplementedError``.

    A bank (S4D, DSS, DLR, EMA: Λ, B (H, M), Δ (H,)) gives G = H groups of one input and output; a MIMO system (S5, LRU:
    Λ (M,), B (M, H), Δ (M,)) one group of H inputs and outputs. The rule is the layer's ``discretization`` where it
    has one (S4D, S5), else ZOH (the layers read as the unit-step ZOH of their log-eigenvalues).

    Args:
        layer: the layer (causal, ``takes_intervals``).

    Returns:
        its :class:`ContinuousModes`.
    """
    from ssmkit.layers.protocol import float32_core

    name = type(layer).__name__
    if not (hasattr(layer, "continuous") and hasattr(layer, "discrete")):
        raise NotImplementedError(f"{name} has no continuous() and discrete() to export its irregular sampling from")
    rule = getattr(layer, "discretization", "zoh")
    rule = rule if rule in ("zoh", "bilinear") else "zoh"
    with torch.no_grad(), float32_core(layer.state_device().type):
        Lambda, B, dt = (t.detach().cpu() for t in layer.continuous())
        A_bar, B_bar, C = (t.detach().cpu() for t in layer.discrete())
    Lambda, B = Lambda.to(torch.complex128), B.to(torch.complex128)
    dt, C = dt.to(_F64), C[0].to(torch.complex128)
    D = layer.D.detach().cpu().to(_F64)
    if Lambda.dim() == 2:  # a bank: G = H channels, one input and output each
        mu = dt[:, None] * Lambda  # (H, M)
        W = (B / Lambda if rule == "zoh" else dt[:, None] * B)[..., None]  # (H, M, 1)
        C_g, D_g = C[:, None, :], D[:, None, None]  # (H, 1, M), (H, 1, 1)
        A_want, B_want = A_bar, B_bar  # (H, M) each
    else:  # one MIMO system: G = 1
        mu = (dt * Lambda)[None]  # (1, M)
        W = (B / Lambda[:, None] if rule == "zoh" else dt[:, None] * B)[None]  # (1, M, H)
        C_g, D_g = C[None], torch.diag(D)[None]  # (1, H, M), (1, H, H)
        A_want, B_want = A_bar[None], B_bar[None]  # (1, M), (1, M, H)
    if rule == "zoh":  # (e^{τμ} − 1) B/Λ: no mode at λ = 1
        check_no_unit_mode(mu, name)
    modes = ContinuousModes(mu, W, C_g, D_g, rule, not getattr(layer, "complex_modes", True))
    A_one, E_one = _complex_coefficients(modes, torch.ones((), dtype=_F64))  # (G, M) each: τ = 1
    B_one = E_one[..., None] * W  # (G, M, m)
    B_want = B_want.reshape(B_one.shape).to(torch.complex128)
    for what, got, want in (("Ā", A_one, A_want.to(torch.complex128)), ("B̄", B_one, B_want)):
        if float((got - want).abs().max()) > 1e-5 * float(want.abs().max()) + 1e-12:
            raise NotImplementedError(
                f"{name}'s continuous() does not reproduce its discrete() {what} at τ = 1 (off by "
                f"{float((got - want).abs().max()):.3g}): its irregular sampling cannot be exported from them"
            )
    return modes


def _complex_coefficients(modes: ContinuousModes, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ā_τ and E(τ) (..., G, M) complex128 of the gaps ``tau`` (...) by the rule (for the constructor's check)."""
    z = tau[..., None, None] * modes.mu
    if modes.rule == "zoh":
        A_re, A_im, E_re = zoh_exp_parts(z.real, z.imag)
        return torch.complex(A_re, A_im), torch.complex(E_re, A_im)
    return (1 + z / 2) / (1 - z / 2), tau[..., None, None] / (1 - z / 2)


def modal_coefficients(
    tau: torch.Tensor, mu_re: torch.Tensor, mu_im: torch.Tensor, rule: str, turns: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re Ā_τ, Im Ā_τ, Re E(τ), Im E(τ) in real arithmetic (module docstring), in ``mu_re``'s dtype.

    ZOH: Ā = e^{τ Re μ}(cos φ, sin φ), φ = τ Im μ, and E = e^{τμ} − 1 without cancellation, Re E =
    expm1(τ Re μ) cos φ − 2 sin²(φ/2), Im E = Im Ā (as :func:`ssmkit.ops.irregular.zoh_exp_parts`; expm1 by
    `_expm1`). Given ``turns`` = Im μ/2π in float64 (a float32 graph), φ is formed from τ·turns less its nearest
    integer, in float64, then rounded: a float32 product τ Im μ is off by |φ|·6e-8, which cos and sin turn into an
    absolute error (3e-5 at φ = 500, a gap of 50 at Im μ = 10). The period is read from ``turns``, not written as a
    float64 constant: the ONNX exporter stores a Python float that multiplies a float64 tensor rounded to float32
    (2π as 6.2831854820, off by 1.7e-7 a turn: DLR's float32 graph drifted 1e-5 from its float64 layer in 150
    steps). Ā − 1 for E is off by one rounding of 1, which W = B/Λ magnifies by 1/|Λ| at a slow mode (the same
    graph then 5e-6 off; 8.5e-7 with both, its regular graph 1.1e-6). Bilinear: with d = 1 − τμ/2,
    Ā = (1 + τμ/2)/d and E = τ/d, by 1/d = conj(d)/|d|².

    Args:
        tau: (...) real gaps (0 gives Ā = 1, E = 0: a step that holds the state).
        mu_re: (G, M) Re μ, in the dtype of the result.
        mu_im: (G, M) Im μ, that dtype.
        rule: ``"zoh"`` or ``"bilinear"``.
        turns: (G, M) float64 Im μ/2π for the phase of a ZOH, or None (φ = τ Im μ in the result's dtype).

    Returns:
        the four parts, each (..., G, M).
    """
    dtype = mu_re.dtype
    t = tau.to(dtype)[..., None, None]  # (..., 1, 1)
    x = t * mu_re  # (..., G, M)
    if turns is not None and rule == "zoh":  # the fraction of a turn, exact in float64, then rounded once
        k = tau.to(turns.dtype)[..., None, None] * turns
        y = (k - torch.round(k)).to(dtype) * (2 * math.pi)
    else:
        y = t * mu_im
    if rule == "zoh":
        ex, cos = torch.exp(x), torch.cos(y)
        a_re, a_im = ex * cos, ex * torch.sin(y)
        return a_re, a_im, _expm1(x, ex) * cos - 2 * torch.sin(y / 2).square(), a_im
    d_re, d_im = 1 - x / 2, -y / 2
    norm = d_re * d_re + d_im * d_im
    q_re, q_im = d_re / norm, -d_im / norm  # 1/d
    n_re, n_im = 1 + x / 2, y / 2
    return n_re * q_re - n_im * q_im, n_re * q_im + n_im * q_re, t * q_re, t * q_im


def _expm1(x: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
    """e^x − 1 to a few roundings for every real x, with ONNX's ops (which have no Expm1; onnxruntime has no float64
    Sinh), given ex = e^x: where |x| < 1/2 Kahan's (e^x − 1)·x/log(e^x), which cancels the rounding of e^x (x itself
    where e^x rounds to 1), elsewhere e^x − 1, which has no cancellation there (Kahan's form everywhere read a
    denormal e^x of a few bits: 4e-4 off at x = −100 in float32).

    Args:
        x: real tensor.
        ex: e^x, x's shape.

    Returns:
        e^x − 1, x's shape.
    """
    small = x.abs() < 0.5
    w = torch.where(small, ex, torch.full_like(ex, 2.0))  # off the branch: log finite and nonzero
    kahan = torch.where(w == 1, x, (w - 1) * x / torch.log(w))  # (0/0 at w = 1: replaced)
    return torch.where(small, kahan, ex - 1)


class RealIrregularModes(RealState, nn.Module):
    """A modal or diagonal LTI layer at irregular sampling times in real arithmetic: ``step(x_t, state, interval=)``
    and ``forward(x, state, return_state, intervals=)`` (module docstring), states in `RealLTIStep`'s layout.

    Args:
        layer: the layer (read once; not kept): S4D, DSS, DLR, EMA, S5, LRU, causal.
        dtype: real dtype of the state and of the coefficients (float32 or float64).
    """

    takes_intervals = True
    bidirectional = False

    def __init__(self, layer: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from ssmkit.analysis.onnx_export import RealLTIStep

        modes = continuous_modes(layer)
        regular = RealLTIStep(layer.state_space(), dtype=torch.float64)
        G, M, m = modes.W.shape
        p = modes.C.shape[1]
        n_real = M if modes.real else 2 * M
        if regular.kind == "dense" or regular.state_shape() not in ((G, M, 2), (G, n_real)):
            raise NotImplementedError(f"{type(layer).__name__}'s realisation ({regular.kind}, state "
                                      f"{regular.state_shape()}) is not the modal form of its continuous modes")
        self.kind, self._shape, self.real = regular.kind, regular.state_shape(), modes.real
        self.G, self.M, self.m, self.p = G, M, m, p
        self.d_model, self.rule, self.dtype = G * m, modes.rule, dtype
        self.register_buffer("turns", (modes.mu.imag / (2 * math.pi)).contiguous().to(layer.state_device())
                             if dtype != _F64 and modes.rule == "zoh" else None)
        for name, value, kind in (("mu_re", modes.mu.real, dtype), ("mu_im", modes.mu.imag, dtype),
                                  ("W_re", modes.W.real, dtype), ("W_im", modes.W.imag, dtype),
                                  ("C_re", modes.C.real, dtype), ("C_im", modes.C.imag, dtype),
                                  ("D", modes.D, dtype)):
            # a storage of its own: Re and Im of one complex tensor, each a single element, were one storage (a real
            # view of a size-1 tensor is contiguous), which the scan op refused as aliased inputs
            self.register_buffer(name, value.to(kind).clone(memory_format=torch.contiguous_format)
                                 .to(layer.state_device()))

    def state_shape(self) -> tuple[int, ...]:
        """The state of one sequence, as `RealLTIStep`'s: (G, M, 2) modal, (G, n) diagonal."""
        return self._shape

    def _pairs(self, state: torch.Tensor) -> torch.Tensor:
        """A state in the graph's layout as (Re x, Im x) pairs (B, G, M, 2) (Im x = 0 for real modes)."""
        s = state.to(self.dtype)
        if self.real:
            return torch.stack([s, torch.zeros_like(s)], dim=-1)
        return s.reshape(s.shape[0], self.G, self.M, 2)  # the diagonal layout (Re x_1, Im x_1, Re x_2, ...) too

    def _state(self, pairs: torch.Tensor) -> torch.Tensor:
        """The graph's state layout (B, *state_shape()) of (Re x, Im x) pairs (B, G, M, 2)."""
        if self.real:
            return pairs[..., 0]
        return pairs.reshape((pairs.shape[0],) + self._shape)

    def _constants(self) -> tuple[torch.Tensor, ...]:
        """The buffers `modal_step` reads, in its order."""
        parts = (self.mu_re, self.mu_im, self.W_re, self.W_im, self.C_re, self.C_im, self.D)
        return parts + ((self.turns,) if self.turns is not None else ())

    def step(
        self, x_t: torch.Tensor, state: torch.Tensor, interval: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step after the gap ``interval``: x_t (B, G·m) -> y_t (B, G·p) and the next state.

        Args:
            x_t: (B, G·m) input.
            state: (B, G, M, 2) or (B, G, n).
            interval: (B,) real gaps in nominal sampling periods, or None for 1 (the regular step).

        Returns:
            y_t (B, G·p) in x_t's dtype, and the next state.
        """
        Bsz = x_t.shape[0]
        u = x_t.to(self.dtype).reshape(Bsz, self.G, self.m)
        tau = interval if interval is not None else torch.ones(Bsz, dtype=self.dtype, device=x_t.device)
        pairs, y = modal_step(u, tau, self._pairs(state), self._constants(), self.rule)
        return y.reshape(Bsz, self.G * self.p).to(x_t.dtype), self._state(pairs)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, return_state: bool = True,
        intervals: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A whole sequence at the gaps ``intervals``: `modal_step` over time (an ONNX ``Scan`` when exported with a
        symbolic L), for any L.

        Args:
            x: (B, L, G·m) input.
            state: (B, *state_shape()) or None for zeros.
            return_state: also return the final state.
            intervals: (B, L) real gaps in nominal sampling periods, or None for ones (the regular layer).

        Returns:
            y (B, L, G·p) in x's dtype, and the final state (None when not asked for).
        """
        Bsz, L = x.shape[0], x.shape[1]
        tau = intervals if intervals is not None else torch.ones(Bsz, L, dtype=self.dtype, device=x.device)
        u = x.to(self.dtype).reshape(Bsz, L, self.G, self.m)
        h = self._pairs(state) if state is not None else torch.zeros(Bsz, self.G, self.M, 2, dtype=self.dtype,
                                                                      device=x.device)
        h, y = _over_time(lambda h, u_t, tau_t, c: modal_step(u_t, tau_t, h, c, self.rule), h, u, tau,
                          self._constants())
        return y.reshape(Bsz, L, self.G * self.p).to(x.dtype), (self._state(h) if return_state else None)


def modal_step(
    u: torch.Tensor, tau: torch.Tensor, pairs: torch.Tensor, consts: tuple, rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the modes after the gap τ (module docstring): x' = Ā_τ ⊙ x + E(τ) ⊙ (W u), y = Re(C x') + D u,
    complex numbers as real-imaginary pairs.

    Args:
        u: (B, G, m) input.
        tau: (B,) gaps.
        pairs: (B, G, M, 2) the state x as real-imaginary pairs.
        consts: (Re μ, Im μ (G, M); Re W, Im W (G, M, m); Re C, Im C (G, p, M); D (G, p, m)), and optionally
            Im μ/2π (G, M) float64 (`modal_coefficients`' ``turns``): `RealIrregularModes`' buffers.
        rule: ``"zoh"`` or ``"bilinear"``.

    Returns:
        the next state (B, G, M, 2) and y (B, G, p).
    """
    mu_re, mu_im, W_re, W_im, C_re, C_im, D = consts[:7]
    turns = consts[7] if len(consts) > 7 else None
    a_re, a_im, e_re, e_im = modal_coefficients(tau, mu_re, mu_im, rule, turns)  # (B, G, M) each
    if W_re.shape[-1] == 1:  # a bank: one input per group
        v_re, v_im = u * W_re[..., 0], u * W_im[..., 0]
    else:
        v_re, v_im = torch.einsum("gkm,bgm->bgk", W_re, u), torch.einsum("gkm,bgm->bgk", W_im, u)
    hr, hi = pairs[..., 0], pairs[..., 1]
    nr = a_re * hr - a_im * hi + e_re * v_re - e_im * v_im
    ni = a_re * hi + a_im * hr + e_re * v_im + e_im * v_re
    if C_re.shape[1] == 1 and D.shape[-1] == 1:
        y = ((C_re[:, 0] * nr - C_im[:, 0] * ni).sum(-1) + D[:, 0, 0] * u[..., 0])[..., None]
    else:
        y = (torch.einsum("gpk,bgk->bgp", C_re, nr) - torch.einsum("gpk,bgk->bgp", C_im, ni)
             + torch.einsum("gpm,bgm->bgp", D, u))
    return torch.stack([nr, ni], dim=-1), y


def _over_time(step, h: torch.Tensor, u: torch.Tensor, tau: torch.Tensor, consts: tuple):
    """``h, y_t = step(h, u_t, tau_t, consts)`` for t = 0..L-1: one ``scan`` op (an ONNX ``Scan``) while exporting
    with a symbolic L, else a loop. Returns the last h and the y_t stacked on axis 1."""
    L = u.shape[1]
    if symbolic_length(L):
        def body(carry, xs, c):  # fresh contiguous outputs: an output that aliases an input stops the export
            h_next, y_t = step(carry, xs[0], xs[1], c)
            return (h_next.clone(memory_format=torch.contiguous_format),
                    y_t.clone(memory_format=torch.contiguous_format))

        h = torch.empty(h.shape, dtype=h.dtype, device=h.device).copy_(h)  # standard strides for the carry
        return scan(body, h, (u.clone(), tau.clone()), dim=1, constants=consts)
    ys = []
    for t in range(L):
        h, y_t = step(h, u[:, t], tau[:, t], consts)
        ys.append(y_t)
    return h, torch.stack(ys, dim=1)


class RealIrregularDPLR(RealState, nn.Module):
    """S4 at irregular sampling times in real arithmetic (module docstring): the bilinear DPLR step with Δ_t = Δ τ
    by Woodbury (:mod:`ssmkit.ops.irregular_dplr`), in float64, the state (B, H, N) = [Re x, Im x] as S4's regular
    dense realisation.

    Args:
        layer: the :class:`ssmkit.layers.S4` (causal; read once, not kept), of rank r <= 2.
        dtype: real dtype of the state (float32 or float64).
    """

    takes_intervals = True
    bidirectional = False

    def __init__(self, layer: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from ssmkit.layers.protocol import float32_core

        with torch.no_grad(), float32_core(layer.state_device().type):
            Lambda, P, B, C, dt = (t.detach().cpu() for t in layer._irregular_system())
        r, H, M = P.shape
        if r > 2:
            raise NotImplementedError(f"S4 of rank {r} at irregular times: the exported Woodbury step inverts its r × r "
                                      "matrix in closed form, for r <= 2 only")
        self.d_model, self.r, self.M, self.dtype = H, r, M, dtype
        device = layer.state_device()
        parts = {"lam": Lambda, "P": P, "B": B, "C": C}
        for name, value in parts.items():
            for part, half in (("re", value.real), ("im", value.imag)):  # storages of their own (RealIrregularModes)
                self.register_buffer(f"{name}_{part}", half.to(_F64).clone(memory_format=torch.contiguous_format)
                                     .to(device))
        self.register_buffer("dt", dt.to(_F64).to(device))
        self.register_buffer("D", layer.D.detach().to(_F64).to(device))

    def _constants(self) -> tuple[torch.Tensor, ...]:
        return (self.lam_re, self.lam_im, self.P_re, self.P_im, self.B_re, self.B_im, self.C_re, self.C_im, self.dt,
                self.D)

    def state_shape(self) -> tuple[int, ...]:
        """The state of one sequence: (H, N) = [Re x, Im x]."""
        return (self.d_model, 2 * self.M)

    def step(
        self, x_t: torch.Tensor, state: torch.Tensor, interval: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step after the gap ``interval``, in float64, the state rounded once (as S4's step).

        Args:
            x_t: (B, H) input.
            state: (B, H, N).
            interval: (B,) real gaps in nominal sampling periods, or None for 1.

        Returns:
            y_t (B, H) in x_t's dtype, and the next state (B, H, N).
        """
        tau = interval if interval is not None else torch.ones(x_t.shape[0], dtype=_F64, device=x_t.device)
        y, z = dplr_step(x_t.to(_F64), tau.to(_F64), state.to(_F64), self._constants())
        return y.to(x_t.dtype), z.to(self.dtype)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, return_state: bool = True,
        intervals: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A whole sequence: the step over time (an ONNX ``Scan`` when exported with a symbolic L), the state in
        float64 throughout and rounded once at the end (as S4's forward with intervals).

        Args:
            x: (B, L, H) input.
            state: (B, H, N) or None for zeros.
            return_state: also return the final state.
            intervals: (B, L) real gaps in nominal sampling periods, or None for ones.

        Returns:
            y (B, L, H) in x's dtype, and the final state (None when not asked for).
        """
        Bsz, L = x.shape[0], x.shape[1]
        tau = intervals if intervals is not None else torch.ones(Bsz, L, dtype=_F64, device=x.device)
        z = (state.to(_F64) if state is not None
             else torch.zeros((Bsz,) + self.state_shape(), dtype=_F64, device=x.device))
        z, y = _over_time(lambda h, u_t, tau_t, c: dplr_step(u_t, tau_t, h, c)[::-1], z, x.to(_F64), tau.to(_F64),
                          self._constants())
        return y.to(x.dtype), (z.to(self.dtype) if return_state else None)


def _full_inner(P_re, P_im, w_re, w_im) -> torch.Tensor:
    """P_j* w over the full conjugate-pair state, 2 Re Σ_n conj(P_j,n) w_n: P (r, H, M), w (B, H, M) -> (B, r, H)."""
    return 2 * (P_re * w_re[:, None] + P_im * w_im[:, None]).sum(-1)


def dplr_step(u: torch.Tensor, tau: torch.Tensor, z: torch.Tensor, consts: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """One bilinear DPLR step of Δ_t = Δ τ in real arithmetic (arXiv 2111.00396 eq. 3 with Woodbury; the steps of
    :func:`ssmkit.ops.irregular_dplr.dplr_irregular_step`, complex numbers as real-imaginary pairs):

        R = (2/Δ_t − Λ)⁻¹,  E = 2/Δ_t + Λ,  Y = I + P* R P (r × r, real),
        v = E ⊙ x − P (P* x) + 2 B u,   x' = R ⊙ v − (R ⊙ P) Y⁻¹ P* (R ⊙ v),   y = 2 Re Σ C x' + D u.

    Args:
        u: (B, H) float64 input.
        tau: (B,) float64 gaps.
        z: (B, H, N) float64 state [Re x, Im x].
        consts: (Re Λ, Im Λ (H, M); Re P, Im P (r, H, M); Re B, Im B, Re C, Im C (H, M); Δ (H,); D (H,)), float64.

    Returns:
        y (B, H) and the next state (B, H, N), float64.
    """
    from ssmkit.ops.dplr import small_inverse

    lam_re, lam_im, P_re, P_im, B_re, B_im, C_re, C_im, dt, D = consts
    M = lam_re.shape[-1]
    xr, xi = z[..., :M], z[..., M:]  # (B, H, M) each
    q = (2 / (tau[:, None] * dt))[..., None]  # (B, H, 1): 2/Δ_t
    den_re = q - lam_re  # 2/Δ_t − Λ = den_re − i Im Λ
    norm = den_re * den_re + lam_im * lam_im
    R_re, R_im = den_re / norm, lam_im / norm  # (B, H, M)
    E_re, E_im = q + lam_re, lam_im.expand_as(R_re)
    v_re = E_re * xr - E_im * xi + 2 * B_re * u[..., None]
    v_im = E_re * xi + E_im * xr + 2 * B_im * u[..., None]
    r = P_re.shape[0]
    if r:
        px = _full_inner(P_re, P_im, xr, xi)  # (B, r, H)
        v_re = v_re - (P_re * px[..., None]).sum(1)
        v_im = v_im - (P_im * px[..., None]).sum(1)
    Rv_re, Rv_im = R_re * v_re - R_im * v_im, R_re * v_im + R_im * v_re
    if r:
        RP_re = R_re[:, None] * P_re - R_im[:, None] * P_im  # (B, r, H, M)
        RP_im = R_re[:, None] * P_im + R_im[:, None] * P_re
        # Y[j, i] = 2 Re Σ conj(P_j) (R P_i): (B, H, r, r)
        Y = 2 * (P_re[None, :, None] * RP_re[:, None] + P_im[None, :, None] * RP_im[:, None]).sum(-1).permute(0, 3, 1, 2)
        Y_inv = small_inverse(torch.eye(r, dtype=Y.dtype, device=Y.device) + Y)
        prv = _full_inner(P_re, P_im, Rv_re, Rv_im).transpose(1, 2)  # (B, H, r)
        coef = (Y_inv * prv[..., None, :]).sum(-1).transpose(1, 2)  # (B, r, H): Y⁻¹ P* R v
        Rv_re = Rv_re - (RP_re * coef[..., None]).sum(1)
        Rv_im = Rv_im - (RP_im * coef[..., None]).sum(1)
    y = 2 * (C_re * Rv_re - C_im * Rv_im).sum(-1) + D * u  # (B, H)
    return y, torch.cat([Rv_re, Rv_im], dim=-1)


def irregular_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode, no ``check_finite``) whose LTI layers are replaced by their real forms at
    irregular times: `RealIrregularDPLR` for S4, `RealIrregularModes` for the modal and diagonal layers. Its
    ``step(u_t, state, interval=)`` and ``forward(u, state, intervals=)`` equal the model's, in real arithmetic;
    the other layers (Mamba, Mamba-2, RG-LRU) are kept with their own irregular step and forward.

    Args:
        model: a SequenceModel, a DeepWiener or a WienerEnsemble whose layers all take intervals.

    Returns:
        the converted copy (the original is untouched).

    Raises:
        ValueError: a layer does not take intervals, or is bidirectional (`require_irregular_export`); a layer's
            parameters are float16/bfloat16.
        NotImplementedError: an LTI layer whose continuous-time form cannot be exported (S4 of rank > 2).
    """
    from ssmkit.analysis.onnx_export import _replace_lti_layers

    require_irregular_export(model)

    def make(layer: nn.Module, dtype: torch.dtype) -> nn.Module:
        from ssmkit.layers.s4 import S4

        if isinstance(layer, S4):
            return RealIrregularDPLR(layer, dtype)
        return RealIrregularModes(layer, dtype)

    return _replace_lti_layers(model, None, make_layer=make)
