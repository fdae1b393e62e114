"""The C kernel of the irregularly sampled MIMO modes (``ssmkit/ops/native/irregular_mimo.c``; S5 arXiv 2208.04933,
LRU arXiv 2303.06349) against a float64 loop of x_t = Ā_t x_{t-1} + gain_t v_t written here, Ā_t = e^{z_t} and
gain_t = (e^{z_t} − 1)/Λ (ZOH) or Δ τ_t/(1 − z_t/2) (bilinear), z_t = Δ τ_t Λ, from torch's complex exp in double:
states, final state and the gradient of every input (the gaps included; gradcheck at tiny shapes), both rules, both
precisions, mode counts that are no multiple of the vector width and lengths that are no multiple of anything, a
nonzero x0; its coefficients against scipy's complex expm1 (tiny |z τ|) and numpy's exp (phases past the vector
range reduction, real parts past its clamp); the public op's backends and the S5 and LRU layers with intervals against
their reference paths; a double backward; threads; torch.compile.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch

import ssmkit.layers as layers
import ssmkit.ops.native.irregular_mimo as native_mimo
from ssmkit.ops.backend import use_backend
from ssmkit.ops.irregular import irregular_ssm_scan
from ssmkit.ops.native.gate import native_status
from ssmkit.ops.native.irregular_mimo import modes_unchecked
from tests.conftest import DEVICE

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="a CPU kernel")
F64, C128 = torch.float64, torch.complex128
COMPLEX = {torch.float32: torch.complex64, F64: C128}


def _kernel_ok(dtype) -> None:
    ok, why = native_status("irregular_mimo", dtype)
    if not ok:
        pytest.skip(f"the native kernel cannot run here: {why}")


def _problem(Bsz, L, M, seed=0):
    """v (B, L, M), Λ (Re in [-1.1, -0.1], Im up to ±12), Δ in [0.02, 1.02], gaps in [0.05, 3], x0 (B, M): float64."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    c = lambda *s: torch.complex(r(*s), r(*s))  # noqa: E731
    lam = torch.complex(-0.1 - torch.rand(M, generator=g, dtype=F64), 4 * r(M))
    dt = 0.02 + torch.rand(M, generator=g, dtype=F64)
    tau = 0.05 + 2.95 * torch.rand(Bsz, L, generator=g, dtype=F64)
    return [c(Bsz, L, M), lam, dt, tau, c(Bsz, M)]


def _loop(v, lam, dt, tau, x0, rule):
    """The float64 oracle: x_t = Ā_t x_{t-1} + gain_t v_t step by step, Ā and gain by torch's complex exp."""
    x, xs = x0, []
    for t in range(v.shape[1]):
        step = tau[:, t, None] * dt  # (B, M): Δ τ_t
        z = step * lam
        if rule == "zoh":
            A, gain = torch.exp(z), (torch.exp(z) - 1) / lam
        else:
            A, gain = (1 + z / 2) / (1 - z / 2), step / (1 - z / 2)
        x = A * x + gain * v[:, t]
        xs.append(x)
    return torch.stack(xs, 1)


def _kernel(v, lam, dt, tau, x0, rule):
    """The kernel with z = Δ Λ and w = 1/Λ or Δ formed here (recorded: the gradients reach Λ and Δ)."""
    w = dt.to(C128) if rule == "bilinear" else 1 / lam.to(C128)
    return modes_unchecked(v, dt.to(F64) * lam.to(C128), w, tau, x0, rule)


def _grads(fn, args, weight):
    """fn's states and the gradients of a loss reading every state (complex weights) and the last one's size."""
    leaves = [a.clone().requires_grad_() for a in args]
    x = fn(*leaves)
    loss = (x * weight).real.sum() + x[:, -1].abs().square().sum()
    return [x.detach(), *torch.autograd.grad(loss, leaves)]


def _cast(args, dtype):
    """v and x0 in the layer's complex dtype, the gaps in its real one; Λ and Δ stay double (as the layers pass them)."""
    v, lam, dt, tau, x0 = args
    return [v.to(COMPLEX[dtype]), lam, dt, tau.to(dtype), x0.to(COMPLEX[dtype])]


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", [(2, 70, 11), (1, 13, 3), (3, 9, 16), (2, 7, 37)])  # items of 4 vectors of modes
def test_kernel_matches_the_float64_loop_with_every_gradient(rule, dtype, shape):
    _kernel_ok(dtype)
    args = _problem(*shape)
    g = torch.Generator().manual_seed(1)
    weight = torch.complex(torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64))
    want = _grads(lambda *a: _loop(*a, rule), args, weight)
    got = _grads(lambda *a: _kernel(*a, rule), _cast(args, dtype), weight.to(COMPLEX[dtype]))
    tol = 1e-11 if dtype == F64 else 2e-5  # relative to each quantity's largest entry (float32: the state in double)
    for name, a, b in zip(["x", "dv", "dLambda", "ddt", "dtau", "dx0"], got, want):
        assert a.dtype == (COMPLEX[dtype] if name in ("x", "dv", "dx0") else dtype if name == "dtau" else b.dtype), name
        err = (a.to(b.dtype) - b).abs().max() / b.abs().max()
        assert err < tol, (name, float(err))


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_gradcheck_of_every_input_in_double(rule):
    """torch.autograd.gradcheck (complex inputs: both Wirtinger parts) of v, z, w, the gaps and x0, 3 modes."""
    _kernel_ok(F64)
    v, lam, dt, tau, x0 = _problem(2, 5, 3, seed=2)
    z, w = dt * lam, (dt.to(C128) if rule == "bilinear" else 1 / lam)
    inputs = [t.clone().requires_grad_() for t in (v, z, w, tau, x0)]
    assert torch.autograd.gradcheck(lambda v, z, w, t, x0: modes_unchecked(v, z, w, t, x0, rule), inputs,
                                    eps=1e-6, atol=1e-7, rtol=1e-6)


def test_without_an_initial_state_and_with_only_the_last_state_read():
    _kernel_ok(F64)
    v, lam, dt, tau, _ = _problem(2, 21, 5, seed=3)
    for rule in ("zoh", "bilinear"):
        out = []
        for fn in (_kernel, _loop):
            leaves = [t.clone().requires_grad_() for t in (v, lam, dt, tau)]
            x = fn(*leaves, None if fn is _kernel else torch.zeros(2, 5, dtype=C128), rule)
            out.append([x.detach(), *torch.autograd.grad(x[:, -1].abs().square().sum(), leaves)])
        for a, b in zip(*out):
            assert (a - b).abs().max() <= 1e-11 * b.abs().max()


def test_one_step_from_zero_is_the_exact_zoh_input_term_for_tiny_and_wide_phases():
    """x_0 = (e^{τΔΛ} − 1)/Λ · v_0 from a zero state against scipy's complex expm1 (accurate for tiny arguments: no
    cancellation in the kernel's expm1 and half-angle sine) and phases of 10^2 to 10^9 (the vector range reduction up
    to 3.2e6, libm's sin and cos beyond: one wide phase sends the whole block's step to libm); then the decay of a
    second step of zero input, e^{τz} x, against numpy's exp. 10 modes: a block and a tail."""
    _kernel_ok(F64)
    lam = torch.tensor([-1e-3 + 1e-4j, -0.5 + 1e-9j, -0.5 + 50j, -0.01 + 1e4j, -1e-6 + 1e6j, -2.0 + 3.1e6j,
                        -1e-7 - 2e-8j, -3.0 - 40j, -1e-4 + 3e7j, -0.2 - 1e3j], dtype=C128)
    M = lam.shape[0]
    dt = torch.tensor([1e-6, 1e-8, 1.0, 0.1, 1.0, 1.0, 1e-5, 0.5, 1.0, 2e-3], dtype=F64)
    v = torch.ones(1, 1, M, dtype=C128)
    for gap in (0.3, 1e3):  # the second: phases up to 3e10
        tau = torch.tensor([[gap]], dtype=F64)
        x = _kernel(v, lam, dt, tau, None, "zoh")[:, 0]
        z = gap * (dt * lam).numpy()  # rounded as the kernel forms τ (Δ Λ): the same phases, however wide
        want = scipy.special.expm1(z) / lam.numpy()
        assert (np.abs(x[0].numpy() - want) / np.abs(want)).max() < 1e-13, gap
        x2 = _kernel(torch.zeros(1, 1, M, dtype=C128), lam, dt, tau, x, "zoh")[:, 0]
        assert (np.abs(x2[0].numpy() - np.exp(z) * x[0].numpy()) / np.abs(x[0].numpy())).max() < 1e-13


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_tiny_steps_keep_every_digit_of_the_state_and_the_gradients(dtype):
    """|Δ τ Λ| from 1e-12 to 1e-6 over 37 steps (the cancellation case of e^z − 1): states against the loop with
    scipy's expm1 (the loop's exp(z) − 1 would lose the digits), gradients against autograd of that loop."""
    _kernel_ok(dtype)
    v, lam, _, tau, x0 = _problem(2, 37, 5, seed=5)
    dt = torch.tensor([1e-12, 1e-10, 1e-9, 1e-8, 1e-6], dtype=F64)
    z = tau[..., None] * dt * lam  # (B, L, M)
    A = torch.exp(z)
    gain = torch.from_numpy(scipy.special.expm1(z.numpy())) / lam
    x, xs = x0, []
    for t in range(37):
        x = A[:, t] * x + gain[:, t] * v[:, t]
        xs.append(x)
    want = torch.stack(xs, 1)
    args = _cast([v, lam, dt, tau, x0], dtype)
    got = _kernel(*args, "zoh")
    tol = 1e-13 if dtype == F64 else 1e-6
    assert ((got.to(C128) - want).abs() / want.abs()).max() < tol
    if dtype == F64:  # the gradients: the loop's derivatives of e^z have no cancellation
        weight = torch.complex(torch.cos(torch.arange(37.0, dtype=F64)), torch.sin(torch.arange(37.0, dtype=F64)))
        weight = weight.view(1, 37, 1).expand(2, 37, 5)
        g_got = _grads(lambda *a: _kernel(*a, "zoh"), args, weight)
        g_want = _grads(lambda *a: _loop(*a, "zoh"), [v, lam, dt, tau, x0], weight)
        for name, a, b in zip(["x", "dv", "dLambda", "ddt", "dtau", "dx0"], g_got[1:], g_want[1:]):
            assert ((a - b).abs().max() / b.abs().max()) < 1e-10, name


def test_wide_phases_over_many_steps_match_numpy():
    """Phases τ Δ Im Λ from 1e5 to 1e8 over 19 steps of varying gaps (steps on both sides of the vector range, the
    libm lanes of a block mixed with modes of small phase): every state against a numpy loop of complex exp and
    scipy's expm1, each to 1e-13 of its size (the vector reduction past its range was 1e-8 off)."""
    _kernel_ok(F64)
    lam = np.array([-0.01 + 2e5j, -0.1 + 1.0j, -1e-3 - 4e6j, -0.05 + 3e7j, -0.3 + 0.5j, -1e-4 - 1e8j], complex)
    dt = np.array([1.0, 0.5, 1.0, 1.0, 0.1, 1.0])
    g = np.random.default_rng(7)
    tau = g.uniform(0.05, 3.0, (2, 19))
    v = g.standard_normal((2, 19, 6)) + 1j * g.standard_normal((2, 19, 6))
    x = np.zeros((2, 6), complex)
    want = []
    for t in range(19):
        z = tau[:, t, None] * (dt * lam)  # rounded as the kernel forms τ (Δ Λ)
        x = np.exp(z) * x + scipy.special.expm1(z) / lam * v[:, t]
        want.append(x)
    got = _kernel(torch.from_numpy(v), torch.from_numpy(lam), torch.from_numpy(dt), torch.from_numpy(tau), None,
                  "zoh").numpy()
    err = np.abs(got - np.stack(want, 1)) / np.abs(np.stack(want, 1))
    assert err.max() < 1e-13


def test_real_parts_past_the_vector_clamp_are_exact_and_overflow_as_torch():
    """Re(τ Δ Λ) of ±705 (past the vector expm1's clamp at ±700: libm's lane by lane) decays or grows a state exactly
    as numpy's exp; at +720 e^z overflows, and the state is not finite (torch's complex exp gives inf there too)."""
    _kernel_ok(F64)
    lam = torch.tensor([-705.0 + 1.0j, 705.0 - 2.0j, -0.5 + 0.1j], dtype=C128)
    dt = torch.ones(3, dtype=F64)
    x0 = torch.ones(1, 3, dtype=C128)
    x = _kernel(torch.zeros(1, 1, 3, dtype=C128), lam, dt, torch.ones(1, 1, dtype=F64), x0, "zoh")[0, 0]
    want = np.exp(lam.numpy())
    assert (np.abs(x.numpy() - want) / np.abs(want)).max() < 1e-14
    lam[1] = 720.0 - 2.0j
    x = _kernel(torch.zeros(1, 1, 3, dtype=C128), lam, dt, torch.ones(1, 1, dtype=F64), x0, "zoh")[0, 0]
    assert not torch.isfinite(x[1]) and bool(torch.isfinite(x[[0, 2]]).all())
    assert not torch.isfinite(torch.exp(lam[1]))


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_a_double_backward_goes_through_the_pytorch_path(rule):
    """create_graph: the gradient of ‖∂ℓ/∂v‖² with respect to Λ, Δ and the gaps equals the loop's."""
    _kernel_ok(F64)
    args = _problem(2, 12, 5, seed=7)
    out = []
    for fn in (_kernel, _loop):
        leaves = [a.clone().requires_grad_() for a in args]
        x = fn(*leaves, rule)
        (g_v,) = torch.autograd.grad((x.sin()).real.sum() + x[:, -1].abs().sum(), leaves[0], create_graph=True)
        out.append(torch.autograd.grad(g_v.abs().square().sum(), [leaves[1], leaves[2], leaves[3]]))
    for a, b in zip(*out):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)


def _public(dtype, seed=9, M=11, H=7):
    """u, Λ, B̃, C, Δ, the gaps, x0, D of the public op in dtype (Λ, Δ as the layer's: its real dtype)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    c = lambda *s: torch.complex(r(*s), r(*s))  # noqa: E731
    v, lam, dt, tau, x0 = _problem(2, 30, M, seed=seed)
    cd = COMPLEX[dtype]
    return [r(2, 30, H).to(dtype), lam.to(cd), c(M, H).to(cd), c(H, M).to(cd), dt.to(dtype), tau.to(dtype),
            x0.to(cd), r(H).to(dtype)]


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_public_op_takes_the_kernel_and_agrees_with_its_other_backends(rule, dtype, monkeypatch):
    _kernel_ok(dtype)
    calls = []
    real = native_mimo.modes_unchecked
    monkeypatch.setattr(native_mimo, "modes_unchecked", lambda *a: calls.append(1) or real(*a))
    args = _public(dtype)
    out = {}
    for backend in ("native", "chunked", "reference"):
        leaves = [a.clone().requires_grad_() for a in args]
        y, h = irregular_ssm_scan(*leaves[:6], leaves[6], leaves[7], rule, backend=backend)
        loss = (y * torch.linspace(-1, 1, 30, dtype=dtype).view(1, 30, 1)).square().sum() + h.abs().square().sum()
        out[backend] = [y.detach(), h.detach(), *torch.autograd.grad(loss, leaves)]
    assert len(calls) == 1  # "native" ran the kernel; the others did not
    tol = 1e-11 if dtype == F64 else 5e-5
    for other in ("chunked", "reference"):
        for a, b in zip(out["native"], out[other]):
            assert a.dtype == b.dtype and (a - b).abs().max() <= tol * b.abs().max().clamp_min(1.0)
    with torch.no_grad():
        y0, h0 = irregular_ssm_scan(*args, rule, return_state=False, backend="auto")
    assert h0 is None and torch.allclose(y0, out["native"][0], rtol=0, atol=0)


@pytest.mark.parametrize("name, options", [
    ("s5", {"d_state": 22, "blocks": 1}),  # 11 modes: a block and a tail
    ("s5", {"d_state": 12, "blocks": 1, "discretization": "bilinear", "step_rescale": 2.0}),
    ("s5", {"d_state": 16, "blocks": 2, "conj_sym": False, "clip_eigs": True}),
    ("lru", {"d_state": 22}),
    ("lru", {"d_state": 6, "r_min": 0.9, "r_max": 0.999, "max_phase": 0.314}),
])
def test_s5_and_lru_with_intervals_equal_their_reference_path(name, options, monkeypatch):
    """The layers' forward with intervals (the kernel on "native") against "reference" (the coefficients by
    irregular_discretize and the loop), float64: outputs, final state, the gradients of the input, the intervals and
    every parameter; and the kernel ran."""
    _kernel_ok(F64)
    calls = []
    real = native_mimo.modes_unchecked
    monkeypatch.setattr(native_mimo, "modes_unchecked", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    layer = layers.build(name, d_model=5, dtype=F64, **options)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 23, 5, generator=g, dtype=F64)
    tau = 0.3 + 2 * torch.rand(2, 23, generator=g, dtype=F64)
    state = layer.initial_state(2)
    state = torch.randn(state.shape, generator=g, dtype=F64) + 1j * torch.randn(state.shape, generator=g, dtype=F64)
    out = {}
    for backend in ("native", "reference"):
        xs, ts = x.clone().requires_grad_(), tau.clone().requires_grad_()
        with use_backend(backend):
            y, h = layer(xs, state, intervals=ts)
        loss = y.sin().sum() + h.abs().square().sum()
        params = [p for p in layer.parameters()]
        out[backend] = [y.detach(), h.detach(), *torch.autograd.grad(loss, [xs, ts, *params])]
    assert len(calls) == 1  # the kernel ran under "native" only
    for a, b in zip(out["native"], out["reference"]):
        assert (a - b).abs().max() <= 1e-10 * b.abs().max().clamp_min(1e-3)


def test_a_compiled_s5_layer_with_intervals_equals_eager():
    """torch.compile (aot_eager, fullgraph) of an S5 layer with intervals: the kernel's calls are custom ops."""
    _kernel_ok(torch.float32)
    torch.manual_seed(0)
    layer = layers.build("s5", d_model=6, d_state=22, blocks=1)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 20, 6, generator=g)
    tau = 0.5 + torch.rand(2, 20, generator=g)

    def f(x, tau):
        return layer(x, intervals=tau)[0].square().sum()

    leaves = [x.clone().requires_grad_(), tau.clone().requires_grad_()]
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves)
    g_got = torch.autograd.grad(got, leaves)
    want = f(*leaves)
    g_want = torch.autograd.grad(want, leaves)
    assert torch.allclose(got, want, rtol=1e-5)
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads, openmp", [(3, "1"), (3, "0")], ids=["3-openmp", "3-python-threads"])
def test_threads_give_the_one_thread_result_bit_for_bit(threads, openmp, monkeypatch):
    """The partial sums belong to the items (batch row, mode block), not to threads."""
    _kernel_ok(F64)
    args = _problem(3, 40, 21, seed=13)
    weight = torch.full((3, 40, 21), 0.5 + 0.25j, dtype=C128)
    fn = lambda *a: _kernel(*a, "zoh")  # noqa: E731
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one = _grads(fn, args, weight)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setenv("SSMKIT_NATIVE_OPENMP", openmp)
    for a, b in zip(_grads(fn, args, weight), one):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_real_modes_skip_the_phases_and_match_the_loop(dtype):
    """Every Im Λ 0: the kernel's steps take sin 0, cos 1; states and gradients (Im Λ's included) against the loop."""
    _kernel_ok(dtype)
    args = _problem(2, 30, 9, seed=17)
    args[1] = torch.complex(args[1].real, torch.zeros_like(args[1].real))
    weight = torch.full((2, 30, 9), 1.0 - 0.5j, dtype=C128)
    want = _grads(lambda *a: _loop(*a, "zoh"), args, weight)
    got = _grads(lambda *a: _kernel(*a, "zoh"), _cast(args, dtype), weight.to(COMPLEX[dtype]))
    tol = 1e-11 if dtype == F64 else 2e-5
    for a, b in zip(got, want):
        assert (a.to(b.dtype) - b).abs().max() / b.abs().max() < tol
