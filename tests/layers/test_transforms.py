"""Every layer under torch.compile(fullgraph=True) and the torch.func transforms (grad, vmap, jacrev): the same
numbers as eager autograd. (The ops have their own tests in tests/ops/test_func.py and test_compile.py.)"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

import ssmkit.layers as layers
from tests.conftest import DEVICE, H, StepModule, leaves, make_layer, rel_err, state_map

NAMES = layers.available()


@pytest.mark.parametrize("name", NAMES)
def test_compile_fullgraph_matches_eager(name):
    # aot_eager captures the whole forward and backward in one graph (the default inductor backend also works:
    # 6-21 s of compilation per layer on 2 CPU cores, docs/benchmarks.md; too slow for every CI run).
    # return_state=False compiles a second graph whose gradient is not taken: its check (fullgraph, the output) needs
    # dynamo's capture only ("eager" backend, grad mode still on: the layer takes the same path); AOT autograd's
    # joint trace of it took 40 % of this test's time.
    torch._dynamo.reset()
    layer = make_layer(name, dtype=torch.float32)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 70, H, device=DEVICE, requires_grad=True)  # 70 > l_max: S4's attuned C̃ is traced too
    h0 = state_map(lambda t: 0.3 * torch.randn_like(t), layer.initial_state(2))
    y, h = compiled(x, h0)
    y_eager, h_eager = layer(x, h0)
    assert rel_err(y, y_eager) < 1e-6 and rel_err(leaves(h)[0], leaves(h_eager)[0]) < 1e-6
    g = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
    g_eager = torch.autograd.grad(y_eager.square().sum(), [x, *layer.parameters()])
    for a, b in zip(g, g_eager):
        assert rel_err(a, b) < 1e-5
    y_only, none = torch.compile(layer, fullgraph=True, backend="eager")(x, return_state=False)
    assert none is None and rel_err(y_only, layer(x)[0]) < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_func_grad_of_the_parameters(name):
    layer = make_layer(name)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(2, 15, H, device=DEVICE, dtype=torch.float64)

    def loss(p):
        y, _ = functional_call(layer, p, (x,))
        return (y * torch.sin(y)).sum()

    g = grad(loss)(params)
    y, _ = layer(x)
    g_ref = torch.autograd.grad((y * torch.sin(y)).sum(), list(layer.parameters()))
    for (name_, a), b in zip(g.items(), g_ref):
        assert rel_err(a, b) < 1e-10, name_


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_samples_equals_the_batch(name):
    layer = make_layer(name)
    x = torch.randn(4, 12, H, device=DEVICE, dtype=torch.float64)
    per_sample = vmap(lambda xi: layer(xi[None])[0][0])(x)
    assert rel_err(per_sample, layer(x)[0]) < 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_jacrev_of_the_input_equals_the_kernel(name):
    # For an LTI layer dy_t/du_s = K[t - s] (0 for s > t): the Jacobian of a length-8 input is the Toeplitz
    # matrix of the kernel; for any layer it equals autograd's Jacobian.
    layer = make_layer(name)
    x = torch.randn(1, 8, H, device=DEVICE, dtype=torch.float64)
    J = jacrev(lambda inp: layer(inp)[0])(x)  # (1, 8, H, 1, 8, H)
    J_ref = torch.autograd.functional.jacobian(lambda inp: layer(inp)[0], x)
    assert rel_err(J, J_ref) < 1e-12
    if layer.supports("kernel"):
        with torch.no_grad():
            K = layer.kernel(8)  # (H, 8) for a SISO bank, (H_out, H_in, 8) for a MIMO system
        if K.dim() == 2:
            K = torch.diag_embed(K.T).permute(1, 2, 0)  # (H, H, 8): channels do not mix
        toeplitz = torch.zeros(8, 8, H, H, device=DEVICE, dtype=torch.float64)  # [t, s, o, i] = K[o, i, t - s]
        for t in range(8):
            toeplitz[t, : t + 1] = K[..., : t + 1].flip(-1).permute(2, 0, 1)
        expected = toeplitz.permute(0, 2, 1, 3)  # (8, H_out, 8, H_in)
        assert rel_err(J[0, :, :, 0], expected) < 1e-10


STEP_NAMES = [name for name in NAMES if make_layer(name).supports("step")]


@pytest.mark.parametrize("name", STEP_NAMES)
def test_vmap_over_an_ensembles_weights_steps_each_member(name):
    # An ensemble's stacked weights (torch.func.stack_module_state) under vmap: the step's value cache compared them
    # with torch.equal, which has no batching rule, and the wrapped snapshot it kept made every later step raise.
    members = [make_layer(name, seed=s) for s in (1, 2, 3)]
    params, buffers = torch.func.stack_module_state(members)
    x = torch.randn(2, 4, H, device=DEVICE, dtype=torch.float64)

    stepper = StepModule(members[0])

    def steps(p, b):
        weights = {f"layer.{k}": v for k, v in (*p.items(), *b.items())}
        h, ys = members[0].initial_state(2), []
        for t in range(x.shape[1]):
            y, h = functional_call(stepper, weights, (x[:, t], h))
            ys.append(y)
        return torch.stack(ys, dim=1)  # (B, L, H)

    with torch.no_grad():
        y = vmap(steps)(params, buffers)  # (3, B, L, H)
        expected = []
        for member in members:
            h, ys = member.initial_state(2), []
            for t in range(x.shape[1]):
                y_t, h = member.step(x[:, t], h)
                ys.append(y_t)
            expected.append(torch.stack(ys, dim=1))
        assert rel_err(y, torch.stack(expected)) < 1e-12
        again = members[0].step(x[:, 0], members[0].initial_state(2))[0]  # the layer still steps outside vmap
        assert rel_err(again, expected[0][:, 0]) < 1e-12

