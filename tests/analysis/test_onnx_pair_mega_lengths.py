"""The sequence graph's ``lengths`` for pair models and for Mega without chunks (analysis/onnx_sequence.py,
analysis/onnx_pair.py).

Before: ``export_onnx_sequence`` traced every model on (B, L, m), so a pair model (``SequenceModel(pair=True)``,
inputs (B, 2, L, m)) did not export at all, with or without lengths (torch.export failed inside forward: "a pair
model (pair=True) reads pairs (B, 2, L, 2) for d_input=2; got (s44, s20, 2)"). Now u is (B, 2, L, m) and ``lengths``
(B, 2) int64, as ``forward(lengths=)`` on a pair model. A bidirectional Mega without chunks reads its simple bias from
a table of the offsets |i - j| < max_positions; its own masked forward stops at the longest item, so a padded batch of
L > max_positions is fine in torch, but the graph (over the whole L) indexed the table out of range: onnxruntime
refused the run (GatherND "invalid index"; max_positions 140, L 150, lengths 140, 70), and with max_positions below
the exporter's example length (131) the export failed, blamed on "a two-sided kernel in complex arithmetic". Now the
graph reads the table at clamped offsets (exact within every item that fits) and gives NaN to an item that does not
(its forward raises).

References: each document (or sequence) run alone at its own length by the model's own forward (``features`` of one
document, then the head), and ``forward(lengths=)``; in onnxruntime (float32) for one pair graph, eagerly in float64
through `SequenceFunction` (what the graph computes) for Mega.
"""

import numpy as np
import pytest
import torch

from ssmkit.analysis.onnx_pair import PairOnnxExport
from ssmkit.analysis.onnx_sequence import (
    SequenceFunction,
    _replace_bidirectional_layers,
    _traceable_masks,
    _unconverted_bidirectional,
    export_onnx_sequence,
    real_sequence_model,
)
from ssmkit.models import SequenceModel
from tests.conftest import rel_err

MEGA = {"bidirectional": True, "chunk_size": None, "max_positions": 8}  # without chunks: the simple bias's table


def _pair_model(dtype=torch.float32) -> SequenceModel:
    """A dual encoder: a bidirectional S4D block and a bidirectional Mega block (no chunks), mean pool."""
    torch.manual_seed(0)
    return SequenceModel(d_input=2, d_model=4, n_layers=2, layer=["s4d", "mega"],
                         layer_options={"s4d": {"d_state": 4, "bidirectional": True}, "mega": MEGA}, d_output=3,
                         head="classify", pool="mean", pair=True, activation="tanh", dtype=dtype).eval()


def _pairs_alone(model: SequenceModel, x: torch.Tensor, lengths: list[list[int]]) -> torch.Tensor:
    """Each pair's logits from its two documents encoded alone at their own lengths (no padding anywhere): (B, C)."""
    with torch.no_grad():
        rows = []
        for i, (a, b) in enumerate(lengths):
            first, second = (model.features(x[i:i + 1, k, :n], return_state=False)[0] for k, n in ((0, a), (1, b)))
            rows.append(model.head(first, second)[0])
    return torch.stack(rows)


def test_a_pair_graph_takes_each_documents_length(tmp_path):
    """One graph, u (B, 2, L, 2) and lengths (B, 2): padded pairs at L = 13 > max_positions = 8 (every document at
    most 8 long: Mega's own forward stops at 8, the graph runs all 13), the padding NaN; the same graph at L = 6
    without lengths (every step); and a batch with one document of 11 > 8, which forward refuses: that pair's logits
    are NaN, the others' their documents' alone."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = _pair_model()
    info = export_onnx_sequence(model, str(tmp_path / "pairs.onnx"), with_state=False, lengths=True)
    assert isinstance(info, PairOnnxExport) and info.input_names == ("u", "lengths") and not info.state_names
    session = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, len(i.shape)) for i in session.get_inputs()] == [
        ("u", "tensor(float)", 4), ("lengths", "tensor(int64)", 2)]
    torch.manual_seed(1)
    x = torch.randn(4, 2, 13, 2)
    lengths = [[5, 8], [8, 2], [3, 1], [7, 6]]
    padded = x.clone()
    for i, (a, b) in enumerate(lengths):
        padded[i, 0, a:], padded[i, 1, b:] = float("nan"), float("nan")
    got = torch.from_numpy(session.run(None, info.feed(padded.numpy(), lengths=np.array(lengths)))[0])
    with torch.no_grad():
        want = model(padded, lengths=torch.tensor(lengths))[0]
    alone = _pairs_alone(model, x, lengths)
    for i in range(4):
        assert rel_err(got[i], want[i]) <= 2e-5 and rel_err(got[i], alone[i]) <= 2e-5, (i, lengths[i])
    short = x[:, :, :6]  # no padding: lengths None feeds L to every document
    got = torch.from_numpy(session.run(None, info.feed(short.numpy()))[0])
    assert rel_err(got, _pairs_alone(model, short, [[6, 6]] * 4)) <= 2e-5
    lengths[1] = [11, 2]  # beyond Mega's table
    with pytest.raises(ValueError, match="attends over at most 8 positions"):
        with torch.no_grad():
            model(x, lengths=torch.tensor(lengths))
    got = torch.from_numpy(session.run(None, info.feed(x.numpy(), lengths=np.array(lengths)))[0])
    assert torch.isnan(got[1]).all() and not torch.isnan(got[[0, 2, 3]]).any()
    assert rel_err(got[[0, 2, 3]], alone[[0, 2, 3]]) <= 2e-5


@pytest.mark.parametrize("attention, pool", [("softmax", "mean"), ("laplace", None)])
def test_a_mega_without_chunks_reads_a_padded_batch_longer_than_its_table(attention, pool):
    """float64, eagerly as the graph computes it (`SequenceFunction` of the converted copy): two bidirectional Mega
    blocks without chunks (max_positions 6), lengths 4, 6, 2 of L = 11, NaN padding,
    equals forward(lengths=) (which stops at 6) and each item alone; lengths 4, 9, 2: forward refuses the batch, the
    graph gives item 1 NaN and the others their own answers; without lengths, L = 6 is the model's forward and L = 7
    NaN throughout."""
    torch.manual_seed(2)
    model = SequenceModel(d_input=2, d_model=4, n_layers=2, layer="mega", d_output=3, activation="tanh",
                          layer_options={**MEGA, "max_positions": 6, "attention": attention},
                          head="classify" if pool else "regress", pool=pool, dtype=torch.float64).eval()
    converted = _traceable_masks(_replace_bidirectional_layers(real_sequence_model(model), chunk_size=4))
    masked = SequenceFunction(converted, with_state=False, with_lengths=True)
    x = torch.randn(3, 11, 2, dtype=torch.float64)
    with torch.no_grad():
        alone = [model(x[i:i + 1, :n])[0][0] for i, n in enumerate([4, 6, 2])]
    for lengths in ([4, 6, 2], [4, 9, 2]):
        padded = x.clone()
        for i, n in enumerate(lengths):
            padded[i, n:] = float("nan")
        with torch.no_grad():
            got = masked(padded, torch.tensor(lengths))[0]
            want = model(padded, lengths=torch.tensor(lengths))[0] if max(lengths) <= 6 else None
        if want is None:
            with pytest.raises(ValueError, match="attends over at most 6 positions"), torch.no_grad():
                model(padded, lengths=torch.tensor(lengths))
        for i, n in enumerate(lengths):
            g = got[i] if pool else got[i, :n]
            if n > 6:
                assert torch.isnan(g).all()
                continue
            assert rel_err(g, alone[i]) <= 1e-12, (lengths, i)
            assert want is None or rel_err(g, want[i] if pool else want[i, :n]) <= 1e-12
    whole = SequenceFunction(converted, with_state=False)
    with torch.no_grad():
        assert rel_err(whole(x[:, :6])[0], model(x[:, :6])[0]) <= 1e-12
        assert torch.isnan(whole(x[:, :7])[0]).all()


def test_a_pair_model_is_refused_with_a_state_or_intervals(tmp_path):
    """A pair model classifies whole pairs: no state in its graph (NotImplementedError naming with_state=False, as
    `ssmkit analyze --onnx` reads it to write the graph from rest) and no intervals (ValueError); nothing written."""
    model = _pair_model()
    with pytest.raises(NotImplementedError, match=r"pair model \(pair=True\).*with_state=False"):
        export_onnx_sequence(model, str(tmp_path / "p.onnx"), lengths=True)
    with pytest.raises(ValueError, match=r"pair model \(pair=True\) takes no intervals"):
        export_onnx_sequence(model, str(tmp_path / "p.onnx"), with_state=False, intervals=True)
    assert not list(tmp_path.iterdir())


def test_a_pair_models_step_graph_is_refused_and_analyze_describes_its_pair_inputs(tmp_path):
    """A pair model has no step: `export_onnx` says so before tracing (it failed with a long torch.export traceback
    about (B, 2, L) pairs), with and without intervals; `ssmkit analyze --onnx` asks for the whole-pair graph from rest
    with lengths (no fallback) and prints its inputs as pairs, u (B, 2, L, m) or (B, 2, L) token ids."""
    from ssmkit.analysis.commands import _input_summary, _sequence_options
    from ssmkit.analysis.onnx_export import export_onnx

    model = _pair_model()
    for intervals in (False, True):
        with pytest.raises(NotImplementedError, match=r"pair model \(pair=True\).*no step"):
            export_onnx(model, str(tmp_path / "s.onnx"), intervals=intervals)
    assert not list(tmp_path.iterdir())
    assert _sequence_options(model) == {"lengths": True, "with_state": False}
    assert _input_summary(model) == ("u (B, 2)", "u (B, 2, L, 2)")
    tokens = SequenceModel(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, pool="mean", pair=True,
                           vocab_size=7)
    assert _input_summary(tokens) == ("u (B) int64 token ids", "u (B, 2, L) int64 token ids")
    single = SequenceModel(d_input=2, d_model=4, n_layers=1, layer="s4d", d_output=2, pool="mean")
    assert _sequence_options(single) == {"lengths": True} and _input_summary(single)[1] == "u (B, L, 2)"


def test_pair_feed_checks_the_lengths():
    info = PairOnnxExport(path="p.onnx", input_name="u", state_names=(), output_names=("y",), state_shapes=(),
                          state_dtypes=(), lengths_name="lengths")
    u = np.zeros((3, 2, 5, 1), dtype=np.float32)
    fed = info.feed(u, lengths=[[3, 5], [1, 2], [5, 5]])
    assert fed["lengths"].dtype == np.int64 and fed["lengths"].tolist() == [[3, 5], [1, 2], [5, 5]]
    assert info.feed(u)["lengths"].tolist() == [[5, 5]] * 3  # None: no padding
    assert info.feed(np.zeros((3, 2, 5), dtype=np.int64))["lengths"].shape == (3, 2)  # token ids (B, 2, L)
    for bad, match in (([3, 5, 5], r"\(B, 2\) = \(3, 2\)"), ([[0, 5]] * 3, r"in \[1, L = 5\]"),
                       ([[3, 6]] * 3, r"in \[1, L = 5\]"), ([[3.0, 5.0]] * 3, "integers")):
        with pytest.raises(ValueError, match=match):
            info.feed(u, lengths=bad)
    with pytest.raises(ValueError, match=r"pairs \(B, 2, L, ...\)"):
        info.feed(np.zeros((3, 5, 1), dtype=np.float32))


def test_a_failed_export_no_longer_blames_megas_converted_core():
    """The exporter's message on a failure names a bidirectional layer that kept its own two-sided forward: SGConv,
    not Mega (its EMA core is a real two-scan `RealBidirectionalSequence` in the converted copy)."""
    torch.manual_seed(3)
    model = SequenceModel(d_input=2, d_model=4, n_layers=2, layer=["mega", "sgconv"],
                          layer_options={"mega": {"bidirectional": True, "chunk_size": 4},
                                         "sgconv": {"bidirectional": True}}, d_output=3, pool="mean").eval()
    converted = _traceable_masks(_replace_bidirectional_layers(real_sequence_model(model), chunk_size=4))
    assert [name for name, _ in _unconverted_bidirectional(converted)] == ["blocks.1.layer"]
