"""Mutation round of 2026-12-07 over five modules that had never been mutation-tested: layers/mega.py,
layers/hyena.py, layers/sgconv.py, layers/attention.py and ops/attention.py.

133 hand mutants (flipped signs, swapped halves and dimensions, off-by-one masks, windows and caches, dropped terms,
changed constants, inits and defaults, skipped checks and casts) were run against the modules' own test files, then
the protocol and conformance suites and the probes that name the module. The tests below kill the survivors that can
be killed, each against an independent reference written here (a float64 loop of the equations, the documented
argument contract). Each test's docstring names the mutants it kills. The equivalent survivors (no test can see
them): Hyena's step-filter cache grown to exactly n taps instead of doubling (the same values); SGConv upsampling
scale 1 by the factor-1 interpolation matrix (the identity), the interpolation's upper row index left unclamped (its
weight λ is 0 there), and the kernel norm measured before D is drawn (it does not depend on D, and draws nothing);
the layer's step by the reference attention backend (the same function); and in ops/attention.py a query block's
key slice starting one key earlier (that key is masked), query blocks of 3 (cost only), and the one-query shortcut
skipped (the block path gives the same).
"""

from __future__ import annotations

import pytest
import torch

import ssmkit.layers as layers
from ssmkit import ops
from tests.conftest import DEVICE

F64 = torch.float64


# ------------------------------------------------------------------------------------------------------------------
# layers/mega.py


def test_a_bidirectional_megas_mask_on_another_device_is_refused():
    """Kills M30 (the check that the mask is on x's device dropped): the mask then reached ``padding_lengths`` on the
    other device and failed there with a device error, not the documented ValueError. The meta device stands in for
    a second device (as tests/ops/test_ssd.py does)."""
    torch.manual_seed(0)
    layer = layers.build("mega", d_model=3, d_state=2, d_qk=4, d_v=5, chunk_size=8, bidirectional=True,
                          device=DEVICE, dtype=F64)
    x = torch.randn(2, 6, 3, dtype=F64, device=DEVICE)
    mask = torch.ones(2, 6, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match=rf"mask must be on x's device {x.device}; got meta"):
        layer(x, mask=mask.to("meta"))
    y, state = layer(x, mask=mask)  # the same mask on x's device is taken
    assert state is None and y.shape == (2, 6, 3) and torch.isfinite(y).all()


def test_a_masked_mega_takes_an_input_of_another_float_dtype():
    """Kills M39 (the masked path handing x to the core without casting it to the parameters' dtype): a float64 layer
    given float32 x and a padding mask must run in float64 and return float32, as its unmasked path does; the
    mutant failed in the first projection (float32 x against float64 weights). The reference is the same layer on
    the float64 copy of x, rounded once, and the float64 items run alone (each item's unpadded prefix)."""
    torch.manual_seed(4)
    layer = layers.build("mega", d_model=3, d_state=2, d_qk=4, d_v=5, chunk_size=None, max_positions=8,
                         bidirectional=True, device=DEVICE, dtype=F64)
    x = torch.randn(2, 6, 3, device=DEVICE).to(torch.float32)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2], device=DEVICE)
    with torch.no_grad():
        y, _ = layer(x, mask=mask)
        y64, _ = layer(x.double(), mask=mask)
        alone, _ = layer(x[1:, :4].double())
    assert y.dtype == torch.float32 and y64.dtype == F64
    torch.testing.assert_close(y, y64.float(), rtol=0, atol=0)
    torch.testing.assert_close(y64[1, :4], alone[0], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# layers/hyena.py


@pytest.mark.parametrize("return_state", [True, False])
def test_hyena_returns_the_inputs_dtype_with_and_without_its_state(return_state):
    """Kills H29 (the output of ``forward(..., return_state=False)`` left in the parameters' dtype): a float64 layer
    given float32 x returns float32 on both paths, equal to the layer on the float64 copy of x rounded once."""
    torch.manual_seed(5)
    layer = layers.build("hyena", d_model=3, l_max=16, order=3, filter_width=8, device=DEVICE, dtype=F64)
    x = torch.randn(2, 7, 3, device=DEVICE).to(torch.float32)
    with torch.no_grad():
        y, state = layer(x, None, return_state)
        y64, _ = layer(x.double(), None, return_state)
    assert y.dtype == torch.float32 and (state is not None) == return_state
    torch.testing.assert_close(y, y64.float(), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------------
# ops/attention.py and layers/attention.py


def _windowed_loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None) -> torch.Tensor:
    """o_i = Σ_j softmax_j(q_i·k_j/√P) v_j over keys j in (p_i - window, p_i], p_i = K - L + i: one query at a time,
    each softmax written out as exp / Σ exp in float64 (arXiv 1706.03762 eq. 1)."""
    L, K, P = q.shape[2], k.shape[2], q.shape[3]
    out = torch.zeros_like(q)
    for i in range(L):
        p = K - L + i
        lo = 0 if window is None else max(0, p - window + 1)
        s = (q[:, :, i, None, :] * k[:, :, lo : p + 1]).sum(-1) / P**0.5  # (B, A, seen)
        w = torch.exp(s - s.amax(-1, keepdim=True))
        out[:, :, i] = ((w / w.sum(-1, keepdim=True))[..., None] * v[:, :, lo : p + 1]).sum(2)
    return out


@pytest.mark.parametrize("L", [2, 9])
def test_a_window_one_short_of_the_length_is_kept_without_a_cache(L):
    """Kills O4 (the no-cache fast path ``is_causal`` taken for window >= K - 1 instead of window >= K): with
    window = L - 1 the last query must not see key 0, which ``is_causal`` alone lets it see. The chunked backend, the
    reference and the layer (window = L - 1, no positions, one head whose projections are the identity) against the loop."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, L, 4, generator=g, dtype=F64).to(DEVICE) for _ in range(3))
    want = _windowed_loop(q, k, v, L - 1)
    assert float((want - _windowed_loop(q, k, v, None)).abs().max()) > 1e-3  # the window changes the last output
    for backend in ("reference", "chunked"):
        got = ops.causal_attention(q, k, v, L - 1, backend=backend)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    layer = layers.build("attention", d_model=4, n_heads=1, head_dim=4, positional=None, window=L - 1,
                         device=DEVICE, dtype=F64)
    with torch.no_grad():
        layer.qkv.weight.copy_(torch.eye(4, dtype=F64).repeat(3, 1))  # q = k = v = x
        layer.out.weight.copy_(torch.eye(4, dtype=F64))
    x = torch.randn(2, L, 4, generator=g, dtype=F64).to(DEVICE)
    with torch.no_grad():
        y, _ = layer(x)
    xs = x[:, None]  # (B, 1, L, P)
    torch.testing.assert_close(y, _windowed_loop(xs, xs, xs, L - 1)[:, 0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("base", [1.0, 0.5, 1])
def test_a_rotary_base_at_or_below_one_is_refused(base):
    """Kills A8 (the rotary base check relaxed from base > 1 to base > 0): the layer documents ``rotary_base`` as a
    finite float > 1 (θ_k = base^{-2k/P} must fall with k; at base 1 every pair turns at one rate)."""
    with pytest.raises(ValueError, match=rf"rotary_base must be a finite float > 1; got {base!r}"):
        layers.build("attention", d_model=4, head_dim=4, rotary_base=base)
    assert layers.build("attention", d_model=4, head_dim=4, rotary_base=1.5).rotary_base == 1.5


def test_the_layers_rotary_base_sets_the_rotation_rates():
    """Kills A13 (the layer's ``rotary_base`` not handed to ``rotary``, which then took its default 10000): a layer of
    base 50 against a float64 loop in which the pair (x_k, x_{k+P/2}) at position t turns by t·50^{-2k/P}."""
    torch.manual_seed(1)
    base, P, L = 50.0, 6, 7
    layer = layers.build("attention", d_model=5, n_heads=2, head_dim=P, rotary_base=base, device=DEVICE, dtype=F64)
    x = torch.randn(2, L, 5, dtype=F64, device=DEVICE)
    q, k, v = (x @ w.T for w in layer.qkv.weight.reshape(3, 2 * P, 5))  # (B, L, A·P) each
    q, k, v = (t.reshape(2, L, 2, P).transpose(1, 2) for t in (q, k, v))  # (B, A, L, P)
    t = torch.arange(L, dtype=F64, device=DEVICE)[:, None]
    angle = t * base ** (-2 * torch.arange(P // 2, dtype=F64, device=DEVICE) / P)  # (L, P/2)

    def turn(z):
        z1, z2 = z[..., : P // 2], z[..., P // 2 :]
        return torch.cat([z1 * angle.cos() - z2 * angle.sin(), z2 * angle.cos() + z1 * angle.sin()], -1)

    o = _windowed_loop(turn(q), turn(k), v, None)  # (B, A, L, P)
    want = o.transpose(1, 2).reshape(2, L, 2 * P) @ layer.out.weight.T
    with torch.no_grad():
        y, _ = layer(x)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-12)


def test_an_attention_layer_without_bias_has_none():
    """Kills A16 (the output projection built with a bias whatever ``bias`` says): with bias=False every projection is
    linear, so v = 0 at x = 0 and y(0) = W_o·0 = 0 exactly, and the parameters are the four A·P × H matrices only."""
    torch.manual_seed(2)
    layer = layers.build("attention", d_model=5, n_heads=2, head_dim=4, bias=False, device=DEVICE, dtype=F64)
    assert layer.qkv.bias is None and layer.out.bias is None
    assert sum(p.numel() for p in layer.parameters()) == 4 * 5 * 2 * 4
    with torch.no_grad():
        y, _ = layer(torch.zeros(1, 3, 5, dtype=F64, device=DEVICE))
    assert float(y.abs().max()) == 0.0
    with_bias = layers.build("attention", d_model=5, n_heads=2, head_dim=4, bias=True, device=DEVICE, dtype=F64)
    assert with_bias.qkv.bias.shape == (24,) and with_bias.out.bias.shape == (5,)
