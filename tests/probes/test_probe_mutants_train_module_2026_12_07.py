"""Mutation round (2026-12-07) over ``ssmkit.train.module``, ``ssmkit.train.best``, ``ssmkit.analysis.report`` and
``ssmkit.analysis.onnx_pair``: the tests below kill the mutants that the existing tests let survive.

- With several processes the logged ``train_loss`` / ``train_accuracy`` are the global batch's (both processes' sums
  over their summed count), not this process's own mean; the stub second process of the existing tests had the same
  batch, so its mean equalled the local one (a mutant logging the local loss survived).
- A step in three parts (``micro_batches=3``) returns the whole batch's mean loss (the value the error message of a
  non-finite loss of another process quotes) and leaves the whole batch's gradient: a mutant that kept only the
  previous part's value (``done = loss_i``) survived, the existing tests splitting into two parts only.
- A ``precision "64"`` module is float64 from its construction, so a checkpoint's weights load unrounded (a mutant
  building it in float32 survived: Lightning converts the module before training anyway).
- ``write_report`` refuses ``channels=0`` before it writes anything (a mutant accepting 0 survived).
- ``layer_record`` writes a layer's spectral abscissa −inf (every pole at z = 0: a shift register) as null, so
  ``analysis.json`` is valid JSON (a mutant writing the float survived: no test had a layer without a finite pole).
- ``score`` (and so every ``val_*`` / ``test_*``) sums over processes before it divides: the mean over both
  processes' samples (a mutant that skipped the reduction survived for the same reason).
- ``Patience`` (early stopping on the validation loss, Lightning's rule): a non-finite loss stops at once, an equal
  loss is no improvement, and a Lightning ``EarlyStopping`` state stopped on a non-finite metric resumes stopped;
  ``BestValidation.catch_up`` scores a step's validation only if it has not seen it, so the patience counts it once
  (mutants dropping the finiteness check, using ``<=``, reading reason 3 and ``>`` survived: the fits of the
  existing tests never saw a NaN loss, an exact tie, such a checkpoint or a second catch-up at a validated step).
- ``BestValidation`` ignores Lightning's sanity-check validation, restores ``last`` from a checkpoint and refuses the
  state of another monitored metric (mutants dropping each survived).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning")

from ssmkit.models import SequenceModelConfig  # noqa: E402
from ssmkit.train import TrainConfig  # noqa: E402

F64 = torch.float64
G = torch.Generator().manual_seed(7)
X = torch.randn(16, 5, 1, generator=G, dtype=F64)
Y = (X.sum(dim=(1, 2)) > 0).long()
Y[:3] = 1 - Y[:3]  # some wrong predictions whatever the weights
MODEL = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 2})


def _module(micro_batches: int = 1):
    from ssmkit.train.module import SequenceLightningModule

    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=6, max_steps=4, warmup_steps=0, lr=0.05, precision="64", seed=1,
                      micro_batches=micro_batches)
    return SequenceLightningModule(MODEL, cfg)


def _sums(module, x, y) -> list[float]:
    """(summed cross-entropy, correct count, count) of ``module``'s model on (x, y), by hand in float64."""
    with torch.no_grad():
        out = module.model.eval()(x, return_state=False)[0].double()
    return [float(F.cross_entropy(out, y, reduction="sum")), float((out.argmax(-1) == y).sum()), float(len(y))]


class _OtherProcess:
    """A strategy whose second process holds the sums ``other`` = (loss sum, metric sum, count) of another batch: the
    training step's one all-reduce of (finite, loss, metric, count), or ``_reduced``'s three scalar ones in turn."""

    def __init__(self, other: list[float]) -> None:
        self.other, self.calls = other, 0
        self.root_device = torch.device("cpu")

    def reduce(self, tensor, reduce_op="sum"):
        assert reduce_op == "sum"
        if tensor.dim() == 1:
            return tensor + tensor.new_tensor([1.0, *self.other])
        out = tensor + self.other[self.calls % 3]
        self.calls += 1
        return out

    def batch_to_device(self, batch):
        return batch

    def backward(self, loss, optimizer):
        loss.backward()


class _Trainer:
    def __init__(self, other: list[float]) -> None:
        self.global_rank, self.world_size, self.global_step = 0, 2, 0
        self.strategy = _OtherProcess(other)


def _whole(module, x, y) -> dict[str, float]:
    with torch.no_grad():
        out = module.model.eval()(x, return_state=False)[0]
    return {"loss": float(F.cross_entropy(out, y)), "accuracy": float((out.argmax(-1) == y).double().mean())}


def test_the_logged_training_loss_is_the_mean_over_every_process(monkeypatch):
    """Mutant: ``self.log("train_loss", loss)`` (this process's mean). Process 0 trains on 4 samples, process 1 on 9
    others: the logged loss and accuracy are the cross-entropy and accuracy of all 13 (by hand), the returned loss
    process 0's own mean."""
    module = _module()
    module._trainer = _Trainer(_sums(module, X[4:13], Y[4:13]))
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **options: logged.update({name: float(value)}))
    module.train()
    loss = module.training_step((X[:4], Y[:4]), 0)
    mine, both = _whole(module, X[:4], Y[:4]), _whole(module, X[:13], Y[:13])
    assert float(loss.detach()) == pytest.approx(mine["loss"], rel=1e-12)
    assert logged["train_loss"] == pytest.approx(both["loss"], rel=1e-12)
    assert logged["train_accuracy"] == pytest.approx(both["accuracy"], rel=1e-12)
    assert abs(both["loss"] - mine["loss"]) > 1e-3  # the two means differ: the test tells them apart


def test_score_sums_over_every_process_before_it_divides():
    """Mutant: ``_reduced`` without ``strategy.reduce`` (this process's sums alone). Process 0 scores 5 samples in
    two batches, process 1 holds the sums of 11 others: the mean over all 16 (by hand)."""
    from lightning.pytorch.plugins.precision import DoublePrecision

    module = _module()
    trainer = _Trainer(_sums(module, X[5:], Y[5:]))
    trainer.precision_plugin = DoublePrecision()
    module._trainer = trainer
    got = module.score([(X[:2], Y[:2]), (X[2:5], Y[2:5])])
    want, mine = _whole(module, X, Y), _whole(module, X[:5], Y[:5])
    assert float(got["loss"]) == pytest.approx(want["loss"], rel=1e-12)
    assert float(got["accuracy"]) == pytest.approx(want["accuracy"], rel=1e-12)
    assert abs(want["loss"] - mine["loss"]) > 1e-3 and want["accuracy"] != mine["accuracy"]


def test_a_step_in_three_parts_returns_the_whole_batchs_loss_and_gradient(monkeypatch):
    """Mutant: ``done = loss_i.detach()`` in ``_micro_batches`` (the returned value loses every part but the last two).
    Six samples in three parts of unequal scores: the returned loss equals the cross-entropy of all six (by hand), and
    its backward plus the parts' accumulated gradients equal the gradient of that mean."""
    module = _module(micro_batches=3)
    module._trainer = _Trainer([0.0, 0.0, 0.0])
    module._trainer.world_size = 1
    module._trainer.strategy.reduce = lambda tensor, reduce_op="sum": tensor
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    module.train()
    loss = module.training_step((X[:6], Y[:6]), 0)
    loss.backward()
    got = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    module.model.zero_grad()
    out = module.model(X[:6], return_state=False)[0]
    want = F.cross_entropy(out, Y[:6])
    want.backward()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    parts = [float(F.cross_entropy(out.detach()[i:i + 2], Y[i:i + 2], reduction="sum")) for i in (0, 2, 4)]
    assert abs(parts[0] - parts[1]) > 1e-3  # the parts differ: a lost part changes the value
    for n, p in module.model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-10, atol=1e-14, msg=n)


def test_a_float64_run_builds_its_model_in_float64_and_loads_weights_unrounded():
    """Mutant: ``precision == "64"`` without ``self.model.double()`` in ``__init__`` (the module built in float32,
    which Lightning converts only later): a checkpoint's float64 weights loaded into it were rounded to float32, so a
    resumed float64 run left the uninterrupted one by ~1e-7. Every parameter is float64 from the start, and weights
    1/3 + 1e-12 load bit for bit; a float32 run stays float32."""
    module = _module()
    assert {p.dtype for p in module.model.parameters()} == {F64}
    weights = {k: torch.full_like(v, 1 / 3 + 1e-12) if v.is_floating_point() else v
               for k, v in module.state_dict().items()}
    module.load_state_dict(weights)
    for k, v in module.state_dict().items():
        assert torch.equal(v, weights[k]), k
    from ssmkit.train.module import SequenceLightningModule

    single = SequenceLightningModule(MODEL, TrainConfig(batch_size=6, precision="32"))
    assert {p.dtype for p in single.model.parameters()} == {torch.float32}


# ----------------------------------------------------------------------------------------------------- report.py


def test_a_deadbeat_layers_record_writes_its_spectral_abscissa_as_null():
    """Mutant: ``"spectral_abscissa": float(result.spectral_abscissa)`` (−inf kept: ``analysis.json`` of any layer
    whose poles all sit at z = 0 failed, JSON having no inf). A two-step shift register, x[k+1] = [[0, 1], [0, 0]] x[k]
    + [0, 1]ᵀ u[k], y = [1, 0.5] x + 0.25 u: the FIR 0.25 + 0.5 q⁻¹ + q⁻², so s = log(0)/dt = −inf, DC gain and H∞
    1.75 (at ω = 0, all taps positive), H2 √(0.25² + 0.5² + 1)."""
    import json
    import math

    import numpy as np

    from ssmkit.analysis.layerwise import analyze_layer
    from ssmkit.analysis.report import layer_record
    from ssmkit.analysis.statespace import StateSpace

    class Fixed:
        name = "fixed"

        def __init__(self):
            self.system = StateSpace(np.array([[[0.0, 1.0], [0.0, 0.0]]]), np.array([[[0.0], [1.0]]]),
                                     np.array([[[1.0, 0.5]]]), np.array([[[0.25]]]))

        def state_space(self):
            return self.system

    with np.errstate(divide="ignore", invalid="ignore"):
        record = json.loads(json.dumps(layer_record(analyze_layer("shift", Fixed(), 0.5)), allow_nan=False))
    assert record["spectral_abscissa"] is None and record["spectral_radius"] == 0.0 and record["stable"] is True
    assert record["dc_gain_min"] == pytest.approx(1.75, rel=1e-12)
    assert record["hinf_max"] == pytest.approx(1.75, rel=1e-9)
    assert record["h2"] == [pytest.approx(math.sqrt(0.25**2 + 0.5**2 + 1.0), rel=1e-9)]


def test_write_report_refuses_zero_channels_before_writing(tmp_path):
    """Mutant: ``channels < 0`` (0 accepted, figures of no channel). ``channels`` 0 is refused naming what is expected,
    and the output folder is not created."""
    from ssmkit.analysis import write_report
    from ssmkit.models import SequenceModel

    model = SequenceModel.from_config(MODEL)
    out = tmp_path / "report"
    with pytest.raises(ValueError, match=r"channels must be an int >= 1 .*got 0"):
        write_report(model, str(out), channels=0, plots=False)
    assert not out.exists()
    paths = write_report(model, str(out), channels=1, plots=False)
    assert sorted(paths) == ["json", "summary"]


# ------------------------------------------------------------------------------------------------------- best.py


class _Stub:
    """What the callbacks read of a trainer: ``should_stop``."""

    def __init__(self) -> None:
        self.should_stop = False


def test_a_non_finite_validation_loss_stops_at_once_and_is_counted_without_patience():
    """Mutant: ``Patience.validated`` without its finiteness check (a NaN loss counted as one more validation without
    improvement). Lightning's rule (EarlyStopping(check_finite=True)): a non-finite loss stops the run at the
    validation that saw it, whatever the count; with no patience the run goes on."""
    from ssmkit.train.best import Patience

    for bad in (float("nan"), float("inf")):
        patience, trainer = Patience(3), _Stub()
        patience.validated(trainer, 1.0)
        patience.validated(trainer, 0.5)
        assert not trainer.should_stop and patience.wait == 0
        patience.validated(trainer, bad)
        assert trainer.should_stop and patience.non_finite and patience.best_loss == 0.5
        counting, trainer = Patience(None), _Stub()
        counting.validated(trainer, bad)
        assert counting.non_finite and not trainer.should_stop


def test_a_lightning_checkpoint_stopped_on_a_non_finite_loss_stays_stopped():
    """Mutant: ``stopping_reason == 3`` in ``Patience.on_load_checkpoint``. The state Lightning's own
    ``EarlyStopping(monitor="val_loss", mode="min")`` writes after a non-finite loss
    (``EarlyStoppingReason.NON_FINITE_METRIC``) restores a stopped count: the resumed run stops when it starts; one it
    wrote after its patience ran out (``PATIENCE_EXHAUSTED``) restores the count, not a non-finite loss."""
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    from ssmkit.train.best import Patience

    for reason, wait, non_finite in ((EarlyStoppingReason.NON_FINITE_METRIC, 0, True),
                                     (EarlyStoppingReason.PATIENCE_EXHAUSTED, 2, False)):
        old = EarlyStopping(monitor="val_loss", mode="min", patience=5)
        old.wait_count, old.best_score, old.stopping_reason = wait, torch.tensor(0.25), reason
        key = old.state_key
        assert key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
        patience, trainer = Patience(5), _Stub()
        patience.on_load_checkpoint(trainer, None, {"callbacks": {key: old.state_dict()}})
        assert (patience.best_loss, patience.wait, patience.non_finite) == (0.25, wait, non_finite)
        patience.on_train_start(trainer, None)
        assert trainer.should_stop is non_finite


def test_catch_up_scores_only_a_validation_this_run_has_not_seen():
    """Mutant: ``self.last_validated > step`` in ``catch_up`` (the validation of the step a run stops or resumes at
    scored again when it already ran): early stopping counted it twice. A validation at step 4 (loss 0.5) seen by the
    callback is not scored again at step 4; step 8, a multiple of ``val_interval`` = 4 no validation reached (a
    checkpoint written just before it), is scored once from ``module.score``; the patience counts each validation
    once: wait 1 after 0.5 then 0.7, not 2."""
    import types

    from torch import nn

    from ssmkit.train.best import BestValidation, Patience

    class Scored(nn.Linear):
        def __init__(self) -> None:
            super().__init__(2, 1)
            self.calls = 0

        def score(self, batches):
            self.calls += 1
            return {"loss": torch.tensor(0.7), "accuracy": torch.tensor(0.25)}

    module = Scored()
    best = BestValidation("classify", val_interval=4)
    best.patience = Patience(3)
    metrics = {"val_accuracy": torch.tensor(0.75), "val_loss": torch.tensor(0.5)}
    trainer = types.SimpleNamespace(global_step=4, sanity_checking=False, should_stop=False, callback_metrics=metrics,
                                    datamodule=types.SimpleNamespace(val_dataloader=lambda: [("x", "y")]))
    best.on_validation_end(trainer, module)
    best.catch_up(trainer, module)  # step 4 was validated: nothing scored
    assert module.calls == 0 and best.patience.wait == 0 and best.last_validated == 4
    trainer.global_step = 8
    best.catch_up(trainer, module)
    best.catch_up(trainer, module)  # once only
    assert module.calls == 1 and best.patience.wait == 1 and best.patience.best_loss == 0.5
    assert (best.step, best.score, best.loss) == (4, 0.75, 0.5)
    assert best.last == {"val_loss": pytest.approx(0.7), "val_accuracy": 0.25, "val_step": 8}
    assert not trainer.should_stop


def test_an_equal_validation_loss_is_no_improvement():
    """Mutant: ``loss <= self.best_loss`` in ``Patience.validated`` (an equal loss restarted the count). Lightning's
    rule, which the class keeps: only a strictly lower loss is an improvement. Losses 0.5, 0.5, 0.5 with patience 2
    stop at the third validation; 0.5, 0.4 restarts the count."""
    from ssmkit.train.best import Patience

    patience, trainer = Patience(2), _Stub()
    for loss, wait in ((0.5, 0), (0.5, 1)):
        patience.validated(trainer, loss)
        assert patience.wait == wait and not trainer.should_stop
    patience.validated(trainer, 0.5)
    assert patience.wait == 2 and trainer.should_stop and patience.best_loss == 0.5
    patience, trainer = Patience(2), _Stub()
    for loss in (0.5, 0.5, 0.4):
        patience.validated(trainer, loss)
    assert patience.wait == 0 and patience.best_loss == 0.4 and not trainer.should_stop


def test_best_validation_ignores_the_sanity_check_and_keeps_its_state_through_a_checkpoint():
    """Mutants: ``on_validation_end`` without its ``sanity_checking`` guard (Lightning's sanity check offered as a
    validation at step 0), ``on_load_checkpoint`` not restoring ``last`` (a resumed run that validates no more reported
    no val_*), and ``load_state_dict`` without its key / mode check (a regression run's best MSE compared as an
    accuracy)."""
    import types

    from torch import nn

    from ssmkit.train.best import BestValidation

    module = nn.Linear(2, 1)
    best = BestValidation("classify", val_interval=2)
    trainer = types.SimpleNamespace(global_step=0, sanity_checking=True, should_stop=False,
                                    callback_metrics={"val_accuracy": torch.tensor(0.5), "val_loss": torch.tensor(0.9)})
    best.on_validation_end(trainer, module)
    assert (best.step, best.last_validated, best.last, best.weights) == (None, -1, {}, None)
    trainer.sanity_checking, trainer.global_step = False, 2
    best.on_validation_end(trainer, module)
    assert best.step == 2 and best.last == {"val_loss": pytest.approx(0.9), "val_accuracy": 0.5, "val_step": 2}
    checkpoint: dict = {}
    best.on_save_checkpoint(trainer, module, checkpoint)
    resumed = BestValidation("classify", val_interval=2)
    resumed.on_load_checkpoint(trainer, module, checkpoint)
    resumed.load_state_dict(best.state_dict())
    assert resumed.last == best.last and (resumed.step, resumed.score, resumed.last_validated) == (2, 0.5, 2)
    with pytest.raises(ValueError, match=r"kept the best 'val_accuracy' \(max\), this run monitors 'val_mse' \(min\)"):
        BestValidation("regress", val_interval=2).load_state_dict(best.state_dict())
