"""scripts/f16_budget.py's tuning split: an estimation level held out whole, no test record within reach."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

from ssmkit.sysid.records import IORecord, SysidBenchmark

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"


def _script(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the script imports its sibling sysid_seeds, as when it runs
    spec = importlib.util.spec_from_file_location("f16_budget", SCRIPTS / "f16_budget.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _level(k: int) -> IORecord:
    u = torch.full((4, 1), float(k), dtype=torch.float64)
    return IORecord(u, torch.cat([u, 2 * u, 3 * u], 1), 0.0025, f"FullMSine level {k}")


def test_holdout_level_moves_the_level_last_and_drops_the_test_records(monkeypatch):
    bench = SysidBenchmark("f16", "F-16", [_level(k) for k in (1, 3, 5, 7)], [_level(k) for k in (2, 4, 6)], 50,
                           "m/s²")
    held = _script(monkeypatch).holdout_benchmark(bench, 5)
    assert [r.name for r in held.train] == ["FullMSine level 1", "FullMSine level 3", "FullMSine level 7",
                                            "FullMSine level 5"]
    assert held.test == [] and len(bench.test) == 3  # the original is not changed
    assert torch.equal(held.train[-1].y[:, 2], torch.full((4,), 15.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="estimation level"):
        _script(monkeypatch).holdout_benchmark(bench, 4)
