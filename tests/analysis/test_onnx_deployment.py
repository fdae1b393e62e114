"""The ONNX step deployed: onnxruntime continuing from a state made by ``forward``, in float32 and float64.

tests/analysis/test_export.py checks every layer's first variant in float32; here the realisation kinds in float64
(dense S4, modal S4D and S5, diagonal EMA, a traced mixer) and S4D with real eigenvalues, whose forward state
`onnx_state` refused ("no direct counterpart in the exported graph's diagonal realisation") although the exported
graph holds it in the same basis (docs/design.md, Probe 15).
"""

import pytest
import torch

from ssmkit.analysis.onnx_export import export_onnx, onnx_state
from ssmkit.models import SequenceModel
from tests.conftest import DEVICE, H, NEEDED_AT_TINY_WIDTH, rel_err, variants

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _model(name: str, options: dict, dtype: torch.dtype, n_layers: int = 1) -> SequenceModel:
    torch.manual_seed(0)
    # tanh, not the LTI layers' default GELU: onnxruntime's CPU provider has no float64 Erf (a load-time error). One
    # block (an export's cost grows with the graph: the blocks are the same code), two for S4D in float64 (the blocks'
    # states handed on in one graph)
    return SequenceModel(d_input=2, d_model=H + 1, n_layers=n_layers, layer=name,
                         layer_options={**NEEDED_AT_TINY_WIDTH.get(name, {}), **options}, d_output=3, head="regress",
                         pool=None, activation="tanh", dtype=dtype).eval()


def _continue_in_onnx(model, path, dtype):
    """(onnxruntime's outputs, model.step's) over steps 6..13, both from the state ``forward`` reached at step 6."""
    import onnxruntime

    u = torch.randn(2, 14, 2, dtype=dtype)
    with torch.no_grad():
        _, state = model(u[:, :6])
        s, want = state, []
        for t in range(6, 14):
            y, s = model.step(u[:, t], s)
            want.append(y)
    info = export_onnx(model, path)
    # onnxruntime <= 1.30 (the GPU image's) fuses a float64 SiLU, x·sigmoid(x), into com.microsoft.QuickGelu, which its
    # CPU provider has for float32 only: the session failed to load Mamba's float64 graph (microsoft/onnxruntime#32421;
    # 1.32 loads it). The graph is valid ONNX: that fusion is turned off for float64
    off = ["QuickGeluFusion"] if dtype == torch.float64 else None
    session = onnxruntime.InferenceSession(info.path, providers=["CPUExecutionProvider"], disabled_optimizers=off)
    parts, got = onnx_state(model, state), []
    for t in range(6, 14):
        y, *parts = session.run(None, {info.input_name: u[:, t].numpy(), **dict(zip(info.state_names, parts))})
        got.append(torch.from_numpy(y))
    return torch.stack(got, 1), torch.stack(want, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_s4d_with_real_eigenvalues_continues_from_the_forward_state(tmp_path, dtype):
    model = _model("s4d", {"d_state": 8, "init": "real", "discretization": "bilinear"}, dtype)
    got, want = _continue_in_onnx(model, str(tmp_path / "s4d_real.onnx"), dtype)
    # float32: the realisation exported in float64 and rounded once; float64: onnxruntime's LayerNormalization (one
    # pass) is ~1e-11 from torch's, every other op ~1e-16
    assert rel_err(got, want) <= (1e-5 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("name", ["s4", "s4d", "s5", "ema", "mamba"])
def test_float64_onnx_step_continues_from_the_forward_state(tmp_path, name):
    model = _model(name, variants(name)[0], torch.float64, n_layers=2 if name == "s4d" else 1)
    got, want = _continue_in_onnx(model, str(tmp_path / f"{name}.onnx"), torch.float64)
    assert got.dtype == torch.float64
    assert rel_err(got, want) <= 1e-9  # measured <= 1.7e-11 (LayerNormalization, above); a float32 op would be 1e-7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_export_refuses_half_precision_weights_as_step_does(tmp_path, dtype):
    # state_space() analyses half-precision weights in float64 (tests/layers/test_persistence.py), but the exported
    # graph is the step, which refuses them: once state_space() accepted them a float16 graph was written, whose
    # float16 recurrence was 1.5e-3 off the same weights in float32 after 20 steps
    from ssmkit.sysid.wiener import DeepWiener

    model = DeepWiener(2, 1, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 4}, dt=0.004).to(dtype)
    with pytest.raises(ValueError, match=f"S4D's parameters are {dtype}"):
        export_onnx(model, str(tmp_path / "half.onnx"))
    assert not (tmp_path / "half.onnx").exists()


@pytest.mark.parametrize("name", ["s4d", "mamba"] if DEVICE.type != "cpu" else ["s4d"])
def test_a_model_on_the_test_device_exports_from_a_cpu_copy(tmp_path, name):
    # export_onnx and export_onnx_sequence trace a CPU copy whatever the model's device (an ONNX file holds no device):
    # on CUDA the graphs are those of the CPU model and the model stays on its device. Mamba (a traced mixer, whose
    # sequence graph takes ~45 s to export) only where the device is not the CPU: on the CPU this is the plain export,
    # which tests/analysis/test_onnx_sequence.py (its gated-mixer test) and test_export.py check already
    import onnxruntime

    from ssmkit.analysis.onnx_sequence import export_onnx_sequence

    model = _model(name, variants(name)[0], torch.float32).to(DEVICE)
    u = torch.randn(2, 6, 2, device=DEVICE)
    with torch.no_grad():
        want, _ = model(u)
    step_info = export_onnx(model, str(tmp_path / "step.onnx"))
    sequence_info = export_onnx_sequence(model, str(tmp_path / "sequence.onnx"), with_state=False)
    assert all(p.device.type == DEVICE.type for p in model.parameters())
    step = onnxruntime.InferenceSession(step_info.path, providers=["CPUExecutionProvider"])
    state, got = step_info.initial_state(2), []
    for t in range(6):
        y, *state = step.run(None, {step_info.input_name: u[:, t].cpu().numpy(), **dict(zip(step_info.state_names,
                                                                                               state))})
        got.append(torch.from_numpy(y))
    sequence = onnxruntime.InferenceSession(sequence_info.path, providers=["CPUExecutionProvider"])
    whole = torch.from_numpy(sequence.run(None, {sequence_info.input_name: u.cpu().numpy()})[0])
    assert rel_err(torch.stack(got, 1), want) < 1e-5 and rel_err(whole, want) < 1e-5
