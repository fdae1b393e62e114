"""The attention layer beyond the protocol suite: the forward against a float64 loop built from the weights (rotary as
complex rotations), KV-cache decoding past the window, the cache's size, bad caches, options."""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.layers import KVCache
from tests.conftest import DEVICE, H, make_layer, rel_err, run_steps


def _loop(layer, x):
    """y_t = W_o concat_e Σ_{s seen by t} softmax_s(Re(q̃_t conj k̃_s)/√P) v_s, rotary as complex phases e^{i t θ_k}."""
    E, P = layer.n_heads, layer.head_dim
    qkv = x @ layer.qkv.weight.T + (0 if layer.qkv.bias is None else layer.qkv.bias)  # (B, L, 3EP)
    q, k, v = qkv.reshape(*x.shape[:2], 3, E, P).unbind(2)  # (B, L, E, P)
    L = x.shape[1]
    if layer.positional == "rotary":
        theta = layer.rotary_base ** (-torch.arange(P // 2, dtype=torch.float64) * 2 / P)  # (P/2,)
        phase = torch.exp(1j * torch.arange(L, dtype=torch.float64)[:, None] * theta).to(DEVICE)  # (L, P/2)
        cq = torch.complex(q[..., : P // 2], q[..., P // 2 :]) * phase[:, None]  # (B, L, E, P/2)
        ck = torch.complex(k[..., : P // 2], k[..., P // 2 :]) * phase[:, None]
        q, k = torch.cat([cq.real, cq.imag], -1), torch.cat([ck.real, ck.imag], -1)
    o = torch.zeros_like(v)
    for t in range(L):
        lo = 0 if layer.window is None else max(0, t - layer.window + 1)
        s = torch.einsum("bep,bsep->bes", q[:, t], k[:, lo : t + 1]) / math.sqrt(P)
        o[:, t] = torch.einsum("bes,bsep->bep", torch.softmax(s, -1), v[:, lo : t + 1])
    return layer.out(o.reshape(*x.shape[:2], E * P))


@pytest.mark.parametrize(
    "opts",
    [{"n_heads": 2, "head_dim": 4}, {"n_heads": 1, "head_dim": 6, "window": 5, "bias": True}, {"n_heads": 3, "head_dim": 2, "positional": None}],
)
def test_forward_equals_the_loop(opts):
    layer = make_layer("attention", opts)
    x = torch.randn(2, 23, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(layer(x)[0], _loop(layer, x)) < 1e-12


def test_decoding_with_the_cache_equals_the_full_forward_past_the_window():
    layer = make_layer("attention", {"n_heads": 2, "head_dim": 4, "window": 6})
    x = torch.randn(2, 40, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, h = layer(x)
        # prefill 17 steps, then decode one step at a time, then a chunk of 9 with the cache
        y1, h1 = layer(x[:, :17])
        assert h1.keys.shape == (2, 2, 5, 4)  # window - 1 positions kept
        y2, h2 = run_steps(layer, x[:, 17:31], h1)
        y3, h3 = layer(x[:, 31:], h2)
    assert rel_err(torch.cat([y1, y2, y3], 1), y) < 1e-12
    assert rel_err(h3.keys, h.keys) < 1e-12 and rel_err(h3.values, h.values) < 1e-12


def test_unbounded_cache_grows_and_holds_every_position():
    layer = make_layer("attention", {"n_heads": 2, "head_dim": 4})
    x = torch.randn(1, 11, H, device=DEVICE, dtype=torch.float64)
    _, h = layer(x)
    assert isinstance(h, KVCache) and h.keys.shape == (1, 2, 11, 4) and h.values.shape == (1, 2, 11, 4)
    assert h.position.tolist() == [[11.0]]
    y_t, h2 = layer.step(x[:, 0], h)
    assert h2.keys.shape[2] == 12 and h2.position.tolist() == [[12.0]]
    assert layer.initial_state(3).keys.shape == (3, 2, 0, 4)


def test_bad_caches_raise():
    layer = make_layer("attention", {"n_heads": 2, "head_dim": 4, "window": 4})
    x = torch.randn(2, 5, H, device=DEVICE, dtype=torch.float64)
    z = lambda n: torch.zeros(2, 2, n, 4, device=DEVICE, dtype=torch.float64)  # noqa: E731
    p = torch.zeros(2, 1, device=DEVICE, dtype=torch.float64)
    with pytest.raises(ValueError, match="one length; got 2 keys and 3 values"):
        layer(x, KVCache(z(2), z(3), p))
    with pytest.raises(ValueError, match="at most window - 1 = 3 positions; got 4"):
        layer.step(x[:, 0], KVCache(z(4), z(4), p))
    with pytest.raises(ValueError, match=r"state\[0\] must be \(2, 2, any, 4\)"):
        layer(x, KVCache(torch.zeros(2, 2, 3, 5, device=DEVICE, dtype=torch.float64), z(3), p))
    with pytest.raises(ValueError, match=r"state\[1\] must be"):
        layer(x, KVCache(z(1), z(1).float(), p))
    with pytest.raises(ValueError, match=r"state\[2\] must be \(2, 1\) torch.float64"):
        layer(x, KVCache(z(1), z(1), p.float()))
    with pytest.raises(ValueError, match="tuple of 3 states"):
        layer(x, z(1))


def test_options():
    layer = layers.build("attention", d_model=130)
    assert layer.n_heads == 2 and layer.head_dim == 64  # None: H // head_dim heads
    assert layers.build("attention", d_model=3).n_heads == 1
    assert layer.block_defaults.activation is None and layer.block_defaults.mixer_out is None
    with pytest.raises(ValueError, match="head_dim must be even"):
        layers.build("attention", d_model=H, head_dim=3)
    with pytest.raises(ValueError, match="positional must be one of"):
        layers.build("attention", d_model=H, positional="alibi")
    with pytest.raises(ValueError, match="window must be a positive int"):
        layers.build("attention", d_model=H, window=0)
    with pytest.raises(ValueError, match="n_heads must be a positive int"):
        layers.build("attention", d_model=H, n_heads=0)
    with pytest.raises(NotImplementedError, match="not linear in its input"):
        layer.kernel(4)


def test_long_sliding_decoding_in_float32_does_not_drift():
    # Each key is rotated once, at its own position, so a window that slides for 700 steps adds no rounding.
    layer = make_layer("attention", {"n_heads": 2, "head_dim": 8, "window": 64}, dtype=torch.float32)
    x = torch.randn(1, 700, H, device=DEVICE)
    with torch.no_grad():
        y, h = layer(x)
        y_steps, h_steps = run_steps(layer, x)
    assert rel_err(y_steps, y) < 1e-5 and rel_err(h_steps.keys, h.keys) < 1e-5
    assert h.position.tolist() == [[700.0]]
