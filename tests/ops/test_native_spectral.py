"""The C passes around the FFT convolution's transforms (ssmkit.ops.native.spectral) against their PyTorch forms:
the transposing copies into and out of the zero-padded buffers through strided views, with tiles' tails in time and
channels, and the backward's spectral products with either or both gradients wanted."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.native import native_available
from tests.conftest import DEVICE

F32, F64 = torch.float32, torch.float64
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not all(native_available("fft_blocks", d) for d in (F32, F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("b,L,c,n", [(1, 1, 1, 2), (3, 64, 16, 128), (2, 131, 37, 270), (1, 200, 5, 200)])
def test_load_and_store_are_the_transposing_copies(b, L, c, n, dtype):
    from ssmkit.ops.native.spectral import load_padded, store_block

    g = torch.Generator().manual_seed(L + c)
    base = torch.randn(b + 1, c + 2, L + 3, generator=g, dtype=F64).to(dtype)
    x = base[1:, 1 : c + 1, 2 : L + 2].transpose(1, 2)  # (b, L, c): a strided view inside a larger tensor
    buf = torch.full((b, c, n), -3.0, dtype=dtype)
    load_padded(x, buf)
    assert torch.equal(buf[..., :L], x.transpose(1, 2)) and bool((buf[..., L:] == -3).all())  # the tail untouched
    out = torch.zeros(b, L + 4, c + 1, dtype=dtype)
    y = out[:, 2 : L + 2, 1:]  # (b, L, c) inside a larger tensor
    store_block(buf, y)
    assert torch.equal(y, x) and bool((out[:, :2] == 0).all()) and bool((out[:, L + 2 :] == 0).all())
    assert bool((out[..., 0] == 0).all())  # nothing written outside the view


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("need_u,need_k", [(True, True), (True, False), (False, True)])
def test_spectral_grads_are_the_products(need_u, need_k, dtype):
    from ssmkit.ops.native.spectral import spectral_grads

    g = torch.Generator().manual_seed(int(need_u) + 2 * int(need_k))
    b, c, F = 3, 5, 2 * 1024 + 3  # three frequency blocks per channel, the last one short

    def crandn(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=F64), torch.randn(*shape, generator=g,
                                                                                     dtype=F64)).to(dtype)

    U, dY, K, acc = crandn(b, c, F), crandn(b, c, F), crandn(c, F), crandn(c, F)
    want_acc = acc + (U.conj() * dY).sum(0) if need_k else acc.clone()
    want_dY = dY * K.conj() if need_u else dY.clone()
    spectral_grads(U if need_k else None, dY, K if need_u else None, acc if need_k else None)
    tol = 1e-13 if dtype == torch.complex128 else 2e-6
    torch.testing.assert_close(acc, want_acc, rtol=tol, atol=tol * float(want_acc.abs().max()))
    torch.testing.assert_close(dY, want_dY, rtol=tol, atol=tol * float(want_dY.abs().max()))


def test_the_wrappers_refuse_what_the_c_code_cannot_read():
    from ssmkit.ops.native.spectral import load_padded, spectral_grads, store_block

    x = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match=r"buf must be a contiguous torch.float32 \(b, c, n >= L\) = \(2, 3, >=5\); got "
                                         r"torch.float32 \(2, 3, 4\)"):
        load_padded(x, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="buf must be a contiguous torch.float32"):
        load_padded(x, torch.zeros(2, 3, 8, dtype=F64))  # another dtype
    with pytest.raises(ValueError, match="buf must be a contiguous torch.float32"):
        store_block(torch.zeros(3, 2, 8).transpose(0, 1), x)  # a strided buffer
    dY = torch.zeros(2, 3, 4, dtype=torch.complex64)
    with pytest.raises(ValueError, match="must be contiguous complex64/complex128"):
        spectral_grads(None, dY.transpose(0, 1), torch.zeros(3, 4, dtype=torch.complex64), None)
    with pytest.raises(ValueError, match=r"^fft_blocks native: K must be torch.complex64, the kernel's dtype; got "
                                         r"torch.complex128$"):
        spectral_grads(None, dY, torch.zeros(3, 4, dtype=torch.complex128), None)
    with pytest.raises(ValueError, match=r"^K must be \(3, 4\); got \(3, 5\)$"):
        spectral_grads(None, dY, torch.zeros(3, 5, dtype=torch.complex64), None)
