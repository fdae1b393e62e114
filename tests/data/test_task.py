"""The task registry and the cache of generated tasks (atomic writes, seeds, keys)."""

import json
import os

import pytest
import torch

import ssmkit.data as data
from ssmkit.data.store import atomic_write_bytes, cache_path, data_root
from ssmkit.files import atomic_write, write_json


def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("SSMKIT_DATA")
    assert data_root().parts[-2:] == (".cache", "ssmkit")


def test_generated_task_is_cached_and_reproducible(tmp_path):
    task = data.get_task("copying", delay=3, n_tokens=2, vocab_size=5, n_train=6, n_val=2, n_test=2, seed=7)
    assert not task.present(tmp_path)
    first = task.splits(tmp_path)
    path = cache_path("copying", task.options(), tmp_path)
    assert task.present(tmp_path) and path.exists()
    assert json.loads(path.with_suffix(".json").read_text())["options"]["seed"] == 7
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # no temporary left
    again = data.get_task("copying", delay=3, n_tokens=2, vocab_size=5, n_train=6, n_val=2, n_test=2, seed=7)
    second = again.splits(tmp_path)
    for split in ("train", "val", "test"):
        assert torch.equal(first[split].tensors[0], second[split].tensors[0])
        assert first[split].tensors[0].dtype == torch.long  # widened from the compact cache
    other = data.get_task("copying", delay=3, n_tokens=2, vocab_size=5, n_train=6, n_val=2, n_test=2, seed=8)
    assert not other.present(tmp_path)
    assert not torch.equal(other.splits(tmp_path)["train"].tensors[0], first["train"].tensors[0])
    # the splits are drawn independently of each other
    assert not torch.equal(first["val"].tensors[0], first["test"].tensors[0])


def test_regenerating_in_a_fresh_root_gives_the_same_data(tmp_path):
    task = data.get_task("adding", length=9, n_train=5, n_val=2, n_test=2)
    a = task.splits(tmp_path / "a")["train"].tensors
    b = task.splits(tmp_path / "b")["train"].tensors
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape == (5, 9, 2)


def test_a_misspelt_task_option_is_a_value_error_naming_the_options():
    # it was Python's TypeError from the constructor, which the CLI showed as a traceback
    with pytest.raises(ValueError, match=r"task 'adding' has no option\(s\) \['lenght'\]; its options are \[.*'length'"):
        data.get_task("adding", lenght=9)
    with pytest.raises(TypeError):  # still a TypeError for code that caught Python's own
        data.get_task("adding", lenght=9)


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_json_and_text_writes_are_whole_or_absent(tmp_path):
    # The benchmarks' and the trainer's JSON, CSV and markdown go through these two: a write that raises midway
    # (a value json cannot encode, after part of the object was written) leaves the previous file and no temporary.
    target = tmp_path / "out" / "r.json"
    write_json(target, {"a": [1, 2.5, "é"]})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": [1, 2.5, "é"]}
    with pytest.raises(TypeError):
        write_json(target, {"a": 1, "b": object()})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": [1, 2.5, "é"]}
    atomic_write(tmp_path / "out" / "t.csv", lambda f: f.write("x,y\r\n1,2\r\n"), text=True)
    assert (tmp_path / "out" / "t.csv").read_bytes() == b"x,y\r\n1,2\r\n"  # newline="" keeps csv's line ends
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r.json", "t.csv"]


def test_every_task_describes_itself():
    for name in data.available_tasks():
        info = data.get_task(name).info()
        assert info.name == name and info.kind in ("generated", "bundled", "files")
        assert info.target in ("classify", "regress", "tokens") and info.n_classes >= 1 and info.length >= 1
        assert (info.d_input is None) != (info.vocab_size is None)  # either features or token ids
        assert info.title and info.source and info.needs


def test_register_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        data.register_task("copying")(type("Other", (data.GeneratedTask,), {}))
