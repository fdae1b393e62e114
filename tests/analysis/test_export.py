"""Export of the linear blocks (StateSpace -> scipy.signal, python-control) and of a model's step to ONNX.

For every LTI layer in ``ssmkit.layers.available()``: the exported frequency response (ssmkit, scipy, python-control)
equals the DFT of the layer's kernel, corrected exactly for the truncation to L taps. A model's real-arithmetic step
(`real_step_model`) equals ``model.step``; onnxruntime's outputs equal ``step``'s.
"""

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
from ssmkit.analysis.onnx_export import RealLTIStep, export_onnx, onnx_state, real_step_model
from ssmkit.models import SequenceModel
from tests.conftest import DEVICE, H, NEEDED_AT_TINY_WIDTH, make_layer, rel_err, run_steps, variants

LTI = [n for n in layers.available() if layers.layer_class(n).capabilities.state_space]
STEP = [n for n in layers.available() if layers.layer_class(n).capabilities.step]
MODAL = {"s4d", "dss", "dlr", "s5", "lru", "ema"}  # diagonal layers: their realisation runs in modal form
# layers whose step must export to ONNX; the others raise NotImplementedError with the reason and are skipped (a growing
# key/value cache or long-convolution history: attention, mega, hyena). GSS and H3 export since their LTI cores are
# replaced by real realisations too, Liquid-S4 as S4's core driven by its liquid input (2026-12-02).
MUST_EXPORT = {"s4", "s4d", "dss", "dlr", "s5", "lru", "ema", "rglru", "mamba", "mamba2", "sgconv", "gss", "h3",
               "liquid_s4"}


def _truncated_response(system, L):
    """Σ_{l<L} h_l z_k^{-l} at z_k = e^{2πik/L} from the realisation: H(z) - z C A^{L-1} (zI - A)^{-1} B.

    (h_0 = D, h_l = C A^{l-1} B; since z_k^L = 1 the tail Σ_{l≥L} is z C A^{L-1} (zI - A)^{-1} B.)
    """
    theta = 2 * np.pi * np.arange(L) / L
    Hz = system.frequency_response(theta / system.dt)  # (G, p, m, L)
    A, B, C = system.A, system.B, system.C
    AL = np.linalg.matrix_power(A, L - 1)  # (G, n, n)
    tail = np.empty_like(Hz)
    n = A.shape[1]
    for k, th in enumerate(theta):
        z = np.exp(1j * th)
        tail[..., k] = z * (C @ AL @ np.linalg.solve(z * np.eye(n) - A, B))  # (G, p, m)
    return Hz - tail


@pytest.mark.parametrize("name", LTI)
def test_exported_frequency_response_is_the_fft_of_the_kernel(name):
    L = 24
    layer = make_layer(name)
    system = layer.state_space()
    K = layer.kernel(L).detach().cpu().numpy()  # (H, L) SISO bank, (H, H, L) MIMO
    fft = np.fft.fft(K, axis=-1)  # Σ_l K_l z_k^{-l}
    want = _truncated_response(system, L)  # (G, p, m, L)
    if K.ndim == 2:
        got, ref = want[:, 0, 0], fft  # (H, L)
    else:
        got, ref = want[0], fft  # (H, H, L)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())

    # the same response through the scipy.signal and python-control objects
    theta = 2 * np.pi * np.arange(1, L // 2) / L
    full = system.frequency_response(theta)  # (G, p, m, W)
    for g, sys_g in enumerate(system.to_scipy()):
        _, h = sys_g.freqresp(w=theta) if system.ninputs == 1 == system.noutputs else (None, None)
        if h is not None:
            # scipy evaluates through a polynomial transfer function (ss2tf), which loses digits near the poles
            # (DLR's |λ| ≈ 1 - 1e-4: 1.6e-9 relative at a peak of 800)
            np.testing.assert_allclose(h, full[g, 0, 0], rtol=1e-7)
    control = pytest.importorskip("control")
    for g, sys_g in enumerate(system.to_control()):
        resp = sys_g.frequency_response(theta).complex  # (p, m, W) (squeezed for SISO)
        np.testing.assert_allclose(np.reshape(resp, full[g].shape), full[g], rtol=1e-9)
    assert all(isinstance(s, control.StateSpace) and s.dt == system.dt for s in system.to_control())


@pytest.mark.parametrize("name", LTI)
def test_real_lti_step_equals_the_layer_step(name):
    layer = make_layer(name)
    real = RealLTIStep(layer.state_space(), dtype=torch.float64).to(DEVICE)  # built from numpy, on the CPU
    if name in MODAL:
        assert real.modal
    x = torch.randn(2, 9, H, dtype=torch.float64, device=DEVICE)
    y_ref, h_ref = run_steps(layer, x)
    s = real.initial_state(2)
    ys = []
    for t in range(x.shape[1]):
        y, s = real.step(x[:, t], s)
        ys.append(y)
    assert rel_err(torch.stack(ys, 1), y_ref) <= 1e-10  # float64
    if real.modal and h_ref.is_complex():  # a modal state is view_as_real of the layer's
        assert rel_err(s.reshape(h_ref.shape + (2,)), torch.view_as_real(h_ref)) <= 1e-10


def test_modal_detection_and_errors():
    s4d = RealLTIStep(make_layer("s4d").state_space(), dtype=torch.float64)
    x, s = torch.zeros(2, H, dtype=torch.float64), s4d.initial_state(2)
    with pytest.raises(ValueError, match=r"x_t must be on the step's device cpu \(move it with .to\(\)\); got meta"):
        s4d.step(x.to("meta"), s)
    with pytest.raises(ValueError, match=r"state must be on the step's device cpu .*; got meta"):
        s4d.step(x, s.to("meta"))
    s4 = RealLTIStep(make_layer("s4").state_space())
    assert not s4.modal and s4.state_shape() == (H, 8)  # DPLR: dense
    s4d = RealLTIStep(make_layer("s4d").state_space())
    assert s4d.modal and s4d.state_shape() == (H, 4, 2)


def _sequence_model(name: str, seed: int = 0, n_layers: int = 2) -> SequenceModel:
    torch.manual_seed(seed)
    options = {**NEEDED_AT_TINY_WIDTH.get(name, {}), **variants(name)[0]}
    return SequenceModel(d_input=2, d_model=H + 1, n_layers=n_layers, layer=name, layer_options=options, d_output=3,
                         head="regress", pool=None).eval()


def _run_onnx(model, info, u):
    import onnxruntime

    session = onnxruntime.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    state = info.initial_state(u.shape[0])
    ys = []
    for t in range(u.shape[1]):
        y, *state = session.run(None, {info.input_name: u[:, t].numpy(), **dict(zip(info.state_names, state))})
        ys.append(torch.from_numpy(y))
    return torch.stack(ys, 1), state


def _run_step(model, u, state=None):
    s = model.initial_state(u.shape[0]) if state is None else state
    ys = []
    with torch.no_grad():
        for t in range(u.shape[1]):
            y, s = model.step(u[:, t], s)
            ys.append(y)
    return torch.stack(ys, 1), s


@pytest.mark.parametrize("name", STEP)
def test_onnx_step_equals_model_step(name, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime

    # one block: the layer's step is what differs between the cases (an export's cost grows with the graph); two
    # blocks' states handed on in one step graph: test_onnx_deep_wiener and test_onnx_controller_from_the_encoder_state
    model = _sequence_model(name, n_layers=1)
    u = torch.randn(1, 12, 2)
    y_ref, _ = _run_step(model, u)
    y_real, _ = _run_step(real_step_model(model), u)
    assert rel_err(y_real, y_ref) <= 1e-5  # float32: the realisation is exported in float64 and rounded once
    try:
        info = export_onnx(model, str(tmp_path / f"{name}.onnx"))
    except NotImplementedError as why:
        if name in MUST_EXPORT:
            raise
        pytest.skip(f"{name} does not export to ONNX: {why}")
    assert info.batch_size is None
    y_onnx, _ = _run_onnx(model, info, u)
    assert rel_err(y_onnx, y_ref) <= 1e-5  # float32 step, fp32 runtime
    u3 = torch.randn(3, 5, 2)  # the same graph at another batch size (its batch axis is dynamic)
    y_onnx3, _ = _run_onnx(model, info, u3)
    assert y_onnx3.shape[0] == 3 and rel_err(y_onnx3, _run_step(model, u3)[0]) <= 1e-5

    # continue in ONNX from the state of a forward pass over the first 7 samples
    with torch.no_grad():
        _, state = model(u[:, :7])
    session = onnxruntime.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    parts = onnx_state(model, state)
    for t in range(7, 12):
        y, *parts = session.run(None, {"u": u[:, t].numpy(), **dict(zip(info.state_names, parts))})
        assert rel_err(torch.from_numpy(y), y_ref[:, t]) <= 1e-5


def test_onnx_deep_wiener(tmp_path):
    pytest.importorskip("onnxruntime")
    from ssmkit.sysid.wiener import DeepWiener

    torch.manual_seed(0)
    model = DeepWiener(n_inputs=2, n_outputs=1, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 6},
                       dt=0.01).eval()
    u = torch.randn(1, 10, 2)
    y_ref, _ = _run_step(model, u)
    info = export_onnx(model, str(tmp_path / "wiener.onnx"))
    assert info.state_shapes == ((4, 3, 2), (4, 3, 2)) and info.batch_size is None
    y_onnx, _ = _run_onnx(model, info, u)
    assert rel_err(y_onnx, y_ref) <= 1e-5
    for B in (1, 5):  # one graph, any batch size: a batch of scenarios from states estimated by the encoder
        u_b = torch.randn(B, 10, 2)
        y_onnx_b, state_onnx = _run_onnx(model, info, u_b)
        y_ref_b, state_ref = _run_step(model, u_b)
        assert y_onnx_b.shape == (B, 10, 1) and rel_err(y_onnx_b, y_ref_b) <= 1e-5
        for got, want in zip(state_onnx, onnx_state(model, state_ref)):
            assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("layer,options", [("s4", {"d_state": 4})])  # modal layers: test_onnx_step_equals_model_step
def test_onnx_controller_from_the_encoder_state_float64(tmp_path, layer, options):
    # a controller starts the graph from the state the encoder estimates, then runs 60 steps in float64 (probe 4:
    # S4's state was refused by onnx_state)
    pytest.importorskip("onnxruntime")
    import onnxruntime
    from ssmkit.sysid.wiener import DeepWiener

    torch.manual_seed(2)
    model = DeepWiener(n_inputs=1, n_outputs=2, d_model=3, n_layers=2, layer=layer, layer_options=options, dt=4.0,
                       encoder_window=5, dtype=torch.float64).eval()
    with torch.no_grad():
        model.u_mean.fill_(3.0), model.u_std.fill_(2.0), model.y_mean.copy_(torch.tensor([5.0, -1.0]))
        u = 3.0 + 2.0 * torch.randn(2, 65, 1, dtype=torch.float64)
        state = model.estimate_state(u[:, :5], 5.0 + torch.randn(2, 5, 2, dtype=torch.float64))
        y_ref, _ = model(u[:, 5:], state)
    info = export_onnx(model, str(tmp_path / f"{layer}.onnx"))
    assert all(d == np.float64 for d in info.state_dtypes)
    session = onnxruntime.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    parts = onnx_state(model, state)
    ys = []
    for t in range(5, 65):
        y, *parts = session.run(None, {"u": u[:, t].numpy(), **dict(zip(info.state_names, parts))})
        ys.append(torch.from_numpy(y))
    assert rel_err(torch.stack(ys, 1), y_ref) <= 1e-12  # float64 graph: rounding only


def test_onnx_fixed_batch(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime
    from ssmkit.sysid.wiener import DeepWiener

    torch.manual_seed(1)
    model = DeepWiener(n_inputs=1, n_outputs=2, d_model=3, n_layers=1, layer="s4d", layer_options={"d_state": 4}).eval()
    info = export_onnx(model, str(tmp_path / "fixed.onnx"), batch_size=3)
    assert info.batch_size == 3 and [p.shape for p in info.initial_state()] == [(3, 3, 2, 2)]
    session = onnxruntime.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [3, 1]
    u = torch.randn(3, 6, 1)
    assert rel_err(_run_onnx(model, info, u)[0], _run_step(model, u)[0]) <= 1e-5
    with pytest.raises(ValueError, match="the graph's fixed batch size"):
        info.initial_state(2)


def test_export_errors(tmp_path):
    model = _sequence_model("s4d")
    with pytest.raises(ValueError, match="state must be a list of 2 layer states"):
        onnx_state(model, [None])
    with pytest.raises(ValueError, match="batch_size must be None"):
        export_onnx(model, str(tmp_path / "x.onnx"), batch_size=0)
    with pytest.raises(ValueError, match="cannot tell the input width"):
        export_onnx(torch.nn.Sequential(make_layer("s4d")), str(tmp_path / "x.onnx"))


def test_onnx_token_ids_any_batch(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = SequenceModel(d_input=1, vocab_size=7, d_model=4, n_layers=1, layer="s4d", layer_options={"d_state": 4},
                          d_output=3, head="regress", pool=None).eval()
    info = export_onnx(model, str(tmp_path / "tokens.onnx"))
    for B in (1, 4):  # token ids (B,) in, one graph
        tokens = torch.randint(0, 7, (B, 5))
        y_onnx, _ = _run_onnx(model, info, tokens)
        y_ref, _ = _run_step(model, tokens)
        assert y_onnx.shape == (B, 5, 3) and rel_err(y_onnx, y_ref) <= 1e-5
