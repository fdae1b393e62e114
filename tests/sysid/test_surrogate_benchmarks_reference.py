"""The four surrogate benchmarks (``ssmkit.sysid.surrogates``) against their records rebuilt here from the simulators
and the documented seeds (the lead's round of stop 43): which excitation, which simulated output, which noise draw and
which slice lands in each record, the sampling time, and the split, init window and unit of the benchmark each one
stands for (REFERENCE.md §4.1)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from ssmkit.sysid.surrogates import (SURROGATES, duffing, duffing_surrogate, emps, emps_surrogate, tanks,
                                     tanks_surrogate, wh, wh_surrogate)
from tests.conftest import signature_defaults


def noise(shape, rms, seed):
    return rms * np.random.default_rng(seed).standard_normal(shape)


def column(record, which):
    values = getattr(record, which).numpy()
    assert values.shape[1] == 1
    return values[:, 0]


def test_wh_records_are_one_record_from_rest_cut_after_the_lead():
    n_lead, n_train, n_test, rms, noise_rms = 30, 200, 120, 0.3, 0.01
    bench = wh_surrogate(seed=5, n_train=n_train, n_test=n_test, n_lead=n_lead, rms=rms, noise_rms=noise_rms)
    n = n_lead + n_train + n_test
    u = wh.excitation(n, rms=rms, seed=5)
    y = wh.simulate(u) + noise(n, noise_rms, 6)
    (train,), (test,) = bench.train, bench.test
    np.testing.assert_array_equal(column(train, "u"), u[n_lead:n_lead + n_train])
    np.testing.assert_array_equal(column(test, "u"), u[n_lead + n_train:])
    np.testing.assert_allclose(column(train, "y"), y[n_lead:n_lead + n_train], rtol=0, atol=1e-15)
    np.testing.assert_allclose(column(test, "y"), y[n_lead + n_train:], rtol=0, atol=1e-15)
    assert bench.dt == pytest.approx(1 / 51200, rel=1e-15)
    assert (bench.n_init, bench.unit, bench.scale) == (50, "mV", 1000.0)
    assert bench.name == "wh_surrogate" and "SIMULATED" in bench.notes
    no_lead = wh_surrogate(seed=5, n_train=n_train, n_test=n_test, n_lead=0, rms=rms)
    np.testing.assert_array_equal(column(no_lead.train[0], "u"), wh.excitation(n - n_lead, rms=rms, seed=5)[:n_train])


def test_duffing_records_are_steady_state_periods_and_an_arrow():
    n_period, n_records, n_arrow, rms, noise_rms = 64, 2, 90, 0.2, 0.003
    bench = duffing_surrogate(seed=3, n_period=n_period, n_records=n_records, n_arrow=n_arrow, rms=rms,
                              noise_rms=noise_rms)
    u = np.concatenate([duffing.odd_multisine(n_period, n_records, rms=rms, seed=3),
                        duffing.odd_multisine(n_period, 1, rms=rms, seed=4)])
    y = np.stack([duffing.simulate(np.tile(row, 2))[n_period:] for row in u]) + noise(u.shape, noise_rms, 6)
    arrow = duffing.arrow(n_arrow, peak_rms=2 * rms, seed=5)
    y_arrow = duffing.simulate(arrow) + noise(n_arrow, noise_rms, 7)
    assert len(bench.train) == n_records and len(bench.test) == 2
    for r, record in enumerate(bench.train + bench.test[:1]):
        np.testing.assert_array_equal(column(record, "u"), u[r])
        np.testing.assert_allclose(column(record, "y"), y[r], rtol=0, atol=1e-14)
    np.testing.assert_array_equal(column(bench.test[1], "u"), arrow)
    np.testing.assert_allclose(column(bench.test[1], "y"), y_arrow, rtol=0, atol=1e-14)
    assert bench.dt == pytest.approx(1 / 610.35, rel=1e-12)
    assert (bench.n_init, bench.unit, bench.scale) == (50, "mV", 1000.0)


@pytest.mark.parametrize("make, simulate, drive_of, dt, n_init, unit, scale", [
    (tanks_surrogate, lambda u: tanks.simulate(u)[1], tanks.excitation, 4.0, 50, "V", 1.0),
    (emps_surrogate, lambda r: emps.simulate(r)[1], emps.reference, 1e-3, 20, "mm", 1000.0)])
def test_two_record_surrogates_draw_estimation_and_test_from_their_seeds(make, simulate, drive_of, dt, n_init, unit,
                                                                        scale):
    n, noise_rms = 150, 0.02
    bench = make(seed=7, n=n, noise_rms=noise_rms)
    (train,), (test,) = bench.train, bench.test
    for k, record in enumerate((train, test)):
        drive = drive_of(n, seed=7 + k)
        y = simulate(drive) + noise(n, noise_rms, 9 + k)
        if make is tanks_surrogate:
            np.testing.assert_array_equal(column(record, "u"), drive)
        else:  # u is the controller's voltage in the loop that tracks the reference
            np.testing.assert_array_equal(column(record, "u"), emps.simulate(drive)[0])
        np.testing.assert_allclose(column(record, "y"), y, rtol=0, atol=1e-15)
    assert bench.dt == dt and (bench.n_init, bench.unit, bench.scale) == (n_init, unit, scale)


def test_defaults_are_the_real_benchmarks_splits_and_the_documented_ones():
    """Sizes from REFERENCE.md §4.1 (WH 2009: samples 5 200-184 000 → 100 000 / 78 800; Silverbox's arrow 40 475 and
    its 8 192-sample multisine periods, 10 realisations; Cascaded Tanks 1 024 samples; DATA_EMPS 24 841); seeds 0,
    noiseless and the documented input levels."""
    expected = {
        wh_surrogate: {"seed": 0, "n_train": 100000, "n_test": 78800, "n_lead": 5200, "rms": 0.5, "noise_rms": 0.0},
        duffing_surrogate: {"seed": 0, "n_period": 8192, "n_records": 10, "n_arrow": 40475, "rms": 0.1,
                            "noise_rms": 0.0},
        tanks_surrogate: {"seed": 0, "n": 1024, "noise_rms": 0.0},
        emps_surrogate: {"seed": 0, "n": 24841, "noise_rms": 0.0},
    }
    for make, values in expected.items():
        defaults = signature_defaults(make)
        assert {k: defaults[k] for k in values} == values
        doc = " ".join(make.__doc__.split())
        assert "default 0: noiseless" in doc and re.search(r"default 0\)", doc)
    assert SURROGATES == {"wh_surrogate": wh_surrogate, "duffing_surrogate": duffing_surrogate,
                          "tanks_surrogate": tanks_surrogate, "emps_surrogate": emps_surrogate}
    import ssmkit.sysid.surrogates as surrogates

    assert sorted(surrogates.__all__) == ["SURROGATES", "duffing_surrogate", "emps_surrogate", "tanks_surrogate",
                                          "wh_surrogate"]


@pytest.mark.parametrize("make, sizes", [(wh_surrogate, ("n_train", "n_test")),
                                         (duffing_surrogate, ("n_period", "n_records", "n_arrow")),
                                         (tanks_surrogate, ("n",)), (emps_surrogate, ("n",))])
def test_sizes_and_noise_levels_are_checked_by_name(make, sizes):
    for name in sizes:
        for bad in (0, -3, 2.0, True):
            with pytest.raises(ValueError, match=rf"^{name} must be an int >= 1; got {re.escape(repr(bad))}$"):
                make(**{name: bad})
    for bad in (-1e-9, math.nan):
        with pytest.raises(ValueError, match=r"^noise_rms must be >= 0; got "):
            make(noise_rms=bad)


def test_the_smallest_sizes_are_accepted():
    assert [len(r) for r in wh_surrogate(n_train=1, n_test=1, n_lead=2).train] == [1]
    assert [len(r) for r in tanks_surrogate(n=1).train + emps_surrogate(n=1).test] == [1, 1]
    bench = duffing_surrogate(n_period=4, n_records=1, n_arrow=2)
    assert [len(r) for r in bench.train + bench.test] == [4, 4, 2]
    assert all(np.isfinite(r.y.numpy()).all() and np.isfinite(r.u.numpy()).all() for r in bench.train + bench.test)


def test_duffing_sizes_that_gave_nan_records_are_refused():
    # a 1-sample arrow (no spread to normalise) and a period of 3 or fewer samples (no odd line) gave all-NaN inputs
    for name, bad, least in (("n_period", 3, 4), ("n_period", 1, 4), ("n_arrow", 1, 2)):
        with pytest.raises(ValueError, match=rf"^{name} must be an int >= {least}; got {bad}$"):
            duffing_surrogate(**{name: bad})
    with pytest.raises(ValueError, match=r"^an arrow needs n >= 2 samples .*; got n = 1$"):
        duffing.arrow(1)
    for n, fmax in ((3, 200.0), (64, 5.0)):  # no odd line below Nyquist, or none below fmax (f0 = 9.5 Hz)
        with pytest.raises(ValueError, match=rf"^no odd line f0 \(2k \+ 1\) .* got n = {n}$"):
            duffing.odd_multisine(n, fmax=fmax)
    line = duffing.odd_multisine(64, fmax=duffing.FS / 64)[0]  # only f0 itself: one sine at the RMS
    spectrum = np.abs(np.fft.rfft(line))
    assert spectrum[0] < 1e-12 and spectrum[2:].max() < 1e-12 * spectrum[1]
    np.testing.assert_allclose(line.std(), 0.1, rtol=1e-12)


def test_wh_lead_may_be_zero_but_not_negative():
    # n_lead = -5 was accepted and kept only the record's last 5 samples before the split
    for bad in (-5, 1.5, False):
        with pytest.raises(ValueError, match=rf"^n_lead must be an int >= 0; got {re.escape(repr(bad))}$"):
            wh_surrogate(n_train=10, n_test=10, n_lead=bad)
