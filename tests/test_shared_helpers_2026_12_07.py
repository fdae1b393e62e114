"""Shared helpers from the 2026-12-07 consolidation: the autocast query, the Wiener checkpoint dict and the splits of
the generated tasks."""

import pytest
import torch

from ssmkit.data.adding import AddingTask, adding_problem
from ssmkit.data.task import draw_splits
from ssmkit.data.task import split_generator
from ssmkit.ops.backend import autocast_enabled
from ssmkit.sysid.wiener import checkpoint_entries


def test_autocast_enabled_follows_torch_and_answers_false_for_meta():
    with pytest.raises(RuntimeError):  # why the helper exists: torch refuses the question for meta
        torch.is_autocast_enabled("meta")
    assert autocast_enabled("meta") is False
    assert autocast_enabled("cpu") is False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_enabled("cpu") is True
        assert autocast_enabled("meta") is False
        with torch.autocast("cpu", enabled=False):
            assert autocast_enabled("cpu") is False


def test_autocast_enabled_under_compile_is_folded():
    def f(x):
        return x + 1 if autocast_enabled(x.device.type) else x - 1

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    x = torch.zeros(3)
    assert torch.equal(compiled(x), -torch.ones(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(compiled(x), torch.ones(3))


def test_checkpoint_entries_layout_and_reserved_keys():
    state = {"w": torch.ones(2)}
    out = checkpoint_entries("deep_wiener", {"a": 1}, state, {"inputs": ("u",), "outputs": ("y1", "y2")}, {"r": 3})
    assert list(out) == ["deep_wiener", "state_dict", "signals", "r"]
    assert out["signals"] == {"inputs": ["u"], "outputs": ["y1", "y2"]} and out["state_dict"] is state
    assert "signals" not in checkpoint_entries("deep_wiener", {}, state, None, {})
    # the first reserved key metadata sets is named: the model's key, then the extra ones, then the weights, names
    with pytest.raises(ValueError, match="metadata must not set 'deep_wiener'"):
        checkpoint_entries("wiener_ensemble", [], state, None, {"signals": 1, "deep_wiener": 1},
                           reserved=("deep_wiener",))
    with pytest.raises(ValueError, match="metadata must not set 'state_dict'"):
        checkpoint_entries("deep_wiener", {}, state, None, {"signals": 1, "state_dict": 1})


def test_draw_splits_seeds_each_split_independently():
    task = AddingTask(length=12, n_train=5, n_val=2, n_test=3, seed=7)
    out = draw_splits(task, lambda n, generator: adding_problem(n, task.length, generator))
    assert list(out) == ["train_x", "train_y", "val_x", "val_y", "test_x", "test_y"]
    for i, (split, n) in enumerate((("train", 5), ("val", 2), ("test", 3))):
        x, y = adding_problem(n, 12, split_generator(7, i))
        assert torch.equal(out[f"{split}_x"], x) and torch.equal(out[f"{split}_y"], y)
    # the target is the sum of the two marked values (independent of the generator)
    assert torch.allclose(out["train_y"][:, 0], (out["train_x"][..., 0] * out["train_x"][..., 1]).sum(1))
    assert torch.equal(task.generate()["val_x"], out["val_x"])
