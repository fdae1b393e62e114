"""The irregular-sampling ops (:mod:`ssmkit.ops.irregular`, :mod:`ssmkit.ops.irregular_bank`): every path against
its loop over several chunks (values and gradients, float64), the per-step coefficients against their closed forms
at tiny and huge gaps, and the bank's chunked path holding no (B, L, H, M) tensor for the backward."""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.ops.irregular import irregular_discretize, irregular_scan, irregular_scan_reference
from ssmkit.ops.irregular_bank import (
    bank_irregular_coefficients,
    bank_irregular_scan,
    bank_irregular_scan_chunked,
    bank_irregular_scan_reference,
    bank_irregular_step,
)
from tests.conftest import DEVICE, rel_err

Bsz, L, H, M = 2, 13, 3, 4


def _bank(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    c = {torch.float64: torch.complex128, torch.float32: torch.complex64}[dtype]

    def cplx(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                             torch.randn(*shape, generator=g, dtype=torch.float64)).to(DEVICE, c)

    Lambda = torch.complex(-torch.rand(H, M, generator=g, dtype=torch.float64) - 0.1,
                           3 * torch.randn(H, M, generator=g, dtype=torch.float64)).to(DEVICE, c)
    u = torch.randn(Bsz, L, H, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    tau = (0.05 + 3 * torch.rand(Bsz, L, generator=g, dtype=torch.float64)).to(DEVICE, dtype)
    dt = (0.01 + torch.rand(H, generator=g, dtype=torch.float64)).to(DEVICE, dtype)
    D = torch.randn(H, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    return u, Lambda, cplx(H, M), cplx(H, M), dt, tau, D, cplx(Bsz, H, M)


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
@pytest.mark.parametrize("chunk_size", [1, 5, 13, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_bank_chunks_equal_the_loop_with_gradients(rule, chunk_size, with_state):
    u, Lambda, B, C, dt, tau, D, h0 = _bank()
    inputs = [t.requires_grad_() for t in (u, Lambda, B, C, dt, tau, D, h0)]
    state = h0 if with_state else None
    y, h = bank_irregular_scan_chunked(u, Lambda, B, C, dt, tau, D, rule, state, chunk_size=chunk_size)
    y_ref, h_ref = bank_irregular_scan_reference(u, Lambda, B, C, dt, tau, D, rule, state)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12
    w = torch.randn_like(y)
    wanted = inputs if with_state else inputs[:-1]
    grads = torch.autograd.grad((y * w).sum() + h.abs().sum(), wanted)
    grads_ref = torch.autograd.grad((y_ref * w).sum() + h_ref.abs().sum(), wanted)
    for g, g_ref in zip(grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-10


@pytest.mark.parametrize("backend", ["reference", "chunked", "native", "auto"])
def test_bank_backends_and_step_agree(backend):
    u, Lambda, B, C, dt, tau, D, h0 = _bank(seed=1)
    y, h = bank_irregular_scan(u, Lambda, B, C, dt, tau, D, "zoh", h0, backend=backend)
    x, ys = h0, []
    for t in range(L):
        y_t, x = bank_irregular_step(u[:, t], Lambda, B, C, dt, tau[:, t], x, D, "zoh")
        ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), y) < 1e-12 and rel_err(x, h) < 1e-12
    assert bank_irregular_scan(u, Lambda, B, C, dt, tau, D, "zoh", h0, return_state=False, backend=backend)[1] is None


def test_the_bank_backward_keeps_no_coefficient_tensor():
    """Autograd saves, outside the chunks' checkpoints, nothing of size B·L·H·M (every chunk is recomputed)."""
    Lb = 256
    g = torch.Generator().manual_seed(2)
    u, Lambda, B, C, dt, _, D, _ = _bank(seed=2)
    u = torch.randn(Bsz, Lb, H, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    tau = (0.1 + torch.rand(Bsz, Lb, generator=g, dtype=torch.float64)).to(DEVICE)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = bank_irregular_scan_chunked(u, Lambda, B.requires_grad_(), C, dt, tau, D, "zoh", chunk_size=16)
    # all of it together less than one (B, L, H, M) tensor: the chunks' inputs and start states (one chunk's
    # coefficients, recurrence and read-out, kept, would hold several (B, T, H, M) tensors: > 4·B·L·H·M in all)
    assert sizes and sum(sizes) < Bsz * Lb * H * M
    y.sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_coefficients_at_tiny_and_huge_gaps(rule):
    """τ → 0: Ā = 1 + z + O(z²), B̄ = Δτ B (1 + O(z)), no cancellation (relative error ~ |z|, not eps/|z|);
    τ huge: Ā → 0 for Re Λ < 0 (ZOH) or → -1 (bilinear's pole map), B̄ finite."""
    Lambda = torch.tensor([[-0.5 + 2j, -3.0 + 0.0j]], dtype=torch.complex128, device=DEVICE)
    B = torch.tensor([[1.0 - 1j, 2.0 + 0.5j]], dtype=torch.complex128, device=DEVICE)
    dt = torch.tensor([0.7], dtype=torch.float64, device=DEVICE)
    tiny = torch.tensor([1e-12], dtype=torch.float64, device=DEVICE)
    A_bar, B_bar = bank_irregular_coefficients(Lambda, B, dt, tiny, rule, torch.complex128)
    z = 0.7e-12 * Lambda
    assert (A_bar[0] - (1 + z)).abs().max() < 4e-16  # one rounding of 1 + z
    assert ((B_bar[0] - 0.7e-12 * B) / (0.7e-12 * B)).abs().max() < 1e-11
    huge = torch.tensor([1e6], dtype=torch.float64, device=DEVICE)
    A_bar, B_bar = bank_irregular_coefficients(Lambda, B, dt, huge, rule, torch.complex128)
    assert torch.isfinite(torch.view_as_real(A_bar)).all() and torch.isfinite(torch.view_as_real(B_bar)).all()
    if rule == "zoh":  # e^{Δτλ} = 0 and B̄ = -B/λ (the DC gain of the held input)
        assert A_bar.abs().max() < 1e-300
        assert rel_err(B_bar[0], -B / Lambda) < 1e-12
    else:
        assert rel_err(A_bar[0], torch.full_like(A_bar[0], -1)) < 1e-5


def test_mimo_scan_over_many_chunks_equals_its_loop():
    g = torch.Generator().manual_seed(3)
    Lm, Mm = 300, 5
    u = torch.randn(Bsz, Lm, H, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    Lambda = torch.complex(-torch.rand(Mm, generator=g, dtype=torch.float64),
                           torch.randn(Mm, generator=g, dtype=torch.float64)).to(DEVICE)
    dt = (0.05 + torch.rand(Mm, generator=g, dtype=torch.float64)).to(DEVICE)
    tau = (0.05 + 2 * torch.rand(Bsz, Lm, generator=g, dtype=torch.float64)).to(DEVICE)
    B = torch.randn(Mm, H, generator=g, dtype=torch.complex128).to(DEVICE)
    C = torch.randn(H, Mm, generator=g, dtype=torch.complex128).to(DEVICE)
    A_bar, gain = irregular_discretize(Lambda, dt, tau, "zoh")
    for backend in ("chunked", "native", "auto"):
        y, h = irregular_scan(u, A_bar, gain, B, C, backend=backend)
        y_ref, h_ref = irregular_scan_reference(u, A_bar, gain, B, C)
        assert rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12
        gy = torch.autograd.grad(y.square().sum(), u)[0]
        assert rel_err(gy, torch.autograd.grad(y_ref.square().sum(), u)[0]) < 1e-11
    assert math.isclose(gain[0, 0, 0].item().real,
                        ((torch.exp(dt[0] * tau[0, 0] * Lambda[0]) - 1) / Lambda[0]).item().real, rel_tol=1e-12)


@pytest.mark.parametrize("bad, match", [
    ({"Lambda": torch.ones(H, M)}, "Lambda must be"),
    ({"B": torch.ones(H, M + 1, dtype=torch.complex128)}, "B must be"),
    ({"dt": torch.ones(H + 1, dtype=torch.float64)}, "dt must be"),
    ({"tau": torch.ones(Bsz, L + 1, dtype=torch.float64)}, "intervals must be"),
    ({"h0": torch.ones(Bsz, H, M, dtype=torch.complex64)}, "state must be"),
])
def test_bank_inputs_are_checked_by_name(bad, match):
    u, Lambda, B, C, dt, tau, D, h0 = _bank()
    args = {"Lambda": Lambda, "B": B, "dt": dt, "tau": tau, "h0": h0}
    args.update({k: v.to(DEVICE) for k, v in bad.items()})
    with pytest.raises(ValueError, match=match):
        bank_irregular_scan(u, args["Lambda"], args["B"], C, args["dt"], args["tau"], D, "zoh", args["h0"])
    with pytest.raises(ValueError, match="rule must be"):
        bank_irregular_coefficients(Lambda, B, dt, tau, "euler", torch.complex128)
    with pytest.raises(ValueError, match="chunk_size"):
        bank_irregular_scan_chunked(u, Lambda, B, C, dt, tau, chunk_size=0)


@pytest.mark.parametrize("grad", [False, True])
def test_the_default_chunks_with_and_without_autograd_equal_the_loop(grad):
    """chunk_size None: 16 steps a chunk without autograd, 64 with it; over 100 steps both are several chunks."""
    g = torch.Generator().manual_seed(4)
    u0, Lambda, B, C, dt, _, D, h0 = _bank(seed=4)
    u = torch.randn(Bsz, 100, H, generator=g, dtype=torch.float64).to(DEVICE)
    tau = (0.1 + 2 * torch.rand(Bsz, 100, generator=g, dtype=torch.float64)).to(DEVICE)
    with torch.set_grad_enabled(grad):
        y, h = bank_irregular_scan_chunked(u, Lambda, B, C, dt, tau, D, "zoh", h0)
    y_ref, h_ref = bank_irregular_scan_reference(u, Lambda, B, C, dt, tau, D, "zoh", h0)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12
