"""The irregular-sampling benchmark runs end to end at tiny sizes for every layer that takes intervals and writes its
JSON (no timing asserted)."""

import json

import pytest

from ssmkit.bench.irregular import TAKERS, main
from ssmkit.layers import available, layer_class


def test_irregular_bench_writes_results(tmp_path, capsys):
    out = tmp_path / "irregular.json"
    argv = ["--batch", "2", "--length", "9", "--d-model", "32", "--d-state", "16", "--repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    rows = data["results"]
    assert [(r["layer"], r["mode"]) for r in rows] == [(n, m) for n in TAKERS for m in ("forward", "forward+backward")]
    for r in rows:
        assert (r["batch"], r["length"], r["d_model"], r["d_state"]) == (2, 9, 32, 16)
        assert r["regular_ms"] > 0 and r["irregular_ms"] > 0
        assert r["ratio"] == pytest.approx(r["irregular_ms"] / r["regular_ms"])
    assert "| s5 | forward |" in capsys.readouterr().out


def test_the_suite_times_exactly_the_layers_that_take_intervals(capsys):
    assert TAKERS == [n for n in available() if layer_class(n).takes_intervals] and {"s5", "s4d"} <= set(TAKERS)
    with pytest.raises(SystemExit):
        main(["--layers", "h3"])  # a layer without intervals is not a choice
    assert "invalid choice: 'h3'" in capsys.readouterr().err
