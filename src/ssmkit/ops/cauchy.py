"""The S4 DPLR convolution kernel: Cauchy sums, the Woodbury correction and an inverse FFT.

Implements Algorithm 1 of "Efficiently Modeling Long Sequences with Structured State Spaces" (S4, Gu, Goel, Ré;
arXiv 2111.00396, §3.2-3.3) in the convention of ``docs/design.md`` (y = C̃ᵀ x unconjugated, as the official
state-spaces/s4 code @ e757cef): the state matrix of the full conjugate-pair state x_f = [x, conj x] (size N, N/2
pairs) is

    A = diag(Λ_f) - Σ_i P_f,i P_f,i*,     Λ_f = [Λ, conj Λ],  P_f,i = [P_i, conj P_i],

discretised by the bilinear rule, and the output is y = C_trueᵀ x_f (unconjugated). The kernel
K_l = C_trueᵀ Ā^l B̄ (l < L) has the truncated generating function, at the roots of unity ω_k = e^{-2πik/L},

    K̂(ω) = Σ_l K_l ω^l = C̃ᵀ (I - Ā ω)⁻¹ B̄ = (2/(1+ω)) C̃ᵀ (z - A)⁻¹ B_f,   z = (2/Δ)(1-ω)/(1+ω),

with C̃ = (I - Ā^L)ᵀ C_true (the trainable C̃ of the layer). With A = Λ - PP* the Woodbury identity reduces
(z - A)⁻¹ to Cauchy sums r_ab(z) = Σ_n a_n b_n / (z - λ_n) over ALL N indices (both members of each pair)
with Q = conj P as the unconjugated second factor:

    C̃ᵀ(z - A)⁻¹B = r_{B C̃} - Σ_ij r_{P_i C̃} [Y⁻¹]_ij r_{B Q_j},   Y_ji = δ_ji + r_{P_i Q_j}   (rank r).

On the unit circle z = i (2/Δ) tan(πk/L) is purely imaginary and 2/(1+ω) = 1 + i tan(πk/L). The point ω = -1
(k = L/2, even L) is not evaluated by the Cauchy sums (there z = ∞); its exact limit K̂(-1) = (Δ/2) C̃ᵀB_f is
used instead. Finally K = irfft(K̂, n=L).

Every Cauchy sum shares one matrix 1/(z_m - λ_n) per channel, so :func:`cauchy` stacks all products a ⊙ b along a
leading dimension and applies the matrix as one batched GEMM per block of evaluation points (blocks of at most
``_BLOCK_BYTES``); its backward recomputes the blocks instead of storing the (…, N, W) matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssmkit.ops._checks import REAL_OF
from ssmkit.ops.backend import dispatch, get_backend, tracing
from ssmkit.ops.dplr import dplr_matrix, increment_power
from ssmkit.ops.function_call import apply_function, jvp_twin
from ssmkit.ops.woodbury import woodbury

_COMPLEX = (torch.complex64, torch.complex128)
# Bytes of one block of the Cauchy matrix 1/(z_m - w_n). Small blocks stay in cache (measured on 2 CPU cores,
# H=128, N=64, W=2049 points: 2-8 MB blocks are 2-4x faster than one 134 MB block); the cap of the brief is 64 MB.
# 8 MB, the top of that range: every block costs ~6 aten ops, and op count sets the slow-down under CPU
# contention (issue 16; 4 MB blocks made S4's forward ~1150 ops at B=8, H=128, L=4096).
_BLOCK_BYTES = 1 << 23


def _check_complex(x: Tensor, name: str, letters: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a complex torch.Tensor {letters}; got {type(x).__name__}")
    if x.dtype not in _COMPLEX:
        raise ValueError(f"{name} must be {letters} complex (complex64 or complex128); got {x.dtype}")


def _check_cauchy_args(v: Tensor, z: Tensor, w: Tensor) -> None:
    _check_complex(v, "v", "(..., N)")
    _check_complex(z, "z", "(..., W)")
    _check_complex(w, "w", "(..., N)")
    if not v.dtype == z.dtype == w.dtype:
        raise ValueError(f"v, z and w must share one complex dtype; got {v.dtype}, {z.dtype}, {w.dtype}")
    if v.dim() < 1 or z.dim() < 1 or w.dim() < 1:
        shapes = f"{tuple(v.shape)}, {tuple(z.shape)}, {tuple(w.shape)}"
        raise ValueError(f"v, z, w need a last dimension (N, W, N); got shapes {shapes}")
    if v.shape[-1] != w.shape[-1]:
        raise ValueError(f"v must be (..., N) with N = {w.shape[-1]} as w; got shape {tuple(v.shape)}")
    try:
        torch.broadcast_shapes(v.shape[:-1], z.shape[:-1], w.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"the batch dimensions of v {tuple(v.shape)}, z {tuple(z.shape)} and w {tuple(w.shape)} "
            "must broadcast together"
        ) from None


def cauchy_reference(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    """Cauchy sums by the direct formula: out[..., m] = Σ_n v[..., n] / (z[..., m] - w[..., n]).

    arXiv 2111.00396 §3.3 (the Cauchy kernel of Algorithm 1). Builds the whole (..., W, N) array.

    Args:
        v: (..., N) complex numerators.
        z: (..., W) complex evaluation points.
        w: (..., N) complex poles (same dtype as v, z); batch dimensions of v, z, w broadcast.

    Returns:
        (..., W) complex, the broadcast batch shape of v, z, w followed by W.
    """
    _check_cauchy_args(v, z, w)
    return (v.unsqueeze(-2) / (z.unsqueeze(-1) - w.unsqueeze(-2))).sum(-1)  # (..., W, N) -> (..., W)


def _block(W: int, G: int, N: int, itemsize: int) -> int:
    """Number of evaluation points per block so that a (G, N, block) matrix holds at most _BLOCK_BYTES."""
    return max(1, min(W, _BLOCK_BYTES // max(1, G * N * itemsize)))


class _CauchyMatmul(torch.autograd.Function):
    """out[g, k, m] = Σ_n v[g, k, n] / (z[g, m] - w[g, n]) in blocks of m, with a recomputing backward.

    All three inputs enter holomorphically, so (PyTorch's convention for complex autograd) the gradient of a
    real loss is grad_x = Σ conj(∂out/∂x) · grad_out:
        ∂out_km/∂v_kn = c_nm,   ∂out_km/∂w_n = v_kn c_nm²,   ∂out_km/∂z_m = -Σ_n v_kn c_nm²,   c = 1/(z - w).
    Under torch.func and torch.compile nothing is written into a preallocated buffer (the forward's blocks are
    concatenated; gradients are summed into the first block's term), so the generated vmap rule batches both
    passes; in-place steps touch only fresh tensors, and none while a double backward is being recorded, so
    second derivatives exist.

    Forward-mode AD: :class:`_CauchyMatmulJvp`; the backward's tensor ops differentiate forward (forward over
    reverse).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(v: Tensor, z: Tensor, w: Tensor) -> Tensor:  # v (G, S, N), z (G, W), w (G, N)
        G, S, N = v.shape
        W = z.shape[-1]
        step = _block(W, G, N, v.element_size())
        # eager: one output buffer, so every block's 1/(z - w) reuses the previous one's memory (keeping the
        # blocks alive for a cat made each new block page-fault: forward 2x slower); under torch.func or
        # torch.compile the blocks are concatenated (no writes into a buffer that vmap could not batch)
        out = None if tracing() else torch.empty(G, S, W, dtype=v.dtype, device=v.device)  # (G, S, W)
        blocks = []
        z_row, w_col = z[:, None, :], w[:, :, None]  # (G, 1, W), (G, N, 1): once, not per block (issue 16: ops)
        for m0 in range(0, W, step):
            c = (z_row[:, :, m0 : m0 + step] - w_col).reciprocal_()  # (G, N, m)
            if out is None:
                blocks.append(torch.bmm(v, c))  # (G, S, N) @ (G, N, m) -> (G, S, m)
            else:
                out[:, :, m0 : m0 + step] = torch.bmm(v, c)  # (G, S, m); bmm, not @: 1 aten op instead of 4
        if out is not None:
            return out
        if not blocks:  # no points (W = 0) while tracing: the empty sums, not torch.cat of no blocks
            return v.new_zeros(G, S, W)  # (G, S, 0)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)  # (G, S, W)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # g (G, S, W)
        v, z, w = ctx.saved_tensors
        need_v, need_z, need_w = ctx.needs_input_grad
        G, S, N = v.shape
        W = z.shape[-1]
        if W == 0:  # no points: no sums, every gradient zero (the block loop below would not run)
            return tuple(torch.zeros_like(t) if need else None for t, need in ((v, need_v), (z, need_z), (w, need_w)))
        step = _block(W, G, N, v.element_size())
        gv = gw_k = None  # (G, S, N) sums over the blocks (gw_k summed over k at the end)
        gz_blocks = []  # (G, m) each
        v_conj = v.conj()
        # create_graph=True: keep 1/(z - w) intact for the double backward (reciprocal's derivative reads it)
        recording = torch.is_grad_enabled()
        for m0 in range(0, W, step):
            g_m = g[:, :, m0 : m0 + step]  # (G, S, m)
            c = (z[:, None, m0 : m0 + step] - w[:, :, None]).reciprocal_()  # (G, N, m), in place on a fresh tensor
            c_conj = c.conj_physical() if recording else c.conj_physical_()  # (G, N, m); a lazy conj() view
            # would be copied by every GEMM that reads it
            if need_v:
                term = g_m @ c_conj.transpose(1, 2)  # (G, S, m) @ (G, m, N) -> (G, S, N)
                gv = term if gv is None else (gv + term if recording else gv.add_(term))
            if need_w or need_z:
                c2_conj = c_conj * c_conj  # (G, N, m)
                if need_w:
                    term = g_m @ c2_conj.transpose(1, 2)  # (G, S, N)
                    gw_k = term if gw_k is None else (gw_k + term if recording else gw_k.add_(term))
                if need_z:
                    gz_blocks.append(-(g_m * (v_conj @ c2_conj)).sum(1))  # (G, S, m) -> (G, m)
        gw = (gw_k * v_conj).sum(1) if need_w else None  # (G, S, N) -> (G, N)
        gz = torch.cat(gz_blocks, dim=-1) if need_z else None  # (G, W)
        return gv, gz, gw


@jvp_twin(_CauchyMatmul)
class _CauchyMatmulJvp(_CauchyMatmul):
    """:class:`_CauchyMatmul` with its forward derivative, called under forward-mode AD (``ops.function_call``):
    out' = v̇ c + (v ⊙ ẇ) c² - ż ⊙ (v c²), c = 1/(z - w), by the same blocks of points (two or three GEMMs per block,
    as the backward)."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _CauchyMatmul.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def jvp(ctx, v_dot: Tensor | None, z_dot: Tensor | None, w_dot: Tensor | None) -> Tensor:
        v, z, w = ctx.saved_tensors  # (G, S, N), (G, W), (G, N)
        G, S, N = v.shape
        W = z.shape[-1]
        step = _block(W, G, N, v.element_size())
        vw_dot = None if w_dot is None else v * w_dot[:, None, :]  # (G, S, N): v ⊙ ẇ
        blocks = []
        for m0 in range(0, W, step):
            c = 1.0 / (z[:, None, m0 : m0 + step] - w[:, :, None])  # (G, N, m)
            block = v.new_zeros(G, S, c.shape[-1])  # (G, S, m)
            if v_dot is not None:
                block = block + torch.bmm(v_dot, c)  # (G, S, m)
            if w_dot is not None or z_dot is not None:
                c2 = c * c  # (G, N, m)
                if vw_dot is not None:
                    block = block + torch.bmm(vw_dot, c2)  # (G, S, m)
                if z_dot is not None:
                    block = block - torch.bmm(v, c2) * z_dot[:, None, m0 : m0 + step]  # (G, S, m)
            blocks.append(block)
        if not blocks:
            return v.new_zeros(G, S, W)  # (G, S, 0)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)  # (G, S, W)


def cauchy_matmul(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    """Cauchy sums as one batched GEMM per block: out[..., m] = Σ_n v[..., n] / (z[..., m] - w[..., n]).

    arXiv 2111.00396 §3.3. The Cauchy matrix 1/(z_m - w_n) depends only on the batch dimensions shared with z and
    w (the channels G); the leading dimensions of v that z and w do not have (the S stacked products) reuse it:
    a (G, S, N) @ (G, N, W) product, built and applied in blocks of points of at most ``_BLOCK_BYTES`` (8 MB; also in
    the backward, which recomputes the blocks, so memory stays O(G·(S·N + S·W)) whatever the length).

    Args:
        v: (..., N) complex numerators.
        z: (..., W) complex evaluation points.
        w: (..., N) complex poles (same dtype as v, z); batch dimensions of v, z, w broadcast.

    Returns:
        (..., W) complex, the broadcast batch shape of v, z, w followed by W.
    """
    _check_cauchy_args(v, z, w)
    v_g, z_g, w_g, batch = grouped(v, z, w)
    return ungrouped(apply_function(_CauchyMatmul, v_g, z_g, w_g), batch)


def grouped(v: Tensor, z: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, torch.Size]:
    """The Cauchy sums' inputs as channels G (the batch dimensions z and w share) × S numerators (the leading
    dimensions only v has): v (G, S, N), z (G, W), w (G, N), contiguous, and the broadcast batch shape."""
    N, W = w.shape[-1], z.shape[-1]
    shared = torch.broadcast_shapes(z.shape[:-1], w.shape[:-1])
    batch = torch.broadcast_shapes(v.shape[:-1], shared)
    n_lead = len(batch) - len(shared)
    lead, channels = batch[:n_lead], batch[n_lead:]  # S dims (only in v), G dims (shared by z, w)
    G, S = math.prod(channels), math.prod(lead)
    v_g = v.expand(*batch, N).reshape(S, G, N).transpose(0, 1)  # (S, G, N) -> (G, S, N)
    z_g = z.expand(*channels, W).reshape(G, W)  # (G, W)
    w_g = w.expand(*channels, N).reshape(G, N)  # (G, N)
    return v_g.contiguous(), z_g.contiguous(), w_g.contiguous(), batch


def ungrouped(out: Tensor, batch: torch.Size) -> Tensor:
    """(G, S, W) sums back to the batch shape of :func:`grouped`'s inputs: (..., W)."""
    return out.transpose(0, 1).reshape(*batch, out.shape[-1])  # (S, G, W) -> (..., W)


def _cauchy_native(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    from ssmkit.ops.native.cauchy import cauchy_native

    return cauchy_native(v, z, w)


_CAUCHY = {"reference": cauchy_reference, "chunked": cauchy_matmul, "native": _cauchy_native}


def _auto(v: Tensor) -> str:
    """``"auto"``'s path: the C kernel on the CPU where it runs (eager or compiled; not under torch.func or
    torch.export); else the blocked GEMM."""
    from ssmkit.ops.native.gate import prefer_native

    return "native" if prefer_native("cauchy", v) else "chunked"


def cauchy(v: Tensor, z: Tensor, w: Tensor, *, backend: str | None = None) -> Tensor:
    """Cauchy sums out[..., m] = Σ_n v[..., n] / (z[..., m] - w[..., n]) (arXiv 2111.00396 §3.3, Alg. 1).

    Backends: ``"reference"`` -> :func:`cauchy_reference` (direct formula); ``"chunked"`` ->
    :func:`cauchy_matmul` (blocked batched GEMM, the same path on every device, twice differentiable);
    ``"native"`` -> :func:`ssmkit.ops.native.cauchy_native` (the C kernel, CPU; a second derivative goes through the
    blocked GEMMs); ``"auto"`` -> ``"native"`` on the CPU where the kernel runs (not under torch.func or
    torch.export), else ``"chunked"``;
    ``"fft"`` and ``"triton"`` raise.

    Args:
        v: (..., N) complex numerators.
        z: (..., W) complex evaluation points.
        w: (..., N) complex poles (same dtype as v, z); batch dimensions of v, z, w broadcast.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        (..., W) complex, the broadcast batch shape of v, z, w followed by W.
    """
    return dispatch("cauchy", _CAUCHY, backend, auto=lambda: _auto(v))(v, z, w)


def _check_pairs_args(v: Tensor, y: Tensor, w: Tensor) -> None:
    _check_complex(v, "v", "(..., H, M)")
    _check_complex(w, "w", "(H, M)")
    if w.dim() != 2:
        raise ValueError(f"w must be (H, M) complex; got shape {tuple(w.shape)}")
    H, M = w.shape
    if v.dim() < 2 or tuple(v.shape[-2:]) != (H, M) or v.dtype != w.dtype:
        raise ValueError(f"v must be (..., H, M) = (..., {H}, {M}) of w's dtype {w.dtype}; got {v.dtype} "
                         f"{tuple(v.shape)}")
    real = REAL_OF[w.dtype]
    if not isinstance(y, Tensor) or y.dtype != real or y.dim() != 2 or y.shape[0] != H:
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be (H, W) = ({H}, W) {real} (the real dtype of w); got {got}")


def _expanded_pairs(v: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The generic op's arguments for the pair sums: both members of each pair, and the points z = i y."""
    return torch.cat([v, v.conj()], dim=-1), torch.complex(torch.zeros_like(y), y), torch.cat([w, w.conj()], dim=-1)


def cauchy_pairs_reference(v: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """:func:`cauchy_pairs` by the direct formula on the pairs written out (:func:`cauchy_reference`): the oracle."""
    _check_pairs_args(v, y, w)
    return cauchy_reference(*_expanded_pairs(v, y, w))


def _pairs_by(backend: str):
    def run(v: Tensor, y: Tensor, w: Tensor) -> Tensor:
        _check_pairs_args(v, y, w)
        return cauchy(*_expanded_pairs(v, y, w), backend=backend)

    return run


def _pairs_native(v: Tensor, y: Tensor, w: Tensor) -> Tensor:
    from ssmkit.ops.native.cauchy_pairs import pair_sums_unchecked
    from ssmkit.ops.native.gate import require_native

    _check_pairs_args(v, y, w)
    device = next((t.device for t in (v, y, w) if t.device.type != "cpu"), v.device)
    require_native("cauchy_pairs", "cauchy_pairs", REAL_OF[v.dtype], device, "the inputs are")
    return pair_sums_unchecked(v, y, w)


_CAUCHY_PAIRS = {"reference": cauchy_pairs_reference, "chunked": _pairs_by("chunked"), "native": _pairs_native}


def cauchy_pairs(v: Tensor, y: Tensor, w: Tensor, *, backend: str | None = None) -> Tensor:
    """Cauchy sums over conjugate pairs of poles at imaginary points (S4's kernel, arXiv 2111.00396 §3.3, Alg. 1):

        out[..., h, m] = Σ_n v[..., h, n] / (i y[h, m] - w[h, n]) + conj(v[..., h, n]) / (i y[h, m] - conj(w[h, n])).

    The generic :func:`cauchy` on [v, conj v], z = i y, [w, conj w] computes the same sums; the C kernel
    (:mod:`ssmkit.ops.native.cauchy_pairs`) forms each pair's common denominator once. Backends: ``"reference"`` ->
    :func:`cauchy_pairs_reference`; ``"chunked"`` -> the generic op's blocked GEMMs on the pairs written out;
    ``"native"`` -> the C kernel (CPU); ``"auto"`` -> ``"native"`` on the CPU where it runs for complex128 (S4
    computes its kernel in float64), else ``"chunked"``. The common denominator's |D|² grows as y⁴: in complex64 it
    overflows for |y| beyond ~4e9, where the generic op's |z - λ|² does not until ~1e19, so ``"auto"`` keeps the
    generic path for complex64 (a forced ``"native"`` computes the pairs' form there too). In complex128 the same
    bounds are |y| < ~1e77, and |λ|, |y| not both below ~1e-77 (where |D|² underflows), far beyond S4's points
    (2/Δ) tan(πk/L); an infinite y gives NaN sums on the C kernel where the generic op's limit is 0.

    Args:
        v: (..., H, M) complex numerators, one per pair.
        y: (H, W) real: the points z = i y (w's real dtype).
        w: (H, M) complex poles, one per pair (v's dtype).
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        (..., H, W) complex.
    """
    from ssmkit.ops.native.gate import prefer_native

    def auto() -> str:
        return "native" if w.dtype == torch.complex128 and prefer_native("cauchy_pairs", w) else "chunked"

    return dispatch("cauchy_pairs", _CAUCHY_PAIRS, backend, auto=auto)(v, y, w)


def _check_dplr_args(Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int) -> None:
    _check_complex(Lambda, "Lambda", "(H, N/2)")
    _check_complex(P, "P", "(r, H, N/2)")
    _check_complex(B, "B", "(S, H, N/2)")
    _check_complex(C, "C", "(C, H, N/2)")
    if Lambda.dim() != 2:
        raise ValueError(f"Lambda must be (H, N/2) complex; got shape {tuple(Lambda.shape)}")
    H, Nh = Lambda.shape
    for x, name, letters in ((P, "P", "r"), (B, "B", "S"), (C, "C", "C")):
        if x.dim() != 3 or tuple(x.shape[1:]) != (H, Nh):
            raise ValueError(f"{name} must be ({letters}, H, N/2) = (?, {H}, {Nh}) complex; got shape {tuple(x.shape)}")
        if x.dtype != Lambda.dtype:
            raise ValueError(f"{name} must have Lambda's dtype {Lambda.dtype}; got {x.dtype}")
    if B.shape[0] < 1 or C.shape[0] < 1:
        raise ValueError(f"B and C need at least one vector (S, C >= 1); got {tuple(B.shape)}, {tuple(C.shape)}")
    real = torch.float32 if Lambda.dtype == torch.complex64 else torch.float64
    if not isinstance(dt, Tensor) or dt.dtype != real or tuple(dt.shape) != (H,):
        got = f"{tuple(dt.shape)} {dt.dtype}" if isinstance(dt, Tensor) else type(dt).__name__
        raise ValueError(f"dt must be (H,) = ({H},) {real} (the real dtype of Lambda); got {got}")
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be an int >= 1; got {L!r}")


def _cauchy_backend() -> str:
    """The Cauchy sums' backend inside :func:`dplr_kernel_fast`: the context's (``ssmkit.ops.use_backend``) when the
    Cauchy op has it (``"chunked"``, ``"native"``, ``"reference"``), else ``"auto"`` (a context ``"fft"``, which
    selects this very kernel, says nothing about how its Cauchy sums run)."""
    name = get_backend()
    return name if name in _CAUCHY else "auto"


def dplr_kernel_fast(Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int) -> Tensor:
    """S4 DPLR kernel by Cauchy sums, Woodbury and an inverse FFT (arXiv 2111.00396 Alg. 1, §3.3).

    K[s, c, h, l] = C_trueᵀ Ā^l B̄_s over the full conjugate-pair state, where C = C̃ = (I - Ā^L)ᵀ C_true; see the
    module docstring for the steps. Same signature and result as :func:`dplr_kernel_reference`.

    Args:
        Lambda: (H, N/2) complex eigenvalues Λ, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors (r >= 0), A = diag(Λ_f) - Σ_i P_f,i P_f,i*.
        B: (S, H, N/2) complex input vectors (S >= 1).
        C: (C, H, N/2) complex C̃ of the length-L generating function (C >= 1 output vectors).
        dt: (H,) real step sizes Δ (the real dtype of Lambda).
        L: kernel length (also the length C̃ is attuned to), >= 1.

    Returns:
        K (S, C, H, L) real.
    """
    _check_dplr_args(Lambda, P, B, C, dt, L)
    S, n_out = B.shape[0], C.shape[0]
    # 1. Evaluation points ω_k = e^{-2πik/L}, k < L/2 (the point ω = -1 of an even L is done in step 5):
    #    z_k = (2/Δ)(1 - ω)/(1 + ω) = i (2/Δ) tan(πk/L),   2/(1 + ω) = 1 + i tan(πk/L).
    n_reg = (L + 1) // 2
    tan = torch.tan(torch.arange(n_reg, dtype=dt.dtype, device=dt.device) * (math.pi / L))  # (W,)
    y = (2 / dt)[:, None] * tan  # (H, W): z = i y
    # 2. All products a ⊙ b, a ∈ {B_s, P_i}, b ∈ {C̃_c, Q_j = conj P_j}, over both members of each pair.
    a = torch.cat([B, P], dim=0)  # (S+r, H, N/2)
    b = torch.cat([C, P.conj()], dim=0)  # (C+r, H, N/2)
    ab = a[:, None] * b[None, :]  # (S+r, C+r, H, N/2); the pairs' other members are the conjugates
    # 3. Cauchy sums r_ab(z) = Σ_n a_n b_n / (z - λ_n) over both members of each pair (cauchy_pairs).
    r = cauchy_pairs(ab, y, Lambda, backend=_cauchy_backend())  # (S+r, C+r, H, W)
    # 4. Woodbury, then the factor 2/(1 + ω).
    k = woodbury(r, S, n_out, torch.complex(torch.ones_like(tan), tan))  # (S, C, H, W), times 2/(1 + ω)
    # 5. ω = -1 (even L): z = ∞ and K̂ = (Δ/2) C̃ᵀ B_f = Δ Re Σ_half C̃ B.
    if L % 2 == 0:
        nyquist = dt * (B[:, None] * C[None, :]).sum(-1).real  # (S, C, H)
        k = torch.cat([k, nyquist.to(k.dtype)[..., None]], dim=-1)  # (S, C, H, L/2 + 1)
    # 6. Back to the time domain.
    return torch.fft.irfft(k, n=L)  # (S, C, H, L)


def dplr_kernel_reference(Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int) -> Tensor:
    """S4 DPLR kernel from the dense bilinear system (the oracle): K[s, c, h, l] = C_trueᵀ Ā^l B̄_s.

    arXiv 2111.00396 eq. 3-5 on the full conjugate-pair state A = diag(Λ_f) - Σ_i P_f,i P_f,i*
    (:func:`ssmkit.ops.dplr.dplr_matrix`), in the increment form of :mod:`ssmkit.ops.dplr` so that no Δ cancels:
    with T = I - ΔA/2, Ā = I + Δ Ê, Ê = T⁻¹A and B̄_s = Δ B̂_s, B̂_s = T⁻¹ B_f,s (one LU solve); C_true solves
    (I - Ā^L)ᵀ C_true = C̃_f, i.e. Δ C_true = -F⁻ᵀ C̃_f with F = (Ā^L - I)/Δ (:func:`ssmkit.ops.dplr.increment_power`);
    then K_l = (Δ C_true)ᵀ Ā^l B̂_s, the powers by the loop x ← x + Δ Ê x over l. (Ā = T⁻¹(I + ΔA/2) and I - Ā^L
    from it lose eps/(LΔ|λ|) relative accuracy, and their log Δ gradient cancels ±1/Δ terms: with N = 8, L = 16 the
    kernel was 5e-9 off at Δ = e^-15 and 1e-5 at e^-25, its log Δ gradient 2e-3 and 3e6 relative.)
    Dense O(N³ log L + L N²) work per channel, in the input precision.

    Args:
        Lambda: (H, N/2) complex eigenvalues Λ, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors (r >= 0), A = diag(Λ_f) - Σ_i P_f,i P_f,i*.
        B: (S, H, N/2) complex input vectors (S >= 1).
        C: (C, H, N/2) complex C̃ of the length-L generating function (C >= 1 output vectors).
        dt: (H,) real step sizes Δ (the real dtype of Lambda).
        L: kernel length (also the length C̃ is attuned to), >= 1.

    Returns:
        K (S, C, H, L) real.
    """
    _check_dplr_args(Lambda, P, B, C, dt, L)
    full = lambda x: torch.cat([x, x.conj()], dim=-1)  # noqa: E731  (..., N/2) -> (..., N)
    # 1. T = I - ΔA/2, and Ê = T⁻¹A, B̂ = T⁻¹B_f by one solve.
    A = dplr_matrix(Lambda, P)  # (H, N, N)
    N = A.shape[-1]
    dt_c = dt.to(A.dtype)  # (H,)
    T = torch.eye(N, dtype=A.dtype, device=A.device) - (dt_c / 2)[:, None, None] * A  # (H, N, N)
    rhs = torch.cat([A, full(B).permute(1, 2, 0)], dim=-1)  # (H, N, N + S)
    sol = torch.linalg.solve(T, rhs)  # (H, N, N + S)
    E_hat, x = sol[..., :N], sol[..., N:].permute(2, 0, 1)  # (H, N, N), (S, H, N): B̂ = Ā^0 B̂
    # 2. Δ C_true = -F⁻ᵀ C̃_f, F = (Ā^L - I)/Δ.
    F = increment_power(E_hat, L, dt)  # (H, N, N)
    c = -torch.linalg.solve(F.transpose(-1, -2), full(C).unsqueeze(-1)).squeeze(-1)  # (C, H, N)
    # 3. The taps (Δ C_true)ᵀ Ā^l B̂ = C_trueᵀ Ā^l B̄.
    taps = []
    for _ in range(L):
        taps.append(torch.einsum("chn,shn->sch", c, x).real)  # (S, C, H)
        x = x + dt_c[:, None] * torch.einsum("hnm,shm->shn", E_hat, x)  # (S, H, N): x + Δ Ê x
    return torch.stack(taps, dim=-1)  # (S, C, H, L)


_DPLR_KERNEL = {"reference": dplr_kernel_reference, "fft": dplr_kernel_fast}


def dplr_kernel(
    Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int, *, backend: str | None = None
) -> Tensor:
    """S4 DPLR convolution kernel K[s, c, h, l] = C_trueᵀ Ā^l B̄_s, l < L (arXiv 2111.00396 Alg. 1, §3.3).

    The full conjugate-pair system A = diag(Λ_f) - Σ_i P_f,i P_f,i* (Λ_f = [Λ, conj Λ], P_f = [P, conj P]) with
    bilinear discretisation; the output vector is given as C̃ = (I - Ā^L)ᵀ C_true (the trainable C̃ of S4, in the
    unconjugated y = Cᵀx convention). Input vectors B_s beyond the layer's B̃ give, e.g., the output contribution of
    an initial state s (with B_s = (1/Δ)(I + ΔA/2)s, so that B̄_s = Ā s).

    Backends: ``"reference"`` -> :func:`dplr_kernel_reference` (dense matrices, loop over l); ``"fft"`` ->
    :func:`dplr_kernel_fast` (the generating function at the roots of unity by Cauchy GEMMs + Woodbury, then an
    inverse FFT: a frequency-domain algorithm); ``"auto"`` -> ``"fft"``; ``"chunked"`` and ``"triton"`` raise.

    Args:
        Lambda: (H, N/2) complex eigenvalues Λ, one per conjugate pair.
        P: (r, H, N/2) complex low-rank factors (r >= 0).
        B: (S, H, N/2) complex input vectors (S >= 1).
        C: (C, H, N/2) complex C̃ of the length-L generating function (C >= 1 output vectors).
        dt: (H,) real step sizes Δ (the real dtype of Lambda).
        L: kernel length (also the length C̃ is attuned to), >= 1.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        K (S, C, H, L) real (float32 for complex64 inputs, float64 for complex128).
    """
    return dispatch("dplr_kernel", _DPLR_KERNEL, backend, auto="fft")(Lambda, P, B, C, dt, L)
