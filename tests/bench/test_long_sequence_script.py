"""scripts/long_sequence_check.py: every layer it names runs in its own process, forward and forward+backward, and
reports finite outputs and gradients with its time and peak memory."""

from __future__ import annotations

import importlib.util
import json
import pathlib

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"


def test_long_sequence_check_runs_each_layer_and_mode(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("long_sequence_check", SCRIPTS / "long_sequence_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "rows.json"
    assert module.main(["--length", "300", "--d-model", "32", "--batch", "2", "--d-state", "8", "--layers", "s4d",
                        "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["layer"] for r in rows] == ["s4d"]
    assert (rows[0]["batch"], rows[0]["d_state"]) == (2, 8)
    for r in rows:
        for mode in ("forward", "forward_backward"):
            assert "failed" not in r[mode], r[mode]
            assert r[mode]["seconds"] > 0 and r[mode]["peak_mib"] >= 0 and r[mode]["finite"] is True
    table = capsys.readouterr().out
    assert "| s4d | " in table and "failed" not in table
    assert "B 2, L 300, H 32, N 8" in table  # the shape the subprocesses ran at, and the ratio's unit


def test_long_sequence_check_in_one_process():
    # the path --device cuda takes (every layer and mode in this process, a failure reported and the next one run),
    # here on the test device
    import argparse

    from tests.conftest import DEVICE

    spec = importlib.util.spec_from_file_location("long_sequence_check", SCRIPTS / "long_sequence_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(length=300, d_model=16, batch=2, d_state=8, device=str(DEVICE))
    for mode in ("forward", "forward_backward"):
        r = module._in_process("lru", mode, args)
        assert "failed" not in r, r
        assert r["seconds"] > 0 and r["peak_mib"] >= 0 and r["finite"] is True
    bad = module._in_process("no-such-layer", "forward", args)
    assert set(bad) == {"failed"} and "no-such-layer" in bad["failed"]
