"""Gradient numerics probe of 2026-12-05, continued: the three float32 gaps the gradients probe left, and a fourth.

Each measured in float32 against the same weights cast to float64 (error max|g32 - g64| / max|g64| per tensor).

1. **LRU's and S5's ∂C (and ∂B), S5's ∂Im Λ on the C path** (``"native"``, the CPU's ``"auto"``). With a constant
   input and the loss on every step (d_model 4, d_state 16, L 16 384) LRU's ∂C was 1.6e-4 off, S5's 1.1e-4, S5's
   ∂Im Λ 2.3e-5 (at B 8: ∂C 5.7e-4 and 1.2e-3). Two causes, measured apart:
   - the sums, not the states, for LRU: the weight gradients ∂W_out = xᵀ g and ∂W_in = uᵀ ∂v are sums over all B·L
     steps, and MKL's GEMM of a narrow product (8 columns or fewer on one side) streams the rows into one float32
     running sum (at 131 072 nearly constant rows 9e-4 off). LRU's states were right (1.4e-7) and their sum in double
     7e-8, but the GEMM's ∂C 1.6e-4. Narrow products are now one batched GEMM of 64-row blocks whose partials torch
     sums pairwise (:func:`ssmkit.ops.native.mimo._gram`): LRU ∂C 4.0e-7, ∂B 3.3e-6 -> 2.2e-7, ∂log γ 2.8e-6 -> 4.2e-7.
     Wider layers keep one GEMM, which blocks its sums itself (d_model 128: ∂C 1.4e-6; 64-row blocks, 8.6e-7, cost
     ~1.5x the GEMM).
   - the states too, for S5 (|Λ̄| up to 0.9987): the C recurrence ran its state and adjoint in float32, whose rounding
     adds up over a mode's memory 1/(1 - |Λ̄|): states 1.5e-5 off those of the same float32 Λ̄ and v computed exactly
     (the chunked scan, which carries in double every 64 steps: 3.7e-6). ``linear_recurrence.c`` now carries the state,
     the adjoint and a time-invariant ∂a's sum in double (each value rounded once: states 2.9e-5 -> 5.6e-8 at
     |a| = 0.9987, ∂a 6.4e-6 -> 1.1e-8). S5's ∂C 1.1e-4 -> 1.7e-6, ∂Im Λ 2.3e-5 -> 4.4e-6, ∂B 6.2e-6 -> 1.1e-6, ∂Re Λ
     3.4e-6 -> 2.2e-7, ∂log Δ 7.4e-4 -> 1.8e-4: each exactly the error left by rounding Λ̄ alone to complex64 in an
     otherwise float64 computation (4.4e-6, 1.7e-6, ...; ∂log Δ is a small difference of large terms, the steady
     state being independent of Δ), the floor of any float32 S5.
   Forward+backward time (B 8, L 4 096, d_model 128, one thread, best of 3 paired interleaved runs of the best of 30):
   LRU 57.5 -> 58.9 ms, S5 55.6 -> 56.6 ms (the double recurrence: +0.3 ms forward, +0.45 ms backward, measured alone).
2. **The torch zero-order hold rounded Δ and ΔΛ in float32** (every backend but the C one: the GPU's, ``"chunked"``,
   ``"fft"``, ``"reference"``). e^z turns z's absolute error into a relative one of Ā; at fast poles (Δ 0.5-5, N 256:
   |Im z| ~ 10³) a float32 Δ = exp(log Δ) or z is off by ~10³·6e-8. S4D's ∂log Δ was 1.2e-4 off (the C code 1.1e-7),
   its output 4.4e-7; S5, which forms ΔΛ itself, 6.0e-6 on every path. The torch ZOH now evaluates single precision in
   double and rounds Ā and Δφ(z) once (:func:`ssmkit.ops.discretize.widen`), and S5 forms Δ and ΔΛ in double: S4D
   ∂log Δ 8.6e-8 (chunked), output 1.1e-7; S5 ∂log Δ 1.2e-7-2.7e-7. S4D's chunked forward dispatches 150 aten ops
   (146 before; the limit of tests/perf is 150). torch.compile of S5, S4D and zoh_log (fullgraph) still works.
3. **The fused steps' smoke call seeded torch's global generator** inside ``torch.random.fork_rng`` to build its
   Mamba / Mamba-2 / RG-LRU layers: another thread drawing meanwhile drew from the seed-0 stream, and the restore
   undid its draws (its next numbers repeated). The layers are now built on the meta device and their parameters drawn
   from the smoke call's own generator; nothing touches the global one. The RG-LRU's constructor had the same
   problem in part: its ``fork_rng`` around the submodules' construction (to discard their default inits) did not
   seed, but its restore undid another thread's draws in the window; those submodules are built on the meta device
   now (the weights for a seed are bit for bit as before).
4. **LRU formed λ = exp(-e^ν + i e^θ) in float32** (found alongside 1): e^θ alone is off by up to θ·6e-8 in phase,
   several roundings of λ, and a pole near 1 carries λ's error into every later state. At |λ| 0.999-0.9999, θ up to
   6.28, L 8 192, loss on the last step: output 6.3e-5, ∂log θ 7.7e-4, ∂C 1.5e-4 on every path, 3-6x the error that
   rounding λ alone leaves (1.8e-5, 1.5e-4, 3.9e-5). λ is formed in double and rounded once now: exactly that floor.

Left: the chunked MIMO path's weight gradients are autograd's GEMMs (LRU at B 8, L 16 384, d_model 4: ∂B 5.5e-6, ∂C
3.0e-6; one-sided narrow GEMMs on a GPU unmeasured); DSS forms ΔΛ in float32 in its own file (∂log Δ 9.3e-5 at fast
poles, N 256, on every path, the C one included).
"""

from __future__ import annotations

import copy
import types

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops.native.gate as gate
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.rglru import RGLRU
from ssmkit.layers.shortconv import ShortConv
from ssmkit.ops import use_backend
from ssmkit.ops.discretize import zoh, zoh_log
from ssmkit.ops.native import native_available
from ssmkit.ops.recurrence import linear_recurrence
from tests.conftest import rel_err

NATIVE = native_available("linear_recurrence", torch.float32) and native_available("linear_recurrence", torch.float64)
C64, C128 = torch.complex64, torch.complex128


def _grads(layer, x, backend) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of Σ y (the loss on every step) on ``backend``."""
    with use_backend(backend):
        y, _ = layer(x)
    return dict(zip([n for n, _ in layer.named_parameters()], torch.autograd.grad(y.sum(), list(layer.parameters()))))


def _poles_rounded(layer):
    """A float64 MIMO layer whose Λ̄ alone is rounded to complex64 (straight through for the gradient): the error it
    leaves is the floor of any float32 computation of the layer."""
    discrete = layer.discrete

    def rounded(self):
        A_bar, B_bar, C = discrete()
        return A_bar + (A_bar.to(C64).to(A_bar.dtype) - A_bar).detach(), B_bar, C

    layer.discrete = types.MethodType(rounded, layer)
    return layer


@pytest.mark.skipif(not NATIVE, reason="the C kernels are not built here")
@pytest.mark.parametrize("name", ["lru", "s5"])
def test_native_mimo_gradients_over_a_long_constant_input_reach_the_float32_floor(name):
    # before: LRU ∂C 3.4e-5, ∂B 3.0e-6, ∂log γ 2.6e-6; S5 ∂C 5.4e-5, ∂Im Λ 1.5e-5, ∂B 4.0e-6, ∂log Δ 2.5e-4 (here, L 8 192)
    torch.manual_seed(0)
    layer = layers.build(name, d_model=4, d_state=16)
    x = torch.full((1, 8192, 4), 0.1)
    g64 = _grads(copy.deepcopy(layer).double(), x.double(), "chunked")
    floor = _grads(_poles_rounded(copy.deepcopy(layer).double()), x.double(), "chunked")
    g32 = _grads(layer, x, "native")
    for p, g in g32.items():
        err, least = rel_err(g, g64[p]), rel_err(floor[p], g64[p])
        # after: LRU ≤ 4.6e-7 (its floor ≤ 4e-8); S5 ∂C 1.8e-6 (floor 1.7e-6), ∂Im Λ 4.3e-6 (4.4e-6), ∂log Δ 9.0e-5
        assert err <= 1.5 * least + 1e-6, (p, err, least)


@pytest.mark.parametrize("backend", ["chunked", "native"])
def test_lru_poles_are_formed_in_double_and_rounded_once(backend):
    # slow poles with phases up to 2π and the loss on the last step. Before (λ formed in float32: exp(θ) alone is off by
    # up to θ·6e-8): output 6.3e-5, ∂log θ 7.7e-4, ∂C 1.5e-4 at L 8 192, 3-6x the error of rounding λ alone
    if backend == "native" and not NATIVE:
        pytest.skip("the C kernels are not built here")
    torch.manual_seed(0)
    layer = layers.build("lru", d_model=4, d_state=64, r_min=0.999, r_max=0.9999, max_phase=6.28)
    x, w = torch.randn(1, 4096, 4), torch.randn(1, 4)

    def run(lay, x, backend):
        with use_backend(backend):
            y, _ = lay(x)
        return [y.detach(), *torch.autograd.grad((y[:, -1] * w.to(y.dtype)).sum(), list(lay.parameters()))]

    want = run(copy.deepcopy(layer).double(), x.double(), "chunked")
    floor = run(_poles_rounded(copy.deepcopy(layer).double()), x.double(), "chunked")
    got = run(layer, x, backend)
    for name, g, f, v in zip(["y"] + [n for n, _ in layer.named_parameters()], got, floor, want):
        err, least = rel_err(g, v), rel_err(f, v)
        assert err <= 1.25 * least + 1e-7, (name, err, least)  # after: within 1 % of the floor


@pytest.mark.skipif(not NATIVE, reason="the C kernels are not built here")
def test_native_recurrence_rounds_each_state_and_gradient_once():
    # slow complex modes (memory ~1/(1 - |a|) steps) and a constant input: float32 values against the same float32
    # numbers run in double. Before: states 2.9e-5 off (element by element), ∂a 6.4e-6, ∂b 8.2e-7, ∂h0 4.8e-7.
    a = torch.polar(torch.tensor([0.9987, 0.999, 0.99, 0.5]), torch.tensor([0.01, 0.002, 0.3, 2.0])).to(C64)
    b = torch.full((2, 4096, 4), 0.1 + 0.05j, dtype=C64)
    h0 = torch.full((2, 4), 1 - 2j, dtype=C64)

    def run(dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (a, b, h0)]
        h, _ = linear_recurrence(*leaves, backend="native")
        return h.detach(), torch.autograd.grad(h.real.sum() - 0.5 * h.imag.sum(), leaves)

    (h32, g32), (h64, g64) = run(C64), run(C128)
    assert float(((h32 - h64).abs() / h64.abs()).max()) < 1.2e-7  # after: 5.6e-8
    for name, x, y in zip(("a", "b", "h0"), g32, g64):
        assert rel_err(x, y) < 2e-7, (name, rel_err(x, y))  # after: 1.1e-8, 3.7e-8, 1.2e-8


@pytest.mark.parametrize("K, N", [(16, 4), (4, 16), (2, 64), (64, 8)])
def test_narrow_weight_gradient_sums_are_blocked(K, N):
    # one GEMM of these nearly constant rows: 8.9e-4 off, 1.0e-6 for (4, 16) (MKL streams a narrow product into one
    # running sum)
    from ssmkit.ops.native.mimo import _gram

    g = torch.Generator().manual_seed(0)
    n = 131072 + 37  # and a partial block
    a = 0.7 + 1e-3 * torch.rand(n, K, generator=g)
    b = 0.3 + 1e-3 * torch.rand(n, N, generator=g)
    assert rel_err(_gram(a, b), a.double().mT @ b.double()) < 5e-7  # after: ≤ 1.6e-7


def _fast_poles() -> list[torch.Tensor]:
    """S4D-Lin-like continuous parameters with fast poles, float32: a = log(-Re Λ) = log 0.5, b = Im Λ = π n (n < 256),
    B (H, N) complex, log Δ with Δ in [0.5, 5] (|Im ΔΛ| up to 4e3)."""
    g = torch.Generator().manual_seed(0)
    H, N = 4, 256
    a = torch.full((H, N), -0.6931472)
    b = torch.pi * torch.arange(N, dtype=torch.float32).expand(H, N)
    B = torch.complex(torch.randn(H, N, generator=g), torch.randn(H, N, generator=g))
    return [a, b, B, torch.linspace(-0.6931472, 1.609438, H)]


@pytest.mark.parametrize("form", ["zoh", "zoh_log"])
def test_torch_zoh_in_float32_is_the_float64_value_rounded_once(form):
    # before: Ā 2.4e-5 (zoh) and 4.8e-5 (zoh_log: Δ = e^{log Δ} in float32 too) off, ∂Δ 6.0e-5, ∂log Δ 1.7e-4
    a, b, B, log_dt = _fast_poles()
    # zoh's inputs: Λ = -e^a + i b (H, N) and Δ = e^{log Δ} (H, 1), rounded to float32 here
    inputs = [torch.complex(-a.exp(), b), B, log_dt.exp().unsqueeze(-1)] if form == "zoh" else [a, b, B, log_dt]

    def run(dtype):
        cast = (lambda t: t) if dtype == torch.float32 else (lambda t: t.to(C128 if t.is_complex() else dtype))
        leaves = [cast(t).requires_grad_() for t in inputs]
        with use_backend("chunked"):  # the torch path (the C code runs under "auto" and "native" on the CPU)
            A_bar, B_bar = (zoh if form == "zoh" else zoh_log)(*leaves)
        w = torch.linspace(-1, 1, A_bar.numel()).to(dtype).view(A_bar.shape)  # the same weights in both runs
        loss = (w * A_bar.real - A_bar.imag + w.flip(-1) * B_bar.real + B_bar.imag).sum()
        return [A_bar.detach(), B_bar.detach()], torch.autograd.grad(loss, leaves)

    (v32, g32), (v64, g64) = run(torch.float32), run(torch.float64)
    for x, y in zip(v32, v64):
        assert x.dtype == C64 and rel_err(x, y) < 1.2e-7, rel_err(x, y)  # after: ≤ 4.1e-8
    for i, (x, y) in enumerate(zip(g32, g64)):
        assert rel_err(x, y) < 3e-7, (i, rel_err(x, y))  # after: ≤ 3.1e-8


@pytest.mark.parametrize("name", ["s4d", "s5"])
@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_fast_pole_gradients_on_the_torch_discretisation(name, backend):
    # before: S4D ∂log Δ 2.5e-4 (output 3.3e-7), S5 ∂log Δ 1.0e-5, on every path but the C one (S5: that one too)
    torch.manual_seed(0)
    layer = layers.build(name, d_model=4, d_state=256, dt_min=0.5, dt_max=5.0)
    x, w = torch.randn(1, 256, 4), torch.randn(1, 4)

    def run(lay, x, w, backend):
        with use_backend(backend):
            y, _ = lay(x)
        return y.detach(), torch.autograd.grad((y[:, -1] * w).sum(), list(lay.parameters()))

    y64, g64 = run(copy.deepcopy(layer).double(), x.double(), w.double(), "reference")
    y32, g32 = run(layer, x, w, backend)
    assert rel_err(y32, y64) < 3e-7  # after: 8.9e-8
    for (p, _), a, b in zip(layer.named_parameters(), g32, g64):
        assert rel_err(a, b) < 1e-6, (p, rel_err(a, b))  # after: ≤ 3.0e-7


_STEP_OPS = ["mamba_step", "mamba2_step", "rglru_step"]


def _refuse(*args, **kwargs):
    raise AssertionError("torch's global generator was seeded, saved or restored")


def _guard_global_generator(monkeypatch) -> None:
    """Make every way of seeding, saving-and-restoring or reseeding torch's global generator raise."""
    for module in (torch, torch.random):
        for name in ("manual_seed", "seed", "set_rng_state", "fork_rng"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _refuse)


@pytest.mark.parametrize("op", _STEP_OPS)
def test_step_smoke_call_draws_nothing_from_the_global_generator(op, monkeypatch):
    if not native_available(op, torch.float32):
        pytest.skip(f"the {op} kernel is not built here")
    _guard_global_generator(monkeypatch)
    before = torch.random.get_rng_state()
    for dtype in (torch.float32, torch.float64):
        gate._smoke(op, dtype)
    assert torch.equal(torch.random.get_rng_state(), before)  # not drawn from (and not restored: fork_rng raises)


@pytest.mark.parametrize("op", _STEP_OPS)
def test_a_draw_made_during_the_step_smoke_call_comes_from_the_callers_stream(op, monkeypatch):
    # another thread's draw while the smoke call's layers exist, made deterministic: injected at that moment. It drew
    # from the seed-0 stream, and after the restore the same numbers came again
    if not native_available(op, torch.float32):
        pytest.skip(f"the {op} kernel is not built here")
    stream = torch.Generator()
    stream.set_state(torch.random.get_rng_state())  # the global generator's stream from here
    drawn = []
    smoke_step = gate._smoke_step

    def step_with_a_draw(*args):
        drawn.append(torch.randn(4))
        return smoke_step(*args)

    monkeypatch.setattr(gate, "_smoke_step", step_with_a_draw)
    gate._smoke(op, torch.float32)
    assert drawn
    for d in drawn:
        assert torch.equal(d, torch.randn(4, generator=stream))
    assert torch.equal(torch.randn(4), torch.randn(4, generator=stream))  # the stream goes on, nothing repeats


@pytest.mark.skipif(not native_available("mamba_step", torch.float32), reason="the mamba_step kernel is not built")
def test_step_smoke_call_still_catches_a_wrong_fused_step(monkeypatch):
    # its layers' parameters are drawn from its own generator now (N(0, 1/fan-in)): a 1e-3 error must still show
    fused = Mamba._step_native

    def off(self, x_t, state):
        y, state = fused(self, x_t, state)
        return y * (1 + 1e-3), state

    monkeypatch.setattr(Mamba, "_step_native", off)
    with pytest.raises(RuntimeError, match="differs from the reference"):
        gate._smoke("mamba_step", torch.float32)


def test_rglru_construction_leaves_the_global_generator_to_reset_parameters(monkeypatch):
    # its submodules' default inits used to be drawn inside fork_rng and discarded: a draw by another thread in that
    # window (injected here, deterministically) came from the advanced stream and was undone by the restore
    torch.manual_seed(1)
    stream = torch.Generator()
    stream.set_state(torch.random.get_rng_state())
    drawn = []
    conv_init = ShortConv.__init__

    def init_with_a_draw(self, *args, **kwargs):
        drawn.append(torch.randn(4))
        conv_init(self, *args, **kwargs)

    monkeypatch.setattr(ShortConv, "__init__", init_with_a_draw)
    _guard_global_generator(monkeypatch)
    layer = RGLRU(d_model=8, n_heads=2)
    assert len(drawn) == 1 and torch.equal(drawn[0], torch.randn(4, generator=stream))
    monkeypatch.undo()
    # every weight is reset_parameters's, drawn right after: the same layer re-drawn from that point of the stream
    redrawn = copy.deepcopy(layer)
    torch.random.set_rng_state(stream.get_state())
    redrawn.reset_parameters()
    assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), redrawn.parameters()))
