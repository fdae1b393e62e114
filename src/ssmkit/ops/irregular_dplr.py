"""S4's DPLR system (arXiv 2111.00396) sampled at irregular times: the exact bilinear recurrence with each step's own Δ.

Channel h is the continuous-time system dx/ds = A_h x + B_f,h u_h(s) on the full conjugate-pair state x_f = [x, x̄]
(A = diag(Λ_f) - Σ_i P_f,i P_f,i*, :mod:`ssmkit.ops.dplr`), observed at times whose gaps are τ_t (B, L) nominal
sampling periods; channel h advances Δ_h τ_t in its own time (Δ (H,), the learned step, so τ = 1 everywhere is
the regularly sampled layer). Each step is S4's bilinear discretisation (eq. 3) with its own step Δ_t = Δ_h τ_t:

    Ā_t = (I - Δ_t A/2)⁻¹(I + Δ_t A/2),   B̄_t = (I - Δ_t A/2)⁻¹ Δ_t B_f,
    x_t = Ā_t x_{t-1} + B̄_t u_t,          y_t = C_fᵀ x_f,t (+ D u_t) = 2 Re Σ_n C_n x_t,n (+ D u_t)

(the input held over the gap that ends at sample t, as the bilinear rule reads it; a constant gap c is the regular
recurrence with Δ scaled by c). It is run, as S4's ``step``, in O(N r) per channel and step by the Woodbury form
of M_t⁻¹ = (2/Δ_t - A)⁻¹ (:func:`ssmkit.ops.dplr.dplr_step`) with the per-step coefficients

    R_t = (2/Δ_t - Λ)⁻¹,  E_t = 2/Δ_t + Λ,  Y_t = I + P* R_t P   (r × r, real, over the full state),
    v = E_t ⊙ x - P (P* x) + 2B u_t,   x_t = R_t ⊙ v - (R_t ⊙ P) Y_t⁻¹ P* (R_t ⊙ v),

every P* w over the full state being 2 Re Σ_half P̄ w. The state is S4's: the kept half x (B, H, N/2) complex.
Nothing is diagonalised, so all ones equals S4's ``step`` (and its convolution) to rounding.

Paths: ``"reference"`` -- a loop over time, each step's coefficients formed from its gap (the oracle of the others);
``"chunked"`` (and ``"auto"``) -- the same loop with the coefficients of T steps formed at once (B, T, H, N/2), each
chunk under an activation checkpoint when autograd records (non-reentrant, recomputed under the backend in force at
the call, :func:`ssmkit.ops.backend.checkpoint_contexts`; without one inside torch.func transforms, which refuse its
hooks): the backward keeps one state per chunk, O(B·H·N·L/T), and one chunk's graph, not the L steps' intermediates.
Both cost O(B·L·H·N r) in L sequential steps of batched ops (no parallel scan: the transition is dense). ``"native"``
(and ``"auto"`` on the CPU) -- the C kernel :mod:`ssmkit.ops.native.irregular_dplr` (r ≤ 2), forward and backward
(inference and training: its forward keeps one state per 64 steps, its backward recomputes each chunk's states and
runs the step's adjoint, derived in ``irregular_dplr.c``), else the chunks (ranks above 2, other devices, torch.func
transforms, torch.export, forward-mode AD; a double backward differentiates the chunks); ``"fft"`` and ``"triton"``
raise. Computed in the inputs' precision (S4 passes float64/complex128, as its ``step``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ssmkit.ops.backend import checkpointed_chunks, dispatch
from ssmkit.ops.dplr import _check_dplr, small_inverse
from ssmkit.utils import check_floating


class IrregularDPLRCoefficients(NamedTuple):
    """The per-step coefficients of :func:`dplr_irregular_step`, with the leading dims (...) of the gaps.

    Fields (complex in Lambda's dtype unless said otherwise):
        R: (..., H, N/2) the resolvent diagonal (2/Δ_t - Λ)⁻¹.
        E: (..., H, N/2) 2/Δ_t + Λ.
        RP: (..., r, H, N/2) R ⊙ P.
        Y_inv: (..., H, r, r) real, (I + P* R P)⁻¹ over the full state.
    """

    R: Tensor
    E: Tensor
    RP: Tensor
    Y_inv: Tensor


def dplr_irregular_coefficients(Lambda: Tensor, P: Tensor, dt: Tensor, intervals: Tensor) -> IrregularDPLRCoefficients:
    """R_t, E_t, R_t ⊙ P and Y_t⁻¹ of the steps Δ_t = Δ_h τ (module docstring; arXiv 2111.00396 eq. 3 + Woodbury).

    Args:
        Lambda: (H, N/2) complex eigenvalues, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors (r >= 0).
        dt: (H,) real positive steps Δ.
        intervals: (...) real positive gaps τ in nominal sampling periods (any leading dims: (B,) or (B, T)).

    Returns:
        :class:`IrregularDPLRCoefficients` with the gaps' leading dims.
    """
    _check_dplr(Lambda, P, None, dt)
    check_floating(intervals, "intervals")
    step = intervals[..., None].to(dt.dtype) * dt  # (..., H): Δ_t
    R = 1 / (2 / step[..., None] - Lambda)  # (..., H, N/2)
    E = 2 / step[..., None] + Lambda  # (..., H, N/2)
    RP = R.unsqueeze(-3) * P  # (..., r, H, N/2)
    Y = 2 * torch.einsum("jhm,...ihm->...hji", P.conj(), RP).real  # (..., H, r, r): Y[j, i] = P_j* R P_i
    eye = torch.eye(P.shape[0], dtype=Y.dtype, device=Y.device)  # (r, r)
    return IrregularDPLRCoefficients(R=R, E=E, RP=RP, Y_inv=small_inverse(eye + Y))


def _full_inner(P: Tensor, x: Tensor) -> Tensor:
    """P_i* x over the full state, 2 Re Σ_half P̄_i x: P (r, H, N/2), x (B, H, N/2) -> (B, r, H) real."""
    return 2 * (P.conj() * x.unsqueeze(1)).sum(-1).real  # (B, r, H)


def dplr_irregular_step(
    u: Tensor, x: Tensor, coeffs: IrregularDPLRCoefficients, P: Tensor, B: Tensor, C: Tensor
) -> tuple[Tensor, Tensor]:
    """One bilinear DPLR step of its own Δ_t in O(N r): x' = Ā_t x + B̄_t u, y = C_fᵀ x'_f (module docstring).

    The skip D u is not included.

    Args:
        u: (B, H) real input.
        x: (B, H, N/2) complex half state x_{t-1}.
        coeffs: :class:`IrregularDPLRCoefficients` of this step, R, E, Y_inv with leading dim B
            (:func:`dplr_irregular_coefficients` of the gaps (B,)).
        P: (r, H, N/2) complex low-rank factors.
        B: (H, N/2) complex input vector.
        C: (H, N/2) complex output vector (the true C, not S4's C̃).

    Returns:
        y (B, H) real without the skip, and the next half state x_t (B, H, N/2) complex.
    """
    R, E, RP, Y_inv = coeffs
    if x.dim() != 3 or x.shape != R.shape:
        raise ValueError(f"x must be (B, H, N/2) = {tuple(R.shape)} like the coefficients' R; got {tuple(x.shape)}")
    if u.shape != x.shape[:2]:
        raise ValueError(f"u must be (B, H) = {tuple(x.shape[:2])}; got shape {tuple(u.shape)}")
    if B.shape != x.shape[1:] or C.shape != x.shape[1:]:
        raise ValueError(f"B and C must be (H, N/2) = {tuple(x.shape[1:])}; got {tuple(B.shape)}, {tuple(C.shape)}")
    # 1. v = (2/Δ_t + A) x + 2 B u.
    v = E * x - (P * _full_inner(P, x)[..., None]).sum(1) + 2 * B * u[..., None]  # (B, H, N/2)
    # 2. x' = M_t⁻¹ v by Woodbury.
    Rv = R * v  # (B, H, N/2)
    coef = (Y_inv * _full_inner(P, Rv).transpose(1, 2)[..., None, :]).sum(-1)  # (B, H, r): Y⁻¹ P* R v
    x_new = Rv - (RP * coef.transpose(1, 2)[..., None]).sum(1)  # (B, H, N/2)
    # 3. y = C_fᵀ x'_f.
    return 2 * (C * x_new).sum(-1).real, x_new  # (B, H), (B, H, N/2)


def _check_scan(u, Lambda, P, B, C, dt, intervals, D, state) -> None:
    """Validate u (B, L, H) real, the DPLR system (Λ, P, B, C: (H, N/2) complex of one dtype, P (r, H, N/2)), Δ (H,),
    the gaps (B, L), D (H,) and the state (B, H, N/2) complex of Λ's dtype."""
    check_floating(u, "u")
    if u.dim() != 3 or 0 in u.shape:
        raise ValueError(f"u must be (B, L, H) with B, L, H >= 1; got {tuple(u.shape)}")
    Bsz, L, H = u.shape
    Hn, M = _check_dplr(Lambda, P, B, dt)
    if Hn != H:
        raise ValueError(f"Lambda must be (H, N/2) with H = {H} (u's last dim); got {tuple(Lambda.shape)}")
    if not isinstance(C, Tensor) or C.shape != (H, M) or C.dtype != Lambda.dtype:
        raise ValueError(f"C must be (H, N/2) = ({H}, {M}) {Lambda.dtype}; got "
                         f"{tuple(getattr(C, 'shape', ()))} {getattr(C, 'dtype', type(C).__name__)}")
    for name, t, shape in (("intervals", intervals, (Bsz, L)), ("D", D, (H,))):
        if t is not None and (not isinstance(t, Tensor) or not t.is_floating_point() or tuple(t.shape) != shape):
            raise ValueError(f"{name} must be {shape} real; got "
                             f"{tuple(getattr(t, 'shape', ()))} {getattr(t, 'dtype', type(t).__name__)}")
    if state is not None and (not isinstance(state, Tensor) or tuple(state.shape) != (Bsz, H, M)
                              or state.dtype != Lambda.dtype):
        raise ValueError(f"state must be (B, H, N/2) = ({Bsz}, {H}, {M}) {Lambda.dtype}; got "
                         f"{tuple(getattr(state, 'shape', ()))} {getattr(state, 'dtype', type(state).__name__)}")


def _start(u: Tensor, Lambda: Tensor, state: Tensor | None) -> Tensor:
    return state if state is not None else torch.zeros(u.shape[0], *Lambda.shape, dtype=Lambda.dtype, device=u.device)


def dplr_irregular_scan_reference(
    u: Tensor,
    Lambda: Tensor,
    P: Tensor,
    B: Tensor,
    C: Tensor,
    dt: Tensor,
    intervals: Tensor,
    D: Tensor | None = None,
    state: Tensor | None = None,
    *,
    return_state: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """The irregularly sampled DPLR system (module docstring) by a loop over time, each step's coefficients formed
    from its gap: the oracle of :func:`dplr_irregular_scan`.

    Args:
        u: (B, L, H) real input (Λ's real dtype).
        Lambda: (H, N/2) complex eigenvalues, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors.
        B: (H, N/2) complex input vector.
        C: (H, N/2) complex output vector (the true C).
        dt: (H,) real positive steps Δ.
        intervals: (B, L) real positive gaps in nominal sampling periods.
        D: (H,) real skip, or None.
        state: (B, H, N/2) complex x_{-1} (Λ's dtype), or None for zeros.
        return_state: whether to return the final state (else None in its place).

    Returns:
        y (B, L, H) real, and x_{L-1} (B, H, N/2) (or None).
    """
    _check_scan(u, Lambda, P, B, C, dt, intervals, D, state)
    x = _start(u, Lambda, state)  # (B, H, N/2)
    ys = []
    for u_t, tau_t in zip(u.unbind(1), intervals.unbind(1)):
        y_t, x = dplr_irregular_step(u_t, x, dplr_irregular_coefficients(Lambda, P, dt, tau_t), P, B, C)
        ys.append(y_t)
    y = torch.stack(ys, dim=1)  # (B, L, H)
    return (y if D is None else y + D * u), (x if return_state else None)


def _chunk(u_c: Tensor, tau_c: Tensor, x: Tensor, Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor):
    """T steps from x: their coefficients formed at once (B, T, H, N/2), then the loop; (y (B, T, H), x_T)."""
    # unbound once (one backward node stacking T gradients): an index [:, t] per step would have its backward
    # allocate and fill the whole (B, T, ...) chunk per step (forward+backward 20x slower at B 8, H 128, N 64)
    steps = zip(*(c.unbind(1) for c in dplr_irregular_coefficients(Lambda, P, dt, tau_c)))  # (B, ...) each
    ys = []
    for u_t, coeffs in zip(u_c.unbind(1), steps):
        y_t, x = dplr_irregular_step(u_t, x, IrregularDPLRCoefficients(*coeffs), P, B, C)
        ys.append(y_t)
    return torch.stack(ys, dim=1), x


def dplr_irregular_scan_chunked(
    u: Tensor,
    Lambda: Tensor,
    P: Tensor,
    B: Tensor,
    C: Tensor,
    dt: Tensor,
    intervals: Tensor,
    D: Tensor | None = None,
    state: Tensor | None = None,
    *,
    return_state: bool = True,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`dplr_irregular_scan_reference` chunk by chunk: each chunk's coefficients (B, T, H, N/2) formed at once
    and its steps run under an activation checkpoint when autograd records (module docstring).

    Args:
        u: (B, L, H) real input (Λ's real dtype).
        Lambda: (H, N/2) complex eigenvalues, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors.
        B: (H, N/2) complex input vector.
        C: (H, N/2) complex output vector (the true C).
        dt: (H,) real positive steps Δ.
        intervals: (B, L) real positive gaps in nominal sampling periods.
        D: (H,) real skip, or None.
        state: (B, H, N/2) complex x_{-1} (Λ's dtype), or None for zeros.
        return_state: whether to return the final state (else None in its place).
        chunk_size: T, the steps whose coefficients are held at once (>= 1), or None for 64.

    Returns:
        y (B, L, H) real, and x_{L-1} (B, H, N/2) (or None).
    """
    _check_scan(u, Lambda, P, B, C, dt, intervals, D, state)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1; got {chunk_size!r}")
    x = _start(u, Lambda, state)  # (B, H, N/2)
    T = 64 if chunk_size is None else chunk_size
    y, x = checkpointed_chunks(_chunk, u, intervals, x, T, Lambda, P, B, C, dt)  # (B, L, H), x_{L-1}
    return (y if D is None else y + D * u), (x if return_state else None)


def _dplr_native(u, Lambda, P, B, C, dt, intervals, D=None, state=None, *, return_state=True):
    """The scan by its C kernel (:mod:`ssmkit.ops.native.irregular_dplr`: each step's coefficients formed in
    registers, the state in local arrays; with a gradient to record, an autograd Function whose C backward recomputes
    the states from one checkpoint per 64 steps) where it runs: u on the CPU in the real dtype of Λ, rank r ≤ 2, the
    kernel built and checked (:func:`ssmkit.ops.native.gate.prefer_native`: not under a torch.func transform,
    torch.export or forward-mode AD); elsewhere :func:`dplr_irregular_scan_chunked`. A double backward
    (``create_graph``) differentiates the chunked path (:mod:`ssmkit.ops.twice`)."""
    from ssmkit.ops._checks import REAL_OF
    from ssmkit.ops.native.gate import prefer_native
    from ssmkit.ops.native.irregular_dplr import MAX_RANK, dplr_unchecked

    _check_scan(u, Lambda, P, B, C, dt, intervals, D, state)
    if P.shape[0] <= MAX_RANK and REAL_OF.get(Lambda.dtype) == u.dtype and prefer_native("irregular_dplr", u):
        return dplr_unchecked(u, Lambda, P, B, C, dt, intervals, D, state, return_state)
    return dplr_irregular_scan_chunked(u, Lambda, P, B, C, dt, intervals, D, state, return_state=return_state)


_SCAN = {"reference": dplr_irregular_scan_reference, "chunked": dplr_irregular_scan_chunked, "native": _dplr_native}


def dplr_irregular_scan(
    u: Tensor,
    Lambda: Tensor,
    P: Tensor,
    B: Tensor,
    C: Tensor,
    dt: Tensor,
    intervals: Tensor,
    D: Tensor | None = None,
    state: Tensor | None = None,
    *,
    return_state: bool = True,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The irregularly sampled DPLR system (module docstring) over a sequence; the path by the backend:
    ``"reference"`` -> the loop; ``"chunked"`` -> chunks of coefficients under checkpoints; ``"native"`` and
    ``"auto"`` -> the C kernel (forward and backward) on the CPU for r ≤ 2 (:func:`_dplr_native`), else the chunks;
    the others raise.

    Args:
        u: (B, L, H) real input (Λ's real dtype).
        Lambda: (H, N/2) complex eigenvalues, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors.
        B: (H, N/2) complex input vector.
        C: (H, N/2) complex output vector (the true C).
        dt: (H,) real positive steps Δ.
        intervals: (B, L) real positive gaps in nominal sampling periods.
        D: (H,) real skip, or None.
        state: (B, H, N/2) complex x_{-1} (Λ's dtype), or None for zeros.
        return_state: whether to return the final state (else None in its place).
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        y (B, L, H) real, and x_{L-1} (B, H, N/2) (or None).
    """
    impl = dispatch("dplr_irregular_scan", _SCAN, backend, auto="native")
    return impl(u, Lambda, P, B, C, dt, intervals, D, state, return_state=return_state)
