"""What a mutation probe of the irregularly sampled MIMO modes' C kernel (irregular_mimo.c; S5 arXiv 2208.04933, LRU
arXiv 2303.06349), the real variant of the irregular bank's (irregular_bank.c: ib_forward_real / ib_backward_real,
Mega's EMA) and their shared vmath.h found the other tests would not catch: each test here kills mutants that passed
them, against float64 references written here (a torch loop of complex exp and its autograd, numpy's exp and expm1).

- A kernel whose smoke call fails is switched off for the process: "auto" and a forced "native" take the PyTorch
  path, silently, and every kernel test skips. Mutants the smoke caught passed the suite so; here a kernel that builds
  must pass its smoke call.
- The items are (batch row, group of 4 vectors of modes): a group count rounded with one mode too few (M of 32k + 1
  lost their last group; M = 1 divided by zero) passed every test (no mode count 1 mod 16 or 32 among them).
- A step takes libm's sin and cos, the vector ones or none (real modes) by the largest |Im z| of the item's modes:
  judged by its first vector only, or by |Re z|, it passed (no item whose first vector is real and the rest not, no
  purely oscillating mode).
- Re(s z) past ±700 takes libm's exp (the vector expm1 clamps there): the backward without it passed (the one test
  there checks the forward), and so did the backward without libm's sines past the vector range (FMA contraction keeps
  the vector reduction exact beyond it: the gradients run again in a build without contraction, where a PHASE_LIMIT
  ten times larger passed as well, the other tests' phases being below the true limit or far past it).
- The vector expm1 and sincos, each mode of one step to 2e-15: a dropped third part of π/2, sine or cosine term passed
  this kernel's tests (the bank's smoke call caught some of them and switched the bank off; this kernel ran on).
- The float32 build keeps the state, the adjoint, the parameters' sums and ∂τ's partial sums over the mode groups in
  double: rounding any of them to float passed (the float32 tests' 37 to 70 steps stay within their tolerance); here
  1 000 slow steps, and two modes in different groups whose ∂τ terms cancel.
- The bank's real variant clamped Re(s z) to [−700, 700] (its ZOH steps had no libm fallback): e^{700} ≈ 1e304 for
  e^{705} ≈ 1.5e306, a finite 1e304 where torch's exp overflows, e^{−700} for e^{−705}; fixed with the test below.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit.ops.native.gate import native_status
from ssmkit.ops.native.irregular_mimo import modes_unchecked
from tests.conftest import DEVICE, rel_err
from tests.ops.native_builds import passes_without_fma

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="a CPU kernel")
F64, F32, C128, C64 = torch.float64, torch.float32, torch.complex128, torch.complex64


def _kernel_ok(dtype, op="irregular_mimo") -> None:
    ok, why = native_status(op, dtype)
    if not ok:
        pytest.skip(f"the native kernel cannot run here: {why}")


@pytest.mark.parametrize("op", ["irregular_mimo", "bank_irregular"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_a_kernel_that_builds_passes_its_smoke_call(op, dtype):
    # a smoke call that fails switches the kernel off (the PyTorch path runs instead, and the kernel tests skip): only
    # a kernel that cannot be built or loaded here (no compiler, SSMKIT_NATIVE=0) may be off
    ok, why = native_status(op, dtype)
    assert ok or not why.startswith("the smoke call failed"), why


def _loop(v, z, w, tau, x0, rule):
    """The float64 oracle: x_t = A_t x_{t-1} + b_t v_t, s = τ_t, ZOH A = e^{sz}, b = (e^{sz} − 1) w; bilinear
    A = (1 + sz/2)/(1 − sz/2), b = s w/(1 − sz/2) (torch's complex exp; the sizes here keep e^{sz} − 1 clear of
    cancellation)."""
    x, xs = x0, []
    for t in range(v.shape[1]):
        sz = tau[:, t, None] * z
        if rule == "zoh":
            A = torch.exp(sz)
            b = (A - 1) * w
        else:
            A, b = (1 + sz / 2) / (1 - sz / 2), tau[:, t, None] * w / (1 - sz / 2)
        x = A * x + b * v[:, t]
        xs.append(x)
    return torch.stack(xs, 1)


def _grads(fn, args, weight):
    """fn's states and the gradients of Re Σ conj(weight) x (every state read, linearly: a state of e^{701} and its
    gradients stay finite) with respect to every argument."""
    leaves = [a.clone().requires_grad_() for a in args]
    x = fn(*leaves)
    loss = (x * weight.conj()).real.sum()
    return [x.detach(), *torch.autograd.grad(loss, leaves)]


def _randn(g, *shape, dtype=C128):
    return torch.randn(*shape, generator=g, dtype=dtype)


def _case(g, Bsz, L, z, tau=None):
    """v, z, w, τ, x0 for modes z (M,) complex128: w random, τ in [0.5, 1.5] unless given."""
    M = z.shape[0]
    tau = 0.5 + torch.rand(Bsz, L, generator=g, dtype=F64) if tau is None else tau
    return [_randn(g, Bsz, L, M), z, _randn(g, M), tau, _randn(g, Bsz, M)]


_NAMES = ["x", "dv", "dz", "dw", "dtau", "dx0"]


def _check(args, rule, tol, weight=None, per_entry=False):
    """The kernel's states and every gradient against the loop's, each to tol of its largest entry (or of each
    entry's own size: ``per_entry``)."""
    if weight is None:
        weight = _randn(torch.Generator().manual_seed(99), *args[0].shape)
    got = _grads(lambda *a: modes_unchecked(*a[:5], rule), args, weight)
    want = _grads(lambda *a: _loop(*a, rule), args, weight)
    for name, a, b in zip(_NAMES, got, want):
        err = float(((a - b).abs() / b.abs()).max()) if per_entry else rel_err(a, b)
        assert err < tol, (name, err)


def _lanes() -> np.ndarray:
    """s z for one step, in blocks of 32 modes (an item of the AVX-512 build, two of the AVX2 one) of one kind, so that
    each item takes the vector sincos, libm's or none (real modes), and the vector expm1 or libm's, as a whole: the
    reductions' edges and Re(sz) over 2^k's range; half phases of 1e5 to 1.6e6 (the vector reduction's large
    multiples of π/2); past 1.6e6 (libm): 2e6 to 1.6e9, and 4e6 to 1.5e7 alone (without FMA contraction the vector
    reduction's second part of π/2 times q is exact up to q = 2^21, half phases of 3.3e6: a PHASE_LIMIT of 1.6e7
    passed the lanes of the first kind); real modes; slight phases; Re(sz) past −700 (libm's exp: no clamp here)."""
    rng = np.random.default_rng(23)
    edges = [(-1e-12, 1e-4), (-3e-10, 3e-11), (-0.3466, 0.2), (-0.3465, 1.5707), (-3.0, 2.4), (-20.0, -4.7),
             (-50.0, 7.0), (-300.0, -10.0), (-699.0, 3.1), (-0.6931, 0.5), (-1.0397, -0.9)]
    edges += [(-0.01, 2 * (np.pi / 4 + k * np.pi / 2) - 1e-9) for k in range(-4, 4)]  # half phases ≈ π/4 + k π/2
    edges += [(-10 ** rng.uniform(-8, 0.5), rng.uniform(-9, 9)) for _ in range(32 - len(edges))]
    within = [(-10 ** rng.uniform(-6, -1), (-1) ** k * 10 ** rng.uniform(5.3, 6.5)) for k in range(32)]
    past = [(-10 ** rng.uniform(-6, -1), (-1) ** k * 10 ** rng.uniform(6.6, 9.5)) for k in range(32)]
    mid = [(-10 ** rng.uniform(-6, -1), (-1) ** k * rng.uniform(8e6, 3e7)) for k in range(32)]
    real = [(-(10.0 ** e), 0.0) for e in np.linspace(-12, 2.8, 32)]
    slight = [(-(10.0 ** -(k % 8)), (-1) ** k * 10.0 ** -(4 + k % 8)) for k in range(32)]
    wide = [(-rng.uniform(700.5, 708.0), rng.uniform(-9, 9)) for _ in range(32)]  # e^a normal (> 2.2e-308)
    return np.array([complex(a, b) for a, b in edges + within + past + mid + real + slight + wide])


def test_one_step_is_exact_in_every_mode_for_decays_and_phases_of_every_range():
    # τ = 1 and w = 1: from x = 0 with v = 1 the state is e^z − 1 = expm1(a) cos b − 2 sin²(b/2) + i e^a sin b (numpy:
    # each real term at most twice their sum for a ≤ 0, so the real part to its own size), from x = 1 with v = 0 it
    # is e^z (its imaginary part that of e^z − 1): each mode's real part to 2e-15 of its size, the imaginary to e^a.
    # The other tests draw tame phases, or check the forward to 1e-13: a dropped third part of π/2 (2e-15 at half
    # phases of 1e6), a dropped sine or cosine term (1e-14) passed them (the bank's smoke call caught some, switching
    # the bank off; this kernel kept running them)
    _kernel_ok(F64)
    z = _lanes()
    zt = torch.from_numpy(z)
    M = z.shape[0]
    v = torch.stack([torch.ones(1, M, dtype=C128), torch.zeros(1, M, dtype=C128)])
    x0 = torch.stack([torch.zeros(M, dtype=C128), torch.ones(M, dtype=C128)])
    x = modes_unchecked(v, zt, torch.ones(M, dtype=C128), torch.ones(2, 1, dtype=F64), x0, "zoh")[:, 0].numpy()
    a, b = z.real, z.imag
    re = np.expm1(a) * np.cos(b) - 2 * np.sin(b / 2) ** 2
    ea = np.exp(a)
    err_re = np.abs(x[0].real - re) / np.abs(re)
    err_im = np.abs(x[1].imag - ea * np.sin(b)) / ea
    err_a = np.abs(x[1].real - ea * np.cos(b)) / ea
    assert err_re.max() < 2e-15, (z[err_re.argmax()], err_re.max())
    assert err_im.max() < 2e-15, (z[err_im.argmax()], err_im.max())
    assert err_a.max() < 2e-15, (z[err_a.argmax()], err_a.max())


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
@pytest.mark.parametrize("M", [1, 17, 33])  # one mode past a group of 4 vectors of 4 (AVX2) or 8 (AVX-512), and 1
def test_mode_counts_one_past_a_group_and_a_single_mode(M, rule):
    _kernel_ok(F64)
    g = torch.Generator().manual_seed(M)
    z = torch.complex(-0.05 - torch.rand(M, generator=g, dtype=F64), 3 * torch.randn(M, generator=g, dtype=F64))
    _check(_case(g, 3, 6, z), rule, 1e-12)


def test_an_items_phases_are_judged_by_all_of_its_modes_and_by_their_imaginary_parts():
    # 8 real modes first (an item's first vector in either build) and oscillating ones after: a step judged by its
    # first vector takes sin 0, cos 1 for all; then modes with Re z = 0 exactly (pure rotations, with and without an
    # input), which a step judged by |Re z| takes as real
    _kernel_ok(F64)
    g = torch.Generator().manual_seed(3)
    real = torch.complex(-0.1 - torch.rand(8, generator=g, dtype=F64), torch.zeros(8, dtype=F64))
    osc = torch.complex(-0.1 - torch.rand(5, generator=g, dtype=F64), 4 * torch.randn(5, generator=g, dtype=F64))
    _check(_case(g, 2, 7, torch.cat([real, osc])), "zoh", 1e-12)
    rot = torch.complex(torch.zeros(6, dtype=F64), torch.tensor([0.3, -1.0, 2.5, -7.0, 1e-3, 12.0], dtype=F64))
    for rule in ("zoh", "bilinear"):
        _check(_case(g, 2, 7, rot), rule, 1e-12)


def test_gradients_past_the_vector_clamp_of_the_real_part_are_exact_to_each_entrys_size():
    # Re(s z) of −703 to −708 at every step (libm's exp: the vector expm1 clamps at −700, and e^{−700} is 148 times
    # e^{−705}): the states and every gradient, each entry to its own size (those of the fast modes are ~e^{−705}
    # themselves); then one step of a growing mode, Re(s z) = 701 (e^{701} ≈ 2.7e304, ∂τ ~ z e^{701}: finite)
    _kernel_ok(F64)
    g = torch.Generator().manual_seed(5)
    z = torch.tensor([-705.0 + 1.0j, -0.5 + 0.1j, -703.0 - 2.0j, -0.02 + 0.7j], dtype=C128)
    tau = torch.tensor([[1.0, 1.003, 1.0], [1.004, 1.0, 1.002]], dtype=F64)  # each step's s Re z past −700
    _check(_case(g, 2, 3, z, tau), "zoh", 1e-13, per_entry=True)
    z = torch.tensor([701.0 - 2.0j, -0.5 + 0.1j, 0.3 + 1.0j], dtype=C128)
    _check(_case(g, 2, 1, z, torch.ones(2, 1, dtype=F64)), "zoh", 1e-13, per_entry=True)


def test_gradients_at_phases_past_the_vector_range_equal_the_float64_loop():
    # half phases s Im z / 2 from 1e6 to 2e9 in the item's modes (libm's sin and cos past 1.6e6, the forward's and
    # the backward's: every mode of the item takes them), with slow modes beside them; both rules
    _kernel_ok(F64)
    g = torch.Generator().manual_seed(7)
    im = torch.tensor([3.1e6, 2e9, -7e8, 5.0, 4e6, -0.3, 1.2, -3.4e6, 9.0], dtype=F64)
    z = torch.complex(-0.05 - 0.2 * torch.rand(9, generator=g, dtype=F64), im)
    for rule in ("zoh", "bilinear"):
        _check(_case(g, 2, 5, z), rule, 1e-12)


def test_a_build_without_fused_multiply_add_takes_libm_past_the_vector_range(tmp_path):
    # the one-step lanes and the gradients past the vector range again, in a subprocess whose kernels are built with
    # -ffp-contract=off (its own cache folder): there the vector range reduction is exact only for q < 2^21 (with
    # FMA contraction far beyond it, and mutants that never took libm in the backward, or took it from half phases of
    # 1.6e7 only, passed)
    _kernel_ok(F64)
    tests = ["test_one_step_is_exact_in_every_mode_for_decays_and_phases_of_every_range",
             "test_gradients_at_phases_past_the_vector_range_equal_the_float64_loop"]
    passes_without_fma(__file__, tests, tmp_path / "cache", "irregular_mimo")  # built afresh, with the flag


def test_float32_keeps_state_adjoint_and_sums_in_double_over_a_thousand_steps():
    # |e^{sz}| ≈ 1 − 1e-3: states that sum ~1 000 steps; the float32 kernel's only roundings are its outputs' (x, ∂v,
    # ∂x0 in complex64, ∂τ in float32: 6e-8 of each), against the float64 loop on the same inputs
    _kernel_ok(F32)
    g = torch.Generator().manual_seed(11)
    Bsz, L, M = 1, 1000, 3
    z = torch.complex(-1e-3 * (1 + torch.rand(M, generator=g, dtype=F64)), 0.05 * torch.randn(M, generator=g,
                                                                                                dtype=F64))
    v, _, w, tau, x0 = _case(g, Bsz, L, z)
    weight = _randn(g, Bsz, L, M).to(C64)
    for rule in ("zoh", "bilinear"):
        got = _grads(lambda *a: modes_unchecked(*a[:5], rule), [v.to(C64), z, w, tau.float(), x0.to(C64)], weight)
        args64 = [v.to(C64).to(C128), z, w, tau.float().double(), x0.to(C64).to(C128)]
        want = _grads(lambda *a: _loop(*a, rule), args64, weight.to(C128))
        for name, a, b in zip(_NAMES, got, want):
            assert rel_err(a, b) < 2e-7, (rule, name, rel_err(a, b))


def test_float32_gap_gradient_sums_the_mode_groups_in_double_and_rounds_once():
    # ∂τ_t = Σ_m Re(conj(z A) G)_m: the kernel sums each group's modes in double, the caller the groups' partial sums
    # in double, then rounds once to float32. Mode 32 (in another group than mode 0 in either build) is mode 0 again
    # with the loss's weight negated, so their terms cancel exactly and modes 1..31 (weights 1e-3) leave ~1e-3 of
    # them: partial sums rounded to float32 before the groups' sum were 6e-8 of mode 0's term off, 6e-5 of the result
    _kernel_ok(F32)
    g = torch.Generator().manual_seed(17)
    M = 33
    z = torch.complex(-0.1 - torch.rand(M, generator=g, dtype=F64), 3 * torch.randn(M, generator=g, dtype=F64))
    v, _, w, tau, x0 = _case(g, 2, 20, z)
    weight = _randn(g, 2, 20, M)
    weight[..., 1:32] *= 1e-3
    for t in (z, w):
        t[32] = t[0]
    for t, sign in ((v, 1), (x0, 1), (weight, -1)):
        t[..., 32] = sign * t[..., 0]
    v, x0, tau, weight = v.to(C64), x0.to(C64), tau.float(), weight.to(C64)
    got = _grads(lambda *a: modes_unchecked(*a[:5], "zoh"), [v, z, w, tau, x0], weight)[4]
    want = _grads(lambda *a: _loop(*a, "zoh"), [v.to(C128), z, w, tau.double(), x0.to(C128)], weight.to(C128))[4]
    assert rel_err(got, want) < 2e-7, rel_err(got, want)


# ---- the irregular bank's real variant (Λ, B, C real tensors: Mega's EMA; ib_forward_real / ib_backward_real)


def _real_loop(u, lam, B, C, dt, tau, D, x0):
    """The real ZOH bank by a float64 loop: z = Δ τ_t Λ, x_t = e^z x_{t-1} + (e^z − 1) (B/Λ) u_t, y_t = Σ C x_t + D u_t
    (|z| ≥ 0.02 here: e^z − 1 by subtraction keeps its digits)."""
    x, ys = x0, []
    for t in range(u.shape[1]):
        z = tau[:, t, None, None] * (dt[:, None] * lam)  # (B, H, M)
        A = torch.exp(z)
        x = A * x + (A - 1) * (B / lam) * u[:, t, :, None]
        ys.append((x * C).sum(-1) + D * u[:, t])
    return torch.stack(ys, 1), x


def _real_grads(fn, args, wy, wh):
    """fn's (y, x_L) and the gradients of Σ wy y + Σ wh x_L (linear: states of e^{701} stay finite)."""
    leaves = [a.clone().requires_grad_() for a in args]
    y, h = fn(*leaves)
    loss = (y * wy).sum() + (h * wh).sum()
    return [y.detach(), h.detach(), *torch.autograd.grad(loss, leaves)]


def test_real_modes_past_the_vector_clamp_follow_exp_in_the_state_and_every_gradient():
    # the real variant's ZOH steps take e^{sz} and e^{sz} − 1 from the vector expm1, which clamps s z to [−700, 700]:
    # Re(sz) of −705 gave e^{−700} (148 times e^{−705}) and +701 gave e^{700} (e^{701} ≈ 2.7e304; +705: 1e304 where
    # torch's exp gives 1.5e306, and +715: 1e304 where it overflows). Decays over two steps (the last without input, so
    # that x_L = e^{sz} x, and ∂x0 = e^{sz} λ): those two each to its own size, the rest to 1e-13 of its largest
    # entry; then one step of a growing mode, everything to its own size
    _kernel_ok(F64, "bank_irregular")
    from ssmkit.ops.native.irregular_bank import bank_unchecked

    g = torch.Generator().manual_seed(13)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    fn = lambda *a: bank_unchecked(*a[:7], "zoh", a[7], True)  # noqa: E731
    H = 8  # a full vector of channels in either build (libm's lanes: every one of them)
    fast, slow = -700.5 - 10 * torch.rand(H, generator=g, dtype=F64), -0.02 - torch.rand(H, generator=g, dtype=F64)
    lam = torch.stack([fast, slow], 1)
    lam[::3] = lam[::3].flip(1)  # the fast mode first or second
    u = torch.stack([r(2, H), torch.zeros(2, H, dtype=F64)], 1)
    tau = torch.tensor([[1.0, 1.003], [1.004, 1.0]], dtype=F64)
    args = [u, lam, r(H, 2), r(H, 2), torch.ones(H, dtype=F64), tau, r(H), r(2, H, 2)]
    wy, wh = r(2, 2, H), r(2, H, 2)
    got, want = _real_grads(fn, args, wy, wh), _real_grads(_real_loop, args, wy, wh)
    names = ["y", "x_L", "du", "dLambda", "dB", "dC", "ddt", "dtau", "dD", "dx0"]
    for name, a, b in zip(names, got, want):
        err = float(((a - b).abs() / b.abs()).max()) if name in ("x_L", "dx0") else rel_err(a, b)
        assert err < 1e-13, (name, err)
    lam = torch.tensor([[701.0, -0.5]], dtype=F64)
    args = [r(1, 1, 1), lam, r(1, 2), r(1, 2), torch.ones(1, dtype=F64), torch.ones(1, 1, dtype=F64), r(1),
            r(1, 1, 2)]
    wy, wh = r(1, 1, 1), r(1, 1, 2)
    got, want = _real_grads(fn, args, wy, wh), _real_grads(_real_loop, args, wy, wh)
    for name, a, b in zip(names, got, want):
        assert float(((a - b).abs() / b.abs()).max()) < 1e-13, name
