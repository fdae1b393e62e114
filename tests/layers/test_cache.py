"""The step's cache of discrete matrices is correct under every way PyTorch users update weights.

Each test updates the parameters after a first ``step`` has filled the cache, then checks step = forward. Keyed on
``Parameter._version`` (the earlier design) S4's step went stale after a fused AdamW step or a ``p.data`` edit, by
5e-3 to 0.24 relative.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import ssmkit.layers as layers
from ssmkit.layers.cache import ValueCache
from tests.conftest import DEVICE, H, StepModule, leaves, make_layer, rel_err, run_steps, state_err

NAMES = [name for name in layers.available() if make_layer(name).supports("step")]
TOL = 1e-10  # float64 layers: step = forward (docs/design.md rule 1)


def fill_cache(layer):
    with torch.no_grad():
        layer.step(torch.randn(2, H, device=DEVICE, dtype=torch.float64), layer.initial_state(2))


def assert_step_equals_forward(layer):
    x = torch.randn(2, 30, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, h = layer(x)
        y_step, h_step = run_steps(layer, x)
    assert rel_err(y_step, y) < TOL and state_err(h_step, h) < TOL


def adamw_step(layer, **options):
    x = torch.randn(2, 20, H, device=DEVICE, dtype=torch.float64)
    opt = torch.optim.AdamW(layer.parameters(), lr=3e-2, **options)
    layer(x)[0].square().mean().backward()
    opt.step()


class _Half(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 0.5 * weight


def parametrize_then_update(layer):
    """Reparametrise every parameter (torch.nn.utils.parametrize: the tensor leaves the module's ``_parameters`` for
    ``parametrizations.<name>.original``), fill the caches, then change the originals (a training step would)."""
    for module in list(layer.modules()):
        for name in [n for n, _ in module.named_parameters(recurse=False)]:
            parametrize.register_parametrization(module, name, _Half())
    fill_cache(layer)
    with torch.no_grad():
        layer(torch.randn(2, 30, H, device=DEVICE, dtype=torch.float64))  # fills a forward plan (S4, Liquid-S4)
        for p in layer.parameters():
            p.mul_(0.9)


UPDATES = {
    "fused_adamw": lambda layer: adamw_step(layer, fused=True),
    "foreach_adamw": lambda layer: adamw_step(layer, foreach=True),
    "data_mul_": lambda layer: [p.data.mul_(0.9) for p in layer.parameters()],
    "data_assign": lambda layer: [setattr(p, "data", p.data * 1.1) for p in layer.parameters()],
    "no_grad_copy_": lambda layer: torch.no_grad()(lambda: [p.copy_(p * 0.95) for p in layer.parameters()])(),
    "load_state_dict": lambda layer: layer.load_state_dict(make_layer(layer.name, seed=7).state_dict()),
    "load_state_dict_assign": lambda layer: layer.load_state_dict(make_layer(layer.name, seed=8).state_dict(), assign=True),
    "reset_parameters": lambda layer: (torch.manual_seed(9), layer.reset_parameters()),
    "parametrize": parametrize_then_update,
}


@pytest.mark.parametrize("update", list(UPDATES))
@pytest.mark.parametrize("name", NAMES)
def test_step_cache_follows_every_kind_of_update(name, update):
    layer = make_layer(name)
    fill_cache(layer)
    ones = torch.ones(1, 3, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        before = run_steps(layer, ones)[0]
    UPDATES[update](layer)
    with torch.no_grad():
        after = run_steps(layer, ones)[0]
    assert not torch.equal(before, after)  # the update changed the layer
    assert_step_equals_forward(layer)


@pytest.mark.parametrize("name", NAMES)
def test_step_cache_follows_dtype_and_copies(name):
    layer = make_layer(name, dtype=torch.float32)
    with torch.no_grad():
        layer.step(torch.randn(2, H, device=DEVICE), layer.initial_state(2))
    double = copy.deepcopy(layer).double()
    assert_step_equals_forward(double)
    twin = copy.deepcopy(double)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.05)
    assert_step_equals_forward(twin)
    assert_step_equals_forward(double)  # the copy's update did not leak into the original


@pytest.mark.parametrize("name", NAMES)
def test_step_is_differentiable_and_matches_forward_gradients(name):
    layer = make_layer(name)
    x = torch.randn(2, 6, H, device=DEVICE, dtype=torch.float64)
    fill_cache(layer)  # a filled cache must not be used when gradients are needed
    y, h = run_steps(layer, x)
    params = list(layer.parameters())
    grads = torch.autograd.grad(y.sum() + sum(t.abs().sum() for t in leaves(h)), params)
    y_f, h_f = layer(x)
    grads_f = torch.autograd.grad(y_f.sum() + sum(t.abs().sum() for t in leaves(h_f)), params)
    for a, b in zip(grads, grads_f):
        assert rel_err(a, b) < 1e-9  # float64



def _plain_name(name: str) -> str:
    """``ssm.parametrizations.C.original`` -> ``ssm.C``."""
    return name.replace("parametrizations.", "").replace(".original", "")


@pytest.mark.parametrize("name", layers.available())
def test_reparametrised_weights_reach_every_cache(name):
    # torch.nn.utils.parametrize moves a parameter to parametrizations.<name>.original: caches keyed on the module's
    # own tensors missed it, so step (and S4's forward plan) kept the weights of the first call after a training
    # step, and S4 with all its parameters reparametrised got no gradient (its plan was computed without one).
    layer = make_layer(name)
    parametrize_then_update(layer)
    plain = make_layer(name)  # the same buffers; its parameters hold the reparametrised values
    with torch.no_grad():
        for qualified, p in plain.named_parameters():
            owner, _, leaf = qualified.rpartition(".")
            p.copy_(getattr(layer.get_submodule(owner), leaf))
    x = torch.randn(2, 30, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(layer(x)[0], plain(x)[0]) < 1e-12
        if layer.supports("step"):
            assert rel_err(run_steps(layer, x)[0], run_steps(plain, x)[0]) < 1e-12
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad(layer(x)[0].square().sum(), list(params.values()))
    plain_params = dict(plain.named_parameters())
    grads_plain = torch.autograd.grad(plain(x)[0].square().sum(), [plain_params[_plain_name(n)] for n in params])
    for g, g_plain in zip(grads, grads_plain):  # d/d original = 0.5 d/d weight
        assert rel_err(g, 0.5 * g_plain) < 1e-10


def counter():
    """A compute function that returns how many times it has been called."""
    calls = []

    def compute():
        calls.append(1)
        return len(calls)

    return compute


def test_value_cache_recomputes_on_any_change():
    a, b = torch.ones(3), torch.zeros(2)
    cache: ValueCache[int] = ValueCache()
    compute = counter()

    assert cache.get([a, b], compute) == 1
    assert cache.get([a, b], compute) == 1  # same values: reused
    a.data.mul_(2)  # no version bump
    assert cache.get([a, b], compute) == 2
    assert cache.get([a, b.double()], compute) == 3  # dtype change
    assert cache.get([a], compute) == 4  # a different list
    cache.clear()
    assert cache.get([a], compute) == 5


def test_frozen_parameters_checks_once_per_block():
    from ssmkit.layers import frozen_parameters

    a = torch.ones(3)
    cache: ValueCache[int] = ValueCache()
    compute = counter()

    assert cache.get([a], compute) == 1
    a.data.mul_(2)  # changed before the block: seen at the block's first lookup
    with frozen_parameters():
        assert cache.get([a], compute) == 2
        a.data.mul_(2)  # changed inside the block: the promise is broken, the cache trusts the block
        assert cache.get([a], compute) == 2
        b = a.clone()
        assert cache.get([b], compute) == 3  # another tensor object is checked again (its values differ from 2's)
    with frozen_parameters():  # a new block checks the values again: a equals b, so 3 stays valid
        assert cache.get([a], compute) == 3
        a.data.add_(1)
        assert cache.get([a], compute) == 3  # a value check (3 found valid for a) also marks a as checked in the block
    assert cache.get([a], compute) == 4  # outside a block every lookup compares



def test_frozen_parameters_sees_a_new_tensor_at_a_freed_ones_address():
    # Inside a block the cache trusts the same tensor objects. It recognised them by id(), and a tensor made for one
    # lookup dies after it, so the next one is often allocated at the same address: the same id, other values.
    from ssmkit.layers import frozen_parameters

    cache: ValueCache[float] = ValueCache()
    with frozen_parameters():
        values = [cache.get([torch.full((3,), float(k))], lambda k=k: float(k)) for k in range(6)]
    assert values == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("name,weight", [("s4d", "C"), ("s5", "B"), ("lru", "B"), ("s4", "C_tilde")])
def test_step_with_a_weight_made_per_step_inside_frozen_parameters(name, weight):
    # functional_call with a weight made for each step (a hypernetwork's output, a schedule) inside a generation
    # block: before, 19 of 20 steps of S4D reused the first step's discrete matrices (the freed weight's id again).
    from torch.func import functional_call

    from ssmkit.layers import frozen_parameters

    model = StepModule(make_layer(name))
    base = getattr(model.layer, weight).detach().clone()
    x_t = torch.randn(2, H, device=DEVICE, dtype=torch.float64)
    h = model.layer.initial_state(2)
    scales = [1.0 + 0.1 * k for k in range(20)]
    expected = []
    with torch.no_grad():
        for s in scales:  # a fresh layer holding each step's weight
            fresh = make_layer(name, seed=7)
            fresh.load_state_dict({**model.layer.state_dict(), weight: base * s})
            expected.append(fresh.step(x_t, h)[0])
    with torch.no_grad(), frozen_parameters():
        got = [functional_call(model, {f"layer.{weight}": base * s}, (x_t, h))[0] for s in scales]
    for y, y_ref in zip(got, expected):
        assert rel_err(y, y_ref) < TOL

@pytest.mark.parametrize("name", NAMES)
def test_step_inside_frozen_parameters_equals_forward(name):
    from ssmkit.layers import frozen_parameters

    layer = make_layer(name)
    fill_cache(layer)
    UPDATES["fused_adamw"](layer)  # before the block: must be seen
    x = torch.randn(2, 30, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad(), frozen_parameters():
        y_step, h_step = run_steps(layer, x)
    with torch.no_grad():
        y, h = layer(x)
    assert rel_err(y_step, y) < TOL and state_err(h_step, h) < TOL


def test_value_cache_key_replaces_the_entry():
    a = torch.ones(3)
    cache: ValueCache[int] = ValueCache()
    compute = counter()

    assert cache.get([a], compute, key=("L", 30)) == 1
    assert cache.get([a], compute, key=("L", 30)) == 1  # same values, same key: reused
    assert cache.get([a], compute, key=("L", 40)) == 2  # another key: recomputed
    assert cache.get([a], compute, key=("L", 30)) == 3  # one entry: the first key's value was replaced


# S4's forward keeps its kernel and final-state tables without a gradient (layers/s4.py, "_plan"): every way of
# changing the weights must be seen, at every length and with or without an initial state.
PLAN_LAYERS = ["s4", "liquid_s4"]


def forward_both_ways(layer, x, state=None):
    """The default call without a gradient (cached plan) and with one (recomputed): (y, final state) each."""
    with torch.no_grad():
        cached = layer(x, state)
    fresh = layer(x, state)
    return cached, fresh


def assert_cached_equals_fresh(layer, L=30, with_state=False):
    x = torch.randn(2, L, H, device=DEVICE, dtype=torch.float64)
    state = None
    if with_state:
        with torch.no_grad():
            state = layer(torch.randn(2, 7, H, device=DEVICE, dtype=torch.float64))[1]
    (y_c, h_c), (y_f, h_f) = forward_both_ways(layer, x, state)
    assert rel_err(y_c, y_f) < 1e-12 and state_err(h_c, h_f) < 1e-12


@pytest.mark.parametrize("update", list(UPDATES))
@pytest.mark.parametrize("name", PLAN_LAYERS)
def test_forward_plan_follows_every_kind_of_update(name, update):
    layer = make_layer(name)
    assert_step_equals_forward(layer)  # fills the forward's plan (L = 30, final state) and the step's cache
    assert_cached_equals_fresh(layer)
    UPDATES[update](layer)
    assert_step_equals_forward(layer)  # the no-grad forward against the step loop, after the update
    assert_cached_equals_fresh(layer)


@pytest.mark.parametrize("name", PLAN_LAYERS)
def test_forward_plan_across_lengths_states_and_copies(name):
    layer = make_layer(name)
    for L, with_state in ((30, False), (40, False), (30, True), (30, False), (70, True)):  # 70 > l_max: attuned C̃
        assert_cached_equals_fresh(layer, L, with_state)
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.02)
    assert_cached_equals_fresh(twin, 70, True)
    assert_cached_equals_fresh(layer, 70, True)  # the copy's update did not leak into the original
    x = torch.randn(2, 30, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y64 = layer(x)[0]
        y32 = copy.deepcopy(layer).float()(x.float())[0]  # another dtype: a plan of its own
    assert rel_err(y32, y64) < 1e-5


def test_caches_are_not_pickled():
    # torch.save of a whole module and copy.deepcopy carry the parameters, not a cached plan or step coefficients
    import io

    layer = make_layer("s4", dtype=torch.float32)

    def saved_size():
        buffer = io.BytesIO()
        torch.save(layer, buffer)
        return buffer.tell()

    empty = saved_size()
    x = torch.randn(2, 30, H, device=DEVICE)
    with torch.no_grad():
        y = layer(x)[0]
        layer.step(x[:, 0], layer.initial_state(2))
    assert layer._plan_cache._entry is not None and layer._step_cache._entry is not None
    assert saved_size() == empty
    twin = copy.deepcopy(layer)
    assert twin._plan_cache._entry is None
    with torch.no_grad():
        assert torch.equal(twin(x)[0], y)


@pytest.mark.parametrize("name", NAMES)
def test_a_cache_filled_in_inference_mode_serves_input_gradients(name):
    # generation under torch.inference_mode() filled the cache with inference tensors; a later step of the frozen
    # layer with autograd on (gradients for its input) then raised "Inference tensors cannot be saved for backward"
    layer = make_layer(name).requires_grad_(False)
    x = torch.randn(2, H, device=DEVICE, dtype=torch.float64)
    with torch.inference_mode():
        layer.step(x, layer.initial_state(2))
    x_g = x.clone().requires_grad_()
    y, _ = layer.step(x_g, layer.initial_state(2))
    (g,) = torch.autograd.grad(y.sum(), x_g)
    eps = 1e-6  # central difference of the frozen layer's first step, one input at a time
    fd = torch.zeros_like(x)
    with torch.no_grad():
        for b in range(2):
            for c in range(H):
                e = torch.zeros_like(x)
                e[b, c] = eps
                y_p, _ = layer.step(x + e, layer.initial_state(2))
                y_m, _ = layer.step(x - e, layer.initial_state(2))
                fd[b, c] = (y_p.sum() - y_m.sum()) / (2 * eps)
    assert rel_err(g, fd) < 1e-5


@pytest.mark.parametrize("name", PLAN_LAYERS)
def test_a_forward_plan_filled_in_inference_mode_serves_input_gradients(name):
    # S4's forward plan, filled under torch.inference_mode(), must not hold inference tensors either
    layer = make_layer(name).requires_grad_(False)
    x = torch.randn(2, 30, H, device=DEVICE, dtype=torch.float64)
    with torch.inference_mode():
        y_inf = layer(x)[0]
    x_g = x.clone().requires_grad_()
    y, _ = layer(x_g)  # the frozen layer's plan from the cache, autograd on for the input
    (g,) = torch.autograd.grad(y.square().sum(), x_g)
    layer.requires_grad_(True)
    x_r = x.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(layer(x_r)[0].square().sum(), x_r)  # recomputed with the parameters' graph
    assert rel_err(y, y_inf) < 1e-12 and rel_err(g, g_ref) < 1e-12
