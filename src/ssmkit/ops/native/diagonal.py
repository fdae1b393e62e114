"""The diagonal LTI SSM over a sequence by the compiled C kernel (``diagonal_scan.c``), forward and backward, on the CPU.

x_t = Ā ⊙ x_{t-1} + B̄ u_t,  y_t = Re(Σ_n C_n x_{t,n}) + D u_t  (arXiv 2206.11893 §2, recurrent view) -- the
semantics of :func:`ssmkit.ops.scan.ssm_scan_reference` for complex Ā, B̄, C (the S4D family: S4D, DSS, ...), with an
initial state in and a differentiable final state out.

The kernel makes one pass over time per block of channels (one vector: 16 floats with AVX-512, 8 with AVX2), with
the block's complex states and parameters in local arrays (real and imaginary parts apart), the skip fused. Its
backward needs no states: one pass backwards over time runs two adjoint recurrences per mode, μ_t = g_t + conj(Ā)
μ_{t+1} and ν_t = μ_{t+1} + conj(Ā) ν_{t+1}, and the gradients are sums of u_t μ_t and u_t ν_t (``diagonal_scan.c``
derives them): half the work of recomputing the states and running the adjoint of the state, and nothing kept from
the forward but its inputs. One call is a handful of aten ops (the parameters' real/imaginary split; the partial
gradients of the batch rows are summed in C, on the calling thread), so it does not slow down under CPU contention the
way a path of hundreds of small ops does, nor wait for a worker thread outside its one parallel region.

Real modes (Ā, B̄, C real of u's dtype: Mega's EMA) run the kernel's real variant, the same passes with one part per
value (2 operations per mode and step forward, 5 backward, where a complex mode takes 6 and 14), the state real.
Usable where ``native_status("ssm_scan", dtype)`` says so (:mod:`ssmkit.ops.native.gate`). Under torch.compile the
kernel calls are custom ops (:mod:`ssmkit.ops.opaque`); torch.func transforms and torch.export take the chunked path.
Differentiated itself (``create_graph``), the backward is that of the chunked path (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from ssmkit.ops._checks import COMPLEX_OF
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.gate import native_status
from ssmkit.ops.native.parallel import ptr, run_checked
from ssmkit.ops.opaque import absent_if_zero, kernel_op
from ssmkit.ops.twice import graph_backward

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of diagonal_scan.c: (argument types, result type)
    "ds_items": ([_i64] * 2, _i64),
    "ds_forward": ([_p] * 11 + [_i64] * 9, ctypes.c_int),
    "ds_backward": ([_p] * 14 + [_i64] * 9, ctypes.c_int),
    "ds_sum_partials": ([_p] * 2 + [_i64] * 3, None),
    "dsr_forward": ([_p] * 8 + [_i64] * 9, ctypes.c_int),
    "dsr_backward": ([_p] * 11 + [_i64] * 9, ctypes.c_int),
    "dsr_sum_partials": ([_p] * 2 + [_i64] * 3, None),
}


def default_chunk(N: int, itemsize: int) -> int:
    """The kernel's chunk length T: the time steps whose rows of u, y and the gradients (T × 16 values each) it
    buffers at a time, 64 (a few KiB, whatever N and the dtype: the arguments are kept for the callers)."""
    del N, itemsize
    return 64


def _split(Z: torch.Tensor) -> list[torch.Tensor]:
    """(H, N) complex -> [Re, Im] as contiguous (N, H) reals (the kernel's layout); (H, N) real -> [Zᵀ] contiguous."""
    if not Z.is_complex():
        return [Z.t().contiguous()]
    Z = Z.resolve_conj()
    return [Z.real.t().contiguous(), Z.imag.t().contiguous()]


class _NativeDiagonal(torch.autograd.Function):
    """x_t = Ā ⊙ x_{t-1} + B̄ u_t, y_t = Re(Σ_n C_n x_t) + D u_t by the C kernel.

    Inputs: u (B, L, H) real contiguous, Ā, B̄, C (H, N) all complex or all real (real modes), D (H,) or None, x0
    (B, H, N) of Ā's dtype or None, T (the kernel's chunk of rows), rev (run backwards in time: step t reads and
    writes row L - 1 - t). Outputs y (B, L, H) and the last step's state (B, H, N). The final state's gradient is not
    materialised when nothing uses the state (None): the backward then skips its seeded adjoint pair.
    """

    @staticmethod
    def forward(ctx, u, A_bar, B_bar, C, D, x0, T, rev):  # type: ignore[override]
        pars = [*_split(A_bar), *_split(B_bar), *_split(C)]  # (N, H) x 6 (complex) or x 3 (real)
        Dc = None if D is None else D.contiguous()
        x0c = None if x0 is None else x0.resolve_conj().contiguous()
        y, xL = (_forward_kernel if A_bar.is_complex() else _forward_kernel_real)(u, *pars, Dc, x0c, T, rev)
        # then the inputs as given, for a double backward
        ctx.save_for_backward(u, *pars, Dc, x0c, A_bar, B_bar, C, D, x0)
        ctx.T, ctx.rev, ctx.has_D, ctx.n_pars = T, rev, D is not None, len(pars)
        ctx.set_materialize_grads(False)
        return y, xL

    @staticmethod
    def backward(ctx, g_y, g_x):  # type: ignore[override]
        k = 3 + ctx.n_pars  # u, the parameters' parts, D, x0
        saved = ctx.saved_tensors  # (read once: torch.utils.checkpoint unpacks each saved tensor once)
        u, *pars, Dc, x0c = saved[:k]
        if torch.is_grad_enabled():  # create_graph: a double backward, through the chunked scan (ops/twice.py)
            from ssmkit.ops.chunked import ssm_scan_chunked

            def chunked(u, A_bar, B_bar, C, D, x0):
                if not ctx.rev:
                    return ssm_scan_chunked(u, A_bar, B_bar, C, x0, D)
                y, x = ssm_scan_chunked(u.flip(1), A_bar, B_bar, C, x0, D)
                return y.flip(1), x

            given = (u, *saved[k:])
            return (*graph_backward(chunked, given, ctx.needs_input_grad[:6], (g_y, g_x)), None, None)
        g_y = torch.zeros_like(u) if g_y is None else g_y.contiguous()
        g_xc = None if g_x is None else g_x.resolve_conj().contiguous()
        if ctx.n_pars == 3:  # real modes: rows ∂Ā, ∂B̄, ∂C, ∂D
            g_u, g, *g_x0 = _backward_kernel_real(u, *pars, Dc, x0c, g_y, g_xc, ctx.T, ctx.rev)
            g_D = g[3, 0] if ctx.has_D else None
            return g_u, g[0].t(), g[1].t(), g[2].t(), g_D, (g_x0[0] if g_x0 else None), None, None
        g_u, g, *g_x0 = _backward_kernel(u, *pars, Dc, x0c, g_y, g_xc, ctx.T, ctx.rev)
        cplx = lambda r: torch.complex(g[r], g[r + 1]).t()  # noqa: E731  (N, H) pair -> (H, N) complex
        g_D = g[6, 0] if ctx.has_D else None
        return g_u, cplx(0), cplx(2), cplx(4), g_D, (g_x0[0] if g_x0 else None), None, None


def _run_items(fns: dict, entry: str, Bsz: int, H: int, args: list) -> None:
    """Run the kernel entry over all its items (batch rows × channel blocks) on :func:`run_parts`'s threads.

    Raises:
        MemoryError: an item could not allocate its buffers.
    """
    pass_name = "forward" if entry.endswith("forward") else "backward"
    run_checked(fns[entry], fns["ds_items"](Bsz, H), args, fns["openmp"],
                f"ssm_scan native: the {pass_name} could not allocate its buffers")


def _forward_fake(u, Ar, Ai, Br, Bi, Cr, Ci, D, x0, T, rev):
    Bsz, L, H = u.shape
    return [torch.empty_like(u), u.new_empty(Bsz, H, Ar.shape[0], dtype=COMPLEX_OF[u.dtype])]


@kernel_op("ssm_scan_forward", _forward_fake)
def _forward_kernel(
    u: Tensor, Ar: Tensor, Ai: Tensor, Br: Tensor, Bi: Tensor, Cr: Tensor, Ci: Tensor, D: Optional[Tensor],
    x0: Optional[Tensor], T: int, rev: bool,
) -> list[Tensor]:
    """The C forward: [y (B, L, H), x_{L-1} (B, H, N) complex] from u (B, L, H) contiguous, the parameters' real and
    imaginary parts (N, H) contiguous, D (H,) and x0 (B, H, N) complex, contiguous, or None; backwards in time when
    rev."""
    fns = bind("diagonal_scan.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    N = Ar.shape[0]
    y = torch.empty_like(u)
    xL = torch.empty(Bsz, H, N, dtype=COMPLEX_OF[u.dtype], device="cpu")
    args = [ptr(u), *map(ptr, (Ar, Ai, Br, Bi, Cr, Ci)), ptr(D), ptr(x0), ptr(y), ptr(xL), Bsz, L, H, N, T, int(rev)]
    _run_items(fns, "ds_forward", Bsz, H, args)
    return [y, xL]


def _backward_fake(u, Ar, Ai, Br, Bi, Cr, Ci, D, x0, g_y, g_x, T, rev):
    Bsz, L, H = u.shape
    N = Ar.shape[0]
    g_x0 = [u.new_empty(Bsz, H, N, dtype=COMPLEX_OF[u.dtype])] if x0 is not None else []
    return [torch.empty_like(u), u.new_empty(7, N, H), *g_x0]


@kernel_op("ssm_scan_backward", _backward_fake)
def _backward_kernel(
    u: Tensor, Ar: Tensor, Ai: Tensor, Br: Tensor, Bi: Tensor, Cr: Tensor, Ci: Tensor, D: Optional[Tensor],
    x0: Optional[Tensor], g_y: Tensor, g_x: Optional[Tensor], T: int, rev: bool,
) -> list[Tensor]:
    """The C backward: [∂u (B, L, H), the parameters' gradients (7, N, H): ∂Ā, ∂B̄, ∂C (re, im) and ∂D, then ∂x0
    (B, H, N) when x0 is given], from the forward's inputs and the outputs' gradients g_y (B, L, H) and g_x (B, H, N)
    (None: unused), contiguous."""
    fns = bind("diagonal_scan.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    N = Ar.shape[0]
    g_x = absent_if_zero(g_x)
    g_u = torch.empty_like(u)
    g_x0 = torch.empty(Bsz, H, N, dtype=COMPLEX_OF[u.dtype], device="cpu") if x0 is not None else None
    g = u.new_empty(Bsz, 7, N, H)  # per batch row (a fixed summation order): ∂Ā, ∂B̄, ∂C (re, im) and ∂D
    args = [ptr(u), *map(ptr, (Ar, Ai, Br, Bi, Cr, Ci)), ptr(D), ptr(x0), ptr(g_y), ptr(g_x), ptr(g_u), ptr(g_x0),
            ptr(g), Bsz, L, H, N, T, int(rev)]
    _run_items(fns, "ds_backward", Bsz, H, args)
    g_sum = u.new_empty(7, N, H)
    fns["ds_sum_partials"](ptr(g), ptr(g_sum), Bsz, H, N)  # on this thread: no parallel op (issue 16)
    return [g_u, g_sum, *([] if g_x0 is None else [g_x0])]


def _forward_real_fake(u, A, B, C, D, x0, T, rev):
    Bsz, L, H = u.shape
    return [torch.empty_like(u), u.new_empty(Bsz, H, A.shape[0])]


@kernel_op("ssm_scan_real_forward", _forward_real_fake)
def _forward_kernel_real(
    u: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], x0: Optional[Tensor], T: int, rev: bool,
) -> list[Tensor]:
    """The C forward for real modes: [y (B, L, H), x_{L-1} (B, H, N)] from u (B, L, H), Ā, B̄, C (N, H), D (H,) and x0
    (B, H, N) (or None), contiguous, of one real dtype."""
    fns = bind("diagonal_scan.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    N = A.shape[0]
    y = torch.empty_like(u)
    xL = u.new_empty(Bsz, H, N)
    args = [ptr(u), ptr(A), ptr(B), ptr(C), ptr(D), ptr(x0), ptr(y), ptr(xL), Bsz, L, H, N, T, int(rev)]
    _run_items(fns, "dsr_forward", Bsz, H, args)
    return [y, xL]


def _backward_real_fake(u, A, B, C, D, x0, g_y, g_x, T, rev):
    Bsz, L, H = u.shape
    N = A.shape[0]
    return [torch.empty_like(u), u.new_empty(4, N, H), *([u.new_empty(Bsz, H, N)] if x0 is not None else [])]


@kernel_op("ssm_scan_real_backward", _backward_real_fake)
def _backward_kernel_real(
    u: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], x0: Optional[Tensor], g_y: Tensor,
    g_x: Optional[Tensor], T: int, rev: bool,
) -> list[Tensor]:
    """The C backward for real modes: [∂u (B, L, H), the parameters' gradients (4, N, H): ∂Ā, ∂B̄, ∂C and ∂D (row 3's
    first H values), then ∂x0 (B, H, N) when x0 is given]; the arguments as :func:`_backward_kernel`'s."""
    fns = bind("diagonal_scan.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    N = A.shape[0]
    g_x = absent_if_zero(g_x)
    g_u = torch.empty_like(u)
    g_x0 = u.new_empty(Bsz, H, N) if x0 is not None else None
    g = u.new_empty(Bsz, 4, N, H)  # per batch row (a fixed summation order)
    args = [ptr(u), ptr(A), ptr(B), ptr(C), ptr(D), ptr(x0), ptr(g_y), ptr(g_x), ptr(g_u), ptr(g_x0), ptr(g),
            Bsz, L, H, N, T, int(rev)]
    _run_items(fns, "dsr_backward", Bsz, H, args)
    g_sum = u.new_empty(4, N, H)
    fns["dsr_sum_partials"](ptr(g), ptr(g_sum), Bsz, H, N)  # on this thread: no parallel op (issue 16)
    return [g_u, g_sum, *([] if g_x0 is None else [g_x0])]


def scan_unchecked(u, A_bar, B_bar, C, state, D, return_state, chunk_size, reverse=False):
    """:func:`ssm_scan_native` after its checks (the smoke call enters here)."""
    from ssmkit.ops._checks import check_chunk_size

    N = A_bar.shape[1]
    if chunk_size is None:
        chunk_size = default_chunk(N, u.element_size())
    check_chunk_size(chunk_size)
    y, x = apply_function(_NativeDiagonal, u.contiguous(), A_bar, B_bar, C, D, state, chunk_size, bool(reverse))
    return y, (x if return_state else None)


def native_diagonal_ok(u: torch.Tensor, A_bar: torch.Tensor) -> str | None:
    """Why the kernel cannot take these inputs (None when it can): CPU, Ā complex of u's precision or real of u's
    dtype."""
    if u.device.type != "cpu":
        return f"it runs on the CPU; the inputs are on {u.device}"
    if A_bar.dtype not in (COMPLEX_OF.get(u.dtype), u.dtype):
        return f"it takes parameters of u's precision, complex or real (u {u.dtype}, Ā {A_bar.dtype})"
    return None


def ssm_scan_native(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
    chunk_size: int | None = None,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Diagonal LTI SSM by the C kernel; equals :func:`ssmkit.ops.scan.ssm_scan_reference` (with ``reverse``, that of the
    time-reversed input, time-reversed back).

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,  y_t = Re(Σ_n C_n x_{t,n}) + D u_t  (arXiv 2206.11893 §2). Steps: (1) the parameters
    split into real and imaginary (N, H) arrays; (2) the kernel's pass over time per block of channels (the chunk-start
    states kept when a gradient will be asked for); nothing else.

    Args:
        u: (B, L, H) real input, float32 or float64, on the CPU.
        A_bar: (H, N) discrete state matrix (diagonal): complex64 for float32 u, complex128 for float64, or real of
            u's dtype (real modes: the kernel's real variant).
        B_bar: (H, N) discrete input matrix, of Ā's dtype.
        C: (H, N) output matrix, of Ā's dtype; pass 2·C for conjugate-pair halves.
        state: (B, H, N) state x_{-1} of Ā's dtype, or None for zeros.
        D: (H,) real skip, or None.
        return_state: whether to return the final state (else None in its place).
        chunk_size: T, the kernel's chunk of rows, or None for :func:`default_chunk`.
        reverse: run the recurrence backwards in time, x_t = Ā ⊙ x_{t+1} + B̄ u_t from x_L = ``state`` down to t = 0,
            with y_t at its own index (= flip(ssm_scan(flip(u)))); the returned state is then x_0. It reads and writes
            the rows in reverse order: no flipped copies (the anti-causal half of a two-sided layer).

    Returns:
        y (B, L, H) real in u's dtype, and the final state x_{L-1} (B, H, N) in Ā's dtype (or None).

    Raises:
        RuntimeError: the kernel cannot run here or cannot take these inputs (not on the CPU, another precision); the message
            says why.
    """
    from ssmkit.ops._checks import check_params, check_skip

    check_params(u, state, A_bar=A_bar, B_bar=B_bar, C=C)
    check_skip(D, u)
    why = native_diagonal_ok(u, A_bar)
    ok, status = native_status("ssm_scan", u.dtype)
    if why is not None or not ok:
        raise RuntimeError(f"ssm_scan: backend 'native' cannot run here: {why or status}")
    if not isinstance(reverse, bool):
        raise ValueError(f"reverse must be a bool; got {reverse!r}")
    return scan_unchecked(u, A_bar, B_bar, C, state, D, return_state, chunk_size, reverse)
