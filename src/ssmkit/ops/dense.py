"""Final state of a dense (non-diagonal) linear time-invariant recurrence, by chunked GEMMs.

For a bank of H systems x_l = Ā x_{l-1} + B̄ u_l (the discretised SSM of "Efficiently Modeling Long Sequences with
Structured State Spaces", S4, arXiv 2111.00396 eq. 3, with a dense Ā such as the DPLR state matrix), the state
after the last of L inputs is

    x_{L-1} = Ā^L x_{-1} + Σ_{l<L} Ā^{L-1-l} B̄ u_l.

Two paths, same signature:
- ``dense_final_state_reference``: the recurrence, one matrix-vector product per step (the test oracle).
- ``dense_final_state_chunked``: with chunks of T inputs (T a power of two near √L, the sequence padded with zeros
  at the front to a multiple of T, which leaves the sum unchanged):
    1. table W_k = Ā^k B̄ (k < T) and Ā^T by log2(T) doublings (in float64/complex128, then cast);
    2. the input sum of every chunk, S_c = Σ_j Ā^{T-1-j} B̄ u_{cT+j}, as one real GEMM (B·L/T, T) @ (T, N) per
       channel (complex W split into real and imaginary columns);
    3. a carry loop x_c = Ā^T x_{c-1} + S_c over the L/T chunks;
    4. the initial state's term Ā^L x_{-1} (matrix power by squaring, in double precision).
  Work ≈ B·L·H·N (the GEMM) + (L/T)·B·H·N² + log(L)·H·N³; nothing of size (B, L, H, N) is allocated.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ssmkit.ops._checks import COMPLEX_OF
from ssmkit.ops.backend import dispatch
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.opaque import absent_if_zero, custom_ops_allowed, kernel_op

_REAL_OF = {torch.float32: torch.float32, torch.float64: torch.float64,
            torch.complex64: torch.float32, torch.complex128: torch.float64}


def _work_dtype(u: Tensor, A_bar: Tensor) -> torch.dtype:
    """The result's dtype: u's precision, complex when A_bar is complex."""
    return COMPLEX_OF[u.dtype] if A_bar.is_complex() else u.dtype


def _check_dense_args(u: Tensor, A_bar: Tensor, B_bar: Tensor, state: Tensor | None) -> None:
    if not isinstance(u, Tensor) or u.dtype not in COMPLEX_OF:
        got = u.dtype if isinstance(u, Tensor) else type(u).__name__
        raise ValueError(f"u must be a real (B, L, H) float32 or float64 tensor; got {got}")
    if u.dim() != 3 or u.shape[1] < 1:
        raise ValueError(f"u must be (B, L, H) with L >= 1; got shape {tuple(u.shape)}")
    H = u.shape[2]
    if not isinstance(A_bar, Tensor) or A_bar.dtype not in _REAL_OF:
        raise ValueError(f"A_bar must be a (H, N, N) float or complex tensor; got {getattr(A_bar, 'dtype', A_bar)}")
    if A_bar.dim() != 3 or A_bar.shape[0] != H or A_bar.shape[1] != A_bar.shape[2]:
        raise ValueError(f"A_bar must be (H, N, N) with H = {H} (from u); got shape {tuple(A_bar.shape)}")
    if _REAL_OF[A_bar.dtype] not in (u.dtype, torch.float64):
        raise ValueError(f"A_bar must have u's precision ({u.dtype}) or double precision; got {A_bar.dtype}")
    N = A_bar.shape[1]
    if not isinstance(B_bar, Tensor) or B_bar.dtype != A_bar.dtype or tuple(B_bar.shape) != (H, N):
        got = f"{tuple(B_bar.shape)} {B_bar.dtype}" if isinstance(B_bar, Tensor) else type(B_bar).__name__
        raise ValueError(f"B_bar must be (H, N) = ({H}, {N}) {A_bar.dtype} like A_bar; got {got}")
    if state is not None:
        want = (u.shape[0], H, N)
        dtypes = {A_bar.dtype, _work_dtype(u, A_bar)}
        if not isinstance(state, Tensor) or state.dtype not in dtypes or tuple(state.shape) != want:
            got = f"{tuple(state.shape)} {state.dtype}" if isinstance(state, Tensor) else type(state).__name__
            names = " or ".join(sorted(str(d) for d in dtypes))
            raise ValueError(f"state must be (B, H, N) = {want} {names}; got {got}")


def dense_final_state_reference(u: Tensor, A_bar: Tensor, B_bar: Tensor, state: Tensor | None = None) -> Tensor:
    """Final state of x_l = Ā x_{l-1} + B̄ u_l by the recurrence (arXiv 2111.00396 eq. 3), x_{-1} = state or 0.

    The loop runs in A_bar's precision (u and state converted to it); the result is cast to u's precision.

    Args:
        u: (B, L, H) real input (float32 or float64).
        A_bar: (H, N, N) real or complex state matrix Ā, in u's precision or in double precision.
        B_bar: (H, N) input vector B̄, A_bar's dtype.
        state: (B, H, N) state x_{-1} before the first input (A_bar's dtype or the result's), or None for zeros.

    Returns:
        x_{L-1} (B, H, N) in u's precision, complex when A_bar is complex.
    """
    _check_dense_args(u, A_bar, B_bar, state)
    Bsz, L, H = u.shape
    N = A_bar.shape[1]
    x = torch.zeros(Bsz, H, N, dtype=A_bar.dtype, device=u.device) if state is None else state.to(A_bar.dtype)
    u_wide = u.to(_REAL_OF[A_bar.dtype])  # (B, L, H)
    for l in range(L):
        x = torch.einsum("hnm,bhm->bhn", A_bar, x) + B_bar * u_wide[:, l, :, None]  # (B, H, N)
    return x.to(_work_dtype(u, A_bar))


def _chunk(L: int) -> int:
    """Chunk length T: the power of two nearest √L (balances the T-step table against the L/T-step carry)."""
    return 1 << max(0, round(math.log2(L) / 2))


def chunk_length(L: int) -> int:
    """The chunk length T of :func:`dense_final_state_chunked` for inputs of length L: the power of two nearest √L.

    Args:
        L: an int >= 1 (a plain int: a symbolic length has no log; pass a bound on it instead).

    Returns:
        T (a power of two).
    """
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be an int >= 1; got {L!r}")
    return _chunk(L)


def matrix_power_bits(A: Tensor, n, bits: int) -> Tensor:
    """Ā^n for an integer 0 <= n < 2^bits, by squaring over a fixed number of bits: Ā^n = Π_{b<bits} (Ā^{2^b})^{n_b}
    with n = Σ_b n_b 2^b.

    ``torch.linalg.matrix_power`` takes an int exponent, so a traced graph with a symbolic n specialises it (one graph
    per n). Here n enters as a value (a 0-d int64 tensor made from it, ``torch.full``), each factor is chosen by
    ``torch.where`` on its bit (exact: I or Ā^{2^b}, no arithmetic mix), and the graph depends on ``bits`` only:
    2·bits - 1 matrix products, whatever n is.

    Args:
        A: (..., N, N) square matrices.
        n: the exponent, an int or a SymInt while tracing, 0 <= n < 2^bits (not checked for a SymInt).
        bits: the number of bits (>= 1).

    Returns:
        (..., N, N) Ā^n.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be an int >= 1; got {bits!r}")
    if isinstance(n, int) and not 0 <= n < 1 << bits:
        raise ValueError(f"n must be in [0, 2^bits) = [0, {1 << bits}); got {n}")
    n_t = torch.full((), n, dtype=torch.int64, device=A.device)  # as_tensor specialised a symbolic n under dynamo
    set_bits = torch.bitwise_and(torch.bitwise_right_shift(n_t, torch.arange(bits, device=A.device)), 1) == 1  # (bits,)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)  # (..., N, N)
    result, square = eye, A  # square = Ā^{2^b}
    for b in range(bits):
        result = torch.where(set_bits[b], result @ square, result)  # (..., N, N)
        if b + 1 < bits:
            square = square @ square
    return result


class DenseStateTables(NamedTuple):
    """What :func:`dense_final_state_chunked` forms from Ā and B̄ alone (step 1 and step 4's power), for reuse across
    inputs of one length while Ā and B̄ keep their values (from :func:`dense_state_tables`).

    Fields:
        W: (H, N, T) Ā^k B̄ for k < T (T = the chunk length), in the result's dtype.
        A_T: (H, N, N) Ā^T, the result's dtype.
        A_L: (H, N, N) Ā^L for an initial state's term, the result's dtype; None when not formed.
        L: the input length the tables are for (a SymInt in a traced graph with a dynamic length).
    """

    W: Tensor
    A_T: Tensor
    A_L: Tensor | None
    L: int


def dense_state_tables(
    A_bar: Tensor,
    B_bar: Tensor,
    L: int,
    dtype: torch.dtype,
    initial_state: bool = False,
    chunk: int | None = None,
    max_length: int | None = None,
) -> DenseStateTables:
    """Step 1 of the module docstring (and step 4's Ā^L): the tables of the chunked final state for inputs of length L.

    Formed by doubling in double precision whatever the result's precision (float32 squarings lose the slow modes:
    2e-4 relative error at L = 4096 for S4-LagT, 6e-7 with float64 tables), then cast to ``dtype``.

    Any power-of-two chunk length gives the same final state (to rounding): a traced graph with a dynamic L takes one
    fixed for a range of lengths (``chunk``) and Ā^L by :func:`matrix_power_bits` over ``max_length``'s bits, so
    that the graph depends on L only as a value (S4 under torch.compile: one graph per attuned length L_k).

    Args:
        A_bar: (H, N, N) real or complex state matrix Ā (double precision for the most accurate float32 tables).
        B_bar: (H, N) input vector B̄, A_bar's dtype.
        L: the input length (>= 1; a SymInt while tracing with ``max_length``).
        dtype: the result's dtype (the input's precision; complex when A_bar is complex).
        initial_state: also form Ā^L, for an initial state's term.
        chunk: the chunk length T, a power of two, or None for :func:`chunk_length` of L.
        max_length: None, or a bound L <= max_length: Ā^L by squarings over its bits (no int exponent), for a
            symbolic L.

    Returns:
        the :class:`DenseStateTables`.
    """
    symbolic_ok = max_length is not None and not isinstance(L, (int, bool))  # a SymInt under make_fx/export
    if not symbolic_ok and (isinstance(L, bool) or not isinstance(L, int) or L < 1):
        raise ValueError(f"L must be an int >= 1; got {L!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or chunk & (chunk - 1)):
        raise ValueError(f"chunk must be a power of two >= 1, or None; got {chunk!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be an int >= 1, or None; got {max_length!r}")
    if max_length is not None and not symbolic_ok and L > max_length:
        raise ValueError(f"L must be <= max_length = {max_length}; got {L}")
    T = _chunk(L) if chunk is None else chunk
    wide = torch.complex128 if A_bar.is_complex() else torch.float64
    W = B_bar.to(wide).unsqueeze(-1)  # (H, N, 1)
    A_T = A_bar.to(wide)  # (H, N, N): Ā^(number of columns of W)
    while W.shape[-1] < T:
        W = torch.cat([W, torch.bmm(A_T, W)], dim=-1)  # (H, N, 2k); bmm: one aten op (matmul dispatches six)
        A_T = torch.bmm(A_T, A_T)  # (H, N, N)
    A_L = None
    if initial_state:  # squarings in double
        A_wide = A_bar.to(wide)  # (H, N, N)
        if max_length is None:
            A_L = torch.linalg.matrix_power(A_wide, L)  # (H, N, N)
        else:
            A_L = matrix_power_bits(A_wide, L, max_length.bit_length())  # (H, N, N): L a value, not a guard
        A_L = A_L.to(dtype)
    return DenseStateTables(W.to(dtype), A_T.to(dtype), A_L, L)


def _chunk_sums(u: Tensor, W: Tensor, n_chunks: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Step 2 of the module docstring, the chunk sums S[h, b, c] = Σ_j W[h, :, T-1-j] u[b, cT+j, h] after front
    zero-padding to n_chunks·T (n_chunks = ⌈L/T⌉, or as given: >= L/T): (U (H, B·n_chunks, T), W_rev (H, T, N),
    S (H, B, n_chunks, N)) from u (B, L, H) and W (H, N, T)."""
    Bsz, L, H = u.shape
    N, T = W.shape[1], W.shape[2]
    n_chunks = -(-L // T) if n_chunks is None else n_chunks
    u_pad = torch.nn.functional.pad(u, (0, 0, n_chunks * T - L, 0))  # (B, n_chunks·T, H)
    U = u_pad.reshape(Bsz * n_chunks, T, H).permute(2, 0, 1)  # (H, B·n_chunks, T)
    W_rev = W.flip(-1).transpose(1, 2)  # (H, T, N): row j holds Ā^{T-1-j} B̄
    if W_rev.is_complex():
        S = torch.bmm(U, torch.view_as_real(W_rev).reshape(H, T, 2 * N))  # (H, B·n_chunks, 2N)
        S = torch.view_as_complex(S.reshape(H, Bsz, n_chunks, N, 2))  # (H, B, n_chunks, N)
    else:
        S = torch.bmm(U, W_rev).reshape(H, Bsz, n_chunks, N)  # (H, B, n_chunks, N)
    return U, W_rev, S


def _chunk_sums_and_carry(u: Tensor, W: Tensor, A_T: Tensor, n_chunks: int | None = None) -> Tensor:
    """Steps 2-3 of the module docstring: the state x_{L-1} from zeros, (H, B, N), from u (B, L, H) and the tables
    W (H, N, T), A_T (H, N, N) (:class:`DenseStateTables`), over ⌈L/T⌉ chunks or ``n_chunks`` >= L/T (the leading
    ones zeros: a count that does not follow L, for a traced symbolic L)."""
    S = _chunk_sums(u, W, n_chunks)[2]  # (H, B, n_chunks, N)
    n_chunks = S.shape[2]
    # 3. Carry across chunks: x_c = Ā^T x_{c-1} + S_c with x kept as rows, x_c = x_{c-1} (Ā^T)ᵀ + S_c: the (B, N) @
    #    (N, N) form runs 2.6x faster than (N, N) @ (N, B) in MKL's batched GEMM at B 8, N 64 (one contiguous copy
    #    of S makes every chunk's rows contiguous; unbind's backward is one stack, not a zero fill per chunk).
    S = S.permute(2, 0, 1, 3).contiguous().unbind(0)  # n_chunks x (H, B, N)
    A_T_rows = A_T.transpose(1, 2)  # (H, N, N): (Ā^T)ᵀ
    x = S[0]  # (H, B, N)
    for c in range(1, n_chunks):
        x = torch.baddbmm(S[c], x, A_T_rows)  # (H, B, N)
    return x


def _carry_fake(u: Tensor, W: Tensor, A_T: Tensor) -> list[Tensor]:
    return [u.new_empty(A_T.shape[0], u.shape[0], A_T.shape[1])]


@kernel_op("dense_carry_forward", _carry_fake)
def _carry_forward(u: Tensor, W: Tensor, A_T: Tensor) -> list[Tensor]:
    """[:func:`_chunk_sums_and_carry`], as one op in a compiled graph."""
    return [_chunk_sums_and_carry(u, W, A_T)]


def _carry_backward_fake(u: Tensor, W: Tensor, A_T: Tensor, g: Tensor) -> list[Tensor]:
    return [torch.empty_like(u), torch.empty_like(W), torch.empty_like(A_T)]


@kernel_op("dense_carry_backward", _carry_backward_fake)
def _carry_backward(u: Tensor, W: Tensor, A_T: Tensor, g: Tensor) -> list[Tensor]:
    """[∂u (B, L, H), ∂W (H, N, T), ∂A_T (H, N, N)] of :func:`_chunk_sums_and_carry` (real tables) for the output's
    gradient g (H, B, N); zeros without any work when g is zero (a compiled graph's gradient of an unused state).

    The carry in rows, x_0 = S_0 and x_c = x_{c-1} R + S_c with R = (Ā^T)ᵀ, gives g_{c-1} = g_c Rᵀ, ∂S_c = g_c,
    ∂R = Σ_{c>=1} x_{c-1}ᵀ g_c (one GEMM over the chunks, the states recomputed); then the chunk sums' GEMM
    S = U W_rev: ∂W_rev = Uᵀ ∂S, ∂U = ∂S W_revᵀ."""
    if absent_if_zero(g) is None:
        return [torch.zeros_like(u), torch.zeros_like(W), torch.zeros_like(A_T)]
    Bsz, L, H = u.shape
    N, T = W.shape[1], W.shape[2]
    U, W_rev, S = _chunk_sums(u, W)  # (H, B·n_chunks, T), (H, T, N), (H, B, n_chunks, N)
    n_chunks = S.shape[2]
    S = S.permute(2, 0, 1, 3)  # (n_chunks, H, B, N)
    R = A_T.transpose(1, 2)  # (H, N, N)
    xs = [S[0]]  # x_c for c < n_chunks - 1, (H, B, N) each
    for c in range(1, n_chunks - 1):
        xs.append(torch.baddbmm(S[c], xs[-1], R))
    gS = [g]  # ∂S_c from the last chunk down
    gc = g.contiguous()  # (H, B, N)
    R_t = A_T  # Rᵀ
    for _ in range(n_chunks - 1):
        gc = torch.bmm(gc, R_t)  # g_{c-1} = g_c Rᵀ
        gS.append(gc)
    gS = torch.stack(gS[::-1], dim=2)  # (H, B, n_chunks, N)
    if n_chunks > 1:
        X = torch.stack(xs, dim=2).reshape(H, Bsz * (n_chunks - 1), N)  # (H, B·(n_chunks-1), N): x_0 .. x_{nc-2}
        G = gS[:, :, 1:].reshape(H, Bsz * (n_chunks - 1), N)  # g_1 .. g_{nc-1}
        gA_T = torch.bmm(G.transpose(1, 2), X)  # (∂R)ᵀ = Σ g_cᵀ x_{c-1}: (H, N, N)
    else:
        gA_T = torch.zeros_like(A_T)
    gS = gS.reshape(H, Bsz * n_chunks, N)  # (H, B·n_chunks, N)
    gW = torch.bmm(U.transpose(1, 2), gS).transpose(1, 2).flip(-1)  # (H, T, N) -> (H, N, T)
    gU = torch.bmm(gS, W_rev.transpose(1, 2))  # (H, B·n_chunks, T)
    gu = gU.permute(1, 2, 0).reshape(Bsz, n_chunks * T, H)[:, n_chunks * T - L:]  # (B, L, H)
    return [gu.contiguous(), gW.contiguous(), gA_T.contiguous()]


class _CompiledCarry(torch.autograd.Function):
    """:func:`_chunk_sums_and_carry` (real tables) as two custom ops inside a compiled graph. Traced, the carry's
    backward ran in the graph even when the final state reached no loss (a compiled graph passes zeros for an unused
    output, where eager autograd never visits it): 127 GEMMs and the chunk sums' backward, ~60 % of a compiled S4
    layer's extra time over eager at B 8, L 4 096, H 128, N 64. The backward op returns zeros at once then. Used only
    while torch.compile traces, never under forward-mode AD (``custom_ops_allowed`` is False there)."""

    @staticmethod
    def forward(u: Tensor, W: Tensor, A_T: Tensor) -> Tensor:
        return _carry_forward(u, W, A_T)[0]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        u, W, A_T = ctx.saved_tensors
        gu, gW, gA_T = _carry_backward(u, W, A_T, g.contiguous())
        return gu, gW, gA_T


def dense_final_state_tabled(
    u: Tensor, tables: DenseStateTables, state: Tensor | None = None, max_length: int | None = None
) -> Tensor:
    """Steps 2-4 of the module docstring from tables formed beforehand (:func:`dense_state_tables`).

    Args:
        u: (B, L, H) real input, of the tables' length L, in the tables' precision.
        tables: from :func:`dense_state_tables` for this L (with ``initial_state=True`` when ``state`` is given).
        state: (B, H, N) state x_{-1} before the first input, or None for zeros.
        max_length: None, or a bound L <= max_length for a traced symbolic L: a traced carry (``torch.export``;
            complex tables) then runs ⌊max_length/T⌋ + 1 chunks, u padded in front by zeros (never by none), so
            that the graph holds no chunk count of L (a guard per count: ``torch.export`` refused the range).

    Returns:
        x_{L-1} (B, H, N) in the tables' dtype.
    """
    W, A_T = tables.W, tables.A_T
    Bsz, L, H = u.shape
    N = W.shape[1]
    if L != tables.L or W.shape[0] != H or _REAL_OF[W.dtype] != u.dtype:
        raise ValueError(f"u must be (B, {tables.L}, {W.shape[0]}) {_REAL_OF[W.dtype]} for these tables; got "
                         f"{tuple(u.shape)} {u.dtype}")
    if state is not None and tables.A_L is None:
        raise ValueError("an initial state needs tables formed with initial_state=True (Ā^L)")
    if state is not None and (not isinstance(state, Tensor) or tuple(state.shape) != (Bsz, H, N)):
        got = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
        raise ValueError(f"state must be (B, H, N) = {(Bsz, H, N)}; got {got}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be an int >= 1, or None; got {max_length!r}")
    if not W.is_complex() and torch.compiler.is_compiling() and custom_ops_allowed():
        x = apply_function(_CompiledCarry, u, W, A_T)  # (H, B, N): one op each way (see _CompiledCarry)
    else:
        n_chunks = None if max_length is None else max_length // W.shape[-1] + 1
        x = _chunk_sums_and_carry(u, W, A_T, n_chunks)  # (H, B, N)
    x = x.transpose(0, 1)  # (B, H, N)
    # 4. The initial state's term Ā^L x_{-1}.
    if state is not None:
        x = x + torch.einsum("hnm,bhm->bhn", tables.A_L, state.to(W.dtype))  # (B, H, N)
    return x


def dense_final_state_chunked(u: Tensor, A_bar: Tensor, B_bar: Tensor, state: Tensor | None = None) -> Tensor:
    """Final state x_{L-1} = Ā^L x_{-1} + Σ_l Ā^{L-1-l} B̄ u_l by chunked GEMMs (arXiv 2111.00396 eq. 3).

    Steps 1-4 of the module docstring (:func:`dense_state_tables`, then :func:`dense_final_state_tabled`). Same
    signature and result as :func:`dense_final_state_reference`. The tables are formed in double precision from the
    given Ā, B̄ (pass them in double precision with a float32 u for the most accurate float32 result); the GEMM and
    the carry run in u's precision.

    Args:
        u: (B, L, H) real input (float32 or float64).
        A_bar: (H, N, N) real or complex state matrix Ā, in u's precision or in double precision.
        B_bar: (H, N) input vector B̄, A_bar's dtype.
        state: (B, H, N) state x_{-1} before the first input (A_bar's dtype or the result's), or None for zeros.

    Returns:
        x_{L-1} (B, H, N) in u's precision, complex when A_bar is complex.
    """
    _check_dense_args(u, A_bar, B_bar, state)
    tables = dense_state_tables(A_bar, B_bar, u.shape[1], _work_dtype(u, A_bar), initial_state=state is not None)
    return dense_final_state_tabled(u, tables, state)


_DENSE_FINAL_STATE = {"reference": dense_final_state_reference, "chunked": dense_final_state_chunked}


def dense_final_state(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, state: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    """Final state x_{L-1} = Ā^L x_{-1} + Σ_{l<L} Ā^{L-1-l} B̄ u_l of a dense LTI recurrence (arXiv 2111.00396 eq. 3).

    Backends: ``"reference"`` -> :func:`dense_final_state_reference` (the recurrence); ``"chunked"`` ->
    :func:`dense_final_state_chunked` (chunked GEMMs); ``"auto"`` -> ``"chunked"``; ``"fft"`` and ``"triton"``
    raise (a final state has no frequency-domain form).

    The result has u's precision; Ā and B̄ may be given in double precision for a float32 u (the fast path then
    forms its power tables from them before rounding, which keeps slow modes accurate).

    Args:
        u: (B, L, H) real input (float32 or float64).
        A_bar: (H, N, N) real or complex state matrix Ā, in u's precision or in double precision.
        B_bar: (H, N) input vector B̄, A_bar's dtype.
        state: (B, H, N) state x_{-1} before the first input (A_bar's dtype or the result's), or None for zeros.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        x_{L-1} (B, H, N) in u's precision, complex when A_bar is complex.
    """
    return dispatch("dense_final_state", _DENSE_FINAL_STATE, backend, auto="chunked")(u, A_bar, B_bar, state)
