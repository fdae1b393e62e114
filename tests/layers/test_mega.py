"""Mega (arXiv 2209.10655 eq. 6-15) beyond the protocol suite: the forward against a float64 loop over time steps
written from the paper's equations, Mega-chunk with chunk_size >= L equals full attention, the cache of the unfinished
chunk, the block with eq. 15, bad caches and options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ssmkit.layers as layers
from ssmkit.layers import MegaState
from ssmkit.models import Block
from tests.conftest import DEVICE, H, make_layer, rel_err, run_steps


def _rel_bias(layer, i: int, j: int) -> torch.Tensor:
    if layer.positional == "simple":
        return layer.rel_bias[layer.span - 1 + j - i]
    half = layer.d_qk // 2
    freq = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)

    def rot(x, t):  # the official rotation of the halves (x1, x2) by t·ω
        c, s = torch.cos(t * freq).to(DEVICE), torch.sin(t * freq).to(DEVICE)
        return torch.cat([x[:half] * c - x[half:] * s, x[half:] * c + x[:half] * s])

    return (rot(layer.rel_bias[0], i) * rot(layer.rel_bias[1], j)).sum()


def _loop(layer, x):
    """Eq. 6-15 one time step at a time in float64: the EMA recurrence, then each query over its chunk's past."""
    ema = layer.ema
    A_bar, B_bar, C = (t.double() for t in ema.discrete())
    h = torch.zeros(x.shape[0], H, layer.d_state, dtype=torch.float64, device=DEVICE)
    H_, Z, V = H, layer.d_qk, layer.d_v
    T = layer.chunk_size or x.shape[1]
    qs, ks, vs, outs = [], [], [], []
    for t in range(x.shape[1]):
        u = x[:, t]
        h = A_bar * h + B_bar * u[..., None]
        mx = F.silu((C[0] * h).sum(-1) + ema.D * u)  # X'_t
        v = F.silu(u @ layer.W_v.T + layer.b_v)
        base = mx @ layer.W_mx.T + layer.b_mx
        phi = torch.sigmoid(base[:, :H_])
        z = F.silu(base[:, H_ : H_ + Z])
        gate = F.silu(base[:, H_ + Z : H_ + Z + V])
        hx = base[:, H_ + Z + V :]
        qs.append(z * layer.kappa[0] + layer.mu[0])
        ks.append(z * layer.kappa[1] + layer.mu[1])
        vs.append(v)
        start = (t // T) * T  # the chunk's first position
        i = t - start
        scores = torch.stack([(qs[t] * ks[s]).sum(-1) for s in range(start, t + 1)], -1)  # (B, i+1)
        bias = torch.stack([_rel_bias(layer, i, s - start) for s in range(start, t + 1)])
        if layer.attention == "softmax":
            w = torch.softmax(scores / math.sqrt(Z) + bias, -1)
        else:
            w = 0.5 * (1 + torch.erf((scores / (i + 1) + bias - math.sqrt(0.5)) / (math.sqrt(1 / (4 * math.pi)) * math.sqrt(2))))
        o = (w[..., None] * torch.stack(vs[start : t + 1], 1)).sum(1)  # (B, V)
        H_hat = F.silu(hx + (o * gate) @ layer.U_h.T + layer.b_h)
        outs.append(phi * H_hat + (1 - phi) * u)  # Y_t (eq. 15)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("opts", [
    {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 8},
    {"d_state": 3, "d_qk": 6, "d_v": 4, "chunk_size": None, "attention": "laplace", "max_positions": 32},
    {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 6, "positional": "rotary", "attention": "laplace"},
    {"d_state": 2, "d_qk": 8, "d_v": 3, "chunk_size": 7, "positional": "rotary"},
])
def test_forward_equals_the_equations(opts):
    layer = make_layer("mega", opts)
    with torch.no_grad():  # larger gates and biases than the 0.02 init, so that every term matters
        for p in (layer.kappa, layer.mu, layer.rel_bias, layer.b_mx, layer.W_mx, layer.W_v, layer.U_h):
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.randn(2, 23, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, _ = layer(x)
        assert rel_err(x + y, _loop(layer, x)) < 1e-12  # the layer returns Y - X


def test_chunk_at_least_the_length_equals_full_attention():
    chunked = make_layer("mega", {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 64})
    full = make_layer("mega", {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": None, "max_positions": 64})
    full.load_state_dict(chunked.state_dict())
    x = torch.randn(2, 50, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y_c, h_c = chunked(x)
        y_f, h_f = full(x)
    assert rel_err(y_c, y_f) < 1e-13
    assert torch.equal(h_c.keys, h_f.keys) and torch.equal(h_c.ema, h_f.ema)
    with torch.no_grad():
        chunk_8 = make_layer("mega", {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 8})
        chunk_8.load_state_dict({k: v for k, v in chunked.state_dict().items() if k != "rel_bias"}, strict=False)
        chunk_8.rel_bias.copy_(chunked.rel_bias[64 - 8 : 64 + 7])  # offsets -7..7 of the wider table
        assert rel_err(chunk_8(x)[0][:, :8], y_f[:, :8]) < 1e-13  # equal in the first chunk only
        assert rel_err(chunk_8(x)[0][:, 8:], y_f[:, 8:]) > 1e-6  # later chunks do not see earlier keys (small at init)


def test_the_cache_holds_the_unfinished_chunk():
    layer = make_layer("mega", {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 8})
    x = torch.randn(2, 21, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, h = layer(x)
        assert h.keys.shape == (2, 5, 4) and h.values.shape == (2, 5, 5)  # 21 = 2·8 + 5
        y_steps, h_steps = run_steps(layer, x[:, :16])
        assert h_steps.keys.shape == (2, 0, 4)  # emptied at the boundary
        y2, h2 = layer(x[:, 16:], h_steps)
    assert rel_err(torch.cat([y_steps, y2], 1), y) < 1e-12 and rel_err(h2.keys, h.keys) < 1e-12


def test_block_without_norm_gives_equation_15():
    layer = make_layer("mega", {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 8})
    block = Block(layer, norm=None, device=DEVICE, dtype=torch.float64)
    assert isinstance(block.activation, torch.nn.Identity) and isinstance(block.out, torch.nn.Identity)
    x = torch.randn(2, 19, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(block(x)[0], _loop(layer, x)) < 1e-12


def test_bad_states_and_spans_raise():
    layer = make_layer("mega", {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 8})
    x = torch.randn(2, 5, H, device=DEVICE, dtype=torch.float64)
    ema = torch.zeros(2, H, 2, device=DEVICE, dtype=torch.float64)
    kv = lambda n, d: torch.zeros(2, n, d, device=DEVICE, dtype=torch.float64)  # noqa: E731
    with pytest.raises(ValueError, match="one length; got 2 keys and 3 values"):
        layer(x, MegaState(ema, kv(2, 4), kv(3, 5)))
    with pytest.raises(ValueError, match="fewer than 8 positions; got 8"):
        layer.step(x[:, 0], MegaState(ema, kv(8, 4), kv(8, 5)))
    with pytest.raises(ValueError, match=r"state\[1\] must be \(2, any, 4\)"):
        layer(x, MegaState(ema, kv(2, 3), kv(2, 5)))
    full = make_layer("mega", {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": None, "max_positions": 16})
    with pytest.raises(ValueError, match="at most 16 positions"):
        full(torch.randn(1, 17, H, device=DEVICE, dtype=torch.float64))
    _, h = full(torch.randn(1, 16, H, device=DEVICE, dtype=torch.float64))
    with pytest.raises(ValueError, match="at most 16 positions"):
        full.step(torch.randn(1, H, device=DEVICE, dtype=torch.float64), h)


def test_options_and_initialisation():
    torch.manual_seed(0)
    layer = layers.build("mega", d_model=64, dtype=torch.float64)
    assert (layer.d_state, layer.d_qk, layer.d_v, layer.chunk_size) == (16, 64, 128, 1024)
    assert layer.rel_bias.shape == (2 * 1024 - 1,)
    assert abs(layer.W_mx.std().item() - 0.02) < 0.001 and not layer.b_mx.any() and not layer.mu.any()
    assert layer.block_defaults.activation is None and layer.block_defaults.mixer_out is None
    assert set(layers.optim_marks(layer.ema)) == {"logit_alpha", "logit_delta", "beta"}
    with pytest.raises(ValueError, match="attention must be one of"):
        layers.build("mega", d_model=H, attention="relu2")
    with pytest.raises(ValueError, match="positional must be one of"):
        layers.build("mega", d_model=H, positional="alibi")
    with pytest.raises(ValueError, match="d_qk must be even with the rotary bias"):
        layers.build("mega", d_model=H, d_qk=5, positional="rotary")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        layers.build("mega", d_model=H, chunk_size=0)
    with pytest.raises(NotImplementedError, match="nonlinear"):
        layer.kernel(3)
