"""A diagonal MIMO state-space model sampled at irregular times (S5, Smith et al., arXiv 2208.04933, the variable
observation interval of its pendulum regression: the discretisation is done per step with that step's interval).

The continuous-time system dx/ds = Λ x + B̃ u(s), Λ (M,) diagonal complex, is observed at times whose gaps are
τ_t (B, L) nominal sampling periods; mode m advances Δ_m τ_t in its own time (Δ (M,), the learned step per mode,
so τ = 1 everywhere is the regularly sampled layer). The input u_t is held over the gap that ends at sample t (the
zero-order hold in the SSM convention x_t = Ā x_{t-1} + B̄ u_t). With z_t = Δ τ_t Λ:

    ZOH:      Ā_t = exp(z_t),                 B̄_t = Δ τ_t g(z_t) B̃,   g(z) = (e^z − 1)/z   (= (Ā_t − 1)/Λ · B̃)
    bilinear: Ā_t = (1 + z_t/2)/(1 − z_t/2),  B̄_t = Δ τ_t/(1 − z_t/2) B̃
    x_t = Ā_t ⊙ x_{t-1} + B̄_t u_t,   y_t = Re(C x_t) + D ⊙ u_t

B̄_t is a per-step scaling of the modes, so the input projection v = u B̃ᵀ stays one GEMM for all t and the
per-step coefficients are (B, L, M): never (B, L, H, M). :func:`irregular_ssm_scan` takes Λ, Δ and the gaps instead
of the coefficients: on the CPU its ``"native"``/``"auto"`` path runs the recurrence by the C kernel of
:mod:`ssmkit.ops.native.irregular_mimo`, which forms each step's coefficients in registers (no (B, L, M) coefficient
tensors: S5's and LRU's forward with gaps at ~1.3x the regular one instead of ~6.5x); elsewhere, and as its reference,
:func:`irregular_discretize` and :func:`irregular_scan`.
"""

from __future__ import annotations

import torch

from ssmkit.ops.backend import dispatch
from ssmkit.ops.discretize import widen
from ssmkit.ops.mimo import _check_mimo, _project_scan_read
from ssmkit.ops.recurrence import linear_recurrence

RULES = ("zoh", "bilinear")


def check_intervals(intervals: object, shape: tuple[int, ...], device: torch.device, name: str = "intervals") -> None:
    """Raise ``ValueError`` unless ``intervals`` is a real floating tensor of ``shape`` on ``device`` whose entries are
    all finite and > 0 (the time from the previous sample, in nominal sampling periods). The values are checked
    eagerly and under ``torch.func.grad``/``jacrev``/``jvp``; under torch.compile on the CPU by an assertion in the
    graph (a RuntimeError with this message when the compiled code runs: no graph break; on CUDA not at all, where a
    failed device assertion would end the process's CUDA context); not under ``vmap`` over the intervals, where they
    cannot be branched on.

    Args:
        intervals: the tensor to check.
        shape: the shape it must have ((B, L) for a sequence, (B,) for one step).
        device: the device it must be on.
        name: its name in the message.
    """
    want = f"a real floating tensor of shape {tuple(shape)}"
    if not isinstance(intervals, torch.Tensor) or not intervals.is_floating_point():
        got = (f"a tensor of {intervals.dtype}" if isinstance(intervals, torch.Tensor)
               else f"{type(intervals).__module__}.{type(intervals).__name__}".removeprefix("builtins."))
        raise ValueError(f"{name} must be {want} (the time since the previous sample, in nominal sampling periods); "
                         f"got {got}" + ("" if isinstance(intervals, torch.Tensor) else " (torch.as_tensor converts it)"))
    if tuple(intervals.shape) != tuple(shape):
        raise ValueError(f"{name} must be {want}; got shape {tuple(intervals.shape)}")
    if intervals.device != device:
        raise ValueError(f"{name} must be on {device} like the input; got {intervals.device}")
    if torch.compiler.is_compiling():
        if intervals.device.type == "cpu":  # checked in the graph, at run time (RuntimeError: no branch on values)
            torch._assert_async(torch.isfinite(intervals).all() & (intervals > 0).all(),
                                f"{name} must be finite and > 0 (the time since the previous sample)")
    elif not _finite_and_positive(intervals):
        bad = ~(torch.isfinite(intervals) & (intervals > 0))
        first = tuple(int(i) for i in bad.nonzero()[0])  # row-major: the first batch item, then its first step
        where = ", ".join(f"{axis} {i}" for axis, i in zip(("batch item", "step"), first))
        raise ValueError(f"{name} must be finite and > 0 (the time since the previous sample; merge samples taken at "
                         f"the same time); {int(bad.sum())} {'is' if int(bad.sum()) == 1 else 'are'} not, the first {intervals[first].item():.6g} at {where}")


def _finite_and_positive(intervals: torch.Tensor) -> bool:
    """Whether every interval is finite and > 0; True, unchecked, where the values cannot be branched on: under
    ``torch.func.vmap`` over the intervals (a batch of sampling-time sequences) the check raised vmap's
    "data-dependent control flow" RuntimeError, which named neither the intervals nor the transform. Eagerly and under
    ``grad``, ``jacrev``, ``jvp`` it runs (as :func:`ssmkit.utils.check_finite_sequence`)."""
    try:
        return bool(torch.isfinite(intervals).all()) and bool((intervals > 0).all())
    except RuntimeError:
        if not torch._C._are_functorch_transforms_active():
            raise
        return True


def irregular_discretize(
    Lambda: torch.Tensor, dt: torch.Tensor, intervals: torch.Tensor, rule: str = "zoh"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ā_t = f(z_t) and the input gains Δ τ_t g(z_t), z_t = Δ τ_t Λ, of every step (module docstring).

    Single precision is evaluated in double and rounded once (as the regular discretisation of
    :mod:`ssmkit.ops.discretize`: e^z turns an absolute error of z into a relative one of Ā). ZOH in real arithmetic
    (:func:`zoh_exp_parts`), g(z) = (e^z − 1)/z by its series where |z| < 1e-3.

    Args:
        Lambda: (M,) complex continuous-time eigenvalues.
        dt: (M,) real positive step per mode.
        intervals: (*T) real positive gaps in nominal sampling periods ((B, L) for a sequence, (B,) for a step).
        rule: ``"zoh"`` or ``"bilinear"``.

    Returns:
        (A_bar, gain): each (*T, M), complex, Λ's dtype; B̄_t = gain_t[:, None] * B̃.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}; got {rule!r}")
    if not Lambda.is_complex() or Lambda.dim() != 1:
        raise ValueError(f"Lambda must be (M,) complex; got {tuple(Lambda.shape)} {Lambda.dtype}")
    if dt.shape != Lambda.shape or dt.is_complex():
        raise ValueError(f"dt must be (M,) = {tuple(Lambda.shape)} real; got {tuple(dt.shape)} {dt.dtype}")
    step = widen(intervals).to(widen(dt).dtype)[..., None] * widen(dt)  # (*T, M): Δ τ_t per mode, double
    z = step * widen(Lambda)  # (*T, M) complex double
    if rule == "bilinear":
        half = 1 - z / 2
        return ((1 + z / 2) / half).to(Lambda.dtype), (step / half).to(Lambda.dtype)
    A_re, A_im, E_re = zoh_exp_parts(z.real, z.imag)
    small = (z.real.square() + z.imag.square()) < 1e-6  # |z| < 1e-3: g by its series (1/z² in the gradient above)
    # Δτ g(z) = (e^z − 1)/Λ outside the series' disc: written as Δτ · (e^z − 1)/z, autograd's derivative in Δτ is
    # (e^z − 1)/z − (e^z − 1)/z + e^z, two terms of size 1/|z| cancelling to e^z (1e-21 for 1e-77 at a gap of 1e5)
    safe = torch.where(small, torch.ones_like(z), widen(Lambda).expand_as(z))  # Λ = 0 only where z = 0 (small)
    series = 1 + z * (1 / 2 + z * (1 / 6 + z * (1 / 24 + z / 120)))  # truncation |z|⁵/720 < 2e-18 relative
    gain = torch.where(small, step * series, torch.complex(E_re, A_im) / safe)  # Δτ (e^z − 1)/z
    return torch.complex(A_re, A_im).to(Lambda.dtype), gain.to(Lambda.dtype)


def zoh_exp_parts(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """e^z and e^z − 1 of z = x + iy in real arithmetic: (Re e^z, Im e^z, Re(e^z − 1)); Im(e^z − 1) = Im e^z.

    e^z = e^x (cos y + i sin y) and e^z − 1 = expm1(x) cos y − 2 sin²(y/2) + i e^x sin y, which loses no digit as
    z → 0 (no series, no cancellation), at a handful of real elementwise ops: torch's complex exp and products are
    5-10x slower than exp, cos, sin and products of the parts, and the 18-term series of
    :mod:`ssmkit.ops.discretize` formed 18 powers of every step's z (1.8 GB for S5's 16 MiB coefficients at B 8,
    L 4096, M 32). Where x < −1, Re(e^z − 1) is e^x cos y − 1 instead (|value| > 1 − e^{−1}: no cancellation in it):
    autograd's derivative of the first form in y, −expm1(x) sin y − sin y, cancels to an absolute error of ~1e-16
    where its value −e^x sin y vanishes (a gap of 1e5 periods: gradients of the gaps and of Δ of 1e-18 against 1e-77,
    where the C kernels are exact); that of the second is −e^x sin y as written.

    Args:
        x, y: real tensors of one shape, the real and imaginary parts of z.

    Returns:
        (Re e^z, Im e^z, Re(e^z − 1)), each of x's shape.
    """
    ex, cos, sin = torch.exp(x), torch.cos(y), torch.sin(y)
    A_re = ex * cos
    near = torch.expm1(x) * cos - 2 * torch.sin(y / 2).square()  # exact to its own size as z → 0
    return A_re, ex * sin, torch.where(x < -1, A_re - 1, near)  # fast decay: exact derivatives (docstring)


def real_zoh_coefficients(z: torch.Tensor, w: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real modes held over the gaps τ: Ā = e^{τz} and B̄ = (e^{τz} − 1) w, with w = B/Λ given in closed form (never
    formed as B/Λ from a B built from Λ, whose derivative in z is two terms of size |w ∂w/z| cancelling to round-off
    where the true one is e^{τz}-small: Mega's EMA, w = −β/δ). e^x − 1 is expm1(x) in value and e^x in every
    derivative (expm1's own, (e^x − 1) + 1, is 0 or round-off where e^x ≪ 1: the gaps' gradient at long gaps), so
    the derivatives of z, w and τ keep their relative accuracy; in z's dtype.

    Args:
        z: (H, N) real z = Δ Λ ≤ 0.
        w: (H, N) real B/Λ.
        tau: (*T) real positive gaps in nominal sampling periods.

    Returns:
        (A_bar, B_bar): each (*T, H, N) of z's dtype.
    """
    x = tau.to(z.dtype)[..., None, None] * z  # (*T, H, N): τ z ≤ 0
    A_bar = torch.exp(x)
    E = torch.expm1(x).detach() + (A_bar - A_bar.detach())  # e^x − 1 (+ an exact 0) whose derivatives are e^x's
    return A_bar, E * w


def irregular_scan_reference(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    gain: torch.Tensor,
    B_tilde: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x_t = Ā_t ⊙ x_{t-1} + gain_t ⊙ (B̃ u_t), y_t = Re(C x_t) + D ⊙ u_t by a plain loop (the oracle of
    :func:`irregular_scan`).

    Args:
        u: (B, L, H) real input.
        A_bar: (B, L, M) complex per-step state factors.
        gain: (B, L, M) complex per-step input gains.
        B_tilde: (M, H) complex continuous-time input matrix.
        C: (H, M) complex output matrix (2·C for conjugate-pair halves).
        state: (B, M) complex x_{-1}, or None for zeros.
        D: (H,) real skip, or None.
        return_state: whether to return the final state (else None in its place).

    Returns:
        y (B, L, H) real in u's dtype, and x_{L-1} (B, M) (or None).
    """
    _check_irregular(u, A_bar, gain, B_tilde, C, state, D)
    x = state if state is not None else u.new_zeros((u.shape[0], B_tilde.shape[0]), dtype=B_tilde.dtype)  # (B, M)
    ys = []
    for t, u_t in enumerate(u.unbind(1)):
        x = A_bar[:, t] * x + gain[:, t] * (u_t.to(B_tilde.dtype) @ B_tilde.transpose(0, 1))  # (B, M)
        ys.append((x @ C.transpose(0, 1)).real)  # (B, H)
    y = torch.stack(ys, dim=1)  # (B, L, H)
    return (y if D is None else y + D * u), (x if return_state else None)


def irregular_scan_chunked(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    gain: torch.Tensor,
    B_tilde: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
    recurrence_backend: str = "chunked",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`irregular_scan_reference` in three steps: v = u B̃ᵀ (one real GEMM), the time-varying recurrence
    x_t = Ā_t ⊙ x_{t-1} + gain_t ⊙ v_t (:func:`ssmkit.ops.recurrence.linear_recurrence`, chunked or the C kernel),
    y = Re(x Cᵀ) + D u (one real GEMM). Memory O(B·L·M).

    Args:
        u: (B, L, H) real input.
        A_bar: (B, L, M) complex per-step state factors.
        gain: (B, L, M) complex per-step input gains.
        B_tilde: (M, H) complex continuous-time input matrix.
        C: (H, M) complex output matrix (2·C for conjugate-pair halves).
        state: (B, M) complex x_{-1}, or None for zeros.
        D: (H,) real skip, or None.
        return_state: whether to return the final state (else None in its place).
        recurrence_backend: the recurrence's backend (``"chunked"``, ``"native"`` or ``"auto"``).

    Returns:
        y (B, L, H) real in u's dtype, and x_{L-1} (B, M) (or None).
    """
    _check_irregular(u, A_bar, gain, B_tilde, C, state, D)

    def scan(_, v: torch.Tensor, h0: torch.Tensor | None):  # the layer's Ā is per step here
        return linear_recurrence(A_bar, gain * v, h0, backend=recurrence_backend)

    return _project_scan_read(u, A_bar, B_tilde, C, state, D, return_state, scan)


def _irregular_native(u, A_bar, gain, B_tilde, C, state=None, D=None, *, return_state=True):
    """:func:`irregular_scan_chunked` with the recurrence's own ``"auto"`` choice (its C kernel on the CPU)."""
    return irregular_scan_chunked(u, A_bar, gain, B_tilde, C, state, D, return_state=return_state,
                                  recurrence_backend="auto")


_SCAN = {"reference": irregular_scan_reference, "chunked": irregular_scan_chunked, "native": _irregular_native}


def irregular_scan(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    gain: torch.Tensor,
    B_tilde: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The irregularly sampled MIMO diagonal SSM (module docstring) over a sequence; the path by the backend:
    ``"reference"`` -> the loop; ``"chunked"`` -> GEMMs and the chunked recurrence; ``"native"`` and ``"auto"`` ->
    GEMMs and the recurrence's own choice (its C kernel on the CPU where it runs); ``"fft"``, ``"triton"`` raise.

    Args:
        u: (B, L, H) real input.
        A_bar: (B, L, M) complex per-step state factors.
        gain: (B, L, M) complex per-step input gains.
        B_tilde: (M, H) complex continuous-time input matrix.
        C: (H, M) complex output matrix (2·C for conjugate-pair halves).
        state: (B, M) complex x_{-1}, or None for zeros.
        D: (H,) real skip, or None.
        return_state: whether to return the final state (else None in its place).
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        y (B, L, H) real in u's dtype, and x_{L-1} (B, M) (or None).
    """
    impl = dispatch("irregular_scan", _SCAN, backend, auto=lambda: "native")
    return impl(u, A_bar, gain, B_tilde, C, state, D, return_state=return_state)


def _ssm_reference(u, Lambda, B_tilde, C, dt, intervals, state=None, D=None, rule="zoh", *, return_state=True):
    """:func:`irregular_discretize` (rounded to B̃'s dtype), then :func:`irregular_scan_reference`."""
    _check_continuous(u, Lambda, B_tilde, C, dt, intervals, state, D, rule)
    A_bar, gain = (t.to(B_tilde.dtype) for t in irregular_discretize(Lambda, dt, intervals, rule))
    return irregular_scan_reference(u, A_bar, gain, B_tilde, C, state, D, return_state=return_state)


def _ssm_chunked(u, Lambda, B_tilde, C, dt, intervals, state=None, D=None, rule="zoh", *, return_state=True,
                 recurrence_backend="chunked"):
    """:func:`irregular_discretize` (rounded to B̃'s dtype), then :func:`irregular_scan_chunked`."""
    _check_continuous(u, Lambda, B_tilde, C, dt, intervals, state, D, rule)
    A_bar, gain = (t.to(B_tilde.dtype) for t in irregular_discretize(Lambda, dt, intervals, rule))
    return irregular_scan_chunked(u, A_bar, gain, B_tilde, C, state, D, return_state=return_state,
                                  recurrence_backend=recurrence_backend)


def _ssm_native(u, Lambda, B_tilde, C, dt, intervals, state=None, D=None, rule="zoh", *, return_state=True):
    """The modes by the C kernel of :mod:`ssmkit.ops.native.irregular_mimo` (each step's coefficients formed in
    registers, never stored) between the two GEMMs, where it runs: u on the CPU in float32 or float64, the kernel built
    and checked (:func:`ssmkit.ops.native.gate.prefer_native`: not under a torch.func transform, torch.export or
    forward-mode AD); elsewhere :func:`_ssm_chunked` with the recurrence's own ``"auto"`` choice. z = Δ Λ and the
    rule's input factor w (1/Λ, or Δ) are formed in double by autograd-recorded torch ops (the gradients reach Λ and Δ
    through them)."""
    from ssmkit.ops.native.gate import prefer_native
    from ssmkit.ops.native.irregular_mimo import modes_unchecked

    _check_continuous(u, Lambda, B_tilde, C, dt, intervals, state, D, rule)
    if not (prefer_native("irregular_mimo", u) and B_tilde.is_complex()):
        return _ssm_chunked(u, Lambda, B_tilde, C, dt, intervals, state, D, rule, return_state=return_state,
                            recurrence_backend="auto")
    Lw = widen(Lambda).to(torch.complex128)
    dtw = widen(dt).to(torch.float64)
    z = dtw * Lw  # (M,)
    w = dtw.to(torch.complex128) if rule == "bilinear" else 1 / Lw  # (M,)

    def scan(_, v: torch.Tensor, h0: torch.Tensor | None):
        x = modes_unchecked(v, z, w, intervals, h0, rule)  # (B, L, M)
        return x, x[:, -1]

    return _project_scan_read(u, B_tilde, B_tilde, C, state, D, return_state, scan)


_SSM = {"reference": _ssm_reference, "chunked": _ssm_chunked, "native": _ssm_native}


def irregular_ssm_scan(
    u: torch.Tensor,
    Lambda: torch.Tensor,
    B_tilde: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    intervals: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    rule: str = "zoh",
    *,
    return_state: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The irregularly sampled MIMO diagonal SSM (module docstring) from its continuous-time parameters: v = u B̃ᵀ,
    x_t = Ā_t ⊙ x_{t-1} + gain_t ⊙ v_t with Ā_t = f(Δ τ_t Λ), gain_t = Δ τ_t g(Δ τ_t Λ) (the rule's), y = Re(x Cᵀ) + D u.
    The path by the backend: ``"reference"`` -> :func:`irregular_discretize` and the loop; ``"chunked"`` -> the
    (B, L, M) coefficients by :func:`irregular_discretize`, GEMMs and the chunked recurrence; ``"native"`` and
    ``"auto"`` -> GEMMs around the C kernel of :mod:`ssmkit.ops.native.irregular_mimo`, which forms each step's
    coefficients in registers (no (B, L, M) coefficient tensors), on the CPU where it runs, else the coefficients
    and the recurrence's own choice; ``"fft"``, ``"triton"`` raise. The coefficients are formed in double and rounded
    to B̃'s dtype on the tensor paths; the kernel keeps them and the state in double.

    Args:
        u: (B, L, H) real input.
        Lambda: (M,) complex continuous-time eigenvalues.
        B_tilde: (M, H) complex continuous-time input matrix (the dtype of the scan).
        C: (H, M) complex output matrix (2·C for conjugate-pair halves), B̃'s dtype.
        dt: (M,) real positive step per mode.
        intervals: (B, L) real positive gaps in nominal sampling periods.
        state: (B, M) complex x_{-1} of B̃'s dtype, or None for zeros.
        D: (H,) real skip, or None.
        rule: ``"zoh"`` or ``"bilinear"``.
        return_state: whether to return the final state (else None in its place).
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        y (B, L, H) real in u's dtype, and x_{L-1} (B, M) (or None).
    """
    impl = dispatch("irregular_ssm_scan", _SSM, backend, auto=lambda: "native")
    return impl(u, Lambda, B_tilde, C, dt, intervals, state, D, rule, return_state=return_state)


def irregular_step(
    u_t: torch.Tensor,
    A_bar: torch.Tensor,
    gain: torch.Tensor,
    B_tilde: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step x_t = Ā_t ⊙ x_{t-1} + gain_t ⊙ (B̃ u_t), y_t = Re(C x_t) + D ⊙ u_t.

    Args:
        u_t: (B, H) real input.
        A_bar, gain: (B, M) complex, this step's (:func:`irregular_discretize` of the (B,) intervals).
        B_tilde: (M, H) complex continuous-time input matrix.
        C: (H, M) complex output matrix (2·C for conjugate-pair halves).
        state: (B, M) complex x_{t-1}.
        D: (H,) real skip, or None.

    Returns:
        y_t (B, H) real and x_t (B, M).
    """
    x = A_bar * state + gain * (u_t.to(B_tilde.dtype) @ B_tilde.transpose(0, 1))  # (B, M)
    y = (x @ C.transpose(0, 1)).real  # (B, H)
    return (y if D is None else torch.addcmul(y, D, u_t)), x


def _check_irregular(u, A_bar, gain, B_tilde, C, state, D) -> None:
    """The MIMO scan's checks with B̃ as its B̄, and the per-step coefficients (B, L, M) complex."""
    _check_mimo(u, B_tilde.new_ones(B_tilde.shape[0]), B_tilde, C, state, D)
    want = (*u.shape[:2], B_tilde.shape[0])
    for name, t in (("A_bar", A_bar), ("gain", gain)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want or t.dtype != B_tilde.dtype:
            raise ValueError(f"{name} must be (B, L, M) = {want} {B_tilde.dtype}; got "
                             f"{tuple(getattr(t, 'shape', ()))} {getattr(t, 'dtype', type(t).__name__)}")


def _check_continuous(u, Lambda, B_tilde, C, dt, intervals, state, D, rule) -> None:
    """The MIMO scan's checks with B̃ as its B̄; Λ (M,) complex, Δ (M,) real, the gaps (B, L) real on u's device and
    the rule (the gaps' values are the caller's: :func:`check_intervals`)."""
    _check_mimo(u, B_tilde.new_ones(B_tilde.shape[0]), B_tilde, C, state, D)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}; got {rule!r}")
    M = B_tilde.shape[0]
    if not isinstance(Lambda, torch.Tensor) or not Lambda.is_complex() or tuple(Lambda.shape) != (M,):
        raise ValueError(f"Lambda must be (M,) = ({M},) complex; got {tuple(getattr(Lambda, 'shape', ()))} "
                         f"{getattr(Lambda, 'dtype', type(Lambda).__name__)}")
    if not isinstance(dt, torch.Tensor) or not dt.is_floating_point() or tuple(dt.shape) != (M,):
        raise ValueError(f"dt must be (M,) = ({M},) real; got {tuple(getattr(dt, 'shape', ()))} "
                         f"{getattr(dt, 'dtype', type(dt).__name__)}")
    want = tuple(u.shape[:2])
    if not isinstance(intervals, torch.Tensor) or not intervals.is_floating_point() or tuple(intervals.shape) != want:
        raise ValueError(f"intervals must be a real floating tensor of shape {want}; got "
                         f"{tuple(getattr(intervals, 'shape', ()))} {getattr(intervals, 'dtype', type(intervals).__name__)}")
    if intervals.device != u.device:
        raise ValueError(f"intervals must be on {u.device} like the input; got {intervals.device}")
