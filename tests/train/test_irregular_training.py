"""Training on irregularly sampled sequences: splits (inputs, targets, intervals) through ``ssmkit.train.fit`` and the
Lightning module -- the losses are those of ``SequenceModel(x, intervals=)``, a step in micro-batches is the step in
one piece, and a batch of another size is refused -- in float64 against the model called directly."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("lightning")

from ssmkit.models import SequenceModel, SequenceModelConfig  # noqa: E402
from ssmkit.train import TrainConfig, fit  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint  # noqa: E402
from ssmkit.train.module import unpack_batch  # noqa: E402
from ssmkit.train.objective import summed_loss_and_metric  # noqa: E402

MODEL = SequenceModelConfig(d_input=2, d_model=4, n_layers=2, layer=["s5", "s4d"], d_output=1, head="regress",
                            pool=None, layer_options={"s5": {"d_state": 4, "blocks": 1}, "s4d": {"d_state": 4}})


def _split(seed: int, n: int = 12, length: int = 9):
    """Inputs, targets and gaps: the target is a running mean weighted by the gaps (it depends on the intervals)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, 2, generator=g, dtype=torch.float64)
    tau = 0.2 + 2 * torch.rand(n, length, generator=g, dtype=torch.float64)
    y = (torch.cumsum(x[..., :1] * tau[..., None], 1) / torch.cumsum(tau, 1)[..., None])
    return x, y, tau


def _config(**options) -> TrainConfig:
    return TrainConfig(**{"batch_size": 6, "max_steps": 3, "warmup_steps": 0, "val_every": 0, "checkpoint_every": 0,
                          "lr": 1e-2, "precision": "64", "log_every": 1, **options})


def test_fit_scores_every_split_with_its_intervals(tmp_path):
    train, test = _split(0), _split(1, n=5)
    result = fit(MODEL, _config(), train, None, test, tmp_path / "run", progress=False)
    state = load_checkpoint(os.path.join(tmp_path, "run", "checkpoints", "last.ckpt"))["state_dict"]
    model = SequenceModel.from_config(MODEL).double()
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model.eval()
    with torch.no_grad():
        out = model(test[0], return_state=False, intervals=test[2])[0]
        regular = model(test[0], return_state=False)[0]
    loss, _, count = summed_loss_and_metric("regress", out, test[1])
    expected = (loss / count).item()
    with open(tmp_path / "run" / "result.json") as f:
        recorded = json.load(f)
    assert result["test_loss_final"] == pytest.approx(expected, rel=1e-9) == recorded["test_loss_final"]
    wrong, _, _ = summed_loss_and_metric("regress", regular, test[1])
    assert abs((wrong / count).item() - expected) > 1e-6 * abs(expected)  # the intervals were used


def test_steps_in_micro_batches_with_intervals_are_the_steps_in_one_piece(tmp_path):
    train = _split(2)
    states = []
    for micro in (1, 3):
        fit(MODEL, _config(micro_batches=micro), train, None, None, tmp_path / f"m{micro}", progress=False)
        states.append(load_checkpoint(os.path.join(tmp_path, f"m{micro}", "checkpoints", "last.ckpt"))["state_dict"])
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        torch.testing.assert_close(states[1][k], states[0][k], rtol=1e-9, atol=1e-12, msg=k)
    fit(MODEL, _config(), train[:2], None, None, tmp_path / "regular", progress=False)
    regular = load_checkpoint(os.path.join(tmp_path, "regular", "checkpoints", "last.ckpt"))["state_dict"]
    assert any(not torch.allclose(regular[k], states[0][k]) for k in regular if regular[k].is_floating_point())


def test_batches_of_two_or_three_tensors_and_nothing_else():
    x, y, tau = _split(3, n=2)
    assert unpack_batch((x, y))[2] is None
    assert unpack_batch((x, y, tau))[2] is tau
    with pytest.raises(ValueError, match=r"\(inputs, targets\) or \(inputs, targets, intervals\); got 4"):
        unpack_batch((x, y, tau, tau))
