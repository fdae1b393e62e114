"""The attention layer's input gradient at large scores, against float64 (probe 8, docs/design.md).

With inputs x 1000 the scores reach ~1e6 and each softmax row is one-hot: the gradient then flows through V alone
(dS = P ∘ (dP - rowsum(dP ∘ P)) = 0), which the ``"reference"`` path, keeping P, reproduces in float32 (observed
1.1e-7). PyTorch's CPU ``scaled_dot_product_attention`` (the ``"chunked"`` path) keeps only each row's float32
log-sum-exp and recomputes P = exp(s - lse) in the backward; at scores ~1e6 (ulp 0.06) the recomputed P is off by
percents and dS is not 0: the input gradient was 3.4e-2 of its size off at x 1000, 8.5e4 at x 1e6 (outputs right).
"""

from __future__ import annotations

import copy

import pytest
import torch

from ssmkit.ops import use_backend
from tests.conftest import DEVICE, make_layer, rel_err


def _input_grad(layer, x: torch.Tensor, backend: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    x = x.detach().clone().requires_grad_(True)
    with use_backend(backend):
        y, _ = layer(x)
    y.backward(g)
    return x.grad


def _case(backend: str) -> float:
    layer64 = make_layer("attention")  # float64, the first variant: 2 heads of 4, rotary
    layer32 = copy.deepcopy(layer64).float()
    gen = torch.Generator().manual_seed(2)
    x = (1000.0 * torch.randn(2, 64, 3, generator=gen, dtype=torch.float64)).float().double().to(DEVICE)
    return rel_err(_input_grad(layer32, x.float(), backend), _input_grad(layer64, x, "reference"))


def test_reference_input_gradient_at_scores_near_1e6_in_float32():
    assert _case("reference") < 1e-5  # observed 1.1e-7


@pytest.mark.skipif(DEVICE.type != "cpu", reason="measured on PyTorch's CPU kernel")
@pytest.mark.xfail(
    strict=True,
    reason="PyTorch's CPU scaled_dot_product_attention backward recomputes P from a float32 log-sum-exp "
    "(torch 2.13: 3.4e-2 off at scores ~1e6); not ssmkit's code, kept to notice a fix",
)
def test_chunked_input_gradient_at_scores_near_1e6_in_float32():
    assert _case("chunked") < 1e-5
