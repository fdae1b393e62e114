"""Missing-value markers in CSV output cells, strict JSON in results.json and the benchmarks' files, and the NRMSE of
an output whose scored samples are constant (one measured sample included).

References: a CSV file written by hand from a table of (row, column) -> cell whose expected reading is stated beside
it; ``json.loads`` with a ``parse_constant`` that raises on NaN / Infinity (strict JSON, RFC 8259); the RMSE, std and
fit % in numpy; the validation score replayed in plain Python on scripted RMSEs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ssmkit.files import finite_or_null, strict_json
from ssmkit.sysid import fit as fit_module
from ssmkit.sysid.fit import SimulationFit, fit_simulation, output_scales, validation_score
from ssmkit.sysid.metrics import fit_percent, nrmse, r_squared, rmse, sysid_metrics, undefined_scale
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.report import write_report
from ssmkit.sysid.userdata import MISSING_MARKERS, from_csv
from ssmkit.sysid.wiener import DeepWiener, channel_scale

F64 = torch.float64
NAN = float("nan")


def strict_loads(text: str):
    """json.loads that refuses the non-standard tokens NaN, Infinity and -Infinity (what JSON.parse and jq do)."""
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")
    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------------------------------------------------------
# 1. CSV: missing-value markers and rows that end early


def u_of(k: int) -> float:
    return round(math.sin(0.3 * k), 6)


def test_missing_value_markers_and_short_rows_read_as_missing_outputs(tmp_path):
    # cells written by hand: (row k, column) -> the text, every one a missing output sample
    y1_cells = {3: "NA", 7: "#N/A", 11: "NULL", 15: "", 19: "nan", 22: "NaN", 25: "None", 28: "n/a", 30: "<NA>",
                33: " NA ", 35: "-nan", 37: "#NA"}
    y2_cells = {4: "NA", 9: "null", 26: "N/A"}
    lines = ["# logger export", "t,u,y1,y2"]
    y_want = np.zeros((40, 2))
    for k in range(40):
        y1, y2 = k / 4, (k % 5) - 1.5
        y_want[k] = [NAN if k in y1_cells else y1, NAN if k in y2_cells else y2]
        c1, c2 = y1_cells.get(k, repr(y1)), y2_cells.get(k, repr(y2))
        if k == 13:  # ends before y2: y2 missing
            line = f"{0.1 * k!r},{u_of(k)!r},{c1}"
            y_want[k, 1] = NAN
        elif k == 17:  # ends before y1 and y2
            line = f"{0.1 * k!r},{u_of(k)!r}"
            y_want[k] = NAN
        else:
            line = f"{0.1 * k!r},{u_of(k)!r},{c1},{c2}"
        lines.append(line)
        if k == 20:
            lines.append("#NA = not measured (a comment: its first field is not the marker alone)")
    path = tmp_path / "log.csv"
    path.write_text("\n".join(lines) + "\n")
    bench = from_csv(path, "u", ["y1", "y2"], time="t", missing_outputs=True, test_fraction=0.25, n_init=0)
    y = torch.cat([bench.train[0].y, bench.test[0].y]).numpy()
    u = torch.cat([bench.train[0].u, bench.test[0].u]).numpy()[:, 0]
    assert y.shape == (40, 2)  # the comment lines are not rows, the short rows are
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_want))
    np.testing.assert_array_equal(y[~np.isnan(y)], y_want[~np.isnan(y_want)])
    np.testing.assert_array_equal(u, [u_of(k) for k in range(40)])
    assert bench.train[0].n_missing + bench.test[0].n_missing == int(np.isnan(y_want).sum()) == 18


def test_a_row_opening_with_the_excel_marker_is_a_row_not_a_comment(tmp_path):
    # the output is the first column: a "#N/A" there opens the line with "#"; dropping it would shift every sample
    path = tmp_path / "excel.csv"
    rows = [f"{'#N/A' if k in (2, 5) else repr(k * 0.5)},{u_of(k)!r}" for k in range(30)]
    path.write_text("y,u\n" + "\n".join(rows[:10]) + "\n# a comment\n" + "\n".join(rows[10:]) + "\n")
    bench = from_csv(path, "u", "y", dt=0.1, missing_outputs=True, n_init=0)
    y = torch.cat([bench.train[0].y, bench.test[0].y])[:, 0].numpy()
    want = np.array([NAN if k in (2, 5) else k * 0.5 for k in range(30)])
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(y[~np.isnan(y)], want[~np.isnan(want)])
    np.testing.assert_array_equal(torch.cat([bench.train[0].u, bench.test[0].u])[:, 0].numpy(),
                                  [u_of(k) for k in range(30)])


def write_rows(path, header: str, rows: list[str]) -> None:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def test_markers_are_refused_naming_the_cell_and_the_option(tmp_path):
    path = tmp_path / "d.csv"
    good = [f"{0.1 * k!r},{u_of(k)!r},{k / 3!r}" for k in range(30)]
    bad = list(good)
    bad[3] = f"{0.3!r},{u_of(3)!r},NA"
    write_rows(path, "t,u,y", bad)
    with pytest.raises(ValueError, match=r"d\.csv: row 4 \(line 5\), column 'y' is 'NA', a missing-value marker: "
                                         r"every sample must be a number \(fill or cut missing samples; an output "
                                         r"column may hold missing samples with from_csv\(\.\.\., "
                                         r"missing_outputs=True\)"):
        from_csv(path, "u", "y", time="t")
    bad = list(good)
    bad[5] = f"{0.5!r},NA,{5 / 3!r}"  # an input: refused with the option too
    write_rows(path, "t,u,y", bad)
    with pytest.raises(ValueError, match=r"row 6 \(line 7\), column 'u' is 'NA', a missing-value marker: every "
                                         r"sample must be a number \(only the output columns \['y'\] may hold"):
        from_csv(path, "u", "y", time="t", missing_outputs=True)
    for cell, message in (("Na", r"is 'Na', not a number"), ("inf", r"is 'inf': every sample must be a finite")):
        bad = list(good)
        bad[7] = f"{0.7!r},{u_of(7)!r},{cell}"  # markers match as written (pandas' rule); inf is not missing
        write_rows(path, "t,u,y", bad)
        with pytest.raises(ValueError, match=r"row 8 \(line 9\), column 'y' " + message):
            from_csv(path, "u", "y", time="t", missing_outputs=True)
    bad = list(good)
    bad[2] = f"{0.2!r},{u_of(2)!r}"  # ends before the output
    write_rows(path, "t,u,y", bad)
    with pytest.raises(ValueError, match=r"row 3 \(line 4\) has 2 fields, fewer than the 3 that reach column 'y': it "
                                         r"ends before column\(s\) \['y'\] \(fill or cut.*missing_outputs=True"):
        from_csv(path, "u", "y", time="t")
    bad[2] = f"{0.2!r}"  # ends before the input: refused with the option too
    write_rows(path, "t,u,y", bad)
    with pytest.raises(ValueError, match=r"row 3 \(line 4\) has 1 fields, fewer than the 2 that reach column 'u': it "
                                         r"ends before column\(s\) \['u'\] \(only the output columns"):
        from_csv(path, "u", "y", time="t", missing_outputs=True)
    assert set(MISSING_MARKERS) >= {"NA", "#N/A", "NULL", "N/A"} and "" not in MISSING_MARKERS


# ----------------------------------------------------------------------------------------------------------------
# 3. the NRMSE of a constant output, one measured sample included


def test_a_constant_output_has_no_nrmse_one_sample_or_many():
    rng = np.random.default_rng(0)
    n = 50
    varied = rng.standard_normal(n)
    y = np.stack([varied, np.full(n, 0.1), np.full(n, NAN), 1.0 + 1e-9 * rng.standard_normal(n)], 1)
    y[17, 2] = 0.7  # one measured sample
    pred = y + 0.05 * rng.standard_normal(y.shape)
    pred[:, 2] = 0.9
    e = pred - y
    want_rmse = np.sqrt(np.nanmean(e ** 2, 0))
    got = sysid_metrics(torch.tensor(pred), torch.tensor(y), skip_missing=True,
                        names=("rmse", "nrmse", "nrmse_range", "fit", "r2", "mae"))
    np.testing.assert_allclose(got["rmse"], want_rmse, rtol=1e-13)  # RMSE stays defined in the unit
    std = np.array([np.nanstd(y[:, k]) for k in range(4)])  # numpy: 1.4e-17 for the constant 0.1, 0 for one sample
    assert std[1] < 1e-15 and std[2] == 0.0
    want_nrmse = np.array([want_rmse[0] / std[0], NAN, NAN, want_rmse[3] / std[3]])
    np.testing.assert_allclose(got["nrmse"], want_nrmse, rtol=1e-12)  # NaN where the std gives no normalisation
    np.testing.assert_allclose(got["fit"], 100 * (1 - want_nrmse), rtol=1e-12)
    np.testing.assert_allclose(got["r2"], 1 - want_nrmse ** 2, rtol=1e-12)
    spread = np.nanmax(y, 0) - np.nanmin(y, 0)
    np.testing.assert_allclose(got["nrmse_range"], [want_rmse[0] / spread[0], NAN, NAN, want_rmse[3] / spread[3]],
                               rtol=1e-12)
    # without missing samples: the constant output alone, (L,) signals
    assert math.isnan(float(nrmse(torch.tensor(pred[:, 1]), torch.tensor(y[:, 1]))))
    assert math.isnan(float(fit_percent(torch.tensor(pred[:, 1]), torch.tensor(y[:, 1]))))
    assert math.isnan(float(r_squared(torch.tensor(pred[:, 1]), torch.tensor(y[:, 1]))))
    assert float(rmse(torch.tensor(pred[:, 1]), torch.tensor(y[:, 1]))) == pytest.approx(want_rmse[1], rel=1e-13)
    # the rule is channel_scale's: undefined exactly where the model normalises by 1
    cols = torch.tensor(y[:, [0, 1, 3]])
    flags = undefined_scale(cols.std(0, correction=0), cols.mean(0))
    assert flags.tolist() == [False, True, False] and channel_scale(cols)[1].item() == 1.0


def test_the_validation_scale_of_a_constant_output_is_the_training_scale():
    rng = np.random.default_rng(1)
    y = np.stack([rng.standard_normal(30), np.full(30, NAN), np.full(30, 0.1)], 1)
    y[4, 1] = 2.5  # one measured sample
    measured = torch.tensor(y)
    np.testing.assert_allclose(output_scales(measured, fallback=[9.0, 3.0, 4.0]), [np.std(y[:, 0]), 3.0, 4.0],
                               rtol=1e-13)
    plain = output_scales(measured)
    assert plain[0] == pytest.approx(np.std(y[:, 0]), rel=1e-13) and math.isnan(plain[1]) and math.isnan(plain[2])
    with pytest.raises(ValueError, match=r"fallback must be None or 3 positive finite scales"):
        output_scales(measured, fallback=[1.0, 0.0, 1.0])
    # an undefined scale is left out of the mean; a diverged output is not
    per, score = validation_score([0.3, 2.0, 5.0], [0.5, NAN, NAN])
    assert per[0] == pytest.approx(0.6) and math.isnan(per[1]) and score == pytest.approx(0.6)
    assert math.isnan(validation_score([0.3, NAN, 1.0], [0.5, NAN, 1.0])[1])
    assert validation_score([0.3, math.inf, 1.0], [0.5, NAN, 1.0])[1] == math.inf
    assert math.isnan(validation_score([0.3], [NAN])[1])


def oracle(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, 1))
    y0 = np.zeros(n)
    for k in range(1, n):
        y0[k] = 0.8 * y0[k - 1] + 0.2 * u[k - 1, 0]
    return u, np.stack([y0, 3.0 * y0 + 0.1 * rng.standard_normal(n)], 1)


def test_early_stopping_with_one_validation_sample_of_an_output(monkeypatch):
    """Output 2 is measured at one sample of the validation tail (70 of 100): its s_k is the model's σ_2 (numpy std of
    its measured training samples), and a NaN RMSE of that output at one step (a diverged simulation) is no best
    step and counts against the patience. The RMSEs are scripted; the choice is replayed in plain Python."""
    u, y = oracle(100, 3)
    y[70:, 1] = NAN
    y[85, 1] = 1.25
    y[5:60:4, 1] = NAN  # missing in training too
    script = [[0.5, 3.0], [0.4, 1.0], [0.45, NAN], [0.2, 0.5], [0.25, NAN], [0.6, 3.0], [0.1, 0.1], [0.1, 0.1]]
    feed = iter(script)
    monkeypatch.setattr(fit_module, "validation_rmse", lambda model, records, from_rest=False: next(feed))
    torch.manual_seed(0)
    model = DeepWiener(1, 2, d_model=4, n_layers=1, layer_options={"d_state": 4}, dt=0.1, dtype=F64)
    cfg = SimulationFit(window=16, batch_size=2, steps=8, val_every=1, val_fraction=0.3, patience=2, washout=2)
    h = fit_simulation(model, [IORecord(torch.tensor(u), torch.tensor(y), 0.1, "r")], config=cfg)
    s0 = np.std(y[70:, 0])
    sigma1 = np.nanstd(y[:70, 1])
    np.testing.assert_allclose(h["val_y_std"], [s0, sigma1], rtol=1e-12)
    scores = [(a / s0 + b / sigma1) / 2 for a, b in script]  # NaN at steps 3 and 5
    best, best_step, bad, stop = math.inf, 0, 0, len(script)
    for step, s in enumerate(scores, 1):
        if s < best:
            best, best_step, bad = s, step, 0
        else:
            bad += 1
            if bad >= 2:
                stop = step
                break
    assert (best_step, stop) == (4, 6) and h["steps"] == stop and h["best_step"] == best_step
    assert h["best_val_nrmse"] == pytest.approx(best, rel=1e-12)
    assert math.isnan(h["val_nrmse"][2][1][1]) and all(math.isfinite(v) for v in h["val_nrmse"][3][1])


# ----------------------------------------------------------------------------------------------------------------
# 2. strict JSON


def test_results_json_is_strict_with_null_for_undefined_scores(tmp_path):
    rng = np.random.default_rng(2)
    u = torch.tensor(rng.standard_normal((40, 1)))
    y_test = torch.tensor(np.stack([rng.standard_normal(40), np.full(40, 2.0)], 1))  # output 2 constant
    train = IORecord(u, torch.tensor(rng.standard_normal((40, 2))), 0.1, "train")
    test = IORecord(u, y_test, 0.1, "test")
    bench = SysidBenchmark("b", "b", [train], [test], 5, "V")
    y_sim = y_test + 0.1 * torch.tensor(rng.standard_normal((40, 2)))
    scores = {"records": [{"name": "test", **sysid_metrics(y_sim, y_test, 5, skip_missing=True)}],
              "simulations": [y_sim]}
    run = {"best_val_nrmse": math.inf, "best_val_rmse_per_output": [math.inf, -math.inf], "nested": ({"x": NAN},)}
    write_report(tmp_path, bench, "run", scores, run, plots=False)
    text = (tmp_path / "results.json").read_text()
    res = strict_loads(text)  # json.dumps' default would have written NaN and Infinity here
    e = (y_sim - y_test).numpy()[5:]
    rm = np.sqrt(np.mean(e ** 2, 0))
    rec = res["test"][0]
    np.testing.assert_allclose(rec["rmse"], rm, rtol=1e-13)
    assert rec["fit"][0] == pytest.approx(100 * (1 - rm[0] / np.std(y_test.numpy()[5:, 0])), rel=1e-12)
    assert rec["fit"][1] is None and rec["nrmse"][1] is None and rec["r2"][1] is None
    assert res["best_val_nrmse"] is None and res["best_val_rmse_per_output"] == [None, None]
    assert res["nested"] == [{"x": None}] and res["units"] == ["V", "V"]
    # report.md: the constant output's fit is written "undefined" (it printed "nan"), with the sentence saying why
    md = (tmp_path / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| **run** | test |"))
    assert row.split(" | ")[3] == f"{rec['fit'][0]:.2f}, undefined" and "nan" not in row
    assert "marked undefined belongs to an output that is constant" in md


def test_strict_json_writes_null_and_refuses_what_it_cannot_clean():
    obj = {"a": [1.0, NAN, (math.inf, np.float64(-np.inf))], "b": {"c": np.float64(2.5), "d": "NaN"}, "e": 3}
    text = strict_json(obj)
    assert strict_loads(text) == {"a": [1.0, None, [None, None]], "b": {"c": 2.5, "d": "NaN"}, "e": 3}
    assert finite_or_null((1.0, NAN)) == [1.0, None]
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        strict_json({NAN: 1})  # a non-finite key: the allow_nan=False guard fails loudly
    with pytest.raises(ValueError):
        strict_loads(json.dumps(obj))  # the reference refuses Python's default output


def test_the_irregular_bench_json_is_strict(tmp_path, monkeypatch):
    from ssmkit.bench import irregular

    rows = [{"layer": "s4d", "mode": "forward", "batch": 1, "length": 8, "d_model": 4, "d_state": 4,
             "regular_ms": 0.0, "irregular_ms": 1.5, "ratio": math.inf}]
    monkeypatch.setattr(irregular, "measure", lambda *args: rows)
    out = tmp_path / "irregular.json"
    assert irregular.main(["--layers", "s4d", "--json", str(out)]) == 0
    data = strict_loads(out.read_text())
    assert data["results"][0]["ratio"] is None and data["results"][0]["irregular_ms"] == 1.5


def test_an_ensembles_recorded_score_takes_the_members_scale_for_a_constant_output():
    # the ensemble's validation entries score a constant output by the members' training scale, as each run's own
    # validation does (without it the output left the mean: the score would be the other output's NRMSE alone)
    from ssmkit.sysid.workflow import _validation_entries

    rng = np.random.default_rng(3)
    measured = torch.from_numpy(np.stack([rng.normal(2.0, 0.7, 40), np.full(40, 5.0)], 1))
    rmse_per_output, fallback = [0.21, 0.05], [0.9, 0.4]
    entries = _validation_entries(rmse_per_output, measured, fallback)
    want = (0.21 / np.std(measured[:, 0].numpy()) + 0.05 / 0.4) / 2
    assert entries["best_val_nrmse"] == pytest.approx(want, rel=1e-12)
    assert entries["best_val_rmse"] == pytest.approx(0.13, rel=1e-12)
