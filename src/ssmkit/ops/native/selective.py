"""The selective scan of Mamba by the compiled C kernel (``selective_scan.c``), forward and backward, on the CPU.

h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t, y_t = C_t · h_t + D ⊙ u_t, y_t ⊙ SiLU(z_t), Δ = softplus(δ + b_Δ)
(arXiv 2312.00752 Algorithm 2, with the official code's B̄ = Δ B) -- the semantics of
:func:`ssmkit.ops.selective.selective_scan_reference`, with an initial state in and a differentiable final state
out.

The C kernel runs the whole op: per block of 64 channels it keeps the N states in a local array and makes one pass over
time (the chunked PyTorch path makes ~20 passes over chunk buffers), with Δ's softplus, the skip and the gate fused
(they are elementwise over (B, L, H): done in PyTorch they cost a pass over memory each, forward and backward), and, when
``delta_proj`` W_Δ (H, R) is given, Mamba's low-rank δ = δlow W_Δᵀ from δlow (B, L, R) (``dt_proj``: a GEMM with K = R,
16 at d_model 256, which BLAS runs at a fraction of its rate, and a (B, L, H) tensor written and read twice). The
work items (batch × group × channel block) run on ``torch.get_num_threads()`` threads of torch's OpenMP runtime
(:mod:`ssmkit.ops.native.parallel`). The backward recomputes the
states chunk by chunk from the chunk-start states the forward kept (B·H·N per ``T`` steps).

Usable where :func:`ssmkit.ops.native.gate.native_status` says so: the library built
(:mod:`ssmkit.ops.native.build`) and a smoke call matched the reference, forward and gradients. Under torch.compile
the kernel calls are custom ops (:mod:`ssmkit.ops.opaque`); torch.func transforms and torch.export take the
chunked path. Differentiated itself (``create_graph``),
the backward is the chunked path's (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.gate import require_native
from ssmkit.ops.native.parallel import ptr as _ptr, run_checked
from ssmkit.ops.opaque import absent_if_zero, kernel_op
from ssmkit.ops.twice import graph_backward, wants_grad

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of selective_scan.c: (argument types, result type)
    "ss_items": ([_i64] * 3, _i64),
    "ss_forward": ([_p] * 3 + [_i64, _p, _i64] + [_p] * 9 + [_i64] * 9, ctypes.c_int),
    "ss_backward": ([_p] * 3 + [_i64, _p, _i64] + [_p] * 15 + [_i64] * 9, ctypes.c_int),
}


def default_chunk(N: int, itemsize: int) -> int:
    """The backward's chunk length T: the largest power of two ≤ 64 whose chunk buffers (2T+1 states of N × 64
    channels) fit in 1 MiB (a core's L2), at least 8. (At B 2, L 1024, H 512, N 16 on the 2-core VM T = 16 to 128
    timed the same, 21 ms forward+backward on one thread; T = 64 keeps the chunk-start states at B·H·N per 64 steps.)"""
    T = 64
    while T > 8 and (2 * T + 1) * N * 64 * itemsize > 1024 * 1024:
        T //= 2
    return T


class _NativeScan(torch.autograd.Function):
    """out_t = (C_t · h_t + D ⊙ u_t) ⊙ SiLU(z_t) of h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t, Δ = softplus(δ + b_Δ),
    by the C kernel (everything fused).

    Inputs: δ (B, L, H) contiguous, or δlow (B, L, R) contiguous with W_Δ (H, R) (δ = δlow W_Δᵀ, fused), u (B, L, H)
    contiguous, A (H, N), B, C (B, L, G, N) contiguous, D (H,) or None, z (B, L, H) or None, b_Δ (H,) or None, W_Δ or
    None, softplus (bool), h0 (B, H, N) or None, T (the backward's chunk length), keep (keep the chunk-start states for
    a backward). Outputs out (B, L, H) and h_{L-1} (B, H, N).
    """

    @staticmethod
    def forward(ctx, delta, u, A, B, C, D, z, bias, W, softplus, h0, T, keep):  # type: ignore[override]
        At = A.t().contiguous()  # (N, H)
        Wt = None if W is None else W.t().contiguous()  # (R, H)
        D_given, z_given, bias_given, h0_given = D, z, bias, h0  # as given: a double backward differentiates them
        D, z, bias, h0 = (None if t is None else t.contiguous() for t in (D, z, bias, h0))
        out, hL, *ckpt = _forward_kernel(delta, u, At, B, C, D, z, bias, Wt, softplus, h0, T, keep)
        ckpt = ckpt[0] if keep else None  # the states at the chunk starts
        ctx.save_for_backward(delta, u, At, B, C, D, z, bias, ckpt, Wt, W, A, D_given, z_given, bias_given, h0_given)
        ctx.T, ctx.softplus, ctx.has_h0 = T, softplus, h0 is not None
        return out, hL

    @staticmethod
    def backward(ctx, g_out, g_h):  # type: ignore[override]
        saved = ctx.saved_tensors  # (read once: torch.utils.checkpoint unpacks each saved tensor once)
        delta, u, At, B, C, D, z, bias, ckpt, Wt, W = saved[:11]
        if torch.is_grad_enabled():  # create_graph: a double backward, through the chunked scan (ops/twice.py)
            from ssmkit.ops.selective import selective_scan_chunked

            def chunked(delta, u, A, B, C, D, z, bias, W, h0):
                delta = delta if W is None else torch.nn.functional.linear(delta, W)
                return selective_scan_chunked(u, delta, A, B, C, D, z, bias, ctx.softplus, h0)

            A, D, z, bias, h0 = saved[11:]
            given = (delta, u, A, B, C, D, z, bias, W, h0)
            needs = ctx.needs_input_grad[:9] + ctx.needs_input_grad[10:11]
            g = graph_backward(chunked, given, needs, (g_out, g_h))
            return (*g[:9], None, g[9], None, None)
        if ckpt is None:
            raise RuntimeError("selective_scan native: the forward kept no states for a backward (it ran without grad)")
        g_out = u.new_zeros(u.shape) if g_out is None else g_out.contiguous()
        g_h = None if g_h is None else g_h.contiguous()
        g_delta, g_u, g_P, g_B, g_C, *rest = _backward_kernel(delta, u, At, B, C, D, z, bias, Wt, ctx.softplus, ckpt,
                                                             g_out, g_h, ctx.T, ctx.has_h0)
        # by index: torch 2.11's dynamo holds the starred rest as a tuple, and cannot trace tuple.pop
        g_z = rest[0] if z is not None else None
        g_h0 = rest[int(z is not None)] if ctx.has_h0 else None
        N = At.shape[0]
        g_D = g_P[N] if D is not None else None
        g_bias = g_P[N + 1] if bias is not None else None
        g_W = g_P[N + 2:].t() if W is not None else None  # δ = δlow W_Δᵀ: ∂W_Δ = ∂δᵀ δlow, formed by the kernel
        return g_delta, g_u, g_P[:N].t(), g_B, g_C, g_D, g_z, g_bias, g_W, None, g_h0, None, None


def _forward_fake(delta, u, At, B, C, D, z, bias, Wt, softplus, h0, T, keep):
    Bsz, L, H = u.shape
    N = At.shape[0]
    ckpt = [u.new_empty(Bsz, (L + T - 1) // T, N, H)] if keep else []
    return [torch.empty_like(u), u.new_empty(Bsz, H, N), *ckpt]


@kernel_op("selective_scan_forward", _forward_fake)
def _forward_kernel(
    delta: Tensor, u: Tensor, At: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    bias: Optional[Tensor], Wt: Optional[Tensor], softplus: bool, h0: Optional[Tensor], T: int, keep: bool,
) -> list[Tensor]:
    """The C forward: [out (B, L, H), h_{L-1} (B, H, N), then the chunk-start states (B, ⌈L/T⌉, N, H) when ``keep``],
    from δ (B, L, H) (or δlow (B, L, R) with W_Δᵀ (R, H)), u (B, L, H), Aᵀ (N, H), B, C (B, L, G, N), D, b_Δ (H,), z
    (B, L, H) and h0 (B, H, N) or None, all contiguous."""
    fns = bind("selective_scan.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    G, N = B.shape[2], B.shape[3]
    out = torch.empty_like(u)
    hL = u.new_empty(Bsz, H, N)
    ckpt = u.new_empty(Bsz, -(-L // T), N, H) if keep else None  # the states at the chunk starts
    fused = [_ptr(Wt), 0 if Wt is None else Wt.shape[0]]
    args = [_ptr(u), _ptr(delta), _ptr(bias), int(softplus), *fused,
            *(_ptr(t) for t in (At, B, C, D, z, h0, out, hL, ckpt)), Bsz, L, H, G, N, T]
    n_items = fns["ss_items"](Bsz, H, G)
    run_checked(fns["ss_forward"], n_items, args, fns["openmp"],
                "selective_scan native: the forward could not allocate its state buffer")
    return [out, hL, *([] if ckpt is None else [ckpt])]


def _backward_fake(delta, u, At, B, C, D, z, bias, Wt, softplus, ckpt, g_out, g_h, T, has_h0):
    Bsz, L, H = u.shape
    N = At.shape[0]
    R = 0 if Wt is None else Wt.shape[0]
    rest = ([torch.empty_like(u)] if z is not None else []) + ([u.new_empty(Bsz, H, N)] if has_h0 else [])
    return [torch.empty_like(delta), torch.empty_like(u), u.new_empty(N + 2 + R, H), torch.empty_like(B),
            torch.empty_like(C), *rest]


@kernel_op("selective_scan_backward", _backward_fake)
def _backward_kernel(
    delta: Tensor, u: Tensor, At: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    bias: Optional[Tensor], Wt: Optional[Tensor], softplus: bool, ckpt: Tensor, g_out: Tensor, g_h: Optional[Tensor],
    T: int, has_h0: bool,
) -> list[Tensor]:
    """The C backward: [∂δ (δ's shape: ∂δlow with W_Δ), ∂u, the parameters' gradients (N + 2 + R, H): ∂Aᵀ, ∂D, ∂b_Δ,
    ∂W_Δᵀ, ∂B, ∂C, then ∂z when z is given and ∂h0 when ``has_h0``], from the forward's inputs, its chunk-start states
    and the outputs' gradients g_out (B, L, H) and g_h (B, H, N) (None: unused), contiguous."""
    fns = bind("selective_scan.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    G, N = B.shape[2], B.shape[3]
    g_h = absent_if_zero(g_h)
    n_items = fns["ss_items"](Bsz, H, G)
    nblk = n_items // (Bsz * G)  # the kernel's channel blocks per group
    R = 0 if Wt is None else Wt.shape[0]
    g_u = torch.empty_like(u)
    # ∂δ (B, L, H); with W_Δ the kernel forms ∂δlow and ∂W_Δ itself: ∂δlow's partial per channel block (all written)
    g_delta = torch.empty_like(u) if Wt is None else u.new_empty(G * nblk, Bsz, L, R)
    g_z = torch.empty_like(u) if z is not None else None
    g_h0 = u.new_empty(Bsz, H, N) if has_h0 else None
    g_B, g_C = B.new_empty(nblk, *B.shape), C.new_empty(nblk, *C.shape)  # one partial per channel block (all written)
    g_P = u.new_zeros(Bsz, N + 2 + R, H)  # per batch row: ∂A (N rows, transposed), ∂D, ∂b_Δ, ∂W_Δ (R rows, transposed)
    args = [_ptr(u), _ptr(delta), _ptr(bias), int(softplus), _ptr(Wt), R,
            *(_ptr(t) for t in (At, B, C, D, z, ckpt, g_out, g_h, g_delta, g_u, g_z, g_h0)),
            _ptr(g_B), _ptr(g_C), _ptr(g_P), Bsz, L, H, G, N, T]
    run_checked(fns["ss_backward"], n_items, args, fns["openmp"],
                "selective_scan native: the backward could not allocate its chunk buffers")
    if Wt is not None:  # ∂δlow = ∂δ W_Δ, summed over the channel blocks
        g_delta = g_delta.sum(0)
    rest = [t for t in (g_z, g_h0) if t is not None]
    return [g_delta, g_u, g_P.sum(0), g_B.sum(0), g_C.sum(0), *rest]


def selective_scan_native(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    state: torch.Tensor | None = None,
    return_state: bool = True,
    *,
    chunk_size: int | None = None,
    delta_proj: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The selective scan by the C kernel; equals :func:`ssmkit.ops.selective.selective_scan_reference`.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t, y_t = C_t · h_t + D ⊙ u_t, y_t ⊙ SiLU(z_t) (arXiv 2312.00752
    Algorithm 2). One kernel call: per block of channels and per time step, Δ = softplus(δ + b_Δ), the state update,
    y = C · h, the skip and the gate; the chunk-start states are kept when a gradient will be asked for.

    Args:
        u: (B, L, H) input, float32 or float64, on the CPU.
        delta: (B, L, H) step sizes δ before the bias and softplus; (B, L, R) when ``delta_proj`` is given.
        A: (H, N) state matrix.
        B: (B, L, N) input matrices shared by all channels, or (B, L, G, N), one per group of H/G channels.
        C: (B, L, N) or (B, L, G, N) output matrices, B's shape.
        D: (H,) skip, or None.
        z: (B, L, H) gate, or None.
        delta_bias: (H,) bias b_Δ added to δ, or None.
        delta_softplus: Δ = softplus(δ + b_Δ) when True, δ + b_Δ otherwise.
        state: (B, H, N) state h_{-1}, or None for zeros.
        return_state: also return the final state.
        chunk_size: T, the backward's recompute chunk, or None for :func:`default_chunk`.
        delta_proj: W_Δ (H, R), or None: the step sizes are δ = delta W_Δᵀ (Mamba's ``dt_proj`` without its bias),
            formed inside the kernel.

    Returns:
        y (B, L, H) and the final state h_{L-1} (B, H, N) (None when not asked for).

    Raises:
        RuntimeError: the kernel cannot run here (``native_status("selective_scan", dtype)`` gives the reason), or
            the inputs are not on the CPU.
    """
    from ssmkit.ops.selective import _check_selective

    _check_selective(u, delta, A, B, C, D, z, delta_bias, state, delta_proj=delta_proj)
    require_native("selective_scan", "selective_scan", u.dtype, u.device, "the inputs are")
    return scan_unchecked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state, return_state, chunk_size, delta_proj)


def scan_unchecked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state, return_state, chunk_size,
                   delta_proj=None):
    """:func:`selective_scan_native` after its checks (the smoke call enters here)."""
    from ssmkit.ops._checks import check_chunk_size

    N = A.shape[1]
    if chunk_size is None:
        chunk_size = default_chunk(N, u.element_size())
    check_chunk_size(chunk_size)
    grouped = B.dim() == 4
    Bg = (B if grouped else B.unsqueeze(2)).contiguous()  # (B, L, G, N)
    Cg = (C if grouped else C.unsqueeze(2)).contiguous()
    keep = wants_grad(u, delta, A, B, C, D, z, delta_bias, state, delta_proj)
    out, h = apply_function(_NativeScan, delta.contiguous(), u.contiguous(), A, Bg, Cg, D, z, delta_bias, delta_proj,
                            bool(delta_softplus), state, chunk_size, keep)
    return out, (h if return_state else None)
