"""Batch items do not see each other, for every layer and backend (probe 8, docs/design.md).

A fused kernel that shares work between batch rows (per-block partial sums of ∂B, ∂C, ∂A, ∂D, a scan over B·H items)
could carry one item's NaN or inf into another's output or input gradient. Item 0 here holds a NaN and an inf (in
its input, or its whole initial state), the loss ignores item 0, and items 1 and 2 must give exactly what they give
alone: outputs, input gradients and final states (the parameter gradients are NaN then, as the math says).
Also: the same call twice gives the same bits (outputs and every gradient).
"""

from __future__ import annotations

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.ops import use_backend
from tests.conftest import DEVICE, H, leaves, make_layer, rel_err, runnable_backends, state_map

CASES = [(name, backend) for name in layers.available() for backend in runnable_backends(layers.layer_class(name))]
IDS = [f"{name}-{backend}" for name, backend in CASES]
B, L = 3, 21


def _run(layer, x, state, skip_first):
    """(y, dL/dx, final state) with L = Σ g ⊙ y, g the same for every item (zero for item 0 when skip_first)."""
    x = x.detach().clone().requires_grad_(True)
    y, h = layer(x, state)
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(1, *y.shape[1:], generator=gen, dtype=torch.float64).to(y).expand_as(y).clone()
    if skip_first:
        g[0] = 0
    y.backward(g)
    return y.detach(), x.grad, h


def _item(state, b):
    return None if state is None else state_map(lambda t: t[b : b + 1] if t.dim() and t.shape[0] == B else t, state)


@pytest.mark.parametrize("where", ["input", "state"])
@pytest.mark.parametrize("name,backend", CASES, ids=IDS)
def test_a_nan_in_one_item_leaves_the_others_exact(name, backend, where):
    layer = make_layer(name, dtype=torch.float32)
    x = torch.randn(B, L, H, device=DEVICE)
    state = None
    if not layer.bidirectional:
        with torch.no_grad():
            _, state = layer(torch.randn(B, 5, H, device=DEVICE))
    if where == "state" and state is None:
        pytest.skip("bidirectional: no state")
    bad_x, bad_state = x.clone(), state
    if where == "input":
        bad_x[0, 7, 1], bad_x[0, 12, 2] = float("nan"), float("inf")
    else:
        bad_state = state_map(lambda t: t.clone().index_fill_(0, torch.tensor([0], device=t.device), float("nan"))
                              if t.dim() and t.numel() else t, state)
    with use_backend(backend):
        y, gx, h = _run(layer, bad_x, bad_state, skip_first=True)
        for b in (1, 2):
            y_b, gx_b, h_b = _run(layer, x[b : b + 1], _item(state, b), skip_first=False)
            assert torch.isfinite(y[b]).all() and torch.isfinite(gx[b]).all()
            assert rel_err(y[b], y_b[0]) < 1e-5 and rel_err(gx[b], gx_b[0]) < 1e-5  # observed 0 (bit-equal)
            for t, t_b in zip(leaves(h), leaves(h_b)):
                assert rel_err(t[b], t_b[0]) < 1e-5


@pytest.mark.parametrize("name,backend", CASES, ids=IDS)
def test_the_same_call_twice_gives_the_same_bits(name, backend):
    layer = make_layer(name, dtype=torch.float32)
    x = torch.randn(B, 50, H, device=DEVICE)

    def run():
        layer.zero_grad(set_to_none=True)
        y, _, _ = _run(layer, x, None, skip_first=False)
        return [y] + [p.grad for p in layer.parameters() if p.grad is not None]

    with use_backend(backend):
        first, second = run(), run()
    assert len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second))
