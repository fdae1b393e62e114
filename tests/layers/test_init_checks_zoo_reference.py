"""The shared validators (layers/checks.py), initialisations (layers/init.py) and the zoo declaration
(layers/zoo.py) against their documented contracts: every refusal names its argument, the value it got and what
was expected, the valid neighbour of each bad value passes; the inits follow their laws (log-uniform Δ,
arXiv 2206.11893 §4; JAX's truncated lecun_normal, arXiv 2208.04933) checked with scipy; every field of a ZooEntry
is checked by name (probe 38)."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

from ssmkit.layers import checks, init
from ssmkit.layers.zoo import STRUCTURES, ZooEntry


def refused(check, *args, match: str) -> None:
    """``check(*args)`` raises ValueError whose message contains ``match`` literally."""
    with pytest.raises(ValueError, match=re.escape(match)):
        check(*args)


def test_check_positive_int_names_the_argument_and_the_value():
    for good in (1, 2, 17):
        checks.check_positive_int(good, "n_widgets")
    for bad in (0, -3, True, False, 2.0, "3", None):
        refused(checks.check_positive_int, bad, "n_widgets", match=f"n_widgets must be a positive int; got {bad!r}")


def test_check_flag_takes_only_true_or_false():
    for good in (True, False):
        checks.check_flag(good, "prenorm")
    for bad in (0, 1, 2, "no", "True", None):
        refused(checks.check_flag, bad, "prenorm", match=f"prenorm must be True or False; got {bad!r}")


def symbolic_length(hint: int) -> torch.SymInt:
    """A SymInt length with value ``hint`` whose range starts at 0 (as a dynamic axis under torch.export).

    Built from torch's private shape environment (imported here, so a torch that moves it fails this one test and
    not the file's collection)."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv(specialize_zero_one=False)
    return env.create_symintnode(env.create_symbol(hint, ConstantSource(f"L{hint}"), positive=None), hint=hint)


def test_check_length_takes_ints_and_symbolic_lengths_of_one_or_more():
    for good in (1, 2, 9):
        checks.check_length(good)
    refused(checks.check_length, 0, match="L must be a positive int; got 0")  # the default name is L
    refused(checks.check_length, 2.0, "l_max", match="l_max must be a positive int; got 2.0")
    for hint in (1, 2, 5):
        length = symbolic_length(hint)
        assert isinstance(length, torch.SymInt)
        checks.check_length(length, "L")  # a dynamic axis is accepted (check_positive_int would refuse a SymInt)
    with pytest.raises(ValueError, match="kernel length must be a positive int; got "):
        checks.check_length(symbolic_length(0), "kernel length")


def test_check_even_state_takes_even_ints_from_two():
    for good in (2, 4, 64):
        checks.check_even_state(good, "conjugate pairs")
    for bad in (0, 1, 3, -2, True, 4.0, "4"):
        refused(checks.check_even_state, bad, "conjugate pairs",
                match=f"d_state must be an even int >= 2 (conjugate pairs); got {bad!r}")


def test_check_dt_range_names_each_bound():
    for good in ((1e-3, 1e-1), (0.01, 0.01), (1, 2), (1e-300, 1e300)):
        checks.check_dt_range(*good)
    for name, args in (("dt_min", (math.nan, 0.1)), ("dt_min", (True, 0.1)), ("dt_min", ("1e-3", 0.1)),
                       ("dt_max", (1e-3, math.inf)), ("dt_max", (1e-3, None)), ("dt_max", (1e-3, False))):
        bad = args[0] if name == "dt_min" else args[1]
        refused(checks.check_dt_range, *args, match=f"{name} must be a finite float > 0; got {bad!r}")
    for dt_min, dt_max in ((0.0, 0.1), (-1e-3, 0.1), (0.1, 0.01), (-0.2, -0.1)):
        refused(checks.check_dt_range, dt_min, dt_max,
                match=f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max; got {dt_min}, {dt_max}")


def test_check_lr_takes_none_or_a_finite_float_from_zero():
    for good in (None, 0, 0.0, 1e-3, 2):
        checks.check_lr(good)
        checks.check_lr(good, "lr_W")
    for bad in (-1e-3, -1, math.nan, math.inf, -math.inf, True, "1e-3"):
        refused(checks.check_lr, bad, "lr_W", match=f"lr_W must be a finite float >= 0 (0 freezes the parameters) "
                f"or None; got {bad!r}")
    refused(checks.check_lr, -1.0, match="lr must be a finite float >= 0")  # the default name is lr


def test_check_choice_names_the_valid_set():
    checks.check_choice("zoh", ("zoh", "bilinear"), "discretization")
    refused(checks.check_choice, "euler", ("zoh", "bilinear"), "discretization",
            match="discretization must be one of ('zoh', 'bilinear'); got 'euler'")


def test_check_batch_size_takes_ints_from_one():
    for good in (1, 3):
        checks.check_batch_size(good)
    for bad in (0, -1, True, 2.0, "2", None):
        refused(checks.check_batch_size, bad, match=f"batch_size must be an int >= 1; got {bad!r}")


def test_parameter_dtype_defaults_to_the_default_dtype_and_takes_float32_or_float64():
    assert checks.parameter_dtype(torch.float32) is torch.float32
    assert checks.parameter_dtype(torch.float64) is torch.float64
    before = torch.get_default_dtype()
    try:
        for default in (torch.float64, torch.float32):
            torch.set_default_dtype(default)
            assert checks.parameter_dtype(None) is default
    finally:
        torch.set_default_dtype(before)
    for bad in (torch.float16, torch.bfloat16, torch.complex64, torch.int64):
        refused(checks.parameter_dtype, bad, match="dtype must be torch.float32 or torch.float64")
    assert checks.PARAMETER_DTYPES == (torch.float32, torch.float64)


def test_checkpoint_dtype_maps_half_weights_to_float32_and_keeps_the_rest():
    want = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float32,
            torch.float64: torch.float64, None: None}
    for saved, dtype in want.items():
        assert checks.checkpoint_dtype(saved) is dtype, saved


def test_unknown_option_error_is_both_a_value_error_and_a_type_error():
    err = checks.UnknownOptionError("layer 's4d' has no option(s) ['d_stat']")
    assert isinstance(err, ValueError) and isinstance(err, TypeError)


def test_log_uniform_log_dt_is_log_uniform_on_the_range():
    """log Δ ~ U[log dt_min, log dt_max] (arXiv 2206.11893 §4), float64, of the given shape: a Kolmogorov-Smirnov test
    against scipy's uniform law, and the degenerate range dt_min = dt_max."""
    torch.manual_seed(0)
    dt_min, dt_max = 2e-4, 3e-1
    log_dt = init.log_uniform_log_dt((40, 50), dt_min, dt_max)
    assert log_dt.shape == (40, 50) and log_dt.dtype == torch.float64
    low, high = math.log(dt_min), math.log(dt_max)
    values = log_dt.numpy().ravel()
    assert low <= values.min() and values.max() <= high
    assert values.min() < low + 0.01 and values.max() > high - 0.01  # the whole range is reached
    assert stats.kstest(values, stats.uniform(loc=low, scale=high - low).cdf).pvalue > 1e-3
    same = init.log_uniform_log_dt((7,), 0.01, 0.01)
    assert torch.allclose(same, torch.full((7,), math.log(0.01), dtype=torch.float64), rtol=0, atol=1e-15)


def test_lecun_normal_is_jax_truncated_normal_with_variance_one_over_fan_in():
    """JAX's lecun_normal: a normal truncated to ±2 standard deviations, rescaled by the truncated law's standard
    deviation so the variance is exactly 1/fan_in (S5, arXiv 2208.04933); the constant from scipy's truncnorm, the
    draw tested against scipy's law by Kolmogorov-Smirnov."""
    assert init._TRUNCATED_STD == pytest.approx(stats.truncnorm(-2.0, 2.0).std(), rel=1e-15)
    torch.manual_seed(1)
    fan_in = 7
    x = init.lecun_normal((300, 200), fan_in)
    assert x.shape == (300, 200) and x.dtype == torch.float64
    scale = math.sqrt(1.0 / fan_in) / stats.truncnorm(-2.0, 2.0).std()
    law = stats.truncnorm(-2.0, 2.0, scale=scale)
    values = x.numpy().ravel()
    assert law.var() == pytest.approx(1.0 / fan_in, rel=1e-12)
    assert np.abs(values).max() <= 2.0 * scale
    assert values.var() == pytest.approx(1.0 / fan_in, rel=0.02)
    assert abs(values.mean()) < 0.01
    assert stats.kstest(values, law.cdf).pvalue > 1e-3


ZOO_GOOD = dict(paper="arXiv 2111.00396", structure="DPLR", parametrisation="A = Λ − P Q*", discretisation="bilinear",
                time_varying=False, stable_by_construction=True, stability="Re Λ < 0", step_cost="O(H N)",
                sequence_cost="O(H (N + L) log(N + L))")


def test_zoo_entry_takes_every_structure_and_is_frozen():
    assert STRUCTURES == ("dense", "DPLR", "diagonal", "scalar", "none")
    for structure in STRUCTURES:
        entry = ZooEntry(**{**ZOO_GOOD, "structure": structure})
        assert entry.structure == structure
    entry = ZooEntry(**ZOO_GOOD)
    assert dataclasses.asdict(entry) == ZOO_GOOD
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.paper = "arXiv 0000.00000"


def test_zoo_entry_refuses_each_field_by_name():
    for bad in ("dplr", "Diagonal", "banded", ""):
        refused(lambda: ZooEntry(**{**ZOO_GOOD, "structure": bad}),
                match=f"structure must be one of {STRUCTURES}; got {bad!r}")
    for name in ("time_varying", "stable_by_construction"):
        ZooEntry(**{**ZOO_GOOD, name: not ZOO_GOOD[name]})
        for bad in (0, 1, "yes", None):
            refused(lambda: ZooEntry(**{**ZOO_GOOD, name: bad}), match=f"{name} must be a bool; got {bad!r}")
    for name in ("paper", "parametrisation", "discretisation", "stability", "step_cost", "sequence_cost"):
        ZooEntry(**{**ZOO_GOOD, name: "x"})
        for bad in ("", "  ", "\n", None, 3):
            refused(lambda: ZooEntry(**{**ZOO_GOOD, name: bad}),
                    match=f"{name} must be a non-empty string; got {bad!r}")


def test_zoo_module_exports_only_its_two_names():
    namespace: dict = {}
    exec("from ssmkit.layers.zoo import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == ["STRUCTURES", "ZooEntry"]
