"""The core benchmark runs end to end at tiny sizes and writes its JSON (no timing is asserted)."""

import json

from ssmkit.bench.core import main


def test_core_bench_writes_results(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--batch", "1", "--d-model", "3", "--d-state", "16", "--length", "16", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["results"]
    expect = {("s4d", b) for b in ("auto", "chunked", "fft", "reference")} | {("s4", b) for b in ("auto", "fft", "reference")}
    expect |= {(l, b) for l in ("s5", "lru") for b in ("auto", "chunked", "reference")}  # d_state 16: S5's 8 blocks of 2
    assert {(r["layer"], r["backend"]) for r in rows} == expect
    for r in rows:
        assert r["forward_s"] > 0 and r["forward_backward_s"] > 0
        if r["backend"] == "reference":
            assert r["forward_speedup"] == 1.0
    assert "| s4 | auto |" in capsys.readouterr().out
