"""ssmkit.ops.fftconv and ssmkit.ops.symbolic against references written here (probe 45).

References: numpy's ``np.convolve`` for the causal and two-sided convolutions (the backward kernel through the
time-reversed signal), a float64 loop over t and s for the circular convolution y[t] = Σ_{s<L} k[(t − s) mod n] u[s]
and for its adjoint (du, dk written out as sums), ``np.fft.irfft`` for the export form of the inverse FFT,
``torch.autograd.gradcheck`` / ``gradgradcheck`` in float64 for the hand-written backward,
``torch.library.opcheck`` for the custom ops' fake (shape/dtype) functions, ``math.isqrt`` and ``math.ceil`` for the
integer helpers, and Python loops for the ``scan`` op and the chunk carry h_c = P_c ⊙ h_{c-1} + g_c
(arXiv 2303.06349 eq. 1). The symbolic forms are read from tiny ``torch.export`` programs with a dynamic length.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.export import Dim

import ssmkit.ops.fftconv as fc
from ssmkit.ops import symbolic
from ssmkit.ops.fftconv import bidirectional_conv_fft, bidirectional_conv_reference, causal_conv_fft
from ssmkit.ops.fftconv import causal_conv_reference
from tests.conftest import rel_err

B, H = 2, 3  # pairwise-distinct with the lengths below (13, 7, 5), so that a swapped axis cannot broadcast


def randn(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def np_causal(u: np.ndarray, K: np.ndarray) -> np.ndarray:
    """y[b, t, h] = Σ_{s≤t} K[h, t−s] u[b, s, h] by np.convolve, float64: u (B, L, H), K (H, ≥L)."""
    Bn, L, Hn = u.shape
    y = np.zeros((Bn, L, Hn))
    for b in range(Bn):
        for h in range(Hn):
            y[b, :, h] = np.convolve(u[b, :, h], K[h, :L])[:L]
    return y


def np_anticausal(u: np.ndarray, K1: np.ndarray) -> np.ndarray:
    """y[b, t, h] = Σ_{s>t} K1[h, s−t−1] u[b, s, h] by np.convolve of the reversed signal: with r = u reversed,
    y[t] = (K1 ∗ r)[L−2−t] for t ≤ L−2 and y[L−1] = 0."""
    Bn, L, Hn = u.shape
    y = np.zeros((Bn, L, Hn))
    for b in range(Bn):
        for h in range(Hn):
            y[b, : L - 1, h] = np.convolve(u[b, ::-1, h], K1[h, :L])[: L - 1][::-1]
    return y


def circular_loop(u: np.ndarray, k: np.ndarray) -> np.ndarray:
    """y[b, t, h] = Σ_{s<L} k[h, (t − s) mod n] u[b, s, h] for t < L (the definition of ``_CircularConv``)."""
    _, L, _ = u.shape
    n = k.shape[-1]
    y = np.zeros(u.shape)
    for t in range(L):
        for s in range(L):
            y[:, t, :] += k[:, (t - s) % n] * u[:, s, :]
    return y


def circular_adjoint_loop(u: np.ndarray, k: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The adjoint of :func:`circular_loop`: du[b, s, h] = Σ_t k[h, (t − s) mod n] dy[b, t, h] and
    dk[h, m] = Σ_b Σ_{t, s: (t − s) mod n = m} dy[b, t, h] u[b, s, h]."""
    _, L, _ = u.shape
    n = k.shape[-1]
    du, dk = np.zeros(u.shape), np.zeros(k.shape)
    for t in range(L):
        for s in range(L):
            du[:, s, :] += k[:, (t - s) % n] * dy[:, t, :]
            dk[:, (t - s) % n] += (dy[:, t, :] * u[:, s, :]).sum(0)
    return du, dk


# --------------------------------------------------------------------------------------------------
# fftconv: values against numpy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L", [1, 2, 13, 257])
def test_causal_and_bidirectional_fft_equal_numpy_convolve(dtype, L):
    """Both FFT paths and both loops against np.convolve, with 5 taps past L (ignored). L = 257 has the FFT size
    540 = 2²·3³·5 (not a power of two); float32's bound is test_fftconv's (5e-6, FFT rounding), float64's 1e-12."""
    u = randn(B, L, H, seed=1, dtype=dtype)
    K = randn(2, H, L + 5, seed=2, dtype=dtype)
    un, Kn = u.double().numpy(), K.double().numpy()
    causal = np_causal(un, Kn[0])
    two_sided = causal + np_anticausal(un, Kn[1])
    tol = 5e-6 if dtype == torch.float32 else 1e-12
    for got, want in ((causal_conv_fft(u, K[0]), causal), (bidirectional_conv_fft(u, K), two_sided)):
        assert got.shape == (B, L, H) and got.dtype == dtype
        assert rel_err(got, torch.from_numpy(want)) < tol
    if L <= 13:  # the loops (exact sums in another order)
        assert rel_err(causal_conv_reference(u.double(), K[0].double()), torch.from_numpy(causal)) < 1e-14
        assert rel_err(bidirectional_conv_reference(u.double(), K.double()), torch.from_numpy(two_sided)) < 1e-14


@pytest.mark.parametrize("n", [13, 14, 27, 30])
def test_circular_conv_with_a_full_filter_wraps_around(n):
    """``_circular_conv`` with every tap of k (H, n) nonzero, n = L (full wrap), L + 1 and odd and even n > L:
    the modular sum over t, s < L; its spectra are rfft of u zero padded to n and of k, and not differentiable."""
    L = 13
    u, k = randn(B, L, H, seed=3), randn(H, n, seed=4)
    want = circular_loop(u.numpy(), k.numpy())
    assert rel_err(fc._circular_conv(u, k), torch.from_numpy(want)) < 1e-13
    y, U, K_f = fc._CircularConv.apply(u.requires_grad_(), k.requires_grad_())
    padded = np.concatenate([u.detach().numpy(), np.zeros((B, n - L, H))], axis=1)  # (B, n, H)
    assert U.shape == (B, H, n // 2 + 1) and K_f.shape == (H, n // 2 + 1)
    assert rel_err(U, torch.from_numpy(np.fft.rfft(padded, axis=1).transpose(0, 2, 1))) < 1e-14
    assert rel_err(K_f, torch.from_numpy(np.fft.rfft(k.detach().numpy(), axis=-1))) < 1e-14
    assert y.requires_grad and not U.requires_grad and not K_f.requires_grad


@pytest.mark.parametrize("n", [7, 10])
def test_circular_conv_gradients_in_float64(n):
    """The hand-written adjoint (and its rebuilt second derivatives) against finite differences, float64, with a
    wrapping filter of odd and even length n >= L = 5."""
    u = randn(B, 5, H, seed=5).requires_grad_()
    k = randn(H, n, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(fc._circular_conv, (u, k))
    assert torch.autograd.gradgradcheck(fc._circular_conv, (u, k))


@pytest.mark.parametrize("need_u, need_k", [(True, True), (True, False), (False, True), (False, False)])
def test_conv_backward_is_the_adjoint_loop_and_zeros_what_is_not_needed(need_u, need_k):
    """``_conv_backward`` (eagerly and as the custom op) returns [du, dk] of the modular sums for what is needed and
    zeros of u's and k's shapes for what is not; ``_conv_grads`` returns None there."""
    L, n = 13, 27
    u, k, dy = randn(B, L, H, seed=7), randn(H, n, seed=8), randn(B, L, H, seed=9)
    du_want, dk_want = circular_adjoint_loop(u.numpy(), k.numpy(), dy.numpy())
    _, U, K_f = fc._conv_forward(u, k)
    for fn in (fc._conv_backward, fc._conv_backward.op):
        du, dk = fn(u, k, U, K_f, dy, need_u, need_k)
        assert du.shape == u.shape and dk.shape == k.shape
        assert (rel_err(du, torch.from_numpy(du_want)) < 1e-13) if need_u else not du.any()
        assert (rel_err(dk, torch.from_numpy(dk_want)) < 1e-13) if need_k else not dk.any()
    du, dk = fc._conv_grads(U, K_f, dy, n, L, need_u, need_k)
    assert (du is None) != need_u and (dk is None) != need_k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_custom_ops_fake_outputs_match_their_real_ones(dtype):
    """torch.library.opcheck: the fake functions that torch.compile traces with give the real outputs' shapes and
    dtypes (complex64 spectra for float32, complex128 for float64), for both ops."""
    u, k, dy = randn(B, 5, H, seed=10, dtype=dtype), randn(H, 12, seed=11, dtype=dtype), randn(B, 5, H, seed=12,
                                                                                               dtype=dtype)
    y, U, K_f = fc._conv_forward(u, k)
    assert U.dtype == K_f.dtype == (torch.complex64 if dtype == torch.float32 else torch.complex128)
    checks = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    for op, args in ((fc._conv_forward.op, (u, k)), (fc._conv_backward.op, (u, k, U, K_f, dy, True, False))):
        result = torch.library.opcheck(op, args, test_utils=checks)
        assert result == {name: "SUCCESS" for name in checks}


@pytest.mark.parametrize("n", [26, 27])
def test_the_export_form_of_the_inverse_fft_equals_irfft(n, monkeypatch):
    """While exporting, ``_from_spectrum`` writes irfft as 2 Re ifft of the half spectrum with the DC (and, n even,
    the Nyquist) bin halved: the first L samples of np.fft.irfft(Y, n) for any complex Y, odd or even n; and a causal
    and a two-sided FFT convolution so computed equal np.convolve."""
    Y = torch.complex(randn(B, H, n // 2 + 1, seed=13), randn(B, H, n // 2 + 1, seed=14))
    want = np.fft.irfft(Y.numpy(), n=n)[..., :11].transpose(0, 2, 1)  # (B, L, H)
    monkeypatch.setattr(fc, "exporting", lambda: True)
    assert rel_err(fc._from_spectrum(Y, n, 11), torch.from_numpy(want)) < 1e-14
    u, K = randn(B, 13, H, seed=15), randn(2, H, 13, seed=16)
    causal = np_causal(u.numpy(), K[0].numpy())
    assert rel_err(causal_conv_fft(u, K[0]), torch.from_numpy(causal)) < 1e-13
    two_sided = causal + np_anticausal(u.numpy(), K[1].numpy())
    assert rel_err(bidirectional_conv_fft(u, K), torch.from_numpy(two_sided)) < 1e-13


def test_fft_size_is_two_l_rounded_to_even_while_compiling_and_exporting():
    """Eagerly the smallest even 2·3·5-smooth n >= n_min (257 -> 270); while torch.compile traces, and for a
    symbolic n_min while exporting, n_min rounded up to even (257 -> 258, 514 -> 514)."""
    assert fc._fft_size(257) == 270 and fc._fft_size(514) == 540 and fc._fft_size(1) == 2

    def sizes(x):
        return x.new_zeros(fc._fft_size(x.shape[1]))

    compiled = torch.compile(sizes, backend="eager", fullgraph=True, dynamic=False)
    assert [compiled(torch.zeros(1, m)).shape[0] for m in (257, 514)] == [258, 514]

    class Sizes(torch.nn.Module):
        def forward(self, x):
            return sizes(x)

    program = torch.export.export(Sizes(), (torch.zeros(1, 7),), dynamic_shapes=({1: Dim("n", min=2, max=600)},))
    assert [program.module()(torch.zeros(1, m)).shape[0] for m in (7, 257, 514)] == [8, 258, 514]


def test_exported_convolutions_run_at_every_length_and_write_no_irfft():
    """torch.export of a causal plus a two-sided FFT convolution with L dynamic: float64 outputs equal np.convolve at
    lengths 1 to 40, and the program has no irfft node: its inverse FFT is the complex one that onnxruntime runs."""

    class Both(torch.nn.Module):
        def forward(self, u, K):
            return causal_conv_fft(u, K[0]) + bidirectional_conv_fft(u, K)

    L_dim = Dim("L", min=1, max=64)
    program = torch.export.export(Both(), (randn(B, 13, H), randn(2, H, 13)),
                                  dynamic_shapes=({1: L_dim}, {2: L_dim}))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "aten.fft_ifft.default" in targets and not any("irfft" in t or "c2r" in t for t in targets), targets
    for L in (1, 2, 13, 40):
        u, K = randn(B, L, H, seed=L), randn(2, H, L, seed=100 + L)
        un, Kn = u.numpy(), K.numpy()
        want = 2 * np_causal(un, Kn[0]) + np_anticausal(un, Kn[1])
        assert rel_err(program.module()(u, K), torch.from_numpy(want)) < 1e-13


def test_vmap_of_the_fft_convolution_is_the_per_item_convolution():
    """The generated vmap rule: torch.func.vmap over a leading axis of u and K equals each item's np.convolve, and a
    vmapped gradient (per-item ∂Σy/∂K) equals Σ_b Σ_{t≥j} u[b, t−j, h] per item."""
    V = 4
    u, K = randn(V, B, 13, H, seed=17), randn(V, H, 13, seed=18)
    y = torch.func.vmap(causal_conv_fft)(u, K)
    want = np.stack([np_causal(u[v].numpy(), K[v].numpy()) for v in range(V)])
    assert rel_err(y, torch.from_numpy(want)) < 1e-13
    dK = torch.func.vmap(torch.func.grad(lambda u_, K_: causal_conv_fft(u_, K_).sum(), argnums=1))(u, K)
    csum = u.numpy().sum(1).cumsum(1)  # (V, L, H): Σ_b Σ_{s≤m} u[b, s, h]
    want_dK = np.stack([[csum[v, 12 - np.arange(13), h] for h in range(H)] for v in range(V)])  # Σ_{s≤L−1−j}
    assert rel_err(dK, torch.from_numpy(want_dK)) < 1e-13


def test_a_compiled_gradient_of_one_input_comes_from_the_backward_op():
    """Compiled (aot_eager), the backward runs as ``_conv_backward``'s op: the gradient of u alone, then of K alone,
    equal the adjoint sums du[s] = Σ_{t≥s} K[t−s] w[t] and dK[j] = Σ_b Σ_{t≥j} w[t] u[t−j] of the loss Σ w·y."""
    u, K, w = randn(B, 13, H, seed=19), randn(H, 13, seed=20), randn(B, 13, H, seed=21)
    k = np.concatenate([K.numpy(), np.zeros((H, 13))], axis=1)  # (H, 26): no wrap onto t < L
    du_want, dK_want = circular_adjoint_loop(u.numpy(), k, w.numpy())
    compiled = torch.compile(lambda u_, K_: (causal_conv_fft(u_, K_) * w).sum(), backend="aot_eager", fullgraph=True)
    ug = u.clone().requires_grad_()
    compiled(ug, K).backward()
    assert rel_err(ug.grad, torch.from_numpy(du_want)) < 1e-13
    Kg = K.clone().requires_grad_()
    compiled(u, Kg).backward()
    assert rel_err(Kg.grad, torch.from_numpy(dK_want[:, :13])) < 1e-13


@pytest.mark.parametrize("fn", [fc.causal_conv, causal_conv_fft, causal_conv_reference])
def test_a_non_tensor_is_refused_by_name(fn):
    u, K = randn(B, 13, H), randn(H, 13)
    with pytest.raises(ValueError, match=r"u must be a torch.Tensor; got list"):
        fn(u.tolist(), K)
    with pytest.raises(ValueError, match=r"K must be a torch.Tensor; got ndarray"):
        fn(u, K.numpy())


# --------------------------------------------------------------------------------------------------
# symbolic: the integer helpers


def test_ceil_sqrt_is_the_integer_ceiling_of_the_square_root():
    """⌈√n⌉ = isqrt(n − 1) + 1 for n >= 1, and 1 for n = 0: every n below 5 000 and squares and their neighbours up
    to 10¹²."""
    big = [m * m + d for m in (10**3, 2**17, 10**6) for d in (-1, 0, 1)]
    for n in [*range(5000), *big]:
        want = 1 if n == 0 else math.isqrt(n - 1) + 1
        got = symbolic.ceil_sqrt(n)
        assert type(got) is int and got == want, (n, got)


def test_chunk_count_and_keep_first_in_eager_mode():
    """⌈L/T⌉ chunks for an int L; keep_first is a view of the first L entries along the axis."""
    for L in range(1, 40):
        for T in range(1, 9):
            assert symbolic.chunk_count(L, T) == math.ceil(L / T), (L, T)
    x = torch.arange(2 * 7 * 3).reshape(2, 7, 3)
    for dim, L in ((1, 5), (0, 1), (2, 2), (1, 7)):
        y = symbolic.keep_first(x, dim, L)
        assert torch.equal(y, x[(slice(None),) * dim + (slice(0, L),)])
        assert y._is_view() and y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()  # a view of x
    assert not symbolic.symbolic_length(7)


def test_the_symbolic_forms_while_exporting_with_a_dynamic_length():
    """torch.export with L dynamic: symbolic_length is True for the symbolic L and False for an int (also while
    exporting), the chunk count is ⌊(L + 2T − 1)/T⌋ (one all-padding chunk more than ⌈L/T⌉), keep_first crops the
    padded sequence back to L, and the carry over the chunks runs as one scan for every chunk count."""
    seen = []
    T = 4

    class Chunked(torch.nn.Module):
        def forward(self, x):  # x (B, L, H)
            L = x.shape[1]
            seen.append((symbolic.symbolic_length(L), symbolic.symbolic_length(3)))
            nc = symbolic.chunk_count(L, T)
            padded = torch.nn.functional.pad(x, (0, 0, 0, nc * T - L))  # (B, nc·T, H)
            sums = padded.reshape(x.shape[0], nc, T, x.shape[2]).sum(2)  # (B, nc, H)
            before, last = symbolic.carry(torch.full_like(sums[:, 0], 0.5), sums, None, dim=1)
            return symbolic.keep_first(padded, 1, L), x.new_zeros(nc), before, last

    program = torch.export.export(Chunked(), (randn(B, 13, H),), dynamic_shapes=({1: Dim("L", min=1, max=200)},))
    assert seen == [(True, False)]
    for L in (1, 3, 4, 5, 13, 200):
        x = randn(B, L, H, seed=L)
        crop, count, before, last = program.module()(x)
        assert count.shape == ((L + 2 * T - 1) // T,) and count.shape[0] == math.ceil(L / T) + 1
        assert torch.equal(crop, x)
        sums = torch.nn.functional.pad(x, (0, 0, 0, count.shape[0] * T - L)).reshape(B, -1, T, H).sum(2)
        h, states = torch.zeros(B, H, dtype=torch.float64), []
        for c in range(count.shape[0]):
            states.append(h)
            h = 0.5 * h + sums[:, c]
        assert rel_err(before, torch.stack(states, 1)) < 1e-14 and rel_err(last, h) < 1e-14
    seen.clear()
    torch.export.export(Chunked(), (randn(B, 13, H),))  # a static export: L is an int
    assert seen == [(False, False)]


# --------------------------------------------------------------------------------------------------
# symbolic: the scan op and the carry, against loops


@pytest.mark.parametrize("dim", [0, 1, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_equals_a_loop(dim, reverse):
    """scan(step, init, xs, dim, reverse, constants): the carry c ← step(c, x_t) along ``dim`` (from the last index
    when reversed), the y_t stacked along ``dim`` in the input order; with constants passed as step's third argument."""
    shape = [5, 6, 7]
    a, b = randn(*shape, seed=22), randn(*shape, seed=23)
    shape.pop(dim)
    init, scale, shift = randn(*shape, seed=24), randn(*shape, seed=25), randn(*shape, seed=26)

    def loop(with_constants):
        c, ys = init, {}
        for t in (reversed if reverse else iter)(range(a.shape[dim])):
            a_t, b_t = a.select(dim, t), b.select(dim, t)
            c = c * a_t + b_t + ((scale * c + shift) if with_constants else 0)
            ys[t] = c - a_t
        return c, torch.stack([ys[t] for t in range(a.shape[dim])], dim)

    def step(c, x):
        c = c * x[0] + x[1]
        return c, c - x[0]

    def step_constants(c, x, consts):
        c = c * x[0] + x[1] + consts[0] * c + consts[1]
        return c, c - x[0]

    for with_constants in (False, True):
        want_last, want_ys = loop(with_constants)
        if with_constants:
            last, ys = symbolic.scan(step_constants, init, (a, b), dim=dim, reverse=reverse, constants=(scale, shift))
        else:
            last, ys = symbolic.scan(step, init, (a, b), dim=dim, reverse=reverse)
        assert rel_err(last, want_last) < 1e-14 and rel_err(ys, want_ys) < 1e-14
        assert ys.shape == a.shape


def test_scan_defaults_to_the_first_axis_forwards():
    x = randn(4, 3, seed=27)
    last, ys = symbolic.scan(lambda c, xt: (c + xt[0], c), torch.zeros(3, dtype=torch.float64), (x,))
    assert torch.equal(last, x.sum(0)) and rel_err(ys, torch.cat([torch.zeros(1, 3), x.cumsum(0)[:-1]])) < 1e-15


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("varying", [False, True])
@pytest.mark.parametrize("n_chunks", [1, 5])
def test_carry_equals_the_loop(dim, reverse, varying, n_chunks):
    """carry(P, g, h0, dim, reverse): the states before each step of h_c = P_c ⊙ h_{c-1} + g_c (h_{c+1} when
    reversed) and the last state; complex, P time-varying (g's shape) or not (broadcast along ``dim``), h0 given or
    zeros, one chunk or five."""
    shape = [n_chunks, 3, 4] if dim == 0 else [3, n_chunks, 4]
    g = torch.complex(randn(*shape, seed=28), randn(*shape, seed=29))
    P_shape = shape if varying else shape[:dim] + shape[dim + 1:]
    P = 0.9 * torch.exp(1j * randn(*P_shape, seed=30))
    h0 = torch.complex(randn(3, 4, seed=31), randn(3, 4, seed=32))
    for start in (h0, None):
        h = start if start is not None else torch.zeros(3, 4, dtype=torch.complex128)
        before = {}
        for c in (reversed if reverse else iter)(range(n_chunks)):
            before[c] = h
            h = (P.select(dim, c) if varying else P) * h + g.select(dim, c)
        got_before, got_last = symbolic.carry(P, g, start, dim, reverse=reverse)
        assert got_before.shape == g.shape and got_last.shape == (3, 4)
        assert rel_err(got_before, torch.stack([before[c] for c in range(n_chunks)], dim)) < 1e-14
        assert rel_err(got_last, h) < 1e-14


@pytest.mark.parametrize("exported", [False, True])
@pytest.mark.parametrize("start", ["zeros", "no grad", "grad"])
@pytest.mark.parametrize("needs", ["P", "g", "both"])
def test_carry_gradients_equal_the_loops_whatever_requires_grad(needs, start, exported):
    """The gradients of carry's outputs (both weighted) into P, g and h0 equal the loop's, for each of P and g
    requiring grad, with h0 None, without grad or with it, eagerly and through an exported program with a dynamic
    chunk count (as the layers' exported scans call it). torch 2.11's scan op (the GPU machine's torch) lost the
    gradient between steps where the first carry did not require grad: every gradient that crossed a chunk was
    wrong (an exported S4D 3e-2 to 1.7 off at 70 steps) until scan put the first carry in its inputs' graph."""
    n, shape = 5, (3, 5, 4)  # the chunks on dim 1
    P0 = 0.9 * torch.exp(1j * randn(3, 4, seed=40))  # time-invariant, broadcast along the chunks (the layers' use)
    g0 = torch.complex(randn(*shape, seed=41), randn(*shape, seed=42))
    h00 = torch.complex(randn(3, 4, seed=43), randn(3, 4, seed=44))
    wb, wl = torch.complex(randn(*shape, seed=45), randn(*shape, seed=46)), randn(3, 4, seed=47)

    class Carry(torch.nn.Module):
        def forward(self, P, g, h0):
            return symbolic.carry(P, g, h0, 1)

    def run(f, P, g, h0):
        before, last = f(P, g, h0)
        return (before * wb).real.sum() + (last.imag * wl).sum()

    def loop(P, g, h0):
        h = torch.zeros(3, 4, dtype=torch.complex128) if h0 is None else h0
        before = []
        for c in range(n):
            before.append(h)
            h = P * h + g[:, c]
        return torch.stack(before, 1), h

    f = Carry()
    if exported:
        example = (P0, g0[:, :3].contiguous(), None if start == "zeros" else h00)
        f = torch.export.export(f, example, dynamic_shapes=(None, {1: Dim("n", min=2, max=64)}, None)).module()
    P, g = P0.clone().requires_grad_(needs != "g"), g0.clone().requires_grad_(needs != "P")
    h0 = None if start == "zeros" else h00.clone().requires_grad_(start == "grad")
    wrt = [t for t in (P, g, h0) if t is not None and t.requires_grad]
    got = torch.autograd.grad(run(f, P, g, h0), wrt)
    want = torch.autograd.grad(run(loop, P, g, h0), wrt)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-13


@pytest.mark.parametrize("exported", [False, True])
def test_scan_gradients_equal_the_loops_from_a_first_carry_without_grad(exported):
    """scan's gradients into its inputs and constants equal a loop's when its first carry does not require grad
    (Mamba's exported selective scan calls it so, from zeros or a given state): torch 2.11's scan op lost the
    gradient between steps there (test above); scan puts the first carry in the inputs' graph."""
    a0, b0, scale0 = 0.5 * randn(6, 3, 4, seed=50), randn(6, 3, 4, seed=51), 0.3 * randn(3, 4, seed=52)
    init, w_last, w_ys = randn(3, 4, seed=53), randn(3, 4, seed=54), randn(6, 3, 4, seed=55)

    def step(c, x, consts):
        c = c * x[0] + x[1] * consts[0]
        return c, c.clone()

    class Scan(torch.nn.Module):
        def forward(self, a, b, scale, init):
            return symbolic.scan(step, init, (a, b), constants=(scale,))

    def loop(a, b, scale, init):
        c, ys = init, []
        for t in range(a.shape[0]):
            c = c * a[t] + b[t] * scale
            ys.append(c)
        return c, torch.stack(ys)

    f = Scan()
    if exported:
        n = Dim("n", min=2, max=64)
        f = torch.export.export(f, (a0[:4], b0[:4], scale0, init), dynamic_shapes=({0: n}, {0: n}, None, None)).module()
    a, b, scale = (t.clone().requires_grad_() for t in (a0, b0, scale0))
    got, want = (torch.autograd.grad((last * w_last).sum() + (ys * w_ys).sum(), (a, b, scale))
                 for last, ys in (f(a, b, scale, init), loop(a, b, scale, init)))
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-13
