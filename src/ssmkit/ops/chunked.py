"""The chunked matmul ("SSD") fast path of the diagonal LTI scan, and the GEMM helpers it shares.

Diagonal LTI SSM, recurrent view (Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of
Diagonal State Space Models", arXiv 2206.11893, §2):

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,    y_t = Re(Σ_n C_n x_{t,n}) + D u_t

computed by the chunked "SSD" algorithm (Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient
Algorithms Through Structured State Space Duality", arXiv 2405.21060, §6), specialised to a time-invariant
diagonal Ā so that every chunk shares the same matrices. For chunks of T steps:

    (1) intra-chunk output   y_t += Σ_{s≤t} K_{t-s} u_s,  K_k = Re Σ_n C_n B̄_n Ā_n^k   (T×T Toeplitz GEMM)
    (2) carried-state output y_t += Re Σ_n C_n Ā_n^{t+1} x_prev                        (GEMM)
    (3) chunk-final state    x_new = Ā^T x_prev + Σ_k Ā^{T-1-k} B̄ u_k                 (GEMM + carry)

Steps (1) and (3, input part) run for all chunks at once as batched matrix products, then a loop of L/T
steps carries the (B, H, N) state across chunks, then step (2) runs for all chunks at once. No tensor of
size B·L·H·N is ever allocated; complex matrices enter the GEMMs as real/imaginary pairs (ATen's
complex kernels are scalar code on CPU, real BLAS is not).

One copy of the algorithm serves autograd, no-grad inference, torch.func and torch.compile. The former in-place
no-grad branch (carrying the states inside the step (3) GEMM output, fed one chunk behind) made the no-grad
forward 8-13 % faster (median 10 %, 12 interleaved runs; B=8, H=128, 32 complex modes, L=4096, float32, 2-core
CPU): not a clear enough gain for a second copy of the algorithm, so it was removed. A short in-place carry
inside this function recovered only 4 of those points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops._checks import check_chunk_size, check_params, check_skip
from ssmkit.ops.backend import tracing
from ssmkit.ops.function_call import apply_function, jvp_twin
from ssmkit.ops.opaque import exporting
from ssmkit.ops.powers import int_power, power_table
from ssmkit.ops.symbolic import carry, ceil_sqrt, chunk_count, keep_first, symbolic_length

_WIDE = {torch.complex64: torch.complex128, torch.float32: torch.float64}

# Under torch.compile, the chunked scan's graph serves every length in an octave of its group count (True), or is
# specialised to each length (False, the default: the eager path traced). True costs a compiled EMA's training step
# ~1/3 more time at a fixed length (B 8, L 4 096, H 128, N 64: 438 against 326 ms), and saves a compilation (30-70 s
# for EMA) at every new length; docs/design.md, "Compiled S4 and length-generic compiles". Read while tracing.
LENGTH_GENERIC_COMPILE = False


def wide_powers(a: torch.Tensor, n: int) -> torch.Tensor:
    """a^k for k = 0..n-1 along a new last axis, built in double precision and rounded once.

    Float32 products would drift by ~k·eps (each squaring doubles the relative error), and the chunk carry
    raises Ā^T to the power L/T again, so float32 tables gave a state error ~L·eps (1.8e-5 at L = 4096
    against 1.4e-6 for the loop).

    Args:
        a: (...) complex or real.
        n: number of powers.

    Returns:
        (..., n) with [..., k] = a^k (a^0 = 1, also for a = 0), a's dtype.
    """
    return wide_power_table(a, n).to(a.dtype)  # (..., n)


def wide_power_table(a: torch.Tensor, n: int) -> torch.Tensor:
    """a^k for k = 0..n-1 along a new last axis in double precision, not rounded (:func:`wide_powers` rounds it):
    for a caller that needs both the rounded table and a wide entry of it (the carry's Ā^T, the final state's decay).

    Args:
        a: (...) complex or real.
        n: number of powers.

    Returns:
        (..., n) with [..., k] = a^k, in float64 (complex128) for a float32 (complex64) a off MPS (which has no
        float64), else a's dtype.
    """
    return power_table(a.to(_wide_dtype(a)), n)  # (..., n)


def wide_int_power(a: torch.Tensor, n: int) -> torch.Tensor:
    """a^n (n >= 0 an int) by binary exponentiation in double precision, rounded once.

    Args:
        a: (...) complex or real.
        n: the exponent.

    Returns:
        (...) a^n, a's dtype.
    """
    return int_power(a.to(_wide_dtype(a)), n).to(a.dtype)


def _transpose_copy(x: torch.Tensor) -> torch.Tensor:
    """Transpose of a 2-D tensor (R, S) into a new contiguous (S, R), as ONE copy op.

    ATen copies a transposed 2-D matrix into a contiguous one by its own cache-blocked kernel. The former Python
    loop over blocks of 1024 rows was faster on a quiet 2-core machine (2.6 ms against 5-10 ms for 32768 x 128
    float32) but cost 3 aten ops per block (~130 ops at B=8, L=4096), and every op is a point where a loaded
    machine makes the process wait (issue 16: 2.6-6.8x slow-down under one competing process). One op wins there.

    Always a new tensor: where the transpose is already contiguous (R or S = 1) ``contiguous()`` returned a view of
    x, which ``_Transpose`` then returned as-is, and autograd forbids writing into such a view: the bidirectional
    layers' chunked scans (``y[:, :-1] += ...``) raised at d_model 1 or B·L = 1 (boundary probe of 2026-12-05).
    """
    return x.t().clone(memory_format=torch.contiguous_format)  # (S, R)


class _Transpose(torch.autograd.Function):
    """(R, S) -> contiguous (S, R), with a backward that is again a contiguous transpose.

    Plain ``x.t().contiguous()`` hands its backward a strided view, and batched GEMMs on such views fall
    off the BLAS path on CPU (measured > 10× slower); this keeps every gradient contiguous.

    Forward-mode AD: :class:`_TransposeJvp` (the map is linear: ẏ = ẋᵀ).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _transpose_copy(x)  # (S, R)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        pass

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return apply_function(_Transpose, g)  # (R, S); through apply, so second derivatives work too


@jvp_twin(_Transpose)
class _TransposeJvp(_Transpose):
    """:class:`_Transpose` with its forward derivative, called under forward-mode AD (``ops.function_call``): the map is
    linear, so the tangent is the same contiguous transpose, ẏ = ẋᵀ."""

    @staticmethod
    def jvp(ctx, x_dot: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _transpose_copy(x_dot)  # (S, R)


def transpose(x: torch.Tensor) -> torch.Tensor:
    """A 2-D tensor transposed into a new contiguous tensor whose gradient is contiguous too (see ``_Transpose``).

    Args:
        x: a 2-D tensor.

    Returns:
        its transpose, contiguous.
    """
    return apply_function(_Transpose, x)


def pack(z: torch.Tensor) -> torch.Tensor:
    """(..., N) complex -> (..., 2N) real with interleaved real and imaginary parts; real tensors pass through.

    Args:
        z: (..., N) complex or real.

    Returns:
        (..., 2N) real (a view), or z itself when real.
    """
    return torch.view_as_real(z).flatten(-2) if z.is_complex() else z  # (..., 2N)


def unpack(z: torch.Tensor, is_complex: bool) -> torch.Tensor:
    """Inverse of :func:`pack`: (..., 2N) real -> (..., N) complex (contiguous last axis required).

    Args:
        z: (..., 2N) real.
        is_complex: whether z was packed from a complex tensor (else it is returned as is).

    Returns:
        (..., N) complex, or z itself.
    """
    return torch.view_as_complex(z.unflatten(-1, (-1, 2))) if is_complex else z  # (..., N)


def _chunk_operators(
    A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, T: int, D: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-channel matrices shared by every chunk of T steps (real, packed for GEMMs).

    D: (H,) real skip, or None; it is added to K_0, the Toeplitz diagonal (y_t += D u_t for free).

    Returns:
        toeplitz: (H, T, T) real, [h, s, t] = K_{t-s} for t >= s else 0, K_k = Re Σ_n C_n B̄_n Ā_n^k
            (+ D on K_0).
        to_state: (H, T, 2N) packed (or (H, T, N) real), [h, k, n] = Ā_n^{T-1-k} B̄_n (step 3).
        from_state: (H, 2N, T) packed (or (H, N, T) real), so that x_packed @ from_state
            = Re Σ_n C_n Ā_n^{t+1} x_n (step 2).
        powers: (H, T+1, N) Ā^k for k = 0..T, complex (or real).
        wide: (H, N, T+1) Ā^k for k = 0..T in double precision (A_bar's own on MPS), for the carry (:func:`_carry`).
    """
    wide = wide_power_table(A_bar, T + 1)  # (H, N, T+1) in double precision
    powers = wide.to(A_bar.dtype).transpose(1, 2).contiguous()  # (H, T+1, N), each power rounded once
    K = (powers[:, :T] * (C * B_bar)[:, None]).sum(-1)  # (H, T); an einsum here was 13 aten ops
    K = K.real if K.is_complex() else K
    if D is not None:
        K = torch.cat([K[:, :1] + D[:, None], K[:, 1:]], dim=1)  # (H, T): K_0 + D
    K_pad = F.pad(K, (T - 1, 0))  # (H, 2T-1): T-1 zeros, then K_0..K_{T-1}
    lag = torch.arange(T, device=K.device)
    toeplitz = K_pad[:, T - 1 - lag[:, None] + lag[None, :]]  # (H, T, T): [h, s, t] = K_pad[T-1-s+t] (a gather:
    # unlike unfold, its backward has a vmap batching rule)
    to_state = pack(powers[:, :T].flip(1) * B_bar[:, None])  # (H, T, 2N)
    W = C[:, None] * powers[:, 1:]  # (H, T, N): C_n Ā_n^{t+1}
    if W.is_complex():
        from_state = pack(W.conj().resolve_conj()).transpose(1, 2)  # (H, 2N, T), rows (n, re/im): [Re, -Im]
    else:
        from_state = W.transpose(1, 2)  # (H, N, T)
    return toeplitz, to_state, from_state, powers, wide


def _group_powers(A_T: torch.Tensor, wide: torch.Tensor | None, G: int) -> torch.Tensor:
    """(Ā^T)^i for i = 0..G in double precision for a single-precision scan (see :func:`_carry`).

    Args:
        A_T: (H, N) Ā^T in the scan's dtype.
        wide: (H, N, T+1) Ā^k computed in double precision from Ā (its last entry Ā^T, not the rounded A_T), or None:
            A_T widened.
        G: the group size.

    Returns:
        (H, N, G+1) in the wide dtype (A_T's own on MPS, which has no float64).
    """
    base = wide[..., -1] if wide is not None else A_T.to(_wide_dtype(A_T))  # (H, N)
    return power_table(base, G + 1)  # (H, N, G+1)


def _split(wide: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``wide`` as hi + lo in ``dtype``: hi = wide rounded, lo = (wide - hi) rounded (hi + lo = wide to ~eps²).

    Args:
        wide: a tensor in double precision, or already in ``dtype`` (a double-precision scan, or MPS).
        dtype: the narrow dtype.

    Returns:
        (hi, lo), each wide's shape, in ``dtype``; lo is None when wide is already in ``dtype`` (it would be zero).
    """
    if wide.dtype == dtype:
        return wide, None
    hi = wide.to(dtype)
    return hi, (wide - hi.to(wide.dtype)).to(dtype)


def _times_split(acc: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """acc + (hi + lo) x as acc + lo x + hi x (one multiply-add when lo is None)."""
    return torch.addcmul(acc if lo is None else torch.addcmul(acc, lo, x), hi, x)


def _wide_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 (complex128) for a float32 (complex64) tensor off MPS (which has no float64); else t's dtype."""
    return t.dtype if t.device.type == "mps" else _WIDE.get(t.dtype, t.dtype)


def _carry(
    z: torch.Tensor, A_T: torch.Tensor, x0: torch.Tensor | None, wide: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The states between chunks: x_c = Ā^T x_{c-1} + z_c, with x_{-1} = x0, by a two-level loop.

    The nc chunks form ng groups of G ≈ √nc: one loop of G-1 steps scans every group at once, one loop of ng-1
    steps carries the group ends, and one product adds each group's carried state Ā^{Ti} x to its steps, so the
    carry costs ~2√nc + 20 aten ops instead of ~nc (issue 16: per-op overhead dominates under CPU contention)
    for ~3 passes over (H, B, nc, N) (the one-level loop made 2).

    Beyond :data:`_FEW_GROUPS` group ends, the multiplier of the carry across the ng group ends, (Ā^T)^G, is computed
    in double precision from Ā and applied
    as a pair of single-precision numbers hi + lo (two multiply-adds per group end; the states stay in the scan's
    dtype, each step rounding once, without bias); the powers (Ā^T)^i of the last product are computed in double and
    rounded once. Before, the same rounded multiplier was applied at every group end: (Ā^T)^G from a float32 product of
    G factors near 1 (a product of such factors is biased: it drops a positive correction below half an ulp, ~1 ulp
    low per 64 factors), on top of Ā^T's own rounding. Near the unit circle such an error adds up linearly in nc: with
    |λ| in [0.99999, 0.999999] (B 1, H 8, N 32) the output's relative error grew 5.5e-7, 7.8e-6, 2.6e-5 at
    L = 4 096, 65 536, 262 144 (the C kernel's float32 loop: 1.0e-6, 4.2e-6, 6.9e-6; now 2.2e-7, 5.0e-7, 8.9e-7;
    scripts/float32_long_accuracy.py --ops). Inside a group the rounded Ā^T is applied G ≈ √nc times only. (Carrying
    the group ends in complex128 instead cost ~5 % of the carry's time, in its casts.) Up to :data:`_FEW_GROUPS`
    group ends the powers stay float32 products of the rounded Ā^T, at most G <= 9 deep: their error is a few ulp
    at most, and the ~13 aten ops the wide multiplier costs would take an S4D forward at L = 4 096 past issue 16's
    150 (tests/perf).

    Args:
        z: (H, B, nc, N) every chunk's input part Σ_k Ā^{T-1-k} B̄ u_k (complex or real).
        A_T: (H, N) Ā^T.
        x0: (H, B, N) the state before the first chunk, or None for zeros.
        wide: (H, N, T+1) Ā^k, k = 0..T, computed in double precision from Ā (Ā^T is its last entry), or None: A_T
            widened.

    Returns:
        (H, B, nc, N) the state before each chunk, and (H, B, N) the state after the last chunk.
    """
    H, Bsz, nc, N = z.shape
    G = ceil_sqrt(nc)  # ⌈√nc⌉ (traceable at a symbolic nc: ops/symbolic.ceil_sqrt)
    ng = -(-nc // G)
    pad = ng * G - nc
    zg = (F.pad(z, (0, 0, 0, pad)) if pad else z).reshape(H, Bsz, -1, G, N)  # zero inputs after the end; -1, not ng:
    # with L symbolic under torch.compile, ng in a reshape failed dynamo's own guard (as in ops/recurrence.py)
    A_g = A_T[:, None, None, :].expand(H, Bsz, ng, N)  # (H, B, ng, N): one reduction in backward
    cols = zg.unbind(3)  # G × (H, B, ng, N)
    local = [cols[0]]  # inclusive scan inside each group, from a zero state
    for i in range(1, G):
        local.append(torch.addcmul(cols[i], A_g, local[-1]))  # (H, B, ng, N)
    if ng <= _FEW_GROUPS:  # few group ends: (Ā^T)^i from the rounded Ā^T, as deep as G <= 8 products
        powers = power_table(A_T, G + 1)  # (H, N, G+1)
        A_hi, A_lo = powers[..., G][:, None, :].expand(H, Bsz, N), None  # (H, B, N)
    else:
        powers = _group_powers(A_T, wide, G)  # (H, N, G+1): (Ā^T)^i, i <= G, wide
        A_hi, A_lo = (p if p is None else p[:, None, :].expand(H, Bsz, N) for p in _split(powers[..., G], z.dtype))
    ends = local[-1].unbind(2)  # ng × (H, B, N)
    carried = [x0 if x0 is not None else torch.zeros_like(ends[0])]  # the state before each group
    for g in range(ng - 1):  # end + (Ā^{TG})_lo x + (Ā^{TG})_hi x: the multiplier exact to ~eps²
        carried.append(_times_split(ends[g], A_hi, A_lo, carried[-1]))  # (H, B, N)
    carried_t = torch.stack(carried, dim=2)  # (H, B, ng, N)
    # state before chunk g·G + i: (Ā^T)^i x_g + local[g, i-1] (nothing local for i = 0)
    before = torch.stack([torch.zeros_like(local[0]), *local[:-1]], dim=3)  # (H, B, ng, G, N)
    decay = powers[..., :G]
    decay = (decay if decay.dtype == z.dtype else decay.to(z.dtype)).transpose(1, 2)[:, None, None]  # (H, 1, 1, G, N)
    prev = torch.addcmul(before, decay, carried_t.unsqueeze(3)).reshape(H, Bsz, -1, N)  # (H, B, ng·G, N)
    prev = prev[:, :, :nc] if pad else prev  # (H, B, nc, N)
    last = torch.addcmul(z[:, :, -1], A_T[:, None, :], prev[:, :, -1])  # (H, B, N): after chunk nc-1
    return prev, last


_GROUP = 8  # chunks per group of the compiled carry (_carry_doubling)
_FEW_GROUPS = 8  # up to this many group ends (nc <= 72 chunks: L <= 4 608 at T = 64) _carry keeps its float32 powers


def _carry_doubling(
    z: torch.Tensor, A_T: torch.Tensor, x0: torch.Tensor | None, wide: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_carry` for torch.compile, with a graph that depends on the chunk count nc only through its octave.

    :func:`_carry`'s loops run ⌈√nc⌉ and nc/G times, so every chunk count (every length) compiled its own graph.
    Here the group size is a constant, G = 8, and ng = ⌊nc/G⌋ + 1 groups (1 to G chunks of padding, never none: an
    empty padding made AOT autograd guard on nc % G; ⌊(nc + 2G - 1)/G⌋, a whole group of padding more, cost a compiled
    EMA forward+backward ~10 %: 170 against 152 ms paired, B 8, L 4 096, H 128, N 64, one thread); the scan inside the groups is G - 1 steps over
    all groups at once, and the carry across the ng group ends runs by doubling (Hillis-Steele: ⌈log2 ng⌉ steps
    s_g += (Ā^{TG})^d s_{g-d}, d = 1, 2, 4, ..., whose comparisons d < ng are the only guards). A doubling over the
    chunks themselves cost ~log2(nc) passes over (H, B, nc, N) (EMA at L 4 096 compiled 1.7x its eager time); over
    the group ends it is 1/G of that. As in :func:`_carry`, the multipliers of the carry across the group ends are
    computed in double precision and applied as hi + lo pairs.

    Args:
        z: (H, B, nc, N) every chunk's input part (complex or real).
        A_T: (H, N) Ā^T.
        x0: (H, B, N) the state before the first chunk, or None for zeros.
        wide: (H, N, T+1) Ā^k, k = 0..T, computed in double precision from Ā (Ā^T is its last entry), or None: A_T
            widened.

    Returns:
        (H, B, nc, N) the state before each chunk, and (H, B, N) the state after the last chunk.
    """
    H, Bsz, nc, N = z.shape
    G = _GROUP
    ng = nc // G + 1
    zg = F.pad(z, (0, 0, 0, ng * G - nc)).reshape(H, Bsz, -1, G, N)  # (H, B, ng, G, N); zeros after the end
    A_g = A_T[:, None, None, :]  # (H, 1, 1, N)
    cols = zg.unbind(3)  # G × (H, B, ng, N)
    local = [cols[0]]  # inclusive scan inside each group, from a zero state
    for i in range(1, G):
        local.append(torch.addcmul(cols[i], A_g, local[-1]))  # (H, B, ng, N)
    powers = _group_powers(A_T, wide, G)  # (H, N, G+1): (Ā^T)^i, wide
    p = powers[..., G][:, None, None, :]  # (H, 1, 1, N): (Ā^T)^G, then its squares, wide
    s = local[-1]  # (H, B, ng, N): group ends; s_g becomes the state after group g (from x0 = 0)
    if x0 is not None:
        p_hi, p_lo = _split(p, z.dtype)
        x0_ = x0.unsqueeze(2)  # (H, B, 1, N)
        s = torch.cat([_times_split(s[:, :, :1], p_hi, p_lo, x0_), s[:, :, 1:]], dim=2)
    d = 1
    while d < ng:
        p_hi, p_lo = _split(p, z.dtype)
        shifted = F.pad(s, (0, 0, d, 0)).narrow(2, 0, ng)  # (H, B, ng, N): s_{g-d}, 0 for g < d
        s = _times_split(s, p_hi, p_lo, shifted)  # s_g += A^{Gd} s_{g-d}
        p = p * p
        d *= 2
    first = x0 if x0 is not None else torch.zeros_like(s[:, :, 0])  # (H, B, N)
    carried = torch.cat([first.unsqueeze(2), s[:, :, :-1]], dim=2)  # (H, B, ng, N): the state before each group
    before = torch.stack([torch.zeros_like(local[0]), *local[:-1]], dim=3)  # (H, B, ng, G, N)
    decay = powers[..., :G].to(z.dtype).transpose(1, 2)[:, None, None]  # (H, 1, 1, G, N)
    prev = torch.addcmul(before, decay, carried.unsqueeze(3)).reshape(H, Bsz, -1, N).narrow(2, 0, nc)  # (H, B, nc, N)
    last = torch.addcmul(z[:, :, -1], A_T[:, None, :], prev[:, :, -1])  # (H, B, N): after chunk nc-1
    return prev, last


def _last_chunk_state(
    x: torch.Tensor, u_tail: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, powers: torch.Tensor, r
) -> torch.Tensor:
    """The state after the first r steps of the last chunk, for a symbolic r (no slice or branch on it).

    x_r = Ā^r x + Σ_{k<r} Ā^{r-1-k} B̄ u_k: the powers are gathered at r-1-k and zeroed for k >= r (the padding).

    Args:
        x: (H, B, N) the state before the last chunk.
        u_tail: (H, B, T) the last chunk's inputs (zero after r).
        A_bar, B_bar: (H, N).
        powers: (H, T+1, N) Ā^k for k = 0..T.
        r: the number of real steps in the last chunk, 1..T (a SymInt).

    Returns:
        (H, B, N).
    """
    T = u_tail.shape[-1]
    e = r - 1 - torch.arange(T, device=u_tail.device)  # (T,): r-1-k
    decay = torch.where((e >= 0)[None, :, None], powers[:, e.clamp(min=0)], 0)  # (H, T, N): Ā^{r-1-k}, 0 for k >= r
    x_in = unpack(torch.bmm(u_tail, pack(decay * B_bar[:, None])), A_bar.is_complex())  # (H, B, N)
    A_r = (powers[:, e[:1]] * A_bar[:, None]).squeeze(1)  # (H, N): Ā^{r-1}·Ā
    return A_r[:, None] * x + x_in  # (H, B, N)


def ssm_scan_chunked(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Diagonal SSM by the chunked matmul ("SSD") algorithm; equals :func:`ssmkit.ops.scan.ssm_scan_reference`.

    Per chunk of T steps (arXiv 2405.21060 §6, with a time-invariant diagonal Ā):
    y_t = Σ_{s≤t} K_{t-s} u_s + Re Σ_n C_n Ā_n^{t+1} x_prev,n  and  x_new = Ā^T x_prev + Σ_k Ā^{T-1-k} B̄ u_k,
    with K_k = Re Σ_n C_n B̄_n Ā_n^k (arXiv 2206.11893 eq. 5); the skip D u_t rides on K_0. Work
    ~ 2·B·L·H·(T + 4N) flops, all GEMM; memory O(B·L·H + B·(L/T)·H·N).

    Args:
        u: (B, L, H) real input.
        A_bar: (H, N) complex (or real) discrete state matrix (diagonal).
        B_bar: (H, N) complex (or real) discrete input matrix.
        C: (H, N) complex (or real) output matrix; pass 2·C for conjugate-pair halves.
        state: (B, H, N) complex (or real) state x_{-1}, or None for zeros.
        D: (H,) real skip (feed-through), y_t += D u_t; None for no skip.
        return_state: whether to compute the final state (else None is returned in its place).
        chunk_size: T, steps per chunk (64 is fastest on CPU, docs/benchmarks.md); min(T, L) is used.

    Returns:
        y (B, L, H) real in u's dtype, and the final state x_{L-1} (B, H, N) in A_bar's dtype (or None).
    """
    check_params(u, state, A_bar=A_bar, B_bar=B_bar, C=C)
    check_skip(D, u)
    check_chunk_size(chunk_size)
    Bsz, L, H = u.shape
    N = A_bar.shape[1]
    is_complex = A_bar.is_complex()
    symbolic = symbolic_length(L)  # exporting with a dynamic L: no branch on L (ops/symbolic.py)
    # under torch.compile (not export): no Python loop or branch on the chunk count or the remainder, so that one graph
    # serves every length whose chunk count lies in one octave (a dynamic L; _carry_doubling)
    generic = LENGTH_GENERIC_COMPILE and not symbolic and torch.compiler.is_compiling() and not exporting()
    T = chunk_size if symbolic or generic else min(chunk_size, L)
    # (a symbolic L, and any L under torch.compile, gets one more chunk, all padding: the padding is never empty, or
    # AOT autograd guarded on L % T == 0, a second graph per octave)
    n_chunks = (L + 2 * T - 1) // T if generic else chunk_count(L, T)
    last = n_chunks - 1 - int(symbolic or generic)  # the last chunk with real steps
    r = L - last * T  # its number of real steps, 1..T
    toeplitz, to_state, from_state, powers, wide = _chunk_operators(A_bar, B_bar, C, T, D)
    A_T = powers[:, T]  # (H, N)

    u_pad = F.pad(u, (0, 0, 0, n_chunks * T - L)) if symbolic or generic or r < T else u  # (B, nc·T, H); zeros after
    # one 2-D transpose (cheaper than a 3-D permute copy on CPU): rows (b, c, t) -> columns
    u_c = transpose(u_pad.reshape(Bsz * n_chunks * T, H)).reshape(H, Bsz * n_chunks, T)  # (H, B·nc, T)

    # Steps (1) and (3, input part) of the module docstring, all chunks at once.
    y_c = torch.bmm(u_c, toeplitz)  # (H, B·nc, T)
    z = unpack(torch.bmm(u_c, to_state).reshape(H, Bsz, n_chunks, to_state.shape[-1]), is_complex)  # (H, B, nc, N)

    # Step (3), carry across chunks (two-level, ~2·√nc small ops instead of nc).
    x0 = state.permute(1, 0, 2) if state is not None else None  # (H, B, N)
    if symbolic:  # one scan op over the symbolic chunk count
        x_prev_c, x = carry(A_T[:, None].expand(H, Bsz, N), z, x0, dim=2)
    elif generic:
        x_prev_c, x = _carry_doubling(z, A_T, x0, wide)
    else:
        x_prev_c, x = _carry(z, A_T, x0, wide)  # (H, B, nc, N) state before each chunk, (H, B, N) after the last

    # Step (2): contribution of the carried state to every step of its chunk, all chunks at once.
    x_prev = pack(x_prev_c).reshape(H, Bsz * n_chunks, from_state.shape[1])  # (H, B·nc, 2N)
    if tracing():  # vmap may batch x_prev but not y_c: no in-place there
        y_c = torch.baddbmm(y_c, x_prev, from_state)  # (H, B·nc, T)
    else:
        y_c = y_c.baddbmm_(x_prev, from_state)  # (H, B·nc, T), in place (bmm's backward does not need y_c)
    y = transpose(y_c.reshape(H, Bsz * n_chunks * T)).reshape(Bsz, n_chunks * T, H)  # (B, nc·T, H)
    y = keep_first(y, 1, L)  # (B, L, H)
    if not return_state:
        return y, None

    # Final state: the last chunk holds only r real steps (the padding must not advance the state).
    if symbolic or generic:  # r (1..T) enters as a number in the graph, not as an index or a branch
        x = _last_chunk_state(x_prev_c[:, :, -2], u_c.reshape(H, Bsz, n_chunks, T)[:, :, -2], A_bar, B_bar, powers, r)
    elif r < T:  # x is the state after the padded last chunk: redo that chunk from the state before it
        x = x_prev_c[:, :, -1]  # (H, B, N)
        u_tail = u_c.reshape(H, Bsz, n_chunks, T)[:, :, -1, :r]  # (H, B, r)
        x_in = unpack(torch.bmm(u_tail, to_state[:, T - r :, :]), is_complex)  # (H, B, N)
        x = powers[:, r, None] * x + x_in  # (H, B, N)
    return y, x.permute(1, 0, 2).contiguous()  # (B, L, H), (B, H, N)
