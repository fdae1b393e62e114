"""Mamba-2's skip, gate and grouped RMSNorm (ssmkit.ops.gated_norm): the C kernel and the PyTorch path against the
plain float64 formula v_g / √(mean(v_g²) + eps) · w, outputs and every gradient, over gate orders, groups, the skip,
row counts that leave a partial block of rows, strided views and threads; second derivatives; groups near the largest
float; the dispatch; bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops.gated_norm import gated_rmsnorm, gated_rmsnorm_reference
from ssmkit.ops.native import native_available
from tests.conftest import DEVICE, rel_err
from tests.ops.test_native import THREADING_IDS, THREADINGS, use_threads

F64 = torch.float64
native = pytest.mark.skipif(
    DEVICE.type != "cpu" or not (native_available("gated_norm", torch.float32) and native_available("gated_norm", F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


def formula(y, z, w, G, eps, nbg, x=None, D=None):
    """The definition in float64, without any scaling: v_g / √(mean(v_g²) + eps) · w, gated before or after."""
    v = y.double() + (0 if x is None else D.double() * x.double())
    gate = F.silu(z.double())
    v = v if nbg else v * gate
    g = v.unflatten(-1, (G, v.shape[-1] // G))
    out = (g / torch.sqrt(g.square().mean(-1, keepdim=True) + eps)).flatten(-2) * w.double()
    return out * gate if nbg else out


def inputs(rows=(3, 45), E=12, G=3, dtype=F64, seed=0, strided=False):
    """y, z, w, x, D; with ``strided``, z and x are column slices of wider tensors (as the mixer's are)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64).to(dtype)  # noqa: E731
    scale = torch.logspace(-2, 2, G, dtype=F64).repeat_interleave(E // G).to(dtype)  # groups at their own scales
    y, w, D = r(*rows, E) * scale, 1 + 0.3 * r(E), r(E)
    z, x = (r(*rows, E + 5)[..., 2:E + 2] if strided else r(*rows, E) for _ in range(2))
    return y, z, w, x, D


def _grads(fn, ins, gout):
    out = fn(*ins)
    return [out, *torch.autograd.grad((out * gout).sum(), ins)]


@native
@pytest.mark.parametrize("threads", THREADINGS, ids=THREADING_IDS)
@pytest.mark.parametrize("nbg", [False, True], ids=["gate-first", "norm-first"])
@pytest.mark.parametrize("skip", [True, False], ids=["skip", "no-skip"])
@pytest.mark.parametrize("shape", [((3, 45), 12, 3), ((1, 64), 8, 1), ((2, 5), 40, 4), ((130,), 6, 6)],
                         ids=["partial-rows", "one-block", "wide", "one-per-group"])
def test_kernel_and_torch_path_equal_the_formula_with_every_gradient(shape, skip, nbg, threads, monkeypatch):
    use_threads(monkeypatch, *threads)
    rows, E, G = shape
    y, z, w, x, D = (t.requires_grad_() for t in inputs(rows, E, G, strided=True))
    ins = [y, z, w, *((x, D) if skip else ())]
    gout = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    want = _grads(lambda *a: formula(*a[:3], G, 1e-5, nbg, *a[3:]), ins, gout)
    for fn in (gated_rmsnorm, gated_rmsnorm_reference):
        got = _grads(lambda *a: fn(*a[:3], G, 1e-5, nbg, *a[3:]), ins, gout)
        for a, b in zip(got, want):
            assert rel_err(a, b) < 1e-12


@native
def test_the_kernel_runs_and_its_gradients_pass_gradcheck(monkeypatch):
    import ssmkit.ops.native.gated_norm as kernel

    calls = []
    real = kernel._forward_kernel
    monkeypatch.setattr(kernel, "_forward_kernel", lambda *a: calls.append(1) or real(*a))
    ins = [t.requires_grad_() for t in inputs((2, 3), 6, 2)]
    for nbg in (False, True):
        assert torch.autograd.gradcheck(lambda y, z, w, x, D: gated_rmsnorm(y, z, w, 2, 1e-5, nbg, x, D), ins)
    assert calls  # the kernel, not the PyTorch path
    calls.clear()
    gated_rmsnorm(*[t.detach().float() for t in ins[:3]], 2, 1e-5, False, ins[3].detach(), ins[4].detach())
    assert not calls  # mixed dtypes: the PyTorch path (which promotes as PyTorch does)


@native
@pytest.mark.parametrize("nbg", [False, True], ids=["gate-first", "norm-first"])
def test_second_derivatives_equal_the_torch_paths(nbg):
    ins = [t.requires_grad_() for t in inputs((2, 70), 8, 2)]

    def second(fn):
        out = fn(*ins[:3], 2, 1e-5, nbg, *ins[3:])
        grads = torch.autograd.grad(out.square().sum(), ins, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), ins)

    for a, b in zip(second(gated_rmsnorm), second(gated_rmsnorm_reference)):
        assert rel_err(a, b) < 1e-10


@native
@pytest.mark.parametrize("dtype,big", [(torch.float32, 3.0e38), (torch.float32, 1e25), (F64, 1.5e308)])
@pytest.mark.parametrize("nbg", [False, True], ids=["gate-first", "norm-first"])
def test_groups_near_the_largest_float_and_non_finite_groups(dtype, big, nbg):
    """A group whose squares overflow is normalised (the scale 2^⌈log2 max|v|⌉, at most the largest finite power of
    two), as the PyTorch path does; a group holding inf or NaN gives what the PyTorch path gives, the others are
    untouched."""
    y = torch.tensor([[big, -0.5 * big, 0.25 * big, 1.0, 1.0, 2.0, -3.0, 0.5, 1.0, float("inf"), 0.0, 2.0,
                       float("nan"), 1.0, 1.0, 1.0]], dtype=dtype)
    z, w = torch.ones_like(y), torch.ones(16, dtype=dtype)
    got, want = gated_rmsnorm(y, z, w, 4, 1e-5, nbg), gated_rmsnorm_reference(y, z, w, 4, 1e-5, nbg)
    assert torch.isfinite(got[0, :8]).all()
    expected = formula(y[:, :8] / big, z[:, :8], w[:8], 2, 0.0, nbg)  # eps / max² vanishes for the big group
    assert rel_err(got[:, :4], expected[:, :4]) < {torch.float32: 1e-6, F64: 1e-14}[dtype]
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-6, atol=0)


@native
def test_gradients_do_not_depend_on_the_threads(monkeypatch):
    runs = []
    for threads in THREADINGS:
        use_threads(monkeypatch, *threads)
        ins = [t.requires_grad_() for t in inputs((3, 300), 32, 4, dtype=torch.float32)]
        out = gated_rmsnorm(*ins[:3], 4, 1e-5, False, *ins[3:])
        runs.append([out, *torch.autograd.grad(out.sin().sum(), ins)])
    for other in runs[1:]:
        for a, b in zip(other, runs[0]):
            assert torch.equal(a, b)  # bit for bit: 1 thread, 3 OpenMP threads, 3 Python threads


@native
def test_backends():
    import ssmkit.ops as ops

    y, z, w, x, D = inputs()
    want = formula(y, z, w, 3, 1e-5, False, x, D)
    for backend in ("auto", "native", "chunked", "reference"):
        assert rel_err(gated_rmsnorm(y, z, w, 3, 1e-5, False, x, D, backend=backend), want) < 1e-12
    with pytest.raises(RuntimeError, match="backend 'native' takes one dtype"):
        gated_rmsnorm(y, z.float(), w, 3, 1e-5, False, backend="native")
    with pytest.raises(RuntimeError, match="gated_rmsnorm: backend 'fft' was forced"):
        with ops.use_backend("fft"):
            gated_rmsnorm(y, z, w, 3, 1e-5, False)


def test_bad_inputs_raise_by_name():
    y, z, w, x, D = inputs()
    with pytest.raises(ValueError, match="z must be a real floating-point tensor; got list"):
        gated_rmsnorm(y, [1.0], w, 3, 1e-5, False)
    with pytest.raises(ValueError, match="z must have y's shape"):
        gated_rmsnorm(y, z[:, :-1], w, 3, 1e-5, False)
    with pytest.raises(ValueError, match=r"weight must be \(E,\) = \(12,\)"):
        gated_rmsnorm(y, z, w[:-1], 3, 1e-5, False)
    with pytest.raises(ValueError, match="groups must be a positive int dividing E = 12"):
        gated_rmsnorm(y, z, w, 5, 1e-5, False)
    with pytest.raises(ValueError, match="x and D come together"):
        gated_rmsnorm(y, z, w, 3, 1e-5, False, x)
    with pytest.raises(ValueError, match=r"D be \(E,\)"):
        gated_rmsnorm(y, z, w, 3, 1e-5, False, x, D[:2])
