"""Probe of 2026-12-05: the names of a sysid benchmark's inputs in its report and its exported systems, published
results per output, and the sysid scripts' per-output scales. References: numpy RMSEs from their definition, each
output times its own scale; aggregates over outputs written out by hand; exported matrices against the model's
own equilibria (central differences of the static characteristic).

Findings (fixed; a test each that fails before the fix):

1. *No input names* (``SysidBenchmark``): outputs had names and units, inputs none, so the report, its figures and an
   exported system could not say what drives the model (Bouc-Wen's force in N, the F-16's shaker force, Cascaded
   Tanks' pump voltage, a user's ``--inputs`` columns: ``from_csv`` kept them in the notes text only). Now
   ``input_names`` (m distinct names; default ``input 1`` ...) and ``input_unit`` (the data's unit where the data's
   documentation states it: Bouc-Wen's N, EMPS's V; None otherwise) with ``inputs`` / ``input_units`` per input;
   ``report.md`` names the inputs, ``results.json`` has ``"inputs"`` and ``"input_units"``, both figures' titles
   name them; ``sysid.to_control(model, bench[, u0])`` exports the model (``control.nlsys``) or its linearisations at
   equilibria (``control.ss``) with the benchmark's signal names (a predictor's extra inputs named after the outputs),
   through ``StateSpace.to_control(inputs=, outputs=)`` (new, names only).
2. *``Published.rmse`` one number on any benchmark*: a multi-output benchmark could not hold per-output published
   figures (a tuple crashed ``results_table``: TypeError "unsupported format string passed to tuple.__format__"),
   and one number was printed beside per-output values as if comparable. Now ``rmse`` is one number or p values
   (checked against p, printed in the outputs' order); one number on several outputs names its ``aggregate``
   (``"mean"`` or ``"rms"`` of the per-output RMSEs, one unit only) and the run gets a row of the same aggregate,
   or is marked "not compared" when its source states none. REFERENCE.md and the shared notes give no per-output
   figure for any multi-output benchmark (no verified F-16 RMSE at all), so every shipped entry stays one number on
   a single-output benchmark.
3. *The sysid scripts read ``bench.scale`` as one number*: with a per-output scale ``sysid_ensemble_seeds``'s test,
   validation and out-of-fold scores and ``sysid_peers``' RMSEs raised TypeError (a tuple times a float / tensor),
   and ``sysid_seeds`` scored the test on output 1 only (the F-16: acceleration 1 of 3, beside a validation mean over
   the 3). They now convert output k by ``scales[k]`` (``SysidBenchmark.mean_in_units``, ``commands.
   validation_in_units``) and ``sysid_seeds`` keeps per-output columns.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from ssmkit.sysid import report  # noqa: E402
from ssmkit.sysid.recipes import Recipe  # noqa: E402
from ssmkit.sysid.records import IORecord, Published, SysidBenchmark, aggregate  # noqa: E402
from ssmkit.sysid.userdata import from_csv  # noqa: E402
from ssmkit.sysid.workflow import build_model, signal_names, to_control  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")
F64 = torch.float64


def toy(published=(), scale=1.0, unit="mV", input_names=("valve", "pump"), input_unit=("V", None)):
    """Two inputs, three outputs, one estimation record and two test records (30 and 24 samples), Ts 0.5 s,
    n_init 4."""
    g = torch.Generator().manual_seed(1)

    def rec(n, name):
        return IORecord(torch.randn(n, 2, generator=g, dtype=F64), torch.randn(n, 3, generator=g, dtype=F64), 0.5,
                        name)

    return SysidBenchmark("toy", "Toy", [rec(40, "est")], [rec(30, "test A"), rec(24, "test B")], 4, unit,
                          scale=scale, published=list(published), output_names=("wing", "gap", "sensor"),
                          input_names=input_names, input_unit=input_unit)


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def f16():
    from ssmkit.sysid.benchmarks import f16

    return f16(DATA / "f16gvt", check=False)


@pytest.fixture(scope="module")
def boucwen():
    from ssmkit.sysid.benchmarks import bouc_wen

    return bouc_wen(DATA / "bouc_wen", train_periods=1, check=False)


# --- finding 1: input names --------------------------------------------------------------------------------------


@needs_data
def test_shipped_benchmarks_name_their_inputs(f16, boucwen):
    from ssmkit.sysid.benchmarks import cascaded_tanks

    # the data README: Bouc-Wen's u in N (y the displacement, m); the F-16's input the Force column; no unit stated
    assert (boucwen.inputs, boucwen.input_units, boucwen.outputs) == (("force",), ("N",), ("displacement",))
    assert (f16.inputs, f16.input_units, f16.n_inputs) == (("shaker force",), (None,), 1)
    tanks = cascaded_tanks(DATA / "cascaded_tanks")
    assert (tanks.inputs, tanks.input_units) == (("pump voltage",), (None,))
    assert report.inputs_text(boucwen) == "input: force (N)" and report.inputs_text(f16) == "input: shaker force"


def test_report_text_json_and_figures_name_the_inputs(tmp_path, monkeypatch):
    bench = toy()
    assert (bench.inputs, bench.input_units) == (("valve", "pump"), ("V", None))
    sims = [r.y * 0.5 for r in bench.test]
    scores = {"records": [{"name": r.name, "rmse": [1.0, 2.0, 3.0], "fit": [0.0, 0.0, 0.0]} for r in bench.test],
              "simulations": sims}
    saved = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: saved.update({pathlib.Path(path).name: fig}))
    report.write_report(tmp_path, bench, "lbl", scores, {})
    text = (tmp_path / "report.md").read_text().split("\n")
    assert "Inputs: valve (V); pump." in text
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["inputs"] == ["valve", "pump"] and res["input_units"] == ["V", None]
    for name in ("simulation.png", "error_spectrum.png"):
        assert saved[name]._suptitle.get_text() == "Toy: simulated from the measured inputs: valve (V); pump"
    # defaults and refusals
    plain = toy(input_names=None, input_unit=None)
    assert (plain.inputs, plain.input_units) == (("input 1", "input 2"), (None, None))
    for names in (("a",), ("a", "a"), ("a", "")):
        with pytest.raises(ValueError, match="input_names must be None or m = 2 distinct"):
            toy(input_names=names)
    with pytest.raises(ValueError, match="input_unit must be None or a non-empty string for every input"):
        toy(input_unit=("V", "N", "A"))


def test_from_csv_names_the_inputs_by_their_columns(tmp_path):
    rows = ["t,valve,pump,level"] + [f"{k * 0.1:.1f},{math.sin(k)},{math.cos(k)},{k % 7}" for k in range(60)]
    (tmp_path / "plant.csv").write_text("\n".join(rows) + "\n")
    bench = from_csv(tmp_path / "plant.csv", ["valve", "pump"], ["level"], time="t", unit="m")
    assert (bench.inputs, bench.outputs, bench.input_units) == (("valve", "pump"), ("level",), (None, None))
    # the inputs' units, one for all or one per input (None: not stated); refused when the count is wrong
    bench = from_csv(tmp_path / "plant.csv", ["valve", "pump"], ["level"], time="t", input_unit="V")
    assert bench.input_units == ("V", "V")
    bench = from_csv(tmp_path / "plant.csv", ["valve", "pump"], ["level"], time="t", input_unit=["%", None])
    assert bench.input_units == ("%", None)
    with pytest.raises(ValueError, match="input_unit"):
        from_csv(tmp_path / "plant.csv", ["valve", "pump"], ["level"], time="t", input_unit=["V", "V", "V"])


def test_exported_systems_carry_the_signal_names():
    control = pytest.importorskip("control")
    from ssmkit.analysis.nonlinear import NonlinearSystem

    bench = toy()
    torch.manual_seed(0)
    model = build_model(bench, "s4d", Recipe(d_model=3, n_layers=1, d_state=4, encoder_window=0), dtype=F64)
    nl = to_control(model, bench, name="plant")
    assert (nl.input_labels, nl.output_labels, nl.name) == (["valve", "pump"], ["wing", "gap", "sensor"], "plant")
    (local,) = to_control(model, bench, u0=[0.3, -0.2])
    assert (local.input_labels, local.output_labels, local.dt) == (["valve", "pump"], ["wing", "gap", "sensor"], 0.5)
    # the linearisation's DC gain against central differences of the equilibria (the static characteristic)
    plant, h = NonlinearSystem(model), 1e-5
    slope = np.stack([(plant.static_characteristic(np.array([[0.3 + h * (j == 0), -0.2 + h * (j == 1)]]))
                       - plant.static_characteristic(np.array([[0.3 - h * (j == 0), -0.2 - h * (j == 1)]])))[0] / (2 * h)
                      for j in range(2)], 1)  # (p, m)
    np.testing.assert_allclose(control.dcgain(local), slope, rtol=1e-6, atol=1e-9)
    # a predictor reads [u_t, y_{t-1}]: its extra inputs are named after the outputs
    predictor = build_model(bench, "s4d", Recipe(d_model=3, n_layers=1, d_state=4, encoder_window=0), "prediction")
    assert signal_names(predictor, bench)[0] == ("valve", "pump", "wing (previous sample)", "gap (previous sample)",
                                                 "sensor (previous sample)")
    with pytest.raises(ValueError, match="name names the nonlinear system"):
        to_control(model, bench, u0=[0.0, 0.0], name="x")


def test_statespace_to_control_names_every_system():
    control = pytest.importorskip("control")
    from ssmkit.analysis.statespace import StateSpace

    A = np.array([[[0.5]], [[0.25]]])
    ss = StateSpace(A, np.ones((2, 1, 2)), np.array([[[1.0], [2.0]]] * 2), np.zeros((2, 2, 2)), dt=0.1)
    systems = ss.to_control(inputs=["f", "v"], outputs=["x", "y"])
    for g, sys in enumerate(systems):
        assert (sys.input_labels, sys.output_labels) == (["f", "v"], ["x", "y"])
        # DC gain of x+ = a x + u1 + u2, (x, y) = (1, 2) x: 1 / (1 - a) per input
        np.testing.assert_allclose(control.dcgain(sys), np.array([[1.0, 1.0], [2.0, 2.0]]) / (1 - A[g, 0, 0]))
    assert ss.to_control()[0].input_labels == ["u[0]", "u[1]"]  # python-control's defaults, as before
    for bad in (["f"], ["f", "f"], ["f", ""], "fv"):
        with pytest.raises(ValueError, match="inputs must be None or 2 distinct non-empty names"):
            ss.to_control(inputs=bad)


# --- finding 2: published results per output ---------------------------------------------------------------------


def scored(bench):
    """evaluate()-shaped records with RMSEs chosen so that the aggregates are exact: [1, 5, 7] (mean 13/3, rms 5) and
    [1, 1, 5] (mean 7/3, rms 3)."""
    return {"records": [{"name": "test A", "rmse": [1.0, 5.0, 7.0], "fit": [90.0, 80.0, 70.0]},
                        {"name": "test B", "rmse": [1.0, 1.0, 5.0], "fit": [60.0, 50.0, 40.0]}],
            "simulations": [r.y for r in bench.test]}


def test_per_output_and_aggregate_published_rows_by_hand():
    pubs = [Published("per output", (0.5, 6.0, 0.125), "paper A"), Published("mean one", 4.25, "paper B", "mean"),
            Published("rms one", 5.5, "paper C", aggregate="rms"), Published("bare", 3.0, "paper D")]
    bench = toy(pubs)
    assert aggregate("mean", [1.0, 5.0, 7.0]) == 13 / 3 and aggregate("rms", [1.0, 1.0, 5.0]) == 3.0
    assert report.results_table(bench, "m", scored(bench)).split("\n") == [
        "| method | test record | RMSE (mV) | fit % | source |",
        "|---|---|---|---|---|",
        "| **m** | test A | 1, 5, 7 | 90.00, 80.00, 70.00 | this run |",
        "| **m** | test B | 1, 1, 5 | 60.00, 50.00, 40.00 | this run |",
        "| m | test A, mean over the outputs | 4.333 | – | this run (the aggregate the published values so marked are) |",
        "| m | test B, mean over the outputs | 2.333 | – | this run (the aggregate the published values so marked are) |",
        "| m | test A, root mean square over the outputs | 5 | – | this run (the aggregate the published values so "
        "marked are) |",
        "| m | test B, root mean square over the outputs | 3 | – | this run (the aggregate the published values so "
        "marked are) |",
        "| per output | official test | 0.5, 6, 0.125 | – | paper A |",
        "| mean one | official test, mean over the outputs | 4.25 | – | paper B |",
        "| rms one | official test, root mean square over the outputs | 5.5 | – | paper C |",
        "| bare | official test, one number for 3 outputs (the source states no aggregate: not compared with the "
        "per-output values) | 3 | – | paper D |",
    ]


def test_published_json_and_refusals(tmp_path):
    bench = toy([Published("per output", [0.5, 6.0, 0.125], "paper A"), Published("rms one", 5.5, "C", "rms")])
    report.write_report(tmp_path, bench, "lbl", scored(bench), {}, plots=False)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["published"] == [{"method": "per output", "rmse": [0.5, 6.0, 0.125], "source": "paper A",
                                 "aggregate": None, "record": None},
                                {"method": "rms one", "rmse": 5.5, "source": "C", "aggregate": "rms", "record": None}]
    with pytest.raises(ValueError, match="2 per-output values for p = 3 outputs"):
        toy([Published("x", (1.0, 2.0), "s")])
    with pytest.raises(ValueError, match="per-output values .* take no aggregate"):
        Published("x", (1.0, 2.0, 3.0), "s", "mean")
    with pytest.raises(ValueError, match="aggregate must be None or one of"):
        Published("x", 1.0, "s", "median")
    with pytest.raises(ValueError, match="rmse must be a finite number >= 0"):
        Published("x", float("nan"), "s")
    with pytest.raises(ValueError, match="has no unit"):
        toy([Published("x", 1.0, "s", "mean")], unit=("mV", "V", "V"))


@needs_data
def test_shipped_published_values_stay_single_output(boucwen):
    from ssmkit.sysid.benchmarks import cascaded_tanks

    tanks = cascaded_tanks(DATA / "cascaded_tanks")
    rows = report.results_table(tanks, "m", {"records": [{"name": "t", "rmse": [0.25], "fit": [1.0]}]}).split("\n")
    assert "| CT SUBNET (Beintema et al. 2023) | official test | 0.306 | – | arXiv 2405.10779 state-of-the-art table |" \
        in rows
    assert all(not p.per_output and p.aggregate is None for b in (tanks, boucwen) for p in b.published)


# --- finding 3: the scripts' per-output scales -------------------------------------------------------------------


def scaled_f16(bench, scales=(1000.0, 1.0, 0.5)):
    """The F-16 test records with a per-output scale (as a benchmark reporting acceleration 1 in mm/s² would)."""
    return dataclasses.replace(bench, scale=scales, unit=("mm/s²", "m/s²", "m/s²"))


def by_hand_rmse(sims, ys, n_init):
    e = np.concatenate([(s - y).numpy()[n_init:] for s, y in zip(sims, ys)])
    return np.sqrt(np.mean(e ** 2, axis=0))  # (p,)


@needs_data
def test_ensemble_seeds_scores_per_output_scale(f16, boucwen, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # it imports its sibling sysid_seeds
    script = load_script("sysid_ensemble_seeds")
    for bench in (f16, scaled_f16(f16), boucwen):
        sims = [r.y * 0.9 + 0.01 for r in bench.test]
        ref = by_hand_rmse(sims, [r.y for r in bench.test], bench.n_init)
        want = float(np.mean(ref * np.asarray(bench.scales)))
        assert script._test_score(sims, bench) == pytest.approx(want, rel=1e-12)
        n = 7
        val = float(np.mean(by_hand_rmse(sims, [r.y for r in bench.test], n) * np.asarray(bench.scales)))
        assert script._val_score(sims, bench.test, n, bench) == pytest.approx(val, rel=1e-12)
    # out of fold: run i scored on block i of k of the estimation records
    bench = scaled_f16(f16)
    k = 2
    members = [{"n_enc": 10, "est_sims": [r.y * (1.0 + 0.1 * (i + 1)) for r in bench.train]} for i in range(k)]
    errors = []
    for i, m in enumerate(members):
        for b in script.fold_blocks([len(r) for r in bench.train], k, i):
            lo = max(b.start, 10)
            errors.append((m["est_sims"][b.record][lo:b.stop] - bench.train[b.record].y[lo:b.stop]).numpy())
    ref = np.sqrt(np.mean(np.concatenate(errors) ** 2, axis=0)) * np.asarray(bench.scales)
    assert script._oof(members, bench, k) == pytest.approx(float(ref.mean()), rel=1e-12)


@needs_data
def test_seeds_script_scores_every_output_in_its_unit(f16, monkeypatch):
    script = load_script("sysid_seeds")
    bench = scaled_f16(f16)
    history = {"best_val_rmse": 0.2, "best_val_rmse_per_output": [0.1, 0.2, 0.3]}
    scores = {"records": [{"rmse": [4.0, 1.0, 0.5]}, {"rmse": [2.0, 3.0, 1.5]}, {"rmse": [6.0, 2.0, 1.0]}]}
    columns = script.seed_scores(bench, history, scores)
    assert columns["val_per_output"] == [100.0, 0.2, 0.15]
    assert columns["val"] == pytest.approx((100.0 + 0.2 + 0.15) / 3, rel=1e-15)
    assert columns["test_per_output"] == [4.0, 2.0, 1.0]  # each output's mean over the three test levels
    assert columns["test"] == pytest.approx(7.0 / 3, rel=1e-15)  # (was the mean of output 1 alone: 4.0)
    same = script.seed_scores(f16, {"best_val_rmse": 0.2, "best_val_rmse_per_output": [0.1, 0.2, 0.3]}, scores)
    assert same["val"] == pytest.approx(0.2, rel=1e-15) and same["val_per_output"] == [0.1, 0.2, 0.3]


@needs_data
def test_peers_script_converts_each_output(f16, boucwen):
    script = load_script("sysid_peers")
    bench = scaled_f16(f16)
    assert script.in_units(bench, torch.tensor([0.5, 2.0, 4.0], dtype=F64)) == [500.0, 2.0, 2.0]
    assert script.in_units(boucwen, torch.tensor(3e-5, dtype=F64)) == 3e-5  # one output: a float, as before
