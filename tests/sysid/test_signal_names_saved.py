"""A deep Wiener model carries the names of its inputs and outputs (``DeepWiener.signals``): ``build_model`` names
them after the benchmark, ``checkpoint`` saves them (``ssmkit sysid``'s ``model.pt``), ``from_checkpoint`` restores
them, and ``to_control(model)`` names the python-control systems with them when no benchmark is at hand (a model
loaded from its file, the data no longer beside it).

References: the names are the benchmark's own (``SysidBenchmark.inputs`` / ``outputs``); the exported system loaded
from the file is checked against the one exported from the live model with the benchmark, by simulating both with
python-control on the same input.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import build_model, signal_names, to_control

F64 = torch.float64
RECIPE = Recipe(d_model=3, n_layers=1, d_state=4, encoder_window=0)


def toy() -> SysidBenchmark:
    """Two inputs ("valve", "pump"), two outputs ("level", "flow"), Ts 0.5 s."""
    g = torch.Generator().manual_seed(2)

    def rec(n, name):
        return IORecord(torch.randn(n, 2, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64), 0.5,
                        name)

    return SysidBenchmark("toy", "Toy", [rec(40, "est")], [rec(30, "test")], 4, "m",
                          input_names=("valve", "pump"), output_names=("level", "flow"))


def reload(model):
    """The model through torch.save / torch.load(weights_only=True), as ``ssmkit analyze`` reads ``model.pt``."""
    buffer = io.BytesIO()
    torch.save(model.checkpoint(benchmark="toy"), buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    cls = WienerEnsemble if "wiener_ensemble" in checkpoint else DeepWiener
    return cls.from_checkpoint(checkpoint), checkpoint


def test_build_model_names_the_signals_and_the_checkpoint_keeps_them():
    bench = toy()
    torch.manual_seed(0)
    model = build_model(bench, "s4d", RECIPE, dtype=F64)
    assert model.signals == {"inputs": ("valve", "pump"), "outputs": ("level", "flow")}
    loaded, checkpoint = reload(model)
    assert checkpoint["signals"] == {"inputs": ["valve", "pump"], "outputs": ["level", "flow"]}
    assert loaded.signals == model.signals and signal_names(loaded) == (("valve", "pump"), ("level", "flow"))
    predictor = build_model(bench, "s4d", RECIPE, "prediction", dtype=F64)
    assert predictor.signals["inputs"] == ("valve", "pump", "level (previous sample)", "flow (previous sample)")
    assert reload(predictor)[0].signals == predictor.signals


def test_a_loaded_model_exports_with_its_names_and_the_same_dynamics():
    control = pytest.importorskip("control")
    bench = toy()
    torch.manual_seed(0)
    model = build_model(bench, "s4d", RECIPE, dtype=F64)
    model.set_normalisation([r.u for r in bench.train], [r.y for r in bench.train])
    loaded, _ = reload(model)
    from_file, live = to_control(loaded, name="plant"), to_control(model, bench, name="plant")
    assert (from_file.input_labels, from_file.output_labels) == (["valve", "pump"], ["level", "flow"])
    assert from_file.dt == live.dt == 0.5
    t = np.arange(25) * 0.5
    u = np.stack([np.sin(0.3 * t), np.cos(0.2 * t)])  # (m, L), python-control's layout
    got = control.input_output_response(from_file, t, u).outputs
    want = control.input_output_response(live, t, u).outputs
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.abs(want).max() > 1e-3  # a response, not zeros
    (local,) = to_control(loaded, u0=[0.2, -0.1])
    assert (local.input_labels, local.output_labels) == (["valve", "pump"], ["level", "flow"])
    np.testing.assert_allclose(control.dcgain(local), control.dcgain(to_control(model, bench, u0=[0.2, -0.1])[0]),
                               rtol=1e-12, atol=1e-14)


def test_an_unnamed_model_asks_for_the_benchmark():
    model = DeepWiener(2, 1, d_model=3, n_layers=1, dtype=F64)
    assert model.signals is None and "signals" not in model.checkpoint()
    with pytest.raises(ValueError, match="the model's signals are not named: pass the benchmark"):
        signal_names(model)
    with pytest.raises(ValueError, match="the model's signals are not named"):
        to_control(model)


def test_names_are_checked():
    model = DeepWiener(2, 1, d_model=3, n_layers=1)
    for inputs, outputs, match in (
            (["a"], ["y"], "inputs must be 2 distinct non-empty strings"),
            (["a", "a"], ["y"], "inputs must be 2 distinct"),
            (["a", 3], ["y"], "inputs must be 2"),
            ("ab", ["y"], "inputs must be 2"),
            (["a", "b"], ["y", "z"], "outputs must be 1 distinct non-empty strings"),
            (["a", "b"], [" "], "outputs must be 1")):
        with pytest.raises(ValueError, match=match):
            model.name_signals(inputs, outputs)
    assert model.signals is None  # nothing half-set
    model.name_signals(["a.b", "c"], ["y"])
    with pytest.raises(ValueError, match=r"cannot hold '\.'.*the model names \['a\.b'\].*model\.name_signals"):
        to_control(model)
    with pytest.raises(ValueError, match="metadata must not set 'signals'"):
        model.checkpoint(signals={"inputs": ["x"]})


def test_an_ensemble_keeps_its_members_names():
    bench = toy()
    torch.manual_seed(0)
    members = [build_model(bench, "s4d", RECIPE, dtype=F64) for _ in range(2)]
    ensemble = WienerEnsemble(members)
    assert ensemble.signals == {"inputs": ("valve", "pump"), "outputs": ("level", "flow")}
    loaded, checkpoint = reload(ensemble)
    assert checkpoint["signals"]["outputs"] == ["level", "flow"]
    assert all(m.signals == ensemble.signals for m in loaded.members)
    members[1].name_signals(["u1", "u2"], ["level", "flow"])  # members that disagree: no names for the ensemble
    assert WienerEnsemble(members).signals is None and "signals" not in WienerEnsemble(members).checkpoint()
    ensemble.name_signals(["a", "b"], ["c", "d"])
    assert [m.signals["inputs"] for m in ensemble.members] == [("a", "b")] * 2
