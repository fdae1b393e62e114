"""What a mutation probe of the native C kernels causal_conv.c, gated_norm.c (with gated_rows.h) and dropout.c found the
other tests would not catch: each test here kills mutants that passed them, each against an independent reference (the
op's float64 loop or formula, or the torch-integer Philox of ssmkit.ops.philox).

causal_conv.c (39 mutants): the gate's smoke call ran one case (W 4 with a bias, a state and SiLU, L 6), so the W = 4
loop without a bias, the tap-by-tap loops of W ≠ 4, the missing state, the backward without SiLU and every later time
block (64 steps) ran in no smoke call: 15 mutants there passed it; it now runs three cases and refuses them. SiLU's
e^{-a} past float32's range (a < -88.7) must be expr's (inf), not expr_le88's (its exponent field wraps): a mutant of
the backward there passed every test (the tests' pre-activations are O(1)); the forward's only by the Mamba-2 layer's
large-input test. The W = 4 loop without a bias was reached only by a table test of test_backend.py.

gated_rows.h / gated_norm.c (39 mutants): the group scale m = 2^⌈log2 max|v|⌉ cancels wherever v² stays finite, so a
mutant that stopped its max one channel short (or took max v, not max |v|: caught only by the Mamba-2 layer's test)
was wrong only for a float32 group past ~1.8e19 whose largest magnitude sat there.

dropout.c (15 mutants, 12 refused by the smoke call's bit-for-bit check): the counter's high word (from element 2^34
on), the inclusive threshold (a word equal to it, probability 2^-32) and p = 1 (every element dropped, +0 even for an
infinite or NaN x) had no test."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops.conv import causal_conv1d_reference
from ssmkit.ops.native import causal_conv1d_native, native_available
from ssmkit.ops.philox import drop_threshold, keep_scale, philox4x32
from tests.conftest import DEVICE, rel_err

F64, F32 = torch.float64, torch.float32
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not all(native_available(op, dt) for op in ("causal_conv1d", "gated_norm", "dropout")
                                    for dt in (F32, F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


def _grads(fn, leaves, *gouts):
    """fn's outputs (one tensor, or a tuple such as y and the final state) and the gradients of Σ_k Σ gouts[k] ⊙
    output k with respect to every leaf."""
    p = [t.clone().requires_grad_() for t in leaves]
    out = fn(*p)
    outs = out if isinstance(out, tuple) else (out,)
    return [*outs, *torch.autograd.grad(sum((o * g).sum() for o, g in zip(outs, gouts, strict=True)), p)]


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("state", [False, True], ids=["no-state", "state"])
def test_conv_width_four_without_bias_equals_the_loop_in_float64(state, activation):
    # W = 4 has its own fused loop for the pre-activation without a bias (and the SiLU backward recomputes it there);
    # every other test of the kernel passed a bias at W = 4, and a mutant that dropped the first tap of that loop
    # passed them all. Two time blocks (64 steps and a tail of 6): the backward recomputes across the boundary.
    g = torch.Generator().manual_seed(0)
    Bsz, L, H, W = 2, 70, 5, 4
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    leaves = [r(Bsz, L, H), r(H, W), *([r(Bsz, H, W - 1)] if state else [])]
    gy, gs = r(Bsz, L, H), r(Bsz, H, W - 1)
    act = (lambda y: F.silu(y)) if activation == "silu" else (lambda y: y)

    def ref(x, w, *st):
        y, s = causal_conv1d_reference(x, w, None, *st)
        return act(y), s

    got = _grads(lambda x, w, *st: causal_conv1d_native(x, w, None, *st, activation=activation), leaves, gy, gs)
    for a, b in zip(got, _grads(ref, leaves, gy, gs)):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("W", [3, 4])
def test_conv_float32_silu_past_the_exponentials_range_equals_the_loop(W):
    # pre-activations from -120 to 120 (the bias; x small) in float32: SiLU's e^{-a} overflows float32 below
    # a = -88.7, where the kernel must take expr (inf: SiLU(a) = -0, SiLU'(a) = 0), not expr_le88 (whose exponent
    # field wraps there: SiLU(-100) came out -100 in the forward, SiLU' 1 in the backward). Both mutants passed every
    # other test, whose pre-activations are O(1). Against the float64 loop, outputs and every gradient.
    g = torch.Generator().manual_seed(1)
    Bsz, L, H = 2, 9, 67
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    leaves64 = [0.01 * r(Bsz, L, H), r(H, W), torch.linspace(-120.0, 120.0, H, dtype=F64), r(Bsz, H, W - 1) * 0.01]
    gy, gs = r(Bsz, L, H), r(Bsz, H, W - 1)
    want = _grads(lambda x, w, b, st: (lambda y, s: (F.silu(y), s))(*causal_conv1d_reference(x, w, b, st)),
                       leaves64, gy, gs)
    leaves32 = [t.float() for t in leaves64]
    got = _grads(lambda *a: causal_conv1d_native(*a, activation="silu"), leaves32, gy.float(), gs.float())
    assert (got[0][..., : H // 3] <= 0).all()  # SiLU of a ≤ -40: 0 or a tiny negative
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and rel_err(a, b) < 2e-6


def test_the_conv_smoke_call_reaches_every_path_of_the_kernel(monkeypatch):
    # the gate's smoke call decides whether "auto" runs the kernel; with one case (W 4, a bias, a state, SiLU, L 6) it
    # ran neither the W = 4 loop without a bias, nor the tap-by-tap loops (W ≠ 4), nor the missing state's zeros, nor a
    # second time block (64 steps), nor the backward without SiLU, nor SiLU past float32's exponential: 15 mutants
    # there passed it (14 caught by the tests alone, one, SiLU' past float32's range, by none before this file)
    import ssmkit.ops.native.conv as kernel
    from ssmkit.ops.native import gate

    real, calls = kernel.conv_unchecked, []

    def spy(x, weight, bias, state, return_state, activation):
        calls.append((x.shape[1], weight.shape[1], None if bias is None else bias.detach(), state is None, activation))
        return real(x, weight, bias, state, return_state, activation)

    monkeypatch.setattr(kernel, "conv_unchecked", spy)
    gate._smoke("causal_conv1d", F32)
    assert any(W == 4 and b is None for L, W, b, s, a in calls)
    assert any(W == 4 and b is not None and a == "silu" and float(b.min()) < -90 for L, W, b, s, a in calls)
    assert any(W != 4 and b is not None and not s for L, W, b, s, a in calls)
    assert any(s for L, W, b, s, a in calls) and {a for *_, a in calls} == {None, "silu"}
    assert any(L > 64 and L % 64 != 0 and a is None for L, W, b, s, a in calls)
    assert any(L > 64 and L % 64 != 0 and a == "silu" for L, W, b, s, a in calls)


def _norm_formula(y, z, w, G, eps, nbg):
    """v_g / √(mean(v_g²) + eps) ⊙ w in float64, gated before (v = y ⊙ SiLU(z)) or after the norm, without any scale."""
    gate = F.silu(z.double())
    v = y.double() if nbg else y.double() * gate
    g = v.unflatten(-1, (G, v.shape[-1] // G))
    out = (g / torch.sqrt(g.square().mean(-1, keepdim=True) + eps)).flatten(-2) * w.double()
    return out * gate if nbg else out


@pytest.mark.parametrize("nbg", [False, True], ids=["gate-first", "norm-first"])
def test_norm_float32_groups_whose_largest_value_is_negative_or_last_overflow_nothing(nbg):
    # the group scale m = 2^⌈log2 max|v|⌉ keeps the squares finite; it must take every channel's magnitude. A group
    # whose largest |v| is negative (a mutant took max v) or in its last channel (a mutant stopped one channel short)
    # got a smaller m, its squares overflowed float32 and it came out as zeros. Both passed every other test: m
    # cancels wherever v² stays finite, and the one group near the largest float there had its largest value first,
    # positive. Groups of 4 from 1e25 to 2e38 (float32's squares overflow above ~1.8e19), against the float64 formula
    big = [[1.0, 2.0, -0.5, -2e38], [-1e25, 3.0, 0.5, 1.0], [0.5, 2.0, -1.0, 3e30], [-4e20, -1.0, 2.0, 0.25],
           [1.0, -2.0, 3.0, 0.25]]
    y = torch.tensor([sum(big, []), sum(big[::-1], [])], dtype=F32)  # (2, 20): each row five groups of 4
    gen = torch.Generator().manual_seed(2)
    z = torch.rand(2, 20, generator=gen, dtype=F64).float() + 0.5  # SiLU(z) in (0.3, 1.2): |v| < 2.5e38, no sign flip
    w = 1 + 0.3 * torch.randn(20, generator=gen, dtype=F64).float()
    from ssmkit.ops.native.gated_norm import gated_rmsnorm_unchecked

    gout = torch.randn(2, 20, generator=gen, dtype=F64)
    got = _grads(lambda *a: gated_rmsnorm_unchecked(*a, 5, 1e-5, nbg), [y, z, w], gout.float())
    want = _grads(lambda *a: _norm_formula(*a, 5, 1e-5, nbg), [y.double(), z.double(), w.double()], gout)
    for a, b in zip(got, want):  # the output, ∂y, ∂z, ∂w
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-5


def _philox_mask(first: int, n: int, seed: int, threshold: int) -> torch.Tensor:
    """The keep mask of elements [first, first + n) (first a multiple of 4) by the torch-integer Philox4x32-10:
    element i is word i mod 4 at the counter (j mod 2^32, j div 2^32, 0, 0), j = i div 4, kept iff that word is ≥
    threshold."""
    j = torch.arange(first // 4, (first + n + 3) // 4, dtype=torch.int64)
    zeros = torch.zeros_like(j)
    words = philox4x32(torch.stack([j & 0xFFFFFFFF, j >> 32, zeros, zeros], dim=-1), (seed & 0xFFFFFFFF, seed >> 32))
    return words.reshape(-1)[:n] >= threshold


@pytest.mark.parametrize("dtype", [F32, F64])
def test_dropout_counters_past_two_to_the_32_carry_into_the_high_word(dtype):
    # element i's counter is (j mod 2^32, j div 2^32, 0, 0), j = i div 4: its high word is nonzero only from element
    # 2^34 (64 GiB of float32) on, beyond any tensor a test can hold, and a mutant that dropped it passed every other
    # test. The kernel's work items (16 384 elements) are addressed by index, so two of them, [2^34 - 16 384, 2^34 +
    # 16 384), run on a buffer of 32 768 elements: the pointers handed to dp_apply are offset back by the elements
    # before it (the kernel touches only its items' elements), and the carry from j = 2^32 - 1 to 2^32 lies inside
    import ssmkit.ops.native.dropout as kernel
    from ssmkit.ops.native.build import bind

    item, first, n = 16384, (1 << 34) - 16384, 32768
    fns = bind("dropout.c", dtype, kernel.SIGNATURES)
    x = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=F64).to(dtype)
    out = torch.full_like(x, float("nan"))
    size = x.element_size()
    for p, seed in ((0.3, 12345), (0.5, (1 << 62) + 99)):
        fns["dp_apply"](x.data_ptr() - first * size, out.data_ptr() - first * size, first + n, seed, drop_threshold(p),
                        keep_scale(p), first // item, first // item + 2, 1)
        keep = _philox_mask(first, n, seed, drop_threshold(p))
        want = torch.where(keep, x * keep_scale(p), torch.zeros((), dtype=dtype))
        assert torch.equal(out, want)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_dropout_keeps_an_element_whose_word_equals_the_threshold(dtype):
    # kept iff word ≥ round(p · 2^32): with p = word_i / 2^32 (exact) the threshold is element i's own word, which must
    # be kept while every smaller word is dropped; a mutant that kept word > threshold only passed every other test
    # (a word hits a threshold with probability 2^-32). Elements at each of the four word positions, in three blocks
    from ssmkit.ops.native.dropout import masked_scale

    x = torch.randn(700, generator=torch.Generator().manual_seed(4), dtype=F64).to(dtype)
    seed = (1 << 40) + 17
    words = philox4x32(torch.stack([torch.arange(175), *torch.zeros(3, 175, dtype=torch.int64)], dim=-1),
                       (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)
    for i in (0, 1, 2, 3, 258, 699):
        p = int(words[i]) / 2**32
        assert drop_threshold(p) == int(words[i])
        y = masked_scale(x, p, seed)
        assert y[i] == x[i] * keep_scale(p) and y[i] != 0
        assert torch.equal(y, torch.where(words[:700] >= words[i], x * keep_scale(p), torch.zeros((), dtype=dtype)))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_dropout_of_everything_gives_zeros_whatever_x_holds(dtype):
    # p = 1: the threshold is 2^32, above every 32-bit word, so every element is dropped and is +0 even where x is
    # inf or NaN (the scale is 0; x ⊙ 0 would be NaN there and -0 for negative x). A mutant that cut the threshold to
    # its low 32 bits (0: every element kept and scaled by 0) passed every other test, whose x are finite; also p = 0.7
    # on the same x: each dropped element is +0, each kept one x / 0.3
    from ssmkit.ops.native.dropout import masked_scale

    x = torch.tensor([float("inf"), -float("inf"), float("nan"), -2.0, 0.0, -0.0, 3.0] * 40, dtype=dtype)
    y = masked_scale(x, 1.0, 77)
    assert torch.equal(y, torch.zeros_like(x)) and not torch.signbit(y).any()
    keep = _philox_mask(0, x.numel(), 77, drop_threshold(0.7))
    y = masked_scale(x, 0.7, 77)
    assert 0 < int(keep.sum()) < x.numel()
    assert torch.equal(y[~keep], torch.zeros(int((~keep).sum()), dtype=dtype)) and not torch.signbit(y[~keep]).any()
    torch.testing.assert_close(y[keep], x[keep] * keep_scale(0.7), rtol=0, atol=0, equal_nan=True)
