"""Benchmarks by name: loaders of the real benchmarks that ship as files (Cascaded Tanks, F-16 GVT, the Bouc-Wen
test sets here; Wiener-Hammerstein 2009, Silverbox, EMPS, CED, Parallel WH in :mod:`ssmkit.sysid.nlbench`) and the
simulated surrogates (:mod:`ssmkit.sysid.surrogates`).

    bench = load_benchmark("cascaded_tanks", folder="path/to/cascaded_tanks")
    bench.train[0].u, bench.test[0].y, bench.n_init, bench.unit

Files are read from ``folder`` (default ``$SSMKIT_DATA/sysid/<name>``, ``$SSMKIT_DATA`` defaulting to
``~/.cache/ssmkit``) and their SHA-256 checked against the official files; a missing file raises
``FileNotFoundError`` in one line saying what to put where. Splits and initialisation windows follow the
``nonlinear_benchmarks`` package, version 1.0.1.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import pathlib
from typing import Callable

import numpy as np

from ssmkit.sysid.datafiles import benchmark_folder, to_channels as _t
from ssmkit.sysid.nlbench import ced, emps, parallel_wh, silverbox, wiener_hammerstein
from ssmkit.sysid.records import IORecord, Published, SysidBenchmark
from ssmkit.sysid.surrogates import SURROGATES

SHA256 = {
    "cascaded_tanks/dataBenchmark.csv": "ef2388ed822f3aef4aa80d6b0f2b466dd80b361786b3eafc7a2957c31ea323a7",
    "f16gvt/F16Data_FullMSine_Level1.csv": "b72a9d063e392570bb20c26f4763232e30262e5914d946e475e67df40880db6d",
    "f16gvt/F16Data_FullMSine_Level2_Validation.csv": "be172970af0fd0b8804cbcab5e31d0a947d4d79dcf3c7b96d3b5cab3b747cfd4",
    "f16gvt/F16Data_FullMSine_Level3.csv": "0bba7686f392c0ae3e0a99a1760892bb072220b1837acf62899841d1a9895cc5",
    "f16gvt/F16Data_FullMSine_Level4_Validation.csv": "bf064f32cd1c102a5e534ea16b0ce3a4c39afcf0090b33ae3cf6b104131c9aff",
    "f16gvt/F16Data_FullMSine_Level5.csv": "e7239711a005f364753c35c407e7cb3009c074bc40bdc2d7c7b9a439c041fe54",
    "f16gvt/F16Data_FullMSine_Level6_Validation.csv": "3384d9b4f0373f0a311f4b6a355bd948aea8853cd06f72c03ffc18f1504c8568",
    "f16gvt/F16Data_FullMSine_Level7.csv": "e39c464875ff8f116bd3e2eb9a8edad07a0a0449ab607afcfa34bbc4ae07537f",
    "bouc_wen/uval_multisine.mat": "3eb9abc0aef66b97beaf003fbcb45b43a4e28d7e82db5bf8abc1c931b92106ed",
    "bouc_wen/uval_sinesweep.mat": "fefd6c08bbf3b27f13f61a15ea0dd8c63211c5924e99f6ca43760d1f25ce9ed3",
    "bouc_wen/yval_multisine.mat": "05e462f7c508c26c8e69549e2b80ff5acea2828b399175c8bdd3fa70eb9905bc",
    "bouc_wen/yval_sinesweep.mat": "52b49f7ff62487bf75efbed95bf759b06d8bad1127a8e63bc242e119d72bc57b",
}
SOURCE = "nonlinearbenchmark.org (files as committed in forgi86/dynonet)"
# the F-16 files' columns Acceleration1..3, named by where the accelerometer sits (the wing's next to the
# nonlinear interface; Noël & Schoukens 2017): the report's labels
F16_OUTPUTS = ("acceleration 1 (excitation point)", "acceleration 2 (right wing)", "acceleration 3 (payload)")
# the inputs' names (the report's and an exported system's) and their unit where the data's documentation states it:
# Bouc-Wen's u in N (its y the displacement, m); the F-16's Force column and the tanks' pump voltage have no stated unit
F16_INPUT = "shaker force"


def _file(folder: pathlib.Path, key: str, check: bool) -> pathlib.Path:
    path = folder / key.split("/", 1)[1]
    if not path.is_file():
        raise FileNotFoundError(f"{key.split('/')[0]}: {path.name} not found: put the official file in {folder} ({SOURCE})")
    if check:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != SHA256[key]:
            raise ValueError(f"{path} is not the official file: SHA-256 {digest}, expected {SHA256[key]}")
    return path


def _columns(path: pathlib.Path) -> dict[str, np.ndarray]:
    """A benchmark CSV (header row; trailing empty column; the sampling column, ``Ts`` or ``Fs``, filled only on row 1)
    by column: the dense columns through numpy's C parser, the sampling column from the first data row."""
    with open(path, newline="") as f:
        names = [n for n in next(csv.reader(f)) if n]
        first = next(csv.reader(f))
    sparse = [i for i, n in enumerate(names) if n in ("Ts", "Fs")]
    dense = [i for i in range(len(names)) if i not in sparse]
    table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=dense, ndmin=2)  # (L, len(dense))
    cols = {names[i]: table[:, j] for j, i in enumerate(dense)}
    cols.update({names[i]: np.asarray([float(first[i])]) for i in sparse})
    return cols


def cascaded_tanks(folder: str | os.PathLike | None = None, check: bool = True) -> SysidBenchmark:
    """Cascaded Tanks with overflow (Schoukens, Mattsson, Wigren, Noël 2016): real, 1 024 + 1 024 samples, Ts = 4 s;
    estimation uEst → yEst, test uVal → yVal; pump voltage in, lower-tank level sensor (V) out; init window 50.

    Args:
        folder: the folder holding ``dataBenchmark.csv`` (default ``$SSMKIT_DATA/sysid/cascaded_tanks``).
        check: verify the file's SHA-256.

    Returns:
        the benchmark.
    """
    folder = benchmark_folder(folder, "cascaded_tanks")
    cols = _columns(_file(folder, "cascaded_tanks/dataBenchmark.csv", check))
    dt = float(cols["Ts"][0])
    return SysidBenchmark(
        name="cascaded_tanks",
        title="Cascaded Tanks",
        train=[IORecord(_t(cols["uEst"]), _t(cols["yEst"]), dt, "dataBenchmark.csv uEst/yEst")],
        test=[IORecord(_t(cols["uVal"]), _t(cols["yVal"]), dt, "dataBenchmark.csv uVal/yVal")],
        n_init=50,
        unit="V",
        input_names=("pump voltage",),
        output_names=("lower tank level",),  # the water level of the lower tank, as the sensor's voltage
        published=[
            Published("best linear approximation (BLA) reference", 0.757, "issue 15 (its own BLA run)"),
            Published("CT SUBNET (Beintema et al. 2023)", 0.306, "arXiv 2405.10779 state-of-the-art table"),
            Published("grey-box (best published, own protocol)", 0.191, "arXiv 2405.10779"),
            Published("GRU baseline", 0.396, "arXiv 2405.10779"),
            Published("LTI state space baseline", 0.588, "arXiv 2405.10779"),
        ],
        notes="nonlinear_benchmarks 1.0.1 split and init window (50; 1.0.0 used 5).",
    )


def f16(folder: str | os.PathLike | None = None, output_index: int | None = None, check: bool = True) -> SysidBenchmark:
    """F-16 ground vibration test (Noël & Schoukens 2017), full multisine records: estimation levels 1, 3, 5, 7,
    test levels 2, 4, 6 (the ``_Validation`` files); input the shaker force (N), outputs the three accelerations
    (excitation point, right wing next to the nonlinear interface, payload); 73 728 samples at 400 Hz; init window 50.
    (The sine-sweep records of the official split are not in this file set.)

    Args:
        folder: the folder holding ``F16Data_FullMSine_Level{1..7}[_Validation].csv``.
        output_index: keep one acceleration (an int: 0, 1, 2) or None for all three.
        check: verify the files' SHA-256.

    Returns:
        the benchmark.
    """
    folder = benchmark_folder(folder, "f16gvt")
    if output_index is not None and (isinstance(output_index, bool) or not isinstance(output_index, int)
                                     or output_index not in (0, 1, 2)):
        raise ValueError(f"output_index must be 0, 1, 2 or None (all three accelerations); got {output_index!r}")

    kept = (0, 1, 2) if output_index is None else (output_index,)

    def level(k: int, validation: bool) -> IORecord:
        key = f"f16gvt/F16Data_FullMSine_Level{k}{'_Validation' if validation else ''}.csv"
        cols = _columns(_file(folder, key, check))
        outs = [cols[f"Acceleration{i + 1}"] for i in kept]
        return IORecord(_t(cols["Force"]), _t(*outs), 1.0 / float(cols["Fs"][0]), f"FullMSine level {k}")

    return SysidBenchmark(
        name="f16",
        title="F-16 GVT (full multisine levels)",
        train=[level(k, False) for k in (1, 3, 5, 7)],
        test=[level(k, True) for k in (2, 4, 6)],
        n_init=50,
        unit="m/s²",  # one unit for the three accelerations (bench.units: one per output)
        notes="FullMSine levels only (estimation 1,3,5,7; test 2,4,6); no verified published RMSE exists.",
        output_names=tuple(F16_OUTPUTS[i] for i in kept),
        input_names=(F16_INPUT,),
    )


def bouc_wen(folder: str | os.PathLike | None = None, train_periods: int = 5, train_records: int = 1, seed: int = 0,
             noise_rms: float = 0.0, check: bool = True) -> SysidBenchmark:
    """Bouc-Wen (Noël & Schoukens 2016): training records simulated by the benchmark's recipe
    (:func:`ssmkit.sysid.boucwen.training_record`: random-phase multisines, 5–150 Hz, 50 N RMS, 8 192 samples per
    period), the official noiseless test sets read from files (multisine 8 192 samples, sine sweep 153 000), 750 Hz,
    displacement in m, no init window (the official loader does not split). The multisine test is one period of the
    steady-state response (``period`` = 8 192): the official score simulates it from rest, which adds a transient
    that even the true system pays (4.62e-5 m); ``evaluate(..., steady_state=k)`` also scores it in periodic steady
    state.

    Args:
        folder: the folder holding ``uval_multisine.mat``, ``yval_multisine.mat``, ``uval_sinesweep.mat``,
            ``yval_sinesweep.mat``.
        train_periods: periods per training record (5 in the benchmark's example; dynoNet trained on 5).
        train_records: independent training records (seeds seed, seed + 2, ...).
        seed: the first record's multisine seed.
        noise_rms: output noise of the training records (m); the benchmark adds 8e-6 m RMS.
        check: verify the test files' SHA-256.

    Returns:
        the benchmark.
    """
    from scipy.io import loadmat

    from ssmkit.sysid.boucwen import FS, training_record

    for key, value, least in (("train_periods", train_periods, 1), ("train_records", train_records, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{key} must be an int >= {least}; got {value!r}")
    if isinstance(noise_rms, bool) or not isinstance(noise_rms, (int, float)) or not (math.isfinite(noise_rms)
                                                                                     and noise_rms >= 0):
        raise ValueError(f"noise_rms must be a finite number >= 0 (m); got {noise_rms!r}")
    folder = benchmark_folder(folder, "bouc_wen")

    def mat(name: str) -> np.ndarray:
        return loadmat(_file(folder, f"bouc_wen/{name}.mat", check))[name].ravel()

    u_ms = mat("uval_multisine")  # one period (8 192 samples) of the multisine; its output is the steady state
    test = [IORecord(_t(u_ms), _t(mat("yval_multisine")), 1 / FS, "official multisine test", period=u_ms.shape[0]),
            IORecord(_t(mat("uval_sinesweep")), _t(mat("yval_sinesweep")), 1 / FS, "official sine-sweep test")]
    train = []
    for i in range(train_records):
        u, y = training_record(train_periods, seed=seed + 2 * i, noise_rms=noise_rms)
        train.append(IORecord(_t(u), _t(y), 1 / FS, f"simulated multisine, seed {seed + 2 * i}"))
    return SysidBenchmark(
        name="bouc_wen",
        title="Bouc-Wen",
        train=train,
        test=test,
        n_init=0,
        unit="m",
        input_names=("force",),
        input_unit="N",
        output_names=("displacement",),
        published=[
            Published("PNLSS (Esfahani et al. 2017)", 1.87e-5, "forgi86/dynonet paper (arXiv 2006.02250), multisine "
                      "test; below the true system's from-rest score (4.62e-5): most likely not scored from rest on "
                      "every sample", record=test[0].name),
            Published("dynoNet", 4.52e-5, "arXiv 2006.02250, multisine test (the paper's 'mm' is m); its BW_test.py "
                      "simulates from rest and leaves the first 300 samples unscored", record=test[0].name),
            Published("NFIR (Belz et al. 2017)", 16.3e-5, "arXiv 2006.02250, multisine test", record=test[0].name),
        ],
        notes="training data simulated with ssmkit.sysid.boucwen (reproduces the official test output to 3e-13).",
    )


FILE_BENCHMARKS: dict[str, Callable[..., SysidBenchmark]] = {
    "cascaded_tanks": cascaded_tanks,
    "f16": f16,
    "bouc_wen": bouc_wen,
    "wiener_hammerstein": wiener_hammerstein,
    "silverbox": silverbox,
    "emps": emps,
    "ced": ced,
    "parallel_wh": parallel_wh,
}
BENCHMARKS: dict[str, Callable[..., SysidBenchmark]] = {**FILE_BENCHMARKS, **SURROGATES}
SIMULATED_TRAINING = ("bouc_wen",)  # official test files, training records simulated by the benchmark's recipe


def load_benchmark(name: str, folder: str | os.PathLike | None = None, train_records: int = 1) -> SysidBenchmark:
    """A benchmark by name with its default options: the real ones read from files (``cascaded_tanks``, ``f16``,
    ``bouc_wen``, ``wiener_hammerstein``, ``silverbox``, ``emps``, ``ced``, ``parallel_wh``) and the simulated
    surrogates (``wh_surrogate``, ``duffing_surrogate``, ``tanks_surrogate``, ``emps_surrogate``; seed 0).

    Args:
        name: the benchmark.
        folder: where its files are (default ``$SSMKIT_DATA/sysid/<folder name>``); surrogates read no files and
            ignore it.
        train_records: independent training records to simulate, for the benchmarks whose training data are
            simulated by their recipe (``bouc_wen``: 5-period multisines, seeds 0, 2, 4, ...); must be 1 for others.

    Returns:
        the benchmark.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    if isinstance(train_records, bool) or not isinstance(train_records, int) or train_records < 1:
        raise ValueError(f"train_records must be an int >= 1; got {train_records!r}")
    if train_records != 1 and name not in SIMULATED_TRAINING:
        raise ValueError(f"train_records applies to benchmarks with simulated training data {SIMULATED_TRAINING}; "
                         f"{name!r} has fixed estimation records: leave it at 1")
    if name in SURROGATES:
        return SURROGATES[name]()
    if name in SIMULATED_TRAINING:
        return BENCHMARKS[name](folder, train_records=train_records)
    return BENCHMARKS[name](folder)
