"""The selective scan of Mamba ("Mamba: Linear-Time Sequence Modeling with Selective State Spaces", Gu & Dao,
arXiv 2312.00752, §3.2 Algorithm 2, eq. 2a-2b): a diagonal SSM whose Δ, B and C depend on the time step.

    Δ_t = softplus(δ_t + b_Δ)                               (or δ_t itself without ``delta_softplus``)
    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t              per channel h and state n: Ā = exp(ΔA), B̄ = Δ B
    y_t = C_t · h_t + D ⊙ u_t,      then y_t ⊙ SiLU(z_t) when a gate z is given

with u, δ, z (B, L, H), A (H, N), D (H,), and B_t, C_t (B, L, N) shared by every channel -- or (B, L, G, N),
one pair per group of P = H/G consecutive channels. The official code discretises B by Δ (Euler), not by
the ZOH of the paper's eq. 4; so does this module. Unlike the official kernel, every path takes an initial state
h_{-1} (B, H, N) and returns the final state h_{L-1} with its gradients.

Paths (one dispatch table, :mod:`ssmkit.ops.backend`):
    ``"reference"`` -- :func:`selective_scan_reference`, the plain loop (autograd through every step);
    ``"chunked"``   -- :func:`selective_scan_chunked`, T time steps at a time with its own backward;
    ``"native"``    -- :func:`ssmkit.ops.native.selective_scan_native`, a C kernel (CPU) that makes one pass over
                       time per block of channels with the states in a local array, forward and backward;
    ``"triton"``    -- :func:`ssmkit.ops.triton.selective.selective_scan_triton`, fused Triton kernels (GPU) with the
                       states in registers, softplus, skip and gate fused, forward and backward.
``"auto"`` takes ``"triton"`` on CUDA and ``"native"`` on the CPU where their smoke calls succeeded, in eager mode (not
under torch.func or torch.compile), and ``"chunked"`` otherwise.

The chunked path never holds more than one chunk of the (B, L, H, N) states: per chunk of T steps it forms
Ā and B̄u (T, B, H, N), runs the recurrence through them in place and contracts the states with C in one
batched matmul; it keeps only the state at each chunk boundary. Its backward runs the chunks in reverse,
recomputes each chunk's states from its boundary state and runs the adjoint recurrence
λ_t = C_t g_t + Ā_{t+1} ⊙ λ_{t+1} through the chunk (g = ∂ℓ/∂y), so peak memory is O(B·L·H + B·T·H·N) and
the boundary states cost B·H·N per T steps. (A matmul "segsum" form, as in Mamba-2's SSD, needs a decay
shared by the N states: here every channel and state has its own decay exp(Δ A_{h,n}), and the factorised
decay exp(S_t) exp(-S_s) overflows float32 once Σ ΔA < -88, within ~90 steps at ΔA ~ -1.) The chunked path forms
Ā = exp(ΔA) as exp2(Δ·A log2 e), which torch computes 4-5x faster than exp on CPU at the same float32 accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops._checks import check_chunk_size
from ssmkit.ops.backend import dispatch, forward_ad_active, tracing
from ssmkit.ops.function_call import apply_function, jvp_twin
from ssmkit.ops.native import selective_scan_native
from ssmkit.ops.native.gate import prefer_native
from ssmkit.ops.triton_gate import prefer_triton, selective_scan_triton
from ssmkit.ops.twice import graph_backward
from ssmkit.ops.symbolic import chunk_count, keep_first, scan, symbolic_length
from ssmkit.utils import check_floating


def _check_selective(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    state: torch.Tensor | None,
    step: bool = False,
    delta_proj: torch.Tensor | None = None,
) -> None:
    """Validate the arguments of the selective scan (``step``: one time step, the L axis absent; ``delta_proj``: W_Δ
    (H, R), with delta then (..., R))."""
    check_floating(u, "u_t" if step else "u")
    if step:
        if u.dim() != 2:
            raise ValueError(f"u_t must be (B, H) (2 dimensions); got shape {tuple(u.shape)}")
        Bsz, H = u.shape
        seq, letters = (Bsz,), "(B"
    else:
        if u.dim() != 3 or u.shape[1] == 0 or u.shape[0] == 0:
            raise ValueError(f"u must be (B, L, H) with B, L >= 1; got shape {tuple(u.shape)}")
        Bsz, L, H = u.shape
        seq, letters = (Bsz, L), "(B, L"
    tensors = {"delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias, "state": state,
               "delta_proj": delta_proj}
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if t.dtype != u.dtype:
            raise ValueError(f"{name} must have u's dtype {u.dtype}; got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"{name} must be on u's device {u.device}; got {t.device}")
    if delta_proj is not None:
        if delta_proj.dim() != 2 or delta_proj.shape[0] != H or delta_proj.shape[1] == 0:
            raise ValueError(f"delta_proj must be (H, R) with H={H} (from u); got shape {tuple(delta_proj.shape)}")
        R = delta_proj.shape[1]
        if tuple(delta.shape) != (*seq, R):
            raise ValueError(
                f"delta must be {letters}, R) = {(*seq, R)} (R from delta_proj) when delta_proj is given; "
                f"got {tuple(delta.shape)}"
            )
    for name, t in (("delta", None if delta_proj is not None else delta), ("z", z)):
        if t is not None and t.shape != u.shape:
            raise ValueError(f"{name} must be {letters}, H) = {tuple(u.shape)} like u; got {tuple(t.shape)}")
    if A.dim() != 2 or A.shape[0] != H or A.shape[1] == 0:
        raise ValueError(f"A must be (H, N) with H={H} (from u); got shape {tuple(A.shape)}")
    N = A.shape[1]
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (H,):
            raise ValueError(f"{name} must be (H,) = ({H},) (from u); got {tuple(t.shape)}")
    shared, grouped = (*seq, N), (*seq, None, N)
    if B.shape != C.shape:
        raise ValueError(f"B and C must have one shape; got B {tuple(B.shape)} and C {tuple(C.shape)}")
    ok = tuple(B.shape) == shared or (
        B.dim() == len(grouped) and tuple(B.shape[:-2]) == seq and B.shape[-1] == N and B.shape[-2] >= 1
        and H % B.shape[-2] == 0
    )
    if not ok:
        raise ValueError(
            f"B and C must be {letters}, N) = {shared} or grouped {letters}, G, N) with G dividing H={H}; "
            f"got {tuple(B.shape)}"
        )
    if state is None and step:
        raise ValueError(f"state must be the previous state (B, H, N) = ({Bsz}, {H}, {N}) for a step; got None "
                         "(zeros at rest)")
    if state is not None and tuple(state.shape) != (Bsz, H, N):
        raise ValueError(f"state must be (B, H, N) = ({Bsz}, {H}, {N}); got {tuple(state.shape)}")


def _dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """Δ = softplus(δ + b_Δ) (or δ + b_Δ without softplus)."""
    dt = delta if delta_bias is None else delta + delta_bias
    return F.softplus(dt) if delta_softplus else dt


def _finish(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """y + D ⊙ u, then ⊙ SiLU(z)."""
    if D is not None:
        y = torch.addcmul(y, u, D)
    return y if z is None else y * F.silu(z)


def selective_scan_reference(
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The selective scan by a plain loop over time (the oracle of :func:`selective_scan`).

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t, y_t = C_t · h_t + D ⊙ u_t, y_t ⊙ SiLU(z_t)
    (arXiv 2312.00752 Algorithm 2 / eq. 2a-2b, with the official code's B̄ = Δ B).

    Args:
        u: (B, L, H) input.
        delta: (B, L, H) step sizes δ before the bias and softplus.
        A: (H, N) state matrix (diagonal per channel; Mamba keeps A = -exp(A_log) < 0).
        B: (B, L, N) input matrices shared by all channels, or (B, L, G, N), one per group of H/G channels.
        C: (B, L, N) or (B, L, G, N) output matrices, B's shape.
        D: (H,) skip, or None.
        z: (B, L, H) gate, or None.
        delta_bias: (H,) bias b_Δ added to δ, or None.
        delta_softplus: Δ = softplus(δ + b_Δ) when True, δ + b_Δ otherwise.
        state: (B, H, N) state h_{-1} before the first step, or None for zeros.
        return_state: also return the final state.

    Returns:
        y (B, L, H) and the final state h_{L-1} (B, H, N) (None when not asked for).
    """
    _check_selective(u, delta, A, B, C, D, z, delta_bias, state)
    Bsz, L, H = u.shape
    N = A.shape[1]
    # Channels as (G, P): channel h = g·P + p uses group g's B_t, C_t by broadcasting (G = 1 without groups)
    G = B.shape[2] if B.dim() == 4 else 1
    P = H // G
    dt = _dt(delta, delta_bias, delta_softplus).reshape(Bsz, L, G, P, 1)  # (B, L, G, P, 1)
    x = dt * u.reshape(Bsz, L, G, P, 1)  # (B, L, G, P, 1): Δ u
    B, C = B.reshape(Bsz, L, G, 1, N), C.reshape(Bsz, L, G, 1, N)  # (B, L, G, 1, N)
    A = A.reshape(G, P, N)
    h = torch.zeros(Bsz, G, P, N, dtype=u.dtype, device=u.device) if state is None else state.reshape(Bsz, G, P, N)
    ys = []
    for dt_t, x_t, B_t, C_t in zip(dt.unbind(1), x.unbind(1), B.unbind(1), C.unbind(1)):
        h = torch.exp(dt_t * A) * h + x_t * B_t  # (B, G, P, N)
        ys.append((h * C_t).sum(-1))  # (B, G, P)
    y = _finish(torch.stack(ys, dim=1).reshape(Bsz, L, H), u, D, z)  # (B, L, H)
    return y, (h.reshape(Bsz, H, N) if return_state else None)


def _scan_chunk(a: torch.Tensor, b: torch.Tensor, h: torch.Tensor, inplace: bool) -> torch.Tensor:
    """h_t = a_t ⊙ h_{t-1} + b_t over the leading (time) axis of a chunk, from h.

    In eager mode the states are written over b (a fresh buffer of the caller); under torch.func or
    torch.compile (:func:`ssmkit.ops.backend.tracing`), or when differentiated, they are stacked out of place.

    Args:
        a: (T, ...) gates.
        b: (T, ...) inputs.
        h: (...) the state before the chunk's first step.
        inplace: write into b.

    Returns:
        (T, ...) every state.
    """
    steps = zip(a.unbind(0), b.unbind(0))  # one unbind each, not two indexes a step
    if inplace:
        for a_t, b_t in steps:
            h = torch.addcmul(b_t, a_t, h, out=b_t)
        return b
    outs = []
    for a_t, b_t in steps:
        h = torch.addcmul(b_t, a_t, h)
        outs.append(h)
    return torch.stack(outs)


def _adjoint_chunk(A_bar: torch.Tensor, g: torch.Tensor, carry: torch.Tensor, inplace: bool) -> torch.Tensor:
    """λ_t = g_t + Ā_{t+1} ⊙ λ_{t+1} backwards through a chunk, the last step taking ``carry`` = Ā_{t1} ⊙ λ_{t1}.

    Args:
        A_bar: (T, ...) the chunk's gates.
        g: (T, ...) the direct adjoint C_t g_t (overwritten with λ in place when ``inplace``).
        carry: (...) the adjoint entering from after the chunk.
        inplace: write into g.

    Returns:
        (T, ...) λ.
    """
    T = g.shape[0]
    g_t, a_t = g.unbind(0), A_bar.unbind(0)  # one unbind each, not two or three indexes a step
    if inplace:
        lam = g_t[T - 1].add_(carry)
        for t in range(T - 2, -1, -1):
            lam = torch.addcmul(g_t[t], a_t[t + 1], lam, out=g_t[t])
        return g
    outs = [None] * T
    lam = outs[T - 1] = g_t[T - 1] + carry
    for t in range(T - 2, -1, -1):
        lam = outs[t] = torch.addcmul(g_t[t], a_t[t + 1], lam)
    return torch.stack(outs)


LOG2_E = 1.4426950408889634  # log2(e): exp(x) = exp2(x log2 e), and exp2 is ~4x cheaper than exp on CPU


def _mul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """a ⊙ b, written into ``out`` when given (a reused chunk buffer: no fresh pages per chunk)."""
    return a * b if out is None else torch.mul(a, b, out=out)


class _ChunkBuffers:
    """The (T, B, G, N, P) buffers of one call, reused by every chunk in eager mode; none (out-of-place ops) under
    torch.func or torch.compile, or when the backward itself is differentiated."""

    def __init__(self, names: tuple[str, ...], shape: tuple[int, ...], like: torch.Tensor, enabled: bool) -> None:
        self.buffers = {name: like.new_empty(shape) for name in names} if enabled else {}

    def __call__(self, name: str, T: int) -> torch.Tensor | None:
        """The buffer ``name`` for a chunk of T steps (the last chunk may be shorter), or None."""
        buffer = self.buffers.get(name)
        return None if buffer is None else buffer[:T]


def _chunk_inputs(dt, u, A2, B, t0, t1, out_A_bar=None, out_Bu=None):
    """Ā = exp(Δ A) = exp2(Δ A log2 e) and B̄u = (Δ u) B of the steps [t0, t1), time-major with the state axis before
    the channels: (T, B, G, N, P) each, and Δu (T, B, G, P). ``A2`` is A log2 e as (G, N, P)."""
    dt_c, u_c = dt[t0:t1], u[t0:t1]  # (T, B, G, P)
    A_bar = _mul(dt_c.unsqueeze(-2), A2, out_A_bar)  # (T, B, G, N, P)
    A_bar = torch.exp2(A_bar) if out_A_bar is None else torch.exp2(A_bar, out=A_bar)
    dtu = dt_c * u_c  # (T, B, G, P)
    Bu = _mul(B[t0:t1].unsqueeze(-1), dtu.unsqueeze(-2), out_Bu)  # (T, B, G, N, P)
    return A_bar, Bu, dtu


def _core_loop(dt, u, A, B, C, h0):
    """The core of :class:`_SelectiveScan` one step at a time in plain tensor ops (its double backward): dt, u
    (L, B, G, P), A (G, N, P), B, C (L, B, G, N), h0 (B, G, N, P) or None -> y (L, B, G, P), h_{L-1} (B, G, N, P)."""
    h = h0 if h0 is not None else u.new_zeros(*B.shape[1:], u.shape[-1])  # (B, G, N, P)
    ys = []
    for t in range(u.shape[0]):
        h = torch.exp(dt[t].unsqueeze(-2) * A) * h + (dt[t] * u[t]).unsqueeze(-2) * B[t].unsqueeze(-1)
        ys.append((C[t].unsqueeze(-1) * h).sum(-2))  # (B, G, P)
    return torch.stack(ys), h


class _SelectiveScan(torch.autograd.Function):
    """The core h_t = Ā_t ⊙ h_{t-1} + B̄_t u_t, y_t = C_t · h_t in chunks, time-major, with a recomputing backward.

    Inputs (time-major, channels split into G groups of P, the state axis N before P so that the contractions
    over N are matrix products and those over P contiguous sums): Δ, u (L, B, G, P), A (G, N, P),
    B, C (L, B, G, N), h0 (B, G, N, P) or None, T. Outputs y (L, B, G, P), h_{L-1} (B, G, N, P) and the states at
    the chunk starts (nc, B, G, N, P), which are saved for the backward (empty when ``keep_starts`` is False: no
    gradient will be asked for).

    Backward, per chunk in reverse with the adjoint carried in: recompute Ā, B̄u and the states h; then
    λ_t = C_t g_t + Ā_{t+1} ⊙ λ_{t+1} (λ beyond the chunk enters as the carry Ā_{t1} ⊙ λ_{t1}); then
    ∂C_t = Σ_p g_{t,p} h_{t,p}, ∂(Δu)_t = B_t · λ_t, ∂B_t = Σ_p λ_{t,p} (Δu)_{t,p}, and with
    Γ_t = λ_t ⊙ Ā_t ⊙ h_{t-1} = ∂ℓ/∂(Δ_t A): ∂Δ_t = Σ_n Γ_t A + ∂(Δu)_t u_t, ∂A = Σ_{b,t} Γ_t Δ_t,
    ∂u_t = ∂(Δu)_t Δ_t; ∂h0 = Ā_0 ⊙ λ_0.

    Differentiated itself (``create_graph``), the backward is autograd's through :func:`_core_loop`: the states it
    recomputes from the saved chunk starts would carry no history (the starts are saved outside the graph), so the
    gradients' dependence on everything before each chunk (and on h0) would be lost.

    Forward-mode AD: :class:`_SelectiveScanJvp`. Under forward over reverse (``torch.func.hessian``) the backward
    recomputes the chunk starts from h0 by the forward (so that they carry tangents) instead of reading the saved ones,
    which carry none, and its tensor ops differentiate forward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(dt, u, A, B, C, h0, T, keep_starts):  # type: ignore[override]
        L = u.shape[0]
        inplace = not tracing()
        A2 = A * LOG2_E  # (G, N, P)
        h = h0 if h0 is not None else u.new_zeros(*B.shape[1:], u.shape[-1])  # (B, G, N, P)
        buf = _ChunkBuffers(("A_bar", "h"), (min(T, L), *h.shape), h, inplace)
        ys, starts = [], []
        for t0 in range(0, L, T):
            t1 = min(t0 + T, L)
            if keep_starts:
                starts.append(h)
            A_bar, Bu, _ = _chunk_inputs(dt, u, A2, B, t0, t1, buf("A_bar", t1 - t0), buf("h", t1 - t0))  # (T, B, G, N, P) x2
            hs = _scan_chunk(A_bar, Bu, h, inplace=inplace)  # (T, B, G, N, P)
            h = hs[-1].clone() if inplace else hs[-1]  # (B, G, N, P), not a view that keeps the chunk alive
            ys.append(torch.matmul(C[t0:t1].unsqueeze(-2), hs).squeeze(-2))  # (T, B, G, P)
        return torch.cat(ys), h, (torch.stack(starts) if keep_starts else h.new_empty(0))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        dt, u, A, B, C, h0, T, _ = inputs
        ctx.save_for_backward(dt, u, A, B, C, output[2], h0)
        ctx.T = T
        ctx.has_h0 = h0 is not None
        ctx.mark_non_differentiable(output[2])

    @staticmethod
    def backward(ctx, g_y, g_h, _g_starts):  # type: ignore[override]
        dt, u, A, B, C, starts, h0 = ctx.saved_tensors
        if torch.is_grad_enabled() and not tracing():  # create_graph: a double backward (ops/twice.py)
            return (*graph_backward(_core_loop, (dt, u, A, B, C, h0), ctx.needs_input_grad[:6], (g_y, g_h)), None, None)
        if forward_ad_active():  # forward-over-reverse: chunk starts that carry tangents (see the class docstring)
            starts = _SelectiveScan.forward(dt, u, A, B, C, h0, ctx.T, True)[2]  # (nc, B, G, N, P)
        g_y, g_h = g_y.contiguous(), g_h.contiguous()  # (L, B, G, P), (B, G, N, P); as traced under torch.compile
        T, L = ctx.T, u.shape[0]
        inplace = not (tracing() or torch.is_grad_enabled())
        A2 = A * LOG2_E  # (G, N, P)
        lam_next = g_h  # the adjoint entering the chunk from its end: Ā_{t1} ⊙ λ_{t1} (or ∂ℓ/∂h_{L-1})
        g_dt, g_u, g_B, g_C = [], [], [], []
        g_A = torch.zeros_like(A)
        buf = _ChunkBuffers(("A_bar", "h", "lam", "tmp"), (min(T, L), *g_h.shape), g_h, inplace)
        for c in range(starts.shape[0] - 1, -1, -1):
            t0, t1 = c * T, min(c * T + T, L)
            n = t1 - t0
            h_start = starts[c]  # (B, G, N, P)
            # 1. recompute the chunk's states
            A_bar, Bu, dtu = _chunk_inputs(dt, u, A2, B, t0, t1, buf("A_bar", n), buf("h", n))  # (T, B, G, N, P) x2, (T, B, G, P)
            hs = _scan_chunk(A_bar, Bu, h_start, inplace=inplace)  # (T, B, G, N, P)
            # 2. adjoint: λ_t = C_t g_t + Ā_{t+1} ⊙ λ_{t+1}, the last step taking the carry
            g_c, B_c = g_y[t0:t1], B[t0:t1]  # (T, B, G, P), (T, B, G, N)
            lam_in = _mul(C[t0:t1].unsqueeze(-1), g_c.unsqueeze(-2), buf("lam", n))  # (T, B, G, N, P)
            lam = _adjoint_chunk(A_bar, lam_in, lam_next, inplace)  # (T, B, G, N, P)
            # 3. gradients of C, B and Δu
            g_C.append(_mul(hs, g_c.unsqueeze(-2), buf("tmp", n)).sum(-1))  # (T, B, G, N)
            g_dtu = torch.matmul(B_c.unsqueeze(-2), lam).squeeze(-2)  # (T, B, G, P)
            g_B.append(_mul(lam, dtu.unsqueeze(-2), buf("tmp", n)).sum(-1))  # (T, B, G, N)
            # 4. Γ = λ ⊙ Ā ⊙ h_{t-1} = ∂ℓ/∂(ΔA); then Δ and A
            lam_next = A_bar[0] * lam[0]  # (B, G, N, P): the carry into the previous chunk
            if inplace:  # over Ā
                Gamma = A_bar.mul_(lam)  # (T, B, G, N, P)
                Gamma[1:].mul_(hs[:-1])
                Gamma[0].mul_(h_start)
            else:
                Gamma = A_bar * lam * torch.cat([h_start.unsqueeze(0), hs[:-1]])  # (T, B, G, N, P)
            dt_c = dt[t0:t1]  # (T, B, G, P)
            g_A = g_A + _mul(Gamma, dt_c.unsqueeze(-2), buf("tmp", n)).sum((0, 1))  # (G, N, P)
            g_dt.append(_mul(Gamma, A, buf("tmp", n)).sum(-2) + g_dtu * u[t0:t1])  # (T, B, G, P)
            g_u.append(g_dtu * dt_c)  # (T, B, G, P)
        g_h0 = lam_next if ctx.has_h0 else None  # Ā_0 ⊙ λ_0 of the first chunk
        cat = lambda parts: torch.cat(parts[::-1])  # noqa: E731  (chunks were visited last first)
        return cat(g_dt), cat(g_u), g_A, cat(g_B), cat(g_C), g_h0, None, None


@jvp_twin(_SelectiveScan)
class _SelectiveScanJvp(_SelectiveScan):
    """:class:`_SelectiveScan` with its forward derivative, called under forward-mode AD (``ops.function_call``).

    The tangent of the state obeys the same recurrence,
    ḣ_t = Ā_t ⊙ ḣ_{t-1} + Ā_t ⊙ (Δ̇_t A + Δ_t Ȧ) ⊙ h_{t-1} + Ḃ_t (Δu)_t + B_t (Δ̇u + Δu̇)_t, and ẏ_t = Ċ_t · h_t + C_t · ḣ_t,
    run chunk by chunk beside the recomputed states (:func:`_tangent_scan`: one chunk of (T, B, G, N, P) at a time,
    as the forward; about twice the forward's work). The chunk starts get no tangent (they are not differentiable).
    """

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _SelectiveScan.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:6])  # Δ, u, A, B, C, h0

    @staticmethod
    def jvp(ctx, dt_dot, u_dot, A_dot, B_dot, C_dot, h0_dot, _T, _keep_starts):  # type: ignore[override]
        dt, u, A, B, C, h0 = ctx.saved_tensors
        y_dot, h_dot = _tangent_scan((dt, u, A, B, C, h0), (dt_dot, u_dot, A_dot, B_dot, C_dot, h0_dot), ctx.T)
        return y_dot, h_dot, None


def _tangent_scan(primals, tangents, T):
    """The tangents (ẏ, ḣ_{L-1}) of :class:`_SelectiveScan`'s core for the input tangents (None: zero), chunk by chunk.

    ḣ_t = Ā_t ⊙ ḣ_{t-1} + Ā_t ⊙ (Δ̇_t A + Δ_t Ȧ) ⊙ h_{t-1} + Ḃ_t (Δu)_t + B_t (Δ̇_t u_t + Δ_t u̇_t),
    ẏ_t = C_t · ḣ_t + Ċ_t · h_t  (the derivative of arXiv 2312.00752 Algorithm 2's recurrence, h_{-1} = h0, ḣ_{-1} = ḣ0).

    Args:
        primals: dt, u (L, B, G, P), A (G, N, P), B, C (L, B, G, N), h0 (B, G, N, P) or None.
        tangents: their tangents, each of its primal's shape, or None.
        T: chunk length.

    Returns:
        ẏ (L, B, G, P) and ḣ_{L-1} (B, G, N, P).
    """
    dt, u, A, B, C, h0 = primals
    dt_dot, u_dot, A_dot, B_dot, C_dot, h0_dot = tangents
    L = u.shape[0]
    A2 = A * LOG2_E  # (G, N, P)
    h = h0 if h0 is not None else u.new_zeros(*B.shape[1:], u.shape[-1])  # (B, G, N, P)
    h_dot = h0_dot if h0_dot is not None else torch.zeros_like(h)  # (B, G, N, P)
    dtu_dot = None  # (L, B, G, P): the tangent of Δu
    if dt_dot is not None:
        dtu_dot = dt_dot * u
    if u_dot is not None:
        dtu_dot = dt * u_dot if dtu_dot is None else dtu_dot + dt * u_dot
    y_dots = []
    for t0 in range(0, L, T):
        t1 = min(t0 + T, L)
        A_bar, Bu, dtu = _chunk_inputs(dt, u, A2, B, t0, t1)  # (T, B, G, N, P) x2, (T, B, G, P)
        hs = _scan_chunk(A_bar, Bu, h, inplace=False)  # (T, B, G, N, P)
        forcing = torch.zeros_like(hs)  # (T, B, G, N, P)
        if dt_dot is not None or A_dot is not None:
            rate = 0.0 if dt_dot is None else dt_dot[t0:t1].unsqueeze(-2) * A  # (T, B, G, N, P): (Δ̇ A + Δ Ȧ)
            if A_dot is not None:
                rate = rate + dt[t0:t1].unsqueeze(-2) * A_dot
            forcing = forcing + A_bar * rate * torch.cat([h.unsqueeze(0), hs[:-1]])  # (T, B, G, N, P)
        if B_dot is not None:
            forcing = forcing + B_dot[t0:t1].unsqueeze(-1) * dtu.unsqueeze(-2)  # (T, B, G, N, P)
        if dtu_dot is not None:
            forcing = forcing + B[t0:t1].unsqueeze(-1) * dtu_dot[t0:t1].unsqueeze(-2)  # (T, B, G, N, P)
        h_dots = _scan_chunk(A_bar, forcing, h_dot, inplace=False)  # (T, B, G, N, P)
        y_dot = torch.matmul(C[t0:t1].unsqueeze(-2), h_dots).squeeze(-2)  # (T, B, G, P)
        if C_dot is not None:
            y_dot = y_dot + torch.matmul(C_dot[t0:t1].unsqueeze(-2), hs).squeeze(-2)  # (T, B, G, P)
        y_dots.append(y_dot)
        h, h_dot = hs[-1], h_dots[-1]  # (B, G, N, P)
    return torch.cat(y_dots), h_dot  # (L, B, G, P), (B, G, N, P)


def _scan_symbolic(dt, u, A, B, C, h0, T):
    """The core of :class:`_SelectiveScan` for a symbolic L (``torch.export`` with a dynamic length): the steps
    padded with Δ = 0 (Ā = 1, no input: the state stays) to whole chunks of T (at most 16), one more chunk than needed
    so that torch can bound the count, and the chunks run by one ``scan`` op whose body is :func:`_core_loop` over T
    steps.
    dt, u (L, B, G, P), A (G, N, P), B, C (L, B, G, N), h0 (B, G, N, P) or None -> y (L, B, G, P), h (B, G, N, P)."""
    L = u.shape[0]
    # the body is traced step by step, so its length sets the export's cost: 16 steps exported a Mamba block's ONNX
    # sequence graph (d_model 128) in 14 s of CPU against 28 s at 32, and onnxruntime ran it as fast (L = 4 096, one
    # thread: 119 against 126 ms); 8 exported no faster and ran 1.5x slower (docs/benchmarks.md, stop 74)
    T = min(T, 16)
    n_chunks = chunk_count(L, T)  # one more than needed, all padding
    pad = n_chunks * T - L
    dt, u, B, C = (F.pad(x, (0, 0, 0, 0, 0, 0, 0, pad)) for x in (dt, u, B, C))  # (nc·T, ...): zeros after the end
    chunks = [x.reshape(n_chunks, T, *x.shape[1:]) for x in (dt, u, B, C)]  # (nc, T, ...)
    A_c = A.expand(n_chunks, *A.shape)  # (nc, G, N, P): an input of the op, not a closure
    h = h0 if h0 is not None else u.new_zeros(*B.shape[1:], u.shape[-1])  # (B, G, N, P)

    def chunk(h_prev, inputs):
        dt_c, u_c, B_c, C_c, A_1 = inputs
        y_c, h_next = _core_loop(dt_c, u_c, A_1, B_c, C_c, h_prev)  # (T, B, G, P), (B, G, N, P)
        return h_next, y_c

    h, y = scan(chunk, h, (*chunks, A_c), dim=0)  # (B, G, N, P), (nc, T, B, G, P)
    return keep_first(y.reshape(n_chunks * T, *y.shape[2:]), 0, L), h  # (L, B, G, P), (B, G, N, P)


def default_chunk_size(batch: int, H: int, N: int) -> int:
    """The chunk length T of :func:`selective_scan_chunked`: the largest power of two in [8, 128] with a chunk of Ā
    (T, B, H, N) of at most 2^19 values (2 MiB in float32, so the chunk's few buffers stay in a CPU's caches).

    Args:
        batch: B.
        H: channels.
        N: state size.

    Returns:
        T.
    """
    if isinstance(batch, torch.SymInt):  # torch.export with a dynamic batch: T must not guard on B (sized for B = 1)
        batch = 1
    T = 8
    while T < 128 and 2 * T * batch * H * N <= 2**19:
        T *= 2
    return T


def selective_scan_chunked(
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
    """The selective scan T steps at a time, with a backward that recomputes each chunk; equals the reference.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t, y_t = C_t · h_t + D ⊙ u_t, y_t ⊙ SiLU(z_t) (arXiv 2312.00752
    Algorithm 2). Steps: (1) Δ, then u, Δ, B, C time-major; (2) per chunk of T steps, Ā = exp(Δ A) and B̄u
    (T, B, H, N), the recurrence through them in place, y = C · h by one batched matmul, the chunk's end state
    carried on; (3) the skip and the gate on (B, L, H). Memory: the chunk buffers and the states at the chunk
    boundaries (B·H·N per T steps), never the (B, L, H, N) states. Backward: see ``_SelectiveScan``.

    Args:
        u: (B, L, H) input.
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
        chunk_size: T, or None for :func:`default_chunk_size`.

    Returns:
        y (B, L, H) and the final state h_{L-1} (B, H, N) (None when not asked for).
    """
    _check_selective(u, delta, A, B, C, D, z, delta_bias, state)
    Bsz, L, H = u.shape
    N = A.shape[1]
    if chunk_size is None:
        chunk_size = default_chunk_size(Bsz, H, N)
    check_chunk_size(chunk_size)
    G = B.shape[2] if B.dim() == 4 else 1
    P = H // G
    # 1. time-major, channels as (G, P), states as (N, P); Δ formed time-major (one memory layout per elementwise op:
    # torch.compile's traced strides then match the eager ones)
    major = lambda x: x.transpose(0, 1).reshape(L, Bsz, G, P).contiguous()  # noqa: E731  (B, L, H) -> (L, B, G, P)
    dt = _dt(major(delta), None if delta_bias is None else delta_bias.reshape(G, P), delta_softplus)  # (L, B, G, P)
    BC = lambda X: X.reshape(Bsz, L, G, N).transpose(0, 1).contiguous()  # noqa: E731  (B, L, [G,] N) -> (L, B, G, N)
    h0 = None if state is None else state.reshape(Bsz, G, P, N).transpose(-1, -2).contiguous()  # (B, G, N, P)
    A_t = A.reshape(G, P, N).transpose(-1, -2).contiguous()  # (G, N, P)
    # 2. the chunked scan
    if symbolic_length(L):  # exporting with a dynamic L: one scan op over the chunks (ops/symbolic.py)
        y, h = _scan_symbolic(dt, major(u), A_t, BC(B), BC(C), h0, chunk_size)
    else:
        keep_starts = torch.is_grad_enabled()  # the chunk-start states are kept only for a backward
        y, h, _ = apply_function(_SelectiveScan, dt, major(u), A_t, BC(B), BC(C), h0, chunk_size, keep_starts)
    y = y.reshape(L, Bsz, H).transpose(0, 1).contiguous()  # (B, L, H)
    h = h.transpose(-1, -2).reshape(Bsz, H, N) if return_state else None  # (B, H, N)
    # 3. skip and gate
    return _finish(y, u, D, z), h


_SELECTIVE_SCAN = {
    "reference": selective_scan_reference, "chunked": selective_scan_chunked, "native": selective_scan_native,
    "triton": selective_scan_triton,
}


def _auto(u: torch.Tensor) -> str:
    """``"auto"``'s path for input u: the Triton kernels on CUDA where their smoke call passed, the C kernel on the CPU
    where it runs (under torch.compile too: both are custom ops there); else the chunked scan."""
    if prefer_triton(u, "selective_scan"):
        return "triton"
    if prefer_native("selective_scan", u):
        return "native"
    return "chunked"


def selective_scan(
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
    backend: str | None = None,
    delta_proj: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The selective scan of Mamba; the path is chosen by the backend.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t, y_t = C_t · h_t + D ⊙ u_t, y_t ⊙ SiLU(z_t), Δ = softplus(δ + b_Δ)
    (arXiv 2312.00752 Algorithm 2). Backends: ``"reference"`` -> :func:`selective_scan_reference` (loop);
    ``"chunked"`` -> :func:`selective_scan_chunked`; ``"native"`` -> :func:`ssmkit.ops.native.selective_scan_native`
    (CPU); ``"triton"`` -> the fused Triton kernels (:mod:`ssmkit.ops.triton_gate`: CUDA after a successful smoke
    call, or the CPU interpreter under ``TRITON_INTERPRET=1``); ``"auto"`` -> ``"triton"`` on CUDA where it runs,
    ``"native"`` on the CPU where it runs, when nothing traces, else ``"chunked"``; ``"fft"`` raises. The scan runs in
    the dtype of its inputs; call it outside autocast (layers use ``float32_core``). The native and triton paths'
    backwards are not themselves differentiable: force ``"chunked"`` for a double backward. Under forward-mode AD
    (``torch.autograd.forward_ad``, ``torch.func.jvp``, ``jacfwd``, ``hessian``) ``"auto"`` runs ``"chunked"``, whose
    tangents come from the same chunked scan (``_SelectiveScanJvp``); a forced ``"native"`` or ``"triton"`` raises.

    Args:
        u: (B, L, H) input.
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
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.
        delta_proj: W_Δ (H, R), or None. When given, ``delta`` is the low-rank δlow (B, L, R) and the step sizes are
            δ = δlow W_Δᵀ (Mamba's ``dt_proj``, its bias being ``delta_bias``): the native kernel forms δ itself (no
            (B, L, H) tensor, no thin GEMM), the other paths by ``F.linear`` first.

    Returns:
        y (B, L, H) and the final state h_{L-1} (B, H, N) (None when not asked for).
    """
    impl = dispatch("selective_scan", _SELECTIVE_SCAN, backend, auto=lambda: _auto(u))
    if delta_proj is not None:
        if impl is selective_scan_native:  # it checks its arguments, delta_proj among them
            return impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state, return_state, delta_proj=delta_proj)
        _check_selective(u, delta, A, B, C, D, z, delta_bias, state, delta_proj=delta_proj)  # before F.linear's own error
        delta = F.linear(delta, delta_proj)
    return impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state, return_state)


def selective_step(
    u_t: torch.Tensor,
    delta_t: torch.Tensor,
    A: torch.Tensor,
    B_t: torch.Tensor,
    C_t: torch.Tensor,
    D: torch.Tensor | None,
    z_t: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the selective scan: h = exp(Δ A) ⊙ h + (Δ u) B, y = C · h + D ⊙ u, y ⊙ SiLU(z).

    (arXiv 2312.00752 Algorithm 2, one time step.)

    Args:
        u_t: (B, H) input.
        delta_t: (B, H) step sizes δ before the bias and softplus.
        A: (H, N) state matrix.
        B_t: (B, N) input matrix shared by all channels, or (B, G, N), one per group of H/G channels.
        C_t: (B, N) or (B, G, N) output matrix, B_t's shape.
        D: (H,) skip, or None.
        z_t: (B, H) gate, or None.
        delta_bias: (H,) bias b_Δ, or None.
        delta_softplus: Δ = softplus(δ + b_Δ) when True.
        state: (B, H, N) the previous state.

    Returns:
        y_t (B, H) and the next state (B, H, N).
    """
    _check_selective(u_t, delta_t, A, B_t, C_t, D, z_t, delta_bias, state, step=True)
    Bsz, H = u_t.shape
    N = A.shape[1]
    G = B_t.shape[1] if B_t.dim() == 3 else 1
    dt = _dt(delta_t, delta_bias, delta_softplus).reshape(Bsz, G, H // G)  # (B, G, P)
    A_bar = torch.exp(dt.unsqueeze(-1) * A.reshape(G, H // G, N))  # (B, G, P, N)
    Bu = (dt * u_t.reshape(Bsz, G, H // G)).unsqueeze(-1) * B_t.reshape(Bsz, G, 1, N)  # (B, G, P, N)
    h = torch.addcmul(Bu, A_bar, state.reshape(Bsz, G, H // G, N))  # (B, G, P, N)
    y = torch.matmul(h, C_t.reshape(Bsz, G, N, 1)).reshape(Bsz, H)  # (B, H)
    return _finish(y, u_t, D, z_t), h.reshape(Bsz, H, N)
