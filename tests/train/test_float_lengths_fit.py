"""Training on right-padded real-valued sequences of different lengths: splits (inputs, targets, lengths) and
(inputs, targets, intervals, lengths) through ``ssmkit.train.fit``, the ``arrays`` task's ``lengths_*`` for float
inputs, and the objective's per-step masking -- each loss against a reference computed one unpadded sequence at a time
(float64 loops), never through the lengths path under test."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from ssmkit.data import from_arrays  # noqa: E402
from ssmkit.models import SequenceModel, SequenceModelConfig  # noqa: E402
from ssmkit.train import TrainConfig, fit  # noqa: E402
from ssmkit.train.batches import StepBatches, unpack_batch  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint  # noqa: E402
from ssmkit.train.objective import scored_count, summed_loss_and_metric  # noqa: E402

F64 = torch.float64
LENGTHS = (9, 4, 1, 7, 6, 2, 9, 3, 5, 8)
L = 9
PER_STEP = SequenceModelConfig(d_input=2, d_model=4, n_layers=2, layer="s4d", d_output=1, head="regress", pool=None,
                               layer_options={"d_state": 4, "bidirectional": True}, norm="batch")
POOLED = SequenceModelConfig(d_input=2, d_model=4, n_layers=2, layer="s4d", d_output=3, head="classify", pool="mean",
                             layer_options={"d_state": 4, "bidirectional": True})


def _split(seed: int, lengths=LENGTHS, fill: float = float("nan"), classes: bool = False):
    """(x (n, L, 2), y, lengths (n,)): a running-mean target per step (or the sign pattern's class), ``fill`` after
    each length in x and in per-step y."""
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor(lengths)
    x = torch.randn(len(lengths), L, 2, generator=g, dtype=F64)
    y = torch.cumsum(x[..., :1], 1) / torch.arange(1, L + 1, dtype=F64)[:, None]  # (n, L, 1)
    within = torch.arange(L)[None, :] < n[:, None]
    if classes:
        y = torch.tensor([int(x[b, :m, 0].sum() > 0) + int(x[b, :m, 1].sum() > 0) for b, m in enumerate(lengths)])
    else:
        y = torch.where(within[..., None], y, fill)
    return torch.where(within[..., None], x, fill), y, n


def _config(**options) -> TrainConfig:
    return TrainConfig(**{"batch_size": 5, "max_steps": 3, "warmup_steps": 0, "val_every": 0, "checkpoint_every": 0,
                          "lr": 1e-2, "precision": "64", "log_every": 1, **options})


def _trained(config: SequenceModelConfig, run) -> SequenceModel:
    state = load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))["state_dict"]
    model = SequenceModel.from_config(config).double()
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return model.eval()


def _reference_mse(model: SequenceModel, x, y, lengths, **kw) -> float:
    """Σ squared errors / Σ scored values, one unpadded sequence at a time (numpy sums)."""
    errors = []
    with torch.no_grad():
        for b, n in enumerate(lengths.tolist()):
            extra = {k: v[b:b + 1, :n] for k, v in kw.items()}
            out = model(x[b:b + 1, :n], return_state=False, **extra)[0][0]  # (n, 1)
            errors.append(((out - y[b, :n]) ** 2).numpy().ravel())
    return float(np.concatenate(errors).sum() / sum(e.size for e in errors))


def test_per_step_regression_scores_the_steps_within_the_lengths_only():
    torch.manual_seed(0)
    model = SequenceModel.from_config(PER_STEP).double().eval()
    x, y, lengths = _split(0)
    out = model(x, return_state=False, lengths=lengths)[0]  # NaN after the lengths: read as 0
    loss, metric, count = summed_loss_and_metric("regress", out, y, lengths)  # y holds NaN at the padding
    assert count.item() == sum(LENGTHS) == scored_count("regress", y, lengths).item()
    assert (loss / count).item() == pytest.approx(_reference_mse(model, torch.nan_to_num(x), y, lengths), rel=1e-12)
    assert metric.item() == pytest.approx(loss.item(), rel=1e-15)
    out = out.detach().requires_grad_(True)
    summed_loss_and_metric("regress", out, y, lengths)[0].backward()
    within = torch.arange(L)[None, :] < lengths[:, None]
    assert torch.isfinite(out.grad).all() and torch.equal(out.grad[~within], torch.zeros_like(out.grad[~within]))
    assert torch.isnan(summed_loss_and_metric("regress", out.detach(), y)[0])  # without lengths the NaN is scored
    g = torch.Generator().manual_seed(2)  # two values a step: each scored step counts both
    out2, y2 = (torch.randn(len(LENGTHS), L, 2, generator=g, dtype=F64) for _ in range(2))
    loss2, _, count2 = summed_loss_and_metric("regress", out2, y2, lengths)
    reference = sum(float(((out2[b, :n] - y2[b, :n]) ** 2).sum()) for b, n in enumerate(LENGTHS))
    assert count2.item() == 2 * sum(LENGTHS) == scored_count("regress", y2, lengths).item()
    assert loss2.item() == pytest.approx(reference, rel=1e-12)


def test_per_step_classes_score_the_steps_within_the_lengths_only():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 5, generator=g, dtype=F64)
    y = torch.randint(0, 5, (4, 6), generator=g)
    y[0, 1] = -100  # an unscored step within a length stays unscored
    lengths = torch.tensor([6, 3, 1, 4])
    loss, correct, count = summed_loss_and_metric("lm", logits, y, lengths)
    steps = [(b, t) for b in range(4) for t in range(int(lengths[b])) if y[b, t] != -100]
    reference = sum(float(torch.logsumexp(logits[b, t], 0) - logits[b, t, y[b, t]]) for b, t in steps)
    assert count.item() == len(steps) == scored_count("lm", y, lengths).item()
    assert loss.item() == pytest.approx(reference, rel=1e-12)
    assert correct.item() == sum(int(logits[b, t].argmax() == y[b, t]) for b, t in steps)
    pooled = torch.randn(4, 5, generator=g, dtype=F64)  # one label a sequence: the lengths change nothing
    labels = torch.tensor([0, 4, 2, 1])
    assert torch.equal(summed_loss_and_metric("classify", pooled, labels, lengths)[0],
                       summed_loss_and_metric("classify", pooled, labels)[0])
    with pytest.raises(ValueError, match=r"lengths must be \(B,\) = \(4,\), one per sequence .*; got \(3,\)"):
        summed_loss_and_metric("lm", logits, y, lengths[:3])


def test_the_batch_forms_are_told_apart_by_kind():
    x, y, lengths = _split(0, fill=0.0)
    tau = torch.ones(len(LENGTHS), L, dtype=F64)
    assert unpack_batch((x, y))[2:] == (None, None)
    assert unpack_batch((x, y, tau))[2] is tau and unpack_batch((x, y, tau))[3] is None
    assert unpack_batch((x, y, lengths))[2] is None and unpack_batch((x, y, lengths))[3] is lengths
    parts = unpack_batch((x, y, tau, lengths))
    assert parts[2] is tau and parts[3] is lengths
    with pytest.raises(ValueError, match=r"got 4 tensors \(torch.float64, torch.float64, torch.int64, torch.float64\): "
                                         r"intervals are real, lengths integers, and lengths come last"):
        unpack_batch((x, y, lengths, tau))
    with pytest.raises(ValueError, match=r"got 5 tensors"):
        unpack_batch((x, y, tau, lengths, lengths))
    batches = StepBatches((x, y, lengths), 4, transform=lambda b: (b[0] * 2, b[1]))
    with pytest.raises(ValueError, match=r"given an \(inputs, targets, lengths\) batch and returned 2 tensors: it "
                                         r"must return all three \(without the lengths the model would read the "
                                         r"padding\)"):
        next(iter(batches))
    batches = StepBatches((x, y, tau, lengths), 4, transform=lambda b: b[:3])
    with pytest.raises(ValueError, match=r"returned 3 tensors: it must return all four \(without the intervals and "
                                         r"lengths"):
        next(iter(batches))


def test_fit_refuses_splits_that_lack_lengths_or_carry_bad_ones(tmp_path):
    train, test = _split(0, fill=0.0), _split(1, fill=0.0)
    with pytest.raises(ValueError, match=r"the splits \['train'\] carry lengths \(inputs, targets, lengths\) but "
                                         r"\['test'\] do not: a split without them would read its padding"):
        fit(PER_STEP, _config(), train, None, test[:2], tmp_path / "a", progress=False)
    bad = (*test[:2], test[2].clone().fill_(L + 1))
    with pytest.raises(ValueError, match=r"the test split's lengths must be in \[1, L = 9\] .*; found 10 to 10"):
        fit(PER_STEP, _config(), train, None, bad, tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match=r"the test split: a batch must be .*; got 4 tensors"):
        fit(PER_STEP, _config(), train, None, (*test[:2], test[2], test[2]), tmp_path / "c", progress=False)
    assert not os.path.exists(tmp_path / "a" / "checkpoints")  # refused before anything trained


def test_fit_on_padded_float_data_scores_each_sequence_alone_and_ignores_the_padding(tmp_path):
    train, test = _split(0, fill=0.0), _split(1, lengths=(3, 9, 5, 1, 6), fill=0.0)
    result = fit(PER_STEP, _config(), train, None, test, tmp_path / "zeros", progress=False)
    model = _trained(PER_STEP, tmp_path / "zeros")
    expected = _reference_mse(model, *test)
    with open(tmp_path / "zeros" / "result.json") as f:
        assert result["test_loss_final"] == pytest.approx(expected, rel=1e-10) == json.load(f)["test_loss_final"]
    # other padding (inputs 50, targets 1e3) trains the same weights: no step of training read it
    within = (torch.arange(L)[None, :] < train[2][:, None])[..., None]
    other = (torch.where(within, train[0], 50.0), torch.where(within, train[1], 1e3), train[2])
    fit(PER_STEP, _config(), other, None, test, tmp_path / "other", progress=False)
    again = _trained(PER_STEP, tmp_path / "other")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=name)


def test_steps_in_micro_batches_with_lengths_are_the_steps_in_one_piece(tmp_path):
    # each part's loss is its sum over the whole batch's scored steps (the parts hold different numbers of them);
    # layer norm: a batch norm in training mode takes each part's own statistics
    config = SequenceModelConfig(**{**PER_STEP.to_dict(), "norm": "layer"})
    train = _split(0, fill=0.0)
    states = []
    for micro in (1, 2):
        fit(config, _config(micro_batches=micro), train, None, None, tmp_path / f"m{micro}", progress=False)
        states.append(_trained(config, tmp_path / f"m{micro}").state_dict())
    for name in states[0]:
        torch.testing.assert_close(states[1][name], states[0][name], rtol=1e-10, atol=1e-12, msg=name)


def test_fit_with_intervals_and_lengths_scores_each_irregular_sequence_alone(tmp_path):
    config = SequenceModelConfig(d_input=2, d_model=4, n_layers=1, layer="s4d", d_output=1, head="regress", pool=None,
                                 layer_options={"d_state": 4})
    g = torch.Generator().manual_seed(4)
    train, test = _split(0, fill=0.0), _split(1, lengths=(3, 9, 5, 1, 6), fill=0.0)
    gaps = [0.2 + 2 * torch.rand(len(s[2]), L, generator=g, dtype=F64) for s in (train, test)]
    result = fit(config, _config(), (*train[:2], gaps[0], train[2]), None, (*test[:2], gaps[1], test[2]),
                 tmp_path / "run", progress=False)
    model = _trained(config, tmp_path / "run")
    assert result["test_loss_final"] == pytest.approx(_reference_mse(model, *test, intervals=gaps[1]), rel=1e-10)


def test_pooled_classification_with_lengths_scores_each_sequence_alone(tmp_path):
    train, test = _split(0, fill=3.0, classes=True), _split(1, lengths=(3, 9, 5, 1, 6), fill=3.0, classes=True)
    result = fit(POOLED, _config(), train, None, test, tmp_path / "run", progress=False)
    model = _trained(POOLED, tmp_path / "run")
    with torch.no_grad():
        logits = torch.cat([model(test[0][b:b + 1, :n], return_state=False)[0] for b, n in enumerate(test[2].tolist())])
    losses = torch.logsumexp(logits, 1) - logits[torch.arange(5), test[1]]
    assert result["test_loss_final"] == pytest.approx(losses.mean().item(), rel=1e-10)
    assert result["test_accuracy_final"] == pytest.approx((logits.argmax(1) == test[1]).double().mean().item())


def test_the_arrays_task_carries_float_lengths_to_training(tmp_path):
    from ssmkit.train.experiment import Experiment, run_experiment

    rng = np.random.default_rng(0)
    n = 40
    lengths = rng.integers(1, L + 1, size=n)
    x = rng.normal(size=(n, L, 2)) * [1.0, 3.0] + [0.5, -2.0]
    y = np.cumsum(x[..., 0], 1) / np.arange(1, L + 1)
    padding = np.arange(L)[None, :] >= lengths[:, None]
    x[padding], y[padding] = np.nan, np.nan  # what a file of padded recordings holds
    task = from_arrays(x, y, lengths_train=lengths, val_fraction=0.1, test_fraction=0.2)
    info = task.info()
    assert info.per_step and info.pad_id is None and "variable lengths" in info.source
    splits = {k: ds.tensors for k, ds in task.splits().items()}
    assert all(len(t) == 3 and t[2].dtype == torch.int64 for t in splits.values())
    tx, ty, tn = splits["train"]
    keep = (torch.arange(L)[None, :] < tn[:, None]).numpy()
    np.testing.assert_allclose(tx.numpy()[keep].mean(0), 0.0, atol=1e-6)  # standardised over the valid steps
    np.testing.assert_allclose(tx.numpy()[keep].std(0), 1.0, atol=1e-6)
    assert (tx.numpy()[~keep] == 0).all() and (ty.numpy()[~keep] == 0).all()
    experiment = Experiment(task="arrays", d_model=4, n_layers=1, model="s4d", pool="mean",
                            train=_config(val_every=0))
    result = run_experiment(experiment, str(tmp_path / "run"), task=task, progress=False)
    config = experiment.model_config(info)
    model = _trained(config, tmp_path / "run")
    # the reference from the file's own arrays: the held-out test rows, standardised here, each sequence alone
    test_rows = np.sort(np.random.default_rng(0).permutation(n)[:8])
    # (in float32, as the task stores them; the float64 run reads them exactly)
    xs = torch.from_numpy((x[test_rows] - task.mean) / task.std).float().double()  # NaN after the lengths
    ys = torch.from_numpy(y[test_rows]).float().double()[..., None]
    expected = _reference_mse(model, xs, ys, torch.from_numpy(lengths[test_rows]))
    assert result["test_loss_final"] == pytest.approx(expected, rel=1e-10)


def test_the_arrays_task_refuses_a_pad_id_for_float_inputs_and_bad_lengths():
    x = np.ones((5, 4))
    with pytest.raises(ValueError, match=r"padding ids \(pad\) need token inputs.*give float sequences of "
                                         r"different lengths as lengths_\*"):
        from_arrays(x, np.arange(5) % 2, pad=0)
    with pytest.raises(ValueError, match=r"lengths_train must be in \[1, L = 4\]; found 0 to 4"):
        from_arrays(x, np.arange(5) % 2, lengths_train=np.array([4, 0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"x_train holds 1 non-finite value.* at index \(1, 1\)"):
        bad = x.copy()
        bad[1, 1:] = np.nan  # NaN after the length is padding; one within the length is refused
        from_arrays(bad, np.arange(5) % 2, lengths_train=np.array([4, 2, 1, 2, 3]))


def test_integer_intervals_are_named_as_such_not_as_bad_lengths(tmp_path):
    # a third tensor of integers is read as lengths (intervals are real): whole-period gaps given as integers get a
    # message that says so, not one about lengths of the wrong shape
    from ssmkit.models import SequenceModelConfig
    from ssmkit.train import TrainConfig, fit

    x, y = torch.randn(6, 5, 1), torch.randint(0, 2, (6,))
    gaps = torch.ones(6, 5, dtype=torch.int64)
    model = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2)
    with pytest.raises(ValueError, match=r"give them as floats: intervals.double\(\)"):
        fit(model, TrainConfig(batch_size=2, max_steps=1, warmup_steps=0), (x, y, gaps), None, None, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
