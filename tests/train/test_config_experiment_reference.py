"""The training configuration and the experiment against references written here (the lead's round of stop 43):
TrainConfig's fields against the options its docstring documents, every range check at its edges (the first value
refused and the last accepted), `to_dict`/`from_dict` as a round trip with unknown keys named in sorted order, and
`Experiment.model_config` field by field against the task's description. No Lightning fit runs here.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch.utils.data import TensorDataset

import ssmkit.data
import ssmkit.train.run
from ssmkit.data.sequences import ScaledSequences
from ssmkit.data.task import TaskInfo
from ssmkit.train.config import PRECISIONS, TEST_WEIGHTS, TrainConfig
from ssmkit.train.experiment import Experiment, run_experiment


def documented_options(cls) -> dict[str, str]:
    """The options of a class docstring's ``Args:`` section, in order: name -> its text on one line."""
    args = cls.__doc__.split("Args:", 1)[1]
    entries = re.findall(r"^        (\w+): (.*?)(?=^        \w+: |\Z)", args, flags=re.M | re.S)
    return {name: " ".join(text.split()) for name, text in entries}


def documented_default(text: str):
    """The default an option's text states: "default <number or None>" or '``"<word>"`` (the default)'."""
    word = re.search(r'``"([\w-]+)"`` \(the default', text)
    if word:
        return word.group(1)
    flag = re.search(r"\((True|False), the default\)", text)
    if flag:
        return flag.group(1) == "True"
    value = re.search(r"default (None|[-+\d.e]+)\b", text).group(1)
    return None if value == "None" else (float(value) if re.search(r"[.e]", value) else int(value))


def test_train_config_fields_are_the_documented_options_and_round_trip():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert names == list(documented_options(TrainConfig))
    config = TrainConfig(batch_size=3, lr=0.5, max_steps=7, warmup_steps=6, strategy="ddp", precision="bf16-mixed",
                         early_stopping=2, eval_batch_size=5, test_weights="best_val", seed=2**32 - 1)
    data = config.to_dict()
    assert data == {name: getattr(config, name) for name in names}
    assert TrainConfig.from_dict(data) == config and TrainConfig.from_dict({}) == TrainConfig()


def test_train_config_defaults_are_the_documented_ones():
    # the defaults were stated nowhere a user reads (the docstring described each option, not its default)
    documented = {name: documented_default(text) for name, text in documented_options(TrainConfig).items()}
    assert documented == {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert documented["lr"] == 3e-3 and documented["lr_floor"] == 0 and documented["precision"] == "32"


def test_from_dict_names_unknown_keys_sorted_and_the_valid_ones():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict({"zeta": 1, "lr": 0.1, "alpha": 2})
    assert str(error.value) == f"unknown TrainConfig keys ['alpha', 'zeta']; valid keys: {names}"


@pytest.mark.parametrize("name", ["batch_size", "max_steps", "devices", "log_every"])
def test_positive_int_options_at_their_edges(name):
    extra = {"warmup_steps": 0} if name == "max_steps" else {}
    assert getattr(TrainConfig(**{name: 1}, **extra), name) == 1
    for bad in (0, -1, 2.0, "3", True):
        with pytest.raises(ValueError, match=rf"^{name} must be a positive int; got {re.escape(repr(bad))}$"):
            TrainConfig(**{name: bad}, **extra)


@pytest.mark.parametrize("name", ["warmup_steps", "val_every", "checkpoint_every"])
def test_non_negative_int_options_at_their_edges(name):
    assert getattr(TrainConfig(**{name: 0}), name) == 0
    for bad in (-1, 1.0, "0", False):
        with pytest.raises(ValueError, match=rf"^{name} must be an int >= 0; got {re.escape(repr(bad))}$"):
            TrainConfig(**{name: bad})


def test_warmup_must_end_before_the_last_step():
    assert TrainConfig(max_steps=10, warmup_steps=9).warmup_steps == 9
    for warmup in (10, 11):
        with pytest.raises(ValueError, match=rf"^warmup_steps must be < max_steps = 10; got {warmup}$"):
            TrainConfig(max_steps=10, warmup_steps=warmup)


def test_number_options_at_their_edges():
    assert TrainConfig(lr=1e-300).lr == 1e-300 and TrainConfig(lr=2).lr == 2
    assert TrainConfig(weight_decay=0).weight_decay == 0
    assert (TrainConfig(lr_floor=0).lr_floor, TrainConfig(lr_floor=1).lr_floor) == (0, 1)
    assert TrainConfig(grad_clip=1e-9).grad_clip == 1e-9 and TrainConfig(max_time=0.5).max_time == 0.5
    refused = [("lr", 0.0, "a number > 0"), ("lr", -1e-3, "a number > 0"), ("lr", "1e-3", "a number > 0"),
               ("weight_decay", -1e-12, "a number >= 0"), ("lr_floor", -1e-12, "a number in [0, 1]"),
               ("lr_floor", 1.0000001, "a number in [0, 1]"), ("grad_clip", 0.0, "None or a number > 0"),
               ("max_time", 0.0, "None or a number of seconds > 0"), ("max_time", float("nan"), "None or a number")]
    for name, value, expected in refused:
        with pytest.raises(ValueError, match=rf"^{name} must be {re.escape(expected)}"):
            TrainConfig(**{name: value})


@pytest.mark.parametrize("name", ["early_stopping", "eval_batch_size"])
def test_optional_positive_ints_at_their_edges(name):
    assert getattr(TrainConfig(**{name: None}), name) is None and getattr(TrainConfig(**{name: 1}), name) == 1
    for bad in (0, -2, 1.0, "2", True):
        with pytest.raises(ValueError, match=rf"^{name} must be None or a positive int; got {re.escape(repr(bad))}$"):
            TrainConfig(**{name: bad})


def test_precisions_and_test_weights_are_the_documented_choices():
    doc = TrainConfig.__doc__
    assert PRECISIONS == ("32", "64", "bf16-mixed", "16-mixed") and all(f'``"{p}"``' in doc for p in PRECISIONS)
    assert TEST_WEIGHTS == ("final", "best_val") and all(f'``"{w}"``' in doc for w in TEST_WEIGHTS)
    assert [TrainConfig(precision=p).precision for p in PRECISIONS] == list(PRECISIONS)
    assert [TrainConfig(test_weights=w).test_weights for w in TEST_WEIGHTS] == list(TEST_WEIGHTS)
    for name, bad, choices in (("precision", "bf16", PRECISIONS), ("precision", 32, PRECISIONS),
                               ("test_weights", "best", TEST_WEIGHTS)):
        with pytest.raises(ValueError, match=rf"^{name} must be one of {re.escape(repr(choices))}; got "):
            TrainConfig(**{name: bad})


def info(target="classify", **changes) -> TaskInfo:
    fields = dict(name="stub", title="Stub task", kind="generated", target=target, length=6, d_input=2,
                  vocab_size=None, n_classes=3, source="test", needs="nothing")
    return TaskInfo(**{**fields, **changes})


def test_experiment_defaults_are_the_documented_ones():
    documented = documented_options(Experiment)
    assert list(documented) == [f.name for f in dataclasses.fields(Experiment)]
    plain = {f.name: f.default for f in dataclasses.fields(Experiment) if f.default is not dataclasses.MISSING}
    assert {name: documented_default(documented[name]) for name in plain} == plain
    made = Experiment("stub")
    assert (made.task_options, made.layer_options, made.train) == ({}, {}, TrainConfig())
    assert "default none" in documented["task_options"] and "``TrainConfig()``" in documented["train"]
    assert Experiment("stub", train={"lr": 0.5, "max_steps": 200}).train == TrainConfig(lr=0.5, max_steps=200)


def test_experiment_to_dict_is_plain_and_round_trips():
    experiment = Experiment("stub", model=["s4d", "lru"], layer_options={"s4d": {"d_state": 4}}, d_model=6,
                            train=TrainConfig(lr=0.5, max_steps=9, warmup_steps=2))
    data = experiment.to_dict()
    expected = {f.name: getattr(experiment, f.name) for f in dataclasses.fields(Experiment)}
    assert data == {**expected, "train": experiment.train.to_dict()} and isinstance(data["train"], dict)
    assert Experiment(**data) == experiment


@pytest.mark.parametrize("target, head, pool", [("classify", "classify", "last"), ("regress", "regress", "last"),
                                                ("tokens", "lm", None)])
def test_model_config_takes_the_task_and_the_experiment_field_by_field(target, head, pool):
    experiment = Experiment("stub", model=["s4d", "lru"], layer_options={"s4d": {"d_state": 4}}, d_model=6, n_layers=2,
                            norm="rms", prenorm=False, activation="gelu", mixer_out=None, dropout=0.25, pool="last")
    task = info(target, d_input=5, n_classes=7, vocab_size=None, pair=True, pad_id=None)
    config = experiment.model_config(task)
    expected = dict(d_input=5, d_model=6, n_layers=2, layer=["s4d", "lru"], d_output=7,
                    layer_options={"s4d": {"d_state": 4}}, head=head, pool=pool, vocab_size=None, pair=True,
                    pad_id=None,
                    norm="rms", prenorm=False, activation="gelu", mixer_out=None, dropout=0.25)
    assert {name: getattr(config, name) for name in expected} == expected
    assert config.layer_options is not experiment.layer_options  # the config owns a copy
    tokens = Experiment("stub").model_config(info(target, d_input=None, vocab_size=11, pad_id=0))
    assert (tokens.d_input, tokens.vocab_size, tokens.pad_id) == (1, 11, 0)  # d_input unused with a vocabulary


class StubTask:
    """A task whose splits are given (integer-stored sequences or plain tensors)."""

    def __init__(self, splits, task_info):
        self._splits, self._info = splits, task_info

    def info(self):
        return self._info

    def splits(self):
        return self._splits


def capture_fit(monkeypatch, splits, task_info, experiment, **options):
    calls = []
    monkeypatch.setattr(ssmkit.data, "get_task", lambda name, **kw: calls.append(("task", name, kw)) or StubTask(
        splits, task_info))
    monkeypatch.setattr(ssmkit.train.run, "fit", lambda *args, **kw: calls.append(("fit", args, kw)) or {"ok": 1})
    assert run_experiment(experiment, "/run/folder", **options) == {"ok": 1}
    (_, name, task_options), (_, args, kwargs) = calls
    assert (name, task_options) == (experiment.task, experiment.task_options)
    return args, kwargs


def test_run_experiment_scales_integer_stored_batches_as_the_dataset_does(monkeypatch):
    # images and audio are stored as integers (ScaledSequences) and scaled per batch by the trainer's transform;
    # no test ran a task stored that way through run_experiment
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 6, 2), generator=g, dtype=torch.uint8)
    y = torch.arange(5) % 3
    scale = torch.tensor([[0.5, 2.0]]).expand(6, 2) * torch.arange(1, 7)[:, None]  # (L, H): per step and channel
    shift = torch.tensor([-1.0, 3.0])
    train = ScaledSequences(x, y, scale, shift)
    test = ScaledSequences(x[:2], y[:2], scale, shift)
    longer = ScaledSequences(x[:3], y[:3], scale, shift)
    experiment = Experiment("stub", model=["s4d", "lru"], task_options={"seed": 4}, d_model=4, n_layers=2,
                            train=TrainConfig(max_steps=5, warmup_steps=1))
    task = info()
    args, kwargs = capture_fit(monkeypatch, {"train": train, "test": test, "test@12": longer}, task, experiment)
    config, train_config, train_tensors, val, test_tensors, out_dir = args
    assert config == experiment.model_config(task) and train_config is experiment.train and out_dir == "/run/folder"
    assert train_tensors[0] is x and train_tensors[1] is train.y and val is None and test_tensors[0] is test.x
    assert list(kwargs["extra_tests"]) == ["test@12"] and kwargs["extra_tests"]["test@12"][0] is longer.x
    assert kwargs["labels"] == {"task": "Stub task", "model": "s4d+lru"}
    assert (kwargs["resume"], kwargs["progress"]) == (False, True)
    scaled, labels = kwargs["transform"]((x, y))
    reference = torch.stack([train[i][0] for i in range(5)])  # the dataset's own items
    assert scaled.dtype == torch.float32 and torch.equal(scaled, reference) and labels is y
    assert torch.equal(scaled[1, 4], x[1, 4].double().mul(torch.tensor([2.5, 10.0], dtype=torch.float64)).add(
        torch.tensor([-1.0, 3.0], dtype=torch.float64)).float())


def test_run_experiment_passes_plain_tensors_untransformed(monkeypatch):
    x, y = torch.randn(4, 6, 2), torch.arange(4) % 3
    splits = {"train": TensorDataset(x, y), "val": TensorDataset(x[:2], y[:2])}
    args, kwargs = capture_fit(monkeypatch, splits, info(), Experiment("stub", model="lru"), resume=True,
                               progress=False)
    assert args[2][0] is x and args[3][0] is splits["val"].tensors[0] and args[4] is None
    assert kwargs["transform"] is None and kwargs["extra_tests"] is None
    assert kwargs["labels"] == {"task": "Stub task", "model": "lru"} and (kwargs["resume"], kwargs["progress"]) == (
        True, False)
