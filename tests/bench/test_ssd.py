"""The Mamba-2 / SSD benchmark runs end to end at tiny sizes and writes its JSON (no timing is asserted)."""

import json

import pytest
import torch

from ssmkit.bench.ssd import main
from ssmkit.ops.native import native_available


def test_ssd_bench_writes_results(tmp_path, capsys):
    out = tmp_path / "ssd.json"
    argv = ["--batch", "1", "--length", "12", "--heads", "2", "--headdim", "3", "--d-state", "4", "--groups", "2",
            "--chunk-size", "4", "5", "--repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["results"]
    native = ["ssd native"] if native_available("ssd", torch.float32) else []
    assert [r["variant"] for r in rows] == ["ssd chunked T=4", "ssd chunked T=5", *native, "ssd reference",
                                           "mamba2 auto", "mamba2 chunked", "mamba2 reference", "mamba2 step"]
    for r in rows[:-1]:
        assert r["forward_s"] > 0 and r["forward_backward_s"] > 0 and r["forward_speedup"] > 0
    assert rows[2 + len(native)]["forward_speedup"] == 1.0 and rows[-1]["us_per_token"] > 0
    assert "| ssd chunked T=4 |" in capsys.readouterr().out
    assert main(argv[:-2] + ["--no-reference"]) == 0
    assert "| ssd reference |" not in capsys.readouterr().out


def test_ssd_bench_option_errors(capsys):
    with pytest.raises(SystemExit):
        main(["--heads", "3", "--groups", "2"])
    assert "--groups must divide --heads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--repeats", "0"])
    assert "argument --repeats: must be an int >= 1; got 0" in capsys.readouterr().err
