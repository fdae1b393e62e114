"""Tests for ssmkit.ops.kernels: the diagonal (Vandermonde) SSM kernel, fast path against oracles."""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.ops.kernels import vandermonde, vandermonde_gemm, vandermonde_reference
from tests.conftest import rel_err

H, N = 3, 4  # pairwise-distinct small sizes (with B=2, L=13) so a swapped axis cannot broadcast
WIDE = {torch.float32: torch.float64, torch.float64: torch.float64,
        torch.complex64: torch.complex128, torch.complex128: torch.complex128}
# Fast path vs a float64 oracle. float32/complex64: the tables are exact to float64, so the only error is the
# float32 rounding of the table entries and of the GEMM's 2N-term sums (measured ≤ 2e-7 here and ≤ 4e-7 at
# H=128, N=32, L=16384); 2e-6 leaves 5× headroom. float64: the doubling tables hold ≈ log2(L)·1e-16 relative error.
TOL = {torch.float32: 2e-6, torch.complex64: 2e-6, torch.float64: 1e-12, torch.complex128: 1e-12}


def random_system(dtype, device, batch=(), radius=(0.5, 1.0)):
    """W (*batch, H, N) and A_bar (H, N) with |Ā| in radius and any phase (complex) or sign (real)."""
    g = torch.Generator().manual_seed(1)
    mod = radius[0] + (radius[1] - radius[0]) * torch.rand(H, N, generator=g, dtype=torch.float64)
    if dtype.is_complex:
        A_bar = mod * torch.exp(1j * math.pi * (2 * torch.rand(H, N, generator=g, dtype=torch.float64) - 1))
        W = torch.randn(*batch, H, N, generator=g, dtype=torch.complex128)
    else:
        A_bar = mod * torch.sign(torch.randn(H, N, generator=g, dtype=torch.float64))
        W = torch.randn(*batch, H, N, generator=g, dtype=torch.float64)
    return W.to(dtype=dtype, device=device), A_bar.to(dtype=dtype, device=device)


def oracle(W, A_bar, L):
    """Direct formula in float64/complex128: Re Σ_n W Ā^l with Ā^l = exp(l·log Ā) (or the real power)."""
    W, A_bar = W.to(WIDE[W.dtype]), A_bar.to(WIDE[A_bar.dtype])
    l = torch.arange(L, dtype=torch.float64, device=A_bar.device)
    powers = A_bar.unsqueeze(-1) ** l  # (H, N, L)
    K = torch.einsum("...hn,hnl->...hl", W, powers)  # (..., H, L)
    return K.real if K.is_complex() else K


# --------------------------------------------------------------------------------------------------
# Hand-computed values


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.float64, torch.complex128])
def test_one_mode_halving(backend, dtype, device):
    # One mode, W = 1, Ā = 0.5: K_l = 0.5^l, exact in binary floating point.
    W = torch.ones(1, 1, dtype=dtype, device=device)
    A_bar = torch.full((1, 1), 0.5, dtype=dtype, device=device)
    with ops.use_backend(backend):
        K = vandermonde(W, A_bar, 6)
    assert K.dtype == (torch.float32 if dtype in (torch.float32, torch.complex64) else torch.float64)
    assert K.tolist() == [[1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125]]


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_one_mode_rotation(backend, device):
    # Ā = i rotates by a quarter turn: Re(i^l) = 1, 0, −1, 0, ...; with W = 2 the pair doubling is visible.
    W = torch.full((1, 1), 2.0 + 0j, dtype=torch.complex128, device=device)
    A_bar = torch.full((1, 1), 1j, dtype=torch.complex128, device=device)
    with ops.use_backend(backend):
        K = vandermonde(W, A_bar, 7)
    torch.testing.assert_close(K, torch.tensor([[2.0, 0, -2, 0, 2, 0, -2]], dtype=torch.float64, device=device),
                               atol=1e-15, rtol=0)  # a few ulps from the products of i


def test_s4d_zoh_kernel_matches_impulse_response(device):
    # S4D ZOH kernel K_l = 2 Re Σ C B (e^{Δλ} − 1)/λ e^{lΔλ} (arXiv 2206.11893) against the impulse response of
    # x_t = Ā x_{t−1} + B̄ u_t, y_t = 2 Re(C x_t), run in float64 (u = δ).
    L, dtype = 13, torch.complex128
    g = torch.Generator().manual_seed(2)
    lam = (-0.5 + 1j * math.pi * torch.arange(N, dtype=torch.float64)).expand(H, N)  # S4D-Lin
    dt = torch.exp(torch.empty(H, 1, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
    C = torch.randn(H, N, generator=g, dtype=dtype)
    B = torch.ones(H, N, dtype=dtype)
    A_bar = torch.exp(dt * lam)  # (H, N)
    B_bar = (A_bar - 1) / lam * B  # (H, N)
    x = torch.zeros(H, N, dtype=dtype)
    impulse_response = []
    for t in range(L):
        x = A_bar * x + B_bar * (1.0 if t == 0 else 0.0)
        impulse_response.append(2 * (C * x).sum(-1).real)
    expected = torch.stack(impulse_response, dim=-1).to(device)  # (H, L)
    W = (2 * C * B_bar).to(device)
    for backend in ("reference", "auto"):
        with ops.use_backend(backend):
            K = vandermonde(W, A_bar.to(device), L)
        assert rel_err(K, expected) < 1e-13  # float64, 13 products: ~1e-16 per step


# --------------------------------------------------------------------------------------------------
# Fast path against oracles


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.float64, torch.complex128])
@pytest.mark.parametrize("batch", [(), (2,), (2, 5)])
@pytest.mark.parametrize("L", [1, 2, 13, 64, 100])
def test_gemm_matches_oracle(dtype, batch, L, device):
    W, A_bar = random_system(dtype, device, batch)
    expected = oracle(W, A_bar, L)
    K = vandermonde_gemm(W, A_bar, L)
    assert K.shape == (*batch, H, L)
    assert K.dtype == (torch.float32 if dtype in (torch.float32, torch.complex64) else torch.float64)
    assert rel_err(K, expected) < TOL[dtype]
    assert rel_err(vandermonde_reference(W.to(WIDE[dtype]), A_bar.to(WIDE[dtype]), L), expected) < 1e-12


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_long_kernel_near_unit_circle(dtype, device):
    # |Ā| = e^{−1e-4} (barely decaying) and phases up to π at L = 16384: the hard case for power tables.
    W, _ = random_system(dtype, device)
    g = torch.Generator().manual_seed(3)
    phase = math.pi * (2 * torch.rand(H, N, generator=g, dtype=torch.float64) - 1)
    A_bar = torch.exp(-1e-4 + 1j * phase).to(dtype=dtype, device=device)
    L = 16384
    K = vandermonde_gemm(W, A_bar, L)
    # complex64: float32 rounding of tables and GEMM only (measured 1.2e-7). complex128: a power Ā^l with l up to
    # 16384 carries ~l·1e-16 phase error in both the tables and the exp(l·log Ā) oracle (measured 5e-13).
    assert rel_err(K, oracle(W, A_bar, L)) < (2e-6 if dtype == torch.complex64 else 1e-11)


def test_realistic_size(device):
    # H=128, N=32 complex modes, S4D-Lin ZOH with Δ log-uniform [1e-3, 1e-1], L=1024, complex64.
    g = torch.Generator().manual_seed(4)
    Hr, Nr, L = 128, 32, 1024
    lam = (-0.5 + 1j * math.pi * torch.arange(Nr, dtype=torch.float64)).expand(Hr, Nr)
    dt = torch.exp(torch.empty(Hr, 1, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
    A_bar = torch.exp(dt * lam)
    W = 2 * torch.randn(Hr, Nr, generator=g, dtype=torch.complex128) * (A_bar - 1) / lam
    K = vandermonde_gemm(W.to(torch.complex64).to(device), A_bar.to(torch.complex64).to(device), L)
    expected = oracle(W.to(torch.complex64), A_bar.to(torch.complex64), L)  # same rounded inputs, complex128
    assert rel_err(K, expected) < 2e-6  # float32 GEMM over 2N = 64 terms (measured 1.4e-7)


# --------------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck_gemm(dtype, device):
    W, A_bar = random_system(dtype, device, batch=(2,))
    W.requires_grad_(True)
    A_bar.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w, a: vandermonde_gemm(w, a, 13), (W, A_bar))


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.float64, torch.complex128])
def test_gradients_match_reference(dtype, device):
    W, A_bar = random_system(dtype, device, batch=(2,))
    weights = torch.randn(2, H, 13, dtype=torch.float64, device=device)
    grads = []
    for fn in (vandermonde_gemm, vandermonde_reference):
        w, a = W.clone().requires_grad_(True), A_bar.clone().requires_grad_(True)
        (fn(w, a, 13).double() * weights).sum().backward()
        grads.append((w.grad, a.grad))
    tol = 1e-5 if dtype in (torch.float32, torch.complex64) else 1e-12  # both paths round in float32: ~1e-7·L
    for fast, ref in zip(*grads):
        assert rel_err(fast, ref) < tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradient_at_zero_pole(dtype, device):
    # Ā = 0 is handled without logarithms: K = [W, 0, 0, ...] and dK_1/dĀ = W (finite, as in the loop).
    W = torch.full((1, 1), 0.7, dtype=dtype, device=device)
    grads = []
    for fn in (vandermonde_gemm, vandermonde_reference):
        a = torch.zeros(1, 1, dtype=dtype, device=device, requires_grad=True)
        K = fn(W, a, 5)
        assert K.tolist() == [[0.7, 0.0, 0.0, 0.0, 0.0]]
        K[0, 1].backward()
        grads.append(a.grad)
    torch.testing.assert_close(grads[0], grads[1])


# --------------------------------------------------------------------------------------------------
# Dispatch and input checks


def test_dispatch(device):
    W, A_bar = random_system(torch.complex64, device)
    with ops.use_backend("reference"):
        assert torch.equal(vandermonde(W, A_bar, 13), vandermonde_reference(W, A_bar, 13))
    for backend in ("auto", "chunked"):
        with ops.use_backend(backend):
            assert torch.equal(vandermonde(W, A_bar, 13), vandermonde_gemm(W, A_bar, 13))
    with ops.use_backend("triton"), pytest.raises(RuntimeError, match="vandermonde: backend 'triton'"):
        vandermonde(W, A_bar, 13)
    # the Vandermonde kernel is a time-domain GEMM: it has no "fft" path (context or per call)
    with ops.use_backend("fft"), pytest.raises(RuntimeError, match="vandermonde: backend 'fft'"):
        vandermonde(W, A_bar, 13)
    with pytest.raises(RuntimeError, match="vandermonde: backend 'fft'.*'auto', 'reference', 'chunked'"):
        vandermonde(W, A_bar, 13, backend="fft")
    assert torch.equal(vandermonde(W, A_bar, 13, backend="reference"), vandermonde_reference(W, A_bar, 13))


@pytest.mark.parametrize("fn", [vandermonde, vandermonde_reference, vandermonde_gemm])
def test_bad_inputs(fn, device):
    W, A_bar = random_system(torch.complex64, device)
    with pytest.raises(ValueError, match=r"W must be float32, float64, complex64 or complex128; got torch.int64"):
        fn(torch.ones(H, N, dtype=torch.int64, device=device), A_bar, 5)
    with pytest.raises(ValueError, match=r"A_bar must be \(H, N\) \(2 dimensions\); got shape \(3,\)"):
        fn(W, A_bar[:, 0], 5)
    with pytest.raises(ValueError, match=r"W must be \(..., H, N\) = \(..., 3, 4\) to match A_bar; got shape \(4, 3\)"):
        fn(W.T, A_bar, 5)
    with pytest.raises(ValueError, match=r"W must be \(..., H, N\) = \(..., 3, 4\) to match A_bar; got shape \(4,\)"):
        fn(W[0], A_bar, 5)
    with pytest.raises(ValueError, match=r"same dtype; got W torch.complex128 and A_bar torch.complex64"):
        fn(W.to(torch.complex128), A_bar, 5)
    with pytest.raises(ValueError, match=r"L must be an int >= 1; got 0"):
        fn(W, A_bar, 0)
    with pytest.raises(ValueError, match=r"L must be an int >= 1; got 2.0"):
        fn(W, A_bar, 2.0)


@pytest.mark.parametrize("fn", [vandermonde_reference, vandermonde_gemm])
def test_non_tensors_and_an_empty_batch(fn, device):
    """A non-tensor W or A_bar is named by its type; an empty batch of weight sets W (0, H, N) gives an empty
    (0, H, L) kernel."""
    W, A_bar = random_system(torch.float64, device)
    with pytest.raises(ValueError, match="W must be a torch.Tensor; got list"):
        fn(W.tolist(), A_bar, 5)
    with pytest.raises(ValueError, match="A_bar must be a torch.Tensor; got list"):
        fn(W, A_bar.tolist(), 5)
    K = fn(W[None][:0], A_bar, 5)
    assert K.shape == (0, H, 5) and K.dtype == torch.float64
