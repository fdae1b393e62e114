"""The benchmarks' backward from fixed output gradients: the leaves get the gradients of the drawn ∂ℓ/∂y."""

import pytest
import torch

from ssmkit.bench.backward import OutputGradients


def test_backward_gives_the_closed_form_gradient_and_reuses_the_draw():
    torch.manual_seed(0)
    W = torch.randn(5, 3, dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    grads = OutputGradients(seed=3)
    y = x @ W
    grads.backward(y)
    g = grads.grad_for(y)
    assert g.shape == y.shape and g.dtype == y.dtype and g.abs().sum() > 0
    torch.testing.assert_close(x.grad, g @ W.T)  # y = x W: ∂ℓ/∂x = g Wᵀ
    x.grad = None
    grads.backward(x @ W, None)  # a second call: the same draw (None outputs are skipped)
    torch.testing.assert_close(x.grad, g @ W.T)
    assert grads.grad_for(torch.empty(4, 3, dtype=torch.float64)) is g


def test_each_output_shape_and_dtype_gets_its_own_gradient():
    grads = OutputGradients()
    a = grads.grad_for(torch.empty(2, 3))
    b = grads.grad_for(torch.empty(3, 2))
    c = grads.grad_for(torch.empty(2, 3, dtype=torch.complex64))
    assert b.shape == (3, 2) and c.dtype == torch.complex64 and c.imag.abs().sum() > 0
    assert not torch.equal(a.flatten(), b.flatten())
    h = torch.zeros(2, 3, dtype=torch.complex64, requires_grad=True)
    grads.backward((2 * h).real.sum(-1), 3 * h)  # two outputs, one real and one complex
    torch.testing.assert_close(h.grad, 2 * grads.grad_for(torch.empty(2)).unsqueeze(-1).to(c.dtype) + 3 * c)


def test_backward_without_outputs_is_refused():
    with pytest.raises(ValueError, match="at least one output"):
        OutputGradients().backward(None)
