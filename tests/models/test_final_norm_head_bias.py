"""``SequenceModel(final_norm=..., head_bias=...)``: the normalisation after the last block ("auto", "layer", "rms" or
None) and the linear head's bias (the official Mamba LM's untied ``lm_head`` has none).

References are independent of the code under test: the norms written out in float64 (x / √(mean(x²) + 1e-5) · w for
RMSNorm, (x − mean) / √(var + 1e-5) · w + b for LayerNorm) applied to the features of a twin without a final norm
that holds the same weights, and the head applied by hand.
"""

from __future__ import annotations

import pytest
import torch

from ssmkit.models import SequenceModel, SequenceModelConfig
from ssmkit.train.experiment import Experiment
from tests.conftest import DEVICE, run_steps

F64 = torch.float64


def _model(final_norm, layer="s4d", norm="layer", prenorm=True, seed=0) -> SequenceModel:
    torch.manual_seed(seed)
    return SequenceModel(d_input=3, d_model=8, n_layers=2, layer=layer, d_output=5, pool=None, head="regress",
                         norm=norm, prenorm=prenorm, final_norm=final_norm, device=DEVICE, dtype=F64)


def _rms(h, w):
    return h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def _layer(h, w, b):
    mu = h.mean(-1, keepdim=True)
    return (h - mu) / torch.sqrt((h - mu).pow(2).mean(-1, keepdim=True) + 1e-5) * w + b


@pytest.mark.parametrize("final_norm", ["rms", "layer"])
def test_the_final_norm_is_the_formula_applied_to_the_last_block(final_norm):
    model = _model(final_norm)
    bare = _model(None)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("final_norm.")}
    bare.load_state_dict(state)
    with torch.no_grad():
        model.final_norm.weight.uniform_(0.5, 2.0)
        if final_norm == "layer":
            model.final_norm.bias.normal_()
    x = torch.randn(2, 11, 3, device=DEVICE, dtype=F64)
    with torch.no_grad():
        h, _ = bare.features(x)  # the last block's output, no norm after it
    w = model.final_norm.weight.detach()
    normed = _rms(h, w) if final_norm == "rms" else _layer(h, w, model.final_norm.bias.detach())
    want = normed @ model.head.weight.detach().T + model.head.bias.detach()
    with torch.no_grad():
        got, _ = model(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-13
    if final_norm == "rms":
        assert not hasattr(model.final_norm, "bias") or model.final_norm.bias is None  # RMSNorm: scale only


def test_auto_keeps_a_layernorm_after_a_prenorm_stack_only():
    assert isinstance(_model("auto", norm="rms").final_norm, torch.nn.LayerNorm)  # whichever norm the blocks use
    assert isinstance(_model("auto", norm="batch").final_norm, torch.nn.LayerNorm)
    assert isinstance(_model("auto", prenorm=False).final_norm, torch.nn.Identity)
    assert isinstance(_model("auto", norm=None).final_norm, torch.nn.Identity)
    assert isinstance(_model("rms", prenorm=False).final_norm, torch.nn.RMSNorm)  # explicit: whatever the stack
    assert isinstance(_model(None).final_norm, torch.nn.Identity)
    assert _model("auto").final_norm.eps == _model("rms").final_norm.eps == 1e-5


def test_step_equals_the_forward_with_an_rms_final_norm():
    model = _model("rms", layer="mamba", norm="rms")
    with torch.no_grad():
        model.final_norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 9, 3, device=DEVICE, dtype=F64)
    with torch.no_grad():
        want, _ = model(x)
        steps, _ = run_steps(model, x)
    for t in range(9):
        assert float((steps[:, t] - want[:, t]).abs().max()) < 1e-12


def test_the_config_keeps_it_and_an_older_config_reads_as_auto():
    model = _model("rms")
    config = model.config
    assert config.final_norm == "rms"
    again = SequenceModelConfig.from_json(config.to_json())
    assert again == config and isinstance(SequenceModel.from_config(again).final_norm, torch.nn.RMSNorm)
    older = {k: v for k, v in config.to_dict().items() if k != "final_norm"}  # saved before the option existed
    assert SequenceModelConfig.from_dict(older).final_norm == "auto"
    assert "final_norm='rms'" in repr(model) and "final_norm" not in repr(_model("auto")).split("\n")[1]


def test_the_experiment_passes_it_to_the_model():
    from ssmkit.data import get_task

    info = get_task("adding", length=16, n_train=4, n_val=2, n_test=2).info()
    config = Experiment(task="adding", final_norm="rms", d_model=8, n_layers=1).model_config(info)
    assert config.final_norm == "rms"
    assert isinstance(SequenceModel.from_config(config).final_norm, torch.nn.RMSNorm)


@pytest.mark.parametrize("bad", ["batch", "RMS", True, 0])
def test_an_unknown_final_norm_is_refused(bad):
    with pytest.raises(ValueError, match=r"final_norm must be one of \('auto', 'layer', 'rms', None\)"):
        _model(bad)


def test_a_head_without_bias_is_the_features_times_the_weight():
    torch.manual_seed(3)
    model = SequenceModel(d_input=3, d_model=8, n_layers=1, layer="s4d", d_output=5, pool="mean", head_bias=False,
                          device=DEVICE, dtype=F64)
    assert model.head.bias is None and "head.bias" not in model.state_dict()
    x = torch.randn(2, 7, 3, device=DEVICE, dtype=F64)
    with torch.no_grad():
        h, _ = model.features(x)
        got, _ = model(x)
    assert float((got - h @ model.head.weight.detach().T).abs().max()) < 1e-14
    with_bias = SequenceModel(d_input=3, d_model=8, n_layers=1, layer="s4d", d_output=5, device=DEVICE, dtype=F64)
    assert model.num_parameters() == with_bias.num_parameters() - 5
    again = SequenceModel.from_config(SequenceModelConfig.from_json(model.config.to_json()))
    assert again.head.bias is None and again.config.head_bias is False


def test_head_bias_is_checked_and_passed_by_the_experiment():
    from ssmkit.data import get_task

    with pytest.raises(ValueError, match="head_bias must be True or False; got 0"):
        SequenceModel(d_input=3, d_model=8, n_layers=1, layer="s4d", d_output=5, head_bias=0)
    with pytest.raises(ValueError, match=r"head_bias=False is for the linear head: a dual encoder \(pair=True\)"):
        SequenceModel(d_input=3, d_model=8, n_layers=1, layer="s4d", d_output=5, pair=True, head_bias=False)
    info = get_task("adding", length=16, n_train=4, n_val=2, n_test=2).info()
    config = Experiment(task="adding", head_bias=False, d_model=8, n_layers=1).model_config(info)
    assert config.head_bias is False and SequenceModel.from_config(config).head.bias is None
