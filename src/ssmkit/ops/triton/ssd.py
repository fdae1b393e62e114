"""The chunked SSD scan of Mamba-2 as a Triton kernel (forward; the backward recomputes through the torch path).

Dao & Gu, "Transformers are SSMs", arXiv 2405.21060 (§3 eq. 2 with Ā_t = exp(Δ_t A) I; §6 for the chunked
algorithm). Per head h with state H_t ∈ R^{P×N}:

    H_t = exp(Δ_t A_h) H_{t-1} + Δ_t x_t B_tᵀ,      y_t = H_t C_t

One program per (batch row b, head h, block of head channels), chunks of T steps in order, the block's rows of
the state in registers. Per chunk, with a_t = Δ_t A_h and its running sum cs_t inside the chunk (Δ = 0 past the end:
decay 1, no input):
    (1) intra-chunk: y = ((C Bᵀ) ∘ 𝓛 ∘ Δ_sᵀ) x, 𝓛_ts = exp(cs_t - cs_s) for s ≤ t        (two tl.dot)
    (2) the carried state's output: y_t += exp(cs_t) C_t Hᵀ                                 (tl.dot)
    (3) H ← exp(cs_{T-1}) H + Σ_s exp(cs_{T-1} - cs_s) Δ_s x_s B_sᵀ                       (tl.dot)
The decays are differences of running sums inside one chunk (the torch path sums each segment from its own terms,
:func:`ssmkit.ops.ssd.segment_sums`; here the chunk is short and the error is ~|cs|·eps). Matmuls run in IEEE
precision: float32 as "tf32x3" (three TF32 tensor-core products, about float32's accuracy), float64 as "ieee".
Compiled for sm_90 (Triton 3.9) at chunk 64, 32 channels, N 128, float32, the kernel still spills: 255 registers and
2.2 KB of stack per thread with 8 warps ("ieee" float32 instead: 32 registers and 8.4 KB of stack); at N 64 1.3 KB.
Chunks of 16 do not spill at N 64 (N 128: 216 bytes with 16 channels); whether fewer, longer chunks with spills or
more, shorter ones without are faster is a GPU measurement: :class:`Tiles` sets them, and ``ssmkit bench gpu
--ssd-tiles`` times them (docs/benchmarks.md has the compile sweep).

Backward: when a gradient is wanted the forward also keeps the state at each chunk's start, and a backward kernel
(:mod:`ssmkit.ops.triton.ssd_backward`) walks the chunks in reverse from them; ``backward="recompute"`` keeps only the
inputs and differentiates :func:`ssmkit.ops.ssd.ssd_chunked` instead (what the first H200 run timed: forward+backward
0.9x the chunked path's speed). The backward kernel runs at the forward's chunk; where its launch is refused for shared
memory (``OutOfResources``, raised before it runs: explicit tiles of chunk 64 in float64 at N 128 need 306 KB compiled
for sm_90 by Triton 3.6) the gradients take the recompute path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from ssmkit.ops._checks import check_chunk_size
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.ssd import _check_ssd, ssd_chunked
from ssmkit.ops.twice import graph_backward, wants_grad

DEFAULT_CHUNK = 64  # T
MAX_CHUNK = 64  # the largest tile: the (T, T) decay matrix lives in registers
NUM_WARPS = 8
# The backward kernel's tiles: chunks of 16 (the forward then runs at them too: the states it keeps are chunk-start
# states) and 16 head channels per program, 8 warps. Compiled for sm_90 (Triton 3.9, float32 "tf32x3") it spills 56
# bytes per thread at N = 64 and 640 at N = 128; chunks of 32 spilled 632 / 7 584, the forward's 64 x 32 3 000 / 5 248
# (docs/benchmarks.md, "Session of 2026-12-05 (05:58-)"). Untimed: ``ssmkit bench gpu`` times it (rows triton and
# triton:recompute).
BACKWARD_CHUNK = 16
BACKWARD_CHANNELS = 16
BACKWARDS = ("kernel", "recompute")


class Tiles(NamedTuple):
    """The forward kernel's tiles, given explicitly (:func:`ssd_triton`'s ``tiles``; without them
    :func:`default_tiles` chooses for the shape): ``chunk`` steps per chunk and ``channels`` head channels per program,
    each a power of two >= 16 (tl.dot's smallest tile), and ``num_warps`` per program. A chunk above
    :data:`MAX_CHUNK` or channels above the head dimension are allowed but waste the tile; a launch that runs out of
    shared memory halves them as for the defaults."""

    chunk: int = DEFAULT_CHUNK
    channels: int = 32
    num_warps: int = NUM_WARPS

    @classmethod
    def parse(cls, text: str) -> "Tiles":
        """``"chunk,channels[,num_warps]"`` -> Tiles, each checked (``ValueError`` naming what was expected)."""
        fields = text.split(",")
        if not 2 <= len(fields) <= 3 or not all(f.strip().isdigit() for f in fields):
            raise ValueError(f"SSD tiles must be 'chunk,channels[,num_warps]' (positive integers); got {text!r}")
        return cls(*(int(f) for f in fields)).checked()

    def checked(self) -> "Tiles":
        """These tiles, or ``ValueError`` unless chunk and channels are powers of two >= 16 and num_warps a power of
        two in [1, 16]."""
        for name, v in (("chunk", self.chunk), ("channels", self.channels)):
            if not isinstance(v, int) or v < 16 or v & (v - 1):
                raise ValueError(f"SSD tiles: {name} must be a power of two >= 16 (tl.dot); got {v!r}")
        if not isinstance(self.num_warps, int) or self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"SSD tiles: num_warps must be 1, 2, 4, 8 or 16; got {self.num_warps!r}")
        return self


# (device, dtype, T, BP, NB, num_warps) asked -> (T, BP) that launched: the tiles after a launch ran out of shared
# memory
_FITTED: dict[tuple, tuple[int, int]] = {}


@triton.jit
def _ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, y_ptr, hL_ptr, ck_ptr,
    L, H, P, G, N, R, n_chunks,
    T: tl.constexpr, BP: tl.constexpr, NB: tl.constexpr, HAS_H0: tl.constexpr, PREC: tl.constexpr,
    SAVE_CK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    hd = tl.program_id(1)
    g = hd // R  # the head's group
    p = tl.program_id(2) * BP + tl.arange(0, BP)  # (BP,)
    n = tl.arange(0, NB)  # (NB,)
    t = tl.arange(0, T)  # (T,)
    pm = p < P
    nm = n < N
    A_h = tl.load(A_ptr + hd)
    s_off = ((b * H + hd) * P + p[:, None]) * N + n[None, :]  # (BP, NB)
    sm = pm[:, None] & nm[None, :]
    if HAS_H0:
        S = tl.load(h0_ptr + s_off, mask=sm, other=0.0)  # (BP, NB)
    else:
        S = tl.zeros((BP, NB), dtype=h0_ptr.dtype.element_ty)
    causal = t[:, None] >= t[None, :]  # (T, T): s ≤ t
    for c in range(0, n_chunks):
        tt = (c * T + t).to(tl.int64)  # (T,)
        tm = tt < L
        if SAVE_CK:  # the state at the chunk's start, for the backward kernel: (B, n_chunks, H, P, N)
            tl.store(ck_ptr + (((b * n_chunks + c) * H + hd) * P + p[:, None]) * N + n[None, :], S, mask=sm)
        dtv = tl.load(dt_ptr + (b * L + tt) * H + hd, mask=tm, other=0.0)  # (T,)
        cs = tl.cumsum(dtv * A_h, 0)  # (T,): Σ_{k≤t} a_k within the chunk
        xv = tl.load(x_ptr + ((b * L + tt[:, None]) * H + hd) * P + p[None, :], mask=tm[:, None] & pm[None, :],
                     other=0.0)
        bc_off = ((b * L + tt[:, None]) * G + g) * N + n[None, :]  # (T, NB)
        bcm = tm[:, None] & nm[None, :]
        Bv = tl.load(B_ptr + bc_off, mask=bcm, other=0.0)  # (T, NB)
        Cv = tl.load(C_ptr + bc_off, mask=bcm, other=0.0)  # (T, NB)
        # (1) intra-chunk outputs
        CB = tl.dot(Cv, tl.trans(Bv), input_precision=PREC)  # (T, T)
        decay = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf")))  # (T, T): 𝓛
        y = tl.dot(CB * decay * dtv[None, :], xv, input_precision=PREC)  # (T, BP)
        # (2) the carried state's output
        y += tl.exp(cs)[:, None] * tl.dot(Cv, tl.trans(S), input_precision=PREC)  # (T, BP)
        tl.store(y_ptr + ((b * L + tt[:, None]) * H + hd) * P + p[None, :], y, mask=tm[:, None] & pm[None, :])
        # (3) the state at the chunk's end
        cs_end = tl.sum(tl.where(t == T - 1, cs, 0.0), axis=0)
        w = dtv * tl.exp(cs_end - cs)  # (T,)
        S = tl.exp(cs_end) * S + tl.dot(tl.trans(xv * w[:, None]), Bv, input_precision=PREC)  # (BP, NB)
    tl.store(hL_ptr + s_off, S, mask=sm)


def default_tiles(P: int, N: int, T: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """The kernel's tiles: the chunk length (at most the T asked), the head channels per program and the padded N.

    Every tile is a power of two >= 16 (tl.dot). The kernel stages its dot operands in shared memory; compiled for
    sm_90 (Triton 3.9, 8 warps) it needs 209 KB with chunk 64, 32 channels and N padded to 128 in float32 and 177 KB
    with chunk 32 in float64 (4 warps: 171 KB with chunk 16, 16 channels, N 256 in float64) -- under the 227 KB of
    an H100/H200; 64 channels, or chunk 64 in float64, went over -- hence the caps: at most 32 channels, chunks of
    at most 32 in float64, halved again for N > 128. Those figures are one Triton version's (the GPU sessions run
    another): a launch that still runs out of shared memory (``OutOfResources``, raised before anything runs) is
    retried with the chunk, then the channels, halved down to 16, and the tiles that launched are kept per device,
    dtype and asked tiles (``_FITTED``).

    Args:
        P: the head dimension.
        N: the state size.
        T: the chunk length asked for (a power of two >= 16).
        dtype: float32 or float64.

    Returns:
        (chunk length, channels per program, padded state size), each a power of two >= 16.
    """
    BP = max(16, min(32, triton.next_power_of_2(P)))
    NB = max(16, triton.next_power_of_2(N))
    cap = MAX_CHUNK if dtype == torch.float32 else MAX_CHUNK // 2
    if NB > 128:
        cap //= 2
    return max(16, min(T, cap)), BP, NB


def _ssd_forward(x, dt, A, B, C, h0, T: int, fixed: Tiles | None = None, keep: bool = False):
    """y, H_L by the kernel at chunk T (:func:`default_tiles` picks the rest), or at the ``fixed`` tiles; then, when
    ``keep``, the chunk-start states (B, ⌈L/T⌉, H, P, N) and the chunk T they are kept at (the tiles that launched)."""
    Bsz, L, H, P = x.shape
    G, N = B.shape[2:]
    T, BP, NB = default_tiles(P, N, T, x.dtype)
    warps = NUM_WARPS
    if fixed is not None:
        T, BP, warps = fixed
    x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
    y = torch.empty_like(x)  # (B, L, H, P)
    hL = x.new_empty(Bsz, H, P, N)
    h0_arg = h0.contiguous() if h0 is not None else hL  # read only when HAS_H0
    key = (x.device, x.dtype, T, BP, NB, warps)
    T, BP = _FITTED.get(key, (T, BP))
    while True:
        ck = x.new_empty(Bsz, triton.cdiv(L, T), H, P, N) if keep else hL  # written only when SAVE_CK
        try:
            _ssd_fwd_kernel[(Bsz, H, triton.cdiv(P, BP))](
                x, dt, A, B, C, h0_arg, y, hL, ck, L, H, P, G, N, H // G, triton.cdiv(L, T),
                T=T, BP=BP, NB=NB, HAS_H0=h0 is not None, PREC="tf32x3" if x.dtype == torch.float32 else "ieee",
                SAVE_CK=keep, num_warps=warps,
            )
            break
        except OutOfResources:  # raised before the launch: nothing was written
            if T == 16 and BP == 16:
                raise
            T, BP = (T // 2, BP) if T > 16 else (T, BP // 2)
    _FITTED[key] = (T, BP)
    return (y, hL, ck, T) if keep else (y, hL)


class _SSD(torch.autograd.Function):
    """y, H_L by the forward kernel; the backward by the backward kernel from the chunk-start states the forward kept
    (:mod:`ssmkit.ops.triton.ssd_backward`), or with ``backward="recompute"`` by differentiating
    :func:`ssmkit.ops.ssd.ssd_chunked` (a re-run of the forward in torch). ``grad``: :func:`ssmkit.ops.twice.wants_grad`
    of the inputs at the call (not ``ctx.needs_input_grad``, which ignores grad mode: under ``torch.no_grad()`` the
    chunk-start states were kept, and the forward ran at the backward's chunk, for nothing)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, T, fixed, backward, grad):  # type: ignore[override]
        keep = backward == "kernel" and grad
        if keep and fixed is None:
            T = min(T, BACKWARD_CHUNK)
        out = _ssd_forward(x, dt, A, B, C, h0, T, fixed, keep)
        ctx.T = T
        ctx.backward_kind = backward
        if keep:
            y, hL, ck, ctx.T = out
            ctx.save_for_backward(x, dt, A, B, C, h0, ck)
            return y, hL
        ctx.save_for_backward(x, dt, A, B, C, h0, None)
        return out

    @staticmethod
    def backward(ctx, gy, gh):  # type: ignore[override]
        *saved, ck = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a double backward, on the inputs themselves (ops/twice.py)
            chunked = lambda *a: ssd_chunked(*a, chunk_size=ctx.T)  # noqa: E731
            return (*graph_backward(chunked, saved, ctx.needs_input_grad[:6], (gy, gh)), *(None,) * 4)
        if ck is not None:
            x, dt, A, B, C, h0 = saved
            from ssmkit.ops.triton.ssd_backward import ssd_backward_kernel

            try:
                grads = ssd_backward_kernel(x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(),
                                            C.contiguous(), ck, torch.zeros_like(x) if gy is None else gy, gh, ctx.T,
                                            BACKWARD_CHANNELS, h0 is not None)
                return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:6])), *(None,) * 4)
            except OutOfResources:  # raised before the launch (explicit tiles of a chunk too long for the backward's
                pass  # shared memory, e.g. 64 in float64 at N 128: 306 KB on sm_90): the recompute path below
        inputs = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(saved, ctx.needs_input_grad)]
        with torch.enable_grad(), torch.autocast(saved[0].device.type, enabled=False):  # the forward's precision
            y, h = ssd_chunked(*inputs, chunk_size=ctx.T)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            outs, grads = [], []
            for o, go in ((y, gy), (h, gh)):
                if go is not None:
                    outs.append(o)
                    grads.append(go)
            found = torch.autograd.grad(outs, wanted, grads, allow_unused=True) if wanted and outs else []
        it = iter(found)
        result = [next(it) if t is not None and t.requires_grad else None for t in inputs]
        return (*result, *(None,) * 4)


def ssd_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    tiles: Tiles | None = None,
    backward: str = "kernel",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan by the chunked Triton kernel; equals :func:`ssmkit.ops.ssd.ssd_reference`.

    H_t = exp(Δ_t A_h) H_{t-1} + Δ_t x_t B_tᵀ, y_t = H_t C_t per head (arXiv 2405.21060 §3, chunked as in §6).

    Args:
        x: (B, L, H, P) inputs, H heads of P channels.
        dt: (B, L, H) step sizes Δ > 0.
        A: (H,) decay rates, A < 0.
        B: (B, L, G, N) input vectors, G groups dividing H.
        C: (B, L, G, N) output vectors.
        h0: (B, H, P, N) initial state, or None for zeros.
        chunk_size: the chunk length asked for (None: 64). The kernel's tile T is the power of two at or above it,
            within [16, 64] (float64: [16, 32]; halved for N > 128) -- see :func:`default_tiles`; the chunk length
            changes speed only, not the result beyond rounding.
        tiles: the forward kernel's tiles given explicitly (:class:`Tiles`: chunk, channels per program, warps), for
            tuning on a GPU; None: chosen from ``chunk_size`` and the shape. Not both.
        backward: how gradients are computed: ``"kernel"`` (the backward kernel, :mod:`ssmkit.ops.triton.ssd_backward`,
            from the chunk-start states the forward keeps when a gradient is wanted: B·⌈L/T⌉·H·P·N values) or
            ``"recompute"`` (differentiate :func:`ssmkit.ops.ssd.ssd_chunked`, keeping only the inputs).

    Returns:
        y (B, L, H, P) and the final state (B, H, P, N).
    """
    _check_ssd(x, dt, A, B, C, h0)
    if backward not in BACKWARDS:
        raise ValueError(f"ssd_triton: backward must be one of {BACKWARDS}; got {backward!r}")
    grad = wants_grad(x, dt, A, B, C, h0)
    if tiles is not None:
        if chunk_size is not None:
            raise ValueError(f"ssd_triton: give chunk_size or tiles, not both; got chunk_size={chunk_size}, "
                             f"tiles={tiles}")
        if not isinstance(tiles, Tiles):
            raise ValueError(f"ssd_triton: tiles must be a ssmkit.ops.triton.ssd.Tiles; got {type(tiles).__name__}")
        tiles.checked()
        return apply_function(_SSD, x, dt, A, B, C, h0, tiles.chunk, tiles, backward, grad)
    asked = DEFAULT_CHUNK if chunk_size is None else chunk_size
    check_chunk_size(asked)
    T = default_tiles(P=x.shape[3], N=B.shape[3], T=max(16, triton.next_power_of_2(asked)), dtype=x.dtype)[0]
    return apply_function(_SSD, x, dt, A, B, C, h0, T, None, backward, grad)
