"""Bidirectional layers and the ONNX exports.

A bidirectional layer reads the inputs after t, so it has no step: `export_onnx` (the step graph) and
`export_onnx_sequence(with_state=True)` refuse it up front, naming the layer (before, the step export failed with a
misleading "state part 0 is complex"). From rest (``with_state=False``) the diagonal layers (S4D, DSS, DLR, EMA, S5,
LRU, and Mega's EMA core) export as two real scans (`RealBidirectionalSequence`): checked eagerly in float64 against
the two-sided convolution by loops over lags (`bidirectional_conv_reference`) of the layer's own kernel, and in
onnxruntime against the model's forward at lengths and batch sizes other than the traced ones. S4 (its forward kept
as is) is refused with a message naming it.
"""

import pytest
import torch

from ssmkit.analysis.onnx_export import export_onnx
from ssmkit.analysis.onnx_sequence import RealBidirectionalSequence, bidirectional_systems, export_onnx_sequence
from ssmkit.models import SequenceModel
from ssmkit.ops.fftconv import bidirectional_conv_reference
from tests.conftest import make_layer, rel_err


def _model(name: str, head: str = "regress", pool: str | None = None, options: dict | None = None) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(d_input=2, d_model=4, n_layers=1, layer=name,
                         layer_options={"bidirectional": True, **(options or {})}, d_output=3, head=head, pool=pool,
                         activation="tanh").eval()


def test_the_step_graph_and_a_state_are_refused_naming_the_layer(tmp_path):
    model = _model("s4d", head="classify", pool="mean", options={"d_state": 4})
    with pytest.raises(NotImplementedError, match=r"'blocks\.0\.layer' \(S4D\) is bidirectional.*future.*no causal "
                                                  r"step.*export_onnx_sequence\(model, path, with_state=False\)"):
        export_onnx(model, str(tmp_path / "step.onnx"))
    with pytest.raises(NotImplementedError, match=r"\(S4D\) is bidirectional.*with_state=False"):
        export_onnx_sequence(model, str(tmp_path / "seq.onnx"))  # with_state=True: a bidirectional layer has none
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["s4d", "dss", "dlr", "ema", "s5", "lru"])
def test_two_real_scans_equal_the_two_sided_convolution_of_the_layer_kernel(name):
    """float64, L = 70 > T = 64 (two chunks each way): y = Σ_{s≤t} K0[t-s] u_s + Σ_{s>t} K1[s-t-1] u_s by loops over
    lags, K = layer.kernel(L); for the MIMO layers (S5, LRU: (2, H, H, L)) channel by channel."""
    torch.manual_seed(1)
    layer = make_layer(name, bidirectional=True, dtype=torch.float64).eval()
    real = RealBidirectionalSequence(*bidirectional_systems(layer), dtype=torch.float64)
    u = torch.randn(2, 70, layer.d_model, dtype=torch.float64)
    K = layer.kernel(u.shape[1]).detach()  # (2, H, L) or (2, H_out, H_in, L)
    if K.dim() == 3:
        want = bidirectional_conv_reference(u, K)
    else:  # y_o = Σ_i (K[:, o, i] ⊛ u_i)
        want = sum(bidirectional_conv_reference(u[..., i:i + 1].expand_as(u), K[:, :, i]) for i in range(u.shape[-1]))
    with torch.no_grad():
        got, state = real(u)
        own, _ = layer(u)
    assert state is None
    assert rel_err(got, want) <= 1e-10 and rel_err(own, want) <= 1e-10


@pytest.mark.parametrize("name, head, pool", [("s4d", "classify", "mean"), ("ema", "regress", None),
                                              ("s5", "regress", None), ("mega", "classify", "mean")])
def test_the_whole_sequence_graph_from_rest_equals_the_forward(tmp_path, name, head, pool):
    """Traced at L = 131; run at (B, L) = (1, 5) and (3, 200). Mega: its bidirectional EMA core replaced, its
    attention traced."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = _model(name, head, pool, {"d_state": 4} if name == "s4d" else None)
    info = export_onnx_sequence(model, str(tmp_path / f"{name}.onnx"), with_state=False)
    assert info.state_names == () and info.output_names == ("y",)
    session = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    for B, L in ((1, 5), (3, 200)):
        u = torch.randn(B, L, 2)
        with torch.no_grad():
            y, _ = model(u)
        got = torch.from_numpy(session.run(None, {"u": u.numpy()})[0])
        assert got.shape == y.shape and rel_err(got, y) <= 1e-5, (B, L)


def test_a_bidirectional_layer_without_a_real_realisation_is_refused_naming_it(tmp_path):
    pytest.importorskip("onnxscript")
    with pytest.raises(NotImplementedError, match=r"'blocks\.0\.layer' \(S4\) is bidirectional"):
        export_onnx_sequence(_model("s4"), str(tmp_path / "s4.onnx"), with_state=False)
    assert not list(tmp_path.iterdir())
