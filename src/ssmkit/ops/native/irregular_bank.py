"""The irregularly sampled diagonal bank (S4D arXiv 2206.11893, DSS arXiv 2203.14343) by the compiled C kernel
(``irregular_bank.c``), forward and backward, on the CPU.

Channel h, mode n, step t, with s = τ_t the gap, z = Δ_h Λ_{h,n}:

    ZOH:      x_t = e^{s z} x_{t-1} + (e^{s z} − 1) (B/Λ) u_t
    bilinear: x_t = (1 + s z/2)/(1 − s z/2) x_{t-1} + s Δ B/(1 − s z/2) u_t
    y_t = Re(Σ_n C_n x_{t,n}) + D u_t

-- the semantics of :func:`ssmkit.ops.irregular_bank.bank_irregular_scan_reference`. The PyTorch path forms the
(B, T, H, M) coefficients chunk by chunk, a dozen passes over memory per chunk in double; the kernel forms each step's
coefficients in registers (e^{sz} − 1 from expm1 and a sincos of the half angle, vector polynomials in double) and
never stores them, the state in double too. Its backward recomputes each span of 64 steps from a state checkpointed by
the forward (B·H·M·L/64 complex doubles, kept only when a gradient will be asked for) and runs the adjoint backwards
(``irregular_bank.c`` derives the gradients), with the gradient of the gaps τ as well. Real modes (Λ, B, C given as
real tensors: Mega's EMA) take the kernel's real variant (``ib_forward_real``, ``ib_backward_real``): a real state and
adjoint, e^{sz} and e^{sz} − 1 from one expm1, no sines and no complex products (B 8, L 4096, H 128, 64 modes, one
thread: forward+backward in half the complex kernel's time on the same modes; the forward, bound by the exponential,
13-35 % less over three runs).

Gap tables. The coefficients depend on a step only through its gap s = τ_{b,t} (τ is shared by the channels), and the
gaps of a record with dropped samples take few values (τ ∈ {1, 2, 3, …}). :func:`gap_table` finds each row's K
distinct gaps (one sort per row) and each step's index k_t among them; a row with K ≤ L / TABLE_RATIO whose table fits
TABLE_BYTES has its kernel items form the K coefficient sets once (A, E or q, b = E w or s q w per mode, by the same
routine) and step by a lookup, x_t = A[k_t] x_{t-1} + b[k_t] u_t, the backward's recomputation and adjoint too. The
results are those of the per-step path bit for bit (the same expressions on the same doubles); other rows keep it. The
S4D layer at B 8, L 4096, H 128, d_state 64 (32 modes), gaps from dropping 30 % of samples (6 to 9 distinct per row),
one thread: forward 306 -> 74 ms, forward+backward 889 -> 371 ms (the adjoint's arithmetic stays per step; the regular
layer: 13 and 74 ms); Mega's EMA (16 real modes) 72 -> 32 and 268 -> 190 ms. In the kernel a lookup costs about a fifth
of a formed step (forward), and a table of L/4 gaps broke even on forward+backward (L/16: 2.4x and 1.8x faster still):
hence TABLE_RATIO 8.

Phases |τ Δ Im Λ| up to 3.2e6 are reduced by the kernel's vector code; a step whose phases may exceed that takes
libm's sin and cos lane by lane (slower, as exact). Usable where ``native_status("bank_irregular", dtype)`` says so
(:mod:`ssmkit.ops.native.gate`). Under torch.compile the kernel calls are custom ops (:mod:`ssmkit.ops.opaque`);
torch.func transforms, torch.export and forward-mode AD take the PyTorch path. Differentiated itself
(``create_graph``), the backward is that of the PyTorch path (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

import ctypes
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ssmkit.ops._checks import COMPLEX_OF
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.parallel import ptr, run_checked
from ssmkit.ops.opaque import absent_if_zero, kernel_op
from ssmkit.ops.twice import graph_backward, wants_grad

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of irregular_bank.c: (argument types, result type)
    "ib_items": ([_i64] * 2, _i64),
    "ib_ckpt_size": ([_i64] * 2, _i64),
    "ib_forward": ([_p] * 16 + [_i64] * 7, ctypes.c_int),
    "ib_backward": ([_p] * 19 + [_i64] * 7, ctypes.c_int),
    "ib_ckpt_size_real": ([_i64] * 2, _i64),
    "ib_forward_real": ([_p] * 13 + [_i64] * 7, ctypes.c_int),
    "ib_backward_real": ([_p] * 16 + [_i64] * 7, ctypes.c_int),
}
TABLE_RATIO = 8  # a row takes a gap table when its K distinct gaps number at most L / TABLE_RATIO ...
TABLE_BYTES = 4 << 20  # ... and one item's table (K · 6 · M · 8 lanes doubles; half for real modes) fits in 4 MiB


class GapTable(NamedTuple):
    """The rows' distinct gaps for the kernel's gap tables (``irregular_bank.c``'s header comment): ``gaps`` (B, L)
    double, row b's K_b distinct gaps (as bit patterns: 0.0 and −0.0 apart) in its first K_b entries, zeros after;
    ``index`` (B, L) int32, each step's entry, gaps[b, index[b, t]] = τ[b, t]; ``count`` (B,) int64, K_b where the row
    takes its table (:func:`gap_table`'s rule), else 0."""

    gaps: Tensor
    index: Tensor
    count: Tensor


def gap_table(tau: Tensor, modes: int, real_modes: bool) -> Optional[GapTable]:
    """The rows' distinct gaps and each step's index among them, by one sort per row (no unique per row, no data
    dependent shape: the tables are (B, L) whatever K), and the rule that picks the rows whose kernel forms each distinct
    gap's coefficients once (a table lookup per step) instead of per step: K_b · TABLE_RATIO ≤ L and the table's
    K_b · 6 · M · 8 doubles (3 for real modes; 8 lanes: the widest vector) within TABLE_BYTES. None when L <
    TABLE_RATIO (no row can qualify).

    Args:
        tau: (B, L) float64 contiguous gaps.
        modes: M, the modes per channel.
        real_modes: the real variant (half the table per gap).

    Returns:
        a :class:`GapTable`, or None.
    """
    Bsz, L = tau.shape
    if L < TABLE_RATIO:
        return None
    bits, order = tau.view(torch.int64).sort(dim=1)  # equal gaps (equal bit patterns) side by side
    fresh = torch.ones_like(bits, dtype=torch.bool)
    fresh[:, 1:] = bits[:, 1:] != bits[:, :-1]
    rank = fresh.cumsum(1) - 1  # (B, L): each sorted step's entry
    index = torch.empty_like(rank).scatter_(1, order, rank).to(torch.int32)
    gaps = torch.zeros_like(bits).scatter_(1, rank, bits).view(torch.float64)  # duplicates write the same bits
    count = rank[:, -1] + 1
    per_gap = (3 if real_modes else 6) * modes * 8 * 8  # bytes of one gap's entry at 8 lanes
    count = torch.where((count * TABLE_RATIO <= L) & (count * per_gap <= TABLE_BYTES), count, 0)
    return GapTable(gaps, index, count)


def _parts(Z: Tensor) -> list[Tensor]:
    """(H, M) complex128 -> [Re, Im] as contiguous (M, H) doubles (the kernel's layout)."""
    Z = Z.resolve_conj()
    return [Z.real.t().contiguous(), Z.imag.t().contiguous()]


def _run(fns: dict, entry: str, Bsz: int, H: int, args: list) -> None:
    """Run ``entry`` over all items (batch rows × channel blocks) on :func:`run_checked`'s threads."""
    run_checked(fns[entry], fns["ib_items"](Bsz, H), args, fns["openmp"],
                f"bank_irregular_scan native: the {entry[3:]} could not allocate its buffers")


def _ckpt_numel(fns: dict, u: Tensor, M: int, keep: bool, real_modes: bool = False) -> int:
    """The doubles of the forward's checkpoints for u (B, L, H) and M modes (complex, or real: ``real_modes``): every
    item's states every 64 steps (none unless ``keep``)."""
    Bsz, L, H = u.shape
    size = fns["ib_ckpt_size_real" if real_modes else "ib_ckpt_size"](L, M)
    return fns["ib_items"](Bsz, H) * size if keep else 0


def _forward_fake(u, tau, zr, zi, wr, wi, cr, ci, D, x0, gaps, index, count, keep, bilinear):
    Bsz, L, H = u.shape
    n_ckpt = _ckpt_numel(bind("irregular_bank.c", u.dtype, SIGNATURES), u, zr.shape[0], keep)
    return [torch.empty_like(u), u.new_empty(Bsz, H, zr.shape[0], dtype=COMPLEX_OF[u.dtype]),
            u.new_empty(n_ckpt, dtype=torch.float64)]


@kernel_op("bank_irregular_forward", _forward_fake)
def _forward_kernel(
    u: Tensor, tau: Tensor, zr: Tensor, zi: Tensor, wr: Tensor, wi: Tensor, cr: Tensor, ci: Tensor,
    D: Optional[Tensor], x0: Optional[Tensor], gaps: Optional[Tensor], index: Optional[Tensor],
    count: Optional[Tensor], keep: bool, bilinear: bool,
) -> list[Tensor]:
    """The C forward: [y (B, L, H), x_{L-1} (B, H, M) complex, the checkpoints (doubles; empty unless ``keep``)] from u
    (B, L, H), τ (B, L) double, the parts of z, w, C (M, H) double, D (H,) and x0 (B, H, M) complex, or None, and the
    gap tables' inputs (:class:`GapTable`'s fields, or None: every step its own coefficients), all contiguous."""
    fns = bind("irregular_bank.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    M = zr.shape[0]
    y = torch.empty_like(u)
    xL = torch.empty(Bsz, H, M, dtype=COMPLEX_OF[u.dtype], device="cpu")
    ckpt = torch.empty(_ckpt_numel(fns, u, M, keep), dtype=torch.float64, device="cpu")
    args = [ptr(u), ptr(tau), *map(ptr, (zr, zi, wr, wi, cr, ci)), ptr(D), ptr(x0), ptr(y), ptr(xL),
            ptr(ckpt) if keep else None, ptr(gaps), ptr(index), ptr(count), L, H, M, int(bilinear)]
    _run(fns, "ib_forward", Bsz, H, args)
    return [y, xL, ckpt]


def _backward_fake(u, tau, zr, zi, wr, wi, cr, ci, D, g_y, g_x, ckpt, gaps, index, count, bilinear, want_tau,
                   want_x0):
    Bsz, L, H = u.shape
    M = zr.shape[0]
    extra = [u.new_empty(Bsz, L, dtype=torch.float64)] if want_tau else []
    extra += [u.new_empty(Bsz, H, M, dtype=COMPLEX_OF[u.dtype])] if want_x0 else []
    return [torch.empty_like(u), u.new_empty(7, M, H, dtype=torch.float64), *extra]


@kernel_op("bank_irregular_backward", _backward_fake)
def _backward_kernel(
    u: Tensor, tau: Tensor, zr: Tensor, zi: Tensor, wr: Tensor, wi: Tensor, cr: Tensor, ci: Tensor,
    D: Optional[Tensor], g_y: Tensor, g_x: Optional[Tensor], ckpt: Tensor, gaps: Optional[Tensor],
    index: Optional[Tensor], count: Optional[Tensor], bilinear: bool, want_tau: bool, want_x0: bool,
) -> list[Tensor]:
    """The C backward: [∂u (B, L, H), the parameters' gradients (7, M, H) double: ∂z, ∂w, ∂C (re, im) and ∂D (row 6's
    first H values), then ∂τ (B, L) double when ``want_tau``, then ∂x0 (B, H, M) when ``want_x0``], from the forward's
    inputs, its checkpoints, its gap tables' inputs (or None) and the outputs' gradients g_y (B, L, H) and g_x
    (B, H, M) (None: unused), contiguous."""
    fns = bind("irregular_bank.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    M = zr.shape[0]
    g_x = absent_if_zero(g_x)
    n_items = fns["ib_items"](Bsz, H)
    g_u = torch.empty_like(u)
    g_x0 = torch.empty(Bsz, H, M, dtype=COMPLEX_OF[u.dtype], device="cpu") if want_x0 else None
    g = torch.empty(Bsz, 7, M, H, dtype=torch.float64, device="cpu")  # per batch row (a fixed summation order)
    # per item: summed over blocks below
    g_tau = torch.empty(n_items, L, dtype=torch.float64, device="cpu") if want_tau else None
    args = [ptr(u), ptr(tau), *map(ptr, (zr, zi, wr, wi, cr, ci)), ptr(D), ptr(g_y), ptr(g_x), ptr(ckpt), ptr(g_u),
            ptr(g_x0), ptr(g), ptr(g_tau), ptr(gaps), ptr(index), ptr(count), L, H, M, int(bilinear)]
    _run(fns, "ib_backward", Bsz, H, args)
    out = [g_u, g.sum(0)]
    if want_tau:
        out.append(g_tau.view(Bsz, n_items // Bsz, L).sum(1))
    return out + ([] if g_x0 is None else [g_x0])


def _forward_real_fake(u, tau, z, w, C, D, x0, gaps, index, count, keep, bilinear):
    Bsz, L, H = u.shape
    n_ckpt = _ckpt_numel(bind("irregular_bank.c", u.dtype, SIGNATURES), u, z.shape[0], keep, True)
    return [torch.empty_like(u), u.new_empty(Bsz, H, z.shape[0]), u.new_empty(n_ckpt, dtype=torch.float64)]


@kernel_op("bank_irregular_forward_real", _forward_real_fake)
def _forward_real_kernel(
    u: Tensor, tau: Tensor, z: Tensor, w: Tensor, C: Tensor, D: Optional[Tensor], x0: Optional[Tensor],
    gaps: Optional[Tensor], index: Optional[Tensor], count: Optional[Tensor], keep: bool, bilinear: bool,
) -> list[Tensor]:
    """The C forward of real modes: [y (B, L, H), x_{L-1} (B, H, M) of u's dtype, the checkpoints (doubles; empty
    unless ``keep``)] from u (B, L, H), τ (B, L) double, z, w, C (M, H) double, D (H,) and x0 (B, H, M) of u's dtype,
    or None, and the gap tables' inputs (:class:`GapTable`'s fields, or None), all contiguous."""
    fns = bind("irregular_bank.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    M = z.shape[0]
    y = torch.empty_like(u)
    xL = u.new_empty(Bsz, H, M)
    ckpt = torch.empty(_ckpt_numel(fns, u, M, keep, True), dtype=torch.float64, device="cpu")
    args = [ptr(u), ptr(tau), ptr(z), ptr(w), ptr(C), ptr(D), ptr(x0), ptr(y), ptr(xL), ptr(ckpt) if keep else None,
            ptr(gaps), ptr(index), ptr(count), L, H, M, int(bilinear)]
    _run(fns, "ib_forward_real", Bsz, H, args)
    return [y, xL, ckpt]


def _backward_real_fake(u, tau, z, w, C, D, g_y, g_x, ckpt, gaps, index, count, bilinear, want_tau, want_x0):
    Bsz, L, H = u.shape
    M = z.shape[0]
    extra = [u.new_empty(Bsz, L, dtype=torch.float64)] if want_tau else []
    extra += [u.new_empty(Bsz, H, M)] if want_x0 else []
    return [torch.empty_like(u), u.new_empty(4, M, H, dtype=torch.float64), *extra]


@kernel_op("bank_irregular_backward_real", _backward_real_fake)
def _backward_real_kernel(
    u: Tensor, tau: Tensor, z: Tensor, w: Tensor, C: Tensor, D: Optional[Tensor], g_y: Tensor, g_x: Optional[Tensor],
    ckpt: Tensor, gaps: Optional[Tensor], index: Optional[Tensor], count: Optional[Tensor], bilinear: bool,
    want_tau: bool, want_x0: bool,
) -> list[Tensor]:
    """The C backward of real modes: [∂u (B, L, H), the parameters' gradients (4, M, H) double: ∂z, ∂w, ∂C and ∂D
    (row 3's first H values), then ∂τ (B, L) double when ``want_tau``, then ∂x0 (B, H, M) when ``want_x0``], from the
    forward's inputs, its checkpoints, its gap tables' inputs (or None) and the outputs' gradients g_y (B, L, H) and
    g_x (B, H, M) (None: unused)."""
    fns = bind("irregular_bank.c", u.dtype, SIGNATURES)
    Bsz, L, H = u.shape
    M = z.shape[0]
    g_x = absent_if_zero(g_x)
    n_items = fns["ib_items"](Bsz, H)
    g_u = torch.empty_like(u)
    g_x0 = u.new_empty(Bsz, H, M) if want_x0 else None
    g = torch.empty(Bsz, 4, M, H, dtype=torch.float64, device="cpu")  # per batch row (a fixed summation order)
    # per item: summed over blocks below
    g_tau = torch.empty(n_items, L, dtype=torch.float64, device="cpu") if want_tau else None
    args = [ptr(u), ptr(tau), ptr(z), ptr(w), ptr(C), ptr(D), ptr(g_y), ptr(g_x), ptr(ckpt), ptr(g_u), ptr(g_x0),
            ptr(g), ptr(g_tau), ptr(gaps), ptr(index), ptr(count), L, H, M, int(bilinear)]
    _run(fns, "ib_backward_real", Bsz, H, args)
    out = [g_u, g.sum(0)]
    if want_tau:
        out.append(g_tau.view(Bsz, n_items // Bsz, L).sum(1))
    return out + ([] if g_x0 is None else [g_x0])


class _Variant(NamedTuple):
    """How the bank's Function talks to one variant of the kernel: ``pack`` turns z, w, C (H, M) into the kernel's
    parameter arrays, ``forward``/``backward`` are its custom ops, ``unpack`` turns the backward's parameter rows into
    (∂z, ∂w, ∂C (H, M), ∂D (H,) as a row of doubles)."""

    pack: Callable[[Tensor, Tensor, Tensor], list[Tensor]]
    forward: Callable[..., list[Tensor]]
    backward: Callable[..., list[Tensor]]
    unpack: Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


def _complex_pair(g: Tensor, r: int) -> Tensor:
    """Rows r, r + 1 of the backward's (rows, M, H) doubles as one (H, M) complex gradient."""
    return torch.complex(g[r], g[r + 1]).t()


_VARIANTS = {  # by whether the modes are real
    False: _Variant(lambda z, w, C: [*_parts(z), *_parts(w), *_parts(C)], _forward_kernel, _backward_kernel,
                    lambda g: (_complex_pair(g, 0), _complex_pair(g, 2), _complex_pair(g, 4), g[6, 0])),
    True: _Variant(lambda z, w, C: [p.t().contiguous() for p in (z, w, C)], _forward_real_kernel,
                   _backward_real_kernel, lambda g: (g[0].t(), g[1].t(), g[2].t(), g[3, 0])),
}


class _NativeBank(torch.autograd.Function):
    """The irregularly sampled bank by the C kernel (module docstring), its complex or real variant.

    Inputs: real (the variant: Λ, B, C were real tensors), u (B, L, H) real contiguous, τ (B, L) real, z, w, C (H, M)
    complex128 (float64 for real modes), D (H,) of u's dtype or None, x0 (B, H, M) complex of u's precision (u's dtype
    for real modes) or None, keep (checkpoint for a backward), bilinear. Outputs y (B, L, H) and x_{L-1} (B, H, M).
    """

    @staticmethod
    def forward(ctx, real, u, tau, z, w, C, D, x0, keep, bilinear):  # type: ignore[override]
        variant = _VARIANTS[real]
        pars = variant.pack(z, w, C)
        tau_c = tau.to(torch.float64).contiguous()
        Dc = None if D is None else D.contiguous()
        x0c = None if x0 is None else x0.resolve_conj().contiguous()
        table = gap_table(tau_c, z.shape[1], real) or GapTable(None, None, None)
        y, xL, ckpt = variant.forward(u, tau_c, *pars, Dc, x0c, *table, keep, bilinear)
        ctx.save_for_backward(u, tau_c, *pars, Dc, ckpt, *table, tau, z, w, C, D, x0)
        ctx.real, ctx.n_pars, ctx.bilinear = real, len(pars), bilinear
        ctx.has_D, ctx.has_x0 = D is not None, x0 is not None
        ctx.set_materialize_grads(False)
        return y, xL

    @staticmethod
    def backward(ctx, g_y, g_x):  # type: ignore[override]
        n = ctx.n_pars
        saved = ctx.saved_tensors  # (read once: torch.utils.checkpoint unpacks each saved tensor once)
        u, tau_c, *pars = saved[: 2 + n]
        Dc, ckpt, *table = saved[2 + n: 7 + n]
        given = saved[7 + n:]  # tau, z, w, C, D, x0 as passed
        if torch.is_grad_enabled():  # create_graph: a double backward, through the PyTorch path (ops/twice.py)
            path = lambda *a: _torch_path(*a, ctx.bilinear)  # noqa: E731
            return (None, *graph_backward(path, (u, *given), ctx.needs_input_grad[1:8], (g_y, g_x)), None, None)
        g_y = torch.zeros_like(u) if g_y is None else g_y.contiguous()
        g_xc = None if g_x is None else g_x.resolve_conj().contiguous()
        want_tau, want_x0 = ctx.needs_input_grad[2], ctx.has_x0
        variant = _VARIANTS[ctx.real]
        g_u, g, *rest = variant.backward(u, tau_c, *pars, Dc, g_y, g_xc, ckpt, *table, ctx.bilinear, want_tau,
                                         want_x0)
        g_tau = rest.pop(0).to(given[0].dtype) if want_tau else None
        g_x0 = rest.pop(0) if want_x0 else None
        g_z, g_w, g_C, g_D = variant.unpack(g)
        return None, g_u, g_tau, g_z, g_w, g_C, (g_D.to(Dc.dtype) if ctx.has_D else None), g_x0, None, None


def _torch_path(u, tau, z, w, C, D, x0, bilinear):
    """The op in PyTorch from the kernel's inputs (the double backward's path): ZOH from z and w themselves
    (:func:`ssmkit.ops.irregular_bank.real_zoh_scan`, :func:`_complex_zoh_path`); bilinear as the bank of
    :mod:`ssmkit.ops.irregular_bank` with Δ = 1, Λ = z and B = w."""
    from ssmkit.ops.irregular_bank import bank_irregular_scan_chunked, real_zoh_scan

    if not bilinear and not z.is_complex():  # real ZOH: from w itself (B = w z, then B/Λ, cancels in ∂z: Mega's EMA)
        return real_zoh_scan(u, tau, z, w, C, D, u.new_zeros(u.shape[0], *z.shape) if x0 is None else x0)
    if not bilinear:  # complex ZOH alike (S4D, DSS, DLR: ∂z off by ~1e-16 absolute where it is 1e-26 at long gaps)
        return _complex_zoh_path(u, tau, z, w, C, D, x0)
    one = torch.ones(z.shape[0], dtype=u.dtype, device=u.device)
    return bank_irregular_scan_chunked(u, z, w.to(z.dtype), C.to(z.dtype), one, tau, D, "bilinear", x0)


def _complex_zoh_chunk(u_c, tau_c, h0, z, w, C, D):
    """One chunk of :func:`_complex_zoh_path`: A = e^{sz}, b = (e^{sz} − 1) w u with e^{sz} and e^{sz} − 1 by
    :func:`ssmkit.ops.irregular.zoh_exp_parts` (no cancellation in the values or their derivatives), the recurrence in
    the state's dtype and the read-out Re(Σ C h)."""
    from ssmkit.ops.irregular import zoh_exp_parts
    from ssmkit.ops.irregular_bank import _read_out
    from ssmkit.ops.recurrence import linear_recurrence

    s = tau_c.to(z.real.dtype)[..., None, None] * z  # (B, T, H, M)
    A_re, A_im, E_re = zoh_exp_parts(s.real, s.imag)
    b = torch.complex(E_re, A_im) * w * u_c[..., None].to(A_re.dtype)  # (B, T, H, M): (e^{sz} − 1) w u
    h, h_last = linear_recurrence(torch.complex(A_re, A_im).to(h0.dtype), b.to(h0.dtype), h0, backend="chunked")
    y = _read_out(h, C)
    return (y if D is None else y + D * u_c), h_last


def _complex_zoh_path(u, tau, z, w, C, D, x0):
    """The complex ZOH op in PyTorch from z and w = B/Λ as the kernel takes them (the double backward's path): never
    B = w z and then B/Λ, whose derivative in z is two terms of size |w ∂w/z| cancelling to round-off (an absolute
    error of ~1e-16 in ∂z, so in the gradients of Δ and Λ where they are 1e-26 at long gaps: S4D, DSS, DLR),
    chunks of 64 steps under activation checkpoints (:func:`ssmkit.ops.backend.checkpointed_chunks`)."""
    from ssmkit.ops.backend import checkpointed_chunks

    h0 = u.new_zeros(u.shape[0], *z.shape, dtype=COMPLEX_OF[u.dtype]) if x0 is None else x0
    return checkpointed_chunks(_complex_zoh_chunk, u, tau, h0, 64, z, w, C, D)


def bank_unchecked(u, Lambda, B, C, dt, intervals, D, rule, state, return_state):
    """The bank by the kernel after the public function's checks (the smoke call enters here): z = Δ Λ and the rule's
    input vector w (B/Λ, or Δ B) formed in double by autograd-recorded torch ops, then the kernel: its complex
    variant, or its real one where Λ, B and C are real tensors (real modes: a real state)."""
    Lw, Bw, Cw, dtw = (t.to(torch.complex128 if t.is_complex() else torch.float64) for t in (Lambda, B, C, dt))
    z = dtw[:, None] * Lw
    bilinear = rule == "bilinear"
    w = dtw[:, None] * Bw if bilinear else Bw / Lw
    keep = wants_grad(u, intervals, Lambda, B, C, dt, D, state)
    D = None if D is None else D.to(u.dtype)
    real = not Lambda.is_complex()
    y, x = apply_function(_NativeBank, real, u.contiguous(), intervals, z, w, Cw, D, state, keep, bilinear)
    return y, (x if return_state else None)


def bank_ratio_unchecked(u, z, w, C, intervals, D, state, return_state):
    """The real ZOH bank by the kernel's real variant from the kernel's own inputs: z = Δ Λ and w = B/Λ (H, M) real,
    given rather than formed as B/Λ, C (H, M) real, after the caller's checks (u on the CPU where
    ``prefer_native("bank_irregular", u)``). For a layer that has w in closed form (Mega's EMA, w = −β/δ:
    :mod:`ssmkit.layers.ema`): w = B/Λ with B ∝ Λ would return the gradient of z as two terms of size |w ∂w/z| that
    cancel to round-off, where the kernel's own ∂z = Σ s e^{sz} (∂A + w ∂b) is small (e^{sz} at long gaps)."""
    keep = wants_grad(u, intervals, z, w, C, D, state)
    z, w, C = (t.to(torch.float64) for t in (z, w, C))
    D = None if D is None else D.to(u.dtype)
    y, x = apply_function(_NativeBank, True, u.contiguous(), intervals, z, w, C, D, state, keep, False)
    return y, (x if return_state else None)
