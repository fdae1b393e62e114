"""The C kernel of the irregularly sampled diagonal bank (``ssmkit/ops/native/irregular_bank.c``; S4D arXiv 2206.11893,
DSS arXiv 2203.14343) against the float64 loop of :func:`ssmkit.ops.irregular_bank.bank_irregular_scan_reference`:
outputs, final state and the gradient of every input (the gaps included), both rules, both precisions, channel blocks
with tails and spans of 64 steps crossed; its vector expm1 and sincos against scipy's complex expm1 and numpy's exp
(tiny |τ Δ Λ|, phases up to 10^9: the vector range reduction and libm's beyond it); a double backward; torch.compile.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch

from ssmkit.ops.irregular_bank import bank_irregular_scan, bank_irregular_scan_reference, bank_irregular_step
from ssmkit.ops.native.gate import native_status
from ssmkit.ops.native.irregular_bank import bank_unchecked
from tests.conftest import DEVICE

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="a CPU kernel")
F64 = torch.float64
COMPLEX = {torch.float32: torch.complex64, F64: torch.complex128}


def _kernel_ok(dtype) -> None:
    ok, why = native_status("bank_irregular", dtype)
    if not ok:
        pytest.skip(f"the native kernel cannot run here: {why}")


def _problem(Bsz, L, H, M, seed=0):
    """A bank in float64: u, Λ (Re in [-1.1, -0.1], Im up to ±12), B, C, Δ in [0.02, 1.02], gaps in [0.05, 3], D, x0."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    c = lambda *s: torch.complex(r(*s), r(*s))  # noqa: E731
    lam = torch.complex(-0.1 - torch.rand(H, M, generator=g, dtype=F64), 4 * r(H, M))
    dt = 0.02 + torch.rand(H, generator=g, dtype=F64)
    tau = 0.05 + 2.95 * torch.rand(Bsz, L, generator=g, dtype=F64)
    return [r(Bsz, L, H), lam, c(H, M), c(H, M), dt, tau, r(H), c(Bsz, H, M)]


def _grads(fn, args, weight, wanted=None):
    """fn's (y, h) and the gradients of a loss reading both (weights across time: every step counts differently)."""
    leaves = [a.clone().requires_grad_() for a in args]
    y, h = fn(*leaves)
    loss = (y * weight[:, : y.shape[1]]).square().sum() + h.abs().square().sum()
    return [y.detach(), h.detach(), *torch.autograd.grad(loss, leaves)]


def _cast(args, dtype):
    return [a.to(COMPLEX[dtype] if a.is_complex() else dtype) for a in args]


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", [(2, 70, 19, 3), (1, 130, 5, 1), (3, 64, 8, 4)])
def test_kernel_matches_the_float64_loop_with_every_gradient(rule, dtype, shape):
    _kernel_ok(dtype)
    args = _problem(*shape)
    weight = torch.linspace(-1, 1, shape[1], dtype=F64).view(1, -1, 1)
    want = _grads(lambda *a: bank_irregular_scan_reference(*a[:7], rule, a[7]), args, weight)
    got = _grads(lambda *a: bank_unchecked(*a[:7], rule, a[7], True), _cast(args, dtype), weight.to(dtype))
    tol = 1e-11 if dtype == F64 else 1e-5  # relative to each quantity's largest entry (float32: state kept in double)
    names = ["y", "x_L", "du", "dLambda", "dB", "dC", "ddt", "dtau", "dD", "dx0"]
    for name, a, b in zip(names, got, want):
        assert a.dtype == (COMPLEX[dtype] if b.is_complex() else dtype), name
        err = (a.to(b.dtype) - b).abs().max() / b.abs().max()
        assert err < tol, (name, float(err))


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_without_state_skip_or_gap_gradient_and_with_one_output_used(rule):
    _kernel_ok(F64)
    u, lam, B, C, dt, tau, _, _ = _problem(2, 67, 11, 2, seed=3)
    for use in ("y", "state"):  # the final state's gradient absent (None), then the output's
        leaves = [t.clone().requires_grad_() for t in (u, lam, B, C, dt)]
        grads = []
        for fn in (bank_unchecked, None):
            if fn is None:
                y, h = bank_irregular_scan_reference(*leaves, tau, None, rule)
            else:
                y, h = fn(*leaves, tau, None, rule, None, True)
            loss = y.sin().sum() if use == "y" else (h * h.conj()).real.sum()
            grads.append(torch.autograd.grad(loss, leaves, allow_unused=True))
        for a, b in zip(*grads):
            if b is None:  # C when only the state is read: the kernel gives zeros
                assert a is None or not a.any()
            else:
                assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    y, h = bank_unchecked(u, lam, B, C, dt, tau, None, rule, None, False)
    assert h is None and torch.allclose(y, bank_irregular_scan_reference(u, lam, B, C, dt, tau, None, rule)[0],
                                        rtol=1e-11, atol=1e-12)


def test_one_step_from_zero_is_the_exact_zoh_input_term_for_tiny_and_large_phases():
    """x_0 = (e^{τΔΛ} − 1) B/Λ · u_0 from a zero state: scipy's complex expm1 (accurate for tiny arguments) and numpy's
    exp for phases of 10^2 to 10^9 (the vector range reduction up to 3.2e6, libm's sin and cos beyond), in float64;
    one wide phase in a block sends the whole step to libm, the other lanes too."""
    _kernel_ok(F64)
    lam = torch.tensor([-1e-3 + 1e-4j, -0.5 + 1e-9j, -0.5 + 50j, -0.01 + 1e4j, -1e-6 + 1e6j, -2.0 + 3.1e6j],
                       dtype=torch.complex128).view(6, 1)
    H = lam.shape[0]
    dt = torch.tensor([1e-6, 1e-8, 1.0, 0.1, 1.0, 1.0], dtype=F64)
    B = torch.ones(H, 1, dtype=torch.complex128)
    u = torch.ones(1, 1, H, dtype=F64)
    for gap in (0.3, 1e3):  # the second: phases up to 3e9 (libm's path for every lane of the step)
        tau = torch.tensor([[gap]], dtype=F64)
        _, x = bank_unchecked(u, lam, B, B, dt, tau, None, "zoh", None, True)
        z = (gap * dt[:, None] * lam).numpy()
        want = scipy.special.expm1(z) / lam.numpy()
        rel = np.abs(x[0].numpy() - want) / np.abs(want)
        assert rel.max() < 1e-12 * max(1.0, np.abs(z.imag).max() / 1e5), (gap, rel)  # phases' own rounding above 1e5
        # the decay itself: x after a second step of zero input is e^{τz} x
        _, x2 = bank_unchecked(torch.zeros(1, 1, H, dtype=F64), lam, B, B, dt, tau, None, "zoh", x, True)
        err = np.abs(x2[0].numpy() - np.exp(z) * x[0].numpy()) / np.abs(x[0].numpy())
        assert err.max() < 1e-12 * max(1.0, np.abs(z.imag).max() / 1e5), (gap, err)


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_a_double_backward_goes_through_the_pytorch_path(rule):
    """create_graph: the gradient of ‖∂ℓ/∂u‖² with respect to Λ and the gaps equals the loop's."""
    _kernel_ok(F64)
    args = _problem(2, 12, 5, 2, seed=7)
    out = []
    for fn in (lambda *a: bank_unchecked(*a[:7], rule, a[7], True),
               lambda *a: bank_irregular_scan_reference(*a[:7], rule, a[7])):
        leaves = [a.clone().requires_grad_() for a in args]
        y, h = fn(*leaves)
        (g_u,) = torch.autograd.grad(y.sin().sum() + h.abs().sum(), leaves[0], create_graph=True)
        out.append(torch.autograd.grad(g_u.square().sum(), [leaves[1], leaves[5]]))
    for a, b in zip(*out):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)


def test_the_public_op_takes_the_kernel_and_agrees_with_the_chunked_path():
    _kernel_ok(torch.float32)
    args = _cast(_problem(2, 40, 9, 3, seed=9), torch.float32)
    y_n, h_n = bank_irregular_scan(*args[:7], "zoh", args[7], backend="native")
    y_c, h_c = bank_irregular_scan(*args[:7], "zoh", args[7], backend="chunked")
    assert torch.allclose(y_n, y_c, rtol=1e-4, atol=1e-5) and torch.allclose(h_n, h_c, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # no checkpoints kept: the same forward
        y_0, _ = bank_irregular_scan(*args[:7], "zoh", args[7], backend="native")
    assert torch.equal(y_0, y_n)


def test_the_kernel_runs_as_a_custom_op_under_torch_compile():
    _kernel_ok(torch.float32)
    args = _cast(_problem(1, 20, 6, 2, seed=11), torch.float32)
    u = args[0].clone().requires_grad_()

    def f(u):
        return bank_irregular_scan(u, *args[1:7], "zoh", args[7], backend="native")[0].square().sum()

    got = torch.compile(f, backend="aot_eager", fullgraph=True)(u)
    (g_got,) = torch.autograd.grad(got, u)
    want = f(u)
    (g_want,) = torch.autograd.grad(want, u)
    assert torch.allclose(got, want, rtol=1e-5) and torch.allclose(g_got, g_want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads, openmp", [(3, "1"), (3, "0")], ids=["3-openmp", "3-python-threads"])
def test_threads_give_the_one_thread_result_bit_for_bit(threads, openmp, monkeypatch):
    """The partial sums belong to the items (batch row, channel block), not to threads: three OpenMP threads, and
    three Python threads over a library built without OpenMP, give the one-thread result exactly."""
    _kernel_ok(F64)
    args = _problem(3, 70, 21, 2, seed=13)
    weight = torch.linspace(-1, 1, 70, dtype=F64).view(1, -1, 1)
    fn = lambda *a: bank_unchecked(*a[:7], "zoh", a[7], True)  # noqa: E731
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one = _grads(fn, args, weight)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setenv("SSMKIT_NATIVE_OPENMP", openmp)
    for a, b in zip(_grads(fn, args, weight), one):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_real_modes_skip_the_phases_and_match_the_loop(dtype):
    """Every Im Λ 0 (Mega's EMA runs its real modes so): the kernel's steps take sin 0, cos 1; outputs and gradients
    (Im Λ's included: the derivative of e^{τΔΛ} is analytic) against the float64 loop."""
    _kernel_ok(dtype)
    args = _problem(2, 70, 11, 3, seed=17)
    args[1] = torch.complex(args[1].real, torch.zeros_like(args[1].real))
    weight = torch.linspace(-1, 1, 70, dtype=F64).view(1, -1, 1)
    want = _grads(lambda *a: bank_irregular_scan_reference(*a[:7], "zoh", a[7]), args, weight)
    got = _grads(lambda *a: bank_unchecked(*a[:7], "zoh", a[7], True), _cast(args, dtype), weight.to(dtype))
    tol = 1e-11 if dtype == F64 else 1e-5
    for a, b in zip(got, want):
        assert (a.to(b.dtype) - b).abs().max() / b.abs().max() < tol


def test_a_steps_decay_is_exact_to_its_own_size_however_small():
    """e^{τΔΛ} to 1e-15 of its own size down to e^-699 (a mutation probe: Re e^{sz} formed as 1 + Re(e^{sz} − 1) was 0
    at e^-50, 1.5e-8 off at e^-20): a state decayed from 1 with no input, against numpy's exp."""
    _kernel_ok(F64)
    z = np.array([-50 + 7j, -20 - 4.7j, -5 + 1j, -300 - 10j, -699 + 3.1j, -0.1 + 1.5708j, -1e-9 + 1e-9j])
    lam = torch.tensor(z, dtype=torch.complex128).view(-1, 1)
    H = lam.shape[0]
    _, x = bank_unchecked(torch.zeros(1, 1, H, dtype=F64), lam, lam, lam, torch.ones(H, dtype=F64),
                          torch.ones(1, 1, dtype=F64), None, "zoh", torch.ones(1, H, 1, dtype=torch.complex128), True)
    assert (np.abs(x[0, :, 0].numpy() - np.exp(z)) / np.abs(np.exp(z))).max() < 1e-15


# ---- real modes (Λ, B, C real tensors: Mega's EMA), the kernel's real variant (ib_forward_real, ib_backward_real)


def _real_loop(u, lam, B, C, dt, tau, D, rule, x0):
    """The real bank by a float64 loop written here: z = Δ τ Λ, ZOH Ā = e^z, B̄ = (e^z − 1) B/Λ; bilinear
    Ā = (1 + z/2)/(1 − z/2), B̄ = Δ τ B/(1 − z/2); x_t = Ā x_{t-1} + B̄ u_t, y_t = Σ_m C x_t + D u_t."""
    x, ys = x0, []
    for t in range(u.shape[1]):
        step = dt[:, None] * tau[:, t, None, None]  # (B, H, 1)
        z = step * lam
        if rule == "zoh":
            A, Bb = torch.exp(z), torch.expm1(z) * B / lam
        else:
            A, Bb = (1 + z / 2) / (1 - z / 2), step * B / (1 - z / 2)
        x = A * x + Bb * u[:, t, :, None]
        ys.append((x * C).sum(-1) + D * u[:, t])
    return torch.stack(ys, 1), x


def _real_problem(Bsz, L, H, M, seed=0):
    """A real bank in float64: Λ in [-1.1, -0.1] (|τ Δ Λ| from 1e-3 to 3.3: expm1's reduction with k = 0 and k ≠ 0),
    Δ in [0.02, 1.02], gaps in [0.05, 3], a nonzero initial state."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    lam = -0.1 - torch.rand(H, M, generator=g, dtype=F64)
    dt = 0.02 + torch.rand(H, generator=g, dtype=F64)
    tau = 0.05 + 2.95 * torch.rand(Bsz, L, generator=g, dtype=F64)
    return [r(Bsz, L, H), lam, r(H, M), r(H, M), dt, tau, r(H), r(Bsz, H, M)]


_NAMES = ["y", "x_L", "du", "dLambda", "dB", "dC", "ddt", "dtau", "dD", "dx0"]


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", [(2, 70, 19, 3), (1, 130, 5, 1), (3, 64, 8, 4)])
def test_real_modes_take_the_real_kernel_and_match_a_float64_loop_with_every_gradient(rule, dtype, shape):
    """Outputs, final state and the gradient of every input (the gaps, Δ and x0 included) of the real variant against
    the loop above: span boundaries crossed (70, 130) or met (64), channel blocks with tails (19, 5) and without (8),
    both rules, both precisions; the state is real (the real kernel ran: the complex one returns a complex state)."""
    _kernel_ok(dtype)
    args = _real_problem(*shape)
    weight = torch.linspace(-1, 1, shape[1], dtype=F64).view(1, -1, 1)
    want = _grads(lambda *a: _real_loop(*a[:7], rule, a[7]), args, weight)
    y, x = bank_unchecked(*[a.to(dtype).requires_grad_() for a in args[:7]], rule, args[7].to(dtype), True)
    assert y.grad_fn.name() == "_NativeBankBackward" and x.dtype == dtype  # the kernel, with a real state
    got = _grads(lambda *a: bank_unchecked(*a[:7], rule, a[7], True), _cast(args, dtype), weight.to(dtype))
    tol = 1e-12 if dtype == F64 else 2e-6  # relative to each quantity's largest entry (float32: state kept in double)
    for name, a, b in zip(_NAMES, got, want):
        assert a.dtype == dtype, name
        err = (a.to(F64) - b).abs().max() / b.abs().max()
        assert err < tol, (name, float(err))


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_real_modes_equal_the_complex_bank_with_zero_imaginary_parts(rule):
    """The real variant and the complex kernel on the same modes given as complex with Im = 0 (the complex path: its
    state stays complex): the same outputs, states and gradients to rounding (Re of the complex gradients)."""
    _kernel_ok(F64)
    args = _real_problem(2, 67, 11, 2, seed=5)
    weight = torch.linspace(-1, 1, 67, dtype=F64).view(1, -1, 1)
    real = _grads(lambda *a: bank_unchecked(*a[:7], rule, a[7], True), args, weight)
    as_complex = [a + 0j if i in (1, 2, 3, 7) else a for i, a in enumerate(args)]
    cplx = _grads(lambda *a: bank_unchecked(*a[:7], rule, a[7], True), as_complex, weight)
    assert cplx[1].is_complex()
    for name, a, b in zip(_NAMES, real, cplx):
        assert not a.is_complex()
        assert (a - b.real).abs().max() <= 1e-12 * b.abs().max(), name


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_real_modes_without_state_skip_or_gap_gradient_and_with_one_output_used(rule):
    _kernel_ok(F64)
    u, lam, B, C, dt, tau, _, _ = _real_problem(2, 67, 11, 2, seed=3)
    zero = torch.zeros(2, 11, 2, dtype=F64)
    for use in ("y", "state"):  # the final state's gradient absent (None), then the output's
        leaves = [t.clone().requires_grad_() for t in (u, lam, B, C, dt)]
        grads = []
        for fn in (lambda *a: bank_unchecked(*a, tau, None, rule, None, True),
                   lambda *a: _real_loop(*a, tau, torch.zeros(11, dtype=F64), rule, zero)):
            y, h = fn(*leaves)
            loss = y.sin().sum() if use == "y" else h.square().sum()
            grads.append(torch.autograd.grad(loss, leaves, allow_unused=True))
        for a, b in zip(*grads):
            if b is None:
                assert a is None or not a.any()
            else:
                assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    y, h = bank_unchecked(u, lam, B, C, dt, tau, None, rule, None, False)
    assert h is None and torch.allclose(y, _real_loop(u, lam, B, C, dt, tau, 0.0, rule, zero)[0], rtol=1e-11,
                                        atol=1e-12)


def test_real_modes_float32_keep_state_adjoint_and_sums_in_double_over_a_thousand_steps():
    """e^{τΔΛ} ≈ 1 − 1e-3: a state that sums ~1 000 steps; the float32 kernel's only roundings are its outputs'
    (6e-8 each), against the float64 loop on the same inputs (a state rounded to float each step drifts past 2e-7)."""
    _kernel_ok(torch.float32)
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    Bsz, L, H, M = 1, 1000, 3, 2
    lam = -1e-3 * (1 + torch.rand(H, M, generator=g, dtype=F64))
    dt = 0.5 + 0.5 * torch.rand(H, generator=g, dtype=F64)
    tau = 0.5 + torch.rand(Bsz, L, generator=g, dtype=F64)
    args32 = [t.float() for t in (r(Bsz, L, H), lam, r(H, M), r(H, M), dt, tau, r(H), r(Bsz, H, M))]
    weight = r(Bsz, L, H)
    got = _grads(lambda *a: bank_unchecked(*a[:7], "zoh", a[7], True), args32, weight.float())
    want = _grads(lambda *a: _real_loop(*a[:7], "zoh", a[7]), [t.double() for t in args32], weight.float().double())
    for name, a, b in zip(_NAMES, got, want):
        err = (a.double() - b).abs().max() / b.abs().max()
        assert err < 2e-7, (name, float(err))


def test_real_modes_decay_and_input_term_to_their_own_size():
    """One step of each lane: x = e^z from x = 1, u = 0 and x = (e^z − 1) B/Λ from x = 0, u = 1 (B = Λ: e^z − 1
    itself), z from −1e-12 (no cancellation) past expm1's clamp at −700, against numpy's exp and expm1 in float64."""
    _kernel_ok(F64)
    z = np.array([-1e-12, -3e-10, -1e-3, -0.3466, -0.3467, -2.0, -20.0, -50.0, -300.0, -699.0, -1e-6, -5.0, 0.5,
                  3.0, -0.7, -1.5])
    lam = torch.tensor(z, dtype=F64).view(-1, 1)
    H = lam.shape[0]
    u = torch.stack([torch.zeros(1, H, dtype=F64), torch.ones(1, H, dtype=F64)])
    x0 = torch.stack([torch.ones(H, 1, dtype=F64), torch.zeros(H, 1, dtype=F64)])
    _, x = bank_unchecked(u, lam, lam, lam, torch.ones(H, dtype=F64), torch.ones(2, 1, dtype=F64), None, "zoh", x0,
                          True)
    x = x[..., 0].numpy()
    assert (np.abs(x[0] - np.exp(z)) / np.exp(z)).max() < 1e-15
    assert (np.abs(x[1] - np.expm1(z)) / np.abs(np.expm1(z))).max() < 3e-16 * 4


@pytest.mark.parametrize("threads, openmp", [(3, "1"), (3, "0")], ids=["3-openmp", "3-python-threads"])
def test_real_modes_threads_give_the_one_thread_result_bit_for_bit(threads, openmp, monkeypatch):
    _kernel_ok(F64)
    args = _real_problem(3, 70, 21, 2, seed=13)
    weight = torch.linspace(-1, 1, 70, dtype=F64).view(1, -1, 1)
    fn = lambda *a: bank_unchecked(*a[:7], "bilinear", a[7], True)  # noqa: E731
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one = _grads(fn, args, weight)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setenv("SSMKIT_NATIVE_OPENMP", openmp)
    for a, b in zip(_grads(fn, args, weight), one):
        assert torch.equal(a, b)


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_real_modes_double_backward_and_the_public_paths(rule):
    """create_graph through the PyTorch path (real there too); the public op's native, chunked and reference
    backends and the one-step function on real modes, against the loop."""
    _kernel_ok(F64)
    args = _real_problem(2, 12, 5, 2, seed=7)
    out = []
    for fn in (lambda *a: bank_unchecked(*a[:7], rule, a[7], True), lambda *a: _real_loop(*a[:7], rule, a[7])):
        leaves = [a.clone().requires_grad_() for a in args]
        y, h = fn(*leaves)
        (g_u,) = torch.autograd.grad(y.sin().sum() + h.square().sum(), leaves[0], create_graph=True)
        out.append(torch.autograd.grad(g_u.square().sum(), [leaves[1], leaves[5]]))
    for a, b in zip(*out):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)
    y_ref, h_ref = _real_loop(*args[:7], rule, args[7])
    for backend in ("native", "chunked", "reference"):
        y, h = bank_irregular_scan(*args[:7], rule, args[7], backend=backend)
        assert not h.is_complex() and torch.allclose(y, y_ref, rtol=1e-12, atol=1e-12), backend
        assert torch.allclose(h, h_ref, rtol=1e-12, atol=1e-12), backend
    y0, h0 = bank_irregular_step(args[0][:, 0], *args[1:5], args[5][:, 0], args[7], args[6], rule)
    y1, h1 = _real_loop(args[0][:, :1], *args[1:5], args[5][:, :1], args[6], rule, args[7])
    assert torch.allclose(y0, y1[:, 0], rtol=1e-13, atol=1e-13) and torch.allclose(h0, h1, rtol=1e-13, atol=1e-13)


def test_real_modes_run_as_a_custom_op_under_torch_compile_and_mixed_kinds_are_refused():
    _kernel_ok(torch.float32)
    args = _cast(_real_problem(1, 20, 6, 2, seed=11), torch.float32)
    u = args[0].clone().requires_grad_()

    def f(u):
        return bank_irregular_scan(u, *args[1:7], "zoh", args[7], backend="native")[0].square().sum()

    got = torch.compile(f, backend="aot_eager", fullgraph=True)(u)
    (g_got,) = torch.autograd.grad(got, u)
    want = f(u)
    (g_want,) = torch.autograd.grad(want, u)
    assert torch.allclose(got, want, rtol=1e-5) and torch.allclose(g_got, g_want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Lambda must be complex with complex B and C"):
        bank_irregular_scan(args[0], args[1], args[2] + 0j, args[3], *args[4:7], "zoh", None)
    with pytest.raises(ValueError, match="state must be"):
        bank_irregular_scan(*args[:7], "zoh", args[7] + 0j)
