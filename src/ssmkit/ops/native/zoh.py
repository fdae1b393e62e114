"""Zero-order-hold discretisation of a diagonal SSM by the compiled C code (``zoh.c``), forward and backward, on the CPU.

Ā = exp(Δ Λ),  B̄ = Δ B (exp(Δ Λ) - 1)/(Δ Λ)  (arXiv 2206.11893 §3) -- the semantics of
:func:`ssmkit.ops.discretize.zoh` (the same series for |Δ Λ| < 1, the direct formula beyond), computed in double on
the calling thread: one C call forward and one backward, in place of ~25 small torch ops forward and as many backward,
several of which (complex exp and expm1, the series' power table) run on torch's thread pool at S4D's sizes and each
wait for a worker beside a busy process (issue 16; ``zoh.c``).

Usable where ``native_status("zoh", dtype)`` says so (:mod:`ssmkit.ops.native.gate`). Differentiated itself
(``create_graph``), the backward is that of the torch path (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.parallel import ptr
from ssmkit.ops.opaque import kernel_op
from ssmkit.ops.twice import graph_backward

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of zoh.c: (argument types, result type)
    "zoh_forward": ([_p] * 5 + [_i64] * 3, None),
    "zoh_backward": ([_p] * 8 + [_i64] * 3, None),
    "exp_phi_forward": ([_p] * 3 + [_i64], None),
    "exp_phi_backward": ([_p] * 4 + [_i64], None),
}
LOG_RE, LOG_DT = 1, 2  # zoh.c's flags: Λ given as the pairs (log(-Re Λ), Im Λ); Δ given as log Δ


def _real_view(z: Tensor) -> Tensor:
    """(H, M) complex -> a contiguous (H, M, 2) real tensor (the C code's interleaved layout)."""
    return torch.view_as_real(z.resolve_conj().contiguous())


def _torch_path(flags: int):
    """The op in torch ops on the C code's inputs (for a double backward)."""
    from ssmkit.ops.discretize import zoh_torch

    def path(lam: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        Lambda = torch.complex(-torch.exp(lam[..., 0]), lam[..., 1]) if flags & LOG_RE else torch.view_as_complex(lam)
        return zoh_torch(Lambda, B, (torch.exp(dt) if flags & LOG_DT else dt).reshape(-1, 1))

    return path


class _NativeZoh(torch.autograd.Function):
    """(Ā, B̄) = (exp(z), Δ B φ(z)), z = Δ Λ, by the C code. Inputs: Λ as (H, M, 2) reals (re, im), or under LOG_RE
    (log(-Re Λ), Im Λ); B (H, M) complex; Δ (H elements; log Δ under LOG_DT); the flags."""

    @staticmethod
    def forward(ctx, lam, B, dt, flags):  # type: ignore[override]
        lam_c, b, d = lam.contiguous(), _real_view(B), dt.reshape(-1).contiguous()
        A_bar, B_bar = _forward_kernel(lam_c, b, d, flags)
        ctx.save_for_backward(lam_c, b, d, lam, B, dt)
        ctx.flags, ctx.dt_shape = flags, dt.shape
        ctx.set_materialize_grads(False)
        return torch.view_as_complex(A_bar), torch.view_as_complex(B_bar)

    @staticmethod
    def backward(ctx, g_A, g_B):  # type: ignore[override]
        saved = ctx.saved_tensors  # (read once: torch.utils.checkpoint unpacks each saved tensor once)
        lam, b, d = saved[:3]
        if torch.is_grad_enabled():  # create_graph: a double backward, through the torch path (ops/twice.py)
            given = saved[3:]
            return (*graph_backward(_torch_path(ctx.flags), given, ctx.needs_input_grad[:3], (g_A, g_B)), None)
        g_A, g_B = (None if g is None else _real_view(g) for g in (g_A, g_B))
        g_lam, g_b, g_d = _backward_kernel(lam, b, d, g_A, g_B, ctx.flags)
        return g_lam, torch.view_as_complex(g_b), g_d.view(ctx.dt_shape), None


def _forward_fake(lam, b, d, flags):
    return [torch.empty_like(b), torch.empty_like(b)]


@kernel_op("zoh_forward", _forward_fake)
def _forward_kernel(lam: Tensor, b: Tensor, d: Tensor, flags: int) -> list[Tensor]:
    """The C forward: [Ā, B̄] as (H, M, 2) reals from Λ (H, M, 2) (its pairs as ``flags`` say), B (H, M, 2) and Δ (H,)
    (or log Δ), contiguous, of one real dtype."""
    fns = bind("zoh.c", d.dtype, SIGNATURES)
    H, M = b.shape[:2]
    A_bar, B_bar = torch.empty_like(b), torch.empty_like(b)
    fns["zoh_forward"](ptr(lam), ptr(b), ptr(d), ptr(A_bar), ptr(B_bar), H, M, flags)
    return [A_bar, B_bar]


def _backward_fake(lam, b, d, g_A, g_B, flags):
    return [torch.empty_like(lam), torch.empty_like(b), torch.empty_like(d)]


@kernel_op("zoh_backward", _backward_fake)
def _backward_kernel(lam: Tensor, b: Tensor, d: Tensor, g_A: Optional[Tensor], g_B: Optional[Tensor],
                     flags: int) -> list[Tensor]:
    """The C backward: [∂Λ (H, M, 2) in Λ's form, ∂B (H, M, 2), ∂Δ (H,) in Δ's form] from the forward's inputs and the
    gradients of Ā and B̄ (H, M, 2) (None: unused), contiguous."""
    fns = bind("zoh.c", d.dtype, SIGNATURES)
    H, M = b.shape[:2]
    g_lam, g_b, g_d = torch.empty_like(lam), torch.empty_like(b), torch.empty_like(d)
    fns["zoh_backward"](ptr(lam), ptr(b), ptr(d), ptr(g_A), ptr(g_B), ptr(g_lam), ptr(g_b), ptr(g_d), H, M, flags)
    return [g_lam, g_b, g_d]


def zoh_native(Lambda: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold by the C code, after :func:`ssmkit.ops.discretize.zoh`'s checks (the caller's): Λ, B (H, M)
    complex of one dtype, Δ (H, 1) of its real dtype, all on the CPU. Returns (Ā, B̄), each (H, M) complex."""
    return apply_function(_NativeZoh, _real_view(Lambda), B, dt, 0)


def zoh_native_log(log_neg_real: Tensor, imag: Tensor, B: Tensor, log_dt: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold of Λ = -exp(log_neg_real) + i·imag with Δ = exp(log_dt) by the C code, after the checks of
    :func:`ssmkit.ops.discretize.zoh_log` (the caller's): the exponentials of the parameters are taken in C too.
    Returns (Ā, B̄), each (H, M) complex."""
    return apply_function(_NativeZoh, torch.stack((log_neg_real, imag), -1), B, log_dt, LOG_RE | LOG_DT)


class _NativeExpPhi(torch.autograd.Function):
    """(e^z, φ(z)) of a complex tensor by the C code (φ(z) = (e^z - 1)/z, by its series for |z| < 1)."""

    @staticmethod
    def forward(ctx, z):  # type: ignore[override]
        zr = _real_view(z)
        e, f = _exp_phi_forward_kernel(zr)
        ctx.save_for_backward(zr, z)
        ctx.set_materialize_grads(False)
        return torch.view_as_complex(e), torch.view_as_complex(f)

    @staticmethod
    def backward(ctx, g_e, g_f):  # type: ignore[override]
        zr, z = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a double backward, through the torch path (ops/twice.py)
            from ssmkit.ops.discretize import exp_phi_torch

            return graph_backward(exp_phi_torch, (z,), ctx.needs_input_grad, (g_e, g_f))[0]
        g_e, g_f = (None if g is None else _real_view(g) for g in (g_e, g_f))
        return torch.view_as_complex(_exp_phi_backward_kernel(zr, g_e, g_f)[0])


def _exp_phi_forward_fake(zr):
    return [torch.empty_like(zr), torch.empty_like(zr)]


@kernel_op("exp_phi_forward", _exp_phi_forward_fake)
def _exp_phi_forward_kernel(zr: Tensor) -> list[Tensor]:
    """The C forward: [e^z, φ(z)] as (..., 2) reals from z (..., 2) real, contiguous."""
    fns = bind("zoh.c", zr.dtype, SIGNATURES)
    e, f = torch.empty_like(zr), torch.empty_like(zr)
    fns["exp_phi_forward"](ptr(zr), ptr(e), ptr(f), zr.numel() // 2)
    return [e, f]


def _exp_phi_backward_fake(zr, g_e, g_f):
    return [torch.empty_like(zr)]


@kernel_op("exp_phi_backward", _exp_phi_backward_fake)
def _exp_phi_backward_kernel(zr: Tensor, g_e: Optional[Tensor], g_f: Optional[Tensor]) -> list[Tensor]:
    """The C backward: [∂z (..., 2)] from z and the gradients of e^z and φ(z) (..., 2) (None: unused), contiguous."""
    fns = bind("zoh.c", zr.dtype, SIGNATURES)
    g_z = torch.empty_like(zr)
    fns["exp_phi_backward"](ptr(zr), ptr(g_e), ptr(g_f), ptr(g_z), zr.numel() // 2)
    return [g_z]


def exp_phi_native(z: Tensor) -> tuple[Tensor, Tensor]:
    """(e^z, (e^z - 1)/z) elementwise by the C code, after :func:`ssmkit.ops.discretize.exp_phi`'s checks (complex z on
    the CPU)."""
    return apply_function(_NativeExpPhi, z)
