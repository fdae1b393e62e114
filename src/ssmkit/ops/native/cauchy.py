"""Cauchy sums by the compiled C kernel (``cauchy.c``), forward and backward, on the CPU.

out[..., m] = Σ_n v[..., n] / (z[..., m] - w[..., n]) (S4's Cauchy kernel, arXiv 2111.00396 §3.3, Algorithm 1) --
the semantics of :func:`ssmkit.ops.cauchy.cauchy_reference`. One kernel call per direction: per channel, the points
in blocks of 64, each block's 1/(z - w) computed once per pole and applied to every numerator; the (N, W) Cauchy
matrix is never stored (the PyTorch path, :func:`ssmkit.ops.cauchy.cauchy_matmul`, builds and applies it in blocks of
~8 MB at ~6 aten ops per block, and again in its backward), so S4's kernel costs a handful of aten ops.

Usable where ``native_status("cauchy", dtype)`` says so (:mod:`ssmkit.ops.native.gate`). Under torch.compile the
kernel calls are custom ops (:mod:`ssmkit.ops.opaque`); torch.func transforms and torch.export take the
chunked path. Differentiated itself (``create_graph``), the
backward is the blocked GEMMs' (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from ssmkit.ops._checks import REAL_OF
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.gate import require_native
from ssmkit.ops.native.parallel import ptr, run_checked
from ssmkit.ops.opaque import kernel_op
from ssmkit.ops.twice import graph_backward

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of cauchy.c: (argument types, result type)
    "cy_forward": ([_p] * 4 + [_i64] * 7, ctypes.c_int),
    "cy_backward": ([_p] * 7 + [_i64] * 7, ctypes.c_int),
}


class _NativeCauchy(torch.autograd.Function):
    """out (G, S, W) = Σ_n v (G, S, N) / (z (G, W) - w (G, N)) by the C kernel; contiguous complex inputs."""

    @staticmethod
    def forward(ctx, v, z, w):  # type: ignore[override]
        (out,) = _forward_kernel(v, z, w)
        ctx.save_for_backward(v, z, w)
        return out

    @staticmethod
    def backward(ctx, g_out):  # type: ignore[override]
        v, z, w = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a double backward, through the blocked GEMMs (ops/twice.py)
            from ssmkit.ops.cauchy import _CauchyMatmul

            return tuple(graph_backward(lambda v, z, w: (apply_function(_CauchyMatmul, v, z, w),), (v, z, w),
                                        ctx.needs_input_grad, (g_out,)))
        need = list(ctx.needs_input_grad)
        grads = iter(_backward_kernel(v, z, w, g_out.resolve_conj().resolve_neg().contiguous(), *need))
        return tuple(next(grads) if n else None for n in need)


def forward_fake(v, z, w):
    """The fake output of a Cauchy-sums forward (:func:`sums_forward`) for torch.compile."""
    return [v.new_empty(v.shape[0], v.shape[1], z.shape[-1])]


def sums_forward(source: str, entry: str, signatures: dict, v: Tensor, z: Tensor, w: Tensor) -> list[Tensor]:
    """[out (G, S, W)] of a Cauchy-sums kernel (this module's, or ``cauchy_pairs.c``'s) from v (G, S, ·), the points z
    (G, W) and the poles w (G, ·), contiguous; one work item per channel."""
    fns = bind(source, REAL_OF[v.dtype], signatures)
    G, S, N = v.shape
    W = z.shape[-1]
    out = torch.empty(G, S, W, dtype=v.dtype, device="cpu")
    run_checked(fns[entry], G, [ptr(v), ptr(z), ptr(w), ptr(out), G, S, N, W], fns["openmp"],
                f"{source}: the forward could not allocate its buffer")
    return [out]


def sums_backward(source: str, entry: str, signatures: dict, v: Tensor, z: Tensor, w: Tensor, g_out: Tensor,
                  need_v: bool, need_z: bool, need_w: bool) -> list[Tensor]:
    """The gradients of v, z and w that are asked for, in that order, by a Cauchy-sums kernel's backward entry, from
    the forward's inputs and g_out (G, S, W) contiguous."""
    fns = bind(source, REAL_OF[v.dtype], signatures)
    G, S, N = v.shape
    W = z.shape[-1]
    grads = [torch.empty_like(t) if need else None for t, need in ((v, need_v), (z, need_z), (w, need_w))]
    run_checked(fns[entry], G, [ptr(v), ptr(z), ptr(w), ptr(g_out), *(ptr(g) for g in grads), G, S, N, W],
                fns["openmp"], f"{source}: the backward could not allocate its buffers")
    return [g for g in grads if g is not None]


@kernel_op("cauchy_forward", forward_fake)
def _forward_kernel(v: Tensor, z: Tensor, w: Tensor) -> list[Tensor]:
    """The C sums: [out (G, S, W)] from v (G, S, N), z (G, W), w (G, N), contiguous complex."""
    return sums_forward("cauchy.c", "cy_forward", SIGNATURES, v, z, w)


def backward_fake(v, z, w, g_out, need_v, need_z, need_w):
    """The fake outputs of a Cauchy-sums backward (:func:`sums_backward`) for torch.compile."""
    return [torch.empty_like(t) for t, n in ((v, need_v), (z, need_z), (w, need_w)) if n]


@kernel_op("cauchy_backward", backward_fake)
def _backward_kernel(v: Tensor, z: Tensor, w: Tensor, g_out: Tensor, need_v: bool, need_z: bool,
                     need_w: bool) -> list[Tensor]:
    """The C backward: the gradients of v, z and w that are asked for, in that order, from the forward's inputs and
    g_out (G, S, W) contiguous."""
    return sums_backward("cauchy.c", "cy_backward", SIGNATURES, v, z, w, g_out, need_v, need_z, need_w)


def cauchy_native(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Cauchy sums by the C kernel: out[..., m] = Σ_n v[..., n] / (z[..., m] - w[..., n]) (arXiv 2111.00396 §3.3).

    Equals :func:`ssmkit.ops.cauchy.cauchy_reference`; the inputs broadcast as there (the batch dimensions z and w
    share are the channels; v's further leading dimensions are numerators that reuse each channel's Cauchy matrix).

    Args:
        v: (..., N) complex numerators (complex64 or complex128), on the CPU.
        z: (..., W) complex evaluation points.
        w: (..., N) complex poles (same dtype as v, z); batch dimensions of v, z, w broadcast.

    Returns:
        (..., W) complex, the broadcast batch shape of v, z, w followed by W.

    Raises:
        ValueError: as :func:`ssmkit.ops.cauchy.cauchy_reference`.
        RuntimeError: the kernel cannot run here (``native_status("cauchy", dtype)`` gives the reason), or the inputs
            are not on the CPU.
    """
    from ssmkit.ops.cauchy import _check_cauchy_args

    _check_cauchy_args(v, z, w)
    device = next((t.device for t in (v, z, w) if t.device.type != "cpu"), v.device)
    require_native("cauchy", "cauchy", REAL_OF[v.dtype], device, "the inputs are")
    return sums_unchecked(v, z, w)


def sums_unchecked(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """:func:`cauchy_native` after its checks (the smoke call enters here)."""
    from ssmkit.ops.cauchy import grouped, ungrouped

    v_g, z_g, w_g, batch = grouped(v, z, w)
    # the kernel reads memory: a lazy conj() view's holds the unconjugated values, a negated view's their negatives
    v_g, z_g, w_g = (t.resolve_conj().resolve_neg() for t in (v_g, z_g, w_g))
    return ungrouped(apply_function(_NativeCauchy, v_g, z_g, w_g), batch)
