"""Surrogate benchmarks: SIMULATED systems with the structure of real benchmarks, named as such (``*_surrogate``)
and never presented as the real data. Each draws seeded estimation and test records:

    bench = wh_surrogate(seed=0)          # Chebyshev → soft diode clamp → inverse Chebyshev, 51.2 kHz (WH 2009-like)
    bench = duffing_surrogate(seed=0)     # Duffing oscillator, 610.35 Hz (Silverbox-like)
    bench = tanks_surrogate(seed=0)       # two tanks with overflow, Ts = 4 s (Cascaded Tanks-like)
    bench = emps_surrogate(seed=0)        # EMPS physics with the published parameters, closed loop, 1 kHz

The same seed gives the same records; the test records use other seeds than the estimation ones. Splits, init
windows and reporting units copy the real benchmark each one stands for.
"""

from __future__ import annotations

import numpy as np

from ssmkit.sysid.datafiles import to_channels
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.surrogates import duffing, emps, tanks, wh

NOT_REAL = "SIMULATED surrogate, not the benchmark's data; no published results apply."


def _noisy(y: np.ndarray, noise_rms: float, seed: int) -> np.ndarray:
    return y + noise_rms * np.random.default_rng(seed).standard_normal(y.shape) if noise_rms > 0 else y


def _size(name: str, value: int, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}; got {value!r}")


def _check(noise_rms: float, **sizes: int) -> None:
    for name, value in sizes.items():
        _size(name, value, 1)
    if not noise_rms >= 0:
        raise ValueError(f"noise_rms must be >= 0; got {noise_rms!r}")


def wh_surrogate(seed: int = 0, n_train: int = 100000, n_test: int = 78800, n_lead: int = 5200, rms: float = 0.5,
                 noise_rms: float = 0.0, params: wh.WHParameters = wh.WHParameters()) -> SysidBenchmark:
    """A Wiener-Hammerstein surrogate (:mod:`ssmkit.sysid.surrogates.wh`) split as WH 2009: one record from rest,
    the first ``n_lead`` samples dropped, then ``n_train`` for estimation and ``n_test`` for test; init window 50; mV.

    Args:
        seed: the excitation's seed (the noise uses seed + 1; default 0).
        n_train, n_test, n_lead: samples of each part (default 100 000, 78 800 and 5 200, WH 2009's split).
        rms: the input's RMS (V; default 0.5).
        noise_rms: output noise RMS (V; default 0: noiseless).
        params: the filters and nonlinearity.

    Returns:
        the benchmark.
    """
    _check(noise_rms, n_train=n_train, n_test=n_test)
    _size("n_lead", n_lead, 0)  # -5 kept only the record's last 5 samples
    n = n_lead + n_train + n_test
    u = wh.excitation(n, rms=rms, seed=seed)
    y = _noisy(wh.simulate(u, params), noise_rms, seed + 1)
    u, y, dt = u[n_lead:], y[n_lead:], 1.0 / wh.FS
    return SysidBenchmark(
        name="wh_surrogate",
        title="Wiener-Hammerstein surrogate (simulated)",
        train=[IORecord(to_channels(u[:n_train]), to_channels(y[:n_train]), dt, f"simulated WH, seed {seed}")],
        test=[IORecord(to_channels(u[n_train:]), to_channels(y[n_train:]), dt, f"simulated WH, seed {seed}, test part")],
        n_init=50,
        unit="mV",
        scale=1000.0,
        notes=NOT_REAL,
    )


def duffing_surrogate(seed: int = 0, n_period: int = 8192, n_records: int = 10, n_arrow: int = 40475, rms: float = 0.1,
                      noise_rms: float = 0.0, params: duffing.DuffingParameters = duffing.DuffingParameters()) -> SysidBenchmark:
    """A Duffing surrogate of Silverbox (:mod:`ssmkit.sysid.surrogates.duffing`): estimation on ``n_records`` odd
    random-phase multisine realisations (one steady-state period each, after one period of transient), tests on a
    fresh realisation and on an arrow whose end exceeds the training amplitude (twice the RMS); init window 50; mV.

    Args:
        seed: the seed (estimation phases: seed; test phases: seed + 1; arrow: seed + 2; noise: seed + 3 and + 4;
            default 0).
        n_period: samples per multisine period (>= 4; default 8192).
        n_records: estimation realisations (default 10).
        n_arrow: samples of the arrow test (>= 2; default 40 475, Silverbox's full arrow).
        rms: the multisines' RMS (V; default 0.1).
        noise_rms: output noise RMS (V; default 0: noiseless).
        params: the oscillator's coefficients.

    Returns:
        the benchmark.
    """
    _check(noise_rms, n_period=n_period, n_records=n_records, n_arrow=n_arrow)
    _size("n_period", n_period, 4)  # smaller sizes gave all-NaN records
    _size("n_arrow", n_arrow, 2)
    dt = 1.0 / duffing.FS
    u = np.concatenate([duffing.odd_multisine(n_period, n_records, rms=rms, seed=seed),
                        duffing.odd_multisine(n_period, 1, rms=rms, seed=seed + 1)])  # (records + 1, n_period)
    y = duffing.simulate(np.tile(u, 2), params)[:, n_period:]  # the second (steady-state) period
    y = _noisy(y, noise_rms, seed + 3)
    ua = duffing.arrow(n_arrow, peak_rms=2 * rms, seed=seed + 2)
    ya = _noisy(duffing.simulate(ua, params), noise_rms, seed + 4)
    records = [IORecord(to_channels(u[r]), to_channels(y[r]), dt, f"simulated odd multisine, seed {seed}, realisation {r}")
               for r in range(n_records)]
    return SysidBenchmark(
        name="duffing_surrogate",
        title="Duffing surrogate of Silverbox (simulated)",
        train=records,
        test=[IORecord(to_channels(u[-1]), to_channels(y[-1]), dt, f"simulated multisine test, seed {seed + 1}"),
              IORecord(to_channels(ua), to_channels(ya), dt, f"simulated arrow test, seed {seed + 2}")],
        n_init=50,
        unit="mV",
        scale=1000.0,
        notes=NOT_REAL,
    )


def tanks_surrogate(seed: int = 0, n: int = 1024, noise_rms: float = 0.0,
                    params: tanks.TanksParameters = tanks.TanksParameters()) -> SysidBenchmark:
    """A two-tank surrogate of Cascaded Tanks (:mod:`ssmkit.sysid.surrogates.tanks`): one estimation and one test
    record of ``n`` samples at Ts = 4 s, each from rest at its first input (the tanks start full, not empty);
    init window 50; V.

    Args:
        seed: the seed (estimation: seed; test: seed + 1; noise: seed + 2, seed + 3; default 0).
        n: samples per record (default 1024, Cascaded Tanks' record length).
        noise_rms: output noise RMS (V; default 0: noiseless).
        params: the coefficients.

    Returns:
        the benchmark.
    """
    _check(noise_rms, n=n)
    records = []
    for k, part in enumerate(("estimation", "test")):
        u = tanks.excitation(n, seed=seed + k)
        y = _noisy(tanks.simulate(u, params)[1], noise_rms, seed + 2 + k)
        records.append(IORecord(to_channels(u), to_channels(y), tanks.TS, f"simulated tanks {part}, seed {seed + k}"))
    return SysidBenchmark(
        name="tanks_surrogate",
        title="Two-tank surrogate of Cascaded Tanks (simulated)",
        train=records[:1],
        test=records[1:],
        n_init=50,
        unit="V",
        notes=NOT_REAL,
    )


def emps_surrogate(seed: int = 0, n: int = 24841, noise_rms: float = 0.0,
                   params: emps.EMPSParameters = emps.EMPSParameters()) -> SysidBenchmark:
    """An EMPS surrogate (:mod:`ssmkit.sysid.surrogates.emps`): the closed loop tracking random point-to-point
    references, u = controller voltage, y = position; one estimation and one test record of ``n`` samples at 1 kHz;
    init window 20; mm.

    Args:
        seed: the seed (estimation reference: seed; test: seed + 1; noise: seed + 2, seed + 3; default 0).
        n: samples per record (default 24 841, DATA_EMPS's length).
        noise_rms: position noise RMS (m; default 0: noiseless).
        params: the physical and controller parameters.

    Returns:
        the benchmark.
    """
    _check(noise_rms, n=n)
    records = []
    for k, part in enumerate(("estimation", "test")):
        volts, q = emps.simulate(emps.reference(n, seed=seed + k), params)
        q = _noisy(q, noise_rms, seed + 2 + k)
        records.append(IORecord(to_channels(volts), to_channels(q), emps.TS, f"simulated EMPS {part}, seed {seed + k}"))
    return SysidBenchmark(
        name="emps_surrogate",
        title="EMPS surrogate (simulated)",
        train=records[:1],
        test=records[1:],
        n_init=20,
        unit="mm",
        scale=1000.0,
        notes=NOT_REAL + " Closed loop: u is the controller's output.",
    )


SURROGATES = {
    "wh_surrogate": wh_surrogate,
    "duffing_surrogate": duffing_surrogate,
    "tanks_surrogate": tanks_surrogate,
    "emps_surrogate": emps_surrogate,
}

__all__ = ["SURROGATES", "duffing_surrogate", "emps_surrogate", "tanks_surrogate", "wh_surrogate"]
