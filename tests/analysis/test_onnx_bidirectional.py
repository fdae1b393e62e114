"""Bidirectional layers and the ONNX exports.

A bidirectional layer reads the inputs after t, so it has no step: `export_onnx` (the step graph) and
`export_onnx_sequence(with_state=True)` refuse it up front, naming the layer (before, the step export failed with a
misleading "state part 0 is complex"). From rest (``with_state=False``) the diagonal layers (S4D, DSS, DLR, EMA, S5,
LRU, and Mega's EMA core) export as two real scans (`RealBidirectionalSequence`): checked eagerly in float64 against
the two-sided convolution by loops over lags (`bidirectional_conv_reference`) of the layer's own kernel, and in
onnxruntime against the model's forward at lengths and batch sizes other than the traced ones. S4 (DPLR) exports the
same way, as two real dense systems of C_true (its C̃ solved at l_max): checked at lengths below, at and above l_max.
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
                                              ("s5", "regress", None), ("mega", "classify", "mean"),
                                              ("s4", "regress", None), ("sgconv", "classify", "mean")])
def test_the_whole_sequence_graph_from_rest_equals_the_forward(tmp_path, name, head, pool):
    """Traced at L = 131; run at (B, L) = (1, 5) and (3, 200). Mega: its bidirectional EMA core replaced, its
    attention traced. S4 with l_max = 32: L = 5 below it, L = 200 above it (its forward attunes C̃ to 256). SGConv: no
    realisation (an FIR kernel), its own forward traced (onnxruntime's float32 DFT at lengths other than powers of
    two is less accurate than torch's FFT: 1e-4, as Hyena's in tests/analysis/test_onnx_sequence.py)."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = _model(name, head, pool, {"s4d": {"d_state": 4}, "s4": {"d_state": 8, "l_max": 32}}.get(name))
    info = export_onnx_sequence(model, str(tmp_path / f"{name}.onnx"), with_state=False)
    assert info.state_names == () and info.output_names == ("y",)
    session = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    for B, L in ((1, 5), (3, 200)):
        u = torch.randn(B, L, 2)
        with torch.no_grad():
            y, _ = model(u)
        got = torch.from_numpy(session.run(None, {"u": u.numpy()})[0])
        assert got.shape == y.shape and rel_err(got, y) <= (1e-4 if name == "sgconv" else 1e-5), (B, L)


@pytest.mark.parametrize("init", ["legs", "fout"])
def test_s4s_two_real_scans_equal_its_two_sided_convolution_below_at_and_above_l_max(init):
    """S4 (DPLR), float64, l_max = 32, chunks of T = 16: L = 20 < l_max, L = 32 = l_max, L = 70 > l_max (the layer
    attunes C̃ to 128 by doubling; 5 chunks each way). y = Σ_{s≤t} K0[t-s] u_s + Σ_{s>t} K1[s-t-1] u_s by loops over
    lags, K = layer.kernel(L) (Algorithm 1 from C̃, not from the realisation), and the layer's own forward."""
    layer = make_layer("s4", {"d_state": 8, "l_max": 32, "init": init}, bidirectional=True).eval()
    causal, anticausal, delay = bidirectional_systems(layer)
    assert delay == 1 and causal.A.shape == (layer.d_model, 8, 8)
    K1 = layer.kernel(1)[1, :, 0].detach().numpy()  # the anti-causal tap 0 = its scan's feedthrough C_1 B̄
    assert abs(anticausal.D[:, 0, 0] - K1).max() <= 1e-12 * abs(K1).max()
    real = RealBidirectionalSequence(causal, anticausal, delay, dtype=torch.float64, chunk_size=16)
    torch.manual_seed(2)
    for L in (20, 32, 70):
        u = torch.randn(2, L, layer.d_model, dtype=torch.float64)
        want = bidirectional_conv_reference(u, layer.kernel(L).detach())
        with torch.no_grad():
            got, _ = real(u)
            own, _ = layer(u)
        assert rel_err(got, want) <= 1e-10 and rel_err(own, want) <= 1e-10, L


def test_s4s_directions_use_their_own_c():
    """Each scan is one direction: zeroing C̃[1] leaves the causal kernel (the strictly anti-causal part of y is 0),
    zeroing C̃[0] and D leaves the anti-causal one (y_{L-1}, which reads nothing after it, is 0)."""
    layer = make_layer("s4", {"d_state": 8, "l_max": 32, "init": "legs"}, bidirectional=True).eval()
    u = torch.zeros(1, 40, layer.d_model, dtype=torch.float64)
    u[0, 20] = 1.0  # an impulse at s = 20
    with torch.no_grad():
        layer.C_tilde[1].zero_()
        y, _ = RealBidirectionalSequence(*bidirectional_systems(layer), dtype=torch.float64)(u)
        assert y[0, :20].abs().max() == 0 and rel_err(y[0, 20:], layer.kernel(20)[0].T) <= 1e-10
        layer = make_layer("s4", {"d_state": 8, "l_max": 32, "init": "legs"}, bidirectional=True).eval()
        layer.C_tilde[0].zero_()
        layer.D.zero_()
        y, _ = RealBidirectionalSequence(*bidirectional_systems(layer), dtype=torch.float64)(u)
        assert y[0, 20:].abs().max() == 0 and rel_err(y[0, :20].flip(0), layer.kernel(20)[1].T) <= 1e-10


def test_a_bidirectional_layer_without_a_real_realisation_is_refused_naming_it(tmp_path, monkeypatch):
    """S4 with its realisation withheld keeps its own forward (a kernel of the concrete L), which torch.export cannot
    trace at a symbolic length: the export names the layer, and writes nothing."""
    pytest.importorskip("onnxscript")
    import ssmkit.analysis.onnx_sequence as onnx_sequence

    monkeypatch.setattr(onnx_sequence, "bidirectional_systems", lambda layer: None)
    with pytest.raises(NotImplementedError, match=r"'blocks\.0\.layer' \(S4\) is bidirectional"):
        export_onnx_sequence(_model("s4"), str(tmp_path / "s4.onnx"), with_state=False)
    assert not list(tmp_path.iterdir())
