"""What a mutation probe of the native RG-LRU and linear recurrence kernels (rglru_scan.c with rglru_gates.h,
linear_recurrence.c) found the other tests would not catch: each test here kills mutants that passed them, each
against a float64 loop written here.

The float32 RG-LRU runs a block of channels as passes of up to four 16-lane vectors with AVX-512 (two 8-lane ones
with AVX2), the last vector of a block moved back to end at the block's end (overlapping the one before it), and the
lanes one by one in blocks narrower than a vector. No test ran a block of 33 to 48 channels, the AVX-512 pass of three
vectors: a mutant that ran two there (leaving 8 to 16 channels unwritten) passed every test, and so did the gate's
smoke call, which ran blocks of 64 and 6 channels only (nor did it reach the overlapping vector: a mutant that let
that vector run past the block's end corrupted memory in the tests and passed the smoke call).

The RG-LRU's two recurrences (h, and the adjoint λ) step in increment form, y + ((a - 1) y + u), only where
a > 3/4, and directly, a y + u, elsewhere: near a = 0 the increment form cancels (|y| rounded away to leave a small
a y + u). Mutants that took the increment form everywhere (the per-lane step, the vector step) passed every test: no
test compared the states and gradients element by element where the memory is short; they were 1e-4 off there in
float32 (5e-7 now) and 1e-12 in double (2e-15).

An infinite state stays infinite (inf + (a - 1) inf is NaN; the kernels step directly where the increment is not
finite): mutants that dropped that check passed every test (NaN from the step after an infinite input on, where the
PyTorch paths give inf).

The linear recurrence carries its state h, adjoint λ and a time-invariant gate's ∂a sum in double in the float32
build; the tests checked that for complex time-invariant gates only: mutants rounding the real state, the real adjoint
or the real time-invariant sum to float32 at every step passed every other test (1e-6 off at slow gates, 1e-7 now).
The gate's smoke call ran two of the kernel's four full-block copies (time-varying or not, real or complex); a mutant
that ran the real time-invariant block as complex passed it (and crashed in the tests)."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.native import native_available
from ssmkit.ops.rglru import rglru
from tests.conftest import DEVICE, rel_err

F64, F32 = torch.float64, torch.float32
C = 8.0
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu"
    or not all(native_available(op, dtype) for op in ("rglru", "linear_recurrence") for dtype in (F32, F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


def _loop64(x, r, i, Lam, h0, w):
    """h and the gradients of Σ w·h with respect to x, i and h0 by float64 loops on the inputs widened (no resets):
    log a_t = -c r_t softplus(-Λ), h_t = a_t h_{t-1} + √(1 - a_t²) i_t x_t, λ_t = w_t + a_{t+1} λ_{t+1};
    ∂x_t = λ_t m_t i_t, ∂i_t = λ_t m_t x_t, ∂h_{-1} = a_0 λ_0."""
    x, r, i, Lam, h0, w = (t.double() for t in (x, r, i, Lam, h0, w))
    la = -C * r * torch.nn.functional.softplus(-Lam)
    a, m = torch.exp(la), torch.sqrt(-torch.expm1(2 * la))
    h, state = torch.empty_like(x), h0
    for t in range(x.shape[1]):
        state = a[:, t] * state + m[:, t] * i[:, t] * x[:, t]
        h[:, t] = state
    lam, carry = torch.empty_like(x), torch.zeros_like(h0)
    for t in range(x.shape[1] - 1, -1, -1):
        lam[:, t] = w[:, t] + carry
        carry = a[:, t] * lam[:, t]
    return h, [lam * m * i, lam * m * x, carry]


def _native(x, r, i, Lam, h0, w):
    """The kernel's h and its gradients of Σ w·h with respect to x, i and h0."""
    ins = [t.clone().requires_grad_() for t in (x, r, i, Lam, h0)]
    h, _ = rglru(*ins[:4], C, ins[4], None, backend="native")
    g = torch.autograd.grad((h * w).sum(), ins)
    return h.detach(), [g[0], g[2], g[4]]


def test_float32_rglru_every_block_width_equals_the_loop():
    # H = 1 .. 64 and 64 + 33 .. 64 + 48: every pass shape of the float32 block (1 to 4 vectors with AVX-512, 1 or 2
    # with AVX2, an overlapping last vector, the per-lane loop), each channel's h and gradients against the float64
    # loop (a pass of two vectors where three were due left 8 to 16 channels of a 40-channel block unwritten)
    g = torch.Generator().manual_seed(0)
    for H in [*range(1, 65), *range(97, 113)]:
        x, w = torch.randn(2, 9, H, generator=g), torch.randn(2, 9, H, generator=g)
        r, i = torch.rand(2, 9, H, generator=g) * 0.9 + 0.05, torch.rand(2, 9, H, generator=g)
        Lam, h0 = torch.randn(H, generator=g) * 3, torch.randn(2, H, generator=g)
        h, grads = _native(x, r, i, Lam, h0, w)
        h64, grads64 = _loop64(x, r, i, Lam, h0, w)
        assert rel_err(h, h64) < 2e-6, (H, rel_err(h, h64))
        for name, got, want in zip(("x", "i", "h0"), grads, grads64):
            assert rel_err(got, want) < 2e-6, (H, name, rel_err(got, want))


@pytest.mark.parametrize("dtype, bound", [(F32, 4e-6), (F64, 1e-13)], ids=["float32", "float64"])
def test_rglru_short_memory_states_and_gradients_element_by_element(dtype, bound):
    # a_t from e^-72 to 0.9 (Λ from -9 to 1, r in [1/2, 1)), positive x, i, h0 and weights over four decades: no
    # cancellation in h_t = a_t h_{t-1} + m_t i_t x_t or in the adjoint, so every state and gradient is within a few
    # roundings of the float64 loop. Measured 6e-7 (float32) and 2e-15 (float64); the increment form y + ((a - 1) y + u)
    # at a ~ 0, which cancels, 1e-4 and 1e-12 (∂h0: 1). H = 70: a block of 64 (float32: the vector code) and one of 6
    # (the lanes)
    g = torch.Generator().manual_seed(0)
    B, L, H = 2, 60, 70
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(B, L, H, generator=g, dtype=F64)  # noqa: E731
    x, w = 10 ** u(-3.0, 1.0), 10 ** u(-3.0, 1.0)
    r, i = u(0.5, 1.0), u(0.5, 1.0)
    Lam = torch.linspace(-9, 1, H, dtype=F64)
    h0 = 1 + torch.rand(B, H, generator=g, dtype=F64)
    x, r, i, Lam, h0, w = (t.to(dtype) for t in (x, r, i, Lam, h0, w))
    h, grads = _native(x, r, i, Lam, h0, w)
    h64, grads64 = _loop64(x, r, i, Lam, h0, w)
    elementwise = lambda got, want: float(((got.double() - want).abs() / want.abs()).max())  # noqa: E731
    assert elementwise(h, h64) < bound, elementwise(h, h64)
    for name, got, want in zip(("x", "i", "h0"), grads, grads64):  # ∂h0 = a_0 λ_0: e^{log a_0} at |log a_0| up to
        # 72 carries log a_0's rounding times 72 (6.8e-6 in float32)
        assert elementwise(got, want) < bound * (10 if name == "h0" else 1), (name, elementwise(got, want))


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_rglru_infinite_state_stays_infinite(dtype):
    # x = inf at t = 4 in every channel: h_t = +inf from there on, as in the loop (a_t > 0, no resets), gates near 1
    # (the increment form's region, where inf + (a - 1) inf is NaN) and below 3/4; H = 70 (vectors and lanes)
    g = torch.Generator().manual_seed(1)
    B, L, H = 2, 12, 70
    x = torch.randn(B, L, H, generator=g, dtype=F64)
    x[:, 4] = torch.inf
    r, i = torch.rand(B, L, H, generator=g, dtype=F64) * 0.5 + 0.5, torch.rand(B, L, H, generator=g, dtype=F64) + 0.1
    Lam = torch.linspace(-2, 8, H, dtype=F64)
    h0 = torch.randn(B, H, generator=g, dtype=F64)
    h, _ = rglru(*(t.to(dtype) for t in (x, r, i, Lam)), C, h0.to(dtype), None, backend="native")
    want, _ = _loop64(x, r, i, Lam, h0, torch.ones_like(x))
    assert torch.isinf(want[:, 4:]).all() and (want[:, 4:] > 0).all()
    assert torch.equal(torch.isposinf(h), torch.isposinf(want)) and not torch.isnan(h).any()
    assert rel_err(h[:, :4], want[:, :4]) < (1e-6 if dtype == F32 else 1e-13)


def test_the_rglru_smoke_call_reaches_every_pass_shape(monkeypatch):
    # the gate's smoke call decides whether "auto" runs the kernel; with H 70 alone (blocks of 64 and 6 channels) it ran
    # no overlapping vector and no AVX-512 pass of 3 vectors, and two mutants there passed it. Its blocks past the
    # first (rglru_scan.c's VEC = 64 channels) must now include one narrower than an AVX2 vector (8 floats: the
    # per-lane loop) and ones of 2 and 3 AVX-512 vectors (16 floats) whose last vector overlaps (not a multiple of 8)
    import ssmkit.ops.native.rglru as kernel
    from ssmkit.ops.native import gate

    real, tails = kernel.rglru_unchecked, set()

    def spy(x, *rest):
        tails.add(x.shape[2] % 64)
        return real(x, *rest)

    monkeypatch.setattr(kernel, "rglru_unchecked", spy)
    gate._smoke("rglru", F32)
    assert any(t < 8 for t in tails), tails
    assert any(16 < t < 32 and t % 8 for t in tails) and any(32 < t < 48 and t % 8 for t in tails), tails


@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
def test_float32_linear_recurrence_carries_state_and_adjoint_in_double(varying, cplx):
    # slow gates, 1 - |a| log-uniform in [1e-4, 1e-3] (memory 1e3 to 1e4 steps), L 4 096, K 40 (a full block of 32 and
    # a partial one): the float32 kernel's h and gradients against the same float32 numbers run in float64 (the gate's
    # own rounding not counted). Measured 3e-8 to 1e-7; with the real state, adjoint or time-invariant ∂a sum rounded
    # to float32 at every step (mutants that passed every other test) 8e-7 to 1.4e-6
    from ssmkit.ops.native import linear_recurrence_native

    g = torch.Generator().manual_seed(0)
    B, L, K = 2, 4096, 40
    shape = (B, L, K) if varying else (K,)
    a = 1 - 10 ** (-4 + torch.rand(shape, generator=g, dtype=F64))
    if cplx:
        a = torch.polar(a, 0.1 * torch.randn(shape, generator=g, dtype=F64))
    r = lambda *s: torch.randn(*s, generator=g, dtype=a.dtype)  # noqa: E731
    a, b, h0, w = a.to(torch.complex64 if cplx else F32), r(B, L, K), r(B, K), r(B, L, K)
    out = []
    for dtype in ((torch.complex64, torch.complex128) if cplx else (F32, F64)):
        leaves = [t.to(dtype).requires_grad_() for t in (a, b, h0)]
        h, last = linear_recurrence_native(*leaves)
        loss = (h * w.to(dtype).conj()).real.sum() + last.real.sum()
        out.append([h.detach(), *torch.autograd.grad(loss, leaves)])
    for name, got, want in zip(("h", "a", "b", "h0"), *out):
        assert rel_err(got, want) < 3e-7, (name, rel_err(got, want))


def test_the_linear_recurrence_smoke_call_runs_every_full_block_copy(monkeypatch):
    # linear_recurrence.c runs a full block of 32 channels by one of four copies, (time-varying or not) x (real or
    # complex); the smoke call ran two (complex time-invariant, real time-varying), and a mutant that ran the real
    # time-invariant block as complex passed it (and crashed in the tests). Each of the four must now run with >= 32
    # channels
    import ssmkit.ops.native.recurrence as kernel
    from ssmkit.ops.native import gate

    real, cases = kernel.recurrence_unchecked, set()

    def spy(a, b, h0):
        if b.shape[-1] >= 32:
            cases.add((a.dim() == b.dim(), b.is_complex()))
        return real(a, b, h0)

    monkeypatch.setattr(kernel, "recurrence_unchecked", spy)
    gate._smoke("linear_recurrence", F32)
    assert cases == {(True, True), (True, False), (False, True), (False, False)}, cases
