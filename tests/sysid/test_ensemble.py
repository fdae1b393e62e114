"""WienerEnsemble: the mean of its members' outputs (computed member by member), step = forward, encoder states,
checkpoint round trip through ``ssmkit analyze``'s loader, ONNX export = step, ``Recipe.combine`` in ``identify``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from ssmkit.analysis.commands import load_model
from ssmkit.cli import main
from ssmkit.analysis.layerwise import analyze_model
from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.fit import simulate_record, split_tail
from ssmkit.sysid.metrics import rmse
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import evaluate, identify
from tests.conftest import DEVICE, rel_err, run_steps
from tests.sysid.test_workflow import DATA, needs_data, wiener_bench


def members(k: int = 3, dtype=torch.float64, **kw) -> list[DeepWiener]:
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        opts = dict(n_inputs=2, n_outputs=3, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 4},
                    dt=0.5, encoder_window=5, dtype=dtype, device=DEVICE)
        opts.update(kw)
        m = DeepWiener(**opts)
        with torch.no_grad():  # distinct normalisations: each member scales with its own
            m.u_mean.normal_()
            m.y_mean.normal_()
            m.y_std.uniform_(0.5, 2.0)
        out.append(m)
    return out


def test_output_is_the_mean_of_the_members_and_step_equals_forward():
    ms = members()
    ens = WienerEnsemble(ms)
    u = torch.randn(2, 20, 2, dtype=torch.float64, device=DEVICE)
    u_past = torch.randn(2, 5, 2, dtype=torch.float64, device=DEVICE)
    y_past = torch.randn(2, 5, 3, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        # the reference: each member simulated on its own from its own encoder state, then averaged by hand
        ref = sum(m(u, m.estimate_state(u_past, y_past))[0] for m in ms) / 3
        state = ens.estimate_state(u_past, y_past)
        y, final = ens(u, state)
        y_steps, _ = run_steps(ens, u, state)
        y1, s1 = ens(u[:, :8], state)
        y2, _ = ens(u[:, 8:], s1)
        y_rest = ens(u, return_state=False)[0]
        ref_rest = sum(m(u)[0] for m in ms) / 3
    assert y.shape == (2, 20, 3) and rel_err(y, ref) < 1e-12
    assert rel_err(y_steps, y) < 1e-10  # step = forward
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10  # chunked with the returned state = one pass
    assert rel_err(y_rest, ref_rest) < 1e-12  # from rest
    assert len(final) == 3 and all(len(f) == 2 for f in final)  # one DeepWiener state (2 blocks) per member
    assert ens.initial_state(4)[2][1].shape == ms[2].initial_state(4)[1].shape
    # simulate_record (validation, evaluation) reads the members' encoder window
    rec = wiener_bench(60, 30).test[0]
    rec = type(rec)(torch.randn(30, 2, dtype=torch.float64), torch.randn(30, 3, dtype=torch.float64), 0.5, "r")
    got, n = simulate_record(ens, rec)
    want = sum(simulate_record(m, rec)[0] for m in ms) / 3
    assert n == 5 and rel_err(got, want) < 1e-12


def test_bad_arguments_raise():
    ms = members(2)
    with pytest.raises(ValueError, match="non-empty list"):
        WienerEnsemble([])
    with pytest.raises(ValueError, match="non-empty list"):
        WienerEnsemble(ms[0])
    with pytest.raises(ValueError, match=r"members\[1\] must be a DeepWiener"):
        WienerEnsemble([ms[0], torch.nn.Linear(2, 3)])
    with pytest.raises(ValueError, match="must share encoder_window"):
        WienerEnsemble([ms[0], members(1, encoder_window=3)[0]])
    with pytest.raises(ValueError, match="must share n_outputs"):
        WienerEnsemble([ms[0], members(1, n_outputs=2)[0]])
    with pytest.raises(ValueError, match="must share dt"):
        WienerEnsemble([ms[0], members(1, dt=1.0)[0]])
    with pytest.raises(ValueError, match="parameter dtype"):
        WienerEnsemble([ms[0], members(1, dtype=torch.float32)[0]])
    ens = WienerEnsemble(ms)
    u = torch.randn(1, 4, 2, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="list of 2 member states"):
        ens(u, [ms[0].initial_state(1)])
    with pytest.raises(ValueError, match="list of 2 member states"):
        ens.step(u[:, 0], [ms[0].initial_state(1)])
    with pytest.raises(ValueError, match="metadata must not set"):
        ens.checkpoint(state_dict={})
    with pytest.raises(ValueError, match="wiener_ensemble"):
        WienerEnsemble.from_checkpoint({"state_dict": {}})


def test_checkpoint_round_trip_and_analysis_by_member(tmp_path):
    ms = members(2, dtype=torch.float32)
    ens = WienerEnsemble(ms)
    path = tmp_path / "model.pt"
    torch.save(ens.checkpoint(recipe={"combine": "average"}, benchmark="x"), path)
    loaded = load_model(str(path))  # the loader of `ssmkit analyze`
    assert isinstance(loaded, WienerEnsemble) and len(loaded) == 2 and loaded.dt == 0.5 and not loaded.training
    for name, value in ens.state_dict().items():
        assert torch.equal(value.cpu(), loaded.state_dict()[name]), name
    u = torch.randn(1, 12, 2)
    u_past, y_past = torch.randn(1, 5, 2), torch.randn(1, 5, 3)
    with torch.no_grad():
        want = ens.cpu()(u, ens.estimate_state(u_past, y_past))[0]
        got = loaded(u, loaded.estimate_state(u_past, y_past))[0]
    assert torch.equal(got, want)
    names = [r.name for r in analyze_model(loaded)]  # every member's LTI blocks, labelled by member
    assert names == ["members.0.layers.0", "members.0.layers.1", "members.1.layers.0", "members.1.layers.1"]
    assert len(loaded.state_space()) == 4 and loaded.is_stable()
    assert loaded.spectral_radius() == max(m.spectral_radius() for m in loaded.members)


def test_onnx_step_equals_ensemble_step(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime

    from ssmkit.analysis.onnx_export import export_onnx, onnx_state

    ens = WienerEnsemble(members(2, dtype=torch.float32, encoder_window=0, n_outputs=1)).cpu().eval()
    info = export_onnx(ens, str(tmp_path / "ensemble.onnx"))
    assert len(info.state_names) == 4  # two members × two blocks
    session = onnxruntime.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    u = torch.randn(3, 10, 2)
    parts = info.initial_state(3)
    s = ens.initial_state(3)
    with torch.no_grad():
        for t in range(10):
            y, *parts = session.run(None, {"u": u[:, t].numpy(), **dict(zip(info.state_names, parts))})
            y_ref, s = ens.step(u[:, t], s)
            assert rel_err(torch.from_numpy(y), y_ref) <= 1e-5
    for got, want in zip(parts, onnx_state(ens, s)):  # the nested member states map onto the graph's parts
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_identify_averages_the_restarts():
    bench = wiener_bench(400, 100)
    recipe = Recipe(d_model=2, n_layers=1, d_state=4, timescale=(0.5, 5.0), encoder_window=10, window=40,
                    batch_size=4, steps=8, lr=1e-2, val_fraction=0.25, val_every=4, patience=None)
    singles = [identify(bench, "s4d", recipe, seed=s, dtype=torch.float64)[0] for s in (2, 3)]
    model, history = identify(bench, "s4d", dataclasses.replace(recipe, restarts=2, combine="average"), seed=1,
                              dtype=torch.float64)
    assert isinstance(model, WienerEnsemble) and len(model) == 2
    assert history["combine"] == "average" and [r["seed"] for r in history["restarts"]] == [2, 3]
    for single, member in zip(singles, model.members):  # the members are the runs of the same seeds
        for name, value in single.state_dict().items():
            assert torch.equal(value, member.state_dict()[name]), name
    # its validation RMSE: the averaged simulation of the held-out tail, computed here by hand
    _, val = split_tail(bench.train, 0.25, 50, 12)
    sims = [(simulate_record(singles[0], r)[0] + simulate_record(singles[1], r)[0]) / 2 for r in val]
    want = float(rmse([s[10:] for s in sims], [r.y[10:] for r in val]))
    assert history["best_val_rmse"] == pytest.approx(want, rel=1e-12)
    scores = evaluate(model, bench)["records"][0]
    y_test = (simulate_record(singles[0], bench.test[0])[0] + simulate_record(singles[1], bench.test[0])[0]) / 2
    assert scores["rmse"][0] == pytest.approx(float(rmse(y_test, bench.test[0].y, n_init=bench.n_init)), rel=1e-12)
    for bad in ("mean", None, 1):
        with pytest.raises(ValueError, match="combine must be one of"):
            identify(bench, "s4d", dataclasses.replace(recipe, combine=bad))
    # counts are checked before anything compares them (a string raised TypeError) or ignores them (train_records,
    # folds under tail validation)
    for change, match in ((dict(n_layers="3"), r"n_layers must be an int >= 1; got '3'"),
                          (dict(encoder_window="3"), r"encoder_window must be an int >= 0; got '3'"),
                          (dict(train_records=0), r"train_records must be an int >= 1; got 0"),
                          (dict(train_records=2.5), r"train_records must be an int >= 1; got 2.5"),
                          (dict(folds=-1.0), r"folds must be None or an int K >= 2; got -1.0"),
                          (dict(folds="x"), r"folds must be None or an int K >= 2; got 'x'")):
        with pytest.raises(ValueError, match=match):
            identify(bench, "s4d", dataclasses.replace(recipe, **change))


@needs_data
def test_cli_average_writes_an_ensemble_that_analyze_reads(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sysid", "--benchmark", "cascaded_tanks", "--data-folder", str(DATA / "cascaded_tanks"), "--steps",
                 "2", "--recipe.val_every", "2", "--recipe.d_model", "2", "--recipe.n_layers", "1", "--recipe.restarts",
                 "2", "--recipe.combine", "average", "--recipe.validation", "tail", "--no-plots", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "average of 2 runs" in printed and "kept the average of every run" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["combine"] == "average" and res["chosen_seed"] is None and [r["seed"] for r in res["restarts"]] == [0, 1]
    model = load_model(str(out / "model.pt"))
    assert isinstance(model, WienerEnsemble) and len(model) == 2
    assert main(["analyze", str(out / "model.pt"), "--no-plots", "--out", str(tmp_path / "analysis")]) == 0
    assert "members.1.layers.0" in capsys.readouterr().out


@needs_data
def test_cli_an_interrupted_model_write_leaves_no_half_file(tmp_path, monkeypatch):
    # model.pt goes to a temporary name and is renamed: a write that fails half-way (disk full, a kill) leaves no
    # model.pt that `ssmkit analyze` would fail to read (before, torch.save wrote straight into it)
    import torch

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError("disk full")  # after the bytes went out

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        main(["sysid", "--benchmark", "cascaded_tanks", "--data-folder", str(DATA / "cascaded_tanks"), "--steps", "2",
              "--recipe.val_every", "2", "--recipe.d_model", "2", "--recipe.n_layers", "1", "--no-plots", "--out",
              str(out)])
    assert (out / "results.json").exists()  # the run got as far as writing the model
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("model") or p.suffix == ".tmp") == []
