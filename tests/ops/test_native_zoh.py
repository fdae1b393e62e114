"""The zero-order hold in C (ssmkit.ops.native.zoh) against the direct formula and the torch path: values and every
gradient in float64 on both sides of the series' radius and near Λ = 0, float32 against float64, second derivatives,
the dispatch of ``zoh`` / ``zoh_log`` / ``exp_phi`` (and S4D's and DSS's discretisations through them), the argument
checks, and the diagonal scan's batch-row partial sums that moved into C with it."""

from __future__ import annotations

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.layers import DSS, S4D
from ssmkit.ops import discretize
from ssmkit.ops.discretize import exp_phi, exp_phi_torch, zoh, zoh_log, zoh_reference, zoh_torch
from ssmkit.ops.native import native_available
from ssmkit.ops.native.zoh import exp_phi_native, zoh_native, zoh_native_log
from tests.conftest import DEVICE, rel_err

F64, C128 = torch.float64, torch.complex128
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not (native_available("zoh", torch.float32) and native_available("zoh", F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


def _parameters(H=6, M=9, scale=1.0, seed=0, dtype=F64):
    """a = log(-Re Λ), b = Im Λ, B, log Δ: |Δ Λ| spread over [~1e-4, ~30] by ``scale``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(H, M, generator=g, dtype=F64) * 2
    b = torch.randn(H, M, generator=g, dtype=F64) * 10 * scale
    B = torch.complex(torch.randn(H, M, generator=g, dtype=F64), torch.randn(H, M, generator=g, dtype=F64))
    log_dt = torch.linspace(-8, 0.5, H, dtype=F64) + torch.log(torch.tensor(scale, dtype=F64))
    cdtype = C128 if dtype == F64 else torch.complex64
    return a.to(dtype), b.to(dtype), B.to(cdtype), log_dt.to(dtype)


def _torch_log(a, b, B, log_dt):
    return zoh_torch(torch.complex(-a.exp(), b), B, log_dt.exp().unsqueeze(-1))


def _grads(fn, leaves, seed=1):
    """Every leaf's gradient of a real loss that weighs both outputs' real and imaginary parts differently."""
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    A_bar, B_bar = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*A_bar.shape, 4, generator=g, dtype=F64).to(A_bar.real.dtype)  # the same weights in either dtype
    loss = (A_bar.real * w[..., 0] + A_bar.imag * w[..., 1] + B_bar.real * w[..., 2] + B_bar.imag * w[..., 3]).sum()
    return [A_bar.detach(), B_bar.detach(), *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_values_and_gradients_equal_the_torch_path_and_the_direct_formula_in_float64(scale):
    a, b, B, log_dt = _parameters(scale=scale)
    Lambda, dt = torch.complex(-a.exp(), b), log_dt.exp().unsqueeze(-1)
    z = (dt * Lambda).abs()
    if scale == 1.0:
        assert bool((z < 1).any()) and bool((z > 1).any())  # both branches of φ in one call
    got = _grads(zoh_native, [Lambda, B, dt])
    want = _grads(zoh_torch, [Lambda, B, dt])
    for x, y in zip(got, want):
        assert rel_err(x, y) < 1e-13
    direct = zoh_reference(Lambda, B, dt)  # the formula (exact enough away from z = 0)
    if scale >= 1.0:
        assert rel_err(got[0], direct[0]) < 1e-14 and rel_err(got[1], direct[1]) < 1e-12
    got_log = _grads(zoh_native_log, [a, b, B, log_dt])
    want_log = _grads(_torch_log, [a, b, B, log_dt])
    for x, y in zip(got_log, want_log):
        assert rel_err(x, y) < 1e-13


def test_near_zero_the_series_gives_dt_b():
    """Λ -> 0: B̄ -> Δ B and Ā -> 1 + Δ Λ (the direct formula is 0/0 there)."""
    Lambda = torch.tensor([[0j, 1e-12 - 1e-12j, -1e-8 + 0j]], dtype=C128)
    B = torch.tensor([[1 + 2j, -1j, 3 + 0j]], dtype=C128)
    dt = torch.tensor([[0.1]], dtype=F64)
    A_bar, B_bar = zoh_native(Lambda, B, dt)
    assert rel_err(B_bar, dt * B * (1 + dt * Lambda / 2)) < 1e-15
    assert rel_err(A_bar, 1 + dt * Lambda) < 1e-15


def test_gradcheck_and_second_derivatives():
    a, b, B, log_dt = _parameters(H=3, M=4)
    leaves = [t.requires_grad_() for t in (a, b, B, log_dt)]
    assert torch.autograd.gradcheck(zoh_native_log, leaves)
    assert torch.autograd.gradgradcheck(zoh_native_log, leaves)  # through the torch path (ops/twice.py)
    Lambda, dt = torch.complex(-a.exp(), b).detach(), log_dt.exp().unsqueeze(-1).detach()
    assert torch.autograd.gradgradcheck(zoh_native, [t.requires_grad_() for t in (Lambda, B.detach(), dt)])


def test_one_output_unused():
    """Only B̄ (or only Ā) in the loss: the other's gradient arrives as None."""
    a, b, B, log_dt = _parameters()
    for k in (0, 1):
        grads = []
        for fn in (zoh_native_log, _torch_log):
            leaves = [t.clone().requires_grad_() for t in (a, b, B, log_dt)]
            out = fn(*leaves)[k]
            w = torch.complex(torch.linspace(-1, 1, out.numel(), dtype=F64), torch.linspace(2, 0, out.numel(),
                                                                                        dtype=F64)).view(out.shape)
            grads.append(torch.autograd.grad((out * w).real.sum(), leaves, allow_unused=True))
        for x, y, leaf in zip(*grads, (a, b, B, log_dt)):  # None: the torch path's graph of Ā has no B
            zero = torch.zeros_like(leaf)
            assert rel_err(zero if x is None else x, zero if y is None else y) < 1e-13


def test_float32_is_float64_rounded_once():
    f32 = [t.to(torch.complex64 if t.is_complex() else torch.float32) for t in _parameters(scale=1.0)]
    want = _grads(zoh_native_log, [t.to(C128 if t.is_complex() else F64) for t in f32])  # the same inputs, float64
    got = _grads(zoh_native_log, f32)
    torch_f32 = _grads(_torch_log, f32)
    for x, y, t in zip(got, want, torch_f32):
        assert x.dtype == t.dtype
        assert rel_err(x, y) < 1.2e-7  # computed in double: one rounding to float32
        assert rel_err(x, y) <= rel_err(t, y) * 1.5 + 1e-7  # no worse than torch's float32 ops


def test_dispatch(monkeypatch):
    """``"auto"`` and ``"native"`` take the C code on the CPU; ``"reference"`` (the tests' oracle) and torch.func keep
    the torch path."""
    calls = []
    real = discretize._native_here
    monkeypatch.setattr(discretize, "_native_here", lambda *a: calls.append(real(*a)) or calls[-1])
    a, b, B, log_dt = _parameters(H=2, M=3)
    Lambda, dt = torch.complex(-a.exp(), b), log_dt.exp().unsqueeze(-1)
    zoh(Lambda, B, dt)
    zoh_log(a, b, B, log_dt)
    with ops.use_backend("native"):
        zoh(Lambda, B, dt)
    assert calls == [True, True, True]
    with ops.use_backend("reference"):
        zoh(Lambda, B, dt)
    torch.func.grad(lambda x: zoh_log(x, b, B, log_dt)[1].abs().sum())(a)
    assert calls[3:] == [False, False, False]  # reference; torch.func: zoh_log's, then zoh's on its torch path
    zoh(Lambda.to(torch.complex64), B.to(torch.complex64), dt)  # float64 Δ with complex64 Λ: the torch path
    assert calls[6:] == [False]


def test_s4d_discretises_alike_under_auto_and_reference():
    torch.manual_seed(0)
    layer = S4D(8, d_state=16, dtype=F64)
    with torch.no_grad():
        layer.log_dt.uniform_(-6, 0.5)  # |Δ Λ| on both sides of 1
    outs = []
    for backend in ("auto", "reference"):
        layer.zero_grad()
        with ops.use_backend(backend):
            A_bar, B_bar, _ = layer.discrete()
        (A_bar.real.sum() + (B_bar * B_bar).imag.sum()).backward()
        outs.append([A_bar.detach(), B_bar.detach(), *(p.grad.clone() for p in (layer.log_A_real, layer.A_imag,
                                                                                  layer.B, layer.log_dt))])
    for x, y in zip(*outs):
        assert rel_err(x, y) < 1e-13


def test_zoh_log_checks_its_arguments():
    a, b, B, log_dt = _parameters(H=2, M=3)
    with pytest.raises(ValueError, match=r"imag must be \(2, 3\)"):
        zoh_log(a, b[:1], B, log_dt)
    with pytest.raises(ValueError, match=r"log_dt must be \(2,\)"):
        zoh_log(a, b, B, log_dt.unsqueeze(-1))
    with pytest.raises(ValueError, match=r"log_dt must be .* torch.float64"):
        zoh_log(a, b, B, log_dt.float())
    with pytest.raises(ValueError, match=r"B must be \(H, M\) complex"):
        zoh_log(a, b, B.real, log_dt)
    with pytest.raises(ValueError, match=r"B must be \(H, M\) = \(2, 3\)"):
        zoh_log(a, b, B.t(), log_dt)
    with pytest.raises(ValueError, match=r"log_neg_real must be \(H, M\)"):
        zoh_log(a[0], b, B, log_dt)


def test_compiled_equals_eager():
    a, b, B, log_dt = _parameters(H=4, M=5)
    want = zoh_log(a, b, B, log_dt)
    got = torch.compile(zoh_log, backend="aot_eager", fullgraph=True)(a, b, B, log_dt)
    for x, y in zip(got, want):
        assert rel_err(x, y) < 1e-15


def test_diagonal_scan_sums_the_batch_rows_in_c():
    """The scan's parameter gradients, summed over the batch rows in C: equal to the sum of per-row calls (so every
    row's partials were written, none left over from an unzeroed buffer)."""
    from ssmkit.ops.native import ssm_scan_native

    g = torch.Generator().manual_seed(3)
    H, N = 21, 3  # two channel blocks (a partial one)
    A = torch.polar(torch.rand(H, N, generator=g, dtype=F64) * 0.5 + 0.4, torch.randn(H, N, generator=g, dtype=F64))
    cB = torch.complex(torch.randn(H, N, generator=g, dtype=F64), torch.randn(H, N, generator=g, dtype=F64))
    cC = torch.complex(torch.randn(H, N, generator=g, dtype=F64), torch.randn(H, N, generator=g, dtype=F64))
    D = torch.randn(H, generator=g, dtype=F64)
    u = torch.randn(5, 13, H, generator=g, dtype=F64)

    def grads(x):
        leaves = [t.clone().requires_grad_() for t in (A, cB, cC, D)]
        y, _ = ssm_scan_native(x, *leaves[:3], None, leaves[3])
        return torch.autograd.grad(y.square().sum(), leaves)

    for _ in range(2):  # the second call reuses freed memory holding the first call's values
        whole = grads(u)
    rows = [grads(u[i : i + 1]) for i in range(u.shape[0])]
    for k, got in enumerate(whole):
        assert rel_err(got, sum(r[k] for r in rows)) < 1e-13


@pytest.mark.parametrize("scale", [1e-6, 1.0, 20.0])
def test_exp_phi_equals_the_torch_path(scale):
    g = torch.Generator().manual_seed(5)
    z = torch.complex(torch.randn(3, 4, 5, generator=g, dtype=F64), torch.randn(3, 4, 5, generator=g, dtype=F64)) * scale
    w = torch.complex(torch.randn(2, *z.shape, generator=g, dtype=F64), torch.randn(2, *z.shape, generator=g, dtype=F64))
    outs = []
    for fn in (exp_phi_native, exp_phi_torch):
        leaf = z.clone().requires_grad_()
        e, f = fn(leaf)
        outs.append([e.detach(), f.detach(), *torch.autograd.grad((e * w[0] + f * w[1]).real.sum(), leaf)])
    for x, y in zip(*outs):
        assert rel_err(x, y) < 1e-13
    leaf = z[0].clone().requires_grad_()
    assert torch.autograd.gradcheck(exp_phi_native, [leaf]) and torch.autograd.gradgradcheck(exp_phi_native, [leaf])
    with pytest.raises(ValueError, match="z must be"):
        exp_phi(z.real)


@pytest.mark.parametrize("version", ["exp", "softmax"])
@pytest.mark.parametrize("two_steps", [False, True])
def test_dss_discretises_alike_under_auto_and_reference(version, two_steps):
    torch.manual_seed(1)
    layer = DSS(6, d_state=16, version=version, separate_dt=two_steps, l_max=50, dtype=F64)
    outs = []
    for backend in ("auto", "reference"):
        layer.zero_grad()
        with ops.use_backend(backend):
            A_bar, _, W = layer.discrete()
        (A_bar.real.sum() + (W * W).imag.sum()).backward()
        outs.append([A_bar.detach(), W.detach(), *(p.grad.clone() for p in layer.parameters() if p.grad is not None)])
    assert len(outs[0]) == len(outs[1]) > 4
    for x, y in zip(*outs):
        assert rel_err(x, y) < 1e-12


def test_lazy_negative_and_conjugate_views_read_as_their_values():
    """A real input that is a lazy negative view (the imaginary part of a conjugate) and a conjugate complex input give
    what their values give (the C code reads storage)."""
    a, b, B, log_dt = _parameters(H=3, M=4)
    neg = lambda t: torch.complex(torch.zeros_like(t), -t).conj().imag  # noqa: E731  (t's values, negative bit set)
    assert neg(log_dt).is_neg() and torch.equal(neg(log_dt), log_dt)
    want = zoh_native_log(a, b, B, log_dt)
    got = zoh_native_log(neg(a), neg(b), B.conj().resolve_conj().conj(), neg(log_dt))  # B as a conjugate view
    for x, y in zip(got, want):
        assert torch.equal(x, y)
    Lambda, dt = torch.complex(-a.exp(), b), log_dt.exp().unsqueeze(-1)
    want = zoh_native(Lambda, B, dt)
    got = zoh_native(Lambda.conj().resolve_conj().conj(), B, neg(dt))  # Λ as a conjugate view
    for x, y in zip(got, want):
        assert torch.equal(x, y)
    want, got = exp_phi_native(Lambda), exp_phi_native(Lambda.conj().resolve_conj().conj())
    for x, y in zip(got, want):
        assert torch.equal(x, y)
