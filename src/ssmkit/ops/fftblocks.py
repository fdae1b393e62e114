"""The FFT convolution's passes on the CPU, block by block, so that each block's signal and spectra stay in cache.

The circular convolution y[t] = Σ_{s<L} k[(t − s) mod n] u[s], t < L, of :class:`ssmkit.ops.fftconv._CircularConv`
(S4's convolutional view, arXiv 2111.00396 §3.3) is, per channel and batch row, independent of every other row:

    forward:   û = rfft(pad_n(u)),  y = irfft(û · k̂)[:L]
    backward:  dŷ = rfft(pad_n(dy)),  du = irfft(conj(k̂) · dŷ)[:L],  dk = irfft(Σ_b conj(û) · dŷ)

Whole, each step is a pass over (B, H, n) arrays in memory: the padded signal, its spectrum, the product and the
inverse transform (33 MB each at B 8, H 128, n 8 192, float32). On a 2-core VM with ~7 GB/s to memory the forward
took 52 ms that way; the same ops on blocks of rows of at most :data:`BLOCK_BYTES` padded signal ran in 26-30 ms
(2026-12-04; docs/benchmarks.md, "Session of 2026-12-04 (23:00-)"), the block's spectrum read back from cache by
the product and the inverse FFT. Blocks take whole batch rows (all H channels) while one fits, else channel ranges of one
batch row. û is still written whole when a gradient is to come (the backward's dk needs it).

These run eagerly on the CPU only, beyond one block (the caller, ``ops/fftconv.py``, keeps the whole-array form on
other devices, under torch.func and torch.compile tracing, while exporting, for a differentiable backward, and when
the padded signal fits in one block, where the blocks' extra ops only cost).

Around the FFTs, the passes that are not FFTs run in C where the native backend runs (``native_status("fft_blocks",
dtype)``, :mod:`ssmkit.ops.native.spectral`): the transposing copies into and out of the padded buffers by tiles
(torch's strided ``copy_`` took 3-4x their time), and the backward's Σ_b conj(û) dŷ and conj(k̂) dŷ in one pass over
dŷ (where ``linalg.vecdot`` made a conjugate copy, a product and a sum, and ``mul_`` a fourth pass). Elsewhere the
PyTorch ops below, the reference the C code is checked against.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ssmkit.ops.native.gate import native_available

# Bytes of a block's zero-padded signal (rows × n reals). Forward+backward of the causal convolution at (B, L, H) =
# (8, 4 096, 128), (1, 65 536, 128), (32, 1 024, 256), (2, 16 384, 512), float32, blocks of 4 / 8 / 16 / 32 MB / whole:
# 84 / 75 / 66 / 85 / 128 ms, 433 / 381 / 310 / 371 / 519, 135 / 116 / 118 / 162 / 225, 503 / 485 / 514 / 764 / 789
# (2026-12-04, 2-core VM); in the layers (separate processes) S4 forward+backward 136-138 / 143-155 / 204-206 ms at
# 8 / 16 / 32 MB, SGConv 57-60 / 64-66 / 122-138. Each block costs ~10 aten ops, each a parallel region that waits
# for the thread beside a busy process: there (`ssmkit bench contention`, two runs each) S4 forward+backward took
# 340, 368 ms with 8 MB blocks and 283, 300 with 16 MB (alone 125-146 either way), SGConv 155, 236 against 215, 216:
# 16 MB, a few per cent slower alone than 8 MB and less exposed to contention.
BLOCK_BYTES = 1 << 24
# A signal of one block still goes by these passes from this size on when they run in C (``native_passes``): paired,
# 15 rounds, 2-core VM (2026-12-05), forward / forward+backward ms, whole-array ops against one block: (8, 1 024, 128)
# 6.16 / 13.12 against 4.98 / 11.61; (16, 2 048, 64) 12.3 / 27.6 against 10.0 / 23.5; (4, 256, 32) (0.26 MB of padded
# signal) 0.28 / 0.62 against 0.25 / 0.62; (2, 64, 8) 0.14 / 0.29 against 0.14 / 0.39 (the C calls' fixed cost).
ONE_BLOCK_BYTES = 1 << 20


def _blocks(Bsz: int, H: int, n: int, itemsize: int) -> Iterator[tuple[slice, slice]]:
    """(batch rows, channels) of each block: whole batch rows while at least one fits in BLOCK_BYTES (channels
    ``slice(None)``, which indexes without an op), else channel ranges of single batch rows."""
    row = n * itemsize  # bytes of one padded channel
    if H * row <= BLOCK_BYTES:
        nb = max(1, BLOCK_BYTES // (H * row))
        for b0 in range(0, Bsz, nb):
            yield slice(b0, min(Bsz, b0 + nb)), slice(None)
        return
    hb = max(1, BLOCK_BYTES // row)
    for b0 in range(Bsz):
        for h0 in range(0, H, hb):
            yield slice(b0, b0 + 1), slice(h0, min(H, h0 + hb))


class _Padded:
    """Zero-padded (b, h, n) buffers, one per block shape, reused across blocks: only [..., :L] is ever written, so
    the zero tail is written once."""

    def __init__(self, like: torch.Tensor, L: int, n: int) -> None:
        self.like, self.L, self.n = like, L, n
        self.bufs: dict[tuple[int, int], torch.Tensor] = {}

    def load(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, L, h) time-major -> its zero-padded (b, h, n) channel-major copy."""
        b, _, h = x.shape
        buf = self.bufs.get((b, h))
        if buf is None:
            buf = self.bufs[(b, h)] = self.like.new_empty(b, h, self.n)
            buf[..., self.L:].zero_()
        if native_passes(x.dtype):
            from ssmkit.ops.native.spectral import load_padded

            load_padded(x, buf)
        else:
            buf[..., :self.L].copy_(x.transpose(1, 2))
        return buf


def native_passes(dtype: torch.dtype) -> bool:
    """Whether the passes around the FFTs run in C (module docstring) for this real dtype."""
    return native_available("fft_blocks", dtype)


def _store(y: torch.Tensor, signal: torch.Tensor) -> None:
    """y (b, L, h), a view of the output, ← the first L samples of signal (b, h, n) (the inverse FFT's), time-major."""
    if native_passes(y.dtype):
        from ssmkit.ops.native.spectral import store_block

        store_block(signal, y)
    else:
        y.copy_(signal[..., : y.shape[1]].transpose(1, 2))


def conv_forward_blocked(u: torch.Tensor, k: torch.Tensor, keep_spectrum: bool = True) -> list[torch.Tensor | None]:
    """[y (B, L, H), û (B, H, n//2 + 1), k̂ (H, n//2 + 1)]: ``_CircularConv``'s forward by blocks (module docstring).

    Args:
        u: (B, L, H) real input on the CPU.
        k: (H, n) real circular filter, n >= L.
        keep_spectrum: write û whole (for the backward); False (no gradient to come) returns None in its place and
            keeps each block's spectrum in the block only.
    """
    (Bsz, L, H), n = u.shape, k.shape[-1]
    K_f = torch.fft.rfft(k)  # (H, n//2 + 1)
    U = torch.empty(Bsz, H, n // 2 + 1, dtype=K_f.dtype, device=u.device) if keep_spectrum else None  # (B, H, n//2 + 1)
    y = torch.empty_like(u)  # (B, L, H)
    pad = _Padded(u, L, n)
    for bs, hs in _blocks(Bsz, H, n, u.element_size()):
        if U is None:  # the block's spectrum times k̂, in place
            Y_b = torch.fft.rfft(pad.load(u[bs, :, hs])).mul_(K_f[hs])  # (b, h, n//2 + 1)
        else:
            U_b = U[bs, hs]  # (b, h, n//2 + 1), contiguous: whole batch rows, or a channel range of one
            torch.fft.rfft(pad.load(u[bs, :, hs]), out=U_b)  # the transform writes its block of û
            Y_b = U_b * K_f[hs]  # (b, h, n//2 + 1)
        _store(y[bs, :, hs], torch.fft.irfft(Y_b, n=n))  # (b, L, h)
    return [y, U, K_f]


def conv_grads_blocked(U: torch.Tensor, K_f: torch.Tensor, dy: torch.Tensor, n: int, L: int, need_u: bool,
                       need_k: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(∂u (B, L, H), ∂k (H, n)) of ``_CircularConv`` by blocks (module docstring); None for one not needed.

    Args:
        U, K_f: the forward's spectra û (B, H, n//2 + 1) and k̂ (H, n//2 + 1).
        dy: (B, L, H) gradient of y, on the CPU.
        n, L: the FFT and signal lengths.
        need_u, need_k: whether to form ∂u and ∂k; the one not needed is returned as None (and not computed).

    Returns:
        (∂u (B, L, H) or None, ∂k (H, n) or None).
    """
    Bsz, _, H = dy.shape
    du = torch.empty_like(dy) if need_u else None  # (B, L, H)
    acc = torch.zeros_like(K_f) if need_k else None  # (H, n//2 + 1): Σ_b conj(û) dŷ
    pad = _Padded(dy, L, n)
    native = native_passes(dy.dtype)
    K_conj = K_f.conj().resolve_conj() if need_u and not native else None  # (H, n//2 + 1), once
    for bs, hs in _blocks(Bsz, H, n, dy.element_size()):
        dY = torch.fft.rfft(pad.load(dy[bs, :, hs]))  # (b, h, n//2 + 1)
        if native:  # both products in one pass over dŷ (module docstring)
            from ssmkit.ops.native.spectral import spectral_grads

            spectral_grads(U[bs, hs] if need_k else None, dY, K_f[hs] if need_u else None,
                           acc[hs] if need_k else None)
            if need_u:
                _store(du[bs, :, hs], torch.fft.irfft(dY, n=n))  # (b, L, h)
            continue
        if need_k:  # Σ_b conj(û) dŷ: (h, n//2 + 1)
            acc_h, U_b = acc[hs], U[bs, hs]
            if U_b.shape[0] <= 2:  # a fused multiply-add per batch row: 2.3 ms -> 1.0 ms per block at H 128, n 8 192
                for i in range(U_b.shape[0]):
                    acc_h.addcmul_(U_b[i].conj(), dY[i])
            else:
                acc_h.add_(torch.linalg.vecdot(U_b, dY, dim=0))
        if need_u:
            _store(du[bs, :, hs], torch.fft.irfft(dY.mul_(K_conj[hs]), n=n))  # (b, L, h)
    dk = torch.fft.irfft(acc, n=n) if need_k else None  # (H, n)
    return du, dk
