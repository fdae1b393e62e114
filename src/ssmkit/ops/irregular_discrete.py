"""Irregular sampling for recurrences defined in discrete time (LRU arXiv 2303.06349, Mega's EMA arXiv 2209.10655,
DLR arXiv 2212.00768, RG-LRU arXiv 2402.19427): the pieces that read such a recurrence as a zero-order hold.

A diagonal recurrence x_t = λ ⊙ x_{t-1} + B̄ u_t, defined per nominal sampling period, is the unit-step zero-order
hold of the continuous-time system

    dx/ds = z ⊙ x + z/(λ − 1) ⊙ B̄ u(s),   z = log λ (principal branch: Im z in (−π, π]),

so a gap of τ periods (the input held over it) gives

    Ā_τ = e^{τ z} = λ^τ,   B̄_τ = (e^{τ z} − 1)/(λ − 1) ⊙ B̄          (τ = 1: λ and B̄ exactly).

The layers hand (z, B̄/φ(z), Δ = 1), φ(z) = (e^z − 1)/z, to the ZOH samplers of :mod:`ssmkit.ops.irregular` (one
MIMO system) and :mod:`ssmkit.ops.irregular_bank` (a SISO bank); the state keeps the layer's own coordinates. The
principal branch is the continuous system of lowest frequencies with these samples (|Im z| ≤ π: no mode turns more
than half a revolution per period; a real negative λ, at the cut, turns +π); a phase stored outside (−π, π] (LRU's
e^θ, DLR's b) is the same discrete layer and is read modulo 2π. This module holds the branch
(:func:`principal_angle`), the refusal of a mode λ = 1 that the samplers' B/z form cannot take
(:func:`check_no_unit_mode`), and the RG-LRU, whose gate a_t is time-varying, at irregular times
(:func:`rglru_irregular`, :func:`rglru_irregular_step`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssmkit.ops.backend import dispatch
from ssmkit.ops.irregular import check_intervals
from ssmkit.ops.recurrence import linear_recurrence
from ssmkit.ops.rglru import _check_rglru, sqrt_bounded_gradient


# The upper end of the branch: π plus a millionth. float32(π) = π + 8.7e-8 while float64(π) = π − 1.2e-16, so with the
# cut exactly at π a mode stored at phase π (DLR's "omega" init puts one there for every even M: λ real negative) read
# as +π in a float64 layer and −π in the same layer in float32, two continuous systems (0.26 apart in outputs at
# random gaps). Past the cut by 1e-6, both read +π; a phase can only come that close to it deliberately.
BRANCH_CUT = math.pi + 1e-6


def principal_angle(phase: torch.Tensor) -> torch.Tensor:
    """arg e^{iφ} in (BRANCH_CUT − 2π, BRANCH_CUT], BRANCH_CUT = π + 1e-6 (the principal branch (−π, π] with its cut
    moved a millionth past π, see above): φ − 2πk for the integer k that puts it there, BRANCH_CUT − ((BRANCH_CUT − φ)
    mod 2π).

    The imaginary part of the (principal) logarithm of a mode e^{−ρ + iφ} (LRU's φ = e^θ, DLR's b). Its derivative is
    1 everywhere; it jumps at the cut, where e^{iφ} ≈ −1 is a real negative eigenvalue, which a rotation of half a
    turn per period reaches in either direction: it is read as +π.

    Args:
        phase: (*) real phases φ, any shape.

    Returns:
        (*) φ wrapped into (BRANCH_CUT − 2π, BRANCH_CUT], φ's dtype.
    """
    return BRANCH_CUT - torch.remainder(BRANCH_CUT - phase, 2 * math.pi)


def check_no_unit_mode(z: torch.Tensor, layer: str) -> None:
    """Raise ``ValueError`` where a mode has λ = e^z = 1 exactly (z = 0): the discrete integrator, whose continuous
    system dx/ds = u samples to x_t = x_{t-1} + τ u_t but which the ZOH samplers' (e^{τz} − 1) B/z form cannot
    evaluate (0/0: NaN outputs and gradients). Checked eagerly and under ``torch.func.grad``/``jvp``; not while
    torch.compile traces, nor under ``vmap`` over the parameters, where values cannot be branched on.

    Args:
        z: (*) complex or real log-eigenvalues.
        layer: the layer's name, for the message.
    """
    if torch.compiler.is_compiling():
        return
    try:
        bad = bool((z == 0).any())
    except RuntimeError:
        if not torch._C._are_functorch_transforms_active():
            raise
        return
    if bad:
        raise ValueError(f"{layer} has a mode with eigenvalue exactly 1 (log-eigenvalue 0: no decay and no rotation), "
                         "which the irregular-sampling path cannot evaluate ((e^{τz} − 1)/z at z = 0); move its "
                         "parameters off that point (a decay or a phase ≠ 0) to use intervals")


def hold_ratio(log_a: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """(a^τ − 1)/(a − 1) = expm1(τ log a)/expm1(log a) elementwise for real decays 0 ≤ a < 1: the factor by which a
    gap of τ periods scales the input of a unit-step zero-order hold (module docstring). τ where log a = 0 (its
    limit: a float32 gate r_t that underflowed), 1 where log a = −inf (a = 0: a reset). Its derivatives are the
    limits there too: at log a = 0, ∂/∂τ = 1 and ∂/∂log a = τ(τ − 1)/2 (the first-order term of τ + τ(τ − 1)/2 ·
    log a + ...); at log a = −inf both 0 (the other branch's arguments are replaced by −1, so no 0 · ∞ reaches them).

    Args:
        log_a: (*) real log a ≤ 0 (−inf allowed).
        tau: gaps broadcastable to log_a, real > 0.

    Returns:
        the ratio, of the broadcast shape, log_a's dtype.
    """
    tau = tau.to(log_a.dtype)
    zero, reset = log_a == 0, log_a == -math.inf
    safe = torch.where(zero | reset, -torch.ones_like(log_a), log_a)  # finite and < 0: both branches' gradients finite
    ratio = torch.expm1(safe * tau) / torch.expm1(safe)
    limit = tau + tau * (tau - 1) / 2 * torch.where(zero, log_a, torch.zeros_like(log_a))  # τ, with its slope in log a
    return torch.where(zero, limit, torch.where(reset, torch.ones_like(ratio), ratio))


def _rglru_coefficients(r, i, x, Lambda, c: float, tau, resets):
    """a_t^τ, its log and the input b_t = (a_t^τ − 1)/(a_t − 1) √(1 − a_t²) i_t x_t of every step (a reset:
    a = 0, b = i_t x_t), each of x's shape (:func:`rglru_irregular`)."""
    log_a = -c * r * F.softplus(-Lambda)  # (..., H): log a_t = c r_t log σ(Λ)
    multiplier = sqrt_bounded_gradient(-torch.expm1(2 * log_a)) * hold_ratio(log_a, tau)  # (..., H)
    log_a_tau = log_a * tau  # (..., H): log a_t^τ
    if resets is not None:
        keep = ~resets[..., None]  # (..., 1)
        log_a_tau = log_a_tau + torch.where(keep, 0.0, -math.inf).to(log_a.dtype)  # a_t^τ = 0 there
        multiplier = torch.where(keep, multiplier, torch.ones_like(multiplier))  # 1 there
    return torch.exp(log_a_tau), log_a_tau, multiplier * (i * x)


def rglru_irregular_reference(
    x: torch.Tensor,
    r: torch.Tensor,
    i: torch.Tensor,
    Lambda: torch.Tensor,
    c: float,
    intervals: torch.Tensor,
    h0: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rglru_irregular` by a plain loop over time (its oracle). Arguments and returns as there."""
    _check_rglru(x, r, i, Lambda, h0, resets)
    check_intervals(intervals, tuple(x.shape[:2]), x.device)  # an (L,) tensor broadcast on the scan paths
    h = h0 if h0 is not None else torch.zeros_like(x[:, 0])  # (B, H)
    hs = []
    for t in range(x.shape[1]):
        h = rglru_irregular_step(x[:, t], r[:, t], i[:, t], Lambda, c, intervals[:, t], h,
                                 None if resets is None else resets[:, t])
        hs.append(h)
    return torch.stack(hs, dim=1), h  # (B, L, H), (B, H)


def _rglru_irregular_scan(x, r, i, Lambda, c, intervals, h0=None, resets=None, *, recurrence_backend: str):
    """The coefficients of every step, then :func:`ssmkit.ops.recurrence.linear_recurrence` on
    ``recurrence_backend`` (with the logs of the gates, for the chunk products)."""
    _check_rglru(x, r, i, Lambda, h0, resets)
    check_intervals(intervals, tuple(x.shape[:2]), x.device)  # an (L,) tensor broadcast on the scan paths
    a, log_a, b = _rglru_coefficients(r, i, x, Lambda, c, intervals[..., None].to(x.dtype), resets)  # (B, L, H) each
    return linear_recurrence(a, b, h0, backend=recurrence_backend, log_a=log_a)


def _rglru_irregular_chunked(x, r, i, Lambda, c, intervals, h0=None, resets=None):
    return _rglru_irregular_scan(x, r, i, Lambda, c, intervals, h0, resets, recurrence_backend="chunked")


def _rglru_irregular_native(x, r, i, Lambda, c, intervals, h0=None, resets=None):
    """The chunked coefficients with the recurrence's own ``"auto"`` choice (its C kernel on the CPU)."""
    return _rglru_irregular_scan(x, r, i, Lambda, c, intervals, h0, resets, recurrence_backend="auto")


_SCAN = {"reference": rglru_irregular_reference, "chunked": _rglru_irregular_chunked,
         "native": _rglru_irregular_native}


def rglru_irregular(
    x: torch.Tensor,
    r: torch.Tensor,
    i: torch.Tensor,
    Lambda: torch.Tensor,
    c: float,
    intervals: torch.Tensor,
    h0: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The RG-LRU (arXiv 2402.19427 §2.4) at irregular times: each step is the unit-step zero-order hold of its own
    gate read over the gap τ_t (module docstring), log a_t = −c r_t softplus(−Λ),

        h_t = a_t^{τ_t} ⊙ h_{t-1} + (a_t^{τ_t} − 1)/(a_t − 1) ⊙ √(1 − a_t²) ⊙ i_t ⊙ x_t

    (τ_t = 1: :func:`ssmkit.ops.rglru.rglru`); at a reset a_t = 0 and the input is i_t ⊙ x_t, whatever the gap.
    Backends: ``"reference"`` the loop; ``"chunked"`` the elementwise coefficients and the chunked recurrence;
    ``"native"`` and ``"auto"`` the same with the recurrence's own choice (its C kernel on the CPU).

    Args:
        x: (B, L, H) input of the RG-LRU (after the short convolution).
        r: (B, L, H) recurrence gate in (0, 1), x's dtype.
        i: (B, L, H) input gate in (0, 1), x's dtype.
        Lambda: (H,) Λ, with a = σ(Λ), x's dtype.
        c: the constant c of a_t = a^{c r_t}.
        intervals: (B, L) real > 0, the gaps in nominal sampling periods (the first from h0's instant).
        h0: (B, H) state before x, or None for zeros.
        resets: (B, L) bool, True where a segment starts, or None.
        backend: ``"reference"``, ``"chunked"``, ``"native"`` or ``"auto"``, or None for the context's.

    Returns:
        h (B, L, H) every state, and the last one (B, H).
    """
    impl = dispatch("rglru_irregular", _SCAN, backend, auto="native")
    return impl(x, r, i, Lambda, c, intervals, h0, resets)


def rglru_irregular_step(
    x_t: torch.Tensor,
    r_t: torch.Tensor,
    i_t: torch.Tensor,
    Lambda: torch.Tensor,
    c: float,
    interval: torch.Tensor,
    h: torch.Tensor,
    reset: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step of :func:`rglru_irregular` after the gap ``interval``.

    Args:
        x_t: (B, H) input at one time step.
        r_t: (B, H) recurrence gate.
        i_t: (B, H) input gate.
        Lambda: (H,) Λ, with a = σ(Λ).
        c: the constant c of a_t = a^{c r_t}.
        interval: (B,) real > 0, the gap since the previous sample in nominal periods.
        h: (B, H) state h_{t-1}.
        reset: (B,) bool, True where this step starts a segment, or None.

    Returns:
        (B, H) h_t.
    """
    a, _, b = _rglru_coefficients(r_t, i_t, x_t, Lambda, c, interval[:, None].to(x_t.dtype), reset)  # (B, H) each
    return a * h + b
