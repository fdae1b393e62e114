"""The sequence graph's ``lengths`` input: right-padded batches in onnxruntime, bidirectional layers and pools.

``SequenceModel.forward(x, lengths=)`` gives each item what its unpadded sequence gives alone: the bidirectional
layers read zeros after its end (their anti-causal scans start there), the pool takes its own steps. The graph of
`export_onnx_sequence` had no such input, so a padded batch gave the shorter items other answers, silently (a
bidirectional S4D classifier with mean pooling, lengths 7 and 13 padded to 13: 3.8e-2 off in its logits; a causal
one, 1.6e-1, its pool averaging the padding). ``lengths=True`` adds ``lengths`` (B,) int64.

References: each item run alone at its own length by the model's own forward (the layers' kernels by FFT, not the
exported real scans), and ``forward(lengths=)``. Eagerly in float64 for every bidirectional kind that exports (S4,
S4D, DSS, DLR, EMA, S5, LRU, Mega's EMA core, SGConv's own forward) and every pool; in onnxruntime (float32) for one
graph holding the seven LTI kinds, one token Mega model with a pad_id and one causal model with intervals and a
state.
"""

import numpy as np
import pytest
import torch

from ssmkit.analysis.onnx_export import OnnxExport, onnx_state
from ssmkit.analysis.onnx_sequence import (
    SequenceFunction,
    _replace_bidirectional_layers,
    _traceable_masks,
    export_onnx_sequence,
    real_sequence_model,
)
from ssmkit.layers import build
from ssmkit.models import SequenceModel
from tests.conftest import rel_err

KINDS = {"s4": {"d_state": 8, "l_max": 32}, "s4d": {"d_state": 4}, "dss": {"d_state": 4}, "dlr": {"d_state": 4},
         "ema": {"d_state": 2}, "s5": {"d_state": 16, "blocks": 2}, "lru": {"d_state": 4}}


def _model(layer, options: dict, pool: str | None, n_layers: int = 1, dtype=torch.float32) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(d_input=2, d_model=4, n_layers=n_layers, layer=layer, layer_options=options, d_output=3,
                         head="classify" if pool else "regress", pool=pool, activation="tanh", dtype=dtype).eval()


def _alone(model, u: torch.Tensor, lengths: list[int], pooled: bool, **extra) -> list[torch.Tensor]:
    """Each item's answer from the model run on its unpadded sequence alone: (d_output,), or (n, d_output)."""
    with torch.no_grad():
        out = [model(u[i:i + 1, :n], **{k: v[i:i + 1, :n] for k, v in extra.items()})[0][0]
               for i, n in enumerate(lengths)]
    return out


def _check(got: torch.Tensor, want: torch.Tensor, alone: list[torch.Tensor], lengths: list[int], tol: float) -> None:
    """got equals forward(lengths=)'s want and each item alone, at each item's steps (pooled: its row)."""
    for i, n in enumerate(lengths):
        g, w = (got[i], want[i]) if got.dim() == 2 else (got[i, :n], want[i, :n])
        assert rel_err(g, w) <= tol and rel_err(g, alone[i]) <= tol, (i, n, rel_err(g, w), rel_err(g, alone[i]))


@pytest.mark.parametrize("name", [*KINDS, "mega", "sgconv"])
def test_the_converted_forward_with_lengths_gives_each_item_its_own_sequences_answer(name):
    """float64, eagerly: the converted copy (real two-scan layers, Mega wrapped) as the graph computes it, through
    `SequenceFunction` with lengths 7, 13, 1 of L = 13, the padding NaN; every pool, two blocks. Mega: chunks of 4."""
    options = {"bidirectional": True, **KINDS.get(name, {"mega": {"chunk_size": 4}}.get(name, {}))}
    lengths = [7, 13, 1]
    torch.manual_seed(1)
    u = torch.randn(3, 13, 2, dtype=torch.float64)
    padded = u.clone()
    padded[0, 7:], padded[2, 1:] = float("nan"), float("inf")
    for pool in ("mean", "last", None):
        model = _model(name, options, pool, n_layers=2, dtype=torch.float64)
        converted = _traceable_masks(_replace_bidirectional_layers(real_sequence_model(model), chunk_size=4))
        with torch.no_grad():
            got = SequenceFunction(converted, with_state=False, with_lengths=True)(padded, torch.tensor(lengths))[0]
            want = model(padded, lengths=torch.tensor(lengths))[0]
        _check(got, want, _alone(model, u, lengths, pool is not None), lengths, 1e-12)


@pytest.mark.parametrize("name", ["s5", "mega", "sgconv", "s4d"])
def test_a_bare_layers_converted_forward_with_lengths_reads_zeros_after_each_length(name):
    """float64, eagerly: a bare bidirectional layer (S5: `RealBidirectionalSequence` given the mask; Mega:
    `_MaskedMega` given it, chunks of 4; SGConv: its own forward on u zeroed after each length) and a bare causal one
    (S4D, with a state: its outputs at each item's steps, and its final state that of forward on u zeroed after each
    length), lengths 4, 11 of L = 11, NaN padding."""
    bidirectional = name != "s4d"
    torch.manual_seed(5)
    layer = build(name, d_model=4, dtype=torch.float64, bidirectional=bidirectional,
                  **{"s5": {"d_state": 16, "blocks": 2}, "s4d": {"d_state": 4}, "mega": {"chunk_size": 4}}.get(name, {})
                  ).eval()
    lengths = [4, 11]
    u = torch.randn(2, 11, 4, dtype=torch.float64)
    padded, zeroed = u.clone(), u.clone()
    padded[0, 4:], zeroed[0, 4:] = float("nan"), 0.0
    converted = _traceable_masks(_replace_bidirectional_layers(real_sequence_model(layer), chunk_size=4))
    function = SequenceFunction(converted, with_state=not bidirectional, with_lengths=True)
    state = [] if bidirectional else [converted.initial_state(2)]
    with torch.no_grad():
        got, *final = function(padded, torch.tensor(lengths), *state)
        if name == "mega":  # its own masked forward (zeros add nothing to a convolution, but they are keys)
            want, last = layer(zeroed, mask=torch.arange(11) < torch.tensor(lengths)[:, None])
        else:
            want, last = layer(zeroed, return_state=not bidirectional)
    _check(got, want, _alone(layer, u, lengths, False), lengths, 1e-12)
    if not bidirectional:
        assert rel_err(final[0], torch.from_numpy(onnx_state(layer, last)[0])) <= 1e-12


def test_a_liquid_s4_model_from_rest_takes_lengths():
    """Liquid-S4 (causal, `RealLiquidS4` in the graph) from rest with lengths 6, 10 of L = 10 and a mean pool, eagerly
    as the graph computes it (before, its stand-in did not say it is causal, and a Block given a mask failed on it:
    Liquid-S4 models from rest with a pad_id did not export)."""
    model = _model("liquid_s4", {}, "mean", dtype=torch.float64)
    lengths = [6, 10]
    torch.manual_seed(6)
    u = torch.randn(2, 10, 2, dtype=torch.float64)
    function = SequenceFunction(_traceable_masks(real_sequence_model(model)), with_state=False, with_lengths=True)
    with torch.no_grad():
        got = function(u, torch.tensor(lengths))[0]
        want = model(u, lengths=torch.tensor(lengths))[0]
    _check(got, want, _alone(model, u, lengths, True), lengths, 1e-12)


def test_a_graph_of_every_lti_kind_takes_each_items_length(tmp_path):
    """One graph, seven bidirectional blocks (S4, S4D, DSS, DLR, EMA, S5, LRU) and a mean pool, chunks of 4: run at
    (B, L) = (2, 13) (the reproduction: lengths 7, 13) and (3, 70) (lengths 7, 70, 33; padding of random values)."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = _model(list(KINDS), {k: {"bidirectional": True, **v} for k, v in KINDS.items()}, "mean", len(KINDS))
    info = export_onnx_sequence(model, str(tmp_path / "kinds.onnx"), with_state=False, chunk_size=4, lengths=True)
    assert info.input_names == ("u", "lengths") and info.lengths_name == "lengths"
    session = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("u", "tensor(float)"), ("lengths", "tensor(int64)")]
    torch.manual_seed(2)
    for lengths in ([7, 13], [7, 70, 33]):
        u = torch.randn(len(lengths), max(lengths), 2)
        got = torch.from_numpy(session.run(None, info.feed(u.numpy(), lengths=np.array(lengths)))[0])
        with torch.no_grad():
            want = model(u, lengths=torch.tensor(lengths))[0]
        _check(got, want, _alone(model, u, lengths, True), lengths, 2e-5)
    full = torch.from_numpy(session.run(None, info.feed(u.numpy()))[0])  # lengths None: every step, L each
    with torch.no_grad():
        assert rel_err(full, model(u)[0]) <= 2e-5


def test_a_token_mega_model_with_pad_id_and_lengths_gives_each_item_its_own_answer(tmp_path):
    """Token ids, ``pad_id`` 0 and lengths together, a bidirectional Mega (chunks of 4) and a mean pool: item 0 padded
    by pad ids, item 1 by its length (padding of other ids), item 2 by both, item 3 not at all. The graph masks the
    EMA input and the attention keys over the whole padded L (Mega's own masked forward stops at the longest item, a
    length torch.export cannot trace: before, a pad_id model with a bidirectional Mega failed to export)."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    model = SequenceModel(d_input=1, d_model=4, n_layers=1, layer="mega",
                          layer_options={"bidirectional": True, "chunk_size": 4}, d_output=3, vocab_size=7, pad_id=0,
                          activation="tanh").eval()
    info = export_onnx_sequence(model, str(tmp_path / "mega.onnx"), with_state=False, lengths=True)
    assert info.input_names == ("u", "lengths")
    x = torch.randint(1, 7, (4, 30))
    x[0, 9:], x[2, 20:] = 0, 0
    lengths, own = [30, 14, 25, 30], [9, 14, 20, 30]  # the given lengths, and each item's own tokens
    got = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"]).run(
        None, info.feed(x.numpy(), lengths=np.array(lengths)))[0]
    with torch.no_grad():
        want = model(x, lengths=torch.tensor(lengths))[0]
    _check(torch.from_numpy(got), want, _alone(model, x, own, True), own, 2e-5)


def test_a_causal_pooled_model_with_intervals_and_a_state_takes_each_items_length(tmp_path):
    """The same bug without a bidirectional layer: the pool. S4D, pool "last", intervals and a state: inputs
    (u, intervals, lengths, state_0); the padding's gaps NaN (read as 1), its inputs NaN (read as 0). y equals each
    item alone; the next state is forward(lengths=)'s (after all L steps, as documented)."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = _model("s4d", {"d_state": 4}, "last")
    info = export_onnx_sequence(model, str(tmp_path / "causal.onnx"), intervals=True, lengths=True)
    assert info.input_names == ("u", "intervals", "lengths", "state_0")
    lengths = [5, 12, 9]
    torch.manual_seed(4)
    u, tau = torch.randn(3, 12, 2), torch.rand(3, 12) + 0.5
    padded, gaps = u.clone(), tau.clone()
    for i, n in enumerate(lengths):
        padded[i, n:], gaps[i, n:] = float("nan"), float("nan")
    with torch.no_grad():
        want, states = model(padded, intervals=gaps, lengths=torch.tensor(lengths))
    session = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    feed = info.feed(padded.numpy(), intervals=np.nan_to_num(gaps.numpy(), nan=1.0), lengths=np.array(lengths))
    feed["intervals"] = gaps.numpy()  # the graph reads the padding's gaps as 1 itself (feed refuses NaN)
    y, state = session.run(None, feed)
    _check(torch.from_numpy(y), want, _alone(model, u, lengths, True, intervals=tau), lengths, 2e-5)
    assert rel_err(torch.from_numpy(state), torch.from_numpy(onnx_state(model, states)[0])) <= 2e-5


def _info(lengths_name: str | None) -> OnnxExport:
    return OnnxExport(path="g.onnx", input_name="u", state_names=(), output_names=("y",), state_shapes=(),
                      state_dtypes=(), lengths_name=lengths_name)


def test_feed_checks_the_lengths():
    u = np.zeros((2, 5, 1), dtype=np.float32)
    info = _info("lengths")
    assert info.input_names == ("u", "lengths")
    fed = info.feed(u, lengths=[3, 5])
    assert fed["lengths"].dtype == np.int64 and fed["lengths"].tolist() == [3, 5]
    assert info.feed(u)["lengths"].tolist() == [5, 5]  # None: no padding
    for bad, match in (([0, 5], r"in \[1, L = 5\]"), ([3, 6], r"in \[1, L = 5\]"), ([3], r"\(B,\) = \(2,\)"),
                       ([3.0, 5.0], "integers")):
        with pytest.raises(ValueError, match=match):
            info.feed(u, lengths=bad)
    with pytest.raises(ValueError, match="no lengths input.*lengths=True"):
        _info(None).feed(u, lengths=[3, 5])


def test_lengths_is_refused_for_a_model_whose_forward_takes_none(tmp_path):
    from ssmkit.sysid import DeepWiener

    wiener = DeepWiener(n_inputs=1, n_outputs=1, d_model=2, n_layers=1, layer_options={"d_state": 4})
    with pytest.raises(ValueError, match="DeepWiener's forward takes no lengths"):
        export_onnx_sequence(wiener, str(tmp_path / "w.onnx"), lengths=True)
    with pytest.raises(ValueError, match="lengths must be a bool"):
        export_onnx_sequence(wiener, str(tmp_path / "w.onnx"), lengths=1)
    assert not list(tmp_path.iterdir())


def test_analyze_exports_and_prints_the_lengths_of_a_pooled_or_bidirectional_model(tmp_path, capsys, monkeypatch):
    from ssmkit.analysis import commands, onnx_export, onnx_sequence
    from ssmkit.sysid import DeepWiener

    pooled = _model("s4d", {"d_state": 4}, "mean")
    both = _model("s4d", {"d_state": 4, "bidirectional": True}, None)
    causal = _model("s4d", {"d_state": 4}, None)
    assert commands._sequence_options(pooled) == {"lengths": True} == commands._sequence_options(both)
    assert commands._sequence_options(causal) == {}
    assert commands._sequence_options(DeepWiener(n_inputs=1, n_outputs=1, d_model=2, n_layers=1)) == {}
    calls = []

    class Info:
        def __init__(self, path, lengths):
            self.path, self.state_names, self.state_shapes, self.interval_name = path, (), (), None
            self.lengths_name = "lengths" if lengths else None

    def step(model, path, **kwargs):
        raise NotImplementedError("bidirectional: no step")

    def sequence(model, path, **kwargs):
        calls.append(kwargs)
        if kwargs.get("with_state", True):
            raise NotImplementedError("no state: export it with with_state=False")
        return Info(path, kwargs.get("lengths", False))

    monkeypatch.setattr(onnx_export, "export_onnx", step)
    monkeypatch.setattr(onnx_sequence, "export_onnx_sequence", sequence)
    assert commands._write_onnx(both, str(tmp_path)) == 1  # no step graph
    assert calls == [{"intervals": False, "lengths": True}, {"with_state": False, "lengths": True}]
    assert f"{tmp_path / 'sequence.onnx'}: inputs u (B, L, 2), lengths (B) int64, no state; outputs y" in (
        capsys.readouterr().out.splitlines())
