"""Probe: training an SSM as a researcher does (``ssmkit train`` / ``compare``, the shipped configs, ``fit``), each
number against a reference computed here without ssmkit's training code.

Probed (tiny S4D models, generated data, a few steps):

- the learning rate of every optimizer group at every step against the closed-form linear warm-up + cosine to a
  floor (arXiv 2111.00396 App. D; S4's ``cosine_warmup``), and which parameters land in which AdamW group: S4D's
  Δ, A (real and imaginary) and B at lr 1e-3 and no weight decay (S4's ``_optim`` marks), C, D and the projections at
  the global lr and weight decay, biases and norms without weight decay;
- whole training steps (AdamW, gradient clipping at a norm, micro-batches of unequal size on masked, padded token
  targets) against a float64 loop written here: plain AdamW updates, the total-norm clip and the batch mean loss;
- the losses and accuracies ``metrics.csv`` and ``result.json`` hold (training loss at step 0, every validation, the
  test at the final and the best-validation weights) against a recomputation from the seeded initialisation and the
  saved checkpoints; the best validation is the first maximum of the logged ``val_accuracy``;
- bf16 autocast on the CPU: the logged validation equals the checkpoint's under ``torch.autocast("cpu", bfloat16)``,
  and a killed run resumes bit for bit (gradient clipping on, dropout on);
- the mistakes a user makes: misspelt or mistyped options, a warm-up as long as the run, another precision on resume.

Found and fixed:

1. A shipped config overridden as its header suggests (``ssmkit train --config sequential/smnist-s4 --train.max_steps
   1000``: ``val_every`` 1,080, ``test_weights: best_val``), or any run whose ``val_every`` exceeds ``max_steps``
   with ``test_weights`` ``best_val``, trained the whole run and then failed with ``RuntimeError: test_weights
   'best_val', but no validation ran`` and a traceback; ``ssmkit compare --config lra/listops-s4 --budget 500``
   failed so after its first model had trained, comparing none. Now ``run_experiment`` refuses it before loading the
   task (a ValueError naming ``val_every``, ``max_steps`` and what to set), and ``compare``'s step budget sets a
   validation period longer than the budget to 0 (one validation, at the end), as it already shortened the warm-up.
2. ``precision="16-mixed"`` on the CPU trained in bfloat16 (Lightning replaced it with a warning only) while
   ``train.json`` and every checkpoint said ``16-mixed``. Now ``fit`` refuses it before training, naming bf16-mixed.
3. ``compare``'s plot of a resumed run went back in steps: the resumed session repeats the steps after the last
   checkpoint and logs them again in ``version_1`` (here killed at step 7, checkpoint 4: validation curve steps
   [3, 6, 6, 9]), so the curve drew those points twice, joined by a line back. Now the later version's value of a
   step is kept and the curve's steps increase.
"""

from __future__ import annotations

import csv
import glob
import math
import os

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from ssmkit.cli import main as cli_main
from ssmkit.models import SequenceModel, SequenceModelConfig
from ssmkit.train import TrainConfig, fit
from ssmkit.train.batches import StepBatches
from ssmkit.train.checkpoint import load_checkpoint
from ssmkit.train.commands import budget_config, resolve_config
from ssmkit.train.experiment import Experiment, run_experiment
from ssmkit.train.plots import _curve

S4D_SSM = {"log_dt", "log_A_real", "A_imag", "B"}  # S4's Kernel.register(..., lr=0.001, wd=0.0) tensors


def _model(**changes) -> SequenceModelConfig:
    base = dict(d_input=2, d_model=6, n_layers=2, layer="s4d", d_output=2, head="classify", pool="mean",
                layer_options={"d_state": 4})
    return SequenceModelConfig(**{**base, **changes})


def _data(n: int, L: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, L, 2, generator=g, dtype=dtype)
    return x, (x[:, :, 0].sum(1) > 0).long()


def _weights(path: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in load_checkpoint(path)["state_dict"].items()}


def _rows(out: str) -> list[dict[str, str]]:
    with open(sorted(glob.glob(os.path.join(out, "logs", "version_*", "metrics.csv")))[-1]) as f:
        return list(csv.DictReader(f))


def _schedule(step: int, warmup: int, total: int, floor: float) -> float:
    """The closed form: (s + 1)/w during the warm-up, then r + (1 - r)·½(1 + cos(π (s - w)/(T - w)))."""
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _expected_group(name: str) -> tuple[float, float]:
    """(lr factor over the global lr or the SSM lr 1e-3, weight decay) the papers give a parameter, by its name."""
    leaf = name.rsplit(".", 1)[-1]
    if ".layer." in name and leaf in S4D_SSM:
        return 1e-3, 0.0
    if leaf == "bias" or "norm" in name:
        return None, 0.0  # the global lr, no weight decay
    return None, "global"


class _Rates(pl.Callback):
    """Each group's lr at every optimizer step (read just before the update), and each group's peak rate (the
    scheduler's ``initial_lr``), weight decay and members by name."""

    def __init__(self) -> None:
        self.rates: list[list[float]] = []
        self.groups: list[tuple[float, float, set[str]]] = []

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.rates.append([g["lr"] for g in optimizer.param_groups])
        if not self.groups:
            names = {id(p): n for n, p in module.model.named_parameters()}
            self.groups = [(g["initial_lr"], g["weight_decay"], {names[id(p)] for p in g["params"]})
                           for g in optimizer.param_groups]
            assert isinstance(optimizer, torch.optim.AdamW)


def test_every_steps_rate_and_group_follow_the_papers_recipe(tmp_path):
    lr, wd, warmup, total, floor = 0.01, 0.1, 3, 11, 0.1
    rates = _Rates()
    fit(_model(), TrainConfig(batch_size=8, lr=lr, weight_decay=wd, max_steps=total, warmup_steps=warmup,
                              lr_floor=floor, val_every=0, checkpoint_every=0),
        _data(32, 8, 0), None, None, tmp_path, progress=False, extra_callbacks=[rates])
    assert len(rates.rates) == total
    every = set().union(*(names for _, _, names in rates.groups))
    assert every == {n for n, _ in SequenceModel.from_config(_model()).named_parameters()}
    for i, (peak, decay, names) in enumerate(rates.groups):
        for name in names:
            want_lr, want_wd = _expected_group(name)
            assert peak == pytest.approx(want_lr or lr, rel=1e-15), name
            assert decay == (wd if want_wd == "global" else want_wd), name
        for step, row in enumerate(rates.rates):
            assert row[i] == pytest.approx(peak * _schedule(step, warmup, total, floor), rel=1e-12, abs=0), step
    # the values a researcher reads off the curve: 1/3 of the peak first, the peak at the warm-up's end, r at T
    assert rates.rates[0][0] == pytest.approx(lr / 3) and rates.rates[2][0] == pytest.approx(lr)
    assert rates.rates[-1][0] == pytest.approx(lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 7 / 8))))


def _adamw_loop(config: SequenceModelConfig, cfg: TrainConfig, x, y, lengths=None) -> dict[str, torch.Tensor]:
    """The run's steps written out in float64: the batch mean loss over the scored items, clip_grad_norm by hand,
    AdamW (β = (0.9, 0.999), ε = 1e-8, decoupled decay lr·wd·θ) with the groups of :func:`_expected_group`."""
    torch.manual_seed(cfg.seed)
    model = SequenceModel.from_config(config).double()
    params = dict(model.named_parameters())
    state = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in params.items()}
    order = StepBatches((x, y), cfg.batch_size, seed=cfg.seed)  # the data order only
    for step in range(cfg.max_steps):
        idx = order.indices(step)
        out = model(x[idx], return_state=False, lengths=None if lengths is None else lengths[idx])[0]
        target = y[idx]
        if config.head == "lm":
            target = target.clone()
            steps = torch.arange(target.shape[1])[None, :]
            target[steps >= lengths[idx][:, None]] = -100
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1), ignore_index=-100)
        else:
            loss = F.cross_entropy(out, target)
        model.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in params.items()}
        if cfg.grad_clip is not None:
            norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
            scale = min(1.0, cfg.grad_clip / (float(norm) + 1e-6))
            grads = {n: g * scale for n, g in grads.items()}
        factor = _schedule(step, cfg.warmup_steps, cfg.max_steps, cfg.lr_floor)
        with torch.no_grad():
            for n, p in params.items():
                want_lr, want_wd = _expected_group(n)
                rate = (want_lr or cfg.lr) * factor
                decay = cfg.weight_decay if want_wd == "global" else want_wd
                m, v = state[n]
                m.mul_(0.9).add_(grads[n], alpha=0.1)
                v.mul_(0.999).addcmul_(grads[n], grads[n], value=0.001)
                p.mul_(1 - rate * decay)
                m_hat, v_hat = m / (1 - 0.9 ** (step + 1)), v / (1 - 0.999 ** (step + 1))
                p.sub_(rate * m_hat / (v_hat.sqrt() + 1e-8))
    return model.state_dict()


@pytest.mark.parametrize("micro_batches", [1, 3])
def test_training_steps_equal_a_float64_adamw_loop_with_clipping(tmp_path, micro_batches):
    x, y = _data(24, 10, 1, torch.float64)
    cfg = TrainConfig(batch_size=6, lr=0.02, weight_decay=0.1, max_steps=4, warmup_steps=1, grad_clip=0.05,
                      precision="64", val_every=0, checkpoint_every=0, micro_batches=micro_batches, seed=3)
    fit(_model(), cfg, (x, y), None, None, tmp_path, progress=False)
    got, want = _weights(str(tmp_path / "checkpoints" / "last.ckpt")), _adamw_loop(_model(), cfg, x, y)
    assert got.keys() == want.keys()
    for k in want:  # the clip is active: 0.05 is far below the gradient norms of these steps
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-13, msg=k)


def test_uneven_micro_batches_of_masked_padded_tokens_give_the_whole_batch_step(tmp_path):
    g = torch.Generator().manual_seed(2)
    n, L, vocab = 21, 9, 5
    x = torch.randint(0, vocab, (n, L), generator=g)
    y = torch.randint(0, vocab, (n, L), generator=g)
    y[torch.rand(n, L, generator=g) < 0.6] = -100  # parts of 7 / 3 = (3, 2, 2) samples score unequal counts
    lengths = torch.randint(3, L + 1, (n,), generator=g)
    config = _model(d_input=1, vocab_size=vocab, d_output=vocab, head="lm", pool=None, n_layers=1)
    cfg = TrainConfig(batch_size=7, lr=0.02, weight_decay=0.05, max_steps=3, warmup_steps=0, precision="64",
                      val_every=0, checkpoint_every=0, micro_batches=3, seed=1, log_every=1)
    fit(config, cfg, (x, y, lengths), None, None, tmp_path, progress=False)
    got, want = _weights(str(tmp_path / "checkpoints" / "last.ckpt")), _adamw_loop(config, cfg, x, y, lengths)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-13, msg=k)


def _scores(config: SequenceModelConfig, weights: dict[str, torch.Tensor], x, y, bf16: bool = False) -> tuple:
    model = SequenceModel.from_config(config)
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x, return_state=False)[0].float()
    return F.cross_entropy(out, y).item(), (out.argmax(-1) == y).double().mean().item()


def test_logged_losses_and_the_best_validation_are_those_of_the_saved_weights(tmp_path):
    (x, y), (xv, yv), (xt, yt) = _data(40, 12, 3), _data(21, 12, 4), _data(15, 12, 5)
    cfg = TrainConfig(batch_size=8, lr=0.03, max_steps=12, warmup_steps=2, val_every=3, checkpoint_every=4,
                      log_every=1, eval_batch_size=5, test_weights="best_val", seed=7)
    result = fit(_model(), cfg, (x, y), (xv, yv), (xt, yt), tmp_path, progress=False)
    rows = _rows(str(tmp_path))
    # the training loss of step 0: the seed's initial weights on the batch of step 0
    torch.manual_seed(7)
    init = SequenceModel.from_config(_model()).state_dict()
    idx = StepBatches((x, y), 8, seed=7).indices(0)
    train0 = [r for r in rows if r["train_loss"] and r["step"] == "0"]
    assert len(train0) == 1 and float(train0[0]["train_loss"]) == pytest.approx(_scores(_model(), init, x[idx],
                                                                                         y[idx])[0], rel=1e-6)
    vals = [(int(r["step"]) + 1, float(r["val_loss"]), float(r["val_accuracy"])) for r in rows if r["val_loss"]]
    assert [s for s, _, _ in vals] == [3, 6, 9, 12]
    best_step = max(vals, key=lambda v: (v[2], -v[0]))[0]  # the first of the highest accuracies
    final, best = _weights(str(tmp_path / "checkpoints" / "last.ckpt")), _weights(
        str(tmp_path / "checkpoints" / "best_val.ckpt"))
    assert result["best_val_step"] == best_step == load_checkpoint(tmp_path / "checkpoints" / "best_val.ckpt")[
        "global_step"]
    want_final, want_best = _scores(_model(), final, xv, yv), _scores(_model(), best, xv, yv)
    assert vals[-1][1:] == pytest.approx(want_final, rel=1e-6)
    assert dict((s, (l, a)) for s, l, a in vals)[best_step] == pytest.approx(want_best, rel=1e-6)
    assert (result["best_val_loss"], result["best_val_accuracy"]) == pytest.approx(want_best, rel=1e-6)
    assert result["best_val_epoch"] == pytest.approx(best_step * 8 / 40)
    for suffix, weights in (("_final", final), ("_best_val", best)):
        loss, accuracy = _scores(_model(), weights, xt, yt)
        assert result[f"test_loss{suffix}"] == pytest.approx(loss, rel=1e-6)
        assert result[f"test_accuracy{suffix}"] == pytest.approx(accuracy, abs=1e-7)
        logged = [r for r in rows if r[f"test_loss{suffix}"]]
        assert len(logged) == 1 and float(logged[0][f"test_loss{suffix}"]) == pytest.approx(loss, rel=1e-6)
    assert result["test_loss"] == result["test_loss_best_val"]


class _Killed(Exception):
    pass


class _KillAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise _Killed


def test_bf16_autocast_logs_its_own_weights_and_resumes_bit_for_bit(tmp_path):
    (x, y), (xv, yv) = _data(40, 12, 6), _data(20, 12, 7)
    config = _model(dropout=0.1)
    cfg = TrainConfig(batch_size=8, lr=0.01, max_steps=10, warmup_steps=2, val_every=5, checkpoint_every=4,
                      precision="bf16-mixed", grad_clip=0.5)
    whole = fit(config, cfg, (x, y), (xv, yv), None, tmp_path / "whole", progress=False)
    final = _weights(str(tmp_path / "whole" / "checkpoints" / "last.ckpt"))
    assert all(v.dtype == torch.float32 for v in final.values())  # autocast: float32 weights
    # the logged validation is the autocast forward of the saved weights (bf16 matmuls: 1e-3 off float32's)
    assert (whole["val_loss"], whole["val_accuracy"]) == pytest.approx(_scores(config, final, xv, yv, bf16=True),
                                                                       rel=1e-6)
    assert abs(whole["val_loss"] - _scores(config, final, xv, yv)[0]) > 1e-6  # bf16 did run
    with pytest.raises(_Killed):
        fit(config, cfg, (x, y), (xv, yv), None, tmp_path / "cut", progress=False, extra_callbacks=[_KillAt(6)])
    with pytest.raises(ValueError, match=r"train precision: saved 'bf16-mixed', given '32'"):
        fit(config, TrainConfig(**{**cfg.to_dict(), "precision": "32"}), (x, y), (xv, yv), None, tmp_path / "cut",
            progress=False, resume=True)
    cut = fit(config, cfg, (x, y), (xv, yv), None, tmp_path / "cut", progress=False, resume=True)
    resumed = _weights(str(tmp_path / "cut" / "checkpoints" / "last.ckpt"))
    # the comparison plot's curve: each validation once, steps increasing, the values of the logs
    logged = {(r["step"], r["val_loss"]) for r in _rows(str(tmp_path / "whole")) if r["val_loss"]}
    assert _curve(str(tmp_path / "cut"), "val_loss") == ([5, 10], [float(v) for _, v in sorted(logged, key=lambda r:
                                                                                               int(r[0]))])
    assert all(torch.equal(resumed[k], final[k]) for k in final)
    assert (cut["val_loss"], cut["best_val_step"]) == (whole["val_loss"], whole["best_val_step"])


def test_16_mixed_on_the_cpu_is_refused_not_trained_in_bf16(tmp_path):
    with pytest.raises(ValueError, match=r"precision '16-mixed' is not available on the CPU \(Lightning would train "
                                         r"in 'bf16-mixed' instead\); choose 'bf16-mixed'"):
        fit(_model(), TrainConfig(batch_size=4, max_steps=2, warmup_steps=0, precision="16-mixed"), _data(8, 6, 0),
            None, None, tmp_path, progress=False)
    assert not os.path.exists(tmp_path / "checkpoints" / "last.ckpt")


def test_a_shipped_config_shortened_below_its_validation_period_is_refused_before_training(tmp_path):
    import yaml

    with open(resolve_config("sequential/smnist-s4")) as f:
        shipped = yaml.safe_load(f)
    shipped["train"]["max_steps"] = 1000  # the override the config's header suggests; its val_every is 1080
    experiment = Experiment(**shipped)
    with pytest.raises(ValueError, match=r"val_every 1080 > max_steps 1000: the run would never validate, but "
                                         r"test_weights 'best_val' needs a validation; set val_every to at most 1000"):
        run_experiment(experiment, str(tmp_path / "run"), progress=False)
    assert not os.path.exists(tmp_path / "run")  # refused before the task (MNIST files) was read
    early = TrainConfig(max_steps=20, warmup_steps=0, val_every=30, early_stopping=2)
    with pytest.raises(ValueError, match=r"but early_stopping 2 needs a validation"):
        run_experiment(Experiment(task="adding", train=early), str(tmp_path / "early"), progress=False)
    # compare's step budget: a longer period becomes 0 (one validation at the end), a shorter one stays
    budget = budget_config(experiment.train, 500, None)
    assert (budget.max_steps, budget.warmup_steps, budget.val_every) == (500, 0, 0)
    assert budget_config(TrainConfig(val_every=50), 500, None).val_every == 50
    assert budget_config(TrainConfig(val_every=500), 500, None).val_every == 500


def test_compare_with_a_shipped_config_and_a_short_budget_validates_at_the_end(tmp_path, capsys):
    options = "{length: 12, n_train: 32, n_val: 16, n_test: 16}"
    argv = ["compare", "--config", "lra/listops-s4", "--task", "adding", "--task_options", options, "--layer_options",
            "{}", "--models", "s4d", "--d_model", "4", "--n_layers", "1", "--norm", "layer", "--budget", "4",
            "--train.batch_size", "16", "--out", str(tmp_path), "--no-progress"]
    assert cli_main(argv) == 0
    capsys.readouterr()
    result = __import__("json").loads((tmp_path / "s4d" / "result.json").read_text())
    assert result["test_weights"] == "best_val" and result["best_val_step"] == result["val_step"] == 4
    validations = [r for r in _rows(str(tmp_path / "s4d")) if r["val_loss"]]
    assert len(validations) == 1 and float(validations[0]["val_loss"]) == pytest.approx(result["val_loss"], rel=1e-12)


@pytest.mark.parametrize("argv, message", [
    (["--train.max_step", "5"], "unrecognized arguments: --train.max_step"),
    (["--train.max_steps", "five"], 'Parser key "train.max_steps"'),
    (["--train.max_steps", "1e3"], 'Parser key "train.max_steps"'),
    (["--train.max_steps", "10", "--train.warmup_steps", "50"], "warmup_steps must be < max_steps = 10; got 50"),
    (["--train.precision", "bf16"], "precision must be one of ('32', '64', 'bf16-mixed', '16-mixed'); got 'bf16'"),
    (["--layer_options.d_stat", "4"], "layer 's4d' has no option(s) ['d_stat']"),
])
def test_a_users_mistakes_on_the_command_line_name_the_option(tmp_path, capsys, monkeypatch, argv, message):
    from ssmkit.cli import console

    monkeypatch.delenv("SSMKIT_TRACEBACK", raising=False)
    monkeypatch.setattr("sys.argv", ["ssmkit", "train", "--task", "adding", "--out", str(tmp_path / "run"),
                                     "--no-progress", *argv])
    assert console() == 2  # the process's exit status, one line on stderr
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
