"""Under torch.compile the Triton kernels of the diagonal scan and the selective scan run as custom ops
(``ssmkit.ops.opaque``), forward and backward.

On the CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), called with small tiles
(its time grows with them); on CUDA (SSMKIT_TEST_DEVICE=cuda) ``"auto"`` picks the selective scan's, the scan's is
forced. Each call is compiled with
``fullgraph=True`` through AOT autograd with recording compilers: the forward graph holds the kernel's forward op, the
backward graph its backward op, and outputs and gradients equal the eager kernels' (float64: 1e-12) and the
reference's, with the final state in the loss or left out. One graph with the length dynamic runs two lengths (the
selective scan's fake implementation: ⌈L/T⌉ checkpoints). SSD's kernel stays out of compiled graphs (its backward
differentiates the chunked path inside the autograd function): a compiled ``"auto"`` SSD names no ssmkit op (GPU).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import ssmkit.ops as ops
from ssmkit.ops.ssd import ssd
from ssmkit.ops.triton_gate import triton_available
from tests.conftest import DEVICE
from tests.ops.compiled import Recorder, assert_close, check_compiled_kernel, run_loss

F64, C128 = torch.float64, torch.complex128
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or not all(triton_available(DEVICE, op, F64) for op in ("ssm_scan", "selective_scan")),
    reason="the Triton kernels run on CUDA, or on the CPU in Triton's interpreter (TRITON_INTERPRET=1)",
)
# on the CPU only a forced backend takes the interpreter; on CUDA "auto" picks the selective scan's kernel but not the
# diagonal scan's (slower there than the FFT path: docs/benchmarks.md), which is forced
KERNEL = {"ssm_scan": "triton", "selective_scan": "triton" if DEVICE.type == "cpu" else None}
SMALL = DEVICE.type == "cpu"  # the interpreter's time grows with the tiles: small ones on the CPU


def _rand(g, *shape, dtype=F64):
    return torch.randn(*shape, dtype=dtype, generator=g).to(DEVICE)


def _cases():
    """name -> (op, builder(g, L) -> (inputs, fn(backend, *inputs) -> outputs)); N = 3 modes in a tile of 4, lengths
    not multiples of the chunks (8 steps on the CPU); a batch of one, as the interpreter's time grows with the grid."""
    Bsz, H, N = 1, 3, 3

    def scan(g, L):
        r = 0.5 + 0.45 * torch.rand(H, N, generator=g, dtype=F64)
        A = (r * torch.exp(1j * torch.rand(H, N, generator=g, dtype=F64))).to(DEVICE)
        ins = (_rand(g, Bsz, L, H), A, _rand(g, H, N, dtype=C128), _rand(g, H, N, dtype=C128),
               _rand(g, Bsz, H, N, dtype=C128), _rand(g, H))

        def fn(bk, u, A, Bb, C, x0, D):
            if bk == "triton" and SMALL:
                from ssmkit.ops.triton.scan import ssm_scan_triton

                return ssm_scan_triton(u, A, Bb, C, x0, D, chunk_size=8, block_h=2)
            return ops.ssm_scan(u, A, Bb, C, x0, D, backend=bk)

        return ins, fn

    def selective(g, L):  # two groups of B, C; every optional input
        A = (-0.5 - torch.rand(4, N, generator=g, dtype=F64)).to(DEVICE)
        ins = (_rand(g, Bsz, L, 4), _rand(g, Bsz, L, 4), A, _rand(g, Bsz, L, 2, N), _rand(g, Bsz, L, 2, N),
               _rand(g, 4), _rand(g, Bsz, L, 4), _rand(g, 4), _rand(g, Bsz, 4, N))

        def fn(bk, u, d, A, Bm, C, D, z, b, h0):
            if bk == "triton" and SMALL:
                from ssmkit.ops.triton.selective import Tiles, selective_scan_triton

                tiles = Tiles(chunk=8, forward_chunk=4, block_h=2, backward_block_h=2)
                return selective_scan_triton(u, d, A, Bm, C, D, z, b, True, h0, tiles=tiles)
            return ops.selective_scan(u, d, A, Bm, C, D, z, b, True, h0, backend=bk)

        return ins, fn

    return {"ssm_scan": ("triton_ssm_scan", scan), "selective_scan": ("triton_selective_scan", selective)}


CASES = _cases()


@pytest.mark.parametrize(
    "name,use_state",  # an unused final state: a compiled backward passes zeros where eager passes None, and the
    # selective kernel's ∂h_{L-1} branch runs on them
    [("ssm_scan", True), ("selective_scan", True), ("selective_scan", False)],
)
def test_compiled_kernel_runs_as_custom_ops_and_equals_eager(name, use_state):
    op, build = CASES[name]
    inputs, fn = build(torch.Generator().manual_seed(0), 13)
    check_compiled_kernel(fn, inputs, op, KERNEL[name], "triton", use_state)


def test_one_compiled_graph_runs_the_kernel_at_two_lengths():
    """The selective scan's fake implementation gives its checkpoints' count, ⌈L/T⌉, in a symbolic L (the diagonal
    scan's is the same expression; the interpreter is too slow to run both here)."""
    op, build = CASES["selective_scan"]
    g = torch.Generator().manual_seed(1)
    rec = Recorder()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(rec.backend)
    _, fn = build(g, 10)
    compiled = torch.compile(fn, fullgraph=True, backend=counter, dynamic=True)
    for L in (10, 19):
        inputs, _ = build(g, L)
        got = run_loss(compiled, KERNEL["selective_scan"], inputs, True)
        ref = run_loss(fn, "reference", inputs, True)
        assert_close([*got[0], *got[1]], [*ref[0], *ref[1]], 1e-9)
    assert counter.frame_count == 1 and f"{op}_forward" in rec.ssmkit_ops(rec.forward)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="GPU test: on the CPU \"auto\" never picks the SSD kernel")
def test_compiled_ssd_keeps_the_chunked_path():
    g = torch.Generator().manual_seed(2)
    Bsz, L, H, P, N = 2, 37, 2, 3, 4
    x, B, C = _rand(g, Bsz, L, H, P), _rand(g, Bsz, L, 1, N), _rand(g, Bsz, L, 1, N)
    dt = (0.1 + torch.rand(Bsz, L, H, generator=g, dtype=F64)).to(DEVICE)
    A = (-0.5 - torch.rand(H, generator=g, dtype=F64)).to(DEVICE)
    rec = Recorder()
    torch._dynamo.reset()
    compiled = torch.compile(ssd, fullgraph=True, backend=rec.backend)
    got = compiled(x, dt, A, B, C)
    assert not rec.ssmkit_ops(rec.forward)
    want = ssd(x, dt, A, B, C, backend="reference")
    assert_close(list(got), list(want), 1e-9)


@pytest.mark.parametrize("L,backward", [(21, "triton_ssm_scan_backward"), (32, "triton_ssm_scan_mm_backward")])
def test_compiled_matmul_form_runs_as_custom_ops_and_equals_eager(L, backward):
    """The diagonal scan's matmul form (ssmkit.ops.triton.scan_mm) under torch.compile: its own forward op, its own
    backward op at whole chunks (the scan form's with a short last chunk), and eager's and the reference's values and
    gradients."""
    from ssmkit.ops.triton.scan import ssm_scan_triton

    _, build = CASES["ssm_scan"]
    inputs, _ = build(torch.Generator().manual_seed(3), L)

    def fn(bk, u, A, Bb, C, x0, D):
        if bk == "triton":
            return ssm_scan_triton(u, A, Bb, C, x0, D, chunk_size=16, intra_chunk="matmul")
        return ops.ssm_scan(u, A, Bb, C, x0, D, backend=bk)

    rec = Recorder()
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=rec.backend, dynamic=False)
    got = run_loss(compiled, "triton", inputs, True)
    assert rec.ssmkit_ops(rec.forward) == {"triton_ssm_scan_mm_forward"}
    assert rec.ssmkit_ops(rec.backward) == {backward}
    eager = run_loss(fn, "triton", inputs, True)
    ref = run_loss(fn, "reference", inputs, True)
    assert_close([*got[0], *got[1]], [*eager[0], *eager[1]], 1e-12)
    assert_close([*got[0], *got[1]], [*ref[0], *ref[1]], 1e-9)
