"""Loaders of the benchmarks distributed by nonlinearbenchmark.org as MATLAB files, in the file layout, splits,
initialisation windows and reporting units of the ``nonlinear_benchmarks`` package, version 1.0.1:

    bench = wiener_hammerstein("path/to/folder")        # WienerHammerBenchMark.mat
    bench = silverbox(...)   # SNLS80mV.mat      bench = emps(...)   # DATA_EMPS.mat, DATA_EMPS_PULSES.mat
    bench = ced(...)         # DATAUNIF.MAT      bench = parallel_wh(...)   # ParWHData.mat

Each loader reads the official file from ``folder`` itself or from the sub-folder where ``nonlinear_benchmarks``
1.0.1 keeps it (``WienerHammerBenchMark/``, ``Silverbox/SilverboxFiles/``, ``EMPS/``, ``CED/``,
``ParWH/ParWHFiles/``), so its cache root ``~/.nonlinear_benchmarks`` can be passed as ``folder``. Nothing is
downloaded: a missing file raises ``FileNotFoundError`` in one line saying what to put where. (The package itself
is not used: it reads files on disk only when its downloaded archive lies next to them, and downloads otherwise.) ``check=True``
verifies the SHA-256 where a digest is pinned (EMPS) and the official sample counts otherwise.

Reporting units (the official submission templates; the 1.0.1 README swaps EMPS and CED): RMSE in mV for
Wiener-Hammerstein, Silverbox and Parallel WH (data in V, ``scale`` 1000), in mm for EMPS (data in m, ``scale``
1000), in ticks/s for CED (unscaled).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from ssmkit.sysid.datafiles import benchmark_folder, check_length, check_sha256, find_file, to_channels
from ssmkit.sysid.records import IORecord, Published, SysidBenchmark

SOURCE = "nonlinearbenchmark.org; the nonlinear_benchmarks package (1.0.1) downloads it"
EMPS_SHA256 = {
    "DATA_EMPS.mat": "6cf6814ae14618795da0101aae2bb97ff0c6351b0501b5492751b02b07facf7e",
    "DATA_EMPS_PULSES.mat": "0eab75bb1f6b16228ee78791343a88bf9bfd9a51036ac9807d7b5fc11c0e1704",
}
B1 = "arXiv 2405.10779 baseline table"
B2 = "arXiv 2405.10779 state-of-the-art table"


def _mat(path: pathlib.Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    return {k: v for k, v in loadmat(path).items() if not k.startswith("__")}


def _record(u: np.ndarray, y: np.ndarray, dt: float, name: str) -> IORecord:
    return IORecord(to_channels(u), to_channels(y), float(dt), name)


def wiener_hammerstein(folder: str | os.PathLike | None = None, check: bool = True) -> SysidBenchmark:
    """Wiener-Hammerstein 2009 (Schoukens, Suykens & Ljung 2009): an electronic circuit, LTI → diode nonlinearity →
    LTI, one record of 188 000 samples at 51.2 kHz (``uBenchMark`` → ``yBenchMark``, V). As nonlinear_benchmarks
    1.0.1: samples 5 200–184 000, the first 100 000 for estimation, the last 78 800 for test; init window 50; mV.

    Args:
        folder: the folder holding ``WienerHammerBenchMark.mat`` (default ``$SSMKIT_DATA/sysid/wiener_hammerstein``).
        check: verify the record's length (188 000 samples).

    Returns:
        the benchmark.
    """
    folder = benchmark_folder(folder, "wiener_hammerstein")
    path = find_file(folder, "WienerHammerBenchMark.mat", ("WienerHammerBenchMark",), "Wiener-Hammerstein 2009", SOURCE)
    mat = _mat(path)
    u, y = mat["uBenchMark"].ravel(), mat["yBenchMark"].ravel()
    if check:
        check_length(path, u.size, 188000)
    dt = 1.0 / float(np.asarray(mat["fs"]).ravel()[0])
    u, y = u[5200:184000], y[5200:184000]
    return SysidBenchmark(
        name="wiener_hammerstein",
        title="Wiener-Hammerstein 2009",
        input_names=("uBenchMark",),
        train=[_record(u[:100000], y[:100000], dt, "WienerHammerBenchMark.mat [5200:105200]")],
        test=[_record(u[100000:], y[100000:], dt, "WienerHammerBenchMark.mat [105200:184000]")],
        n_init=50,
        unit="mV",
        scale=1000.0,
        published=[
            Published("DT SUBNET (Beintema et al. 2021)", 0.241, B2),
            Published("best published in 2020 (Schoukens et al. 2014)", 0.28, "arXiv 2006.02250 (dynoNet paper)"),
            Published("PNLSS", 0.42, B2),
            Published("dynoNet", 0.452, B2 + " (1.2 mV in arXiv 2006.02250 on the older 87 000-sample test)"),
            Published("GRU baseline", 3.97, B1),
            Published("LTI state space baseline", 43.4, B1),
        ],
        notes="nonlinear_benchmarks 1.0.1 split [5200:184000] → 100 000 / 78 800, init window 50.",
    )


def silverbox(folder: str | os.PathLike | None = None, check: bool = True) -> SysidBenchmark:
    """Silverbox (Wigren & Schoukens 2013): an electronic Duffing oscillator, ``SNLS80mV.mat`` (V1 = input,
    V2 = output, V, 131 072 samples at 610.35 Hz). As nonlinear_benchmarks 1.0.1: the multisine block
    [40 650:127 400] split 75/25 into estimation (65 062) and the multisine test (21 688); the arrow tests
    [100:40 575] (full, 40 475 samples, its end extrapolates beyond the training amplitude) and its first 32 000
    (no extrapolation); init window 50; mV. Tests in that order: multisine, arrow full, arrow no-extrapolation
    (1.0.1 names the arrow-full record "test SB multisine"; named correctly here).

    Args:
        folder: the folder holding ``SNLS80mV.mat`` (default ``$SSMKIT_DATA/sysid/silverbox``).
        check: verify the record's length (131 072 samples).

    Returns:
        the benchmark.
    """
    folder = benchmark_folder(folder, "silverbox")
    path = find_file(folder, "SNLS80mV.mat", ("Silverbox/SilverboxFiles", "SilverboxFiles"), "Silverbox", SOURCE)
    mat = _mat(path)
    u, y = mat["V1"].ravel(), mat["V2"].ravel()
    if check:
        check_length(path, u.size, 131072)
    dt = 1.0 / 610.35
    ms_u, ms_y = u[40650:127400], y[40650:127400]
    s = int(len(ms_u) * 0.75)
    arrow_u, arrow_y = u[100:40575], y[100:40575]
    multisine = "test multisine (SNLS80mV.mat multisine, last 25 %)"
    arrow = "test arrow full (SNLS80mV.mat [100:40575])"
    arrow_short = "test arrow no extrapolation (first 32 000 of the arrow)"
    return SysidBenchmark(
        name="silverbox",
        title="Silverbox",
        input_names=("V1",),
        train=[_record(ms_u[:s], ms_y[:s], dt, "SNLS80mV.mat multisine, first 75 %")],
        test=[
            _record(ms_u[s:], ms_y[s:], dt, multisine),
            _record(arrow_u, arrow_y, dt, arrow),
            _record(arrow_u[:32000], arrow_y[:32000], dt, arrow_short),
        ],
        n_init=50,
        unit="mV",
        scale=1000.0,
        published=[
            Published("DT SUBNET (Beintema et al. 2021), multisine test", 0.36, B2, record=multisine),
            Published("DT SUBNET (Beintema et al. 2021), arrow full", 1.4, B2, record=arrow),
            Published("DT SUBNET (Beintema et al. 2021), arrow no extrapolation", 0.32, B2,
                      record=arrow_short),
            Published("PNLSS, arrow full", 0.26, B2, record=arrow),
            Published("GRU baseline, multisine / arrow full / no extrapolation", 1.49, B1 + " (2.80 / 0.947 on the arrows)",
                      record=multisine),
            Published("LTI state space baseline, multisine test", 6.96, B1 + " (14.4 / 6.58 on the arrows)",
                      record=multisine),
        ],
        notes="nonlinear_benchmarks 1.0.1 split; tests: multisine, arrow full, arrow no extrapolation; init window 50.",
    )


def emps(folder: str | os.PathLike | None = None, check: bool = True) -> SysidBenchmark:
    """EMPS (Janot, Gautier & Brunot 2019): a prismatic electro-mechanical positioning system with friction, in
    closed loop (a position and velocity cascade), 24 841 samples at 1 kHz per file. As nonlinear_benchmarks 1.0.1:
    input ``vir`` (the controller's output voltage, force = g_τ·vir), output ``qm`` (motor position, m); estimation
    ``DATA_EMPS.mat``, test ``DATA_EMPS_PULSES.mat``; Ts from the time vector; init window 20; RMSE in mm.

    Args:
        folder: the folder holding both files (default ``$SSMKIT_DATA/sysid/emps``).
        check: verify the files' SHA-256.

    Returns:
        the benchmark.
    """
    folder = benchmark_folder(folder, "emps")
    records = []
    for file_name in ("DATA_EMPS.mat", "DATA_EMPS_PULSES.mat"):
        path = find_file(folder, file_name, ("EMPS",), "EMPS", SOURCE)
        if check:
            check_sha256(path, EMPS_SHA256[file_name])
        mat = _mat(path)
        t = mat["t"].ravel()
        records.append(_record(mat["vir"], mat["qm"], t[1] - t[0], f"{file_name} vir → qm"))
    return SysidBenchmark(
        name="emps",
        title="EMPS",
        input_names=("vir (controller output voltage)",),
        input_unit="V",
        train=records[:1],
        test=records[1:],
        n_init=20,
        unit="mm",
        scale=1000.0,
        published=[
            Published("dynoNet", 2.64, "arXiv 2006.02250 (fit 96.8 %) and " + B2),
            Published("CT SUBNET (Beintema et al. 2023)", 4.61, B2),
            Published("polynomial NARX baseline", 5.17, B1),
            Published("LTI state space baseline", 5.53, B1),
        ],
        notes="closed loop: u = vir is the controller output, not an exogenous input. Init window 20.",
    )


def ced(folder: str | os.PathLike | None = None, check: bool = True) -> SysidBenchmark:
    """Coupled Electric Drives (Wigren & Schoukens 2017): two motors, a belt and a spring, the pulley speed measured
    by a pulse counter insensitive to the sign; ``DATAUNIF.MAT`` (uniform-amplitude PRBS: u11 → z11 low amplitude,
    u12 → z12 high amplitude, 500 samples each at 50 Hz). As nonlinear_benchmarks 1.0.1: the first 400 samples of
    each for estimation, the last 100 of each for test (report both); init window 10; ticks/s.

    Args:
        folder: the folder holding ``DATAUNIF.MAT`` (default ``$SSMKIT_DATA/sysid/ced``).
        check: verify the records' lengths (500 samples).

    Returns:
        the benchmark.
    """
    folder = benchmark_folder(folder, "ced")
    path = find_file(folder, "DATAUNIF.MAT", ("CED",), "CED", SOURCE)
    mat = _mat(path)
    dt = 0.02
    train, test = [], []
    for k, level in (("1", "low"), ("2", "high")):
        u, y = mat[f"u1{k}"].ravel(), mat[f"z1{k}"].ravel()
        if check:
            check_length(path, u.size, 500)
        train.append(_record(u[:400], y[:400], dt, f"u1{k} → z1{k} ({level} amplitude) [:400]"))
        test.append(_record(u[400:], y[400:], dt, f"u1{k} → z1{k} ({level} amplitude) [400:]"))
    return SysidBenchmark(
        name="ced",
        title="Coupled Electric Drives",
        input_names=("u",),
        train=train,
        test=test,
        n_init=10,
        unit="ticks/s",
        published=[
            Published("CT SUBNET (Beintema et al. 2023), test 1 (low amplitude)", 0.115, B2,
                      record=test[0].name),
            Published("CT SUBNET (Beintema et al. 2023), test 2 (high amplitude)", 0.074, B2,
                      record=test[1].name),
            Published("DT SUBNET (Beintema et al. 2021), test 1 / test 2", 0.169, B2 + " (0.117 on test 2)",
                      record=test[0].name),
            Published("LTI state space baseline, test 1 / test 2", 0.224, B1 + " (0.384 on test 2)",
                      record=test[0].name),
        ],
        notes="nonlinear_benchmarks 1.0.1 split (first 400 / last 100 of each record), init window 10 (1.0.0: 4).",
    )


def parallel_wh(folder: str | os.PathLike | None = None, check: bool = True) -> SysidBenchmark:
    """Parallel Wiener-Hammerstein (Schoukens, Tiels et al.): ``ParWHData.mat`` holds uEst/yEst of shape
    (16 384, 2, 20, 5) (samples, periods, phase realisations, amplitude levels) and uVal/yVal (16 384, 2, 1, 5).
    As nonlinear_benchmarks 1.0.1: 100 estimation records (phase outer, amplitude inner) and 5 test records (one per
    amplitude), each the two periods one after the other (32 768 samples); fs from the file; init window 50; mV.

    Deviation: nonlinear_benchmarks 1.0.1 merges the period axis by a C-order reshape, which interleaves the two
    periods sample by sample; here the periods are concatenated in time, as its own comment intends.

    Args:
        folder: the folder holding ``ParWHData.mat`` (default ``$SSMKIT_DATA/sysid/parallel_wh``).
        check: verify the arrays' shapes (16 384 samples, 2 periods, 20 phases, 5 amplitudes).

    Returns:
        the benchmark.
    """
    folder = benchmark_folder(folder, "parallel_wh")
    path = find_file(folder, "ParWHData.mat", ("ParWH/ParWHFiles", "ParWHFiles"), "Parallel Wiener-Hammerstein", SOURCE)
    mat = _mat(path)
    u_est, y_est, u_val, y_val = (np.asarray(mat[k]) for k in ("uEst", "yEst", "uVal", "yVal"))
    if check and (u_est.shape != (16384, 2, 20, 5) or u_val.shape != (16384, 2, 1, 5)):
        raise ValueError(f"{path} is not the official file: uEst {u_est.shape}, uVal {u_val.shape}; expected "
                         f"(16384, 2, 20, 5) and (16384, 2, 1, 5) (check=False skips this)")
    dt = 1.0 / float(np.asarray(mat["fs"]).ravel()[0])

    def periods(a: np.ndarray, phase: int, amp: int) -> np.ndarray:
        return a[:, :, phase, amp].T.ravel()  # period 1 then period 2

    train = [_record(periods(u_est, p, a), periods(y_est, p, a), dt, f"Est phase {p} amplitude {a}")
             for p in range(u_est.shape[2]) for a in range(u_est.shape[3])]
    test = [_record(periods(u_val, 0, a), periods(y_val, 0, a), dt, f"Val amplitude {a}") for a in range(u_val.shape[3])]
    return SysidBenchmark(
        name="parallel_wh",
        title="Parallel Wiener-Hammerstein",
        input_names=("u",),
        train=train,
        test=test,
        n_init=50,
        unit="mV",
        scale=1000.0,
        notes="periods concatenated (1.0.1 interleaves them); the arrow test records are not used, as in 1.0.1. "
              "No verified published RMSE.",
    )
