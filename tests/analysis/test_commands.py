"""``ssmkit analyze`` on a real trainer checkpoint, and ``ssmkit zoo`` (markdown, CSV, files, measured poles)."""

import csv
import io
import json
import os

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.analysis.commands import load_model
from ssmkit.cli import main as cli_main
from tests.conftest import rel_err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint written by the trainer (two steps of a hybrid S4D + RG-LRU model)."""
    pytest.importorskip("lightning")
    from ssmkit.models import SequenceModelConfig
    from ssmkit.train import TrainConfig, fit

    out = tmp_path_factory.mktemp("run")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 10, 1, generator=g)
    y = torch.randn(16, 1, generator=g)
    model = SequenceModelConfig(d_input=1, d_model=4, n_layers=2, layer=["s4d", "rglru"], d_output=1, head="regress",
                                layer_options={"s4d": {"d_state": 4}})
    fit(model, TrainConfig(batch_size=8, max_steps=2, warmup_steps=0, lr=1e-2), (x, y), None, None, str(out),
        progress=False)
    return os.path.join(out, "checkpoints", "last.ckpt")


def test_load_model_restores_the_weights(checkpoint):
    from ssmkit.train.checkpoint import load_checkpoint

    model = load_model(checkpoint)
    state = load_checkpoint(checkpoint)["state_dict"]
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[f"model.{name}"])


def test_load_model_keeps_a_float64_run_in_float64(tmp_path):
    # a run trained with precision "64" was rebuilt in float32 and its weights cast down without a word
    from ssmkit.models import SequenceModel, SequenceModelConfig

    config = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=1, layer_options={"d_state": 4})
    model = SequenceModel.from_config(config, dtype=torch.float64)
    with torch.no_grad():
        model.blocks[0].layer.log_dt.fill_(-11.0)  # Δ ≈ 1.7e-5: poles 1 - O(1e-5), which float32 rounds
    path = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"model": config.to_dict()},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = load_model(str(path))
    assert loaded.encoder.weight.dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert (loaded.blocks[0].layer.state_space().poles() == model.blocks[0].layer.state_space().poles()).all()


def test_analyze_writes_the_report(checkpoint, capsys):
    pytest.importorskip("matplotlib")
    assert cli_main(["analyze", checkpoint, "--channels", "2"]) == 0
    out = os.path.join(os.path.dirname(os.path.dirname(checkpoint)), "analysis")  # beside checkpoints/
    printed = capsys.readouterr().out
    assert "# Control analysis:" in printed and f"analysis in {out}" in printed
    for name in ("summary.md", "analysis.json", "poles.png", "bode.png", "responses.png", "kernels.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    record = json.load(open(os.path.join(out, "analysis.json")))
    assert [l["layer"] for l in record["layers"]] == ["s4d"] and record["skipped"][0]["layer"] == "rglru"
    assert record["layers"][0]["stable"] is True


def test_analyze_options_and_errors(checkpoint, tmp_path, capsys):
    assert cli_main(["analyze", checkpoint, "--out", str(tmp_path / "a"), "--dt", "0.5", "--no-plots"]) == 0
    assert sorted(os.listdir(tmp_path / "a")) == ["analysis.json", "summary.md"]
    assert json.load(open(tmp_path / "a" / "analysis.json"))["layers"][0]["dt"] == 0.5
    assert cli_main(["analyze", checkpoint, "--dt", "-1"]) == 2
    assert "--dt must be the sampling time in seconds, a finite number > 0; got -1.0" in capsys.readouterr().err
    assert cli_main(["analyze", checkpoint, "--dt", "inf"]) == 2  # inf passed "> 0" and put every pole at s = 0
    assert "a finite number > 0; got inf" in capsys.readouterr().err
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a checkpoint of 'ssmkit train'"):
        cli_main(["analyze", str(tmp_path / "other.pt")])
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds no state_dict"):
        cli_main(["analyze", str(tmp_path / "list.pt")])
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        cli_main(["analyze", str(tmp_path / "missing.ckpt")])


def test_zoo_command(tmp_path, capsys):
    assert cli_main(["zoo"]) == 0
    text = capsys.readouterr().out
    assert all(f"| {name} |" in text for name in layers.available())
    assert cli_main(["zoo", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["layer"] for r in rows] == layers.available()
    assert cli_main(["zoo", "--d-model", "0"]) == 2


def test_zoo_with_a_checkpoint(checkpoint, tmp_path, capsys):
    assert cli_main(["zoo", "--checkpoint", checkpoint, "--out", str(tmp_path)]) == 0
    assert "## Measured poles of the checkpoint" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["poles.csv", "zoo.csv", "zoo.md"]
    measured = list(csv.DictReader(open(tmp_path / "poles.csv")))
    assert [(r["name"], r["layer"]) for r in measured] == [("blocks.0.layer", "s4d"), ("blocks.1.layer", "rglru")]
    assert 0 < float(measured[0]["spectral_radius"]) < 1


@pytest.mark.parametrize("argv,expect", [(["analyze", "--help"], "usage: ssmkit analyze"),
                                         (["zoo", "--help"], "usage: ssmkit zoo"),
                                         (["--help"], "analyze")])
def test_help(argv, expect, capsys):
    assert cli_main(argv) == 0
    assert expect in capsys.readouterr().out


def test_analyze_a_deep_wiener_file(tmp_path):
    from ssmkit.sysid.wiener import DeepWiener

    arguments = {"n_inputs": 1, "n_outputs": 1, "d_model": 3, "n_layers": 2, "layer": "s4d",
                 "layer_options": {"d_state": 4}, "dt": 0.004, "timescale": (0.01, 1.0)}
    torch.manual_seed(0)
    model = DeepWiener(**arguments)
    torch.save({"deep_wiener": arguments, "state_dict": model.state_dict()}, tmp_path / "model.pt")
    loaded = load_model(str(tmp_path / "model.pt"))
    assert isinstance(loaded, DeepWiener) and loaded.dt == 0.004
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert cli_main(["analyze", str(tmp_path / "model.pt"), "--out", str(tmp_path / "a"), "--no-plots"]) == 0
    record = json.load(open(tmp_path / "a" / "analysis.json"))
    assert record["dt"] == 0.004 and [l["name"] for l in record["layers"]] == ["layers.0", "layers.1"]


def test_analyze_writes_the_onnx_graphs_of_a_deep_wiener(tmp_path_factory):
    """``--onnx``: step.onnx and sequence.onnx beside the report; onnxruntime's sequence output equals the model's. A
    float64 two-block DeepWiener (tests/analysis/onnx_cache.py: the command runs once per process, its graphs shared
    with tests/analysis/test_onnx_sequence.py's DeepWiener test)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tests.analysis.onnx_cache import analyzed_deep_wiener

    run = analyzed_deep_wiener(tmp_path_factory)
    assert run.code == 0
    assert "step.onnx: inputs u (B, 1), state_0..state_1 (B, 4, 4, 2); outputs y" in run.printed
    assert "sequence.onnx: inputs u (B, L, 1), state_0..state_1 (B, 4, 4, 2)" in run.printed
    torch.manual_seed(0)
    u = torch.randn(1, 90, 1, dtype=torch.float64)
    with torch.no_grad():
        want, _ = run.model(u)
    session = ort.InferenceSession(run.sequence.path, providers=["CPUExecutionProvider"])
    zeros = {f"state_{i}": torch.zeros(1, 4, 4, 2, dtype=torch.float64).numpy() for i in range(2)}
    got = torch.from_numpy(session.run(None, {"u": u.numpy(), **zeros})[0])
    assert rel_err(got, want) <= 1e-5


def test_analyze_onnx_of_a_growing_state_writes_the_sequence_graph_from_rest(tmp_path, capsys):
    """Attention's cache grows: no step graph (exit 1, the reason on stderr), the sequence graph without a state."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ssmkit.analysis.commands import _write_onnx
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=4, n_layers=1, layer="attention", layer_options={"n_heads": 2},
                          d_output=1, head="regress", pool=None).eval()
    assert _write_onnx(model, str(tmp_path)) == 1
    printed = capsys.readouterr()
    assert "step.onnx not written" in printed.err and "growing axis" in printed.err
    assert "sequence.onnx: without a state" in printed.out and "inputs u (B, L, 2), no state; outputs y" in printed.out
    assert sorted(os.listdir(tmp_path)) == ["sequence.onnx"]


def test_analyze_takes_the_run_folder_train_prints(tmp_path, capsys):
    # `ssmkit train` ends with "results in runs/<task>-<model>"; `ssmkit analyze runs/<task>-<model>` said "no
    # checkpoint at" (it took files only); a sysid run folder holds model.pt
    from ssmkit.models import SequenceModel, SequenceModelConfig

    config = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=1, head="regress",
                                 layer_options={"d_state": 2})
    model = SequenceModel.from_config(config)
    run = tmp_path / "runs" / "adding-s4d"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"hyper_parameters": {"model": config.to_dict()},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               run / "checkpoints" / "last.ckpt")
    loaded = load_model(str(run))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert cli_main(["analyze", str(run), "--no-plots"]) == 0
    assert (run / "analysis" / "summary.md").is_file()  # beside checkpoints/, as for the file
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at '.*empty': a folder, holding none of "
                                                r"checkpoints/last.ckpt, model.pt, last.ckpt"):
        cli_main(["analyze", str(empty)])
