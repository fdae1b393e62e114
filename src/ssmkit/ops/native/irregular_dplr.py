"""S4's DPLR system (arXiv 2111.00396) sampled at irregular times by the compiled C kernel (``irregular_dplr.c``),
forward and backward, on the CPU: the path of :func:`ssmkit.ops.irregular_dplr.dplr_irregular_scan` (inference and
training).

Channel h, step t of batch row b, Δ_t = Δ_h τ_{b,t}, the bilinear step by the Woodbury form
(:mod:`ssmkit.ops.irregular_dplr`):

    R_t = (2/Δ_t − Λ)⁻¹,  E_t = 2/Δ_t + Λ,  Y_t = I + P* R_t P   (r × r real, over the full state),
    v = E_t ⊙ x − P (P* x) + 2 B u_t,   x_t = R_t ⊙ v − (R_t ⊙ P) Y_t⁻¹ P* (R_t ⊙ v),   y_t = 2 Re Σ C x_t + D u_t.

The PyTorch path runs L steps of a dozen batched ops each (and, for a gradient, autograd through them: ~30 small
complex ops a step); the kernel forms each step's coefficients in registers (R, E per mode, Y and its closed-form
inverse for r ≤ 2) and keeps the state in local arrays, in double. Under a gradient the forward also writes the state
before every T-th step (:data:`CHUNK`; (B, ⌈L/T⌉, H, N/2) complex double, never a state per step), and the backward
recomputes each chunk's states from its checkpoint and runs the step's adjoint backwards (``irregular_dplr.c``
derives it): the gradients of u, Λ, P, B, C, Δ, the gaps τ, D and the initial state. Ranks above 2 take the PyTorch
path. Usable where ``native_status("irregular_dplr", dtype)`` says so (:mod:`ssmkit.ops.native.gate`); under
torch.compile the kernel calls are custom ops (:mod:`ssmkit.ops.opaque`); torch.func transforms, torch.export and
forward-mode AD take the PyTorch path. Differentiated itself (``create_graph``), the backward is that of the PyTorch
path (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from ssmkit.ops._checks import COMPLEX_OF
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.parallel import ptr, run_checked
from ssmkit.ops.opaque import absent_if_zero, kernel_op
from ssmkit.ops.twice import graph_backward, wants_grad

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of irregular_dplr.c: (argument types, result type)
    "id_items": ([_i64] * 2, _i64),
    "id_forward": ([_p] * 16 + [_i64] * 8, ctypes.c_int),
    "id_backward": ([_p] * 20 + [_i64] * 8, ctypes.c_int),
}
MAX_RANK = 2  # the kernel's closed-form Y⁻¹: r ≤ 2
CHUNK = 64  # T: the steps between two checkpoints of the state (the backward's local buffer holds T + 1 states)


def _parts(Z: Tensor) -> list[Tensor]:
    """(..., H, M) complex -> [Re, Im] as contiguous (..., M, H) doubles (the kernel's layout)."""
    Z = Z.resolve_conj().to(torch.complex128)
    return [Z.real.transpose(-1, -2).contiguous(), Z.imag.transpose(-1, -2).contiguous()]


def _n_chunks(L: int, chunk: int) -> int:
    return (L + chunk - 1) // chunk if chunk > 0 else 0


def _forward_fake(u, tau, lr, li, br, bi, cr, ci, pr, pi, dt, D, x0, chunk):
    Bsz, L, H = u.shape
    M = lr.shape[0]
    return [torch.empty_like(u), u.new_empty(Bsz, H, M, dtype=COMPLEX_OF[u.dtype]),
            u.new_empty(Bsz, _n_chunks(L, chunk), H, M, dtype=torch.complex128)]


@kernel_op("dplr_irregular_forward", _forward_fake)
def _forward_kernel(
    u: Tensor, tau: Tensor, lr: Tensor, li: Tensor, br: Tensor, bi: Tensor, cr: Tensor, ci: Tensor, pr: Tensor,
    pi: Tensor, dt: Tensor, D: Optional[Tensor], x0: Optional[Tensor], chunk: int,
) -> list[Tensor]:
    """The C forward: [y (B, L, H), x_{L-1} (B, H, M) complex, the checkpoints (B, ⌈L/T⌉, H, M) complex128: the state
    before every T-th step, T = ``chunk`` (0: none, an empty (B, 0, H, M))] from u (B, L, H), τ (B, L) double, the
    parts of Λ, B, C (M, H) and of P (r, M, H) double, Δ (H,) double, D (H,) of u's dtype and x0 (B, H, M) complex of
    u's precision, or None, all contiguous."""
    fns = bind("irregular_dplr.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    M, r = lr.shape[0], pr.shape[0]
    y = torch.empty_like(u)
    xL = torch.empty(Bsz, H, M, dtype=COMPLEX_OF[u.dtype], device="cpu")
    ck = torch.empty(Bsz, _n_chunks(L, chunk), H, M, dtype=torch.complex128, device="cpu")
    args = [ptr(u), ptr(tau), *map(ptr, (lr, li, br, bi, cr, ci, pr, pi, dt)), ptr(D), ptr(x0), ptr(y), ptr(xL),
            ptr(ck) if chunk > 0 else None, L, H, M, r, chunk]
    run_checked(fns["id_forward"], fns["id_items"](Bsz, H), args, fns["openmp"],
                "dplr_irregular_scan native: the forward could not allocate its buffers")
    return [y, xL, ck]


def _backward_fake(u, tau, lr, li, br, bi, cr, ci, pr, pi, dt, D, ck, g_y, g_x, chunk, want_tau, want_x0):
    Bsz, L, H = u.shape
    M, r = lr.shape[0], pr.shape[0]
    extra = [u.new_empty(Bsz, L, dtype=torch.float64)] if want_tau else []
    extra += [u.new_empty(Bsz, H, M, dtype=COMPLEX_OF[u.dtype])] if want_x0 else []
    return [torch.empty_like(u), u.new_empty(6 + 2 * r, M, H, dtype=torch.float64),
            u.new_empty(2, H, dtype=torch.float64), *extra]


@kernel_op("dplr_irregular_backward", _backward_fake)
def _backward_kernel(
    u: Tensor, tau: Tensor, lr: Tensor, li: Tensor, br: Tensor, bi: Tensor, cr: Tensor, ci: Tensor, pr: Tensor,
    pi: Tensor, dt: Tensor, D: Optional[Tensor], ck: Tensor, g_y: Tensor, g_x: Optional[Tensor], chunk: int,
    want_tau: bool, want_x0: bool,
) -> list[Tensor]:
    """The C backward: [∂u (B, L, H), the parameters' gradients (6 + 2r, M, H) double (∂Re Λ, ∂Im Λ, ∂Re B, ∂Im B,
    ∂Re C, ∂Im C, ∂Re P (r rows), ∂Im P (r rows)), (∂Δ, ∂D) (2, H) double, then ∂τ (B, L) double when ``want_tau``,
    then ∂x0 (B, H, M) complex when ``want_x0``], from the forward's inputs, its checkpoints (of the same ``chunk``)
    and the outputs' gradients g_y (B, L, H) and g_x (B, H, M) complex (None: unused), all contiguous."""
    fns = bind("irregular_dplr.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    M, r = lr.shape[0], pr.shape[0]
    g_x = absent_if_zero(g_x)
    n_items = fns["id_items"](Bsz, H)
    g_u = torch.empty_like(u)
    g_x0 = torch.empty(Bsz, H, M, dtype=COMPLEX_OF[u.dtype], device="cpu") if want_x0 else None
    g = torch.empty(Bsz, 6 + 2 * r, M, H, dtype=torch.float64, device="cpu")  # per batch row (a fixed summation order)
    g_dd = torch.empty(Bsz, 2, H, dtype=torch.float64, device="cpu")
    # per item: summed over blocks below
    g_tau = torch.empty(n_items, L, dtype=torch.float64, device="cpu") if want_tau else None
    args = [ptr(u), ptr(tau), *map(ptr, (lr, li, br, bi, cr, ci, pr, pi, dt)), ptr(D), ptr(ck), ptr(g_y), ptr(g_x),
            ptr(g_u), ptr(g_x0), ptr(g), ptr(g_dd), ptr(g_tau), L, H, M, r, chunk]
    run_checked(fns["id_backward"], n_items, args, fns["openmp"],
                "dplr_irregular_scan native: the backward could not allocate its buffers")
    out = [g_u, g.sum(0), g_dd.sum(0)]
    if want_tau:
        out.append(g_tau.view(Bsz, n_items // Bsz, L).sum(1))
    return out + ([] if g_x0 is None else [g_x0])


def _complex_rows(g: Tensor, re: slice, im: slice) -> Tensor:
    """Rows ``re`` and ``im`` of the backward's (rows, M, H) doubles as one (..., H, M) complex gradient."""
    return torch.complex(g[re], g[im]).transpose(-1, -2)


class _NativeDPLR(torch.autograd.Function):
    """The irregularly sampled DPLR scan by the C kernel (module docstring).

    Inputs: u (B, L, H) real contiguous, Λ, P, B, C (complex, Λ's dtype of u's precision), Δ (H,), τ (B, L), D (H,) or
    None, x0 (B, H, N/2) or None, chunk (T). Outputs y (B, L, H) and x_{L-1} (B, H, N/2) in Λ's dtype.
    """

    @staticmethod
    def forward(ctx, u, Lambda, P, B, C, dt, intervals, D, state, chunk):  # type: ignore[override]
        pars = [*_parts(Lambda), *_parts(B), *_parts(C), *_parts(P)]
        tau = intervals.to(torch.float64).contiguous()
        dtc = dt.to(torch.float64).contiguous()
        Dc = None if D is None else D.to(u.dtype).contiguous()
        x0 = None if state is None else state.resolve_conj().to(COMPLEX_OF[u.dtype]).contiguous()
        y, xL, ck = _forward_kernel(u, tau, *pars, dtc, Dc, x0, chunk)
        ctx.save_for_backward(u, tau, *pars, dtc, Dc, ck, Lambda, P, B, C, dt, intervals, D, state)
        ctx.chunk, ctx.rank = chunk, P.shape[0]
        ctx.set_materialize_grads(False)
        return y, xL.to(Lambda.dtype)

    @staticmethod
    def backward(ctx, g_y, g_x):  # type: ignore[override]
        saved = ctx.saved_tensors  # (read once: torch.utils.checkpoint unpacks each saved tensor once)
        u, tau, *pars = saved[:10]
        dtc, Dc, ck = saved[10:13]
        given = saved[13:]  # Λ, P, B, C, Δ, τ, D, x0 as passed
        if torch.is_grad_enabled():  # create_graph: a double backward, through the PyTorch path (ops/twice.py)
            grads = graph_backward(_torch_path, (u, *given), ctx.needs_input_grad[:9], (g_y, g_x))
            return (*grads, None)
        g_y = torch.zeros_like(u) if g_y is None else g_y.contiguous()
        g_xc = None if g_x is None else g_x.resolve_conj().to(COMPLEX_OF[u.dtype]).contiguous()
        want_tau, want_x0 = ctx.needs_input_grad[6], given[7] is not None and ctx.needs_input_grad[8]
        g_u, g, g_dd, *rest = _backward_kernel(u, tau, *pars, dtc, Dc, ck, g_y, g_xc, ctx.chunk, want_tau, want_x0)
        g_tau = rest.pop(0).to(given[5].dtype) if want_tau else None
        g_x0 = rest.pop(0).to(given[7].dtype) if want_x0 else None
        r, cdtype = ctx.rank, given[0].dtype
        g_lam, g_B, g_C = (_complex_rows(g, k, k + 1).to(cdtype) for k in (0, 2, 4))
        g_P = _complex_rows(g, slice(6, 6 + r), slice(6 + r, 6 + 2 * r)).to(cdtype)
        g_D = None if given[6] is None else g_dd[1].to(given[6].dtype)
        return g_u, g_lam, g_P, g_B, g_C, g_dd[0].to(given[4].dtype), g_tau, g_D, g_x0, None


def _torch_path(u, Lambda, P, B, C, dt, intervals, D, state):
    """The op in PyTorch (the double backward's path): :func:`ssmkit.ops.irregular_dplr.dplr_irregular_scan_chunked`,
    y and the final state."""
    from ssmkit.ops.irregular_dplr import dplr_irregular_scan_chunked

    return dplr_irregular_scan_chunked(u, Lambda, P, B, C, dt, intervals, D, state)


def dplr_unchecked(u, Lambda, P, B, C, dt, intervals, D, state, return_state, chunk=CHUNK):
    """The irregularly sampled DPLR scan by the kernel after the public function's checks (the smoke call enters
    here): u (B, L, H) real, Λ, B, C (H, N/2) and P (r ≤ 2, H, N/2) complex of u's precision, Δ (H,), τ (B, L), D (H,)
    and the state (B, H, N/2) or None. Without a gradient to record, the forward alone; with one, the autograd Function
    whose forward keeps a checkpoint every ``chunk`` steps (:data:`CHUNK`) for the C backward. Returns y (B, L, H) in
    u's dtype and x_{L-1} (B, H, N/2) complex of u's precision (or None)."""
    if P.shape[0] > MAX_RANK:
        raise ValueError(f"the native irregular DPLR kernel takes a rank r <= {MAX_RANK}; got P of shape "
                         f"{tuple(P.shape)}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1; got {chunk!r}")
    if wants_grad(u, Lambda, P, B, C, dt, intervals, D, state):
        y, xL = apply_function(_NativeDPLR, u.contiguous(), Lambda, P, B, C, dt, intervals, D, state, chunk)
        return y, (xL if return_state else None)
    with torch.no_grad():
        uc = u.contiguous()
        Dc = None if D is None else D.to(u.dtype).contiguous()
        x0 = None if state is None else state.resolve_conj().to(COMPLEX_OF[u.dtype]).contiguous()
        tau = intervals.to(torch.float64).contiguous()
        dtc = dt.to(torch.float64).contiguous()
        y, xL, _ = _forward_kernel(uc, tau, *_parts(Lambda), *_parts(B), *_parts(C), *_parts(P), dtc, Dc, x0, 0)
    return y, (xL.to(Lambda.dtype) if return_state else None)
