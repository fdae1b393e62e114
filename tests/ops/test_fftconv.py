"""Tests for ssmkit.ops.fftconv: FFT convolutions and the initial-state output, against direct loops."""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.ops.fftconv import (
    _fft_size,
    bidirectional_conv,
    bidirectional_conv_fft,
    bidirectional_conv_reference,
    causal_conv,
    causal_conv_fft,
    causal_conv_reference,
)
from ssmkit.ops.kernels import (
    initial_state_output,
    initial_state_output_reference,
    initial_state_output_vandermonde,
    vandermonde,
)
from tests.conftest import rel_err

B, H, N = 2, 3, 4  # pairwise-distinct small sizes (with L=13) so a swapped axis cannot broadcast
# FFT vs direct sum, relative to max|y|: rfft/irfft round at ~eps·log2(n) of the signal's energy, and a
# length-L sum of random terms has max|y| ~ √L times a term, so float32 stays near 1e-6 (measured ≤ 5e-7 up to
# L=1000); float64 measured ≤ 1e-15.
TOL = {torch.float32: 5e-6, torch.float64: 1e-12}


def randn(*shape, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------
# Hand-computed values


@pytest.mark.parametrize("backend", ["reference", "fft"])
def test_causal_hand_value(backend, device):
    # K = [1, 2] (padded to L = 3 taps), u = [1, 1, 1]: y = [1, 1 + 2, 1 + 2] = [1, 3, 3].
    u = torch.ones(1, 3, 1, device=device)
    K = torch.tensor([[1.0, 2.0, 0.0]], device=device)
    with ops.use_backend(backend):
        y = causal_conv(u, K)
    assert y.flatten().tolist() == pytest.approx([1.0, 3.0, 3.0], abs=1e-6)  # float32 FFT rounding


@pytest.mark.parametrize("backend", ["reference", "fft"])
def test_bidirectional_hand_value(backend, device):
    # K[0] = [1, 0, 0] (identity), K[1] = [10, 0, 0] (next input, lag −1): y_t = u_t + 10 u_{t+1}.
    u = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, device=device).reshape(1, 3, 1)
    K = torch.tensor([[[1.0, 0, 0]], [[10.0, 0, 0]]], dtype=torch.float64, device=device)
    with ops.use_backend(backend):
        y = bidirectional_conv(u, K)
    assert y.flatten().tolist() == pytest.approx([21.0, 32.0, 3.0], abs=1e-13)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_initial_state_hand_value(backend, device):
    # One mode, C = 1, Ā = 0.5, s = 1: y0_l = 0.5^{l+1} (the state is x_{−1}, so the first output has one Ā).
    one = torch.ones(1, 1, dtype=torch.complex64, device=device)
    with ops.use_backend(backend):
        y = initial_state_output(one, 0.5 * one, one.reshape(1, 1, 1), 4)
    assert y.shape == (1, 4, 1) and y.dtype == torch.float32
    assert y.flatten().tolist() == [0.5, 0.25, 0.125, 0.0625]


def test_fft_size():
    # The smallest even 2·3·5-smooth size >= n: powers of two stay, 2·13 -> 30 = 2·3·5, 8194 -> 8640 = 2⁶·3³·5.
    assert [_fft_size(n) for n in (2, 26, 200, 2000, 8192, 8194)] == [2, 30, 200, 2000, 8192, 8640]


# --------------------------------------------------------------------------------------------------
# FFT paths against the direct sums


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L", [1, 2, 13, 64, 100])
@pytest.mark.parametrize("extra_taps", [0, 7])
def test_causal_matches_reference(dtype, L, extra_taps, device):
    u = randn(B, L, H, dtype=dtype, device=device, seed=1)
    K = randn(H, L + extra_taps, dtype=dtype, device=device, seed=2)
    expected = causal_conv_reference(u.double(), K.double())
    y = causal_conv_fft(u, K)
    assert y.shape == (B, L, H) and y.dtype == dtype and y.is_contiguous()
    assert rel_err(y, expected) < TOL[dtype]
    # The taps beyond L never matter.
    assert torch.equal(causal_conv_fft(u, K[:, :L]), y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L", [1, 2, 13, 100])
@pytest.mark.parametrize("extra_taps", [0, 7])
def test_bidirectional_matches_reference(dtype, L, extra_taps, device):
    u = randn(B, L, H, dtype=dtype, device=device, seed=3)
    K = randn(2, H, L + extra_taps, dtype=dtype, device=device, seed=4)
    expected = bidirectional_conv_reference(u.double(), K.double())
    y = bidirectional_conv_fft(u, K)
    assert y.shape == (B, L, H) and y.dtype == dtype
    assert rel_err(y, expected) < TOL[dtype]
    # With a zero backward kernel it is the causal convolution.
    K0 = torch.stack([K[0], torch.zeros_like(K[1])])  # (2, H, L_k)
    assert rel_err(bidirectional_conv_reference(u.double(), K0.double()),
                   causal_conv_reference(u.double(), K[0].double())) == 0.0


def test_causal_realistic_size(device):
    # B=4, H=16, L=1000 (n = 2000, not a power of two), float32 vs a float64 direct sum.
    u = randn(4, 1000, 16, dtype=torch.float32, device=device, seed=5)
    K = randn(16, 1000, device=device, seed=6) * torch.exp(-torch.arange(1000, device=device) / 200.0)
    expected = causal_conv_reference(u.double(), K)
    assert rel_err(causal_conv_fft(u, K.float()), expected) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float64])
@pytest.mark.parametrize("L", [1, 13])
def test_initial_state_matches_reference(dtype, L, device):
    C = randn(H, N, dtype=dtype, device=device, seed=7)
    A_bar = (0.9 * torch.exp(1j * randn(H, N, seed=8)) if dtype.is_complex else 0.9 * torch.tanh(randn(H, N, seed=8)))
    A_bar = A_bar.to(dtype=dtype, device=device)
    state = randn(B, H, N, dtype=dtype, device=device, seed=9)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    expected = initial_state_output_reference(C.to(wide), A_bar.to(wide), state.to(wide), L)
    y = initial_state_output_vandermonde(C, A_bar, state, L)
    assert y.shape == (B, L, H) and y.is_contiguous()
    assert rel_err(y, expected) < (2e-6 if dtype == torch.complex64 else 1e-12)  # as for vandermonde


def test_state_forwarding_equals_recurrence(device):
    # S4D with a nonzero initial state s = x_{−1} (core-checked §2): the recurrence
    # x_t = Ā x_{t−1} + B̄ u_t, y_t = 2 Re(C x_t) equals causal_conv(u, K) + initial_state_output(2C, Ā, s),
    # with K the kernel 2 Re Σ C B̄ Ā^l. Float64 throughout.
    L = 13
    g = torch.Generator().manual_seed(10)
    lam = (-0.5 + 1j * math.pi * torch.arange(N, dtype=torch.float64)).expand(H, N)
    dt = torch.exp(torch.empty(H, 1, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
    A_bar = torch.exp(dt * lam)  # (H, N) ZOH
    B_bar = (A_bar - 1) / lam  # (H, N), B = 1
    C = torch.randn(H, N, generator=g, dtype=torch.complex128)
    s = torch.randn(B, H, N, generator=g, dtype=torch.complex128)
    u = torch.randn(B, L, H, generator=g, dtype=torch.float64)
    x, ys = s, []
    for t in range(L):
        x = A_bar * x + B_bar * u[:, t, :, None]  # (B, H, N)
        ys.append(2 * (C * x).sum(-1).real)  # (B, H)
    expected = torch.stack(ys, dim=1)  # (B, L, H)
    A_bar, B_bar, C, s, u = (t.to(device) for t in (A_bar, B_bar, C, s, u))
    for backend in ("reference", "auto"):
        with ops.use_backend(backend):
            y = causal_conv(u, vandermonde(2 * C * B_bar, A_bar, L)) + initial_state_output(2 * C, A_bar, s, L)
        assert rel_err(y, expected) < 1e-13  # float64, 13 steps


# --------------------------------------------------------------------------------------------------
# Gradients


def test_gradcheck_fft_paths(device):
    L = 7
    u = randn(B, L, H, device=device, seed=11).requires_grad_(True)
    K = randn(H, L + 2, device=device, seed=12).requires_grad_(True)
    K2 = randn(2, H, L, device=device, seed=13).requires_grad_(True)
    assert torch.autograd.gradcheck(causal_conv_fft, (u, K))
    assert torch.autograd.gradcheck(bidirectional_conv_fft, (u, K2))
    # The FFT convolutions have a hand-written adjoint; second derivatives go through it too.
    assert torch.autograd.gradgradcheck(causal_conv_fft, (u, K))
    assert torch.autograd.gradgradcheck(bidirectional_conv_fft, (u, K2))
    C = randn(H, N, dtype=torch.complex128, device=device, seed=14).requires_grad_(True)
    A_bar = (0.8 * torch.exp(1j * randn(H, N, seed=15))).to(device).requires_grad_(True)
    s = randn(B, H, N, dtype=torch.complex128, device=device, seed=16).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c, a, x: initial_state_output_vandermonde(c, a, x, L), (C, A_bar, s))


@pytest.mark.parametrize("fast, reference, K_shape", [
    (causal_conv_fft, causal_conv_reference, (H, 13)),
    (bidirectional_conv_fft, bidirectional_conv_reference, (2, H, 13)),
])
def test_gradients_match_reference(fast, reference, K_shape, device):
    u0 = randn(B, 13, H, dtype=torch.float32, device=device, seed=17)
    K0 = randn(*K_shape, dtype=torch.float32, device=device, seed=18)
    weights = randn(B, 13, H, dtype=torch.float32, device=device, seed=19)
    grads = []
    for fn in (fast, reference):
        u, K = u0.clone().requires_grad_(True), K0.clone().requires_grad_(True)
        (fn(u, K) * weights).sum().backward()
        grads.append((u.grad, K.grad))
    for g_fast, g_ref in zip(*grads):
        assert rel_err(g_fast, g_ref) < TOL[torch.float32]  # the backward is again an FFT correlation


def test_gradient_of_one_input_only(device):
    # The adjoint skips what is not needed: u without grad, then K without grad.
    u = randn(B, 13, H, device=device, seed=25)
    K = randn(H, 13, device=device, seed=26)
    for needs in ((True, False), (False, True)):
        u_, K_ = u.clone().requires_grad_(needs[0]), K.clone().requires_grad_(needs[1])
        causal_conv_fft(u_, K_).sum().backward()
        u_ref, K_ref = u.clone().requires_grad_(needs[0]), K.clone().requires_grad_(needs[1])
        causal_conv_reference(u_ref, K_ref).sum().backward()
        for fast, ref in ((u_, u_ref), (K_, K_ref)):
            assert (fast.grad is None) == (ref.grad is None)
            if ref.grad is not None:
                assert rel_err(fast.grad, ref.grad) < 1e-12  # float64


# --------------------------------------------------------------------------------------------------
# Dispatch and input checks


def test_dispatch(device):
    u = randn(B, 13, H, device=device, seed=20)
    K = randn(H, 13, device=device, seed=21)
    K2 = randn(2, H, 13, device=device, seed=22)
    C = randn(H, N, dtype=torch.complex128, device=device, seed=23)
    s = randn(B, H, N, dtype=torch.complex128, device=device, seed=24)
    A_bar = 0.5 * torch.ones(H, N, dtype=torch.complex128, device=device)
    with ops.use_backend("reference"):
        assert torch.equal(causal_conv(u, K), causal_conv_reference(u, K))
        assert torch.equal(bidirectional_conv(u, K2), bidirectional_conv_reference(u, K2))
        assert torch.equal(initial_state_output(C, A_bar, s, 13), initial_state_output_reference(C, A_bar, s, 13))
    for backend in ("auto", "fft"):  # the convolutions: reference and fft (auto -> fft)
        with ops.use_backend(backend):
            assert torch.equal(causal_conv(u, K), causal_conv_fft(u, K))
            assert torch.equal(bidirectional_conv(u, K2), bidirectional_conv_fft(u, K2))
    for backend in ("auto", "chunked"):  # the initial-state output: reference and chunked (auto -> chunked)
        with ops.use_backend(backend):
            assert torch.equal(initial_state_output(C, A_bar, s, 13),
                               initial_state_output_vandermonde(C, A_bar, s, 13))
    # a backend an op does not have raises, from the context and per call
    with ops.use_backend("chunked"):
        with pytest.raises(RuntimeError, match="causal_conv: backend 'chunked'.*'auto', 'reference', 'fft'"):
            causal_conv(u, K)
        with pytest.raises(RuntimeError, match="bidirectional_conv: backend 'chunked'"):
            bidirectional_conv(u, K2)
    with pytest.raises(RuntimeError, match="initial_state_output: backend 'fft'.*'auto', 'reference', 'chunked'"):
        initial_state_output(C, A_bar, s, 13, backend="fft")
    assert torch.equal(causal_conv(u, K, backend="reference"), causal_conv_reference(u, K))
    with ops.use_backend("triton"):
        with pytest.raises(RuntimeError, match="causal_conv: backend 'triton'"):
            causal_conv(u, K)
        with pytest.raises(RuntimeError, match="bidirectional_conv: backend 'triton'"):
            bidirectional_conv(u, K2)
        with pytest.raises(RuntimeError, match="initial_state_output: backend 'triton'"):
            initial_state_output(C, A_bar, s, 13)


@pytest.mark.parametrize("fn", [causal_conv, causal_conv_fft, causal_conv_reference])
def test_causal_bad_inputs(fn, device):
    u = randn(B, 13, H, device=device)
    K = randn(H, 13, device=device)
    with pytest.raises(ValueError, match=r"u must be \(B, L, H\) with every size >= 1; got shape \(13, 3\)"):
        fn(u[0], K)
    with pytest.raises(ValueError, match=r"u must be \(B, L, H\) with every size >= 1; got shape \(2, 0, 3\)"):
        fn(u[:, :0], K)
    with pytest.raises(ValueError, match=r"K must be \(H, L_k\) = \(3, >=13\) .* got shape \(2, 13\)"):
        fn(u, K[:2])
    with pytest.raises(ValueError, match=r"K must be \(H, L_k\) = \(3, >=13\) .* got shape \(1, 3, 13\)"):
        fn(u, K[None])
    with pytest.raises(ValueError, match=r"K must have at least L=13 taps \(last dimension\); got shape \(3, 12\)"):
        fn(u, K[:, :12])
    with pytest.raises(ValueError, match=r"u must be float32 or float64; got torch.int64"):
        fn(u.long(), K)
    with pytest.raises(ValueError, match=r"K must be float32 or float64; got torch.complex128"):
        fn(u, K.to(torch.complex128))
    with pytest.raises(ValueError, match=r"K must have u's dtype torch.float64; got torch.float32"):
        fn(u, K.float())


@pytest.mark.parametrize("fn", [bidirectional_conv, bidirectional_conv_fft, bidirectional_conv_reference])
def test_bidirectional_bad_inputs(fn, device):
    u = randn(B, 13, H, device=device)
    K = randn(2, H, 13, device=device)
    with pytest.raises(ValueError, match=r"K must be \(2, H, L_k\) = \(2, 3, >=13\) .* got shape \(3, 13\)"):
        fn(u, K[0])
    with pytest.raises(ValueError, match=r"K must be \(2, H, L_k\) = \(2, 3, >=13\) .* got shape \(1, 3, 13\)"):
        fn(u, K[:1])
    with pytest.raises(ValueError, match=r"K must be \(2, H, L_k\) = \(2, 3, >=13\) .* got shape \(2, 2, 13\)"):
        fn(u, K[:, :2])
    with pytest.raises(ValueError, match=r"K must have at least L=13 taps \(last dimension\); got shape \(2, 3, 5\)"):
        fn(u, K[..., :5])
    with pytest.raises(ValueError, match=r"u must be float32 or float64; got torch.int32"):
        fn(u.int(), K)


@pytest.mark.parametrize("fn", [initial_state_output, initial_state_output_vandermonde,
                                initial_state_output_reference])
def test_initial_state_bad_inputs(fn, device):
    C = randn(H, N, dtype=torch.complex64, device=device)
    A_bar = 0.5 * torch.ones(H, N, dtype=torch.complex64, device=device)
    s = randn(B, H, N, dtype=torch.complex64, device=device)
    with pytest.raises(ValueError, match=r"C must be \(H, N\) = \(3, 4\) to match A_bar; got shape \(4, 3\)"):
        fn(C.T, A_bar, s, 5)
    with pytest.raises(ValueError, match=r"A_bar must be \(H, N\) \(2 dimensions\); got shape \(3, 4, 1\)"):
        fn(C, A_bar[..., None], s, 5)
    with pytest.raises(ValueError, match=r"state must be \(B, H, N\) = \(\?, 3, 4\); got shape \(3, 4\)"):
        fn(C, A_bar, s[0], 5)
    with pytest.raises(ValueError, match=r"state must be \(B, H, N\) = \(\?, 3, 4\); got shape \(2, 4, 3\)"):
        fn(C, A_bar, s.transpose(1, 2), 5)
    with pytest.raises(ValueError, match=r"one dtype; got torch.complex64, torch.complex64, torch.complex128"):
        fn(C, A_bar, s.to(torch.complex128), 5)
    with pytest.raises(ValueError, match=r"state must be float32, float64, complex64 or complex128; got torch.int64"):
        fn(C, A_bar, torch.ones(B, H, N, dtype=torch.int64, device=device), 5)
    with pytest.raises(ValueError, match=r"L must be an int >= 1; got 0"):
        fn(C, A_bar, s, 0)


@pytest.mark.parametrize("fn", [initial_state_output_vandermonde, initial_state_output_reference])
def test_initial_state_refuses_non_tensors_and_an_empty_batch(fn, device):
    """C, A_bar or state not a tensor is named by its type; a state batch of size 0 is refused (B >= 1)."""
    C = randn(H, N, dtype=torch.complex64, device=device)
    A_bar = 0.5 * torch.ones(H, N, dtype=torch.complex64, device=device)
    s = randn(B, H, N, dtype=torch.complex64, device=device)
    for i, name in enumerate(("C", "A_bar", "state")):
        args = [C, A_bar, s]
        args[i] = args[i].tolist()
        with pytest.raises(ValueError, match=rf"{name} must be a torch.Tensor; got list"):
            fn(*args, 5)
    with pytest.raises(ValueError, match=r"state must be \(B, H, N\) = \(\?, 3, 4\); got shape \(0, 3, 4\)"):
        fn(C, A_bar, s[:0], 5)
