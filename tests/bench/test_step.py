"""The step benchmark runs end to end at tiny sizes and writes its JSON (no timing is asserted)."""

import json

import pytest
import torch

from ssmkit.bench.step import bare_diagonal_step, main
from ssmkit.layers import available, build


def test_step_bench_writes_results(tmp_path, capsys):
    out = tmp_path / "step.json"
    # d_model 32: the smallest width at which every layer builds with its defaults (Mamba-2: expand·32 = one head of
    # 64); d_state 16: S5's 8 blocks of 2
    argv = ["--batch", "2", "--d-model", "32", "--d-state", "16", "--steps", "2", "--repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["layer"] for r in rows] == ["bare", *[f"{n}{s}" for n in available() for s in ("", " (frozen)")]]
    for r in rows:
        assert r["batch"] == 2 and r["d_model"] == 32 and r["us_per_step"] > 0
        assert r["tokens_per_s"] == pytest.approx(2e6 / r["us_per_step"])
    assert rows[0]["vs_bare"] == 1.0
    assert "| s4d | 2 | 32 |" in capsys.readouterr().out


def test_bare_step_is_the_s4d_step():
    # the bare arithmetic on S4D's own discrete matrices gives S4D's step (C holds 2C, see S4D.discrete)
    torch.manual_seed(0)
    layer = build("s4d", d_model=3, d_state=4)
    A_bar, B_bar, C2 = layer.discrete()
    u, h = torch.randn(2, 3), torch.randn(2, 3, 2, dtype=torch.complex64)
    with torch.no_grad():
        y, x = bare_diagonal_step(u, h, A_bar, B_bar, C2[0] / 2, layer.D)
        y_ref, x_ref = layer.step(u, h)
    assert torch.allclose(x, x_ref, rtol=1e-6, atol=1e-6) and torch.allclose(y, y_ref, rtol=1e-5, atol=1e-6)  # fp32


def test_step_bench_option_errors(capsys):
    with pytest.raises(SystemExit):
        main(["--repeats", "0"])
    assert "argument --repeats: must be an int >= 1; got 0" in capsys.readouterr().err
