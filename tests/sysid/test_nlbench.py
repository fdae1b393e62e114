"""Loaders in the nonlinear_benchmarks 1.0.1 layout, on fixture files written here in the originals' format
(MATLAB files with the official variable names and orientations).

The expected splits, sampling times and init windows are nonlinear_benchmarks 1.0.1's (PyPI wheel,
nonlinear_benchmarks/benchmarks.py: WienerHammerBenchMark [5200:184000] → 100 000 / 78 800, window 50; Silverbox
multisine [40650:127400] split at int(0.75·len), arrow [100:40575] and its first 32 000, Ts 1/610.35, window 50 on
all three tests; EMPS vir → qm, Ts = t[1] − t[0], window 20; CED [:400] / [400:] of u11→z11 and u12→z12, Ts 0.02,
window 10; ParWH window 50, its C-order reshape interleaving the periods). Probe 22 ran the package itself on the same
fixture files (it reads files on disk when its archive's file name exists next to them): arrays, Ts and windows
agreed exactly (max |Δ| = 0), ParWH apart, where the package interleaves as stated."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import savemat

from ssmkit.sysid.benchmarks import BENCHMARKS
from ssmkit.sysid.nlbench import ced, emps, parallel_wh, silverbox, wiener_hammerstein


def test_wiener_hammerstein_split(tmp_path):
    n = 188000
    idx = np.arange(n, dtype=np.float64)[:, None]  # (N, 1) columns, as the original
    savemat(tmp_path / "WienerHammerBenchMark.mat", {"uBenchMark": idx, "yBenchMark": -idx, "fs": np.array([[51200.0]])})
    bench = wiener_hammerstein(tmp_path)
    (tr,), (te,) = bench.train, bench.test
    assert (len(tr), len(te)) == (100000, 78800)
    assert tr.u[0, 0] == 5200 and tr.u[-1, 0] == 105199 and te.u[0, 0] == 105200 and te.u[-1, 0] == 183999
    assert te.y[0, 0] == -105200 and bench.dt == pytest.approx(1 / 51200)
    assert (bench.n_init, bench.unit, bench.scale) == (50, "mV", 1000.0)
    assert any(p.rmse == 0.241 for p in bench.published)


def test_silverbox_split_and_package_layout(tmp_path):
    n = 131072
    idx = np.arange(n, dtype=np.float64)[None, :]  # V1, V2 are (1, N) rows in SNLS80mV.mat
    sub = tmp_path / "Silverbox" / "SilverboxFiles"  # nonlinear_benchmarks' cache layout
    sub.mkdir(parents=True)
    savemat(sub / "SNLS80mV.mat", {"V1": idx, "V2": 2 * idx})
    bench = silverbox(tmp_path)
    (tr,) = bench.train
    ms, arrow, no_ex = bench.test
    assert len(tr) == 65062 and tr.u[0, 0] == 40650 and tr.u[-1, 0] == 40650 + 65061
    assert len(ms) == 21688 and ms.u[0, 0] == 40650 + 65062 and ms.u[-1, 0] == 127399
    assert len(arrow) == 40475 and arrow.u[0, 0] == 100 and arrow.u[-1, 0] == 40574
    assert len(no_ex) == 32000 and no_ex.u[-1, 0] == 100 + 31999 and float(no_ex.y[-1, 0]) == 2 * (100 + 31999)
    assert "arrow full" in arrow.name and "multisine" in ms.name
    assert bench.dt == pytest.approx(1 / 610.35) and bench.n_init == 50 and bench.scale == 1000.0
    with pytest.raises(ValueError, match="131072"):
        savemat(sub / "SNLS80mV.mat", {"V1": idx[:, :1000], "V2": idx[:, :1000]})
        silverbox(tmp_path)


def test_emps_variables_units_and_checks(tmp_path):
    n = 30
    t = (np.arange(n) * 1e-3)[:, None]
    for name, scale in (("DATA_EMPS.mat", 1.0), ("DATA_EMPS_PULSES.mat", 2.0)):
        savemat(tmp_path / name, {"t": t, "qm": scale * t, "qg": 0 * t, "vir": scale * np.sin(t * 1000),
                                   "kp": np.array([[160.18]]), "kv": np.array([[243.45]]), "gtau": np.array([[35.15]])})
    bench = emps(tmp_path, check=False)
    (tr,), (te,) = bench.train, bench.test
    assert bench.dt == pytest.approx(1e-3) and (bench.n_init, bench.unit, bench.scale) == (20, "mm", 1000.0)
    assert np.allclose(tr.u[:, 0].numpy(), np.sin(np.arange(n))) and np.allclose(te.y[:, 0].numpy(), 2 * t[:, 0])
    with pytest.raises(ValueError, match="is not the official file"):
        emps(tmp_path)
    (tmp_path / "DATA_EMPS_PULSES.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"EMPS: DATA_EMPS_PULSES.mat not found: put the official file in"):
        emps(tmp_path, check=False)


def test_ced_two_records_each_split(tmp_path):
    k = np.arange(500, dtype=np.float64)[:, None]
    savemat(tmp_path / "DATAUNIF.MAT", {"u11": k, "z11": k + 0.5, "u12": -k, "z12": -k - 0.5})
    bench = ced(tmp_path)
    assert [len(r) for r in bench.train] == [400, 400] and [len(r) for r in bench.test] == [100, 100]
    assert bench.test[0].u[0, 0] == 400 and bench.test[1].y[-1, 0] == -499.5 and bench.train[1].u[-1, 0] == -399
    assert (bench.dt, bench.n_init, bench.unit, bench.scale) == (0.02, 10, "ticks/s", 1.0)


def test_parallel_wh_concatenates_periods(tmp_path):
    N, P, M, A = 8, 2, 3, 2  # the real arrays are (16384, 2, 20, 5); check=False accepts a small fixture
    u = np.arange(N * P * M * A, dtype=np.float64).reshape(N, P, M, A)
    uv = -np.arange(N * P * 1 * A, dtype=np.float64).reshape(N, P, 1, A)
    sub = tmp_path / "ParWH" / "ParWHFiles"
    sub.mkdir(parents=True)
    savemat(sub / "ParWHData.mat", {"uEst": u, "yEst": 2 * u, "uVal": uv, "yVal": 2 * uv, "fs": np.array([[78125.0]])})
    bench = parallel_wh(tmp_path, check=False)
    assert len(bench.train) == M * A and len(bench.test) == A
    rec = bench.train[1 * A + 1]  # phase 1, amplitude 1 (phase outer, amplitude inner)
    expected = np.concatenate([u[:, 0, 1, 1], u[:, 1, 1, 1]])  # period 1, then period 2
    assert np.array_equal(rec.u[:, 0].numpy(), expected) and np.array_equal(rec.y[:, 0].numpy(), 2 * expected)
    interleaved = u.reshape(N * P, M, A)[:, 1, 1]  # what nonlinear_benchmarks 1.0.1's reshape gives
    assert not np.array_equal(interleaved, expected)
    assert np.array_equal(bench.test[1].u[:, 0].numpy(), np.concatenate([uv[:, 0, 0, 1], uv[:, 1, 0, 1]]))
    assert bench.dt == pytest.approx(1 / 78125.0) and bench.n_init == 50
    with pytest.raises(ValueError, match="16384"):
        parallel_wh(tmp_path)


def test_registry_names_every_loader_and_surrogate():
    assert {"wiener_hammerstein", "silverbox", "emps", "ced", "parallel_wh"} <= set(BENCHMARKS)
    assert {"wh_surrogate", "duffing_surrogate", "tanks_surrogate", "emps_surrogate"} <= set(BENCHMARKS)
