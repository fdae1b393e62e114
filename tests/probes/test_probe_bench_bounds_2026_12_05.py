"""Probe of 2026-12-05: the bytes bounds of ``ssmkit bench cases`` against the bytes of the tensors each layer's core
op actually reads and writes.

A row's bytes bound is the time the tensors its op must read or write at least once take at the measured copy
bandwidth; its fraction is that time over the measured one. Here the layer's core op is called through a recorder
at small, pairwise-distinct sizes, as the cases call it (``return_state=False``, the loss of y alone, steps from
the initial state), and numel · element_size of its batch-axis inputs and outputs (and, after the backward, of the
gradients that reached them) is summed and compared with :func:`ssmkit.bench.limits.layer_bytes`, exactly.

Found:

1. *Every layer was held to the diagonal-scan model with its d_model H and the case's N* (u in, y out: 2·B·L·H·s
   forward, 5·B·L·H·s forward+backward, B·H·(2 + 2N)·s per step). Mamba's selective scan runs on E = 2H channels
   and also reads Δ (as the low-rank δ, R per position), the gate z and B, C per position; Mamba-2's SSD reads x,
   Δ, B, C and writes the final state; attention reads q, k, v and writes o over its A·P channels, and a step reads
   every cached key and value; RG-LRU reads x and two gates over its width D and keeps one state per channel. At
   the cases' default shape (B 8, L 4096, H 128, N 64, float32) the bounds went, before -> after (MB): Mamba forward
   33.6 -> 118.5 (3.5x), forward+backward 83.9 -> 321.9 (3.8x), 4096 steps 2181 -> 4414 (2.0x); Mamba-2 33.6 ->
   84.9 (2.5x), 83.9 -> 220.2 (2.6x), 2181 -> 4379 (2.0x); attention 33.6 -> 67.1 (2x), 83.9 -> 184.5 (2.2x), 2181
   -> 68 803 (31.5x: each step reads the whole cache, B·A·P·L·(L + 5)·s in all); RG-LRU 33.6 -> 67.1, 83.9 ->
   184.5, and 2181 -> 83.9 for the steps: the old step bound counted N states per channel where RG-LRU keeps one,
   26x more bytes than the op moves -- not a lower bound, and its fraction read 26x too high. The other time-varying
   rows' fractions read too low by the factors above (a Mamba forward printed at "1.19 %" of its bound, B 2, L 512,
   H 64, N 16, was at 3.9 %). The LTI layers' bounds are unchanged.
2. *The SSD bound left out the final state* (``bench gpu``'s 4·B·L·(2HP + H + 2N)):
   :func:`ssmkit.bench.limits.ssd_bytes` counts it (B·H·P·N, written once): +2.9 % and +0.7 % at ``bench gpu``'s
   two SSD shapes, +0.6 % for Mamba-2 at the cases' default. ``bench gpu`` itself still uses its own formula (its
   SSD case and a pin in test_probe_bench_2026_12_05.py are not this probe's files).

3. *The LTI step bound counted N reals of state per channel for every LTI layer* (B·H·(2 + 2N)·s per token), whatever
   the layer's state. Now it counts the state the layer's ``step`` takes and returns (``limits.state_reals``, from
   its ``state_spec``), read and written per token, and a state that grows by an entry per token
   (Hyena's inputs so far, which each long convolution reads at every step) as its entries read and the new one
   written; Mega's growing key/value cache is its attention's and stays out, as in its forward bound. At the cases'
   default (B 8, 4096 steps, H 128, N 64, float32) the step bounds went, before -> after (MB): S5 and LRU 2181 -> 50.3
   (one system of 32 complex modes, 256 bytes per row, where the old bound counted 32 KB: 43x above what the step
   moves, not a lower bound), GSS 2181 -> 570 (its SSM runs on H/4 channels: 3.8x), H3 2181 -> 4295 (a shift SSM
   beside the diagonal one: 2.0x), SGConv 2181 -> 34 360 (its last F - 1 = 1023 inputs per channel: 15.8x), Hyena
   2181 -> 34 603 (15.9x: its fixed state is 3 KB per row, 10x smaller than the old count, but at step t it reads the
   t·O·H inputs so far), Liquid-S4 2181 -> 2215 (+1.5 %: the last input beside S4's modes); S4, S4D, DSS, DLR, EMA and
   Mega unchanged. The forward and forward+backward bounds are unchanged.

Now each layer's op is declared once: :func:`ssmkit.bench.limits.core_op` reads ``TIME_VARYING_CORE_OPS`` (Mamba,
Mamba-2, attention, RG-LRU by class; Mega and Liquid-S4 to the LTI op, which they run at least), else the zoo entry's
``time_varying``: a time-invariant layer runs the LTI scan or convolution. A time-varying layer without a declared op
is a ValueError, so a new one cannot silently take the LTI model. The L×L scores of attention are not counted: the
``chunked`` path (``auto``'s) calls PyTorch's fused attention, which never writes them.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.utils._pytree as pytree

import ssmkit.layers as layers
import ssmkit.layers.attention as attention_module
import ssmkit.layers.mamba as mamba_module
import ssmkit.layers.mamba2 as mamba2_module
import ssmkit.layers.rglru as rglru_module
from ssmkit.bench import limits
from ssmkit.ops import use_backend

BATCH = 3  # no parameter of the layers below has a leading 3: a leading 3 marks a batch-axis tensor


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Recorder:
    """Wraps an op: per call, its batch-axis tensor arguments by name and its outputs; both keep their gradients."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def __call__(self, *args, **kwargs):
        bound = inspect.signature(self.fn).bind(*args, **kwargs)
        inputs = {name: t for name, t in bound.arguments.items()
                  if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[0] == BATCH}
        result = self.fn(*args, **kwargs)
        outputs = [t for t in (result if isinstance(result, tuple) else (result,)) if t is not None]
        for t in [*inputs.values(), *outputs]:
            if t.requires_grad:
                t.retain_grad()
        self.calls.append((inputs, outputs))
        return result


# the core op of each time-varying layer, where the layer module calls it, and what it reads with a batch axis
OPS = {
    "mamba": (mamba_module, "selective_scan", {"u", "delta", "B", "C", "z"}),
    "mamba2": (mamba2_module, "ssd", {"x", "dt", "B", "C"}),
    "attention": (attention_module, "causal_attention", {"q", "k", "v"}),
    "rglru": (rglru_module, "rglru", {"x", "r", "i"}),
}
BUILD = {  # small, pairwise-distinct sizes; Mamba-2 with groups, attention with several heads
    "mamba": {"d_model": 20, "d_state": 5},  # E 40, R 2
    "mamba2": {"d_model": 32, "d_state": 5, "headdim": 16, "ngroups": 2},  # E 64, 4 heads of 16
    "attention": {"d_model": 12, "head_dim": 4},  # 3 heads of 4
    "rglru": {"d_model": 8, "lru_width": 12},
}


def written(name: str, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The outputs that hold values of their own: RG-LRU's final state is the last row of h (asserted), not counted."""
    if name == "rglru":
        h, h_last = outputs
        assert torch.equal(h_last, h[:, -1])
        return [h]
    return outputs


def recorded(monkeypatch, name: str) -> Recorder:
    module, attr, _ = OPS[name]
    recorder = Recorder(getattr(module, attr))
    monkeypatch.setattr(module, attr, recorder)
    return recorder


def build(name: str, dtype: torch.dtype) -> layers.SequenceLayer:
    torch.manual_seed(0)
    return layers.build(name, **BUILD[name]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(OPS))
def test_forward_bound_is_the_bytes_of_the_ops_tensors(monkeypatch, name, dtype):
    layer, L = build(name, dtype), 7
    op = recorded(monkeypatch, name)
    with torch.no_grad(), use_backend("chunked"):
        layer(torch.randn(BATCH, L, layer.d_model, dtype=dtype), return_state=False)
    (inputs, outputs), = op.calls
    assert set(inputs) == OPS[name][2]
    counted = sum(map(nbytes, inputs.values())) + sum(map(nbytes, written(name, outputs)))
    assert limits.layer_bytes(layer, "forward", BATCH, L, 99, dtype.itemsize) == (limits.core_op(type(layer)), counted)


@pytest.mark.parametrize("name", list(OPS))
def test_forward_backward_bound_is_the_bytes_of_the_ops_tensors_and_gradients(monkeypatch, name):
    """The forward's inputs and outputs, then the inputs again, the gradients that reached the outputs (dy; not the
    SSD's final state, which the layer drops) and those of the inputs."""
    layer, L = build(name, torch.float32), 6
    op = recorded(monkeypatch, name)
    x = torch.randn(BATCH, L, layer.d_model, requires_grad=True)
    with use_backend("chunked"):
        y, _ = layer(x, return_state=False)
    y.backward(torch.randn_like(y))
    (inputs, outputs), = op.calls
    outputs = written(name, outputs)
    grads_in = [t.grad for t in inputs.values()]
    grads_out = [t.grad for t in outputs if t.grad is not None]
    assert all(g is not None for g in grads_in) and len(grads_out) == 1  # every input is trained; the loss is of y
    forward = sum(map(nbytes, inputs.values())) + sum(map(nbytes, outputs))
    backward = sum(map(nbytes, inputs.values())) + sum(map(nbytes, grads_out)) + sum(map(nbytes, grads_in))
    assert limits.layer_bytes(layer, "forward_backward", BATCH, L, 99, 4)[1] == forward + backward


@pytest.mark.parametrize("name", ["mamba", "mamba2", "rglru"])
def test_step_bound_is_the_bytes_of_the_op_at_one_position_from_a_state(monkeypatch, name):
    """A step is the op at L = 1 from the state, returning the next one: its inputs, the state in, y and the state out,
    each token (the layer's forward at L = 1 from its state, the same op call a step makes)."""
    layer, L = build(name, torch.float32), 5
    op = recorded(monkeypatch, name)
    state = layer.initial_state(BATCH)
    with torch.no_grad(), use_backend("chunked"):
        for _ in range(L):
            _, state = layer(torch.randn(BATCH, 1, layer.d_model), state=state)
    counted = 0
    for inputs, outputs in op.calls:
        assert set(inputs) == OPS[name][2] | {{"mamba": "state", "mamba2": "h0", "rglru": "h0"}[name]}
        counted += sum(map(nbytes, inputs.values())) + sum(map(nbytes, written(name, outputs)))
    assert len(op.calls) == L
    assert limits.layer_bytes(layer, "step", BATCH, L, 99, 4)[1] == counted


@pytest.mark.parametrize("window", [None, 3])
def test_attention_step_bound_is_the_bytes_of_each_steps_attention_and_cache_write(monkeypatch, window):
    """Each step reads q, the cached and new keys and values it sees, writes o and stores the new key and value."""
    torch.manual_seed(0)
    layer, L = layers.build("attention", d_model=12, head_dim=4, window=window), 6
    op = recorded(monkeypatch, "attention")
    state = layer.initial_state(BATCH)
    counted = 0
    with torch.no_grad():
        for t in range(L):
            _, state = layer.step(torch.randn(BATCH, 12), state)
            inputs, (o,) = op.calls[-1]
            k, v = inputs["k"], inputs["v"]
            assert k.shape[2] == 1 + (t if window is None else min(t, window - 1))
            assert torch.equal(state.keys[:, :, -1], k[:, :, -1]) and torch.equal(state.values[:, :, -1], v[:, :, -1])
            new = nbytes(k[:, :, -1:]) + nbytes(v[:, :, -1:])
            counted += sum(map(nbytes, inputs.values())) + nbytes(o) + new
    assert limits.layer_bytes(layer, "step", BATCH, L, 99, 4) == ("attention", counted)


@pytest.mark.parametrize("name", ["s4d", "s4", "lru", "hyena", "mega"])
def test_lti_bound_is_the_bytes_of_the_layers_input_and_output(name):
    """The LTI op reads u and writes y; forward+backward adds u again, dy and du."""
    torch.manual_seed(0)
    B, L, H, N = BATCH, 7, 4, 6
    layer = layers.build(name, d_model=H, **({"d_state": N} if "d_state" in inspect.signature(
        layers.layer_class(name)).parameters else {}))
    x = torch.randn(B, L, H, requires_grad=True)
    y, _ = layer(x, return_state=False)
    y.backward(torch.ones_like(y))
    assert limits.layer_bytes(layer, "forward", B, L, N, 4) == ("lti", nbytes(x) + nbytes(y))
    assert limits.layer_bytes(layer, "forward_backward", B, L, N, 4)[1] == (
        nbytes(x) + nbytes(y) + nbytes(x) + nbytes(y) + nbytes(x.grad))


LTI_LAYERS = [name for name in layers.available() if name not in OPS]  # every layer held to the LTI op
STEP_STATES = {  # each layer's state at H 8, N 16, per sequence: what its step reads and writes
    "s4d": "M = 8 complex modes per channel", "s4": "M = 8 complex modes per channel", "dss": "8 modes per channel",
    "dlr": "8 modes per channel", "ema": "N = 16 reals per channel", "liquid_s4": "S4's modes and the last input",
    "s5": "one system of M = 8 modes shared by the channels", "lru": "one system of 8 modes",
    "gss": "8 modes of 2 channels (its SSM runs on H/4)", "h3": "the shift SSM's 15 past inputs and 8 modes",
    "sgconv": "the last F - 1 = 1023 inputs per channel", "hyena": "the short convolution's last 2 inputs and every "
    "input of the long convolution so far (a growing state)", "mega": "the EMA's N = 16 per channel and the keys and "
    "values of the current chunk (attention's, left out of the LTI op's bound)",
}
ATTENTION_CACHE = {"mega"}  # growing state that belongs to the layer's attention, not to its LTI op


def test_every_lti_layer_is_pinned():
    assert sorted(LTI_LAYERS) == sorted(STEP_STATES)
    assert all(limits.core_op(layers.layer_class(name)) == "lti" for name in LTI_LAYERS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", LTI_LAYERS)
def test_lti_step_bound_is_the_bytes_of_the_steps_input_output_and_state(name, dtype):
    """Each step from the initial state reads u and the state and writes y and the next state, as ``step`` is called.
    A tensor of the state that keeps its shape is read and written whole; one that grows by an entry per step
    (Hyena's inputs so far) has its entries read and the new one written (a functional step need not copy the
    entries it keeps). Before, every layer was counted as N reals per channel (H·N = 128 here)."""
    torch.manual_seed(0)
    B, L, H, N = BATCH, 5, 8, 16
    layer = layers.build(name, d_model=H, **({"d_state": N} if "d_state" in inspect.signature(
        layers.layer_class(name)).parameters else {})).to(dtype)
    state = layer.initial_state(B)
    counted, grew = 0, False
    with torch.no_grad():
        for _ in range(L):
            x_t = torch.randn(B, H, dtype=dtype)
            y_t, new = layer.step(x_t, state)
            counted += nbytes(x_t) + nbytes(y_t)
            for old, now in zip(pytree.tree_leaves(state), pytree.tree_leaves(new), strict=True):
                if old.shape == now.shape:
                    counted += nbytes(old) + nbytes(now)
                    continue
                grew = True  # one axis one entry longer, the entries held kept
                axis = next(i for i, (a, b) in enumerate(zip(old.shape, now.shape)) if a != b)
                assert now.shape[axis] == old.shape[axis] + 1 and torch.equal(now.narrow(axis, 0, old.shape[axis]), old)
                if name not in ATTENTION_CACHE:
                    counted += nbytes(old) + (nbytes(now) - nbytes(old))  # the entries held, the new one
            state = new
    assert grew == (name in ("hyena", "mega"))
    assert limits.layer_bytes(layer, "step", B, L, 99, dtype.itemsize) == ("lti", counted)


def test_the_ssd_bound_counts_the_final_state_the_op_returns():
    """The op's own call (bench gpu's SSD case, no initial state): x, Δ, B, C in, y and the final state out."""
    from ssmkit.ops.ssd import ssd

    B, L, H, P, N, G = BATCH, 5, 4, 2, 6, 2
    x, dt = torch.randn(B, L, H, P), torch.rand(B, L, H)
    Bm, Cm = torch.randn(B, L, G, N), torch.randn(B, L, G, N)
    y, h = ssd(x, dt, -torch.rand(H), Bm, Cm, backend="reference")
    counted = sum(map(nbytes, (x, dt, Bm, Cm, y, h)))
    assert limits.ssd_bytes("forward", B, L, H, P, N, 4, groups=G) == counted
    assert counted - nbytes(h) == 4 * B * L * (2 * H * P + H + 2 * G * N)  # the earlier formula: all but h


def test_the_selective_bound_counts_the_final_state_where_the_op_returns_it():
    from ssmkit.ops.selective import selective_scan

    B, L, E, N = BATCH, 5, 4, 6
    u, delta, z = torch.randn(B, L, E), torch.randn(B, L, E), torch.randn(B, L, E)
    Bm, Cm = torch.randn(B, L, N), torch.randn(B, L, N)
    y, h = selective_scan(u, delta, -torch.rand(E, N), Bm, Cm, None, z, return_state=True, backend="reference")
    counted = sum(map(nbytes, (u, delta, z, Bm, Cm, y, h)))
    assert limits.selective_bytes("forward", B, L, E, N, 4, final_state=True) == counted
    assert limits.selective_bytes("forward", B, L, E, N, 4) == counted - nbytes(h)
