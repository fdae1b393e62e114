"""The SSD scan of Mamba-2 by the compiled C kernel (``ssd_scan.c``), forward and backward, on the CPU.

H_t = exp(Δ_t A_h) H_{t-1} + Δ_t x_t B_tᵀ, y_t = H_t C_t per head (arXiv 2405.21060 §3) -- the semantics of
:func:`ssmkit.ops.ssd.ssd_reference`, with an initial state in and a differentiable final state out.

The decay is one scalar per head and step, so the recurrence itself is 2·P·N multiply-adds per head and step. The
kernel does exactly those, one pass over time per (batch row, head, block of 64 head channels), the (P, N) state in a
local buffer; the chunked algorithm (:func:`ssmkit.ops.ssd.ssd_chunked`) does ~T/2 times more arithmetic in its
intra-chunk products, which pays on tensor cores, and makes many passes over chunk-sized buffers, which does not on a
CPU. The forward keeps the state at every ``T``-th step when a gradient will be asked for (B·H·P·N per T steps); the
backward recomputes each chunk's states from it and runs the adjoint (``ssd_scan.c``'s comment gives it).

Usable where ``native_status("ssd", dtype)`` says so (:mod:`ssmkit.ops.native.gate`: built, and a smoke call matched
the reference, forward and gradients). Under torch.compile the kernel calls are custom ops (:mod:`ssmkit.ops.opaque`);
torch.func transforms and torch.export take the chunked path. Differentiated itself (``create_graph``), the backward is
the chunked path's (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.gate import require_native
from ssmkit.ops.native.parallel import ptr, run_checked
from ssmkit.ops.opaque import absent_if_zero, kernel_op
from ssmkit.ops.twice import graph_backward, wants_grad

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of ssd_scan.c: (argument types, result type)
    "ssd_items": ([_i64] * 3, _i64),
    "ssd_forward": ([_p] * 9 + [_i64] * 10, ctypes.c_int),
    "ssd_backward": ([_p] * 14 + [_i64] * 10, ctypes.c_int),
}
PV = 64  # head channels per work item (ssd_scan.c)


def default_chunk(N: int, itemsize: int) -> int:
    """The backward's chunk length T: the largest power of two ≤ 64 whose buffer (T + 2 states of N × 64 channels)
    fits in 4 MiB, at least 8. Longer chunks keep fewer states (B·H·P·N per T steps: 32 MiB at B 8, L 4 096, H 4,
    P = N = 64 with T = 64), and the time hardly depends on T (2-core VM, freed memory kept, forward+backward: 102, 98,
    95 and 106 ms with T = 16, 32, 64 and 128 at that shape; 86, 86 and 87 ms with T = 32, 64 and 128 at B 2, H 8,
    N = 128)."""
    T = 64
    while T > 8 and (T + 2) * N * PV * itemsize > 4 * 1024 * 1024:
        T //= 2
    return T


def _forward_fake(x, dt, A, B, C, h0, T, keep):
    Bsz, L, H, P = x.shape
    N = B.shape[3]
    ckpt = [x.new_empty(Bsz, -(-L // T), H, N, P)] if keep else []
    return [torch.empty_like(x), x.new_empty(Bsz, H, P, N), *ckpt]


@kernel_op("ssd_forward", _forward_fake)
def _forward_kernel(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Optional[Tensor], T: int,
                    keep: bool) -> list[Tensor]:
    """The C forward: [y (B, L, H, P), the final state (B, H, P, N), then the chunk-start states (B, ⌈L/T⌉, H, N, P)
    when ``keep``], from x (B, L, H, P), Δ (B, L, H), A (H,), B, C (B, L, G, N) and h0 (B, H, P, N) or None, all
    contiguous."""
    fns = bind("ssd_scan.c", x.dtype, SIGNATURES)
    Bsz, L, H, P = x.shape
    G, N = B.shape[2:]
    y = torch.empty_like(x)
    hL = x.new_empty(Bsz, H, P, N)
    ckpt = x.new_empty(Bsz, -(-L // T), H, N, P) if keep else None
    args = [*(ptr(t) for t in (x, dt, A, B, C, h0, y, hL, ckpt)), Bsz, L, H, P, G, N, T]
    run_checked(fns["ssd_forward"], fns["ssd_items"](Bsz, H, P), args, fns["openmp"],
                "ssd native: the forward could not allocate its state buffer")
    return [y, hL, *([] if ckpt is None else [ckpt])]


def _backward_fake(x, dt, A, B, C, ckpt, g_y, g_h, T, has_h0):
    return [torch.empty_like(x), torch.empty_like(dt), torch.empty_like(A), torch.empty_like(B), torch.empty_like(C),
            *([x.new_empty(x.shape[0], x.shape[2], x.shape[3], B.shape[3])] if has_h0 else [])]


@kernel_op("ssd_backward", _backward_fake)
def _backward_kernel(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, ckpt: Tensor, g_y: Tensor,
                     g_h: Optional[Tensor], T: int, has_h0: bool) -> list[Tensor]:
    """The C backward: [∂x, ∂Δ, ∂A, ∂B, ∂C, then ∂h0 when ``has_h0``], from the forward's inputs, its chunk-start states
    and the outputs' gradients g_y (B, L, H, P) and g_h (B, H, P, N) (None: zero), contiguous."""
    fns = bind("ssd_scan.c", x.dtype, SIGNATURES)
    Bsz, L, H, P = x.shape
    G, N = B.shape[2:]
    nblk = -(-P // PV)
    g_h = absent_if_zero(g_h)
    g_x = torch.empty_like(x)
    g_dt = x.new_empty(nblk, Bsz, L, H)  # one partial per channel block (all written)
    g_A = x.new_empty(Bsz, nblk, H)
    g_B, g_C = B.new_empty(H // G * nblk, *B.shape), C.new_empty(H // G * nblk, *C.shape)  # per head of a group, block
    g_h0 = x.new_empty(Bsz, H, P, N) if has_h0 else None
    args = [*(ptr(t) for t in (x, dt, A, B, C, ckpt, g_y, g_h, g_x, g_dt, g_A, g_B, g_C, g_h0)), Bsz, L, H, P, G, N, T]
    run_checked(fns["ssd_backward"], fns["ssd_items"](Bsz, H, P), args, fns["openmp"],
                "ssd native: the backward could not allocate its chunk buffer")
    summed = [t[0] if t.shape[0] == 1 else t.sum(0) for t in (g_dt, g_B, g_C)]
    return [g_x, summed[0], g_A.sum((0, 1)), summed[1], summed[2], *([] if g_h0 is None else [g_h0])]


class _NativeSSD(torch.autograd.Function):
    """y, H_{L-1} of the SSD scan by the C kernel. Inputs: x (B, L, H, P), Δ (B, L, H), A (H,), B, C (B, L, G, N), h0
    (B, H, P, N) or None, all contiguous; T (the backward's chunk length); keep (keep the chunk-start states for a
    backward)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, T, keep):  # type: ignore[override]
        y, hL, *ckpt = _forward_kernel(x, dt, A, B, C, h0, T, keep)
        ctx.save_for_backward(x, dt, A, B, C, h0, ckpt[0] if keep else None)
        ctx.T = T
        return y, hL

    @staticmethod
    def backward(ctx, g_y, g_h):  # type: ignore[override]
        x, dt, A, B, C, h0, ckpt = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a double backward, through the chunked path (ops/twice.py)
            from ssmkit.ops.ssd import ssd_chunked

            g = graph_backward(ssd_chunked, (x, dt, A, B, C, h0), ctx.needs_input_grad[:6], (g_y, g_h))
            return (*g, None, None)
        if ckpt is None:
            raise RuntimeError("ssd native: the forward kept no states for a backward (it ran without grad)")
        g_y = torch.zeros_like(x) if g_y is None else g_y.contiguous()
        g_h = None if g_h is None else g_h.contiguous()
        g_x, g_dt, g_A, g_B, g_C, *g_h0 = _backward_kernel(x, dt, A, B, C, ckpt, g_y, g_h, ctx.T, h0 is not None)
        return g_x, g_dt, g_A, g_B, g_C, (g_h0[0] if h0 is not None else None), None, None


def ssd_unchecked(x, dt, A, B, C, h0=None, chunk_size=None):
    """:func:`ssd_native` after its checks (the smoke call enters here)."""
    from ssmkit.ops._checks import check_chunk_size

    T = default_chunk(B.shape[3], x.element_size()) if chunk_size is None else chunk_size
    check_chunk_size(T)
    keep = wants_grad(x, dt, A, B, C, h0)
    c = lambda t: None if t is None else t.contiguous()  # noqa: E731
    return apply_function(_NativeSSD, c(x), c(dt), c(A), c(B), c(C), c(h0), T, keep)


def ssd_native(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan by the C kernel; equals :func:`ssmkit.ops.ssd.ssd_reference`.

    H_t = exp(Δ_t A_h) H_{t-1} + Δ_t x_t B_tᵀ, y_t = H_t C_t per head (arXiv 2405.21060 §3), from H_{-1} = h0.

    Args:
        x: (B, L, H, P) inputs, H heads of P channels, float32 or float64, on the CPU.
        dt: (B, L, H) step sizes Δ > 0 (after any softplus).
        A: (H,) decay rates, A < 0.
        B: (B, L, G, N) input vectors, G groups dividing H (head h reads group h // (H/G)).
        C: (B, L, G, N) output vectors.
        h0: (B, H, P, N) initial state, or None for zeros.
        chunk_size: T, the backward's recompute chunk (speed only), or None for :func:`default_chunk`.

    Returns:
        y (B, L, H, P) and the final state (B, H, P, N).

    Raises:
        ValueError: the inputs' shapes, dtypes or devices do not match (as :func:`ssmkit.ops.ssd.ssd_reference`).
        RuntimeError: the kernel cannot run here (``native_status("ssd", dtype)`` gives the reason), or the inputs are
            not on the CPU.
    """
    from ssmkit.ops.ssd import _check_ssd

    _check_ssd(x, dt, A, B, C, h0)
    require_native("ssd", "ssd", x.dtype, x.device, "the inputs are")
    return ssd_unchecked(x, dt, A, B, C, h0, chunk_size)
