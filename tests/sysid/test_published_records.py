"""A published result names the test record it was scored on (``Published.record``): the report's table says
"test arrow full (...)" where the source scored Silverbox's arrow, not "official test" for every row.

The shipped benchmarks are loaded from fixture files written here in the originals' format (Silverbox, CED, as
tests/sysid/test_nlbench.py does) and from ../shared/data (Bouc-Wen); each published number's record is the one its
source states (REFERENCE.md's sysid tables; the method names say the same).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from ssmkit.sysid import report
from ssmkit.sysid.records import IORecord, Published, SysidBenchmark

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def toy(published=(), outputs=1):
    """One estimation record and two test records, "test A" (30 samples) and "test B" (24), Ts 0.5 s, n_init 4."""
    g = torch.Generator().manual_seed(3)

    def rec(n, name):
        return IORecord(torch.randn(n, 1, generator=g, dtype=torch.float64),
                        torch.randn(n, outputs, generator=g, dtype=torch.float64), 0.5, name)

    return SysidBenchmark("toy", "Toy", [rec(40, "est")], [rec(30, "test A"), rec(24, "test B")], 4, "mV",
                          published=list(published))


def scores(rmse_a, rmse_b):
    return {"records": [{"name": "test A", "rmse": rmse_a, "fit": [50.0] * len(rmse_a)},
                        {"name": "test B", "rmse": rmse_b, "fit": [40.0] * len(rmse_b)}]}


def test_a_published_row_names_its_record():
    bench = toy([Published("whole set", 0.5, "paper A"), Published("on B", 0.25, "paper B", record="test B")])
    assert report.results_table(bench, "run", scores([1.0], [2.0])).split("\n")[-2:] == [
        "| whole set | official test | 0.5 | – | paper A |",
        "| on B | test B | 0.25 | – | paper B |",
    ]


def test_a_record_with_an_aggregate_over_outputs():
    bench = toy([Published("mean on A", 3.0, "paper", aggregate="mean", record="test A"),
                 Published("bare on B", 3.0, "paper", record="test B")], outputs=2)
    cells = [report.published_record(bench, pub) for pub in bench.published]
    assert cells == ["test A, mean over the outputs",
                     "test B, one number for 2 outputs (the source states no aggregate: not compared with the "
                     "per-output values)"]


def test_results_json_keeps_the_record(tmp_path):
    bench = toy([Published("on A", 0.125, "paper", record="test A")])
    sims = [r.y for r in bench.test]
    report.write_report(tmp_path, bench, "run", {**scores([1.0], [2.0]), "simulations": sims}, {}, plots=False)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["published"] == [{"method": "on A", "rmse": 0.125, "source": "paper", "aggregate": None,
                                 "record": "test A"}]


def test_a_record_that_is_not_a_test_record_is_refused():
    with pytest.raises(ValueError, match=r"record 'test C' is not one of the test records \['test A', 'test B'\]"):
        toy([Published("typo", 0.5, "paper", record="test C")])
    for bad in ("", "  ", 3):
        with pytest.raises(ValueError, match="record must be None or a test record's name"):
            Published("bad", 0.5, "paper", record=bad)


def test_silverbox_rows_name_the_multisine_and_the_arrows(tmp_path):
    from ssmkit.sysid.nlbench import silverbox

    idx = np.arange(131072, dtype=np.float64)[None, :]
    savemat(tmp_path / "SNLS80mV.mat", {"V1": idx, "V2": 2 * idx})
    bench = silverbox(tmp_path)
    ms, arrow, short = (r.name for r in bench.test)
    by_method = {pub.method: pub.record for pub in bench.published}
    assert by_method == {
        "DT SUBNET (Beintema et al. 2021), multisine test": ms,
        "DT SUBNET (Beintema et al. 2021), arrow full": arrow,
        "DT SUBNET (Beintema et al. 2021), arrow no extrapolation": short,
        "PNLSS, arrow full": arrow,
        "GRU baseline, multisine / arrow full / no extrapolation": ms,
        "LTI state space baseline, multisine test": ms,
    }
    table = report.results_table(bench, "run", {"records": [
        {"name": r.name, "rmse": [1.0], "fit": [0.0]} for r in bench.test]})
    assert "| PNLSS, arrow full | test arrow full (SNLS80mV.mat [100:40575]) | 0.26 |" in table
    assert "official test" not in table


def test_ced_rows_name_test_1_and_test_2(tmp_path):
    from ssmkit.sysid.nlbench import ced

    k = np.arange(500, dtype=np.float64)[:, None]
    savemat(tmp_path / "DATAUNIF.MAT", {"u11": k, "z11": k + 0.5, "u12": -k, "z12": -k - 0.5})
    bench = ced(tmp_path)
    low, high = (r.name for r in bench.test)
    assert "low amplitude" in low and "high amplitude" in high
    assert [(pub.rmse, pub.record) for pub in bench.published] == [(0.115, low), (0.074, high), (0.169, low),
                                                                   (0.224, low)]


@pytest.mark.skipif(not (DATA / "bouc_wen" / "uval_multisine.mat").exists(), reason="../shared/data is absent")
def test_bouc_wen_rows_name_the_multisine():
    from ssmkit.sysid.benchmarks import bouc_wen

    bench = bouc_wen(DATA / "bouc_wen", train_records=1, train_periods=1)
    assert [r.name for r in bench.test] == ["official multisine test", "official sine-sweep test"]
    assert [pub.record for pub in bench.published] == ["official multisine test"] * 3
