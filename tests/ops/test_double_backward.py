"""Second derivatives (``create_graph``: gradient penalties, Hessian-vector products) through every op and backend equal
the reference loop's, with several chunks and initial states: the kernels' backwards compute outside autograd and the
chunked scans recompute from saved states, so each must route a double backward through differentiable ops."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops import causal_conv1d, linear_recurrence, mimo_scan, selective_scan, ssm_scan
from ssmkit.ops.cauchy import cauchy
from ssmkit.ops.rglru import rglru
from ssmkit.ops.ssd import ssd
from tests.conftest import DEVICE

F64, C128 = torch.float64, torch.complex128


def _rand(g, *shape, dtype=F64):
    return torch.randn(*shape, dtype=dtype, generator=g).to(DEVICE).requires_grad_()


def _stable(g, *shape, dtype=C128):  # |a| < 1
    r = 0.5 + 0.45 * torch.rand(*shape, generator=g, dtype=F64)
    a = r * torch.exp(1j * torch.rand(*shape, generator=g, dtype=F64)) if dtype == C128 else r
    return a.to(DEVICE).requires_grad_()


def _cases():
    """name -> (backends, builder, native op): builder(g) -> (inputs, first, run(backend, *inputs) -> outputs)."""
    B, L, H, N = 2, 150, 3, 4  # L > 2 chunks of the default 64

    def scan(g):
        ins = (_rand(g, B, L, H), _stable(g, H, N), _rand(g, H, N, dtype=C128), _rand(g, H, N, dtype=C128),
               _rand(g, B, H, N, dtype=C128), _rand(g, H))
        return ins, 1, lambda bk, u, A, Bb, C, x0, D: ssm_scan(u, A, Bb, C, x0, D, backend=bk)

    def recurrence_varying(g):
        ins = (_stable(g, B, L, H, dtype=F64), _rand(g, B, L, H), _rand(g, B, H))
        return ins, 1, lambda bk, a, b, h0: linear_recurrence(a, b, h0, backend=bk)

    def recurrence_complex(g):
        ins = (_stable(g, H), _rand(g, B, L, H, dtype=C128), _rand(g, B, H, dtype=C128))
        return ins, 1, lambda bk, a, b, h0: linear_recurrence(a, b, h0, backend=bk)

    def selective(g):
        A = (-0.5 - torch.rand(H, N, generator=g, dtype=F64)).to(DEVICE).requires_grad_()
        ins = (_rand(g, B, L, H), _rand(g, B, L, H), A, _rand(g, B, L, N), _rand(g, B, L, N), _rand(g, H),
               _rand(g, B, L, H), _rand(g, H), _rand(g, B, H, N))
        return ins, 2, lambda bk, u, d, A, Bm, C, D, z, b, h0: selective_scan(u, d, A, Bm, C, D, z, b, True, h0, backend=bk)

    def selective_from_u(g):  # Δ, B and C computed from u, as in Mamba: the op's gradients are partial derivatives
        A = (-0.5 - torch.rand(H, N, generator=g, dtype=F64)).to(DEVICE).requires_grad_()
        ins = (_rand(g, B, L, H), _rand(g, H, H), _rand(g, H, 2 * N), A)

        def run(bk, u, W_d, W_bc, A):
            Bm, C = (u @ W_bc).split([N, N], dim=-1)
            return selective_scan(u, u @ W_d, A, Bm, C, None, None, None, True, None, backend=bk)
        return ins, 1, run

    def ssd_case(g):
        dt = (0.05 + 0.5 * torch.rand(B, L, 2, generator=g, dtype=F64)).to(DEVICE).requires_grad_()
        A = (-0.5 - torch.rand(2, generator=g, dtype=F64)).to(DEVICE).requires_grad_()
        ins = (_rand(g, B, L, 2, 3), dt, A, _rand(g, B, L, 1, N), _rand(g, B, L, 1, N), _rand(g, B, 2, 3, N))
        return ins, 2, lambda bk, x, dt, A, Bm, C, h0: ssd(x, dt, A, Bm, C, h0, chunk_size=16, backend=bk)

    def rglru_case(g):  # gates in (0, 1); resets at a tenth of the steps
        resets = torch.rand(B, L, generator=g) < 0.1
        gate = lambda: (0.05 + 0.9 * torch.rand(B, L, H, generator=g, dtype=F64)).to(DEVICE).requires_grad_()  # noqa: E731
        ins = (_rand(g, B, L, H), gate(), gate(), _rand(g, H), _rand(g, B, H))
        return ins, 2, lambda bk, x, r, i, Lam, h0: rglru(x, r, i, Lam, 8.0, h0, resets.to(DEVICE), backend=bk)

    def mimo(g):
        ins = (_rand(g, B, L, H), _stable(g, 5), _rand(g, 5, H, dtype=C128), _rand(g, H, 5, dtype=C128),
               _rand(g, B, 5, dtype=C128), _rand(g, H))
        return ins, 1, lambda bk, u, A, Bb, C, x0, D: mimo_scan(u, A, Bb, C, x0, D, backend=bk)

    def conv(g):
        ins = (_rand(g, B, L, H), _rand(g, H, 4), _rand(g, H), _rand(g, B, H, 3))
        return ins, 1, lambda bk, x, w, b, s: causal_conv1d(x, w, b, s, activation="silu", backend=bk)

    def cauchy_case(g):
        w = (-0.3 + 1j * torch.randn(H, N, generator=g, dtype=F64)).to(DEVICE).requires_grad_()
        ins = (_rand(g, 2, H, N, dtype=C128), _rand(g, H, 7, dtype=C128), w)
        return ins, 1, lambda bk, v, z, w: (cauchy(v, z, w, backend=bk),)

    return {
        "ssm_scan": (("chunked", "fft", "native"), scan, "ssm_scan"),
        "linear_recurrence (time-varying, real)": (("chunked", "native"), recurrence_varying, "linear_recurrence"),
        "linear_recurrence (invariant, complex)": (("chunked", "native"), recurrence_complex, "linear_recurrence"),
        "selective_scan": (("chunked", "native"), selective, "selective_scan"),
        "selective_scan (Δ, B, C from u)": (("chunked", "native"), selective_from_u, "selective_scan"),
        "ssd": (("chunked", "native"), ssd_case, "ssd"),
        "rglru": (("chunked", "native"), rglru_case, "rglru"),
        "mimo_scan": (("chunked", "native"), mimo, "linear_recurrence"),
        "causal_conv1d": (("chunked", "native"), conv, "causal_conv1d"),
        "cauchy": (("chunked", "native"), cauchy_case, "cauchy"),
    }


CASES = _cases()


def _second_order(run, backend, inputs, first):
    """∂/∂inputs of Σ|∂ℓ/∂inputs[:first]|², ℓ = Σ|outputs|² (real parts of complex sums)."""
    outs = [o for o in run(backend, *inputs) if o is not None]
    loss = sum((o.abs() ** 2).sum() for o in outs)
    grads = torch.autograd.grad(loss, inputs[:first], create_graph=True)
    penalty = sum((g.abs() ** 2).sum() for g in grads)
    return torch.autograd.grad(penalty, inputs, allow_unused=True)


def _available(backend: str, op: str) -> bool:
    if backend == "native":
        from ssmkit.ops.native import native_available

        return DEVICE.type == "cpu" and native_available(op, F64)
    return True


@pytest.mark.parametrize("name,backend", [(n, b) for n, (bs, _, _) in CASES.items() for b in bs])  # Triton: test_triton.py
def test_second_derivatives_equal_the_reference(name, backend):
    _, build, op = CASES[name]
    if not _available(backend, op):
        pytest.skip(f"backend {backend!r} cannot run on {DEVICE}")
    inputs, first, run = build(torch.Generator().manual_seed(0))
    want = _second_order(run, "reference", inputs, first)
    got = _second_order(run, backend, inputs, first)
    for i, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), f"input {i}: gradient {'missing' if a is None else 'unexpected'}"
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item(), msg=f"input {i}")
