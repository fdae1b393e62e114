"""Mega and causal attention against float64 references written here from the papers' equations (probe 35).

- Mega (arXiv 2209.10655 eq. 6-16): the EMA by its recurrence (``ema_reference`` of probe 31), then per chunk and per
  query an explicit loop over the keys it sees, the softmax or Laplace function (τ = √Z, or the number of keys seen),
  the simple bias table entry P - 1 + j - i or the rotary bias rot_i(a) · rot_j(b), the gates and eq. 14-15; with
  every parameter (the EMA's too, the zero-initialised biases and μ) moved off its initial value.
- Attention (arXiv 1706.03762 eq. 1, rotary positions arXiv 2104.09864 eq. 34): each query's masked softmax written
  as exp / Σ exp over the positions it sees, the rotations at the absolute positions (a cache's position per batch
  item), the KV-cache steps against the full forward.
- ``ssmkit.ops.attention``: the mask and the blocked path against the same loop at the edges of the query blocks.
"""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.layers import KVCache, MegaState
from ssmkit.ops.attention import _QUERY_BLOCK, causal_attention_chunked, causal_attention_reference
from tests.conftest import DEVICE, H, leaves, make_layer, rel_err, run_steps
from tests.layers.test_rglru_h3_ema_reference import ema_reference, perturb
from tests.ops.test_attention import _loop_oracle

F64 = torch.float64


def silu(x: torch.Tensor) -> torch.Tensor:
    """x σ(x), written out."""
    return x / (1.0 + torch.exp(-x))


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + e^{-x}), written out."""
    return 1.0 / (1.0 + torch.exp(-x))


def randn(*shape: int, seed: int) -> torch.Tensor:
    """A seeded float64 normal tensor on the test device."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(DEVICE)


# ------------------------------------------------------------------------------------------------------------------
# Mega


def mega_bias(p: dict, layer, i: int, j: int) -> float:
    """b_rel for a query at chunk position i and a key at j: the simple table's entry P - 1 + j - i (the official
    layout) or rot_i(a) · rot_j(b) with the halves rotated by t·ω_k, ω_k = 10000^{-k/(Z/2)}."""
    if layer.positional == "simple":
        return float(p["rel_bias"][layer.span - 1 + j - i])
    half = layer.d_qk // 2
    a, b = p["rel_bias"][0], p["rel_bias"][1]

    def rot(x: torch.Tensor, t: int) -> torch.Tensor:
        out = torch.empty_like(x)
        for m in range(half):
            w = t * 10000.0 ** (-m / half)
            out[m] = x[m] * math.cos(w) - x[m + half] * math.sin(w)
            out[m + half] = x[m + half] * math.cos(w) + x[m] * math.sin(w)
        return out

    return float((rot(a, i) * rot(b, j)).sum())


def laplace_ref(x: float) -> float:
    """f(x) = ½(1 + erf((x - μ)/(σ√2))), μ = √½, σ = √(1/4π) (arXiv 2209.10655 eq. 16)."""
    return 0.5 * (1.0 + math.erf((x - math.sqrt(0.5)) / (math.sqrt(1.0 / (4.0 * math.pi)) * math.sqrt(2.0))))


def mega_reference(layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 6-15 in float64 from the start of the sequence: φ ⊙ (Ĥ - X) (B, L, H), the EMA state, and the keys and
    values (B, L, ·) of every position. Chunks of ``chunk_size`` (or one chunk of L); a query at chunk position i
    sees the keys j <= i of its chunk (all of them when bidirectional)."""
    p = {k: v.detach().to(F64).cpu() for k, v in layer.named_parameters()}
    x = x.to(F64).cpu()
    Bsz, L, _ = x.shape
    Hc, Z, V = layer.d_model, layer.d_qk, layer.d_v
    e, h_ema = ema_reference(layer.ema, x)  # (B, L, H)
    mx = silu(e)  # X' (eq. 6)
    W = p["W_mx"]
    phi = sigmoid(mx @ W[:Hc].T + p["b_mx"][:Hc])  # eq. 13
    z = silu(mx @ W[Hc : Hc + Z].T + p["b_mx"][Hc : Hc + Z])  # eq. 7
    gamma = silu(mx @ W[Hc + Z : Hc + Z + V].T + p["b_mx"][Hc + Z : Hc + Z + V])  # eq. 12
    hx = mx @ W[Hc + Z + V :].T + p["b_mx"][Hc + Z + V :]
    q = p["kappa"][0] * z + p["mu"][0]  # eq. 8
    k = p["kappa"][1] * z + p["mu"][1]  # eq. 9
    v = silu(x @ p["W_v"].T + p["b_v"])  # eq. 10
    T = layer.chunk_size or L
    O = torch.zeros(Bsz, L, V, dtype=F64)
    for b in range(Bsz):
        for t in range(L):
            c0 = (t // T) * T
            c1 = min(c0 + T, L)
            keys = range(c0, c1) if layer.bidirectional else range(c0, t + 1)
            s = [float(q[b, t] @ k[b, j]) for j in keys]
            bias = [mega_bias(p, layer, t - c0, j - c0) for j in keys]
            if layer.attention == "softmax":
                a = [si / math.sqrt(Z) + bi for si, bi in zip(s, bias)]
                m = max(a)
                w = [math.exp(ai - m) for ai in a]
                w = [wi / sum(w) for wi in w]
            else:
                w = [laplace_ref(si / len(s) + bi) for si, bi in zip(s, bias)]
            for wi, j in zip(w, keys):
                O[b, t] += wi * v[b, j]
    H_hat = silu(hx + (gamma * O) @ p["U_h"].T + p["b_h"])  # eq. 14
    return phi * (H_hat - x), h_ema, k, v


def mega_layer(seed: int = 3, **opts):
    """A float64 Mega layer with every parameter moved off its initial value."""
    layer = make_layer("mega", opts, seed=seed)
    perturb(layer, 0.5, seed)
    return layer


MEGA_CASES = [
    {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 6},
    {"d_state": 3, "d_qk": 5, "d_v": 2, "chunk_size": 7, "attention": "laplace"},
    {"d_state": 2, "d_qk": 6, "d_v": 4, "chunk_size": None, "max_positions": 17, "positional": "rotary"},
    {"d_state": 3, "d_qk": 4, "d_v": 3, "chunk_size": None, "max_positions": 20, "attention": "laplace"},
    {"d_state": 2, "d_qk": 6, "d_v": 5, "chunk_size": 5, "positional": "rotary", "attention": "laplace"},
]


@pytest.mark.parametrize("opts", MEGA_CASES)
def test_mega_forward_state_and_step_equal_the_equations(opts):
    layer = mega_layer(**opts)
    x = randn(2, 17, H, seed=5)
    y_ref, h_ref, k_ref, v_ref = mega_reference(layer, x)
    T = layer.chunk_size or 10**9
    keep = 17 - (17 // T) * T if layer.chunk_size else 17  # the unfinished chunk's positions (all without chunks)
    with torch.no_grad():
        for backend in ("reference", "chunked", "fft"):
            with ops.use_backend(backend):
                y, h = layer(x)
            assert rel_err(y, y_ref) < 1e-12, backend
        assert rel_err(h.ema, h_ref) < 1e-12
        assert rel_err(h.keys, k_ref[:, 17 - keep :]) < 1e-12 and rel_err(h.values, v_ref[:, 17 - keep :]) < 1e-12
        # a call of 3 steps (mid-chunk), then 9 one-step calls, then a call of the rest from the cache
        y1, h1 = layer(x[:, :3])
        y2, h2 = run_steps(layer, x[:, 3:12], h1)
        y3, h3 = layer(x[:, 12:], h2)
    assert rel_err(torch.cat([y1, y2, y3], 1), y_ref) < 1e-12
    assert rel_err(h3.ema, h_ref) < 1e-12 and rel_err(h3.keys, k_ref[:, 17 - keep :]) < 1e-12


@pytest.mark.parametrize("opts", [
    {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 5, "attention": "laplace"},
    {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 5},
    {"d_state": 3, "d_qk": 6, "d_v": 3, "chunk_size": None, "max_positions": 13, "positional": "rotary"},
])
def test_bidirectional_mega_equals_the_equations(opts):
    layer = mega_layer(seed=4, bidirectional=True, **opts)
    x = randn(2, 13, H, seed=6)  # 13 = 2·5 + 3: a last chunk of three positions and two padding keys
    y_ref, _, _, _ = mega_reference(layer, x)
    with torch.no_grad():
        for backend in ("reference", "chunked", "fft"):
            with ops.use_backend(backend):
                y, _ = layer(x)
            assert rel_err(y, y_ref) < 1e-12, backend


def test_mega_relative_bias_tables_by_their_formulas():
    for opts in ({"positional": "simple", "chunk_size": 5}, {"positional": "rotary", "chunk_size": None}):
        layer = mega_layer(d_state=2, d_qk=6, d_v=3, **opts)
        p = {k: v.detach().cpu() for k, v in layer.named_parameters()}
        for T, K, offset in ((3, 5, 2), (1, 4, 3), (5, 5, 0)):
            with torch.no_grad():
                table = layer._relative_bias(T, K, offset, DEVICE)
            expected = torch.tensor([[mega_bias(p, layer, offset + i, j) for j in range(K)] for i in range(T)],
                                    dtype=F64)
            assert rel_err(table, expected) < 1e-13, (opts, T, K, offset)


def test_mega_spans_at_the_limit():
    layer = mega_layer(d_state=2, d_qk=4, d_v=3, chunk_size=None, max_positions=9)
    with torch.no_grad():
        y, h = layer(randn(1, 9, H, seed=1))  # exactly max_positions: allowed
        assert h.keys.shape == (1, 9, 4)
        with pytest.raises(ValueError, match="at most 9 positions .* got a span of 10"):
            layer.step(randn(1, H, seed=2), h)
        with pytest.raises(ValueError, match="at most 9 positions .* got a span of 10"):
            layer(randn(1, 10, H, seed=2))
    chunked = mega_layer(d_state=2, d_qk=4, d_v=3, chunk_size=4, max_positions=2)  # the chunk, not max_positions
    assert chunked.span == 4 and chunked.rel_bias.shape == (7,)
    with torch.no_grad():
        y, h = chunked(randn(1, 11, H, seed=3))
    assert h.keys.shape == (1, 3, 4)
    with pytest.raises(ValueError, match="fewer than 4 positions; got 4"):
        full_cache = (torch.zeros(1, 4, n, dtype=F64, device=DEVICE) for n in (4, 3))
        chunked(randn(1, 2, H, seed=4), MegaState(h.ema, *full_cache))


class _MegaWithState(torch.nn.Module):
    """Mega's forward with its final state, as a module of x alone (for ``torch.export``)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        y, h = self.layer(x, return_state=True)
        return (y, *leaves(h))


def test_mega_exports_with_its_state_for_whole_chunks():
    # A dynamic L = 6k keeps L mod chunk_size at 0 (the export test of every layer exports Mega without its state, as
    # torch specialises L mod 6 at 0 and 1): the symbolic path's output and empty cache against the eager call.
    layer = mega_layer(d_state=2, d_qk=4, d_v=5, chunk_size=6).float().eval()
    module = _MegaWithState(layer)
    with torch.no_grad():
        program = torch.export.export(module, (torch.randn(2, 12, H, device=DEVICE),),
                                      dynamic_shapes=({1: 6 * torch.export.Dim("k", min=1, max=16)},)).module()
        for L in (6, 18, 36):
            x = torch.randn(2, L, H, device=DEVICE)
            got, want = program(x), module(x)
            assert [g.shape for g in got] == [w.shape for w in want] == [(2, L, H), (2, H, 2), (2, 0, 4), (2, 0, 5)]
            assert rel_err(got[0], want[0]) < 1e-6 and rel_err(got[1], want[1]) < 1e-6


def test_mega_options_are_stored_shown_and_checked():
    layer = layers.build("mega", d_model=5, d_state=3, d_qk=6, d_v=7, attention="laplace", chunk_size=9,
                         positional="rotary", max_positions=11, bidirectional=True, dtype=F64)
    assert (layer.d_model, layer.d_state, layer.d_qk, layer.d_v) == (5, 3, 6, 7)
    assert (layer.attention, layer.chunk_size, layer.positional, layer.max_positions, layer.bidirectional) == (
        "laplace", 9, "rotary", 11, True)
    assert layer.W_mx.shape == (2 * 5 + 6 + 7, 5) and layer.rel_bias.shape == (2, 6) and layer.U_h.shape == (5, 7)
    assert layer.kappa.shape == layer.mu.shape == (2, 6)  # (κ_q, κ_k) and (μ_q, μ_k): no other rows
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for p in layer.ema.parameters()) + (
        7 * 5 + 7 + 23 * 5 + 23 + 5 * 7 + 5 + 2 * 6 + 2 * 6 + 2 * 6)  # W_v, b_v, W_mx, b_mx, U_h, b_h, κ, μ, a and b
    assert repr(layer).startswith(
        "Mega(\n  d_model=5, d_state=3, d_qk=6, d_v=7, attention='laplace', chunk_size=9, positional='rotary', "
        "bidirectional=True")
    assert layer.ema.bidirectional and layers.build("mega", d_model=2, d_qk=3).d_v == 4
    assert layers.build("mega", d_model=2, chunk_size=None, max_positions=6).rel_bias.shape == (11,)
    for name, value in (("d_model", 0), ("d_qk", 0), ("d_v", 0), ("max_positions", 0), ("chunk_size", -1),
                        ("bidirectional", 1), ("attention", "relu")):
        with pytest.raises(ValueError, match=name):
            layers.build("mega", **{"d_model": 4, name: value})
    with pytest.raises(ValueError, match="d_qk must be even"):
        layers.build("mega", d_model=4, d_qk=3, positional="rotary")


def test_mega_initialisation():
    torch.manual_seed(0)
    layer = layers.build("mega", d_model=40, d_qk=400, d_v=50, chunk_size=1000, dtype=F64)
    for p in (layer.W_v, layer.W_mx, layer.U_h, layer.kappa, layer.rel_bias):  # 800 to 22 000 draws of N(0, 0.02²)
        assert abs(float(p.detach().std()) - 0.02) < 0.002 and abs(float(p.detach().mean())) < 0.003
    for p in (layer.b_v, layer.b_mx, layer.b_h, layer.mu):
        assert not p.any()
    perturb(layer, 1.0)
    ema_before = layer.ema.gamma.detach().clone()
    layer.reset_parameters()
    assert not layer.b_v.any() and abs(float(layer.W_v.detach().std()) - 0.02) < 0.002
    assert not torch.equal(layer.ema.gamma, ema_before)  # the EMA re-drawn too
    assert float(layer.ema.gamma.detach().std()) > 0.5


# ------------------------------------------------------------------------------------------------------------------
# Attention


def attention_reference(layer, x: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """y (B, L, H) of x (B, L, H) whose first step is at position start[b] (and sees nothing earlier), in float64:
    per head an explicit exp / Σ exp over the positions each query sees, rotary pairs (x_m, x_{m+P/2}) rotated by
    t · base^{-2m/P}, t the absolute position."""
    p = {k: v.detach().to(F64).cpu() for k, v in layer.named_parameters()}
    x = x.to(F64).cpu()
    Bsz, L, _ = x.shape
    A, P = layer.n_heads, layer.head_dim
    qkv = x @ p["qkv.weight"].T + (p["qkv.bias"] if layer.bias else 0.0)  # (B, L, 3AP)
    q, k, v = qkv.reshape(Bsz, L, 3, A, P).unbind(2)  # (B, L, A, P)

    def rot(u: torch.Tensor, t: float) -> torch.Tensor:
        out = u.clone()
        for m in range(P // 2):
            w = t * layer.rotary_base ** (-2.0 * m / P)
            out[..., m] = u[..., m] * math.cos(w) - u[..., m + P // 2] * math.sin(w)
            out[..., m + P // 2] = u[..., m + P // 2] * math.cos(w) + u[..., m] * math.sin(w)
        return out

    o = torch.zeros(Bsz, L, A, P, dtype=F64)
    for b in range(Bsz):
        t0 = float(start[b])
        if layer.positional == "rotary":
            qb = torch.stack([rot(q[b, t], t0 + t) for t in range(L)])
            kb = torch.stack([rot(k[b, t], t0 + t) for t in range(L)])
        else:
            qb, kb = q[b], k[b]
        for a in range(A):
            for t in range(L):
                seen = [s for s in range(t + 1) if layer.window is None or s > t - layer.window]
                e = [math.exp(float(qb[t, a] @ kb[s, a]) / math.sqrt(P)) for s in seen]
                for es, s in zip(e, seen):
                    o[b, t, a] += es / sum(e) * v[b, s, a]
    return o.reshape(Bsz, L, A * P) @ p["out.weight"].T + (p["out.bias"] if layer.bias else 0.0)


ATTENTION_CASES = [
    {"n_heads": 2, "head_dim": 4, "bias": True, "rotary_base": 7.0},
    {"n_heads": 3, "head_dim": 2, "bias": True, "window": 4, "rotary_base": 3.0},
    {"n_heads": 1, "head_dim": 5, "bias": True, "positional": None, "window": 3},
]


@pytest.mark.parametrize("opts", ATTENTION_CASES)
def test_attention_forward_and_cache_equal_the_equations(opts):
    layer = make_layer("attention", opts, seed=2)
    perturb(layer, 0.3, seed=2)
    x = randn(2, 11, H, seed=7)
    y_ref = attention_reference(layer, x, torch.zeros(2))
    with torch.no_grad():
        for backend in ("reference", "chunked"):
            with ops.use_backend(backend):
                y, h = layer(x)
                assert rel_err(y, y_ref) < 1e-12, backend
                y1, h1 = layer(x[:, :2])
                y2, h2 = run_steps(layer, x[:, 2:7], h1)
                y3, h3 = layer(x[:, 7:], h2)
            assert rel_err(torch.cat([y1, y2, y3], 1), y_ref) < 1e-12, backend
            assert torch.equal(h3.position, torch.full((2, 1), 11.0, dtype=F64, device=DEVICE))
            kept = 11 if layer.window is None else layer.window - 1
            assert h3.keys.shape == (2, layer.n_heads, kept, layer.head_dim) and rel_err(h3.keys, h.keys) < 1e-12
            assert rel_err(h3.values, h.values) < 1e-12
    # the cached values are the newest positions' x W_v (unrotated), oldest first
    v_ref = (x @ layer.qkv.weight.T + layer.qkv.bias).reshape(2, 11, 3, layer.n_heads, layer.head_dim)[:, :, 2]
    assert rel_err(h.values, v_ref[:, 11 - kept :].transpose(1, 2)) < 1e-12


def test_attention_continues_from_each_batch_items_own_position():
    # window 3: a cache holds 2 positions whatever the history; item 0 has seen 4 steps, item 1 has seen 6
    layer = make_layer("attention", {"n_heads": 2, "head_dim": 4, "window": 3, "rotary_base": 5.0}, seed=3)
    perturb(layer, 0.3, seed=3)
    hist0, hist1 = randn(1, 4, H, seed=8), randn(1, 6, H, seed=9)
    x = randn(2, 5, H, seed=10)
    with torch.no_grad():
        _, s0 = layer(hist0)
        _, s1 = layer(hist1)
        state = KVCache(*(torch.cat([a, b]) for a, b in zip(s0, s1)))
        assert state.position.tolist() == [[4.0], [6.0]]
        y, h = layer(x, state)
        y_steps, h_steps = run_steps(layer, x, state)
    for b, hist in enumerate((hist0, hist1)):
        full = torch.cat([hist, x[b : b + 1]], 1)
        expected = attention_reference(layer, full, torch.zeros(1))[:, hist.shape[1] :]
        assert rel_err(y[b : b + 1], expected) < 1e-12 and rel_err(y_steps[b : b + 1], expected) < 1e-12
    assert h.position.tolist() == [[9.0], [11.0]] and rel_err(h_steps.keys, h.keys) < 1e-12


def test_attention_options_are_stored_shown_and_checked():
    layer = layers.build("attention", d_model=7, n_heads=3, head_dim=6, bias=True, window=5, rotary_base=500,
                         dtype=F64)
    assert (layer.n_heads, layer.head_dim, layer.bias, layer.window, layer.cache_limit) == (3, 6, True, 5, 4)
    assert layer.rotary_base == 500.0 and isinstance(layer.rotary_base, float)
    assert layer.qkv.weight.shape == (54, 7) and layer.out.weight.shape == (7, 18) and layer.out.bias is not None
    assert "d_model=7, n_heads=3, head_dim=6, bias=True, positional='rotary', window=5" in repr(layer)
    default = layers.build("attention", d_model=8)
    assert default.qkv.bias is None and default.cache_limit is None
    assert layers.build("attention", d_model=8, head_dim=3, positional=None).head_dim == 3  # odd: fine unrotated
    assert layers.build("attention", d_model=8, head_dim=4).n_heads == 2
    for value in (1, 1.0, 0.5, math.inf, True, "10"):
        with pytest.raises(ValueError, match="rotary_base must be a finite float > 1"):
            layers.build("attention", d_model=4, rotary_base=value)
    layers.build("attention", d_model=4, rotary_base=1.5)
    for name, value in (("d_model", 0), ("head_dim", 0), ("bias", 1)):
        with pytest.raises(ValueError, match=name):
            layers.build("attention", **{"d_model": 4, name: value})


def test_attention_cache_of_a_window_of_one_and_limits():
    layer = make_layer("attention", {"n_heads": 2, "head_dim": 4, "window": 1}, seed=4)
    perturb(layer, 0.3, seed=4)
    x = randn(2, 6, H, seed=11)
    with torch.no_grad():
        y, h = layer(x)
        assert h.keys.shape == (2, 2, 0, 4)  # window 1: each query sees itself only, nothing is cached
        assert rel_err(y, attention_reference(layer, x, torch.zeros(2))) < 1e-12
        y_steps, _ = run_steps(layer, x)
    assert rel_err(y_steps, y) < 1e-12
    layer = make_layer("attention", {"n_heads": 1, "head_dim": 2, "window": 3}, seed=4)
    z = torch.zeros(1, 1, 2, 2, dtype=F64, device=DEVICE)
    with torch.no_grad():
        layer.step(randn(1, H, seed=1), KVCache(z, z, torch.zeros(1, 1, dtype=F64, device=DEVICE)))  # 2 = window - 1
        with pytest.raises(ValueError, match="at most window - 1 = 2 positions; got 3"):
            z3 = torch.zeros(1, 1, 3, 2, dtype=F64, device=DEVICE)
            layer.step(randn(1, H, seed=1), KVCache(z3, z3, torch.zeros(1, 1, dtype=F64, device=DEVICE)))


# ------------------------------------------------------------------------------------------------------------------
# ops.attention


@pytest.mark.parametrize("Lq,K,window", [
    (_QUERY_BLOCK + 3, _QUERY_BLOCK + 3, 2),  # no cache, a window smaller than L: the masked path, two blocks
    (_QUERY_BLOCK + 3, _QUERY_BLOCK + 3, _QUERY_BLOCK + 3),  # a window of exactly L: the causal call
    (2 * _QUERY_BLOCK, 2 * _QUERY_BLOCK + 4, 3),  # blocks ending exactly at L, a cache of 4
    (1, 9, 9), (1, 9, 10), (1, 9, 4), (1, 1, None), (2, 9, 1),
])
def test_ops_attention_at_the_block_and_window_edges(Lq, K, window):
    q, k, v = randn(1, 2, Lq, 3, seed=1), randn(1, 2, K, 3, seed=2), randn(1, 2, K, 3, seed=3)
    expected = _loop_oracle(q, k, v, window)  # the per-query loop of tests/ops/test_attention
    assert rel_err(causal_attention_chunked(q, k, v, window), expected) < 1e-12
    assert rel_err(causal_attention_reference(q, k, v, window), expected) < 1e-12


def test_ops_causal_mask_and_rotary_by_their_formulas():
    for Lq, K, window, first in ((3, 7, None, 0), (3, 7, 2, 0), (4, 4, 3, 1), (2, 6, 4, 3)):
        expected = [[(first + j <= K - Lq + i) and (window is None or first + j > K - Lq + i - window)
                     for j in range(K - first)] for i in range(Lq)]
        assert ops.causal_mask(Lq, K, window, first=first).tolist() == expected
    x = randn(2, 3, 6, seed=4)
    pos = torch.tensor([[0.5, 2.0, 7.0]], dtype=F64, device=DEVICE)
    r = ops.rotary(x, pos, base=9.0)
    for b in range(2):
        for t in range(3):
            for m in range(3):
                w = float(pos[0, t]) * 9.0 ** (-2.0 * m / 6)
                x1, x2 = float(x[b, t, m]), float(x[b, t, m + 3])
                assert abs(float(r[b, t, m]) - (x1 * math.cos(w) - x2 * math.sin(w))) < 1e-13
                assert abs(float(r[b, t, m + 3]) - (x2 * math.cos(w) + x1 * math.sin(w))) < 1e-13
    far = torch.tensor([1e5 + 1.0], device=DEVICE)
    r32 = ops.rotary(x.float(), far, base=10000.0)  # float64 angles, rounded once
    assert rel_err(r32, ops.rotary(x, far)) < 1e-6


def test_ops_attention_argument_checks():
    q = randn(1, 2, 3, 4, seed=5)
    for bad in (q.to(torch.int64), q[0], [1.0]):
        with pytest.raises(ValueError, match="real floating"):
            causal_attention_reference(bad, q, q)
    for fn in (causal_attention_reference, causal_attention_chunked):
        with pytest.raises(ValueError, match=r"^v must be a real floating \(B, A, L, P\) tensor; got \(2, 3, 4\)"):
            fn(q, q, q[0])  # the message names the argument at fault
        with pytest.raises(ValueError, match="^k must be a real floating"):
            fn(q, q.to(torch.int32), q)
    with pytest.raises(ValueError, match="same B, A, P"):
        causal_attention_reference(q, q[..., :3], q[..., :3])
    with pytest.raises(ValueError, match="same B, A, P"):
        causal_attention_reference(q, q, q[:, :, :2])
    with pytest.raises(ValueError, match="same B, A, P"):
        causal_attention_reference(q[:1, :1], q, q)
    for window in (True, 1.5, -1):
        with pytest.raises(ValueError, match="window must be None or an int >= 1"):
            causal_attention_chunked(q, q, q, window)
    with pytest.raises(ValueError, match="1 <= Lq <= K; got Lq=0"):
        causal_attention_chunked(q[:, :, :0], q, q)


# ------------------------------------------------------------------------------------------------------------------
# Both layers


def test_zoo_entries_backends_and_plain_tuple_states():
    for name, backends in (("mega", ("reference", "chunked", "fft", "native")), ("attention", ("reference", "chunked"))):
        cls = layers.layer_class(name)
        assert cls.zoo.paper == {"mega": "arXiv 2209.10655", "attention": "arXiv 1706.03762"}[name]
        assert cls.zoo.time_varying and cls.zoo.stable_by_construction  # input-dependent weights, bounded outputs
        assert cls.backends == backends
    for name, opts in (("mega", {"d_state": 2, "d_qk": 4, "d_v": 3, "chunk_size": 4}),
                       ("attention", {"n_heads": 2, "head_dim": 4, "window": 3})):
        layer = make_layer(name, opts, seed=5)
        x = randn(2, 7, H, seed=12)
        with torch.no_grad():
            y, h = layer(x)
            _, h1 = layer(x[:, :3])
            y2, h2 = layer(x[:, 3:], tuple(h1))  # a plain tuple is accepted as the state
            y_t, _ = layer.step(x[:, 3], tuple(h1))
        assert rel_err(y2, y[:, 3:]) < 1e-12 and rel_err(y_t, y[:, 3]) < 1e-12, name
