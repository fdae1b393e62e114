"""scripts/long_rollout_check.py: a float32 step rollout against the forward, with its figures."""

from __future__ import annotations

import importlib.util
import pathlib

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"


def _module():
    spec = importlib.util.spec_from_file_location("long_rollout_check", SCRIPTS / "long_rollout_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rollout_figures_of_a_stable_layer():
    r = _module().rollout("s4d", 1500)
    assert r["step_vs_forward"] < 1e-5 and r["last_10000"] < 1e-5 and r["final_state"] < 1e-5  # docs rule 1, fp32
    assert r["forward_vs_float64"] < 1e-4 and 0 < r["largest_state"] < 1e3
    assert r["rss_after_mib"] > 0


def test_rollout_table(capsys):
    assert _module().main(["--steps", "1100", "--layers", "lru"]) == 0
    out = capsys.readouterr().out
    assert "1100 steps" in out and "| lru | " in out
