"""Mutation probe (2026-12-07, run/config round) of train/run.py, train/config.py, models/config.py and the generators
data/pathfinder.py, data/copying.py, data/induction.py: the mutants that the modules' own tests let survive, each
killed here against a reference written in this file (the task definitions of /work/shared/REFERENCE.md §3.2, §3.4,
the documented ranges of ``TrainConfig``, JSON round trips). Each test names the mutants it kills. Left alone as
equivalent: R20 (a 5-tuple split let past the count check, then refused by ``unpack_batch`` with the same kind of
ValueError naming the split) and R30 (the final weights not put back into the module after the best validation's
tests: the module is local to ``fit``, whose checkpoints were all written before).
"""

from __future__ import annotations

import json
import os
import math
import pathlib

import numpy as np
import pytest
import torch

from ssmkit.data import get_task, induction_heads_data
from ssmkit.data.task import split_generator
from ssmkit.train.config import TrainConfig


# ------------------------------------------------------------------------------------------------------------------
# data/induction.py


def test_induction_test_splits_are_drawn_from_their_own_split_generators(tmp_path):
    """Kills I10 (every test@L split drawn from split generator 2: the splits shared their random stream, so
    test@64's first columns repeated test@32's). Reference: split i of the documented order train, val,
    test@L1, test@L2 ... is ``induction_heads_data`` on ``split_generator(seed, i)``."""
    task = get_task("induction_heads", train_length=8, test_lengths=(16, 32, 24), vocab_size=6, n_train=5, n_val=4,
                    n_test=3, seed=11)
    data = task.generate()
    sizes = [("train", 5, 8), ("val", 4, 8), ("test@16", 3, 16), ("test@32", 3, 32), ("test@24", 3, 24)]
    for i, (split, n, length) in enumerate(sizes):
        x, y = induction_heads_data(n, length, 6, split_generator(11, i))
        assert torch.equal(data[f"{split}_x"].long(), x) and torch.equal(data[f"{split}_y"].long(), y), split
    assert torch.equal(data["test_x"], data["test@32_x"])  # the longest, not the last listed


def test_induction_test_lengths_are_plain_ints_and_refuse_bools(tmp_path):
    """Kills I13 (numpy ints kept: the options were no longer JSON, the cache key, and ``splits`` failed) and I9
    (a bool taken as a length: ``test_lengths=[True, 32]`` became length 1 and was refused for the wrong reason,
    "length must be >= 3", instead of naming test_lengths)."""
    task = get_task("induction_heads", train_length=8, test_lengths=np.array([16, 32]), vocab_size=5, n_train=2,
                    n_val=2, n_test=2)
    assert task.test_lengths == (16, 32) and all(type(v) is int for v in task.test_lengths)
    json.dumps(task.options())
    assert sorted(task.splits(tmp_path)) == ["test", "test@16", "test@32", "train", "val"]
    for bad in ([True, 32], True, (16, np.True_)):
        with pytest.raises(ValueError, match="test_lengths must be an int or a list of ints"):
            get_task("induction_heads", test_lengths=bad)


# ------------------------------------------------------------------------------------------------------------------
# train/config.py


def test_train_config_seed_range_is_numpys_and_refuses_bools():
    """Kills T5 (``seed <= 2**32``: 2**32 accepted, which Lightning's seed_everything refuses only when fit starts)
    and T24 (a bool taken as seed 1). Reference: numpy's seed range [0, 2**32 - 1]."""
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1
    np.random.seed(2**32 - 1)  # the last seed numpy takes
    with pytest.raises(ValueError):
        np.random.seed(2**32)
    for bad in (2**32, -1, True, False, 1.0):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32 - 1\]"):
            TrainConfig(seed=bad)


@pytest.mark.parametrize("name", ["lr", "weight_decay", "lr_floor", "grad_clip", "max_time"])
def test_train_config_refuses_infinite_numbers(name):
    """Kills T15 (``_is_number`` without ``math.isfinite``: lr inf trained to NaN, a max_time of inf seconds was
    accepted as a limit)."""
    with pytest.raises(ValueError, match=f"{name} must be"):
        TrainConfig(**{name: math.inf})
    with pytest.raises(ValueError, match=f"{name} must be"):
        TrainConfig(**{name: math.nan})


def test_train_config_init_from_path_becomes_a_plain_string():
    """Kills T16 (a ``pathlib.Path`` kept: ``to_dict`` held a PosixPath, which ``train.json`` and the checkpoints'
    JSON cannot hold)."""
    config = TrainConfig(init_from=pathlib.Path("runs") / "a")
    assert type(config.init_from) is str and config.init_from == str(pathlib.Path("runs") / "a")
    assert json.loads(json.dumps(config.to_dict()))["init_from"] == config.init_from


# ------------------------------------------------------------------------------------------------------------------
# models/config.py


def test_model_config_holds_jsons_containers_at_every_depth(tmp_path):
    """Kills M1 (tuples kept by ``as_plain``), M2 (a dict copied without converting what it holds) and M3 (the
    conversion skipped in ``__post_init__``): a config with a tuple, in a hybrid's per-layer options too, compared
    unequal to itself read back from model.json. Reference: ``json.loads(json.dumps(.))``, what the saved file reads
    back as."""
    from ssmkit.models import SequenceModelConfig
    from ssmkit.models.config import as_plain

    value = {"a": (1, (2, 3)), "b": [{"c": (4,)}, (5, {"d": (6, 7)})], "e": "x", "f": None}
    assert as_plain(value) == json.loads(json.dumps(value))
    assert type(as_plain(value)["b"][1]) is list and type(as_plain(value)["b"][1][1]["d"]) is list
    config = SequenceModelConfig(d_input=1, d_model=4, n_layers=2, layer=("s4d", "lru"), d_output=2,
                                 layer_options={"s4d": {"dt_range": (1e-3, 1e-1)}, "lru": {"r_range": (0.9, 0.99)}})
    plain = json.loads(json.dumps(config.to_dict()))
    assert config.to_dict() == plain and config.layer == ["s4d", "lru"]
    assert config.layer_options["s4d"]["dt_range"] == [1e-3, 1e-1]
    config.save(tmp_path / "model.json")
    assert SequenceModelConfig.load(tmp_path / "model.json") == config


# ------------------------------------------------------------------------------------------------------------------
# data/pathfinder.py


def test_pathfinder_image_i_is_drawn_from_seed_i_past_the_first_chunk():
    """Kills P15 (the seed shifted by the number of 64-image chunks: image i then depended on how many images were
    drawn, against the docstring's "image i uses the seed (seed, i)"). Reference: ``render_pathfinder`` of image i
    on ``SeedSequence([seed, i])``, for images in the first and the second chunk (small custom parameters: fast)."""
    import dataclasses

    from ssmkit.data.pathfinder import PATHFINDER32, generate_pathfinder, render_pathfinder

    params = dataclasses.replace(PATHFINDER32, window=16, contour_length=2, num_distractors=0, seed_distance=3)
    x, y = generate_pathfinder(66, params, seed=3)
    assert x.shape == (66, 256, 1) and x.dtype == torch.uint8
    for i in (0, 63, 64, 65):
        image, label, _ = render_pathfinder(params, np.random.default_rng(np.random.SeedSequence([3, i])))
        assert torch.equal(x[i, :, 0], torch.from_numpy(image.reshape(-1))) and int(y[i]) == label, i
    x2, y2 = generate_pathfinder(2, params, seed=3)
    assert torch.equal(x2, x[:2]) and torch.equal(y2, y[:2])


# ------------------------------------------------------------------------------------------------------------------
# train/run.py: check_same_run against the rules its docstring states


def _model(**changes):
    from ssmkit.models import SequenceModelConfig

    return SequenceModelConfig(**{**dict(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2), **changes})


def _train(**changes) -> TrainConfig:
    return TrainConfig(**{**dict(batch_size=4, max_steps=12, warmup_steps=3), **changes})


def test_check_same_run_max_steps_with_a_flat_schedule():
    """Kills R5 (``max_steps > step``: a flat run could not be resumed with max_steps equal to the step it is at,
    "to no fewer than the checkpoint's step") and R4 (the flat exception read from the given ``lr_floor`` alone: a
    run saved with lr_floor 0.5 took a new max_steps once the resume also set lr_floor 1, and only lr_floor was
    named)."""
    from ssmkit.train.run import check_same_run

    model = _model()
    flat = {"model": model.to_dict(), "train": _train(lr_floor=1.0).to_dict()}
    check_same_run(flat, model, _train(lr_floor=1.0, max_steps=10), "p", step=10)  # as many steps as done: accepted
    with pytest.raises(ValueError, match=r"train max_steps: saved 12, given 9 \(the run is at step 10\)"):
        check_same_run(flat, model, _train(lr_floor=1.0, max_steps=9), "p", step=10)
    sloped = {"model": model.to_dict(), "train": _train(lr_floor=0.5).to_dict()}
    with pytest.raises(ValueError, match=r"\(train max_steps: saved 12, given 20; train lr_floor: saved 0.5, given 1.0\)"):
        check_same_run(sloped, model, _train(lr_floor=1.0, max_steps=20), "p", step=10)


def test_check_same_run_refuses_another_freeze_and_reads_old_checkpoints():
    """Kills R8 (``freeze`` left out of the compared fields: a resume trained other parameters than the saved
    run's optimiser groups), R11 (a field an older checkpoint lacks compared as None: every such resume refused),
    R10 (an older checkpoint without ``devices`` read as the given count, not 1: 4 samples a step on one process
    resumed on 2 processes × 4) and R12 (an older checkpoint's model with tuples compared unconverted to the given
    config's lists: the same model refused)."""
    from ssmkit.train.run import check_same_run

    model = _model(layer_options={"d_state": 2})
    saved = {"model": model.to_dict(), "train": _train().to_dict()}
    with pytest.raises(ValueError, match=r"\(train freeze: saved None, given 'ssm'\)"):
        check_same_run(saved, model, _train(freeze="ssm"), "p")
    old = {k: v for k, v in _train().to_dict().items() if k not in ("seed", "freeze", "init_from", "devices")}
    check_same_run({"model": model.to_dict(), "train": old}, model, _train(seed=5, freeze="ssm"), "p")
    check_same_run({"model": model.to_dict(), "train": old}, model, _train(devices=2, batch_size=2), "p")
    with pytest.raises(ValueError, match=r"\(train devices: saved 1, given 2\)"):
        check_same_run({"model": model.to_dict(), "train": old}, model, _train(devices=2), "p")
    hybrid = _model(layer=["s4d", "lru"], n_layers=2, layer_options={"s4d": {"x": [1, 2]}})
    tuples = {"model": {**hybrid.to_dict(), "layer": ("s4d", "lru"), "layer_options": {"s4d": {"x": (1, 2)}}},
              "train": _train().to_dict()}
    check_same_run(tuples, hybrid, _train(), "p")
    with pytest.raises(ValueError, match=r"model layer: saved \['s4d', 'lru'\], given \['lru', 's4d'\]"):
        check_same_run(tuples, _model(layer=["lru", "s4d"], n_layers=2, layer_options={"s4d": {"x": [1, 2]}}),
                       _train(), "p")


# ------------------------------------------------------------------------------------------------------------------
# train/run.py: fit's periods, and the splits' checks for a pair model


def test_fit_with_periods_zero_validates_and_checkpoints_at_the_end_only(tmp_path):
    """Kills R16 (``val_every`` 0 read as every step, not "only at the end") and R17 (``checkpoint_every`` 0 read
    as a checkpoint every step, not "only at the end"). A callback records, before each step, the checkpoints
    on disk, and counts the validations."""
    import lightning.pytorch as pl

    from ssmkit.train.run import fit

    class Watch(pl.Callback):
        def __init__(self):
            self.files, self.validations = [], 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            folder = tmp_path / "run" / "checkpoints"
            self.files.append(sorted(os.listdir(folder)) if folder.is_dir() else [])

        def on_validation_end(self, trainer, module):
            self.validations += 1

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 5, 1, generator=g), torch.randint(0, 2, (8,), generator=g)
    watch = Watch()
    cfg = _train(batch_size=4, max_steps=3, warmup_steps=1, val_every=0, checkpoint_every=0, log_every=1)
    result = fit(_model(layer_options={"d_state": 2}), cfg, (x, y), (x[:4], y[:4]), None, tmp_path / "run",
                 progress=False, extra_callbacks=[watch])
    assert watch.files == [[], [], []] and watch.validations == 1
    assert result["steps"] == 3 and result["val_step"] == 3 and result["best_val_step"] == 3
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["best_val.ckpt", "last.ckpt", "step3.ckpt"]


def test_pair_model_lengths_are_checked_as_pairs():
    """Kills R27 (a pair model's lengths checked against (n,): every pair split with lengths (n, 2), the form
    ``SequenceModel`` takes, was refused before training). Reference: lengths (n, 2) in [1, L] accepted, (n,) and
    out-of-range refused naming the split."""
    from ssmkit.models import SequenceModelConfig
    from ssmkit.train.run import _check_splits

    pair = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, vocab_size=5, pair=True)
    x, y = torch.randint(1, 5, (3, 2, 6)), torch.zeros(3, dtype=torch.long)
    _check_splits({"train": (x, y, torch.tensor([[6, 4], [3, 6], [1, 2]])), "val": None}, None, pair)
    with pytest.raises(ValueError, match=r"the train split's lengths must be an integer tensor \(3, 2\)"):
        _check_splits({"train": (x, y, torch.tensor([6, 4, 3]))}, None, pair)
    with pytest.raises(ValueError, match=r"the val split's lengths must be in \[1, L = 6\]"):
        _check_splits({"train": (x, y, torch.tensor([[6, 4], [3, 6], [1, 2]])),
                       "val": (x, y, torch.tensor([[7, 4], [3, 6], [1, 2]]))}, None, pair)


def test_fit_refuses_a_run_folder_with_checkpoints_without_resume_and_best_val_without_val(tmp_path):
    """Kills R19 (``last.ckpt`` resumed although ``resume`` was False: a new run in an old folder continued the old
    run without a word instead of the documented refusal) and R28 (``test_weights`` "best_val" without a validation
    split trained to the end and recorded no ``test_<metric>`` at all, instead of refusing before training)."""
    from ssmkit.train.run import fit

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 5, 1, generator=g), torch.randint(0, 2, (8,), generator=g)
    model, cfg = _model(layer_options={"d_state": 2}), _train(batch_size=4, max_steps=2, warmup_steps=1)
    with pytest.raises(ValueError, match="test_weights 'best_val' selects the test at the best validation, but no "
                                         "validation split was given"):
        fit(model, _train(batch_size=4, max_steps=2, warmup_steps=1, test_weights="best_val"), (x, y), None,
            (x, y), tmp_path / "none", progress=False)
    assert not (tmp_path / "none").exists()
    fit(model, cfg, (x, y), None, None, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(ValueError, match="already holds checkpoints: pass resume=True"):
        fit(model, cfg, (x, y), None, None, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes() == before


def test_a_resumed_fine_tuning_run_does_not_read_its_source_again(tmp_path):
    """Kills R25 (``init_from`` loaded again on a resume, whose checkpoint holds the weights: a fine-tuning run
    whose source folder was gone could not be resumed, FileNotFoundError, although nothing is read from it)."""
    import shutil

    from ssmkit.train.checkpoint import load_checkpoint
    from ssmkit.train.run import fit

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 5, 1, generator=g), torch.randint(0, 2, (8,), generator=g)
    model = _model(layer_options={"d_state": 2})
    fit(model, _train(batch_size=4, max_steps=2, warmup_steps=1), (x, y), None, None, tmp_path / "a", progress=False)
    cfg = _train(batch_size=4, max_steps=2, warmup_steps=1, init_from=str(tmp_path / "a"))
    fit(model, cfg, (x, y), None, None, tmp_path / "b", progress=False)
    weights = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.ckpt")["state_dict"]
    shutil.rmtree(tmp_path / "a")
    again = fit(model, cfg, (x, y), None, None, tmp_path / "b", resume=True, progress=False)
    assert again["steps"] == 2 and again["init_from"] == os.path.abspath(tmp_path / "a")
    after = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.ckpt")["state_dict"]
    assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)


def test_throughput_counts_the_samples_and_tokens_of_every_process():
    """Kills R15 (the samples of one process counted, not ``world_size`` times them: under data parallelism
    ``samples_per_second`` was 1/N of the run's while ``tokens_per_second`` counted every process). Reference: each
    of the N processes trains on its own batch of B sequences of L steps, B·N samples and B·N·L' tokens a step
    (L' the steps within the lengths)."""
    from types import SimpleNamespace

    from ssmkit.train.run import _Throughput

    meter = _Throughput()
    trainer, module = SimpleNamespace(world_size=3), SimpleNamespace(model=SimpleNamespace(pad_id=None))
    x, y, lengths = torch.randn(4, 6, 2), torch.zeros(4, dtype=torch.long), torch.tensor([6, 2, 5, 1])
    for batch in ((x, y), (x, y, lengths)):
        meter.on_train_batch_start(trainer, module, batch, 0)
        meter.on_train_batch_end(trainer, module, None, batch, 0)
    assert meter.samples == 2 * 4 * 3 and meter.tokens == (4 * 6 + 14) * 3
    assert meter.state_dict()["samples"] == 24


def test_intervals_of_a_split_with_lengths_are_refused_as_intervals():
    """Kills R26 (a split that already gives its lengths last, with intervals of shape (n,), told that lengths are an
    integer tensor, as if the intervals were misplaced lengths, instead of that the intervals must be (n, L))."""
    from ssmkit.train.run import _check_splits

    x, y, lengths = torch.randn(3, 6, 1), torch.zeros(3, dtype=torch.long), torch.tensor([6, 4, 3])
    with pytest.raises(ValueError, match=r"the train split's intervals must be a real floating tensor of shape "
                                         r"\(3, 6\); got shape \(3,\)") as caught:
        _check_splits({"train": (x, y, torch.ones(3), lengths)}, None, _model())
    assert "integer tensor" not in str(caught.value)
    _check_splits({"train": (x, y, torch.ones(3, 6), lengths)}, None, _model())  # (n, L) intervals: accepted
