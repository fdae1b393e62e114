"""The forward-only C kernel of S4's irregularly sampled DPLR system (``ssmkit/ops/native/irregular_dplr.c``, arXiv
2111.00396) against the float64 loop :func:`ssmkit.ops.irregular_dplr.dplr_irregular_scan_reference` (outputs and
final state, ranks 1 and 2, odd L, channels in a full block and a tail, an initial state, gaps from 0.05 to 5) and a
dense numpy oracle (each step's Ā_t = (I − Δ_t A/2)⁻¹(I + Δ_t A/2) on the full conjugate-pair state by
``numpy.linalg.solve``); the dispatch: ``"auto"`` takes the kernel under no_grad and also when a gradient is needed
(its gradients those of the loop; the backward's own tests: ``test_native_irregular_dplr_backward.py``); S4 with
intervals under no_grad, all four inits, ``"auto"`` against ``"reference"``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
import ssmkit.ops.native.irregular_dplr as native_dplr
from ssmkit.ops.irregular_dplr import dplr_irregular_scan, dplr_irregular_scan_reference
from ssmkit.ops.native.gate import native_status
from tests.conftest import DEVICE

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="a CPU kernel")
F64 = torch.float64


def _kernel_ok(dtype=F64) -> None:
    ok, why = native_status("irregular_dplr", dtype)
    if not ok:
        pytest.skip(f"the native kernel cannot run here: {why}")


def _problem(Bsz, L, H, M, r, seed=0, low=0.05, high=5.0):
    """u, Λ (Re in [-1.1, -0.1], Im up to ±12), P (r, H, M), B, C, Δ in [0.02, 1.02], gaps in [low, high], D, x0."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    c = lambda *s: torch.complex(rn(*s), rn(*s))  # noqa: E731
    lam = torch.complex(-0.1 - torch.rand(H, M, generator=g, dtype=F64), 4 * rn(H, M))
    dt = 0.02 + torch.rand(H, generator=g, dtype=F64)
    tau = low + (high - low) * torch.rand(Bsz, L, generator=g, dtype=F64)
    return [rn(Bsz, L, H), lam, 0.5 * c(r, H, M), c(H, M), c(H, M), dt, tau, rn(H), c(Bsz, H, M)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.parametrize("shape", [(2, 37, 11, 5), (3, 1, 3, 1), (1, 65, 17, 8)])
def test_kernel_matches_the_float64_loop(r, shape):
    _kernel_ok()
    args = _problem(*shape, r)
    y, h = native_dplr.dplr_unchecked(*args, True)
    y_ref, h_ref = dplr_irregular_scan_reference(*args)
    assert _rel(y, y_ref) < 1e-12 and _rel(h, h_ref) < 1e-12
    # without D, without x0, without the state returned
    args[7] = args[8] = None
    y, h = native_dplr.dplr_unchecked(*args, False)
    assert h is None and _rel(y, dplr_irregular_scan_reference(*args)[0]) < 1e-12


def _dense_oracle(u, lam, P, B, C, dt, tau, D, x0):
    """The full-state system in numpy: A = diag([Λ, Λ̄]) − Σ_i P_f,i P_f,i*, each step solved densely."""
    u, tau, dt, D = (t.numpy() for t in (u, tau, dt, D))
    lam, P, B, C, x0 = (t.numpy() for t in (lam, P, B, C, x0))
    Bsz, L, H = u.shape
    M = lam.shape[1]
    y = np.zeros((Bsz, L, H))
    xs = np.zeros((Bsz, H, M), dtype=complex)
    for h in range(H):
        Pf = np.concatenate([P[:, h], P[:, h].conj()], 1)  # (r, 2M)
        A = np.diag(np.concatenate([lam[h], lam[h].conj()])) - Pf.T @ Pf.conj()
        Bf, Cf = np.concatenate([B[h], B[h].conj()]), np.concatenate([C[h], C[h].conj()])
        eye = np.eye(2 * M)
        for b in range(Bsz):
            x = np.concatenate([x0[b, h], x0[b, h].conj()])
            for t in range(L):
                s = dt[h] * tau[b, t]
                lhs = eye - s * A / 2
                x = np.linalg.solve(lhs, (eye + s * A / 2) @ x + s * Bf * u[b, t, h])
                y[b, t, h] = (Cf @ x).real + D[h] * u[b, t, h]
            xs[b, h] = x[:M]
    return y, xs


@pytest.mark.parametrize("r", [1, 2])
def test_kernel_matches_the_dense_per_step_solve(r):
    _kernel_ok()
    args = _problem(2, 9, 5, 3, r, seed=3)
    y, h = native_dplr.dplr_unchecked(*args, True)
    y_ref, h_ref = _dense_oracle(*args)
    assert np.abs(y.numpy() - y_ref).max() <= 1e-11 * np.abs(y_ref).max()
    assert np.abs(h.numpy() - h_ref).max() <= 1e-11 * np.abs(h_ref).max()


def test_float32_kernel_matches_the_float64_loop():
    _kernel_ok(torch.float32)
    args = _problem(2, 21, 11, 4, 2, seed=5)
    y_ref, h_ref = dplr_irregular_scan_reference(*args)
    a32 = [a.to(torch.complex64) if a.is_complex() else a.float() for a in args]
    y, h = native_dplr.dplr_unchecked(*a32, True)
    assert y.dtype == torch.float32 and h.dtype == torch.complex64
    assert _rel(y.double(), y_ref) < 1e-4 and _rel(h.to(torch.complex128), h_ref) < 1e-4


class _Count:
    """Wraps the kernel's entry, counting its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def test_auto_takes_the_kernel_with_and_without_a_gradient(monkeypatch):
    _kernel_ok()
    count = _Count(native_dplr.dplr_unchecked)
    monkeypatch.setattr(native_dplr, "dplr_unchecked", count)
    args = _problem(2, 13, 6, 3, 2, seed=7)
    y_ref, h_ref = dplr_irregular_scan_reference(*args)
    with torch.no_grad():
        y, h = dplr_irregular_scan(*args, backend="auto")
    assert count.calls == 1 and _rel(y, y_ref) < 1e-12 and _rel(h, h_ref) < 1e-12
    y, h = dplr_irregular_scan(*args, backend="native")  # nothing requires grad: the kernel too
    assert count.calls == 2 and y.grad_fn is None
    # a gradient needed: the kernel and its C backward, with the loop's gradients
    leaves = [a.clone().requires_grad_() for a in args]
    y, h = dplr_irregular_scan(*leaves, backend="auto")
    assert count.calls == 3 and y.grad_fn is not None
    w = torch.linspace(-1, 1, 13, dtype=F64).view(1, -1, 1)
    grads = torch.autograd.grad((y * w).sum() + h.abs().square().sum(), leaves)
    ref_leaves = [a.clone().requires_grad_() for a in args]
    y_r, h_r = dplr_irregular_scan_reference(*ref_leaves)
    want = torch.autograd.grad((y_r * w).sum() + h_r.abs().square().sum(), ref_leaves)
    assert _rel(y.detach(), y_r.detach()) < 1e-12
    assert all(_rel(a, b) < 1e-10 for a, b in zip(grads, want))


def test_a_rank_above_two_takes_the_torch_path(monkeypatch):
    _kernel_ok()
    count = _Count(native_dplr.dplr_unchecked)
    monkeypatch.setattr(native_dplr, "dplr_unchecked", count)
    args = _problem(2, 7, 4, 3, 3, seed=9)
    with torch.no_grad():
        y, h = dplr_irregular_scan(*args, backend="auto")
    y_ref, h_ref = dplr_irregular_scan_reference(*args)
    assert count.calls == 0 and _rel(y, y_ref) < 1e-12 and _rel(h, h_ref) < 1e-12
    with pytest.raises(ValueError, match="rank r <= 2"):
        native_dplr.dplr_unchecked(*args, True)


@pytest.mark.parametrize("init", ["legs", "legt", "lagt", "fout"])
def test_s4_with_intervals_under_no_grad_auto_equals_reference(init, monkeypatch):
    _kernel_ok()
    count = _Count(native_dplr.dplr_unchecked)
    monkeypatch.setattr(native_dplr, "dplr_unchecked", count)
    torch.manual_seed(0)
    layer = layers.build("s4", d_model=7, d_state=10, init=init, l_max=64, dtype=F64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 19, 7, generator=g, dtype=F64)
    tau = 0.05 + 4.95 * torch.rand(2, 19, generator=g, dtype=F64)
    h0 = torch.complex(torch.randn(2, 7, 5, generator=g, dtype=F64), torch.randn(2, 7, 5, generator=g, dtype=F64))
    with torch.no_grad():
        with ops.use_backend("auto"):
            y, h = layer(x, h0, intervals=tau)
        with ops.use_backend("reference"):
            y_ref, h_ref = layer(x, h0, intervals=tau)
    assert count.calls == 1
    assert _rel(y, y_ref) < 1e-12 and _rel(h, h_ref) < 1e-12
