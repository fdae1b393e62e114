"""The modes of a diagonal MIMO system sampled at irregular times (S5 arXiv 2208.04933, LRU arXiv 2303.06349) by the
compiled C kernel (``irregular_mimo.c``), forward and backward, on the CPU.

Mode m, step t, with s = τ_t the gap, z = Δ_m Λ_m and v = u B̃ᵀ the projected input:

    ZOH:      x_t = e^{s z} x_{t-1} + (e^{s z} − 1) w v_t,                  w = 1/Λ
    bilinear: x_t = (1 + s z/2)/(1 − s z/2) x_{t-1} + s/(1 − s z/2) w v_t,   w = Δ

-- the recurrence of :mod:`ssmkit.ops.irregular` between its two GEMMs (Ā_t = e^{z_t}, gain_t = Δ τ_t g(z_t) =
(e^{z_t} − 1)/Λ or Δ τ_t/(1 − z_t/2)). The PyTorch path forms the (B, L, M) complex coefficients with a dozen
elementwise passes in double and rounds them to the layer's precision before the recurrence; the kernel forms each
step's coefficients in registers (e^{sz} − 1 from expm1 and a sincos of the half angle, vector polynomials in double)
and never stores them, the state in double too. Its backward reads the forward's states (x_{t-1} for ∂Ā: nothing
recomputed but the coefficients) and runs the adjoint backwards (``irregular_mimo.c`` derives the gradients), with the
gradients of z, w (so of Λ and Δ) and of the gaps τ.

Phases |τ Δ Im Λ| up to 3.2e6 are reduced by the vector code; a step whose phases may exceed that takes libm's sin and
cos lane by lane. Usable where ``native_status("irregular_mimo", dtype)`` says so (:mod:`ssmkit.ops.native.gate`).
Under torch.compile the kernel calls are custom ops (:mod:`ssmkit.ops.opaque`); torch.func transforms, torch.export
and forward-mode AD take the PyTorch path. Differentiated itself (``create_graph``), the backward is that of the
PyTorch path (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from ssmkit.ops._checks import REAL_OF
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.parallel import ptr, run_checked
from ssmkit.ops.opaque import kernel_op
from ssmkit.ops.twice import graph_backward

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of irregular_mimo.c: (argument types, result type)
    "im_items": ([_i64] * 2, _i64),
    "im_forward": ([_p] * 8 + [_i64] * 6, ctypes.c_int),
    "im_backward": ([_p] * 13 + [_i64] * 6, ctypes.c_int),
}


def _parts(Z: Tensor) -> list[Tensor]:
    """(M,) complex128 -> [Re, Im] as contiguous (M,) doubles."""
    Z = Z.resolve_conj()
    return [Z.real.contiguous(), Z.imag.contiguous()]


def _fns(v: Tensor) -> dict:
    return bind("irregular_mimo.c", REAL_OF[v.dtype], SIGNATURES)


def _run(fns: dict, entry: str, Bsz: int, M: int, args: list) -> None:
    """Run ``entry`` over all items (batch rows × mode blocks) on :func:`run_checked`'s threads."""
    run_checked(fns[entry], fns["im_items"](Bsz, M), args, fns["openmp"],
                f"irregular_mimo native: the {entry[3:]} failed")


def _forward_fake(v, tau, zr, zi, wr, wi, x0, bilinear):
    return [torch.empty_like(v)]


@kernel_op("irregular_mimo_forward", _forward_fake)
def _forward_kernel(
    v: Tensor, tau: Tensor, zr: Tensor, zi: Tensor, wr: Tensor, wi: Tensor, x0: Optional[Tensor], bilinear: bool,
) -> list[Tensor]:
    """The C forward: [x (B, L, M) complex, every state] from v (B, L, M) complex, τ (B, L) double, the parts of z and
    w (M,) double and x0 (B, M) complex of v's dtype, or None, all contiguous."""
    fns = _fns(v)
    Bsz, L, M = v.shape
    x = torch.empty_like(v)
    args = [ptr(v), ptr(tau), *map(ptr, (zr, zi, wr, wi)), ptr(x0), ptr(x), L, M, int(bilinear)]
    _run(fns, "im_forward", Bsz, M, args)
    return [x]


def _backward_fake(v, tau, zr, zi, wr, wi, x0, x, g_x, bilinear, want_tau):
    Bsz, L, M = v.shape
    extra = [v.new_empty(Bsz, L, dtype=torch.float64)] if want_tau else []
    extra += [] if x0 is None else [torch.empty_like(x0)]
    return [torch.empty_like(v), v.new_empty(4, M, dtype=torch.float64), *extra]


@kernel_op("irregular_mimo_backward", _backward_fake)
def _backward_kernel(
    v: Tensor, tau: Tensor, zr: Tensor, zi: Tensor, wr: Tensor, wi: Tensor, x0: Optional[Tensor], x: Tensor,
    g_x: Tensor, bilinear: bool, want_tau: bool,
) -> list[Tensor]:
    """The C backward: [∂v (B, L, M), the parameters' gradients (4, M) double: ∂Re z, ∂Im z, ∂Re w, ∂Im w, then ∂τ
    (B, L) double when ``want_tau``, then ∂x0 (B, M) when x0 is given], from the forward's inputs, its states x and
    their gradient g_x (B, L, M), all contiguous."""
    fns = _fns(v)
    Bsz, L, M = v.shape
    n_items = fns["im_items"](Bsz, M)
    g_v = torch.empty_like(v)
    g_x0 = None if x0 is None else torch.empty_like(x0)
    g = torch.empty(Bsz, 4, M, dtype=torch.float64, device="cpu")  # per batch row (a fixed summation order)
    # per item: summed over blocks below
    g_tau = torch.empty(n_items, L, dtype=torch.float64, device="cpu") if want_tau else None
    args = [ptr(v), ptr(tau), *map(ptr, (zr, zi, wr, wi)), ptr(x0), ptr(x), ptr(g_x), ptr(g_v), ptr(g_x0), ptr(g),
            ptr(g_tau), L, M, int(bilinear)]
    _run(fns, "im_backward", Bsz, M, args)
    out = [g_v, g.sum(0)]
    if want_tau:
        out.append(g_tau.view(Bsz, n_items // Bsz, L).sum(1))
    return out + ([] if g_x0 is None else [g_x0])


class _NativeModes(torch.autograd.Function):
    """The irregularly sampled modes by the C kernel (module docstring).

    Inputs: v (B, L, M) complex contiguous, τ (B, L) real, z, w (M,) complex128, x0 (B, M) of v's dtype or None,
    bilinear. Output: x (B, L, M), every state.
    """

    @staticmethod
    def forward(ctx, v, tau, z, w, x0, bilinear):  # type: ignore[override]
        pars = [*_parts(z), *_parts(w)]
        tau_c = tau.to(torch.float64).contiguous()
        x0c = None if x0 is None else x0.resolve_conj().contiguous()
        (x,) = _forward_kernel(v, tau_c, *pars, x0c, bilinear)
        ctx.save_for_backward(v, tau_c, *pars, x0c, x, tau, z, w, x0)
        ctx.bilinear = bilinear
        return x

    @staticmethod
    def backward(ctx, g_x):  # type: ignore[override]
        saved = ctx.saved_tensors  # (read once: torch.utils.checkpoint unpacks each saved tensor once)
        v, tau_c, zr, zi, wr, wi, x0c, x = saved[:8]
        if torch.is_grad_enabled():  # create_graph: a double backward, through the PyTorch path (ops/twice.py)
            given = (v, *saved[8:])
            path = lambda *a: (modes_torch(*a, ctx.bilinear),)  # noqa: E731
            return (*graph_backward(path, given, ctx.needs_input_grad[:5], (g_x,)), None)
        want_tau = ctx.needs_input_grad[1]
        g_v, g, *rest = _backward_kernel(v, tau_c, zr, zi, wr, wi, x0c, x, g_x.resolve_conj().contiguous(),
                                         ctx.bilinear, want_tau)
        g_tau = rest.pop(0).to(saved[8].dtype) if want_tau else None
        g_x0 = rest.pop(0) if x0c is not None else None
        return g_v, g_tau, torch.complex(g[0], g[1]), torch.complex(g[2], g[3]), g_x0, None


def modes_torch(v: Tensor, tau: Tensor, z: Tensor, w: Tensor, x0: Tensor | None, bilinear: bool) -> Tensor:
    """The kernel's op in PyTorch (its double backward's path): the coefficients of every step in double, rounded to
    v's dtype, then the recurrence (:func:`ssmkit.ops.recurrence.linear_recurrence`, the context's backend).

    Args:
        v: (B, L, M) complex projected input.
        tau: (B, L) real gaps.
        z: (M,) complex128, Δ Λ.
        w: (M,) complex128, the rule's input factor (1/Λ for ZOH, Δ for bilinear).
        x0: (B, M) complex x_{-1} of v's dtype, or None.
        bilinear: the bilinear rule (else ZOH).

    Returns:
        x (B, L, M), every state.
    """
    from ssmkit.ops.irregular import irregular_discretize
    from ssmkit.ops.recurrence import linear_recurrence

    # the layers' coefficients with Λ = z and Δ = 1: gain' = τ g(τ z) = (e^{τz} − 1)/z (ZOH) or τ q (bilinear), so the
    # kernel's b = (e^{τz} − 1) w is gain' z w and its τ q w is gain' w
    one = torch.ones(z.shape, dtype=torch.float64, device=z.device)
    A, gain = irregular_discretize(z, one, tau, "bilinear" if bilinear else "zoh")
    gain = gain * (w if bilinear else z * w)
    return linear_recurrence(A.to(v.dtype), gain.to(v.dtype) * v, x0)[0]


def modes_unchecked(v: Tensor, z: Tensor, w: Tensor, intervals: Tensor, x0: Tensor | None, rule: str) -> Tensor:
    """Every state x (B, L, M) of the irregularly sampled modes by the kernel, after the caller's checks (the smoke
    call enters here).

    Args:
        v: (B, L, M) complex64/complex128 projected input v = u B̃ᵀ.
        z: (M,) complex, Δ Λ (taken in double).
        w: (M,) complex, 1/Λ for ZOH, Δ for bilinear (taken in double).
        intervals: (B, L) real gaps.
        x0: (B, M) complex of v's dtype, or None.
        rule: ``"zoh"`` or ``"bilinear"``.

    Returns:
        x (B, L, M) in v's dtype.
    """
    z, w = (t.to(torch.complex128) for t in (z, w))
    return apply_function(_NativeModes, v.resolve_conj().contiguous(), intervals, z, w, x0, rule == "bilinear")
