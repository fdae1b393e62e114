"""The selective-scan benchmark runs end to end at tiny sizes, writes its JSON and reports a failing case (here: an
address-space limit far too small to import torch) as an error row instead of stopping (no timing is asserted)."""

import json

import pytest

from ssmkit.bench.selective import main


def test_selective_bench_writes_results(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--batch", "1", "--d-model", "4", "--d-state", "3", "--length", "9", "--repeats", "1", "--threads", "1",
            "--cases", "chunked", "loop", "--json", str(out)]
    assert main(argv) == 0
    rows = {r["case"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"chunked", "loop"}
    for r in rows.values():
        assert r["forward_s"] > 0 and r["forward_backward_s"] > 0 and r["peak_rss_mib"] >= r["base_rss_mib"] > 0
    assert rows["chunked"]["forward_backward_speedup_vs_loop"] > 0 and "forward_speedup_vs_loop" not in rows["loop"]
    assert "| chunked |" in capsys.readouterr().out


def test_the_projections_floor_and_its_bound(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--batch", "1", "--d-model", "4", "--d-state", "3", "--length", "9", "--repeats", "1", "--threads", "1",
            "--cases", "loop", "projections", "--json", str(out)]
    assert main(argv) == 0
    rows = {r["case"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["projections"]["forward_backward_s"] > 0 and rows["projections"]["forward_backward_speedup_vs_loop"] > 0
    printed = capsys.readouterr().out
    assert "| projections |" in printed and "bound: with the scan, convolution and elementwise work free" in printed


def test_a_failing_case_is_reported(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--batch", "1", "--d-model", "4", "--length", "9", "--repeats", "2", "--cases", "chunked",
            "--memory-limit-gib", "0.05", "--json", str(out)]
    assert main(argv) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["case"] == "chunked" and row["error"]
    assert "| chunked | failed:" in capsys.readouterr().out


def test_warm_up_and_timed_calls_are_options(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--batch", "1", "--d-model", "4", "--d-state", "3", "--length", "9", "--repeats", "1", "--threads", "1",
            "--cases", "chunked", "--warmup", "0", "--calls", "2", "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert (data["warmup"], data["calls"]) == (0, 2) and data["results"][0]["forward_backward_s"] > 0
    assert "0 warm-up and 2 timed calls" in capsys.readouterr().out
    for bad in (["--warmup", "-1"], ["--calls", "0"]):
        with pytest.raises(SystemExit) as e:
            main(["--cases", "chunked", *bad])
        assert e.value.code == 2
