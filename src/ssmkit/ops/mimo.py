"""The MIMO diagonal LTI SSM: one system with M diagonal modes shared by all H channels (S5, LRU).

S5 ("Simplified State Space Layers for Sequence Modeling", Smith, Warrington, Linderman, arXiv 2208.04933, eq. 2-3
and §3) and LRU ("Resurrecting Recurrent Neural Networks for Long Sequences", Orvieto et al., arXiv 2303.06349,
eq. 1) run one multi-input multi-output system with a diagonal state matrix:

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,    y_t = Re(C x_t) + D ⊙ u_t

with u_t, y_t ∈ R^H, x_t ∈ C^M, Ā (M,), B̄ (M, H), C (H, M). Layers with conjugate-pair modes (S5) pass 2·C.

Paths, one signature:
- ``mimo_scan_reference``: the loop over t (the oracle).
- ``mimo_scan_chunked`` (backend ``"chunked"``): three matmul-shaped steps. (1) project every input at once,
  v = u B̄ᵀ, one real GEMM (B·L, H) @ (H, 2M); (2) scan the M modes, x_t = Ā ⊙ x_{t-1} + v_t, by the chunked
  time-invariant :func:`ssmkit.ops.recurrence.linear_recurrence` (its adjoint backward stores only x); (3) read
  out, y = Re(x Cᵀ) + D u, one real GEMM (B·L, 2M) @ (2M, H). The states (B, L, M) are the largest tensor;
  nothing of size B·L·H·M is ever formed. The weight gradients of (1) and (3), ∂W_in = uᵀ ∂v and ∂W_out = xᵀ g, are
  sums over all B·L steps; where the product is narrow they are summed by blocks of rows (:func:`_tall_product`).

The kernel K_l = Re(C diag(Ā^l) B̄) (H, H, L) and the recurrent step are here too. A convolution (FFT) path is not
offered: a MIMO kernel costs H²·L per sequence in the frequency domain, against H·M·L for the scan.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ssmkit.ops._checks import REAL_OF, check_chunk_size
from ssmkit.ops.backend import autocast_enabled, dispatch, tracing
from ssmkit.ops.chunked import pack, unpack, wide_powers
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.gate import prefer_native, require_native
from ssmkit.ops.native.mimo import GRAM_BLOCK, GRAM_NARROW, _gram, mimo_native_unchecked
from ssmkit.ops.opaque import exporting
from ssmkit.ops.recurrence import linear_recurrence_chunked
from ssmkit.utils import check_floating


def _check_mimo(
    u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, state: torch.Tensor | None,
    D: torch.Tensor | None,
) -> None:
    """Validate u (B, L, H), Ā (M,), B̄ (M, H), C (H, M), the state (B, M) and the skip D (H,)."""
    check_floating(u, "u")
    if u.dim() != 3 or 0 in u.shape:
        raise ValueError(f"u must be (B, L, H) with B, L, H >= 1; got {tuple(u.shape)}")
    Bsz, H = u.shape[0], u.shape[-1]
    for name, p in (("A_bar", A_bar), ("B_bar", B_bar), ("C", C)):
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(p).__name__}")
        if not (p.is_complex() or p.is_floating_point()):
            raise ValueError(f"{name} must be complex64/complex128 or float32/float64; got {p.dtype}")
        if p.dtype != A_bar.dtype:
            raise ValueError(f"A_bar, B_bar and C must share one dtype; A_bar is {A_bar.dtype} but {name} is {p.dtype}")
        if p.device != u.device:
            raise ValueError(f"{name} must be on u's device {u.device}; got {p.device}")
    if A_bar.dim() != 1:
        raise ValueError(f"A_bar must be (M,) (one entry per mode); got shape {tuple(A_bar.shape)}")
    M = A_bar.shape[0]
    if tuple(B_bar.shape) != (M, H):
        raise ValueError(f"B_bar must be (M, H) = ({M}, {H}) (M from A_bar, H from u); got {tuple(B_bar.shape)}")
    if tuple(C.shape) != (H, M):
        raise ValueError(f"C must be (H, M) = ({H}, {M}) (H from u, M from A_bar); got {tuple(C.shape)}")
    if REAL_OF.get(A_bar.dtype, A_bar.dtype) != u.dtype:
        raise ValueError(
            f"mixed precisions: u is {u.dtype} but A_bar is {A_bar.dtype} "
            "(float32 goes with complex64/float32, float64 with complex128/float64)"
        )
    if state is not None:
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != (Bsz, M):
            found = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise ValueError(f"state must be (B, M) = ({Bsz}, {M}); got {found}")
        if state.dtype != A_bar.dtype:
            raise ValueError(f"state must have the dtype of A_bar ({A_bar.dtype}); got {state.dtype}")
        if state.device != u.device:
            raise ValueError(f"state must be on u's device {u.device}; got {state.device}")
    if D is not None:
        if not isinstance(D, torch.Tensor) or tuple(D.shape) != (H,):
            found = tuple(D.shape) if isinstance(D, torch.Tensor) else type(D).__name__
            raise ValueError(f"D must be (H,) = ({H},) (from u); got {found}")
        if D.dtype != u.dtype or D.device != u.device:
            raise ValueError(f"D must be real with u's dtype {u.dtype} on {u.device}; got {D.dtype} on {D.device}")


# ----------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------


def mimo_scan_reference(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MIMO diagonal SSM by a plain loop over time (the oracle of :func:`mimo_scan`).

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,  y_t = Re(C x_t) + D ⊙ u_t  (arXiv 2208.04933 eq. 2-3; arXiv 2303.06349 eq. 1).

    Args:
        u: (B, L, H) real input.
        A_bar: (M,) complex (or real) diagonal of the discrete state matrix.
        B_bar: (M, H) complex (or real) discrete input matrix.
        C: (H, M) complex (or real) output matrix; pass 2·C for conjugate-pair halves.
        state: (B, M) complex (or real) state x_{-1}, or None for zeros.
        D: (H,) real skip, y_t += D ⊙ u_t; None for no skip.
        return_state: whether to return the final state (else None in its place).

    Returns:
        y (B, L, H) real in u's dtype, and the final state x_{L-1} (B, M) in A_bar's dtype (or None).
    """
    _check_mimo(u, A_bar, B_bar, C, state, D)
    x = state if state is not None else u.new_zeros((u.shape[0], A_bar.shape[0]), dtype=A_bar.dtype)  # (B, M)
    B_t, C_t = B_bar.transpose(0, 1), C.transpose(0, 1)  # (H, M), (M, H)
    ys = []
    for u_t in u.unbind(1):
        x = A_bar * x + u_t.to(B_t.dtype) @ B_t  # (B, M)
        y_t = x @ C_t  # (B, H)
        ys.append(y_t.real if y_t.is_complex() else y_t)
    y = torch.stack(ys, dim=1)  # (B, L, H)
    return (y if D is None else y + D * u), (x if return_state else None)


# ----------------------------------------------------------------------------------------------------
# Matmul-shaped path
# ----------------------------------------------------------------------------------------------------


def _input_matrix(B_bar: torch.Tensor) -> torch.Tensor:
    """B̄ (M, H) as the real (H, 2M) [Re B̄ᵀ, Im B̄ᵀ interleaved per mode], so that u @ it = pack(u B̄ᵀ)."""
    return pack(B_bar.transpose(0, 1))  # (H, 2M) (or (H, M) real)


def _output_matrix(C: torch.Tensor) -> torch.Tensor:
    """C (H, M) as the real (2M, H) with rows (Re C_m, -Im C_m), so that pack(x) @ it = Re(x Cᵀ)."""
    if not C.is_complex():
        return C.transpose(0, 1)  # (M, H)
    return torch.stack([C.real, -C.imag], dim=-1).flatten(1).transpose(0, 1)  # (H, M, 2) -> (2M, H)


def mimo_scan_chunked(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MIMO diagonal SSM by GEMMs and a chunked scan of the modes; equals :func:`mimo_scan_reference`.

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,  y_t = Re(C x_t) + D ⊙ u_t  (arXiv 2208.04933 eq. 2-3), in three steps:
    (1) v = u B̄ᵀ for all t (one real GEMM); (2) x_t = Ā ⊙ x_{t-1} + v_t by the chunked time-invariant
    recurrence (:func:`ssmkit.ops.recurrence.linear_recurrence_chunked`); (3) y = Re(x Cᵀ) + D u (one real GEMM).
    Work: two real GEMMs of ~4·B·L·H·M flops each, plus the scan; memory O(B·L·M) (never B·L·H·M).

    Args:
        u: (B, L, H) real input.
        A_bar: (M,) complex (or real) diagonal of the discrete state matrix.
        B_bar: (M, H) complex (or real) discrete input matrix.
        C: (H, M) complex (or real) output matrix; pass 2·C for conjugate-pair halves.
        state: (B, M) complex (or real) state x_{-1}, or None for zeros.
        D: (H,) real skip, y_t += D ⊙ u_t; None for no skip.
        return_state: whether to return the final state (else None in its place).
        chunk_size: T of the recurrence (None: its own choice, 64 for narrow inputs).

    Returns:
        y (B, L, H) real in u's dtype, and the final state x_{L-1} (B, M) in A_bar's dtype (or None).
    """
    _check_mimo(u, A_bar, B_bar, C, state, D)
    if chunk_size is not None:
        check_chunk_size(chunk_size)
    scan = lambda a, v, h0: linear_recurrence_chunked(a, v, h0, chunk_size=chunk_size)  # noqa: E731
    return _project_scan_read(u, A_bar, B_bar, C, state, D, return_state, scan)


class _TallProduct(torch.autograd.Function):
    """y = a w for a tall a and a small weight w (step (1): u (B·L, H) and W_in (H, 2M); step (3): x (B·L, 2M) and
    W_out (2M, H)), with the backward

        ∂a = g wᵀ,   ∂w = aᵀ g = Σ_r a_rᵀ g_r

    the sum over the rows r by :func:`ssmkit.ops.native.mimo._gram` (blocks of rows, their partials summed pairwise).

    Autograd's backward of ``a @ w`` forms ∂w as one GEMM over all B·L rows, which for a narrow product (≤ 8 columns
    on one side) keeps one float32 running sum per entry (see ``_gram``): under backend ``"chunked"`` with a constant
    input and the loss on every step (d_model 4, d_state 16, B 8, L 16 384) LRU's ∂B was 5.5e-6 off its float64
    value, ∂C 3.0e-6, ∂log γ 3.2e-6 (now 2.2e-7, 5.9e-7, 4.6e-7), for ~0.25 ms per gradient at B·L 32 768 (~4 % of
    a d_model 4 forward+backward). ∂w is formed as (gᵀ a)ᵀ where a has more columns than g: the same sums, in the
    orientation of a narrow GEMM that MKL runs fast (at B·L 32 768, aᵀg with 64 rows and 4 columns took 2.6 ms, gᵀa
    0.5 ms; autograd's backward took the fast one from W_out's column-major layout). The backward is made of tensor
    ops, so a double backward (``create_graph``) differentiates through it. It has no forward derivative: under
    forward-mode AD :func:`_tall_product` is ``a @ w``.
    """

    @staticmethod
    def forward(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return a @ w

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        a, w = ctx.saved_tensors
        need_a, need_w = ctx.needs_input_grad
        g_w = None
        if need_w:  # the narrower side first (see the class docstring)
            g_w = _gram(a, g) if a.shape[1] <= g.shape[1] else _gram(g, a).mT
        return (g @ w.mT if need_a else None), g_w


def _tall_product(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a @ w for a tall a (B·L rows) and a small w: by :class:`_TallProduct` where w's gradient is wanted, the product
    is narrow (w has at most GRAM_NARROW rows or columns) and a has at least two blocks of GRAM_BLOCK rows, eagerly;
    else ``a @ w``, whose GEMM blocks the sums of a wider product itself. Under torch.compile, a torch.func transform,
    torch.export, forward-mode AD or autocast (whose half-precision product would meet the saved single-precision a
    in the backward) it is ``a @ w``, checked first (no comparison of symbolic sizes in a traced graph), as
    :mod:`ssmkit.ops.rows` does."""
    if tracing() or exporting():  # tracing(): forward-mode AD too
        return a @ w
    if autocast_enabled(a.device.type):
        return a @ w
    if not (w.requires_grad and torch.is_grad_enabled()) or min(w.shape) > GRAM_NARROW or a.shape[0] < 2 * GRAM_BLOCK:
        return a @ w
    return apply_function(_TallProduct, a, w)


def _project_scan_read(u, A_bar, B_bar, C, state, D, return_state, scan):
    """The three steps of the MIMO scan, with step (2) by ``scan(Ā, v, x0) -> (x, x_last)``."""
    Bsz, L, H = u.shape
    is_complex = A_bar.is_complex()
    # 1. every input projected onto the modes at once
    v = unpack(_tall_product(u.reshape(Bsz * L, H), _input_matrix(B_bar)), is_complex).reshape(Bsz, L, -1)  # (B, L, M)
    # 2. the M decoupled modes
    x, x_last = scan(A_bar, v, state)  # (B, L, M), (B, M)
    # 3. read out through C, the skip fused as one addmm
    y = _tall_product(pack(x).reshape(Bsz * L, -1), _output_matrix(C))  # (B·L, H)
    if D is not None:
        y = torch.addcmul(y, u.reshape(Bsz * L, H), D)  # (B·L, H)
    return y.reshape(Bsz, L, H), (x_last if return_state else None)


def mimo_scan_native(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MIMO diagonal SSM by GEMMs and the C kernel's scan of the modes; equals :func:`mimo_scan_reference`.

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,  y_t = Re(C x_t) + D ⊙ u_t  (arXiv 2208.04933 eq. 2-3): the three steps of
    :func:`mimo_scan_chunked` with step (2) by the C kernel of :func:`ssmkit.ops.native.linear_recurrence_native` (one
    pass over time), as one autograd node with its backward written out (:mod:`ssmkit.ops.native.mimo`: the skip
    fused in place both ways). CPU only, where the recurrence kernel's smoke call succeeded.

    Args:
        u: (B, L, H) real input.
        A_bar: (M,) complex (or real) diagonal of the discrete state matrix.
        B_bar: (M, H) complex (or real) discrete input matrix.
        C: (H, M) complex (or real) output matrix; pass 2·C for conjugate-pair halves.
        state: (B, M) complex (or real) state x_{-1}, or None for zeros.
        D: (H,) real skip, y_t += D ⊙ u_t; None for no skip.
        return_state: whether to return the final state (else None in its place).

    Returns:
        y (B, L, H) real in u's dtype, and the final state x_{L-1} (B, M) in A_bar's dtype (or None).
    """
    _check_mimo(u, A_bar, B_bar, C, state, D)
    require_native("mimo_scan", "linear_recurrence", REAL_OF.get(A_bar.dtype, A_bar.dtype), u.device, "u is")
    y, x_last = mimo_native_unchecked(u, A_bar, _input_matrix(B_bar), _output_matrix(C), state, D)
    return y, (x_last if return_state else None)


_SCAN = {"reference": mimo_scan_reference, "chunked": mimo_scan_chunked, "native": mimo_scan_native}


def mimo_scan(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MIMO diagonal LTI SSM over a sequence, from ``state``; the path is chosen by the backend.

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,  y_t = Re(C x_t) + D ⊙ u_t  (arXiv 2208.04933 eq. 2-3; arXiv 2303.06349 eq. 1).
    Backends: ``"reference"`` -> :func:`mimo_scan_reference` (loop); ``"chunked"`` -> :func:`mimo_scan_chunked`
    (GEMMs + chunked scan of the modes); ``"native"`` -> :func:`mimo_scan_native` (GEMMs + the C kernel's scan of
    the modes, CPU); ``"auto"`` -> ``"native"`` on the CPU where it runs and no torch.func transform or export
    traces, else ``"chunked"``;
    ``"fft"`` and ``"triton"`` raise.

    Args:
        u: (B, L, H) real input.
        A_bar: (M,) complex (or real) diagonal of the discrete state matrix.
        B_bar: (M, H) complex (or real) discrete input matrix.
        C: (H, M) complex (or real) output matrix; pass 2·C for conjugate-pair halves.
        state: (B, M) complex (or real) state x_{-1}, or None for zeros.
        D: (H,) real skip, y_t += D ⊙ u_t; None for no skip.
        return_state: whether to return the final state (else None in its place).
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        y (B, L, H) real in u's dtype, and the final state x_{L-1} (B, M) in A_bar's dtype (or None).
    """
    def auto() -> str:  # A_bar on u's device (checked by the paths)
        return "native" if prefer_native("linear_recurrence", A_bar) else "chunked"

    impl = dispatch("mimo_scan", _SCAN, backend, auto=auto)
    return impl(u, A_bar, B_bar, C, state, D, return_state=return_state)


# ----------------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------------


def _check_kernel(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, L: int) -> None:
    for name, p in (("A_bar", A_bar), ("B_bar", B_bar), ("C", C)):
        if not isinstance(p, torch.Tensor) or not (p.is_complex() or p.is_floating_point()):
            raise ValueError(f"{name} must be a complex or real floating torch.Tensor; got {getattr(p, 'dtype', p)!r}")
        if p.dtype != A_bar.dtype:
            raise ValueError(f"A_bar, B_bar and C must share one dtype; A_bar is {A_bar.dtype} but {name} is {p.dtype}")
    if A_bar.dim() != 1:
        raise ValueError(f"A_bar must be (M,); got shape {tuple(A_bar.shape)}")
    M = A_bar.shape[0]
    if B_bar.dim() != 2 or B_bar.shape[0] != M:
        raise ValueError(f"B_bar must be (M, H) with M = {M} (from A_bar); got {tuple(B_bar.shape)}")
    if C.dim() < 2 or C.shape[-1] != M:
        raise ValueError(f"C must be (H, M) or (C, H, M) with M = {M} (from A_bar); got {tuple(C.shape)}")
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be an int >= 1; got {L!r}")


def mimo_kernel_reference(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """MIMO diagonal SSM kernel by a loop over l (the oracle): K_l = Re(C diag(Ā^l) B̄) (arXiv 2208.04933 §3).

    Args:
        A_bar: (M,) complex (or real).
        B_bar: (M, H) complex (or real).
        C: (H, M) or (C, H, M) complex (or real) output matrices (one per output kernel).
        L: kernel length, >= 1.

    Returns:
        (H, H, L) real kernel [output channel, input channel, lag], or (C, H, H, L).
    """
    _check_kernel(A_bar, B_bar, C, L)
    power = torch.ones_like(A_bar)  # (M,): Ā^0
    taps = []
    for _ in range(L):
        tap = (C * power) @ B_bar  # (..., H, H)
        taps.append(tap.real if tap.is_complex() else tap)
        power = power * A_bar  # (M,)
    return torch.stack(taps, dim=-1)  # (..., H, H, L)


def mimo_kernel_gemm(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """MIMO diagonal SSM kernel by one GEMM with a power table: K[o, i, l] = Re Σ_m C_om B̄_mi Ā_m^l.

    arXiv 2208.04933 §3. The powers Ā^l (M, L) are built in double precision and rounded once; the weights
    W[o, i, m] = C_om B̄_mi (H·H·M) meet them in one real GEMM (H·H, 2M) @ (2M, L). Same signature and result as
    :func:`mimo_kernel_reference`.

    Args:
        A_bar: (M,) complex (or real).
        B_bar: (M, H) complex (or real).
        C: (H, M) or (C, H, M) complex (or real) output matrices.
        L: kernel length, >= 1.

    Returns:
        (H, H, L) real kernel, or (C, H, H, L).
    """
    _check_kernel(A_bar, B_bar, C, L)
    M = A_bar.shape[0]
    W = C.unsqueeze(-2) * B_bar.transpose(0, 1)  # (..., H, 1, M) * (H, M) -> (..., H, H, M)
    powers = wide_powers(A_bar, L)  # (M, L)
    if W.is_complex():
        K = torch.cat([W.real, -W.imag], -1).reshape(-1, 2 * M) @ torch.cat([powers.real, powers.imag], 0)  # (·, L)
    else:
        K = W.reshape(-1, M) @ powers  # (..., L)
    return K.reshape(*W.shape[:-1], L)  # (..., H, H, L)


_KERNEL = {"reference": mimo_kernel_reference, "chunked": mimo_kernel_gemm}


def mimo_kernel(
    A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, L: int, *, backend: str | None = None
) -> torch.Tensor:
    """The convolution kernel of the MIMO diagonal SSM, K_l = Re(C diag(Ā^l) B̄) (arXiv 2208.04933 §3), no skip.

    Backends: ``"reference"`` -> :func:`mimo_kernel_reference` (loop); ``"chunked"`` -> :func:`mimo_kernel_gemm`
    (power table + one GEMM); ``"auto"`` -> ``"chunked"``.

    Args:
        A_bar: (M,) complex (or real).
        B_bar: (M, H) complex (or real).
        C: (H, M) or (C, H, M) complex (or real) output matrices.
        L: kernel length, >= 1.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        (H, H, L) real kernel [output channel, input channel, lag], or (C, H, H, L).
    """
    return dispatch("mimo_kernel", _KERNEL, backend, auto="chunked")(A_bar, B_bar, C, L)


# ----------------------------------------------------------------------------------------------------
# Recurrent step
# ----------------------------------------------------------------------------------------------------


class MIMOStepCoefficients(NamedTuple):
    """The matrices of one MIMO step in the layout the step reads (from :func:`mimo_step_coefficients`).

    Attributes:
        A_bar: (M,) complex (or real) Ā.
        B_in: (H, 2M) real, u_t @ B_in = the real view of B̄ u_t (or (H, M) real B̄ᵀ).
        C_out: (2M, H) real, view_as_real(x) @ C_out = Re(C x) (or (M, H) real Cᵀ).
    """

    A_bar: torch.Tensor
    B_in: torch.Tensor
    C_out: torch.Tensor


def mimo_step_coefficients(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor) -> MIMOStepCoefficients:
    """Prepare Ā, B̄, C for :func:`mimo_ssm_step` (computed once, reused for every step).

    Args:
        A_bar: (M,) complex (or real).
        B_bar: (M, H) complex (or real).
        C: (H, M) complex (or real).

    Returns:
        :class:`MIMOStepCoefficients`.
    """
    return MIMOStepCoefficients(A_bar, _input_matrix(B_bar).contiguous(), _output_matrix(C).contiguous())


def mimo_ssm_step(
    u_t: torch.Tensor, coeffs: MIMOStepCoefficients, state: torch.Tensor, D: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step x_t = Ā ⊙ x_{t-1} + B̄ u_t, y_t = Re(C x_t) + D ⊙ u_t in O(H·M) (arXiv 2208.04933 eq. 2-3).

    Two real GEMVs (the projection and the read-out, complex operands as real pairs) and one complex product.

    Args:
        u_t: (B, H) real input.
        coeffs: Ā, B̄, C prepared by :func:`mimo_step_coefficients`.
        state: (B, M) x_{t-1}, complex (or real), Ā's dtype.
        D: (H,) real skip, or None for none.

    Returns:
        y_t (B, H) real and x_t (B, M).
    """
    A_bar, B_in, C_out = coeffs
    x = A_bar * state + unpack(u_t @ B_in, A_bar.is_complex())  # (B, M)
    y = pack(x) @ C_out  # (B, H)
    return (y if D is None else torch.addcmul(y, D, u_t)), x
