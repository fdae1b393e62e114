"""The Woodbury step of S4's kernel (ssmkit.ops.woodbury) against dense resolvents, and its one-node backward against
autograd through the reference's ops."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.cauchy import cauchy_reference
from ssmkit.ops.woodbury import woodbury, woodbury_reference

C128 = torch.complex128
SHAPES = [(1, 1, 1), (3, 2, 1), (1, 1, 2), (2, 3, 2), (2, 1, 3)]  # (S inputs, C outputs, rank R)


def _sums(S, C, R, H, n, W, device):
    """Random B (S, H, n), C̃ (C, H, n), P (R, H, n), Λ (H, n), points z (H, W), and the Cauchy sums r (S+R, C+R, H, W)
    of the products a ⊙ b, a ∈ {B, P}, b ∈ {C̃, conj P}, by the direct formula."""
    g = torch.Generator().manual_seed(100 * S + 10 * C + R)
    rnd = lambda *s: torch.randn(*s, dtype=C128, generator=g).to(device)  # noqa: E731
    B, Ct, P = rnd(S, H, n), rnd(C, H, n), 0.5 * rnd(R, H, n)
    Lam = torch.complex(-0.2 - torch.rand(H, n, generator=g, dtype=torch.float64), torch.randn(H, n, generator=g,
                                                                                               dtype=torch.float64))
    z = torch.complex(torch.zeros(H, W, dtype=torch.float64), 3 * torch.randn(H, W, generator=g, dtype=torch.float64))
    Lam, z = Lam.to(device), z.to(device)
    a, b = torch.cat([B, P]), torch.cat([Ct, P.conj()])  # (S+R, H, n), (C+R, H, n)
    r = cauchy_reference(a[:, None] * b[None], z, Lam)  # (S+R, C+R, H, W)
    return B, Ct, P, Lam, z, r


@pytest.mark.parametrize("S,C,R", SHAPES)
def test_woodbury_equals_the_dense_resolvent(S, C, R, device):
    """k[s, c, h, m] = f_m · C̃_cᵀ (z_m - A)⁻¹ B_s with A = diag Λ - Σ_i P_i P_i* formed and solved densely."""
    H, n, W = 3, 5, 4
    B, Ct, P, Lam, z, r = _sums(S, C, R, H, n, W, device)
    f = torch.randn(W, dtype=C128).to(device)
    A = torch.diag_embed(Lam) - torch.einsum("ihn,ihm->hnm", P, P.conj())  # (H, n, n)
    eye = torch.eye(n, dtype=C128, device=device)
    res = torch.linalg.inv(z[..., None, None] * eye - A[:, None])  # (H, W, n, n)
    dense = torch.einsum("chn,hwnm,shm->schw", Ct, res, B) * f  # (S, C, H, W)
    for fn in (woodbury, woodbury_reference):
        torch.testing.assert_close(fn(r, S, C, f), dense, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("S,C,R", SHAPES)
def test_woodbury_backward_equals_autograd_of_the_reference(S, C, R, device):
    """First and second derivatives of the one-node form equal autograd through the reference's tensor ops."""
    H, n, W = 2, 4, 6
    *_, r = _sums(S, C, R, H, n, W, device)
    r = (0.3 * r).requires_grad_()
    f = torch.randn(W, dtype=C128).to(device)
    g, h = torch.randn(S, C, H, W, dtype=C128).to(device), torch.randn(*r.shape, dtype=C128).to(device)
    firsts, seconds, nodes = [], [], []
    for fn in (woodbury, woodbury_reference):
        k = fn(r, S, C, f)
        nodes.append(type(k.grad_fn).__name__)
        (g_r,) = torch.autograd.grad(k, r, g, create_graph=True)
        firsts.append(g_r)
        seconds.append(torch.autograd.grad((g_r * h.conj()).real.sum(), r)[0])
    assert nodes[0] == "_WoodburyBackward" and nodes[1] != nodes[0]  # the one node, and the reference's ops
    torch.testing.assert_close(firsts[0], firsts[1], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(seconds[0], seconds[1], rtol=1e-12, atol=1e-13)


def test_woodbury_gradient_by_finite_differences(device):
    """gradcheck (complex: both Wirtinger derivatives) of the one-node form at rank 2."""
    *_, r = _sums(2, 1, 2, 2, 3, 3, device)
    f = torch.randn(3, dtype=C128).to(device)
    assert torch.autograd.gradcheck(lambda r: woodbury(r, 2, 1, f), (0.3 * r).requires_grad_())


def test_woodbury_gradient_layout_is_the_cauchy_kernels():
    """The gradient of r comes back in the memory layout (H, S+R, C+R, W) that the Cauchy kernel writes its sums in,
    so the Cauchy backward reads it without a copy."""
    sums = torch.randn(5, 3 * 2, 7, dtype=C128, requires_grad=True)  # (H, S', W) as the Cauchy kernel returns them
    r = sums.transpose(0, 1).reshape(3, 2, 5, 7)  # (S+R, C+R, H, W), as dplr_kernel_fast reads them
    seen = []
    r.register_hook(seen.append)
    woodbury(r, 2, 1, torch.ones(7, dtype=C128)).backward(torch.ones(2, 1, 5, 7, dtype=C128))
    assert seen[0].permute(2, 0, 1, 3).is_contiguous()


def test_woodbury_rejects_bad_shapes():
    r = torch.randn(3, 2, 4, 5, dtype=C128)
    with pytest.raises(ValueError, match="S = 2, C = 2"):
        woodbury(r, 2, 2, torch.ones(5, dtype=C128))  # R = 1 rows, 0 columns
    with pytest.raises(ValueError, match=r"f must be \(W,\)"):
        woodbury(r, 2, 1, torch.ones(4, dtype=C128))
    with pytest.raises(ValueError, match="complex"):
        woodbury(r.real, 2, 1, torch.ones(5, dtype=C128))
