"""The generation benchmark runs end to end at tiny sizes for every layer and writes its JSON (no timing asserted)."""

import json

import pytest
import torch

from ssmkit.bench.generate import language_model, main
from ssmkit.layers import available


def test_generate_bench_writes_results(tmp_path, capsys):
    out = tmp_path / "generate.json"
    # d_model 32 and d_state 16: the smallest sizes at which every layer builds with its defaults (tests/bench/test_step.py)
    argv = ["--batch", "2", "--d-model", "32", "--d-state", "16", "--n-layers", "1", "--vocab", "11", "--prompt", "3",
            "--new", "2", "--repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    rows = data["results"]
    assert [r["layer"] for r in rows] == available()
    for r in rows:
        assert (r["batch"], r["d_model"], r["n_layers"], r["prompt"]) == (2, 32, 1, 3) and r["prefill_ms"] > 0
        if r["ms_per_token"] > 0:
            assert r["tokens_per_s"] == pytest.approx(2e3 / r["ms_per_token"])
    assert data["options"]["vocab"] == 11
    assert "| mamba | 2 |" in capsys.readouterr().out


def test_the_benchmarked_model_is_a_language_model_of_that_layer():
    model = language_model("s4d", 8, 2, 5, 4)
    assert not model.training and model.head_name == "lm" and model.vocab_size == 5
    assert [type(b.layer).__name__ for b in model.blocks] == ["S4D", "S4D"] and model.blocks[0].layer.d_state == 4
    assert language_model("attention", 8, 1, 5, 4).blocks[0].layer.head_dim == 64  # no d_state: its defaults
    out = model.generate(torch.tensor([[1, 2]]), 3, temperature=0)
    assert out.shape == (1, 5)


def test_generate_bench_option_errors(capsys):
    with pytest.raises(SystemExit):
        main(["--new", "0"])
    assert "argument --new: must be an int >= 1; got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--layers", "s5", "--d-state", "8"])  # S5's HiPPO blocks need a multiple of 16: refused before timing
    assert "layer s5 at d_model 128, d_state 8" in capsys.readouterr().err
