"""Block and SequenceModel: the three views (forward, chunked forward, step) agree for every layer."""

from __future__ import annotations

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.layers import build
from ssmkit.models import Block, SequenceModel
from tests.conftest import DEVICE, rel_err, state_err

NAMES = layers.available()
SMALL = {"s4d": {"d_state": 8}, "dss": {"d_state": 8}, "s4": {"d_state": 8, "l_max": 32}}


def model_for(name: str, **kw) -> SequenceModel:
    torch.manual_seed(3)
    opts = dict(d_input=2, d_model=4, n_layers=2, layer=name, layer_options=SMALL.get(name, {}), d_output=3)
    opts.update(kw)
    return SequenceModel(device=DEVICE, dtype=torch.float64, **opts).eval()


@pytest.mark.parametrize("norm", ["layer", "rms", "batch", None])
@pytest.mark.parametrize("name", NAMES)
def test_model_step_equals_forward(name, norm):
    model = model_for(name, head="regress", pool=None, norm=norm)
    x = torch.randn(2, 19, 2, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, states = model(x)
        s = model.initial_state(2)
        ys = []
        for t in range(19):
            y_t, s = model.step(x[:, t], s)
            ys.append(y_t)
    assert y.shape == (2, 19, 3)
    assert rel_err(torch.stack(ys, 1), y) < 1e-10  # float64 model: DESIGN.md rule 1
    for a, b in zip(s, states):
        assert state_err(a, b) < 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_model_chunked_equals_one_pass_and_pool_last(name):
    model = model_for(name, head="regress", pool="last")
    x = torch.randn(2, 30, 2, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, states = model(x)
        _, s = model(x[:, :11])
        y2, s2 = model(x[:, 11:], s)
    assert y.shape == (2, 3)
    assert rel_err(y2, y) < 1e-10
    for a, b in zip(s2, states):
        assert state_err(a, b) < 1e-10


def test_mean_pool_and_classification_shapes():
    model = model_for("s4d", head="classify", pool="mean")
    x = torch.randn(5, 12, 2, device=DEVICE, dtype=torch.float64)
    y, _ = model(x)
    per_step, _ = model_for("s4d", head="classify", pool=None)(x)
    assert y.shape == (5, 3)
    # mean pooling commutes with the (affine) head: pooled output = mean of per-step outputs
    assert rel_err(y, per_step.mean(1)) < 1e-12


def test_language_model_with_tokens():
    model = model_for("s4d", head="lm", pool=None, vocab_size=11, d_output=11)
    tokens = torch.randint(0, 11, (2, 9), device=DEVICE)
    with torch.no_grad():
        logits, _ = model(tokens)
        s = model.initial_state(2)
        for t in range(9):
            out, s = model.step(tokens[:, t], s)
    assert logits.shape == (2, 9, 11)
    assert rel_err(out, logits[:, -1]) < 1e-10


def test_model_bad_inputs():
    model = model_for("s4d", head="regress", pool=None)
    with pytest.raises(ValueError, match=r"\(B, L, 2\)"):
        model(torch.randn(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.ones(2, 5, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="list of 2 block states"):
        model(torch.randn(2, 5, 2, dtype=torch.float64), state=[None])
    lm = model_for("s4d", head="lm", pool=None, vocab_size=7, d_output=7)
    with pytest.raises(ValueError, match="token ids"):
        lm(torch.randn(2, 5))
    with pytest.raises(ValueError, match="pool must be None"):
        SequenceModel(2, 4, 1, "s4d", {}, 3, head="lm", pool="mean")
    with pytest.raises(ValueError, match="head must be one of"):
        SequenceModel(2, 4, 1, "s4d", {}, 3, head="nope")
    with pytest.raises(ValueError, match="must not set d_model"):
        SequenceModel(2, 4, 1, "s4d", {"d_model": 4}, 3)
    with pytest.raises(TypeError):
        SequenceModel(2, 4, 1, "s4d", {"no_such_option": 1}, 3)


def test_block_structure_and_batchnorm_step():
    torch.manual_seed(4)
    layer = build("s4d", d_model=4, d_state=8, dtype=torch.float64)
    block = Block(layer, norm="batch", prenorm=False, activation="tanh", mixer_out="linear").double()
    x = torch.randn(3, 10, 4, dtype=torch.float64)
    block(x)  # one training-mode pass updates the running statistics
    with pytest.raises(RuntimeError, match="eval mode"):
        block.step(x[:, 0], layer.initial_state(3))
    block.eval()
    with torch.no_grad():
        y, _ = block(x)
        z, _ = layer(x)
        expected = block.norm(x + block.out(torch.tanh(z)))  # postnorm residual, by hand
        s = layer.initial_state(3)
        for t in range(10):
            y_t, s = block.step(x[:, t], s)
    assert rel_err(y, expected) < 1e-12
    assert rel_err(y_t, y[:, -1]) < 1e-10
    with pytest.raises(ValueError, match="norm must be one of"):
        Block(layer, norm="group")
    with pytest.raises(ValueError, match="dropout"):
        Block(layer, dropout=1.5)


@pytest.mark.parametrize("name", NAMES)
def test_model_runs_under_autocast(name):
    torch.manual_seed(5)
    model = SequenceModel(2, 8, 2, name, SMALL.get(name, {}), 3, head="regress", pool="last", device=DEVICE).eval()
    x = torch.randn(2, 40, 2, device=DEVICE)
    with torch.no_grad():
        y, _ = model(x)
        with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
            y_amp, states = model(x)
    assert bool(torch.isfinite(y_amp).all())
    assert rel_err(y_amp.float(), y) < 5e-2  # bf16 projections around a float32 SSM core
    assert all(s.dtype == torch.complex64 for s in states)  # the SSM state stays complex64
