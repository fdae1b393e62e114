"""The GPU benchmark runs end to end on the CPU at tiny sizes (triton in its interpreter) and writes its JSON.

No timing is asserted; a backend that cannot run is reported with its error instead of stopping the run.
"""

import importlib.util
import json

from ssmkit.bench.gpu import main
from ssmkit.ops.triton_gate import triton_available


def test_gpu_bench_writes_results(tmp_path, capsys, monkeypatch):
    if not triton_available("cpu"):
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # then triton's row carries the gate's error
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--scan-shapes", "1,3,4,9", "--scan-chunks-per-program", "1", "--ssd-shapes", "1,9,2,2,3",
            "--selective-shapes", "1,3,2,9", "--selective-tiles", "4,2,2,1", "--repeats", "1", "--copy-bytes", "4096",
            "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    rows = data["results"]
    assert data["bandwidth_Bps"] > 0
    assert [(r["op"], r["backend"]) for r in rows] == [
        ("scan", "chunked"), ("scan", "fft"), ("scan", "triton"), ("scan", "triton:1"), ("ssd", "chunked"),
        ("ssd", "triton"),
        ("selective", "chunked"), ("selective", "triton"), ("selective", "triton:4,2,2,1"), ("selective", "mamba_ssm")]
    assert rows[0]["bytes"] == 8 * 1 * 9 * 3 and rows[4]["bytes"] == 4 * 9 * (2 * 2 * 2 + 2 + 2 * 3)
    assert rows[6]["bytes"] == 16 * 9 * 3 + 8 * 9 * 2
    if importlib.util.find_spec("mamba_ssm") is None:
        assert "mamba-ssm is not importable here" in rows[-1]["error"]  # a CUDA-only peer: its row says why
    for r in rows[:-1]:
        if r["backend"].startswith("triton") and not triton_available("cpu"):
            assert "cannot run on cpu" in r["error"]
        else:
            assert r["forward_s"] > 0 and r["forward_backward_s"] > 0 and r["forward_fraction_of_bound"] > 0
    assert "| scan | B=1,L=9,H=3,N=4 | triton |" in capsys.readouterr().out


def test_gpu_bench_is_a_suite(capsys):
    from ssmkit.cli import main as cli

    assert cli(["bench", "gpu", "--help"]) == 0
    assert "--scan-shapes" in capsys.readouterr().out
