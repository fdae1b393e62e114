"""Probe: the numbers a paper takes from ``ssmkit train`` / ``ssmkit compare`` / ``fit``, end to end, against
references recomputed here from the saved weights with plain loops over whole splits (no ssmkit metric code).

Findings (fixed in src/ssmkit/train/run.py and src/ssmkit/train/best.py):

1. A resumed run reported the training time of its last session only. ``result.json``'s ``train_seconds``,
   ``samples_per_second`` and ``tokens_per_second`` came from a callback whose totals were not in the checkpoints,
   while ``steps`` is the run's total: an 8-step run stopped at step 7 and resumed reported 0.25 s for its 8 steps
   (uninterrupted: 2.0 s, a scripted clock of 0.25 s per step), 8x too fast; a finished run resumed again (e.g.
   ``ssmkit compare --resume`` after one model had finished) rewrote 0.0 s and null rates, so the comparison table
   showed "0.0" s and "—" tokens/s. Now the totals are part of every checkpoint (the callback's state).
2. A resumed run that ran no validation in its last session dropped ``val_loss`` and ``val_accuracy`` from its
   ``result.json`` (they came from Lightning's ``callback_metrics`` of that session only), although the docstring
   promises "the last validation's metrics" and an uninterrupted run records them (here val at step 6 of 8:
   0.5837 / 63.64 % in the uninterrupted record, absent in the resumed one). Now ``BestValidation`` keeps the latest
   validation's metrics in every checkpoint (``ssmkit_last_validation``) and ``fit`` reports them.

Checked and right (kept as tests below):

- ``ssmkit compare`` on the bundled 8x8 digits (two models, ``test_weights best_val``, evaluation batches of 7 over
  270 samples: a last batch of 4): each run's test loss and accuracy at the best-validation and final weights, and
  the final validation, recomputed in float64 from ``best_val.ckpt`` / ``last.ckpt`` over the whole split; the best
  validation is the first maximum of the logged ``val_accuracy``; ``best_val_epoch`` = step x batch / n; results.json
  = each run's result.json, results.csv = results.json (every number), the markdown table's cells = the recomputed
  accuracy and the records.
- ``ssmkit train`` of the copying task (targets -100 outside the answer) on two gloo processes (``--train.devices 2
  --train.strategy ddp``, evaluation batches of 2, so the ranks hold 5 and 4 validation samples in unequal batches):
  the masked token accuracy and loss recomputed token by token from both checkpoints, and the trained weights equal
  a one-process run with the doubled batch.
- padded ListOps (``pad_id`` 0, ``pool`` mean and last) through ``ssmkit train``: each sample's pooled logits equal
  those of its unpadded tokens alone through the same weights, and the recorded test metrics match.
- a stopped-and-resumed run's record equals the uninterrupted run's in every key but ``resumed_from`` (after the
  fixes), and the comparison table rows agree.

Noticed, left alone: ``logs/version_k/metrics.csv`` held the test rows of the final weights, of the best
validation's weights and of every extra test split under the same ``test_loss`` / ``test_accuracy`` columns (labelled
with result.json's names since the config probe of 2026-12-05); under DDP the logged ``train_loss`` was process 0's own batch, not the
global batch's (the global batch's since the leftovers probe of 2026-12-05). No gradient accumulation, data-loader workers, EMA weights or seed averaging exist in ssmkit's
training (compare runs one seed per model), so none was checked.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("lightning")

from ssmkit.cli import main as cli_main  # noqa: E402
from ssmkit.data import get_task  # noqa: E402
from ssmkit.models import SequenceModel, SequenceModelConfig  # noqa: E402
from ssmkit.train import TrainConfig, fit  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def network(run_dir, checkpoint: str, **changes) -> tuple[torch.nn.Module, int]:
    """The model of ``run_dir/model.json`` (with ``changes``) holding a checkpoint's weights, in eval mode, and the
    checkpoint's step."""
    config = json.loads((run_dir / "model.json").read_text())
    saved = load_checkpoint(run_dir / "checkpoints" / checkpoint)
    net = SequenceModel.from_config(SequenceModelConfig.from_dict({**config, **changes}))
    net.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items()})
    return net.eval(), int(saved["global_step"])


def classification(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy (float64, log-sum-exp minus the label's logit) and accuracy (an integer count / n)."""
    z = logits.double()
    loss = (torch.logsumexp(z, -1) - z[torch.arange(len(y)), y]).sum().item() / len(y)
    correct = sum(int(z[i].argmax()) == int(y[i]) for i in range(len(y)))
    return loss, correct / len(y)


def csv_rows(path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_compare_records_table_and_csv_are_the_tests_of_the_saved_weights(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--task", "digits", "--models", "s4d,lru", "--budget", "10", "--d_model", "8", "--n_layers", "1",
            "--train.batch_size", "32", "--train.lr", "0.03", "--train.warmup_steps", "1", "--train.val_every", "2",
            "--train.checkpoint_every", "3", "--train.eval_batch_size", "7", "--train.test_weights", "best_val",
            "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    splits = {k: v.tensors for k, v in get_task("digits").splits().items()}
    n_train = len(splits["train"][0])
    assert len(splits["test"][0]) % 7 == 4  # the last evaluation batch is smaller
    records = json.loads((out / "results.json").read_text())
    table = (out / "results.md").read_text()
    assert table.strip() in printed
    rows = csv_rows(out / "results.csv")
    assert [r["model"] for r in records] == [r["model"] for r in rows] == ["s4d", "lru"]
    for record, row in zip(records, rows):
        run_dir = out / record["model"]
        assert json.loads((run_dir / "result.json").read_text()) == record
        for key, value in record.items():  # every number of the CSV is the record's
            if isinstance(value, float):
                assert float(row[key]) == value, key
            elif isinstance(value, int):
                assert int(row[key]) == value, key
        with torch.no_grad():
            best, best_step = network(run_dir, "best_val.ckpt")
            final, final_step = network(run_dir, "last.ckpt")
            at = {(name, split): classification(net(splits[split][0])[0], splits[split][1])
                  for name, net in (("best", best), ("final", final)) for split in ("val", "test")}
        assert final_step == record["steps"] == 10 and best_step == record["best_val_step"]
        # the best validation: the first highest val_accuracy logged (rows at step s - 1), every 2 steps
        logged = [(int(r["step"]) + 1, float(r["val_accuracy"]))
                  for r in csv_rows(run_dir / "logs" / "version_0" / "metrics.csv") if r.get("val_accuracy")]
        assert [s for s, _ in logged] == [2, 4, 6, 8, 10]
        first_best = max(logged, key=lambda sv: (sv[1], -sv[0]))
        assert record["best_val_step"] == first_best[0]
        assert record["best_val_epoch"] == pytest.approx(first_best[0] * 32 / n_train, rel=1e-12)
        assert record["best_val_loss"] == pytest.approx(at["best", "val"][0], rel=1e-5)
        assert record["best_val_accuracy"] == pytest.approx(at["best", "val"][1], abs=1e-7) == first_best[1]
        assert record["val_loss"] == pytest.approx(at["final", "val"][0], rel=1e-5)  # the last validation = step 10
        assert record["val_accuracy"] == pytest.approx(at["final", "val"][1], abs=1e-7)
        for name, suffix in (("best", "_best_val"), ("final", "_final")):
            assert record[f"test_loss{suffix}"] == pytest.approx(at[name, "test"][0], rel=1e-5), suffix
            assert record[f"test_accuracy{suffix}"] == pytest.approx(at[name, "test"][1], abs=1e-7), suffix
        assert (record["test_loss"], record["test_accuracy"]) == (record["test_loss_best_val"],
                                                                 record["test_accuracy_best_val"])
        # the table's row: the best validation's test accuracy, as a percentage of the recomputed count
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {record['model']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == [record["model"], f"{100 * at['best', 'test'][1]:.2f} %", f"{record['parameters']:,}", "10"]
        assert cells[4] == f"{record['train_seconds']:.1f}" and cells[5] == f"{record['tokens_per_second']:,.0f}"


COPYING = {"n_train": 32, "n_val": 9, "n_test": 11, "delay": 3, "n_tokens": 3}


def copying_argv(out, batch_size: int, devices: int) -> list[str]:
    options = "{" + ", ".join(f"{k}: {v}" for k, v in COPYING.items()) + "}"
    return ["train", "--task", "copying", "--task_options", options, "--d_model", "8", "--n_layers", "1",
            "--train.batch_size", str(batch_size), "--train.max_steps", "6", "--train.warmup_steps", "1",
            "--train.val_every", "2", "--train.checkpoint_every", "4", "--train.eval_batch_size", "2",
            "--train.lr", "0.05", "--train.test_weights", "best_val", "--train.devices", str(devices),
            "--train.strategy", "ddp" if devices > 1 else "auto", "--out", str(out), "--no-progress"]


@pytest.mark.slow
def test_masked_token_metrics_of_a_two_process_run_are_those_of_its_weights(tmp_path, capsys):
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    ddp = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "ssmkit", *copying_argv(ddp, 4, 2)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((ddp / "result.json").read_text())
    splits = {k: v.tensors for k, v in get_task("copying", **COPYING).splits().items()}
    assert (splits["val"][1] == -100).any() and len(splits["val"][0]) == 9  # ranks: 5 and 4 samples, batches of 2

    def scored(net, split) -> tuple[float, float]:
        """Cross-entropy and accuracy over the answer tokens (targets != -100), token by token."""
        x, y = splits[split]
        loss, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for i in range(len(x)):
                logits = net(x[i:i + 1])[0][0].double()  # (L, vocab)
                for t in range(y.shape[1]):
                    if int(y[i, t]) != -100:
                        loss += float(torch.logsumexp(logits[t], 0) - logits[t, y[i, t]])
                        correct += int(logits[t].argmax()) == int(y[i, t])
                        count += 1
        assert count == len(x) * COPYING["n_tokens"]
        return loss / count, correct / count

    best, best_step = network(ddp, "best_val.ckpt")
    final, _ = network(ddp, "last.ckpt")
    assert best_step == record["best_val_step"]
    assert record["best_val_epoch"] == best_step * 4 * 2 / COPYING["n_train"]
    for key, (net, split) in {"best_val": (best, "val"), "val": (final, "val"), "test_best_val": (best, "test"),
                              "test_final": (final, "test")}.items():
        loss, accuracy = scored(net, split)
        name = key.split("_", 1)
        loss_key = "_".join([name[0], "loss", *name[1:]]) if key != "best_val" else "best_val_loss"
        accuracy_key = "_".join([name[0], "accuracy", *name[1:]]) if key != "best_val" else "best_val_accuracy"
        assert record[loss_key] == pytest.approx(loss, rel=1e-5), key
        assert record[accuracy_key] == pytest.approx(accuracy, abs=1e-7), key
    # two processes of 4 = one process of 8 (each sample has the same number of answer tokens), up to round-off that
    # Adam's division by small second moments enlarges (observed 1.3e-5 on one weight of 0.5)
    one = tmp_path / "one"
    assert cli_main(copying_argv(one, 8, 1)) == 0
    capsys.readouterr()
    a = load_checkpoint(ddp / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint(one / "checkpoints" / "last.ckpt")["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=k)
    single = json.loads((one / "result.json").read_text())
    for key in ("val_loss", "val_accuracy", "best_val_step", "test_loss", "test_accuracy", "test_loss_final"):
        assert single[key] == pytest.approx(record[key], rel=1e-5), key


LISTOPS = {"n_train": 24, "n_val": 7, "n_test": 9, "l_max": 48, "min_length": 5, "max_length": 40}


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_padded_classification_pools_each_sample_as_its_unpadded_tokens(tmp_path, capsys, pool):
    out = tmp_path / pool
    options = "{" + ", ".join(f"{k}: {v}" for k, v in LISTOPS.items()) + "}"
    assert cli_main(["train", "--task", "listops", "--task_options", options, "--d_model", "6", "--n_layers", "1",
                     "--pool", pool, "--train.batch_size", "4", "--train.max_steps", "5", "--train.warmup_steps", "1",
                     "--train.val_every", "5", "--train.eval_batch_size", "4", "--train.lr", "0.05", "--out", str(out),
                     "--no-progress"]) == 0
    capsys.readouterr()
    record = json.loads((out / "result.json").read_text())
    x, y = get_task("listops", **LISTOPS).splits()["test"].tensors
    padded, _ = network(out, "last.ckpt")
    plain, _ = network(out, "last.ckpt", pad_id=None)
    assert padded.pad_id == 0
    with torch.no_grad():
        whole = padded(x)[0]
        alone = []
        for i in range(len(x)):
            n = int((x[i] != 0).sum())
            assert n < x.shape[1] and bool((x[i, :n] != 0).all())  # trailing padding only
            alone.append(plain(x[i:i + 1, :n])[0][0])
    alone = torch.stack(alone)
    torch.testing.assert_close(whole, alone, rtol=1e-5, atol=1e-6)
    loss, accuracy = classification(alone, y)
    assert record["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert record["test_accuracy"] == pytest.approx(accuracy, abs=1e-7)


def test_a_resumed_run_records_the_whole_runs_time_and_last_validation(tmp_path, monkeypatch):
    import lightning.pytorch as pl

    from ssmkit.train import run as run_module
    from ssmkit.train.commands import results_table

    class Clock:  # the throughput's clock: a quarter second per reading, so each step takes 0.25 s
        now = 0.0

        def perf_counter(self):
            self.now += 0.25
            return self.now

    class Stop(Exception):
        pass

    class StopAt(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 7:
                raise Stop

    monkeypatch.setattr(run_module, "time", Clock())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, 1, generator=g)
    y = (x.sum(dim=(1, 2)) > 0).long()
    model = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 2})
    # validations at steps 3 and 6, a checkpoint at 7: the resumed session trains step 8 and validates nothing
    cfg = TrainConfig(batch_size=4, max_steps=8, warmup_steps=1, val_every=3, checkpoint_every=7, eval_batch_size=4,
                      log_every=1, lr=0.05)
    splits = ((x[:20], y[:20]), (x[20:31], y[20:31]), (x[31:], y[31:]))
    whole = fit(model, cfg, *splits, tmp_path / "whole", progress=False, labels={"model": "s4d"})
    with pytest.raises(Stop):
        fit(model, cfg, *splits, tmp_path / "cut", progress=False, extra_callbacks=[StopAt()])
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.ckpt")["global_step"] == 7
    resumed = fit(model, cfg, *splits, tmp_path / "cut", resume=True, progress=False, labels={"model": "s4d"})
    again = fit(model, cfg, *splits, tmp_path / "cut", resume=True, progress=False, labels={"model": "s4d"})
    assert whole["train_seconds"] == 8 * 0.25 and whole["samples_per_second"] == 4 / 0.25
    # the uninterrupted record's last validation is the one logged at step 6 (whose weights no file keeps)
    logged = [r for r in csv_rows(tmp_path / "whole" / "logs" / "version_0" / "metrics.csv") if r.get("val_loss")]
    assert [int(r["step"]) + 1 for r in logged] == [3, 6]
    assert whole["val_loss"] == float(logged[-1]["val_loss"]) and whole["val_accuracy"] == float(
        logged[-1]["val_accuracy"])
    for record in (resumed, again):
        assert record["resumed_from"] == str(tmp_path / "cut" / "checkpoints" / "last.ckpt")
        differing = {k for k in whole.keys() | record.keys() if whole.get(k) != record.get(k)}
        assert differing == {"resumed_from"}, {k: (whole.get(k), record.get(k)) for k in differing}
        assert results_table([record]) == results_table([whole])
    assert json.loads((tmp_path / "cut" / "result.json").read_text()) == again
