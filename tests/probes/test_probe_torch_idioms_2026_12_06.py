"""Everyday-PyTorch-idioms probe of 2026-12-06: an experienced PyTorch user's habits applied to every registered
layer and to ``SequenceModel``, each result against an independent reference -- the same layer or model rebuilt and
loaded with the weights in effect, a float64 run without the idiom, the step loop, a numpy computation.

Float64 where the idiom allows, B = 2, L = 9, H = 3 (tests/conftest.py's first variant of each layer); models of two
blocks with a per-step regression head.

Found and fixed:

1. *The legacy, hook-based* ``torch.nn.utils.weight_norm`` *and* ``torch.nn.utils.spectral_norm`` (still in torch
   2.13, and common in older code) keep the normalised tensor as a plain attribute that only the module's
   ``__call__`` recomputes (a forward pre-hook), as ``torch.nn.utils.prune`` does. ``step``, ``kernel``,
   ``state_space`` and a mixer's call of its short convolution's ``step`` are not ``__call__``, so after an optimizer
   step they read the weight of the last forward. Weight norm on a layer's first own tensor (on the short
   convolution of Mamba, Mamba-2 and RG-LRU), the step against a fresh layer holding the weights in effect: H3 0.86,
   RG-LRU 0.75, DLR 0.57 (kernel 0.28, state space 0.30), Mamba-2 0.33, Mamba 0.22, LRU 0.14 (state space 1.9),
   SGConv 0.14, EMA 2.1e-2 (state space 7.6e-2), Hyena 7.2e-3, GSS 4.0e-3, S4 and Liquid-S4 1.5e-3 (S4's state space
   6.2e-2), DSS 2.6e-4 (state space 2.3e-2), S4D 3.9e-5 (state space 8.1e-3), S5 4.6e-7, Mega 1.9e-7. In a model
   with either norm on every Linear and short convolution, Mamba-2's step was 4e-2 off (6.3e-2 with spectral norm),
   RG-LRU's 2.6e-2, Hyena's 7.6e-4, Mamba's 1.1e-4, and a ``step`` with autograd on after a forward + backward raised
   "Trying to backward through the graph a second time" (it read the last forward's graph). ``protocol.apply_pruning``,
   which every entry calls first, now recomputes these tensors too (spectral norm without a power iteration: reading
   a layer never moves its u, v): all <= 1e-12.

Checked and fine (each test below): ``torch.inference_mode()`` / ``no_grad`` / ``eval`` before training (the
gradients are bit-identical to a fresh layer's; a state made under inference mode raises PyTorch's own error, whose
advice, a clone, gives the reference); ``.double().float()`` round trips (exact) and ``.half()`` / ``.bfloat16()``
(a clear ValueError, as documented); ``torch.autocast`` bf16 forward + backward (parameters stay float32, the LTI
cores and their kernels exactly float32, gradients finite, step = forward under autocast, nothing computed under
autocast leaks into the caches); ``parametrize`` (a positivity constraint, weight norm) followed by optimizer steps;
``quantize_dynamic`` (float16: equal to the rounded weights; qint8: the step loop equals length-1 forwards exactly);
freezing the SSM parameters with ``param_groups``; ``apply`` / in-place edits / ``vector_to_parameters`` /
``load_state_dict(assign=True, strict=False)`` / ``share_memory`` / ``torch.save`` of the module / ``deepcopy``
after a forward; hooks; ``zero_grad(set_to_none=False)``; ``clip_grad_norm_``; ``AveragedModel`` EMA; LR schedulers
over ``param_groups``.

Left (reported, not fixed): loading *one* tensor of another dtype into a layer with ``load_state_dict(...,
assign=True)`` (a float32 tensor into a float64 layer) gives a mixed-precision layer that either runs, promoted
(S4, Liquid-S4, RG-LRU), or fails deep inside with an error that does not name the cause ("mixed precisions: u is
torch.float32 but A_bar is torch.complex128", "expected m1 and m2 to have the same dtype"); a whole model, or whole
blocks, loaded that way run in the loaded dtype (tested below).
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, parametrize, vector_to_parameters
from torch.nn.utils.parametrizations import weight_norm as new_weight_norm
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import ssmkit.layers as layers
from ssmkit.layers.state import map_state
from ssmkit.models import SequenceModel
from ssmkit.train import param_groups
from ssmkit.train.schedule import WarmupCosine, warmup_cosine
from tests.conftest import DEVICE, H, leaves, make_layer, rel_err, run_steps, state_err, variants

B, L = 2, 9
F64, F32 = torch.float64, torch.float32
NAMES = layers.available()
LTI = [n for n in NAMES if make_layer(n).supports("kernel")]


def _x(seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, H, generator=g, dtype=F64).to(device=DEVICE, dtype=dtype)


def _model(name: str, dtype: torch.dtype = F64, seed: int = 1) -> SequenceModel:
    torch.manual_seed(seed)
    return SequenceModel(d_input=H, d_model=H, n_layers=2, layer=name, layer_options=dict(variants(name)[0]),
                         d_output=2, head="regress", pool=None, device=DEVICE, dtype=dtype)


def _model_steps(model, x, state=None):
    h = model.initial_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y_t, h = model.step(x[:, t], h)
        ys.append(y_t)
    return torch.stack(ys, 1), h


def _fresh_copy(model: nn.Module, name: str) -> SequenceModel:
    """A model built from another seed and loaded with ``model``'s state dict (the weights in effect)."""
    fresh = _model(name, dtype=next(model.parameters()).dtype, seed=99)
    fresh.load_state_dict(model.state_dict())
    return fresh


def _system_err(a, b) -> float:
    return max(rel_err(torch.as_tensor(np.array(getattr(a, k))), torch.as_tensor(np.array(getattr(b, k))))
               for k in ("A", "B", "C", "D"))


def _views_err(layer, fresh, x) -> dict[str, float]:
    """``layer``'s step loop, kernel, state space and forward against ``fresh``'s (step first: before any forward of
    ``layer`` could refresh what it refreshes)."""
    with torch.no_grad():
        want = fresh(x)[0]
        errs = {}
        if layer.supports("step"):
            errs["step"] = rel_err(run_steps(layer, x)[0], want)
        if layer.supports("kernel"):
            errs["kernel"] = rel_err(layer.kernel(L), fresh.kernel(L))
        if layer.supports("state_space"):
            errs["state_space"] = _system_err(layer.state_space(), fresh.state_space())
        errs["forward"] = rel_err(layer(x)[0], want)
    return errs


def _grads(module: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def _flat(grads: list[torch.Tensor | None]) -> torch.Tensor:
    """The gradients as one vector (zeros where a tensor got none)."""
    return torch.cat([g.ravel() for g in grads if g is not None])


def _loss(y: torch.Tensor, state) -> torch.Tensor:
    """A loss that reads the output and every tensor of the final state (complex ones through their modulus)."""
    return y.square().sum() + sum(t.abs().square().sum() for t in leaves(state) if t.is_floating_point() or t.is_complex())


# ---------------------------------------------------------------------------------------------------------------------
# 1. inference mode, no_grad, eval, then training


@pytest.mark.parametrize("name", NAMES)
def test_inference_mode_before_training_leaves_the_gradients_of_a_fresh_layer(name):
    used, fresh = make_layer(name), make_layer(name)
    x = _x()
    with torch.inference_mode():  # fills every cache a layer keeps (step matrices, S4's plan, Hyena's filters)
        used(x)
        if used.supports("step"):
            run_steps(used, x)
        if used.supports("kernel"):
            used.kernel(L)
        if used.supports("state_space"):
            used.state_space()
    got = {}
    for layer in (used, fresh):
        xx = x.clone().requires_grad_(True)
        y, h = layer(xx)
        _loss(y, h).backward()
        got[layer is used] = [xx.grad, *_grads(layer)]
        if layer.supports("step"):
            xs = x.clone().requires_grad_(True)
            ys, _ = run_steps(layer, xs)
            ys.square().sum().backward()
            got[layer is used].append(xs.grad)
    assert all(rel_err(a, b) == 0 for a, b in zip(got[True], got[False]) if b is not None)


@pytest.mark.parametrize("name", NAMES)
def test_a_frozen_layer_cached_under_inference_mode_gives_input_gradients(name):
    used, fresh = make_layer(name).requires_grad_(False), make_layer(name).requires_grad_(False)
    x = _x()
    with torch.inference_mode():
        used(x)
        if used.supports("step"):
            run_steps(used, x)
    got = {}
    for layer in (used, fresh):
        xx = x.clone().requires_grad_(True)
        y, _ = layer(xx)
        y.square().sum().backward()  # before: would need the cached values saved for backward
        got[layer is used] = [y, xx.grad]
        if layer.supports("step"):
            xs = x.clone().requires_grad_(True)
            ys, _ = run_steps(layer, xs)
            ys.square().sum().backward()
            got[layer is used] += [ys, xs.grad]
    assert all(rel_err(a, b) == 0 for a, b in zip(got[True], got[False]))


@pytest.mark.parametrize("name", NAMES)
def test_eval_no_grad_then_train_on_a_model(name):
    used, fresh = _model(name), _model(name)
    x = _x()
    with torch.no_grad():
        used.eval()
        used(x)
        _model_steps(used, x)
    used.train()
    for model in (used, fresh):
        y, _ = model(x)
        y.square().sum().backward()
    assert all(rel_err(p.grad, q.grad) == 0 for p, q in zip(used.parameters(), fresh.parameters()))
    used.eval()
    with torch.inference_mode():
        steps = _model_steps(used, x)[0]
    assert rel_err(steps, fresh.eval()(x)[0]) < 1e-12


@pytest.mark.parametrize("name", ["s4d", "mamba", "s5"])
def test_a_state_made_under_inference_mode_needs_a_clone_for_autograd(name):
    # PyTorch's own rule: an inference tensor cannot be saved for backward. Its error says what to do, and the
    # clone it advises gives the gradients of a state made under no_grad.
    model = _model(name)
    x = _x()
    with torch.inference_mode():
        _, h_inf = model(x)
    with torch.no_grad():
        _, h_ref = model(x)
    with pytest.raises(RuntimeError, match="(?s)Inference tensors cannot be saved for backward.*clone"):
        model(x, h_inf)[0].square().sum().backward()
    model.zero_grad()
    model(x, [map_state(torch.clone, s) for s in h_inf])[0].square().sum().backward()
    got = _grads(model)
    model.zero_grad()
    model(x, h_ref)[0].square().sum().backward()
    assert all(rel_err(a, b) == 0 for a, b in zip(got, _grads(model)))


# ---------------------------------------------------------------------------------------------------------------------
# 2. dtype conversions and autocast


@pytest.mark.parametrize("name", NAMES)
def test_double_then_float_round_trip_is_exact(name):
    m32 = _model(name, F32)
    x = _x()
    with torch.no_grad():
        y32 = m32(x.float())[0]
        kernels = [b.layer.kernel(L) for b in m32.blocks if b.layer.supports("kernel")]
        m64 = copy.deepcopy(m32).double()
        reference = _model(name, F64, seed=7)
        reference.load_state_dict(m32.state_dict())  # float32 weights, exactly, in a model built in float64
        assert rel_err(m64(x)[0], reference(x)[0]) == 0
        back = m64.float()
        assert rel_err(back(x.float())[0], y32) == 0
        assert all(rel_err(b.layer.kernel(L), k) == 0
                   for b, k in zip([b for b in back.blocks if b.layer.supports("kernel")], kernels))
        assert rel_err(_model_steps(back, x.float())[0], y32) < 2e-5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_half_precision_weights_are_refused_and_float_restores_them(name, low):
    model = _model(name, F32).to(low)
    x = _x(dtype=low)
    for call in (lambda: model(x), lambda: model.initial_state(B), lambda: model.blocks[0].layer.step(x[:, 0], None)):
        with pytest.raises(ValueError, match="float32 or float64"):
            call()
    rounded = _model(name, F32, seed=99)
    rounded.load_state_dict(model.state_dict())  # a float32 model holding the rounded weights
    layer = model.blocks[0].layer
    if layer.supports("state_space"):  # analysed as they are, in float64 (documented)
        exact = _model(name, F64, seed=99)
        exact.load_state_dict(model.state_dict())
        assert _system_err(layer.state_space(), exact.blocks[0].layer.state_space()) == 0
    model.float()
    with torch.no_grad():
        assert rel_err(model(x.float())[0], rounded(x.float())[0]) == 0


@pytest.mark.parametrize("name", NAMES)
def test_autocast_bf16_forward_and_backward(name):
    layer, reference = make_layer(name, dtype=F32), make_layer(name, dtype=F32)
    x = _x(dtype=F32)
    xr = x.clone().requires_grad_(True)
    y32, h32 = reference(xr)
    y32.square().sum().backward()
    xa = x.clone().requires_grad_(True)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        ya, ha = layer(xa)
        if layer.supports("kernel"):
            k = layer.kernel(L)
        with torch.no_grad():
            ys = run_steps(layer, x)[0] if layer.supports("step") else ya
    ya.float().square().sum().backward()  # outside the block, as PyTorch advises
    assert {p.dtype for p in layer.parameters()} == {F32}
    assert {t.dtype for t in leaves(ha)} == {t.dtype for t in leaves(h32)}  # the state stays in the core's dtype
    grads = torch.cat([p.grad.ravel() for p in layer.parameters() if p.grad is not None])
    want = torch.cat([p.grad.ravel() for p in reference.parameters() if p.grad is not None])
    assert torch.isfinite(grads).all() and torch.isfinite(xa.grad).all()
    mixer_projections = name in ("gss", "h3", "hyena", "mamba", "mamba2", "rglru")  # bf16 under autocast
    if mixer_projections:
        assert rel_err(ya, y32) < 3e-2 and rel_err(grads, want) < 6e-2  # bf16: 2^-8 per rounding
    else:  # the whole layer runs in float32 (the LTI cores, attention, Mega): autocast changes nothing
        assert rel_err(ya, y32) == 0 and rel_err(grads, want) == 0 and rel_err(xa.grad, xr.grad) == 0
    assert rel_err(ys.float(), ya.float()) < 1e-5  # the step view under autocast is the forward's
    if layer.supports("kernel"):
        assert k.dtype == F32 and rel_err(k, reference.kernel(L)) == 0
    with torch.no_grad():  # nothing computed under autocast stays in a cache
        assert rel_err(layer(x)[0], reference(x)[0]) == 0
        if layer.supports("step"):
            with layers.frozen_parameters():
                assert rel_err(run_steps(layer, x)[0], run_steps(reference, x)[0]) == 0


# ---------------------------------------------------------------------------------------------------------------------
# 3. reparametrisations: the legacy hook-based norms (fixed) and torch.nn.utils.parametrize


def _legacy_target(layer) -> tuple[nn.Module, str]:
    """A short convolution's weight where the layer has one (a mixer), else the first own tensor of the layer or, for
    a layer without any (attention, GSS), of its first sub-module that has one."""
    for module in layer.modules():
        if type(module).__name__ == "ShortConv":
            return module, "weight"
    for module in layer.modules():
        own = [n for n, p in module._parameters.items() if p is not None]
        if own:
            return module, own[0]
    raise AssertionError(f"{type(layer).__name__} has no parameter")


def _hook_value(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a legacy norm hook on ``module`` puts in effect now, recomputed from its originals by the hook's
    own formula (spectral norm from its u and v as they are, no power iteration)."""
    out = {}
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            out[hook.name] = hook.compute_weight(module).detach()
        elif isinstance(hook, SpectralNorm):
            out[hook.name] = hook.compute_weight(module, do_power_iteration=False).detach()
    return out


def _with_values_in_effect(model: nn.Module, fresh: nn.Module) -> nn.Module:
    """``fresh`` loaded with ``model``'s tensors in effect: each hooked tensor's current value, every other tensor's."""
    modules = dict(model.named_modules())
    state = {}
    for key in fresh.state_dict():
        owner, _, attr = key.rpartition(".")
        state[key] = _hook_value(modules[owner]).get(attr, getattr(modules[owner], attr)).detach()
    fresh.load_state_dict(state)
    return fresh


@pytest.mark.parametrize("name", NAMES)
def test_legacy_weight_norm_reaches_step_kernel_and_state_space_after_an_optimizer_step(name):
    layer = make_layer(name)
    module, tensor = _legacy_target(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated, not gone
        torch.nn.utils.weight_norm(module, tensor)
    x = _x()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    y, _ = layer(x)
    y.square().sum().backward()
    optimizer.step()  # g and v move; the hooked tensor is recomputed by the next __call__ only
    with torch.no_grad():
        fresh = _with_values_in_effect(layer, make_layer(name, seed=9))
    errs = _views_err(layer, fresh, x)
    assert max(errs.values()) < 1e-12, errs  # before: step DLR 0.57, H3 0.86, Mamba 0.22, RG-LRU 0.75, ...


@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm"])
@pytest.mark.parametrize("name", ["mamba", "mamba2", "rglru", "hyena", "s4d"])
def test_legacy_norms_on_every_projection_of_a_model(name, norm):
    model = _model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for module in list(model.modules()):
            if isinstance(module, nn.Linear) or type(module).__name__ == "ShortConv":
                getattr(torch.nn.utils, norm)(module, "weight")
    x = _x()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        optimizer.zero_grad()
        model(x)[0].square().sum().backward()
        optimizer.step()
    model.eval()  # spectral norm: no power iteration, the forward's weight is the hook's u, v as they are
    with torch.no_grad():
        fresh = _with_values_in_effect(model, _model(name, seed=9))
        want = fresh(x)[0]
        assert rel_err(_model_steps(model, x)[0], want) < 1e-12  # before: Mamba-2 4e-2 (6.3e-2 spectral), ...
        assert rel_err(model(x)[0], want) < 1e-12
    # training through the step after a forward + backward: before, the step read the last forward's graph
    model.train()
    model(x)[0].square().sum().backward()
    model.zero_grad()
    _model_steps(model, x)[0].square().sum().backward()
    got = _grads(model)
    model.zero_grad()
    model(x)[0].square().sum().backward()  # the step's gradients are the forward's (eval-equal weights)
    if norm == "weight_norm":  # (one vector: Mamba's rank-1 W_Δ rows have v-gradients of 1e-22, round-off)
        assert rel_err(_flat(got), _flat(_grads(model))) < 1e-10
    else:
        assert all(torch.isfinite(g).all() for g in got if g is not None)


def test_reading_a_layer_never_runs_spectral_norms_power_iteration():
    layer = make_layer("mamba")
    torch.nn.utils.spectral_norm(layer.conv1d, "weight")
    x = _x()
    layer(x)  # training mode: __call__ runs one power iteration
    u = layer.conv1d.weight_u.clone()
    with torch.no_grad():
        run_steps(layer, x)
    assert torch.equal(layer.conv1d.weight_u, u)


def test_legacy_weight_norm_after_load_state_dict_reaches_the_step():
    x = _x()
    source, target = make_layer("s4d", seed=3), make_layer("s4d")
    for layer in (source, target):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.nn.utils.weight_norm(layer, "C")
        layer(x)
    target.load_state_dict(source.state_dict())  # C_g, C_v change; C is recomputed by the next __call__ only
    with torch.no_grad():
        assert rel_err(run_steps(target, x)[0], source(x)[0]) < 1e-12


class _Softplus(nn.Module):
    """X -> softplus(X) > 0: a positivity constraint (without right_inverse: the original keeps X)."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(X)


@pytest.mark.parametrize("name", LTI)
def test_a_positivity_parametrization_follows_optimizer_steps(name):
    layer = make_layer(name)
    tensor = "D" if "D" in layer._parameters else next(n for n, p in layer._parameters.items() if p is not None)
    x = _x()
    with torch.no_grad():  # fill every cache with the unconstrained values first
        layer(x), run_steps(layer, x), layer.kernel(L)
        if layer.supports("state_space"):
            layer.state_space()
    parametrize.register_parametrization(layer, tensor, _Softplus())
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        layer(x)[0].square().sum().backward()
        optimizer.step()
    with torch.no_grad():
        fresh = make_layer(name, seed=9)
        fresh.load_state_dict({k: getattr(layer, k) if k == tensor else v for k, v in _plain_state(layer).items()})
        assert (getattr(fresh, tensor) > 0).all()
    errs = _views_err(layer, fresh, x)
    assert max(errs.values()) < 1e-12, errs


def _plain_state(layer: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each parametrised tensor under its own name (its original's key dropped)."""
    out = {}
    for key, value in layer.state_dict().items():
        if ".parametrizations." in f".{key}":
            owner, _, rest = f".{key}".partition(".parametrizations.")
            out[(owner[1:] + "." if owner else "") + rest.split(".")[0]] = value
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("name", NAMES)
def test_new_weight_norm_on_every_linear_of_a_model_follows_training(name):
    model = _model(name)
    for module in list(model.modules()):
        if isinstance(module, nn.Linear):
            new_weight_norm(module)
    x = _x()
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.1))
    for _ in range(2):
        optimizer.zero_grad()
        model(x)[0].square().sum().backward()
        optimizer.step()
    with torch.no_grad():
        fresh = _model(name, seed=9)
        modules = dict(model.named_modules())
        fresh.load_state_dict({k: getattr(modules[k.rpartition(".")[0]], k.rpartition(".")[2])
                               for k in fresh.state_dict()})
        want = fresh(x)[0]
        assert rel_err(_model_steps(model, x)[0], want) < 1e-12
        assert rel_err(model(x)[0], want) < 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# 4. dynamic quantisation


def _float_model(name: str) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(d_input=3, d_model=8, n_layers=2, layer=name, layer_options=dict(variants(name)[0]),
                         d_output=2, head="regress", pool=None).eval()


@pytest.mark.parametrize("name", NAMES)
def test_quantize_dynamic_float16_equals_the_rounded_weights(name):
    if DEVICE.type != "cpu":
        pytest.skip("torch.ao dynamic quantisation runs on the CPU")
    from torch.ao.quantization import quantize_dynamic

    model = _float_model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        quantised = quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.float16)
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for module in rounded.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(module.weight.half().float())
        x = torch.randn(2, 12, 3)
        want = rounded(x)[0]
        got = quantised(x)[0]
        # float32 rounding of two GEMM kernels (fbgemm's fp16 one and the float32 one): ~2e-7, Mega's attention
        # amplifies it to 2.4e-6 on an AMD EPYC (1e-6 held on the Xeon); unrounded weights are 1.4e-4 to 9e-3 off
        assert rel_err(got, want) < 1e-5
        assert rel_err(_model_steps(quantised, x)[0], got) < 1e-5  # the step view of the quantised model


@pytest.mark.parametrize("name", NAMES)
def test_quantize_dynamic_qint8_step_equals_length_one_forwards(name):
    # int8 activations are scaled per call (by the input's range), so a forward over the whole sequence and the
    # step loop round differently; a forward over one time step at a time sees exactly the step's rows
    if DEVICE.type != "cpu":
        pytest.skip("torch.ao dynamic quantisation runs on the CPU")
    from torch.ao.quantization import quantize_dynamic

    model = _float_model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantised = quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    assert not any(type(m) is nn.Linear for m in quantised.modules())
    x = torch.randn(2, 12, 3)
    with torch.no_grad():
        steps = _model_steps(quantised, x)[0]
        h, outs = quantised.initial_state(2), []
        for t in range(x.shape[1]):
            y, h = quantised(x[:, t:t + 1], h)
            outs.append(y)
        assert rel_err(steps, torch.cat(outs, 1)) < 1e-6
        assert 0 < rel_err(quantised(x)[0], model(x)[0])  # the int8 weights are what runs


# ---------------------------------------------------------------------------------------------------------------------
# 5. partial fine-tuning, module utilities, hooks


@pytest.mark.parametrize("name", NAMES)
def test_frozen_ssm_parameters_with_param_groups_and_adamw(name):
    model, reference = _model(name), _model(name)
    frozen = {id(getattr(m, t)) for m in model.modules() for t in layers.optim_marks(m)}
    for p in model.parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = param_groups(model, lr=1e-2, weight_decay=0.1)
    assert not any(id(p) in frozen for g in groups for p in g["params"])
    x = _x()
    model(x)[0].square().sum().backward()
    ref_params = list(reference.parameters())
    ref_grads = torch.autograd.grad(reference(x)[0].square().sum(), ref_params, allow_unused=True)
    for (n, p), g in zip(model.named_parameters(), ref_grads):
        if id(p) in frozen:
            assert p.grad is None, n
        elif g is not None:
            assert rel_err(p.grad, g) < 1e-12, n
    torch.optim.AdamW(groups).step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if id(p) in frozen)


def _fill(model, x) -> None:
    with torch.no_grad():
        model(x)
        _model_steps(model, x)
        for block in model.blocks:
            if block.layer.supports("kernel"):
                block.layer.kernel(L)
            if block.layer.supports("state_space"):
                block.layer.state_space()


def _no_stale_value(model, name, x) -> None:
    """``model``'s step loop, kernels, state spaces and forward equal a fresh model's holding its state dict."""
    fresh = _fresh_copy(model, name)
    with torch.no_grad():
        want = fresh(x)[0]
        assert rel_err(_model_steps(model, x)[0], want) < 1e-12
        for block, ref in zip(model.blocks, fresh.blocks):
            if block.layer.supports("kernel"):
                assert rel_err(block.layer.kernel(L), ref.layer.kernel(L)) < 1e-12
            if block.layer.supports("state_space"):
                assert _system_err(block.layer.state_space(), ref.layer.state_space()) < 1e-12
        assert rel_err(model(x)[0], want) < 1e-12


def _zero_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.zeros_(module.weight)


@pytest.mark.parametrize("name", NAMES)
def test_module_utilities_leave_no_stale_cached_value(name):
    x = _x()
    model = _model(name)
    _fill(model, x)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # in place, after every cache was filled
    _no_stale_value(model, name, x)
    vector_to_parameters(parameters_to_vector(model.parameters()) * 0.9 + 0.01, model.parameters())
    _no_stale_value(model, name, x)
    model.load_state_dict(_model(name, seed=3).state_dict(), assign=True)  # new Parameter objects
    _no_stale_value(model, name, x)
    model.load_state_dict({k: v for k, v in _model(name, seed=4).state_dict().items() if k.startswith("blocks.1.")},
                          strict=False)
    _no_stale_value(model, name, x)
    model.apply(_zero_linear)
    _no_stale_value(model, name, x)
    model.share_memory()
    for p in model.parameters():
        p.data.mul_(0.7)  # through .data: no version bump
    _no_stale_value(model, name, x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for p in (*loaded.parameters(), *copied.parameters()):
            p.add_(0.05)
    _no_stale_value(loaded, name, x)
    _no_stale_value(copied, name, x)
    _no_stale_value(model, name, x)  # the original kept its own values


@pytest.mark.parametrize("name", NAMES)
def test_reset_parameters_redraws_the_constructors_initialisation(name):
    torch.manual_seed(5)
    fresh = layers.build(name, d_model=H, dtype=F64, device=DEVICE, **variants(name)[0])
    layer = make_layer(name)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(0.3).add_(0.1)
    torch.manual_seed(5)
    layer.reset_parameters()
    assert all(torch.equal(a, b) for a, b in zip(layer.state_dict().values(), fresh.state_dict().values()))
    with torch.no_grad():
        assert rel_err(run_steps(layer, _x())[0], fresh(_x())[0]) < 1e-12


@pytest.mark.parametrize("name", ["s4d", "mamba", "attention", "mega"])
def test_forward_and_full_backward_hooks_on_a_layer(name):
    model = _model(name)
    x = _x().requires_grad_(True)
    seen = {}

    def grab_output(module, args, out):
        seen["y"] = out[0]

    def grab_input(module, args):
        seen["x"] = args[0]

    def grab_grads(module, grad_in, grad_out):
        seen["grad_out"], seen["grad_in"] = grad_out[0], grad_in[0]

    layer = model.blocks[0].layer
    layer.register_forward_pre_hook(grab_input)
    layer.register_forward_hook(grab_output)
    layer.register_full_backward_hook(grab_grads)
    loss = model(x)[0].square().sum()
    want_out, want_in = torch.autograd.grad(loss, [seen["y"], seen["x"]], retain_graph=True)
    loss.backward()
    assert rel_err(seen["grad_out"], want_out) == 0 and rel_err(seen["grad_in"], want_in) == 0
    # a forward hook that doubles the layer's output changes the model as a patched forward does
    hooked, patched = _model(name), _model(name)
    hooked.blocks[0].layer.register_forward_hook(lambda m, a, out: (2 * out[0], out[1]))
    inner = patched.blocks[0].layer.forward
    patched.blocks[0].layer.forward = lambda *a, **k: (lambda out: (2 * out[0], out[1]))(inner(*a, **k))
    with torch.no_grad():
        assert rel_err(hooked(_x())[0], patched(_x())[0]) == 0


@pytest.mark.parametrize("name", ["s4d", "lru", "mamba2"])
def test_zero_grad_without_none_and_clip_grad_norm(name):
    model, reference = _model(name), _model(name)
    x = _x()
    for m in (model, reference):
        m(x)[0].square().sum().backward()
    model.zero_grad(set_to_none=False)
    reference.zero_grad(set_to_none=True)
    for m in (model, reference):
        m(x)[0].sum().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert rel_err(p.grad, q.grad) == 0 if q.grad is not None else (p.grad is None or not p.grad.any())
    grads = [p.grad.detach().cpu().numpy().ravel().copy() for p in reference.parameters() if p.grad is not None]
    total = float(np.sqrt(sum(float(np.dot(g, g)) for g in grads)))
    assert total > 0.1  # so that the clip acts
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm=0.1)
    assert abs(float(norm) - total) <= 1e-12 * total
    clipped = np.concatenate([p.grad.detach().cpu().numpy().ravel() for p in reference.parameters() if p.grad is not None])
    want = np.concatenate(grads) * 0.1 / (total + 1e-6)  # torch's clip coefficient, max_norm / (norm + 1e-6)
    assert np.abs(clipped - want).max() <= 1e-14 * np.abs(want).max()


# ---------------------------------------------------------------------------------------------------------------------
# 6. weight averaging and learning-rate schedules over param_groups


@pytest.mark.parametrize("name", NAMES)
def test_ema_with_averaged_model_equals_a_hand_average(name):
    model = _model(name)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.1))
    x = _x()
    by_hand = None
    for _ in range(3):
        optimizer.zero_grad()
        model(x)[0].square().sum().backward()
        optimizer.step()
        ema.update_parameters(model)
        current = {n: p.detach().cpu().numpy().copy() for n, p in model.named_parameters()}
        by_hand = current if by_hand is None else {n: 0.9 * by_hand[n] + 0.1 * current[n] for n in current}
    averaged = dict(ema.module.named_parameters())
    assert all(np.allclose(averaged[n].detach().cpu().numpy(), v, rtol=1e-13, atol=1e-15) for n, v in by_hand.items())
    with torch.no_grad():
        want = _fresh_copy(ema.module, name)(x)[0]
        assert rel_err(_model_steps(ema.module, x)[0], want) < 1e-12
        assert rel_err(ema(x)[0], want) < 1e-12


def test_lr_schedulers_scale_every_param_group_from_its_own_rate():
    model = _model("s4d")
    groups = param_groups(model, lr=1e-2, weight_decay=0.1)
    peaks = [g["lr"] for g in groups]
    assert len(set(peaks)) == 2  # the SSM group's 1e-3 and the global 1e-2
    optimizer = torch.optim.AdamW(groups)
    schedule = warmup_cosine(optimizer, warmup_steps=2, total_steps=6, floor=0.1)
    for s in range(1, 8):
        optimizer.step()
        schedule.step()
        w = (s + 1) / 2 if s < 2 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - 2) / 4)))
        assert WarmupCosine(2, 6, 0.1)(s) == pytest.approx(w, rel=1e-15)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([p * w for p in peaks], rel=1e-15)
    # OneCycleLR sets every group's rate from max_lr: one value per group keeps the SSM group's own peak
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.1))
    cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=10)
    for _ in range(4):
        optimizer.step()
        cycle.step()
    rates = [g["lr"] for g in optimizer.param_groups]
    assert rates[0] / rates[1] == pytest.approx(peaks[0] / peaks[1], rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# 7. load_state_dict(assign=True) of whole blocks in another dtype


@pytest.mark.parametrize("name", NAMES)
def test_assigning_a_float32_block_into_a_float64_model(name):
    model = _model(name)
    source = _model(name, F32, seed=4)
    model.load_state_dict({k: v for k, v in source.state_dict().items() if k.startswith("blocks.0.")},
                          strict=False, assign=True)
    assert {p.dtype for p in model.blocks[0].parameters()} == {F32}
    reference = _fresh_copy(model, name)  # all float64, holding the same (float32-exact) values
    x = _x()
    with torch.no_grad():
        y = model(x)[0]
        assert y.dtype == F64 and rel_err(y, reference(x)[0]) < 5e-6  # block 0 computes in float32
        assert rel_err(_model_steps(model, x)[0], y) < 5e-6
    assert state_err(model(x)[1][1], reference(x)[1][1]) < 5e-6
