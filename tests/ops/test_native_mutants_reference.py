"""What a mutation probe of the native C kernels (diagonal_scan.c, selective_scan.c, ssd_scan.c) found the other tests
would not catch: each test here kills mutants that passed them, each against the float64 loop of the op.

The selective scan's float32 exp(Δ A) by 2^(Δ A log2 e) without its upper clamp (exp2_le0) is right only for
Δ A ≤ 0 on builds without AVX-512 (the AVX-512 vector form scales by 2^k exactly): the kernel takes it when softplus
makes Δ ≥ 0 and A ≤ 0, and must not without softplus, where a negative δ + b_Δ gives Δ A > 0 (a mutant that took it
there passed every other test; killed here on an AVX2 build)."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.native import native_available, selective_scan_native
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
