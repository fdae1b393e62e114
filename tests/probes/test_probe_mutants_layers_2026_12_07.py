"""Mutation round of 2026-12-07 over six modules that had never been mutation-tested: layers/gss.py, layers/h3.py,
layers/longconv.py, layers/shortconv.py, ops/fftconv.py and ops/hippo.py.

83 hand mutants (sign flips, off-by-one shifts and pads, dropped terms, swapped conjugates and dimensions, changed
defaults and draws, skipped checks) were run against the modules' own test files; the tests below kill the
survivors that can be killed, each against an independent reference written here (a numpy loop or kernel written
from the paper's equations, central finite differences, the documented argument contract). Each test's docstring
names the mutants it kills. The equivalent survivors (no test can see them) are listed in the round's report:
a one-sided clip of Im B̃ in ``nplr`` (Im B̃ >= 0 under the phase convention, measured for every measure and even
N <= 256), ``s5_eigen`` asking ``nplr`` for a clipped B̃ (it returns only Λ and V), and the FFT length of
``causal_conv_fft`` from 2L - 1 instead of 2L (``_fft_size`` rounds up to even: the same n), and GSS's Δ = 1
made as float32 (1 is exact in every float dtype and the product with λ promotes).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from scipy.special import erf

import ssmkit.layers as layers
import ssmkit.layers.shortconv as shortconv
from ssmkit.layers.shortconv import ShortConv
from ssmkit.ops import hippo
from ssmkit.ops.fftconv import bidirectional_conv_fft, causal_conv_fft
from tests.conftest import DEVICE, run_steps

F64 = torch.float64


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(F64).cpu().numpy()


# ------------------------------------------------------------------------------------------------------------------
# ops/fftconv.py


def _causal_sum(u: np.ndarray, K: np.ndarray) -> np.ndarray:
    """y[b, t, h] = Σ_{s≤t} K[h, t-s] u[b, s, h] by a double loop (arXiv 2111.00396 §3.3)."""
    y = np.zeros_like(u)
    for t in range(u.shape[1]):
        for s in range(t + 1):
            y[:, t] += K[:, t - s] * u[:, s]
    return y


def _two_sided_sum(u: np.ndarray, K: np.ndarray) -> np.ndarray:
    """y[t] = Σ_{s≤t} K[0, t-s] u[s] + Σ_{s>t} K[1, s-t-1] u[s] by a double loop."""
    y = np.zeros_like(u)
    L = u.shape[1]
    for t in range(L):
        for s in range(L):
            y[:, t] += (K[0, :, t - s] if s <= t else K[1, :, s - t - 1]) * u[:, s]
    return y


@pytest.mark.parametrize("two_sided", [False, True])
def test_fft_convolution_tangent_is_the_convolution_of_the_tangents(two_sided):
    """Kills FC13 (the forward-mode tangent ẏ = irfft(rfft(u̇) · k̂ + û · rfft(k̇)) with conj(k̂) for k̂): y is
    bilinear in (u, K), so ẏ = conv(u̇, K) + conv(u, K̇), both by the double loop."""
    g = torch.Generator().manual_seed(5)
    u, u_dot = (torch.randn(2, 9, 3, generator=g, dtype=F64) for _ in range(2))
    shape = (2, 3, 11) if two_sided else (3, 11)
    K, K_dot = (torch.randn(*shape, generator=g, dtype=F64) for _ in range(2))
    fast, loop = (bidirectional_conv_fft, _two_sided_sum) if two_sided else (causal_conv_fft, _causal_sum)
    want = loop(_np(u_dot), _np(K)) + loop(_np(u), _np(K_dot))
    with fwAD.dual_level():
        y = fast(fwAD.make_dual(u.to(DEVICE), u_dot.to(DEVICE)), fwAD.make_dual(K.to(DEVICE), K_dot.to(DEVICE)))
        got = fwAD.unpack_dual(y).tangent
    np.testing.assert_allclose(_np(got), want, rtol=0, atol=1e-12 * np.abs(want).max())
    with fwAD.dual_level():  # a tangent in u alone: the path that FC13 changed
        got_u = fwAD.unpack_dual(fast(fwAD.make_dual(u.to(DEVICE), u_dot.to(DEVICE)), K.to(DEVICE))).tangent
    want_u = loop(_np(u_dot), _np(K))
    np.testing.assert_allclose(_np(got_u), want_u, rtol=0, atol=1e-12 * np.abs(want_u).max())


# ------------------------------------------------------------------------------------------------------------------
# ops/hippo.py


def test_hippo_sizes_refuse_bools():
    """Kills HI17 (``_check_N`` without its ``isinstance(N, bool)`` test: ``transition("legs", True)`` built a 1 × 1
    LegS matrix). The documented contract: N is an int >= 1, and a bool is not a size."""
    calls = [
        lambda: hippo.transition("legs", True),
        lambda: hippo.rank_correction("lagt", True),
        lambda: hippo.dss_eigenvalues(True),
        lambda: hippo.s5_eigen(2, True),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"must be an int >= 1; got True"):
            call()
    A, B = hippo.transition("legs", 1)  # the int 1 still works: A = [[-1]], B = [1] (2008.07669, n = 0)
    assert A.tolist() == [[-1.0]] and B.tolist() == [1.0]


# ------------------------------------------------------------------------------------------------------------------
# layers/shortconv.py


def test_short_conv_checks_the_activation_before_the_segmented_work(monkeypatch):
    """Kills SC7 (the resets path without its up-front ``check_activation``: the segmented convolution ran, then
    ``activate`` raised). A bad activation must be refused before any work, as on the path without resets."""
    calls = []

    def recording(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the segmented convolution ran before the activation was checked")

    monkeypatch.setattr(shortconv, "causal_conv1d_segments", recording)
    conv = ShortConv(3, 2, dtype=F64, device=DEVICE)
    x = torch.randn(1, 4, 3, dtype=F64, device=DEVICE)
    resets = torch.zeros(1, 4, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="activation must be one of"):
        conv(x, resets=resets, activation="relu")
    assert calls == []


# ------------------------------------------------------------------------------------------------------------------
# layers/gss.py


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _gss_by_kernel(layer, x: np.ndarray) -> np.ndarray:
    """GSS (arXiv 2206.13947 pseudocode, lucidrains' DSS) with the SSM as a convolution by its kernel
    K_l = Re Σ_n C_n (e^{λ_n} - 1)/λ_n e^{l λ_n} and the LayerNorm of ``nn.LayerNorm``'s default eps 1e-5 (the
    paper's and lucidrains' norm), written here, not read from the layer."""
    g = _gelu(x @ _np(layer.gate.weight).T)
    a = _gelu(x @ _np(layer.down.weight).T)
    u = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5)
    u = u * _np(layer.norm.weight) + _np(layer.norm.bias)
    ssm = layer.ssm
    lam = -np.exp(_np(ssm.log_A_real)) + 1j * np.exp(_np(ssm.log_A_imag))  # (M,)
    C = _np(ssm.C)[0, ..., 0] + 1j * _np(ssm.C)[0, ..., 1]  # (H_s, M)
    L = x.shape[1]
    K = (C[:, :, None] * ((np.exp(lam) - 1) / lam)[None, :, None]
         * np.exp(np.arange(L)[None, None, :] * lam[None, :, None])).sum(1).real  # (H_s, L)
    s = _causal_sum(u, K) + _np(ssm.D) * u
    return ((s @ _np(layer.up.weight).T) * g) @ _np(layer.out.weight).T + _np(layer.out.bias)


def test_gss_layer_norm_has_the_default_eps():
    """Kills GS12 (the bottleneck LayerNorm built with eps 1e-3 instead of nn.LayerNorm's 1e-5: the existing
    references read ``layer.norm.eps`` from the layer, so they followed it). The eps is written in the reference."""
    torch.manual_seed(3)
    layer = layers.build("gss", d_model=5, d_state=4, expand=2, bottleneck=2, dtype=F64, device=DEVICE)
    with torch.no_grad():  # a norm weight and bias away from 1 and 0
        layer.norm.weight.normal_()
        layer.norm.bias.normal_()
    x = torch.randn(2, 7, 5, dtype=F64, device=DEVICE)
    want = _gss_by_kernel(layer, _np(x))
    y, _ = layer(x)
    np.testing.assert_allclose(_np(y), want, rtol=0, atol=1e-11 * np.abs(want).max())


# ------------------------------------------------------------------------------------------------------------------
# layers/h3.py


def test_h3_step_passes_gradients_to_the_shift_ssm():
    """Kills H312 (``step`` with the shift taps detached: B, C and D_k of the shift SSM got no gradient through
    ``step``, so training by steps or backpropagating through a generated continuation left them unchanged).
    Reference: central finite differences of the stepped output, entry by entry."""
    torch.manual_seed(4)
    layer = layers.build("h3", d_model=3, d_state=4, dtype=F64, device=DEVICE)
    with torch.no_grad():
        layer.B.normal_()  # a shift B away from e₁, so every B entry matters
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 4, 3, generator=g, dtype=F64).to(DEVICE)
    w = torch.randn(1, 4, 3, generator=g, dtype=F64).to(DEVICE)

    def loss() -> torch.Tensor:
        return (run_steps(layer, x)[0] * w).sum()

    params = (layer.B, layer.C, layer.D_k)
    grads = torch.autograd.grad(loss(), params, allow_unused=True)
    eps = 1e-6
    for p, grad in zip(params, grads):
        fd = torch.zeros_like(p)
        with torch.no_grad():
            for i in range(p.numel()):
                flat = p.view(-1)
                keep = flat[i].item()
                flat[i] = keep + eps
                up = loss()
                flat[i] = keep - eps
                down = loss()
                flat[i] = keep
                fd.view(-1)[i] = (up - down) / (2 * eps)
        assert grad is not None
        np.testing.assert_allclose(_np(grad), _np(fd), rtol=0, atol=1e-7 * max(1.0, float(fd.abs().max())))


def test_fft_size_is_the_smallest_smooth_even_size_from_zero_up():
    """``_fft_size(n)`` against a brute-force search, n = 0..200 (n = 0 looped forever: 0 has no prime factors to
    divide out; the public ops never ask for it, L >= 1 gives 2L)."""
    from ssmkit.ops.fftconv import _fft_size

    def smooth(n):
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    for n in range(201):
        assert _fft_size(n) == next(m for m in range(max(n, 2), 4 * n + 3) if m % 2 == 0 and smooth(m))
