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


def test_a_record_refuses_what_is_not_an_experiment():
    # a coverage run found IORecord's checks untested (and dt = inf or True accepted)
    import numpy as np

    u, y = torch.zeros(5, 1), torch.zeros(5, 2)
    cases = [
        (dict(u=np.zeros((5, 1))), r"u must be a \(L, m\) tensor with L >= 1; got ndarray"),
        (dict(y=torch.zeros(5)), r"y must be a \(L, p\) tensor with L >= 1; got \(5,\)"),
        (dict(u=torch.zeros(0, 1), y=torch.zeros(0, 2)), r"u must be a \(L, m\) tensor with L >= 1; got \(0, 1\)"),
        (dict(y=torch.zeros(4, 2)), "u and y must have one length L; got 5 and 4"),
    ] + [(dict(dt=bad), "dt must be the sampling time in seconds, a finite number > 0") for bad in (0.0, -1.0, float("nan"), float("inf"), True, "1")]
    for change, message in cases:
        args = dict(u=u, y=y, dt=1.0) | change
        with pytest.raises(ValueError, match=message):
            IORecord(**args)
    assert IORecord(u, y, np.float32(0.25)).dt == 0.25 and IORecord(u, y, 2).dt == 2  # numpy and int rates are fine
    assert type(IORecord(u, y, np.float32(0.25)).dt) is float and type(IORecord(u, y, 2).dt) is float  # stored as float


def test_a_record_period_must_divide_its_length():
    # probe 27: period = P >= 1 (an int, not a bool) with L % P == 0
    u, y = torch.zeros(12, 1), torch.zeros(12, 1)
    for good in (1, 3, 4, 12):
        assert IORecord(u, y, 1.0, period=good).period == good
    for bad in (0, -3, 5, 24, 2.0, True):
        with pytest.raises(ValueError, match="period must be None or an int P >= 1 dividing"):
            IORecord(u, y, 1.0, period=bad)


def test_a_benchmark_of_one_record_and_the_edges_of_its_checks():
    # probe 27: one training record (bench.dt and the channels read off it), a record with as many samples as
    # channels (time first still), sampling times within 1e-9 relative (rounding) accepted and beyond refused,
    # a test list holding something that is not an IORecord refused.
    one = SysidBenchmark("mine", "my plant", [rec(6, m=2, p=3, dt=0.2)], [], n_init=0, unit="V")
    assert one.dt == 0.2 and (one.n_inputs, one.n_outputs) == (2, 3)
    SysidBenchmark("mine", "my plant", [rec(3, m=3, p=2)], [rec(3, m=3, p=2)], n_init=0, unit="V")
    with pytest.raises(ValueError, match="fewer samples than channels"):
        SysidBenchmark("mine", "my plant", [rec(3, m=3, p=2)], [rec(2, m=3, p=2, name="t")], n_init=0, unit="V")
    with pytest.raises(ValueError, match="fewer samples than channels"):
        SysidBenchmark("mine", "my plant", [rec(3, m=3, p=2)], [rec(2, m=1, p=3, name="t")], n_init=0, unit="V")
    for dt in (0.5, 1e9):  # |dt - dt0| <= 1e-9 dt0 is one sampling time
        SysidBenchmark("mine", "my plant", [rec(5, dt=dt)], [rec(5, dt=dt * (1 + 0.6e-9))], n_init=0, unit="V")
        for other in (dt * (1 + 1.5e-9), dt * (1 - 1.5e-9)):
            with pytest.raises(ValueError, match="same sampling time"):
                SysidBenchmark("mine", "my plant", [rec(5, dt=dt)], [rec(5, dt=other)], n_init=0, unit="V")
    SysidBenchmark("mine", "my plant", [rec(5, dt=1e9)], [rec(5, dt=1e9 + 1.0)], n_init=0, unit="V")  # exactly 1e-9
    with pytest.raises(ValueError, match="non-empty list of IORecords"):
        SysidBenchmark("mine", "my plant", [rec(5)], [rec(5), (torch.zeros(5, 1), torch.zeros(5, 1))], n_init=0,
                       unit="V")
    with pytest.raises(ValueError, match="same m inputs and p outputs"):
        SysidBenchmark("mine", "my plant", [rec(50, m=2)], [rec(30, m=1, name="t")], n_init=5, unit="V")
