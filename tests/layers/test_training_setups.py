"""Layers in real training code (probe 13): activation checkpointing, truncated BPTT, reparametrised sub-modules.

Every number is compared with an independent reference: the plain backward of the same layer, the recurrent step
loop with the same cut in the gradient, a fresh layer holding the effective weights, the chain rule through the
reparametrisation. Float64, small sizes (tests/conftest.py's first variant of every registered layer).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm
from torch.utils.checkpoint import checkpoint

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.layers import MambaState, detach_state
from ssmkit.models import SequenceModel
from tests.conftest import (DEVICE, H, leaves, make_layer, rel_err, run_steps, runnable_backends, state_map,
                            variants)

B, L = 2, 21
NAMES = layers.available()


def _random_state(layer):
    """A non-zero initial state (None for a bidirectional layer, which takes none)."""
    if layer.bidirectional:
        return None
    return state_map(lambda t: torch.randn_like(t) * 0.3, layer.initial_state(B))


def _real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _gradients(layer, x, h0, weights, mode: str, with_state: bool) -> list[torch.Tensor]:
    """Gradients of sum(w ⊙ y) (+ sum(w ⊙ final state)) with respect to x, h0 and the parameters, by ``.backward()``
    (the reentrant checkpoint refuses ``autograd.grad``); ``mode`` is "plain", "reentrant" or "non-reentrant"."""
    xx = x.clone().requires_grad_(True)
    hh = None if h0 is None else state_map(lambda t: t.clone().requires_grad_(True), h0)
    if mode == "plain":
        y, h = layer(xx, hh)
    elif mode == "reentrant":
        y, h = checkpoint(layer, xx, hh, use_reentrant=True)
    else:  # the recomputation under the forward's backend (on CUDA it runs on autograd's device thread)
        y, h = checkpoint(layer, xx, hh, use_reentrant=False, context_fn=ops.checkpoint_contexts)
    loss = (y * weights[0]).sum()
    if with_state:
        loss = loss + sum((_real(t) * w).sum() for t, w in zip(leaves(h), weights[1:]))
    tensors = [xx, *([] if hh is None else leaves(hh)), *layer.parameters()]
    for t in tensors:
        t.grad = None
    loss.backward()
    return [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in tensors]


@pytest.mark.parametrize("name", NAMES)
def test_activation_checkpointing_gives_the_plain_gradients(name):
    # torch.utils.checkpoint runs the forward twice (reentrant: first under no_grad, where the step and plan caches
    # are used); the caches are filled beforehand by a no-grad call, as a validation pass between steps fills them.
    layer = make_layer(name)
    torch.manual_seed(3)
    x = torch.randn(B, L, H, dtype=torch.float64, device=DEVICE)
    h0 = _random_state(layer)
    for backend in runnable_backends(layer):
        ops.set_backend(backend)
        with torch.no_grad():
            y, h = layer(x, h0)
        weights = [torch.randn_like(y), *(torch.randn_like(_real(t)) for t in leaves(h))]
        # the state enters the loss only where the checkpoint can see it: the non-reentrant checkpoint follows tensors
        # in nested tuples (a layer's tuple state), the reentrant one only top-level tensors (PyTorch's documented
        # limitation: a tuple state's gradient is dropped there, whatever the layer)
        for mode in ("non-reentrant", "reentrant"):
            with_state = h is not None and (mode == "non-reentrant" or isinstance(h, torch.Tensor))
            ref = _gradients(layer, x, h0, weights, "plain", with_state)
            got = _gradients(layer, x, h0, weights, mode, with_state)
            assert ref[0].abs().max() > 0  # the input's gradient
            for g, r in zip(got, ref):  # an empty tensor (attention's initial cache) compares as equal
                assert rel_err(g, r) <= 1e-12 if r.numel() == 0 or r.abs().max() > 0 else g.abs().max() == 0, (
                    backend, mode)


def _model_of(name: str) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(d_input=2, d_model=H, n_layers=2, layer=name, layer_options=dict(variants(name)[0]),
                         d_output=2, head="regress", pool=None, dtype=torch.float64, device=DEVICE)


@pytest.mark.parametrize("name", NAMES)
def test_truncated_bptt_equals_the_step_loop_with_the_same_cut(name):
    # a long sequence trained in chunks of T, the state carried from chunk to chunk and detached at each boundary:
    # the accumulated gradient is the one of the step-by-step recurrence whose state is detached at the same steps
    model = _model_of(name).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 24, 2, generator=g, dtype=torch.float64).to(DEVICE)
    w = torch.randn(3, 24, 2, generator=g, dtype=torch.float64).to(DEVICE)
    T = 8

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return out

    state = None
    for k in range(0, 24, T):
        out, state = model(x[:, k:k + T], state)
        (out * w[:, k:k + T]).sum().backward()
        state = detach_state(state)
    chunked = grads()
    state = model.initial_state(3)
    for t in range(24):
        if t % T == 0:
            state = detach_state(state)
        out_t, state = model.step(x[:, t], state)
        (out_t * w[:, t]).sum().backward(retain_graph=True)
    stepped = grads()
    out, _ = model(x)
    (out * w).sum().backward()
    whole = grads()
    assert max(rel_err(a, b) for a, b in zip(chunked, stepped)) <= 1e-11
    assert max(rel_err(a, b) for a, b in zip(chunked, whole)) > 1e-2  # the cut changes the gradient


def test_detach_state_keeps_the_structure():
    h = torch.randn(2, 3, requires_grad=True)
    state = [h * 2, None, MambaState(h * 3, (h * 4).to(torch.complex128)), (h * 5, (h * 6,))]
    out = detach_state(state)
    assert isinstance(out, list) and out[1] is None and type(out[2]) is MambaState and isinstance(out[3][1], tuple)
    flat_in = [t for s in state if s is not None for t in leaves(s)]
    flat_out = [t for s in out if s is not None for t in leaves(s)]
    assert all(not t.requires_grad and torch.equal(t, s.detach()) for t, s in zip(flat_out, flat_in))
    assert len(flat_out) == 5 and detach_state(None) is None
    with pytest.raises(ValueError, match="state must be a tensor"):
        detach_state({"h": h})


def effective_weights(layer) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its plain name, reparametrised tensors by their current value, tensors pruned
    with ``torch.nn.utils.prune`` as ``name_orig * name_mask`` (no layer names a tensor ``*_orig`` or ``*_mask``)."""
    out = {}
    for prefix, module in layer.named_modules():
        if "parametrizations" in prefix.split("."):
            continue
        names = [*module._parameters, *module._buffers]
        if parametrize.is_parametrized(module):
            names += list(module.parametrizations.keys())
        for n in names:
            if n.endswith("_mask"):
                continue
            plain = n[: -len("_orig")] if n.endswith("_orig") else n
            value = getattr(module, n)
            if n.endswith("_orig"):
                value = value * getattr(module, plain + "_mask")
            if value is not None:
                out[f"{prefix}.{plain}" if prefix else plain] = value.detach().clone()
    return out


@pytest.mark.parametrize("name", NAMES)
def test_weight_norm_on_every_matrix_follows_training(name):
    # weight_norm on every real weight matrix of the layer and of its sub-modules (Linear, short convolutions, the
    # SSM's own matrices), caches filled first: after an optimizer step, forward and step equal a fresh layer holding
    # the effective weights, and the gradients of g and v are the chain rule through W = g v / ||v||
    layer = make_layer(name)
    torch.manual_seed(4)
    x = torch.randn(B, L, H, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        layer(x)
        if layer.capabilities.step:
            run_steps(layer, x)
    targets = [(module, n) for module in layer.modules() for n, p in list(module._parameters.items())
               if p is not None and not p.is_complex() and p.dim() >= 2 and bool(p.flatten(1).norm(dim=1).min() > 0)]
    assert targets
    for module, n in targets:
        weight_norm(module, n)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
    (layer(x)[0] ** 2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    fresh = make_layer(name, seed=5)
    fresh.load_state_dict({**fresh.state_dict(), **effective_weights(layer)})
    with torch.no_grad():
        expected = fresh(x)[0]
        assert rel_err(layer(x)[0], expected) <= 1e-13
        if layer.capabilities.step:
            assert rel_err(run_steps(layer, x)[0], expected) <= 1e-12
    layer(x)[0].sin().sum().backward()
    fresh(x)[0].sin().sum().backward()
    for module, n in targets:
        g0, v0 = module.parametrizations[n].original0, module.parametrizations[n].original1
        path = next(k for k, m in layer.named_modules() if m is module)
        dW = fresh.get_parameter(f"{path}.{n}" if path else n).grad
        g, v = g0.detach().clone().requires_grad_(), v0.detach().clone().requires_grad_()
        dg, dv = torch.autograd.grad(torch._weight_norm(v, g, 0), (g, v), dW)
        # ∂v = g/‖v‖ (dW - (dW·v̂) v̂) cancels to rounding noise where a row of v has one element (Mamba's dt_proj
        # at rank 1): its error is measured against the size of the terms it is computed from
        scale = (dW.abs() * g.abs() / v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1))).max()
        assert rel_err(g0.grad, dg) <= 1e-11 and (v0.grad - dv).abs().max() <= 1e-11 * scale
