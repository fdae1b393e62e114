"""Probe of 2026-12-05: training on your own sequence data without writing a Task class (``ssmkit.data.arrays``: the
``arrays`` task, ``ssmkit.data.from_arrays``, ``ssmkit train --task arrays --task_options.path F.npz``).

References are independent of the module: the splits are recomputed here from the documented recipe
(``numpy.random.default_rng(seed).permutation(B)``, test first, then validation, each in file order), the
standardisation with numpy's float64 mean and population std of those training rows, the classes and vocabulary from
the arrays' maxima, and the learning checks against the chance level of the scored labels (the majority class's
share of the test split; 1 / classes for per-step tokens drawn uniformly).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssmkit.cli import main
from ssmkit.data import DataMissingError, available_tasks, from_arrays, get_task

def readme_block() -> str:
    """README's "Your own sequence data" python block (the one that calls ``from_arrays``)."""
    import pathlib
    import re

    readme = pathlib.Path(__file__).resolve().parents[2] / "README.md"
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S) if "from_arrays(x, y)" in b]
    assert len(blocks) == 1, f"expected one README block calling from_arrays; found {len(blocks)}"
    return blocks[0]


def held_out(b: int, seed: int, test_fraction: float, val_fraction: float) -> dict[str, np.ndarray]:
    """The documented hold-out, by hand."""
    perm = np.random.default_rng(seed).permutation(b)
    n_test, n_val = int(round(test_fraction * b)), int(round(val_fraction * b))
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
            "train": np.sort(perm[n_test + n_val:])}


def chance(labels: np.ndarray) -> float:
    """The accuracy of always answering the most frequent label."""
    return float(np.bincount(labels).max() / labels.size)


def test_the_cli_trains_on_an_npz_to_better_than_chance(tmp_path, capsys):
    # a learnable problem: is the sum of a sequence above its expected value? Raw inputs have mean 1 and std 3, so
    # the standardisation has work to do
    rng = np.random.default_rng(0)
    b, steps = 600, 32
    x = (3.0 * rng.normal(size=(b, steps)) + 1.0).astype(np.float32)
    y = (x.sum(1) > steps).astype(np.int64)
    np.savez(tmp_path / "own.npz", x_train=x, y_train=y)
    out = tmp_path / "run"
    argv = ["train", "--task", "arrays", "--task_options.path", str(tmp_path / "own.npz"), "--model", "s4d",
            "--d_model", "16", "--n_layers", "1", "--train.max_steps", "40", "--train.warmup_steps", "5",
            "--train.lr", "0.01", "--train.val_every", "0", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    test_labels = y[held_out(b, 0, 0.2, 0.1)["test"]]
    assert test_labels.size == 120
    base = chance(test_labels)
    assert 0.45 < base < 0.6
    assert result["task"] == "arrays: own.npz"
    assert result["test_accuracy"] >= base + 0.2, (result["test_accuracy"], base)  # 0.883 vs 0.525 when written
    saved = json.loads((out / "task.json").read_text())
    # the training split's statistics the model's inputs were standardised with (stop 66: the run folder did not say,
    # and raw inputs fed to its exported graphs gave wrong outputs): numpy's, over the training items' steps
    train = x[held_out(b, 0, 0.2, 0.1)["train"]].astype(np.float64)
    assert saved.pop("input_mean") == pytest.approx([train.mean()], rel=1e-12)
    assert saved.pop("input_std") == pytest.approx([train.std()], rel=1e-12)
    assert saved == {"task": "arrays", "task_options": {"path": str(tmp_path / "own.npz")}}
    capsys.readouterr()


def test_the_cli_takes_options_whole_and_lists_the_task(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.cumsum(x, 1))  # per-step values: the model keeps every step
    argv = ["train", "--task", "arrays", "--task_options", f"{{path: {tmp_path / 'd.npz'}, test_fraction: 0.25}}",
            "--d_model", "4", "--n_layers", "1", "--train.max_steps", "2", "--train.warmup_steps",
            "0", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(argv) == 0
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert "test_mse" in result and "test_accuracy" not in result
    capsys.readouterr()
    assert "arrays" in available_tasks()
    assert main(["tasks", "--root", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert "--task_options.path" in rows["arrays"] and "missing" in rows["arrays"]
    assert "yours: tokens (B, L) or float (B, L[, D])" in rows["arrays"] and "1 classes" not in rows["arrays"]


@pytest.mark.parametrize("layout", ["npz", "folder"])
def test_splits_and_normalisation_match_numpy(tmp_path, layout):
    rng = np.random.default_rng(2)
    b, steps, d = 50, 7, 3
    x = rng.normal(loc=[0.0, 5.0, -2.0], scale=[1.0, 0.1, 4.0], size=(b, steps, d))
    x[..., 0] = 7.5  # a constant feature keeps a scale of 1
    y = rng.integers(0, 4, size=b)
    x_test = rng.normal(size=(9, steps, d))
    y_test = rng.integers(0, 4, size=9)
    arrays = {"x_train": x, "y_train": y, "x_test": x_test, "y_test": y_test}
    if layout == "npz":
        path = tmp_path / "a.npz"
        np.savez(path, **arrays)
    else:
        path = tmp_path / "a"
        path.mkdir()
        for k, v in arrays.items():
            np.save(path / f"{k}.npy", v)
    task = get_task("arrays", path=str(path), val_fraction=0.2, seed=5)
    splits = {k: ds.tensors for k, ds in task.splits().items()}
    assert sorted(splits) == ["test", "train", "val"]
    index = held_out(b, 5, 0.0, 0.2)  # the file has a test split: only validation is held out, 10 samples
    assert index["val"].size == 10 and index["test"].size == 0
    train = x[index["train"]].reshape(-1, d)
    mean, std = train.mean(0), train.std(0)
    std[0] = 1.0
    np.testing.assert_allclose(task.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(task.std, std, rtol=1e-12)
    for split, (xs, ys) in (("train", (x[index["train"]], y[index["train"]])), ("val", (x[index["val"]], y[index["val"]])),
                            ("test", (x_test, y_test))):
        got_x, got_y = splits[split]
        assert got_x.dtype == torch.float32 and got_y.dtype == torch.int64
        np.testing.assert_allclose(got_x.numpy(), (xs - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got_y.numpy(), ys)
    np.testing.assert_allclose(splits["train"][0].numpy().reshape(-1, d)[:, 1:].mean(0), 0, atol=1e-5)
    info = task.info()
    assert (info.target, info.n_classes, info.length, info.d_input, info.vocab_size) == ("classify", int(y.max()) + 1,
                                                                                         steps, d, None)
    raw = get_task("arrays", path=str(path), normalise=False, val_fraction=0.2, seed=5)
    np.testing.assert_array_equal(raw.splits()["val"].tensors[0].numpy(), x[index["val"]].astype(np.float32))
    assert raw.mean is None


def test_targets_are_inferred_from_y():
    rng = np.random.default_rng(3)
    b, steps = 20, 6
    x = rng.normal(size=(b, steps))
    ids = rng.integers(0, 9, size=(b, steps))
    cases = [  # (x, y, target, n_classes or d_output, y's tensor shape)
        (x, rng.integers(0, 3, size=b), "classify", 3, (14,)),
        (ids, (ids + 1) % 9, "tokens", 9, (14, steps)),
        (x, rng.normal(size=b), "regress", 1, (14, 1)),
        (x, rng.normal(size=(b, steps)), "regress", 1, (14, steps, 1)),
        (x, rng.normal(size=(b, steps, 2)), "regress", 2, (14, steps, 2)),
    ]
    for xs, ys, target, n, shape in cases:
        task = from_arrays(xs, ys)
        info = task.info()
        assert (info.target, info.n_classes) == (target, n)
        assert tuple(task.splits()["train"].tensors[1].shape) == shape
        if xs is ids:
            assert info.vocab_size == int(ids.max()) + 1 and info.d_input is None
    # the target option overrides: integral float labels are classes, integer labels values
    assert from_arrays(x, np.arange(b, dtype=np.float64) % 2, target="classify").info().n_classes == 2
    task = from_arrays(x, np.arange(b) % 2, target="regress", val_fraction=0, test_fraction=0)
    assert task.info().target == "regress" and sorted(task.splits()) == ["train"]
    np.testing.assert_array_equal(task.splits()["train"].tensors[1][:, 0].numpy(), np.arange(b) % 2)


def test_token_lengths_and_padding():
    x = np.array([[1, 2, 3, 4], [3, 3, 0, 0], [2, 0, 0, 0], [4, 4, 4, 1], [1, 1, 1, 1]])
    lengths = np.array([4, 2, 1, 3, 4])
    task = from_arrays(x, x.copy(), lengths_train=lengths, val_fraction=0, test_fraction=0)
    info = task.info()
    assert (info.pad_id, info.vocab_size, info.n_classes, info.target) == (5, 6, 5, "tokens")  # a new id after 0..4
    got_x, got_y = task.splits()["train"].tensors
    real = np.arange(4)[None] < lengths[:, None]
    np.testing.assert_array_equal(got_x.numpy(), np.where(real, x, 5))
    np.testing.assert_array_equal(got_y.numpy(), np.where(real, x, -100))
    # right padding with a given id: the same, with the pad id 0 (LRA Text's convention) in the vocabulary
    x0 = np.array([[1, 2, 0, 0], [3, 0, 0, 0], [2, 2, 2, 2]])
    task = from_arrays(x0, np.array([0, 1, 1]), pad=0, val_fraction=0, test_fraction=0)
    assert (task.info().pad_id, task.info().vocab_size) == (0, 4)
    with pytest.raises(ValueError, match=r"sequence 0 holds the padding id 0 at step 1 before a real token"):
        from_arrays(np.array([[1, 0, 2], [1, 1, 1]]), np.array([0, 1]), pad=0, val_fraction=0, test_fraction=0)
    with pytest.raises(ValueError, match=r"starts with the padding id"):
        from_arrays(np.array([[0, 0, 0], [1, 1, 1]]), np.array([0, 1]), pad=0, val_fraction=0, test_fraction=0)
    with pytest.raises(ValueError, match=r"lengths_train must be in \[1, L = 4\]; found 0"):
        from_arrays(x, x, lengths_train=np.array([4, 2, 0, 3, 4]), val_fraction=0, test_fraction=0)
    # float sequences of different lengths: since 2026-12-06 each split carries its lengths, (x, y, lengths)
    train = from_arrays(np.ones((4, 3)), np.array([0, 1, 0, 1]), lengths_train=np.array([3, 2, 3, 1]),
                        val_fraction=0, test_fraction=0).splits()["train"].tensors
    assert len(train) == 3 and train[2].tolist() == [3, 2, 3, 1]
    with pytest.raises(ValueError, match=r"need token inputs"):
        from_arrays(np.ones((4, 3)), np.array([0, 1, 0, 1]), pad=0)


def test_copy_task_with_lengths_trains_above_chance(tmp_path):
    # per-step tokens: the target at step t is the input at step t - 1 (a one-step copy), learnable by a causal layer
    rng = np.random.default_rng(4)
    b, steps, vocab = 400, 16, 8
    x = rng.integers(0, vocab, size=(b, steps))
    y = np.concatenate([np.full((b, 1), -100), x[:, :-1]], axis=1)
    lengths = rng.integers(8, steps + 1, size=b)
    task = from_arrays(x, y, lengths_train=lengths)
    info = task.info()
    assert (info.target, info.pad_id, info.vocab_size, info.n_classes) == ("tokens", vocab, vocab + 1, vocab)
    from ssmkit.train import TrainConfig, fit
    from ssmkit.train.experiment import Experiment

    config = Experiment(task="arrays", d_model=16, n_layers=1).model_config(info)
    splits = {k: ds.tensors for k, ds in task.splits().items()}
    result = fit(config, TrainConfig(max_steps=60, warmup_steps=5, lr=0.02, val_every=0), splits["train"],
                 splits["val"], splits["test"], out_dir=tmp_path / "copy", progress=False)
    assert result["test_accuracy"] >= 1 / vocab + 0.3, result["test_accuracy"]


def test_labels_or_tokens_outside_the_training_range_are_refused():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 5))
    y = rng.integers(0, 3, size=30)
    with pytest.raises(ValueError, match=r"y_test holds label 7, outside \[0, n_classes = 3\) inferred from y_train.*"
                                         r"give n_classes=8"):
        from_arrays(x, y, x_test=x[:4], y_test=np.array([0, 1, 7, 2]))
    assert from_arrays(x, y, x_test=x[:4], y_test=np.array([0, 1, 7, 2]), n_classes=8).info().n_classes == 8
    ids = rng.integers(0, 5, size=(30, 5))
    with pytest.raises(ValueError, match=r"x_val holds token 9, outside the vocabulary \[0, 5\) inferred from "
                                         r"x_train: give vocab=10"):
        from_arrays(ids, y, x_val=np.full((2, 5), 9), y_val=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"y_train holds label -1"):
        from_arrays(x, y - 1)


def test_clear_errors(tmp_path):
    x = np.zeros((10, 4), dtype=np.float32)
    y = np.arange(10) % 2
    np.savez(tmp_path / "typo.npz", x_train=x, labels=y)
    with pytest.raises(ValueError, match=r"holds arrays \['labels'\], which are not read"):
        get_task("arrays", path=str(tmp_path / "typo.npz")).info()
    np.savez(tmp_path / "nox.npz", y_train=y)
    with pytest.raises(ValueError, match=r"must hold x_train and y_train; found \['y_train'\]"):
        get_task("arrays", path=str(tmp_path / "nox.npz")).info()
    np.savez(tmp_path / "half.npz", x_train=x, y_train=y, x_val=x)
    with pytest.raises(ValueError, match=r"holds x_val but not y_val; found \['x_train', 'x_val', 'y_train'\]"):
        get_task("arrays", path=str(tmp_path / "half.npz")).splits()
    with pytest.raises(ValueError, match=r"x_train and y_train must hold the same number of samples B; got x_train "
                                         r"\(10, 4\) and y_train \(9,\)"):
        from_arrays(x, y[:9])
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"x_train holds 1 non-finite value\(s\).*index \(3, 2\)"):
        from_arrays(bad, y)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match=r"x_test holds 1 non-finite"):
        from_arrays(x, y, x_test=bad, y_test=y)
    with pytest.raises(ValueError, match=r"y_train must hold integers or floats; got dtype bool.*astype\(int\)"):
        from_arrays(x, y.astype(bool))
    with pytest.raises(ValueError, match=r"x_train must hold integers or floats; got dtype complex128"):
        from_arrays(x.astype(complex), y)
    with pytest.raises(ValueError, match=r"integer inputs are token ids \(B, L\); got shape \(10, 4, 2\)"):
        from_arrays(np.zeros((10, 4, 2), dtype=np.int64), y)
    with pytest.raises(ValueError, match=r"the val split is empty"):
        from_arrays(x, y, x_val=x[:0], y_val=y[:0])
    with pytest.raises(ValueError, match=r"too few to hold out 20 % for the test split"):
        from_arrays(x[:2], y[:2])
    with pytest.raises(ValueError, match=r"classify labels must be \(B,\); y_train has shape \(10, 2\)"):
        from_arrays(np.zeros((10, 4), dtype=np.int64), np.zeros((10, 2), dtype=np.int64), target="classify")
    with pytest.raises(ValueError, match=r"needs integer labels"):
        from_arrays(x, y + 0.5, target="classify")
    (tmp_path / "d.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match=r"path must be an \.npz file .* or a folder of \.npy files"):
        get_task("arrays", path=str(tmp_path / "d.csv")).info()
    np.save(tmp_path / "x_train.npy", x)
    with pytest.raises(ValueError, match=r"path must be an \.npz file"):
        get_task("arrays", path=str(tmp_path / "x_train.npy")).info()
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"is not an \.npz archive numpy can read"):
        get_task("arrays", path=str(tmp_path / "broken.npz")).info()
    np.savez(tmp_path / "obj.npz", x_train=np.array([[1.0], "a"], dtype=object), y_train=y[:2])
    with pytest.raises(ValueError, match=r"x_train in .* cannot be read without pickle"):
        get_task("arrays", path=str(tmp_path / "obj.npz")).info()
    with pytest.raises(DataMissingError, match=r"no file or folder at"):
        get_task("arrays", path=str(tmp_path / "absent.npz")).splits()
    with pytest.raises(ValueError, match=r"lengths_train must be \(B,\) integers with x_train's B = 10; got dtype "
                                         r"float64"):
        from_arrays(np.zeros((10, 4), dtype=np.int64), y, lengths_train=np.full(10, 2.0))
    with pytest.raises(ValueError, match=r"need token inputs"):
        from_arrays(x, y, pad=0)
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be < 1"):
        get_task("arrays", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"option target must be one of"):
        get_task("arrays", target="classification")


def test_the_readme_block_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_block(), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "classify 2"
    test_y = namespace["task"].splits()["test"].tensors[1].numpy()
    assert namespace["result"]["test_accuracy"] >= chance(test_y) + 0.2
    assert (tmp_path / "runs" / "own-arrays" / "result.json").is_file()


def test_steps_after_the_lengths_may_hold_anything():
    # a file padded with -1 (or any filler) past each length: the filler is neither a token nor in the vocabulary
    x = np.array([[1, 2, -1, -1], [3, 3, 3, 999], [2, 0, 0, 0]])
    task = from_arrays(x, np.array([0, 1, 1]), lengths_train=np.array([2, 3, 1]), val_fraction=0, test_fraction=0)
    info = task.info()
    assert (info.pad_id, info.vocab_size) == (4, 5)  # tokens 0..3, then the pad id 4
    np.testing.assert_array_equal(task.splits()["train"].tensors[0].numpy(),
                                  [[1, 2, 4, 4], [3, 3, 3, 4], [2, 4, 4, 4]])
    with pytest.raises(ValueError, match=r"token ids must be >= 0; found -1"):
        from_arrays(x, np.array([0, 1, 1]), lengths_train=np.array([3, 3, 1]), val_fraction=0, test_fraction=0)


def test_per_step_values_keep_every_step_and_a_task_object_must_match_the_experiment(tmp_path):
    # per-step float targets set TaskInfo.per_step, so Experiment builds the model without pooling whatever `pool`
    # says (before: the run stopped at its first step, "regression targets must have the output's shape (B, 1)")
    from ssmkit.train.experiment import Experiment, run_experiment

    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 6, 2))
    task = from_arrays(x, np.cumsum(x, 1))
    info = task.info()
    assert info.per_step and info.target == "regress" and info.n_classes == 2
    assert Experiment(task="arrays", pool="last").model_config(info).pool is None
    assert not from_arrays(x, x.sum((1, 2))).info().per_step  # one value a sequence: pooled
    assert Experiment(task="arrays", pool="last").model_config(from_arrays(x, x.sum((1, 2))).info()).pool == "last"
    with pytest.raises(ValueError, match="names 'adding'"):
        run_experiment(Experiment(task="adding"), str(tmp_path / "r"), task=task, progress=False)
