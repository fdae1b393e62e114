"""The FFT convolution's passes around torch's FFTs by the compiled C code (``spectral.c``), block by block, on the CPU.

For :mod:`ssmkit.ops.fftblocks` (S4's convolutional view y = irfft(rfft(u) · rfft(k))[:L] and its adjoint, arXiv
2111.00396 §3.3): the time-major input into the zero-padded channel-major buffer the FFT reads
(:func:`load_padded`), the inverse FFT's first L samples back into the time-major output (:func:`store_block`), and
the backward's product of the spectra, Σ_b conj(û) dŷ and conj(k̂) dŷ in one pass (:func:`spectral_grads`). The FFTs
stay torch's. The PyTorch forms (a strided ``copy_``, ``linalg.vecdot`` and ``mul_``) are the reference: the gate's
smoke call compares them (:mod:`ssmkit.ops.native.gate`, op ``"fft_blocks"``).

Usable where ``native_status("fft_blocks", dtype)`` says so.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from ssmkit.ops._checks import REAL_OF
from ssmkit.ops.native.build import bind
from ssmkit.ops.native.parallel import kernel_inputs, ptr, run_parts

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of spectral.c: (argument types, result type)
    "sp_load_items": ([_i64, _i64], _i64),
    "sp_load": ([_p, _i64, _i64, _i64, _i64, _i64, _p, _i64, _i64, _i64, _i64], None),
    "sp_store_items": ([_i64, _i64], _i64),
    "sp_store": ([_p, _i64, _i64, _i64, _p, _i64, _i64, _i64, _i64, _i64, _i64], None),
    "sp_grad_items": ([_i64, _i64], _i64),
    "sp_grad": ([_p, _p, _p, _p, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64], None),
}


def _check_buffer(buf: Tensor, b: int, c: int, L: int, dtype: torch.dtype) -> None:
    """Raise ``ValueError`` unless buf is a contiguous (b, c, n >= L) tensor of ``dtype`` whose memory holds its values
    (not a lazily negated view: the C code reads and writes the memory)."""
    if buf.shape[:2] != (b, c) or buf.shape[2] < L or not buf.is_contiguous() or buf.dtype != dtype or buf.is_neg():
        raise ValueError(f"buf must be a contiguous {dtype} (b, c, n >= L) = ({b}, {c}, >={L}); got "
                         f"{buf.dtype} {tuple(buf.shape)}{' (a lazily negated view)' if buf.is_neg() else ''}")


def load_padded(x: Tensor, buf: Tensor) -> None:
    """buf[i, c, t] = x[i, t, c] for t < L: x (B, L, H) a real view of any strides (a block's rows and channels),
    buf (B, H, n) contiguous of x's dtype with n >= L (its entries t >= L are left as they are: the zero padding,
    written once by the caller). A lazily negated x (``z.conj().imag``) is read as its values: the C code reads memory
    through x's strides, and a negated view's memory holds the values' negatives."""
    b, L, c = x.shape
    _check_buffer(buf, b, c, L, x.dtype)
    x = x.resolve_neg()  # kept until the call returns
    fns = bind("spectral.c", x.dtype, SIGNATURES)
    run_parts(fns["sp_load"], fns["sp_load_items"](b, c), [ptr(x), *x.stride(), L, c, ptr(buf), buf.shape[2]],
              fns["openmp"])


def store_block(buf: Tensor, y: Tensor) -> None:
    """y[i, t, c] = buf[i, c, t] for t < L: buf (B, H, n) contiguous with n >= L, y (B, L, H) a real view of any
    strides of buf's dtype (a block of the output), written in place: not a lazily negated view (the C code writes
    memory, which such a view reads negated)."""
    b, L, c = y.shape
    _check_buffer(buf, b, c, L, y.dtype)
    if y.is_neg():
        raise ValueError(f"y must hold its values in memory, not be a lazily negated view; got {tuple(y.shape)}")
    fns = bind("spectral.c", y.dtype, SIGNATURES)
    run_parts(fns["sp_store"], fns["sp_store_items"](b, L), [ptr(buf), buf.shape[2], L, c, ptr(y), *y.stride()],
              fns["openmp"])


def spectral_grads(U: Tensor | None, dY: Tensor, K: Tensor | None, acc: Tensor | None) -> None:
    """acc += Σ_i conj(U[i]) dY[i] (when U and acc are given), then dY ← conj(K) dY in place (when K is given).

    Args:
        U: (B, H, W) the forward's spectrum of the block (W = n//2 + 1 frequencies), or None.
        dY: (B, H, W) the spectrum of the output's gradient, contiguous (overwritten when K is given).
        K: (H, W) the filter's spectrum, or None.
        acc: (H, W) contiguous, accumulated into, or None.

    U and K may be any views (lazily conjugated ones read as their values); dY and acc, written in place, must hold
    their values in memory: contiguous, without a lazy conjugate or negative bit (a copy would drop the result).
    """
    b, c, F = dY.shape
    plain = lambda t: t.is_contiguous() and not (t.is_conj() or t.is_neg())  # noqa: E731
    if not plain(dY) or dY.dtype not in REAL_OF or (acc is not None and not plain(acc)):
        raise ValueError("dY and acc must be contiguous complex64/complex128 without a lazy conjugate or negative bit "
                         "(written in place); got " + ", ".join(
                             f"{name} {t.dtype} {'contiguous' if t.is_contiguous() else 'strided'}"
                             f"{' conjugated' if t.is_conj() else ''}{' negated' if t.is_neg() else ''}"
                             for name, t in (("dY", dY), ("acc", acc)) if t is not None))
    need_k, need_u = U is not None and acc is not None, K is not None
    kept = kernel_inputs("fft_blocks native", dY.dtype, U=U if need_k else None, K=K, acc=acc if need_k else None)
    for name, t, shape in (("U", kept["U"], (b, c, F)), ("K", kept["K"], (c, F)), ("acc", kept["acc"], (c, F))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape}; got {tuple(t.shape)}")
    fns = bind("spectral.c", REAL_OF[dY.dtype], SIGNATURES)
    run_parts(fns["sp_grad"], fns["sp_grad_items"](c, F),
              [ptr(kept["U"]), ptr(dY), ptr(kept["K"]), ptr(kept["acc"]), b, c, F, int(need_u), int(need_k)],
              fns["openmp"])
