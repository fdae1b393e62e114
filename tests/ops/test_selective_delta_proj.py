"""The selective scan with the low-rank step sizes δ = δlow W_Δᵀ (``delta_proj``, Mamba's ``dt_proj``; the native kernel
forms δ, ∂δlow and ∂W_Δ itself): every backend against the independent float64 numpy loop of test_selective.py fed
δlow W_Δᵀ formed in numpy, gradients against autograd through ``F.linear`` and the reference loop (every input, at
channel counts that take the kernel's vector and scalar blocks), gradcheck, a double backward, and the input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ssmkit.ops as ops
from ssmkit.ops.native import selective_scan_native
from ssmkit.ops.selective import selective_scan_reference
from tests.conftest import DEVICE, rel_err
from tests.ops.test_selective import needs_native, numpy_loop

F64 = torch.float64
Bsz, L, N, R = 2, 13, 4, 3
NAMES = ("u", "delta_low", "A", "B", "C", "D", "z", "delta_bias", "state", "W")


def inputs(H: int, G: int | None = None, dtype=F64, seed: int = 0):
    """The scan's inputs with δlow (B, L, R) and W_Δ (H, R) in place of δ."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=F64, generator=g)  # noqa: E731
    bc = (Bsz, L, N) if G is None else (Bsz, L, G, N)
    out = dict(u=r(Bsz, L, H), delta_low=r(Bsz, L, R), A=-torch.rand(H, N, dtype=F64, generator=g) * 2 - 0.1,
               B=r(*bc), C=r(*bc), D=r(H), z=r(Bsz, L, H), delta_bias=r(H) * 0.5, state=r(Bsz, H, N),
               W=r(H, R) * R**-0.5)
    return {k: v.to(dtype).to(DEVICE) for k, v in out.items()}


def call(fn, p, **kw):
    return fn(p["u"], p["delta_low"], p["A"], p["B"], p["C"], p["D"], p["z"], p["delta_bias"], True, p["state"],
              delta_proj=p["W"], **kw)


BACKENDS = ["reference", "chunked", "auto", pytest.param("native", marks=needs_native)]


@pytest.mark.parametrize("G", [None, 2])
@pytest.mark.parametrize("H", [6, 130])  # 130: two full blocks of 64 channels and a tail of 2 in the native kernel
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_equals_the_float64_loop_on_numpy_delta(backend, H, G):
    p = inputs(H, G)
    delta = torch.from_numpy(np.asarray(p["delta_low"].cpu()) @ np.asarray(p["W"].cpu()).T)  # δ = δlow W_Δᵀ
    y_np, h_np = numpy_loop(p["u"], delta, p["A"], p["B"], p["C"], p["D"], p["z"], p["delta_bias"], p["state"])
    y, h = call(ops.selective_scan, p, backend=backend)
    assert rel_err(y, y_np) < 1e-12 and rel_err(h, h_np) < 1e-12


def grads(fn, p, gy, gh, **kw):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in p.items()}
    y, h = call(fn, leaves, **kw)
    return torch.autograd.grad((y * gy).sum() + (h * gh).sum(), [leaves[k] for k in NAMES])


def loop_with_linear(u, delta_low, *a, delta_proj):
    return selective_scan_reference(u, F.linear(delta_low, delta_proj), *a)


@needs_native
@pytest.mark.parametrize("G", [None, 2])
@pytest.mark.parametrize("H", [6, 130])
@pytest.mark.parametrize("T", [1, 4, 64])
def test_native_gradients_equal_autograd_through_the_loop(T, H, G):
    # ∂δlow and ∂W_Δ are formed inside the kernel (per-block partials, transpose sums): every input's gradient
    p = inputs(H, G)
    g = torch.Generator().manual_seed(1)
    gy, gh = torch.randn(Bsz, L, H, dtype=F64, generator=g), torch.randn(Bsz, H, N, dtype=F64, generator=g)
    ref = grads(loop_with_linear, p, gy, gh)
    got = grads(selective_scan_native, p, gy, gh, chunk_size=T)
    for name, a, b in zip(NAMES, got, ref):
        assert rel_err(a, b) < 1e-12, name


@needs_native
@pytest.mark.parametrize("H", [64, 70])  # one full block of 64 (the AVX-512 float path), and 64 + a tail of 6
def test_native_float32_is_as_accurate_as_the_float32_loop(H):
    p64 = inputs(H)
    p32 = {k: v.float() for k, v in p64.items()}
    g = torch.Generator().manual_seed(2)
    gy, gh = torch.randn(Bsz, L, H, dtype=F64, generator=g), torch.randn(Bsz, H, N, dtype=F64, generator=g)
    exact = grads(loop_with_linear, p64, gy, gh)
    loop32 = grads(loop_with_linear, p32, gy.float(), gh.float())
    native32 = grads(selective_scan_native, p32, gy.float(), gh.float())
    for name, a, b, e in zip(NAMES, native32, loop32, exact):
        assert rel_err(a, e) < 4 * rel_err(b, e) + 1e-6, name


@needs_native
def test_native_gradcheck():
    p = inputs(6, 2)
    p = {k: (v[:1, :6] if k in ("u", "delta_low", "B", "C", "z") else v[:1] if k == "state" else v) for k, v in p.items()}
    leaves = tuple(p[k].detach().clone().requires_grad_() for k in NAMES)
    w = torch.randn(1, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(3))

    def f(*a):
        y, h = selective_scan_native(*a[:8], True, a[8], chunk_size=4, delta_proj=a[9])
        return (y * w).sum() + h.square().sum()

    assert torch.autograd.gradcheck(f, leaves, atol=1e-8, rtol=1e-6)


@needs_native
def test_native_double_backward_equals_the_chunked_one():
    # create_graph: the native backward runs the chunked path's (ops/twice.py), with W_Δ among its inputs
    p = inputs(6)
    results = []
    for backend in ("native", "chunked"):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in p.items()}
        y, _ = call(ops.selective_scan, leaves, backend=backend)
        gW, gd = torch.autograd.grad(y.square().sum(), [leaves["W"], leaves["delta_low"]], create_graph=True)
        results.append(torch.autograd.grad(gW.square().sum() + gd.sum(), [leaves[k] for k in NAMES]))
    for name, a, b in zip(NAMES, *results):
        assert rel_err(a, b) < 1e-10, name


BAD = [
    (dict(W=torch.randn(5, 3)), r"delta_proj must be \(H, R\) with H=6"),
    (dict(W=torch.randn(6)), r"delta_proj must be \(H, R\)"),
    (dict(delta_low=torch.randn(2, 5, 4)), r"delta must be \(B, L, R\) = \(2, 5, 3\) \(R from delta_proj\)"),
    (dict(delta_low=torch.randn(2, 5, 6)), r"delta must be \(B, L, R\) = \(2, 5, 3\)"),
    (dict(W=torch.randn(6, 3, dtype=F64)), "delta_proj must have u's dtype torch.float32"),
    (dict(W=torch.randn(6, 0), delta_low=torch.randn(2, 5, 0)), r"delta_proj must be \(H, R\) with H=6"),  # R = 0
    (dict(B=torch.randn(2, 5, 3)), r"B and C must have one shape; got B \(2, 5, 3\) and C \(2, 5, 4\)"),
]


@pytest.mark.parametrize("backend", ["reference", "chunked", "native"])
@pytest.mark.parametrize("bad,match", BAD)
def test_bad_inputs_raise(bad, match, backend):
    good = dict(u=torch.randn(2, 5, 6), delta_low=torch.randn(2, 5, 3), A=-torch.rand(6, 4), B=torch.randn(2, 5, 4),
                C=torch.randn(2, 5, 4), D=torch.randn(6), z=torch.randn(2, 5, 6), delta_bias=torch.randn(6),
                state=torch.randn(2, 6, 4), W=torch.randn(6, 3))
    with pytest.raises(ValueError, match=match):
        call(ops.selective_scan, {**good, **bad}, backend=backend)


@needs_native
def test_the_native_path_receives_delta_proj_itself(monkeypatch):
    # the C kernel forms δ = δlow W_Δᵀ itself (no (B, L, H) δ tensor, no thin GEMM): selective_scan hands it δlow and
    # W_Δ, where the other paths get δ from F.linear first
    import ssmkit.ops.selective as selective

    calls = []

    def spy(*args, **kwargs):
        calls.append((args[1].shape[-1], kwargs.get("delta_proj") is not None))
        return selective_scan_native(*args, **kwargs)

    monkeypatch.setattr(selective, "selective_scan_native", spy)
    monkeypatch.setitem(selective._SELECTIVE_SCAN, "native", spy)
    p = inputs(6)
    y, h = call(ops.selective_scan, p, backend="native")
    assert calls == [(R, True)]  # δlow (B, L, R) and W_Δ, not δ (B, L, H)
    delta = torch.from_numpy(np.asarray(p["delta_low"].cpu()) @ np.asarray(p["W"].cpu()).T)
    y_np, h_np = numpy_loop(p["u"], delta, p["A"], p["B"], p["C"], p["D"], p["z"], p["delta_bias"], p["state"])
    assert rel_err(y, y_np) < 1e-12 and rel_err(h, h_np) < 1e-12
