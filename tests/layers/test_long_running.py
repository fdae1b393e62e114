"""A layer used for hours (a service, a training job): nothing it keeps grows with the calls, no cache goes stale.

Probe 16 (docs/design.md, "Probe 16: memory and long-running use"). Every registered layer is called with 12 distinct
lengths, several batch sizes, both dtypes, train and eval, with gradients, under ``no_grad`` and under
``inference_mode``, forward and ``step``; what the layer then holds besides its parameters and buffers (its caches)
must be exactly what one call of the last kind leaves, so a cache keyed by L (or batch, or dtype) that kept one entry
per key would fail. Each parameter and buffer is then edited alone, and the layer must give what a fresh layer loaded
with the same state dict gives, so a cache that watched only some of the tensors it is computed from would fail.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.layers.cache import ValueCache
from ssmkit.models import SequenceModel
from ssmkit.sysid.wiener import DeepWiener
from tests.conftest import DEVICE, H, leaves, make_layer, rel_err, run_steps, variants

NAMES = layers.available()
LENGTHS = [5 + 7 * i for i in range(12)]  # 12 distinct lengths, the last the longest
MODES = (torch.enable_grad, torch.no_grad, torch.inference_mode)


def held(module: torch.nn.Module) -> tuple[int, list[str]]:
    """Bytes of the tensors a module keeps outside its parameters and buffers (its caches), and the attribute paths of
    those that carry an autograd graph (grad_fn set)."""
    seen: set[int] = set()
    total, graphs = 0, []

    def visit(obj, path: str) -> None:
        nonlocal total
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            total += obj.numel() * obj.element_size()
            if obj.grad_fn is not None:
                graphs.append(path)
        elif isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                visit(item, f"{path}[{i}]")
        elif isinstance(obj, dict):
            for key, item in obj.items():
                visit(item, f"{path}[{key!r}]")
        elif isinstance(obj, ValueCache) or (hasattr(obj, "__dict__") and type(obj).__module__.startswith("ssmkit")
                                             and not isinstance(obj, torch.nn.Module)):
            visit(vars(obj), path)

    for name, sub in module.named_modules():
        for key, value in vars(sub).items():
            if key not in ("_parameters", "_buffers", "_modules"):
                visit(value, f"{name}.{key}")
    return total, graphs


def call(layer, L: int, batch: int, dtype: torch.dtype, training: bool, mode) -> None:
    """One call of every kind a user makes: forward (and backward with gradients), a continuation from its state and
    three steps from a fresh initial state."""
    layer.to(dtype).train(training)
    x = torch.randn(batch, L, H, device=DEVICE, dtype=dtype)
    with mode():
        y, h = layer(x)
        if h is not None:
            layer(x[:, :3], h)
        if layer.supports("step"):
            s = layer.initial_state(batch)
            for t in range(3):
                _, s = layer.step(x[:, t], s)
        if torch.is_grad_enabled():
            y.square().mean().backward()
    layer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", NAMES)
def test_caches_do_not_grow_with_lengths_batches_dtypes_or_modes(name):
    layer = make_layer(name, dtype=torch.float32)
    for i, L in enumerate(LENGTHS):
        dtype = torch.float64 if i % 4 in (1, 2) else torch.float32
        call(layer, L, 1 + i % 3, dtype, i % 2 == 0, MODES[i % 3])
        assert held(layer)[1] == [], f"a cached tensor keeps an autograd graph after call {i}"
    # the last call: L = LENGTHS[-1], batch 3, float32, eval, inference_mode; a fresh layer after that call alone
    fresh = make_layer(name, dtype=torch.float32)
    call(fresh, LENGTHS[-1], 1 + 11 % 3, torch.float32, False, MODES[11 % 3])
    assert held(layer)[0] == held(fresh)[0]


@pytest.mark.parametrize("name", NAMES)
def test_no_graph_is_kept_after_calls_with_gradients_and_no_backward(name):
    # a serving loop with autograd on and no backward: nothing the layer keeps may hold the call's graph (it would keep
    # the activations alive), so every tensor saved for backward dies with the outputs
    layer = make_layer(name, dtype=torch.float32)
    own = [*layer.parameters(), *layer.buffers()]
    x = torch.randn(2, 20, H, device=DEVICE, requires_grad=True)
    saved: list[weakref.ref] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        # what the graph keeps: a detached alias (returning t itself would make a saved output and its grad_fn a
        # reference cycle of the hook's own making); the parameters live on by design
        packed = t.detach()
        if not any(t is p for p in own):
            saved.append(weakref.ref(packed))
        return packed

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for _ in range(3):
            y, h = layer(x)
            if layer.supports("step"):
                y_t, s = layer.step(x[:, 0], layer.initial_state(2))
    assert saved and held(layer)[1] == []
    del y, h
    if layer.supports("step"):
        del y_t, s
    assert [ref for ref in saved if ref() is not None] == []  # freed by reference counting alone


def test_registries_and_dropped_layers_do_not_accumulate():
    # a service that builds and drops models: each is freed by reference counting alone (no cycle between a layer and
    # its caches), and the process-wide tables (native build and smoke results, the compiled-graph cache numbers,
    # HiPPO's lru_caches) do not grow with the models
    from ssmkit.layers import cache as cache_module
    from ssmkit.ops import hippo
    from ssmkit.ops.native import build, gate

    def sizes():
        return (len(gate._STATUS), len(build._BOUND), len(cache_module._CACHES),
                hippo._nplr_cached.cache_info().currsize, hippo._dss_eigenvalues_cached.cache_info().currsize)

    for name in NAMES:  # warm: the first call of each layer may build a kernel or fill a table
        call(make_layer(name, dtype=torch.float32), 9, 2, torch.float32, True, torch.enable_grad)
    gc.collect()
    before = sizes()
    gc.disable()
    try:
        for name in NAMES:
            layer = make_layer(name, dtype=torch.float32)
            call(layer, 13, 2, torch.float32, True, torch.enable_grad)
            call(layer, 11, 1, torch.float32, False, torch.no_grad)
            ref = weakref.ref(layer)
            del layer
            assert ref() is None, f"{name}: a dropped layer waits for the cycle collector"
    finally:
        gc.enable()
    assert sizes() == before


def _outputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """What a user reads under no_grad (the caches in use): forward at two lengths, a continuation, and four steps."""
    with torch.no_grad():
        y, h = model(x)
        res = [y, model(x[:, :7])[0]]
        if h is not None:
            res.append(model(x[:, 7:], h)[0])
        if getattr(model, "supports", lambda _: True)("step"):
            s = model.initial_state(x.shape[0])
            for t in range(4):
                y_t, s = model.step(x[:, t], s)
                res.append(y_t)
    return res


def _sequence_model(name: str):
    def build(seed: int):
        torch.manual_seed(seed)
        return SequenceModel(d_input=H, d_model=4, n_layers=1, layer=name, layer_options=dict(variants(name)[0]),
                             d_output=2, head="regress", pool=None, dtype=torch.float64, device=DEVICE)
    return build


def _wiener(seed: int):
    torch.manual_seed(seed)
    return DeepWiener(H, 1, d_model=4, n_layers=1, layer="s4", layer_options={"d_state": 4}, encoder_window=3,
                      dtype=torch.float64, device=DEVICE)


MODELS = {**{name: (lambda seed, name=name: make_layer(name, seed=seed)) for name in NAMES},
          "SequenceModel(s4)": _sequence_model("s4"), "SequenceModel(hyena)": _sequence_model("hyena"),
          "DeepWiener(s4)": _wiener}


@pytest.mark.parametrize("label", list(MODELS))
def test_every_parameter_and_buffer_reaches_every_cache(label):
    build = MODELS[label]
    model = build(1)
    x = torch.randn(2, 20, H, device=DEVICE, dtype=torch.float64)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name, tensor in tensors.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        _outputs(model, x)  # fills the caches
        with torch.no_grad():
            tensor.mul_(1.07).add_(0.01)  # this tensor alone
        fresh = build(2)
        fresh.load_state_dict(model.state_dict())
        for a, b in zip(_outputs(model, x), _outputs(fresh, x)):
            assert rel_err(a, b) < 1e-12, f"{name} changed but a cache kept its old value"


@pytest.mark.parametrize("name", [n for n in NAMES if make_layer(n).supports("step")])
def test_no_grad_rollout_keeps_no_graph_and_a_bounded_state(name):
    # parameters that require grad, a rollout under no_grad: the state carries no graph, and a layer with a finite
    # state keeps its size (attention without a window and Hyena grow by design: docs/design.md)
    layer = make_layer(name, dtype=torch.float32)
    x = torch.randn(1, H, device=DEVICE)
    with torch.no_grad():
        s = layer.initial_state(1)
        sizes = []
        for t in range(400):
            _, s = layer.step(x, s)
            if t in (49, 399):
                sizes.append(sum(leaf.numel() for leaf in leaves(s)))
    assert all(leaf.grad_fn is None and not leaf.requires_grad for leaf in leaves(s))
    if name not in ("attention", "hyena", "mega"):  # a growing KV cache (no window, within a chunk) or kernel state
        assert sizes[0] == sizes[1]
    with torch.no_grad():  # a windowed attention keeps at most window - 1 positions
        if name == "attention":
            windowed = make_layer(name, variants(name)[1], dtype=torch.float32)
            s = windowed.initial_state(1)
            for _ in range(50):
                _, s = windowed.step(x, s)
            assert s.keys.shape[2] == windowed.cache_limit


def test_float32_rollout_of_10000_steps_matches_forward():
    # docs/design.md rule 1: a float32 step equals forward within 1e-5 relative; over 10 000 steps of a stable layer
    # (S4D, Δ at its slow end: memories of ~1e3-1e4 steps) the step's float32 state must not drift from the forward
    torch.manual_seed(0)
    layer = layers.build("s4d", d_model=4, d_state=16, dt_min=1e-4, dt_max=1e-3, device=DEVICE)
    x = torch.randn(1, 10_000, 4, device=DEVICE)
    with torch.no_grad(), layers.frozen_parameters():
        y, h = layer(x)
        y_step, h_step = run_steps(layer, x)
    assert rel_err(y_step, y) < 1e-5
    assert rel_err(y_step[:, -1000:], y[:, -1000:]) < 1e-5  # the end of the rollout, against its own scale
    assert rel_err(h_step, h) < 1e-5
