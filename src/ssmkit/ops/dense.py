"""Final state of a dense (non-diagonal) linear time-invariant recurrence, by chunked GEMMs.

For a bank of H systems x_l = Ā x_{l-1} + B̄ u_l (the discretised SSM of "Efficiently Modeling Long Sequences with
Structured State Spaces", S4, arXiv 2111.00396 eq. 3, with a dense Ā such as the DPLR state matrix), the state
after the last of L inputs is

    x_{L-1} = Ā^L x_{-1} + Σ_{l<L} Ā^{L-1-l} B̄ u_l.

Two paths, same signature:
- ``dense_final_state_reference``: the recurrence, one matrix-vector product per step (the test oracle).
- ``dense_final_state_chunked``: with chunks of T inputs (T a power of two, the largest whose (H, T, N) double
  precision table stays within ``_TABLE_BYTES``; the sequence padded with zeros at the front to a multiple of T,
  which leaves the sum unchanged):
    1. the squares Ā^(2^j) (:func:`power_chain`, one bmm each; a caller that has some passes them in) and the table
       W_k = Ā^k B̄ (k < T) by log2(T) doublings W_2k = [Ā^k W_k, W_k], in float64/complex128;
    2. the input sum of every chunk, S_c = Σ_j Ā^{T-1-j} B̄ u_{cT+j}, as one GEMM (N, T) @ (T, B·L/T) per channel
       (complex W split into real and imaginary rows), in double precision;
    3. a carry tree over the L/T chunks: adjacent chunks pair up as x = Ā^{T·2^k} x_old + x_new (one baddbmm per
       level, an odd count padded with a zero chunk in front), log2(L/T) levels;
    4. the initial state's term Ā^L x_{-1} (Ā^L as the product of the squares over the set bits of L).
  Work ≈ B·L·H·N (the GEMM) + B·(L/T)·H·N² (the tree) + log(L)·H·N³ (the squares); ~2 aten ops per doubling and
  ~3 per tree level (issue 16: the former carry loop was one op per chunk); nothing of size (B, L, H, N) is allocated.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssmkit.ops.backend import dispatch

_REAL_OF = {torch.float32: torch.float32, torch.float64: torch.float64,
            torch.complex64: torch.float32, torch.complex128: torch.float64}
_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _work_dtype(u: Tensor, A_bar: Tensor) -> torch.dtype:
    """The result's dtype: u's precision, complex when A_bar is complex."""
    return _COMPLEX_OF[u.dtype] if A_bar.is_complex() else u.dtype


def _check_dense_args(u: Tensor, A_bar: Tensor, B_bar: Tensor, state: Tensor | None) -> None:
    if not isinstance(u, Tensor) or u.dtype not in _COMPLEX_OF:
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


# Bytes of the (H, T, N) double-precision table of Ā^k B̄ (k < T): the chunk length T is the largest power of two
# with a table of at most this size (and at most the padded length). Few chunks mean a short carry tree: every
# table doubling and every tree level is ~2-3 aten ops (issue 16), so T = L/4 at B=8, H=128, N=64, L=4096.
_TABLE_BYTES = 1 << 26


def power_chain(A: Tensor, n: int, powers: list[Tensor] | None = None) -> list[Tensor]:
    """The repeated squares [A, A², A⁴, ..., A^(2^(n-1))] of a batch of square matrices, one bmm each.

    Args:
        A: (H, N, N) real or complex.
        n: number of entries, >= 1.
        powers: a prefix of this chain already computed (reused, extended when shorter), or None.

    Returns:
        list of n (H, N, N) tensors, A's dtype.
    """
    chain = [A] if not powers else list(powers)
    while len(chain) < n:
        chain.append(torch.bmm(chain[-1], chain[-1]))  # (H, N, N)
    return chain[:n] if len(chain) > n else chain


def matrix_power_from_chain(chain: list[Tensor], k: int) -> Tensor:
    """A^k (k >= 1) as the product of the chain entries A^(2^j) over the set bits j of k (``len(chain) > log2 k``)."""
    out = None
    for j in range(k.bit_length()):
        if k >> j & 1:
            out = chain[j] if out is None else torch.bmm(out, chain[j])
    return out


def _chunk(L: int, H: int, N: int, itemsize: int) -> int:
    """Chunk length T: a power of two, at most the padded length 2^ceil(log2 L), with a (H, T, N) table <= _TABLE_BYTES."""
    T = 1 << max(0, (L - 1).bit_length())
    while T > 1 and H * T * N * itemsize > _TABLE_BYTES:
        T //= 2
    return T


def dense_final_state_chunked(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, state: Tensor | None = None, *, powers: list[Tensor] | None = None
) -> Tensor:
    """Final state x_{L-1} = Ā^L x_{-1} + Σ_l Ā^{L-1-l} B̄ u_l by one GEMM and a carry tree (arXiv 2111.00396 eq. 3).

    Steps 1-4 of the module docstring. Same signature and result as :func:`dense_final_state_reference`. The
    tables are formed in double precision from the given Ā, B̄ (pass them in double precision with a float32 u for
    the most accurate float32 result); the chunk GEMM and the tree run in double precision too; the result is cast to u's precision.

    Args:
        u: (B, L, H) real input (float32 or float64).
        A_bar: (H, N, N) real or complex state matrix Ā, in u's precision or in double precision.
        B_bar: (H, N) input vector B̄, A_bar's dtype.
        state: (B, H, N) state x_{-1} before the first input (A_bar's dtype or the result's), or None for zeros.
        powers: the squares [Ā, Ā², Ā⁴, ...] of ``A_bar`` in double precision (:func:`power_chain`) when the caller
            has them (reused and extended as needed), or None.

    Returns:
        x_{L-1} (B, H, N) in u's precision, complex when A_bar is complex.
    """
    _check_dense_args(u, A_bar, B_bar, state)
    Bsz, L, H = u.shape
    N = A_bar.shape[1]
    wide = torch.complex128 if A_bar.is_complex() else torch.float64
    work = _work_dtype(u, A_bar)
    T = _chunk(L, H, N, 16 if A_bar.is_complex() else 8)
    n_chunks = -(-L // T)
    # Column form throughout: states are columns x' = Ā x, so every product is a bmm with a square Ā^(2^j).
    if powers is None or powers[0].dtype != wide:
        powers = [A_bar.to(wide)]
    depth = T.bit_length() - 1 + (n_chunks - 1).bit_length()  # chain entries for the table and the tree
    chain = power_chain(powers[0], max(1, depth, L.bit_length() if state is not None else 0), powers)  # Ā^(2^j)
    # 1. W[h, :, j] = Ā^{T-1-j} B̄, j < T, by doubling: W_2k = [Ā^k W_k, W_k].
    W = B_bar.to(wide)[:, :, None]  # (H, N, 1)
    for j in range(T.bit_length() - 1):
        W = torch.cat([torch.bmm(chain[j], W), W], dim=2)  # (H, N, 2k)
    # 2. Chunk sums S[h, :, (b, c)] = Σ_j W[h, :, j] u[b, cT + j, h] after front zero-padding to n_chunks·T: one GEMM.
    #    In double precision (u is cast once; the tables stay as formed).
    u_pad = u.to(W.real.dtype if W.is_complex() else wide)  # (B, L, H)
    if n_chunks * T > L:
        u_pad = torch.nn.functional.pad(u_pad, (0, 0, n_chunks * T - L, 0))  # (B, n_chunks·T, H)
    U = u_pad.view(Bsz * n_chunks, T, H).permute(2, 1, 0)  # (H, T, B·n_chunks)
    if W.is_complex():  # complex W times real U: one real GEMM over the real and imaginary rows
        S = torch.bmm(torch.view_as_real(W).transpose(2, 3).reshape(H, 2 * N, T), U)  # (H, 2N, B·n_chunks)
        S = torch.view_as_complex(S.view(H, N, 2, -1).transpose(2, 3).contiguous())  # (H, N, B·n_chunks)
    else:
        S = torch.bmm(W, U)  # (H, N, B·n_chunks)
    # 3. Carry tree: pair adjacent chunks, x = Ā^{T·2^k} x_old + x_new, until one chunk is left per sequence.
    level = T.bit_length() - 1  # chain index of Ā^T
    n = n_chunks
    while n > 1:
        if n % 2:  # an odd count: one zero chunk in front (it carries nothing)
            S = torch.nn.functional.pad(S.view(H, N, Bsz, n), (1, 0)).view(H, N, Bsz * (n + 1))
            n += 1
        old, new = S.view(H, N, Bsz * n // 2, 2).unbind(3)  # (H, N, B·n/2) each
        S = torch.baddbmm(new, chain[level], old)  # (H, N, B·n/2)
        n //= 2
        level += 1
    # 4. The initial state's term Ā^L x_{-1}.
    if state is not None:
        S = torch.baddbmm(S, matrix_power_from_chain(chain, L), state.to(wide).permute(1, 2, 0))  # (H, N, B)
    x = S.permute(2, 0, 1)  # (B, H, N)
    return x.contiguous() if x.dtype == work else x.to(work, memory_format=torch.contiguous_format)  # one copy


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
