"""The selective scan of Mamba by the compiled C kernel (``selective_scan.c``), forward and backward, on the CPU.

h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t, y_t = C_t · h_t + D ⊙ u_t, y_t ⊙ SiLU(z_t), Δ = softplus(δ + b_Δ)
(arXiv 2312.00752 Algorithm 2, with the official code's B̄ = Δ B) -- the semantics of
:func:`ssmkit.ops.selective.selective_scan_reference`, with an initial state in and a differentiable final state
out.

The C kernel runs the O(B·L·H·N) core: per block of 64 channels it keeps the N states in a local array and makes one
pass over time (the chunked PyTorch path makes ~20 passes over chunk buffers). Δ's softplus, the skip and the gate
stay in PyTorch, under autograd. The work (batch × group × channel block) is split over ``torch.get_num_threads()``
Python threads; :mod:`ctypes` releases the GIL during each call, so they run in parallel. The backward recomputes the
states chunk by chunk from the chunk-start states the forward kept (B·H·N per ``T`` steps).

Usable where :func:`native_status` says so: the library built (:mod:`ssmkit.ops.native.build`) and a smoke call
matched the reference, forward and gradients. The backward is not itself differentiable (no double backward), and
the kernel cannot be traced by torch.func or torch.compile: ``"auto"`` picks the chunked path then.
"""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from ssmkit.ops.native.build import NativeBuildError, load

DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_LIBS: dict[str, ctypes.CDLL] = {}
_STATUS: dict[str, tuple[bool, str]] = {}
_LOCK = threading.Lock()
_POOL: list[ThreadPoolExecutor] = []

_i64, _p = ctypes.c_int64, ctypes.c_void_p


def _library(dtype: torch.dtype) -> ctypes.CDLL:
    """The loaded kernel library for ``dtype`` (built on first use)."""
    name = DTYPES[dtype]
    lib = _LIBS.get(name)
    if lib is None:
        lib = load("selective_scan.c", name)
        suffix = "f32" if dtype == torch.float32 else "f64"
        items, fwd, bwd = (getattr(lib, f"{f}_{suffix}") for f in ("ss_items", "ss_forward", "ss_backward"))
        items.argtypes, items.restype = [_i64] * 3, _i64
        fwd.argtypes, fwd.restype = [_p] * 9 + [_i64] * 8, None
        bwd.argtypes, bwd.restype = [_p] * 14 + [_i64] * 8, ctypes.c_int
        _LIBS[name] = lib = (items, fwd, bwd)  # type: ignore[assignment]
    return lib  # type: ignore[return-value]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _run(fn, n_items: int, make_args) -> list:
    """Run ``fn(*make_args(part, item0, item1))`` over [0, n_items) split into ``torch.get_num_threads()`` parts."""
    parts = max(1, min(torch.get_num_threads(), n_items))
    bounds = [(k * n_items // parts, (k + 1) * n_items // parts) for k in range(parts)]
    if parts == 1:
        return [fn(*make_args(0, 0, n_items))]
    with _LOCK:
        if not _POOL or _POOL[0]._max_workers < parts:  # noqa: SLF001
            if _POOL:
                _POOL.pop().shutdown(wait=False)
            _POOL.append(ThreadPoolExecutor(max_workers=parts, thread_name_prefix="ssmkit-native"))
        pool = _POOL[0]
    futures = [pool.submit(fn, *make_args(k, i0, i1)) for k, (i0, i1) in enumerate(bounds)]
    return [f.result() for f in futures]


def default_chunk(N: int, itemsize: int) -> int:
    """The backward's chunk length T: the largest power of two ≤ 64 whose chunk buffers (2T+1 states of N × 64
    channels) fit in 256 KiB (a core's L2 share), at least 8."""
    T = 64
    while T > 8 and (2 * T + 1) * N * 64 * itemsize > 256 * 1024:
        T //= 2
    return T


class _NativeScan(torch.autograd.Function):
    """y_t = C_t · h_t of the recurrence h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t by the C kernel.

    Inputs: Δ, u (B, L, H) contiguous, A (H, N), B, C (B, L, G, N) contiguous, h0 (B, H, N) or None, T (the
    backward's chunk length), keep (keep the chunk-start states for a backward). Outputs y (B, L, H) and
    h_{L-1} (B, H, N).
    """

    @staticmethod
    def forward(ctx, dt, u, A, B, C, h0, T, keep):  # type: ignore[override]
        items, fwd, _ = _library(u.dtype)
        Bsz, L, H = u.shape
        G, N = B.shape[2], B.shape[3]
        At = A.t().contiguous()  # (N, H)
        h0c = None if h0 is None else h0.contiguous()
        y = torch.empty_like(u)
        hL = u.new_empty(Bsz, H, N)
        nc = -(-L // T)
        ckpt = u.new_empty(Bsz, nc, N, H) if keep else None  # the states at the chunk starts
        args = [_ptr(x) for x in (u, dt, At, B, C, h0c, y, hL, ckpt)] + [Bsz, L, H, G, N, T]
        _run(fwd, items(Bsz, H, G), lambda k, i0, i1: (*args, i0, i1))
        ctx.save_for_backward(dt, u, A, At, B, C, ckpt)
        ctx.T, ctx.has_h0 = T, h0 is not None
        return y, hL

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_y, g_h):  # type: ignore[override]
        dt, u, A, At, B, C, ckpt = ctx.saved_tensors
        if ckpt is None:
            raise RuntimeError("selective_scan native: the forward kept no states for a backward (it ran without grad)")
        items, _, bwd = _library(u.dtype)
        Bsz, L, H = u.shape
        G, N = B.shape[2], B.shape[3]
        n_items = items(Bsz, H, G)
        parts = max(1, min(torch.get_num_threads(), n_items))
        g_y = u.new_zeros(u.shape) if g_y is None else g_y.contiguous()
        g_h = None if g_h is None else g_h.contiguous()
        g_dt, g_u = torch.empty_like(u), torch.empty_like(u)
        g_h0 = u.new_empty(Bsz, H, N) if ctx.has_h0 else None
        g_B, g_C = B.new_zeros(parts, *B.shape), C.new_zeros(parts, *C.shape)  # one partial sum per thread
        g_A = A.new_zeros(parts, N, H)
        shared = [_ptr(x) for x in (u, dt, At, B, C, ckpt, g_y, g_h, g_dt, g_u, g_h0)]

        def args(k, i0, i1):
            return (*shared, _ptr(g_B[k]), _ptr(g_C[k]), _ptr(g_A[k]), Bsz, L, H, G, N, ctx.T, i0, i1)

        if any(_run(bwd, n_items, args)):
            raise MemoryError("selective_scan native: the backward could not allocate its chunk buffers")
        return g_dt, g_u, g_A.sum(0).t(), g_B.sum(0), g_C.sum(0), g_h0, None, None


def native_status(dtype: torch.dtype = torch.float32) -> tuple[bool, str]:
    """Whether the native selective scan runs here in ``dtype``, and why not: (ok, reason).

    Decided once per dtype by building the library and a smoke call (a tiny scan with an initial state, forward and
    every gradient) compared with :func:`ssmkit.ops.selective.selective_scan_reference`.
    """
    name = DTYPES.get(dtype)
    if name is None:
        return False, f"the native selective scan runs in float32 or float64, not {dtype}"
    if name not in _STATUS:
        try:
            _smoke(dtype)
            _STATUS[name] = (True, "built and checked against the reference")
        except NativeBuildError as err:
            _STATUS[name] = (False, str(err))
        except Exception as err:  # a wrong result or a crash in the smoke call: never use the kernel
            _STATUS[name] = (False, f"the smoke call failed: {type(err).__name__}: {err}")
    return _STATUS[name]


def native_available(dtype: torch.dtype = torch.float32) -> bool:
    """True when :func:`native_status` says the kernel runs here in ``dtype``."""
    return native_status(dtype)[0]


def _smoke(dtype: torch.dtype) -> None:
    from ssmkit.ops.selective import selective_scan_reference

    g = torch.Generator().manual_seed(0)
    Bsz, L, H, N, G = 2, 11, 70, 3, 2  # two channel blocks in one group, a chunk boundary inside L

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    args = [rand(Bsz, L, H), rand(Bsz, L, H), -torch.rand(H, N, generator=g, dtype=torch.float64).to(dtype) - 0.5,
            rand(Bsz, L, G, N), rand(Bsz, L, G, N), rand(Bsz, H, N)]
    outs = []
    for fn in (lambda *a: _scan(*a[:5], None, None, None, True, a[5], True, 4),
               lambda *a: selective_scan_reference(*a[:5], delta_softplus=True, state=a[5])):
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
            leaves = [a.clone().requires_grad_() for a in args]
            y, h = fn(*leaves)
            loss = (y * torch.linspace(-1, 1, L, dtype=dtype).view(1, L, 1)).square().sum() + h.square().sum()
            outs.append([y, h, *torch.autograd.grad(loss, leaves)])
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for a, b in zip(*outs):
        if not bool(((a - b).abs().max() <= tol * b.abs().max().clamp_min(1.0)).item()):
            raise RuntimeError("the kernel's result differs from the reference")


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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The selective scan by the C kernel; equals :func:`ssmkit.ops.selective.selective_scan_reference`.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t, y_t = C_t · h_t + D ⊙ u_t, y_t ⊙ SiLU(z_t) (arXiv 2312.00752
    Algorithm 2). Steps: (1) Δ = softplus(δ + b_Δ) in PyTorch; (2) the kernel's scan (one pass per channel block,
    the chunk-start states kept when a gradient will be asked for); (3) the skip and the gate in PyTorch.

    Args:
        u: (B, L, H) input, float32 or float64, on the CPU.
        delta: (B, L, H) step sizes δ before the bias and softplus.
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

    Returns:
        y (B, L, H) and the final state h_{L-1} (B, H, N) (None when not asked for).

    Raises:
        RuntimeError: the kernel cannot run here (:func:`native_status` gives the reason), or the inputs are not on
            the CPU.
    """
    from ssmkit.ops.selective import _check_selective

    _check_selective(u, delta, A, B, C, D, z, delta_bias, state)
    if u.device.type != "cpu":
        raise RuntimeError(f"selective_scan: backend 'native' runs on the CPU; the inputs are on {u.device}")
    ok, why = native_status(u.dtype)
    if not ok:
        raise RuntimeError(f"selective_scan: backend 'native' cannot run here: {why}")
    return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state, return_state, chunk_size)


def _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state, return_state, chunk_size):
    """:func:`selective_scan_native` after its checks (the smoke call enters here)."""
    from ssmkit.ops._checks import check_chunk_size
    from ssmkit.ops.selective import _dt, _finish

    Bsz, L, H = u.shape
    N = A.shape[1]
    if chunk_size is None:
        chunk_size = default_chunk(N, u.element_size())
    check_chunk_size(chunk_size)
    grouped = B.dim() == 4
    G = B.shape[2] if grouped else 1
    dt = _dt(delta, delta_bias, delta_softplus).contiguous()  # (B, L, H)
    Bg = (B if grouped else B.unsqueeze(2)).contiguous()  # (B, L, G, N)
    Cg = (C if grouped else C.unsqueeze(2)).contiguous()
    keep = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, delta_bias, state)
    )
    y, h = _NativeScan.apply(dt, u.contiguous(), A, Bg, Cg, state, chunk_size, keep)
    return _finish(y, u, D, z), (h if return_state else None)
