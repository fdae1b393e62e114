"""The whole-sequence forward in real arithmetic (`RealLTISequence`) and its ONNX graph for any length.

Every LTI layer that registers (``supports("state_space")``) is checked eagerly against its own ``forward`` in
float64, across chunk boundaries, from zero and from a forward state; the ONNX graph is run by onnxruntime for the
four realisation kinds (modal SISO, modal MIMO, dense, real diagonal), for the mixers around an LTI core (GSS, H3)
and for a model with a gated mixer, at lengths
and batch sizes other than the traced ones, and its final state is continued by the step graph of `export_onnx`.
"""

import numpy as np
import pytest
import torch

from ssmkit import layers
from ssmkit.analysis.onnx_export import onnx_state
from ssmkit.analysis.onnx_sequence import RealLTISequence, _check_dynamic_length, export_onnx_sequence, real_sequence_model
from ssmkit.models import SequenceModel
from ssmkit.sysid import DeepWiener
from tests.conftest import H, NEEDED_AT_TINY_WIDTH, make_layer, rel_err, variants

LTI = sorted(name for name in layers.available() if make_layer(name).supports("state_space"))


def _model(name: str, dtype: torch.dtype, options: dict | None = None, n_layers: int = 2) -> SequenceModel:
    torch.manual_seed(0)
    opts = {**NEEDED_AT_TINY_WIDTH.get(name, {}), **(variants(name)[0] if options is None else options)}
    # tanh, not GELU: onnxruntime's CPU provider has no float64 Erf
    return SequenceModel(d_input=2, d_model=H + 1, n_layers=n_layers, layer=name, layer_options=opts, d_output=3,
                         head="regress", pool=None, activation="tanh", dtype=dtype).eval()


def _same_states(got: list, want: list) -> float:
    return max(rel_err(torch.as_tensor(g), torch.as_tensor(w)) for g, w in zip(got, want))


def test_the_lti_layers_are_found():
    assert {"s4", "s4d", "s5", "lru", "ema"} <= set(LTI)


@pytest.mark.parametrize("name", LTI)
def test_real_sequence_equals_the_layer_forward_for_every_variant(name):
    """float64, lengths across the chunk boundaries (T = 64 here: `default_chunk`), from rest and from a state."""
    for opts in variants(name):
        layer = make_layer(name, opts, dtype=torch.float64).eval()
        real = RealLTISequence(layer.state_space(), dtype=torch.float64).to(layer.state_device())
        x = torch.randn(2, 203, H, dtype=torch.float64, device=layer.state_device())
        with torch.no_grad():
            _, s = layer(x[:, :77])
            for L in (1, 7, 8, 9, 64, 65, 126):
                for state in (None, s):
                    y, h = layer(x[:, 77 : 77 + L], state)
                    got_y, got_h = real(x[:, 77 : 77 + L], onnx_state_of(layer, state))
                    assert rel_err(got_y, y) <= 1e-11, (opts, L, rel_err(got_y, y))
                    assert rel_err(got_h, onnx_state_of(layer, h)) <= 1e-11, (opts, L)


def test_real_liquid_s4_equals_the_layer_in_forward_and_step():
    """Liquid-S4 is not LTI, but S4's core driven by the liquid input (`RealLiquidS4`): float64, both liquid kernels
    (PB, KB with degree 3 and LeCun's tanh), lengths across chunk boundaries, from rest and from a forward state;
    then 5 steps."""
    from ssmkit.analysis.onnx_liquid import RealLiquidS4
    from ssmkit.layers.liquid import LiquidS4State

    for opts in variants("liquid_s4"):
        layer = make_layer("liquid_s4", opts, dtype=torch.float64).eval()
        device = layer.state_device()
        real = RealLiquidS4(layer, lambda system, dtype: RealLTISequence(system, dtype), torch.float64).to(device)
        x = torch.randn(2, 150, H, dtype=torch.float64, device=device)
        with torch.no_grad():
            _, s = layer(x[:, :77])
            for L in (1, 9, 64, 70):
                for state in (None, s):
                    y, h = layer(x[:, 77 : 77 + L], state)
                    start = None if state is None else LiquidS4State(*(p.to(device) for p in _real_parts(layer, state)))
                    got_y, got_h = real(x[:, 77 : 77 + L], start)
                    assert rel_err(got_y, y) <= 1e-12, (opts, L)
                    assert _same_states(list(got_h), _real_parts(layer, h)) <= 1e-12, (opts, L)
            state, mine = layer.initial_state(2), real.initial_state(2)
            for t in range(5):
                (y, state), (got_y, mine) = layer.step(x[:, t], state), real.step(x[:, t], mine)
                assert rel_err(got_y, y) <= 1e-12, (opts, t)


def _real_parts(layer, state) -> list:
    return [torch.from_numpy(p) for p in onnx_state(_Single(layer), [state])]


def onnx_state_of(layer, state):
    """The layer's state in the real layout of the exported graphs (or None)."""
    if state is None:
        return None
    part = onnx_state(_Single(layer), [state])[0]
    return torch.from_numpy(part).to(layer.state_device())


class _Single(torch.nn.Module):
    """A one-layer model, for `onnx_state`."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("name", ["s4d", "s5"])
def test_any_chunk_length_gives_the_same_sequence(name, chunk_size):
    model = _model(name, torch.float64)
    real = real_sequence_model(model, chunk_size=chunk_size)
    x = torch.randn(3, 131, 2, dtype=torch.float64)
    with torch.no_grad():
        (y, s), (got_y, got_s) = model(x), real(x)
    assert rel_err(got_y, y) <= 1e-12
    assert _same_states([t.reshape(t.shape[0], -1) for t in got_s], [torch.from_numpy(p).reshape(3, -1)
                                                                     for p in onnx_state(model, s)]) <= 1e-12


def test_bad_input_and_options_are_refused(tmp_path):
    layer = make_layer("s4d")
    with pytest.raises(ValueError, match="chunk_size"):
        RealLTISequence(layer.state_space(), dtype=torch.float64, chunk_size=0)
    real = RealLTISequence(layer.state_space(), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(B, L, 3\)"):
        real(torch.randn(2, 5, H + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_length"):
        export_onnx_sequence(_model("s4d", torch.float32), tmp_path / "unused.onnx", max_length=2)
    with pytest.raises(ValueError, match="batch_size"):
        export_onnx_sequence(_model("s4d", torch.float32), tmp_path / "unused.onnx", batch_size=0)
    assert not list(tmp_path.iterdir())  # refused before anything is written (a refusal that wrote went to the cwd)


# ----------------------------------------------------------------------------------------------------------------
# onnxruntime


def _session(path: str):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _run(session, info, u: torch.Tensor, parts: list) -> tuple[torch.Tensor, list]:
    y, *final = session.run(None, {info.input_name: u.numpy(), **dict(zip(info.state_names, parts))})
    return torch.from_numpy(y), final


@pytest.mark.parametrize("name", ["s4d", "s5", "s4", "ema", "gss", "h3", "liquid_s4"])
def test_onnx_sequence_graph_runs_every_length_and_batch(tmp_path, name):
    """One graph (traced at B 2, L 2T + 3), run at other lengths and batch sizes, from rest and from a forward state:
    float32 outputs and final states within 1e-5 of the model's. GSS and H3: mixers whose LTI cores are replaced;
    Liquid-S4: S4's core driven by the liquid input. Two blocks for S4D (the blocks' states handed on in one graph),
    one for the others (an export's cost grows with the graph: the blocks are the same code)."""
    pytest.importorskip("onnxscript")
    model = _model(name, torch.float32, n_layers=2 if name == "s4d" else 1)
    info = export_onnx_sequence(model, str(tmp_path / f"{name}.onnx"))
    assert not list(tmp_path.glob(".*partial"))  # written under a temporary name, then renamed
    session = _session(info.path)
    for B, L in ((1, 2), (3, 64), (2, 65), (1, 700)):
        u, more = torch.randn(B, L, 2), torch.randn(B, 9, 2)
        with torch.no_grad():
            y, s = model(u)
            y_more, s_more = model(more, s)
        got, final = _run(session, info, u, info.initial_state(B))
        assert rel_err(got, y) <= 1e-5 and _same_states(final, onnx_state(model, s)) <= 1e-5, (B, L)
        got, final = _run(session, info, more, onnx_state(model, s))  # continued from the model's own state
        assert rel_err(got, y_more) <= 1e-5 and _same_states(final, onnx_state(model, s_more)) <= 1e-5, (B, L)


def test_a_deep_wiener_simulates_in_onnx_and_the_step_graph_continues(tmp_path_factory):
    """float64 DeepWiener (two S4D blocks): the sequence graph simulates a record, the step graph of `export_onnx`
    carries on from the sequence graph's final state, and both equal the model's own forward. The graphs are those
    ``ssmkit analyze --onnx`` writes with `export_onnx_sequence` and `export_onnx` (tests/analysis/onnx_cache.py: one
    run per process, shared with tests/analysis/test_commands.py)."""
    from tests.analysis.onnx_cache import analyzed_deep_wiener

    run = analyzed_deep_wiener(tmp_path_factory)
    model, sequence, step = run.model, run.sequence, run.step
    assert run.code == 0 and sequence.state_dtypes == step.state_dtypes == (np.dtype(np.float64),) * 2
    torch.manual_seed(0)
    u = torch.randn(1, 300, 1, dtype=torch.float64)
    with torch.no_grad():
        want, _ = model(u)
    seq_session = _session(sequence.path)
    step_session = _session(step.path)
    got, parts = _run(seq_session, sequence, u[:, :250], sequence.initial_state(1))
    tail = []
    for t in range(250, 300):
        y, *parts = step_session.run(None, {step.input_name: u[:, t].numpy(), **dict(zip(step.state_names, parts))})
        tail.append(torch.from_numpy(y))
    assert rel_err(torch.cat([got, torch.stack(tail, 1)], 1), want) <= 1e-10


def test_a_gated_mixer_keeps_its_own_forward_in_the_graph(tmp_path):
    """Mamba has no state-space realisation: its traced forward goes into the graph as it is, with its state (one
    block: its sequence graph takes ~45 s to export with two)."""
    model = _model("mamba", torch.float32, n_layers=1)
    info = export_onnx_sequence(model, str(tmp_path / "mamba.onnx"))
    session = _session(info.path)
    u = torch.randn(2, 150, 2)
    with torch.no_grad():
        y, s = model(u)
    got, final = _run(session, info, u, info.initial_state(2))
    assert rel_err(got, y) <= 1e-5 and _same_states(final, onnx_state(model, s)) <= 1e-5


def test_a_growing_state_is_refused(tmp_path):
    with pytest.raises(NotImplementedError, match="growing axis.*with_state=False"):
        export_onnx_sequence(_model("attention", torch.float32), str(tmp_path / "attention.onnx"))
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="with_state"):
        export_onnx_sequence(_model("s4d", torch.float32), str(tmp_path / "s4d.onnx"), with_state=1)


@pytest.mark.parametrize("name", ["attention", "mega", "hyena"])
def test_without_state_the_growing_state_layers_export_from_rest(tmp_path, name):
    """``with_state=False``: ``u -> y`` from rest. Attention (a key/value cache), Mega (its EMA core replaced, its
    attention traced) and Hyena (an FFT convolution: its inverse FFT written as a full inverse DFT while exporting)."""
    pytest.importorskip("onnxscript")
    model = _model(name, torch.float32, n_layers=1)  # one block: the layer's forward is what is tested
    info = export_onnx_sequence(model, str(tmp_path / f"{name}.onnx"), with_state=False)
    assert info.state_names == () and info.output_names == ("y",)
    session = _session(info.path)
    for B, L in ((1, 3), (2, 300)):
        u = torch.randn(B, L, 2)
        with torch.no_grad():
            y, _ = model(u)
        # Hyena: onnxruntime's float32 DFT at lengths other than powers of two (2L = 600 here) is less accurate
        # than torch's FFT: 3.5e-5 (1.7e-7 at L = 4 096)
        tol = 1e-4 if name == "hyena" else 1e-5
        assert rel_err(torch.from_numpy(session.run(None, {"u": u.numpy()})[0]), y) <= tol, (B, L)


def test_a_graph_for_one_length_only_is_refused(tmp_path):
    """The exporter's fallback (a draft export) writes a graph with the example's length fixed: it is caught."""
    path = tmp_path / "fixed.onnx"
    with torch.no_grad():
        torch.onnx.export(torch.nn.Linear(2, 3), (torch.randn(2, 5, 2),), str(path), dynamo=True)
    with pytest.raises(NotImplementedError, match=r"one sequence length only \(5\)"):
        _check_dynamic_length(path, "Linear")


def test_an_ensemble_with_a_saturated_output_simulates_from_its_encoder_state(tmp_path):
    """The shipped Cascaded Tanks recipe's model kind: a WienerEnsemble whose members clip (at 10 V there) and estimate their
    initial state from a window of past data; the graph starts from `onnx_state` of that estimate."""
    from ssmkit.sysid.ensemble import WienerEnsemble

    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    # two one-layer members (three two-layer ones took 16 s to export, with nothing more to test)
    members = [DeepWiener(n_inputs=1, n_outputs=1, d_model=4, n_layers=1, layer="s4d", layer_options={"d_state": 4},
                          encoder_window=10, output_range=(None, 0.0)) for _ in range(2)]
    model = WienerEnsemble(members).eval()
    info = export_onnx_sequence(model, str(tmp_path / "ensemble.onnx"))
    u, past = torch.randn(2, 120, 1), (torch.randn(2, 10, 1), torch.randn(2, 10, 1))
    with torch.no_grad():
        start = model.estimate_state(*past)
        want, final = model(u, start)
        free, _ = members[0](u, start[0], saturate=False)
    assert (free > 0).any() and (want <= 0).all()  # the clip is active
    got, parts = _run(_session(info.path), info, u, onnx_state(model, start))
    assert rel_err(got, want) <= 1e-5 and _same_states(parts, onnx_state(model, final)) <= 1e-5
