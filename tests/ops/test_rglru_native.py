"""The RG-LRU's C kernel (ssmkit.ops.native.rglru: gate algebra and scan in one pass) against the PyTorch path and the
equations: states, final state and every gradient over channel blocks, resets, initial states and threads; float32
where a_t → 1 (the expm1 series) and where the square root's gradient is clipped; second derivatives; the dispatch;
bad inputs."""

from __future__ import annotations

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.ops.native import native_available
from ssmkit.ops.rglru import rglru, rglru_torch
from tests.conftest import DEVICE, rel_err
from tests.ops.test_native import THREADING_IDS, THREADINGS, use_threads

F64 = torch.float64
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not (native_available("rglru", torch.float32) and native_available("rglru", F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


def inputs(B=2, L=29, H=70, dtype=F64, seed=0, Lambda_shift=0.0, resets=True):
    """x, r, i, Λ, h0, resets: gates in (0.01, 0.99), Λ ~ N(shift, 3²), a reset at 10 % of the steps and at t = 0 of
    the last row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, H, generator=g, dtype=F64)
    r, i = (torch.rand(B, L, H, generator=g, dtype=F64) * 0.98 + 0.01 for _ in range(2))
    Lam = torch.randn(H, generator=g, dtype=F64) * 3 + Lambda_shift
    h0 = torch.randn(B, H, generator=g, dtype=F64)
    flags = torch.rand(B, L, generator=g) < 0.1 if resets else None
    if flags is not None:
        flags[-1, 0] = True
    return [t.to(dtype) for t in (x, r, i, Lam, h0)] + [flags]


def _grads(fn, ins, flags, g_h, g_last):
    h, last = fn(*ins, flags)
    return [h, last, *torch.autograd.grad((h * g_h).sum() + (last * g_last).sum(), ins)]


@pytest.mark.parametrize("threads", THREADINGS, ids=THREADING_IDS)
@pytest.mark.parametrize("H", [5, 130], ids=["partial-block", "three-blocks"])
@pytest.mark.parametrize("with_resets", [True, False], ids=["resets", "no-resets"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "from-rest"])
def test_kernel_equals_the_torch_path_with_every_gradient(H, with_resets, with_h0, threads, monkeypatch):
    use_threads(monkeypatch, *threads)
    x, r, i, Lam, h0, flags = inputs(H=H, resets=with_resets)
    ins = [t.requires_grad_() for t in (x, r, i, Lam, *((h0,) if with_h0 else ()))]
    gen = torch.Generator().manual_seed(3)
    g_h, g_last = torch.randn(x.shape, generator=gen, dtype=F64), torch.randn(h0.shape, generator=gen, dtype=F64)

    def call(fn):  # fn(x, r, i, Λ, c, h0 or None, resets) from (x, r, i, Λ[, h0], resets)
        return lambda x, r, i, Lam, *rest: fn(x, r, i, Lam, 8.0, rest[0] if len(rest) == 2 else None, rest[-1])

    want = _grads(call(lambda *a: rglru_torch(*a, "reference")), ins, flags, g_h, g_last)
    got = _grads(call(lambda *a: rglru(*a, backend="native")), ins, flags, g_h, g_last)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-12


def test_the_equations_and_the_final_state_alone():
    """Against the recurrence written out (a = σ(Λ)^{c r}, √(1 - a²), resets), and with only the final state used."""
    x, r, i, Lam, h0, flags = inputs(H=9)
    h, last = rglru(x, r, i, Lam, 8.0, h0, flags, backend="native")
    state, want = h0, []
    for t in range(x.shape[1]):
        a = torch.sigmoid(Lam) ** (8 * r[:, t])
        m = torch.sqrt(1 - a**2)
        keep = ~flags[:, t, None]
        state = torch.where(keep, a * state + m * i[:, t] * x[:, t], i[:, t] * x[:, t])
        want.append(state)
    assert rel_err(h, torch.stack(want, 1)) < 1e-12 and torch.equal(last, h[:, -1])
    ins = [t.requires_grad_() for t in (x, r, i, Lam, h0)]
    got = torch.autograd.grad(rglru(*ins[:4], 8.0, ins[4], None, backend="native")[1].square().sum(), ins)
    ref = torch.autograd.grad(rglru_torch(*ins[:4], 8.0, ins[4], None, "reference")[1].square().sum(), ins)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("shift", [8.0, 18.0, -6.0], ids=["a-near-1", "clipped-sqrt-gradient", "a-near-0"])
def test_float32_against_float64_where_a_nears_1_and_0(shift):
    """Λ ~ 8 ± 3 gives 1 - a_t² down to ~1e-5 (the float32 expm1 by its series), Λ ~ 18 ± 3 takes the square root's
    derivative to its clip (4(1 - a²) < 1e-6), Λ ~ -6 takes a_t to ~0 (e^x - 1): float32 within its rounding of the
    float64 kernel, which equals the PyTorch path (the test above); gradients within 1e-4 of their scale."""
    ins64 = inputs(B=2, L=200, H=64, Lambda_shift=shift)
    flags = ins64.pop()
    ins64 = [t.requires_grad_() for t in ins64]
    ins32 = [t.detach().float().requires_grad_() for t in ins64]
    g_h = torch.randn(ins64[0].shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    out64 = _grads(lambda *a: rglru(*a[:4], 8.0, *a[4:], backend="native"), ins64, flags, g_h, 1.0)
    out32 = _grads(lambda *a: rglru(*a[:4], 8.0, *a[4:], backend="native"), ins32, flags, g_h.float(), 1.0)
    ref64 = _grads(lambda *a: rglru_torch(*a[:4], 8.0, *a[4:], "reference"), ins64, flags, g_h, 1.0)
    for a, b, c in zip(out32, out64, ref64):
        assert rel_err(b, c) < 1e-12
        assert rel_err(a.double(), b) < 1e-5


def test_second_derivatives_equal_the_torch_paths():
    x, r, i, Lam, h0, flags = inputs(B=2, L=40, H=6)
    ins = [t.requires_grad_() for t in (x, r, i, Lam, h0)]

    def second(fn):
        h, last = fn(*ins[:4], 8.0, ins[4], flags)
        grads = torch.autograd.grad(h.square().sum() + last.sum(), ins, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), ins)

    got = second(lambda *a: rglru(*a, backend="native"))
    want = second(lambda *a: rglru_torch(*a, "reference"))
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-10


def test_gradients_do_not_depend_on_the_threads(monkeypatch):
    runs = []
    for threads in THREADINGS:
        use_threads(monkeypatch, *threads)
        *ins, flags = inputs(B=3, L=50, H=150, dtype=torch.float32)
        ins = [t.requires_grad_() for t in ins]
        h, last = rglru(*ins[:4], 8.0, ins[4], flags, backend="native")
        runs.append([h, *torch.autograd.grad(h.sin().sum() + last.sum(), ins)])
    for other in runs[1:]:
        for a, b in zip(other, runs[0]):
            assert torch.equal(a, b)  # bit for bit: 1 thread, 3 OpenMP threads, 3 Python threads


def test_auto_takes_the_kernel_and_the_other_backends_do_not(monkeypatch):
    import ssmkit.ops.native.rglru as kernel

    calls = []
    real = kernel._forward_kernel
    monkeypatch.setattr(kernel, "_forward_kernel", lambda *a: calls.append(1) or real(*a))
    x, r, i, Lam, h0, flags = inputs(H=7)
    want = rglru_torch(x, r, i, Lam, 8.0, h0, flags, "reference")[0]
    for backend, kernel_runs in (("auto", True), ("native", True), ("chunked", False), ("reference", False)):
        calls.clear()
        with ops.use_backend(backend):
            got = rglru(x, r, i, Lam, 8.0, h0, flags)[0]
        assert bool(calls) == kernel_runs and rel_err(got, want) < 1e-12
    calls.clear()
    rglru(x, r.float(), i, Lam, 8.0, h0, flags)  # mixed dtypes: "auto" keeps the PyTorch path
    assert not calls
    with pytest.raises(RuntimeError, match="backend 'native' takes x, r, i, Lambda and h0 in one dtype"):
        rglru(x, r.float(), i, Lam, 8.0, h0, flags, backend="native")


def test_bad_inputs_raise_by_name():
    x, r, i, Lam, h0, flags = inputs(H=7)
    with pytest.raises(ValueError, match=r"r must have x's shape \(B, L, H\)"):
        rglru(x, r[:, :-1], i, Lam)
    with pytest.raises(ValueError, match=r"Lambda must be \(H,\) = \(7,\)"):
        rglru(x, r, i, Lam[:-1])
    with pytest.raises(ValueError, match=r"h0 must be \(B, H\)"):
        rglru(x, r, i, Lam, 8.0, h0[:1])
    with pytest.raises(ValueError, match=r"resets must be a bool tensor \(B, L\)"):
        rglru(x, r, i, Lam, 8.0, h0, flags.float())
    with pytest.raises(ValueError, match="x must be a real floating-point tensor; got list"):
        rglru([1.0], r, i, Lam)
