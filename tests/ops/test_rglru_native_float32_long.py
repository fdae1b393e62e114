"""The RG-LRU's C kernel (ops/native/rglru_scan.c) in float32 at long L with gates near 1: the forward and every
gradient against a float64 loop on the same float32 inputs.

RG-LRU (arXiv 2402.19427 §2.4) runs h_t = a_t h_{t-1} + √(1 - a_t²) i_t x_t, a_t = σ(Λ)^{c r_t}. With 1 - σ(Λ)^c
log-uniform in [1e-5, 1e-3] and r_t in [0.5, 1] the state remembers ~1e3 to ~2e5 steps. A float32 a_t near 1 is then
off by up to half an ulp (3e-8) against 1 - a_t = 1e-5, at random from step to step, and a float32 state is rounded at
every step: both errors add up over the memory. The kernel therefore runs the recurrences in increment form on
a_t - 1 = expm1(log a_t) (accurate near 0) with compensated (two-float) states h and λ. At L = 16 384, B 2, H 16, with
h0: the forward 6.0e-8 off the float64 loop, the gradients up to 2.4e-7 (the kernel with a float32 a_t and state:
4.7e-6 and 3.8e-6; the chunked path 7.3e-7 and 5.7e-7). The oracle is a float64 loop written here (forward, and the adjoint
recurrence for the gradients of Σ w·h), checked against the float64 reference backend's autograd at a short length.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops.native import native_available
from ssmkit.ops.rglru import rglru
from tests.conftest import DEVICE, rel_err

F64 = torch.float64
C = 8.0
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not native_available("rglru", torch.float32),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


def _inputs(B, L, H, seed=0, resets=False):
    """Float32 x ~ N(0, 1), i in [0, 1), r in [0.5, 1) (B, L, H); Λ (H,) with 1 - σ(Λ)^c log-uniform in [1e-5, 1e-3];
    h0 ~ N(0, 1) (B, H); w ~ N(0, 1) (B, L, H), the weights of the loss Σ w·h; resets (B, L) at ~1 step in 3 000 and
    at t = 0 of the last row, or None."""
    g = torch.Generator().manual_seed(seed)
    q = 10 ** (-5 + 2 * torch.rand(H, generator=g, dtype=F64))  # 1 - σ(Λ)^c
    s = (1 - q) ** (1 / C)  # σ(Λ)
    Lam = (torch.log(s) - torch.log1p(-s)).float()
    x = torch.randn(B, L, H, generator=g)
    r = 0.5 + 0.5 * torch.rand(B, L, H, generator=g)
    i = torch.rand(B, L, H, generator=g)
    h0 = torch.randn(B, H, generator=g)
    w = torch.randn(B, L, H, generator=g)
    flags = None
    if resets:
        flags = torch.rand(B, L, generator=g) < 1 / 3000
        flags[-1, 0] = True
    return x, r, i, Lam, h0, w, flags


def _loop64(x, r, i, Lam, h0, w, flags, G=1000.0):
    """h and the gradients of Σ w·h with respect to x, r, i, Λ, h0 by float64 loops on the float32 inputs widened:
    log a_t = -c r_t softplus(-Λ), m_t = √(-expm1(2 log a_t)) (a_t = 0, m_t = 1 at a reset), h_t = a_t h_{t-1} + m_t i_t
    x_t; λ_t = w_t + a_{t+1} λ_{t+1}, ∂log a_t = a_t λ_t h_{t-1} - 2 a_t² λ_t i_t x_t / √max(4 m_t², 1/G²)."""
    x, r, i, Lam, h0, w = (t.double() for t in (x, r, i, Lam, h0, w))
    B, L, H = x.shape
    sp = F.softplus(-Lam)
    la = -C * r * sp
    a, v = torch.exp(la), -torch.expm1(2 * la)
    m = torch.sqrt(v)
    keep = torch.ones(B, L, 1, dtype=F64) if flags is None else (~flags[..., None]).double()
    a, m = a * keep, torch.where(keep > 0, m, torch.ones_like(m))
    b = m * i * x
    h, state = torch.empty_like(x), h0
    for t in range(L):
        state = a[:, t] * state + b[:, t]
        h[:, t] = state
    lam, carry = torch.empty_like(x), torch.zeros(B, H, dtype=F64)
    for t in range(L - 1, -1, -1):
        lam[:, t] = w[:, t] + carry
        carry = a[:, t] * lam[:, t]
    h_prev = torch.cat([h0[:, None], h[:, :-1]], 1)
    e = torch.exp(la)
    dmdv = torch.where(4 * v > 1 / G**2, 0.5 / torch.sqrt(v), torch.full_like(v, G))
    dla = keep * (e * lam * h_prev - 2 * e * e * lam * i * x * dmdv)
    grads = [lam * m * i, -C * sp * dla, lam * m * x, (C * r * dla).sum((0, 1)) * torch.sigmoid(-Lam), carry]
    return h, grads


def _native(x, r, i, Lam, h0, w, flags):
    ins = [t.clone().requires_grad_() for t in (x, r, i, Lam, h0)]
    h, _ = rglru(*ins[:4], C, ins[4], flags, backend="native")
    return h, torch.autograd.grad((h * w).sum(), ins)


def test_the_float64_loop_equals_the_reference_backend():
    """The oracle against autograd through the float64 reference path (resets, h0, partial and whole blocks)."""
    x, r, i, Lam, h0, w, flags = _inputs(2, 300, 5, seed=1, resets=True)
    flags[0, 100] = True
    ins = [t.double().requires_grad_() for t in (x, r, i, Lam, h0)]
    h, _ = rglru(*ins[:4], C, ins[4], flags, backend="reference")
    want = [h, *torch.autograd.grad((h * w.double()).sum(), ins)]
    h64, grads = _loop64(x, r, i, Lam, h0, w, flags)
    for got, ref in zip([h64, *grads], want):
        assert rel_err(got, ref) < 1e-12


@pytest.mark.parametrize(
    "H, resets",
    [(16, False), (90, True), (70, True)],
    ids=["one-vector", "overlapping-vector-resets", "lane-tail-resets"],
)
def test_float32_kernel_at_long_L_with_gates_near_1(H, resets):
    """L = 16 384: y within 2e-7 of the float64 loop (max |error| / max |y|; 6e-8 to 9e-8 now), each gradient within
    5e-7 (2.4e-7 now; the chunked path 2.4e-7 to 5.7e-7; a float32 gate and state: y 1.9e-6 to 4.7e-6, gradients
    9.5e-7 to 3.8e-6). H = 90 ends in a block of 26 channels (a vector overlapping the one before it), H = 70 in one of
    6 (the per-lane loop)."""
    x, r, i, Lam, h0, w, flags = _inputs(2, 16384, H, resets=resets)
    h, grads = _native(x, r, i, Lam, h0, w, flags)
    h64, grads64 = _loop64(x, r, i, Lam, h0, w, flags)
    assert rel_err(h, h64) < 2e-7, rel_err(h, h64)
    for name, got, want in zip(("x", "r", "i", "Lambda", "h0"), grads, grads64):
        assert rel_err(got, want) < 5e-7, (name, rel_err(got, want))
