"""float64 ONNX exports carry their constants in float64.

torch 2.13's ONNX exporter (``dynamo=True``) writes a Python float that multiplies (adds to, divides) a float64 tensor
as a float32-rounded initializer: ``p * (0.5 / math.pi)`` holds 0.15915493667125702 and runs ~1e-8 relative off the
float64 model. A layer's traced code therefore keeps such constants as 0-dim tensors of the data's dtype (the same
bits in eager). Here: onnxruntime runs the step graph (``export_onnx``) and the sequence graph
(``export_onnx_sequence``) of float64 DeepWieners, against the model itself in float64 (its ``step`` loop and its
``forward``): the graphs equal it to 1e-12 relative (rounding only), and Liquid-S4's LeCun contraction
1.7159 tanh(0.666 v) -- the one constant of ours that the audit found rounded -- is in the graph exactly, with no
float32-rounded copy of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit.analysis import export_onnx
from ssmkit.analysis.onnx_sequence import export_onnx_sequence
from ssmkit.sysid import DeepWiener
from tests.conftest import rel_err

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

LECUN = {"d_state": 6, "l_max": 16, "liquid_kernel": "kb", "liquid_degree": 3, "liquid_contract": "lecun",
         "init": "legt"}
# (layer, options): Liquid-S4 with the LeCun contraction (fixed), and a representative set of the others (LTI modal,
# DPLR, LRU; the gated Mamba and RG-LRU keep their own traced step)
CASES = {
    "liquid_s4_lecun": ("liquid_s4", LECUN),
    "s4d": ("s4d", {"d_state": 4}),
    "s4": ("s4", {"d_state": 4}),
    "lru": ("lru", {"d_state": 4}),
    "mamba": ("mamba", {"d_state": 4}),
    "rglru": ("rglru", {}),
}
TIME_VARYING = {"liquid_s4", "mamba", "rglru"}  # DeepWiener(time_varying=True): the layers without a realisation
# onnxruntime's CPU provider has no float64 Conv: the sequence graphs of Mamba and RG-LRU (their depthwise causal
# convs) cannot run
NO_SEQUENCE_RUN = {"mamba", "rglru"}


def _wiener(layer: str, options: dict) -> DeepWiener:
    torch.manual_seed(0)
    # one block: the constants are each layer's own (an export's cost grows with the graph)
    return DeepWiener(n_inputs=2, n_outputs=2, d_model=3, n_layers=1, layer=layer, layer_options=options,
                      time_varying=layer in TIME_VARYING, dtype=torch.float64).eval()


def _session(path: str):
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def _float_constants(graph) -> list[np.ndarray]:
    """Every floating initializer and Constant value of ``graph`` and of its subgraphs (Scan and If bodies)."""
    found = [numpy_helper.to_array(t) for t in graph.initializer]
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value":
                found.append(numpy_helper.to_array(attr.t))
            elif node.op_type == "Constant" and attr.name == "value_float":
                found.append(np.float32(attr.f))
            elif attr.type == onnx.AttributeProto.GRAPH:
                found += _float_constants(attr.g)
    return [np.asarray(a) for a in found if np.asarray(a).dtype in (np.float32, np.float64)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """export(case, kind) -> (model, path): each graph exported once per module, when a test first asks for it."""
    folder, done = tmp_path_factory.mktemp("onnx_f64"), {}

    def export(case: str, kind: str):
        if (case, kind) not in done:
            model = done[case] if case in done else _wiener(*CASES[case])
            done[case] = model
            path = str(folder / f"{case}_{kind}.onnx")
            (export_onnx if kind == "step" else export_onnx_sequence)(model, path)
            done[case, kind] = (model, path)
        return done[case, kind]

    return export


def _inputs() -> torch.Tensor:
    torch.manual_seed(5)
    return torch.randn(2, 12, 2, dtype=torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_float64_step_graph_equals_the_model_step(exported, case):
    model, step = exported(case, "step")
    u = _inputs()
    session = _session(step)
    names = [i.name for i in session.get_inputs()][1:]
    parts = [np.zeros([2, *i.shape[1:]], dtype=np.float64) for i in session.get_inputs()[1:]]
    state, got, want = model.initial_state(2), [], []
    with torch.no_grad():
        for t in range(u.shape[1]):
            y, *parts = session.run(None, {"u": u[:, t].numpy(), **dict(zip(names, parts))})
            y_ref, state = model.step(u[:, t], state)
            got.append(torch.from_numpy(y))
            want.append(y_ref)
    assert rel_err(torch.stack(got, 1), torch.stack(want, 1)) <= 1e-12  # float64: rounding only


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(set(CASES) - NO_SEQUENCE_RUN))
def test_float64_sequence_graph_equals_the_model_forward(exported, case):
    model, sequence = exported(case, "sequence")
    u = _inputs()
    session = _session(sequence)
    feed = {"u": u.numpy()}
    feed.update({i.name: np.zeros([2, *i.shape[1:]], dtype=np.float64) for i in session.get_inputs()[1:]})
    y = session.run(None, feed)[0]
    with torch.no_grad():
        y_ref = model(u)[0]
    assert rel_err(torch.from_numpy(y), y_ref) <= 1e-12


@pytest.mark.parametrize("graph", ["step", "sequence"])
def test_lecun_contraction_constants_are_exact_in_float64_graphs(exported, graph):
    # 1.7159 tanh(0.666 v): the graph holds both constants in float64, and no float32 rounding of either (as the
    # Python floats gave: 1.71589994430542 and 0.6660000085830688, 2.9e-8 relative off the float64 model)
    model = onnx.load(exported("liquid_s4_lecun", graph)[1])
    values = np.concatenate([a.astype(np.float64).ravel() for a in _float_constants(model.graph)] or [np.zeros(0)])
    for c in (1.7159, 0.666):
        rounded = float(np.float32(c))
        assert rounded != c and not np.any(values == rounded), f"float32-rounded {c} in the graph"
        assert np.any(values == c), f"{c} is not in the graph in float64"


def test_lecun_contraction_is_bit_identical_in_eager():
    # the 0-dim float64 tensors give the bits that the Python floats gave; the other dtypes keep the Python floats (a
    # 0-dim bfloat16/float16 tensor would round the constants: not bit-identical, found in review)
    from ssmkit.layers.liquid import contract

    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        v = (3.0 * torch.randn(4099)).to(dtype)
        assert torch.equal(contract(v, "lecun"), 1.7159 * torch.tanh(0.666 * v))
