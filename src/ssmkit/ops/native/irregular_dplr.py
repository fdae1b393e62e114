"""S4's DPLR system (arXiv 2111.00396) sampled at irregular times by the compiled C kernel (``irregular_dplr.c``),
forward only, on the CPU: the path of :func:`ssmkit.ops.irregular_dplr.dplr_irregular_scan` when no gradient will be
asked for (inference, simulation, validation).

Channel h, step t of batch row b, Δ_t = Δ_h τ_{b,t}, the bilinear step by the Woodbury form
(:mod:`ssmkit.ops.irregular_dplr`):

    R_t = (2/Δ_t − Λ)⁻¹,  E_t = 2/Δ_t + Λ,  Y_t = I + P* R_t P   (r × r real, over the full state),
    v = E_t ⊙ x − P (P* x) + 2 B u_t,   x_t = R_t ⊙ v − (R_t ⊙ P) Y_t⁻¹ P* (R_t ⊙ v),   y_t = 2 Re Σ C x_t + D u_t.

The PyTorch path runs L steps of a dozen batched ops each; the kernel forms each step's coefficients in registers (R,
E per mode, Y and its closed-form inverse for r ≤ 2) and keeps the state in local arrays, in double. Ranks above 2
take the PyTorch path. Usable where ``native_status("irregular_dplr", dtype)`` says so
(:mod:`ssmkit.ops.native.gate`); under torch.compile the kernel call is a custom op (:mod:`ssmkit.ops.opaque`).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from ssmkit.ops._checks import COMPLEX_OF
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.parallel import ptr, run_checked
from ssmkit.ops.opaque import kernel_op

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of irregular_dplr.c: (argument types, result type)
    "id_items": ([_i64] * 2, _i64),
    "id_forward": ([_p] * 15 + [_i64] * 7, ctypes.c_int),
}
MAX_RANK = 2  # the kernel's closed-form Y⁻¹: r ≤ 2


def _parts(Z: Tensor) -> list[Tensor]:
    """(..., H, M) complex -> [Re, Im] as contiguous (..., M, H) doubles (the kernel's layout)."""
    Z = Z.resolve_conj().to(torch.complex128)
    return [Z.real.transpose(-1, -2).contiguous(), Z.imag.transpose(-1, -2).contiguous()]


def _forward_fake(u, tau, lr, li, br, bi, cr, ci, pr, pi, dt, D, x0):
    Bsz, L, H = u.shape
    return [torch.empty_like(u), u.new_empty(Bsz, H, lr.shape[0], dtype=COMPLEX_OF[u.dtype])]


@kernel_op("dplr_irregular_forward", _forward_fake)
def _forward_kernel(
    u: Tensor, tau: Tensor, lr: Tensor, li: Tensor, br: Tensor, bi: Tensor, cr: Tensor, ci: Tensor, pr: Tensor,
    pi: Tensor, dt: Tensor, D: Optional[Tensor], x0: Optional[Tensor],
) -> list[Tensor]:
    """The C forward: [y (B, L, H), x_{L-1} (B, H, M) complex] from u (B, L, H), τ (B, L) double, the parts of Λ, B, C
    (M, H) and of P (r, M, H) double, Δ (H,) double, D (H,) of u's dtype and x0 (B, H, M) complex of u's precision,
    or None, all contiguous."""
    fns = bind("irregular_dplr.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    M, r = lr.shape[0], pr.shape[0]
    y = torch.empty_like(u)
    xL = torch.empty(Bsz, H, M, dtype=COMPLEX_OF[u.dtype])
    args = [ptr(u), ptr(tau), *map(ptr, (lr, li, br, bi, cr, ci, pr, pi, dt)), ptr(D), ptr(x0), ptr(y), ptr(xL),
            L, H, M, r]
    run_checked(fns["id_forward"], fns["id_items"](Bsz, H), args, fns["openmp"],
                "dplr_irregular_scan native: the forward could not allocate its buffers")
    return [y, xL]


def dplr_unchecked(u, Lambda, P, B, C, dt, intervals, D, state, return_state):
    """The irregularly sampled DPLR forward by the kernel after the public function's checks (the smoke call enters
    here): u (B, L, H) real, Λ, B, C (H, N/2) and P (r ≤ 2, H, N/2) complex, Δ (H,), τ (B, L), D (H,) and the state
    (B, H, N/2) or None. No gradient flows through it (the caller takes it only when none is asked for). Returns y
    (B, L, H) in u's dtype and x_{L-1} (B, H, N/2) complex of u's precision (or None)."""
    if P.shape[0] > MAX_RANK:
        raise ValueError(f"the native irregular DPLR kernel takes a rank r <= {MAX_RANK}; got P of shape "
                         f"{tuple(P.shape)}")
    with torch.no_grad():
        uc = u.contiguous()
        Dc = None if D is None else D.to(u.dtype).contiguous()
        x0 = None if state is None else state.resolve_conj().to(COMPLEX_OF[u.dtype]).contiguous()
        tau = intervals.to(torch.float64).contiguous()
        dtc = dt.to(torch.float64).contiguous()
        y, xL = _forward_kernel(uc, tau, *_parts(Lambda), *_parts(B), *_parts(C), *_parts(P), dtc, Dc, x0)
    return y, (xL.to(Lambda.dtype) if return_state else None)
