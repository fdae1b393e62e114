"""A bank of H diagonal SISO systems (S4D, arXiv 2206.11893) sampled at irregular times.

Channel h is the continuous-time system dx/ds = Λ_h ⊙ x + B_h u_h(s) with M complex modes, observed at times whose
gaps are τ_t (B, L) nominal sampling periods; channel h advances Δ_h τ_t in its own time (Δ (H,), the learned step,
so τ = 1 everywhere is the regularly sampled layer). The input is held over the gap that ends at sample t (the
zero-order hold in the SSM convention x_t = Ā x_{t-1} + B̄ u_t). With z_t = Δ_h τ_t Λ_h:

    ZOH:      Ā_t = exp(z_t),                 B̄_t = Δ_h τ_t g(z_t) B_h,   g(z) = (e^z − 1)/z
    bilinear: Ā_t = (1 + z_t/2)/(1 − z_t/2),  B̄_t = Δ_h τ_t/(1 − z_t/2) B_h
    x_t = Ā_t ⊙ x_{t-1} + B̄_t u_t,   y_t = Re(Σ_m C_{h,m} x_{t,m}) + D_h u_t

Unlike S5's modes (:mod:`ssmkit.ops.irregular`), every channel, mode and step has its own decay here: the
coefficients are (B, L, H, M). The chunked path forms them for T steps at a time and runs each chunk under an
activation checkpoint (``torch.utils.checkpoint``, non-reentrant) that keeps only the chunk's inputs and its start
state: memory O(B·L·H + B·T·H·M + B·H·M·L/T), never the (B, L, H, M) tensor; the backward recomputes one chunk at a
time. The coefficients are formed in double for a single-precision layer and rounded once (e^z turns an absolute
error of z into a relative one of Ā, as :mod:`ssmkit.ops.discretize`).

Real modes (Mega's EMA, arXiv 2209.10655: :mod:`ssmkit.layers.ema`): Λ, B and C given as real tensors make the bank
real, with a real state (u's dtype) and Ā = e^z, B̄ = (e^z − 1) B/Λ (ZOH) by expm1, no phases; the C kernel runs them
in its real variant (no complex arithmetic). Complex tensors whose imaginary parts are 0 stay a complex bank.

Few distinct gaps (samples dropped from a regular grid: τ ∈ {1, 2, 3, …}): the coefficients depend on a step only
through its gap, so the C kernel forms them once per distinct gap of a row, Ā[k], B̄[k], and steps by a lookup,
x_t = Ā[k_t] x_{t-1} + B̄[k_t] u_t, where the row's K distinct gaps are at most L/8 (bit-identical results;
:mod:`ssmkit.ops.native.irregular_bank`: the rule and the figures).
"""

from __future__ import annotations

import torch

from ssmkit.ops._checks import COMPLEX_OF
from ssmkit.ops.backend import checkpointed_chunks, dispatch
from ssmkit.ops.discretize import widen
from ssmkit.ops.irregular import RULES, real_zoh_coefficients, zoh_exp_parts
from ssmkit.ops.recurrence import linear_recurrence
from ssmkit.utils import check_floating

def bank_irregular_coefficients(
    Lambda: torch.Tensor, B: torch.Tensor, dt: torch.Tensor, intervals: torch.Tensor, rule: str,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ā_t and B̄_t of every step (module docstring), formed in double and rounded once to ``dtype``.

    Args:
        Lambda: (H, M) complex continuous-time eigenvalues (real: real modes).
        B: (H, M) complex input vectors (real with a real Λ).
        dt: (H,) real positive step per channel.
        intervals: (*T) real positive gaps in nominal sampling periods ((B, T) for a chunk, (B,) for a step).
        rule: ``"zoh"`` or ``"bilinear"``.
        dtype: the dtype of the result: complex, or real for real modes.

    Returns:
        (A_bar, B_bar): each (*T, H, M) of ``dtype``.
    """
    if not Lambda.is_complex():
        A_bar, B_bar = _real_coefficients(Lambda, B, dt, intervals, rule)
        return A_bar.to(dtype), B_bar.to(dtype)
    A_re, A_im, B_re, B_im = _coefficient_parts(Lambda, B, dt, intervals, rule)
    return _as_complex(A_re, A_im, dtype), _as_complex(B_re, B_im, dtype)


def _coefficient_parts(
    Lambda: torch.Tensor, B: torch.Tensor, dt: torch.Tensor, intervals: torch.Tensor, rule: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re Ā, Im Ā, Re B̄, Im B̄ of every step (each (*T, H, M), real, in double for single-precision inputs).

    ZOH in real arithmetic (:func:`ssmkit.ops.irregular.zoh_exp_parts`: e^z and e^z − 1 without cancellation), and
    B̄ = Δτ g(z) B = (e^z − 1) · B/Λ (S4D's Re Λ = −e^a < 0: Λ ≠ 0)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}; got {rule!r}")
    wide_dt = widen(dt)
    step = widen(intervals).to(wide_dt.dtype)[..., None, None] * wide_dt[:, None]  # (*T, H, 1): Δ_h τ_t
    Lambda, B = widen(Lambda), widen(B)
    if rule == "bilinear":
        z = step * Lambda  # (*T, H, M)
        half = 1 - z / 2
        A_bar, B_bar = (1 + z / 2) / half, step * B / half
        return A_bar.real, A_bar.imag, B_bar.real, B_bar.imag
    A_re, A_im, E_re = zoh_exp_parts(step * Lambda.real, step * Lambda.imag)  # (*T, H, M) each; Im(e^z − 1) = A_im
    W = B / Lambda  # (H, M)
    return A_re, A_im, E_re * W.real - A_im * W.imag, E_re * W.imag + A_im * W.real


def _real_coefficients(
    Lambda: torch.Tensor, B: torch.Tensor, dt: torch.Tensor, intervals: torch.Tensor, rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ā and B̄ of every step for real modes (each (*T, H, M), real, in double for single-precision inputs): ZOH
    Ā = e^z, B̄ = (e^z − 1) B/Λ with e^z − 1 by expm1 (no cancellation for small |z|); bilinear as the complex rule."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}; got {rule!r}")
    wide_dt = widen(dt)
    step = widen(intervals).to(wide_dt.dtype)[..., None, None] * wide_dt[:, None]  # (*T, H, 1): Δ_h τ_t
    Lambda, B = widen(Lambda), widen(B)
    z = step * Lambda  # (*T, H, M)
    if rule == "bilinear":
        half = 1 - z / 2
        return (1 + z / 2) / half, step * B / half
    return torch.exp(z), torch.expm1(z) * (B / Lambda)


def _as_complex(re: torch.Tensor, im: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """re + i·im as a complex ``dtype`` tensor (rounded once from the parts' precision)."""
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    return torch.view_as_complex(torch.stack((re.to(real), im.to(real)), dim=-1))


def _read_out(h: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Re(Σ_m C_{h,m} x_{..., h, m}) of the states h (..., H, M) in real arithmetic: (..., H)."""
    if not h.is_complex():  # real modes
        return (h * C.to(h.dtype)).sum(-1)
    real = torch.view_as_real(h)  # (..., H, M, 2)
    C_pair = torch.stack((C.real, -C.imag), dim=-1).to(real.dtype)  # (H, M, 2)
    return (real * C_pair).sum((-2, -1))


def _state_dtype(u: torch.Tensor, Lambda: torch.Tensor) -> torch.dtype:
    """The state's dtype: u's complex dtype for complex modes, u's dtype for real ones."""
    return COMPLEX_OF[u.dtype] if Lambda.is_complex() else u.dtype


def _check_bank(u, Lambda, B, C, dt, intervals, D, state) -> None:
    """Validate u (B, L, H), Λ, B, C (H, M) all complex or all real (real modes), Δ (H,), the gaps (B, L), D (H,) and
    the state (B, H, M) (complex, or of u's dtype for real modes)."""
    check_floating(u, "u")
    if u.dim() != 3 or 0 in u.shape:
        raise ValueError(f"u must be (B, L, H) with B, L, H >= 1; got {tuple(u.shape)}")
    Bsz, L, H = u.shape
    if (not isinstance(Lambda, torch.Tensor) or not (Lambda.is_complex() or Lambda.is_floating_point())
            or Lambda.dim() != 2 or Lambda.shape[0] != H):
        raise ValueError(f"Lambda must be (H, M) complex (or real: real modes) with H = {H}; got "
                         f"{tuple(getattr(Lambda, 'shape', ()))} {getattr(Lambda, 'dtype', type(Lambda).__name__)}")
    M = Lambda.shape[1]
    for name, t in (("B", B), ("C", C)):
        if (not isinstance(t, torch.Tensor) or tuple(t.shape) != (H, M)
                or not (t.is_complex() or t.is_floating_point())):
            raise ValueError(f"{name} must be (H, M) = ({H}, {M}) complex (real for real modes); got "
                             f"{tuple(getattr(t, 'shape', ()))} {getattr(t, 'dtype', type(t).__name__)}")
    if not Lambda.is_complex() == B.is_complex() == C.is_complex():
        raise ValueError(f"Lambda must be complex with complex B and C, or real with real B and C (real modes); got "
                         f"Lambda {Lambda.dtype}, B {B.dtype}, C {C.dtype}")
    for name, t, shape in (("dt", dt, (H,)), ("intervals", intervals, (Bsz, L)), ("D", D, (H,))):
        if t is not None and (not isinstance(t, torch.Tensor) or not t.is_floating_point() or tuple(t.shape) != shape):
            raise ValueError(f"{name} must be {shape} real; got "
                             f"{tuple(getattr(t, 'shape', ()))} {getattr(t, 'dtype', type(t).__name__)}")
    if state is not None and (not isinstance(state, torch.Tensor) or tuple(state.shape) != (Bsz, H, M)
                              or state.dtype != _state_dtype(u, Lambda)):
        raise ValueError(f"state must be (B, H, M) = ({Bsz}, {H}, {M}) {_state_dtype(u, Lambda)}; got "
                         f"{tuple(getattr(state, 'shape', ()))} {getattr(state, 'dtype', type(state).__name__)}")


def bank_irregular_scan_reference(
    u: torch.Tensor,
    Lambda: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    intervals: torch.Tensor,
    D: torch.Tensor | None = None,
    rule: str = "zoh",
    state: torch.Tensor | None = None,
    *,
    return_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The irregularly sampled bank (module docstring) by a plain loop over time: the oracle of
    :func:`bank_irregular_scan`.

    Args:
        u: (B, L, H) real input.
        Lambda: (H, M) complex continuous-time eigenvalues (real: real modes, module docstring).
        B: (H, M) complex input vectors (real with a real Λ).
        C: (H, M) complex output vectors (2·C for conjugate-pair halves; real with a real Λ).
        dt: (H,) real positive step per channel.
        intervals: (B, L) real positive gaps in nominal sampling periods.
        D: (H,) real skip, or None.
        rule: ``"zoh"`` or ``"bilinear"``.
        state: (B, H, M) complex x_{-1} (u's complex dtype; u's dtype for real modes), or None for zeros.
        return_state: whether to return the final state (else None in its place).

    Returns:
        y (B, L, H) real in u's dtype, and x_{L-1} (B, H, M) (or None).
    """
    _check_bank(u, Lambda, B, C, dt, intervals, D, state)
    dtype = _state_dtype(u, Lambda)
    x = state if state is not None else u.new_zeros((u.shape[0], *Lambda.shape), dtype=dtype)  # (B, H, M)
    ys = []
    for t, u_t in enumerate(u.unbind(1)):
        A_bar, B_bar = bank_irregular_coefficients(Lambda, B, dt, intervals[:, t], rule, dtype)  # (B, H, M)
        x = A_bar * x + B_bar * u_t[..., None]
        y_t = (x * C.to(dtype)).sum(-1)  # (B, H): complex arithmetic, the oracle of _read_out
        ys.append(y_t.real if y_t.is_complex() else y_t)
    y = torch.stack(ys, dim=1)  # (B, L, H)
    return (y if D is None else y + D * u), (x if return_state else None)


def _chunk(u_c, tau_c, h0, Lambda, B, C, dt, D, rule: str, backend: str):
    """One chunk of T steps: its coefficients (B, T, H, M), the recurrence from h0, the read-out and the skip."""
    if not Lambda.is_complex():  # real modes
        A_bar, B_bar = _real_coefficients(Lambda, B, dt, tau_c, rule)  # (B, T, H, M) each
        Bu = (B_bar * u_c[..., None].to(B_bar.dtype)).to(h0.dtype)
        h, h_last = linear_recurrence(A_bar.to(h0.dtype), Bu, h0, backend=backend)
        y = _read_out(h, C)
        return (y if D is None else y + D * u_c), h_last
    A_re, A_im, B_re, B_im = _coefficient_parts(Lambda, B, dt, tau_c, rule)  # (B, T, H, M) each
    u = u_c[..., None].to(B_re.dtype)  # (B, T, H, 1)
    A_bar, Bu = _as_complex(A_re, A_im, h0.dtype), _as_complex(B_re * u, B_im * u, h0.dtype)
    h, h_last = linear_recurrence(A_bar, Bu, h0, backend=backend)  # (B, T, H, M), (B, H, M)
    y = _read_out(h, C)  # (B, T, H)
    return (y if D is None else y + D * u_c), h_last


def bank_irregular_scan_chunked(
    u: torch.Tensor,
    Lambda: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    intervals: torch.Tensor,
    D: torch.Tensor | None = None,
    rule: str = "zoh",
    state: torch.Tensor | None = None,
    *,
    return_state: bool = True,
    chunk_size: int | None = None,
    recurrence_backend: str = "chunked",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`bank_irregular_scan_reference` chunk by chunk, each chunk's (B, T, H, M) coefficients formed, scanned
    (:func:`ssmkit.ops.recurrence.linear_recurrence`) and read out under an activation checkpoint when autograd
    records (module docstring), recomputed under the backend in force at the call
    (:func:`ssmkit.ops.backend.checkpoint_contexts`); inside torch.func transforms, which refuse the checkpoint's
    hooks, without one.

    Args:
        u: (B, L, H) real input.
        Lambda: (H, M) complex continuous-time eigenvalues (real: real modes, module docstring).
        B: (H, M) complex input vectors (real with a real Λ).
        C: (H, M) complex output vectors (2·C for conjugate-pair halves; real with a real Λ).
        dt: (H,) real positive step per channel.
        intervals: (B, L) real positive gaps in nominal sampling periods.
        D: (H,) real skip, or None.
        rule: ``"zoh"`` or ``"bilinear"``.
        state: (B, H, M) complex x_{-1} (real for real modes), or None for zeros.
        return_state: whether to return the final state (else None in its place).
        chunk_size: T, the steps whose coefficients are held at once (>= 1), or None: 64 where autograd records (the
            backward keeps a start state per chunk: B·H·M·L/T), 16 otherwise (a chunk's (B, T, H, M) tensors stay in
            cache: forward 2.1 s against 2.9-3.9 s at T = 64 at B 8, L 4096, H 128, N 64 on 2 cores).
        recurrence_backend: the recurrence's backend inside a chunk (``"chunked"``, ``"native"`` or ``"auto"``).

    Returns:
        y (B, L, H) real in u's dtype, and x_{L-1} (B, H, M) (or None).
    """
    _check_bank(u, Lambda, B, C, dt, intervals, D, state)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1; got {chunk_size!r}")
    h = state if state is not None else u.new_zeros((u.shape[0], *Lambda.shape), dtype=_state_dtype(u, Lambda))
    T = chunk_size if chunk_size is not None else (64 if torch.is_grad_enabled() else 16)
    y, h = checkpointed_chunks(_chunk, u, intervals, h, T, Lambda, B, C, dt, D, rule, recurrence_backend)
    return y, (h if return_state else None)


def real_zoh_chunk(u_c, tau_c, h0, z, w, C, D, recurrence_backend: str = "chunked"):
    """One chunk of :func:`real_zoh_scan`: the coefficients (B, T, H, N) in z's dtype, B̄ u rounded once to the
    state's dtype, the recurrence from h0 (B, H, N), the read-out Σ C h and the skip (D None: none)."""
    A_bar, B_bar = real_zoh_coefficients(z, w, tau_c)  # (B, T, H, N) each
    Bu = (B_bar * u_c[..., None].to(B_bar.dtype)).to(h0.dtype)
    h, h_last = linear_recurrence(A_bar.to(h0.dtype), Bu, h0, backend=recurrence_backend)
    y = (h * C.to(h.dtype)).sum(-1)
    return (y if D is None else y + D * u_c), h_last


def real_zoh_scan(u: torch.Tensor, intervals: torch.Tensor, z: torch.Tensor, w: torch.Tensor, C: torch.Tensor,
                  D: torch.Tensor | None, h0: torch.Tensor, T: int = 64,
                  recurrence_backend: str = "chunked") -> tuple[torch.Tensor, torch.Tensor]:
    """Real ZOH modes from z = Δ Λ and w = B/Λ given in closed form (:func:`ssmkit.ops.irregular.
    real_zoh_coefficients`), chunk by chunk under activation checkpoints (:func:`ssmkit.ops.backend.
    checkpointed_chunks`): Mega's EMA, and the PyTorch path of the C kernel's double backward for real modes.

    Args:
        u: (B, L, H) input.
        intervals: (B, L) gaps in nominal sampling periods.
        z: (H, N) real z.
        w: (H, N) real w.
        C: (H, N) real read-out.
        D: (H,) skip, or None.
        h0: (B, H, N) initial state.
        T: steps per chunk.
        recurrence_backend: the chunk recurrence's backend (:func:`ssmkit.ops.recurrence.linear_recurrence`).

    Returns:
        y (B, L, H) and the final state (B, H, N).
    """
    return checkpointed_chunks(real_zoh_chunk, u, intervals, h0, T, z, w, C, D, recurrence_backend)


def _bank_native(u, Lambda, B, C, dt, intervals, D=None, rule="zoh", state=None, *, return_state=True):
    """The bank by its C kernel (:mod:`ssmkit.ops.native.irregular_bank`: each step's coefficients formed in registers,
    never stored, or once per distinct gap of a row whose gaps take few values) where it runs: u on the CPU in float32
    or float64, the kernel built and checked (:func:`ssmkit.ops.native.gate.prefer_native`: not under a torch.func
    transform, torch.export or forward-mode AD); elsewhere :func:`bank_irregular_scan_chunked` with the recurrence's
    own ``"auto"`` choice."""
    from ssmkit.ops.native.gate import prefer_native
    from ssmkit.ops.native.irregular_bank import bank_unchecked

    _check_bank(u, Lambda, B, C, dt, intervals, D, state)
    if prefer_native("bank_irregular", u):  # (False for a dtype the kernels are not built for)
        return bank_unchecked(u, Lambda, B, C, dt, intervals, D, rule, state, return_state)
    return bank_irregular_scan_chunked(u, Lambda, B, C, dt, intervals, D, rule, state, return_state=return_state,
                                       recurrence_backend="auto")


_SCAN = {"reference": bank_irregular_scan_reference, "chunked": bank_irregular_scan_chunked, "native": _bank_native}


def bank_irregular_scan(
    u: torch.Tensor,
    Lambda: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    intervals: torch.Tensor,
    D: torch.Tensor | None = None,
    rule: str = "zoh",
    state: torch.Tensor | None = None,
    *,
    return_state: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The irregularly sampled bank (module docstring) over a sequence; the path by the backend: ``"reference"`` ->
    the loop; ``"chunked"`` -> chunks of coefficients and the chunked recurrence; ``"native"`` and ``"auto"`` -> the
    C kernel on the CPU where it runs (:func:`_bank_native`), else the same chunks with the recurrence's own choice;
    ``"fft"`` and ``"triton"``
    raise (the system is time-varying: no convolution kernel).

    Args:
        u: (B, L, H) real input.
        Lambda: (H, M) complex continuous-time eigenvalues (real: real modes, module docstring).
        B: (H, M) complex input vectors (real with a real Λ).
        C: (H, M) complex output vectors (2·C for conjugate-pair halves; real with a real Λ).
        dt: (H,) real positive step per channel.
        intervals: (B, L) real positive gaps in nominal sampling periods.
        D: (H,) real skip, or None.
        rule: ``"zoh"`` or ``"bilinear"``.
        state: (B, H, M) complex x_{-1} (real for real modes), or None for zeros.
        return_state: whether to return the final state (else None in its place).
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        y (B, L, H) real in u's dtype, and x_{L-1} (B, H, M) (or None).
    """
    impl = dispatch("bank_irregular_scan", _SCAN, backend, auto="native")
    return impl(u, Lambda, B, C, dt, intervals, D, rule, state, return_state=return_state)


def bank_irregular_step(
    u_t: torch.Tensor,
    Lambda: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    interval: torch.Tensor,
    state: torch.Tensor,
    D: torch.Tensor | None = None,
    rule: str = "zoh",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step x_t = Ā_t ⊙ x_{t-1} + B̄_t u_t, y_t = Re(Σ_m C x_t) + D u_t after a gap of ``interval``.

    Args:
        u_t: (B, H) real input.
        Lambda: (H, M) complex continuous-time eigenvalues (real: real modes, module docstring).
        B: (H, M) complex input vectors (real with a real Λ).
        C: (H, M) complex output vectors (2·C for conjugate-pair halves; real with a real Λ).
        dt: (H,) real positive step per channel.
        interval: (B,) real positive gap in nominal sampling periods.
        state: (B, H, M) complex x_{t-1} (real for real modes).
        D: (H,) real skip, or None.
        rule: ``"zoh"`` or ``"bilinear"``.

    Returns:
        y_t (B, H) real and x_t (B, H, M).
    """
    A_bar, B_bar = bank_irregular_coefficients(Lambda, B, dt, interval, rule, state.dtype)  # (B, H, M)
    x = A_bar * state + B_bar * u_t[..., None]
    y = _read_out(x, C)  # (B, H)
    return (y if D is None else y + D * u_t), x
