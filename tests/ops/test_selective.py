"""The selective scan (ssmkit.ops.selective): every path against an independent float64 loop written here in numpy,
gradients (gradcheck, and the chunked backward against autograd through the loop), the one-step op, a hand-computed
case and the input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ssmkit.ops as ops
from ssmkit.ops.native import native_available, selective_scan_native
from ssmkit.ops.selective import default_chunk_size, selective_scan_chunked, selective_scan_reference, selective_step
from tests.conftest import DEVICE, rel_err

# the C kernel runs on the CPU where it builds (tests/ops/test_native.py covers the build and its refusals)
NATIVE = DEVICE.type == "cpu" and native_available("selective_scan", torch.float64) and native_available("selective_scan", torch.float32)
needs_native = pytest.mark.skipif(not NATIVE, reason="the native backend runs on the CPU where a C compiler builds it")

F64 = torch.float64
Bsz, L, H, N = 2, 13, 6, 4  # pairwise distinct, L not a multiple of the chunk sizes below


def inputs(G: int | None = None, dtype=F64, L: int = L, seed: int = 0, requires_grad: bool = False):
    """u, δ (B, L, H), A (H, N) < 0, B, C (B, L, N) or (B, L, G, N), D, b_Δ (H,), z (B, L, H), h0 (B, H, N)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=dtype, generator=g)  # noqa: E731
    bc = (Bsz, L, N) if G is None else (Bsz, L, G, N)
    out = dict(u=r(Bsz, L, H), delta=r(Bsz, L, H), A=-torch.rand(H, N, dtype=dtype, generator=g) * 2 - 0.1, B=r(*bc),
               C=r(*bc), D=r(H), z=r(Bsz, L, H), delta_bias=r(H) * 0.5, state=r(Bsz, H, N))
    return {k: v.to(DEVICE).requires_grad_(requires_grad) for k, v in out.items()}


def numpy_loop(u, delta, A, B, C, D, z, delta_bias, state):
    """The selective scan in float64 numpy, one channel, state and step at a time (independent of ssmkit)."""
    u, delta, A, B, C, D, z, b, h = (np.asarray(t.detach().cpu(), dtype=np.float64) for t in (u, delta, A, B, C, D, z, delta_bias, state))
    Bsz_, L_, H_ = u.shape
    N_ = A.shape[1]
    P = H_ // (B.shape[2] if B.ndim == 4 else 1)
    y = np.zeros_like(u)
    h = h.copy()
    for bi in range(Bsz_):
        for t in range(L_):
            for c in range(H_):
                x = delta[bi, t, c] + b[c]
                dt = max(x, 0.0) + math.log1p(math.exp(-abs(x)))  # softplus
                Bv = B[bi, t, c // P] if B.ndim == 4 else B[bi, t]
                Cv = C[bi, t, c // P] if C.ndim == 4 else C[bi, t]
                acc = 0.0
                for n in range(N_):
                    h[bi, c, n] = math.exp(dt * A[c, n]) * h[bi, c, n] + dt * Bv[n] * u[bi, t, c]
                    acc += Cv[n] * h[bi, c, n]
                gate = z[bi, t, c] / (1 + math.exp(-z[bi, t, c]))  # SiLU
                y[bi, t, c] = (acc + D[c] * u[bi, t, c]) * gate
    return torch.from_numpy(y), torch.from_numpy(h)


PATHS = {
    "reference": selective_scan_reference,
    "chunked T=4": lambda *a: selective_scan_chunked(*a, chunk_size=4),
    "chunked T=5": lambda *a: selective_scan_chunked(*a, chunk_size=5),
    "chunked T=1": lambda *a: selective_scan_chunked(*a, chunk_size=1),
    "chunked default": selective_scan_chunked,
    "native T=4": lambda *a: selective_scan_native(*a, chunk_size=4),
    "native default": selective_scan_native,
}


@pytest.mark.parametrize("G", [None, 1, 3])
@pytest.mark.parametrize("path", list(PATHS))
def test_every_path_equals_an_independent_float64_loop(path, G):
    if path.startswith("native") and not NATIVE:
        pytest.skip("the native backend runs on the CPU where a C compiler builds it")
    p = inputs(G)
    y_np, h_np = numpy_loop(**p)
    y, h = PATHS[path](p["u"], p["delta"], p["A"], p["B"], p["C"], p["D"], p["z"], p["delta_bias"], True, p["state"])
    assert rel_err(y, y_np) < 1e-12 and rel_err(h, h_np) < 1e-12  # float64: rounding only


def test_options_off_and_the_dispatch():
    p = inputs()
    # no D, no z, no bias, no softplus: y = C · h with Δ = δ (made positive here)
    delta = p["delta"].abs()
    y, h = selective_scan_reference(p["u"], delta, p["A"], p["B"], p["C"])
    for backend in ("auto", "chunked", "reference", *(("native",) if NATIVE else ())):
        y2, h2 = ops.selective_scan(p["u"], delta, p["A"], p["B"], p["C"], backend=backend)
        assert rel_err(y2, y) < 1e-12 and rel_err(h2, h) < 1e-12
    y3, none = ops.selective_scan(p["u"], delta, p["A"], p["B"], p["C"], return_state=False)
    assert none is None and rel_err(y3, y) < 1e-12
    with pytest.raises(RuntimeError, match="selective_scan: backend 'fft' was forced"):
        ops.selective_scan(p["u"], delta, p["A"], p["B"], p["C"], backend="fft")


def test_a_hand_computed_case():
    # one channel, one state, A = -ln 2, Δ = 1 (no softplus): h_t = h_{t-1}/2 + u_t B_t, y_t = C_t h_t + D u_t
    u = torch.tensor([[[1.0], [2.0], [0.0]]], dtype=F64, device=DEVICE)
    ones = torch.ones(1, 3, 1, dtype=F64, device=DEVICE)
    A = torch.tensor([[-math.log(2.0)]], dtype=F64, device=DEVICE)
    C = torch.tensor([[[1.0], [3.0], [-1.0]]], dtype=F64, device=DEVICE)
    D = torch.tensor([0.5], dtype=F64, device=DEVICE)
    h0 = torch.tensor([[[4.0]]], dtype=F64, device=DEVICE)
    # h = 4/2 + 1 = 3, 3/2 + 2 = 3.5, 3.5/2 = 1.75; y = 3 + 0.5, 10.5 + 1, -1.75
    fns = [selective_scan_reference, lambda *a, **k: selective_scan_chunked(*a, **k, chunk_size=2)]
    if NATIVE:
        fns.append(lambda *a, **k: selective_scan_native(*a, **k, chunk_size=2))
    for fn in fns:
        y, h = fn(u, ones, A, ones, C, D, state=h0)
        assert torch.allclose(y.flatten(), torch.tensor([3.5, 11.5, -1.75], dtype=F64, device=DEVICE), atol=1e-14)
        assert torch.allclose(h.flatten(), torch.tensor([1.75], dtype=F64, device=DEVICE), atol=1e-14)


NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "state")


def scan_args(p):
    return [p[k] for k in NAMES]


@pytest.mark.parametrize("path", ["chunked", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("G", [None, 2])
def test_gradcheck_of_the_fast_paths(G, path):
    # every input and the initial state, through the output and the final state (float64, tiny)
    g = torch.Generator().manual_seed(3)
    p = {k: v[:1, :7] if v.dim() >= 3 and k not in ("A", "state") else v for k, v in inputs(G, L=7).items()}
    p["state"] = p["state"][:1]
    p = {k: v.detach().clone().requires_grad_() for k, v in p.items()}
    w = torch.randn(1, 7, H, dtype=F64, generator=g).to(DEVICE)

    fast = selective_scan_chunked if path == "chunked" else selective_scan_native

    def f(*args):
        y, h = fast(*args[:8], True, args[8], chunk_size=3)
        return (y * w).sum() + h.square().sum()

    assert torch.autograd.gradcheck(f, tuple(scan_args(p)), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("path", ["chunked", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("T", [1, 4, 5, 64])
@pytest.mark.parametrize("G", [None, 3])
def test_fast_gradients_equal_the_reference_loop(G, T, path):
    p = inputs(G, requires_grad=True)
    args = scan_args(p)
    gy = torch.randn(Bsz, L, H, dtype=F64, device=DEVICE)
    gh = torch.randn(Bsz, H, N, dtype=F64, device=DEVICE)

    def grads(fn):
        y, h = fn(*args[:8], True, args[8])
        return torch.autograd.grad((y * gy).sum() + (h * gh).sum(), args)

    ref = grads(selective_scan_reference)
    fast = selective_scan_chunked if path == "chunked" else selective_scan_native
    got = grads(lambda *a: fast(*a, chunk_size=T))
    for name, a, b in zip(NAMES, got, ref):
        assert rel_err(a, b) < 1e-12, name


@pytest.mark.parametrize("path", ["chunked", pytest.param("native", marks=needs_native)])
def test_float32_fast_paths_are_as_accurate_as_the_float32_loop(path):
    # L = 300 with realistic magnitudes (Δ ~ 1e-3..1e-1 through softplus, A = -(1..N)); errors against float64
    p = inputs(dtype=F64, L=300, seed=5)
    p["A"] = -torch.arange(1, N + 1, dtype=F64, device=DEVICE).expand(H, N).contiguous()
    p["delta"] = p["delta"] - 3.0
    y64, h64 = selective_scan_reference(*scan_args(p)[:8], True, p["state"])
    p32 = [t.float() for t in scan_args(p)]
    y_ref, h_ref = selective_scan_reference(*p32[:8], True, p32[8])
    fast = selective_scan_chunked if path == "chunked" else selective_scan_native
    y_ch, h_ch = fast(*p32[:8], True, p32[8])
    assert rel_err(y_ch, y64) < max(2 * rel_err(y_ref, y64), 1e-6)
    assert rel_err(h_ch, h64) < max(2 * rel_err(h_ref, h64), 1e-6)


@pytest.mark.parametrize("G", [None, 3])
def test_step_equals_the_scan(G):
    p = inputs(G)
    y, h = selective_scan_reference(*scan_args(p)[:8], True, p["state"])
    state = p["state"]
    for t in range(L):
        y_t, state = selective_step(p["u"][:, t], p["delta"][:, t], p["A"], p["B"][:, t], p["C"][:, t], p["D"], p["z"][:, t],
                                    p["delta_bias"], True, state)
        assert rel_err(y_t, y[:, t]) < 1e-12
    assert rel_err(state, h) < 1e-12


def test_default_chunk_size():
    assert default_chunk_size(8, 512, 16) == 8  # a chunk of Ā: 8·8·512·16 = 2^19 values
    assert default_chunk_size(1, 6, 4) == 128
    assert all(8 <= default_chunk_size(b, 64, 16) <= 128 for b in (1, 4, 64, 4096))


BAD = [
    (dict(u=torch.randn(2, 5)), r"u must be \(B, L, H\)"),
    (dict(u=torch.randn(2, 0, 6)), r"u must be \(B, L, H\) with B, L >= 1"),
    (dict(u=torch.ones(2, 5, 6, dtype=torch.int64)), "floating-point"),
    (dict(delta=torch.randn(2, 5, 7)), r"delta must be \(B, L, H\)"),
    (dict(A=torch.randn(5, 4)), r"A must be \(H, N\) with H=6"),
    (dict(B=torch.randn(2, 5, 3)), r"B and C must have one shape; got B \(2, 5, 3\) and C \(2, 5, 4\)"),
    (dict(B=torch.randn(2, 5, 3), C=torch.randn(2, 5, 3)), r"B and C must be \(B, L, N\) = \(2, 5, 4\) or grouped"),
    (dict(B=torch.randn(2, 5, 4, 4), C=torch.randn(2, 5, 4, 4)), "G dividing H=6"),
    (dict(D=torch.randn(5)), r"D must be \(H,\) = \(6,\)"),
    (dict(delta_bias=torch.randn(6, 1)), r"delta_bias must be \(H,\)"),
    (dict(z=torch.randn(2, 5, 5)), r"z must be \(B, L, H\)"),
    (dict(state=torch.randn(2, 6, 5)), r"state must be \(B, H, N\) = \(2, 6, 4\)"),
    (dict(state=torch.randn(2, 6, 4, dtype=F64)), "state must have u's dtype torch.float32"),
    (dict(A=[[1.0]]), "A must be a torch.Tensor"),
    (dict(delta=torch.randn(2, 5, 6, device="meta")), "delta must be on u's device cpu; got meta"),  # a second device
    (dict(u=torch.randn(0, 5, 6), delta=torch.randn(0, 5, 6), z=torch.randn(0, 5, 6)), r"u must be \(B, L, H\) with B, L >= 1"),
    (dict(A=-torch.rand(6, 0)), r"A must be \(H, N\) with H=6"),  # N = 0
    (dict(B=torch.randn(2, 5, 0, 4), C=torch.randn(2, 5, 0, 4)), "G dividing H=6"),  # G = 0: not a division by zero
]


@pytest.mark.parametrize("backend", ["reference", "chunked", "native"])
@pytest.mark.parametrize("bad,match", BAD)
def test_bad_inputs_raise(bad, match, backend):
    good = dict(u=torch.randn(2, 5, 6), delta=torch.randn(2, 5, 6), A=-torch.rand(6, 4), B=torch.randn(2, 5, 4),
                C=torch.randn(2, 5, 4), D=torch.randn(6), z=torch.randn(2, 5, 6), delta_bias=torch.randn(6),
                state=torch.randn(2, 6, 4))
    args = {**good, **bad}
    with pytest.raises(ValueError, match=match):
        ops.selective_scan(*[args[k] for k in NAMES[:8]], True, args["state"], backend=backend)


def test_step_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"u_t must be \(B, H\)"):
        selective_step(torch.randn(2, 5, 6), torch.randn(2, 5, 6), -torch.rand(6, 4), torch.randn(2, 4), torch.randn(2, 4),
                       None, None, None, True, torch.zeros(2, 6, 4))
    with pytest.raises(ValueError, match=r"B and C must be \(B, N\) = \(2, 4\)"):
        selective_step(torch.randn(2, 6), torch.randn(2, 6), -torch.rand(6, 4), torch.randn(2, 5), torch.randn(2, 5),
                       None, None, None, True, torch.zeros(2, 6, 4))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        selective_scan_chunked(torch.randn(2, 5, 6), torch.randn(2, 5, 6), -torch.rand(6, 4), torch.randn(2, 5, 4),
                               torch.randn(2, 5, 4), chunk_size=0)


def test_chunked_under_vmap_and_func_grad_equals_the_loops():
    # torch.func traces the chunked path's out-of-place forms (no buffers, no out=): the states stacked, the adjoint
    # λ_t = C_t g_t + Ā_{t+1} ⊙ λ_{t+1} run backwards through each chunk by its own loop. Values against the numpy
    # loop per sample; every gradient against autograd through the reference loop, per sample
    from torch import func

    ps = [inputs(3, seed=s) for s in range(3)]
    stacked = [torch.stack([p[k] for p in ps]) for k in NAMES]

    def loss(fn, *a):
        y, h = fn(*a[:8], True, a[8])
        return (y * y.detach().cos()).sum() + (h * h.detach().sin()).sum()

    def chunked(*a):
        return selective_scan_chunked(*a, chunk_size=4)  # L = 13: chunks of 4, 4, 4, 1

    y, h = func.vmap(lambda *a: chunked(*a[:8], True, a[8]))(*stacked)
    grads = func.vmap(func.grad(lambda *a: loss(chunked, *a), argnums=tuple(range(9))))(*stacked)
    for i, p in enumerate(ps):
        y_np, h_np = numpy_loop(**p)
        assert rel_err(y[i], y_np) < 1e-12 and rel_err(h[i], h_np) < 1e-12
        leaves = [t.detach().clone().requires_grad_() for t in scan_args(p)]
        want = torch.autograd.grad(loss(selective_scan_reference, *leaves), leaves)
        for name, a, b in zip(NAMES, grads, want):
            assert rel_err(a[i], b) < 1e-12, (i, name)


def test_step_names_a_bad_u_t_or_delta_t():
    # u_t fixes B and H; δ_t is checked against it (not the other way round)
    A, BC, state = -torch.rand(6, 4), torch.randn(2, 4), torch.zeros(2, 6, 4)
    with pytest.raises(ValueError, match=r"u_t must be \(B, H\) \(2 dimensions\); got shape \(2, 5, 6\)"):
        selective_step(torch.randn(2, 5, 6), torch.randn(2, 6), A, BC, BC, None, None, None, True, state)
    with pytest.raises(ValueError, match=r"delta must be \(B, H\) = \(2, 6\) like u; got \(2, 5\)"):
        selective_step(torch.randn(2, 6), torch.randn(2, 5), A, BC, BC, None, None, None, True, state)
    with pytest.raises(ValueError, match=r"B and C must have one shape; got B \(2, 5\) and C \(2, 4\)"):
        selective_step(torch.randn(2, 6), torch.randn(2, 6), A, torch.randn(2, 5), BC, None, None, None, True, state)
    with pytest.raises(ValueError, match=r"u_t must have a floating-point dtype \(float32 or float64\); got torch.int64"):
        selective_step(torch.ones(2, 6, dtype=torch.int64), torch.randn(2, 6), A, BC, BC, None, None, None, True, state)


def test_default_chunk_size_is_the_largest_power_of_two_that_fits():
    # the docstring's definition, by enumeration: the largest T in {8, ..., 128} with T·B·H·N <= 2^19 (8 when none),
    # on both sides of the bound (1·256·16·128 = 2^19 exactly; 17 states: 64)
    def by_definition(b, h, n):
        fits = [T for T in (8, 16, 32, 64, 128) if T * b * h * n <= 2**19]
        return max(fits) if fits else 8

    cases = [(1, 256, 16), (1, 256, 17), (2, 256, 16), (1, 6, 4), (8, 512, 16), (4, 64, 32), (1, 4096, 16), (16, 512, 16),
             (3, 5, 7)]
    assert [default_chunk_size(*c) for c in cases] == [by_definition(*c) for c in cases] == [128, 64, 64, 128, 8, 64, 8, 8, 128]


def test_step_names_a_missing_state():
    # _check_selective skipped a state of None, which the step needs: AttributeError from reshape (probe 23)
    with pytest.raises(ValueError, match=r"state must be the previous state \(B, H, N\) = \(2, 6, 4\) for a step"):
        selective_step(torch.randn(2, 6), torch.randn(2, 6), -torch.rand(6, 4), torch.randn(2, 4), torch.randn(2, 4),
                       None, None, None, True, None)


@pytest.mark.parametrize("G", [None, 3])
def test_step_without_options_equals_the_numpy_loop(G):
    # no skip, gate or bias and no softplus: the numpy loop with D = 0, z → ∞ (SiLU(z) = z·σ(z) → z: so a gate of
    # z = 40 scaled back, σ(40) = 1 - 4e-18), b_Δ = 0 and δ = softplus⁻¹(Δ) with Δ = |δ| + 0.1 given to the step
    p = inputs(G)
    dt = p["delta"].abs() + 0.1
    zeros = torch.zeros(H, dtype=F64, device=DEVICE)
    gate = torch.full_like(p["z"], 40.0)
    y_np, h_np = numpy_loop(p["u"], torch.log(torch.expm1(dt)), p["A"], p["B"], p["C"], zeros, gate, zeros, p["state"])
    state = p["state"]
    for t in range(L):
        y_t, state = selective_step(p["u"][:, t], dt[:, t], p["A"], p["B"][:, t], p["C"][:, t], None, None, None, False, state)
        assert rel_err(y_t, y_np[:, t] / 40.0) < 1e-12
    assert rel_err(state, h_np) < 1e-12


def test_step_rejects_zero_groups():
    # B_t (B, G, N) with G = 0: a ValueError, not a division by zero
    with pytest.raises(ValueError, match=r"B and C must be \(B, N\) = \(2, 4\) or grouped \(B, G, N\) with G dividing H=6"):
        selective_step(torch.randn(2, 6), torch.randn(2, 6), -torch.rand(6, 4), torch.randn(2, 0, 4), torch.randn(2, 0, 4),
                       None, None, None, True, torch.zeros(2, 6, 4))


def test_chunk_buffers_fit_a_short_last_chunk_without_a_warning():
    # each chunk's out= buffers are sliced to its own length: an out= of the wrong length would be resized by torch
    # with a (deprecated-behaviour) UserWarning, and later torch releases will refuse it. L = 13 in chunks of 4: 4, 4, 4, 1
    import warnings

    p = inputs(requires_grad=True)
    args = scan_args(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, h = selective_scan_chunked(*args[:8], True, args[8], chunk_size=4)
        grads = torch.autograd.grad(y.sum() + h.sum(), args)
    y_np, h_np = numpy_loop(**p)
    assert rel_err(y, y_np) < 1e-12 and rel_err(h, h_np) < 1e-12
    ref = torch.autograd.grad(sum(t.sum() for t in selective_scan_reference(*args[:8], True, args[8])), args)
    for name, a, b in zip(NAMES, grads, ref):
        assert rel_err(a, b) < 1e-12, name


@pytest.mark.parametrize("L_,T", [(13, 4), (3, 4), (13, 64)])
def test_chunk_buffers_hold_one_chunk(monkeypatch, L_, T):
    # the chunked path's memory bound: its reused buffers hold min(T, L) steps of the states, never all L
    import ssmkit.ops.selective as selective

    shapes = []
    Buffers = selective._ChunkBuffers

    class Spy(Buffers):
        def __init__(self, names, shape, like, enabled):
            shapes.append(shape[0])
            super().__init__(names, shape, like, enabled)

    monkeypatch.setattr(selective, "_ChunkBuffers", Spy)
    p = inputs(L=L_, requires_grad=True)
    y, h = selective_scan_chunked(*scan_args(p)[:8], True, p["state"], chunk_size=T)
    (y.sum() + h.sum()).backward()
    assert shapes == [min(T, L_)] * 2  # forward and backward
    y_np, h_np = numpy_loop(**p)
    assert rel_err(y, y_np) < 1e-12 and rel_err(h, h_np) < 1e-12


def test_double_backward_of_the_grouped_chunked_scan_from_rest_equals_the_loop():
    # create_graph: the chunked backward is autograd's through its step loop (_core_loop), here with G = 3 groups of
    # P = 2 channels and no initial state, against autograd twice through the reference loop
    p = inputs(3, requires_grad=True)
    args = scan_args(p)[:8]
    g = torch.Generator().manual_seed(7)
    gy = torch.randn(Bsz, L, H, dtype=F64, generator=g).to(DEVICE)

    def second(fn):
        y, h = fn(*args, True, None)
        first = torch.autograd.grad((y * gy).sum() + h.square().sum(), args, create_graph=True)
        return torch.autograd.grad(sum((d * d.detach().cos()).sum() for d in first), args)

    want = second(selective_scan_reference)
    got = second(lambda *a: selective_scan_chunked(*a, chunk_size=4))
    for name, a, b in zip(NAMES, got, want):
        assert rel_err(a, b) < 1e-11, name
