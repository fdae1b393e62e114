"""A benchmark built from one's own records: one sampling time, one set of channels, time first (probe 4)."""

from __future__ import annotations

import pytest
import torch

from ssmkit.sysid.records import IORecord, SysidBenchmark


def rec(L: int, m: int = 1, p: int = 1, dt: float = 0.5, name: str = "r") -> IORecord:
    return IORecord(torch.randn(L, m, dtype=torch.float64), torch.randn(L, p, dtype=torch.float64), dt, name)


def test_a_benchmark_takes_consistent_records():
    bench = SysidBenchmark("mine", "my plant", [rec(50), rec(40)], [rec(30)], n_init=5, unit="V")
    assert bench.dt == 0.5 and (bench.n_inputs, bench.n_outputs) == (1, 1)


def test_records_at_another_sampling_time_are_refused():
    # bench.dt was the first record's, silently: a model built for it mis-scales every other record's time
    with pytest.raises(ValueError, match="same sampling time.*'fast' has dt = 0.25"):
        SysidBenchmark("mine", "my plant", [rec(50)], [rec(30, dt=0.25, name="fast")], n_init=5, unit="V")


def test_time_last_records_and_mixed_channels_are_refused():
    with pytest.raises(ValueError, match="fewer samples than channels.*transpose"):
        SysidBenchmark("mine", "my plant", [rec(1, m=200, p=200)], [], n_init=0, unit="V")  # (1, L) read as (L, m)
    with pytest.raises(ValueError, match="same m inputs and p outputs"):
        SysidBenchmark("mine", "my plant", [rec(50, p=2)], [rec(30, p=1, name="t")], n_init=5, unit="V")
    with pytest.raises(ValueError, match="non-empty list of IORecords"):
        SysidBenchmark("mine", "my plant", [], [rec(30)], n_init=5, unit="V")
