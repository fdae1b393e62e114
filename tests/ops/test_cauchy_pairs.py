"""Cauchy sums over conjugate pairs of poles at imaginary points (ssmkit.ops.cauchy.cauchy_pairs, S4's kernel) on
every backend against the direct formula on the pairs written out: values and every gradient (v, the points y, the
poles w), either one alone, leading dimensions, tails of the C kernel's point blocks, a point at 0, float32, a
second derivative through the native path, and the checks' errors."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.cauchy import cauchy_pairs, cauchy_pairs_reference, cauchy_reference
from ssmkit.ops.native import native_available
from tests.conftest import DEVICE, rel_err

C128, F64 = torch.complex128, torch.float64
BACKENDS = ["reference", "chunked"] + (
    ["native"] if DEVICE.type == "cpu" and all(native_available("cauchy_pairs", d) for d in (torch.float32, F64)) else [])


def case(lead, H, M, W, dtype=C128, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float32 if dtype == torch.complex64 else F64

    def crandn(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=F64), torch.randn(*shape, generator=g, dtype=F64))

    v = crandn(*lead, H, M).to(dtype)
    y = (20 * torch.randn(H, W, generator=g, dtype=F64)).to(real)
    y[:, 0] = 0  # z = 0: the point ω = 1 of S4's kernel
    w = torch.complex(-0.05 - torch.rand(H, M, generator=g, dtype=F64), 5 * torch.randn(H, M, generator=g, dtype=F64))
    return [t.to(DEVICE) for t in (v, y, w.to(dtype))]


def test_the_pair_sums_by_hand():
    v = torch.tensor([[1 + 2j]], dtype=C128, device=DEVICE)
    w = torch.tensor([[-1 + 3j]], dtype=C128, device=DEVICE)
    y = torch.tensor([[0.0, 2.0]], dtype=F64, device=DEVICE)
    for backend in BACKENDS:
        out = cauchy_pairs(v, y, w, backend=backend)
        z = 1j * y
        want = v / (z - w) + v.conj() / (z - w.conj())
        assert rel_err(out, want) < 1e-14


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead,H,M,W", [((), 1, 1, 1), ((3,), 2, 5, 300), ((2, 3), 3, 4, 513), ((1,), 1, 33, 256)])
def test_values_and_gradients_equal_the_direct_formula(backend, lead, H, M, W):
    args = case(lead, H, M, W, seed=W)
    gout = torch.randn(*lead, H, W, dtype=C128, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    results = []
    for fn in (lambda *a: cauchy_pairs(*a, backend=backend), cauchy_pairs_reference):
        leaves = [t.clone().requires_grad_() for t in args]
        out = fn(*leaves)
        results.append([out, *torch.autograd.grad(out, leaves, gout)])
    for a, b in zip(*results):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", [0, 1, 2])
def test_one_gradient_alone(backend, which):
    args = case((2,), 3, 4, 70, seed=which)
    leaves = [t.clone().requires_grad_(i == which) for i, t in enumerate(args)]
    ref_leaves = [t.clone().requires_grad_(i == which) for i, t in enumerate(args)]
    gout = torch.randn(2, 3, 70, dtype=C128, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    (got,) = torch.autograd.grad(cauchy_pairs(*leaves, backend=backend), leaves[which], gout)
    (want,) = torch.autograd.grad(cauchy_pairs_reference(*ref_leaves), ref_leaves[which], gout)
    assert rel_err(got, want) < 1e-10


def test_equals_the_generic_op_on_both_members():
    v, y, w = case((2,), 2, 3, 9)
    z = torch.complex(torch.zeros_like(y), y)
    want = cauchy_reference(torch.cat([v, v.conj()], -1), z, torch.cat([w, w.conj()], -1))
    assert rel_err(cauchy_pairs_reference(v, y, w), want) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_is_close_to_float64(backend):
    args = case((2,), 3, 8, 300, dtype=torch.complex64, seed=7)
    got = cauchy_pairs(*args, backend=backend)
    want = cauchy_pairs_reference(args[0].to(C128), args[1].double(), args[2].to(C128))
    assert got.dtype == torch.complex64 and rel_err(got.to(C128), want) < 2e-5


def test_second_derivatives_through_the_native_path():
    if "native" not in BACKENDS:
        pytest.skip("the native backend does not run here")
    args = case((2,), 2, 3, 40, seed=3)
    grads = []
    for fn in (lambda *a: cauchy_pairs(*a, backend="native"), cauchy_pairs_reference):
        leaves = [t.clone().requires_grad_() for t in args]
        out = fn(*leaves)
        first = torch.autograd.grad(out.abs().square().sum(), leaves, create_graph=True)
        grads.append(torch.autograd.grad(sum(g.abs().square().sum() for g in first), leaves))
    for a, b in zip(*grads):
        assert rel_err(a, b) < 1e-9


def test_checks():
    v, y, w = case((), 2, 3, 4)
    with pytest.raises(ValueError, match=r"w must be \(H, M\) complex; got shape \(6,\)"):
        cauchy_pairs(v, y, w.reshape(-1))
    with pytest.raises(ValueError, match=r"v must be \(\.\.\., H, M\) = \(\.\.\., 2, 3\) of w's dtype torch.complex128; "
                                         r"got torch.complex128 \(3, 2\)"):
        cauchy_pairs(v.t(), y, w)
    with pytest.raises(ValueError, match=r"y must be \(H, W\) = \(2, W\) torch.float64 \(the real dtype of w\); got "
                                         r"torch.float32 \(2, 4\)"):
        cauchy_pairs(v, y.float(), w)
    with pytest.raises(ValueError, match=r"y must be \(H, W\) = \(2, W\) torch.float64 .*; got torch.float64 \(3, 4\)"):
        cauchy_pairs(v, torch.zeros(3, 4, dtype=F64, device=DEVICE), w)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead,H,M,W", [((0,), 2, 3, 4), ((2,), 2, 0, 4), ((2,), 2, 3, 0), ((2,), 0, 3, 4)])
def test_empty_dimensions(backend, lead, H, M, W):
    """No numerators, no pairs (zero sums), no points, no channels: the shapes and zero gradients of the formula."""
    args = case(lead, H, M, W) if H and W else [torch.zeros(*lead, H, M, dtype=C128, device=DEVICE),
                                                torch.zeros(H, W, dtype=F64, device=DEVICE),
                                                torch.zeros(H, M, dtype=C128, device=DEVICE)]
    leaves = [t.clone().requires_grad_() for t in args]
    out = cauchy_pairs(*leaves, backend=backend)
    assert out.shape == (*lead, H, W) and not bool(out.abs().sum())
    grads = torch.autograd.grad(out.abs().square().sum(), leaves, allow_unused=True)
    assert all(g is None or (g.shape == t.shape and not bool(g.abs().sum())) for g, t in zip(grads, leaves))


def test_auto_keeps_the_generic_path_in_complex64_where_the_pairs_denominator_overflows():
    """|D|² grows as y⁴: at y = 1e10 it overflows float32 (the pairs' form reads 0 there), where the generic op's
    |z - λ|² does not; "auto" takes the generic op for complex64, so its sums stay right."""
    g = torch.Generator().manual_seed(4)
    v = torch.randn(1, 1, 2, dtype=torch.complex64, generator=g).to(DEVICE)
    w = torch.randn(1, 2, dtype=torch.complex64, generator=g).to(DEVICE)
    y = torch.tensor([[1e10, 1e3]], device=DEVICE)
    want = cauchy_pairs_reference(v.to(C128), y.double(), w.to(C128))
    assert rel_err(cauchy_pairs(v, y, w).to(C128)[..., 0], want[..., 0]) < 1e-5
