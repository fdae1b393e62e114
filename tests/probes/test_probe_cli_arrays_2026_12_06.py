"""Probe of 2026-12-06: ``ssmkit train`` / ``compare`` / ``analyze`` on a user's own numpy files (the ``arrays`` task)
with variable lengths (NaN padding), irregular sampling and token inputs, as a new user drives the command line.

What the CLI printed and wrote was recomputed from the saved checkpoints, item by item on the unpadded sequences in
float64 numpy (the hold-out permutation, the standardisation over the valid steps and the loss redone by hand): the
scores of train and compare (val and test, final and best-validation weights), per-step regression and classes,
sequence classes with ``pool last``, batch norm, bidirectional layers, token inputs cut by ``pad`` or ``lengths_*``,
and ``ssmkit sysid --missing-outputs``'s test RMSE all agreed (to float32 rounding). Found:

1. ``compare --models s4d,hyena`` on irregularly sampled arrays (``intervals_*``) trained s4d, then ``fit`` refused
   hyena (no irregular form): exit 1, no results.json / results.md, and the rerun without hyena was refused because
   ``<out>/s4d`` held checkpoints. ``compare`` now refuses such a layer before the first run (exit 2, naming the
   layers that take intervals), as it does a misspelt name.
2. ``compare --models s4d,s4d`` trained s4d, then refused the second run (its folder ``<out>/s4d`` held the first's
   checkpoints): now refused before training.
3. ``ssmkit analyze --onnx`` on a token model (an ``arrays`` run on integer inputs) printed ``inputs u (B, L, 1)``,
   while its graphs take int64 token ids ``u (B)`` / ``u (B, L)``.

``compare`` also reads the task once and hands the same task object to every model's run.
"""

import json

import numpy as np
import pytest
import torch

from ssmkit.cli import main as cli_main

TINY = ["--d_model", "4", "--n_layers", "1", "--train.batch_size", "8", "--train.warmup_steps", "0",
        "--train.val_every", "2", "--train.checkpoint_every", "0", "--train.accelerator", "cpu", "--no-progress"]


def _irregular_file(path, b=30, steps=8, seed=0):
    """Float inputs (B, L) with NaN after each length, per-step values, gaps > 0 (NaN in the padding)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, steps)) * 2.0 + 3.0
    lengths = rng.integers(2, steps + 1, size=b)
    y = np.cumsum(x, axis=1) * 0.1
    gaps = rng.uniform(0.5, 2.0, size=(b, steps))
    for i, n in enumerate(lengths):
        x[i, n:], y[i, n:], gaps[i, n:] = np.nan, np.nan, np.nan
    np.savez(path, x_train=x.astype(np.float32), y_train=y, lengths_train=lengths, intervals_train=gaps)
    return x, y, lengths, gaps


def _held_out(b, test_fraction=0.2, val_fraction=0.1, seed=0):
    """The documented hold-out (arrays module docstring), redone: test perm[:n_test], val next, train the rest."""
    n_test, n_val = round(test_fraction * b), round(val_fraction * b)
    perm = np.random.default_rng(seed).permutation(b)
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
            "train": np.sort(perm[n_test + n_val:])}


def _mse_by_hand(checkpoint, x, y, lengths, gaps, items, mean, std):
    """The per-step MSE over the valid steps of ``items``, each run alone on its unpadded, standardised steps."""
    from ssmkit.analysis.commands import load_model

    model = load_model(str(checkpoint)).double()
    total, count = 0.0, 0
    for i in items:
        n = int(lengths[i])
        u = torch.tensor((x[i, :n] - mean) / std, dtype=torch.float64)[None, :, None]
        with torch.no_grad():
            out = model(u, intervals=torch.tensor(gaps[i, :n], dtype=torch.float64)[None])
        out = (out[0] if isinstance(out, tuple) else out)[0, :, 0].numpy()
        total += float(((out - y[i, :n]) ** 2).sum())
        count += n
    return total / count


def test_compare_on_irregular_padded_arrays_scores_the_unpadded_items(tmp_path, capsys):
    pytest.importorskip("lightning")
    x, y, lengths, gaps = _irregular_file(tmp_path / "irr.npz")
    out = tmp_path / "c"
    argv = ["compare", "--task", "arrays", "--task_options.path", str(tmp_path / "irr.npz"), "--models", "s4d,lru",
            "--budget", "4", "--out", str(out), *TINY]
    assert cli_main(argv) == 0
    capsys.readouterr()
    split = _held_out(x.shape[0])
    valid = np.concatenate([x[i, :lengths[i]] for i in split["train"]])  # the training split's valid steps only
    mean, std = valid.mean(), valid.std()
    results = {r["model"]: r for r in json.loads((out / "results.json").read_text())}
    assert sorted(results) == ["lru", "s4d"]
    for name, result in results.items():
        ckpt = out / name / "checkpoints"
        # val_mse is the last validation's (step 4, the final weights: val_every 2)
        for key, weights, items in (("test_mse_final", "last.ckpt", "test"), ("val_mse", "last.ckpt", "val"),
                                    ("test_mse_best_val", "best_val.ckpt", "test"),
                                    ("best_val_mse", "best_val.ckpt", "val")):
            mine = _mse_by_hand(ckpt / weights, x, y, lengths, gaps, split[items], mean, std)
            assert result[key] == pytest.approx(mine, rel=2e-5, abs=1e-7), (name, key)
        assert result["test_mse"] == result["test_mse_final"]
        assert result["val_step"] == 4  # which validation val_mse is of (stop 66: the record did not say)
    table = (out / "results.md").read_text()
    for name, result in results.items():
        assert f"| {name} | {result['test_mse']:.4g} |" in table
    # the run folder records the statistics its model's inputs were standardised with (it did not: raw inputs fed to
    # the exported graphs gave wrong outputs without a word), and `ssmkit analyze --onnx` prints them
    from ssmkit.analysis.commands import _standardisation_line

    stored = np.concatenate([x.astype(np.float32)[i, :lengths[i]] for i in split["train"]]).astype(np.float64)
    mean, std = stored.mean(), stored.std()  # of the file's float32 values, in float64 (as the task reads them)
    for name in results:
        saved = json.loads((out / name / "task.json").read_text())
        assert saved["input_mean"] == pytest.approx([mean], rel=1e-12)
        assert saved["input_std"] == pytest.approx([std], rel=1e-12)
        line = _standardisation_line(str(out / name / "checkpoints" / "last.ckpt"))
        assert line is not None and f"mean [{mean:.6g}], std [{std:.6g}]" in line
    assert _standardisation_line(str(tmp_path / "elsewhere" / "model.pt")) is None  # no task.json: nothing said


def _compare_refused(tmp_path, capsys, models: str) -> str:
    """``ssmkit compare --models <models>`` on irregular arrays: exit 2 before any training (no out folder); its
    stderr."""
    _irregular_file(tmp_path / "irr.npz", b=20)
    out = tmp_path / "c"
    argv = ["compare", "--task", "arrays", "--task_options.path", str(tmp_path / "irr.npz"), "--models", models,
            "--budget", "2", "--out", str(out), *TINY]
    assert cli_main(argv) == 2
    assert not out.exists()
    return capsys.readouterr().err


def test_compare_refuses_a_layer_without_intervals_before_training(tmp_path, capsys):
    # `--models s4d,hyena` on irregular arrays trained s4d, then fit refused hyena: exit 1, no results, and the
    # s4d sub-folder blocked a rerun
    err = _compare_refused(tmp_path, capsys, "s4d,hyena")
    assert "layers that take none: ['hyena']" in err and "s4d" in err.split("the layers that do:")[1]


def test_compare_refuses_a_layer_named_twice_before_training(tmp_path, capsys):
    # `--models s4d,s4d` trained s4d, then its second run found <out>/s4d's checkpoints and failed
    assert "--models names ['s4d'] more than once" in _compare_refused(tmp_path, capsys, "s4d,lru,s4d")


@pytest.mark.parametrize("vocab", [None, 7])
def test_analyze_says_how_the_onnx_graphs_take_u(vocab):
    # a token model's graphs take int64 ids (B) / (B, L); its summary said u (B, L, 1), its d_input placeholder
    from ssmkit.analysis.commands import _input_summary
    from ssmkit.analysis.onnx_export import _example_input
    from ssmkit.models import SequenceModel

    model = SequenceModel(d_input=1 if vocab else 3, d_model=4, n_layers=1, layer="s4d", d_output=2, head="lm",
                          pool=None, vocab_size=vocab)
    step, sequence = _input_summary(model)
    u = _example_input(model, 5)  # what the step graph is exported with
    want = "(B)" if u.dim() == 1 else f"(B, {u.shape[1]})"
    assert step.startswith(f"u {want}") and ("int64" in step) == (u.dtype == torch.int64)
    assert sequence.startswith("u (B, L)" if vocab else "u (B, L, 3)")
    assert ("token ids" in sequence) == (vocab is not None)


def test_the_record_names_the_step_of_its_last_validation(tmp_path):
    # 3 steps, validation every 2: val_* are step 2's (not the final weights'), which the record now says
    pytest.importorskip("lightning")
    from ssmkit.models import SequenceModelConfig
    from ssmkit.train import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 6, 1, generator=g), torch.randint(0, 2, (24,), generator=g)
    model = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 4})
    train = TrainConfig(batch_size=8, max_steps=3, warmup_steps=0, val_every=2, checkpoint_every=0,
                        accelerator="cpu")
    result = fit(model, train, (x[:16], y[:16]), (x[16:], y[16:]), None, str(tmp_path / "run"), progress=False)
    assert result["val_step"] == 2 == result["best_val_step"] and result["steps"] == 3
    assert result["val_loss"] == result["best_val_loss"]  # the one validation, at step 2
    assert json.loads((tmp_path / "run" / "result.json").read_text())["val_step"] == 2
