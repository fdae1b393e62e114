"""Mutation round of 2026-12-07 over four modules that had never been mutation-tested: ops/chunked.py,
layers/state.py, layers/checks.py and layers/marks.py.

Hand mutants (flipped signs, off-by-one powers and slices, dropped conjugates, terms and checks, changed thresholds
and defaults) were run against each module's own test files (tests/ops/test_chunked.py, tests/ops/test_scan.py,
tests/layers/test_state.py, tests/layers/test_state_batches.py, tests/layers/test_checks.py,
tests/layers/test_marks.py); the tests below kill the survivors that can be killed, each against an independent
reference written here (float64 powers and products, exact small-integer arithmetic, the documented argument
contract). Each test's docstring names the mutants it kills; the equivalent survivors are listed in the round's
report.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import ssmkit.ops.chunked as chunked
from ssmkit.layers.checks import (
    SHAPES,
    FixedOption,
    check_dt_range,
    check_even_state,
    check_flag,
    check_lr,
    check_positive_int,
    checkpoint_dtype,
    parameter_dtype,
)
from ssmkit.layers.marks import is_protected, marked_parameters, optim_marks, register_ssm_parameter
from ssmkit.layers.state import TensorSpec, cat_states, check_state
from tests.conftest import DEVICE, rel_err

# ------------------------------------------------------------------------------------------------------------------
# ops/chunked.py


def test_split_is_hi_plus_lo_to_double_precision_and_times_split_adds_both():
    """Kills C10 (``_split`` returns no lo part: the carry's multiplier (Ā^T)^G rounded to float32, whose error
    adds up linearly over the group ends) and C11 (``_times_split`` subtracts lo x instead of adding it).

    hi = wide rounded to float32, lo = the rest: hi + lo equals wide to ~eps_32² (double precision); the multiply-add
    acc + (hi + lo) x is checked on small integers and halves, where float32 arithmetic is exact."""
    g = torch.Generator().manual_seed(0)
    wide = torch.polar(1 - 1e-5 * torch.rand(64, generator=g, dtype=torch.float64),
                       torch.rand(64, generator=g, dtype=torch.float64))
    hi, lo = chunked._split(wide, torch.complex64)
    assert hi.dtype == lo.dtype == torch.complex64
    assert rel_err(hi, wide) > 1e-9  # the rounding is there to be repaired
    assert rel_err(hi.to(torch.complex128) + lo.to(torch.complex128), wide) < 1e-13
    same, none = chunked._split(wide, torch.complex128)  # already in the narrow dtype: no lo
    assert same is wide and none is None
    acc, h, low, x = (torch.tensor([v], dtype=torch.float32) for v in (1.0, 2.0, 0.25, 3.0))
    assert chunked._times_split(acc, h, low, x).item() == 1.0 + (2.0 + 0.25) * 3.0
    assert chunked._times_split(acc, h, None, x).item() == 1.0 + 2.0 * 3.0


def _count_addcmul(monkeypatch):
    calls, inner = [], torch.addcmul
    monkeypatch.setattr(torch, "addcmul", lambda *a, **k: calls.append(1) or inner(*a, **k))
    return calls


def test_float32_carry_keeps_float32_powers_up_to_eight_group_ends_and_carries_hi_lo_beyond(monkeypatch):
    """Kills C6 (``ng < _FEW_GROUPS`` for ``ng <= _FEW_GROUPS``: the wide hi + lo multiplier from 8 group ends on,
    where the docstring keeps float32 powers up to 8 group ends) and C10 (no lo part: one multiply-add per group
    end beyond 8, not two).

    Float32 carry x_c = Ā^T x_{c-1} + z_c over nc chunks (G = ⌈√nc⌉, ng = ⌈nc/G⌉ groups): G - 1 steps inside the
    groups, then ng - 1 group-end steps of one multiply-add (ng <= 8) or two (hi and lo, ng > 8), then one product
    for the carried states and one for the final state; the states equal a complex128 chunk loop."""
    g = torch.Generator().manual_seed(1)
    A_T = torch.polar(0.9 + 0.09 * torch.rand(2, 3, generator=g, dtype=torch.float64),
                      torch.rand(2, 3, generator=g, dtype=torch.float64))
    calls = _count_addcmul(monkeypatch)
    for nc, per_end in ((64, 1), (81, 2)):  # ng = 8 and ng = 9
        z = torch.randn(2, 1, nc, 3, generator=g, dtype=torch.complex64)
        x0 = torch.randn(2, 1, 3, generator=g, dtype=torch.complex64)
        calls.clear()
        prev, last = chunked._carry(z, A_T.to(torch.complex64), x0, chunked.power_table(A_T, 2))
        G = math.isqrt(nc - 1) + 1
        ng = -(-nc // G)
        assert len(calls) == (G - 1) + per_end * (ng - 1) + 2, nc
        x, ref = x0.to(torch.complex128), []
        for c in range(nc):  # the chunk loop with the exact Ā^T
            ref.append(x)
            x = A_T[:, None] * x + z[:, :, c].to(torch.complex128)
        assert rel_err(prev, torch.stack(ref, 2)) < 1e-5 and rel_err(last, x) < 1e-5


def test_wide_powers_are_double_precision_powers_rounded_once():
    """Kills C27 (``wide_powers`` as a power table in a's own dtype) where the device's cumulative product runs in
    that dtype (CUDA: a float32 table drifts ~k·eps). On CPU the mutant is equivalent: ATen's CPU cumprod
    accumulates complex64 in complex128 (measured: the same table, max error 0.96 ulp at k < 4096).

    a^k for k < 4096, a = complex64 values near the unit circle: each entry is the complex128 power of the same a
    rounded once to complex64, so within one float32 rounding (2^-24 relative) of it."""
    g = torch.Generator().manual_seed(2)
    a = torch.polar(1 - 1e-6 * torch.rand(8, generator=g), 6 * torch.rand(8, generator=g))  # complex64
    got = chunked.wide_powers(a.to(DEVICE), 4096).cpu()
    assert got.dtype == torch.complex64 and got.shape == (8, 4096)
    want = a.to(torch.complex128)[:, None] ** torch.arange(4096, dtype=torch.float64)
    assert float(((got.to(torch.complex128) - want).abs() / want.abs()).max()) < 2.0 ** -23


def test_transpose_forward_derivative_is_the_tangent_transposed():
    """Kills C24 (``_TransposeJvp.jvp`` returns -ẋᵀ).

    The map x -> xᵀ is linear: its tangent under forward-mode AD is ẋᵀ, exactly."""
    x = torch.arange(6.0, dtype=torch.float64).reshape(2, 3)
    t = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)
    with fwAD.dual_level():
        out = chunked.transpose(fwAD.make_dual(x, t))
        primal, tangent = fwAD.unpack_dual(out)
    assert torch.equal(primal, x.t()) and torch.equal(tangent, t.t())


# ------------------------------------------------------------------------------------------------------------------
# layers/state.py


def test_check_state_refuses_another_dtype_of_the_right_shape():
    """Kills S3 (``check_state`` compares the shape only: a float32 state for a float64 spec, or a real one for a
    complex spec, was taken and promoted or truncated later).

    The contract: the state must be (B, *shape) in the spec's dtype, on the layer's device; the message names both."""
    spec = TensorSpec((2, 3), torch.complex128)
    check_state(torch.zeros(4, 2, 3, dtype=torch.complex128), spec, 4, torch.device("cpu"))  # accepted
    for dtype in (torch.complex64, torch.float64):
        with pytest.raises(ValueError, match=r"state must be \(4, 2, 3\) torch.complex128 .* got \(4, 2, 3\) torch"):
            check_state(torch.zeros(4, 2, 3, dtype=dtype), spec, 4, torch.device("cpu"))
    named = (spec, TensorSpec((1,), torch.float64))
    with pytest.raises(ValueError, match=r"state\[1\] must be \(4, 1\) torch.float64"):
        check_state((torch.zeros(4, 2, 3, dtype=torch.complex128), torch.zeros(4, 1)), named, 4, torch.device("cpu"))


def test_cat_states_refuses_states_of_another_dtype():
    """Kills S14 (``cat_states`` compares per-stream shapes and devices but not dtypes: torch.cat promoted a float32
    batch's state joined to a float64 one, and the running layer then refused its own joined state).

    Joined states keep every tensor's dtype; states whose tensors differ in dtype are refused, naming both."""
    a = (torch.ones(2, 3, dtype=torch.float64), torch.ones(2, 1, dtype=torch.complex128))
    b = (torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.complex128))
    joined = cat_states([a, b])
    assert [t.dtype for t in joined] == [torch.float64, torch.complex128]
    assert torch.equal(joined[0], torch.tensor([[1.0] * 3, [1.0] * 3, [0.0] * 3], dtype=torch.float64))
    bad = (b[0].float(), b[1])
    with pytest.raises(ValueError, match=r"states\[1\]'s tensor 0 is \(3,\) torch.float32 .* states\[0\]'s \(3,\) "
                                         r"torch.float64"):
        cat_states([a, bad])


# ------------------------------------------------------------------------------------------------------------------
# layers/checks.py


def test_positive_ints_and_flags_refuse_their_stand_ins():
    """Kills K2 (``check_positive_int`` takes True: bool is an int subclass, so ``d_model=True`` built a layer of
    width 1) and K3 (``check_flag`` takes 0 and 1 for False and True).

    The contract: a positive int is an int >= 1 that is not a bool; a flag is True or False only."""
    check_positive_int(1, "d_model")
    check_flag(False, "bidirectional")
    for bad in (True, False, 0, -2, 2.0, "3"):
        with pytest.raises(ValueError, match=rf"d_model must be a positive int; got {bad!r}"):
            check_positive_int(bad, "d_model")
    for bad in (0, 1, 2, None, "no"):
        with pytest.raises(ValueError, match=rf"bidirectional must be True or False; got {bad!r}"):
            check_flag(bad, "bidirectional")


def test_even_state_sizes_and_equal_dt_bounds():
    """Kills K5 (``check_even_state`` takes an odd d_state: a conjugate-pair SSM then held half a pair) and K6
    (``check_dt_range`` refuses dt_min == dt_max, a fixed Δ, which 0 < dt_min <= dt_max allows).

    d_state: even ints >= 2 only; dt_min = dt_max: one Δ, accepted."""
    for ok in (2, 4, 64):
        check_even_state(ok, "N/2 conjugate pairs")
    for bad in (1, 3, 5, 63, 0, True):
        with pytest.raises(ValueError, match=rf"d_state must be an even int >= 2 \(N/2 conjugate pairs\); got {bad!r}"):
            check_even_state(bad, "N/2 conjugate pairs")
    check_dt_range(0.01, 0.01)
    with pytest.raises(ValueError, match="0 < dt_min <= dt_max; got 0.1, 0.01"):
        check_dt_range(0.1, 0.01)


def test_learning_rate_zero_freezes_and_parameters_follow_the_default_dtype():
    """Kills K8 (``check_lr`` refuses lr = 0, the documented way to freeze a parameter) and K9 (``parameter_dtype``
    falls back to float32 instead of torch's default dtype: a layer built under ``torch.set_default_dtype(float64)``
    got float32 parameters).

    check_lr: None or a finite float >= 0; parameter_dtype(None) = torch.get_default_dtype()."""
    for ok in (None, 0, 0.0, 1e-3):
        check_lr(ok)
    for bad in (-1e-3, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match=r"lr must be a finite float >= 0 \(0 freezes the parameters\)"):
            check_lr(bad)
    before = torch.get_default_dtype()
    try:
        for default in (torch.float64, torch.float32):
            torch.set_default_dtype(default)
            assert parameter_dtype(None) is default
            assert parameter_dtype(torch.float64) is torch.float64
    finally:
        torch.set_default_dtype(before)


def test_half_precision_checkpoints_build_float32_models():
    """Kills K10 (``checkpoint_dtype`` maps float16 weights to float32 but passes bfloat16 through, so a model saved
    after ``.bfloat16()`` was rebuilt in a dtype ``parameter_dtype`` refuses).

    float16 and bfloat16 -> float32; float32, float64 and None (unknown) unchanged."""
    for saved, want in ((torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                        (torch.float32, torch.float32), (torch.float64, torch.float64), (None, None)):
        assert checkpoint_dtype(saved) is want
        if want is not None:
            assert parameter_dtype(checkpoint_dtype(saved)) is want


def test_a_fixed_option_can_be_neither_reassigned_nor_deleted():
    """Kills K14 (``FixedOption.__delete__`` removes the value: ``del layer.l_max`` left the class's descriptor in
    its place, and the next assignment then went through as a first one).

    Assigned once in ``__init__``; a later assignment or a deletion raises AttributeError and the value stays."""

    class Toy:
        l_max = FixedOption(SHAPES)

        def __init__(self, l_max: int) -> None:
            self.l_max = l_max

    toy = Toy(16)
    with pytest.raises(AttributeError, match="l_max is fixed at construction: it cannot be deleted"):
        del toy.l_max
    assert toy.l_max == 16
    with pytest.raises(AttributeError, match=r"l_max is fixed at construction \(the parameters and the state are "
                                             r"shaped by l_max=16\); got an assignment of 32"):
        toy.l_max = 32
    assert toy.l_max == 16


# ------------------------------------------------------------------------------------------------------------------
# layers/marks.py


class _Double(torch.nn.Module):
    """A parametrization t -> 2 t (torch.nn.utils.parametrize)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return 2 * t


def _marked_module() -> torch.nn.Module:
    m = torch.nn.Module()
    register_ssm_parameter(m, "A", torch.ones(3), lr=1e-3, weight_decay=0.1)
    register_ssm_parameter(m, "B", torch.ones(2), lr=None)
    m.plain = torch.nn.Parameter(torch.zeros(1))
    return m


def test_marks_hold_the_given_lr_and_weight_decay_and_are_read_as_a_copy():
    """Kills M2 (the weight decay given is dropped: marks {"weight_decay": 0.0}), M4 (``optim_marks`` hands out the
    module's own dict, so a caller's edit changed the optimizer groups), M8 (``is_protected`` inverted) and M9 (each
    registration replaces the module's marks: only the last SSM parameter kept them).

    Marks: {"lr": lr, "weight_decay": weight_decay}, lr left out for lr=None; unmarked parameters are unprotected."""
    m = _marked_module()
    marks = optim_marks(m)
    assert marks == {"A": {"lr": 1e-3, "weight_decay": 0.1}, "B": {"weight_decay": 0.0}}
    marks["A"] = {"lr": 1.0}
    del marks["B"]
    assert optim_marks(m) == {"A": {"lr": 1e-3, "weight_decay": 0.1}, "B": {"weight_decay": 0.0}}
    assert is_protected(m, "A") and is_protected(m, "B") and not is_protected(m, "plain")


def test_marked_parameters_follow_a_parametrized_tensor_and_list_each_parameter_once():
    """Kills M5 (``_own_parameters`` skips the parameters ``torch.nn.utils.parametrize`` moved off the module), M6
    (they stand for their own name, ``original``, not the tensor's: the marks are lost), M7 (a parameter shared by
    two submodules is listed twice, so an optimizer got it in two groups) and M10 (a top-level name gets a leading
    dot).

    Every parameter once, by its qualified name, with the marks of the tensor it holds (None for unmarked ones)."""
    m = _marked_module()
    torch.nn.utils.parametrize.register_parametrization(m, "A", _Double())
    assert torch.equal(m.A, torch.full((3,), 2.0))
    listed = {name: marks for name, _, marks in marked_parameters(m)}
    assert listed == {"B": {"weight_decay": 0.0}, "plain": None,
                      "parametrizations.A.original": {"lr": 1e-3, "weight_decay": 0.1}}
    outer = torch.nn.Module()
    outer.first, outer.second = _marked_module(), torch.nn.Module()
    outer.second.shared = outer.first.B  # one Parameter under two names
    names = [name for name, _, _ in marked_parameters(outer)]
    assert names == ["first.A", "first.B", "first.plain"]
