"""What a mutation probe of the native C kernels of S4's spectral path (cauchy.c, cauchy_pairs.c, spectral.c, zoh.c)
found the other tests and the gate's smoke calls would not catch; each test here kills mutants that passed them.

cauchy.c's backward runs the points in blocks of 256: the smoke call (W 70) ran one block, and 5 mutants of its block
loop (the per-block zeroing of Σ_n v c², ∂z and γ at the block's offset, the per-(s, n) sums overwritten per block)
passed it, caught by the tests alone. Three passed every test: a backward that stopped after the first block when ∂z
is not asked for (S4's case: its points are constants), and ones that wrote ∂w, or ∂z, only beside ∂v (no test took
a gradient subset over more than one block, nor ∂w or ∂z alone): killed here against the float64 direct sums.

zoh.c's smoke call drew Δ from [0, 1): every |Δ Λ| was above 1.2, so the series for |z| < 1 ran in no smoke call (a
mutant of its φ' coefficients passed it), nor did the log form of S4D (zoh_log) or exp_phi (DSS), which "auto" takes
on the same gate: 10 mutants there passed it, caught by the tests alone. spectral.c's smoke call asked for both
halves of sp_grad at once: a mutant that skipped either half when asked alone (fftblocks asks for the one gradient it
needs) passed it. Each smoke call now reaches that code: the tests below check that it does."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.cauchy import cauchy_reference
from ssmkit.ops.native import cauchy_native, native_available
from tests.conftest import DEVICE, rel_err

F64, F32, C64, C128 = torch.float64, torch.float32, torch.complex64, torch.complex128
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not all(native_available(op, d) for op in ("cauchy", "zoh", "fft_blocks")
                                    for d in (F32, F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


@pytest.mark.parametrize("need", ["v,w", "v", "w", "z", "w,z"])
@pytest.mark.parametrize("dtype", [C128, C64], ids=["c128", "c64"])
def test_cauchy_gradient_subsets_over_several_backward_blocks_equal_the_float64_sums(dtype, need):
    # W 300 points: a backward block of 256 and a tail of 44. z a constant (S4's points): the kernel's backward runs
    # without ∂z (a mutant that then stopped after the first block gave ∂v, ∂w of the first 256 points only); and the
    # gradients asked for alone (mutants that wrote ∂w or ∂z only beside ∂v passed every other test)
    g = torch.Generator().manual_seed(0)
    crand = lambda *s: torch.randn(*s, generator=g, dtype=C128)  # noqa: E731
    G, N, W = 3, 7, 300
    args = {"v": crand(2, G, N), "z": crand(G, W) * 3, "w": crand(G, N)}
    gout = crand(2, G, W)
    names = need.split(",")
    grads = {}
    for name, d in (("native", dtype), ("ref", C128)):
        leaves = {n: t.to(d).requires_grad_(n in names) for n, t in args.items()}
        f = cauchy_native if name == "native" else cauchy_reference
        out = f(leaves["v"], leaves["z"], leaves["w"])
        grads[name] = torch.autograd.grad((out * gout.to(d).conj()).real.sum(), [leaves[n] for n in names])
    tol = 1e-12 if dtype == C128 else 1e-4
    for a, b in zip(grads["native"], grads["ref"]):
        assert rel_err(a, b) < tol


def test_the_cauchy_smoke_call_reaches_the_backward_block_loop_and_the_backward_without_dz(monkeypatch):
    # each of its kernel calls over more than one backward block of 256 points, with a tail; one with z a constant
    import ssmkit.ops.native.cauchy as kernel
    from ssmkit.ops.native import gate

    real, calls = kernel.sums_unchecked, []

    def spy(v, z, w):
        calls.append((z.shape[-1], z.requires_grad))
        return real(v, z, w)

    monkeypatch.setattr(kernel, "sums_unchecked", spy)
    gate._smoke("cauchy", F32)
    assert calls and all(W > 256 and W % 256 and W % 64 for W, _ in calls), calls
    assert {grad for _, grad in calls} == {True, False}, calls


def test_the_zoh_smoke_call_reaches_the_series_the_log_form_and_exp_phi(monkeypatch):
    # |Δ Λ| on both sides of the series' radius 1, in each of the three entries that "auto" takes on the "zoh" gate
    import ssmkit.ops.native.zoh as kernel
    from ssmkit.ops.native import gate

    sizes = {}

    def spy(name, z_of):
        real = getattr(kernel, name)

        def call(*args):
            sizes[name] = z_of(*args).detach().abs()
            return real(*args)

        monkeypatch.setattr(kernel, name, call)

    spy("zoh_native", lambda lam, B, dt: dt * lam)
    spy("zoh_native_log", lambda a, b, B, log_dt: log_dt.exp()[:, None] * torch.complex(-a.exp(), b))
    spy("exp_phi_native", lambda z: z)
    gate._smoke("zoh", F64)
    assert set(sizes) == {"zoh_native", "zoh_native_log", "exp_phi_native"}
    for name, r in sizes.items():
        assert r.min() < 0.5 and r.max() > 2, (name, r)


def test_the_fft_blocks_smoke_call_runs_each_half_of_spectral_grads_alone(monkeypatch):
    import ssmkit.ops.native.spectral as kernel
    from ssmkit.ops.native import gate

    real, asked = kernel.spectral_grads, set()

    def spy(U, dY, K, acc):
        asked.add((U is not None and acc is not None, K is not None))  # (∂k's spectrum, ∂u's)
        return real(U, dY, K, acc)

    monkeypatch.setattr(kernel, "spectral_grads", spy)
    gate._smoke("fft_blocks", F32)
    assert asked == {(True, True), (True, False), (False, True)}
