"""Scans over a symbolic sequence length: ``torch.export`` with a dynamic L (``Dim`` on the time axis).

The chunked scans (:mod:`ssmkit.ops.chunked`, :mod:`ssmkit.ops.recurrence`, :mod:`ssmkit.ops.ssd`,
:mod:`ssmkit.ops.selective`) pick their chunk length as min(T, L), pad only when L is not a multiple of it and
carry the state across the L/T chunks by a Python loop. With L symbolic each of those is a guard on L, and
``torch.export`` refuses a guard that does not hold over the whole declared range ("Constraints violated (L)").
While exporting with a symbolic L they take the forms here instead: a fixed chunk length, padding to one whole chunk
more than needed (nc = ⌊(L + 2T - 1)/T⌋ >= 2, a form torch's symbolic shapes can bound, so reshapes need no guard
on nc == 1), the crop to L as a gather, and the carry as one ``scan`` higher-order op over the symbolic chunk
count, which the exported program runs for any length.

The carry is the first-order recurrence h_c = P_c ⊙ h_{c-1} + g_c (arXiv 2303.06349 eq. 1, over chunks).
"""

from __future__ import annotations

import torch

from ssmkit.ops.opaque import exporting

try:  # a prototype higher-order op of torch; older releases lack it
    from torch._higher_order_ops.scan import scan_op as _scan_op
except ImportError:  # pragma: no cover - torch without the op
    _scan_op = None


def scan(
    step,
    init: torch.Tensor,
    xs: tuple[torch.Tensor, ...],
    *,
    dim: int = 0,
    reverse: bool = False,
    constants: tuple[torch.Tensor, ...] = (),
):
    """The ``scan`` higher-order op of torch: carry, y_t = step(carry, (x_t for x in xs)) along ``dim`` of every x
    (``step(carry, x_t, constants)`` when ``constants`` are given).

    torch's public wrapper (``torch._higher_order_ops.scan.scan``) compiles a nested function with dynamo at every
    call, and dynamo keeps that function's guards across calls: a second export in the same process (another batch
    or dtype) re-checked the first one's guards on its own symbols and failed with "Constraints violated (B) ...
    2 != B". While ``torch.export`` traces, the op itself is traced into the program directly (make_fx traces its
    body), so the op is called without the wrapper.

    Args:
        step: (carry, tuple of x_t) -> (next carry, y_t), all tensors; pure.
        init: the first carry.
        xs: the scanned inputs, each with the scanned axis at ``dim`` (one length).
        dim: the scanned axis (non-negative).
        reverse: from the last index down to the first (y keeps the input order).
        constants: tensors the step reads at every index (the op's additional inputs): a tensor the step closes
            over instead failed ONNX conversion ("Attempting to use FunctionalTensor on its own").

    Returns:
        the last carry, and the y_t stacked along ``dim``.
    """
    if _scan_op is None:  # pragma: no cover - torch without the op
        raise RuntimeError(
            f"exporting with a dynamic sequence length needs torch's scan op (torch._higher_order_ops.scan), which "
            f"torch {torch.__version__} lacks: upgrade torch, or export at a fixed length"
        )
    init = _in_the_inputs_graph(init, (*xs, *constants))
    xs = [x.movedim(dim, 0) if dim else x for x in xs]
    if reverse:
        xs = [x.flip(0) for x in xs]

    n_xs = len(xs)

    def flat(carry, *args):
        x, consts = args[:n_xs], args[n_xs:]
        return list(step(carry, x, consts) if constants else step(carry, x))

    last, ys = _scan_op(flat, [init], xs, additional_inputs=tuple(constants))
    ys = ys.flip(0) if reverse else ys
    return last, (ys.movedim(0, dim) if dim else ys)


def _in_the_inputs_graph(init: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``init``'s values, in the autograd graph of every floating-point input: the first carry of :func:`scan`.

    torch 2.11's scan op (the GPU machine's torch) passes the gradient from one step's carry to the one before only
    where the first carry requires grad: with a zero or given state that does not, every gradient that crossed a
    chunk came out wrong (an exported S4D's 3e-2 to 1.7 off at 70 steps, Mamba's too; torch 2.13 is right either
    way). ``where(False, s, init)``, s one element of each input, gives init's own values and sends exactly zero to
    the inputs (no 0·inf); it is in every program, as one exported without a gradient may run with one. A standard
    contiguous init gives a standard contiguous carry (the ONNX Scan and the carries need those strides)."""
    links = [x[(0,) * x.dim()] for x in inputs if x.is_floating_point() or x.is_complex()]
    if not links:
        return init
    link = sum(x.real if x.is_complex() else x for x in links)  # () real
    never = torch.zeros((), dtype=torch.bool, device=init.device)
    return torch.where(never, link.to(dtype=init.dtype, device=init.device), init)


def symbolic_length(L) -> bool:
    """Whether a length is symbolic while ``torch.export`` traces: the guard-free forms must be taken.

    Under ``torch.compile`` with a dynamic L a guard only costs a recompile, so the eager forms stay.

    Args:
        L: the sequence length (an int, or a ``torch.SymInt`` while tracing).

    Returns:
        True when L is a SymInt and an export is under way.
    """
    return isinstance(L, torch.SymInt) and exporting()


def ceil_sqrt(n):
    """⌈√n⌉ of an int n >= 0 (1 for n <= 1), by comparisons only, so that torch.compile traces it at a symbolic n.

    ``math.isqrt`` of a SymInt is a graph break under torch.compile (dynamo cannot put an int-returning call into a
    graph): a chunked scan compiled with a dynamic L broke its graph there and recompiled the frames after the break
    at every new length (probe 18). Doubling, then bisection: ~2·log2(√n) comparisons, each a guard on n's range
    while tracing (exact integers, no float square root).

    Args:
        n: an int, or a SymInt while tracing.

    Returns:
        the smallest int G >= 1 with G·G >= n (a plain int).
    """
    lo, hi = 0, 1
    while hi * hi < n:  # lo² < n <= hi² afterwards
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid * mid < n:
            lo = mid
        else:
            hi = mid
    return hi


def chunk_count(L, T: int):
    """The number of chunks of T steps a chunked scan of L steps runs in: ⌈L/T⌉, or while exporting with a symbolic
    L one more, all padding, written as ⌊(L + 2T - 1)/T⌋.

    With the count >= 2 provable and written as a single floor of a positive sum, torch's reshapes of the padded
    sequence need no guard on a count of 1; ``-(-L // T)`` gave a guard that the count is not 1 (over the batch of 2:
    "2 mod twice the count is not 0"), and ``-(-L // T) + 1`` one that 128·(k + 1) is a multiple of 2·(k + 1),
    which it could not prove.

    Args:
        L: the sequence length (an int, or a SymInt while tracing).
        T: the chunk length.

    Returns:
        the chunk count (an int, or a SymInt).
    """
    if symbolic_length(L):
        return (L + 2 * T - 1) // T
    return -(-L // T)


def keep_first(x: torch.Tensor, dim: int, L) -> torch.Tensor:
    """The first L entries of x along ``dim`` (at most x's size there, e.g. a padded scan's output).

    A slice (a view) for an int L, or outside an export. While exporting with a symbolic L a gather at 0..L-1: a
    slice ``x[:, :L]`` makes torch guard L <= the padded size, which its symbolic shapes cannot prove for a padded
    size such as T·⌊(L + 2T - 1)/T⌋, and a gather states nothing about sizes (its bounds are checked as it runs).

    Args:
        x: a tensor.
        dim: the axis to crop (non-negative).
        L: the number of entries to keep.

    Returns:
        x's first L entries along ``dim`` (a view, or a copy while exporting with a symbolic L).
    """
    if not symbolic_length(L):
        return x.narrow(dim, 0, L)
    return x.index_select(dim, torch.arange(L, device=x.device))


def carry(
    P: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None, dim: int, reverse: bool = False, pair: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """States of h_c = P_c ⊙ h_{c-1} + g_c along ``dim`` of g (symbolic length), by one ``scan`` op.

    Args:
        P: the gates: g's shape (time-varying) or g's shape without ``dim`` (time-invariant, broadcast along it).
        g: (..., L, ...) inputs, the scanned axis (the chunks, of symbolic length L) at ``dim``; real or complex.
        h0: the state before the first step (g's shape without ``dim``; after the last one when reversed), or
            None for zeros.
        dim: the scanned axis of g (non-negative).
        reverse: scan from the last index down to the first.
        pair: P, g and h0 are complex numbers stored as real and imaginary parts on a last axis of 2 (how a
            complex carry is scanned: see the body); False for real or complex tensors.

    Returns:
        the state *before* each step (g's shape: h_{c-1}, or h_{c+1} when reversed), and the state after the
        last step (g's shape without ``dim``).
    """
    if P.dim() < g.dim():  # time-invariant: broadcast along the scanned axis, so that the op takes no closure
        P = P.unsqueeze(dim).expand_as(g)
    h = h0 if h0 is not None else g.new_zeros(g.select(dim, 0).shape)
    if g.is_complex():  # as real pairs: the op's autograd cannot slice complex tensors ("select_copy does not
        # support automatic differentiation for outputs with complex dtype"), so exporting with parameters that
        # require grad (torch.export's default) failed, as did running such a program with a gradient
        pairs = (torch.view_as_real(t.to(g.dtype).resolve_conj()) for t in (P.expand_as(g), g, h))
        before, last = carry(*pairs, dim, reverse, pair=True)
        return torch.view_as_complex(before), torch.view_as_complex(last)
    # the op's tracer rebuilds a view from its base (a complex view of real storage came back with the wrong last
    # axis), so the inputs enter as tensors of their own; the carry's layout must stay the same: contiguous in and out
    P, g, h = P.clone(), g.clone(), h.contiguous().clone()

    def step(h_prev, inputs):
        P_c, g_c = inputs
        if pair:  # real and imaginary parts on the last axis: P h + g in complex arithmetic
            pr, pi, hr, hi = P_c[..., 0], P_c[..., 1], h_prev[..., 0], h_prev[..., 1]
            h_next = g_c + torch.stack((pr * hr - pi * hi, pr * hi + pi * hr), dim=-1)
            return h_next.contiguous(), h_prev.clone()
        return torch.addcmul(g_c, P_c, h_prev).contiguous(), h_prev.clone()  # (the output may not alias the carry)

    last, before = scan(step, h, (P, g), dim=dim, reverse=reverse)
    return before, last
