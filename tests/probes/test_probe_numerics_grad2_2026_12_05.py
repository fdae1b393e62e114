"""Gradient numerics probe of 2026-12-05, third part: the two float32 gaps the second part left.

Each measured in float32 against the same weights cast to float64 (error max|g32 - g64| / max|g64| per tensor), and
against the floor: a float64 run with only the quantity that a float32 layer must round rounded (straight through for
the gradient).

1. **DSS formed Δ, z = ΔΛ and everything read from z in float32** (``layers/dss.py``, every path: the C code's
   ``exp_phi`` took the float32 z). e^z turns z's absolute error into a relative one of Ā, and at fast poles
   (d_state 256, Δ 0.5-5: |Im z| up to ~10³) a float32 Δ = e^{log Δ} or z is off by |Im z|·6e-8. With the loss on the
   last step (L 256, d_model 4) ∂log Δ was 2.7e-4 off on every path (reference, chunked, FFT, C), both versions
   (exp and softmax), where rounding Ā and W̃ alone leaves 9.3e-8 (exp) and 7.2e-8 (softmax). Δ, z, e^z, φ(z) and
   W̃ (the softmax normalisation too) are now formed in double for a float32 layer and Ā and W̃ rounded once
   (:func:`ssmkit.ops.discretize.widen`, as S5): ∂log Δ 7.7e-8-1.2e-7 on the reference, chunked and C paths,
   5.0e-7 and 5.2e-7 on the FFT path (its float32 transforms: its other gradients are 1.1-3.7e-7 too, before and
   after); the other gradients ≤ 1.4e-7 off the FFT path (before ≤ 3.8e-7). The output is within float32 round-off
   of the float64 one (reference 9.6e-8, chunked 5.8e-8, FFT 1.7e-7; the C diagonal scan, whose state runs in
   float32, 4.2e-7 / 7.9e-7 for exp / softmax against 4.1e-7 / 7.9e-7 for the same rounded Ā and W̃ scanned in
   double: the scan's own share).
   Ā and W̃ are the float64 layer's values rounded once: ≤ 4.0e-8 (before: Ā 5.3e-4 off).
2. **The chunked MIMO path's weight gradients were autograd's GEMMs** (``ops/mimo.py``: LRU and S5 under backend
   ``"chunked"``, the path of the GPU). ∂W_in = uᵀ ∂v and ∂W_out = xᵀ g are sums over all B·L steps, and MKL's GEMM of a
   narrow product (≤ 8 columns on one side) keeps one float32 running sum: with a constant input and the loss on every
   step (d_model 4, d_state 16, B 8, L 16 384) LRU's ∂B was 5.5e-6 off, ∂C 3.0e-6, ∂log γ 3.2e-6 (its floor, Λ̄
   rounded alone, ≤ 1e-8), S5's ∂B 5.1e-6 and ∂C 5.3e-6 (floors 1.1e-6 and 1.7e-6). The two products now go through
   a small autograd Function whose weight gradient is the C path's ``_gram`` (64-row blocks, their partials summed
   pairwise; 128- or 256-row blocks left LRU's ∂B at 1.9e-6), the narrow side first (MKL's aᵀg with more rows than
   columns is 5x slower: 2.6 against 0.5 ms at B·L 32 768, 64 x 4; autograd's backward of W_out's column-major
   layout had the fast one); eagerly only (torch.compile, torch.func, export, forward-mode AD and autocast keep
   ``a @ w``), and only where the product is narrow (wider GEMMs block their sums themselves). LRU ∂B 2.2e-7, ∂C
   5.9e-7, ∂log γ 4.6e-7 (the C path: 2.2e-7, 4.1e-7, 4.6e-7; the rest of the chunked path's ∂C is its scan's states,
   1.3e-6 off element by element against the C recurrence's 5.9e-8), S5 ∂B 1.9e-6, ∂C 1.7e-6. ∂D (torch's own sum
   over B·L) stays 3.0e-7. A double backward (``create_graph``) differentiates through the Function's tensor ops
   (tests/ops/test_double_backward.py: H 3, B·L 300). Forward+backward at B 8, L 4 096 under ``"chunked"`` (one
   thread, paired interleaved runs, best of 3 rounds of 60, malloc not trimming: no page faults): d_model 4, LRU
   14.8 -> 15.4 ms, S5 15.5 -> 16.1 ms (the 512 GEMMs of 64-row blocks: +0.2-0.3 ms per weight gradient); d_model
   128 (not narrow: the same GEMMs) 58.4 -> 58.8 and 58.4 -> 58.6 ms.

Left: the chunked recurrence's states and time-invariant ∂a (LRU ∂log ν 2.6e-7 chunked against 4.6e-8 on the C path;
S5 ∂Re Λ 1.1e-6 against 2.2e-7); the C diagonal scan keeps its state in float32 (DSS output 4e-7-8e-7 above).
"""

from __future__ import annotations

import copy
import types

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.ops import mimo_scan, use_backend
from ssmkit.ops.native import native_available
from tests.conftest import rel_err

C64 = torch.complex64
NATIVE = native_available("ssm_scan", torch.float32) and native_available("zoh", torch.float64)


def _round_once(layer, which):
    """A float64 layer whose discrete() outputs at ``which`` (indices) alone are rounded to complex64 (straight through
    for the gradient): the error it leaves is the floor of any float32 computation of the layer."""
    discrete = layer.discrete

    def rounded(self):
        out = list(discrete())
        for i in which:
            out[i] = out[i] + (out[i].to(C64).to(out[i].dtype) - out[i]).detach()
        return tuple(out)

    layer.discrete = types.MethodType(rounded, layer)
    return layer


def _dss(version):
    torch.manual_seed(0)
    return layers.build("dss", d_model=4, d_state=256, dt_min=0.5, dt_max=5.0, version=version, l_max=256)


@pytest.mark.parametrize("version", ["exp", "softmax"])
def test_dss_discretisation_is_the_float64_one_rounded_once(version):
    # before: Ā 5.3e-4 off (W̃ 9.8e-8 exp, 2.1e-7 softmax), the C code's exp_phi (float32 z) alike
    layer = _dss(version)
    wide = copy.deepcopy(layer).double()
    with torch.no_grad():
        want = wide.discrete()
        for backend in ["chunked", "native"] if NATIVE else ["chunked"]:
            with use_backend(backend):  # exp_phi: torch ops, or the C code under "native"
                got = layer.discrete()
            for name, a, b in zip(("A_bar", "B_bar", "W_tilde"), got, want):
                assert a.dtype == C64 and rel_err(a, b) < 1.2e-7, (backend, name, rel_err(a, b))  # after: ≤ 4.0e-8


@pytest.mark.parametrize("version", ["exp", "softmax"])
def test_dss_fast_pole_gradients_reach_the_float32_floor_on_every_path(version):
    # before: ∂log Δ 2.7e-4 on every path (floor 9.3e-8 exp, 7.2e-8 softmax)
    layer = _dss(version)
    x, w = torch.randn(1, 256, 4), torch.randn(1, 4)

    def run(lay, x, backend):
        with use_backend(backend):
            y, _ = lay(x)
        return [y.detach(), *torch.autograd.grad((y[:, -1] * w.to(y.dtype)).sum(), list(lay.parameters()))]

    names = ["y"] + [n for n, _ in layer.named_parameters()]
    want = run(copy.deepcopy(layer).double(), x.double(), "reference")
    floor = run(_round_once(copy.deepcopy(layer).double(), (0, 2)), x.double(), "reference")
    assert rel_err(floor[1], want[1]) < 1e-7  # ∂log Δ's floor: 9.3e-8 / 7.2e-8
    for backend in ["reference", "chunked", "fft"] + (["native"] if NATIVE else []):
        got = run(layer, x, backend)
        for name, g, v in zip(names, got, want):
            err = rel_err(g, v)
            if name == "y":  # float32 round-off of the scan itself (the C scan's float32 state: ≤ 7.9e-7)
                assert err < 2e-6, (backend, err)
            elif name == "log_dt":  # after: 7.7e-8-1.2e-7; FFT 5.0e-7 (its float32 transforms)
                assert err < (1e-6 if backend == "fft" else 2.5e-7), (backend, err)
            else:  # after: ≤ 1.4e-7, FFT ≤ 3.0e-7 (before ≤ 3.8e-7)
                assert err < 6e-7, (backend, name, err)


@pytest.mark.parametrize("name", ["lru", "s5"])
def test_chunked_mimo_weight_gradients_over_a_long_constant_input_are_summed_by_blocks(name):
    # before: LRU ∂B 5.5e-6, ∂C 3.0e-6, ∂log γ 3.2e-6 (floors ≤ 1e-8); S5 ∂B 5.1e-6, ∂C 5.3e-6 (floors 1.1e-6, 1.7e-6)
    torch.manual_seed(0)
    layer = layers.build(name, d_model=4, d_state=16)
    x = torch.full((8, 16384, 4), 0.1)

    def grads(lay, x):
        with use_backend("chunked"):
            y, _ = lay(x)
        return torch.autograd.grad(y.sum(), list(lay.parameters()))

    want = grads(copy.deepcopy(layer).double(), x.double())
    floor = grads(_round_once(copy.deepcopy(layer).double(), (0,)), x.double())
    got = grads(layer, x)
    for (p, _), g, f, v in zip(layer.named_parameters(), got, floor, want):
        err, least = rel_err(g, v), rel_err(f, v)
        # after: LRU ∂B 2.2e-7, ∂C 5.9e-7, ∂log γ 4.6e-7; S5 ∂B 1.9e-6, ∂C 1.7e-6 (floor 1.7e-6)
        assert err <= 1.5 * least + 8e-7, (p, err, least)


@pytest.mark.parametrize("H, M", [(2, 16), (8, 4), (16, 2), (3, 1)])
def test_chunked_mimo_op_weight_gradients_of_nearly_constant_rows(H, M):
    # the op alone, complex and real modes, narrow on either side, B·L not a multiple of the 64-row block. Before:
    # ∂B̄ 1.1e-4, 6.8e-5, 1.3e-4, 8.0e-5 (real modes); ∂C 1.3e-4, 1.5e-4, 3.8e-5, 1.3e-6
    g = torch.Generator().manual_seed(0)
    cplx = M > 1
    A = (0.5 * torch.polar(torch.ones(M), torch.rand(M, generator=g)) if cplx else torch.full((M,), 0.5)).to(
        C64 if cplx else torch.float32)
    u = 0.7 + 1e-3 * torch.rand(4, 8191, H, generator=g)
    B = torch.randn(M, H, generator=g, dtype=A.dtype)
    C = torch.randn(H, M, generator=g, dtype=A.dtype)
    w = 1 + 1e-3 * torch.rand(4, 8191, H, generator=g)

    def run(dtype):
        wide = {torch.float32: torch.float64, C64: torch.complex128} if dtype == torch.float64 else {}
        leaves = [t.to(wide.get(t.dtype, t.dtype)).requires_grad_() for t in (B, C)]
        y, _ = mimo_scan(u.to(dtype), A.to(wide.get(A.dtype, A.dtype)), *leaves, backend="chunked")
        return torch.autograd.grad((y * w.to(dtype)).sum(), leaves)

    for name, a, b in zip(("B_bar", "C"), run(torch.float32), run(torch.float64)):
        assert rel_err(a, b) < 3e-7, (name, rel_err(a, b))  # after: ≤ 1.2e-7
