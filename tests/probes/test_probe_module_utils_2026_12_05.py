"""Module-utilities probe of 2026-12-05: every registered layer under PyTorch's standard module utilities.

Each number is compared with an independent reference: a fresh layer built from another seed that holds the
effective weights (a parametrization's value, ``orig * mask`` of a pruned tensor, an average kept by hand), the
un-checkpointed backward, the fully trainable layer's gradients. Float64, B = 2, L = 9, H = 3 (tests/conftest.py's
first variant of each layer).

Found and fixed:

1. ``torch.nn.utils.prune``: a pruned tensor is a plain attribute that only the module's ``__call__`` refreshes (a
   forward pre-hook); after an optimizer step (or ``load_state_dict``) without a forward in between, ``step``,
   ``kernel``, ``state_space`` and the read-outs (``discrete()``, ``eigenvalues()``, ``continuous()``, Hyena's
   ``filters()``) used the old product. Step against the fresh layer's forward: S4D 1.7, DLR 1.6, Liquid-S4 0.47, LRU
   0.45, DSS 0.31, S4 0.094, EMA 0.093, S5 0.086, SGConv 0.059, Mamba-2 3.4e-2, H3 7.6e-3, Mega 5.7e-3, RG-LRU 5.5e-3,
   Mamba 3.1e-4, GSS 9.2e-5, Hyena 2.7e-5 (attention: its step calls only its projections, as modules); kernel and
   state space 0.073-1.7; ``discrete()`` 6e-3 (EMA) to 0.30 (DLR); a pruned model loaded with ``load_state_dict``
   and run with ``step`` 1.5 (S4D), 4.6e-2 (Mamba), 1.3e-2 (Mega). Now ``SequenceLayer._check_parameter_dtype`` (the
   first thing every entry does) recomputes them (``protocol.apply_pruning``): all <= 1e-12.
2. Hyena's step cache of the implicit filters watched the filter's ``original`` tensors only: a parametrization
   registered on them changed the filters the forward used but not the step's (8.2e-2 from the fresh layer), and a
   forward hook on the filter module acted in the forward only (5.0e-3 and 8.3e-3). It now watches the current values
   (``cache.module_tensors``) and computes the filters without the cache while a hook is on the filter.
3. ``vector_to_parameters`` (and ``functional_call`` with slices of one flat buffer) gives parameters at odd storage
   offsets, where ``torch.view_as_complex`` raised "Tensor must have a storage_offset divisible by 2" in the forward
   of DLR, DSS, GSS, H3, LRU and S5 (and of S4, S4D and Liquid-S4 where their complex tensors fell at odd offsets).
   The layers now read their (re, im) pairs through ``protocol.complex_pairs`` (a view where the layout allows it,
   else a copy).

Checked and fine: a hook on a projection fires in ``step`` as in ``forward``; ``torch.utils.checkpoint`` (both modes)
around a Block with dropout 0.3 in training gives bit-identical outputs and gradients; freezing the SSM parameters
leaves every other gradient unchanged on every backend; ``AveragedModel`` with ``get_ema_multi_avg_fn``; a meta-device
model, ``to_empty`` and ``apply(reset_parameters)`` initialises every tensor; ``clip_grad_norm_``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector, parametrize, prune, vector_to_parameters
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.checkpoint import checkpoint

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.models import Block, SequenceModel
from tests.conftest import DEVICE, H, make_layer, rel_err, run_steps, runnable_backends, variants
from tests.layers.test_training_setups import effective_weights

B, L = 2, 9
NAMES = layers.available()


def _x(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, H, generator=g, dtype=torch.float64).to(DEVICE)


def _fill_caches(layer, x) -> None:
    """A no-grad forward, step loop, kernel and state space: every value cache holds the current weights."""
    with torch.no_grad():
        layer(x)
        if layer.supports("step"):
            run_steps(layer, x)
        if layer.supports("kernel"):
            layer.kernel(L)
        if layer.supports("state_space"):
            layer.state_space()


def _system_err(a, b) -> float:
    return max(rel_err(torch.as_tensor(getattr(a, k).copy()), torch.as_tensor(getattr(b, k).copy()))
               for k in ("A", "B", "C", "D"))


def _outputs_err(layer, fresh, x) -> dict[str, float]:
    """Errors of ``layer``'s forward, step loop, kernel and state space against ``fresh`` (its forward for steps)."""
    with torch.no_grad():
        expected = fresh(x)[0]
        errs = {}
        if layer.supports("step"):  # first: before any forward of the layer refreshes what it may refresh
            errs["step"] = rel_err(run_steps(layer, x)[0], expected)
        if layer.supports("kernel"):
            errs["kernel"] = rel_err(layer.kernel(L), fresh.kernel(L))
        if layer.supports("state_space"):
            errs["state_space"] = _system_err(layer.state_space(), fresh.state_space())
        errs["forward"] = rel_err(layer(x)[0], expected)
    return errs


# ---------------------------------------------------------------------------------------------------------------------
# 1. parametrize


class _Scale(nn.Module):
    """X -> 1.5 X: a parametrization that changes the value (its original keeps the old one)."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return 1.5 * X


def _fresh_with(layer, name: str) -> nn.Module:
    fresh = make_layer(name, seed=5)
    fresh.load_state_dict(effective_weights(layer))
    return fresh


@pytest.mark.parametrize("name", NAMES)
def test_a_parametrization_reaches_forward_step_kernel_and_state_space(name):
    # registered on every parameter after the caches were filled (the value changes, the originals do not), then the
    # originals edited through .data (no version bump): each entry follows the current value
    layer = make_layer(name)
    x = _x()
    _fill_caches(layer, x)
    for module in list(layer.modules()):
        for n, p in list(module._parameters.items()):
            if p is not None:
                parametrize.register_parametrization(module, n, _Scale())
    errs = _outputs_err(layer, _fresh_with(layer, name), x)
    assert max(errs.values()) <= 1e-12, errs  # Hyena's step before the fix: 8.2e-2
    with torch.no_grad():
        for p in layer.parameters():
            p.data.mul_(0.9)
    errs = _outputs_err(layer, _fresh_with(layer, name), x)
    assert max(errs.values()) <= 1e-12, errs


@pytest.mark.parametrize("name", [n for n in NAMES if any(isinstance(m, nn.Linear) for m in make_layer(n).modules())])
def test_spectral_norm_and_orthogonal_projections_step_equals_forward(name):
    from torch.nn.utils.parametrizations import orthogonal, spectral_norm

    x = _x(1)
    for wrap in (spectral_norm, orthogonal):
        layer = make_layer(name)
        _fill_caches(layer, x)
        for m in [m for m in layer.modules() if isinstance(m, nn.Linear)]:
            wrap(m)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        (layer(x)[0] ** 2).mean().backward()
        optimizer.step()
        layer.eval()  # spectral_norm's power iteration runs in training mode only
        errs = _outputs_err(layer, _fresh_with(layer, name), x)
        assert max(errs.values()) <= 1e-12, (wrap.__name__, errs)


# ---------------------------------------------------------------------------------------------------------------------
# 2. prune


def _prune_everything(layer) -> None:
    """l1_unstructured on the layer's own (SSM) tensors, random_unstructured on its sub-modules' (projections, convs,
    filters): 30 % of each tensor of two or more elements."""
    for module in list(layer.modules()):
        for n, p in list(module._parameters.items()):
            if p is not None and p.numel() >= 2:
                if module is layer:
                    prune.l1_unstructured(module, n, amount=0.3)
                else:
                    prune.random_unstructured(module, n, amount=0.3)


@pytest.mark.parametrize("name", NAMES)
def test_pruned_weights_reach_step_kernel_and_state_space_without_a_forward(name):
    # train a step, then step / kernel / state space before any forward: they must use orig * mask as it is now
    # (before the fix the product the last forward left: S4D's step 1.7, its kernel and state space 1.7, DLR 1.6,
    # Liquid-S4 0.47, LRU 0.56, Mamba 3.1e-4, Mamba-2 3.4e-2)
    layer = make_layer(name)
    x = _x(2)
    _fill_caches(layer, x)
    torch.manual_seed(3)
    _prune_everything(layer)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    (layer(x)[0] ** 2).mean().backward()
    optimizer.step()
    errs = _outputs_err(layer, _fresh_with(layer, name), x)
    assert max(errs.values()) <= 1e-12, errs


@pytest.mark.parametrize("name", ["s4d", "lru", "s5", "dlr", "dss", "ema", "hyena"])
def test_pruned_weights_reach_the_read_outs(name):
    # discrete(), eigenvalues(), continuous() and Hyena's filters() are not __call__ either (discrete() before the
    # fix: DLR 0.30, S4D 0.24, LRU 0.16, S5 8.1e-2, DSS 2.6e-2, EMA 6.3e-3; Hyena's filters() call the filter module,
    # whose hook refreshes it: a guard)
    layer = make_layer(name)
    x = _x(3)
    torch.manual_seed(4)
    _prune_everything(layer)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    (layer(x)[0] ** 2).mean().backward()
    optimizer.step()
    fresh = _fresh_with(layer, name)
    with torch.no_grad():
        if name == "hyena":
            assert rel_err(layer.filters(L), fresh.filters(L)) <= 1e-13
            return
        for read_out in ("discrete", "eigenvalues", "continuous"):
            if hasattr(layer, read_out):
                got, want = getattr(layer, read_out)(), getattr(fresh, read_out)()
                got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
                assert max(rel_err(a, b) for a, b in zip(got, want)) <= 1e-13, read_out


@pytest.mark.parametrize("name", ["s4d", "mamba", "mega"])
def test_a_pruned_checkpoint_loaded_then_generated_step_by_step(name):
    # the usual way to load a pruned model: prune a fresh one to get the same structure (orig and mask), load the
    # state dict, then generate with step. The step used the fresh model's own weights before the fix (S4D 1.5, Mamba
    # 4.6e-2, Mega 1.3e-2 from the saved model's forward)
    def model(seed: int) -> SequenceModel:
        torch.manual_seed(seed)
        m = SequenceModel(d_input=2, d_model=H, n_layers=2, layer=name, layer_options=dict(variants(name)[0]),
                          d_output=2, head="regress", pool=None, dtype=torch.float64, device=DEVICE).eval()
        for block in m.blocks:
            _prune_everything(block.layer)
        return m

    saved, loaded = model(0), model(1)
    loaded.load_state_dict(saved.state_dict())
    x = torch.randn(B, L, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(DEVICE)
    with torch.no_grad():
        state = loaded.initial_state(B)
        ys = []
        for t in range(L):
            y_t, state = loaded.step(x[:, t], state)
            ys.append(y_t)
        assert rel_err(torch.stack(ys, 1), saved(x)[0]) <= 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# 3. hooks


@pytest.mark.parametrize("name", [n for n in NAMES if make_layer(n).supports("step")])
def test_hooks_on_projections_fire_in_step_as_in_forward(name):
    # PyTorch's rule: hooks fire on __call__. step is not the layer's __call__ (the layer's own hooks do not fire in
    # it), but every nn.Linear a step calls is called as a module, so a hook that changes its output acts in both
    layer = make_layer(name)
    x = _x(6)
    own = []
    layer.register_forward_hook(lambda m, i, o: own.append(1))
    calls = {"forward": 0, "step": 0}
    phase = ["forward"]

    def shift(module, inputs, output):
        calls[phase[0]] += 1
        return output + 0.1

    linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    for m in linears:
        m.register_forward_hook(shift)
    with torch.no_grad():
        y = layer(x)[0]
        phase[0] = "step"
        ys = run_steps(layer, x)[0]
    assert len(own) == 1  # the layer's own hook: forward only
    assert (calls["forward"] > 0) == (calls["step"] > 0) == bool(linears)
    assert rel_err(ys, y) <= 1e-12


@pytest.mark.parametrize("variant", [0, 1])
def test_a_hook_on_hyenas_filter_acts_in_step(variant):
    # the step's filters came from a cache filled before the hook (5.0e-3 and 8.3e-3 from the forward, before the fix)
    layer = make_layer("hyena", variants("hyena")[variant])
    x = _x(7)
    _fill_caches(layer, x)
    # a window on the taps (tap k scaled by 0.9^k: the same at every length the step asks for)
    handle = layer.filter.register_forward_hook(
        lambda m, i, o: o * 0.9 ** torch.arange(o.shape[-1], dtype=o.dtype, device=o.device))
    with torch.no_grad():
        assert rel_err(run_steps(layer, x)[0], layer(x)[0]) <= 1e-12
    handle.remove()
    fresh = make_layer("hyena", variants("hyena")[variant])
    with torch.no_grad():
        assert rel_err(run_steps(layer, x)[0], fresh(x)[0]) <= 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# 4. activation checkpointing with dropout


@pytest.mark.parametrize("name", NAMES)
def test_checkpointed_block_with_dropout_equals_the_plain_one(name):
    block = Block(make_layer(name), dropout=0.3, device=DEVICE, dtype=torch.float64).train()
    x, w = _x(8), _x(9)
    results = {}
    for mode in ("plain", "reentrant", "non-reentrant"):
        xx = x.clone().requires_grad_()
        block.zero_grad()
        torch.manual_seed(7)  # the same dropout masks, if the recomputation replays the RNG
        if mode == "plain":
            y = block(xx, None, False)[0]
        else:
            y = checkpoint(block, xx, None, False, use_reentrant=mode == "reentrant")[0]
        (y * w).sum().backward()
        grads = [xx.grad] + [torch.zeros_like(p) if p.grad is None else p.grad for p in block.parameters()]
        results[mode] = [y.detach(), *(g.clone() for g in grads)]
    torch.manual_seed(8)
    assert not torch.equal(block(x, None, False)[0], results["plain"][0])  # dropout drew masks
    for mode in ("reentrant", "non-reentrant"):
        assert all(torch.equal(a, b) for a, b in zip(results[mode], results["plain"])), mode


# ---------------------------------------------------------------------------------------------------------------------
# 5. partial freezing


@pytest.mark.parametrize("name", NAMES)
def test_freezing_the_ssm_parameters_leaves_the_other_gradients(name):
    layer = make_layer(name)
    frozen = {id(m.get_parameter(n)) for m in layer.modules() for n in layers.optim_marks(m)}
    frozen = frozen or {id(next(layer.parameters()))}  # attention: no SSM marks, freeze its first tensor
    x, w = _x(10), _x(11)
    for backend in runnable_backends(layer):
        ops.set_backend(backend)
        for p in layer.parameters():
            p.requires_grad_(True)
        layer.zero_grad()
        (layer(x)[0] * w).sum().backward()
        full = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        for p in layer.parameters():
            p.requires_grad_(id(p) not in frozen)
        (layer(x)[0] * w).sum().backward()
        for p, g in zip(layer.parameters(), full):
            if id(p) in frozen:
                assert p.grad is None
            else:
                assert rel_err(p.grad, g) <= 1e-13, backend
    ops.set_backend("auto")
    _fill_caches(layer, x)
    optimizer = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    (layer(x)[0] * w).sum().backward()
    optimizer.step()
    fresh = make_layer(name, seed=5)
    fresh.load_state_dict(layer.state_dict())
    errs = _outputs_err(layer, fresh, x)
    assert max(errs.values()) <= 1e-12, errs


# ---------------------------------------------------------------------------------------------------------------------
# 6. averaging, flat vectors, meta device, clipping


@pytest.mark.parametrize("name", NAMES)
def test_parameters_as_views_of_one_flat_vector(name):
    # vector_to_parameters: each parameter a view of the vector at the offset the tensors before it leave (odd here,
    # by a leading element): the forward raised in DLR, DSS, GSS, H3, LRU and S5 (view_as_complex) before the fix;
    # the caches follow later writes into the vector
    layer = make_layer(name)
    fresh = make_layer(name)
    x, w = _x(12), _x(13)
    _fill_caches(layer, x)
    flat = torch.zeros(1 + sum(p.numel() for p in layer.parameters()), dtype=torch.float64, device=DEVICE)
    flat[1:] = parameters_to_vector(layer.parameters()).detach() * 0.9
    vector_to_parameters(flat[1:], layer.parameters())
    with torch.no_grad():
        for p in fresh.parameters():
            p.mul_(0.9)
    errs = _outputs_err(layer, fresh, x)
    assert max(errs.values()) <= 1e-12, errs
    (layer(x)[0] * w).sum().backward()
    (fresh(x)[0] * w).sum().backward()
    for p, q in zip(layer.parameters(), fresh.parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-12
    with torch.no_grad():
        flat.mul_(1.1)  # the parameters alias the vector
        for p in fresh.parameters():
            p.mul_(1.1)
    errs = _outputs_err(layer, fresh, x)
    assert max(errs.values()) <= 1e-12, errs
    # the same weights given to functional_call as slices of one buffer
    weights, offset = {}, 1
    for n, p in fresh.named_parameters():
        weights[n] = flat[offset: offset + p.numel()].view_as(p)
        offset += p.numel()
    weights.update(fresh.named_buffers())  # (SGConv's kernel_norm, drawn with the sub-kernels)
    with torch.no_grad():
        assert rel_err(functional_call(make_layer(name, seed=9), weights, (x,))[0], fresh(x)[0]) <= 1e-12
    # clip_grad_norm_ = the 2-norm of every gradient (all parameters real: no complex parameter anywhere)
    assert not any(p.is_complex() for p in layer.parameters())
    total = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
    assert rel_err(nn.utils.clip_grad_norm_(layer.parameters(), 1e-3), total) <= 1e-14


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_at_an_odd_offset(name):
    # each parameter a view at offset 1 of its own buffer (the layout a flat vector can give any of them): S4, S4D and
    # Liquid-S4 raised too before the fix. Forward, step, kernel and state space; then the gradients
    layer, fresh = make_layer(name), make_layer(name)
    x, w = _x(16), _x(17)
    _fill_caches(layer, x)
    for p in layer.parameters():
        buffer = torch.empty(p.numel() + 1, dtype=p.dtype, device=p.device)
        buffer[1:] = p.detach().flatten()
        p.data = buffer[1:].view_as(p)
    errs = _outputs_err(layer, fresh, x)
    assert max(errs.values()) <= 1e-12, errs
    (layer(x)[0] * w).sum().backward()
    (fresh(x)[0] * w).sum().backward()
    assert max(rel_err(p.grad, q.grad) for p, q in zip(layer.parameters(), fresh.parameters())) <= 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_ema_of_the_weights_with_averaged_model(name):
    layer = make_layer(name)
    x = _x(14)
    ema = AveragedModel(layer, multi_avg_fn=get_ema_multi_avg_fn(0.75))
    _fill_caches(ema.module, x)
    params = dict(layer.named_parameters())
    average = None
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.2)
    for _ in range(3):
        (layer(x)[0] ** 2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update_parameters(layer)  # the first update copies, the later ones average
        now = {k: p.detach().clone() for k, p in params.items()}
        average = now if average is None else {k: 0.75 * average[k] + 0.25 * now[k] for k in now}
    fresh = make_layer(name, seed=9)
    fresh.load_state_dict({**ema.module.state_dict(), **average})
    errs = _outputs_err(ema.module, fresh, x)
    assert max(errs.values()) <= 1e-12, errs


@pytest.mark.parametrize("name", NAMES)
def test_meta_model_to_empty_then_reset_initialises_every_tensor(name):
    options = dict(d_input=2, d_model=H, n_layers=2, layer=name, layer_options=dict(variants(name)[0]), d_output=2,
                   head="regress", pool=None, dtype=torch.float64)
    model = SequenceModel(device="meta", **options)
    model.to_empty(device=DEVICE)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.fill_(float("nan"))  # to_empty's memory is uninitialised: make a missed tensor visible
    model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    assert not [n for n, t in [*model.named_parameters(), *model.named_buffers()]
                if t.is_floating_point() and torch.isnan(t).any()]
    layer = model.blocks[0].layer
    x = _x(15)
    fresh = make_layer(name, seed=9)
    fresh.load_state_dict(layer.state_dict())
    errs = _outputs_err(layer, fresh, x)
    assert max(errs.values()) <= 1e-12, errs
