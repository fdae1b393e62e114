"""The state-space dual (SSD) scan of Mamba-2: a selective SSM whose state decay is one scalar per head.

Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space
Duality", arXiv 2405.21060 (§3, eq. 2 with Ā_t = exp(Δ_t A) I; §6 and Listing 1 for the chunked algorithm).
Per head h, with the state H_t ∈ R^{P×N}:

    H_t = exp(Δ_t A_h) H_{t-1} + Δ_t x_t B_tᵀ,      y_t = H_t C_t

x_t ∈ R^P (the head's P channels), Δ_t > 0 per head, A_h < 0, and B_t, C_t ∈ R^N shared by the heads of one
group (G groups, H/G heads each, heads in order: head h reads group h // (H/G)). Unrolled from H_{-1} = 0 this is
the quadratic ("attention-like") form of §3,

    y = (𝓛 ∘ C Bᵀ) (Δ x),     𝓛_{ts} = exp(Σ_{k=s+1}^{t} Δ_k A) for s ≤ t, 0 otherwise,

per head. Here H counts heads (the scan's channels) and P is the head dimension.

Paths (:mod:`ssmkit.ops.backend`): ``"reference"`` is :func:`ssd_reference`, the recurrence one step at a time
(the float64 test oracle); ``"chunked"`` is :func:`ssd_chunked`, the chunked SSD algorithm; ``"native"`` is
:func:`ssmkit.ops.native.ssd_native`, a C kernel (CPU) that runs the recurrence directly, one pass over time per head;
``"triton"`` the chunked Triton kernel (CUDA). ``"auto"`` takes the native kernel on the CPU where it runs, the Triton
kernel on CUDA for calls without a gradient, else the chunked path. All take an initial state and return the final
state, with gradients for every input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops._checks import check_chunk_size
from ssmkit.ops.backend import dispatch
from ssmkit.ops.recurrence import linear_recurrence
from ssmkit.ops.symbolic import carry, chunk_count, keep_first, symbolic_length
from ssmkit.ops.twice import wants_grad


def _check_ssd(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, h0: torch.Tensor | None
) -> None:
    """Raise ``ValueError`` unless the SSD inputs have matching shapes, one real floating dtype and one device."""
    named = (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be real float32 or float64; got {t.dtype}")
    if x.dim() != 4 or x.shape[1] == 0 or x.shape[0] == 0:
        raise ValueError(f"x must be (B, L, H, P) with B, L >= 1; got shape {tuple(x.shape)}")
    Bsz, L, H, P = x.shape
    if tuple(dt.shape) != (Bsz, L, H):
        raise ValueError(f"dt must be (B, L, H) = {(Bsz, L, H)} (from x); got {tuple(dt.shape)}")
    if tuple(A.shape) != (H,):
        raise ValueError(f"A must be (H,) = ({H},) (one decay per head, from x); got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (Bsz, L) or B.shape[2] < 1 or H % B.shape[2]:
        raise ValueError(
            f"B must be (B, L, G, N) with (B, L) = {(Bsz, L)} and G dividing the H = {H} heads; got {tuple(B.shape)}"
        )
    if C.shape != B.shape:
        raise ValueError(f"C must have B's shape (B, L, G, N) = {tuple(B.shape)}; got {tuple(C.shape)}")
    for name, t in named[1:]:
        if t.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}; got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}; got {t.device}")
    if h0 is not None:
        want = (Bsz, H, P, B.shape[3])
        if not isinstance(h0, torch.Tensor) or tuple(h0.shape) != want:
            found = tuple(h0.shape) if isinstance(h0, torch.Tensor) else type(h0).__name__
            raise ValueError(f"h0 must be (B, H, P, N) = {want}; got {found}")
        if h0.dtype != x.dtype or h0.device != x.device:
            raise ValueError(f"h0 must have x's dtype {x.dtype} and device {x.device}; got {h0.dtype} on {h0.device}")


def _check_ssd_step(
    x_t: torch.Tensor, dt_t: torch.Tensor, A: torch.Tensor, B_t: torch.Tensor, C_t: torch.Tensor, h: torch.Tensor
) -> None:
    """Raise ``ValueError`` unless the inputs of :func:`ssd_step` are those of the scan at L = 1 and h is the state
    (B, H, P, N) in x_t's dtype on its device (a state of another shape would broadcast silently)."""
    for name, t, want in (("x_t", x_t, "(B, H, P)"), ("dt_t", dt_t, "(B, H)"), ("B_t", B_t, "(B, G, N)"),
                          ("C_t", C_t, "(B, G, N)")):
        if not isinstance(t, torch.Tensor) or t.dim() != want.count(",") + 1:
            found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor {want}; got {found}")
    _check_ssd(x_t.unsqueeze(1), dt_t.unsqueeze(1), A, B_t.unsqueeze(1), C_t.unsqueeze(1), None)
    want = (*x_t.shape, B_t.shape[2])
    if not isinstance(h, torch.Tensor) or tuple(h.shape) != want or h.dtype != x_t.dtype or h.device != x_t.device:
        found = f"{tuple(h.shape)} {h.dtype} on {h.device}" if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"h must be (B, H, P, N) = {want} in x_t's dtype {x_t.dtype} on {x_t.device}; got {found}")


def ssd_step(
    x_t: torch.Tensor, dt_t: torch.Tensor, A: torch.Tensor, B_t: torch.Tensor, C_t: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the SSD recurrence: H_t = exp(Δ_t A) H_{t-1} + Δ_t x_t B_tᵀ, y_t = H_t C_t (arXiv 2405.21060 §3).

    Args:
        x_t: (B, H, P) input of each head.
        dt_t: (B, H) step sizes Δ_t > 0.
        A: (H,) decay rates A < 0.
        B_t: (B, G, N) input vectors, G groups dividing the H heads.
        C_t: (B, G, N) output vectors.
        h: (B, H, P, N) the state H_{t-1}.

    Returns:
        y_t (B, H, P) and H_t (B, H, P, N).
    """
    _check_ssd_step(x_t, dt_t, A, B_t, C_t, h)
    Bsz, H, P = x_t.shape
    G, N = B_t.shape[1:]
    R = H // G  # heads per group
    decay = torch.exp(dt_t * A)  # (B, H)
    xdt = (x_t * dt_t.unsqueeze(-1)).reshape(Bsz, G, R, P)  # (B, G, R, P)
    h_next = decay[..., None, None] * h + (xdt.unsqueeze(-1) * B_t[:, :, None, None, :]).reshape(Bsz, H, P, N)  # (B, H, P, N)
    y = torch.einsum("bgrpn,bgn->bgrp", h_next.reshape(Bsz, G, R, P, N), C_t).reshape(Bsz, H, P)  # (B, H, P)
    return y, h_next


def ssd_reference(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD recurrence one step at a time (the oracle of :func:`ssd`).

    H_t = exp(Δ_t A_h) H_{t-1} + Δ_t x_t B_tᵀ, y_t = H_t C_t per head (arXiv 2405.21060 §3), from H_{-1} = h0.

    Args:
        x: (B, L, H, P) inputs, H heads of P channels.
        dt: (B, L, H) step sizes Δ > 0 (after any softplus).
        A: (H,) decay rates, A < 0.
        B: (B, L, G, N) input vectors, G groups dividing H (head h reads group h // (H/G)).
        C: (B, L, G, N) output vectors.
        h0: (B, H, P, N) initial state, or None for zeros.

    Returns:
        y (B, L, H, P) and the final state (B, H, P, N).
    """
    _check_ssd(x, dt, A, B, C, h0)
    Bsz, L, H, P = x.shape
    h = h0 if h0 is not None else x.new_zeros(Bsz, H, P, B.shape[3])  # (B, H, P, N)
    ys = []
    for t in range(L):
        y_t, h = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], h)  # (B, H, P), (B, H, P, N)
        ys.append(y_t)
    return torch.stack(ys, dim=1), h  # (B, L, H, P), (B, H, P, N)


def segment_sums(a: torch.Tensor) -> torch.Tensor:
    """The log decays between every two steps of a chunk: S_{ts} = Σ_{k=s+1}^{t} a_k for s ≤ t, -inf for s > t.

    Each entry is summed from its own terms (a masked cumulative sum), not as a difference of two running sums,
    which would lose ~|Σ a|·eps absolute in long chunks of strong decay (arXiv 2405.21060, Listing 1 ``segsum``).

    Args:
        a: (..., T) log decays a_t = Δ_t A.

    Returns:
        (..., T, T): S, with exp(S) the lower-triangular decay matrix 𝓛 of the chunk.
    """
    T = a.shape[-1]
    below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)  # k > s
    on_or_below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()  # s ≤ t
    terms = a.unsqueeze(-1).expand(*a.shape, T).masked_fill(~below, 0.0)  # (..., T, T): [k, s] = a_k if k > s
    return terms.cumsum(dim=-2).masked_fill(~on_or_below, float("-inf"))  # (..., T, T)


DEFAULT_CHUNK = 64


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan by the chunked algorithm of arXiv 2405.21060 §6 (Listing 1); equals :func:`ssd_reference`.

    In chunks of T steps (the last one padded with Δ = 0, which leaves the state unchanged), with a_t = Δ_t A:
    (1) the diagonal blocks of y = (𝓛 ∘ C Bᵀ)(Δ x); (2) each chunk's final state from zero; (3) the recurrence
    over chunks, from h0; (4) the output of each chunk's start state, exp(Σ_{k≤t} a_k) C_tᵀ H_start. Steps 1, 2
    and 4 are batched matrix products over all chunks at once; step 3 is one first-order linear recurrence over the
    L/T chunks (:func:`ssmkit.ops.recurrence.linear_recurrence`). Memory is O(B·H·L·T) for the decay masks plus the
    chunk states (B, L/T, H, P, N); no (B, L, H, P, N) tensor is formed.
    Gradients come from autograd through these steps.

    Args:
        x: (B, L, H, P) inputs, H heads of P channels.
        dt: (B, L, H) step sizes Δ > 0.
        A: (H,) decay rates, A < 0.
        B: (B, L, G, N) input vectors, G groups dividing H.
        C: (B, L, G, N) output vectors.
        h0: (B, H, P, N) initial state, or None for zeros.
        chunk_size: T (None: 64; at most L is used).

    Returns:
        y (B, L, H, P) and the final state (B, H, P, N).
    """
    _check_ssd(x, dt, A, B, C, h0)
    chunk_size = DEFAULT_CHUNK if chunk_size is None else chunk_size
    check_chunk_size(chunk_size)
    Bsz, L, H, P = x.shape
    G, N = B.shape[2:]
    R = H // G  # heads per group
    symbolic = symbolic_length(L)  # exporting with a dynamic L: no branch on L (ops/symbolic.py)
    T = chunk_size if symbolic else min(chunk_size, L)
    nc = chunk_count(L, T)  # chunks (a symbolic L gets one more, all padding)
    pad = nc * T - L
    if symbolic or pad:  # Δ = 0 on padded steps: decay 1 and no input, so the final state is the state after L-1
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))  # (B, nc·T, ·, ·)
        dt = F.pad(dt, (0, 0, 0, pad))  # (B, nc·T, H)
    a = (dt * A).reshape(Bsz, nc, T, G, R).permute(0, 3, 4, 1, 2)  # (B, G, R, nc, T): log decays a_t = Δ_t A
    xdt = (x * dt.unsqueeze(-1)).reshape(Bsz, nc, T, G, R, P)  # (B, nc, T, G, R, P): Δ_t x_t
    B_c = B.reshape(Bsz, nc, T, G, N)  # (B, nc, T, G, N)
    C_c = C.reshape(Bsz, nc, T, G, N)  # (B, nc, T, G, N)

    # 1. intra-chunk outputs: y_t = Σ_{s≤t} exp(Σ_{k=s+1}^{t} a_k) (C_t·B_s) Δ_s x_s
    decay_ts = torch.exp(segment_sums(a))  # (B, G, R, nc, T, T): 𝓛 within each chunk
    CB = torch.einsum("bctgn,bcsgn->bgcts", C_c, B_c)  # (B, G, nc, T, T)
    scores = decay_ts * CB.unsqueeze(2)  # (B, G, R, nc, T, T)
    y = _scores_times_inputs(scores, xdt, symbolic)  # (B, nc, T, G, R, P)

    # 2. each chunk's final state from zero: S_c = Σ_s exp(Σ_{k=s+1}^{T-1} a_k) Δ_s x_s B_sᵀ
    decay_to_end = decay_ts[..., -1, :]  # (B, G, R, nc, T): the last row of 𝓛
    weighted = xdt * decay_to_end.permute(0, 3, 4, 1, 2).unsqueeze(-1)  # (B, nc, T, G, R, P)
    chunk_states = torch.einsum("bcsgrp,bcsgn->bcgrpn", weighted, B_c)  # (B, nc, G, R, P, N)

    # 3. recurrence over chunks: H_start(c+1) = exp(Σ_{chunk c} a) H_start(c) + S_c, from H_start(0) = h0, as one
    #    linear recurrence over the nc chunks (its own fast path and backward: a Python loop of selects here cost
    #    a zero fill of every chunk state per chunk in the backward, O(nc²))
    log_decay_from_start = a.cumsum(dim=-1)  # (B, G, R, nc, T): Σ_{k=0}^{t} a_k (one sign: no cancellation)
    chunk_decay = torch.exp(log_decay_from_start[..., -1]).reshape(Bsz, H, nc).transpose(1, 2)  # (B, nc, H)
    gates = chunk_decay[..., None, None].expand(Bsz, nc, H, P, N)  # (B, nc, H, P, N)
    if symbolic:  # one scan op over the symbolic chunk count (a chunked scan of it would nest symbolic floors)
        start_states, h = carry(gates, chunk_states.reshape(Bsz, nc, H, P, N), h0, dim=1)  # (B, nc, H, P, N)
    else:
        ends, h = linear_recurrence(gates, chunk_states.reshape(Bsz, nc, H, P, N), h0)  # (B, nc, H, P, N), (B, H, P, N)
        first = h0 if h0 is not None else x.new_zeros(Bsz, H, P, N)  # (B, H, P, N)
        start_states = torch.cat([first.unsqueeze(1), ends[:, :-1]], dim=1)  # (B, nc, H, P, N)
    start_states = start_states.reshape(Bsz, nc, G, R, P, N)

    # 4. output of each chunk's start state: y_t += exp(Σ_{k=0}^{t} a_k) C_tᵀ H_start
    y_start = torch.einsum("bctgn,bcgrpn->bctgrp", C_c, start_states)  # (B, nc, T, G, R, P)
    decay_from_start = torch.exp(log_decay_from_start).permute(0, 3, 4, 1, 2).unsqueeze(-1)  # (B, nc, T, G, R, 1)
    y = y + y_start * decay_from_start  # (B, nc, T, G, R, P)
    y = y.reshape(Bsz, nc * T, H, P)  # (B, nc·T, H, P)
    return keep_first(y, 1, L), h  # (B, L, H, P), (B, H, P, N)


def gemm_batch_limit(device: torch.device) -> int | None:
    """The most matrices one batched GEMM call may take on ``device`` (None: no limit). cuBLAS's failed past 65535 on
    an H200 (CUDA 13, torch 2.11): CUBLAS_STATUS_EXECUTION_FAILED, then an illegal address for the whole process, at
    L = 2^20 with 4 heads (B·G·R·nc = 65536 in :func:`ssd_chunked`'s intra-chunk product)."""
    return 65535 if device.type == "cuda" else None


def _scores_times_inputs(scores: torch.Tensor, xdt: torch.Tensor, symbolic: bool) -> torch.Tensor:
    """einsum("bgrcts,bcsgrp->bctgrp"): y_t = Σ_s scores_ts Δ_s x_s within each chunk, one batched GEMM over the
    (b, g, r, chunk) matrices. Past :func:`gemm_batch_limit`, in slices of batch rows, or of chunks when one row has
    more, concatenated: the same values as one call.

    Args:
        scores: (B, G, R, nc, T, T) masked decays times C·B.
        xdt: (B, nc, T, G, R, P) Δ_t x_t.
        symbolic: the length is symbolic (export): one call, no branch on nc.

    Returns:
        (B, nc, T, G, R, P).
    """
    equation = "bgrcts,bcsgrp->bctgrp"
    Bsz, G, R, nc = scores.shape[:4]
    limit = None if symbolic else gemm_batch_limit(scores.device)
    if limit is None or Bsz * G * R * nc <= limit:
        return torch.einsum(equation, scores, xdt)
    if G * R * nc <= limit:  # whole rows of the batch per call
        rows = limit // (G * R * nc)
        return torch.cat([torch.einsum(equation, scores[i:i + rows], xdt[i:i + rows]) for i in range(0, Bsz, rows)])
    chunks = max(1, limit // (G * R))  # one row at a time, in slices of chunks
    return torch.cat([torch.cat([torch.einsum(equation, scores[i:i + 1, :, :, c:c + chunks], xdt[i:i + 1, c:c + chunks])
                                 for c in range(0, nc, chunks)], dim=1) for i in range(Bsz)])


def _ssd_triton(x, dt, A, B, C, h0=None, *, chunk_size=None):
    from ssmkit.ops.triton_gate import ssd_triton  # the gate imports this module for its smoke call

    return ssd_triton(x, dt, A, B, C, h0, chunk_size=chunk_size)


def _ssd_native(x, dt, A, B, C, h0=None, *, chunk_size=None):
    """The C kernel; a chunk size given for the chunked paths is checked (a bad value raises on every path that takes
    one) but not passed: the kernel's recompute chunk is its own (:func:`ssmkit.ops.native.ssd.default_chunk`)."""
    from ssmkit.ops.native.ssd import ssd_native  # (it imports this module's checks)

    if chunk_size is not None:
        check_chunk_size(chunk_size)
    return ssd_native(x, dt, A, B, C, h0)


_SSD = {"reference": ssd_reference, "chunked": ssd_chunked, "native": _ssd_native, "triton": _ssd_triton}


def _auto(x: torch.Tensor, wants_grad: bool) -> str:
    """``"auto"``'s path for input x: the C kernel on the CPU where it runs (it takes the recurrence's 2·P·N
    multiply-adds per head and step directly: 0.14x the chunked path's forward time, 0.3x forward+backward, at B 8,
    L 4 096, 4 heads, P = N = 64 on the 2-core VM, docs/benchmarks.md), the Triton kernel on CUDA for a call without a
    gradient, else the chunked algorithm."""
    from ssmkit.ops.native.gate import prefer_native
    from ssmkit.ops.triton_gate import prefer_triton

    if prefer_native("ssd", x):
        return "native"
    return "triton" if not wants_grad and prefer_triton(x, "ssd") else "chunked"



def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan H_t = exp(Δ_t A) H_{t-1} + Δ_t x_t B_tᵀ, y_t = H_t C_t (arXiv 2405.21060 §3); path by backend.

    Backends: ``"reference"`` -> :func:`ssd_reference` (the recurrence, step by step); ``"chunked"`` ->
    :func:`ssd_chunked` (the chunked SSD algorithm); ``"native"`` -> :func:`ssmkit.ops.native.ssd_native` (the C
    kernel on the CPU; its own recompute chunk, so ``chunk_size`` does not reach it); ``"triton"`` -> the chunked Triton
    kernel (:mod:`ssmkit.ops.triton_gate`: CUDA after a successful smoke call, or the CPU interpreter under
    ``TRITON_INTERPRET=1``; its chunk size is a power of two >= 16, None: 64); ``"auto"`` -> ``"native"`` on the CPU
    where its smoke call passed and nothing traces, ``"triton"`` on CUDA when it runs and no gradient is wanted, else
    ``"chunked"`` (the Triton kernel's backward re-runs the chunked path under autograd, so a training call through it
    took 1.1-1.2x the chunked path's time on an H200, while its forward alone took 0.8x: docs/benchmarks.md, "First
    run on an H200"); ``"fft"`` raises.

    Args:
        x: (B, L, H, P) inputs, H heads of P channels.
        dt: (B, L, H) step sizes Δ > 0.
        A: (H,) decay rates, A < 0.
        B: (B, L, G, N) input vectors, G groups dividing H (head h reads group h // (H/G)).
        C: (B, L, G, N) output vectors.
        h0: (B, H, P, N) initial state, or None for zeros.
        chunk_size: T of the chunked paths (None: 64); the reference and native paths ignore it.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        y (B, L, H, P) and the final state (B, H, P, N).
    """
    # (wants_grad passes over an argument that is not a tensor: the path's own checks name it)
    impl = dispatch("ssd", _SSD, backend, auto=lambda: _auto(x, wants_grad(x, dt, A, B, C, h0)))
    if impl is not ssd_reference:
        return impl(x, dt, A, B, C, h0, chunk_size=chunk_size)
    return impl(x, dt, A, B, C, h0)
