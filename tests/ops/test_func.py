"""The ops under torch.func: grad, vmap and jacrev through every custom autograd.Function, against plain autograd.

``_Transpose`` (chunked scan, final state), ``_CircularConv`` (FFT convolutions), ``_CauchyMatmul`` (DPLR kernel) and
``_LinearRecurrence`` use the ``forward`` + ``setup_context`` style with generated vmap rules; paths that write in
place into fresh buffers take their functional form under a transform (``ssmkit.ops.backend.tracing``). Every
comparison is float64, so the tolerances only absorb a different summation order (1e-10 relative, observed
~1e-15). torch.func.jacrev needs real inputs, so complex parameters enter through a real parametrisation.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import func

import ssmkit.ops as ops
from tests.conftest import rel_err

TOL = 1e-10
F64, C128 = torch.float64, torch.complex128
Bsz, L, H, N = 2, 13, 3, 4


def params(seed: int = 0):
    """u (B, L, H), Ā (H, N) with |Ā| in [0.5, 0.95], B̄, C (H, N), state (B, H, N), D (H,)."""
    g = torch.Generator().manual_seed(seed)
    c = lambda *s: torch.randn(*s, dtype=C128, generator=g)  # noqa: E731
    u = torch.randn(Bsz, L, H, dtype=F64, generator=g)
    A = torch.polar(0.5 + 0.45 * torch.rand(H, N, dtype=F64, generator=g), math.pi * torch.rand(H, N, dtype=F64, generator=g))
    return u, A, c(H, N), c(H, N), c(Bsz, H, N), torch.randn(H, dtype=F64, generator=g)


def autograd_grads(loss_fn, inputs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    return torch.autograd.grad(loss_fn(*leaves), leaves)


def assert_all_close(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and rel_err(g, w) < TOL


def scan_loss(backend):
    def loss(u, A, Bb, C, s, D):
        y, x = ops.ssm_scan(u, A, Bb, C, s, D, backend=backend)
        return (y * torch.sin(y)).sum() + (x.abs() ** 2).sum()
    return loss


# --------------------------------------------------------------------------------------------------
# ssm_scan (chunked and fft), ssm_final_state


@pytest.mark.parametrize("backend", ["chunked", "fft"])
def test_scan_grad(backend):
    inputs = params()
    got = func.grad(scan_loss(backend), argnums=tuple(range(6)))(*inputs)
    assert_all_close(got, autograd_grads(scan_loss(backend), inputs))


@pytest.mark.parametrize("backend", ["chunked", "fft"])
def test_scan_vmap(backend):
    u, A, Bb, C, s, D = params(1)
    As = torch.stack([A, 0.9 * A, A.conj()])  # (G, H, N): three systems
    us = torch.stack([u, -u, 2 * u])  # (G, B, L, H)
    ss = torch.stack([s, 0 * s, s.conj()])  # (G, B, H, N)
    fn = lambda a, x, st: ops.ssm_scan(x, a, Bb, C, st, D, backend=backend)  # noqa: E731
    ys, xs = func.vmap(fn)(As, us, ss)
    for g in range(3):
        y, x = fn(As[g], us[g], ss[g])
        assert rel_err(ys[g], y) < TOL and rel_err(xs[g], x) < TOL
    # only one argument batched (the others shared), and in_dims other than 0
    ys = func.vmap(lambda x: fn(A, x, s)[0], in_dims=2)(u.unsqueeze(2).expand(Bsz, L, 2, H).clone())
    assert rel_err(ys[0], fn(A, u, s)[0]) < TOL


@pytest.mark.parametrize("backend", ["chunked", "fft"])
def test_scan_jacrev(backend):
    u, A, Bb, C, s, D = params(2)
    u = u[:1, :6]  # (1, 6, H): a 18 x 18 Jacobian per output

    def y_of(u, log_mag, angle, D):  # Ā through a real parametrisation (jacrev takes real inputs only)
        return ops.ssm_scan(u, torch.polar(torch.exp(log_mag), angle), Bb, C, s[:1], D, backend=backend)[0]

    args = (u, A.abs().log(), A.angle(), D)
    got = func.jacrev(y_of, argnums=(0, 1, 2, 3))(*args)
    want = torch.autograd.functional.jacobian(y_of, args)
    assert_all_close(got, want)


def test_per_sample_gradients():
    """vmap(grad): one gradient per sequence, equal to a loop of autograd calls."""
    u, A, Bb, C, s, D = params(3)

    def loss(A, u_b):
        y, _ = ops.ssm_scan(u_b[None], A, Bb, C, None, D)
        return y.square().sum()

    got = func.vmap(func.grad(loss), in_dims=(None, 0))(A, u)  # (B, H, N)
    for b in range(Bsz):
        assert rel_err(got[b], autograd_grads(lambda a: loss(a, u[b]), [A])[0]) < TOL


def test_final_state_and_vandermonde_vmap():
    u, A, Bb, C, s, _ = params(4)
    As = torch.stack([A, 0.7 * A])
    xs = func.vmap(lambda a: ops.ssm_final_state(u, a, Bb, s))(As)
    Ks = func.vmap(lambda a: ops.vandermonde(C * Bb, a, L))(As)
    for g in range(2):
        assert rel_err(xs[g], ops.ssm_final_state(u, As[g], Bb, s)) < TOL
        assert rel_err(Ks[g], ops.vandermonde(C * Bb, As[g], L)) < TOL


# --------------------------------------------------------------------------------------------------
# causal_conv and bidirectional_conv (_CircularConv)


def test_causal_conv_grad_vmap_jacrev():
    g = torch.Generator().manual_seed(5)
    u = torch.randn(Bsz, L, H, dtype=F64, generator=g)
    K = torch.randn(H, L, dtype=F64, generator=g)
    loss = lambda u, K: torch.cos(ops.causal_conv(u, K)).sum()  # noqa: E731
    assert_all_close(func.grad(loss, argnums=(0, 1))(u, K), autograd_grads(loss, (u, K)))
    Ks = torch.stack([K, K.flip(-1), -K])
    ys = func.vmap(lambda k: ops.causal_conv(u, k))(Ks)
    for i in range(3):
        assert rel_err(ys[i], ops.causal_conv(u, Ks[i])) < TOL
    got = func.jacrev(ops.causal_conv, argnums=(0, 1))(u[:1, :7], K[:, :7])
    assert_all_close(got, torch.autograd.functional.jacobian(ops.causal_conv, (u[:1, :7], K[:, :7])))
    K2 = torch.randn(2, H, L, dtype=F64, generator=g)
    loss2 = lambda u, K: ops.bidirectional_conv(u, K).square().sum()  # noqa: E731
    assert_all_close(func.grad(loss2, argnums=(0, 1))(u, K2), autograd_grads(loss2, (u, K2)))
    ys = func.vmap(lambda x: ops.bidirectional_conv(x, K2))(torch.stack([u, 3 * u]))
    assert rel_err(ys[1], ops.bidirectional_conv(3 * u, K2)) < TOL


# --------------------------------------------------------------------------------------------------
# dplr_kernel (Cauchy sums: _CauchyMatmul)


def dplr_args(seed: int = 6):
    g = torch.Generator().manual_seed(seed)
    c = lambda *s: torch.randn(*s, dtype=C128, generator=g)  # noqa: E731
    Lam = torch.complex(-torch.rand(H, 2, dtype=F64, generator=g) - 0.1, 3 * torch.randn(H, 2, dtype=F64, generator=g))
    dt = torch.exp(torch.empty(H, dtype=F64).uniform_(math.log(1e-2), math.log(1e-1), generator=g))
    return Lam, 0.5 * c(2, H, 2), c(2, H, 2), c(1, H, 2), dt


def test_dplr_kernel_grad_vmap_jacrev():
    Lam, P, Bd, Cd, dt = dplr_args()
    loss = lambda *a: ops.dplr_kernel(*a, 9).square().sum()  # noqa: E731
    inputs = (Lam, P, Bd, Cd, dt)
    assert_all_close(func.grad(loss, argnums=tuple(range(5)))(*inputs), autograd_grads(loss, inputs))
    dts = torch.stack([dt, 2 * dt])
    Ks = func.vmap(lambda d: ops.dplr_kernel(Lam, P, Bd, Cd, d, 9))(dts)
    for i in range(2):
        assert rel_err(Ks[i], ops.dplr_kernel(Lam, P, Bd, Cd, dts[i], 9)) < TOL
    Ps = torch.stack([P, 0.5 * P])  # batching the low-rank factor batches every Cauchy sum and the Woodbury step
    Ks = func.vmap(lambda p: ops.dplr_kernel(Lam, p, Bd, Cd, dt, 9))(Ps)
    assert rel_err(Ks[1], ops.dplr_kernel(Lam, Ps[1], Bd, Cd, dt, 9)) < TOL

    def K_of(re, im, log_dt):  # Λ and Δ through a real parametrisation
        return ops.dplr_kernel(torch.complex(re, im), P, Bd, Cd, torch.exp(log_dt), 9)

    args = (Lam.real, Lam.imag, dt.log())
    assert_all_close(func.jacrev(K_of, argnums=(0, 1, 2))(*args), torch.autograd.functional.jacobian(K_of, args))


def test_cauchy_second_derivatives():
    # the blocked Cauchy GEMM's backward is itself differentiable (it used to be once_differentiable)
    Lam, P, Bd, Cd, dt = dplr_args(7)
    leaves = tuple(t[:1].clone().requires_grad_() for t in (Lam, dt))  # one channel: (1, N/2), (1,)
    fn = lambda lam, d: ops.dplr_kernel(lam, P[:, :1], Bd[:, :1], Cd[:, :1], d, 5, backend="fft")  # noqa: E731
    with ops.use_backend("chunked"):  # the Cauchy sums follow the context (on the CPU "auto" takes the C kernel,
        assert torch.autograd.gradgradcheck(fn, leaves)  # which is once differentiable)


# --------------------------------------------------------------------------------------------------
# dense_final_state and linear_recurrence (_Transpose-free GEMMs; _LinearRecurrence)


def test_dense_final_state_grad_vmap_jacrev():
    u, _, _, _, _, _ = params(8)
    g = torch.Generator().manual_seed(8)
    A = torch.randn(H, N, N, dtype=F64, generator=g) / (2 * N**0.5)
    Bv = torch.randn(H, N, dtype=F64, generator=g)
    s = torch.randn(Bsz, H, N, dtype=F64, generator=g)
    loss = lambda u, A, B, s: ops.dense_final_state(u, A, B, s).square().sum()  # noqa: E731
    inputs = (u, A, Bv, s)
    assert_all_close(func.grad(loss, argnums=(0, 1, 2, 3))(*inputs), autograd_grads(loss, inputs))
    As = torch.stack([A, 0.5 * A])
    xs = func.vmap(lambda a: ops.dense_final_state(u, a, Bv, s))(As)
    assert rel_err(xs[1], ops.dense_final_state(u, As[1], Bv, s)) < TOL
    fn = lambda u, A: ops.dense_final_state(u, A, Bv, s)  # noqa: E731
    assert_all_close(func.jacrev(fn, argnums=(0, 1))(u, A), torch.autograd.functional.jacobian(fn, (u, A)))


@pytest.mark.parametrize("invariant", [False, True])
def test_linear_recurrence_grad_vmap_jacrev(invariant):
    g = torch.Generator().manual_seed(9)
    b = torch.randn(Bsz, 70, H, dtype=F64, generator=g)  # 70 steps: two chunks of 64 and a partial one
    a = torch.rand(H, dtype=F64, generator=g) if invariant else torch.rand(Bsz, 70, H, dtype=F64, generator=g)
    h0 = torch.randn(Bsz, H, dtype=F64, generator=g)
    loss = lambda a, b, h0: (lambda h, last: (h * torch.tanh(h)).sum() + last.sum())(*ops.linear_recurrence(a, b, h0))  # noqa: E731
    assert_all_close(func.grad(loss, argnums=(0, 1, 2))(a, b, h0), autograd_grads(loss, (a, b, h0)))
    a_s = torch.stack([a, 0.5 * a, a.flip(-1)])
    hs = func.vmap(lambda x: ops.linear_recurrence(x, b, h0)[0])(a_s)
    for i in range(3):
        assert rel_err(hs[i], ops.linear_recurrence(a_s[i], b, h0)[0]) < TOL
    fn = lambda a, b, h0: ops.linear_recurrence(a, b[:, :9], h0)[0]  # noqa: E731
    small = (a if invariant else a[:, :9], b, h0)
    assert_all_close(func.jacrev(fn, argnums=(0, 1, 2))(*small), torch.autograd.functional.jacobian(fn, small))
