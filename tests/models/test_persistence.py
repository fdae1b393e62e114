"""Model files saved in half precision and loaded elsewhere: ``ssmkit analyze``'s ``load_model``,
``DeepWiener.from_checkpoint`` and ``WienerEnsemble.from_checkpoint`` (read with ``torch.load(weights_only=True)``).

A user who ships a model saved after ``.half()`` (half the file) got "dtype must be torch.float32 or torch.float64"
from every loader, an error about an argument they never passed: the loaders built the model in the saved weights'
dtype, which layers refuse. They now build it in float32 (half-precision numbers convert to float32 exactly) and
load the weights strictly (docs/design.md, Probe 15).
"""

from __future__ import annotations

import copy

import pytest
import torch

from ssmkit.analysis.commands import load_model
from ssmkit.models import SequenceModel, SequenceModelConfig
from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.wiener import DeepWiener

HALF = [torch.float16, torch.bfloat16]


def _wiener(seed: int) -> DeepWiener:
    torch.manual_seed(seed)
    model = DeepWiener(2, 1, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 4}, dt=0.004)
    with torch.no_grad():  # normalisation statistics that change the output (a file that dropped them would show)
        model.u_mean.copy_(torch.tensor([0.3, -1.0]))
        model.u_std.copy_(torch.tensor([2.0, 0.5]))
        model.y_mean.fill_(4.0)
        model.y_std.fill_(3.0)
    return model.eval()


def _rounded(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The reference: the float32 model holding the weights rounded to ``dtype`` (what the file keeps)."""
    return copy.deepcopy(model).to(dtype).float()


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_a_deep_wiener_saved_in_half_precision_loads_as_float32(tmp_path, dtype):
    model = _wiener(0)
    path = tmp_path / "model.pt"
    torch.save(copy.deepcopy(model).to(dtype).checkpoint(benchmark="cascaded_tanks"), path)
    u = torch.randn(3, 40, 2)
    want = _rounded(model, dtype)(u)[0]
    assert (want - model(u)[0]).abs().max() > 1e-4  # the rounding shows: the comparison below can fail
    for loaded in (load_model(str(path)), DeepWiener.from_checkpoint(torch.load(path, weights_only=True))):
        assert loaded.u_mean.dtype == torch.float32 and loaded.dt == 0.004
        assert torch.equal(loaded.u_std, torch.tensor([2.0, 0.5])) and torch.equal(loaded.y_mean, torch.tensor([4.0]))
        assert torch.equal(loaded(u)[0], want)  # the same float32 computation on the same numbers
        assert [ss.dt for ss in loaded.state_space()] == [0.004, 0.004]


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_a_wiener_ensemble_saved_in_half_precision_loads_as_float32(tmp_path, dtype):
    ensemble = WienerEnsemble([_wiener(0), _wiener(1)]).eval()
    path = tmp_path / "model.pt"
    torch.save(copy.deepcopy(ensemble).to(dtype).checkpoint(), path)
    u = torch.randn(2, 30, 2)
    loaded = load_model(str(path))
    assert isinstance(loaded, WienerEnsemble) and next(loaded.parameters()).dtype == torch.float32
    assert torch.equal(loaded(u)[0], _rounded(ensemble, dtype)(u)[0])


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_a_trainer_checkpoint_with_half_precision_weights_loads_as_float32(tmp_path, dtype):
    # the layout of `ssmkit train`'s checkpoints: hyper_parameters["model"] and weights prefixed "model."
    config = SequenceModelConfig(d_input=1, d_model=8, n_layers=2, layer="s4d", d_output=2,
                                 layer_options={"d_state": 4})
    torch.manual_seed(0)
    model = SequenceModel.from_config(config).eval()
    weights = {f"model.{k}": v.to(dtype) for k, v in model.state_dict().items()}
    path = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"model": config.to_dict()}, "state_dict": weights}, path)
    loaded = load_model(str(path))
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.randn(2, 11, 1)
    assert torch.equal(loaded(x)[0], _rounded(model, dtype)(x)[0])
