"""Dropout by a Philox4x32-10 mask (ssmkit.ops.dropout, ssmkit.ops.philox, ssmkit.ops.native.dropout): the generator
against the paper's known-answer vectors, the C kernel against the torch-integer reference bit for bit, the mask's
statistics, gradients, seeding, and the Block's dropout module."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssmkit.ops.dropout import dropout
from ssmkit.ops.native import native_available
from ssmkit.ops.philox import drop_threshold, dropout_reference, keep_mask, philox4x32

# Philox4x32-10 known-answer vectors (Salmon et al., SC 2011; Random123's kat_vectors): counter, key -> output
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

needs_native = pytest.mark.skipif(not native_available("dropout", torch.float32),
                                  reason="the dropout kernel is not built here (no C compiler)")


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    out = philox4x32(torch.tensor([counter], dtype=torch.int64), key)
    assert out[0].tolist() == list(expected)


def test_mask_layout_and_threshold():
    """Element i is word i mod 4 of the block at counter (i div 4, 0, 0, 0) under the key (seed low, seed high)."""
    seed = (0x12345678 << 32) | 0x9ABCDEF0
    n = 23
    words = philox4x32(torch.tensor([[j, 0, 0, 0] for j in range(6)], dtype=torch.int64), (0x9ABCDEF0, 0x12345678))
    words = words.reshape(-1)[:n]
    for p in (0.0, 0.25, 0.5, 0.9, 1.0):
        assert torch.equal(keep_mask(n, seed, p), words >= round(p * 2**32))
    assert drop_threshold(1.0) == 2**32 and drop_threshold(0.5) == 2**31 and drop_threshold(0.0) == 0


def test_mask_statistics():
    """Over 2^22 elements (seed fixed: deterministic), the kept fraction, the kept fraction of each word position and
    of adjacent pairs are within 5 standard deviations of 1 - p and (1 - p)²."""
    n, p = 1 << 22, 0.1
    keep = keep_mask(n, 2024, p).double()
    q = 1 - p
    assert abs(keep.mean().item() - q) < 5 * math.sqrt(p * q / n)
    for pos in range(4):
        assert abs(keep[pos::4].mean().item() - q) < 5 * math.sqrt(p * q / (n / 4))
    for lag in (1, 4):
        pairs = (keep[:-lag] * keep[lag:]).mean().item()
        assert abs(pairs - q * q) < 5 * math.sqrt(q * q * (1 - q * q) / (n - lag)) * 2  # pairs overlap: x2 margin


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_equals_the_reference_bit_for_bit(dtype, threads):
    from ssmkit.ops.native.dropout import masked_scale

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(1)
        for n in (1, 3, 4, 255, 257, 16384 + 5, 3 * 16384 + 1):
            x = torch.randn(n, generator=g, dtype=dtype)
            for p, seed in ((0.1, 7), (0.5, (1 << 62) + 12345), (0.0, 3), (1.0, 9)):
                assert torch.equal(masked_scale(x, p, seed), dropout_reference(x, p, seed)), (n, p, seed)
        x = torch.randn(6, 40, generator=g, dtype=dtype).t()  # not contiguous: the row-major order of its shape
        assert torch.equal(masked_scale(x, 0.3, 11), dropout_reference(x.contiguous(), 0.3, 11))
    finally:
        torch.set_num_threads(old)


@needs_native
def test_gradients_are_the_same_mask():
    from ssmkit.ops.native.dropout import NativeDropout

    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: NativeDropout.apply(x, 0.4, 99), (x,))
    assert torch.autograd.gradgradcheck(lambda x: NativeDropout.apply(x, 0.4, 99), (x,))
    y = dropout(x, 0.4)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    kept = y != 0  # x has no zeros: y = 0 exactly where dropped
    torch.testing.assert_close(dx, torch.where(kept, g / 0.6, torch.zeros_like(g)), rtol=1e-15, atol=0)
    torch.testing.assert_close(y, torch.where(kept, x / 0.6, torch.zeros_like(x)), rtol=1e-15, atol=0)


@needs_native
def test_seeded_by_torch_manual_seed():
    x = torch.randn(1000)
    torch.manual_seed(5)
    a, b = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(dropout(x, 0.5), a) and not torch.equal(a, b)  # the same stream; a new mask per call


def test_identity_cases_and_checks():
    x = torch.randn(3, 4)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
    for bad in (-0.1, 1.5, True, "0.1", float("nan")):
        with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
            dropout(x, bad)
    y = dropout(torch.ones(10, 10, dtype=torch.bfloat16), 0.5)  # a dtype without the C path: torch's dropout
    assert y.dtype == torch.bfloat16 and set(y.unique().tolist()) <= {0.0, 2.0}


def test_block_dropout_is_an_nn_dropout():
    from ssmkit.layers import build
    from ssmkit.models.block import Block

    torch.manual_seed(0)
    block = Block(build("s4d", d_model=8, d_state=4), dropout=0.25)
    assert isinstance(block.dropout, nn.Dropout) and block.dropout.p == 0.25
    x = torch.randn(2, 16, 8)
    torch.manual_seed(1)
    y1, _ = block(x)
    torch.manual_seed(1)
    y2, _ = block(x)
    assert torch.equal(y1, y2)
    block.eval()
    y_eval, _ = block(x)
    assert not torch.equal(y1, y_eval)
    block.dropout.p = 0.0
    block.train()
    torch.testing.assert_close(block(x)[0], y_eval)  # p = 0: the identity, so training = eval
