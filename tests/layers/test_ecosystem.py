"""Every layer inside PyTorch's machinery (probe 10, docs/design.md): torch.export and torch.compile(fullgraph=True)
without a gradient (inference), functional_call with another layer's weights, meta-device construction and state
dict keys, each against the eager layer or a fresh layer holding the same weights."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn
from torch.func import functional_call

import ssmkit.layers as layers
from ssmkit.models import SequenceModel
from tests.conftest import DEVICE, H, StepModule, leaves, make_layer, rel_err, state_map, variants

NAMES = layers.available()
STEP_NAMES = [name for name in NAMES if layers.layer_class(name).capabilities.step]


class _Forward(nn.Module):
    """layer(x)[0] as a module of its own (torch.export wants tensors out)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)[0]


class _Realisation(nn.Module):
    """layer.state_space()'s A, B, C, D as a module (functional_call reaches the realisation through it)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self):
        ss = self.layer.state_space()
        return tuple(torch.as_tensor(m) for m in (ss.A, ss.B, ss.C, ss.D))


class _Discrete(nn.Module):
    """S5's discrete() as a module (functional_call feeds it the weights to differentiate)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self):
        return self.layer.discrete()


def _random_state(layer, batch):
    return state_map(lambda t: 0.3 * torch.randn_like(t), layer.initial_state(batch))


def _tensors(layer, prefix=""):
    return {prefix + k: v.detach().clone() for k, v in (*layer.named_parameters(), *layer.named_buffers())}


@pytest.mark.parametrize("name", NAMES)
def test_export_without_a_gradient_follows_the_weights(name):
    # Inference export runs under no_grad, where the step caches compared parameter values with torch.equal:
    # torch.export failed with "DataDependentOutputException: aten.equal.default" for every cached layer.
    layer = make_layer(name, dtype=torch.float32).eval()
    other = make_layer(name, dtype=torch.float32, seed=2)
    # The batch is a dynamic dimension (a served model takes any batch): ops that chose a chunk length or a loop by
    # B·H guarded on B, and export refused the dynamic batch for LRU, S5, RG-LRU, Mamba and Mamba-2.
    x, x5 = torch.randn(2, 9, H, device=DEVICE), torch.randn(5, 9, H, device=DEVICE)
    batch = torch.export.Dim("batch", min=2, max=4096)
    with torch.no_grad():
        layer(x)  # a filled cache must not be baked into the program
        program = torch.export.export(_Forward(layer), (x,), dynamic_shapes={"x": {0: batch}}).module()
        assert rel_err(program(x), layer(x)[0]) < 1e-6
        assert rel_err(program(x5), layer(x5)[0]) < 1e-6
        program.load_state_dict(_tensors(other, "layer."))  # the exported program holds weights, not constants
        assert rel_err(program(x), other(x)[0]) < 1e-6


@pytest.mark.parametrize("name", STEP_NAMES)
def test_export_of_step_without_a_gradient_follows_the_weights(name):
    layer = make_layer(name, dtype=torch.float32).eval()
    other = make_layer(name, dtype=torch.float32, seed=2)
    x_t = torch.randn(2, H, device=DEVICE)
    h = _random_state(layer, 2)
    with torch.no_grad():
        layer.step(x_t, h)
        program = torch.export.export(StepModule(layer), (x_t, h)).module()
        for module, ref in ((program, layer), (program, other)):
            if ref is other:
                program.load_state_dict(_tensors(other, "layer."))
            y, h1 = module(x_t, h)
            y_ref, h1_ref = ref.step(x_t, h)
            assert rel_err(y, y_ref) < 1e-6
            for a, b in zip(leaves(h1), leaves(h1_ref)):
                assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("name", ["s4d", "s5", "s4", "h3"])  # the cached steps: diagonal, MIMO, DPLR, taps
def test_compile_fullgraph_without_a_gradient(name):
    # torch.compile(fullgraph=True) of an inference step failed in the step cache ("Dynamo does not know how to trace
    # method `get` of class `ContextVar`") for the 13 cached layers; design.md promises full graphs for S4, S4D, DSS.
    torch._dynamo.reset()
    layer = make_layer(name, dtype=torch.float32).eval()
    x = torch.randn(2, 12, H, device=DEVICE)
    h = _random_state(layer, 2)
    step = torch.compile(StepModule(layer), backend="aot_eager", fullgraph=True)
    forward = torch.compile(layer, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        for _ in range(2):  # then after an in-place update: the graph reads the weights, never a stale copy
            y, h1 = step(x[:, 0], h)
            y_ref, h1_ref = layer.step(x[:, 0], h)
            assert rel_err(y, y_ref) < 1e-6
            assert max(rel_err(a, b) for a, b in zip(leaves(h1), leaves(h1_ref))) < 1e-6
            assert rel_err(forward(x, h)[0], layer(x, h)[0]) < 1e-6
            for p in layer.parameters():
                p.mul_(1.01)


@pytest.mark.parametrize("name", NAMES)
def test_functional_call_uses_the_given_weights_not_the_cached_ones(name):
    # Every cache is full of the layer's own weights; functional_call with another layer's weights (with and without
    # a gradient) must give that layer's forward, step and realisation, and leave the layer's own outputs alone.
    layer, other = make_layer(name), make_layer(name, seed=2)
    x = torch.randn(2, 11, H, device=DEVICE, dtype=torch.float64)
    has_step, has_ss = layer.supports("step"), layer.supports("state_space")
    h = _random_state(layer, 2) if has_step else None
    with torch.no_grad():
        y_own = layer(x)[0]
        if has_step:
            layer.step(x[:, 0], h)
        if has_ss:
            layer.state_space()
    for grad_mode in (False, True):
        with torch.set_grad_enabled(grad_mode):
            assert rel_err(functional_call(layer, _tensors(other), (x,))[0], other(x)[0]) < 1e-12
            if has_step:
                y, h1 = functional_call(StepModule(layer), _tensors(other, "layer."), (x[:, 0], h))
                y_ref, h1_ref = other.step(x[:, 0], h)
                assert rel_err(y, y_ref) < 1e-12
                assert max(rel_err(a, b) for a, b in zip(leaves(h1), leaves(h1_ref))) < 1e-12
    if has_ss:
        got = functional_call(_Realisation(layer), _tensors(other, "layer."), ())
        for a, b in zip(got, _Realisation(other)()):
            assert rel_err(a, b) < 1e-12
    assert torch.equal(layer(x)[0], y_own)


@pytest.mark.parametrize("name", NAMES)
def test_meta_construction_then_loading_equals_the_saved_layer(name):
    # The large-model loading pattern: build on the meta device, to_empty, load a state dict (strict). Also: the
    # state dict's keys do not change with use (nothing registered lazily), so a checkpoint loads strictly.
    saved = make_layer(name)
    keys = list(saved.state_dict())
    x = torch.randn(2, 9, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y = saved(x)[0]
        if saved.supports("step"):
            saved.step(x[:, 0], saved.initial_state(2))
        if saved.supports("state_space"):
            saved.state_space()
    assert list(saved.state_dict()) == keys
    with torch.device("meta"):
        empty = layers.build(name, d_model=H, dtype=torch.float64, **variants(name)[0])
    empty.to_empty(device=DEVICE)
    empty.load_state_dict(saved.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(empty(x)[0], y)


@pytest.mark.parametrize("variant", [0, 2])  # zoh: with and without conjugate symmetry
def test_s5_discretisation_backward_under_inductor(variant):
    # torch.compile (default inductor backend) of an S5 training step failed in backward with "self.stride(-1) must
    # be 1 to view ComplexFloat as Float": inductor laid out the gradient of the (M, 1) column that S5 discretised
    # with stride (1, M). The discretisation alone reproduces it at a fraction of the compile time.
    if DEVICE.type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        pytest.skip("inductor needs a C++ compiler on the CPU")
    torch._dynamo.reset()
    layer = make_layer("s5", variants("s5")[variant], dtype=torch.float32)

    def loss(weights):
        A_bar, B_bar, C = functional_call(_Discrete(layer), {"layer." + k: v for k, v in weights.items()}, ())
        return sum(torch.view_as_real(t).square().sum() for t in (A_bar, B_bar, C))

    # D enters no Ā, B̄, C
    weights = {k: v.detach().clone().requires_grad_() for k, v in layer.named_parameters() if k != "D"}
    grads = torch.autograd.grad(torch.compile(loss)(weights), list(weights.values()))
    ref = torch.autograd.grad(loss(weights), list(weights.values()))
    for a, b in zip(grads, ref):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("variant", [0, 2])
def test_s5_discretisation_graph_holds_no_complex_constant(variant):
    # On CUDA the inductor test above failed with "InductorError: KeyError: 'complex64'" (torch 2.11, H200): the
    # series coefficients of (e^z - 1)/z were a complex tensor constant, which inductor copies by a Triton kernel
    # (lift_fresh_copy never falls back) and Triton has no complex dtype (pytorch/pytorch#191330). Checked here on
    # any device: the forward and backward graphs that inductor would receive hold no complex constant.
    from torch._functorch.aot_autograd import aot_module_simplified

    torch._dynamo.reset()
    layer = make_layer("s5", variants("s5")[variant], dtype=torch.float32)
    found = []

    def record(gm, example_inputs):
        for node in gm.graph.nodes:
            val = node.meta.get("val")
            complex_val = isinstance(val, torch.Tensor) and val.is_complex()
            attr = getattr(gm, node.target) if node.op == "get_attr" else None
            if isinstance(attr, torch.Tensor) and attr.is_complex():
                found.append(node.target)
            elif complex_val and node.target is torch.ops.aten.lift_fresh_copy.default:
                found.append(node.name)
        return gm.forward

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=record, bw_compiler=record)

    def loss(weights):
        A_bar, B_bar, C = functional_call(_Discrete(layer), {"layer." + k: v for k, v in weights.items()}, ())
        return sum(torch.view_as_real(t).square().sum() for t in (A_bar, B_bar, C))

    weights = {k: v.detach().clone().requires_grad_() for k, v in layer.named_parameters() if k != "D"}
    grads = torch.autograd.grad(torch.compile(loss, backend=backend)(weights), list(weights.values()))
    assert all(g is not None for g in grads) and found == []


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_is_refused_with_a_clear_error(name):
    # torch.jit.script failed deep in the compiler ("Unknown type annotation: 'torch.Tensor'", from the postponed
    # annotations); layers are not scriptable, and the error now says what to use instead, also inside a model.
    with pytest.raises(RuntimeError, match="torch.jit.script is not supported.*torch.compile"):
        torch.jit.script(make_layer(name))
    model = SequenceModel(2, H, 1, name, variants(name)[0], 1)
    with pytest.raises(RuntimeError, match="torch.jit.script is not supported"):
        torch.jit.script(model)
