"""Probe of 2026-12-05: identifying your own system from your own data (``ssmkit.sysid.userdata``, the generic recipe
``recipe_for_data``, ``ssmkit sysid --data``).

The data come from a known system generated here: a discrete second-order linear system (poles r e^{±jθ}, unit DC
gain, one sample of delay) followed by a static tanh, driven by low-passed Gaussian noise, with white measurement
noise. Each check compares against an independent reference: the arrays written to the CSV (``repr`` of each float64,
which reads back exactly), the sampling time the stamps were written with, a numpy recomputation of the test RMSE from
the simulation, and for the identification the best any linear time-invariant model can do on this system: for a
Gaussian input, x is Gaussian and by Bussgang's theorem the best linear approximation of y = tanh(x) + e is c·x + d,
whose error is uncorrelated with every input sample, so no LTI model predicts y better than c·x + d (c, d fitted here
by least squares on the scored test samples themselves: an optimistic bound). The deep Wiener model must beat it.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy import signal

from ssmkit.cli import main
from ssmkit.sysid import from_arrays, from_csv, recipe_for_data
from ssmkit.sysid.recipes import DATA_RECIPE, Recipe, recipe_for
from ssmkit.sysid.userdata import DEFAULT_N_INIT, TIME_TOLERANCE, read_columns, sampling_time

TS = 0.01  # s
R, THETA = 0.95, 0.2  # poles r e^{±jθ}: a resonance near θ / (2π Ts) = 3.2 Hz, damping ζ ≈ 0.25
NOISE = 0.01  # measurement noise RMS


def known_system(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, x, y), each (n,): u Gaussian noise low-passed by a 2nd-order Butterworth filter at 0.15 of Nyquist and scaled
    so that x has unit RMS; x = G(q) u, G(z) = g z⁻¹ / (1 - 2 r cos θ z⁻¹ + r² z⁻²) with g making G(1) = 1;
    y = tanh(x) + e, e white with RMS ``NOISE``."""
    rng = np.random.default_rng(seed)
    b_lp, a_lp = signal.butter(2, 0.15)
    w = signal.lfilter(b_lp, a_lp, rng.standard_normal(n + 200))[200:]  # the filter's start-up transient cut
    a = np.array([1.0, -2 * R * math.cos(THETA), R * R])
    b = np.array([0.0, a.sum()])  # unit DC gain, one sample of delay
    u = w / signal.lfilter(b, a, w).std()
    x = signal.lfilter(b, a, u)
    return u, x, np.tanh(x) + NOISE * rng.standard_normal(n)


def write_csv(path, columns: dict[str, np.ndarray], delimiter: str = ",", header_lines: str = "",
              fmt=lambda v: repr(float(v))) -> None:
    names = list(columns)
    rows = [delimiter.join(names)]
    for values in zip(*columns.values()):
        rows.append(delimiter.join(fmt(v) if not isinstance(v, str) else v for v in values))
    path.write_text(header_lines + "\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def data():
    u, x, y = known_system(2000, seed=0)
    u2 = np.cos(np.arange(2000) * 0.05)  # a second input and output for the MIMO read-back
    return {"u": u, "x": x, "y": y, "u2": u2, "y2": 2 * x}


# --------------------------------------------------------------------------------------------------- reading files


def test_from_csv_reads_back_the_written_arrays(tmp_path, data):
    n = 2000
    cols = {"t": np.arange(n) * TS, "u1": data["u"], "u2": data["u2"], "y1": data["y"], "y2": data["y2"],
            "note": ["ok"] * n}  # a text column that is not asked for is not read
    path = tmp_path / "run.csv"
    write_csv(path, cols, header_lines="# logged by a test\n\n")
    bench = from_csv(path, inputs=["u1", "u2"], outputs=["y1", "y2"], dt=TS, test_fraction=0.1)
    cut = 1800  # 2000 - round(0.1 * 2000)
    u = np.stack([data["u"], data["u2"]], 1)
    y = np.stack([data["y"], data["y2"]], 1)
    (tr,), (te,) = bench.train, bench.test
    assert tr.u.dtype == torch.float64 and tr.y.shape == (cut, 2) and te.u.shape == (n - cut, 2)
    np.testing.assert_array_equal(tr.u.numpy(), u[:cut])  # exact: repr of a float64 reads back to the same bits
    np.testing.assert_array_equal(tr.y.numpy(), y[:cut])
    np.testing.assert_array_equal(te.u.numpy(), u[cut:])
    np.testing.assert_array_equal(te.y.numpy(), y[cut:])
    assert (tr.name, te.name) == ("run.csv [:1800]", "run.csv [1800:]")
    assert bench.dt == TS and bench.name == "run" and bench.outputs == ("y1", "y2") and bench.published == []
    assert bench.units == ("data units", "data units") and bench.n_init == min(DEFAULT_N_INIT, 200 // 10) == 20
    assert "inputs u1, u2" in bench.notes

    # other separators, a spreadsheet's byte-order mark and quoted names: the same arrays
    for delimiter, name in ((";", "semi.csv"), ("\t", "tab.tsv"), (" ", "space.txt")):
        p = tmp_path / name
        write_csv(p, {"u": data["u"], "y": data["y"]}, delimiter=delimiter)
        got = read_columns(p, ["y", "u"])
        np.testing.assert_array_equal(got["u"], data["u"])
        np.testing.assert_array_equal(got["y"], data["y"])
    p = tmp_path / "excel.csv"
    p.write_bytes(b"\xef\xbb\xbf" + b'"u","y"\n1.5,2\n-3,4e-3\n')
    got = read_columns(p, ["u", "y"])
    np.testing.assert_array_equal(got["u"], [1.5, -3.0])
    np.testing.assert_array_equal(got["y"], [2.0, 4e-3])


def test_several_files_and_a_test_file(tmp_path, data):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    write_csv(a, {"u": data["u"][:800], "y": data["y"][:800]})
    write_csv(b, {"u": data["u"][800:1500], "y": data["y"][800:1500]})
    write_csv(c, {"y": data["y"][1500:], "u": data["u"][1500:]})  # columns in another order
    bench = from_csv([a, b], "u", "y", dt=TS, test_path=c, name="rig", unit="V")
    assert [r.name for r in bench.train] == ["a.csv", "b.csv"] and [r.name for r in bench.test] == ["c.csv"]
    np.testing.assert_array_equal(bench.train[1].y[:, 0].numpy(), data["y"][800:1500])
    np.testing.assert_array_equal(bench.test[0].u[:, 0].numpy(), data["u"][1500:])
    assert bench.name == bench.title == "rig" and bench.units == ("V",) and bench.n_init == 50  # 500 // 10 = 50
    # without a test file the tail of each file is a test record
    tails = from_csv([a, b], "u", "y", dt=TS)
    assert [len(r) for r in tails.train] == [640, 560] and [len(r) for r in tails.test] == [160, 140]
    assert tails.n_init == 14  # a tenth of the shortest test record (140) is below 50


def test_a_time_column_gives_ts(tmp_path, data):
    n = 600
    ts = 1 / 3  # not a finite decimal: the stamps are written rounded to 6 decimals, as a logger does
    t = 12.0 + np.arange(n) * ts
    path = tmp_path / "t.csv"
    write_csv(path, {"time": t, "u": data["u"][:n], "y": data["y"][:n]}, fmt=lambda v: f"{v:.6f}")
    bench = from_csv(path, ["u"], ["y"], time="time")
    # each stamp is off by at most 5e-7 s (the rounding), so the span over L - 1 steps gives Ts to 1e-6 / (L - 1)
    assert abs(bench.dt - ts) <= 1e-6 / (n - 1)
    np.testing.assert_allclose(bench.train[0].u[:, 0].numpy(), np.round(data["u"][:480], 6), rtol=0, atol=5e-7)
    assert sampling_time(np.arange(5) * 0.5 + 3) == 0.5
    # one stamp 0.3 Ts late: the grid's Ts is unchanged (the ends are on it), and that stamp is 0.3 Ts off
    late = np.arange(n) * TS
    late[100] += 0.3 * TS
    with pytest.raises(ValueError, match=r"the stamp of row 101 \(t = 1\.003 s\) lies 0\.003 s \(0\.3 Ts\) off the "
                                         r"uniform grid of Ts = 0\.01 s, more than the tolerance of 0\.001 Ts"):
        sampling_time(late, "late")
    write_csv(path, {"time": late, "u": data["u"][:n], "y": data["y"][:n]})
    with pytest.raises(ValueError, match=r"t.csv, column 'time' is not uniformly sampled: the stamp of row 101"):
        from_csv(path, ["u"], ["y"], time="time")
    # within the tolerance: accepted
    ok = np.arange(n) * TS
    ok[100] += 0.5 * TIME_TOLERANCE * TS
    assert sampling_time(ok) == pytest.approx(TS, rel=1e-12)
    with pytest.raises(ValueError, match="the time stamps must increase; they run from 5.0 to 5.0"):
        sampling_time(np.full(4, 5.0))
    # a test file at another Ts is refused
    other = tmp_path / "other.csv"
    write_csv(other, {"time": np.arange(300) * 0.02, "u": data["u"][:300], "y": data["y"][:300]})
    write_csv(path, {"time": np.arange(n) * TS, "u": data["u"][:n], "y": data["y"][:n]})
    with pytest.raises(ValueError, match=r"other.csv's time column gives Ts = 0.02 s, t.csv's 0.01 s"):
        from_csv(path, ["u"], ["y"], time="time", test_path=other)


def test_bad_files_are_refused_naming_the_place(tmp_path, data):
    path = tmp_path / "d.csv"
    n = 200
    base = {"t": np.arange(n) * TS, "u": data["u"][:n], "y": data["y"][:n]}

    def with_cell(row: int, column: str, text: str):
        cols = {k: [repr(float(v)) for v in vs] for k, vs in base.items()}
        cols[column][row - 1] = text
        write_csv(path, cols)

    with_cell(37, "y", "nan")
    with pytest.raises(ValueError, match=r"d.csv: row 37 \(line 38\), column 'y' is 'nan': every sample must be a "
                                         r"finite number"):
        from_csv(path, "u", "y", dt=TS)
    with_cell(5, "u", "")
    with pytest.raises(ValueError, match=r"row 5 \(line 6\), column 'u' is empty"):
        from_csv(path, "u", "y", dt=TS)
    with_cell(9, "u", "1.2.3")
    with pytest.raises(ValueError, match=r"row 9 \(line 10\), column 'u' is '1.2.3', not a number"):
        from_csv(path, "u", "y", dt=TS)
    write_csv(path, base)
    with pytest.raises(ValueError, match=r"column 'u2' is not in d.csv; its columns are \['t', 'u', 'y'\]"):
        from_csv(path, ["u", "u2"], "y", dt=TS)
    with pytest.raises(ValueError, match="give the sampling time: dt .* or time .*; got dt=None, time=None"):
        from_csv(path, "u", "y")
    with pytest.raises(ValueError, match="one of the two; got dt=0.01, time='t'"):
        from_csv(path, "u", "y", dt=TS, time="t")
    with pytest.raises(ValueError, match="named as inputs and as outputs"):
        from_csv(path, ["u", "y"], "y", dt=TS)
    with pytest.raises(ValueError, match="the time column 't' is also named as an input or an output"):
        from_csv(path, ["u", "t"], "y", time="t")
    with pytest.raises(ValueError, match="give test_path .* or test_fraction .*, not both"):
        from_csv(path, "u", "y", dt=TS, test_path=path, test_fraction=0.2)
    for bad in (0, 1.0, -0.1, True):
        with pytest.raises(ValueError, match=r"test_fraction must be a number in \(0, 1\)"):
            from_csv(path, "u", "y", dt=TS, test_fraction=bad)
    with pytest.raises(ValueError, match=r"n_init must be None or an int in \[0, 40\)"):
        from_csv(path, "u", "y", dt=TS, n_init=40)  # the test record is the last 40 samples
    with pytest.raises(ValueError, match="dt must be the sampling time in seconds"):
        from_csv(path, "u", "y", dt=-1.0)
    path.write_text("0.1,0.2\n0.3,0.4\n")
    with pytest.raises(ValueError, match=r"has no header row: line 1 holds numbers"):
        from_csv(path, "u", "y", dt=TS)
    path.write_text("u,y\n1,2\n3\n")
    with pytest.raises(ValueError, match=r"row 2 \(line 3\) has 1 fields, fewer than the 2 that reach column 'y'"):
        from_csv(path, "u", "y", dt=TS)
    path.write_text("u,y\n")
    with pytest.raises(ValueError, match="holds a header but no rows of data"):
        from_csv(path, "u", "y", dt=TS)
    with pytest.raises(FileNotFoundError, match="no data file at"):
        from_csv(tmp_path / "absent.csv", "u", "y", dt=TS)


def test_from_arrays_splits_and_checks(data):
    u, y = data["u"], data["y"]
    bench = from_arrays(u, y, TS)  # the last 20 % is the test record
    (tr,), (te,) = bench.train, bench.test
    np.testing.assert_array_equal(tr.u[:, 0].numpy(), u[:1600])
    np.testing.assert_array_equal(te.y[:, 0].numpy(), y[1600:])
    assert (tr.name, te.name, bench.n_init, bench.outputs) == ("user_data [:1600]", "user_data [1600:]", 40, ("y",))
    two = from_arrays(np.stack([u, data["u2"]], 1)[:1500], y[:1500, None], TS,
                      test=(np.stack([u, data["u2"]], 1)[1500:], y[1500:]), unit="V", output_names=["level"])
    assert [len(r) for r in two.train + two.test] == [1500, 500] and two.n_inputs == 2 and two.outputs == ("level",)
    np.testing.assert_array_equal(two.test[0].u[:, 1].numpy(), data["u2"][1500:])
    assert from_arrays(torch.as_tensor(u), list(y), TS, test=0.5).test[0].u.shape == (1000, 1)
    with pytest.raises(ValueError, match=r"u is \(2, 2000\): fewer samples than channels.*transposed \(u.T\)"):
        from_arrays(np.stack([u, u]), y, TS)
    bad = y.copy()
    bad[123] = np.nan
    with pytest.raises(ValueError, match="y holds 1 non-finite value.*the first is nan at row 123, channel 0"):
        from_arrays(u, bad, TS)
    with pytest.raises(ValueError, match=r"u and y must have one length L .*got u \(2000, 1\) and y \(1999, 1\)"):
        from_arrays(u, y[:-1], TS)
    with pytest.raises(ValueError, match=r"test must be None .*, a fraction in \(0, 1\) or a pair"):
        from_arrays(u, y, TS, test="last")
    with pytest.raises(ValueError, match=r"the test data must have the training data's m = 1 inputs"):
        from_arrays(u, y, TS, test=(np.stack([u, u], 1), y))
    with pytest.raises(ValueError, match="input_names must be None or 1 distinct non-empty strings"):
        from_arrays(u, y, TS, input_names=["a", "b"])


def test_the_generic_recipe_follows_ts_and_the_data(tmp_path, data):
    bench = from_arrays(data["u"], data["y"], TS)
    r = recipe_for_data(bench)
    assert r.timescale == (TS / 10, TS * 100)  # Δ = Ts/τ in 0.01-10 samples
    assert r.encoder_window == bench.n_init == 40 and r.window == 256
    assert (r.d_model, r.n_layers, r.d_state, r.restarts, r.validation) == (16, 4, 16, 1, "tail")
    assert r == Recipe(**{**DATA_RECIPE.__dict__, "timescale": r.timescale, "encoder_window": 40})
    # 400 samples: 80 to test (n_init 8), 320 to train, of which 256 before the validation tail, 248 after the 8 read
    short = from_arrays(data["u"][:400], data["y"][:400], 4.0)
    assert short.n_init == 8 and recipe_for_data(short).window == 248
    assert recipe_for_data(short).timescale == (0.4, 400.0)
    with pytest.raises(ValueError, match=r"the shortest estimation record \(16 samples\) leaves 12 samples for a "
                                         r"training window after its validation tail \(20%\) and the encoder's 1"):
        recipe_for_data(from_arrays(data["u"][:20], data["y"][:20], TS, n_init=1))  # round(0.8 · 16) - 1
    assert recipe_for("my_rig") == Recipe()  # unknown names keep the dataclass defaults


# --------------------------------------------------------------------------------------------------- identification


def test_identification_beats_every_linear_model(tmp_path, data):
    torch.set_num_threads(1)
    path = tmp_path / "plant.csv"
    write_csv(path, {"t": np.arange(2000) * TS, "u": data["u"], "y": data["y"]})
    bench = from_csv(path, "u", "y", time="t")
    # the generic recipe, cut for a test: a smaller model, shorter windows and a larger step (600 steps, a few s)
    recipe = Recipe(**{**recipe_for_data(bench).__dict__, "d_model": 8, "n_layers": 2, "d_state": 8, "window": 128,
                       "batch_size": 8, "steps": 600, "lr": 1e-2, "patience": None})
    from ssmkit.sysid import evaluate, identify

    model, _ = identify(bench, "s4d", recipe, seed=0)
    scores = evaluate(model, bench)
    n, cut = bench.n_init, 1600
    y_test = data["y"][cut + n:]
    y_sim = scores["simulations"][0][n:, 0].double().numpy()
    rmse = math.sqrt(np.mean((y_sim - y_test) ** 2))  # numpy, from the simulation
    assert scores["records"][0]["rmse"][0] == pytest.approx(rmse, rel=1e-12)
    nrmse = rmse / y_test.std()  # the mean predictor's NRMSE is 1
    x_test = data["x"][cut + n:]
    c, d = np.polyfit(x_test, y_test, 1)  # the best LTI prediction c·x + d (Bussgang), fitted on the test itself
    nrmse_lti = math.sqrt(np.mean((c * x_test + d - y_test) ** 2)) / y_test.std()
    assert 0.25 < nrmse_lti < 0.35  # tanh of a unit-RMS Gaussian: sqrt(1 - corr(x, tanh x)²) ≈ 0.26, plus the noise
    assert nrmse < nrmse_lti, (nrmse, nrmse_lti)
    assert rmse > 0.5 * NOISE  # scored against the noisy measurement: the noise (RMS 0.01) cannot be predicted


# --------------------------------------------------------------------------------------------------- command line


def test_the_command_identifies_a_csv_and_writes_the_report(tmp_path, data, capsys):
    torch.set_num_threads(1)
    path = tmp_path / "plant.csv"
    write_csv(path, {"t": np.arange(1000) * TS, "u": data["u"][:1000], "y": data["y"][:1000]})
    out = tmp_path / "run"
    argv = ["sysid", "--data", str(path), "--inputs", "u", "--outputs", "y", "--time", "t", "--unit", "V", "--steps",
            "3", "--recipe.d_model", "4", "--recipe.n_layers", "1", "--recipe.d_state", "4", "--out", str(out),
            "--input-unit", "N"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| **deep Wiener s4d (simulation)** | plant.csv [800:] |" in printed
    for name in ("results.json", "report.md", "simulation.png", "error_spectrum.png", "model.pt"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    assert res["benchmark"] == "plant" and res["unit"] == "V" and res["outputs"] == ["y"] and res["published"] == []
    assert res["inputs"] == ["u"] and res["input_units"] == ["N"]  # --input-unit (before: no way to give it)
    assert "Input: u (N)." in (out / "report.md").read_text()
    # the user's own test records are not "official" (a named benchmark's report says so)
    assert "Simulation RMSE on the test records after the first 20 samples" in (out / "report.md").read_text()
    assert res["n_init"] == 20 and res["recipe"]["encoder_window"] == 20 and res["recipe"]["steps"] == 3
    assert res["recipe"]["timescale"] == [pytest.approx(TS / 10, rel=1e-9), pytest.approx(TS * 100, rel=1e-9)]
    assert res["data"]["inputs"] == ["u"] and res["data"]["test_fraction"] == 0.2
    assert res["data"]["dt"] == pytest.approx(TS, rel=1e-12)
    (rec,) = res["test"]
    assert rec["name"] == "plant.csv [800:]"
    # the saved model, simulated here from its encoder's state, gives the recorded test RMSE
    from ssmkit.sysid import DeepWiener

    model = DeepWiener.from_checkpoint(torch.load(out / "model.pt", weights_only=True))
    assert model.signals == {"inputs": ("u",), "outputs": ("y",)}  # the columns' names, saved (stop 58)
    u = torch.as_tensor(data["u"][800:1000], dtype=torch.float32)[None, :, None]  # (B, L, m)
    y = torch.as_tensor(data["y"][800:1000], dtype=torch.float32)[None, :, None]
    with torch.no_grad():
        state = model.estimate_state(u[:, :20], y[:, :20])
        y_sim = model(u[:, 20:], state, return_state=False)[0][0, :, 0].double().numpy()
    rmse = math.sqrt(np.mean((y_sim - data["y"][820:1000]) ** 2))
    assert rec["rmse"][0] == pytest.approx(rmse, rel=1e-5)  # float32 model
    assert rec["nrmse"][0] == pytest.approx(rmse / data["y"][820:1000].std(), rel=1e-5)

    # tab-separated files, a test file and --dt, no figures
    path = tmp_path / "plant.tsv"
    write_csv(path, {"u": data["u"][:1000], "y": data["y"][:1000]}, delimiter="\t")
    test_path = tmp_path / "check.tsv"
    write_csv(test_path, {"u": data["u"][1000:1300], "y": data["y"][1000:1300]}, delimiter="\t")
    out2 = tmp_path / "run2"
    assert main(["sysid", "--data", str(path), "--inputs", "u", "--outputs", "y", "--dt", "0.01", "--test-data",
                 str(test_path), "--delimiter", "tab", "--n-init", "10", "--steps", "2", "--recipe.d_model", "4",
                 "--recipe.n_layers", "1", "--recipe.d_state", "4", "--out", str(out2), "--no-plots"]) == 0
    res = json.loads((out2 / "results.json").read_text())
    assert [r["name"] for r in res["test"]] == ["check.tsv"] and res["n_init"] == 10
    assert res["data"]["train_records"] == [{"name": "plant.tsv", "samples": 1000}]
    assert res["data"]["test_files"] == [str(test_path)] and res["data"]["test_fraction"] is None
    assert res["unit"] == "data units" and not (out2 / "simulation.png").exists()


def test_the_command_refuses_unclear_usage(tmp_path, data, capsys):
    path = tmp_path / "plant.csv"
    write_csv(path, {"u": data["u"][:300], "y": data["y"][:300]})
    data_args = ["--data", str(path), "--inputs", "u", "--outputs", "y"]
    cases = [
        (["--model", "s4d"], "give exactly one of --benchmark NAME"),
        (["--benchmark", "cascaded_tanks", *data_args, "--dt", "1"], "got both"),
        (["--benchmark", "cascaded_tanks", "--inputs", "u", "--dt", "1"], "--inputs, --dt describe your own data"),
        (["--data", str(path), "--outputs", "y", "--dt", "1"], "--data needs --inputs"),
        ([*data_args], "--data needs the sampling time: --dt Ts (seconds) or --time COLUMN"),
        ([*data_args, "--dt", "1", "--time", "t"], "one of the two; got both"),
        ([*data_args, "--dt", "1", "--test-data", str(path), "--test-fraction", "0.3"], "not both"),
        ([*data_args, "--dt", "1", "--data-folder", str(tmp_path)], "--data-folder holds a named benchmark's files"),
        (["--data", str(path), "--inputs", "v", "--outputs", "y", "--dt", "1"],
         r"--data: column 'v' is not in plant.csv; its columns are ['u', 'y']"),
        ([*data_args, "--dt", "1", "--recipe.train_records", "2"], "--recipe.train_records 2: your own data"),
    ]
    for argv, message in cases:
        assert main(["sysid", *argv]) == 2, argv
        assert message in capsys.readouterr().err, (argv, message)


# The README's "Your own data" block as proposed (README.md is edited by the lead; until then it is run from here, the
# way tests/test_readme.py runs the sysid block: on a CSV written in a temporary folder, the recipe cut to 2 steps)
def _readme_example() -> str:
    """README's "Your own data" python block (the one that calls ``from_csv``)."""
    import pathlib
    import re

    readme = pathlib.Path(__file__).resolve().parents[2] / "README.md"
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S) if "from_csv(" in b]
    assert len(blocks) == 1, f"expected one README block calling from_csv; found {len(blocks)}"
    return blocks[0]


README_EXAMPLE = _readme_example()


def test_the_readme_example_runs_on_a_csv(tmp_path, monkeypatch, capsys, data):
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "plant.csv", {"t": np.arange(2000) * TS, "u": data["u"], "y": data["y"]})
    code = README_EXAMPLE.replace("recipe_for_data(bench))", "dataclasses.replace(recipe_for_data(bench), steps=2, "
                                  "val_every=1, d_model=4))")
    assert code != README_EXAMPLE
    namespace = {"dataclasses": dataclasses}
    exec(compile(code, "README.md", "exec"), namespace)
    scores_line, shape_line = capsys.readouterr().out.strip().splitlines()[-2:]
    rmse, fit = (ast.literal_eval(part + "]") for part in scores_line.rstrip("]").split("] "))
    assert len(rmse) == len(fit) == 1 and 0 < rmse[0] < 10 and fit[0] < 100  # one value per output: V and %
    assert shape_line == "(4, 16)"  # d_model 4 SISO systems of the recipe's d_state 16
    from ssmkit.sysid import DeepWiener

    saved = DeepWiener.from_checkpoint(torch.load(tmp_path / "plant_model.pt", weights_only=True))
    assert saved.dt == pytest.approx(TS, rel=1e-12) and namespace["bench"].n_init == 40
