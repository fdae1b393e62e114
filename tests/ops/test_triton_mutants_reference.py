"""Tests that kill the mutants of the Triton kernels the other interpreter tests let live (the mutation probe of
docs/design.md), each against an independent float64 reference: ssmkit's step-by-step references and autograd
through them.

Sizes are tiny (the CPU runs the kernels in Triton's interpreter, tests/conftest.py) but chosen so that the last
tile is partial, the initial and final states are used and the backward runs; with SSMKIT_TEST_DEVICE=cuda the same
tests run on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.selective import selective_scan_reference
from tests.conftest import DEVICE, rel_err
from tests.ops.test_triton import EVERY_INPUT, needs_triton, selective_values_and_grads

pytestmark = needs_triton


def _softplus_band_inputs(L: int = 21, H: int = 3, N: int = 3, Bsz: int = 2) -> dict:
    """Selective-scan inputs whose δ + b_Δ sweeps [-30, 30]: every step of every channel a different point, the band
    (15, 20] just under softplus's threshold and the points above it included; float64."""
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    bias = torch.tensor([0.5, -0.25, 0.0], dtype=torch.float64)[:H]
    x = torch.linspace(-30.0, 30.0, Bsz * L * H, dtype=torch.float64)  # δ + b_Δ
    x = x[torch.randperm(x.numel(), generator=g)].reshape(Bsz, L, H)
    return {
        "u": r(Bsz, L, H), "delta": x - bias, "A": -(torch.rand(H, N, generator=g, dtype=torch.float64) * 0.05 + 0.01),
        "B": r(Bsz, L, N), "C": r(Bsz, L, N), "D": r(H), "z": r(Bsz, L, H), "delta_bias": bias,
        "state": r(Bsz, H, N),
    }


def test_selective_softplus_near_and_above_its_threshold():
    # mutants: softplus's threshold moved from 20 to 15 in the value or in the derivative (Δ = x there instead of
    # log1p(e^x), 3e-7 apart at x = 15; the derivative 1 instead of e/(1+e)): no other test draws δ + b_Δ past ~4
    from ssmkit.ops.triton.selective import Tiles, selective_scan_triton

    inputs = _softplus_band_inputs()
    x = inputs["delta"] + inputs["delta_bias"]
    assert ((x > 15) & (x <= 20)).sum() >= 5 and (x > 20).sum() >= 5  # the band and the points above it are drawn
    tiles = Tiles(chunk=8, forward_chunk=4, block_h=2, backward_block_h=2)  # L 21: partial last tiles

    def kernel(**a):
        return selective_scan_triton(**a, tiles=tiles)

    names, got = selective_values_and_grads(kernel, inputs, torch.float64, EVERY_INPUT, True)
    _, want = selective_values_and_grads(selective_scan_reference, inputs, torch.float64, EVERY_INPUT, True)
    for name, a, b in zip(names, got, want):
        assert rel_err(a, b) < 1e-11, name


@pytest.mark.parametrize("part", ["final_state", "final_state_gradient", "output"])
def test_the_smoke_call_rejects_a_kernel_off_in_one_output(part, monkeypatch):
    # mutants of the gate: the smoke call's tolerance loosened (a kernel 1e-3 off in y or x_{L-1} passed), or its
    # loss without the final state (a kernel whose gradients through x_{L-1} alone are 1e-3 off passed): "auto" would
    # then have picked a wrong kernel on a GPU
    from ssmkit.ops import triton_gate
    from ssmkit.ops.triton import scan as scan_module

    real = scan_module.ssm_scan_triton

    def off(*args, **kwargs):
        y, x = real(*args, **kwargs)
        if part == "final_state":
            return y, x * (1 + 1e-3)
        if part == "final_state_gradient":  # the same value, its backward scaled by 1 + 1e-3
            return y, x + 1e-3 * (x - x.detach())
        return y * (1 + 1e-3), x

    monkeypatch.setattr(scan_module, "ssm_scan_triton", off)
    with pytest.raises(RuntimeError, match="disagrees with its reference"):
        triton_gate._smoke("ssm_scan", DEVICE, torch.float64)
    monkeypatch.setattr(scan_module, "ssm_scan_triton", real)
    triton_gate._smoke("ssm_scan", DEVICE, torch.float64)  # the true kernel passes


def test_the_carry_across_groups_raises_the_power_in_float64():
    # mutant: the carry between groups of G·T steps raises Ā^{G·T} by complex ** in float32 instead of in float64
    # (rounded once): with |Ā| within 1e-4 of 1 and phases up to 3 rad each of the 31 carries (L 1 024, G·T = 32)
    # adds the float32 power's phase error, ~32·3 rad · 6e-8: y 4.8e-5 off the float64 loop on the same float32
    # inputs that way, 4.7e-7 (and x_{L-1} 6.3e-7) with the float64 power
    from ssmkit.ops.scan import ssm_scan_reference
    from ssmkit.ops.triton.scan import ssm_scan_triton

    g = torch.Generator().manual_seed(0)
    H, N, L = 2, 4, 1024
    theta = torch.linspace(0.5, 3.0, H * N, dtype=torch.float64).reshape(H, N)
    radius = 1 - torch.logspace(-5, -4, H * N, dtype=torch.float64).reshape(H, N)
    A = torch.polar(radius, theta)  # (H, N)
    B = torch.randn(H, N, generator=g, dtype=torch.complex128)
    C = torch.randn(H, N, generator=g, dtype=torch.complex128)
    u = torch.randn(1, L, H, generator=g, dtype=torch.float64)
    u, A, B, C = u.float(), A.to(torch.complex64), B.to(torch.complex64), C.to(torch.complex64)  # the kernel's inputs
    want_y, want_x = ssm_scan_reference(u.double(), *(t.to(torch.complex128) for t in (A, B, C)))  # on the same
    y, x = ssm_scan_triton(*(t.to(DEVICE) for t in (u, A, B, C)), chunk_size=16, chunks_per_program=2)
    assert rel_err(y.cpu().double(), want_y) < 3e-6
    assert rel_err(x.cpu().to(torch.complex128), want_x) < 3e-6
