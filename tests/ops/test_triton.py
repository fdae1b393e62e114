"""The Triton kernels (ssmkit.ops.triton) against their references, and the gate that enables them.

On the CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py before torch and
triton are imported: the interpreter cannot be switched on later), at
tiny sizes that are not multiples of the tiles (L = 37 with chunks of 16, H = 3 with blocks of 2 channels, N = 5
modes in a tile of 8; the selective scan: L = 37 in forward tiles of 8 and checkpoint chunks of 32, P = 3 channels per group in
blocks of 4, N = 5 in a tile of 8); these run in CI wherever triton is installed (it is in the ``dev`` extra). The tests marked
``gpu`` run with SSMKIT_TEST_DEVICE=cuda at real sizes (scripts/gpu_check.sh) and are skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import threading

import pytest
import torch

from ssmkit.ops.scan import ssm_scan, ssm_scan_reference
from ssmkit.ops.selective import selective_scan, selective_scan_chunked, selective_scan_reference
from ssmkit.ops.ssd import ssd, ssd_chunked, ssd_reference
from ssmkit.ops.triton_gate import prefer_triton, triton_status
from tests.conftest import DEVICE, rel_err
from tests.triton_interp import TRITON_GENERIC_SCAN, scan_every_lane_at_once

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton, or the dev extra)")
on_gpu = pytest.mark.skipif(DEVICE.type != "cuda", reason="GPU test: set SSMKIT_TEST_DEVICE=cuda on a machine with CUDA")
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}  # float32: ~10 roundings per step, float64 reference
COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def scan_inputs(kind: str, L: int = 37, H: int = 3, N: int = 5, Bsz: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """u (B, L, H), Ā, B̄, C (H, N), x_{-1} (B, H, N), D (H,) in float64 / complex128 (or real), on the CPU."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    u = torch.randn(Bsz, L, H, generator=g, dtype=f64)
    D = torch.randn(H, generator=g, dtype=f64)
    if kind == "complex":
        A = torch.polar(torch.rand(H, N, generator=g, dtype=f64) * 0.35 + 0.6, torch.randn(H, N, generator=g, dtype=f64) * 2)
        B, C = (torch.randn(H, N, generator=g, dtype=torch.complex128) for _ in range(2))
        x0 = torch.randn(Bsz, H, N, generator=g, dtype=torch.complex128)
    else:
        A = torch.rand(H, N, generator=g, dtype=f64) * 1.8 - 0.9
        B, C = (torch.randn(H, N, generator=g, dtype=f64) for _ in range(2))
        x0 = torch.randn(Bsz, H, N, generator=g, dtype=f64)
    return [u, A, B, C, x0, D]


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(device=DEVICE, dtype=COMPLEX[dtype] if t.is_complex() else dtype)


def scan_values_and_grads(fn, inputs, with_state: bool, with_D: bool, seed: int = 1):
    """y, x_L and the gradients of a random linear function of both, for every input that is given."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    u, A, B, C, x0, D = leaves
    y, x = fn(u, A, B, C, x0 if with_state else None, D if with_D else None)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
    gx = torch.randn(x.shape, generator=g, dtype=torch.complex128 if x.is_complex() else torch.float64).to(x)
    loss = (y * gy).sum() + (x * gx.conj()).real.sum()
    used = [u, A, B, C] + ([x0] if with_state else []) + ([D] if with_D else [])
    return [y, x, *torch.autograd.grad(loss, used)]


# ----------------------------------------------------------------------------------------------------
# the gate
# ----------------------------------------------------------------------------------------------------


def test_forced_triton_without_cuda_or_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    u, A, B, C, x0, D = scan_inputs("complex", L=5)
    with pytest.raises(RuntimeError, match=r"ssm_scan: backend 'triton' was forced but cannot run on cpu.*TRITON_INTERPRET=1"):
        ssm_scan(u, A, B, C, x0, D, backend="triton")
    ok, reason = triton_status("cpu", "ssd", torch.float32)
    assert not ok and "CUDA devices only" in reason
    assert not triton_status("meta")[0] and "CUDA devices only" in triton_status("meta")[1]


def test_auto_never_picks_triton_on_the_cpu():
    u = torch.randn(2, 5, 3)
    assert not any(prefer_triton(u, op) for op in ("ssm_scan", "ssd", "selective_scan"))


@needs_triton
@pytest.mark.skipif(DEVICE.type != "cpu", reason="the interpreter is the CPU's Triton")
def test_the_interpreter_is_enabled_by_a_smoke_call_per_op_and_dtype():
    for op in ("ssm_scan", "ssd", "selective_scan"):
        for dtype in (torch.float32, torch.float64):
            assert triton_status("cpu", op, dtype) == (True, ""), (op, dtype)
    assert triton_status("cpu", "ssm_scan", torch.float16) == (False, "the Triton kernels take float32 or float64 inputs; got torch.float16")


@needs_triton
@pytest.mark.skipif(TRITON_GENERIC_SCAN is None or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="Triton's interpreter (TRITON_INTERPRET=1) with its ScanOps.generic_scan")
def test_the_faster_interpreter_scan_is_bitwise_the_same(monkeypatch):
    # every kernel with an associative scan (the scan form's forward and reverse backward, the matmul form's along
    # axis 1 both ways, the selective scan's three over (T, BH, NP) tiles, the SSD backward's exclusive sum), values
    # and gradients, by scan_every_lane_at_once (the other tests') and by Triton's own element-by-element scan: the
    # same bits
    from triton.runtime import interpreter

    from ssmkit.ops.triton.scan import ssm_scan_triton
    from ssmkit.ops.triton.selective import Tiles, selective_scan_triton
    from ssmkit.ops.triton.ssd import ssd_triton

    def run():
        scan = [cast(t, torch.float64) for t in scan_inputs("complex", L=9, H=2, N=3, Bsz=1)]
        mm = [cast(t, torch.float64) for t in scan_inputs("real", L=32, H=1, N=2, Bsz=1)]
        tiles = Tiles(chunk=4, forward_chunk=2, block_h=2, backward_block_h=2)
        return [
            *scan_values_and_grads(lambda *a: ssm_scan_triton(*a, chunk_size=4, chunks_per_program=1), scan, True, True),
            *scan_values_and_grads(lambda *a: ssm_scan_triton(*a, chunk_size=16, intra_chunk="matmul"), mm, True, True),
            *selective_values_and_grads(lambda **a: selective_scan_triton(**a, tiles=tiles),
                                        selective_inputs(L=5, H=3, N=2, G=None, Bsz=1), torch.float64, EVERY_INPUT,
                                        True)[1],
            *ssd_values_and_grads(ssd_triton, [cast(t, torch.float64) for t in ssd_inputs(L=5, H=1, P=2, G=1, N=2,
                                                                                          Bsz=1)]),
        ]

    assert interpreter.ScanOps.generic_scan is scan_every_lane_at_once  # conftest's autouse fixture
    fast = run()
    calls = []
    monkeypatch.setattr(interpreter.ScanOps, "generic_scan", lambda *a: calls.append(1) or TRITON_GENERIC_SCAN(*a))
    slow = run()
    assert len(calls) >= 30 and len(fast) == len(slow) == 35  # every launch's scans by Triton's loop
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert a.dtype == b.dtype and torch.equal(a, b), i


# ----------------------------------------------------------------------------------------------------
# the fused diagonal scan
# ----------------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize(
    "dtype,kind,with_state,with_D",
    [
        (torch.float32, "complex", True, True),
        (torch.float64, "complex", True, True),
        (torch.float64, "complex", False, False),
        (torch.float64, "real", True, True),
    ],
)
def test_scan_values_and_gradients_equal_the_reference(dtype, kind, with_state, with_D):
    inputs = scan_inputs(kind)
    got = scan_values_and_grads(
        lambda *a: ssm_scan(*a, backend="triton"), [cast(t, dtype) for t in inputs], with_state, with_D
    )
    want = scan_values_and_grads(ssm_scan_reference, inputs, with_state, with_D)
    for name, a, b in zip(["y", "x_L", "u", "A", "B", "C", "x0", "D"], got, want):
        assert a.dtype == cast(b, dtype).dtype, name
        assert rel_err(a, b) < TOL[dtype], name


@needs_triton
@pytest.mark.parametrize("L", [5, 32, 33])  # shorter than a chunk, a multiple of it, one step past it
def test_scan_at_chunk_boundaries(L):
    from ssmkit.ops.triton.scan import ssm_scan_triton

    u, A, B, C, x0, D = (cast(t, torch.float64) for t in scan_inputs("complex", L=L, H=5, N=3))
    y, x = ssm_scan_triton(u, A, B, C, x0, D, chunk_size=16, block_h=4)
    y_ref, x_ref = ssm_scan_reference(u, A, B, C, x0, D)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(x, x_ref) < 1e-12
    y, none = ssm_scan_triton(u, A, B, C, x0, D, return_state=False)
    assert none is None and rel_err(y, y_ref) < 1e-12


@needs_triton
@pytest.mark.parametrize(
    "dtype,L,G",
    [
        (torch.float64, 37, 1),  # five chunks of 8 steps, five groups: the last group one short chunk
        (torch.float64, 37, 2),  # three groups, the last one chunk
        (torch.float64, 32, 2),  # two full groups
        (torch.float64, 37, 5),  # one group: no carry pass
        (torch.float64, 5, 1),  # one short chunk
        (torch.float32, 37, 2),
    ],
)
def test_scan_in_groups_of_chunks_equals_the_reference(dtype, L, G, monkeypatch):
    # the grid cut along the sequence (passes A, B, C of ssmkit.ops.triton.scan): values and every gradient
    from ssmkit.ops.triton import scan as scan_module

    carries = []
    for name in ("_group_starts", "_group_adjoints"):
        real = getattr(scan_module, name)
        monkeypatch.setattr(scan_module, name, lambda *a, _f=real, _n=name: carries.append(_n) or _f(*a))
    inputs = scan_inputs("complex", L=L)
    fn = lambda *a: scan_module.ssm_scan_triton(*a, chunk_size=8, chunks_per_program=G)  # noqa: E731
    got = scan_values_and_grads(fn, [cast(t, dtype) for t in inputs], True, True)
    want = scan_values_and_grads(ssm_scan_reference, inputs, True, True)
    for name, a, b in zip(["y", "x_L", "u", "A", "B", "C", "x0", "D"], got, want):
        assert rel_err(a, b) < TOL[dtype], name
    groups = -(-(-(-L // 8)) // G)
    assert carries == ([] if groups == 1 else ["_group_starts", "_group_adjoints"])


@needs_triton
@pytest.mark.parametrize("dtype,kind", [(torch.float64, "complex"), (torch.float64, "real"), (torch.float32, "complex")])
def test_scan_matmul_form_equals_the_reference(dtype, kind, monkeypatch):
    # the forward's chunk products by tl.dot (ssmkit.ops.triton.scan_mm): L 37 in chunks of 16 (a short last chunk),
    # 5 modes padded to 16; values and every gradient (with a short last chunk the backward is the scan form's)
    from ssmkit.ops.triton.scan import ssm_scan_triton

    from ssmkit.ops.triton import scan_mm

    monkeypatch.setattr(scan_mm, "_backward_mm_kernel", None)  # L 37 is no multiple of 16: never called
    inputs = scan_inputs(kind)
    fn = lambda *a: ssm_scan_triton(*a, chunk_size=16, intra_chunk="matmul")  # noqa: E731
    got = scan_values_and_grads(fn, [cast(t, dtype) for t in inputs], True, True)
    want = scan_values_and_grads(ssm_scan_reference, inputs, True, True)
    for name, a, b in zip(["y", "x_L", "u", "A", "B", "C", "x0", "D"], got, want):
        assert a.dtype == cast(b, dtype).dtype, name
        assert rel_err(a, b) < TOL[dtype], name


@needs_triton
@pytest.mark.parametrize(
    "dtype,L,G,kind",
    [
        (torch.float64, 32, None, "complex"),  # two chunks of 16, one block
        (torch.float64, 640, 38, "complex"),  # 40 chunks: one group of three blocks (16, 16, 8)
        (torch.float64, 640, 16, "real"),  # three groups (16, 16, 8 chunks)
        (torch.float32, 64, None, "complex"),
    ],
)
def test_scan_matmul_backward_equals_the_reference(dtype, L, G, kind, monkeypatch):
    # L a multiple of the chunk: the backward in the matmul form too (∂u by the transposed Toeplitz product, the
    # parameters' gradients from per-chunk sums and the cross-correlations of u and dy); values and every gradient
    from ssmkit.ops.triton import scan_mm
    from ssmkit.ops.triton.scan import ssm_scan_triton

    ran = []
    real = scan_mm._backward_mm_kernel
    monkeypatch.setattr(scan_mm, "_backward_mm_kernel", lambda *a: ran.append(1) or real(*a))
    inputs = scan_inputs(kind, L=L, H=2, N=5, Bsz=2)
    fn = lambda *a: ssm_scan_triton(*a, chunk_size=16, chunks_per_program=G, intra_chunk="matmul")  # noqa: E731
    got = scan_values_and_grads(fn, [cast(t, dtype) for t in inputs], True, True)
    want = scan_values_and_grads(ssm_scan_reference, inputs, True, True)
    for name, a, b in zip(["y", "x_L", "u", "A", "B", "C", "x0", "D"], got, want):
        assert rel_err(a, b) < TOL[dtype], name
    assert ran == [1]


@needs_triton
@pytest.mark.parametrize("case", ["out_of_resources", "many_modes"])
def test_scan_matmul_backward_falls_back_to_the_scan_form(case, monkeypatch):
    # a launch refused for its shared memory (OutOfResources, raised before anything runs: another Triton may stage
    # more than the one the limits were measured with), or more than MM_BACKWARD_MODES modes (40: NP 64), at whole
    # chunks: the scan form's backward, with the same gradients
    from triton.runtime.errors import OutOfResources

    from ssmkit.ops.triton import scan_mm
    from ssmkit.ops.triton.scan import ssm_scan_triton

    calls = []

    def refuse(*a):
        calls.append(1)
        raise OutOfResources(300_000, 232_448, "shared memory")

    monkeypatch.setattr(scan_mm, "_backward_mm_kernel", refuse)
    N = 5 if case == "out_of_resources" else 40
    inputs = scan_inputs("complex", L=32, H=2, N=N, Bsz=1)
    fn = lambda *a: ssm_scan_triton(*a, chunk_size=16, intra_chunk="matmul")  # noqa: E731
    got = scan_values_and_grads(fn, [cast(t, torch.float64) for t in inputs], True, True)
    want = scan_values_and_grads(ssm_scan_reference, inputs, True, True)
    for name, a, b in zip(["y", "x_L", "u", "A", "B", "C", "x0", "D"], got, want):
        assert rel_err(a, b) < TOL[torch.float64], name
    assert calls == ([1] if case == "out_of_resources" else [])


@needs_triton
@pytest.mark.parametrize("G,N", [(38, 5), (32, 5), (None, 40), (None, 5)])
def test_scan_matmul_form_in_blocks_and_groups(G, N):
    # L 600 in 38 chunks of 16: one group of three blocks of 16 chunks (the last of 6), two groups (32 chunks, 6), 40
    # modes (NP 64, chunks of 32), and the planned groups (16 chunks each); values and the final state, no gradient
    from ssmkit.ops.triton.scan import ssm_scan_triton

    for kind in ("complex", "real"):
        u, A, B, C, x0, D = inputs = scan_inputs(kind, L=600, H=2, N=N, Bsz=1)
        chunk = None if N == 40 else 16
        with torch.no_grad():
            y, x = ssm_scan_triton(*(cast(t, torch.float64) for t in inputs), chunk_size=chunk, chunks_per_program=G,
                                   intra_chunk="matmul")
        y_ref, x_ref = ssm_scan_reference(u, A, B, C, x0, D)
        assert rel_err(y, y_ref) < 1e-12 and rel_err(x, x_ref) < 1e-12, kind


@needs_triton
def test_scan_matmul_form_rejects_what_it_cannot_take():
    from ssmkit.ops.triton.scan import ssm_scan_triton

    u, A, B, C, _, _ = (cast(t, torch.float64) for t in scan_inputs("complex", L=5))
    with pytest.raises(ValueError, match="intra_chunk must be 'scan' or 'matmul'; got 'dot'"):
        ssm_scan_triton(u, A, B, C, intra_chunk="dot")
    with pytest.raises(ValueError, match="block_h applies to intra_chunk='scan' only"):
        ssm_scan_triton(u, A, B, C, block_h=2, intra_chunk="matmul")
    with pytest.raises(ValueError, match="needs chunk_size >= 16"):
        ssm_scan_triton(u, A, B, C, chunk_size=8, intra_chunk="matmul")


@needs_triton
def test_scan_groups_fill_the_device():
    from ssmkit.ops.triton.scan import DEFAULT_SMS, PROGRAMS_PER_SM, plan_groups

    target = DEFAULT_SMS * PROGRAMS_PER_SM  # programs aimed at off CUDA
    cpu = torch.device("cpu")
    for Bsz, H, BH, n_chunks in [(1, 128, 2, 128), (1, 1, 1, 5000), (8, 128, 2, 128), (64, 768, 2, 32), (3, 5, 2, 7)]:
        rows = Bsz * -(-H // BH)
        G = plan_groups(Bsz, H, BH, n_chunks, cpu, None)
        groups = -(-n_chunks // G)
        assert 1 <= G <= n_chunks
        if rows >= target:
            assert G == n_chunks  # enough programs without cutting the sequence
        else:  # about as many programs as the device wants, or one per chunk (G rounds up: at least half of them)
            assert 2 * rows * groups > min(target, rows * n_chunks)
            assert groups <= -(-target // rows)  # and not more
    assert plan_groups(1, 3, 2, 10, cpu, 4) == 4 and plan_groups(1, 3, 2, 10, cpu, 40) == 10  # asked for: kept


@needs_triton
def test_scan_rejects_a_bad_chunks_per_program():
    from ssmkit.ops.triton.scan import ssm_scan_triton

    u, A, B, C, _, _ = (cast(t, torch.float64) for t in scan_inputs("complex", L=5))
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="chunks_per_program must be a positive int or None"):
            ssm_scan_triton(u, A, B, C, chunks_per_program=bad)


@needs_triton
@pytest.mark.parametrize(
    "L,options",
    [
        (20, None),  # through ssm_scan: one sequential walk
        (20, dict(chunk_size=4, chunks_per_program=1)),  # the carry across the five groups by Ā^4 = 1/16
        (40, dict(chunk_size=16, intra_chunk="matmul")),  # the chunk products by tl.dot, three chunks
    ],
)
def test_scan_hand_computed(L, options):
    # one real mode, Ā = 1/2, B̄ = C = 1, x_{-1} = 2, an impulse: y_t = 2^-t + 2·2^-(t+1) = 2^(1-t) exactly
    from ssmkit.ops.triton.scan import ssm_scan_triton

    u = torch.zeros(1, L, 1, dtype=torch.float64, device=DEVICE)
    u[0, 0, 0] = 1.0
    one = torch.ones(1, 1, dtype=torch.float64, device=DEVICE)
    if options is None:
        y, x = ssm_scan(u, 0.5 * one, one, one, 2 * one[None], backend="triton")
    else:
        y, x = ssm_scan_triton(u, 0.5 * one, one, one, 2 * one[None], **options)
    # to 4 ulp: exact in the CPU interpreter, while the compiled float64 kernel on an H200 (Triton 3.6) differed in the
    # last bits (its exp and associative-scan arithmetic are the GPU's, not numpy's)
    t = torch.arange(L, dtype=torch.float64)
    exact = dict(rtol=4 * torch.finfo(torch.float64).eps, atol=0.0)
    torch.testing.assert_close(y[0, :, 0].cpu(), torch.ldexp(torch.ones(L, dtype=torch.float64), 1 - t), **exact)
    torch.testing.assert_close(x.cpu(), torch.full((1, 1, 1), 2.0 ** (2 - L), dtype=torch.float64), **exact)


@needs_triton
def test_scan_with_a_large_state_shrinks_the_default_tiles():
    from ssmkit.ops.triton.scan import fit_tiles

    # a program's tiles keep S4D's T·BH·NP = 32·2·32; tiles given explicitly are kept
    assert [fit_tiles(NP) for NP in (2, 32, 64, 128, 256)] == [(32, 2), (32, 2), (32, 1), (16, 1), (8, 1)]
    assert fit_tiles(128, chunk_size=64, block_h=4) == (64, 4) and fit_tiles(128, chunk_size=64) == (64, 1)
    # 70 complex modes: NP 128, chunks of 16 (L 21: a full chunk and a part), values and every gradient (one channel,
    # batch 2: under the interpreter each program is a numpy loop; H 3 and L 37 took a minute)
    inputs = [cast(t, torch.float64) for t in scan_inputs("complex", L=21, H=1, N=70)]
    got = scan_values_and_grads(lambda *a: ssm_scan(*a, backend="triton"), inputs, True, True)
    want = scan_values_and_grads(ssm_scan_reference, inputs, True, True)
    for name, a, b in zip(["y", "x_L", "u", "A", "B", "C", "x0", "D"], got, want):
        assert rel_err(a, b) < TOL[torch.float64], name


@needs_triton
def test_scan_rejects_tiles_that_are_not_powers_of_two():
    from ssmkit.ops.triton.scan import ssm_scan_triton

    u, A, B, C, _, _ = (cast(t, torch.float64) for t in scan_inputs("complex", L=5))
    with pytest.raises(ValueError, match="chunk_size must be a power of two"):
        ssm_scan_triton(u, A, B, C, chunk_size=12)
    with pytest.raises(ValueError, match="block_h must be a power of two"):
        ssm_scan_triton(u, A, B, C, block_h=3)


# ----------------------------------------------------------------------------------------------------
# the chunked SSD
# ----------------------------------------------------------------------------------------------------


def ssd_inputs(L: int = 37, H: int = 4, P: int = 3, G: int = 2, N: int = 5, Bsz: int = 2, seed: int = 0):
    """x (B, L, H, P), Δ (B, L, H), A (H,), B and C (B, L, G, N), h0 (B, H, P, N), float64 on the CPU."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    return [
        torch.randn(Bsz, L, H, P, generator=g, dtype=f64),
        torch.nn.functional.softplus(torch.randn(Bsz, L, H, generator=g, dtype=f64)),
        -(torch.rand(H, generator=g, dtype=f64) * 3 + 0.5),
        torch.randn(Bsz, L, G, N, generator=g, dtype=f64),
        torch.randn(Bsz, L, G, N, generator=g, dtype=f64),
        torch.randn(Bsz, H, P, N, generator=g, dtype=f64),
    ]


def ssd_values_and_grads(fn, inputs, seed: int = 1):
    leaves = [t.clone().requires_grad_() for t in inputs]
    y, h = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
    gh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h)
    return [y, h, *torch.autograd.grad((y * gy).sum() + (h * gh).sum(), leaves)]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssd_values_and_gradients_equal_the_reference(dtype):
    inputs = ssd_inputs()
    got = ssd_values_and_grads(lambda *a: ssd(*a, chunk_size=16, backend="triton"), [cast(t, dtype) for t in inputs])
    want = ssd_values_and_grads(ssd_reference, inputs)
    for name, a, b in zip(["y", "h_L", "x", "dt", "A", "B", "C", "h0"], got, want):
        assert a.dtype == dtype, name
        assert rel_err(a, b) < TOL[dtype], name


@needs_triton
@pytest.mark.parametrize("chunk_size", [5, 256])  # tiles 16 and 64: any chunk length is accepted
def test_ssd_without_initial_state_and_any_chunk_length(chunk_size):
    x, dt, A, B, C, _ = (cast(t, torch.float64) for t in ssd_inputs(L=21, H=3, G=1))
    y, h = ssd(x, dt, A, B, C, chunk_size=chunk_size, backend="triton")
    y_ref, h_ref = ssd_reference(x, dt, A, B, C)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12


@needs_triton
def test_ssd_halves_its_tiles_when_a_launch_runs_out_of_shared_memory(monkeypatch):
    # The SSD tiles' shared memory was measured with one Triton version; another may need more and refuse the launch
    # (OutOfResources, raised before anything runs) at tiles the gate's tiny smoke call never uses. The launch is
    # retried with the chunk, then the channels, halved; here a stand-in launcher refuses anything above 16 x 16.
    from triton.runtime.errors import OutOfResources

    from ssmkit.ops.triton import ssd as ssd_module

    # the gate's verdict first: its smoke call (made once per process, at the first forced or "auto" call) would
    # otherwise go through the stand-in below and add its own (16, 16) launch (it did, first on an H200)
    assert triton_status(DEVICE, "ssd", torch.float32) == (True, "")
    kernel, tried = ssd_module._ssd_fwd_kernel, []

    class Tight:  # the kernel's launcher, refusing tiles above (T, BP) = (16, 16) as a GPU refuses too much shared memory
        def __getitem__(self, grid):
            def launch(*args, **options):
                tried.append((options["T"], options["BP"]))
                if options["T"] * options["BP"] > 256:
                    raise OutOfResources(300_000, 232_448, "shared memory")
                return kernel[grid](*args, **options)

            return launch

    monkeypatch.setattr(ssd_module, "_ssd_fwd_kernel", Tight())
    monkeypatch.setattr(ssd_module, "_FITTED", {}, raising=False)
    x, dt, A, B, C, h0 = (cast(t, torch.float32) for t in ssd_inputs(L=37, H=2, P=20, G=1))  # P 20: 32 channels a tile
    y_ref, h_ref = ssd_reference(x, dt, A, B, C, h0)
    for _ in range(2):
        y, h = ssd(x, dt, A, B, C, h0, chunk_size=64, backend="triton")
        assert rel_err(y, y_ref) < TOL[torch.float32] and rel_err(h, h_ref) < TOL[torch.float32]
    assert tried == [(64, 32), (32, 32), (16, 32), (16, 16), (16, 16)]  # the second call starts at the tiles that ran


@needs_triton
@pytest.mark.parametrize("tiles", [(16, 16, 4), (16, 32, 8), (32, 16, 2), (64, 32, 8)])
def test_ssd_at_explicit_tiles_equals_the_reference(tiles):
    # the tiles `ssmkit bench gpu --ssd-tiles` times: any chunk / channels / warps computes the same scan, values and
    # gradients (P 20 and L 37: neither a multiple of the channels nor of the chunk)
    from ssmkit.ops.triton.ssd import Tiles, ssd_triton

    inputs = [cast(t, torch.float64) for t in ssd_inputs(L=37, H=2, P=20, G=1)]
    got = ssd_values_and_grads(lambda *a: ssd_triton(*a, tiles=Tiles(*tiles)), inputs)
    want = ssd_values_and_grads(ssd_reference, inputs)
    for name, a, b in zip(["y", "h_L", "x", "dt", "A", "B", "C", "h0"], got, want):
        assert rel_err(a, b) < TOL[torch.float64], name


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [dict(L=37, H=4, P=3, G=2, N=5), dict(L=16, H=2, P=20, G=1, N=17),
                                   dict(L=50, H=6, P=7, G=3, N=4, Bsz=1)])
def test_ssd_backward_kernel_equals_the_reference(dtype, shape, monkeypatch):
    # the backward kernel (from the chunk-start states the forward kept) against the float64 reference's autograd, at
    # lengths that are no multiple of its chunk, channels that are none of its 16 per program, groups of heads
    # sharing B and C; counted, so that a silent fall back to the recompute path fails
    import ssmkit.ops.triton.ssd_backward as backward_module
    from ssmkit.ops.triton.ssd import ssd_triton

    calls = []
    kernel = backward_module.ssd_backward_kernel
    monkeypatch.setattr(backward_module, "ssd_backward_kernel", lambda *a: calls.append(a[8]) or kernel(*a))
    inputs = ssd_inputs(**shape)
    got = ssd_values_and_grads(lambda *a: ssd_triton(*a), [cast(t, dtype) for t in inputs])
    want = ssd_values_and_grads(ssd_reference, inputs)
    assert calls == [16]  # one backward, at the backward's chunk
    for name, a, b in zip(["y", "h_L", "x", "dt", "A", "B", "C", "h0"], got, want):
        assert a.dtype == dtype, name
        assert rel_err(a, b) < TOL[dtype], name


@needs_triton
def test_ssd_backward_kernel_with_some_gradients_and_either_output():
    # only x and B wanting gradients, no initial state; the loss from y alone, then from the final state alone
    from ssmkit.ops.triton.ssd import ssd_triton

    x, dt, A, B, C, _ = (cast(t, torch.float64) for t in ssd_inputs(L=29, H=2, P=5, G=1, N=6))
    for pick in (0, 1):
        leaves = [x.clone().requires_grad_(), B.clone().requires_grad_()]
        got = torch.autograd.grad(ssd_triton(leaves[0], dt, A, leaves[1], C)[pick].square().sum(), leaves)
        ref = [x.clone().requires_grad_(), B.clone().requires_grad_()]
        want = torch.autograd.grad(ssd_reference(ref[0], dt, A, ref[1], C)[pick].square().sum(), ref)
        for a, b in zip(got, want):
            assert rel_err(a, b) < TOL[torch.float64]


@needs_triton
def test_ssd_backward_by_recompute_and_by_kernel_agree():
    from ssmkit.ops.triton.ssd import ssd_triton

    inputs = [cast(t, torch.float64) for t in ssd_inputs(L=40, H=2, P=4, G=1, N=3)]
    by_kernel = ssd_values_and_grads(lambda *a: ssd_triton(*a, backward="kernel"), inputs)
    by_recompute = ssd_values_and_grads(lambda *a: ssd_triton(*a, backward="recompute"), inputs)
    for a, b in zip(by_kernel, by_recompute):
        assert rel_err(a, b) < 1e-12
    with pytest.raises(ValueError, match=r"backward must be one of \('kernel', 'recompute'\); got 'fused'"):
        ssd_triton(*inputs, backward="fused")


@needs_triton
def test_ssd_tiles_are_checked():
    from ssmkit.ops.triton.ssd import Tiles, ssd_triton

    assert Tiles.parse("16,32") == Tiles(16, 32, 8) and Tiles.parse("32,16,4") == Tiles(32, 16, 4)
    for text, match in (("16", "chunk,channels"), ("16,32,8,1", "chunk,channels"), ("16,x", "chunk,channels"),
                        ("8,32", "chunk must be a power of two >= 16"), ("16,48", "channels must be a power of two"),
                        ("16,16,3", "num_warps must be 1, 2, 4, 8 or 16")):
        with pytest.raises(ValueError, match=match):
            Tiles.parse(text)
    x, dt, A, B, C, _ = ssd_inputs(L=5, H=2, P=4, G=1)
    with pytest.raises(ValueError, match="give chunk_size or tiles, not both"):
        ssd_triton(x, dt, A, B, C, chunk_size=16, tiles=Tiles())
    with pytest.raises(ValueError, match="tiles must be a ssmkit.ops.triton.ssd.Tiles; got tuple"):
        ssd_triton(x, dt, A, B, C, tiles=(16, 16, 4))
    with pytest.raises(ValueError, match="chunk must be a power of two >= 16"):
        ssd_triton(x, dt, A, B, C, tiles=Tiles(chunk=24))


# ----------------------------------------------------------------------------------------------------
# the fused selective scan (Mamba-1)
# ----------------------------------------------------------------------------------------------------

SELECTIVE_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "state"]


def selective_inputs(L: int = 37, H: int = 6, N: int = 5, G: int | None = 2, Bsz: int = 2, seed: int = 0) -> dict:
    """u, δ, z (B, L, H), A (H, N) < 0, B and C (B, L, N) or (B, L, G, N), D and b_Δ (H,), h_{-1} (B, H, N); float64."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    bc = (Bsz, L, N) if G is None else (Bsz, L, G, N)
    return {
        "u": r(Bsz, L, H), "delta": r(Bsz, L, H), "A": -(torch.rand(H, N, generator=g, dtype=torch.float64) * 2 + 0.2),
        "B": r(*bc), "C": r(*bc), "D": r(H), "z": r(Bsz, L, H), "delta_bias": 0.5 * r(H), "state": r(Bsz, H, N),
    }


def selective_values_and_grads(fn, inputs: dict, dtype: torch.dtype, use: set, softplus: bool, seed: int = 1):
    """y, h_{L-1} and the gradients of a random linear function of both for the inputs in ``use`` (the others None)."""
    leaves = {k: (v.to(device=DEVICE, dtype=dtype).requires_grad_() if k in use else None) for k, v in inputs.items()}
    y, h = fn(**leaves, delta_softplus=softplus)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
    gh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h)
    used = [k for k in SELECTIVE_NAMES if k in use]
    return ["y", "h_L", *used], [y, h, *torch.autograd.grad((y * gy).sum() + (h * gh).sum(), [leaves[k] for k in used])]


EVERY_INPUT = set(SELECTIVE_NAMES)
CORE = {"u", "delta", "A", "B", "C"}


@needs_triton
@pytest.mark.parametrize(
    "dtype,G,use,softplus",
    [
        (torch.float32, 2, EVERY_INPUT, True),  # grouped: P = 3 channels per group, in a block of 4
        (torch.float64, 2, EVERY_INPUT, True),
        (torch.float64, None, EVERY_INPUT - {"z"}, True),  # B, C shared by every channel
        (torch.float64, 3, CORE, False),  # no skip, gate, bias, softplus or initial state
    ],
)
def test_selective_values_and_gradients_equal_the_reference(dtype, G, use, softplus):
    inputs = selective_inputs(G=G)
    kernel = lambda **a: selective_scan(**a, backend="triton")  # noqa: E731
    names, got = selective_values_and_grads(kernel, inputs, dtype, use, softplus)
    _, want = selective_values_and_grads(selective_scan_reference, inputs, torch.float64, use, softplus)
    for name, a, b in zip(names, got, want):
        assert a.dtype == dtype and a.shape == b.shape, name
        assert rel_err(a, b) < TOL[dtype], name


@needs_triton
@pytest.mark.parametrize("L", [5, 16, 17])  # shorter than a chunk, a multiple of it, one step past it
def test_selective_at_chunk_boundaries(L):
    from ssmkit.ops.triton.selective import Tiles, selective_scan_triton

    x = {k: v.to(DEVICE) for k, v in selective_inputs(L=L, H=5, N=3, G=None).items()}
    y, h = selective_scan_triton(**x, delta_softplus=True, tiles=Tiles(chunk=16, forward_chunk=4, block_h=4))
    y_ref, h_ref = selective_scan_reference(**x, delta_softplus=True)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12
    y, none = selective_scan_triton(**x, delta_softplus=True, return_state=False)
    assert none is None and rel_err(y, y_ref) < 1e-12


@needs_triton
def test_selective_with_a_large_state_shrinks_the_default_tiles():
    from ssmkit.ops.triton.selective import DEFAULT_TILES, fit_tiles

    # N = 40: a state tile of 64, so one channel per program and the same tile sizes as N = 16 with four
    assert fit_tiles(DEFAULT_TILES, 64)[:4] == (32, 8, 1, 1) and fit_tiles(DEFAULT_TILES, 16) == DEFAULT_TILES
    inputs = selective_inputs(L=11, H=3, N=40, G=None)
    kernel = lambda **a: selective_scan(**a, backend="triton")  # noqa: E731
    names, got = selective_values_and_grads(kernel, inputs, torch.float64, EVERY_INPUT, True)
    _, want = selective_values_and_grads(selective_scan_reference, inputs, torch.float64, EVERY_INPUT, True)
    for name, a, b in zip(names, got, want):
        assert rel_err(a, b) < TOL[torch.float64], name


@needs_triton
def test_selective_takes_strided_inputs():
    # A, D, b_Δ as strided views and u, δ, B transposed views: the kernels index contiguous copies, gradients included
    x = {k: v.to(DEVICE) for k, v in selective_inputs(L=7, H=3, N=2, G=None).items()}
    base = {k: x[k].repeat_interleave(2, dim=0).requires_grad_() for k in ("A", "D", "delta_bias")}
    views = {k: v[::2] for k, v in base.items()}  # every other row: the same values, stride 2
    u, delta, B = (x[k].transpose(0, 1).contiguous().transpose(0, 1).requires_grad_() for k in ("u", "delta", "B"))
    out = []
    for fn in (lambda **a: selective_scan(**a, backend="triton"), selective_scan_reference):
        y, h = fn(**{**x, **views, "u": u, "delta": delta, "B": B}, delta_softplus=True)
        leaves = [*base.values(), u, delta, B]
        out.append([y, h, *torch.autograd.grad((y.square().sum() + h.sum()), leaves)])
    for a, b in zip(*out):
        assert rel_err(a, b) < 1e-12


@needs_triton
def test_selective_hand_computed():
    # A = 0 (Ā = 1), Δ = B = C = 1, u = 1, h_{-1} = 3, D = 2: h_t = 3 + (t + 1) and y_t = h_t + 2 exactly
    one = torch.ones(1, 20, 1, dtype=torch.float64, device=DEVICE)
    full = lambda shape, v: torch.full(shape, v, dtype=torch.float64, device=DEVICE)  # noqa: E731
    y, h = selective_scan(one, one, full((1, 1), 0.0), one, one, full((1,), 2.0), state=full((1, 1, 1), 3.0),
                          backend="triton")
    t = torch.arange(20, dtype=torch.float64, device=DEVICE)
    assert torch.equal(y[0, :, 0], t + 6) and torch.equal(h, full((1, 1, 1), 23.0))


@needs_triton
def test_selective_only_the_final_state_or_only_y_is_differentiated():
    # the backward with no gradient for y (only h_{L-1} used) and with none for h_{L-1} (return_state=False)
    x = selective_inputs(L=9, H=3, N=2, G=None)
    for out in (0, 1):
        grads = []
        for fn in (lambda **a: selective_scan(**a, backend="triton", return_state=out == 1),
                   lambda **a: selective_scan_reference(**a, return_state=out == 1)):
            leaves = {k: v.to(DEVICE).requires_grad_() for k, v in x.items()}
            res = fn(**leaves, delta_softplus=True)
            leaves = list(leaves.values())
            got = torch.autograd.grad(res[out].sum(), leaves, allow_unused=True)  # h_{L-1} uses neither C, D nor z
            grads.append([torch.zeros_like(v) if g is None else g for g, v in zip(got, leaves)])
        for name, a, b in zip(SELECTIVE_NAMES, *grads):
            assert (a - b).abs().max() <= 1e-12 * b.abs().max().clamp_min(1.0), (out, name)


@needs_triton
def test_selective_rejects_tiles_that_are_not_powers_of_two():
    from ssmkit.ops.triton.selective import Tiles, selective_scan_triton

    x = {k: v.to(DEVICE) for k, v in selective_inputs(L=5, H=3, N=2, G=None).items()}
    with pytest.raises(ValueError, match="tiles.chunk must be a power of two"):
        selective_scan_triton(**x, tiles=Tiles(chunk=12))
    with pytest.raises(ValueError, match="tiles.backward_block_h must be a power of two"):
        selective_scan_triton(**x, tiles=Tiles(backward_block_h=3))
    with pytest.raises(ValueError, match="tiles.forward_chunk must be <= tiles.chunk"):
        selective_scan_triton(**x, tiles=Tiles(chunk=8, forward_chunk=16))
    with pytest.raises(ValueError, match=r"A must be \(H, N\)"):
        selective_scan_triton(**{**x, "A": x["A"][:2]})


# ----------------------------------------------------------------------------------------------------
# on a GPU, at real sizes (scripts/gpu_check.sh)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@on_gpu
def test_gpu_auto_picks_the_kernels():
    u = torch.randn(2, 5, 3, device=DEVICE)
    for op in ("ssm_scan", "ssd", "selective_scan"):
        for dtype in (torch.float32, torch.float64):
            assert triton_status(DEVICE, op, dtype) == (True, ""), (op, dtype, triton_status(DEVICE, op, dtype))
    assert prefer_triton(u, "ssm_scan") and prefer_triton(u.double(), "ssd") and prefer_triton(u, "selective_scan")


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("intra_chunk", ["scan", "matmul"])
def test_gpu_scan_at_a_real_size(dtype, intra_chunk):
    # B·L·H·N = 4·4133·256·32 complex modes (S4D's d_state 64): never a multiple of the tiles in L
    from ssmkit.ops.triton.scan import ssm_scan_triton

    inputs = [t.to(DEVICE) for t in scan_inputs("complex", L=4133, H=256, N=32, Bsz=4)]
    fn = lambda *a: ssm_scan_triton(*a, intra_chunk=intra_chunk)  # noqa: E731
    got = scan_values_and_grads(fn, [cast(t, dtype) for t in inputs], True, True)
    want = scan_values_and_grads(lambda *a: ssm_scan(*a, backend="chunked"), inputs, True, True)  # float64 oracle
    tol = {torch.float32: 1e-4, torch.float64: 1e-11}[dtype]  # float32: 4133 steps of rounding
    for name, a, b in zip(["y", "x_L", "u", "A", "B", "C", "x0", "D"], got, want):
        assert rel_err(a, b) < tol, name


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_scan_matmul_form_at_whole_chunks(dtype):
    # L 4096 = 128 chunks of 32: the matmul form forward and backward (tf32x3 in float32), 32 modes
    from ssmkit.ops.triton.scan import ssm_scan_triton

    inputs = [t.to(DEVICE) for t in scan_inputs("complex", L=4096, H=256, N=32, Bsz=4)]
    fn = lambda *a: ssm_scan_triton(*a, intra_chunk="matmul")  # noqa: E731
    got = scan_values_and_grads(fn, [cast(t, dtype) for t in inputs], True, True)
    want = scan_values_and_grads(lambda *a: ssm_scan(*a, backend="chunked"), inputs, True, True)  # float64 oracle
    tol = {torch.float32: 1e-4, torch.float64: 1e-11}[dtype]
    for name, a, b in zip(["y", "x_L", "u", "A", "B", "C", "x0", "D"], got, want):
        assert rel_err(a, b) < tol, name


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("G", [None, 1, 7])  # planned from the SM count (batch 1: many groups), one chunk, 7 chunks
def test_gpu_scan_in_groups_at_batch_one(G):
    from ssmkit.ops.triton.scan import ssm_scan_triton

    inputs = [t.to(DEVICE) for t in scan_inputs("complex", L=2**16 + 3, H=128, N=32, Bsz=1)]
    got = scan_values_and_grads(lambda *a: ssm_scan_triton(*a, chunks_per_program=G),
                                [cast(t, torch.float32) for t in inputs], True, True)
    want = scan_values_and_grads(lambda *a: ssm_scan(*a, backend="chunked"), inputs, True, True)  # float64 oracle
    for name, a, b in zip(["y", "x_L", "u", "A", "B", "C", "x0", "D"], got, want):
        assert rel_err(a, b) < 1e-4, name


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backward", ["kernel", "recompute"])
def test_gpu_ssd_at_a_real_size(dtype, backward):
    from ssmkit.ops.triton.ssd import ssd_triton

    inputs = [t.to(DEVICE) for t in ssd_inputs(L=1037, H=8, P=64, G=2, N=64, Bsz=2)]
    got = ssd_values_and_grads(lambda *a: ssd_triton(*a, backward=backward), [cast(t, dtype) for t in inputs])
    want = ssd_values_and_grads(ssd_chunked, inputs)  # float64 oracle
    tol = {torch.float32: 1e-4, torch.float64: 1e-11}[dtype]
    for name, a, b in zip(["y", "h_L", "x", "dt", "A", "B", "C", "h0"], got, want):
        assert rel_err(a, b) < tol, name


@pytest.mark.gpu
@pytest.mark.slow
@on_gpu
def test_gpu_s4d_runs_a_million_steps_at_batch_one():
    import ssmkit.layers as layers

    torch.manual_seed(0)
    from ssmkit.ops import use_backend

    layer = layers.build("s4d", d_model=32, d_state=64, device=DEVICE)
    x = torch.randn(1, 2**20, 32, device=DEVICE, requires_grad=True)
    with use_backend("triton"):  # the fused kernel ("auto" takes the chunked scan at this length on CUDA)
        y, h = layer(x)
        (y.square().mean() + h.abs().mean()).backward()
    with torch.no_grad():
        with use_backend("chunked"):
            y_ref, h_ref = layer(x)
    assert rel_err(y, y_ref) < 1e-4 and rel_err(h, h_ref) < 1e-4
    assert torch.isfinite(x.grad).all()


@pytest.mark.gpu
@pytest.mark.slow
@on_gpu
def test_gpu_ssd_runs_a_million_steps_at_batch_one():
    # the SSD kernel at L = 2^20 (offsets past 2^31 elements would need int64: (b·L + t)·H·P here is 2^26, the
    # arithmetic is int64 throughout), forward against the chunked path, and a backward (the backward kernel, from
    # 2^16 chunk-start states)
    x, dt, A, B, C, h0 = (t.to(DEVICE, torch.float32) for t in ssd_inputs(L=2**20, H=4, P=16, G=1, N=16, Bsz=1))
    leaves = [t.requires_grad_() for t in (x, dt, B, C)]
    y, h = ssd(x, dt, A, B, C, h0, backend="triton")
    (y.square().mean() + h.square().mean()).backward()
    with torch.no_grad():
        y_ref, h_ref = ssd_chunked(x, dt, A, B, C, h0)
    assert rel_err(y, y_ref) < 1e-4 and rel_err(h, h_ref) < 1e-4
    assert all(torch.isfinite(t.grad).all() for t in leaves)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("G", [None, 4])
def test_gpu_selective_at_a_real_size(dtype, G):
    # Mamba's d_inner 520 (not a multiple of the channel blocks), N = 16, L = 1037 (not a multiple of the chunk)
    inputs = selective_inputs(L=1037, H=520, N=16, G=G, Bsz=2)
    inputs["delta"] = inputs["delta"] - 2.0  # Δ ~ softplus(N(-2, 1)) as in a trained Mamba: the state remembers
    kernel = lambda **a: selective_scan(**a, backend="triton")  # noqa: E731
    names, got = selective_values_and_grads(kernel, inputs, dtype, EVERY_INPUT, True)
    _, want = selective_values_and_grads(selective_scan_chunked, inputs, torch.float64, EVERY_INPUT, True)  # float64 oracle
    tol = {torch.float32: 1e-4, torch.float64: 1e-11}[dtype]
    for name, a, b in zip(names, got, want):
        assert rel_err(a, b) < tol, name


@pytest.mark.gpu
@on_gpu
def test_gpu_mamba_layer_auto_is_the_kernel():
    import ssmkit.layers as layers
    from ssmkit.ops import use_backend

    torch.manual_seed(0)
    layer = layers.build("mamba", d_model=64, d_state=16, device=DEVICE)
    x = torch.randn(2, 333, 64, device=DEVICE, requires_grad=True)
    y, state = layer(x)  # "auto": the Triton kernel on CUDA
    (y.square().mean() + state.ssm.square().mean()).backward()
    g_auto = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    layer.zero_grad()
    x.grad = None
    with use_backend("chunked"):
        y_ref, state_ref = layer(x)
        (y_ref.square().mean() + state_ref.ssm.square().mean()).backward()
    g_ref = [p.grad for p in layer.parameters()] + [x.grad]
    assert rel_err(y, y_ref) < 1e-4 and rel_err(state.ssm, state_ref.ssm) < 1e-4
    for a, b in zip(g_auto, g_ref):
        assert rel_err(a, b) < 1e-3


@pytest.mark.gpu
@pytest.mark.slow
@on_gpu
def test_gpu_mamba_runs_a_million_steps_at_batch_one():
    import ssmkit.layers as layers

    torch.manual_seed(0)
    layer = layers.build("mamba", d_model=32, d_state=16, device=DEVICE)
    x = torch.randn(1, 2**20, 32, device=DEVICE, requires_grad=True)
    y, state = layer(x)  # "auto": the fused kernel
    (y.square().mean() + state.ssm.square().mean()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y).all()
    with torch.no_grad():
        y_half, mid = layer(x[:, : 2**19])
        y_rest, end = layer(x[:, 2**19 :], mid)  # the state hand-off at the half: one pass
    assert rel_err(torch.cat([y_half, y_rest], 1), y) < 1e-4 and rel_err(end.ssm, state.ssm) < 1e-4


@needs_triton
def test_the_first_call_may_come_without_grad_and_under_autocast():
    # the gate's smoke call differentiates the kernels and compares them at float32 tolerances: it must work when the
    # first call is a no-grad forward under autocast
    from ssmkit.ops import triton_gate

    x, dt, A, B, C, h0 = (cast(t, torch.float32) for t in ssd_inputs(L=9, H=2, G=1))
    triton_gate._STATUS.clear()
    with torch.inference_mode(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y, _ = ssd(x, dt, A, B, C, h0, backend="triton")
    assert rel_err(y, ssd_reference(x, dt, A, B, C, h0)[0]) < TOL[torch.float32]


@needs_triton
def test_the_first_call_inside_a_checkpoint_saves_only_its_own_tensors(monkeypatch):
    # the smoke call runs in its own thread: a first call inside a non-reentrant checkpoint (whose saved-tensor hooks
    # are per thread) counts only the forward's tensors, so the recompute, which finds the verdict cached, matches it
    from torch.utils.checkpoint import checkpoint

    from ssmkit.ops import triton_gate

    x, dt, A, B, C, h0 = (cast(t, torch.float64) for t in ssd_inputs(L=9, H=2, G=1))
    x.requires_grad_()
    packed, threads = [], []
    real = triton_gate._smoke
    monkeypatch.setattr(triton_gate, "_smoke", lambda *a: (threads.append(threading.current_thread()), real(*a)))
    monkeypatch.setattr(triton_gate, "_STATUS", {})
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        triton_status(DEVICE, "ssd", torch.float64)
    assert packed == [] and len(threads) == 1 and threads[0] is not threading.current_thread()
    monkeypatch.setattr(triton_gate, "_STATUS", {})
    y, h = checkpoint(lambda v: ssd(v, dt, A, B, C, h0, backend="triton"), x, use_reentrant=False)
    (g,) = torch.autograd.grad(y.square().sum() + h.square().sum(), x)
    y_ref, h_ref = ssd_reference(x, dt, A, B, C, h0)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum() + h_ref.square().sum(), x)
    assert len(threads) == 2 and rel_err(g, g_ref) < TOL[torch.float64]


# ----------------------------------------------------------------------------------------------------
# double backward (create_graph=True: gradient penalties, Hessian-vector products)
# ----------------------------------------------------------------------------------------------------


def second_order(fn, inputs: list, seed: int = 2) -> list:
    """The gradients of L = Σ w·y + ‖∂(Σ w·y)/∂u‖² (a gradient penalty: a double backward) for every input."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    y = fn(*leaves)[0]
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y)
    (g_u,) = torch.autograd.grad((y * w).sum(), leaves[0], create_graph=True)
    return list(torch.autograd.grad((y * w).sum() + g_u.square().sum(), leaves))


@needs_triton
def test_a_double_backward_through_the_kernels_equals_the_reference():
    # The kernels' backwards are not themselves differentiable: under create_graph their gradients entered the graph
    # as constants, so a gradient penalty lost its second-order part without an error (Ā, B̄, C of the scan: relative
    # error 0.3 to 1.0). They now differentiate their chunked path when the backward itself needs a graph.
    scan = [cast(t, torch.float64) for t in scan_inputs("complex", L=21)]
    got = second_order(lambda *a: ssm_scan(*a, backend="triton"), scan)
    want = second_order(ssm_scan_reference, scan)
    for name, a, b in zip(["u", "A", "B", "C", "x0", "D"], got, want):
        assert rel_err(a, b) < 1e-10, f"scan {name}"
    ssd_in = [cast(t, torch.float64) for t in ssd_inputs(L=21)]
    got = second_order(lambda *a: ssd(*a, chunk_size=16, backend="triton"), ssd_in)
    want = second_order(ssd_reference, ssd_in)
    for name, a, b in zip(["x", "dt", "A", "B", "C", "h0"], got, want):
        assert rel_err(a, b) < 1e-10, f"ssd {name}"
    sel = selective_inputs(L=21)
    order = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "state"]

    def selective(fn):
        return lambda *a: fn(**dict(zip(order, a)), delta_softplus=True)

    sel_in = [sel[k].to(DEVICE) for k in order]
    got = second_order(selective(lambda **a: selective_scan(**a, backend="triton")), sel_in)
    want = second_order(selective(selective_scan_reference), sel_in)
    for name, a, b in zip(order, got, want):
        assert rel_err(a, b) < 1e-10, f"selective {name}"
