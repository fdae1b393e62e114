"""A compiled inference step reads the step cache at run time (the ``ssmkit::cached_value`` op), not a discretisation
traced into its graph: one whole graph, the same numbers as the eager step, weights followed after every change;
with a gradient wanted, and under torch.export, the graph computes from the weights (docs/design.md, "Compiled
step")."""

from __future__ import annotations

import copy

import pytest
import torch

from ssmkit.layers.state import map_state
from tests.conftest import DEVICE, H, StepModule, leaves, make_layer, rel_err

CACHED = ["s4d", "dss", "dlr", "s5", "lru", "s4", "h3"]  # layers whose step reads a ValueCache built with its compute
OP = "ssmkit.cached_value"


class _Recorder:
    """A torch.compile backend that keeps each FX graph and runs it as traced."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def targets(self) -> list[str]:
        return [str(n.target) for g in self.graphs for n in g.graph.nodes if n.op == "call_function"]


def _state(layer, batch):
    g = torch.Generator().manual_seed(1)
    return map_state(lambda t: 0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device),
                     layer.initial_state(batch))


def _close(a, b):
    return rel_err(a[0], b[0]) < 1e-6 and all(rel_err(p, q) < 1e-6 for p, q in zip(leaves(a[1]), leaves(b[1])))


@pytest.mark.parametrize("name", CACHED)
def test_compiled_inference_step_reads_the_cache_at_run_time(name):
    torch._dynamo.reset()
    layer = make_layer(name, dtype=torch.float32).eval()
    x = torch.randn(2, H, device=DEVICE)
    h = _state(layer, 2)
    recorder = _Recorder()
    step = torch.compile(layer.step, backend=recorder, fullgraph=True)
    with torch.no_grad():
        assert _close(step(x, h), layer.step(x, h))
        targets = recorder.targets()
        assert any(OP in t for t in targets)
        assert not any("aten.exp" in t or t.endswith("exp") for t in targets)  # no discretisation in the graph
        for p in layer.parameters():  # an in-place update: the op's run-time lookup sees it, no recompilation
            p.mul_(1.05)
        assert _close(step(x, h), layer.step(x, h))
    assert len(recorder.graphs) == 1


@pytest.mark.parametrize("name", ["s4d", "s5", "s4"])
def test_compiled_step_with_a_gradient_computes_from_the_weights(name):
    torch._dynamo.reset()
    layer = make_layer(name, dtype=torch.float32)
    x = torch.randn(2, H, device=DEVICE)
    h = _state(layer, 2)
    recorder = _Recorder()
    y = torch.compile(layer.step, backend=recorder)(x, h)[0]
    assert not any(OP in t for t in recorder.targets())  # the op has no derivative: the graph differentiates
    grads = torch.autograd.grad(y.square().sum(), list(layer.parameters()), allow_unused=True)
    expected = torch.autograd.grad(layer.step(x, h)[0].square().sum(), list(layer.parameters()), allow_unused=True)
    for g, e in zip(grads, expected):
        assert (g is None) == (e is None)
        if g is not None:
            assert rel_err(g, e) < 1e-5


def test_a_copied_layer_compiles_to_its_own_weights():
    torch._dynamo.reset()
    layer = make_layer("s4d", dtype=torch.float32).eval()
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.9)
    x = torch.randn(2, H, device=DEVICE)
    h = _state(layer, 2)
    with torch.no_grad():
        for module in (layer, twin):
            assert _close(torch.compile(module.step, backend="aot_eager", fullgraph=True)(x, h), module.step(x, h))
        assert rel_err(layer.step(x, h)[0], twin.step(x, h)[0]) > 1e-3  # the twins do differ


def test_export_keeps_the_discretisation_in_the_program():
    layer = make_layer("s4d", dtype=torch.float32).eval()
    x = torch.randn(2, H, device=DEVICE)
    h = _state(layer, 2)
    with torch.no_grad():
        program = torch.export.export(StepModule(layer), (x, h))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert not any(OP in t for t in targets) and any("exp" in t for t in targets)
