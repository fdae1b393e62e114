"""Causal attention and rotary positions (ssmkit.ops.attention): the SDPA path against the full-score oracle (with a
cache, windows, several query blocks; outputs and gradients), hand-computed masks and rotations, argument errors."""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.ops.attention import _QUERY_BLOCK, causal_attention_chunked
from tests.conftest import DEVICE, rel_err


def _loop_oracle(q, k, v, window):
    """o_i = Σ_j softmax_j(q_i·k_j/√P) v_j over the keys query i sees, one query at a time in float64."""
    L, K = q.shape[2], k.shape[2]
    out = torch.zeros_like(q)
    for i in range(L):
        p = K - L + i
        lo = 0 if window is None else max(0, p - window + 1)
        s = torch.einsum("bep,bekp->bek", q[:, :, i], k[:, :, lo : p + 1]) / math.sqrt(q.shape[-1])
        out[:, :, i] = torch.einsum("bek,bekp->bep", torch.softmax(s, -1), v[:, :, lo : p + 1])
    return out


@pytest.mark.parametrize("window", [None, 1, 4, 40])
@pytest.mark.parametrize("L,cache", [(13, 0), (13, 7), (1, 9), (_QUERY_BLOCK + 21, 5)])
def test_chunked_and_reference_equal_the_loop(L, cache, window):
    B, E, P = 2, 3, 4
    q = torch.randn(B, E, L, P, dtype=torch.float64, device=DEVICE, requires_grad=True)
    k = torch.randn(B, E, cache + L, P, dtype=torch.float64, device=DEVICE, requires_grad=True)
    v = torch.randn(B, E, cache + L, P, dtype=torch.float64, device=DEVICE, requires_grad=True)
    expected = _loop_oracle(q, k, v, window)
    g = torch.randn_like(expected)
    g_ref = torch.autograd.grad((expected * g).sum(), [q, k, v])
    for backend in ("reference", "chunked", "auto"):
        o = ops.causal_attention(q, k, v, window, backend=backend)
        assert rel_err(o, expected) < 1e-12, backend
        for a, b in zip(torch.autograd.grad((o * g).sum(), [q, k, v]), g_ref):
            if float(b.abs().max()) == 0:  # window 1: the output is v, q and k get no gradient (up to rounding)
                assert float(a.abs().max()) < 1e-12, backend
            else:
                assert rel_err(a, b) < 1e-11, backend


def test_float32_chunked_path_matches_the_float64_oracle():
    q, k, v = (torch.randn(1, 2, 600, 8, device=DEVICE) for _ in range(3))
    o = causal_attention_chunked(q, k, v, window=100)
    assert rel_err(o, _loop_oracle(q.double(), k.double(), v.double(), 100)) < 1e-5  # float32 sums of ~100 terms


def test_causal_mask_by_hand():
    # 2 queries at positions 2 and 3 of 4 keys, window 2: query 2 sees keys 1, 2; query 3 sees 2, 3.
    assert ops.causal_mask(2, 4, 2).tolist() == [[False, True, True, False], [False, False, True, True]]
    assert ops.causal_mask(2, 4, None).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert ops.causal_mask(2, 4, 2, first=1).tolist() == [[True, True, False], [False, True, True]]


def test_rotary_by_hand_and_relative():
    # P = 2: one pair with θ_0 = 1: (1, 0) at position t becomes (cos t, sin t).
    x = torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64)
    r = ops.rotary(x, torch.arange(3))
    assert torch.allclose(r, torch.tensor([[math.cos(t), math.sin(t)] for t in range(3)], dtype=torch.float64))
    # q_i · k_j depends on i - j only
    q, k = torch.randn(1, 8, dtype=torch.float64), torch.randn(1, 8, dtype=torch.float64)
    dots = [
        (ops.rotary(q, torch.tensor([i])) * ops.rotary(k, torch.tensor([j]))).sum().item()
        for i, j in ((5, 2), (103, 100), (3, 0))
    ]
    assert max(dots) - min(dots) < 1e-12
    with pytest.raises(ValueError, match="even head dimension"):
        ops.rotary(torch.randn(2, 3), torch.arange(2))


def test_bad_arguments_raise():
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="last Lq of the K key positions"):
        ops.causal_attention(q, q[:, :, :3], q[:, :, :3])
    with pytest.raises(ValueError, match="same B, A, P"):
        ops.causal_attention(q, q[:, :1], q[:, :1])
    with pytest.raises(ValueError, match="real floating"):
        ops.causal_attention(q[0], q, q)
    with pytest.raises(ValueError, match="window must be None or an int >= 1"):
        ops.causal_attention(q, q, q, 0)
    with pytest.raises(RuntimeError, match="causal_attention: backend 'fft' was forced"):
        ops.causal_attention(q, q, q, backend="fft")
