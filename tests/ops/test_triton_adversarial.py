"""Adversarial tests of the Triton kernels (ssmkit.ops.triton) against independent float64 references.

Each test tries to get a silent wrong answer: inputs that are views (transposed, sliced with a storage offset,
expanded across heads or batch), output gradients that are not contiguous, any subset of the inputs wanting a
gradient, losses through y alone, the final state alone or both, lengths around the chunks, one channel, one mode or
more modes than a tile, explicit tiles, tiles refitted after a refused launch, double backward, strong decay and
Δ = 0. The references are :func:`ssmkit.ops.ssd.ssd_reference`, :func:`ssmkit.ops.scan.ssm_scan_reference` and
:func:`ssmkit.ops.selective.selective_scan_reference` (step by step, float64) and autograd through them.

On the CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, tests/conftest.py): sizes stay tiny.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from ssmkit.ops.scan import ssm_scan_reference
from ssmkit.ops.selective import selective_scan_reference
from ssmkit.ops.ssd import ssd, ssd_reference
from ssmkit.ops.triton_gate import triton_status
from tests.conftest import DEVICE, rel_err
from tests.ops.test_triton import (
    EVERY_INPUT,
    SELECTIVE_NAMES,
    TOL,
    cast,
    needs_triton,
    scan_inputs,
    selective_inputs,
    selective_values_and_grads,
    ssd_inputs,
    ssd_values_and_grads,
)

pytestmark = needs_triton

SSD_NAMES = ("x", "dt", "A", "B", "C", "h0")
SCAN_NAMES = ("u", "A", "B", "C", "x0", "D")
F64 = torch.float64


def randn_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(t)


def ssd_grads(fn, inputs, wanted, loss: str = "both", grad_outputs=None, seed: int = 1) -> dict:
    """y, h and ∂ of a loss (through y, h or both; random weights) for the inputs named in ``wanted`` (zeros where an
    input does not reach the loss); ``grad_outputs`` (gy, gh) given explicitly replace the random weights."""
    leaves = {k: (None if v is None else v.clone().requires_grad_(k in wanted)) for k, v in zip(SSD_NAMES, inputs)}
    y, h = fn(*leaves.values())
    if grad_outputs is None:
        gy, gh = randn_like(y, seed), randn_like(h, seed + 1)
    else:
        gy, gh = grad_outputs
    outs = [(o, g) for o, g, used in ((y, gy, loss in ("y", "both")), (h, gh, loss in ("h", "both"))) if used]
    names = [k for k in SSD_NAMES if k in wanted and leaves[k] is not None]
    found = torch.autograd.grad([o for o, _ in outs], [leaves[k] for k in names], [g for _, g in outs],
                                allow_unused=True)
    result = {"y": y.detach(), "h": h.detach()}
    for k, g in zip(names, found):
        result[k] = torch.zeros_like(leaves[k]) if g is None else g
    return result


def assert_close(got: dict, want: dict, tol: float, what=""):
    assert got.keys() == want.keys(), (what, sorted(got), sorted(want))
    for k in want:
        assert got[k].shape == want[k].shape, (what, k)
        err = rel_err(got[k], want[k])
        assert err < tol, f"{what} {k}: relative error {err:.2e} >= {tol:.0e}"


def backward_kernel_spy(monkeypatch) -> list:
    """Record every call of the SSD backward kernel: (T, gy contiguous?, ghL given?)."""
    import ssmkit.ops.triton.ssd_backward as module

    calls, real = [], module.ssd_backward_kernel
    monkeypatch.setattr(module, "ssd_backward_kernel",
                        lambda *a: calls.append((a[8], a[6].is_contiguous(), a[7] is not None)) or real(*a))
    return calls


# ----------------------------------------------------------------------------------------------------
# SSD (Mamba-2): the backward kernel and the forward's tiles
# ----------------------------------------------------------------------------------------------------

SUBSETS = [set(c) for r in range(1, 7) for c in itertools.combinations(SSD_NAMES, r)]  # all 63
LOSSES = ("y", "h", "both")


def test_ssd_every_subset_of_inputs_wanting_grad(monkeypatch):
    # all 63 subsets of (x, Δ, A, B, C, h0) wanting a gradient, the loss through y, the final state or both in turn
    # (every loss for the single inputs): the gradients of a subset are those of the same inputs when every input
    # wants one (the float64 reference's)
    from ssmkit.ops.triton.ssd import ssd_triton

    calls = backward_kernel_spy(monkeypatch)
    inputs = [cast(t, F64) for t in ssd_inputs(L=21, H=2, P=3, G=1, N=4, Bsz=1)]
    want = {loss: ssd_grads(ssd_reference, inputs, set(SSD_NAMES), loss) for loss in LOSSES}
    runs = [(w, LOSSES[i % 3]) for i, w in enumerate(SUBSETS)]
    runs += [(w, loss) for w in SUBSETS[:6] for loss in LOSSES if (w, loss) not in runs]
    for wanted, loss in runs:
        got = ssd_grads(ssd_triton, inputs, wanted, loss)
        expected = {k: v for k, v in want[loss].items() if k in wanted or k in ("y", "h")}
        assert_close(got, expected, TOL[F64], (wanted, loss))
    assert len(calls) == len(runs) == 75 and all(c[0] == 16 for c in calls)  # the kernel every time, at chunk 16


@pytest.mark.parametrize("backward", ["kernel", "recompute"])
def test_ssd_without_initial_state_every_loss(backward):
    # h0 = None: no ∂h0 (the kernel writes none), and the first chunk starts from zeros
    from ssmkit.ops.triton.ssd import ssd_triton

    inputs = [cast(t, F64) for t in ssd_inputs(L=33, H=2, P=3, G=2, N=4, Bsz=1)[:5]] + [None]
    for loss in LOSSES:
        got = ssd_grads(lambda *a: ssd_triton(*a, backward=backward), inputs, set(SSD_NAMES), loss)
        assert "h0" not in got
        assert_close(got, ssd_grads(ssd_reference, inputs, set(SSD_NAMES), loss), TOL[F64], loss)


@pytest.mark.parametrize("wanted", [{"A"}, {"dt"}, {"h0"}, {"B", "C"}])
@pytest.mark.parametrize("loss", ["y", "h"])
def test_ssd_recompute_backward_with_few_gradients(wanted, loss):
    from ssmkit.ops.triton.ssd import ssd_triton

    inputs = [cast(t, F64) for t in ssd_inputs(L=19, H=2, P=2, G=2, N=3, Bsz=1)]
    got = ssd_grads(lambda *a: ssd_triton(*a, chunk_size=16, backward="recompute"), inputs, wanted, loss)
    assert_close(got, ssd_grads(ssd_reference, inputs, wanted, loss), TOL[F64], (wanted, loss))


def strided_grad_outputs(y: torch.Tensor, h: torch.Tensor, kind: str, seed: int = 5):
    """Output gradients with y's and h's shapes but not contiguous: transposed, expanded (stride 0) or sliced with a
    storage offset."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64).to(y)  # noqa: E731
    Bsz, L, H, P = y.shape
    N = h.shape[-1]
    if kind == "transposed":
        return r(Bsz, H, L, P).transpose(1, 2), r(Bsz, H, N, P).transpose(2, 3)
    if kind == "expanded":
        return r(P).expand(Bsz, L, H, P), r(1, H, 1, N).expand(Bsz, H, P, N)
    return r(Bsz, L + 3, H, 2 * P)[:, 3:, :, ::2], r(Bsz, H, P + 1, N)[:, :, 1:]  # every other channel, offset rows


@pytest.mark.parametrize("backward", ["kernel", "recompute"])
def test_ssd_output_gradients_that_are_not_contiguous(backward, monkeypatch):
    # ∂y and ∂h_L as autograd hands them over: y.sum()'s expanded ones, and explicit transposed, expanded or sliced
    # gradients; the kernel must read them by their strides (or a contiguous copy), never as if they were dense
    from ssmkit.ops.triton.ssd import ssd_triton

    calls = backward_kernel_spy(monkeypatch)
    fn = lambda *a: ssd_triton(*a, backward=backward)  # noqa: E731
    inputs = [cast(t, F64) for t in ssd_inputs(L=23, H=4, P=3, G=2, N=5)]
    every = set(SSD_NAMES)
    with torch.no_grad():
        y, h = ssd_reference(*inputs)
    for kind in ("transposed", "expanded", "sliced"):
        gy, gh = strided_grad_outputs(y, h, kind)
        assert not gy.is_contiguous() and not gh.is_contiguous()
        for loss in ("y", "h", "both"):
            got = ssd_grads(fn, inputs, every, loss, grad_outputs=(gy, gh))
            assert_close(got, ssd_grads(ssd_reference, inputs, every, loss, grad_outputs=(gy, gh)), TOL[F64],
                         (kind, loss))
    # y.sum() + h.sum(): SumBackward's expanded (stride 0) gradients
    outs = []
    for f in (fn, ssd_reference):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, h = f(*leaves)
        outs.append(torch.autograd.grad(y.sum() + 2 * h.sum(), leaves))
    for name, a, b in zip(SSD_NAMES, *outs):
        assert rel_err(a, b) < TOL[F64], name
    if backward == "kernel":
        assert len(calls) == 10 and any(not c[1] for c in calls)  # the kernel saw the strided gradients
    else:
        assert calls == []


@pytest.mark.parametrize("backward", ["kernel", "recompute"])
def test_ssd_inputs_that_are_views(backward):
    # x transposed, Δ and A sliced (a storage offset, stride 2), B expanded across the batch and the groups (stride
    # 0), C transposed, h0 permuted: values and the gradients reaching the tensors the views were taken of
    from ssmkit.ops.triton.ssd import ssd_triton

    x, dt, A, B, C, h0 = (cast(t, F64) for t in ssd_inputs(L=21, H=4, P=3, G=2, N=5, Bsz=2))
    w = torch.randn(3, generator=torch.Generator().manual_seed(3), dtype=F64).to(x)

    def run(fn):
        base = [x.transpose(1, 2).contiguous(), torch.cat([dt, dt], -1), torch.stack([A, A], 1), B[:1, :, :1],
                C.transpose(1, 2).contiguous(), h0.transpose(2, 3).contiguous()]
        base = [t.clone().requires_grad_() for t in base]
        xb, dtb, Ab, Bb, Cb, hb = base
        views = (xb.transpose(1, 2), dtb[..., 4:], Ab[:, 1], Bb.expand(2, -1, 2, -1), Cb.transpose(1, 2),
                 hb.transpose(2, 3))
        assert not any(v.is_contiguous() for v in views) and views[1].storage_offset() > 0
        y, h = fn(*views)
        loss = (y * w.expand(*y.shape)).sum() + h.square().sum()
        return [y, h, *torch.autograd.grad(loss, base)]

    got, want = run(lambda *a: ssd_triton(*a, backward=backward)), run(ssd_reference)
    for name, a, b in zip(("y", "h", "x", "dt", "A", "B", "C", "h0"), got, want):
        assert rel_err(a, b) < TOL[F64], name


SHAPES = [
    dict(L=1, H=2, P=3, G=1, N=4),  # one step
    dict(L=16, H=2, P=3, G=1, N=4),  # one whole chunk of the backward
    dict(L=17, H=2, P=3, G=1, N=4),  # one step past it
    dict(L=64, H=2, P=2, G=2, N=3, Bsz=1),  # a multiple of every chunk, one head per group
    dict(L=65, H=2, P=2, G=1, N=3, Bsz=1),  # a multiple plus one
    dict(L=37, H=3, P=1, G=3, N=2),  # one channel per head, G = H
    dict(L=37, H=2, P=3, G=1, N=1),  # one state (N padded to 16)
    dict(L=37, H=2, P=2, G=1, N=17, Bsz=1),  # N > 16: padded to 32
    dict(L=21, H=2, P=2, G=2, N=33, Bsz=1),  # padded to 64
    dict(L=21, H=1, P=17, G=1, N=3, Bsz=1),  # P > 16: two blocks of the backward's 16 channels
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_ssd_lengths_and_shapes(shape, dtype, monkeypatch):
    from ssmkit.ops.triton.ssd import ssd_triton

    calls = backward_kernel_spy(monkeypatch)
    inputs = ssd_inputs(**shape)
    got = ssd_values_and_grads(lambda *a: ssd_triton(*a), [cast(t, dtype) for t in inputs])
    want = ssd_values_and_grads(ssd_reference, inputs)
    for name, a, b in zip(("y", "h", "x", "dt", "A", "B", "C", "h0"), got, want):
        assert a.dtype == dtype and a.shape == b.shape, name
        assert rel_err(a, b) < TOL[dtype], name
    assert [c[0] for c in calls] == [16]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("L", [1, 31, 64, 65])
def test_ssd_forward_alone_at_the_longest_chunk(L, dtype):
    # without a gradient the forward runs at the chunk asked (64; 32 in float64), not the backward's 16
    from ssmkit.ops.triton.ssd import ssd_triton

    x, dt, A, B, C, h0 = (cast(t, dtype) for t in ssd_inputs(L=L, H=2, P=3, G=1, N=5, Bsz=1))
    y, h = ssd_triton(x, dt, A, B, C, h0, chunk_size=64)
    y_ref, h_ref = ssd_reference(*(t.double() for t in (x, dt, A, B, C, h0)))
    assert rel_err(y, y_ref) < TOL[dtype] and rel_err(h, h_ref) < TOL[dtype]


@pytest.mark.parametrize("backward", ["kernel", "recompute"])
@pytest.mark.parametrize("chunk,channels", [(32, 16), (32, 32), (32, 64), (64, 16), (64, 32), (64, 64)])
def test_ssd_explicit_tiles(chunk, channels, backward, monkeypatch):
    # the forward at explicit tiles (L 70: two chunks of 32 and a part, or one of 64 and a part; P 20: a partial
    # block of channels) and the backward kernel at the same chunk, from the states the forward kept at that chunk
    from ssmkit.ops.triton.ssd import Tiles, ssd_triton

    calls = backward_kernel_spy(monkeypatch)
    inputs = ssd_inputs(L=70, H=2, P=20, G=1, N=5, Bsz=1)
    fn = lambda *a: ssd_triton(*a, tiles=Tiles(chunk, channels, 4), backward=backward)  # noqa: E731
    got = ssd_values_and_grads(fn, [cast(t, F64) for t in inputs])
    want = ssd_values_and_grads(ssd_reference, inputs)
    for name, a, b in zip(("y", "h", "x", "dt", "A", "B", "C", "h0"), got, want):
        assert rel_err(a, b) < TOL[F64], name
    assert [c[0] for c in calls] == ([chunk] if backward == "kernel" else [])


def test_ssd_calls_in_a_row_share_no_state():
    # one call after another at other tiles, dtypes, backwards, shapes and with or without a gradient: the cached
    # fitted tiles (_FITTED) and the kernels' compiled variants must not leak from one call into the next
    from ssmkit.ops.triton.ssd import Tiles, ssd_triton

    small, wide = ssd_inputs(L=33, H=2, P=3, G=1, N=4, Bsz=1), ssd_inputs(L=40, H=2, P=18, G=2, N=17, Bsz=1, seed=4)
    plan = [
        (small, F64, dict(tiles=Tiles(32, 16, 4))),
        (wide, F64, dict()),
        (small, torch.float32, dict(chunk_size=16, backward="recompute")),
        (small, F64, dict(tiles=Tiles(64, 64, 2))),
        (wide, torch.float32, dict(tiles=Tiles(32, 32, 8))),
        (small, F64, dict(chunk_size=64)),
    ]
    for grad in (True, False):
        for inputs, dtype, options in plan:
            fn = lambda *a: ssd_triton(*a, **options)  # noqa: E731
            if grad:
                got = ssd_values_and_grads(fn, [cast(t, dtype) for t in inputs])
                want = ssd_values_and_grads(ssd_reference, inputs)
            else:
                got, want = fn(*(cast(t, dtype) for t in inputs)), ssd_reference(*inputs)
            for a, b in zip(got, want):
                assert rel_err(a, b) < TOL[dtype], (grad, dtype, options)


def test_ssd_tiles_refitted_after_a_refused_launch_keep_the_backward_in_step(monkeypatch):
    # A launch refused for its shared memory halves the tiles (chunk first); with a gradient wanted the chunk-start
    # states are then kept at the chunk that launched, and the backward kernel must walk that chunk, not the one
    # asked for. A stand-in launcher refuses anything above 16 x 16, as a GPU with less shared memory would.
    from triton.runtime.errors import OutOfResources

    from ssmkit.ops.triton import ssd as ssd_module
    from ssmkit.ops.triton.ssd import Tiles, ssd_triton

    assert triton_status(DEVICE, "ssd", F64) == (True, "")  # the gate's smoke call first: not through the stand-in
    kernel, tried = ssd_module._ssd_fwd_kernel, []

    class Tight:
        def __getitem__(self, grid):
            def launch(*args, **options):
                tried.append((options["T"], options["BP"], options["SAVE_CK"]))
                if options["T"] * options["BP"] > 256:
                    raise OutOfResources(300_000, 232_448, "shared memory")
                return kernel[grid](*args, **options)

            return launch

    monkeypatch.setattr(ssd_module, "_ssd_fwd_kernel", Tight())
    monkeypatch.setattr(ssd_module, "_FITTED", {})
    calls = backward_kernel_spy(monkeypatch)
    inputs = ssd_inputs(L=37, H=2, P=20, G=1, N=5, Bsz=1)
    want = ssd_values_and_grads(ssd_reference, inputs)
    for _ in range(2):
        got = ssd_values_and_grads(lambda *a: ssd_triton(*a, tiles=Tiles(64, 32, 8)), [cast(t, F64) for t in inputs])
        for name, a, b in zip(("y", "h", "x", "dt", "A", "B", "C", "h0"), got, want):
            assert rel_err(a, b) < TOL[F64], name
    assert tried == [(64, 32, True), (32, 32, True), (16, 32, True), (16, 16, True), (16, 16, True)]
    assert [c[0] for c in calls] == [16, 16]  # the backward at the chunk the states were kept at
    with torch.no_grad():  # the same tiles without a gradient: the fitted tiles, and no states kept
        y, h = ssd_triton(*(cast(t, F64) for t in inputs), tiles=Tiles(64, 32, 8))
    assert tried[-1] == (16, 16, False) and rel_err(y, want[0]) < TOL[F64] and rel_err(h, want[1]) < TOL[F64]


@pytest.mark.parametrize("shape", [dict(L=21, H=2, P=2, G=2, N=33, Bsz=1), dict(L=70, H=2, P=4, G=1, N=33, Bsz=1)])
def test_ssd_float32_gradients_lose_no_digits_to_cancellation(shape):
    # ∂A_h = Σ_k Δ_k ∂a_k, ∂a_k the gradient of the chunk's k-th exponent term a_k = Δ_k A_h. The backward kernel formed
    # ∂a_k as the reverse running sum of ∂cs_t = Σ_s Q_ts - Σ_t' Q_t't + ...: the large terms of the pairs s, t ≥ k
    # (the diagonal's first, 𝓛 = 1) cancel there only up to rounding, and in float32 ∂A came out 3.0e-5 and 2.0e-5
    # off the float64 reference at these shapes (the chunked path: 2.5e-7, 8.5e-7; ∂Δ 6e-7 against 2e-7). Each term
    # is now summed over the steps it reaches: 1.3e-6 and 8.9e-7.
    from ssmkit.ops.triton.ssd import ssd_triton

    inputs = ssd_inputs(**shape)
    got = ssd_values_and_grads(ssd_triton, [cast(t, torch.float32) for t in inputs])
    want = ssd_values_and_grads(ssd_reference, inputs)
    for name, a, b in zip(("y", "h", "x", "dt", "A", "B", "C", "h0"), got, want):
        assert rel_err(a, b) < 5e-6, name


@pytest.mark.parametrize("backward", ["kernel", "recompute"])
def test_ssd_gradcheck(backward):
    # finite differences in float64 at a tiny size: one chunk (L 5), and across a chunk boundary (L 18, chunks of 16;
    # fast mode) with two heads of one group
    from ssmkit.ops.triton.ssd import ssd_triton

    fn = lambda *a: ssd_triton(*a, backward=backward)  # noqa: E731
    for shape, fast in ((dict(L=5, H=2, P=2, G=1, N=2, Bsz=1), False), (dict(L=18, H=2, P=2, G=1, N=3), True)):
        leaves = [cast(t, F64).requires_grad_() for t in ssd_inputs(**shape)]
        assert torch.autograd.gradcheck(fn, leaves, fast_mode=fast)


@pytest.mark.parametrize("backward", ["kernel", "recompute"])
def test_ssd_double_backward_goes_through_the_chunked_path(backward, monkeypatch):
    # a gradient penalty: ∂/∂(every input) of Σ w·y + |h|² + ‖∂(Σ w·y + |h|²)/∂(x, Δ)‖², against the reference's;
    # under create_graph the backward must differentiate the chunked path (the kernels' backwards are constants)
    from ssmkit.ops.triton import ssd as ssd_module

    chunked_calls = []
    real = ssd_module.ssd_chunked
    monkeypatch.setattr(ssd_module, "ssd_chunked", lambda *a, **k: chunked_calls.append(k) or real(*a, **k))
    inputs = [cast(t, F64) for t in ssd_inputs(L=21, H=4, P=3, G=2, N=5)]

    def penalised(fn):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, h = fn(*leaves)
        first = (y * randn_like(y, 2)).sum() + h.square().sum()
        gx, gdt = torch.autograd.grad(first, leaves[:2], create_graph=True)
        return torch.autograd.grad(first + gx.square().sum() + gdt.square().sum(), leaves)

    got = penalised(lambda *a: ssd_module.ssd_triton(*a, backward=backward))
    want = penalised(ssd_reference)
    for name, a, b in zip(SSD_NAMES, got, want):
        assert rel_err(a, b) < 1e-10, name
    T = 16 if backward == "kernel" else 32  # the backward kernel's chunk; float64's default chunk (recompute)
    assert chunked_calls and all(k == {"chunk_size": T} for k in chunked_calls)


def test_ssd_gradgradcheck_tiny():
    from ssmkit.ops.triton.ssd import ssd_triton

    leaves = [cast(t, F64).requires_grad_() for t in ssd_inputs(L=4, H=2, P=2, G=1, N=2, Bsz=1)]
    assert torch.autograd.gradgradcheck(ssd_triton, leaves, fast_mode=True)


def decay_inputs(case: str):
    x, dt, A, B, C, h0 = ssd_inputs(L=37, H=3, P=3, G=1, N=5)
    if case == "dt zeros":  # Δ = 0 at every third step, and from step 20 on (whole chunks): no decay, no input
        dt = dt.clone()
        dt[:, ::3] = 0.0
        dt[:, 20:] = 0.0
    elif case == "A zero":  # no decay at all: the state sums every input
        A = torch.zeros_like(A)
    else:  # one head decays by exp(-Δ·|A|): underflows to 0 within a step (float32 below e^-104, float64 e^-745)
        A = A.clone()
        A[1] = {"A -50": -50.0, "A -1e3": -1e3, "A -1e5": -1e5}[case]
    return [x, dt, A, B, C, h0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["dt zeros", "A zero", "A -50", "A -1e3", "A -1e5"])
def test_ssd_degenerate_decays(case, dtype):
    from ssmkit.ops.triton.ssd import ssd_triton

    inputs = decay_inputs(case)
    for backward in ("kernel", "recompute"):
        got = ssd_values_and_grads(lambda *a: ssd_triton(*a, backward=backward), [cast(t, dtype) for t in inputs])
        want = ssd_values_and_grads(ssd_reference, inputs)
        for name, a, b in zip(("y", "h", "x", "dt", "A", "B", "C", "h0"), got, want):
            assert torch.isfinite(a).all(), (backward, name)
            assert rel_err(a, b) < TOL[dtype], (backward, name)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_ssd_forward_without_grad_keeps_no_chunk_states(mode, monkeypatch):
    # ctx.needs_input_grad says which inputs require grad, whatever the grad mode: a forward under torch.no_grad()
    # of inputs that require grad kept B·⌈L/16⌉·H·P·N chunk-start states nobody would read (and ran at the backward's
    # chunk, 16, not the one asked). A later call with grad keeps them, and its gradients are right.
    from ssmkit.ops.triton import ssd as ssd_module

    assert triton_status(DEVICE, "ssd", torch.float32) == (True, "")  # the gate's smoke call before the spy
    forwards = []
    real = ssd_module._ssd_forward
    monkeypatch.setattr(ssd_module, "_ssd_forward", lambda *a: forwards.append((a[6], a[8])) or real(*a))
    inputs = [cast(t, torch.float32).requires_grad_() for t in ssd_inputs(L=37, H=2, P=3, G=1, N=4, Bsz=1)]
    y_ref, h_ref = ssd_reference(*(t.detach().double() for t in inputs))
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        y, h = ssd_module.ssd_triton(*inputs)  # chunk 64
        y2, h2 = ssd(*inputs, backend="triton", chunk_size=32)  # through the gate
    assert y.grad_fn is None and y2.grad_fn is None
    assert forwards == [(64, False), (32, False)]  # no states kept, the chunks asked
    for a, b in ((y, y_ref), (h, h_ref), (y2, y_ref), (h2, h_ref)):
        assert rel_err(a, b) < TOL[torch.float32]
    got = ssd_values_and_grads(ssd_module.ssd_triton, [t.detach() for t in inputs])
    want = ssd_values_and_grads(ssd_reference, [t.detach().double() for t in inputs])
    assert forwards[2:] == [(16, True)]
    for name, a, b in zip(("y", "h", "x", "dt", "A", "B", "C", "h0"), got, want):
        assert rel_err(a, b) < TOL[torch.float32], name


# ----------------------------------------------------------------------------------------------------
# the diagonal scan (scan form and matmul form)
# ----------------------------------------------------------------------------------------------------


def scan_run(fn, inputs, views: bool, with_state: bool = True, with_D: bool = True, loss: str = "both",
             return_state: bool = True):
    """y, x_L and ∂ of a random linear loss (through y, x_L or both) for u, Ā, B̄, C (and x_{-1}, D when used); with
    ``views`` the op gets u transposed, Ā, B̄ and D sliced with stride 2 and an offset, C conjugated-transposed back,
    x_{-1} permuted, and the output gradients are strided too."""
    u, A, B, C, x0, D = inputs
    if views:
        base = [u.transpose(1, 2).contiguous(), torch.stack([A, A], 1), torch.cat([B, B], 0),
                C.transpose(0, 1).contiguous(), x0.transpose(1, 2).contiguous(), torch.stack([D, D], 1)]
    else:
        base = list(inputs)
    base = [t.clone().requires_grad_() for t in base]
    if views:
        H = u.shape[2]
        args = [base[0].transpose(1, 2), base[1][:, 1], base[2][H:], base[3].transpose(0, 1), base[4].transpose(1, 2),
                base[5][:, 0]]
        assert not args[0].is_contiguous() and not args[1].is_contiguous() and args[2].storage_offset() > 0
    else:
        args = base
    u_, A_, B_, C_, x0_, D_ = args
    y, x = fn(u_, A_, B_, C_, x0_ if with_state else None, D_ if with_D else None, return_state=return_state)
    g = torch.Generator().manual_seed(7)
    gy = torch.randn(y.shape[0], y.shape[2], y.shape[1], generator=g, dtype=F64).to(y).transpose(1, 2)  # strided
    terms = []
    if loss in ("y", "both"):
        terms.append((y * gy).sum())
    if loss in ("x", "both"):
        gx = torch.randn(x.shape, generator=g, dtype=torch.complex128 if x.is_complex() else F64).to(x)
        terms.append((x * gx.conj()).real.sum())
    used = [0, 1, 2, 3] + ([4] if with_state else []) + ([5] if with_D else [])
    found = torch.autograd.grad(sum(terms), [base[i] for i in used], allow_unused=True)
    grads = [torch.zeros_like(base[i]) if f is None else f for i, f in zip(used, found)]
    return [y] + ([x] if x is not None else []) + grads


def scan_reference(u, A, B, C, x0, D, return_state=True):
    y, x = ssm_scan_reference(u, A, B, C, x0, D)
    return y, (x if return_state else None)


@pytest.mark.parametrize(
    "kind,L,T,G,intra",
    [
        ("complex", 70, 8, 1, "scan"),  # nine groups of one chunk (the last 6 steps)
        ("complex", 70, 8, 2, "scan"),  # five groups, the last one short chunk
        ("real", 70, 8, 7, "scan"),  # two groups: seven chunks and two
        ("complex", 64, 16, 1, "matmul"),  # whole chunks: the matmul backward too
        ("real", 37, 16, 2, "matmul"),  # a short last chunk: the scan form's backward, in groups of two
    ],
)
def test_scan_groups_and_views(kind, L, T, G, intra):
    from ssmkit.ops.triton.scan import ssm_scan_triton

    inputs = [cast(t, F64) for t in scan_inputs(kind, L=L, H=3, N=5, Bsz=1)]
    fn = lambda *a, **k: ssm_scan_triton(*a, chunk_size=T, chunks_per_program=G, intra_chunk=intra, **k)  # noqa: E731
    got, want = scan_run(fn, inputs, views=True), scan_run(scan_reference, inputs, views=True)
    for name, a, b in zip(["y", "x_L", *SCAN_NAMES], got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert rel_err(a, b) < TOL[F64], name


@pytest.mark.parametrize(
    "with_state,with_D,loss,return_state",
    [
        (True, False, "x", True),  # the final state alone: ∂y = 0
        (True, True, "y", False),  # no final state returned: ∂x_L never given
        (False, False, "both", True),  # no initial state, no skip
    ],
)
def test_scan_initial_state_gradients_and_return_state(with_state, with_D, loss, return_state):
    from ssmkit.ops.triton.scan import ssm_scan_triton

    inputs = [cast(t, F64) for t in scan_inputs("complex", L=21, H=3, N=3, Bsz=2)]
    fn = lambda *a, **k: ssm_scan_triton(*a, chunk_size=8, **k)  # noqa: E731
    got = scan_run(fn, inputs, False, with_state, with_D, loss, return_state)
    want = scan_run(scan_reference, inputs, False, with_state, with_D, loss, return_state)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert rel_err(a, b) < TOL[F64]
    if not return_state:
        assert ssm_scan_triton(*inputs, return_state=False)[1] is None


@pytest.mark.parametrize("intra", ["scan", "matmul"])
def test_scan_forward_without_grad_keeps_no_checkpoints(intra, monkeypatch):
    from ssmkit.ops.triton import scan as scan_module
    from ssmkit.ops.triton import scan_mm

    saved = []
    if intra == "scan":
        real = scan_module._forward_kernel
        monkeypatch.setattr(scan_module, "_forward_kernel", lambda *a: saved.append(a[8]) or real(*a))
    else:
        real = scan_mm._forward_mm_kernel
        monkeypatch.setattr(scan_mm, "_forward_mm_kernel", lambda *a: saved.append(a[10]) or real(*a))
    inputs = [cast(t, F64).requires_grad_() for t in scan_inputs("complex", L=20, H=2, N=3, Bsz=1)]
    with torch.no_grad():
        y, x = scan_module.ssm_scan_triton(*inputs, chunk_size=16, intra_chunk=intra)
    y_ref, x_ref = ssm_scan_reference(*(t.detach() for t in inputs))
    assert saved == [False] and y.grad_fn is None
    assert rel_err(y, y_ref) < TOL[F64] and rel_err(x, x_ref) < TOL[F64]
    y, x = scan_module.ssm_scan_triton(*inputs, chunk_size=16, intra_chunk=intra)
    assert saved == [False, True] and y.grad_fn is not None


# ----------------------------------------------------------------------------------------------------
# the selective scan (Mamba-1)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tiles,G,L",
    [
        (dict(chunk=16, forward_chunk=16, block_h=1, backward_block_h=2), None, 37),
        (dict(chunk=8, forward_chunk=2, block_h=8, backward_block_h=8, num_warps=2), 3, 37),
        (dict(chunk=64, forward_chunk=4, num_stages=2), 1, 70),  # one checkpoint chunk and a part
        (dict(chunk=32, forward_chunk=32, block_h=2, backward_block_h=1), 2, 32),  # whole chunks
    ],
)
def test_selective_tiles_and_views(tiles, G, L):
    # explicit Tiles (channel blocks wider and narrower than a group's 6 / 3 / 2 channels, forward tiles as long as
    # the checkpoint chunk or a quarter of it); u, δ, z transposed views, A and D strided, B and C expanded across
    # the batch; strided output gradients
    from ssmkit.ops.triton.selective import Tiles, selective_scan_triton

    x = selective_inputs(L=L, H=6, N=5, G=G)

    def run(fn):
        base = {k: v.to(DEVICE) for k, v in x.items()}
        base["u"], base["delta"], base["z"] = (base[k].transpose(0, 1).contiguous() for k in ("u", "delta", "z"))
        base["A"], base["D"] = torch.stack([base["A"]] * 2, 1), torch.stack([base["D"]] * 2, 1)
        base["B"], base["C"] = base["B"][:1], base["C"][1:]
        base = {k: v.clone().requires_grad_() for k, v in base.items()}
        args = dict(base, u=base["u"].transpose(0, 1), delta=base["delta"].transpose(0, 1),
                    z=base["z"].transpose(0, 1), A=base["A"][:, 1], D=base["D"][:, 0],
                    B=base["B"].expand(2, *base["B"].shape[1:]), C=base["C"].expand(2, *base["C"].shape[1:]))
        y, h = fn(**args, delta_softplus=True)
        g = torch.Generator().manual_seed(9)
        gy = torch.randn(y.shape[1], y.shape[0], y.shape[2], generator=g, dtype=F64).to(y).transpose(0, 1)
        gh = torch.randn(h.shape, generator=g, dtype=F64).to(h)
        names = list(base)
        return names, [y, h, *torch.autograd.grad((y * gy).sum() + (h * gh).sum(), [base[k] for k in names])]

    names, got = run(lambda **a: selective_scan_triton(**a, tiles=Tiles(**tiles)))
    _, want = run(selective_scan_reference)
    for name, a, b in zip(["y", "h_L", *names], got, want):
        assert rel_err(a, b) < TOL[F64], name


@pytest.mark.parametrize("out", [0, 1])
def test_selective_initial_state_gradient_without_options(out):
    # no D, z, b_Δ or softplus, an initial state: the loss through y alone (return_state=False), or the final state
    # alone; ∂h_{-1} included
    from ssmkit.ops.triton.selective import selective_scan_triton

    x = selective_inputs(L=21, H=4, N=3, G=2)
    use = [k for k in SELECTIVE_NAMES if k in ("u", "delta", "A", "B", "C", "state")]
    grads = []
    for fn in (selective_scan_triton, selective_scan_reference):
        leaves = {k: (v.to(DEVICE).abs() if k == "delta" else v.to(DEVICE)).requires_grad_() for k, v in x.items()
                  if k in use}
        res = fn(**leaves, return_state=out == 1)
        assert (res[1] is None) == (out == 0)
        got = torch.autograd.grad(res[out].square().sum(), list(leaves.values()), allow_unused=True)
        grads.append([res[out]] + [torch.zeros_like(v) if g is None else g for g, v in zip(got, leaves.values())])
    for name, a, b in zip(["out", *use], *grads):
        assert (a - b).abs().max() <= TOL[F64] * b.abs().max().clamp_min(1.0), name


def test_selective_float32_against_the_float64_reference():
    from ssmkit.ops.triton.selective import selective_scan_triton

    inputs = selective_inputs(L=21, H=4, N=17, G=2)  # N 17: a state tile of 32
    kernel = lambda **a: selective_scan_triton(**a)  # noqa: E731
    names, got = selective_values_and_grads(kernel, inputs, torch.float32, EVERY_INPUT, True)
    _, want = selective_values_and_grads(selective_scan_reference, inputs, F64, EVERY_INPUT, True)
    assert names == ["y", "h_L", *SELECTIVE_NAMES]
    for name, a, b in zip(names, got, want):
        assert a.dtype == torch.float32 and rel_err(a, b) < TOL[torch.float32], name


def test_selective_forward_without_grad_keeps_no_checkpoints(monkeypatch):
    from ssmkit.ops.triton import selective as selective_module

    saved = []
    real = selective_module._forward_kernel
    monkeypatch.setattr(selective_module, "_forward_kernel", lambda *a: saved.append(a[11]) or real(*a))
    x = {k: v.to(DEVICE).requires_grad_() for k, v in selective_inputs(L=11, H=3, N=2, G=None).items()}
    with torch.no_grad():
        y, h = selective_module.selective_scan_triton(**x, delta_softplus=True)
    y_ref, h_ref = selective_scan_reference(**{k: v.detach() for k, v in x.items()}, delta_softplus=True)
    assert saved == [False] and y.grad_fn is None
    assert rel_err(y, y_ref) < TOL[F64] and rel_err(h, h_ref) < TOL[F64]
    y, h = selective_module.selective_scan_triton(**x, delta_softplus=True)
    assert saved == [False, True] and y.grad_fn is not None
