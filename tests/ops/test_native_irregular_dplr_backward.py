"""The C backward of S4's irregularly sampled DPLR scan (``ssmkit/ops/native/irregular_dplr.c``, arXiv 2111.00396)
against autograd through the PyTorch chunked path :func:`ssmkit.ops.irregular_dplr.dplr_irregular_scan_chunked`:
the gradient of every input (u, Λ, P, B, C, Δ, the gaps, D and the initial state; from y, from the final state, from
both) at ranks 0, 1 and 2, with and without D and a state, lengths that are no multiple of the checkpoint interval,
gaps from 1e-3 to 1e3 periods, float64 (1e-10) and float32 (its kernel against the float64 path); gradcheck at a tiny
shape; a double backward (the PyTorch path's); threads; the public op's dispatch (torch.func and forward-mode AD keep
the PyTorch path); S4 with intervals (its four inits) trained by the kernel against the chunked path; torch.compile of
S4 with intervals (one training step equals eager).
"""

from __future__ import annotations

import copy

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops.native.gate as gate
import ssmkit.ops.native.irregular_dplr as native_dplr
from ssmkit.ops.backend import use_backend
from ssmkit.ops.irregular_dplr import dplr_irregular_scan, dplr_irregular_scan_chunked
from tests.conftest import DEVICE, rel_err
from tests.ops.compiled import Recorder

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="a CPU kernel")
F64, C128 = torch.float64, torch.complex128
NAMES = ("u", "Lambda", "P", "B", "C", "dt", "intervals", "D", "state")


def _kernel_ok(dtype=F64) -> None:
    ok, why = gate.native_status("irregular_dplr", dtype)
    if not ok:
        pytest.skip(f"the native kernel cannot run here: {why}")


def _problem(Bsz, L, H, M, r, seed=0, low=0.05, high=5.0):
    """u, Λ (Re in [-1.1, -0.1], Im up to ±12), P (r, H, M), B, C, Δ in [0.02, 1.02], gaps in [low, high] (log-uniform
    when high/low > 100), D, x0: float64."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    c = lambda *s: torch.complex(rn(*s), rn(*s))  # noqa: E731
    lam = torch.complex(-0.1 - torch.rand(H, M, generator=g, dtype=F64), 4 * rn(H, M))
    dt = 0.02 + torch.rand(H, generator=g, dtype=F64)
    unit = torch.rand(Bsz, L, generator=g, dtype=F64)
    if high / low > 100:
        tau = low * (high / low) ** unit
    else:
        tau = low + (high - low) * unit
    return [rn(Bsz, L, H), lam, 0.5 * c(r, H, M), c(H, M), c(H, M), dt, tau, rn(H), c(Bsz, H, M)]


def _kernel(chunk):
    return lambda *a: native_dplr.dplr_unchecked(*a, True, chunk)


def _chunked(*a):
    return dplr_irregular_scan_chunked(*a, chunk_size=5)


def _grads(fn, args, use_y=True, use_state=True, seed=1):
    """y, the final state and the gradients of ℓ = Σ w y + Σ |x_L|² + Re Σ k x_L (w, k drawn) over every tensor
    argument (None stays None)."""
    g = torch.Generator().manual_seed(seed)
    leaves = [None if a is None else a.clone().requires_grad_() for a in args]
    y, h = fn(*leaves)
    w = torch.randn(y.shape, generator=g, dtype=F64).to(y.dtype)
    k = torch.randn(h.shape, generator=g, dtype=F64).to(h.dtype)
    loss = 0
    if use_y:
        loss = loss + (w * y).sum()
    if use_state:
        loss = loss + h.abs().square().sum() + (k * h).real.sum()
    wanted = [t for t in leaves if t is not None]
    found = iter(torch.autograd.grad(loss, wanted, allow_unused=True))
    return [y.detach(), h.detach(), *[None if t is None else next(found) for t in leaves]]


def _assert_close(got, want, tol, names=("y", "state", *NAMES)):
    """Pairwise below ``tol`` (rel_err); a gradient autograd leaves None (no path to ℓ: C and D when ℓ reads only the
    final state) must be zeros from the kernel."""
    for name, a, b in zip(names, got, want, strict=True):
        if b is None and a is not None:
            assert not bool(a.any()), name
        elif a is not None:
            assert a.shape == b.shape and a.dtype == b.dtype, name
            assert rel_err(a, b) < tol, (name, rel_err(a, b))


@pytest.mark.parametrize("r", [0, 1, 2])
@pytest.mark.parametrize("with_D_state", [True, False])
@pytest.mark.parametrize("shape, chunk", [((2, 11, 11, 3), 4), ((1, 70, 5, 4), 64), ((3, 1, 9, 2), 3)])
def test_every_gradient_matches_the_chunked_path(r, with_D_state, shape, chunk):
    """L 11 in chunks of 4 (two boundaries, a partial last chunk), L 70 in chunks of 64, L 1; 11 channels (a full
    vector of lanes and a tail with AVX2's 4 and AVX-512's 8), 5 and 9."""
    _kernel_ok()
    args = _problem(*shape, r, seed=r)
    if not with_D_state:
        args[7] = args[8] = None
    _assert_close(_grads(_kernel(chunk), args), _grads(_chunked, args), 1e-10)


@pytest.mark.parametrize("use_y, use_state", [(True, False), (False, True)])
def test_gradients_from_the_output_alone_and_from_the_final_state_alone(use_y, use_state):
    """ℓ from y only (the final state's gradient absent) or from x_L only (y's gradient absent)."""
    _kernel_ok()
    args = _problem(2, 13, 6, 3, 2, seed=4)
    got = _grads(_kernel(4), args, use_y, use_state)
    want = _grads(_chunked, args, use_y, use_state)
    _assert_close(got, want, 1e-10)


@pytest.mark.parametrize("r", [1, 2])
def test_gaps_from_a_thousandth_to_a_thousand_periods(r):
    """Log-uniform gaps in [1e-3, 1e3] (Δ τ from 2e-5 to 1e3: q = 2/(Δ τ) from 1e5 to 2e-3), and a batch row of one
    huge gap (1e6) among unit ones: every gradient, float64."""
    _kernel_ok()
    args = _problem(2, 23, 7, 3, r, seed=11, low=1e-3, high=1e3)
    args[6][1] = 1.0
    args[6][1, 9] = 1e6
    _assert_close(_grads(_kernel(4), args), _grads(_chunked, args), 1e-10)


@pytest.mark.parametrize("r", [1, 2])
def test_float32_kernel_matches_the_float64_path(r):
    """The float32 build (u, y, the states and D in float32, all arithmetic in double) against the float64 chunked
    path on the same (rounded) inputs: every gradient to 2e-6."""
    _kernel_ok(torch.float32)
    args = _problem(2, 29, 11, 4, r, seed=5)
    a32 = [a.to(torch.complex64) if a.is_complex() else a.float() for a in args]
    got = _grads(_kernel(8), a32)
    want = _grads(_chunked, [a.to(C128) if a.is_complex() else a.double() for a in a32])
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.complex64
    assert all(g.dtype in (torch.float32, torch.complex64) for g in got[2:])
    for name, a, b in zip(("y", "state", *NAMES), got, want):
        assert rel_err(a, b) < 2e-6, (name, rel_err(a, b))


def test_gradcheck_in_double():
    """torch.autograd.gradcheck (complex inputs and the complex final state: both Wirtinger parts) of every input,
    rank 2, checkpoints every 2 steps of 5."""
    _kernel_ok()
    args = _problem(2, 5, 3, 2, 2, seed=6)
    inputs = [a.clone().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(_kernel(2), inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_a_double_backward_goes_through_the_pytorch_path():
    """create_graph: the first gradients equal the chunked path's and the gradient of ‖∂ℓ/∂u‖² + ‖∂ℓ/∂B‖² with respect
    to Λ, P, Δ, the gaps and u too (the kernel's backward computes no second derivative: ops/twice.py)."""
    _kernel_ok()
    args = _problem(2, 9, 4, 3, 1, seed=7)
    out = []
    for fn in (_kernel(4), _chunked):
        leaves = [a.clone().requires_grad_() for a in args]
        y, h = fn(*leaves)
        g_u, g_B = torch.autograd.grad(y.sin().sum() + h.abs().square().sum(), [leaves[0], leaves[3]],
                                       create_graph=True)
        second = torch.autograd.grad(g_u.square().sum() + g_B.abs().square().sum(),
                                     [leaves[1], leaves[2], leaves[5], leaves[6], leaves[0]])
        out.append([g_u.detach(), g_B.detach(), *second])
    for a, b in zip(*out):
        assert rel_err(a, b) < 1e-9


@pytest.mark.parametrize("threads, openmp", [(3, "1"), (3, "0")], ids=["3-openmp", "3-python-threads"])
def test_threads_give_the_one_thread_result_bit_for_bit(threads, openmp, monkeypatch):
    """The parameters' partial sums belong to the items' batch rows, ∂τ to the items: no dependence on the schedule."""
    _kernel_ok()
    args = _problem(3, 17, 19, 3, 2, seed=8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one = _grads(_kernel(4), args)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setenv("SSMKIT_NATIVE_OPENMP", openmp)
    for a, b in zip(_grads(_kernel(4), args), one):
        assert torch.equal(a, b)


class _Count:
    """Wraps the kernel's backward, counting its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


@pytest.mark.parametrize("backend", ["auto", "native"])
def test_the_public_op_trains_by_the_kernel(backend, monkeypatch):
    """dplr_irregular_scan under a gradient takes the C backward on "auto" and "native" (rank 2), with the chunked
    path's gradients; rank 3 keeps the PyTorch path."""
    _kernel_ok()
    count = _Count(native_dplr._backward_kernel)
    monkeypatch.setattr(native_dplr, "_backward_kernel", count)
    args = _problem(2, 21, 6, 3, 2, seed=9)
    fn = lambda *a: dplr_irregular_scan(*a, backend=backend)  # noqa: E731
    _assert_close(_grads(fn, args), _grads(_chunked, args), 1e-10)
    assert count.calls == 1
    args3 = _problem(2, 7, 4, 3, 3, seed=10)
    _assert_close(_grads(fn, args3), _grads(_chunked, args3), 1e-10)
    assert count.calls == 1


def test_torch_func_and_forward_mode_ad_keep_the_pytorch_path(monkeypatch):
    """torch.func.grad and a forward-mode jvp of the public op on "auto": the kernel is not called (no batching rule,
    no tangent), and the results are the chunked path's (its gradient of Λ, its tangent of y along Λ)."""
    _kernel_ok()
    count = _Count(native_dplr._forward_kernel)
    monkeypatch.setattr(native_dplr, "_forward_kernel", count)
    u, lam, P, B, C, dt, tau, D, x0 = _problem(2, 9, 4, 3, 1, seed=13)

    def loss(lam_, scan):
        y, h = scan(u, lam_, P, B, C, dt, tau, D, x0)
        return y.sin().sum() + h.abs().square().sum()

    got = torch.func.grad(lambda l_: loss(l_, dplr_irregular_scan))(lam)
    leaf = lam.clone().requires_grad_()
    (want,) = torch.autograd.grad(loss(leaf, _chunked), [leaf])
    assert count.calls == 0 and rel_err(got, want) < 1e-12
    direction = torch.complex(torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64))
    _, tangent = torch.func.jvp(lambda l_: dplr_irregular_scan(u, l_, P, B, C, dt, tau, D, x0)[0], (lam,), (direction,))
    _, want_t = torch.func.jvp(lambda l_: _chunked(u, l_, P, B, C, dt, tau, D, x0)[0], (lam,), (direction,))
    assert count.calls == 0 and rel_err(tangent, want_t) < 1e-12


def _without_the_kernel(monkeypatch) -> None:
    """"auto" refuses this kernel from here on: the scan takes :func:`dplr_irregular_scan_chunked` (S4 accepts no
    forced "chunked" backend: its backends are "reference" and "fft")."""
    real = gate.prefer_native
    monkeypatch.setattr(gate, "prefer_native", lambda op, x: op != "irregular_dplr" and real(op, x))


@pytest.mark.parametrize("init", ["legs", "legt", "lagt", "fout"])
def test_s4_with_intervals_trains_as_the_chunked_path(init, monkeypatch):
    """S4's forward with intervals (float32 layer: the scan in float64 inside), a training step's loss: the input's,
    the gaps', the initial state's and every parameter's gradients under "auto" (the C backward ran) equal those of
    the chunked path ("auto" with the kernel refused)."""
    _kernel_ok()
    count = _Count(native_dplr._backward_kernel)
    monkeypatch.setattr(native_dplr, "_backward_kernel", count)
    torch.manual_seed(0)
    layer = layers.build("s4", d_model=9, d_state=10, init=init, l_max=64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 37, 9, generator=g)
    tau = 0.05 + 4.95 * torch.rand(2, 37, generator=g)
    h0 = torch.complex(torch.randn(2, 9, 5, generator=g), torch.randn(2, 9, 5, generator=g))
    out = []
    for refuse in (False, True):
        if refuse:
            _without_the_kernel(monkeypatch)
        xs, ts, hs = x.clone().requires_grad_(), tau.clone().requires_grad_(), h0.clone().requires_grad_()
        y, h = layer(xs, hs, intervals=ts)
        loss = y.sin().sum() + h.abs().square().sum()
        names, params = zip(*layer.named_parameters())
        out.append(dict(zip(("y", "h", "x", "tau", "h0", *names),
                            [y.detach(), h.detach(), *torch.autograd.grad(loss, [xs, ts, hs, *params])])))
    assert count.calls == 1  # the first pass only
    for name, want in out[1].items():
        assert rel_err(out[0][name], want) < 1e-5, name  # float32 outputs and gradients of one float64 scan


def test_s4_in_float64_with_intervals_trains_as_the_chunked_path_and_the_loop(monkeypatch):
    """The same in a float64 layer, every gradient to 1e-10, against the chunked path and the "reference" loop."""
    _kernel_ok()
    torch.manual_seed(0)
    layer = layers.build("s4", d_model=5, d_state=8, init="legt", l_max=32, dtype=F64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 30, 5, generator=g, dtype=F64)
    tau = 0.05 + 4.95 * torch.rand(2, 30, generator=g, dtype=F64)

    def grads(backend):
        xs, ts = x.clone().requires_grad_(), tau.clone().requires_grad_()
        with use_backend(backend):
            y, h = layer(xs, intervals=ts)
        return [y.detach(), *torch.autograd.grad(y.sin().sum() + h.abs().sum(), [xs, ts, *layer.parameters()])]

    got, loop = grads("auto"), grads("reference")
    _without_the_kernel(monkeypatch)
    for want in (grads("auto"), loop):
        for a, b in zip(got, want, strict=True):
            assert rel_err(a, b) < 1e-10


def test_a_compiled_s4_layer_with_intervals_trains_as_eager():
    """torch.compile (AOT autograd, fullgraph) of S4 with intervals: the forward graph holds the kernel's forward op
    and the backward graph its backward op; one SGD step of the compiled layer equals one of the eager layer (loss,
    gradients and the updated parameters)."""
    _kernel_ok()
    torch.manual_seed(0)
    eager = layers.build("s4", d_model=6, d_state=8, init="legs", l_max=32)
    compiled_layer = copy.deepcopy(eager)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 20, 6, generator=g)
    tau = 0.5 + torch.rand(2, 20, generator=g)

    def step(layer, fn):
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        loss = fn(x, tau)
        loss.backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        opt.step()
        return loss.detach(), grads, [p.detach().clone() for p in layer.parameters()]

    rec = Recorder()
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, t: compiled_layer(x, intervals=t)[0].square().sum(), backend=rec.backend,
                             fullgraph=True)
    got = step(compiled_layer, compiled)
    want = step(eager, lambda x, t: eager(x, intervals=t)[0].square().sum())
    assert "dplr_irregular_forward" in rec.ssmkit_ops(rec.forward)
    assert "dplr_irregular_backward" in rec.ssmkit_ops(rec.backward)
    assert rel_err(got[0], want[0]) < 1e-6
    for a, b in zip(got[1] + got[2], want[1] + want[2]):
        assert rel_err(a, b) < 1e-5
