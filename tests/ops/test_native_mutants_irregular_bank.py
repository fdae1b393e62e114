"""What a mutation probe of the irregularly sampled bank's C kernel (irregular_bank.c; S4D arXiv 2206.11893, DSS
arXiv 2203.14343) found the other tests would not catch: each test here kills mutants that passed them, against float64
references written here (numpy's expm1, exp, sin and cos; a torch loop and its autograd).

The kernel forms e^{sz} − 1 per lane by its own vector expm1 and sincos of the half angle. The other tests compare a
step's coefficients to a tolerance of the largest one (1e-11 to 1e-12), on tame lanes: mutants that dropped the clamp of
Re(sz) to [−700, 700] (2^k's exponent field wraps below Re(sz) ≈ −745; the tests' −2000 wrapped to a harmless tiny
value) or let its lanes through unmasked, rounded k by a log2 e of 1.4 (the reduced argument leaves the polynomial's
range for |Re(sz)| > 12), dropped the r^12 term of expm1 (1e-14 at |r| = ln 2 / 2), the r^15 term of sin (2e-14 at
|r| = π/4) or the third part of π/2 (2e-15 in the reduced angle at half phases near 1.6e6), formed 1 − cos θ as
1 − (c² − s²) (the cancellation the half angle avoids: Re(e^{sz} − 1) of a slow mode with a small phase), or took the
real modes' shortcut (sin 0, cos 1) for a block whose phases were all below 1e-3 but not 0, passed them. Here each
lane's real part against its own size and its imaginary part against e^{Re sz}, to 2e-15.

The libm fallback past half phases of 1.6e6: where the compiler contracts the range reduction's products into fused
multiply-adds (gcc's default with -march=native on a CPU with FMA) the vector reduction stays exact far beyond it, and
mutants that never took libm, took it in the forward only, or judged a block's phases by Re z or by its first mode
only, passed every test. A build without contraction (``-ffp-contract=off``: what a CPU without FMA, or the portable
flags, get) needs the fallback: the one-step and gradient tests run again in a subprocess built so.

The float32 build keeps the state, the adjoint and the parameters' sums in double: mutants rounding any of them to float
at every step passed the other tests (their float32 tolerance, 1e-5, is above the drift over their 130 steps); here a
slow mode over 1 000 steps, every output and gradient to 2e-7 of the float64 loop (one float32 rounding is 6e-8).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit.ops.native.gate import native_status
from ssmkit.ops.native.irregular_bank import bank_unchecked
from tests.conftest import DEVICE, rel_err
from tests.ops.native_builds import passes_without_fma

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="a CPU kernel")
F64, F32, C128 = torch.float64, torch.float32, torch.complex128


def _kernel_ok(dtype) -> None:
    ok, why = native_status("bank_irregular", dtype)
    if not ok:
        pytest.skip(f"the native kernel cannot run here: {why}")


def _lanes() -> np.ndarray:
    """s z for one step, in blocks of 8 lanes (one item of the AVX-512 build, two of the AVX2 one) whose half phases
    are of one range, so that an item takes the vector sincos, libm's or none (real modes) as a whole: lanes at the
    reductions' edges and Re(sz) over 2^k's range; Re(sz) past the clamp; half phases past the vector range (1.6e6),
    within it, and far past it; real lanes; lanes with slight phases; random tame lanes."""
    rng = np.random.default_rng(5)
    edges = [(-1e-12, 1e-4),  # 1 − cos θ of a small phase against Re(sz) = −1e-12: the half angle's reason
             (-0.3466, 0.2), (-0.3465, 1.5707),  # r = ±ln 2/2 (expm1's edges); half phase ≈ π/4 (sincos' edge)
             (-3.0, 2.4), (-20.0, -4.7), (-50.0, 7.0), (-300.0, -10.0), (-699.0, 3.1)]  # 2^k over its range
    clamp = [(-800.0, 1.0), (-1000.0, -2.0), (-1200.0, 0.5), (-745.5, 0.0), (-710.0, 3.0), (-900.0, 1e3),
             (-1400.0, -7.0), (-760.0, 0.1)]
    past = [(-1e-3, 3.3e6 + 3.9e5 * k + rng.uniform(0, 1e5)) for k in range(8)]  # half phases 1.65e6 to 3.2e6
    within = [(-1e-3, (-1) ** k * 10 ** rng.uniform(5.3, 6.5)) for k in range(8)]  # half phases 1e5 to 1.6e6
    far = [(-1e-3, (-1) ** k * 10 ** rng.uniform(8.3, 9.5)) for k in range(8)]  # half phases 1e8 to 1.6e9
    edges += [(-0.01, 2 * (np.pi / 4 + k * np.pi / 2) - 1e-9) for k in range(-4, 4)]  # half phases ≈ π/4 + k π/2
    real = [(a, 0.0) for a in (-1e-9, -0.3466, -2.0, -50.0, -699.0, -800.0, -1e-3, -1.5)]  # sin 0, cos 1 (no phases)
    slight = [(-10.0 ** -k, (-1) ** k * 10.0 ** -(k + 4)) for k in range(8)]  # |Im| 1e-4 to 1e-11: phases, not none
    tame = [(-10 ** rng.uniform(-8, 0.5), rng.uniform(-9, 9)) for _ in range(16)]
    return np.array([complex(a, b) for a, b in edges + clamp + past + within + far + real + slight + tame])


def test_zoh_input_term_is_exact_in_every_lane_for_decays_and_phases_of_every_range():
    # one step with Δ = 1, τ = 1 and B = Λ (the phase Im Λ the very double the kernel halves): row 0 from x = 0 with
    # u = 1 gives x = (e^Λ − 1) w, w = B/Λ as the wrapper forms it (1 to rounding); row 1 from x = 1 with u = 0 gives
    # x = e^Λ, whose imaginary part is that of e^Λ − 1. e^z − 1 = expm1(a) cos b − 2 sin²(b/2) + i e^a sin b by numpy
    # (libm): for a ≤ 0 each real term is at most twice their sum, so the real part is exact to its own size, and the
    # imaginary part to e^a
    _kernel_ok(F64)
    z = _lanes()
    lam = torch.tensor(z, dtype=C128).view(-1, 1)
    H = lam.shape[0]
    u = torch.stack([torch.ones(1, H, dtype=F64), torch.zeros(1, H, dtype=F64)])
    x0 = torch.stack([torch.zeros(H, 1, dtype=C128), torch.ones(H, 1, dtype=C128)])
    _, x = bank_unchecked(u, lam, lam, lam, torch.ones(H, dtype=F64), torch.ones(2, 1, dtype=F64), None, "zoh", x0,
                          True)
    x = x[..., 0].numpy()
    w = (lam / lam).numpy()[:, 0]
    a, b = z.real, z.imag
    re = np.expm1(a) * np.cos(b) - 2 * np.sin(b / 2) ** 2
    ea = np.exp(np.maximum(a, -700.0))  # the kernel clamps Re(sz) to [-700, 700] (its e^a is e^-700 below)
    im = ea * np.sin(b)
    err_re = np.abs(x[0].real - (re * w.real - im * w.imag)) / np.abs(re)
    err_im = np.abs(x[1].imag - im) / ea
    assert err_re.max() < 2e-15, (z[err_re.argmax()], err_re.max())
    assert err_im.max() < 2e-15, (z[err_im.argmax()], err_im.max())


def _loop(u, lam, B, C, dt, tau, D, x0):
    """The ZOH bank by a float64 torch loop: x_t = e^{τ_t Δ Λ} x_{t-1} + (e^{τ_t Δ Λ} − 1) (B/Λ) u_t, y_t = Re(C x_t)
    + D u_t (e^{sz} − 1 by subtraction: the phases here are large, or the tolerance float32's)."""
    z = dt[:, None] * lam
    A = torch.exp(tau[..., None, None] * z)  # (B, L, H, M)
    b = (A - 1) * (B / lam)
    x, ys = x0, []
    for t in range(u.shape[1]):
        x = A[:, t] * x + b[:, t] * u[:, t, :, None]
        ys.append((x * C).real.sum(-1) + D * u[:, t])
    return torch.stack(ys, 1), x


def _grads(fn, args, wy, wh):
    """fn's (y, h) and the gradients of Σ wy y + Re Σ wh h (weights of float32 values: the same in both precisions)."""
    leaves = [a.clone().requires_grad_() for a in args]
    y, h = fn(*leaves)
    loss = (y * wy.to(y.dtype)).sum() + (h * wh.to(h.dtype)).real.sum()
    return [y.detach(), h.detach(), *torch.autograd.grad(loss, leaves)]


def test_gradients_at_phases_past_the_vector_range_equal_the_float64_loop():
    # mode 0 slow in every channel, mode 1 with phases τ Δ Im Λ up to 4e9 in some (libm's range: the whole block's
    # step takes it, judged by the largest |Im z| of all its modes) and 5e2 to 6e6 in others; outputs and the gradient
    # of every input against the loop's autograd (the backward recomputes each span's coefficients: libm there too)
    _kernel_ok(F64)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    c = lambda *s: torch.complex(r(*s), r(*s))  # noqa: E731
    Bsz, L, H = 2, 5, 6
    im1 = torch.tensor([1e3, 3.1e6, 2e9, -7e8, 5.0, 4e6], dtype=F64)
    lam = torch.complex(-0.05 - 0.2 * torch.rand(H, 2, generator=g, dtype=F64), torch.stack([r(H), im1], 1))
    dt = 0.5 + 0.5 * torch.rand(H, generator=g, dtype=F64)
    tau = 0.5 + torch.rand(Bsz, L, generator=g, dtype=F64)
    args = [r(Bsz, L, H), lam, c(H, 2), c(H, 2), dt, tau, r(H), c(Bsz, H, 2)]
    wy, wh = r(Bsz, L, H), c(Bsz, H, 2)
    got = _grads(lambda *a: bank_unchecked(*a[:7], "zoh", a[7], True), args, wy, wh)
    want = _grads(_loop, args, wy, wh)
    for name, a, b in zip(["y", "x_L", "du", "dLambda", "dB", "dC", "ddt", "dtau", "dD", "dx0"], got, want):
        assert rel_err(a, b) < 1e-13, (name, rel_err(a, b))


def test_float32_keeps_state_adjoint_and_sums_in_double_over_a_thousand_steps():
    # |e^{τΔΛ}| ≈ 1 − 1e-3: a state that sums ~1 000 steps; the kernel's only float32 roundings are its outputs' (y,
    # x_L, ∂u and the gradients cast to the leaves' dtype): 6e-8 of each, against the float64 loop on the same inputs
    _kernel_ok(F32)
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    c = lambda *s: torch.complex(r(*s), r(*s))  # noqa: E731
    Bsz, L, H, M = 1, 1000, 3, 2
    lam = torch.complex(-1e-3 * (1 + torch.rand(H, M, generator=g, dtype=F64)), 0.05 * r(H, M))
    dt = 0.5 + 0.5 * torch.rand(H, generator=g, dtype=F64)
    tau = 0.5 + torch.rand(Bsz, L, generator=g, dtype=F64)
    args32 = [t.to(torch.complex64 if t.is_complex() else F32)
              for t in (r(Bsz, L, H), lam, c(H, M), c(H, M), dt, tau, r(H), c(Bsz, H, M))]
    wy, wh = r(Bsz, L, H).float(), c(Bsz, H, M).to(torch.complex64)
    got = _grads(lambda *a: bank_unchecked(*a[:7], "zoh", a[7], True), args32, wy, wh)
    want = _grads(_loop, [t.to(C128 if t.is_complex() else F64) for t in args32], wy, wh)
    for name, a, b in zip(["y", "x_L", "du", "dLambda", "dB", "dC", "ddt", "dtau", "dD", "dx0"], got, want):
        assert rel_err(a, b) < 2e-7, (name, rel_err(a, b))


def test_a_build_without_fused_multiply_add_takes_libm_past_the_vector_range(tmp_path):
    # the two float64 tests above again, in a subprocess whose kernels are built with -ffp-contract=off (its own
    # cache folder): there the vector range reduction's products q · (π/2's parts) are exact only for q < 2^21
    _kernel_ok(F64)
    tests = ["test_zoh_input_term_is_exact_in_every_lane_for_decays_and_phases_of_every_range",
             "test_gradients_at_phases_past_the_vector_range_equal_the_float64_loop"]
    passes_without_fma(__file__, tests, tmp_path / "cache", "irregular_bank")  # built afresh, with the flag
