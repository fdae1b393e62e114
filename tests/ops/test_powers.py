"""ssmkit.ops.powers: the power table and its formula backward, against closed forms (probe 19)."""

import pytest
import torch

from ssmkit.ops.powers import int_power, power_table


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_power_table_value_and_gradient_closed_form(n, dtype):
    # [a^0, ..., a^{n-1}] and, for a weight g, d/da Re Σ_k conj(g_k) a^k = Σ_k conj(k a^{k-1}) g_k (torch's convention
    # for complex inputs: the conjugate Wirtinger gradient); n = 1 and 2 are the special and the smallest general case
    a = torch.tensor([0.7, -1.3], dtype=torch.float64).to(dtype)
    if dtype.is_complex:
        a = a * torch.tensor([1 + 0.4j, 0.5 - 0.2j], dtype=dtype)
    a.requires_grad_(True)
    g = torch.arange(1.0, n + 1, dtype=torch.float64).to(dtype).expand(2, n) * 0.3
    T = power_table(a, n)
    want = torch.stack([a.detach() ** k for k in range(n)], -1)
    assert T.shape == (2, n) and torch.allclose(T.detach(), want, rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad(T, a, g)
    ref = sum((k * a.detach() ** (k - 1)).conj() * g[:, k] for k in range(1, n)) if n > 1 else torch.zeros_like(a)
    assert torch.allclose(grad, ref, rtol=1e-13, atol=1e-15)


def test_power_table_under_vmap():
    # the autograd Function generates its vmap rule (torch.func over a batch of a)
    a = torch.tensor([[0.5, -2.0], [1.5, 0.25]], dtype=torch.float64)
    got = torch.func.vmap(lambda x: power_table(x, 4))(a)
    want = torch.stack([a**k for k in range(4)], -1)
    assert torch.equal(got, want)


def test_int_power_binary_exponentiation():
    a = torch.tensor([0.0, -1.5, 0.9 + 0.0], dtype=torch.float64)
    for n in (0, 1, 2, 7, 64):
        assert torch.allclose(int_power(a, n), a**n, rtol=1e-14, atol=0)
