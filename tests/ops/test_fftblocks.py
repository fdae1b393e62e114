"""The FFT convolution by cache-sized blocks (ssmkit.ops.fftblocks) against the lag loops and the whole-array passes,
with blocks made small enough that shapes split into ragged batch and channel blocks; each with the passes around the
FFTs in C (ssmkit.ops.native.spectral, where the native backend runs) and in PyTorch ops."""

from __future__ import annotations

import pytest
import torch

import ssmkit.ops.fftblocks as fftblocks
import ssmkit.ops.fftconv as fftconv
from ssmkit.ops.fftconv import (
    bidirectional_conv,
    bidirectional_conv_reference,
    causal_conv,
    causal_conv_reference,
)

F64 = torch.float64
fftconv_blockwise = fftconv._blockwise
fftblocks_native = fftblocks.native_passes


@pytest.fixture(params=["native", "torch"])
def passes(request, monkeypatch):
    """The passes around the FFTs: the C code (skipped where it does not run) or the PyTorch ops."""
    if request.param == "native":
        if not (fftblocks_native(torch.float32) and fftblocks_native(F64)):
            pytest.skip("the native backend does not run here")
    else:
        monkeypatch.setattr(fftblocks, "native_passes", lambda dtype: False)
    return request.param


def _row_bytes(L: int, dtype: torch.dtype) -> int:
    return fftconv._fft_size(2 * L) * torch.empty(0, dtype=dtype).element_size()


# (B, L, H, block in padded channels, blocks): batch blocks of 2 rows (B = 3: a ragged last block); of 3 rows (the
# filter gradient's sum over > 2 rows); channel blocks of 2 in single rows (H = 5: ragged); one block
BLOCKINGS = [(3, 7, 4, 8, 2), (7, 5, 2, 6, 3), (2, 9, 5, 2, 6), (2, 6, 3, 1000, 1)]


@pytest.mark.parametrize("B,L,H,block,n_blocks", BLOCKINGS)
@pytest.mark.parametrize("two_sided", [False, True], ids=["causal", "bidirectional"])
def test_blocked_conv_equals_the_loop_and_the_whole_passes(B, L, H, block, n_blocks, two_sided, monkeypatch, passes):
    monkeypatch.setattr(fftblocks, "BLOCK_BYTES", block * _row_bytes(L, F64))
    g = torch.Generator().manual_seed(B * 100 + L)
    u = torch.randn(B, L, H, dtype=F64, generator=g)
    K = torch.randn(*((2,) if two_sided else ()), H, L + 2, dtype=F64, generator=g)
    dy = torch.randn(B, L, H, dtype=F64, generator=g)
    conv, ref = (bidirectional_conv, bidirectional_conv_reference) if two_sided else (causal_conv, causal_conv_reference)
    blocks = list(fftblocks._blocks(B, H, fftconv._fft_size(2 * L), 8))
    assert len(blocks) == n_blocks

    results = []
    for blockwise in (True, False):
        monkeypatch.setattr(fftconv, "_blockwise", lambda x, n, on=blockwise: on and x.device.type == "cpu"
                            and not torch.is_grad_enabled())
        u_, K_ = u.clone().requires_grad_(), K.clone().requires_grad_()
        y = conv(u_, K_, backend="fft")
        du, dK = torch.autograd.grad(y, (u_, K_), dy)
        results.append((y, du, dK))
    u_, K_ = u.clone().requires_grad_(), K.clone().requires_grad_()
    y = ref(u_, K_)
    results.append((y, *torch.autograd.grad(y, (u_, K_), dy)))
    for got in results[:2]:
        for a, b in zip(got, results[2]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    monkeypatch.setattr(fftconv, "_blockwise", fftconv_blockwise)
    with torch.no_grad():  # no gradient to come: the blocks keep no spectrum
        torch.testing.assert_close(conv(u, K, backend="fft"), results[2][0], rtol=1e-10, atol=1e-10)


def test_blocked_conv_float32_and_one_gradient(monkeypatch, passes):
    """float32 blocks, and a backward that needs only the input's gradient (the filter is a constant)."""
    monkeypatch.setattr(fftblocks, "BLOCK_BYTES", 2 * _row_bytes(33, torch.float32))
    g = torch.Generator().manual_seed(5)
    u = torch.randn(2, 33, 3, generator=g, requires_grad=True)
    K = torch.randn(3, 33, generator=g)
    y = causal_conv(u, K, backend="fft")
    (du,) = torch.autograd.grad(y, u, torch.ones_like(y))
    u64 = u.detach().double().requires_grad_()
    y64 = causal_conv_reference(u64, K.double())
    (du64,) = torch.autograd.grad(y64, u64, torch.ones_like(y64))
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(du.double(), du64, rtol=1e-5, atol=1e-5)


def test_blockwise_only_eagerly_on_the_cpu_without_a_graph_and_beyond_one_block(monkeypatch):
    monkeypatch.setattr(fftblocks, "BLOCK_BYTES", 2 * 3 * 16 * 8)  # (B, H, n) = (2, 3, 16) float64: one block
    x, n = torch.zeros(2, 5, 3, dtype=F64), 16
    assert fftconv._blockwise(x, n) is False  # grad mode on: a differentiable backward needs the whole passes
    with torch.no_grad():
        assert fftconv._blockwise(x, n) is False  # one block: the whole-array ops
        assert fftconv._blockwise(x, n + 2) is True
        assert fftconv._blockwise(torch.zeros(2, 5, 3, dtype=F64, device="meta"), n + 2) is False


def test_blocked_conv_filter_gradient_alone(monkeypatch, passes):
    """A backward that needs only the filter's gradient (the input is a constant): Σ_b conj(û) dŷ without ∂u."""
    monkeypatch.setattr(fftblocks, "BLOCK_BYTES", 2 * _row_bytes(9, F64))  # batch blocks of 2 rows, the last ragged
    g = torch.Generator().manual_seed(9)
    u, dy = torch.randn(5, 9, 3, generator=g, dtype=F64), torch.randn(5, 9, 3, generator=g, dtype=F64)
    K = torch.randn(3, 9, generator=g, dtype=F64, requires_grad=True)
    (dK,) = torch.autograd.grad(causal_conv(u, K, backend="fft"), K, dy)
    (want,) = torch.autograd.grad(causal_conv_reference(u, K), K, dy)
    torch.testing.assert_close(dK, want, rtol=1e-10, atol=1e-10)


def test_one_block_goes_by_the_passes_in_c_from_one_megabyte(monkeypatch):
    n = 1024  # (B, H, n) float32: 2·128·1 024·4 = 1 MiB of padded signal, one block
    x = torch.zeros(2, 300, 128)
    with torch.no_grad():
        monkeypatch.setattr(fftblocks, "native_passes", lambda dtype: True)
        assert fftconv._blockwise(x, n) is True and fftconv._blockwise(x, n - 2) is False  # below ONE_BLOCK_BYTES
        monkeypatch.setattr(fftblocks, "native_passes", lambda dtype: False)
        assert fftconv._blockwise(x, n) is False  # the PyTorch passes: only beyond one block
    assert fftblocks.ONE_BLOCK_BYTES == 2 * 128 * 1024 * 4 < fftblocks.BLOCK_BYTES
