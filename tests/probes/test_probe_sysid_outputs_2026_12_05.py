"""Probe of 2026-12-05: the outputs of a multi-output identification run in its report, the units they are reported
in, and the ``ssmkit sysid --recipe.<field> null`` options that have no None meaning. References are numpy: the
measured and simulated columns times each output's scale, |DFT| / L by the direct sum, RMSEs from their definition,
the F-16 test file read with Python's ``csv`` module; for the nulls, what the workflow itself does with each None.

Findings (fixed; a test each that fails before the fix):

1. *The figures of a multi-output report drew output 1 only* (``report.write_report``): on the F-16 GVT benchmark
   (three accelerations, three test levels) ``simulation.png`` had 3 panels, one per test level, all of
   acceleration 1, and ``error_spectrum.png`` one panel of acceleration 1; accelerations 2 and 3 (the wing and the
   payload, the outputs next to the nonlinearity) were scored in the table but never drawn. Now
   ``simulation.png`` has one panel (row) per test record and output (9 on the F-16, record by record), titled with
   the record's and the output's names, the output's unit on the y axis, and ``error_spectrum.png`` one panel per
   output holding every test record's spectra (``report.simulation_figure``, ``report.spectrum_figure``).
2. *One ``unit`` and one ``scale`` for every output* (``SysidBenchmark``): outputs in different units (a position in
   m beside a current in A) could not be declared; a tuple ``scale`` made ``evaluate`` raise TypeError ("can't
   multiply sequence by non-int of type 'float'"). ``unit`` and ``scale`` now take one value for every output (as
   before; every shipped benchmark declares one string, the F-16's accelerations sharing m/s²) or a tuple of one
   per output; ``bench.units`` / ``bench.scales`` have one per output either way, and new ``output_names`` name the
   outputs (the F-16's by accelerometer position; default ``output 1``, ...). ``evaluate`` converts output k by
   its own scale (test RMSE, MAE, one-step RMSE), as does ``ssmkit sysid`` for the validation RMSEs (per output and
   per restart). ``results.json`` keeps ``"unit"`` a string (the shared unit, or the units joined with ", ":
   readers of earlier files keep working) and adds ``"units"`` and ``"outputs"``; ``report.md`` names the outputs
   in the order of the table's values when there are several. Bad values are refused by name (wrong count, an empty
   unit, a scale <= 0).
3. *``ssmkit sysid --recipe.<field> null`` was accepted for every recipe field* (each typed Optional on the command
   line): ``--recipe.d_state null`` or ``--recipe.censor null`` passed the parser, the data were read, and the
   workflow refused the None by name afterwards (with no data folder: "dataBenchmark.csv not found" instead of the
   bad option). The parser now refuses a null with a usage error naming the field and saying it cannot be null, for
   every field whose ``Recipe`` annotation admits no None (read from the annotations, ``commands.takes_null``); the
   fields whose None has a meaning still take it. Two fields took a None the annotation did not show:
   ``activation`` (None: linear blocks) and ``patience`` (None: no early stopping); they are annotated ``| None``
   now. Checked field by field: a null is refused at parsing exactly where ``identify`` refuses the None.

Reported, not fixed here (outside ``ssmkit.sysid``): ``ssmkit.train.fit`` with ``early_stopping`` and no validation
split still trains to ``max_steps`` without a word (``src/ssmkit/train/run.py``; pinned by
tests/train/test_module_run_reference.py). ``SimulationFit.patience`` without validation does the same, but its
default is 20, so an unset patience cannot be told from a set one there.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import typing
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("jsonargparse")

from ssmkit.cli import main  # noqa: E402
from ssmkit.sysid import report  # noqa: E402
from ssmkit.sysid.commands import _parser, recipe_from_args  # noqa: E402
from ssmkit.sysid.recipes import Recipe  # noqa: E402
from ssmkit.sysid.records import IORecord, SysidBenchmark  # noqa: E402
from ssmkit.sysid.wiener import DeepWiener  # noqa: E402
from ssmkit.sysid.workflow import evaluate, identify  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")
F64 = torch.float64


def three_outputs(units=("m/s²", "mm", "V"), scales=(1.0, 1000.0, 1.0), names=None):
    """One input, three outputs of different sizes, two test records of 40 and 33 samples, Ts 0.25 s, n_init 5."""
    g = torch.Generator().manual_seed(0)

    def rec(n, name):
        u = torch.randn(n, 1, generator=g, dtype=F64)
        y = torch.randn(n, 3, generator=g, dtype=F64) * torch.tensor([2.0, 1e-3, 50.0], dtype=F64)
        return IORecord(u, y, 0.25, name)

    named = {} if names is None else {"output_names": names}
    return SysidBenchmark("three", "Three outputs", [rec(60, "est")], [rec(40, "test A"), rec(33, "test B")], 5,
                          units, scale=scales, **named)


def by_hand_scores(bench, sims, scales):
    """evaluate()'s records for given simulations: RMSE per output after n_init, × the output's scale; fit %."""
    records = []
    for r, s in zip(bench.test, sims):
        e = (s - r.y).numpy()[bench.n_init:]
        y = r.y.numpy()[bench.n_init:]
        rmse = np.sqrt(np.mean(e ** 2, axis=0))
        records.append({"name": r.name, "rmse": list(rmse * np.asarray(scales)),
                        "fit": list(100 * (1 - rmse / y.std(axis=0)))})
    return {"records": records, "simulations": sims}


def spectrum(x: np.ndarray) -> np.ndarray:
    """|DFT| / L of x at bins 1 .. L // 2, by the sum."""
    n = len(x)
    return np.abs([np.sum(x * np.exp(-2j * np.pi * m * np.arange(n) / n)) for m in range(1, n // 2 + 1)]) / n


def captured_report(monkeypatch, tmp_path, bench, scores):
    """write_report with the figures kept (matplotlib Agg figures, not pixels): (written, figures by file name)."""
    saved = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: saved.update({pathlib.Path(path).name: fig}))
    written = report.write_report(tmp_path, bench, "lbl", scores, {})
    return written, saved


# --- finding 1: every output drawn -------------------------------------------------------------------------------


def test_the_report_draws_every_output_in_its_own_unit(tmp_path, monkeypatch):
    sims = None
    for units, scale, names in ((("mV",) * 3, [1000.0] * 3, None),  # one unit for every output, as declared before
                                (("m/s²", "mm", "V"), [1.0, 1000.0, 1.0], ("wing", "gap", "sensor"))):
        bench = three_outputs(units[0] if names is None else units, scale[0] if names is None else tuple(scale),
                              names)
        names = names or ("output 1", "output 2", "output 3")
        sims = [r.y * torch.tensor([0.5, -1.0, 0.9], dtype=F64) + 0.1 for r in bench.test]
        written, figs = captured_report(monkeypatch, tmp_path, bench, by_hand_scores(bench, sims, scale))
        assert written == ["results.json", "report.md", "simulation.png", "error_spectrum.png"]
        axes = figs["simulation.png"].axes
        assert len(axes) == 6  # 2 test records × 3 outputs (output 1 only before: 2)
        for i, (r, s) in enumerate(zip(bench.test, sims)):
            for k in range(3):
                ax = axes[3 * i + k]
                y, y_sim = r.y[:, k].numpy(), s[:, k].numpy()
                measured, simulated, error = ax.get_lines()
                np.testing.assert_allclose(measured.get_xdata(), 0.25 * np.arange(len(r)), rtol=0, atol=1e-12)
                np.testing.assert_allclose(measured.get_ydata(), scale[k] * y, rtol=1e-12, atol=0)
                np.testing.assert_allclose(simulated.get_ydata(), scale[k] * y_sim, rtol=1e-12, atol=0)
                np.testing.assert_allclose(error.get_ydata(), scale[k] * (y_sim - y), rtol=1e-12, atol=1e-15)
                assert ax.get_ylabel() == units[k] and ax.get_title() == f"Three outputs: {r.name}, {names[k]}"
                (span,) = ax.patches
                assert span.get_x() + span.get_width() == 5 * 0.25  # the init window
        spectra = figs["error_spectrum.png"].axes
        assert len(spectra) == 3  # one panel per output (one, output 1's, before)
        for k, ax in enumerate(spectra):
            lines = ax.get_lines()
            assert len(lines) == 4 and ax.get_ylabel() == f"|DFT| / L ({units[k]})" and names[k] in ax.get_title()
            for i, (r, s) in enumerate(zip(bench.test, sims)):
                y = scale[k] * r.y[5:, k].numpy()
                e = scale[k] * (s[5:, k] - r.y[5:, k]).numpy()
                np.testing.assert_allclose(lines[2 * i].get_ydata(), spectrum(y - y.mean()), rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(lines[2 * i + 1].get_ydata(), spectrum(e), rtol=1e-9, atol=1e-12)
                f = np.arange(1, len(y) // 2 + 1) / (len(y) * 0.25)
                np.testing.assert_allclose(lines[2 * i].get_xdata(), f, rtol=1e-12)


@needs_data
def test_the_f16_report_has_a_panel_per_acceleration_and_test_level(tmp_path, monkeypatch):
    from ssmkit.sysid.benchmarks import f16

    bench = f16(DATA / "f16gvt")
    sims = [0.5 * r.y for r in bench.test]
    _, figs = captured_report(monkeypatch, tmp_path, bench, by_hand_scores(bench, sims, [1.0] * 3))
    axes = figs["simulation.png"].axes
    assert len(axes) == 9 and len(figs["error_spectrum.png"].axes) == 3  # before: 3 and 1, acceleration 1 only
    names = ("acceleration 1 (excitation point)", "acceleration 2 (right wing)", "acceleration 3 (payload)")
    assert bench.outputs == names and bench.units == ("m/s²",) * 3 and bench.unit == "m/s²"
    assert f16(DATA / "f16gvt", output_index=2).outputs == names[2:]
    with open(DATA / "f16gvt" / "F16Data_FullMSine_Level2_Validation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for k in range(3):  # the first test record, level 2: its three panels are the file's three accelerations
        column = np.array([float(row[f"Acceleration{k + 1}"]) for row in rows])
        measured, simulated, _ = axes[k].get_lines()
        assert np.array_equal(measured.get_ydata(), column) and np.allclose(simulated.get_ydata(), 0.5 * column)
        assert axes[k].get_title().endswith(f"FullMSine level 2, {names[k]}") and axes[k].get_ylabel() == "m/s²"
    assert [ax.get_title().split(": ")[1] for ax in axes[3:6]] == [f"FullMSine level 4, {n}" for n in names]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["unit"], results["units"], results["outputs"]) == ("m/s²", ["m/s²"] * 3, list(names))


# --- finding 2: a unit and a scale per output --------------------------------------------------------------------


def test_evaluate_reports_each_output_in_its_own_unit():
    bench = three_outputs()  # before: evaluate raised TypeError on the tuple scale
    torch.manual_seed(0)
    model = DeepWiener(1, 3, d_model=2, n_layers=1, layer="s4d", layer_options={"d_state": 2}, dtype=F64)
    scores = evaluate(model, bench)
    for r, rec, sim in zip(bench.test, scores["records"], scores["simulations"]):
        e = (sim - r.y).numpy()[5:]
        want = np.sqrt(np.mean(e ** 2, axis=0)) * [1.0, 1000.0, 1.0]
        np.testing.assert_allclose(rec["rmse"], want, rtol=1e-12)
        np.testing.assert_allclose(rec["mae"], np.mean(np.abs(e), axis=0) * [1.0, 1000.0, 1.0], rtol=1e-12)
    assert bench.units == ("m/s²", "mm", "V") and bench.scales == (1.0, 1000.0, 1.0)
    one = dataclasses.replace(bench, unit="V", scale=1000.0)  # one for every output, as before
    assert (one.unit, one.units, one.scales, one.outputs) == ("V", ("V",) * 3, (1000.0,) * 3,
                                                              ("output 1", "output 2", "output 3"))


def test_results_json_and_the_table_with_units_per_output(tmp_path):
    bench = three_outputs(names=("wing", "gap", "sensor"))
    sims = [r.y + 0.01 for r in bench.test]
    report.write_report(tmp_path, bench, "lbl", by_hand_scores(bench, sims, [1.0, 1000.0, 1.0]), {}, plots=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["unit"] == "m/s², mm, V"  # still one string for earlier readers; per output in "units"
    assert (results["units"], results["outputs"]) == (["m/s²", "mm", "V"], ["wing", "gap", "sensor"])
    np.testing.assert_allclose(results["test"][0]["rmse"], [0.01, 10.0, 0.01], rtol=1e-9)
    text = (tmp_path / "report.md").read_text()
    assert "| method | test record | RMSE (m/s², mm, V) | fit % | source |" in text
    assert "Outputs, in the order of each cell's values: wing (m/s²); gap (mm); sensor (V)." in text


def test_a_unit_scale_or_names_of_the_wrong_size_are_refused():
    with pytest.raises(ValueError, match=r"unit must be a non-empty string for every output or a tuple of p = 3 "
                                         r"of them, one per output; got \('V', 'm'\)"):
        three_outputs(units=("V", "m"))
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0 for every output or a tuple of p = 3"):
        three_outputs(scales=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0 .* got 0.0"):
        three_outputs(scales=0.0)
    with pytest.raises(ValueError, match=r"unit must be a non-empty string .* got ''"):
        three_outputs(units="")
    with pytest.raises(ValueError, match=r"output_names must be None or p = 3 distinct non-empty strings, one per output"):
        three_outputs(names=["a", "b"])
    with pytest.raises(ValueError, match=r"values must hold one number per output \(p = 3\); got 2"):
        three_outputs().in_units([1.0, 2.0])


def test_sysid_converts_the_validation_rmses_output_by_output(tmp_path, monkeypatch):
    from ssmkit.sysid import benchmarks, workflow

    bench = three_outputs()

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def is_stable(self):
            return True

        def spectral_radius(self):
            return 0.5

        def checkpoint(self, **extra):
            return {"stub": True}

    per = [0.5, 0.002, 4.0]  # data units
    runs = [{"seed": s, "best_val_nrmse": 0.1, "best_val_rmse": sum(per) / 3, "best_val_rmse_per_output": per,
             "best_step": 1, "steps": 2, "seconds": 0.0} for s in (0, 1)]
    history = {"steps": 2, "best_step": 1, "best_val_rmse": sum(per) / 3, "best_val_nrmse": 0.1,
               "best_val_rmse_per_output": per, "restarts": runs, "seed": 1}
    sims = [r.y for r in bench.test]
    monkeypatch.setattr(workflow, "identify", lambda *a, **k: (Stub(), history))
    monkeypatch.setattr(workflow, "evaluate", lambda *a, **k: by_hand_scores(bench, sims, [1.0, 1000.0, 1.0]))
    monkeypatch.setattr(benchmarks, "load_benchmark", lambda *a, **k: bench)
    assert main(["sysid", "--benchmark", "three", "--out", str(tmp_path), "--no-plots"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    want = [0.5, 2.0, 4.0]  # × (1, 1000, 1)
    np.testing.assert_allclose(res["best_val_rmse_per_output"], want, rtol=1e-12)
    assert res["best_val_rmse"] == pytest.approx(sum(want) / 3, rel=1e-12)  # the mean of the converted RMSEs
    for run in res["restarts"]:
        np.testing.assert_allclose(run["best_val_rmse_per_output"], want, rtol=1e-12)
        assert run["best_val_rmse"] == pytest.approx(sum(want) / 3, rel=1e-12)


# --- finding 3: a null only where None has a meaning ---------------------------------------------------------------


def test_a_null_without_a_none_meaning_is_a_usage_error_before_the_data(tmp_path, capsys):
    argv = ["sysid", "--benchmark", "cascaded_tanks", "--data-folder", str(tmp_path / "absent")]
    assert main([*argv, "--recipe.d_state", "null"]) == 2  # before: FileNotFoundError, "dataBenchmark.csv not found"
    err = capsys.readouterr().err
    assert "error: --recipe.d_state cannot be null: the recipe field (d_state: int) has no None meaning" in err
    assert "not found" not in err
    assert main([*argv, "--recipe.censor", "null", "--recipe.lr", "null"]) == 2
    assert "error: --recipe.lr, --recipe.censor cannot be null: the recipe fields (lr: float, censor: bool)" in \
        capsys.readouterr().err
    # a documented None still parses and reaches the recipe (then the missing data folder is what is reported)
    for name in ("output_range", "timescale", "patience", "activation"):
        cfg = _parser("ssmkit sysid").parse_args(["--benchmark", "cascaded_tanks", f"--recipe.{name}", "null"])
        assert getattr(recipe_from_args("cascaded_tanks", cfg), name) is None
    with pytest.raises(FileNotFoundError, match="dataBenchmark.csv not found"):
        main([*argv, "--recipe.patience", "null"])
    # options not made by the parser (read from a file): the same refusal as a ValueError
    given = {"censor": None, "timescale": None}
    cfg = SimpleNamespace(mode="simulation", steps=None, get=lambda key: given if key == "recipe" else None)
    with pytest.raises(ValueError, match=r"--recipe.censor cannot be null"):
        recipe_from_args("cascaded_tanks", cfg)


def test_a_null_is_refused_at_parsing_exactly_where_the_workflow_refuses_none():
    # the reference is the workflow itself: identify() with the field set to None, on a tiny benchmark and 2 steps
    g = torch.Generator().manual_seed(1)
    u = torch.randn(120, 1, generator=g, dtype=F64)
    rec = IORecord(u, torch.cumsum(u, 0) * 0.1, 0.1, "r")
    bench = SysidBenchmark("b", "b", [rec], [rec], 10, "V")
    base = Recipe(d_model=2, n_layers=1, d_state=2, window=20, batch_size=2, steps=2, val_every=1)
    parser = _parser("ssmkit sysid")
    refused_at_parsing, refused_by_workflow = set(), set()
    for f in dataclasses.fields(Recipe):
        try:
            parser.parse_args(["--benchmark", "b", f"--recipe.{f.name}", "null"])
        except SystemExit as stop:
            assert stop.code == 2
            refused_at_parsing.add(f.name)
        try:
            identify(bench, "s4d", dataclasses.replace(base, **{f.name: None}), dtype=F64)
        except ValueError as bad:
            assert f.name in str(bad)  # refused by name
            refused_by_workflow.add(f.name)
    assert refused_at_parsing == refused_by_workflow
    assert {"d_state", "censor", "lr", "steps", "schedule"} <= refused_at_parsing  # not vacuous
    hints = typing.get_type_hints(Recipe)
    assert {f.name for f in dataclasses.fields(Recipe)} - refused_at_parsing == \
        {f.name for f in dataclasses.fields(Recipe) if type(None) in typing.get_args(hints[f.name])}
