"""The test at the best validation (``TrainConfig.test_weights``): the kept weights are those of the best validation,
the test metrics recorded for them equal a direct evaluation of those weights, a stopped and resumed run selects the
same validation as an uninterrupted one, and a run without validation says what it cannot do.

The runs are built so that the best validation is known in advance: a callback turns the model's outputs around
in every validation but the one at step ``PEAK`` (logits negated: accuracy becomes 1 − accuracy; regression
outputs shifted by 10: a large MSE). Training and testing are untouched, so the weights at ``PEAK`` are ordinary
weights.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402

from ssmkit.models import SequenceModel, SequenceModelConfig  # noqa: E402
from ssmkit.train import TrainConfig, fit  # noqa: E402
from ssmkit.train.best import is_better, monitored  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint  # noqa: E402

PEAK = 8


class SpoilValidation(pl.Callback):
    """Turns the outputs around whenever the model is scored for validation (in eval mode, not testing) at a step
    other than ``peak``; training and the test are untouched."""

    def __init__(self, peak: int, head: str) -> None:
        self.peak, self.head = peak, head

    def on_fit_start(self, trainer, module) -> None:
        def spoil(m, inputs, out):
            if m.training or trainer.testing or trainer.global_step == self.peak:
                return out
            return -out if self.head == "classify" else out + 10.0

        module.register_forward_hook(spoil)


class Snapshot(pl.Callback):
    """A copy of the weights after the optimizer step ``step`` (the independent reference)."""

    def __init__(self, step: int) -> None:
        self.step, self.weights = step, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.weights = {k: v.detach().clone() for k, v in module.state_dict().items()}


class Stop(Exception):
    pass


class StopAt(pl.Callback):
    """Raises after the optimizer step ``step``: the run ends without a final checkpoint, as a killed one does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Stop(f"stopped at step {self.step}")


def splits(head: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 12, 1, generator=g)
    y = (x.sum(dim=(1, 2)) > 0).long() if head == "classify" else x.sum(dim=1)
    return (x[:96], y[:96]), (x[96:128], y[96:128]), (x[128:], y[128:])


def model_config(head: str) -> SequenceModelConfig:
    return SequenceModelConfig(d_input=1, d_model=8, n_layers=1, layer="s4d", layer_options={"d_state": 4},
                               head=head, d_output=2 if head == "classify" else 1, pool="mean")


def train_config(**changes) -> TrainConfig:
    base = dict(batch_size=16, max_steps=16, warmup_steps=0, val_every=4, checkpoint_every=4, lr=0.1, log_every=1,
                test_weights="best_val")
    return TrainConfig(**{**base, **changes})


def direct(config: SequenceModelConfig, weights: dict[str, torch.Tensor], split) -> tuple[float, float]:
    """(loss, metric) of ``weights`` on ``split`` with plain PyTorch in float64 sums: cross-entropy and accuracy, or
    squared error and MSE."""
    model = SequenceModel.from_config(config)
    model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
    model.eval()
    x, y = split
    with torch.no_grad():
        out, _ = model(x, return_state=False)
    if config.head == "classify":
        return F.cross_entropy(out.double(), y).item(), (out.argmax(-1) == y).double().mean().item()
    mse = ((out.double() - y.double()) ** 2).mean().item()
    return mse, mse


@pytest.mark.parametrize("head", ["classify", "regress"])
def test_the_best_validation_weights_and_their_test_are_those_of_the_best_step(tmp_path, head):
    train, val, test = splits(head)
    config = model_config(head)
    snap = Snapshot(PEAK)
    result = fit(config, train_config(), train, val, test, tmp_path, progress=False,
                 extra_callbacks=[SpoilValidation(PEAK, head), snap], extra_tests={"test@again": test})
    metric = "accuracy" if head == "classify" else "mse"
    assert result["best_val_step"] == PEAK and result["steps"] == 16
    assert result["best_val_epoch"] == PEAK * 16 / 96
    # the kept weights are the step's own, bit for bit
    kept = load_checkpoint(tmp_path / "checkpoints" / "best_val.ckpt")
    assert kept["global_step"] == PEAK and kept["monitor"] == f"val_{metric}"
    assert kept["state_dict"].keys() == snap.weights.keys()
    assert all(torch.equal(kept["state_dict"][k], snap.weights[k]) for k in snap.weights)
    # the recorded numbers equal a direct evaluation of those weights (and of the final ones)
    val_loss, val_metric = direct(config, snap.weights, val)
    assert result[f"best_val_{metric}"] == pytest.approx(val_metric, rel=1e-5, abs=1e-7)
    assert result["best_val_loss"] == pytest.approx(val_loss, rel=1e-5)
    test_loss, test_metric = direct(config, snap.weights, test)
    assert result[f"test_{metric}_best_val"] == pytest.approx(test_metric, rel=1e-5, abs=1e-7)
    assert result["test_loss_best_val"] == pytest.approx(test_loss, rel=1e-5)
    assert result[f"test@again_{metric}_best_val"] == result[f"test_{metric}_best_val"]
    final = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    final_loss, final_metric = direct(config, final, test)
    assert result[f"test_{metric}_final"] == pytest.approx(final_metric, rel=1e-5, abs=1e-7)
    assert result["test_loss_final"] == pytest.approx(final_loss, rel=1e-5)
    assert abs(final_loss - test_loss) > 1e-4  # the two weights differ: the test distinguishes them
    # the selected number is the best validation's; result.json holds the same record
    assert result[f"test_{metric}"] == result[f"test_{metric}_best_val"]
    assert result["test_loss"] == result["test_loss_best_val"] and result["test_weights"] == "best_val"
    assert json.loads((tmp_path / "result.json").read_text()) == result


def test_final_is_the_default_and_keeps_the_final_weights_test(tmp_path):
    train, val, test = splits("classify")
    result = fit(model_config("classify"), train_config(test_weights="final", max_steps=8), train, val, test,
                 tmp_path, progress=False, extra_callbacks=[SpoilValidation(4, "classify")])
    assert TrainConfig().test_weights == "final"
    assert result["test_weights"] == "final" and result["best_val_step"] == 4
    assert result["test_accuracy"] == result["test_accuracy_final"] and result["test_loss"] == result["test_loss_final"]
    final = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert result["test_loss_final"] == pytest.approx(direct(model_config("classify"), final, test)[0], rel=1e-5)
    assert result["test_loss_best_val"] != result["test_loss_final"]


@pytest.mark.parametrize("stop_at", [10, 6])
def test_a_stopped_and_resumed_run_selects_the_same_best_validation(tmp_path, stop_at):
    # stop_at 10: the checkpoint of step 8 is written before step 8's validation (the best), which the resumed run
    # does not repeat; stop_at 6: the best validation comes after the resume
    train, val, test = splits("classify")
    config = model_config("classify")
    spoil = SpoilValidation(PEAK, "classify")
    whole = fit(config, train_config(), train, val, test, tmp_path / "whole", progress=False, extra_callbacks=[spoil])
    with pytest.raises(Stop):
        fit(config, train_config(), train, val, test, tmp_path / "cut", progress=False,
            extra_callbacks=[spoil, StopAt(stop_at)])
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.ckpt")["global_step"] == stop_at - stop_at % 4
    resumed = fit(config, train_config(), train, val, test, tmp_path / "cut", resume=True, progress=False,
                  extra_callbacks=[spoil])
    assert resumed["resumed_from"] is not None and resumed["steps"] == 16
    for key in ("best_val_step", "best_val_accuracy", "best_val_loss", "test_accuracy", "test_loss",
                "test_loss_best_val", "test_loss_final"):
        assert resumed[key] == whole[key], key
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "best_val.ckpt")["state_dict"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "best_val.ckpt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_option_is_checked_and_a_run_without_validation_has_only_final(tmp_path):
    with pytest.raises(ValueError, match=r"test_weights must be one of \('final', 'best_val'\); got 'best'"):
        TrainConfig(test_weights="best")
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"test_weight": "final"})
    train, _, test = splits("classify")
    config = model_config("classify")
    with pytest.raises(ValueError, match="no validation split was given: give val, or use test_weights 'final'"):
        fit(config, train_config(max_steps=4), train, None, test, tmp_path / "a", progress=False)
    result = fit(config, train_config(max_steps=4, test_weights="final"), train, None, test, tmp_path / "b",
                 progress=False)
    assert result["test_accuracy"] == result["test_accuracy_final"]
    assert not any("best_val" in k for k in result)
    assert not os.path.exists(tmp_path / "b" / "checkpoints" / "best_val.ckpt")
    _, val, _ = splits("classify")
    with pytest.raises(RuntimeError, match=r"no validation ran \(val_every 8, the run stopped at step 4\)"):
        fit(config, train_config(max_steps=4, val_every=8), train, val, test, tmp_path / "c", progress=False)
    kept = json.loads((tmp_path / "c" / "result.json").read_text())
    assert "test_accuracy_final" in kept and "test_accuracy" not in kept and "best_val_step" not in kept


def test_a_run_its_time_limit_stops_between_validations_is_validated_where_it_stopped(tmp_path, monkeypatch):
    # Lightning's timer (max_time) sets should_stop, and Lightning validates at a step where the run stops: the final
    # weights are among the candidates, and a run stopped before its first validation still has one (a time budget on
    # a shipped config, whose val_every is longer, relies on it). The timer reads a fake clock: one second a reading.
    import types

    import lightning.pytorch.callbacks.timer as timer

    clock = iter(range(10**6))
    monkeypatch.setattr(timer, "time", types.SimpleNamespace(monotonic=lambda: float(next(clock))))
    train, val, test = splits("classify")
    config = model_config("classify")
    result = fit(config, train_config(max_time=2.5), train, val, test, tmp_path, progress=False)
    stopped = result["steps"]
    assert 0 < stopped < 4 and result["val_step"] == result["best_val_step"] == stopped  # val_every is 4
    final = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert final["global_step"] == stopped
    val_loss, val_accuracy = direct(config, final["state_dict"], val)
    assert result["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    assert result["val_accuracy"] == pytest.approx(val_accuracy, rel=1e-5, abs=1e-7)
    kept = load_checkpoint(tmp_path / "checkpoints" / "best_val.ckpt")["state_dict"]
    assert all(torch.equal(kept[k], final["state_dict"][k]) for k in kept)
    assert result["test_accuracy"] == result["test_accuracy_best_val"] == result["test_accuracy_final"]


def test_the_monitored_metric_and_its_direction():
    assert monitored("classify") == ("val_accuracy", "max") and monitored("lm") == ("val_accuracy", "max")
    assert monitored("regress") == ("val_mse", "min")
    assert is_better(0.5, None, "max") and is_better(0.6, 0.5, "max") and not is_better(0.5, 0.5, "max")
    assert is_better(0.4, 0.5, "min") and not is_better(0.5, 0.5, "min") and not is_better(0.6, 0.5, "min")
    assert not is_better(float("nan"), None, "max") and not is_better(float("nan"), 0.5, "min")
