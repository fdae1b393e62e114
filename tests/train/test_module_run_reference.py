"""The Lightning module, ``fit`` and the comparison plot against references written here (probe 48).

References: a float64 training loop in the test (the cross-entropy, its gradient, the gradient clipped by its global
norm, the warm-up + cosine factor written from its formula, and ``torch.optim.AdamW`` stepped directly on a copy of
the initial model), compared parameter by parameter with the weights ``fit`` writes; the validation, test and
extra-test metrics recomputed from that loop's predictions over whole splits; the files a run writes read back
(result.json, model.json, train.json, metrics.csv, the checkpoints); the module's checkpoint hooks and process seeds
driven by a stub trainer; and the comparison plot's data read back from its matplotlib Figure.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import logging
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning")

from ssmkit.models import SequenceModel, SequenceModelConfig  # noqa: E402
from ssmkit.train import StepBatches, TrainConfig, fit  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint  # noqa: E402
from ssmkit.train.optim import param_groups  # noqa: E402

G = torch.Generator().manual_seed(3)
X = torch.randn(30, 6, 1, generator=G)
Y = (X.sum(dim=(1, 2)) > 0).long()
LONG_X = torch.randn(4, 9, 1, generator=G)
LONG_Y = (LONG_X.sum(dim=(1, 2)) > 0).long()
MODEL = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 2})
SPLITS = {"train": (X[:16], Y[:16]), "val": (X[16:23], Y[16:23]), "test": (X[23:], Y[23:]), "long": (LONG_X, LONG_Y)}


def config(**changes) -> TrainConfig:
    base = dict(batch_size=4, max_steps=4, warmup_steps=2, lr=0.05, weight_decay=0.1, lr_floor=0.2, grad_clip=0.05,
                val_every=1, checkpoint_every=3, eval_batch_size=3, log_every=1, precision="64", seed=5)
    return TrainConfig(**{**base, **changes})


def halve(batch):
    """The run's transform: inputs halved, targets kept."""
    return batch[0] * 0.5, batch[1]


def factor(step: int, warmup: int, total: int, floor: float) -> float:
    """The schedule's factor from its formula: (s + 1) / w in the warm-up, then floor + (1 - floor) ½ (1 + cos)."""
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))


def scores(net, split) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``net`` over a whole split (float64, eval mode)."""
    x, y = halve(split)
    with torch.no_grad():
        out = net.eval()(x.double(), return_state=False)[0]
    net.train()
    return {"loss": float(F.cross_entropy(out, y)), "accuracy": float((out.argmax(-1) == y).double().mean())}


def reference_run(cfg: TrainConfig):
    """The run by hand: per step its batch, loss, clipped gradient and AdamW step; per validation the weights and
    scores. Returns (train losses, train accuracies, [(step, weights, val scores)], final weights)."""
    torch.manual_seed(cfg.seed)
    net = SequenceModel.from_config(MODEL).double()
    opt = torch.optim.AdamW(param_groups(net, lr=cfg.lr, weight_decay=cfg.weight_decay))
    peaks = [g["lr"] for g in opt.param_groups]
    order = StepBatches(SPLITS["train"], cfg.batch_size, seed=cfg.seed)
    losses, accuracies, validations = [], [], []
    for step in range(cfg.max_steps):
        for group, peak in zip(opt.param_groups, peaks):
            group["lr"] = peak * factor(step, cfg.warmup_steps, cfg.max_steps, cfg.lr_floor)
        idx = order.indices(step)
        x, y = halve((SPLITS["train"][0][idx], SPLITS["train"][1][idx]))
        out = net(x.double(), return_state=False)[0]
        loss = F.cross_entropy(out, y)
        losses.append(loss.item())
        accuracies.append(float((out.argmax(-1) == y).double().mean()))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(net.parameters()), cfg.grad_clip)
        opt.step()
        if (step + 1) % cfg.val_every == 0:
            weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
            validations.append((step + 1, weights, scores(net, SPLITS["val"])))
    return losses, accuracies, validations, net


def loaded(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    net = SequenceModel.from_config(MODEL).double()
    net.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
    return net


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    seen = []

    def recording(batch):  # every batch the run transforms, by split size
        seen.append(int(batch[0].shape[0]))
        return halve(batch)

    import lightning.pytorch as pl

    keys = []

    class Keys(pl.Callback):  # the logged and progress-bar metric names after each step, validation and test
        def record(self, trainer, when):
            keys.append((when, sorted(trainer.logged_metrics), sorted(trainer.progress_bar_metrics)))

        def on_train_batch_end(self, trainer, *args):
            self.record(trainer, "step")

        def on_validation_end(self, trainer, module):
            self.record(trainer, "val")

        def on_test_end(self, trainer, module):
            self.record(trainer, "test")

    class Clock:  # the throughput's clock: a quarter second per reading
        now = 0.0

        def perf_counter(self):
            self.now += 0.25
            return self.now

    from ssmkit.train import run as run_module

    class Records(logging.Handler):  # what Lightning logs, at any level its loggers let through
        def emit(self, record):
            keys.append(("log", record.name, record.getMessage()))

    cfg = config(test_weights="best_val")
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    handler = Records()
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(run_module, "time", Clock())
        for logger in loggers:
            logger.addHandler(handler)
        try:
            result = fit(MODEL, cfg, SPLITS["train"], SPLITS["val"], SPLITS["test"], out, progress=False,
                         labels={"task": "sign", "model": "s4d"}, transform=recording,
                         extra_tests={"long": SPLITS["long"]}, extra_callbacks=[Keys()])
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
    keys.append(("printed", printed.getvalue()))
    keys.append(logging.getLogger("lightning.pytorch").level)  # fit quietened Lightning's banners
    return cfg, out, result, seen, reference_run(cfg), keys


def test_fit_trains_as_the_float64_loop_with_clipping_and_the_schedule(run):
    cfg, out, result, _, (losses, accuracies, _, net), _ = run
    final = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert final["global_step"] == cfg.max_steps
    got = {k.removeprefix("model."): v for k, v in final["state_dict"].items()}
    want = net.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == torch.float64, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-9, msg=k)
    # the per-step training loss and accuracy the module logged (metrics.csv, every step)
    with open(out / "logs" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_loss")]
    assert [int(r["step"]) for r in rows] == list(range(cfg.max_steps))
    np.testing.assert_allclose([float(r["train_loss"]) for r in rows], losses, rtol=1e-6)
    assert [float(r["train_accuracy"]) for r in rows] == pytest.approx(accuracies, abs=1e-12)


def test_fit_records_validation_best_validation_and_tests_as_recomputed(run):
    cfg, out, result, _, (_, _, validations, net), _ = run
    steps = [s for s, _, _ in validations]
    assert steps == [1, 2, 3, 4]
    # the best validation: the first strictly highest accuracy (the run's monitored metric)
    best = max(range(len(validations)), key=lambda i: (validations[i][2]["accuracy"], -i))
    best_step, best_weights, best_scores = validations[best]
    assert best_step != cfg.max_steps  # the seed makes the best validation's weights differ from the final ones
    last = validations[-1][2]
    assert result["val_loss"] == pytest.approx(last["loss"], rel=1e-6)
    assert result["val_accuracy"] == pytest.approx(last["accuracy"], abs=1e-12)
    assert result["best_val_step"] == best_step
    assert result["best_val_epoch"] == pytest.approx(best_step * cfg.batch_size / 16, abs=1e-15)
    assert result["best_val_loss"] == pytest.approx(best_scores["loss"], rel=1e-6)
    assert result["best_val_accuracy"] == pytest.approx(best_scores["accuracy"], abs=1e-12)
    at_best, at_final = loaded(best_weights), net
    for name in ("test", "long"):
        for weights, suffix in ((at_best, "_best_val"), (at_final, "_final")):
            want = scores(weights, SPLITS[name])
            assert result[f"{name}_loss{suffix}"] == pytest.approx(want["loss"], rel=1e-6), (name, suffix)
            assert result[f"{name}_accuracy{suffix}"] == pytest.approx(want["accuracy"], abs=1e-12), (name, suffix)
        # test_weights "best_val": the unsuffixed metrics are the best validation's
        assert result[f"{name}_loss"] == result[f"{name}_loss_best_val"]
        assert result[f"{name}_accuracy"] == result[f"{name}_accuracy_best_val"]
    assert result["test_weights"] == "best_val"
    # best_val.ckpt: the best validation's weights, step, monitored key and score, and the run's configurations
    saved = load_checkpoint(out / "checkpoints" / "best_val.ckpt")
    assert saved["global_step"] == best_step and saved["monitor"] == "val_accuracy"
    assert saved["score"] == result["best_val_accuracy"]
    assert saved["hyper_parameters"] == {"model": MODEL.to_dict(), "train": cfg.to_dict()}
    assert "pytorch-lightning_version" in saved
    for k, v in best_weights.items():
        torch.testing.assert_close(saved["state_dict"]["model." + k], v, rtol=1e-6, atol=1e-9, msg=k)


def test_fit_writes_its_files_and_counts_its_samples(run):
    cfg, out, result, seen, _, keys = run
    assert json.loads((out / "result.json").read_text()) == result
    assert json.loads((out / "model.json").read_text()) == MODEL.to_dict()
    assert json.loads((out / "train.json").read_text()) == cfg.to_dict()
    assert list(result)[:2] == ["task", "model"] and (result["task"], result["model"]) == ("sign", "s4d")
    net = SequenceModel.from_config(MODEL)
    assert result["steps"] == cfg.max_steps
    assert result["parameters"] == sum(p.numel() for p in net.parameters())
    assert result["resumed_from"] is None
    # the clock read once before and once after each step: 0.25 s a step; tokens per sample = L (features (B, L, 1)
    # count steps, not features)
    assert result["train_seconds"] == 0.25 * cfg.max_steps
    assert result["samples_per_second"] == cfg.batch_size / 0.25
    assert result["tokens_per_second"] == cfg.batch_size * 6 / 0.25
    assert keys.pop() == logging.WARNING
    assert keys.pop() == ("printed", "")  # no progress bar, model summary or test table
    assert [k for k in keys if k[0] == "log"] == []  # no seed, hardware or tip banners

    # periodic checkpoints every 3 steps (the newest kept), last.ckpt at the end, best_val.ckpt
    assert sorted(os.listdir(out / "checkpoints")) == ["best_val.ckpt", "last.ckpt", "step3.ckpt"]
    assert load_checkpoint(out / "checkpoints" / "step3.ckpt")["global_step"] == 3
    # every batch went through the transform: training batches of 4, evaluation batches of eval_batch_size 3
    # every batch went through the transform: training batches of 4 (one fetched ahead), evaluation batches of
    # eval_batch_size 3 over 7 samples (validation, built once; test at the final weights, "long" (4 samples) at the
    # final weights, then both at the best validation's)
    assert seen.count(4) == cfg.max_steps + 1
    assert [s for s in seen if s != 4] == [3, 3, 1, 3, 3, 1, 3, 1, 3, 3, 1, 3, 1]
    # the names logged (per step, not per epoch) and those on the progress bar: the training loss and the validation's
    train, val = ["train_accuracy", "train_loss"], ["val_accuracy", "val_loss"]
    assert keys[:2] == [("step", train, ["train_loss"]), ("val", train + val, ["train_loss"] + val)]
    # each test under its own names (metrics.csv's columns, the record's keys): the split, then the weights
    assert [k for k in keys if k[0] == "test"] == [
        ("test", [f"{split}_{m}{weights}" for m in ("accuracy", "loss")], [])
        for weights in ("_final", "_best_val") for split in ("test", "long")]


def test_score_of_language_model_steps_counts_only_the_scored_ones():
    from ssmkit.train.module import SequenceLightningModule

    lm = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=3, head="lm", pool=None,
                             vocab_size=5, layer_options={"d_state": 2})
    module = SequenceLightningModule(lm, config())
    from lightning.pytorch.plugins.precision import Precision

    trainer = _Trainer()
    trainer.precision_plugin = Precision()
    trainer.strategy.batch_to_device = lambda batch: batch
    module._trainer = trainer
    x = torch.randint(0, 5, (3, 6), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (3, 6), generator=torch.Generator().manual_seed(2))
    y[:, :4] = -100  # only the last two steps are scored
    got = module.score([(x[:2], y[:2]), (x[2:], y[2:])])
    with torch.no_grad():
        out = module.model.eval()(x, return_state=False)[0][:, 4:].double()
    assert float(got["loss"]) == pytest.approx(float(F.cross_entropy(out.reshape(-1, 3), y[:, 4:].reshape(-1))), rel=1e-6)
    assert float(got["accuracy"]) == pytest.approx(float((out.argmax(-1) == y[:, 4:]).double().mean()), abs=1e-7)
    # nothing scored: zeros over a count of at least one, not 0 / 0
    got = module.score([(x, torch.full_like(y, -100))])
    assert (float(got["loss"]), float(got["accuracy"])) == (0.0, 0.0)
    # a stage that saw no batch logs nothing
    logged = []
    module.log = lambda *a, **k: logged.append(a)
    module.on_validation_epoch_end()
    module.on_test_epoch_end()
    assert logged == []


def test_final_test_weights_and_a_run_without_validation(tmp_path):
    cfg = config(max_steps=2, warmup_steps=0, lr_floor=0.0, val_every=0, checkpoint_every=0, test_weights="final")
    result = fit(MODEL, cfg, SPLITS["train"], None, SPLITS["test"], tmp_path, progress=False, transform=halve)
    _, _, _, net = reference_run(TrainConfig(**{**cfg.to_dict(), "val_every": cfg.max_steps}))
    want = scores(net, SPLITS["test"])
    assert result["test_loss"] == result["test_loss_final"] == pytest.approx(want["loss"], rel=1e-6)
    assert result["test_accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert not any(k.startswith(("val_", "best_")) or k.endswith("_best_val") for k in result)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["last.ckpt", "step2.ckpt"]
    with open(tmp_path / "logs" / "version_0" / "metrics.csv") as f:
        assert not any(r.get("val_loss") for r in csv.DictReader(f))  # no validation ran


def test_early_stopping_stops_at_the_first_validation_without_a_lower_loss(tmp_path):
    cfg = config(early_stopping=1, checkpoint_every=0)
    _, _, validations, _ = reference_run(cfg)
    losses = [v[2]["loss"] for v in validations]
    stop = next(s for (s, _, _), k in zip(validations, range(len(losses))) if k and losses[k] >= min(losses[:k]))
    assert stop < cfg.max_steps  # the reference stops early
    result = fit(MODEL, cfg, SPLITS["train"], SPLITS["val"], None, tmp_path / "a", progress=False, transform=halve)
    assert result["steps"] == stop
    assert result["val_loss"] == pytest.approx(losses[stop - 1], rel=1e-6)
    # without a validation split there is nothing to monitor: refused by name before anything is written (it went on
    # to max_steps silently)
    with pytest.raises(ValueError, match="early_stopping=1 stops on the validation loss, but no validation split"):
        fit(MODEL, cfg, SPLITS["train"], None, None, tmp_path / "b", transform=halve)
    assert not (tmp_path / "b").exists()


def test_resuming_a_finished_run_scores_the_validation_its_checkpoint_preceded(tmp_path):
    # the last checkpoint of a run that validates and checkpoints at its last step is written before that validation:
    # a resume of the finished run trains nothing and must score it itself to report the best validation
    cfg = config(val_every=4, checkpoint_every=4)
    whole = fit(MODEL, cfg, SPLITS["train"], SPLITS["val"], SPLITS["test"], tmp_path, progress=False, transform=halve)
    again = fit(MODEL, cfg, SPLITS["train"], SPLITS["val"], SPLITS["test"], tmp_path, resume=True, progress=False,
                transform=halve)
    assert again["resumed_from"] == str(tmp_path / "checkpoints" / "last.ckpt") and again["steps"] == 4
    for key in ("best_val_step", "best_val_loss", "best_val_accuracy", "test_loss_best_val", "test_loss_final"):
        assert again[key] == pytest.approx(whole[key], rel=1e-6), key


def test_tokens_count_time_steps_of_ids_pairs_and_features():
    from ssmkit.train.run import _tokens

    ids = {(5, 7): 35, (5, 2, 7): 70, (5,): 5, (): 1}
    features = {(5, 7, 3): 35, (5, 2, 7, 3): 70}
    for shape, count in ids.items():
        assert _tokens(torch.zeros(shape, dtype=torch.long)) == count, shape
    for shape, count in features.items():
        assert _tokens(torch.zeros(shape)) == count, shape
    assert _tokens(torch.zeros(5, 7, 3, dtype=torch.long)) == 105  # integer (B, L, 3): every id
    assert _tokens(torch.zeros(5, 7)) == 35  # a float (B, L) input: every step


def test_tokens_leave_out_the_padding_of_lengths_and_pad_ids():
    # tokens_per_second counted a padded batch's padding (a stop-66 Left item); now only t < n_b and ids != pad_id
    from ssmkit.train.run import _tokens

    rng = np.random.default_rng(0)
    n = np.array([7, 1, 4, 6, 2])
    assert _tokens(torch.randn(5, 7, 3), torch.tensor(n)) == n.sum()  # features: steps within each length
    ids = rng.integers(0, 4, size=(5, 7))  # id 0 is the pad id
    assert _tokens(torch.tensor(ids)) == 35
    assert _tokens(torch.tensor(ids), None, 0) == (ids != 0).sum()
    within = np.arange(7)[None, :] < n[:, None]
    assert _tokens(torch.tensor(ids), torch.tensor(n), 0) == (within & (ids != 0)).sum()
    pairs, pair_n = rng.integers(0, 4, size=(5, 2, 7)), rng.integers(1, 8, size=(5, 2))
    want = ((np.arange(7)[None, None, :] < pair_n[..., None]) & (pairs != 0)).sum()
    assert _tokens(torch.tensor(pairs), torch.tensor(pair_n), 0) == want
    assert _tokens(torch.randn(5, 2, 7, 3), torch.tensor(pair_n)) == pair_n.sum()


def test_fit_counts_the_tokens_within_the_lengths(tmp_path, monkeypatch):
    import ssmkit.train.run as run_module

    class Clock:  # a quarter second per reading: each step takes 0.25 s
        now = 0.0

        def perf_counter(self):
            self.now += 0.25
            return self.now

    monkeypatch.setattr(run_module, "time", Clock())
    g = torch.Generator().manual_seed(0)
    x, lengths = torch.randn(12, 6, 1, generator=g), torch.full((12,), 4)  # every item 4 steps of 6: any batch
    y = (x[:, :4].sum(dim=(1, 2)) > 0).long()
    model = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 2})
    cfg = TrainConfig(batch_size=4, max_steps=3, warmup_steps=1, log_every=1)
    result = fit(model, cfg, (x, y, lengths), None, None, tmp_path / "run", progress=False)
    assert result["samples_per_second"] == 4 / 0.25
    assert result["tokens_per_second"] == 4 * 4 / 0.25  # was 4 * 6 / 0.25: the padding counted


def test_a_time_limit_stops_after_the_first_step_and_a_resume_without_last_starts_fresh(tmp_path):
    cfg = config(max_time=1e-9, val_every=0, checkpoint_every=0, precision="32")
    result = fit(MODEL, cfg, SPLITS["train"], None, None, tmp_path / "a", progress=False)
    assert result["steps"] < cfg.max_steps  # Lightning's timer stopped the run at its first check
    # no periodic checkpoint was due: the final one is written at the step the run stopped at
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "last.ckpt")["global_step"] == result["steps"]
    os.makedirs(tmp_path / "b" / "checkpoints")
    (tmp_path / "b" / "checkpoints" / "notes.txt").write_text("kept")
    with pytest.raises(ValueError, match=r"checkpoints already holds checkpoints: pass resume=True"):
        fit(MODEL, cfg, SPLITS["train"], None, None, tmp_path / "b", progress=False)
    result = fit(MODEL, cfg, SPLITS["train"], None, None, tmp_path / "b", resume=True, progress=False)
    assert result["resumed_from"] is None and result["steps"] < cfg.max_steps


def test_a_resume_names_every_changed_field_in_order(tmp_path):
    from ssmkit.train.run import check_same_run

    cfg = config()
    saved = {"model": MODEL.to_dict(), "train": cfg.to_dict()}
    check_same_run(saved, MODEL, TrainConfig(**{**cfg.to_dict(), "eval_batch_size": 8, "val_every": 2}), "p")  # free
    with pytest.raises(ValueError, match=r"\(train batch_size: saved 4, given 8\)"):  # another step: refused
        check_same_run(saved, MODEL, TrainConfig(**{**cfg.to_dict(), "batch_size": 8}), "p")
    check_same_run({}, SequenceModelConfig(**{**MODEL.to_dict(), "d_model": 8}), config(lr=1.0), "p")  # nothing saved
    other = SequenceModelConfig(**{**MODEL.to_dict(), "n_layers": 2, "d_model": 8, "d_output": 3, "dropout": 0.5,
                                   "layer_options": {"d_state": 3}})
    changed = TrainConfig(**{**cfg.to_dict(), "lr_floor": 0.0, "lr": 0.5, "warmup_steps": 1, "weight_decay": 0.0,
                             "max_steps": 9})
    want = ("model d_model: saved 4, given 8; model d_output: saved 2, given 3; model dropout: saved 0.0, given 0.5; "
            "model layer_options: saved {'d_state': 2}, given {'d_state': 3}; "
            "model n_layers: saved 1, given 2; train lr: saved 0.05, given 0.5; "
            "train weight_decay: saved 0.1, given 0.0; train max_steps: saved 4, given 9; train warmup_steps: saved "
            "2, given 1; train lr_floor: saved 0.2, given 0.0")
    with pytest.raises(ValueError, match=r"^resume continues the run saved in ck/last\.ckpt with its own model, "
                                         r"optimiser and schedule, but the configuration given differs \("
                                         + want.replace("(", r"\(").replace("{", r"\{") + r"\): give the saved"):
        check_same_run(saved, other, changed, "ck/last.ckpt")
    older = {k: v for k, v in MODEL.to_dict().items() if k != "dropout"}  # a key the saved model did not have
    with pytest.raises(ValueError, match=r"\(model dropout: saved None, given 0.5\)"):
        check_same_run({"model": older}, SequenceModelConfig(**{**MODEL.to_dict(), "dropout": 0.5}), cfg, "p")
    saved["train"] = {"lr": 0.05}  # an older checkpoint without the other fields: only lr compared
    with pytest.raises(ValueError, match=r"\(train lr: saved 0.05, given 0.5\)"):
        check_same_run(saved, MODEL, changed, "p")


# the module's hooks, driven by a stub trainer


class _Strategy:
    def __init__(self, others_finite: bool | None = None):
        self.others_finite = others_finite  # a second process whose loss is finite or not; None: one process
        self.root_device = torch.device("cpu")

    def reduce(self, tensor, reduce_op="sum"):
        if self.others_finite is None or tensor.dim() != 1:
            return tensor
        # the training step's (finite, loss sum, metric sum, count): the other process has the same batch's sums
        other = tensor.clone()
        other[0] = float(self.others_finite)
        return tensor + other


class _Trainer:
    def __init__(self, rank=0, world=1, step=0, others_finite=None):
        self.global_rank, self.world_size, self.global_step = rank, world if others_finite is None else 2, step
        self.strategy = _Strategy(others_finite)


def _module(**train):
    from ssmkit.train.module import SequenceLightningModule

    module = SequenceLightningModule(MODEL.to_dict(), config(**train).to_dict())  # both as plain dicts
    assert module.hparams == {"model": MODEL.to_dict(), "train": config(**train).to_dict()}
    assert module.model_config == MODEL and module.train_config == config(**train) and module.head == "classify"
    return module


def test_a_non_finite_loss_names_itself_or_the_other_process(monkeypatch):
    from ssmkit.train.module import NonFiniteLossError

    module = _module()
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    x, y = X[:4].clone(), Y[:4]
    module._trainer = _Trainer(step=7, others_finite=False)
    with pytest.raises(NonFiniteLossError, match=r"^the training loss of another process is not finite \(this "
                                                 r"process's: [0-9.]+\) at step 7 \(batch 2\); training stopped "
                                                 r"before the update\. Lower"):
        module.training_step((x, y), 2)
    x[1] = float("nan")
    module._trainer = _Trainer(step=3)
    module.checkpoint_dir = "/runs/a/checkpoints"
    with pytest.raises(NonFiniteLossError, match=r"^the training loss is nan at step 3 \(batch 0\); training "
                                                 r"stopped before the update; the last good checkpoint is in "
                                                 r"/runs/a/checkpoints\. Lower"):
        module.training_step((x, y), 0)
    module._trainer = _Trainer(step=3, others_finite=True)
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **options: logged.update({name: (float(value), options)}))
    for n in (4, 1):  # finite here and there: the mean loss and accuracy over the batch (a batch of one too)
        loss = module.training_step((X[:n], Y[:n]), 0)
        out = module.model(X[:n], return_state=False)[0].double()
        want = F.cross_entropy(out, Y[:n])
        assert float(loss) == pytest.approx(float(want), rel=1e-6)
        assert logged["train_loss"][0] == pytest.approx(float(want), rel=1e-6)
        assert logged["train_accuracy"][0] == float((out.argmax(-1) == Y[:n]).double().mean())


def test_score_is_the_eval_mode_mean_over_every_batch_and_restores_the_mode():
    from lightning.pytorch.plugins.precision import DoublePrecision

    module = _module()
    module.model = SequenceModel.from_config(SequenceModelConfig(**{**MODEL.to_dict(), "dropout": 0.5})).double()
    trainer = _Trainer()
    trainer.precision_plugin = DoublePrecision()  # float32 batches become float64, as the model's parameters
    trainer.strategy.batch_to_device = lambda batch: batch
    module._trainer = trainer
    batches = [(X[:3], Y[:3]), (X[3:10], Y[3:10]), (X[10:11], Y[10:11])]
    with torch.no_grad():
        out = module.model.eval()(X[:11].double(), return_state=False)[0]
    want = {"loss": float(F.cross_entropy(out, Y[:11])), "accuracy": float((out.argmax(-1) == Y[:11]).double().mean())}
    with torch.no_grad():
        one = module.model.eval()(X[:1].double(), return_state=False)[0]
    got = module.score([(X[:1], Y[:1])])  # one sample: a count of 1
    assert float(got["loss"]) == pytest.approx(float(F.cross_entropy(one, Y[:1])), rel=1e-6)
    assert float(got["accuracy"]) == float(one.argmax(-1)[0] == Y[0])
    for mode in (True, False):
        module.train(mode)
        got = module.score(batches)
        assert got.keys() == {"loss", "accuracy"}
        assert float(got["loss"]) == pytest.approx(want["loss"], rel=1e-6)
        assert float(got["accuracy"]) == pytest.approx(want["accuracy"], abs=1e-7)
        assert module.training is mode and module.model.training is mode
        assert module._sums == {}
    with pytest.raises(ValueError, match="score needs at least one batch"):
        module.score([])

    class Doubling:  # a precision plugin whose input conversion is visible: the inputs doubled
        entered = 0

        def convert_input(self, batch):
            return batch[0].double() * 2, batch[1]

        @contextlib.contextmanager
        def val_step_context(self):
            Doubling.entered += 1
            yield

    trainer.precision_plugin = Doubling()
    got = module.score(batches)
    with torch.no_grad():
        out = module.model.eval()(2 * X[:11].double(), return_state=False)[0]
    assert float(got["loss"]) == pytest.approx(float(F.cross_entropy(out, Y[:11])), rel=1e-6)
    assert Doubling.entered == len(batches)  # each batch scored inside the plugin's context
    trainer.precision_plugin = DoublePrecision()
    # a batch that fails leaves no partial sums behind and the mode restored
    module.train()
    with pytest.raises(ValueError, match="classification needs logits"):
        module.score([batches[0], (X[:2], Y[:3])])
    assert module._sums == {} and module.training
    assert float(module.score(batches)["loss"]) == pytest.approx(want["loss"], rel=1e-6)


def test_checkpoint_hooks_save_and_restore_each_process_generator():
    from ssmkit.train.module import process_seed

    module = _module()
    torch.manual_seed(11)
    saved: dict = {}
    module.on_save_checkpoint(saved)  # no trainer: this process's state only
    assert saved.keys() == {"ssmkit_rng"} and torch.equal(saved["ssmkit_rng"], torch.get_rng_state())
    module._trainer = _Trainer(world=1)
    saved = {}
    module.on_save_checkpoint(saved)  # one process: no per-process rows
    assert saved.keys() == {"ssmkit_rng"}
    module._trainer = _Trainer(world=2)
    saved = {}
    module.on_save_checkpoint(saved)  # two processes, no process group: this process's row
    assert saved.keys() == {"ssmkit_rng", "ssmkit_rng_ranks"}
    assert saved["ssmkit_rng_ranks"].shape == (1, *saved["ssmkit_rng"].shape)
    assert torch.equal(saved["ssmkit_rng_ranks"][0], torch.get_rng_state())
    states = []
    for seed in (21, 22, 23):
        torch.manual_seed(seed)
        states.append(torch.get_rng_state())
    # a checkpoint of two processes read by process 1 of two: its own row
    module = _module()
    module._trainer = _Trainer(rank=1, world=2)
    module.on_load_checkpoint({"ssmkit_rng_ranks": torch.stack(states[:2]), "ssmkit_rng": states[2],
                               "ssmkit_rng_cuda_ranks": torch.stack(states[:2]), "global_step": 9})
    assert torch.equal(torch.get_rng_state(), states[1]) and module._rng_restored and module._rng_step == 0
    module.on_fit_start()  # restored: no reseeding
    assert torch.equal(torch.get_rng_state(), states[1])
    # of three processes, read by two: process 0's state, and process 1 derives its seed from the step
    module = _module(seed=4)
    module._trainer = _Trainer(rank=1, world=2)
    module.on_load_checkpoint({"ssmkit_rng_ranks": torch.stack(states), "ssmkit_rng": states[2], "global_step": 9})
    assert torch.equal(torch.get_rng_state(), states[2]) and not module._rng_restored and module._rng_step == 9
    module.on_fit_start()
    seed = int(np.random.SeedSequence([4, 1, 9]).generate_state(1, dtype=np.uint64)[0])
    assert torch.initial_seed() == seed == process_seed(4, 1, 9)
    # a fresh process 1 of 2 seeds from (seed, 1, step 0)
    module = _module(seed=4)
    module._trainer = _Trainer(rank=1, world=2)
    module.on_fit_start()
    assert torch.initial_seed() == int(np.random.SeedSequence([4, 1, 0]).generate_state(1, dtype=np.uint64)[0])
    # process 0, and a single process, keep their streams
    for rank, world in ((0, 2), (0, 1)):
        module = _module(seed=4)
        module._trainer = _Trainer(rank=rank, world=world)
        torch.manual_seed(31)
        module.on_fit_start()
        assert torch.initial_seed() == 31
    # no trainer: one process; a checkpoint without states leaves the generator alone
    module = _module()
    module.on_load_checkpoint({"ssmkit_rng_ranks": torch.stack(states[:1]), "ssmkit_rng": states[2]})
    assert torch.equal(torch.get_rng_state(), states[0]) and module._rng_restored
    module = _module()  # on the CPU a saved CUDA state is left alone
    module.on_load_checkpoint({"ssmkit_rng": states[1], "ssmkit_rng_cuda": states[0]})  # no step saved: 0
    assert torch.equal(torch.get_rng_state(), states[1]) and module._rng_step == 0 and not module._rng_restored
    module = _module()
    torch.manual_seed(41)
    before = torch.get_rng_state()
    module.on_load_checkpoint({"global_step": 2})
    assert torch.equal(torch.get_rng_state(), before)


def test_generator_states_are_gathered_through_the_process_group(monkeypatch):
    """_gathered goes through torch.distributed's all_gather when a process group is up: here a stand-in group of two
    processes (a real gloo group, even of one process, blocked a CI machine's worker past its time limit: its
    rendezvous needs the host's name to resolve), whose other process holds the state plus one."""
    import torch.distributed as dist

    calls = []

    def all_gather(rows, local):  # rank 0 is this process; rank 1 sends its own state
        calls.append((len(rows), local.device))
        rows[0].copy_(local)
        rows[1].copy_(local + 1)

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_gather", all_gather)
    module = _module()
    module._trainer = _Trainer(world=2)
    torch.manual_seed(51)
    state = torch.get_rng_state()
    gathered = module._gathered(state)
    assert calls == [(2, torch.device("cpu"))]
    assert gathered.shape == (2, state.numel()) and gathered.device.type == "cpu"
    assert torch.equal(gathered[0], state) and torch.equal(gathered[1], state + 1)
    saved: dict = {}
    module.on_save_checkpoint(saved)
    assert torch.equal(saved["ssmkit_rng_ranks"], torch.stack([state, state + 1]))
    assert torch.equal(saved["ssmkit_rng"], state)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)  # no group: this process's state alone
    assert torch.equal(module._gathered(state), state[None]) and len(calls) == 2


def test_the_data_module_serves_its_splits_by_step_and_process():
    from ssmkit.train.module import TensorDataModule

    data = TensorDataModule(SPLITS["train"], SPLITS["val"], None, batch_size=4, eval_batch_size=3, seed=2,
                            transform=halve)
    data.trainer = _Trainer(rank=1, world=2, step=5)
    got = iter(data.train_dataloader())
    want = StepBatches(SPLITS["train"], 4, seed=2, start_step=5, rank=1, world_size=2)
    for step in range(5, 8):
        x, y = next(got)
        idx = want.indices(step)
        assert torch.equal(x, SPLITS["train"][0][idx] * 0.5) and torch.equal(y, SPLITS["train"][1][idx])
    # process 1 of 2 takes samples 1, 3, 5 of the 7: one evaluation batch of 3
    val = list(data.val_dataloader())
    assert len(val) == 1 and torch.equal(val[0][0], SPLITS["val"][0][1::2] * 0.5)
    assert len(data.test_dataloader()) == 0
    data = TensorDataModule(SPLITS["train"], None, SPLITS["test"], 4, 5, 2)
    data.trainer = _Trainer()
    assert len(data.val_dataloader()) == 0
    test = list(data.test_dataloader())
    assert [int(b[1].shape[0]) for b in test] == [5, 2] and torch.equal(torch.cat([b[0] for b in test]), SPLITS["test"][0])


# the comparison plot, read back from its Figure


def _curves(out, runs):
    for name, versions in runs.items():
        for k, rows in enumerate(versions):
            folder = os.path.join(out, name, "logs", f"version_{k}")
            os.makedirs(folder)
            with open(os.path.join(folder, "metrics.csv"), "w") as f:
                f.write("step,train_loss,val_accuracy,val_mse\n" + "".join(rows))


@pytest.fixture
def figure(monkeypatch):
    from ssmkit.train import plots

    drawn = []
    original = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: (drawn.append(fig), original(fig, path)))
    return plots, drawn


def test_plot_draws_each_run_curve_and_the_test_bars(tmp_path, figure):
    plots, drawn = figure
    out = str(tmp_path)
    # two versions (a resumed run), read in order; empty cells skipped; steps shown 1-based
    _curves(out, {"b": [["0,1.0,,\n4,,0.25,\n", "9,,0.5,\n"], ["19,,0.75,\n"]], "a": [["1,,0.5,\n3,0.5,,\n"]]})
    results = [{"model": "b", "task": "sign", "test_accuracy": 0.6}, {"model": "a", "val_accuracy": 0.4}, {"model": "c"}]
    assert plots.plot_comparison(results, out) == os.path.join(out, "results.png")
    assert os.path.getsize(os.path.join(out, "results.png")) > 0
    (fig,) = drawn
    left, right = fig.axes
    assert tuple(fig.get_size_inches()) == (11, 4)
    lines = left.get_lines()
    assert [line.get_label() for line in lines] == ["b", "a"]
    assert [list(line.get_xdata()) for line in lines] == [[5, 10, 20], [2]]
    assert [list(line.get_ydata()) for line in lines] == [[0.25, 0.5, 0.75], [0.5]]
    assert all(line.get_marker() == "o" for line in lines)
    assert (left.get_xlabel(), left.get_ylabel()) == ("optimizer step", "validation accuracy")
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["b", "a"] and not left.texts
    bars = right.patches  # the test metric, else the validation's, else nan ("c" has no folder: no curve)
    assert [b.get_height() for b in bars][:2] == [0.6, 0.4] and math.isnan(bars[2].get_height())
    assert [t.get_text() for t in right.get_xticklabels()] == ["b", "a", "c"]
    assert [b.get_x() + b.get_width() / 2 for b in bars] == pytest.approx([0, 1, 2])
    assert (right.get_ylabel(), right.get_title()) == ("test accuracy", "sign")
    # tight_layout moved the panels off matplotlib's default subplot margins
    import matplotlib
    import matplotlib.pyplot as plt

    assert left.get_position().x0 != pytest.approx(matplotlib.rcParams["figure.subplot.left"])
    assert right.get_position().x1 != pytest.approx(matplotlib.rcParams["figure.subplot.right"])

    assert not plt.fignum_exists(fig.number)  # closed


def test_a_curve_reads_the_log_versions_in_numeric_order(tmp_path):
    # a run resumed ten times logs to version_0 ... version_10: sorted as strings, version_10 came before version_2
    # and the curve's line went back from step 101 to step 21
    from ssmkit.train.plots import _curve

    _curves(str(tmp_path), {"s4d": [[f"{10 * k},,{k / 100},\n"] for k in range(12)]})
    assert _curve(str(tmp_path / "s4d"), "val_accuracy") == ([10 * k + 1 for k in range(12)], [k / 100 for k in range(12)])


def test_plot_of_regression_runs_without_curves(tmp_path, figure):
    plots, drawn = figure
    out = str(tmp_path)
    _curves(out, {"s4d": [["0,1.0,,\n"]]})
    plots.plot_comparison([{"model": "s4d", "test_mse": 0.125}, {"model": "lru"}], out)
    (fig,) = drawn
    left, right = fig.axes
    assert not left.get_lines() and left.get_legend() is None
    (note,) = left.texts
    assert note.get_text() == "no validation during training\n(val_every > the steps run)"
    assert note.get_position() == (0.5, 0.5) and note.get_transform() is left.transAxes
    assert (note.get_horizontalalignment(), note.get_verticalalignment()) == ("center", "center")
    assert left.get_ylabel() == "validation mse" and right.get_ylabel() == "test mse"
    heights = [b.get_height() for b in right.patches]
    assert heights[0] == 0.125 and math.isnan(heights[1])  # neither test nor validation metric: nan
    assert right.get_title() == ""
    drawn.clear()
    plots.plot_comparison([], out)  # no results: no title, no error
    assert drawn[0].axes[1].get_title() == "" and not drawn[0].axes[1].patches


def test_plots_select_the_agg_backend_on_import():
    import matplotlib

    from ssmkit.train import plots

    matplotlib.use("pdf")
    try:
        importlib.reload(plots)
        assert matplotlib.get_backend().lower() == "agg"
    finally:
        matplotlib.use("Agg")
