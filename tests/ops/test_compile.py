"""torch.compile(fullgraph=True) captures the fast paths whole, forward and backward.

The ``aot_eager`` backend runs dynamo's capture (a graph break fails ``fullgraph=True``) and AOT autograd's trace
of the backward, through every custom autograd.Function, without generating code, so it is quick on a CPU. The
compiled results and gradients are compared with eager ones (float32; the same kernels in the same order, so
1e-6 relative only absorbs a reordered reduction). The default inductor backend was tried by hand (see
docs/design.md): it compiles every case here, in seconds to half a minute each on 2 cores.
"""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.ops.backend import use_backend
from tests.conftest import rel_err

Bsz, L, H, N = 2, 37, 3, 4  # L = 37: a partial last chunk and an odd FFT length
TOL = 1e-6


def _c(g, *shape):
    return torch.randn(*shape, dtype=torch.complex64, generator=g)


def cases():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(Bsz, L, H, generator=g)
    A = torch.polar(0.5 + 0.45 * torch.rand(H, N, generator=g), math.pi * torch.rand(H, N, generator=g))
    Bb, C, s0, D = _c(g, H, N), _c(g, H, N), _c(g, Bsz, H, N), torch.randn(H, generator=g)
    Lam = torch.complex(-torch.rand(H, 2, generator=g) - 0.1, torch.randn(H, 2, generator=g))
    P, Bd, Cd, dt = 0.5 * _c(g, 1, H, 2), _c(g, 1, H, 2), _c(g, 1, H, 2), torch.full((H,), 0.1)
    A_dense, B_dense = 0.3 * _c(g, H, N, N), _c(g, H, N)
    a_tv, a_ti, h0 = torch.rand(Bsz, L, H, generator=g), torch.rand(H, generator=g), torch.randn(Bsz, H, generator=g)
    return {
        "ssm_scan-chunked": (lambda *a: ops.ssm_scan(*a, backend="chunked"), (u, A, Bb, C, s0, D)),
        "ssm_scan-fft": (lambda *a: ops.ssm_scan(*a, backend="fft"), (u, A, Bb, C, s0, D)),
        "ssm_scan-fft-no-state": (lambda *a: ops.ssm_scan(*a, return_state=False, backend="fft")[0], (u, A, Bb, C, s0, D)),
        "dplr_kernel": (lambda *a: ops.dplr_kernel(*a, L), (Lam, P, Bd, Cd, dt)),
        "causal_conv": (ops.causal_conv, (u, torch.randn(H, L, generator=g))),
        "bidirectional_conv": (ops.bidirectional_conv, (u, torch.randn(2, H, L, generator=g))),
        "dense_final_state": (ops.dense_final_state, (u, A_dense, B_dense)),
        "vandermonde": (lambda *a: ops.vandermonde(*a, L), (C, A)),
        "linear_recurrence-varying": (ops.linear_recurrence, (a_tv, u, h0)),
        "linear_recurrence-invariant": (ops.linear_recurrence, (a_ti, u, h0)),
    }


def run(fn, args):
    leaves = [a.clone().requires_grad_() for a in args]
    out = fn(*leaves)
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o is not None]
    loss = sum((o.abs() ** 2).sum() for o in outs)
    return [o.detach() for o in outs], torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("name", list(cases()))
def test_fullgraph_capture_forward_and_backward(name):
    fn, args = cases()[name]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    outs, grads = run(compiled, args)
    outs_ref, grads_ref = run(fn, args)
    for got, want in zip([*outs, *grads], [*outs_ref, *grads_ref], strict=True):
        assert got.shape == want.shape and rel_err(got, want) < TOL


def test_context_backend_is_read_when_the_graph_is_traced():
    """dynamo cannot guard a ContextVar: the context's backend at trace time is baked into the graph, while a
    per-call backend= is a constant that dynamo guards (documented in ssmkit.ops.backend)."""
    fn, args = cases()["ssm_scan-chunked"]
    u, A, Bb, C, s0, D = args
    y_ref = ops.ssm_scan_reference(u, A, Bb, C, s0, D)[0]
    y_chunked = ops.ssm_scan(u, A, Bb, C, s0, D, backend="chunked")[0]
    assert not torch.equal(y_ref, y_chunked)  # the two paths round differently, so they can be told apart
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: ops.ssm_scan(*a)[0], fullgraph=True, backend="aot_eager")
    with use_backend("reference"):
        assert torch.equal(compiled(*args), y_ref)  # traced under "reference"
    assert torch.equal(compiled(*args), y_ref)  # still the traced path outside the block (no guard)
    torch._dynamo.reset()
    per_call = torch.compile(lambda b, *a: ops.ssm_scan(*a, backend=b)[0], fullgraph=True, backend="aot_eager")
    assert torch.equal(per_call("reference", *args), y_ref)
    assert torch.equal(per_call("chunked", *args), y_chunked)  # a new constant: recompiled


def test_ssd_compiled_once_runs_at_other_lengths():
    """A compiled SSD scan called at a second length is recompiled with the length symbolic (dynamo's automatic
    dynamic shapes, as for batches of varying length). The chunk count of the recurrence over chunks, -(-L // T)
    with T = min(chunk_size, L), then failed dynamo's own guard check ("Guard failed on the same frame it was
    created", an AssertionError) where it was written into a reshape; Mamba-2 under torch.compile failed at its
    second length. Each length's output against the step-by-step reference."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda *t: ops.ssd_chunked(*t, chunk_size=8), fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(0)
    for length in (20, 33, 47):  # the first compile is static; 33 recompiles with L symbolic, 47 reuses that graph
        x = torch.randn(2, length, 2, 3, dtype=torch.float64, generator=g)
        dt = torch.rand(2, length, 2, dtype=torch.float64, generator=g)
        A = -torch.rand(2, dtype=torch.float64, generator=g)
        Bm, Cm = (torch.randn(2, length, 1, 4, dtype=torch.float64, generator=g) for _ in range(2))
        h0 = torch.randn(2, 2, 3, 4, dtype=torch.float64, generator=g)
        y, h = compiled(x, dt, A, Bm, Cm, h0)
        y_ref, h_ref = ops.ssd_reference(x, dt, A, Bm, Cm, h0)
        assert rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12
