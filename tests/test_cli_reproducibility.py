"""The commands reproduce their numbers (probe 17): ``ssmkit train`` and ``ssmkit sysid`` run twice with the same
``--seed`` write the same metrics, weights and results, bit for bit on the CPU; another seed gives other numbers."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("jsonargparse")

from ssmkit.cli import main  # noqa: E402

TIMING = ("train_seconds", "samples_per_second", "tokens_per_second", "seconds")  # wall times: never reproducible


def _numbers(path) -> dict:
    """A results JSON without its wall times (at any depth)."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in TIMING}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return strip(json.loads(path.read_text()))


def test_ssmkit_train_with_a_seed_reproduces_its_metrics(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")  # the digits task is scikit-learn's
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "data"))

    def train(seed: int, out: str):
        assert main(["train", "--task", "digits", "--model", "s4d", "--d_model", "8", "--n_layers", "1",
                     "--layer_options", '{"d_state": 4}', "--dropout", "0.2", "--train.max_steps", "6",
                     "--train.warmup_steps", "1", "--train.batch_size", "16", "--train.val_every", "3",
                     "--train.checkpoint_every", "3", "--train.log_every", "1", "--train.seed", str(seed),
                     "--out", str(tmp_path / out), "--no-progress"]) == 0
        return _numbers(tmp_path / out / "result.json")

    a, b, c = train(3, "a"), train(3, "b"), train(4, "c")
    assert a == b and a["test_loss"] == b["test_loss"]  # every metric, to the last bit
    assert a["test_loss"] != c["test_loss"]
    metrics = [(tmp_path / r / "logs" / "version_0" / "metrics.csv").read_text() for r in ("a", "b")]
    assert metrics[0] == metrics[1] and metrics[0].count("\n") > 6  # every logged training loss
    wa, wb = (torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ssmkit_sysid_with_a_seed_reproduces_its_results(tmp_path):
    def sysid(seed: int, out: str):
        assert main(["sysid", "--benchmark", "tanks_surrogate", "--steps", "8", "--seed", str(seed), "--no-plots",
                     "--recipe.restarts", "2", "--recipe.val_every", "4", "--out", str(tmp_path / out)]) == 0
        return _numbers(tmp_path / out / "results.json")

    a, b, c = sysid(5, "a"), sysid(5, "b"), sysid(6, "c")
    assert a == b and a["chosen_seed"] == b["chosen_seed"]
    assert a["test"] != c["test"]
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
