"""The real-arithmetic exports (`RealLiquidS4`, `RealLTISequence`, `export_onnx_sequence`) against references
written here (docs/design.md, probe 43).

References: the layer's own state description (Liquid-S4's state is S4's half state, (H, N/2) complex, held as
(H, N) real, and its last P-1 inputs); the realisation of ``state_space()`` run as an explicit float64 loop
x[k+1] = A x[k] + B u[k], y[k] = C x[k] + D u[k] in numpy, and as a loop over `RealLTIStep.step` (the step graph's
recurrence, in the same state layout); the chunk length's documented rule written as a search over the powers of two;
the model's own ``forward`` against onnxruntime's run of the exported graph; hand-made ONNX files with known input
shapes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import H, make_layer, rel_err, variants


# ----------------------------------------------------------------------------------------------------------------
# onnx_liquid: RealLiquidS4


def _real_liquid(opts: dict, **kwargs):
    from ssmkit.analysis.onnx_liquid import RealLiquidS4
    from ssmkit.analysis.onnx_sequence import RealLTISequence

    layer = make_layer("liquid_s4", opts, dtype=torch.float64).eval()
    return layer, RealLiquidS4(layer, lambda system, dtype: RealLTISequence(system, dtype), **kwargs)


@pytest.mark.parametrize("module, public", [
    ("onnx_liquid", {"RealLiquidS4"}),
    ("onnx_sequence", {"RealLTISequence", "SequenceFunction", "export_onnx_sequence", "real_sequence_model"}),
])
def test_liquid_and_sequence_star_imports_give_the_public_names_only(module, public):
    names: dict = {}
    exec(f"from ssmkit.analysis.{module} import *", names)
    assert set(names) - {"__builtins__"} == public


def test_real_liquid_s4_is_float32_by_default_and_returns_the_input_dtype():
    layer, real = _real_liquid(variants("liquid_s4")[1])
    assert real.dtype == torch.float32 and real.beta.dtype == real.s_gain.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in real.initial_state(2))
    x = torch.randn(2, 20, H, dtype=torch.float64)
    with torch.no_grad():
        y, _ = layer(x)
        got, state = real(x)
    assert got.dtype == torch.float64 and all(p.dtype == torch.float32 for p in state)
    assert 1e-9 < rel_err(got, y) <= 1e-5  # computed in float32, returned in float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_real_liquid_s4_state_spec_describes_its_state(dtype):
    """(H, N) real for S4's half state (H, N/2) complex, and (H, P-1) for the last inputs, in ``dtype``, on the
    buffers' device; the zero state fits the description."""
    from ssmkit.layers.state import check_state

    for opts in variants("liquid_s4"):
        layer, real = _real_liquid(opts, dtype=dtype)
        want = layer.state_spec()  # the layer's own: complex (H, N/2), real (H, P-1)
        spec = real.state_spec()
        assert spec.ssm.shape == (H, 2 * want.ssm.shape[1]) == (H, opts["d_state"])
        assert spec.inputs.shape == want.inputs.shape == (H, opts["liquid_degree"] - 1)
        assert spec.ssm.dtype == spec.inputs.dtype == dtype
        assert real.state_device() == real.beta.device == torch.device("cpu")
        state = real.initial_state(3)
        check_state(state, spec, 3, real.state_device())
        assert [tuple(p.shape) for p in state] == [(3, *spec.ssm.shape), (3, *spec.inputs.shape)]


# ----------------------------------------------------------------------------------------------------------------
# onnx_sequence: RealLTISequence, eager and while exporting with a symbolic length


def _loop(system, u: np.ndarray, x0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """x[k+1] = A x[k] + B u[k], y[k] = C x[k] + D u[k] for every system g, float64 loop: u (B, L, G·m) ->
    (y (B, L, G·p), x[L] (B, G, n))."""
    A, Bm, C, D = system.A, system.B, system.C, system.D  # (G, n, n), (G, n, m), (G, p, n), (G, p, m)
    G, n, m = Bm.shape
    x = np.zeros((u.shape[0], G, n)) if x0 is None else x0.copy()
    ys = []
    for k in range(u.shape[1]):
        u_k = u[:, k].reshape(-1, G, m)  # (B, G, m)
        ys.append((np.einsum("gpn,bgn->bgp", C, x) + np.einsum("gpm,bgm->bgp", D, u_k)).reshape(u.shape[0], -1))
        x = np.einsum("gij,bgj->bgi", A, x) + np.einsum("gnm,bgm->bgn", Bm, u_k)
    return np.stack(ys, 1), x


def _step_loop(real, u: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`RealLTIStep.step` (the step graph's recurrence, same state layout) over u (B, L, G·m)."""
    h = real.initial_state(u.shape[0]) if h is None else h
    ys = []
    for t in range(u.shape[1]):
        y_t, h = real.step(u[:, t], h)
        ys.append(y_t)
    return torch.stack(ys, 1), h


class _Sequence(torch.nn.Module):
    def __init__(self, real):
        super().__init__()
        self.real = real

    def forward(self, x, h):
        return self.real(x, h)


@pytest.mark.parametrize("name", ["s5", "s4", "ema"])
def test_exported_sequence_with_a_symbolic_length_equals_the_loop(name):
    """torch.export with L dynamic (the scan carry and the symbolic tail r that the ONNX graph holds), T = 4: every
    remainder r = 1..4 and 1..4 chunks, from a state, against the float64 loop over (A, B, C, D) and over ``step``."""
    from torch.export import Dim

    from ssmkit.analysis.onnx_export import RealLTIStep
    from ssmkit.analysis.onnx_sequence import RealLTISequence

    layer = make_layer(name, dtype=torch.float64)
    system = layer.state_space()
    real = RealLTISequence(system, dtype=torch.float64, chunk_size=4)
    step = RealLTIStep(system, dtype=torch.float64)
    G, m = system.B.shape[0], system.B.shape[2]
    h0 = torch.randn(2, *real.state_shape(), dtype=torch.float64)
    with torch.no_grad():
        program = torch.export.export(_Sequence(real), (torch.randn(2, 11, G * m, dtype=torch.float64), h0),
                                      dynamic_shapes=({1: Dim("L", min=2, max=4096)}, None)).module()
        for L in (2, 3, 4, 5, 6, 7, 8, 9, 16, 17):
            u = torch.randn(2, L, G * m, dtype=torch.float64)
            y, h = program(u, h0)
            want_y, want_h = _step_loop(step, u, h0)
            assert y.shape == want_y.shape and rel_err(y, want_y) <= 1e-12, L
            assert rel_err(h, want_h) <= 1e-12, L
            y0, _ = program(u, torch.zeros_like(h0))
            assert rel_err(y0, torch.from_numpy(_loop(system, u.numpy())[0])) <= 1e-12, L


def test_sequence_without_the_final_state_and_in_float32():
    """``return_state=False``: the same y and no state; float32 operators, y returned in x's dtype (float64)."""
    from ssmkit.analysis.onnx_sequence import RealLTISequence

    layer = make_layer("s4d", dtype=torch.float64)
    system = layer.state_space()
    u = torch.randn(2, 70, H, dtype=torch.float64)
    want = torch.from_numpy(_loop(system, u.numpy())[0])
    y, h = RealLTISequence(system, dtype=torch.float64)(u, None, return_state=False)
    assert h is None and rel_err(y, want) <= 1e-12
    real = RealLTISequence(system)  # float32 by default
    assert real.toeplitz.dtype == real.D.dtype == real.initial_state(1).dtype == torch.float32
    y, h = real(u)
    assert y.dtype == torch.float64 and h.dtype == torch.float32
    assert 1e-10 < rel_err(y, want) <= 1e-5


def test_default_chunk_is_the_nearest_power_of_two_of_its_cost_optimum():
    """T = the power of two in [1, 64] nearest (in log2) to √((n² + 50 000)/(m·p)) (its docstring's cost model), over
    a grid away from ties; the docstring's examples: 64 for SISO, 2 for S5 at H 128 (n 128), 16 at H 16 (n 32)."""
    from ssmkit.analysis.onnx_sequence import default_chunk

    powers = [2**k for k in range(7)]
    for m in (1, 2, 3, 5, 8, 16, 40, 128, 1000):
        for p in (1, 3, 16, 128):
            for n in (1, 8, 64, 128, 300, 1000, 5000):
                optimum = math.log2(math.sqrt((n * n + 50_000) / (m * p)))
                gaps = sorted(abs(math.log2(T) - optimum) for T in powers)
                assert gaps[1] - gaps[0] > 1e-6  # not a tie
                want = min(powers, key=lambda T: abs(math.log2(T) - optimum))
                assert default_chunk(m, p, n) == want, (m, p, n)
    assert default_chunk(1, 1, 8) == 64 and default_chunk(128, 128, 128) == 2 and default_chunk(16, 16, 32) == 16


def test_a_dense_mimo_bank_takes_the_default_chunk_of_its_own_sizes():
    """G = 2 dense systems of m = p = 16, n = 4 (T = 16 by the rule; 32 with n and p exchanged): chunk_size None
    takes `default_chunk(m, p, n)`, and the sequence equals the float64 loop from a state across chunks."""
    from ssmkit.analysis.onnx_export import RealLTIStep
    from ssmkit.analysis.onnx_sequence import RealLTISequence
    from ssmkit.analysis.statespace import StateSpace

    rng = np.random.default_rng(4)
    A = rng.standard_normal((2, 4, 4))
    A *= 0.9 / np.abs(np.linalg.eigvals(A)).max(axis=1)[:, None, None]  # spectral radius 0.9 per system
    system = StateSpace(A, rng.standard_normal((2, 4, 16)), rng.standard_normal((2, 16, 4)),
                        rng.standard_normal((2, 16, 16)))
    real = RealLTISequence(system, dtype=torch.float64)
    assert real.T == 16 == round(2 ** round(math.log2(math.sqrt((4 * 4 + 50_000) / (16 * 16)))))
    u = torch.randn(2, 37, 32, dtype=torch.float64)
    h0 = torch.randn(2, *real.state_shape(), dtype=torch.float64)
    y, h = real(u, h0)
    want_y, want_h = _step_loop(RealLTIStep(system, dtype=torch.float64), u, h0)
    assert rel_err(y, want_y) <= 1e-12 and rel_err(h, want_h) <= 1e-12
    assert rel_err(real(u)[0], torch.from_numpy(_loop(system, u.numpy())[0])) <= 1e-12


def _onnx_file(path, dims: list) -> str:
    """An identity graph whose input ``u`` has the given dims (a name: symbolic; an int: fixed)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["u"], ["y"])], "g",
                              [helper.make_tensor_value_info("u", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    onnx.save(helper.make_model(graph), str(path))
    return str(path)


def test_the_dynamic_length_check_reads_the_second_axis_of_u(tmp_path):
    """Token ids (B, L) and real inputs (B, L, m) with a symbolic L pass; a fixed L, or an input without a length
    axis, is refused naming the length (or '?')."""
    from ssmkit.analysis.onnx_sequence import _check_dynamic_length

    _check_dynamic_length(_onnx_file(tmp_path / "ids.onnx", ["batch", "length"]), "Tokens")
    _check_dynamic_length(_onnx_file(tmp_path / "real.onnx", ["batch", "length", 2]), "Real")
    _check_dynamic_length(_onnx_file(tmp_path / "one.onnx", [1, "length", 2]), "Fixed batch")
    with pytest.raises(NotImplementedError, match=r"Fixed's forward .* one sequence length only \(7\)"):
        _check_dynamic_length(_onnx_file(tmp_path / "fixed.onnx", ["batch", 7]), "Fixed")
    with pytest.raises(NotImplementedError, match=r"one sequence length only \(\?\)"):
        _check_dynamic_length(_onnx_file(tmp_path / "flat.onnx", ["batch"]), "Flat")


# ----------------------------------------------------------------------------------------------------------------
# export_onnx_sequence: onnxruntime against the model's forward


def _wiener(dtype=torch.float64):
    from ssmkit.sysid import DeepWiener

    torch.manual_seed(0)
    return DeepWiener(n_inputs=2, n_outputs=1, d_model=3, n_layers=1, layer="s4d", layer_options={"d_state": 4},
                      dtype=dtype).eval()


def _session(path: str):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _graph_dims(path: str):
    import onnx

    graph = onnx.load(path)
    opset = {o.domain: o.version for o in graph.opset_import}[""]
    return opset, [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]


def test_sequence_function_is_the_forward_with_flat_real_states():
    """What the graph computes, eagerly: ``SequenceFunction`` of the converted model (state by default) maps the flat
    `onnx_state` of a forward state to y and the flat final state, as the model's forward does; without state,
    u -> (y,) from rest."""
    from ssmkit.analysis.onnx_export import onnx_state
    from ssmkit.analysis.onnx_sequence import SequenceFunction, real_sequence_model

    model = _wiener()
    converted = real_sequence_model(model, chunk_size=4)
    u, before = torch.randn(2, 9, 2, dtype=torch.float64), torch.randn(2, 5, 2, dtype=torch.float64)
    with torch.no_grad():
        _, s0 = model(before)
        y, s = model(u, s0)
        y_rest, _ = model(u)
        out = SequenceFunction(converted)(u, *(torch.from_numpy(p) for p in onnx_state(model, s0)))
        alone = SequenceFunction(converted, with_state=False)(u)
    assert len(out) == 2 and rel_err(out[0], y) <= 1e-12
    assert rel_err(out[1], torch.from_numpy(onnx_state(model, s)[0])) <= 1e-12
    assert len(alone) == 1 and rel_err(alone[0], y_rest) <= 1e-12


def test_sequence_graph_with_a_dynamic_batch_and_length_continues_the_model(tmp_path):
    """Defaults (dynamic B and L, opset 18, with the state) and T = 4: lengths 2..13 and batch sizes 1 and 3 from rest,
    then continued from the model's own state, against the float64 model's forward."""
    from ssmkit.analysis.onnx_export import onnx_state
    from ssmkit.analysis.onnx_sequence import export_onnx_sequence

    pytest.importorskip("onnxscript")
    model = _wiener()
    info = export_onnx_sequence(model, str(tmp_path / "wiener.onnx"), chunk_size=4)
    opset, dims = _graph_dims(info.path)
    assert opset == 18 and all(isinstance(d, str) for d in dims[:2]) and dims[2] == 2
    assert info.batch_size is None and info.state_names == ("state_0",) and info.output_names == ("y", "next_state_0")
    session = _session(info.path)
    for B, L in ((1, 2), (3, 4), (3, 5), (1, 13)):
        u, more = torch.randn(B, L, 2, dtype=torch.float64), torch.randn(B, 6, 2, dtype=torch.float64)
        with torch.no_grad():
            y, s = model(u)
            y_more, s_more = model(more, s)
        got, *final = session.run(None, {"u": u.numpy(), "state_0": info.initial_state(B)[0]})
        assert rel_err(torch.from_numpy(got), y) <= 1e-10, (B, L)
        assert rel_err(torch.from_numpy(final[0]), torch.from_numpy(onnx_state(model, s)[0])) <= 1e-10, (B, L)
        got, *final = session.run(None, {"u": more.numpy(), "state_0": final[0]})
        assert rel_err(torch.from_numpy(got), y_more) <= 1e-10, (B, L)
        assert rel_err(torch.from_numpy(final[0]), torch.from_numpy(onnx_state(model, s_more)[0])) <= 1e-10, (B, L)


def test_sequence_graph_with_a_fixed_batch_and_no_state(tmp_path):
    """``batch_size=1, max_length=3, with_state=False``, T = 2: u -> y from rest, B fixed at 1 (the smallest allowed),
    L 2 and 3 (the smallest max_length allowed; the example, 2T + 3 long, is cut to it)."""
    from ssmkit.analysis.onnx_sequence import export_onnx_sequence

    pytest.importorskip("onnxscript")
    model = _wiener()
    info = export_onnx_sequence(model, str(tmp_path / "fixed.onnx"), batch_size=1, max_length=3, chunk_size=2,
                                with_state=False)
    opset, dims = _graph_dims(info.path)
    assert dims[0] == 1 and isinstance(dims[1], str)
    assert info.batch_size == 1 and info.state_names == () and info.output_names == ("y",)
    session = _session(info.path)
    for L in (2, 3):
        u = torch.randn(1, L, 2, dtype=torch.float64)
        with torch.no_grad():
            y, _ = model(u)
        assert rel_err(torch.from_numpy(session.run(None, {"u": u.numpy()})[0]), y) <= 1e-10, L


def test_a_refusal_other_than_a_growing_state_is_passed_on_unchanged(tmp_path, monkeypatch):
    """Only a growing state gets the hint "with_state=False" (which would not help a complex one): a converted model
    whose state is complex is refused with `_state_parts`' own message, and nothing is written."""
    from ssmkit.analysis import onnx_sequence

    class Complex(torch.nn.Module):
        def initial_state(self, batch_size):
            return [torch.zeros(batch_size, 2, dtype=torch.complex64)]

    monkeypatch.setattr(onnx_sequence, "real_sequence_model", lambda model, chunk_size: Complex())
    with pytest.raises(NotImplementedError) as err:
        onnx_sequence.export_onnx_sequence(_wiener(), str(tmp_path / "complex.onnx"))
    assert str(err.value).startswith("state part 0 is complex") and "with_state" not in str(err.value)
    assert not list(tmp_path.iterdir())
