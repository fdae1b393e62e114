"""Irregularly sampled records under mutation (``IORecord``'s ``t=``, intervals, ``held_previous``,
``check_time_resolution``; ``from_arrays``/``from_csv`` with sample times): tests that kill the mutants the other
tests let live (each test's docstring names them), against numpy and the documented rules.

The mutants: R06 (a gap that underflows over dt no longer refused), R11 (a held record keeps ``period``), R19/R20/
R23/R24/R25/R26 (the float32 stamp check's eps, its 1e-4 bound, |t| read as t, the largest gap for the smallest, two
stamps not checked, float16 not checked), U05 (a float32 tensor of stamps to ``from_arrays`` not checked), U07 (Ts
the median gap of the first record only), U08/U18 (``check_times`` taking a repeated stamp or a single one), U10 (the
test files' stamps in the nominal Ts), U17 (the test files' stamps dropped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit.sysid.records import IORecord
from ssmkit.sysid.userdata import check_times, from_arrays, from_csv, median_sampling_time

F64 = torch.float64
BOUND = 1e-4  # the documented bound (records.GAP_RESOLUTION): a gap's rounding error over the smallest gap


def _record(t, dt: float = 1.0, name: str = "r", period=None) -> IORecord:
    n = len(t)
    u = torch.arange(n, dtype=F64)[:, None] + 1
    return IORecord(u, -u, dt, name, period=period, t=t)


def _write(path, t, u, y) -> None:
    path.write_text("t,u,y\n" + "".join(f"{a!r},{b!r},{c!r}\n" for a, b, c in zip(t.tolist(), u.tolist(), y.tolist())))


def test_a_gap_that_underflows_over_dt_is_refused():
    """Kills R06: the smallest subnormal gap 5e-324 s over dt = 10 s rounds to τ = 0, which no layer can take."""
    with pytest.raises(ValueError, match=r"record 'r': the gaps of t over dt = 10.0 s must be finite and > 0"):
        _record(torch.tensor([0.0, 5e-324], dtype=F64), dt=10.0)
    assert _record(torch.tensor([0.0, 5e-324], dtype=F64), dt=1.0).intervals[1].item() == 5e-324  # no underflow


def test_a_held_periodic_record_has_no_period():
    """Kills R11: u'_k = u_{k-1}, u'_0 = u_0 is not periodic with the record's P (u'_0 ≠ u'_P = u_{P-1}), so the held
    record drops ``period`` (the periodic-steady-state score would read a wrong period)."""
    u = torch.tensor([[1.0], [2.0], [3.0], [1.0], [2.0], [3.0]], dtype=F64)
    held = IORecord(u, u, 0.5, "p", period=3).held_previous()
    assert held.period is None
    assert held.u[:, 0].tolist() == [1.0, 1.0, 2.0, 3.0, 1.0, 2.0] and held.u[0, 0] != held.u[3, 0]


def _ratio(stamps: torch.Tensor) -> float:
    """The float32 rule by hand: eps · max |t| over BOUND · the smallest gap, on the stamps as rounded."""
    t = stamps.double().numpy()
    return float(torch.finfo(stamps.dtype).eps * np.abs(t).max() / (BOUND * np.diff(t).min()))


CASES = [  # (float64 times, refused): each far from the bound (ratio < 1/3 or > 3)
    (1000.0 + np.cumsum([0.0, 5.0, 6.0, 5.0, 7.0]), False),  # 4-7 s gaps at 1 000 s: 0.24 (×8 eps: refused)
    (1000.0 + np.cumsum([0.0, 0.4, 40.0, 40.0]), True),  # one 0.4 s gap among 40 s ones: 3.2 (the largest: 0.03)
    (-1080.0 + np.cumsum([0.0, 40.0, 40.0, 0.4]), True),  # negative times: |t| up to 1 080 s
    (np.array([1000.0, 1000.3]), True),  # two stamps
]


@pytest.mark.parametrize("times, refused", CASES)
def test_float32_stamps_are_refused_exactly_past_the_documented_bound(times, refused):
    """Kills R19, R20, R23, R24, R25: float32 stamps (torch and NumPy) are refused when eps · max|t| > 1e-4 · the
    smallest gap (the docstring's rule, by hand on the rounded stamps), and else read as given."""
    stamps = torch.tensor(times, dtype=torch.float32)
    ratio = _ratio(stamps)
    assert (ratio > 3) if refused else (ratio < 1 / 3)  # the case is far from the bound
    for given in (stamps, stamps.numpy()):
        if refused:
            with pytest.raises(ValueError, match=r"record 'r': t is (torch\.)?float32: its stamps up to"):
                _record(given)
        else:
            r = _record(given)
            np.testing.assert_array_equal(r.t.numpy(), stamps.double().numpy())
            np.testing.assert_array_equal(r.intervals.numpy(), np.r_[1.0, np.diff(stamps.double().numpy())])


def test_half_precision_stamps_are_refused():
    """Kills R26 (float16 unchecked): a half-precision stamp is resolved to 2^-10 |t|, over 1e-4 of any gap between
    stamps no larger than |t| (2^-10 > 2 · 1e-4), so even exact small stamps are refused (bfloat16 alike)."""
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(ValueError, match=rf"t is {dtype}: its stamps up to \|t\| = 2 s"):
            _record(torch.tensor([0.0, 1.0, 2.0], dtype=dtype))
    with pytest.raises(ValueError, match=r"t is (torch\.)?float16"):
        _record(np.array([0.0, 1.0, 2.0], dtype=np.float16))


def test_from_arrays_refuses_a_float32_tensor_of_stamps_that_lost_their_gaps():
    """Kills U05: a torch float32 tensor of stamps (1 ms gaps at 1 000 s: resolved to 6e-5 s) is refused by
    from_arrays as a NumPy float32 array is; the float64 stamps pass with their gaps."""
    rng = np.random.default_rng(0)
    t = 1000.0 + np.cumsum(rng.uniform(0.5, 1.5, 50) * 1e-3)
    u, y = rng.standard_normal(50), rng.standard_normal(50)
    with pytest.raises(ValueError, match=r"t: t is torch.float32: .* give the times as float64"):
        from_arrays(u, y, None, t=torch.tensor(t, dtype=torch.float32))
    bench = from_arrays(u, y, None, t=torch.tensor(t, dtype=F64))
    assert bench.dt == float(np.median(np.diff(t)))


def test_check_times_refuses_a_repeated_stamp_and_a_single_one():
    """Kills U08 (a repeated stamp taken) and U18 (one stamp taken): the irregular checks name the row."""
    with pytest.raises(ValueError, match=r"x: the time stamps must increase strictly; row 3 \(t = 1 s\) follows row 2"):
        check_times(np.array([0.0, 1.0, 1.0, 2.0]), "x")
    with pytest.raises(ValueError, match="x: the time stamps must increase strictly; row 3"):
        median_sampling_time(np.array([0.0, 1.0, 1.0, 2.0]), "x")  # not a median of 1 over the gaps 1, 0, 1
    with pytest.raises(ValueError, match=r"x: irregular sampling needs 2 or more time stamps; got 1"):
        check_times(np.array([3.0]), "x")
    np.testing.assert_array_equal(check_times([0, 0.5, 2.0], "x"), [0.0, 0.5, 2.0])


def test_the_nominal_period_pools_the_estimation_files_and_test_files_keep_their_stamps(tmp_path):
    """Kills U07 (Ts from the first record only), U10 (Ts from the test files too) and U17 (the test files' stamps
    dropped): two estimation files of 0.1 s and 0.3 s gaps (60 and 40 gaps: the pooled median 0.1 + ..., not the
    first file's), a test file of 2 s gaps; Ts = numpy's median of the estimation files' gaps pooled."""
    rng = np.random.default_rng(3)
    t1 = np.cumsum(0.1 + 0.01 * rng.uniform(size=61))
    t2 = 50.0 + np.cumsum(0.3 + 0.01 * rng.uniform(size=41))
    t3 = np.cumsum(2.0 + 0.01 * rng.uniform(size=200))
    for name, t in (("a.csv", t1), ("b.csv", t2), ("c.csv", t3)):
        _write(tmp_path / name, t, rng.standard_normal(t.size), rng.standard_normal(t.size))
    want = float(np.median(np.concatenate([np.diff(t1), np.diff(t2)])))
    assert abs(want - float(np.median(np.diff(t1)))) > 1e-4  # the pooled median is not the first file's
    pooled = median_sampling_time([t1, t2], "x")
    assert pooled == want
    bench = from_csv([tmp_path / "a.csv", tmp_path / "b.csv"], "u", "y", time="t", irregular=True,
                     test_path=tmp_path / "c.csv")
    assert bench.dt == want and all(r.dt == want for r in bench.train + bench.test)
    (test,) = bench.test
    np.testing.assert_array_equal(test.t.numpy(), t3)
    np.testing.assert_array_equal(test.intervals.numpy(), np.r_[1.0, np.diff(t3) / want])
