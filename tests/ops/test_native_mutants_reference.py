"""What a mutation probe of the native C kernels (diagonal_scan.c, selective_scan.c, ssd_scan.c) found the other tests
would not catch: each test here kills mutants that passed them, each against the float64 loop of the op.

The selective scan's float32 exp(Δ A) by 2^(Δ A log2 e) without its upper clamp (exp2_le0) is right only for
Δ A ≤ 0 on builds without AVX-512 (the AVX-512 vector form scales by 2^k exactly): the kernel takes it when softplus
makes Δ ≥ 0 and A ≤ 0, and must not without softplus, where a negative δ + b_Δ gives Δ A > 0 (a mutant that took it
there passed every other test; killed here on an AVX2 build).

Without softplus Δ = δ + b_Δ and ∂Δ/∂δ = 1: the kernel's gradients of δ, b_Δ (and of δlow, W_Δ with delta_proj) on
that path had no test (a mutant that took softplus' as 0 there passed every other test)."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.native import native_available, selective_scan_native
from ssmkit.ops.selective import selective_scan_reference
from tests.conftest import DEVICE, rel_err

F64, F32 = torch.float64, torch.float32
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not (native_available("selective_scan", F32) and native_available("selective_scan", F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


def test_selective_float32_without_softplus_overflows_like_the_loop():
    # one step from h0 = 1 with B = 0, C = 1: y = exp(Δ A); Δ = -50 and A = -2 (Δ A = 100, past float32's largest
    # exponential, 88.7) in the first of 67 channels (the full block), the others from -87 to 0: the kernel's y is inf
    # where torch.exp's is, and within float32 rounding of it elsewhere (the scalar 2^(Δ A log2 e) of builds without
    # AVX-512, taken without softplus, wrapped its exponent field there)
    H = 67
    x = torch.cat([torch.tensor([100.0]), torch.linspace(-87.0, 0.0, H - 1)])
    A = torch.full((H, 1), -2.0)
    delta = (x / -2).reshape(1, 1, H)
    y, _ = selective_scan_native(torch.ones(1, 1, H), delta, A, torch.zeros(1, 1, 1), torch.ones(1, 1, 1),
                                 delta_softplus=False, state=torch.ones(1, H, 1))
    want = torch.exp(x)
    assert torch.isinf(y.flatten()[0]) and y.flatten()[0] > 0
    assert rel_err(y.flatten()[1:], want[1:]) < 5e-7


@pytest.mark.parametrize("low_rank", [False, True], ids=["delta", "delta_proj"])
def test_selective_gradients_without_softplus_equal_the_loop_in_float64(low_rank):
    # Δ = δ + b_Δ (no softplus), positive; every input's gradient of a weighted sum of y and the final state against
    # the float64 loop's autograd (δ = δlow W_Δᵀ formed before the loop when low_rank)
    g = torch.Generator().manual_seed(0)
    Bsz, L, H, N, R = 2, 5, 3, 2, 2
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    u, B, C, h0, D, z = r(Bsz, L, H), r(Bsz, L, N), r(Bsz, L, N), r(Bsz, H, N), r(H), r(Bsz, L, H)
    A = -torch.rand(H, N, generator=g, dtype=F64) - 0.5
    bias = 0.5 + 0.1 * r(H)
    delta = torch.rand(Bsz, L, R if low_rank else H, generator=g, dtype=F64) * 0.5
    W = 0.5 * r(H, R)
    gy, gh = r(Bsz, L, H), r(Bsz, H, N)
    leaves = [u, delta, A, B, C, D, z, bias, h0, *([W] if low_rank else [])]
    out = {}
    for name in ("ref", "native"):
        p = [t.clone().requires_grad_() for t in leaves]
        if name == "ref":
            d = torch.nn.functional.linear(p[1], p[9]) if low_rank else p[1]
            y, h = selective_scan_reference(p[0], d, *p[2:8], delta_softplus=False, state=p[8])
        else:
            y, h = selective_scan_native(*p[:8], delta_softplus=False, state=p[8], delta_proj=p[9] if low_rank else None)
        out[name] = [y, h, *torch.autograd.grad((y * gy).sum() + (h * gh).sum(), p)]
    for a, b in zip(out["native"], out["ref"]):
        assert rel_err(a, b) < 1e-12


def test_the_selective_smoke_call_reaches_the_full_block_code(monkeypatch):
    # the gate's smoke call decides whether "auto" runs the kernel; with 35 channels per group (H 70, G 2) it ran the
    # lane loops only, and 12 mutants of the full-block vector code (forward, adjoint, recompute, ∂W_Δ rows) passed
    # it, caught by the tests alone. Each of its kernel calls must now have a group of >= 64 channels (selective_scan.c's
    # VEC: one full block) and a tail beyond it
    import ssmkit.ops.native.selective as kernel
    from ssmkit.ops.native import gate

    real, widths = kernel.scan_unchecked, []

    def spy(u, delta, A, B, *rest):
        widths.append(u.shape[2] // (B.shape[2] if B.dim() == 4 else 1))  # channels per group
        return real(u, delta, A, B, *rest)

    monkeypatch.setattr(kernel, "scan_unchecked", spy)
    gate._smoke("selective_scan", F32)
    assert widths and all(w > 64 and w % 64 != 0 for w in widths), widths
