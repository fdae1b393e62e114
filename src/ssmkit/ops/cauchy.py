"""The S4 DPLR convolution kernel: Cauchy sums, the Woodbury correction and an inverse FFT.

Implements Algorithm 1 of "Efficiently Modeling Long Sequences with Structured State Spaces" (S4, Gu, Goel, Ré;
arXiv 2111.00396, §3.2-3.3) in the convention of ``docs/design.md`` (y = C̃ᵀ x unconjugated, as the official state-spaces/s4 code @ e757cef): the state matrix of
the full conjugate-pair state x_f = [x, conj x] (size N, N/2 pairs) is

    A = diag(Λ_f) - Σ_i P_f,i P_f,i*,     Λ_f = [Λ, conj Λ],  P_f,i = [P_i, conj P_i],

discretised by the bilinear rule, and the output is y = C_trueᵀ x_f (unconjugated). The kernel
K_l = C_trueᵀ Ā^l B̄ (l < L) has the truncated generating function, at the roots of unity ω_k = e^{-2πik/L},

    K̂(ω) = Σ_l K_l ω^l = C̃ᵀ (I - Ā ω)⁻¹ B̄ = (2/(1+ω)) C̃ᵀ (z - A)⁻¹ B_f,   z = (2/Δ)(1-ω)/(1+ω),

with C̃ = (I - Ā^L)ᵀ C_true (the trainable C̃ of the layer). With A = Λ - PP* the Woodbury identity reduces
(z - A)⁻¹ to Cauchy sums r_ab(z) = Σ_n a_n b_n / (z - λ_n) over ALL N indices (both members of each pair)
with Q = conj P as the unconjugated second factor:

    C̃ᵀ(z - A)⁻¹B = r_{B C̃} - Σ_ij r_{P_i C̃} [Y⁻¹]_ij r_{B Q_j},   Y_ji = δ_ji + r_{P_i Q_j}   (rank r).

On the unit circle the factor 2/(1+ω) is folded into the Cauchy sums (issue 16): with α = (2/Δ)(1-ω),
β = 1+ω and D = α - βΛ, (2/(1+ω))(z - A)⁻¹ = 2(α - βA)⁻¹, so the kernel uses the scaled sums
ρ_ab(ω) = Σ_n a_n b_n / ((1-ω)/Δ - g λ_n), g = (1+ω)/2, and Woodbury becomes
K̂ = ρ_{B C̃} - Σ_ij ρ_{P_i C̃} [g Y⁻¹]_ij ρ_{B Q_j},  Y_ji = δ_ji + g ρ_{P_i Q_j}. Every rfft bin k = 0..L/2 is
evaluated alike: at ω = -1 (g = 0) the correction vanishes and ρ = (Δ/2) Σ_n a_n b_n, the exact limit
K̂(-1) = (Δ/2) C̃ᵀB_f, with no special case. Finally K = irfft(K̂, n=L). The points 1-ω and g are
parameter-free and cached per (L, dtype, device).

Every Cauchy sum shares one matrix 1/(z_m - b_m λ_n) per channel, so all products a ⊙ b are stacked along a leading
dimension and the matrix is applied as one batched GEMM per block of evaluation points (blocks of at most
``_BLOCK_BYTES``, 3 aten ops each in eager mode: fill a reused buffer, invert it in place, one bmm into the
output); the backward recomputes the blocks instead of storing the (…, N, W) matrix. Λ, P and B may be given once
for all channels ((1, N/2), S4's n_ssm = 1): they broadcast.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ssmkit.ops.backend import dispatch, tracing
from ssmkit.ops.dplr import bilinear_dplr, small_inverse

_COMPLEX = (torch.complex64, torch.complex128)
# Bytes of one block of the Cauchy matrix 1/(z_m - b_m w_n). Every block costs 3 aten ops in the forward and ~9 in
# the backward, and the op count sets the slow-down under CPU contention (issue 16), so blocks are large: at most
# 96 MiB (at H=128, N=64, L=4096 the complex128 matrix (H, N, L/2 + 1) is 269 MB: 3 blocks of 85 MiB; 8 MB blocks
# made 32 and S4's forward ~505 ops). Smaller blocks stay in cache (2-8 MB blocks measured 2-4x faster than one
# 134 MB block on 2 quiet CPU cores): larger blocks trade some speed alone for fewer ops (to be re-measured quietly).
_BLOCK_BYTES = 96 << 20


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


def _blocks(W: int, G: int, N: int, itemsize: int) -> tuple[int, int]:
    """(number of blocks, points per block): the fewest blocks of (G, N, step) points of at most _BLOCK_BYTES
    each, all of one length but the last."""
    n_blocks = min(W, max(1, -(-W * G * N * itemsize // _BLOCK_BYTES)))
    step = -(-W // n_blocks)
    return -(-W // step), step


class _CauchyMatmul(torch.autograd.Function):
    """out[g, s, m] = Σ_n v[g, s, n] / (z[g, m] - b[m] w[g, n]) in blocks of m, with a recomputing backward.

    b is a constant (no gradient), None for b = 1 (plain Cauchy sums); w may be (1, N), shared by the channels. v, z and w enter holomorphically, so
    (PyTorch's convention for complex autograd) the gradient of a real loss is grad_x = Σ conj(∂out/∂x) · grad_out:
        ∂out_sm/∂v_sn = c_nm,   ∂out_sm/∂w_n = b_m v_sn c_nm²,   ∂out_sm/∂z_m = -Σ_n v_sn c_nm²,   c = 1/(z - b w).
    Eager mode: one output buffer and one block buffer reused by every block, 3 aten ops per block (fill the
    block with z - b w, invert it in place, one bmm into the output's slice); the backward likewise accumulates
    into preallocated gradients. Under torch.func and torch.compile (``tracing()``) and while a double backward is
    being recorded, every step is functional instead (blocks concatenated, gradients summed), so the generated vmap
    rule batches both passes and second derivatives exist.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(v: Tensor, z: Tensor, w: Tensor, b: Tensor | None) -> Tensor:  # v (G, S, N), z (G, 1, W), w (G, N), b (W,)
        G, S, N = v.shape
        W = z.shape[-1]
        _, step = _blocks(W, G, N, v.element_size())
        z_blocks = z.split(step, dim=-1)  # (G, 1, m) each
        b_blocks = (None,) * len(z_blocks) if b is None else b.split(step)  # (m,) each
        w_col = w[:, :, None]  # (G, N, 1)
        if tracing():
            outs = [torch.bmm(v, (z_i - w_col if b_i is None else z_i - b_i * w_col).reciprocal())
                    for z_i, b_i in zip(z_blocks, b_blocks)]  # (G, S, m) each
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (G, S, W)
        out = torch.empty(G, S, W, dtype=v.dtype, device=v.device)  # (G, S, W)
        buf = torch.empty(G, N, step, dtype=v.dtype, device=v.device)  # (G, N, step): every block's matrix
        for z_i, b_i, out_i in zip(z_blocks, b_blocks, out.split(step, dim=-1)):
            c = buf if z_i.shape[-1] == step else buf[:, :, : z_i.shape[-1]]  # (G, N, m)
            if b_i is None:
                torch.sub(z_i, w_col, out=c)
            else:
                torch.addcmul(z_i, b_i, w_col, value=-1, out=c)
            torch.bmm(v, c.reciprocal_(), out=out_i)  # (G, S, N) @ (G, N, m) -> (G, S, m)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs[:3])
        ctx.b = inputs[3]

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:  # g (G, S, W)
        v, z, w = ctx.saved_tensors
        b = ctx.b
        need_v, need_z, need_w = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled() or tracing():
            return (*_cauchy_backward_functional(g, v, z, w, b, need_v, need_z, need_w), None)
        G, S, N = v.shape
        W = z.shape[-1]
        _, step = _blocks(W, G, N, v.element_size())
        g_blocks = g.split(step, dim=-1)  # (G, S, m) each
        if b is not None and need_w:
            g_blocks = (g * b.conj()).split(step, dim=-1)  # b folded into g for gw (gv and gz read g alone)
            g_plain = g.split(step, dim=-1)
        else:
            g_plain = g_blocks
        z_blocks = z.split(step, dim=-1)  # (G, 1, m) each
        b_blocks = (None,) * len(z_blocks) if b is None else b.split(step)
        w_col = w[:, :, None]  # (G, N, 1)
        gv = torch.zeros_like(v) if need_v else None  # (G, S, N)
        gw_s = torch.zeros_like(v) if need_w else None  # (G, S, N), summed over s at the end
        gz = torch.empty_like(z) if need_z else None  # (G, 1, W)
        gz_blocks = gz.split(step, dim=-1) if need_z else (None,) * len(z_blocks)
        minus_v_conj = -v.conj() if need_z else None  # (G, S, N)
        buf = torch.empty(G, N, step, dtype=v.dtype, device=v.device)
        for z_i, b_i, g_i, gb_i, gz_i in zip(z_blocks, b_blocks, g_plain, g_blocks, gz_blocks):
            c = buf if z_i.shape[-1] == step else buf[:, :, : z_i.shape[-1]]  # (G, N, m)
            if b_i is None:
                torch.sub(z_i, w_col, out=c)
            else:
                torch.addcmul(z_i, b_i, w_col, value=-1, out=c)
            c = c.reciprocal_().conj_physical_()  # (G, N, m): conj(c), a physical conj (a lazy one is copied per GEMM)
            c_t = c.transpose(1, 2)  # (G, m, N), a view that follows c's in-place square below
            if need_v:
                gv.baddbmm_(g_i, c_t)  # += (G, S, m) @ (G, m, N)
            if need_w or need_z:
                c.mul_(c)  # (G, N, m): conj(c)²
                if need_w:
                    gw_s.baddbmm_(gb_i, c_t)  # += (G, S, m) @ (G, m, N)
                if need_z:
                    torch.sum(g_i * torch.bmm(minus_v_conj, c), dim=1, keepdim=True, out=gz_i)  # (G, 1, m)
        gw = (gw_s * v.conj()).sum(1) if need_w else None  # (G, S, N) -> (G, N)
        if need_w and w.shape[0] != G:  # w shared by the channels (1, N)
            gw = gw.sum(0, keepdim=True)
        return gv, gz, gw, None


def _cauchy_backward_functional(g, v, z, w, b, need_v, need_z, need_w):
    """The backward of :class:`_CauchyMatmul` by functional ops (torch.func, torch.compile, create_graph=True)."""
    G, S, N = v.shape
    W = z.shape[-1]
    _, step = _blocks(W, G, N, v.element_size())
    gv = gw_s = None  # (G, S, N) sums over the blocks (gw_s summed over s at the end)
    gz_blocks = []  # (G, m) each
    v_conj = v.conj()
    for m0 in range(0, W, step):
        g_m = g[:, :, m0 : m0 + step]  # (G, S, m)
        b_m = 1 if b is None else b[m0 : m0 + step]  # (m,)
        c_conj = (z[:, :, m0 : m0 + step] - b_m * w[:, :, None]).reciprocal().conj_physical()  # (G, N, m)
        if need_v:
            term = g_m @ c_conj.transpose(1, 2)  # (G, S, m) @ (G, m, N) -> (G, S, N)
            gv = term if gv is None else gv + term
        if need_w or need_z:
            c2_conj = c_conj * c_conj  # (G, N, m)
            if need_w:
                gb = g_m if b is None else g_m * b_m.conj()
                term = gb @ c2_conj.transpose(1, 2)  # (G, S, N)
                gw_s = term if gw_s is None else gw_s + term
            if need_z:
                gz_blocks.append(-(g_m * (v_conj @ c2_conj)).sum(1, keepdim=True))  # (G, S, m) -> (G, 1, m)
    gw = (gw_s * v_conj).sum(1) if need_w else None  # (G, S, N) -> (G, N)
    if need_w and w.shape[0] != G:  # w shared by the channels (1, N)
        gw = gw.sum(0, keepdim=True)
    gz = torch.cat(gz_blocks, dim=-1) if need_z else None  # (G, 1, W)
    return gv, gz, gw


def cauchy_matmul(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    """Cauchy sums as one batched GEMM per block: out[..., m] = Σ_n v[..., n] / (z[..., m] - w[..., n]).

    arXiv 2111.00396 §3.3. The Cauchy matrix 1/(z_m - w_n) depends only on the batch dimensions shared with z and
    w (the channels G); the leading dimensions of v that z and w do not have (the S stacked products) reuse it:
    a (G, S, N) @ (G, N, W) product, built and applied in blocks of points of at most ``_BLOCK_BYTES`` (also in the backward, which
    recomputes the blocks, so memory stays O(G·(S·N + S·W)) whatever the length).

    Args:
        v: (..., N) complex numerators.
        z: (..., W) complex evaluation points.
        w: (..., N) complex poles (same dtype as v, z); batch dimensions of v, z, w broadcast.

    Returns:
        (..., W) complex, the broadcast batch shape of v, z, w followed by W.
    """
    _check_cauchy_args(v, z, w)
    N, W = w.shape[-1], z.shape[-1]
    shared = torch.broadcast_shapes(z.shape[:-1], w.shape[:-1])
    batch = torch.broadcast_shapes(v.shape[:-1], shared)
    n_lead = len(batch) - len(shared)
    lead, channels = batch[:n_lead], batch[n_lead:]  # S dims (only in v), G dims (shared by z, w)
    G, S = math.prod(channels), math.prod(lead)
    v_g = v.expand(*batch, N).reshape(S, G, N).transpose(0, 1)  # (S, G, N) -> (G, S, N)
    z_g = z.expand(*channels, W).reshape(G, W)  # (G, W)
    w_g = w.expand(*channels, N).reshape(G, N)  # (G, N)
    out = _CauchyMatmul.apply(v_g.contiguous(), z_g[:, None, :].contiguous(), w_g.contiguous(), None)  # (G, S, W)
    return out.transpose(0, 1).reshape(*batch, W)  # (S, G, W) -> (..., W)


_CAUCHY = {"reference": cauchy_reference, "chunked": cauchy_matmul}


def cauchy(v: Tensor, z: Tensor, w: Tensor, *, backend: str | None = None) -> Tensor:
    """Cauchy sums out[..., m] = Σ_n v[..., n] / (z[..., m] - w[..., n]) (arXiv 2111.00396 §3.3, Alg. 1).

    Backends: ``"reference"`` -> :func:`cauchy_reference` (direct formula); ``"chunked"`` ->
    :func:`cauchy_matmul` (blocked batched GEMM, the same path on every device); ``"auto"`` -> ``"chunked"``;
    ``"fft"`` and ``"triton"`` raise.

    Args:
        v: (..., N) complex numerators.
        z: (..., W) complex evaluation points.
        w: (..., N) complex poles (same dtype as v, z); batch dimensions of v, z, w broadcast.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        (..., W) complex, the broadcast batch shape of v, z, w followed by W.
    """
    return dispatch("cauchy", _CAUCHY, backend, auto="chunked")(v, z, w)


def _check_dplr_args(Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int) -> None:
    _check_complex(Lambda, "Lambda", "(H, N/2)")
    _check_complex(P, "P", "(r, H, N/2)")
    _check_complex(B, "B", "(S, H, N/2)")
    _check_complex(C, "C", "(C, H, N/2)")
    if Lambda.dim() != 2:
        raise ValueError(f"Lambda must be (H, N/2) complex; got shape {tuple(Lambda.shape)}")
    if C.dim() != 3:
        raise ValueError(f"C must be (C, H, N/2) complex; got shape {tuple(C.shape)}")
    H, Nh = C.shape[1:]
    if tuple(Lambda.shape) not in ((H, Nh), (1, Nh)):
        raise ValueError(f"Lambda must be (H, N/2) = ({H}, {Nh}) (or (1, N/2), shared) complex; got {tuple(Lambda.shape)}")
    shared = ((1, Nh),) if Lambda.shape[0] == 1 else ()  # a shared Λ (1, N/2) allows a shared P and B
    for x, name, letters in ((P, "P", "r"), (B, "B", "S")):
        if x.dim() != 3 or tuple(x.shape[1:]) not in ((H, Nh), *shared):
            raise ValueError(
                f"{name} must be ({letters}, H, N/2) = (?, {H}, {Nh}) (or H = 1, shared) complex; got shape {tuple(x.shape)}"
            )
    for x, name in ((P, "P"), (B, "B"), (C, "C")):
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


def _unit_roots(L: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """(1 - ω_k, (1 + ω_k)/2) at the rfft bins ω_k = e^{-2πik/L}, k = 0..L//2: two (L//2 + 1,) complex tensors.

    Parameter-free, so cached per (L, dtype, device) in eager mode (no aten op per call; created outside inference
    mode so that autograd may save them); computed in the graph while tracing. Angles in float64.
    """
    if tracing():
        return _unit_roots_uncached(L, dtype, device)
    return _unit_roots_cached(L, dtype, torch.device(device))


def _unit_roots_uncached(L: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    k = torch.arange(L // 2 + 1, dtype=torch.float64, device=device)  # (W,)
    omega = torch.polar(torch.ones_like(k), k * (-2 * math.pi / L)).to(dtype)  # (W,)
    return 1 - omega, (1 + omega) / 2


@functools.lru_cache(maxsize=64)
def _unit_roots_cached(L: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    with torch.inference_mode(False), torch.no_grad():
        return _unit_roots_uncached(L, dtype, device)


def _woodbury(r: Tensor, S: int, n_out: int, R: int, g: Tensor) -> Tensor:
    """K̂ = C̃ᵀ 2(α - βA)⁻¹ B_f from the scaled Cauchy sums ρ_ab = Σ_n a_n b_n / ((1-ω)/Δ - g λ_n), g = (1+ω)/2.

    With A = Λ - Σ_i P_i Q_i (Q = P*) and D = α - βΛ (α = (2/Δ)(1-ω), β = 1+ω), Woodbury gives
        K̂[s, c] = ρ[s, c] - Σ_ij ρ[S+i, c] [g Y⁻¹]_ij ρ[s, n_out+j],   Y[j, i] = δ_ji + g ρ[S+i, n_out+j]   (rank R),
    finite at ω = -1 (g = 0: no correction).

    Args:
        r: (H, (S+R)(C+R), W) complex scaled Cauchy sums, r[:, a(C+R) + b] = ρ_ab.
        S: number of input vectors; n_out: number of output vectors C; R: the rank.
        g: (W,) complex (1 + ω)/2.

    Returns:
        (H, S, C, W) complex.
    """
    H, _, W = r.shape
    if R == 0:
        return r.view(H, S, n_out, W)
    if S == n_out == R == 1:  # the common case: one view and one unbind (3 splits otherwise)
        k, r_bq, r_pc, r_pq = r.view(H, 4, 1, 1, W).unbind(1)  # (H, 1, 1, W) each
    else:
        r = r.view(H, S + R, n_out + R, W)
        (r_b, r_p) = r.split([S, R], dim=1)  # (H, S, C+R, W), (H, R, C+R, W)
        k, r_bq = r_b.split([n_out, R], dim=2)  # ρ_{B_s C̃_c} (H, S, C, W), ρ_{B_s Q_j} (H, S, R, W)
        r_pc, r_pq = r_p.split([n_out, R], dim=2)  # ρ_{P_i C̃_c} (H, R, C, W), ρ_{P_i Q_j} (H, R, R, W)
    if R == 1:  # g Y⁻¹ = g / (1 + g ρ_PQ)
        return torch.addcmul(k, r_pc, r_bq * (g / (1 + g * r_pq)), value=-1)  # (H, S, C, W)
    Y = torch.eye(R, dtype=r.dtype, device=r.device)[:, :, None] + g * r_pq.transpose(1, 2)  # (H, R_j, R_i, W)
    Y_inv = small_inverse(Y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) * g  # (H, W, R, R) -> (H, R, R, W): g Y⁻¹
    return k - torch.einsum("hicm,hijm,hsjm->hscm", r_pc, Y_inv, r_bq)  # (H, S, C, W)


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
    H, M = C.shape[1:]
    # 1. The rfft bins ω_k = e^{-2πik/L}, k <= L/2, as the points (1 - ω)/Δ and the weights g = (1 + ω)/2.
    one_minus, g = _unit_roots(L, Lambda.dtype, Lambda.device)  # (W,) each
    z = one_minus / dt.view(H, 1, 1)  # (H, 1, W)
    # 2. All products a ⊙ b, a ∈ {B_s, P_i}, b ∈ {C̃_c, Q_j = conj P_j}, over both members of each pair.
    # (conj_physical: one aten op, where a lazy conj() is resolved by a second one inside cat)
    a = torch.cat([B, P if P.shape[1] == B.shape[1] else P.expand(-1, H, -1)], dim=0).transpose(0, 1)  # (H, S+r, N/2)
    b = torch.cat([C, P.conj_physical().expand(-1, H, -1)], dim=0).transpose(0, 1)  # (H, C+r, N/2)
    ab = a[:, :, None] * b[:, None]  # (H, S+r, C+r, N/2)
    ab = torch.cat([ab, ab.conj_physical()], dim=-1)  # (H, S+r, C+r, N)
    w = torch.cat([Lambda, Lambda.conj_physical()], dim=-1)  # (H, N)
    # 3. Scaled Cauchy sums ρ_ab(ω) = Σ_n a_n b_n / ((1-ω)/Δ - g λ_n) = (2/(1+ω)) r_ab(z): one blocked GEMM per channel.
    n_ab = ab.shape[1] * ab.shape[2]
    r = _CauchyMatmul.apply(ab.view(H, n_ab, 2 * M), z, w, g)  # (H, (S+r)(C+r), W)
    # 4. Woodbury (finite at ω = -1, where K̂ = (Δ/2) C̃ᵀ B_f), then back to the time domain.
    k = _woodbury(r, S, n_out, P.shape[0], g)  # (H, S, C, W)
    return torch.fft.irfft(k.permute(1, 2, 0, 3), n=L)  # (S, C, H, L)


def dplr_kernel_reference(Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int) -> Tensor:
    """S4 DPLR kernel from the dense bilinear system (the oracle): K[s, c, h, l] = C_trueᵀ Ā^l B̄_s.

    arXiv 2111.00396 eq. 3-5 on the full conjugate-pair state: A = diag(Λ_f) - Σ_i P_f,i P_f,i*,
    Ā = (I - ΔA/2)⁻¹(I + ΔA/2), B̄_s = (I - ΔA/2)⁻¹ Δ B_f,s (both by :func:`ssmkit.ops.dplr.bilinear_dplr`); C_true solves (I - Ā^L)ᵀ C_true = C̃_f; the powers
    Ā^l B̄ are formed by a loop over l. Dense O(N³ + L N²) work per channel, in the input precision.

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
    H = C.shape[1]
    Lambda, P, B = Lambda.expand(H, -1), P.expand(-1, H, -1), B.expand(-1, H, -1)  # shared (H = 1) -> per channel
    full = lambda x: torch.cat([x, x.conj()], dim=-1)  # noqa: E731  (..., N/2) -> (..., N)
    A_bar, B_bar = bilinear_dplr(Lambda, P, B, dt)  # (H, N, N), (S, H, N)
    eye = torch.eye(A_bar.shape[-1], dtype=A_bar.dtype, device=A_bar.device)  # (N, N)
    A_L = torch.linalg.matrix_power(A_bar, L)  # (H, N, N)
    C_true = torch.linalg.solve((eye - A_L).transpose(-1, -2), full(C).unsqueeze(-1)).squeeze(-1)  # (C, H, N)
    taps = []
    x = B_bar  # (S, H, N): Ā^l B̄ at l = 0
    for _ in range(L):
        taps.append(torch.einsum("chn,shn->sch", C_true, x).real)  # (S, C, H)
        x = torch.einsum("hnm,shm->shn", A_bar, x)  # (S, H, N)
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
