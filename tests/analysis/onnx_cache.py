"""A per-process cache of ``ssmkit analyze --onnx`` runs whose graphs several test modules check.

An ONNX export is the slow part of these tests (torch.export with a symbolic length: seconds per graph), so each
command runs once per process (each pytest-xdist worker is its own process) and the tests that read its output share
it. `analyzed_realisation` (``--intervals``, the DeepWiener of a known continuous system):
tests/analysis/test_onnx_intervals.py (what it prints, and its graphs against scipy's exact samples of the system) and
tests/probes/test_probe_missing_onnx_user_2026_12_06.py (the unit of the intervals it prints). `analyzed_deep_wiener`
(a float64 two-block S4D DeepWiener): tests/analysis/test_commands.py (what it prints, the sequence graph against the
model) and tests/analysis/test_onnx_sequence.py (the step graph continuing the sequence graph's final state). The
graphs are read-only files and the models are only run (``torch.no_grad``), never changed, so the tests' order does
not matter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np
import torch

from ssmkit.analysis.onnx_export import OnnxExport


@dataclasses.dataclass(frozen=True)
class Analyzed:
    """The command's exit code, stdout and stderr; the model file it was given, its model and the two graphs it
    wrote."""

    code: int
    printed: str
    errors: str
    model_pt: str
    model: torch.nn.Module
    step: OnnxExport
    sequence: OnnxExport


_RUNS: dict = {}


def _described(path: str, intervals: str | None = None) -> OnnxExport:
    """An `OnnxExport` of a graph that the command wrote, read from the graph's own inputs and outputs (the command
    prints its description; `feed` needs the object)."""
    import onnx

    graph = onnx.load(path).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    names = tuple(name for name in inputs if name.startswith("state_"))
    dtype = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}
    return OnnxExport(
        path=path, input_name="u", state_names=names, output_names=tuple(o.name for o in graph.output),
        state_shapes=tuple(tuple(d.dim_value for d in inputs[n].shape.dim[1:]) for n in names),
        state_dtypes=tuple(np.dtype(dtype[inputs[n].elem_type]) for n in names),
        interval_name=intervals,
        interval_dtype=None if intervals is None else np.dtype(dtype[inputs[intervals].elem_type]))


def _analyze(model, arguments: dict, folder, intervals: bool) -> tuple[int, str, str, str]:
    """Save ``model`` as a DeepWiener file in ``folder`` and run ``ssmkit analyze`` on it with ``--onnx``:
    (exit code, stdout, stderr, the model file)."""
    from ssmkit.cli import main as cli_main

    torch.save({"deep_wiener": arguments, "state_dict": model.state_dict()}, folder / "model.pt")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["analyze", str(folder / "model.pt"), "--out", str(folder / "a"), "--no-plots", "--onnx"]
                        + (["--intervals"] if intervals else []))
    return code, out.getvalue(), err.getvalue(), str(folder / "model.pt")


DEEP_WIENER = {"n_inputs": 1, "n_outputs": 1, "d_model": 4, "n_layers": 2, "layer": "s4d",
               "layer_options": {"d_state": 8}, "dt": 0.004}


def analyzed_deep_wiener(tmp_path_factory) -> Analyzed:
    """``ssmkit analyze model.pt --onnx --no-plots`` on a model.pt holding a float64 DeepWiener(**DEEP_WIENER) (two
    S4D blocks: two state parts), seeded 0, run once per process; ``model`` is the DeepWiener itself."""
    if "deep_wiener" not in _RUNS:
        from ssmkit.sysid.wiener import DeepWiener

        torch.manual_seed(0)
        model = DeepWiener(**DEEP_WIENER, dtype=torch.float64).eval()
        folder = tmp_path_factory.mktemp("analyze_deep_wiener")
        code, printed, errors, model_pt = _analyze(model, DEEP_WIENER, folder, intervals=False)
        _RUNS["deep_wiener"] = Analyzed(code, printed, errors, model_pt, model,
                                        _described(str(folder / "a" / "step.onnx")),
                                        _described(str(folder / "a" / "sequence.onnx")))
    return _RUNS["deep_wiener"]


def analyzed_realisation(tmp_path_factory) -> Analyzed:
    """``ssmkit analyze model.pt --onnx --intervals --no-plots`` on a model.pt holding `realisation()` of
    tests/sysid/test_irregular_records.py (an S4D DeepWiener in float64 equal to a lightly damped resonance sampled at
    Ts = 0.1 s), run once per process; ``model`` is the realisation itself (the file holds its weights)."""
    if "realisation" not in _RUNS:
        from tests.sysid.test_irregular_records import TS, realisation

        model, _ = realisation()
        folder = tmp_path_factory.mktemp("analyze_intervals")
        arguments = {"n_inputs": 1, "n_outputs": 1, "d_model": 1, "n_layers": 1, "layer": "s4d",
                     "layer_options": {"d_state": 2, "lr": 1e-3}, "activation": None, "dt": TS}
        code, printed, errors, model_pt = _analyze(model, arguments, folder, intervals=True)
        _RUNS["realisation"] = Analyzed(code, printed, errors, model_pt, model,
                                        _described(str(folder / "a" / "step.onnx"), "interval"),
                                        _described(str(folder / "a" / "sequence.onnx"), "intervals"))
    return _RUNS["realisation"]
