"""Hybrid models are configuration: a layer pattern decodes step by step equal to its forward pass."""

from __future__ import annotations

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.models import SequenceModel, SequenceModelConfig, interleave
from tests.conftest import DEVICE, H, rel_err, run_steps, state_err, variants

# one block of every registered layer that runs step by step, each with its small test options
STEP_NAMES = [name for name in layers.available() if layers.layer_class(name).capabilities.step]


def hybrid(names: list[str], **kw) -> SequenceModel:
    torch.manual_seed(7)
    options = {name: variants(name)[0] for name in names}
    return SequenceModel(2, H, len(names), names, options, 3, head="regress", pool=None, device=DEVICE,
                         dtype=torch.float64, **kw).eval()


def test_interleave_writes_the_usual_patterns():
    assert interleave("rglru", "attention", 6, every=3) == ["rglru", "rglru", "attention"] * 2  # Griffin
    assert interleave("s4d", "dss", 4, every=2, offset=0) == ["dss", "s4d", "dss", "s4d"]
    assert interleave("s4d", "dss", 3, every=1) == ["dss"] * 3
    with pytest.raises(ValueError, match="offset must be"):
        interleave("s4d", "dss", 4, every=2, offset=2)
    with pytest.raises(ValueError, match="unknown layer names"):
        interleave("s4d", "transformer", 4, every=2)


def test_a_hybrid_of_every_layer_decodes_as_its_forward():
    model = hybrid(STEP_NAMES)
    assert [type(b.layer).name for b in model.blocks] == STEP_NAMES
    x = torch.randn(2, 23, 2, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, states = model(x)
        _, s = model(x[:, :9])
        y_tail, s_chunked = model(x[:, 9:], s)
        stepped, s = run_steps(model, x)
    assert rel_err(stepped, y) < 1e-10
    assert rel_err(y_tail, y[:, 9:]) < 1e-10
    for a, b, c in zip(s, s_chunked, states):
        assert state_err(a, c) < 1e-10 and state_err(b, c) < 1e-10


def test_per_layer_options_and_the_config_round_trip(tmp_path):
    model = hybrid(["s4d", "s4", "s4d"])
    assert model.blocks[0].layer.d_state == variants("s4d")[0]["d_state"]
    assert model.blocks[1].layer.l_max == variants("s4")[0]["l_max"]
    config = model.config
    assert config.layer == ["s4d", "s4", "s4d"]
    config.save(tmp_path / "hybrid.json")
    again = SequenceModel.from_config(SequenceModelConfig.load(tmp_path / "hybrid.json"), device=DEVICE,
                                      dtype=torch.float64)
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 11, 2, device=DEVICE, dtype=torch.float64)
    assert rel_err(again.eval()(x)[0], model(x)[0]) < 1e-12
    # a name in the pattern without options gets the layer's defaults
    defaults = SequenceModel(2, H, 2, ["s4d", "dss"], {"s4d": {"d_state": 4}}, 3)
    assert defaults.blocks[1].layer.d_state == layers.layer_class("dss")(d_model=H).d_state


def test_griffin_style_hybrid_with_local_attention_decodes_as_its_forward():
    names = interleave("rglru", "attention", 3, every=3)
    torch.manual_seed(8)
    model = SequenceModel(2, H, 3, names, {"rglru": variants("rglru")[0], "attention": {"n_heads": 1, "head_dim": 4,
                                                                                         "window": 4}},
                          3, head="regress", pool=None, device=DEVICE, dtype=torch.float64).eval()
    x = torch.randn(2, 15, 2, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, _ = model(x)
        stepped, _ = run_steps(model, x)
    assert rel_err(stepped, y) < 1e-10
    assert model.blocks[2].layer.window == 4
